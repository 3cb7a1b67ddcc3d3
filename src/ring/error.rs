//! Error types of the ring and the queue: one per operation form, and every failed send hands the
//! message back.

use std::fmt;

/// Why a ring cannot be trusted any more. Reported instead of reading out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Broken {
    /// An index, length or stamp read from shared memory is impossible: the memory was
    /// overwritten by something that is not ringpool.
    #[error("ring is corrupted: {0}")]
    Corrupted(&'static str),
    /// A process died holding one of the ring's locks and its successor could not repair the state.
    #[error("ring is poisoned: a lock owner died and the state could not be repaired")]
    Poisoned,
}

/// Why a handle (a sender or a receiver of a ring or a queue) could not join the ring as a member.
///
/// Named apart from [`process::JoinError`](crate::process::JoinError), which is about waiting for
/// a child process to end (`Process::join`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinRingError {
    /// Every entry of the ring's member table is taken by a live process.
    #[error(
        "the ring's member table is full ({0} processes hold handles): create the ring with a larger `max_members`"
    )]
    TooManyMembers(usize),
}

/// The old name of [`JoinRingError`], which clashed with
/// [`process::JoinError`](crate::process::JoinError).
#[deprecated(
    since = "0.2.0",
    note = "renamed `ring::JoinRingError` (`process::JoinError` is about waiting for a child)"
)]
pub type JoinError = JoinRingError;

macro_rules! send_errors {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $var:ident => $msg:literal,)* } $($lock:ident)?) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum $name<M> {
            $($(#[$vdoc])* $var(M),)*
            $(
            /// The timeout passed while another live handle held the send lock (one writing in
            /// place through a [`WriteGuard`](crate::ring::WriteGuard) or a queue's slot guard, or
            /// a stuck sender): the wait never got as far as looking for room. `pid` is the
            /// holder's process when it could be told (it may have let go since).
            $lock {
                /// The message, not sent.
                msg: M,
                /// The process that held the send lock, if known.
                pid: Option<u32>,
            },
            )?
            /// The message is longer than the ring's largest message
            /// ([`Ring::max_message_len`](crate::ring::Ring::max_message_len)): it can never be
            /// sent through this ring. A ring of capacity `len + 16` or more takes it.
            TooLarge {
                /// The message (for a batch, how many messages were sent before it).
                msg: M,
                /// The message's length in bytes.
                len: usize,
                /// The largest message the ring takes (`capacity - 16`).
                max: usize,
            },
            /// The ring is corrupted or poisoned.
            Broken(M, Broken),
        }

        impl<M> $name<M> {
            /// The message that was not sent.
            pub fn into_inner(self) -> M {
                match self {
                    $($name::$var(m))|* | $name::TooLarge { msg: m, .. } | $name::Broken(m, _) => m,
                    $($name::$lock { msg, .. } => msg,)?
                }
            }
        }

        impl<M> fmt::Debug for $name<M> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var(_) => f.write_str(concat!(stringify!($name), "::", stringify!($var), "(..)")),)*
                    $($name::$lock { pid, .. } => {
                        write!(f, concat!(stringify!($name), "::", stringify!($lock), " {{ pid: {:?}, .. }}"), pid)
                    })?
                    $name::TooLarge { len, max, .. } => write!(
                        f,
                        concat!(stringify!($name), "::TooLarge {{ len: {}, max: {}, .. }}"),
                        len, max
                    ),
                    $name::Broken(_, b) => write!(f, concat!(stringify!($name), "::Broken(.., {:?})"), b),
                }
            }
        }

        impl<M> fmt::Display for $name<M> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var(_) => f.write_str($msg),)*
                    $($name::$lock { pid, .. } => lock_timeout_text(f, "send", *pid),)?
                    $name::TooLarge { len, max, .. } => too_large_text(f, *len, *max),
                    $name::Broken(_, b) => write!(f, "{b}"),
                }
            }
        }

        impl<M> std::error::Error for $name<M> {}
    };
}

send_errors! {
    /// Why a blocking send failed. The message comes back inside.
    SendError {
        /// Every receiver is gone (dropped, closed or dead).
        Disconnected => "every receiver is gone",
    }
}

send_errors! {
    /// Why a `try_send` failed. The message comes back inside.
    TrySendError {
        /// The ring has no room right now.
        Full => "the ring is full",
        /// Every receiver is gone (dropped, closed or dead).
        Disconnected => "every receiver is gone",
    }
}

send_errors! {
    /// Why a `send_timeout` failed. The message comes back inside.
    SendTimeoutError {
        /// The timeout passed before there was room (the send lock was free or came free in
        /// time; see `LockTimeout` for the other case).
        Timeout => "timed out waiting for room in the ring",
        /// Every receiver is gone (dropped, closed or dead).
        Disconnected => "every receiver is gone",
    }
    LockTimeout
}

impl<M> SendTimeoutError<M> {
    /// Whether the timeout passed, waiting for room ([`Timeout`](Self::Timeout)) or for the send
    /// lock ([`LockTimeout`](Self::LockTimeout)): the cases a caller may retry.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_) | SendTimeoutError::LockTimeout { .. })
    }
}

/// The wording of a message too large for the ring, with what to do (the typed ring's error says
/// the same of an archive).
fn too_large_text(f: &mut fmt::Formatter<'_>, len: usize, max: usize) -> fmt::Result {
    write!(
        f,
        "the message is {len} bytes, more than the ring's largest message ({max} bytes): make the ring \
         larger (a capacity of at least {} bytes) or the message smaller",
        len.saturating_add(16)
    )
}

/// The wording of a timeout spent waiting for a side's lock held by a live peer.
pub(crate) fn lock_timeout_text(f: &mut fmt::Formatter<'_>, side: &str, pid: Option<u32>) -> fmt::Result {
    let verb = if side == "send" { "writing" } else { "reading" };
    match pid {
        Some(pid) => write!(f, "timed out waiting for the {side} lock, held by pid {pid}"),
        None => write!(f, "timed out waiting for the {side} lock, held by another handle"),
    }?;
    write!(
        f,
        " (a live handle {verb} in place through a guard, or stuck): it is not a wait for {}",
        if side == "send" { "room" } else { "a message" }
    )
}

/// [`lock_timeout_text`] as a string, for the `thiserror` types.
fn lock_timeout_string(side: &str, pid: &Option<u32>) -> String {
    struct T<'a>(&'a str, Option<u32>);
    impl fmt::Display for T<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            lock_timeout_text(f, self.0, self.1)
        }
    }
    T(side, *pid).to_string()
}

/// Why a blocking receive failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The ring is empty and every sender is gone (dropped, closed or dead).
    #[error("the ring is empty and every sender is gone")]
    Disconnected,
    /// The ring is corrupted or poisoned.
    #[error(transparent)]
    Broken(#[from] Broken),
}

/// Why a `try_recv` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing to receive right now (or another receiver holds the ring's receive side in place).
    #[error("the ring is empty")]
    Empty,
    /// The ring is empty and every sender is gone.
    #[error("the ring is empty and every sender is gone")]
    Disconnected,
    /// The ring is corrupted or poisoned.
    #[error(transparent)]
    Broken(#[from] Broken),
}

/// Why a `recv_timeout` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// The timeout passed with nothing to receive (the receive lock was free or came free in
    /// time; see `LockTimeout` for the other case).
    #[error("timed out waiting for a message")]
    Timeout,
    /// The ring is empty and every sender is gone.
    #[error("the ring is empty and every sender is gone")]
    Disconnected,
    /// The ring is corrupted or poisoned.
    #[error(transparent)]
    Broken(#[from] Broken),
    /// The timeout passed while another live handle held the receive lock (one reading in place
    /// through a [`ReadGuard`](crate::ring::ReadGuard) or a queue's slot guard, or a stuck
    /// receiver): the wait never got as far as looking for a message. `pid` is the holder's
    /// process when it could be told (it may have let go since).
    #[error("{}", lock_timeout_string("receive", .pid))]
    LockTimeout {
        /// The process that held the receive lock, if known.
        pid: Option<u32>,
    },
}

impl RecvTimeoutError {
    /// Whether the timeout passed, waiting for a message ([`Timeout`](Self::Timeout)) or for the
    /// receive lock ([`LockTimeout`](Self::LockTimeout)): the cases a caller may retry.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout | RecvTimeoutError::LockTimeout { .. })
    }
}

/// Internal outcome of one attempt, mapped to the public types by each form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fail {
    /// Try form: nothing to receive / no room.
    WouldBlock,
    /// Waiting for room or data.
    Timeout,
    /// Waiting for a side's lock held by a live peer (its pid, if known).
    LockTimeout(Option<u32>),
    Disconnected,
    /// A message of `len` bytes, the ring taking at most `max`.
    TooLarge {
        len: usize,
        max: usize,
    },
    Broken(Broken),
}

impl From<Broken> for Fail {
    fn from(b: Broken) -> Fail {
        Fail::Broken(b)
    }
}

impl Fail {
    pub(crate) fn send<M>(self, m: M) -> SendError<M> {
        match self {
            Fail::TooLarge { len, max } => SendError::TooLarge { msg: m, len, max },
            Fail::Broken(b) => SendError::Broken(m, b),
            // A blocking send only ends on the above or on disconnection.
            Fail::Disconnected | Fail::WouldBlock | Fail::Timeout | Fail::LockTimeout(_) => SendError::Disconnected(m),
        }
    }

    pub(crate) fn try_send<M>(self, m: M) -> TrySendError<M> {
        match self {
            Fail::WouldBlock | Fail::Timeout | Fail::LockTimeout(_) => TrySendError::Full(m),
            Fail::Disconnected => TrySendError::Disconnected(m),
            Fail::TooLarge { len, max } => TrySendError::TooLarge { msg: m, len, max },
            Fail::Broken(b) => TrySendError::Broken(m, b),
        }
    }

    pub(crate) fn send_timeout<M>(self, m: M) -> SendTimeoutError<M> {
        match self {
            Fail::WouldBlock | Fail::Timeout => SendTimeoutError::Timeout(m),
            Fail::LockTimeout(pid) => SendTimeoutError::LockTimeout { msg: m, pid },
            Fail::Disconnected => SendTimeoutError::Disconnected(m),
            Fail::TooLarge { len, max } => SendTimeoutError::TooLarge { msg: m, len, max },
            Fail::Broken(b) => SendTimeoutError::Broken(m, b),
        }
    }

    pub(crate) fn recv(self) -> RecvError {
        match self {
            Fail::Broken(b) => RecvError::Broken(b),
            _ => RecvError::Disconnected,
        }
    }

    pub(crate) fn try_recv(self) -> TryRecvError {
        match self {
            Fail::Disconnected => TryRecvError::Disconnected,
            Fail::Broken(b) => TryRecvError::Broken(b),
            _ => TryRecvError::Empty,
        }
    }

    pub(crate) fn recv_timeout(self) -> RecvTimeoutError {
        match self {
            Fail::Disconnected => RecvTimeoutError::Disconnected,
            Fail::Broken(b) => RecvTimeoutError::Broken(b),
            Fail::LockTimeout(pid) => RecvTimeoutError::LockTimeout { pid },
            _ => RecvTimeoutError::Timeout,
        }
    }
}
