//! Layer 4 with real processes: fork and spawn, exit codes and signals, deadlines, panics, death
//! with the parent, reaping, names, and the `process_basics` example run to its end.

mod common;
mod process_common;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use process_common::*;
use ringpool::process::{ExitStatus, JoinError, ProcessBuilder, StartError, StartMethod};
use ringpool::sync::liveness;
use ringpool::{Process, current_process};

const LONG: Duration = Duration::from_secs(10);

fn signaled(signal: i32) -> ExitStatus {
    ExitStatus::Signaled { signal, core_dumped: false }
}

#[test]
fn exit_codes_and_signals_are_reported() {
    let _g = lock();
    let mut ok = fork(|| {});
    assert_eq!(ok.join().unwrap(), ExitStatus::Code(0));
    assert!(ok.exit_status().unwrap().success());

    let mut seven = fork(|| ringpool::process::exit(7));
    let status = seven.join().unwrap();
    assert_eq!(status, ExitStatus::Code(7));
    assert_eq!(status.to_string(), "exit code 7");
    assert_eq!(seven.join().unwrap(), status, "a second join answers the same");

    let mut usr1 = fork(|| {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR1);
        sleep_forever()
    });
    assert_eq!(usr1.join_timeout(LONG).unwrap(), signaled(libc::SIGUSR1));

    let mut term = fork(|| sleep_forever());
    term.terminate().unwrap();
    let status = term.join_timeout(LONG).unwrap();
    assert_eq!(status, signaled(libc::SIGTERM));
    assert_eq!(status.to_string(), "killed by signal 15 (SIGTERM)");
    assert_eq!(status.code(), None);

    let mut killed = fork(|| sleep_forever());
    killed.kill().unwrap();
    assert_eq!(killed.join_timeout(LONG).unwrap(), signaled(libc::SIGKILL));
    assert_no_zombies();
}

#[test]
fn join_timeout_returns_on_time_and_never_early() {
    let _g = lock();
    let mut p = fork(|| sleep_forever());
    for ms in [0, 1, 10, 50, 300] {
        let timeout = Duration::from_millis(ms);
        let start = Instant::now();
        let e = p.join_timeout(timeout).unwrap_err();
        let took = start.elapsed();
        assert_eq!(e, JoinError::Timeout { pid: p.pid(), timeout });
        assert!(took >= timeout, "returned after {took:?}, before the {timeout:?} timeout");
        assert!(took < timeout + Duration::from_secs(5), "returned only after {took:?}");
    }
    assert!(p.is_alive(), "a timed-out join leaves the child running");
    p.kill().unwrap();
    assert_eq!(p.join_timeout(LONG).unwrap(), signaled(libc::SIGKILL));

    // A child that ends soon is joined long before a long timeout.
    let mut quick = fork(|| std::thread::sleep(Duration::from_millis(20)));
    let start = Instant::now();
    assert_eq!(quick.join_timeout(Duration::from_secs(600)).unwrap(), ExitStatus::Code(0));
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_no_zombies();
}

#[test]
fn is_alive_turns_false_after_kill() {
    let _g = lock();
    let mut p = fork(|| sleep_forever());
    assert!(p.is_alive());
    assert_eq!(p.exit_status(), None);
    p.kill().unwrap();
    assert!(wait_for(LONG, || !p.is_alive()), "still alive long after SIGKILL");
    assert_eq!(p.exit_status(), Some(signaled(libc::SIGKILL)));
    assert_eq!(p.join().unwrap(), signaled(libc::SIGKILL));
    assert!(!p.is_alive());
    p.kill().expect("killing a reaped child does nothing");
    assert_no_zombies();
}

#[test]
fn a_panic_in_a_forked_child_reaches_the_parent() {
    let _g = lock();
    let mut p = fork(|| {
        silence_stderr();
        let answer = 42;
        panic!("boom {answer}");
    });
    let e = p.join().unwrap_err();
    match &e {
        JoinError::Panicked { pid, name, message, location } => {
            assert_eq!(*pid, p.pid());
            assert_eq!(name, p.name());
            assert_eq!(message, "boom 42");
            let location = location.as_deref().unwrap_or_default();
            assert!(location.starts_with("tests/process.rs:"), "{location}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(e.to_string().contains("panicked at tests/process.rs:"), "{e}");
    assert_eq!(p.exit_status(), Some(ExitStatus::Code(101)));
    assert_eq!(p.join().unwrap_err(), e, "a second join answers the same");

    let mut any = fork(|| {
        silence_stderr();
        std::panic::panic_any(7u8);
    });
    match any.join_timeout(LONG) {
        Err(JoinError::Panicked { message, .. }) => assert_eq!(message, "Box<dyn Any>"),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_no_zombies();
}

#[test]
fn children_die_with_their_parent_within_a_second() {
    let _g = lock();
    let (rd, wr) = pipe();
    let mut middle = fork(move || {
        // The middle process runs one thread, so the checked fork works here.
        let forked = Process::start(sleep_forever_fn);
        let spawned = spawned().spawn(sleep_then_exit, 600_000);
        match (forked, spawned) {
            (Ok(f), Ok(s)) => {
                send_line(&wr, &format!("{} {} {}", f.pid(), f.name(), s.pid()));
                sleep_forever()
            }
            (f, s) => send_line(&wr, &format!("error {:?} {:?}", f.err(), s.err())),
        }
    });
    let line = recv_line(rd.as_fd(), LONG).expect("the middle process reports its children");
    let fields: Vec<&str> = line.split(' ').collect();
    let [forked, name, spawned] = fields[..] else { panic!("{line}") };
    assert_eq!(name, format!("{}:1", middle.name()), "a grandchild's default name");
    let forked = Stray::new(forked.parse().unwrap());
    let spawned = Stray::new(spawned.parse().unwrap());
    assert!(forked.is_alive() && spawned.is_alive());

    let start = Instant::now();
    middle.kill().unwrap();
    let gone = wait_for(Duration::from_secs(1), || !forked.is_alive() && !spawned.is_alive());
    let took = start.elapsed();
    assert!(gone, "a grandchild outlived its killed parent by {took:?}");
    assert_eq!(middle.join_timeout(LONG).unwrap(), signaled(libc::SIGKILL));
    assert_no_zombies();
}

fn sleep_forever_fn() {
    sleep_forever()
}

#[test]
fn a_child_can_be_asked_to_outlive_its_parent() {
    let _g = lock();
    let (rd, wr) = pipe();
    let mut middle = fork(move || {
        let b = Process::builder().die_with_parent(false);
        match b.fork(sleep_forever_fn) {
            Ok(grandchild) => {
                send_line(&wr, &grandchild.pid().to_string());
                sleep_forever()
            }
            Err(e) => send_line(&wr, &format!("error {e}")),
        }
    });
    let line = recv_line(rd.as_fd(), LONG).expect("the middle process reports its child");
    let grandchild = Stray::new(line.parse().unwrap());
    middle.kill().unwrap();
    assert_eq!(middle.join_timeout(LONG).unwrap(), signaled(libc::SIGKILL));
    std::thread::sleep(Duration::from_millis(300));
    assert!(grandchild.is_alive(), "the grandchild died with its parent although asked not to");
    drop(grandchild); // kills it
    assert_no_zombies();
}

#[test]
fn dropped_children_are_killed_and_reaped() {
    let _g = lock();
    // Still running when dropped: killed and reaped.
    let p = fork(|| sleep_forever());
    let pid = p.pid();
    let start = Instant::now();
    drop(p);
    assert!(start.elapsed() < Duration::from_secs(5), "drop took {:?}", start.elapsed());
    assert!(liveness::proc_stat(pid).is_none(), "pid {pid} still exists after drop");

    // Ended but not reaped when dropped (a zombie): reaped.
    let p = fork(|| {});
    let pid = p.pid();
    assert!(wait_for(LONG, || liveness::proc_stat(pid).is_some_and(|st| st.state == b'Z')));
    drop(p);
    assert!(liveness::proc_stat(pid).is_none(), "zombie {pid} left after drop");

    // Spawned, then dropped.
    let p = spawned().spawn(sleep_then_exit, 60_000).unwrap();
    let pid = p.pid();
    drop(p);
    assert!(liveness::proc_stat(pid).is_none(), "pid {pid} still exists after drop");
    assert_no_zombies();
}

#[test]
fn current_process_in_parent_and_children() {
    let _g = lock();
    let me = current_process();
    assert_eq!(me.name(), "MainProcess");
    assert_eq!(me.pid(), std::process::id());
    assert_eq!(me.parent_pid(), nix::unistd::getppid().as_raw() as u32);
    assert!(me.is_alive());

    let (rd, wr) = pipe();
    let mut p = fork(move || {
        let c = current_process();
        send_line(&wr, &format!("{} {} {} {}", c.name(), c.pid(), c.parent_pid(), c.is_alive()));
    });
    let line = recv_line(rd.as_fd(), LONG).expect("the child reports");
    assert_eq!(line, format!("{} {} {} true", p.name(), p.pid(), me.pid()));
    assert_eq!(p.join().unwrap(), ExitStatus::Code(0));

    // A spawned child, with a name given, reports through a descriptor it inherits.
    let (rd, wr) = inheritable_pipe();
    let mut p = spawned().name("worker").spawn(report_identity, wr.as_raw_fd()).unwrap();
    drop(wr);
    assert_eq!(p.name(), "worker");
    assert_eq!(p.start_method(), StartMethod::Spawn);
    let line = recv_line(rd.as_fd(), LONG).expect("the spawned child reports");
    assert_eq!(line, format!("worker {} {} true", p.pid(), me.pid()));
    assert_eq!(p.join_timeout(LONG).unwrap(), ExitStatus::Code(0));
    assert_no_zombies();
}

/// A pipe whose write end is not close-on-exec, so that a spawned child finds it under the same
/// number. Made under `lock()`, so no other test starts a program that could inherit it.
fn inheritable_pipe() -> (OwnedFd, OwnedFd) {
    let (rd, wr) = nix::unistd::pipe().expect("pipe");
    nix::fcntl::fcntl(&rd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).unwrap();
    (rd, wr)
}

fn spawned() -> ProcessBuilder {
    Process::builder().start_method(StartMethod::Spawn)
}

/// Spawned: writes "name pid parent_pid is_alive" to the inherited descriptor `fd`.
fn report_identity(fd: i32) {
    // SAFETY: the parent passed its pipe's write end, inherited under this number; nothing else in
    // this process owns it.
    let out = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = current_process();
    send_line(&out, &format!("{} {} {} {}", c.name(), c.pid(), c.parent_pid(), c.is_alive()));
}

fn sleep_then_exit(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn exit_with(code: i32) {
    ringpool::process::exit(code)
}

fn panic_with(n: u32) {
    silence_stderr();
    panic!("spawned boom {n}");
}

#[test]
fn spawn_runs_a_function_and_reports_its_panic() {
    let _g = lock();
    let mut p = spawned().spawn(exit_with, 5).unwrap();
    assert_eq!(p.start_method(), StartMethod::Spawn);
    assert_eq!(p.join_timeout(LONG).unwrap(), ExitStatus::Code(5));

    let mut p = spawned().spawn(panic_with, 9).unwrap();
    match p.join_timeout(LONG) {
        Err(JoinError::Panicked { message, location, pid, .. }) => {
            assert_eq!(message, "spawned boom 9");
            assert!(location.unwrap_or_default().starts_with("tests/process.rs:"));
            assert_eq!(pid, p.pid());
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(p.exit_status(), Some(ExitStatus::Code(101)));

    // A closure that captures nothing is a plain function too.
    let mut p =
        spawned().spawn(|x: [u16; 3]| ringpool::process::exit(i32::from(x[0] + x[1] + x[2])), [1u16, 2, 3]).unwrap();
    assert_eq!(p.join_timeout(LONG).unwrap(), ExitStatus::Code(6));
    assert_no_zombies();
}

#[test]
fn fork_is_refused_while_other_threads_run_and_auto_spawns() {
    let _g = lock();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || rx.recv());
    match Process::start(|| {}) {
        Err(StartError::Threaded { threads }) => assert!(threads >= 2, "{threads}"),
        Err(e) => panic!("expected Threaded, got {e}"),
        Ok(_) => panic!("fork was not refused with two threads running"),
    }
    let e = Process::builder().start_method(StartMethod::Fork).spawn(exit_with, 4);
    assert!(matches!(e, Err(StartError::Threaded { .. })), "{e:?}");
    // Auto (the default for spawn) re-executes instead.
    let mut p = Process::builder().spawn(exit_with, 4).unwrap();
    assert_eq!(p.start_method(), StartMethod::Spawn);
    assert_eq!(p.join_timeout(LONG).unwrap(), ExitStatus::Code(4));
    drop(tx);
    let _ = other.join();
    assert_no_zombies();
}

#[test]
fn default_names_count_up() {
    let _g = lock();
    let (rd, wr) = pipe();
    let wr2 = wr.try_clone().unwrap();
    let mut a = fork(move || send_line(&wr, current_process().name()));
    let mut b = fork(move || send_line(&wr2, current_process().name()));
    let n: u32 = match a.name().strip_prefix("Process-").map(str::parse) {
        Some(Ok(n)) => n,
        _ => panic!("unexpected default name {:?}", a.name()),
    };
    assert_eq!(b.name(), format!("Process-{}", n + 1));
    let mut got = [recv_line(rd.as_fd(), LONG).unwrap(), recv_line(rd.as_fd(), LONG).unwrap()];
    got.sort();
    let mut want = [a.name().to_owned(), b.name().to_owned()];
    want.sort();
    assert_eq!(got, want, "each child knows its own name");
    a.join().unwrap();
    b.join().unwrap();
    let mut named = unsafe_fork_named("given");
    assert_eq!(named.name(), "given");
    named.join().unwrap();
    assert_no_zombies();
}

fn unsafe_fork_named(name: &str) -> Process {
    // SAFETY: as in `process_common::fork`: the caller holds `lock()`; the child does nothing.
    unsafe { Process::builder().name(name).fork_unchecked(|| {}) }.unwrap()
}

#[test]
fn the_process_basics_example_runs_to_its_end() {
    let _g = lock();
    let exe = common::build_example("process_basics");
    let out = common::run_with_deadline(&mut std::process::Command::new(&exe), Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let pid_after = |text: &str, key: &str| -> u32 {
        let at = text.find(key).unwrap_or_else(|| panic!("{key:?} not in:\n{text}")) + key.len();
        text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let parent = pid_after(&stdout, "MainProcess, pid ");
    let child = pid_after(&stdout, "my pid is ");
    assert_ne!(parent, child, "parent and child must be two processes:\n{stdout}");
    assert!(stdout.contains("my name is Process-1"), "{stdout}");
    assert!(stdout.contains("alive: true"), "{stdout}");
    assert!(stdout.contains("exit code 0"), "{stdout}");
    assert_no_zombies();
}

#[test]
fn a_sender_moved_into_a_child_keeps_the_ring_connected() {
    use ringpool::ring::RecvTimeoutError;
    let _g = lock();
    let ring = ringpool::Ring::builder().capacity(4096).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let tx = ring.sender().unwrap();
    let mut p = fork(move || {
        // Give the parent time to drop its copy of `tx` and look at the ring first.
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..10u8 {
            tx.send([i]).unwrap();
        }
        // Never dropped: only the exit path can take the child out of the ring.
        std::mem::forget(tx);
    });
    // Start returned, and the parent's copy of `tx` is gone: the child's copy still counts. (Start
    // drops the parent's copy only after the child said it started; this checks the path end to
    // end, it cannot force the race that ordering prevents.)
    for i in 0..10u8 {
        assert_eq!(rx.recv_timeout(LONG).unwrap(), vec![i]);
    }
    // The child ends without dropping `tx` (it leaves through _exit), yet it leaves the ring.
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
    assert_eq!(p.join_timeout(LONG).unwrap(), ExitStatus::Code(0));
    assert_no_zombies();
}
