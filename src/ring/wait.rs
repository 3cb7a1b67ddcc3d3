//! Waiting for room or for data: spin for a bounded time, then park on an event count, waking
//! now and then to look for dead peers.

use crate::sys::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::core::{Core, Role};
use super::error::Fail;
use crate::sync::{Deadline, EventCount, FutexWait, SpinPolicy, Spinner};

/// How long a parked waiter sleeps before it checks whether its peers are still alive.
const LIVENESS_SLICE: Duration = Duration::from_millis(50);

/// How long a parked waiter sleeps when the notifying side publishes without a barrier and the
/// asymmetric fence that would make up for it failed: a wake-up can then be missed, and is only
/// late by this much.
const UNFENCED_SLICE: Duration = Duration::from_millis(1);

// membarrier(2) commands (linux/membarrier.h).
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

/// The pid that registered for expedited global fences (registration belongs to the address
/// space: a forked child registers again). Process-local, hence a plain std atomic.
static FENCE_REGISTERED_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Registers this process as a target of [`asymmetric_fence`]: a process whose threads publish
/// without a barrier (a solo handle's kept lock) must be registered first. False if the kernel
/// refuses (no `membarrier`, or a seccomp filter): then the process must keep its barriers.
pub(crate) fn register_for_fences() -> bool {
    let me = crate::sync::current_pid();
    if FENCE_REGISTERED_PID.load(Ordering::Acquire) == me {
        return true;
    }
    // SAFETY: membarrier takes two integers and a cpu id, touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) };
    if r == 0 {
        FENCE_REGISTERED_PID.store(me, Ordering::Release);
        true
    } else {
        false
    }
}

/// The heavy half of an asymmetric Dekker pair: when it returns, every thread of every registered
/// process that was running has passed a full memory barrier (and one that was not running passed
/// one when it was switched out), so each of their stores before that point is visible to this
/// thread's later loads, and each of their loads after it sees this thread's earlier stores. False
/// if the kernel refuses.
pub(crate) fn asymmetric_fence() -> bool {
    // SAFETY: as in register_for_fences.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0 }
}

/// How many times a waiter whose peer last ran on its own CPU yields that CPU before it parks.
const SHARED_CPU_YIELDS: u32 = 8;

/// How long an operation may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Not at all (the `try_` forms).
    Try,
    /// Until a deadline.
    Until(Deadline),
    /// For ever (but never on a dead peer: that is a disconnection).
    Forever,
}

impl Wait {
    pub(crate) fn timeout(d: Duration) -> Wait {
        Wait::Until(Deadline::after(d))
    }

    pub(super) fn deadline(self) -> Option<Deadline> {
        match self {
            Wait::Until(d) => Some(d),
            _ => None,
        }
    }

    fn passed(self) -> bool {
        matches!(self, Wait::Until(d) if d.passed())
    }
}
/// 1 + the CPU the calling thread runs on (0 if unknown). glibc reads it from the thread's
/// restartable-sequences area (a load), or the vDSO.
#[inline(always)]
pub(crate) fn current_cpu() -> u32 {
    #[cfg(not(miri))]
    {
        // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
        let cpu = unsafe { libc::sched_getcpu() };
        u32::try_from(cpu).map_or(0, |c| c.wrapping_add(1))
    }
    #[cfg(miri)]
    {
        0
    }
}

impl Core {
    /// Whether spinning while waiting for `peers` would only burn the time they need: the
    /// last operation of that side ran on the CPU this thread runs on now. Spinning pays when the
    /// peer runs at the same time on another core; a peer that last ran here is (if runnable)
    /// queued behind this very thread, and makes progress only once it sleeps.
    fn peer_shares_cpu(&self, peers: Role) -> bool {
        let c = self.ctrl();
        let line = match peers {
            Role::Sender => &c.not_empty,
            Role::Receiver => &c.not_full,
        };
        let theirs = line.cpu.load(Ordering::Relaxed);
        theirs != 0 && theirs == current_cpu()
    }

    /// Waits until `ready()` holds, the other side is gone, or the wait ends. Spins per `spin`
    /// first, then parks on `event`; a parked waiter wakes every [`LIVENESS_SLICE`] to sweep
    /// for dead peers. Returns Ok(()) when worth retrying, Err(Timeout) when the deadline passed.
    ///
    /// `sticky` is the notifying side's [`Side::sticky`](super::control::Side) word: while a solo
    /// handle keeps that side's lock, it publishes and reads the waiter count with no barrier
    /// between, and this waiter makes up for it with an [`asymmetric_fence`] between announcing
    /// itself and its last look (the argument is in `core.rs`, "Solo handles").
    #[allow(clippy::too_many_arguments, reason = "one internal call per side")]
    pub(crate) fn wait_for(
        &self,
        event: &EventCount,
        sticky: &AtomicU32,
        waiter: &super::control::Side,
        spin: SpinPolicy,
        wait: Wait,
        peers: Role,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Fail> {
        let deadline = wait.deadline();
        // Adaptive: when the peer shares this CPU, a finite spin would burn the very time slice
        // the peer needs. Yield it instead, a few times: a runnable peer then runs at once, and
        // goes on with no wake-up to pay for (this waiter has not announced itself), for as long
        // as it has work (a sender fills the ring, a receiver drains it); a peer that is not
        // runnable hands the CPU straight back, and this waiter parks after a few rounds.
        // (`busy()` is the caller's explicit choice and stays, and `park()` parks at once.)
        let spin = if spin != SpinPolicy::busy() && spin.budget() > Duration::ZERO && self.peer_shares_cpu(peers) {
            for _ in 0..SHARED_CPU_YIELDS {
                if ready() {
                    return Ok(());
                }
                waiter.yields.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
            if wait.passed() {
                return Err(Fail::Timeout);
            }
            SpinPolicy::park()
        } else {
            spin
        };
        let mut spinner = Spinner::new(spin);
        // Read the clock only once the spin has lasted a while (a short wait never reads it).
        let mut next_sweep = 0u64;
        let mut rounds = 0u32;
        while spinner.spin() {
            if ready() {
                return Ok(());
            }
            rounds = rounds.wrapping_add(1);
            if rounds % 256 == 0 {
                if wait.passed() {
                    return Err(Fail::Timeout);
                }
                let now = crate::sys::monotonic_ns();
                if next_sweep == 0 {
                    next_sweep = now + LIVENESS_SLICE.as_nanos() as u64;
                } else if now >= next_sweep {
                    next_sweep = now + LIVENESS_SLICE.as_nanos() as u64;
                    if self.peers_gone(peers, true) {
                        return Ok(());
                    }
                }
            }
        }
        loop {
            let key = event.prepare();
            // Acquire: a solo holder clears the word (Release) after its last unfenced publish,
            // so reading 0 here means that publish is visible to the look below.
            let fenced = sticky.load(Ordering::Acquire) == 0 || asymmetric_fence();
            if ready() || self.peers_gone(peers, false) {
                event.cancel(key);
                return Ok(());
            }
            let slice = if fenced { LIVENESS_SLICE } else { UNFENCED_SLICE };
            let until = match deadline {
                Some(d) => d.min_after(slice),
                None => Deadline::after(slice),
            };
            waiter.parks.fetch_add(1, Ordering::Relaxed);
            let woke = event.wait(key, Some(until));
            if wait.passed() {
                return Err(Fail::Timeout);
            }
            if woke == FutexWait::TimedOut && self.peers_gone(peers, true) {
                return Ok(());
            }
            if ready() {
                return Ok(());
            }
        }
    }
}

/// A handle's spin policy, changeable through `&self`: handles are shared between threads (they
/// are `Sync`), so the policy lives in an atomic. Process-local (never in shared memory), hence a
/// plain std atomic. The budget is held in nanoseconds, saturating: a budget of 584 years or more
/// reads back as [`SpinPolicy::busy`], which it is in effect.
pub(crate) struct SpinCell(std::sync::atomic::AtomicU64);

impl SpinCell {
    pub(crate) fn new(spin: SpinPolicy) -> SpinCell {
        SpinCell(std::sync::atomic::AtomicU64::new(Self::encode(spin)))
    }

    fn encode(spin: SpinPolicy) -> u64 {
        u64::try_from(spin.budget().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The policy now.
    #[inline(always)]
    pub(crate) fn get(&self) -> SpinPolicy {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            u64::MAX => SpinPolicy::busy(),
            ns => SpinPolicy::spin_for(Duration::from_nanos(ns)),
        }
    }

    /// Sets the policy for this handle's later waits (a wait under way keeps the one it began with).
    pub(crate) fn set(&self, spin: SpinPolicy) {
        self.0.store(Self::encode(spin), std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clone for SpinCell {
    fn clone(&self) -> SpinCell {
        SpinCell::new(self.get())
    }
}

impl std::fmt::Debug for SpinCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod spin_cell_tests {
    use super::*;

    #[test]
    fn round_trips() {
        for p in [
            SpinPolicy::park(),
            SpinPolicy::busy(),
            SpinPolicy::default(),
            SpinPolicy::spin_for(Duration::from_nanos(7)),
        ] {
            let c = SpinCell::new(SpinPolicy::park());
            c.set(p);
            assert_eq!(c.get(), p);
            assert_eq!(c.clone().get(), p);
        }
    }
}
