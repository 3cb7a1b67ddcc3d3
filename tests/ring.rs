//! The ring and the queue in one process: API semantics, a model check against `VecDeque`, bad
//! input and corrupted memory.

mod common;

use std::collections::VecDeque;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use common::{Rng, unique_name};
use proptest::prelude::*;
use ringpool::ring::{Broken, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use ringpool::{OpenMode, Queue, Ring, SegmentError};

fn record(len: usize) -> usize {
    8 + len.div_ceil(8) * 8
}

#[test]
fn send_and_receive_every_form() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    assert_eq!(ring.capacity(), 4096);
    assert_eq!(ring.max_message_len(), 4080);
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    tx.send(b"one").unwrap();
    tx.send(String::from("two")).unwrap();
    assert!(matches!(tx.try_send(vec![3u8; 4080]), Err(TrySendError::Full(_)))); // no room left for a maximal message
    assert_eq!(ring.len(), 2);
    assert_eq!(rx.recv().unwrap(), b"one");
    let mut buf = Vec::with_capacity(64);
    assert_eq!(rx.recv_into(&mut buf).unwrap(), 3);
    assert_eq!(buf, b"two");
    assert!(ring.is_empty());
    // The largest message fits an empty ring exactly; one byte more is refused and handed back.
    tx.try_send(vec![7u8; 4080]).unwrap();
    assert_eq!(rx.recv_with(|m| (m.len(), m.iter().all(|&b| b == 7))).unwrap(), (4080, true));
    match tx.try_send(vec![1u8; 4081]) {
        Err(TrySendError::TooLarge { msg, len, max }) => assert_eq!((msg.len(), len, max), (4081, 4081, 4080)),
        other => panic!("{other:?}"),
    }
    // Zero-length messages are messages.
    tx.send([]).unwrap();
    assert_eq!(rx.recv().unwrap(), Vec::<u8>::new());
    let stats = ring.stats();
    assert_eq!((stats.sent, stats.received, stats.senders, stats.receivers), (4, 4, 1, 1));
}

#[test]
fn disconnection_rules() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    // No sender has ever joined: waiting, not disconnected.
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    let tx = ring.sender().unwrap();
    let tx2 = tx.clone();
    tx.send(b"a").unwrap();
    drop(tx);
    tx2.send(b"b").unwrap();
    tx2.close();
    // Messages sent before the last sender left are still delivered, then Disconnected.
    assert_eq!(rx.recv().unwrap(), b"a");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"b");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Err(RecvTimeoutError::Disconnected));
    // A new sender reconnects.
    let tx = ring.sender().unwrap();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    drop(rx);
    // Every receiver gone: the send fails and hands the message back.
    match tx.send(vec![9u8; 5]) {
        Err(SendError::Disconnected(m)) => assert_eq!(m, vec![9u8; 5]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn batches_move_many_under_one_lock() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    let msgs: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().to_vec()).collect();
    // 16 bytes per record + 8 for the marker: 255 fit in 4096.
    let n = tx.try_send_many(&msgs).unwrap();
    assert_eq!(n, 255);
    assert!(matches!(tx.try_send_many(&msgs[n..]), Err(TrySendError::Full(0))));
    let mut got = Vec::new();
    assert_eq!(rx.recv_many(100, |m| got.push(m.to_vec())).unwrap(), 100);
    assert_eq!(rx.try_recv_many(1000, |m| got.push(m.to_vec())).unwrap(), 155);
    assert_eq!(got, msgs[..255]);
    assert_eq!(rx.try_recv_many(10, |_| ()), Err(TryRecvError::Empty));
}

#[test]
fn in_place_reserve_commit_and_read() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    let mut w = tx.reserve(100).unwrap();
    w.fill(0xAB);
    w[..5].copy_from_slice(b"hello");
    w.commit_len(5);
    let mut w = tx.reserve(10).unwrap();
    w.fill(1);
    drop(w); // aborted: nothing published
    let w = tx.try_reserve(3).unwrap();
    w.commit(); // whatever the slot held: 3 bytes
    {
        let r = rx.recv_in_place().unwrap();
        assert_eq!(&*r, b"hello");
    }
    assert_eq!(rx.try_recv().unwrap().len(), 3);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    // Wrap-around: in-place views of records that straddle the end are contiguous (mirror).
    for round in 0..50u32 {
        let len = 1000 + round as usize;
        let mut w = tx.reserve(len).unwrap();
        for (k, b) in w.iter_mut().enumerate() {
            *b = (k as u32 ^ round) as u8;
        }
        w.commit();
        let r = rx.recv_in_place().unwrap();
        assert!(r.iter().enumerate().all(|(k, &b)| b == (k as u32 ^ round) as u8));
    }
}

#[test]
fn typed_queue_and_type_checks() {
    let name = unique_name("queue");
    let q = Queue::<[u64; 3]>::builder().slots(8).create(&name).unwrap();
    assert_eq!(q.capacity(), 8);
    let tx = q.sender().unwrap();
    let rx = q.receiver().unwrap();
    for i in 0..8u64 {
        tx.try_send([i, i * 2, i * 3]).unwrap();
    }
    match tx.try_send([99; 3]) {
        Err(TrySendError::Full(v)) => assert_eq!(v, [99; 3]),
        other => panic!("{other:?}"),
    }
    let mut out = [[0u64; 3]; 5];
    assert_eq!(rx.recv_many(&mut out).unwrap(), 5);
    assert_eq!(out[4], [4, 8, 12]);
    tx.send_many(&[[100, 0, 0], [101, 0, 0]]).unwrap();
    assert_eq!(rx.recv().unwrap(), [5, 10, 15]);
    {
        let mut w = tx.reserve().unwrap();
        *w = [7, 7, 7];
        w.commit();
    }
    let mut seen = Vec::new();
    while let Ok(v) = rx.try_recv() {
        seen.push(v[0]);
    }
    assert_eq!(seen, [6, 7, 100, 101, 7]);
    // The same name opened with another type, as a ring, or under another tag: refused.
    let e = Queue::<[u32; 6]>::builder().open(&name).unwrap_err();
    assert!(matches!(e, SegmentError::TypeMismatch { .. }), "{e}");
    let e = Ring::builder().open(&name).unwrap_err();
    assert!(matches!(e, SegmentError::KindMismatch { .. }), "{e}");
    let e = Queue::<[u64; 3]>::builder().type_tag("other").open(&name).unwrap_err();
    assert!(matches!(e, SegmentError::TypeMismatch { .. }), "{e}");
    let same = Queue::<[u64; 3]>::builder().open(&name).unwrap();
    assert_eq!(same.capacity(), 8);
}

#[test]
fn bad_names_and_missing_segments() {
    assert!(matches!(Ring::builder().create(""), Err(SegmentError::InvalidName { .. })));
    assert!(matches!(Ring::builder().create("a/b"), Err(SegmentError::InvalidName { .. })));
    assert!(matches!(Ring::builder().create(&"n".repeat(300)), Err(SegmentError::InvalidName { .. })));
    let missing = unique_name("missing");
    assert!(matches!(Ring::builder().open(&missing), Err(SegmentError::NotFound(_))));
    assert!(matches!(Queue::<u32>::builder().open(&missing), Err(SegmentError::NotFound(_))));
    let name = unique_name("exists");
    let _r = Ring::builder().create(&name).unwrap();
    assert!(matches!(Ring::builder().create(&name), Err(SegmentError::AlreadyExists(_))));
    assert!(matches!(Ring::builder().capacity(1 << 50).anonymous(), Err(SegmentError::InvalidSize(_))));
}

/// Overwrites `len` bytes at `offset` of the named segment with random bytes from `seed`.
fn scribble(name: &str, offset: u64, len: usize, seed: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/{name}")).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut rng = Rng(seed | 1);
    let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    f.write_all(&bytes).unwrap();
}

/// A header overwritten with random bytes makes open fail with a clear error, never a crash.
#[test]
fn random_header_bytes_fail_open() {
    for seed in 0..200u64 {
        let name = unique_name("garbage-header");
        let ring = Ring::builder().capacity(4096).open_timeout(Duration::from_millis(20)).create(&name).unwrap();
        // The segment header (first page) and the ring's config right after it.
        let (offset, len) = match seed % 3 {
            0 => (0, 128),
            1 => (seed % 100, 8),
            _ => (4096, 64),
        };
        scribble(&name, offset, len, seed.wrapping_mul(0x9E37_79B9));
        let e = Ring::builder().open_timeout(Duration::from_millis(20)).open(&name);
        assert!(e.is_err(), "seed {seed}: garbage opened as a ring");
        drop(ring);
    }
}

/// The ring's shared state overwritten with random bytes while it is in use: every receive and
/// send answers (an error, or at worst a timeout), none crashes or reads out of bounds.
#[test]
fn random_ring_state_fails_operations() {
    let mut broken = 0;
    for seed in 0..200u64 {
        let name = unique_name("garbage-state");
        let ring = Ring::builder().capacity(4096).create(&name).unwrap();
        let tx = ring.sender().unwrap();
        let rx = ring.receiver().unwrap();
        for i in 0..(seed % 40) {
            let _ = tx.try_send(vec![i as u8; (i * 13 % 200) as usize]);
        }
        for _ in 0..(seed % 7) {
            let _ = rx.try_recv();
        }
        // Control block (locks, indices, members) or data region (records).
        let (offset, len) = match seed % 4 {
            0 => (4096 + 128, 1024),                   // send line, recv line, tail, head ...
            1 => (4096 + 3 * 128 + (seed % 256), 16),  // around the indices
            2 => (4096 + 12288, 4096),                 // the whole data region
            _ => (4096 + 12288 + (seed % 512) * 8, 8), // one word in the data region
        };
        scribble(&name, offset, len, seed ^ 0xDEAD_BEEF);
        for _ in 0..50 {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(_) => {}
                Err(RecvTimeoutError::Broken(_)) => {
                    broken += 1;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = tx.send_timeout(vec![1u8; 64], Duration::from_millis(20));
    }
    assert!(broken > 50, "only {broken} of 200 scribbles were reported as broken");
}

#[test]
fn corrupted_record_is_reported_not_read() {
    let name = unique_name("bad-record");
    let ring = Ring::builder().capacity(4096).create(&name).unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    tx.send(b"x").unwrap();
    // The first record's header: give it an impossible length.
    let data = 4096 + 12288;
    let mut f = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/{name}")).unwrap();
    f.seek(SeekFrom::Start(data)).unwrap();
    f.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Broken(Broken::Corrupted(_)))));
}

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    SendMany(Vec<usize>),
    Recv,
    RecvMany(usize),
    ReserveCommit(usize, usize),
    ReserveAbort(usize),
    InPlace,
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![0..40usize, 0..400usize, 3900..4100usize];
    prop_oneof![
        4 => len.clone().prop_map(Op::Send),
        1 => proptest::collection::vec(0..300usize, 1..20).prop_map(Op::SendMany),
        4 => Just(Op::Recv),
        1 => (1..20usize).prop_map(Op::RecvMany),
        1 => (0..600usize, 0..700usize).prop_map(|(a, b)| Op::ReserveCommit(a, b)),
        1 => (0..600usize).prop_map(Op::ReserveAbort),
        1 => Just(Op::InPlace),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random operation sequences against a `VecDeque`, with the ring's room predicted exactly:
    /// through wrap-around, the full edge and the empty edge.
    #[test]
    fn byte_ring_matches_vecdeque(ops in proptest::collection::vec(op(), 1..300)) {
        const CAP: usize = 4096;
        let ring = Ring::builder().capacity(CAP).anonymous().unwrap();
        let tx = ring.sender().unwrap();
        let rx = ring.receiver().unwrap();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut used = 0usize;
        let mut stamp = 0u8;
        let mut make = |len: usize| { stamp = stamp.wrapping_add(1); (0..len).map(|k| stamp ^ k as u8).collect::<Vec<u8>>() };
        for op in ops {
            match op {
                Op::Send(len) => {
                    let m = make(len);
                    let fits = len <= CAP - 16 && used + record(len) + 8 <= CAP;
                    match tx.try_send(m.clone()) {
                        Ok(()) => { prop_assert!(fits); used += record(len); model.push_back(m); }
                        Err(TrySendError::Full(back)) => { prop_assert!(!fits && len <= CAP - 16); prop_assert_eq!(back, m); }
                        Err(TrySendError::TooLarge { .. }) => prop_assert!(len > CAP - 16),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::SendMany(lens) => {
                    let msgs: Vec<Vec<u8>> = lens.iter().map(|&l| make(l)).collect();
                    let mut expect = 0;
                    let mut room = used;
                    for m in &msgs { if room + record(m.len()) + 8 <= CAP { room += record(m.len()); expect += 1; } else { break; } }
                    match tx.try_send_many(&msgs) {
                        Ok(n) => { prop_assert_eq!(n, expect); for m in &msgs[..n] { used += record(m.len()); model.push_back(m.clone()); } }
                        Err(TrySendError::Full(0)) => prop_assert_eq!(expect, 0),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Recv => match rx.try_recv() {
                    Ok(m) => { let want = model.pop_front(); prop_assert_eq!(Some(m), want.clone()); used -= record(want.unwrap().len()); }
                    Err(TryRecvError::Empty) => prop_assert!(model.is_empty()),
                    Err(e) => prop_assert!(false, "{e}"),
                },
                Op::RecvMany(max) => {
                    let mut got = Vec::new();
                    match rx.try_recv_many(max, |m| got.push(m.to_vec())) {
                        Ok(n) => {
                            prop_assert_eq!(n, max.min(model.len()));
                            for m in got { let want = model.pop_front().unwrap(); used -= record(want.len()); prop_assert_eq!(m, want); }
                        }
                        Err(TryRecvError::Empty) => prop_assert!(model.is_empty()),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::ReserveCommit(len, keep) => {
                    let fits = used + record(len) + 8 <= CAP;
                    match tx.try_reserve(len) {
                        Ok(mut w) => {
                            prop_assert!(fits);
                            let m = make(len);
                            w.copy_from_slice(&m);
                            let keep = keep.min(len);
                            w.commit_len(keep);
                            used += record(keep);
                            model.push_back(m[..keep].to_vec());
                        }
                        Err(TrySendError::Full(_)) => prop_assert!(!fits),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::ReserveAbort(len) => {
                    if let Ok(mut w) = tx.try_reserve(len) { w.fill(0xEE); }
                }
                Op::InPlace => match rx.try_recv_in_place() {
                    Ok(r) => { let want = model.pop_front().unwrap(); prop_assert_eq!(&*r, &want[..]); used -= record(want.len()); }
                    Err(TryRecvError::Empty) => prop_assert!(model.is_empty()),
                    Err(e) => prop_assert!(false, "{e}"),
                },
            }
            prop_assert_eq!(ring.len(), model.len());
            prop_assert_eq!(ring.used_bytes(), used);
        }
    }

    /// The same for the typed queue: values, batches, in-place slots, full and empty edges.
    #[test]
    fn queue_matches_vecdeque(ops in proptest::collection::vec((0..6u8, 1..12usize), 1..400)) {
        const SLOTS: usize = 16;
        let q = Queue::<[u64; 2]>::builder().slots(SLOTS).anonymous().unwrap();
        let tx = q.sender().unwrap();
        let rx = q.receiver().unwrap();
        let mut model = VecDeque::new();
        let mut next = 0u64;
        for (kind, n) in ops {
            match kind {
                0 | 1 => match tx.try_send([next, !next]) {
                    Ok(()) => { prop_assert!(model.len() < SLOTS); model.push_back(next); next += 1; }
                    Err(TrySendError::Full(_)) => prop_assert_eq!(model.len(), SLOTS),
                    Err(e) => prop_assert!(false, "{e}"),
                },
                2 => {
                    let vals: Vec<[u64; 2]> = (0..n as u64).map(|k| [next + k, !(next + k)]).collect();
                    let expect = n.min(SLOTS - model.len());
                    match tx.try_send_many(&vals) {
                        Ok(k) => { prop_assert_eq!(k, expect); for _ in 0..k { model.push_back(next); next += 1; } }
                        Err(TrySendError::Full(0)) => prop_assert_eq!(expect, 0),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                3 => match rx.try_recv() {
                    Ok(v) => { prop_assert_eq!(Some(v[0]), model.pop_front()); prop_assert_eq!(v[1], !v[0]); }
                    Err(TryRecvError::Empty) => prop_assert!(model.is_empty()),
                    Err(e) => prop_assert!(false, "{e}"),
                },
                4 => {
                    let mut out = vec![[0u64; 2]; n];
                    match rx.try_recv_many(&mut out) {
                        Ok(k) => { prop_assert_eq!(k, n.min(model.len())); for v in &out[..k] { prop_assert_eq!(Some(v[0]), model.pop_front()); } }
                        Err(TryRecvError::Empty) => prop_assert!(model.is_empty()),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                _ => {
                    if model.len() < SLOTS {
                        let mut w = tx.reserve().unwrap();
                        *w = [next, !next];
                        w.commit();
                        model.push_back(next);
                        next += 1;
                    }
                    if let Ok(r) = rx.recv_in_place_timeout(Duration::ZERO) {
                        prop_assert_eq!(Some(r[0]), model.pop_front());
                    }
                }
            }
            prop_assert_eq!(q.len(), model.len());
        }
    }
}

#[test]
fn file_backed_ring_and_open_modes() {
    let path = std::env::temp_dir().join(unique_name("file-ring"));
    let ring = Ring::builder().capacity(8192).file(&path, OpenMode::CreateNew).unwrap();
    let other = Ring::builder().file(&path, OpenMode::OpenExisting).unwrap();
    let tx = ring.sender().unwrap();
    let rx = other.receiver().unwrap();
    tx.send(b"through a file").unwrap();
    assert_eq!(rx.recv().unwrap(), b"through a file");
    drop((tx, rx, other, ring));
    assert!(!path.exists(), "the creator removes its file");
}

#[test]
fn nothing_left_in_dev_shm() {
    // Runs alongside the others; checks only names of tests that are done by the time it runs.
    let name = unique_name("leak-check");
    {
        let _r = Ring::builder().create(&name).unwrap();
        let _q = Queue::<u64>::builder().open_or_create(&unique_name("leak-check-q")).unwrap();
    }
    assert!(common::leftovers().iter().all(|n| !n.contains("leak-check")), "{:?}", common::leftovers());
}
