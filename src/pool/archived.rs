//! Archived tasks: any [rkyv](https://docs.rs/rkyv/0.8)-archivable input and output (strings,
//! vectors, enums, `Option`, `Result`, tuples, structs of them), a context shared by every task of
//! a call, and an initializer with arguments. Behind the default feature `archive`.
//!
//! A task reads its input **in place** in the slot, as `&Archived<T>`, after the worker validated
//! it (`rkyv::access`); its output is archived by the worker straight into the same slot, and the
//! parent validates it before it deserializes an owned `R`. The task's code crosses to the worker
//! as for `Pod` tasks: a monomorphized trampoline's offset in the executable.
//!
//! See the [module docs](crate::pool#archived-tasks) for the layout of a slot, what happens when values
//! do not fit, and examples.

use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use rkyv::api::high::HighDeserializer;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Archived, Deserialize};

use super::engine::{ArchSpec, Chunk, Dispatch, Engine, Sink};
use super::slots::{ARCHIVE_ALIGN, KIND_ARCHIVED, TABLE_ENTRY};
use super::spill::{CTX_RECORD, CtxKey, Mapped, RECORD, SPILLED, parse_ctx_record, parse_record};
use super::task::{
    ChunkCtx, ITEM_BAD_OUTPUT, ITEM_INVALID_INPUT, ITEM_OK, ITEM_OVERFLOW, ITEM_PANICKED, ITEM_SKIPPED, ITEM_SPILLED,
    conjure,
};
use super::{
    Dispatcher, Future, MapError, OrderedSink, Pool, PoolBuilder, PoolError, Stream, TaskError, TaskFailures,
    UnorderedSink,
};
use crate::process::code::{CodeMap, CodeOffset};
use crate::ring::archive::{Archivable, RkyvError, Written, archive_measured, measure, write_into};

// ----- what a task is ---------------------------------------------------------------------------

/// A task of [`Pool::map_archived`] and its family: a function item or a closure that captures
/// nothing, `Fn(&Archived<T>) -> R`. It reads its input in place, validated.
///
/// ```
/// use ringpool::ring::archive::rkyv::string::ArchivedString;
///
/// fn shout(s: &ArchivedString) -> String {
///     s.as_str().to_uppercase()
/// }
///
/// let pool = ringpool::Pool::new(2)?;
/// assert_eq!(pool.map_archived(shout, ["a".to_string(), "b".to_string()])?, ["A", "B"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an archived pool task taking `&Archived<{T}>` and returning `{R}`",
    label = "expected `fn(&Archived<{T}>) -> {R}`, a function item or a closure that captures nothing",
    note = "an archived task reads its input in place: take `&ArchivedString` for a `String`, `&ArchivedVec<..>` \
            for a `Vec`, `&ArchivedFoo` for a `#[derive(rkyv::Archive)] struct Foo`"
)]
pub trait ArchivedTask<T: Archive, R>: Copy + Send + Sync + 'static {
    /// Runs the task on one archived input.
    fn call(&self, input: &Archived<T>) -> R;
}

impl<F, T: Archive, R> ArchivedTask<T, R> for F
where
    F: Fn(&Archived<T>) -> R + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn call(&self, input: &Archived<T>) -> R {
        self(input)
    }
}

/// A task of [`Pool::map_with`] and its family: `Fn(&Archived<C>, &Archived<T>) -> R`, zero-sized,
/// reading the call's context and its input in place.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pool task taking a context `&Archived<{C}>` and an input `&Archived<{T}>`, returning `{R}`",
    label = "expected `fn(&Archived<{C}>, &Archived<{T}>) -> {R}`, a function item or a closure that captures nothing"
)]
pub trait ContextTask<C: Archive, T: Archive, R>: Copy + Send + Sync + 'static {
    /// Runs the task on the context and one input.
    fn call(&self, ctx: &Archived<C>, input: &Archived<T>) -> R;
}

impl<F, C: Archive, T: Archive, R> ContextTask<C, T, R> for F
where
    F: Fn(&Archived<C>, &Archived<T>) -> R + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn call(&self, ctx: &Archived<C>, input: &Archived<T>) -> R {
        self(ctx, input)
    }
}

/// A task of [`Pool::starmap`]: `Fn(A, B) -> R` over items `(A, B)`, or `Fn(A, B, C) -> R` over
/// `(A, B, C)`, zero-sized; the worker deserializes the tuple and calls it by value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a starmap task over `{Args}` returning `{R}`",
    label = "expected `fn(A, B) -> {R}` for items `(A, B)` (or `fn(A, B, C)` for `(A, B, C)`) that captures nothing"
)]
pub trait StarTask<Args, R>: Copy + Send + Sync + 'static {
    /// Runs the task on one item's fields.
    fn call(&self, args: Args) -> R;
}

impl<F, A, B, R> StarTask<(A, B), R> for F
where
    F: Fn(A, B) -> R + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn call(&self, (a, b): (A, B)) -> R {
        self(a, b)
    }
}

impl<F, A, B, C, R> StarTask<(A, B, C), R> for F
where
    F: Fn(A, B, C) -> R + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn call(&self, (a, b, c): (A, B, C)) -> R {
        self(a, b, c)
    }
}

/// An initializer of [`PoolBuilder::initializer_with`]: `Fn(&Archived<A>)`, zero-sized, run by
/// every worker when it starts, on the arguments read in place.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pool initializer taking `&Archived<{A}>`",
    label = "expected `fn(&Archived<{A}>)`, a function item or a closure that captures nothing"
)]
pub trait InitTask<A: Archive>: Copy + Send + Sync + 'static {
    /// Runs the initializer on its archived arguments.
    fn call(&self, args: &Archived<A>);
}

impl<F, A: Archive> InitTask<A> for F
where
    F: Fn(&Archived<A>) + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn call(&self, args: &Archived<A>) {
        self(args)
    }
}

/// How a worker runs one archived item: the task, its context's type, its input and output.
pub(crate) trait Body: 'static {
    type Ctx: Archivable;
    type In: Archivable;
    type Out: Archivable;
    /// The task reads a context.
    const CTX: bool;
    /// Runs the task (`ctx` is `Some` when `CTX`); `Err` when the input cannot be used.
    fn run(ctx: Option<&Archived<Self::Ctx>>, input: &Archived<Self::In>) -> Result<Self::Out, String>;
}

/// A marker of types, owning none.
type Phantom<T> = PhantomData<fn() -> T>;

/// [`ArchivedTask`] `F` as a [`Body`].
pub(crate) struct Plain<F, T, R>(Phantom<(F, T, R)>);

impl<F, T, R> Body for Plain<F, T, R>
where
    F: ArchivedTask<T, R>,
    T: Archivable + 'static,
    R: Archivable + 'static,
{
    type Ctx = ();
    type In = T;
    type Out = R;
    const CTX: bool = false;
    #[inline(always)]
    fn run(_: Option<&()>, input: &Archived<T>) -> Result<R, String> {
        const { assert!(size_of::<F>() == 0, "a pool task must be a function item or a closure that captures nothing") };
        // SAFETY: F is zero-sized (asserted above) and, by ArchivedTask's bounds, a function item
        // or a closure that captures nothing.
        let f: F = unsafe { conjure::<F>() };
        Ok(f.call(input))
    }
}

/// [`ContextTask`] `F` as a [`Body`].
pub(crate) struct WithCtx<F, C, T, R>(Phantom<(F, C, T, R)>);

impl<F, C, T, R> Body for WithCtx<F, C, T, R>
where
    F: ContextTask<C, T, R>,
    C: Archivable + 'static,
    T: Archivable + 'static,
    R: Archivable + 'static,
{
    type Ctx = C;
    type In = T;
    type Out = R;
    const CTX: bool = true;
    #[inline(always)]
    fn run(ctx: Option<&Archived<C>>, input: &Archived<T>) -> Result<R, String> {
        const { assert!(size_of::<F>() == 0, "a pool task must be a function item or a closure that captures nothing") };
        let ctx = ctx.ok_or("the chunk carries no context")?;
        // SAFETY: zero-sized (asserted above), a function item or non-capturing closure.
        let f: F = unsafe { conjure::<F>() };
        Ok(f.call(ctx, input))
    }
}

/// [`StarTask`] `F` as a [`Body`]: the tuple is deserialized, then `F` called by value.
pub(crate) struct Star<F, Args, R>(Phantom<(F, Args, R)>);

impl<F, Args, R> Body for Star<F, Args, R>
where
    F: StarTask<Args, R>,
    Args: Archivable + 'static,
    Archived<Args>: Deserialize<Args, HighDeserializer<RkyvError>>,
    R: Archivable + 'static,
{
    type Ctx = ();
    type In = Args;
    type Out = R;
    const CTX: bool = false;
    #[inline(always)]
    fn run(_: Option<&()>, input: &Archived<Args>) -> Result<R, String> {
        const { assert!(size_of::<F>() == 0, "a pool task must be a function item or a closure that captures nothing") };
        let args = rkyv::deserialize::<Args, RkyvError>(input).map_err(|e| format!("deserializing the item: {e}"))?;
        // SAFETY: zero-sized (asserted above), a function item or non-capturing closure.
        let f: F = unsafe { conjure::<F>() };
        Ok(f.call(args))
    }
}

// ----- the worker's side ------------------------------------------------------------------------

/// Reads a little-endian `u32` at `p`.
///
/// # Safety
/// `p..p + 4` must be readable.
unsafe fn read_u32(p: *const u8) -> usize {
    // SAFETY: the caller's contract; any bytes are a valid array.
    u32::from_le_bytes(unsafe { p.cast::<[u8; 4]>().read_unaligned() }) as usize
}

/// Writes a little-endian `u32` at `p`.
///
/// # Safety
/// `p..p + 4` must be writable.
unsafe fn write_u32(p: *mut u8, v: usize) {
    let v = u32::try_from(v).unwrap_or(u32::MAX);
    // SAFETY: the caller's contract.
    unsafe { p.cast::<[u8; 4]>().write_unaligned(v.to_le_bytes()) }
}

/// Runs every item of an archived chunk: validates its input in place, runs the task, archives
/// the output into the room left, and writes the item's table entry and status byte.
///
/// # Safety
/// `c` must describe a slot claimed by the caller: `c.data` its data area, `c.desc` its
/// descriptor, checked with [`SlotDesc::fits_archived`](super::slots::SlotDesc::fits_archived)
/// against the data area's length (so the inputs, the table, the output room and the status bytes
/// lie inside it, in that order and without overlapping), nobody else touching the slot
/// meanwhile; `c.ctx` null or `c.ctx_len` readable bytes that nobody writes meanwhile (the
/// context's slot, held by the parent for the job).
pub(crate) unsafe fn run_archived<B: Body>(c: &mut ChunkCtx<'_>) -> Result<(), &'static str> {
    if c.kind != KIND_ARCHIVED {
        return Err("slot describes another kind of chunk than the task's");
    }
    let d = c.desc;
    let n = d.count as usize;
    let data = c.data;
    let (table, room_end) = (d.in_off as usize, d.status_off as usize);
    let mut ctx: Option<&Archived<B::Ctx>> = None;
    let mut ctx_err: Option<String> = None;
    if B::CTX {
        if c.ctx.is_null() {
            ctx_err = Some(c.ctx_err.take().unwrap_or_else(|| "the chunk names no valid context".to_owned()));
        } else {
            // SAFETY: the caller's contract: `ctx_len` readable bytes nobody writes meanwhile.
            let bytes = unsafe { std::slice::from_raw_parts(c.ctx, c.ctx_len) };
            if c.ctx_checked {
                // SAFETY: the caller's contract for `ctx_checked`: these very bytes, at this very
                // address, passed `rkyv::access` as `Archived<B::Ctx>` (this trampoline's context
                // type) in an earlier chunk, and cannot have changed since (a read-only mapping of
                // a spill file sealed against writing and shrinking, which the worker keeps).
                ctx = Some(unsafe { rkyv::access_unchecked::<Archived<B::Ctx>>(bytes) });
            } else {
                match rkyv::access::<Archived<B::Ctx>, RkyvError>(bytes) {
                    Ok(a) => {
                        ctx = Some(a);
                        c.ctx_checked = true;
                    }
                    Err(e) => ctx_err = Some(format!("the context is not a valid archive: {e}")),
                }
            }
        }
    }
    let mut cursor = d.out_off as usize;
    let mut stop = false;
    for i in 0..n {
        // Table entry i and status byte i lie inside the data area (`fits_archived`: the table
        // holds `count` entries, the status area `count` bytes).
        let entry = data.wrapping_add(table + i * TABLE_ENTRY);
        let status = data.wrapping_add(d.status_off as usize + i);
        let set = |s: u8| {
            // SAFETY: status byte i of the claimed slot (see above).
            unsafe { status.write(s) }
        };
        if stop {
            set(ITEM_SKIPPED);
            continue;
        }
        if let Some(e) = &ctx_err {
            set(ITEM_INVALID_INPUT);
            (c.on_panic)(i, e.clone());
            continue;
        }
        // SAFETY: entry i lies inside the data area (see above).
        let in_off = unsafe { read_u32(entry) };
        // SAFETY: as above.
        let in_word = unsafe { read_u32(entry.wrapping_add(4)) };
        let in_len = in_word & !(SPILLED as usize);
        if in_off % ARCHIVE_ALIGN != 0 || in_off.checked_add(in_len).is_none_or(|e| e > table) {
            set(ITEM_INVALID_INPUT);
            (c.on_panic)(i, format!("the item table puts the input at {in_off}+{in_len}, outside the inputs"));
            continue;
        }
        // SAFETY: `in_off..in_off + in_len` lies before the table (checked just above), so inside
        // the data area and apart from everything this function writes; nobody writes it while
        // the slot is claimed.
        let mut bytes = unsafe { std::slice::from_raw_parts(data.wrapping_add(in_off).cast_const(), in_len) };
        let spilled;
        if in_word & SPILLED as usize != 0 {
            // The slot holds a record naming the parent's spill file: the input is read from it.
            match read_spilled_input(bytes, c.max_value) {
                Ok(v) => spilled = v,
                Err(reason) => {
                    set(ITEM_INVALID_INPUT);
                    (c.on_panic)(i, reason);
                    continue;
                }
            }
            bytes = &spilled;
        }
        let input = match rkyv::access::<Archived<B::In>, RkyvError>(bytes) {
            Ok(a) => a,
            Err(e) => {
                set(ITEM_INVALID_INPUT);
                (c.on_panic)(i, format!("the input is not a valid archive: {e}"));
                continue;
            }
        };
        let out = match std::panic::catch_unwind(AssertUnwindSafe(|| B::run(ctx, input))) {
            Ok(Ok(out)) => out,
            Ok(Err(reason)) => {
                set(ITEM_INVALID_INPUT);
                (c.on_panic)(i, reason);
                continue;
            }
            Err(payload) => {
                set(ITEM_PANICKED);
                let text = super::panics::take_captured_panic()
                    .unwrap_or_else(|| crate::process::payload_text(&*payload).to_owned());
                // The payload's destructor is user code that could panic in turn: forget it.
                std::mem::forget(payload);
                (c.on_panic)(i, text);
                continue;
            }
        };
        cursor = cursor.div_ceil(ARCHIVE_ALIGN) * ARCHIVE_ALIGN;
        let room = room_end.saturating_sub(cursor);
        // SAFETY: `cursor..room_end` lies inside the output room (`cursor` starts at its start and
        // only grows by what was written into it; `room` is 0 past its end), apart from the
        // inputs, the table and the status bytes.
        let out_bytes = unsafe { std::slice::from_raw_parts_mut(data.wrapping_add(cursor.min(room_end)), room) };
        let written = rkyv::util::with_arena(|arena| write_into(&out, out_bytes, cursor, arena));
        match written {
            Written::Done(len) => {
                // SAFETY: entry i (see above).
                unsafe {
                    write_u32(entry.wrapping_add(8), cursor);
                }
                // SAFETY: entry i (see above).
                unsafe { write_u32(entry.wrapping_add(12), len) };
                cursor += len;
                set(ITEM_OK);
            }
            Written::Overflow => {
                let needed = rkyv::util::with_arena(|arena| measure(&out, cursor, arena)).unwrap_or(usize::MAX);
                // The room this output would have if its item went alone: the parent puts the
                // status bytes at the end of the data area, and an item alone its input (or its
                // spill record) first, then its table entry, then the output.
                let data_len = room_end.saturating_add(n);
                let alone = data_len.saturating_sub(1 + in_len.div_ceil(ARCHIVE_ALIGN) * ARCHIVE_ALIGN + TABLE_ENTRY);
                if n > 1 && needed <= alone {
                    // It fits a slot of its own: the parent sends it (and the items after it) again.
                    // SAFETY: entry i (see above).
                    unsafe { write_u32(entry.wrapping_add(12), needed) };
                    set(ITEM_OVERFLOW);
                    stop = true;
                } else if needed <= c.max_value {
                    // It never fits a slot: into a spill file, which this worker keeps open until
                    // the parent has read it.
                    match spill_output(&out, needed) {
                        Ok(s) => {
                            // SAFETY: entry i (see above).
                            unsafe { write_u32(entry.wrapping_add(8), s.fd.as_raw_fd() as usize) };
                            // SAFETY: entry i (see above).
                            unsafe { write_u32(entry.wrapping_add(12), s.len) };
                            c.spills.push(s.fd);
                            set(ITEM_SPILLED);
                        }
                        Err(reason) => {
                            set(ITEM_BAD_OUTPUT);
                            (c.on_panic)(i, reason);
                        }
                    }
                } else {
                    // Larger than the pool allows: the parent fails the item, naming both sizes
                    // (a length past `u32::MAX` reads as `u32::MAX`, past any limit too).
                    // SAFETY: entry i (see above).
                    unsafe { write_u32(entry.wrapping_add(12), needed) };
                    set(ITEM_OVERFLOW);
                }
            }
            Written::Failed(reason) => {
                set(ITEM_BAD_OUTPUT);
                (c.on_panic)(i, format!("the output could not be archived: {reason}"));
            }
        }
    }
    Ok(())
}

/// A worker: reads a spilled input, named by the `RECORD`-byte record `rec` the parent left in
/// the slot, from the parent's spill file. Every field of the record is checked before use.
#[cold]
fn read_spilled_input(rec: &[u8], max_value: usize) -> Result<AlignedVec<16>, String> {
    let rec: [u8; RECORD] =
        rec.try_into().map_err(|_| format!("a spilled input's record is {} bytes, not {RECORD}", rec.len()))?;
    let (pid, fd, len) = parse_record(rec);
    let len = check_parent_record("input", pid, len, max_value)?;
    super::spill::read(pid, fd, len).map_err(|e| format!("the spilled input could not be read: {e}"))
}

/// A worker: checks the pid and the length of a spill record the parent left in a slot (`what`:
/// "input" or "context"): the pid must be the parent's, the length at most the pool's largest
/// value. Answers the length.
fn check_parent_record(what: &str, pid: u32, len: u64, max_value: usize) -> Result<usize, String> {
    let parent = nix::unistd::getppid().as_raw() as u32;
    if pid != parent {
        return Err(format!("a spilled {what} names process {pid}, not the parent {parent}"));
    }
    usize::try_from(len)
        .ok()
        .filter(|&l| l <= max_value)
        .ok_or_else(|| format!("a spilled {what} claims {len} bytes, more than the pool's largest value ({max_value})"))
}

/// Spilled contexts a worker of this process mapped (tests: each worker maps a context once, not
/// once per chunk).
static CONTEXT_MAPPINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many spilled contexts (contexts larger than a slot) this process mapped as a pool worker:
/// a worker maps each once and keeps it for the chunks that follow. For tests.
#[doc(hidden)]
pub fn context_mappings() -> u64 {
    CONTEXT_MAPPINGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A worker: maps the spill file named by the `CTX_RECORD`-byte record `rec` the parent left in
/// a slot (a context's or the initializer arguments'), read-only, to read it in place. Every field
/// of the record is checked before use; `spill::map` checks the file and its seals. Answers the
/// mapping and the record's `(pid, fd, len, id)`.
pub(crate) fn map_spilled(rec: &[u8], max_value: usize) -> Result<(Mapped, CtxKey), String> {
    let rec: [u8; CTX_RECORD] =
        rec.try_into().map_err(|_| format!("a spilled context's record is {} bytes, not {CTX_RECORD}", rec.len()))?;
    let key = parse_ctx_record(rec);
    let (pid, fd, len, _) = key;
    let len = check_parent_record("context", pid, len, max_value)?;
    let m = super::spill::map(pid, fd, len).map_err(|e| format!("the spilled context could not be mapped: {e}"))?;
    Ok((m, key))
}

/// A worker's last spilled context, mapped: kept while the chunks it runs name it, so that it is
/// mapped and validated once, not once per chunk.
#[derive(Default)]
pub(crate) struct CtxCache {
    last: Option<CachedCtx>,
}

struct CachedCtx {
    /// The record that named it: the parent's pid, the descriptor, the length and the id the
    /// parent gave this context (no two spilled contexts of a parent share one, so a later
    /// context whose file got the same descriptor number is never taken for this one).
    key: CtxKey,
    map: Mapped,
    /// The trampoline that validated it, as its context type (another one validates again).
    checked_by: Option<CodeOffset>,
}

impl CtxCache {
    /// The spilled context named by record `rec`, for trampoline `tramp`: its bytes, and whether
    /// that trampoline validated them already. Maps it unless it is the one kept (the one kept
    /// goes first: a worker holds one context at a time).
    pub(crate) fn get(&mut self, rec: &[u8], max_value: usize, tramp: CodeOffset) -> Result<(&[u8], bool), String> {
        let key = <[u8; CTX_RECORD]>::try_from(rec).ok().map(parse_ctx_record);
        if self.last.as_ref().is_none_or(|c| Some(c.key) != key) {
            self.last = None;
            let (map, key) = map_spilled(rec, max_value)?;
            CONTEXT_MAPPINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.last = Some(CachedCtx { key, map, checked_by: None });
        }
        let c = self.last.as_ref().ok_or("no context")?;
        Ok((c.map.bytes(), c.checked_by == Some(tramp)))
    }

    /// Trampoline `tramp` validated the context kept.
    pub(crate) fn checked(&mut self, tramp: CodeOffset) {
        if let Some(c) = &mut self.last {
            c.checked_by = Some(tramp);
        }
    }

    /// Whether a context is kept.
    pub(crate) fn holds(&self) -> bool {
        self.last.is_some()
    }

    /// Drops the context kept.
    pub(crate) fn clear(&mut self) {
        self.last = None;
    }

    /// Drops the context kept if its parent no longer holds its file (the job ended): the worker
    /// would otherwise keep its memory alive while it waits for work.
    pub(crate) fn release_if_closed(&mut self) {
        if let Some(c) = &self.last {
            let (pid, fd, ..) = c.key;
            if !c.map.still_named_by(pid, fd) {
                self.last = None;
            }
        }
    }
}

/// A worker: archives an output too large for any slot (`needed` bytes, measured) into a new
/// spill file.
#[cold]
fn spill_output<R: Archivable>(out: &R, needed: usize) -> Result<super::spill::Spill, String> {
    let bytes = rkyv::util::with_arena(|arena| archive_measured(out, needed, arena))
        .map_err(|reason| format!("the output could not be archived: {reason}"))?;
    super::spill::create(&bytes).map_err(|e| format!("the output could not be written to a spill file: {e}"))
}

/// The code offset of the archived trampoline for `B`.
fn archived_offset<B: Body>() -> Result<CodeOffset, PoolError> {
    let f: super::task::ChunkFn = run_archived::<B>;
    CodeMap::get().and_then(|m| m.offset(f as usize)).map_err(PoolError::Start)
}

/// An initializer trampoline that reads its arguments.
pub(crate) type InitArgsFn = fn(&[u8]) -> Result<(), String>;

/// Validates the initializer's archived arguments in place, then runs `F` on them.
fn run_init_with<F: InitTask<A>, A: Archivable>(bytes: &[u8]) -> Result<(), String> {
    const { assert!(size_of::<F>() == 0, "a pool initializer must be a function item or a closure that captures nothing") };
    let args = rkyv::access::<Archived<A>, RkyvError>(bytes).map_err(|e| e.to_string())?;
    // SAFETY: zero-sized (asserted above), a function item or non-capturing closure.
    let f: F = unsafe { conjure::<F>() };
    f.call(args);
    Ok(())
}

/// In a worker: the initializer trampoline at `offset`.
pub(crate) fn init_args_fn(offset: CodeOffset) -> Option<InitArgsFn> {
    let addr = CodeMap::get().ok()?.address(offset)?;
    // SAFETY: as in `task::chunk_fn`, for an `InitArgsFn` computed by `initializer_with` from
    // `run_init_with` (the worker is told to call this kind only when the pool has arguments,
    // which only `initializer_with` sets, together with this offset).
    Some(unsafe { std::mem::transmute::<usize, InitArgsFn>(addr) })
}

// ----- the parent's side: results ---------------------------------------------------------------

/// An output's archive, copied out of its slot (with the rest of its chunk's), not yet validated.
#[derive(Clone, Debug)]
pub(crate) struct RawOut {
    pub buf: Arc<AlignedVec<16>>,
    /// Where it lies in `buf` (16-aligned, as it was in the slot).
    pub off: usize,
    pub len: usize,
}

impl RawOut {
    /// Validates the archive (`rkyv::access`) where it lies in the copy.
    fn access<R: Archivable>(&self) -> Result<&Archived<R>, TaskError> {
        let bytes =
            self.off.checked_add(self.len).and_then(|end| self.buf.get(self.off..end)).ok_or_else(|| {
                TaskError::InvalidOutput { reason: "the output lies outside what was copied".to_owned() }
            })?;
        rkyv::access::<Archived<R>, RkyvError>(bytes)
            .map_err(|e| TaskError::InvalidOutput { reason: format!("not a valid archive: {e}") })
    }

    /// Validates the archive and deserializes an owned `R`.
    pub(crate) fn decode<R>(&self) -> Result<R, TaskError>
    where
        R: Archivable,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
    {
        deserialize_output(self.access::<R>()?)
    }

    /// Validates the archive and answers a view of it.
    pub(crate) fn view<R: Archivable>(self) -> Result<OutputView<R>, TaskError> {
        let root = std::ptr::NonNull::from(self.access::<R>()?);
        Ok(OutputView { buf: self.buf, root, off: self.off, len: self.len })
    }
}

/// Deserializes an owned `R` from a validated output.
fn deserialize_output<R>(archived: &Archived<R>) -> Result<R, TaskError>
where
    R: Archive,
    Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
{
    rkyv::deserialize::<R, RkyvError>(archived)
        .map_err(|e| TaskError::InvalidOutput { reason: format!("could not be deserialized: {e}") })
}

/// A task's result read in place: its archive validated (bytecheck: every relative pointer,
/// length, tag and alignment checked), not deserialized. Derefs to `Archived<R>`
/// (`ArchivedString`, `ArchivedVec<..>`, `ArchivedFoo`, ...), so reading it costs no allocation.
///
/// The bytes are the parent's own copy of the chunk's outputs, taken out of the slot before
/// validation (a worker could still write the slot; a copy it cannot reach is what makes the
/// validation hold). A view keeps that copy alive, shared with the other views of its chunk (at
/// most one slot's bytes, [`PoolBuilder::slot_bytes`]); [`deserialize`](Self::deserialize) gives
/// an owned `R` when one is needed.
///
/// Yielded by [`Pool::map_views`], [`ImapArchived::views`], [`ImapUnorderedArchived::views`] and
/// the futures of [`Pool::submit_view`] (so [`as_completed`](super::as_completed) yields views too).
///
/// ```
/// use ringpool::ring::archive::rkyv::string::ArchivedString;
///
/// fn shout(s: &ArchivedString) -> String {
///     s.as_str().to_uppercase()
/// }
///
/// let pool = ringpool::Pool::new(2)?;
/// let views = pool.map_views(shout, ["a".to_string(), "b".to_string()])?;
/// // `views[0]` derefs to an `ArchivedString`: compared and read without building a `String`.
/// assert_eq!(views[0].as_str(), "A");
/// assert_eq!(views[1].deserialize()?, "B");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OutputView<R: Archive> {
    /// The chunk's outputs, copied out of the slot; never written once shared.
    buf: Arc<AlignedVec<16>>,
    /// The archive's root, inside `buf`, validated by `rkyv::access`.
    root: std::ptr::NonNull<Archived<R>>,
    /// The archive's bytes in `buf`.
    off: usize,
    len: usize,
}

// SAFETY: a view is an `Arc` of immutable bytes plus a pointer into them; sending or sharing it
// shares `&Archived<R>` across threads, which is sound when `Archived<R>` is `Sync`.
unsafe impl<R: Archive> Send for OutputView<R> where Archived<R>: Sync {}
// SAFETY: as above.
unsafe impl<R: Archive> Sync for OutputView<R> where Archived<R>: Sync {}

impl<R: Archive> std::ops::Deref for OutputView<R> {
    type Target = Archived<R>;
    fn deref(&self) -> &Archived<R> {
        // SAFETY: `root` was returned by `rkyv::access` (bytecheck validation) over
        // `buf[off..off + len]` (`RawOut::view`); `buf` is a heap buffer this view keeps alive
        // through its `Arc`, at a fixed address, and nobody writes it once it is shared (it is
        // the parent's private copy, only ever read). The reference is tied to `&self`.
        unsafe { self.root.as_ref() }
    }
}

impl<R: Archive> Clone for OutputView<R> {
    fn clone(&self) -> Self {
        OutputView { buf: self.buf.clone(), root: self.root, off: self.off, len: self.len }
    }
}

impl<R: Archive> std::fmt::Debug for OutputView<R>
where
    Archived<R>: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl<R: Archive> OutputView<R> {
    /// Deserializes an owned `R` from the view.
    pub fn deserialize(&self) -> Result<R, TaskError>
    where
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
    {
        deserialize_output(&**self)
    }

    /// The archive's bytes (validated; 16-aligned at their start).
    pub fn bytes(&self) -> &[u8] {
        // In bounds: checked when the view was made, and `buf` never changes.
        self.buf.get(self.off..self.off + self.len).unwrap_or(&[])
    }
}

/// A map's raw results, by index.
#[derive(Default)]
struct MapSink {
    results: Vec<Option<Result<RawOut, TaskError>>>,
}

impl MapSink {
    fn put(&mut self, i: usize, r: Result<RawOut, TaskError>) {
        if self.results.len() <= i {
            self.results.resize_with(i + 1, || None);
        }
        self.results[i] = Some(r);
    }
}

impl Sink for MapSink {
    fn chunk(&mut self, _: &Chunk<'_>) {}
    fn fail(&mut self, first: usize, count: usize, e: &TaskError) {
        for i in first..first + count {
            self.put(i, Err(e.clone()));
        }
    }
    fn archived(&mut self, index: usize, r: Result<RawOut, TaskError>) {
        self.put(index, r);
    }
}

/// Ordered raw results (`imap_archived`).
#[derive(Default)]
struct Ordered(OrderedSink<RawOut>);

impl Sink for Ordered {
    fn chunk(&mut self, _: &Chunk<'_>) {}
    fn fail(&mut self, first: usize, count: usize, e: &TaskError) {
        for i in first..first + count {
            self.0.put(i, Err(e.clone()));
        }
    }
    fn archived(&mut self, index: usize, r: Result<RawOut, TaskError>) {
        self.0.put(index, r);
    }
}

/// Raw results in completion order (`imap_unordered_archived`).
#[derive(Default)]
struct Unordered(UnorderedSink<RawOut>);

impl Sink for Unordered {
    fn chunk(&mut self, _: &Chunk<'_>) {}
    fn fail(&mut self, first: usize, count: usize, e: &TaskError) {
        self.0.ready.extend((first..first + count).map(|i| (i, Err(e.clone()))));
    }
    fn archived(&mut self, index: usize, r: Result<RawOut, TaskError>) {
        self.0.ready.push_back((index, r));
    }
}

/// An archived future's raw result.
#[derive(Default)]
struct FutureSink {
    result: Option<Result<RawOut, TaskError>>,
}

impl Sink for FutureSink {
    fn chunk(&mut self, _: &Chunk<'_>) {}
    fn fail(&mut self, _: usize, _: usize, e: &TaskError) {
        self.result = Some(Err(e.clone()));
    }
    fn archived(&mut self, _: usize, r: Result<RawOut, TaskError>) {
        self.result = Some(r);
    }
}

/// An archived future's result, validated and deserialized as it is taken.
fn take_archived<R>(e: &mut Engine, job: usize) -> Option<Option<Result<R, TaskError>>>
where
    R: Archivable,
    Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
{
    e.sink::<FutureSink>(job).map(|s| s.result.as_ref().map(|r| r.as_ref().map_err(Clone::clone)?.decode::<R>()))
}

/// An archived future's result, validated as it is taken and answered as a view.
fn take_view<R: Archivable>(e: &mut Engine, job: usize) -> Option<Option<Result<OutputView<R>, TaskError>>> {
    e.sink::<FutureSink>(job).map(|s| s.result.as_ref().map(|r| r.clone().and_then(RawOut::view::<R>)))
}

/// Archived items, packed into slots as they go.
pub(crate) struct ArchDispatch {
    spec: ArchSpec,
    chunk: usize,
}

impl<T: Archivable> Dispatcher<T> for ArchDispatch {
    fn dispatch(
        &mut self,
        e: &mut Engine,
        job: usize,
        first: usize,
        buffer: &mut std::collections::VecDeque<T>,
    ) -> Dispatch {
        e.dispatch_archived(job, self.spec, first, buffer, self.chunk)
    }
    fn chunk(&self) -> usize {
        self.chunk
    }
}

// ----- the API ----------------------------------------------------------------------------------

impl PoolBuilder {
    /// A function every worker (and every replacement) runs once when it starts, on `args`
    /// (Python's `initializer` with `initargs`): `args` are archived once, at build, into a slot of
    /// their own that every worker maps, and the initializer reads them in place, validated
    /// (`f: fn(&Archived<A>)`, a function item or a closure that captures nothing). Replaces an
    /// [`initializer`](Self::initializer). Arguments larger than a slot go into a sealed spill
    /// file the pool holds for its lifetime, which each worker maps read-only as it starts and
    /// reads in place; arguments larger than [`max_value_bytes`](Self::max_value_bytes) fail the
    /// build with [`PoolError::ArchiveTooLarge`].
    ///
    /// ```
    /// use ringpool::ring::archive::rkyv::string::ArchivedString;
    ///
    /// fn greet(name: &ArchivedString) {
    ///     // Runs in every worker as it starts: open a database, load a model, ...
    ///     assert_eq!(name, "ringpool");
    /// }
    ///
    /// let pool = ringpool::Pool::builder().workers(2).initializer_with(greet, "ringpool".to_string()).build()?;
    /// # drop(pool);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn initializer_with<A: Archivable, F: InitTask<A>>(mut self, f: F, args: A) -> Self {
        let _ = f;
        let tramp: InitArgsFn = run_init_with::<F, A>;
        self.init = Some(CodeMap::get().and_then(|m| m.offset(tramp as usize)).map_err(|e| e.to_string()));
        let mut arena = rkyv::ser::allocator::Arena::new();
        let archived = measure(&args, 0, &mut arena)
            .and_then(|size| archive_measured(&args, size, &mut arena))
            .map(|bytes| bytes.to_vec());
        self.init_args = Some(archived);
        self
    }
}

/// The chunk size (items) for an archived job of `len` items, if known: the builder's
/// `chunk_size`, else about four chunks per worker; slots take fewer when they fill up.
fn chunk_size(e: &Engine, len: Option<usize>) -> usize {
    let wanted = match (e.settings.chunk_size, len) {
        (Some(c), _) => c,
        (None, Some(n)) => n.div_ceil(e.settings.workers.max(1) * 4),
        (None, None) => 16,
    };
    wanted.max(1)
}

/// Turns a map's raw results into values (`read`: owned or views), validating each.
fn finish_map<X>(
    results: Vec<Option<Result<RawOut, TaskError>>>,
    read: impl Fn(RawOut) -> Result<X, TaskError>,
) -> Result<Vec<X>, MapError<X>> {
    let results: Vec<Result<X, TaskError>> = results
        .into_iter()
        .map(|r| match r {
            Some(Ok(raw)) => read(raw),
            Some(Err(e)) => Err(e),
            None => {
                Err(TaskError::from(PoolError::Broken(crate::ring::Broken::Corrupted("the item's result was lost"))))
            }
        })
        .collect();
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().filter_map(Result::ok).collect());
    }
    Err(MapError::Tasks(TaskFailures::new(results)))
}

impl Pool {
    /// Starts an archived job: its trampoline, its sink, its context archived into a slot.
    fn start_archived<B: Body>(
        &self,
        ctx: Option<&B::Ctx>,
        len: Option<usize>,
        sink: Box<dyn Sink>,
    ) -> Result<(usize, ArchDispatch), PoolError> {
        let tramp = archived_offset::<B>()?;
        let mut e = self.shared.lock();
        e.check_open()?;
        let chunk = chunk_size(&e, len);
        let job = e.new_job(sink);
        let ctx = match ctx {
            None => None,
            Some(c) => match e.put_context(job, c) {
                Ok(at) => Some(at),
                Err(err) => {
                    e.drop_job(job);
                    return Err(err);
                }
            },
        };
        Ok((job, ArchDispatch { spec: ArchSpec { tramp, ctx }, chunk }))
    }

    /// Runs a map; `read` turns each raw result into what the caller answers (owned or a view).
    fn map_body<B: Body, X>(
        &self,
        ctx: Option<&B::Ctx>,
        inputs: impl IntoIterator<Item = B::In>,
        read: impl Fn(RawOut) -> Result<X, TaskError>,
    ) -> Result<Vec<X>, MapError<X>> {
        let iter = inputs.into_iter();
        let (lo, hi) = iter.size_hint();
        let (job, disp) =
            self.start_archived::<B>(ctx, (Some(lo) == hi).then_some(lo), Box::new(MapSink::default()))?;
        let (sink, next) = self.drive::<MapSink, _, _>(iter, job, disp)?;
        let mut results = sink.results;
        results.resize_with(next, || None);
        finish_map(results, read)
    }

    /// Submits one item; `take` turns its raw result into what the future answers.
    fn submit_body<B: Body, X: Send>(
        &self,
        ctx: Option<&B::Ctx>,
        input: B::In,
        take: super::future::Take<X>,
    ) -> Result<Future<X>, PoolError> {
        let (job, disp) = self.start_archived::<B>(ctx, Some(1), Box::new(FutureSink::default()))?;
        let mut e = self.shared.lock();
        e.push_archived(job, disp.spec, &input);
        let flushed = e.flush();
        drop(e);
        // The future owns the job from here: dropping it (on an error too) removes the job.
        let future = Future::with_take(self.shared.clone(), job, take);
        drop(input);
        flushed?;
        Ok(future)
    }

    fn imap_body<B: Body, I: IntoIterator<Item = B::In>>(
        &self,
        ctx: Option<&B::Ctx>,
        inputs: I,
    ) -> Result<ImapArchived<'_, B::Out, I::IntoIter>, PoolError> {
        let iter = inputs.into_iter();
        let (lo, hi) = iter.size_hint();
        let (job, disp) =
            self.start_archived::<B>(ctx, (Some(lo) == hi).then_some(lo), Box::new(Ordered::default()))?;
        Ok(ImapArchived { stream: Stream::resume(self, job, iter, disp), _r: PhantomData })
    }

    fn imap_unordered_body<B: Body, I: IntoIterator<Item = B::In>>(
        &self,
        ctx: Option<&B::Ctx>,
        inputs: I,
    ) -> Result<ImapUnorderedArchived<'_, B::Out, I::IntoIter>, PoolError> {
        let iter = inputs.into_iter();
        let (lo, hi) = iter.size_hint();
        let sink = Box::new(Unordered::default());
        let (job, disp) = self.start_archived::<B>(ctx, (Some(lo) == hi).then_some(lo), sink)?;
        Ok(ImapUnorderedArchived { stream: Stream::resume(self, job, iter, disp), _r: PhantomData })
    }

    /// Like [`map`](Self::map), for any archivable input and output: runs `f` on every input and
    /// returns the owned results in input order. `f` reads its input in place
    /// (`fn(&Archived<T>) -> R`); each result is validated before it is deserialized. An input
    /// or output larger than a slot crosses through a spill file; one larger than
    /// [`max_value_bytes`](PoolBuilder::max_value_bytes) fails only its item
    /// ([`TaskError::TooLarge`]); see the [module docs](crate::pool#archived-tasks).
    ///
    /// ```
    /// use ringpool::ring::archive::rkyv::{self, string::ArchivedString};
    ///
    /// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    /// #[rkyv(crate = rkyv)]
    /// struct Stats {
    ///     first_word: String,
    ///     words: u32,
    /// }
    ///
    /// fn stats(line: &ArchivedString) -> Stats {
    ///     let mut words = line.split_whitespace();
    ///     Stats { first_word: words.next().unwrap_or("").to_owned(), words: 1 + words.count() as u32 }
    /// }
    ///
    /// let pool = ringpool::Pool::new(2)?;
    /// let lines = vec!["hello shared memory".to_string(), "rkyv reads in place".to_string()];
    /// let out = pool.map_archived(stats, lines)?;
    /// assert_eq!(out[1], Stats { first_word: "rkyv".into(), words: 4 });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A type that rkyv cannot archive does not compile, and says what to derive:
    ///
    /// ```compile_fail,E0277
    /// struct NotArchivable(String);
    ///
    /// fn len(_: &u32) -> u32 {
    ///     0
    /// }
    ///
    /// let pool = ringpool::Pool::new(1).unwrap();
    /// // error[E0277]: `NotArchivable` cannot cross a typed ring
    /// //   = note: derive `rkyv::Archive` and `rkyv::Serialize` on `NotArchivable` ...
    /// let _ = pool.map_archived(len, vec![NotArchivable(String::new())]);
    /// ```
    pub fn map_archived<T, R, F>(&self, f: F, inputs: impl IntoIterator<Item = T>) -> Result<Vec<R>, MapError<R>>
    where
        T: Archivable + 'static,
        R: Archivable + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ArchivedTask<T, R>,
    {
        let _ = f;
        self.map_body::<Plain<F, T, R>, R>(None, inputs, |raw| raw.decode::<R>())
    }

    /// Like [`imap`](Self::imap), for archivable inputs and outputs (see
    /// [`map_archived`](Self::map_archived)): results in input order, each as soon as it and those
    /// before it are done.
    pub fn imap_archived<T, R, F, I>(&self, f: F, inputs: I) -> Result<ImapArchived<'_, R, I::IntoIter>, PoolError>
    where
        T: Archivable + 'static,
        R: Archivable + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ArchivedTask<T, R>,
        I: IntoIterator<Item = T>,
    {
        let _ = f;
        self.imap_body::<Plain<F, T, R>, I>(None, inputs)
    }

    /// Like [`imap_unordered`](Self::imap_unordered), for archivable inputs and outputs: each
    /// result as soon as it is done, with its input's index.
    pub fn imap_unordered_archived<T, R, F, I>(
        &self,
        f: F,
        inputs: I,
    ) -> Result<ImapUnorderedArchived<'_, R, I::IntoIter>, PoolError>
    where
        T: Archivable + 'static,
        R: Archivable + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ArchivedTask<T, R>,
        I: IntoIterator<Item = T>,
    {
        let _ = f;
        self.imap_unordered_body::<Plain<F, T, R>, I>(None, inputs)
    }

    /// Like [`submit`](Self::submit), for an archivable input and output. An input larger than
    /// [`max_value_bytes`](PoolBuilder::max_value_bytes) makes the future's result
    /// [`TaskError::TooLarge`].
    pub fn submit_archived<T, R, F>(&self, f: F, input: T) -> Result<Future<R>, PoolError>
    where
        T: Archivable + 'static,
        R: Archivable + Send + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ArchivedTask<T, R>,
    {
        let _ = f;
        self.submit_body::<Plain<F, T, R>, R>(None, input, take_archived::<R>)
    }

    /// Like [`apply`](Self::apply), for an archivable input and output.
    pub fn apply_archived<T, R, F>(&self, f: F, input: T) -> Result<R, TaskError>
    where
        T: Archivable + 'static,
        R: Archivable + Send + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ArchivedTask<T, R>,
    {
        match self.submit_archived(f, input) {
            Ok(fut) => fut.wait(),
            Err(e) => Err(TaskError::from(e)),
        }
    }

    /// Like [`map_archived`](Self::map_archived), answering each result read in place
    /// ([`OutputView`]: validated, derefs to `Archived<R>`, not deserialized): no allocation per
    /// result. For a context, `imap_with(..)?.views()`.
    ///
    /// ```
    /// use ringpool::ring::archive::rkyv::{self, string::ArchivedString};
    ///
    /// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    /// #[rkyv(crate = rkyv)]
    /// struct Word {
    ///     text: String,
    ///     vowels: u32,
    /// }
    ///
    /// fn word(s: &ArchivedString) -> Word {
    ///     Word { text: s.to_uppercase(), vowels: s.chars().filter(|c| "aeiou".contains(*c)).count() as u32 }
    /// }
    ///
    /// let pool = ringpool::Pool::new(2)?;
    /// let views = pool.map_views(word, ["shared".to_string(), "memory".to_string()])?;
    /// assert_eq!(views[0].text, "SHARED"); // an `ArchivedString`, compared in place
    /// assert_eq!(views[1].vowels, 2); // an archived `u32`
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_views<T, R, F>(
        &self,
        f: F,
        inputs: impl IntoIterator<Item = T>,
    ) -> Result<Vec<OutputView<R>>, MapError<OutputView<R>>>
    where
        T: Archivable + 'static,
        R: Archivable + 'static,
        F: ArchivedTask<T, R>,
    {
        let _ = f;
        self.map_body::<Plain<F, T, R>, OutputView<R>>(None, inputs, RawOut::view::<R>)
    }

    /// Like [`submit_archived`](Self::submit_archived), the future answering the result read in
    /// place ([`OutputView`]); [`as_completed`](super::as_completed) over such futures yields
    /// views.
    pub fn submit_view<T, R, F>(&self, f: F, input: T) -> Result<Future<OutputView<R>>, PoolError>
    where
        T: Archivable + 'static,
        R: Archivable + 'static,
        Archived<R>: Sync,
        F: ArchivedTask<T, R>,
    {
        let _ = f;
        self.submit_body::<Plain<F, T, R>, OutputView<R>>(None, input, take_view::<R>)
    }

    /// Like [`map_archived`](Self::map_archived), with a context: `ctx` is archived once, into a
    /// slot of the pool's shared memory held for the call, and every task reads it in place
    /// (`f: fn(&Archived<C>, &Archived<T>) -> R`), in forked and spawned workers alike. A context
    /// larger than a slot is archived once into a sealed spill file the parent holds for the
    /// call, which each worker maps read-only and validates once, then reads in place for every
    /// chunk it runs (no copy); one larger than
    /// [`max_value_bytes`](PoolBuilder::max_value_bytes) is [`PoolError::ArchiveTooLarge`].
    ///
    /// ```
    /// use ringpool::ring::archive::rkyv::{self, string::ArchivedString, vec::ArchivedVec};
    ///
    /// fn count_stop_words(stop: &ArchivedVec<ArchivedString>, line: &ArchivedString) -> usize {
    ///     line.split_whitespace().filter(|w| stop.iter().any(|s| s == *w)).count()
    /// }
    ///
    /// let pool = ringpool::Pool::new(2)?;
    /// let stop_words = vec!["the".to_string(), "a".to_string()];
    /// let lines = vec!["the cat and the dog".to_string(), "a bird".to_string()];
    /// assert_eq!(pool.map_with(&stop_words, count_stop_words, lines)?, [2, 1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_with<C, T, R, F>(
        &self,
        ctx: &C,
        f: F,
        inputs: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>, MapError<R>>
    where
        C: Archivable + 'static,
        T: Archivable + 'static,
        R: Archivable + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ContextTask<C, T, R>,
    {
        let _ = f;
        self.map_body::<WithCtx<F, C, T, R>, R>(Some(ctx), inputs, |raw| raw.decode::<R>())
    }

    /// [`imap_archived`](Self::imap_archived) with a context (see [`map_with`](Self::map_with)).
    pub fn imap_with<C, T, R, F, I>(
        &self,
        ctx: &C,
        f: F,
        inputs: I,
    ) -> Result<ImapArchived<'_, R, I::IntoIter>, PoolError>
    where
        C: Archivable + 'static,
        T: Archivable + 'static,
        R: Archivable + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ContextTask<C, T, R>,
        I: IntoIterator<Item = T>,
    {
        let _ = f;
        self.imap_body::<WithCtx<F, C, T, R>, I>(Some(ctx), inputs)
    }

    /// [`imap_unordered_archived`](Self::imap_unordered_archived) with a context (see
    /// [`map_with`](Self::map_with)).
    pub fn imap_unordered_with<C, T, R, F, I>(
        &self,
        ctx: &C,
        f: F,
        inputs: I,
    ) -> Result<ImapUnorderedArchived<'_, R, I::IntoIter>, PoolError>
    where
        C: Archivable + 'static,
        T: Archivable + 'static,
        R: Archivable + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ContextTask<C, T, R>,
        I: IntoIterator<Item = T>,
    {
        let _ = f;
        self.imap_unordered_body::<WithCtx<F, C, T, R>, I>(Some(ctx), inputs)
    }

    /// [`submit_archived`](Self::submit_archived) with a context (see [`map_with`](Self::map_with));
    /// the context's slot is held until the future is done and dropped.
    pub fn submit_with<C, T, R, F>(&self, ctx: &C, f: F, input: T) -> Result<Future<R>, PoolError>
    where
        C: Archivable + 'static,
        T: Archivable + 'static,
        R: Archivable + Send + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ContextTask<C, T, R>,
    {
        let _ = f;
        self.submit_body::<WithCtx<F, C, T, R>, R>(Some(ctx), input, take_archived::<R>)
    }

    /// [`apply_archived`](Self::apply_archived) with a context (see [`map_with`](Self::map_with)).
    pub fn apply_with<C, T, R, F>(&self, ctx: &C, f: F, input: T) -> Result<R, TaskError>
    where
        C: Archivable + 'static,
        T: Archivable + 'static,
        R: Archivable + Send + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: ContextTask<C, T, R>,
    {
        match self.submit_with(ctx, f, input) {
            Ok(fut) => fut.wait(),
            Err(e) => Err(TaskError::from(e)),
        }
    }

    /// Python's `starmap`: `f(a, b)` for every item `(a, b)` (or `f(a, b, c)` for `(a, b, c)`),
    /// any archivable fields, results in input order. The worker deserializes each item's fields
    /// and calls `f` by value.
    ///
    /// ```
    /// fn repeat(s: String, n: u32) -> String {
    ///     s.repeat(n as usize)
    /// }
    ///
    /// let pool = ringpool::Pool::new(2)?;
    /// let out = pool.starmap(repeat, vec![("ab".to_string(), 2u32), ("c".to_string(), 3)])?;
    /// assert_eq!(out, ["abab", "ccc"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn starmap<Args, R, F>(&self, f: F, inputs: impl IntoIterator<Item = Args>) -> Result<Vec<R>, MapError<R>>
    where
        Args: Archivable + 'static,
        Archived<Args>: Deserialize<Args, HighDeserializer<RkyvError>>,
        R: Archivable + 'static,
        Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
        F: StarTask<Args, R>,
    {
        let _ = f;
        self.map_body::<Star<F, Args, R>, R>(None, inputs, |raw| raw.decode::<R>())
    }
}

/// The next raw result of an ordered archived stream; a pool error ends the stream.
fn next_ordered<I: Iterator<Item: Archivable>>(
    stream: &mut Stream<'_, I, ArchDispatch>,
) -> Option<Result<RawOut, TaskError>> {
    match stream.step::<Ordered, _>(|s| s.0.take())? {
        Ok(r) => Some(r),
        Err(e) => {
            stream.stop();
            Some(Err(TaskError::from(e)))
        }
    }
}

/// The next `(index, raw result)` of an unordered archived stream; a pool error ends the stream
/// (its index is `usize::MAX`).
fn next_unordered<I: Iterator<Item: Archivable>>(
    stream: &mut Stream<'_, I, ArchDispatch>,
) -> Option<(usize, Result<RawOut, TaskError>)> {
    match stream.step::<Unordered, _>(|s| s.0.ready.pop_front())? {
        Ok(r) => Some(r),
        Err(e) => {
            stream.stop();
            Some((usize::MAX, Err(TaskError::from(e))))
        }
    }
}

/// The iterator of [`Pool::imap_archived`] and [`Pool::imap_with`]: owned results in input order.
pub struct ImapArchived<'p, R, I: Iterator> {
    stream: Stream<'p, I, ArchDispatch>,
    _r: PhantomData<fn() -> R>,
}

impl<R, I> Iterator for ImapArchived<'_, R, I>
where
    R: Archivable,
    Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
    I: Iterator<Item: Archivable>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Validated and deserialized here, without the pool's lock.
        Some(next_ordered(&mut self.stream)?.and_then(|raw| raw.decode::<R>()))
    }
}

impl<'p, R, I: Iterator> ImapArchived<'p, R, I> {
    /// The same results, each read in place ([`OutputView`]: validated, not deserialized).
    pub fn views(self) -> ImapViews<'p, R, I> {
        ImapViews { stream: self.stream, _r: PhantomData }
    }
}

/// [`ImapArchived::views`]: results in input order, each read in place.
pub struct ImapViews<'p, R, I: Iterator> {
    stream: Stream<'p, I, ArchDispatch>,
    _r: PhantomData<fn() -> R>,
}

impl<R, I> Iterator for ImapViews<'_, R, I>
where
    R: Archivable,
    I: Iterator<Item: Archivable>,
{
    type Item = Result<OutputView<R>, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Validated here, without the pool's lock.
        Some(next_ordered(&mut self.stream)?.and_then(RawOut::view::<R>))
    }
}

impl<R, I: Iterator> std::fmt::Debug for ImapViews<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapViews").field("job", &self.stream.job).finish()
    }
}

impl<R, I: Iterator> std::fmt::Debug for ImapArchived<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapArchived").field("job", &self.stream.job).finish()
    }
}

/// The iterator of [`Pool::imap_unordered_archived`] and [`Pool::imap_unordered_with`]:
/// `(input index, result)` in completion order.
pub struct ImapUnorderedArchived<'p, R, I: Iterator> {
    stream: Stream<'p, I, ArchDispatch>,
    _r: PhantomData<fn() -> R>,
}

impl<R, I> Iterator for ImapUnorderedArchived<'_, R, I>
where
    R: Archivable,
    Archived<R>: Deserialize<R, HighDeserializer<RkyvError>>,
    I: Iterator<Item: Archivable>,
{
    type Item = (usize, Result<R, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        let (i, r) = next_unordered(&mut self.stream)?;
        Some((i, r.and_then(|raw| raw.decode::<R>())))
    }
}

impl<'p, R, I: Iterator> ImapUnorderedArchived<'p, R, I> {
    /// The same results, each read in place ([`OutputView`]: validated, not deserialized).
    pub fn views(self) -> ImapUnorderedViews<'p, R, I> {
        ImapUnorderedViews { stream: self.stream, _r: PhantomData }
    }
}

/// [`ImapUnorderedArchived::views`]: `(input index, result)` in completion order, each read in
/// place.
pub struct ImapUnorderedViews<'p, R, I: Iterator> {
    stream: Stream<'p, I, ArchDispatch>,
    _r: PhantomData<fn() -> R>,
}

impl<R, I> Iterator for ImapUnorderedViews<'_, R, I>
where
    R: Archivable,
    I: Iterator<Item: Archivable>,
{
    type Item = (usize, Result<OutputView<R>, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        let (i, r) = next_unordered(&mut self.stream)?;
        Some((i, r.and_then(RawOut::view::<R>)))
    }
}

impl<R, I: Iterator> std::fmt::Debug for ImapUnorderedViews<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapUnorderedViews").field("job", &self.stream.job).finish()
    }
}

impl<R, I: Iterator> std::fmt::Debug for ImapUnorderedArchived<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapUnorderedArchived").field("job", &self.stream.job).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker refuses a spilled context's record that is not what it should be, before it opens
    /// anything: a wrong length, another process than its parent, a length above the limit.
    #[test]
    fn a_worker_refuses_bad_context_records() {
        let parent = nix::unistd::getppid().as_raw() as u32;
        let record = |pid: u32, fd: u32, len: u64| {
            let mut r = [0u8; CTX_RECORD];
            r[..4].copy_from_slice(&pid.to_le_bytes());
            r[4..8].copy_from_slice(&fd.to_le_bytes());
            r[8..16].copy_from_slice(&len.to_le_bytes());
            r[16..].copy_from_slice(&7u64.to_le_bytes());
            r
        };
        let why = |r: &[u8], max: usize| map_spilled(r, max).map(|_| ()).unwrap_err();
        assert!(why(&record(parent, 3, 10)[..20], 100).contains("not 24"));
        assert!(why(&record(parent.wrapping_add(1), 3, 10), 100).contains("not the parent"));
        assert!(why(&record(parent, 3, 101), 100).contains("largest value"));
        // A good record naming no spill file (the parent's descriptor 0 is no memfd of ours).
        assert!(why(&record(parent, 0, 10), 100).contains("could not be mapped"));
        // The cache maps nothing for a bad record, and holds nothing after.
        let mut cache = CtxCache::default();
        assert!(cache.get(&record(parent, 0, 10), 100, 1).is_err());
        assert!(!cache.holds());
        assert_eq!(context_mappings(), 0);
    }
}
