//! Waiting on several rings and queues at once: [`Select`] (crossbeam's `Select`, iceoryx2's
//! `WaitSet`).
//!
//! How it sleeps: each ring has its own event counts (`not_empty` for receivers, `not_full` for
//! senders), futex words in the ring's own mapping. A waiting `Select` announces itself on every
//! one of them ([`EventCount::prepare`]), looks at every ring once more, and only then sleeps on
//! all the words at once with `futex_waitv` (Linux 5.16+). A sender that publishes into any of the
//! rings sees the announcement and wakes it, exactly as it wakes a blocked `recv`. Nothing spins
//! while the rings are idle; the sleeper wakes every [`LIVENESS_SLICE`] (as a blocked `recv` does)
//! to look for dead peers, so a receiver whose senders all died reports ready (its `try_recv`
//! answers `Disconnected`).
//!
//! Where the kernel has no `futex_waitv` (before 5.16), the sleeper falls back to sleeping on one
//! ring's word at a time in slices of [`FALLBACK_SLICE`], looking at every ring between slices: a
//! wake-up on another ring then waits up to a slice.

use std::sync::Arc;
use std::time::Duration;

use super::control::FORMAT_SLOTS;
use super::core::{Core, Role};
use super::records::room_needed;
use crate::sync::{EventCount, WaitKey};
use crate::sys::atomic::Ordering;
use crate::sys::waitv::{WAITV_MAX, WaitV, WaitvEntry, futex_waitv};
use crate::sys::{Deadline, futex_wait};

/// How long a sleeping selector (or the async waker thread) sleeps before it looks for dead peers:
/// the ring's own liveness slice (ring/wait.rs).
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(50);

/// Without `futex_waitv`: how long one sleep on one ring's word lasts before the others are
/// looked at.
pub(crate) const FALLBACK_SLICE: Duration = Duration::from_millis(1);

/// Which way an operation moves messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Waiting for a message (or for every sender to be gone).
    Recv,
    /// Waiting for room (or for every receiver to be gone).
    Send,
}

impl Core {
    /// The notifying side's solo mark for a waiter in direction `dir` (see [`Announced::add`]).
    pub(crate) fn notifier_sticky(&self, dir: Dir) -> &crate::sys::atomic::AtomicU32 {
        match dir {
            Dir::Recv => &self.ctrl().send.sticky,
            Dir::Send => &self.ctrl().recv.sticky,
        }
    }

    /// The event count a waiter in direction `dir` sleeps on.
    pub(crate) fn event_for(&self, dir: Dir) -> &EventCount {
        match dir {
            Dir::Recv => &self.ctrl().not_empty,
            Dir::Send => &self.ctrl().not_full,
        }
    }

    /// Whether a receive would not find the ring empty now: a message is published at the head, the
    /// head holds something impossible (the receive reports it), or every sender is gone. With
    /// `sweep`, dead members are reaped first (rate-limited, as a blocked receiver does).
    pub(crate) fn recv_ready(&self, sweep: bool) -> bool {
        let head = self.ctrl().head.load(Ordering::Acquire);
        let published = if self.cfg.format == FORMAT_SLOTS {
            super::queue::slot_published(self, head)
        } else {
            self.probe_record(head).map(|r| r.is_some())
        };
        !matches!(published, Ok(false)) || self.peers_gone(Role::Sender, sweep)
    }

    /// Whether a send of `need` units (bytes of record and marker, or slots) would find room now, or
    /// every receiver is gone.
    pub(crate) fn send_ready(&self, need: u64, sweep: bool) -> bool {
        let c = self.ctrl();
        let tail = c.tail.load(Ordering::Acquire);
        let head = c.head.load(Ordering::Acquire);
        let room = tail.checked_add(need).and_then(|end| end.checked_sub(head)).is_some_and(|u| u <= self.cfg.capacity);
        // Indices that make no sense count as ready: the send itself reports the corruption.
        let insane = tail < head || !self.index_ok(tail) || !self.index_ok(head);
        room || insane || self.peers_gone(Role::Receiver, sweep)
    }

    /// The smallest send: one slot, or the record of an empty message.
    pub(crate) fn min_send_need(&self) -> u64 {
        if self.cfg.format == FORMAT_SLOTS { 1 } else { room_needed(0) }
    }

    /// Whether an operation in direction `dir` would not block now (see [`recv_ready`] and
    /// [`send_ready`] with the smallest message).
    ///
    /// [`recv_ready`]: Core::recv_ready
    /// [`send_ready`]: Core::send_ready
    pub(crate) fn ready(&self, dir: Dir, sweep: bool) -> bool {
        match dir {
            Dir::Recv => self.recv_ready(sweep),
            Dir::Send => self.send_ready(self.min_send_need(), sweep),
        }
    }
}

/// Announcements on many event counts, withdrawn together.
pub(crate) struct Announced<'a> {
    keys: Vec<(&'a EventCount, WaitKey)>,
}

impl<'a> Announced<'a> {
    pub(crate) fn new() -> Announced<'a> {
        Announced { keys: Vec::new() }
    }

    /// Announces a waiter on `event` (its condition must be checked after this). `sticky` is the
    /// notifying side's `Side::sticky` word: while a solo handle keeps that side's lock it
    /// publishes and reads the waiter count with no barrier between, so this waiter makes up for
    /// it with an asymmetric fence between announcing itself and its look (as `wait_for` does; the
    /// argument is in `core.rs`, "Solo handles"). Should the kernel refuse the fence, a wake-up may
    /// come late: the sleep is sliced (50 ms at most), never lost for good.
    pub(crate) fn add(&mut self, event: &'a EventCount, sticky: &crate::sys::atomic::AtomicU32) {
        self.keys.push((event, event.prepare()));
        if sticky.load(Ordering::Acquire) != 0 {
            let _ = super::wait::asymmetric_fence();
        }
    }

    /// Sleeps on every announced word, plus `extra` (a word and its expected value), until one is
    /// woken or `deadline`. Without `futex_waitv` (or with more words than it takes), sleeps on one
    /// word, chosen by `round`, for at most [`FALLBACK_SLICE`]. Answers whether the deadline passed.
    pub(crate) fn sleep(
        &self,
        extra: Option<(&crate::sys::atomic::AtomicU32, u32)>,
        deadline: Deadline,
        round: usize,
    ) -> bool {
        let mut entries: Vec<WaitvEntry> = Vec::with_capacity(self.keys.len() + 1);
        if let Some((word, val)) = extra {
            entries.push(WaitvEntry::new(word, val));
        }
        for (event, key) in &self.keys {
            let (word, val) = event.wait_word(*key);
            entries.push(WaitvEntry::new(word, val));
        }
        if entries.len() <= WAITV_MAX {
            // SAFETY: every entry names a word borrowed for 'a (an event count in a mapping kept
            // alive by the handles the caller borrows) or `extra`, borrowed for this call.
            match unsafe { futex_waitv(&entries, deadline) } {
                WaitV::Woken => return false,
                WaitV::TimedOut => return true,
                WaitV::Unsupported => {}
            }
        }
        if entries.is_empty() {
            std::thread::sleep(deadline.remaining().min(FALLBACK_SLICE));
            return deadline.passed();
        }
        let (word, val) = match (extra, round % entries.len()) {
            (Some(x), 0) => x,
            (Some(_), i) => self.keys[i - 1].0.wait_word(self.keys[i - 1].1),
            (None, i) => self.keys[i].0.wait_word(self.keys[i].1),
        };
        let _ = futex_wait(word, val, Some(deadline.min_after(FALLBACK_SLICE)));
        deadline.passed()
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        for (event, key) in self.keys.drain(..) {
            event.cancel(key);
        }
    }
}

mod sealed {
    use super::{Arc, Core, Dir};

    /// A handle's mapping and direction, opaque outside the crate.
    #[derive(Debug)]
    pub struct HandleRef<'a> {
        pub(crate) core: &'a Arc<Core>,
        pub(crate) dir: Dir,
    }

    /// What [`Select`](super::Select) and the async operations need from a handle.
    pub trait Handle {
        fn handle_ref(&self) -> HandleRef<'_>;
    }
}

#[allow(unused_imports, reason = "used by the async operations (feature `tokio`)")]
pub(crate) use sealed::Handle;

/// A receiving handle [`Select::recv`] takes: [`ring::Receiver`](super::Receiver) and
/// [`queue::Receiver`](super::queue::Receiver).
pub trait SelectRecv: sealed::Handle {}

/// A sending handle [`Select::send`] takes: [`ring::Sender`](super::Sender) and
/// [`queue::Sender`](super::queue::Sender).
pub trait SelectSend: sealed::Handle {}

macro_rules! handle {
    ($dir:ident, $marker:ident, $($t:tt)*) => {
        impl $($t)* {
            fn handle_ref(&self) -> sealed::HandleRef<'_> {
                sealed::HandleRef { core: self.core_arc(), dir: Dir::$dir }
            }
        }
    };
}
handle!(Recv, SelectRecv, sealed::Handle for super::Receiver);
handle!(Recv, SelectRecv, <T> sealed::Handle for super::queue::Receiver<T>);
handle!(Send, SelectSend, sealed::Handle for super::Sender);
handle!(Send, SelectSend, <T> sealed::Handle for super::queue::Sender<T>);
impl SelectRecv for super::Receiver {}
impl<T> SelectRecv for super::queue::Receiver<T> {}
impl SelectSend for super::Sender {}
impl<T> SelectSend for super::queue::Sender<T> {}

/// No operation of a [`Select`] was ready ([`Select::try_ready`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no operation of the select is ready")]
pub struct TryReadyError;

/// The timeout of [`Select::ready_timeout`] passed with no operation ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out waiting for an operation of the select to become ready")]
pub struct ReadyTimeoutError;

struct Entry<'a> {
    core: &'a Core,
    dir: Dir,
}

/// Waits until one of several receivers has a message, or one of several senders has room; rings
/// and queues, of any payload types, mixed.
///
/// Add handles with [`recv`](Select::recv) and [`send`](Select::send), each answering its index;
/// [`ready`](Select::ready), [`ready_timeout`](Select::ready_timeout) and
/// [`try_ready`](Select::try_ready) answer the index of one handle whose operation would not block
/// now. Then do the operation with the `try_` form (`try_recv`, `try_send`): as with crossbeam's
/// `Select::ready`, another receiver of the same ring may have taken the message meanwhile, so the
/// `try_` form may still answer `Empty` (loop on it). A receiver whose senders are all gone, or a
/// sender whose receivers are, counts as ready: its operation answers `Disconnected`.
///
/// When several handles are ready, the one with the lowest index is answered first, and handles
/// are looked at starting after the last one answered, so one busy ring does not starve the
/// others.
///
/// ```
/// use ringpool::{Queue, Ring, ring::Select};
/// use std::time::Duration;
///
/// let ring = Ring::builder().capacity(4096).anonymous()?;
/// let queue = Queue::<u64>::builder().slots(16).anonymous()?;
/// let (ring_rx, queue_rx) = (ring.receiver()?, queue.receiver()?);
/// let queue_tx = queue.sender()?;
/// let _ring_tx = ring.sender()?;
///
/// let mut sel = Select::new();
/// let r = sel.recv(&ring_rx);
/// let q = sel.recv(&queue_rx);
/// assert!(sel.try_ready().is_err());
///
/// queue_tx.send(7)?;
/// let i = sel.ready_timeout(Duration::from_secs(5))?;
/// assert_eq!(i, q);
/// assert_eq!(queue_rx.try_recv()?, 7);
/// # let _ = r;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Select<'a> {
    entries: Vec<Entry<'a>>,
    /// Where the next look starts (one past the last index answered).
    next: std::cell::Cell<usize>,
}

impl std::fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Select").field("handles", &self.entries.len()).finish()
    }
}

impl Default for Select<'_> {
    fn default() -> Self {
        Select::new()
    }
}

impl<'a> Select<'a> {
    /// An empty select.
    pub fn new() -> Select<'a> {
        Select { entries: Vec::new(), next: std::cell::Cell::new(0) }
    }

    /// Adds a receiver (of a ring or a queue); answers its index.
    pub fn recv(&mut self, rx: &'a impl SelectRecv) -> usize {
        self.push(rx)
    }

    /// Adds a sender (of a ring or a queue); answers its index. It is ready when there is room for
    /// the smallest message (one slot; an empty byte message): a longer message may still not fit.
    pub fn send(&mut self, tx: &'a impl SelectSend) -> usize {
        self.push(tx)
    }

    fn push(&mut self, h: &'a impl sealed::Handle) -> usize {
        let h = h.handle_ref();
        self.entries.push(Entry { core: h.core, dir: h.dir });
        self.entries.len() - 1
    }

    /// How many handles were added.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no handle was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index of a handle whose operation would not block now, if any. Does not wait.
    pub fn try_ready(&self) -> Result<usize, TryReadyError> {
        self.look(false).ok_or(TryReadyError)
    }

    /// Waits until a handle's operation would not block; answers its index. With no handle, waits
    /// for ever.
    pub fn ready(&self) -> usize {
        loop {
            if let Some(i) = self.wait(Deadline::after(Duration::from_secs(3600))) {
                return i;
            }
        }
    }

    /// [`ready`](Self::ready), waiting at most `timeout` (never less).
    pub fn ready_timeout(&self, timeout: Duration) -> Result<usize, ReadyTimeoutError> {
        self.wait(Deadline::after(timeout)).ok_or(ReadyTimeoutError)
    }

    /// Looks at every handle once, starting after the last one answered.
    fn look(&self, sweep: bool) -> Option<usize> {
        let n = self.entries.len();
        let start = self.next.get();
        for k in 0..n {
            let i = (start + k) % n;
            let e = &self.entries[i];
            if e.core.ready(e.dir, sweep) {
                self.next.set(i + 1);
                return Some(i);
            }
        }
        None
    }

    fn wait(&self, deadline: Deadline) -> Option<usize> {
        let mut round = 0usize;
        let mut next_sweep = Deadline::after(LIVENESS_SLICE);
        loop {
            if let Some(i) = self.look(false) {
                return Some(i);
            }
            let mut announced = Announced::new();
            for e in &self.entries {
                announced.add(e.core.event_for(e.dir), e.core.notifier_sticky(e.dir));
            }
            // Announced everywhere: a change from now on wakes us. Look once more before sleeping.
            if let Some(i) = self.look(false) {
                return Some(i);
            }
            let sweep_due = next_sweep.passed();
            if sweep_due {
                next_sweep = Deadline::after(LIVENESS_SLICE);
                if let Some(i) = self.look(true) {
                    return Some(i);
                }
            }
            if deadline.passed() {
                return None;
            }
            announced.sleep(None, deadline.min(next_sweep), round);
            round = round.wrapping_add(1);
            drop(announced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ring;
    use crate::queue::Queue;

    /// Without `futex_waitv` the select sleeps on one ring's word at a time in short slices: a
    /// message into any ring, the one it does not sleep on included, is still seen.
    #[test]
    fn the_fallback_without_futex_waitv_still_sees_every_ring() {
        crate::sys::waitv::pretend_unsupported(true);
        let rings: Vec<Ring> = (0..3).map(|_| Ring::builder().capacity(4096).anonymous().unwrap()).collect();
        let q = Queue::<u32>::builder().slots(4).anonymous().unwrap();
        let rxs: Vec<_> = rings.iter().map(|r| r.receiver().unwrap()).collect();
        let txs: Vec<_> = rings.iter().map(|r| r.sender().unwrap()).collect();
        let (qtx, qrx) = (q.sender().unwrap(), q.receiver().unwrap());
        let mut sel = Select::new();
        for rx in &rxs {
            sel.recv(rx);
        }
        let qi = sel.recv(&qrx);
        std::thread::scope(|s| {
            s.spawn(|| {
                for (k, tx) in txs.iter().enumerate().rev() {
                    std::thread::sleep(Duration::from_millis(10));
                    tx.send([k as u8]).unwrap();
                }
                std::thread::sleep(Duration::from_millis(10));
                qtx.send(7).unwrap();
            });
            let mut seen = Vec::new();
            while seen.len() < 4 {
                let i = sel.ready_timeout(Duration::from_secs(10)).expect("the fallback missed a message");
                if i == qi {
                    assert_eq!(qrx.try_recv().unwrap(), 7);
                } else {
                    assert_eq!(rxs[i].try_recv().unwrap(), [i as u8]);
                }
                seen.push(i);
            }
            assert_eq!(seen, [2, 1, 0, qi]);
        });
        crate::sys::waitv::pretend_unsupported(false);
    }
}
