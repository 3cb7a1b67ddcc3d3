//! Model builds only (`--cfg ringpool_model`): the pool's slot protocol as the model check
//! (`tests/model_pool.rs`) drives it, through the same functions the engine and the worker call
//! (no copy of their logic): the parent's queueing and dead-worker settling, the worker's claim.

use std::os::fd::{BorrowedFd, OwnedFd};

use super::faults::FaultPlan;
use super::slots::{self, DeadSlot, SlotDesc, Slots};
use super::worker::{self, Claim};

/// A slot's stages, as the model reads them (the `slots` module's state machine).
pub mod stage {
    pub const FREE: u32 = super::slots::FREE;
    pub const QUEUED: u32 = super::slots::QUEUED;
    pub const RUNNING: u32 = super::slots::RUNNING;
    pub const DONE: u32 = super::slots::DONE;
    pub const CANCELLED: u32 = super::slots::CANCELLED;
    pub const FAILED: u32 = super::slots::FAILED;
}

/// The pool's slots segment, opened per model process.
#[derive(Debug)]
pub struct ModelSlots(Slots);

/// What the worker's claim answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelClaim {
    Run,
    Cancelled,
    Stale,
    GiveUp,
}

/// What settling a dead worker's slot did (the engine's `handle_exit`, per slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSettle {
    Untouched,
    Requeued,
    Failed,
    Finished,
    CancelTaken,
}

/// Restores (true) or removes (false) the claim of before the fix of defect 5: a takeover whose
/// compare-and-swap lost to the parent's reset dropped the message. For the calling OS thread
/// (the model execution's processes run on it).
pub fn debug_old_claim(on: bool) {
    worker::OLD_CLAIM.with(|c| c.set(on));
}

/// A task message (slot, generation), as the engine sends it.
pub fn message(slot: u32, seq: u32) -> u64 {
    worker::message(slot, seq)
}

/// The slot and generation of a message.
pub fn split(msg: u64) -> (usize, u32) {
    worker::split(msg)
}

impl ModelSlots {
    /// `count` slots with room for a one-item chunk of `u64 -> u64`.
    pub fn create(count: usize) -> Result<ModelSlots, crate::SegmentError> {
        Slots::create(count, 128).map(ModelSlots)
    }

    pub fn from_fd(fd: OwnedFd) -> Result<ModelSlots, crate::SegmentError> {
        Slots::from_fd(fd).map(ModelSlots)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd()
    }

    /// Parent: `FREE` -> `QUEUED` for a one-item chunk of generation `seq` (as the engine's
    /// `queue_slot`); send the message after this.
    pub fn queue(&self, slot: usize, seq: u32) {
        let Some(mut desc) = SlotDesc::layout(1, (8, 8), (8, 8), self.0.data_len()) else {
            panic!("a one-item chunk fits a model slot");
        };
        desc.seq = seq;
        self.0.publish_queued(slot, &desc);
    }

    /// Worker: the real claim, for the calling model process (inside the receive section).
    pub fn claim(&self, msg: u64) -> ModelClaim {
        match worker::claim(&self.0, msg, crate::sync::current_pid(), &FaultPlan::default()) {
            Claim::Run => ModelClaim::Run,
            Claim::Cancelled => ModelClaim::Cancelled,
            Claim::Stale => ModelClaim::Stale,
            Claim::GiveUp => ModelClaim::GiveUp,
        }
    }

    /// Worker: `RUNNING(me)` -> `DONE(me)`.
    pub fn mark_done(&self, slot: usize) {
        self.0.mark_done(slot, crate::sync::current_pid());
    }

    /// Parent: the engine's settling of one slot of the dead worker `pid`.
    pub fn settle_dead(&self, slot: usize, pid: u32, still_queued: bool) -> ModelSettle {
        match self.0.settle_dead(slot, pid, still_queued, &FaultPlan::default()) {
            DeadSlot::Untouched => ModelSettle::Untouched,
            DeadSlot::Requeued => ModelSettle::Requeued,
            DeadSlot::Failed => ModelSettle::Failed,
            DeadSlot::Finished => ModelSettle::Finished,
            DeadSlot::CancelTaken => ModelSettle::CancelTaken,
        }
    }

    /// Parent: `QUEUED` -> `CANCELLED` (the engine's `cancel`); answers whether it did.
    pub fn cancel(&self, slot: usize) -> bool {
        self.0.cancel_queued(slot)
    }

    /// Parent: frees the slot (the engine's `free_slot`).
    pub fn free(&self, slot: usize) {
        self.0.free(slot);
    }

    /// The slot's (stage, owner pid).
    pub fn state(&self, slot: usize) -> (u32, u32) {
        let w = self.0.state(slot).load(crate::sys::atomic::Ordering::Acquire);
        (slots::stage(w), slots::owner(w))
    }
}

/// The calling model process's pid (what a claim writes into `RUNNING(pid)`).
pub fn my_pid() -> u32 {
    crate::sync::current_pid()
}

/// Whether the model process with this pid still runs (the engine's `try_join`, in the model).
pub fn alive(pid: u32) -> bool {
    crate::sys::model::alive(pid).unwrap_or(false)
}

/// How many task messages have left the queue (its head): "still queued" is `index >= consumed`.
pub fn consumed(q: &crate::Queue<u64>) -> u64 {
    q.consumed()
}
