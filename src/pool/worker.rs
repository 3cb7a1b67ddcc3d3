//! A worker process: take a task, claim its slot, run it in place, publish the result.

use crate::sys::atomic::Ordering;
use std::os::fd::{FromRawFd, OwnedFd};

use bytemuck::{Pod, Zeroable};

use super::faults::{FaultPlan, FaultPoint};
use super::slots::{self, CANCELLED, QUEUED, RUNNING, Slots};
use super::task::{self, ChunkCtx};
use crate::ring::queue::Queue;
use crate::ring::{Ring, RingBuilder};
use crate::sync::current_pid;

/// Exit codes of a worker that gives up (other than 0: done, and 101: panicked).
pub(crate) const EXIT_BROKEN: i32 = 3;
pub(crate) const EXIT_BAD_SETUP: i32 = 4;
pub(crate) const EXIT_BAD_CODE: i32 = 5;

/// Longest panic message carried back to the parent, in bytes.
const MAX_PANIC_TEXT: usize = 4096;

/// A task or result message: slot index and generation.
#[inline(always)]
pub(crate) fn message(slot: u32, seq: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(seq)
}

#[inline(always)]
pub(crate) fn split(msg: u64) -> (usize, u32) {
    ((msg >> 32) as usize, msg as u32)
}

/// What a worker needs, as the bytes its start function receives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct WorkerArg {
    /// Descriptors of the slots, task queue, result queue and panic ring (same numbers in the
    /// child: inherited by fork, or kept across exec).
    pub fds: [i32; 4],
    /// Tasks after which the worker retires (0: never).
    pub max_tasks: u64,
    /// Code offset of the initializer trampoline (valid when `has_init` is 1).
    pub init: u64,
    pub has_init: u32,
    pub _pad: u32,
    /// Spin budget in nanoseconds.
    pub spin_ns: u64,
    /// Faults to inject (tests only; all zero otherwise).
    pub faults: FaultPlan,
    /// With `has_init` 2: the slot holding the initializer's archived arguments, and their length.
    pub init_args_slot: u32,
    pub init_args_len: u32,
    /// The largest archived value (`PoolBuilder::max_value_bytes`): the most a worker reads from
    /// a spilled input or writes to a spilled output.
    pub max_value: u32,
}

/// What a forked worker inherits, mapped already.
pub(crate) struct Setup {
    pub slots: std::sync::Arc<Slots>,
    pub tasks: Queue<u64>,
    pub results: Queue<u64>,
    pub errors: Ring,
    pub max_tasks: u64,
    pub init: Option<crate::process::code::CodeOffset>,
    /// The initializer's archived arguments: their slot and length.
    pub init_args: Option<(u32, u32)>,
    pub faults: FaultPlan,
    /// The largest archived value (see [`WorkerArg::max_value`]).
    pub max_value: u32,
    /// The parent's spill files open at the fork: this worker's copies are closed at once (they
    /// would keep the files alive as long as the worker lives).
    pub close_fds: Vec<i32>,
}

/// A forked worker's body: the pool's memory is mapped already (inherited); the ring handles
/// the parent held were forgotten by the fork.
pub(crate) fn run_forked(setup: Setup) {
    for &fd in &setup.close_fds {
        // Our copy of a descriptor the parent held at the fork (a spill file): nothing in this
        // process uses it (the parent's records of it, copied with its memory, are never dropped
        // here: the worker leaves through `exit`).
        let _ = nix::unistd::close(fd);
    }
    if let Some(init) = setup.init {
        run_init(&setup.slots, init, setup.init_args, setup.max_value as usize);
    }
    let limits = Limits { max_tasks: setup.max_tasks, max_value: setup.max_value as usize };
    let code = serve(&setup.slots, &setup.tasks, &setup.results, &setup.errors, limits, &setup.faults);
    if code != 0 {
        crate::process::exit(code);
    }
}

/// A re-executed worker's start function: opens the pool's memory from the descriptors, then
/// serves tasks until the task queue disconnects.
pub(crate) fn start(arg: &[u8]) {
    let Ok(arg) = bytemuck::try_pod_read_unaligned::<WorkerArg>(arg) else {
        crate::process::exit(EXIT_BAD_SETUP);
    };
    // A forked worker holds copies of every ring handle the parent held (the pool's own task
    // sender among them): give those memberships up, or the task queue would never disconnect.
    crate::sys::atfork::child_exit();
    // SAFETY: the parent passed these four descriptor numbers, open in this process: inherited by
    // fork, or kept open across exec by the process layer (`spawn_raw`'s inherited descriptors).
    // Nothing else in this fresh worker owns them.
    let owned = arg.fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let [slots_fd, tasks_fd, results_fd, errors_fd] = owned;
    let spin = crate::sync::SpinPolicy::spin_for(std::time::Duration::from_nanos(arg.spin_ns));
    let opened = (|| {
        let slots = Slots::from_fd(slots_fd)?;
        let tasks = Queue::<u64>::builder().spin(spin).from_fd(tasks_fd)?;
        let results = Queue::<u64>::builder().spin(spin).from_fd(results_fd)?;
        let errors = RingBuilder::new().spin(spin).from_fd(errors_fd)?;
        Ok::<_, crate::SegmentError>((slots, tasks, results, errors))
    })();
    let Ok((slots, tasks, results, errors)) = opened else {
        crate::process::exit(EXIT_BAD_SETUP);
    };
    match arg.has_init {
        1 => run_init(&slots, arg.init, None, 0),
        2 => run_init(&slots, arg.init, Some((arg.init_args_slot, arg.init_args_len)), arg.max_value as usize),
        _ => {}
    }
    let limits = Limits { max_tasks: arg.max_tasks, max_value: arg.max_value as usize };
    let code = serve(&slots, &tasks, &results, &errors, limits, &arg.faults);
    if code != 0 {
        crate::process::exit(code);
    }
}

/// Runs the pool's initializer: a plain one, or one that reads its archived arguments in place
/// from their slot (`args`), or from the spill file a record in their slot names (a length of
/// `CTX_RECORD | SPILLED`; at most `max_value` bytes), mapped. Exits the worker if the code or the
/// arguments are not right.
fn run_init(slots: &Slots, init: crate::process::code::CodeOffset, args: Option<(u32, u32)>, max_value: usize) {
    let Some((slot, len)) = args else {
        match task::init_fn(init) {
            Some(init) => init(),
            None => crate::process::exit(EXIT_BAD_CODE),
        }
        return;
    };
    #[cfg(feature = "archive")]
    {
        let spilled = len & super::spill::SPILLED != 0;
        let (slot, len) = (slot as usize, (len & !super::spill::SPILLED) as usize);
        if slot >= slots.count || len > slots.data_len() {
            crate::process::exit(EXIT_BAD_SETUP);
        }
        let Some(init) = super::archived::init_args_fn(init) else {
            crate::process::exit(EXIT_BAD_CODE);
        };
        // SAFETY: `slot` is a slot of the mapping and `len` at most its data area (checked above);
        // the arguments' slot is written by the parent once, before any worker starts, and never
        // again (it is never on the free list). The trampoline validates the bytes before it
        // reads them as a value.
        let bytes = unsafe { std::slice::from_raw_parts(slots.data(slot).cast_const(), len) };
        let ran = if spilled {
            // The slot holds a record naming the parent's spill file: mapped (checked, sealed),
            // read in place, unmapped once the initializer is done.
            match super::archived::map_spilled(bytes, max_value) {
                Ok((m, _)) => init(m.bytes()),
                Err(e) => Err(e),
            }
        } else {
            init(bytes)
        };
        if ran.is_err() {
            crate::process::exit(EXIT_BAD_SETUP);
        }
    }
    #[cfg(not(feature = "archive"))]
    {
        let _ = (slots, slot, len, max_value);
        crate::process::exit(EXIT_BAD_SETUP);
    }
}

#[cfg(ringpool_model)]
std::thread_local! {
    /// Model builds only: restores the claim before the fix of defect 5
    /// (`model_support::debug_old_claim`). Per OS thread: shuttle runs a model execution's
    /// processes on the test's own thread, so tests running in parallel do not see each other's.
    pub(crate) static OLD_CLAIM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How a popped task message turned out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Ours to run.
    Run,
    /// Cancelled by the parent before anyone claimed it: acknowledge, do not run.
    Cancelled,
    /// A message about a slot that moved on: ignore.
    Stale,
    /// The slot's state keeps changing under us (scribbled memory): leave without consuming the
    /// message, so that it is handed to the next worker.
    GiveUp,
}

/// A worker's limits: tasks before it retires (0: never), and the largest archived value.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_tasks: u64,
    max_value: usize,
}

/// While it holds spilled outputs, a worker looks this often whether the parent has read them.
const SPILL_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// How long a retiring worker waits for the parent to read its spilled outputs before it leaves
/// anyway (the parent then runs those items again).
const SPILL_RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The spilled outputs a worker keeps open: (slot, generation, file). The parent reads one
/// before it moves its slot on, so a file can go once the slot is no longer `DONE(me)` at that
/// generation.
type Held = Vec<(usize, u32, OwnedFd)>;

/// Closes the spill files whose chunks the parent has delivered.
fn release_spills(slots: &Slots, held: &mut Held, me: u32) {
    held.retain(|&(slot, seq, _)| {
        slots.state(slot).load(Ordering::Acquire) == slots::word(slots::DONE, me) && slots.read_desc(slot).seq == seq
    });
}

/// How a wait for the next task ended without one.
enum NoTask {
    /// Nothing yet: look at the held spill files, wait again.
    Again,
    Disconnected,
    Broken,
}

fn serve(
    slots: &Slots,
    tasks: &Queue<u64>,
    results: &Queue<u64>,
    errors: &Ring,
    limits: Limits,
    faults: &FaultPlan,
) -> i32 {
    let (Ok(rx), Ok(tx), Ok(etx)) = (tasks.receiver(), results.sender(), errors.sender()) else {
        return EXIT_BAD_SETUP;
    };
    let me = current_pid();
    super::panics::capture_task_panics(true);
    let mut done = 0u64;
    let mut held: Held = Vec::new();
    let mut spills: Vec<OwnedFd> = Vec::new();
    #[cfg(feature = "archive")]
    let mut ctx_cache = super::archived::CtxCache::default();
    #[cfg(feature = "archive")]
    let idle_checks = |c: &super::archived::CtxCache| c.holds();
    #[cfg(not(feature = "archive"))]
    let idle_checks = |_: &()| false;
    #[cfg(not(feature = "archive"))]
    let ctx_cache = ();
    while limits.max_tasks == 0 || done < limits.max_tasks {
        let received = if held.is_empty() && !idle_checks(&ctx_cache) {
            rx.recv_in_place().map_err(|e| match e {
                crate::ring::RecvError::Disconnected => NoTask::Disconnected,
                _ => NoTask::Broken,
            })
        } else {
            release_spills(slots, &mut held, me);
            #[cfg(feature = "archive")]
            ctx_cache.release_if_closed();
            rx.recv_in_place_timeout(SPILL_POLL).map_err(|e| match e {
                crate::ring::RecvTimeoutError::Disconnected => NoTask::Disconnected,
                crate::ring::RecvTimeoutError::Timeout | crate::ring::RecvTimeoutError::LockTimeout { .. } => {
                    NoTask::Again
                }
                _ => NoTask::Broken,
            })
        };
        // Claim inside the task queue's receive critical section: if this process dies before the
        // head moves, the message is handed to the next worker, which takes the claim over.
        let (msg, claim) = match received {
            Ok(guard) => {
                let msg = *guard;
                faults.worker_at(FaultPoint::Received);
                let claim = claim(slots, msg, me, faults);
                match claim {
                    Claim::Run => faults.worker_at(FaultPoint::Claimed),
                    Claim::GiveUp => {
                        // Dying inside the section hands the message on (the queue repairs a dead
                        // receiver's hold by delivering the same message again). A plain exit
                        // would leave the queue while holding its lock: die as a crash does.
                        std::mem::forget(guard);
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                        return EXIT_BROKEN;
                    }
                    Claim::Cancelled | Claim::Stale => {}
                }
                drop(guard);
                (msg, claim)
            }
            Err(NoTask::Again) => continue,
            Err(NoTask::Disconnected) => return 0,
            Err(NoTask::Broken) => return EXIT_BROKEN,
        };
        let (slot, seq) = split(msg);
        match claim {
            Claim::Stale | Claim::GiveUp => continue,
            Claim::Cancelled => {
                if tx.send(msg).is_err() {
                    return EXIT_BROKEN;
                }
                continue;
            }
            Claim::Run => faults.worker_at(FaultPoint::Committed),
        }
        let desc = slots.read_desc(slot);
        let ran = if desc.seq != seq || !(desc.fits(slots.data_len()) || desc.fits_archived(slots.data_len())) {
            Err("slot descriptor is inconsistent")
        } else if let Some(chunk) = task::chunk_fn(desc.tramp) {
            let data = slots.data(slot);
            let mut on_panic = |item: usize, text: String| {
                let mut text = text.into_bytes();
                text.truncate(MAX_PANIC_TEXT);
                let mut m = Vec::with_capacity(16 + text.len());
                for v in [slot as u32, seq, item as u32, me] {
                    m.extend_from_slice(&v.to_le_bytes());
                }
                m.extend_from_slice(&text);
                let _ = etx.send(m);
            };
            let mut ctx = ChunkCtx {
                input: data.cast_const(),
                // SAFETY: out_off and status_off lie inside the data area (`fits` checked it).
                output: unsafe { data.add(desc.out_off as usize) },
                // SAFETY: as above.
                status: unsafe { data.add(desc.status_off as usize) },
                count: desc.count as usize,
                size_t: desc.size_t as usize,
                align_t: desc.align_t as usize,
                size_r: desc.size_r as usize,
                align_r: desc.align_r as usize,
                kind: desc.kind,
                data,
                desc,
                ctx: std::ptr::null(),
                ctx_len: 0,
                ctx_checked: false,
                ctx_err: None,
                on_panic: &mut on_panic,
                max_value: limits.max_value,
                spills: &mut spills,
            };
            let ctx_slot = desc.ctx_slot as usize;
            #[cfg(feature = "archive")]
            let spilled_ctx = desc.ctx_len & super::spill::SPILLED != 0;
            #[cfg(not(feature = "archive"))]
            let spilled_ctx = false;
            // The context's slot (its archive, or the record naming its spill file): another slot
            // of the mapping, the length within its data area.
            #[cfg(feature = "archive")]
            let ctx_len = (desc.ctx_len & !super::spill::SPILLED) as usize;
            #[cfg(not(feature = "archive"))]
            let ctx_len = desc.ctx_len as usize;
            let ctx_in_slots = desc.kind == slots::KIND_ARCHIVED
                && ctx_slot < slots.count
                && ctx_slot != slot
                && ctx_len <= slots.data_len();
            if ctx_in_slots && !spilled_ctx {
                ctx.ctx = slots.data(ctx_slot).cast_const();
                ctx.ctx_len = ctx_len;
            }
            #[cfg(feature = "archive")]
            if desc.kind == slots::KIND_ARCHIVED && spilled_ctx {
                // The context's slot holds a record naming the parent's spill file: mapped once
                // (the worker keeps the last one while its chunks name it), read in place.
                if ctx_in_slots {
                    // SAFETY: the context's slot lies in the mapping and `ctx_len` within its data
                    // area (checked just above); the parent holds it unwritten while the job runs.
                    // A scribbled record is checked field by field before it names anything.
                    let rec = unsafe { std::slice::from_raw_parts(slots.data(ctx_slot).cast_const(), ctx_len) };
                    match ctx_cache.get(rec, limits.max_value, desc.tramp) {
                        Ok((bytes, checked)) => {
                            ctx.ctx = bytes.as_ptr();
                            ctx.ctx_len = bytes.len();
                            ctx.ctx_checked = checked;
                        }
                        Err(why) => ctx.ctx_err = Some(why),
                    }
                } else {
                    ctx.ctx_err = Some("the chunk names its spilled context's record outside the slots".to_owned());
                }
            } else {
                // A chunk without a spilled context: the one kept (if any) belongs to a job whose
                // chunks this worker no longer runs.
                ctx_cache.clear();
            }
            if faults.scribble & super::faults::SCRIBBLE_INPUTS != 0 && desc.kind == slots::KIND_ARCHIVED {
                scribble(slots, slot, &desc, super::faults::SCRIBBLE_INPUTS);
            }
            // SAFETY: the slot is claimed by this process (RUNNING with our pid), so no other
            // worker touches it and the parent does not until the result is published; `fits`
            // (a `Pod` chunk) or `fits_archived` (an archived one) checked that every range the
            // trampoline touches lies inside its data area; the trampoline checks the chunk's
            // kind, types and alignments itself. The context (archived chunks) is another slot,
            // checked above to lie in the mapping with its length, that the parent holds unwritten
            // while the job runs (`Engine::put_context`); it is validated before it is read. Or it
            // is a read-only mapping of a spill file sealed against writing and shrinking, at
            // least `ctx_len` bytes long (`spill::map` checked both), which `ctx_cache` keeps
            // mapped until after the call; `ctx_checked` only when this same trampoline validated
            // those same bytes before.
            let ran = unsafe { chunk(&mut ctx) };
            #[cfg(feature = "archive")]
            if ctx.ctx_checked && spilled_ctx {
                ctx_cache.checked(desc.tramp);
            }
            ran
        } else {
            Err("task code is not in this executable")
        };
        if ran.is_err() {
            // Leave every item's status as "not run": the parent reports it.
            return EXIT_BAD_CODE;
        }
        // This chunk's spilled outputs stay open until the parent has read them.
        held.extend(spills.drain(..).map(|fd| (slot, seq, fd)));
        if faults.scribble != 0 && desc.kind == slots::KIND_ARCHIVED {
            scribble(slots, slot, &desc, faults.scribble & !super::faults::SCRIBBLE_INPUTS);
        }
        faults.worker_at(FaultPoint::Ran);
        slots.mark_done(slot, me);
        faults.worker_at(FaultPoint::Done);
        if tx.send(msg).is_err() {
            return EXIT_BROKEN;
        }
        done = done.saturating_add(u64::from(desc.count.max(1)));
    }
    // Retiring: the parent still has to read the spilled outputs of the last chunks.
    let start = std::time::Instant::now();
    while !held.is_empty() && start.elapsed() < SPILL_RETIRE_WAIT {
        std::thread::sleep(std::time::Duration::from_millis(1));
        release_spills(slots, &mut held, me);
    }
    0
}

/// Tests only (`FaultPlan::scribble`): overwrites an archived chunk's output room and/or the
/// worker's half of its item table with garbage.
#[cold]
fn scribble(slots: &Slots, slot: usize, desc: &slots::SlotDesc, what: u32) {
    if !desc.fits_archived(slots.data_len()) {
        return;
    }
    let data = slots.data(slot);
    if what & super::faults::SCRIBBLE_OUTPUTS != 0 {
        let len = (desc.status_off - desc.out_off) as usize;
        // SAFETY: the output room lies inside the data area (`fits_archived`), and the slot is
        // claimed by this worker.
        unsafe { data.wrapping_add(desc.out_off as usize).write_bytes(0xA5, len) };
    }
    if what & super::faults::SCRIBBLE_INPUTS != 0 {
        // SAFETY: the inputs lie before the table, inside the data area (`fits_archived`), and the
        // slot is claimed by this worker.
        unsafe { data.write_bytes(0xA5, desc.in_off as usize) };
    }
    if what & super::faults::SCRIBBLE_SPILLED != 0 {
        for i in 0..desc.count as usize {
            // SAFETY: status byte i lies inside the data area (`fits_archived`).
            if unsafe { data.wrapping_add(desc.status_off as usize + i).read() } != super::task::ITEM_SPILLED {
                continue;
            }
            let entry = data.wrapping_add(desc.in_off as usize + i * slots::TABLE_ENTRY + 8);
            // SAFETY: entry i of the table lies inside the data area (`fits_archived`).
            let [fd, len] = [0, 4].map(|k| unsafe { entry.wrapping_add(k).cast::<[u8; 4]>().read_unaligned() });
            let (fd, len) = (u32::from_le_bytes(fd), u32::from_le_bytes(len));
            // Each spilled output of each chunk gets one kind of garbage, in turn.
            let (fd, len) = match (slot + desc.seq as usize + i) % 4 {
                0 => (0, len),                       // stdin: not a spill file
                1 => (0x7fff_0000, len),             // no such descriptor
                2 => (fd, u32::MAX),                 // longer than any value may be
                _ => (fd, len.saturating_add(4096)), // longer than the file
            };
            let mut bogus = [0u8; 8];
            bogus[..4].copy_from_slice(&fd.to_le_bytes());
            bogus[4..].copy_from_slice(&len.to_le_bytes());
            // SAFETY: as above.
            unsafe { entry.copy_from_nonoverlapping(bogus.as_ptr(), 8) };
        }
    }
    if what & super::faults::SCRIBBLE_TABLE != 0 {
        for i in 0..desc.count as usize {
            let entry = desc.in_off as usize + i * slots::TABLE_ENTRY + 8;
            let bogus = [0xFFu8, 0xFF, 0xFF, 0x7F, 0x00, 0x10, 0x00, 0x00];
            // SAFETY: entry i of the table lies inside the data area (`fits_archived`).
            unsafe { data.wrapping_add(entry).copy_from_nonoverlapping(bogus.as_ptr(), 8) };
        }
    }
}

/// Claims the slot named by `msg` for `me`, inside the task queue's receive critical section.
///
/// Holding the message inside the section is what makes every answer but [`Claim::Stale`] final:
/// while this worker holds it, the only other writer of the slot's state is the parent, and the
/// parent only moves it `RUNNING(dead)` -> `QUEUED` (the previous holder died in this same
/// section) and `QUEUED` -> `CANCELLED`. So a failed compare-and-swap means "look again", never
/// "someone else has it": giving up there would drop the only message for a slot that still waits
/// for it (the pool's defect 5). See the state machine in the `slots` module.
pub(crate) fn claim(slots: &Slots, msg: u64, me: u32, faults: &FaultPlan) -> Claim {
    /// Far more changes than the protocol can make while we hold the message (two): only
    /// memory scribbled by something else could get here.
    const MAX_TRIES: u32 = 1000;
    let (slot, seq) = split(msg);
    if slot >= slots.count || slots.read_desc(slot).seq != seq {
        return Claim::Stale;
    }
    for _ in 0..MAX_TRIES {
        let w = slots.state(slot).load(Ordering::Acquire);
        match slots::stage(w) {
            QUEUED => faults.worker_at(FaultPoint::BeforeClaim),
            // Claimed by a worker that died inside this same critical section (the message was
            // handed out again), before the parent noticed: take it over. It never ran the task:
            // a worker runs a task only after the message left the queue.
            RUNNING => faults.worker_at(FaultPoint::BeforeTakeover),
            CANCELLED => return Claim::Cancelled,
            // FREE, DONE, FAILED: the slot's generation moved on (cannot happen while the
            // generation matches and we hold its message, but nobody waits for it then).
            _ => return Claim::Stale,
        }
        if slots.transition(slot, w, slots::word(RUNNING, me)) {
            return Claim::Run;
        }
        // The old claim (before the fix of defect 5), for the model check to find its race:
        // a lost takeover dropped the message.
        #[cfg(ringpool_model)]
        if slots::stage(w) == RUNNING && OLD_CLAIM.with(std::cell::Cell::get) {
            return Claim::Stale;
        }
        // The parent reset or cancelled it meanwhile: look again.
    }
    Claim::GiveUp
}
