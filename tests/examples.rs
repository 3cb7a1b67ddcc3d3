//! The `queue_pipeline`, `named_queue`, `pool_map`, `pool_submit`, `worker_crash` and `tour`
//! examples, built and run to their end, with their output checked for the facts they claim.
//! (`process_basics` is run by `tests/process.rs`.)
//!
//! Every wait has a deadline, a child still running when a test fails is killed (see [`Running`]),
//! and every segment name a test makes is checked to be gone from /dev/shm at its end.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod common;
use common::{build_example, drain, run_with_deadline};

/// How long an example may take before the test kills it and fails.
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn queue_pipeline_passes_0_to_9_between_two_processes_and_ends_on_its_own() {
    let exe = build_example("queue_pipeline");
    let mut run = Running::start(&mut Command::new(&exe));
    let pid = run.child.id();
    let (status, stdout, stderr) = run.wait(DEADLINE);
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");

    let main = pid_after(&stdout, "main (pid ");
    let writer = pid_after(&stdout, "writer (pid ");
    let reader = pid_after(&stdout, "reader (pid ");
    assert_eq!(main, pid, "main's pid is the program's own:\n{stdout}");
    assert!(writer != reader && writer != main && reader != main, "three processes expected:\n{stdout}");

    let values_after = |key: &str| -> Vec<u64> {
        stdout.lines().filter_map(|l| l.split_once(key)).map(|(_, v)| v.trim().parse().unwrap()).collect()
    };
    let want: Vec<u64> = (0..10).collect();
    assert_eq!(values_after(&format!("writer (pid {writer}): put ")), want, "{stdout}");
    assert_eq!(values_after(&format!("reader (pid {reader}): got ")), want, "received in order:\n{stdout}");

    let lines: Vec<&str> = stdout.lines().collect();
    let at =
        |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?}:\n{stdout}"));
    assert!(at(&format!("reader (pid {reader}): Disconnected")) > at(&format!("reader (pid {reader}): got 9")));
    assert!(lines.last().unwrap().contains("the program ended on its own"), "{stdout}");
    assert!(stdout.contains("the writer ended with exit code 0, the reader with exit code 0"), "{stdout}");
}

#[test]
fn named_queue_server_prints_a_clients_words_in_order_ends_by_itself_and_removes_its_name() {
    let exe = build_example("named_queue");
    let name = unique_name("words");
    let mut server = Running::start(Command::new(&exe).args(["serve", &name]));
    server.wait_for_line("waiting for clients", DEADLINE);
    assert!(shm_exists(&name), "the server said it is ready, but /dev/shm/{name} is missing");

    let words = ["hello", "shared memory", "", "ünïcode", "last"];
    let client = run_with_deadline(Command::new(&exe).args(["send", &name]).args(words), DEADLINE);
    let client_out = String::from_utf8_lossy(&client.stdout);
    assert!(client.status.success(), "{}\n{client_out}\n{}", client.status, String::from_utf8_lossy(&client.stderr));
    for w in words {
        assert!(client_out.contains(&format!("client: sent {w:?}\n")), "{client_out}");
    }

    let (status, stdout, stderr) = server.wait(DEADLINE);
    assert!(status.success(), "the server did not end cleanly by itself: {status}\n{stdout}\n{stderr}");
    let got: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("server: got "))
        .map(|q| q.strip_prefix('"').and_then(|q| q.strip_suffix('"')).unwrap().to_owned())
        .collect();
    assert_eq!(got, words, "the words, in order:\n{stdout}");
    assert!(stdout.contains("every client has left and the ring is empty: stopping after 5 messages"), "{stdout}");
    assert!(stdout.contains(&format!("removed /dev/shm/{name}")), "{stdout}");
    assert!(!shm_exists(&name), "/dev/shm/{name} is left after the server ended");
}

#[test]
fn named_queue_send_without_a_server_fails_in_plain_words() {
    let exe = build_example("named_queue");
    let name = unique_name("missing");
    let out = run_with_deadline(Command::new(&exe).args(["send", &name, "hello"]), DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}\n{stderr}", out.status);
    assert!(stderr.contains(&format!("no ring named {name:?}: start the server first")), "{stderr}");
    assert!(stderr.contains(&format!("serve {name}")), "it says how to start the server:\n{stderr}");
    assert!(!shm_exists(&name), "a client must not create the ring");
}

#[test]
fn named_queue_server_stops_on_sigint_and_removes_its_name() {
    let exe = build_example("named_queue");
    let name = unique_name("sigint");
    let mut server = Running::start(Command::new(&exe).args(["serve", &name]));
    server.wait_for_line("waiting for clients", DEADLINE);
    assert!(shm_exists(&name));
    server.signal(Signal::SIGINT);
    let (status, stdout, stderr) = server.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "128 + SIGINT: {status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("server: got SIGINT: stopping after 0 messages"), "{stdout}");
    assert!(stdout.contains(&format!("removed /dev/shm/{name}")), "{stdout}");
    assert!(!shm_exists(&name), "/dev/shm/{name} is left after SIGINT");
}

#[test]
fn named_queue_server_refuses_a_taken_name_and_purge_replaces_it() {
    let exe = build_example("named_queue");
    let name = unique_name("taken");
    // A ring left behind, as by a server killed with kill -9: this test process made it, and its
    // name is removed when `stale` drops, unless a purge replaced it by then.
    let stale = ringpool::Ring::builder().capacity(4096).create(&name).unwrap();

    let out = run_with_deadline(Command::new(&exe).args(["serve", &name]), DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}\n{stderr}", out.status);
    assert!(stderr.contains(&format!("the name {name:?} is taken")), "{stderr}");
    assert!(stderr.contains(&format!("serve --purge {name}")), "it says how to clear a stale name:\n{stderr}");
    assert!(shm_exists(&name), "a refused server must leave the existing ring alone");

    let mut server = Running::start(Command::new(&exe).args(["serve", "--purge", &name]));
    server.wait_for_line("waiting for clients", DEADLINE);
    drop(stale); // the name is the server's now: dropping ours must leave it
    assert!(shm_exists(&name), "dropping the purged ring removed the server's name");
    server.signal(Signal::SIGTERM);
    let (status, stdout, stderr) = server.wait(DEADLINE);
    assert_eq!(status.code(), Some(143), "128 + SIGTERM: {status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("any older one of that name removed"), "{stdout}");
    assert!(stdout.contains("server: got SIGTERM"), "{stdout}");
    assert!(!shm_exists(&name), "/dev/shm/{name} is left after SIGTERM");
}

#[test]
fn named_queue_bad_arguments_print_the_usage_with_exit_code_2() {
    let exe = build_example("named_queue");
    for args in [&[][..], &["serve"], &["send", "x"], &["serve", "a", "b"], &["fetch", "x"], &["serve", "--nope", "x"]]
    {
        let out = run_with_deadline(Command::new(&exe).args(args), DEADLINE);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}\n{stderr}", out.status);
        assert!(stderr.starts_with("usage:"), "{args:?}:\n{stderr}");
    }
    let out = run_with_deadline(Command::new(&exe).args(["serve", "a/b"]), DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}\n{stderr}", out.status);
    assert!(stderr.contains("invalid segment name"), "{stderr}");
}

// ----- support -------------------------------------------------------------------------------

/// A segment name that includes this test process's pid, so parallel runs never collide.
fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("rp-example-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn shm_exists(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

/// The number right after `key` in `text`.
fn pid_after(text: &str, key: &str) -> u32 {
    let at = text.find(key).unwrap_or_else(|| panic!("{key:?} not in:\n{text}")) + key.len();
    text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// A program running in the background, its stdout read line by line as it comes. Killed and
/// reaped on drop if it still runs (a failed assertion in a test, say).
struct Running {
    child: std::process::Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        Running { child, lines, seen: Vec::new(), stderr: Some(stderr) }
    }

    /// Waits until the program prints a line containing `needle`; fails after `timeout`.
    fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} within {timeout:?}; got:\n{}", self.seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the program ended without printing {needle:?}; got:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(i32::try_from(self.child.id()).unwrap()), signal).unwrap();
    }

    /// Waits for the program to end (killing it and failing after `timeout`); answers its status,
    /// its whole stdout and its stderr.
    fn wait(&mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the program did not end within {timeout:?}:\n{}", self.seen.join("\n"));
            std::thread::sleep(Duration::from_millis(10));
        };
        // The program has ended: its stdout reaches end of file soon (unless a grandchild holds it).
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout still open {timeout:?} after the program ended"),
            }
        }
        let stderr = self.stderr.take().map(|t| t.join().unwrap()).unwrap_or_default();
        (status, self.seen.join("\n") + "\n", String::from_utf8_lossy(&stderr).into_owned())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- the pool examples and the tour ----------------------------------------------------------

/// How long a pool example or the tour may take (in a debug build, on a busy machine) before the
/// test kills it and fails.
const POOL_EXAMPLE_DEADLINE: Duration = Duration::from_secs(60);

/// Builds and runs an example to its end (killed, and the test failed, after the deadline);
/// answers its stdout, having checked that it succeeded.
fn run_example(name: &str) -> String {
    let exe = build_example(name);
    let mut run = Running::start(&mut Command::new(&exe));
    let (status, stdout, stderr) = run.wait(POOL_EXAMPLE_DEADLINE);
    assert!(status.success(), "{name}: {status}\n{stdout}\n{stderr}");
    stdout
}

/// The line of `text` that contains `needle`.
fn line_with<'t>(text: &'t str, needle: &str) -> &'t str {
    text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

/// The numbers of a `[a, b, c]` list that follows `key` on its line.
fn list_after(text: &str, key: &str) -> Vec<u64> {
    let line = line_with(text, key);
    let rest = &line[line.find(key).unwrap() + key.len()..];
    let inner = rest.trim_start().strip_prefix('[').and_then(|r| r.split(']').next());
    let inner = inner.unwrap_or_else(|| panic!("no list after {key:?} in {line:?}"));
    inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
}

#[test]
fn pool_map_prints_the_100_squares_in_order_and_apply() {
    let stdout = run_example("pool_map");
    let want: Vec<u64> = (0..100u64).map(|x| x * x).collect();
    assert_eq!(list_after(&stdout, "Pool    "), want, "{stdout}");
    assert!(line_with(&stdout, "Pool    ").ends_with("9604, 9801]"), "{stdout}");
    assert!(stdout.contains("map(square, 0..100) gave 100 results, in order"), "{stdout}");
    assert!(stdout.contains("apply(square, 10) gave 100\n"), "{stdout}");
    let workers = list_after(&stdout, "started a pool of 4 worker processes: ");
    assert_eq!(workers.len(), 4, "{stdout}");
    assert!(stdout.contains("closed the pool and joined its workers"), "{stdout}");
}

#[test]
fn pool_submit_gives_5000000_times_n_for_1_to_10_as_they_complete() {
    let stdout = run_example("pool_submit");
    let workers = list_after(&stdout, "started 5 worker processes ");
    assert_eq!(workers.len(), 5, "{stdout}");

    // `  3. add_number(7) = 35000000 (worker pid 1234)`, one per task, numbered in completion order.
    let mut seen = Vec::new();
    for (k, line) in stdout.lines().filter(|l| l.contains(". add_number(")).enumerate() {
        let (rank, rest) = line.trim().split_once(". add_number(").unwrap();
        assert_eq!(rank.parse::<usize>().unwrap(), k + 1, "{line}");
        let (n, rest) = rest.split_once(") = ").unwrap();
        let (value, rest) = rest.split_once(" (worker pid ").unwrap();
        let (n, value): (u64, u64) = (n.parse().unwrap(), value.parse().unwrap());
        assert_eq!(value, 5_000_000 * n, "the seed's count(n) is 5000000 * n: {line}");
        let pid: u64 = rest.strip_suffix(')').unwrap().parse().unwrap();
        assert!(workers.contains(&pid), "computed by one of the pool's workers: {line}\n{stdout}");
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>(), "each of 1..=10 once:\n{stdout}");

    let sum: u64 = (1..=10).map(|n| 5_000_000 * n).sum();
    assert!(line_with(&stdout, "the pool took ").ends_with(&format!("sum {sum}")), "{stdout}");
    assert!(line_with(&stdout, "one after the other in this process took ").ends_with(&format!("sum {sum}")));
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(stdout.contains(&format!("this machine has {cores} cores")), "{stdout}");
    let speed_up = line_with(&stdout, "speed-up ");
    assert!(speed_up.contains(&format!("with 5 workers on {cores} cores (at most {}x", cores.min(5))), "{stdout}");
}

#[test]
fn worker_crash_fails_one_task_with_sigkill_replaces_the_worker_and_goes_on() {
    let stdout = run_example("worker_crash");
    let before = list_after(&stdout, "a pool of 4 workers: ");
    assert_eq!(before.len(), 4, "{stdout}");

    // The task on 13 killed its own worker: only it failed, naming the worker and the signal.
    let failed: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with("task ")).collect();
    assert_eq!(failed.len(), 1, "one task failed:\n{stdout}");
    assert!(failed[0].trim_start().starts_with("task 13 failed: worker "), "{stdout}");
    assert!(failed[0].ends_with("died, killed by signal 9 (SIGKILL)"), "{stdout}");
    let dead = u64::from(pid_after(failed[0], "failed: worker "));
    assert!(before.contains(&dead), "the dead worker was one of the pool's:\n{stdout}");
    assert!(stdout.contains("the other 19 of 20 tasks gave the right square"), "{stdout}");

    // It was replaced by a new process.
    assert_eq!(list_after(&stdout, "gone: "), [dead], "{stdout}");
    let new = list_after(&stdout, "replaced by: ");
    assert_eq!(new.len(), 1, "{stdout}");
    assert!(new[0] != dead && !before.contains(&new[0]), "{stdout}");
    let after = list_after(&stdout, "workers now: ");
    assert_eq!(after.len(), 4, "{stdout}");
    assert!(after.contains(&new[0]) && !after.contains(&dead), "{stdout}");

    // The same pool goes on.
    assert!(stdout.contains("a second map on the same pool: 100 squares, the last 9801"), "{stdout}");

    // A worker killed from outside: a task it ran (if the kill caught it busy) fails naming it;
    // the other naps slept their 500 ms; it is replaced; the pool still answers.
    let victim = pid_after(&stdout, "kill -9 ");
    let naps: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with("nap ")).collect();
    assert_eq!(naps.len(), 4, "{stdout}");
    for nap in &naps {
        assert!(
            nap.ends_with("slept 500 ms")
                || nap.ends_with(&format!("worker {victim} died, killed by signal 9 (SIGKILL)")),
            "{nap}\n{stdout}"
        );
    }
    let last_workers = stdout.lines().rfind(|l| l.contains("workers now: ")).unwrap();
    let last_workers = list_after(last_workers, "workers now: ");
    assert_eq!(last_workers.len(), 4, "{stdout}");
    assert!(!last_workers.contains(&u64::from(victim)), "{stdout}");
    assert!(stdout.contains("apply(square, 12) on the same pool gave 144"), "{stdout}");
    assert!(stdout.contains("6 workers started, 2 died and were replaced"), "{stdout}");
}

#[test]
fn tour_runs_all_four_scenes_and_a_crash_and_ends_on_its_own() {
    let stdout = run_example("tour");
    let lines: Vec<&str> = stdout.lines().collect();
    let at =
        |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?}:\n{stdout}"));
    let headings = [
        "== Scene 1: a process ==",
        "== Scene 2: process communication ==",
        "== Scene 3: a process pool ==",
        "== Scene 4: an asynchronous process pool ==",
        "== Finale: a worker crash, survived ==",
    ];
    let positions: Vec<usize> = headings.iter().map(|h| at(h)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "the scenes in order:\n{stdout}");

    // Scene 1: a child with its own name and pid.
    let main = pid_after(&stdout, "main is pid ");
    let child = pid_after(&stdout, "child: name Process-1, pid ");
    assert_ne!(main, child, "{stdout}");
    assert!(stdout.contains("Process-1 ended with exit code 0; alive now: false"), "{stdout}");
    // Scene 2: 0..9 in order, then the reader stops by itself.
    assert!(stdout.contains("got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], then Disconnected"), "{stdout}");
    assert!(stdout.contains("both ended on their own (writer: exit code 0, reader: exit code 0)"), "{stdout}");
    // Scene 3: squares in order, and apply.
    assert!(stdout.contains("map(square, 0..100): 100 results in order: [0, 1, 4, 9, 16] ... [9604, 9801]"));
    assert!(stdout.contains("apply(square, 10): 100\n"), "{stdout}");
    // Scene 4: the ten counts, each checked by the tour itself.
    let mut order = list_after(&stdout, "completed in this order: ");
    order.sort_unstable();
    assert_eq!(order, (1..=10).collect::<Vec<u64>>(), "{stdout}");
    assert!(stdout.contains("add_number(n) = 5000000 * n for each"), "{stdout}");
    // Finale: one task lost to SIGKILL, the rest right, the pool goes on.
    assert!(line_with(&stdout, "task 13 failed: worker ").ends_with("died, killed by signal 9 (SIGKILL)"));
    assert!(stdout.contains("the other 19 tasks gave the right square"), "{stdout}");
    assert!(stdout.contains("the same pool, a second map: 100 squares, the last 9801"), "{stdout}");

    assert!(lines.last().unwrap().starts_with("tour: done in "), "{stdout}");
    assert!(lines.last().unwrap().ends_with("every process has ended, and so does this program"), "{stdout}");
}
