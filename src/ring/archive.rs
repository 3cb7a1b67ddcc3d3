//! [`TypedRing<T>`]: any [rkyv](https://docs.rs/rkyv/0.8)-archivable value (strings, vectors,
//! enums with data, `Option`, `Result`, tuples, `bool`, structs holding them) through a byte
//! [`Ring`], written straight into the ring and read where it lies, validated before use.
//! Behind the default feature `archive`.
//!
//! ```
//! use ringpool::ring::archive::{TypedRing, rkyv};
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
//! #[rkyv(crate = rkyv)]
//! enum Msg {
//!     Hello { from: String },
//!     Numbers(Vec<u32>),
//!     Quit,
//! }
//!
//! let ring = TypedRing::<Msg>::builder().capacity(1 << 16).anonymous()?;
//! let (tx, rx) = (ring.sender()?, ring.receiver()?);
//! tx.send(Msg::Hello { from: "me".into() }).map_err(|e| e.to_string())?;
//! // In place: a guard that derefs to the validated `ArchivedMsg`, released on drop.
//! let got = rx.recv_archived()?;
//! assert!(matches!(&*got, ArchivedMsg::Hello { from } if from == "me"));
//! drop(got);
//! tx.send(Msg::Quit).map_err(|e| e.to_string())?;
//! assert_eq!(rx.recv()?, Msg::Quit); // or owned (deserialized)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Why rkyv
//!
//! - **Read in place.** An archived value is laid out so that it is read where it lies: an
//!   `ArchivedString` is a length and a *relative* pointer, so the bytes mean the same thing at
//!   whatever address each process maps the ring. serde formats (bincode, postcard, what
//!   ipc-channel and procspawn use) must be decoded into a new value on the receiving side, a copy
//!   and allocations per message; a receiver here can read a string field of a message without
//!   either.
//! - **Untrusted bytes are validated, not trusted.** rkyv's `bytecheck` checks every relative
//!   pointer, length, enum tag, `char` and UTF-8 string against the bounds of the message before a
//!   reference is handed out, so a peer that writes garbage yields an error. Alternatives without
//!   that (abomonation, raw casts) would make a peer's bug undefined behaviour here.
//! - **Serialized straight into the ring.** rkyv serializes into any [`Writer`]; [`ArchiveWriter`]
//!   writes into the room [`Sender::reserve`] hands out, so a value is written once, where the
//!   receiver will read it: no intermediate buffer, no second copy.
//! - **Ordinary Rust types.** `#[derive(Archive, Serialize, Deserialize)]` on the user's own types,
//!   no schema files or code generation (Cap'n Proto and FlatBuffers need both).
//!
//! `Pod` types keep their own fast path, [`Queue`](crate::Queue), untouched. For archived values in
//! fixed slots (a bounded count rather than bounded bytes), [`TypedQueue<T, N>`](TypedQueue) keeps
//! each archive in an `N`-byte slot of a `Queue<[u8; N]>`, with the same placement and validation.
//!
//! # What a message is
//!
//! A message is one record of the byte ring holding exactly the archive of one value (rkyv 0.8's
//! layout: the root at the end). The sender reserves room for a guess of the size (the last sizes
//! it sent, or [`TypedSender::set_size_hint`]), serializes into it and publishes only the bytes
//! written. If the guess was short, nothing is published: the sender measures the value (a second
//! pass that writes nothing), reserves that and writes it again. A value larger than the ring's
//! largest message is [`TypedSendError::TooLarge`], naming both sizes and handing the value back:
//! never truncated.
//!
//! # Alignment: read in place, never copied
//!
//! rkyv needs every archived object at an address aligned for its type. Ring records are only
//! 8-aligned, so the sender does not serialize from position 0: [`ArchiveWriter`] counts positions
//! from the record's offset within its 4 KiB page (the data region is page-aligned in every
//! process, and the ring's mirror keeps a record contiguous), so every alignment rkyv pads for (16
//! at most for its own types; anything up to 4 KiB would do) holds at the address the receiver
//! reads. Relative pointers are differences of
//! positions, unchanged by that offset. The receiver therefore always validates and reads in place
//! and never copies into an aligned buffer. A record that a non-conforming peer misaligned fails
//! validation (rkyv checks every pointer's alignment): an error, not a copy and not UB.
//!
//! # Validation
//!
//! Every receive runs `rkyv::access` (bytecheck) over the record's bytes before a reference exists;
//! `access_unchecked` is never used. A record that fails is removed from the ring and answered as
//! [`TypedRecvError::Invalid`] with rkyv's reason, so one bad message does not block the ring. The
//! bytes then stay put while the guard lives: the receive lock is held and no ringpool process
//! writes a published record before the head moves past it (SAFETY.md, ground rule 2).
//!
//! # Cost
//!
//! On top of the byte ring's own reserve and receive, for a 64-byte struct holding a 16-byte
//! string (64 bytes archived), measured in one process on a 2-vCPU VM: serializing into the ring
//! about 35-45 ns (each sender keeps its own rkyv arena: rkyv's thread-local one cost about 70 ns
//! more), validating about 25 ns, deserializing an owned value one `String` allocation more.
//! `benches/archive.rs` measures it between processes.
//!
//! # Across builds
//!
//! The segment's fingerprint is that of `Archived<T>` (its size and alignment) and a hash of
//! `T`'s type name, or of a tag ([`TypedRingBuilder::type_tag`]) for programs built apart, and of
//! rkyv's format (pointer width, endianness, alignment features): opening a ring of another type
//! or format is [`SegmentError::TypeMismatch`]. Both sides must archive `T` the same way; the tag
//! is the user's promise that they do.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use rkyv;
pub use slots::{ArchivedSlot, TypedQueue, TypedQueueBuilder, TypedQueueReceiver, TypedQueueSender};

mod slots;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::ser::{Positional, Writer};
use rkyv::{Archive, Archived, Deserialize, Serialize};

use super::{
    Broken, ReadGuard, Receiver, RecvError, RecvTimeoutError, Ring, RingBuilder, SendError, SendTimeoutError, Sender,
    Stats, TryRecvError, TrySendError, WriteGuard, init_config,
};
use crate::ring::JoinRingError;
use crate::segment::{Fingerprint, OpenMode, SegmentError};
use crate::sync::SpinPolicy;

/// Positions are counted from a record's offset modulo this (a divisor of every page size): every
/// alignment up to it holds at the record's real address.
const ALIGN_SPAN: u64 = 4096;

/// Extra room reserved over a measured or last-sent size: the padding a value needs can differ by
/// up to its largest alignment (16 for every rkyv primitive) when the record lands at another
/// offset. Kept small so that small values stay within the byte ring's staged reservations.
const SLACK: usize = 16;

/// The first reservation's guess for what a value holds out of line (strings, vectors).
const FIRST_GUESS: usize = 64;

/// The error type rkyv reports with here (a boxed error with a message).
pub type RkyvError = rancor::Error;

/// A value that can cross a [`TypedRing`]: rkyv can archive it and validate its archive.
///
/// Implemented for every type that derives `rkyv::Archive` and `rkyv::Serialize` (and whose
/// archived form is checkable, which derive gives by default). Receiving an owned value also needs
/// `rkyv::Deserialize`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross a typed ring",
    label = "not archivable",
    note = "derive `rkyv::Archive` and `rkyv::Serialize` on `{Self}` (and `rkyv::Deserialize` to receive owned values); \
            with ringpool's re-export add `#[rkyv(crate = ringpool::ring::archive::rkyv)]`"
)]
pub trait Archivable:
    Archive<Archived: for<'v> CheckBytes<HighValidator<'v, RkyvError>>>
    + for<'a, 'b> Serialize<HighSerializer<ArchiveWriter<'b>, ArenaHandle<'a>, RkyvError>>
{
}

impl<T> Archivable for T where
    T: Archive<Archived: for<'v> CheckBytes<HighValidator<'v, RkyvError>>>
        + for<'a, 'b> Serialize<HighSerializer<ArchiveWriter<'b>, ArenaHandle<'a>, RkyvError>>
{
}

// ----- the writer -------------------------------------------------------------------------------

/// The rkyv [`Writer`] typed rings serialize with: straight into the room reserved in the ring, or
/// (to measure a value) nowhere. Users never make one; it is public because it appears in
/// [`Archivable`]'s bounds.
#[derive(Debug)]
pub struct ArchiveWriter<'b> {
    out: &'b mut [u8],
    len: usize,
    /// Position of the first byte: the record's offset modulo [`ALIGN_SPAN`].
    base: usize,
    measure_only: bool,
    /// Set when a write ran past `out` (the writer itself is lost with rkyv's error).
    overflowed: &'b Cell<bool>,
}

/// Serialization ran past the reserved room.
#[derive(Debug)]
struct Overflow {
    room: usize,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the archive is larger than the {} bytes reserved", self.room)
    }
}

impl std::error::Error for Overflow {}

impl Positional for ArchiveWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.base + self.len
    }
}

impl<E: rancor::Source> Writer<E> for ArchiveWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.len.checked_add(bytes.len());
        if self.measure_only {
            return match end {
                Some(end) => {
                    self.len = end;
                    Ok(())
                }
                None => Err(E::new(Overflow { room: usize::MAX })),
            };
        }
        match end.and_then(|end| Some((end, self.out.get_mut(self.len..end)?))) {
            Some((end, dst)) => {
                dst.copy_from_slice(bytes);
                self.len = end;
                Ok(())
            }
            None => {
                self.overflowed.set(true);
                Err(E::new(Overflow { room: self.out.len() }))
            }
        }
    }
}

/// A handle's own rkyv arena (scratch space for serializing), taken out while a send serializes.
struct Scratch(Cell<Option<Arena>>);

impl Scratch {
    fn new() -> Scratch {
        Scratch(Cell::new(Some(Arena::new())))
    }

    /// Runs `f` with the handle's arena, or rkyv's thread-local one if the handle's is out (a
    /// `Serialize` that sends on this very handle, or a send that panicked).
    fn with<R>(&self, f: impl FnOnce(&mut Arena) -> R) -> R {
        match self.0.take() {
            Some(mut arena) => {
                let r = f(&mut arena);
                self.0.set(Some(arena));
                r
            }
            None => rkyv::util::with_arena(f),
        }
    }
}

/// How serializing into reserved room ended.
pub(crate) enum Written {
    /// This many bytes.
    Done(usize),
    /// The room was too small.
    Overflow,
    /// The value's own `Serialize` failed.
    Failed(String),
}

/// Serializes `value` into `out`, whose first byte lies at position `base`, with scratch space
/// from `arena`.
pub(crate) fn write_into<T: Archivable>(value: &T, out: &mut [u8], base: usize, arena: &mut Arena) -> Written {
    let overflowed = Cell::new(false);
    let w = ArchiveWriter { out, len: 0, base, measure_only: false, overflowed: &overflowed };
    match rkyv::api::high::to_bytes_in_with_alloc::<_, _, RkyvError>(value, w, arena.acquire()) {
        Ok(w) => Written::Done(w.len),
        Err(_) if overflowed.get() => Written::Overflow,
        Err(e) => Written::Failed(e.to_string()),
    }
}

/// The size of `value`'s archive when its first byte lies at position `base` (writes nothing).
pub(crate) fn measure<T: Archivable>(value: &T, base: usize, arena: &mut Arena) -> Result<usize, String> {
    let overflowed = Cell::new(false);
    let w = ArchiveWriter { out: &mut [], len: 0, base, measure_only: true, overflowed: &overflowed };
    match rkyv::api::high::to_bytes_in_with_alloc::<_, _, RkyvError>(value, w, arena.acquire()) {
        Ok(w) => Ok(w.len),
        Err(e) => Err(e.to_string()),
    }
}

/// `value`'s archive in a 16-aligned buffer of its own, at position 0; `needed` is its size, as
/// [`measure`] answered (callers measure first, to check it against a limit before allocating).
pub(crate) fn archive_measured<T: Archivable>(
    value: &T,
    needed: usize,
    arena: &mut Arena,
) -> Result<rkyv::util::AlignedVec<16>, String> {
    let mut bytes = rkyv::util::AlignedVec::<16>::with_capacity(needed);
    bytes.resize(needed, 0);
    match write_into(value, &mut bytes, 0, arena) {
        Written::Done(n) => {
            bytes.resize(n, 0);
            Ok(bytes)
        }
        Written::Overflow => Err("the value archived larger than measured".to_owned()),
        Written::Failed(reason) => Err(reason),
    }
}

// ----- errors -----------------------------------------------------------------------------------

/// Why a typed send failed. The value comes back inside.
///
/// `send` answers `Disconnected`, `TooLarge`, `Serialize` or `Broken`; `try_send` also `Full`;
/// `send_timeout` also `Timeout`.
#[non_exhaustive]
pub enum TypedSendError<T> {
    /// The ring has no room right now (`try_send`).
    Full(T),
    /// The timeout passed before there was room (`send_timeout`).
    Timeout(T),
    /// The timeout passed while another live handle held the send lock (`send_timeout`): see
    /// [`SendTimeoutError::LockTimeout`].
    LockTimeout {
        /// The value, not sent.
        value: T,
        /// The process that held the send lock, if known.
        pid: Option<u32>,
    },
    /// Every receiver is gone (dropped, closed or dead).
    Disconnected(T),
    /// The ring is corrupted or poisoned.
    Broken(T, Broken),
    /// The value's archive is larger than the ring's largest message.
    TooLarge {
        /// The value, not sent.
        value: T,
        /// Bytes its archive takes.
        size: usize,
        /// The largest message the ring takes ([`Ring::max_message_len`]).
        max: usize,
    },
    /// The value's `Serialize` implementation failed (rkyv's reason).
    Serialize {
        /// The value, not sent.
        value: T,
        /// What rkyv said.
        reason: String,
    },
}

impl<T> TypedSendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TypedSendError::Full(v)
            | TypedSendError::Timeout(v)
            | TypedSendError::LockTimeout { value: v, .. }
            | TypedSendError::Disconnected(v)
            | TypedSendError::Broken(v, _)
            | TypedSendError::TooLarge { value: v, .. }
            | TypedSendError::Serialize { value: v, .. } => v,
        }
    }
}

impl<T> fmt::Display for TypedSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedSendError::Full(_) => f.write_str("the ring is full"),
            TypedSendError::Timeout(_) => f.write_str("timed out waiting for room in the ring"),
            TypedSendError::LockTimeout { pid, .. } => super::error::lock_timeout_text(f, "send", *pid),
            TypedSendError::Disconnected(_) => f.write_str("every receiver is gone"),
            TypedSendError::Broken(_, b) => write!(f, "{b}"),
            TypedSendError::TooLarge { size, max, .. } => write!(
                f,
                "the value archives to {size} bytes, more than the ring's largest message ({max} bytes): \
                 make the ring larger (capacity above {size} + 16) or the value smaller"
            ),
            TypedSendError::Serialize { reason, .. } => write!(f, "the value could not be archived: {reason}"),
        }
    }
}

impl<T> fmt::Debug for TypedSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedSendError::Full(_) => f.write_str("TypedSendError::Full(..)"),
            TypedSendError::Timeout(_) => f.write_str("TypedSendError::Timeout(..)"),
            TypedSendError::LockTimeout { pid, .. } => write!(f, "TypedSendError::LockTimeout {{ pid: {pid:?}, .. }}"),
            TypedSendError::Disconnected(_) => f.write_str("TypedSendError::Disconnected(..)"),
            TypedSendError::Broken(_, b) => write!(f, "TypedSendError::Broken(.., {b:?})"),
            TypedSendError::TooLarge { size, max, .. } => {
                write!(f, "TypedSendError::TooLarge {{ size: {size}, max: {max}, .. }}")
            }
            TypedSendError::Serialize { reason, .. } => {
                write!(f, "TypedSendError::Serialize {{ reason: {reason:?}, .. }}")
            }
        }
    }
}

impl<T> std::error::Error for TypedSendError<T> {}

/// Why a typed receive failed.
///
/// `recv` answers `Disconnected`, `Invalid`, `Deserialize` or `Broken`; `try_recv` also `Empty`;
/// `recv_timeout` also `Timeout`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TypedRecvError {
    /// Nothing to receive right now (`try_` forms).
    #[error("the ring is empty")]
    Empty,
    /// The timeout passed with nothing to receive (`_timeout` forms).
    #[error("timed out waiting for a message")]
    Timeout,
    /// The timeout passed while another live handle held the receive lock (`_timeout` forms):
    /// see [`RecvTimeoutError::LockTimeout`].
    #[error("{}", RecvTimeoutError::LockTimeout { pid: *.pid })]
    LockTimeout {
        /// The process that held the receive lock, if known.
        pid: Option<u32>,
    },
    /// The ring is empty and every sender is gone.
    #[error("the ring is empty and every sender is gone")]
    Disconnected,
    /// The ring is corrupted or poisoned.
    #[error(transparent)]
    Broken(#[from] Broken),
    /// A message is not a valid archive of the ring's type (a peer wrote garbage, or archives
    /// another type the same size). It was removed from the ring; the next receive goes on.
    #[error("a {len}-byte message is not a valid archive of the ring's type ({reason}); it was dropped")]
    Invalid {
        /// The message's length.
        len: usize,
        /// What validation found (rkyv's bytecheck).
        reason: String,
    },
    /// A valid archive whose `Deserialize` failed (rkyv's reason). The message was removed.
    #[error("a message could not be deserialized: {0}")]
    Deserialize(String),
}

impl From<RecvError> for TypedRecvError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Broken(b) => TypedRecvError::Broken(b),
            _ => TypedRecvError::Disconnected,
        }
    }
}

impl From<TryRecvError> for TypedRecvError {
    fn from(e: TryRecvError) -> Self {
        match e {
            TryRecvError::Empty => TypedRecvError::Empty,
            TryRecvError::Broken(b) => TypedRecvError::Broken(b),
            _ => TypedRecvError::Disconnected,
        }
    }
}

impl From<RecvTimeoutError> for TypedRecvError {
    fn from(e: RecvTimeoutError) -> Self {
        match e {
            RecvTimeoutError::Timeout => TypedRecvError::Timeout,
            RecvTimeoutError::LockTimeout { pid } => TypedRecvError::LockTimeout { pid },
            RecvTimeoutError::Broken(b) => TypedRecvError::Broken(b),
            _ => TypedRecvError::Disconnected,
        }
    }
}

// ----- the builder and the ring -----------------------------------------------------------------

/// How to create or open a [`TypedRing`]: a [`RingBuilder`] plus the type's fingerprint.
#[derive(Debug)]
pub struct TypedRingBuilder<T: Archivable> {
    inner: RingBuilder,
    tag: Option<String>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Archivable> Clone for TypedRingBuilder<T> {
    fn clone(&self) -> Self {
        TypedRingBuilder { inner: self.inner.clone(), tag: self.tag.clone(), _t: PhantomData }
    }
}

impl<T: Archivable> Default for TypedRingBuilder<T> {
    fn default() -> Self {
        TypedRingBuilder { inner: RingBuilder::new(), tag: None, _t: PhantomData }
    }
}

impl<T: Archivable> TypedRingBuilder<T> {
    /// Bytes of message storage (see [`RingBuilder::capacity`]); the largest message is 16 less.
    /// Default: 1 MiB.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.inner = self.inner.capacity(bytes);
        self
    }

    /// How long this process's handles spin before parking.
    pub fn spin(mut self, spin: SpinPolicy) -> Self {
        self.inner = self.inner.spin(spin);
        self
    }

    /// How many processes may hold handles at once (at most 256, the default). Creation only.
    pub fn max_members(mut self, n: usize) -> Self {
        self.inner = self.inner.max_members(n);
        self
    }

    /// Permission bits of a created named ring. Default `0o600`.
    pub fn permissions(mut self, mode: u32) -> Self {
        self.inner = self.inner.permissions(mode);
        self
    }

    /// How long an opener waits for a creator that is still initializing. Default 2 s.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.open_timeout(timeout);
        self
    }

    /// Names the type explicitly in the segment's fingerprint, instead of
    /// `std::any::type_name::<T>()`: for programs built separately that must agree on the type.
    pub fn type_tag(mut self, tag: &str) -> Self {
        self.tag = Some(tag.to_owned());
        self
    }

    /// Creates the named ring `/dev/shm/<name>`; fails if the name is taken.
    pub fn create(&self, name: &str) -> Result<TypedRing<T>, SegmentError> {
        self.named(name, OpenMode::CreateNew)
    }

    /// Opens the named ring; fails if there is none, or if it carries another type.
    pub fn open(&self, name: &str) -> Result<TypedRing<T>, SegmentError> {
        self.named(name, OpenMode::OpenExisting)
    }

    /// Opens the named ring, creating it if needed.
    pub fn open_or_create(&self, name: &str) -> Result<TypedRing<T>, SegmentError> {
        self.named(name, OpenMode::OpenOrCreate)
    }

    /// Removes any ring of that name, then creates it.
    pub fn purge_and_create(&self, name: &str) -> Result<TypedRing<T>, SegmentError> {
        self.named(name, OpenMode::PurgeAndCreate)
    }

    /// Creates or opens a ring by name, per `mode`.
    pub fn named(&self, name: &str, mode: OpenMode) -> Result<TypedRing<T>, SegmentError> {
        let ring =
            self.inner.make_typed(self.fingerprint(), |b, cfg| b.mode(mode).named(name, |u| init_config(u, cfg)))?;
        Ok(TypedRing::wrap(ring))
    }

    /// Creates a ring in anonymous memory (`memfd`), shared with forked children.
    pub fn anonymous(&self) -> Result<TypedRing<T>, SegmentError> {
        let ring = self.inner.make_typed(self.fingerprint(), |b, cfg| b.anonymous(|u| init_config(u, cfg)))?;
        Ok(TypedRing::wrap(ring))
    }

    /// Creates or opens a ring in a file, per `mode`.
    pub fn file(&self, path: impl AsRef<Path>, mode: OpenMode) -> Result<TypedRing<T>, SegmentError> {
        let path = path.as_ref();
        let ring =
            self.inner.make_typed(self.fingerprint(), |b, cfg| b.mode(mode).file(path, |u| init_config(u, cfg)))?;
        Ok(TypedRing::wrap(ring))
    }

    /// Opens a ring from a descriptor of its segment.
    pub fn from_fd(&self, fd: OwnedFd) -> Result<TypedRing<T>, SegmentError> {
        let ring = self.inner.make_typed(self.fingerprint(), |b, _| b.from_fd(fd))?;
        Ok(TypedRing::wrap(ring))
    }

    /// `Archived<T>`'s size and alignment, and a hash of rkyv's format and `T`'s name or tag.
    fn fingerprint(&self) -> Fingerprint {
        let name = self.tag.as_deref().unwrap_or(std::any::type_name::<T>());
        Fingerprint::tagged::<Archived<T>>(&format!("ringpool::archive/{}:{name}", rkyv_format()))
    }
}

/// rkyv's archive format in this build (its features are unified across a build): pointer width,
/// endianness, and whether archived primitives are aligned.
fn rkyv_format() -> String {
    let endian = match rkyv::to_bytes::<RkyvError>(&1u32) {
        Ok(b) if b.first() == Some(&1) => "le",
        Ok(_) => "be",
        Err(_) => "unknown",
    };
    format!(
        "rkyv-0.8/ptr{}/{endian}/align{}",
        std::mem::size_of::<Archived<usize>>() * 8,
        std::mem::align_of::<Archived<u32>>()
    )
}

/// A ring of archived `T` values between processes: a byte [`Ring`] whose messages are rkyv
/// archives, written in place and validated on receipt. See the [module docs](self).
#[derive(Debug)]
pub struct TypedRing<T: Archivable> {
    ring: Ring,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Archivable> Clone for TypedRing<T> {
    fn clone(&self) -> Self {
        TypedRing { ring: self.ring.clone(), _t: PhantomData }
    }
}

impl<T: Archivable> TypedRing<T> {
    /// A builder with the defaults.
    pub fn builder() -> TypedRingBuilder<T> {
        TypedRingBuilder::default()
    }

    fn wrap(ring: Ring) -> TypedRing<T> {
        TypedRing { ring, _t: PhantomData }
    }

    /// A new sending handle.
    pub fn sender(&self) -> Result<TypedSender<T>, JoinRingError> {
        Ok(TypedSender::new(self.ring.sender()?))
    }

    /// A new receiving handle.
    pub fn receiver(&self) -> Result<TypedReceiver<T>, JoinRingError> {
        Ok(TypedReceiver { inner: self.ring.receiver()?, _t: PhantomData })
    }

    /// The byte ring underneath. Bytes sent through it raw are validated on receipt like any
    /// other message (for tests, and for peers that archive by themselves).
    pub fn as_bytes(&self) -> &Ring {
        &self.ring
    }

    /// The largest archive the ring takes, in bytes (`capacity - 16`).
    pub fn max_message_len(&self) -> usize {
        self.ring.max_message_len()
    }

    /// Messages in the ring right now (a snapshot).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the ring holds no message right now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Counters since the ring was created.
    pub fn stats(&self) -> Stats {
        self.ring.stats()
    }

    /// The underlying segment's descriptor (for passing to a re-executed child).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.fd()
    }
}

// ----- sending ----------------------------------------------------------------------------------

/// The sending side of a [`TypedRing`]. Each counts as one sender of the ring.
///
/// A handle keeps its own scratch arena for rkyv (measured: the thread-local one rkyv's
/// `to_bytes_in` takes and shrinks on every call costs about 70 ns a message more), which makes it
/// `Send` but not `Sync`: clone it for another thread.
pub struct TypedSender<T: Archivable> {
    inner: Sender,
    max: usize,
    /// Bytes to reserve first: learnt from the sizes sent (local memory, not shared).
    hint: AtomicUsize,
    /// rkyv's scratch space.
    scratch: Scratch,
    _t: PhantomData<fn(T)>,
}

impl<T: Archivable> fmt::Debug for TypedSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSender").field("inner", &self.inner).field("max", &self.max).finish_non_exhaustive()
    }
}

impl<T: Archivable> Clone for TypedSender<T> {
    fn clone(&self) -> Self {
        TypedSender {
            inner: self.inner.clone(),
            max: self.max,
            hint: AtomicUsize::new(self.hint.load(Ordering::Relaxed)),
            scratch: Scratch::new(),
            _t: PhantomData,
        }
    }
}

/// How long a send may wait for room.
#[derive(Clone, Copy)]
enum Until {
    Forever,
    Now,
    Deadline(Instant),
}

impl<T: Archivable> TypedSender<T> {
    fn new(inner: Sender) -> TypedSender<T> {
        let max = inner.ring().max_message_len();
        let first = std::mem::size_of::<Archived<T>>().saturating_add(FIRST_GUESS).min(max);
        TypedSender { inner, max, hint: AtomicUsize::new(first), scratch: Scratch::new(), _t: PhantomData }
    }

    /// Archives `value` straight into the ring, waiting for room. Fails, handing the value back,
    /// if every receiver is gone, if its archive is larger than the ring's largest message, if its
    /// `Serialize` fails, or if the ring is broken.
    pub fn send(&self, value: T) -> Result<(), TypedSendError<T>> {
        self.send_until(&value, Until::Forever).map_err(|f| f.with(value))
    }

    /// [`send`](Self::send) if there is room now.
    pub fn try_send(&self, value: T) -> Result<(), TypedSendError<T>> {
        self.send_until(&value, Until::Now).map_err(|f| f.with(value))
    }

    /// [`send`](Self::send), waiting at most `timeout` for room.
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), TypedSendError<T>> {
        self.send_until(&value, until(timeout)).map_err(|f| f.with(value))
    }

    /// Archives a borrowed value (the caller keeps it: no clone to send the same value twice, or
    /// to reuse its allocations). The error holds `()` where [`send`](Self::send)'s holds the value.
    pub fn send_ref(&self, value: &T) -> Result<(), TypedSendError<()>> {
        self.send_until(value, Until::Forever).map_err(|f| f.with(()))
    }

    /// [`send_ref`](Self::send_ref) if there is room now.
    pub fn try_send_ref(&self, value: &T) -> Result<(), TypedSendError<()>> {
        self.send_until(value, Until::Now).map_err(|f| f.with(()))
    }

    /// [`send_ref`](Self::send_ref), waiting at most `timeout` for room.
    pub fn send_ref_timeout(&self, value: &T, timeout: Duration) -> Result<(), TypedSendError<()>> {
        self.send_until(value, until(timeout)).map_err(|f| f.with(()))
    }

    /// Sets how many bytes the next send reserves first (clamped to the largest message). A
    /// reservation too small costs a second pass; one too large only holds room until commit.
    /// The sender adjusts it by itself from the sizes it sends.
    pub fn set_size_hint(&self, bytes: usize) {
        self.hint.store(bytes.min(self.max), Ordering::Relaxed);
    }

    /// Changes how long this handle spins before parking, for its later waits (a wait under way
    /// keeps the policy it began with). Only this handle: its clones made earlier, and other
    /// handles, keep theirs; a clone made later starts with this one's. Takes `&self`, so a
    /// handle shared between threads can be tuned while in use.
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.inner.set_spin(spin);
    }

    /// The byte sender underneath.
    pub fn as_bytes(&self) -> &Sender {
        &self.inner
    }

    /// Leaves the ring (same as dropping the handle).
    pub fn close(self) {}

    fn reserve(&self, len: usize, until: Until) -> Result<WriteGuard<'_>, Fail> {
        match until {
            Until::Forever => self.inner.reserve(len).map_err(|e| match e {
                SendError::Broken(_, b) => Fail::Broken(b),
                _ => Fail::Disconnected,
            }),
            Until::Now => self.inner.try_reserve(len).map_err(|e| match e {
                TrySendError::Full(_) => Fail::Full,
                TrySendError::Broken(_, b) => Fail::Broken(b),
                _ => Fail::Disconnected,
            }),
            Until::Deadline(d) => {
                let left = d.saturating_duration_since(Instant::now());
                self.inner.reserve_timeout(len, left).map_err(|e| match e {
                    SendTimeoutError::Timeout(_) => Fail::Timeout,
                    SendTimeoutError::LockTimeout { pid, .. } => Fail::LockTimeout(pid),
                    SendTimeoutError::Broken(_, b) => Fail::Broken(b),
                    _ => Fail::Disconnected,
                })
            }
        }
    }

    fn send_until(&self, value: &T, until: Until) -> Result<(), Fail> {
        let mut want = self.hint.load(Ordering::Relaxed).min(self.max);
        // Each pass either publishes or learns the exact size at the offset it got; a second
        // overflow needs the record to land at an offset whose padding outgrows SLACK.
        for _ in 0..8 {
            let mut guard = self.reserve(want, until)?;
            let base = (guard.ring_index() % ALIGN_SPAN) as usize;
            match self.scratch.with(|arena| write_into(value, &mut guard, base, arena)) {
                Written::Done(n) => {
                    guard.commit_len(n);
                    self.learn(n);
                    return Ok(());
                }
                Written::Failed(reason) => return Err(Fail::Serialize(reason)),
                Written::Overflow => {
                    // Nothing is published: the guard drops uncommitted.
                    drop(guard);
                    let size = self.scratch.with(|arena| measure(value, base, arena)).map_err(Fail::Serialize)?;
                    if size > self.max {
                        return Err(Fail::TooLarge { size, max: self.max });
                    }
                    want = size.saturating_add(SLACK).min(self.max);
                }
            }
        }
        Err(Fail::Serialize("the archive's size kept changing with its offset in the ring".to_owned()))
    }

    /// Next first reservation: the size just sent plus slack, or the last hint decayed by an
    /// eighth, whichever is larger (a stream of small values after one big one stops reserving
    /// big within a few dozen sends).
    fn learn(&self, n: usize) {
        let old = self.hint.load(Ordering::Relaxed);
        let next = n.saturating_add(SLACK).max(old - old / 8).min(self.max);
        if next != old {
            self.hint.store(next, Ordering::Relaxed);
        }
    }
}

fn until(timeout: Duration) -> Until {
    Instant::now().checked_add(timeout).map_or(Until::Forever, Until::Deadline)
}

/// Internal outcome of a failed send, without the value.
enum Fail {
    Full,
    Timeout,
    LockTimeout(Option<u32>),
    Disconnected,
    Broken(Broken),
    TooLarge { size: usize, max: usize },
    Serialize(String),
}

impl Fail {
    fn with<T>(self, value: T) -> TypedSendError<T> {
        match self {
            Fail::Full => TypedSendError::Full(value),
            Fail::Timeout => TypedSendError::Timeout(value),
            Fail::LockTimeout(pid) => TypedSendError::LockTimeout { value, pid },
            Fail::Disconnected => TypedSendError::Disconnected(value),
            Fail::Broken(b) => TypedSendError::Broken(value, b),
            Fail::TooLarge { size, max } => TypedSendError::TooLarge { value, size, max },
            Fail::Serialize(reason) => TypedSendError::Serialize { value, reason },
        }
    }
}

// ----- receiving --------------------------------------------------------------------------------

/// The receiving side of a [`TypedRing`]. Each counts as one receiver of the ring.
#[derive(Debug)]
pub struct TypedReceiver<T: Archivable> {
    inner: Receiver,
    _t: PhantomData<fn() -> T>,
}

impl<T: Archivable> Clone for TypedReceiver<T> {
    fn clone(&self) -> Self {
        TypedReceiver { inner: self.inner.clone(), _t: PhantomData }
    }
}

impl<T: Archivable> TypedReceiver<T> {
    /// Waits for a message and lends it in place, validated: the guard derefs to `Archived<T>`.
    /// The message leaves the ring when the guard drops; other receivers wait meanwhile. A message
    /// that fails validation is removed and answered as [`TypedRecvError::Invalid`].
    pub fn recv_archived(&self) -> Result<ArchivedGuard<'_, T>, TypedRecvError> {
        ArchivedGuard::validate(self.inner.recv_in_place()?)
    }

    /// [`recv_archived`](Self::recv_archived) if a message is there now.
    pub fn try_recv_archived(&self) -> Result<ArchivedGuard<'_, T>, TypedRecvError> {
        ArchivedGuard::validate(self.inner.try_recv_in_place()?)
    }

    /// [`recv_archived`](Self::recv_archived), waiting at most `timeout`.
    pub fn recv_archived_timeout(&self, timeout: Duration) -> Result<ArchivedGuard<'_, T>, TypedRecvError> {
        ArchivedGuard::validate(self.inner.recv_in_place_timeout(timeout)?)
    }

    /// Waits for a message and deserializes it into an owned `T` (validated first, read in
    /// place, then removed).
    pub fn recv(&self) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        self.recv_archived()?.deserialize()
    }

    /// [`recv`](Self::recv) if a message is there now.
    pub fn try_recv(&self) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        self.try_recv_archived()?.deserialize()
    }

    /// [`recv`](Self::recv), waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        self.recv_archived_timeout(timeout)?.deserialize()
    }

    /// Changes how long this handle spins before parking, for its later waits (a wait under way
    /// keeps the policy it began with). Only this handle: its clones made earlier, and other
    /// handles, keep theirs; a clone made later starts with this one's. Takes `&self`, so a
    /// handle shared between threads can be tuned while in use.
    pub fn set_spin(&self, spin: SpinPolicy) {
        self.inner.set_spin(spin);
    }

    /// The byte receiver underneath.
    pub fn as_bytes(&self) -> &Receiver {
        &self.inner
    }

    /// Leaves the ring (same as dropping the handle).
    pub fn close(self) {}
}

/// A validated archived value, lent where it lies in the ring. Derefs to `Archived<T>`; the
/// message leaves the ring when the guard drops. See [`TypedReceiver::recv_archived`].
pub struct ArchivedGuard<'a, T: Archive> {
    guard: ReadGuard<'a>,
    /// The root of the archive, inside `guard`'s bytes, validated by `rkyv::access`.
    root: NonNull<Archived<T>>,
}

impl<'a, T: Archivable> ArchivedGuard<'a, T> {
    /// Validates the record `guard` lends (bytecheck: every pointer, length, tag and alignment
    /// inside its bounds); on failure the record is released (removed) and the reason answered.
    fn validate(guard: ReadGuard<'a>) -> Result<Self, TypedRecvError> {
        let root = match rkyv::access::<Archived<T>, RkyvError>(&guard) {
            Ok(root) => NonNull::from(root),
            Err(e) => {
                let len = guard.len();
                drop(guard);
                return Err(TypedRecvError::Invalid { len, reason: e.to_string() });
            }
        };
        Ok(ArchivedGuard { guard, root })
    }

    /// Deserializes an owned `T` from the archive, then releases the message.
    pub fn deserialize(self) -> Result<T, TypedRecvError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<RkyvError>>,
    {
        rkyv::deserialize::<T, RkyvError>(&*self).map_err(|e| TypedRecvError::Deserialize(e.to_string()))
    }

    /// The message's bytes (the archive).
    pub fn bytes(&self) -> &[u8] {
        &self.guard
    }
}

impl<T: Archive> std::ops::Deref for ArchivedGuard<'_, T> {
    type Target = Archived<T>;
    fn deref(&self) -> &Archived<T> {
        // SAFETY: `root` was returned by `rkyv::access` (bytecheck validation: every relative
        // pointer, length, tag and alignment of the archive checked to lie inside the record) over
        // the bytes `self.guard` lends. Those bytes lie in the ring's mapping, which the guard keeps
        // alive (it borrows the receiver, which holds the mapping's `Arc`), at a fixed address, and
        // the guard holds the receive lock: no ringpool process writes a published record before
        // the head moves past it, which happens only when the guard drops (SAFETY.md, ground rule
        // 2). The reference is tied to `&self`, so it cannot outlive the guard.
        unsafe { self.root.as_ref() }
    }
}

impl<T: Archive> fmt::Debug for ArchivedGuard<'_, T>
where
    Archived<T>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArchivedGuard").field(&**self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
    #[rkyv(crate = rkyv)]
    struct Wide {
        a: u128,
        s: String,
        v: Vec<u128>,
    }

    #[test]
    fn positions_from_any_8_aligned_offset_archive_16_aligned_values_for_their_real_address() {
        let value = Wide { a: 7, s: "hello".into(), v: vec![1, 2, 3] };
        let mut buf = rkyv::util::AlignedVec::<4096>::with_capacity(4096 + 512);
        buf.resize(4096 + 512, 0);
        for base in (0..64).step_by(8) {
            let out = &mut buf[base..base + 512];
            let mut arena = Arena::new();
            let n = match write_into(&value, out, base, &mut arena) {
                Written::Done(n) => n,
                _ => panic!("did not fit"),
            };
            assert_eq!(measure(&value, base, &mut arena).unwrap(), n);
            let got = rkyv::access::<ArchivedWide, RkyvError>(&buf[base..base + n])
                .unwrap_or_else(|e| panic!("offset {base}: {e}"));
            assert_eq!(got.s, "hello");
            assert_eq!(got.v.len(), 3);
            // Written from position 0 at an 8-but-not-16-aligned address, it is refused.
            if base % 16 == 8 {
                let _ = write_into(&value, &mut buf[base..base + 512], 0, &mut arena);
                assert!(rkyv::access::<ArchivedWide, RkyvError>(&buf[base..base + n]).is_err());
            }
        }
    }

    #[test]
    fn a_short_room_overflows_and_says_so() {
        let value = Wide { a: 1, s: "x".repeat(100), v: vec![] };
        let mut small = [0u8; 32];
        assert!(matches!(write_into(&value, &mut small, 0, &mut Arena::new()), Written::Overflow));
    }
}
