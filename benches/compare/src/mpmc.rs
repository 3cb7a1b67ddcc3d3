//! **Producers x consumers**: N sending processes and M receiving processes on one channel, 8-byte
//! messages, total messages per second.
//!
//! Every process is a re-execution of the runner (`mpmc-tx`, `mpmc-rx`), none pinned (there are
//! more of them than CPUs: the row's label says how many per CPU). The channel is a named segment
//! whose name starts with the run's prefix; everyone opens it with `open_or_create` (ringpool) or,
//! for ipmpsc, the one receiver creates it and the senders open it once the start time has come.
//! The runner gives every process the same start time on the monotonic clock, a second or so
//! ahead, so all senders start together.
//!
//! A message is one `u64`: the sender's number in the top 16 bits, its sequence number below.
//! Each sender sends `per_sender` messages, then one END message per receiver. Each receiver
//! checks that every sender's sequence numbers rise (a FIFO channel keeps each sender's order for
//! every receiver), counts them per sender with their sum and sum of squares, and stops after its
//! share of ENDs (one from each sender). The runner adds the receivers' counts up and requires,
//! for every sender, exactly `per_sender` messages whose sums are those of `0..per_sender`: a lost,
//! duplicated or corrupted message aborts the run like any wrong message.
//!
//! Throughput: all the senders' messages over the time from the earliest sender's first send to
//! the latest receiver's last receipt (both on the monotonic clock, which all processes share).

use std::time::Duration;

use ringpool::{Queue, Ring};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::harness::{Args, Result};
use crate::payload::abort_mismatch;

/// Child roles of this module.
pub const ROLES: &[&str] = &["mpmc-tx", "mpmc-rx"];

/// The channels measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chan {
    /// ringpool `Ring`, 8-byte byte messages.
    Ring,
    /// ringpool `Queue<u64>`.
    Queue,
    /// ipmpsc's `SharedRingBuffer` (one receiver only).
    Ipmpsc,
}

impl Chan {
    /// Its name on the command line and in `--only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Chan::Ring => "ringpool-ring",
            Chan::Queue => "ringpool-queue",
            Chan::Ipmpsc => "ipmpsc",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        [Chan::Ring, Chan::Queue, Chan::Ipmpsc]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("no mpmc channel {s}").into())
    }
}

const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const END: u64 = SEQ_MASK;
/// Depth of the channel, in messages (byte rings: 64 bytes per message, as `Spec::for_size`).
const DEPTH: usize = 1024;

/// The monotonic clock in nanoseconds (the same clock in every process).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps, then spins, until the monotonic clock reaches `at`.
fn wait_until(at: u64) {
    loop {
        let now = mono_ns();
        if now >= at {
            return;
        }
        let left = at - now;
        if left > 2_000_000 {
            std::thread::sleep(Duration::from_nanos(left - 1_000_000));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A receiver's tally for one sender.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tally {
    /// Messages.
    pub count: u64,
    /// Sum of their sequence numbers.
    #[serde(with = "u128_text")]
    pub sum: u128,
    /// Sum of their squares (above 2^64 from about 3.8 million messages per sender).
    #[serde(with = "u128_text")]
    pub sum_sq: u128,
}

/// A `u128` as decimal text in JSON: serde_json's numbers stop at 64 bits (a full run's tally of
/// 8 million messages overflowed them, "number out of range").
mod u128_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Tally {
    /// What `per_sender` messages numbered `0..per_sender` add up to.
    pub fn expected(per_sender: u64) -> Self {
        let n = u128::from(per_sender);
        Self {
            count: per_sender,
            sum: n * n.saturating_sub(1) / 2,
            sum_sq: n.saturating_sub(1) * n * (2 * n).saturating_sub(1) / 6,
        }
    }
}

/// A sending end (each handle keeps its channel's mapping).
enum TxEnd {
    Ring(ringpool::ring::Sender),
    Queue(ringpool::queue::Sender<u64>),
    Ipmpsc(::ipmpsc::Sender),
}

/// A receiving end.
enum RxEnd {
    Ring(ringpool::ring::Receiver),
    Queue(ringpool::queue::Receiver<u64>),
    Ipmpsc(::ipmpsc::Receiver, String),
}

impl Drop for RxEnd {
    fn drop(&mut self) {
        if let RxEnd::Ipmpsc(_, path) = self {
            std::fs::remove_file(path.as_str()).ok();
        }
    }
}

fn ring(name: &str) -> Result<Ring> {
    Ok(Ring::builder().capacity(DEPTH * 64).open_timeout(Duration::from_secs(5)).open_or_create(name)?)
}

fn queue(name: &str) -> Result<Queue<u64>> {
    Ok(Queue::<u64>::builder().slots(DEPTH).open_timeout(Duration::from_secs(5)).open_or_create(name)?)
}

fn ipmpsc_path(name: &str) -> String {
    format!("/dev/shm/{name}")
}

impl TxEnd {
    fn send(&mut self, v: u64) -> Result<()> {
        match self {
            TxEnd::Ring(tx) => tx.send(v.to_le_bytes()).map_err(|e| format!("send: {e}"))?,
            TxEnd::Queue(tx) => tx.send(v).map_err(|e| format!("send: {e}"))?,
            TxEnd::Ipmpsc(tx) => tx.send(&v)?,
        }
        Ok(())
    }
}

impl RxEnd {
    fn recv(&mut self) -> Result<u64> {
        Ok(match self {
            RxEnd::Ring(rx) => rx.recv_with(|b| b.try_into().map(u64::from_le_bytes))?.map_err(|_| "not 8 bytes")?,
            RxEnd::Queue(rx) => rx.recv()?,
            RxEnd::Ipmpsc(rx, _) => rx.recv::<u64>()?,
        })
    }
}

/// Runs one role in this child process.
pub fn run(role: &str, args: &Args) -> Result<Value> {
    let chan = Chan::parse(args.get("chan")?)?;
    let name = args.get("name")?;
    let (senders, receivers): (u64, u64) = (args.num("senders")?, args.num("receivers")?);
    let per_sender: u64 = args.num("per_sender")?;
    let start_at: u64 = args.num("start_at")?;
    let id: u64 = args.num("id")?;
    match role {
        "mpmc-tx" => {
            let mut tx = match chan {
                Chan::Ring => {
                    let r = ring(name)?;
                    TxEnd::Ring(r.sender()?)
                }
                Chan::Queue => {
                    let q = queue(name)?;
                    TxEnd::Queue(q.sender()?)
                }
                Chan::Ipmpsc => {
                    // The receiver creates the file; it has had until the start time to do so.
                    wait_until(start_at);
                    let buf = ::ipmpsc::SharedRingBuffer::open(&ipmpsc_path(name))?;
                    TxEnd::Ipmpsc(::ipmpsc::Sender::new(buf))
                }
            };
            wait_until(start_at);
            let t0 = mono_ns();
            let top = id << SEQ_BITS;
            for seq in 0..per_sender {
                tx.send(top | seq)?;
            }
            for _ in 0..receivers {
                tx.send(top | END)?;
            }
            let t1 = mono_ns();
            // Stay a member until the receivers are surely done with our messages.
            std::thread::sleep(Duration::from_millis(50));
            Ok(json!({ "start_ns": t0, "end_ns": t1 }))
        }
        "mpmc-rx" => {
            let mut rx = match chan {
                Chan::Ring => {
                    let r = ring(name)?;
                    RxEnd::Ring(r.receiver()?)
                }
                Chan::Queue => {
                    let q = queue(name)?;
                    RxEnd::Queue(q.receiver()?)
                }
                Chan::Ipmpsc => {
                    let path = ipmpsc_path(name);
                    let cap = u32::try_from(DEPTH * 64)?;
                    let buf = ::ipmpsc::SharedRingBuffer::create(&path, cap)?;
                    RxEnd::Ipmpsc(::ipmpsc::Receiver::new(buf), path)
                }
            };
            let mut tally = vec![Tally::default(); senders as usize];
            let mut last: Vec<Option<u64>> = vec![None; senders as usize];
            let mut ends = vec![0u64; senders as usize];
            let mut ends_seen = 0u64;
            let mut first_ns = None;
            while ends_seen < senders {
                let v = rx.recv()?;
                first_ns.get_or_insert_with(mono_ns);
                let (from, seq) = ((v >> SEQ_BITS) as usize, v & SEQ_MASK);
                if from >= senders as usize {
                    abort_mismatch(chan.as_str(), &format!("message {v:#x} from sender {from} of {senders}"));
                }
                if seq == END {
                    // Each sender sends one END per receiver after all its messages; a receiver
                    // stops after as many ENDs as there are senders (from whichever). When the
                    // last END is taken, every message before it in the FIFO has been taken too.
                    ends[from] += 1;
                    if ends[from] > receivers {
                        abort_mismatch(chan.as_str(), &format!("more ENDs from sender {from} than receivers"));
                    }
                    ends_seen += 1;
                    continue;
                }
                if seq >= per_sender || last[from].is_some_and(|l| seq <= l) || ends[from] > 0 {
                    abort_mismatch(
                        chan.as_str(),
                        &format!(
                            "sender {from}: message {seq} after {:?} (of {per_sender}, END seen: {})",
                            last[from], ends[from]
                        ),
                    );
                }
                last[from] = Some(seq);
                let t = &mut tally[from];
                t.count += 1;
                t.sum += u128::from(seq);
                t.sum_sq += u128::from(seq) * u128::from(seq);
            }
            let end_ns = mono_ns();
            Ok(json!({ "first_ns": first_ns, "end_ns": end_ns, "tally": tally }))
        }
        _ => Err(format!("unknown mpmc role {role}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_runs_tally_crosses_the_json_link() {
        let t = Tally::expected(8_000_000);
        assert!(t.sum_sq > u128::from(u64::MAX));
        let text = serde_json::to_string(&t).expect("serialize");
        assert_eq!(serde_json::from_str::<Tally>(&text).expect("deserialize"), t);
    }

    #[test]
    fn expected_tally_is_the_sum_over_the_sequence() {
        for n in [0u64, 1, 2, 7, 1000] {
            let mut t = Tally::default();
            for s in 0..n {
                t.count += 1;
                t.sum += u128::from(s);
                t.sum_sq += u128::from(s) * u128::from(s);
            }
            assert_eq!(t, Tally::expected(n), "n = {n}");
        }
        // A lost message and a duplicated one do not cancel out.
        let mut t = Tally::expected(100);
        t.sum = t.sum - 40 + 41;
        t.sum_sq = t.sum_sq - 40 * 40 + 41 * 41;
        assert_ne!(t, Tally::expected(100));
    }
}
