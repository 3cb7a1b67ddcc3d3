//! The model checks' runtime (built only with `RUSTFLAGS="--cfg ringpool_model"`): processes as
//! [shuttle](https://docs.rs/shuttle) threads, a death at any atomic operation, a model clock, a
//! model futex, and fake pids with a model table of who died.
//!
//! Why shuttle and not loom: loom's atomics are tracked objects with their own layout, created by
//! `new`, while the crate turns raw bytes of a mapping into `&AtomicU64` (`Core::word_at`) and keeps
//! its control block in shared memory: loom cannot see those. Loom's exhaustive search (DPOR) also
//! cannot finish on a state space this size (two or three threads doing hundreds of atomic
//! operations each through spin and park loops, times a death at any of them). Shuttle only needs a
//! scheduling point per operation (our `#[repr(transparent)]` wrappers in [`super::atomic`] call
//! [`hook`]), and searches randomly (uniform or PCT), which is what finds bugs of small depth in big
//! state spaces. What shuttle does not do: weak memory. Every operation runs sequentially
//! consistent, so a missing Release/Acquire is not found here (ThreadSanitizer and Miri look
//! for those).
//!
//! How a death works: a process made with [`Death::AtRandomStep`] draws (from shuttle's
//! replayable random source) the atomic operation at which it dies. There, [`hook`] marks it dead
//! (its fake pid now answers "dead" to [`alive`]) and parks it on the model's gate without performing
//! the operation: it never touches shared memory again while the survivors run. Once every process
//! has finished or died, [`Processes::settle`] hands the survivors' results to the test's checks;
//! [`Processes::release`] then lets the dead unwind with a private payload that the process wrapper
//! swallows. (Shuttle 0.9 reports an attached thread still blocked when the execution ends as a
//! deadlock, and tears a detached one down by unwinding its stack at a moment of its choosing: so
//! the dead are released only after the checks, and joined.)
//!
//! Each model process opens the ring's segment from a descriptor (`from_fd`), so it has its own
//! mapping and its own per-process state (`membership::Local`), as a real process does; the byte
//! ring is the real mirrored one.
//!
//! Time and waiting: [`crate::sys::monotonic_ns`] answers a model clock that each atomic operation
//! advances by [`OP_NS`]; the futex is modelled ([`futex_wait`], [`futex_wake`]): a sleeper without
//! a deadline blocks until woken (a lost wake-up is then a deadlock that shuttle reports), one with
//! a deadline yields and lets [`SLEEP_TICK_NS`] pass each time it runs, until woken or its deadline
//! (so liveness slices, sweeps and lock takeovers happen in bounded steps). Spin hints yield.
//! Determinism: everything a model execution does must depend only on shuttle's choices (a
//! process-wide cache filled on first use is primed in [`check`]), or a failing schedule would not
//! replay; `RINGPOOL_MODEL_SCHEDULER=nondeterminism` checks that.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::Duration;

use shuttle::rand::Rng;
use shuttle::sync::{Condvar, Mutex};

use super::{Deadline, FutexWait};

/// Model nanoseconds one atomic operation takes.
const OP_NS: u64 = 50;
/// Model nanoseconds a timed futex sleeper lets pass each time it is scheduled without being woken.
const SLEEP_TICK_NS: u64 = 1_000_000;
/// The first fake pid (the test's main thread); process `i` of the model is `PID_BASE + i`.
const PID_BASE: u32 = 1000;
/// Atomic operations after which a process that has not finished is reported as hung.
const HANG_OPS: u64 = 20_000;

/// What a model process is allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// Runs to its end.
    Never,
    /// Dies at an atomic operation drawn uniformly from `1..=n` (if it does that many).
    AtRandomStep(u64),
}

#[derive(Default)]
struct Proc {
    ops: u64,
    spared: bool,
    arrived: bool,
    die_at: Option<u64>,
    dead: bool,
    exited: bool,
}

struct Waiter {
    addr: usize,
    task: usize,
    woken: bool,
    thread: shuttle::thread::Thread,
}

#[derive(Default)]
struct Gate {
    settled: usize,
    released: bool,
    /// The start line: processes arrived (or died before arriving), and how many there are.
    arrived: usize,
    expected: Option<usize>,
}

struct State {
    clock: u64,
    /// `RINGPOOL_MODEL_TRACE=N`: print every operation from a process's N-th on.
    trace_from: Option<u64>,
    /// Where each dead process died (formatted only when a check fails).
    deaths: Vec<(usize, std::backtrace::Backtrace)>,
    procs: Vec<Proc>,
    waiters: Vec<Waiter>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

std::thread_local! {
    // Per OS thread: shuttle runs one execution's threads as continuations on the test's own OS
    // thread, so this is one execution's state (and tests in parallel do not share it).
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// The payload a dead process unwinds with once released.
struct Died;

fn current_task() -> Option<usize> {
    shuttle::current::try_get_current_task().map(usize::from)
}

/// Runs `f` on the state of the running execution, if there is one and we are in one of its
/// threads. Never calls into shuttle while the state is borrowed.
fn with<R>(f: impl FnOnce(&mut State, usize) -> R) -> Option<R> {
    let task = current_task()?;
    STATE.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let s = s.as_mut()?;
        if s.procs.len() <= task {
            s.procs.resize_with(task + 1, Proc::default);
        }
        Some(f(s, task))
    })
}

/// Every atomic operation on shared memory first comes here: the model clock ticks, the process
/// may die (it then never returns), and the scheduler may switch to another thread.
#[inline]
pub(crate) fn hook() {
    let Some((die, hang)) = with(|s, me| {
        s.clock += OP_NS;
        let p = &mut s.procs[me];
        if p.dead {
            return (false, false);
        }
        p.ops += 1;
        if s.trace_from.is_some_and(|n| p.ops >= n) {
            let at = trim(&std::backtrace::Backtrace::force_capture());
            let at: Vec<&str> = at.lines().take(3).map(|l| l.trim().split(" at ").next().unwrap_or("")).collect();
            eprintln!("trace: {me} op {} at {}: {}", p.ops, s.clock, at.join(" < "));
        }
        let hang = p.ops == HANG_OPS;
        let die = p.die_at == Some(p.ops) && !p.spared;
        if hang {
            let all: Vec<String> = s
                .procs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    format!(
                        "{i}: {} ops{}{}",
                        p.ops,
                        if p.dead { ", dead" } else { "" },
                        if p.exited { ", finished" } else { "" }
                    )
                })
                .collect();
            eprintln!("model: hang; processes: {}", all.join("; "));
        }
        (die, hang)
    }) else {
        return;
    };
    if hang {
        panic!(
            "model: hang: a process did {HANG_OPS} atomic operations without finishing, at:\n{}\n{}",
            trim(&std::backtrace::Backtrace::force_capture()),
            deaths()
        );
    }
    if die {
        die_now();
    }
    shuttle::thread::sleep(Duration::ZERO); // a pure scheduling point (shuttle has no time)
}

fn die_now() -> ! {
    let site = std::backtrace::Backtrace::force_capture();
    let gate = with(|s, me| {
        s.procs[me].dead = true;
        s.deaths.push((me, site));
        s.gate.clone()
    })
    .expect("a model process dies inside the model");
    let arrived = with(|s, me| std::mem::replace(&mut s.procs[me].arrived, true)).unwrap_or(true);
    let (lock, cv) = &*gate;
    let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
    g.settled += 1;
    if !arrived {
        g.arrived += 1;
    }
    cv.notify_all();
    while !g.released {
        g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
    }
    drop(g);
    resume_unwind(Box::new(Died))
}

/// Waits until every model process has arrived here (or died before): so that no process starts
/// its work before the others have joined the ring (a late joiner meets a ring that, rightly,
/// has already seen its peers leave).
pub fn start_line() {
    let Some(gate) = with(|s, me| {
        s.procs[me].arrived = true;
        s.gate.clone()
    }) else {
        return;
    };
    let (lock, cv) = &*gate;
    let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
    g.arrived += 1;
    cv.notify_all();
    while g.expected.is_none_or(|n| g.arrived < n) {
        g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
    }
}

/// Runs `f` with no death in it (the drawn step, if it falls inside, is skipped): for a model
/// that looks at one protocol and leaves another (say, leaving the member table) to its own model.
pub fn spared<R>(f: impl FnOnce() -> R) -> R {
    with(|s, me| s.procs[me].spared = true);
    let r = f();
    with(|s, me| s.procs[me].spared = false);
    r
}

/// The crate's frames of a backtrace, innermost first, without the model's own.
fn trim(bt: &std::backtrace::Backtrace) -> String {
    let text = bt.to_string();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((_, name)) = line.trim_start().split_once(": ") else { continue };
        if !name.starts_with("ringpool::") || name.contains("sys::model") || name.contains("model_types") {
            continue;
        }
        let at = lines.peek().filter(|l| l.trim_start().starts_with("at ")).map_or("", |l| l.trim_start());
        out.push(format!("    {} {at}", name.trim_start_matches("ringpool::")));
        if out.len() == 10 {
            break;
        }
    }
    out.join("\n")
}

/// Where the processes that died in this execution died (for a failed check's message).
pub fn deaths() -> String {
    with(|s, _| {
        s.deaths.iter().map(|(p, bt)| format!("process {p} died at:\n{}", trim(bt))).collect::<Vec<_>>().join("\n")
    })
    .unwrap_or_default()
}

/// The model's clock, inside a model execution.
pub(crate) fn now() -> Option<u64> {
    with(|s, _| s.clock)
}

/// The calling model process's fake pid, inside a model execution.
pub(crate) fn pid() -> Option<u32> {
    with(|_, me| PID_BASE + me as u32)
}

/// Whether the model process with fake pid `pid` still runs (finished and dead ones do not;
/// pids that are no model process do not either).
pub(crate) fn alive(pid: u32) -> Option<bool> {
    with(|s, _| {
        let Some(i) = pid.checked_sub(PID_BASE) else { return false };
        s.procs.get(i as usize).is_some_and(|p| !p.dead && !p.exited)
    })
}

/// A spin-loop hint inside the model: a yield (so PCT deprioritizes the spinner).
pub(crate) fn spin_hint() -> bool {
    if with(|_, _| ()).is_none() {
        return false;
    }
    shuttle::hint::spin_loop();
    true
}

/// The model futex: sleeps while the word at `addr` (read by `load`) equals `expected`, until
/// [`futex_wake`] on that address or the deadline. A sleeper without a deadline blocks in shuttle
/// (a lost wake-up is then a deadlock that shuttle reports); one with a deadline yields and lets
/// [`SLEEP_TICK_NS`] of model time pass each time it is scheduled, so that timeouts happen.
pub(crate) fn futex_wait(
    addr: usize,
    load: impl Fn() -> u32,
    expected: u32,
    deadline: Option<Deadline>,
) -> Option<FutexWait> {
    let clock = now()?;
    if deadline.is_some_and(|d| clock >= d.0) {
        return Some(FutexWait::TimedOut);
    }
    if load() != expected {
        shuttle::thread::sleep(Duration::ZERO);
        return Some(FutexWait::Woken);
    }
    let me = with(|s, me| {
        s.waiters.push(Waiter { addr, task: me, woken: false, thread: shuttle::thread::current() });
        me
    })?;
    let woken = |me| with(|s, _| s.waiters.iter().any(|w| w.task == me && w.woken)).unwrap_or(true);
    let leave = |me| {
        with(|s, _| s.waiters.retain(|w| w.task != me));
    };
    match deadline {
        None => {
            while !woken(me) {
                shuttle::thread::park();
            }
            leave(me);
            Some(FutexWait::Woken)
        }
        Some(d) => loop {
            shuttle::thread::yield_now();
            if woken(me) {
                leave(me);
                return Some(FutexWait::Woken);
            }
            let passed = with(|s, _| {
                if s.clock < d.0 {
                    s.clock += SLEEP_TICK_NS.min(d.0 - s.clock);
                }
                s.clock >= d.0
            })
            .unwrap_or(true);
            if passed {
                leave(me);
                return Some(FutexWait::TimedOut);
            }
        },
    }
}

/// The model futex's wake: wakes up to `n` sleepers on `addr`, answers how many.
pub(crate) fn futex_wake(addr: usize, n: u32) -> Option<usize> {
    with(|_, _| ())?;
    shuttle::thread::sleep(Duration::ZERO);
    let woken = with(|s, _| {
        let mut out = Vec::new();
        for w in s.waiters.iter_mut().filter(|w| w.addr == addr && !w.woken).take(n as usize) {
            w.woken = true;
            out.push(w.thread.clone());
        }
        out
    })?;
    for t in &woken {
        t.unpark();
    }
    Some(woken.len())
}

/// The model processes of one execution.
#[derive(Debug, Default)]
pub struct Processes {
    handles: Vec<(usize, Option<shuttle::thread::JoinHandle<()>>)>,
    died: Vec<bool>,
}

impl Processes {
    /// Starts a model execution's bookkeeping (clock, pids, deaths). Call first thing in the
    /// function given to [`check`].
    pub fn new() -> Processes {
        let _ = current_task().expect("Processes::new runs inside a model execution");
        STATE.with(|s| {
            *s.borrow_mut() = Some(State {
                clock: 1_000_000_000,
                trace_from: std::env::var("RINGPOOL_MODEL_TRACE").ok().map(|v| v.parse().unwrap_or(0)),
                deaths: Vec::new(),
                procs: Vec::new(),
                waiters: Vec::new(),
                gate: Arc::new((Mutex::new(Gate::default()), Condvar::new())),
            })
        });
        Processes::default()
    }

    /// Starts a model process running `body`; it may die as `death` says.
    pub fn spawn(&mut self, death: Death, body: impl FnOnce() + Send + 'static) {
        let h = shuttle::thread::spawn(move || {
            let die_at = match death {
                Death::Never => None,
                Death::AtRandomStep(n) => Some(shuttle::rand::thread_rng().gen_range(1..=n.max(1))),
            };
            with(|s, me| s.procs[me].die_at = die_at);
            match catch_unwind(AssertUnwindSafe(body)) {
                Ok(()) => {
                    let gate = with(|s, me| {
                        s.procs[me].exited = true;
                        s.gate.clone()
                    })
                    .expect("inside the model");
                    let (lock, cv) = &*gate;
                    lock.lock().unwrap_or_else(|e| e.into_inner()).settled += 1;
                    cv.notify_all();
                }
                Err(p) if p.is::<Died>() => {}
                Err(p) => resume_unwind(p),
            }
        });
        let id = usize::from(h.thread().id());
        self.handles.push((id, Some(h)));
    }

    /// Waits until every process has finished or died; joins the finished ones. Answers, per
    /// process in spawn order, whether it died. The dead stay parked until [`release`](Self::release).
    pub fn settle(&mut self) -> Vec<bool> {
        let gate = with(|s, _| s.gate.clone()).expect("inside the model");
        {
            let (lock, cv) = &*gate;
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            g.expected = Some(self.handles.len());
            cv.notify_all();
            while g.settled < self.handles.len() {
                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
        if std::env::var_os("RINGPOOL_MODEL_VERBOSE").is_some() {
            let ops: Vec<(u64, Option<u64>, bool)> = self
                .handles
                .iter()
                .map(|(id, _)| with(|s, _| s.procs.get(*id).map_or((0, None, false), |p| (p.ops, p.die_at, p.dead))))
                .map(Option::unwrap_or_default)
                .collect();
            eprintln!("model: clock {:?} ns; (ops, die_at, died) per process: {ops:?}", now());
        }
        self.died = self
            .handles
            .iter()
            .map(|(id, _)| with(|s, _| s.procs.get(*id).is_some_and(|p| p.dead)).unwrap_or(false))
            .collect();
        for (k, (_, h)) in self.handles.iter_mut().enumerate() {
            if !self.died[k]
                && let Some(h) = h.take()
                && let Err(p) = h.join()
            {
                resume_unwind(p);
            }
        }
        self.died.clone()
    }

    /// After the checks: lets the dead processes unwind (their destructors run now, into a ring
    /// nobody checks any more) and joins them.
    pub fn release(mut self) {
        let gate = with(|s, _| s.gate.clone()).expect("inside the model");
        {
            let (lock, cv) = &*gate;
            lock.lock().unwrap_or_else(|e| e.into_inner()).released = true;
            cv.notify_all();
        }
        for (_, h) in self.handles.iter_mut() {
            if let Some(h) = h.take()
                && let Err(p) = h.join()
            {
                resume_unwind(p);
            }
        }
    }
}

/// Runs `f` under shuttle: `RINGPOOL_MODEL_ITERS` iterations (default `iterations`) of the random
/// scheduler, then as many of PCT (depth 3), each execution bounded by `max_steps` scheduling
/// steps (a survivor that needs more is reported as a hang). Seeds are fixed (reproducible runs);
/// `SHUTTLE_RANDOM_SEED` overrides them, and `RINGPOOL_MODEL_REPLAY` (a failing schedule shuttle
/// printed, or `@path` of a file holding it) replays one execution.
pub fn check(iterations: usize, max_steps: usize, f: impl Fn() + Send + Sync + 'static) {
    run_check(iterations, 0, max_steps, f)
}

/// [`check`] with at least `floor` iterations whatever `RINGPOOL_MODEL_ITERS` says: for a model
/// that must *find* a planted defect (a `should_panic` test), whose first failing execution under
/// the fixed seed moves whenever the code under test changes its atomic operations.
pub fn check_at_least(floor: usize, max_steps: usize, f: impl Fn() + Send + Sync + 'static) {
    run_check(floor, floor, max_steps, f)
}

fn run_check(iterations: usize, floor: usize, max_steps: usize, f: impl Fn() + Send + Sync + 'static) {
    // Process-wide caches filled on first use would make the first execution differ from the
    // others (and from a replay): they use std's atomics, not this seam (see `ring/records.rs`'s
    // PREFETCHW check), so no model hook runs for them.
    let iterations =
        std::env::var("RINGPOOL_MODEL_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(iterations).max(floor);
    let mut config = shuttle::Config::new();
    config.max_steps = shuttle::MaxSteps::FailAfter(max_steps);
    config.silence_warnings = true;
    let f = Arc::new(f);
    if let Ok(schedule) = std::env::var("RINGPOOL_MODEL_REPLAY") {
        // The schedule itself, or `@file` holding it (long schedules exceed the argument limit).
        let schedule = match schedule.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).expect("read the schedule file"),
            None => schedule,
        };
        let schedule: String = schedule.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let scheduler = shuttle::scheduler::ReplayScheduler::new_from_encoded(&schedule);
        let f = f.clone();
        shuttle::Runner::new(scheduler, config).run(move || f());
        return;
    }
    let which = std::env::var("RINGPOOL_MODEL_SCHEDULER").unwrap_or_default();
    if which == "nondeterminism" {
        // Runs each schedule twice and fails where they differ: the model must be replayable.
        let inner = shuttle::scheduler::RandomScheduler::new_from_seed(0x5eed_0001, iterations);
        let scheduler = shuttle::scheduler::UncontrolledNondeterminismCheckScheduler::new(inner);
        shuttle::Runner::new(scheduler, config).run(move || f());
        return;
    }
    if which.is_empty() || which == "random" {
        let scheduler = shuttle::scheduler::RandomScheduler::new_from_seed(0x5eed_0001, iterations);
        let f = f.clone();
        shuttle::Runner::new(scheduler, config.clone()).run(move || f());
    }
    if which.is_empty() || which == "pct" {
        let scheduler = shuttle::scheduler::PctScheduler::new_from_seed(0x5eed_0002, 3, iterations);
        shuttle::Runner::new(scheduler, config).run(move || f());
    }
}
