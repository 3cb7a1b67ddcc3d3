//! Layer 1: a mapped region of shared memory with a validated header.
//!
//! Three backends:
//! - **named** ([`SegmentBuilder::named`]): a POSIX shared memory object under `/dev/shm`, which
//!   any process can open by name: rendezvous between processes that share no parent;
//! - **anonymous** ([`SegmentBuilder::anonymous`]): a `memfd`, inherited by forked children or
//!   passed as a file descriptor, gone with its last user, so a crash leaks nothing;
//! - **file** ([`SegmentBuilder::file`]): a file on disk (or on hugetlbfs, tmpfs, ...).
//!
//! Every segment starts with a header page: magic, layout version, kind, the payload type's
//! [`Fingerprint`], sizes, the creator's pid, a checksum, and a ready word that the creator
//! publishes last, after the payload is initialized. An opener that races the creator waits for
//! the ready word (bounded by [`SegmentBuilder::open_timeout`]) and then checks every field; any
//! mismatch is a clear [`SegmentError`], never undefined behaviour and never a hang.
//!
//! Pages are reserved with `posix_fallocate` at creation, so a full `/dev/shm` is
//! [`SegmentError::NoSpace`] there instead of a SIGBUS on first touch later.
//!
//! Only the process that created a named segment unlinks its name, and it knows itself by pid,
//! not by a flag a forked child would inherit: a child that drops its copy leaves the name alone.
//! It unlinks the name only while the name still refers to its own file, checked and unlinked
//! under an exclusive `flock` of that file that every ringpool unlinker takes, so a segment that a
//! concurrent [`OpenMode::PurgeAndCreate`] put under the name is never removed by the old creator.
//!
//! What an opener trusts: a named or file segment must be owned by the caller's effective uid
//! (`/dev/shm` names are global; whoever creates a name first controls what is in it), unless
//! the builder says [`allow_foreign_owner`](SegmentBuilder::allow_foreign_owner); a symbolic link
//! at a file segment's path is refused; every header field is checked with checked arithmetic
//! before it forms a length or an address. Anonymous (`memfd`) segments are sealed against
//! shrinking and growing, so no holder can truncate them under the others' mappings (SIGBUS).
//!
//! Why this does not use the `shared_memory` crate: see `SAFETY.md`, "Why not shared_memory".

mod header;
mod map;
pub mod scan;

use crate::sys::atomic::{AtomicU32, Ordering};
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

pub use header::{Fingerprint, LAYOUT_VERSION, MAGIC, SegmentKind};
pub(crate) use header::{HeaderFields, fnv1a};
use header::{READY, READY_OFFSET};
use map::Mapping;

use crate::sys::{Deadline, Errno, current_pid, futex_wait, futex_wake, liveness, page_size};

/// The longest name accepted (the file name under `/dev/shm`, without the leading `/`).
pub const MAX_NAME_LEN: usize = 255;

/// What to do when a named (or file) segment does or does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OpenMode {
    /// Create it; fail with [`SegmentError::AlreadyExists`] if the name is taken.
    #[default]
    CreateNew,
    /// Open it; fail with [`SegmentError::NotFound`] if there is none.
    OpenExisting,
    /// Open it if it exists, create it otherwise. Racing creators agree on one segment.
    OpenOrCreate,
    /// Remove whatever has the name (a stale segment left by a killed process), then create.
    PurgeAndCreate,
}

/// Everything that can go wrong creating or opening a segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The name is empty, too long, or holds a `/` or a NUL.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`OpenMode::OpenExisting`] and nothing has that name.
    #[error("no segment named {0:?}")]
    NotFound(String),
    /// [`OpenMode::CreateNew`] and the name is taken.
    #[error("a segment named {0:?} already exists")]
    AlreadyExists(String),
    /// The requested size is zero or too large for this machine.
    #[error("invalid segment size: {0}")]
    InvalidSize(&'static str),
    /// The backing filesystem (usually the tmpfs at /dev/shm) has no room for the segment.
    #[error("no room for a {needed}-byte segment (is /dev/shm full? Docker gives 64 MiB by default)")]
    NoSpace {
        /// Bytes asked for.
        needed: u64,
    },
    /// The creator never published the ready word within the open timeout: it is still
    /// initializing, or it died while doing so (then [`OpenMode::PurgeAndCreate`] recovers the name).
    #[error("segment not ready after {0:?}: its creator is slow or died while creating it")]
    NotReady(Duration),
    /// The header is not what ringpool writes: a foreign file, or overwritten memory.
    #[error("segment is corrupted: {reason}")]
    Corrupted {
        /// Which check failed.
        reason: &'static str,
    },
    /// Made by an incompatible version of ringpool.
    #[error("segment layout version {found}, this build understands {expected}")]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The segment holds something else (a queue opened as a ring, say).
    #[error("segment holds a {found}, expected a {expected}")]
    KindMismatch {
        /// What the caller asked for.
        expected: SegmentKind,
        /// What the header says.
        found: SegmentKind,
    },
    /// The segment was made for another payload type.
    #[error("payload type mismatch: expected {expected}, segment has {found}")]
    TypeMismatch {
        /// The caller's type.
        expected: Fingerprint,
        /// The creator's type.
        found: Fingerprint,
    },
    /// The creator lives in another pid namespace (another container): liveness checks by pid,
    /// which robustness rests on, would be meaningless between the two.
    #[error("segment was created in another pid namespace; processes sharing it must share one")]
    ForeignPidNamespace,
    /// The segment's file belongs to another user. `/dev/shm` names are global: whoever creates
    /// a name first decides what is in it, so by default a segment is only opened when its file
    /// is owned by this process's effective uid. If that other user is trusted, opt in with
    /// `allow_foreign_owner()` on the builder ([`SegmentBuilder::allow_foreign_owner`],
    /// `RingBuilder::allow_foreign_owner`, `QueueBuilder::allow_foreign_owner`).
    #[error(
        "segment {name:?} is owned by uid {owner}, not by this process's uid {ours}; if that user is trusted, \
         open it with `.allow_foreign_owner()` on the builder"
    )]
    ForeignOwner {
        /// The segment's name or path.
        name: String,
        /// The uid that owns the segment's file.
        owner: u32,
        /// This process's effective uid.
        ours: u32,
    },
    /// A file segment's path is a symbolic link. Links there are not followed (one planted at
    /// the path could point the segment at any file the caller may write): give the file's own
    /// path.
    #[error(
        "{0:?} is a symbolic link; ringpool does not follow a link at a segment's path (give the target's own path)"
    )]
    Symlink(PathBuf),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// Its errno.
        source: Errno,
    },
}

impl SegmentError {
    fn os(op: &'static str) -> impl FnOnce(Errno) -> SegmentError {
        move |source| SegmentError::Os { op, source }
    }
}

/// Checks a segment name: non-empty, at most [`MAX_NAME_LEN`] bytes, no `/`, no NUL, not `.`/`..`.
pub fn validate_name(name: &str) -> Result<(), SegmentError> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("the name is longer than 255 bytes")
    } else if name.contains('/') {
        Some("the name contains '/'")
    } else if name.contains('\0') {
        Some("the name contains a NUL byte")
    } else if name == "." || name == ".." {
        Some("the name is '.' or '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SegmentError::InvalidName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

/// Where a segment's bytes live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A POSIX shared memory object, `/dev/shm/<name>`.
    Named(String),
    /// A `memfd`: no name, freed with its last mapping and descriptor.
    Anonymous,
    /// A file.
    File(PathBuf),
}

/// How to create or open a segment. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SegmentBuilder {
    kind: SegmentKind,
    fingerprint: Fingerprint,
    payload_len: usize,
    mirror_len: usize,
    mode: OpenMode,
    open_timeout: Duration,
    permissions: u32,
    allow_foreign_owner: bool,
}

/// Pointer to the payload and its length, handed to a creator's initializer before the segment is
/// published.
#[derive(Debug)]
pub struct Uninit {
    ptr: NonNull<u8>,
    len: usize,
}

impl Uninit {
    /// Start of the payload (page-aligned, zero-filled).
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length of the payload.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: payloads are at least a page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl SegmentBuilder {
    /// A builder for a segment of `kind` holding `fingerprint`-typed data.
    pub fn new(kind: SegmentKind, fingerprint: Fingerprint) -> SegmentBuilder {
        SegmentBuilder {
            kind,
            fingerprint,
            payload_len: 0,
            mirror_len: 0,
            mode: OpenMode::CreateNew,
            open_timeout: Duration::from_secs(2),
            permissions: 0o600,
            allow_foreign_owner: false,
        }
    }

    /// Payload size for creation, rounded up to whole pages. Ignored when opening (the header says).
    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload_len = len;
        self
    }

    /// Maps the last `len` bytes of the payload a second time, right after the first mapping, so a
    /// ring's records that wrap around the end are still contiguous in memory. `len` is rounded up
    /// to whole pages; it is recorded in the header, so openers map the same way.
    pub fn mirror_tail(mut self, len: usize) -> Self {
        self.mirror_len = len;
        self
    }

    /// What to do when the name exists or not (named and file segments). Default: create new.
    pub fn mode(mut self, mode: OpenMode) -> Self {
        self.mode = mode;
        self
    }

    /// How long an opener waits for a racing creator to publish the segment. Default: 2 s.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Permission bits of a created named or file segment. Default `0o600` (owner only).
    pub fn permissions(mut self, mode: u32) -> Self {
        self.permissions = mode & 0o777;
        self
    }

    /// Opens named and file segments whose file is owned by another user. By default such a
    /// segment is refused with [`SegmentError::ForeignOwner`]: `/dev/shm` names are global, and
    /// whoever creates a name first controls the segment's contents. Opening a segment from a
    /// descriptor ([`from_fd`](Self::from_fd)) is not checked: the descriptor was handed over.
    pub fn allow_foreign_owner(mut self) -> Self {
        self.allow_foreign_owner = true;
        self
    }

    /// Creates or opens (per [`mode`](Self::mode)) the named segment `/dev/shm/<name>`.
    /// `init` runs only if this call creates it, on zeroed memory, before anyone can open it.
    pub fn named(
        &self,
        name: &str,
        init: impl FnOnce(&Uninit) -> Result<(), SegmentError>,
    ) -> Result<Segment, SegmentError> {
        validate_name(name)?;
        let shm_name = format!("/{name}");
        self.open_path_like(Backend::Named(name.to_owned()), init, |create| {
            let flags = if create {
                nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_EXCL | nix::fcntl::OFlag::O_RDWR
            } else {
                nix::fcntl::OFlag::O_RDWR
            };
            let mode = nix::sys::stat::Mode::from_bits_truncate(self.permissions);
            nix::sys::mman::shm_open(shm_name.as_str(), flags, mode)
        })
    }

    /// Creates or opens (per [`mode`](Self::mode)) a file-backed segment at `path`.
    pub fn file(
        &self,
        path: impl AsRef<Path>,
        init: impl FnOnce(&Uninit) -> Result<(), SegmentError>,
    ) -> Result<Segment, SegmentError> {
        let path = path.as_ref();
        self.open_path_like(Backend::File(path.to_owned()), init, |create| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut o = std::fs::OpenOptions::new();
            // O_NOFOLLOW: a symbolic link planted at the path is refused, not followed (it could
            // point the segment at any file the caller may write). O_CREAT | O_EXCL never
            // follows one either. Links in the directories above the last component are followed.
            o.read(true).write(true).mode(self.permissions).custom_flags(libc::O_NOFOLLOW);
            if create {
                o.create_new(true);
            }
            o.open(path).map(OwnedFd::from).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })
    }

    /// Creates an anonymous (`memfd`) segment. It has no name; it lives while a mapping or a
    /// descriptor of it does, is inherited by forked children, and can be passed to a re-executed
    /// one ([`Segment::fd`], [`SegmentBuilder::from_fd`]).
    pub fn anonymous(&self, init: impl FnOnce(&Uninit) -> Result<(), SegmentError>) -> Result<Segment, SegmentError> {
        use nix::sys::memfd::MFdFlags;
        let fd = nix::sys::memfd::memfd_create(c"ringpool", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(SegmentError::os("memfd_create"))?;
        self.create_on(fd, Backend::Anonymous, init)
    }

    /// Opens a segment from a descriptor (a memfd inherited by a re-executed child, say).
    pub fn from_fd(&self, fd: OwnedFd) -> Result<Segment, SegmentError> {
        self.open_on(fd, Backend::Anonymous)
    }

    fn open_path_like(
        &self,
        backend: Backend,
        init: impl FnOnce(&Uninit) -> Result<(), SegmentError>,
        open: impl Fn(bool) -> Result<OwnedFd, Errno>,
    ) -> Result<Segment, SegmentError> {
        let label = match &backend {
            Backend::Named(n) => n.clone(),
            Backend::File(p) => p.display().to_string(),
            Backend::Anonymous => String::new(),
        };
        match self.mode {
            OpenMode::OpenExisting => match open(false) {
                Ok(fd) => self.open_on(fd, backend),
                Err(Errno::ENOENT) => Err(SegmentError::NotFound(label)),
                Err(e) => Err(open_error(&backend, e)),
            },
            OpenMode::CreateNew => match open(true) {
                Ok(fd) => self.create_on(fd, backend, init),
                Err(Errno::EEXIST) => Err(SegmentError::AlreadyExists(label)),
                Err(e) => Err(SegmentError::Os { op: "create", source: e }),
            },
            OpenMode::PurgeAndCreate => {
                // Another purger may recreate the name between our unlink and our create: retry a
                // few times, then report the name as taken.
                for _ in 0..8 {
                    // Unlink what is there under its inode lock (see `unlink_if_named`), so that
                    // a creator dropping that segment meanwhile cannot remove ours instead.
                    let purged = match open(false) {
                        Ok(old) => unlink_if_named(old.as_fd(), &backend).map(drop),
                        Err(Errno::ENOENT) => Ok(()),
                        // Not openable (a symbolic link, say): nothing of ours to protect.
                        Err(_) => unlink_backend(&backend),
                    };
                    match purged {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(e) => return Err(SegmentError::Os { op: "unlink", source: e }),
                    }
                    match open(true) {
                        Ok(fd) => return self.create_on(fd, backend, init),
                        Err(Errno::EEXIST) => continue,
                        Err(e) => return Err(SegmentError::Os { op: "create", source: e }),
                    }
                }
                Err(SegmentError::AlreadyExists(label))
            }
            OpenMode::OpenOrCreate => {
                // Create and open race each other (a creator can unlink between our failed create
                // and our open): a bounded number of rounds decide which one we do.
                enum Got {
                    Created(OwnedFd),
                    Opened(OwnedFd),
                }
                let mut got = None;
                for _ in 0..64 {
                    match open(true) {
                        Ok(fd) => {
                            got = Some(Got::Created(fd));
                            break;
                        }
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(SegmentError::Os { op: "create", source: e }),
                    }
                    match open(false) {
                        Ok(fd) => {
                            got = Some(Got::Opened(fd));
                            break;
                        }
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(open_error(&backend, e)),
                    }
                }
                match got {
                    Some(Got::Created(fd)) => self.create_on(fd, backend, init),
                    Some(Got::Opened(fd)) => self.open_on(fd, backend),
                    None => Err(SegmentError::NotReady(Duration::ZERO)),
                }
            }
        }
    }

    fn layout(&self) -> Result<(u64, u64, u64), SegmentError> {
        let page = page_size() as u64;
        if self.payload_len == 0 {
            return Err(SegmentError::InvalidSize("payload length is zero"));
        }
        let round = |n: u64| n.checked_add(page - 1).map(|v| v / page * page);
        let payload = round(self.payload_len as u64).ok_or(SegmentError::InvalidSize("payload too large"))?;
        let mirror = round(self.mirror_len as u64).ok_or(SegmentError::InvalidSize("mirror too large"))?;
        if mirror > payload {
            return Err(SegmentError::InvalidSize("mirrored tail longer than the payload"));
        }
        let file_len = payload
            .checked_add(page)
            .filter(|&t| t.checked_add(mirror).is_some_and(|m| m <= isize::MAX as u64 / 2))
            .ok_or(SegmentError::InvalidSize("segment too large for the address space"))?;
        Ok((page, payload, file_len))
    }

    fn create_on(
        &self,
        fd: OwnedFd,
        backend: Backend,
        init: impl FnOnce(&Uninit) -> Result<(), SegmentError>,
    ) -> Result<Segment, SegmentError> {
        // From here on, any failure must remove what we created.
        let result = self.create_inner(&fd, matches!(backend, Backend::Anonymous), init);
        match result {
            Ok((map, fields)) => {
                Ok(Segment { map, fd, backend, created_by: Some(current_pid()), unlink_on_drop: true, fields })
            }
            Err(e) => {
                // Only the file we created: a purger may already have put another under the name.
                // Failing to unlink leaves a name that `PurgeAndCreate` recovers; the creation
                // error is the one worth reporting.
                let _ = unlink_if_named(fd.as_fd(), &backend);
                Err(e)
            }
        }
    }

    fn create_inner(
        &self,
        fd: &OwnedFd,
        seal: bool,
        init: impl FnOnce(&Uninit) -> Result<(), SegmentError>,
    ) -> Result<(Mapping, HeaderFields), SegmentError> {
        let (page, payload_len, total) = self.layout()?;
        let total_i = libc::off_t::try_from(total).map_err(|_| SegmentError::InvalidSize("segment too large"))?;
        nix::unistd::ftruncate(fd, total_i).map_err(SegmentError::os("ftruncate"))?;
        match crate::sys::reserve_pages(fd.as_fd(), total) {
            Ok(()) => {}
            Err(Errno::ENOSPC) | Err(Errno::ENOMEM) | Err(Errno::EFBIG) => {
                return Err(SegmentError::NoSpace { needed: total });
            }
            // Filesystems without fallocate: nothing reserved, but nothing wrong either.
            Err(Errno::EOPNOTSUPP) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(SegmentError::Os { op: "posix_fallocate", source: e }),
        }
        if seal {
            // A memfd's size is final from here on: any holder's ftruncate fails (EPERM) instead
            // of leaving every mapper to die of SIGBUS on a page past the new end.
            use nix::fcntl::{FcntlArg, SealFlag, fcntl};
            let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
            fcntl(fd, FcntlArg::F_ADD_SEALS(seals)).map_err(SegmentError::os("fcntl(F_ADD_SEALS)"))?;
        }
        let mirror_len = round_up(self.mirror_len as u64, page);
        let map = Mapping::new(fd.as_fd(), total as usize, (mirror_len > 0).then_some((total - mirror_len) as usize))
            .map_err(SegmentError::os("mmap"))?;
        let fields = HeaderFields {
            magic: header::MAGIC,
            version: LAYOUT_VERSION,
            kind: self.kind.code(),
            total_len: total,
            payload_offset: page,
            payload_len,
            mirror_len,
            creator_pid: current_pid(),
            flags: 0,
            pid_namespace: liveness::pid_namespace(),
            fingerprint: self.fingerprint,
            checksum: 0,
        }
        .seal();
        // SAFETY: the mapping is at least one page long and page-aligned; the header fits in its
        // first page and HeaderFields has alignment 8. Nobody else reads the fields before the
        // ready word is published below (openers wait for it), so this write races with nothing.
        unsafe { map.base().cast::<HeaderFields>().as_ptr().write(fields) };
        let uninit = Uninit {
            // SAFETY: `page` < `total`, so the payload pointer is inside the mapping.
            ptr: unsafe { map.base().add(page as usize) },
            len: payload_len as usize,
        };
        init(&uninit)?;
        let ready = ready_word(&map);
        ready.store(READY, Ordering::Release);
        futex_wake(ready, u32::MAX);
        Ok((map, fields))
    }

    fn open_on(&self, fd: OwnedFd, backend: Backend) -> Result<Segment, SegmentError> {
        let deadline = Deadline::after(self.open_timeout);
        let page = page_size() as u64;
        // The creator may not have sized the file yet.
        let file_len = loop {
            let st = nix::sys::stat::fstat(&fd).map_err(SegmentError::os("fstat"))?;
            self.check_owner(&backend, st.st_uid)?;
            let len = st.st_size as u64;
            if len >= page * 2 {
                break len;
            }
            if deadline.passed() {
                return Err(if len == 0 {
                    SegmentError::NotReady(self.open_timeout)
                } else {
                    SegmentError::Corrupted { reason: "file too small for a header and a payload" }
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        // Peek at the header page alone until the creator publishes it.
        let peek = Mapping::new(fd.as_fd(), page as usize, None).map_err(SegmentError::os("mmap"))?;
        let ready = ready_word(&peek);
        loop {
            match ready.load(Ordering::Acquire) {
                READY => break,
                0 => {
                    if deadline.passed() {
                        return Err(SegmentError::NotReady(self.open_timeout));
                    }
                    futex_wait(ready, 0, Some(deadline.min_after(Duration::from_millis(5))));
                }
                _ => return Err(SegmentError::Corrupted { reason: "garbage in the ready word" }),
            }
        }
        // SAFETY: the peek mapping is one page, page-aligned; the fields fit at its start. The
        // read is volatile and by value: a peer overwriting the header meanwhile can only give us
        // garbage, which the checks below reject.
        let fields: HeaderFields = unsafe { peek.base().cast::<HeaderFields>().as_ptr().read_volatile() };
        drop(peek);
        fields.validate(file_len, page)?;
        let found_kind =
            SegmentKind::from_code(fields.kind).ok_or(SegmentError::Corrupted { reason: "unknown kind" })?;
        if found_kind != self.kind {
            return Err(SegmentError::KindMismatch { expected: self.kind, found: found_kind });
        }
        if fields.fingerprint != self.fingerprint {
            return Err(SegmentError::TypeMismatch { expected: self.fingerprint, found: fields.fingerprint });
        }
        let own_ns = liveness::pid_namespace();
        if own_ns != 0 && fields.pid_namespace != 0 && own_ns != fields.pid_namespace {
            return Err(SegmentError::ForeignPidNamespace);
        }
        let map_len = fields.payload_offset + fields.payload_len;
        let mirror = (fields.mirror_len > 0).then_some((map_len - fields.mirror_len) as usize);
        let map = Mapping::new(fd.as_fd(), map_len as usize, mirror).map_err(SegmentError::os("mmap"))?;
        Ok(Segment { map, fd, backend, created_by: None, unlink_on_drop: false, fields })
    }
}

impl SegmentBuilder {
    /// Refuses a named or file segment owned by another user, unless the builder opted in.
    fn check_owner(&self, backend: &Backend, owner: u32) -> Result<(), SegmentError> {
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        let ours = unsafe { libc::geteuid() };
        let name = match backend {
            Backend::Named(n) => n.clone(),
            Backend::File(p) => p.display().to_string(),
            Backend::Anonymous => return Ok(()),
        };
        if owner == ours || self.allow_foreign_owner {
            return Ok(());
        }
        Err(SegmentError::ForeignOwner { name, owner, ours })
    }
}

/// The error for a failed open of an existing name: a symbolic link at a file segment's path is
/// refused by name.
fn open_error(backend: &Backend, e: Errno) -> SegmentError {
    match (backend, e) {
        (Backend::File(path), Errno::ELOOP) => SegmentError::Symlink(path.clone()),
        _ => SegmentError::Os { op: "open", source: e },
    }
}

fn round_up(n: u64, page: u64) -> u64 {
    n.div_ceil(page) * page
}

fn ready_word(map: &Mapping) -> &AtomicU32 {
    // SAFETY: READY_OFFSET (the size of HeaderFields, 104) is 4-aligned and inside the first page
    // of a page-aligned mapping that outlives the returned reference (it borrows `map`); any bit
    // pattern is a valid AtomicU32, and it is only ever accessed atomically.
    unsafe { &*map.base().as_ptr().wrapping_add(READY_OFFSET).cast::<AtomicU32>() }
}

/// How long an unlinker waits for another one's inode lock before leaving the name alone. A
/// holder keeps it for a stat and an unlink (a purger: an unlink), so only a stopped process
/// holds it this long.
const UNLINK_LOCK_WAIT: Duration = Duration::from_secs(1);

/// Removes the name of `backend` if, and only if, it still refers to the file open as `fd`;
/// answers whether it did.
///
/// There is no "unlink this inode" call, so unlinkers take turns: each holds an exclusive
/// `flock` on the inode it means to unlink while it checks that the name refers to it and
/// unlinks it (a dropping creator and a failed creation here, [`OpenMode::PurgeAndCreate`] on
/// what it found). A purger that unlinked our file and made its own under the name held our
/// inode's lock for the unlink; after it, the check here sees another inode and leaves the name.
/// (Openers never lock; a process that unlinks by other means is not covered, nor is
/// [`Segment::unlink`], which removes whatever has the name, as asked.)
fn unlink_if_named(fd: BorrowedFd<'_>, backend: &Backend) -> Result<bool, Errno> {
    let path = match backend {
        Backend::Named(n) => Path::new("/dev/shm").join(n),
        Backend::File(p) => p.clone(),
        Backend::Anonymous => return Ok(false),
    };
    let _lock = InodeLock::exclusive(fd, UNLINK_LOCK_WAIT)?;
    let ours = nix::sys::stat::fstat(fd)?;
    let named = match nix::sys::stat::lstat(path.as_path()) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    if (named.st_dev, named.st_ino) != (ours.st_dev, ours.st_ino) {
        return Ok(false);
    }
    #[cfg(test)]
    tests::hooks::before_unlink(backend);
    unlink_backend(backend).map(|()| true)
}

/// An exclusive `flock` on a segment's inode, released on drop (see [`unlink_if_named`]).
struct InodeLock<'a>(BorrowedFd<'a>);

impl<'a> InodeLock<'a> {
    fn exclusive(fd: BorrowedFd<'a>, wait: Duration) -> Result<InodeLock<'a>, Errno> {
        use std::os::fd::AsRawFd;
        let deadline = Deadline::after(wait);
        loop {
            // SAFETY: flock on a descriptor we borrow; it touches no memory.
            let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            match Errno::result(r) {
                Ok(_) => return Ok(InodeLock(fd)),
                Err(Errno::EWOULDBLOCK) => {
                    #[cfg(test)]
                    tests::hooks::contended();
                    if deadline.passed() {
                        return Err(Errno::EWOULDBLOCK);
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for InodeLock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `exclusive`. Closing the descriptor would release it too.
        let _ = unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn unlink_backend(backend: &Backend) -> Result<(), Errno> {
    crate::trace::event!(debug, segment = ?backend, "segment name removed");
    match backend {
        Backend::Named(name) => nix::sys::mman::shm_unlink(format!("/{name}").as_str()),
        Backend::File(path) => {
            let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
            nix::unistd::unlink(c.as_c_str())
        }
        Backend::Anonymous => Ok(()),
    }
}

/// A mapped, validated segment. See the [module docs](self).
///
/// Dropping it unmaps it; if this handle created a named or file segment, and the current process
/// is the one that created it, and the name still refers to this segment, the name is removed too.
#[derive(Debug)]
pub struct Segment {
    map: Mapping,
    fd: OwnedFd,
    backend: Backend,
    created_by: Option<u32>,
    unlink_on_drop: bool,
    fields: HeaderFields,
}

// SAFETY: a Segment is a mapping plus plain data. The mapping is process-wide (any thread may
// touch it), and the segment itself never reads or writes the payload: the layers above do, with
// atomics or under their locks, and state in their own SAFETY comments why that is sound.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only hands out pointers and reads immutable fields.
unsafe impl Sync for Segment {}

impl Segment {
    /// Start of the payload (page-aligned).
    pub fn payload(&self) -> NonNull<u8> {
        // SAFETY: payload_offset < total length of the mapping (validated at creation or open).
        unsafe { self.map.base().add(self.fields.payload_offset as usize) }
    }

    /// Length of the payload in bytes (not counting the mirrored tail).
    pub fn payload_len(&self) -> usize {
        self.fields.payload_len as usize
    }

    /// Length of the mirrored tail: the last `mirror_len` bytes of the payload are also mapped
    /// right after it.
    pub fn mirror_len(&self) -> usize {
        self.fields.mirror_len as usize
    }

    /// What the segment holds.
    pub fn kind(&self) -> SegmentKind {
        SegmentKind::from_code(self.fields.kind).unwrap_or(SegmentKind::User(0))
    }

    /// The payload type's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fields.fingerprint
    }

    /// The pid of the process that created the segment.
    pub fn creator_pid(&self) -> u32 {
        self.fields.creator_pid
    }

    /// Where the segment lives.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether this handle created the segment (and the current process is the creator: false in a
    /// forked child of the creator).
    pub fn is_creator(&self) -> bool {
        self.created_by == Some(current_pid())
    }

    /// The segment's file descriptor (close-on-exec): pass it to a re-executed child and open it
    /// there with [`SegmentBuilder::from_fd`] after clearing `FD_CLOEXEC`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether dropping this handle in its creator removes the name (default: yes). A server that
    /// wants its named segment to outlive it turns this off.
    pub fn set_unlink_on_drop(&mut self, unlink: bool) {
        self.unlink_on_drop = unlink;
    }

    /// Removes the name `/dev/shm/<name>`; mappings stay valid until dropped.
    pub fn unlink(name: &str) -> Result<(), SegmentError> {
        validate_name(name)?;
        match unlink_backend(&Backend::Named(name.to_owned())) {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => Err(SegmentError::NotFound(name.to_owned())),
            Err(e) => Err(SegmentError::Os { op: "shm_unlink", source: e }),
        }
    }

    /// Whether `/dev/shm/<name>` exists.
    pub fn exists(name: &str) -> bool {
        validate_name(name).is_ok() && Path::new("/dev/shm").join(name).exists()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.unlink_on_drop && self.is_creator() {
            // Only if the name still refers to this very segment (not a newer one made under the
            // same name after a purge): see `unlink_if_named`. Nothing useful can be done about
            // a failure here (the name stays, for `PurgeAndCreate`); never panic in Drop.
            let _ = unlink_if_named(self.fd.as_fd(), &self.backend);
        }
        // `map` unmaps itself; `fd` closes itself.
    }
}

#[cfg(test)]
mod tests;
