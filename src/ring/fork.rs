//! What the ring layer does around a `fork`, registered into [`crate::sys::atfork`] when the
//! first ring of a process is mapped: before the fork the forking thread holds the list of this
//! process's mappings, so that no other thread is registering a ring while the child is made; the
//! child then registers its inherited handles as members under its own pid (or forgets them, for a
//! pool worker), in its at-fork handler.
//!
//! The parent goes on only after that registration, so that a copy it drops right after the fork
//! never leaves a ring with no sender (or receiver) counted for a moment, which a peer would read
//! as `Disconnected`. `Process::fork`/`start` wait for the child's "started" anyway; for any other
//! `fork()` (libc, nix, a library), the parent's at-fork handler waits: when the process holds a
//! ring handle at the fork and the child keeps them, `prepare` maps a one-word shared page
//! ([`ForkHandshake`]), the child's handler sets it once its registration is done, and the
//! parent's handler waits for that, at most [`HANDSHAKE_TIMEOUT`]. A process that holds no handle
//! (or a child that forgets them) pays nothing: no page, no wait. What the wait costs: the parent of
//! a plain fork returns once the child has run its handler (the child being scheduled, tens of
//! microseconds of work); the full timeout when `fork()` failed (the parent handler runs and
//! cannot tell) or the child was killed or stopped before its handler ran. After a timeout the
//! parent goes on as before the fix, and the window is open again for that fork.
//!
//! Inherited handles behave like inherited file descriptors: the child holds a copy of each, and
//! counts as a member for each, until it drops them or exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{MutexGuard, Weak};

use super::core::Core;
use super::membership;
use crate::sys::atfork::{AtFork, ForkHandshake, ForkSide, HANDSHAKE_TIMEOUT, Inherit};

/// The ring layer's fork hooks.
pub(super) struct RingForkHooks;

/// Forks whose parent waited for the child's registration, and how many of those waits ran out.
static WAITS: AtomicU64 = AtomicU64::new(0);
static TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// Test support: (forks of this process whose parent waited for the child's registration, waits
/// of those that ran out).
pub(super) fn waits() -> (u64, u64) {
    (WAITS.load(Ordering::Relaxed), TIMEOUTS.load(Ordering::Relaxed))
}

/// What `prepare` took, held across `fork()`: the list of mappings, and the word through which
/// the child says it registered (only when there is something to register).
struct Held {
    all: Option<MutexGuard<'static, Vec<Weak<Core>>>>,
    handshake: Option<ForkHandshake>,
}

impl AtFork for RingForkHooks {
    fn prepare(&self, inherit: Inherit) -> Box<dyn ForkSide> {
        let all = membership::fork_prepare();
        let registers = inherit == Inherit::Keep && all.as_deref().is_some_and(|v| membership::holds_handles(v));
        // Without a page (mmap failed) the parent does not wait: the window stays open for this
        // fork, as before the handshake existed.
        let handshake = if registers { ForkHandshake::new() } else { None };
        Box::new(Held { all, handshake })
    }

    fn child_exit(&self) {
        membership::child_exit();
    }
}

impl ForkSide for Held {
    fn in_child(self: Box<Self>, inherit: Inherit) {
        let Held { all, handshake } = *self;
        if let Some(all) = all {
            match inherit {
                Inherit::Keep => membership::fork_child(&all),
                Inherit::Forget => membership::fork_child_forgetting(&all),
            }
        }
        // After the registration (its stores are `Release`d by the word's store): the parent
        // may go on.
        if let Some(h) = handshake {
            h.done();
        }
    }

    fn in_parent(self: Box<Self>) {
        let Held { all, handshake } = *self;
        // The list is let go first: the parent's other threads may map rings during the wait.
        drop(all);
        if let Some(h) = handshake {
            WAITS.fetch_add(1, Ordering::Relaxed);
            if !h.wait(HANDSHAKE_TIMEOUT) {
                TIMEOUTS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
