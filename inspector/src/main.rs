//! `ringpool`: list, inspect and clean up ringpool's shared-memory segments.
//!
//! ```text
//! ringpool ls                 # every ringpool segment in /dev/shm, one line each
//! ringpool inspect NAME       # one in full: header, control block, members, locks, counters
//! ringpool clean              # what a sweep would remove (a dry run)
//! ringpool clean --yes        # remove the segments whose creator and every member are dead
//! ```
//!
//! `--json` on each prints one JSON document instead. The work is done by the library
//! (`ringpool::ring::inspect`); this is its face.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringpool::ring::inspect::{
    LockState, MemberState, RingSnapshot, Scan, SegmentReport, SweepAction, SweepOutcome, Verdict,
};
use ringpool::segment::scan::{HeaderProblem, Liveness, type_name_of};
use serde_json::{Value, json};

/// List, inspect and clean up ringpool's shared-memory segments.
#[derive(Debug, Parser)]
#[command(name = "ringpool", version, about)]
struct Cli {
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The directory to look in.
    #[arg(long, global = true, default_value = "/dev/shm")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List ringpool's segments: kind, payload type, capacity, depth, members alive and dead,
    /// creator, owner, mode, and whether anyone may still use each.
    Ls {
        /// Only names that start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Also list files that could not be opened to tell (another user's, say).
        #[arg(long)]
        all: bool,
    },
    /// Show one segment in full, with its counters, locks and member table.
    Inspect {
        /// The segment's name (under the directory, without a leading `/`).
        name: String,
    },
    /// Remove the segments whose creator and every member are dead, and that no live process has
    /// open or mapped. A dry run unless `--yes`; never a segment with a live member.
    Clean {
        /// Remove them (without it, only say which would go).
        #[arg(long)]
        yes: bool,
        /// Only names that start with this.
        #[arg(long)]
        prefix: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut scan = Scan::new().dir(&cli.dir);
    match cli.command {
        Command::Ls { prefix, all } => {
            if let Some(p) = prefix {
                scan = scan.prefix(p);
            }
            let reports = match scan.include_unreadable(all).run() {
                Ok(r) => r,
                Err(e) => return fail(cli.json, &format!("cannot read {}: {e}", cli.dir.display())),
            };
            if cli.json {
                print_json(&Value::Array(reports.iter().map(|r| summary(r, false)).collect()));
            } else {
                print_table(&reports);
            }
            ExitCode::SUCCESS
        }
        Command::Inspect { name } => {
            let Some(report) = scan.one(&name) else {
                return fail(cli.json, &format!("no ringpool segment named {name:?} in {}", cli.dir.display()));
            };
            if cli.json {
                print_json(&summary(&report, true));
            } else {
                print_full(&report);
            }
            ExitCode::SUCCESS
        }
        Command::Clean { yes, prefix } => {
            if let Some(p) = prefix {
                scan = scan.prefix(p);
            }
            let outcomes = match scan.sweep(!yes) {
                Ok(o) => o,
                Err(e) => return fail(cli.json, &format!("cannot read {}: {e}", cli.dir.display())),
            };
            let failed = outcomes.iter().any(|o| matches!(o.action, SweepAction::Failed(_)));
            if cli.json {
                print_json(&json!({
                    "dry_run": !yes,
                    "outcomes": outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
                }));
            } else {
                print_outcomes(&outcomes, yes);
            }
            if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
    }
}

fn fail(json: bool, msg: &str) -> ExitCode {
    if json {
        print_json(&json!({ "error": msg }));
    }
    eprintln!("ringpool: {msg}");
    ExitCode::FAILURE
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("ringpool: cannot print JSON: {e}"),
    }
}

// ----- the words used in text and JSON alike ------------------------------------------------

fn status(r: &SegmentReport) -> &'static str {
    match (&r.segment.header, &r.ring) {
        (Err(HeaderProblem::Unreadable(_)), _) => "unreadable",
        (Err(HeaderProblem::UnsupportedVersion { .. }), _) => "unsupported_version",
        (Err(_), _) => "corrupted",
        (Ok(h), _) if !h.ready => "not_ready",
        (Ok(_), Some(Err(_))) => "corrupted",
        (Ok(_), _) => "ok",
    }
}

fn problem(r: &SegmentReport) -> Option<String> {
    match (&r.segment.header, &r.ring) {
        (Err(p), _) => Some(p.to_string()),
        (Ok(_), Some(Err(reason))) => Some((*reason).to_owned()),
        _ => None,
    }
}

fn liveness(l: Liveness) -> Value {
    match l {
        Liveness::Alive => Value::Bool(true),
        Liveness::Dead => Value::Bool(false),
        Liveness::Unknown => Value::Null,
    }
}

fn verdict_words(v: &Verdict) -> (&'static str, Option<&str>) {
    match v {
        Verdict::InUse(why) => ("in_use", Some(why)),
        Verdict::Abandoned => ("abandoned", None),
        Verdict::Unknown(why) => ("unknown", Some(why)),
    }
}

fn member_state(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Dead => "dead",
        MemberState::Joining(_) => "joining",
        MemberState::Reaping(_) => "reaping",
        MemberState::Unknown => "unknown",
    }
}

/// Whether the process an entry names is alive: the member, or the process in transition.
fn member_alive(s: MemberState) -> Liveness {
    match s {
        MemberState::Alive => Liveness::Alive,
        MemberState::Dead => Liveness::Dead,
        MemberState::Unknown => Liveness::Unknown,
        MemberState::Joining(l) | MemberState::Reaping(l) => l,
    }
}

fn lock_json(l: LockState) -> Value {
    match l {
        LockState::Free => json!({ "state": "free" }),
        LockState::Held { slot, generation, pid, alive } => json!({
            "state": "held",
            "pid": pid,
            "alive": liveness(alive),
            "member_slot": slot,
            "generation": generation,
        }),
        LockState::Poisoned => json!({ "state": "poisoned" }),
    }
}

fn owner_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

fn summary(r: &SegmentReport, full: bool) -> Value {
    let seg = &r.segment;
    let (verdict, reason) = verdict_words(&r.verdict);
    let mut v = json!({
        "name": seg.name(),
        "path": seg.path().display().to_string(),
        "status": status(r),
        "problem": problem(r),
        "owner_uid": seg.file.uid,
        "owner": owner_name(seg.file.uid),
        "mode": format!("{:04o}", seg.file.mode),
        "size": seg.file.size,
        "users": r.users,
        "proc_unreadable": r.proc_unreadable,
        "verdict": verdict,
        "reason": reason,
    });
    if let Ok(h) = &seg.header {
        v["kind"] = json!(h.kind.to_string());
        v["payload_type"] = json!({
            "size": h.fingerprint.size,
            "align": h.fingerprint.align,
            "name_hash": format!("{:016x}", h.fingerprint.name_hash),
            "name": type_name_of(&h.fingerprint),
        });
        v["creator_pid"] = json!(h.creator_pid);
        v["creator_alive"] = liveness(seg.creator());
        v["ready"] = json!(h.ready);
        if full {
            v["header"] = json!({
                "total_len": h.total_len,
                "payload_offset": h.payload_offset,
                "payload_len": h.payload_len,
                "mirror_len": h.mirror_len,
                "pid_namespace": h.pid_namespace,
            });
        }
    }
    if let Some(Ok(s)) = &r.ring {
        v["capacity"] = json!(s.capacity);
        v["capacity_unit"] = json!(if s.slots { "slots" } else { "bytes" });
        v["item_size"] = json!(s.item_size);
        v["depth"] = json!(s.depth);
        v["senders"] = json!({ "alive": s.senders_alive, "dead": s.senders_dead });
        v["receivers"] = json!({ "alive": s.receivers_alive, "dead": s.receivers_dead });
        if full {
            v["ring"] = ring_json(s);
        }
    }
    v
}

fn ring_json(s: &RingSnapshot) -> Value {
    json!({
        "ring_id": format!("{:016x}", s.ring_id),
        "max_members": s.max_members,
        "head": s.head,
        "tail": s.tail,
        "used": s.used,
        "send_lock": lock_json(s.send_lock),
        "recv_lock": lock_json(s.recv_lock),
        "senders_gone": s.senders_gone,
        "receivers_gone": s.receivers_gone,
        "stats": {
            "sent": s.stats.sent,
            "received": s.stats.received,
            "bytes_sent": s.stats.bytes_sent,
            "bytes_received": s.stats.bytes_received,
            "send_parks": s.stats.send_parks,
            "recv_parks": s.stats.recv_parks,
            "send_yields": s.stats.send_yields,
            "recv_yields": s.stats.recv_yields,
            "send_recoveries": s.stats.send_recoveries,
            "recv_recoveries": s.stats.recv_recoveries,
        },
        "members": s.members.iter().map(|m| json!({
            "slot": m.slot,
            "pid": m.pid,
            "generation": m.generation,
            "start_time": m.start_time,
            "senders": m.senders,
            "receivers": m.receivers,
            "state": member_state(m.state),
            "alive": liveness(member_alive(m.state)),
        })).collect::<Vec<_>>(),
    })
}

fn outcome_json(o: &SweepOutcome) -> Value {
    let (action, reason) = match &o.action {
        SweepAction::WouldRemove => ("would_remove", None),
        SweepAction::Removed => ("removed", None),
        SweepAction::Kept(why) => ("kept", Some(why.as_str())),
        SweepAction::Vanished => ("vanished", None),
        SweepAction::Failed(why) => ("failed", Some(why.as_str())),
    };
    json!({ "name": o.name, "action": action, "reason": reason })
}

// ----- text ---------------------------------------------------------------------------------

fn type_text(r: &SegmentReport) -> String {
    match &r.segment.header {
        Ok(h) => type_name_of(&h.fingerprint).unwrap_or_else(|| {
            format!("{}B/{} #{:08x}", h.fingerprint.size, h.fingerprint.align, h.fingerprint.name_hash >> 32)
        }),
        Err(_) => "-".into(),
    }
}

/// A name as text output shows it: control characters escaped, so that a hostile file name cannot
/// drive the terminal.
fn shown(name: &str) -> String {
    if name.chars().any(char::is_control) {
        name.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        name.to_owned()
    }
}

fn print_table(reports: &[SegmentReport]) {
    if reports.is_empty() {
        println!("no ringpool segments");
        return;
    }
    let mut rows = vec![
        ["NAME", "KIND", "TYPE", "CAPACITY", "DEPTH", "SENDERS", "RECEIVERS", "CREATOR", "OWNER", "MODE", "STATE"]
            .map(String::from),
    ];
    for r in reports {
        let seg = &r.segment;
        let (kind, creator) = match &seg.header {
            Ok(h) => {
                let alive = match seg.creator() {
                    Liveness::Alive => "alive",
                    Liveness::Dead => "dead",
                    Liveness::Unknown => "?",
                };
                (h.kind.to_string(), format!("{} {alive}", h.creator_pid))
            }
            Err(_) => ("-".into(), "-".into()),
        };
        let (cap, depth, senders, receivers) = match &r.ring {
            Some(Ok(s)) => (
                if s.slots { format!("{} slots", s.capacity) } else { format!("{} B", s.capacity) },
                s.depth.to_string(),
                format!("{}/{}", s.senders_alive, s.senders_dead),
                format!("{}/{}", s.receivers_alive, s.receivers_dead),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let owner = owner_name(seg.file.uid).unwrap_or_else(|| seg.file.uid.to_string());
        let state = match status(r) {
            "ok" => verdict_words(&r.verdict).0.to_owned(),
            other => other.to_owned(),
        };
        rows.push([
            shown(seg.name()),
            kind,
            type_text(r),
            cap,
            depth,
            senders,
            receivers,
            creator,
            owner,
            format!("{:04o}", seg.file.mode),
            state,
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    println!("(senders, receivers: live/dead; `ringpool clean` removes the abandoned segments)");
}

fn print_full(r: &SegmentReport) {
    let seg = &r.segment;
    println!("{}  ({})", shown(seg.name()), shown(&seg.path().display().to_string()));
    let owner = owner_name(seg.file.uid).unwrap_or_else(|| seg.file.uid.to_string());
    println!("  file:      {} bytes, owner {owner}, mode {:04o}", seg.file.size, seg.file.mode);
    println!("  status:    {}", status(r));
    if let Some(p) = problem(r) {
        println!("  problem:   {p}");
    }
    if let Ok(h) = &seg.header {
        let alive = match seg.creator() {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown (another pid namespace)",
        };
        println!("  kind:      {}", h.kind);
        println!("  type:      {} ({})", type_text(r), h.fingerprint);
        println!("  creator:   pid {} ({alive})", h.creator_pid);
        println!(
            "  layout:    payload {} bytes at {}, mirrored tail {}",
            h.payload_len, h.payload_offset, h.mirror_len
        );
    }
    if let Some(Ok(s)) = &r.ring {
        let unit = if s.slots { "slots" } else { "bytes" };
        println!("  capacity:  {} {unit}, item size {}, ring id {:016x}", s.capacity, s.item_size, s.ring_id);
        println!("  depth:     {} (head {}, tail {}, {} {unit} used)", s.depth, s.head, s.tail, s.used);
        println!(
            "  senders:   {} alive, {} dead{}",
            s.senders_alive,
            s.senders_dead,
            if s.senders_gone { " (all gone)" } else { "" }
        );
        println!(
            "  receivers: {} alive, {} dead{}",
            s.receivers_alive,
            s.receivers_dead,
            if s.receivers_gone { " (all gone)" } else { "" }
        );
        let lock = |l: LockState| match l {
            LockState::Free => "free".to_owned(),
            LockState::Held { slot, generation, pid: Some(pid), alive } => format!(
                "held by pid {pid} (member [{slot}] generation {generation}, {})",
                match alive {
                    Liveness::Alive => "alive",
                    Liveness::Dead => "dead: the next locker takes it over",
                    Liveness::Unknown => "unknown",
                }
            ),
            LockState::Held { slot, generation, pid: None, .. } => format!(
                "held by a departed member (entry [{slot}] is no longer generation {generation}): \
                 the next locker takes it over"
            ),
            LockState::Poisoned => "POISONED".to_owned(),
        };
        println!("  locks:     send {}, receive {}", lock(s.send_lock), lock(s.recv_lock));
        let st = &s.stats;
        println!(
            "  sent:      {} messages, {} bytes; {} parks, {} yields, {} lock recoveries",
            st.sent, st.bytes_sent, st.send_parks, st.send_yields, st.send_recoveries
        );
        println!(
            "  received:  {} messages, {} bytes; {} parks, {} yields, {} lock recoveries",
            st.received, st.bytes_received, st.recv_parks, st.recv_yields, st.recv_recoveries
        );
        println!("  members:   {} of {}", s.members.len(), s.max_members);
        for m in &s.members {
            println!(
                "    [{}] pid {:<8} {:<8} senders {} receivers {}",
                m.slot,
                m.pid,
                match m.state {
                    MemberState::Joining(Liveness::Dead) | MemberState::Reaping(Liveness::Dead) => {
                        format!("{} (its process is dead)", member_state(m.state))
                    }
                    state => member_state(state).to_owned(),
                },
                m.senders,
                m.receivers
            );
        }
    }
    if !r.users.is_empty() {
        println!("  open or mapped by: {:?}", r.users);
    }
    if r.proc_unreadable > 0 {
        println!("  (the open files of {} processes could not be read: run as root to see them)", r.proc_unreadable);
    }
    let (verdict, reason) = verdict_words(&r.verdict);
    match reason {
        Some(why) => println!("  verdict:   {verdict}: {why}"),
        None => println!("  verdict:   {verdict}"),
    }
}

fn print_outcomes(outcomes: &[SweepOutcome], yes: bool) {
    let mut would = 0;
    for o in outcomes {
        match &o.action {
            SweepAction::WouldRemove => {
                would += 1;
                println!("would remove  {}", shown(&o.name));
            }
            SweepAction::Removed => println!("removed       {}", shown(&o.name)),
            SweepAction::Kept(why) => println!("kept          {}: {why}", shown(&o.name)),
            SweepAction::Vanished => println!("gone already  {}", shown(&o.name)),
            SweepAction::Failed(why) => println!("FAILED        {}: {why}", shown(&o.name)),
        }
    }
    if outcomes.is_empty() {
        println!("no ringpool segments");
    }
    if !yes && would > 0 {
        println!("(a dry run: `ringpool clean --yes` removes them)");
    }
}
