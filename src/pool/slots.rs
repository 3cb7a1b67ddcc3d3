//! The pool's shared slots: where tasks are written in place and results read in place.
//!
//! ```text
//! segment payload: [ PoolHeader (one page) ][ slot 0 ][ slot 1 ] ... [ slot n-1 ]
//! slot:            [ state: u64 | SlotDesc (56 B) ][ data: inputs | outputs | status bytes ]
//! archived chunk:  data = [ inputs, each 16-aligned | item table | outputs, each 16-aligned | status bytes ]
//! ```
//!
//! The **state word** is the slot's whole life in one atomic: what stage it is in and, while a
//! worker holds it, that worker's pid, so a claim and its owner change together.
//!
//! | state | set by | meaning |
//! | --- | --- | --- |
//! | `FREE` | parent | unused |
//! | `QUEUED` | parent | inputs written, index pushed on the task queue |
//! | `RUNNING(pid)` | worker, inside the task queue's receive critical section | claimed |
//! | `DONE(pid)` | worker | outputs written (the result message follows) |
//! | `CANCELLED` | parent, from `QUEUED` only | the worker that pops it skips it and acknowledges |
//! | `FAILED` | parent, from `RUNNING(dead)` | its worker died after taking the message |
//!
//! # The state machine
//!
//! Every task message carries the slot's generation (`SlotDesc::seq`, bumped each time the slot
//! is queued); a worker ignores a message whose generation is not the slot's. The parent writes a
//! slot's descriptor and inputs only while it is `FREE`, and frees it only once its message has
//! left the task queue (so at most one message per slot is ever in the queue). "The message is in
//! the queue" below means: at an index at or past the queue's head (the parent is its only
//! sender); a worker holding it inside the receive critical section has not moved the head, and
//! if that worker dies the queue hands the same message to the next receiver.
//!
//! | from | to | who, when | what guarantees the message |
//! | --- | --- | --- | --- |
//! | `FREE` | `QUEUED` | parent: queue a chunk (descriptor, inputs, then the state, then the message) | it is sent next |
//! | `QUEUED` | `RUNNING(w)` | worker `w`, holding the message inside the section (compare-and-swap) | `w` leaves the section, consuming it, then runs the chunk |
//! | `RUNNING(d)` | `RUNNING(w)` | worker `w`, holding the message that dead `d` held inside the section (takeover) | as above; `d` never ran it (a run starts only after the message is consumed) |
//! | `RUNNING(d)` | `QUEUED` | parent, `d` dead and the message still in the queue (it died inside the section) | the message is handed out again; whoever gets it claims `QUEUED` |
//! | `RUNNING(d)` | `FAILED` -> `FREE` | parent, `d` dead and the message consumed | items `d` finished are delivered, the rest fail with `WorkerDied` |
//! | `RUNNING(w)` | `DONE(w)` | worker, outputs written | the result message follows |
//! | `DONE(w)` | `FREE` | parent: the result message, or `w` dead before sending it | delivered once (the generation check drops a late duplicate) |
//! | `QUEUED` | `CANCELLED` | parent, `cancel` (compare-and-swap) | the worker that gets the message acknowledges it |
//! | `CANCELLED` | `FREE` | parent: the acknowledgement, or the message consumed by a worker that died | (items were failed at cancel time) |
//!
//! The one race this table has to survive: a worker inside the section reads `RUNNING(d)` and
//! the parent resets it to `QUEUED` before the worker's compare-and-swap. The worker must then look
//! again, not drop the message: it holds the only message the slot waits for. Likewise a claim of
//! `QUEUED` that loses to a cancel looks again and finds `CANCELLED`. While a worker holds a
//! message, only these two parent moves can change the slot, so a worker's claim ends after at
//! most three looks. `tests/pool_hardening.rs` kills workers at every step of this (with
//! `FaultPlan`) and checks that every item settles exactly once.

use crate::sys::atomic::{AtomicU64, Ordering};

use bytemuck::{Pod, Zeroable};

use crate::segment::{Fingerprint, Segment, SegmentBuilder, SegmentError, SegmentKind};

pub(crate) const FREE: u32 = 0;
pub(crate) const QUEUED: u32 = 1;
pub(crate) const RUNNING: u32 = 2;
pub(crate) const DONE: u32 = 3;
pub(crate) const CANCELLED: u32 = 4;
/// Parent-side only: the worker that held the slot died.
pub(crate) const FAILED: u32 = 5;

/// A state word: stage in the high half, pid in the low half.
#[inline(always)]
pub(crate) fn word(stage: u32, pid: u32) -> u64 {
    (u64::from(stage) << 32) | u64::from(pid)
}

#[inline(always)]
pub(crate) fn stage(w: u64) -> u32 {
    (w >> 32) as u32
}

#[inline(always)]
pub(crate) fn owner(w: u64) -> u32 {
    w as u32
}

/// Bytes before a slot's data: the state word, the descriptor.
pub(crate) const SLOT_HEADER: usize = 64;
/// The largest alignment a task's input or output type may have.
pub(crate) const MAX_ALIGN: usize = 64;

/// What the parent writes about a task before it queues it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct SlotDesc {
    /// The slot's generation: the task message carries it too, so a stale message is recognized.
    pub seq: u32,
    pub count: u32,
    /// Code offset of the chunk trampoline.
    pub tramp: u64,
    pub size_t: u32,
    pub align_t: u32,
    pub size_r: u32,
    pub align_r: u32,
    pub in_off: u32,
    pub out_off: u32,
    pub status_off: u32,
    /// [`KIND_POD`] (the layout above) or [`KIND_ARCHIVED`] (see [`SlotDesc::fits_archived`]).
    pub kind: u32,
    /// Archived chunks with a context: the slot holding the context's archive, and its length;
    /// or, with bit 31 of the length set (`spill::SPILLED`), the slot holding a `spill::CTX_RECORD`
    /// record naming the spill file that holds it (layout version 2).
    pub ctx_slot: u32,
    pub ctx_len: u32,
}

const _: () = assert!(8 + std::mem::size_of::<SlotDesc>() <= SLOT_HEADER, "the descriptor must fit the slot header");

/// A chunk of `Pod` values at fixed sizes.
pub(crate) const KIND_POD: u32 = 0;
/// A chunk of archived values: an item table says where each lies.
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const KIND_ARCHIVED: u32 = 1;
/// Bytes of one entry of an archived chunk's item table: input offset and length (written by the
/// parent), output offset and length (written by the worker), each a little-endian `u32`
/// relative to the data area.
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const TABLE_ENTRY: usize = 16;
/// Alignment of every archived input and output in a slot (rkyv's largest, `u128`'s).
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const ARCHIVE_ALIGN: usize = 16;

impl SlotDesc {
    /// Lays out a chunk of `count` items in a data area of `data_len` bytes; `None` if it does
    /// not fit.
    pub(crate) fn layout(
        count: usize,
        (size_t, align_t): (usize, usize),
        (size_r, align_r): (usize, usize),
        data_len: usize,
    ) -> Option<SlotDesc> {
        if align_t > MAX_ALIGN || align_r > MAX_ALIGN {
            return None;
        }
        let in_end = count.checked_mul(size_t)?;
        let out_off = in_end.div_ceil(align_r.max(1)) * align_r.max(1);
        let out_end = out_off.checked_add(count.checked_mul(size_r)?)?;
        let status_end = out_end.checked_add(count)?;
        if status_end > data_len {
            return None;
        }
        Some(SlotDesc {
            seq: 0,
            count: u32::try_from(count).ok()?,
            tramp: 0,
            size_t: size_t as u32,
            align_t: align_t as u32,
            size_r: size_r as u32,
            align_r: align_r as u32,
            in_off: 0,
            out_off: out_off as u32,
            status_off: out_end as u32,
            kind: KIND_POD,
            ctx_slot: 0,
            ctx_len: 0,
        })
    }

    /// Re-checks a descriptor read from shared memory against the data area's size: every range
    /// the worker will touch must lie inside it.
    pub(crate) fn fits(&self, data_len: usize) -> bool {
        let c = u128::from(self.count);
        let in_end = u128::from(self.in_off) + c * u128::from(self.size_t);
        let out_end = u128::from(self.out_off) + c * u128::from(self.size_r);
        let status_end = u128::from(self.status_off) + c;
        self.kind == KIND_POD
            && self.in_off == 0
            && in_end <= u128::from(self.out_off)
            && out_end <= u128::from(self.status_off)
            && status_end <= data_len as u128
    }

    /// Re-checks an archived chunk's descriptor read from shared memory: `[0, in_off)` inputs,
    /// `[in_off, in_off + 16 * count)` the item table, `[out_off, status_off)` room for outputs,
    /// `[status_off, status_off + count)` status bytes, in that order inside the data area, the
    /// table and the output room 16-aligned.
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub(crate) fn fits_archived(&self, data_len: usize) -> bool {
        let c = u128::from(self.count);
        let table_end = u128::from(self.in_off) + c * TABLE_ENTRY as u128;
        self.kind == KIND_ARCHIVED
            && self.count > 0
            && self.in_off as usize % ARCHIVE_ALIGN == 0
            && self.out_off as usize % ARCHIVE_ALIGN == 0
            && table_end <= u128::from(self.out_off)
            && self.out_off <= self.status_off
            && u128::from(self.status_off) + c <= data_len as u128
    }

    /// How many items of these sizes fit in a data area.
    pub(crate) fn capacity(size_t: usize, size_r: usize, align_r: usize, data_len: usize) -> usize {
        let per = size_t + size_r + 1;
        let mut n = data_len / per.max(1);
        while n > 0 && SlotDesc::layout(n, (size_t, 1), (size_r, align_r), data_len).is_none() {
            n -= 1;
        }
        n
    }
}

/// The first page of the slots segment: its geometry, for a re-executed worker to check.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct PoolHeader {
    pub slot_count: u32,
    pub slot_bytes: u32,
}

/// The slots segment, mapped.
#[derive(Debug)]
pub(crate) struct Slots {
    seg: Segment,
    pub count: usize,
    pub slot_bytes: usize,
}

impl Slots {
    fn builder() -> SegmentBuilder {
        SegmentBuilder::new(SegmentKind::Pool, Fingerprint::tagged::<PoolHeader>("ringpool::pool::slots/2"))
    }

    /// Creates `count` slots of `slot_bytes` (a multiple of 64) in anonymous memory.
    pub(crate) fn create(count: usize, slot_bytes: usize) -> Result<Slots, SegmentError> {
        let page = crate::sys::page_size();
        let len = count
            .checked_mul(slot_bytes)
            .and_then(|b| b.checked_add(page))
            .ok_or(SegmentError::InvalidSize("slots too large"))?;
        let header = PoolHeader {
            slot_count: u32::try_from(count).map_err(|_| SegmentError::InvalidSize("too many slots"))?,
            slot_bytes: u32::try_from(slot_bytes).map_err(|_| SegmentError::InvalidSize("slots too large"))?,
        };
        let seg = Self::builder().payload_len(len).anonymous(|u| {
            // SAFETY: the payload is page-aligned, zeroed, at least a page, and unpublished.
            unsafe { u.as_ptr().cast::<PoolHeader>().as_ptr().write(header) };
            Ok(())
        })?;
        Ok(Slots { seg, count, slot_bytes })
    }

    /// Opens the slots segment from a descriptor (in a re-executed worker), checking its geometry.
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd) -> Result<Slots, SegmentError> {
        let seg = Self::builder().from_fd(fd)?;
        // SAFETY: the payload starts page-aligned and is at least a page (segment invariants).
        let h: PoolHeader = unsafe { seg.payload().cast::<PoolHeader>().as_ptr().read_volatile() };
        let (count, slot_bytes) = (h.slot_count as usize, h.slot_bytes as usize);
        let fits = slot_bytes >= SLOT_HEADER
            && slot_bytes % 64 == 0
            && count.checked_mul(slot_bytes).and_then(|b| b.checked_add(crate::sys::page_size()))
                <= Some(seg.payload_len());
        if !fits || count == 0 {
            return Err(SegmentError::Corrupted { reason: "pool slot geometry does not fit its segment" });
        }
        Ok(Slots { seg, count, slot_bytes })
    }

    /// The segment's descriptor (to hand to a re-executed worker).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.seg.fd()
    }

    fn base(&self, slot: usize) -> *mut u8 {
        let slot = slot.min(self.count - 1);
        // SAFETY: slot < count, and page + count * slot_bytes <= payload_len (checked at creation
        // and at open), so the slot's start lies inside the mapping.
        unsafe { self.seg.payload().as_ptr().add(crate::sys::page_size() + slot * self.slot_bytes) }
    }

    /// Bytes of data per slot.
    pub(crate) fn data_len(&self) -> usize {
        self.slot_bytes - SLOT_HEADER
    }

    /// The slot's state word.
    pub(crate) fn state(&self, slot: usize) -> &AtomicU64 {
        // SAFETY: the slot start is 64-aligned (page-aligned payload, slot_bytes a multiple of
        // 64) and inside the mapping, which lives as long as `self`; any bits are a valid u64.
        unsafe { &*self.base(slot).cast::<AtomicU64>() }
    }

    /// Writes the slot's descriptor (parent, before queuing).
    pub(crate) fn write_desc(&self, slot: usize, desc: &SlotDesc) {
        // SAFETY: bytes 8..64 of the slot, 8-aligned, inside the mapping; only the parent writes
        // descriptors, and only while the slot is FREE (no worker reads it until it is queued,
        // which happens after this write, published by the queue's Release).
        unsafe { self.base(slot).wrapping_add(8).cast::<SlotDesc>().write(*desc) }
    }

    /// Reads the slot's descriptor by value (worker, after claiming). Garbage is possible only if
    /// something other than the pool wrote it; callers check it with [`SlotDesc::fits`].
    pub(crate) fn read_desc(&self, slot: usize) -> SlotDesc {
        // SAFETY: as in write_desc; a volatile read by value, so a concurrent scribbler can only
        // give us garbage that the checks reject.
        unsafe { self.base(slot).wrapping_add(8).cast::<SlotDesc>().read_volatile() }
    }

    /// The slot's data area.
    pub(crate) fn data(&self, slot: usize) -> *mut u8 {
        // SAFETY: SLOT_HEADER < slot_bytes, so the data start is inside the slot.
        unsafe { self.base(slot).add(SLOT_HEADER) }
    }

    /// Moves a slot's state from `from` to `to`; answers whether it did.
    pub(crate) fn transition(&self, slot: usize, from: u64, to: u64) -> bool {
        self.state(slot).compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Parent, `FREE` -> `QUEUED`: writes the descriptor, clears the status bytes, then publishes
    /// the state (Release). The task message is sent after this.
    pub(crate) fn publish_queued(&self, slot: usize, desc: &SlotDesc) {
        self.write_desc(slot, desc);
        if desc.fits(self.data_len()) || desc.fits_archived(self.data_len()) {
            // SAFETY: `fits` checked that the status bytes lie inside the slot's data area; the
            // slot is FREE, so only the parent (this caller) touches it.
            unsafe { self.data(slot).wrapping_add(desc.status_off as usize).write_bytes(0, desc.count as usize) };
        }
        self.state(slot).store(word(QUEUED, 0), Ordering::Release);
    }

    /// Parent: the slot's message has left the queue and its result (or its fate) is handled.
    pub(crate) fn free(&self, slot: usize) {
        self.state(slot).store(word(FREE, 0), Ordering::Release);
    }

    /// Parent, `cancel`: `QUEUED` -> `CANCELLED` (compare-and-swap); answers whether it did.
    pub(crate) fn cancel_queued(&self, slot: usize) -> bool {
        self.transition(slot, word(QUEUED, 0), word(CANCELLED, 0))
    }

    /// Worker, `RUNNING(pid)` -> `DONE(pid)`: outputs written (Release). The result message follows.
    pub(crate) fn mark_done(&self, slot: usize, pid: u32) {
        self.state(slot).store(word(DONE, pid), Ordering::Release);
    }

    /// Parent: the worker `pid` is dead (its results already taken); settles `slot` as far as the
    /// state word goes. `still_queued`: the slot's message is still in the task queue (at or past
    /// its head). `RUNNING(pid)` goes back to `QUEUED` (it died inside the claim's section; the
    /// message is handed out again) or to `FAILED` (it consumed the message).
    pub(crate) fn settle_dead(
        &self,
        slot: usize,
        pid: u32,
        still_queued: bool,
        faults: &super::faults::FaultPlan,
    ) -> DeadSlot {
        let w = self.state(slot).load(Ordering::Acquire);
        match stage(w) {
            RUNNING if owner(w) == pid => {
                faults.parent_at(super::faults::FaultPoint::ParentSettle);
                if still_queued {
                    // A lost compare-and-swap: a surviving worker took it over meanwhile.
                    if self.transition(slot, w, word(QUEUED, 0)) { DeadSlot::Requeued } else { DeadSlot::Untouched }
                } else if self.transition(slot, w, word(FAILED, 0)) {
                    DeadSlot::Failed
                } else {
                    DeadSlot::Untouched
                }
            }
            DONE if owner(w) == pid => DeadSlot::Finished,
            CANCELLED if !still_queued => DeadSlot::CancelTaken,
            _ => DeadSlot::Untouched,
        }
    }
}

/// What [`Slots::settle_dead`] did to a dead worker's slot, and what the parent does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadSlot {
    /// Nothing of the dead worker's (or a survivor moved it first).
    Untouched,
    /// `RUNNING(dead)` -> `QUEUED`: its message is handed out again.
    Requeued,
    /// `RUNNING(dead)` -> `FAILED`: deliver what it finished, fail the rest, free the slot.
    Failed,
    /// `DONE(dead)`, never announced: deliver, free.
    Finished,
    /// `CANCELLED` and its message taken by someone who may never acknowledge: free.
    CancelTaken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_fit_and_refuse() {
        let d = SlotDesc::layout(10, (8, 8), (4, 4), 1000).unwrap();
        assert!(d.fits(1000));
        assert_eq!((d.out_off, d.status_off), (80, 120));
        assert!(SlotDesc::layout(100, (8, 8), (8, 8), 1000).is_none());
        assert!(SlotDesc::layout(1, (1, 1), (8, 128), 1000).is_none(), "alignment above 64");
        let cap = SlotDesc::capacity(8, 8, 8, 16_320);
        assert!(SlotDesc::layout(cap, (8, 8), (8, 8), 16_320).is_some());
        assert!(SlotDesc::layout(cap + 1, (8, 8), (8, 8), 16_320).is_none());
        let mut bad = d;
        bad.count = 1 << 30;
        assert!(!bad.fits(1000));
        bad = d;
        bad.out_off = 4;
        assert!(!bad.fits(1000), "outputs overlapping inputs");
    }

    #[test]
    fn words() {
        let w = word(RUNNING, 1234);
        assert_eq!((stage(w), owner(w)), (RUNNING, 1234));
    }
}
