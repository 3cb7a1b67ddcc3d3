//! Layer 5: the process pool. Worker processes over shared task slots: the parent writes each
//! task's input into a slot in place, a worker writes the result into the same slot, the parent
//! reads it in place. No serialization for `Pod` values; any other data crosses archived with
//! rkyv, read in place too ([archived tasks](#archived-tasks)).
//!
//! ```no_run
//! use ringpool::Pool;
//!
//! fn square(x: &u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(4)?;
//! let squares = pool.map(square, 0..100u64)?;
//! assert_eq!(squares[9], 81);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Tasks
//!
//! A task is a function item or a closure that captures nothing: `fn(&T) -> R` (or a by-value
//! `fn(T) -> R` wrapped in [`by_value`]), with `T` and `R` [`Pod`] (plain bytes: numbers, arrays, `#[repr(C)]` structs of them). Its code
//! crosses to the worker as an offset from the executable's load address (valid in forked and
//! re-executed workers alike); its input and output cross as bytes in a shared slot.
//!
//! # Archived tasks
//!
//! With the feature `archive` (on by default), inputs and outputs may be anything
//! [rkyv](https://docs.rs/rkyv/0.8) archives: `String`, `Vec`, enums with data, `Option`, `Result`,
//! tuples, your own `#[derive(Archive, Serialize, Deserialize)]` structs. A task of
//! [`map_archived`](Pool::map_archived) (and `imap_archived`, `imap_unordered_archived`,
//! `submit_archived`, `apply_archived`) takes `&Archived<T>` and returns an owned `R`:
//!
//! - **In place.** The parent archives each input straight into a slot; the worker validates it
//!   (`rkyv::access`, never `access_unchecked`) and the task reads it where it lies (a
//!   `&ArchivedString` for a `String`, no copy); the worker archives the output into the same slot's
//!   room; the parent checks every offset the worker wrote, validates the output, and deserializes
//!   an owned `R`. A worker that writes garbage fails its items with [`TaskError::InvalidOutput`],
//!   never undefined behaviour.
//! - **Results in place.** [`map_views`](Pool::map_views), [`submit_view`](Pool::submit_view)
//!   (so [`as_completed`] yields views) and the `views()` of the `imap` iterators answer
//!   [`OutputView`]s instead of owned values: validated, derefs to `Archived<R>`, no deserialization
//!   and no allocation per result. A view reads the parent's own copy of its chunk's outputs, not
//!   the slot (which a worker could still write), and outlives the pool.
//! - **Sizes.** A chunk takes items while their archives fit its slot (about half of it, the rest
//!   left for outputs as large as those seen so far). An output that does not fit the room left
//!   sends that item, alone, and the items after it to other slots; nothing is truncated.
//! - **Values larger than a slot** go through a *spill file* (a `memfd`) instead: an input whose
//!   archive does not fit a slot is written into a file the parent holds until the chunk is done,
//!   and the worker reads it into memory of its own; an output that would not fit a slot even alone
//!   is written by the worker into a file it holds until the parent has read it. Each reader opens
//!   the writer's descriptor through `/proc/<pid>/fd`, checks that it is such a file and at least as
//!   long as the slot says, copies the archive out (`pread`, no mapping) and validates it as any
//!   other. Only a value larger than [`max_value_bytes`](PoolBuilder::max_value_bytes) (1 GiB by
//!   default) fails its item, with [`TaskError::TooLarge`] naming both sizes. A spilled value costs
//!   a few copies and system calls more than one in a slot: for many large values, raise
//!   [`slot_bytes`](PoolBuilder::slot_bytes). If a worker dies holding a spilled output the parent
//!   has not read yet, the item runs again. A context or initializer arguments larger than a slot
//!   go into a spill file too, but are *mapped*, not copied (see below).
//! - **Context.** [`map_with`](Pool::map_with) (and `imap_with`, `imap_unordered_with`,
//!   `submit_with`, `apply_with`) archives one value once per call into a slot of its own, which
//!   forked and spawned workers alike map; every task reads it in place:
//!   `fn(&Archived<C>, &Archived<T>) -> R`. A context larger than a slot, up to
//!   [`max_value_bytes`](PoolBuilder::max_value_bytes), is archived once into a spill file the
//!   parent holds for the call (sealed against writing, shrinking and growing), and its slot holds
//!   a record naming it: each worker checks the file's seals and length, maps it read-only
//!   (`mmap`, no copy), validates it once, and keeps that mapping for every chunk of the call that
//!   it runs, so a 100 MB context costs each worker one mapping and one validation, not one per
//!   chunk. The seals are what make this sound: the validated bytes cannot change under a task's
//!   reference, and the mapping cannot fault. Larger than `max_value_bytes`:
//!   [`PoolError::ArchiveTooLarge`] naming both sizes.
//! - **Initializer arguments** (Python's `initargs`):
//!   [`initializer_with`](PoolBuilder::initializer_with) archives them at build into a slot every
//!   worker, replacements included, reads when it starts; arguments larger than a slot go into a
//!   spill file the pool holds for its lifetime, which each worker maps as it starts, as a context.
//! - **starmap**: [`starmap`](Pool::starmap) calls `f(a, b)` (or `f(a, b, c)`) on items `(a, b)`,
//!   deserialized in the worker.
//!
//! ```
//! use ringpool::ring::archive::rkyv::{self, string::ArchivedString, vec::ArchivedVec};
//! use ringpool::{Pool, PoolBuilder};
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
//! #[rkyv(crate = rkyv)]
//! struct Found {
//!     word: String,
//!     hits: Vec<u32>,
//! }
//!
//! /// Where in `lines` (the context) the word (the input) appears.
//! fn find(lines: &ArchivedVec<ArchivedString>, word: &ArchivedString) -> Found {
//!     let hits = (0..lines.len() as u32).filter(|&i| lines[i as usize].contains(word.as_str())).collect();
//!     Found { word: word.to_string(), hits }
//! }
//!
//! fn setup(greeting: &ArchivedString) {
//!     // Every worker runs this when it starts, on the arguments given at build.
//!     assert_eq!(greeting, "hello");
//! }
//!
//! let pool = PoolBuilder::new().workers(2).initializer_with(setup, "hello".to_string()).build()?;
//! let text: Vec<String> = vec!["a cat".into(), "a dog".into(), "cat and dog".into()];
//! let found = pool.map_with(&text, find, ["cat".to_string(), "dog".to_string(), "cow".to_string()])?;
//! assert_eq!(found[0], Found { word: "cat".into(), hits: vec![0, 2] });
//! assert_eq!(found[2].hits, Vec::<u32>::new());
//!
//! fn area(w: f64, h: f64) -> f64 {
//!     w * h
//! }
//! assert_eq!(pool.starmap(area, [(2.0, 3.0), (1.5, 2.0)])?, [6.0, 3.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The derived `Serialize` of inputs and contexts and the `Drop` of inputs run under the pool's
//! lock (when their items are packed into slots); an input type with a hand-written `Serialize`
//! must not use the same pool.
//!
//! # What happens when things go wrong
//!
//! - A task that **panics** fails alone, with the panic's message ([`TaskError::Panicked`]); the
//!   worker goes on.
//! - A worker that **dies** (SIGKILL, abort, segfault) fails only the tasks it was running, with
//!   its pid and signal ([`TaskError::WorkerDied`]); it is replaced, and the same `map` goes on with
//!   the rest. (Python's `Pool` hangs on a killed worker; its `ProcessPoolExecutor` breaks for good.)
//! - A `map` in which some tasks failed returns [`MapError::Tasks`], holding every item's outcome.
//!
//! # Start methods
//!
//! Workers are forked when the pool is built from a single-threaded program, and spawned (the
//! executable re-executed) otherwise ([`StartMethod::Auto`]); see [`crate::process`] for the
//! trade-offs. Spawned workers run the same functions: they need nothing from `main`.
//!
//! # Concurrency
//!
//! A `Pool` may be shared between threads (`Send + Sync`); its operations take turns on one lock.
//! A [`Future`] can be waited on from any thread. None of the caller's code runs under that lock:
//! an input iterator is pulled outside it, so it may be slow, block, or use the same pool (a `map`
//! over an [`imap`](Pool::imap) of the same pool works) without stalling anyone else.
//!
//! # Progress
//!
//! [`imap`](Pool::imap) yields each result as soon as it and those before it are done, so any
//! progress bar that wraps an iterator shows a long map's progress; with
//! [indicatif](https://docs.rs/indicatif) (the `progress` example runs 300 000 tasks so):
//!
//! ```
//! use indicatif::{ProgressBar, ProgressIterator};
//!
//! fn square(x: &u64) -> u64 {
//!     x * x
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = ringpool::Pool::new(2)?;
//! let n = 10_000u64;
//! let bar = ProgressBar::new(n);
//! let mut sum = 0u64;
//! for r in pool.imap(square, 0..n)?.progress_with(bar.clone()) {
//!     sum += r?;
//! }
//! bar.finish();
//! assert_eq!(bar.position(), n);
//! # let _ = sum;
//! # Ok(())
//! # }
//! ```
//!
//! With the feature `tokio`, a [`Future`] is also a [`std::future::Future`]
//! (`pool.submit(f, x)?.await`), and with the feature `tracing` worker starts, deaths and
//! replacements are logged as `tracing` events under the target `ringpool`.

#[cfg(feature = "archive")]
mod archived;
mod engine;
mod error;
mod faults;
mod future;
/// The slot protocol for the model check (`--cfg ringpool_model` builds only).
#[cfg(ringpool_model)]
#[doc(hidden)]
pub mod model_support;
mod panics;
mod slots;
#[cfg(feature = "archive")]
mod spill;
mod task;
mod worker;

use std::sync::{Arc, Mutex, MutexGuard};

use bytemuck::Pod;

#[cfg(feature = "archive")]
#[doc(hidden)]
pub use archived::context_mappings;
#[cfg(feature = "archive")]
pub use archived::{
    ArchivedTask, ContextTask, ImapArchived, ImapUnorderedArchived, ImapUnorderedViews, ImapViews, InitTask,
    OutputView, StarTask,
};
pub use engine::PoolStats;
pub use error::{MapError, PoolError, SharedPoolError, TaskError, TaskFailures, WaitError};
#[doc(hidden)]
pub use faults::{
    FAULT_POINTS, FaultPlan, FaultPoint, SCRIBBLE_INPUTS, SCRIBBLE_OUTPUTS, SCRIBBLE_SPILLED, SCRIBBLE_TABLE,
};
#[cfg(feature = "tokio")]
pub use future::AsyncTask;
pub use future::{AsCompleted, Future, as_completed, wait};
pub use task::{ByValue, TaskFn, by_value};

use engine::{AsAny, Chunk, Dispatch, Engine, PUMP_WAIT, Settings, Sink, Types};
use task::ITEM_OK;

pub use crate::process::StartMethod;
use crate::sync::SpinPolicy;

/// The most workers a pool may have.
pub const MAX_WORKERS: usize = 1024;
/// The most slots a pool may have.
pub const MAX_SLOTS: usize = 1 << 20;
/// The smallest slot: its 64-byte header and 64 bytes of data.
pub const MIN_SLOT_BYTES: usize = slots::SLOT_HEADER + 64;
/// The largest slot.
pub const MAX_SLOT_BYTES: usize = 1 << 30;
/// The default [`PoolBuilder::max_value_bytes`]: 1 GiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 30;
/// The largest [`PoolBuilder::max_value_bytes`]: 4 GiB less 16 bytes (lengths cross in 32 bits).
pub const MAX_VALUE_BYTES: usize = (u32::MAX as usize) & !15;

/// How to build a [`Pool`].
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    /// 0: one per core, asked for only at build time.
    workers: usize,
    chunk_size: Option<usize>,
    max_tasks: u64,
    init: Option<Result<crate::process::code::CodeOffset, String>>,
    /// The initializer's arguments, archived (`initializer_with`), or why they could not be.
    init_args: Option<Result<Vec<u8>, String>>,
    method: StartMethod,
    slots: Option<usize>,
    slot_bytes: usize,
    max_value: usize,
    spin: SpinPolicy,
    faults: FaultPlan,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: 0,
            chunk_size: None,
            max_tasks: 0,
            init: None,
            init_args: None,
            method: StartMethod::Auto,
            slots: None,
            slot_bytes: 16 * 1024,
            max_value: DEFAULT_MAX_VALUE_BYTES,
            spin: SpinPolicy::default(),
            faults: FaultPlan::none(),
        }
    }
}

impl PoolBuilder {
    /// The defaults: one worker per core, automatic chunks, 16 KiB slots.
    pub fn new() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of worker processes (default, or 0: the number of cores), at most [`MAX_WORKERS`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Tasks per chunk (one slot, one message each way), at least 1; a larger value than a slot
    /// holds for a task's types means a slot's worth. Default: about four chunks per worker, as
    /// Python does, bounded by what a slot holds.
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n);
        self
    }

    /// A function every worker runs once when it starts (a function item or a closure that
    /// captures nothing). A worker whose initializer panics dies; it is replaced.
    pub fn initializer<F: Fn() + Copy + Send + Sync + 'static>(mut self, f: F) -> Self {
        let _ = f;
        self.init = Some(task::init_offset::<F>().map_err(|e| e.to_string()));
        self.init_args = None;
        self
    }

    /// Retires and replaces a worker after it ran this many tasks (it finishes its chunk first).
    /// Default (and 0): never.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.max_tasks = n;
        self
    }

    /// How workers are started (default [`StartMethod::Auto`]: fork from a single-threaded
    /// program, spawn otherwise).
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.method = m;
        self
    }

    /// Number of task slots: chunks in flight at once, 1 ..= [`MAX_SLOTS`]. Default: 4 per
    /// worker, at least 16.
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = Some(n);
        self
    }

    /// Bytes per slot (its header included), [`MIN_SLOT_BYTES`] ..= [`MAX_SLOT_BYTES`], rounded up
    /// to a multiple of 64; a chunk's inputs, outputs and a status byte per task must fit.
    /// Default 16 KiB.
    pub fn slot_bytes(mut self, n: usize) -> Self {
        self.slot_bytes = n;
        self
    }

    /// Archived tasks: the largest input or output archive, in bytes (default
    /// [`DEFAULT_MAX_VALUE_BYTES`], 1 GiB; at least the slot size, at most [`MAX_VALUE_BYTES`]).
    /// A value larger than a slot crosses through a spill file (see the
    /// [module docs](self#archived-tasks)); one larger than this fails its item with
    /// [`TaskError::TooLarge`] naming both sizes. A worker never allocates more than this for one
    /// value, nor does the parent for one result.
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value = n;
        self
    }

    /// How long the pool's processes spin before parking when they wait.
    pub fn spin(mut self, spin: SpinPolicy) -> Self {
        self.spin = spin;
        self
    }

    /// Injects faults at the steps of the slot protocol (the pool's own stress tests).
    #[doc(hidden)]
    pub fn fault_plan(mut self, plan: FaultPlan) -> Self {
        self.faults = plan;
        self
    }

    /// Creates the pool's shared memory and starts its workers.
    pub fn build(mut self) -> Result<Pool, PoolError> {
        let out_of_range = |setting, value: u128, limit| Err(PoolError::OutOfRange { setting, value, limit });
        if self.workers == 0 {
            self.workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS);
        }
        if self.workers > MAX_WORKERS {
            return out_of_range("workers", self.workers as u128, "0 (one per core) or 1..=1024");
        }
        if self.chunk_size == Some(0) {
            return out_of_range("chunk_size", 0, "at least 1");
        }
        let slots = self.slots.unwrap_or((self.workers * 4).max(16));
        if !(1..=MAX_SLOTS).contains(&slots) {
            return out_of_range("slots", slots as u128, "1..=1048576");
        }
        if !(MIN_SLOT_BYTES..=MAX_SLOT_BYTES).contains(&self.slot_bytes) {
            return out_of_range("slot_bytes", self.slot_bytes as u128, "128..=1073741824 (1 GiB)");
        }
        // At most MAX_SLOT_BYTES, a multiple of 64: no overflow.
        let slot_bytes = self.slot_bytes.div_ceil(64) * 64;
        if !(slot_bytes..=MAX_VALUE_BYTES).contains(&self.max_value) {
            return out_of_range(
                "max_value_bytes",
                self.max_value as u128,
                "at least slot_bytes (rounded up to 64), at most 4294967280 (4 GiB - 16)",
            );
        }
        let init = match self.init {
            None => None,
            Some(Ok(off)) => Some(off),
            Some(Err(_)) => return Err(PoolError::InvalidSetting("the initializer is not code of this executable")),
        };
        let init_args = match self.init_args {
            None => None,
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(reason)) => return Err(PoolError::Archive { what: "initializer arguments", reason }),
        };
        let settings = Settings {
            workers: self.workers,
            chunk_size: self.chunk_size,
            max_tasks: self.max_tasks,
            init,
            method: self.method,
            slots,
            slot_bytes,
            max_value: self.max_value,
            spin: self.spin,
            faults: self.faults,
            init_args,
        };
        let engine = Engine::new(settings)?;
        Ok(Pool { shared: Arc::new(Shared { engine: Mutex::new(engine) }) })
    }
}

pub(crate) struct Shared {
    engine: Mutex<Engine>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Engine> {
        // No caller's code runs under this lock (input iterators are pulled outside it, and task
        // inputs and results are `Pod`: no destructor, no clone; archived inputs are archived and
        // dropped under it, by their derived `Serialize` and `Drop`, and archived results are
        // validated and deserialized outside it, except a future's); a panic of the pool's own
        // code under it leaves the engine as consistent as any other return.
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A pool of worker processes. See the [module docs](self).
///
/// Dropping the pool waits for every outstanding task, then for the workers to leave (Python's
/// `with ProcessPoolExecutor()` does the same); [`terminate`](Pool::terminate) stops at once.
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Copied out first: the formatter may be the caller's code, which may use this pool.
        let (workers, stats) = {
            let e = self.shared.lock();
            (e.worker_pids(), e.stats)
        };
        f.debug_struct("Pool").field("workers", &workers).field("stats", &stats).finish()
    }
}

/// A map's results in input order, filled as chunks come back.
struct MapSink<R> {
    values: Vec<R>,
    failures: Vec<(usize, TaskError)>,
}

impl<R: Pod + Send> Sink for MapSink<R> {
    fn chunk(&mut self, c: &Chunk<'_>) {
        let end = c.first + c.status.len();
        if self.values.len() < end {
            self.values.resize(end, R::zeroed());
        }
        let out = &mut self.values[c.first..end];
        match bytemuck::try_cast_slice::<u8, R>(c.outputs) {
            Ok(rs) => out.copy_from_slice(rs),
            Err(_) => {
                for (i, o) in out.iter_mut().enumerate() {
                    let sz = std::mem::size_of::<R>();
                    *o = bytemuck::pod_read_unaligned(&c.outputs[i * sz..(i + 1) * sz]);
                }
            }
        }
        for (i, &s) in c.status.iter().enumerate() {
            if s != ITEM_OK {
                self.failures.push((c.first + i, (c.error)(i)));
            }
        }
    }

    fn fail(&mut self, first: usize, count: usize, e: &TaskError) {
        if self.values.len() < first + count {
            self.values.resize(first + count, R::zeroed());
        }
        self.failures.extend((first..first + count).map(|i| (i, e.clone())));
    }
}

impl Pool {
    /// A pool of `workers` processes with the default settings.
    pub fn new(workers: usize) -> Result<Pool, PoolError> {
        PoolBuilder::new().workers(workers).build()
    }

    /// A builder.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// Runs `f` on every input and returns the results in input order. If some tasks fail (panic,
    /// or their worker dies), the others still complete and [`MapError::Tasks`] holds every
    /// item's outcome.
    pub fn map<T, R, F>(&self, f: F, inputs: impl IntoIterator<Item = T>) -> Result<Vec<R>, MapError<R>>
    where
        T: Pod,
        R: Pod + Send,
        F: TaskFn<T, R>,
    {
        let _ = f;
        let sink = self.run_to_end::<T, R, F>(inputs)?;
        if sink.failures.is_empty() {
            return Ok(sink.values);
        }
        let mut results: Vec<Result<R, TaskError>> = sink.values.into_iter().map(Ok).collect();
        for (i, e) in sink.failures {
            if let Some(r) = results.get_mut(i) {
                *r = Err(e);
            }
        }
        Err(MapError::Tasks(TaskFailures::new(results)))
    }

    /// Runs `f` on one input and waits for the result (Python's `apply`).
    pub fn apply<T, R, F>(&self, f: F, input: T) -> Result<R, TaskError>
    where
        T: Pod,
        R: Pod + Send,
        F: TaskFn<T, R>,
    {
        match self.submit(f, input) {
            Ok(fut) => fut.wait(),
            Err(e) => Err(TaskError::from(e)),
        }
    }

    /// Queues one task and returns a [`Future`] for its result at once.
    pub fn submit<T, R, F>(&self, f: F, input: T) -> Result<Future<R>, PoolError>
    where
        T: Pod,
        R: Pod + Send,
        F: TaskFn<T, R>,
    {
        let _ = f;
        let tramp = task::chunk_offset::<F, T, R>()?;
        let types = Types::of::<T, R>();
        let mut e = self.shared.lock();
        e.check_open()?;
        e.chunk_size(Some(1), types)?;
        let job = e.new_job(Box::new(future::FutureSink::<R>::default()));
        e.push_pending(job, tramp, types, bytemuck::bytes_of(&input).to_vec());
        e.flush()?;
        drop(e);
        Ok(Future::new(self.shared.clone(), job))
    }

    /// Like [`map`](Self::map), but results come as an iterator, in input order, each as soon as
    /// it and all before it are done; inputs are taken lazily, as slots free up. Fails at once if
    /// the pool is closed or the task does not fit a slot; a pool failure later in the stream comes
    /// as one `Err(TaskError::Pool(..))` item, after which the iterator ends.
    pub fn imap<T, R, F, I>(&self, f: F, inputs: I) -> Result<Imap<'_, R, I::IntoIter>, PoolError>
    where
        T: Pod,
        R: Pod + Send,
        F: TaskFn<T, R>,
        I: IntoIterator<Item = T>,
    {
        let _ = f;
        Ok(Imap {
            stream: Stream::new::<R, F>(self, inputs.into_iter(), Box::new(OrderedSink::<R>::default()))?,
            _r: std::marker::PhantomData,
        })
    }

    /// Like [`imap`](Self::imap), but each result comes as soon as it is done, with its input's
    /// index. A pool failure later in the stream comes as one item `(usize::MAX,
    /// Err(TaskError::Pool(..)))`, after which the iterator ends.
    pub fn imap_unordered<T, R, F, I>(&self, f: F, inputs: I) -> Result<ImapUnordered<'_, R, I::IntoIter>, PoolError>
    where
        T: Pod,
        R: Pod + Send,
        F: TaskFn<T, R>,
        I: IntoIterator<Item = T>,
    {
        let _ = f;
        Ok(ImapUnordered {
            stream: Stream::new::<R, F>(self, inputs.into_iter(), Box::new(UnorderedSink::<R>::default()))?,
            _r: std::marker::PhantomData,
        })
    }

    /// Stops taking tasks; outstanding ones go on (Python's `close`).
    pub fn close(&self) {
        self.shared.lock().closed = true;
    }

    /// Waits for every outstanding task, then for the workers to leave (Python's `close` then
    /// `join`). The pool takes no tasks afterwards.
    pub fn join(&self) -> Result<(), PoolError> {
        self.shared.lock().shutdown()
    }

    /// Kills every worker now; unfinished tasks fail with [`TaskError::Terminated`].
    pub fn terminate(&self) {
        self.shared.lock().terminate();
    }

    /// Pids of the workers running now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared.lock().worker_pids()
    }

    /// Counters of the pool's life.
    pub fn stats(&self) -> PoolStats {
        self.shared.lock().stats
    }

    /// Dispatches everything and waits for every result. The input iterator is pulled only
    /// while the engine lock is not held (see [`Feeder`]).
    fn run_to_end<T, R, F>(&self, inputs: impl IntoIterator<Item = T>) -> Result<Box<MapSink<R>>, PoolError>
    where
        T: Pod,
        R: Pod + Send,
        F: TaskFn<T, R>,
    {
        let tramp = task::chunk_offset::<F, T, R>()?;
        let types = Types::of::<T, R>();
        let iter = inputs.into_iter();
        let (lo, hi) = iter.size_hint();
        let mut e = self.shared.lock();
        e.check_open()?;
        let chunk = e.chunk_size((Some(lo) == hi).then_some(lo), types)?;
        let job = e.new_job(Box::new(MapSink::<R> { values: Vec::with_capacity(lo), failures: Vec::new() }));
        drop(e);
        let (mut sink, next) = self.drive::<MapSink<R>, _, _>(iter, job, PodDispatch { tramp, types, chunk })?;
        sink.values.truncate(next);
        Ok(sink)
    }

    /// Feeds `job` from `iter` until every item is dispatched and every result is in, then takes
    /// the job's sink; answers it and the number of items. The input iterator is pulled only
    /// while the engine lock is not held (see [`Feeder`]).
    fn drive<S: Sink, I: Iterator, D: Dispatcher<I::Item>>(
        &self,
        iter: I,
        job: usize,
        disp: D,
    ) -> Result<(Box<S>, usize), PoolError> {
        // If the input iterator panics, the job goes with the unwinding (abandoned if items run).
        let mut owned = OwnedJob { shared: &self.shared, job: Some(job) };
        let mut feed = Feeder::new(iter, job, disp);
        let outcome = loop {
            let want = {
                let mut e = self.shared.lock();
                let want = feed.dispatch(&mut e);
                if let Err(err) = e.flush() {
                    break Err(err);
                }
                if want == 0 {
                    if feed.done() && e.remaining(job) == 0 {
                        break Ok(());
                    }
                    if let Err(err) = e.pump(PUMP_WAIT) {
                        break Err(err);
                    }
                }
                want
            };
            // The caller's code, without the lock.
            feed.pull(want);
        };
        owned.job = None;
        let sink = self.shared.lock().take_job(job);
        outcome?;
        let sink =
            sink.and_then(|s: Box<dyn Sink>| AsAny::into_any(s).downcast::<S>().ok()).ok_or(PoolError::Closed)?;
        Ok((sink, feed.next))
    }
}

/// A job that is dropped (abandoned, if items still run) when this goes: the unwinding path of a
/// map whose input iterator panicked.
struct OwnedJob<'a> {
    shared: &'a Shared,
    job: Option<usize>,
}

impl Drop for OwnedJob<'_> {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.shared.lock().drop_job(job);
        }
    }
}

/// How a feeder's buffered items go into slots: as `Pod` values, or archived.
pub(crate) trait Dispatcher<T> {
    /// Under the lock: fills one free slot from the front of `buffer` (the job's items `first..`).
    fn dispatch(
        &mut self,
        e: &mut Engine,
        job: usize,
        first: usize,
        buffer: &mut std::collections::VecDeque<T>,
    ) -> Dispatch;
    /// Items per chunk, at most.
    fn chunk(&self) -> usize;
}

/// `Pod` items, written as they are into a slot.
pub(crate) struct PodDispatch {
    tramp: crate::process::code::CodeOffset,
    types: Types,
    chunk: usize,
}

impl<T: Pod> Dispatcher<T> for PodDispatch {
    #[inline]
    fn dispatch(
        &mut self,
        e: &mut Engine,
        job: usize,
        first: usize,
        buffer: &mut std::collections::VecDeque<T>,
    ) -> Dispatch {
        let mut items = std::iter::from_fn(|| buffer.pop_front());
        e.dispatch_from(job, self.tramp, self.types, first, &mut items, self.chunk)
    }
    fn chunk(&self) -> usize {
        self.chunk
    }
}

/// Feeds a job from the caller's input iterator.
///
/// The iterator is the caller's code: it may be slow, block, or use this very pool (a map over an
/// `imap` of the same pool). So it is never pulled under the engine lock, and while it is pulled
/// this feeder holds no slot either (the iterator may need every slot to make progress). Each
/// round takes, under the lock, as many buffered items as the free slots hold, then, without the
/// lock, pulls as many items as the slots that were free could take; the buffer never holds more.
struct Feeder<I: Iterator, D> {
    inputs: I,
    buffer: std::collections::VecDeque<I::Item>,
    /// The iterator ended.
    exhausted: bool,
    /// Index of the next item to dispatch (items dispatched so far).
    next: usize,
    job: usize,
    disp: D,
}

impl<I, D> Feeder<I, D>
where
    I: Iterator,
    D: Dispatcher<I::Item>,
{
    fn new(inputs: I, job: usize, disp: D) -> Self {
        Feeder { inputs, buffer: Default::default(), exhausted: false, next: 0, job, disp }
    }

    /// Under the lock: dispatches buffered items into free slots. Answers how many items to pull
    /// next: none while items wait in the buffer, once the iterator ended, or when no slot is free.
    fn dispatch(&mut self, e: &mut Engine) -> usize {
        while !self.buffer.is_empty() {
            match self.disp.dispatch(e, self.job, self.next, &mut self.buffer) {
                Dispatch::Sent(n) => self.next += n,
                Dispatch::NoSlot | Dispatch::Exhausted => break,
            }
        }
        if self.buffer.is_empty() && !self.exhausted { e.free_slots().saturating_mul(self.disp.chunk()) } else { 0 }
    }

    /// Without the lock: pulls up to `n` items into the buffer.
    fn pull(&mut self, n: usize) {
        for _ in 0..n {
            match self.inputs.next() {
                Some(t) => self.buffer.push_back(t),
                None => {
                    self.exhausted = true;
                    return;
                }
            }
        }
    }

    /// Every item pulled and dispatched.
    fn done(&self) -> bool {
        self.exhausted && self.buffer.is_empty()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let mut e = self.shared.lock();
        if !e.terminated {
            let _ = e.shutdown();
        }
    }
}

/// Shared by the two lazy iterators: a job fed from an input iterator as slots free up.
struct Stream<'p, I: Iterator, D = PodDispatch> {
    pool: &'p Pool,
    job: Option<usize>,
    feed: Feeder<I, D>,
}

impl<'p, I> Stream<'p, I, PodDispatch>
where
    I: Iterator,
    I::Item: Pod,
{
    fn new<R, F>(pool: &'p Pool, inputs: I, sink: Box<dyn Sink>) -> Result<Stream<'p, I>, PoolError>
    where
        R: Pod + Send,
        F: TaskFn<I::Item, R>,
    {
        let types = Types::of::<I::Item, R>();
        let tramp = task::chunk_offset::<F, I::Item, R>()?;
        let (lo, hi) = inputs.size_hint();
        let mut e = pool.shared.lock();
        e.check_open()?;
        let chunk = e.chunk_size((Some(lo) == hi).then_some(lo), types)?;
        let job = e.new_job(sink);
        drop(e);
        Ok(Stream { pool, job: Some(job), feed: Feeder::new(inputs, job, PodDispatch { tramp, types, chunk }) })
    }
}

impl<'p, I, D> Stream<'p, I, D>
where
    I: Iterator,
    D: Dispatcher<I::Item>,
{
    /// A stream of an existing job.
    #[cfg(feature = "archive")]
    fn resume(pool: &'p Pool, job: usize, inputs: I, disp: D) -> Self {
        Stream { pool, job: Some(job), feed: Feeder::new(inputs, job, disp) }
    }

    /// Drops the job (the pool failed): the stream ends.
    #[cfg(feature = "archive")]
    fn stop(&mut self) {
        if let Some(job) = self.job.take() {
            self.pool.shared.lock().drop_job(job);
        }
    }

    /// Feeds free slots, then waits a little for results, until `take` finds something in the
    /// sink. Answers `None` when nothing is left. The input iterator is pulled without the lock.
    fn step<S: Sink + 'static, X>(
        &mut self,
        mut take: impl FnMut(&mut S) -> Option<X>,
    ) -> Option<Result<X, PoolError>> {
        let job = self.job?;
        loop {
            let want = {
                let mut e = self.pool.shared.lock();
                if let Some(x) = e.sink::<S>(job).and_then(&mut take) {
                    return Some(Ok(x));
                }
                let want = self.feed.dispatch(&mut e);
                if let Err(err) = e.flush() {
                    return Some(Err(err));
                }
                if want == 0 {
                    if self.feed.done() && e.remaining(job) == 0 {
                        // Everything delivered; one last look at the sink.
                        return e.sink::<S>(job).and_then(&mut take).map(Ok);
                    }
                    if let Err(err) = e.pump(PUMP_WAIT) {
                        return Some(Err(err));
                    }
                }
                want
            };
            // The caller's code, without the lock.
            self.feed.pull(want);
        }
    }
}

impl<I: Iterator, D> Drop for Stream<'_, I, D> {
    fn drop(&mut self) {
        if let Some(job) = self.job {
            self.pool.shared.lock().drop_job(job);
        }
    }
}

/// Ordered results: a window from the next index to yield.
struct OrderedSink<R> {
    base: usize,
    window: std::collections::VecDeque<Option<Result<R, TaskError>>>,
}

impl<R> Default for OrderedSink<R> {
    fn default() -> Self {
        OrderedSink { base: 0, window: std::collections::VecDeque::new() }
    }
}

impl<R> OrderedSink<R> {
    fn put(&mut self, i: usize, r: Result<R, TaskError>) {
        let k = i - self.base;
        if self.window.len() <= k {
            self.window.resize_with(k + 1, || None);
        }
        self.window[k] = Some(r);
    }

    fn take(&mut self) -> Option<Result<R, TaskError>> {
        if matches!(self.window.front(), Some(Some(_))) {
            self.base += 1;
            self.window.pop_front().flatten()
        } else {
            None
        }
    }
}

impl<R: Pod + Send> Sink for OrderedSink<R> {
    fn chunk(&mut self, c: &Chunk<'_>) {
        for_each_item::<R>(c, |i, r| self.put(i, r));
    }
    fn fail(&mut self, first: usize, count: usize, e: &TaskError) {
        for i in first..first + count {
            self.put(i, Err(e.clone()));
        }
    }
}

/// Unordered results: a queue in completion order.
struct UnorderedSink<R> {
    ready: std::collections::VecDeque<(usize, Result<R, TaskError>)>,
}

impl<R> Default for UnorderedSink<R> {
    fn default() -> Self {
        UnorderedSink { ready: std::collections::VecDeque::new() }
    }
}

impl<R: Pod + Send> Sink for UnorderedSink<R> {
    fn chunk(&mut self, c: &Chunk<'_>) {
        for_each_item::<R>(c, |i, r| self.ready.push_back((i, r)));
    }
    fn fail(&mut self, first: usize, count: usize, e: &TaskError) {
        self.ready.extend((first..first + count).map(|i| (i, Err(e.clone()))));
    }
}

/// Calls `f(index, result)` for every item of a chunk.
pub(crate) fn for_each_item<R: Pod>(c: &Chunk<'_>, mut f: impl FnMut(usize, Result<R, TaskError>)) {
    let sz = std::mem::size_of::<R>();
    for (i, &s) in c.status.iter().enumerate() {
        let r = if s == ITEM_OK {
            Ok(bytemuck::pod_read_unaligned::<R>(&c.outputs[i * sz..(i + 1) * sz]))
        } else {
            Err((c.error)(i))
        };
        f(c.first + i, r);
    }
}

/// The iterator of [`Pool::imap`]: results in input order.
pub struct Imap<'p, R, I: Iterator> {
    stream: Stream<'p, I>,
    _r: std::marker::PhantomData<fn() -> R>,
}

impl<R: Pod + Send, I: Iterator<Item: Pod>> Iterator for Imap<'_, R, I> {
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.stream.step::<OrderedSink<R>, _>(OrderedSink::take)? {
            Ok(r) => Some(r),
            // The pool failed: report it on the next item and stop.
            Err(e) => {
                if let Some(job) = self.stream.job.take() {
                    self.stream.pool.shared.lock().drop_job(job);
                }
                Some(Err(TaskError::from(e)))
            }
        }
    }
}

/// The iterator of [`Pool::imap_unordered`]: `(input index, result)` in completion order.
pub struct ImapUnordered<'p, R, I: Iterator> {
    stream: Stream<'p, I>,
    _r: std::marker::PhantomData<fn() -> R>,
}

impl<R: Pod + Send, I: Iterator<Item: Pod>> Iterator for ImapUnordered<'_, R, I> {
    type Item = (usize, Result<R, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        match self.stream.step::<UnorderedSink<R>, _>(|s| s.ready.pop_front())? {
            Ok(r) => Some(r),
            Err(e) => {
                if let Some(job) = self.stream.job.take() {
                    self.stream.pool.shared.lock().drop_job(job);
                }
                Some((usize::MAX, Err(TaskError::from(e))))
            }
        }
    }
}
