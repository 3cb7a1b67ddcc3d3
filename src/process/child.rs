//! What every child does between its first instruction and `_exit`: become itself (identity,
//! report channel, death signal), say "started", run the caller's code under `catch_unwind`, report
//! a panic, flush stdout, `_exit`.
//!
//! # Panics in a child
//!
//! ringpool installs, once, a panic hook that wraps the one it finds (the default hook, or the
//! program's own). In the parent it only calls the wrapped hook. In a child it first sends the panic
//! (location and message) to the parent, from inside the hook, so the report arrives even where
//! panics abort; then it prints:
//!
//! - in a child forked from a single-threaded parent, and in a spawned child, through the wrapped
//!   hook: the usual output, backtrace included;
//! - in a child made by [`fork_unchecked`](super::ProcessBuilder::fork_unchecked), with one
//!   `write(2)` to fd 2 of a line formatted on the stack: no lock and no allocation. The default
//!   hook locks stderr and, for a backtrace, a global backtrace lock; another thread of the parent
//!   may have held either at the moment of the fork, and it does not exist in the child to release
//!   it. So no backtrace is printed there.
//!
//! A program that replaces the panic hook after ringpool installed its own loses the report from
//! inside the hook; the child still reports the panic's message after `catch_unwind` (without its
//! location).

use std::cell::Cell;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use super::current::{self, Identity};
use super::report;
use crate::sys::once::ForkSafeOnce;

/// What kind of process this is. Decides how a panic is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Not started by ringpool (the main process).
    Main = 0,
    /// Forked from a parent that ran no other thread.
    Forked = 1,
    /// Forked by `fork_unchecked`: other threads of the parent may have held locks at the fork.
    ForkedUnchecked = 2,
    /// Re-executed: a fresh process image.
    Spawned = 3,
}

static KIND: AtomicU8 = AtomicU8::new(Kind::Main as u8);

/// A panic has been reported to the parent; report no other.
static REPORTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// True on the thread that runs the child's main function: its panic is the child's panic.
    static RUNNER: Cell<bool> = const { Cell::new(false) };
}

/// A function the panic hook asks first, on the panicking thread: `true` means "this panic is
/// mine" (an upper layer catches its unwind and reports it its own way), and the hook neither
/// reports it to the parent as the process's panic nor prints it. Upper layers register them
/// ([`register_panic_claimer`]); this layer knows nothing of what they claim.
pub(crate) type PanicClaimer = fn(&PanicHookInfo<'_>) -> bool;

/// Registered claimers, as function addresses (0: empty). Lock-free, because the hook may run in
/// a child forked from a threaded parent, where a lock could be held by a thread that is gone.
static CLAIMERS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// Registers a [`PanicClaimer`] (an upper layer does, once: callers guard with a fork-safe once,
/// which a forked child may run again; the same function twice is kept once). Answers false when
/// the registry is full.
pub(crate) fn register_panic_claimer(claimer: PanicClaimer) -> bool {
    let addr = claimer as usize;
    for slot in &CLAIMERS {
        match slot.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(existing) if existing == addr => return true,
            Err(_) => {}
        }
    }
    false
}

/// Whether a registered claimer takes this panic.
fn claimed(info: &PanicHookInfo<'_>) -> bool {
    CLAIMERS.iter().any(|slot| {
        let addr = slot.load(Ordering::Acquire);
        // SAFETY: a nonzero entry was stored by `register_panic_claimer` from a `PanicClaimer`
        // of this process image (entries are never removed, and `exec` clears them with the image).
        addr != 0 && unsafe { std::mem::transmute::<usize, PanicClaimer>(addr) }(info)
    })
}

fn kind() -> Kind {
    match KIND.load(Ordering::Relaxed) {
        1 => Kind::Forked,
        2 => Kind::ForkedUnchecked,
        3 => Kind::Spawned,
        _ => Kind::Main,
    }
}

/// Installs ringpool's panic hook around the current one, once per process. Does nothing on a
/// thread that is panicking (where `set_hook` itself would panic).
///
/// A fork-safe once (see `crate::sys::once`): a child forked while another thread installs it
/// installs it again. If the parent's thread had set the hook already, ours then wraps ours: the
/// inner one passes the panic straight on ([`IN_HOOK`]). If it had taken the previous hook and not
/// yet set ours, that hook was in the parent thread's hands and the child wraps the default one.
pub(crate) fn install_hook() {
    static ONCE: ForkSafeOnce = ForkSafeOnce::new();
    if std::thread::panicking() {
        return;
    }
    ONCE.call(|| {
        let wrapped = panic::take_hook();
        panic::set_hook(Box::new(move |info| hook(info, &wrapped)));
    });
}

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

thread_local! {
    /// True while this thread runs [`hook`]: a hook installed twice (see [`install_hook`]) finds
    /// itself called by itself, and passes the panic on untouched.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

fn hook(info: &PanicHookInfo<'_>, wrapped: &Hook) {
    if IN_HOOK.try_with(|h| h.replace(true)).unwrap_or(false) {
        return wrapped(info);
    }
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let _ = IN_HOOK.try_with(|h| h.set(false));
        }
    }
    let _leave = Leave;
    if claimed(info) {
        return;
    }
    let kind = kind();
    if kind == Kind::Main {
        return wrapped(info);
    }
    let message = payload_text(info.payload());
    let runner = RUNNER.try_with(Cell::get).unwrap_or(false);
    if runner && !REPORTED.swap(true, Ordering::AcqRel) {
        report::send(report::PANICKED, |w| {
            if let Some(loc) = info.location() {
                let _ = write!(w, "{loc}");
            }
            let _ = write!(w, "\0{message}");
        });
    }
    if kind == Kind::ForkedUnchecked {
        print_without_locks(info, message, runner);
    } else {
        wrapped(info);
    }
}

/// A panic payload as text, the way the default hook shows it.
pub(crate) fn payload_text(payload: &(dyn std::any::Any + Send)) -> &str {
    match payload.downcast_ref::<&str>() {
        Some(s) => s,
        None => payload.downcast_ref::<String>().map_or("Box<dyn Any>", String::as_str),
    }
}

/// Prints a panic line with a single `write(2)`, formatted in a stack buffer.
fn print_without_locks(info: &PanicHookInfo<'_>, message: &str, runner: bool) {
    let me = current::current_process();
    let mut buf = [0u8; 2048];
    let len = {
        let mut w = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(w, "process '{}' (pid {})", me.name(), me.pid());
        if !runner {
            let _ = write!(w, ", thread '{}',", std::thread::current().name().unwrap_or("<unnamed>"));
        }
        let _ = match info.location() {
            Some(loc) => write!(w, " panicked at {loc}:\n{message}\n"),
            None => write!(w, " panicked:\n{message}\n"),
        };
        w.position() as usize
    };
    write_stderr(&buf[..len]);
}

/// Writes to fd 2 directly, bypassing std's stderr lock.
pub(crate) fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(std::io::stderr(), rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// First steps of a new child, right after `atfork::Prepared::in_child` (forked) or before `main`
/// (spawned): the death signal, the identity, the report channel, "started".
///
/// `expected_parent`: when set, the child asks for SIGKILL when the parent process ends (see
/// [`die_with_parent`]), then checks that its parent is still `expected_parent`; if the parent
/// already died (before the request could take effect), the child kills itself at once.
pub(crate) fn enter(kind: Kind, id: Box<Identity>, channel: Option<OwnedFd>, expected_parent: Option<u32>) {
    if let Some(parent) = expected_parent {
        if let Some(fd) = die_with_parent(parent) {
            // A forked child keeps the armed watch; the programs it runs do not.
            fcntl_int(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    if kind == Kind::Spawned {
        keep_watch_to_ourselves();
    }
    KIND.store(kind as u8, Ordering::Relaxed);
    REPORTED.store(false, Ordering::Relaxed);
    current::become_child(id);
    if let Some(ch) = channel {
        report::set_channel(ch);
    }
    report::send(report::STARTED, |_| {});
}

// The parent-death watch.
//
// `PR_SET_PDEATHSIG` follows the *thread* that started the child: a child started from a thread
// that ends is killed then, while its parent process lives on. So a child watches its parent
// *process* instead, through a pipe whose write end only the parent process holds:
//
// - each process that starts children makes one pipe (close-on-exec both ends) the first time,
//   and keeps it for its life ([`prepare_watch`]); an at-fork handler closes the write end in
//   every child forked from it, by ringpool or by anyone (`pthread_atfork`), and `exec` closes it
//   in every program it runs, so the write end lives in the parent process alone and goes when
//   that process ends, however it ends (or when it `exec`s);
// - the child opens its own description of the read end (`/proc/self/fd/N`) and asks the kernel
//   for SIGKILL, instead of SIGIO, when that description becomes readable: `F_SETOWN` (itself),
//   `F_SETSIG` (SIGKILL), `O_ASYNC`. The last write end closing makes it readable (end of file):
//   the kernel kills the child then. No thread in the child, nothing to poll;
// - then it looks whether the parent died before the request took effect (the pipe already hung
//   up, or `getppid` no longer the parent) and dies at once if so.
//
// A thread of the parent ending closes nothing, so it kills no child.

/// `fcntl` commands the `libc` crate does not name: set and get the signal an `O_ASYNC`
/// descriptor sends (`F_SETSIG`, `F_GETSIG` in `<fcntl.h>`; the same numbers on every Linux
/// architecture, asm-generic's `__F_SETSIG` and `__F_GETSIG`).
const F_SETSIG: libc::c_int = 10;
const F_GETSIG: libc::c_int = 11;

/// The process whose watch pipe [`WATCH_READ`] and [`WATCH_WRITE`] are (0: none). Inherited by a
/// forked child, where it names the parent: the child then makes its own.
static WATCH_PID: AtomicU32 = AtomicU32::new(0);
static WATCH_READ: AtomicI32 = AtomicI32::new(-1);
static WATCH_WRITE: AtomicI32 = AtomicI32::new(-1);
/// Held (by pid) while a thread makes the watch pipe. A fork by another thread meanwhile leaves
/// it held by the parent's pid in the child, which takes it over (no thread of its own holds it).
static WATCH_LOCK: AtomicU32 = AtomicU32::new(0);

/// In a parent, before it starts a child that dies with it: makes this process's watch pipe if it
/// has none yet (see the notes above).
pub(crate) fn prepare_watch() -> Result<(), nix::errno::Errno> {
    let me = nix::unistd::getpid().as_raw() as u32;
    if WATCH_PID.load(Ordering::Acquire) == me {
        return Ok(());
    }
    loop {
        let held = WATCH_LOCK.load(Ordering::Acquire);
        // Free, or held by the process we were forked from (its thread does not exist here).
        if (held == 0 || held != me)
            && WATCH_LOCK.compare_exchange(held, me, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            break;
        }
        std::thread::yield_now();
    }
    let made = if WATCH_PID.load(Ordering::Acquire) == me {
        Ok(())
    } else {
        // A write end inherited from our own parent (an at-fork handler normally closed it
        // already): it must go, or our parent's death could never be seen.
        let inherited = WATCH_WRITE.swap(-1, Ordering::AcqRel);
        if inherited >= 0 {
            // SAFETY: close(2) on a descriptor number this module made and nothing else owns.
            unsafe { libc::close(inherited) };
        }
        // An inherited read end is left alone: a child's die_with_parent consumed it, or it is a
        // harmless close-on-exec descriptor whose number something else may own by now.
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map(|(r, w)| {
            use std::os::fd::IntoRawFd;
            register_watch_atfork();
            WATCH_READ.store(r.into_raw_fd(), Ordering::Release);
            WATCH_WRITE.store(w.into_raw_fd(), Ordering::Release);
            WATCH_PID.store(me, Ordering::Release);
        })
    };
    WATCH_LOCK.store(0, Ordering::Release);
    made
}

/// Registers, once per process image, the at-fork handler that closes the watch's write end in
/// every forked child. A [`ForkSafeOnce`]: a child forked while another thread of its parent ran
/// the registration takes it over instead of waiting for a thread it does not have; glibc
/// serializes `pthread_atfork` with `fork`, so such a child either inherited the handler or not,
/// and the handler is idempotent if it registers it again.
fn register_watch_atfork() {
    static REGISTERED: ForkSafeOnce = ForkSafeOnce::new();
    REGISTERED.call(|| {
        // SAFETY: registers a child handler that only swaps an atomic and calls close(2), both
        // async-signal-safe, as a handler that runs in a child of a threaded fork must be.
        unsafe { libc::pthread_atfork(None, None, Some(close_watch_write_end)) };
    });
}

/// In a freshly forked child: the parent's watch write end is not ours to hold.
extern "C" fn close_watch_write_end() {
    let w = WATCH_WRITE.swap(-1, Ordering::AcqRel);
    if w >= 0 {
        // SAFETY: close(2) of the inherited copy of the parent's write end (this module made it).
        unsafe { libc::close(w) };
    }
}

/// Asks to die (SIGKILL) when the parent process ends (see the notes above; falls back to
/// `PR_SET_PDEATHSIG` when the parent made no watch pipe or the kernel refuses a step), then
/// checks that the parent did not end already. Async-signal-safe: system calls only, on a stack
/// buffer. Answers the armed descriptor, which the caller must keep open for the child's life
/// (it is not close-on-exec, so that it survives a spawned child's `exec`).
pub(crate) fn die_with_parent(expected_parent: u32) -> Option<i32> {
    close_watch_write_end();
    let inherited = WATCH_READ.swap(-1, Ordering::AcqRel);
    let armed = if inherited >= 0 {
        let armed = arm_watch(inherited);
        // SAFETY: close(2) of our inherited copy of the parent's read end (this module made it).
        unsafe { libc::close(inherited) };
        armed
    } else {
        None
    };
    if armed.is_none() {
        // No watch: the thread-bound death signal is the best there is.
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    }
    if nix::unistd::getppid().as_raw() as u32 != expected_parent || armed.is_some_and(hung_up) {
        // The parent is gone (we were adopted, or its write end is closed): do what the watch
        // would have done.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        current::exit_now(137);
    }
    armed
}

/// Opens a description of our own of the pipe read end `fd`, and asks for SIGKILL when it becomes
/// readable. `None` if a step fails.
fn arm_watch(fd: i32) -> Option<i32> {
    // "/proc/self/fd/" and the number, NUL-terminated, without allocating.
    let mut path = [0u8; 40];
    let prefix = b"/proc/self/fd/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let (mut n, mut k) = (fd as u32, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..k].iter().rev().enumerate() {
        path[prefix.len() + i] = *d;
    }
    // SAFETY: `path` is NUL-terminated (zeroed, and at most 14 + 10 bytes written of 40).
    let own = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_NONBLOCK) };
    if own < 0 {
        return None;
    }
    // Its owner (this process), the signal sent to the owner (SIGKILL), then that signal on.
    let ok = fcntl_int(own, libc::F_SETOWN, nix::unistd::getpid().as_raw()) == 0
        && fcntl_int(own, F_SETSIG, libc::SIGKILL) == 0
        && fcntl_int(own, libc::F_SETFL, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_ASYNC) == 0;
    if !ok {
        // SAFETY: close(2) of the descriptor opened above.
        unsafe { libc::close(own) };
        return None;
    }
    Some(own)
}

/// fcntl(2) with an integer argument (ignored by the commands that take none). Async-signal-safe.
fn fcntl_int(fd: i32, cmd: libc::c_int, arg: libc::c_int) -> libc::c_int {
    // SAFETY: the commands used here read or change a descriptor's flags, owner or signal, with
    // an integer argument: no memory is involved. A descriptor that is not open just fails.
    unsafe { libc::fcntl(fd, cmd, arg) }
}

/// Whether the watch pipe has no writer left (the parent process is gone).
fn hung_up(fd: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll(2) on one pollfd that lives on this stack frame; zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLIN) != 0
}

/// In a spawned child (after `exec`): the watch descriptor armed before the `exec` had to cross
/// it; now that it has, it becomes close-on-exec, so that programs this child runs do not hold it.
/// Found by what it is: a descriptor that signals SIGKILL to this process.
fn keep_watch_to_ourselves() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let me = nix::unistd::getpid().as_raw();
    for fd in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        // A number closed meanwhile (the directory's own) just fails.
        if fcntl_int(fd, F_GETSIG, 0) == libc::SIGKILL && fcntl_int(fd, libc::F_GETOWN, 0) == me {
            let flags = fcntl_int(fd, libc::F_GETFD, 0);
            if flags >= 0 {
                fcntl_int(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Runs the child's main function and ends the process: exit code 0 when it returns, 101 when it
/// panics (after reporting the panic). Never returns, never unwinds into the caller's frames.
pub(crate) fn run_and_exit(body: impl FnOnce()) -> ! {
    RUNNER.with(|r| r.set(true));
    let code = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => 0,
        Err(payload) => {
            if !REPORTED.swap(true, Ordering::AcqRel) {
                let message = payload_text(&*payload);
                report::send(report::PANICKED, |w| {
                    let _ = write!(w, "\0{message}");
                });
            }
            // The payload's destructor is the caller's code and could panic again; we leave anyway.
            std::mem::forget(payload);
            101
        }
    };
    current::exit(code)
}
