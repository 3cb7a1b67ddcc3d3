//! Model check of the slot ring ([`Queue`]): senders (single sends, `send_many`, `try_send_many`,
//! `reserve`) and receivers (`recv`, `recv_many`, `recv_in_place`) as model processes over one
//! queue, one of them dying at a random atomic operation. Checks: every value whose send returned
//! Ok is received exactly once (but what a dead receiver held), nothing never sent is received, a
//! dead sender's batch is published whole or not at all, each sender's values arrive in order,
//! and the survivors finish (a step bound).
//!
//! Run (see `.ci/models`):
//! `RUSTFLAGS="--cfg ringpool_model" CARGO_TARGET_DIR=target/model cargo test --release --test model_queue`

#![cfg(ringpool_model)]

mod model_common;

use model_common::{Log, check, value};
use ringpool::model::{self, Death, Processes};
use ringpool::queue::{Receiver, Sender};
use ringpool::ring::{RecvError, TrySendError};
use ringpool::sync::SpinPolicy;
use ringpool::{Queue, QueueBuilder};
use std::os::fd::OwnedFd;

/// Atomic operations a process does in these scenarios, about: deaths are drawn up to this.
const MAX_OPS: u64 = 300;
/// Deaths in the membership plan are drawn up to this (fewer operations).
const MEMBERSHIP_OPS: u64 = 120;
const STEPS: usize = 200_000;

fn open(fd: &OwnedFd) -> Queue<u64> {
    let fd = fd.try_clone().expect("dup the queue's descriptor");
    QueueBuilder::<u64>::default().spin(SpinPolicy::park()).from_fd(fd).expect("open the model queue")
}

/// Sender `me`: a single send, a batch, a try-batch, an in-place send, another batch.
fn sender(tx: &Sender<u64>, log: &Log, me: usize) {
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
            0 => match tx.send(vals[0]) {
                Ok(()) => note(&vals, 1, None),
                Err(e) => note(&vals, 0, Some(format!("send: {e:?}"))),
            },
            1 | 4 => match tx.send_many(&vals) {
                Ok(()) => note(&vals, vals.len(), None),
                Err(e) => {
                    let msg = format!("send_many: {e:?}");
                    note(&vals, e.into_inner(), Some(msg))
                }
            },
            2 => match tx.try_send_many(&vals) {
                Ok(n) => note(&vals, n, None),
                Err(TrySendError::Full(_)) => note(&vals, 0, None),
                Err(e) => note(&vals, 0, Some(format!("try_send_many: {e:?}"))),
            },
            _ => match tx.reserve() {
                Ok(mut w) => {
                    *w = vals[0];
                    w.commit();
                    note(&vals, 1, None);
                }
                Err(e) => note(&vals, 0, Some(format!("reserve: {e:?}"))),
            },
        }
    }
}

/// Receiver `me`: recv, recv_many(3), recv_in_place in turn, until every sender is gone.
fn receiver(rx: &Receiver<u64>, log: &Log, me: usize) {
    let mut k = 0;
    loop {
        k += 1;
        let take = if k % 3 == 2 { 3 } else { 1 };
        log.with(me, |r| r.receiving = take);
        let got: Result<Vec<u64>, RecvError> = match k % 3 {
            1 => rx.recv().map(|v| vec![v]),
            2 => {
                let mut buf = [0u64; 3];
                rx.recv_many(&mut buf).map(|n| buf[..n].to_vec())
            }
            _ => rx.recv_in_place().map(|g| {
                let v = *g;
                drop(g);
                vec![v]
            }),
        };
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
}

/// Two senders (processes 1 and 2) and `receivers` receivers over a 4-slot queue; `victim` (a
/// process index) may die at a random step.
fn scenario(plan: Plan, receivers: usize, victim: Option<usize>) {
    let mut procs = Processes::new();
    let q = Queue::<u64>::builder().slots(4).spin(SpinPolicy::park()).anonymous().expect("create the model queue");
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
            match (&tx, &rx, plan) {
                (Some(tx), _, Plan::Operations) => sender(tx, &log, p),
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

/// Membership plan: one single send.
fn one_value(tx: &Sender<u64>, log: &Log, me: usize) {
    let v = value(me, 1);
    log.with(me, |r| r.sending = vec![v]);
    let res = tx.send(v);
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
fn queue_a_sender_dies_one_receiver() {
    model::check(300, STEPS, || scenario(Plan::Operations, 1, Some(1)));
}

#[test]
fn queue_the_other_sender_dies_two_receivers() {
    model::check(300, STEPS, || scenario(Plan::Operations, 2, Some(2)));
}

#[test]
fn queue_a_receiver_dies() {
    model::check(300, STEPS, || scenario(Plan::Operations, 2, Some(3)));
}

#[test]
fn queue_nobody_dies() {
    model::check(100, STEPS, || scenario(Plan::Operations, 2, None));
}

/// Deaths while joining, sending or leaving: the receivers must still see every sender gone.
#[test]
fn membership_a_sender_dies_anywhere() {
    model::check(300, STEPS, || scenario(Plan::Membership, 1, Some(1)));
}

/// The same for a receiver: the senders must see it gone (or the other receiver drains).
#[test]
fn membership_a_receiver_dies_anywhere() {
    model::check(300, STEPS, || scenario(Plan::Membership, 2, Some(3)));
}
