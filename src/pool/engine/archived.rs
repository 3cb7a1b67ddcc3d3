//! The parent's side of archived chunks: packing archived inputs into a slot, reading the
//! outputs a worker wrote back (checked, never trusted), and dispatching again the items whose
//! outputs did not fit.
//!
//! ```text
//! data area: [ input 0 | input 1 | ... (each 16-aligned) | item table | outputs (each 16-aligned) ... | status bytes ]
//! table entry i: in_off u32 | in_len u32 (parent) | out_off u32 | out_len u32 (worker), little-endian
//! spilled input:  in_len = 16 | SPILLED (bit 31); the input area holds { pid u32, fd u32, len u64 }
//! spilled output: status ITEM_SPILLED; out_off = the worker's descriptor, out_len = the length
//! spilled context: desc ctx_len = 24 | SPILLED; its slot holds { pid u32, fd u32, len u64, id u64 }
//! ```
//!
//! Values larger than a slot go through spill files (`pool::spill`): an input whose archive
//! alone does not fit a slot is archived into a file the parent keeps open until the chunk is
//! delivered; an output that would not fit even if its item went alone is archived by the worker
//! into a file of its own, which the parent reads (checked, copied out) when it delivers the
//! chunk. A context larger than a slot goes into a spill file the job holds, which every worker
//! maps read-only (sealed: the bytes cannot change nor the file shrink) and keeps for the chunks
//! that name it. An output that does not fit the room its chunk left but would fit alone goes again
//! alone instead (`ITEM_OVERFLOW`). Values larger than `PoolBuilder::max_value_bytes` fail their
//! items with `TaskError::TooLarge`.
//!
//! The parent keeps its own copy of the layout it wrote ([`ArchSlot`]); from the slot it reads
//! back only the status bytes and the worker's half of the table, each checked against that
//! layout before it forms a range, and every output is validated (`rkyv::access`) before anything
//! reads it as a value.

use std::collections::VecDeque;

use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

use super::{ArchSlot, ArchSpec, Dispatch, Engine, Inflight, MAX_TRIES, Retry};
use crate::pool::archived::RawOut;
use crate::pool::error::{PoolError, TaskError};
use crate::pool::slots::{ARCHIVE_ALIGN, KIND_ARCHIVED, SlotDesc, TABLE_ENTRY};
use crate::pool::spill::{self, CTX_RECORD, RECORD, SPILLED, Spill};
use crate::pool::task::{
    ITEM_BAD_OUTPUT, ITEM_INVALID_INPUT, ITEM_OK, ITEM_OVERFLOW, ITEM_PANICKED, ITEM_SKIPPED, ITEM_SPILLED,
};
use crate::pool::worker;
use crate::process::ExitStatus;
use crate::ring::archive::{Archivable, Written, archive_measured, measure, write_into};

/// `n` rounded up to [`ARCHIVE_ALIGN`] (callers keep `n` below the data area's size, at most 1 GiB).
fn up16(n: usize) -> usize {
    n.div_ceil(ARCHIVE_ALIGN) * ARCHIVE_ALIGN
}

/// The items a chunk is packed from: fresh inputs of a map (archived as they are packed) or
/// archives to dispatch again (copied).
pub(crate) trait Items {
    /// Writes the next item's archive into `out`, whose first byte lies at position `base`;
    /// `None` when there is no next item (for this chunk).
    fn write_next(&mut self, out: &mut [u8], base: usize, arena: &mut Arena) -> Option<Written>;
    /// The size of the next item's archive at position `base`.
    fn measure_next(&mut self, base: usize, arena: &mut Arena) -> Result<usize, String>;
    /// The next item's archive, `needed` bytes (measured), in a buffer of its own: to spill it.
    fn archive_next(&mut self, needed: usize, arena: &mut Arena) -> Result<AlignedVec<16>, String>;
    /// The spill file of the next item, whose record `write_next` just wrote (retries only).
    #[inline(always)]
    fn take_spill(&mut self) -> Option<Spill> {
        None
    }
    /// The next item's index in its job.
    fn index(&self) -> usize;
    /// Retries the next item had.
    fn tries(&self) -> u8;
    /// Moves past the next item.
    fn advance(&mut self);
}

/// A map's inputs, archived into the slot as they are packed.
pub(crate) struct Fresh<'a, T> {
    pub buffer: &'a mut VecDeque<T>,
    pub next: usize,
}

impl<T: Archivable> Items for Fresh<'_, T> {
    fn write_next(&mut self, out: &mut [u8], base: usize, arena: &mut Arena) -> Option<Written> {
        Some(write_into(self.buffer.front()?, out, base, arena))
    }
    fn measure_next(&mut self, base: usize, arena: &mut Arena) -> Result<usize, String> {
        self.buffer.front().map_or(Ok(0), |t| measure(t, base, arena))
    }
    fn archive_next(&mut self, needed: usize, arena: &mut Arena) -> Result<AlignedVec<16>, String> {
        let t = self.buffer.front().ok_or("no item")?;
        archive_measured(t, needed, arena)
    }
    fn index(&self) -> usize {
        self.next
    }
    fn tries(&self) -> u8 {
        0
    }
    fn advance(&mut self) {
        self.buffer.pop_front();
        self.next += 1;
    }
}

/// Archives waiting to be dispatched again: consecutive ones of one job and spec go together; one
/// marked `alone` goes by itself.
struct Again<'a> {
    queue: &'a mut VecDeque<Retry>,
    job: usize,
    spec: ArchSpec,
    taken: usize,
}

impl Items for Again<'_> {
    fn write_next(&mut self, out: &mut [u8], _base: usize, _arena: &mut Arena) -> Option<Written> {
        let r = self.queue.front()?;
        if r.job != self.job || r.spec != self.spec || (r.alone && self.taken > 0) {
            return None;
        }
        if let Some(s) = &r.spill {
            // A spilled input goes again through its file: the slot gets its record.
            return Some(match out.get_mut(..RECORD) {
                Some(dst) => {
                    dst.copy_from_slice(&s.record(std::process::id()));
                    Written::Done(RECORD)
                }
                None => Written::Overflow,
            });
        }
        // The archive was written at a 16-aligned position and lands at one again: its
        // alignments hold.
        Some(match out.get_mut(..r.bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(&r.bytes);
                Written::Done(r.bytes.len())
            }
            None => Written::Overflow,
        })
    }
    fn measure_next(&mut self, _base: usize, _arena: &mut Arena) -> Result<usize, String> {
        Ok(self.queue.front().map_or(0, |r| r.bytes.len()))
    }
    fn archive_next(&mut self, _needed: usize, _arena: &mut Arena) -> Result<AlignedVec<16>, String> {
        let r = self.queue.front().ok_or("no item")?;
        let mut v = AlignedVec::<16>::with_capacity(r.bytes.len());
        v.extend_from_slice(&r.bytes);
        Ok(v)
    }
    fn take_spill(&mut self) -> Option<Spill> {
        self.queue.front_mut()?.spill.take()
    }
    fn index(&self) -> usize {
        self.queue.front().map_or(0, |r| r.index)
    }
    fn tries(&self) -> u8 {
        self.queue.front().map_or(0, |r| r.tries)
    }
    fn advance(&mut self) {
        if let Some(r) = self.queue.pop_front() {
            self.taken += 1;
            if r.alone {
                // Nothing joins an item that goes alone.
                self.job = usize::MAX;
            }
        }
    }
}

impl Engine {
    /// Archives a job's context into a slot of its own, held until the job goes; answers the
    /// slot and the archive's length. A context larger than a slot (up to the pool's largest
    /// value) goes into a spill file the job holds, and the slot gets a record naming it (the
    /// length answered is then `CTX_RECORD | SPILLED`): every worker maps that file and reads the
    /// context in place. Waits (driving the pool) while no slot is free.
    pub(crate) fn put_context<C: Archivable>(&mut self, job: usize, ctx: &C) -> Result<(u32, u32), PoolError> {
        if self.ctx_held + 2 > self.settings.slots {
            return Err(PoolError::InvalidSetting(
                "a context needs a slot of its own and a map at least one more: raise PoolBuilder::slots",
            ));
        }
        let slot = loop {
            if let Some(s) = self.free.pop() {
                break s;
            }
            self.pump(super::PUMP_WAIT)?;
        };
        let data_len = self.slots.data_len();
        // SAFETY: the slot came off the free list: it is FREE and ours, no worker reads it (no
        // message names it, and no chunk names it as a context yet); its data area is `data_len`
        // bytes inside the mapping, which outlives this borrow.
        let out = unsafe { std::slice::from_raw_parts_mut(self.slots.data(slot as usize), data_len) };
        let written = write_into(ctx, out, 0, &mut self.arena);
        let placed = match written {
            Written::Done(n) => Ok((n as u32, None)),
            Written::Overflow => self.spill_context(ctx).map(|(record, s)| {
                // Every data area holds a record (`CTX_RECORD` bytes): the context overflowed it.
                let n = record.len().min(out.len());
                out[..n].copy_from_slice(&record[..n]);
                (n as u32 | SPILLED, Some(s.fd))
            }),
            Written::Failed(reason) => Err(PoolError::Archive { what: "context", reason }),
        };
        let (len, spill) = match placed {
            Ok(p) => p,
            Err(e) => {
                self.free.push(slot);
                return Err(e);
            }
        };
        match self.jobs.get_mut(job).and_then(Option::as_mut) {
            Some(j) => {
                j.ctx_slot = Some(slot);
                self.stats.spilled_contexts += u64::from(spill.is_some());
                j.ctx_spill = spill;
                self.ctx_held += 1;
                Ok((slot, len))
            }
            None => {
                self.free.push(slot);
                Err(PoolError::Closed)
            }
        }
    }

    /// A context larger than a slot: archived into a new spill file (sealed), and the record its
    /// slot carries, with an id of its own. Larger than the pool's largest value:
    /// [`PoolError::ArchiveTooLarge`] naming both sizes.
    fn spill_context<C: Archivable>(&mut self, ctx: &C) -> Result<([u8; CTX_RECORD], Spill), PoolError> {
        let archive = |reason| PoolError::Archive { what: "context", reason };
        let needed = measure(ctx, 0, &mut self.arena).map_err(archive)?;
        let max = self.settings.max_value;
        if needed > max {
            return Err(PoolError::ArchiveTooLarge { what: "context", needed, available: max });
        }
        let bytes = archive_measured(ctx, needed, &mut self.arena).map_err(archive)?;
        let s = spill::create(&bytes).map_err(|e| archive(format!("it could not be written to a spill file: {e}")))?;
        self.ctx_ids = self.ctx_ids.wrapping_add(1);
        Ok((spill::ctx_record(std::process::id(), &s, self.ctx_ids), s))
    }

    /// Packs up to `chunk` of `buffer`'s items (the job's items `first..`) into a free slot and
    /// queues it. Items that cannot be archived, or whose archive alone is larger than a slot,
    /// fail at once (counted in what `Sent` answers, as consumed).
    pub(crate) fn dispatch_archived<T: Archivable>(
        &mut self,
        job: usize,
        spec: ArchSpec,
        first: usize,
        buffer: &mut VecDeque<T>,
        chunk: usize,
    ) -> Dispatch {
        if buffer.is_empty() {
            return Dispatch::Exhausted;
        }
        let mut items = Fresh { buffer, next: first };
        match self.pack(job, spec, chunk, &mut items, true, false) {
            Some(_) => Dispatch::Sent(items.next - first),
            None => Dispatch::NoSlot,
        }
    }

    /// Queues one archived item for a free slot (futures): its input archived now, into a buffer;
    /// dispatched at once if a slot is free. An input that cannot be archived or is larger than a
    /// slot fails the item at once.
    pub(crate) fn push_archived<T: Archivable>(&mut self, job: usize, spec: ArchSpec, input: &T) {
        let available = self.slots.data_len().saturating_sub(ARCHIVE_ALIGN - 1 + TABLE_ENTRY + 1);
        let limit = self.settings.max_value;
        let archived = measure(input, 0, &mut self.arena).and_then(|needed| {
            if needed > limit {
                return Ok(Err(TaskError::TooLarge { what: "input", needed, available: limit }));
            }
            let bytes = archive_measured(input, needed, &mut self.arena)?;
            if bytes.len() <= available {
                return Ok(Ok((bytes, None)));
            }
            // Larger than a slot: it goes through a spill file.
            let s =
                spill::create(&bytes).map_err(|e| format!("the input could not be written to a spill file: {e}"))?;
            Ok(Ok((AlignedVec::new(), Some(s))))
        });
        if let Some(Some(j)) = self.jobs.get_mut(job) {
            j.remaining += 1;
        }
        match archived {
            Ok(Ok((bytes, spill))) => {
                self.stats.spilled_inputs += u64::from(spill.is_some());
                self.retries.push_back(Retry { job, index: 0, bytes, spec, alone: false, tries: 0, spill });
                self.dispatch_pending();
            }
            Ok(Err(e)) => self.fail_items(job, 0, 1, &e),
            Err(reason) => self.fail_items(job, 0, 1, &TaskError::InvalidInput { reason }),
        }
    }

    /// Dispatches waiting archives into free slots.
    pub(super) fn dispatch_retries(&mut self) {
        while let Some(r) = self.retries.front() {
            if self.free.is_empty() {
                return;
            }
            let (job, spec) = (r.job, r.spec);
            let alone = r.alone;
            let mut queue = std::mem::take(&mut self.retries);
            let mut items = Again { queue: &mut queue, job, spec, taken: 0 };
            let chunk = if alone { 1 } else { usize::MAX };
            let packed = self.pack(job, spec, chunk, &mut items, false, alone);
            // Anything queued meanwhile (failing an item runs no caller's code, queues nothing).
            queue.append(&mut self.retries);
            self.retries = queue;
            if packed.is_none() {
                return;
            }
        }
    }

    /// Packs items into a free slot and queues the chunk. `fresh`: the items are not counted in
    /// the job's remaining yet. Answers `None` if no slot was free, else how many items went.
    fn pack(
        &mut self,
        job: usize,
        spec: ArchSpec,
        chunk: usize,
        items: &mut impl Items,
        fresh: bool,
        alone: bool,
    ) -> Option<usize> {
        let slot = self.free.pop()? as usize;
        let data_len = self.slots.data_len();
        // SAFETY: the slot came off the free list: it is FREE and ours, no worker reads or writes
        // it until it is queued below; its data area is `data_len` bytes inside the mapping.
        let data = unsafe { std::slice::from_raw_parts_mut(self.slots.data(slot), data_len) };
        let est = self.jobs.get(job).and_then(Option::as_ref).map_or(64, |j| j.out_est);
        let cap = chunk.clamp(1, data_len / (2 * ARCHIVE_ALIGN + TABLE_ENTRY + 1)).min(u32::MAX as usize);
        let mut inputs: Vec<(u32, u32)> = Vec::new();
        let mut indices = Vec::new();
        let mut tries = Vec::new();
        let mut spills: Vec<(usize, Spill)> = Vec::new();
        let mut cursor = 0usize;
        while inputs.len() < cap {
            let k = inputs.len() + 1;
            let start = up16(cursor);
            // Room for this input: leave the table (k entries), an estimated output per item and
            // a status byte per item. The first item may take all but its table entry and status
            // byte (its output gets what its input leaves; if that is too little, it goes again
            // alone, and fails only if input and output together exceed a slot).
            let fixed = (ARCHIVE_ALIGN - 1) + k * (TABLE_ENTRY + 1);
            let with_outputs = fixed.saturating_add(k.saturating_mul(up16(est)));
            let limit = if inputs.is_empty() {
                data_len.saturating_sub(fixed)
            } else {
                match data_len.checked_sub(with_outputs) {
                    Some(l) if l > start => l,
                    _ => break,
                }
            };
            if limit <= start {
                break;
            }
            let Some(w) = items.write_next(&mut data[start..limit], start, &mut self.arena) else { break };
            match w {
                Written::Done(n) => {
                    let mut len = n as u32;
                    if let Some(s) = items.take_spill() {
                        // A retry of a spilled input: `n` is its record's length.
                        len |= SPILLED;
                        spills.push((inputs.len(), s));
                    }
                    inputs.push((start as u32, len));
                    indices.push(items.index());
                    tries.push(items.tries());
                    items.advance();
                    cursor = start + n;
                }
                Written::Overflow if inputs.is_empty() => {
                    // Larger than a slot: into a spill file, or failed if larger than the limit.
                    let needed = items.measure_next(0, &mut self.arena).unwrap_or(usize::MAX);
                    let index = items.index();
                    let tried = items.tries();
                    let max = self.settings.max_value;
                    let spilled = if needed > max {
                        Err(TaskError::TooLarge { what: "input", needed, available: max })
                    } else if limit - start < RECORD {
                        // Cannot happen: the smallest data area leaves room for a record.
                        Err(TaskError::TooLarge { what: "input", needed, available: limit - start })
                    } else {
                        items
                            .archive_next(needed, &mut self.arena)
                            .and_then(|bytes| {
                                spill::create(&bytes)
                                    .map_err(|e| format!("the input could not be written to a spill file: {e}"))
                            })
                            .map_err(|reason| TaskError::InvalidInput { reason })
                    };
                    items.advance();
                    match spilled {
                        Ok(s) => {
                            data[start..start + RECORD].copy_from_slice(&s.record(std::process::id()));
                            spills.push((inputs.len(), s));
                            inputs.push((start as u32, RECORD as u32 | SPILLED));
                            indices.push(index);
                            tries.push(tried);
                            cursor = start + RECORD;
                            self.stats.spilled_inputs += 1;
                        }
                        Err(e) => self.fail_now(job, index, fresh, &e),
                    }
                }
                Written::Overflow => break,
                Written::Failed(reason) => {
                    let index = items.index();
                    items.advance();
                    self.fail_now(job, index, fresh, &TaskError::InvalidInput { reason });
                }
            }
        }
        let n = inputs.len();
        if n == 0 {
            self.free.push(slot as u32);
            return Some(0);
        }
        let table_off = up16(cursor);
        let out_off = table_off + n * TABLE_ENTRY;
        let status_off = data_len - n;
        if out_off > status_off {
            // Cannot happen: every limit above left room for the table and the status bytes.
            self.free.push(slot as u32);
            for (i, _) in indices.iter().zip(&inputs) {
                self.fail_now(job, *i, fresh, &TaskError::InvalidInput { reason: "layout".to_owned() });
            }
            return Some(n);
        }
        for (k, &(off, len)) in inputs.iter().enumerate() {
            let e = table_off + k * TABLE_ENTRY;
            data[e..e + 4].copy_from_slice(&off.to_le_bytes());
            data[e + 4..e + 8].copy_from_slice(&len.to_le_bytes());
            data[e + 8..e + 16].fill(0);
        }
        self.seq[slot] = self.seq[slot].wrapping_add(1);
        let (ctx_slot, ctx_len) = spec.ctx.unwrap_or((u32::MAX, 0));
        let desc = SlotDesc {
            seq: self.seq[slot],
            count: n as u32,
            tramp: spec.tramp,
            size_t: 0,
            align_t: 0,
            size_r: 0,
            align_r: 0,
            in_off: table_off as u32,
            out_off: out_off as u32,
            status_off: status_off as u32,
            kind: KIND_ARCHIVED,
            ctx_slot,
            ctx_len,
        };
        self.slots.publish_queued(slot, &desc);
        self.inflight[slot] = Some(Inflight {
            seq: desc.seq,
            job,
            first: indices[0],
            count: n,
            queue_index: 0,
            sent: false,
            size_r: 0,
            archived: true,
        });
        self.arch[slot] = Some(ArchSlot { desc, indices, inputs, tries, alone, spec, spills });
        self.outbox.push(worker::message(slot as u32, desc.seq));
        if fresh {
            if let Some(Some(j)) = self.jobs.get_mut(job) {
                j.remaining += n;
            }
        }
        self.stats.chunks += 1;
        Some(n)
    }

    /// Fails an item that never reached a slot.
    fn fail_now(&mut self, job: usize, index: usize, fresh: bool, e: &TaskError) {
        if fresh {
            if let Some(Some(j)) = self.jobs.get_mut(job) {
                j.remaining += 1;
            }
        }
        self.fail_items(job, index, 1, e);
    }

    /// Hands an archived chunk's outcomes to its job and frees the slot: outputs (copied out,
    /// validated later by the job's reader), errors, and items to dispatch again.
    pub(super) fn deliver_archived(&mut self, slot: usize, inf: Inflight, pid: u32, death: Option<ExitStatus>) {
        let Some(a) = self.arch.get_mut(slot).and_then(Option::take) else {
            self.free_slot(slot);
            return;
        };
        let d = a.desc;
        let n = a.indices.len();
        let data_len = self.slots.data_len();
        let base = self.slots.data(slot);
        // The parent's own layout (`d`) fits the data area (built so in `pack`); the bytes below
        // are copied out before they are looked at, so a worker still scribbling cannot change
        // them between a check and a use.
        let (status, table) = if d.fits_archived(data_len) && d.count as usize == n {
            // SAFETY: the worker published DONE (Release; loaded with Acquire) after writing, or
            // it is dead; the status bytes and the table lie inside the data area (`fits_archived`
            // on the parent's own descriptor); no one else writes the slot until it is freed.
            let status = unsafe { std::slice::from_raw_parts(base.wrapping_add(d.status_off as usize), n) }.to_vec();
            // SAFETY: as above, for the item table.
            let table =
                unsafe { std::slice::from_raw_parts(base.wrapping_add(d.in_off as usize), n * TABLE_ENTRY) }.to_vec();
            (status, table)
        } else {
            (vec![0; n], vec![0; n * TABLE_ENTRY])
        };
        let word = |k: usize, f: usize| {
            let at = k * TABLE_ENTRY + f * 4;
            u32::from_le_bytes([table[at], table[at + 1], table[at + 2], table[at + 3]]) as usize
        };
        let room = (d.out_off as usize)..(d.status_off as usize);
        // Each OK item's output, checked to lie in the output room, 16-aligned from its start.
        let mut outs: Vec<Option<Result<(usize, usize), String>>> = vec![None; n];
        let mut end = room.start;
        for k in 0..n {
            if status[k] != ITEM_OK {
                continue;
            }
            let (off, len) = (word(k, 2), word(k, 3));
            let ok = off >= room.start
                && (off - room.start) % ARCHIVE_ALIGN == 0
                && off.checked_add(len).is_some_and(|e| e <= room.end);
            outs[k] = Some(if ok {
                end = end.max(off + len);
                Ok((off - room.start, len))
            } else {
                Err(format!("the worker's table puts the output at {off}+{len}, outside the room {room:?}"))
            });
        }
        let mut buf = AlignedVec::<16>::with_capacity(end - room.start);
        if end > room.start {
            // SAFETY: `room.start..end` lies inside the output room (checked per item above), which
            // lies inside the data area; the slot is still ours (see the status bytes above).
            let bytes = unsafe { std::slice::from_raw_parts(base.wrapping_add(room.start), end - room.start) };
            buf.extend_from_slice(bytes);
        }
        let buf = std::sync::Arc::new(buf);
        let mut a = a;
        let mut settled = 0usize;
        let mut failed = 0usize;
        let mut out_total = 0usize;
        let mut out_count = 0usize;
        let mut outcomes: Vec<(usize, Result<RawOut, TaskError>)> = Vec::with_capacity(n);
        for k in 0..n {
            let index = a.indices[k];
            let text = |panics: &mut std::collections::HashMap<(u32, u32, u32), (u32, String)>, what: &str| {
                panics
                    .remove(&(slot as u32, inf.seq, k as u32))
                    .map_or_else(|| format!("the worker did not say why ({what})"), |(_, t)| t)
            };
            let r = match status[k] {
                ITEM_OK => match outs[k].take() {
                    Some(Ok((off, len))) => {
                        out_total += len;
                        out_count += 1;
                        Ok(RawOut { buf: buf.clone(), off, len })
                    }
                    Some(Err(reason)) => Err(TaskError::InvalidOutput { reason }),
                    None => Err(TaskError::InvalidOutput { reason: "no output".to_owned() }),
                },
                ITEM_SPILLED => match self.read_spilled(pid, death.is_none(), word(k, 2), word(k, 3)) {
                    Ok(raw) => Ok(raw),
                    Err(Unread::Failed(e)) => Err(e),
                    Err(Unread::Lost(_)) if a.tries[k] < MAX_TRIES => {
                        // The worker died holding it: the item runs again.
                        self.again(&mut a, k, base, inf.job, false);
                        continue;
                    }
                    Err(Unread::Lost(reason)) => Err(match death {
                        Some(status) => TaskError::WorkerDied { pid, status },
                        None => TaskError::InvalidOutput { reason },
                    }),
                },
                ITEM_PANICKED => Err(TaskError::Panicked { pid, message: text(&mut self.panics, "panic") }),
                ITEM_INVALID_INPUT => Err(TaskError::InvalidInput { reason: text(&mut self.panics, "invalid input") }),
                ITEM_BAD_OUTPUT => Err(TaskError::InvalidOutput { reason: text(&mut self.panics, "output") }),
                ITEM_OVERFLOW | ITEM_SKIPPED => {
                    let overflow = status[k] == ITEM_OVERFLOW;
                    let needed = word(k, 3);
                    let max = self.settings.max_value;
                    if overflow && needed > max {
                        Err(TaskError::TooLarge { what: "output", needed, available: max })
                    } else if overflow && a.alone {
                        Err(TaskError::TooLarge { what: "output", needed, available: room.len() })
                    } else if a.tries[k] >= MAX_TRIES {
                        Err(TaskError::InvalidOutput { reason: "the workers kept skipping the item".to_owned() })
                    } else {
                        if overflow {
                            // Outputs are larger than the job's estimate: leave more room for them.
                            if let Some(Some(j)) = self.jobs.get_mut(inf.job) {
                                j.out_est = j.out_est.max(needed.min(room.len()));
                            }
                        }
                        self.again(&mut a, k, base, inf.job, overflow);
                        continue;
                    }
                }
                _ => match death {
                    Some(status) => Err(TaskError::WorkerDied { pid, status }),
                    None if status[k] == 0 => Err(TaskError::Terminated),
                    None => Err(TaskError::InvalidOutput { reason: format!("unknown status byte {}", status[k]) }),
                },
            };
            if r.is_err() {
                failed += 1;
            }
            settled += 1;
            outcomes.push((index, r));
        }
        if out_count > 0 {
            if let Some(Some(j)) = self.jobs.get_mut(inf.job) {
                let avg = out_total.div_ceil(out_count);
                // Lean towards the larger: an overflow costs a dispatch, spare room costs little.
                j.out_est = (j.out_est + avg.max(j.out_est / 2)).div_ceil(2).max(avg);
            }
        }
        if let Some(Some(job)) = self.jobs.get_mut(inf.job) {
            for (index, r) in outcomes {
                job.sink.archived(index, r);
            }
        }
        self.stats.completed += (settled - failed) as u64;
        self.stats.failed += failed as u64;
        self.finish_items(inf.job, settled);
        self.free_slot(slot);
    }
    /// Queues item `k` of a delivered chunk `a` (of `job`) to be dispatched again: its input
    /// copied out of the slot at `base`, or its spill file moved over.
    fn again(&mut self, a: &mut ArchSlot, k: usize, base: *const u8, job: usize, alone: bool) {
        let spill = a.spills.iter().position(|(i, _)| *i == k).map(|p| a.spills.swap_remove(p).1);
        let mut bytes = AlignedVec::<16>::new();
        if spill.is_none() {
            let (off, len) = a.inputs[k];
            let (off, len) = (off as usize, len as usize);
            if off.checked_add(len).is_some_and(|e| e <= a.desc.in_off as usize) {
                // SAFETY: the parent wrote this input there (its own record, inside the inputs'
                // part of the data area); the slot is still ours. A worker may have scribbled over
                // it: the next worker validates it.
                bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(base.wrapping_add(off), len) });
            }
        }
        self.stats.redispatched += 1;
        self.retries.push_back(Retry {
            job,
            index: a.indices[k],
            bytes,
            spec: a.spec,
            alone,
            tries: a.tries[k].saturating_add(1),
            spill,
        });
    }

    /// Reads a spilled output: `fd` and `len` as worker `pid` wrote them in the table (hostile
    /// until checked); `finished`: the worker finished the chunk (it did not die running it).
    fn read_spilled(&mut self, pid: u32, finished: bool, fd: usize, len: usize) -> Result<RawOut, Unread> {
        let max = self.settings.max_value;
        if len > max {
            return Err(Unread::Failed(TaskError::TooLarge { what: "output", needed: len, available: max }));
        }
        // A worker's spill files are read only while it is one of ours not reaped: its pid cannot
        // name another process then.
        let reachable = finished && self.workers.iter().any(|w| w.process.pid() == pid);
        if !reachable {
            return Err(Unread::Lost(format!("worker {pid} ended before its spilled output was read")));
        }
        match spill::read(pid, fd as u32, len) {
            Ok(bytes) => {
                self.stats.spilled_outputs += 1;
                Ok(RawOut { buf: std::sync::Arc::new(bytes), off: 0, len })
            }
            Err(spill::ReadError::Open(e)) if is_ending(pid) => {
                Err(Unread::Lost(format!("worker {pid} ended before its spilled output was read: {e}")))
            }
            Err(e) => {
                Err(Unread::Failed(TaskError::InvalidOutput { reason: format!("spilled output of worker {pid}: {e}") }))
            }
        }
    }
}

/// Initializer arguments larger than a slot (archived, `args`): into a new spill file (sealed)
/// the pool holds for its lifetime; answers the record their slot carries (id 1: the first
/// spilled value of the pool) and the file.
pub(super) fn spill_init_args(args: &[u8]) -> Result<([u8; CTX_RECORD], std::os::fd::OwnedFd), PoolError> {
    let s = spill::create(args).map_err(|e| PoolError::Archive {
        what: "initializer arguments",
        reason: format!("they could not be written to a spill file: {e}"),
    })?;
    Ok((spill::ctx_record(std::process::id(), &s, 1), s.fd))
}

/// Why a spilled output was not read.
enum Unread {
    /// Its worker ended first: the item may go again.
    Lost(String),
    /// It is not what the worker's table says: the item fails.
    Failed(TaskError),
}

/// Whether our child `pid` has ended or is ending, without reaping it: a zombie (or gone), or a
/// process whose descriptors are closed already (a killed process closes them on its way out,
/// before it becomes a zombie; a live worker always holds some: its slots, its queues).
fn is_ending(pid: u32) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let exited = !matches!(waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), flags), Ok(WaitStatus::StillAlive));
    exited || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(true, |mut d| d.next().is_none())
}
