//! Locks and guards against the things a process cannot prevent: a guard that crosses a fork
//! (here by a raw `fork`, as the safe API no longer lets one cross), a recycled pid in a lock word,
//! a process killed in the middle of joining a ring, handles inherited through a plain `fork()`.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{SharedCounters, spawn};
use ringpool::Ring;
use ringpool::queue::Queue;
use ringpool::ring::{RecvTimeoutError, TryRecvError};
use ringpool::sync::{RobustMutex, TryLockError};

/// The deadline of every wait that should end at once.
const DEADLINE: Duration = Duration::from_secs(30);

fn me() -> u32 {
    std::process::id()
}

// ----- guards across a fork ----------------------------------------------------------------------

/// A raw-forked child commits the parent's reservation (a copy of the guard, in its copy of the
/// parent's memory) while the parent still holds it: the child's commit must not touch the ring,
/// the lock stays the parent's, and only the parent's commit publishes.
#[test]
fn write_guard_committed_in_a_forked_child_changes_nothing() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    let mut held = Some(tx.reserve(8).unwrap());
    held.as_mut().unwrap().copy_from_slice(b"parent!!");
    let slot = &mut held;
    let child = spawn(move || {
        if let Some(mut g) = slot.take() {
            g.copy_from_slice(b"child!!!");
            g.commit();
        }
        0
    });
    child.join(DEADLINE);
    assert_eq!(ring.debug_lock_holders().0, Some(me()), "the send lock must still be the parent's");
    assert!(tx.try_send(b"intruder").is_err(), "another send got in while the parent holds the lock");
    assert!(rx.try_recv().is_err(), "the child's commit published a record");
    held.take().unwrap().commit();
    assert_eq!(rx.try_recv().unwrap(), b"parent!!");
    assert!(rx.try_recv().is_err(), "one message was sent");
    assert!(ring.is_empty());
}

/// The same with a lent message: the child's drop of its copy of the read guard must neither
/// consume the message nor release the receive lock.
#[test]
fn read_guard_dropped_in_a_forked_child_changes_nothing() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    tx.send(b"one").unwrap();
    tx.send(b"two").unwrap();
    let mut held = Some(rx.recv_in_place().unwrap());
    let slot = &mut held;
    let child = spawn(move || {
        drop(slot.take());
        0
    });
    child.join(DEADLINE);
    assert_eq!(ring.debug_lock_holders().1, Some(me()), "the receive lock must still be the parent's");
    assert!(rx.try_recv().is_err(), "another receive got in while the parent holds the lock");
    assert_eq!(&*held.take().unwrap(), b"one");
    assert_eq!(rx.try_recv().unwrap(), b"two");
    assert!(rx.try_recv().is_err());
}

/// The queue's slot guards, both sides.
#[test]
fn slot_guards_in_a_forked_child_change_nothing() {
    let q = Queue::<u64>::builder().slots(8).anonymous().unwrap();
    let tx = q.sender().unwrap();
    let rx = q.receiver().unwrap();

    let mut held = Some(tx.reserve().unwrap());
    **held.as_mut().unwrap() = 5;
    let slot = &mut held;
    let child = spawn(move || {
        // (Not written through: the slot is shared memory, and a write through a copied guard
        // lands there; what must not happen is the commit.)
        if let Some(w) = slot.take() {
            w.commit();
        }
        0
    });
    child.join(DEADLINE);
    assert!(tx.try_send(9).is_err(), "another send got in while the parent holds the send lock");
    assert!(rx.try_recv().is_err(), "the child's commit published a value");
    held.take().unwrap().commit();
    assert_eq!(rx.try_recv().unwrap(), 5);
    assert!(rx.try_recv().is_err());

    tx.send(1).unwrap();
    tx.send(2).unwrap();
    let mut lent = Some(rx.recv_in_place().unwrap());
    let slot = &mut lent;
    let child = spawn(move || {
        drop(slot.take());
        0
    });
    child.join(DEADLINE);
    assert!(rx.try_recv().is_err(), "another receive got in while the parent holds the receive lock");
    assert_eq!(**lent.as_ref().unwrap(), 1);
    drop(lent.take());
    assert_eq!(rx.try_recv().unwrap(), 2);
    assert!(rx.try_recv().is_err());
}

/// A `RobustMutex` in shared memory, locked by the parent; a raw-forked child drops its copy of the
/// guard: the lock stays held by the parent.
#[test]
fn robust_mutex_guard_dropped_in_a_forked_child_keeps_the_lock() {
    let mem = SharedCounters::new(1);
    // SAFETY: an 8-aligned, zeroed word of shared memory that lives as long as `mem`; a zeroed
    // RobustMutex (one AtomicU32) is an unlocked mutex, and it is only used through atomics.
    let m: &RobustMutex = unsafe { &*(mem.get(0) as *const _ as *const RobustMutex) };
    let mut held = Some(m.try_lock().unwrap());
    let slot = &mut held;
    let child = spawn(move || {
        drop(slot.take());
        // The parent still holds the lock: the child must not get it.
        match m.try_lock() {
            Err(TryLockError::WouldBlock) => 0,
            _ => 1,
        }
    });
    child.join(DEADLINE);
    assert!(m.holder().is_some(), "the child's drop released the parent's lock");
    assert_eq!(m.try_lock().unwrap_err(), TryLockError::WouldBlock);
    drop(held.take());
    assert_eq!(m.holder(), None);
    drop(m.try_lock().unwrap());
}

// ----- a recycled pid in a lock word --------------------------------------------------------------

/// The send lock's owner died and its pid now belongs to a live member (the parent, which holds
/// a receiver): a sender in a child must take the lock over, not wait for ever.
#[test]
fn dead_owner_whose_pid_a_live_member_now_has_is_taken_over() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let parent = me();
    let r = ring.clone();
    let child = spawn(move || {
        let tx = r.sender().unwrap();
        r.debug_forge_dead_owner(true, parent);
        match tx.send_timeout(b"through", Duration::from_secs(10)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("send behind a dead owner with a reused pid: {e}");
                1
            }
        }
    });
    child.join(DEADLINE);
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), b"through");
    assert!(ring.stats().send_recoveries >= 1);
}

/// The dead owner's pid is now the caller's own: both sides, in turn.
#[test]
fn dead_owner_whose_pid_the_caller_now_has_is_taken_over() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let r = ring.clone();
    let child = spawn(move || {
        let tx = r.sender().unwrap();
        let rx = r.receiver().unwrap();
        r.debug_forge_dead_owner(true, me());
        if let Err(e) = tx.send_timeout(b"mine", Duration::from_secs(10)) {
            eprintln!("send behind a dead owner with the caller's pid: {e}");
            return 1;
        }
        r.debug_forge_dead_owner(false, me());
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(m) if m == b"mine" => 0,
            Ok(_) => 2,
            Err(e) => {
                eprintln!("receive behind a dead owner with the caller's pid: {e}");
                3
            }
        }
    });
    child.join(DEADLINE);
    let st = ring.stats();
    assert!(st.send_recoveries >= 1 && st.recv_recoveries >= 1, "{st:?}");
}

// ----- member-table entries left in transition ---------------------------------------------------

/// A process killed while joining (or while reaping a dead member) leaves its member-table entry
/// in transition. With a table of two entries, one held by the parent and the other left so by a
/// dead process, a new member must still get in (the dead process's entry is reclaimed), and the
/// entry's phantom sender must not keep the receivers waiting.
#[test]
fn entries_left_in_transition_by_a_dead_process_are_reclaimed() {
    // A pid that no process has (its child just ended and was reaped).
    let dead = spawn(|| 0);
    let dead_pid = dead.pid.as_raw() as u32;
    dead.join(DEADLINE);
    for claiming in [true, false] {
        let ring = Ring::builder().capacity(4096).max_members(2).anonymous().unwrap();
        let rx = ring.receiver().unwrap();
        ring.debug_forge_transient(claiming, dead_pid);
        let r = ring.clone();
        let child = spawn(move || match r.sender() {
            Ok(tx) => i32::from(tx.send(b"in").is_err()),
            Err(e) => {
                eprintln!("join with an entry left in transition (claiming: {claiming}): {e}");
                2
            }
        });
        child.join(DEADLINE);
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), b"in");
        // The child has ended: no sender is left, the phantom one included.
        assert!(matches!(rx.recv_timeout(DEADLINE), Err(ringpool::ring::RecvTimeoutError::Disconnected)));
    }
}

// ----- handles inherited through a plain fork() ---------------------------------------------------

/// Waits until `word` is nonzero; false after `timeout`.
fn wait_flag(word: &std::sync::atomic::AtomicU64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while word.load(Ordering::Acquire) == 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// A child made by a raw `fork()` (not `Process`) inherits the parent's sender without using it.
/// Once the child runs, the parent drops its own sender: the receiver must still see a sender
/// (the child's, registered at the fork), not a disconnected ring; the child then sends through it.
#[test]
fn handles_inherited_through_a_raw_fork_are_registered_in_the_child() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let rx = ring.receiver().unwrap();
    let flags = SharedCounters::new(2);
    let f = &flags;
    let child = spawn(move || {
        f.get(0).store(1, Ordering::Release);
        if !wait_flag(f.get(1), DEADLINE) {
            return 1;
        }
        i32::from(tx.send(b"from the child").is_err()) * 2
    });
    assert!(wait_flag(flags.get(0), DEADLINE), "the child did not start");
    // The test's copy of the closure (and of `tx`) went with `spawn`; the parent has no sender
    // of its own now: only the child's inherited one is left.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)), "the child's inherited sender is not counted");
    flags.get(1).store(1, Ordering::Release);
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), b"from the child");
    child.join(DEADLINE);
    assert!(matches!(rx.recv_timeout(DEADLINE), Err(RecvTimeoutError::Disconnected)));
}

/// Waits until `word` is at least `n`; false after `timeout`.
fn wait_at_least(word: &std::sync::atomic::AtomicU64, n: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while word.load(Ordering::Acquire) < n {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// Rounds of [`a_plain_fork_whose_parent_drops_the_last_sender_at_once_never_disconnects`], and
/// messages its child sends in each.
const RACE_ROUNDS: u64 = 200;
const RACE_MESSAGES: u64 = 4;

/// The `i`th message of round `round` (the parent's marker that opens the round is `i = u64::MAX`).
fn race_message(round: u64, i: u64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&round.to_le_bytes());
    m[8..].copy_from_slice(&i.to_le_bytes());
    m
}

/// The race of a plain `fork()` (here nix's, which is libc's `fork`): the parent holds the only
/// sender, forks, and drops its copy as soon as `fork` returns (the copy captured by the closure
/// goes as `spawn` returns); the child sends through its inherited copy. A receiver in another
/// process, parked in `recv` for the child's messages at that moment (it has just taken the
/// parent's marker that opens the round), must get every message of the round and never
/// `Disconnected` before them, and the parent, looking right after its drop, must find a sender
/// counted: the parent may go on only after the child has registered its copy.
/// Without the parent's at-fork wait, the parent's drop left the ring for a moment with no sender
/// counted.
#[test]
fn a_plain_fork_whose_parent_drops_the_last_sender_at_once_never_disconnects() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    // 0: rounds opened by the parent (a sender exists); 1: rounds the receiver finished; 2: rounds
    // in which it saw `Disconnected` before the round's last message; 3: the receiver is waiting
    // for round (value - 1)'s marker; 4: what went wrong in the receiver (0: nothing); 5: rounds
    // in which the parent has looked for a sender after the fork.
    let flags = SharedCounters::new(6);
    let f = &flags;
    let rx = ring.receiver().unwrap();
    let receiver = spawn(move || {
        for round in 0..RACE_ROUNDS {
            if !wait_at_least(f.get(0), round + 1, DEADLINE) {
                f.get(4).store(1, Ordering::Release);
                return 1;
            }
            f.get(3).store(round + 1, Ordering::Release);
            // The parent holds a sender until it forks: the marker comes.
            match rx.recv_timeout(DEADLINE) {
                Ok(m) if m == race_message(round, u64::MAX) => {}
                _ => {
                    f.get(4).store(2, Ordering::Release);
                    return 2;
                }
            }
            let deadline = Instant::now() + DEADLINE;
            let (mut got, mut disconnected) = (0, false);
            while got < RACE_MESSAGES {
                if Instant::now() >= deadline {
                    f.get(4).store(3, Ordering::Release);
                    return 3;
                }
                match rx.recv_timeout(DEADLINE) {
                    Ok(m) if m == race_message(round, got) => got += 1,
                    Ok(_) => {
                        f.get(4).store(4, Ordering::Release);
                        return 4;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        // The child's copy is not counted (yet): once it is, its messages come.
                        if !disconnected {
                            disconnected = true;
                            f.get(2).fetch_add(1, Ordering::AcqRel);
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    Err(_) => {
                        f.get(4).store(5, Ordering::Release);
                        return 5;
                    }
                }
            }
            f.get(1).store(round + 1, Ordering::Release);
        }
        0
    });
    let waits_before = ringpool::ring::debug_fork_waits().0;
    let mut parent_saw_none = 0;
    for round in 0..RACE_ROUNDS {
        let tx = ring.sender().unwrap();
        flags.get(0).store(round + 1, Ordering::Release);
        assert!(
            wait_at_least(flags.get(3), round + 1, DEADLINE),
            "the receiver did not reach round {round} (fault {})",
            flags.get(4).load(Ordering::Acquire)
        );
        tx.send(&race_message(round, u64::MAX)).unwrap();
        let child = spawn(move || {
            for i in 0..RACE_MESSAGES {
                if tx.send(&race_message(round, i)).is_err() {
                    return 1;
                }
            }
            // The sender is kept until the parent has looked (below).
            if !wait_at_least(f.get(5), round + 1, DEADLINE) {
                return 2;
            }
            drop(tx);
            0
        });
        // `spawn` has returned: the parent's copy of the closure, the only sender of the parent,
        // was dropped right after `fork` returned. The child's copy must be counted already (on
        // one CPU the parent usually runs first after a fork: this is where the race shows there).
        if ring.stats().senders == 0 {
            parent_saw_none += 1;
        }
        flags.get(5).store(round + 1, Ordering::Release);
        child.join(DEADLINE);
        assert!(
            wait_at_least(flags.get(1), round + 1, DEADLINE),
            "the receiver did not finish round {round} (fault {})",
            flags.get(4).load(Ordering::Acquire)
        );
    }
    receiver.join(DEADLINE);
    let disconnected = flags.get(2).load(Ordering::Acquire);
    assert_eq!(disconnected, 0, "{disconnected} of {RACE_ROUNDS} rounds saw Disconnected before the child's messages");
    assert_eq!(parent_saw_none, 0, "in {parent_saw_none} of {RACE_ROUNDS} rounds no sender was counted after the fork");
    // Every round's fork waited for its child (other tests' forks may add to the count).
    assert!(ringpool::ring::debug_fork_waits().0 - waits_before >= RACE_ROUNDS);
}

/// Waits for the forked `pid` to end; its exit code, or `None` after `timeout` (it is then killed).
fn reap(pid: libc::pid_t, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid pointer to `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if r < 0 {
            return None;
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling our own child, not reaped yet (so the pid is still its).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: reaping it (killed: it ends).
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// In a process of its own (spawned: no other test's ring is mapped here): a plain `fork()` whose
/// child `_exit`s at once, and what the parent's at-fork handler did. Exit code 0 when a fork
/// without handles did not wait, a fork with a sender did, and one after the sender was dropped did
/// not again; otherwise the step that went wrong.
fn forks_wait_only_with_handles(_: u8) {
    fn plain_fork() -> (u64, u64) {
        let before = ringpool::ring::debug_fork_waits();
        // SAFETY: this process runs one thread; the child only `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(0) }
        }
        assert!(pid > 0, "fork failed");
        assert_eq!(reap(pid, DEADLINE), Some(0));
        let after = ringpool::ring::debug_fork_waits();
        (after.0 - before.0, after.1 - before.1)
    }
    // A ring mapped (so the ring's at-fork hooks are installed) with no handle of it held.
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let code = if plain_fork() != (0, 0) {
        1
    } else {
        let tx = ring.sender().unwrap();
        // The child ran its handler and ended: the wait ended by its word, not by the deadline.
        if plain_fork() != (1, 0) {
            2
        } else {
            drop(tx);
            if plain_fork() != (0, 0) { 3 } else { 0 }
        }
    };
    ringpool::process::exit(code)
}

/// A fork in a process that holds no ring handle does not wait for the child (no page is mapped,
/// no wait made); one that holds a handle does.
#[test]
fn a_plain_fork_without_handles_does_not_wait() {
    use ringpool::Process;
    use ringpool::process::StartMethod;
    let mut p = Process::builder().start_method(StartMethod::Spawn).spawn(forks_wait_only_with_handles, 0u8).unwrap();
    let status = p.join_timeout(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(0), "step {:?} went wrong (see forks_wait_only_with_handles)", status.code());
}

// ----- the spawn entry point in a set-user-ID program -----------------------------------------------

/// A set-user-ID copy of this very test binary (it links ringpool, so its spawn constructor runs
/// before `main`) is started with a spawn request in its environment: it must refuse the request
/// because it runs in secure-execution mode, not act on it. Needs root (to make a set-user-ID
/// binary of another user) and a temp directory mounted without `nosuid`; skipped otherwise.
#[test]
fn a_set_user_id_program_refuses_the_spawn_request() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make a set-user-ID binary");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rp-test-secure-{}", me()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("setuid-copy");
    {
        // No test forks while the copy is open for writing: a forked child would hold the
        // descriptor, and executing the copy would fail with ETXTBSY.
        let _no_forks = common::FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    }
    // Owned by "nobody", set-user-ID: run by root, the real and effective uids differ.
    std::os::unix::fs::chown(&exe, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["--exact", "no-such-test"]).env("RINGPOOL_SPAWN", "v1;exe=1,2,3,4,5;anchor=0;tramp=0;entry=0;fd=2");
    let out = common::run_with_deadline(&mut cmd, DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !stderr.contains("ringpool") {
        // The kernel did not grant the set-user-ID bit (a nosuid mount, or no AT_SECURE).
        eprintln!("skipped: the copy did not run set-user-ID ({stderr})");
        return;
    }
    assert_eq!(out.status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("secure-execution"), "the request was looked at, not refused: {stderr}");
}
