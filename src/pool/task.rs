//! What a task is, and how a worker runs a chunk of them without knowing their types.
//!
//! A task is a function item or a closure that captures nothing, taking its input by reference
//! (`fn(&T) -> R`) or by value (`fn(T) -> R`), with `T` and `R` [`Pod`]. Such a function is a
//! zero-sized type, so it needs no data to travel: the parent instantiates [`run_chunk`] for it,
//! and that monomorphized function, which knows `F`, `T` and `R`, crosses to the worker as a
//! [`CodeOffset`] (its distance from the executable's load address, valid in forked and
//! re-executed workers alike). The worker calls it on the slot's bytes; it checks the sizes and
//! alignments the slot claims against `T` and `R` before it touches a byte.

use std::panic::AssertUnwindSafe;

use bytemuck::Pod;

use crate::process::code::{CodeMap, CodeOffset};

use super::PoolError;

/// A function the pool can run as a task: `Fn(&T) -> R`, zero-sized (a function item, or a
/// closure that captures nothing), with `T` and `R` [`Pod`]; or a by-value `Fn(T) -> R` wrapped in
/// [`by_value`]. No marker type: a generic wrapper names it as `F: TaskFn<T, R>`.
///
/// Passing a function *pointer* (`let f: fn(&u64) -> u64 = square;`) or a capturing closure fails
/// to compile with "a pool task must be a function item or a closure that captures nothing": the
/// code of a task crosses to the worker, its data cannot.
///
/// ```
/// use ringpool::pool::{MapError, TaskFn};
///
/// // A user's own wrapper, generic over the task: no marker parameter to name.
/// fn squares_of<F: TaskFn<u64, u64>>(pool: &ringpool::Pool, f: F, n: u64) -> Result<Vec<u64>, MapError<u64>> {
///     pool.map(f, 0..n)
/// }
///
/// fn square(x: &u64) -> u64 {
///     x * x
/// }
/// fn cube(x: u64) -> u64 {
///     x * x * x
/// }
///
/// let pool = ringpool::Pool::new(2)?;
/// assert_eq!(squares_of(&pool, square, 4)?, [0, 1, 4, 9]);
/// assert_eq!(squares_of(&pool, ringpool::pool::by_value(cube), 3)?, [0, 1, 8]);
/// assert_eq!(squares_of(&pool, |x: &u64| x + 1, 2)?, [1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pool task taking `&{T}` and returning `{R}`",
    label = "expected `fn(&{T}) -> {R}`, a function item or a closure that captures nothing",
    note = "a task that takes its input by value (`fn(x: {T}) -> {R}`) goes as `ringpool::pool::by_value(f)`; \
            `{T}` and `{R}` must be `bytemuck::Pod` (for other types, see `Pool::map_archived`)"
)]
pub trait TaskFn<T, R>: Copy + Send + Sync + 'static {
    /// Runs the task on one input.
    fn call(&self, input: &T) -> R;
}

impl<F, T, R> TaskFn<T, R> for F
where
    F: Fn(&T) -> R + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn call(&self, input: &T) -> R {
        self(input)
    }
}

/// A task that takes its input by value (`fn(T) -> R`), made by [`by_value`]; zero-sized when
/// the function is.
#[derive(Clone, Copy, Debug)]
pub struct ByValue<F>(F);

/// Wraps a by-value task `f: fn(T) -> R` (a function item or a closure that captures nothing) so
/// the pool can run it: `pool.map(by_value(cube), 0..n)`. The worker copies each input out of its
/// slot and calls `f` on it.
pub fn by_value<F>(f: F) -> ByValue<F> {
    ByValue(f)
}

impl<F, T: Copy, R> TaskFn<T, R> for ByValue<F>
where
    F: Fn(T) -> R + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn call(&self, input: &T) -> R {
        (self.0)(*input)
    }
}

/// Outcome of one item, as the worker writes it into the slot's status bytes.
#[allow(dead_code, reason = "written by the parent as zeroed status bytes")]
pub(crate) const ITEM_PENDING: u8 = 0;
pub(crate) const ITEM_OK: u8 = 1;
pub(crate) const ITEM_PANICKED: u8 = 2;
/// Archived chunks: the worker found the input invalid (the text follows on the panic ring).
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const ITEM_INVALID_INPUT: u8 = 3;
/// Archived chunks: the output did not fit the room left; its table entry holds the size needed.
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const ITEM_OVERFLOW: u8 = 4;
/// Archived chunks: not run, because an item before it overflowed.
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const ITEM_SKIPPED: u8 = 5;
/// Archived chunks: the output could not be archived (its `Serialize` failed; text follows).
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const ITEM_BAD_OUTPUT: u8 = 6;
/// Archived chunks: the output, larger than the slot could ever hold, lies in a spill file the
/// worker keeps open; its table entry holds the file's descriptor (as the output offset) and the
/// archive's length.
#[cfg_attr(not(feature = "archive"), allow(dead_code))]
pub(crate) const ITEM_SPILLED: u8 = 7;

/// One chunk, as a worker hands it to a trampoline: pointers into a slot it has claimed.
pub(crate) struct ChunkCtx<'a> {
    pub input: *const u8,
    pub output: *mut u8,
    pub status: *mut u8,
    pub count: usize,
    pub size_t: usize,
    pub align_t: usize,
    pub size_r: usize,
    pub align_r: usize,
    /// The descriptor's kind ([`KIND_POD`](super::slots::KIND_POD) for the fields above).
    pub kind: u32,
    /// Archived chunks: the slot's data area, its descriptor (checked with `fits_archived`), and
    /// the context's archive (null and 0 when the chunk has none).
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub data: *mut u8,
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub desc: super::slots::SlotDesc,
    pub ctx: *const u8,
    pub ctx_len: usize,
    /// Archived chunks with a context: in, the context's bytes were validated already, as this
    /// same trampoline's context type at this same address, and cannot have changed since (a
    /// mapped, sealed spill file); out, set when the trampoline validated them.
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub ctx_checked: bool,
    /// Why the chunk's context could not be had (each item fails with it), when `ctx` is null.
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub ctx_err: Option<String>,
    /// Called with (item, panic text) for every task that panicked.
    pub on_panic: &'a mut dyn FnMut(usize, String),
    /// Archived chunks: the largest value a worker reads from a spilled input or writes to a
    /// spilled output, and where it leaves the spill files of the outputs it wrote (kept open
    /// until the parent has read them).
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub max_value: usize,
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub spills: &'a mut Vec<std::os::fd::OwnedFd>,
}

/// The type every chunk trampoline has.
pub(crate) type ChunkFn = unsafe fn(&mut ChunkCtx<'_>) -> Result<(), &'static str>;

/// The type of an initializer trampoline.
pub(crate) type InitFn = fn();

/// Makes the value of a zero-sized function type.
///
/// # Safety
/// `F` must be zero-sized (checked at compile time by the callers' `const` assertions) and a
/// function item or a closure that captures nothing: such a type has exactly one value and no
/// invariant, so "making" it creates nothing that did not exist.
pub(crate) unsafe fn conjure<F>() -> F {
    // SAFETY: per this function's contract F is zero-sized: reading it reads no byte, and a
    // dangling, aligned pointer is valid for zero-sized reads.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

/// Runs every item of a chunk: `output[i] = f(&input[i])`, catching each task's panic on its own.
///
/// # Safety
/// `ctx` must describe a slot claimed by the caller: `input` valid for reading `count` values of
/// `size_t` bytes, `output` for writing `count` values of `size_r` bytes, `status` for `count`
/// bytes, all inside one mapping, not accessed by anyone else meanwhile, and aligned as `align_t`
/// and `align_r` say. This function checks that those sizes and alignments are `T`'s and `R`'s and
/// that the pointers are so aligned, and refuses the chunk otherwise.
pub(crate) unsafe fn run_chunk<F, T, R>(ctx: &mut ChunkCtx<'_>) -> Result<(), &'static str>
where
    F: TaskFn<T, R>,
    T: Pod,
    R: Pod,
{
    const {
        assert!(std::mem::size_of::<F>() == 0, "a pool task must be a function item or a closure that captures nothing")
    };
    if ctx.kind != super::slots::KIND_POD
        || ctx.size_t != std::mem::size_of::<T>()
        || ctx.align_t != std::mem::align_of::<T>()
        || ctx.size_r != std::mem::size_of::<R>()
        || ctx.align_r != std::mem::align_of::<R>()
    {
        return Err("slot describes other types than the task's");
    }
    if (ctx.input as usize) % std::mem::align_of::<T>() != 0 || (ctx.output as usize) % std::mem::align_of::<R>() != 0 {
        return Err("slot data is misaligned for the task's types");
    }
    // SAFETY: F is zero-sized (asserted above at compile time) and, by TaskFn's impls, a
    // function item or non-capturing closure, or `ByValue` of one (a struct of that one field:
    // zero-sized with a single value too).
    let f: F = unsafe { conjure::<F>() };
    for i in 0..ctx.count {
        // SAFETY: i < count; input holds count aligned T values (caller's contract, alignment and
        // size checked above); Pod makes any bytes a valid T.
        let input: &T = unsafe { &*ctx.input.cast::<T>().wrapping_add(i) };
        match std::panic::catch_unwind(AssertUnwindSafe(|| f.call(input))) {
            Ok(r) => {
                // SAFETY: i < count; output has room for count aligned R values (contract).
                unsafe { ctx.output.cast::<R>().wrapping_add(i).write(r) };
                // SAFETY: i < count; status has count bytes (contract).
                unsafe { ctx.status.wrapping_add(i).write(ITEM_OK) };
            }
            Err(payload) => {
                // SAFETY: as above.
                unsafe { ctx.status.wrapping_add(i).write(ITEM_PANICKED) };
                let text = super::panics::take_captured_panic()
                    .unwrap_or_else(|| crate::process::payload_text(&*payload).to_owned());
                // The payload's destructor is user code that could panic in turn: forget it.
                std::mem::forget(payload);
                (ctx.on_panic)(i, text);
            }
        }
    }
    Ok(())
}

/// Runs a zero-sized initializer.
pub(crate) fn run_init<F: Fn() + Copy + Send + Sync + 'static>() {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a pool initializer must be a function item or a closure that captures nothing"
        )
    };
    // SAFETY: zero-sized (asserted), a function item or non-capturing closure.
    let f: F = unsafe { conjure::<F>() };
    f()
}

/// The code offset of the trampoline for `F`.
pub(crate) fn chunk_offset<F, T, R>() -> Result<CodeOffset, PoolError>
where
    F: TaskFn<T, R>,
    T: Pod,
    R: Pod,
{
    let f: ChunkFn = run_chunk::<F, T, R>;
    CodeMap::get().and_then(|m| m.offset(f as usize)).map_err(PoolError::Start)
}

/// The code offset of the initializer trampoline for `F`.
pub(crate) fn init_offset<F: Fn() + Copy + Send + Sync + 'static>() -> Result<CodeOffset, PoolError> {
    let f: InitFn = run_init::<F>;
    CodeMap::get().and_then(|m| m.offset(f as usize)).map_err(PoolError::Start)
}

/// In a worker: the chunk trampoline at `offset`, if it lands in the executable's code.
pub(crate) fn chunk_fn(offset: CodeOffset) -> Option<ChunkFn> {
    let addr = CodeMap::get().ok()?.address(offset)?;
    // SAFETY: the parent computed `offset` from a `ChunkFn` of this very executable
    // (`chunk_offset`), and the slot that carried it is written only by the parent before it queues
    // the task; `address` checked that it lands in the executable's code. A corrupted slot could
    // still name another function of the executable: the pool's memory is anonymous and shared
    // only with the pool's own processes (SAFETY.md, "The pool's trust boundary").
    Some(unsafe { std::mem::transmute::<usize, ChunkFn>(addr) })
}

/// In a worker: the initializer trampoline at `offset`.
pub(crate) fn init_fn(offset: CodeOffset) -> Option<InitFn> {
    let addr = CodeMap::get().ok()?.address(offset)?;
    // SAFETY: as in `chunk_fn`, for an `InitFn` computed by `init_offset`.
    Some(unsafe { std::mem::transmute::<usize, InitFn>(addr) })
}
