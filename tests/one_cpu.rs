//! Both ends of a ring on one CPU: a waiter whose peer last ran on its own CPU yields that CPU to
//! the peer instead of spinning through the time slice the peer needs (adaptive waiting,
//! `ring/wait.rs`).

mod common;

use std::time::Duration;

use common::spawn;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use ringpool::Ring;

const LONG: Duration = Duration::from_secs(60);
const ROUNDS: u64 = 2_000;

/// Pins the calling process to `cpu`.
fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

/// A ping-pong with the default spin policy, both processes pinned to the same CPU: every value
/// arrives, and the waiters yield the CPU to their peer (the decision not to spin was taken)
/// rather than spin until the scheduler happens to run the peer: at least one yield or park per
/// wait. Before adaptive waiting, each waiter spun and its spin usually caught the reply with
/// neither a yield nor a park.
#[test]
fn waiters_sharing_a_cpu_with_their_peer_yield_to_it() {
    let original = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let cpu = (0..CpuSet::count()).find(|&i| original.is_set(i).unwrap_or(false)).expect("an allowed CPU");
    let there = Ring::builder().capacity(4096).anonymous().unwrap();
    let back = Ring::builder().capacity(4096).anonymous().unwrap();
    let echo = {
        let (there, back) = (there.clone(), back.clone());
        spawn(move || {
            pin(cpu);
            let rx = there.receiver().unwrap();
            let tx = back.sender().unwrap();
            for want in 0..ROUNDS {
                let v = rx.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
                assert_eq!(v, want);
                tx.send(v.to_le_bytes()).unwrap();
            }
            0
        })
    };
    pin(cpu);
    let tx = there.sender().unwrap();
    let rx = back.receiver().unwrap();
    for seq in 0..ROUNDS {
        tx.send(seq.to_le_bytes()).unwrap();
        let v = rx.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
        assert_eq!(v, seq);
    }
    sched_setaffinity(Pid::from_raw(0), &original).unwrap();
    echo.join(LONG);
    let (a, b) = (there.stats(), back.stats());
    let yields = a.recv_yields + b.recv_yields;
    let handed = yields + a.recv_parks + b.recv_parks;
    assert!(handed >= ROUNDS, "{handed} yields and parks in {ROUNDS} round trips on one CPU: the waiters spun");
    assert!(yields > 0, "no waiter yielded its CPU to the peer that shares it");
}
