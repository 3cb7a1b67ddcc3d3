//! A tour of ringpool: the four scenes of the Python `multiprocessing` tutorial this crate grew
//! from, one after the other, each with what happens and how long it took, and a finale in which a
//! worker process is killed and the pool carries on.
//!
//! 1. **A process**: start a child, let it tell its name and pid, wait for it
//!    (Python: `multiprocessing.Process`, `current_process()`).
//! 2. **Process communication**: a writer process puts 0..9 into a queue in shared memory, a
//!    reader process takes them out, and stops by itself once the writer is gone and the queue is
//!    empty (Python's reader waits for ever, and so its program never ends).
//! 3. **A process pool**: four workers square 0..100 (`Pool(4).map`), then one more (`apply`).
//! 4. **An asynchronous process pool**: ten CPU-bound counts submitted one by one to five workers,
//!    taken as they complete (`ProcessPoolExecutor.submit`, `as_completed`).
//!
//! The examples `process_basics`, `queue_pipeline`, `pool_map`, `pool_submit` and `worker_crash`
//! show each part at more length. This one stands alone and ends on its own in well under a second
//! (in a release build).
//!
//! Run it with `cargo run --release --example tour`.

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use ringpool::pool::{MapError, TaskError, as_completed};
use ringpool::ring::RecvError;
use ringpool::{Pool, Process, Queue, current_process};

fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    println!("ringpool tour: the four scenes of Python's multiprocessing, in Rust, in shared memory");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("main is pid {}, on a machine with {cores} cores", std::process::id());

    scene_1_a_process()?;
    scene_2_a_queue()?;
    scene_3_a_pool()?;
    scene_4_submit_and_as_completed(cores)?;
    finale_a_worker_crash()?;

    println!();
    println!("tour: done in {:.1?}; every process has ended, and so does this program", started.elapsed());
    Ok(())
}

/// Prints a scene's heading and its one-line explanation.
fn heading(title: &str, what: &str) {
    println!();
    println!("== {title} ==");
    println!("{what}");
}

// ----- scene 1 ----------------------------------------------------------------------------------

fn scene_1_a_process() -> Result<(), Box<dyn Error>> {
    heading(
        "Scene 1: a process",
        "A child process is started; it sleeps 100 ms and tells its name, pid and whether it is alive; main waits for it.",
    );
    let started = Instant::now();
    // `Process::start` forks: the child runs the closure, then leaves.
    let mut p = Process::start(|| {
        std::thread::sleep(Duration::from_millis(100));
        let me = current_process();
        println!("  child: name {}, pid {}, alive {}", me.name(), me.pid(), me.is_alive());
    })?;
    println!("  main: started {} (pid {}); waiting for it (join)", p.name(), p.pid());
    let status = p.join()?;
    let alive = p.is_alive();
    println!("  main: {} ended with {status}; alive now: {alive}", p.name());
    println!("  took {:.1?}, the child's 100 ms of sleep included", started.elapsed());
    Ok(())
}

// ----- scene 2 ----------------------------------------------------------------------------------

fn scene_2_a_queue() -> Result<(), Box<dyn Error>> {
    heading(
        "Scene 2: process communication",
        "A writer process puts 0..9 into a queue in shared memory; a reader process gets them, and stops by itself \
         once the writer is gone and the queue is empty.",
    );
    let started = Instant::now();
    let queue: Queue<u64> = Queue::builder().slots(16).anonymous()?;

    // Each child gets a clone of the queue (a mapping of the same memory) and joins it itself.
    let q = queue.clone();
    let mut writer = Process::builder().name("writer").fork(move || write(&q))?;
    let q = queue.clone();
    let mut reader = Process::builder().name("reader").fork(move || read(&q))?;

    let wrote = writer.join()?;
    let read = reader.join()?;
    if !(wrote.success() && read.success()) {
        return Err(format!("the writer ended with {wrote}, the reader with {read}").into());
    }
    println!("  main: both ended on their own (writer: {wrote}, reader: {read}); took {:.1?}", started.elapsed());
    Ok(())
}

/// The writer process: puts 0..9, then leaves the queue (its sender is dropped).
fn write(queue: &Queue<u64>) {
    let who = format!("writer (pid {})", current_process().pid());
    let tx = match queue.sender() {
        Ok(tx) => tx,
        Err(e) => fail(&who, &format!("cannot join the queue: {e}")),
    };
    for i in 0..10u64 {
        if let Err(e) = tx.send(i) {
            fail(&who, &format!("cannot put {i}: {e}"));
        }
    }
    println!("  {who}: put 0..9; leaving the queue");
}

/// The reader process: gets values until the queue answers `Disconnected`.
fn read(queue: &Queue<u64>) {
    let who = format!("reader (pid {})", current_process().pid());
    let rx = match queue.receiver() {
        Ok(rx) => rx,
        Err(e) => fail(&who, &format!("cannot join the queue: {e}")),
    };
    let mut got = Vec::new();
    loop {
        match rx.recv() {
            Ok(value) => got.push(value),
            Err(RecvError::Disconnected) => break,
            Err(e) => fail(&who, &format!("cannot get from the queue: {e}")),
        }
    }
    println!("  {who}: got {got:?}, then Disconnected: the writer is gone and the queue is empty, so I stop");
}

/// Ends a child process with a message and exit code 1.
fn fail(who: &str, message: &str) -> ! {
    eprintln!("{who}: {message}");
    // A forked child leaves through ringpool's exit, which skips the parent's destructors.
    ringpool::process::exit(1)
}

// ----- scene 3 ----------------------------------------------------------------------------------

fn square(x: &u64) -> u64 {
    x * x
}

fn scene_3_a_pool() -> Result<(), Box<dyn Error>> {
    heading(
        "Scene 3: a process pool",
        "Four worker processes square 0..100 (map), then 10 (apply); each number is written into shared memory \
         and each result read where the worker left it: nothing is pickled.",
    );
    let started = Instant::now();
    let pool = Pool::new(4)?;
    println!("  main: a pool of 4 workers {:?}", pool.worker_pids());
    let squares = pool.map(square, 0..100u64)?;
    let (head, tail) = (&squares[..5], &squares[98..]);
    println!("  map(square, 0..100): {} results in order: {head:?} ... {tail:?}", squares.len());
    println!("  apply(square, 10): {}", pool.apply(square, 10u64)?);
    pool.close();
    pool.join()?;
    println!("  closed and joined the pool; took {:.1?}", started.elapsed());
    Ok(())
}

// ----- scene 4 ----------------------------------------------------------------------------------

/// Steps of one count, as in the seed (`for i in range(0, 5000000): i = i + 1`).
const STEPS: u64 = 5_000_000;

/// A count's answer: its input, its result, and the CPU time its worker spent on it (CPU time, not
/// wall time: with five workers on fewer cores, a count that waits for a core is not counting).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Counted {
    number: u64,
    result: u64,
    cpu_nanos: u64,
}

/// The CPU time this thread has used so far (zero if the clock cannot be read).
fn cpu_time() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID) {
        Ok(t) => Duration::from(t),
        Err(_) => Duration::ZERO,
    }
}

/// The seed's `add_number`: counts `STEPS` steps, then answers `steps * number`.
fn add_number(&number: &u64) -> Counted {
    let started = cpu_time();
    let mut i = 0;
    for step in 0..STEPS {
        // `black_box` keeps the optimizer from folding the loop away.
        i = black_box(step) + 1;
    }
    let cpu_nanos = u64::try_from(cpu_time().saturating_sub(started).as_nanos()).unwrap_or(u64::MAX);
    Counted { number, result: i * number, cpu_nanos }
}

fn scene_4_submit_and_as_completed(cores: usize) -> Result<(), Box<dyn Error>> {
    heading(
        "Scene 4: an asynchronous process pool",
        "Ten CPU-bound counts (the seed's loop of 5,000,000 steps) are submitted one by one to five workers; each \
         result is taken as soon as it is done (as_completed).",
    );
    let started = Instant::now();
    let pool = Pool::new(5)?;
    let mut futures = Vec::new();
    for number in 1..=10u64 {
        futures.push(pool.submit(add_number, number)?);
    }
    let mut order = Vec::new();
    let mut work = Duration::ZERO;
    for future in as_completed(futures) {
        let c = future.wait()?;
        if c.result != STEPS * c.number {
            return Err(format!("add_number({}) answered {}, not {}", c.number, c.result, STEPS * c.number).into());
        }
        order.push(c.number);
        work += Duration::from_nanos(c.cpu_nanos);
    }
    pool.join()?;
    let wall = started.elapsed();
    println!("  completed in this order: {order:?}; add_number(n) = {STEPS} * n for each");
    println!(
        "  took {wall:.1?} for {work:.1?} of counting: {:.1} cores busy on average, of {cores} \
         (a pool cannot beat the core count)",
        work.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    );
    Ok(())
}

// ----- finale -----------------------------------------------------------------------------------

/// Squares its input, except on 13, where it kills its own worker process with SIGKILL.
fn square_or_die(x: &u64) -> u64 {
    if *x == 13 {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    x * x
}

fn finale_a_worker_crash() -> Result<(), Box<dyn Error>> {
    heading(
        "Finale: a worker crash, survived",
        "During a map, the task on 13 kills its own worker; only that task fails, the worker is replaced, and the \
         pool goes on (Python's Pool would hang; its ProcessPoolExecutor would break for good).",
    );
    let started = Instant::now();
    let pool = Pool::builder().workers(2).chunk_size(1).build()?;
    let before = pool.worker_pids();
    let outcomes = match pool.map(square_or_die, 0..20u64) {
        Ok(_) => return Err("the task on 13 should have killed its worker".into()),
        Err(MapError::Tasks(t)) => t.into_results(),
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
    println!("  the other {right} tasks gave the right square");
    println!("  workers before: {before:?}, after: {:?}", pool.worker_pids());
    let again = pool.map(square, 0..100u64)?;
    println!("  the same pool, a second map: {} squares, the last {}", again.len(), again[99]);
    pool.join()?;
    println!("  took {:.1?}", started.elapsed());
    Ok(())
}
