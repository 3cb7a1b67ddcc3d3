//! Finding ringpool's segments in a directory (`/dev/shm`) and reading their headers without
//! knowing what they hold, read-only: what the inspector (`ringpool ls`) and the sweep of
//! abandoned segments build on.
//!
//! Nothing here maps a segment. Every file is opened read-only (`O_NOFOLLOW`, `O_NONBLOCK`, so a
//! symbolic link or a FIFO planted in the directory is skipped, not followed or waited on), and
//! its bytes are copied out with `pread` and checked like any other value from shared memory: a
//! hostile or half-written file is reported ([`HeaderProblem`]), never trusted, never a crash (a
//! file truncated under us is a short read, not a SIGBUS as it would be through a mapping).
//!
//! It also answers which live processes have a segment open or mapped ([`ProcUsers`], read from
//! `/proc/<pid>/fd` and `/proc/<pid>/maps`): a process can use a segment without being counted in
//! any member table (one that holds a `Ring` but no handle yet, or a user segment's reader).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

use super::header::{HeaderFields, LAYOUT_VERSION, MAGIC, READY, READY_OFFSET, SegmentKind};
use super::{Fingerprint, SegmentError};
use crate::sys::{Errno, liveness, page_size};

/// Where POSIX shared memory objects live on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// What `fstat` says of a segment's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileFacts {
    /// Owner's user id.
    pub uid: u32,
    /// Owner's group id.
    pub gid: u32,
    /// Permission bits (`0o600` by default for ringpool's segments).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device and inode: the file's identity, which a name reused by a newer segment does not have.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

/// A segment's header as read from its file, checked without expecting a kind or a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// What the segment holds.
    pub kind: SegmentKind,
    /// The payload type's fingerprint.
    pub fingerprint: Fingerprint,
    /// The creator's pid (in `pid_namespace`).
    pub creator_pid: u32,
    /// The creator's pid namespace (inode of `/proc/<pid>/ns/pid`; 0 unknown).
    pub pid_namespace: u64,
    /// Whole file: header page, payload.
    pub total_len: u64,
    /// Where the payload starts in the file.
    pub payload_offset: u64,
    /// Payload bytes.
    pub payload_len: u64,
    /// Bytes of the payload's tail that openers map twice.
    pub mirror_len: u64,
    /// Whether the creator published the segment (false: still initializing, or died doing so).
    pub ready: bool,
}

/// Why a file that looks like a ringpool segment cannot be read as one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The file could not be opened or read (permission denied, say).
    #[error("cannot read it: {0}")]
    Unreadable(Errno),
    /// The header (or what follows it) fails a check: a foreign or overwritten file.
    #[error("corrupted: {0}")]
    Corrupted(&'static str),
    /// Made by another layout version of ringpool.
    #[error("layout version {found}, this build understands {expected}")]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
}

/// Is a process alive, as far as can be told from here?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (for a pid without a start time: a process with that pid runs).
    Alive,
    /// It is gone (or a zombie, or its pid now belongs to a younger process).
    Dead,
    /// Cannot be told: it lives in another pid namespace.
    Unknown,
}

impl Liveness {
    /// `Alive` or `Dead` by pid and start time (0: any), `Unknown` when `namespace` (of the
    /// segment's creator) is not this process's.
    pub fn of(pid: u32, start_time: u64, namespace: u64) -> Liveness {
        if !same_pid_namespace(namespace) {
            Liveness::Unknown
        } else if liveness::is_alive(pid, start_time) {
            Liveness::Alive
        } else {
            Liveness::Dead
        }
    }
}

/// Whether pids recorded by a process of pid namespace `ns` mean the same processes here
/// (0, unknown, on either side is taken as the same).
pub fn same_pid_namespace(ns: u64) -> bool {
    let own = liveness::pid_namespace();
    own == 0 || ns == 0 || own == ns
}

/// One file of the directory that carries ringpool's magic (or that could not be read at all).
#[derive(Debug)]
pub struct ScannedSegment {
    name: String,
    dir: PathBuf,
    /// `fstat` of the file (of the directory entry, for an unreadable one).
    pub file: FileFacts,
    /// The checked header, or why there is none.
    pub header: Result<HeaderInfo, HeaderProblem>,
    fd: Option<OwnedFd>,
}

impl ScannedSegment {
    /// The name under the directory (for `/dev/shm`, the name a `Ring` was created with).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Whether the creator is alive (by pid alone: the header records no start time, so a pid
    /// reused by another process reads as alive, which keeps a segment rather than losing one).
    pub fn creator(&self) -> Liveness {
        match &self.header {
            Ok(h) => Liveness::of(h.creator_pid, 0, h.pid_namespace),
            Err(_) => Liveness::Unknown,
        }
    }

    /// Copies `buf.len()` payload bytes from `offset` (from the start of the payload) out of the
    /// file. Fails unless the header is valid and the range lies inside the payload, or if the
    /// file shrank meanwhile.
    pub fn read_payload(&self, offset: u64, buf: &mut [u8]) -> Result<(), HeaderProblem> {
        let h = self.header.as_ref().map_err(Clone::clone)?;
        let end = offset.checked_add(buf.len() as u64).ok_or(HeaderProblem::Corrupted("read past the payload"))?;
        if end > h.payload_len {
            return Err(HeaderProblem::Corrupted("read past the payload"));
        }
        let at = h.payload_offset.checked_add(offset).ok_or(HeaderProblem::Corrupted("read past the payload"))?;
        let fd = self.fd.as_ref().ok_or(HeaderProblem::Unreadable(Errno::EBADF))?;
        read_exact_at(fd, buf, at)
    }

    /// The same file, looked at again through the descriptor this scan holds (under whatever name
    /// it has now): facts, header and all. For a re-check just before acting on a scan.
    pub fn reread(&self) -> Result<ScannedSegment, HeaderProblem> {
        let fd = self.fd.as_ref().ok_or(HeaderProblem::Unreadable(Errno::EBADF))?;
        let dup = fd.try_clone().map_err(|e| HeaderProblem::Unreadable(io_errno(&e)))?;
        match from_fd(&self.dir, &self.name, dup) {
            Some(s) => Ok(s),
            None => Err(HeaderProblem::Corrupted("no longer carries ringpool's magic")),
        }
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn read_exact_at(fd: &OwnedFd, buf: &mut [u8], at: u64) -> Result<(), HeaderProblem> {
    let file = std::fs::File::from(fd.try_clone().map_err(|e| HeaderProblem::Unreadable(io_errno(&e)))?);
    file.read_exact_at(buf, at).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => HeaderProblem::Corrupted("the file is shorter than its header says"),
        _ => HeaderProblem::Unreadable(io_errno(&e)),
    })
}

/// Every file in `dir` that carries ringpool's magic, in name order, with its header checked;
/// with `include_unreadable`, also the regular files that could not be opened to tell (they may
/// be another user's segments). Files of other programs, links, FIFOs and directories are skipped.
pub fn scan_dir(dir: &Path, include_unreadable: bool) -> std::io::Result<Vec<ScannedSegment>> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir)?.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    Ok(names.iter().filter_map(|n| scan_one(dir, n, include_unreadable)).collect())
}

/// The file `dir/name`, if it carries ringpool's magic (or, with `include_unreadable`, if it
/// could not be opened to tell). `None` for a missing file or another program's.
pub fn scan_one(dir: &Path, name: &str, include_unreadable: bool) -> Option<ScannedSegment> {
    if super::validate_name(name).is_err() {
        return None;
    }
    let path = dir.join(name);
    // Only regular files are opened at all (a device node is never opened, a FIFO never waited
    // on); a file swapped for something else after this look is caught by the fstat below.
    match nix::sys::stat::lstat(&path) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {}
        _ => return None,
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    match nix::fcntl::open(&path, flags, Mode::empty()) {
        Ok(fd) => from_fd(dir, name, fd),
        Err(e) if include_unreadable && e != Errno::ENOENT && e != Errno::ELOOP => {
            // Not readable: tell what the directory entry says, if it is a regular file.
            let st = nix::sys::stat::lstat(&path).ok()?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                return None;
            }
            Some(ScannedSegment {
                name: name.to_owned(),
                dir: dir.to_owned(),
                file: facts(&st),
                header: Err(HeaderProblem::Unreadable(e)),
                fd: None,
            })
        }
        Err(_) => None,
    }
}

fn facts(st: &nix::sys::stat::FileStat) -> FileFacts {
    FileFacts {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        size: u64::try_from(st.st_size).unwrap_or(0),
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// Reads the header of an open file. `None` unless it is a regular file with ringpool's magic.
fn from_fd(dir: &Path, name: &str, fd: OwnedFd) -> Option<ScannedSegment> {
    let st = nix::sys::stat::fstat(fd.as_fd()).ok()?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return None;
    }
    let file = facts(&st);
    let mut magic = [0u8; 8];
    if file.size < MAGIC.len() as u64 || read_exact_at(&fd, &mut magic, 0).is_err() || magic != MAGIC {
        return None;
    }
    let header = read_header(&fd, file.size);
    Some(ScannedSegment { name: name.to_owned(), dir: dir.to_owned(), file, header, fd: Some(fd) })
}

fn read_header(fd: &OwnedFd, file_len: u64) -> Result<HeaderInfo, HeaderProblem> {
    let page = page_size() as u64;
    const LEN: usize = std::mem::size_of::<HeaderFields>();
    if file_len < (READY_OFFSET + 4) as u64 {
        return Err(HeaderProblem::Corrupted("file too small for a header"));
    }
    let mut bytes = [0u8; LEN + 4];
    read_exact_at(fd, &mut bytes, 0)?;
    let fields: HeaderFields = bytemuck::pod_read_unaligned(&bytes[..LEN]);
    let ready_word = u32::from_ne_bytes([bytes[LEN], bytes[LEN + 1], bytes[LEN + 2], bytes[LEN + 3]]);
    // Another layout may place its checksum elsewhere: a plausible other version is said as such
    // before the checksum is looked at (garbage after the magic is "corrupted", below).
    if fields.version != LAYOUT_VERSION && fields.version < 1024 {
        return Err(HeaderProblem::UnsupportedVersion { found: fields.version, expected: LAYOUT_VERSION });
    }
    fields.validate(file_len, page).map_err(|e| match e {
        SegmentError::Corrupted { reason } => HeaderProblem::Corrupted(reason),
        SegmentError::UnsupportedVersion { found, expected } => HeaderProblem::UnsupportedVersion { found, expected },
        _ => HeaderProblem::Corrupted("header fails validation"),
    })?;
    let ready = match ready_word {
        READY => true,
        0 => false,
        _ => return Err(HeaderProblem::Corrupted("garbage in the ready word")),
    };
    let kind = SegmentKind::from_code(fields.kind).ok_or(HeaderProblem::Corrupted("unknown segment kind"))?;
    Ok(HeaderInfo {
        kind,
        fingerprint: fields.fingerprint,
        creator_pid: fields.creator_pid,
        pid_namespace: fields.pid_namespace,
        total_len: fields.total_len,
        payload_offset: fields.payload_offset,
        payload_len: fields.payload_len,
        mirror_len: fields.mirror_len,
        ready,
    })
}

/// A payload type's name, when its fingerprint is one ringpool can name: the byte ring's `[u8]`,
/// the primitive types, and byte arrays up to 4096. Other types (and tags) show as their hash.
pub fn type_name_of(fp: &Fingerprint) -> Option<String> {
    if *fp == Fingerprint::bytes() {
        return Some("[u8] (byte messages)".to_owned());
    }
    macro_rules! known {
        ($($t:ty),*) => {
            $(if *fp == Fingerprint::of::<$t>() { return Some(std::any::type_name::<$t>().to_owned()); })*
        };
    }
    known!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
    if fp.align == 1 && fp.size <= 4096 && fp.name_hash == super::fnv1a(format!("[u8; {}]", fp.size).as_bytes()) {
        return Some(format!("[u8; {}]", fp.size));
    }
    None
}

/// Which live processes have files open (`/proc/<pid>/fd`) or mapped (`/proc/<pid>/maps`), for
/// the files under one directory; this process excluded.
#[derive(Clone, Debug, Default)]
pub struct ProcUsers {
    by_file: HashMap<(u64, u64), Vec<u32>>,
    /// Processes whose `fd` or `maps` could not be read (another user's, without privilege):
    /// a segment may have users that this count hides.
    pub unreadable: usize,
}

impl ProcUsers {
    /// Reads `/proc` once for every file under `dir`.
    pub fn collect(dir: &Path) -> ProcUsers {
        let me = crate::sys::current_pid();
        let mut users = ProcUsers::default();
        let Ok(procs) = std::fs::read_dir("/proc") else { return users };
        for p in procs.filter_map(Result::ok) {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            let mut seen = Vec::new();
            let fds_ok = open_files(&p.path(), dir, &mut seen);
            let maps_ok = mapped_files(&p.path(), dir, &mut seen);
            if !fds_ok || !maps_ok {
                users.unreadable = users.unreadable.saturating_add(1);
            }
            seen.sort_unstable();
            seen.dedup();
            for f in seen {
                users.by_file.entry(f).or_default().push(pid);
            }
        }
        users
    }

    /// The live processes that have the file (device, inode) open or mapped.
    pub fn of(&self, dev: u64, ino: u64) -> &[u32] {
        self.by_file.get(&(dev, ino)).map_or(&[], Vec::as_slice)
    }
}

/// Files under `dir` that process `proc` has open. False if its descriptors cannot be read (a
/// process that exited meanwhile counts as read: it uses nothing).
fn open_files(proc: &Path, dir: &Path, out: &mut Vec<(u64, u64)>) -> bool {
    let entries = match std::fs::read_dir(proc.join("fd")) {
        Ok(e) => e,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
    };
    for e in entries.filter_map(Result::ok) {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        if !target.starts_with(dir) {
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        // Through the link: the file itself, even if unlinked or renamed since.
        if let Ok(m) = std::fs::metadata(e.path()) {
            out.push((m.dev(), m.ino()));
        }
    }
    true
}

/// Files under `dir` that process `proc` has mapped (by device and inode, as `maps` tells).
fn mapped_files(proc: &Path, dir: &Path, out: &mut Vec<(u64, u64)>) -> bool {
    let text = match std::fs::read(proc.join("maps")) {
        Ok(t) => t,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
    };
    let prefix = dir.as_os_str().as_bytes();
    for line in text.split(|&b| b == b'\n') {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, |&b| b == b' ');
        let (Some(_), Some(_), Some(_), Some(dev), Some(ino), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_ascii_start();
        if !Path::new(OsStr::from_bytes(path)).starts_with(Path::new(OsStr::from_bytes(prefix))) {
            continue;
        }
        let parse_hex = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| u32::from_str_radix(s, 16).ok());
        let mut dev_parts = dev.splitn(2, |&b| b == b':');
        let (Some(major), Some(minor)) = (dev_parts.next().and_then(parse_hex), dev_parts.next().and_then(parse_hex))
        else {
            continue;
        };
        let Some(ino) = std::str::from_utf8(ino).ok().and_then(|s| s.parse::<u64>().ok()) else { continue };
        out.push((libc::makedev(major, minor), ino));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_types_it_can() {
        assert_eq!(type_name_of(&Fingerprint::of::<u64>()).as_deref(), Some("u64"));
        assert_eq!(type_name_of(&Fingerprint::of::<[u8; 100]>()).as_deref(), Some("[u8; 100]"));
        assert!(type_name_of(&Fingerprint::bytes()).is_some());
        assert_eq!(type_name_of(&Fingerprint::tagged::<u64>("mine")), None);
    }

    #[test]
    fn a_mapped_segment_is_seen_as_used_by_this_process_only_when_not_excluded() {
        // This process maps a named segment; /proc shows it, but collect() leaves this process out.
        let name = format!("rp-test-scan-{}", std::process::id());
        let seg = super::super::SegmentBuilder::new(SegmentKind::User(3), Fingerprint::of::<u32>())
            .payload_len(4096)
            .named(&name, |_| Ok(()))
            .unwrap();
        let found = scan_one(Path::new(SHM_DIR), &name, false).expect("our segment");
        let h = found.header.as_ref().unwrap();
        assert_eq!(h.kind, SegmentKind::User(3));
        assert!(h.ready);
        assert_eq!(found.creator(), Liveness::Alive);
        let mut buf = [0u8; 8];
        found.read_payload(4088, &mut buf).unwrap();
        assert!(found.read_payload(4089, &mut buf).is_err(), "past the payload");
        assert!(found.read_payload(u64::MAX, &mut buf).is_err(), "no overflow");
        let users = ProcUsers::collect(Path::new(SHM_DIR));
        assert!(!users.of(found.file.dev, found.file.ino).contains(&crate::sys::current_pid()));
        let mut mine = Vec::new();
        assert!(mapped_files(Path::new("/proc/self"), Path::new(SHM_DIR), &mut mine));
        assert!(mine.contains(&(found.file.dev, found.file.ino)), "{mine:?}");
        drop(seg);
        assert!(scan_one(Path::new(SHM_DIR), &name, false).is_none());
    }
}
