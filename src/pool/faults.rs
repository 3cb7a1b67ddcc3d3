//! Fault injection at each step of the slot protocol, for the pool's own stress tests
//! (doc-hidden: not part of the API, no stability promise).
//!
//! A [`FaultPlan`] names, for each [`FaultPoint`], a pause and a chance that the process kills
//! itself there (SIGKILL: no unwinding, no cleanup, as a crash or an OOM kill would). The parent
//! only pauses at its points; workers pause and die at theirs. The plan travels to every worker
//! with its setup, so forked and re-executed workers alike follow it. With the default plan (all
//! zero) each point costs one load and one branch.

use std::cell::Cell;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};

/// A step of the slot protocol where a [`FaultPlan`] can pause or kill.
#[doc(hidden)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Worker: a task message received, inside the task queue's receive critical section, before
    /// the slot's state is read.
    Received = 0,
    /// Worker: the slot read `QUEUED`, before the claim's compare-and-swap (inside the section).
    BeforeClaim = 1,
    /// Worker: the slot read `RUNNING` by another (dead) worker, before the takeover's
    /// compare-and-swap (inside the section).
    BeforeTakeover = 2,
    /// Worker: the slot claimed (`RUNNING` with its pid), still inside the section.
    Claimed = 3,
    /// Worker: out of the section (the message consumed), before running the chunk.
    Committed = 4,
    /// Worker: the chunk ran, before `DONE` is stored.
    Ran = 5,
    /// Worker: `DONE` stored, before the result message is sent.
    Done = 6,
    /// Parent: a worker died; before the parent settles a slot that worker held (reset to
    /// `QUEUED`, or fail).
    ParentSettle = 7,
    /// Parent: before it cancels a queued slot.
    ParentCancel = 8,
}

/// How many [`FaultPoint`]s there are.
#[doc(hidden)]
pub const FAULT_POINTS: usize = 9;

/// Per [`FaultPoint`]: a pause, and a chance of death (workers only). See the module docs.
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FaultPlan {
    /// Microseconds to sleep at each point (0: none).
    pub pause_us: [u32; FAULT_POINTS],
    /// Chance, in thousandths, that a worker kills itself (SIGKILL) at each point.
    pub die_per_mille: [u32; FAULT_POINTS],
    /// Archived chunks: what a worker scribbles over after running one, before it marks it done
    /// ([`SCRIBBLE_OUTPUTS`], [`SCRIBBLE_TABLE`], [`SCRIBBLE_SPILLED`]), or before running it
    /// ([`SCRIBBLE_INPUTS`]); 0: nothing. As memory corruption would.
    pub scribble: u32,
}

/// [`FaultPlan::scribble`]: fill the output room of every archived chunk with garbage.
#[doc(hidden)]
pub const SCRIBBLE_OUTPUTS: u32 = 1;
/// [`FaultPlan::scribble`]: point every output's table entry outside the slot.
#[doc(hidden)]
pub const SCRIBBLE_TABLE: u32 = 2;
/// [`FaultPlan::scribble`]: fill the inputs of every archived chunk with garbage before running it.
#[doc(hidden)]
pub const SCRIBBLE_INPUTS: u32 = 4;
/// [`FaultPlan::scribble`]: point the table entry of every spilled output (an output larger than a
/// slot) elsewhere: at stdin, at no descriptor, at a length past the pool's limit or past the
/// file's end, in turn.
#[doc(hidden)]
pub const SCRIBBLE_SPILLED: u32 = 8;

impl FaultPlan {
    /// No fault anywhere.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    /// Pauses `pause` at `point` (saturating at `u32::MAX` microseconds).
    pub fn pause(mut self, point: FaultPoint, pause: Duration) -> FaultPlan {
        self.pause_us[point as usize] = u32::try_from(pause.as_micros()).unwrap_or(u32::MAX);
        self
    }

    /// A worker at `point` kills itself with a chance of `per_mille` thousandths (at most 1000).
    pub fn die(mut self, point: FaultPoint, per_mille: u32) -> FaultPlan {
        self.die_per_mille[point as usize] = per_mille.min(1000);
        self
    }

    /// Archived chunks: a worker scribbles over its outputs (`SCRIBBLE_*` bits) after running a
    /// chunk, as memory corruption would; the parent must fail those items, never trust them.
    pub fn scribble(mut self, what: u32) -> FaultPlan {
        self.scribble = what;
        self
    }

    /// In a worker: pauses, and maybe dies, as the plan says for `point`.
    #[inline(always)]
    pub(crate) fn worker_at(&self, point: FaultPoint) {
        let (pause, die) = (self.pause_us[point as usize], self.die_per_mille[point as usize]);
        if pause | die != 0 {
            Self::act(pause, die);
        }
    }

    /// In the parent: pauses as the plan says for `point` (the parent never kills itself).
    #[inline(always)]
    pub(crate) fn parent_at(&self, point: FaultPoint) {
        let pause = self.pause_us[point as usize];
        if pause != 0 {
            Self::act(pause, 0);
        }
    }

    #[cold]
    fn act(pause_us: u32, die_per_mille: u32) {
        if pause_us != 0 {
            std::thread::sleep(Duration::from_micros(u64::from(pause_us)));
        }
        if die_per_mille != 0 && next_random() % 1000 < u64::from(die_per_mille) {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A per-thread xorshift generator, seeded from the pid and the clock.
fn next_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE
        .try_with(|s| {
            let mut x = s.get();
            if x == 0 {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                x = (u64::from(std::process::id()) << 32) ^ nanos | 1;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
        .unwrap_or(0)
}
