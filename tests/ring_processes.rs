//! The ring across processes: MPMC stress, a SIGKILL storm, timeouts, forks and deaths.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Rng, SharedCounters, check_message, message, spawn, unique_name};
use ringpool::Ring;
use ringpool::ring::{RecvTimeoutError, TryRecvError};
use ringpool::sync::SpinPolicy;

const LONG: Duration = Duration::from_secs(120);

/// 4 producer processes and 3 consumer processes move 1,000,000 messages of mixed sizes through a
/// small ring; every consumer checks per-producer order and every message's bytes; together they
/// receive exactly the set that was sent, each message once.
#[test]
fn mpmc_stress_four_producers_three_consumers() {
    const PRODUCERS: u32 = 4;
    const CONSUMERS: usize = 3;
    const PER_PRODUCER: u64 = 250_000;
    const MAX_LEN: usize = 3000;
    let ring = Ring::builder().capacity(64 * 1024).anonymous().unwrap();
    // Bitmap of received (producer, seq), then per-consumer counters: received, errors.
    let words_per_producer = (PER_PRODUCER / 64 + 1) as usize;
    let bitmap_words = words_per_producer * PRODUCERS as usize;
    let shared = SharedCounters::new(bitmap_words + 2 * CONSUMERS + 1);
    let dup = bitmap_words + 2 * CONSUMERS;

    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|c| {
            let ring = ring.clone();
            let shared = &shared;
            spawn(move || {
                let rx = ring.receiver().unwrap();
                let mut last = [None::<u64>; PRODUCERS as usize];
                loop {
                    let r = rx.recv_with_timeout(LONG, check_message);
                    let (p, seq) = match r {
                        Ok(Ok(ps)) => ps,
                        Ok(Err(e)) => {
                            eprintln!("consumer {c}: {e}");
                            shared.get(bitmap_words + 2 * c + 1).fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return 0,
                        Err(e) => {
                            eprintln!("consumer {c}: {e}");
                            return 3;
                        }
                    };
                    if p >= PRODUCERS || last[p as usize].is_some_and(|l| l >= seq) {
                        shared.get(bitmap_words + 2 * c + 1).fetch_add(1, Ordering::Relaxed);
                    }
                    last[p as usize] = Some(seq);
                    if shared.set_bit(words_per_producer * p as usize, seq) {
                        shared.get(dup).fetch_add(1, Ordering::Relaxed);
                    }
                    shared.get(bitmap_words + 2 * c).fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ring = ring.clone();
            spawn(move || {
                let tx = ring.sender().unwrap();
                let mut buf = Vec::new();
                let mut seq = 0;
                while seq < PER_PRODUCER {
                    // Alternate single sends and batches of up to 16.
                    if seq % 1000 < 500 {
                        message(p, seq, MAX_LEN, &mut buf);
                        tx.send_timeout(&buf, LONG).unwrap();
                        seq += 1;
                    } else {
                        let n = (PER_PRODUCER - seq).min(16);
                        let batch: Vec<Vec<u8>> = (seq..seq + n)
                            .map(|s| {
                                let mut b = Vec::new();
                                message(p, s, MAX_LEN, &mut b);
                                b
                            })
                            .collect();
                        tx.send_many(&batch).unwrap();
                        seq += n;
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
    let total: u64 = (0..CONSUMERS).map(|c| shared.get(bitmap_words + 2 * c).load(Ordering::Relaxed)).sum();
    let errors: u64 = (0..CONSUMERS).map(|c| shared.get(bitmap_words + 2 * c + 1).load(Ordering::Relaxed)).sum();
    assert_eq!(errors, 0, "corrupt or out-of-order messages");
    assert_eq!(shared.get(dup).load(Ordering::Relaxed), 0, "duplicated messages");
    assert_eq!(total, u64::from(PRODUCERS) * PER_PRODUCER);
    for p in 0..PRODUCERS {
        for seq in 0..PER_PRODUCER {
            assert!(shared.bit(words_per_producer * p as usize, seq), "lost ({p}, {seq})");
        }
    }
    let stats = ring.stats();
    assert_eq!(stats.sent, stats.received);
    assert_eq!(stats.sent, u64::from(PRODUCERS) * PER_PRODUCER);
}

/// Producers and consumers are killed with SIGKILL at random moments, many of them while holding
/// one of the ring's locks (a pause inside the critical section, and a killer that waits for the
/// victim to hold a lock, make that certain). Survivors never hang, no message is duplicated, no
/// message whose send returned is lost beyond the one a killed consumer may have had in hand, and
/// nothing received was never sent.
#[test]
fn sigkill_storm() {
    const SLOTS: usize = 3; // producer slots and consumer slots
    const SEQ_SPACE: u64 = 1 << 20;
    const KILLS: usize = 40;
    let ring = Ring::builder().capacity(16 * 1024).anonymous().unwrap();
    let words = (SEQ_SPACE / 64) as usize;
    // Layout: per producer slot: attempted bitmap, committed bitmap, received bitmap, next seq.
    // Then per consumer slot: pending flag; then: duplicates, errors, stop flag.
    let pbase = |p: usize| p * (3 * words + 1);
    let cbase = SLOTS * (3 * words + 1);
    let dup = cbase + SLOTS;
    let errors = dup + 1;
    let stop = dup + 2;
    let shared = SharedCounters::new(stop + 1);

    let start_producer = |p: usize, pause: bool| {
        let ring = ring.clone();
        let shared = &shared;
        spawn(move || {
            if pause {
                ringpool::ring::set_pause_in_critical_section(Some(Duration::from_micros(300)));
            }
            let tx = ring.sender().unwrap();
            let mut buf = Vec::new();
            while shared.get(stop).load(Ordering::Acquire) == 0 {
                // A fresh sequence number for every attempt, across incarnations of this slot.
                let seq = shared.get(pbase(p) + 3 * words).fetch_add(1, Ordering::AcqRel);
                if seq >= SEQ_SPACE {
                    break;
                }
                shared.set_bit(pbase(p), seq);
                message(p as u32, seq, 2000, &mut buf);
                match tx.send_timeout(&buf, Duration::from_secs(30)) {
                    Ok(()) => {
                        shared.set_bit(pbase(p) + words, seq);
                    }
                    Err(e) => {
                        eprintln!("producer {p}: {e}");
                        shared.get(errors).fetch_add(1, Ordering::Relaxed);
                        return 2;
                    }
                }
            }
            0
        })
    };
    let start_consumer = |c: usize, pause: bool| {
        let ring = ring.clone();
        let shared = &shared;
        spawn(move || {
            if pause {
                ringpool::ring::set_pause_in_critical_section(Some(Duration::from_micros(300)));
            }
            let rx = ring.receiver().unwrap();
            let mut last = [None::<u64>; SLOTS];
            loop {
                shared.get(cbase + c).store(1, Ordering::Release);
                let r = rx.recv_with_timeout(Duration::from_secs(30), check_message);
                let (p, seq) = match r {
                    Ok(Ok(ps)) => ps,
                    Ok(Err(e)) => {
                        eprintln!("consumer {c}: {e}");
                        shared.get(errors).fetch_add(1, Ordering::Relaxed);
                        shared.get(cbase + c).store(0, Ordering::Release);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        shared.get(cbase + c).store(0, Ordering::Release);
                        return 0;
                    }
                    Err(e) => {
                        eprintln!("consumer {c}: {e}");
                        shared.get(errors).fetch_add(1, Ordering::Relaxed);
                        return 3;
                    }
                };
                let p = p as usize;
                if p >= SLOTS || last[p].is_some_and(|l| l >= seq) {
                    shared.get(errors).fetch_add(1, Ordering::Relaxed);
                }
                last[p.min(SLOTS - 1)] = Some(seq);
                if shared.set_bit(pbase(p.min(SLOTS - 1)) + 2 * words, seq) {
                    shared.get(dup).fetch_add(1, Ordering::Relaxed);
                }
                shared.get(cbase + c).store(0, Ordering::Release);
            }
        })
    };

    let mut producers: Vec<_> = (0..SLOTS).map(|p| Some(start_producer(p, p % 2 == 0))).collect();
    let mut consumers: Vec<_> = (0..SLOTS).map(|c| Some(start_consumer(c, c % 2 == 0))).collect();
    let mut rng = Rng(0x5EED_0000 ^ u64::from(std::process::id()));
    let (mut consumer_kills_in_hand, mut in_lock_kills) = (0u64, 0);
    let started = Instant::now();
    for k in 0..KILLS {
        std::thread::sleep(Duration::from_millis(2 + rng.below(15)));
        let slot = rng.below(SLOTS as u64) as usize;
        let kill_consumer = rng.below(2) == 0;
        let victim = if kill_consumer { consumers[slot].take() } else { producers[slot].take() }.unwrap();
        // Every other kill waits (bounded) until the victim holds one of the ring's locks.
        if k % 2 == 0 {
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                let (s, r) = ring.debug_lock_holders();
                let held = if kill_consumer { r } else { s };
                if held == Some(victim.pid.as_raw() as u32) {
                    in_lock_kills += 1;
                    break;
                }
                std::hint::spin_loop();
            }
        }
        victim.kill();
        if kill_consumer {
            consumer_kills_in_hand += shared.get(cbase + slot).swap(0, Ordering::AcqRel);
            consumers[slot] = Some(start_consumer(slot, slot % 2 == 0));
        } else {
            producers[slot] = Some(start_producer(slot, slot % 2 == 0));
        }
    }
    shared.get(stop).store(1, Ordering::Release);
    for p in producers.into_iter().flatten() {
        p.join(Duration::from_secs(60));
    }
    for c in consumers.into_iter().flatten() {
        c.join(Duration::from_secs(60));
    }
    assert!(started.elapsed() < Duration::from_secs(600));
    assert_eq!(shared.get(errors).load(Ordering::Relaxed), 0, "errors in survivors (see stderr)");
    assert_eq!(shared.get(dup).load(Ordering::Relaxed), 0, "a message was received twice");
    let mut lost_committed = 0u64;
    let mut received = 0u64;
    for p in 0..SLOTS {
        let next = shared.get(pbase(p) + 3 * words).load(Ordering::Relaxed).min(SEQ_SPACE);
        for seq in 0..next {
            let attempted = shared.bit(pbase(p), seq);
            let committed = shared.bit(pbase(p) + words, seq);
            let got = shared.bit(pbase(p) + 2 * words, seq);
            assert!(!got || attempted, "({p}, {seq}) received but never sent");
            received += u64::from(got);
            if committed && !got {
                lost_committed += 1;
            }
        }
    }
    assert!(
        lost_committed <= consumer_kills_in_hand,
        "{lost_committed} sent messages lost, but killed consumers had at most {consumer_kills_in_hand} in hand"
    );
    let stats = ring.stats();
    assert!(in_lock_kills > 0, "no kill landed inside a critical section");
    assert!(
        stats.send_recoveries + stats.recv_recoveries > 0,
        "locks were never recovered from a dead owner: {stats:?}"
    );
    eprintln!(
        "sigkill_storm: {KILLS} kills ({in_lock_kills} inside a lock), {received} messages received, \
         {lost_committed} lost in killed consumers' hands (bound {consumer_kills_in_hand}), {stats:?}"
    );
}

/// A 500 ms receive timeout on an empty ring returns Timeout after at least 500 ms, 100 times in a
/// row (raw_sync's timed wait fails at once for about half of such timeouts).
#[test]
fn timeouts_are_never_early() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let _tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    for i in 0..100 {
        let t = Instant::now();
        let r = rx.recv_timeout(Duration::from_millis(500));
        let el = t.elapsed();
        assert_eq!(r, Err(RecvTimeoutError::Timeout), "attempt {i}");
        assert!(el >= Duration::from_millis(500), "attempt {i} returned after {el:?}");
    }
}

/// The same with parking only and with a busy spin, and on the sending side of a full ring.
#[test]
fn timeouts_hold_for_every_spin_policy_and_for_sends() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let mut rx = ring.receiver().unwrap();
    for spin in [SpinPolicy::park(), SpinPolicy::busy(), SpinPolicy::spin_for(Duration::from_millis(30))] {
        rx.set_spin(spin);
        let t = Instant::now();
        assert_eq!(rx.recv_timeout(Duration::from_millis(120)), Err(RecvTimeoutError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(120), "{spin:?}");
    }
    while tx.try_send([7u8; 100]).is_ok() {}
    let t = Instant::now();
    let e = tx.send_timeout(vec![1u8; 100], Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, ringpool::ring::SendTimeoutError::Timeout(_)));
    assert_eq!(e.into_inner(), vec![1u8; 100], "the message comes back");
    assert!(t.elapsed() >= Duration::from_millis(200));
}

/// A forked child that drops its handles and its copy of the ring does not unlink the parent's
/// named segment.
#[test]
fn forked_child_does_not_unlink_the_parents_segment() {
    let name = unique_name("fork-unlink");
    let ring = Ring::builder().capacity(4096).create(&name).unwrap();
    let tx = ring.sender().unwrap();
    let copy = ring.clone();
    let child = spawn(move || {
        // The child's copies of the parent's handle and mapping, dropped (destructors run).
        drop(tx);
        drop(copy);
        0
    });
    child.join(LONG);
    assert!(ringpool::Segment::exists(&name), "the child removed the parent's segment");
    let again = Ring::builder().open(&name).unwrap();
    drop(again);
    assert!(ringpool::Segment::exists(&name));
}

/// A sender killed with SIGKILL counts as gone: the receiver drains what it sent, then gets
/// Disconnected (well before its own timeout), and a sender sees receivers die the same way.
#[test]
fn death_of_every_sender_disconnects() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let r2 = ring.clone();
    let child = spawn(move || {
        let tx = r2.sender().unwrap();
        tx.send(b"before death").unwrap();
        std::thread::sleep(Duration::from_secs(600));
        0
    });
    let rx = ring.receiver().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), b"before death");
    child.kill();
    let t = Instant::now();
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Err(RecvTimeoutError::Disconnected));
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    drop(rx);

    // The other way round: a dead receiver, a sender blocked on a full ring.
    let r3 = ring.clone();
    let child = spawn(move || {
        let _rx = r3.receiver().unwrap();
        std::thread::sleep(Duration::from_secs(600));
        0
    });
    let tx = ring.sender().unwrap();
    // Wait until the child is a receiver, then fill the ring while it lives.
    let deadline = Instant::now() + LONG;
    while ring.stats().receivers == 0 {
        assert!(Instant::now() < deadline, "the child never joined");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut filled = 0;
    while tx.try_send([0u8; 64]).is_ok() {
        filled += 1;
    }
    assert!(filled > 40, "the ring should take about 50 messages of 64 bytes, took {filled}");
    child.kill();
    let e = tx.send_timeout([1u8; 64], Duration::from_secs(30)).unwrap_err();
    assert!(matches!(e, ringpool::ring::SendTimeoutError::Disconnected(_)), "{e:?}");
}

/// Senders in many processes each deliver in order; a receiver that runs last drains all, then
/// disconnects; nothing is left in /dev/shm afterwards.
#[test]
fn named_ring_between_unrelated_handles_and_cleanup() {
    let name = unique_name("named");
    let ring = Ring::builder().capacity(8192).create(&name).unwrap();
    let mut children = Vec::new();
    for p in 0..6u32 {
        let name = name.clone();
        children.push(spawn(move || {
            let ring = Ring::builder().open(&name).unwrap();
            let tx = ring.sender().unwrap();
            let mut buf = Vec::new();
            for seq in 0..2000 {
                message(p, seq, 300, &mut buf);
                tx.send(&buf).unwrap();
            }
            0
        }));
    }
    let rx = ring.receiver().unwrap();
    let mut seen = HashSet::new();
    let mut last = [None::<u64>; 6];
    while seen.len() < 12_000 {
        let (p, seq) = rx.recv_with_timeout(LONG, check_message).unwrap().unwrap();
        assert!(last[p as usize].is_none_or(|l| l < seq));
        last[p as usize] = Some(seq);
        assert!(seen.insert((p, seq)));
    }
    for c in children {
        c.join(LONG);
    }
    assert_eq!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected));
    drop(rx);
    drop(ring);
    assert!(common::leftovers().iter().all(|n| !n.starts_with(&name)), "{:?}", common::leftovers());
}
