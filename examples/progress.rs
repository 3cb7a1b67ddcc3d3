//! A long `imap` with a progress bar (indicatif): the bar advances as each result comes back, in
//! input order, and the program ends on its own.
//!
//! Run it with `cargo run --release --example progress` (the bar draws on a terminal's stderr;
//! piped, it stays hidden and only the summary lines are printed).

use std::time::Instant;

use indicatif::{ProgressBar, ProgressIterator, ProgressStyle};
use ringpool::Pool;

/// The task: the number of Collatz steps from `n` down to 1 (a little work per input).
fn collatz_steps(n: &u64) -> u64 {
    let (mut n, mut steps) = (*n.max(&1), 0u64);
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const N: u64 = 300_000;
    let started = Instant::now();
    let pool = Pool::new(4)?;
    let bar = ProgressBar::new(N);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    )?);

    let mut longest = (0u64, 0u64);
    for (n, steps) in (1..=N).zip(pool.imap(collatz_steps, 1..=N)?.progress_with(bar.clone())) {
        let steps = steps?;
        if steps > longest.1 {
            longest = (n, steps);
        }
    }
    bar.finish();
    println!("progress: {}/{} results", bar.position(), bar.length().unwrap_or(0));
    println!("longest chain below {N}: {} ({} steps)", longest.0, longest.1);
    println!("the program ended on its own after {:.1?}", started.elapsed());
    Ok(())
}
