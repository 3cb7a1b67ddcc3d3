//! Layer 0, the operating system seen from ringpool: the few raw calls that nix does not wrap
//! (futex, the monotonic clock, `posix_fallocate`), each through one checked path; the process's
//! identity (cached pid, liveness by pid and start time); and the at-fork hook registry that the
//! upper layers register into.
//!
//! Every libc call whose return value signals failure goes through [`cvt`], which turns it into a
//! `Result<_, Errno>`, the way nix's `Errno::result` does; no call site tests `res != 0` by hand.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub(crate) mod atfork;
pub(crate) mod atomic;
pub mod liveness;
#[cfg(ringpool_model)]
pub mod model;
pub(crate) mod once;
mod pid;
pub(crate) mod waitv;

pub use pid::{current_pid, fork_generation};

pub(crate) use nix::errno::Errno;

/// Turns a libc return value of -1 (with `errno` set) into `Err(Errno)`.
pub(crate) fn cvt<T: IsMinusOne>(res: T) -> Result<T, Errno> {
    if res.is_minus_one() { Err(Errno::last()) } else { Ok(res) }
}

/// Return types whose `-1` means failure.
pub(crate) trait IsMinusOne: Copy {
    fn is_minus_one(self) -> bool;
}
impl IsMinusOne for i32 {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}
impl IsMinusOne for i64 {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}
impl IsMinusOne for isize {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock every deadline in the crate is measured on.
///
/// It never jumps with the wall clock, and it is the clock the futex waits below use, so a deadline
/// computed here and a kernel timeout agree exactly.
pub(crate) fn monotonic_ns() -> u64 {
    #[cfg(ringpool_model)]
    if let Some(t) = model::now() {
        return t;
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on Linux,
    // so the call cannot fail (and if it did, `ts` stays zero, which only makes a deadline late).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// A point on the monotonic clock after which a wait gives up. `None` inside an `Option<Deadline>`
/// means "wait for ever".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(u64);

impl Deadline {
    /// `timeout` from now. Saturates instead of overflowing for huge timeouts.
    pub fn after(timeout: Duration) -> Deadline {
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        Deadline(monotonic_ns().saturating_add(ns))
    }

    /// True once the clock has reached the deadline. A wait never reports a timeout unless this is true.
    pub fn passed(self) -> bool {
        monotonic_ns() >= self.0
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(monotonic_ns()))
    }

    /// The earlier of this deadline and `slice` from now.
    pub(crate) fn min_after(self, slice: Duration) -> Deadline {
        self.min(Deadline::after(slice))
    }

    fn as_timespec(self) -> libc::timespec {
        libc::timespec {
            tv_sec: (self.0 / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
            tv_nsec: (self.0 % 1_000_000_000) as libc::c_long,
        }
    }
}

/// Why a futex wait returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutexWait {
    /// Woken, or the word no longer held the expected value, or a signal arrived: look again.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, until woken or until `deadline` (absolute, CLOCK_MONOTONIC).
///
/// The futex is process-shared (no `FUTEX_PRIVATE_FLAG`), so `word` may live in shared memory and
/// be woken from another process. The absolute deadline is passed to the kernel as such
/// (`FUTEX_WAIT_BITSET`), so repeated or interrupted waits never add up to an early or a late
/// timeout; a timeout is only reported once the monotonic clock has really reached the deadline.
pub(crate) fn futex_wait(word: &atomic::AtomicU32, expected: u32, deadline: Option<Deadline>) -> FutexWait {
    #[cfg(ringpool_model)]
    if let Some(r) = model::futex_wait(word.as_ptr() as usize, || word.raw().load(Ordering::SeqCst), expected, deadline)
    {
        return r;
    }
    if let Some(d) = deadline
        && d.passed()
    {
        return FutexWait::TimedOut;
    }
    let ts = deadline.map(Deadline::as_timespec);
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, 4-byte-aligned AtomicU32 for the whole call; the kernel only reads
    // it. `ts_ptr` is null or points at `ts`, alive until the call returns. FUTEX_WAIT_BITSET with a
    // bitset of all ones behaves like FUTEX_WAIT with an absolute CLOCK_MONOTONIC timeout.
    let res = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT_BITSET,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        )
    };
    match cvt(res) {
        Err(Errno::ETIMEDOUT) => {
            if deadline.is_none_or(|d| d.passed()) {
                FutexWait::TimedOut
            } else {
                FutexWait::Woken
            }
        }
        // EAGAIN: the word changed before we slept. EINTR: a signal. Both mean "look again".
        _ => FutexWait::Woken,
    }
}

/// Wakes up to `n` processes sleeping on `word`. Returns how many were woken.
pub(crate) fn futex_wake(word: &atomic::AtomicU32, n: u32) -> usize {
    #[cfg(ringpool_model)]
    if let Some(woken) = model::futex_wake(word.as_ptr() as usize, n) {
        return woken;
    }
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: `word` is a live AtomicU32; FUTEX_WAKE only uses its address as a key.
    let res = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n) };
    cvt(res).map_or(0, |woken| woken as usize)
}

/// A hint to the CPU that we are spinning.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(ringpool_model)]
    if model::spin_hint() {
        return;
    }
    std::hint::spin_loop();
}

/// `posix_fallocate` on a whole file: reserves every page now, so a full tmpfs is an error here
/// instead of a SIGBUS on first touch later.
pub(crate) fn reserve_pages(fd: std::os::fd::BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EFBIG)?;
    nix::fcntl::posix_fallocate(fd, 0, len)
}

/// The page size (never smaller than 4096).
pub(crate) fn page_size() -> usize {
    static PAGE: AtomicU32 = AtomicU32::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached as usize;
    }
    // SAFETY: sysconf has no preconditions.
    let sz = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let sz = if sz < 4096 { 4096 } else { sz as u32 };
    PAGE.store(sz, Ordering::Relaxed);
    sz as usize
}
