//! **Not public API.** Entry points for the fuzz targets in `fuzz/` (cargo-fuzz), exposed as
//! `ringpool::__fuzz` only because a fuzz target is a crate of its own. Hidden from the docs; no
//! stability promise of any kind; may change or vanish in any release. Do not use.
//!
//! Each entry point takes arbitrary bytes, builds what a hostile peer could put in shared memory
//! from them, and runs the code that reads it. It must never crash, read out of bounds (the
//! targets run under AddressSanitizer), overflow (debug assertions are on) or hang; when a check
//! accepts something, the entry point asserts the invariants the rest of the crate relies on.

use std::time::Duration;

use crate::ring::{Config, FORMAT_BYTES, FORMAT_SLOTS, data_offset};
use crate::segment::{HeaderFields, LAYOUT_VERSION, MAGIC};
use crate::sys::atomic::Ordering;
use crate::{Queue, Ring};

/// Largest heap ring a target builds (bigger accepted configs are only validated).
const MAX_HEAP: u64 = 1 << 20;

/// The input, read front to back as little-endian integers; zeros past its end.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

fn page() -> u64 {
    crate::sys::page_size() as u64
}

/// Segment header validation (`HeaderFields::validate`): the header as it lies in the segment's
/// first page, and the file length the opener saw. Flag bits in the first byte help the fuzzer
/// past the checksum and the magic.
pub fn segment_header(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let raw: [u8; std::mem::size_of::<HeaderFields>()] = input.bytes();
    let mut fields: HeaderFields = bytemuck::pod_read_unaligned(&raw);
    if flags & 2 != 0 {
        fields.magic = MAGIC;
        fields.version = LAYOUT_VERSION;
    }
    if flags & 1 != 0 {
        fields = fields.seal();
    }
    let file_len = if flags & 4 != 0 { fields.total_len } else { input.u64() };
    let page = page();
    if fields.validate(file_len, page).is_ok() {
        // What an opener then maps and reads lies inside the file.
        assert_eq!(fields.payload_offset, page);
        assert!(fields.payload_len >= page && fields.payload_len % page == 0);
        assert_eq!(fields.payload_offset.checked_add(fields.payload_len), Some(file_len));
        assert!(fields.mirror_len <= fields.payload_len && fields.mirror_len % page == 0);
    }
}

/// Ring config validation (`Config::validate`) against a payload and mirror length; an accepted
/// config small enough is then made into a heap ring whose memory is the rest of the input, and
/// received from (flag bits in the first byte make the lengths plausible, to get that far).
pub fn ring_config(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let raw: [u8; std::mem::size_of::<Config>()] = input.bytes();
    let mut cfg: Config = bytemuck::pod_read_unaligned(&raw);
    let (mut payload_len, mut mirror_len) = (input.u64(), input.u64());
    if flags & 1 != 0 {
        cfg.data_offset = data_offset();
        cfg.max_members = cfg.max_members % 256 + 1;
    }
    if flags & 2 != 0 {
        let data_len = if cfg.format == FORMAT_SLOTS { cfg.capacity.wrapping_mul(cfg.stride) } else { cfg.capacity };
        payload_len = cfg.data_offset.wrapping_add(data_len).div_ceil(page()).wrapping_mul(page());
        mirror_len = if cfg.format == FORMAT_SLOTS { 0 } else { cfg.capacity };
    }
    if cfg.validate(payload_len, mirror_len).is_err() {
        return;
    }
    // The invariants every index computation relies on.
    assert!(cfg.capacity.is_power_of_two());
    assert_eq!(cfg.data_offset, data_offset());
    let data_len = match cfg.format {
        FORMAT_BYTES => {
            // The memory-safety invariant (validate asks for equality, what a creator writes):
            // a record of the largest length, its header and the zero marker fit the ring.
            assert!(cfg.item_size.checked_add(16).is_some_and(|end| end <= cfg.capacity));
            assert_eq!(mirror_len, cfg.capacity);
            cfg.capacity
        }
        FORMAT_SLOTS => {
            let stamp_at = cfg.item_size.div_ceil(8) * 8;
            assert!(stamp_at + 8 <= cfg.stride && cfg.stride % 8 == 0);
            cfg.capacity.checked_mul(cfg.stride).expect("validated slot region")
        }
        other => panic!("validate accepted format {other}"),
    };
    assert!(cfg.data_offset.checked_add(data_len).is_some_and(|end| end <= payload_len));
    if payload_len > MAX_HEAP {
        return;
    }
    match cfg.format {
        FORMAT_BYTES => {
            if let Ok(ring) = Ring::on_heap(cfg) {
                drain_bytes(&ring, input);
            }
        }
        _ if cfg.item_size == 8 && cfg.stride == 16 => {
            if let Ok(queue) = Queue::<u64>::on_heap(cfg.capacity) {
                drain_slots(&queue, input);
            }
        }
        _ => {}
    }
}

/// The byte ring's receive path over arbitrary shared bytes: a heap ring of 64 bytes to 8 KiB
/// (first byte), its indices and its data region from the input.
pub fn byte_ring_recv(data: &[u8]) {
    let mut input = Input(data);
    let cap = 1u64 << (6 + input.u8() % 8);
    let cfg = Config {
        format: FORMAT_BYTES,
        max_members: 4,
        capacity: cap,
        stride: 8,
        item_size: cap - 16,
        data_offset: data_offset(),
        ring_id: 1,
    };
    if let Ok(ring) = Ring::on_heap(cfg) {
        drain_bytes(&ring, input);
    }
}

/// The slot ring's receive path over arbitrary shared bytes: a heap `Queue<u64>` of 2 to 512
/// slots (first byte), its indices, stamps and values from the input.
pub fn slot_ring_recv(data: &[u8]) {
    let mut input = Input(data);
    let slots = 1u64 << (1 + input.u8() % 9);
    if let Ok(queue) = Queue::<u64>::on_heap(slots) {
        drain_slots(&queue, input);
    }
}

/// Indices from the input: absolute (any u64), or small and near each other (flag bit 0), which
/// is where the interesting cases are.
fn indices(input: &mut Input<'_>, unit: u64) -> (u64, u64, u64) {
    if input.u8() & 1 == 0 {
        (input.u64(), input.u64(), input.u64())
    } else {
        let head = u64::from(input.u16()) * unit;
        let tail = head + u64::from(input.u16() % 1024) * unit;
        let cached = head.saturating_sub(u64::from(input.u8()) * unit);
        (head, tail, cached)
    }
}

/// Writes indices and data from the input into a fresh heap ring's shared memory.
fn fill(core: &crate::ring::Core, mut input: Input<'_>, unit: u64) {
    let (head, tail, cached) = indices(&mut input, unit);
    let c = core.ctrl();
    c.head.store(head, Ordering::Relaxed);
    c.tail.store(tail, Ordering::Relaxed);
    c.send.cached.store(cached, Ordering::Relaxed);
    let bytes = input.rest();
    let len = bytes.len().min(core.data_len() as usize);
    // SAFETY: the data region is `data_len` bytes of the heap block this fresh ring owns; no
    // handle of it exists yet, so nothing else reads or writes it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), core.data().as_ptr(), len) };
}

fn drain_bytes(ring: &Ring, input: Input<'_>) {
    fill(ring.core(), input, 8);
    let (Ok(tx), Ok(rx)) = (ring.sender(), ring.receiver()) else { return };
    let mut seen = 0usize;
    for _ in 0..64 {
        match rx.try_recv() {
            Ok(m) => seen += m.len(),
            Err(_) => break,
        }
    }
    let _ = rx.try_recv_many(usize::MAX, |m| seen += m.len());
    let _ = rx.try_recv_with(|m| seen += m.len());
    let _ = tx.try_send(b"fuzz");
    let _ = tx.try_send_many(&[[7u8; 3]; 5]);
    let _ = tx.send_timeout([1u8; 40], Duration::ZERO);
    for _ in 0..8 {
        if rx.try_recv_many(3, |m| seen += m.len()).is_err() {
            break;
        }
    }
    std::hint::black_box(seen);
}

fn drain_slots(queue: &Queue<u64>, input: Input<'_>) {
    fill(queue.core(), input, 1);
    let (Ok(tx), Ok(rx)) = (queue.sender(), queue.receiver()) else { return };
    let mut sum = 0u64;
    for _ in 0..64 {
        match rx.try_recv() {
            Ok(v) => sum = sum.wrapping_add(v),
            Err(_) => break,
        }
    }
    let mut out = [0u64; 32];
    let _ = rx.try_recv_many(&mut out);
    let _ = tx.try_send(5);
    let _ = tx.try_send_many(&[1, 2, 3, 4, 5, 6, 7]);
    let _ = tx.send_timeout(9, Duration::ZERO);
    for _ in 0..8 {
        if rx.try_recv_many(&mut out[..3]).is_err() {
            break;
        }
    }
    std::hint::black_box((sum, out));
}

#[cfg(test)]
mod tests {
    //! The entry points on a few inputs, so they are built and run by `cargo test` too (the
    //! fuzzer itself needs nightly).

    #[test]
    fn entry_points_survive_simple_inputs() {
        let inputs: [&[u8]; 5] = [&[], &[0; 7], &[0xFF; 300], &[3; 64], &[1, 1, 0, 0, 16, 0, 0, 0, 0x80, 0, 0, 0]];
        for data in inputs {
            super::segment_header(data);
            super::ring_config(data);
            super::byte_ring_recv(data);
            super::slot_ring_recv(data);
        }
    }
}
