//! Iterators over receivers, as crossbeam names them: `iter()` (blocking, ends at `Disconnected`),
//! `try_iter()` (what is there now), `IntoIterator` for `&Receiver` and `Receiver`; for the byte
//! ring and the typed queue. The senders live in forked children, whose exit disconnects the ring.

mod common;

use std::time::Duration;

use common::{leftovers, spawn, unique_name};
use ringpool::{Queue, Ring};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn ring_iter_yields_every_message_then_ends_at_disconnected() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let child = {
        let ring = ring.clone();
        spawn(move || {
            let tx = ring.sender().unwrap();
            // More than the ring holds at once: the iterator must block and go on.
            for i in 0u32..500 {
                if tx.send(i.to_le_bytes()).is_err() {
                    return 2;
                }
            }
            0
        })
    };
    let got: Vec<u32> = rx.iter().map(|m| u32::from_le_bytes(m.try_into().unwrap())).collect();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    assert!(matches!(child.wait(DEADLINE), nix::sys::wait::WaitStatus::Exited(_, 0)));
}

#[test]
fn ring_for_loop_over_a_reference_and_by_value() {
    let name = unique_name("iter-ring");
    let ring = Ring::builder().capacity(4096).create(&name).unwrap();
    let rx = ring.receiver().unwrap();
    let child = {
        let ring = ring.clone();
        spawn(move || {
            let tx = ring.sender().unwrap();
            for i in 0u8..10 {
                let _ = tx.send(vec![i; usize::from(i)]);
            }
            0
        })
    };
    let mut n = 0u8;
    for m in &rx {
        assert_eq!(m, vec![n; usize::from(n)]);
        n += 1;
        if n == 5 {
            break;
        }
    }
    // The rest through the owning iterator.
    let rest: Vec<Vec<u8>> = rx.into_iter().collect();
    assert_eq!(rest.len(), 5);
    assert_eq!(rest[0], vec![5u8; 5]);
    assert!(matches!(child.wait(DEADLINE), nix::sys::wait::WaitStatus::Exited(_, 0)));
    drop(ring);
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

#[test]
fn ring_try_iter_takes_what_is_there_and_does_not_wait() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let tx = ring.sender().unwrap();
    assert_eq!(rx.try_iter().count(), 0, "an empty ring with a live sender: nothing, at once");
    for i in 0u8..7 {
        tx.send([i]).unwrap();
    }
    let got: Vec<Vec<u8>> = rx.try_iter().collect();
    assert_eq!(got, (0u8..7).map(|i| vec![i]).collect::<Vec<_>>());
    // The sender is still there: try_iter ended at Empty, and a later message is still received.
    tx.send([9]).unwrap();
    assert_eq!(rx.try_iter().next(), Some(vec![9]));
}

#[test]
fn queue_iter_yields_every_value_then_ends_at_disconnected() {
    let q = Queue::<u64>::builder().slots(16).anonymous().unwrap();
    let rx = q.receiver().unwrap();
    let child = {
        let q = q.clone();
        spawn(move || {
            let tx = q.sender().unwrap();
            for i in 0u64..1000 {
                if tx.send(i * 3).is_err() {
                    return 2;
                }
            }
            0
        })
    };
    let got: Vec<u64> = rx.iter().collect();
    assert_eq!(got, (0..1000).map(|i| i * 3).collect::<Vec<_>>());
    assert!(matches!(child.wait(DEADLINE), nix::sys::wait::WaitStatus::Exited(_, 0)));
}

#[test]
fn queue_for_loops_and_try_iter() {
    let q = Queue::<u32>::builder().slots(64).anonymous().unwrap();
    let rx = q.receiver().unwrap();
    let tx = q.sender().unwrap();
    assert_eq!(rx.try_iter().next(), None);
    for i in 0..20 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.try_iter().take(5).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    let mut seen = Vec::new();
    for v in &rx {
        seen.push(v);
        if v == 9 {
            break;
        }
    }
    assert_eq!(seen, (5..10).collect::<Vec<_>>());
    drop(tx);
    // Every sender gone: the owning iterator drains the rest and ends.
    assert_eq!(rx.into_iter().collect::<Vec<_>>(), (10..20).collect::<Vec<_>>());
}
