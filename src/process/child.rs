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
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::current::{self, Identity};
use super::report;

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
    /// True while a pool worker runs tasks on this thread: a panic is a task's, caught and
    /// handed to the pool's parent as that task's error, not the process's.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// The text of the last captured panic ("message (at location)").
    static CAPTURED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Turns task-panic capture on or off for this thread (see [`take_captured_panic`]). While on,
/// a panic is neither reported to the parent as the process's panic nor printed: its text is
/// kept for the pool, which catches the unwind and fails only that task.
pub(crate) fn capture_task_panics(on: bool) {
    let _ = CAPTURING.try_with(|c| c.set(on));
}

/// The text of the panic captured last on this thread, if any (taken: a second call gets `None`).
pub(crate) fn take_captured_panic() -> Option<String> {
    CAPTURED.try_with(|c| c.borrow_mut().take()).ok().flatten()
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
pub(crate) fn install_hook() {
    static ONCE: Once = Once::new();
    if std::thread::panicking() {
        return;
    }
    ONCE.call_once(|| {
        let wrapped = panic::take_hook();
        panic::set_hook(Box::new(move |info| hook(info, &wrapped)));
    });
}

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

fn hook(info: &PanicHookInfo<'_>, wrapped: &Hook) {
    if CAPTURING.try_with(Cell::get).unwrap_or(false) {
        let message = payload_text(info.payload());
        let text = match info.location() {
            Some(loc) => format!("{message} (at {loc})"),
            None => message.to_owned(),
        };
        let _ = CAPTURED.try_with(|c| *c.borrow_mut() = Some(text));
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
fn payload_text(payload: &(dyn std::any::Any + Send)) -> &str {
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
/// `expected_parent`: when set, the child asks for SIGKILL when the parent's forking thread ends,
/// then checks that its parent is still `expected_parent`; if the parent already died (before the
/// request could take effect), the child kills itself at once.
pub(crate) fn enter(kind: Kind, id: Box<Identity>, channel: Option<OwnedFd>, expected_parent: Option<u32>) {
    if let Some(parent) = expected_parent {
        die_with_parent(parent);
    }
    KIND.store(kind as u8, Ordering::Relaxed);
    REPORTED.store(false, Ordering::Relaxed);
    current::become_child(id);
    if let Some(ch) = channel {
        report::set_channel(ch);
    }
    report::send(report::STARTED, |_| {});
}

/// `PR_SET_PDEATHSIG` with SIGKILL, then the `getppid` check that closes the race with a parent
/// that died before the request. Async-signal-safe: two system calls and, at worst, a third.
pub(crate) fn die_with_parent(expected_parent: u32) {
    use nix::sys::signal::Signal;
    let set = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if set.is_err() || nix::unistd::getppid().as_raw() as u32 != expected_parent {
        // The parent is gone (we were adopted), or the request failed: do what the death signal
        // would have done.
        let _ = nix::sys::signal::raise(Signal::SIGKILL);
        current::exit_now(137);
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
