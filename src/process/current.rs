//! Who this process is: its name, the counter behind default names, and [`current_process`].
//!
//! Names follow Python's `multiprocessing`: the first process is `MainProcess`; every process it
//! starts takes the next number of a process-wide counter, and one started without a name is called
//! `Process-<n>`. A child restarts the counter, and its own children are `Process-<n>:1`,
//! `Process-<n>:2`, ... (the numbers name the path from `MainProcess`, whatever the names given).
//!
//! The state is one pointer to an [`Identity`] that is never freed. A forked child swaps in its own,
//! allocated by the parent before the fork, so the child takes no lock and allocates nothing to
//! learn who it is (a lock held by another thread of the parent at the fork would never be released
//! in the child).

use std::io::Write;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// A process's name and its place in the tree of processes started by ringpool.
#[derive(Debug)]
pub(crate) struct Identity {
    /// The name, as [`CurrentProcess::name`] reports it.
    pub(crate) name: String,
    /// The counter values from `MainProcess` down to this process, joined by `:`; empty for the
    /// main process.
    pub(crate) path: String,
}

static MAIN: Identity = Identity { name: String::new(), path: String::new() };
const MAIN_NAME: &str = "MainProcess";

/// This process's identity; null means [`MAIN`]. Every value stored is leaked, never freed, so a
/// loaded pointer stays valid for ever.
static CURRENT: AtomicPtr<Identity> = AtomicPtr::new(std::ptr::null_mut());

/// The next number handed to a child of this process. Restarts at 1 in every child.
static NEXT_CHILD: AtomicU32 = AtomicU32::new(1);

fn identity() -> &'static Identity {
    let p = CURRENT.load(Ordering::Acquire);
    if p.is_null() {
        &MAIN
    } else {
        // SAFETY: every non-null value stored in CURRENT comes from `Box::leak` in `become_child`
        // and is never freed or written again, so it points at a live Identity for ever.
        unsafe { &*p }
    }
}

/// The identity of the next child: takes the next number of the counter, and names the child
/// `name` or, when none is given, `Process-<path>`.
pub(crate) fn next_child(name: Option<String>) -> Identity {
    let n = NEXT_CHILD.fetch_add(1, Ordering::Relaxed);
    let parent = &identity().path;
    let path = if parent.is_empty() { n.to_string() } else { format!("{parent}:{n}") };
    let name = name.unwrap_or_else(|| format!("Process-{path}"));
    Identity { name, path }
}

/// In a new child: makes `id` this process's identity and restarts the counter. Allocates nothing
/// and takes no lock (`id` was allocated by the parent).
pub(crate) fn become_child(id: Box<Identity>) {
    CURRENT.store(Box::leak(id), Ordering::Release);
    NEXT_CHILD.store(1, Ordering::Relaxed);
}

/// The process this code runs in, as [`current_process`] sees it: a snapshot of its name, pid and
/// parent pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentProcess {
    name: &'static str,
    pid: u32,
    parent_pid: u32,
}

impl CurrentProcess {
    /// The name: `MainProcess` in the first process, otherwise the name its [`Process`](super::Process)
    /// was given (by default `Process-<n>`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The parent's process id, as `getppid` answered when [`current_process`] was called. For a
    /// child whose parent died (and that was asked to outlive it) this is the pid of whatever process
    /// adopted it, usually 1.
    pub fn parent_pid(&self) -> u32 {
        self.parent_pid
    }

    /// Always true: the process asking is running. Here for parity with Python's
    /// `current_process().is_alive()`.
    pub fn is_alive(&self) -> bool {
        true
    }
}

/// The process this code runs in: its name, pid and parent pid. Works alike in the main process, in
/// a forked child and in a spawned (re-executed) child.
///
/// ```
/// let me = ringpool::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id());
/// ```
pub fn current_process() -> CurrentProcess {
    let id = identity();
    let name = if std::ptr::eq(id, &MAIN) { MAIN_NAME } else { id.name.as_str() };
    CurrentProcess { name, pid: crate::sync::current_pid(), parent_pid: nix::unistd::getppid().as_raw() as u32 }
}

/// Ends this process at once with exit code `code`, the way a ringpool child ends: every ring
/// membership the process holds is given up (its peers see it leave now, not when its death is
/// noticed), stdout is flushed, then `_exit` runs. No destructor and no `atexit` handler runs, so a
/// forked child never runs the parent's clean-up (which could, say, remove a shared resource the
/// parent still uses).
///
/// Use it to give a child's exit code; in the main process, prefer `std::process::exit`.
pub fn exit(code: i32) -> ! {
    crate::sys::atfork::child_exit();
    let _ = std::io::stdout().flush();
    exit_now(code)
}

/// `_exit(code)`: ends the process at once, with no clean-up of any kind in user space.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns and runs no code of this program.
    unsafe { libc::_exit(code) }
}
