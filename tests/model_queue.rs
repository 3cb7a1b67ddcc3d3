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
const STEPS: usize = 200_000;

fn open(fd: &OwnedFd) -> Queue<u64> {
    let fd = fd.try_clone().expect("dup the queue's descriptor");
    QueueBuilder::<u64>::default().spin(SpinPolicy::park()).from_fd(fd).expect("open the model queue")
}

/// Sender `me`: a single send, a batch, a try-batch, an in-place send, another batch.
fn sender(tx: Sender<u64>, log: Log, me: usize) {
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
fn receiver(rx: Receiver<u64>, log: Log, me: usize) {
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
                log.with(me, |r| r.receiving = 0);
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

/// Two senders (processes 1 and 2) and `receivers` receivers over a 4-slot queue; `victim` (a
/// process index) may die at a random step.
fn scenario(receivers: usize, victim: Option<usize>) {
    let mut procs = Processes::new();
    let q = Queue::<u64>::builder().slots(4).spin(SpinPolicy::park()).anonymous().expect("create the model queue");
    let fd = q.fd().try_clone_to_owned().expect("dup");
    drop(q);
    let n = 3 + receivers;
    let log = Log::new(n);
    // Process 0 is unused (index 0 stands for the test's main thread in the value encoding).
    for p in 1..n {
        let death = if victim == Some(p) { Death::AtRandomStep(MAX_OPS) } else { Death::Never };
        let fd = fd.try_clone().expect("dup");
        let log = log.clone();
        let is_sender = p <= 2;
        log.with(p, |r| {
            r.is_sender = is_sender;
            r.is_receiver = !is_sender;
        });
        procs.spawn(death, move || {
            let q = open(&fd);
            drop(fd);
            if is_sender {
                match q.sender() {
                    Ok(tx) => sender(tx, log, p),
                    Err(e) => log.with(p, |r| r.errors.push(format!("join: {e:?}"))),
                }
            } else {
                match q.receiver() {
                    Ok(rx) => receiver(rx, log, p),
                    Err(e) => log.with(p, |r| r.errors.push(format!("join: {e:?}"))),
                }
            }
        });
    }
    // Index 0 is nobody (neither sender nor receiver).
    let mut died = procs.settle();
    died.insert(0, false);
    check(&log, &died);
    procs.release();
}

#[test]
fn queue_a_sender_dies_one_receiver() {
    model::check(300, STEPS, || scenario(1, Some(1)));
}

#[test]
fn queue_the_other_sender_dies_two_receivers() {
    model::check(300, STEPS, || scenario(2, Some(2)));
}

#[test]
fn queue_a_receiver_dies() {
    model::check(300, STEPS, || scenario(2, Some(3)));
}

#[test]
fn queue_nobody_dies() {
    model::check(100, STEPS, || scenario(2, None));
}
