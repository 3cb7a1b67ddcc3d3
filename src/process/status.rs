//! How a child ended ([`ExitStatus`]) and what can go wrong starting, waiting for and signalling
//! one ([`StartError`], [`JoinError`], [`SignalError`]).

use std::fmt;
use std::time::Duration;

use crate::sys::Errno;

/// How a child process ended.
///
/// Unlike Python's `exitcode` (negative for a signal), the two cases are kept apart, and a signal
/// says whether it left a core dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// The child called `_exit` (or `exit`) with this code. A closure that returns normally gives 0;
    /// one that panics gives 101, Rust's code for a panic.
    Code(i32),
    /// The child was ended by a signal.
    Signaled {
        /// The signal number (`libc::SIGKILL`, ...). A plain number, so that real-time signals,
        /// which have no name in [`nix::sys::signal::Signal`], are reported too.
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Decodes a status word from `waitpid`. `None` for a stopped or continued child, which is not
    /// an ending (ringpool never asks for those).
    pub(crate) fn from_wait_status(status: i32) -> Option<ExitStatus> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signaled { signal: libc::WTERMSIG(status), core_dumped: libc::WCOREDUMP(status) })
        } else {
            None
        }
    }

    /// True for exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The exit code, if the child exited rather than being killed by a signal.
    pub fn code(&self) -> Option<i32> {
        match *self {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signaled { .. } => None,
        }
    }

    /// The signal that ended the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        match *self {
            ExitStatus::Code(_) => None,
            ExitStatus::Signaled { signal, .. } => Some(signal),
        }
    }
}

impl fmt::Display for ExitStatus {
    /// `exit code 3`, `killed by signal 9 (SIGKILL)`, `killed by signal 6 (SIGABRT), core dumped`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled { signal, core_dumped } => {
                write!(f, "killed by signal {signal}")?;
                if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                    write!(f, " ({})", sig.as_str())?;
                }
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
        }
    }
}

/// The error number of an I/O error (EIO for one that has none).
pub(crate) fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// [`ProcessBuilder::fork`](super::ProcessBuilder::fork) refused: the process runs other threads,
    /// and a forked child could hang on a lock one of them holds at the moment of the fork.
    #[error(
        "fork refused: this process runs {threads} threads, and a forked child could hang on a lock \
         one of them holds; start a plain function with StartMethod::Spawn (ProcessBuilder::spawn), \
         or use the unsafe ProcessBuilder::fork_unchecked if the child needs no such lock"
    )]
    Threaded {
        /// How many threads were counted in `/proc/self/task`.
        threads: usize,
    },
    /// The function given to [`ProcessBuilder::spawn`](super::ProcessBuilder::spawn) does not lie
    /// in the executable itself (it comes from a shared library), so its address cannot be carried
    /// into a re-executed process.
    #[error("the entry function is not part of the executable (a shared library?): it cannot be spawned")]
    ForeignFunction,
    /// ringpool runs from a shared library rather than from the executable, so a re-executed
    /// process would not reach ringpool before `main`: spawn is not possible; fork is.
    #[error("ringpool is not part of the executable (it runs from a shared library): spawn cannot re-execute it")]
    NotInExecutable,
    /// The argument of a spawned function is larger than the environment can carry.
    #[error("spawn argument of {len} bytes is larger than the {max}-byte limit")]
    ArgTooLarge {
        /// Bytes given.
        len: usize,
        /// The limit ([`MAX_SPAWN_ARG`](super::MAX_SPAWN_ARG)).
        max: usize,
    },
    /// The re-executed child refused to run the function, for instance because the executable on
    /// disk is not the one the parent runs. The child has been reaped.
    #[error("spawned child {pid} refused to run: {reason}")]
    Refused {
        /// The child's pid.
        pid: u32,
        /// Why, in the child's words.
        reason: String,
    },
    /// The child neither signalled that it started nor died within
    /// [`START_TIMEOUT`](super::START_TIMEOUT) (it hangs before running anything of the caller's).
    /// It has been killed.
    #[error("child {pid} did not start within {waited:?} and was killed")]
    StartTimeout {
        /// The child's pid.
        pid: u32,
        /// How long the parent waited.
        waited: Duration,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation (`"fork"`, `"pipe2"`, ...).
        op: &'static str,
        /// The error number.
        source: Errno,
    },
}

/// Why waiting for a process did not give its exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The child panicked. Its exit status is [`ExitStatus::Code`]`(101)`, or SIGABRT where panics
    /// abort; [`Process::exit_status`](super::Process::exit_status) has it.
    #[error("process {name:?} (pid {pid}) panicked{}: {message}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panicked {
        /// The child's pid.
        pid: u32,
        /// The child's name.
        name: String,
        /// The panic message (the payload as text; `Box<dyn Any>` for a payload that is not).
        message: String,
        /// `file:line:column` of the panic, when ringpool's panic hook saw it.
        location: Option<String>,
    },
    /// [`Process::join_timeout`](super::Process::join_timeout): the child still ran at the deadline.
    #[error("process {pid} still runs after {timeout:?}")]
    Timeout {
        /// The child's pid.
        pid: u32,
        /// The timeout given.
        timeout: Duration,
    },
    /// The handle was used in a process that did not start the child (a forked copy of it):
    /// only the parent can wait for a child.
    #[error("process {pid} is a child of {owner}, not of this process")]
    NotOurChild {
        /// The child's pid.
        pid: u32,
        /// The pid of the process that started it.
        owner: u32,
    },
    /// The child was reaped by someone else (a `waitpid(-1)` elsewhere in the program, or SIGCHLD
    /// set to SIG_IGN), so its exit status is lost.
    #[error("process {pid} was reaped elsewhere; its exit status is lost")]
    Lost {
        /// The child's pid.
        pid: u32,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation.
        op: &'static str,
        /// The error number.
        source: Errno,
    },
}

/// Why a signal could not be sent to a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// See [`JoinError::NotOurChild`].
    #[error("process {pid} is a child of {owner}, not of this process")]
    NotOurChild {
        /// The child's pid.
        pid: u32,
        /// The pid of the process that started it.
        owner: u32,
    },
    /// No signal has this number ([`Signal::new`](super::Signal::new)): signals are numbered 1 to
    /// `max` (`SIGRTMAX`).
    #[error("{signal} is not a signal number: signals are numbered 1 to {max} (SIGRTMAX)")]
    Invalid {
        /// The number given.
        signal: i32,
        /// The highest signal number of this system.
        max: i32,
    },
    /// The system call failed.
    #[error("sending signal {signal} failed: {source}")]
    Os {
        /// The signal.
        signal: i32,
        /// The error number.
        source: Errno,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_status_words() {
        assert_eq!(ExitStatus::from_wait_status(0), Some(ExitStatus::Code(0)));
        assert_eq!(ExitStatus::from_wait_status(3 << 8), Some(ExitStatus::Code(3)));
        assert_eq!(ExitStatus::from_wait_status(9), Some(ExitStatus::Signaled { signal: 9, core_dumped: false }));
        assert_eq!(ExitStatus::from_wait_status(6 | 0x80), Some(ExitStatus::Signaled { signal: 6, core_dumped: true }));
        // Stopped by SIGSTOP: not an ending.
        assert_eq!(ExitStatus::from_wait_status((19 << 8) | 0x7f), None);
    }

    #[test]
    fn displays_in_plain_words() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert_eq!(ExitStatus::Signaled { signal: 9, core_dumped: false }.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(
            ExitStatus::Signaled { signal: 6, core_dumped: true }.to_string(),
            "killed by signal 6 (SIGABRT), core dumped"
        );
        assert_eq!(ExitStatus::Signaled { signal: 40, core_dumped: false }.to_string(), "killed by signal 40");
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Code(1).success());
        assert_eq!(ExitStatus::Signaled { signal: 15, core_dumped: false }.signal(), Some(15));
        let e = JoinError::Panicked {
            pid: 7,
            name: "Process-1".into(),
            message: "boom".into(),
            location: Some("src/x.rs:1:2".into()),
        };
        assert_eq!(e.to_string(), "process \"Process-1\" (pid 7) panicked at src/x.rs:1:2: boom");
    }
}
