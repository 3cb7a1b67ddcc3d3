//! Scene 4 of the seed, the "asynchronous process pool": ten CPU-bound counts submitted one by one
//! to a pool of five processes, each result printed as soon as it is done, and the total time.
//!
//! Python's version (the tutorial's comments translated from Chinese):
//!
//! ```python
//! from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
//! import time
//!
//! number_list = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
//!
//! def add_number(data):      # this function only burns CPU; it means nothing
//!     item = count(data)
//!     return item
//!
//! def count(number):         # plain computation, anything will do
//!     for i in range(0, 5000000):
//!         i = i + 1
//!     return i * number
//!
//! if __name__ == "__main__":
//!     start_time = time.time()   # when the program started
//!     with ProcessPoolExecutor(max_workers=5) as t:   # max_workers: how many processes to open
//!         for item in number_list:    # submit the tasks
//!             t.submit(add_number, item)
//!         # reqs = [t.submit(add_number, item) for item in number_list]  # the short way to submit
//!         # for req in as_completed(reqs):   # an iterable, in the order they finish
//!         #     print(req.result())          # print each result
//!     print('total time of the program: {}'.format(time.time() - start_time))
//! ```
//!
//! After the loop `i` is 4,999,999 + 1 = 5,000,000, so `count(n)` is `5_000_000 * n`; the Rust
//! `count` below gives exactly that. An optimizing compiler would see that the loop's result is
//! known in advance and delete it; [`std::hint::black_box`] on the counter forbids that, so every
//! one of the 5,000,000 steps really runs: about 1.5 ms a count on a small VM, where CPython takes
//! some 130 ms. The whole run is therefore over in a few tens of milliseconds, and the pool's own
//! costs (starting five processes, stopping them) are a visible share of it: the example prints
//! the speed-up both in all and for the counting alone. (Make `STEPS` ten times bigger and, on an
//! otherwise idle machine with two cores, the speed-up reaches 1.8x to 1.9x.)
//!
//! What differs from Python:
//!
//! - **No pickling.** Python pickles the function's name and the argument, sends them down a pipe,
//!   and pickles the result back. Here the number is written as 8 bytes into a slot of shared
//!   memory, the function travels as an offset into this very binary, the worker writes its result
//!   into the same slot, and the parent reads it there, in place.
//! - **A worker's death fails only its own task**, with an error naming the worker's pid and the
//!   signal (see the `worker_crash` example). Python's `ProcessPoolExecutor` answers
//!   `BrokenProcessPool` to every pending future and can no longer be used.
//! - **The speed-up is bounded by the cores.** Five workers on a machine with two cores run two
//!   counts at a time, so the pool is at best about twice as fast as the parent alone, not five
//!   times (and less when other programs keep the cores busy). The example prints the core count
//!   beside the two timings.
//!
//! Run it with `cargo run --release --example pool_submit`.

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use ringpool::Pool;
use ringpool::pool::as_completed;

/// How many steps one count takes, as in the seed.
const STEPS: u64 = 5_000_000;

/// What a task answers: its input beside its result, so that a result met out of order (in
/// `as_completed`) still says which number it belongs to, and which worker computed it.
/// `#[repr(C)]` plain numbers with no padding: it crosses between processes as its bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Counted {
    number: u64,
    result: u64,
    worker_pid: u64,
}

/// The seed's `count`: `STEPS` steps of `i = i + 1`, then `i * number` (= 5,000,000 * number).
fn count(number: u64) -> u64 {
    let mut i = 0;
    for step in 0..STEPS {
        // `black_box` hides the value from the optimizer, so the loop cannot be folded away.
        i = black_box(step) + 1;
    }
    i * number
}

/// The seed's `add_number`, the task: an ordinary function, run in a worker process.
fn add_number(&number: &u64) -> Counted {
    Counted { number, result: count(number), worker_pid: u64::from(std::process::id()) }
}

fn main() -> Result<(), Box<dyn Error>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("main (pid {}): this machine has {cores} cores", std::process::id());

    // --- the pool: 5 workers, 10 tasks submitted one by one, results as they complete -----------
    let started = Instant::now();
    let pool = Pool::new(5)?;
    let startup = started.elapsed();
    println!("main: started 5 worker processes {:?} in {startup:.1?}", pool.worker_pids());

    let mut futures = Vec::new();
    for number in 1..=10u64 {
        // `submit` writes the number into a slot and returns at once with a future.
        futures.push(pool.submit(add_number, number)?);
    }
    println!("main: submitted add_number(1..=10); the results in the order they complete:");

    let mut total = 0;
    for (k, future) in as_completed(futures).enumerate() {
        // This future is done: `wait` returns at once (with an error, had its worker died).
        let c = future.wait()?;
        println!("  {:>2}. add_number({}) = {} (worker pid {})", k + 1, c.number, c.result, c.worker_pid);
        total += c.result;
    }
    let counting = started.elapsed() - startup;
    pool.join()?; // what leaving Python's `with` block does: wait for the workers to exit
    let in_pool = started.elapsed();
    println!(
        "main: the pool took {in_pool:.1?} in all ({startup:.1?} starting the workers, {counting:.1?} counting); sum {total}"
    );

    // --- the same work in this process alone, one count after the other ---------------------------
    let started = Instant::now();
    let sequential_total: u64 = (1..=10).map(|n| add_number(&n).result).sum();
    let alone = started.elapsed();
    println!("main: the same 10 counts one after the other in this process took {alone:.1?}; sum {sequential_total}");
    if sequential_total != total {
        return Err(format!("the pool's sum {total} differs from this process's {sequential_total}").into());
    }

    println!(
        "main: speed-up {:.1}x in all, {:.1}x for the counting, with 5 workers on {cores} cores \
         (at most {}x: a pool cannot beat the core count, and other busy programs take their share)",
        ratio(alone, in_pool),
        ratio(alone, counting),
        cores.min(5)
    );
    Ok(())
}

/// `a / b`, as a number.
fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
