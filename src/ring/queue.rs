//! [`Queue<T>`]: a ring of fixed-size slots, each holding one `T: Pod`, read and written in place.
//!
//! The same engine as [`Ring`](crate::Ring) (two robust locks, event counts, member table, see
//! [`crate::ring`]), with fixed slots instead of variable records. Slot `i` holds the value and,
//! after it, a stamp word: `i + 1` once the value of index `i` is published (Release), so a
//! receiver polls one word per slot and never mistakes an older lap's value for a new one. A stamp
//! that is neither this lap's, the previous lap's, nor zero is reported as corruption.

use crate::sys::atomic::{AtomicU64, Ordering};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytemuck::Pod;

use super::core::{Sticky, bump};
use super::wait::SpinCell;
use super::{
    Config, Core, FORMAT_SLOTS, Fail, JoinRingError, MAX_MEMBERS, RecvError, RecvTimeoutError, Role, SendError,
    SendTimeoutError, Stats, TryRecvError, TrySendError, Wait, data_offset, debug_pause,
};
use crate::segment::{Fingerprint, OpenMode, Segment, SegmentBuilder, SegmentError, SegmentKind};
use crate::sync::{RobustMutexGuard, SpinPolicy};

/// Most slots one batch moves under one lock hold.
const BATCH_SLOTS: usize = 1024;

/// Where the stamp sits in a slot of `T`, and the slot stride.
///
/// Slots of values of 64 bytes or more start on a cache line of their own (the stride is a multiple
/// of 64): with a stride of, say, 1032 bytes, the line that holds slot `i`'s stamp, which the
/// receiver polls, also holds the start of slot `i + 1`, which the sender writes next, and the line
/// crosses between the cores twice per value.
fn geometry<T>() -> (u64, u64) {
    let size = std::mem::size_of::<T>() as u64;
    let align = (std::mem::align_of::<T>() as u64).max(if size >= 64 { 64 } else { 8 });
    let stamp_at = size.div_ceil(8) * 8;
    let stride = (stamp_at + 8).div_ceil(align) * align;
    (stamp_at, stride)
}

/// How to create or open a [`Queue`].
#[derive(Debug)]
pub struct QueueBuilder<T> {
    slots: usize,
    spin: SpinPolicy,
    max_members: usize,
    permissions: u32,
    open_timeout: Duration,
    allow_foreign_owner: bool,
    tag: Option<String>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for QueueBuilder<T> {
    fn clone(&self) -> Self {
        QueueBuilder { tag: self.tag.clone(), _t: PhantomData, ..*self }
    }
}

impl<T: Pod> Default for QueueBuilder<T> {
    fn default() -> Self {
        QueueBuilder {
            slots: 1024,
            spin: SpinPolicy::default(),
            max_members: MAX_MEMBERS,
            permissions: 0o600,
            open_timeout: Duration::from_secs(2),
            allow_foreign_owner: false,
            tag: None,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> QueueBuilder<T> {
    /// Number of slots, rounded up to a power of two. Default 1024.
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = n;
        self
    }

    /// How long this process's handles spin before parking.
    pub fn spin(mut self, spin: SpinPolicy) -> Self {
        self.spin = spin;
        self
    }

    /// How many processes may hold handles at once (at most 256, the default). Creation only.
    pub fn max_members(mut self, n: usize) -> Self {
        self.max_members = n;
        self
    }

    /// Permission bits of a created named queue. Default `0o600`.
    pub fn permissions(mut self, mode: u32) -> Self {
        self.permissions = mode;
        self
    }

    /// How long an opener waits for a creator that is still initializing. Default 2 s.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Opens a named or file segment owned by another user (refused by default with
    /// [`SegmentError::ForeignOwner`]: whoever creates a name first controls what is in it).
    /// See [`SegmentBuilder::allow_foreign_owner`].
    pub fn allow_foreign_owner(mut self) -> Self {
        self.allow_foreign_owner = true;
        self
    }

    /// Names the payload type explicitly in the segment's fingerprint, instead of
    /// `std::any::type_name::<T>()`: for programs built separately (type names are only stable
    /// within one build) that must agree on the type.
    pub fn type_tag(mut self, tag: &str) -> Self {
        self.tag = Some(tag.to_owned());
        self
    }

    /// Creates the named queue `/dev/shm/<name>`; fails if the name is taken.
    pub fn create(&self, name: &str) -> Result<Queue<T>, SegmentError> {
        self.named(name, OpenMode::CreateNew)
    }

    /// Opens the named queue; fails if there is none, or if it holds another type.
    pub fn open(&self, name: &str) -> Result<Queue<T>, SegmentError> {
        self.named(name, OpenMode::OpenExisting)
    }

    /// Opens the named queue, creating it if needed.
    pub fn open_or_create(&self, name: &str) -> Result<Queue<T>, SegmentError> {
        self.named(name, OpenMode::OpenOrCreate)
    }

    /// Removes any queue of that name, then creates it.
    pub fn purge_and_create(&self, name: &str) -> Result<Queue<T>, SegmentError> {
        self.named(name, OpenMode::PurgeAndCreate)
    }

    /// Creates or opens a queue by name, per `mode`.
    pub fn named(&self, name: &str, mode: OpenMode) -> Result<Queue<T>, SegmentError> {
        let cfg = self.config()?;
        let seg = self.segment_builder(&cfg).mode(mode).named(name, |u| crate::ring::init_config(u, &cfg))?;
        self.wrap(seg)
    }

    /// Creates a queue in anonymous memory (`memfd`), shared with forked children.
    pub fn anonymous(&self) -> Result<Queue<T>, SegmentError> {
        let cfg = self.config()?;
        let seg = self.segment_builder(&cfg).anonymous(|u| crate::ring::init_config(u, &cfg))?;
        self.wrap(seg)
    }

    /// Creates or opens a queue in a file, per `mode`. A symbolic link at `path` is refused
    /// ([`SegmentError::Symlink`]), not followed.
    pub fn file(&self, path: impl AsRef<Path>, mode: OpenMode) -> Result<Queue<T>, SegmentError> {
        let cfg = self.config()?;
        let seg = self.segment_builder(&cfg).mode(mode).file(path, |u| crate::ring::init_config(u, &cfg))?;
        self.wrap(seg)
    }

    /// Opens a queue from a descriptor of its segment.
    pub fn from_fd(&self, fd: OwnedFd) -> Result<Queue<T>, SegmentError> {
        let seg = SegmentBuilder::new(SegmentKind::Queue, self.fingerprint()).from_fd(fd)?;
        self.wrap(seg)
    }

    fn fingerprint(&self) -> Fingerprint {
        match &self.tag {
            Some(tag) => Fingerprint::tagged::<T>(tag),
            None => Fingerprint::of::<T>(),
        }
    }

    fn config(&self) -> Result<Config, SegmentError> {
        if std::mem::size_of::<T>() == 0 {
            return Err(SegmentError::InvalidSize("zero-sized payload types carry nothing"));
        }
        if std::mem::align_of::<T>() > crate::sys::page_size() {
            return Err(SegmentError::InvalidSize("payload alignment above a page"));
        }
        let slots = self
            .slots
            .max(2)
            .checked_next_power_of_two()
            .filter(|&n| n <= 1 << 32)
            .ok_or(SegmentError::InvalidSize("too many slots"))?;
        if self.max_members == 0 || self.max_members > MAX_MEMBERS {
            return Err(SegmentError::InvalidSize("max_members must be 1..=256"));
        }
        let (_, stride) = geometry::<T>();
        (slots as u64)
            .checked_mul(stride)
            .filter(|&b| b <= 1 << 40)
            .ok_or(SegmentError::InvalidSize("queue larger than 1 TiB"))?;
        Ok(Config {
            format: FORMAT_SLOTS,
            max_members: self.max_members as u32,
            capacity: slots as u64,
            stride,
            item_size: std::mem::size_of::<T>() as u64,
            data_offset: data_offset(),
            ring_id: crate::ring::ring_id(),
        })
    }

    fn segment_builder(&self, cfg: &Config) -> SegmentBuilder {
        let b = SegmentBuilder::new(SegmentKind::Queue, self.fingerprint())
            .payload_len((cfg.data_offset + cfg.capacity * cfg.stride) as usize)
            .permissions(self.permissions)
            .open_timeout(self.open_timeout);
        if self.allow_foreign_owner { b.allow_foreign_owner() } else { b }
    }

    fn wrap(&self, seg: Segment) -> Result<Queue<T>, SegmentError> {
        let core = Core::from_segment(seg, self.spin).map_err(|reason| SegmentError::Corrupted { reason })?;
        let (_, stride) = geometry::<T>();
        if core.cfg.format != FORMAT_SLOTS
            || core.cfg.item_size != std::mem::size_of::<T>() as u64
            || core.cfg.stride != stride
        {
            return Err(SegmentError::Corrupted { reason: "slot geometry does not match the type" });
        }
        Ok(Queue { core, _t: PhantomData })
    }
}

/// A queue of `T` values in shared memory: fixed slots, read and written in place, many senders
/// and many receivers in many processes. See [`crate::ring`] for how it works and
/// [`Ring`](crate::Ring) for the membership rules, which are the same.
#[derive(Debug)]
pub struct Queue<T> {
    core: Arc<Core>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { core: self.core.clone(), _t: PhantomData }
    }
}

impl<T: Pod> Queue<T> {
    /// A builder with the defaults (1024 slots).
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder::default()
    }

    /// A queue of `slots` slots in heap memory (the fuzz targets).
    pub(crate) fn on_heap(slots: u64) -> Result<Queue<T>, &'static str> {
        let (_, stride) = geometry::<T>();
        let cfg = Config {
            format: FORMAT_SLOTS,
            max_members: 4,
            capacity: slots,
            stride,
            item_size: std::mem::size_of::<T>() as u64,
            data_offset: data_offset(),
            ring_id: 1,
        };
        Ok(Queue { core: Core::on_heap(cfg)?, _t: PhantomData })
    }

    /// The engine under this queue (the fuzz targets fill its memory).
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// A new sending handle.
    ///
    /// It reconnects a queue whose receivers saw `Disconnected` (every earlier sender gone, dropped
    /// or dead): from the moment this call returns, their receives wait for messages again, and
    /// an iterator that ended can be made anew (`rx.iter()`) to yield what this sender sends. A
    /// sender in any process does so, one that opens the queue by name included.
    pub fn sender(&self) -> Result<Sender<T>, JoinRingError> {
        self.core.join_fresh(Role::Sender)?;
        Ok(Sender { core: self.core.clone(), spin: SpinCell::new(self.core.spin()), _t: PhantomData })
    }

    /// A new receiving handle.
    pub fn receiver(&self) -> Result<Receiver<T>, JoinRingError> {
        self.core.join_fresh(Role::Receiver)?;
        Ok(Receiver { core: self.core.clone(), spin: SpinCell::new(self.core.spin()), _t: PhantomData })
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.cfg.capacity as usize
    }

    /// Values in the queue right now (a snapshot).
    pub fn len(&self) -> usize {
        let c = self.core.ctrl();
        let len = c.tail.load(Ordering::Relaxed).saturating_sub(c.head.load(Ordering::Relaxed));
        len.min(self.core.cfg.capacity) as usize
    }

    /// Whether the queue is empty right now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters since the queue was created.
    pub fn stats(&self) -> Stats {
        Stats::of(&self.core)
    }

    /// Pids holding the send and the receive lock right now (a snapshot, for tests and
    /// diagnostics).
    #[doc(hidden)]
    pub fn debug_lock_holders(&self) -> (Option<u32>, Option<u32>) {
        let c = self.core.ctrl();
        (self.core.lock_holder_pid(&c.send.lock), self.core.lock_holder_pid(&c.recv.lock))
    }

    /// The underlying segment's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.core.segment_fd()
    }

    /// How many values have ever been taken out (the head index).
    pub(crate) fn consumed(&self) -> u64 {
        self.core.ctrl().head.load(Ordering::Acquire)
    }
}

// Deaths and the stamps
// ---------------------
//
// The commit word of slot `i` is its stamp: `i + 1` (Release) once the value is written. A batch of
// `n` slots from `tail` writes every value, stamps slots `tail + 1 .. tail + n` (Relaxed), and
// stamps slot `tail` last (Release): that one store publishes the whole batch, and then the tail
// index moves. A receiver takes slot `head` once its stamp says so (Acquire), and in a batch goes
// on to `head + 1`, ... while their stamps do, stopping at the first slot that is not published;
// it moves the head past what it took, then releases its lock. The invariants:
//
// (I1) Every slot in [head, tail) is published (stamp = index + 1), and slot `tail` is not.
// (I2) Outside a live sender's critical section, no slot in the free window [tail, head + capacity)
//      carries a current-lap stamp: each carries the previous lap's (its value was received) or 0.
//
// Receivers only ever read slots from `head` up to the first unpublished one, which (I1) puts at or
// before `tail`; they never read a stamp in the free window beyond it. So the later stamps of a
// batch in progress (beyond slot `tail`, which is unpublished until the batch commits) are never
// trusted before the commit: a receiver that acquires the commit stamp sees them all (they were
// stored before it in program order), and one that does not stops at `tail`.
//
// A death anywhere, and what it leaves:
// - sender, in `send_slice` before the commit stamp (values and later stamps written): slot `tail`
//   unpublished, current-lap stamps in (tail, tail + n) that nothing committed, breaking (I2).
//   `repair_send` (run by the next sender to take the lock, before it writes anything) clears
//   every current-lap stamp in the free window. Without that, the next publish of slot `tail`
//   would make them reachable: a receiver would take values never committed, move the head past
//   the tail, and values later sent there would be overwritten behind the head (lost).
// - sender, after the commit stamp, before the tail store (`send_slice`, `SlotWriter::commit`):
//   the batch is published; the repair rolls `tail` forward over published slots (receivers may
//   even have taken them: then `head > tail` for a moment, which every reader of the indices
//   allows).
// - sender holding a `SlotWriter` (value partly written, nothing stamped): nothing to undo; the
//   slot is rewritten by the next send.
// - receiver, in `recv_slice` or holding a `SlotReader`, before the head store: nothing consumed;
//   the values are still published at the head and go to the next receiver. After the head store:
//   consumed, by this receiver (and lost with it, as any message a dead process had received).
//   Receivers write no stamps, so `repair_recv` only checks the indices and the head's stamp.
// - a repairer that dies mid-repair leaves the lock owner-dead again; the repair is idempotent
//   (clearing a stale stamp twice, or rolling over the same slots, changes nothing more).
//
// The byte ring (records.rs) does not need the clearing: its batch also stages later headers
// before the first, but its zero marker keeps the word at `tail` zero until a record there is
// published, and each publish writes a new zero right after its last record, so the chain of
// headers a receiver follows always ends at a zero before any staged leftover.

/// Slot-format operations on the shared engine.
trait Slots {
    fn stamp(&self, i: u64) -> &AtomicU64;
    fn slot_ptr(&self, i: u64) -> *mut u8;
    fn probe_slot(&self, i: u64) -> Result<bool, &'static str>;
    fn repair_send(&self) -> Result<(), &'static str>;
    fn repair_recv(&self) -> Result<(), &'static str>;
}

impl Slots for Core {
    #[inline(always)]
    fn slot_ptr(&self, i: u64) -> *mut u8 {
        // (i & mask) < capacity, and capacity * stride bytes of data region are mapped (validated
        // config): the result stays inside the region.
        self.data().as_ptr().wrapping_add(((i & self.mask) * self.cfg.stride) as usize)
    }

    #[inline(always)]
    fn stamp(&self, i: u64) -> &AtomicU64 {
        // A validated config has `stamp_at + 8 <= stride` and `capacity * stride` within the data
        // region, so none of this wraps; wrapping ops keep a bug from becoming a debug panic.
        let stamp_at = self.cfg.item_size.div_ceil(8).wrapping_mul(8);
        self.word_at(((i & self.mask).wrapping_mul(self.cfg.stride)).wrapping_add(stamp_at))
    }

    /// Whether slot `i` holds a published value; an impossible stamp is an error.
    #[inline(always)]
    fn probe_slot(&self, i: u64) -> Result<bool, &'static str> {
        let s = self.stamp(i).load(Ordering::Acquire);
        if s == i.wrapping_add(1) {
            Ok(true)
        } else if s == 0 || s == i.wrapping_add(1).wrapping_sub(self.cfg.capacity) {
            Ok(false)
        } else {
            Err("slot stamp from no possible lap")
        }
    }

    /// After a sender died holding the send lock (see "Deaths and the stamps" above).
    fn repair_send(&self) -> Result<(), &'static str> {
        let c = self.ctrl();
        let cap = self.cfg.capacity;
        let (head, mut tail) = self.indices_near()?;
        // 1. A dead sender may have published slots (even seen them received) without moving
        //    tail: roll it forward over them.
        let mut steps = 0;
        while steps <= cap && self.probe_slot(tail)? {
            tail = tail.checked_add(1).ok_or("tail index overflows")?;
            steps += 1;
        }
        if tail < head || tail - head > cap {
            return Err("recovered tail is inconsistent with the head");
        }
        // 2. A dead sender may have stamped the later slots of a batch whose first stamp (its
        //    commit) it never stored: every stamp in the free window [tail, head + capacity) that
        //    claims the current lap is such a leftover. Clear it, before any sender publishes
        //    slot `tail` and makes the slots after it reachable. The window holds no published
        //    value (those lie in [head, tail)), and no receiver reads past the first unpublished
        //    slot, `tail`, so nobody reads these words meanwhile.
        let end = head.checked_add(cap).ok_or("head index overflows")?;
        for i in tail..end {
            let stamp = self.stamp(i);
            let s = stamp.load(Ordering::Relaxed);
            if s == i.wrapping_add(1) {
                stamp.store(0, Ordering::Relaxed);
            } else if s != 0 && s != i.wrapping_add(1).wrapping_sub(cap) {
                return Err("slot stamp from no possible lap");
            }
        }
        c.tail.store(tail, Ordering::Release);
        c.send.cached.store(head, Ordering::Relaxed);
        Ok(())
    }

    fn repair_recv(&self) -> Result<(), &'static str> {
        let (head, _) = self.indices_near()?;
        self.probe_slot(head).map(drop)
    }
}

/// The sending side of a [`Queue`].
#[derive(Debug)]
pub struct Sender<T> {
    core: Arc<Core>,
    spin: SpinCell,
    _t: PhantomData<fn(T) -> T>,
}

/// The receiving side of a [`Queue`].
#[derive(Debug)]
pub struct Receiver<T> {
    core: Arc<Core>,
    spin: SpinCell,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        let _ = self.core.join(Role::Sender);
        Sender { core: self.core.clone(), spin: self.spin.clone(), _t: PhantomData }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        let _ = self.core.join(Role::Receiver);
        Receiver { core: self.core.clone(), spin: self.spin.clone(), _t: PhantomData }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.core.leave(Role::Sender);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.core.leave(Role::Receiver);
    }
}

// Hooks for select and async (ring/select.rs, ring/async_io.rs): the mapping under a handle, and
// whether slot `i` is published.
impl<T> Sender<T> {
    pub(crate) fn core_arc(&self) -> &Arc<Core> {
        &self.core
    }
}
impl<T> Receiver<T> {
    pub(crate) fn core_arc(&self) -> &Arc<Core> {
        &self.core
    }
}
pub(crate) fn slot_published(core: &Core, i: u64) -> Result<bool, &'static str> {
    core.probe_slot(i)
}

impl<T: Pod> Sender<T> {
    /// Sends a value, waiting for a free slot. Hands it back if every receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.send_slice(std::slice::from_ref(&value), Wait::Forever).map(drop).map_err(|f| f.send(value))
    }

    /// Sends a value if a slot is free now.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.send_slice(std::slice::from_ref(&value), Wait::Try).map(drop).map_err(|f| f.try_send(value))
    }

    /// Sends a value, waiting at most `timeout` for a free slot.
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_slice(std::slice::from_ref(&value), Wait::timeout(timeout))
            .map(drop)
            .map_err(|f| f.send_timeout(value))
    }

    /// Sends every value in order, up to 1024 per lock hold. On failure, the error holds how
    /// many were sent.
    pub fn send_many(&self, values: &[T]) -> Result<(), SendError<usize>> {
        let mut sent = 0;
        while sent < values.len() {
            match self.send_slice(&values[sent..], Wait::Forever) {
                Ok(n) => sent += n,
                Err(f) => return Err(f.send(sent)),
            }
        }
        Ok(())
    }

    /// Sends as many values as there are free slots now (up to 1024), in order; answers how many.
    pub fn try_send_many(&self, values: &[T]) -> Result<usize, TrySendError<usize>> {
        if values.is_empty() {
            return Ok(0);
        }
        self.send_slice(values, Wait::Try).map_err(|f| f.try_send(0))
    }

    /// Reserves a slot to be written in place, published by [`SlotWriter::commit`]. Other
    /// senders wait meanwhile; dropping the guard uncommitted publishes nothing.
    pub fn reserve(&self) -> Result<SlotWriter<'_, T>, SendError<()>> {
        self.lock_room(1, Wait::Forever)
            .map(|(guard, tail, _)| SlotWriter { sender: self, guard: Some(guard), tail })
            .map_err(|f| f.send(()))
    }

    /// Changes how long this handle spins before parking, for its later waits (a wait under way
    /// keeps the policy it began with). Only this handle: its clones made earlier, and other
    /// handles, keep theirs; a clone made later starts with this one's. Takes `&self`, so a
    /// handle shared between threads can be tuned while in use.
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.spin.set(spin);
    }

    /// Leaves the queue (same as dropping the handle).
    pub fn close(self) {}

    /// Takes the send lock with at least one free slot; answers the guard, the tail and how many
    /// slots are free (at most `want`).
    #[inline]
    fn lock_room(&self, want: u64, wait: Wait) -> Result<(RobustMutexGuard<'_>, u64, u64), Fail> {
        let core = &*self.core;
        let (guard, tail, free) = core.lock_for_send(self.spin.get(), wait, 1, want, || core.repair_send())?;
        Ok((guard, tail, free.min(want)))
    }

    #[inline]
    fn send_slice(&self, values: &[T], wait: Wait) -> Result<usize, Fail> {
        self.send_slice_in(values, wait, None)
    }

    /// Sends up to a batch of `values`, with the lock a solo handle keeps when `solo` is given.
    #[inline(always)]
    fn send_slice_in(&self, values: &[T], wait: Wait, solo: Option<&mut Sticky>) -> Result<usize, Fail> {
        let core = &*self.core;
        let want = values.len().min(BATCH_SLOTS) as u64;
        let (guard, tail, n, solo) = match solo {
            None => {
                let (g, tail, n) = self.lock_room(want, wait)?;
                (Some(g), tail, n, None)
            }
            Some(st) => {
                let (g, tail, free) =
                    core.lock_for_send_solo(st, self.spin.get(), wait, 1, want, || core.repair_send())?;
                (g, tail, free.min(want), Some(st))
            }
        };
        if n > 1 {
            // Take the batch's lines back from the receivers' cores together (see the byte ring).
            let stride = core.cfg.stride;
            let mut off = 0;
            while off < (n * stride).min(4096) {
                let slot = tail + off / stride;
                crate::ring::prefetch_write(core.slot_ptr(slot).wrapping_add((off % stride) as usize));
                off += 64;
            }
        }
        for (k, v) in values[..n as usize].iter().enumerate() {
            let i = tail + k as u64;
            // SAFETY: slot `i` is free (tail + n - head <= capacity, checked under the send lock)
            // and beyond the published tail; we hold the send lock, so nobody else touches it.
            // The slot is aligned for T (data region page-aligned, stride a multiple of T's
            // alignment) and at least size_of::<T>() long; `v` is a valid T elsewhere (the
            // caller's), so the two do not overlap. One copy, from the caller's value straight
            // into the slot (no temporary of T).
            unsafe { std::ptr::copy_nonoverlapping(v, core.slot_ptr(i).cast::<T>(), 1) };
            if k > 0 {
                core.stamp(i).store(i + 1, Ordering::Relaxed);
            }
        }
        debug_pause();
        // The first stamp last, with Release: it publishes the whole batch.
        core.stamp(tail).store(tail + 1, Ordering::Release);
        // Published, the tail not yet moved: a death here is rolled forward by the repair.
        debug_pause();
        let c = core.ctrl();
        c.tail.store(tail + n, Ordering::Release);
        bump(&c.send.messages, n);
        bump(&c.send.bytes, n * core.cfg.item_size);
        match (solo, guard) {
            (Some(st), guard) => core.finish_solo(&c.send, st, guard, &c.not_empty, n as u32),
            (None, Some(guard)) => core.unlock_and_notify(guard, &c.not_empty, n as u32),
            (None, None) => {}
        }
        Ok(n as usize)
    }

    /// [`reserve`](Self::reserve) if a slot is free now (added for `ring::archive::TypedQueue`).
    pub fn try_reserve(&self) -> Result<SlotWriter<'_, T>, TrySendError<()>> {
        self.lock_room(1, Wait::Try)
            .map(|(guard, tail, _)| SlotWriter { sender: self, guard: Some(guard), tail })
            .map_err(|f| f.try_send(()))
    }

    /// [`reserve`](Self::reserve), waiting at most `timeout` for a free slot.
    pub fn reserve_timeout(&self, timeout: Duration) -> Result<SlotWriter<'_, T>, SendTimeoutError<()>> {
        self.lock_room(1, Wait::timeout(timeout))
            .map(|(guard, tail, _)| SlotWriter { sender: self, guard: Some(guard), tail })
            .map_err(|f| f.send_timeout(()))
    }
}

/// A slot reserved for writing in place. See [`Sender::reserve`].
#[derive(Debug)]
pub struct SlotWriter<'a, T: Pod> {
    sender: &'a Sender<T>,
    guard: Option<RobustMutexGuard<'a>>,
    tail: u64,
}

impl<T: Pod> SlotWriter<'_, T> {
    /// Publishes the value written in the slot.
    pub fn commit(mut self) {
        if !self.guard.as_ref().is_some_and(|g| g.held_here()) {
            // A copy of the guard in a forked child: the lock and the ring are the parent's.
            return;
        }
        let core = &*self.sender.core;
        let c = core.ctrl();
        core.stamp(self.tail).store(self.tail + 1, Ordering::Release);
        debug_pause();
        c.tail.store(self.tail + 1, Ordering::Release);
        bump(&c.send.messages, 1);
        bump(&c.send.bytes, core.cfg.item_size);
        if let Some(g) = self.guard.take() {
            core.unlock_and_notify(g, &c.not_empty, 1);
        }
    }
}

impl<T: Pod> std::ops::Deref for SlotWriter<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a free slot held under the send lock (see send_slice); aligned for T; any bytes
        // are a valid T (Pod).
        unsafe { &*self.sender.core.slot_ptr(self.tail).cast::<T>() }
    }
}

impl<T: Pod> std::ops::DerefMut for SlotWriter<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref; `&mut self` makes this the only reference to the slot.
        unsafe { &mut *self.sender.core.slot_ptr(self.tail).cast::<T>() }
    }
}

impl<T: Pod> Receiver<T> {
    /// Receives a value, waiting for one; `Disconnected` once empty with every sender gone.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_one(Wait::Forever).map_err(Fail::recv)
    }

    /// Receives a value if there is one now.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.recv_one(Wait::Try).map_err(Fail::try_recv)
    }

    /// Receives a value, waiting at most `timeout` (never less).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_one(Wait::timeout(timeout)).map_err(Fail::recv_timeout)
    }

    /// Waits for at least one value, then moves up to `out.len()` (at most 1024) into `out`
    /// under one lock hold; answers how many.
    pub fn recv_many(&self, out: &mut [T]) -> Result<usize, RecvError> {
        self.recv_slice(out, Wait::Forever).map_err(Fail::recv)
    }

    /// [`recv_many`](Self::recv_many) without waiting.
    pub fn try_recv_many(&self, out: &mut [T]) -> Result<usize, TryRecvError> {
        self.recv_slice(out, Wait::Try).map_err(Fail::try_recv)
    }

    /// [`recv_many`](Self::recv_many), waiting at most `timeout` for the first value.
    pub fn recv_many_timeout(&self, out: &mut [T], timeout: Duration) -> Result<usize, RecvTimeoutError> {
        self.recv_slice(out, Wait::timeout(timeout)).map_err(Fail::recv_timeout)
    }

    /// Waits for a value and lends it in place; it leaves the queue when the guard drops (also
    /// when a panic's unwinding drops it: a value handed out is consumed). If this process dies
    /// holding the guard, the value stays in the queue for the next receiver.
    pub fn recv_in_place(&self) -> Result<SlotReader<'_, T>, RecvError> {
        self.lock_value(Wait::Forever)
            .map(|(guard, head)| SlotReader { receiver: self, guard: Some(guard), head })
            .map_err(Fail::recv)
    }

    /// [`recv_in_place`](Self::recv_in_place), waiting at most `timeout`.
    pub fn recv_in_place_timeout(&self, timeout: Duration) -> Result<SlotReader<'_, T>, RecvTimeoutError> {
        self.lock_value(Wait::timeout(timeout))
            .map(|(guard, head)| SlotReader { receiver: self, guard: Some(guard), head })
            .map_err(Fail::recv_timeout)
    }

    /// Changes how long this handle spins before parking, for its later waits (a wait under way
    /// keeps the policy it began with). Only this handle: its clones made earlier, and other
    /// handles, keep theirs; a clone made later starts with this one's. Takes `&self`, so a
    /// handle shared between threads can be tuned while in use.
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.spin.set(spin);
    }

    /// Leaves the queue (same as dropping the handle).
    pub fn close(self) {}

    /// Takes the receive lock with a published value at the head.
    #[inline]
    fn lock_value(&self, wait: Wait) -> Result<(RobustMutexGuard<'_>, u64), Fail> {
        let core = &*self.core;
        let probe = |i| core.probe_slot(i).map(|published| published.then_some(()));
        core.lock_for_recv(self.spin.get(), wait, || core.repair_recv(), probe).map(|(g, head, ())| (g, head))
    }

    #[inline]
    fn recv_one(&self, wait: Wait) -> Result<T, Fail> {
        let mut out = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `out` is valid for one write of T, aligned, and not read before it is written.
        unsafe { self.recv_one_raw(out.as_mut_ptr(), wait, None)? };
        // SAFETY: recv_one_raw wrote a whole T into `out` (it returned Ok).
        Ok(unsafe { out.assume_init() })
    }

    /// Receives one value straight from its slot into `*dst` (one copy, no temporary).
    ///
    /// # Safety
    /// `dst` must be valid for a write of one `T`, aligned, and not overlap the queue's memory.
    /// With the lock a solo handle keeps when `solo` is given.
    #[inline(always)]
    unsafe fn recv_one_raw(&self, dst: *mut T, wait: Wait, solo: Option<&mut Sticky>) -> Result<(), Fail> {
        let core = &*self.core;
        let (guard, head, solo) = match solo {
            None => {
                let (g, head) = self.lock_value(wait)?;
                (Some(g), head, None)
            }
            Some(st) => {
                let probe = |i| core.probe_slot(i).map(|published| published.then_some(()));
                let (g, head, ()) = core.lock_for_recv_solo(st, self.spin.get(), wait, || core.repair_recv(), probe)?;
                (g, head, Some(st))
            }
        };
        // SAFETY: slot `head` holds a published value (its stamp was acquired) and we hold the
        // receive lock, so no sender rewrites it before the head moves past it; aligned for T,
        // any bytes are a valid T; `dst` is the caller's (see # Safety).
        unsafe { std::ptr::copy_nonoverlapping(core.slot_ptr(head).cast::<T>().cast_const(), dst, 1) };
        if let Some(hook) = super::receive_hook() {
            // SAFETY: just written in full above.
            hook(bytemuck::bytes_of(unsafe { &*dst }));
        }
        debug_pause();
        let c = core.ctrl();
        c.head.store(head + 1, Ordering::Release);
        bump(&c.recv.messages, 1);
        bump(&c.recv.bytes, core.cfg.item_size);
        match (solo, guard) {
            (Some(st), guard) => core.finish_solo(&c.recv, st, guard, &c.not_full, u32::MAX),
            (None, Some(guard)) => core.unlock_and_notify(guard, &c.not_full, u32::MAX),
            (None, None) => {}
        }
        Ok(())
    }

    #[inline]
    fn recv_slice(&self, out: &mut [T], wait: Wait) -> Result<usize, Fail> {
        if out.is_empty() {
            return Ok(0);
        }
        let core = &*self.core;
        let (guard, head) = self.lock_value(wait)?;
        let max = out.len().min(BATCH_SLOTS);
        let mut n = 0;
        while n < max {
            let i = head + n as u64;
            if n > 0 && core.probe_slot(i) != Ok(true) {
                break;
            }
            // SAFETY: slot `i` holds a published value (its stamp was acquired) and we hold the
            // receive lock, so no sender rewrites it before the head moves past it. Aligned for T;
            // any bytes are a valid T; `out` is the caller's memory, not the queue's.
            unsafe { std::ptr::copy_nonoverlapping(core.slot_ptr(i).cast::<T>().cast_const(), &mut out[n], 1) };
            n += 1;
        }
        if let Some(hook) = super::receive_hook() {
            out[..n].iter().for_each(|v| hook(bytemuck::bytes_of(v)));
        }
        debug_pause();
        let c = core.ctrl();
        c.head.store(head + n as u64, Ordering::Release);
        bump(&c.recv.messages, n as u64);
        bump(&c.recv.bytes, n as u64 * core.cfg.item_size);
        core.unlock_and_notify(guard, &c.not_full, u32::MAX);
        Ok(n)
    }

    /// [`recv_in_place`](Self::recv_in_place) if a value is there now (added for
    /// `ring::archive::TypedQueue`).
    pub fn try_recv_in_place(&self) -> Result<SlotReader<'_, T>, TryRecvError> {
        self.lock_value(Wait::Try)
            .map(|(guard, head)| SlotReader { receiver: self, guard: Some(guard), head })
            .map_err(Fail::try_recv)
    }
}

/// A value lent in place. See [`Receiver::recv_in_place`].
#[derive(Debug)]
pub struct SlotReader<'a, T: Pod> {
    receiver: &'a Receiver<T>,
    guard: Option<RobustMutexGuard<'a>>,
    head: u64,
}

impl<T: Pod> std::ops::Deref for SlotReader<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a published slot held under the receive lock until this guard drops.
        unsafe { &*self.receiver.core.slot_ptr(self.head).cast::<T>() }
    }
}

impl<T: Pod> Drop for SlotReader<'_, T> {
    fn drop(&mut self) {
        if !self.guard.as_ref().is_some_and(|g| g.held_here()) {
            // A copy of the guard in a forked child: the lock and the ring are the parent's.
            return;
        }
        let core = &*self.receiver.core;
        super::debug_taken(bytemuck::bytes_of(&**self));
        debug_pause();
        let c = core.ctrl();
        c.head.store(self.head + 1, Ordering::Release);
        bump(&c.recv.messages, 1);
        bump(&c.recv.bytes, core.cfg.item_size);
        if let Some(g) = self.guard.take() {
            core.unlock_and_notify(g, &c.not_full, u32::MAX);
        }
    }
}

/// The receivers' iterators ([`Receiver::iter`], [`Receiver::try_iter`], `IntoIterator`).
pub use super::iter::queue_iter::{IntoIter, Iter, TryIter};

// ----- by reference: no copy of T on the way in or out -------------------------------------------

impl<T: Pod> Sender<T> {
    /// Sends a copy of `*value`, waiting for a free slot: the value is copied once, from `value`
    /// straight into its slot. Fails (nothing sent) if every receiver is gone or the queue is
    /// broken.
    #[inline]
    pub fn send_ref(&self, value: &T) -> Result<(), SendError<()>> {
        self.send_slice(std::slice::from_ref(value), Wait::Forever).map(drop).map_err(|f| f.send(()))
    }

    /// [`send_ref`](Self::send_ref) if a slot is free now.
    #[inline]
    pub fn try_send_ref(&self, value: &T) -> Result<(), TrySendError<()>> {
        self.send_slice(std::slice::from_ref(value), Wait::Try).map(drop).map_err(|f| f.try_send(()))
    }

    /// [`send_ref`](Self::send_ref), waiting at most `timeout` for a free slot.
    pub fn send_ref_timeout(&self, value: &T, timeout: Duration) -> Result<(), SendTimeoutError<()>> {
        self.send_slice(std::slice::from_ref(value), Wait::timeout(timeout)).map(drop).map_err(|f| f.send_timeout(()))
    }
}

impl<T: Pod> Receiver<T> {
    /// Receives a value into `*out`, waiting for one: copied once, from its slot straight into
    /// `out`. On failure `out` is unchanged.
    #[inline]
    pub fn recv_into(&self, out: &mut T) -> Result<(), RecvError> {
        // SAFETY: `out` is a valid, aligned, exclusive T outside the queue's memory.
        unsafe { self.recv_one_raw(out, Wait::Forever, None) }.map_err(Fail::recv)
    }

    /// [`recv_into`](Self::recv_into) without waiting.
    #[inline]
    pub fn try_recv_into(&self, out: &mut T) -> Result<(), TryRecvError> {
        // SAFETY: as in recv_into.
        unsafe { self.recv_one_raw(out, Wait::Try, None) }.map_err(Fail::try_recv)
    }

    /// [`recv_into`](Self::recv_into), waiting at most `timeout` (never less).
    pub fn recv_into_timeout(&self, out: &mut T, timeout: Duration) -> Result<(), RecvTimeoutError> {
        // SAFETY: as in recv_into.
        unsafe { self.recv_one_raw(out, Wait::timeout(timeout), None) }.map_err(Fail::recv_timeout)
    }
}

// ----- solo handles ----------------------------------------------------------------------------

impl<T: Pod> Queue<T> {
    /// A new sending handle that keeps the send lock between values: see [`SoloSender`].
    pub fn solo_sender(&self) -> Result<SoloSender<T>, JoinRingError> {
        self.sender().map(Sender::into_solo)
    }

    /// A new receiving handle that keeps the receive lock between values: see [`SoloReceiver`].
    pub fn solo_receiver(&self) -> Result<SoloReceiver<T>, JoinRingError> {
        self.receiver().map(Receiver::into_solo)
    }
}

impl<T: Pod> Sender<T> {
    /// This handle as a [`SoloSender`].
    pub fn into_solo(self) -> SoloSender<T> {
        SoloSender { sticky: Sticky::default(), sender: self, _thread: PhantomData }
    }
}

impl<T: Pod> Receiver<T> {
    /// This handle as a [`SoloReceiver`].
    pub fn into_solo(self) -> SoloReceiver<T> {
        SoloReceiver { sticky: Sticky::default(), receiver: self, _thread: PhantomData }
    }
}

/// A queue sender that keeps the send lock from one value to the next: the typed twin of
/// [`crate::ring::SoloSender`], with the same guarantees and the same price (other senders get the
/// lock when this handle's next send ends, or when it is dropped, waits for a slot, or calls
/// [`release`](Self::release); a killed one is repaired as always; parked receivers run one
/// `membarrier(2)`; the handle stays on the thread that made it).
#[derive(Debug)]
pub struct SoloSender<T> {
    sticky: Sticky,
    sender: Sender<T>,
    _thread: PhantomData<*const ()>,
}

impl<T: Pod> SoloSender<T> {
    /// Sends a copy of `*value`, waiting for a free slot: see [`Sender::send_ref`].
    #[inline]
    pub fn send_ref(&mut self, value: &T) -> Result<(), SendError<()>> {
        self.sender
            .send_slice_in(std::slice::from_ref(value), Wait::Forever, Some(&mut self.sticky))
            .map(drop)
            .map_err(|f| f.send(()))
    }

    /// Sends a value, waiting for a free slot: see [`Sender::send`].
    #[inline]
    pub fn send(&mut self, value: T) -> Result<(), SendError<T>> {
        self.sender
            .send_slice_in(std::slice::from_ref(&value), Wait::Forever, Some(&mut self.sticky))
            .map(drop)
            .map_err(|f| f.send(value))
    }

    /// [`send_ref`](Self::send_ref) if a slot is free now.
    #[inline]
    pub fn try_send_ref(&mut self, value: &T) -> Result<(), TrySendError<()>> {
        self.sender
            .send_slice_in(std::slice::from_ref(value), Wait::Try, Some(&mut self.sticky))
            .map(drop)
            .map_err(|f| f.try_send(()))
    }

    /// [`send_ref`](Self::send_ref), waiting at most `timeout` for a free slot.
    pub fn send_ref_timeout(&mut self, value: &T, timeout: Duration) -> Result<(), SendTimeoutError<()>> {
        self.sender
            .send_slice_in(std::slice::from_ref(value), Wait::timeout(timeout), Some(&mut self.sticky))
            .map(drop)
            .map_err(|f| f.send_timeout(()))
    }

    /// The ordinary handle underneath (the kept lock is given up first).
    pub fn as_sender(&mut self) -> &Sender<T> {
        self.release();
        &self.sender
    }
}

impl<T> SoloSender<T> {
    /// Changes how long this handle spins before parking: see [`Sender::set_spin`].
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.sender.spin.set(spin);
    }

    /// Gives the kept lock up now (a later send takes it again).
    pub fn release(&mut self) {
        let core = &*self.sender.core;
        core.release_sticky(&core.ctrl().send, &mut self.sticky);
    }
}

impl<T> Drop for SoloSender<T> {
    fn drop(&mut self) {
        self.release();
    }
}

/// A queue receiver that keeps the receive lock from one value to the next (see [`SoloSender`]).
#[derive(Debug)]
pub struct SoloReceiver<T> {
    sticky: Sticky,
    receiver: Receiver<T>,
    _thread: PhantomData<*const ()>,
}

impl<T: Pod> SoloReceiver<T> {
    /// Receives a value into `*out`, waiting for one: see [`Receiver::recv_into`].
    #[inline]
    pub fn recv_into(&mut self, out: &mut T) -> Result<(), RecvError> {
        // SAFETY: `out` is a valid, aligned, exclusive T outside the queue's memory.
        unsafe { self.receiver.recv_one_raw(out, Wait::Forever, Some(&mut self.sticky)) }.map_err(Fail::recv)
    }

    /// Receives a value, waiting for one: see [`Receiver::recv`].
    #[inline]
    pub fn recv(&mut self) -> Result<T, RecvError> {
        let mut out = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `out` is valid for one write of T, aligned, and not read before it is written.
        unsafe { self.receiver.recv_one_raw(out.as_mut_ptr(), Wait::Forever, Some(&mut self.sticky)) }
            .map_err(Fail::recv)?;
        // SAFETY: recv_one_raw wrote a whole T into `out` (it returned Ok).
        Ok(unsafe { out.assume_init() })
    }

    /// [`recv_into`](Self::recv_into) without waiting.
    #[inline]
    pub fn try_recv_into(&mut self, out: &mut T) -> Result<(), TryRecvError> {
        // SAFETY: as in recv_into.
        unsafe { self.receiver.recv_one_raw(out, Wait::Try, Some(&mut self.sticky)) }.map_err(Fail::try_recv)
    }

    /// [`recv_into`](Self::recv_into), waiting at most `timeout` (never less).
    pub fn recv_into_timeout(&mut self, out: &mut T, timeout: Duration) -> Result<(), RecvTimeoutError> {
        // SAFETY: as in recv_into.
        unsafe { self.receiver.recv_one_raw(out, Wait::timeout(timeout), Some(&mut self.sticky)) }
            .map_err(Fail::recv_timeout)
    }

    /// The ordinary handle underneath (the kept lock is given up first).
    pub fn as_receiver(&mut self) -> &Receiver<T> {
        self.release();
        &self.receiver
    }
}

impl<T> SoloReceiver<T> {
    /// Changes how long this handle spins before parking: see [`Receiver::set_spin`].
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.receiver.spin.set(spin);
    }

    /// Gives the kept lock up now (a later receive takes it again).
    pub fn release(&mut self) {
        let core = &*self.receiver.core;
        core.release_sticky(&core.ctrl().recv, &mut self.sticky);
    }
}

impl<T> Drop for SoloReceiver<T> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    //! The slot ring's index, stamp and repair logic on heap memory, against a `VecDeque`. Small
    //! enough to run under Miri:
    //! `MIRIFLAGS=-Zmiri-isolation-error=warn-nobacktrace cargo +nightly miri test --lib ring::queue::tests`.

    use std::collections::VecDeque;

    use super::*;

    /// A value with a stamp-sized tail and an odd size (stride 32: 20 bytes, padding, stamp).
    type V = [u32; 5];

    fn heap_queue(slots: u64) -> Queue<V> {
        Queue::on_heap(slots).expect("a valid heap queue")
    }

    fn value(n: u32) -> V {
        [n, !n, n.wrapping_mul(0x9E37_79B9), 7, n ^ 0x5555]
    }

    #[test]
    fn heap_queue_matches_vecdeque_through_wraps() {
        let q = heap_queue(8);
        let tx = q.sender().unwrap();
        let rx = q.receiver().unwrap();
        let mut model: VecDeque<V> = VecDeque::new();
        let mut next = 0u32;
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let ops = if cfg!(miri) { 300 } else { 20_000 };
        for _ in 0..ops {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x >> 8) as usize % 11;
            match x % 7 {
                0 | 1 => match tx.try_send(value(next)) {
                    Ok(()) => {
                        assert!(model.len() < 8);
                        model.push_back(value(next));
                        next += 1;
                    }
                    Err(TrySendError::Full(v)) => {
                        assert_eq!(model.len(), 8);
                        assert_eq!(v, value(next));
                    }
                    Err(e) => panic!("{e}"),
                },
                2 => {
                    // A batch, maybe across the end of the slots, maybe cut short by the room.
                    let batch: Vec<V> = (0..k as u32).map(|i| value(next + i)).collect();
                    match tx.try_send_many(&batch) {
                        Ok(n) => {
                            assert_eq!(n, k.min(8 - model.len()));
                            model.extend(&batch[..n]);
                            next += n as u32;
                        }
                        Err(TrySendError::Full(_)) => assert!(model.len() == 8 && k > 0),
                        Err(e) => panic!("{e}"),
                    }
                }
                3 if model.len() < 8 => {
                    // In place; every third one dropped uncommitted (publishes nothing).
                    let mut w = tx.reserve().unwrap();
                    *w = value(next);
                    if k % 3 == 0 {
                        drop(w);
                    } else {
                        w.commit();
                        model.push_back(value(next));
                        next += 1;
                    }
                }
                4 if !model.is_empty() => {
                    let r = rx.recv_in_place().unwrap();
                    assert_eq!(*r, model.pop_front().unwrap());
                }
                5 => {
                    let mut out = [[0; 5]; 10];
                    match rx.try_recv_many(&mut out[..k.max(1)]) {
                        Ok(n) => {
                            assert_eq!(n, k.max(1).min(model.len()));
                            for v in &out[..n] {
                                assert_eq!(*v, model.pop_front().unwrap());
                            }
                        }
                        Err(TryRecvError::Empty) => assert!(model.is_empty()),
                        Err(e) => panic!("{e}"),
                    }
                }
                _ => match rx.try_recv() {
                    Ok(v) => assert_eq!(v, model.pop_front().unwrap()),
                    Err(TryRecvError::Empty) => assert!(model.is_empty()),
                    Err(e) => panic!("{e}"),
                },
            }
            assert_eq!(q.len(), model.len());
        }
        let stats = q.stats();
        assert_eq!(stats.sent, u64::from(next));
        assert_eq!(stats.sent - stats.received, model.len() as u64);
    }

    /// What a sender killed inside `send_slice` leaves: the batch's values, and the stamps of its
    /// later slots, but not its first stamp (the commit). Written as `send_slice` writes them.
    fn die_inside_a_batch(q: &Queue<V>, values: &[V]) {
        let core = &*q.core;
        let tail = core.ctrl().tail.load(Ordering::Relaxed);
        for (k, v) in values.iter().enumerate() {
            let i = tail + k as u64;
            // SAFETY: test-only: slot `i` is free (the caller leaves room) and nobody else uses the
            // queue meanwhile; aligned for V, at least size_of::<V>() long.
            unsafe { core.slot_ptr(i).cast::<V>().write(*v) };
            if k > 0 {
                core.stamp(i).store(i + 1, Ordering::Relaxed);
            }
        }
    }

    /// A sender died inside a batch, after stamping its later slots: the repair clears those
    /// stamps, so the next values sent are received, and the dead batch's never are.
    #[test]
    fn repair_after_a_dead_sender_clears_the_stamps_of_its_uncommitted_batch() {
        let q = heap_queue(8);
        let tx = q.sender().unwrap();
        let rx = q.receiver().unwrap();
        // Move the indices so that the dead batch wraps around the end of the slots.
        for n in 0..6 {
            tx.try_send(value(n)).unwrap();
            assert_eq!(rx.try_recv().unwrap(), value(n));
        }
        let dead: Vec<V> = (100..105).map(value).collect();
        die_inside_a_batch(&q, &dead);
        // The next holder of the send lock finds its owner dead and repairs.
        q.core.repair_send().unwrap();
        for slot in 7..11 {
            assert_eq!(q.core.stamp(slot).load(Ordering::Relaxed), 0, "stale stamp of slot {slot} cleared");
        }
        tx.try_send(value(6)).unwrap();
        let mut out = [[0; 5]; 8];
        assert_eq!(rx.try_recv_many(&mut out).unwrap(), 1, "only the committed value is published");
        assert_eq!(out[0], value(6));
        tx.try_send_many(&[value(7), value(8)]).unwrap();
        assert_eq!(rx.try_recv_many(&mut out).unwrap(), 2);
        assert_eq!(out[..2], [value(7), value(8)]);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(q.len(), 0);
    }

    /// A sender died after its batch's commit stamp, before moving the tail (a receiver even took
    /// part of it): the repair rolls the tail forward over the published slots.
    #[test]
    fn repair_after_a_dead_sender_rolls_a_committed_batch_forward() {
        let q = heap_queue(4);
        let tx = q.sender().unwrap();
        let rx = q.receiver().unwrap();
        for n in 0..3 {
            tx.try_send(value(n)).unwrap();
            assert_eq!(rx.try_recv().unwrap(), value(n));
        }
        let core = &*q.core;
        die_inside_a_batch(&q, &[value(3), value(4), value(5)]);
        core.stamp(3).store(4, Ordering::Release); // the commit, then death
        assert_eq!(rx.try_recv().unwrap(), value(3), "published, so receivable before the repair");
        core.repair_send().unwrap();
        assert_eq!(core.ctrl().tail.load(Ordering::Relaxed), 6);
        assert_eq!(q.len(), 2);
        tx.try_send(value(6)).unwrap();
        let mut out = [[0; 5]; 4];
        assert_eq!(rx.try_recv_many(&mut out).unwrap(), 3);
        assert_eq!(out[..3], [value(4), value(5), value(6)]);
    }

    /// A stamp from no possible lap in the free window is corruption, found by the repair.
    #[test]
    fn repair_reports_an_impossible_stamp() {
        let q = heap_queue(4);
        q.core.stamp(2).store(1234, Ordering::Relaxed);
        assert_eq!(q.core.repair_send(), Err("slot stamp from no possible lap"));
        q.core.stamp(2).store(0, Ordering::Relaxed);
        assert_eq!(q.core.repair_send(), Ok(()));
        assert_eq!(q.core.repair_recv(), Ok(()));
    }
}
