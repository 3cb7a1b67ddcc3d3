//! The header at the start of every segment, and what an opener checks before trusting a byte.

use bytemuck::{Pod, Zeroable};

use super::SegmentError;

/// The first eight bytes of every ringpool segment.
pub const MAGIC: [u8; 8] = *b"RINGPOOL";
/// The layout version this build writes and accepts. 2: ring lock words name member-table
/// entries with a generation (not pids), and member entries in transition carry a pid. 3: a
/// side's word after its lock marks a solo handle's kept lock (waiters fence before sleeping).
pub const LAYOUT_VERSION: u32 = 4;
/// The ready word's value once the creator has finished initializing (ASCII "REDY").
pub(crate) const READY: u32 = 0x5245_4459;
/// Byte offset of the ready word inside the header page.
pub(crate) const READY_OFFSET: usize = std::mem::size_of::<HeaderFields>();

/// What a segment holds, written by its creator and checked by every opener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SegmentKind {
    /// A byte-message [`Ring`](crate::Ring).
    Ring,
    /// A typed [`Queue`](crate::Queue).
    Queue,
    /// A [`Pool`](crate::Pool)'s task slots and rings.
    Pool,
    /// A segment of the user's own layout, told apart by the number.
    User(u16),
}

impl SegmentKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            SegmentKind::Ring => 1,
            SegmentKind::Queue => 2,
            SegmentKind::Pool => 3,
            SegmentKind::User(n) => 0x1_0000 | u32::from(n),
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<SegmentKind> {
        match code {
            1 => Some(SegmentKind::Ring),
            2 => Some(SegmentKind::Queue),
            3 => Some(SegmentKind::Pool),
            c if c >> 16 == 1 => Some(SegmentKind::User(c as u16)),
            _ => None,
        }
    }
}

impl std::fmt::Display for SegmentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentKind::Ring => f.write_str("ring"),
            SegmentKind::Queue => f.write_str("queue"),
            SegmentKind::Pool => f.write_str("pool"),
            SegmentKind::User(n) => write!(f, "user segment #{n}"),
        }
    }
}

/// The payload type a segment was made for: its size, alignment and a hash of its name.
///
/// Opening a `Queue<u64>` made as a `Queue<[u8; 8]>` is refused with
/// [`SegmentError::TypeMismatch`] instead of reading one type as the other. The name hash is of
/// [`std::any::type_name`] unless a tag is given ([`Fingerprint::tagged`]): type names are stable
/// within one build, not guaranteed across compiler versions, so programs built separately that
/// share a queue should agree on a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct Fingerprint {
    /// `size_of::<T>()`.
    pub size: u64,
    /// `align_of::<T>()`.
    pub align: u64,
    /// FNV-1a hash of the type's name or tag.
    pub name_hash: u64,
}

impl Fingerprint {
    /// The fingerprint of `T`, named by [`std::any::type_name`].
    pub fn of<T>() -> Fingerprint {
        Fingerprint::tagged::<T>(std::any::type_name::<T>())
    }

    /// The fingerprint of `T` under an explicit tag, for programs built apart.
    pub fn tagged<T>(tag: &str) -> Fingerprint {
        Fingerprint {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            name_hash: fnv1a(tag.as_bytes()),
        }
    }

    /// The fingerprint of untyped bytes (what a byte [`Ring`](crate::Ring) carries).
    pub fn bytes() -> Fingerprint {
        Fingerprint { size: 1, align: 1, name_hash: fnv1a(b"[u8]") }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "size {} align {} name hash {:016x}", self.size, self.align, self.name_hash)
    }
}

/// 64-bit FNV-1a.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The header's fields, as stored at offset 0 of the segment (the ready word follows them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub(crate) struct HeaderFields {
    pub magic: [u8; 8],
    pub version: u32,
    pub kind: u32,
    pub total_len: u64,
    pub payload_offset: u64,
    pub payload_len: u64,
    pub mirror_len: u64,
    pub creator_pid: u32,
    pub flags: u32,
    pub pid_namespace: u64,
    pub fingerprint: Fingerprint,
    /// FNV-1a of every byte above: random bytes with a plausible magic still fail.
    pub checksum: u64,
}

impl HeaderFields {
    pub(crate) fn seal(mut self) -> HeaderFields {
        self.checksum = self.compute_checksum();
        self
    }

    fn compute_checksum(&self) -> u64 {
        let bytes = bytemuck::bytes_of(self);
        fnv1a(&bytes[..bytes.len() - 8])
    }

    /// Checks everything an opener can check without knowing what it expects.
    pub(crate) fn validate(&self, file_len: u64, page: u64) -> Result<(), SegmentError> {
        if self.magic != MAGIC {
            return Err(SegmentError::Corrupted { reason: "bad magic: not a ringpool segment" });
        }
        if self.checksum != self.compute_checksum() {
            return Err(SegmentError::Corrupted { reason: "header checksum mismatch" });
        }
        if self.version != LAYOUT_VERSION {
            return Err(SegmentError::UnsupportedVersion { found: self.version, expected: LAYOUT_VERSION });
        }
        if SegmentKind::from_code(self.kind).is_none() {
            return Err(SegmentError::Corrupted { reason: "unknown segment kind" });
        }
        if self.total_len != file_len {
            return Err(SegmentError::Corrupted { reason: "header size differs from the file's size" });
        }
        // Exactly what a creator of this build writes: one header page, then a payload of whole
        // pages (at least one: layers above read their own header at its start), of which the
        // last `mirror_len` bytes may be mapped twice. Every sum is checked: all of it is forgeable.
        let layout_ok = self.payload_offset == page
            && self.payload_len >= page
            && self.payload_len % page == 0
            && self.payload_offset.checked_add(self.payload_len) == Some(self.total_len)
            && self.mirror_len <= self.payload_len
            && self.mirror_len % page == 0;
        if !layout_ok {
            return Err(SegmentError::Corrupted { reason: "inconsistent payload layout in header" });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeaderFields {
        HeaderFields {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            kind: SegmentKind::Ring.code(),
            total_len: 8192,
            payload_offset: 4096,
            payload_len: 4096,
            mirror_len: 0,
            creator_pid: 1,
            flags: 0,
            pid_namespace: 0,
            fingerprint: Fingerprint::bytes(),
            checksum: 0,
        }
        .seal()
    }

    #[test]
    fn sealed_header_validates_and_any_flip_fails() {
        let h = sample();
        h.validate(8192, 4096).unwrap();
        let bytes = bytemuck::bytes_of(&h);
        for i in 0..bytes.len() {
            let mut copy = h;
            bytemuck::bytes_of_mut(&mut copy)[i] ^= 0x40;
            assert!(copy.validate(8192, 4096).is_err(), "flipping byte {i} went unnoticed");
        }
        assert!(h.validate(4096, 4096).is_err());
    }

    #[test]
    fn kinds_round_trip() {
        for k in [SegmentKind::Ring, SegmentKind::Queue, SegmentKind::Pool, SegmentKind::User(7)] {
            assert_eq!(SegmentKind::from_code(k.code()), Some(k));
        }
        assert_eq!(SegmentKind::from_code(99), None);
    }

    #[test]
    fn fingerprints_tell_types_apart() {
        assert_ne!(Fingerprint::of::<u64>(), Fingerprint::of::<[u8; 8]>());
        assert_ne!(Fingerprint::of::<u64>(), Fingerprint::of::<u32>());
        assert_eq!(Fingerprint::tagged::<u64>("x"), Fingerprint::tagged::<u64>("x"));
    }
}
