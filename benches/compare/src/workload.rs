//! The two workloads, written once, generic over [`Peer`]: every peer runs exactly this code.
//!
//! **One-way throughput.** The sender (pinned to the first CPU) sends messages back to back,
//! each one written in full ([`Message`]). It warms up for `warm_ms`, flags the next message
//! [`MARK`], keeps going for `measure_ms`, and flags the next one [`LAST`]. The receiver (pinned
//! to the second CPU) checks every message ([`Checker`]) and reads its clock when the `MARK`
//! message arrives and when the `LAST` one arrives: the figure is the messages between the two
//! over the time between the two, as seen by the receiver. Process start-up, channel set-up and
//! warm-up are outside that window.
//!
//! **Round trip.** The client (first CPU) sends a message on channel 0; the server (second CPU)
//! receives and checks it, writes a reply with the same sequence number and sends it on
//! channel 1; the client receives and checks the reply. Each round trip is timed on its own
//! (`Instant::now` before the send and after the receive, which costs two clock reads, see the
//! limits table); after `rtt_warm` untimed ones, `rtt_n` are timed, and the client reports their
//! median and 99th percentile.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::Result;
use crate::payload::{Checker, Got, LAST, MARK, Message, abort_mismatch};
use crate::peers::{Ctx, Peer, Role, Rx, Session, Tx};

/// Runs `role` of peer `P` in this child process.
pub fn run<P: Peer>(role: Role, s: &Session) -> Result<Value> {
    match role {
        Role::OneWayTx => oneway_tx::<P>(s),
        Role::OneWayRx => oneway_rx::<P>(s),
        Role::RttClient => rtt_client::<P>(s),
        Role::RttServer => rtt_server::<P>(s),
    }
}

fn recv_checked<P: Peer>(rx: &mut P::Rx, chk: &mut Checker) -> Result<Got> {
    match rx.recv(|buf| chk.check(buf))? {
        Ok(got) => Ok(got),
        Err(what) => abort_mismatch(P::NAME, &what),
    }
}

fn oneway_tx<P: Peer>(s: &Session) -> Result<Value> {
    let size = s.spec.size;
    let warm = Duration::from_millis(s.args.num("warm_ms")?);
    let measure = Duration::from_millis(s.args.num("measure_ms")?);
    let mut tx = P::open_tx(&mut Ctx::new(s, 0))?;
    s.link.barrier("start")?;

    // Reading the clock costs ~20 ns: for small messages, look at it every 64 messages only.
    let look_every: u64 = if size >= 4096 { 1 } else { 64 };
    let warm_end = Instant::now() + warm;
    let mut measure_end: Option<Instant> = None;
    let mut seq = 0u64;
    let mut flags = 0;
    loop {
        tx.send(&Message::new(seq, flags, size))?;
        if flags & LAST != 0 {
            break;
        }
        seq += 1;
        flags = 0;
        if seq.is_multiple_of(look_every) {
            let now = Instant::now();
            match measure_end {
                None if now >= warm_end => {
                    flags = MARK;
                    measure_end = Some(now + measure);
                }
                Some(end) if now >= end => flags = LAST,
                _ => {}
            }
        }
    }
    // Keep the sending end open until the receiver has everything.
    s.link.barrier("done")?;
    drop(tx);
    Ok(json!({ "sent": seq + 1 }))
}

fn oneway_rx<P: Peer>(s: &Session) -> Result<Value> {
    let size = s.spec.size;
    let mut rx = P::open_rx(&mut Ctx::new(s, 0))?;
    rx.accept(&s.link)?;
    s.link.barrier("start")?;

    let mut chk = Checker::new(size);
    let mut mark: Option<(Instant, u64)> = None;
    let mut last: Option<(Instant, u64)> = None;
    while last.is_none() {
        rx.recv_batch(256, |buf| {
            let got = match chk.check(buf) {
                Ok(got) => got,
                Err(what) => abort_mismatch(P::NAME, &what),
            };
            if got.flags != 0 {
                let now = Instant::now();
                if got.flags & MARK != 0 {
                    mark = Some((now, got.seq));
                }
                if got.flags & LAST != 0 {
                    last = Some((now, got.seq));
                }
            }
        })?;
    }
    let (t1, n1) = last.ok_or("no LAST message")?;
    s.link.barrier("done")?;
    drop(rx);
    let (t0, n0) = mark.ok_or("the LAST message came before the MARK message")?;
    let msgs = n1 - n0;
    let secs = (t1 - t0).as_secs_f64();
    Ok(json!({
        "msgs": msgs,
        "secs": secs,
        "msgs_per_s": msgs as f64 / secs,
        "bytes_per_s": (msgs as f64 * size as f64) / secs,
        "received": n1 + 1,
        "full_checks": chk.full_checks,
    }))
}

fn rtt_client<P: Peer>(s: &Session) -> Result<Value> {
    let size = s.spec.size;
    let warm: u64 = s.args.num("rtt_warm")?;
    let n: u64 = s.args.num("rtt_n")?;
    let mut rx = P::open_rx(&mut Ctx::new(s, 1))?;
    let mut tx = P::open_tx(&mut Ctx::new(s, 0))?;
    rx.accept(&s.link)?;
    s.link.barrier("start")?;

    let mut chk = Checker::new(size);
    let mut ns: Vec<u64> = Vec::with_capacity(n as usize);
    for seq in 0..warm + n {
        let t0 = Instant::now();
        tx.send(&Message::new(seq, 0, size))?;
        let got = recv_checked::<P>(&mut rx, &mut chk)?;
        let dt = t0.elapsed();
        debug_assert_eq!(got.seq, seq);
        if seq >= warm {
            ns.push(dt.as_nanos() as u64);
        }
    }
    tx.send(&Message::new(warm + n, LAST, size))?;
    recv_checked::<P>(&mut rx, &mut chk)?;
    s.link.barrier("done")?;
    drop((tx, rx));
    Ok(rtt_summary(&mut ns))
}

fn rtt_server<P: Peer>(s: &Session) -> Result<Value> {
    let size = s.spec.size;
    let mut rx = P::open_rx(&mut Ctx::new(s, 0))?;
    let mut tx = P::open_tx(&mut Ctx::new(s, 1))?;
    rx.accept(&s.link)?;
    s.link.barrier("start")?;

    let mut chk = Checker::new(size);
    let mut answered = 0u64;
    loop {
        let got = recv_checked::<P>(&mut rx, &mut chk)?;
        tx.send(&Message::new(got.seq, got.flags, size))?;
        answered += 1;
        if got.flags & LAST != 0 {
            break;
        }
    }
    s.link.barrier("done")?;
    drop((tx, rx));
    Ok(json!({ "answered": answered }))
}

/// Median, 99th percentile, min and mean of individually timed round trips, in ns.
pub fn rtt_summary(ns: &mut [u64]) -> Value {
    ns.sort_unstable();
    let pick = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize];
    let mean = ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len() as f64;
    json!({
        "n": ns.len(),
        "rtt_median_ns": pick(0.5),
        "rtt_p99_ns": pick(0.99),
        "rtt_min_ns": ns[0],
        "rtt_mean_ns": mean,
    })
}
