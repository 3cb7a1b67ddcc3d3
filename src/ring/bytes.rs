//! [`Ring`]: byte messages of any length up to the ring's largest, between processes.

use crate::sys::atomic::Ordering;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::control::{Config, FORMAT_BYTES, MAX_MEMBERS, data_offset};
use super::core::{Core, Role, Sticky, bump};
use super::error::{
    Broken, Fail, JoinRingError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use super::records::{record_size, room_needed};
use super::wait::{SpinCell, Wait};
use super::{Stats, debug_pause};
use crate::segment::{Fingerprint, OpenMode, Segment, SegmentBuilder, SegmentError, SegmentKind, Uninit};
use crate::sync::{RobustMutexGuard, SpinPolicy};

/// Most bytes one batch copies under one hold of a lock, so that a batch of big messages does not
/// keep the other members of its side waiting for long.
const BATCH_BYTES: u64 = 256 * 1024;

/// How to create or open a [`Ring`].
///
/// ```no_run
/// use ringpool::Ring;
/// let ring = Ring::builder().capacity(1 << 20).create("jobs")?; // in one process
/// let ring = Ring::builder().open("jobs")?;                      // in another
/// # Ok::<(), ringpool::SegmentError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RingBuilder {
    capacity: usize,
    spin: SpinPolicy,
    max_members: usize,
    permissions: u32,
    open_timeout: Duration,
    allow_foreign_owner: bool,
}

impl Default for RingBuilder {
    fn default() -> Self {
        RingBuilder {
            capacity: 1 << 20,
            spin: SpinPolicy::default(),
            max_members: MAX_MEMBERS,
            permissions: 0o600,
            open_timeout: Duration::from_secs(2),
            allow_foreign_owner: false,
        }
    }
}

impl RingBuilder {
    /// A builder with the defaults: 1 MiB, the default spin, 256 member processes.
    pub fn new() -> RingBuilder {
        RingBuilder::default()
    }

    /// Bytes of message storage, rounded up to a power of two of at least a page. Each message
    /// takes its length rounded up to 8, plus an 8-byte header. Default: 1 MiB.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// How long this process's handles spin before parking (handles can change theirs).
    pub fn spin(mut self, spin: SpinPolicy) -> Self {
        self.spin = spin;
        self
    }

    /// How many processes may hold handles at once (at most 256, the default). Creation only.
    pub fn max_members(mut self, n: usize) -> Self {
        self.max_members = n;
        self
    }

    /// Permission bits of a created named ring. Default `0o600`.
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

    /// Creates the named ring `/dev/shm/<name>`; fails if the name is taken.
    pub fn create(&self, name: &str) -> Result<Ring, SegmentError> {
        self.named(name, OpenMode::CreateNew)
    }

    /// Opens the named ring; fails if there is none.
    pub fn open(&self, name: &str) -> Result<Ring, SegmentError> {
        self.named(name, OpenMode::OpenExisting)
    }

    /// Opens the named ring, creating it if needed.
    pub fn open_or_create(&self, name: &str) -> Result<Ring, SegmentError> {
        self.named(name, OpenMode::OpenOrCreate)
    }

    /// Removes any ring of that name (say, one left by a killed process), then creates it.
    pub fn purge_and_create(&self, name: &str) -> Result<Ring, SegmentError> {
        self.named(name, OpenMode::PurgeAndCreate)
    }

    /// Creates or opens a ring by name, per `mode`.
    pub fn named(&self, name: &str, mode: OpenMode) -> Result<Ring, SegmentError> {
        let cfg = self.config()?;
        let seg = self.segment_builder(&cfg).mode(mode).named(name, |u| init(u, &cfg))?;
        self.wrap(seg)
    }

    /// Creates a ring in anonymous memory (`memfd`): shared with forked children, gone with the
    /// last process that maps it, so a crash leaks nothing.
    pub fn anonymous(&self) -> Result<Ring, SegmentError> {
        let cfg = self.config()?;
        let seg = self.segment_builder(&cfg).anonymous(|u| init(u, &cfg))?;
        self.wrap(seg)
    }

    /// Creates or opens a ring in a file, per `mode`. A symbolic link at `path` is refused
    /// ([`SegmentError::Symlink`]), not followed.
    pub fn file(&self, path: impl AsRef<Path>, mode: OpenMode) -> Result<Ring, SegmentError> {
        let cfg = self.config()?;
        let seg = self.segment_builder(&cfg).mode(mode).file(path, |u| init(u, &cfg))?;
        self.wrap(seg)
    }

    /// Opens a ring from a descriptor of its segment (see [`Segment::fd`]).
    pub fn from_fd(&self, fd: OwnedFd) -> Result<Ring, SegmentError> {
        let seg = SegmentBuilder::new(SegmentKind::Ring, Fingerprint::bytes()).from_fd(fd)?;
        self.wrap(seg)
    }

    fn config(&self) -> Result<Config, SegmentError> {
        let page = crate::sys::page_size() as u64;
        let cap = (self.capacity as u64).max(page);
        let cap = cap
            .checked_next_power_of_two()
            .filter(|&c| c <= 1 << 40)
            .ok_or(SegmentError::InvalidSize("ring capacity above 1 TiB"))?;
        if self.max_members == 0 || self.max_members > MAX_MEMBERS {
            return Err(SegmentError::InvalidSize("max_members must be 1..=256"));
        }
        Ok(Config {
            format: FORMAT_BYTES,
            max_members: self.max_members as u32,
            capacity: cap,
            stride: 8,
            item_size: cap - 16,
            data_offset: data_offset(),
            ring_id: ring_id(),
        })
    }

    fn segment_builder(&self, cfg: &Config) -> SegmentBuilder {
        let b = SegmentBuilder::new(SegmentKind::Ring, Fingerprint::bytes())
            .payload_len((cfg.data_offset + cfg.capacity) as usize)
            .mirror_tail(cfg.capacity as usize)
            .permissions(self.permissions)
            .open_timeout(self.open_timeout);
        if self.allow_foreign_owner { b.allow_foreign_owner() } else { b }
    }

    fn wrap(&self, seg: Segment) -> Result<Ring, SegmentError> {
        let core = Core::from_segment(seg, self.spin).map_err(|reason| SegmentError::Corrupted { reason })?;
        if core.cfg.format != FORMAT_BYTES {
            return Err(SegmentError::Corrupted { reason: "not a byte ring" });
        }
        Ok(Ring { core })
    }

    /// Hook for typed rings (`ring::archive`): makes the segment with `make` from this builder's
    /// segment builder, under the fingerprint `fp` instead of untyped bytes', and wraps it.
    #[cfg(feature = "archive")]
    pub(crate) fn make_typed(
        &self,
        fp: Fingerprint,
        make: impl FnOnce(SegmentBuilder, &Config) -> Result<Segment, SegmentError>,
    ) -> Result<Ring, SegmentError> {
        let cfg = self.config()?;
        let b = SegmentBuilder::new(SegmentKind::Ring, fp)
            .payload_len((cfg.data_offset + cfg.capacity) as usize)
            .mirror_tail(cfg.capacity as usize)
            .permissions(self.permissions)
            .open_timeout(self.open_timeout);
        self.wrap(make(b, &cfg)?)
    }
}

/// Writes a fresh config into a new segment's payload.
pub(crate) fn init(u: &Uninit, cfg: &Config) -> Result<(), SegmentError> {
    if (u.len() as u64) < cfg.data_offset {
        return Err(SegmentError::InvalidSize("payload smaller than the control block"));
    }
    // SAFETY: the payload is page-aligned, zeroed, at least data_offset (> 48) bytes, and nobody
    // else can read it before the segment's ready word is published after this returns.
    unsafe { u.as_ptr().cast::<Config>().as_ptr().write(*cfg) };
    Ok(())
}

/// A per-ring random id (for diagnostics): time and pid mixed.
pub(crate) fn ring_id() -> u64 {
    let t = crate::sys::monotonic_ns() ^ (u64::from(crate::sync::current_pid()) << 40);
    crate::segment::fnv1a(&t.to_le_bytes())
}

/// A ring of byte messages in shared memory, lock-protected, many senders and many receivers
/// in many processes.
///
/// A `Ring` is the mapping; it sends and receives nothing itself. [`sender`](Ring::sender) and
/// [`receiver`](Ring::receiver) make member handles: the ring counts them, per side, so that
/// when every sender is gone (dropped, or its process dead) and the ring is drained, receivers get
/// [`RecvError::Disconnected`], and when every receiver is gone senders get `Disconnected` back with
/// their message.
///
/// Handles are inherited by forked children like file descriptors are: a child holds a copy of
/// every handle its parent held at the fork. Make handles in the process that uses them (from a
/// `Ring`, which is cheap to clone and not counted), or move them into the child.
#[derive(Clone, Debug)]
pub struct Ring {
    core: Arc<Core>,
}

impl Ring {
    /// A builder with the defaults.
    pub fn builder() -> RingBuilder {
        RingBuilder::new()
    }

    /// A byte ring in heap memory, unmirrored (unit tests and the fuzz targets).
    pub(crate) fn on_heap(cfg: Config) -> Result<Ring, &'static str> {
        if cfg.format != FORMAT_BYTES {
            return Err("not a byte ring");
        }
        Ok(Ring { core: Core::on_heap(cfg)? })
    }

    /// The engine under this ring (the fuzz targets fill its memory).
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// A new sending handle.
    ///
    /// It reconnects a ring whose receivers saw `Disconnected` (every earlier sender gone, dropped
    /// or dead): from the moment this call returns, their receives wait for messages again, and
    /// an iterator that ended can be made anew (`rx.iter()`) to yield what this sender sends. A
    /// sender in any process does so, one that opens the ring by name included.
    pub fn sender(&self) -> Result<Sender, JoinRingError> {
        self.core.join_fresh(Role::Sender)?;
        Ok(Sender { core: self.core.clone(), spin: SpinCell::new(self.core.spin()) })
    }

    /// A new receiving handle.
    pub fn receiver(&self) -> Result<Receiver, JoinRingError> {
        self.core.join_fresh(Role::Receiver)?;
        Ok(Receiver { core: self.core.clone(), spin: SpinCell::new(self.core.spin()) })
    }

    /// Bytes of message storage.
    pub fn capacity(&self) -> usize {
        self.core.cfg.capacity as usize
    }

    /// The largest message the ring takes: `capacity - 16`.
    pub fn max_message_len(&self) -> usize {
        self.core.cfg.item_size as usize
    }

    /// Messages in the ring right now (a snapshot).
    pub fn len(&self) -> usize {
        let (s, r) = self.core.counters();
        s.messages.load(Ordering::Relaxed).saturating_sub(r.messages.load(Ordering::Relaxed)) as usize
    }

    /// Whether the ring holds no message right now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in use right now, headers and padding included (a snapshot).
    pub fn used_bytes(&self) -> usize {
        let c = self.core.ctrl();
        let used = c.tail.load(Ordering::Relaxed).saturating_sub(c.head.load(Ordering::Relaxed));
        used.min(self.core.cfg.capacity) as usize
    }

    /// Counters since the ring was created.
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

    /// Test support: makes the send (or receive) lock look held by a dead process whose pid is
    /// now `pid`'s, a live process (pid reuse).
    #[doc(hidden)]
    pub fn debug_forge_dead_owner(&self, send_side: bool, pid: u32) {
        self.core.debug_forge_dead_owner(send_side, pid)
    }

    /// Test support: leaves a member-table entry in transition by process `pid` (joining when
    /// `claiming`, else being reaped), as a process killed in the middle would.
    #[doc(hidden)]
    pub fn debug_forge_transient(&self, claiming: bool, pid: u32) {
        self.core.debug_forge_transient(claiming, pid)
    }

    /// The underlying segment's descriptor (for passing to a re-executed child).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.core.segment_fd()
    }
}

/// The sending side of a [`Ring`]. Clone it for more senders; each counts as one.
#[derive(Debug)]
pub struct Sender {
    core: Arc<Core>,
    spin: SpinCell,
}

/// The receiving side of a [`Ring`]. Clone it for more receivers; each counts as one.
#[derive(Debug)]
pub struct Receiver {
    core: Arc<Core>,
    spin: SpinCell,
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        // Joining can only fail when the member table is full and this process has no entry,
        // which cannot be: this process holds a handle, so it has one.
        let _ = self.core.join(Role::Sender);
        Sender { core: self.core.clone(), spin: self.spin.clone() }
    }
}

impl Clone for Receiver {
    fn clone(&self) -> Self {
        let _ = self.core.join(Role::Receiver);
        Receiver { core: self.core.clone(), spin: self.spin.clone() }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.core.leave(Role::Sender);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.core.leave(Role::Receiver);
    }
}

// Hooks for select and async (ring/select.rs, ring/async_io.rs): the mapping under a handle.
impl Sender {
    pub(crate) fn core_arc(&self) -> &Arc<Core> {
        &self.core
    }
}
impl Receiver {
    pub(crate) fn core_arc(&self) -> &Arc<Core> {
        &self.core
    }
}

impl Sender {
    /// Sends a message, waiting for room. Fails, handing the message back, if every receiver is
    /// gone, if it is longer than [`Ring::max_message_len`], or if the ring is broken.
    pub fn send<M: AsRef<[u8]>>(&self, msg: M) -> Result<(), SendError<M>> {
        self.send_one(msg.as_ref(), Wait::Forever).map_err(|f| f.send(msg))
    }

    /// Sends a message if there is room now.
    pub fn try_send<M: AsRef<[u8]>>(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.send_one(msg.as_ref(), Wait::Try).map_err(|f| f.try_send(msg))
    }

    /// Sends a message, waiting for room at most `timeout`.
    pub fn send_timeout<M: AsRef<[u8]>>(&self, msg: M, timeout: Duration) -> Result<(), SendTimeoutError<M>> {
        self.send_one(msg.as_ref(), Wait::timeout(timeout)).map_err(|f| f.send_timeout(msg))
    }

    /// Sends every message, in order, as few lock holds as room allows (a lock hold copies up to
    /// 256 KiB). On failure the error holds how many were sent.
    pub fn send_many<M: AsRef<[u8]>>(&self, msgs: &[M]) -> Result<(), SendError<usize>> {
        let mut sent = 0;
        while sent < msgs.len() {
            match self.send_batch(&msgs[sent..], Wait::Forever) {
                Ok(n) => sent += n,
                Err(f) => return Err(f.send(sent)),
            }
        }
        Ok(())
    }

    /// Sends as many of `msgs` as fit now, in order, under one lock hold; answers how many.
    pub fn try_send_many<M: AsRef<[u8]>>(&self, msgs: &[M]) -> Result<usize, TrySendError<usize>> {
        if msgs.is_empty() {
            return Ok(0);
        }
        self.send_batch(msgs, Wait::Try).map_err(|f| f.try_send(0))
    }

    /// Reserves room for a message of `len` bytes and hands it out to be written in place; the
    /// message is published by [`WriteGuard::commit`]. Other senders wait meanwhile (the send lock
    /// is held), receivers do not. Dropping the guard uncommitted publishes nothing.
    ///
    /// A reservation of at most 64 bytes is staged in the guard and copied into the ring at
    /// commit, right before the header: writing the line a receiver is polling twice, with the
    /// caller's code in between, costs more than copying 64 bytes (measured: about 3x on 8-byte
    /// messages). Larger reservations are written where they lie in the ring.
    pub fn reserve(&self, len: usize) -> Result<WriteGuard<'_>, SendError<usize>> {
        self.reserve_inner(len, Wait::Forever).map_err(|f| f.send(len))
    }

    /// [`reserve`](Self::reserve) if there is room now.
    pub fn try_reserve(&self, len: usize) -> Result<WriteGuard<'_>, TrySendError<usize>> {
        self.reserve_inner(len, Wait::Try).map_err(|f| f.try_send(len))
    }

    /// [`reserve`](Self::reserve), waiting at most `timeout`.
    pub fn reserve_timeout(&self, len: usize, timeout: Duration) -> Result<WriteGuard<'_>, SendTimeoutError<usize>> {
        self.reserve_inner(len, Wait::timeout(timeout)).map_err(|f| f.send_timeout(len))
    }

    /// Changes how long this handle spins before parking, for its later waits (a wait under way
    /// keeps the policy it began with). Only this handle: its clones made earlier, and other
    /// handles, keep theirs; a clone made later starts with this one's. Takes `&self`, so a
    /// handle shared between threads can be tuned while in use.
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.spin.set(spin);
    }

    /// Leaves the ring (same as dropping the handle).
    pub fn close(self) {}

    /// The ring this handle belongs to.
    pub fn ring(&self) -> Ring {
        Ring { core: self.core.clone() }
    }

    /// Takes the send lock with room for `need` bytes. Returns the guard, the tail and the free
    /// bytes (at least `need`, at most the capacity; `tail + capacity` does not wrap).
    #[inline]
    fn lock_with_room(&self, need: u64, wait: Wait) -> Result<(RobustMutexGuard<'_>, u64, u64), Fail> {
        let core = &*self.core;
        core.lock_for_send(self.spin.get(), wait, need, need, || core.repair_bytes_send())
    }

    #[inline]
    fn send_one(&self, msg: &[u8], wait: Wait) -> Result<(), Fail> {
        self.send_one_in(msg, wait, None)
    }

    /// Sends one message, with the lock a solo handle keeps when `solo` is given.
    #[inline(always)]
    fn send_one_in(&self, msg: &[u8], wait: Wait, solo: Option<&mut Sticky>) -> Result<(), Fail> {
        let core = &*self.core;
        if msg.len() as u64 > core.cfg.item_size {
            return Err(core.too_large(msg.len()));
        }
        let need = room_needed(msg.len());
        let (guard, tail, solo) = match solo {
            None => {
                let (g, tail, _) = self.lock_with_room(need, wait)?;
                (Some(g), tail, None)
            }
            Some(st) => {
                let (g, tail, _) =
                    core.lock_for_send_solo(st, self.spin.get(), wait, need, need, || core.repair_bytes_send())?;
                (g, tail, Some(st))
            }
        };
        // SAFETY: `tail + 8 .. tail + 8 + len` is inside the room just checked against the head,
        // beyond the published tail, and we hold the send lock: no one else reads or writes it.
        unsafe { core.write_bytes(tail + 8, msg) };
        debug_pause();
        core.publish_record(tail, msg.len());
        // Published, the tail not yet moved: a death here is rolled forward by the repair.
        debug_pause();
        let c = core.ctrl();
        c.tail.store(tail + record_size(msg.len()), Ordering::Release);
        bump(&c.send.messages, 1);
        bump(&c.send.bytes, msg.len() as u64);
        match (solo, guard) {
            (Some(st), guard) => core.finish_solo(&c.send, st, guard, &c.not_empty, 1),
            (None, Some(guard)) => core.unlock_and_notify(guard, &c.not_empty, 1),
            (None, None) => {}
        }
        Ok(())
    }

    fn send_batch<M: AsRef<[u8]>>(&self, msgs: &[M], wait: Wait) -> Result<usize, Fail> {
        let core = &*self.core;
        let first = msgs[0].as_ref();
        if first.len() as u64 > core.cfg.item_size {
            return Err(core.too_large(first.len()));
        }
        let (guard, tail, free) = self.lock_with_room(room_needed(first.len()), wait)?;
        let c = core.ctrl();
        let cap = core.cfg.capacity;
        // The end of the room that is ours: `tail + free <= head + capacity`, checked under the
        // lock (no wrap: lock_for_send bounds the tail). It only moves forward as receivers read.
        let mut end = tail + free;
        // Take the batch's lines back from the receivers' cores together (within our free room).
        // The caller's lengths are clamped before summing: only what can fit matters.
        let want = msgs
            .iter()
            .take(64)
            .fold(0u64, |sum, m| sum.saturating_add(room_needed(m.as_ref().len().min(cap as usize))));
        core.prefetch_for_write(tail, tail + want.min(free));
        // SAFETY: as in send_one: room for the first record was checked under the send lock.
        unsafe { core.write_bytes(tail + 8, first) };
        let mut at = tail + record_size(first.len());
        let (mut n, mut bytes) = (1usize, first.len() as u64);
        for m in &msgs[1..] {
            let m = m.as_ref();
            if m.len() as u64 > core.cfg.item_size || bytes + m.len() as u64 > BATCH_BYTES {
                break;
            }
            // at <= end <= tail + capacity, and the room is at most the capacity: no wrap.
            let room = room_needed(m.len());
            if at + room > end {
                // The cached head may be stale: look at the real one before giving up. Under
                // the send lock it lies between the previous head and our tail, or the ring is
                // garbage (then stop here; the next operation reports it).
                let head = c.head.load(Ordering::Acquire);
                match tail.checked_sub(head) {
                    Some(used) if used <= cap && head + cap >= end => {
                        c.send.cached.store(head, Ordering::Relaxed);
                        end = head + cap;
                    }
                    _ => break,
                }
                if at + room > end {
                    break;
                }
            }
            // SAFETY: room for this record (and its marker) was just checked against the head we
            // read under the lock; the head only moves forward, so the room is still ours.
            unsafe { core.write_bytes(at + 8, m) };
            core.stage_record(at, m.len());
            at += record_size(m.len());
            n += 1;
            bytes += m.len() as u64;
        }
        debug_pause();
        // The marker after the last record, then the first header: its Release publishes all.
        core.word_at(at & core.mask).store(0, Ordering::Relaxed);
        core.word_at(tail & core.mask).store(super::records::header(tail, first.len()), Ordering::Release);
        debug_pause();
        c.tail.store(at, Ordering::Release);
        bump(&c.send.messages, n as u64);
        bump(&c.send.bytes, bytes);
        core.unlock_and_notify(guard, &c.not_empty, n as u32);
        Ok(n)
    }

    fn reserve_inner(&self, len: usize, wait: Wait) -> Result<WriteGuard<'_>, Fail> {
        let core = &*self.core;
        if len as u64 > core.cfg.item_size {
            return Err(core.too_large(len));
        }
        if !core.mirrored {
            return Err(Fail::Broken(Broken::Corrupted("in-place access needs a mirrored ring")));
        }
        let (guard, tail, _) = self.lock_with_room(room_needed(len), wait)?;
        Ok(WriteGuard { sender: self, guard: Some(guard), tail, len, staged: [0; STAGED] })
    }
}

/// Reservations up to this size are staged in the guard (see [`Sender::reserve`]).
const STAGED: usize = 64;

/// Room for one message, reserved in the ring and written in place. See [`Sender::reserve`].
#[derive(Debug)]
pub struct WriteGuard<'a> {
    sender: &'a Sender,
    guard: Option<RobustMutexGuard<'a>>,
    tail: u64,
    len: usize,
    /// A small reservation's bytes, until commit.
    staged: [u8; STAGED],
}

impl WriteGuard<'_> {
    /// Publishes the whole reserved message.
    pub fn commit(self) {
        let len = self.len;
        self.commit_len(len);
    }

    /// Publishes only the first `len` bytes (at most the reserved length).
    pub fn commit_len(mut self, len: usize) {
        if !self.guard.as_ref().is_some_and(|g| g.held_here()) {
            // A copy of the guard in a forked child: the lock and the ring are the parent's.
            return;
        }
        let len = len.min(self.len);
        let core = &*self.sender.core;
        let c = core.ctrl();
        if self.len <= STAGED {
            // SAFETY: as in Sender::send_one: the reserved bytes lie past the published tail,
            // inside the room checked under the send lock, which this guard still holds.
            unsafe { core.write_bytes(self.tail + 8, &self.staged[..len]) };
        }
        core.publish_record(self.tail, len);
        debug_pause();
        c.tail.store(self.tail + record_size(len), Ordering::Release);
        bump(&c.send.messages, 1);
        bump(&c.send.bytes, len as u64);
        if let Some(g) = self.guard.take() {
            core.unlock_and_notify(g, &c.not_empty, 1);
        }
    }

    /// Hook for `ring::archive`: the ring index of the reserved bytes' first byte. The data region
    /// is page-aligned, so its value modulo the page size is the bytes' address modulo the page
    /// size, in every process, staged or not.
    #[cfg(feature = "archive")]
    pub(crate) fn ring_index(&self) -> u64 {
        self.tail + 8
    }
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len <= STAGED {
            return &self.staged[..self.len];
        }
        let core = &*self.sender.core;
        // SAFETY: the reserved bytes start at tail + 8 (masked) and run `len` <= capacity - 16
        // bytes, inside the data region and its mirror (reserve requires a mirrored ring). We hold
        // the send lock and the bytes lie beyond the published tail: no other process writes or
        // reads them until we publish, which consumes this guard.
        unsafe { std::slice::from_raw_parts(core.at(self.tail + 8), self.len) }
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.len <= STAGED {
            return &mut self.staged[..self.len];
        }
        let core = &*self.sender.core;
        // SAFETY: as in deref; `&mut self` makes this the only reference into the reservation.
        unsafe { std::slice::from_raw_parts_mut(core.at(self.tail + 8), self.len) }
    }
}

impl Receiver {
    /// Receives a message, waiting for one. Fails with `Disconnected` once the ring is empty and
    /// every sender is gone.
    pub fn recv(&self) -> Result<Vec<u8>, RecvError> {
        self.recv_one(Wait::Forever, <[u8]>::to_vec).map_err(Fail::recv)
    }

    /// Receives a message if there is one now.
    pub fn try_recv(&self) -> Result<Vec<u8>, TryRecvError> {
        self.recv_one(Wait::Try, <[u8]>::to_vec).map_err(Fail::try_recv)
    }

    /// Receives a message, waiting at most `timeout` (never less).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        self.recv_one(Wait::timeout(timeout), <[u8]>::to_vec).map_err(Fail::recv_timeout)
    }

    /// Receives a message into `buf` (cleared first), reusing its allocation. Answers the length.
    pub fn recv_into(&self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.recv_one(Wait::Forever, |m| {
            buf.clear();
            buf.extend_from_slice(m);
            m.len()
        })
        .map_err(Fail::recv)
    }

    /// Hands the next message to `f` where it lies in the ring (no copy), then removes it.
    /// Other receivers wait while `f` runs.
    ///
    /// The message is consumed once it is handed to `f`: if `f` panics, the panic goes on to the
    /// caller, the message is gone (never delivered again, as a received message is the
    /// receiver's in crossbeam-channel too), and the ring is left consistent and unlocked (not
    /// poisoned). Copy what you must keep before doing anything that can panic.
    pub fn recv_with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.recv_one(Wait::Forever, f).map_err(Fail::recv)
    }

    /// [`recv_with`](Self::recv_with) if a message is there now.
    pub fn try_recv_with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, TryRecvError> {
        self.recv_one(Wait::Try, f).map_err(Fail::try_recv)
    }

    /// [`recv_with`](Self::recv_with), waiting at most `timeout`.
    pub fn recv_with_timeout<R>(&self, timeout: Duration, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvTimeoutError> {
        self.recv_one(Wait::timeout(timeout), f).map_err(Fail::recv_timeout)
    }

    /// Waits for at least one message, then hands up to `max` to `f` in place under one lock hold.
    /// Answers how many.
    ///
    /// Each message is consumed once it is handed to `f`: if `f` panics, the messages it was
    /// handed, the one it panicked on included, are gone, the rest stay in the ring, and the ring
    /// is left consistent and unlocked (see [`recv_with`](Self::recv_with)).
    pub fn recv_many(&self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        self.recv_batch(max, Wait::Forever, f).map_err(Fail::recv)
    }

    /// [`recv_many`](Self::recv_many) without waiting; `Empty` if there is nothing.
    pub fn try_recv_many(&self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, TryRecvError> {
        self.recv_batch(max, Wait::Try, f).map_err(Fail::try_recv)
    }

    /// [`recv_many`](Self::recv_many), waiting at most `timeout` for the first message.
    pub fn recv_many_timeout(
        &self,
        max: usize,
        timeout: Duration,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, RecvTimeoutError> {
        self.recv_batch(max, Wait::timeout(timeout), f).map_err(Fail::recv_timeout)
    }

    /// Waits for a message and lends it in place; it leaves the ring when the guard drops. Other
    /// receivers wait meanwhile. If this process dies holding the guard, the message stays in the
    /// ring for the next receiver; if the guard is dropped by a panic's unwinding, the message is
    /// consumed, as with [`recv_with`](Self::recv_with).
    pub fn recv_in_place(&self) -> Result<ReadGuard<'_>, RecvError> {
        self.in_place(Wait::Forever).map_err(Fail::recv)
    }

    /// [`recv_in_place`](Self::recv_in_place) if a message is there now.
    pub fn try_recv_in_place(&self) -> Result<ReadGuard<'_>, TryRecvError> {
        self.in_place(Wait::Try).map_err(Fail::try_recv)
    }

    /// [`recv_in_place`](Self::recv_in_place), waiting at most `timeout`.
    pub fn recv_in_place_timeout(&self, timeout: Duration) -> Result<ReadGuard<'_>, RecvTimeoutError> {
        self.in_place(Wait::timeout(timeout)).map_err(Fail::recv_timeout)
    }

    /// Changes how long this handle spins before parking, for its later waits (a wait under way
    /// keeps the policy it began with). Only this handle: its clones made earlier, and other
    /// handles, keep theirs; a clone made later starts with this one's. Takes `&self`, so a
    /// handle shared between threads can be tuned while in use.
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.spin.set(spin);
    }

    /// Leaves the ring (same as dropping the handle).
    pub fn close(self) {}

    /// The ring this handle belongs to.
    pub fn ring(&self) -> Ring {
        Ring { core: self.core.clone() }
    }

    /// Takes the receive lock with a record at the head. Returns the guard, the head and the
    /// record's length.
    #[inline]
    fn lock_with_record(&self, wait: Wait) -> Result<(RobustMutexGuard<'_>, u64, usize), Fail> {
        let core = &*self.core;
        core.lock_for_recv(self.spin.get(), wait, || core.repair_bytes_recv(), |i| core.probe_record(i))
    }

    #[inline]
    fn recv_one<R>(&self, wait: Wait, f: impl FnOnce(&[u8]) -> R) -> Result<R, Fail> {
        self.recv_one_in(wait, None, f)
    }

    /// Receives one message, with the lock a solo handle keeps when `solo` is given.
    #[inline(always)]
    fn recv_one_in<R>(&self, wait: Wait, solo: Option<&mut Sticky>, f: impl FnOnce(&[u8]) -> R) -> Result<R, Fail> {
        let core = &*self.core;
        let (guard, head, len, solo) = match solo {
            None => {
                let (g, head, len) = self.lock_with_record(wait)?;
                (Some(g), head, len, None)
            }
            Some(st) => {
                let probe = |i| core.probe_record(i);
                let (g, head, len) =
                    core.lock_for_recv_solo(st, self.spin.get(), wait, || core.repair_bytes_recv(), probe)?;
                (g, head, len, Some(st))
            }
        };
        let mut tmp = Vec::new();
        let msg = if core.mirrored {
            // SAFETY: the record at `head` is published (its header was acquired) and we hold the
            // receive lock, so until we move the head no sender writes these bytes and no other
            // receiver moves past them. With the mirror, head + 8 + len < 2 capacity is mapped.
            unsafe { std::slice::from_raw_parts(core.at(head + 8), len) }
        } else {
            tmp.resize(len, 0);
            // SAFETY: as above; the copy handles the wrap.
            unsafe { core.read_bytes(head + 8, &mut tmp) };
            &tmp[..]
        };
        // From here on the message is taken: `done` moves the head past it and releases the lock
        // when it drops, after `f` returns or while `f` unwinds.
        let mut done = Taking::with(core, guard, head);
        done.solo = solo;
        done.take(msg);
        Ok(f(msg))
    }

    fn recv_batch(&self, max: usize, wait: Wait, mut f: impl FnMut(&[u8])) -> Result<usize, Fail> {
        if max == 0 {
            return Ok(0);
        }
        let core = &*self.core;
        let (guard, head, mut len) = self.lock_with_record(wait)?;
        let start = head;
        let mut done = Taking::new(core, guard, head);
        let mut tmp = Vec::new();
        loop {
            let msg = if core.mirrored {
                // SAFETY: as in recv_one: a published record under the receive lock.
                unsafe { std::slice::from_raw_parts(core.at(done.head + 8), len) }
            } else {
                tmp.resize(len, 0);
                // SAFETY: as in recv_one.
                unsafe { core.read_bytes(done.head + 8, &mut tmp) };
                &tmp[..]
            };
            // Taken before `f` sees it: a panic in `f` consumes it (and the ones before it).
            done.take(msg);
            f(msg);
            if done.n == max || done.bytes >= BATCH_BYTES {
                break;
            }
            match core.probe_record(done.head) {
                // One batch never walks more than a capacity: what lies between head and tail
                // (forged headers with stamps of a later lap included) is at most that much.
                Ok(Some(l)) if done.head - start + record_size(l) <= core.cfg.capacity => len = l,
                // The end of what is published (or garbage, which the next receive reports).
                _ => break,
            }
        }
        Ok(done.n)
    }

    fn in_place(&self, wait: Wait) -> Result<ReadGuard<'_>, Fail> {
        if !self.core.mirrored {
            return Err(Fail::Broken(Broken::Corrupted("in-place access needs a mirrored ring")));
        }
        let (guard, head, len) = self.lock_with_record(wait)?;
        Ok(ReadGuard { receiver: self, guard: Some(guard), head, len })
    }

    /// Receives the next message into `buf`, waiting for one, and answers its length; allocates
    /// nothing. `Disconnected` once the ring is empty and every sender is gone.
    ///
    /// If the message is longer than `buf`, **nothing is received**: the call fails with
    /// [`BufferTooSmall`](crate::ring::RecvIntoSliceError::BufferTooSmall), which names both
    /// lengths, and the message stays at the head of the ring, for a next call with a buffer of at
    /// least `needed` bytes (or for [`recv`](Self::recv)). Calling again with the same short
    /// buffer fails again.
    pub fn recv_into_slice(&self, buf: &mut [u8]) -> Result<usize, crate::ring::RecvIntoSliceError> {
        use crate::ring::RecvIntoSliceError;
        let core = &*self.core;
        let (guard, head, len) = self.lock_with_record(Wait::Forever).map_err(RecvIntoSliceError::from_fail)?;
        let buf_len = buf.len();
        let Some(dst) = buf.get_mut(..len) else {
            // The head is not moved: the record stays published for the next receive.
            drop(guard);
            return Err(RecvIntoSliceError::BufferTooSmall { needed: len, buf_len });
        };
        // SAFETY: the record at `head` is published (lock_with_record acquired its header, whose
        // length it checked against the ring's largest message) and we hold the receive lock, so
        // no sender writes these bytes until we move the head; `dst` is exactly `len` bytes.
        unsafe { core.read_bytes(head + 8, dst) };
        debug_pause();
        let c = core.ctrl();
        c.head.store(head + record_size(len), Ordering::Release);
        bump(&c.recv.messages, 1);
        bump(&c.recv.bytes, len as u64);
        core.unlock_and_notify(guard, &c.not_full, u32::MAX);
        Ok(len)
    }
}

// ----- solo handles ----------------------------------------------------------------------------

impl Ring {
    /// A new sending handle that keeps the send lock between messages: see [`SoloSender`].
    pub fn solo_sender(&self) -> Result<SoloSender, JoinRingError> {
        self.sender().map(Sender::into_solo)
    }

    /// A new receiving handle that keeps the receive lock between messages: see [`SoloReceiver`].
    pub fn solo_receiver(&self) -> Result<SoloReceiver, JoinRingError> {
        self.receiver().map(Receiver::into_solo)
    }
}

impl Sender {
    /// This handle as a [`SoloSender`].
    pub fn into_solo(self) -> SoloSender {
        SoloSender { sticky: Sticky::default(), sender: self, _thread: PhantomData }
    }
}

impl Receiver {
    /// This handle as a [`SoloReceiver`].
    pub fn into_solo(self) -> SoloReceiver {
        SoloReceiver { sticky: Sticky::default(), receiver: self, _thread: PhantomData }
    }
}

/// A sender that keeps the send lock from one message to the next, for the commonest case of one
/// sender: a message then costs no locked instruction (no `lock cmpxchg` waiting for the line the
/// receiver has just read), where a [`Sender`] takes and frees the lock per message.
///
/// Nothing is given up for it. Other senders (of any process) may still send: one that finds the
/// lock kept asks for it, and gets it when this handle's next send ends (or when this handle is
/// dropped, or waits for room: a waiting solo sender never holds the lock). If this handle stays
/// idle, a sender of another process that waited one 2 ms slice (or a `try_send`) takes the lock
/// from it, never in the middle of a send; this handle finds out at its next send and takes the
/// lock again. After a hand-over this handle takes the lock per message for a while. A solo
/// sender killed at any point is found
/// dead and its lock taken over and the ring repaired, exactly as for a [`Sender`]. Its sends take
/// `&mut self`, and the handle stays on the thread that made it (it is neither `Send` nor
/// `Sync`: move the [`Sender`] and call [`Sender::into_solo`] there), so the thread that keeps the
/// lock is known: an ordinary handle used by that same thread, which would otherwise wait for
/// itself, gives the hold up on the solo handle's behalf.
///
/// The price is on the waiting side: a receiver that parks while a solo sender keeps the lock
/// runs one `membarrier(2)` system call first (about a microsecond). Where the kernel refuses
/// `membarrier`, the handle behaves as a [`Sender`].
#[derive(Debug)]
pub struct SoloSender {
    sticky: Sticky,
    sender: Sender,
    /// Neither `Send` nor `Sync`: see above.
    _thread: PhantomData<*const ()>,
}

impl SoloSender {
    /// Sends a message, waiting for room: see [`Sender::send`].
    #[inline]
    pub fn send<M: AsRef<[u8]>>(&mut self, msg: M) -> Result<(), SendError<M>> {
        self.sender.send_one_in(msg.as_ref(), Wait::Forever, Some(&mut self.sticky)).map_err(|f| f.send(msg))
    }

    /// Sends a message if there is room now: see [`Sender::try_send`].
    #[inline]
    pub fn try_send<M: AsRef<[u8]>>(&mut self, msg: M) -> Result<(), TrySendError<M>> {
        self.sender.send_one_in(msg.as_ref(), Wait::Try, Some(&mut self.sticky)).map_err(|f| f.try_send(msg))
    }

    /// Sends a message, waiting at most `timeout` for room: see [`Sender::send_timeout`].
    pub fn send_timeout<M: AsRef<[u8]>>(&mut self, msg: M, timeout: Duration) -> Result<(), SendTimeoutError<M>> {
        self.sender
            .send_one_in(msg.as_ref(), Wait::timeout(timeout), Some(&mut self.sticky))
            .map_err(|f| f.send_timeout(msg))
    }

    /// Changes how long this handle spins before parking: see [`Sender::set_spin`].
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.sender.set_spin(spin);
    }

    /// Gives the kept lock up now (a later send takes it again).
    pub fn release(&mut self) {
        let core = &*self.sender.core;
        core.release_sticky(&core.ctrl().send, &mut self.sticky);
    }

    /// The ordinary handle underneath, for what a solo sender does not do itself (batches,
    /// reservations): the kept lock is given up first.
    pub fn as_sender(&mut self) -> &Sender {
        self.release();
        &self.sender
    }
}

impl Drop for SoloSender {
    fn drop(&mut self) {
        self.release();
    }
}

/// A receiver that keeps the receive lock from one message to the next: the receiving twin of
/// [`SoloSender`], with the same guarantees (other receivers get the lock at this handle's next
/// receive; a receiver that waits for data gives it up first; a killed one is repaired as always;
/// it stays on the thread that made it).
#[derive(Debug)]
pub struct SoloReceiver {
    sticky: Sticky,
    receiver: Receiver,
    /// Neither `Send` nor `Sync` (see [`SoloSender`]).
    _thread: PhantomData<*const ()>,
}

impl SoloReceiver {
    /// Receives a message and hands it to `f` in place: see [`Receiver::recv_with`].
    #[inline]
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.receiver.recv_one_in(Wait::Forever, Some(&mut self.sticky), f).map_err(Fail::recv)
    }

    /// [`recv_with`](Self::recv_with) without waiting.
    #[inline]
    pub fn try_recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, TryRecvError> {
        self.receiver.recv_one_in(Wait::Try, Some(&mut self.sticky), f).map_err(Fail::try_recv)
    }

    /// [`recv_with`](Self::recv_with), waiting at most `timeout`.
    pub fn recv_with_timeout<R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RecvTimeoutError> {
        self.receiver.recv_one_in(Wait::timeout(timeout), Some(&mut self.sticky), f).map_err(Fail::recv_timeout)
    }

    /// Receives a message into a new vector.
    pub fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        self.recv_with(<[u8]>::to_vec)
    }

    /// Changes how long this handle spins before parking: see [`Receiver::set_spin`].
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.receiver.set_spin(spin);
    }

    /// Gives the kept lock up now (a later receive takes it again).
    pub fn release(&mut self) {
        let core = &*self.receiver.core;
        core.release_sticky(&core.ctrl().recv, &mut self.sticky);
    }

    /// The ordinary handle underneath (the kept lock is given up first).
    pub fn as_receiver(&mut self) -> &Receiver {
        self.release();
        &self.receiver
    }
}

impl Drop for SoloReceiver {
    fn drop(&mut self) {
        self.release();
    }
}

/// The messages one receive call has taken, under the receive lock. Dropping it moves the head
/// past them and releases the lock: after the caller's closure returns, and also while it unwinds
/// from a panic, so a message handed to the caller is consumed exactly once whatever the closure
/// does (as in crossbeam-channel: a received message is the receiver's), and the lock is released
/// normally (not poisoned: the ring is consistent).
struct Taking<'a> {
    core: &'a Core,
    guard: Option<RobustMutexGuard<'a>>,
    /// A solo handle's kept lock: `guard` is `None` while it is kept.
    solo: Option<&'a mut Sticky>,
    hook: Option<fn(&[u8])>,
    /// The index after the last message taken.
    head: u64,
    n: usize,
    bytes: u64,
}

impl<'a> Taking<'a> {
    #[inline(always)]
    fn new(core: &'a Core, guard: RobustMutexGuard<'a>, head: u64) -> Taking<'a> {
        Taking::with(core, Some(guard), head)
    }

    #[inline(always)]
    fn with(core: &'a Core, guard: Option<RobustMutexGuard<'a>>, head: u64) -> Taking<'a> {
        Taking { core, guard, solo: None, hook: super::receive_hook(), head, n: 0, bytes: 0 }
    }

    /// Takes the record at `self.head`, whose payload is `msg`.
    #[inline(always)]
    fn take(&mut self, msg: &[u8]) {
        if let Some(hook) = self.hook {
            hook(msg);
        }
        self.head += record_size(msg.len());
        self.n += 1;
        self.bytes += msg.len() as u64;
    }
}

impl Drop for Taking<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        debug_pause();
        let c = self.core.ctrl();
        c.head.store(self.head, Ordering::Release);
        bump(&c.recv.messages, self.n as u64);
        bump(&c.recv.bytes, self.bytes);
        match (self.solo.take(), self.guard.take()) {
            (Some(st), guard) => self.core.finish_solo(&c.recv, st, guard, &c.not_full, u32::MAX),
            (None, Some(g)) => self.core.unlock_and_notify(g, &c.not_full, u32::MAX),
            (None, None) => {}
        }
    }
}

/// A message lent in place. See [`Receiver::recv_in_place`].
#[derive(Debug)]
pub struct ReadGuard<'a> {
    receiver: &'a Receiver,
    guard: Option<RobustMutexGuard<'a>>,
    head: u64,
    len: usize,
}

impl std::ops::Deref for ReadGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let core = &*self.receiver.core;
        // SAFETY: see Receiver::recv_one: a published record, held under the receive lock until
        // this guard drops; the ring is mirrored (checked in `in_place`).
        unsafe { std::slice::from_raw_parts(core.at(self.head + 8), self.len) }
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        if !self.guard.as_ref().is_some_and(|g| g.held_here()) {
            // A copy of the guard in a forked child: the lock and the ring are the parent's.
            return;
        }
        let core = &*self.receiver.core;
        super::debug_taken(self);
        debug_pause();
        let c = core.ctrl();
        c.head.store(self.head + record_size(self.len), Ordering::Release);
        bump(&c.recv.messages, 1);
        bump(&c.recv.bytes, self.len as u64);
        if let Some(g) = self.guard.take() {
            core.unlock_and_notify(g, &c.not_full, u32::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The byte ring's record and index logic on heap memory (no mirror: wrapped records take the
    //! two-piece copy path), against a `VecDeque`. Small enough to run under Miri:
    //! `cargo +nightly miri test --lib ring::bytes::tests`.

    use std::collections::VecDeque;

    use super::*;

    fn heap_ring(cap: u64) -> Ring {
        let cfg = Config {
            format: FORMAT_BYTES,
            max_members: 4,
            capacity: cap,
            stride: 8,
            item_size: cap - 16,
            data_offset: data_offset(),
            ring_id: 1,
        };
        Ring::on_heap(cfg).unwrap()
    }

    #[test]
    fn heap_ring_matches_vecdeque_through_wraps() {
        let ring = heap_ring(4096);
        let tx = ring.sender().unwrap();
        let rx = ring.receiver().unwrap();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut used = 0u64;
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let ops = if cfg!(miri) { 400 } else { 20_000 };
        for step in 0..ops {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = match x % 10 {
                0 => (x >> 8) as usize % 4081,
                1..=4 => (x >> 8) as usize % 64,
                _ => (x >> 8) as usize % 700,
            };
            if x % 3 != 0 {
                let msg: Vec<u8> = (0..len).map(|k| (k as u64 ^ step) as u8).collect();
                let fits = used + record_size(len) + 8 <= 4096;
                match tx.try_send(&msg) {
                    Ok(()) => {
                        assert!(fits);
                        used += record_size(len);
                        model.push_back(msg);
                    }
                    Err(TrySendError::Full(_)) => assert!(!fits),
                    Err(e) => panic!("{e}"),
                }
            } else if x % 2 == 0 {
                match rx.try_recv() {
                    Ok(m) => {
                        let want = model.pop_front().unwrap();
                        used -= record_size(want.len());
                        assert_eq!(m, want);
                    }
                    Err(TryRecvError::Empty) => assert!(model.is_empty()),
                    Err(e) => panic!("{e}"),
                }
            } else {
                let mut got = Vec::new();
                match rx.try_recv_many(3, |m| got.push(m.to_vec())) {
                    Ok(n) => {
                        assert_eq!(n, got.len());
                        for m in got {
                            let want = model.pop_front().unwrap();
                            used -= record_size(want.len());
                            assert_eq!(m, want);
                        }
                    }
                    Err(TryRecvError::Empty) => assert!(model.is_empty()),
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(ring.used_bytes() as u64, used);
        }
        // In-place access needs the mirror, which heap memory does not have: refused, not wrong.
        assert!(matches!(tx.try_reserve(8), Err(TrySendError::Broken(..))));
    }

    /// What a sender killed inside a batch leaves in the byte ring (payloads and the staged headers
    /// of its later records, not the first header, the commit) is never received: the zero
    /// marker at the tail ends the chain of headers before any of it, whatever lengths the next
    /// messages have. The same for an in-place reservation dropped after writing junk that looks
    /// like headers.
    #[test]
    fn leftovers_of_a_dead_batch_are_never_received() {
        let ring = heap_ring(4096);
        let tx = ring.sender().unwrap();
        let rx = ring.receiver().unwrap();
        let core = &*ring.core;
        for len in [0usize, 1, 8, 24, 40] {
            tx.try_send(vec![9u8; 100]).unwrap();
            assert_eq!(rx.try_recv().unwrap(), vec![9u8; 100]);
            // The dead batch: records of 16 bytes from the tail, headers staged from the second on.
            let tail = core.ctrl().tail.load(Ordering::Relaxed);
            for k in 1..6u64 {
                let at = tail + k * record_size(16);
                // SAFETY: test-only: free space beyond the tail, nobody else uses the ring.
                unsafe { core.write_bytes(at + 8, &[7u8; 16]) };
                core.stage_record(at, 16);
            }
            core.repair_bytes_send().unwrap();
            assert_eq!(core.ctrl().tail.load(Ordering::Relaxed), tail, "nothing was published");
            let msg = vec![len as u8; len];
            tx.try_send(&msg).unwrap();
            let mut got = Vec::new();
            assert_eq!(rx.try_recv_many(16, |m| got.push(m.to_vec())).unwrap(), 1);
            assert_eq!(got, [msg]);
            assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
            assert_eq!(ring.used_bytes(), 0);
        }
    }

    /// A message handed to a closure that panics is consumed (not delivered again), and the ring
    /// stays usable: the head moved, the lock was released, not poisoned.
    #[test]
    fn a_panicking_closure_consumes_what_it_was_handed() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let ring = heap_ring(4096);
        let tx = ring.sender().unwrap();
        let rx = ring.receiver().unwrap();
        for m in [&b"one"[..], b"two", b"three", b"four", b"five", b"six"] {
            tx.try_send(m).unwrap();
        }
        let r = catch_unwind(AssertUnwindSafe(|| rx.try_recv_with(|_| panic!("the caller's closure panics"))));
        assert!(r.is_err(), "the panic reaches the caller");
        assert_eq!(rx.try_recv().unwrap(), b"two", "the message handed to the panicking closure is gone");
        // A batch: the closure panics on its second message; the first two are consumed.
        let mut seen = Vec::new();
        let r = catch_unwind(AssertUnwindSafe(|| {
            rx.try_recv_many(10, |m| {
                seen.push(m.to_vec());
                assert!(seen.len() < 2, "the caller's closure panics");
            })
        }));
        assert!(r.is_err());
        assert_eq!(seen, [b"three".to_vec(), b"four".to_vec()]);
        assert_eq!(rx.try_recv().unwrap(), b"five");
        assert_eq!(ring.stats().received, 5, "the counters count what was consumed");
        // The lock is free (not poisoned) and the ring consistent.
        tx.try_send(b"seven").unwrap();
        assert_eq!(rx.try_recv().unwrap(), b"six");
        assert_eq!(rx.try_recv().unwrap(), b"seven");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(ring.used_bytes(), 0);
    }
}
