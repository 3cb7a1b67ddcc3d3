//! Ring benchmarks: throughput and latency of [`Ring`] and [`Queue`] **between processes**.
//!
//! # Running
//!
//! - everything: `cargo bench --bench ring` (about 4.5 minutes on a 2-vCPU VM: 22 benchmarks of
//!   2 s warm-up and 8 s measurement);
//! - one group or benchmark: `cargo bench --bench ring -- mpmc`, `-- 'pingpong/ring_8B/park'`;
//! - a fast pass: `cargo bench --bench ring -- --quick` (about 10 s: each benchmark stops once two
//!   measurements agree within 5%), or smaller settings such as
//!   `-- --warm-up-time 0.3 --measurement-time 1 --sample-size 10`;
//! - a smoke test, one iteration each: `cargo test --bench ring`.
//!
//! # What is measured
//!
//! - `throughput`: one producer (the measuring process) to one consumer process through a 4 MiB
//!   [`Ring`] (4 times the largest message); `send` of one message at a time, `recv_with` reading it
//!   in place; messages of 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB; messages/s. `throughput/solo`: the
//!   same with a `SoloSender` and a `SoloReceiver` (the locks kept between messages), 8 B to 1 KiB.
//! - `typed`: `[u8; N]` messages, N = 8 and 1024, through a `Ring` (`send`, `recv_with`) and a
//!   `Queue<[u8; N]>` by value (`send(value)`, `recv()`) and by reference (`send_ref`,
//!   `recv_into`) and read in place (`send_ref`, `recv_in_place`), and both with solo handles
//!   (`RingSolo`, `QueueSolo`), about 1 MiB of storage each; messages/s.
//! - `one_cpu`: the 8-byte ring ping-pong with both processes pinned to one CPU, default and
//!   parking policies: a waiter that spins there burns its peer's time slice.
//! - `batch`: 8 B messages in batches of 1, 8, 64 and 256, through a [`Ring`] (`send_many`,
//!   `recv_many`) and through a `Queue<u64>` (`send_many`, `recv_many` into a slice), both with
//!   1 MiB of storage; messages/s.
//! - `mpmc`: P producer processes and C consumer processes on one [`Ring`] (1x1, 2x2, 4x4, 4x1,
//!   1x4), 64 B messages, the measuring process only coordinating; total messages/s from the round's
//!   start to the last message received. On two CPUs this oversubscribes them (see [`mpmc`]).
//! - `pingpong`: one 8 B message there and back over two rings between the measuring process and an
//!   echoing peer, with `SpinPolicy::busy()`, `SpinPolicy::park()` and the default policy on both
//!   sides, and over two `Queue<u64>`s with a busy spin; time per round trip.
//!
//! # How
//!
//! **Peers are processes.** Every benchmark forks its peer processes (ringpool's own checked fork)
//! before its first sample and keeps them for all its samples; a peer serves numbered commands
//! ("handle `n` messages"), sent through a small control `Queue<u64>` outside the timed region, and
//! says when it is awake and when it is done. The measuring process and its peer are pinned to two
//! different CPUs (the first two this process may use: CPUs 0 and 1 here) when there are at least
//! two. Every ring is anonymous (`memfd`), so nothing is left in /dev/shm; every peer dies with the
//! bench (`PR_SET_PDEATHSIG`), and is stopped (or killed) and reaped when its benchmark ends.
//!
//! **The payload is written and read.** The sender writes every message in full (its sequence
//! number in the first and last 8 bytes, a byte derived from it in every byte between) and the
//! receiver checks the length, the sequence number at both ends and one byte in every 64, so every
//! cache line of every message crosses between the cores. A mismatch panics in the peer, and the
//! bench stops with the peer's message.
//!
//! **Timing.** Each measurement (criterion's `iter_custom`) moves exactly `iters` messages, or round
//! trips, and is timed in the measuring process: from the first send until the consumer reports
//! that it has checked the last message (one way), or until the last echo is back (ping-pong).
//!
//! Figures on a small VM are noisy (the host moves its vCPUs, and a shared cache line crosses in
//! 65 to 215 ns depending on the placement of the moment; see `MEASURED.md`), and more so while
//! other work runs: compare figures of the same run, not absolute figures of different runs.

mod common;

use std::time::{Duration, Instant};

use common::{Peer, check, cpu, cpu_count, fill, pin, seq_of};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement};
use ringpool::sync::SpinPolicy;
use ringpool::{Queue, Ring, queue, ring};

/// XORed into an echoed ping, so the echo proves the peer read it.
const ECHO: u64 = 0xec40_ec40_ec40_ec40;

type Group<'a> = BenchmarkGroup<'a, measurement::WallTime>;

/// Benchmarks `id` with a rig built on first use and kept for every sample (criterion calls the
/// closure once per sample, and not at all when a filter excludes the benchmark), then dropped,
/// which stops its peers.
fn bench_rig<R>(
    group: &mut Group<'_>,
    id: BenchmarkId,
    make: impl Fn() -> R,
    mut run: impl FnMut(&mut R, u64) -> Duration,
) {
    let mut rig = None;
    group.bench_function(id, |b| {
        let rig = rig.get_or_insert_with(&make);
        b.iter_custom(|iters| run(rig, iters));
    });
}

// ----- 1. throughput by message size ---------------------------------------------------------------

/// Capacity of the ring for every message size: 4 times the largest message. One capacity for all
/// sizes, so that they compare: the capacity matters by itself. On this VM's EPYC (1 MiB of L2 per
/// core), 64 KiB messages moved at 10.4-11.2 GB/s through a 1 MiB ring and at 27.7-28.0 GB/s
/// through a 4 MiB one (three alternating runs each), likely because in a ring that fits one
/// core's L2 every line is still in the other core's L2 when it is next written or read.
const THROUGHPUT_RING: usize = 4 << 20;

/// The measuring process sends; a consumer process receives with `recv_with` and checks.
struct OneWay {
    tx: ring::Sender,
    peer: Peer,
    buf: Vec<u8>,
    seq: u64,
}

impl OneWay {
    fn new(size: usize) -> OneWay {
        let r = Ring::builder().capacity(THROUGHPUT_RING).anonymous().expect("ring");
        let tx = r.sender().expect("sender");
        let rx = r.receiver().expect("receiver");
        let mut expected = 0u64;
        let peer = Peer::start(format!("consumer-{size}B"), cpu(1), SpinPolicy::busy(), true, move |n| {
            for _ in 0..n {
                if let Err(e) = rx.recv_with(|m| check(m, size, expected)) {
                    panic!("consumer: recv: {e}");
                }
                expected += 1;
            }
            expected
        });
        OneWay { tx, peer, buf: vec![0; size], seq: 0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        for _ in 0..iters {
            fill(&mut self.buf, self.seq);
            if self.tx.send(self.buf.as_slice()).is_err() {
                self.peer.failed("receiving");
            }
            self.seq += 1;
        }
        let received_up_to = self.peer.reply();
        let elapsed = t.elapsed();
        assert_eq!(received_up_to, self.seq, "consumer's count");
        elapsed
    }
}

/// [`OneWay`] with a [`ring::SoloSender`] here and a [`ring::SoloReceiver`] in the consumer: the
/// locks kept between messages.
struct SoloOneWay {
    tx: ring::SoloSender,
    peer: Peer,
    buf: Vec<u8>,
    seq: u64,
}

impl SoloOneWay {
    fn new(size: usize) -> SoloOneWay {
        let r = Ring::builder().capacity(THROUGHPUT_RING).anonymous().expect("ring");
        let tx = r.solo_sender().expect("sender");
        let mut rx = r.solo_receiver().expect("receiver");
        let mut expected = 0u64;
        let peer = Peer::start(format!("solo-consumer-{size}B"), cpu(1), SpinPolicy::busy(), true, move |n| {
            for _ in 0..n {
                if let Err(e) = rx.recv_with(|m| check(m, size, expected)) {
                    panic!("consumer: recv: {e}");
                }
                expected += 1;
            }
            expected
        });
        SoloOneWay { tx, peer, buf: vec![0; size], seq: 0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        for _ in 0..iters {
            fill(&mut self.buf, self.seq);
            if self.tx.send(self.buf.as_slice()).is_err() {
                self.peer.failed("receiving");
            }
            self.seq += 1;
        }
        let received_up_to = self.peer.reply();
        let elapsed = t.elapsed();
        assert_eq!(received_up_to, self.seq, "consumer's count");
        elapsed
    }
}

fn throughput(c: &mut Criterion) {
    pin(cpu(0));
    let mut group = c.benchmark_group("throughput");
    for (size, label) in [(8, "8B"), (64, "64B"), (1024, "1KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")] {
        group.throughput(Throughput::Elements(1));
        bench_rig(&mut group, BenchmarkId::new("send_recv_with", label), || OneWay::new(size), OneWay::run);
    }
    for (size, label) in [(8, "8B"), (64, "64B"), (1024, "1KiB")] {
        bench_rig(&mut group, BenchmarkId::new("solo", label), || SoloOneWay::new(size), SoloOneWay::run);
    }
    group.finish();
}

// ----- 2. batch size ---------------------------------------------------------------------------------

/// 8-byte messages through a [`Ring`] in batches: `send_many` here, `recv_many` in the peer.
struct RingBatch {
    tx: ring::Sender,
    peer: Peer,
    msgs: Vec<[u8; 8]>,
    seq: u64,
}

impl RingBatch {
    fn new(batch: usize) -> RingBatch {
        let r = Ring::builder().capacity(1 << 20).anonymous().expect("ring");
        let tx = r.sender().expect("sender");
        let rx = r.receiver().expect("receiver");
        let mut expected = 0u64;
        let peer = Peer::start(format!("ring-batch-{batch}"), cpu(1), SpinPolicy::busy(), true, move |n| {
            let mut got = 0;
            while got < n {
                let max = (n - got).min(batch as u64) as usize;
                let r = rx.recv_many(max, |m| {
                    check(m, 8, expected);
                    expected += 1;
                });
                got += r.unwrap_or_else(|e| panic!("consumer: recv_many: {e}")) as u64;
            }
            expected
        });
        RingBatch { tx, peer, msgs: vec![[0; 8]; batch], seq: 0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        let mut left = iters;
        while left > 0 {
            let k = left.min(self.msgs.len() as u64) as usize;
            for m in &mut self.msgs[..k] {
                *m = self.seq.to_le_bytes();
                self.seq += 1;
            }
            if self.tx.send_many(&self.msgs[..k]).is_err() {
                self.peer.failed("receiving");
            }
            left -= k as u64;
        }
        let received_up_to = self.peer.reply();
        let elapsed = t.elapsed();
        assert_eq!(received_up_to, self.seq, "consumer's count");
        elapsed
    }
}

/// `u64` values through a [`Queue`] in batches: `send_many` here, `recv_many` in the peer.
struct QueueBatch {
    tx: queue::Sender<u64>,
    peer: Peer,
    values: Vec<u64>,
    seq: u64,
}

impl QueueBatch {
    fn new(batch: usize) -> QueueBatch {
        // 65536 slots of 16 bytes (value and stamp): 1 MiB, as the ring.
        let q = Queue::<u64>::builder().slots(1 << 16).anonymous().expect("queue");
        let tx = q.sender().expect("sender");
        let rx = q.receiver().expect("receiver");
        let mut expected = 0u64;
        let peer = Peer::start(format!("queue-batch-{batch}"), cpu(1), SpinPolicy::busy(), true, move |n| {
            let mut out = vec![0u64; batch];
            let mut got = 0;
            while got < n {
                let max = (n - got).min(batch as u64) as usize;
                let k = rx.recv_many(&mut out[..max]).unwrap_or_else(|e| panic!("consumer: recv_many: {e}"));
                for &v in &out[..k] {
                    assert_eq!(v, expected, "consumer: value out of sequence");
                    expected += 1;
                }
                got += k as u64;
            }
            expected
        });
        QueueBatch { tx, peer, values: vec![0; batch], seq: 0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        let mut left = iters;
        while left > 0 {
            let k = left.min(self.values.len() as u64) as usize;
            for v in &mut self.values[..k] {
                *v = self.seq;
                self.seq += 1;
            }
            if self.tx.send_many(&self.values[..k]).is_err() {
                self.peer.failed("receiving");
            }
            left -= k as u64;
        }
        let received_up_to = self.peer.reply();
        let elapsed = t.elapsed();
        assert_eq!(received_up_to, self.seq, "consumer's count");
        elapsed
    }
}

fn batch(c: &mut Criterion) {
    pin(cpu(0));
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(1));
    for batch in [1, 8, 64, 256] {
        bench_rig(&mut group, BenchmarkId::new("ring_8B", batch), || RingBatch::new(batch), RingBatch::run);
    }
    for batch in [1, 8, 64, 256] {
        bench_rig(&mut group, BenchmarkId::new("queue_u64", batch), || QueueBatch::new(batch), QueueBatch::run);
    }
    group.finish();
}

// ----- 3. MPMC scaling -------------------------------------------------------------------------------

/// Size of an MPMC message: producer id, sequence number, 48 filler bytes.
const MPMC_LEN: usize = 64;

/// Producer id of the end-of-round marker the coordinator sends to each consumer.
const END_OF_ROUND: u64 = u64::MAX;

/// Writes producer `p`'s message `seq`.
fn mpmc_message(buf: &mut [u8; MPMC_LEN], p: u64, seq: u64) {
    buf[..8].copy_from_slice(&p.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..].fill((seq as u8) ^ (p as u8) ^ 0xa5);
}

/// `producers` producer processes and `consumers` consumer processes on one ring; the measuring
/// process coordinates: it starts a round, waits for every producer to have sent its share, sends
/// one end-of-round marker per consumer behind them, and stops the clock when every consumer has
/// reached its marker and reported its count. The consumers are awake (they said so) when the
/// clock starts; the producers' wake-up on their command, and the replies at the end, are inside
/// the timed region: tens of microseconds per sample, against samples of tens of milliseconds.
struct Mpmc {
    producers: Vec<Peer>,
    consumers: Vec<Peer>,
    /// The coordinator's sender, for the end-of-round markers.
    tx: ring::Sender,
}

impl Mpmc {
    fn new(producers: usize, consumers: usize) -> Mpmc {
        let r = Ring::builder().capacity(1 << 20).anonymous().expect("ring");
        let tx = r.sender().expect("sender");
        // One CPU per process when there are enough; otherwise producers share the first CPU and
        // consumers the second, as in the one-to-one benchmarks.
        let own_cpus = cpu_count() > producers + consumers;
        let consumer_peers = (0..consumers)
            .map(|j| {
                let rx = r.receiver().expect("receiver");
                let mut last = vec![None::<u64>; producers];
                let exact = consumers == 1;
                let at = if own_cpus { cpu(1 + producers + j) } else { cpu(1) };
                // The coordinator shares a CPU with workers: it parks while it waits.
                Peer::start(format!("mpmc-consumer-{j}"), at, SpinPolicy::park(), true, move |_| {
                    let mut count = 0u64;
                    loop {
                        let end = rx.recv_with(|m| {
                            let m: &[u8; MPMC_LEN] = m.try_into().expect("consumer: 64-byte message");
                            let p = u64::from_le_bytes(m[..8].try_into().unwrap());
                            if p == END_OF_ROUND {
                                return true;
                            }
                            let seq = u64::from_le_bytes(m[8..16].try_into().unwrap());
                            let mut want = [0; MPMC_LEN];
                            mpmc_message(&mut want, p, seq);
                            let prev = last.get_mut(p as usize).expect("consumer: producer id out of range");
                            let in_order = match *prev {
                                None => !exact || seq == 0,
                                Some(l) => seq > l && (!exact || seq == l + 1),
                            };
                            assert!(in_order && *m == want, "consumer: bad message #{seq} from producer {p}");
                            *prev = Some(seq);
                            false
                        });
                        match end {
                            Ok(true) => return count,
                            Ok(false) => count += 1,
                            Err(e) => panic!("consumer: recv: {e}"),
                        }
                    }
                })
            })
            .collect();
        let producer_peers = (0..producers)
            .map(|p| {
                let ptx = r.sender().expect("sender");
                let mut seq = 0u64;
                let at = if own_cpus { cpu(1 + p) } else { cpu(0) };
                Peer::start(format!("mpmc-producer-{p}"), at, SpinPolicy::park(), false, move |n| {
                    let mut buf = [0u8; MPMC_LEN];
                    for _ in 0..n {
                        mpmc_message(&mut buf, p as u64, seq);
                        ptx.send(&buf).unwrap_or_else(|e| panic!("producer: send: {e}"));
                        seq += 1;
                    }
                    n
                })
            })
            .collect();
        Mpmc { producers: producer_peers, consumers: consumer_peers, tx }
    }

    fn run(&mut self, iters: u64) -> Duration {
        for c in &mut self.consumers {
            c.command(1);
        }
        for c in &mut self.consumers {
            c.ready();
        }
        let n = self.producers.len() as u64;
        let t = Instant::now();
        for (k, p) in self.producers.iter_mut().enumerate() {
            p.command(iters / n + u64::from((k as u64) < iters % n));
        }
        let sent: u64 = self.producers.iter_mut().map(Peer::reply).sum();
        let mut end = [0u8; MPMC_LEN];
        end[..8].copy_from_slice(&END_OF_ROUND.to_le_bytes());
        for _ in 0..self.consumers.len() {
            if self.tx.send(&end).is_err() {
                self.fail_any();
            }
        }
        let received: u64 = self.consumers.iter_mut().map(Peer::reply).sum();
        let elapsed = t.elapsed();
        assert_eq!((sent, received), (iters, iters), "messages sent and received");
        elapsed
    }

    /// Every consumer is gone: name one that failed.
    fn fail_any(&mut self) -> ! {
        match self.consumers.first_mut() {
            Some(c) => c.failed("receiving"),
            None => panic!("bench: no consumer"),
        }
    }
}

/// MPMC scaling, in total messages/s.
///
/// With two CPUs, anything beyond 1x1 oversubscribes them: the producers share one CPU and the
/// consumers the other, so the larger configurations measure the ring under preemption (a member
/// can be descheduled while it holds its side's lock, and the others spin, then park, behind it) as
/// well as under lock contention. That is expected here, not a fault of the bench; on a machine
/// with more CPUs than processes, each process gets a CPU of its own.
fn mpmc(c: &mut Criterion) {
    pin(cpu(0));
    let mut group = c.benchmark_group("mpmc");
    group.throughput(Throughput::Elements(1));
    for (p, c) in [(1, 1), (2, 2), (4, 4), (4, 1), (1, 4)] {
        bench_rig(&mut group, BenchmarkId::from_parameter(format!("{p}x{c}")), || Mpmc::new(p, c), Mpmc::run);
    }
    group.finish();
}

// ----- 4. ping-pong latency --------------------------------------------------------------------------

/// Two rings between the measuring process and an echoing peer; one 8-byte message goes there and
/// back per iteration.
struct RingPingPong {
    tx: ring::Sender,
    rx: ring::Receiver,
    peer: Peer,
    seq: u64,
}

impl RingPingPong {
    fn new(spin: SpinPolicy) -> RingPingPong {
        RingPingPong::with_cpu(spin, cpu(1))
    }

    /// The echo pinned to `echo_cpu` (the measuring process stays where it is).
    fn with_cpu(spin: SpinPolicy, echo_cpu: Option<usize>) -> RingPingPong {
        let there = Ring::builder().capacity(4096).spin(spin).anonymous().expect("ring");
        let back = Ring::builder().capacity(4096).spin(spin).anonymous().expect("ring");
        let tx = there.sender().expect("sender");
        let rx = back.receiver().expect("receiver");
        let peer_rx = there.receiver().expect("receiver");
        let peer_tx = back.sender().expect("sender");
        let mut expected = 0u64;
        let peer = Peer::start("echo", echo_cpu, SpinPolicy::busy(), true, move |n| {
            for _ in 0..n {
                let v = peer_rx.recv_with(seq_of).unwrap_or_else(|e| panic!("echo: recv: {e}"));
                assert_eq!(v, expected, "echo: ping out of sequence");
                peer_tx.send((v ^ ECHO).to_le_bytes()).unwrap_or_else(|e| panic!("echo: send: {e}"));
                expected += 1;
            }
            expected
        });
        RingPingPong { tx, rx, peer, seq: 0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        for _ in 0..iters {
            if self.tx.send(self.seq.to_le_bytes()).is_err() {
                self.peer.failed("echoing");
            }
            match self.rx.recv_with(seq_of) {
                Ok(v) => assert_eq!(v, self.seq ^ ECHO, "echo of ping #{}", self.seq),
                Err(_) => self.peer.failed("echoing"),
            }
            self.seq += 1;
        }
        let elapsed = t.elapsed();
        assert_eq!(self.peer.reply(), self.seq, "echo's count");
        elapsed
    }
}

/// The same over two `Queue<u64>`s.
struct QueuePingPong {
    tx: queue::Sender<u64>,
    rx: queue::Receiver<u64>,
    peer: Peer,
    seq: u64,
}

impl QueuePingPong {
    fn new(spin: SpinPolicy) -> QueuePingPong {
        let there = Queue::<u64>::builder().slots(16).spin(spin).anonymous().expect("queue");
        let back = Queue::<u64>::builder().slots(16).spin(spin).anonymous().expect("queue");
        let tx = there.sender().expect("sender");
        let rx = back.receiver().expect("receiver");
        let peer_rx = there.receiver().expect("receiver");
        let peer_tx = back.sender().expect("sender");
        let mut expected = 0u64;
        let peer = Peer::start("queue-echo", cpu(1), SpinPolicy::busy(), true, move |n| {
            for _ in 0..n {
                let v = peer_rx.recv().unwrap_or_else(|e| panic!("echo: recv: {e}"));
                assert_eq!(v, expected, "echo: ping out of sequence");
                peer_tx.send(v ^ ECHO).unwrap_or_else(|e| panic!("echo: send: {e}"));
                expected += 1;
            }
            expected
        });
        QueuePingPong { tx, rx, peer, seq: 0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        for _ in 0..iters {
            if self.tx.send(self.seq).is_err() {
                self.peer.failed("echoing");
            }
            match self.rx.recv() {
                Ok(v) => assert_eq!(v, self.seq ^ ECHO, "echo of ping #{}", self.seq),
                Err(_) => self.peer.failed("echoing"),
            }
            self.seq += 1;
        }
        let elapsed = t.elapsed();
        assert_eq!(self.peer.reply(), self.seq, "echo's count");
        elapsed
    }
}

fn pingpong(c: &mut Criterion) {
    pin(cpu(0));
    let mut group = c.benchmark_group("pingpong");
    let ring_id = |name| BenchmarkId::new("ring_8B", name);
    let busy = SpinPolicy::busy();
    bench_rig(&mut group, ring_id("busy"), || RingPingPong::new(busy), RingPingPong::run);
    bench_rig(&mut group, ring_id("park"), || RingPingPong::new(SpinPolicy::park()), RingPingPong::run);
    bench_rig(&mut group, ring_id("default"), || RingPingPong::new(SpinPolicy::default()), RingPingPong::run);
    bench_rig(&mut group, BenchmarkId::new("queue_u64", "busy"), || QueuePingPong::new(busy), QueuePingPong::run);
    group.finish();
}

// ----- 5. the typed queue against the byte ring -----------------------------------------------------

/// How the typed bench moves its `[u8; N]` messages.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// `Ring`: `send(&[u8])`, `recv_with` reading in place.
    Ring,
    /// `Queue<[u8; N]>`: `send(value)`, `recv() -> value`.
    QueueByValue,
    /// `Queue<[u8; N]>`: `send_ref(&value)`, `recv_into(&mut value)`.
    QueueByRef,
    /// `Queue<[u8; N]>`: `send_ref(&value)`, `recv_in_place()` read where it lies (as the ring's
    /// `recv_with`).
    QueueInPlace,
    /// `Queue<[u8; N]>` with solo handles: `SoloSender::send_ref`, `SoloReceiver::recv_into`.
    QueueSolo,
    /// `Ring` with solo handles: `SoloSender::send`, `SoloReceiver::recv_with`.
    RingSolo,
}

/// One producer (the measuring process) to one consumer process, `[u8; N]` messages, about 1 MiB of
/// storage either way (a `Ring` of 1 MiB, or a `Queue` of 1 MiB of slots).
struct Typed<const N: usize> {
    path: Path,
    ring_tx: Option<ring::Sender>,
    queue_tx: Option<queue::Sender<[u8; N]>>,
    ring_solo: Option<ring::SoloSender>,
    queue_solo: Option<queue::SoloSender<[u8; N]>>,
    peer: Peer,
    buf: Box<[u8; N]>,
    seq: u64,
}

impl<const N: usize> Typed<N>
where
    [u8; N]: ringpool::Pod,
{
    fn new(path: Path) -> Typed<N> {
        let mut expected = 0u64;
        let name = format!("typed-{N}B-{path:?}");
        let (mut ring_solo, mut queue_solo) = (None, None);
        let (ring_tx, queue_tx, peer) = match path {
            Path::RingSolo => {
                let r = Ring::builder().capacity(1 << 20).anonymous().expect("ring");
                ring_solo = Some(r.solo_sender().expect("sender"));
                let mut rx = r.solo_receiver().expect("receiver");
                let peer = Peer::start(name, cpu(1), SpinPolicy::busy(), true, move |n| {
                    for _ in 0..n {
                        if let Err(e) = rx.recv_with(|m| check(m, N, expected)) {
                            panic!("consumer: recv: {e}");
                        }
                        expected += 1;
                    }
                    expected
                });
                (None, None, peer)
            }
            Path::QueueSolo => {
                let slots = ((1usize << 20) / (N + 8)).next_power_of_two();
                let q = Queue::<[u8; N]>::builder().slots(slots).anonymous().expect("queue");
                queue_solo = Some(q.solo_sender().expect("sender"));
                let mut rx = q.solo_receiver().expect("receiver");
                let mut place = Box::new([0u8; N]);
                let peer = Peer::start(name, cpu(1), SpinPolicy::busy(), true, move |n| {
                    for _ in 0..n {
                        match rx.recv_into(&mut place) {
                            Ok(()) => check(&place[..], N, expected),
                            Err(e) => panic!("consumer: recv_into: {e}"),
                        }
                        expected += 1;
                    }
                    expected
                });
                (None, None, peer)
            }
            Path::Ring => {
                let r = Ring::builder().capacity(1 << 20).anonymous().expect("ring");
                let tx = r.sender().expect("sender");
                let rx = r.receiver().expect("receiver");
                let peer = Peer::start(name, cpu(1), SpinPolicy::busy(), true, move |n| {
                    for _ in 0..n {
                        if let Err(e) = rx.recv_with(|m| check(m, N, expected)) {
                            panic!("consumer: recv: {e}");
                        }
                        expected += 1;
                    }
                    expected
                });
                (Some(tx), None, peer)
            }
            _ => {
                let slots = ((1usize << 20) / (N + 8)).next_power_of_two();
                let q = Queue::<[u8; N]>::builder().slots(slots).anonymous().expect("queue");
                let tx = q.sender().expect("sender");
                let rx = q.receiver().expect("receiver");
                let mut place = Box::new([0u8; N]);
                let peer = Peer::start(name, cpu(1), SpinPolicy::busy(), true, move |n| {
                    for _ in 0..n {
                        match path {
                            Path::QueueByRef => match rx.recv_into(&mut place) {
                                Ok(()) => check(&place[..], N, expected),
                                Err(e) => panic!("consumer: recv_into: {e}"),
                            },
                            Path::QueueInPlace => match rx.recv_in_place() {
                                Ok(v) => check(&v[..], N, expected),
                                Err(e) => panic!("consumer: recv_in_place: {e}"),
                            },
                            Path::QueueByValue => match rx.recv() {
                                Ok(v) => check(&v[..], N, expected),
                                Err(e) => panic!("consumer: recv: {e}"),
                            },
                            Path::Ring | Path::RingSolo | Path::QueueSolo => unreachable!(),
                        }
                        expected += 1;
                    }
                    expected
                });
                (None, Some(tx), peer)
            }
        };
        Typed { path, ring_tx, queue_tx, ring_solo, queue_solo, peer, buf: Box::new([0; N]), seq: 0 }
    }

    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(iters);
        self.peer.ready();
        let t = Instant::now();
        for _ in 0..iters {
            fill(&mut self.buf[..], self.seq);
            let sent = match (self.path, &self.ring_tx, &self.queue_tx) {
                (Path::RingSolo, ..) => self.ring_solo.as_mut().is_some_and(|tx| tx.send(&self.buf[..]).is_ok()),
                (Path::QueueSolo, ..) => self.queue_solo.as_mut().is_some_and(|tx| tx.send_ref(&self.buf).is_ok()),
                (Path::Ring, Some(tx), _) => tx.send(&self.buf[..]).is_ok(),
                (Path::QueueByValue, _, Some(tx)) => tx.send(*self.buf).is_ok(),
                (Path::QueueByRef | Path::QueueInPlace, _, Some(tx)) => tx.send_ref(&self.buf).is_ok(),
                _ => unreachable!("the rig was built for its path"),
            };
            if !sent {
                self.peer.failed("receiving");
            }
            self.seq += 1;
        }
        let received_up_to = self.peer.reply();
        let elapsed = t.elapsed();
        assert_eq!(received_up_to, self.seq, "consumer's count");
        elapsed
    }
}

fn typed(c: &mut Criterion) {
    pin(cpu(0));
    let mut group = c.benchmark_group("typed");
    group.throughput(Throughput::Elements(1));
    for path in [Path::Ring, Path::QueueByValue, Path::QueueByRef, Path::QueueInPlace, Path::RingSolo, Path::QueueSolo]
    {
        let id = BenchmarkId::new("8B", format!("{path:?}"));
        bench_rig(&mut group, id, move || Typed::<8>::new(path), Typed::run);
    }
    for path in [Path::Ring, Path::QueueByValue, Path::QueueByRef, Path::QueueInPlace, Path::RingSolo, Path::QueueSolo]
    {
        let id = BenchmarkId::new("1KiB", format!("{path:?}"));
        bench_rig(&mut group, id, move || Typed::<1024>::new(path), Typed::run);
    }
    group.finish();
}

// ----- 6. one CPU shared by both ends ----------------------------------------------------------------

/// Ping-pong with both processes on one CPU (the first this process may use), default spin policy:
/// the case where a waiter that spins burns the time slice its peer needs.
fn one_cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_cpu");
    let first = cpu(0);
    pin(first);
    let mk = move |spin| RingPingPong::with_cpu(spin, first);
    bench_rig(
        &mut group,
        BenchmarkId::new("pingpong_8B", "default"),
        move || mk(SpinPolicy::default()),
        RingPingPong::run,
    );
    bench_rig(&mut group, BenchmarkId::new("pingpong_8B", "park"), move || mk(SpinPolicy::park()), RingPingPong::run);
    group.finish();
}

/// Runs the groups, as `criterion_group!` and `criterion_main!` would (without their
/// undocumented `pub fn`). The settings are made before the command line is read, so that
/// `--warm-up-time`, `--measurement-time`, `--sample-size` and `--quick` override them (settings made
/// on a group would override the command line). 22 benchmarks of 2 + 8 s: about 4.5 minutes.
fn main() {
    if let Ok(mode) = std::env::var("RING_CALLGRIND") {
        return callgrind_loop(&mode);
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(20)
        .configure_from_args();
    throughput(&mut c);
    batch(&mut c);
    mpmc(&mut c);
    pingpong(&mut c);
    typed(&mut c);
    one_cpu(&mut c);
    c.final_summary();
}

/// A one-process loop for instruction counts under callgrind (`RING_CALLGRIND=<mode>:<n>`, e.g.
/// `valgrind --tool=callgrind target/release/deps/ring-* ` with `send:100000`): `n` times one 8-byte
/// `send` and one `recv_with` checking it, on one ring in this process. Run it with two counts and
/// take the difference over the difference of counts: the instructions of one send and one
/// receive, without the setup. Not a criterion bench: it times nothing.
fn callgrind_loop(spec: &str) {
    let (mode, n) = spec.split_once(':').unwrap_or((spec, "100000"));
    let n: u64 = n.parse().expect("RING_CALLGRIND=<mode>:<count>");
    let r = Ring::builder().capacity(1 << 16).anonymous().expect("ring");
    match mode {
        "send" => {
            let tx = r.sender().expect("sender");
            let rx = r.receiver().expect("receiver");
            for seq in 0..n {
                tx.send(seq.to_le_bytes()).expect("send");
                let got = rx.recv_with(seq_of).expect("recv");
                assert_eq!(got, seq);
            }
        }
        "solo" => {
            let mut tx = r.solo_sender().expect("sender");
            let mut rx = r.solo_receiver().expect("receiver");
            for seq in 0..n {
                tx.send(seq.to_le_bytes()).expect("send");
                let got = rx.recv_with(seq_of).expect("recv");
                assert_eq!(got, seq);
            }
        }
        "ring1k" => {
            let tx = r.sender().expect("sender");
            let rx = r.receiver().expect("receiver");
            let mut buf = vec![0u8; 1024];
            for seq in 0..n {
                fill(&mut buf, seq);
                tx.send(buf.as_slice()).expect("send");
                rx.recv_with(|m| check(m, 1024, seq)).expect("recv");
            }
        }
        "queue1k_value" | "queue1k_ref" => {
            let q = Queue::<[u8; 1024]>::builder().slots(64).anonymous().expect("queue");
            let tx = q.sender().expect("sender");
            let rx = q.receiver().expect("receiver");
            let mut buf = Box::new([0u8; 1024]);
            let mut place = Box::new([0u8; 1024]);
            for seq in 0..n {
                fill(&mut buf[..], seq);
                if mode == "queue1k_ref" {
                    tx.send_ref(&buf).expect("send");
                    rx.recv_into(&mut place).expect("recv");
                    check(&place[..], 1024, seq);
                } else {
                    tx.send(*buf).expect("send");
                    let v = rx.recv().expect("recv");
                    check(&v[..], 1024, seq);
                }
            }
        }
        other => panic!("unknown RING_CALLGRIND mode {other}"),
    }
}
