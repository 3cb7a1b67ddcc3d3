//! Solo handles (`SoloSender`, `SoloReceiver`: the lock kept between operations) across
//! processes: mixed with ordinary handles, killed while keeping the lock, parked peers woken, a
//! thread that waits on an ordinary handle while its own solo handle keeps the lock, and a holder
//! that stays idle while keeping it (the lock is taken from it).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Rng, SharedCounters, check_message, message, spawn};
use ringpool::Ring;
use ringpool::ring::RecvTimeoutError;
use ringpool::sync::SpinPolicy;

const LONG: Duration = Duration::from_secs(60);

/// Three producer processes (two solo, one ordinary) and two consumer processes (one solo, one
/// ordinary, one of them parking at once) share a small ring; producers pause now and then while
/// keeping the lock. Together the consumers receive exactly what was sent, each message once, in
/// per-producer order.
#[test]
fn solo_and_ordinary_handles_share_a_ring_exactly() {
    const PRODUCERS: u32 = 3;
    const PER_PRODUCER: u64 = 20_000;
    let ring = Ring::builder().capacity(8 * 1024).anonymous().unwrap();
    let words = (PER_PRODUCER / 64 + 1) as usize;
    // Bitmap of received (producer, seq), then: duplicates, order errors, received.
    let shared = SharedCounters::new(words * PRODUCERS as usize + 3);
    let base = words * PRODUCERS as usize;
    let consumers: Vec<_> = (0..2)
        .map(|c| {
            let ring = ring.clone();
            let shared = &shared;
            spawn(move || {
                let rx = ring.receiver().unwrap();
                if c == 1 {
                    rx.set_spin(SpinPolicy::park());
                }
                let mut solo = (c == 0).then(|| ring.receiver().unwrap().into_solo());
                drop(ring);
                let mut last = [None::<u64>; PRODUCERS as usize];
                loop {
                    let got = match solo.as_mut() {
                        Some(s) => s.recv_with_timeout(LONG, check_message),
                        None => rx.recv_with_timeout(LONG, check_message),
                    };
                    let (p, seq) = match got {
                        Ok(Ok(id)) => id,
                        Ok(Err(e)) => panic!("consumer {c}: bad message: {e}"),
                        Err(RecvTimeoutError::Disconnected) => return 0,
                        Err(e) => panic!("consumer {c}: {e}"),
                    };
                    if last[p as usize].is_some_and(|l| l >= seq) {
                        shared.get(base + 1).fetch_add(1, Ordering::Relaxed);
                    }
                    last[p as usize] = Some(seq);
                    if shared.set_bit(words * p as usize, seq) {
                        shared.get(base).fetch_add(1, Ordering::Relaxed);
                    }
                    shared.get(base + 2).fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ring = ring.clone();
            spawn(move || {
                let mut rng = Rng(u64::from(p) + 7);
                let tx = ring.sender().unwrap();
                let mut solo = (p < 2).then(|| ring.sender().unwrap().into_solo());
                drop(ring);
                let mut buf = Vec::new();
                for seq in 0..PER_PRODUCER {
                    message(p, seq, 500, &mut buf);
                    let r = match solo.as_mut() {
                        Some(s) => s.send_timeout(&buf, LONG).map_err(|e| e.to_string()),
                        None => tx.send_timeout(&buf, LONG).map_err(|e| e.to_string()),
                    };
                    if let Err(e) = r {
                        panic!("producer {p}: {e}");
                    }
                    if rng.below(500) == 0 {
                        // Idle while keeping the lock: the others wait for the next send, or,
                        // after a slice (2 ms), take the lock from the idle holder.
                        std::thread::sleep(Duration::from_micros(rng.below(6000)));
                    }
                }
                0
            })
        })
        .collect();
    for p in producers {
        p.join(LONG);
    }
    for c in consumers {
        c.join(LONG);
    }
    assert_eq!(shared.get(base).load(Ordering::Relaxed), 0, "duplicates");
    assert_eq!(shared.get(base + 1).load(Ordering::Relaxed), 0, "out of order");
    assert_eq!(shared.get(base + 2).load(Ordering::Relaxed), PER_PRODUCER * u64::from(PRODUCERS), "received");
    for p in 0..PRODUCERS as usize {
        for seq in 0..PER_PRODUCER {
            assert!(shared.bit(words * p, seq), "producer {p} message {seq} lost");
        }
    }
    let stats = ring.stats();
    assert_eq!(stats.sent, stats.received);
}

/// A solo sender killed while it keeps the lock (between sends, and in the middle of a stream) is
/// found dead: another sender takes the lock over, the ring is repaired, and the receiver gets
/// every message the killed one published, once.
#[test]
fn solo_sender_killed_while_keeping_the_lock_is_recovered() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let shared = SharedCounters::new(1);
    let child = {
        let ring = ring.clone();
        let shared = &shared;
        spawn(move || {
            let mut solo = ring.solo_sender().unwrap();
            for seq in 0..10u64 {
                solo.send(seq.to_le_bytes()).unwrap();
            }
            shared.get(0).store(1, Ordering::Release);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    while shared.get(0).load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ring.debug_lock_holders().0.is_some(), "the solo sender keeps the send lock while idle");
    child.kill();
    let tx = ring.sender().unwrap();
    tx.send_timeout(10u64.to_le_bytes(), LONG).unwrap();
    for want in 0..11u64 {
        let got = rx.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
        assert_eq!(got, want);
    }
    assert!(rx.try_recv().is_err());
    assert_eq!(ring.stats().send_recoveries, 1);
}

/// A thread whose solo sender keeps the lock, sending through an ordinary sender of the same ring,
/// would wait for itself: its hold is given up on the solo handle's behalf, and the solo handle
/// takes the lock again at its next send.
#[test]
fn a_thread_never_waits_for_its_own_solo_hold() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let tx = ring.sender().unwrap();
    let mut solo = ring.solo_sender().unwrap();
    solo.send(b"a").unwrap();
    tx.send_timeout(b"b", Duration::from_secs(20)).unwrap();
    solo.send(b"c").unwrap();
    solo.send(b"d").unwrap();
    drop(solo);
    tx.send_timeout(b"e", Duration::from_secs(20)).unwrap();
    for want in [b"a", b"b", b"c", b"d", b"e"] {
        assert_eq!(rx.recv_timeout(LONG).unwrap(), want);
    }
    assert_eq!(ring.debug_lock_holders(), (None, None));
}

/// Ping-pong between a solo pair and a parking pair: every wake-up of a parked peer depends on the
/// solo side's unfenced publish being seen (the waiter's asymmetric fence).
#[test]
fn parked_peers_of_solo_handles_are_woken() {
    const ROUNDS: u64 = 3_000;
    let there = Ring::builder().capacity(4096).spin(SpinPolicy::park()).anonymous().unwrap();
    let back = Ring::builder().capacity(4096).spin(SpinPolicy::park()).anonymous().unwrap();
    let echo = {
        let (there, back) = (there.clone(), back.clone());
        spawn(move || {
            let mut rx = there.solo_receiver().unwrap();
            let mut tx = back.solo_sender().unwrap();
            for want in 0..ROUNDS {
                let v = rx.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
                assert_eq!(v, want);
                tx.send(v.to_le_bytes()).unwrap();
            }
            0
        })
    };
    let mut tx = there.solo_sender().unwrap();
    let mut rx = back.solo_receiver().unwrap();
    for seq in 0..ROUNDS {
        tx.send(seq.to_le_bytes()).unwrap();
        let v = rx.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
        assert_eq!(v, seq);
    }
    echo.join(LONG);
    assert!(there.stats().recv_parks > 0, "the echo parked");
}

/// A solo sender on another thread keeps the lock; this thread's ordinary sender asks for it and
/// gets it when the solo sender's next send ends. Every message arrives once, in per-sender order,
/// and no lock is left held.
#[test]
fn another_thread_gets_a_kept_lock_at_the_holders_next_send() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let tx = ring.sender().unwrap();
    let (kept_tx, kept_rx) = std::sync::mpsc::channel();
    let solo_thread = {
        let sender = ring.sender().unwrap();
        std::thread::spawn(move || {
            let mut solo = sender.into_solo();
            solo.send(1u64.to_le_bytes()).unwrap();
            kept_tx.send(()).unwrap();
            // Idle while keeping the lock: the other thread waits for the next send.
            std::thread::sleep(Duration::from_millis(50));
            for seq in 2..50u64 {
                solo.send(seq.to_le_bytes()).unwrap();
            }
        })
    };
    kept_rx.recv().unwrap();
    assert!(ring.debug_lock_holders().0.is_some(), "the solo sender keeps the lock while idle");
    tx.send_timeout(1000u64.to_le_bytes(), LONG).unwrap();
    solo_thread.join().unwrap();
    let mut next_solo = 1;
    let mut got_other = false;
    for _ in 0..50 {
        let v = rx.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
        if v == 1000 {
            assert!(!got_other);
            got_other = true;
        } else {
            assert_eq!(v, next_solo);
            next_solo += 1;
        }
    }
    assert!(got_other && next_solo == 50);
    assert_eq!(ring.debug_lock_holders(), (None, None));
}

/// The queue's solo handles beside ordinary ones, across processes: two solo and one ordinary
/// producer, one solo and one ordinary (parking) consumer; every value arrives once, whole, in
/// per-producer order.
#[test]
fn queue_solo_and_ordinary_handles_share_a_queue_exactly() {
    const PRODUCERS: u64 = 3;
    const PER_PRODUCER: u64 = 20_000;
    let q = ringpool::Queue::<[u64; 4]>::builder().slots(64).anonymous().unwrap();
    let words = (PER_PRODUCER / 64 + 1) as usize;
    let shared = SharedCounters::new(words * PRODUCERS as usize + 3);
    let base = words * PRODUCERS as usize;
    let value = |p: u64, seq: u64| [p, seq, p ^ seq ^ 0x5a5a, !(p ^ seq)];
    let consumers: Vec<_> = (0..2)
        .map(|c| {
            let q = q.clone();
            let shared = &shared;
            spawn(move || {
                let rx = q.receiver().unwrap();
                if c == 1 {
                    rx.set_spin(SpinPolicy::park());
                }
                let mut solo = (c == 0).then(|| q.receiver().unwrap().into_solo());
                drop(q);
                let mut last = [None::<u64>; PRODUCERS as usize];
                let mut v = [0u64; 4];
                loop {
                    let got = match solo.as_mut() {
                        Some(s) => s.recv_into_timeout(&mut v, LONG),
                        None => rx.recv_into_timeout(&mut v, LONG),
                    };
                    match got {
                        Ok(()) => {}
                        Err(RecvTimeoutError::Disconnected) => return 0,
                        Err(e) => panic!("consumer {c}: {e}"),
                    }
                    let (p, seq) = (v[0], v[1]);
                    assert!(p < PRODUCERS && v == value(p, seq), "consumer {c}: corrupt value {v:x?}");
                    if last[p as usize].is_some_and(|l| l >= seq) {
                        shared.get(base + 1).fetch_add(1, Ordering::Relaxed);
                    }
                    last[p as usize] = Some(seq);
                    if shared.set_bit(words * p as usize, seq) {
                        shared.get(base).fetch_add(1, Ordering::Relaxed);
                    }
                    shared.get(base + 2).fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = q.clone();
            spawn(move || {
                let tx = q.sender().unwrap();
                let mut solo = (p < 2).then(|| q.sender().unwrap().into_solo());
                drop(q);
                for seq in 0..PER_PRODUCER {
                    let v = value(p, seq);
                    match solo.as_mut() {
                        Some(s) if seq % 2 == 0 => s.send_ref_timeout(&v, LONG).unwrap(),
                        Some(s) => s.send(v).unwrap(),
                        None => tx.send_ref_timeout(&v, LONG).unwrap(),
                    }
                }
                0
            })
        })
        .collect();
    for p in producers {
        p.join(LONG);
    }
    for c in consumers {
        c.join(LONG);
    }
    assert_eq!(shared.get(base).load(Ordering::Relaxed), 0, "duplicates");
    assert_eq!(shared.get(base + 1).load(Ordering::Relaxed), 0, "out of order");
    assert_eq!(shared.get(base + 2).load(Ordering::Relaxed), PER_PRODUCER * PRODUCERS, "received");
    for p in 0..PRODUCERS as usize {
        for seq in 0..PER_PRODUCER {
            assert!(shared.bit(words * p, seq), "producer {p} value {seq} lost");
        }
    }
}

/// A solo sender in another process keeps the send lock and then stays idle (it waits for the
/// parent's word, which comes only after the parent sent): the parent's ordinary sender, its
/// `try_send` included, takes the lock from the idle holder instead of waiting for ever. The
/// robbed holder then sends on (it finds its hold gone and takes the lock again); every message
/// arrives once, in per-sender order, and no lock is left held.
#[test]
fn an_idle_solo_sender_in_another_process_does_not_block_other_senders() {
    const SOLO_LATER: u64 = 2_000;
    const OTHER: u64 = 200;
    let ring = Ring::builder().capacity(64 * 1024).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    // 0: the child keeps the lock and idles; 1: the parent has sent, go on.
    let shared = SharedCounters::new(2);
    let child = {
        let ring = ring.clone();
        let shared = &shared;
        spawn(move || {
            let mut solo = ring.solo_sender().unwrap();
            for seq in 0..10u64 {
                solo.send(seq.to_le_bytes()).unwrap();
            }
            shared.get(0).store(1, Ordering::Release);
            let deadline = std::time::Instant::now() + LONG;
            while shared.get(1).load(Ordering::Acquire) == 0 {
                assert!(std::time::Instant::now() < deadline, "the parent never sent");
                std::thread::sleep(Duration::from_millis(1));
            }
            for seq in 10..10 + SOLO_LATER {
                solo.send_timeout(seq.to_le_bytes(), LONG).unwrap();
            }
            0
        })
    };
    while shared.get(0).load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ring.debug_lock_holders().0.is_some(), "the solo sender keeps the send lock while idle");
    let tx = ring.sender().unwrap();
    // Before, these waited until the holder's next send, which waits for them: a deadlock that
    // only the timeout ended.
    tx.try_send((1_000_000u64).to_le_bytes()).expect("try_send takes the lock from the idle holder");
    for seq in 1..OTHER {
        tx.send_timeout((1_000_000 + seq).to_le_bytes(), Duration::from_secs(20)).unwrap();
    }
    shared.get(1).store(1, Ordering::Release);
    let (mut next_solo, mut next_other) = (0u64, 1_000_000u64);
    for _ in 0..10 + SOLO_LATER + OTHER {
        let v = rx.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
        if v >= 1_000_000 {
            assert_eq!(v, next_other);
            next_other += 1;
        } else {
            assert_eq!(v, next_solo);
            next_solo += 1;
        }
    }
    assert_eq!((next_solo, next_other), (10 + SOLO_LATER, 1_000_000 + OTHER));
    child.join(LONG);
    assert!(rx.try_recv().is_err());
    assert_eq!(ring.debug_lock_holders(), (None, None));
    assert_eq!(ring.stats().send_recoveries, 0, "taken from a live holder, not recovered from a dead one");
}

/// The receiving twin: a solo receiver in another process keeps the receive lock and idles; this
/// process's receiver takes it and receives, and the robbed receiver then receives the rest.
#[test]
fn an_idle_solo_receiver_in_another_process_does_not_block_other_receivers() {
    let ring = Ring::builder().capacity(64 * 1024).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let shared = SharedCounters::new(2);
    for seq in 0..10u64 {
        tx.send(seq.to_le_bytes()).unwrap();
    }
    let child = {
        let ring = ring.clone();
        let shared = &shared;
        spawn(move || {
            let mut solo = ring.solo_receiver().unwrap();
            for want in 0..5u64 {
                let v = solo.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
                assert_eq!(v, want);
            }
            shared.get(0).store(1, Ordering::Release);
            let deadline = std::time::Instant::now() + LONG;
            while shared.get(1).load(Ordering::Acquire) == 0 {
                assert!(std::time::Instant::now() < deadline, "the parent never received");
                std::thread::sleep(Duration::from_millis(1));
            }
            for want in 8..10u64 {
                let v = solo.recv_with_timeout(LONG, |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
                assert_eq!(v, want);
            }
            0
        })
    };
    while shared.get(0).load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ring.debug_lock_holders().1.is_some(), "the solo receiver keeps the receive lock while idle");
    let rx = ring.receiver().unwrap();
    let v = rx.try_recv().expect("try_recv takes the lock from the idle holder");
    assert_eq!(v, 5u64.to_le_bytes());
    for want in 6..8u64 {
        let v = rx.recv_with_timeout(Duration::from_secs(20), |m| u64::from_le_bytes(m.try_into().unwrap())).unwrap();
        assert_eq!(v, want);
    }
    shared.get(1).store(1, Ordering::Release);
    child.join(LONG);
    assert!(rx.try_recv().is_err());
    assert_eq!(ring.debug_lock_holders(), (None, None));
}
