//! The control block at the start of a ring's payload: what lives in shared memory, line by line.
//!
//! Every field a process writes often has a cache line (two, in fact: 128 bytes, because x86's
//! adjacent-line prefetcher pulls lines in pairs) that only its own side writes:
//!
//! | line | written by | read by |
//! | --- | --- | --- |
//! | `config` | the creator, once | everyone, once at open (then a local copy is used) |
//! | `send` | senders, under the send lock (`sticky`: also waiting senders) | senders (`sticky`: waiting receivers) |
//! | `recv` | receivers, under the receive lock | receivers |
//! | `tail` | senders, under the send lock | receivers, only when the ring looks empty |
//! | `head` | receivers, under the receive lock | senders, only when the ring looks full |
//! | `not_empty` / `not_full` | waiters announcing themselves (`cpu`: notifiers, when it changes) | notifiers (a load; `cpu`: waiters, before spinning) |
//! | `membership` + `members` | joining and leaving handles | disconnect checks |
//!
//! Zeroed memory is a valid empty ring except for `config`, which the creator fills in before the
//! segment's ready word is published.

use crate::sys::atomic::{AtomicU32, AtomicU64};

use bytemuck::{Pod, Zeroable};

use crate::sync::{EventCount, RobustMutex};

/// How many processes can be members of one ring at once.
pub(crate) const MAX_MEMBERS: usize = 256;

/// Record format: variable-length byte messages.
pub(crate) const FORMAT_BYTES: u32 = 1;
/// Record format: fixed-size slots.
pub(crate) const FORMAT_SLOTS: u32 = 2;

/// 128 bytes of alignment: one cache line plus its prefetch partner.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Written once by the creator; every opener copies and validates it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Config {
    /// [`FORMAT_BYTES`] or [`FORMAT_SLOTS`].
    pub format: u32,
    /// Members the registry holds.
    pub max_members: u32,
    /// Bytes (byte rings) or slots (slot rings); a power of two.
    pub capacity: u64,
    /// Slot rings: bytes from one slot to the next. Byte rings: 8 (the record alignment).
    pub stride: u64,
    /// Slot rings: payload bytes per slot. Byte rings: the largest message.
    pub item_size: u64,
    /// Offset of the data region from the start of the payload (page-aligned).
    pub data_offset: u64,
    /// Random per-ring id, for diagnostics.
    pub ring_id: u64,
}

/// One side's private line: its lock and its counters.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Side {
    /// Senders: the send lock. Receivers: the receive lock.
    pub lock: RobustMutex,
    /// The owner token of a solo handle that keeps `lock` held across operations (0: none), with
    /// [`STICKY_WANTED`] set by a member that waits for the lock. While it is non-zero, this side
    /// publishes without a locked instruction, and a waiter for this side's event runs an
    /// asymmetric fence before it sleeps (see `ring/core.rs`, "Solo handles").
    pub sticky: AtomicU32,
    /// Senders: the last head they read (never ahead of the real head). Receivers: unused.
    pub cached: AtomicU64,
    /// Messages sent (or received), updated under the lock.
    pub messages: AtomicU64,
    /// Payload bytes sent (or received), updated under the lock.
    pub bytes: AtomicU64,
    /// Times a member of this side parked in the kernel.
    pub parks: AtomicU64,
    /// Times this side's lock was taken over from a dead owner.
    pub recoveries: AtomicU64,
    /// The token of the solo holder while it is inside an operation on its kept lock (0 between
    /// operations). Written only by the thread that keeps the hold, with plain stores; read by a
    /// member that takes the kept lock from an idle holder, after an asymmetric fence (see
    /// `ring/core.rs`, "Taking it from an idle holder").
    pub busy: AtomicU32,
    /// The member taking the kept lock from an idle holder: its token, with [`STEAL_DONE`] once
    /// the lock word names it (0: nobody). Claimed and cleared by compare-and-swap only.
    pub steal: AtomicU32,
    /// Times a member of this side, waiting, yielded its CPU to a peer that shares it.
    pub yields: AtomicU64,
}

/// An event count and, on its line, the CPU the side that notifies it last ran on. The line is
/// written by waiters when they park and read by notifiers on every operation (so it stays
/// shared between the cores in a stream); the CPU word changes only when that side moves.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct EventLine {
    pub event: EventCount,
    /// 1 + the CPU the notifying side's last operation ran on (0: not known); written only when
    /// it changes. A hint for waiters (`ring/wait.rs`): whatever its value, it only decides
    /// whether a waiter spins before it parks.
    pub cpu: AtomicU32,
}

impl std::ops::Deref for EventLine {
    type Target = EventCount;
    fn deref(&self) -> &EventCount {
        &self.event
    }
}

/// Bit of [`Side::sticky`]: another member waits for the lock the solo handle keeps.
pub(crate) const STICKY_WANTED: u32 = 1 << 31;
/// Bit of [`Side::sticky`]: a member is taking (or took) the kept lock from its idle holder; the
/// mark stays, with the holder's token, until the holder sees it.
pub(crate) const STICKY_STOLEN: u32 = 1 << 30;
/// The token field of [`Side::sticky`] and [`Side::steal`] (tokens are below 2^30).
pub(crate) const STICKY_TOKEN: u32 = STICKY_STOLEN - 1;
/// Bit of [`Side::steal`]: the lock word names the taker; the holder's hold is gone.
pub(crate) const STEAL_DONE: u32 = 1 << 30;

/// Ring-wide membership facts.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct MembershipHeader {
    /// Flags: the last sender left (bit 0), the last receiver left (bit 1). Set by whoever saw a
    /// side's count reach zero, cleared when a member of that side joins. Before a side has ever
    /// had a member its bit is clear, so a receiver waits for a first sender instead of
    /// disconnecting.
    pub gone: AtomicU32,
    /// One past the highest registry entry ever claimed: scans stop there.
    pub high_water: AtomicU32,
    /// Monotonic time (ns) of the last liveness sweep, to rate-limit sweeps.
    pub last_sweep: AtomicU64,
}

/// A member process: its identity and how many handles of each side it holds.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Member {
    /// 0: free. [`CLAIMING`]` | pid` / [`REAPING`]` | pid`: in transition by process `pid`, which a
    /// sweep reclaims once that process is dead. Else the member's pid.
    pub pid: AtomicU32,
    pub senders: AtomicU32,
    pub receivers: AtomicU32,
    /// Bumped on every claim of the entry (never 0): with the entry's index, the lock owner token
    /// of the member (pid reuse cannot fool it, see `ring/membership.rs`).
    pub generation: AtomicU32,
    pub start_time: AtomicU64,
    _pad2: u64,
}

/// Flag of an entry being filled in by a joining process (or the test hook's forgery).
pub(crate) const CLAIMING: u32 = 1 << 31;
/// Flag of an entry being cleared by the process that found its owner dead.
pub(crate) const REAPING: u32 = 1 << 30;
/// Either transient flag; the rest of the word is the pid of the process in the transition.
pub(crate) const TRANSIENT: u32 = CLAIMING | REAPING;

/// The whole control block.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Control {
    pub config: Padded<Config>,
    pub send: Padded<Side>,
    pub recv: Padded<Side>,
    /// Next index to write; published by senders after each record.
    pub tail: Padded<AtomicU64>,
    /// Next index to read; published by receivers after each record.
    pub head: Padded<AtomicU64>,
    pub not_empty: Padded<EventLine>,
    pub not_full: Padded<EventLine>,
    pub membership: Padded<MembershipHeader>,
    pub members: [Member; MAX_MEMBERS],
}

/// Bytes the control block occupies, rounded up to whole pages: where the data region starts.
pub(crate) fn data_offset() -> u64 {
    let page = crate::sys::page_size() as u64;
    (std::mem::size_of::<Control>() as u64).div_ceil(page) * page
}

/// Bytes a byte ring's largest message leaves free: its 8-byte header and the 8-byte zero marker
/// after it (see `records.rs`).
pub(crate) const RECORD_OVERHEAD: u64 = 16;

impl Config {
    /// Checks a config read from shared memory against what this build could have written, for a
    /// ring in a segment whose payload is `payload_len` bytes with a mirrored tail of `mirror_len`.
    /// Everything later indexes with the checked copy, never with shared memory.
    ///
    /// Every value here may be forged: each sum and product is checked (no wrap in release, no
    /// panic in debug), and the geometry must be exactly what a creator of this build writes.
    pub(crate) fn validate(&self, payload_len: u64, mirror_len: u64) -> Result<(), &'static str> {
        if self.format == FORMAT_BYTES && mirror_len != self.capacity {
            return Err("byte ring geometry is inconsistent");
        }
        if self.format == FORMAT_SLOTS && mirror_len != 0 {
            return Err("slot geometry is inconsistent");
        }
        self.validate_unmirrored(payload_len)
    }

    /// [`validate`](Self::validate) without the mirror: for rings in plain memory (heap-backed
    /// rings of the tests and the fuzz targets).
    pub(crate) fn validate_unmirrored(&self, payload_len: u64) -> Result<(), &'static str> {
        if self.max_members == 0 || self.max_members as usize > MAX_MEMBERS {
            return Err("member table size out of range");
        }
        if self.capacity == 0 || !self.capacity.is_power_of_two() {
            return Err("capacity is not a power of two");
        }
        if self.data_offset != data_offset() {
            return Err("data offset differs from this build's layout");
        }
        let data_len = match self.format {
            FORMAT_BYTES => {
                // The creator writes exactly `capacity - 16`: a larger item size would let a
                // record length run past the data region (and its mirror).
                if self.stride != 8 || self.capacity.checked_sub(RECORD_OVERHEAD) != Some(self.item_size) {
                    return Err("byte ring geometry is inconsistent");
                }
                self.capacity
            }
            FORMAT_SLOTS => {
                let min_stride =
                    self.slot_stamp_at().and_then(|at| at.checked_add(8)).ok_or("slot geometry overflows")?;
                if self.item_size == 0 || self.stride < min_stride || self.stride % 8 != 0 {
                    return Err("slot geometry is inconsistent");
                }
                self.capacity.checked_mul(self.stride).ok_or("slot region overflows")?
            }
            _ => return Err("unknown record format"),
        };
        let end = self.data_offset.checked_add(data_len).ok_or("data region overflows")?;
        if end > payload_len {
            return Err("data region extends past the segment");
        }
        // A creator sizes the payload to the data region, rounded up to whole pages.
        let page = crate::sys::page_size() as u64;
        if end.div_ceil(page).checked_mul(page) != Some(payload_len) {
            return Err("segment is larger than its ring");
        }
        Ok(())
    }

    /// Slot rings: where the stamp sits in a slot (the item size rounded up to 8), or `None` if
    /// that overflows. Validated configs always answer `Some`.
    pub(crate) fn slot_stamp_at(&self) -> Option<u64> {
        self.item_size.div_ceil(8).checked_mul(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_fields_do_not_share_lines() {
        let offsets = [
            std::mem::offset_of!(Control, send),
            std::mem::offset_of!(Control, recv),
            std::mem::offset_of!(Control, tail),
            std::mem::offset_of!(Control, head),
            std::mem::offset_of!(Control, not_empty),
            std::mem::offset_of!(Control, not_full),
            std::mem::offset_of!(Control, membership),
        ];
        for w in offsets.windows(2) {
            assert!(w[1] - w[0] >= 128, "{offsets:?}");
        }
        assert_eq!(std::mem::size_of::<Member>(), 32);
        assert_eq!(data_offset() % 4096, 0);
    }

    fn byte_ring(cap: u64) -> Config {
        Config {
            format: FORMAT_BYTES,
            max_members: 256,
            capacity: cap,
            stride: 8,
            item_size: cap - RECORD_OVERHEAD,
            data_offset: data_offset(),
            ring_id: 1,
        }
    }

    /// The wrap of issue 8: an item size near u64::MAX plus the record overhead wrapped to a
    /// small number and passed; a forged record length then read past the mapping.
    #[test]
    fn forged_sizes_never_wrap_into_acceptance() {
        let cap = 4096;
        let payload = data_offset() + cap;
        byte_ring(cap).validate(payload, cap).unwrap();
        for item in [u64::MAX, u64::MAX - 15, u64::MAX - 7, 1 << 63, cap - 15, cap - 17, 0] {
            let cfg = Config { item_size: item, ..byte_ring(cap) };
            assert!(cfg.validate(payload, cap).is_err(), "item size {item:#x} accepted");
        }
        assert!(byte_ring(cap).validate(payload + 4096, cap).is_err(), "payload larger than the ring");
        assert!(byte_ring(cap).validate(payload, 0).is_err(), "mirror missing");
        let slots = |stride: u64, item: u64, n: u64| Config {
            format: FORMAT_SLOTS,
            capacity: n,
            stride,
            item_size: item,
            ..byte_ring(cap)
        };
        let page = crate::sys::page_size() as u64;
        slots(16, 8, 16).validate(data_offset() + page, 0).unwrap();
        for (stride, item, n) in [
            (u64::MAX - 7, u64::MAX - 15, 16),
            (16, u64::MAX, 16),
            (16, u64::MAX - 7, 16),
            (1 << 63, 8, 2),
            (16, 9, 16),
            (12, 4, 16),
            (16, 0, 16),
            (16, 8, 1 << 62),
        ] {
            assert!(slots(stride, item, n).validate(data_offset() + page, 0).is_err(), "{stride} {item} {n}");
        }
    }
}
