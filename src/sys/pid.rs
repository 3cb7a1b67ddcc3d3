//! The current process id, cached, and correct in a forked child.
//!
//! `getpid` is a system call (glibc stopped caching it), far too slow for a lock that is taken
//! twenty million times a second. The pid is cached in a static; a `pthread_atfork` child handler,
//! registered the first time the pid is asked for, clears the cache in every forked child, so the
//! child's next call reads its own pid. The handler only stores to an atomic, which is
//! async-signal-safe, as a handler that runs in a child of a threaded parent must be.

use std::sync::atomic::{AtomicU32, Ordering};

static PID: AtomicU32 = AtomicU32::new(0);
static FORKS: AtomicU32 = AtomicU32::new(0);
/// Registers [`after_fork_in_child`] (fork-safe: a child forked while another thread registers it
/// registers it again, see [`super::once`]; the handler then runs twice in later children, and acts
/// once).
static REGISTER: super::once::ForkSafeOnce = super::once::ForkSafeOnce::new();
/// The pid of the child in which [`after_fork_in_child`] last acted (0: none).
static HANDLED_IN: AtomicU32 = AtomicU32::new(0);

extern "C" fn after_fork_in_child() {
    // Registered twice in a child that took the registration over from its parent's thread: then it
    // runs twice in each fork of that child, and must count the fork once. getpid is
    // async-signal-safe.
    let me = nix::unistd::getpid().as_raw() as u32;
    if HANDLED_IN.swap(me, Ordering::Relaxed) == me {
        return;
    }
    PID.store(0, Ordering::Relaxed);
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// This process's id. Cheap after the first call (one relaxed load), and right after a fork.
#[inline]
pub fn current_pid() -> u32 {
    // The model checks: each model thread is a process with a fake pid.
    #[cfg(ringpool_model)]
    if let Some(pid) = super::model::pid() {
        return pid;
    }
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 { pid } else { current_pid_slow() }
}

#[cold]
fn current_pid_slow() -> u32 {
    #[cfg(not(miri))]
    REGISTER.call(|| {
        // SAFETY: registering a handler has no preconditions; the handler is an `extern "C" fn`
        // with static lifetime that only touches atomics (async-signal-safe). pthread_atfork can
        // only fail with ENOMEM, in which case the cache would go stale in children: we then stop
        // caching (FORKS stays usable), see below.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        if rc != 0 {
            NO_CACHE.store(true, Ordering::Relaxed);
        }
    });
    let pid = nix::unistd::getpid().as_raw() as u32;
    if !NO_CACHE.load(Ordering::Relaxed) {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

static NO_CACHE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Refreshes the cache in a child created by a raw `fork` that might have bypassed the handler
/// (a `clone` or `vfork` issued by hand). [`crate::process`] calls it first thing in every child.
pub(crate) fn refresh_after_fork() {
    // Only the cache: the fork was counted by the handler (when it is installed).
    PID.store(0, Ordering::Relaxed);
}

/// How many times this process image has been forked into a child, seen from the child.
/// Zero in a process that is not a forked child of a ringpool user.
pub fn fork_generation() -> u32 {
    FORKS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_getpid() {
        assert_eq!(current_pid(), std::process::id());
        assert_eq!(current_pid(), std::process::id());
    }

    /// A handler registered twice (by a child that took the registration over) counts one fork.
    #[test]
    #[cfg(not(miri))]
    fn the_child_handler_acts_once_per_child() {
        assert_eq!(current_pid(), std::process::id()); // registers the handler
        // SAFETY: the child only reads atomics, makes getpid calls, and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let forks = fork_generation();
            after_fork_in_child(); // a second registration's run
            let ok = forks >= 1 && fork_generation() == forks && current_pid() == std::process::id();
            // SAFETY: leaving the forked child without the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 2 }) };
        }
        let mut status = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if r != 0 || std::time::Instant::now() >= deadline {
                // SAFETY: kill and reap our own unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: as above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                panic!("the child did not exit (waitpid answered {r})");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }
}
