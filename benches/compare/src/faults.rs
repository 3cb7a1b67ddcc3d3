//! **What goes wrong**: failures counted, not timed, for the shared_memory + raw_sync ring
//! ([`crate::peers::shmsync`]) and for ringpool's `Ring` doing the same things.
//!
//! One child process (`faults`) runs every check once and returns the counts; it starts its own
//! helper processes (re-executions of this binary: `faults-holder`, `faults-locker`) and ends
//! each of them by its pid. Every wait has a deadline; nothing can hang the run.
//!
//! | check | raw_sync (as shipped) | ringpool |
//! | --- | --- | --- |
//! | timed wait on something nobody signals, 10 timeouts of 50, 150, ..., 950 ms | `Event::wait(Timeout::Val(d))`: counts the waits that return before `d` has passed (an error at once) and any that return `Ok` | `Receiver::recv_timeout(d)` on an empty ring: the same counts |
//! | timed lock of a lock another live process holds, the same 10 timeouts | `Mutex::try_lock(Timeout::Val(d))`: counts the ones that return before `d` | `Sender::reserve_timeout(8, d)` while another process holds a reservation (the send lock): the same |
//! | the lock's holder is SIGKILLed; can another process take it within 2 s? | `try_lock(50 ms)` in a loop for 2 s: a failure if never taken | `reserve_timeout(8, 2 s)`: a failure if it does not succeed |
//! | the same, with the plain blocking call | `Mutex::lock()` in a fresh process: a failure if it has not returned after 1 s (the process is then killed) | `Sender::reserve(8)` in a fresh process, the same |

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use raw_sync::Timeout;
use raw_sync::events::{Event, EventImpl, EventInit};
use raw_sync::locks::{LockImpl, LockInit, Mutex};
use ringpool::Ring;
use serde_json::{Value, json};
use shared_memory::{Shmem, ShmemConf};

use crate::harness::{Args, Result};

/// Child roles of this module.
pub const ROLES: &[&str] = &["faults", "faults-holder", "faults-locker"];

/// The timed waits: 50, 150, ..., 950 ms (a spread of fractions of a second: raw_sync's timed
/// waits fail when the fraction of the current second plus the timeout's passes one second).
const TIMEOUTS_MS: [u64; 10] = [50, 150, 250, 350, 450, 550, 650, 750, 850, 950];
/// How long another process gets to take a lock whose holder was killed.
const TAKEOVER: Duration = Duration::from_secs(2);
/// How long a blocking `lock()` in a fresh process gets.
const BLOCKING: Duration = Duration::from_secs(1);
/// A wait that returns this much before its timeout counts as early (timer slack is far less).
const EARLY_SLACK: Duration = Duration::from_millis(5);

/// Runs one role in this child process.
pub fn run(role: &str, args: &Args) -> Result<Value> {
    match role {
        "faults" => faults(args),
        "faults-holder" => holder(args),
        "faults-locker" => locker(args),
        _ => Err(format!("unknown faults role {role}").into()),
    }
}

/// The checks' rows: (id, label, failures, trials) per check, in the order of the table.
pub fn rows(v: &Value) -> Result<Vec<(String, String, f64, f64)>> {
    let list = v.get("rows").and_then(Value::as_array).ok_or("faults: no rows")?;
    list.iter()
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(Value::as_str).map(String::from).ok_or(format!("faults row: {k}"));
            let n = |k: &str| r.get(k).and_then(Value::as_f64).ok_or(format!("faults row: {k}"));
            Ok((s("id")?, s("label")?, n("failures")?, n("trials")?))
        })
        .collect()
}

fn row(id: &str, label: &str, failures: u64, trials: u64) -> Value {
    json!({ "id": id, "label": label, "failures": failures, "trials": trials })
}

// ---- raw_sync --------------------------------------------------------------------------------

/// A segment with one raw_sync mutex at 0 and one event at 256 (as in [`crate::peers::shmsync`]).
struct Sync {
    mutex: Box<dyn LockImpl>,
    event: Box<dyn EventImpl>,
    _shm: Shmem,
}

impl Sync {
    fn new(name: &str, create: bool) -> Result<Self> {
        let shm = if create {
            ShmemConf::new().size(4096).os_id(name).create()?
        } else {
            ShmemConf::new().os_id(name).open()?
        };
        if shm.len() < 4096 {
            return Err("segment too small".into());
        }
        let base = shm.as_ptr();
        if Mutex::size_of(Some(base)) > 256 || Event::size_of(Some(base.wrapping_add(256))) > 256 {
            return Err("raw_sync objects larger than 256 bytes".into());
        }
        let data = base.wrapping_add(1024);
        let e = |what: &str, x: Box<dyn std::error::Error>| format!("raw_sync {what}: {x}");
        let (mutex, event) = if create {
            // SAFETY: 256 bytes at offset 0 of a new 4096-byte mapping that `_shm` keeps alive.
            let (m, _) = unsafe { Mutex::new(base, data) }.map_err(|x| e("Mutex::new", x))?;
            // SAFETY: 256 bytes at offset 256 of the same mapping.
            let (ev, _) = unsafe { Event::new(base.wrapping_add(256), true) }.map_err(|x| e("Event::new", x))?;
            (m, ev)
        } else {
            // SAFETY: the creator initialised the mutex at 0 before it started this process.
            let (m, _) = unsafe { Mutex::from_existing(base, data) }.map_err(|x| e("Mutex::from_existing", x))?;
            // SAFETY: and the event at 256.
            let (ev, _) =
                unsafe { Event::from_existing(base.wrapping_add(256)) }.map_err(|x| e("Event::from_existing", x))?;
            (m, ev)
        };
        Ok(Self { mutex, event, _shm: shm })
    }
}

// ---- helper processes ------------------------------------------------------------------------

/// A helper process whose stdout we read line by line, with deadlines.
struct Helper {
    child: Child,
    out: Vec<u8>,
}

impl Helper {
    fn start(role: &str, words: &[String], keep_fd: Option<&OwnedFd>) -> Result<Self> {
        let mut c = Command::new(std::env::current_exe()?);
        c.arg("--child").arg(role).args(words);
        if let Some(fd) = keep_fd {
            c.arg(format!("fd={}", fd.as_raw_fd()));
            fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
        }
        let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn();
        if let Some(fd) = keep_fd {
            fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        Ok(Self { child: child?, out: Vec::new() })
    }

    /// Whether the helper printed a line `want` within `within`.
    fn said(&mut self, want: &str, within: Duration) -> Result<bool> {
        let end = Instant::now() + within;
        let Some(pipe) = self.child.stdout.as_mut() else { return Ok(false) };
        loop {
            if String::from_utf8_lossy(&self.out).lines().any(|l| l.trim() == want) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(false);
            }
            let wait = PollTimeout::try_from(end - now).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let mut chunk = [0u8; 256];
            let n = pipe.read(&mut chunk)?;
            if n == 0 {
                return Ok(String::from_utf8_lossy(&self.out).lines().any(|l| l.trim() == want));
            }
            self.out.extend_from_slice(&chunk[..n]);
        }
    }

    /// SIGKILL (our own child, by its pid) and reap.
    fn kill(mut self) -> Result<()> {
        self.child.kill().ok();
        self.child.wait()?;
        Ok(())
    }
}

/// `faults-holder`: takes the lock (raw_sync's mutex in segment `name`, or ringpool's send lock
/// through a reservation on the ring in descriptor `fd`), says `HELD`, and sleeps until killed.
fn holder(args: &Args) -> Result<Value> {
    match args.get("what")? {
        "raw_sync" => {
            let sync = Sync::new(args.get("name")?, false)?;
            let guard = sync.mutex.lock().map_err(|e| format!("lock: {e}"))?;
            println!("HELD");
            std::thread::sleep(Duration::from_secs(60));
            drop(guard);
        }
        _ => {
            let ring = ringpool_from_args(args)?;
            let tx = ring.sender()?;
            let guard = tx.reserve(8)?;
            println!("HELD");
            std::thread::sleep(Duration::from_secs(60));
            drop(guard);
        }
    }
    Err("the holder was not killed within 60 s".into())
}

/// `faults-locker`: the plain blocking lock; says `GOT` if it returns.
fn locker(args: &Args) -> Result<Value> {
    match args.get("what")? {
        "raw_sync" => {
            let sync = Sync::new(args.get("name")?, false)?;
            let guard = sync.mutex.lock().map_err(|e| format!("lock: {e}"))?;
            println!("GOT");
            drop(guard);
        }
        _ => {
            let ring = ringpool_from_args(args)?;
            let tx = ring.sender()?;
            let mut guard = tx.reserve(8)?;
            guard.copy_from_slice(&7u64.to_le_bytes());
            guard.commit();
            println!("GOT");
        }
    }
    Ok(json!({}))
}

fn ringpool_from_args(args: &Args) -> Result<Ring> {
    let fd: i32 = args.num("fd")?;
    // SAFETY: the faults process left this descriptor (the ring's memfd) open across exec for us
    // and passed its number; nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Ring::builder().from_fd(fd)?)
}

// ---- the checks ------------------------------------------------------------------------------

/// Counts the timed waits that returned before their timeout, and those that returned a success.
fn timed(mut wait: impl FnMut(Duration) -> bool) -> (u64, u64) {
    let (mut early, mut ok) = (0, 0);
    for ms in TIMEOUTS_MS {
        let d = Duration::from_millis(ms);
        let t0 = Instant::now();
        let got = wait(d);
        if got {
            ok += 1;
        } else if t0.elapsed() + EARLY_SLACK < d {
            early += 1;
        }
    }
    (early, ok)
}

fn faults(args: &Args) -> Result<Value> {
    let n = TIMEOUTS_MS.len() as u64;
    let name = format!("/{}{}-faults", args.get("prefix")?, args.get("tag")?);
    let mut rows = Vec::new();

    // raw_sync: a timed wait on an event nobody sets.
    let sync = Sync::new(&name, true)?;
    let (early, ok) = timed(|d| sync.event.wait(Timeout::Val(d)).is_ok());
    rows.push(row("rawsync-event-early", "raw_sync Event::wait(d), nobody sets it: returned before d", early, n));
    rows.push(row("rawsync-event-ok", "raw_sync Event::wait(d), nobody sets it: returned Ok (spurious)", ok, n));

    // ringpool: a timed receive on an empty ring.
    let ring = Ring::builder().capacity(4096).anonymous()?;
    let rx = ring.receiver()?;
    let (early, ok) = timed(|d| rx.recv_timeout(d).is_ok());
    rows.push(row(
        "ringpool-recv-early",
        "ringpool Receiver::recv_timeout(d), empty ring: returned before d",
        early,
        n,
    ));
    rows.push(row("ringpool-recv-ok", "ringpool Receiver::recv_timeout(d), empty ring: returned a message", ok, n));

    // raw_sync: a lock held by another live process, then killed.
    let word = |k: &str, v: &str| format!("{k}={v}");
    let raw_words = [word("what", "raw_sync"), word("name", &name)];
    let mut h = Helper::start("faults-holder", &raw_words, None)?;
    if !h.said("HELD", Duration::from_secs(10))? {
        h.kill()?;
        return Err("the raw_sync holder did not take the lock within 10 s".into());
    }
    let (early, ok) = timed(|d| sync.mutex.try_lock(Timeout::Val(d)).is_ok());
    rows.push(row(
        "rawsync-trylock-early",
        "raw_sync Mutex::try_lock(d), held by a live process: returned before d",
        early,
        n,
    ));
    rows.push(row("rawsync-trylock-ok", "raw_sync Mutex::try_lock(d), held by a live process: taken (!)", ok, n));
    h.kill()?;
    let t0 = Instant::now();
    let mut taken = false;
    while t0.elapsed() < TAKEOVER {
        if let Ok(g) = sync.mutex.try_lock(Timeout::Val(Duration::from_millis(50))) {
            drop(g);
            taken = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    rows.push(row(
        "rawsync-dead-holder",
        "raw_sync Mutex, holder SIGKILLed: not taken by try_lock within 2 s",
        u64::from(!taken),
        1,
    ));
    let mut l = Helper::start("faults-locker", &raw_words, None)?;
    let got = l.said("GOT", BLOCKING)?;
    l.kill()?;
    rows.push(row(
        "rawsync-dead-holder-lock",
        "raw_sync Mutex, holder SIGKILLed: lock() in a new process still blocked after 1 s",
        u64::from(!got),
        1,
    ));
    drop(sync);

    // ringpool: the send lock held by another live process (a reservation), then killed.
    let ring = Ring::builder().capacity(4096).anonymous()?;
    let tx = ring.sender()?;
    let fd: OwnedFd = nix::unistd::dup(ring.fd())?;
    let mut h = Helper::start("faults-holder", &[word("what", "ringpool")], Some(&fd))?;
    if !h.said("HELD", Duration::from_secs(10))? {
        h.kill()?;
        return Err("the ringpool holder did not reserve within 10 s".into());
    }
    let (early, ok) = timed(|d| tx.reserve_timeout(8, d).is_ok());
    rows.push(row(
        "ringpool-reserve-early",
        "ringpool Sender::reserve_timeout(8, d), send lock held by a live process: returned before d",
        early,
        n,
    ));
    rows.push(row(
        "ringpool-reserve-ok",
        "ringpool Sender::reserve_timeout(8, d), send lock held by a live process: taken (!)",
        ok,
        n,
    ));
    h.kill()?;
    let taken = match tx.reserve_timeout(8, TAKEOVER) {
        Ok(mut g) => {
            g.copy_from_slice(&1u64.to_le_bytes());
            g.commit();
            true
        }
        Err(_) => false,
    };
    rows.push(row(
        "ringpool-dead-holder",
        "ringpool send lock, holder SIGKILLed: not taken by reserve_timeout within 2 s",
        u64::from(!taken),
        1,
    ));
    let mut l = Helper::start("faults-locker", &[word("what", "ringpool")], Some(&fd))?;
    let got = l.said("GOT", BLOCKING)?;
    l.kill()?;
    rows.push(row(
        "ringpool-dead-holder-lock",
        "ringpool send lock, holder SIGKILLed: reserve() in a new process still blocked after 1 s",
        u64::from(!got),
        1,
    ));
    let recoveries = ring.stats().send_recoveries;
    Ok(json!({ "rows": rows, "ringpool_send_recoveries": recoveries }))
}
