//! What the ring layer does around a `fork`, registered into [`crate::sys::atfork`] when the
//! first ring of a process is mapped: before the fork the forking thread holds the list of this
//! process's mappings, so that no other thread is registering a ring while the child is made; the
//! child then registers its inherited handles as members under its own pid (or forgets them, for a
//! pool worker), in its at-fork handler. `Process::fork`/`start` wait for the child's "started",
//! so the parent goes on (and, say, drops its copy of a sender) only after that registration. A
//! plain `fork()` does not wait: its parent may run first, and a copy it drops at once can leave the
//! ring for a moment with no sender (or receiver) counted, which a peer in that window reads as
//! `Disconnected` (SAFETY.md's hazard list).
//!
//! Inherited handles behave like inherited file descriptors: the child holds a copy of each, and
//! counts as a member for each, until it drops them or exits.

use std::sync::{MutexGuard, Weak};

use super::core::Core;
use super::membership;
use crate::sys::atfork::{AtFork, ForkSide, Inherit};

/// The ring layer's fork hooks.
pub(super) struct RingForkHooks;

/// The list of mappings, held across `fork()`.
struct Held(Option<MutexGuard<'static, Vec<Weak<Core>>>>);

impl AtFork for RingForkHooks {
    fn prepare(&self) -> Box<dyn ForkSide> {
        Box::new(Held(membership::fork_prepare()))
    }

    fn child_exit(&self) {
        membership::child_exit();
    }
}

impl ForkSide for Held {
    fn in_child(mut self: Box<Self>, inherit: Inherit) {
        if let Some(all) = self.0.take() {
            match inherit {
                Inherit::Keep => membership::fork_child(&all),
                Inherit::Forget => membership::fork_child_forgetting(&all),
            }
        }
    }

    fn in_parent(self: Box<Self>) {}
}
