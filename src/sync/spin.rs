//! How long a waiter spins before it parks.

use std::time::Duration;

/// How long a waiter polls before it parks the process in the kernel.
///
/// On a two-core VM a shared cache line crosses between cores in 65 to 215 ns, while a futex
/// wake-up costs about 20 µs and a futex ping-pong about 47 µs (see `BENCHMARKS.md`): a waiter that
/// parks at once pays the wake-up on every message, one that spins a little catches the next
/// message in a few hundred nanoseconds. Spinning burns the core it runs on, so it is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinPolicy {
    pub(crate) budget: Duration,
}

impl SpinPolicy {
    /// Never spin: park at once. The lowest CPU use, the highest latency (tens of microseconds).
    pub const fn park() -> SpinPolicy {
        SpinPolicy { budget: Duration::ZERO }
    }

    /// Spin for at most `budget`, then park.
    pub const fn spin_for(budget: Duration) -> SpinPolicy {
        SpinPolicy { budget }
    }

    /// Spin and never park: the lowest latency, one core busy while waiting. Peer deaths are
    /// still noticed (the check runs between spins), and deadlines still hold.
    pub const fn busy() -> SpinPolicy {
        SpinPolicy { budget: Duration::MAX }
    }

    /// The spin budget.
    pub const fn budget(self) -> Duration {
        self.budget
    }
}

impl Default for SpinPolicy {
    /// Spin for 50 µs: over twice a futex wake-up's cost, so that a stream of messages that
    /// arrive faster than that never pays a system call.
    fn default() -> SpinPolicy {
        SpinPolicy::spin_for(Duration::from_micros(50))
    }
}

/// Rounds of pure polling before the spinner starts yielding the CPU now and then.
const TIGHT_ROUNDS: u32 = 256;

/// A running spin: counts iterations and looks at the clock only every few of them (the first
/// look after 64 rounds: a wait that ends sooner, the common case, never reads the clock).
pub(crate) struct Spinner {
    start_ns: u64,
    budget_ns: u64,
    iterations: u32,
}

impl Spinner {
    pub(crate) fn new(policy: SpinPolicy) -> Spinner {
        let budget_ns = u64::try_from(policy.budget.as_nanos()).unwrap_or(u64::MAX);
        Spinner { start_ns: 0, budget_ns, iterations: 0 }
    }

    /// Spins once and answers whether the budget allows another round.
    ///
    /// The first rounds (about a microsecond) only poll; after that, every 16th round yields the
    /// CPU (`sched_yield`), so that a waiter sharing its CPU with the very process it waits for
    /// (a one-CPU container, a busy machine, more processes than cores) lets it run instead of
    /// burning its time slice. When nothing else is runnable the yield returns at once.
    #[inline]
    pub(crate) fn spin(&mut self) -> bool {
        if self.budget_ns == 0 {
            return false;
        }
        crate::sys::spin_hint();
        self.iterations = self.iterations.wrapping_add(1);
        if self.iterations > TIGHT_ROUNDS && self.iterations % 16 == 0 {
            std::thread::yield_now();
        }
        if self.iterations % 64 != 0 {
            return true;
        }
        let now = crate::sys::monotonic_ns();
        if self.start_ns == 0 {
            // The first look: 64 rounds have passed, count the budget from here.
            self.start_ns = now;
            return true;
        }
        now.saturating_sub(self.start_ns) < self.budget_ns
    }
}
