//! What the ring layer must do around a `fork`: [`crate::process`] holds a [`ForkGuard`] across
//! the call, so that a child starts with its inherited ring handles registered as members under its
//! own pid before the parent goes on (and, say, drops its copy of a sender).
//!
//! Inherited handles behave like inherited file descriptors: the child holds a copy of each, and
//! counts as a member for each, until it drops them or exits.

use std::sync::{MutexGuard, Weak};

use super::core::{self, Core};

/// Held by the forking thread across `fork()`: no other thread of ours can be registering a ring
/// (holding the list of mappings) while the child is being made.
#[must_use = "call in_child() in the child and in_parent() in the parent"]
pub(crate) struct ForkGuard {
    all: Option<MutexGuard<'static, Vec<Weak<Core>>>>,
}

impl std::fmt::Debug for ForkGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForkGuard")
    }
}

impl ForkGuard {
    /// Before `fork()`, in the parent.
    pub(crate) fn prepare() -> ForkGuard {
        ForkGuard { all: core::fork_prepare() }
    }

    /// First thing in the child: refreshes the pid cache and registers inherited ring handles.
    pub(crate) fn in_child(mut self) {
        crate::sync::refresh_after_fork();
        if let Some(all) = self.all.take() {
            core::fork_child(&all);
        }
    }

    /// First thing in a child that will use none of the handles it inherited (a pool worker):
    /// refreshes the pid cache and forgets them, without registering anything.
    pub(crate) fn in_child_forgetting(mut self) {
        crate::sync::refresh_after_fork();
        if let Some(all) = self.all.take() {
            core::fork_child_forgetting(&all);
        }
    }

    /// In the parent once `fork()` returned, whether it succeeded or not.
    pub(crate) fn in_parent(self) {}
}

/// In a forked child about to `_exit`: drops every ring membership the child holds, so that its
/// peers see it leave at once rather than when its death is noticed.
pub(crate) fn child_exit() {
    core::child_exit();
}
