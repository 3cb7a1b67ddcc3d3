//! The pool with archived (rkyv) inputs and outputs: round trips of strings, vectors, enums,
//! options, results, tuples; random nested values; contexts and initializer arguments reaching
//! forked and spawned workers (replacements too); values too large for a slot; outputs that
//! overflow a chunk; corrupted outputs; workers killed mid-map.
//!
//! The harness runs threads, so pools built here spawn their workers (re-executing this test
//! binary); the fork start method is tested from a forked, single-threaded child.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use ringpool::pool::{
    FaultPlan, FaultPoint, MapError, PoolError, SCRIBBLE_INPUTS, SCRIBBLE_OUTPUTS, SCRIBBLE_SPILLED, SCRIBBLE_TABLE,
    StartMethod, TaskError,
};
use ringpool::ring::archive::rkyv::{
    self, Archived, option::ArchivedOption, string::ArchivedString, tuple::ArchivedTuple2, vec::ArchivedVec,
};
use ringpool::{Pool, PoolBuilder};

const LONG: Duration = Duration::from_secs(120);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv)]
struct FileStats {
    path: String,
    len: u64,
    upper: String,
}

fn file_stats(path: &ArchivedString) -> FileStats {
    FileStats { path: path.as_str().to_owned(), len: path.len() as u64, upper: path.as_str().to_uppercase() }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv)]
struct Summary {
    sum: f64,
    first: Vec<f64>,
}

fn summarize(v: &ArchivedVec<Archived<f64>>) -> Summary {
    Summary { sum: v.iter().map(|x| x.to_native()).sum(), first: v.iter().take(10).map(|x| x.to_native()).collect() }
}

fn is_prime(n: &Archived<u64>) -> bool {
    let n = n.to_native();
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv)]
enum Cmd {
    Add(i64, i64),
    Say { text: String, loud: bool },
    Nothing,
}

fn run_cmd(c: &ArchivedCmd) -> Result<Option<String>, (bool, i64)> {
    match c {
        ArchivedCmd::Add(a, b) => Err((true, a.to_native() + b.to_native())),
        ArchivedCmd::Say { text, loud } => Ok(Some(if *loud { text.to_uppercase() } else { text.as_str().to_owned() })),
        ArchivedCmd::Nothing => Ok(None),
    }
}

fn pool(workers: usize) -> Pool {
    PoolBuilder::new().workers(workers).build().expect("a pool")
}

#[test]
fn strings_in_structs_with_strings_out() {
    let p = pool(2);
    let paths: Vec<String> = (0..5000).map(|i| format!("/some/dir/{i}/file-{}.rs", "x".repeat(i % 150))).collect();
    let got = p.map_archived(file_stats, paths.clone()).unwrap();
    assert_eq!(got.len(), paths.len());
    for (s, p) in got.iter().zip(&paths) {
        assert_eq!(s, &FileStats { path: p.clone(), len: p.len() as u64, upper: p.to_uppercase() });
    }
    // The lazy forms and the single ones agree.
    let ordered: Vec<FileStats> = p.imap_archived(file_stats, paths.clone()).unwrap().map(Result::unwrap).collect();
    assert_eq!(ordered, got);
    let mut unordered: Vec<(usize, FileStats)> =
        p.imap_unordered_archived(file_stats, paths.clone()).unwrap().map(|(i, r)| (i, r.unwrap())).collect();
    unordered.sort_by_key(|(i, _)| *i);
    assert!(unordered.iter().enumerate().all(|(k, (i, s))| k == *i && s == &got[k]));
    assert_eq!(p.apply_archived(file_stats, "abc".to_string()).unwrap().upper, "ABC");
    let futures: Vec<_> = paths[..50].iter().map(|s| p.submit_archived(file_stats, s.clone()).unwrap()).collect();
    for (f, s) in futures.iter().zip(&got) {
        assert_eq!(&f.wait_timeout(LONG).unwrap(), s);
    }
}

#[test]
fn vectors_of_floats_in_structs_with_vectors_out() {
    let p = pool(2);
    let inputs: Vec<Vec<f64>> = (0..300).map(|i| (0..(i * 7 % 1000)).map(|k| (k * i) as f64 * 0.5).collect()).collect();
    let got = p.map_archived(summarize, inputs.clone()).unwrap();
    for (s, v) in got.iter().zip(&inputs) {
        assert_eq!(s.sum, v.iter().sum::<f64>());
        assert_eq!(s.first, v.iter().take(10).copied().collect::<Vec<_>>());
    }
}

#[test]
fn enums_options_results_bools_and_primes() {
    let p = pool(2);
    let cmds = vec![
        Cmd::Add(2, 40),
        Cmd::Say { text: "quiet".into(), loud: false },
        Cmd::Say { text: "loud".into(), loud: true },
        Cmd::Nothing,
    ];
    let got = p.map_archived(run_cmd, cmds).unwrap();
    assert_eq!(got, vec![Err((true, 42)), Ok(Some("quiet".into())), Ok(Some("LOUD".into())), Ok(None)]);
    let primes = p.map_archived(is_prime, 0..2000u64).unwrap();
    let expect: Vec<bool> =
        (0..2000u64).map(|n| n >= 2 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0)).collect();
    assert_eq!(primes, expect);
    assert_eq!(primes.iter().filter(|&&b| b).count(), 303);
    fn first_of_pair(t: &ArchivedTuple2<ArchivedString, ArchivedOption<u8>>) -> (String, bool) {
        (t.0.as_str().to_owned(), t.1.is_some())
    }
    let pairs = vec![("a".to_string(), Some(1u8)), ("b".to_string(), None)];
    assert_eq!(p.map_archived(first_of_pair, pairs).unwrap(), vec![("a".into(), true), ("b".into(), false)]);
}

fn repeat(s: String, n: u32) -> String {
    s.repeat(n as usize)
}

fn join3(a: String, b: Vec<u16>, c: bool) -> String {
    format!("{a}:{}:{c}", b.len())
}

#[test]
fn starmap_over_pairs_and_triples() {
    let p = pool(2);
    let out = p.starmap(repeat, (0..200u32).map(|i| (format!("{i}"), i % 5))).unwrap();
    assert!(out.iter().enumerate().all(|(i, s)| *s == format!("{i}").repeat(i % 5)));
    let out = p.starmap(join3, vec![("x".to_string(), vec![1u16, 2], true), ("y".to_string(), vec![], false)]).unwrap();
    assert_eq!(out, vec!["x:2:true".to_string(), "y:0:false".to_string()]);
}

// ----- random nested values ---------------------------------------------------------------------

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv)]
enum Shape {
    Empty,
    Point(i32, i32),
    Named { name: String, tags: Vec<String> },
    Bytes(Vec<u8>),
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv)]
struct Item {
    id: u64,
    name: String,
    values: Vec<u64>,
    maybe: Option<String>,
    outcome: Result<u32, String>,
    pair: (u8, String),
    shapes: Vec<Shape>,
    nested: Vec<Vec<Option<i16>>>,
    letter: char,
    /// 16-aligned when archived: correct in place only if every side aligned for the real address.
    wide: u128,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Empty),
        (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Shape::Point(x, y)),
        (".{0,20}", proptest::collection::vec(".{0,8}", 0..5)).prop_map(|(name, tags)| Shape::Named { name, tags }),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Shape::Bytes),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    (
        (any::<u64>(), ".{0,60}", proptest::collection::vec(any::<u64>(), 0..40)),
        (proptest::option::of(".{0,16}"), prop_oneof![any::<u32>().prop_map(Ok), ".{0,16}".prop_map(Err)]),
        ((any::<u8>(), ".{0,10}"), proptest::collection::vec(shape(), 0..4)),
        (
            proptest::collection::vec(proptest::collection::vec(proptest::option::of(any::<i16>()), 0..5), 0..4),
            any::<char>(),
            any::<u128>(),
        ),
    )
        .prop_map(|((id, name, values), (maybe, outcome), (pair, shapes), (nested, letter, wide))| Item {
            id,
            name,
            values,
            maybe,
            outcome,
            pair,
            shapes,
            nested,
            letter,
            wide,
        })
}

/// Deserializes the item in the worker and sends it back whole (and twice as large, sometimes:
/// outputs larger than inputs overflow chunks and are dispatched again).
fn echo(i: &ArchivedItem) -> (Item, Vec<u64>) {
    let item: Item = rkyv::deserialize::<Item, rkyv::rancor::Error>(i).expect("a valid archive deserializes");
    let extra = if item.id % 3 == 0 { item.values.iter().chain(&item.values).copied().collect() } else { vec![] };
    (item, extra)
}

/// One pool for every proptest case (small slots, so chunks split and outputs overflow).
fn shared_pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| PoolBuilder::new().workers(2).slot_bytes(8192).build().expect("a pool"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random nested values through map_archived: what comes back is exactly what went, in order.
    #[test]
    fn random_nested_values_round_trip_exactly(items in proptest::collection::vec(item(), 1..60)) {
        let got = shared_pool().map_archived(echo, items.clone()).unwrap();
        prop_assert_eq!(got.len(), items.len());
        for ((back, extra), sent) in got.iter().zip(&items) {
            prop_assert_eq!(back, sent);
            let want: Vec<u64> =
                if sent.id % 3 == 0 { sent.values.iter().chain(&sent.values).copied().collect() } else { vec![] };
            prop_assert_eq!(extra, &want);
        }
    }
}

// ----- contexts ---------------------------------------------------------------------------------

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv)]
struct Ctx {
    salt: String,
    weights: Vec<u32>,
}

/// The context's salt and weighted input, and the worker's pid; sleeps a little so that both
/// workers take tasks.
fn salted(ctx: &ArchivedCtx, x: &Archived<u32>) -> (String, u64, u32) {
    std::thread::sleep(Duration::from_millis(3));
    let x = x.to_native();
    let w = ctx.weights.get(x as usize % ctx.weights.len().max(1)).map_or(0, |w| w.to_native());
    (ctx.salt.as_str().to_owned(), u64::from(x) * u64::from(w), std::process::id())
}

/// Runs a map_with and the other context forms on `p`; answers the distinct worker pids seen.
fn check_context(p: &Pool) -> Result<HashSet<u32>, String> {
    let ctx = Ctx { salt: "pepper".repeat(20), weights: (1..=7).collect() };
    let got = p.map_with(&ctx, salted, 0..60u32).map_err(|e| e.to_string())?;
    let mut pids = HashSet::new();
    for (x, (salt, v, pid)) in got.iter().enumerate() {
        if salt != &ctx.salt || *v != x as u64 * u64::from(ctx.weights[x % 7]) {
            return Err(format!("item {x}: {salt} {v}"));
        }
        pids.insert(*pid);
    }
    let lazy: Vec<_> = p.imap_with(&ctx, salted, 0..10u32).map_err(|e| e.to_string())?.collect();
    if lazy.iter().enumerate().any(|(x, r)| r.as_ref().map(|r| r.1) != Ok(x as u64 * u64::from(ctx.weights[x % 7]))) {
        return Err("imap_with".into());
    }
    let n =
        p.imap_unordered_with(&ctx, salted, 0..10u32).map_err(|e| e.to_string())?.filter(|(_, r)| r.is_ok()).count();
    if n != 10 {
        return Err("imap_unordered_with".into());
    }
    let one = p.apply_with(&ctx, salted, 3u32).map_err(|e| e.to_string())?;
    let fut = p.submit_with(&ctx, salted, 4u32).map_err(|e| e.to_string())?;
    let two = fut.wait_timeout(LONG).map_err(|e| e.to_string())?;
    if (one.1, two.1) != (12, 20) {
        return Err(format!("apply/submit_with: {one:?} {two:?}"));
    }
    // Every context slot went back: many more calls than slots still work.
    for k in 0..40u32 {
        let r = p.apply_with(&ctx, salted, k).map_err(|e| e.to_string())?;
        if r.0 != ctx.salt {
            return Err("context lost".into());
        }
    }
    Ok(pids)
}

#[test]
fn a_context_reaches_every_spawned_worker() {
    let p = PoolBuilder::new().workers(2).chunk_size(1).slots(4).start_method(StartMethod::Spawn).build().unwrap();
    let pids = check_context(&p).unwrap();
    let workers: HashSet<u32> = p.worker_pids().into_iter().collect();
    assert!(pids.len() >= 2, "both workers read the context: {pids:?}");
    assert!(pids.is_subset(&workers));
}

/// Starts (and ends) a process from this thread before a test forks a child that starts workers:
/// the process layer's one-time setup then ran to its end here, so the child cannot inherit it
/// half-done from another test's thread (it would wait for it forever).
fn settle_process_setup() {
    drop(PoolBuilder::new().workers(1).build().expect("a pool"));
}

#[test]
fn a_context_reaches_every_forked_worker() {
    settle_process_setup();
    let child = common::spawn(|| {
        let Ok(p) = PoolBuilder::new().workers(2).chunk_size(1).start_method(StartMethod::Fork).build() else {
            return 2;
        };
        match check_context(&p) {
            Ok(pids) if pids.len() >= 2 => 0,
            Ok(_) => 3,
            Err(e) => {
                eprintln!("{e}");
                4
            }
        }
    });
    child.join(LONG);
}

// ----- contexts larger than a slot: mapped from a spill file ------------------------------------

/// Elements of a big context: 655,360 `u64`s (5 MiB), each a function of the seed and its index.
const BIG_CTX: usize = 5 << 17;

fn ctx_elem(seed: u64, i: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64).rotate_left((i % 61) as u32) ^ (i as u64)
}

fn big_ctx(seed: u64, n: usize) -> Vec<u64> {
    (0..n).map(|i| ctx_elem(seed, i)).collect()
}

/// The element of the context an input picks.
fn pick_index(x: u32, len: usize) -> usize {
    (x as usize).wrapping_mul(7919) % len.max(1)
}

/// Reads the context: its length, the element the input picks, the worker's pid and how many
/// spilled contexts the worker has mapped so far.
fn pick(ctx: &ArchivedVec<Archived<u64>>, x: &Archived<u32>) -> (u64, u64, u32, u64) {
    let i = pick_index(x.to_native(), ctx.len());
    let v = ctx.get(i).map_or(u64::MAX, |v| v.to_native());
    (ctx.len() as u64, v, std::process::id(), ringpool::pool::context_mappings())
}

/// Checks `got` (of inputs `xs`) against context `seed`: exact lengths and elements.
fn check_picks(
    what: &str,
    seed: u64,
    xs: impl IntoIterator<Item = u32>,
    got: &[(u64, u64, u32, u64)],
) -> Result<(), String> {
    let mut n = 0;
    for (x, &(len, v, pid, _)) in xs.into_iter().zip(got) {
        n += 1;
        let want = ctx_elem(seed, pick_index(x, BIG_CTX));
        if len != BIG_CTX as u64 || v != want {
            return Err(format!("{what}: input {x} on worker {pid} read ({len}, {v:#x}), not ({BIG_CTX}, {want:#x})"));
        }
    }
    if n != got.len() {
        return Err(format!("{what}: {} results for {n} inputs", got.len()));
    }
    Ok(())
}

/// A 5 MiB context through `map_with` on a pool of 16 KiB slots (the default) and chunks of 50:
/// exact results, every worker mapped it once (not once per chunk), and the context went through
/// one spill file.
fn check_big_context(p: &Pool) -> Result<(), String> {
    let ctx = big_ctx(11, BIG_CTX);
    let got = p.map_with(&ctx, pick, 0..2000u32).map_err(|e| format!("map_with: {e}"))?;
    check_picks("map_with", 11, 0..2000u32, &got)?;
    let mut maps: std::collections::HashMap<u32, HashSet<u64>> = std::collections::HashMap::new();
    for &(_, _, pid, m) in &got {
        maps.entry(pid).or_default().insert(m);
    }
    // 40 chunks (of 50): without the worker's cache, each would map the context again.
    if maps.is_empty() || maps.values().any(|m| m.len() != 1 || !m.contains(&1)) {
        return Err(format!("each worker should have mapped the context once: {maps:?}"));
    }
    if p.stats().spilled_contexts != 1 || p.stats().failed != 0 {
        return Err(format!("{:?}", p.stats()));
    }
    // The job is over and the parent closed the file: each idle worker unmaps it soon after (it
    // would otherwise keep 5 MiB alive until its next chunk).
    let deadline = std::time::Instant::now() + LONG;
    while let Some(w) = p.worker_pids().into_iter().find(|&w| spill_maps_of(w) > 0) {
        if std::time::Instant::now() > deadline {
            return Err(format!("worker {w} still maps the context after its job"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// How many mappings of spill files a process has.
fn spill_maps_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_or(0, |m| m.lines().filter(|l| l.contains("ringpool-spill")).count())
}

#[test]
fn a_context_larger_than_a_slot_is_mapped_by_every_spawned_worker() {
    let p = PoolBuilder::new().workers(2).chunk_size(50).start_method(StartMethod::Spawn).build().unwrap();
    check_big_context(&p).unwrap();
}

#[test]
fn a_context_larger_than_a_slot_is_mapped_by_every_forked_worker() {
    settle_process_setup();
    let child = common::spawn(|| {
        let Ok(p) = PoolBuilder::new().workers(2).chunk_size(50).start_method(StartMethod::Fork).build() else {
            return 2;
        };
        match check_big_context(&p) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                3
            }
        }
    });
    child.join(LONG);
}

/// Two big contexts of the same length (so their records differ only in the id the parent gives
/// each, and, one job after the other, often not in the descriptor number): one after the other,
/// interleaved through two `imap_with`s, and through futures; no task reads the other's context.
fn check_two_big_contexts(p: &Pool) -> Result<(), String> {
    let (a, b) = (big_ctx(21, BIG_CTX), big_ctx(22, BIG_CTX));
    for (round, (seed, ctx)) in [(21, &a), (22, &b), (21, &a), (22, &b)].into_iter().enumerate() {
        let got = p.map_with(ctx, pick, 0..300u32).map_err(|e| format!("round {round}: {e}"))?;
        check_picks(&format!("round {round}"), seed, 0..300u32, &got)?;
    }
    let mut ia = p.imap_with(&a, pick, 0..400u32).map_err(|e| e.to_string())?;
    let mut ib = p.imap_with(&b, pick, 0..400u32).map_err(|e| e.to_string())?;
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    for _ in 0..400 {
        ga.push(ia.next().ok_or("imap a ended early")?.map_err(|e| format!("imap a: {e}"))?);
        gb.push(ib.next().ok_or("imap b ended early")?.map_err(|e| format!("imap b: {e}"))?);
    }
    if ia.next().is_some() || ib.next().is_some() {
        return Err("imap: more results than inputs".into());
    }
    drop((ia, ib));
    check_picks("imap a", 21, 0..400u32, &ga)?;
    check_picks("imap b", 22, 0..400u32, &gb)?;
    // Futures two at a time (each holds its context's slot until it is done and dropped).
    for x in (0..40u32).step_by(2) {
        let fa = p.submit_with(&a, pick, x).map_err(|e| e.to_string())?;
        let fb = p.submit_with(&b, pick, x + 1).map_err(|e| e.to_string())?;
        let rb = fb.wait_timeout(LONG).map_err(|e| format!("future {}: {e}", x + 1))?;
        let ra = fa.wait_timeout(LONG).map_err(|e| format!("future {x}: {e}"))?;
        check_picks(&format!("future {x}"), 21, [x], &[ra])?;
        check_picks(&format!("future {}", x + 1), 22, [x + 1], &[rb])?;
    }
    let r = p.apply_with(&b, pick, 77u32).map_err(|e| e.to_string())?;
    check_picks("apply_with", 22, [77], &[r])?;
    // 4 maps, 2 imaps, 40 futures, 1 apply: a spill file each.
    if p.stats().spilled_contexts != 47 || p.stats().failed != 0 {
        return Err(format!("{:?}", p.stats()));
    }
    Ok(())
}

#[test]
fn big_contexts_of_jobs_in_a_row_and_interleaved_never_mix_spawned() {
    let p = PoolBuilder::new().workers(2).start_method(StartMethod::Spawn).build().unwrap();
    check_two_big_contexts(&p).unwrap();
}

#[test]
fn big_contexts_of_jobs_in_a_row_and_interleaved_never_mix_forked() {
    settle_process_setup();
    let child = common::spawn(|| {
        let Ok(p) = PoolBuilder::new().workers(2).start_method(StartMethod::Fork).build() else {
            return 2;
        };
        match check_two_big_contexts(&p) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                3
            }
        }
    });
    child.join(LONG);
}

#[test]
fn a_context_larger_than_max_value_bytes_is_refused_naming_both_sizes() {
    let ctx: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let needed = rkyv::to_bytes::<rkyv::rancor::Error>(&ctx).unwrap().len();
    fn sum(ctx: &ArchivedVec<u8>, x: &Archived<u32>) -> u64 {
        ctx.iter().map(|&b| u64::from(b)).sum::<u64>() + u64::from(x.to_native())
    }
    let want: u64 = ctx.iter().map(|&b| u64::from(b)).sum();
    // Exactly at the limit: mapped from a spill file.
    let p = PoolBuilder::new().workers(1).slot_bytes(4096).max_value_bytes(needed).build().unwrap();
    assert_eq!(p.map_with(&ctx, sum, 0..3u32).unwrap(), [want, want + 1, want + 2]);
    assert_eq!(p.stats().spilled_contexts, 1);
    // A byte over.
    let p = PoolBuilder::new().workers(1).slot_bytes(4096).max_value_bytes(needed - 1).build().unwrap();
    match p.map_with(&ctx, sum, 0..3u32) {
        Err(MapError::Pool(e @ PoolError::ArchiveTooLarge { what: "context", .. })) => {
            let PoolError::ArchiveTooLarge { needed: n, available, .. } = e else { unreachable!() };
            assert_eq!((n, available), (needed, needed - 1));
            let text = e.to_string();
            assert!(text.contains("max_value_bytes") && text.contains(&needed.to_string()), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let e = p.submit_with(&ctx, sum, 1u32).map(|_| ()).unwrap_err();
    assert!(matches!(e, PoolError::ArchiveTooLarge { what: "context", .. }), "{e:?}");
    // The pool goes on, and its context slots went back.
    for _ in 0..10 {
        assert!(p.map_with(&ctx, sum, 0..3u32).is_err());
    }
    assert_eq!(p.map_archived(is_prime, [7u64]).unwrap(), [true]);
    assert_eq!(
        p.map_with(&ctx[..1000].to_vec(), sum, [0u32]).unwrap(),
        [ctx[..1000].iter().map(|&b| u64::from(b)).sum::<u64>()]
    );
}

// ----- initializer arguments --------------------------------------------------------------------

static INIT_VALUE: AtomicU64 = AtomicU64::new(0);

fn remember(args: &ArchivedTuple2<ArchivedString, Archived<u64>>) {
    INIT_VALUE.store(args.1.to_native() + args.0.len() as u64, Ordering::SeqCst);
}

fn init_value(_: &Archived<u32>) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(3));
    (INIT_VALUE.load(Ordering::SeqCst), std::process::id())
}

#[test]
fn initializer_arguments_reach_every_worker_and_replacements() {
    let p = PoolBuilder::new()
        .workers(2)
        .chunk_size(1)
        .initializer_with(remember, ("abc".to_string(), 1000u64))
        .build()
        .unwrap();
    let first = p.map_archived(init_value, 0..40u32).unwrap();
    assert!(first.iter().all(|(v, _)| *v == 1003), "{first:?}");
    let victim = p.worker_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Tasks go on; the replacement ran the initializer on the same arguments.
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let again = p.map_archived(init_value, 0..40u32).unwrap();
        assert!(again.iter().all(|(v, _)| *v == 1003), "{again:?}");
        seen.extend(again.iter().map(|(_, pid)| *pid));
        if p.stats().workers_died >= 1 && p.worker_pids().iter().all(|pid| seen.contains(pid)) {
            break;
        }
    }
    assert!(p.stats().workers_died >= 1);
    assert!(!p.worker_pids().contains(&victim));
    assert!(p.worker_pids().iter().all(|pid| seen.contains(pid)), "the replacement ran tasks with the arguments");
}

#[test]
fn initializer_arguments_reach_forked_workers() {
    settle_process_setup();
    let child = common::spawn(|| {
        let built = PoolBuilder::new()
            .workers(2)
            .start_method(StartMethod::Fork)
            .initializer_with(remember, ("forked".to_string(), 7u64))
            .build();
        let Ok(p) = built else { return 2 };
        match p.map_archived(init_value, 0..20u32) {
            Ok(v) if v.iter().all(|(x, pid)| *x == 13 && *pid != std::process::id()) => 0,
            _ => 3,
        }
    });
    child.join(LONG);
}

#[test]
fn initializer_arguments_larger_than_max_value_bytes_fail_the_build() {
    let built = PoolBuilder::new()
        .workers(1)
        .slot_bytes(512)
        .max_value_bytes(1024)
        .initializer_with(remember, ("x".repeat(4000), 1u64))
        .build();
    match built {
        Err(e @ PoolError::ArchiveTooLarge { what: "initializer arguments", needed, available }) => {
            assert!(needed >= 4000 && available == 1024, "{e}");
            assert!(e.to_string().contains("max_value_bytes"), "{e}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

static BIG_INIT: AtomicU64 = AtomicU64::new(0);

/// 2 MiB of initializer arguments: remembers their length and a hash of every element.
fn remember_big(args: &ArchivedVec<Archived<u64>>) {
    let h = args.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ v.to_native()).wrapping_mul(0x0100_0000_01b3));
    BIG_INIT.store(h ^ args.len() as u64, Ordering::SeqCst);
}

fn big_init_value(_: &Archived<u32>) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(3));
    (BIG_INIT.load(Ordering::SeqCst), std::process::id())
}

const BIG_INIT_LEN: usize = 1 << 18;

fn big_init_expected() -> u64 {
    let args = big_ctx(5, BIG_INIT_LEN);
    args.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &v| (h ^ v).wrapping_mul(0x0100_0000_01b3)) ^ BIG_INIT_LEN as u64
}

/// A pool whose initializer gets 2 MiB of arguments (16 KiB slots): every worker, and the
/// replacement of one killed, ran it on exactly those arguments.
fn check_big_init_args(method: StartMethod) -> Result<(), String> {
    let p = PoolBuilder::new()
        .workers(2)
        .chunk_size(1)
        .start_method(method)
        .initializer_with(remember_big, big_ctx(5, BIG_INIT_LEN))
        .build()
        .map_err(|e| e.to_string())?;
    let want = big_init_expected();
    let first = p.map_archived(big_init_value, 0..40u32).map_err(|e| e.to_string())?;
    if first.iter().any(|(v, _)| *v != want) {
        return Err(format!("the initializer did not get the arguments: {first:?}"));
    }
    if p.stats().spilled_contexts != 1 {
        return Err(format!("{:?}", p.stats()));
    }
    let victim = p.worker_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| e.to_string())?;
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let again = p.map_archived(big_init_value, 0..40u32).map_err(|e| e.to_string())?;
        if again.iter().any(|(v, _)| *v != want) {
            return Err(format!("a worker did not get the arguments: {again:?}"));
        }
        seen.extend(again.iter().map(|(_, pid)| *pid));
        if p.stats().workers_died >= 1 && p.worker_pids().iter().all(|pid| seen.contains(pid)) {
            break;
        }
    }
    let s = p.stats();
    if s.workers_died < 1 || p.worker_pids().contains(&victim) || !p.worker_pids().iter().all(|pid| seen.contains(pid))
    {
        return Err(format!("the replacement ran no task with the arguments: {s:?}"));
    }
    Ok(())
}

#[test]
fn initializer_arguments_larger_than_a_slot_reach_every_spawned_worker_and_replacements() {
    check_big_init_args(StartMethod::Spawn).unwrap();
}

#[test]
fn initializer_arguments_larger_than_a_slot_reach_every_forked_worker_and_replacements() {
    settle_process_setup();
    let child = common::spawn(|| match check_big_init_args(StartMethod::Fork) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            3
        }
    });
    child.join(LONG);
}

// ----- sizes ------------------------------------------------------------------------------------

fn text_of_len(n: &Archived<u32>) -> String {
    "z".repeat(n.to_native() as usize)
}

fn len_of(s: &ArchivedString) -> u64 {
    s.len() as u64
}

/// Values larger than the pool's limit (here a slot: smaller ones would go through spill files)
/// fail alone, naming both sizes.
#[test]
fn oversized_inputs_and_outputs_fail_alone_with_both_sizes() {
    let p = PoolBuilder::new().workers(2).slot_bytes(4096).max_value_bytes(4096).build().unwrap();
    let inputs: Vec<String> = (0..100).map(|i| if i == 37 { "big".repeat(3000) } else { format!("s{i}") }).collect();
    match p.map_archived(len_of, inputs.clone()) {
        Err(MapError::Tasks(t)) => {
            assert_eq!(t.failed(), 1);
            for (i, r) in t.results().iter().enumerate() {
                match (i, r) {
                    (37, Err(TaskError::TooLarge { what: "input", needed, available })) => {
                        assert!(*needed >= 9000 && *available == 4096, "{needed} {available}");
                        let text = r.as_ref().unwrap_err().to_string();
                        assert!(text.contains("max_value_bytes") && text.contains("slot_bytes"), "{text}");
                    }
                    (i, Ok(n)) => assert_eq!(*n, inputs[i].len() as u64),
                    other => panic!("{other:?}"),
                }
            }
        }
        other => panic!("{other:?}"),
    }
    let sizes: Vec<u32> = (0..100).map(|i| if i == 50 { 10_000 } else { i * 10 }).collect();
    match p.map_archived(text_of_len, sizes.clone()) {
        Err(MapError::Tasks(t)) => {
            assert_eq!(t.failed(), 1);
            for (i, r) in t.results().iter().enumerate() {
                match (i, r) {
                    (50, Err(TaskError::TooLarge { what: "output", needed, available })) => {
                        assert!(*needed >= 10_000 && *available == 4096, "{needed} {available}");
                    }
                    (i, Ok(s)) => assert_eq!(s.len(), sizes[i] as usize),
                    other => panic!("{other:?}"),
                }
            }
        }
        other => panic!("{other:?}"),
    }
    // A submitted input too large: its future fails, nothing hangs.
    let f = p.submit_archived(len_of, "q".repeat(8000)).unwrap();
    assert!(matches!(f.wait_timeout(LONG), Err(ringpool::pool::WaitError::Task(TaskError::TooLarge { .. }))));
}

#[test]
fn outputs_that_overflow_their_chunk_are_dispatched_again_and_come_back_exact() {
    let p = PoolBuilder::new().workers(2).slot_bytes(4096).build().unwrap();
    // Small inputs, outputs from nothing to most of a slot: chunks overflow all the time.
    let mut rng = common::Rng(0x9E37_79B9_7F4A_7C15);
    let sizes: Vec<u32> =
        (0..3000).map(|_| if rng.below(10) == 0 { rng.below(3500) as u32 } else { rng.below(100) as u32 }).collect();
    let got = p.map_archived(text_of_len, sizes.clone()).unwrap();
    assert!(p.stats().redispatched > 0, "outputs overflowed their chunks: {:?}", p.stats());
    assert_eq!(got.len(), sizes.len());
    assert!(got.iter().zip(&sizes).all(|(s, &n)| s.len() == n as usize && s.bytes().all(|b| b == b'z')));
    let unordered: HashSet<usize> = p
        .imap_unordered_archived(text_of_len, sizes.clone())
        .unwrap()
        .map(|(i, r)| {
            assert_eq!(r.unwrap().len(), sizes[i] as usize);
            i
        })
        .collect();
    assert_eq!(unordered.len(), sizes.len());
}

// ----- hostile workers --------------------------------------------------------------------------

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv)]
struct Checked {
    ok: bool,
    name: String,
}

fn checked(s: &ArchivedString) -> Checked {
    Checked { ok: true, name: s.as_str().to_owned() }
}

#[test]
fn corrupted_outputs_fail_their_items_and_the_parent_lives() {
    for what in [SCRIBBLE_OUTPUTS, SCRIBBLE_TABLE, SCRIBBLE_OUTPUTS | SCRIBBLE_TABLE] {
        let p = PoolBuilder::new().workers(2).fault_plan(FaultPlan::none().scribble(what)).build().unwrap();
        let inputs: Vec<String> = (0..200).map(|i| format!("name number {i} of many")).collect();
        match p.map_archived(checked, inputs) {
            Err(MapError::Tasks(t)) => {
                assert_eq!(t.failed(), 200);
                assert!(
                    t.results().iter().all(|r| matches!(r, Err(TaskError::InvalidOutput { .. }))),
                    "{:?}",
                    t.first_error()
                );
            }
            other => panic!("scribble {what}: {other:?}"),
        }
        let f = p.submit_archived(checked, "one".to_string()).unwrap();
        assert!(matches!(f.wait_timeout(LONG), Err(ringpool::pool::WaitError::Task(TaskError::InvalidOutput { .. }))));
    }
}

#[test]
fn corrupted_inputs_are_refused_by_the_worker_and_fail_their_items() {
    let p = PoolBuilder::new().workers(2).fault_plan(FaultPlan::none().scribble(SCRIBBLE_INPUTS)).build().unwrap();
    let inputs: Vec<String> = (0..100).map(|i| format!("a name long enough to live out of line {i}")).collect();
    match p.map_archived(checked, inputs) {
        Err(MapError::Tasks(t)) => {
            assert_eq!(t.failed(), 100);
            for r in t.results() {
                match r {
                    Err(TaskError::InvalidInput { reason }) => {
                        assert!(reason.contains("not a valid archive"), "{reason}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "tokio")]
#[test]
fn an_archived_future_can_be_awaited() {
    let p = pool(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let got = rt.block_on(async { p.submit_archived(file_stats, "x/y".to_string()).unwrap().await }).unwrap();
    assert_eq!(got.upper, "X/Y");
}

#[test]
fn workers_killed_mid_map_lose_and_duplicate_nothing() {
    let plan = FaultPlan::none().die(FaultPoint::Ran, 30).die(FaultPoint::Committed, 20).die(FaultPoint::Claimed, 20);
    let p = PoolBuilder::new().workers(3).chunk_size(8).fault_plan(plan).build().unwrap();
    let inputs: Vec<String> = (0..3000).map(|i| format!("item-{i}")).collect();
    let results = match p.map_archived(checked, inputs.clone()) {
        Ok(v) => v.into_iter().map(Ok).collect(),
        Err(MapError::Tasks(t)) => t.into_results(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(results.len(), inputs.len());
    let mut died = 0;
    for (r, input) in results.iter().zip(&inputs) {
        match r {
            Ok(c) => assert_eq!(&c.name, input),
            Err(TaskError::WorkerDied { .. }) => died += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(p.stats().workers_died > 0);
    assert!(died > 0, "some tasks died with their workers");
    assert_eq!(p.stats().completed + p.stats().failed, inputs.len() as u64);
}

#[test]
fn a_task_that_panics_fails_alone() {
    fn picky(s: &ArchivedString) -> u32 {
        assert!(s.as_str() != "bad", "refusing {s}");
        s.len() as u32
    }
    let p = pool(1);
    match p.map_archived(picky, ["ok".to_string(), "bad".to_string(), "fine".to_string()]) {
        Err(MapError::Tasks(t)) => {
            let r = t.results();
            assert_eq!(r[0], Ok(2));
            assert!(matches!(&r[1], Err(TaskError::Panicked { message, .. }) if message.contains("refusing bad")));
            assert_eq!(r[2], Ok(4));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nothing_left_behind() {
    {
        let p = pool(2);
        p.map_archived(len_of, vec!["a".to_string(); 10]).unwrap();
    }
    assert!(common::leftovers().is_empty());
}

/// Outputs of 3000 bytes, or the input's length as text.
fn grow(s: &ArchivedString) -> String {
    if s.as_str() == "o" { "o".repeat(3000) } else { s.len().to_string() }
}

/// An input that takes most of a slot still runs (its output gets the rest), even after large
/// outputs of the same map taught the pool to leave room for outputs.
#[test]
fn an_input_filling_most_of_a_slot_runs_after_large_outputs() {
    let p = PoolBuilder::new().workers(1).chunk_size(1).slots(2).slot_bytes(4096).build().unwrap();
    let mut inputs: Vec<String> = vec!["o".to_string(); 6];
    inputs.extend(["w".repeat(3500), "short".into(), "v".repeat(3900)]);
    let got = p.map_archived(grow, inputs).unwrap();
    assert!(got[..6].iter().all(|s| s.len() == 3000));
    assert_eq!(got[6..], ["3500", "5", "3900"]);
}

// ----- values larger than a slot: the spill area ------------------------------------------------

const BIG: usize = 10 << 20;

/// A `len`-byte text that differs with `seed` all along (so a wrong byte anywhere changes its hash).
fn big_text(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn len_and_hash(s: &ArchivedString) -> (u64, u64) {
    (s.len() as u64, fnv(s.as_bytes()))
}

/// A 10 MB text for inputs from 1000 on (seeded by the input), a short one below.
fn make_text(n: &Archived<u32>) -> String {
    let n = n.to_native();
    if n >= 1000 { big_text(u64::from(n), BIG) } else { format!("small {n}") }
}

/// As `make_text`, as bytes.
fn make_bytes(n: &Archived<u32>) -> Vec<u8> {
    make_text(n).into_bytes()
}

fn expected_text(n: u32) -> String {
    if n >= 1000 { big_text(u64::from(n), BIG) } else { format!("small {n}") }
}

/// Large inputs and outputs through one pool: exact results in order, through the eager, lazy and
/// single forms; answers how many values it spilled each way (or what went wrong).
fn check_spills(p: &Pool) -> Result<(u64, u64), String> {
    let inputs: Vec<String> =
        (0..12u64).map(|i| if i % 4 == 1 { big_text(i, BIG) } else { format!("small input {i}") }).collect();
    let expect: Vec<(u64, u64)> = inputs.iter().map(|s| (s.len() as u64, fnv(s.as_bytes()))).collect();
    let got = p.map_archived(len_and_hash, inputs.clone()).map_err(|e| format!("inputs: {e}"))?;
    if got != expect {
        return Err("large inputs came through wrong".into());
    }
    let ns: Vec<u32> = vec![0, 1001, 1, 2, 1002, 3, 4, 5, 1003, 6];
    let texts = p.map_archived(make_text, ns.clone()).map_err(|e| format!("outputs: {e}"))?;
    if texts.iter().zip(&ns).any(|(t, &n)| *t != expected_text(n)) || texts.len() != ns.len() {
        return Err("large outputs came through wrong".into());
    }
    let bytes = p.map_archived(make_bytes, ns.clone()).map_err(|e| format!("byte outputs: {e}"))?;
    if bytes.iter().zip(&ns).any(|(b, &n)| *b != expected_text(n).into_bytes()) {
        return Err("large byte outputs came through wrong".into());
    }
    let mut seen = HashSet::new();
    for (i, r) in p.imap_unordered_archived(make_text, ns.clone()).map_err(|e| e.to_string())? {
        let t = r.map_err(|e| format!("unordered: {e}"))?;
        if t != expected_text(ns[i]) || !seen.insert(i) {
            return Err(format!("unordered item {i} came through wrong"));
        }
    }
    if seen.len() != ns.len() {
        return Err("unordered results lost".into());
    }
    let f = p.submit_archived(make_text, 1007u32).map_err(|e| e.to_string())?;
    if f.wait_timeout(LONG).map_err(|e| format!("future: {e}"))? != expected_text(1007) {
        return Err("a submitted large output came through wrong".into());
    }
    // A submitted large input (it waits for a slot as a retry does) and a large output back.
    fn echo_upper(s: &ArchivedString) -> String {
        s.to_uppercase()
    }
    let big = big_text(99, BIG);
    let back = p.apply_archived(echo_upper, big.clone()).map_err(|e| format!("apply: {e}"))?;
    if back != big.to_uppercase() {
        return Err("a large input and output through apply came through wrong".into());
    }
    let s = p.stats();
    Ok((s.spilled_inputs, s.spilled_outputs))
}

#[test]
fn values_larger_than_a_slot_cross_through_spill_files_spawned() {
    let p = PoolBuilder::new().workers(2).start_method(StartMethod::Spawn).build().unwrap();
    let (inputs, outputs) = check_spills(&p).unwrap();
    // 3 large inputs of the map, 1 through apply; 3 + 3 + 3 from the maps, 1 submitted, 1 applied.
    assert_eq!((inputs, outputs), (4, 11), "{:?}", p.stats());
    assert_eq!(p.stats().failed, 0);
}

#[test]
fn values_larger_than_a_slot_cross_through_spill_files_forked() {
    settle_process_setup();
    let child = common::spawn(|| {
        let Ok(p) = PoolBuilder::new().workers(2).start_method(StartMethod::Fork).build() else {
            return 2;
        };
        match check_spills(&p) {
            Ok((4, 11)) => 0,
            Ok(counts) => {
                eprintln!("spilled {counts:?}");
                3
            }
            Err(e) => {
                eprintln!("{e}");
                4
            }
        }
    });
    child.join(LONG);
}

/// The archive's length of `s` (what the pool compares with its limit).
fn archived_len(s: &String) -> usize {
    rkyv::to_bytes::<rkyv::rancor::Error>(s).unwrap().len()
}

#[test]
fn values_larger_than_max_value_bytes_fail_alone_naming_both_sizes() {
    const LIMIT: usize = 1 << 20;
    let p = PoolBuilder::new().workers(2).max_value_bytes(LIMIT).build().unwrap();
    // Strings of this length archive to exactly the limit; one byte more goes past it.
    let at = LIMIT - 8;
    assert_eq!(archived_len(&"x".repeat(at)), LIMIT);
    assert!(archived_len(&"x".repeat(at + 1)) > LIMIT);
    let inputs: Vec<String> =
        vec!["a".into(), "b".repeat(2 << 20), "c".into(), "d".repeat(at), "e".repeat(at + 1), "f".repeat(50_000)];
    match p.map_archived(len_of, inputs.clone()) {
        Err(MapError::Tasks(t)) => {
            assert_eq!(t.failed(), 2);
            for (i, r) in t.results().iter().enumerate() {
                match (i, r) {
                    (1 | 4, Err(TaskError::TooLarge { what: "input", needed, available })) => {
                        assert_eq!((*needed, *available), (archived_len(&inputs[i]), LIMIT));
                        assert!(r.as_ref().unwrap_err().to_string().contains(&needed.to_string()));
                    }
                    (0 | 2 | 3 | 5, Ok(n)) => assert_eq!(*n, inputs[i].len() as u64),
                    other => panic!("{other:?}"),
                }
            }
        }
        other => panic!("{other:?}"),
    }
    let sizes: Vec<u32> = vec![5, 2 << 20, 7, at as u32, at as u32 + 1, 50_000];
    match p.map_archived(text_of_len, sizes.clone()) {
        Err(MapError::Tasks(t)) => {
            assert_eq!(t.failed(), 2);
            for (i, r) in t.results().iter().enumerate() {
                match (i, r) {
                    (1 | 4, Err(TaskError::TooLarge { what: "output", needed, available })) => {
                        assert_eq!((*needed, *available), (archived_len(&"z".repeat(sizes[i] as usize)), LIMIT));
                    }
                    (0 | 2 | 3 | 5, Ok(s)) => assert!(s.len() == sizes[i] as usize && s.bytes().all(|b| b == b'z')),
                    other => panic!("{other:?}"),
                }
            }
        }
        other => panic!("{other:?}"),
    }
    let s = p.stats();
    assert_eq!((s.spilled_inputs, s.spilled_outputs), (2, 2), "{s:?}");
    // A submitted one too large fails its future; one at the limit comes back.
    let f = p.submit_archived(len_of, "q".repeat(at + 1)).unwrap();
    match f.wait_timeout(LONG) {
        Err(ringpool::pool::WaitError::Task(TaskError::TooLarge { what: "input", available: LIMIT, .. })) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(p.apply_archived(len_of, "q".repeat(at)).unwrap(), at as u64);
    // The limit is checked at build.
    for bad in [1000, (u32::MAX as usize) + 1] {
        match PoolBuilder::new().workers(1).max_value_bytes(bad).build() {
            Err(PoolError::OutOfRange { setting: "max_value_bytes", .. }) => {}
            other => panic!("{bad}: {:?}", other.map(|_| ())),
        }
    }
}

/// A hostile worker points its spilled outputs' table entries elsewhere (stdin, no descriptor, a
/// length past the limit, a length past the file's end): those items fail, the parent lives, and
/// the small outputs of the same chunks are delivered.
#[test]
fn scribbled_spilled_outputs_fail_their_items_and_the_parent_lives() {
    let p = PoolBuilder::new()
        .workers(2)
        .chunk_size(2)
        .fault_plan(FaultPlan::none().scribble(SCRIBBLE_SPILLED))
        .build()
        .unwrap();
    let sizes: Vec<u32> = (0..16).map(|i| if i % 2 == 0 { 200_000 + i } else { i }).collect();
    let results = match p.map_archived(text_of_len, sizes.clone()) {
        Err(MapError::Tasks(t)) => t.into_results(),
        other => panic!("{other:?}"),
    };
    let (mut invalid, mut too_large) = (0, 0);
    for (r, &n) in results.iter().zip(&sizes) {
        match r {
            Ok(s) if n < 1000 => assert_eq!(s.len(), n as usize),
            Err(TaskError::InvalidOutput { reason }) if n >= 1000 => {
                assert!(reason.contains("spill"), "{reason}");
                invalid += 1;
            }
            Err(TaskError::TooLarge { what: "output", needed, .. }) if n >= 1000 => {
                assert_eq!(*needed, u32::MAX as usize);
                too_large += 1;
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    assert_eq!(invalid + too_large, 8);
    assert!(invalid > 0 && too_large > 0, "{invalid} {too_large}");
    assert_eq!(p.stats().spilled_outputs, 0);
    assert_eq!(p.map_archived(len_of, vec!["still here".to_string()]).unwrap(), [10]);
}

/// Workers die after finishing chunks whose outputs are spilled, before the parent read them
/// (before or after announcing them): those items run again; none is lost or duplicated.
#[test]
fn workers_killed_holding_spilled_outputs_lose_nothing() {
    let plan = FaultPlan::none().die(FaultPoint::Done, 300).die(FaultPoint::Received, 100);
    let p = PoolBuilder::new().workers(2).chunk_size(3).fault_plan(plan).build().unwrap();
    let sizes: Vec<u32> = (0..40).map(|i| if i % 3 == 0 { i } else { 100_000 + i * 1000 }).collect();
    let mut seen = HashSet::new();
    for (i, r) in p.imap_unordered_archived(text_of_len, sizes.clone()).unwrap() {
        let s = r.unwrap_or_else(|e| panic!("item {i}: {e}"));
        assert!(s.len() == sizes[i] as usize && s.bytes().all(|b| b == b'z'), "item {i}");
        assert!(seen.insert(i), "item {i} twice");
    }
    assert_eq!(seen.len(), sizes.len());
    let s = p.stats();
    assert!(s.workers_died > 0, "{s:?}");
    assert!(s.redispatched > 0, "spilled outputs of dead workers went again: {s:?}");
    assert_eq!(s.completed, sizes.len() as u64, "{s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
}

/// A worker that retires after each task waits for the parent to read its spilled output before
/// it leaves: nothing runs twice for it.
#[test]
fn retiring_workers_wait_for_their_spilled_outputs_to_be_read() {
    let p = PoolBuilder::new().workers(2).chunk_size(1).max_tasks_per_worker(1).build().unwrap();
    let ns: Vec<u32> = vec![1001, 2, 1002, 1003, 3];
    let got = p.map_archived(make_text, ns.clone()).unwrap();
    assert!(got.iter().zip(&ns).all(|(t, &n)| *t == expected_text(n)));
    let s = p.stats();
    assert_eq!((s.spilled_outputs, s.redispatched), (3, 0), "{s:?}");
    assert!(s.workers_retired >= 3, "{s:?}");
}

/// Input `"wait:<path>|..."`: creates `<path>`, then waits for ever (until its worker is killed);
/// any other input: its length.
fn wait_or_len(s: &ArchivedString) -> u64 {
    if let Some(rest) = s.as_str().strip_prefix("wait:") {
        let path = rest.split('|').next().unwrap_or_default();
        std::fs::write(path, b"started").unwrap();
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    s.len() as u64
}

/// The spill files a process holds open.
fn spill_files_of(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return vec![] };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.contains("ringpool-spill"))
        .collect()
}

/// A replacement worker forked while the parent holds spilled inputs closes its copies of them
/// (else they would live as long as it does).
#[test]
fn a_forked_replacement_does_not_keep_the_parents_spill_files() {
    settle_process_setup();
    let marker = std::env::temp_dir().join(common::unique_name("spill-started"));
    let child = common::spawn(|| {
        let Ok(p) = PoolBuilder::new().workers(1).start_method(StartMethod::Fork).build() else {
            return 2;
        };
        let stuck = format!("wait:{}|{}", marker.display(), "w".repeat(100_000));
        let Ok(a) = p.submit_archived(wait_or_len, stuck) else { return 3 };
        let Ok(b) = p.submit_archived(wait_or_len, "b".repeat(200_000)) else { return 4 };
        let deadline = std::time::Instant::now() + LONG;
        while !marker.exists() {
            if std::time::Instant::now() > deadline {
                return 5;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // The worker runs `a`; `b`'s input waits in its spill file. Kill the worker: its
        // replacement is forked while the parent holds that file.
        let victim = p.worker_pids()[0];
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL);
        if !matches!(a.wait_timeout(LONG), Err(ringpool::pool::WaitError::Task(TaskError::WorkerDied { .. }))) {
            return 6;
        }
        if b.wait_timeout(LONG).ok() != Some(200_000) {
            return 7;
        }
        let s = p.stats();
        if s.spilled_inputs != 2 || s.workers_died != 1 {
            eprintln!("{s:?}");
            return 8;
        }
        for w in p.worker_pids() {
            let held = spill_files_of(w);
            if !held.is_empty() {
                eprintln!("worker {w} holds {held:?}");
                return 9;
            }
        }
        0
    });
    child.join(LONG);
    let _ = std::fs::remove_file(&marker);
}
