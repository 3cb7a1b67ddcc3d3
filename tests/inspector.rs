//! The `ringpool` inspector, run as a user runs it: the built binary against real segments in
//! /dev/shm, made by forked processes that are then SIGKILLed, and against hostile files. Every
//! JSON document it prints is parsed and checked. Each test only looks at names with its own
//! prefix (other tests, and other people's segments, are never touched).

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Child, SharedCounters, run_with_deadline, spawn};
use ringpool::ring::inspect::{Scan, SweepAction, Verdict};
use ringpool::{Queue, Ring};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// Builds the inspector (a workspace member of its own) with this test binary's profile.
fn inspector() -> PathBuf {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::env::current_exe().unwrap();
    let profile_dir = me.parent().and_then(|deps| deps.parent()).unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "ringpool-inspector", "--bin", "ringpool", "--profile", profile])
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run_with_deadline(&mut cmd, Duration::from_secs(900));
    assert!(out.status.success(), "building the inspector failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let exe = profile_dir.join("ringpool");
    assert!(exe.exists(), "{} not found", exe.display());
    exe
}

/// Runs the inspector; answers (exit success, stdout).
fn run(args: &[&str]) -> (bool, String) {
    let exe = inspector();
    let out = run_with_deadline(Command::new(exe).args(args), DEADLINE);
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    if !out.status.success() {
        eprintln!("ringpool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), stdout)
}

fn json(args: &[&str]) -> Value {
    let (ok, out) = run(args);
    assert!(ok, "ringpool {args:?} failed");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ringpool {args:?} printed no JSON ({e}):\n{out}"))
}

fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed in {list:#}"))
}

fn action<'a>(clean: &'a Value, name: &str) -> &'a str {
    clean["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .find(|o| o["name"] == name)
        .and_then(|o| o["action"].as_str())
        .unwrap_or_else(|| panic!("{name} not in {clean:#}"))
}

fn exists(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

/// A forked child that runs `setup` (which must return quickly), raises flag `i` of `flags`,
/// then waits to be killed (exits on its own after the deadline).
fn resident(flags: &SharedCounters, i: usize, setup: impl FnOnce() -> Option<Box<dyn std::any::Any>>) -> Child {
    spawn(move || {
        let Some(held) = setup() else { return 2 };
        flags.get(i).store(1, Ordering::Release);
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(held);
        0
    })
}

fn wait_flag(flags: &SharedCounters, i: usize) {
    let until = Instant::now() + DEADLINE;
    while flags.get(i).load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < until, "child {i} never got ready");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_killed_creator_s_ring_is_cleaned_and_a_live_member_keeps_a_queue() {
    let prefix = format!("rp-test-insp-kill-{}-", std::process::id());
    let ring_name = format!("{prefix}ring");
    let queue_name = format!("{prefix}queue");
    let _cleanup = RemoveByPrefix(prefix.clone());
    let flags = SharedCounters::new(3);

    // A ring whose creator holds a sender and a receiver and three messages: then it is killed.
    let creator = {
        let name = ring_name.clone();
        resident(&flags, 0, move || {
            let ring = Ring::builder().capacity(4096).create(&name).ok()?;
            let tx = ring.sender().ok()?;
            let rx = ring.receiver().ok()?;
            for m in [&b"one"[..], b"two", b"three"] {
                tx.send(m).ok()?;
            }
            Some(Box::new((ring, tx, rx)))
        })
    };
    // A queue whose creator (a sender) is killed while another process keeps a receiver.
    let q_creator = {
        let name = queue_name.clone();
        resident(&flags, 1, move || {
            let q = Queue::<u64>::builder().slots(16).create(&name).ok()?;
            let tx = q.sender().ok()?;
            tx.send(42).ok()?;
            Some(Box::new((q, tx)))
        })
    };
    wait_flag(&flags, 1);
    let q_member = {
        let name = queue_name.clone();
        resident(&flags, 2, move || {
            let q = Queue::<u64>::builder().open(&name).ok()?;
            let rx = q.receiver().ok()?;
            Some(Box::new((q, rx)))
        })
    };
    wait_flag(&flags, 0);
    wait_flag(&flags, 2);
    let member_pid = q_member.pid.as_raw();

    // All alive: in use, and clean keeps both.
    let ls = json(&["ls", "--json", "--prefix", &prefix]);
    assert_eq!(ls.as_array().unwrap().len(), 2, "{ls:#}");
    let r = entry(&ls, &ring_name);
    assert_eq!(
        (r["kind"].as_str(), r["status"].as_str(), r["verdict"].as_str()),
        (Some("ring"), Some("ok"), Some("in_use"))
    );
    assert_eq!(r["creator_alive"], true);
    assert_eq!(r["creator_pid"], creator.pid.as_raw());

    creator.kill();
    q_creator.kill();

    // Creator and every member of the ring dead; the queue's creator dead, a member alive.
    let ls = json(&["ls", "--json", "--prefix", &prefix]);
    let r = entry(&ls, &ring_name);
    assert_eq!(r["creator_alive"], false);
    assert_eq!(r["senders"], serde_json::json!({"alive": 0, "dead": 1}));
    assert_eq!(r["receivers"], serde_json::json!({"alive": 0, "dead": 1}));
    assert_eq!(r["depth"], 3);
    assert_eq!(r["capacity"], 4096);
    assert_eq!(r["capacity_unit"], "bytes");
    assert_eq!(r["mode"], "0600");
    assert_eq!(r["owner_uid"], std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()));
    assert_eq!(r["verdict"], "abandoned", "{r:#}");
    let q = entry(&ls, &queue_name);
    assert_eq!(q["kind"], "queue");
    assert_eq!(q["payload_type"]["name"], "u64");
    assert_eq!(q["payload_type"]["size"], 8);
    assert_eq!(q["creator_alive"], false);
    assert_eq!(q["senders"], serde_json::json!({"alive": 0, "dead": 1}));
    assert_eq!(q["receivers"], serde_json::json!({"alive": 1, "dead": 0}));
    assert_eq!(q["depth"], 1);
    assert_eq!(q["verdict"], "in_use");
    assert!(q["reason"].as_str().unwrap().contains(&member_pid.to_string()), "{q:#}");

    // The full view of the queue: both members, one dead, one alive.
    let full = json(&["inspect", "--json", &queue_name]);
    let members = full["ring"]["members"].as_array().unwrap();
    assert!(members.iter().any(|m| m["pid"] == member_pid && m["state"] == "alive" && m["receivers"] == 1), "{full:#}");
    assert!(members.iter().any(|m| m["state"] == "dead" && m["senders"] == 1), "{full:#}");
    assert_eq!(full["ring"]["stats"]["sent"], 1);
    assert_eq!(full["ring"]["send_lock"]["state"], "free");

    // A dry run removes nothing.
    let dry = json(&["clean", "--json", "--prefix", &prefix]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(action(&dry, &ring_name), "would_remove");
    assert_eq!(action(&dry, &queue_name), "kept");
    assert!(exists(&ring_name) && exists(&queue_name));

    // A live process that maps the dead ring (without joining it) keeps it too.
    {
        let ring = Ring::builder().open(&ring_name).unwrap();
        let ls = json(&["ls", "--json", "--prefix", &prefix]);
        let r = entry(&ls, &ring_name);
        assert_eq!(r["verdict"], "in_use", "{r:#}");
        assert!(r["users"].as_array().unwrap().contains(&Value::from(std::process::id())), "{r:#}");
        let kept = json(&["clean", "--yes", "--json", "--prefix", &prefix]);
        assert_eq!(action(&kept, &ring_name), "kept");
        assert!(exists(&ring_name));
        drop(ring);
    }

    // Cleaning for real: the abandoned ring goes, the queue with a live member stays.
    let done = json(&["clean", "--yes", "--json", "--prefix", &prefix]);
    assert_eq!(done["dry_run"], false);
    assert_eq!(action(&done, &ring_name), "removed");
    assert_eq!(action(&done, &queue_name), "kept");
    assert!(!exists(&ring_name));
    assert!(exists(&queue_name));
    // Nothing left behind by the rename-aside step.
    let hidden: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ringpool-sweep-"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");

    // Once the last member dies too, the queue goes as well.
    q_member.kill();
    let done = json(&["clean", "--yes", "--json", "--prefix", &prefix]);
    assert_eq!(action(&done, &queue_name), "removed");
    assert!(!exists(&queue_name));
    assert_eq!(json(&["ls", "--json", "--prefix", &prefix]), serde_json::json!([]));
}

/// The current layout: a lock word holds an owner token (member-table entry + generation), not a
/// pid, and a member entry in transition holds `CLAIMING | pid`. A ring whose creator forged a
/// dead lock owner (its own pid, reused) and an entry left mid-join by itself, then was killed:
/// the inspector names the holder's pid through the table, sees the joiner, and cleans the ring
/// once everyone, the joiner included, is dead.
#[test]
fn lock_owner_tokens_and_entries_in_transition_are_decoded() {
    let prefix = format!("rp-test-insp-tok-{}-", std::process::id());
    let name = format!("{prefix}ring");
    let _cleanup = RemoveByPrefix(prefix.clone());
    let flags = SharedCounters::new(1);
    let creator = {
        let name = name.clone();
        resident(&flags, 0, move || {
            let ring = Ring::builder().capacity(4096).create(&name).ok()?;
            let tx = ring.sender().ok()?;
            let me = std::process::id();
            // The send lock held by a dead member whose pid is now ours; an entry that we were
            // joining when "killed".
            ring.debug_forge_dead_owner(true, me);
            ring.debug_forge_transient(true, me);
            Some(Box::new((ring, tx)))
        })
    };
    wait_flag(&flags, 0);
    let pid = creator.pid.as_raw();

    let full = json(&["inspect", "--json", &name]);
    assert_eq!(full["status"], "ok", "{full:#}");
    assert_eq!(full["verdict"], "in_use", "{full:#}");
    let lock = &full["ring"]["send_lock"];
    assert_eq!((lock["state"].as_str(), lock["pid"].as_i64()), (Some("held"), Some(i64::from(pid))), "{full:#}");
    assert_eq!(lock["alive"], false, "the holder's entry has another start time: {full:#}");
    assert_eq!(full["ring"]["recv_lock"]["state"], "free");
    let members = full["ring"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{full:#}");
    let holder = members.iter().find(|m| m["slot"] == lock["member_slot"]).expect("the holder's entry");
    assert_eq!((holder["pid"].as_i64(), holder["state"].as_str()), (Some(i64::from(pid)), Some("dead")));
    assert_eq!(holder["generation"], lock["generation"]);
    assert!(members.iter().any(|m| m["pid"] == pid && m["state"] == "alive" && m["senders"] == 1), "{full:#}");
    let joining = members.iter().find(|m| m["state"] == "joining").expect("the entry in transition");
    assert_eq!((joining["pid"].as_i64(), joining["alive"].as_bool()), (Some(i64::from(pid)), Some(true)));
    let (ok, text) = run(&["inspect", &name]);
    assert!(ok);
    assert!(text.contains(&format!("held by pid {pid}")) && text.contains("joining"), "{text}");

    creator.kill();
    let full = json(&["inspect", "--json", &name]);
    let members = full["ring"]["members"].as_array().unwrap();
    let joining = members.iter().find(|m| m["state"] == "joining").expect("the entry in transition");
    assert_eq!(joining["alive"], false, "{full:#}");
    assert_eq!(full["ring"]["send_lock"]["alive"], false);
    assert_eq!(full["verdict"], "abandoned", "a dead joiner keeps nothing: {full:#}");
    let done = json(&["clean", "--yes", "--json", "--prefix", &prefix]);
    assert_eq!(action(&done, &name), "removed");
    assert!(!exists(&name));
}

#[test]
fn text_output_names_every_segment_and_what_clean_would_do() {
    let prefix = format!("rp-test-insp-text-{}-", std::process::id());
    let name = format!("{prefix}q");
    let _cleanup = RemoveByPrefix(prefix.clone());
    let flags = SharedCounters::new(1);
    let child = {
        let name = name.clone();
        resident(&flags, 0, move || {
            let q = Queue::<[u8; 100]>::builder().slots(4).create(&name).ok()?;
            let rx = q.receiver().ok()?;
            Some(Box::new((q, rx)))
        })
    };
    wait_flag(&flags, 0);
    let (ok, out) = run(&["ls", "--prefix", &prefix]);
    eprintln!("{out}");
    assert!(ok);
    assert!(out.contains(&name) && out.contains("[u8; 100]") && out.contains("in_use"), "{out}");
    child.kill();
    let (ok, out) = run(&["inspect", &name]);
    eprintln!("{out}");
    assert!(ok);
    assert!(out.contains("creator:") && out.contains("dead") && out.contains("abandoned"), "{out}");
    let (ok, out) = run(&["clean", "--prefix", &prefix]);
    assert!(ok);
    assert!(out.contains("would remove") && out.contains("--yes"), "{out}");
    assert!(exists(&name));
    let (ok, out) = run(&["clean", "--yes", "--prefix", &prefix]);
    assert!(ok);
    assert!(out.contains("removed"), "{out}");
    assert!(!exists(&name));
    // A name that is not there: a clear failure, not a crash.
    let (ok, _) = run(&["inspect", &format!("{prefix}missing")]);
    assert!(!ok);
}

#[test]
fn hostile_files_are_reported_corrupted_never_crash_and_are_never_cleaned() {
    let prefix = format!("rp-test-insp-bad-{}-", std::process::id());
    let shm = Path::new("/dev/shm");
    let _cleanup = RemoveByPrefix(prefix.clone());
    let mut made = Vec::new();
    let mut plant = |suffix: &str, bytes: &[u8]| {
        let name = format!("{prefix}{suffix}");
        std::fs::write(shm.join(&name), bytes).unwrap();
        made.push(name.clone());
        name
    };
    // The magic and nothing else; the magic and garbage; a page of the magic repeated.
    let tiny = plant("tiny", b"RINGPOOL");
    let mut garbage = b"RINGPOOL".to_vec();
    garbage.extend((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let junk = plant("junk", &garbage);
    let repeated = plant("repeated", &b"RINGPOOL".repeat(2048));
    // Not ringpool's at all: not listed.
    let foreign = plant("foreign", &[0u8; 8192]);
    // A name that would drive a terminal: shown escaped in text.
    let escape = plant("esc\x1b[2J\x07", b"RINGPOOL");

    // Real rings made by a killed creator, then damaged: a flipped header byte; a config with an
    // impossible capacity; the rest of the control block overwritten with one byte pattern.
    let flags = SharedCounters::new(4);
    let mut real = Vec::new();
    for i in 0..4 {
        let name = format!("{prefix}real{i}");
        let child = {
            let name = name.clone();
            resident(&flags, i, move || Some(Box::new(Ring::builder().capacity(4096).create(&name).ok()?)))
        };
        wait_flag(&flags, i);
        child.kill();
        real.push(name);
    }
    let page = 4096u64;
    let write_at = |name: &str, at: u64, bytes: &[u8]| {
        let f = std::fs::OpenOptions::new().write(true).open(shm.join(name)).unwrap();
        f.write_all_at(bytes, at).unwrap();
    };
    write_at(&real[0], 40, &[0xEE]);
    write_at(&real[1], page + 8, &3u64.to_ne_bytes());
    write_at(&real[2], page + 128, &vec![0xA5u8; 8192]);
    // Not damaged but never published: the ready word (after the header's 96 bytes) cleared, as
    // when a creator dies while it initializes. Not corrupted: abandoned, and cleaned.
    write_at(&real[3], 96, &[0u8; 4]);

    // A FIFO and a symbolic link with the prefix: skipped, not waited on, not followed.
    let fifo = shm.join(format!("{prefix}fifo"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = shm.join(format!("{prefix}link"));
    std::os::unix::fs::symlink(shm.join(&junk), &link).unwrap();

    let ls = json(&["ls", "--json", "--prefix", &prefix]);
    let listed: Vec<&str> = ls.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(!listed.contains(&foreign.as_str()), "{listed:?}");
    assert!(!listed.iter().any(|n| n.ends_with("fifo") || n.ends_with("link")), "{listed:?}");
    for name in [&tiny, &junk, &repeated, &real[0], &real[1], &real[2]] {
        let e = entry(&ls, name);
        assert_eq!(e["status"], "corrupted", "{e:#}");
        assert_eq!(e["verdict"], "unknown", "{e:#}");
        assert!(e["problem"].is_string(), "{e:#}");
        // The full view of each answers too.
        let full = json(&["inspect", "--json", name]);
        assert_eq!(full["status"], "corrupted");
    }
    let unpublished = entry(&ls, &real[3]);
    assert_eq!(
        (unpublished["status"].as_str(), unpublished["verdict"].as_str()),
        (Some("not_ready"), Some("abandoned"))
    );
    assert!(entry(&ls, &real[0])["problem"].as_str().unwrap().contains("checksum"));
    // Capacity 3 in a byte ring whose header records a 4096-byte mirror: `Config::validate`
    // refuses the geometry (the mirror check comes before the power-of-two check).
    assert_eq!(entry(&ls, &real[1])["problem"], "byte ring geometry is inconsistent");
    assert_eq!(entry(&ls, &escape)["status"], "corrupted");
    let (ok, table) = run(&["ls", "--prefix", &prefix]);
    assert!(ok, "the table prints too");
    assert!(!table.contains('\x1b') && !table.contains('\x07'), "control characters reached the terminal");
    assert!(table.contains("esc\\u{1b}[2J\\u{7}"), "{table}");

    let clean = json(&["clean", "--yes", "--json", "--prefix", &prefix]);
    for name in [&tiny, &junk, &repeated, &escape, &real[0], &real[1], &real[2]] {
        assert_eq!(action(&clean, name), "kept");
        assert!(exists(name));
    }
    assert_eq!(action(&clean, &real[3]), "removed");
    assert!(!exists(&real[3]));
    drop(made);
}

/// Removes every file of /dev/shm whose name starts with the prefix, when dropped (a failed
/// assertion included): what a hostile test planted goes in any case.
struct RemoveByPrefix(String);

impl Drop for RemoveByPrefix {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/dev/shm") else { return };
        for e in dir.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with(&self.0) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The library's sweep looks again before it unlinks: a process that opens an abandoned ring
/// after the scan, or a newer segment made under the name, keeps the name where it was.
#[test]
fn the_sweep_looks_again_before_it_unlinks() {
    let prefix = format!("rp-test-insp-again-{}-", std::process::id());
    let _cleanup = RemoveByPrefix(prefix.clone());
    let name = format!("{prefix}ring");
    let flags = SharedCounters::new(2);
    let creator = {
        let name = name.clone();
        resident(&flags, 0, move || {
            let ring = Ring::builder().capacity(4096).create(&name).ok()?;
            let tx = ring.sender().ok()?;
            Some(Box::new((ring, tx)))
        })
    };
    wait_flag(&flags, 0);
    creator.kill();
    let scan = Scan::new().prefix(prefix.clone());
    let reports = scan.run().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].verdict, Verdict::Abandoned);

    // After the scan, a process opens the ring (and joins it): the sweep's second look sees it.
    let opener = {
        let name = name.clone();
        resident(&flags, 1, move || {
            let ring = Ring::builder().open(&name).ok()?;
            let rx = ring.receiver().ok()?;
            Some(Box::new((ring, rx)))
        })
    };
    wait_flag(&flags, 1);
    match scan.remove_if_abandoned(&reports[0]) {
        SweepAction::Kept(why) => assert!(why.contains("second look"), "{why}"),
        other => panic!("removed a ring a live process had just opened: {other:?}"),
    }
    assert!(exists(&name), "the name is back where it was");
    opener.kill();

    // After the scan, the name is reused by a newer segment: that one is not removed either.
    let reports = scan.run().unwrap();
    assert_eq!(reports[0].verdict, Verdict::Abandoned);
    ringpool::Segment::unlink(&name).unwrap();
    let newer = Ring::builder().capacity(4096).create(&name).unwrap();
    match scan.remove_if_abandoned(&reports[0]) {
        SweepAction::Kept(why) => assert!(why.contains("newer segment"), "{why}"),
        other => panic!("removed a newer segment: {other:?}"),
    }
    assert!(exists(&name));
    drop(newer);
    assert!(!exists(&name));
}

/// The example that the README shows: a killed creator's ring, found abandoned and swept.
#[test]
fn the_inspect_after_crash_example_finds_and_sweeps_the_ring() {
    let exe = common::build_example("inspect_after_crash");
    let out = run_with_deadline(&mut Command::new(exe), DEADLINE);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("creator alive: Dead"), "{text}");
    assert!(text.contains("3 messages in it; senders 0 alive / 1 dead; receivers 0 alive / 1 dead"), "{text}");
    assert!(text.contains("verdict: abandoned"), "{text}");
    assert!(text.contains("sweep: removed"), "{text}");
    assert!(text.contains("after the sweep, /dev/shm/rp-demo-crash-") && text.ends_with("exists: false\n"), "{text}");
}
