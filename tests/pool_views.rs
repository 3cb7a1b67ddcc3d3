//! Archived pool results read in place ([`OutputView`]): `map_views`, `imap_archived(..).views()`,
//! `imap_unordered_archived(..).views()`, `submit_view` with `as_completed`. Each view must agree
//! with the owned result of the same task, outlive the pool that made it (it reads the parent's
//! copy, not the slot), cross threads, and a corrupted output must fail its item with an error.
//!
//! The harness runs threads, so pools built here spawn their workers (re-executing this binary).

use std::collections::HashSet;
use std::time::Duration;

use ringpool::pool::{FaultPlan, MapError, OutputView, SCRIBBLE_OUTPUTS, SCRIBBLE_TABLE, TaskError, as_completed};
use ringpool::ring::archive::rkyv::{self, string::ArchivedString};
use ringpool::{Pool, PoolBuilder};

const LONG: Duration = Duration::from_secs(120);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = rkyv, derive(Debug))]
struct Word {
    text: String,
    len: u64,
    vowels: Vec<u8>,
}

fn word(s: &ArchivedString) -> Word {
    Word {
        text: s.as_str().to_uppercase(),
        len: s.len() as u64,
        vowels: s.bytes().filter(|b| b"aeiou".contains(b)).collect(),
    }
}

fn input(i: usize) -> String {
    // 1 to 300 bytes: some chunks hold many items, some outputs overflow their chunk.
    let n = 1 + (i * 7919) % 300;
    (0..n).map(|j| char::from(b'a' + ((i + 3 * j) % 26) as u8)).collect()
}

fn expected(i: usize) -> Word {
    let s = input(i);
    Word { text: s.to_uppercase(), len: s.len() as u64, vowels: s.bytes().filter(|b| b"aeiou".contains(b)).collect() }
}

/// A view agrees with the owned value field by field, read in place.
fn same(view: &OutputView<Word>, want: &Word) -> bool {
    view.text.as_str() == want.text && view.len.to_native() == want.len && view.vowels.as_slice() == want.vowels
}

fn pool(workers: usize) -> Pool {
    PoolBuilder::new().workers(workers).build().expect("a pool")
}

#[test]
fn map_views_agree_with_owned_results_and_outlive_the_pool() {
    let n = 5000;
    let p = pool(2);
    let owned = p.map_archived(word, (0..n).map(input)).unwrap();
    let views = p.map_views(word, (0..n).map(input)).unwrap();
    assert_eq!(views.len(), n);
    drop(p);
    // The pool and its shared memory are gone: the views read the parent's own copy.
    for (i, (v, o)) in views.iter().zip(&owned).enumerate() {
        assert!(same(v, o), "item {i}: {v:?} vs {o:?}");
        assert_eq!(&v.deserialize().unwrap(), o);
        assert_eq!(o, &expected(i));
        assert_eq!(v.bytes().as_ptr() as usize % 16, 0, "an archive starts 16-aligned");
    }
    // Views cross threads (OutputView<Word> is Send + Sync).
    let total: u64 = std::thread::scope(|s| {
        let (a, b) = views.split_at(n / 2);
        let ha = s.spawn(move || a.iter().map(|v| v.len.to_native()).sum::<u64>());
        let hb = s.spawn(move || b.iter().map(|v| v.len.to_native()).sum::<u64>());
        ha.join().unwrap() + hb.join().unwrap()
    });
    assert_eq!(total, (0..n).map(|i| input(i).len() as u64).sum::<u64>());
}

#[test]
fn imap_views_come_in_order_and_unordered_views_once_each() {
    let n = 3000;
    let p = pool(2);
    let mut count = 0;
    for (i, r) in p.imap_archived(word, (0..n).map(input)).unwrap().views().enumerate() {
        let v = r.unwrap();
        assert!(same(&v, &expected(i)), "item {i}");
        count += 1;
    }
    assert_eq!(count, n);
    let mut seen = HashSet::new();
    for (i, r) in p.imap_unordered_archived(word, (0..n).map(input)).unwrap().views() {
        assert!(same(&r.unwrap(), &expected(i)), "item {i}");
        assert!(seen.insert(i), "item {i} twice");
    }
    assert_eq!(seen.len(), n);
    // A context: imap_with(..).views().
    fn with_suffix(suffix: &ArchivedString, s: &ArchivedString) -> String {
        format!("{s}{suffix}")
    }
    let got: Vec<String> = p
        .imap_with(&"!".to_string(), with_suffix, (0..50).map(input))
        .unwrap()
        .views()
        .map(|r| r.unwrap().as_str().to_owned())
        .collect();
    assert_eq!(got, (0..50).map(|i| format!("{}!", input(i))).collect::<Vec<_>>());
}

#[test]
fn submitted_views_through_as_completed() {
    let p = pool(2);
    let futures: Vec<_> = (0..64).map(|i| p.submit_view(word, input(i)).unwrap()).collect();
    let ids: Vec<u64> = futures.iter().map(|f| f.id()).collect();
    let mut seen = HashSet::new();
    for f in as_completed(futures) {
        let i = ids.iter().position(|&id| id == f.id()).unwrap();
        let v = f.wait_timeout(LONG).unwrap();
        assert!(same(&v, &expected(i)), "item {i}");
        assert!(seen.insert(i));
    }
    assert_eq!(seen.len(), 64);
}

#[test]
fn corrupted_outputs_fail_their_views() {
    for what in [SCRIBBLE_OUTPUTS, SCRIBBLE_TABLE] {
        let p = PoolBuilder::new().workers(2).fault_plan(FaultPlan::none().scribble(what)).build().unwrap();
        match p.map_views(word, (0..200).map(input)) {
            Err(MapError::Tasks(t)) => {
                assert_eq!(t.failed(), 200);
                assert!(t.results().iter().all(|r| matches!(r, Err(TaskError::InvalidOutput { .. }))));
            }
            other => panic!("scribble {what}: {:?}", other.map(|v| v.len())),
        }
        for r in p.imap_archived(word, (0..20).map(input)).unwrap().views() {
            assert!(matches!(r, Err(TaskError::InvalidOutput { .. })), "scribble {what}");
        }
        let f = p.submit_view(word, "one".to_string()).unwrap();
        assert!(matches!(f.wait_timeout(LONG), Err(ringpool::pool::WaitError::Task(TaskError::InvalidOutput { .. }))));
    }
}

fn big_or_small(n: &ringpool::ring::archive::rkyv::Archived<u32>) -> String {
    // Every third output is larger than a slot (16 KiB by default): it crosses in a spill file.
    let n = n.to_native() as usize;
    if n % 3 == 0 { "v".repeat(100_000 + n) } else { "s".repeat(n) }
}

#[test]
fn views_of_outputs_larger_than_a_slot() {
    let p = pool(2);
    let views = p.map_views(big_or_small, 0..30u32).unwrap();
    assert!(p.stats().spilled_outputs >= 10, "{:?}", p.stats());
    for (n, v) in views.iter().enumerate() {
        let want = if n % 3 == 0 { "v".repeat(100_000 + n) } else { "s".repeat(n) };
        assert_eq!(v.as_str(), want, "item {n}");
    }
}
