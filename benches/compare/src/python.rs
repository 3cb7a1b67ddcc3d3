//! Python's `multiprocessing`, the seed's own world, run by `python3` from the scripts in
//! `python/` (embedded in the binary and written to the run's scratch directory).
//!
//! - `queue_bench.py`: `multiprocessing.Queue()` and `Queue(maxsize=1000)` one-way at 8 B and
//!   1 KiB, and a ping-pong over two `Queue()`s at 8 B; the same message, checks, pinning and
//!   timing rules as the Rust peers (see the script's docstring).
//! - `pool_bench.py`: `Pool(2).map` (default chunk size, and `chunksize=1`),
//!   `ProcessPoolExecutor(2)` submit + `as_completed`, and the seed's scene 3.
//!
//! When `python3` is missing, the runner says so in one line and skips these rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Failure, Result, run_program};
use crate::pools::PoolWork;

const QUEUE_BENCH: &str = include_str!("../python/queue_bench.py");
const POOL_BENCH: &str = include_str!("../python/pool_bench.py");

/// `python3`, found and ready.
pub struct Python {
    version: String,
    queue_script: PathBuf,
    pool_script: PathBuf,
}

impl Python {
    /// Finds `python3` and writes the scripts into `scratch`; `Ok(None)` when there is no python3.
    pub fn find(scratch: &Path) -> Result<Option<Self>> {
        let out = match Command::new("python3").arg("--version").output() {
            Ok(out) if out.status.success() => out,
            _ => return Ok(None),
        };
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let queue_script = scratch.join("queue_bench.py");
        let pool_script = scratch.join("pool_bench.py");
        std::fs::write(&queue_script, QUEUE_BENCH)?;
        std::fs::write(&pool_script, POOL_BENCH)?;
        Ok(Some(Self { version, queue_script, pool_script }))
    }

    /// What `python3 --version` said.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn run(
        &self,
        label: &str,
        script: &Path,
        args: &[String],
        deadline: Duration,
    ) -> std::result::Result<Value, Failure> {
        let mut cmd = Command::new("python3");
        cmd.arg(script).args(args);
        run_program(label, cmd, deadline)
    }

    /// One-way through a `Queue(maxsize)`: `warm` untimed messages, then `count` timed ones.
    pub fn queue_oneway(
        &self,
        size: usize,
        maxsize: usize,
        (warm, count): (u64, u64),
        cpus: Option<(usize, usize)>,
        deadline: Duration,
    ) -> std::result::Result<Value, Failure> {
        let (tx, rx) = cpu_args(cpus);
        let args =
            ["oneway".to_string(), size.to_string(), maxsize.to_string(), warm.to_string(), count.to_string(), tx, rx];
        self.run("python queue", &self.queue_script, &args, deadline)
    }

    /// Ping-pong over two `Queue()`s.
    pub fn queue_rtt(
        &self,
        size: usize,
        (warm, count): (u64, u64),
        cpus: Option<(usize, usize)>,
        deadline: Duration,
    ) -> std::result::Result<Value, Failure> {
        let (client, server) = cpu_args(cpus);
        let args = ["rtt".to_string(), size.to_string(), warm.to_string(), count.to_string(), client, server];
        self.run("python queue rtt", &self.queue_script, &args, deadline)
    }

    /// One pool workload.
    pub fn pool(&self, work: PoolWork, deadline: Duration) -> std::result::Result<Value, Failure> {
        let args: Vec<String> = match work {
            PoolWork::Map { tasks, chunksize: None } => vec!["map".into(), tasks.to_string()],
            PoolWork::Map { tasks, chunksize: Some(c) } => vec!["map".into(), tasks.to_string(), c.to_string()],
            PoolWork::Executor { tasks } => vec!["executor".into(), tasks.to_string()],
            PoolWork::Scene3 => vec!["scene3".into()],
            PoolWork::BigParent { fork } => vec!["bigparent".into(), if fork { "fork" } else { "spawn" }.into()],
            PoolWork::Strings { items } => vec!["strings".into(), items.to_string()],
            PoolWork::Vecs { items } => vec!["vecs".into(), items.to_string()],
            PoolWork::MapWorkers { tasks, workers } => {
                vec!["mapworkers".into(), tasks.to_string(), workers.to_string()]
            }
        };
        self.run("python pool", &self.pool_script, &args, deadline)
    }
}

fn cpu_args(cpus: Option<(usize, usize)>) -> (String, String) {
    match cpus {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => ("-1".into(), "-1".into()),
    }
}
