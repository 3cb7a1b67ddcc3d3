//! `futex_waitv` (Linux 5.16+, syscall 449): sleep on several futex words at once, until one of
//! them is woken, one no longer holds its expected value, or an absolute deadline passes.
//!
//! Used by [`Select`](crate::ring::Select) and the async waker thread to sleep on the event counts
//! of many rings, each in its own mapping, with one system call. Where the kernel lacks it
//! (`ENOSYS`), [`futex_waitv`] answers [`WaitV::Unsupported`] and the caller falls back to sleeping
//! on one word in short slices.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Deadline, Errno, cvt};

/// The syscall number of `futex_waitv` (the same on every Linux architecture that has it).
const SYS_FUTEX_WAITV: libc::c_long = 449;
/// `FUTEX2_SIZE_U32`: each word is 32 bits. No `FUTEX2_PRIVATE`: the words live in shared mappings.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// The kernel's limit on words per call.
pub(crate) const WAITV_MAX: usize = 128;

/// One word to sleep on, as the kernel reads it (`struct futex_waitv`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaitvEntry {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

impl WaitvEntry {
    /// Sleep while `*word == expected`.
    pub(crate) fn new(word: &crate::sys::atomic::AtomicU32, expected: u32) -> WaitvEntry {
        WaitvEntry { val: u64::from(expected), uaddr: word.as_ptr() as u64, flags: FUTEX2_SIZE_U32, reserved: 0 }
    }
}

/// Why [`futex_waitv`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitV {
    /// One word was woken, or held another value than expected, or a signal came: look again.
    Woken,
    /// The deadline passed.
    TimedOut,
    /// The kernel has no `futex_waitv` (or refused the arguments): sleep some other way.
    Unsupported,
}

/// Set once the kernel answered `ENOSYS`: later calls skip the system call.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Whether `futex_waitv` is known to be missing here.
pub(crate) fn waitv_unsupported() -> bool {
    UNSUPPORTED.load(Ordering::Relaxed)
}

#[cfg(test)]
thread_local! {
    static PRETEND_UNSUPPORTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Test support: this thread behaves as on a kernel without `futex_waitv` (`true`), or not.
#[cfg(test)]
pub(crate) fn pretend_unsupported(yes: bool) {
    PRETEND_UNSUPPORTED.with(|p| p.set(yes));
}

/// Sleeps on every word of `entries` until one is woken or differs from its expected value, or
/// until `deadline` (absolute, CLOCK_MONOTONIC).
///
/// # Safety
/// Every entry must name a live, 4-byte-aligned `AtomicU32` (made by [`WaitvEntry::new`] from a
/// reference that outlives this call). The kernel only reads the words.
pub(crate) unsafe fn futex_waitv(entries: &[WaitvEntry], deadline: Deadline) -> WaitV {
    if entries.is_empty() || entries.len() > WAITV_MAX || waitv_unsupported() {
        return WaitV::Unsupported;
    }
    #[cfg(test)]
    if PRETEND_UNSUPPORTED.with(|p| p.get()) {
        return WaitV::Unsupported;
    }
    if deadline.passed() {
        return WaitV::TimedOut;
    }
    let ts = deadline.as_timespec();
    // SAFETY: `entries` is a live slice of `struct futex_waitv` (repr(C), the kernel's layout) of
    // at most 128 entries, each naming a live word (the caller's contract); `ts` lives until the
    // call returns; flags 0; the timeout is absolute on CLOCK_MONOTONIC.
    let res = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            entries.as_ptr(),
            entries.len() as libc::c_uint,
            0 as libc::c_uint,
            &ts as *const libc::timespec,
            libc::CLOCK_MONOTONIC,
        )
    };
    match cvt(res) {
        Ok(_) => WaitV::Woken,
        Err(Errno::ETIMEDOUT) => {
            if deadline.passed() {
                WaitV::TimedOut
            } else {
                WaitV::Woken
            }
        }
        Err(Errno::ENOSYS) => {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            WaitV::Unsupported
        }
        // A word that is not aligned or not mapped, or bad flags: not something to retry.
        Err(Errno::EFAULT | Errno::EINVAL) => WaitV::Unsupported,
        // EAGAIN: a word changed before we slept. EINTR: a signal. Both mean "look again".
        Err(_) => WaitV::Woken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::atomic::AtomicU32;
    use std::time::Duration;

    #[test]
    fn waitv_times_out_then_wakes_on_any_word() {
        let words: Vec<AtomicU32> = (0..3).map(AtomicU32::new).collect();
        let entries: Vec<WaitvEntry> = words.iter().map(|w| WaitvEntry::new(w, w.load(Ordering::Relaxed))).collect();
        // SAFETY: every entry names a word of `words`, alive for the call.
        let r = unsafe { futex_waitv(&entries, Deadline::after(Duration::from_millis(20))) };
        assert!(matches!(r, WaitV::TimedOut | WaitV::Unsupported), "{r:?}");
        if r == WaitV::Unsupported {
            return;
        }
        // A word that no longer holds its expected value answers at once.
        words[2].store(99, Ordering::Relaxed);
        // SAFETY: as above.
        let r = unsafe { futex_waitv(&entries, Deadline::after(Duration::from_secs(10))) };
        assert_eq!(r, WaitV::Woken);
        // A wake on one word from another thread.
        words[2].store(2, Ordering::Relaxed);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                words[1].store(7, Ordering::Relaxed);
                super::super::futex_wake(&words[1], 1);
            });
            // SAFETY: as above.
            let r = unsafe { futex_waitv(&entries, Deadline::after(Duration::from_secs(10))) };
            assert_eq!(r, WaitV::Woken);
        });
    }
}
