//! The typed queue by reference (`send_ref`, `recv_into` and their try/timeout forms) across
//! processes: every value arrives once, whole, in order, and a failed receive leaves the caller's
//! place untouched.

mod common;

use std::time::Duration;

use common::spawn;
use ringpool::Queue;
use ringpool::ring::{RecvTimeoutError, TryRecvError};

const LONG: Duration = Duration::from_secs(60);
const N: u64 = 20_000;

/// Value number `seq`: every byte derived from it, so a torn or mixed copy shows.
fn value(seq: u64) -> [u8; 1024] {
    let mut v = [(seq as u8) ^ 0x5a; 1024];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v[1016..].copy_from_slice(&(!seq).to_le_bytes());
    v
}

#[test]
fn values_by_reference_cross_processes_whole_and_once() {
    let q = Queue::<[u8; 1024]>::builder().slots(64).anonymous().unwrap();
    let producer = {
        let q = q.clone();
        spawn(move || {
            let tx = q.sender().unwrap();
            drop(q);
            for seq in 0..N {
                let v = value(seq);
                match seq % 3 {
                    0 => tx.send_ref(&v).unwrap(),
                    1 => tx.send_ref_timeout(&v, LONG).unwrap(),
                    _ => loop {
                        match tx.try_send_ref(&v) {
                            Ok(()) => break,
                            Err(ringpool::ring::TrySendError::Full(())) => std::thread::yield_now(),
                            Err(e) => panic!("try_send_ref: {e}"),
                        }
                    },
                }
                if seq % 2 == 0 {
                    // By value too: the same slot format either way.
                    tx.send(value(seq + N)).unwrap();
                }
            }
            0
        })
    };
    let rx = q.receiver().unwrap();
    let mut place = [0u8; 1024];
    let mut seq = 0;
    while seq < N {
        match seq % 3 {
            0 => rx.recv_into(&mut place).unwrap(),
            1 => rx.recv_into_timeout(&mut place, LONG).unwrap(),
            _ => loop {
                match rx.try_recv_into(&mut place) {
                    Ok(()) => break,
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(e) => panic!("try_recv_into: {e}"),
                }
            },
        }
        assert!(place == value(seq), "value {seq} arrived changed");
        if seq % 2 == 0 {
            assert!(rx.recv_timeout(LONG).unwrap() == value(seq + N), "by-value {seq}");
        }
        seq += 1;
    }
    producer.join(LONG);
    // Empty, every sender gone: the place is left as it was.
    let before = place;
    assert_eq!(rx.recv_into_timeout(&mut place, LONG), Err(RecvTimeoutError::Disconnected));
    assert_eq!(rx.try_recv_into(&mut place), Err(TryRecvError::Disconnected));
    assert!(place == before);
}
