//! Typed ring benchmark: one-way throughput of a 64-byte struct holding a short string through a
//! [`TypedRing`] (rkyv archives written straight into the ring, validated on receipt), **between
//! processes**.
//!
//! # Running
//!
//! - `cargo bench --bench archive` (4 benchmarks of 2 s warm-up and 6 s measurement);
//! - a fast pass: `cargo bench --bench archive -- --quick`;
//! - a smoke test, one iteration each: `cargo test --release --bench archive`.
//!
//! # What is measured
//!
//! The value is [`Msg`]: four `u64`s, two `u32`s and a 16-byte `String` (64 bytes as a Rust value;
//! its archive is 64 bytes: a 48-byte root after the string's 16 bytes; the bench prints both). The measuring
//! process sends with `send_ref` (the value is rewritten in place before each send: sequence number
//! in every field, and the string's 16 digits, so no allocation is timed); a consumer process,
//! forked and pinned to another CPU, receives each message and checks every field and the string
//! against the sequence number it expects. A mismatch panics in the consumer and stops the bench.
//!
//! - `typed_ring/in_place`: the consumer reads the validated `ArchivedMsg` where it lies
//!   (`recv_archived`);
//! - `typed_ring/owned`: the consumer deserializes an owned `Msg` (`recv`: validation, then a
//!   `String` allocation per message);
//! - `typed_ring/in_place_4KiB_ring`: in place through a ring of 4 KiB instead of 1 MiB (the
//!   sender waits for room more often);
//! - `typed_ring/queue_in_place`: through a [`TypedQueue`] of 1024 slots of 128 bytes instead, read
//!   in place.
//!
//! Throughput is messages per second (criterion's `elem/s`); the bench also prints msgs/s per row.
//! Timing is as in `benches/ring.rs`: from the first send until the consumer reports that it has
//! checked the last message.

#[allow(dead_code, reason = "benches/common serves benches/ring.rs too")]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{Peer, cpu, pin};
use criterion::{BenchmarkId, Criterion, Throughput};
use ringpool::ring::archive::{TypedQueue, TypedQueueSender, TypedRing, TypedSender, rkyv};
use ringpool::sync::SpinPolicy;

/// A 64-byte struct holding a short string.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(crate = rkyv, derive(Debug))]
struct Msg {
    seq: u64,
    a: u64,
    b: u64,
    e: u64,
    c: u32,
    d: u32,
    name: String,
}

const _: () = assert!(std::mem::size_of::<Msg>() == 64);

fn a_of(seq: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Rewrites `m` for `seq`, reusing the string's allocation.
fn fill(m: &mut Msg, seq: u64) {
    m.seq = seq;
    m.a = a_of(seq);
    m.b = !seq;
    m.e = seq ^ 0x5555;
    m.c = seq as u32;
    m.d = (seq >> 32) as u32 ^ 0xA5A5_A5A5;
    m.name.clear();
    let _ = write!(m.name, "{seq:016}");
}

fn check_archived(m: &ArchivedMsg, seq: u64, digits: &mut String) {
    digits.clear();
    let _ = write!(digits, "{seq:016}");
    let ok = m.seq == seq
        && m.a == a_of(seq)
        && m.b == !seq
        && m.e == seq ^ 0x5555
        && m.c == seq as u32
        && m.d == (seq >> 32) as u32 ^ 0xA5A5_A5A5
        && m.name.as_str() == digits.as_str();
    assert!(ok, "consumer: message {seq} is wrong: {m:?}");
}

fn check_owned(m: &Msg, seq: u64, want: &mut Msg) {
    fill(want, seq);
    assert!(m == want, "consumer: message {seq} is wrong: {m:?}");
}

/// Which path a benchmark takes.
#[derive(Clone, Copy)]
enum Kind {
    /// A 1 MiB typed ring, read in place.
    RingInPlace,
    /// A 1 MiB typed ring, deserialized.
    RingOwned,
    /// A 4 KiB typed ring, read in place.
    SmallRing,
    /// A typed queue of 1024 slots of 128 bytes, read in place.
    QueueInPlace,
}

enum Tx {
    Ring(TypedSender<Msg>),
    Queue(TypedQueueSender<Msg, 128>),
}

impl Tx {
    fn send_ref(&self, m: &Msg) -> bool {
        match self {
            Tx::Ring(tx) => tx.send_ref(m).is_ok(),
            Tx::Queue(tx) => tx.send_ref(m).is_ok(),
        }
    }
}

struct OneWay {
    tx: Tx,
    peer: Peer,
    msg: Msg,
    seq: u64,
    label: &'static str,
    best: f64,
}

impl OneWay {
    fn new(kind: Kind, label: &'static str) -> OneWay {
        let mut expected = 0u64;
        let mut digits = String::with_capacity(16);
        let mut want = Msg { seq: 0, a: 0, b: 0, e: 0, c: 0, d: 0, name: String::with_capacity(16) };
        let (tx, peer) = match kind {
            Kind::RingInPlace | Kind::RingOwned | Kind::SmallRing => {
                let capacity = if matches!(kind, Kind::SmallRing) { 4096 } else { 1 << 20 };
                let ring = TypedRing::<Msg>::builder().capacity(capacity).anonymous().expect("typed ring");
                let tx = ring.sender().expect("sender");
                let rx = ring.receiver().expect("receiver");
                let owned = matches!(kind, Kind::RingOwned);
                let peer = Peer::start(format!("consumer-{label}"), cpu(1), SpinPolicy::busy(), true, move |n| {
                    for _ in 0..n {
                        if owned {
                            match rx.recv() {
                                Ok(m) => check_owned(&m, expected, &mut want),
                                Err(e) => panic!("consumer: recv: {e}"),
                            }
                        } else {
                            match rx.recv_archived() {
                                Ok(m) => check_archived(&m, expected, &mut digits),
                                Err(e) => panic!("consumer: recv_archived: {e}"),
                            }
                        }
                        expected += 1;
                    }
                    expected
                });
                (Tx::Ring(tx), peer)
            }
            Kind::QueueInPlace => {
                let q = TypedQueue::<Msg, 128>::builder().slots(1024).anonymous().expect("typed queue");
                let tx = q.sender().expect("sender");
                let rx = q.receiver().expect("receiver");
                let peer = Peer::start(format!("consumer-{label}"), cpu(1), SpinPolicy::busy(), true, move |n| {
                    for _ in 0..n {
                        match rx.recv_archived() {
                            Ok(m) => check_archived(&m, expected, &mut digits),
                            Err(e) => panic!("consumer: recv_archived: {e}"),
                        }
                        expected += 1;
                    }
                    expected
                });
                (Tx::Queue(tx), peer)
            }
        };
        let msg = Msg { seq: 0, a: 0, b: 0, e: 0, c: 0, d: 0, name: String::with_capacity(16) };
        OneWay { tx, peer, msg, seq: 0, label, best: 0.0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        for _ in 0..iters {
            fill(&mut self.msg, self.seq);
            if !self.tx.send_ref(&self.msg) {
                self.peer.failed("receiving");
            }
            self.seq += 1;
        }
        let received_up_to = self.peer.reply();
        let elapsed = t.elapsed();
        assert_eq!(received_up_to, self.seq, "consumer's count");
        if iters >= 1000 {
            self.best = self.best.max(iters as f64 / elapsed.as_secs_f64());
        }
        elapsed
    }
}

impl Drop for OneWay {
    fn drop(&mut self) {
        if self.best > 0.0 {
            println!("typed_ring/{}: best sample {:.2} M msgs/s", self.label, self.best / 1e6);
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .sample_size(20)
        .configure_from_args();
    let mut sample = Msg { seq: 0, a: 0, b: 0, e: 0, c: 0, d: 0, name: String::new() };
    fill(&mut sample, 123);
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&sample).expect("archive");
    println!(
        "typed_ring: a Msg is {} bytes as a Rust value, {} archived ({} of root)",
        std::mem::size_of::<Msg>(),
        archive.len(),
        std::mem::size_of::<ArchivedMsg>()
    );
    pin(cpu(0));
    let mut group = c.benchmark_group("typed_ring");
    group.throughput(Throughput::Elements(1));
    for (kind, label) in [
        (Kind::RingInPlace, "in_place"),
        (Kind::RingOwned, "owned"),
        (Kind::SmallRing, "in_place_4KiB_ring"),
        (Kind::QueueInPlace, "queue_in_place"),
    ] {
        let mut rig = None;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            let rig = rig.get_or_insert_with(|| OneWay::new(kind, label));
            b.iter_custom(|iters| rig.run(iters));
        });
    }
    group.finish();
    c.final_summary();
}
