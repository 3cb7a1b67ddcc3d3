//! Starting a child by `fork`: the protocol with the layers that registered fork hooks
//! ([`crate::sys::atfork`]; the ring layer does), and the parent's side of it.
//!
//! ```text
//! parent                                   child
//! atfork::Forking::begin()       (the at-fork handlers run inside fork())
//! lock stdout, flush; lock stderr
//! fork() ---------------------------------> Forking::in_child()          (first thing)
//! Forking::in_parent()                     unlock stderr, stdout
//! unlock stderr, stdout                    parent-death watch, getppid check
//! wait for "started" (or the child's end)  identity, report channel
//!                          <-------------- "started"
//! drop the parent's copy of the closure    run the closure under catch_unwind
//! return the Process                       atfork::child_exit, flush, _exit
//! ```
//!
//! The parent waits for "started" before it drops its copy of the closure, because the closure may
//! own ring senders: the child must have registered its inherited copies as members before the
//! parent's copies leave, or a receiver could see every sender gone for a moment.

use std::io::Write;

use nix::unistd::ForkResult;

use super::child::{self, Kind};
use super::current;
use super::report;
use super::status::io_errno;
use super::{Process, ProcessBuilder, StartError, StartMethod, wait};
use crate::sys::atfork::{self, Inherit};
use crate::sys::current_pid;

/// Succeeds when the calling thread is the only thread of this process (one entry in
/// `/proc/self/task`): then nobody else can start a thread before the caller forks, so the answer
/// cannot go stale. Fails with [`StartError::Threaded`] otherwise, and when /proc cannot be read.
pub(super) fn check_alone() -> Result<(), StartError> {
    let dir = std::fs::read_dir("/proc/self/task")
        .map_err(|e| StartError::Os { op: "count threads in /proc/self/task", source: io_errno(e) })?;
    match dir.count() {
        1 => Ok(()),
        threads => Err(StartError::Threaded { threads }),
    }
}

/// Forks a child that runs `f`. `kind` says whether the caller checked that it is the only thread
/// ([`Kind::Forked`]) or took responsibility for the other threads ([`Kind::ForkedUnchecked`]).
pub(super) fn fork(b: ProcessBuilder, f: Box<dyn FnOnce() + 'static>, kind: Kind) -> Result<Process, StartError> {
    wait::sweep();
    child::install_hook();
    if b.die_with_parent {
        child::prepare_watch().map_err(|source| StartError::Os { op: "pipe2 (parent-death watch)", source })?;
    }
    let id = Box::new(current::next_child(b.name));
    let name = id.name.clone();
    let (read_end, write_end) = report::channel().map_err(|source| StartError::Os { op: "pipe2", source })?;
    let parent = current_pid();
    let expected_parent = b.die_with_parent.then_some(parent);

    let guard = atfork::Forking::begin(if b.keep_ring_handles { Inherit::Keep } else { Inherit::Forget });
    // Held across the fork, so that in the child they are held by the child's own (only) thread,
    // not by a thread that does not exist there; flushed, so the child does not print the parent's
    // buffered output again.
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = out.flush();
    let err = std::io::stderr().lock();
    // SAFETY: in the child only this thread exists. Either it was the only thread of the parent
    // (`Kind::Forked`: checked by the caller, and nobody else could start one meanwhile), or the
    // caller of `fork_unchecked` promised that the child needs nothing the other threads may hold.
    // ringpool's own steps in the child take no lock that another thread could hold: the stdout and
    // stderr locks are held by this thread across the fork, the ring layer's `in_child` is designed
    // for this moment, the rest are atomics and system calls (see `SAFETY.md`, "Forking").
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Child) => {
            guard.in_child();
            drop(err);
            drop(out);
            drop(read_end);
            child::enter(kind, id, Some(write_end), expected_parent);
            child::run_and_exit(f)
        }
        Ok(ForkResult::Parent { child }) => {
            guard.in_parent();
            drop(err);
            drop(out);
            drop(write_end);
            drop(id);
            let mut p = Process::new(child.as_raw() as u32, name, StartMethod::Fork, read_end);
            let started = if b.wait_started { p.await_start() } else { Ok(()) };
            // Only now may the parent's copy of what the closure captured go.
            drop(f);
            started.map(|()| p)
        }
        Err(source) => {
            guard.in_parent();
            Err(StartError::Os { op: "fork", source })
        }
    }
}
