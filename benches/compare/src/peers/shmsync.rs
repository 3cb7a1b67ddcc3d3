//! **shared_memory 0.12 + raw_sync 0.1**: the obvious ring a user builds from the two crates, used
//! as their docs and examples show (`ShmemConf::new().size(..).os_id(..).create()` / `.open()`,
//! `raw_sync::locks::Mutex::new(base, data)`, `raw_sync::events::Event::new(mem, auto_reset)`).
//!
//! One segment in `/dev/shm` (created by the receiving end, which owns it and unlinks it when it
//! drops) holds a raw_sync `Mutex` guarding two counters (`head`, `tail`), two auto-reset `Event`s
//! (`not_empty`, `not_full`) and `depth` fixed slots of `8 + size` bytes (a length, then the
//! message). Sending: lock; while the ring is full, unlock and wait on `not_full`
//! (`Timeout::Infinite`: the crate's timed waits fail at once, see DEPS.md); write the message in
//! place into the slot at `tail`, `tail += 1`, unlock, set `not_empty`. Receiving: the mirror
//! image, the message read in place under the lock. One lock hold per message on each side, an
//! event set per message (a `pthread_cond_signal` under the event's own mutex): what the crates'
//! API leads to. `depth` is the run's channel depth.
//!
//! The segment is created and initialised completely before its name goes over the link, so the
//! opener never races the creator (shared_memory's defect 3 in DEPS.md does not bite here).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use raw_sync::Timeout;
use raw_sync::events::{Event, EventImpl, EventInit, EventState};
use raw_sync::locks::{LockImpl, LockInit, Mutex};
use shared_memory::{Shmem, ShmemConf};

use crate::harness::Result;
use crate::payload::Message;
use crate::peers::{Ctx, Peer, Rx, Tx};

/// The shared_memory + raw_sync ring.
pub struct ShmSync;

/// Where each part sits in the segment (each raw_sync object gets 256 bytes; checked at run time).
const MUTEX_AT: usize = 0;
const NOT_EMPTY_AT: usize = 256;
const NOT_FULL_AT: usize = 512;
/// `head`, `tail`, `depth`, `slot` (u64 each): the mutex's data.
const HEADER_AT: usize = 768;
const SLOTS_AT: usize = 1024;
const OBJECT_ROOM: usize = 256;

/// One end: the segment, the lock and the two events, and the ring's shape.
pub struct ShmRing {
    mutex: Box<dyn LockImpl>,
    not_empty: Box<dyn EventImpl>,
    not_full: Box<dyn EventImpl>,
    area: Area,
    // Last: the lock and the events point into it.
    _shm: Shmem,
}

fn slot_len(size: usize) -> usize {
    8 + size.div_ceil(8) * 8
}

fn err(what: &str, e: impl std::fmt::Display) -> crate::harness::Error {
    format!("raw_sync {what}: {e}").into()
}

/// Each raw_sync object must fit its 256 bytes.
fn check_room(base: *mut u8) -> Result<()> {
    let sizes = [
        Mutex::size_of(Some(base.wrapping_add(MUTEX_AT))),
        Event::size_of(Some(base.wrapping_add(NOT_EMPTY_AT))),
        Event::size_of(Some(base.wrapping_add(NOT_FULL_AT))),
    ];
    if sizes.iter().any(|&s| s > OBJECT_ROOM) {
        return Err(format!("raw_sync objects need {sizes:?} bytes, more than the {OBJECT_ROOM} given").into());
    }
    Ok(())
}

/// The header and the slots, apart from the lock so that both can be borrowed at once.
struct Area {
    base: NonNull<u8>,
    depth: u64,
    slot: usize,
}

type Objects = (Box<dyn LockImpl>, Box<dyn EventImpl>, Box<dyn EventImpl>);

impl ShmRing {
    fn create(name: &str, depth: usize, size: usize) -> Result<Self> {
        let slot = slot_len(size);
        let bytes = depth.checked_mul(slot).and_then(|b| b.checked_add(SLOTS_AT)).ok_or("ring too large")?;
        let shm = ShmemConf::new().size(bytes).os_id(name).create()?;
        let base = shm.as_ptr();
        check_room(base)?;
        let data = base.wrapping_add(HEADER_AT);
        // SAFETY: the mutex's 256 bytes at MUTEX_AT lie in the new mapping, which `shm` keeps
        // alive as long as the ring; nothing else uses the segment until its name is sent.
        let (mutex, _) = unsafe { Mutex::new(base.wrapping_add(MUTEX_AT), data) }.map_err(|e| err("Mutex::new", e))?;
        // SAFETY: as above, the event's 256 bytes at NOT_EMPTY_AT.
        let (not_empty, _) =
            unsafe { Event::new(base.wrapping_add(NOT_EMPTY_AT), true) }.map_err(|e| err("Event::new", e))?;
        // SAFETY: as above, at NOT_FULL_AT.
        let (not_full, _) =
            unsafe { Event::new(base.wrapping_add(NOT_FULL_AT), true) }.map_err(|e| err("Event::new", e))?;
        let ring = Self::assemble(shm, (mutex, not_empty, not_full), depth as u64, slot)?;
        for (i, v) in [0, 0, depth as u64, slot as u64].into_iter().enumerate() {
            ring.area.header()[i].store(v, Ordering::Relaxed);
        }
        Ok(ring)
    }

    fn open(name: &str, size: usize) -> Result<Self> {
        let shm = ShmemConf::new().os_id(name).open()?;
        if shm.len() < SLOTS_AT {
            return Err(format!("segment {name} is {} bytes, too small", shm.len()).into());
        }
        let base = shm.as_ptr();
        check_room(base)?;
        let data = base.wrapping_add(HEADER_AT);
        // SAFETY: the creator initialised the mutex at MUTEX_AT, inside the mapping (at least
        // SLOTS_AT bytes, checked), before it sent the name.
        let (mutex, _) = unsafe { Mutex::from_existing(base.wrapping_add(MUTEX_AT), data) }
            .map_err(|e| err("Mutex::from_existing", e))?;
        // SAFETY: as above, the event at NOT_EMPTY_AT.
        let (not_empty, _) = unsafe { Event::from_existing(base.wrapping_add(NOT_EMPTY_AT)) }
            .map_err(|e| err("Event::from_existing", e))?;
        // SAFETY: as above, the event at NOT_FULL_AT.
        let (not_full, _) = unsafe { Event::from_existing(base.wrapping_add(NOT_FULL_AT)) }
            .map_err(|e| err("Event::from_existing", e))?;
        let mut ring = Self::assemble(shm, (mutex, not_empty, not_full), 1, 8)?;
        let (depth, slot) =
            (ring.area.header()[2].load(Ordering::Relaxed), ring.area.header()[3].load(Ordering::Relaxed));
        // The shape read from shared memory is checked before it bounds anything.
        let slot = usize::try_from(slot)?;
        let need = usize::try_from(depth)?.checked_mul(slot).and_then(|b| b.checked_add(SLOTS_AT));
        if depth == 0 || slot != slot_len(size) || need.is_none_or(|n| n > ring._shm.len()) {
            return Err(
                format!("segment {name}: depth {depth} x slot {slot} does not fit {} bytes", ring._shm.len()).into()
            );
        }
        (ring.area.depth, ring.area.slot) = (depth, slot);
        Ok(ring)
    }

    fn assemble(shm: Shmem, (mutex, not_empty, not_full): Objects, depth: u64, slot: usize) -> Result<Self> {
        let base = NonNull::new(shm.as_ptr()).ok_or("null mapping")?;
        Ok(Self { mutex, not_empty, not_full, area: Area { base, depth, slot }, _shm: shm })
    }
}

impl Area {
    /// `head`, `tail`, `depth`, `slot`: the words the mutex guards (read and written only under
    /// it, except the shape, written before the name is sent).
    fn header(&self) -> &[AtomicU64; 4] {
        // SAFETY: HEADER_AT + 32 <= SLOTS_AT lies in the mapping (at least SLOTS_AT bytes) and is
        // 8-aligned (the mapping is page-aligned); the other process only touches these words
        // through the same atomic view, so `AtomicU64`s are sound; the borrow ends before `self`.
        unsafe { &*self.base.as_ptr().wrapping_add(HEADER_AT).cast::<[AtomicU64; 4]>() }
    }

    /// `head` and `tail`, read under the lock, checked.
    fn counters(&self) -> Result<(u64, u64)> {
        let (head, tail) = (self.header()[0].load(Ordering::Relaxed), self.header()[1].load(Ordering::Relaxed));
        match tail.checked_sub(head) {
            Some(n) if n <= self.depth => Ok((head, tail)),
            _ => Err(format!("corrupt ring: head {head}, tail {tail}, depth {}", self.depth).into()),
        }
    }

    /// The slot for counter value `at` (its length word, then the message). Only while holding
    /// the lock, and only the slot the ring's counters give this side.
    fn slot_mut(&mut self, at: u64) -> &mut [u8] {
        let i = (at % self.depth) as usize;
        let p = self.base.as_ptr().wrapping_add(SLOTS_AT + i * self.slot);
        // SAFETY: i < depth and SLOTS_AT + depth * slot <= the mapping's length (checked at
        // open); the ring's protocol gives this slot to this side alone until it moves the
        // counter past it (under the lock), and `&mut self` keeps the borrow unique here.
        unsafe { std::slice::from_raw_parts_mut(p, self.slot) }
    }
}

impl Peer for ShmSync {
    const NAME: &'static str = "shmsync";
    const ABOUT: &'static str = "shared_memory 0.12 segment + raw_sync 0.1 Mutex and two auto-reset Events, the obvious \
         ring: depth slots, one lock hold per message, message written and read in place under the lock, \
         Event::wait(Timeout::Infinite) when full/empty, Event::set per message; blocking";
    type Tx = ShmRing;
    type Rx = ShmRing;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<ShmRing> {
        let name = format!("/{}", ctx.unique_name("shmsync"));
        let ring = ShmRing::create(&name, ctx.spec().depth, ctx.spec().size)?;
        ctx.link().send(name.as_bytes())?;
        Ok(ring)
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<ShmRing> {
        let name = ctx.link().recv_string()?;
        ShmRing::open(&name, ctx.spec().size)
    }
}

impl Tx for ShmRing {
    fn send(&mut self, msg: &Message) -> Result<()> {
        let len = msg.len();
        loop {
            let guard = self.mutex.lock().map_err(|e| err("Mutex::lock", e))?;
            let (head, tail) = self.area.counters()?;
            if tail - head < self.area.depth {
                let slot = self.area.slot_mut(tail);
                if len + 8 > slot.len() {
                    return Err(format!("a {len}-byte message does not fit a {}-byte slot", slot.len()).into());
                }
                slot[..8].copy_from_slice(&(len as u64).to_le_bytes());
                msg.write(&mut slot[8..8 + len]);
                self.area.header()[1].store(tail + 1, Ordering::Relaxed);
                drop(guard);
                self.not_empty.set(EventState::Signaled).map_err(|e| err("Event::set", e))?;
                return Ok(());
            }
            drop(guard);
            self.not_full.wait(Timeout::Infinite).map_err(|e| err("Event::wait", e))?;
        }
    }
}

impl Rx for ShmRing {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        loop {
            let guard = self.mutex.lock().map_err(|e| err("Mutex::lock", e))?;
            let (head, tail) = self.area.counters()?;
            if tail > head {
                let slot = self.area.slot_mut(head);
                let len = u64::from_le_bytes(slot[..8].try_into()?);
                let len = usize::try_from(len).ok().filter(|&l| l + 8 <= slot.len()).ok_or("corrupt slot length")?;
                let out = read(&slot[8..8 + len]);
                self.area.header()[0].store(head + 1, Ordering::Relaxed);
                drop(guard);
                self.not_full.set(EventState::Signaled).map_err(|e| err("Event::set", e))?;
                return Ok(out);
            }
            drop(guard);
            self.not_empty.wait(Timeout::Infinite).map_err(|e| err("Event::wait", e))?;
        }
    }
}
