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
//!
//! # Solo handles: a send without a locked instruction
//!
//! A locked instruction (`lock cmpxchg`) waits for the store buffer to drain, and in a stream the
//! store buffer holds the previous message's header, whose line the polling receiver has just
//! pulled to its core: taking and freeing the send lock per message costs a cross-core line
//! transfer that the copy itself would have overlapped (40% of a one-message send in the profile
//! of `BENCHMARKS.md`). A *solo* handle (`Ring::solo_sender`, `Ring::solo_receiver`) keeps its
//! side's lock held between operations instead:
//!
//! - **Taking it.** An operation of a solo handle takes the lock the ordinary way (so a dead
//!   holder is found and repaired as always), and at its end, if nobody waits, keeps it: it writes
//!   its owner token into the side's `sticky` word, runs one full fence, and forgets its guard. Its
//!   later operations check, with plain loads of their own side's line, that `sticky` and the lock
//!   word still name it, and go ahead with no read-modify-write at all. The handle's `&mut self`
//!   keeps two threads off one hold, and the handle is not `Send`, so the thread that keeps a
//!   hold (recorded, with the hold's number, in the process-local `kept`) is the only one that
//!   can use it. Other handles (of this process too, with the same token) are other lockers; an
//!   ordinary handle used on the keeping thread itself, which would wait for itself, gives the
//!   hold up on the solo handle's behalf (that thread cannot be inside the solo operation).
//! - **Giving it up.** A locker that finds the lock held sets `STICKY_WANTED` in `sticky` (one
//!   `fetch_or`, only on contention) and waits on the lock word in slices of [`STICKY_SLICE`],
//!   setting the flag again at each. The holder reads the flag after each operation and, seeing it,
//!   clears `sticky` (Release) and frees the lock (waking a sleeper): a contender waits at most
//!   until the holder's next operation (or its drop, or `release()`), or, if the holder stays
//!   idle, takes it (below). A holder that must wait for room or data gives the lock up first, so
//!   a parked holder never holds it; after giving it up, a holder takes the lock per operation
//!   for [`STICKY_COOL`] operations before it keeps it again.
//! - **Taking it from an idle holder.** A live holder may stay idle for ever (a thread that went
//!   on to other work). Each operation of the holder therefore announces itself: it stores its
//!   token into the side's `busy` word, then (a compiler fence only) checks `sticky` and the lock
//!   word as above, and stores 0 into `busy` (Release) when it ends. A locker that waited a slice
//!   ([`STICKY_SLICE`]) for a kept lock of another member, or a `try_` operation that found one,
//!   claims the side's `steal` word (compare-and-swap, one taker at a time; a dead claimant's
//!   claim is void), sets [`STICKY_STOLEN`] in `sticky`, runs the asymmetric fence, and reads
//!   `busy`. An asymmetric Dekker pair: either the holder's store to `busy` is visible to that
//!   read (the taker backs off, clears its bit and its claim; the holder gives the lock up at its
//!   operation's end, as asked), or the holder's later check of `sticky` sees the bit (it enters
//!   no operation). A read of 0 after the holder's Release at an operation's end also
//!   synchronizes with everything that operation wrote. Seeing the holder idle, the taker swaps
//!   the lock word from the holder's token to its own (if it still names the holder), marks
//!   `steal` done, and goes on with an ordinary guard: no repair, the holder left the ring
//!   consistent. The mark in `sticky` (the holder's token and the bit) stays until the holder
//!   sees it: at its next operation, its `release()` or its drop, it waits for an undecided
//!   taker's decision (microseconds; a dead taker's undecided claim is settled by the lock word),
//!   then clears the mark and, if it was robbed, forgets its hold without touching the lock
//!   word. While the mark stays, nobody keeps the side's lock, so `busy` only ever has one writer:
//!   the thread that keeps the hold the mark names. A mark whose member died is cleared by the
//!   next locker. Takers only take from other members: threads of the holder's own process wait
//!   for its next operation as before.
//! - **Death.** The lock word names the holder's member token as before: a holder killed between
//!   or inside operations is found dead by the same liveness check, the lock is taken over, the
//!   side repaired as today, and the stale `sticky` cleared by the new holder.
//! - **Wake-ups.** An operation that frees its lock publishes, then executes a locked instruction
//!   (the unlock), then reads the event's waiter count: the StoreLoad barrier the event count
//!   needs. A solo operation has no barrier there. Its waiters make up for it: after announcing
//!   themselves (`EventCount::prepare`, a locked RMW), a waiter reads the notifying side's
//!   `sticky` word, and if it is set runs `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` before its
//!   last look; every process that keeps a lock registered for it first (no solo hold without the
//!   registration). Either the holder's read of the waiter count comes after the fence point (and
//!   sees the announcement), or its publish came before it (and the waiter's last look sees the
//!   message). A waiter that read `sticky == 0` skipped the fence soundly: the holder's store of
//!   its token is followed by a full fence before its first unfenced publish (a store-buffering
//!   pair with fences on both sides), and its clearing store is a Release after its last one.
//!   A fence the kernel refuses leaves the waiter parking in 1 ms slices: a late wake-up, never a
//!   lost one.

use crate::sys::atomic::{AtomicU64, Ordering};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use super::control::{Config, Control, STEAL_DONE, STICKY_STOLEN, STICKY_TOKEN, STICKY_WANTED, Side};
use super::error::{Broken, Fail};
use super::membership::Local;
use super::wait::Wait;
use crate::segment::Segment;
use crate::sync::{
    Deadline, EventCount, OwnerToken, RobustMutexGuard, SpinPolicy, Spinner, store_load_barrier_after_rmw,
};

/// Which side a handle is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Sender,
    Receiver,
}

/// Where the ring's bytes live.
#[derive(Debug)]
enum Backing {
    Segment(Segment),
    /// Heap memory, for tests of the index logic (under Miri among others) and the fuzz targets.
    Heap(#[allow(dead_code, reason = "owns the memory; freed on drop")] HeapBlock),
}

/// A zeroed, page-aligned heap block (tests and fuzz targets).
#[derive(Debug)]
pub(crate) struct HeapBlock {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

impl HeapBlock {
    fn new(len: usize) -> Option<HeapBlock> {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        Some(HeapBlock { ptr: NonNull::new(ptr)?, layout })
    }
}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// How long a locker waits on a held lock before it asks a solo holder again to give it up.
const STICKY_SLICE: Duration = Duration::from_millis(2);

/// Operations a solo handle runs with a per-operation lock after it gave its kept lock up to a
/// waiting member, before it keeps the lock again (so that two handles that take turns do not
/// hand the lock over, with a fence each time, on every operation).
const STICKY_COOL: u32 = 64;

/// How often an operation records its CPU for the other side's waiters (see `Core::note_cpu`).
const CPU_NOTE_EVERY: u32 = 16;

/// Asks a solo holder of `side`'s lock, if there is one, to give it up after its operation.
#[inline]
fn want_sticky(side: &Side) {
    let s = side.sticky.load(Ordering::Relaxed);
    if s != 0 && s & STICKY_WANTED == 0 {
        side.sticky.fetch_or(STICKY_WANTED, Ordering::Relaxed);
    }
}

/// An identity of the calling thread, unique among this process's live threads.
fn thread_id() -> u64 {
    thread_local!(static ID: u8 = const { 0 });
    ID.with(|id| std::ptr::from_ref(id) as usize as u64)
}

/// A solo handle's hold on its side's lock, kept across operations (see "Solo handles").
#[derive(Debug, Default)]
pub(crate) struct Sticky {
    /// This hold's number, unique in this process and never reused (0: none): the side's `kept`
    /// entry names it while the hold is this handle's (a number per hold, not per handle, so that
    /// a hold given up and taken again is never mistaken for the earlier one).
    id: u64,
    /// Whether this handle believes it keeps the lock (checked against shared memory before use).
    held: bool,
    /// The token it keeps it under, and the process that took it (a forked copy holds nothing).
    token: u32,
    pid: u32,
    /// Operations left before it may keep the lock again.
    cool: u32,
}

/// Numbers of holds (see [`Sticky::id`]).
static NEXT_HOLD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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
    pub(super) local: Local,
    /// Process-local state per side (send, receive), each on its own cache lines: a sending and a
    /// receiving thread of one process write their side's counters on every operation and must
    /// not share a line.
    sides: [LocalSide; 2],
}

/// One side's process-local state (see [`Core`]'s `sides`).
#[derive(Debug, Default)]
#[repr(align(128))]
struct LocalSide {
    /// Which solo hold of this process keeps the side's lock ([`Sticky::id`], 0: none) and on which
    /// thread ([`thread_id`]). A forked child's copy names holds of its parent, which the child's
    /// tokens never match.
    kept: [std::sync::atomic::AtomicU64; 2],
    /// The CPU value this process last wrote next to the event this side notifies (so that it
    /// writes the shared word only when it changes).
    cpu_seen: std::sync::atomic::AtomicU32,
    /// Operations of this process on this side, to sample the CPU once in a while (`note_cpu`).
    cpu_ops: std::sync::atomic::AtomicU32,
}

// SAFETY: Core only points into its own mapping (kept alive by `_backing`), and every access to the
// shared bytes goes through atomics, or through the record protocol under one of the ring's locks
// (SAFETY.md, "The record protocol"). Nothing in it is tied to the creating thread.
unsafe impl Send for Core {}
// SAFETY: as above: shared access is via atomics or lock-protected, never via `&mut`.
unsafe impl Sync for Core {}

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
            sides: Default::default(),
            _backing: Backing::Segment(segment),
        });
        core.track();
        Ok(core)
    }

    /// A ring in heap memory (no mirror), for tests of the index and record logic and for the
    /// fuzz targets. The config is validated as one read from a segment would be, against a
    /// payload sized the way a creator sizes it; `None` if it is refused or the memory cannot be
    /// had.
    pub(crate) fn on_heap(cfg: Config) -> Result<Arc<Core>, &'static str> {
        let page = crate::sys::page_size() as u64;
        let data_len = match cfg.format {
            super::control::FORMAT_SLOTS => cfg.capacity.checked_mul(cfg.stride),
            _ => Some(cfg.capacity),
        };
        let payload_len = data_len
            .and_then(|d| cfg.data_offset.checked_add(d))
            .and_then(|end| end.div_ceil(page).checked_mul(page))
            .ok_or("ring geometry overflows")?;
        cfg.validate_unmirrored(payload_len)?;
        let len = usize::try_from(payload_len).map_err(|_| "ring too large for the heap")?;
        let block = HeapBlock::new(len).ok_or("heap allocation failed")?;
        let base = block.ptr;
        // SAFETY: the block is page-aligned, zeroed and payload_len (> data_offset > 48) bytes
        // long; nothing else refers to it yet.
        unsafe { base.cast::<Config>().as_ptr().write(cfg) };
        // SAFETY: data_offset + data length <= payload_len (validated): inside the block.
        let data = unsafe { base.add(cfg.data_offset as usize) };
        Ok(Arc::new(Core {
            ctrl: base.cast(),
            data,
            mask: cfg.capacity - 1,
            mirrored: false,
            cfg,
            spin: SpinPolicy::default(),
            local: Local::default(),
            sides: Default::default(),
            _backing: Backing::Heap(block),
        }))
    }

    /// Length of the data region in bytes (the capacity, or the slots times their stride).
    pub(crate) fn data_len(&self) -> u64 {
        match self.cfg.format {
            super::control::FORMAT_SLOTS => self.cfg.capacity * self.cfg.stride,
            _ => self.cfg.capacity,
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
            Backing::Heap(_) => unreachable!("heap-backed cores exist only in unit tests and fuzz targets"),
        }
    }

    /// The default spin policy of handles made from this mapping.
    /// The error for a message of `len` bytes, longer than the largest this ring takes.
    #[cold]
    pub(crate) fn too_large(&self, len: usize) -> Fail {
        Fail::TooLarge { len, max: usize::try_from(self.cfg.item_size).unwrap_or(usize::MAX) }
    }

    pub(crate) fn spin(&self) -> SpinPolicy {
        self.spin
    }

    // ----- locking -------------------------------------------------------------------------

    /// Takes one side's lock, recovering it from a dead owner with `repair`. The lock word names
    /// this process by its member-table token (entry and generation), which pid reuse cannot
    /// fool: see `membership.rs`.
    #[inline]
    pub(crate) fn lock_side<'a>(
        &'a self,
        side: &'a Side,
        spin: SpinPolicy,
        wait: Wait,
        repair: impl FnOnce() -> Result<(), &'static str>,
    ) -> Result<RobustMutexGuard<'a>, Fail> {
        let token = self.owner_token().map_err(|_| Fail::Disconnected)?;
        let guard = match wait {
            Wait::Try => self.try_lock_side(side, token)?,
            _ => match side.lock.try_lock_as(token) {
                Ok(g) => g,
                Err(crate::sync::TryLockError::Poisoned) => return Err(Fail::Broken(Broken::Poisoned)),
                Err(crate::sync::TryLockError::WouldBlock) => self.lock_side_waiting(side, token, spin, wait)?,
            },
        };
        if guard.owner_died() { self.recovered(side, guard, repair) } else { Ok(guard) }
    }

    /// A hold kept by a solo handle of this very thread would be waited for for ever (the thread
    /// is here, not in that handle's next operation): give it up on the handle's behalf. The
    /// handle finds out at its next operation (its `kept` entry is gone).
    fn release_own_thread_hold(&self, side: &Side, token: OwnerToken) {
        let kept = self.kept_of(side);
        // Acquire: pairs with the keeping thread's Release store of the hold's number, so that the
        // thread read next is that hold's.
        let id = kept[0].load(Ordering::Acquire);
        if id != 0
            && kept[1].load(Ordering::Relaxed) == thread_id()
            && side.sticky.load(Ordering::Relaxed) & STICKY_TOKEN == token.get()
        {
            self.give_up_hold(side, token.get());
            let _ = kept[0].compare_exchange(id, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Which `kept` entry is `side`'s.
    fn kept_of(&self, side: &Side) -> &[std::sync::atomic::AtomicU64; 2] {
        &self.sides[usize::from(!std::ptr::eq(side, &*self.ctrl().send))].kept
    }

    /// Waits for a held lock: in slices of [`STICKY_SLICE`], asking a solo holder to give it up
    /// at each (a holder that kept the lock frees it only when asked; see "Solo handles").
    #[cold]
    fn lock_side_waiting<'a>(
        &'a self,
        side: &'a Side,
        token: OwnerToken,
        spin: SpinPolicy,
        wait: Wait,
    ) -> Result<RobustMutexGuard<'a>, Fail> {
        loop {
            self.release_own_thread_hold(side, token);
            want_sticky(side);
            let slice = match wait.deadline() {
                Some(d) => d.min_after(STICKY_SLICE),
                None => Deadline::after(STICKY_SLICE),
            };
            match side.lock.lock_as(token, spin, Some(slice), |t| self.member_alive(t)) {
                Ok(g) => return Ok(g),
                Err(crate::sync::LockError::Poisoned) => return Err(Fail::Broken(Broken::Poisoned)),
                Err(crate::sync::LockError::Timeout) => {
                    // A solo holder that stayed idle through a slice: take the lock from it.
                    if let Some(g) = self.try_steal(side, token) {
                        return Ok(g);
                    }
                    if wait.deadline().is_some_and(|d| d.passed()) {
                        // Not a wait for room or data: a live peer kept the lock all along.
                        return Err(Fail::LockTimeout(self.lock_holder_pid(&side.lock)));
                    }
                }
            }
        }
    }

    fn try_lock_side<'a>(&'a self, side: &'a Side, token: OwnerToken) -> Result<RobustMutexGuard<'a>, Fail> {
        if side.sticky.load(Ordering::Relaxed) != 0 {
            self.release_own_thread_hold(side, token);
        }
        // Another member may be inside a short critical section: spin a little for it.
        let mut spinner = Spinner::new(SpinPolicy::spin_for(Duration::from_micros(2)));
        loop {
            match side.lock.try_lock_as(token) {
                Ok(g) => return Ok(g),
                Err(crate::sync::TryLockError::Poisoned) => return Err(Fail::Broken(Broken::Poisoned)),
                Err(crate::sync::TryLockError::WouldBlock) => {}
            }
            if !spinner.spin() {
                break;
            }
        }
        // Still held: by a live member holding an in-place guard or keeping it (asked to give it
        // up at its next operation, or taken from it if it is idle), or by a dead one.
        want_sticky(side);
        if let Some(g) = self.try_steal(side, token) {
            return Ok(g);
        }
        match side.lock.holder() {
            Some(owner) if owner != token.get() && !self.member_alive(owner) => side
                .lock
                .lock_as(token, SpinPolicy::park(), Some(Deadline::after(Duration::from_millis(100))), |t| {
                    self.member_alive(t)
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
        // A dead solo holder's mark: the lock is ours now. (A live holder robbed by the dead
        // owner keeps its mark until it has seen it.)
        self.clear_stale_mark(side);
        match crate::trace::repair_outcome(self.cfg.ring_id, repair()) {
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
        self.note_cpu(event);
        drop(guard);
        store_load_barrier_after_rmw();
        event.notify(n);
    }

    /// Records, next to the event this side notifies, the CPU this operation runs on, when it
    /// changed (a thread-local read and a local compare otherwise): the other side's waiters
    /// compare it with their own CPU before they spin (`ring/wait.rs`).
    ///
    /// Once every [`CPU_NOTE_EVERY`] operations of this process on a side (the first included):
    /// reading the CPU costs a call (about 4 ns with glibc's restartable sequences), and a hint a
    /// few operations late after a migration only makes one wait spin or park when it need not.
    #[inline(always)]
    fn note_cpu(&self, event: &EventCount) {
        let c = self.ctrl();
        let (k, line) = if std::ptr::eq(event, &**c.not_empty) { (0, &c.not_empty) } else { (1, &c.not_full) };
        // A racy count between this process's threads is fine: it only spaces the samples.
        // The side that notifies `not_empty` is the send side (index 0), `not_full` the receive side.
        let local = &self.sides[k];
        let n = local.cpu_ops.load(Ordering::Relaxed);
        local.cpu_ops.store(n.wrapping_add(1), Ordering::Relaxed);
        if n % CPU_NOTE_EVERY != 0 {
            return;
        }
        let cpu = super::wait::current_cpu();
        if local.cpu_seen.load(Ordering::Relaxed) != cpu {
            local.cpu_seen.store(cpu, Ordering::Relaxed);
            line.cpu.store(cpu, Ordering::Relaxed);
        }
    }

    /// Enters an operation on the lock `st` keeps, if it keeps it right now: this handle says so,
    /// in the process and on the thread that took it, and shared memory agrees (the lock word and
    /// `sticky` name its token, nobody asked, nobody is taking it). On `true` the side's `busy`
    /// word names the holder until the operation ends ([`finish_solo`](Self::finish_solo), or
    /// [`release_sticky`](Self::release_sticky) on its other ways out).
    #[inline(always)]
    pub(crate) fn sticky_enter(&self, side: &Side, st: &Sticky) -> bool {
        let kept = self.kept_of(side);
        if !(st.held
            && kept[0].load(Ordering::Relaxed) == st.id
            // The thread that took the hold: a handle moved to another thread takes it again
            // (so that the thread named in `kept` is the one that may be inside an operation).
            && kept[1].load(Ordering::Relaxed) == thread_id()
            && st.pid == crate::sync::current_pid())
        {
            return false;
        }
        // Announced before the checks (see "Taking it from an idle holder"): the hold is this
        // thread's (`kept`), so the mark names us and nobody else writes `busy`.
        side.busy.store(st.token, Ordering::Relaxed);
        crate::sys::atomic::compiler_fence(Ordering::SeqCst);
        if side.sticky.load(Ordering::Relaxed) == st.token && side.lock.holder() == Some(st.token) {
            return true;
        }
        side.busy.store(0, Ordering::Relaxed);
        false
    }

    /// Gives a kept lock up: clears the mark (Release: after every unfenced publish), then frees
    /// the word if it still names us, waking a sleeper. A forked copy of the hold gives up nothing.
    #[cold]
    pub(crate) fn release_sticky(&self, side: &Side, st: &mut Sticky) {
        if !st.held {
            return;
        }
        st.held = false;
        st.cool = STICKY_COOL;
        if st.pid != crate::sync::current_pid() {
            return;
        }
        // Given up on our behalf already (by this thread, waiting on another handle): the word is
        // no longer ours to free, even though it may name our token (another handle's hold).
        if self.kept_of(side)[0].load(Ordering::Relaxed) != st.id {
            return;
        }
        self.give_up_hold(side, st.token);
        let _ = self.kept_of(side)[0].compare_exchange(st.id, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Gives up the hold of `token` that this thread keeps (its `kept` entry still names it):
    /// leaves the operation, settles a taker's claim, clears the mark, and frees the lock word
    /// unless a taker took it (see "Taking it from an idle holder").
    #[cold]
    fn give_up_hold(&self, side: &Side, token: u32) {
        // Out of any operation (Release: after everything it wrote). We are still the only
        // writer: the mark names us until we clear it below.
        side.busy.store(0, Ordering::Release);
        if !self.settle_mark(side, token) {
            if let Some(token) = OwnerToken::new(token) {
                side.lock.release_kept(token);
            }
        }
    }

    /// Clears `token`'s mark from `sticky`, first waiting for a taker's decision if one is at
    /// work. Answers whether the lock word was taken from `token` (then it is not ours to free).
    #[cold]
    fn settle_mark(&self, side: &Side, token: u32) -> bool {
        let clear = |side: &Side| {
            let _ = side
                .sticky
                .fetch_update(Ordering::Release, Ordering::Relaxed, |s| (s & STICKY_TOKEN == token).then_some(0));
        };
        loop {
            let s = side.sticky.load(Ordering::Acquire);
            if s & STICKY_TOKEN != token {
                return false;
            }
            if s & STICKY_STOLEN == 0 {
                if side.sticky.compare_exchange(s, 0, Ordering::Release, Ordering::Relaxed).is_ok() {
                    return false;
                }
                continue;
            }
            let w = side.steal.load(Ordering::Acquire);
            let taker = w & STICKY_TOKEN;
            if w & STEAL_DONE != 0 {
                // Taken while we were idle: the word names the taker (or whoever had it since).
                let _ = side.steal.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed);
                clear(side);
                return true;
            }
            if taker == 0 || !self.member_alive(taker) {
                // No live taker is deciding: the lock word says whether it was taken.
                let taken = side.lock.holder() != Some(token);
                if taker != 0 {
                    let _ = side.steal.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
                if taken {
                    clear(side);
                    return true;
                }
                let _ = side.sticky.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
                    (s & STICKY_TOKEN == token && s & STICKY_STOLEN != 0).then_some(s & !STICKY_STOLEN)
                });
                continue;
            }
            // A live taker between its mark and its decision: a fence and a load away.
            std::thread::yield_now();
        }
    }

    /// Clears a solo holder's mark that no live holder will clear: one whose member is gone, or
    /// a bare [`STICKY_WANTED`] left by a race. A mark with [`STICKY_STOLEN`] of a live member
    /// stays until that member has seen it. Called with the side's lock held.
    #[cold]
    fn clear_stale_mark(&self, side: &Side) {
        let _ = side.sticky.fetch_update(Ordering::Release, Ordering::Relaxed, |s| {
            let t = s & STICKY_TOKEN;
            (s != 0 && (t == 0 || s & STICKY_STOLEN == 0 || !self.member_alive(t))).then_some(0)
        });
    }

    /// Takes the lock that another member's solo handle keeps, if that holder is between
    /// operations (see "Taking it from an idle holder"). `None` if there is no such hold, another
    /// taker is at work, the fence is refused, or the holder is inside an operation (it gives the
    /// lock up at its end, as it was asked to).
    #[cold]
    fn try_steal<'a>(&'a self, side: &'a Side, me: OwnerToken) -> Option<RobustMutexGuard<'a>> {
        let s = side.sticky.load(Ordering::Acquire);
        let holder = s & STICKY_TOKEN;
        if holder == 0
            || holder == me.get()
            || s & STICKY_STOLEN != 0
            || side.lock.holder() != Some(holder)
            || !self.member_alive(holder)
        {
            return None;
        }
        let from = OwnerToken::new(holder)?;
        // One taker at a time. A claim is void once done (the mark it left is gone, checked
        // above) or when its taker died.
        let w = side.steal.load(Ordering::Acquire);
        if w != 0 && w & STEAL_DONE == 0 && self.member_alive(w & STICKY_TOKEN) {
            return None;
        }
        side.steal.compare_exchange(w, me.get(), Ordering::AcqRel, Ordering::Relaxed).ok()?;
        let marked = side.sticky.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
            (s & STICKY_TOKEN == holder && s & STICKY_STOLEN == 0).then_some(s | STICKY_STOLEN | STICKY_WANTED)
        });
        if marked.is_err() {
            let _ = side.steal.compare_exchange(me.get(), 0, Ordering::AcqRel, Ordering::Relaxed);
            return None;
        }
        // The heavy half of the pair: after it, the holder's announcement is visible, or its next
        // check sees the mark.
        let idle = super::wait::asymmetric_fence() && side.busy.load(Ordering::Acquire) != holder;
        match if idle { side.lock.take_kept(from, me) } else { None } {
            Some(guard) => {
                side.steal.store(me.get() | STEAL_DONE, Ordering::Release);
                crate::trace::event!(
                    debug,
                    ring_id = self.cfg.ring_id,
                    from = holder,
                    "took a kept lock from an idle solo holder"
                );
                Some(guard)
            }
            None => {
                // Back off: the holder is inside an operation (it gives the lock up at its end),
                // or gave it up meanwhile.
                let _ = side.sticky.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
                    (s & STICKY_TOKEN == holder && s & STICKY_STOLEN != 0).then_some(s & !STICKY_STOLEN)
                });
                let _ = side.steal.compare_exchange(me.get(), 0, Ordering::AcqRel, Ordering::Relaxed);
                None
            }
        }
    }

    /// At the end of a solo handle's operation under an ordinary guard: keeps the lock if nobody
    /// waits for it and this process can be fenced; else frees it like `unlock_and_notify`.
    #[inline]
    pub(crate) fn finish_solo(
        &self,
        side: &Side,
        st: &mut Sticky,
        guard: Option<RobustMutexGuard<'_>>,
        event: &EventCount,
        n: u32,
    ) {
        let Some(guard) = guard else {
            // The operation ends (Release: after everything it wrote; see "Taking it from an idle
            // holder").
            side.busy.store(0, Ordering::Release);
            self.note_cpu(event);
            // Kept: no barrier here; waiters fence for us (see "Solo handles").
            crate::sys::atomic::compiler_fence(Ordering::SeqCst);
            event.notify(n);
            if side.sticky.load(Ordering::Relaxed) & STICKY_WANTED != 0 {
                self.release_sticky(side, st);
            }
            return;
        };
        if st.cool > 0 {
            st.cool -= 1;
            return self.unlock_and_notify(guard, event, n);
        }
        if side.sticky.load(Ordering::Relaxed) != 0 || side.lock.has_waiters() || !super::wait::register_for_fences() {
            // Somebody asked (or a stale mark, or a robbed holder's mark it has not seen yet):
            // serve them first.
            if side.sticky.load(Ordering::Relaxed) != 0 {
                self.clear_stale_mark(side);
            }
            st.cool = STICKY_COOL;
            return self.unlock_and_notify(guard, event, n);
        }
        let token = guard.token();
        let kept = self.kept_of(side);
        let id = NEXT_HOLD.fetch_add(1, Ordering::Relaxed);
        kept[1].store(thread_id(), Ordering::Relaxed);
        kept[0].store(id, Ordering::Release);
        // Nobody keeps the lock (the mark was 0): `busy` is ours from here; clear what an earlier
        // holder may have left in it.
        side.busy.store(0, Ordering::Relaxed);
        side.sticky.store(token.get(), Ordering::Relaxed);
        // The one fence of the hold: orders the mark before every later unfenced publish's read of
        // the waiter count (the waiters' side of the pair is their RMW announcement).
        std::sync::atomic::fence(Ordering::SeqCst);
        match guard.keep_held() {
            Ok(_) => {
                *st = Sticky { held: true, token: token.get(), pid: crate::sync::current_pid(), cool: 0, id };
                event.notify(n);
            }
            Err(guard) => {
                kept[0].store(0, Ordering::Relaxed);
                side.sticky.store(0, Ordering::Release);
                self.unlock_and_notify(guard, event, n);
            }
        }
    }

    /// Reads head and tail and checks they are within a capacity of each other. The published
    /// tail may lag behind the head (records are committed by their headers, and a sender that
    /// died may not have moved the tail), so either order is possible.
    pub(crate) fn indices_near(&self) -> Result<(u64, u64), &'static str> {
        let c = self.ctrl();
        let head = c.head.load(Ordering::Acquire);
        let tail = c.tail.load(Ordering::Acquire);
        if !self.index_ok(head) || !self.index_ok(tail) {
            return Err("ring index is at the end of its range");
        }
        if tail.abs_diff(head) > self.cfg.capacity {
            return Err("head and tail are more than a capacity apart");
        }
        if self.cfg.format != super::control::FORMAT_SLOTS && (head % 8 != 0 || tail % 8 != 0) {
            return Err("ring index is not on a record boundary");
        }
        Ok((head, tail))
    }

    /// Whether an index read from shared memory leaves room for the arithmetic done on it: one
    /// operation moves an index by at most a capacity (plus a record's zero marker), so an index
    /// at most [`Core::index_limit`] never wraps. Indices grow by the bytes (or slots) ever moved,
    /// so only a forged index comes near: 2^64 bytes take decades at memory bandwidth.
    #[inline(always)]
    pub(crate) fn index_ok(&self, i: u64) -> bool {
        i <= self.index_limit()
    }

    /// The largest index this ring's arithmetic accepts (see [`Core::index_ok`]).
    #[inline(always)]
    pub(crate) fn index_limit(&self) -> u64 {
        u64::MAX - self.cfg.capacity.saturating_mul(4).saturating_add(64).min(u64::MAX >> 1)
    }

    // ----- the two sides' entry loops, shared by both record formats -------------------------

    /// Takes the send lock with room for at least `need` units (bytes or slots); the cached head is
    /// refreshed when `want` units do not fit it. Answers the guard, the tail and the free units.
    /// Fails with `Disconnected` once every receiver is gone, `WouldBlock` for `Wait::Try`.
    ///
    /// `need` and `want` are at most the capacity (callers clamp them). The tail, the head and the
    /// cached head are read from shared memory and checked before any arithmetic: the answer
    /// satisfies `free <= capacity` and `tail + capacity` does not wrap.
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
            if let Some((tail, free)) = self.send_room(need, want)? {
                return Ok((guard, tail, free));
            }
            drop(guard);
            if let Wait::Try = wait {
                return Err(Fail::WouldBlock);
            }
            self.wait_for(&c.not_full, &c.recv.sticky, &c.send, spin, wait, Role::Receiver, || {
                let t = c.tail.load(Ordering::Relaxed);
                let h = c.head.load(Ordering::Acquire);
                // A tail behind the head means a sender died after publishing and before moving
                // the tail (receivers go by the records): worth retaking the lock, whose takeover
                // repairs the tail. Found by the models (`.ci/models`): a wrapping difference here
                // waited for ever.
                t.checked_sub(h).is_none_or(|used| used.saturating_add(need) <= cap)
            })?;
        }
    }

    /// Under the send lock: the tail and the free units if at least `need` are free (`None` if
    /// not); the cached head is refreshed when `want` units do not fit it. See `lock_for_send`.
    #[inline(always)]
    fn send_room(&self, need: u64, want: u64) -> Result<Option<(u64, u64)>, Fail> {
        let c = self.ctrl();
        let cap = self.cfg.capacity;
        let corrupted = |reason| Fail::Broken(Broken::Corrupted(reason));
        let tail = c.tail.load(Ordering::Relaxed);
        if !self.index_ok(tail) {
            return Err(corrupted("ring index is at the end of its range"));
        }
        if self.cfg.format != super::control::FORMAT_SLOTS && tail % 8 != 0 {
            return Err(corrupted("ring index is not on a record boundary"));
        }
        // Units in use by the cached head; it is only a hint, trusted when it is consistent.
        let cached = tail.checked_sub(c.send.cached.load(Ordering::Relaxed)).filter(|&u| u <= cap);
        let used = match cached {
            Some(used) if want.max(need) <= cap - used => used,
            _ => {
                let head = c.head.load(Ordering::Acquire);
                let used =
                    tail.checked_sub(head).filter(|&u| u <= cap).ok_or(corrupted("head and tail are inconsistent"))?;
                c.send.cached.store(head, Ordering::Relaxed);
                used
            }
        };
        let free = cap - used;
        Ok((free >= need).then_some((tail, free)))
    }

    /// [`lock_for_send`](Self::lock_for_send) for a solo handle: with the lock it keeps, no
    /// locked instruction (the guard is `None`); else the ordinary way (the caller ends with
    /// [`finish_solo`](Self::finish_solo), which may keep the lock). A kept lock is given up
    /// before any wait.
    #[inline]
    pub(crate) fn lock_for_send_solo(
        &self,
        st: &mut Sticky,
        spin: SpinPolicy,
        wait: Wait,
        need: u64,
        want: u64,
        repair: impl Fn() -> Result<(), &'static str>,
    ) -> Result<(Option<RobustMutexGuard<'_>>, u64, u64), Fail> {
        let c = self.ctrl();
        if self.sticky_enter(&c.send, st) {
            if !(self.receivers_maybe_gone() && self.peers_gone(Role::Receiver, false)) {
                match self.send_room(need, want) {
                    Ok(Some((tail, free))) => return Ok((None, tail, free)),
                    Ok(None) => {}
                    Err(f) => {
                        self.release_sticky(&c.send, st);
                        return Err(f);
                    }
                }
            }
            // Full (or the receivers gone): give the lock up before waiting or failing.
            self.release_sticky(&c.send, st);
        } else if st.held {
            // Taken over, asked for, or a forked copy: what we kept is no longer ours to use.
            self.release_sticky(&c.send, st);
        }
        let (guard, tail, free) = self.lock_for_send(spin, wait, need, want, repair)?;
        Ok((Some(guard), tail, free))
    }

    /// [`lock_for_recv`](Self::lock_for_recv) for a solo handle (see
    /// [`lock_for_send_solo`](Self::lock_for_send_solo)).
    #[inline]
    pub(crate) fn lock_for_recv_solo<T>(
        &self,
        st: &mut Sticky,
        spin: SpinPolicy,
        wait: Wait,
        repair: impl Fn() -> Result<(), &'static str>,
        probe: impl Fn(u64) -> Result<Option<T>, &'static str>,
    ) -> Result<(Option<RobustMutexGuard<'_>>, u64, T), Fail> {
        let c = self.ctrl();
        if self.sticky_enter(&c.recv, st) {
            let head = c.head.load(Ordering::Relaxed);
            if self.index_ok(head) {
                if let Ok(Some(x)) = probe(head) {
                    return Ok((None, head, x));
                }
            }
            // Empty (or something to report): the ordinary path waits or reports, without our hold.
            self.release_sticky(&c.recv, st);
        } else if st.held {
            self.release_sticky(&c.recv, st);
        }
        let (guard, head, x) = self.lock_for_recv(spin, wait, repair, probe)?;
        Ok((Some(guard), head, x))
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
            if !self.index_ok(head) {
                return corrupted("ring index is at the end of its range");
            }
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
            self.wait_for(&c.not_empty, &c.send.sticky, &c.recv, spin, wait, Role::Sender, || {
                !matches!(probe(c.head.load(Ordering::Acquire)), Ok(None))
            })?;
            waited = true;
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
        self.drop_membership();
    }
}

/// Bumps a counter that only the holder of a side's lock writes (no read-modify-write needed):
/// the one helper both record formats use for their statistics.
#[inline(always)]
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}
