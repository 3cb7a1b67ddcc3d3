//! Hooks around `fork()` and a forked child's exit, which upper layers register into.
//!
//! The process layer forks; the ring layer must act around every fork (register its inherited
//! handles in the child, or forget them) and when a forked child ends. So that the process layer
//! need not know the ring layer (and no layer reaches up), the ring registers an [`AtFork`] here
//! once, and the process layer calls [`prepare`] before `fork()`, then
//! [`Prepared::in_child`] or [`Prepared::in_parent`], and [`child_exit`] before a child's `_exit`.

use std::sync::Mutex;

/// What a forked child does with the handles it inherited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inherit {
    /// Keep them: the child is a member of every ring it holds a handle of.
    Keep,
    /// Forget them without touching shared memory (a pool worker, which opens what it needs).
    Forget,
}

/// A layer's part in a fork. `prepare` runs in the forking thread before `fork()`; what it returns
/// is finished in exactly one of the two processes afterwards.
pub(crate) trait AtFork: Sync {
    /// Before `fork()`, in the parent: take whatever must not change across the fork.
    fn prepare(&self) -> Box<dyn ForkSide>;
    /// In a forked child about to `_exit`: give up what the child holds. Must not block on a
    /// lock another thread of the parent might have held at the fork.
    fn child_exit(&self);
}

/// The half-done work of one [`AtFork::prepare`].
pub(crate) trait ForkSide {
    /// First thing in the child.
    fn in_child(self: Box<Self>, inherit: Inherit);
    /// In the parent once `fork()` returned, whether it succeeded or not.
    fn in_parent(self: Box<Self>);
}

static HOOKS: Mutex<Vec<&'static dyn AtFork>> = Mutex::new(Vec::new());

/// Registers a layer's fork hooks (once per layer: callers guard with a `Once`).
pub(crate) fn register(hooks: &'static dyn AtFork) {
    if let Ok(mut all) = HOOKS.lock() {
        all.push(hooks);
    }
}

/// Held by the forking thread across `fork()`.
#[must_use = "call in_child() in the child and in_parent() in the parent"]
pub(crate) struct Prepared {
    sides: Vec<Box<dyn ForkSide>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("sides", &self.sides.len()).finish()
    }
}

/// Before `fork()`, in the parent: every registered layer prepares.
pub(crate) fn prepare() -> Prepared {
    let hooks: Vec<&'static dyn AtFork> = HOOKS.lock().map(|h| h.clone()).unwrap_or_default();
    Prepared { sides: hooks.iter().map(|h| h.prepare()).collect() }
}

impl Prepared {
    /// First thing in the child: refreshes the pid cache, then every layer's child half.
    pub(crate) fn in_child(self, inherit: Inherit) {
        super::pid::refresh_after_fork();
        for side in self.sides {
            side.in_child(inherit);
        }
    }

    /// In the parent once `fork()` returned.
    pub(crate) fn in_parent(self) {
        for side in self.sides {
            side.in_parent();
        }
    }
}

/// In a forked child about to `_exit`: every layer gives up what the child holds. Skips the hooks
/// if their list is locked (by a thread that does not exist in this child).
pub(crate) fn child_exit() {
    let hooks: Vec<&'static dyn AtFork> = match HOOKS.try_lock() {
        Ok(h) => h.clone(),
        Err(_) => return,
    };
    for h in hooks {
        h.child_exit();
    }
}
