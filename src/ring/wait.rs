//! Waiting for room or for data: spin for a bounded time, then park on an event count, waking
//! now and then to look for dead peers.

use crate::sys::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::core::{Core, Role};
use super::error::Fail;
use crate::sync::{Deadline, EventCount, FutexWait, SpinPolicy, Spinner};

/// How long a parked waiter sleeps before it checks whether its peers are still alive.
const LIVENESS_SLICE: Duration = Duration::from_millis(50);

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
impl Core {
    /// Waits until `ready()` holds, the other side is gone, or the wait ends. Spins per `spin`
    /// first, then parks on `event`; a parked waiter wakes every [`LIVENESS_SLICE`] to sweep
    /// for dead peers. Returns Ok(()) when worth retrying, Err(Timeout) when the deadline passed.
    pub(crate) fn wait_for(
        &self,
        event: &EventCount,
        parks: &AtomicU64,
        spin: SpinPolicy,
        wait: Wait,
        peers: Role,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Fail> {
        let deadline = wait.deadline();
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
            if ready() || self.peers_gone(peers, false) {
                event.cancel(key);
                return Ok(());
            }
            let until = match deadline {
                Some(d) => d.min_after(LIVENESS_SLICE),
                None => Deadline::after(LIVENESS_SLICE),
            };
            parks.fetch_add(1, Ordering::Relaxed);
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
