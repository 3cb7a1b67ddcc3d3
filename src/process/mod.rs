//! Layer 4: processes. A [`Process`] runs code in a child process; the parent can wait for it
//! (with or without a deadline), signal it, and learn how it ended, panics included.
//! [`current_process`] tells any process its name, pid and parent pid.
//!
//! ```no_run
//! use ringpool::{Process, current_process};
//!
//! let mut p = Process::start(|| {
//!     let me = current_process();
//!     println!("{} runs as pid {}", me.name(), me.pid());
//! })?;
//! let status = p.join()?;
//! assert!(status.success());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Two ways to start a process: fork and spawn
//!
//! **Fork** ([`Process::start`], [`ProcessBuilder::fork`]) copies the calling process. The child
//! runs a closure, which can capture anything (ring handles, files, big data structures) at no cost
//! of serialization. It is fast: about 0.15 ms from `start` to a running child on a small VM, plus
//! copy-on-write faults later. Its hazards:
//!
//! - **Only the forking thread exists in the child.** A lock that another thread held at that moment
//!   (inside stdout, a logger, a `Mutex` of the program, an allocator that is not fork-safe) stays
//!   locked for ever in the child, which then hangs when it takes it. POSIX allows only
//!   async-signal-safe functions in a child of a threaded process. So [`ProcessBuilder::fork`]
//!   counts the threads first and refuses ([`StartError::Threaded`]) unless the caller is the only
//!   one; [`ProcessBuilder::fork_unchecked`] is the `unsafe` way past that check, for callers who
//!   know what the other threads hold. ringpool itself takes care of its own part: stdout and stderr
//!   are locked by the forking thread across the fork (so the child can print, and does not print the
//!   parent's unflushed output a second time), and the child's panic hook takes no lock.
//! - **The child inherits every descriptor**, close-on-exec or not (there is no exec).
//! - **The child leaves through `_exit`** after flushing stdout: the parent's destructors and
//!   `atexit` handlers never run in it (they could remove files or shared memory that the parent
//!   still uses). A closure that calls `std::process::exit` runs them anyway; call [`exit`].
//!
//! **Spawn** ([`ProcessBuilder::spawn`] with [`StartMethod::Spawn`]) re-executes the program's own
//! binary (`/proc/self/exe`) and runs a plain function `fn(A)` on a [`Pod`](bytemuck::Pod)
//! argument. The child is a fresh process image: no thread, lock or memory of the parent comes
//! along, so it is safe from a program that already runs threads (a thread pool, an async runtime,
//! the test harness). Its costs and limits:
//!
//! - an `exec` and a program start: about 1 ms on the same VM, against the fork's 0.15 ms, more
//!   for a big binary;
//! - only a function of the executable itself and a `Pod` argument of up to [`MAX_SPAWN_ARG`] bytes
//!   cross over; shared state must be reopened by name or passed as a descriptor;
//! - the function runs **before `main`**, from a constructor in `.init_array`, so it works in any
//!   program, test binaries included, but Rust's runtime setup has not run: a stack overflow is a
//!   bare SIGSEGV without its message, and `main` (with whatever it sets up) never runs in the child;
//! - the environment variable `RINGPOOL_SPAWN` is reserved: a program started with it set is taken
//!   for a spawned child and never reaches `main`.
//!
//! **Which one?** A program with one thread that wants to hand a closure (or inherited ring
//! handles) to a child: fork. A program that already runs threads: spawn. Code that runs in both
//! kinds of program: [`StartMethod::Auto`] (the default for [`ProcessBuilder::spawn`]) forks when
//! the caller is the only thread, and spawns otherwise.
//!
//! # Children die with their parent
//!
//! Unless [`ProcessBuilder::die_with_parent`] is set to false, a child is killed (SIGKILL) when its
//! parent **process** ends, however it ends, and also if the parent `exec`s another program. A
//! thread of the parent ending kills no child: a child started from a short-lived thread lives on.
//! (Linux's `PR_SET_PDEATHSIG` follows the parent's *thread*; ringpool uses it only as a fallback
//! when `/proc` is missing.) How: the parent holds the only write end of a pipe; the child asks the
//! kernel for SIGKILL when its end of that pipe hangs up, then checks that the parent did not end
//! before the request took effect. A process that `fork`s by other means than ringpool while
//! another of its threads starts a child does not disturb this (an at-fork handler closes the write
//! end in every forked child). A parent that closes descriptors it did not open (`close_range`,
//! closing "every fd above 2") closes that write end too, and its children die then.
//!
//! # Panics
//!
//! A panic in the child's closure or function ends the child with exit code 101 and reaches the
//! parent as [`JoinError::Panicked`], with the message and (usually) the location, sent over a
//! close-on-exec pipe. See the `child` module's notes for how the panic is printed without risk of
//! a deadlock.
//!
//! # No zombies
//!
//! Every child is reaped: by [`Process::join`], [`Process::join_timeout`], [`Process::is_alive`] or
//! [`Process::try_join`] once it has ended, or by the handle's `Drop`. Dropping the handle of a child
//! that still runs **kills it** (SIGKILL) and reaps it, waiting at most [`DROP_REAP_WAIT`] (a killed
//! process is normally gone within a millisecond); a child that is still not gone then (stuck in the
//! kernel) is remembered and reaped by the next start or drop. Why kill rather than let it run on:
//! letting it run would need something to reap it later, and a reaper thread would make every later
//! fork unsafe, while a signal handler for SIGCHLD would fight the program's own. A child is owned by
//! its handle, the way its lifetime is already tied to its parent's by `die_with_parent`. To let a
//! child finish, `join` it.
//!
//! # In a forked copy of a handle
//!
//! Only the process that started a child can wait for it. A handle that reaches another process (a
//! closure given to a second fork captured it) answers [`JoinError::NotOurChild`] there, and its
//! `Drop` does nothing.

mod child;
pub(crate) mod code;
mod current;
mod fork;
mod report;
mod signal;
mod spawn;
mod status;
mod wait;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

pub(crate) use child::{payload_text, register_panic_claimer};
pub use current::{CurrentProcess, current_process, exit};
pub use signal::Signal;
pub use spawn::MAX_SPAWN_ARG;
pub use status::{ExitStatus, JoinError, SignalError, StartError};

/// In a child made by a plain `fork()` that is about to `exec` another image (for instance in a
/// `std::process::Command::pre_exec` closure): gives up the ring memberships the child took over
/// at the fork, so that the new image does not count as a member of the parent's rings for as
/// long as it runs. Children started by [`Process`] (forked or spawned) need no such call.
///
/// Makes only atomic operations on the rings' shared memory and futex wake-ups: callable between
/// `fork` and `exec` in a child of a threaded parent.
pub fn before_exec() {
    crate::sys::atfork::child_exit();
}

use crate::sync::{Deadline, current_pid};
use crate::sys::Errno;

/// How long `Drop` waits for a child it killed before leaving it to a later sweep.
pub const DROP_REAP_WAIT: Duration = Duration::from_secs(1);

/// How long starting a process waits for the child to say it runs before killing it and answering
/// [`StartError::StartTimeout`]. The child says so right after its first few system calls, so only a
/// child stuck before running any of the caller's code takes this long.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How [`ProcessBuilder::spawn`] starts the child. See the [module docs](self) for the hazards of
/// each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// Fork when the calling thread is the only thread of the process, spawn otherwise.
    #[default]
    Auto,
    /// Fork: fast; refused ([`StartError::Threaded`]) when other threads run.
    Fork,
    /// Re-execute the current binary: safe with threads, slower.
    Spawn,
}

/// Options for a new process: its name, whether it dies with its parent, and (for
/// [`spawn`](ProcessBuilder::spawn)) how it is started.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until fork or spawn is called"]
pub struct ProcessBuilder {
    name: Option<String>,
    die_with_parent: bool,
    start_method: StartMethod,
    /// Whether starting waits for the child's "started" (see [`ProcessBuilder::fork`]).
    wait_started: bool,
    /// Whether a forked child keeps the ring handles it inherits as members (see
    /// [`crate::ring::Ring`]), or forgets them.
    keep_ring_handles: bool,
}

impl Default for ProcessBuilder {
    fn default() -> Self {
        ProcessBuilder {
            name: None,
            die_with_parent: true,
            start_method: StartMethod::Auto,
            wait_started: true,
            keep_ring_handles: true,
        }
    }
}

impl ProcessBuilder {
    /// A builder with the defaults: the next `Process-<n>` name, dies with its parent,
    /// [`StartMethod::Auto`].
    pub fn new() -> ProcessBuilder {
        ProcessBuilder::default()
    }

    /// The child's name, as [`Process::name`] and the child's [`current_process`] report it.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the child is killed (SIGKILL) when its parent process ends. Default: true. See the
    /// [module docs](self#children-die-with-their-parent) for how (a thread of the parent ending
    /// does not kill it).
    pub fn die_with_parent(mut self, yes: bool) -> Self {
        self.die_with_parent = yes;
        self
    }

    /// How [`spawn`](Self::spawn) starts the child. [`fork`](Self::fork) always forks: a closure
    /// cannot cross an `exec`.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// Forks a child that runs `f`, then `_exit`s (code 0, or 101 if `f` panics).
    ///
    /// Returns once the child has started (after the ring layer registered the child's inherited
    /// ring handles), and only then drops the parent's copy of `f`: whatever `f` captured is thus
    /// moved into the child. If the child dies before it could say it started, this still returns
    /// `Ok`: the handle's exit status tells how it died.
    ///
    /// Refuses with [`StartError::Threaded`] when the process runs other threads: see the
    /// [module docs](self#two-ways-to-start-a-process-fork-and-spawn).
    ///
    /// `f` is `'static`: nothing it captures borrows from the parent, so no lock guard of a ring,
    /// a queue or a [`RobustMutex`](crate::sync::RobustMutex) can cross into the child (see
    /// [`Process::start`]).
    pub fn fork<F: FnOnce() + 'static>(self, f: F) -> Result<Process, StartError> {
        fork::check_alone()?;
        fork::fork(self, Box::new(f), child::Kind::Forked)
    }

    /// [`fork`](Self::fork) without the check that the caller is the only thread.
    ///
    /// # Safety
    ///
    /// Other threads of this process may run at the moment of the fork; they do not exist in the
    /// child. The caller promises that the child, until it ends, uses nothing that one of them could
    /// have held locked or left half-updated at that moment: no lock they take (a `Mutex`, the
    /// stdout lock of code that bypasses `print!`, a logger), no data structure they modify without
    /// one. The global allocator must be fork-safe (the system allocator, glibc's malloc, is).
    /// ringpool's own steps in the child are safe in this setting (see `SAFETY.md`). POSIX calls
    /// anything beyond async-signal-safe functions in such a child undefined.
    pub unsafe fn fork_unchecked<F: FnOnce() + 'static>(self, f: F) -> Result<Process, StartError> {
        fork::fork(self, Box::new(f), child::Kind::ForkedUnchecked)
    }

    /// Starts a child that runs `entry(arg)`, by the builder's [`StartMethod`] (default
    /// [`StartMethod::Auto`]), then `_exit`s (code 0, or 101 if `entry` panics).
    ///
    /// `entry` must be a function of the executable itself, not of a shared library
    /// ([`StartError::ForeignFunction`]); a closure that captures nothing coerces to one. When
    /// spawned, the function's address crosses as an offset from the executable's load address,
    /// valid in the re-executed binary wherever it is loaded, and the child checks that the
    /// executable is the very file the parent runs. [`StartMethod::Fork`] is refused, as
    /// [`fork`](Self::fork) is, while other threads run.
    pub fn spawn<A: bytemuck::Pod>(self, entry: fn(A), arg: A) -> Result<Process, StartError> {
        let bytes = bytemuck::bytes_of(&arg);
        if self.resolve_method()? == StartMethod::Fork {
            return fork::fork(self, Box::new(move || entry(arg)), child::Kind::Forked);
        }
        spawn::spawn(self, spawn::typed_trampoline::<A>, entry as usize, bytes, &[])
    }

    /// The form the pool uses: `entry(arg)` on raw bytes, with descriptors that the child receives
    /// under the same numbers (close-on-exec is cleared on them in the spawned child only).
    #[allow(dead_code, reason = "the pool (layer 5) starts its workers through this")]
    pub(crate) fn spawn_raw(
        self,
        entry: fn(&[u8]),
        arg: &[u8],
        inherit_fds: &[BorrowedFd<'_>],
    ) -> Result<Process, StartError> {
        if self.resolve_method()? == StartMethod::Fork {
            let arg = arg.to_vec();
            return fork::fork(self, Box::new(move || entry(&arg)), child::Kind::Forked);
        }
        spawn::spawn(self, spawn::raw_trampoline, entry as usize, arg, inherit_fds)
    }

    /// Start without waiting for the child's "started": for callers whose child takes over no
    /// ring handle from the parent (the pool's workers give theirs up), so that many children can
    /// start at once. A child that fails to start is then seen only when it is joined.
    pub(crate) fn no_start_wait(mut self) -> Self {
        self.wait_started = false;
        self
    }

    /// A forked child forgets the ring handles it inherits instead of taking their membership
    /// over: for a child that will use none of them (a pool worker makes its own).
    pub(crate) fn forget_ring_handles(mut self) -> Self {
        self.keep_ring_handles = false;
        self
    }

    /// Whether a fork is allowed now: the caller is the only thread.
    pub(crate) fn may_fork() -> bool {
        fork::check_alone().is_ok()
    }

    /// The method to use: [`StartMethod::Auto`] made concrete (`Fork` when the caller is the only
    /// thread, `Spawn` otherwise, also when the threads cannot be counted), and `Fork` checked.
    fn resolve_method(&self) -> Result<StartMethod, StartError> {
        match self.start_method {
            StartMethod::Auto if fork::check_alone().is_ok() => Ok(StartMethod::Fork),
            StartMethod::Auto | StartMethod::Spawn => Ok(StartMethod::Spawn),
            StartMethod::Fork => fork::check_alone().map(|()| StartMethod::Fork),
        }
    }
}

/// Where a child stands, as far as its parent knows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Running,
    Ended(ExitStatus),
    /// Reaped by someone else; the status is lost.
    Lost,
}

/// A child process: started by [`Process::start`] or a [`ProcessBuilder`].
///
/// Dropping the handle of a child that still runs kills it; see the
/// [module docs](self#no-zombies).
#[derive(Debug)]
#[must_use = "dropping a Process kills the child if it still runs; join it"]
pub struct Process {
    pid: u32,
    name: String,
    method: StartMethod,
    /// The process that started the child: the only one that may wait for it or signal it.
    owner: u32,
    pidfd: Option<OwnedFd>,
    channel: report::Channel,
    state: State,
}

impl Process {
    /// Forks a child that runs `f`, with the default options: `ProcessBuilder::new().fork(f)`.
    /// See [`ProcessBuilder::fork`]; in a program that runs other threads this answers
    /// [`StartError::Threaded`].
    ///
    /// The closure is `'static`: it cannot borrow from the parent, so no lock guard
    /// ([`WriteGuard`](crate::ring::WriteGuard), [`ReadGuard`](crate::ring::ReadGuard), the queue's
    /// slot guards, [`RobustMutexGuard`](crate::sync::RobustMutexGuard)) borrowed from a handle
    /// can cross into the child. (A guard that crosses anyway, through a raw `fork()` or a leaked
    /// handle, is inert in the child: it unlocks and publishes nothing.)
    ///
    /// ```compile_fail,E0597
    /// let ring = ringpool::Ring::builder().anonymous().unwrap();
    /// let tx = ring.sender().unwrap();
    /// let guard = tx.reserve(8).unwrap();
    /// // Refused: the guard borrows `tx`, and the child's closure must be 'static.
    /// let child = ringpool::Process::start(move || guard.commit());
    /// ```
    pub fn start<F: FnOnce() + 'static>(f: F) -> Result<Process, StartError> {
        ProcessBuilder::new().fork(f)
    }

    /// A builder for a process with a name, or one that outlives its parent, or a spawned one.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::new()
    }

    /// A handle for the child `pid`, just started by this process, whose report channel's read end
    /// is `channel`. Opens the pidfd.
    fn new(pid: u32, name: String, method: StartMethod, channel: OwnedFd) -> Process {
        Process {
            pid,
            name,
            method,
            owner: current_pid(),
            pidfd: wait::pidfd_open(pid),
            channel: report::Channel::new(channel),
            state: State::Running,
        }
    }

    /// Waits until the child says it started, refuses, or ends (see [`START_TIMEOUT`]).
    fn await_start(&mut self) -> Result<(), StartError> {
        let deadline = Deadline::after(START_TIMEOUT);
        loop {
            let reports = self.channel.poll_reports();
            if reports.started || reports.refused.is_some() || reports.closed {
                break;
            }
            if self.reap_with(wait::try_reap).is_err() || self.state != State::Running {
                break;
            }
            if deadline.passed() {
                let _ = self.kill();
                self.reap_for_drop();
                return Err(StartError::StartTimeout { pid: self.pid, waited: START_TIMEOUT });
            }
            // Without a pidfd, a child that dies while a grandchild keeps the channel open is only
            // seen by the next try_reap: look again every 10 ms.
            let slice = if self.pidfd.is_some() { deadline } else { deadline.min_after(Duration::from_millis(10)) };
            let mut fds = vec![self.channel.fd()];
            fds.extend(self.pidfd.as_ref().map(|fd| fd.as_fd()));
            let _ = wait::poll_readable(&fds, Some(slice));
        }
        if let Some(reason) = self.channel.reports.refused.clone() {
            self.reap_for_drop();
            return Err(StartError::Refused { pid: self.pid, reason });
        }
        Ok(())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's name: the one given to the builder, or `Process-<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the child was started: [`StartMethod::Fork`] or [`StartMethod::Spawn`].
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// How the child ended, once it has been reaped (by `join`, `try_join`, `is_alive`).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self.state {
            State::Ended(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the child still runs. Reaps it if it has ended. A child that has been sent SIGKILL
    /// may still count as alive for a moment, until the kernel has ended it.
    pub fn is_alive(&mut self) -> bool {
        if self.state == State::Running && !self.is_ours() {
            return crate::sync::liveness::is_alive(self.pid, 0);
        }
        if self.reap_with(wait::try_reap).is_err() {
            self.state = State::Lost;
        }
        self.state == State::Running
    }

    /// Waits for the child to end, however long it takes, and reaps it. Answers the exit status, or
    /// [`JoinError::Panicked`] if the child panicked. Can be called again: it answers the same.
    pub fn join(&mut self) -> Result<ExitStatus, JoinError> {
        self.reap_with(|pid, pidfd| wait::reap_blocking(pid, pidfd).map(Some))?;
        self.outcome()
    }

    /// [`join`](Self::join) with a deadline: [`JoinError::Timeout`] if the child still runs after
    /// `timeout` (measured on the monotonic clock; never answered before `timeout` has passed). The
    /// child is left running.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<ExitStatus, JoinError> {
        let deadline = Deadline::after(timeout);
        self.reap_with(|pid, pidfd| wait::reap_until(pid, pidfd, deadline))?;
        if self.state == State::Running {
            return Err(JoinError::Timeout { pid: self.pid, timeout });
        }
        self.outcome()
    }

    /// [`join`](Self::join) without waiting: `Ok(None)` while the child runs.
    pub fn try_join(&mut self) -> Result<Option<ExitStatus>, JoinError> {
        self.reap_with(wait::try_reap)?;
        if self.state == State::Running {
            return Ok(None);
        }
        self.outcome().map(Some)
    }

    /// If the child still runs: checks that this process is its parent, calls `reap` (a flavour of
    /// `waitpid`; `Ok(None)` means still running) with its pid and pidfd, and records the status it
    /// finds, or [`State::Lost`] when someone else reaped the child (ECHILD).
    fn reap_with(
        &mut self,
        reap: impl FnOnce(u32, Option<BorrowedFd<'_>>) -> Result<Option<i32>, Errno>,
    ) -> Result<(), JoinError> {
        if self.state != State::Running {
            return Ok(());
        }
        self.check_ours()?;
        match reap(self.pid, self.pidfd.as_ref().map(|fd| fd.as_fd())) {
            Ok(Some(status)) => self.ended(status),
            Ok(None) => {}
            Err(Errno::ECHILD) => self.state = State::Lost,
            Err(source) => {
                return Err(JoinError::Os { op: "waitpid", source });
            }
        }
        Ok(())
    }

    /// Asks the child to end: SIGTERM. Does not wait. Does nothing once the child has been reaped.
    pub fn terminate(&mut self) -> Result<(), SignalError> {
        self.send_signal(Signal::TERM)
    }

    /// Ends the child at once: SIGKILL. Does not wait; [`join`](Self::join) then answers
    /// `Signaled { signal: SIGKILL, .. }`. Does nothing once the child has been reaped.
    pub fn kill(&mut self) -> Result<(), SignalError> {
        self.send_signal(Signal::KILL)
    }

    /// Sends `signal` ([`Signal::USR1`], ..., or any number through [`Signal::new`], which checks
    /// it) to the child. Does nothing once the child has been reaped, so a signal never reaches
    /// another process that got the pid since.
    pub fn send_signal(&mut self, signal: Signal) -> Result<(), SignalError> {
        let signal = signal.number();
        if self.state != State::Running {
            return Ok(());
        }
        if !self.is_ours() {
            return Err(SignalError::NotOurChild { pid: self.pid, owner: self.owner });
        }
        wait::send_signal(self.pid, self.pidfd.as_ref().map(|fd| fd.as_fd()), signal)
            .map_err(|source| SignalError::Os { signal, source })
    }

    fn is_ours(&self) -> bool {
        self.owner == current_pid()
    }

    fn check_ours(&self) -> Result<(), JoinError> {
        if self.is_ours() { Ok(()) } else { Err(JoinError::NotOurChild { pid: self.pid, owner: self.owner }) }
    }

    /// Records the reaped child's status and reads its last reports (all written before it died,
    /// so all in the pipe now).
    fn ended(&mut self, raw: i32) {
        self.channel.poll_reports();
        // A status that is no ending (stopped) cannot come from waitpid without WUNTRACED; take it
        // as lost rather than trust it.
        self.state = ExitStatus::from_wait_status(raw).map_or(State::Lost, State::Ended);
    }

    fn outcome(&self) -> Result<ExitStatus, JoinError> {
        if let Some((location, message)) = &self.channel.reports.panic {
            return Err(JoinError::Panicked {
                pid: self.pid,
                name: self.name.clone(),
                message: message.clone(),
                location: location.clone(),
            });
        }
        match self.state {
            State::Ended(status) => Ok(status),
            State::Lost => Err(JoinError::Lost { pid: self.pid }),
            // Not reached: callers only ask once the child has been reaped.
            State::Running => Err(JoinError::Os { op: "waitpid", source: Errno::EAGAIN }),
        }
    }

    /// Reaps a child that has been killed, waiting at most [`DROP_REAP_WAIT`]; leaves it to a later
    /// sweep after that.
    fn reap_for_drop(&mut self) {
        let deadline = Deadline::after(DROP_REAP_WAIT);
        if self.reap_with(|pid, pidfd| wait::reap_until(pid, pidfd, deadline)).is_err() {
            self.state = State::Lost;
        }
        if self.state == State::Running {
            wait::reap_later(self.pid);
            self.state = State::Lost;
        }
    }
}

impl Drop for Process {
    /// Kills a child that still runs and reaps it, waiting at most [`DROP_REAP_WAIT`]. Never blocks
    /// longer, never panics. In a process that did not start the child, does nothing.
    fn drop(&mut self) {
        if self.is_ours() && self.reap_with(wait::try_reap).is_ok() && self.state == State::Running {
            let _ = self.kill();
            self.reap_for_drop();
        }
        wait::sweep();
    }
}
