//! Typed rings of rkyv-archived values (`ringpool::ring::archive`): random nested values round
//! trip exactly across a real fork, garbage from a peer is an error in a child that never dies by a
//! signal, oversized values come back with both sizes named, and archives are aligned where they
//! lie in the ring whatever the record's offset.

mod common;
mod process_common;

use std::time::Duration;

use proptest::prelude::*;
use ringpool::SegmentError;
use ringpool::process::ExitStatus;
use ringpool::ring::archive::{TypedQueue, TypedRecvError, TypedRing, TypedSendError, rkyv};

use common::{Rng, leftovers, unique_name};
use process_common::{fork, lock};

const LONG: Duration = Duration::from_secs(60);

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
    flag: bool,
    maybe: Option<String>,
    outcome: Result<u32, String>,
    pair: (u8, String),
    shape: Shape,
    shapes: Vec<Shape>,
    nested: Vec<Vec<Option<i16>>>,
    letter: char,
    /// 16-aligned when archived: only correct in place if the sender aligned for the real address.
    wide: u128,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Empty),
        (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Shape::Point(x, y)),
        (".{0,20}", proptest::collection::vec(".{0,8}", 0..5)).prop_map(|(name, tags)| Shape::Named { name, tags }),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Shape::Bytes),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    (
        (any::<u64>(), ".{0,40}", proptest::collection::vec(any::<u64>(), 0..20), any::<bool>()),
        (proptest::option::of(".{0,16}"), prop_oneof![any::<u32>().prop_map(Ok), ".{0,16}".prop_map(Err)]),
        ((any::<u8>(), ".{0,10}"), shape(), proptest::collection::vec(shape(), 0..4)),
        (
            proptest::collection::vec(proptest::collection::vec(proptest::option::of(any::<i16>()), 0..5), 0..4),
            any::<char>(),
            any::<u128>(),
        ),
    )
        .prop_map(|((id, name, values, flag), (maybe, outcome), (pair, shape, shapes), (nested, letter, wide))| {
            Item { id, name, values, flag, maybe, outcome, pair, shape, shapes, nested, letter, wide }
        })
}

fn exit_of(mut p: ringpool::Process) -> ExitStatus {
    p.join_timeout(LONG).expect("the child ends in time")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random nested values go to a forked child, which receives them alternately in place and
    /// owned and echoes each back through a second typed ring: what returns equals what was sent,
    /// in order. A small ring makes records wrap and land at every offset.
    #[test]
    fn random_nested_values_round_trip_exactly_across_a_fork(items in proptest::collection::vec(item(), 1..24)) {
        let _g = lock();
        let there = TypedRing::<Item>::builder().capacity(8192).anonymous().unwrap();
        let back = TypedRing::<Item>::builder().capacity(8192).anonymous().unwrap();
        let n = items.len();
        let child = {
            let (there, back) = (there.clone(), back.clone());
            fork(move || {
                let rx = there.receiver().unwrap();
                let tx = back.sender().unwrap();
                for i in 0..n {
                    let value = if i % 2 == 0 {
                        rx.recv_timeout(LONG).unwrap()
                    } else {
                        let view = rx.recv_archived_timeout(LONG).unwrap();
                        // Read in place, then owned from the same view.
                        assert_eq!(view.values.len(), view.values.iter().count());
                        view.deserialize().unwrap()
                    };
                    tx.send_timeout(value, LONG).unwrap();
                }
            })
        };
        let tx = there.sender().unwrap();
        let rx = back.receiver().unwrap();
        // Interleave sends and receives so neither small ring has to hold the whole batch.
        let mut got = Vec::new();
        for it in &items {
            tx.send_timeout(it.clone(), LONG).unwrap();
            while let Ok(v) = rx.try_recv() {
                got.push(v);
            }
        }
        while got.len() < n {
            got.push(rx.recv_timeout(LONG).unwrap());
        }
        prop_assert_eq!(exit_of(child), ExitStatus::Code(0));
        prop_assert_eq!(&got, &items);
        // The child is gone and it held the only sender of `back`.
        prop_assert!(matches!(rx.recv_timeout(LONG), Err(TypedRecvError::Disconnected)));
    }
}

/// Records shifted to every 8-aligned offset (raw byte messages of growing length in between)
/// still carry 16-aligned archives that validate where they lie. Fails if the sender counts
/// positions from 0 (half the offsets are 8 mod 16, and bytecheck refuses the misaligned `u128`).
#[test]
fn archives_validate_in_place_at_every_record_offset() {
    let ring = TypedRing::<Item>::builder().capacity(4096).anonymous().unwrap();
    let raw = ring.as_bytes().sender().unwrap();
    let raw_rx = ring.as_bytes().receiver().unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    // Whether a record started at 0 and at 8 modulo 16.
    let mut offsets = [false; 2];
    for k in 0..600usize {
        let filler = vec![0xA5u8; k % 97];
        raw.send(&filler).unwrap();
        assert_eq!(raw_rx.recv_timeout(LONG).unwrap(), filler);
        let v = Item {
            id: k as u64,
            name: "n".repeat(k % 13),
            values: (0..(k % 5) as u64).collect(),
            flag: k % 2 == 0,
            maybe: None,
            outcome: Ok(k as u32),
            pair: (1, String::new()),
            shape: Shape::Point(1, 2),
            shapes: vec![],
            nested: vec![],
            letter: 'x',
            wide: u128::MAX - k as u128,
        };
        tx.send(v.clone()).unwrap();
        let view = rx.recv_archived_timeout(LONG).unwrap_or_else(|e| panic!("message {k}: {e}"));
        assert_eq!(view.wide, u128::MAX - k as u128);
        offsets[(view.bytes().as_ptr() as usize % 16) / 8] = true;
        assert_eq!(view.deserialize().unwrap(), v);
    }
    assert_eq!(offsets, [true, true], "records landed at both offsets modulo 16");
}

/// A peer writes garbage: random bytes, truncated archives, archives with flipped bytes, an
/// archive of another type, interleaved with valid values. A forked receiver answers each garbage
/// record with `Invalid` (or, for a flip that happens to still validate, a value) and every valid
/// value exactly; it exits with code 0, never by a signal.
#[test]
fn garbage_from_a_peer_is_an_error_in_a_child_that_never_dies_by_a_signal() {
    let _g = lock();
    let ring = TypedRing::<Item>::builder().capacity(1 << 16).anonymous().unwrap();
    let verdicts = TypedRing::<(u32, u32, u32)>::builder().capacity(4096).anonymous().unwrap();
    const ROUNDS: u32 = 300;
    let child = {
        let (ring, verdicts) = (ring.clone(), verdicts.clone());
        fork(move || {
            let rx = ring.receiver().unwrap();
            let out = verdicts.sender().unwrap();
            let (mut valid, mut invalid, mut other) = (0u32, 0u32, 0u32);
            loop {
                match rx.recv_timeout(LONG) {
                    Ok(v) if v.name == "valid" => valid += 1,
                    Ok(_) => other += 1,
                    Err(TypedRecvError::Invalid { reason, .. }) => {
                        assert!(!reason.is_empty());
                        invalid += 1
                    }
                    Err(TypedRecvError::Disconnected) => break,
                    Err(e) => panic!("unexpected: {e}"),
                }
            }
            out.send((valid, invalid, other)).unwrap();
        })
    };
    let good = Item {
        id: 1,
        name: "valid".into(),
        values: vec![1, 2, 3],
        flag: true,
        maybe: Some("m".into()),
        outcome: Err("e".into()),
        pair: (9, "p".into()),
        shape: Shape::Named { name: "n".into(), tags: vec!["a".into(), "b".into()] },
        shapes: vec![Shape::Bytes(vec![1, 2]), Shape::Empty],
        nested: vec![vec![Some(1), None]],
        letter: 'é',
        wide: 5,
    };
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&good).unwrap().to_vec();
    {
        let tx = ring.sender().unwrap();
        let raw = ring.as_bytes().sender().unwrap();
        let mut r = Rng(0x5EED_0A7C);
        let mut surely_invalid = 0u32;
        for round in 0..ROUNDS {
            let bytes: Vec<u8> = match round % 5 {
                0 => (0..r.below(300)).map(|_| r.next() as u8).collect(),
                1 => {
                    surely_invalid += 1;
                    archive[..r.below(16) as usize].to_vec()
                }
                2 => {
                    let mut b = archive.clone();
                    for _ in 0..1 + r.below(4) {
                        let at = r.below(b.len() as u64) as usize;
                        b[at] ^= 1 << r.below(8);
                    }
                    b
                }
                3 => {
                    surely_invalid += 1;
                    vec![0xFF; 200]
                }
                _ => {
                    tx.send_timeout(good.clone(), LONG).unwrap();
                    continue;
                }
            };
            raw.send_timeout(&bytes, LONG).unwrap();
        }
        assert!(surely_invalid > 0);
    }
    let status = exit_of(child);
    assert_eq!(status, ExitStatus::Code(0), "the receiving child must end normally, not by a signal");
    let (valid, invalid, other) = verdicts.receiver().unwrap().recv_timeout(LONG).unwrap();
    assert_eq!(valid + invalid + other, ROUNDS, "every record answered once");
    // The truncated archives and the 0xFF blocks cannot validate: at least those are Invalid.
    assert!(invalid >= 2 * ROUNDS / 5, "valid {valid}, invalid {invalid}, other {other}");
    // Every record sent by the typed sender is valid; a flipped archive may still validate.
    assert!(valid >= ROUNDS / 5, "valid {valid}, invalid {invalid}, other {other}");
}

/// A value larger than the ring's largest message is refused with both sizes named and handed
/// back; one larger than the first reservation but within the ring goes through (reserved again
/// at its measured size), and so does the next small one.
#[test]
fn oversized_values_are_refused_with_both_sizes_and_handed_back() {
    let ring = TypedRing::<Vec<String>>::builder().capacity(4096).anonymous().unwrap();
    assert_eq!(ring.max_message_len(), 4080);
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();

    let huge = vec!["x".repeat(5000)];
    match tx.send(huge.clone()) {
        Err(TypedSendError::TooLarge { value, size, max }) => {
            assert_eq!(value, huge, "the value comes back");
            assert!(size > 5000, "size {size} is the archive's");
            assert_eq!(max, 4080);
            let text = TypedSendError::TooLarge { value: (), size, max }.to_string();
            assert!(text.contains(&size.to_string()) && text.contains("4080"), "{text}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(ring.is_empty(), "nothing was published");

    // Larger than the first reservation (size_of archived + slack), within the ring.
    let big = vec!["y".repeat(3000), "z".into()];
    tx.send(big.clone()).unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), big);
    let small = vec!["s".into()];
    tx.send(small.clone()).unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), small);

    // try_send on a full ring: Full, value back; send_timeout: Timeout.
    let third = vec!["t".repeat(1300)];
    let mut sent = 0;
    let back = loop {
        match tx.try_send(third.clone()) {
            Ok(()) => sent += 1,
            Err(TypedSendError::Full(v)) => break v,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(back, third);
    assert!(sent >= 2);
    assert!(matches!(tx.send_timeout(third.clone(), Duration::from_millis(20)), Err(TypedSendError::Timeout(_))));
    for _ in 0..sent {
        assert_eq!(rx.recv_timeout(LONG).unwrap(), third);
    }
    assert!(matches!(rx.try_recv(), Err(TypedRecvError::Empty)));
    assert!(matches!(rx.recv_timeout(Duration::from_millis(20)), Err(TypedRecvError::Timeout)));
    drop(tx);
    assert!(matches!(rx.recv(), Err(TypedRecvError::Disconnected)));
}

/// A named typed ring is opened by the same type, refused for another type or as a byte ring, and
/// leaves nothing in /dev/shm.
#[test]
fn a_named_typed_ring_knows_its_type() {
    let name = unique_name("typed");
    {
        let ring = TypedRing::<Item>::builder().capacity(4096).create(&name).unwrap();
        let same = TypedRing::<Item>::builder().open(&name).unwrap();
        let e = TypedRing::<Shape>::builder().open(&name).unwrap_err();
        assert!(matches!(e, SegmentError::TypeMismatch { .. }), "{e}");
        let e = ringpool::Ring::builder().open(&name).unwrap_err();
        assert!(matches!(e, SegmentError::TypeMismatch { .. }), "{e}");
        let e = TypedRing::<Item>::builder().type_tag("other").open(&name).unwrap_err();
        assert!(matches!(e, SegmentError::TypeMismatch { .. }), "{e}");
        let tx = ring.sender().unwrap();
        let rx = same.receiver().unwrap();
        tx.send(Item {
            id: 3,
            name: "named".into(),
            values: vec![],
            flag: false,
            maybe: None,
            outcome: Ok(0),
            pair: (0, String::new()),
            shape: Shape::Empty,
            shapes: vec![],
            nested: vec![],
            letter: 'a',
            wide: 0,
        })
        .unwrap();
        assert_eq!(rx.recv_archived_timeout(LONG).unwrap().name, "named");
    }
    assert!(leftovers().iter().all(|n| n != &name), "{name} left in /dev/shm");
}

/// A receiver killed (SIGKILL) while it holds a value in place leaves it in the ring: the next
/// receiver gets that very value, then the next, and the receive lock is taken over.
#[test]
fn a_value_held_in_place_by_a_killed_receiver_goes_to_the_next_receiver() {
    let _g = lock();
    let ring = TypedRing::<(String, Vec<u32>)>::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    tx.send(("first".into(), vec![1, 2, 3])).unwrap();
    tx.send(("second".into(), vec![4])).unwrap();
    let (read_end, write_end) = process_common::pipe();
    let mut child = {
        let ring = ring.clone();
        fork(move || {
            let rx = ring.receiver().unwrap();
            let held = rx.recv_archived_timeout(LONG).unwrap();
            process_common::send_line(&write_end, &format!("holding {}", held.0));
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    use std::os::fd::AsFd;
    let line = process_common::recv_line(read_end.as_fd(), LONG);
    assert_eq!(line.as_deref(), Some("holding first"));
    child.kill().unwrap();
    assert!(exit_of(child).signal().is_some());
    let rx = ring.receiver().unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), ("first".to_owned(), vec![1, 2, 3]));
    assert_eq!(rx.recv_timeout(LONG).unwrap(), ("second".to_owned(), vec![4]));
    assert!(ring.stats().recv_recoveries >= 1, "{:?}", ring.stats());
}

// ----- TypedQueue: archived values in fixed slots -------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The same random nested values through 4 KiB slots of a `TypedQueue`, to a forked child and
    /// back: exact, in order. The stride (4104 bytes) puts consecutive slots at 8 and 0 modulo 16.
    #[test]
    fn random_nested_values_round_trip_exactly_through_typed_queue_slots(items in proptest::collection::vec(item(), 1..24)) {
        let _g = lock();
        let there = TypedQueue::<Item, 4096>::builder().slots(4).anonymous().unwrap();
        let back = TypedQueue::<Item, 4096>::builder().slots(4).anonymous().unwrap();
        let n = items.len();
        let child = {
            let (there, back) = (there.clone(), back.clone());
            fork(move || {
                let rx = there.receiver().unwrap();
                let tx = back.sender().unwrap();
                for i in 0..n {
                    let value = if i % 2 == 0 {
                        rx.recv_timeout(LONG).unwrap()
                    } else {
                        rx.recv_archived_timeout(LONG).unwrap().deserialize().unwrap()
                    };
                    tx.send_timeout(value, LONG).unwrap();
                }
            })
        };
        let tx = there.sender().unwrap();
        let rx = back.receiver().unwrap();
        let mut got = Vec::new();
        for it in &items {
            tx.send_timeout(it.clone(), LONG).unwrap();
            while let Ok(v) = rx.try_recv() {
                got.push(v);
            }
        }
        while got.len() < n {
            got.push(rx.recv_timeout(LONG).unwrap());
        }
        prop_assert_eq!(exit_of(child), ExitStatus::Code(0));
        prop_assert_eq!(&got, &items);
        prop_assert!(matches!(rx.recv_timeout(LONG), Err(TypedRecvError::Disconnected)));
    }
}

/// Raw slots from a peer (random bytes, impossible length fields, truncated or flipped archives)
/// are `Invalid` in a forked receiver that exits normally; valid values among them arrive exact.
#[test]
fn garbage_in_typed_queue_slots_is_an_error_in_a_child_that_never_dies_by_a_signal() {
    let _g = lock();
    let q = TypedQueue::<Item, 512>::builder().slots(16).anonymous().unwrap();
    let verdicts = TypedRing::<(u32, u32, u32)>::builder().capacity(4096).anonymous().unwrap();
    const ROUNDS: u32 = 300;
    let child = {
        let (q, verdicts) = (q.clone(), verdicts.clone());
        fork(move || {
            let rx = q.receiver().unwrap();
            let out = verdicts.sender().unwrap();
            let (mut valid, mut invalid, mut other) = (0u32, 0u32, 0u32);
            loop {
                match rx.recv_timeout(LONG) {
                    Ok(v) if v.name == "valid" => valid += 1,
                    Ok(_) => other += 1,
                    Err(TypedRecvError::Invalid { .. }) => invalid += 1,
                    Err(TypedRecvError::Disconnected) => break,
                    Err(e) => panic!("unexpected: {e}"),
                }
            }
            out.send((valid, invalid, other)).unwrap();
        })
    };
    let good = Item {
        id: 1,
        name: "valid".into(),
        values: vec![1, 2, 3],
        flag: true,
        maybe: None,
        outcome: Ok(1),
        pair: (9, "p".into()),
        shape: Shape::Bytes(vec![1, 2, 3]),
        shapes: vec![Shape::Empty],
        nested: vec![],
        letter: 'q',
        wide: u128::MAX,
    };
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&good).unwrap().to_vec();
    {
        let tx = q.sender().unwrap();
        let raw = q.as_slots().sender().unwrap();
        let mut r = Rng(0x5107_5EED);
        for round in 0..ROUNDS {
            let mut slot = [0u8; 512];
            match round % 5 {
                0 => slot.iter_mut().for_each(|b| *b = r.next() as u8),
                1 => {
                    // A length field past the slot.
                    slot[..8].copy_from_slice(&(600 + r.below(1 << 40)).to_le_bytes());
                }
                2 => {
                    let cut = r.below(archive.len() as u64) as usize;
                    slot[..8].copy_from_slice(&(cut as u64).to_le_bytes());
                    slot[8..8 + cut].copy_from_slice(&archive[..cut]);
                }
                3 => {
                    slot[..8].copy_from_slice(&(archive.len() as u64).to_le_bytes());
                    slot[8..8 + archive.len()].copy_from_slice(&archive);
                    let at = 8 + r.below(archive.len() as u64) as usize;
                    slot[at] ^= 1 << r.below(8);
                }
                _ => {
                    tx.send_timeout(good.clone(), LONG).unwrap();
                    continue;
                }
            }
            raw.send_timeout(slot, LONG).unwrap();
        }
    }
    assert_eq!(exit_of(child), ExitStatus::Code(0), "the receiving child must end normally, not by a signal");
    let (valid, invalid, other) = verdicts.receiver().unwrap().recv_timeout(LONG).unwrap();
    assert_eq!(valid + invalid + other, ROUNDS, "every slot answered once");
    assert!(invalid >= 2 * ROUNDS / 5, "valid {valid}, invalid {invalid}, other {other}");
    assert!(valid >= ROUNDS / 5, "valid {valid}, invalid {invalid}, other {other}");
}

/// A value whose archive outgrows a slot is refused with both sizes and handed back; nothing is
/// published; try_send on full slots is `Full`.
#[test]
fn a_value_larger_than_a_typed_queue_slot_is_refused_with_both_sizes() {
    let q = TypedQueue::<Vec<String>, 64>::builder().slots(2).anonymous().unwrap();
    assert_eq!(q.max_message_len(), 56);
    let tx = q.sender().unwrap();
    let rx = q.receiver().unwrap();
    let big = vec!["x".repeat(100)];
    match tx.send(big.clone()) {
        Err(TypedSendError::TooLarge { value, size, max }) => {
            assert_eq!(value, big);
            assert!(size > 100, "{size}");
            assert_eq!(max, 56);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(q.is_empty());
    let small = vec!["fits".to_owned()];
    tx.send(small.clone()).unwrap();
    tx.send(small.clone()).unwrap();
    assert!(matches!(tx.try_send(small.clone()), Err(TypedSendError::Full(v)) if v == small));
    assert!(matches!(tx.send_timeout(small.clone(), Duration::from_millis(20)), Err(TypedSendError::Timeout(_))));
    assert_eq!(rx.recv_archived_timeout(LONG).unwrap()[0], "fits");
    assert_eq!(rx.try_recv().unwrap(), small);
    assert!(matches!(rx.try_recv(), Err(TypedRecvError::Empty)));
    drop(tx);
    assert!(matches!(rx.recv(), Err(TypedRecvError::Disconnected)));
}

/// A size hint of 0 makes every send overflow its first reservation: each value is then measured
/// and written again into a reservation of its size, and arrives exact (through wraps, at every
/// offset); a hint above the largest message is clamped.
#[test]
fn a_size_hint_too_small_costs_a_second_pass_not_a_failure() {
    let ring = TypedRing::<(u128, String, Vec<u64>)>::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    for k in 0..500u64 {
        tx.set_size_hint(if k % 7 == 0 { usize::MAX } else { 0 });
        let v = (u128::from(k) << 64 | 0xFEED, "s".repeat((k % 50) as usize), (0..k % 90).collect::<Vec<u64>>());
        tx.send_ref(&v).unwrap();
        assert_eq!(rx.recv_timeout(LONG).unwrap(), v);
    }
}

/// Handles move between threads; a ring and a receiver are shared by reference too; a sender is
/// `Send` but not `Sync` (it keeps its own rkyv arena: clone it per thread).
#[test]
fn handles_are_send_and_rings_and_receivers_sync() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<ringpool::ring::archive::TypedSender<Item>>();
    send::<ringpool::ring::archive::TypedReceiver<Item>>();
    send::<TypedRing<Item>>();
    sync::<TypedRing<Item>>();
    sync::<ringpool::ring::archive::TypedReceiver<Item>>();
    send::<ringpool::ring::archive::TypedQueueSender<Item, 256>>();
    send::<ringpool::ring::archive::TypedQueueReceiver<Item, 256>>();
    sync::<TypedQueue<Item, 256>>();
}
