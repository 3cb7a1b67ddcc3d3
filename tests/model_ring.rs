//! Model check of the byte ring ([`Ring`]): senders (single sends, `send_many`, `try_send_many`,
//! `reserve`) and receivers (`recv`, `recv_many`, `recv_with`, `recv_in_place`) as model processes
//! over one 4 KiB ring (messages up to 1.5 KiB: it fills and wraps), one of them dying at a random
//! atomic operation. The same checks as the slot ring's (`tests/model_queue.rs`), plus every
//! message's bytes.
//!
//! Run (see `.ci/models`):
//! `RUSTFLAGS="--cfg ringpool_model" CARGO_TARGET_DIR=target/model cargo test --release --test model_ring`

#![cfg(ringpool_model)]

mod model_common;

use model_common::{Log, check, value};
use ringpool::model::{self, Death, Processes};
use ringpool::ring::{Receiver, RecvError, Sender, TrySendError};
use ringpool::sync::SpinPolicy;
use ringpool::{Ring, RingBuilder};
use std::os::fd::OwnedFd;

/// Atomic operations a process does in these scenarios, about: deaths are drawn up to this.
const MAX_OPS: u64 = 300;
/// Deaths in the membership plan are drawn up to this (fewer operations).
const MEMBERSHIP_OPS: u64 = 120;
const STEPS: usize = 200_000;

fn open(fd: &OwnedFd) -> Ring {
    let fd = fd.try_clone().expect("dup the ring's descriptor");
    RingBuilder::new().spin(SpinPolicy::park()).from_fd(fd).expect("open the model ring")
}

/// The message carrying `v`: `v` in its first 8 bytes, then a pattern derived from `v`; lengths
/// from 8 bytes to about 1.5 KiB, so that a 4 KiB ring fills, wraps and splits records at its end.
fn message(v: u64) -> Vec<u8> {
    let len = 8 + ((v & 0xffff) * 517 + (v >> 32) * 131) as usize % 1500;
    let mut m = v.to_le_bytes().to_vec();
    m.extend((0..len - 8).map(|i| (v as u8).wrapping_add(i as u8).wrapping_mul(31)));
    m
}

/// The value a message carries, if it is intact.
fn decode(m: &[u8]) -> Result<u64, String> {
    let v = u64::from_le_bytes(m.get(..8).ok_or("message shorter than 8 bytes")?.try_into().map_err(|_| "len")?);
    if m != message(v).as_slice() {
        return Err(format!("message of {} bytes for value {v:#x} is corrupted", m.len()));
    }
    Ok(v)
}

/// Sender `me`: a single send, a batch, a try-batch, an in-place send, another batch.
fn sender(tx: &Sender, log: &Log, me: usize) {
    let mut seq = 0u64;
    let mut next = |n: usize| -> Vec<u64> {
        (0..n)
            .map(|_| {
                seq += 1;
                value(me, seq)
            })
            .collect()
    };
    let note = |vals: &[u64], ok: usize, err: Option<String>| {
        let err = err.filter(|e| {
            let disconnected = e.contains("Disconnected");
            if disconnected {
                log.disconnected(me);
            }
            !disconnected
        });
        log.with(me, |r| {
            r.sent.extend_from_slice(&vals[..ok]);
            r.sending.clear();
            r.errors.extend(err);
        })
    };
    let start = |vals: &[u64]| log.with(me, |r| r.sending = vals.to_vec());
    for step in 0..5 {
        let vals = match step {
            0 | 3 => next(1),
            _ => next(3),
        };
        start(&vals);
        match step {
            0 => match tx.send(message(vals[0])) {
                Ok(()) => note(&vals, 1, None),
                Err(e) => note(&vals, 0, Some(format!("send: {e:?}"))),
            },
            1 | 4 => match tx.send_many(&vals.iter().map(|&v| message(v)).collect::<Vec<_>>()) {
                Ok(()) => note(&vals, vals.len(), None),
                Err(e) => {
                    let msg = format!("send_many: {e:?}");
                    note(&vals, e.into_inner(), Some(msg))
                }
            },
            2 => match tx.try_send_many(&vals.iter().map(|&v| message(v)).collect::<Vec<_>>()) {
                Ok(n) => note(&vals, n, None),
                Err(TrySendError::Full(_)) => note(&vals, 0, None),
                Err(e) => note(&vals, 0, Some(format!("try_send_many: {e:?}"))),
            },
            _ => match tx.reserve(message(vals[0]).len()) {
                Ok(mut w) => {
                    w.copy_from_slice(&message(vals[0]));
                    w.commit();
                    note(&vals, 1, None);
                }
                Err(e) => note(&vals, 0, Some(format!("reserve: {e:?}"))),
            },
        }
    }
}

/// Receiver `me`: recv, recv_many(3), recv_with, recv_in_place in turn, until every sender is
/// gone. What a call's closure saw counts as received only once the call returned.
fn receiver(rx: &Receiver, log: &Log, me: usize) {
    let mut k = 0;
    loop {
        k += 1;
        let take = if k % 4 == 2 { 3 } else { 1 };
        log.with(me, |r| r.receiving = take);
        let mut seen: Vec<Result<u64, String>> = Vec::new();
        let got: Result<(), RecvError> = match k % 4 {
            1 => rx.recv().map(|m| seen.push(decode(&m))),
            2 => rx.recv_many(3, |m| seen.push(decode(m))).map(drop),
            3 => rx.recv_with(|m| seen.push(decode(m))),
            _ => rx.recv_in_place().map(|g| {
                seen.push(decode(&g));
                drop(g);
            }),
        };
        let got = got.map(|()| seen.iter().filter_map(|r| r.as_ref().ok().copied()).collect::<Vec<u64>>());
        for e in seen.iter().filter_map(|r| r.as_ref().err()) {
            log.with(me, |r| r.errors.push(e.clone()));
        }
        match got {
            Ok(vals) => log.with(me, |r| {
                r.got.extend(vals);
                r.receiving = 0;
            }),
            Err(RecvError::Disconnected) => {
                log.with(me, |r| {
                    r.receiving = 0;
                    r.finished = true;
                });
                return;
            }
            Err(e) => {
                log.with(me, |r| {
                    r.receiving = 0;
                    r.errors.push(format!("receive: {e:?}"));
                });
                return;
            }
        }
    }
}

/// What the processes do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// The full mix of operations; no death while joining or leaving (the membership model looks
    /// at those).
    Operations,
    /// One value per sender, deaths anywhere (joining, sending, leaving).
    Membership,
    /// Sender 1 and the first receiver are solo handles (the lock kept between operations, taken
    /// from them when they stay idle while another member waits); the others are ordinary.
    Solo,
}

/// Two senders (processes 1 and 2) and `receivers` receivers over a 4 KiB ring; `victim` (a
/// process index) may die at a random step.
fn scenario(plan: Plan, receivers: usize, victim: Option<usize>) {
    let mut procs = Processes::new();
    let q = Ring::builder().capacity(4096).spin(SpinPolicy::park()).anonymous().expect("create the model ring");
    let fd = q.fd().try_clone_to_owned().expect("dup");
    drop(q);
    let n = 3 + receivers;
    let log = Log::new(n);
    // Process 0 is unused (index 0 stands for the test's main thread in the value encoding).
    for p in 1..n {
        let max = if plan == Plan::Membership { MEMBERSHIP_OPS } else { MAX_OPS };
        let death = if victim == Some(p) { Death::AtRandomStep(max) } else { Death::Never };
        let fd = fd.try_clone().expect("dup");
        let log = log.clone();
        let is_sender = p <= 2;
        log.with(p, |r| {
            r.is_sender = is_sender;
            r.is_receiver = !is_sender;
        });
        procs.spawn(death, move || {
            let guard = |f: &mut dyn FnMut()| if plan == Plan::Operations { model::spared(f) } else { f() };
            let mut q = None;
            let mut tx = None;
            let mut rx = None;
            guard(&mut || {
                let queue = open(&fd);
                let joined = if is_sender {
                    queue.sender().map(|h| tx = Some(h))
                } else {
                    queue.receiver().map(|h| rx = Some(h))
                };
                match joined {
                    Ok(()) => log.with(p, |r| r.joined = true),
                    Err(e) => log.with(p, |r| r.errors.push(format!("join: {e:?}"))),
                }
                q = Some(queue);
            });
            model::start_line();
            if plan == Plan::Solo && p == 1 {
                if let Some(tx) = tx.take() {
                    solo_sender(tx.into_solo(), &log, p);
                }
            }
            if plan == Plan::Solo && p == 3 {
                if let Some(rx) = rx.take() {
                    solo_receiver(rx.into_solo(), &log, p);
                }
            }
            match (&tx, &rx, plan) {
                (Some(tx), _, Plan::Operations | Plan::Solo) => sender(tx, &log, p),
                (Some(tx), _, Plan::Membership) => one_value(tx, &log, p),
                (_, Some(rx), _) => receiver(rx, &log, p),
                _ => {}
            }
            guard(&mut || {
                tx.take();
                rx.take();
                q.take();
            });
        });
    }
    // Index 0 is nobody (neither sender nor receiver).
    let mut died = procs.settle();
    died.insert(0, false);
    check(&log, &died);
    procs.release();
}

/// Solo plan: five single sends through a solo sender (dropped at the end, inside the process).
fn solo_sender(mut tx: ringpool::ring::SoloSender, log: &Log, me: usize) {
    for seq in 1..=5u64 {
        let v = value(me, seq);
        log.with(me, |r| r.sending = vec![v]);
        let res = tx.send(message(v));
        if let Err(ringpool::ring::SendError::Disconnected(_)) = res {
            log.disconnected(me);
        }
        log.with(me, |r| {
            r.sending.clear();
            match res {
                Ok(()) => r.sent.push(v),
                Err(ringpool::ring::SendError::Disconnected(_)) => {}
                Err(e) => r.errors.push(format!("solo send: {e:?}")),
            }
        });
    }
}

/// Solo plan: a solo receiver taking one message per call until every sender is gone.
fn solo_receiver(mut rx: ringpool::ring::SoloReceiver, log: &Log, me: usize) {
    loop {
        log.with(me, |r| r.receiving = 1);
        let mut seen: Option<Result<u64, String>> = None;
        match rx.recv_with(|m| seen = Some(decode(m))) {
            Ok(()) => log.with(me, |r| {
                r.receiving = 0;
                match seen.take() {
                    Some(Ok(v)) => r.got.push(v),
                    Some(Err(e)) => r.errors.push(e),
                    None => r.errors.push("recv_with returned without a message".into()),
                }
            }),
            Err(RecvError::Disconnected) => {
                log.with(me, |r| {
                    r.receiving = 0;
                    r.finished = true;
                });
                return;
            }
            Err(e) => {
                log.with(me, |r| {
                    r.receiving = 0;
                    r.errors.push(format!("solo receive: {e:?}"));
                });
                return;
            }
        }
    }
}

/// Membership plan: one single send.
fn one_value(tx: &Sender, log: &Log, me: usize) {
    let v = value(me, 1);
    log.with(me, |r| r.sending = vec![v]);
    let res = tx.send(message(v));
    if let Err(ringpool::ring::SendError::Disconnected(_)) = res {
        log.disconnected(me);
    }
    log.with(me, |r| {
        r.sending.clear();
        match res {
            Ok(()) => r.sent.push(v),
            Err(ringpool::ring::SendError::Disconnected(_)) => {}
            Err(e) => r.errors.push(format!("send: {e:?}")),
        }
    });
}

#[test]
fn ring_a_sender_dies_one_receiver() {
    model::check(300, STEPS, || scenario(Plan::Operations, 1, Some(1)));
}

#[test]
fn ring_the_other_sender_dies_two_receivers() {
    model::check(300, STEPS, || scenario(Plan::Operations, 2, Some(2)));
}

#[test]
fn ring_a_receiver_dies() {
    model::check(300, STEPS, || scenario(Plan::Operations, 2, Some(3)));
}

#[test]
fn ring_nobody_dies() {
    model::check(100, STEPS, || scenario(Plan::Operations, 2, None));
}

/// Deaths while joining, sending or leaving: the receivers must still see every sender gone.
#[test]
fn ring_membership_a_sender_dies_anywhere() {
    model::check(300, STEPS, || scenario(Plan::Membership, 1, Some(1)));
}

/// The same for a receiver: the senders must see it gone (or the other receiver drains).
#[test]
fn ring_membership_a_receiver_dies_anywhere() {
    model::check(300, STEPS, || scenario(Plan::Membership, 2, Some(3)));
}

/// Solo handles beside ordinary ones: the solo sender dies at a random step (keeping the lock,
/// inside a send, or while its lock is being taken from it).
#[test]
fn ring_solo_sender_dies() {
    model::check(300, STEPS, || scenario(Plan::Solo, 2, Some(1)));
}

/// The ordinary sender dies (possibly while taking the solo sender's kept lock).
#[test]
fn ring_solo_the_ordinary_sender_dies() {
    model::check(300, STEPS, || scenario(Plan::Solo, 2, Some(2)));
}

/// The solo receiver dies; the ordinary receiver drains.
#[test]
fn ring_solo_receiver_dies() {
    model::check(300, STEPS, || scenario(Plan::Solo, 2, Some(3)));
}

#[test]
fn ring_solo_nobody_dies() {
    model::check(100, STEPS, || scenario(Plan::Solo, 2, None));
}
