//! Helpers for the multi-process tests: one lock for every test that starts a process, a fork that
//! the threaded test harness can use, pipes with deadlines, and /proc checks.

#![allow(dead_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use ringpool::Process;
use ringpool::sync::liveness;

/// Every test that starts a process holds this, so that the harness's other threads are parked on
/// it (holding nothing) at the moment of a fork, and so that /proc scans see only one test's
/// children.
pub fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forks a child that runs `f`. The test harness runs several threads, so the checked
/// `Process::start` refuses here; the caller holds [`lock`].
pub fn fork(f: impl FnOnce() + 'static) -> Process {
    // SAFETY: the caller holds `lock()`, so the harness's other test threads are blocked on it and
    // hold no lock; libtest's main thread waits for results. The children in these tests only use
    // pipes, sleep, ringpool and the system allocator (glibc's malloc, which is fork-safe).
    unsafe { Process::builder().fork_unchecked(f) }.expect("fork")
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

/// Writes `line` and a newline (from a child).
pub fn send_line(fd: impl AsFd, line: &str) {
    let bytes = format!("{line}\n");
    let mut rest = bytes.as_bytes();
    while !rest.is_empty() {
        match nix::unistd::write(fd.as_fd(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Reads one line, waiting at most `timeout`. `None` at end-of-file or when time is up.
pub fn recv_line(fd: BorrowedFd<'_>, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    let mut line = Vec::new();
    loop {
        let left = timeout.checked_sub(start.elapsed())?;
        let ms = u32::try_from(left.as_millis() + 1).unwrap_or(u32::MAX);
        let mut pfd = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut pfd, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll: {e}"),
        }
        let mut byte = [0u8; 1];
        match nix::unistd::read(fd, &mut byte) {
            Ok(0) => return None,
            Ok(_) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Sends this process's stderr to /dev/null (in a child that is about to panic on purpose).
pub fn silence_stderr() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stderr(null);
    }
}

/// Sleeps for ever (a child that never ends on its own).
pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits until `cond` holds, checking every 5 ms, for at most `timeout`. Returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pids of this process's children that are zombies (state `Z` in /proc).
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| liveness::proc_stat(pid).is_some_and(|st| st.ppid == me && st.state == b'Z'))
        .collect()
}

/// Fails the test if this process has a zombie child.
pub fn assert_no_zombies() {
    let z = zombie_children();
    assert!(z.is_empty(), "zombie children left: {z:?}");
}

/// A process that is not our child (a grandchild), identified by pid and start time; SIGKILLed on
/// drop if it still runs, so a failed test leaves nothing behind.
pub struct Stray {
    pub pid: u32,
    pub start_time: u64,
}

impl Stray {
    pub fn new(pid: u32) -> Stray {
        let start_time = liveness::proc_stat(pid).map_or(0, |st| st.start_time);
        Stray { pid, start_time }
    }

    pub fn is_alive(&self) -> bool {
        liveness::is_alive(self.pid, self.start_time)
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        if self.is_alive() {
            let pid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
