//! Layer 3: the lock-protected ring, the heart of the crate.
//!
//! - [`Ring`]: byte messages of any length up to the ring's largest (`capacity - 16`).
//! - [`Queue`](crate::Queue) (in [`queue`]): typed, fixed-size slots of a [`Pod`](bytemuck::Pod) type.
//!
//! Both live in a [`Segment`](crate::Segment) (named, anonymous or file-backed), serve many
//! senders and many receivers in many processes, and offer every operation in three forms
//! (blocking, `try_`, `_timeout`), in batches (many messages under one lock hold), and in place
//! (reserve, write, commit; read, release).
//!
//! How it works, in short (details in `core.rs`, `records.rs` and `SAFETY.md`):
//! - one robust futex lock per side: senders exclude senders, receivers exclude receivers, and a
//!   sender never waits for a receiver's lock or the other way round;
//! - a record's header is its commit word, published last with Release; a receiver polls the header
//!   at the head, so a message crosses between cores in one cache line transfer;
//! - waiting spins for a bounded time ([`SpinPolicy`](crate::sync::SpinPolicy)), then parks on an
//!   [`EventCount`](crate::sync::EventCount) (futex); notifying costs a load unless someone sleeps;
//! - each side's members are counted per process in a member table; a process that dies is found
//!   by its pid and start time and its handles are dropped for it, so receivers see
//!   `Disconnected` when every sender is gone, dead or alive;
//! - a lock whose owner died is taken over, the ring repaired (a sender's half-published records
//!   rolled forward), and every index and length read from shared memory is checked: garbage
//!   gives [`Broken::Corrupted`], never an out-of-bounds access.

#[cfg(feature = "archive")]
pub mod archive;
#[cfg(feature = "tokio")]
mod async_io;
mod bytes;
mod control;
pub(crate) mod core;
mod error;
mod fork;
pub mod inspect;
pub mod iter;
mod membership;
pub mod queue;
mod records;
mod select;
mod slice;
mod wait;

use crate::sys::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use self::core::{Core, Role};
pub(crate) use self::wait::Wait;
#[cfg(feature = "tokio")]
pub(crate) use async_io::AsyncWait;
#[cfg(feature = "tokio")]
pub use async_io::{AsyncRecv, AsyncSend, RecvFuture, SendFuture, SendManyFuture};
pub use bytes::{ReadGuard, Receiver, Ring, RingBuilder, Sender, SoloReceiver, SoloSender, WriteGuard};
pub(crate) use bytes::{init as init_config, ring_id};
pub(crate) use control::{Config, FORMAT_BYTES, FORMAT_SLOTS, MAX_MEMBERS, data_offset};
pub(crate) use error::Fail;
#[allow(deprecated)]
pub use error::JoinError;
pub use error::{
    Broken, JoinRingError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use iter::ring_iter::{IntoIter, Iter, TryIter};
pub(crate) use records::prefetch_write;
pub use select::{ReadyTimeoutError, Select, SelectRecv, SelectSend, TryReadyError};
pub use slice::RecvIntoSliceError;

/// Counters of a ring since its creation (a snapshot; not exact after a member died mid-update).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Times a sender parked in the kernel waiting for room.
    pub send_parks: u64,
    /// Times a receiver parked in the kernel waiting for a message.
    pub recv_parks: u64,
    /// Times a sender waiting for room yielded its CPU to a receiver that shares it (adaptive
    /// waiting: instead of spinning through the time slice the receiver needs).
    pub send_yields: u64,
    /// Times a receiver waiting for a message yielded its CPU to a sender that shares it.
    pub recv_yields: u64,
    /// Times the send lock was taken over from a dead owner.
    pub send_recoveries: u64,
    /// Times the receive lock was taken over from a dead owner.
    pub recv_recoveries: u64,
    /// Sender handles held by member processes now.
    pub senders: u32,
    /// Receiver handles held by member processes now.
    pub receivers: u32,
}

impl Stats {
    pub(crate) fn of(core: &Core) -> Stats {
        let (s, r) = core.counters();
        Stats {
            sent: s.messages.load(Ordering::Relaxed),
            received: r.messages.load(Ordering::Relaxed),
            bytes_sent: s.bytes.load(Ordering::Relaxed),
            bytes_received: r.bytes.load(Ordering::Relaxed),
            send_parks: s.parks.load(Ordering::Relaxed),
            recv_parks: r.parks.load(Ordering::Relaxed),
            send_yields: s.yields.load(Ordering::Relaxed),
            recv_yields: r.yields.load(Ordering::Relaxed),
            send_recoveries: s.recoveries.load(Ordering::Relaxed),
            recv_recoveries: r.recoveries.load(Ordering::Relaxed),
            senders: core.live_count(Role::Sender),
            receivers: core.live_count(Role::Receiver),
        }
    }
}

static PAUSE_NS: AtomicU64 = AtomicU64::new(0);

/// Test support: makes every critical section of this process sleep for `pause` between writing
/// (or reading) a message and publishing (or releasing) it, so a test can kill a process while it
/// certainly holds a lock. `None` turns it off. Costs one relaxed load per operation when off.
#[doc(hidden)]
pub fn set_pause_in_critical_section(pause: Option<Duration>) {
    let ns = pause.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
    PAUSE_NS.store(ns, Ordering::Relaxed);
}

/// Test support: how many `fork()`s of this process (plain ones and ringpool's alike) waited in
/// the parent for the child to register the ring handles it inherited, and how many of those waits
/// ran out (the child was not through its at-fork handler in time, or the fork failed). A fork in a
/// process that holds no ring handle, or whose child forgets them, does not wait.
#[doc(hidden)]
pub fn debug_fork_waits() -> (u64, u64) {
    fork::waits()
}

/// A receive hook: see [`set_receive_hook`].
type ReceiveHook = fn(&[u8]);

/// The hook set by [`set_receive_hook`], and whether there is one (one relaxed load when not).
static RECEIVE_HOOK: std::sync::Mutex<Option<ReceiveHook>> = std::sync::Mutex::new(None);
static HOOKED: AtomicU64 = AtomicU64::new(0);

/// Test support: makes every receive of this process call `hook` with the bytes of each message it
/// takes (a byte-ring message, or a slot's value), under the receive lock, right before the head
/// moves past it (and before the pause of [`set_pause_in_critical_section`]). A process killed at
/// any moment has then reported exactly the messages it consumed (and possibly some that stay in
/// the ring for the next receiver): what the SIGKILL storm counts as "in hand". `None` turns it
/// off. Costs one relaxed load per receive when off.
#[doc(hidden)]
pub fn set_receive_hook(hook: Option<ReceiveHook>) {
    *RECEIVE_HOOK.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
    HOOKED.store(u64::from(hook.is_some()), Ordering::Relaxed);
}

/// The receive hook, if one is set (see [`set_receive_hook`]).
#[inline(always)]
pub(crate) fn receive_hook() -> Option<ReceiveHook> {
    if HOOKED.load(Ordering::Relaxed) == 0 { None } else { receive_hook_slow() }
}

#[cold]
fn receive_hook_slow() -> Option<ReceiveHook> {
    *RECEIVE_HOOK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Calls the receive hook, if any, on one taken message.
#[inline(always)]
pub(crate) fn debug_taken(msg: &[u8]) {
    if let Some(hook) = receive_hook() {
        hook(msg);
    }
}

#[inline(always)]
pub(crate) fn debug_pause() {
    let ns = PAUSE_NS.load(Ordering::Relaxed);
    if ns != 0 {
        std::thread::sleep(Duration::from_nanos(ns));
    }
}
