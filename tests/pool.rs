//! The pool: a million tasks, every kind of worker death, panics, timeouts, cancellation, worker
//! retirement, initializers, both start methods, and no zombie or leftover afterwards.
//!
//! The test harness runs several threads, so pools built here spawn their workers (re-executing
//! this test binary); the fork start method is tested from a forked, single-threaded child.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use ringpool::pool::{MapError, StartMethod, TaskError, WaitError, as_completed, wait};
use ringpool::{Pool, PoolBuilder};

fn square(x: &u64) -> u64 {
    x.wrapping_mul(*x)
}

fn double_by_value(x: u32) -> u64 {
    u64::from(x) * 2
}

/// Sleeps `ms` milliseconds, then answers its input.
fn nap(ms: &u64) -> u64 {
    std::thread::sleep(Duration::from_millis(*ms));
    *ms
}

/// Kills its own worker in three different ways on three inputs; answers the input otherwise.
fn die_on(x: &u64) -> u64 {
    match *x {
        1_000_001 => {
            // SAFETY: raising a signal on ourselves has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
            0
        }
        1_000_002 => std::process::abort(),
        1_000_003 => {
            // SAFETY: deliberately none: a null write, to make the worker die of SIGSEGV, as a
            // buggy task would. Only this worker process is affected.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
            0
        }
        v => v + 1,
    }
}

fn panic_on_13(x: &u64) -> u64 {
    if *x == 13 {
        panic!("thirteen is unlucky");
    }
    *x
}

fn forever(_: &u64) -> u64 {
    loop {
        std::thread::sleep(Duration::from_millis(50));
    }
}

static INITIALIZED: AtomicU64 = AtomicU64::new(0);

fn init_worker() {
    INITIALIZED.store(42, Ordering::Relaxed);
}

fn read_init(_: &u64) -> u64 {
    INITIALIZED.load(Ordering::Relaxed)
}

fn my_pid(_: &u64) -> u64 {
    u64::from(std::process::id())
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
struct Point {
    x: f64,
    y: f64,
}

fn norm(p: &Point) -> f64 {
    (p.x * p.x + p.y * p.y).sqrt()
}

fn pool(workers: usize) -> Pool {
    Pool::new(workers).expect("pool")
}

#[test]
fn a_million_tasks_in_order() {
    let p = pool(2);
    let out = p.map(square, 0..1_000_000u64).unwrap();
    assert_eq!(out.len(), 1_000_000);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, (i as u64) * (i as u64), "item {i}");
    }
    let st = p.stats();
    assert_eq!(st.completed, 1_000_000);
    assert_eq!(st.failed, 0);
}

#[test]
fn a_million_tasks_unordered_as_a_complete_set() {
    let p = pool(2);
    let mut seen = vec![false; 1_000_000];
    let mut n = 0;
    for (i, r) in p.imap_unordered(square, 0..1_000_000u64).unwrap() {
        let v = r.unwrap();
        assert_eq!(v, (i as u64) * (i as u64));
        assert!(!seen[i], "item {i} twice");
        seen[i] = true;
        n += 1;
    }
    assert_eq!(n, 1_000_000);
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn imap_is_ordered_and_lazy() {
    let p = pool(2);
    // Inputs are taken as slots free up: 100,000 of them do not fit the slots at once.
    let mut taken = 0u64;
    let inputs = (0..100_000u64).inspect(|_| taken += 1);
    let mut it = p.imap(square, inputs).unwrap();
    for i in 0..10u64 {
        assert_eq!(it.next().unwrap().unwrap(), i * i);
    }
    drop(it);
    assert!(taken < 100_000, "imap read all {taken} inputs before the first results");
    let all: Vec<u64> = p.imap(square, 0..3000u64).unwrap().map(Result::unwrap).collect();
    assert_eq!(all, (0..3000u64).map(|i| i * i).collect::<Vec<_>>());
}

#[test]
fn by_value_tasks_and_struct_types() {
    let p = pool(2);
    assert_eq!(
        p.map(ringpool::pool::by_value(double_by_value), 0..10u32).unwrap(),
        (0..10u64).map(|i| i * 2).collect::<Vec<_>>()
    );
    let pts = (0..1000).map(|i| Point { x: f64::from(i), y: 0.0 });
    let norms = p.map(norm, pts).unwrap();
    assert_eq!(norms[999], 999.0);
    assert_eq!(p.apply(|x: &[u64; 4]| x.iter().sum::<u64>(), [1, 2, 3, 4]).unwrap(), 10);
}

#[test]
fn a_task_too_large_for_a_slot_is_refused() {
    let p = PoolBuilder::new().workers(1).slot_bytes(4096).build().unwrap();
    let e = p.map(|x: &[u64; 1024]| x[0], std::iter::once([0u64; 1024])).unwrap_err();
    assert!(matches!(e, MapError::Pool(ringpool::pool::PoolError::TaskTooLarge { .. })), "{e}");
    // The pool still works.
    assert_eq!(p.apply(square, 3).unwrap(), 9);
}

#[test]
fn a_panicking_task_fails_alone() {
    let p = pool(2);
    let before = p.worker_pids();
    let e = p.map(panic_on_13, 0..100u64).unwrap_err();
    let MapError::Tasks(t) = e else { panic!("expected task failures") };
    assert_eq!(t.failed(), 1);
    for (i, r) in t.results().iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u64),
            Err(TaskError::Panicked { message, .. }) => {
                assert_eq!(i, 13);
                assert!(message.contains("thirteen is unlucky"), "{message}");
            }
            Err(other) => panic!("item {i}: {other}"),
        }
    }
    assert_eq!(p.worker_pids(), before, "a task's panic does not cost its worker");
    assert!(p.apply(panic_on_13, 13).unwrap_err().to_string().contains("thirteen"));
}

/// A worker that dies of SIGKILL, abort or SIGSEGV in the middle of a map fails only its own
/// in-flight task, with its pid and signal; the rest of that map completes, it is replaced, and
/// the next map on the same pool succeeds.
#[test]
fn worker_deaths_fail_only_their_tasks() {
    let p = PoolBuilder::new().workers(2).chunk_size(1).build().unwrap();
    let inputs: Vec<u64> = (0..300u64).chain([1_000_001, 1_000_002, 1_000_003]).chain(300..600).collect();
    let e = p.map(die_on, inputs.iter().copied()).unwrap_err();
    let MapError::Tasks(t) = e else { panic!("expected task failures, got {e}") };
    assert_eq!(t.failed(), 3, "{t}");
    let mut signals = HashSet::new();
    for (r, input) in t.results().iter().zip(&inputs) {
        match r {
            Ok(v) => assert_eq!(*v, input + 1),
            Err(TaskError::WorkerDied { pid, status }) => {
                assert!(*input > 1_000_000, "a healthy task failed: {input}");
                assert!(*pid > 0);
                signals.insert(status.signal());
            }
            Err(other) => panic!("{input}: {other}"),
        }
    }
    assert_eq!(signals, HashSet::from([Some(libc::SIGKILL), Some(libc::SIGABRT), Some(libc::SIGSEGV)]));
    let st = p.stats();
    assert_eq!(st.workers_died, 3);
    assert_eq!(p.worker_pids().len(), 2, "dead workers are replaced");
    assert_eq!(p.map(square, 0..1000u64).unwrap()[999], 999 * 999);
}

/// A worker killed from outside (SIGKILL by another process) while busy.
#[test]
fn worker_killed_from_outside_mid_map() {
    let p = PoolBuilder::new().workers(2).chunk_size(1).build().unwrap();
    let victim = p.worker_pids()[0];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL);
    });
    // 400 tasks of 2 ms on 2 workers: about 400 ms, so the kill lands in the middle.
    let r = p.map(nap, std::iter::repeat_n(2u64, 400));
    killer.join().unwrap();
    match r {
        Ok(v) => panic!("the kill missed the map ({} results)", v.len()),
        Err(MapError::Tasks(t)) => {
            assert!(t.failed() >= 1 && t.failed() <= 2, "{t}");
            for r in t.results() {
                match r {
                    Ok(v) => assert_eq!(*v, 2),
                    Err(TaskError::WorkerDied { pid, status }) => {
                        assert_eq!(*pid, victim);
                        assert_eq!(status.signal(), Some(libc::SIGKILL));
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        }
        Err(e) => panic!("{e}"),
    }
    assert!(!p.worker_pids().contains(&victim));
    assert_eq!(p.map(square, 0..100u64).unwrap()[10], 100);
}

#[test]
fn futures_as_completed_and_wait() {
    let p = pool(2);
    let futs: Vec<_> = (0..10u64).map(|i| p.submit(nap, (10 - i) * 5).unwrap()).collect();
    let mut order = Vec::new();
    for f in as_completed(futs) {
        assert!(f.is_done());
        order.push(f.wait().unwrap());
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=10u64).map(|i| i * 5).collect::<Vec<_>>());
    let futs: Vec<_> = (0..4u64).map(|i| p.submit(nap, i * 100).unwrap()).collect();
    let (done, pending) = wait(&futs, Duration::from_secs(30));
    assert_eq!((done.len(), pending.len()), (4, 0));
    assert_eq!(futs[3].wait().unwrap(), 300);
    assert_eq!(futs[3].wait().unwrap(), 300, "a result can be read twice");
}

#[test]
fn wait_timeout_on_a_task_that_never_ends() {
    let p = pool(1);
    let f = p.submit(forever, 0).unwrap();
    let t = Instant::now();
    assert_eq!(f.wait_timeout(Duration::from_millis(300)), Err(WaitError::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(!f.is_done());
    p.terminate();
    assert_eq!(f.wait_timeout(Duration::from_secs(5)), Err(WaitError::Task(TaskError::Terminated)));
}

#[test]
fn cancel_only_what_has_not_started() {
    let p = pool(1);
    let running = p.submit(nap, 300).unwrap();
    // Make sure the first task has started.
    let t = Instant::now();
    while p.stats().chunks < 1 || t.elapsed() < Duration::from_millis(50) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let queued: Vec<_> = (0..5u64).map(|i| p.submit(square, i).unwrap()).collect();
    assert!(queued[1].cancel());
    assert!(queued[3].cancel());
    assert!(!running.cancel(), "a running task cannot be cancelled");
    assert_eq!(running.wait().unwrap(), 300);
    for (i, f) in queued.iter().enumerate() {
        match f.wait() {
            Ok(v) => assert_eq!(v, (i * i) as u64),
            Err(TaskError::Cancelled) => assert!(i == 1 || i == 3),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!queued[0].cancel(), "a finished task cannot be cancelled");
}

#[test]
fn workers_retire_after_their_task_limit() {
    let p = PoolBuilder::new().workers(2).chunk_size(1).max_tasks_per_worker(10).build().unwrap();
    let first = p.worker_pids();
    let pids: Vec<u64> = p.map(my_pid, 0..100u64).unwrap();
    let distinct: HashSet<u64> = pids.iter().copied().collect();
    assert!(distinct.len() >= 10, "100 tasks, 10 per worker: at least 10 workers, saw {}", distinct.len());
    assert!(p.stats().workers_retired >= 8, "{:?}", p.stats());
    assert_ne!(p.worker_pids(), first);
    assert_eq!(p.map(square, 0..50u64).unwrap()[7], 49);
}

#[test]
fn initializer_runs_in_every_worker() {
    let p = PoolBuilder::new().workers(2).initializer(init_worker).build().unwrap();
    assert!(p.map(read_init, 0..100u64).unwrap().iter().all(|&v| v == 42));
}

#[test]
fn closed_pool_refuses_and_join_waits() {
    let p = pool(2);
    let f = p.submit(nap, 100).unwrap();
    p.close();
    assert!(matches!(p.map(square, 0..10u64), Err(MapError::Pool(ringpool::pool::PoolError::Closed))));
    p.join().unwrap();
    assert_eq!(f.wait().unwrap(), 100, "join waited for the outstanding task");
    assert!(p.worker_pids().is_empty());
}

/// The fork start method, from a forked single-threaded child (the harness runs threads).
#[test]
fn forked_workers() {
    let child = common::spawn(|| {
        let p = match PoolBuilder::new().workers(2).start_method(StartMethod::Fork).build() {
            Ok(p) => p,
            Err(_) => return 2,
        };
        match p.map(square, 0..10_000u64) {
            Ok(v) if v[9999] == 9999 * 9999 => {}
            _ => return 3,
        }
        match p.map(die_on, [1u64, 1_000_001, 2]) {
            Err(MapError::Tasks(t)) if t.failed() == 1 => {}
            _ => return 4,
        }
        0
    });
    child.join(Duration::from_secs(60));
}

#[test]
fn spawned_workers_explicitly() {
    let p = PoolBuilder::new().workers(2).start_method(StartMethod::Spawn).build().unwrap();
    let me = u64::from(std::process::id());
    let pids = p.map(my_pid, 0..10u64).unwrap();
    assert!(pids.iter().all(|&pid| pid != me));
}

#[test]
fn no_zombies_and_nothing_left_behind() {
    let pids = {
        let p = pool(3);
        p.map(square, 0..1000u64).unwrap();
        p.worker_pids()
    };
    // Dropped: every worker reaped.
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(stat.is_err() || !stat.unwrap().contains(") Z "), "worker {pid} is a zombie");
    }
    assert!(common::leftovers().is_empty(), "{:?}", common::leftovers());
}

/// With big chunks, a worker that dies in the middle of one keeps what it finished: only the
/// items from the fatal one on fail.
#[test]
fn a_death_fails_only_the_unfinished_part_of_its_chunk() {
    let p = PoolBuilder::new().workers(2).chunk_size(100).build().unwrap();
    // Items 0..1000 in chunks of 100; item 250 kills its worker (it is the 51st of its chunk).
    let inputs: Vec<u64> = (0..1000u64).map(|i| if i == 250 { 1_000_001 } else { i }).collect();
    let MapError::Tasks(t) = p.map(die_on, inputs.iter().copied()).unwrap_err() else { panic!() };
    for (i, r) in t.results().iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, inputs[i] + 1, "item {i}"),
            Err(TaskError::WorkerDied { status, .. }) => {
                assert!((250..300).contains(&i), "item {i} of another chunk or finished before the death failed");
                assert_eq!(status.signal(), Some(libc::SIGKILL));
            }
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    assert_eq!(t.failed(), 50, "the fatal item and the 49 after it in its chunk");
}

#[test]
fn as_completed_over_two_pools_and_future_ids() {
    let a = pool(1);
    let b = pool(1);
    let mut futs = Vec::new();
    for i in 0..6u64 {
        let p = if i % 2 == 0 { &a } else { &b };
        futs.push(p.submit(nap, 60 - i * 10).unwrap());
    }
    let ids: HashSet<u64> = futs.iter().map(|f| f.id()).collect();
    assert_eq!(ids.len(), 6, "ids are unique");
    let mut got = Vec::new();
    for f in as_completed(futs) {
        // Handed out only when done: wait_timeout(0) must have the result.
        got.push(f.wait_timeout(Duration::ZERO).expect("as_completed handed out an unfinished future"));
    }
    got.sort_unstable();
    assert_eq!(got, vec![10, 20, 30, 40, 50, 60]);
}

#[test]
fn streams_on_a_closed_pool_fail_at_once() {
    let p = pool(1);
    p.close();
    assert!(matches!(p.imap(square, 0..10u64), Err(ringpool::pool::PoolError::Closed)));
    assert!(matches!(p.imap_unordered(square, 0..10u64), Err(ringpool::pool::PoolError::Closed)));
    assert!(matches!(p.apply(square, 2), Err(TaskError::Pool(_))));
}
