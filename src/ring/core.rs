//! The engine both record formats share: the mapped control block, the two locks and their
//! recovery, waiting for room or for data, and waking.
//!
//! The ring has **two** robust locks, one per side. Senders serialize among themselves on the send
//! lock, receivers on the receive lock; a sender and a receiver never contend. A sender publishes
//! a record by storing its header (the record's commit word) with Release, after the payload; a
//! receiver sees the header with Acquire and then reads the payload. The indices `tail` and `head`
//! are published too, but the other side reads them only when the ring looks full (senders) or
//! empty (receivers), so in a steady stream only the records' own cache lines travel between cores.
//!
//! Why two locks instead of the one of `../shared/DESIGN.md`: with one lock, the lock word, the
//! indices and the data all bounce between producer and consumer on every message (the prototype
//! lost 40% to one shared line alone); with two, each lock word stays in its side's cache.
//! Every property the design asks of the lock still holds: mutual exclusion per side, recovery
//! from an owner's death, and a consistent ring after it.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::control::{CLAIMING, Config, Control, MAX_MEMBERS, REAPING, Side};
use super::error::{Broken, Fail, JoinError};
use crate::segment::Segment;
use crate::sync::{
    Deadline, EventCount, FutexWait, RobustMutexGuard, SpinPolicy, Spinner, current_pid, liveness,
    store_load_barrier_after_rmw,
};

/// How long a parked waiter sleeps before it checks whether its peers are still alive.
const LIVENESS_SLICE: Duration = Duration::from_millis(50);
/// How often, at most, one process sweeps the member table for dead processes (ring-wide).
const SWEEP_INTERVAL_NS: u64 = 20_000_000;

/// Bits of `MembershipHeader::gone`... kept in `Control::membership` as flags.
const SENDERS_GONE: u32 = 1;
const RECEIVERS_GONE: u32 = 2;

/// Which side a handle is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Sender,
    Receiver,
}

/// How long an operation may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Not at all (the `try_` forms).
    Try,
    /// Until a deadline.
    Until(Deadline),
    /// For ever (but never on a dead peer: that is a disconnection).
    Forever,
}

impl Wait {
    pub(crate) fn timeout(d: Duration) -> Wait {
        Wait::Until(Deadline::after(d))
    }

    fn deadline(self) -> Option<Deadline> {
        match self {
            Wait::Until(d) => Some(d),
            _ => None,
        }
    }

    fn passed(self) -> bool {
        matches!(self, Wait::Until(d) if d.passed())
    }
}

/// This process's view of its membership in one mapped ring.
#[derive(Debug, Default)]
struct Local {
    /// Serializes (re-)registration among this process's threads.
    registering: AtomicBool,
    /// The pid our registry entry belongs to; differs from `current_pid()` in a forked child
    /// that has not registered yet. 0: not registered.
    pid: AtomicU32,
    slot: AtomicU32,
    senders: AtomicU32,
    receivers: AtomicU32,
}

/// Where the ring's bytes live.
#[derive(Debug)]
enum Backing {
    Segment(Segment),
    /// Heap memory, for tests of the index logic (under Miri among others).
    #[cfg(test)]
    Heap(#[allow(dead_code, reason = "owns the memory; freed on drop")] HeapBlock),
}

/// A zeroed, page-aligned heap block (test support).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct HeapBlock {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

#[cfg(test)]
impl HeapBlock {
    fn new(len: usize) -> HeapBlock {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).expect("test block layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        HeapBlock { ptr: NonNull::new(ptr).expect("test block allocation"), layout }
    }
}

#[cfg(test)]
impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// One mapped ring, shared by every handle of this process that uses that mapping.
#[derive(Debug)]
pub(crate) struct Core {
    _backing: Backing,
    ctrl: NonNull<Control>,
    data: NonNull<u8>,
    /// The validated local copy of the config: all bounds come from here, never from shared memory.
    pub(crate) cfg: Config,
    pub(crate) mask: u64,
    /// Whether `data[cap..2cap]` mirrors `data[0..cap]` (true for every real segment).
    pub(crate) mirrored: bool,
    pub(crate) spin: SpinPolicy,
    local: Local,
}

// SAFETY: Core only points into its own mapping (kept alive by `_backing`), and every access to the
// shared bytes goes through atomics, or through the record protocol under one of the ring's locks
// (SAFETY.md, "The record protocol"). Nothing in it is tied to the creating thread.
unsafe impl Send for Core {}
// SAFETY: as above: shared access is via atomics or lock-protected, never via `&mut`.
unsafe impl Sync for Core {}

/// Every live Core of this process, so a forked child can register its inherited handles.
static ALL_CORES: Mutex<Vec<Weak<Core>>> = Mutex::new(Vec::new());

impl Core {
    /// Wraps a mapped and validated segment: reads and checks the ring's config.
    pub(crate) fn from_segment(segment: Segment, spin: SpinPolicy) -> Result<Arc<Core>, &'static str> {
        let base = segment.payload();
        // SAFETY: the payload is page-aligned and at least a page long (segment invariants), and
        // Config is 48 bytes at offset 0 of Control. The read is by value and volatile: a peer
        // scribbling on it can only produce a config that `validate` rejects.
        let cfg: Config = unsafe { base.cast::<Config>().as_ptr().read_volatile() };
        cfg.validate(segment.payload_len() as u64, segment.mirror_len() as u64)?;
        if std::mem::size_of::<Control>() as u64 > cfg.data_offset {
            return Err("control block does not fit");
        }
        // SAFETY: data_offset + data length <= payload_len (validated above), so the data region
        // lies inside the mapping.
        let data = unsafe { base.add(cfg.data_offset as usize) };
        let mirrored = segment.mirror_len() as u64 == cfg.capacity && cfg.capacity > 0;
        let core = Arc::new(Core {
            ctrl: base.cast(),
            data,
            mask: cfg.capacity - 1,
            mirrored,
            cfg,
            spin,
            local: Local::default(),
            _backing: Backing::Segment(segment),
        });
        core.track();
        Ok(core)
    }

    /// A ring in heap memory (no mirror): for tests of the index and record logic.
    #[cfg(test)]
    pub(crate) fn on_heap(cfg: Config) -> Arc<Core> {
        let data_len = match cfg.format {
            super::control::FORMAT_SLOTS => cfg.capacity * cfg.stride,
            _ => cfg.capacity,
        };
        let block = HeapBlock::new((cfg.data_offset + data_len) as usize);
        let base = block.ptr;
        // SAFETY: test-only: the block is page-aligned, zeroed, data_offset + data_len bytes long.
        unsafe { base.cast::<Config>().as_ptr().write(cfg) };
        // SAFETY: data_offset is inside the block.
        let data = unsafe { base.add(cfg.data_offset as usize) };
        Arc::new(Core {
            ctrl: base.cast(),
            data,
            mask: cfg.capacity - 1,
            mirrored: false,
            cfg,
            spin: SpinPolicy::default(),
            local: Local::default(),
            _backing: Backing::Heap(block),
        })
    }

    fn track(self: &Arc<Self>) {
        if let Ok(mut all) = ALL_CORES.lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(self));
        }
    }

    #[inline(always)]
    pub(crate) fn ctrl(&self) -> &Control {
        // SAFETY: `ctrl` points at the start of the payload, which is page-aligned (128-aligned
        // as Control requires) and at least size_of::<Control>() bytes (checked against
        // data_offset at construction); it lives as long as `_backing`, i.e. as long as `self`.
        // Control is made of atomics and plain integers, valid for every bit pattern, and the
        // only plain fields (the config) are never written after publication.
        unsafe { self.ctrl.as_ref() }
    }

    /// Start of the data region.
    #[inline(always)]
    pub(crate) fn data(&self) -> NonNull<u8> {
        self.data
    }

    /// The address of byte-ring index `index` (masked into the data region). Computing it is
    /// safe; using it is the caller's business.
    #[inline(always)]
    pub(crate) fn at(&self, index: u64) -> *mut u8 {
        self.data.as_ptr().wrapping_add((index & self.mask) as usize)
    }

    /// The 8-byte word at ring index `i` (bytes format) or byte offset `i` in the data region.
    ///
    /// `offset` must be 8-aligned and below `capacity` (bytes) or the data length (slots); both
    /// formats only pass masked, aligned offsets.
    #[inline(always)]
    pub(crate) fn word_at(&self, offset: u64) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0);
        // Callers validate alignment (indices come from shared memory); rounding down as well
        // means a validation bug elsewhere could read a wrong word, never form a misaligned one.
        let offset = offset & !7;
        // SAFETY: callers pass offsets that are 8-aligned and inside the data region (masked by
        // `mask` or a slot index times the stride plus an in-slot offset below the stride); the
        // data region is page-aligned and lives as long as `self`; any bit pattern is a valid u64.
        unsafe { &*self.data.as_ptr().wrapping_add(offset as usize).cast::<AtomicU64>() }
    }

    /// The segment's descriptor.
    pub(crate) fn segment_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self._backing {
            Backing::Segment(s) => s.fd(),
            #[cfg(test)]
            Backing::Heap(_) => unreachable!("heap-backed cores exist only in unit tests of the index logic"),
        }
    }

    /// The default spin policy of handles made from this mapping.
    pub(crate) fn spin(&self) -> SpinPolicy {
        self.spin
    }

    // ----- locking -------------------------------------------------------------------------

    /// Takes one side's lock, recovering it from a dead owner with `repair`.
    #[inline]
    pub(crate) fn lock_side<'a>(
        &'a self,
        side: &'a Side,
        spin: SpinPolicy,
        wait: Wait,
        repair: impl FnOnce() -> Result<(), &'static str>,
    ) -> Result<RobustMutexGuard<'a>, Fail> {
        let guard = match wait {
            Wait::Try => self.try_lock_side(side)?,
            _ => side.lock.lock_with(spin, wait.deadline(), |pid| self.member_alive(pid)).map_err(|e| match e {
                crate::sync::LockError::Timeout => Fail::Timeout,
                crate::sync::LockError::Poisoned => Fail::Broken(Broken::Poisoned),
            })?,
        };
        if guard.owner_died() { self.recovered(side, guard, repair) } else { Ok(guard) }
    }

    fn try_lock_side<'a>(&'a self, side: &'a Side) -> Result<RobustMutexGuard<'a>, Fail> {
        // Another member may be inside a short critical section: spin a little for it.
        let mut spinner = Spinner::new(SpinPolicy::spin_for(Duration::from_micros(2)));
        loop {
            match side.lock.try_lock() {
                Ok(g) => return Ok(g),
                Err(crate::sync::TryLockError::Poisoned) => return Err(Fail::Broken(Broken::Poisoned)),
                Err(crate::sync::TryLockError::WouldBlock) => {}
            }
            if !spinner.spin() {
                break;
            }
        }
        // Still held: by a live member holding an in-place guard, or by a dead one.
        match side.lock.holder() {
            Some(pid) if !self.member_alive(pid) => side
                .lock
                .lock_with(SpinPolicy::park(), Some(Deadline::after(Duration::from_millis(100))), |p| {
                    self.member_alive(p)
                })
                .map_err(|_| Fail::WouldBlock),
            _ => Err(Fail::WouldBlock),
        }
    }

    #[cold]
    fn recovered<'a>(
        &'a self,
        side: &'a Side,
        mut guard: RobustMutexGuard<'a>,
        repair: impl FnOnce() -> Result<(), &'static str>,
    ) -> Result<RobustMutexGuard<'a>, Fail> {
        side.recoveries.fetch_add(1, Ordering::Relaxed);
        match repair() {
            Ok(()) => {
                guard.mark_consistent();
                Ok(guard)
            }
            // Dropping the unrepaired guard poisons the lock: nobody gets the broken state.
            Err(reason) => Err(Fail::Broken(Broken::Corrupted(reason))),
        }
    }

    /// Releases a side's lock and wakes the other side's waiters, if any announced themselves.
    #[inline]
    pub(crate) fn unlock_and_notify(&self, guard: RobustMutexGuard<'_>, event: &EventCount, n: u32) {
        drop(guard);
        store_load_barrier_after_rmw();
        event.notify(n);
    }

    /// Reads head and tail and checks they are within a capacity of each other. The published
    /// tail may lag behind the head (records are committed by their headers, and a sender that
    /// died may not have moved the tail), so either order is possible.
    pub(crate) fn indices_near(&self) -> Result<(u64, u64), &'static str> {
        let c = self.ctrl();
        let head = c.head.load(Ordering::Acquire);
        let tail = c.tail.load(Ordering::Acquire);
        if tail.abs_diff(head) > self.cfg.capacity {
            return Err("head and tail are more than a capacity apart");
        }
        if self.cfg.format != super::control::FORMAT_SLOTS && (head % 8 != 0 || tail % 8 != 0) {
            return Err("ring index is not on a record boundary");
        }
        Ok((head, tail))
    }

    // ----- the two sides' entry loops, shared by both record formats -------------------------

    /// Takes the send lock with room for at least `need` units (bytes or slots); the cached head is
    /// refreshed when `want` units do not fit it. Answers the guard, the tail and the free units.
    /// Fails with `Disconnected` once every receiver is gone, `WouldBlock` for `Wait::Try`.
    #[inline]
    pub(crate) fn lock_for_send(
        &self,
        spin: SpinPolicy,
        wait: Wait,
        need: u64,
        want: u64,
        repair: impl Fn() -> Result<(), &'static str>,
    ) -> Result<(RobustMutexGuard<'_>, u64, u64), Fail> {
        let c = self.ctrl();
        let cap = self.cfg.capacity;
        self.ensure_registered().map_err(|_| Fail::Disconnected)?;
        loop {
            if self.receivers_maybe_gone() && self.peers_gone(Role::Receiver, false) {
                return Err(Fail::Disconnected);
            }
            let guard = self.lock_side(&c.send, spin, wait, &repair)?;
            let tail = c.tail.load(Ordering::Relaxed);
            if self.cfg.format != super::control::FORMAT_SLOTS && tail % 8 != 0 {
                return Err(Fail::Broken(Broken::Corrupted("ring index is not on a record boundary")));
            }
            let mut head = c.send.cached.load(Ordering::Relaxed);
            if tail.wrapping_add(want.max(need)).wrapping_sub(head) > cap {
                head = c.head.load(Ordering::Acquire);
                if head > tail || tail - head > cap {
                    return Err(Fail::Broken(Broken::Corrupted("head and tail are inconsistent")));
                }
                c.send.cached.store(head, Ordering::Relaxed);
            }
            let free = cap - (tail - head);
            if free >= need {
                return Ok((guard, tail, free));
            }
            drop(guard);
            if let Wait::Try = wait {
                return Err(Fail::WouldBlock);
            }
            self.wait_for(&c.not_full, &c.send.parks, spin, wait, Role::Receiver, || {
                let t = c.tail.load(Ordering::Relaxed);
                t.wrapping_add(need).wrapping_sub(c.head.load(Ordering::Acquire)) <= cap
            })?;
        }
    }

    /// Takes the receive lock with a published record (or slot) at the head, as `probe` says
    /// (`Ok(Some(x))` published, `Ok(None)` not yet, `Err` impossible). Answers the guard, the
    /// head and what `probe` found. Fails with `Disconnected` once the ring is empty and every
    /// sender is gone, `WouldBlock` for `Wait::Try`.
    #[inline]
    pub(crate) fn lock_for_recv<T>(
        &self,
        spin: SpinPolicy,
        wait: Wait,
        repair: impl Fn() -> Result<(), &'static str>,
        probe: impl Fn(u64) -> Result<Option<T>, &'static str>,
    ) -> Result<(RobustMutexGuard<'_>, u64, T), Fail> {
        let c = self.ctrl();
        let corrupted = |reason| Err(Fail::Broken(Broken::Corrupted(reason)));
        self.ensure_registered().map_err(|_| Fail::Disconnected)?;
        let mut last_look = false;
        let mut waited = false;
        loop {
            let guard = self.lock_side(&c.recv, spin, wait, &repair)?;
            let head = c.head.load(Ordering::Relaxed);
            match probe(head) {
                Ok(Some(x)) => return Ok((guard, head, x)),
                // The first empty look in a call does not read the senders' tail line (reading it
                // would pull it away from the sender that writes it every message); a second one,
                // after a wait that did not bring the record, does.
                Ok(None) if !waited => {}
                Ok(None) => {
                    // The header (or stamp) is the commit, so the published tail may lag behind
                    // records already received (head > tail for a moment). A tail *ahead* of the
                    // head, though, promises a published record there.
                    let tail = c.tail.load(Ordering::Acquire);
                    if tail > head {
                        return match probe(head) {
                            Ok(Some(x)) if tail - head <= self.cfg.capacity => Ok((guard, head, x)),
                            Ok(_) => corrupted("tail is past an unpublished record"),
                            Err(reason) => corrupted(reason),
                        };
                    }
                    if head - tail > self.cfg.capacity {
                        return corrupted("head is far past the tail");
                    }
                }
                Err(reason) => return corrupted(reason),
            }
            drop(guard);
            if self.peers_gone(Role::Sender, false) {
                // The last sender may have published just before leaving: one more look.
                if last_look {
                    return Err(Fail::Disconnected);
                }
                last_look = true;
                continue;
            }
            if let Wait::Try = wait {
                return Err(Fail::WouldBlock);
            }
            self.wait_for(&c.not_empty, &c.recv.parks, spin, wait, Role::Sender, || {
                !matches!(probe(c.head.load(Ordering::Acquire)), Ok(None))
            })?;
            waited = true;
        }
    }

    // ----- waiting -------------------------------------------------------------------------

    /// Waits until `ready()` holds, the other side is gone, or the wait ends. Spins per `spin`
    /// first, then parks on `event`; a parked waiter wakes every [`LIVENESS_SLICE`] to sweep
    /// for dead peers. Returns Ok(()) when worth retrying, Err(Timeout) when the deadline passed.
    pub(crate) fn wait_for(
        &self,
        event: &EventCount,
        parks: &AtomicU64,
        spin: SpinPolicy,
        wait: Wait,
        peers: Role,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Fail> {
        let deadline = wait.deadline();
        let mut spinner = Spinner::new(spin);
        // Read the clock only once the spin has lasted a while (a short wait never reads it).
        let mut next_sweep = 0u64;
        let mut rounds = 0u32;
        while spinner.spin() {
            if ready() {
                return Ok(());
            }
            rounds = rounds.wrapping_add(1);
            if rounds % 256 == 0 {
                if wait.passed() {
                    return Err(Fail::Timeout);
                }
                let now = crate::sys::monotonic_ns();
                if next_sweep == 0 {
                    next_sweep = now + LIVENESS_SLICE.as_nanos() as u64;
                } else if now >= next_sweep {
                    next_sweep = now + LIVENESS_SLICE.as_nanos() as u64;
                    if self.peers_gone(peers, true) {
                        return Ok(());
                    }
                }
            }
        }
        loop {
            let key = event.prepare();
            if ready() || self.peers_gone(peers, false) {
                event.cancel(key);
                return Ok(());
            }
            let until = match deadline {
                Some(d) => d.min_after(LIVENESS_SLICE),
                None => Deadline::after(LIVENESS_SLICE),
            };
            parks.fetch_add(1, Ordering::Relaxed);
            let woke = event.wait(key, Some(until));
            if wait.passed() {
                return Err(Fail::Timeout);
            }
            if woke == FutexWait::TimedOut && self.peers_gone(peers, true) {
                return Ok(());
            }
            if ready() {
                return Ok(());
            }
        }
    }

    // ----- membership ----------------------------------------------------------------------

    /// Makes sure this process has a registry entry (claiming one after a fork). Returns its index.
    #[inline]
    pub(crate) fn ensure_registered(&self) -> Result<usize, JoinError> {
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) == me {
            return Ok(self.local.slot.load(Ordering::Relaxed) as usize);
        }
        self.register_slow(me)
    }

    #[cold]
    fn register_slow(&self, me: u32) -> Result<usize, JoinError> {
        // A tiny spin lock among this process's threads (no std Mutex: a forked child may find a
        // std Mutex held by a thread that does not exist in it).
        while self.local.registering.swap(true, Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let result = if self.local.pid.load(Ordering::Acquire) == me {
            Ok(self.local.slot.load(Ordering::Relaxed) as usize)
        } else {
            self.claim_entry(me)
        };
        self.local.registering.store(false, Ordering::Release);
        result
    }

    /// Claims a free registry entry for `me`, carrying this process's current handle counts
    /// (inherited ones included, in a forked child).
    fn claim_entry(&self, me: u32) -> Result<usize, JoinError> {
        let c = self.ctrl();
        let max = self.cfg.max_members as usize;
        let senders = self.local.senders.load(Ordering::Relaxed);
        let receivers = self.local.receivers.load(Ordering::Relaxed);
        for pass in 0..2 {
            for (i, m) in c.members.iter().enumerate().take(max) {
                if m.pid.compare_exchange(0, CLAIMING, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                m.start_time.store(liveness::own_start_time(), Ordering::Relaxed);
                m.senders.store(senders, Ordering::Relaxed);
                m.receivers.store(receivers, Ordering::Relaxed);
                m.pid.store(me, Ordering::Release);
                c.membership.high_water.fetch_max(i as u32 + 1, Ordering::AcqRel);
                self.local.slot.store(i as u32, Ordering::Relaxed);
                self.local.pid.store(me, Ordering::Release);
                if senders > 0 {
                    self.clear_gone(SENDERS_GONE);
                }
                if receivers > 0 {
                    self.clear_gone(RECEIVERS_GONE);
                }
                return Ok(i);
            }
            if pass == 0 {
                // Full: dead members may be hogging entries.
                self.sweep(true);
            }
        }
        Err(JoinError::TooManyMembers(max))
    }

    fn entry(&self, slot: usize) -> &super::control::Member {
        &self.ctrl().members[slot.min(MAX_MEMBERS - 1)]
    }

    /// A new handle of `role` made from the ring (not cloned from another handle): dead members
    /// are swept first, so a handle made on a ring whose peers were all killed sees them gone at
    /// once, not only when it first waits.
    pub(crate) fn join_fresh(&self, role: Role) -> Result<(), JoinError> {
        self.sweep(false);
        self.join(role)
    }

    /// A new handle of `role` in this process.
    pub(crate) fn join(&self, role: Role) -> Result<(), JoinError> {
        let slot = self.ensure_registered()?;
        let m = self.entry(slot);
        match role {
            Role::Sender => {
                self.local.senders.fetch_add(1, Ordering::Relaxed);
                m.senders.fetch_add(1, Ordering::AcqRel);
                self.clear_gone(SENDERS_GONE);
            }
            Role::Receiver => {
                self.local.receivers.fetch_add(1, Ordering::Relaxed);
                m.receivers.fetch_add(1, Ordering::AcqRel);
                self.clear_gone(RECEIVERS_GONE);
            }
        }
        Ok(())
    }

    /// A handle of `role` goes away. Never panics; wakes the other side if it was the last one.
    pub(crate) fn leave(&self, role: Role) {
        let Ok(slot) = self.ensure_registered() else {
            // No entry could be claimed (table full after a fork): nothing of ours is counted.
            return;
        };
        let m = self.entry(slot);
        let (local, shared) = match role {
            Role::Sender => (&self.local.senders, &m.senders),
            Role::Receiver => (&self.local.receivers, &m.receivers),
        };
        let _ = local.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let _ = shared.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.after_departure(role);
    }

    /// Called after a member of `role` left or was reaped: if none is left, mark that side gone
    /// and wake the other side so it sees it.
    fn after_departure(&self, role: Role) {
        let c = self.ctrl();
        if self.live_count(role) != 0 {
            return;
        }
        let bit = match role {
            Role::Sender => SENDERS_GONE,
            Role::Receiver => RECEIVERS_GONE,
        };
        c.membership.gone.fetch_or(bit, Ordering::SeqCst);
        // A member may have joined between our count and our flag: look again.
        if self.live_count(role) != 0 {
            self.clear_gone(bit);
        }
        match role {
            Role::Sender => c.not_empty.notify_all(),
            Role::Receiver => c.not_full.notify_all(),
        }
    }

    fn clear_gone(&self, bit: u32) {
        let gone = &self.ctrl().membership.gone;
        if gone.load(Ordering::Relaxed) & bit != 0 {
            gone.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Handles of `role` held by registered members (dead ones included until swept).
    pub(crate) fn live_count(&self, role: Role) -> u32 {
        let c = self.ctrl();
        let hw = (c.membership.high_water.load(Ordering::Acquire) as usize).min(self.cfg.max_members as usize);
        let mut n = 0u32;
        for m in &c.members[..hw] {
            let pid = m.pid.load(Ordering::Acquire);
            if pid == 0 || pid == REAPING {
                continue;
            }
            n = n.saturating_add(match role {
                Role::Sender => m.senders.load(Ordering::Acquire),
                Role::Receiver => m.receivers.load(Ordering::Acquire),
            });
        }
        n
    }

    /// Whether every member of `role` is gone (they existed once, and none is left). With
    /// `sweep`, dead members are reaped first (rate-limited ring-wide).
    pub(crate) fn peers_gone(&self, role: Role, sweep: bool) -> bool {
        let bit = match role {
            Role::Sender => SENDERS_GONE,
            Role::Receiver => RECEIVERS_GONE,
        };
        if sweep {
            self.sweep(false);
        }
        self.ctrl().membership.gone.load(Ordering::Acquire) & bit != 0 && self.live_count(role) == 0
    }

    /// Fast check used on every send: has the last receiver left? (one load of a quiet line)
    #[inline]
    pub(crate) fn receivers_maybe_gone(&self) -> bool {
        self.ctrl().membership.gone.load(Ordering::Relaxed) & RECEIVERS_GONE != 0
    }

    /// Reaps registry entries of dead processes. At most once per [`SWEEP_INTERVAL_NS`] ring-wide
    /// unless `force`.
    pub(crate) fn sweep(&self, force: bool) {
        let c = self.ctrl();
        let now = crate::sys::monotonic_ns();
        let last = c.membership.last_sweep.load(Ordering::Relaxed);
        if !force
            && (now.saturating_sub(last) < SWEEP_INTERVAL_NS
                || c.membership.last_sweep.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err())
        {
            return;
        }
        let hw = (c.membership.high_water.load(Ordering::Acquire) as usize).min(self.cfg.max_members as usize);
        let (mut senders, mut receivers) = (false, false);
        for m in &c.members[..hw] {
            let pid = m.pid.load(Ordering::Acquire);
            if pid == 0 || pid == CLAIMING || pid == REAPING {
                continue;
            }
            if liveness::is_alive(pid, m.start_time.load(Ordering::Relaxed)) {
                continue;
            }
            if m.pid.compare_exchange(pid, REAPING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            senders |= m.senders.swap(0, Ordering::AcqRel) > 0;
            receivers |= m.receivers.swap(0, Ordering::AcqRel) > 0;
            m.pid.store(0, Ordering::Release);
        }
        if senders {
            self.after_departure(Role::Sender);
        }
        if receivers {
            self.after_departure(Role::Receiver);
        }
    }

    /// Whether the process `pid`, found holding a lock, is a live member. A pid that is not in
    /// the member table at all is not a legitimate holder (every locker registers first).
    fn member_alive(&self, pid: u32) -> bool {
        let c = self.ctrl();
        let hw = (c.membership.high_water.load(Ordering::Acquire) as usize).min(self.cfg.max_members as usize);
        c.members[..hw]
            .iter()
            .filter(|m| m.pid.load(Ordering::Acquire) == pid)
            .any(|m| liveness::is_alive(pid, m.start_time.load(Ordering::Relaxed)))
    }

    /// Drops every membership this process holds in this ring (used by a forked child about to
    /// `_exit`, whose inherited handles will never be dropped).
    fn release_all(&self) {
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) != me {
            return;
        }
        let m = self.entry(self.local.slot.load(Ordering::Relaxed) as usize);
        let s = m.senders.swap(0, Ordering::AcqRel);
        let r = m.receivers.swap(0, Ordering::AcqRel);
        self.local.senders.store(0, Ordering::Relaxed);
        self.local.receivers.store(0, Ordering::Relaxed);
        if m.pid.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.local.pid.store(0, Ordering::Release);
        }
        if s > 0 {
            self.after_departure(Role::Sender);
        }
        if r > 0 {
            self.after_departure(Role::Receiver);
        }
    }

    /// Counters, for stats.
    pub(crate) fn counters(&self) -> (&Side, &Side) {
        let c = self.ctrl();
        (&c.send, &c.recv)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The last handle of this mapping in this process: free our registry entry if it is empty.
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) == me {
            let m = self.entry(self.local.slot.load(Ordering::Relaxed) as usize);
            if m.senders.load(Ordering::Acquire) == 0 && m.receivers.load(Ordering::Acquire) == 0 {
                let _ = m.pid.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

/// Around `fork()`: see [`super::ForkGuard`].
pub(crate) fn fork_prepare() -> Option<std::sync::MutexGuard<'static, Vec<Weak<Core>>>> {
    ALL_CORES.lock().ok()
}

/// In a forked child: register every inherited mapping that holds handles under the child's pid.
pub(crate) fn fork_child(all: &[Weak<Core>]) {
    for core in all.iter().filter_map(Weak::upgrade) {
        let held = core.local.senders.load(Ordering::Relaxed) + core.local.receivers.load(Ordering::Relaxed);
        // The registration spin lock may have been held by a parent thread at the fork; in the
        // child that thread does not exist, so the flag is reset before use.
        core.local.registering.store(false, Ordering::Relaxed);
        if held > 0 {
            let _ = core.ensure_registered();
        }
    }
}

/// In a forked child that will use none of its inherited handles (a pool worker): forget them.
/// Nothing is registered for them and nothing in shared memory is touched: the child starts with
/// no membership, as a re-executed process would.
pub(crate) fn fork_child_forgetting(all: &[Weak<Core>]) {
    for core in all.iter().filter_map(Weak::upgrade) {
        core.local.registering.store(false, Ordering::Relaxed);
        core.local.senders.store(0, Ordering::Relaxed);
        core.local.receivers.store(0, Ordering::Relaxed);
        core.local.pid.store(0, Ordering::Release);
    }
}

/// In a forked child about to `_exit`: give up every membership at once.
pub(crate) fn child_exit() {
    let all = match ALL_CORES.try_lock() {
        Ok(all) => all.iter().filter_map(Weak::upgrade).collect::<Vec<_>>(),
        Err(_) => return,
    };
    for core in all {
        core.release_all();
    }
}
