//! [`Signal`]: a signal number checked once, when it is made, so that sending it cannot fail for a
//! bad number.

use std::fmt;

use super::status::SignalError;

/// A signal to send to a child ([`Process::send_signal`](super::Process::send_signal)).
///
/// The common ones are constants (`Signal::TERM`, `Signal::USR1`, ...); any other, a real-time
/// signal say, comes from its number through [`Signal::new`] (or `Signal::try_from(n)`), which
/// checks it: 1 to `SIGRTMAX` (64 on Linux). The crate's own type rather than `nix`'s, so that
/// the public API does not change with nix's versions, and so that real-time signals, which have
/// no name in nix's enum, fit too.
///
/// ```
/// use ringpool::process::Signal;
///
/// assert_eq!(Signal::TERM.number(), libc::SIGTERM);
/// assert_eq!(Signal::new(libc::SIGUSR1).unwrap(), Signal::USR1);
/// assert!(Signal::new(0).is_err() && Signal::new(1000).is_err());
/// assert_eq!(Signal::KILL.to_string(), "SIGKILL (9)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

impl Signal {
    /// Hang-up (`SIGHUP`).
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// Interrupt, as from Ctrl-C (`SIGINT`).
    pub const INT: Signal = Signal(libc::SIGINT);
    /// Quit, with a core dump (`SIGQUIT`).
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// Abort (`SIGABRT`).
    pub const ABRT: Signal = Signal(libc::SIGABRT);
    /// Kill: ends the process at once; cannot be caught (`SIGKILL`).
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// User-defined signal 1 (`SIGUSR1`).
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// User-defined signal 2 (`SIGUSR2`).
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// Broken pipe (`SIGPIPE`).
    pub const PIPE: Signal = Signal(libc::SIGPIPE);
    /// Alarm clock (`SIGALRM`).
    pub const ALRM: Signal = Signal(libc::SIGALRM);
    /// Terminate: the polite request to end (`SIGTERM`).
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// Continue a stopped process (`SIGCONT`).
    pub const CONT: Signal = Signal(libc::SIGCONT);
    /// Stop: cannot be caught (`SIGSTOP`).
    pub const STOP: Signal = Signal(libc::SIGSTOP);
    /// Stop from a terminal, can be caught (`SIGTSTP`).
    pub const TSTP: Signal = Signal(libc::SIGTSTP);
    /// Window size changed (`SIGWINCH`).
    pub const WINCH: Signal = Signal(libc::SIGWINCH);

    /// The signal numbered `number`, if there is one: 1 to `SIGRTMAX`. Otherwise
    /// [`SignalError::Invalid`], naming the number and the valid range.
    pub fn new(number: i32) -> Result<Signal, SignalError> {
        let max = max_signal();
        if (1..=max).contains(&number) { Ok(Signal(number)) } else { Err(SignalError::Invalid { signal: number, max }) }
    }

    /// The signal's number (`libc::SIGTERM`, ...).
    pub const fn number(self) -> i32 {
        self.0
    }

    /// The signal's name (`"SIGTERM"`), or `None` for one without a name here (real-time signals).
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            libc::SIGHUP => "SIGHUP",
            libc::SIGINT => "SIGINT",
            libc::SIGQUIT => "SIGQUIT",
            libc::SIGILL => "SIGILL",
            libc::SIGTRAP => "SIGTRAP",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGFPE => "SIGFPE",
            libc::SIGKILL => "SIGKILL",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGUSR2 => "SIGUSR2",
            libc::SIGPIPE => "SIGPIPE",
            libc::SIGALRM => "SIGALRM",
            libc::SIGTERM => "SIGTERM",
            libc::SIGCHLD => "SIGCHLD",
            libc::SIGCONT => "SIGCONT",
            libc::SIGSTOP => "SIGSTOP",
            libc::SIGTSTP => "SIGTSTP",
            libc::SIGTTIN => "SIGTTIN",
            libc::SIGTTOU => "SIGTTOU",
            libc::SIGURG => "SIGURG",
            libc::SIGXCPU => "SIGXCPU",
            libc::SIGXFSZ => "SIGXFSZ",
            libc::SIGVTALRM => "SIGVTALRM",
            libc::SIGPROF => "SIGPROF",
            libc::SIGWINCH => "SIGWINCH",
            libc::SIGIO => "SIGIO",
            libc::SIGPWR => "SIGPWR",
            libc::SIGSYS => "SIGSYS",
            _ => return None,
        })
    }
}

/// The highest signal number of this system (`SIGRTMAX`).
fn max_signal() -> i32 {
    libc::SIGRTMAX()
}

impl TryFrom<i32> for Signal {
    type Error = SignalError;

    fn try_from(number: i32) -> Result<Signal, SignalError> {
        Signal::new(number)
    }
}

impl From<Signal> for i32 {
    fn from(signal: Signal) -> i32 {
        signal.0
    }
}

impl fmt::Display for Signal {
    /// `SIGTERM (15)`, or `signal 40` for one without a name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Signal({name})"),
            None => write!(f, "Signal({})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked() {
        assert_eq!(Signal::new(libc::SIGTERM), Ok(Signal::TERM));
        assert_eq!(Signal::new(libc::SIGRTMAX()).map(Signal::number), Ok(libc::SIGRTMAX()));
        for bad in [0, -1, libc::SIGRTMAX() + 1, i32::MAX, i32::MIN] {
            assert_eq!(Signal::new(bad), Err(SignalError::Invalid { signal: bad, max: libc::SIGRTMAX() }));
        }
        let e = Signal::new(99).unwrap_err().to_string();
        assert!(e.contains("99") && e.contains(&libc::SIGRTMAX().to_string()), "{e}");
        assert_eq!(Signal::new(libc::SIGRTMIN()).unwrap().to_string(), format!("signal {}", libc::SIGRTMIN()));
        assert_eq!(format!("{:?}", Signal::USR2), "Signal(SIGUSR2)");
    }
}
