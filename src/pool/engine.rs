//! The parent's side of the pool: slots, dispatch, results, and worker deaths.
//!
//! ```text
//! parent: slot[i].inputs = T...; state = QUEUED     -> task queue: (i, seq)  -> worker: claim (RUNNING)
//! worker: slot[i].outputs = f(&inputs); state = DONE -> result queue: (i, seq) -> parent: read outputs
//! ```
//!
//! When a worker dies, the parent first takes every result it published, then looks at the slots
//! that name it: a slot it claimed whose message is still in the task queue (it died inside the
//! claim's critical section, so the message is handed out again) goes back to `QUEUED`; a slot it
//! finished but did not announce is delivered; a slot it was running fails with
//! [`TaskError::WorkerDied`]. The parent is the only sender on the task queue, so "still in the
//! queue" is simply "queued at an index at or past the queue's head". The whole state machine of a
//! slot, with who moves it when and why no message is dropped while its slot waits for it, is in
//! the `slots` module.
//!
//! No caller's code runs under the engine's lock: the callers in `mod.rs` pull input iterators
//! outside it (their `Feeder`), and everything else the engine touches is `Pod`.

#[cfg(feature = "archive")]
mod archived;

use crate::sys::atomic::Ordering;
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::error::{PoolError, TaskError};
use super::faults::FaultPoint;
use super::slots::{self, CANCELLED, DONE, DeadSlot, SlotDesc, Slots};
use super::task::ITEM_OK;
use super::worker::{self, WorkerArg};
use crate::process::code::CodeOffset;
use crate::process::{ExitStatus, JoinError as ProcessJoinError, Process, StartMethod};
use crate::ring::queue::{self, Queue};
use crate::ring::{self, RecvTimeoutError, Ring};
use crate::sync::SpinPolicy;

/// How long one pump waits for results before it looks at the workers.
pub(crate) const PUMP_WAIT: Duration = Duration::from_millis(2);
/// How often workers are checked while results keep flowing.
const CHECK_EVERY: Duration = Duration::from_millis(5);
/// How long closing waits for a worker to leave before it kills it.
const WORKER_EXIT_WAIT: Duration = Duration::from_secs(5);

/// The pool's settings, fixed at build time.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub workers: usize,
    pub chunk_size: Option<usize>,
    pub max_tasks: u64,
    pub init: Option<CodeOffset>,
    pub method: StartMethod,
    pub slots: usize,
    pub slot_bytes: usize,
    /// The largest archived value (`PoolBuilder::max_value_bytes`).
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    pub max_value: usize,
    pub spin: SpinPolicy,
    pub faults: super::faults::FaultPlan,
    /// The initializer's arguments, archived (`initializer_with`): copied into a slot of their own
    /// at build, where every worker reads them.
    pub init_args: Option<Vec<u8>>,
}

/// Sizes and alignments of a task's input and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Types {
    pub size_t: usize,
    pub align_t: usize,
    pub size_r: usize,
    pub align_r: usize,
}

impl Types {
    pub(crate) fn of<T: Pod, R: Pod>() -> Types {
        Types {
            size_t: std::mem::size_of::<T>(),
            align_t: std::mem::align_of::<T>(),
            size_r: std::mem::size_of::<R>(),
            align_r: std::mem::align_of::<R>(),
        }
    }
}

/// One finished chunk, as a sink sees it.
pub(crate) struct Chunk<'a> {
    /// Index (within its job) of the chunk's first item.
    pub first: usize,
    /// `count * size_of::<R>()` bytes of outputs.
    pub outputs: &'a [u8],
    /// One status byte per item ([`ITEM_OK`] or not).
    pub status: &'a [u8],
    /// Per item: the error of an item whose status is not OK.
    pub error: &'a dyn Fn(usize) -> TaskError,
}

/// A sink as `Any`, to take its concrete type back (every sink has it, through the blanket impl).
/// Call it on the `dyn Sink` itself: a `Box<dyn Sink>` is `Any` too, and would answer as the box.
pub(crate) trait AsAny {
    fn as_any(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Any> AsAny for T {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Where a job's results go: a map's vector, an iterator's buffer, a future's cell.
pub(crate) trait Sink: AsAny + Send + 'static {
    /// A chunk finished.
    fn chunk(&mut self, c: &Chunk<'_>);
    /// Items `first..first + count` failed without running.
    fn fail(&mut self, first: usize, count: usize, e: &TaskError);
    /// One item of an archived chunk finished (archived jobs only): its output's bytes, copied
    /// out of the slot and not yet validated, or its error.
    #[cfg(feature = "archive")]
    fn archived(&mut self, index: usize, r: Result<super::archived::RawOut, TaskError>) {
        let _ = (index, r);
    }
}

struct JobEntry {
    sink: Box<dyn Sink>,
    /// Items dispatched or pending and not yet finished.
    remaining: usize,
    /// Nobody will read the results (a dropped future or iterator): remove when finished.
    abandoned: bool,
    /// The slot holding the job's context (archived tasks with a context): back to the free list
    /// when the job goes.
    ctx_slot: Option<u32>,
    /// A context larger than a slot: its spill file (the slot holds a record naming it), closed
    /// when the job goes.
    ctx_spill: Option<std::os::fd::OwnedFd>,
    /// Archived jobs: bytes an output is expected to take (from the outputs seen so far), to
    /// leave room for them when packing inputs.
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    out_est: usize,
}

/// A task waiting for a free slot (futures).
struct Pending {
    job: usize,
    tramp: CodeOffset,
    types: Types,
    input: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    seq: u32,
    job: usize,
    first: usize,
    count: usize,
    /// The task queue index of its message (set when sent).
    queue_index: u64,
    sent: bool,
    size_r: usize,
    /// An archived chunk: its items are in `Engine::arch[slot]`.
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    archived: bool,
}

/// What the parent wrote into a slot for an archived chunk (it never reads back its own layout
/// from shared memory).
#[cfg(feature = "archive")]
struct ArchSlot {
    desc: SlotDesc,
    /// Each item's index in its job.
    indices: Vec<usize>,
    /// Each item's input archive: offset in the data area, length.
    inputs: Vec<(u32, u32)>,
    /// Retries each item had (overflows of the items before it).
    tries: Vec<u8>,
    /// A single item re-dispatched alone after its output overflowed: another overflow is final.
    alone: bool,
    spec: ArchSpec,
    /// The spill files of the inputs too large for the slot (item, file), kept open until the
    /// chunk is delivered: the worker reads them through `/proc/<parent>/fd`.
    spills: Vec<(usize, super::spill::Spill)>,
}

/// How an archived job's chunks run: the trampoline, and where its context lies.
#[cfg(feature = "archive")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ArchSpec {
    pub tramp: CodeOffset,
    /// The context's slot and archive length.
    pub ctx: Option<(u32, u32)>,
}

/// An archived item to dispatch again (its output overflowed, or it was skipped after one that
/// did), or a submitted one waiting for a slot.
#[cfg(feature = "archive")]
pub(crate) struct Retry {
    pub job: usize,
    pub index: usize,
    pub bytes: rkyv::util::AlignedVec<16>,
    pub spec: ArchSpec,
    pub alone: bool,
    pub tries: u8,
    /// An input too large for a slot: its spill file (`bytes` is then empty).
    pub spill: Option<super::spill::Spill>,
}

/// Skips after which an item is failed (only a worker that misbehaves skips an item that often).
#[cfg(feature = "archive")]
const MAX_TRIES: u8 = 16;

struct Worker {
    process: Process,
}

/// Counters of a pool's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Tasks that returned a result.
    pub completed: u64,
    /// Tasks that failed (panicked, lost with a worker, cancelled, terminated).
    pub failed: u64,
    /// Chunks sent to workers.
    pub chunks: u64,
    /// Workers started, replacements included.
    pub workers_started: u64,
    /// Workers that died (killed, crashed) and were replaced.
    pub workers_died: u64,
    /// Workers that retired after their task limit and were replaced.
    pub workers_retired: u64,
    /// Archived items dispatched again because an output did not fit the room its chunk left
    /// (the item itself, alone, and the items after it in its chunk), or because the worker
    /// holding its spilled output died before the parent read it.
    pub redispatched: u64,
    /// Archived inputs larger than a slot, sent through a spill file.
    pub spilled_inputs: u64,
    /// Archived outputs larger than a slot, read from a worker's spill file.
    pub spilled_outputs: u64,
    /// Contexts (and initializer arguments) larger than a slot, put into a spill file that every
    /// worker maps.
    pub spilled_contexts: u64,
}

/// Whether one dispatch attempt sent a chunk.
pub(crate) enum Dispatch {
    Sent(usize),
    NoSlot,
    Exhausted,
}

pub(crate) struct Engine {
    pub settings: Settings,
    slots: std::sync::Arc<Slots>,
    tasks: Queue<u64>,
    results: Queue<u64>,
    errors: Ring,
    tasks_tx: Option<queue::Sender<u64>>,
    results_rx: queue::Receiver<u64>,
    errors_rx: ring::Receiver,
    free: Vec<u32>,
    inflight: Vec<Option<Inflight>>,
    seq: Vec<u32>,
    pushed: u64,
    outbox: Vec<u64>,
    pending: VecDeque<Pending>,
    jobs: Vec<Option<JobEntry>>,
    free_jobs: Vec<usize>,
    workers: Vec<Worker>,
    panics: HashMap<(u32, u32, u32), (u32, String)>,
    /// Jobs in the order they finished, for `as_completed`: readers keep a position in it.
    done_log: VecDeque<usize>,
    /// Absolute position of `done_log[0]`.
    done_base: u64,
    last_check: Instant,
    pub closed: bool,
    pub terminated: bool,
    pub stats: PoolStats,
    /// Slots held by contexts of running jobs.
    ctx_held: usize,
    /// The slot holding the initializer's arguments, and their length (`CTX_RECORD | SPILLED`
    /// when the slot holds a record naming a spill file).
    init_args: Option<(u32, u32)>,
    /// Initializer arguments larger than a slot: their spill file, held for the pool's lifetime
    /// (only kept open, never read here).
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    init_spill: Option<std::os::fd::OwnedFd>,
    /// The last id given to a spilled context (each gets its own, so that a worker's cached
    /// mapping is never taken for another context whose file got the same descriptor number).
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    ctx_ids: u64,
    #[cfg(feature = "archive")]
    arch: Vec<Option<ArchSlot>>,
    #[cfg(feature = "archive")]
    retries: VecDeque<Retry>,
    /// Scratch space for archiving inputs and contexts.
    #[cfg(feature = "archive")]
    arena: rkyv::ser::allocator::Arena,
}

impl Engine {
    pub(crate) fn new(settings: Settings) -> Result<Engine, PoolError> {
        let queue_slots = settings.slots.next_power_of_two().max(2);
        let extra = usize::from(settings.init_args.is_some());
        let slots = Slots::create(settings.slots + extra, settings.slot_bytes)?;
        let mut init_args = None;
        #[cfg_attr(not(feature = "archive"), allow(unused_mut))]
        let mut init_spill = None;
        #[cfg_attr(not(feature = "archive"), allow(unused_mut))]
        let mut stats = PoolStats::default();
        if let Some(args) = &settings.init_args {
            let (available, max) = (slots.data_len(), settings.max_value);
            if args.len() > max {
                return Err(PoolError::ArchiveTooLarge {
                    what: "initializer arguments",
                    needed: args.len(),
                    available: max,
                });
            }
            let slot = settings.slots;
            if args.len() <= available {
                // SAFETY: the slot past the task slots is the arguments' own: no task is ever queued
                // in it and no worker runs yet; `args` fits its data area (checked above).
                unsafe { std::ptr::copy_nonoverlapping(args.as_ptr(), slots.data(slot), args.len()) };
                init_args = Some((slot as u32, args.len() as u32));
            } else {
                #[cfg(feature = "archive")]
                {
                    let (record, spill) = archived::spill_init_args(args)?;
                    // The arguments are larger than the data area, so their record (fewer bytes) fits it.
                    let record = &record[..record.len().min(available)];
                    // SAFETY: as above; `record` fits the data area (at most `available` bytes).
                    unsafe { std::ptr::copy_nonoverlapping(record.as_ptr(), slots.data(slot), record.len()) };
                    init_args = Some((slot as u32, record.len() as u32 | super::spill::SPILLED));
                    init_spill = Some(spill);
                    stats.spilled_contexts += 1;
                }
                #[cfg(not(feature = "archive"))]
                return Err(PoolError::ArchiveTooLarge {
                    what: "initializer arguments",
                    needed: args.len(),
                    available,
                });
            }
        }
        let tasks = Queue::<u64>::builder().slots(queue_slots).spin(settings.spin).anonymous()?;
        let results = Queue::<u64>::builder().slots(queue_slots).spin(settings.spin).anonymous()?;
        let errors = Ring::builder().capacity(16 * 1024).spin(settings.spin).anonymous()?;
        let tasks_tx = tasks.sender()?;
        let results_rx = results.receiver()?;
        let errors_rx = errors.receiver()?;
        let n = settings.slots;
        let mut engine = Engine {
            free: (0..n as u32).rev().collect(),
            inflight: vec![None; n],
            seq: vec![0; n],
            slots: std::sync::Arc::new(slots),
            tasks,
            results,
            errors,
            tasks_tx: Some(tasks_tx),
            results_rx,
            errors_rx,
            pushed: 0,
            outbox: Vec::new(),
            pending: VecDeque::new(),
            jobs: Vec::new(),
            free_jobs: Vec::new(),
            workers: Vec::new(),
            panics: HashMap::new(),
            done_log: VecDeque::new(),
            done_base: 0,
            last_check: Instant::now(),
            closed: false,
            terminated: false,
            stats,
            ctx_held: 0,
            init_args,
            init_spill,
            ctx_ids: 1,
            #[cfg(feature = "archive")]
            arch: (0..n).map(|_| None).collect(),
            #[cfg(feature = "archive")]
            retries: VecDeque::new(),
            #[cfg(feature = "archive")]
            arena: rkyv::ser::allocator::Arena::new(),
            settings,
        };
        let fork = engine.fork_now()?;
        if fork {
            // Read the executable's code map now, so that forked workers inherit it instead of
            // each parsing /proc/self/maps on its first task.
            crate::process::code::CodeMap::get()?;
        }
        for _ in 0..engine.settings.workers {
            engine.start_worker(fork)?;
        }
        Ok(engine)
    }

    /// Whether workers started now are forked (else spawned): by the start method, and for
    /// `Auto` by whether this thread is the process's only one. Refuses `Fork` in a threaded
    /// process.
    fn fork_now(&self) -> Result<bool, PoolError> {
        let alone = crate::process::ProcessBuilder::may_fork();
        match self.settings.method {
            StartMethod::Spawn => Ok(false),
            StartMethod::Fork if !alone => Err(PoolError::Start(crate::process::StartError::Threaded { threads: 0 })),
            StartMethod::Fork | StartMethod::Auto => Ok(alone),
        }
    }

    /// Starts one worker, forked (`fork`: checked by [`fork_now`](Self::fork_now) just before,
    /// with no thread started since) or spawned.
    fn start_worker(&mut self, fork: bool) -> Result<(), PoolError> {
        self.stats.workers_started += 1;
        let name = format!("PoolWorker-{}", self.stats.workers_started);
        let builder = Process::builder().name(name).no_start_wait();
        if fork {
            let setup = worker::Setup {
                slots: self.slots.clone(),
                tasks: self.tasks.clone(),
                results: self.results.clone(),
                errors: self.errors.clone(),
                max_tasks: self.settings.max_tasks,
                init: self.settings.init,
                init_args: self.init_args,
                faults: self.settings.faults,
                max_value: self.settings.max_value as u32,
                close_fds: self.spill_fds(),
            };
            // SAFETY: `fork_now` found this thread to be the process's only one, and since then
            // this thread started none (the pool starts no thread): the child inherits no lock
            // held by a thread it lacks. The worker forgets the ring handles it inherits and
            // uses only its clones of the pool's own mappings.
            let process = unsafe { builder.forget_ring_handles().fork_unchecked(move || worker::run_forked(setup)) }?;
            crate::trace::event!(info, pid = process.pid(), spawned = false, "pool worker started");
            self.workers.push(Worker { process });
            return Ok(());
        }
        self.spawn_worker(builder)
    }

    /// The spill files the parent holds open right now (a forked worker closes its copies).
    fn spill_fds(&self) -> Vec<i32> {
        #[cfg(feature = "archive")]
        {
            use std::os::fd::AsRawFd;
            let held = self.arch.iter().flatten().flat_map(|a| a.spills.iter().map(|(_, s)| s.fd.as_raw_fd()));
            let contexts = self.jobs.iter().flatten().filter_map(|j| j.ctx_spill.as_ref().map(AsRawFd::as_raw_fd));
            held.chain(self.retries.iter().filter_map(|r| r.spill.as_ref().map(|s| s.fd.as_raw_fd())))
                .chain(contexts)
                .chain(self.init_spill.as_ref().map(AsRawFd::as_raw_fd))
                .collect()
        }
        #[cfg(not(feature = "archive"))]
        Vec::new()
    }

    /// Starts one worker by re-executing this binary, handing it the pool's descriptors.
    fn spawn_worker(&mut self, builder: crate::process::ProcessBuilder) -> Result<(), PoolError> {
        let arg = WorkerArg {
            fds: [self.slots.fd(), self.tasks.fd(), self.results.fd(), self.errors.fd()].map(|fd| {
                use std::os::fd::AsRawFd;
                fd.as_raw_fd()
            }),
            max_tasks: self.settings.max_tasks,
            init: self.settings.init.unwrap_or(0),
            has_init: match (self.settings.init, self.init_args) {
                (None, _) => 0,
                (Some(_), None) => 1,
                (Some(_), Some(_)) => 2,
            },
            _pad: 0,
            spin_ns: u64::try_from(self.settings.spin.budget().as_nanos()).unwrap_or(u64::MAX),
            faults: self.settings.faults,
            init_args_slot: self.init_args.map_or(0, |a| a.0),
            init_args_len: self.init_args.map_or(0, |a| a.1),
            max_value: self.settings.max_value as u32,
        };
        let fds = [self.slots.fd(), self.tasks.fd(), self.results.fd(), self.errors.fd()];
        let process =
            builder.start_method(StartMethod::Spawn).spawn_raw(worker::start, bytemuck::bytes_of(&arg), &fds)?;
        crate::trace::event!(info, pid = process.pid(), spawned = true, "pool worker started");
        self.workers.push(Worker { process });
        Ok(())
    }

    /// Slots free right now.
    pub(crate) fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Pids of the running workers.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.process.pid()).collect()
    }

    pub(crate) fn check_open(&self) -> Result<(), PoolError> {
        if self.closed || self.terminated { Err(PoolError::Closed) } else { Ok(()) }
    }

    /// The chunk size for `len` items (if known) of these types.
    pub(crate) fn chunk_size(&self, len: Option<usize>, types: Types) -> Result<usize, PoolError> {
        if types.align_t > slots::MAX_ALIGN || types.align_r > slots::MAX_ALIGN {
            return Err(PoolError::AlignmentTooLarge);
        }
        let data_len = self.slots.data_len();
        let cap = SlotDesc::capacity(types.size_t, types.size_r, types.align_r, data_len);
        if cap == 0 {
            return Err(PoolError::TaskTooLarge { needed: types.size_t + types.size_r + 1, available: data_len });
        }
        let wanted = match (self.settings.chunk_size, len) {
            (Some(c), _) => c,
            // Python's rule: about four chunks per worker.
            (None, Some(n)) => n.div_ceil(self.settings.workers.max(1) * 4),
            (None, None) => 16,
        };
        Ok(wanted.clamp(1, cap))
    }

    pub(crate) fn new_job(&mut self, sink: Box<dyn Sink>) -> usize {
        let entry = JobEntry { sink, remaining: 0, abandoned: false, ctx_slot: None, ctx_spill: None, out_est: 64 };
        match self.free_jobs.pop() {
            Some(i) => {
                self.jobs[i] = Some(entry);
                i
            }
            None => {
                self.jobs.push(Some(entry));
                self.jobs.len() - 1
            }
        }
    }

    /// Items of `job` not finished yet.
    pub(crate) fn remaining(&self, job: usize) -> usize {
        self.jobs.get(job).and_then(Option::as_ref).map_or(0, |j| j.remaining)
    }

    /// The job's sink, to read results from.
    pub(crate) fn sink<S: Sink + 'static>(&mut self, job: usize) -> Option<&mut S> {
        let sink: &mut dyn Sink = &mut *self.jobs.get_mut(job)?.as_mut()?.sink;
        // Through the trait object (not `Box<dyn Sink>`, which is itself `Any`): see `AsAny`.
        AsAny::as_any(sink).downcast_mut::<S>()
    }

    /// Removes a finished job and hands back its sink; an unfinished one is abandoned instead.
    pub(crate) fn take_job(&mut self, job: usize) -> Option<Box<dyn Sink>> {
        let entry = self.jobs.get_mut(job)?.take()?;
        if entry.remaining == 0 {
            self.free_jobs.push(job);
            self.release_context(entry.ctx_slot);
            drop(entry.ctx_spill);
            Some(entry.sink)
        } else {
            self.jobs[job] = Some(JobEntry { abandoned: true, ..entry });
            None
        }
    }

    /// Removes a job (its results are taken or unwanted). If items are still running, it stays
    /// until they finish, abandoned.
    pub(crate) fn drop_job(&mut self, job: usize) {
        if let Some(Some(entry)) = self.jobs.get_mut(job) {
            if entry.remaining == 0 {
                let ctx = entry.ctx_slot;
                self.jobs[job] = None;
                self.free_jobs.push(job);
                self.release_context(ctx);
            } else {
                entry.abandoned = true;
            }
        }
    }

    /// A finished job's context slot goes back to the free list: every chunk that named it has
    /// settled, so no worker reads it any more (a worker reads a context only while it holds a
    /// chunk of the job, and the job finished only once each of its chunks was delivered, failed
    /// with its dead worker, or cancelled before any worker claimed it).
    fn release_context(&mut self, ctx: Option<u32>) {
        if let Some(slot) = ctx {
            self.ctx_held = self.ctx_held.saturating_sub(1);
            self.free.push(slot);
        }
    }

    /// Fills one free slot with up to `chunk` items from `items` and queues it (the message goes
    /// out at the next flush).
    pub(crate) fn dispatch_from<T: Pod>(
        &mut self,
        job: usize,
        tramp: CodeOffset,
        types: Types,
        first: usize,
        items: &mut impl Iterator<Item = T>,
        chunk: usize,
    ) -> Dispatch {
        let Some(slot) = self.free.pop() else {
            return Dispatch::NoSlot;
        };
        let slot = slot as usize;
        let data = self.slots.data(slot).cast::<T>();
        let mut n = 0;
        while n < chunk {
            let Some(t) = items.next() else { break };
            // SAFETY: the slot is FREE and ours (popped from the free list): no worker reads it.
            // `n < chunk <= capacity`, so the input lies in the data area, which is 64-aligned
            // (align_of::<T>() <= 64 was checked by chunk_size).
            unsafe { data.wrapping_add(n).write(t) };
            n += 1;
        }
        if n == 0 {
            self.free.push(slot as u32);
            return Dispatch::Exhausted;
        }
        self.queue_slot(slot, job, tramp, types, first, n);
        Dispatch::Sent(n)
    }

    /// Describes a slot whose inputs are written and puts its message in the outbox.
    fn queue_slot(&mut self, slot: usize, job: usize, tramp: CodeOffset, types: Types, first: usize, n: usize) {
        let Some(mut desc) =
            SlotDesc::layout(n, (types.size_t, types.align_t), (types.size_r, types.align_r), self.slots.data_len())
        else {
            // Cannot happen: n is at most the capacity computed for these types.
            self.free.push(slot as u32);
            self.fail_items(job, first, n, &TaskError::Terminated);
            return;
        };
        self.seq[slot] = self.seq[slot].wrapping_add(1);
        desc.seq = self.seq[slot];
        desc.tramp = tramp;
        self.slots.publish_queued(slot, &desc);
        self.inflight[slot] = Some(Inflight {
            seq: desc.seq,
            job,
            first,
            count: n,
            queue_index: 0,
            sent: false,
            size_r: types.size_r,
            archived: false,
        });
        self.outbox.push(worker::message(slot as u32, desc.seq));
        if let Some(Some(j)) = self.jobs.get_mut(job) {
            j.remaining += n;
        }
        self.stats.chunks += 1;
    }

    /// Queues a single task for a free slot (futures): dispatched at once if a slot is free.
    pub(crate) fn push_pending(&mut self, job: usize, tramp: CodeOffset, types: Types, input: Vec<u8>) {
        if let Some(Some(j)) = self.jobs.get_mut(job) {
            j.remaining += 1;
        }
        self.pending.push_back(Pending { job, tramp, types, input });
        self.dispatch_pending();
    }

    /// Fails every item of an in-flight chunk with `e` (its items' indices are its own when it is
    /// an archived chunk).
    fn fail_slot_items(&mut self, slot: usize, inf: Inflight, e: &TaskError) {
        #[cfg(feature = "archive")]
        if inf.archived {
            let indices = self.arch.get_mut(slot).and_then(Option::take).map(|a| a.indices).unwrap_or_default();
            for i in indices {
                self.fail_items(inf.job, i, 1, e);
            }
            return;
        }
        let _ = slot;
        self.fail_items(inf.job, inf.first, inf.count, e);
    }

    fn dispatch_pending(&mut self) {
        #[cfg(feature = "archive")]
        self.dispatch_retries();
        while !self.pending.is_empty() {
            let Some(slot) = self.free.pop() else { return };
            let Some(p) = self.pending.pop_front() else { return };
            let slot = slot as usize;
            let data = self.slots.data(slot);
            let len = p.input.len().min(self.slots.data_len());
            // SAFETY: the slot is ours (FREE, from the free list); `len` fits its data area.
            unsafe { std::ptr::copy_nonoverlapping(p.input.as_ptr(), data, len) };
            // The item was counted when it was pushed: queue_slot counts it again, so undo.
            if let Some(Some(j)) = self.jobs.get_mut(p.job) {
                j.remaining -= 1;
            }
            self.queue_slot(slot, p.job, p.tramp, p.types, 0, 1);
        }
    }

    /// Sends the outbox on the task queue.
    pub(crate) fn flush(&mut self) -> Result<(), PoolError> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let Some(tx) = &self.tasks_tx else {
            return Err(PoolError::Closed);
        };
        let sent = match tx.try_send_many(&self.outbox) {
            Ok(n) => n,
            Err(crate::ring::TrySendError::Broken(_, b)) => return Err(PoolError::Broken(b)),
            // Full cannot happen (the queue holds every slot); Disconnected means no worker is
            // registered right now: keep the messages for the next flush.
            Err(_) => 0,
        };
        for (k, msg) in self.outbox.drain(..sent).enumerate() {
            let (slot, _) = worker::split(msg);
            if let Some(inf) = &mut self.inflight[slot] {
                inf.queue_index = self.pushed + k as u64;
                inf.sent = true;
            }
        }
        self.pushed += sent as u64;
        Ok(())
    }

    /// Waits up to `wait` for results and handles them; checks on the workers now and then.
    /// Answers how many chunks finished.
    pub(crate) fn pump(&mut self, wait: Duration) -> Result<usize, PoolError> {
        self.dispatch_pending();
        self.flush()?;
        let mut buf = [0u64; 64];
        let n = match self.results_rx.recv_many_timeout(&mut buf, wait) {
            Ok(n) => n,
            Err(RecvTimeoutError::Broken(b)) => return Err(PoolError::Broken(b)),
            Err(RecvTimeoutError::Disconnected) => {
                // No worker is a member right now: they are being replaced, or all died.
                self.check_workers()?;
                std::thread::sleep(Duration::from_micros(200));
                0
            }
            Err(_) => 0,
        };
        if n > 0 {
            self.drain_panics();
            for &msg in &buf[..n] {
                self.complete(msg);
            }
            self.dispatch_pending();
        }
        if n == 0 || self.last_check.elapsed() >= CHECK_EVERY {
            self.check_workers()?;
        }
        Ok(n)
    }

    /// Takes every panic report in the panic ring.
    fn drain_panics(&mut self) {
        let panics = &mut self.panics;
        let _ = self.errors_rx.try_recv_many(usize::MAX, |m| {
            if m.len() >= 16 {
                let word = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
                let text = String::from_utf8_lossy(&m[16..]).into_owned();
                panics.insert((word(0), word(4), word(8)), (word(12), text));
            }
        });
    }

    /// A result message arrived: deliver the slot's outputs and free it.
    fn complete(&mut self, msg: u64) {
        let (slot, seq) = worker::split(msg);
        let Some(Some(inf)) = self.inflight.get(slot).copied() else { return };
        if inf.seq != seq {
            return;
        }
        let w = self.slots.state(slot).load(Ordering::Acquire);
        match slots::stage(w) {
            DONE => self.deliver(slot, inf, slots::owner(w), None),
            // The acknowledgement of a cancelled task: its items were failed at cancel time.
            CANCELLED => self.free_slot(slot),
            _ => {}
        }
    }

    /// Hands a slot's outputs to its job and frees the slot. `death`: the worker died before it
    /// finished the chunk; items it marked done are delivered, the others fail with its death.
    fn deliver(&mut self, slot: usize, inf: Inflight, pid: u32, death: Option<ExitStatus>) {
        #[cfg(feature = "archive")]
        if inf.archived {
            self.deliver_archived(slot, inf, pid, death);
            return;
        }
        let desc = self.slots.read_desc(slot);
        let data = self.slots.data(slot);
        if desc.fits(self.slots.data_len()) && desc.count as usize == inf.count {
            // SAFETY: the worker published DONE (Release; we loaded it with Acquire) after writing
            // outputs and status bytes, or it is dead (reaped: every store it made is done, and
            // an item's status byte is written after its output); no one writes the slot until
            // we free it; `fits` checked the ranges against the data area.
            let outputs =
                unsafe { std::slice::from_raw_parts(data.wrapping_add(desc.out_off as usize), inf.count * inf.size_r) };
            // SAFETY: as above, for the status bytes.
            let status = unsafe { std::slice::from_raw_parts(data.wrapping_add(desc.status_off as usize), inf.count) };
            let panics = &mut self.panics;
            let mut errors: HashMap<usize, TaskError> = HashMap::new();
            for (i, &s) in status.iter().enumerate() {
                if s == ITEM_OK {
                    continue;
                }
                let e = match (s, death) {
                    (super::task::ITEM_PANICKED, _) => TaskError::Panicked {
                        pid,
                        message: panics
                            .remove(&(slot as u32, inf.seq, i as u32))
                            .map_or_else(|| "task did not report its panic".to_owned(), |(_, text)| text),
                    },
                    (_, Some(status)) => TaskError::WorkerDied { pid, status },
                    (_, None) => TaskError::Terminated,
                };
                errors.insert(i, e);
            }
            let failed = errors.len();
            let error = |i: usize| errors.get(&i).cloned().unwrap_or(TaskError::Terminated);
            if let Some(Some(job)) = self.jobs.get_mut(inf.job) {
                job.sink.chunk(&Chunk { first: inf.first, outputs, status, error: &error });
            }
            self.stats.completed += (inf.count - failed) as u64;
            self.stats.failed += failed as u64;
            self.finish_items(inf.job, inf.count);
        } else {
            self.fail_items(inf.job, inf.first, inf.count, &TaskError::Terminated);
        }
        self.free_slot(slot);
    }

    fn free_slot(&mut self, slot: usize) {
        self.slots.free(slot);
        self.inflight[slot] = None;
        #[cfg(feature = "archive")]
        {
            self.arch[slot] = None;
        }
        self.free.push(slot as u32);
    }

    fn finish_items(&mut self, job: usize, n: usize) {
        if let Some(Some(j)) = self.jobs.get_mut(job) {
            j.remaining = j.remaining.saturating_sub(n);
            if j.remaining == 0 {
                if j.abandoned {
                    let ctx = j.ctx_slot;
                    self.jobs[job] = None;
                    self.free_jobs.push(job);
                    self.release_context(ctx);
                } else {
                    self.log_done(job);
                }
            }
        }
    }

    /// Records that `job` finished. The log keeps the last million entries; a reader that fell
    /// further behind rescans its jobs instead.
    fn log_done(&mut self, job: usize) {
        const KEEP: usize = 1 << 20;
        if self.done_log.len() >= 2 * KEEP {
            self.done_log.drain(..KEEP);
            self.done_base += KEEP as u64;
        }
        self.done_log.push_back(job);
    }

    /// Jobs finished since absolute log position `from`, and the position after them; `None` if
    /// `from` was trimmed away.
    pub(crate) fn done_since(&self, from: u64) -> Option<(impl Iterator<Item = usize> + '_, u64)> {
        let skip = usize::try_from(from.checked_sub(self.done_base)?).ok()?;
        let end = self.done_base + self.done_log.len() as u64;
        Some((self.done_log.iter().skip(skip).copied(), end))
    }

    /// The log position right now.
    pub(crate) fn done_position(&self) -> u64 {
        self.done_base + self.done_log.len() as u64
    }

    /// Whether `job` has finished (or is unknown).
    pub(crate) fn is_finished(&self, job: usize) -> bool {
        self.remaining(job) == 0
    }

    fn fail_items(&mut self, job: usize, first: usize, n: usize, e: &TaskError) {
        if let Some(Some(j)) = self.jobs.get_mut(job) {
            j.sink.fail(first, n, e);
        }
        self.stats.failed += n as u64;
        self.finish_items(job, n);
    }

    /// Looks for ended workers; handles their slots and replaces them.
    pub(crate) fn check_workers(&mut self) -> Result<(), PoolError> {
        self.last_check = Instant::now();
        let mut k = 0;
        while k < self.workers.len() {
            let status = match self.workers[k].process.try_join() {
                Ok(None) => {
                    k += 1;
                    continue;
                }
                Ok(Some(status)) => status,
                // Died of a panic outside any task (an initializer's, say).
                Err(ProcessJoinError::Panicked { .. }) => ExitStatus::Code(101),
                Err(_) => ExitStatus::Code(-1),
            };
            let w = self.workers.swap_remove(k);
            let pid = w.process.pid();
            if status.success() {
                self.stats.workers_retired += 1;
            } else {
                self.stats.workers_died += 1;
            }
            self.handle_exit(pid, status);
            crate::trace::event!(warn, pid, status = %status, died = !status.success(), "pool worker ended");
            if !self.terminated && (!self.closed || self.tasks_tx.is_some()) {
                // A replacement; if it cannot start now, the next check tries again.
                if let Ok(fork) = self.fork_now() {
                    let _ = self.start_worker(fork);
                    crate::trace::event!(info, replaced = pid, "pool worker replaced");
                }
            }
        }
        if self.workers.is_empty() && !self.terminated && self.tasks_tx.is_some() {
            return Err(PoolError::NoWorkers);
        }
        Ok(())
    }

    /// A worker ended: settle every slot that names it.
    fn handle_exit(&mut self, pid: u32, status: ExitStatus) {
        // Everything it published is visible now that it is gone: take it first.
        let mut buf = [0u64; 64];
        while let Ok(n) = self.results_rx.try_recv_many(&mut buf) {
            self.drain_panics();
            for &msg in &buf[..n] {
                self.complete(msg);
            }
        }
        let head = self.tasks.consumed();
        for slot in 0..self.inflight.len() {
            let Some(inf) = self.inflight[slot] else { continue };
            let still_queued = !inf.sent || inf.queue_index >= head;
            match self.slots.settle_dead(slot, pid, still_queued, &self.settings.faults) {
                // It died inside the claim: the message will be handed out again.
                DeadSlot::Requeued | DeadSlot::Untouched => {}
                // What it finished stands; the rest of its chunk fails with it.
                DeadSlot::Failed => self.deliver(slot, inf, pid, Some(status)),
                // Finished, but died before announcing it.
                DeadSlot::Finished => self.deliver(slot, inf, pid, None),
                // Taken out of the queue by someone who may never acknowledge it.
                DeadSlot::CancelTaken => self.free_slot(slot),
            }
        }
    }

    /// Cancels a future's task if it has not started. Answers whether it did.
    pub(crate) fn cancel(&mut self, job: usize) -> bool {
        if let Some(pos) = self.pending.iter().position(|p| p.job == job) {
            self.pending.remove(pos);
            self.fail_items(job, 0, 1, &TaskError::Cancelled);
            return true;
        }
        #[cfg(feature = "archive")]
        if let Some(pos) = self.retries.iter().position(|r| r.job == job) {
            if let Some(r) = self.retries.remove(pos) {
                self.fail_items(job, r.index, 1, &TaskError::Cancelled);
            }
            return true;
        }
        for slot in 0..self.inflight.len() {
            let Some(inf) = self.inflight[slot] else { continue };
            if inf.job != job {
                continue;
            }
            self.settings.faults.parent_at(FaultPoint::ParentCancel);
            if self.slots.cancel_queued(slot) {
                self.fail_slot_items(slot, inf, &TaskError::Cancelled);
                if !inf.sent {
                    // Still in our outbox: take the message back, free the slot now.
                    self.outbox.retain(|&m| worker::split(m).0 != slot);
                    self.free_slot(slot);
                }
                return true;
            }
        }
        false
    }

    /// Whether any task is pending or running.
    pub(crate) fn busy(&self) -> bool {
        let retries = {
            #[cfg(feature = "archive")]
            {
                !self.retries.is_empty()
            }
            #[cfg(not(feature = "archive"))]
            false
        };
        retries || !self.pending.is_empty() || self.inflight.iter().any(Option::is_some)
    }

    /// Stops taking tasks, waits for every outstanding task, lets the workers leave, reaps them.
    pub(crate) fn shutdown(&mut self) -> Result<(), PoolError> {
        self.closed = true;
        let mut result = Ok(());
        while self.busy() && !self.terminated {
            if let Err(e) = self.pump(PUMP_WAIT) {
                result = Err(e);
                break;
            }
        }
        // The workers see the task queue disconnect once our sender is gone.
        self.tasks_tx = None;
        for mut w in self.workers.drain(..) {
            match w.process.join_timeout(WORKER_EXIT_WAIT) {
                Ok(_) => {}
                Err(_) => {
                    let _ = w.process.kill();
                    let _ = w.process.join_timeout(WORKER_EXIT_WAIT);
                }
            }
        }
        result
    }

    /// Kills every worker at once; every unfinished task fails with [`TaskError::Terminated`].
    pub(crate) fn terminate(&mut self) {
        self.terminated = true;
        self.closed = true;
        self.tasks_tx = None;
        for w in &mut self.workers {
            let _ = w.process.kill();
        }
        for mut w in self.workers.drain(..) {
            let _ = w.process.join_timeout(WORKER_EXIT_WAIT);
        }
        while let Some(p) = self.pending.pop_front() {
            self.fail_items(p.job, 0, 1, &TaskError::Terminated);
        }
        #[cfg(feature = "archive")]
        while let Some(r) = self.retries.pop_front() {
            self.fail_items(r.job, r.index, 1, &TaskError::Terminated);
        }
        for slot in 0..self.inflight.len() {
            if let Some(inf) = self.inflight[slot] {
                self.fail_slot_items(slot, inf, &TaskError::Terminated);
                self.free_slot(slot);
            }
        }
        self.outbox.clear();
    }

    /// Hook for the async futures (pool/future.rs): the results queue's mapping, to wait on.
    #[cfg(feature = "tokio")]
    pub(crate) fn results_core(&self) -> &std::sync::Arc<crate::ring::Core> {
        self.results_rx.core_arc()
    }
}
