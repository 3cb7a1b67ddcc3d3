//! Waiting for a child, reaping it, and signalling it.
//!
//! A wait with a deadline sleeps in `poll` on the child's pidfd (Linux 5.3+), which becomes
//! readable when the child ends; where `pidfd_open` is refused (an old kernel, a seccomp filter) it
//! falls back to `waitpid(WNOHANG)` at growing intervals. Either way the deadline is a
//! [`Deadline`] on the monotonic clock, and "timed out" is only answered once it has passed.
//!
//! Reaping goes through the pidfd too (`waitid(P_PIDFD)`, Linux 5.4+): it reaps that very process
//! or nothing, whereas `waitpid(pid)` on a child that someone else already reaped (a
//! `waitpid(-1)` elsewhere in the program) would reap whichever later child of ours was handed the
//! recycled pid. Where there is no pidfd, or the kernel refuses `P_PIDFD` (5.3 has `pidfd_open`
//! but not `P_PIDFD`: `EINVAL`), `waitpid(pid)` is used: it is exact as long as nobody else reaps
//! our children, which is the rule of the [module docs](super#no-zombies).
//!
//! Signals go through the pidfd when there is one (`pidfd_send_signal`), so they can never reach a
//! stranger that inherited a recycled pid. Without one, `kill(pid)` is still safe as long as the
//! child has not been reaped: a zombie keeps its pid.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::sync::Deadline;
use crate::sys::{Errno, cvt};

/// The fallback's first and longest sleep between two `waitpid(WNOHANG)` checks.
const FIRST_NAP: Duration = Duration::from_millis(1);
const LONGEST_NAP: Duration = Duration::from_millis(20);

/// A pidfd for `pid`, or `None` where the kernel refuses one.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and touches no memory of ours.
    let res = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    let fd = cvt(res).ok()?;
    let fd = i32::try_from(fd).ok()?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `waitpid(pid, flags)`, retried on EINTR. `Ok(None)`: still running (with `WNOHANG`).
fn waitpid(pid: u32, flags: i32) -> Result<Option<i32>, Errno> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live, writable int for the duration of the call.
        let res = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, flags) };
        match cvt(res) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether the kernel refused `waitid(P_PIDFD)` once (then it is not asked again).
static NO_PIDFD_WAIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `waitid(P_PIDFD, pidfd, WEXITED | flags)`, retried on EINTR, answered as a `waitpid` status word.
/// `Ok(None)`: still running (with `WNOHANG`). `Err(EINVAL)`: the kernel has no `P_PIDFD`.
fn waitid_pidfd(pidfd: BorrowedFd<'_>, flags: i32) -> Result<Option<i32>, Errno> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: siginfo_t is plain old data; all zeroes is a valid value (and `si_pid == 0` is
        // how WNOHANG says "nothing ended").
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, writable siginfo_t for the duration of the call; the pidfd is
        // a live descriptor borrowed for it.
        let res =
            unsafe { libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | flags) };
        match cvt(res) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
        // SAFETY: waitid filled `info` for a child-state change (SIGCHLD layout), or left it zeroed.
        let pid = unsafe { info.si_pid() };
        // SAFETY: as above.
        let status = unsafe { info.si_status() };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => (status & 0x7f) | 0x80,
            _ => status & 0x7f,
        }));
    }
}

/// Reaps the child `pid` (with its pidfd, when there is one) if it has ended, with `flags` for
/// `waitpid`/`waitid` (`WNOHANG` or 0). Returns the raw status word.
fn reap(pid: u32, pidfd: Option<BorrowedFd<'_>>, flags: i32) -> Result<Option<i32>, Errno> {
    if let Some(fd) = pidfd.filter(|_| !NO_PIDFD_WAIT.load(Ordering::Relaxed)) {
        match waitid_pidfd(fd, flags) {
            Err(Errno::EINVAL) => NO_PIDFD_WAIT.store(true, Ordering::Relaxed),
            other => return other,
        }
    }
    waitpid(pid, flags)
}

/// Reaps `pid` if it has ended. Returns the raw status word.
pub(crate) fn try_reap(pid: u32, pidfd: Option<BorrowedFd<'_>>) -> Result<Option<i32>, Errno> {
    reap(pid, pidfd, libc::WNOHANG)
}

/// Waits until `pid` ends, however long that takes, and reaps it.
pub(crate) fn reap_blocking(pid: u32, pidfd: Option<BorrowedFd<'_>>) -> Result<i32, Errno> {
    loop {
        if let Some(status) = reap(pid, pidfd, 0)? {
            return Ok(status);
        }
    }
}

/// Waits for `pid` to end, until `deadline`, and reaps it. `Ok(None)`: still running when the
/// deadline had passed (never before).
pub(crate) fn reap_until(pid: u32, pidfd: Option<BorrowedFd<'_>>, deadline: Deadline) -> Result<Option<i32>, Errno> {
    let mut nap = FIRST_NAP;
    loop {
        if let Some(status) = try_reap(pid, pidfd)? {
            return Ok(Some(status));
        }
        if deadline.passed() {
            return Ok(None);
        }
        // The pidfd is readable once the child has ended. EINTR means "look again"; any other
        // failure of poll, nap as if there were no pidfd.
        let polled = pidfd.map(|fd| poll_readable(&[fd], Some(deadline)));
        if !matches!(polled, Some(Ok(_) | Err(Errno::EINTR))) {
            std::thread::sleep(nap.min(deadline.remaining()));
            nap = (nap * 2).min(LONGEST_NAP);
        }
    }
}

/// `poll` for readability on `fds` until one is readable or `deadline` (None: no limit). Returns
/// whether any was readable. The timeout is rounded up to a whole millisecond, so a wakeup by
/// timeout is never before the deadline.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], deadline: Option<Deadline>) -> Result<bool, Errno> {
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)).collect();
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.remaining();
            let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    let n = nix::poll::poll(&mut pfds, timeout)?;
    Ok(n > 0)
}

/// Sends `signal` to the child `pid`, through its pidfd when there is one. A child that has already
/// ended counts as signalled.
pub(crate) fn send_signal(pid: u32, pidfd: Option<BorrowedFd<'_>>, signal: i32) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    if let Some(fd) = pidfd {
        let null = std::ptr::null::<libc::siginfo_t>();
        // SAFETY: pidfd_send_signal with a null siginfo behaves like kill(2) on the process the
        // pidfd refers to; `fd` is a live pidfd borrowed for the call.
        let res = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd() as libc::c_long,
                signal as libc::c_long,
                null,
                0 as libc::c_long,
            )
        };
        match cvt(res) {
            Ok(_) | Err(Errno::ESRCH) => return Ok(()),
            Err(Errno::ENOSYS) => {}
            Err(e) => return Err(e),
        }
    }
    // SAFETY: kill takes two integers and touches no memory of ours. The caller has not reaped
    // `pid`, so it still names our child (a zombie keeps its pid).
    match cvt(unsafe { libc::kill(pid as libc::pid_t, signal) }) {
        Ok(_) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Children that a dropped [`Process`](super::Process) killed but could not reap in time (stuck in
/// the kernel, in uninterruptible sleep): reaped by the next sweep. A fixed table of atomics, not a
/// locked list, so that a child forked while another thread holds it is never stuck on it.
static UNREAPED: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

/// Remembers `pid` for a later [`sweep`]. Returns false if the table is full (the zombie then
/// stays until this process ends and init reaps it).
pub(crate) fn reap_later(pid: u32) -> bool {
    let pid = pid as i32;
    UNREAPED.iter().any(|slot| slot.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed).is_ok())
}

/// Reaps every remembered child that has ended. Called whenever a process is started or dropped.
/// In a forked child the table is a copy of the parent's and `waitpid` answers ECHILD for each
/// entry, which clears it.
pub(crate) fn sweep() {
    for slot in &UNREAPED {
        let pid = slot.load(Ordering::Acquire);
        if pid > 0 && !matches!(try_reap(pid as u32, None), Ok(None)) {
            let _ = slot.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExitStatus;
    use super::*;
    use std::time::Instant;

    #[test]
    fn poll_never_wakes_before_the_deadline() {
        let (rd, _wr) = nix::unistd::pipe().unwrap();
        for ms in [0u64, 1, 3, 17] {
            let t = Instant::now();
            let d = Deadline::after(Duration::from_micros(ms * 1000 + 300));
            while !d.passed() {
                assert!(!poll_readable(&[rd.as_fd()], Some(d)).unwrap());
            }
            assert!(t.elapsed() >= Duration::from_micros(ms * 1000 + 300));
        }
    }

    /// Waits on a real child, with and without a pidfd: never early, and on time once it ends.
    #[test]
    fn reap_until_with_and_without_a_pidfd() {
        for with_pidfd in [true, false] {
            let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
            let pid = child.id();
            // The handle is not waited for: reap_until reaps the child.
            drop(child);
            let pidfd = if with_pidfd { pidfd_open(pid) } else { None };
            assert_eq!(pidfd.is_some(), with_pidfd, "pidfd_open refused on this kernel");
            let fd = pidfd.as_ref().map(|fd| fd.as_fd());
            let start = Instant::now();
            let timeout = Duration::from_millis(30);
            assert_eq!(reap_until(pid, fd, Deadline::after(timeout)), Ok(None));
            assert!(start.elapsed() >= timeout);
            send_signal(pid, fd, libc::SIGKILL).unwrap();
            let status = reap_until(pid, fd, Deadline::after(Duration::from_secs(10))).unwrap();
            assert_eq!(
                status.map(ExitStatus::from_wait_status),
                Some(Some(ExitStatus::Signaled { signal: 9, core_dumped: false }))
            );
            assert_eq!(try_reap(pid, None), Err(Errno::ECHILD), "reaped once");
        }
    }

    #[test]
    fn a_remembered_child_is_reaped_by_a_later_sweep() {
        let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        drop(child);
        assert!(reap_later(pid));
        sweep();
        let remembered = || UNREAPED.iter().any(|s| s.load(Ordering::Relaxed) == pid as i32);
        assert!(remembered(), "a running child stays in the table");
        send_signal(pid, None, libc::SIGKILL).unwrap();
        let deadline = Deadline::after(Duration::from_secs(10));
        while remembered() && !deadline.passed() {
            std::thread::sleep(Duration::from_millis(5));
            sweep();
        }
        assert!(!remembered(), "the killed child was not swept");
        assert_eq!(try_reap(pid, None), Err(Errno::ECHILD), "and it was reaped");
    }

    #[test]
    fn signalling_and_reaping_a_missing_child() {
        // Not a child of this test process, whether or not such a pid exists.
        assert_eq!(try_reap(0x3f_fffe, None), Err(Errno::ECHILD));
    }

    /// The handle's pid now names another child of ours (its own child was reaped by someone
    /// else, and the pid handed on): reaping through the pidfd must not reap that other child.
    #[test]
    fn a_reap_through_the_pidfd_never_reaps_a_child_with_the_recycled_pid() {
        let first = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let first_pid = first.id();
        drop(first);
        let Some(first_fd) = pidfd_open(first_pid) else {
            eprintln!("no pidfd on this kernel: waitpid(pid) is the only way, nothing to check");
            return;
        };
        // Someone else reaps the first child.
        send_signal(first_pid, None, libc::SIGKILL).unwrap();
        assert!(waitpid(first_pid, 0).unwrap().is_some());
        // A second child plays the one that got the recycled pid: ended, not reaped.
        let second = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let second_pid = second.id();
        drop(second);
        let second_fd = pidfd_open(second_pid).unwrap();
        send_signal(second_pid, Some(second_fd.as_fd()), libc::SIGKILL).unwrap();
        assert!(poll_readable(&[second_fd.as_fd()], Some(Deadline::after(Duration::from_secs(10)))).unwrap());
        // The handle of the first child, holding the second's pid and the first's pidfd.
        let r = try_reap(second_pid, Some(first_fd.as_fd()));
        assert!(matches!(r, Err(Errno::ECHILD) | Ok(None)), "{r:?}");
        assert!(
            waitpid(second_pid, libc::WNOHANG).unwrap().is_some(),
            "the other child was reaped through a handle that is not its own"
        );
    }
}
