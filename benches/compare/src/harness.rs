//! Processes: the runner re-executes its own binary with a hidden `--child ROLE key=value...`
//! argument list, once per side of a measurement, and reads one `RESULT {json}` line back.
//!
//! Nothing is forked from the runner: every child is a fresh `exec` of the binary, so no lock held
//! by some other thread can be inherited, and process start-up is never inside a timed region (the
//! children synchronise over their [`Link`] before the clock starts).
//!
//! The two sides of a measurement share a [`Link`]: an `AF_UNIX` `SOCK_SEQPACKET` socket pair,
//! created by the runner and inherited by the children. Peers use it for their rendezvous (a
//! path, a service name, a file descriptor passed with `SCM_RIGHTS`) and the workloads for their
//! start and end barriers. It is never used while the clock runs.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::unistd::Pid;
use serde_json::Value;

use crate::payload::MISMATCH_EXIT;

/// Errors inside the runner and its children: boxed, with a message for the human.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The largest link message.
const LINK_MAX: usize = 64 * 1024;
/// What a child prints before its one JSON result.
pub const RESULT_PREFIX: &str = "RESULT ";

/// The control channel between the two children of one measurement.
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
}

impl Link {
    /// Takes ownership of an inherited descriptor number.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in this process owns or closes.
    pub unsafe fn from_raw(fd: RawFd) -> Self {
        // SAFETY: the caller promises `fd` is open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self { fd }
    }

    /// Sends one message (never empty).
    pub fn send(&self, data: &[u8]) -> Result<()> {
        self.send_with(data, &[])
    }

    /// Sends one message and a file descriptor with it (`SCM_RIGHTS`).
    pub fn send_fd(&self, data: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
        self.send_with(data, &[fd.as_raw_fd()])
    }

    fn send_with(&self, data: &[u8], fds: &[RawFd]) -> Result<()> {
        assert!(!data.is_empty() && data.len() <= LINK_MAX, "link messages are 1..=64 KiB");
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(fds)] };
        let sent = sendmsg::<()>(self.fd.as_raw_fd(), &[IoSlice::new(data)], &cmsgs, MsgFlags::empty(), None)?;
        if sent != data.len() {
            return Err(format!("link: sent {sent} of {} bytes", data.len()).into());
        }
        Ok(())
    }

    /// Receives one message and the descriptor that came with it, if any.
    pub fn recv_with_fd(&self) -> Result<(Vec<u8>, Option<OwnedFd>)> {
        let mut buf = vec![0u8; LINK_MAX];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (len, mut fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    for fd in raw {
                        // SAFETY: the kernel just installed this descriptor for us; we own it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Err("link: the other side is gone".into());
        }
        buf.truncate(len);
        Ok((buf, fds.pop()))
    }

    /// Receives one message (no descriptor expected).
    pub fn recv(&self) -> Result<Vec<u8>> {
        Ok(self.recv_with_fd()?.0)
    }

    /// Receives one message holding UTF-8 text.
    pub fn recv_string(&self) -> Result<String> {
        Ok(String::from_utf8(self.recv()?)?)
    }

    /// Receives one message and requires a descriptor with it.
    pub fn recv_fd(&self) -> Result<(Vec<u8>, OwnedFd)> {
        match self.recv_with_fd()? {
            (data, Some(fd)) => Ok((data, fd)),
            (data, None) => Err(format!("link: expected a descriptor with {data:?}").into()),
        }
    }

    /// Waits until the other side reaches its matching barrier named `name`.
    pub fn barrier(&self, name: &str) -> Result<()> {
        self.send(name.as_bytes())?;
        let got = self.recv()?;
        if got != name.as_bytes() {
            return Err(
                format!("link: at barrier {name:?} the other side sent {:?}", String::from_utf8_lossy(&got)).into()
            );
        }
        Ok(())
    }
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return vec![];
    };
    (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
}

/// The two CPUs the two sides are pinned to (sender / client first), or `None` on a machine
/// with fewer than two CPUs, where nothing is pinned.
pub fn pin_pair() -> Option<(usize, usize)> {
    let cpus = allowed_cpus();
    (cpus.len() >= 2).then(|| (cpus[0], cpus[1]))
}

/// Pins the calling thread (and every thread it starts later) to one CPU.
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

/// The hidden arguments a child gets: `key=value` pairs.
#[derive(Debug, Default, Clone)]
pub struct Args(BTreeMap<String, String>);

impl Args {
    /// Parses `key=value` words.
    pub fn parse(words: &[String]) -> Result<Self> {
        let mut map = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| format!("child argument {w:?}"))?;
            map.insert(k.to_string(), v.to_string());
        }
        Ok(Self(map))
    }

    /// Adds one pair.
    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    /// The value of `key`, which must be there.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.0.get(key).map(String::as_str).ok_or_else(|| format!("missing child argument {key}").into())
    }

    /// The value of `key`, if there.
    pub fn opt(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key`, parsed.
    pub fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.get(key)?;
        v.parse().map_err(|e| format!("child argument {key}={v}: {e}").into())
    }

    fn words(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(|(k, v)| format!("{k}={v}"))
    }
}

/// One child to start: its role, its arguments and the CPU to pin it to.
#[derive(Debug, Clone)]
pub struct ChildCmd {
    /// What the child does (`oneway-tx`, `rtt-server`, `limit-line-a`, ...).
    pub role: &'static str,
    /// Its arguments.
    pub args: Args,
    /// Where it runs, or `None` to leave it unpinned.
    pub cpu: Option<usize>,
}

/// Why a measurement produced no figure.
#[derive(Debug)]
pub enum Failure {
    /// A receiver saw a wrong message: the run must stop.
    Mismatch(String),
    /// Anything else (a peer failed to set up, a deadline passed): that row is marked failed.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Mismatch(s) => write!(f, "PAYLOAD MISMATCH: {s}"),
            Failure::Other(s) => f.write_str(s),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Other(e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.to_string())
    }
}

fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> Result<()> {
    let flags = if on { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

fn spawn(cmd: &ChildCmd, link: Option<&OwnedFd>) -> Result<Child> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("--child").arg(cmd.role).args(cmd.args.words());
    if let Some(cpu) = cmd.cpu {
        c.arg(format!("cpu={cpu}"));
    }
    if let Some(fd) = link {
        c.arg(format!("link={}", fd.as_raw_fd()));
        // The runner starts no threads, so nothing else can spawn while the flag is off.
        set_cloexec(fd.as_fd(), false)?;
    }
    let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn();
    if let Some(fd) = link {
        set_cloexec(fd.as_fd(), true)?;
    }
    Ok(child?)
}

/// Runs the two sides of one measurement and returns their results (in the order given).
pub fn run_pair(a: &ChildCmd, b: &ChildCmd, deadline: Duration) -> std::result::Result<Vec<Value>, Failure> {
    let (la, lb) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Failure::Other(format!("socketpair: {e}")))?;
    let ca = spawn(a, Some(&la))?;
    let cb = match spawn(b, Some(&lb)) {
        Ok(c) => c,
        Err(e) => {
            collect(vec![(a.role.to_string(), ca)], Duration::ZERO).ok();
            return Err(e.into());
        }
    };
    // Our copies go, so a side whose partner dies sees the link close instead of hanging.
    drop((la, lb));
    collect(vec![(a.role.to_string(), ca), (b.role.to_string(), cb)], deadline)
}

/// Runs several children that need no link (they meet through a named channel and a start
/// time); returns their results in the order given.
pub fn run_many(cmds: &[ChildCmd], deadline: Duration) -> std::result::Result<Vec<Value>, Failure> {
    let mut kids = Vec::new();
    for cmd in cmds {
        match spawn(cmd, None) {
            Ok(c) => kids.push((cmd.role.to_string(), c)),
            Err(e) => {
                collect(kids, Duration::ZERO).ok();
                return Err(e.into());
            }
        }
    }
    collect(kids, deadline)
}

/// Runs a child that needs no partner.
pub fn run_single(a: &ChildCmd, deadline: Duration) -> std::result::Result<Value, Failure> {
    let c = spawn(a, None)?;
    Ok(collect(vec![(a.role.to_string(), c)], deadline)?.remove(0))
}

/// Runs another program (python3) that prints `RESULT {json}` lines; returns its results.
pub fn run_program(label: &str, mut cmd: Command, deadline: Duration) -> std::result::Result<Value, Failure> {
    let c = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    Ok(collect(vec![(label.to_string(), c)], deadline)?.remove(0))
}

/// Reads every child's stdout to its end (or until the deadline, when the children still running
/// are killed, each by its own pid), reaps them, and returns each one's `RESULT` value.
fn collect(mut kids: Vec<(String, Child)>, deadline: Duration) -> std::result::Result<Vec<Value>, Failure> {
    let mut end = Instant::now() + deadline;
    let mut outs: Vec<Vec<u8>> = vec![Vec::new(); kids.len()];
    let mut pipes: Vec<Option<std::process::ChildStdout>> = kids.iter_mut().map(|(_, c)| c.stdout.take()).collect();
    let mut timed_out = false;
    while pipes.iter().any(Option::is_some) {
        let now = Instant::now();
        if now >= end {
            timed_out = true;
            break;
        }
        let wait = PollTimeout::try_from(end - now).unwrap_or(PollTimeout::MAX);
        let open: Vec<usize> = (0..pipes.len()).filter(|&i| pipes[i].is_some()).collect();
        let mut fds: Vec<PollFd<'_>> =
            open.iter().map(|&i| PollFd::new(pipes[i].as_ref().expect("open").as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut fds, wait) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Failure::Other(format!("poll: {e}"))),
        }
        let ready: Vec<usize> = open
            .iter()
            .zip(&fds)
            .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(&i, _)| i)
            .collect();
        drop(fds);
        for i in ready {
            let mut chunk = [0u8; 8192];
            let n = pipes[i].as_mut().expect("open").read(&mut chunk).unwrap_or(0);
            if n == 0 {
                pipes[i] = None;
                // A side that failed: give its partner two seconds, then stop waiting.
                if let Ok(Some(st)) = kids[i].1.try_wait()
                    && !st.success()
                {
                    end = end.min(Instant::now() + Duration::from_secs(2));
                }
            } else {
                outs[i].extend_from_slice(&chunk[..n]);
            }
        }
    }
    let mut results = Vec::new();
    let mut failure: Option<Failure> = None;
    for ((role, mut child), out) in kids.into_iter().zip(outs) {
        if timed_out && matches!(child.try_wait(), Ok(None)) {
            // Our own child, ended by its pid.
            child.kill().ok();
        }
        let status = child.wait()?;
        let text = String::from_utf8_lossy(&out);
        let mut result = None;
        for line in text.lines() {
            if let Some(json) = line.strip_prefix(RESULT_PREFIX) {
                result = serde_json::from_str::<Value>(json).ok();
            } else if !line.trim().is_empty() {
                eprintln!("  [{role}] {line}");
            }
        }
        let fail = if status.code() == Some(MISMATCH_EXIT) {
            Some(Failure::Mismatch(format!("{role}: the receiver saw a wrong message (see above)")))
        } else if timed_out {
            Some(Failure::Other(format!("{role}: no result within {deadline:?}; killed")))
        } else if !status.success() {
            Some(Failure::Other(format!("{role}: exited with {status}")))
        } else if result.is_none() {
            Some(Failure::Other(format!("{role}: printed no result")))
        } else {
            None
        };
        match (fail, &failure) {
            (Some(f @ Failure::Mismatch(_)), _) => failure = Some(f),
            (Some(f), None) => failure = Some(f),
            _ => {}
        }
        results.push(result.unwrap_or(Value::Null));
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(results),
    }
}
