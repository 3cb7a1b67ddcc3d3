//! Shared bench support: CPU pinning, forked peer processes that serve numbered commands, and
//! message patterns that the sender writes in full and the receiver checks.
//!
//! A [`Peer`] is a child process, forked by ringpool's own [`Process`] (checked fork: it refuses
//! when the bench process runs other threads; criterion without its `rayon` feature runs none). The
//! child asks the kernel to kill it when the bench process dies (`PR_SET_PDEATHSIG`, the default of
//! [`ProcessBuilder`](ringpool::process::ProcessBuilder)), runs only the peer loop, and leaves
//! through `_exit`: it never returns into criterion. Dropping a `Peer` stops the loop and reaps the
//! child; if that does not happen within a few seconds, or the bench is unwinding from a panic, the
//! child is killed (SIGKILL) and reaped.

use std::sync::OnceLock;
use std::time::Duration;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use ringpool::sync::SpinPolicy;
use ringpool::{Process, Queue, queue};

/// Command that ends a peer's loop.
const STOP: u64 = u64::MAX;

/// Reply a peer sends when it has taken a command and is about to work on it (see
/// [`Peer::start`]'s `announce_ready`).
pub const READY: u64 = u64::MAX - 1;

/// How long dropping a [`Peer`] waits for the child to end by itself before killing it.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The CPUs this process may run on, as found at the first call (before any pinning).
fn allowed_cpus() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&i| set.is_set(i).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    })
}

/// The CPU for `slot` (0: the producing or measuring side, 1: the consuming or echoing side, and so
/// on), or `None` on a machine with fewer than two CPUs, where pinning would only serialize.
pub fn cpu(slot: usize) -> Option<usize> {
    let cpus = allowed_cpus();
    (cpus.len() >= 2).then(|| cpus[slot % cpus.len()])
}

/// How many CPUs this process may use (counted before any pinning).
pub fn cpu_count() -> usize {
    allowed_cpus().len().max(1)
}

/// Pins the calling process to `cpu` (nothing for `None`). A failure is reported, not fatal.
pub fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = CpuSet::new();
    let pinned = set.set(cpu).and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        eprintln!("bench: cannot pin pid {} to CPU {cpu}: {e}", std::process::id());
    }
}

/// A forked peer process that serves commands: each command is a number `n`, the peer runs
/// `work(n)` and replies with what it returns. Commands and replies travel through two small
/// `Queue<u64>`s in anonymous shared memory, so the peer can be told how many messages to handle
/// outside the measured region.
pub struct Peer {
    name: String,
    process: Option<Process>,
    commands: queue::Sender<u64>,
    replies: queue::Receiver<u64>,
}

impl Peer {
    /// Forks the peer `name`, pinned to `cpu`. In the child, `work` runs once per command; a panic
    /// in it (a message that fails its check) ends the child with the panic's message, which the
    /// next [`command`](Self::command) or [`reply`](Self::reply) reports in a panic of the bench.
    ///
    /// With `announce_ready`, the peer replies [`READY`] as soon as it has taken a command, before
    /// working on it, so the caller can start its clock once the peer is awake. `reply_spin` is how
    /// the bench process waits for replies: busy where it has nothing else to do on its CPU, parking
    /// where it shares a CPU with peers that need it.
    ///
    /// The caller moves the ring handles the peer uses into `work`: the fork makes the child a member
    /// with them before the parent's copies go, and when the child dies they go with it, so the
    /// bench's own handles see `Disconnected` rather than waiting for ever.
    pub fn start(
        name: impl Into<String>,
        cpu: Option<usize>,
        reply_spin: SpinPolicy,
        announce_ready: bool,
        mut work: impl FnMut(u64) -> u64 + 'static,
    ) -> Peer {
        let name = name.into();
        let command_queue = Queue::<u64>::builder().slots(16).anonymous().expect("command queue");
        let reply_queue = Queue::<u64>::builder().slots(16).spin(reply_spin).anonymous().expect("reply queue");
        // The bench's own handles exist before the fork, so the peer never sees a side of its
        // queues empty of members (the child holds inherited copies of them: harmless).
        let commands = command_queue.sender().expect("command sender");
        let replies = reply_queue.receiver().expect("reply receiver");
        let commands_in = command_queue.receiver().expect("command receiver");
        let replies_out = reply_queue.sender().expect("reply sender");
        let process = Process::builder()
            .name(name.clone())
            .fork(move || {
                pin(cpu);
                while let Ok(n) = commands_in.recv() {
                    if n == STOP {
                        break;
                    }
                    if announce_ready && replies_out.send(READY).is_err() {
                        break;
                    }
                    let r = work(n);
                    if replies_out.send(r).is_err() {
                        break;
                    }
                }
            })
            .unwrap_or_else(|e| panic!("bench: cannot fork the peer {name}: {e}"));
        Peer { name, process: Some(process), commands, replies }
    }

    /// Tells the peer to handle `n`.
    pub fn command(&mut self, n: u64) {
        debug_assert!(n < READY);
        if self.commands.send(n).is_err() {
            self.failed("taking a command");
        }
    }

    /// Waits for the peer's next reply.
    pub fn reply(&mut self) -> u64 {
        match self.replies.recv() {
            Ok(r) => r,
            Err(_) => self.failed("working"),
        }
    }

    /// Waits for the peer's [`READY`].
    pub fn ready(&mut self) {
        let r = self.reply();
        assert_eq!(r, READY, "bench: peer {} answered {r} where READY was due", self.name);
    }

    /// Panics with how the peer ended: for a bench handle that found the peer's side of a ring gone
    /// (`Disconnected`), or a reply that never comes.
    pub fn failed(&mut self, doing: &str) -> ! {
        let name = self.name.clone();
        let outcome = match self.process.as_mut() {
            Some(p) => match p.join_timeout(STOP_WAIT) {
                Ok(status) => format!("it ended: {status}"),
                Err(e) => format!("{e}"),
            },
            None => "it is gone".to_string(),
        };
        panic!("bench: peer {name} failed while {doing}; {outcome}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let Some(mut p) = self.process.take() else { return };
        if std::thread::panicking() {
            // Dropping the handle kills the child (SIGKILL) and reaps it.
            return;
        }
        let _ = self.commands.try_send(STOP);
        match p.join_timeout(STOP_WAIT) {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("bench: peer {} ended with {status}", self.name),
            Err(e) => eprintln!("bench: peer {} did not stop ({e}); killing it", self.name),
        }
    }
}

/// Writes message number `seq` into all of `buf` (at least 8 bytes): `seq` in the first and the
/// last 8 bytes, a byte derived from `seq` in every byte between.
#[inline]
pub fn fill(buf: &mut [u8], seq: u64) {
    let len = buf.len();
    let s = seq.to_le_bytes();
    if len > 16 {
        buf[8..len - 8].fill(pattern_byte(seq));
    }
    buf[len - 8..].copy_from_slice(&s);
    buf[..8].copy_from_slice(&s);
}

/// The filler byte of message `seq`.
#[inline(always)]
fn pattern_byte(seq: u64) -> u8 {
    (seq as u8) ^ 0x5a
}

/// Checks a message written by [`fill`]: its length, the sequence number at both ends, and one
/// filler byte in every 64 (so every cache line of the message is read). Panics, naming what is
/// wrong, on a mismatch.
#[inline]
pub fn check(msg: &[u8], len: usize, seq: u64) {
    if msg.len() != len || msg[..8] != seq.to_le_bytes() || msg[len - 8..] != seq.to_le_bytes() {
        bad_message(msg, len, seq);
    }
    let want = pattern_byte(seq);
    if len > 16 && msg[8..len - 8].iter().step_by(64).any(|&b| b != want) {
        bad_message(msg, len, seq);
    }
}

#[cold]
#[inline(never)]
fn bad_message(msg: &[u8], len: usize, seq: u64) -> ! {
    let head = &msg[..msg.len().min(24)];
    panic!("bench: bad message: expected #{seq} of {len} bytes, got {} bytes starting {head:02x?}", msg.len());
}

/// Reads the sequence number of an 8-byte message.
#[inline(always)]
pub fn seq_of(msg: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(msg) {
        Ok(b) => u64::from_le_bytes(b),
        Err(_) => bad_message(msg, 8, 0),
    }
}
