//! Model check of the event count ([`EventCount`]): waiters announce themselves, re-check their
//! condition and sleep; notifiers publish, then notify. The model futex blocks a waiter without a
//! deadline until a wake on its word, so a lost wake-up leaves it blocked for ever, which shuttle
//! reports as a deadlock. (SAFETY.md promises at most one 50 ms slice per lost wake-up under weak
//! memory; shuttle runs every operation sequentially consistent, where the promise is "none",
//! and that is what is checked here.) One waiter may also die anywhere: the others must still
//! be woken.
//!
//! Run (see `.ci/models`):
//! `RUSTFLAGS="--cfg ringpool_model" CARGO_TARGET_DIR=target/model cargo test --release --test model_event`

#![cfg(ringpool_model)]

use std::sync::Arc;

use ringpool::model::{self, Death, Processes};
use ringpool::sync::{EventCount, FutexWait, store_load_barrier_after_rmw};
use shuttle::sync::atomic::{AtomicU32, Ordering};

struct Shared {
    event: EventCount,
    /// Tokens a notifier made and waiters take (the condition: a token is there).
    tokens: AtomicU32,
    taken: AtomicU32,
}

/// Takes one token, waiting on the event count (without a deadline) while there is none.
fn take(s: &Shared) {
    loop {
        let t = s.tokens.load(Ordering::SeqCst);
        if t > 0 {
            if s.tokens.compare_exchange(t, t - 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                s.taken.fetch_add(1, Ordering::SeqCst);
                return;
            }
            continue;
        }
        let key = s.event.prepare();
        if s.tokens.load(Ordering::SeqCst) > 0 {
            s.event.cancel(key);
            continue;
        }
        assert_eq!(s.event.wait(key, None), FutexWait::Woken);
    }
}

/// Gives one token and wakes `n` sleepers (`None`: everyone, as a leaving peer does).
fn give(s: &Shared, n: Option<u32>) {
    s.tokens.fetch_add(1, Ordering::SeqCst);
    store_load_barrier_after_rmw();
    match n {
        Some(n) => s.event.notify(n),
        None => s.event.notify_all(),
    }
}

/// `waiters` waiters take one token each; one notifier gives as many, waking `wake` per token.
/// `victim`: a waiter that may die anywhere (its token is then left over, which is fine).
fn scenario(waiters: usize, wake: Option<u32>, victim: Option<usize>) {
    let mut procs = Processes::new();
    let s = Arc::new(Shared { event: EventCount::new(), tokens: AtomicU32::new(0), taken: AtomicU32::new(0) });
    for w in 0..waiters {
        let s = s.clone();
        let death = if victim == Some(w) { Death::AtRandomStep(12) } else { Death::Never };
        procs.spawn(death, move || take(&s));
    }
    let n = s.clone();
    procs.spawn(Death::Never, move || {
        for _ in 0..waiters {
            give(&n, wake);
        }
    });
    let died = procs.settle();
    let survivors = died[..waiters].iter().filter(|d| !**d).count() as u32;
    // Every surviving waiter took a token (a lost wake-up would have left it blocked: a deadlock).
    assert!(s.taken.load(Ordering::SeqCst) >= survivors, "died {died:?}: {}", model::deaths());
    procs.release();
}

#[test]
fn event_one_waiter_notify_one() {
    model::check(300, 20_000, || scenario(1, Some(1), None));
}

#[test]
fn event_two_waiters_notify_one_each() {
    model::check(300, 20_000, || scenario(2, Some(1), None));
}

#[test]
fn event_three_waiters_notify_all() {
    model::check(300, 20_000, || scenario(3, None, None));
}

#[test]
fn event_a_waiter_dies_the_other_is_still_woken() {
    model::check(300, 20_000, || scenario(2, Some(1), Some(0)));
}
