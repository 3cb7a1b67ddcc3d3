//! Process pools: the seed's scenes 3 and 4, measured on Python (see `python/pool_bench.py`) and
//! on every pool registered here, in the same run.
//!
//! # Adding a pool (ringpool's `Pool`)
//!
//! Write `src/pools/<name>.rs` (or a module here) with a unit struct implementing [`PoolPeer`],
//! and add one `entry::<Type>()` line to [`all`]. Each call of [`PoolPeer::run`] happens in a
//! fresh child process (a re-execution of the runner, unpinned, like Python's pools, so the pool
//! may fork its workers from it) and must do exactly what the Python script does for that
//! [`PoolWork`]:
//!
//! | work | Python | return |
//! | --- | --- | --- |
//! | `Map { tasks, chunksize: None }` | `Pool(2).map(square, range(tasks))`, pool started and warmed up first | tasks/s |
//! | `Map { tasks, chunksize: Some(1) }` | the same with `chunksize=1` | tasks/s |
//! | `Executor { tasks }` | `ProcessPoolExecutor(2)`: `submit` each task, then `as_completed`, summing results | tasks/s |
//! | `Scene3` | `Pool(4)`, `map(square, range(100))`, `close`, `join`, all timed | milliseconds |
//! | `BigParent { fork }` | scene 3 after touching 1 GiB of heap ([`BIG_PARENT_BYTES`]), start method fork or spawn | milliseconds |
//! | `Strings { items }`, `Vecs { items }` | `Pool(2).map` over owned strings / `Vec<f64>`s, see [`crate::typed_pool`] | tasks/s |
//! | `MapWorkers { tasks, workers }` | `Pool(workers).map(square, range(tasks))`, default chunk size, started and warmed up first | tasks/s |
//!
//! Check every result (the sum of squares is `(n-1)n(2n-1)/6`) and return an error on a wrong
//! one. Name the struct's `LABEL` after what it runs, e.g. `"ringpool Pool(2)"`.

use serde_json::{Value, json};

use crate::harness::{Args, Result};

/// The registration point for pools (Python's are run by [`crate::python`]).
pub fn all() -> Vec<PoolEntry> {
    vec![
        entry::<crate::ringpool_pool::RingpoolPool>(),
        entry::<crate::ringpool_pool::RingpoolPoolViews>(),
        entry::<ProcspawnPool>(),
    ]
}

/// One pool workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolWork {
    /// `map` of `tasks` tiny tasks (`x * x`), with the pool's default chunk size or the one given.
    Map {
        /// How many tasks.
        tasks: u64,
        /// `None`: the pool's default; `Some(1)`: one task per hand-off.
        chunksize: Option<u64>,
    },
    /// Submit every task on its own, then collect them as they complete.
    Executor {
        /// How many tasks.
        tasks: u64,
    },
    /// The seed's scene 3: a 4-worker pool started, `map(square, range(100))`, shut down.
    Scene3,
    /// Scene 3 with 1 GiB of touched heap in the parent, workers started by fork or by spawn.
    BigParent {
        /// `true`: fork; `false`: spawn (re-execute / a fresh interpreter).
        fork: bool,
    },
    /// `map` over `items` strings of 16..200 bytes returning a struct with a `String`.
    Strings {
        /// How many strings.
        items: u64,
    },
    /// `map` over `items` `Vec<f64>` of 1000 returning their sum and 10 block sums.
    Vecs {
        /// How many vectors.
        items: u64,
    },
    /// `map` of `tasks` tiny tasks with the default chunk size on a pool of `workers`.
    MapWorkers {
        /// How many tasks.
        tasks: u64,
        /// How many workers.
        workers: u64,
    },
}

impl PoolWork {
    /// Whether this is one of the typed maps (owned non-`Pod` data, see [`crate::typed_pool`]).
    pub fn is_typed(self) -> bool {
        matches!(self, PoolWork::Strings { .. } | PoolWork::Vecs { .. })
    }
}

/// The parent's heap for [`PoolWork::BigParent`]: 1 GiB.
pub const BIG_PARENT_BYTES: usize = 1 << 30;

impl PoolWork {
    /// As child arguments.
    pub fn to_args(self, args: &mut Args) {
        match self {
            PoolWork::Map { tasks, chunksize } => {
                args.set("work", "map").set("tasks", tasks);
                if let Some(c) = chunksize {
                    args.set("chunksize", c);
                }
            }
            PoolWork::Executor { tasks } => {
                args.set("work", "executor").set("tasks", tasks);
            }
            PoolWork::Scene3 => {
                args.set("work", "scene3");
            }
            PoolWork::BigParent { fork } => {
                args.set("work", "bigparent").set("fork", fork);
            }
            PoolWork::Strings { items } => {
                args.set("work", "strings").set("items", items);
            }
            PoolWork::Vecs { items } => {
                args.set("work", "vecs").set("items", items);
            }
            PoolWork::MapWorkers { tasks, workers } => {
                args.set("work", "mapworkers").set("tasks", tasks).set("workers", workers);
            }
        }
    }

    /// From child arguments.
    pub fn from_args(args: &Args) -> Result<Self> {
        Ok(match args.get("work")? {
            "map" => PoolWork::Map {
                tasks: args.num("tasks")?,
                chunksize: args.opt("chunksize").map(str::parse).transpose()?,
            },
            "executor" => PoolWork::Executor { tasks: args.num("tasks")? },
            "scene3" => PoolWork::Scene3,
            "bigparent" => PoolWork::BigParent { fork: args.num("fork")? },
            "strings" => PoolWork::Strings { items: args.num("items")? },
            "vecs" => PoolWork::Vecs { items: args.num("items")? },
            "mapworkers" => PoolWork::MapWorkers { tasks: args.num("tasks")?, workers: args.num("workers")? },
            w => return Err(format!("unknown pool work {w}").into()),
        })
    }
}

/// A process pool to compare.
pub trait PoolPeer {
    /// What `--only` matches.
    const NAME: &'static str;
    /// The row's label.
    const LABEL: &'static str;
    /// One line for the README.
    const ABOUT: &'static str;
    /// Whether this is ringpool's own (the numerator of the ratio columns).
    const OURS: bool = false;

    /// Whether the pool takes part in `work` (default: every untyped work).
    fn supports(work: PoolWork) -> bool {
        !work.is_typed()
    }

    /// Does `work` once, in this fresh process; returns tasks/s (ms for [`PoolWork::Scene3`]).
    fn run(work: PoolWork) -> Result<f64>;
}

/// **procspawn 1.x**'s pool, in the typed maps only (see [`crate::typed_pool`]): one task per
/// `spawn`, serde through ipc-channel.
pub struct ProcspawnPool;

impl PoolPeer for ProcspawnPool {
    const NAME: &'static str = "procspawn";
    const LABEL: &'static str = "procspawn Pool(2)";
    const ABOUT: &'static str = "procspawn 1.x Pool::new(2), pool.spawn(item, task) per item (serde through \
         ipc-channel), 256 in flight, joined in order; typed maps only";

    fn supports(work: PoolWork) -> bool {
        work.is_typed()
    }

    fn run(work: PoolWork) -> Result<f64> {
        match work {
            PoolWork::Strings { items } => crate::typed_pool::procspawn_strings(items),
            PoolWork::Vecs { items } => crate::typed_pool::procspawn_vecs(items),
            _ => Err("procspawn runs the typed maps only".into()),
        }
    }
}

/// A registered pool.
#[derive(Clone, Copy)]
pub struct PoolEntry {
    /// [`PoolPeer::NAME`].
    pub name: &'static str,
    /// [`PoolPeer::LABEL`].
    pub label: &'static str,
    /// [`PoolPeer::ABOUT`].
    pub about: &'static str,
    /// [`PoolPeer::OURS`].
    pub ours: bool,
    /// [`PoolPeer::run`].
    pub run: fn(PoolWork) -> Result<f64>,
    /// [`PoolPeer::supports`].
    pub supports: fn(PoolWork) -> bool,
}

/// Registers pool `P`.
pub fn entry<P: PoolPeer>() -> PoolEntry {
    PoolEntry { name: P::NAME, label: P::LABEL, about: P::ABOUT, ours: P::OURS, run: P::run, supports: P::supports }
}

/// Runs the floor of the typed map in `args` in this child process (see
/// [`crate::typed_pool::floor_strings`]).
pub fn run_floor(args: &Args) -> Result<Value> {
    let figure = match PoolWork::from_args(args)? {
        PoolWork::Strings { items } => crate::typed_pool::floor_strings(items)?,
        PoolWork::Vecs { items } => crate::typed_pool::floor_vecs(items)?,
        w => return Err(format!("no floor for {w:?}").into()),
    };
    Ok(json!({ "tasks_per_s": figure }))
}

/// Runs the pool named in `args` in this child process.
pub fn run_child(args: &Args) -> Result<Value> {
    let name = args.get("pool")?;
    let pool = all().into_iter().find(|p| p.name == name).ok_or_else(|| format!("no pool {name}"))?;
    let work = PoolWork::from_args(args)?;
    let figure = (pool.run)(work)?;
    Ok(match work {
        PoolWork::Scene3 | PoolWork::BigParent { .. } => json!({ "wall_ms": figure }),
        _ => json!({ "tasks_per_s": figure }),
    })
}
