//! A worker process dies in the middle of a `map`, and the pool goes on.
//!
//! Four workers square the numbers 0..20. On the input 13 the task kills its own worker with
//! SIGKILL (as the kernel's out-of-memory killer, or `kill -9`, would). What happens:
//!
//! - the `map` still completes: task 13 fails with [`TaskError::WorkerDied`], which names the dead
//!   worker's pid and the signal, and the 19 other results are all there, and right;
//! - the dead worker is replaced by a new process (the pids before and after are printed);
//! - the same pool then runs a second `map`, which succeeds;
//! - last, a worker is killed from outside (by this program, with `kill`, as an operator would)
//!   while it runs a slow task: again only that task fails, and the pool replaces the worker.
//!
//! Python, for comparison: a `multiprocessing.Pool` whose worker is killed replaces the worker,
//! but the task that worker held is never answered, so `pool.map` **hangs for ever**. A
//! `concurrent.futures.ProcessPoolExecutor` notices the death, but fails **every** pending future
//! with `BrokenProcessPool` and refuses all later work: the executor is broken for good.
//!
//! Each task here is its own chunk (`chunk_size(1)`). With bigger chunks a worker's death fails
//! the whole chunk it was running: the tasks it carried, and no others.
//!
//! Run it with `cargo run --release --example worker_crash`.

use std::error::Error;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, raise};
use nix::unistd::Pid;
use ringpool::Pool;
use ringpool::pool::{MapError, TaskError};

/// The input on which the task kills its own worker.
const FATAL: u64 = 13;

/// Squares its input, except on [`FATAL`], where it kills the process running it.
fn square_or_die(x: &u64) -> u64 {
    if *x == FATAL {
        // SIGKILL cannot be caught: the worker process ends here and now, mid-task.
        let _ = raise(Signal::SIGKILL);
    }
    x * x
}

fn square(x: &u64) -> u64 {
    x * x
}

/// Sleeps `ms` milliseconds, then answers `ms`: a task slow enough to be killed while it runs.
fn nap(ms: &u64) -> u64 {
    std::thread::sleep(Duration::from_millis(*ms));
    *ms
}

fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let pool = Pool::builder().workers(4).chunk_size(1).build()?;
    let before = pool.worker_pids();
    println!("main (pid {}): a pool of 4 workers: {before:?}", std::process::id());

    // --- 1. a map during which a task kills its own worker --------------------------------------
    println!("main: map(square_or_die, 0..20); on {FATAL} the task kills its worker with SIGKILL");
    let outcomes = match pool.map(square_or_die, 0..20u64) {
        Ok(_) => return Err(format!("the map succeeded, yet the task on {FATAL} should have died").into()),
        // Some tasks failed: every item's outcome is inside, in input order.
        Err(MapError::Tasks(t)) => t.into_results(),
        // The pool itself failed: nothing is known of the items.
        Err(e) => return Err(e.into()),
    };
    let mut right = 0;
    for (x, outcome) in (0u64..).zip(&outcomes) {
        match outcome {
            Ok(v) if *v == x * x => right += 1,
            Ok(v) => return Err(format!("task {x} answered {v}, not {}", x * x).into()),
            Err(TaskError::WorkerDied { pid, status }) => println!("  task {x} failed: worker {pid} died, {status}"),
            Err(e) => println!("  task {x} failed: {e}"),
        }
    }
    println!("  the other {right} of {} tasks gave the right square", outcomes.len());

    let after = pool.worker_pids();
    let gone: Vec<u32> = before.iter().copied().filter(|p| !after.contains(p)).collect();
    let new: Vec<u32> = after.iter().copied().filter(|p| !before.contains(p)).collect();
    println!("main: workers now: {after:?}; gone: {gone:?}, replaced by: {new:?}");

    // --- 2. the same pool goes on -----------------------------------------------------------------
    let squares = pool.map(square, 0..100u64)?;
    println!("main: a second map on the same pool: {} squares, the last {}", squares.len(), squares[99]);

    // --- 3. a worker killed from outside while it runs a task -------------------------------------
    // Four tasks of 500 ms keep all four workers busy; after 100 ms this program kills one of
    // them, as `kill -9 <pid>` from a shell would.
    let victim = pool.worker_pids()[0];
    let naps = (0..4).map(|_| pool.submit(nap, 500u64)).collect::<Result<Vec<_>, _>>()?;
    std::thread::sleep(Duration::from_millis(100));
    println!("main: kill -9 {victim} (a busy worker), from outside the pool");
    let victim_pid = Pid::from_raw(i32::try_from(victim)?);
    kill(victim_pid, Signal::SIGKILL).map_err(|e| format!("cannot kill worker {victim}: {e}"))?;
    let mut lost = 0;
    for (k, f) in naps.iter().enumerate() {
        match f.wait() {
            Ok(ms) => println!("  nap {k}: slept {ms} ms"),
            Err(TaskError::WorkerDied { pid, status }) => {
                lost += 1;
                println!("  nap {k} failed: worker {pid} died, {status}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    if lost == 0 {
        // Only if this machine was so slow that the victim had not yet taken a nap after 100 ms.
        println!("  no nap failed: worker {victim} was killed before it took one, so nothing was lost");
    }
    println!("main: workers now: {:?}", pool.worker_pids());
    let one = pool.apply(square, 12u64)?;
    println!("main: apply(square, 12) on the same pool gave {one}");

    let stats = pool.stats();
    pool.join()?;
    println!(
        "main: done in {:.1?}: {} workers started, {} died and were replaced; {} tasks completed, {} failed",
        started.elapsed(),
        stats.workers_started,
        stats.workers_died,
        stats.completed,
        stats.failed
    );
    Ok(())
}
