//! Scene 3 of the seed: a pool of four processes squares the numbers 0..100.
//!
//! Python's version:
//!
//! ```python
//! def index_pool(data):
//!     return data * data
//!
//! pool = multiprocessing.Pool(processes=4)   # a pool of 4 processes
//! pool_out_puts = pool.map(index_pool, list(range(100)))  # submit many tasks at once
//! # pool_out_puts = pool.apply(index_pool, args=(10,))    # or one at a time
//! pool.close()                                # no more tasks
//! pool.join()                                 # wait for the workers
//! print('Pool    {}'.format(pool_out_puts))
//! ```
//!
//! Here each number is written into a shared slot as 8 bytes, a worker process squares it in
//! place, and the parent reads the 8-byte result where the worker left it: nothing is pickled.
//!
//! Run it with `cargo run --release --example pool_map`.

use std::time::Instant;

use ringpool::Pool;

/// The task: an ordinary function. Its code reaches the workers as an offset into this binary.
fn square(x: &u64) -> u64 {
    x * x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let pool = Pool::new(4)?;
    println!("main (pid {}): started a pool of 4 worker processes: {:?}", std::process::id(), pool.worker_pids());

    let squares = pool.map(square, 0..100u64)?;
    println!("main: map(square, 0..100) gave {} results, in order:", squares.len());
    println!("Pool    {squares:?}");

    let one = pool.apply(square, 10u64)?;
    println!("main: apply(square, 10) gave {one}");

    pool.close();
    pool.join()?;
    println!("main: closed the pool and joined its workers; all of it took {:?}", started.elapsed());
    Ok(())
}
