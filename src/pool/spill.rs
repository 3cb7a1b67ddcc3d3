//! The spill area: an archived input or output larger than a slot crosses in a file of its own.
//!
//! A value that does not fit a slot (and, for an output, would not fit it even alone) is archived
//! into a `memfd` (an anonymous file, `MFD_CLOEXEC`) that its writer keeps open; the slot carries
//! only the descriptor's number and the archive's length. The reader opens the writer's
//! descriptor through `/proc/<writer>/fd/<n>` (a parent and its workers share a uid; opening
//! another process's descriptor there needs `PTRACE_MODE_READ`, which Yama does not restrict),
//! checks that it is a regular file made here and at least as long as the slot says, and copies
//! the archive out with `pread` into an aligned buffer of its own. Nothing is mapped, so a writer
//! that truncates its file makes the read come up short (an error), never a `SIGBUS`; and the
//! reader validates the archive as it would one read from the slot.
//!
//! ```text
//! input (parent -> worker): slot input area = record { pid: u32, fd: u32, len: u64 } (LE),
//!                           table entry in_len = 16 | SPILLED
//! output (worker -> parent): status byte ITEM_SPILLED, table entry out_off = fd, out_len = len
//! ```
//!
//! Lifetimes: the parent keeps an input's file (an `OwnedFd` in the chunk's record, or in the
//! item's retry) until the chunk is delivered; a worker keeps an output's file until the parent
//! has moved the slot on (freed or queued again), or until it exits.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use rkyv::util::AlignedVec;

/// Bit 31 of an input's length in an archived chunk's item table: the input lies in a spill file,
/// and the slot holds a [`RECORD`]-byte record naming it. Archives in a slot are shorter than the
/// largest slot (1 GiB), so the bit is free.
pub(crate) const SPILLED: u32 = 1 << 31;
/// Bytes of a spilled input's record in a slot: the parent's pid (`u32`), the descriptor
/// (`u32`), the archive's length (`u64`), little-endian.
pub(crate) const RECORD: usize = 16;

/// The name every spill file has (`/proc/.../fd/<n>` links to `/memfd:<NAME> (deleted)`).
const NAME: &str = "ringpool-spill";

/// A spill file, owned by its writer, and the archive's length in it.
#[derive(Debug)]
pub(crate) struct Spill {
    pub fd: OwnedFd,
    pub len: usize,
}

impl Spill {
    /// The record a slot carries for this spilled input (`pid`: the writer's).
    pub(crate) fn record(&self, pid: u32) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        r[..4].copy_from_slice(&pid.to_le_bytes());
        r[4..8].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_le_bytes());
        r[8..].copy_from_slice(&(self.len as u64).to_le_bytes());
        r
    }
}

/// A record read back from a slot: `(pid, fd, len)`, not checked yet.
pub(crate) fn parse_record(r: [u8; RECORD]) -> (u32, u32, u64) {
    let w = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    (w(0), w(4), u64::from(w(8)) | (u64::from(w(12)) << 32))
}

/// Bytes of a spilled context's (or initializer arguments') record in its slot: the parent's pid
/// (`u32`), the descriptor (`u32`), the archive's length (`u64`) and an id (`u64`) the parent
/// gives each spilled context once, little-endian. The descriptor's `ctx_len` (the initializer's
/// `init_args_len`) is then `CTX_RECORD | SPILLED`.
pub(crate) const CTX_RECORD: usize = 24;

/// A spilled context's record, as the parent writes it into the context's slot.
pub(crate) fn ctx_record(pid: u32, spill: &Spill, id: u64) -> [u8; CTX_RECORD] {
    let mut r = [0u8; CTX_RECORD];
    r[..RECORD].copy_from_slice(&spill.record(pid));
    r[RECORD..].copy_from_slice(&id.to_le_bytes());
    r
}

/// A spilled context's record: `(pid, fd, len, id)`.
pub(crate) type CtxKey = (u32, u32, u64, u64);

/// A spilled context's record read back from a slot: `(pid, fd, len, id)`, not checked yet.
pub(crate) fn parse_ctx_record(r: [u8; CTX_RECORD]) -> CtxKey {
    let mut head = [0u8; RECORD];
    head.copy_from_slice(&r[..RECORD]);
    let (pid, fd, len) = parse_record(head);
    let mut id = [0u8; 8];
    id.copy_from_slice(&r[RECORD..]);
    (pid, fd, len, u64::from_le_bytes(id))
}

/// Writes `bytes` into a new spill file, sealed against any change.
pub(crate) fn create(bytes: &[u8]) -> std::io::Result<Spill> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(NAME, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let file = File::from(fd);
    file.write_all_at(bytes, 0)?;
    // Sealed: nobody (a worker opening it read-write through /proc, say) can change, shrink or
    // grow it while it is read.
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(Spill { fd: file.into(), len: bytes.len() })
}

/// Why a spill file could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// It could not be opened (its writer may be gone).
    Open(std::io::Error),
    /// It is not what the slot said.
    Bad(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Open(e) => write!(f, "the spill file could not be opened: {e}"),
            ReadError::Bad(why) => write!(f, "the spill file {why}"),
        }
    }
}

/// Opens descriptor `fd` of process `pid` for reading, checking that it is a spill file: a
/// regular file, a `memfd` of ours by its name. Answers the file and its metadata (taken through
/// the pinned path, so of the very file opened).
fn open(pid: u32, fd: u32) -> Result<(File, std::fs::Metadata), ReadError> {
    if fd > i32::MAX as u32 || pid == 0 || pid > i32::MAX as u32 {
        return Err(ReadError::Bad(format!("is named by a bad pid {pid} or descriptor {fd}")));
    }
    // First a path descriptor (`O_PATH`: opening it runs no device's open and cannot hang on a
    // pipe), which pins the file: what is checked is what is read, whatever the writer does to
    // its descriptor meanwhile.
    let pinned = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(ReadError::Open)?;
    let meta = pinned.metadata().map_err(|e| ReadError::Bad(format!("could not be looked at: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(ReadError::Bad(format!("{pid}/{fd} is not a regular file")));
    }
    let own = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let link = std::fs::read_link(&own).map_err(|e| ReadError::Bad(format!("could not be looked at: {e}")))?;
    if !link.as_os_str().as_encoded_bytes().starts_with(format!("/memfd:{NAME}").as_bytes()) {
        return Err(ReadError::Bad(format!("{pid}/{fd} is not a spill file ({})", link.display())));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&own)
        .map_err(|e| ReadError::Bad(format!("could not be opened for reading: {e}")))?;
    Ok((file, meta))
}

/// Copies the `len`-byte archive out of descriptor `fd` of process `pid`, checking first that it
/// is a spill file of at least that length. The caller bounds `len` (the pool's largest value):
/// this allocates `len` bytes.
pub(crate) fn read(pid: u32, fd: u32, len: usize) -> Result<AlignedVec<16>, ReadError> {
    let (file, meta) = open(pid, fd)?;
    if meta.len() < len as u64 {
        return Err(ReadError::Bad(format!("holds {} bytes, the slot says {len}", meta.len())));
    }
    let mut bytes = AlignedVec::<16>::with_capacity(len);
    bytes.resize(len, 0);
    file.read_exact_at(&mut bytes, 0).map_err(|e| ReadError::Bad(format!("could not be read: {e}")))?;
    Ok(bytes)
}

/// A spill file mapped read-only: `len` bytes that cannot change and whose reads cannot fault
/// (see [`map`]). Unmapped when dropped.
#[derive(Debug)]
pub(crate) struct Mapped {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// The file's device and inode.
    file: (u64, u64),
}

impl Mapped {
    /// The mapped bytes (page-aligned at their start).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is a read-only shared mapping this value owns (made in `map`,
        // unmapped only in `drop`), of a file sealed against write, shrink and grow and at least
        // `len` bytes long (checked after the seals, so it stays so): the bytes are readable,
        // never fault and never change while `self` lives. The slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast_const(), self.len) }
    }

    /// Whether descriptor `fd` of process `pid` still names the mapped file.
    pub(crate) fn still_named_by(&self, pid: u32, fd: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|m| (m.dev(), m.ino()) == self.file)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this address and length and is unmapped only
        // here; no reference into it outlives `self` (`bytes` borrows it).
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

/// Maps the `len`-byte archive in descriptor `fd` of process `pid` read-only, to be read in place
/// (spilled contexts and initializer arguments, which many tasks read). Checks that it is a spill
/// file, then that it is sealed against writing and shrinking (`F_GET_SEALS`; a file that is not
/// is refused: its bytes could change under a validated reference, or its pages vanish and fault),
/// then that it is at least `len` bytes long. The caller bounds `len` (the pool's largest value).
pub(crate) fn map(pid: u32, fd: u32, len: usize) -> Result<Mapped, ReadError> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::mman::{MapFlags, ProtFlags, mmap};
    use std::os::unix::fs::MetadataExt;
    let (file, meta) = open(pid, fd)?;
    let seals = fcntl(&file, FcntlArg::F_GET_SEALS).map_err(|e| ReadError::Bad(format!("has no seals: {e}")))?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_WRITE) {
        return Err(ReadError::Bad(format!("{pid}/{fd} is not sealed against writing and shrinking ({seals:?})")));
    }
    // Sealed against shrinking: the length read now is a floor for as long as the file lives.
    let size = file.metadata().map_err(|e| ReadError::Bad(format!("could not be looked at: {e}")))?.len();
    if size < len as u64 {
        return Err(ReadError::Bad(format!("holds {size} bytes, the slot says {len}")));
    }
    let Some(length) = std::num::NonZeroUsize::new(len) else {
        return Err(ReadError::Bad("is named with a length of 0".to_owned()));
    };
    // SAFETY: a new mapping at an address the kernel picks (it replaces nothing of ours), read-only
    // and shared, of `len` bytes of a file at least that long and sealed against shrinking (checked
    // above): every page of it is backed for as long as the mapping lives. The file was opened
    // read-only, so the mapping can never be made writable.
    let ptr = unsafe { mmap(None, length, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, &file, 0) }
        .map_err(|e| ReadError::Bad(format!("could not be mapped: {e}")))?;
    Ok(Mapped { ptr: ptr.cast(), len, file: (meta.dev(), meta.ino()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spill_file_reads_back_and_refuses_what_it_is_not() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let s = create(&data).unwrap();
        let me = std::process::id();
        let (pid, fd, len) = parse_record(s.record(me));
        assert_eq!((pid, fd as i32, len), (me, s.fd.as_raw_fd(), data.len() as u64));
        assert_eq!(&read(me, fd, data.len()).unwrap()[..], &data[..]);
        assert_eq!(&read(me, fd, 10).unwrap()[..], &data[..10]);
        assert!(matches!(read(me, fd, data.len() + 1), Err(ReadError::Bad(_))), "longer than the file");
        assert!(matches!(read(me, 0x7fff_fff0, 8), Err(ReadError::Open(_))), "no such descriptor");
        assert!(matches!(read(me, u32::MAX, 8), Err(ReadError::Bad(_))));
        // A pipe is not a spill file (and the open does not hang on it).
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(read(me, r.as_raw_fd() as u32, 1), Err(ReadError::Bad(_))));
        // Nor is a regular file made elsewhere.
        let f = File::open("/proc/self/exe").unwrap();
        assert!(matches!(read(me, f.as_raw_fd() as u32, 1), Err(ReadError::Bad(_))));
        // A context's record carries an id besides.
        let r = ctx_record(me, &s, 0x0123_4567_89ab_cdef);
        assert_eq!(parse_ctx_record(r), (me, fd, data.len() as u64, 0x0123_4567_89ab_cdef));
        // Sealed: it cannot be written or shrunk any more.
        let f = File::from(s.fd);
        assert!(f.write_at(b"x", 0).is_err());
        assert!(f.set_len(1).is_err());
    }

    /// A memfd named as a spill file holding `data`, with `seals` added (not [`create`]'s).
    fn memfd_with(data: &[u8], seals: nix::fcntl::SealFlag) -> OwnedFd {
        use nix::fcntl::{FcntlArg, fcntl};
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(NAME, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        let file = File::from(fd);
        file.write_all_at(data, 0).unwrap();
        if !seals.is_empty() {
            fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).unwrap();
        }
        file.into()
    }

    #[test]
    fn a_spill_file_maps_read_only_and_refuses_unsealed_or_short_files() {
        use nix::fcntl::SealFlag;
        let me = std::process::id();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 + 1) as u8).collect();
        let s = create(&data).unwrap();
        let fd = s.fd.as_raw_fd() as u32;
        let m = map(me, fd, data.len()).unwrap();
        assert_eq!(m.bytes(), &data[..]);
        assert_eq!(m.bytes().as_ptr() as usize % 4096, 0, "page-aligned");
        assert_eq!(map(me, fd, 10).unwrap().bytes(), &data[..10]);
        // Short: the slot says more than the file holds.
        let e = map(me, fd, data.len() + 1).unwrap_err();
        assert!(matches!(&e, ReadError::Bad(why) if why.contains("holds")), "{e}");
        assert!(matches!(map(me, fd, 0), Err(ReadError::Bad(_))), "an empty mapping");
        // The mapping outlives the descriptor it came from (the parent closing it after the job).
        assert!(m.still_named_by(me, fd));
        drop(s);
        assert!(!m.still_named_by(me, fd));
        assert_eq!(&m.bytes()[..1000], &data[..1000]);
        drop(m);
        // Unsealed, or sealed against one of writing and shrinking only: refused, not mapped.
        for seals in [SealFlag::empty(), SealFlag::F_SEAL_SHRINK, SealFlag::F_SEAL_WRITE, SealFlag::F_SEAL_GROW] {
            let f = memfd_with(&data, seals);
            let e = map(me, f.as_raw_fd() as u32, data.len()).unwrap_err();
            assert!(matches!(&e, ReadError::Bad(why) if why.contains("not sealed")), "{seals:?}: {e}");
        }
        // Sealed against both (not against growing): mapped.
        let f = memfd_with(&data, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_WRITE);
        assert_eq!(map(me, f.as_raw_fd() as u32, data.len()).unwrap().bytes(), &data[..]);
        // A short sealed file.
        let f = memfd_with(&data[..100], SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_WRITE);
        assert!(matches!(map(me, f.as_raw_fd() as u32, 101), Err(ReadError::Bad(_))));
        // Not spill files at all.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(map(me, r.as_raw_fd() as u32, 1), Err(ReadError::Bad(_))));
        let exe = File::open("/proc/self/exe").unwrap();
        assert!(matches!(map(me, exe.as_raw_fd() as u32, 1), Err(ReadError::Bad(_))));
        assert!(matches!(map(me, 0x7fff_fff0, 8), Err(ReadError::Open(_))));
        assert!(matches!(map(0, fd, 8), Err(ReadError::Bad(_))));
    }
}
