//! One-time initialization that a forked child can finish: [`ForkSafeOnce`] and [`ForkSafeLazy`].
//!
//! The hazard: `std::sync::Once` (and `OnceLock`, `LazyLock`) records "running" while a thread runs
//! the closure, and every other caller waits for that thread. A child forked (plain `fork()`,
//! [`crate::process`]'s `fork_unchecked`, a test harness's raw fork) while *another* thread of the
//! parent is inside the closure inherits the word "running", but not the thread: the child's first
//! call waits for a thread that does not exist in it, for ever. ringpool supports plain `fork()`
//! children (the ring layer registers the handles a child inherits, [`super::atfork`]), so any
//! one-time initialization on a path a child may run must not be a std `Once`.
//!
//! Here the state word holds 0 (not started), [`DONE`], or the pid of the process whose thread
//! runs the closure. A caller that finds it running under its *own* pid waits for that thread (a
//! yield loop: the closures here are short registrations). A caller that finds it running under
//! *another* pid is in a forked child whose running thread was left behind: it takes the run over
//! (compare-and-swap to its own pid) and runs the closure itself. So the closure may run twice
//! for one process image's history: once in the parent (which goes on and finishes), again in a
//! child that took it over; every closure given here must make a second run harmless (a
//! registration that de-duplicates, an at-fork handler that does not act twice in one child).
//!
//! What it does not cover: a closure that was inside a *lock* at the fork (the child's closure
//! then waits on that lock instead); a closure that calls the same `ForkSafeOnce` (it waits for
//! itself, as a std `Once` deadlocks); a grandchild whose pid equals the pid of an ancestor that
//! died mid-closure (pid reuse: it waits instead of taking over). A closure that panics leaves the
//! state "not started" (the next caller runs it again), not poisoned.
//!
//! The pid is read with `getpid` (not the crate's cached [`super::current_pid`], which itself
//! registers its at-fork handler through a `ForkSafeOnce`), only on the slow path: once done, a
//! call is one `Acquire` load.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};

/// Not started.
const NEW: u32 = 0;
/// Finished. Linux pids are at most 2^22 (`pid_max`), never 0 nor this.
const DONE: u32 = u32::MAX;

/// A `std::sync::Once` that a forked child can take over (see the module docs).
#[derive(Debug)]
pub(crate) struct ForkSafeOnce {
    state: AtomicU32,
}

impl ForkSafeOnce {
    pub(crate) const fn new() -> ForkSafeOnce {
        ForkSafeOnce { state: AtomicU32::new(NEW) }
    }

    /// Whether a call has finished (in this process or in one it was forked from after that).
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }

    /// Runs `f` unless it ran to the end already; returns once it has (here or in another thread
    /// of this process). In a forked child that inherited a run in progress, runs `f` again.
    #[inline]
    pub(crate) fn call(&self, f: impl FnOnce()) {
        if !self.is_done() {
            self.call_slow(f);
        }
    }

    #[cold]
    fn call_slow(&self, f: impl FnOnce()) {
        let me = std::process::id();
        let mut seen = self.state.load(Ordering::Acquire);
        loop {
            if seen == DONE {
                return;
            }
            if seen == me {
                // Another thread of this process runs it: wait for that thread.
                wait_a_little();
                seen = self.state.load(Ordering::Acquire);
                continue;
            }
            // Not started, or "running" in a process we were forked from: its thread is not here.
            match self.state.compare_exchange(seen, me, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
        /// Back to "not started" if `f` unwinds: the next caller runs it again.
        struct Reset<'a>(&'a AtomicU32);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.store(NEW, Ordering::Release);
            }
        }
        let reset = Reset(&self.state);
        f();
        std::mem::forget(reset);
        self.state.store(DONE, Ordering::Release);
    }
}

/// One step of waiting for another thread of this process to finish the closure.
fn wait_a_little() {
    #[cfg(ringpool_model)]
    if super::model::spin_hint() {
        return;
    }
    std::thread::yield_now();
}

/// A value computed once, like a `std::sync::OnceLock` filled by [`get_or_init`](Self::get_or_init),
/// that a forked child can compute again when its parent's thread was computing it at the fork
/// (see the module docs): the closure must be harmless to run twice.
pub(crate) struct ForkSafeLazy<T> {
    once: ForkSafeOnce,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written only by the one thread that holds the run (the state word names its
// process, and within a process only the compare-and-swap winner runs), before `DONE` is stored with
// `Release`; it is read (shared, `&T`) only after `DONE` is seen with `Acquire`, and never written
// again in that process (a takeover happens only in a forked child, a separate copy of memory).
// Sharing `&T` across threads needs `T: Sync`; the value may be made on one thread and dropped on
// another, hence `T: Send`.
unsafe impl<T: Send + Sync> Sync for ForkSafeLazy<T> {}

impl<T> ForkSafeLazy<T> {
    pub(crate) const fn new() -> ForkSafeLazy<T> {
        ForkSafeLazy { once: ForkSafeOnce::new(), value: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    /// The value, computed by `f` on the first call (or again in a forked child that inherited a
    /// computation in progress).
    pub(crate) fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        self.once.call(|| {
            let v = f();
            // SAFETY: we hold the run (see the `Sync` impl): no other thread of this process writes
            // or reads the cell until `DONE`. A value half-written by a parent's thread that is not
            // in this child is overwritten without being dropped (`MaybeUninit::write`).
            unsafe { (*self.value.get()).write(v) };
        });
        // SAFETY: `call` returned normally, so the state is `DONE`: the closure above ran to the end
        // (here, or before `DONE` was stored with `Release`, seen with `Acquire`), the cell holds an
        // initialized value, and nothing writes it any more in this process.
        unsafe { &*self.value.get().cast::<T>() }
    }
}

impl<T> ForkSafeLazy<T> {
    /// The value, if computed (in this process, or before the fork in one it was forked from).
    pub(crate) fn get(&self) -> Option<&T> {
        // SAFETY: as in `get_or_init`, after `DONE` was seen with `Acquire`.
        self.once.is_done().then(|| unsafe { &*self.value.get().cast::<T>() })
    }
}

impl<T> Drop for ForkSafeLazy<T> {
    fn drop(&mut self) {
        if *self.once.state.get_mut() == DONE {
            // SAFETY: `DONE` is stored only after the value was written; `&mut self` excludes readers.
            unsafe { self.value.get_mut().assume_init_drop() };
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ForkSafeLazy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ForkSafeLazy");
        match self.get() {
            Some(v) => d.field("value", v),
            None => d.field("value", &format_args!("<not computed>")),
        };
        d.finish()
    }
}

#[cfg(all(test, not(miri), not(ringpool_model)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Waits for `pid` to exit, for at most `limit`; kills and reaps it on timeout. Answers its
    /// exit code, or `None` on timeout.
    fn wait_child(pid: libc::pid_t, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
            if r == pid {
                return Some(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 });
            }
            if Instant::now() >= deadline {
                // SAFETY: kill and reap our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: as above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The hazard's shape: thread A enters `first` (which blocks until released); the main thread
    /// raw-forks a child while A is inside, and the child runs `in_child` (which calls the same
    /// one-time init) and exits with its answer. Returns the child's exit code (`None`: it did not
    /// exit within `limit` and was killed). A is released and joined before returning.
    fn fork_while_another_thread_inits(
        first: impl FnOnce(&dyn Fn()) + Send + 'static,
        in_child: impl FnOnce() -> i32,
        limit: Duration,
    ) -> Option<i32> {
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let a = std::thread::spawn(move || {
            first(&|| {
                entered_tx.send(()).unwrap();
                // Blocks until the main thread releases it (a deadline: never for ever).
                let _ = release_rx.recv_timeout(Duration::from_secs(60));
            })
        });
        entered_rx.recv_timeout(Duration::from_secs(30)).expect("thread A entered the init");
        // SAFETY: the child only makes system calls, touches atomics and statics, and leaves with
        // `_exit` (it allocates nothing: `in_child` closures below do not).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = in_child();
            // SAFETY: leaving the child without running the parent's destructors or test harness.
            unsafe { libc::_exit(code) };
        }
        let answer = wait_child(pid, limit);
        release_tx.send(()).unwrap();
        a.join().unwrap();
        answer
    }

    #[test]
    fn a_child_forked_mid_init_takes_it_over() {
        static ONCE: ForkSafeOnce = ForkSafeOnce::new();
        static RUNS_IN_PARENT: AtomicU32 = AtomicU32::new(0);
        static RAN_IN_CHILD: AtomicBool = AtomicBool::new(false);
        let code = fork_while_another_thread_inits(
            |block| {
                ONCE.call(|| {
                    RUNS_IN_PARENT.fetch_add(1, Ordering::Relaxed);
                    block();
                })
            },
            || {
                ONCE.call(|| RAN_IN_CHILD.store(true, Ordering::Relaxed));
                // A second call in the child is done at once, without running anything.
                ONCE.call(|| RAN_IN_CHILD.store(false, Ordering::Relaxed));
                if RAN_IN_CHILD.load(Ordering::Relaxed) && ONCE.is_done() { 0 } else { 2 }
            },
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(0), "the child must take the init over and finish it (None: it hung)");
        // The parent's own run finished, once, and a later call runs nothing.
        assert!(ONCE.is_done());
        ONCE.call(|| {
            RUNS_IN_PARENT.fetch_add(100, Ordering::Relaxed);
        });
        assert_eq!(RUNS_IN_PARENT.load(Ordering::Relaxed), 1);
        assert!(!RAN_IN_CHILD.load(Ordering::Relaxed), "the child's run is the child's");
    }

    /// The same shape with `std::sync::Once`: the child waits for a thread it does not have. Shows
    /// the test above can fail (its limit here is short: the child never finishes, and is killed).
    #[test]
    fn a_std_once_hangs_in_the_same_shape() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        let code = fork_while_another_thread_inits(
            |block| ONCE.call_once(block),
            || {
                ONCE.call_once(|| {});
                0
            },
            Duration::from_secs(2),
        );
        assert_eq!(code, None, "a std Once in a child forked mid-init waits for ever");
    }

    #[test]
    fn a_lazy_value_is_computed_again_in_a_child_forked_mid_init() {
        static LAZY: ForkSafeLazy<u64> = ForkSafeLazy::new();
        let code = fork_while_another_thread_inits(
            |block| {
                assert_eq!(
                    *LAZY.get_or_init(|| {
                        block();
                        7
                    }),
                    7
                );
            },
            || if *LAZY.get_or_init(|| 11) == 11 && *LAZY.get_or_init(|| 12) == 11 { 0 } else { 2 },
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(0), "the child computes its own value (None: it hung)");
        assert_eq!(*LAZY.get_or_init(|| 13), 7);
    }

    #[test]
    fn another_thread_of_the_same_process_waits_and_does_not_run_it() {
        static ONCE: ForkSafeOnce = ForkSafeOnce::new();
        static SECOND_RAN: AtomicBool = AtomicBool::new(false);
        static SECOND_RETURNED: AtomicBool = AtomicBool::new(false);
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let a = std::thread::spawn(move || {
            ONCE.call(|| {
                entered_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(60));
            })
        });
        entered_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let b = std::thread::spawn(|| {
            ONCE.call(|| SECOND_RAN.store(true, Ordering::Relaxed));
            SECOND_RETURNED.store(true, Ordering::Release);
        });
        std::thread::sleep(Duration::from_millis(50));
        // Whatever the scheduling, B cannot have returned while A holds the run.
        assert!(!SECOND_RETURNED.load(Ordering::Acquire));
        release_tx.send(()).unwrap();
        a.join().unwrap();
        b.join().unwrap();
        assert!(SECOND_RETURNED.load(Ordering::Acquire));
        assert!(!SECOND_RAN.load(Ordering::Relaxed));
    }

    #[test]
    fn a_panicking_init_is_run_again_by_the_next_caller() {
        let once = ForkSafeOnce::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| once.call(|| panic!("first"))));
        assert!(r.is_err());
        assert!(!once.is_done());
        let mut ran = false;
        once.call(|| ran = true);
        assert!(ran && once.is_done());
    }

    #[test]
    fn a_lazy_value_drops_what_it_holds() {
        let lazy = ForkSafeLazy::new();
        let rc = std::sync::Arc::new(());
        let _ = lazy.get_or_init(|| rc.clone());
        assert_eq!(std::sync::Arc::strong_count(&rc), 2);
        assert!(format!("{lazy:?}").contains("value"));
        drop(lazy);
        assert_eq!(std::sync::Arc::strong_count(&rc), 1);
        let empty: ForkSafeLazy<u8> = ForkSafeLazy::new();
        assert!(format!("{empty:?}").contains("not computed"));
    }
}
