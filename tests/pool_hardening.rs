//! The pool against a SIGKILL at every step of its slot protocol, a pool built on a thread that
//! ends, a parent killed under its workers, nested use, and careless builder settings.
//!
//! The harness runs several threads, so pools built here spawn their workers (re-executing this
//! test binary). Every wait has a deadline: a hang fails the test instead of stalling the run.

mod common;
mod process_common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use ringpool::Pool;
use ringpool::pool::{FaultPlan, FaultPoint, MapError, TaskError};

/// Runs `f` on a thread and waits at most `limit` for its answer; a hang or a panic fails the test.
fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {limit:?}: hung"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the thread panicked"),
    }
}

/// One task input of the run-counting task: which test run, which item.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Item {
    tag: u64,
    i: u64,
}

/// Where the workers of test process `parent` record the runs of run `tag`.
fn runs_path(parent: u32, tag: u64) -> PathBuf {
    std::env::temp_dir().join(format!("ringpool-pool-runs-{parent}-{tag}"))
}

/// Records that it ran (an 8-byte append to a file named by the test process and the run), then
/// answers `3i + 1`.
fn counted(x: &Item) -> u64 {
    let path = runs_path(std::os::unix::process::parent_id(), x.tag);
    if let Ok(mut f) = OpenOptions::new().append(true).create(true).open(path) {
        let _ = f.write_all(&x.i.to_le_bytes());
    }
    x.i * 3 + 1
}

/// How many times each of `n` items ran, from the runs file.
fn runs_of(path: &PathBuf, n: usize) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut runs = vec![0u32; n];
    for c in bytes.chunks_exact(8) {
        let i = u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize;
        assert!(i < n, "a run of an item that was never submitted: {i}");
        runs[i] += 1;
    }
    runs
}

/// Defect 5 and its class: workers SIGKILLed at every step of the claim and the run, with pauses
/// that widen each race (a takeover's compare-and-swap against the parent's reset of the same
/// slot, above all). Every map completes within its deadline; every item is its right result or
/// `WorkerDied`, never missing; no task runs twice; the pool's drop completes too.
#[test]
fn every_item_settles_once_under_kills_at_every_step() {
    use FaultPoint::*;
    let ms = Duration::from_millis;
    let plans = [
        ("die on receipt", FaultPlan::none().die(Received, 100)),
        ("die before the claim", FaultPlan::none().die(BeforeClaim, 100).pause(BeforeClaim, ms(1))),
        ("die claimed, slow takeover", FaultPlan::none().die(Claimed, 150).pause(BeforeTakeover, ms(30))),
        ("die claimed, slow settle", FaultPlan::none().die(Claimed, 150).pause(ParentSettle, ms(5))),
        ("die after commit", FaultPlan::none().die(Committed, 100)),
        ("die after running", FaultPlan::none().die(Ran, 100)),
        ("die after done", FaultPlan::none().die(Done, 100)),
        (
            "die anywhere",
            FaultPlan::none()
                .die(Received, 30)
                .die(Claimed, 50)
                .die(Committed, 30)
                .die(Ran, 30)
                .die(Done, 30)
                .pause(BeforeTakeover, ms(10))
                .pause(ParentSettle, ms(2)),
        ),
    ];
    let n: u64 = 300;
    let mut deaths = 0;
    for (tag, (name, plan)) in plans.into_iter().enumerate() {
        let tag = tag as u64;
        let path = runs_path(std::process::id(), tag);
        let _ = std::fs::remove_file(&path);
        let (out, died) = within(Duration::from_secs(60), name, move || {
            let pool = Pool::builder().workers(3).chunk_size(2).fault_plan(plan).build().expect("pool");
            let out = pool.map(counted, (0..n).map(|i| Item { tag, i }));
            let died = pool.stats().workers_died;
            drop(pool);
            (out, died)
        });
        eprintln!("{name}: {died} workers died");
        deaths += died;
        let results: Vec<Result<u64, TaskError>> = match out {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(MapError::Tasks(f)) => f.into_results(),
            Err(e) => panic!("{name}: the map failed as a whole: {e}"),
        };
        assert_eq!(results.len(), n as usize, "{name}: every item has an outcome");
        let runs = runs_of(&path, n as usize);
        let _ = std::fs::remove_file(&path);
        for (i, (r, &ran)) in results.iter().zip(&runs).enumerate() {
            assert!(ran <= 1, "{name}: item {i} ran {ran} times");
            match r {
                Ok(v) => {
                    assert_eq!(*v, 3 * i as u64 + 1, "{name}: item {i}");
                    assert_eq!(ran, 1, "{name}: item {i} has a result but never ran");
                }
                Err(TaskError::WorkerDied { .. }) => {}
                Err(e) => panic!("{name}: item {i}: unexpected {e}"),
            }
        }
    }
    assert!(deaths > 0, "the plans killed no worker: the test tested nothing");
}

/// The same with futures, half of them cancelled while workers die at each step: a cancelled task
/// never runs; every other one is its right result or `WorkerDied`, run at most once; every
/// future settles within the deadline.
#[test]
fn futures_and_cancels_settle_once_under_kills() {
    use FaultPoint::*;
    let ms = Duration::from_millis;
    let plans = [
        (
            "die claimed, slow takeover, slow cancel",
            FaultPlan::none().die(Claimed, 150).pause(BeforeTakeover, ms(10)).pause(ParentCancel, ms(1)),
        ),
        ("die on receipt, slow claim", FaultPlan::none().die(Received, 100).pause(BeforeClaim, ms(1))),
        ("die after commit or done", FaultPlan::none().die(Committed, 60).die(Done, 60)),
    ];
    let n: u64 = 150;
    for (k, (name, plan)) in plans.into_iter().enumerate() {
        let tag = 100 + k as u64;
        let path = runs_path(std::process::id(), tag);
        let _ = std::fs::remove_file(&path);
        let outcomes = within(Duration::from_secs(60), name, move || {
            let pool = Pool::builder().workers(2).slots(8).fault_plan(plan).build().expect("pool");
            let futures: Vec<_> = (0..n).map(|i| pool.submit(counted, Item { tag, i }).expect("submit")).collect();
            let cancelled: Vec<bool> = futures.iter().enumerate().map(|(i, f)| i % 2 == 1 && f.cancel()).collect();
            let results: Vec<Result<u64, TaskError>> = futures.iter().map(|f| f.wait()).collect();
            drop(futures);
            drop(pool);
            (cancelled, results)
        });
        let runs = runs_of(&path, n as usize);
        let _ = std::fs::remove_file(&path);
        let (cancelled, results) = outcomes;
        assert!(cancelled.iter().any(|&c| c), "{name}: no cancel took effect: the test tested nothing");
        for (i, ((c, r), &ran)) in cancelled.iter().zip(&results).zip(&runs).enumerate() {
            assert!(ran <= 1, "{name}: task {i} ran {ran} times");
            match r {
                Err(TaskError::Cancelled) => {
                    assert!(*c, "{name}: task {i} reports Cancelled, but its cancel answered false");
                    assert_eq!(ran, 0, "{name}: task {i} was cancelled and ran anyway");
                }
                _ if *c => panic!("{name}: task {i} was cancelled but settled as {r:?}"),
                Ok(v) => {
                    assert_eq!(*v, 3 * i as u64 + 1, "{name}: task {i}");
                    assert_eq!(ran, 1, "{name}: task {i} has a result but never ran");
                }
                Err(TaskError::WorkerDied { .. }) => {}
                Err(e) => panic!("{name}: task {i}: unexpected {e}"),
            }
        }
    }
}

fn square(x: &u64) -> u64 {
    x * x
}

fn add_one(x: &u64) -> u64 {
    x + 1
}

/// Defect 7: a map whose inputs come from an `imap` of the same pool. The outer map pulls its
/// input iterator, which needs the pool to make progress: it must not be pulled under the pool's
/// lock.
#[test]
fn nested_map_over_imap_completes() {
    let out = within(Duration::from_secs(60), "map over imap", || {
        let pool = Pool::new(2).expect("pool");
        let inner = pool.imap(add_one, 0..500u64).expect("imap").map(|r| r.expect("inner task"));
        let out = pool.map(square, inner).expect("outer map");
        // And the other way round: an imap fed by a map's results, and a map inside an iterator
        // adapter of another map.
        let again: Vec<u64> =
            pool.imap(square, pool.map(add_one, 0..50u64).expect("map")).expect("imap").map(Result::unwrap).collect();
        let inside = pool.map(square, (0..20u64).map(|i| pool.map(add_one, [i]).expect("inner map")[0])).expect("map");
        (out, again, inside)
    });
    assert_eq!(out.0, (0..500u64).map(|i| (i + 1) * (i + 1)).collect::<Vec<_>>());
    assert_eq!(out.1, (0..50u64).map(|i| (i + 1) * (i + 1)).collect::<Vec<_>>());
    assert_eq!(out.2, (0..20u64).map(|i| (i + 1) * (i + 1)).collect::<Vec<_>>());
}

/// Defect 7: a map whose input iterator blocks (here: until the test opens a gate) does not stall
/// another thread's map on the same pool.
#[test]
fn a_blocked_input_iterator_does_not_stall_another_map() {
    let pool = std::sync::Arc::new(Pool::new(2).expect("pool"));
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let slow = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            let inputs = (0..10u64).inspect(move |&i| {
                if i == 5 && !sent {
                    sent = true;
                    let _ = entered_tx.send(());
                    // Blocks until the test opens the gate (or gives up and drops it).
                    let _ = gate_rx.recv();
                }
            });
            pool.map(square, inputs)
        })
    };
    entered_rx.recv_timeout(Duration::from_secs(30)).expect("the slow map pulled its inputs");
    let other = {
        let pool = pool.clone();
        within(Duration::from_secs(30), "a map beside a blocked input iterator", move || pool.map(add_one, 0..100u64))
    };
    assert_eq!(other.expect("other map"), (1..101u64).collect::<Vec<_>>());
    drop(gate_tx);
    let slow = slow.join().expect("slow map thread");
    assert_eq!(slow.expect("slow map"), (0..10u64).map(|i| i * i).collect::<Vec<_>>());
}

fn my_pid(_: &u64) -> u64 {
    u64::from(std::process::id())
}

/// fcntl(2) query `cmd` (no argument) on `fd`.
fn fcntl_query(fd: i32, cmd: libc::c_int) -> libc::c_int {
    // SAFETY: the query commands used here read a descriptor's flags, owner or signal: no memory
    // is involved; a closed descriptor just fails.
    unsafe { libc::fcntl(fd, cmd) }
}

/// How a worker watches its parent: `1000 * (death signal set by PR_SET_PDEATHSIG) + 10 * (armed
/// watch descriptors: those that signal SIGKILL to this process) + (those of them close-on-exec)`.
fn watch_state(_: &u64) -> u64 {
    let mut sig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer, which points at `sig`.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut libc::c_int) };
    let (mut armed, mut cloexec) = (0u64, 0u64);
    for fd in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
    {
        // F_GETSIG is 11 on Linux.
        if fcntl_query(fd, 11) == libc::SIGKILL && fcntl_query(fd, libc::F_GETOWN) == std::process::id() as libc::c_int
        {
            armed += 1;
            if fcntl_query(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 {
                cloexec += 1;
            }
        }
    }
    1000 * sig as u64 + 10 * armed + cloexec
}

/// Defect 6: a pool built and used on a thread that then ends keeps its workers: the workers
/// die with the parent process, not with the thread that started them. Later maps from the main
/// thread succeed with the same workers, none killed.
#[test]
fn a_pool_built_on_a_thread_that_ends_keeps_its_workers() {
    let _l = process_common::lock();
    let pool = std::thread::spawn(|| {
        let pool = Pool::new(3).expect("pool");
        assert_eq!(pool.map(square, 0..60u64).expect("map on the building thread").len(), 60);
        pool
    })
    .join()
    .expect("building thread");
    let pids = pool.worker_pids();
    let strays: Vec<_> = pids.iter().map(|&p| process_common::Stray::new(p)).collect();
    for round in 0..5 {
        let out = pool.map(square, 0..60u64).unwrap_or_else(|e| panic!("map {round} from main: {e}"));
        assert_eq!(out, (0..60u64).map(|i| i * i).collect::<Vec<_>>());
    }
    // Workers are still the first three, alive, and none died.
    let ran_on: std::collections::HashSet<u64> = pool.map(my_pid, 0..200u64).expect("map").into_iter().collect();
    for s in &strays {
        assert!(s.is_alive(), "worker {} was killed when the building thread ended", s.pid);
    }
    assert!(ran_on.iter().all(|p| pids.contains(&(*p as u32))), "tasks ran on replacements: {ran_on:?} vs {pids:?}");
    assert_eq!(pool.stats().workers_died, 0, "workers died: {:?}", pool.stats());
    // They watch the parent process, not a thread: no PR_SET_PDEATHSIG, one armed watch
    // descriptor, close-on-exec (they were re-executed: it crossed the exec, then was closed to
    // the programs they run).
    for s in pool.map(watch_state, 0..30u64).expect("map") {
        assert_eq!(s, 11, "worker watch state {s} (1000 * pdeathsig + 10 * armed + close-on-exec)");
    }
    drop(pool);
    process_common::assert_no_zombies();
}

/// Defect 6, the other half: when the parent *process* dies (SIGKILL: no destructor runs), its
/// workers die too, within a deadline. The parent here is a forked intermediate process that
/// builds a pool (forked workers, and spawned ones; on its main thread, and on a helper thread
/// that then ends), reports its workers' pids, and waits to be killed.
#[test]
fn workers_die_with_their_parent_process() {
    use ringpool::pool::StartMethod;
    for (method, on_thread) in
        [(StartMethod::Fork, false), (StartMethod::Spawn, false), (StartMethod::Spawn, true), (StartMethod::Auto, true)]
    {
        let what = format!("{method:?} workers, pool built on a helper thread: {on_thread}");
        let _l = process_common::lock();
        let (rx, tx) = process_common::pipe();
        let mut parent = process_common::fork(move || {
            let build = move || {
                let pool = Pool::builder().workers(3).start_method(method).build().expect("pool");
                assert_eq!(pool.map(square, 0..30u64).expect("map").len(), 30);
                pool
            };
            let pool = if on_thread { std::thread::spawn(build).join().expect("thread") } else { build() };
            let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
            process_common::send_line(&tx, &pids.join(" "));
            process_common::sleep_forever();
        });
        let line = process_common::recv_line(std::os::fd::AsFd::as_fd(&rx), Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{what}: the intermediate reported no workers"));
        let workers: Vec<process_common::Stray> =
            line.split_whitespace().map(|p| process_common::Stray::new(p.parse().expect("pid"))).collect();
        assert_eq!(workers.len(), 3, "{what}: {line}");
        assert!(workers.iter().all(|w| w.is_alive()), "{what}: a worker is already dead before the parent");
        parent.kill().expect("kill the intermediate");
        let _ = parent.join_timeout(Duration::from_secs(10));
        let gone = process_common::wait_for(Duration::from_secs(20), || workers.iter().all(|w| !w.is_alive()));
        let alive: Vec<u32> = workers.iter().filter(|w| w.is_alive()).map(|w| w.pid).collect();
        assert!(gone, "{what}: workers {alive:?} outlived their parent process");
    }
}

/// Lesser defect: careless builder values answer an error, never a panic (debug builds checked
/// `slot_bytes(usize::MAX)` with an overflow panic).
#[test]
fn builder_extremes_answer_errors_not_panics() {
    let bad: Vec<(&str, ringpool::PoolBuilder)> = vec![
        ("workers(usize::MAX)", Pool::builder().workers(usize::MAX)),
        ("workers(1025)", Pool::builder().workers(1025)),
        ("slots(0)", Pool::builder().workers(1).slots(0)),
        ("slots(usize::MAX)", Pool::builder().workers(1).slots(usize::MAX)),
        ("slot_bytes(0)", Pool::builder().workers(1).slot_bytes(0)),
        ("slot_bytes(1)", Pool::builder().workers(1).slot_bytes(1)),
        ("slot_bytes(usize::MAX)", Pool::builder().workers(1).slot_bytes(usize::MAX)),
        ("slot_bytes(usize::MAX - 62)", Pool::builder().workers(1).slot_bytes(usize::MAX - 62)),
        ("slot_bytes(1 GiB + 1)", Pool::builder().workers(1).slot_bytes((1 << 30) + 1)),
        ("chunk_size(0)", Pool::builder().workers(1).chunk_size(0)),
    ];
    for (what, b) in bad {
        let r = std::panic::catch_unwind(move || b.build());
        match r {
            Ok(Ok(_)) => panic!("{what}: built a pool"),
            Ok(Err(e)) => eprintln!("{what}: {e}"),
            Err(_) => panic!("{what}: panicked"),
        }
    }
}

/// Every `PoolBuilder` setter at its boundaries: a value out of range answers
/// `PoolError::OutOfRange` naming the setting, the value and the limit; a value in range builds a
/// pool that computes right.
#[test]
fn every_builder_setting_at_its_boundaries() {
    use ringpool::pool::{MAX_SLOT_BYTES, MAX_SLOTS, MAX_WORKERS, MIN_SLOT_BYTES, PoolError, StartMethod};
    use ringpool::sync::SpinPolicy;
    let refused: Vec<(&str, u128, ringpool::PoolBuilder)> = vec![
        ("workers", (MAX_WORKERS + 1) as u128, Pool::builder().workers(MAX_WORKERS + 1)),
        ("workers", usize::MAX as u128, Pool::builder().workers(usize::MAX)),
        ("chunk_size", 0, Pool::builder().workers(1).chunk_size(0)),
        ("slots", 0, Pool::builder().workers(1).slots(0)),
        ("slots", (MAX_SLOTS + 1) as u128, Pool::builder().workers(1).slots(MAX_SLOTS + 1)),
        ("slots", usize::MAX as u128, Pool::builder().workers(1).slots(usize::MAX)),
        ("slot_bytes", 0, Pool::builder().workers(1).slot_bytes(0)),
        ("slot_bytes", 1, Pool::builder().workers(1).slot_bytes(1)),
        ("slot_bytes", (MIN_SLOT_BYTES - 1) as u128, Pool::builder().workers(1).slot_bytes(MIN_SLOT_BYTES - 1)),
        ("slot_bytes", (MAX_SLOT_BYTES + 1) as u128, Pool::builder().workers(1).slot_bytes(MAX_SLOT_BYTES + 1)),
        ("slot_bytes", usize::MAX as u128 - 62, Pool::builder().workers(1).slot_bytes(usize::MAX - 62)),
        ("slot_bytes", usize::MAX as u128, Pool::builder().workers(1).slot_bytes(usize::MAX)),
    ];
    for (setting, value, b) in refused {
        match b.build() {
            Err(PoolError::OutOfRange { setting: s, value: v, limit }) => {
                assert_eq!((s, v), (setting, value));
                let text = PoolError::OutOfRange { setting: s, value: v, limit }.to_string();
                assert!(text.contains(setting) && text.contains(&value.to_string()) && text.contains(limit), "{text}");
            }
            Err(e) => panic!("{setting}({value}): {e}, not OutOfRange"),
            Ok(_) => panic!("{setting}({value}): built a pool"),
        }
    }
    // The fork start method from the threaded test harness: a typed refusal, not a panic.
    assert!(matches!(Pool::builder().workers(1).start_method(StartMethod::Fork).build(), Err(PoolError::Start(_))));

    let accepted: Vec<(&str, ringpool::PoolBuilder)> = vec![
        ("workers(0): one per core", Pool::builder().workers(0)),
        ("workers(1)", Pool::builder().workers(1)),
        ("chunk_size(1)", Pool::builder().workers(1).chunk_size(1)),
        ("chunk_size(usize::MAX): a slot's worth", Pool::builder().workers(1).chunk_size(usize::MAX)),
        ("max_tasks_per_worker(0): never", Pool::builder().workers(1).max_tasks_per_worker(0)),
        ("max_tasks_per_worker(1)", Pool::builder().workers(1).max_tasks_per_worker(1)),
        ("max_tasks_per_worker(u64::MAX)", Pool::builder().workers(1).max_tasks_per_worker(u64::MAX)),
        ("slots(1)", Pool::builder().workers(1).slots(1)),
        ("slot_bytes(MIN)", Pool::builder().workers(1).slot_bytes(MIN_SLOT_BYTES)),
        ("slot_bytes(MIN + 1): rounded up", Pool::builder().workers(1).slot_bytes(MIN_SLOT_BYTES + 1)),
        ("slot_bytes(MIN) with slots(1)", Pool::builder().workers(1).slots(1).slot_bytes(MIN_SLOT_BYTES)),
        ("spin park", Pool::builder().workers(1).spin(SpinPolicy::park())),
        ("spin busy (Duration::MAX)", Pool::builder().workers(1).spin(SpinPolicy::busy())),
        ("spawn", Pool::builder().workers(1).start_method(StartMethod::Spawn)),
        ("auto", Pool::builder().workers(1).start_method(StartMethod::Auto)),
    ];
    for (what, b) in accepted {
        let out = within(Duration::from_secs(60), what, move || {
            let pool = b.build().unwrap_or_else(|e| panic!("{what}: {e}"));
            pool.map(add_one, 0..40u64)
        });
        assert_eq!(out.unwrap_or_else(|e| panic!("{what}: {e}")), (1..41u64).collect::<Vec<_>>(), "{what}");
    }
}

/// Defect 6 for any `Process`: a child started from a thread that then ends (and is gone from
/// `/proc/self/task`, so a thread-bound death signal would have been sent) still answers.
#[test]
fn a_process_started_on_a_thread_that_ends_lives_on() {
    let _l = process_common::lock();
    let (to_child_r, to_child_w) = process_common::pipe();
    let (from_child_r, from_child_w) = process_common::pipe();
    let (mut child, tid) = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let child = process_common::fork(move || {
            while let Some(line) =
                process_common::recv_line(std::os::fd::AsFd::as_fd(&to_child_r), Duration::from_secs(60))
            {
                if line == "quit" {
                    break;
                }
                process_common::send_line(&from_child_w, &format!("re: {line}"));
            }
        });
        (child, tid)
    })
    .join()
    .expect("starting thread");
    let thread_gone = process_common::wait_for(Duration::from_secs(20), || {
        !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
    });
    assert!(thread_gone, "the starting thread {tid} is still listed");
    process_common::send_line(&to_child_w, "ping");
    let answer = process_common::recv_line(std::os::fd::AsFd::as_fd(&from_child_r), Duration::from_secs(20));
    assert_eq!(answer.as_deref(), Some("re: ping"), "the child died with the thread that started it");
    process_common::send_line(&to_child_w, "quit");
    let status = child.join_timeout(Duration::from_secs(20)).expect("child ends when told");
    assert!(status.success(), "{status}");
}

/// An input iterator that panics (outside the pool's lock) leaves the pool usable, for maps and
/// for streams alike, and its drop completes.
#[test]
fn a_panicking_input_iterator_leaves_the_pool_usable() {
    let out = within(Duration::from_secs(60), "maps after a panicking iterator", || {
        let pool = Pool::new(2).expect("pool");
        let bad = || (0..1000u64).inspect(|&i| assert!(i != 700, "input iterator gives up"));
        let mapped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.map(square, bad())));
        assert!(mapped.is_err(), "the iterator's panic reaches the caller");
        let streamed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.imap_unordered(square, bad()).expect("imap").count()
        }));
        assert!(streamed.is_err(), "the iterator's panic reaches the caller");
        pool.map(add_one, 0..100u64).expect("map after the panics")
    });
    assert_eq!(out, (1..101u64).collect::<Vec<_>>());
}
