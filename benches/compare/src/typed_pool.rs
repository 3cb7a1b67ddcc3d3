//! **Typed pool maps**: a pool mapping a function over owned, non-`Pod` data and returning
//! structs with heap fields, results checked in the parent.
//!
//! - **strings**: `items` strings of 16 to 200 bytes ([`make_string`]); each task returns
//!   [`StrOut`] `{ len, count_a, head: String }` (the count of `a`s, the first 8 bytes uppercased).
//! - **vectors**: `items` `Vec<f64>` of 1000 ([`make_vec`]); each task returns [`VecOut`]
//!   `{ sum, blocks: Vec<f64> }` (the sum, and the sums of the ten blocks of 100).
//!
//! Peers (each in a fresh child process, the pool started and warmed up before the clock starts;
//! only the map is timed; the inputs are made before and the results checked after, against the
//! same function run in the parent):
//!
//! - **procspawn 1.x** `Pool::new(2)`, `pool.spawn(item, task)` per item (serde through
//!   ipc-channel, the crate's way), at most 256 tasks in flight (each holds two channels: more
//!   would run out of descriptors), joined in order.
//! - **ringpool** `Pool::map_archived(task, items)`: each item rkyv-archived into the pool's
//!   shared memory, the task reads it in place as `&Archived<T>`, the result comes back archived
//!   and is deserialized in the parent.
//! - **Python** `Pool(2).map(task, items)` (fork, default chunk size): `python/pool_bench.py`
//!   `strings` and `vecs`, the same data and tasks.

use std::time::Instant;

use ringpool::ring::archive::rkyv;
use serde::{Deserialize, Serialize};

use crate::harness::Result;

/// What a string task returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct StrOut {
    /// The string's length in bytes.
    pub len: u64,
    /// How many `a`s it holds.
    pub count_a: u64,
    /// Its first 8 bytes, uppercased.
    pub head: String,
}

/// What a vector task returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct VecOut {
    /// The sum of the 1000 values, left to right.
    pub sum: f64,
    /// The sums of the ten blocks of 100, left to right.
    pub blocks: Vec<f64>,
}

/// String `i`: 16 to 200 lowercase ASCII letters (`Python: pool_bench.make_string`).
pub fn make_string(i: u64) -> String {
    let n = 16 + (i * 7919 % 185) as usize;
    (0..n as u64).map(|j| char::from(b'a' + ((i + 5 * j) % 26) as u8)).collect()
}

/// Vector `i`: 1000 values (`Python: pool_bench.make_vec`).
pub fn make_vec(i: u64) -> Vec<f64> {
    (0..1000u64).map(|j| ((i * 1000 + j) % 997) as f64 * 0.5 + 0.25).collect()
}

fn str_out(s: &str) -> StrOut {
    let head: String = s.chars().take(8).collect();
    StrOut { len: s.len() as u64, count_a: s.bytes().filter(|&b| b == b'a').count() as u64, head: head.to_uppercase() }
}

fn vec_out(v: impl Iterator<Item = f64>) -> VecOut {
    let values: Vec<f64> = v.collect();
    let sum = values.iter().fold(0.0, |a, &x| a + x);
    let blocks = values.chunks(100).map(|c| c.iter().fold(0.0, |a, &x| a + x)).collect();
    VecOut { sum, blocks }
}

/// The string task, on an owned string (procspawn).
pub fn str_task(s: String) -> StrOut {
    str_out(&s)
}

/// The vector task, on an owned vector (procspawn).
pub fn vec_task(v: Vec<f64>) -> VecOut {
    vec_out(v.into_iter())
}

/// Checks `out` against the tasks run here; `Err` names the first wrong result.
pub fn check_strings(out: &[StrOut], items: u64) -> Result<()> {
    if out.len() as u64 != items {
        return Err(format!("{} results for {items} strings", out.len()).into());
    }
    for (i, got) in out.iter().enumerate() {
        let want = str_out(&make_string(i as u64));
        if *got != want {
            return Err(format!("string {i}: got {got:?}, expected {want:?}").into());
        }
    }
    Ok(())
}

/// Checks `out` against the tasks run here.
pub fn check_vecs(out: &[VecOut], items: u64) -> Result<()> {
    if out.len() as u64 != items {
        return Err(format!("{} results for {items} vectors", out.len()).into());
    }
    for (i, got) in out.iter().enumerate() {
        let want = vec_task(make_vec(i as u64));
        if got.sum.to_bits() != want.sum.to_bits() || got.blocks.len() != 10 || got.blocks != want.blocks {
            return Err(format!("vector {i}: got {got:?}, expected {want:?}").into());
        }
    }
    Ok(())
}

/// At most this many procspawn tasks in flight.
const IN_FLIGHT: usize = 256;

/// procspawn: `spawn` per item, joined in order; answers the results and the seconds the map took.
fn procspawn_map<A, R>(items: Vec<A>, task: fn(A) -> R) -> Result<(Vec<R>, f64)>
where
    A: Serialize + serde::de::DeserializeOwned,
    R: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let pool = procspawn::Pool::new(2).map_err(|e| format!("procspawn pool: {e}"))?;
    // Warm-up: every worker runs a task before the clock starts.
    let warm: Vec<_> = (0..8u64).map(|i| pool.spawn(i, |x: u64| x + 1)).collect();
    for h in warm {
        h.join().map_err(|e| format!("procspawn warm-up: {e}"))?;
    }
    let t = Instant::now();
    let mut out = Vec::with_capacity(items.len());
    let mut handles = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for item in items {
        if handles.len() == IN_FLIGHT {
            let h: procspawn::JoinHandle<R> = handles.pop_front().expect("full");
            out.push(h.join().map_err(|e| format!("procspawn task: {e}"))?);
        }
        handles.push_back(pool.spawn(item, task));
    }
    for h in handles {
        out.push(h.join().map_err(|e| format!("procspawn task: {e}"))?);
    }
    let secs = t.elapsed().as_secs_f64();
    pool.shutdown();
    Ok((out, secs))
}

/// procspawn over the strings: tasks/s.
pub fn procspawn_strings(items: u64) -> Result<f64> {
    let input: Vec<String> = (0..items).map(make_string).collect();
    let (out, secs) = procspawn_map(input, str_task)?;
    check_strings(&out, items)?;
    Ok(items as f64 / secs)
}

/// procspawn over the vectors: tasks/s.
pub fn procspawn_vecs(items: u64) -> Result<f64> {
    let input: Vec<Vec<f64>> = (0..items).map(make_vec).collect();
    let (out, secs) = procspawn_map(input, vec_task)?;
    check_vecs(&out, items)?;
    Ok(items as f64 / secs)
}

/// The floor of a typed map: the workers' share of the work alone, on two threads (two workers
/// on two CPUs), with no pool around it: each input archived beforehand, then per item its
/// archive validated in place, the task run, and its output archived into a buffer reused per
/// thread (as a worker writes into its slot). Nothing is handed over and nothing read back, so
/// no pool on two CPUs can map faster than this. Every output is checked afterwards, untimed.
/// Tasks/s.
fn floor<T, R>(items: &[T], task: fn(&rkyv::Archived<T>) -> R, check: impl Fn(usize, &R) -> bool) -> Result<f64>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>,
    R: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
{
    let archived: Vec<rkyv::util::AlignedVec> =
        items.iter().map(rkyv::to_bytes::<rkyv::rancor::Error>).collect::<std::result::Result<_, _>>()?;
    // Runs `task` on `part`, archiving each output; answers the bytes written (so none of it can
    // be optimized away).
    let run = |part: &[rkyv::util::AlignedVec]| -> std::result::Result<usize, rkyv::rancor::Error> {
        let mut arena = rkyv::ser::allocator::Arena::new();
        let mut out = rkyv::util::AlignedVec::with_capacity(1024);
        let mut written = 0usize;
        for bytes in part {
            let input = rkyv::access::<rkyv::Archived<T>, rkyv::rancor::Error>(bytes)?;
            let r = task(input);
            out.clear();
            out = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rkyv::rancor::Error>(&r, out, arena.acquire())?;
            written += out.len();
        }
        Ok(written)
    };
    let (a, b) = archived.split_at(archived.len() / 2);
    let t = Instant::now();
    let (mine, other) = std::thread::scope(|s| {
        let other = s.spawn(|| run(b));
        (run(a), other.join())
    });
    let written = mine? + other.map_err(|_| "a floor thread panicked")??;
    let secs = t.elapsed().as_secs_f64();
    if written == 0 && !items.is_empty() {
        return Err("the floor archived nothing".into());
    }
    for (i, bytes) in archived.iter().enumerate() {
        let input = rkyv::access::<rkyv::Archived<T>, rkyv::rancor::Error>(bytes)?;
        if !check(i, &task(input)) {
            return Err(format!("floor: item {i} gave a wrong result").into());
        }
    }
    Ok(items.len() as f64 / secs)
}

/// The strings map's floor (see [`floor`]).
pub fn floor_strings(items: u64) -> Result<f64> {
    let input: Vec<String> = (0..items).map(make_string).collect();
    floor(&input, |s| str_out(s.as_str()), |i, r| *r == str_out(&make_string(i as u64)))
}

/// The vector map's floor (see [`floor`]).
pub fn floor_vecs(items: u64) -> Result<f64> {
    let input: Vec<Vec<f64>> = (0..items).map(make_vec).collect();
    floor(&input, |v| vec_out(v.iter().map(|x| x.to_native())), |i, r| *r == vec_task(make_vec(i as u64)))
}

/// ringpool's side: `Pool::map_archived(f, items)` with `f: fn(&rkyv::Archived<T>) -> R`.
pub mod ringpool_side {
    use std::time::Instant;

    use ringpool::Pool;
    use ringpool::ring::archive::rkyv;

    use super::{StrOut, VecOut, check_strings, check_vecs, make_string, make_vec, str_out, vec_out};
    use crate::harness::Result;

    fn str_task_archived(s: &rkyv::Archived<String>) -> StrOut {
        str_out(s.as_str())
    }

    fn vec_task_archived(v: &rkyv::Archived<Vec<f64>>) -> VecOut {
        vec_out(v.iter().map(|x| x.to_native()))
    }

    /// ringpool over the strings: tasks/s.
    pub fn strings(items: u64) -> Result<f64> {
        let pool = Pool::new(2)?;
        pool.map_archived(str_task_archived, (0..64).map(make_string)).map_err(|e| e.to_string())?;
        let input: Vec<String> = (0..items).map(make_string).collect();
        let t = Instant::now();
        let out = pool.map_archived(str_task_archived, input).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        check_strings(&out, items)?;
        Ok(items as f64 / secs)
    }

    /// ringpool over the strings, each result read in place (`map_views`): tasks/s. Every view
    /// is compared, field by field in place, with the task run here.
    pub fn strings_views(items: u64) -> Result<f64> {
        let pool = Pool::new(2)?;
        pool.map_views(str_task_archived, (0..64).map(make_string)).map_err(|e| e.to_string())?;
        let input: Vec<String> = (0..items).map(make_string).collect();
        let t = Instant::now();
        let out = pool.map_views(str_task_archived, input).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        if out.len() as u64 != items {
            return Err(format!("{} results for {items} strings", out.len()).into());
        }
        for (i, got) in out.iter().enumerate() {
            let want = str_out(&make_string(i as u64));
            if got.len.to_native() != want.len || got.count_a.to_native() != want.count_a || got.head != want.head {
                return Err(format!("string {i}: got {got:?}, expected {want:?}").into());
            }
        }
        Ok(items as f64 / secs)
    }

    /// ringpool over the vectors, each result read in place (`map_views`): tasks/s.
    pub fn vecs_views(items: u64) -> Result<f64> {
        let pool = Pool::new(2)?;
        pool.map_views(vec_task_archived, (0..16).map(make_vec)).map_err(|e| e.to_string())?;
        let input: Vec<Vec<f64>> = (0..items).map(make_vec).collect();
        let t = Instant::now();
        let out = pool.map_views(vec_task_archived, input).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        if out.len() as u64 != items {
            return Err(format!("{} results for {items} vectors", out.len()).into());
        }
        for (i, got) in out.iter().enumerate() {
            let want = super::vec_task(make_vec(i as u64));
            let blocks: Vec<f64> = got.blocks.iter().map(|x| x.to_native()).collect();
            if got.sum.to_native().to_bits() != want.sum.to_bits() || blocks != want.blocks {
                return Err(format!("vector {i}: got {got:?}, expected {want:?}").into());
            }
        }
        Ok(items as f64 / secs)
    }

    /// ringpool over the vectors: tasks/s.
    pub fn vecs(items: u64) -> Result<f64> {
        let pool = Pool::new(2)?;
        pool.map_archived(vec_task_archived, (0..16).map(make_vec)).map_err(|e| e.to_string())?;
        let input: Vec<Vec<f64>> = (0..items).map(make_vec).collect();
        let t = Instant::now();
        let out = pool.map_archived(vec_task_archived, input).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        check_vecs(&out, items)?;
        Ok(items as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_has_the_promised_shape_and_checks_catch_a_wrong_result() {
        let lens: Vec<usize> = (0..2000).map(|i| make_string(i).len()).collect();
        assert!(lens.iter().all(|&n| (16..=200).contains(&n)));
        assert_eq!((lens.iter().min(), lens.iter().max()), (Some(&16), Some(&200)));
        assert_eq!(make_string(0), "afkpuzejotydinsx"); // as pool_bench.py makes it
        assert_eq!(make_vec(3).len(), 1000);
        let mut out: Vec<StrOut> = (0..10).map(|i| str_task(make_string(i))).collect();
        check_strings(&out, 10).expect("right results check");
        out[4].head.push('x');
        assert!(check_strings(&out, 10).is_err());
        let mut out: Vec<VecOut> = (0..3).map(|i| vec_task(make_vec(i))).collect();
        check_vecs(&out, 3).expect("right results check");
        out[2].blocks[9] += 1.0;
        assert!(check_vecs(&out, 3).is_err());
    }
}
