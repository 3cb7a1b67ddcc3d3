//! Looking at rings and queues from outside, read-only, without knowing their payload type; and
//! sweeping away the segments that crashed processes left behind. What the `ringpool` inspector
//! shows (`ringpool ls`, `inspect`, `clean`) is what these calls answer.
//!
//! ```no_run
//! use ringpool::ring::inspect::Scan;
//! for report in Scan::new().run()? {
//!     println!("{}: {:?}", report.segment.name(), report.verdict);
//! }
//! // Remove what nobody can use any more (a dry run first: `sweep(false)`).
//! for outcome in Scan::new().sweep(true)? {
//!     println!("{}: {:?}", outcome.name, outcome.action);
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A ring's control block is copied out of its file ([`ScannedSegment::read_payload`]) and every
//! field is checked as it would be by an opener (the config as `Config::validate` does, counts and
//! indices against it): a segment that fails is reported as corrupted, never read past.
//!
//! **When is a segment abandoned?** When its creator is dead, every process in its member table is
//! dead (no live process is joining or reaping an entry: the entry of one that died doing so is
//! reclaimed by the next sweep), and no other live process has its file open or mapped (from
//! `/proc`). Liveness is by pid and start time for members, by pid alone for the creator and for a
//! process in transition (their start times are not recorded: a reused pid keeps a segment, it
//! never loses one). Segments of another pid namespace, corrupted ones and unreadable ones are
//! never called abandoned.
//!
//! A lock's holder is named by the owner token in its word (a member-table entry and the entry's
//! generation, see `ring/membership.rs`): its pid and liveness are its entry's, while the entry
//! still has that generation; otherwise nobody legitimate holds it ([`LockState::Held`] with no
//! pid), as the ring's own lockers see it.
//!
//! **The sweep never races a live opener:** a candidate is first renamed to a hidden name in the
//! same directory (atomically, `RENAME_NOREPLACE`), so no new opener can find it; after a short
//! grace period (an opener already inside `shm_open` has its descriptor by then) it is examined
//! again through the descriptor the scan holds, and `/proc` is read again. Only if it is still
//! abandoned is the hidden name unlinked; otherwise it is renamed back. A process that opened it
//! just before the rename holds a descriptor and is seen.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Stats;
use super::control::{
    CLAIMING, Config, Control, FORMAT_BYTES, FORMAT_SLOTS, MAX_MEMBERS, Member, MembershipHeader, REAPING, Side,
    TRANSIENT,
};
use super::membership::{RECEIVERS_EVER, RECEIVERS_GONE, SENDERS_EVER, SENDERS_GONE, token_parts};
use crate::segment::SegmentKind;
use crate::segment::scan::{self, HeaderInfo, HeaderProblem, Liveness, ProcUsers, SHM_DIR, ScannedSegment};
use crate::sync::RobustMutex;
use crate::sys::liveness::PID_MAX;

/// One side's lock, as the word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds it.
    Free,
    /// Held by the owner token in the word: a member-table entry and its generation (see
    /// `ring/membership.rs`).
    Held {
        /// The member-table entry the token names.
        slot: u32,
        /// The entry's generation when the holder claimed it.
        generation: u32,
        /// The holder's pid, if the entry still belongs to it (same generation, not free, not in
        /// transition). `None`: the holder has left or died and its entry was reaped or claimed
        /// again since; nobody legitimate holds the lock, and `alive` is `Dead`.
        pid: Option<u32>,
        /// Whether the holder is alive (a dead holder's lock is taken over by the next locker).
        alive: Liveness,
    },
    /// An owner died and its successor could not repair the ring.
    Poisoned,
}

/// What an entry of a ring's member table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// A process with this pid and start time is running.
    Alive,
    /// The process is gone; its entry waits for the next sweep.
    Dead,
    /// A process (the entry's `pid`) is filling the entry in (joining); whether that process is
    /// alive (a dead one's entry is reclaimed by the next sweep).
    Joining(Liveness),
    /// A process (the entry's `pid`) is clearing the entry of a dead member; whether that process
    /// is alive (a dead one's entry is reclaimed by the next sweep).
    Reaping(Liveness),
    /// Its liveness cannot be told (another pid namespace).
    Unknown,
}

/// One entry of a ring's member table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberSnapshot {
    /// Index in the table.
    pub slot: u32,
    /// The member process; for an entry in transition, the process joining or reaping it.
    pub pid: u32,
    /// The entry's generation: with `slot`, the owner token its member locks with.
    pub generation: u32,
    /// Its start time (clock ticks after boot), with the pid its identity.
    pub start_time: u64,
    /// Sender handles it holds.
    pub senders: u32,
    /// Receiver handles it holds.
    pub receivers: u32,
    /// Alive or not.
    pub state: MemberState,
}

/// A ring's or a queue's control block, copied out of its segment and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingSnapshot {
    /// True for a queue of fixed slots, false for a byte ring.
    pub slots: bool,
    /// Bytes (byte ring) or slots (queue).
    pub capacity: u64,
    /// The largest message (byte ring) or the slot's payload size (queue).
    pub item_size: u64,
    /// Processes the member table holds.
    pub max_members: u32,
    /// The ring's random id.
    pub ring_id: u64,
    /// Next index to read.
    pub head: u64,
    /// Next index to write.
    pub tail: u64,
    /// Messages (or values) in the ring now.
    pub depth: u64,
    /// Bytes (byte ring, headers included) or slots (queue) in use now.
    pub used: u64,
    /// The counters, and the handles counted in the table (`senders`, `receivers`: dead
    /// members' included until swept).
    pub stats: Stats,
    /// The send lock.
    pub send_lock: LockState,
    /// The receive lock.
    pub recv_lock: LockState,
    /// Every entry of the member table in use.
    pub members: Vec<MemberSnapshot>,
    /// Sender handles held by live members.
    pub senders_alive: u32,
    /// Sender handles held by dead members (not swept yet).
    pub senders_dead: u32,
    /// Receiver handles held by live members.
    pub receivers_alive: u32,
    /// Receiver handles held by dead members (not swept yet).
    pub receivers_dead: u32,
    /// Every sender has left (flag set by the last one out).
    pub senders_gone: bool,
    /// Every receiver has left.
    pub receivers_gone: bool,
}

fn u32_at(buf: &[u8], off: usize) -> Result<u32, &'static str> {
    let b = buf.get(off..off.checked_add(4).ok_or("offset overflow")?).ok_or("control block truncated")?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(buf: &[u8], off: usize) -> Result<u64, &'static str> {
    let b = buf.get(off..off.checked_add(8).ok_or("offset overflow")?).ok_or("control block truncated")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_ne_bytes(a))
}

/// Decodes a lock word; `holder(slot, generation)` answers the pid and liveness of the member
/// whose entry `slot` still has `generation`, or `None` if no member does.
fn lock_state(word: u32, holder: impl Fn(usize, u32) -> Option<(u32, Liveness)>) -> LockState {
    match RobustMutex::word_owner(word) {
        0 => LockState::Free,
        RobustMutex::POISONED_OWNER => LockState::Poisoned,
        token => {
            let (slot, generation) = token_parts(token);
            let (pid, alive) = match holder(slot, generation) {
                Some((pid, alive)) => (Some(pid), alive),
                // No such member: not a legitimate holder, as the engine's lockers see it.
                None => (None, Liveness::Dead),
            };
            // A 30-bit token's slot has 8 bits: it fits.
            LockState::Held { slot: u32::try_from(slot).unwrap_or(u32::MAX), generation, pid, alive }
        }
    }
}

/// Reads the control block of a ring or queue segment (by its header's kind), read-only.
pub fn read_ring(seg: &ScannedSegment) -> Result<RingSnapshot, &'static str> {
    let h = seg.header.as_ref().map_err(|_| "the segment's header is not valid")?;
    let expected_format = match h.kind {
        SegmentKind::Ring => FORMAT_BYTES,
        SegmentKind::Queue => FORMAT_SLOTS,
        _ => return Err("not a ring or a queue"),
    };
    if !h.ready {
        return Err("not initialized: its creator is still making it, or died doing so");
    }
    let mut buf = vec![0u8; std::mem::size_of::<Control>()];
    seg.read_payload(0, &mut buf).map_err(|e| match e {
        HeaderProblem::Corrupted(r) => r,
        _ => "the control block cannot be read",
    })?;
    parse_control(&buf, h, expected_format)
}

/// Checks and decodes a copy of a control block. Any bytes at all give a snapshot or an error.
fn parse_control(buf: &[u8], h: &HeaderInfo, expected_format: u32) -> Result<RingSnapshot, &'static str> {
    if buf.len() < std::mem::size_of::<Control>() {
        return Err("control block truncated");
    }
    let cfg: Config = bytemuck::pod_read_unaligned(buf.get(..std::mem::size_of::<Config>()).ok_or("truncated")?);
    cfg.validate(h.payload_len, h.mirror_len)?;
    if cfg.format != expected_format {
        return Err("the ring's record format differs from the segment's kind");
    }
    if cfg.format == FORMAT_SLOTS && cfg.item_size != h.fingerprint.size {
        return Err("the queue's slot size differs from its payload type's size");
    }
    let side = |side_at: usize| -> Result<(u32, [u64; 5]), &'static str> {
        let word = u32_at(buf, side_at + std::mem::offset_of!(Side, lock))?;
        let counters = [
            u64_at(buf, side_at + std::mem::offset_of!(Side, messages))?,
            u64_at(buf, side_at + std::mem::offset_of!(Side, bytes))?,
            u64_at(buf, side_at + std::mem::offset_of!(Side, parks))?,
            u64_at(buf, side_at + std::mem::offset_of!(Side, recoveries))?,
            u64_at(buf, side_at + std::mem::offset_of!(Side, yields))?,
        ];
        Ok((word, counters))
    };
    let (send_word, s) = side(std::mem::offset_of!(Control, send))?;
    let (recv_word, r) = side(std::mem::offset_of!(Control, recv))?;
    let tail = u64_at(buf, std::mem::offset_of!(Control, tail))?;
    let head = u64_at(buf, std::mem::offset_of!(Control, head))?;
    if tail.abs_diff(head) > cfg.capacity {
        return Err("head and tail are more than a capacity apart");
    }
    let ms = std::mem::offset_of!(Control, membership);
    let gone = u32_at(buf, ms + std::mem::offset_of!(MembershipHeader, gone))?;
    let high_water = u32_at(buf, ms + std::mem::offset_of!(MembershipHeader, high_water))?;
    if high_water > cfg.max_members {
        return Err("member table high-water mark past the table's size");
    }
    if gone & !(SENDERS_GONE | RECEIVERS_GONE | SENDERS_EVER | RECEIVERS_EVER) != 0 {
        return Err("unknown membership flags");
    }
    let table = (high_water as usize).min(MAX_MEMBERS);

    let ns = h.pid_namespace;
    let mut members = Vec::new();
    let (mut sa, mut sd, mut ra, mut rd) = (0u32, 0u32, 0u32, 0u32);
    for slot in 0..table {
        let at = std::mem::offset_of!(Control, members) + slot * std::mem::size_of::<Member>();
        let word = u32_at(buf, at + std::mem::offset_of!(Member, pid))?;
        if word == 0 {
            continue;
        }
        // `CLAIMING | pid`, `REAPING | pid` (in transition by `pid`), or a member's pid.
        let pid = word & !TRANSIENT;
        if pid == 0 || pid >= PID_MAX {
            return Err("member pid out of range");
        }
        let senders = u32_at(buf, at + std::mem::offset_of!(Member, senders))?;
        let receivers = u32_at(buf, at + std::mem::offset_of!(Member, receivers))?;
        let generation = u32_at(buf, at + std::mem::offset_of!(Member, generation))?;
        let start_time = u64_at(buf, at + std::mem::offset_of!(Member, start_time))?;
        let state = match word & TRANSIENT {
            0 => match Liveness::of(pid, start_time, ns) {
                Liveness::Alive => MemberState::Alive,
                Liveness::Dead => MemberState::Dead,
                Liveness::Unknown => MemberState::Unknown,
            },
            // The start time of a process in transition is not recorded: by pid alone, as the
            // sweep does.
            CLAIMING => MemberState::Joining(Liveness::of(pid, 0, ns)),
            REAPING => MemberState::Reaping(Liveness::of(pid, 0, ns)),
            _ => return Err("member entry both joining and reaping"),
        };
        // As the engine counts (`live_count`): an entry being reaped counts no handles; one being
        // joined counts its handles, dead ones once its joiner is dead (the sweep reclaims it).
        match state {
            MemberState::Alive | MemberState::Unknown => {
                sa = sa.saturating_add(senders);
                ra = ra.saturating_add(receivers);
            }
            MemberState::Joining(l) if l != Liveness::Dead => {
                sa = sa.saturating_add(senders);
                ra = ra.saturating_add(receivers);
            }
            MemberState::Dead | MemberState::Joining(_) => {
                sd = sd.saturating_add(senders);
                rd = rd.saturating_add(receivers);
            }
            MemberState::Reaping(_) => {}
        }
        // `slot` is below MAX_MEMBERS (256).
        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
        members.push(MemberSnapshot { slot, pid, generation, start_time, senders, receivers, state });
    }
    // The member a lock's owner token names, as the engine's lockers find it (`holder_entry`): the
    // entry must still have the token's generation and belong to a member, not be in transition.
    let holder = |slot: usize, generation: u32| {
        members.iter().find(|m| m.slot as usize == slot && m.generation == generation).and_then(|m| match m.state {
            MemberState::Alive => Some((m.pid, Liveness::Alive)),
            MemberState::Dead => Some((m.pid, Liveness::Dead)),
            MemberState::Unknown => Some((m.pid, Liveness::Unknown)),
            MemberState::Joining(_) | MemberState::Reaping(_) => None,
        })
    };
    let send_lock = lock_state(send_word, holder);
    let recv_lock = lock_state(recv_word, holder);
    let slots = cfg.format == FORMAT_SLOTS;
    let (depth, used) = if slots {
        (tail.saturating_sub(head), tail.saturating_sub(head))
    } else {
        (s[0].saturating_sub(r[0]), tail.saturating_sub(head))
    };
    let stats = Stats {
        sent: s[0],
        received: r[0],
        bytes_sent: s[1],
        bytes_received: r[1],
        send_parks: s[2],
        recv_parks: r[2],
        send_yields: s[4],
        recv_yields: r[4],
        send_recoveries: s[3],
        recv_recoveries: r[3],
        senders: sa.saturating_add(sd),
        receivers: ra.saturating_add(rd),
    };
    Ok(RingSnapshot {
        slots,
        capacity: cfg.capacity,
        item_size: cfg.item_size,
        max_members: cfg.max_members,
        ring_id: cfg.ring_id,
        head,
        tail,
        depth,
        used,
        stats,
        send_lock,
        recv_lock,
        members,
        senders_alive: sa,
        senders_dead: sd,
        receivers_alive: ra,
        receivers_dead: rd,
        senders_gone: gone & SENDERS_GONE != 0,
        receivers_gone: gone & RECEIVERS_GONE != 0,
    })
}

/// Whether a segment can still be used by anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Someone alive may use it: the reason says who.
    InUse(String),
    /// Its creator, every member and every user is dead: [`Scan::sweep`] removes it.
    Abandoned,
    /// It cannot be told (corrupted, unreadable, another pid namespace): left alone.
    Unknown(String),
}

/// One segment as the inspector shows it.
#[derive(Debug)]
pub struct SegmentReport {
    /// The file and its header.
    pub segment: ScannedSegment,
    /// For rings and queues: the control block, or why it cannot be read.
    pub ring: Option<Result<RingSnapshot, &'static str>>,
    /// Live processes (this one left out) with the file open or mapped, as `/proc` shows.
    pub users: Vec<u32>,
    /// Whether anyone may still use it.
    pub verdict: Verdict,
    /// Processes whose open and mapped files could not be read (another user's, without
    /// privilege): `users` cannot name them. Members of a ring are known from its table anyway.
    pub proc_unreadable: usize,
}

impl SegmentReport {
    fn new(segment: ScannedSegment, proc_users: &ProcUsers) -> SegmentReport {
        let ring = match &segment.header {
            Ok(h) if matches!(h.kind, SegmentKind::Ring | SegmentKind::Queue) => Some(read_ring(&segment)),
            _ => None,
        };
        let users = proc_users.of(segment.file.dev, segment.file.ino).to_vec();
        let verdict = verdict(&segment, ring.as_ref(), &users);
        SegmentReport { segment, ring, users, verdict, proc_unreadable: proc_users.unreadable }
    }
}

fn verdict(seg: &ScannedSegment, ring: Option<&Result<RingSnapshot, &'static str>>, users: &[u32]) -> Verdict {
    let h = match &seg.header {
        Ok(h) => h,
        Err(p) => return Verdict::Unknown(p.to_string()),
    };
    if !scan::same_pid_namespace(h.pid_namespace) {
        return Verdict::Unknown("made in another pid namespace: its pids mean nothing here".into());
    }
    if seg.creator() != Liveness::Dead {
        return Verdict::InUse(format!("its creator, pid {}, is alive", h.creator_pid));
    }
    if let Some(&pid) = users.first() {
        return Verdict::InUse(format!("pid {pid} has it open or mapped"));
    }
    match ring {
        // Not initialized: the creator (dead) never published it, so nobody could have joined.
        Some(Err(_)) if !h.ready => Verdict::Abandoned,
        Some(Err(reason)) => Verdict::Unknown(format!("corrupted: {reason}")),
        Some(Ok(r)) => members_verdict(r),
        None => Verdict::Abandoned,
    }
}

/// Whether a ring's members keep it, its creator being dead and nobody else having it open.
fn members_verdict(r: &RingSnapshot) -> Verdict {
    // A dead process's transition is reclaimed by the next sweep: it keeps nothing.
    let keeps = |m: &&MemberSnapshot| match m.state {
        MemberState::Dead | MemberState::Joining(Liveness::Dead) | MemberState::Reaping(Liveness::Dead) => false,
        MemberState::Alive | MemberState::Unknown | MemberState::Joining(_) | MemberState::Reaping(_) => true,
    };
    match r.members.iter().find(keeps) {
        Some(m) => match m.state {
            MemberState::Joining(_) => Verdict::InUse(format!("pid {} is joining it", m.pid)),
            MemberState::Reaping(_) => Verdict::InUse(format!("pid {} is sweeping its member table", m.pid)),
            _ => Verdict::InUse(format!("member pid {} is alive", m.pid)),
        },
        None => Verdict::Abandoned,
    }
}

/// What the sweep did (or would do) with one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SweepAction {
    /// Dry run: it is abandoned and would be removed.
    WouldRemove,
    /// It was abandoned, and is removed.
    Removed,
    /// It is not abandoned (or turned out not to be on the second look): the reason.
    Kept(String),
    /// It disappeared meanwhile (someone else removed it).
    Vanished,
    /// Removing it failed (permission, say): the reason.
    Failed(String),
}

/// One segment's sweep outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepOutcome {
    /// The segment's name.
    pub name: String,
    /// What happened.
    pub action: SweepAction,
}

/// How to look for segments: which directory, which names.
#[derive(Clone, Debug)]
pub struct Scan {
    dir: PathBuf,
    prefix: Option<String>,
    include_unreadable: bool,
    grace: Duration,
}

impl Default for Scan {
    fn default() -> Self {
        Scan::new()
    }
}

impl Scan {
    /// Every segment in `/dev/shm`.
    pub fn new() -> Scan {
        Scan { dir: PathBuf::from(SHM_DIR), prefix: None, include_unreadable: false, grace: Duration::from_millis(20) }
    }

    /// Another directory (a tmpfs or hugetlbfs mount holding file-backed segments). Made
    /// absolute and free of links, so that `/proc`'s paths of open and mapped files compare.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        self.dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        self
    }

    /// Only names that start with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Also list regular files that could not be opened (they may be another user's segments).
    pub fn include_unreadable(mut self, yes: bool) -> Self {
        self.include_unreadable = yes;
        self
    }

    fn wanted(&self, name: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| name.starts_with(p))
    }

    /// Every ringpool segment found, with its control block (rings and queues) and verdict.
    pub fn run(&self) -> std::io::Result<Vec<SegmentReport>> {
        let users = ProcUsers::collect(&self.dir);
        Ok(scan::scan_dir(&self.dir, self.include_unreadable)?
            .into_iter()
            .filter(|s| self.wanted(s.name()))
            .map(|s| SegmentReport::new(s, &users))
            .collect())
    }

    /// One segment by name; `None` if there is no such file or it is not a ringpool segment.
    pub fn one(&self, name: &str) -> Option<SegmentReport> {
        let seg = scan::scan_one(&self.dir, name, true)?;
        Some(SegmentReport::new(seg, &ProcUsers::collect(&self.dir)))
    }

    /// Removes every abandoned segment (see the [module docs](self) for what that means and why
    /// this cannot remove a segment that a live process is opening); with `dry_run`, only says
    /// which it would remove. Answers one outcome per segment found.
    pub fn sweep(&self, dry_run: bool) -> std::io::Result<Vec<SweepOutcome>> {
        let reports = self.run()?;
        let mut out = Vec::with_capacity(reports.len());
        for r in reports {
            let name = r.segment.name().to_owned();
            let action = match (&r.verdict, dry_run) {
                (Verdict::InUse(why) | Verdict::Unknown(why), _) => SweepAction::Kept(why.clone()),
                (Verdict::Abandoned, true) => SweepAction::WouldRemove,
                (Verdict::Abandoned, false) => self.remove(&r),
            };
            out.push(SweepOutcome { name, action });
        }
        Ok(out)
    }

    /// Removes one segment found by [`run`](Self::run) if it is still abandoned: renamed aside
    /// (no new opener can find it), examined again after a grace period through the descriptor
    /// the scan holds, with `/proc` read again, and only then unlinked; otherwise renamed back and
    /// [`SweepAction::Kept`] with the reason. A segment whose report was not `Abandoned` is kept
    /// without being touched. The name is only removed if it still names the file scanned.
    pub fn remove_if_abandoned(&self, r: &SegmentReport) -> SweepAction {
        match &r.verdict {
            Verdict::Abandoned => self.remove(r),
            Verdict::InUse(why) | Verdict::Unknown(why) => SweepAction::Kept(why.clone()),
        }
    }

    /// Hides, re-checks, then unlinks one abandoned segment.
    fn remove(&self, r: &SegmentReport) -> SweepAction {
        let name = r.segment.name();
        let from = self.dir.join(name);
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let hidden = self.dir.join(format!(
            ".ringpool-sweep-{}-{}",
            crate::sys::current_pid(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let flags = nix::fcntl::RenameFlags::RENAME_NOREPLACE;
        let cwd = nix::fcntl::AT_FDCWD;
        match nix::fcntl::renameat2(cwd, &from, cwd, &hidden, flags) {
            Ok(()) => {}
            Err(nix::errno::Errno::ENOENT) => return SweepAction::Vanished,
            Err(e) => return SweepAction::Failed(format!("cannot rename it aside: {e}")),
        }
        let put_back = |why: String| match nix::fcntl::renameat2(cwd, &hidden, cwd, &from, flags) {
            Ok(()) => SweepAction::Kept(why),
            Err(e) => SweepAction::Failed(format!(
                "{why}, but it could not be renamed back from {} ({e}): rename it by hand",
                hidden.display()
            )),
        };
        // Was it the same file that was scanned (not a newer segment made under the name)?
        match std::fs::symlink_metadata(&hidden) {
            Ok(m) if (m.dev(), m.ino()) == (r.segment.file.dev, r.segment.file.ino) => {}
            Ok(_) => return put_back("the name was taken by a newer segment meanwhile".into()),
            Err(e) => return SweepAction::Failed(format!("renamed aside, then lost: {e}")),
        }
        // An opener inside shm_open when the name moved has its descriptor after this.
        std::thread::sleep(self.grace);
        let again = match r.segment.reread() {
            Ok(seg) => SegmentReport::new(seg, &ProcUsers::collect(&self.dir)),
            Err(e) => return put_back(format!("it changed on a second look: {e}")),
        };
        if again.verdict != Verdict::Abandoned {
            let why = match again.verdict {
                Verdict::InUse(w) | Verdict::Unknown(w) => w,
                Verdict::Abandoned => String::new(),
            };
            return put_back(format!("on a second look: {why}"));
        }
        match std::fs::remove_file(&hidden) {
            Ok(()) => SweepAction::Removed,
            Err(e) => SweepAction::Failed(format!("cannot unlink {}: {e}", hidden.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::RobustMutex;

    fn word_of(m: &RobustMutex) -> u32 {
        // SAFETY: RobustMutex is repr(C) around one AtomicU32; reading it atomically as one is
        // reading the same word the mutex reads.
        unsafe { &*(m as *const RobustMutex).cast::<std::sync::atomic::AtomicU32>() }
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn the_lock_word_decodes_as_the_mutex_writes_it() {
        let m = RobustMutex::new();
        let me = crate::sys::current_pid();
        let member = |slot: usize, generation: u32| (slot, generation) == (3, 7);
        let holder = |slot, generation| member(slot, generation).then_some((me, Liveness::Alive));
        assert_eq!(lock_state(word_of(&m), holder), LockState::Free);
        // The ring's lockers use the token of their member entry (slot 3, generation 7 here).
        let token = super::super::membership::token_of(3, 7).unwrap();
        let g = m.try_lock_as(token).unwrap();
        let held = LockState::Held { slot: 3, generation: 7, pid: Some(me), alive: Liveness::Alive };
        assert_eq!(lock_state(word_of(&m), holder), held);
        // The flag bits outside the owner field (waiters) do not change who holds it.
        let flags = !RobustMutex::word_owner(u32::MAX);
        assert_eq!(lock_state(word_of(&m) | flags, holder), held);
        // A token whose entry no longer has its generation: no legitimate holder, seen dead.
        let stale = lock_state(word_of(&m), |_, _| None);
        assert_eq!(stale, LockState::Held { slot: 3, generation: 7, pid: None, alive: Liveness::Dead });
        drop(g);
        assert_eq!(lock_state(word_of(&m), holder), LockState::Free);
        m.debug_force_owner(u32::MAX);
        assert!(m.is_poisoned());
        assert_eq!(lock_state(word_of(&m), holder), LockState::Poisoned);
        assert_eq!(lock_state(word_of(&m) | flags, holder), LockState::Poisoned);
    }

    /// Whatever a hostile process writes into a control block, decoding it answers (a snapshot
    /// or an error) and never panics, in debug builds (overflow checks) as in release.
    #[test]
    fn any_control_block_bytes_decode_without_panicking() {
        let len = std::mem::size_of::<Control>();
        let page = crate::sys::page_size() as u64;
        let cap = 4096u64;
        let header = |kind, size| HeaderInfo {
            kind,
            fingerprint: crate::segment::Fingerprint { size, align: 8, name_hash: 1 },
            creator_pid: 1,
            pid_namespace: 0,
            total_len: page + super::super::data_offset() + cap * 16,
            payload_offset: page,
            payload_len: super::super::data_offset() + cap * 16,
            mirror_len: 0,
            ready: true,
        };
        let valid_cfg = Config {
            format: FORMAT_SLOTS,
            max_members: 4,
            capacity: cap,
            stride: 16,
            item_size: 8,
            data_offset: super::super::data_offset(),
            ring_id: 7,
        };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut ok, mut refused) = (0, 0);
        for round in 0..2000 {
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Most rounds keep a valid config so that the checks after it are reached; some
            // rounds make the interesting words small (plausible pids, indices near each other).
            if round % 4 != 0 {
                buf[..std::mem::size_of::<Config>()].copy_from_slice(bytemuck::bytes_of(&valid_cfg));
            }
            if round % 3 == 0 {
                for w in buf.chunks_exact_mut(4).skip(12) {
                    let v = (next() % 6) as u32;
                    w.copy_from_slice(&v.to_ne_bytes());
                }
            }
            let h = header(SegmentKind::Queue, 8);
            match parse_control(&buf, &h, FORMAT_SLOTS) {
                Ok(snap) => {
                    ok += 1;
                    assert!(snap.members.len() <= valid_cfg.max_members as usize);
                    assert!(snap.head.abs_diff(snap.tail) <= cap);
                }
                Err(_) => refused += 1,
            }
            assert!(parse_control(&buf[..len / 2], &h, FORMAT_SLOTS).is_err(), "a short copy is refused");
        }
        assert!(ok > 0 && refused > 0, "both outcomes reached: {ok} decoded, {refused} refused");
    }

    #[test]
    fn a_live_ring_reads_back_with_its_members_and_counters() {
        let name = format!("rp-test-inspect-{}", std::process::id());
        let ring = crate::Ring::builder().capacity(4096).create(&name).unwrap();
        let tx = ring.sender().unwrap();
        let rx = ring.receiver().unwrap();
        let _rx2 = rx.clone();
        tx.send(b"abc").unwrap();
        tx.send(b"defgh").unwrap();
        rx.recv().unwrap();
        let report = Scan::new().prefix(name.clone()).one(&name).unwrap();
        let snap = report.ring.unwrap().unwrap();
        assert!(!snap.slots);
        assert_eq!(snap.capacity, 4096);
        assert_eq!((snap.stats.sent, snap.stats.received, snap.depth), (2, 1, 1));
        assert_eq!((snap.senders_alive, snap.receivers_alive, snap.senders_dead, snap.receivers_dead), (1, 2, 0, 0));
        assert_eq!(snap.members.len(), 1);
        assert_eq!(snap.members[0].pid, crate::sys::current_pid());
        assert_eq!(snap.send_lock, LockState::Free);
        assert!(matches!(report.verdict, Verdict::InUse(_)));
        let outcomes = Scan::new().prefix(name.clone()).sweep(false).unwrap();
        assert!(matches!(outcomes[..], [SweepOutcome { action: SweepAction::Kept(_), .. }]), "{outcomes:?}");
        assert!(crate::Segment::exists(&name));
    }

    /// The current layout: a lock word holds a member-table slot and generation, not a pid; a
    /// member entry in transition holds `CLAIMING | pid` or `REAPING | pid`. A copy of a real
    /// ring's control block, edited as the engine writes it, decodes to the right pid and state.
    #[test]
    fn owner_tokens_and_transient_entries_decode_to_their_processes() {
        let name = format!("rp-test-inspect-tok-{}", std::process::id());
        let ring = crate::Ring::builder().capacity(4096).create(&name).unwrap();
        let _tx = ring.sender().unwrap();
        let seg = scan::scan_one(Path::new(SHM_DIR), &name, false).unwrap();
        let h = *seg.header.as_ref().unwrap();
        let mut buf = vec![0u8; std::mem::size_of::<Control>()];
        seg.read_payload(0, &mut buf).unwrap();
        let me = crate::sys::current_pid();
        let entry = std::mem::offset_of!(Control, members);
        let pid_at = entry + std::mem::offset_of!(Member, pid);
        let gen_at = entry + std::mem::offset_of!(Member, generation);
        let lock_at = std::mem::offset_of!(Control, send) + std::mem::offset_of!(Side, lock);
        let generation = u32_at(&buf, gen_at).unwrap();
        assert_eq!(u32_at(&buf, pid_at).unwrap(), me);
        let put = |buf: &mut Vec<u8>, at: usize, v: u32| buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());

        // Held by this process's token: its pid, alive.
        let token = super::super::membership::token_of(0, generation).unwrap().get();
        put(&mut buf, lock_at, token);
        let snap = parse_control(&buf, &h, FORMAT_BYTES).unwrap();
        let held = LockState::Held { slot: 0, generation, pid: Some(me), alive: Liveness::Alive };
        assert_eq!(snap.send_lock, held);
        assert_eq!(snap.recv_lock, LockState::Free);
        assert_eq!(snap.members[0].generation, generation);

        // The entry was claimed again since (a newer generation): the token names nobody.
        let newer = super::super::membership::token_of(0, generation + 1).unwrap().get();
        put(&mut buf, gen_at, generation + 1);
        let snap = parse_control(&buf, &h, FORMAT_BYTES).unwrap();
        assert_eq!(snap.send_lock, LockState::Held { slot: 0, generation, pid: None, alive: Liveness::Dead });
        put(&mut buf, lock_at, newer);
        let snap = parse_control(&buf, &h, FORMAT_BYTES).unwrap();
        assert!(matches!(snap.send_lock, LockState::Held { pid: Some(p), alive: Liveness::Alive, .. } if p == me));
        // A token naming a free entry (past the table's high-water mark) names nobody either.
        put(&mut buf, lock_at, super::super::membership::token_of(5, 1).unwrap().get());
        let snap = parse_control(&buf, &h, FORMAT_BYTES).unwrap();
        assert_eq!(snap.send_lock, LockState::Held { slot: 5, generation: 1, pid: None, alive: Liveness::Dead });
        put(&mut buf, lock_at, newer);

        // A member entry being joined by this (live) process: decoded, not corrupted; in use. Its
        // lock token names no member while it is in transition.
        put(&mut buf, pid_at, CLAIMING | me);
        let snap = parse_control(&buf, &h, FORMAT_BYTES).unwrap();
        assert_eq!(snap.members.len(), 1);
        assert_eq!((snap.members[0].pid, snap.members[0].state), (me, MemberState::Joining(Liveness::Alive)));
        assert_eq!((snap.senders_alive, snap.senders_dead), (1, 0));
        assert!(matches!(snap.send_lock, LockState::Held { pid: None, alive: Liveness::Dead, .. }));
        assert!(matches!(members_verdict(&snap), Verdict::InUse(why) if why.contains("joining")));
        // Being reaped by this process: its handles are counted nowhere (as the engine counts).
        put(&mut buf, pid_at, REAPING | me);
        let snap = parse_control(&buf, &h, FORMAT_BYTES).unwrap();
        assert_eq!(snap.members[0].state, MemberState::Reaping(Liveness::Alive));
        assert_eq!((snap.senders_alive, snap.senders_dead), (0, 0));
        assert!(matches!(members_verdict(&snap), Verdict::InUse(why) if why.contains("sweeping")));
        // In transition by a dead process: reclaimed by the next sweep, so it keeps nothing.
        let dead = dead_pid();
        put(&mut buf, pid_at, CLAIMING | dead);
        let snap = parse_control(&buf, &h, FORMAT_BYTES).unwrap();
        assert_eq!((snap.members[0].pid, snap.members[0].state), (dead, MemberState::Joining(Liveness::Dead)));
        assert_eq!((snap.senders_alive, snap.senders_dead), (0, 1));
        assert_eq!(members_verdict(&snap), Verdict::Abandoned);
        // Both transient flags, or a flag without a pid: no engine writes that.
        put(&mut buf, pid_at, CLAIMING | REAPING | me);
        assert_eq!(parse_control(&buf, &h, FORMAT_BYTES), Err("member entry both joining and reaping"));
        put(&mut buf, pid_at, CLAIMING);
        assert_eq!(parse_control(&buf, &h, FORMAT_BYTES), Err("member pid out of range"));
        drop(seg);
        drop(ring);
    }

    /// The pid of a child that has exited and been waited for.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }
}
