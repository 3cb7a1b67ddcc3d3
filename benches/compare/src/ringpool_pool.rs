//! **ringpool `Pool`** on the same work as Python's pools (see [`crate::pools`]): `square` is an
//! ordinary function; each task's input and result cross as 8 bytes in a shared slot.

use std::time::Instant;

use ringpool::Pool;
use ringpool::pool::as_completed;
use ringpool::process::StartMethod;

use crate::harness::Result;
use crate::pools::{PoolPeer, PoolWork};

/// ringpool's pool.
pub struct RingpoolPool;

fn square(x: &u64) -> u64 {
    x * x
}

/// The sum of squares of 0..n.
fn expected(n: u64) -> u64 {
    let n = u128::from(n);
    (n.saturating_sub(1) * n * (2 * n).saturating_sub(1) / 6) as u64
}

fn check(sum: u64, n: u64) -> Result<()> {
    if sum != expected(n) {
        return Err(format!("wrong results: sum of squares {sum}, expected {}", expected(n)).into());
    }
    Ok(())
}

impl PoolPeer for RingpoolPool {
    const NAME: &'static str = "ringpool-pool";
    const LABEL: &'static str = "ringpool Pool";
    const ABOUT: &'static str = "ringpool Pool (workers forked, or spawned if the child runs threads): map with the \
         default chunking or chunk_size(1); submit + as_completed; inputs and results as 8 bytes in shared slots";
    const OURS: bool = true;

    fn supports(work: PoolWork) -> bool {
        let _ = work;
        true
    }

    fn run(work: PoolWork) -> Result<f64> {
        match work {
            PoolWork::Map { tasks, chunksize } => {
                let mut b = Pool::builder().workers(2);
                if let Some(c) = chunksize {
                    b = b.chunk_size(c as usize);
                }
                let pool = b.build()?;
                pool.map(square, 0..1000u64).map_err(|e| e.to_string())?;
                let t = Instant::now();
                let out = pool.map(square, 0..tasks).map_err(|e| e.to_string())?;
                let secs = t.elapsed().as_secs_f64();
                check(out.iter().fold(0u64, |a, &b| a.wrapping_add(b)), tasks)?;
                Ok(tasks as f64 / secs)
            }
            PoolWork::Executor { tasks } => {
                let pool = Pool::new(2)?;
                pool.map(square, 0..1000u64).map_err(|e| e.to_string())?;
                let t = Instant::now();
                let futures = (0..tasks).map(|i| pool.submit(square, i)).collect::<std::result::Result<Vec<_>, _>>()?;
                let mut sum = 0u64;
                for f in as_completed(futures) {
                    sum = sum.wrapping_add(f.wait()?);
                }
                let secs = t.elapsed().as_secs_f64();
                check(sum, tasks)?;
                Ok(tasks as f64 / secs)
            }
            PoolWork::Strings { items } => crate::typed_pool::ringpool_side::strings(items),
            PoolWork::Vecs { items } => crate::typed_pool::ringpool_side::vecs(items),
            PoolWork::MapWorkers { tasks, workers } => {
                let pool = Pool::new(workers as usize)?;
                pool.map(square, 0..1000u64).map_err(|e| e.to_string())?;
                let t = Instant::now();
                let out = pool.map(square, 0..tasks).map_err(|e| e.to_string())?;
                let secs = t.elapsed().as_secs_f64();
                check(out.iter().fold(0u64, |a, &b| a.wrapping_add(b)), tasks)?;
                Ok(tasks as f64 / secs)
            }
            PoolWork::BigParent { fork } => {
                // 1 GiB, every page touched (vec! of a non-zero byte is a memset), kept alive
                // across the measurement.
                let heap = std::hint::black_box(vec![1u8; crate::pools::BIG_PARENT_BYTES]);
                let method = if fork { StartMethod::Fork } else { StartMethod::Spawn };
                let t = Instant::now();
                let pool = Pool::builder().workers(4).start_method(method).build()?;
                let out = pool.map(square, 0..100u64).map_err(|e| e.to_string())?;
                pool.close();
                pool.join()?;
                drop(pool);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                check(out.iter().sum(), 100)?;
                if heap[heap.len() / 2] != 1 {
                    return Err("the parent's heap changed".into());
                }
                Ok(ms)
            }
            PoolWork::Scene3 => {
                let t = Instant::now();
                let pool = Pool::new(4)?;
                let out = pool.map(square, 0..100u64).map_err(|e| e.to_string())?;
                pool.close();
                pool.join()?;
                drop(pool);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                check(out.iter().sum(), 100)?;
                Ok(ms)
            }
        }
    }
}

/// ringpool's pool on the typed maps, each result read in place (`Pool::map_views`).
pub struct RingpoolPoolViews;

impl PoolPeer for RingpoolPoolViews {
    const NAME: &'static str = "ringpool-pool-views";
    const LABEL: &'static str = "ringpool Pool";
    const ABOUT: &'static str = "ringpool Pool::map_views: the typed maps with each result validated and read in \
         place in the parent (no deserialization); typed maps only";
    const OURS: bool = true;

    fn supports(work: PoolWork) -> bool {
        work.is_typed()
    }

    fn run(work: PoolWork) -> Result<f64> {
        match work {
            PoolWork::Strings { items } => crate::typed_pool::ringpool_side::strings_views(items),
            PoolWork::Vecs { items } => crate::typed_pool::ringpool_side::vecs_views(items),
            _ => Err("map_views runs the typed maps only".into()),
        }
    }
}
