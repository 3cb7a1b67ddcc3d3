//! What the ring layer must do around a `fork`: [`crate::process`] holds a [`ForkGuard`] across
//! the call, so that a child starts with its inherited ring handles registered as members under its
//! own pid before the parent goes on (and, say, drops its copy of a sender).

/// Held by the forking thread across `fork()`.
#[derive(Debug)]
#[must_use = "call in_child() in the child and in_parent() in the parent"]
pub(crate) struct ForkGuard {
    _private: (),
}

impl ForkGuard {
    /// Before `fork()`, in the parent.
    pub(crate) fn prepare() -> ForkGuard {
        ForkGuard { _private: () }
    }

    /// First thing in the child: refreshes the pid cache and registers inherited ring handles.
    pub(crate) fn in_child(self) {
        crate::sync::refresh_after_fork();
    }

    /// In the parent once `fork()` returned, whether it succeeded or not.
    pub(crate) fn in_parent(self) {}
}
