//! Shared bookkeeping of the ring models (`tests/model_queue.rs`, `tests/model_ring.rs`): what every
//! model process did, and the checks run on it once the survivors finished.
//!
//! A value is `sender << 32 | seq` (seq from 1), so a value names its sender and its place in
//! that sender's stream.

#![allow(dead_code, reason = "each model uses part of it")]

use std::sync::{Arc, Mutex, MutexGuard};

/// One model process's record. Written only by that process, outside the crate's calls, so a
/// death (which happens inside the crate's atomics) never leaves it half-written.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// Sender: the values whose send returned Ok, in order.
    pub sent: Vec<u64>,
    /// Sender: the values of the send call in progress (empty between calls).
    pub sending: Vec<u64>,
    /// Receiver: the values its receive calls returned, in order.
    pub got: Vec<u64>,
    /// Receiver: how many values the receive call in progress may take (0 between calls).
    pub receiving: usize,
    /// Errors a call answered that the model does not expect.
    pub errors: Vec<String>,
    pub is_sender: bool,
    pub is_receiver: bool,
    /// It holds its handle (joined the ring).
    pub joined: bool,
    /// Receiver: it saw every sender gone and stopped.
    pub finished: bool,
    /// Sender: when it was told "every receiver is gone", the receivers that had not finished then.
    pub disconnected_with: Option<Vec<usize>>,
}

#[derive(Debug, Default, Clone)]
pub struct Log(Arc<Mutex<Vec<Record>>>);

impl Log {
    pub fn new(n: usize) -> Log {
        Log(Arc::new(Mutex::new(vec![Record::default(); n])))
    }
    pub fn with<R>(&self, p: usize, f: impl FnOnce(&mut Record) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner())[p])
    }
    /// A sender was told that every receiver is gone: note which receivers had joined and not
    /// finished (one that joins later is no contradiction).
    pub fn disconnected(&self, me: usize) {
        let mut recs = self.records();
        let open: Vec<usize> =
            (0..recs.len()).filter(|&p| recs[p].is_receiver && recs[p].joined && !recs[p].finished).collect();
        recs[me].disconnected_with = Some(open);
    }
    pub fn records(&self) -> MutexGuard<'_, Vec<Record>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn value(sender: usize, seq: u64) -> u64 {
    ((sender as u64) << 32) | seq
}

/// The checks, once every process finished or died (`died[p]`). Panics with what went wrong.
pub fn check(log: &Log, died: &[bool]) {
    let recs = log.records();
    let mut problems = Vec::new();
    let receivers: Vec<usize> = (0..recs.len()).filter(|&p| recs[p].is_receiver).collect();
    let any_receiver_survived = receivers.iter().any(|&p| !died[p]);
    for (p, r) in recs.iter().enumerate() {
        if !died[p] {
            for e in &r.errors {
                problems.push(format!("process {p} (survivor) got an unexpected error: {e}"));
            }
            // "Every receiver is gone" is right if each receiver had finished or has died.
            if let Some(open) = &r.disconnected_with
                && let Some(q) = open.iter().find(|&&q| !died[q])
            {
                problems.push(format!("sender {p} was told every receiver is gone while receiver {q} was still there"));
            }
        }
    }
    // Every value received at most once, and only values some sender tried to send.
    let mut seen = std::collections::HashMap::new();
    for &p in &receivers {
        for &v in &recs[p].got {
            if let Some(q) = seen.insert(v, p) {
                problems.push(format!("value {v:#x} received twice (by {q} and {p})"));
            }
            let s = (v >> 32) as usize;
            let tried = recs.get(s).is_some_and(|r| r.is_sender && (r.sent.contains(&v) || r.sending.contains(&v)));
            if !tried {
                problems.push(format!("value {v:#x} received by {p} was never sent (an uncommitted or stale slot)"));
            }
            if recs.get(s).is_some_and(|r| !died[s] && !r.sent.contains(&v)) {
                problems.push(format!("value {v:#x} received by {p}, but its surviving sender's call failed"));
            }
        }
        // Each sender's values arrive in order at each receiver.
        let mut last = std::collections::HashMap::new();
        for &v in &recs[p].got {
            let (s, seq) = (v >> 32, v & 0xffff_ffff);
            if let Some(&prev) = last.get(&s)
                && seq <= prev
            {
                problems.push(format!("receiver {p} got sender {s}'s seq {seq} after seq {prev}"));
            }
            last.insert(s, seq);
        }
    }
    // A dead sender's call in progress publishes a prefix of its values (batches commit whole).
    for (s, r) in recs.iter().enumerate() {
        if r.is_sender && died[s] && !r.sending.is_empty() {
            let flags: Vec<bool> = r.sending.iter().map(|v| seen.contains_key(v)).collect();
            if flags.windows(2).any(|w| !w[0] && w[1]) {
                problems.push(format!(
                    "dead sender {s}'s last call {:x?}: received {:?}, not a prefix (a partial batch was published)",
                    r.sending, flags
                ));
            }
        }
    }
    // Every value whose send returned Ok is received, but those a dead receiver may have held.
    if any_receiver_survived {
        let allowance: usize = receivers.iter().filter(|&&p| died[p]).map(|&p| recs[p].receiving).sum();
        let lost: Vec<u64> = recs
            .iter()
            .filter(|r| r.is_sender)
            .flat_map(|r| r.sent.iter().copied())
            .filter(|v| !seen.contains_key(v))
            .collect();
        if lost.len() > allowance {
            problems.push(format!(
                "{} values sent Ok were never received ({lost:x?}); a dead receiver could hold {allowance}",
                lost.len()
            ));
        }
    }
    if !problems.is_empty() {
        panic!(
            "model check failed (died: {died:?}):\n  {}\n{}\nrecords: {recs:x?}",
            problems.join("\n  "),
            ringpool::model::deaths()
        );
    }
}
