//! A process that made a named ring is killed, and its ring is found and swept away.
//!
//! A child process creates the named ring `rp-demo-crash-<pid>`, joins it as a sender and a
//! receiver, sends three messages, and is then killed with SIGKILL (as `kill -9` or the
//! out-of-memory killer would): no destructor runs, so the name stays in `/dev/shm`. This program
//! then does what the `ringpool` command does, through the library:
//!
//! - `Scan::run` lists the segment: its creator is dead, so are its sender and its receiver, three
//!   messages are still in it, and nobody alive has it open: it is *abandoned*;
//! - `Scan::sweep(false)` removes it (a dry run with `true`), and the name is gone.
//!
//! From a shell, the same is `ringpool ls`, `ringpool inspect NAME` and `ringpool clean --yes`
//! (`cargo run -p ringpool-inspector -- ls`).
//!
//! Run it with `cargo run --release --example inspect_after_crash`.

use std::error::Error;
use std::time::Duration;

use ringpool::ring::inspect::{Scan, SweepAction, Verdict};
use ringpool::{Process, Queue, Ring, Segment};

fn main() -> Result<(), Box<dyn Error>> {
    let name = format!("rp-demo-crash-{}", std::process::id());
    // The child says "ready" through an anonymous queue it inherits.
    let ready = Queue::<u8>::builder().slots(4).anonymous()?;
    let ready_rx = ready.receiver()?;
    let mut child = {
        let name = name.clone();
        let ready = ready.clone();
        Process::start(move || {
            let run = || -> Result<(), Box<dyn Error>> {
                let ring = Ring::builder().capacity(64 * 1024).create(&name)?;
                let tx = ring.sender()?;
                let _rx = ring.receiver()?;
                for m in ["one", "two", "three"] {
                    tx.send(m)?;
                }
                ready.sender()?.send(1)?;
                // Wait to be killed (and give up after a minute, should nobody come).
                std::thread::sleep(Duration::from_secs(60));
                Ok(())
            };
            if let Err(e) = run() {
                eprintln!("child: {e}");
            }
        })?
    };
    ready_rx.recv_timeout(Duration::from_secs(30))?;
    println!("child {} made the ring {name:?}; killing it with SIGKILL", child.pid());
    child.kill()?;
    child.join_timeout(Duration::from_secs(30))?;
    println!("after the crash, /dev/shm/{name} exists: {}", Segment::exists(&name));

    let scan = Scan::new().prefix(name.clone());
    for report in scan.run()? {
        let seg = &report.segment;
        println!("found {}: creator alive: {:?}", seg.name(), seg.creator());
        if let Some(Ok(ring)) = &report.ring {
            println!(
                "  {} messages in it; senders {} alive / {} dead; receivers {} alive / {} dead",
                ring.depth, ring.senders_alive, ring.senders_dead, ring.receivers_alive, ring.receivers_dead
            );
        }
        match &report.verdict {
            Verdict::Abandoned => println!("  verdict: abandoned (creator, members and users all dead)"),
            Verdict::InUse(why) => println!("  verdict: in use: {why}"),
            Verdict::Unknown(why) => println!("  verdict: unknown: {why}"),
        }
    }
    for outcome in scan.sweep(false)? {
        match outcome.action {
            SweepAction::Removed => println!("sweep: removed {}", outcome.name),
            other => println!("sweep: {}: {other:?}", outcome.name),
        }
    }
    println!("after the sweep, /dev/shm/{name} exists: {}", Segment::exists(&name));
    if Segment::exists(&name) {
        return Err("the sweep left the abandoned ring".into());
    }
    Ok(())
}
