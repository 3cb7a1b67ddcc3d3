//! The `progress` example (a long `imap` with an indicatif progress bar), built and run to its end.

use std::process::Command;
use std::time::Duration;

mod common;
use common::{build_example, run_with_deadline};

#[test]
fn progress_runs_a_long_imap_to_its_end_with_the_bar_full() {
    let exe = build_example("progress");
    let out = run_with_deadline(&mut Command::new(&exe), Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("progress: 300000/300000 results"), "the bar did not reach its end:\n{stdout}");
    // The longest Collatz chain below 300000 starts at 230631 (442 steps).
    assert!(stdout.contains("longest chain below 300000: 230631 (442 steps)"), "{stdout}");
    assert!(stdout.contains("the program ended on its own"), "{stdout}");
}
