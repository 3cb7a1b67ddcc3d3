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

// ----- the SIGKILL storm -------------------------------------------------------------------------
//
// Producers and consumers, in forked processes, use every operation of a `Ring` or a `Queue` at
// random while the parent SIGKILLs one of them every few milliseconds (half of the kills wait for
// the victim to hold one of the ring's locks; half of the processes sleep inside every critical
// section, before and after the commit, so those kills land inside them) and starts a replacement.
//
// Bookkeeping, all in memory shared with the children:
// - a producer marks every message *attempted* before the call that sends it, and *committed* once
//   the call said it was sent (its `Ok`);
// - a consumer's *hand* lists what it consumed and has not yet settled: the library's test-only
//   receive hook writes each message's identity there under the receive lock, right before the
//   head moves past it, for every kind of receive (so a consumer killed at any instant has listed
//   every message it consumed, and maybe one more that stays in the ring); once the call returned,
//   the consumer checks what it got against its hand, marks those messages *received* (a second
//   mark is a duplicate) and empties its hand.
// After the storm: every committed message is received exactly once, or was in the hand of a
// killed consumer (it really held it); nothing received was never attempted; each consumer sees
// each producer's messages in order.

const STORM_SLOTS: usize = 3; // producer slots and consumer slots
const SEQ_SPACE: u64 = 1 << 22;
const WORDS: usize = (SEQ_SPACE / 64) as usize;
const HAND: usize = 64;
const OPS: usize = 8;
const STORM_PAUSE: Duration = Duration::from_micros(300);
const STORM_WAIT: Duration = Duration::from_secs(30);
/// Kills per storm (release; a debug build does fewer).
const STORM_KILLS: usize = if cfg!(debug_assertions) { 40 } else { 120 };

/// Where everything lives in the shared words.
struct Board {
    s: SharedCounters,
}

impl Board {
    const PRODUCER: usize = 3 * WORDS + 1;
    const CONSUMER: usize = 1 + HAND;
    const GLOBAL: usize = STORM_SLOTS * (Self::PRODUCER + Self::CONSUMER);
    const DUP: usize = Self::GLOBAL;
    const ERRORS: usize = Self::GLOBAL + 1;
    const ORDER: usize = Self::GLOBAL + 2;
    const STOP: usize = Self::GLOBAL + 3;
    const SEND_OPS: usize = Self::GLOBAL + 4;
    const RECV_OPS: usize = Self::SEND_OPS + OPS;
    const LEN: usize = Self::RECV_OPS + OPS;

    /// A board for one storm; it lives as long as the test process (the children's receive hook
    /// reaches it through a static).
    fn leak() -> &'static Board {
        Box::leak(Box::new(Board { s: SharedCounters::new(Self::LEN) }))
    }
    fn attempted(p: usize) -> usize {
        p * Self::PRODUCER
    }
    fn committed(p: usize) -> usize {
        p * Self::PRODUCER + WORDS
    }
    fn received(p: usize) -> usize {
        p * Self::PRODUCER + 2 * WORDS
    }
    fn next_seq(&self, p: usize) -> &std::sync::atomic::AtomicU64 {
        self.s.get(p * Self::PRODUCER + 3 * WORDS)
    }
    fn consumer(c: usize) -> usize {
        STORM_SLOTS * Self::PRODUCER + c * Self::CONSUMER
    }
    fn hand_len(&self, c: usize) -> &std::sync::atomic::AtomicU64 {
        self.s.get(Self::consumer(c))
    }
    fn hand(&self, c: usize, k: usize) -> (usize, u64) {
        let e = self.s.get(Self::consumer(c) + 1 + k).load(Ordering::Acquire).wrapping_sub(1);
        ((e >> 32) as usize, e & 0xFFFF_FFFF)
    }
    fn count(&self, at: usize) {
        self.s.get(at).fetch_add(1, Ordering::Relaxed);
    }
    fn load(&self, at: usize) -> u64 {
        self.s.get(at).load(Ordering::Acquire)
    }
    fn stopped(&self) -> bool {
        self.load(Self::STOP) != 0
    }
    fn error(&self, who: &str, e: impl std::fmt::Display) {
        eprintln!("{who}: {e}");
        self.count(Self::ERRORS);
    }

    /// Allocates `k` fresh sequence numbers of producer slot `p` (across its incarnations) and
    /// marks them attempted; `None` once the space is used up.
    fn attempt(&self, p: usize, k: u64) -> Option<u64> {
        let seq0 = self.next_seq(p).fetch_add(k, Ordering::AcqRel);
        if seq0 + k > SEQ_SPACE {
            return None;
        }
        for seq in seq0..seq0 + k {
            self.s.set_bit(Self::attempted(p), seq);
        }
        Some(seq0)
    }

    fn commit(&self, p: usize, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            self.s.set_bit(Self::committed(p), seq);
        }
    }

    /// Consumer `c` consumes message (`p`, `seq`) (called by the receive hook).
    fn hold(&self, c: usize, p: u64, seq: u64) {
        let n = self.hand_len(c).load(Ordering::Relaxed) as usize;
        if n >= HAND || p as usize >= STORM_SLOTS || seq >= SEQ_SPACE {
            self.error(&format!("consumer {c}"), format_args!("impossible message ({p}, {seq}) or hand overflow"));
            return;
        }
        self.s.get(Self::consumer(c) + 1 + n).store((p << 32 | seq) + 1, Ordering::Release);
        self.hand_len(c).store(n as u64 + 1, Ordering::Release);
    }

    /// Consumer `c` is done with a call that returned `got` messages: checks that its hand holds
    /// as many (the hook saw what the call returned), marks them received, checks the order.
    fn settle(&self, c: usize, got: &[(u64, u64)], last: &mut [Option<u64>; STORM_SLOTS]) {
        let n = self.hand_len(c).load(Ordering::Relaxed) as usize;
        let held: Vec<(u64, u64)> = (0..n).map(|k| self.hand(c, k)).map(|(p, s)| (p as u64, s)).collect();
        if held != got {
            self.error(&format!("consumer {c}"), format_args!("the call returned {got:?}, the hook saw {held:?}"));
        }
        for &(p, seq) in &held {
            let p = p as usize;
            if last[p].is_some_and(|l| l >= seq) {
                eprintln!("consumer {c}: ({p}, {seq}) after ({p}, {})", last[p].unwrap_or(0));
                self.count(Self::ORDER);
            }
            last[p] = Some(seq);
            if self.s.set_bit(Self::received(p), seq) {
                eprintln!("consumer {c}: ({p}, {seq}) received twice");
                self.count(Self::DUP);
            }
        }
        self.hand_len(c).store(0, Ordering::Release);
    }
}

/// The consumer this process is, for the receive hook: its board, slot and kind of ring.
static STORM_CONSUMER: std::sync::OnceLock<(&'static Board, usize, bool)> = std::sync::OnceLock::new();

/// The receive hook of storm consumers: lists each message consumed in the consumer's hand.
fn storm_taken(bytes: &[u8]) {
    let Some(&(b, c, queue)) = STORM_CONSUMER.get() else { return };
    let id = if queue { queue_identity(bytes) } else { check_message(bytes).map(|(p, s)| (u64::from(p), s)) };
    match id {
        Ok((p, seq)) => b.hold(c, p, seq),
        Err(e) => b.error(&format!("consumer {c}"), e),
    }
}

/// Runs the storm: `producer(slot)` and `consumer(slot)` fork a child; `holders()` says which pids
/// hold the send and the receive lock; `kinds` is how many kinds of operation each side has (each
/// must have run). Checks the invariants and prints the figures.
fn storm(
    name: &str,
    board: &Board,
    producer: &dyn Fn(usize) -> common::Child,
    consumer: &dyn Fn(usize) -> common::Child,
    holders: &dyn Fn() -> (Option<u32>, Option<u32>),
    stats: &dyn Fn() -> ringpool::ring::Stats,
    kinds: (usize, usize),
) {
    let mut producers: Vec<_> = (0..STORM_SLOTS).map(|p| Some(producer(p))).collect();
    let mut consumers: Vec<_> = (0..STORM_SLOTS).map(|c| Some(consumer(c))).collect();
    let mut rng = Rng(0x5EED_0000 ^ u64::from(std::process::id()));
    let (mut kills_in_lock, mut consumer_kills) = (0, 0);
    // The messages that killed consumers had in hand.
    let mut held_by_killed: HashSet<(usize, u64)> = HashSet::new();
    let started = Instant::now();
    for k in 0..STORM_KILLS {
        std::thread::sleep(Duration::from_millis(2 + rng.below(15)));
        let slot = rng.below(STORM_SLOTS as u64) as usize;
        let kill_consumer = rng.below(2) == 0;
        let victim = if kill_consumer { consumers[slot].take() } else { producers[slot].take() };
        let victim = victim.expect("every slot holds a child");
        if k % 2 == 0 {
            // Wait (bounded) until the victim holds one of the ring's locks.
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                let (s, r) = holders();
                if (if kill_consumer { r } else { s }) == Some(victim.pid.as_raw() as u32) {
                    kills_in_lock += 1;
                    break;
                }
                std::hint::spin_loop();
            }
        }
        victim.kill();
        if kill_consumer {
            consumer_kills += 1;
            // The victim is dead and reaped: its hand is final.
            let n = (board.hand_len(slot).load(Ordering::Acquire) as usize).min(HAND);
            held_by_killed.extend((0..n).map(|i| board.hand(slot, i)));
            board.hand_len(slot).store(0, Ordering::Release);
            consumers[slot] = Some(consumer(slot));
        } else {
            producers[slot] = Some(producer(slot));
        }
    }
    board.s.get(Board::STOP).store(1, Ordering::Release);
    for p in producers.into_iter().flatten() {
        p.join(Duration::from_secs(60));
    }
    for c in consumers.into_iter().flatten() {
        c.join(Duration::from_secs(60));
    }
    let (mut checked, mut received, mut invented, mut in_killed_hands, mut lost) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for p in 0..STORM_SLOTS {
        let next = board.next_seq(p).load(Ordering::Relaxed).min(SEQ_SPACE);
        for seq in 0..next {
            let attempted = board.s.bit(Board::attempted(p), seq);
            let committed = board.s.bit(Board::committed(p), seq);
            let got = board.s.bit(Board::received(p), seq);
            if got && !attempted {
                eprintln!("{name}: ({p}, {seq}) received but never sent");
                invented += 1;
            }
            checked += u64::from(committed);
            received += u64::from(got);
            if committed && !got {
                if held_by_killed.contains(&(p, seq)) {
                    in_killed_hands += 1;
                } else {
                    if lost < 10 {
                        eprintln!("{name}: ({p}, {seq}) was sent and never received");
                    }
                    lost += 1;
                }
            }
        }
    }
    let ops = |base: usize| (0..OPS).map(|i| board.load(base + i)).collect::<Vec<_>>();
    let stats = stats();
    eprintln!(
        "{name} storm: {STORM_KILLS} kills ({kills_in_lock} inside a lock, {consumer_kills} of consumers) in {:?}; \
         {checked} committed messages checked, {received} received, {} duplicates, {} out of order, \
         {invented} never sent, {in_killed_hands} consumed by killed consumers, {lost} lost; \
         lock recoveries: {} send, {} receive; operations done: send {:?}, receive {:?}",
        started.elapsed(),
        board.load(Board::DUP),
        board.load(Board::ORDER),
        stats.send_recoveries,
        stats.recv_recoveries,
        ops(Board::SEND_OPS),
        ops(Board::RECV_OPS),
    );
    assert_eq!(board.load(Board::ERRORS), 0, "{name}: errors in survivors (see stderr)");
    assert_eq!(board.load(Board::DUP), 0, "{name}: a message was received twice");
    assert_eq!(board.load(Board::ORDER), 0, "{name}: a producer's messages arrived out of order");
    assert_eq!(invented, 0, "{name}: messages received that were never sent");
    assert_eq!(lost, 0, "{name}: sent messages lost that no killed consumer held");
    assert!(kills_in_lock > 0, "{name}: no kill landed inside a critical section");
    assert!(stats.send_recoveries + stats.recv_recoveries > 0, "{name}: locks were never recovered: {stats:?}");
    for (side, base, n) in [("send", Board::SEND_OPS, kinds.0), ("receive", Board::RECV_OPS, kinds.1)] {
        let done = ops(base);
        assert!(done[..n].iter().all(|&d| d > 0), "{name}: a {side} operation never ran: {done:?}");
    }
    assert!(checked > 0);
}

/// A try-receive's error in the timeout form's terms (`Empty` as `Timeout`).
fn as_timeout(e: TryRecvError) -> RecvTimeoutError {
    match e {
        TryRecvError::Empty => RecvTimeoutError::Timeout,
        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
        TryRecvError::Broken(b) => RecvTimeoutError::Broken(b),
        _ => RecvTimeoutError::Broken(ringpool::ring::Broken::Corrupted("unknown try_recv error")),
    }
}

/// Per child: half of the slots pause in every critical section. Answers the child's random source.
fn storm_child_setup(slot: usize) -> Rng {
    if slot % 2 == 0 {
        ringpool::ring::set_pause_in_critical_section(Some(STORM_PAUSE));
    }
    Rng(0xC0FF_EE00 ^ u64::from(std::process::id()) << 8 ^ slot as u64)
}

/// Per consumer child: the receive hook that lists what it consumes.
fn storm_consumer_setup(board: &'static Board, c: usize, queue: bool) -> Rng {
    let _ = STORM_CONSUMER.set((board, c, queue));
    ringpool::ring::set_receive_hook(Some(storm_taken));
    storm_child_setup(c)
}

/// Holds an in-place guard a while in the pausing children, so that kills land while it is held.
fn storm_hold(slot: usize) {
    if slot % 2 == 0 {
        std::thread::sleep(STORM_PAUSE);
    }
}

/// Ends a storm consumer's call: settles what it got, counts the operation; answers the exit code
/// when the consumer is done.
fn storm_settle(
    b: &Board,
    c: usize,
    op: usize,
    r: Result<Vec<(u64, u64)>, RecvTimeoutError>,
    last: &mut [Option<u64>; STORM_SLOTS],
) -> Option<i32> {
    match r {
        Ok(got) => {
            b.settle(c, &got, last);
            b.count(Board::RECV_OPS + op);
            None
        }
        Err(RecvTimeoutError::Disconnected) => {
            b.settle(c, &[], last);
            Some(0)
        }
        Err(e) => {
            b.error(&format!("consumer {c}"), e);
            Some(3)
        }
    }
}

/// The byte ring under the storm, every operation on both sides.
#[test]
fn sigkill_storm_ring() {
    let ring = Ring::builder().capacity(16 * 1024).anonymous().unwrap();
    let b = Board::leak();
    let producer = |p: usize| {
        let ring = ring.clone();
        spawn(move || {
            let mut rng = storm_child_setup(p);
            let tx = ring.sender().unwrap();
            // Odd producers send their single messages through a solo sender (the lock kept
            // between sends), beside the ordinary handle's other operations.
            let mut solo = (p % 2 == 1).then(|| ring.solo_sender().unwrap());
            let who = format!("ring producer {p}");
            let mut buf = Vec::new();
            while !b.stopped() {
                let op = rng.below(6) as usize;
                let k = if op == 2 || op == 3 { 1 + rng.below(16) } else { 1 };
                let Some(seq0) = b.attempt(p, k) else { return 0 };
                let sent = match op {
                    0 => {
                        message(p as u32, seq0, 2000, &mut buf);
                        match solo.as_mut() {
                            Some(s) => s.send_timeout(&buf, STORM_WAIT).map(|()| 1).map_err(|e| e.to_string()),
                            None => tx.send_timeout(&buf, STORM_WAIT).map(|()| 1).map_err(|e| e.to_string()),
                        }
                    }
                    1 => {
                        message(p as u32, seq0, 2000, &mut buf);
                        let deadline = Instant::now() + STORM_WAIT;
                        loop {
                            match tx.try_send(&buf) {
                                Ok(()) => break Ok(1),
                                Err(ringpool::ring::TrySendError::Full(_)) if Instant::now() < deadline => {
                                    std::thread::sleep(Duration::from_micros(20))
                                }
                                Err(e) => break Err(e.to_string()),
                            }
                        }
                    }
                    2 | 3 => {
                        let batch: Vec<Vec<u8>> = (seq0..seq0 + k)
                            .map(|s| {
                                let mut m = Vec::new();
                                message(p as u32, s, 2000, &mut m);
                                m
                            })
                            .collect();
                        if op == 2 {
                            tx.send_many(&batch).map(|()| k).map_err(|e| e.to_string())
                        } else {
                            match tx.try_send_many(&batch) {
                                Ok(n) => Ok(n as u64),
                                Err(ringpool::ring::TrySendError::Full(_)) => Ok(0),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                    }
                    _ => {
                        // In place: small (staged in the guard) and large (written in the ring).
                        message(p as u32, seq0, if op == 4 { 64 } else { 2000 }, &mut buf);
                        match tx.reserve_timeout(buf.len(), STORM_WAIT) {
                            Ok(mut g) => {
                                g.copy_from_slice(&buf);
                                storm_hold(p);
                                g.commit();
                                Ok(1)
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                match sent {
                    Ok(n) => b.commit(p, seq0..seq0 + n),
                    Err(e) => {
                        b.error(&who, e);
                        return 2;
                    }
                }
                b.count(Board::SEND_OPS + op);
            }
            0
        })
    };
    let consumer = |c: usize| {
        let ring = ring.clone();
        spawn(move || {
            let mut rng = storm_consumer_setup(b, c, false);
            let rx = ring.receiver().unwrap();
            // Odd consumers take op 2 through a solo receiver (the lock kept between receives).
            let mut solo = (c % 2 == 1).then(|| ring.solo_receiver().unwrap());
            let mut last = [None::<u64>; STORM_SLOTS];
            let id = |m: &[u8]| match check_message(m) {
                Ok((p, seq)) => (u64::from(p), seq),
                Err(e) => {
                    b.error(&format!("consumer {c}"), e);
                    (u64::MAX, 0)
                }
            };
            loop {
                let op = rng.below(6) as usize;
                let r = match op {
                    0 => rx.try_recv().map_err(as_timeout).map(|m| vec![id(&m)]),
                    1 => rx.recv_timeout(STORM_WAIT).map(|m| vec![id(&m)]),
                    2 => match solo.as_mut() {
                        Some(s) => s.recv_with_timeout(STORM_WAIT, |m| vec![id(m)]),
                        None => rx.recv_with_timeout(STORM_WAIT, |m| vec![id(m)]),
                    },
                    3 => {
                        let mut got = Vec::new();
                        rx.recv_many_timeout(1 + rng.below(32) as usize, STORM_WAIT, |m| got.push(id(m))).map(|_| got)
                    }
                    4 => {
                        let mut buf = Vec::new();
                        rx.try_recv_many(1 + rng.below(32) as usize, |m| buf.push(id(m)))
                            .map_err(as_timeout)
                            .map(|_| buf)
                    }
                    _ => rx.recv_in_place_timeout(STORM_WAIT).map(|g| {
                        let got = vec![id(&g)];
                        storm_hold(c);
                        drop(g);
                        got
                    }),
                };
                let r = match r {
                    Err(RecvTimeoutError::Timeout) if op == 0 || op == 4 => Ok(Vec::new()),
                    r => r,
                };
                if let Some(code) = storm_settle(b, c, op, r, &mut last) {
                    return code;
                }
            }
        })
    };
    storm("ring", b, &producer, &consumer, &|| ring.debug_lock_holders(), &|| ring.stats(), (6, 6));
}

/// A queue message: an identity and a check of it.
fn qmessage(p: usize, seq: u64) -> [u64; 4] {
    let h = (p as u64) << 40 ^ seq ^ 0x9E37_79B9_7F4A_7C15;
    [p as u64, seq, h, !h]
}

/// The identity of a queue message, checked.
fn queue_identity(bytes: &[u8]) -> Result<(u64, u64), String> {
    if bytes.len() != 32 {
        return Err(format!("a queue value of {} bytes", bytes.len()));
    }
    let w: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    let h = w[0] << 40 ^ w[1] ^ 0x9E37_79B9_7F4A_7C15;
    if w[2] != h || w[3] != !h {
        return Err(format!("corrupt queue value {w:x?}"));
    }
    Ok((w[0], w[1]))
}

/// The slot ring under the storm, every operation on both sides.
#[test]
fn sigkill_storm_queue() {
    let queue = ringpool::Queue::<[u64; 4]>::builder().slots(64).anonymous().unwrap();
    let b = Board::leak();
    let producer = |p: usize| {
        let queue = queue.clone();
        spawn(move || {
            let mut rng = storm_child_setup(p);
            let tx = queue.sender().unwrap();
            // Odd producers send op 0 through a solo sender (the lock kept between sends).
            let mut solo = (p % 2 == 1).then(|| queue.solo_sender().unwrap());
            let who = format!("queue producer {p}");
            while !b.stopped() {
                let op = rng.below(5) as usize;
                let k = if op == 2 || op == 3 { 1 + rng.below(24) } else { 1 };
                let Some(seq0) = b.attempt(p, k) else { return 0 };
                let sent = match op {
                    0 => match solo.as_mut() {
                        Some(s) => s.send_ref(&qmessage(p, seq0)).map(|()| 1).map_err(|e| e.to_string()),
                        None => tx.send(qmessage(p, seq0)).map(|()| 1).map_err(|e| e.to_string()),
                    },
                    1 => {
                        let deadline = Instant::now() + STORM_WAIT;
                        loop {
                            match tx.try_send(qmessage(p, seq0)) {
                                Ok(()) => break Ok(1),
                                Err(ringpool::ring::TrySendError::Full(_)) if Instant::now() < deadline => {
                                    std::thread::sleep(Duration::from_micros(20))
                                }
                                Err(e) => break Err(e.to_string()),
                            }
                        }
                    }
                    2 | 3 => {
                        let batch: Vec<[u64; 4]> = (seq0..seq0 + k).map(|s| qmessage(p, s)).collect();
                        if op == 2 {
                            tx.send_many(&batch).map(|()| k).map_err(|e| e.to_string())
                        } else {
                            match tx.try_send_many(&batch) {
                                Ok(n) => Ok(n as u64),
                                Err(ringpool::ring::TrySendError::Full(_)) => Ok(0),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                    }
                    _ => match tx.reserve() {
                        Ok(mut g) => {
                            *g = qmessage(p, seq0);
                            storm_hold(p);
                            g.commit();
                            Ok(1)
                        }
                        Err(e) => Err(e.to_string()),
                    },
                };
                match sent {
                    Ok(n) => b.commit(p, seq0..seq0 + n),
                    Err(e) => {
                        b.error(&who, e);
                        return 2;
                    }
                }
                b.count(Board::SEND_OPS + op);
            }
            0
        })
    };
    let consumer = |c: usize| {
        let queue = queue.clone();
        spawn(move || {
            let mut rng = storm_consumer_setup(b, c, true);
            let rx = queue.receiver().unwrap();
            // Odd consumers take op 1 through a solo receiver (the lock kept between receives).
            let mut solo = (c % 2 == 1).then(|| queue.solo_receiver().unwrap());
            let mut place = [0u64; 4];
            let id = |m: &[u64; 4]| (m[0], m[1]);
            let mut last = [None::<u64>; STORM_SLOTS];
            let mut out = [[0u64; 4]; 32];
            loop {
                let op = rng.below(6) as usize;
                let n = 1 + rng.below(32) as usize;
                let r = match op {
                    0 => rx.try_recv().map_err(as_timeout).map(|m| vec![id(&m)]),
                    1 => match solo.as_mut() {
                        Some(s) => s.recv_into_timeout(&mut place, STORM_WAIT).map(|()| vec![id(&place)]),
                        None => rx.recv_timeout(STORM_WAIT).map(|m| vec![id(&m)]),
                    },
                    2 => rx.try_recv_many(&mut out[..n]).map_err(as_timeout).map(|k| out[..k].iter().map(id).collect()),
                    3 => rx.recv_many_timeout(&mut out[..n], STORM_WAIT).map(|k| out[..k].iter().map(id).collect()),
                    _ => rx.recv_in_place_timeout(STORM_WAIT).map(|g| {
                        let got = vec![id(&g)];
                        storm_hold(c);
                        drop(g);
                        got
                    }),
                };
                let r = match r {
                    Err(RecvTimeoutError::Timeout) if op == 0 || op == 2 => Ok(Vec::new()),
                    r => r,
                };
                if let Some(code) = storm_settle(b, c, op, r, &mut last) {
                    return code;
                }
            }
        })
    };
    storm("queue", b, &producer, &consumer, &|| queue.debug_lock_holders(), &|| queue.stats(), (5, 6));
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
    let rx = ring.receiver().unwrap();
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
