//! The byte ring's record format and the index arithmetic on it, apart from any locking, so that
//! it can be checked on heap memory (also under Miri) and against a `VecDeque` model.
//!
//! A record at ring index `i` (a byte index, always a multiple of 8, growing without wrapping):
//!
//! ```text
//! i & mask:  [ header: u64 = stamp(i) << 32 | len ][ payload: len bytes ][ padding to 8 ]
//! ```
//!
//! The header is the record's commit word: a sender writes the payload, then the header with
//! Release; a receiver reads the header with Acquire, then the payload. `stamp(i)` has its top bit
//! set, so a header is never zero, and encodes `i`, so a header in the wrong place is detected.
//!
//! **The zero marker.** Before publishing a record, the sender stores 0 in the word right after
//! it (where the next record's header will go). So the word at `tail` is always 0 until a record
//! there is published, and a receiver polling the word at `head` can never mistake stale bytes
//! (payload of an older lap) for a header. The marker needs 8 bytes of room beyond the record,
//! which is why the largest message is `capacity - 16`.

use std::sync::atomic::Ordering;

use super::core::Core;

/// Bytes a message of `len` bytes occupies in the ring, header included.
#[inline(always)]
pub(crate) fn record_size(len: usize) -> u64 {
    8 + (len as u64).div_ceil(8) * 8
}

/// Room a send of `len` bytes needs: its record plus the zero marker after it.
#[inline(always)]
pub(crate) fn room_needed(len: usize) -> u64 {
    record_size(len) + 8
}

/// The stamp that a header at index `i` must carry.
#[inline(always)]
pub(crate) fn stamp(i: u64) -> u32 {
    0x8000_0000 | ((i >> 3) as u32 & 0x7FFF_FFFF)
}

/// The header word of a record of `len` bytes at index `i`.
#[inline(always)]
pub(crate) fn header(i: u64, len: usize) -> u64 {
    (u64::from(stamp(i)) << 32) | len as u64
}

impl Core {
    /// Is a record published at index `i`? `Ok(Some(len))`, `Ok(None)` (not yet), or the reason
    /// the word there cannot be a header.
    #[inline(always)]
    pub(crate) fn probe_record(&self, i: u64) -> Result<Option<usize>, &'static str> {
        let w = self.word_at(i & self.mask).load(Ordering::Acquire);
        if w == 0 {
            return Ok(None);
        }
        if (w >> 32) as u32 != stamp(i) {
            return Err("record header carries the wrong stamp");
        }
        let len = w as u32 as u64;
        if len > self.cfg.item_size {
            return Err("record length exceeds the largest message");
        }
        Ok(Some(len as usize))
    }

    /// Copies `src` into the ring at index `at` (any alignment), wrapping at the end.
    ///
    /// # Safety
    /// The bytes `at..at + src.len()` must be free space this caller owns: beyond the published
    /// tail, inside the room checked against the head, under the send lock.
    #[inline(always)]
    pub(crate) unsafe fn write_bytes(&self, at: u64, src: &[u8]) {
        let cap = self.cfg.capacity as usize;
        let pos = (at & self.mask) as usize;
        let base = self.data().as_ptr();
        if self.mirrored || pos + src.len() <= cap {
            // SAFETY: pos < cap and src.len() <= cap - 16; with a mirror the data region is
            // followed by `cap` mirrored bytes, so pos + len < 2 cap stays mapped; without one the
            // branch condition keeps it inside. The caller owns these bytes (free space).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(pos), src.len()) };
        } else {
            let first = cap - pos;
            // SAFETY: as above, split at the end of the region: pos..cap, then 0..len-first.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(pos), first);
                std::ptr::copy_nonoverlapping(src.as_ptr().add(first), base, src.len() - first);
            }
        }
    }

    /// Copies `dst.len()` bytes out of the ring from index `at`, wrapping at the end.
    ///
    /// # Safety
    /// The bytes must belong to a published record this caller holds (under the receive lock,
    /// between head and tail), so no sender writes them meanwhile.
    #[inline(always)]
    pub(crate) unsafe fn read_bytes(&self, at: u64, dst: &mut [u8]) {
        let cap = self.cfg.capacity as usize;
        let pos = (at & self.mask) as usize;
        let base = self.data().as_ptr();
        if self.mirrored || pos + dst.len() <= cap {
            // SAFETY: see write_bytes; the record is published and held, so nobody writes it.
            unsafe { std::ptr::copy_nonoverlapping(base.add(pos), dst.as_mut_ptr(), dst.len()) };
        } else {
            let first = cap - pos;
            let len = dst.len();
            // SAFETY: as above, in two pieces.
            unsafe {
                std::ptr::copy_nonoverlapping(base.add(pos), dst.as_mut_ptr(), first);
                std::ptr::copy_nonoverlapping(base, dst.as_mut_ptr().add(first), len - first);
            }
        }
    }

    /// Writes the zero marker after a record of `len` bytes at `i`, then its header (Release):
    /// from this store on, receivers may read the record.
    #[inline(always)]
    pub(crate) fn publish_record(&self, i: u64, len: usize) {
        self.word_at((i + record_size(len)) & self.mask).store(0, Ordering::Relaxed);
        self.word_at(i & self.mask).store(header(i, len), Ordering::Release);
    }

    /// Writes a header that is published by a later Release store (a batch's first header).
    #[inline(always)]
    pub(crate) fn stage_record(&self, i: u64, len: usize) {
        self.word_at(i & self.mask).store(header(i, len), Ordering::Relaxed);
    }

    /// After a sender died holding the send lock: it may have published records (which receivers
    /// may even have taken already) without moving `tail` over them. Roll `tail` forward over
    /// every published record, up to the zero marker, then check the indices.
    pub(crate) fn repair_bytes_send(&self) -> Result<(), &'static str> {
        let c = self.ctrl();
        let (head, mut tail) = self.indices_near()?;
        let start = tail;
        while tail - start <= self.cfg.capacity {
            match self.probe_record(tail)? {
                Some(len) => tail += record_size(len),
                None => break,
            }
        }
        if tail < head || tail - head > self.cfg.capacity {
            return Err("recovered tail is inconsistent with the head");
        }
        if tail != start {
            c.tail.store(tail, Ordering::Release);
        }
        c.send.cached.store(head, Ordering::Relaxed);
        Ok(())
    }

    /// After a receiver died holding the receive lock: it moves `head` only when done, so the
    /// record it was reading is still there. Only the indices and the head's word need checking.
    pub(crate) fn repair_bytes_recv(&self) -> Result<(), &'static str> {
        let (head, _) = self.indices_near()?;
        self.probe_record(head).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_stamps() {
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(8), 16);
        assert_eq!(record_size(9), 24);
        assert_eq!(room_needed(8), 24);
        assert_ne!(header(0, 0), 0, "a header is never zero");
        assert_ne!(stamp(0), stamp(8));
        assert_eq!(stamp(0), stamp(8 << 31), "stamps repeat only after 16 GiB");
    }
}
