//! [`TypedQueue<T, N>`]: archived values in the fixed `N`-byte slots of a [`Queue`], written in
//! place and validated on receipt, for when a bounded count of values matters more than packing
//! them (a [`TypedRing`](super::TypedRing) packs variable sizes into its bytes).
//!
//! A slot holds the archive's length (8 bytes, little-endian), then the archive, positioned for
//! the address it has in the mapping as in the ring (see the [parent module](super)). The largest
//! archive a slot takes is `N - 8`. `N` is a size for which `[u8; N]` is `Pod` (bytemuck: up to 32,
//! and 48, 64, 96, 128, 256, 512, 1024, 2048, 4096). The receiver checks the length field against
//! the slot before it validates the archive.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use rkyv::api::high::HighDeserializer;
use rkyv::{Archive, Archived, Deserialize};

use super::{
    ALIGN_SPAN, Archivable, Fail, RkyvError, Scratch, TypedRecvError, TypedSendError, Until, measure, rkyv_format,
    until, write_into,
};
use crate::queue::{self, Queue, QueueBuilder, SlotReader};
use crate::ring::{JoinRingError, SendError, SendTimeoutError, Stats, TrySendError};
use crate::segment::{OpenMode, SegmentError};
use crate::sync::SpinPolicy;

/// Bytes of a slot before the archive: its length.
const LEN_FIELD: usize = 8;

/// How to create or open a [`TypedQueue`]: a [`QueueBuilder`] of `[u8; N]` slots, tagged with
/// `T`'s name (or a tag) and rkyv's format.
#[derive(Debug)]
pub struct TypedQueueBuilder<T: Archivable, const N: usize>
where
    [u8; N]: Pod,
{
    inner: QueueBuilder<[u8; N]>,
    tag: Option<String>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Archivable, const N: usize> TypedQueueBuilder<T, N>
where
    [u8; N]: Pod,
{
    /// Number of slots, rounded up to a power of two. Default 1024.
    pub fn slots(mut self, n: usize) -> Self {
        self.inner = self.inner.slots(n);
        self
    }

    /// How long this process's handles spin before parking.
    pub fn spin(mut self, spin: SpinPolicy) -> Self {
        self.inner = self.inner.spin(spin);
        self
    }

    /// How many processes may hold handles at once (at most 256). Creation only.
    pub fn max_members(mut self, n: usize) -> Self {
        self.inner = self.inner.max_members(n);
        self
    }

    /// Permission bits of a created named queue. Default `0o600`.
    pub fn permissions(mut self, mode: u32) -> Self {
        self.inner = self.inner.permissions(mode);
        self
    }

    /// How long an opener waits for a creator that is still initializing. Default 2 s.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.open_timeout(timeout);
        self
    }

    /// Names the type explicitly in the fingerprint, for programs built apart.
    pub fn type_tag(mut self, tag: &str) -> Self {
        self.tag = Some(tag.to_owned());
        self
    }

    /// Creates the named queue; fails if the name is taken.
    pub fn create(&self, name: &str) -> Result<TypedQueue<T, N>, SegmentError> {
        self.named(name, OpenMode::CreateNew)
    }

    /// Opens the named queue; fails if there is none, or if it carries another type or slot size.
    pub fn open(&self, name: &str) -> Result<TypedQueue<T, N>, SegmentError> {
        self.named(name, OpenMode::OpenExisting)
    }

    /// Creates or opens a queue by name, per `mode`.
    pub fn named(&self, name: &str, mode: OpenMode) -> Result<TypedQueue<T, N>, SegmentError> {
        self.tagged()?.named(name, mode).map(TypedQueue::wrap)
    }

    /// Creates a queue in anonymous memory (`memfd`), shared with forked children.
    pub fn anonymous(&self) -> Result<TypedQueue<T, N>, SegmentError> {
        self.tagged()?.anonymous().map(TypedQueue::wrap)
    }

    /// Opens a queue from a descriptor of its segment.
    pub fn from_fd(&self, fd: std::os::fd::OwnedFd) -> Result<TypedQueue<T, N>, SegmentError> {
        self.tagged()?.from_fd(fd).map(TypedQueue::wrap)
    }

    fn tagged(&self) -> Result<QueueBuilder<[u8; N]>, SegmentError> {
        if N <= LEN_FIELD {
            return Err(SegmentError::InvalidSize("typed queue slots must be larger than 8 bytes"));
        }
        let name = self.tag.as_deref().unwrap_or(std::any::type_name::<T>());
        let tag = format!(
            "ringpool::archive-slots/{}/root{}/align{}:{name}",
            rkyv_format(),
            std::mem::size_of::<Archived<T>>(),
            std::mem::align_of::<Archived<T>>()
        );
        Ok(self.inner.clone().type_tag(&tag))
    }
}

/// A queue of archived `T` values in the fixed `N`-byte slots of a [`Queue`]`<[u8; N]>`, written in
/// place and validated on receipt: for when a bounded count of values matters more than packing
/// them (a [`TypedRing`](super::TypedRing) packs variable sizes into its bytes).
///
/// A slot holds the archive's length (8 bytes, little-endian), then the archive, positioned for the
/// address it has in the mapping as in the ring (see the [module docs](super)). The largest archive
/// a slot takes is `N - 8`. `N` is a size for which `[u8; N]` is `Pod` (bytemuck: up to 32, and 48,
/// 64, 96, 128, 256, 512, 1024, 2048, 4096). The receiver checks the length field against the slot
/// before it validates the archive.
#[derive(Debug)]
pub struct TypedQueue<T: Archivable, const N: usize>
where
    [u8; N]: Pod,
{
    queue: Queue<[u8; N]>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Archivable, const N: usize> Clone for TypedQueue<T, N>
where
    [u8; N]: Pod,
{
    fn clone(&self) -> Self {
        TypedQueue { queue: self.queue.clone(), _t: PhantomData }
    }
}

impl<T: Archivable, const N: usize> TypedQueue<T, N>
where
    [u8; N]: Pod,
{
    /// A builder with the defaults.
    pub fn builder() -> TypedQueueBuilder<T, N> {
        TypedQueueBuilder { inner: Queue::<[u8; N]>::builder(), tag: None, _t: PhantomData }
    }

    fn wrap(queue: Queue<[u8; N]>) -> TypedQueue<T, N> {
        TypedQueue { queue, _t: PhantomData }
    }

    /// A new sending handle.
    pub fn sender(&self) -> Result<TypedQueueSender<T, N>, JoinRingError> {
        Ok(TypedQueueSender { inner: self.queue.sender()?, scratch: Scratch::new(), _t: PhantomData })
    }

    /// A new receiving handle.
    pub fn receiver(&self) -> Result<TypedQueueReceiver<T, N>, JoinRingError> {
        Ok(TypedQueueReceiver { inner: self.queue.receiver()?, _t: PhantomData })
    }

    /// The slot queue underneath. Slots sent through it raw are validated on receipt.
    pub fn as_slots(&self) -> &Queue<[u8; N]> {
        &self.queue
    }

    /// The largest archive a slot takes: `N - 8`.
    pub fn max_message_len(&self) -> usize {
        N - LEN_FIELD
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Values in the queue right now (a snapshot).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue holds no value right now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Counters since the queue was created.
    pub fn stats(&self) -> Stats {
        self.queue.stats()
    }
}

/// The sending side of a [`TypedQueue`]. `Send`, not `Sync` (it keeps its own rkyv arena).
pub struct TypedQueueSender<T: Archivable, const N: usize>
where
    [u8; N]: Pod,
{
    inner: queue::Sender<[u8; N]>,
    scratch: Scratch,
    _t: PhantomData<fn(T)>,
}

impl<T: Archivable, const N: usize> std::fmt::Debug for TypedQueueSender<T, N>
where
    [u8; N]: Pod,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedQueueSender").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<T: Archivable, const N: usize> TypedQueueSender<T, N>
where
    [u8; N]: Pod,
{
    /// Archives `value` straight into a free slot, waiting for one. Fails, handing the value back,
    /// if every receiver is gone, if its archive is larger than `N - 8` bytes (`TooLarge`, both
    /// sizes named), if its `Serialize` fails, or if the queue is broken.
    pub fn send(&self, value: T) -> Result<(), TypedSendError<T>> {
        self.send_until(&value, Until::Forever).map_err(|f| f.with(value))
    }

    /// [`send`](Self::send) if a slot is free now.
    pub fn try_send(&self, value: T) -> Result<(), TypedSendError<T>> {
        self.send_until(&value, Until::Now).map_err(|f| f.with(value))
    }

    /// [`send`](Self::send), waiting at most `timeout` for a free slot.
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), TypedSendError<T>> {
        self.send_until(&value, until(timeout)).map_err(|f| f.with(value))
    }

    /// Archives a borrowed value; the error holds `()`.
    pub fn send_ref(&self, value: &T) -> Result<(), TypedSendError<()>> {
        self.send_until(value, Until::Forever).map_err(|f| f.with(()))
    }

    /// Changes how long this handle spins before parking: see [`queue::Sender::set_spin`].
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.inner.set_spin(spin);
    }

    /// Leaves the queue (same as dropping the handle).
    pub fn close(self) {}

    fn reserve(&self, until: Until) -> Result<queue::SlotWriter<'_, [u8; N]>, Fail> {
        match until {
            Until::Forever => self.inner.reserve().map_err(|e| match e {
                SendError::Broken(_, b) => Fail::Broken(b),
                _ => Fail::Disconnected,
            }),
            Until::Now => self.inner.try_reserve().map_err(|e| match e {
                TrySendError::Full(_) => Fail::Full,
                TrySendError::Broken(_, b) => Fail::Broken(b),
                _ => Fail::Disconnected,
            }),
            Until::Deadline(d) => {
                let left = d.saturating_duration_since(Instant::now());
                self.inner.reserve_timeout(left).map_err(|e| match e {
                    SendTimeoutError::Timeout(_) => Fail::Timeout,
                    SendTimeoutError::LockTimeout { pid, .. } => Fail::LockTimeout(pid),
                    SendTimeoutError::Broken(_, b) => Fail::Broken(b),
                    _ => Fail::Disconnected,
                })
            }
        }
    }

    fn send_until(&self, value: &T, until: Until) -> Result<(), Fail> {
        let mut slot = self.reserve(until)?;
        let (len_field, body) = slot.split_at_mut(LEN_FIELD);
        let base = (body.as_ptr() as usize as u64 % ALIGN_SPAN) as usize;
        match self.scratch.with(|arena| write_into(value, body, base, arena)) {
            super::Written::Done(n) => {
                len_field.copy_from_slice(&(n as u64).to_le_bytes());
                slot.commit();
                Ok(())
            }
            super::Written::Failed(reason) => Err(Fail::Serialize(reason)),
            super::Written::Overflow => {
                // Nothing is published: the slot is given back uncommitted.
                drop(slot);
                let size = self.scratch.with(|arena| measure(value, base, arena)).map_err(Fail::Serialize)?;
                Err(Fail::TooLarge { size, max: N - LEN_FIELD })
            }
        }
    }
}

/// The receiving side of a [`TypedQueue`].
#[derive(Debug)]
pub struct TypedQueueReceiver<T: Archivable, const N: usize>
where
    [u8; N]: Pod,
{
    inner: queue::Receiver<[u8; N]>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Archivable, const N: usize> TypedQueueReceiver<T, N>
where
    [u8; N]: Pod,
{
    /// Changes how long this handle spins before parking: see [`queue::Receiver::set_spin`].
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.inner.set_spin(spin);
    }

    /// Waits for a value and lends it in place, validated; it leaves the queue when the guard drops.
    pub fn recv_archived(&self) -> Result<ArchivedSlot<'_, T, N>, TypedRecvError> {
        ArchivedSlot::validate(self.inner.recv_in_place().map_err(TypedRecvError::from)?)
    }

    /// [`recv_archived`](Self::recv_archived) if a value is there now.
    pub fn try_recv_archived(&self) -> Result<ArchivedSlot<'_, T, N>, TypedRecvError> {
        ArchivedSlot::validate(self.inner.try_recv_in_place().map_err(TypedRecvError::from)?)
    }

    /// [`recv_archived`](Self::recv_archived), waiting at most `timeout`.
    pub fn recv_archived_timeout(&self, timeout: Duration) -> Result<ArchivedSlot<'_, T, N>, TypedRecvError> {
        ArchivedSlot::validate(self.inner.recv_in_place_timeout(timeout).map_err(TypedRecvError::from)?)
    }

    /// Waits for a value and deserializes it (validated first, read in place, then removed).
    pub fn recv(&self) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        self.recv_archived()?.deserialize()
    }

    /// [`recv`](Self::recv) if a value is there now.
    pub fn try_recv(&self) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        self.try_recv_archived()?.deserialize()
    }

    /// [`recv`](Self::recv), waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        self.recv_archived_timeout(timeout)?.deserialize()
    }

    /// Leaves the queue (same as dropping the handle).
    pub fn close(self) {}
}

/// A validated archived value lent where it lies in its slot. Derefs to `Archived<T>`; the slot is
/// freed when the guard drops.
pub struct ArchivedSlot<'a, T: Archive, const N: usize>
where
    [u8; N]: Pod,
{
    guard: SlotReader<'a, [u8; N]>,
    /// The archive's root, inside `guard`'s slot, validated by `rkyv::access`.
    root: NonNull<Archived<T>>,
}

impl<'a, T: Archivable, const N: usize> ArchivedSlot<'a, T, N>
where
    [u8; N]: Pod,
{
    /// Checks the length field against the slot, then validates the archive (bytecheck); on
    /// failure the slot is freed and the reason answered.
    fn validate(guard: SlotReader<'a, [u8; N]>) -> Result<Self, TypedRecvError> {
        let bytes: &[u8; N] = &guard;
        let mut field = [0u8; LEN_FIELD];
        field.copy_from_slice(&bytes[..LEN_FIELD]);
        let len = u64::from_le_bytes(field);
        let body = match usize::try_from(len).ok().and_then(|l| bytes[LEN_FIELD..].get(..l)) {
            Some(body) => body,
            None => {
                let reason = format!("its length field says {len} bytes, the slot holds at most {}", N - LEN_FIELD);
                drop(guard);
                return Err(TypedRecvError::Invalid { len: N, reason });
            }
        };
        let root = match rkyv::access::<Archived<T>, RkyvError>(body) {
            Ok(root) => NonNull::from(root),
            Err(e) => {
                let len = body.len();
                let reason = e.to_string();
                drop(guard);
                return Err(TypedRecvError::Invalid { len, reason });
            }
        };
        Ok(ArchivedSlot { guard, root })
    }

    /// Deserializes an owned `T`, then frees the slot.
    pub fn deserialize(self) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        rkyv::deserialize::<T, RkyvError>(&*self).map_err(|e| TypedRecvError::Deserialize(e.to_string()))
    }

    /// The whole slot's bytes (length field, archive, and whatever follows it).
    pub fn slot(&self) -> &[u8; N] {
        &self.guard
    }
}

impl<T: Archive, const N: usize> std::ops::Deref for ArchivedSlot<'_, T, N>
where
    [u8; N]: Pod,
{
    type Target = Archived<T>;
    fn deref(&self) -> &Archived<T> {
        // SAFETY: `root` was returned by `rkyv::access` (bytecheck validation of every relative
        // pointer, length, tag and alignment, inside the archive's bytes, themselves checked to lie
        // inside the slot) over bytes of the slot `self.guard` lends. The slot lies in the queue's
        // mapping, which the guard keeps alive, at a fixed address, and the guard holds the receive
        // lock: no ringpool process rewrites a published slot before the head moves past it, which
        // happens only when the guard drops (SAFETY.md, ground rule 2). The reference is tied to
        // `&self`.
        unsafe { self.root.as_ref() }
    }
}
