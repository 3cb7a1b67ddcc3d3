//! A hostile segment: every header, config and control field, and record headers and slot stamps
//! of a ring holding messages, scribbled with boundary values; each forged segment is then opened
//! and used in a forked child. No child may die by a signal or panic (debug builds check the
//! arithmetic too), and a forged config or record length must be reported as an error.
//!
//! The offsets below are the layout's (`segment/header.rs`, `ring/control.rs`); the test checks
//! them against a freshly made segment before scribbling, so a layout change fails loudly here
//! instead of scribbling the wrong bytes.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{leftovers, spawn, unique_name};
use nix::sys::wait::WaitStatus;
use ringpool::ring::{RecvTimeoutError, TryRecvError, TrySendError};
use ringpool::segment::{Fingerprint, LAYOUT_VERSION, SegmentBuilder, SegmentKind};
use ringpool::{OpenMode, Queue, Ring, SegmentError};

/// The header page's size, and where the payload starts.
const PAGE: u64 = 4096;
/// Byte ring capacity used by every case (one page: the smallest ring).
const CAP: u64 = 4096;
/// Slots of every queue case.
const SLOTS: u64 = 16;
/// Child exit codes.
const USED_CLEANLY: i32 = 0;
const OPEN_REFUSED: i32 = 2;
const REPORTED_BROKEN: i32 = 3;
const PANICKED: i32 = 101;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Ring,
    Queue,
}

/// Where a scribble goes.
#[derive(Clone, Copy, Debug)]
enum At {
    /// Offset in the header page; the header's checksum is recomputed afterwards (a forger can).
    Header(u64),
    /// Offset in the header page, checksum left alone.
    Raw(u64),
    /// Offset from the start of the payload (the ring's control block).
    Payload(u64),
    /// Offset from the start of the ring's data region.
    Data(u64),
}

#[derive(Clone, Copy, Debug)]
struct Scribble {
    at: At,
    /// 4 or 8 bytes.
    width: u8,
    value: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Anything but a signal or a panic.
    Survive,
    /// Open must refuse the segment.
    OpenRefused,
    /// Open refuses it, or a receive reports the ring broken.
    Reported,
}

#[derive(Clone, Debug)]
struct Case {
    target: Target,
    field: &'static str,
    scribbles: Vec<Scribble>,
    expect: Expect,
}

/// Boundary values for a field whose valid value is `valid`.
fn boundary(width: u8, valid: u64) -> Vec<u64> {
    let mut v: Vec<u64> = vec![0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 257];
    for k in [12u32, 16, 31, 32, 40, 48, 62, 63] {
        let p = 1u64 << k;
        v.extend([p - 1, p, p + 1]);
    }
    v.extend([
        u64::from(u32::MAX) - 1,
        u64::MAX - 16,
        u64::MAX - 15,
        u64::MAX - 8,
        u64::MAX - 7,
        u64::MAX - 1,
        u64::MAX,
    ]);
    v.extend([valid.wrapping_sub(1), valid.wrapping_add(1), valid.wrapping_sub(8), valid.wrapping_add(8)]);
    v.extend([valid.wrapping_mul(2), valid / 2, valid ^ (1 << 63)]);
    if width == 4 {
        let valid32 = valid as u32;
        v = v.into_iter().map(|x| u64::from(x as u32)).collect();
        v.extend([
            u64::from(u32::MAX),
            u64::from(u32::MAX - 1),
            1 << 31,
            (1 << 31) - 1,
            u64::from(valid32 ^ (1 << 31)),
        ]);
    }
    v.sort_unstable();
    v.dedup();
    v.retain(|&x| x != valid);
    v
}

/// A few values for fields that are hashes or identities (not sizes).
fn few(valid: u64) -> Vec<u64> {
    let mut v = vec![0, 1, u64::from(u32::MAX), u64::MAX, valid ^ 1, valid ^ (1 << 63)];
    v.retain(|&x| x != valid);
    v
}

/// 64-bit FNV-1a, as the header's checksum.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Header layout (segment/header.rs `HeaderFields`): offsets of the checksum and the ready word.
const CHECKSUM_AT: u64 = 88;
const READY_AT: u64 = 96;

/// Control block layout (ring/control.rs): offsets from the payload start.
const SEND_LOCK: u64 = 128;
const SEND_CACHED: u64 = 136;
const RECV_LOCK: u64 = 256;
const TAIL: u64 = 384;
const HEAD: u64 = 512;
const GONE: u64 = 896;
const HIGH_WATER: u64 = 900;
const LAST_SWEEP: u64 = 904;
const MEMBERS: u64 = 1024;

struct Forged {
    file: std::fs::File,
    data_offset: u64,
}

impl Forged {
    fn read(&self, off: u64, width: u8) -> u64 {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b[..width as usize], off).expect("read segment");
        u64::from_le_bytes(b)
    }

    fn write(&self, off: u64, width: u8, value: u64) {
        self.file.write_all_at(&value.to_le_bytes()[..width as usize], off).expect("write segment");
    }

    fn reseal(&self) {
        let mut h = [0u8; CHECKSUM_AT as usize];
        self.file.read_exact_at(&mut h, 0).expect("read header");
        self.write(CHECKSUM_AT, 8, fnv1a(&h));
    }

    fn apply(&self, s: &Scribble) {
        match s.at {
            At::Header(off) => {
                self.write(off, s.width, s.value);
                self.reseal();
            }
            At::Raw(off) => self.write(off, s.width, s.value),
            At::Payload(off) => self.write(PAGE + off, s.width, s.value),
            At::Data(off) => self.write(PAGE + self.data_offset + off, s.width, s.value),
        }
    }
}

fn open_file(name: &str) -> Forged {
    let file = OpenOptions::new().read(true).write(true).open(format!("/dev/shm/{name}")).expect("open /dev/shm file");
    let mut f = Forged { file, data_offset: 0 };
    f.data_offset = f.read(PAGE + 32, 8);
    f
}

/// The message the parent leaves in a byte ring: 10 bytes, so records sit at 0, 24, 48 and the
/// zero marker at 72.
const MSG: [u8; 10] = *b"0123456789";
const MESSAGES: u64 = 3;
const RECORD: u64 = 24;

/// The stamp a byte-ring record header at index `i` carries (ring/records.rs).
fn stamp(i: u64) -> u64 {
    (0x8000_0000 | ((i >> 3) & 0x7FFF_FFFF)) << 32
}

fn make(target: Target, name: &str) -> Box<dyn std::any::Any> {
    match target {
        Target::Ring => {
            let ring = Ring::builder().capacity(CAP as usize).create(name).expect("create ring");
            let tx = ring.sender().expect("sender");
            for _ in 0..MESSAGES {
                tx.try_send(MSG).expect("send");
            }
            Box::new(ring)
        }
        Target::Queue => {
            let q = Queue::<u64>::builder().slots(SLOTS as usize).create(name).expect("create queue");
            let tx = q.sender().expect("sender");
            for v in 0..MESSAGES {
                tx.try_send(v + 100).expect("send");
            }
            Box::new(q)
        }
    }
}

/// Checks the offsets this test writes at against a fresh segment; answers the file's length
/// and the payload's.
fn check_layout(target: Target) -> (u64, u64) {
    let name = unique_name(tag(target));
    let keep = make(target, &name);
    let f = open_file(&name);
    assert_eq!(f.read(0, 8), u64::from_le_bytes(*b"RINGPOOL"));
    assert_eq!(f.read(8, 4), u64::from(LAYOUT_VERSION), "layout version");
    assert_eq!(f.read(24, 8), PAGE, "payload offset");
    let total = f.file.metadata().unwrap().len();
    assert_eq!(f.read(16, 8), total, "total length");
    let mut h = [0u8; CHECKSUM_AT as usize];
    f.file.read_exact_at(&mut h, 0).unwrap();
    assert_eq!(f.read(CHECKSUM_AT, 8), fnv1a(&h), "checksum");
    assert_eq!(f.read(READY_AT, 4), 0x5245_4459, "ready word");
    let (cap, stride, item) = match target {
        Target::Ring => (CAP, 8, CAP - 16),
        Target::Queue => (SLOTS, 16, 8),
    };
    assert_eq!(f.read(PAGE + 8, 8), cap, "config capacity");
    assert_eq!(f.read(PAGE + 16, 8), stride, "config stride");
    assert_eq!(f.read(PAGE + 24, 8), item, "config item size");
    let published = match target {
        Target::Ring => MESSAGES * RECORD,
        Target::Queue => MESSAGES,
    };
    assert_eq!(f.read(PAGE + TAIL, 8), published, "tail");
    assert_eq!(f.read(PAGE + HEAD, 8), 0, "head");
    match target {
        Target::Ring => assert_eq!(f.read(PAGE + f.data_offset, 8), stamp(0) | MSG.len() as u64, "first header"),
        Target::Queue => assert_eq!(f.read(PAGE + f.data_offset + 8, 8), 1, "first stamp"),
    }
    assert_eq!(f.read(32, 8), total - PAGE, "payload length");
    assert_eq!(f.read(PAGE + MEMBERS, 4), u64::from(std::process::id()), "the creator's member entry");
    assert_eq!(f.read(PAGE + HIGH_WATER, 4), 1, "member table high water");
    drop(keep);
    (total, total - PAGE)
}

fn cases(target: Target, (total_len, payload_len): (u64, u64)) -> Vec<Case> {
    let mut out = Vec::new();
    let one = |field: &'static str, at: At, width: u8, values: Vec<u64>, expect: &dyn Fn(u64) -> Expect| {
        values
            .into_iter()
            .map(|value| Case { target, field, scribbles: vec![Scribble { at, width, value }], expect: expect(value) })
            .collect::<Vec<_>>()
    };
    let refused = |_: u64| Expect::OpenRefused;
    let survive = |_: u64| Expect::Survive;
    let (fp_size, fp_align) = match target {
        Target::Ring => (1, 1),
        Target::Queue => (8, 8),
    };
    let kind = match target {
        Target::Ring => 1,
        Target::Queue => 2,
    };
    let mirror = if target == Target::Ring { CAP } else { 0 };
    // The segment header, resealed: every field that says what or where is checked.
    out.extend(one("magic (unsealed)", At::Raw(0), 8, few(u64::from_le_bytes(*b"RINGPOOL")), &refused));
    out.extend(one("version", At::Header(8), 4, boundary(4, u64::from(LAYOUT_VERSION)), &refused));
    out.extend(one("kind", At::Header(12), 4, boundary(4, kind), &refused));
    out.extend(one("total_len", At::Header(16), 8, boundary(8, total_len), &refused));
    out.extend(one("payload_offset", At::Header(24), 8, boundary(8, PAGE), &refused));
    out.extend(one("payload_len", At::Header(32), 8, boundary(8, payload_len), &refused));
    out.extend(one("mirror_len", At::Header(40), 8, boundary(8, mirror), &refused));
    out.extend(one("creator_pid", At::Header(48), 4, few(1), &survive));
    out.extend(one("flags", At::Header(52), 4, few(0), &survive));
    out.extend(one("pid_namespace", At::Header(56), 8, few(0), &survive));
    out.extend(one("fingerprint.size", At::Header(64), 8, boundary(8, fp_size), &refused));
    out.extend(one("fingerprint.align", At::Header(72), 8, boundary(8, fp_align), &refused));
    out.extend(one("fingerprint.name_hash", At::Header(80), 8, few(0), &refused));
    out.extend(one("checksum (unsealed)", At::Raw(CHECKSUM_AT), 8, few(0), &refused));
    out.extend(one("ready", At::Raw(READY_AT), 4, boundary(4, 0x5245_4459), &refused));
    // The ring's config: anything but what the creator wrote is refused (max_members may be any
    // of 1..=256, and ring_id is free).
    let (cap, stride, item) = match target {
        Target::Ring => (CAP, 8, CAP - 16),
        Target::Queue => (SLOTS, 16, 8),
    };
    out.extend(one("config.format", At::Payload(0), 4, boundary(4, kind), &refused));
    out.extend(one("config.max_members", At::Payload(4), 4, boundary(4, 256), &|v| {
        if (1..=256).contains(&v) { Expect::Survive } else { Expect::OpenRefused }
    }));
    // A slot count whose slots fit the same pages cannot be told from the creator's: it is
    // consistent (and harmless); any other is refused.
    out.extend(one("config.capacity", At::Payload(8), 8, boundary(8, cap), &|v| {
        let same_pages = v.is_power_of_two() && v.checked_mul(stride).is_some_and(|b| b.div_ceil(PAGE) == 1);
        if target == Target::Queue && same_pages { Expect::Survive } else { Expect::OpenRefused }
    }));
    out.extend(one("config.stride", At::Payload(16), 8, boundary(8, stride), &refused));
    out.extend(one("config.item_size", At::Payload(24), 8, boundary(8, item), &refused));
    out.extend(one("config.data_offset", At::Payload(32), 8, boundary(8, PAGE), &refused));
    out.extend(one("config.ring_id", At::Payload(40), 8, few(0), &survive));
    // The shared indices and words every operation reads.
    let unit = if target == Target::Ring { RECORD } else { 1 };
    out.extend(one("send.cached", At::Payload(SEND_CACHED), 8, boundary(8, 0), &survive));
    out.extend(one("tail", At::Payload(TAIL), 8, boundary(8, MESSAGES * unit), &survive));
    out.extend(one("head", At::Payload(HEAD), 8, boundary(8, 0), &survive));
    out.extend(one("send.lock", At::Payload(SEND_LOCK), 4, few(0), &survive));
    out.extend(one("recv.lock", At::Payload(RECV_LOCK), 4, few(0), &survive));
    // Layout 3: a solo holder's mark after each lock word, and the notifier's CPU hint after each
    // event count.
    out.extend(one("send.sticky", At::Payload(SEND_LOCK + 4), 4, few(0), &survive));
    out.extend(one("recv.sticky", At::Payload(RECV_LOCK + 4), 4, few(0), &survive));
    // Layout 4: the solo holder's "inside an operation" word, a taker's claim, and the yields
    // counter, after each side's counters.
    out.extend(one("send.busy", At::Payload(SEND_LOCK + 48), 4, few(0), &survive));
    out.extend(one("send.steal", At::Payload(SEND_LOCK + 52), 4, few(0), &survive));
    out.extend(one("recv.busy", At::Payload(RECV_LOCK + 48), 4, few(0), &survive));
    out.extend(one("recv.steal", At::Payload(RECV_LOCK + 52), 4, few(0), &survive));
    out.extend(one("send.yields", At::Payload(SEND_LOCK + 56), 8, few(0), &survive));
    out.extend(one("recv.yields", At::Payload(RECV_LOCK + 56), 8, few(0), &survive));
    out.extend(one("not_empty.cpu", At::Payload(HEAD + 128 + 8), 4, few(0), &survive));
    out.extend(one("not_full.cpu", At::Payload(HEAD + 256 + 8), 4, few(0), &survive));
    out.extend(one("membership.gone", At::Payload(GONE), 4, few(0), &survive));
    out.extend(one("membership.high_water", At::Payload(HIGH_WATER), 4, boundary(4, 1), &survive));
    out.extend(one("membership.last_sweep", At::Payload(LAST_SWEEP), 8, few(0), &survive));
    // The creator's member entry (entry 0): pid, handle counts, start time.
    out.extend(one("members[0].pid", At::Payload(MEMBERS), 4, few(0), &survive));
    out.extend(one("members[0].senders", At::Payload(MEMBERS + 4), 4, boundary(4, 0), &survive));
    out.extend(one("members[0].receivers", At::Payload(MEMBERS + 8), 4, few(0), &survive));
    out.extend(one("members[0].start_time", At::Payload(MEMBERS + 16), 8, few(0), &survive));
    match target {
        Target::Ring => {
            // Record headers: the first, the second, and a forged one over the zero marker after
            // the last. A right stamp with a length above the largest message must be reported.
            for (field, at) in [("record[0]", 0), ("record[1]", RECORD), ("marker", MESSAGES * RECORD)] {
                out.extend(one(field, At::Data(at), 8, boundary(8, stamp(at) | MSG.len() as u64), &survive));
                let lens = boundary(4, MSG.len() as u64);
                out.extend(one(field, At::Data(at), 8, lens.iter().map(|l| stamp(at) | l).collect(), &|w| {
                    if w & 0xFFFF_FFFF > CAP - 16 { Expect::Reported } else { Expect::Survive }
                }));
            }
            // The wrap of the largest message: the overhead added to a forged item size must not
            // wrap, whatever record length comes with it.
            for item in [u64::MAX - 15, u64::MAX - 7, u64::MAX, 1 << 63] {
                for len in [u64::from(u32::MAX), 1 << 20, 2 * CAP, CAP] {
                    out.push(Case {
                        target,
                        field: "config.item_size + record[0].len",
                        scribbles: vec![
                            Scribble { at: At::Payload(24), width: 8, value: item },
                            Scribble { at: At::Data(0), width: 8, value: stamp(0) | len },
                        ],
                        expect: Expect::OpenRefused,
                    });
                }
            }
        }
        Target::Queue => {
            for (field, slot) in [("stamp[0]", 0u64), ("stamp[1]", 1), ("stamp[3] (free)", 3), ("stamp[15]", 15)] {
                let valid = if slot < MESSAGES { slot + 1 } else { 0 };
                out.extend(one(field, At::Data(slot * 16 + 8), 8, boundary(8, valid), &survive));
            }
            // A forged stride and item size that agree with each other but not with the type.
            for (s, i) in [(u64::MAX - 7, u64::MAX - 15), (1 << 63, (1 << 63) - 8), (16, 8 + 1)] {
                out.push(Case {
                    target,
                    field: "config.stride + item_size",
                    scribbles: vec![
                        Scribble { at: At::Payload(16), width: 8, value: s },
                        Scribble { at: At::Payload(24), width: 8, value: i },
                    ],
                    expect: Expect::OpenRefused,
                });
            }
        }
    }
    out
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Child side: open the forged ring and use every kind of operation once or twice.
fn use_ring(name: &str) -> i32 {
    let ring = match Ring::builder().open_timeout(ms(20)).open(name) {
        Ok(r) => r,
        Err(_) => return OPEN_REFUSED,
    };
    let mut broken = false;
    let _ = (ring.len(), ring.used_bytes(), ring.stats(), ring.capacity(), ring.is_empty());
    let (Ok(tx), Ok(rx)) = (ring.sender(), ring.receiver()) else { return USED_CLEANLY };
    let mut note = |b: bool| broken |= b;
    note(matches!(rx.try_recv(), Err(TryRecvError::Broken(_))));
    let mut seen = 0usize;
    note(matches!(rx.try_recv_many(usize::MAX, |m| seen += m.len()), Err(TryRecvError::Broken(_))));
    note(matches!(rx.recv_timeout(ms(1)), Err(RecvTimeoutError::Broken(_))));
    note(matches!(rx.try_recv_with(|m| m.len()), Err(TryRecvError::Broken(_))));
    match rx.try_recv_in_place() {
        Ok(g) => seen += g.len(),
        Err(e) => note(matches!(e, TryRecvError::Broken(_))),
    }
    let big = vec![7u8; ring.max_message_len().min(1 << 16)];
    note(matches!(tx.try_send(MSG), Err(TrySendError::Broken(..))));
    note(matches!(tx.try_send(&big), Err(TrySendError::Broken(..))));
    note(matches!(tx.try_send_many(&[MSG; 5]), Err(TrySendError::Broken(..))));
    note(matches!(tx.send_timeout(MSG, ms(1)), Err(ringpool::ring::SendTimeoutError::Broken(..))));
    match tx.try_reserve(100) {
        Ok(mut g) => {
            g[..3].copy_from_slice(b"abc");
            g.commit();
        }
        Err(e) => note(matches!(e, TrySendError::Broken(..))),
    }
    for _ in 0..4 {
        note(matches!(rx.try_recv(), Err(TryRecvError::Broken(_))));
    }
    note(matches!(rx.try_recv_many(usize::MAX, |m| seen += m.len()), Err(TryRecvError::Broken(_))));
    std::hint::black_box(seen);
    if broken { REPORTED_BROKEN } else { USED_CLEANLY }
}

fn use_queue(name: &str) -> i32 {
    let q = match Queue::<u64>::builder().open_timeout(ms(20)).open(name) {
        Ok(q) => q,
        Err(_) => return OPEN_REFUSED,
    };
    let mut broken = false;
    let _ = (q.len(), q.stats(), q.capacity(), q.is_empty());
    let (Ok(tx), Ok(rx)) = (q.sender(), q.receiver()) else { return USED_CLEANLY };
    let mut note = |b: bool| broken |= b;
    note(matches!(rx.try_recv(), Err(TryRecvError::Broken(_))));
    let mut out = [0u64; 8];
    note(matches!(rx.try_recv_many(&mut out), Err(TryRecvError::Broken(_))));
    note(matches!(rx.recv_timeout(ms(1)), Err(RecvTimeoutError::Broken(_))));
    match rx.recv_in_place_timeout(ms(1)) {
        Ok(g) => {
            std::hint::black_box(*g);
        }
        Err(e) => note(matches!(e, RecvTimeoutError::Broken(_))),
    }
    note(matches!(tx.try_send(5), Err(TrySendError::Broken(..))));
    note(matches!(tx.try_send_many(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), Err(TrySendError::Broken(..))));
    note(matches!(tx.send_timeout(9, ms(1)), Err(ringpool::ring::SendTimeoutError::Broken(..))));
    for _ in 0..4 {
        note(matches!(rx.try_recv(), Err(TryRecvError::Broken(_))));
    }
    let mut many = [0u64; 64];
    note(matches!(rx.try_recv_many(&mut many), Err(TryRecvError::Broken(_))));
    if broken { REPORTED_BROKEN } else { USED_CLEANLY }
}

fn tag(target: Target) -> &'static str {
    match target {
        Target::Ring => "hostile-ring",
        Target::Queue => "hostile-queue",
    }
}

fn run_case(case: &Case) -> Result<i32, String> {
    let name = unique_name(tag(case.target));
    let keep = make(case.target, &name);
    let f = open_file(&name);
    for s in &case.scribbles {
        f.apply(s);
    }
    drop(f);
    let target = case.target;
    let child_name = name.clone();
    let child = spawn(move || match target {
        Target::Ring => use_ring(&child_name),
        Target::Queue => use_queue(&child_name),
    });
    let status = child.wait(Duration::from_secs(20));
    drop(keep);
    let code = match status {
        WaitStatus::Exited(_, code) => code,
        other => return Err(format!("child ended by {other:?}")),
    };
    if code == PANICKED {
        return Err("child panicked (see its stderr above)".into());
    }
    let ok = match case.expect {
        Expect::Survive => [USED_CLEANLY, OPEN_REFUSED, REPORTED_BROKEN].contains(&code),
        Expect::OpenRefused => code == OPEN_REFUSED,
        Expect::Reported => code == OPEN_REFUSED || code == REPORTED_BROKEN,
    };
    if ok { Ok(code) } else { Err(format!("exit code {code}, expected {:?}", case.expect)) }
}

fn run_all(target: Target) {
    let lens = check_layout(target);
    let cases = cases(target, lens);
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = run_case(case) {
            let vals: Vec<String> = case.scribbles.iter().map(|s| format!("{:?}={:#x}", s.at, s.value)).collect();
            failures.push(format!("{:?} {} [{}]: {why}", case.target, case.field, vals.join(", ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} forged segments went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let left: Vec<String> = leftovers().into_iter().filter(|n| n.contains(tag(target))).collect();
    assert!(left.is_empty(), "segments left in /dev/shm: {left:?}");
}

#[test]
fn forged_byte_ring_fields_never_kill_a_reader() {
    run_all(Target::Ring);
}

#[test]
fn forged_queue_fields_never_kill_a_reader() {
    run_all(Target::Queue);
}

// ----- who may hand us a segment ------------------------------------------------------------

/// Gives the file at `path` to uid 65534 (nobody); false if this process may not (not root).
fn give_away(path: &str) -> bool {
    match std::os::unix::fs::chown(path, Some(65534), None) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipping: cannot chown {path} (not root): {e}");
            false
        }
        Err(e) => panic!("chown {path}: {e}"),
    }
}

fn ours() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

fn assert_foreign(e: SegmentError) {
    let text = e.to_string();
    match e {
        SegmentError::ForeignOwner { owner, ours: us, .. } => {
            assert_eq!((owner, us), (65534, ours()), "{text}");
            assert!(text.contains("65534") && text.contains("allow_foreign_owner"), "{text}");
        }
        other => panic!("expected ForeignOwner, got {other:?}"),
    }
}

#[test]
fn a_segment_owned_by_another_user_is_refused_unless_the_builder_opts_in() {
    let name = unique_name("hostile-owner");
    let ring = Ring::builder().capacity(4096).create(&name).unwrap();
    let qname = unique_name("hostile-owner");
    let queue = Queue::<u64>::builder().slots(16).create(&qname).unwrap();
    if !give_away(&format!("/dev/shm/{name}")) || !give_away(&format!("/dev/shm/{qname}")) {
        return;
    }
    assert_foreign(Ring::builder().open(&name).unwrap_err());
    assert_foreign(Ring::builder().open_or_create(&name).unwrap_err());
    assert_foreign(Queue::<u64>::builder().open(&qname).unwrap_err());
    assert_foreign(
        SegmentBuilder::new(SegmentKind::Ring, Fingerprint::bytes())
            .mode(OpenMode::OpenExisting)
            .named(&name, |_| Ok(()))
            .unwrap_err(),
    );
    // Opted in: opened and usable.
    let opened = Ring::builder().allow_foreign_owner().open(&name).unwrap();
    let (tx, rx) = (ring.sender().unwrap(), opened.receiver().unwrap());
    tx.send(MSG).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), MSG);
    let q = Queue::<u64>::builder().allow_foreign_owner().open(&qname).unwrap();
    queue.sender().unwrap().send(7).unwrap();
    assert_eq!(q.receiver().unwrap().recv_timeout(Duration::from_secs(5)).unwrap(), 7);
    // A file segment too.
    let path = std::env::temp_dir().join(unique_name("hostile-owner-file"));
    let made = Ring::builder().capacity(4096).file(&path, OpenMode::CreateNew).unwrap();
    if give_away(path.to_str().unwrap()) {
        assert_foreign(Ring::builder().file(&path, OpenMode::OpenExisting).unwrap_err());
        Ring::builder().allow_foreign_owner().file(&path, OpenMode::OpenExisting).unwrap();
    }
    drop((made, opened, q, ring, queue));
    assert!(!path.exists());
}

#[test]
fn a_symlink_at_a_file_segment_path_is_refused() {
    let dir = std::env::temp_dir().join(unique_name("hostile-link"));
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("target");
    let link = dir.join("link");
    let ring = Ring::builder().capacity(4096).file(&target, OpenMode::CreateNew).unwrap();
    let queue_target = dir.join("queue");
    let queue = Queue::<u64>::builder().slots(16).file(&queue_target, OpenMode::CreateNew).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for mode in [OpenMode::OpenExisting, OpenMode::OpenOrCreate] {
        match Ring::builder().file(&link, mode) {
            Err(SegmentError::Symlink(p)) => assert_eq!(p, link),
            other => panic!("{mode:?}: a planted link was followed: {other:?}"),
        }
    }
    assert!(matches!(Ring::builder().file(&link, OpenMode::CreateNew), Err(SegmentError::AlreadyExists(_))));
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&queue_target, &link).unwrap();
    let e = Queue::<u64>::builder().file(&link, OpenMode::OpenExisting).unwrap_err();
    assert!(matches!(e, SegmentError::Symlink(_)), "{e:?}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // The link's target is untouched and still works.
    let tx = ring.sender().unwrap();
    tx.send(MSG).unwrap();
    assert_eq!(ring.receiver().unwrap().recv_timeout(Duration::from_secs(5)).unwrap(), MSG);
    drop((tx, ring, queue));
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

/// An anonymous segment's size is sealed: a holder's ftruncate fails, in the creator and in a
/// forked child, and nobody dies of SIGBUS.
#[test]
fn an_anonymous_ring_cannot_be_resized_by_any_holder() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let queue = Queue::<u64>::builder().slots(16).anonymous().unwrap();
    let size = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).map(|st| st.st_size).unwrap();
    let before = size(ring.fd());
    let rx = ring.receiver().unwrap();
    let tx = ring.sender().unwrap();
    tx.send(MSG).unwrap();
    let qtx = queue.sender().unwrap();
    qtx.send(5).unwrap();
    let (ring2, queue2) = (ring.clone(), queue.clone());
    let child = spawn(move || {
        let rx = ring2.receiver().unwrap();
        let qrx = queue2.receiver().unwrap();
        for fd in [ring2.fd(), queue2.fd()] {
            for len in [0, 4096, 1 << 30] {
                if nix::unistd::ftruncate(fd, len) != Err(nix::errno::Errno::EPERM) {
                    return 1;
                }
            }
        }
        // Every page is still there.
        if rx.recv_timeout(Duration::from_secs(5)) != Ok(MSG.to_vec())
            || qrx.recv_timeout(Duration::from_secs(5)) != Ok(5)
        {
            return 2;
        }
        0
    });
    match child.wait(Duration::from_secs(30)) {
        WaitStatus::Exited(_, 0) => {}
        other => panic!("child: {other:?}"),
    }
    assert_eq!(nix::unistd::ftruncate(ring.fd(), 0), Err(nix::errno::Errno::EPERM));
    assert_eq!(size(ring.fd()), before);
    tx.send(MSG).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), MSG);
}
