//! Small things a new user trips on: names at the crate root, `[u8; N]` payloads of any `N`,
//! and receiving into a caller's slice without allocating or panicking.

mod common;

use std::time::Duration;

use common::{spawn, unique_name};
use ringpool::ring::{Broken, RecvIntoSliceError};
// The glob must not shadow the prelude's `Future` (the pool's future is `TaskFuture` at the root).
use ringpool::*;

const DEADLINE: Duration = Duration::from_secs(60);

/// Compiles only while the bare name `Future` is std's.
fn takes_std_future<F: Future<Output = u8>>(f: F) -> F {
    f
}

#[test]
fn the_glob_import_keeps_std_future_and_offers_the_pool_future_under_its_own_name() {
    drop(takes_std_future(async { 1u8 }));
    // The pool's future, by its root name and by its old path: one type.
    fn same(f: TaskFuture<u64>) -> ringpool::pool::Future<u64> {
        f
    }
    let _ = same;
}

#[test]
fn spin_policy_is_at_the_root() {
    let ring = Ring::builder().spin(SpinPolicy::park()).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    rx.set_spin(SpinPolicy::default());
}

#[test]
fn a_queue_of_100_byte_arrays_crosses_processes() {
    let name = unique_name("arr100");
    let q = Queue::<[u8; 100]>::builder().slots(8).create(&name).unwrap();
    let rx = q.receiver().unwrap();
    let child = {
        let name = name.clone();
        spawn(move || {
            let Ok(q) = Queue::<[u8; 100]>::builder().open(&name) else { return 2 };
            let Ok(tx) = q.sender() else { return 3 };
            for i in 0u8..50 {
                let mut v = [0u8; 100];
                for (k, b) in v.iter_mut().enumerate() {
                    *b = i.wrapping_mul(7).wrapping_add(k as u8);
                }
                if tx.send(v).is_err() {
                    return 4;
                }
            }
            0
        })
    };
    let mut n = 0u8;
    for v in &rx {
        assert!(v.iter().enumerate().all(|(k, &b)| b == n.wrapping_mul(7).wrapping_add(k as u8)), "value {n}");
        n += 1;
    }
    assert_eq!(n, 50);
    assert!(matches!(child.wait(DEADLINE), nix::sys::wait::WaitStatus::Exited(_, 0)));
    // A 100-byte array does not open as another type of the same size.
    assert!(matches!(Queue::<[u32; 25]>::builder().open(&name), Err(SegmentError::TypeMismatch { .. })));
}

#[test]
fn recv_into_slice_copies_and_a_short_buffer_leaves_the_message_in_the_ring() {
    let ring = Ring::builder().capacity(8192).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let child = {
        let ring = ring.clone();
        spawn(move || {
            let Ok(tx) = ring.sender() else { return 2 };
            for m in [&b"hello"[..], &[7u8; 300][..], b"", b"end"] {
                if tx.send(m).is_err() {
                    return 3;
                }
            }
            0
        })
    };
    let mut buf = [0u8; 64];
    assert_eq!(rx.recv_into_slice(&mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    // 300 bytes into 64: refused, both lengths named, and the message stays.
    let e = rx.recv_into_slice(&mut buf).unwrap_err();
    assert_eq!(e, RecvIntoSliceError::BufferTooSmall { needed: 300, buf_len: 64 });
    let text = e.to_string();
    assert!(text.contains("300") && text.contains("64"), "{text}");
    assert_eq!(
        rx.recv_into_slice(&mut buf[..10]).unwrap_err(),
        RecvIntoSliceError::BufferTooSmall { needed: 300, buf_len: 10 }
    );
    let mut big = vec![0u8; 300];
    assert_eq!(rx.recv_into_slice(&mut big), Ok(300));
    assert!(big.iter().all(|&b| b == 7));
    assert_eq!(rx.recv_into_slice(&mut []), Ok(0), "an empty message fits an empty buffer");
    assert_eq!(rx.recv_into_slice(&mut buf), Ok(3));
    assert_eq!(&buf[..3], b"end");
    assert!(matches!(child.wait(DEADLINE), nix::sys::wait::WaitStatus::Exited(_, 0)));
    assert_eq!(rx.recv_into_slice(&mut buf), Err(RecvIntoSliceError::Disconnected));
    let _ = Broken::Poisoned; // the third variant wraps the ring's own reason
    let _: fn(Broken) -> RecvIntoSliceError = RecvIntoSliceError::Broken;
}
