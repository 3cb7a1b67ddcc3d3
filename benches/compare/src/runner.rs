//! The plan of a run and its main loop.
//!
//! The run is a list of tables (workloads); each has its jobs (one per peer). For each table,
//! round after round, every job runs once: the peers are interleaved, so that a machine whose
//! speed drifts (this one's vCPUs move between placements within seconds) drifts under all of
//! them alike, and a ratio compares figures taken minutes, not hours, apart.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cli::{Options, USAGE};
use crate::harness::{Args, ChildCmd, Failure, pin_pair, run_many, run_pair, run_single};
use crate::mpmc::Chan;
use crate::peers::{self, Entry, Role, Spec};
use crate::pools::{self, PoolEntry, PoolWork};
use crate::python::Python;
use crate::report::{
    BYTES, Bench, FAILURES, Kind, MSGS, Metric, NS_PER_CALL, NS_PER_MSG, RTT_MEDIAN, RTT_P99, Report, TASKS, TRIALS,
    WALL_MS,
};
use crate::shm::ShmWatch;

/// The one-way message sizes.
pub const SIZES: [usize; 4] = [8, 1024, 64 * 1024, 1024 * 1024];
/// The sizes at which Python's queues are measured too.
const PY_SIZES: [usize; 2] = [8, 1024];
/// Every `/dev/shm` name of a run starts with this and the runner's pid.
const SHM_STEM: &str = "rpcmp";
/// The run's scratch directory, in the temporary directory: this and the runner's pid.
const SCRATCH_STEM: &str = "ringpool-compare-";
/// The peers measured with both processes on one CPU.
const ONE_CPU_PEERS: [&str; 5] = ["ringpool-ring", "ringpool-ring-park", "ringpool-queue", "pipe", "shmsync"];
/// The one-way size on one CPU.
const ONE_CPU_SIZE: usize = 8;
/// The round trip's message size.
const RTT_SIZE: usize = 8;

/// How long and how often: `--quick` or full.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    runs: usize,
    warm_ms: u64,
    measure_ms: u64,
    rtt: (u64, u64),
    py_queue: (u64, u64),
    py_rtt: (u64, u64),
    map_tasks: u64,
    chunk1_tasks: u64,
    executor_tasks: u64,
    limit_ms: u64,
    mpmc_msgs: u64,
    typed_strings: u64,
    typed_vecs: u64,
}

impl Plan {
    fn new(quick: bool, runs: Option<usize>) -> Self {
        if quick {
            Self {
                quick,
                runs: runs.unwrap_or(3),
                warm_ms: 50,
                measure_ms: 250,
                rtt: (1_000, 10_000),
                py_queue: (2_000, 20_000),
                py_rtt: (500, 5_000),
                map_tasks: 1_000_000,
                chunk1_tasks: 20_000,
                executor_tasks: 5_000,
                limit_ms: 50,
                mpmc_msgs: 2_000_000,
                typed_strings: 20_000,
                typed_vecs: 2_000,
            }
        } else {
            Self {
                quick,
                runs: runs.unwrap_or(5),
                warm_ms: 200,
                measure_ms: 1_000,
                rtt: (10_000, 100_000),
                py_queue: (20_000, 200_000),
                py_rtt: (2_000, 20_000),
                map_tasks: 1_000_000,
                chunk1_tasks: 100_000,
                executor_tasks: 20_000,
                limit_ms: 200,
                mpmc_msgs: 8_000_000,
                typed_strings: 100_000,
                typed_vecs: 10_000,
            }
        }
    }
}

/// One measurement, repeated once per round.
#[derive(Clone, Copy)]
enum Job {
    OneWay(Entry, usize),
    RoundTrip(Entry),
    PyQueue {
        size: usize,
        maxsize: usize,
    },
    PyRtt,
    PyPool(PoolWork),
    Pool(PoolEntry, PoolWork),
    /// A typed map's floor: the workers' share of the work alone, on two threads.
    PoolFloor(PoolWork),
    Memcpy(usize),
    Line,
    Futex,
    Calls,
    /// The "what goes wrong" counts: once per run, not per round.
    Faults,
    /// One-way with both processes pinned to the same CPU.
    OneCpuOneWay(Entry, usize),
    /// Round trip with both processes pinned to the same CPU.
    OneCpuRtt(Entry),
    /// The futex floor with both processes pinned to the same CPU.
    OneCpuFutex,
    /// Typed one-way: `typed::PEERS[i]`.
    Typed(usize),
    /// Producers x consumers, 8-byte messages.
    Mpmc {
        chan: Chan,
        senders: u64,
        receivers: u64,
    },
}

impl Job {
    /// The row's id (what `--only` matches) and label.
    fn names(&self) -> (String, String) {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        match self {
            Job::OneWay(e, _) | Job::RoundTrip(e) | Job::OneCpuOneWay(e, _) | Job::OneCpuRtt(e) => s(e.name, e.name),
            Job::OneCpuFutex => s("futex", "futex wake/wait, both sleeping"),
            Job::PyQueue { maxsize: 0, .. } => s("python-queue", "Python mp.Queue()"),
            Job::PyQueue { .. } => s("python-queue-1000", "Python mp.Queue(maxsize=1000)"),
            Job::PyRtt => s("python-queue", "Python mp.Queue() pair"),
            Job::PyPool(PoolWork::Executor { .. }) => s("python-executor", "Python ProcessPoolExecutor(2)"),
            Job::PyPool(PoolWork::Scene3) => s("python-pool", "Python Pool(4)"),
            Job::PyPool(PoolWork::BigParent { fork }) => {
                s("python-pool", if *fork { "Python Pool(4), fork" } else { "Python Pool(4), spawn" })
            }
            Job::PyPool(PoolWork::MapWorkers { workers, .. }) => {
                ("python-pool".into(), format!("Python Pool({workers})"))
            }
            Job::Pool(p, PoolWork::BigParent { fork }) => {
                (p.name.to_string(), format!("{}(4), StartMethod::{}", p.label, if *fork { "Fork" } else { "Spawn" }))
            }
            Job::PyPool(PoolWork::Strings { .. } | PoolWork::Vecs { .. }) => s("python-pool", "Python Pool(2)"),
            Job::Pool(p, PoolWork::Strings { .. } | PoolWork::Vecs { .. }) if p.ours => {
                let call = if p.name == <crate::ringpool_pool::RingpoolPoolViews as crate::pools::PoolPeer>::NAME {
                    "map_views"
                } else {
                    "map_archived"
                };
                (p.name.to_string(), format!("{}(2).{call}", p.label))
            }
            Job::Pool(p, PoolWork::MapWorkers { workers, .. }) => {
                (p.name.to_string(), format!("{}({workers})", p.label))
            }
            Job::PyPool(_) => s("python-pool", "Python Pool(2)"),
            Job::Pool(p, _) => s(p.name, p.label),
            Job::PoolFloor(_) => s("pool-floor", "the workers' share alone, 2 threads, no pool"),
            Job::Memcpy(_) => s("memcpy", "memcpy, hot cache"),
            Job::Line => s("cache-line", "one cache line, both spinning"),
            Job::Futex => s("futex", "futex wake/wait, both sleeping"),
            Job::Calls => s("floors", "system call, clock read"),
            Job::Faults => s("faults", "what goes wrong"),
            Job::Typed(i) => s(crate::typed::PEERS[*i].0, crate::typed::PEERS[*i].1),
            Job::Mpmc { chan, senders, receivers } => {
                let what = match chan {
                    Chan::Ring => "ringpool Ring",
                    Chan::Queue => "ringpool Queue<u64>",
                    Chan::Ipmpsc => "ipmpsc",
                };
                let procs = senders + receivers;
                (
                    format!("{}-{senders}x{receivers}", chan.as_str()),
                    format!("{what} {senders}x{receivers} ({procs} processes on {} CPUs)", cpu_count()),
                )
            }
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Job::OneWay(e, _) | Job::RoundTrip(e) | Job::OneCpuOneWay(e, _) | Job::OneCpuRtt(e) => {
                if e.ours {
                    Kind::Ours
                } else {
                    Kind::Peer
                }
            }
            Job::Pool(p, _) => {
                if p.ours {
                    Kind::Ours
                } else {
                    Kind::Peer
                }
            }
            Job::PyQueue { .. } | Job::PyRtt | Job::PyPool(_) => Kind::Python,
            Job::Memcpy(_) | Job::Line | Job::Futex | Job::Calls | Job::OneCpuFutex | Job::PoolFloor(_) => Kind::Floor,
            Job::Faults => Kind::Peer,
            Job::Typed(0) => Kind::Ours,
            Job::Typed(_) => Kind::Peer,
            Job::Mpmc { chan: Chan::Ipmpsc, .. } => Kind::Peer,
            Job::Mpmc { .. } => Kind::Ours,
        }
    }

    /// Whether it runs in the first round only (counts of failures, not timings).
    fn once(&self) -> bool {
        matches!(self, Job::Faults)
    }

    /// Whether `--only` selects it: by its id, or by a group name.
    fn selected(&self, only: &Option<Vec<String>>) -> bool {
        let Some(only) = only else { return true };
        let (id, _) = self.names();
        let group = match self.kind() {
            Kind::Ours => "ringpool",
            Kind::Peer => "rust",
            Kind::Python => "python",
            Kind::Floor => "floors",
        };
        let extra = match self {
            // The failure counts belong to both crates they test.
            Job::Faults => vec!["shmsync", "ringpool"],
            Job::Mpmc { chan, .. } => vec![chan.as_str(), "mpmc"],
            Job::OneCpuOneWay(..) | Job::OneCpuRtt(_) | Job::OneCpuFutex => vec!["one-cpu"],
            Job::Typed(_) => vec!["typed"],
            _ => vec![],
        };
        only.iter().any(|o| *o == id || o == group || extra.contains(&o.as_str()))
    }
}

struct Runner {
    plan: Plan,
    cpus: Option<(usize, usize)>,
    prefix: String,
    scratch: PathBuf,
    python: Option<Python>,
    next_tag: u64,
}

/// The CPUs the OS says this process may use (`available_parallelism`).
fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn kib(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn num(v: &Value, key: &str) -> Result<f64, Failure> {
    v.get(key).and_then(Value::as_f64).ok_or_else(|| Failure::Other(format!("result without {key}: {v}")))
}

impl Runner {
    fn args(&mut self, size: usize) -> Args {
        self.next_tag += 1;
        let mut a = Args::default();
        a.set("size", size)
            .set("tag", self.next_tag)
            .set("prefix", &self.prefix)
            .set("scratch", self.scratch.display())
            .set("warm_ms", self.plan.warm_ms)
            .set("measure_ms", self.plan.measure_ms)
            .set("rtt_warm", self.plan.rtt.0)
            .set("rtt_n", self.plan.rtt.1)
            .set("limit_ms", self.plan.limit_ms);
        a
    }

    fn pair(&mut self, roles: (&'static str, &'static str), args: Args, secs: u64) -> Result<Vec<Value>, Failure> {
        let cpus = self.cpus;
        self.pair_on(roles, args, secs, cpus)
    }

    fn pair_on(
        &mut self,
        roles: (&'static str, &'static str),
        args: Args,
        secs: u64,
        cpus: Option<(usize, usize)>,
    ) -> Result<Vec<Value>, Failure> {
        let a = ChildCmd { role: roles.0, args: args.clone(), cpu: cpus.map(|c| c.0) };
        let b = ChildCmd { role: roles.1, args, cpu: cpus.map(|c| c.1) };
        run_pair(&a, &b, Duration::from_secs(secs))
    }

    /// Both sides on the first CPU.
    fn one_cpu(&self) -> Option<(usize, usize)> {
        self.cpus.map(|(a, _)| (a, a))
    }

    fn py(&self) -> Result<&Python, Failure> {
        self.python.as_ref().ok_or_else(|| Failure::Other("no python3".into()))
    }

    /// Runs one job once; returns the figures for its table.
    fn run(&mut self, job: Job) -> Result<Vec<(Metric, f64)>, Failure> {
        let p = self.plan;
        let oneway = |v: &Value| -> Result<Vec<(Metric, f64)>, Failure> {
            let m = num(v, "msgs_per_s")?;
            Ok(vec![(MSGS, m), (BYTES, num(v, "bytes_per_s")?), (NS_PER_MSG, 1e9 / m)])
        };
        let rtt = |v: &Value| -> Result<Vec<(Metric, f64)>, Failure> {
            Ok(vec![(RTT_MEDIAN, num(v, "rtt_median_ns")?), (RTT_P99, num(v, "rtt_p99_ns")?)])
        };
        let slow = if p.quick { 120 } else { 600 };
        match job {
            Job::OneWay(e, size) => {
                let mut a = self.args(size);
                a.set("peer", e.name);
                let out = self.pair((Role::OneWayTx.as_str(), Role::OneWayRx.as_str()), a, 60)?;
                oneway(&out[1])
            }
            Job::RoundTrip(e) => {
                let mut a = self.args(RTT_SIZE);
                a.set("peer", e.name);
                let out = self.pair((Role::RttClient.as_str(), Role::RttServer.as_str()), a, slow)?;
                rtt(&out[0])
            }
            Job::OneCpuOneWay(e, size) => {
                let mut a = self.args(size);
                a.set("peer", e.name);
                let cpus = self.one_cpu();
                let out = self.pair_on((Role::OneWayTx.as_str(), Role::OneWayRx.as_str()), a, 60, cpus)?;
                oneway(&out[1])
            }
            Job::OneCpuRtt(e) => {
                let mut a = self.args(RTT_SIZE);
                a.set("peer", e.name);
                let cpus = self.one_cpu();
                let out = self.pair_on((Role::RttClient.as_str(), Role::RttServer.as_str()), a, slow, cpus)?;
                rtt(&out[0])
            }
            Job::OneCpuFutex => {
                let a = self.args(RTT_SIZE);
                let cpus = self.one_cpu();
                rtt(&self.pair_on(("limit-futex-client", "limit-futex-server"), a, slow, cpus)?[0])
            }
            Job::Line => {
                let a = self.args(RTT_SIZE);
                rtt(&self.pair(("limit-line-client", "limit-line-server"), a, 60)?[0])
            }
            Job::Futex => {
                let a = self.args(RTT_SIZE);
                rtt(&self.pair(("limit-futex-client", "limit-futex-server"), a, slow)?[0])
            }
            Job::Memcpy(size) => {
                let a = self.args(size);
                let cmd = ChildCmd { role: "limit-memcpy", args: a, cpu: self.cpus.map(|c| c.1) };
                let v = run_single(&cmd, Duration::from_secs(60))?;
                Ok(vec![
                    (MSGS, num(&v, "msgs_per_s")?),
                    (BYTES, num(&v, "bytes_per_s")?),
                    (NS_PER_MSG, num(&v, "ns_per_msg")?),
                ])
            }
            Job::Calls | Job::Faults => unreachable!("handled by run_calls, run_faults"),
            Job::Mpmc { chan, senders, receivers } => self.run_mpmc(chan, senders, receivers),
            Job::Typed(i) => {
                let mut a = self.args(std::mem::size_of::<crate::typed::Record>());
                a.set("peer", crate::typed::PEERS[i].0);
                oneway(&self.pair(("typed-tx", "typed-rx"), a, 60)?[1])
            }
            Job::PyQueue { size, maxsize } => {
                oneway(&self.py()?.queue_oneway(size, maxsize, p.py_queue, self.cpus, Duration::from_secs(slow))?)
            }
            Job::PyRtt => rtt(&self.py()?.queue_rtt(RTT_SIZE, p.py_rtt, self.cpus, Duration::from_secs(slow))?),
            Job::PyPool(work) => pool_figures(work, &self.py()?.pool(work, Duration::from_secs(slow))?),
            Job::PoolFloor(work) => {
                let mut a = Args::default();
                work.to_args(&mut a);
                let v = run_single(&ChildCmd { role: "pool-floor", args: a, cpu: None }, Duration::from_secs(slow))?;
                pool_figures(work, &v)
            }
            Job::Pool(entry, work) => {
                let mut a = Args::default();
                a.set("pool", entry.name);
                work.to_args(&mut a);
                let v = run_single(&ChildCmd { role: "pool", args: a, cpu: None }, Duration::from_secs(slow))?;
                pool_figures(work, &v)
            }
        }
    }

    /// N senders and M receivers, each its own process, on one named channel.
    fn run_mpmc(&mut self, chan: Chan, senders: u64, receivers: u64) -> Result<Vec<(Metric, f64)>, Failure> {
        let total = if chan == Chan::Ipmpsc { self.plan.mpmc_msgs / 4 } else { self.plan.mpmc_msgs };
        let per_sender = total / senders;
        let mut a = self.args(8);
        let name = format!("{}{}-mpmc", self.prefix, self.next_tag);
        a.set("chan", chan.as_str())
            .set("name", &name)
            .set("senders", senders)
            .set("receivers", receivers)
            .set("per_sender", per_sender)
            .set("start_at", crate::mpmc::mono_ns() + 1_000_000_000);
        let mut cmds = Vec::new();
        for (role, n) in [("mpmc-rx", receivers), ("mpmc-tx", senders)] {
            for id in 0..n {
                let mut args = a.clone();
                args.set("id", id);
                cmds.push(ChildCmd { role, args, cpu: None });
            }
        }
        let out = run_many(&cmds, Duration::from_secs(if self.plan.quick { 120 } else { 300 }))?;
        let (rx, tx) = out.split_at(receivers as usize);
        let mut sums = vec![crate::mpmc::Tally::default(); senders as usize];
        for r in rx {
            let tally: Vec<crate::mpmc::Tally> = serde_json::from_value(r["tally"].clone())
                .map_err(|e| Failure::Other(format!("mpmc receiver result: {e}")))?;
            for (s, t) in sums.iter_mut().zip(&tally) {
                s.count += t.count;
                s.sum += t.sum;
                s.sum_sq += t.sum_sq;
            }
        }
        let want = crate::mpmc::Tally::expected(per_sender);
        if let Some((i, got)) = sums.iter().enumerate().find(|(_, t)| **t != want) {
            return Err(Failure::Mismatch(format!(
                "{}: sender {i}'s messages arrived as {got:?}, expected {want:?} (lost or duplicated)",
                chan.as_str()
            )));
        }
        let start = tx.iter().map(|v| num(v, "start_ns")).collect::<Result<Vec<f64>, _>>()?;
        let end = rx.iter().map(|v| num(v, "end_ns")).collect::<Result<Vec<f64>, _>>()?;
        let secs =
            (end.iter().cloned().fold(f64::MIN, f64::max) - start.iter().cloned().fold(f64::MAX, f64::min)) / 1e9;
        let m = (per_sender * senders) as f64 / secs;
        Ok(vec![(MSGS, m), (NS_PER_MSG, 1e9 / m)])
    }

    /// The failure counts: one child, many rows.
    fn run_faults(&mut self, bench: &mut Bench) -> Result<(), Failure> {
        let a = self.args(8);
        let v = run_single(&ChildCmd { role: "faults", args: a, cpu: None }, Duration::from_secs(120))?;
        for (id, label, failures, trials) in crate::faults::rows(&v)? {
            let kind = if id.starts_with("ringpool") { Kind::Ours } else { Kind::Peer };
            bench.record(&id, &label, kind, &[(FAILURES, failures), (TRIALS, trials)]);
        }
        Ok(())
    }

    /// The floors' table has two rows from one child.
    fn run_calls(&mut self, bench: &mut Bench) -> Result<(), Failure> {
        let a = self.args(8);
        let v = run_single(
            &ChildCmd { role: "limit-calls", args: a, cpu: self.cpus.map(|c| c.1) },
            Duration::from_secs(60),
        )?;
        bench.record("syscall", "system call (getppid)", Kind::Floor, &[(NS_PER_CALL, num(&v, "syscall_ns")?)]);
        bench.record("clock", "clock read (Instant::now)", Kind::Floor, &[(NS_PER_CALL, num(&v, "clock_ns")?)]);
        Ok(())
    }
}

fn pool_figures(work: PoolWork, v: &Value) -> Result<Vec<(Metric, f64)>, Failure> {
    Ok(match work {
        PoolWork::Scene3 | PoolWork::BigParent { .. } => vec![(WALL_MS, num(v, "wall_ms")?)],
        _ => vec![(TASKS, num(v, "tasks_per_s")?)],
    })
}

/// The tables of a run and their jobs, in order.
fn plan_tables(
    plan: &Plan,
    peers: &[Entry],
    pools: &[PoolEntry],
    python: bool,
    cpus: Option<(usize, usize)>,
) -> Vec<(Bench, Vec<Job>)> {
    let pin = match cpus {
        Some((a, b)) => format!("pinned to CPU {a} (sender, client) and CPU {b} (receiver, server)"),
        None => "not pinned (fewer than 2 CPUs)".into(),
    };
    let mut tables = Vec::new();
    for size in SIZES {
        let spec = Spec::for_size(size);
        let note = format!(
            "Two processes {pin}; every message written in full and checked. msgs/s: messages received \
             between the receiver's MARK and LAST messages over its own clock, after {} ms of warm-up, \
             for {} ms. Channel depth {} messages ({} for byte-counted rings) where the peer lets one choose. \
             memcpy: one process, cache-hot.",
            plan.warm_ms,
            plan.measure_ms,
            spec.depth,
            kib(spec.capacity_bytes)
        );
        let mut jobs: Vec<Job> = peers.iter().filter(|e| (e.supports)(size)).map(|e| Job::OneWay(*e, size)).collect();
        if python && PY_SIZES.contains(&size) {
            jobs.push(Job::PyQueue { size, maxsize: 0 });
            jobs.push(Job::PyQueue { size, maxsize: 1000 });
        }
        jobs.push(Job::Memcpy(size));
        let title = format!("one-way throughput, {} messages", kib(size));
        tables
            .push((Bench::new(&format!("oneway_{size}"), &title, Some(size), &[MSGS, BYTES, NS_PER_MSG], &note), jobs));
    }
    let note = format!(
        "Client and server processes {pin}. An {RTT_SIZE}-byte ping, checked, answered with a freshly \
         written reply, checked. Each round trip timed on its own (two clock reads included, see the \
         floors); {} timed after {} untimed per round. Median: of the per-round medians; p99: median of \
         the per-round 99th percentiles.",
        plan.rtt.1, plan.rtt.0
    );
    let mut jobs: Vec<Job> =
        peers.iter().filter(|e| e.round_trip && (e.supports)(RTT_SIZE)).map(|e| Job::RoundTrip(*e)).collect();
    if python {
        jobs.push(Job::PyRtt);
    }
    jobs.extend([Job::Line, Job::Futex]);
    tables.push((Bench::new("roundtrip_8", "round trip, 8-byte messages", None, &[RTT_MEDIAN, RTT_P99], &note), jobs));

    let pool_note = "The pool is started and warmed up before the clock starts; its workers are not pinned; \
                     the task is x*x; every result is checked.";
    let pool_tables = [
        (
            "pool_map",
            format!("Pool(2).map of {} tiny tasks, default chunk size", plan.map_tasks),
            PoolWork::Map { tasks: plan.map_tasks, chunksize: None },
        ),
        (
            "pool_map_chunk1",
            format!("Pool(2).map of {} tiny tasks, chunksize=1", plan.chunk1_tasks),
            PoolWork::Map { tasks: plan.chunk1_tasks, chunksize: Some(1) },
        ),
        (
            "pool_executor",
            format!("ProcessPoolExecutor(2): submit {} tiny tasks, as_completed", plan.executor_tasks),
            PoolWork::Executor { tasks: plan.executor_tasks },
        ),
        (
            "scene3",
            "the seed's scene 3: Pool(4).map(square, range(100)), pool start to shutdown".to_string(),
            PoolWork::Scene3,
        ),
    ];
    let cores = cpu_count();
    let big_note = format!(
        "As scene 3, after the parent has touched 1 GiB of heap (a vector of a non-zero byte; Python: a \
         bytearray), which it keeps: fork copies the parent's page tables into every worker (the pages \
         themselves are shared copy-on-write); spawn re-executes the binary (ringpool) or starts a fresh \
         interpreter (Python) and inherits nothing. From creating the pool to the end of join() ({cores} CPUs)."
    );
    let workers_note = format!(
        "Pool(N).map of {} tiny tasks (x*x), default chunk size, pool started and warmed up first; \
         {cores} CPUs: 8 workers oversubscribe them {}-fold.",
        plan.map_tasks,
        8 / cores.max(1)
    );
    let extra_pool_tables: [(&str, String, Vec<PoolWork>, Metric, String); 2] = [
        (
            "pool_start_1g",
            "pool start with a 1 GiB parent: Pool(4), map of 100 tiny tasks, close, join; fork vs spawn".into(),
            vec![PoolWork::BigParent { fork: true }, PoolWork::BigParent { fork: false }],
            WALL_MS,
            big_note,
        ),
        (
            "pool_map_workers",
            format!("Pool(8) vs Pool(2) on {cores} CPUs: map of {} tiny tasks", plan.map_tasks),
            vec![
                PoolWork::MapWorkers { tasks: plan.map_tasks, workers: 2 },
                PoolWork::MapWorkers { tasks: plan.map_tasks, workers: 8 },
            ],
            TASKS,
            workers_note,
        ),
    ];
    let ringpool_typed = "ringpool: Pool::map_archived, each item rkyv-archived into shared memory and read in place by the task, the result deserialized in the parent; Pool::map_views, the same with each result validated and read in place (an OutputView), not deserialized.";
    let typed_note = |what: &str| {
        format!(
            "{what} Pool of 2 workers, started and warmed up before the clock; only the map is timed; every \
             result compared with the task run in the parent. {ringpool_typed} procspawn: Pool::new(2), \
             spawn(item, task) per item (serde through ipc-channel), 256 in flight. Python: Pool(2).map \
             (fork, default chunk size), the same data and task."
        )
    };
    let typed_tables: [(&str, String, Vec<PoolWork>, Metric, String); 2] = [
        (
            "pool_map_strings",
            format!("pool map over {} strings of 16..200 bytes, returning a struct with a String", plan.typed_strings),
            vec![PoolWork::Strings { items: plan.typed_strings }],
            TASKS,
            typed_note("Task: the length, the count of 'a's and the first 8 bytes uppercased (a new String)."),
        ),
        (
            "pool_map_vecs",
            format!("pool map over {} Vec<f64> of 1000, returning the sum and 10 block sums", plan.typed_vecs),
            vec![PoolWork::Vecs { items: plan.typed_vecs }],
            TASKS,
            typed_note("Task: the sum of the 1000 values and the sums of their 10 blocks of 100 (a new Vec<f64>)."),
        ),
    ];
    for (id, title, works, metric, note) in extra_pool_tables.into_iter().chain(typed_tables) {
        let mut jobs: Vec<Job> = Vec::new();
        for work in &works {
            jobs.extend(pools.iter().filter(|p| (p.supports)(*work)).map(|p| Job::Pool(*p, *work)));
        }
        if python {
            jobs.extend(works.iter().map(|w| Job::PyPool(*w)));
        }
        jobs.extend(works.iter().filter(|w| w.is_typed()).map(|w| Job::PoolFloor(*w)));
        let mut bench = Bench::new(id, &title, None, &[metric], &note);
        // Ratios only where ringpool's row compares with other pools on the same work.
        bench.ratios = works.iter().all(|w| w.is_typed());
        tables.push((bench, jobs));
    }
    for (id, title, work) in pool_tables {
        let mut jobs: Vec<Job> = pools.iter().filter(|p| (p.supports)(work)).map(|p| Job::Pool(*p, work)).collect();
        if python {
            jobs.push(Job::PyPool(work));
        }
        let (metric, note) = match work {
            PoolWork::Scene3 => (
                WALL_MS,
                "From creating the 4-worker pool to the end of join(), in the process that \
                                           is already running (the interpreter's own start is not included).",
            ),
            _ => (TASKS, pool_note),
        };
        tables.push((Bench::new(id, &title, None, &[metric], note), jobs));
    }
    if let Some((cpu, _)) = cpus {
        let one_cpu: Vec<&Entry> =
            peers.iter().filter(|e| ONE_CPU_PEERS.contains(&e.name) && (e.supports)(ONE_CPU_SIZE)).collect();
        let note = format!(
            "Both processes pinned to CPU {cpu}: every hand-off needs the other process scheduled, so a \
             side that spins waiting only burns the time slice its peer needs. ringpool with its default \
             (adaptive) waiting; the pipe blocks in the kernel; the futex floor sleeps at once. One-way: \
             as the two-CPU table, {} ms measured after {} ms of warm-up.",
            plan.measure_ms, plan.warm_ms
        );
        tables.push((
            Bench::new(
                "onecpu_oneway_8",
                "one CPU shared: one-way throughput, 8 B messages",
                None,
                &[MSGS, BYTES, NS_PER_MSG],
                &note,
            ),
            one_cpu.iter().map(|e| Job::OneCpuOneWay(**e, ONE_CPU_SIZE)).collect(),
        ));
        let mut jobs: Vec<Job> = one_cpu.iter().filter(|e| e.round_trip).map(|e| Job::OneCpuRtt(**e)).collect();
        jobs.push(Job::OneCpuFutex);
        tables.push((
            Bench::new(
                "onecpu_roundtrip_8",
                "one CPU shared: round trip, 8-byte messages",
                None,
                &[RTT_MEDIAN, RTT_P99],
                &format!("{note} Round trip: timed one by one as in the two-CPU table ({} per round).", plan.rtt.1),
            ),
            jobs,
        ));
    }
    tables.push((
        Bench::new(
            "typed_oneway_64",
            "typed one-way: a 64-byte struct holding a short string",
            None,
            &[MSGS, BYTES, NS_PER_MSG],
            &format!(
                "Two processes {pin}. struct Record {{ seq, key, extra: u64, value: f64, count, flags: u32, \
                 name: String (\"item-<seq>\", 6 to 25 bytes) }}, 64 bytes, built fresh per message (a new \
                 String) and sent with each peer's typed API; every field of every message compared on arrival. \
                 ringpool: TypedSender::send (rkyv, straight into the ring), TypedReceiver::recv_archived \
                 (validated, read in place). ipc-channel and ipmpsc: serde (bincode), a new Record per \
                 message on arrival. bytes/s counts 64 bytes per message. {} ms measured after {} ms of warm-up.",
                plan.measure_ms, plan.warm_ms
            ),
        ),
        (0..crate::typed::PEERS.len()).map(Job::Typed).collect(),
    ));
    let shapes: Vec<Job> = [
        (Chan::Ring, 1, 1),
        (Chan::Ring, 2, 1),
        (Chan::Ring, 4, 1),
        (Chan::Ring, 2, 2),
        (Chan::Ring, 4, 4),
        (Chan::Queue, 1, 1),
        (Chan::Queue, 2, 2),
        (Chan::Queue, 4, 4),
        (Chan::Ipmpsc, 1, 1),
        (Chan::Ipmpsc, 2, 1),
        (Chan::Ipmpsc, 4, 1),
    ]
    .into_iter()
    .map(|(chan, senders, receivers)| Job::Mpmc { chan, senders, receivers })
    .collect();
    let mut mpmc = Bench::new(
        "mpmc_8",
        "producers x consumers, 8-byte messages, total msgs/s",
        None,
        &[MSGS, NS_PER_MSG],
        &format!(
            "N sending and M receiving processes on one channel (named, 1024 messages deep), none pinned: \
             the label says how many processes share the {} CPUs. Each sender sends {} messages in all \
             (ipmpsc: a quarter), split between the senders, then one END per receiver; every receiver \
             checks each sender's sequence numbers rise, and the runner requires every message exactly \
             once (count, sum and sum of squares per sender). msgs/s: all messages over the time from the \
             first send to the last receipt. ipmpsc is multi-producer single-consumer: Nx1 only \
             (ringpool Ring's Nx1 rows beside it).",
            cpu_count(),
            plan.mpmc_msgs
        ),
    );
    mpmc.ratios = false;
    tables.push((mpmc, shapes));
    let mut faults = Bench::new(
        "faults",
        "what goes wrong: shared_memory + raw_sync beside ringpool (failures counted)",
        None,
        &[FAILURES, TRIALS],
        "One process (and its helpers, each ended by its pid), once per run. Timed waits: timeouts of 50, 150, \
         ..., 950 ms on something nobody signals, or on a lock another live process holds; a wait counts as \
         failed when it returns more than 5 ms before its timeout (raw_sync adds the timeout's nanoseconds \
         without carrying into seconds, so pthread answers EINVAL at once), or succeeds. Dead holder: a \
         process takes the lock (raw_sync's Mutex; ringpool's send lock, through Sender::reserve) and is \
         SIGKILLed; a failure if another process cannot take it within 2 s (timed) or 1 s (blocking call, \
         then killed).",
    );
    faults.ratios = false;
    tables.push((faults, vec![Job::Faults]));
    tables.push((
        Bench::new(
            "floors",
            "floors: a system call and a clock read",
            None,
            &[NS_PER_CALL],
            "Measured in one pinned process. A round trip's timing includes two clock reads.",
        ),
        vec![Job::Calls],
    ));
    tables
}

fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {} CPUs allowed, Linux {}", crate::harness::allowed_cpus().len(), kernel.trim())
}

fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            format!("{c}{}", if dirty { " (with uncommitted changes)" } else { "" })
        }
        None => "unknown".into(),
    }
}

/// Runs the comparison; returns the exit status.
pub fn run(o: Options) -> i32 {
    if o.help {
        print!("{USAGE}");
        return 0;
    }
    let started = Instant::now();
    let plan = Plan::new(o.quick, o.runs);
    let peers = peers::all();
    let pools = pools::all();
    if o.list {
        println!("peers (one-way and round trip):");
        let mut listed: Vec<&str> = Vec::new();
        for e in &peers {
            if listed.contains(&e.name) {
                continue;
            }
            listed.push(e.name);
            println!("  {:<14} {}{}", e.name, if e.ours { "[ringpool] " } else { "" }, e.about);
        }
        println!("pools:");
        for p in &pools {
            println!("  {:<14} {}", p.name, p.about);
        }
        println!("python: python-queue, python-queue-1000, python-pool, python-executor");
        println!("floors: memcpy, cache-line, futex, floors (system call and clock read)");
        println!("typed one-way (a 64-byte struct with a String):");
        for (id, label) in crate::typed::PEERS {
            println!("  {id:<14} {label}");
        }
        println!("tables of their own (select with --only NAME, or with a peer's name or group):");
        println!("  mpmc           producers x consumers, 8 B: ringpool Ring/Queue 1x1..4x4, ipmpsc Nx1");
        println!("  one-cpu        both processes pinned to one CPU: {}, futex floor", ONE_CPU_PEERS.join(", "));
        println!("  typed          typed one-way (above); the typed pool maps run with the pools");
        println!("  faults         what goes wrong: raw_sync's timed waits and dead lock holder, beside ringpool's");
        println!("groups: ringpool, rust, python, floors, mpmc, one-cpu, typed");
        return 0;
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: built without --release; the figures mean nothing");
    }
    let pid = std::process::id();
    let prefix = format!("{SHM_STEM}{pid}-");
    let scratch = std::env::temp_dir().join(format!("{SCRATCH_STEM}{pid}"));
    for note in crate::shm::clean_stale(SHM_STEM, &std::env::temp_dir(), SCRATCH_STEM) {
        eprintln!("note: {note}");
    }
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        eprintln!("ringpool-compare: cannot create {}: {e}", scratch.display());
        return 1;
    }
    let python = match Python::find(&scratch) {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            eprintln!("python3 not found: skipping the Python rows");
            None
        }
        Err(e) => {
            eprintln!("python3: cannot write the scripts ({e}): skipping the Python rows");
            None
        }
    };
    let cpus = pin_pair();
    let mut shm = ShmWatch::new(&prefix);
    let mut runner = Runner { plan, cpus, prefix, scratch: scratch.clone(), python, next_tag: 0 };

    let mut tables = plan_tables(&plan, &peers, &pools, runner.python.is_some(), cpus);
    if let Some(only) = &o.only {
        let known: Vec<String> = tables
            .iter()
            .flat_map(|(_, jobs)| jobs.iter().map(|j| j.names().0))
            .chain(["ringpool", "rust", "python", "floors", "mpmc", "one-cpu", "typed"].map(String::from))
            .collect();
        if let Some(unknown) = only.iter().find(|n| !known.contains(n)) {
            eprintln!("ringpool-compare: --only {unknown}: no such peer or group here (see --list)");
            std::fs::remove_dir_all(&scratch).ok();
            return 2;
        }
    }
    for (_, jobs) in &mut tables {
        jobs.retain(|j| j.selected(&o.only));
    }
    tables.retain(|(_, jobs)| !jobs.is_empty());
    let total: usize = tables.iter().flat_map(|(_, j)| j.iter()).map(|j| if j.once() { 1 } else { plan.runs }).sum();

    let mut report = Report { quick: plan.quick, ..Default::default() };
    report.header = vec![
        format!("## ringpool-compare results ({})", if plan.quick { "--quick" } else { "full run" }),
        String::new(),
        format!("- when: {}; commit {}; {}", utc_now(), commit(), env!("COMPARE_RUSTC_VERSION")),
        format!("- machine: {}", machine()),
        format!(
            "- every peer: two separate processes (the runner re-executed), {}; every message written in \
             full and checked by the receiver",
            match cpus {
                Some((a, b)) => format!("pinned to CPUs {a} and {b}"),
                None => "not pinned".into(),
            }
        ),
        format!(
            "- {} rounds per figure, peers interleaved within a round; python: {}",
            plan.runs,
            runner.python.as_ref().map_or("not found", |p| p.version())
        ),
    ];

    let mut done = 0;
    for (mut bench, jobs) in tables {
        for round in 1..=plan.runs {
            for job in &jobs {
                if job.once() && round > 1 {
                    continue;
                }
                done += 1;
                let (id, label) = job.names();
                let kind = job.kind();
                eprint!("[{done:>3}/{total}] {} · round {round}/{} · {label}: ", bench.title, plan.runs);
                let outcome = match job {
                    Job::Calls => runner.run_calls(&mut bench).map(|_| Vec::new()),
                    Job::Faults => runner.run_faults(&mut bench).map(|_| Vec::new()),
                    _ => runner.run(*job),
                };
                let swept = shm.sweep(&format!("{label} in {}", bench.id));
                match outcome {
                    Ok(figures) => {
                        match figures.first() {
                            Some((m, v)) => eprintln!("{}", crate::report::human(*v, m.unit)),
                            None => eprintln!("done"),
                        }
                        for note in &swept.notes {
                            eprintln!("  note: {note}");
                        }
                        if !figures.is_empty() {
                            bench.record(&id, &label, kind, &figures);
                        }
                    }
                    Err(Failure::Mismatch(why)) => {
                        eprintln!("\n\n*** ABORTING THE RUN: {label} delivered a wrong message: {why} ***\n");
                        report.benches.push(bench);
                        report.header.push(format!("- ABORTED: {label} delivered a wrong message"));
                        finish(&o, &report, &mut shm, &scratch, started);
                        return 3;
                    }
                    Err(Failure::Other(why)) => {
                        eprintln!("FAILED: {why}");
                        for note in &swept.notes {
                            eprintln!("  note: {note}");
                        }
                        bench.fail(&id, &label, kind, &why);
                    }
                }
            }
        }
        report.benches.push(bench);
    }
    finish(&o, &report, &mut shm, &scratch, started);
    if report.any_failure() { 1 } else { 0 }
}

fn finish(o: &Options, report: &Report, shm: &mut ShmWatch, scratch: &std::path::Path, started: Instant) {
    let mut report_text = report.markdown();
    let leftover = shm.summary();
    std::fs::remove_dir_all(scratch).ok();
    report_text.push_str(&format!(
        "\n{leftover}; scratch directory {} removed.\nWall time of this run: {:.0} s.\n",
        scratch.display(),
        started.elapsed().as_secs_f64()
    ));
    print!("{report_text}");
    if let Some(path) = &o.json {
        match std::fs::write(path, report.json_lines()) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    if let Some(path) = &o.plot {
        match crate::plot::write(report, path) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write the plot {}: {e}", path.display()),
        }
    }
}
