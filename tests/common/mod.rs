//! Support for multi-process tests: forking with a deadline on every wait, unique segment names,
//! memory shared with children for bookkeeping, and a check that nothing is left in /dev/shm.
#![allow(dead_code)]

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// Tests that fork hold this, so that two tests never fork at once (the harness's other threads
/// are then at least not inside our own fork path), as nix's test suite does.
pub static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Prefix of every segment name made by the test suite.
pub const PREFIX: &str = "rp-test-";

/// A segment name no other test (or test run) uses.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{PREFIX}{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Segment names of this test process still in /dev/shm.
pub fn leftovers() -> Vec<String> {
    let mine = format!("-{}-", std::process::id());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(PREFIX) && n.contains(&mine))
                .collect()
        })
        .unwrap_or_default()
}

/// A forked child; killed and reaped on drop if the test did not wait for it.
pub struct Child {
    pub pid: Pid,
    reaped: bool,
}

/// Forks a child that runs `f` and exits with its return value (101 if it panics), through
/// `_exit`, so no destructor of the parent's objects runs in the child.
pub fn spawn(f: impl FnOnce() -> i32) -> Child {
    let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the child only runs `f` (ring operations, allocation, arithmetic) and then _exit;
    // glibc's malloc is fork-safe, and FORK_LOCK keeps our other forking tests out.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(guard);
            Child { pid: child, reaped: false }
        }
    }
}

impl Child {
    /// Waits for the child to end, at most `timeout`; panics (after killing it) if it does not.
    pub fn wait(mut self, timeout: Duration) -> WaitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    self.reaped = true;
                    return status;
                }
                Err(e) => panic!("waitpid({}) failed: {e}", self.pid),
            }
            if Instant::now() >= deadline {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = waitpid(self.pid, None);
                self.reaped = true;
                panic!("child {} did not finish within {timeout:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits and asserts a clean exit with code 0.
    pub fn join(self, timeout: Duration) {
        let pid = self.pid;
        match self.wait(timeout) {
            WaitStatus::Exited(_, 0) => {}
            other => panic!("child {pid} ended badly: {other:?}"),
        }
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(mut self) -> WaitStatus {
        let _ = kill(self.pid, Signal::SIGKILL);
        self.reaped = true;
        waitpid(self.pid, None).expect("reap killed child")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// An array of atomics in memory shared with forked children (MAP_SHARED | MAP_ANONYMOUS).
pub struct SharedCounters {
    ptr: *mut AtomicU64,
    len: usize,
}

// SAFETY: the memory is only accessed through atomics.
unsafe impl Send for SharedCounters {}
// SAFETY: as above.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    pub fn new(len: usize) -> SharedCounters {
        let bytes = std::num::NonZeroUsize::new(len.max(1) * 8).unwrap();
        let prot = nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE;
        // SAFETY: a fresh anonymous shared mapping, aliasing nothing; zero-filled, and zero is a
        // valid AtomicU64.
        let p = unsafe { nix::sys::mman::mmap_anonymous(None, bytes, prot, nix::sys::mman::MapFlags::MAP_SHARED) }
            .expect("mmap");
        SharedCounters { ptr: p.as_ptr().cast(), len }
    }

    pub fn get(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len);
        // SAFETY: in bounds, mapped for our lifetime, 8-aligned.
        unsafe { &*self.ptr.wrapping_add(i) }
    }

    /// Sets bit `bit` of the bitmap stored from word `base`; answers whether it was set before.
    pub fn set_bit(&self, base: usize, bit: u64) -> bool {
        let w = self.get(base + (bit / 64) as usize);
        w.fetch_or(1 << (bit % 64), Ordering::AcqRel) & (1 << (bit % 64)) != 0
    }

    pub fn bit(&self, base: usize, bit: u64) -> bool {
        self.get(base + (bit / 64) as usize).load(Ordering::Acquire) & (1 << (bit % 64)) != 0
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        if let Some(p) = std::ptr::NonNull::new(self.ptr.cast()) {
            // SAFETY: unmapping what `new` mapped; no reference outlives self.
            let _ = unsafe { nix::sys::mman::munmap(p, self.len.max(1) * 8) };
        }
    }
}

/// A small deterministic PRNG (xorshift64*), so runs can be replayed from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The message a producer sends for (`producer`, `seq`): a 16-byte identity, then bytes that
/// depend on both, of a length that depends on both (8..=`max_len`).
pub fn message(producer: u32, seq: u64, max_len: usize, out: &mut Vec<u8>) {
    let mut r = Rng(u64::from(producer) << 40 ^ seq ^ 0x9E37_79B9_7F4A_7C15);
    let extra = if r.below(97) == 0 { r.below(max_len as u64) } else { r.below(256) } as usize;
    let len = (16 + extra).min(max_len.max(16));
    out.clear();
    out.extend_from_slice(&producer.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let fill = (seq as u8) ^ (producer as u8).rotate_left(3);
    out.resize(len, 0);
    for (k, b) in out[16..].iter_mut().enumerate() {
        *b = fill.wrapping_add(k as u8);
    }
}

/// Checks a received message against [`message`]; answers (producer, seq).
pub fn check_message(m: &[u8]) -> Result<(u32, u64), String> {
    if m.len() < 16 {
        return Err(format!("message of {} bytes is too short", m.len()));
    }
    let producer = u32::from_le_bytes(m[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(m[4..8].try_into().unwrap()) as usize;
    let seq = u64::from_le_bytes(m[8..16].try_into().unwrap());
    if len != m.len() {
        return Err(format!("length field {len} but {} bytes received", m.len()));
    }
    let fill = (seq as u8) ^ (producer as u8).rotate_left(3);
    for (k, b) in m[16..].iter().enumerate() {
        if *b != fill.wrapping_add(k as u8) {
            return Err(format!("byte {k} of ({producer}, {seq}) is wrong"));
        }
    }
    Ok((producer, seq))
}

// ----- running example binaries -----------------------------------------------------------

/// Reads `r` to its end on a thread (so a chatty child cannot block on a full pipe).
pub fn drain(mut r: Box<dyn std::io::Read + Send>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Runs `cmd` with stdout and stderr captured; kills it and fails the test after `timeout`.
pub fn run_with_deadline(cmd: &mut std::process::Command, timeout: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain both pipes on threads, so a chatty child cannot block on a full pipe.
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Builds `examples/<name>.rs` with the profile of this test binary (`cargo test --test NAME`
/// does not build examples) and returns its path, next to this test binary's directory. One build
/// at a time: tests run in parallel.
pub fn build_example(name: &str) -> std::path::PathBuf {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = me.parent().and_then(|deps| deps.parent()).unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => "dev",
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let target_dir = profile_dir.parent().unwrap();
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet", "--example", name, "--profile", profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run_with_deadline(&mut cmd, Duration::from_secs(600));
    assert!(out.status.success(), "cargo build --example {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let exe = profile_dir.join("examples").join(name);
    assert!(exe.exists(), "{} not found", exe.display());
    exe
}
