//! The `tracing` feature: a killed pool worker is logged as ended and replaced, a lock taken over
//! from a dead owner as repaired, a named segment's removal as cleanup.
#![cfg(feature = "tracing")]

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringpool::{Pool, Ring};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every event as "target message field=value ...".
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(format!("{} {}", event.metadata().target(), event.metadata().level()));
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn has(&self, words: &[&str]) -> bool {
        self.lines().iter().any(|l| l.starts_with("ringpool ") && words.iter().all(|w| l.contains(w)))
    }
}

fn square(x: &u64) -> u64 {
    x * x
}

#[test]
fn worker_start_death_and_replacement_are_logged() {
    let cap = Capture::default();
    tracing::subscriber::with_default(cap.clone(), || {
        let pool = Pool::new(1).unwrap();
        assert!(cap.has(&["pool worker started"]), "{:?}", cap.lines());
        let pid = pool.worker_pids()[0];
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        // Drive the pool until it noticed (every map checks the workers when it waits).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !cap.has(&["pool worker replaced", &format!("replaced={pid}")]) {
            assert!(std::time::Instant::now() < deadline, "no replacement logged: {:?}", cap.lines());
            assert_eq!(pool.map(square, 0..10u64).unwrap()[3], 9);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(cap.has(&["pool worker ended", &format!("pid={pid}"), "died=true"]), "{:?}", cap.lines());
    });
}

#[test]
fn lock_takeover_and_segment_cleanup_are_logged() {
    let cap = Capture::default();
    tracing::subscriber::with_default(cap.clone(), || {
        let name = common::unique_name("trace");
        let ring = Ring::builder().capacity(4096).create(&name).unwrap();
        let (tx, rx) = (ring.sender().unwrap(), ring.receiver().unwrap());
        ring.debug_forge_dead_owner(true, std::process::id());
        tx.send_timeout(b"after the takeover", Duration::from_secs(10)).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"after the takeover");
        assert!(cap.has(&["WARN", "taken over", "repaired=true"]), "{:?}", cap.lines());
        drop((tx, rx, ring));
        assert!(cap.has(&["segment name removed", &name]), "{:?}", cap.lines());
    });
    assert!(common::leftovers().is_empty());
}
