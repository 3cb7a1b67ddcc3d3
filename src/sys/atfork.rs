//! Hooks around `fork()` and a forked child's exit, which upper layers register into.
//!
//! The process layer forks; the ring layer must act around every fork (register its inherited
//! handles in the child, or forget them) and when a forked child ends. So that the process layer
//! need not know the ring layer (and no layer reaches up), the ring registers an [`AtFork`] here
//! once, and [`child_exit`] is called before a forked child's `_exit`.
//!
//! The hooks run around **every** `fork()` of the process, ringpool's or not: the first
//! registration installs a `pthread_atfork` triple (prepare, parent, child) that runs them, so a
//! child made by a plain `fork()` (libc, nix, a library) registers the ring handles it inherits
//! just as a [`crate::process`] child does. Where the triple cannot be installed (`ENOMEM`), the
//! process layer runs the hooks itself around its own forks ([`Forking`]), and a plain fork's child
//! registers its inherited handles on their first use instead.
//!
//! What the child handler may do: it runs in the child of a possibly threaded parent, where only
//! the forking thread exists. It takes no lock that another thread could have held (the list of
//! hooks has no lock; the ring layer's list of mappings is taken by `prepare`, in the forking
//! thread, and handed over to the child); it reads a thread-local cell that the forking thread
//! filled; the ring layer's part makes atomic operations on shared memory, reads
//! `/proc/self/stat` through `open`/`read` into a stack buffer, may `futex`-wake, and finishes a
//! [`ForkHandshake`] (an atomic store, a `futex` wake, a `munmap`). The heap is used only to free
//! what `prepare` allocated, which glibc allows there (its `fork` resets the allocator's locks in
//! the child before the child handlers run).
//!
//! The parent handler may wait: the ring layer's, through a [`ForkHandshake`], for the child to be
//! through its handler (at most [`HANDSHAKE_TIMEOUT`]; see `ring::fork`). glibc holds its at-fork
//! lock from the prepare handlers to the end of the parent handlers, so another thread's `fork` or
//! `pthread_atfork` waits as long; the child's handler needs nothing of the parent's to finish.
//!
//! A child that will `exec` at once should not join the rings it inherits: ringpool's own spawn
//! forgets them ([`Inherit::Forget`] through [`with_inherit`]); other code that forks and execs
//! (a `std::process::Command` with `pre_exec`) can call [`child_exit`] (public as
//! `ringpool::process::before_exec`) in the child before `exec`.

use super::once::ForkSafeLazy;
use super::{Deadline, FutexWait};
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a forked child does with the handles it inherited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inherit {
    /// Keep them: the child is a member of every ring it holds a handle of.
    Keep,
    /// Forget them without touching shared memory (a pool worker, which opens what it needs, or
    /// a child that will exec).
    Forget,
}

/// A layer's part in a fork. `prepare` runs in the forking thread before `fork()`; what it returns
/// is finished in exactly one of the two processes afterwards.
pub(crate) trait AtFork: Sync {
    /// Before `fork()`, in the parent: take whatever must not change across the fork. `inherit`
    /// is what the child will do with inherited handles (the same value its `in_child` gets).
    fn prepare(&self, inherit: Inherit) -> Box<dyn ForkSide>;
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

/// How many layers can register hooks (the ring is the only one today).
const MAX_HOOKS: usize = 4;

/// The registered hooks, in registration order. Not behind a lock: a child forked while another
/// thread of its parent registered would inherit the lock held by a thread it does not have, and
/// its own registration would wait for ever. Each slot is filled once, fork-safely (a child takes
/// a half-done fill over, see [`super::once`]).
static HOOKS: [ForkSafeLazy<&'static dyn AtFork>; MAX_HOOKS] = [const { ForkSafeLazy::new() }; MAX_HOOKS];

/// The registered hooks.
fn hooks() -> impl Iterator<Item = &'static dyn AtFork> {
    HOOKS.iter().map_while(|slot| slot.get().copied())
}

fn same(a: &'static dyn AtFork, b: &'static dyn AtFork) -> bool {
    std::ptr::addr_eq(a as *const dyn AtFork, b as *const dyn AtFork)
}

/// Whether the `pthread_atfork` triple runs the hooks around every fork.
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// What `prepare` made, from the forking thread's `prepare` handler to its parent or child
    /// handler (the child's only thread is the copy of the forking thread).
    static PENDING: RefCell<Option<Prepared>> = const { RefCell::new(None) };
    /// What the next fork of this thread does with inherited handles: [`Inherit::Keep`] unless a
    /// caller says otherwise through [`with_inherit`].
    static MODE: Cell<Inherit> = const { Cell::new(Inherit::Keep) };
}

extern "C" fn prepare_handler() {
    // Installed twice in a child that took the installation over from its parent's thread (see
    // `register`): then this runs twice before each fork, and only the first prepares (a second
    // `prepare` would wait for the locks the first holds). The parent or child handler takes it.
    if PENDING.try_with(|cell| cell.try_borrow().map_or(true, |slot| slot.is_some())).unwrap_or(true) {
        return;
    }
    // What the child handler will read (the forking thread's mode, left as it is until then).
    let inherit = MODE.try_with(Cell::get).unwrap_or(Inherit::Keep);
    // Nothing here may unwind: a panic out of an extern "C" fn aborts.
    let prepared = std::panic::catch_unwind(|| prepare(inherit));
    if let Ok(p) = prepared {
        let _ = PENDING.try_with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut() {
                *slot = Some(p);
            }
        });
    }
}

fn take_pending() -> Option<Prepared> {
    PENDING.try_with(|cell| cell.try_borrow_mut().ok().and_then(|mut slot| slot.take())).ok().flatten()
}

extern "C" fn parent_handler() {
    if let Some(p) = take_pending() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.in_parent()));
    }
}

/// Runs the hooks' child halves. Installed twice in some children (see `register`): the second run
/// finds nothing pending and only refreshes the pid cache again, which is harmless.
extern "C" fn child_handler() {
    let inherit = MODE.try_with(|m| m.replace(Inherit::Keep)).unwrap_or(Inherit::Keep);
    if let Some(p) = take_pending() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.in_child(inherit)));
    } else {
        super::pid::refresh_after_fork();
    }
}

/// Registers a layer's fork hooks; the same hooks twice are kept once (a forked child may run a
/// layer's registration again, see [`super::once`]). The first registration installs the
/// `pthread_atfork` handlers that run them around every fork.
pub(crate) fn register(hooks: &'static dyn AtFork) {
    // The first slot that is empty or holds these hooks (a slot being filled by another thread of
    // this process is waited for; one left half-filled by a parent's thread is taken over).
    let kept = HOOKS.iter().any(|slot| same(*slot.get_or_init(|| hooks), hooks));
    debug_assert!(kept, "more than {MAX_HOOKS} layers register fork hooks");
    // A `ForkSafeOnce`: a child forked while another thread installs the handlers installs them
    // again (glibc serializes `pthread_atfork` with `fork`, so it then has them twice); the
    // handlers act once per fork however often they are installed.
    static INSTALL: super::once::ForkSafeOnce = super::once::ForkSafeOnce::new();
    INSTALL.call(|| {
        // The pid cache's own child handler first (it is registered on the first pid query):
        // handlers run in registration order in the child.
        let _ = super::current_pid();
        #[cfg(not(miri))]
        {
            // SAFETY: the three handlers are `extern "C" fn`s with static lifetime that never
            // unwind (each catches panics); what they do in the child is argued in the module
            // docs. pthread_atfork fails only with ENOMEM: then the process layer runs the hooks
            // itself around its forks (see `Forking`).
            let rc = unsafe { libc::pthread_atfork(Some(prepare_handler), Some(parent_handler), Some(child_handler)) };
            INSTALLED.store(rc == 0, Ordering::Release);
        }
    });
}

/// Runs `f` (which forks) with this thread's forks treating inherited handles as `inherit` says.
pub(crate) fn with_inherit<R>(inherit: Inherit, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = MODE.try_with(|m| m.set(Inherit::Keep));
        }
    }
    let _ = MODE.try_with(|m| m.set(inherit));
    let _reset = Reset;
    f()
}

/// Held by the forking thread across one `fork()` of the process layer: arranges for the hooks to
/// run (by the `pthread_atfork` handlers, or by hand where they could not be installed).
#[must_use = "call in_child() in the child and in_parent() in the parent"]
#[derive(Debug)]
pub(crate) struct Forking {
    inherit: Inherit,
    by_hand: Option<Prepared>,
}

impl Forking {
    /// Before `fork()`, in the parent.
    pub(crate) fn begin(inherit: Inherit) -> Forking {
        if INSTALLED.load(Ordering::Acquire) {
            let _ = MODE.try_with(|m| m.set(inherit));
            Forking { inherit, by_hand: None }
        } else {
            Forking { inherit, by_hand: Some(prepare(inherit)) }
        }
    }

    /// First thing in the child (the handlers already ran, unless they are not installed).
    pub(crate) fn in_child(self) {
        let _ = MODE.try_with(|m| m.set(Inherit::Keep));
        match self.by_hand {
            Some(p) => p.in_child(self.inherit),
            None => super::pid::refresh_after_fork(),
        }
    }

    /// In the parent once `fork()` returned.
    pub(crate) fn in_parent(self) {
        let _ = MODE.try_with(|m| m.set(Inherit::Keep));
        if let Some(p) = self.by_hand {
            p.in_parent();
        }
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
pub(crate) fn prepare(inherit: Inherit) -> Prepared {
    Prepared { sides: hooks().map(|h| h.prepare(inherit)).collect() }
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

/// In a forked child about to `_exit` (or `exec`): every layer gives up what the child holds.
/// Takes no lock (the list of hooks has none). Allocates nothing: it may run between `fork` and
/// `exec`.
pub(crate) fn child_exit() {
    for h in hooks() {
        h.child_exit();
    }
}

/// How long the parent of a fork waits, at most, for its child to say it is through its at-fork
/// handler ([`ForkHandshake::wait`]).
///
/// The child's handler takes tens of microseconds (a few atomic operations on each ring it holds a
/// handle of, one read of `/proc/self/stat`); what the parent waits for is mostly the scheduler
/// giving the new child a CPU. 200 ms is far beyond that on a loaded two-CPU machine (a time
/// slice is a few milliseconds), and still short enough for the cases where the wait is for
/// nothing: `fork()` failed (no child; the parent handler runs anyway and cannot tell), or the
/// child was killed (or stopped) before its handler ran.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(200);

/// One word in memory shared with the child-to-be, through which the child's at-fork handler says
/// it is done and the parent waits for that: made in `prepare` (a `MAP_SHARED | MAP_ANONYMOUS`
/// page, so the child's copy of the mapping is the same memory), finished by
/// [`done`](Self::done) in the child and [`wait`](Self::wait) in the parent. The word goes 0 -> 1
/// once; the wait is a process-shared futex wait.
#[derive(Debug)]
pub(crate) struct ForkHandshake {
    word: NonNull<super::atomic::AtomicU32>,
    /// The length of the mapping (a page).
    len: usize,
}

impl ForkHandshake {
    /// Maps the word (0). `None` when the page cannot be mapped: the caller then does without.
    pub(crate) fn new() -> Option<ForkHandshake> {
        use nix::sys::mman::{MapFlags, ProtFlags};
        let len = std::num::NonZeroUsize::new(super::page_size())?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing aliases nothing.
        // It is zero-filled and page-aligned, so its first 4 bytes are a valid, aligned AtomicU32
        // holding 0; it is unmapped only by this value's `Drop`.
        let page = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .ok()?;
        Some(ForkHandshake { word: page.cast(), len: len.get() })
    }

    fn word(&self) -> &super::atomic::AtomicU32 {
        // SAFETY: `word` points at the start of the page mapped in `new`, which stays mapped
        // until `self` is dropped; the borrow cannot outlive `self`.
        unsafe { self.word.as_ref() }
    }

    /// In the child, once its at-fork work is done: sets the word and wakes the parent. Only an
    /// atomic store and two system calls (`futex`, `munmap`), as a child handler may make.
    pub(crate) fn done(self) {
        let word = self.word();
        word.store(1, super::atomic::Ordering::Release);
        super::futex_wake(word, u32::MAX);
    }

    /// In the parent once `fork()` returned: waits until the child said it is done, or `timeout`
    /// passed. Answers whether the child said so. Ends by the deadline whatever happens: a
    /// wake-up that finds the word still 0 (spurious, a signal, a changed word) sleeps again
    /// until the same absolute deadline, and [`super::futex_wait`] reports a timeout once the
    /// clock has passed it, checking before each sleep.
    pub(crate) fn wait(self, timeout: Duration) -> bool {
        let deadline = Deadline::after(timeout);
        let word = self.word();
        loop {
            if word.load(super::atomic::Ordering::Acquire) != 0 {
                return true;
            }
            if super::futex_wait(word, 0, Some(deadline)) == FutexWait::TimedOut {
                return word.load(super::atomic::Ordering::Acquire) != 0;
            }
        }
    }
}

impl Drop for ForkHandshake {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the page `new` mapped, owned by this value; the only borrow of
        // it (`word()`) borrows `self`, so none is alive. `munmap` is a plain system call, fine in
        // a child handler.
        let _ = unsafe { nix::sys::mman::munmap(self.word.cast(), self.len) };
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    thread_local! {
        static PREPARES: Cell<u32> = const { Cell::new(0) };
        static PARENTS: Cell<u32> = const { Cell::new(0) };
    }

    /// Counts, on the forking thread only, how often it prepares and finishes in the parent.
    struct Counting;
    struct CountingSide;
    impl AtFork for Counting {
        fn prepare(&self, _: Inherit) -> Box<dyn ForkSide> {
            PREPARES.with(|c| c.set(c.get() + 1));
            Box::new(CountingSide)
        }
        fn child_exit(&self) {}
    }
    impl ForkSide for CountingSide {
        fn in_child(self: Box<Self>, _: Inherit) {}
        fn in_parent(self: Box<Self>) {
            PARENTS.with(|c| c.set(c.get() + 1));
        }
    }
    static COUNTING: Counting = Counting;

    fn registered() -> usize {
        hooks().filter(|h| same(*h, &COUNTING)).count()
    }

    /// The handlers installed twice (a child that took the installation over) act once per fork,
    /// and a layer registered twice is kept once.
    #[test]
    fn handlers_installed_twice_act_once() {
        register(&COUNTING);
        register(&COUNTING);
        assert_eq!(registered(), 1);
        let before = (PREPARES.with(Cell::get), PARENTS.with(Cell::get));
        // What two installed triples do around one fork, in the parent. With `Forget`, so that the
        // ring layer's hooks (registered when another test of this process maps a ring) wait for
        // no child: there is none.
        with_inherit(Inherit::Forget, || {
            prepare_handler();
            prepare_handler();
            parent_handler();
            parent_handler();
        });
        assert_eq!(PREPARES.with(Cell::get) - before.0, 1);
        assert_eq!(PARENTS.with(Cell::get) - before.1, 1);
        assert!(take_pending().is_none());
    }

    /// Without a child saying it is done, the wait ends by its deadline and says so.
    #[test]
    fn a_handshake_nobody_finishes_ends_by_its_deadline() {
        let h = ForkHandshake::new().expect("map a page");
        assert!(!h.wait(Duration::from_millis(20)));
    }

    /// A raw-forked child finishes the handshake (after a pause, so that the parent is asleep in
    /// the futex by then): the parent's wait ends by the word, not by the deadline.
    #[test]
    fn a_child_finishes_the_handshake_across_the_fork() {
        let h = ForkHandshake::new().expect("map a page");
        // SAFETY: the child only sleeps (a system call), stores to an atomic, makes the futex and
        // munmap calls, and leaves with `_exit`: nothing another thread could have held.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: a plain nanosleep of 20 ms.
            unsafe { libc::usleep(20_000) };
            h.done();
            // SAFETY: leaving the child without running the parent's destructors or test harness.
            unsafe { libc::_exit(0) };
        }
        let limit = Duration::from_secs(30);
        let start = std::time::Instant::now();
        let finished = h.wait(limit);
        // Woken by the child's futex wake, not found set when the deadline ran out.
        let woken = start.elapsed() < limit;
        if !finished {
            // SAFETY: killing our own child, not reaped yet (so the pid is still its).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child, which `_exit`s right after finishing the handshake (or
        // was killed just above).
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(finished, "the child's word did not reach the parent");
        assert!(woken, "the child's wake-up did not reach the parent (found set at the deadline)");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
