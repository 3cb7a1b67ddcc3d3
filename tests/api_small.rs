//! Small API points of the ecosystem issue: spin policies set through `&self`, typed signals, the
//! ring's membership error under its own name, lock timeouts told apart from waits for room,
//! sizes in `TooLarge`, error sources, and senders that reconnect a ring.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{leftovers, spawn, unique_name};
use ringpool::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn send_sync<T: Send + Sync>() {}

#[test]
fn set_spin_takes_a_shared_reference_and_changes_only_that_handle() {
    // Handles stay Send + Sync with the policy in interior-mutable state.
    send_sync::<ring::Sender>();
    send_sync::<ring::Receiver>();
    send_sync::<queue::Sender<u64>>();
    send_sync::<queue::Receiver<u64>>();

    let ring = Ring::builder().spin(SpinPolicy::park()).anonymous().unwrap();
    let tx = Arc::new(ring.sender().unwrap());
    let rx = ring.receiver().unwrap();
    let earlier_clone = (*tx).clone();
    let budget = Duration::from_micros(123);
    std::thread::scope(|s| {
        let tx = &tx;
        s.spawn(move || tx.set_spin(SpinPolicy::spin_for(budget))).join().unwrap();
    });
    assert!(format!("{tx:?}").contains("budget: 123µs"), "{tx:?}");
    assert!(!format!("{earlier_clone:?}").contains("budget: 123µs"), "{earlier_clone:?}");
    let later_clone = (*tx).clone();
    assert!(format!("{later_clone:?}").contains("budget: 123µs"), "{later_clone:?}");
    // The handle works after the change, from several threads at once.
    std::thread::scope(|s| {
        for i in 0..4u8 {
            let tx = &tx;
            s.spawn(move || {
                tx.set_spin(if i % 2 == 0 { SpinPolicy::busy() } else { SpinPolicy::park() });
                tx.send([i]).unwrap();
            });
        }
    });
    let mut got: Vec<u8> = (0..4).map(|_| rx.recv_timeout(DEADLINE).unwrap()[0]).collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3]);
    rx.set_spin(SpinPolicy::busy());
    assert!(format!("{rx:?}").contains("budget"), "{rx:?}");

    // The same on a queue, a solo handle and their receivers.
    let q = Queue::<u64>::builder().slots(4).anonymous().unwrap();
    let qtx = q.sender().unwrap();
    let qrx = q.receiver().unwrap();
    qtx.set_spin(SpinPolicy::spin_for(budget));
    qrx.set_spin(SpinPolicy::spin_for(budget));
    assert!(format!("{qtx:?}").contains("budget: 123µs") && format!("{qrx:?}").contains("budget: 123µs"));
    let solo = q.solo_sender().unwrap();
    solo.set_spin(SpinPolicy::busy());
    let solo_rx = ring.solo_receiver().unwrap();
    solo_rx.set_spin(SpinPolicy::park());
}

#[test]
fn send_signal_takes_a_checked_signal() {
    // An invalid number is an error, never a panic, and never reaches a system call.
    for bad in [0, -9, 65_000] {
        let e = Signal::new(bad).unwrap_err();
        assert!(matches!(e, process::SignalError::Invalid { signal, .. } if signal == bad), "{e:?}");
        assert!(e.to_string().contains(&bad.to_string()), "{e}");
    }
    assert_eq!(Signal::try_from(libc::SIGUSR1), Ok(Signal::USR1));

    let _g = common::FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: FORK_LOCK keeps this suite's other forks out; the child only sleeps (a plain system
    // call) until the signal ends it.
    let mut p = unsafe {
        Process::builder().fork_unchecked(|| {
            std::thread::sleep(DEADLINE);
        })
    }
    .unwrap();
    p.send_signal(Signal::USR1).unwrap();
    match p.join_timeout(DEADLINE).unwrap() {
        process::ExitStatus::Signaled { signal, .. } => assert_eq!(signal, Signal::USR1.number()),
        other => panic!("SIGUSR1 should have ended the child: {other:?}"),
    }
    // After the reap a signal does nothing (the pid may be another process's now).
    p.send_signal(Signal::new(libc::SIGRTMIN()).unwrap()).unwrap();
    p.kill().unwrap();
    p.terminate().unwrap();
}

#[test]
fn a_full_member_table_is_a_join_ring_error_that_says_what_to_do() {
    let ring = Ring::builder().max_members(1).anonymous().unwrap();
    let _tx = ring.sender().unwrap();
    let child = spawn(move || {
        // Another process: the one entry of the member table is the parent's.
        let e: ring::JoinRingError = match ring.receiver() {
            Ok(_) => return 2,
            Err(e) => e,
        };
        if e != ring::JoinRingError::TooManyMembers(1) {
            return 3;
        }
        let text = e.to_string();
        if !(text.contains("max_members") && text.contains('1')) {
            return 4;
        }
        0
    });
    child.join(DEADLINE);
    // The process-side name is a different type, about waiting for a child.
    let _: Option<process::JoinError> = None;
}

#[test]
fn a_timeout_on_a_held_lock_says_so_and_a_timeout_for_room_or_messages_keeps_its_words() {
    use ring::{RecvTimeoutError, SendTimeoutError};
    let short = Duration::from_millis(30);
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let up = Ring::builder().capacity(1024).anonymous().unwrap();
    let down = Ring::builder().capacity(1024).anonymous().unwrap();
    let (tx, rx) = (ring.sender().unwrap(), ring.receiver().unwrap());
    let (up_rx, down_tx) = (up.receiver().unwrap(), down.sender().unwrap());

    // Nothing held: a wait for a message, then for room.
    let e = rx.recv_timeout(short).unwrap_err();
    assert_eq!(e, RecvTimeoutError::Timeout);
    assert!(e.is_timeout() && e.to_string().contains("waiting for a message"), "{e}");
    while tx.try_send([7u8; 1000]).is_ok() {}
    let e = tx.send_timeout([1u8; 1000], short).unwrap_err();
    assert!(matches!(e, SendTimeoutError::Timeout(_)) && e.is_timeout(), "{e:?}");
    assert!(e.to_string().contains("room"), "{e}");
    while rx.try_recv().is_ok() {}
    tx.send(b"held by the child").unwrap();

    // A live child holds both locks: the receive lock through an in-place read, the send lock
    // through a reservation, until told to let go.
    let child = {
        let (ring, up, down) = (ring.clone(), up.clone(), down.clone());
        spawn(move || {
            let (Ok(tx), Ok(rx), Ok(up_tx), Ok(down_rx)) =
                (ring.sender(), ring.receiver(), up.sender(), down.receiver())
            else {
                return 2;
            };
            let Ok(read) = rx.recv_in_place_timeout(DEADLINE) else { return 3 };
            let Ok(write) = tx.reserve_timeout(8, DEADLINE) else { return 4 };
            if up_tx.send(b"holding").is_err() || down_rx.recv_timeout(DEADLINE).is_err() {
                return 5;
            }
            drop(write);
            drop(read);
            0
        })
    };
    up_rx.recv_timeout(DEADLINE).unwrap();
    let pid = child.pid.as_raw() as u32;
    let e = tx.send_timeout(b"x", short).unwrap_err();
    match &e {
        SendTimeoutError::LockTimeout { msg, pid: holder } => assert_eq!((*msg, *holder), (b"x", Some(pid))),
        other => panic!("expected a lock timeout: {other:?}"),
    }
    assert!(e.is_timeout());
    let text = e.to_string();
    assert!(
        text.contains("send lock") && text.contains(&pid.to_string()) && !text.contains("waiting for room"),
        "{text}"
    );
    let e = rx.recv_timeout(short).unwrap_err();
    assert_eq!(e, RecvTimeoutError::LockTimeout { pid: Some(pid) });
    assert!(e.is_timeout());
    let text = e.to_string();
    assert!(text.contains("receive lock") && text.contains(&pid.to_string()), "{text}");
    down_tx.send(b"let go").unwrap();
    child.join(DEADLINE);
    // Let go: the child consumed the message it read, and published nothing.
    assert_eq!(rx.recv_timeout(short), Err(RecvTimeoutError::Timeout));
    tx.send_timeout(b"room again", short).unwrap();
    assert!(leftovers().is_empty());
}

#[test]
fn too_large_errors_name_both_sizes_and_what_to_do() {
    use ring::{SendError, SendTimeoutError, TrySendError};
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let (tx, _rx) = (ring.sender().unwrap(), ring.receiver().unwrap());
    let max = ring.max_message_len();
    let big = vec![0u8; max + 1];
    let check = |text: String| {
        assert!(
            text.contains(&format!("{} bytes", max + 1))
                && text.contains(&format!("({max} bytes)"))
                && text.contains(&format!("capacity of at least {} bytes", max + 17)),
            "{text}"
        );
    };
    match tx.send(&big[..]) {
        Err(e @ SendError::TooLarge { len, max: m, .. }) => {
            assert_eq!((len, m), (max + 1, max));
            check(e.to_string());
            assert_eq!(e.into_inner().len(), max + 1, "the message comes back");
        }
        other => panic!("{other:?}"),
    }
    match tx.try_send(&big[..]) {
        Err(e @ TrySendError::TooLarge { .. }) => check(e.to_string()),
        other => panic!("{other:?}"),
    }
    match tx.send_timeout(&big[..], DEADLINE) {
        Err(e @ SendTimeoutError::TooLarge { .. }) => check(format!("{e} / {e:?}")),
        other => panic!("{other:?}"),
    }
    // A reservation and a batch: the batch's error holds how many went before the large one.
    match tx.reserve(max + 1).map(drop) {
        Err(e @ SendError::TooLarge { msg: n, .. }) => {
            assert_eq!(n, max + 1);
            check(e.to_string());
        }
        other => panic!("{other:?}"),
    }
    match tx.send_many(&[&b"ok"[..], &big[..]]) {
        Err(e @ SendError::TooLarge { msg: sent, len, .. }) => {
            assert_eq!((sent, len), (1, max + 1));
            check(e.to_string());
        }
        other => panic!("{other:?}"),
    }
}

fn square(x: &u64) -> u64 {
    x.wrapping_mul(*x)
}

fn panic_on_3(x: &u64) -> u64 {
    assert!(*x != 3, "three");
    *x
}

#[test]
fn pool_errors_keep_their_source() {
    use pool::{MapError, PoolError, SharedPoolError, TaskError};
    use std::error::Error;

    let p = Pool::new(1).unwrap();
    // A map whose task panicked: the source is the first task's error.
    let e = p.map(panic_on_3, 0..6u64).unwrap_err();
    let first = e.source().expect("a source").downcast_ref::<TaskError>().expect("a TaskError");
    assert!(matches!(first, TaskError::Panicked { message, .. } if message.contains("three")), "{first}");
    assert!(matches!(e, MapError::Tasks(_)));

    p.close();
    // A task refused by a closed pool holds the PoolError itself, not its text.
    let e = p.apply(square, 2).unwrap_err();
    let TaskError::Pool(shared) = &e else { panic!("{e:?}") };
    assert!(matches!(shared.get(), PoolError::Closed));
    let source = e.source().expect("a source");
    assert_eq!(source.to_string(), PoolError::Closed.to_string());
    assert!(matches!(source.downcast_ref::<SharedPoolError>().map(|s| s.get()), Some(PoolError::Closed)));
    // Clone and equality still hold (one failure shared by several tasks).
    assert_eq!(e.clone(), e);

    // A map on a closed pool: the source is the PoolError.
    let e = p.map(square, 0..3u64).unwrap_err();
    let source = e.source().expect("a source");
    assert!(matches!(source.downcast_ref::<PoolError>(), Some(PoolError::Closed)), "{source}");
}

#[test]
fn a_new_sender_from_another_process_reconnects_a_disconnected_ring_and_queue() {
    use ring::{RecvTimeoutError, TryRecvError};
    let name = unique_name("reconnect");
    let ring = Ring::builder().capacity(4096).create(&name).unwrap();
    let queue = Queue::<u64>::builder().slots(8).anonymous().unwrap();
    let (rx, qrx) = (ring.receiver().unwrap(), queue.receiver().unwrap());
    // The first senders live in a child that sends one message each and is then killed.
    let first = {
        let (ring, queue) = (ring.clone(), queue.clone());
        spawn(move || {
            let (Ok(tx), Ok(qtx)) = (ring.sender(), queue.sender()) else { return 2 };
            if tx.send(b"first").is_err() || qtx.send(1).is_err() {
                return 3;
            }
            std::thread::sleep(DEADLINE);
            0
        })
    };
    // Drained, then Disconnected once the child is dead; the iterators end.
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), b"first");
    assert_eq!(qrx.recv_timeout(DEADLINE).unwrap(), 1);
    first.kill();
    assert_eq!(rx.recv_timeout(DEADLINE), Err(RecvTimeoutError::Disconnected));
    assert_eq!(qrx.recv_timeout(DEADLINE), Err(RecvTimeoutError::Disconnected));
    assert_eq!(rx.iter().count(), 0);
    assert_eq!(qrx.iter().count(), 0);

    // A new sender, in another process (opening the ring by name): the receivers wait again and
    // a fresh iterator yields what it sends, then ends when it leaves. Flags in shared memory:
    // 0 = the child has joined, 1 = the parent lets it send.
    let flags = common::SharedCounters::new(2);
    let second = {
        let (name, queue, flags) = (name.clone(), queue.clone(), &flags);
        spawn(move || {
            let Ok(ring) = Ring::builder().open(&name) else { return 2 };
            let (Ok(tx), Ok(qtx)) = (ring.sender(), queue.sender()) else { return 3 };
            flags.get(0).store(1, std::sync::atomic::Ordering::Release);
            let t0 = std::time::Instant::now();
            while flags.get(1).load(std::sync::atomic::Ordering::Acquire) == 0 {
                if t0.elapsed() > DEADLINE {
                    return 5;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            for i in 0..3u64 {
                if tx.send(i.to_le_bytes()).is_err() || qtx.send(10 + i).is_err() {
                    return 4;
                }
            }
            0
        })
    };
    let t0 = std::time::Instant::now();
    while flags.get(0).load(std::sync::atomic::Ordering::Acquire) == 0 {
        assert!(t0.elapsed() < DEADLINE, "the second child never joined");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "reconnected: empty, not disconnected");
    assert_eq!(qrx.try_recv(), Err(TryRecvError::Empty));
    flags.get(1).store(1, std::sync::atomic::Ordering::Release);
    let got: Vec<Vec<u8>> = rx.iter().collect();
    assert_eq!(got, (0..3u64).map(|i| i.to_le_bytes().to_vec()).collect::<Vec<_>>());
    assert_eq!(qrx.iter().collect::<Vec<_>>(), [10, 11, 12]);
    second.join(DEADLINE);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    // And one in this process, too.
    let tx = ring.sender().unwrap();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    tx.send(b"again").unwrap();
    assert_eq!(rx.iter().next().unwrap(), b"again");
    drop((tx, rx, ring));
    assert!(leftovers().is_empty());
}
