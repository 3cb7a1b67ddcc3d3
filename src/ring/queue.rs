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

use super::{
    Config, Core, FORMAT_SLOTS, Fail, JoinError, MAX_MEMBERS, RecvError, RecvTimeoutError, Role, SendError,
    SendTimeoutError, Stats, TryRecvError, TrySendError, Wait, data_offset, debug_pause,
};
use crate::segment::{Fingerprint, OpenMode, Segment, SegmentBuilder, SegmentError, SegmentKind};
use crate::sync::{RobustMutexGuard, SpinPolicy};

/// Most slots one batch moves under one lock hold.
const BATCH_SLOTS: usize = 1024;

/// Where the stamp sits in a slot of `T`, and the slot stride.
fn geometry<T>() -> (u64, u64) {
    let size = std::mem::size_of::<T>() as u64;
    let align = (std::mem::align_of::<T>() as u64).max(8);
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

    /// Creates or opens a queue in a file, per `mode`.
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
        SegmentBuilder::new(SegmentKind::Queue, self.fingerprint())
            .payload_len((cfg.data_offset + cfg.capacity * cfg.stride) as usize)
            .permissions(self.permissions)
            .open_timeout(self.open_timeout)
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

    /// A new sending handle.
    pub fn sender(&self) -> Result<Sender<T>, JoinError> {
        self.core.join_fresh(Role::Sender)?;
        Ok(Sender { core: self.core.clone(), spin: self.core.spin(), _t: PhantomData })
    }

    /// A new receiving handle.
    pub fn receiver(&self) -> Result<Receiver<T>, JoinError> {
        self.core.join_fresh(Role::Receiver)?;
        Ok(Receiver { core: self.core.clone(), spin: self.core.spin(), _t: PhantomData })
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.cfg.capacity as usize
    }

    /// Values in the queue right now (a snapshot).
    pub fn len(&self) -> usize {
        let c = self.core.ctrl();
        c.tail.load(Ordering::Relaxed).saturating_sub(c.head.load(Ordering::Relaxed)) as usize
    }

    /// Whether the queue is empty right now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters since the queue was created.
    pub fn stats(&self) -> Stats {
        Stats::of(&self.core)
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
        let stamp_at = self.cfg.item_size.div_ceil(8) * 8;
        self.word_at((i & self.mask) * self.cfg.stride + stamp_at)
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

    fn repair_send(&self) -> Result<(), &'static str> {
        let c = self.ctrl();
        let (head, mut tail) = self.indices_near()?;
        // A dead sender may have published slots (even seen them received) without moving tail.
        let mut steps = 0;
        while steps <= self.cfg.capacity && self.probe_slot(tail)? {
            tail += 1;
            steps += 1;
        }
        if tail < head || tail - head > self.cfg.capacity {
            return Err("recovered tail is inconsistent with the head");
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
    spin: SpinPolicy,
    _t: PhantomData<fn(T) -> T>,
}

/// The receiving side of a [`Queue`].
#[derive(Debug)]
pub struct Receiver<T> {
    core: Arc<Core>,
    spin: SpinPolicy,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        let _ = self.core.join(Role::Sender);
        Sender { core: self.core.clone(), spin: self.spin, _t: PhantomData }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        let _ = self.core.join(Role::Receiver);
        Receiver { core: self.core.clone(), spin: self.spin, _t: PhantomData }
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

#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
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

    /// Changes how long this handle spins before parking.
    pub fn set_spin(&mut self, spin: SpinPolicy) {
        self.spin = spin;
    }

    /// Leaves the queue (same as dropping the handle).
    pub fn close(self) {}

    /// Takes the send lock with at least one free slot; answers the guard, the tail and how many
    /// slots are free (at most `want`).
    #[inline]
    fn lock_room(&self, want: u64, wait: Wait) -> Result<(RobustMutexGuard<'_>, u64, u64), Fail> {
        let core = &*self.core;
        let (guard, tail, free) = core.lock_for_send(self.spin, wait, 1, want, || core.repair_send())?;
        Ok((guard, tail, free.min(want)))
    }

    #[inline]
    fn send_slice(&self, values: &[T], wait: Wait) -> Result<usize, Fail> {
        let core = &*self.core;
        let want = values.len().min(BATCH_SLOTS) as u64;
        let (guard, tail, n) = self.lock_room(want, wait)?;
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
            // alignment) and at least size_of::<T>() long.
            unsafe { core.slot_ptr(i).cast::<T>().write(*v) };
            if k > 0 {
                core.stamp(i).store(i + 1, Ordering::Relaxed);
            }
        }
        debug_pause();
        // The first stamp last, with Release: it publishes the whole batch.
        core.stamp(tail).store(tail + 1, Ordering::Release);
        let c = core.ctrl();
        c.tail.store(tail + n, Ordering::Release);
        bump(&c.send.messages, n);
        bump(&c.send.bytes, n * core.cfg.item_size);
        core.unlock_and_notify(guard, &c.not_empty, n as u32);
        Ok(n as usize)
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
        let core = &*self.sender.core;
        let c = core.ctrl();
        core.stamp(self.tail).store(self.tail + 1, Ordering::Release);
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

    /// Waits for a value and lends it in place; it leaves the queue when the guard drops.
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

    /// Changes how long this handle spins before parking.
    pub fn set_spin(&mut self, spin: SpinPolicy) {
        self.spin = spin;
    }

    /// Leaves the queue (same as dropping the handle).
    pub fn close(self) {}

    /// Takes the receive lock with a published value at the head.
    #[inline]
    fn lock_value(&self, wait: Wait) -> Result<(RobustMutexGuard<'_>, u64), Fail> {
        let core = &*self.core;
        let probe = |i| core.probe_slot(i).map(|published| published.then_some(()));
        core.lock_for_recv(self.spin, wait, || core.repair_recv(), probe).map(|(g, head, ())| (g, head))
    }

    #[inline]
    fn recv_one(&self, wait: Wait) -> Result<T, Fail> {
        let mut out = [T::zeroed()];
        self.recv_slice(&mut out, wait)?;
        Ok(out[0])
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
            // any bytes are a valid T.
            out[n] = unsafe { core.slot_ptr(i).cast::<T>().read() };
            n += 1;
        }
        debug_pause();
        let c = core.ctrl();
        c.head.store(head + n as u64, Ordering::Release);
        bump(&c.recv.messages, n as u64);
        bump(&c.recv.bytes, n as u64 * core.cfg.item_size);
        core.unlock_and_notify(guard, &c.not_full, u32::MAX);
        Ok(n)
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
        let core = &*self.receiver.core;
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
