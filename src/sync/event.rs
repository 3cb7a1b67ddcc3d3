//! An event count: the wait/wake half of a condition variable, for a condition that lives in
//! shared memory and is read without a lock.
//!
//! A waiter announces itself ([`EventCount::prepare`]), checks its condition once more, and only
//! then sleeps on the sequence word; a notifier publishes its change, and, only if somebody
//! announced itself, bumps the sequence and wakes. With nobody waiting, notifying costs one load of
//! a line that stays shared between the cores: no system call, no write.
//!
//! The ordering argument (why no wake-up is lost) is in `SAFETY.md`, "Event counts".

use crate::sys::atomic::{AtomicU32, Ordering};

use crate::sys::{Deadline, FutexWait, futex_wait, futex_wake};

/// Sequence word plus the number of announced waiters. Zeroed memory is a valid, idle event count.
#[repr(C)]
#[derive(Debug, Default)]
pub struct EventCount {
    seq: AtomicU32,
    waiters: AtomicU32,
}

/// What [`EventCount::prepare`] hands back: the sequence number to sleep on.
#[derive(Clone, Copy, Debug)]
#[must_use = "a prepared wait must be finished with wait() or cancel()"]
pub struct WaitKey(u32);

impl EventCount {
    /// An idle event count.
    pub const fn new() -> EventCount {
        EventCount { seq: AtomicU32::new(0), waiters: AtomicU32::new(0) }
    }

    /// Announces a waiter. The caller must check its condition again after this, then call
    /// [`wait`](Self::wait) or [`cancel`](Self::cancel).
    pub fn prepare(&self) -> WaitKey {
        // SeqCst RMW: a full barrier, so the condition check that follows cannot be done before the
        // announcement is visible (the notifier's side of the Dekker pair is `notify`).
        self.waiters.fetch_add(1, Ordering::SeqCst);
        WaitKey(self.seq.load(Ordering::SeqCst))
    }

    /// Withdraws an announcement without sleeping (the condition turned out true).
    pub fn cancel(&self, _key: WaitKey) {
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sleeps until notified (or spuriously woken) or until `deadline`; withdraws the announcement.
    pub fn wait(&self, key: WaitKey, deadline: Option<Deadline>) -> FutexWait {
        let r = futex_wait(&self.seq, key.0, deadline);
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        r
    }

    /// Wakes up to `n` sleepers if anyone announced itself.
    ///
    /// The caller must have published its change and then executed a StoreLoad barrier: a SeqCst
    /// fence, or (what the ring does) a locked read-modify-write such as unlocking the ring's lock
    /// followed by [`store_load_barrier_after_rmw`].
    #[inline]
    pub fn notify(&self, n: u32) {
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.notify_slow(n);
        }
    }

    #[cold]
    fn notify_slow(&self, n: u32) {
        self.seq.fetch_add(1, Ordering::Release);
        futex_wake(&self.seq, n);
    }

    /// Wakes every sleeper, whether or not the waiter count says so (used when a peer leaves).
    pub fn notify_all(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&self.seq, u32::MAX);
    }

    /// How many waiters are announced right now.
    pub fn waiters(&self) -> u32 {
        self.waiters.load(Ordering::Relaxed)
    }

    /// The sequence word and the value a prepared wait sleeps on, for waiting on many event counts
    /// at once (`futex_waitv`); the announcement is withdrawn with [`cancel`](Self::cancel).
    pub(crate) fn wait_word(&self, key: WaitKey) -> (&AtomicU32, u32) {
        (&self.seq, key.0)
    }
}

/// The StoreLoad barrier a notifier needs between publishing and reading the waiter count, when it
/// has just executed a locked read-modify-write (the ring's unlock is a `swap`).
///
/// On x86-64 every locked instruction is a full barrier in hardware, so only the compiler must be
/// kept from moving the load: a compiler fence. Elsewhere, a SeqCst fence.
#[inline(always)]
pub fn store_load_barrier_after_rmw() {
    #[cfg(target_arch = "x86_64")]
    crate::sys::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(not(target_arch = "x86_64"))]
    crate::sys::atomic::fence(Ordering::SeqCst);
}
