//! Pool benchmarks: tasks per second through a [`Pool`] whose workers are **processes**.
//!
//! # Running
//!
//! - everything: `cargo bench --bench pool` (about 2 minutes on a 2-vCPU VM, once built: 9
//!   benchmarks of 2 s warm-up and 8 s measurement, plus the pools' start and the checks);
//! - one group or benchmark: `cargo bench --bench pool -- map_chunk`, `-- 'map_workers/4'`;
//! - a fast pass: `cargo bench --bench pool -- --quick` (each benchmark stops once two
//!   measurements agree within 5%), or smaller settings such as
//!   `-- --warm-up-time 0.3 --measurement-time 1`;
//! - a smoke test, one iteration each: `cargo test --bench pool`.
//!
//! # What is measured
//!
//! The task is `square(&u64) -> u64` on the inputs `0..n`: nothing to compute, so what is measured
//! is the pool itself (writing inputs into shared slots, the task and result queues, the workers'
//! claims, reading results in place), in tasks per second.
//!
//! - `map_chunk`: `pool.map(square, 0..n)` with 2 workers and chunks of 1, 16 and 256 tasks and
//!   the default (`auto`: about four chunks per worker, bounded by what a 16 KiB slot holds, which
//!   for `u64 -> u64` is 960 tasks); n = 100 000 for chunks of 1 (one message each way per task),
//!   1 000 000 otherwise. With chunks of 1 and 16 the parent and both workers wait for one another
//!   by spinning, three processes on two CPUs: single maps there were seen to take either about
//!   10 ms or about 25 ms, depending on where the scheduler had put the processes, so expect a
//!   wide spread.
//! - `map_workers`: the same with 1, 2 and 4 workers and the default chunks, n = 1 000 000. The VM
//!   this was written on has 2 CPUs, so 4 workers (and 2 workers plus the parent, which feeds
//!   them) oversubscribe it: that measures the pool under preemption, not a fault of the bench.
//! - `submit`: 10 000 `pool.submit(square, i)` (one task, one future, one slot each), then
//!   `as_completed` over the futures and `wait` on each, 2 workers.
//! - `scene3`: Python's scene 3 end to end, per iteration: `Pool::new(4)` (4 workers started),
//!   `map(square, 0..100)`, `close`, `join`, drop. This is dominated by starting and stopping the
//!   processes; time per scene. It runs first, while the bench process is small: a forked worker
//!   costs more to start and to reap the more memory its parent has mapped (on this VM, the scene
//!   took about 1.3 ms from a fresh bench process and about 2.5 ms after the 1 000 000-task maps,
//!   whose freed result vectors the allocator keeps), and the figure is meant for a small program
//!   like Python's.
//!
//! # How
//!
//! **Workers are processes.** The pool starts them itself ([`StartMethod::Auto`]): forked from the
//! bench process when it runs a single thread, which it does here (criterion runs none without its
//! `rayon` feature, which this crate's dev-dependency leaves off), and spawned (the bench binary
//! re-executed) otherwise; `main` says which on stderr. A benchmark builds its pool once, outside
//! the timed region, on first use (so a filtered-out benchmark starts no process), keeps it for all
//! its samples, and drops it (which joins the workers) when it ends. `scene3` is the exception: it
//! starts and stops a pool every iteration, inside the timed region.
//!
//! **Results are checked.** Every `map`'s whole vector is compared with the squares of its inputs
//! (and, with an explicit chunk size, its number of chunks with what that size gives), and every
//! `submit` round's count and sum of results with what they must be, outside the timed region;
//! after every sample the pool's counters must show no failed task and no dead worker. A mismatch
//! panics and stops the bench.
//!
//! **Timing.** Each measurement (criterion's `iter_custom`) runs `iters` whole maps (or rounds, or
//! scenes) and adds up the time of each, measured in the bench process from the call to its
//! return (for `submit`: from the first `submit` to the last result read).
//!
//! Figures on a small VM are noisy (the host moves its vCPUs, and the pool's parent and workers
//! share two CPUs), and more so while other work runs: compare figures of the same run, not absolute
//! figures of different runs.

use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement};
use ringpool::Pool;
use ringpool::pool::{StartMethod, as_completed};

type Group<'a> = BenchmarkGroup<'a, measurement::WallTime>;

/// The task.
fn square(x: &u64) -> u64 {
    x * x
}

/// Panics unless `out` is exactly the squares of `0..n`.
fn check_squares(out: &[u64], n: u64) {
    assert_eq!(out.len() as u64, n, "bench: map returned {} results for {n} inputs", out.len());
    if let Some(i) = (0..n).find(|&i| out[i as usize] != i * i) {
        panic!("bench: map result #{i} is {}, expected {}", out[i as usize], i * i);
    }
}

/// The sum of the squares of `0..n` (wrapping, as the bench adds them).
fn sum_of_squares(n: u64) -> u64 {
    let n = u128::from(n);
    (n.saturating_sub(1) * n * (2 * n).saturating_sub(1) / 6) as u64
}

/// Builds a pool of `workers` workers with the default settings but for `chunk`, and checks that
/// its workers run.
fn pool(workers: usize, chunk: Option<usize>) -> Pool {
    let mut b = Pool::builder().workers(workers).start_method(StartMethod::Auto);
    if let Some(c) = chunk {
        b = b.chunk_size(c);
    }
    let pool = b.build().unwrap_or_else(|e| panic!("bench: cannot build a pool of {workers} workers: {e}"));
    assert_eq!(pool.worker_pids().len(), workers, "bench: workers running");
    pool
}

/// Panics if the pool lost a task or a worker.
fn check_stats(pool: &Pool) {
    let s = pool.stats();
    assert!(s.failed == 0 && s.workers_died == 0, "bench: the pool failed tasks or lost workers: {s:?}");
}

/// Benchmarks `id` with a pool built on first use and kept for every sample (criterion calls the
/// closure once per sample, and not at all when a filter excludes the benchmark), then dropped,
/// which joins its workers.
fn bench_pool(
    group: &mut Group<'_>,
    id: BenchmarkId,
    make: impl Fn() -> Pool,
    mut run: impl FnMut(&Pool, u64) -> Duration,
) {
    let mut pool = None;
    group.bench_function(id, |b| {
        let pool = pool.get_or_insert_with(&make);
        b.iter_custom(|iters| run(pool, iters));
        check_stats(pool);
    });
}

/// `iters` maps of `square` over `0..n`, each checked (with `chunk`, also that it took
/// `n / chunk` chunks, rounded up); their total time.
fn maps(pool: &Pool, n: u64, chunk: Option<usize>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let chunks_before = pool.stats().chunks;
        let t = Instant::now();
        let out = pool.map(square, 0..n);
        total += t.elapsed();
        let out = out.unwrap_or_else(|e| panic!("bench: map failed: {e}"));
        check_squares(&out, n);
        if let Some(c) = chunk {
            let chunks = pool.stats().chunks - chunks_before;
            assert_eq!(chunks, n.div_ceil(c as u64), "bench: chunks of a map of {n} in chunks of {c}");
        }
    }
    total
}

// ----- 1. map by chunk size ----------------------------------------------------------------------

fn map_chunk(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_chunk");
    for (chunk, n) in [(Some(1), 100_000), (Some(16), 1_000_000), (Some(256), 1_000_000), (None, 1_000_000)] {
        let id = match chunk {
            Some(c) => BenchmarkId::from_parameter(c),
            None => BenchmarkId::from_parameter("auto"),
        };
        group.throughput(Throughput::Elements(n));
        bench_pool(&mut group, id, || pool(2, chunk), |p, iters| maps(p, n, chunk, iters));
    }
    group.finish();
}

// ----- 2. map by number of workers ---------------------------------------------------------------

/// 1, 2 and 4 workers. On a 2-CPU machine 4 workers oversubscribe it (so does any count above one,
/// counting the parent that feeds them); the figures then include preemption.
fn map_workers(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let mut group = c.benchmark_group("map_workers");
    group.throughput(Throughput::Elements(N));
    for workers in [1, 2, 4] {
        let id = BenchmarkId::from_parameter(workers);
        bench_pool(&mut group, id, || pool(workers, None), |p, iters| maps(p, N, None, iters));
    }
    group.finish();
}

// ----- 3. submit + as_completed ------------------------------------------------------------------

fn submit(c: &mut Criterion) {
    const N: u64 = 10_000;
    let mut group = c.benchmark_group("submit");
    group.throughput(Throughput::Elements(N));
    let run = |pool: &Pool, iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            let futures: Vec<_> = (0..N)
                .map(|i| pool.submit(square, i).unwrap_or_else(|e| panic!("bench: submit failed: {e}")))
                .collect();
            let (mut count, mut sum) = (0u64, 0u64);
            for f in as_completed(futures) {
                let r = f.wait().unwrap_or_else(|e| panic!("bench: task failed: {e}"));
                sum = sum.wrapping_add(r);
                count += 1;
            }
            total += t.elapsed();
            assert_eq!(count, N, "bench: as_completed yielded {count} futures for {N} tasks");
            assert_eq!(sum, sum_of_squares(N), "bench: sum of the results");
        }
        total
    };
    bench_pool(&mut group, BenchmarkId::new("as_completed", N), || pool(2, None), run);
    group.finish();
}

// ----- 4. scene 3, end to end --------------------------------------------------------------------

fn scene3(c: &mut Criterion) {
    const N: u64 = 100;
    let mut group = c.benchmark_group("scene3");
    group.bench_function("new4_map100_close_join", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let pool = Pool::new(4).unwrap_or_else(|e| panic!("bench: cannot build a pool: {e}"));
                let out = pool.map(square, 0..N);
                pool.close();
                let joined = pool.join();
                drop(pool);
                total += t.elapsed();
                let out = out.unwrap_or_else(|e| panic!("bench: map failed: {e}"));
                joined.unwrap_or_else(|e| panic!("bench: join failed: {e}"));
                check_squares(&out, N);
            }
            total
        });
    });
    group.finish();
}

/// The number of threads of this process, from `/proc/self/status` (`None` if unreadable).
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok())
}

/// Runs the four groups, as `criterion_group!` and `criterion_main!` would (without their
/// undocumented `pub fn`). The settings are made before the command line is read, so that
/// `--warm-up-time`, `--measurement-time`, `--sample-size` and `--quick` override them (settings made
/// on a group would override the command line). 9 benchmarks of 2 + 8 s: about 2 minutes with the
/// pools' start and the checks. `scene3` goes first: see the module docs.
fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(20)
        .configure_from_args();
    match threads() {
        Some(1) => eprintln!("bench: 1 thread: the pools fork their workers"),
        Some(n) => eprintln!("bench: {n} threads: the pools spawn their workers (re-execute this binary)"),
        None => eprintln!("bench: thread count unknown; the pools pick fork or spawn"),
    }
    scene3(&mut c);
    map_chunk(&mut c);
    map_workers(&mut c);
    submit(&mut c);
    c.final_summary();
}
