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

use crate::sys::atomic::Ordering;

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
        // Indices come from shared memory: a record starts on an 8-byte boundary or it is garbage.
        if i % 8 != 0 {
            return Err("ring index is not on a record boundary");
        }
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
            unsafe { copy_bytes(src.as_ptr(), base.wrapping_add(pos), src.len()) };
        } else {
            let (head, tail) = src.split_at(cap - pos);
            // SAFETY: as above, split at the end of the region: first pos..cap ...
            unsafe { std::ptr::copy_nonoverlapping(head.as_ptr(), base.wrapping_add(pos), head.len()) };
            // SAFETY: ... then 0..len - (cap - pos), which is below pos (free space, ours).
            unsafe { std::ptr::copy_nonoverlapping(tail.as_ptr(), base, tail.len()) };
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
            unsafe { copy_bytes(base.wrapping_add(pos), dst.as_mut_ptr(), dst.len()) };
        } else {
            let (head, tail) = dst.split_at_mut(cap - pos);
            // SAFETY: as above, in two pieces: first pos..cap ...
            unsafe { std::ptr::copy_nonoverlapping(base.wrapping_add(pos), head.as_mut_ptr(), head.len()) };
            // SAFETY: ... then the rest from the start of the region.
            unsafe { std::ptr::copy_nonoverlapping(base, tail.as_mut_ptr(), tail.len()) };
        }
    }

    /// Asks the CPU to fetch the ring's lines from index `from` to `to` (at most 4 KiB) for writing,
    /// so that a batch's lines, last read by a receiver on another core, are taken back in
    /// parallel instead of one store miss after another (the sender's stores otherwise wait in
    /// line: measured here, batches of 64 eight-byte messages go from about 120 to 220 million
    /// per second). Only free space this sender owns is asked for.
    #[inline]
    pub(crate) fn prefetch_for_write(&self, from: u64, to: u64) {
        let end = to.min(from.saturating_add(4096));
        let mut at = from & !63;
        while at < end {
            prefetch_write(self.at(at));
            at += 64;
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

/// Copies `len` bytes; small copies inline (a call to `memcpy` costs more than moving 8 bytes,
/// and most messages are small), larger ones through `memcpy`. A small copy is two fixed-size
/// copies, of the first and the last `k` bytes, which may overlap: fixed sizes compile to plain
/// moves (a loop would be turned back into a `memcpy` call by the compiler).
///
/// # Safety
/// As [`std::ptr::copy_nonoverlapping`]: `src` valid for reading and `dst` for writing `len`
/// bytes, not overlapping.
#[inline(always)]
unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    /// Copies `K` bytes at the start and `K` bytes at the end of `len >= K` bytes.
    ///
    /// # Safety
    /// As `copy_bytes`, with `K <= len`.
    #[inline(always)]
    unsafe fn ends<const K: usize>(src: *const u8, dst: *mut u8, len: usize) {
        // SAFETY: K <= len: the first K bytes lie in both ranges.
        let head = unsafe { src.cast::<[u8; K]>().read_unaligned() };
        // SAFETY: len - K + K = len: the last K bytes lie in both ranges.
        let tail = unsafe { src.wrapping_add(len - K).cast::<[u8; K]>().read_unaligned() };
        // SAFETY: as above, for the destination.
        unsafe { dst.cast::<[u8; K]>().write_unaligned(head) };
        // SAFETY: as above.
        unsafe { dst.wrapping_add(len - K).cast::<[u8; K]>().write_unaligned(tail) };
    }
    // SAFETY (every call below): the branch bounds `len` from below by the copy size; the
    // caller's contract covers `len` bytes.
    match len {
        0 => {}
        1..=3 => {
            for i in [0, len / 2, len - 1] {
                // SAFETY: i < len.
                let b = unsafe { src.wrapping_add(i).read() };
                // SAFETY: i < len.
                unsafe { dst.wrapping_add(i).write(b) };
            }
        }
        // SAFETY: see above.
        4..=7 => unsafe { ends::<4>(src, dst, len) },
        // SAFETY: see above.
        8..=15 => unsafe { ends::<8>(src, dst, len) },
        // SAFETY: see above.
        16..=31 => unsafe { ends::<16>(src, dst, len) },
        // SAFETY: see above.
        32..=64 => unsafe { ends::<32>(src, dst, len) },
        // SAFETY: the caller's contract.
        _ => unsafe { std::ptr::copy_nonoverlapping(src, dst, len) },
    }
}

/// Asks the CPU to bring the cache line holding `p` into this core's cache for writing. A hint:
/// `PREFETCHW` on x86-64 CPUs that have it (checked once), nothing elsewhere (nor under Miri,
/// which runs neither CPUID nor inline assembly).
#[inline(always)]
pub(crate) fn prefetch_write(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if has_prefetchw() {
        // SAFETY: PREFETCHW is a hint: it never faults, changes no register or memory, and is only
        // issued on CPUs that report it (has_prefetchw).
        unsafe { std::arch::asm!("prefetchw [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly)) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

/// Whether the CPU has PREFETCHW (AMD's 3DNow! prefetch, Intel's PRFCHW), checked once.
#[cfg(target_arch = "x86_64")]
#[cfg_attr(miri, allow(dead_code, reason = "Miri runs no CPUID"))]
fn has_prefetchw() -> bool {
    // A process-local cache, not a word in shared memory: std's atomics, not the model seam's (a
    // model hook here would make the first model execution differ from the others).
    use std::sync::atomic::{AtomicU8, Ordering};
    static HAS: AtomicU8 = AtomicU8::new(0);
    match HAS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            // CPUID leaf 0x8000_0001, ECX bit 8: 3DNowPrefetch, i.e. PREFETCHW (AMD since K8,
            // Intel since Broadwell). The extended leaf exists on every x86-64 CPU.
            // `__cpuid` is a safe function from Rust 1.94 on and an unsafe one before (the
            // crate's rust-version is older): the block serves the older compilers.
            #[allow(unused_unsafe)]
            // SAFETY: CPUID exists on every x86-64 CPU, and this leaf on every one too (above).
            let leaf = unsafe { std::arch::x86_64::__cpuid(0x8000_0001) };
            let yes = leaf.ecx & (1 << 8) != 0;
            HAS.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
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
