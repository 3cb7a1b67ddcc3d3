//! Logging through [`tracing`](https://docs.rs/tracing) (feature `tracing`): events for worker
//! start, death and replacement, lock takeover and repair, ring poisoning and segment cleanup, all
//! under the target `ringpool`. Without the feature, [`event!`] compiles to nothing (its arguments
//! are not evaluated).
//!
//! | event | level | fields |
//! | --- | --- | --- |
//! | a pool worker started | INFO | `pid`, `spawned` |
//! | a pool worker ended (died or retired) | WARN (died) / INFO (retired) | `pid`, `status` |
//! | a pool worker replaced | INFO | `replaced` (the old pid) |
//! | a lock taken over from a dead owner, and the repair's outcome | WARN | `ring_id`, `repaired` |
//! | a repair failed: the lock is poisoned | ERROR | `ring_id`, `reason` |
//! | a segment's name removed | DEBUG | `segment` |

/// `event!(level, fields..., "message")`: a `tracing` event under the target `ringpool` with the
/// feature `tracing`, nothing without it.
#[cfg(feature = "tracing")]
macro_rules! event {
    ($lvl:ident, $($arg:tt)+) => {
        ::tracing::$lvl!(target: "ringpool", $($arg)+)
    };
}

#[cfg(not(feature = "tracing"))]
macro_rules! event {
    ($lvl:ident, $($arg:tt)+) => {
        ()
    };
}

pub(crate) use event;

/// Traces a lock repair's outcome (`repaired`, or the poisoning reason) and passes it on.
#[inline]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn repair_outcome(ring_id: u64, r: Result<(), &'static str>) -> Result<(), &'static str> {
    match r {
        Ok(()) => event!(warn, ring_id, repaired = true, "lock of a dead owner taken over; ring repaired"),
        Err(reason) => event!(error, ring_id, reason, "lock of a dead owner taken over; repair failed, lock poisoned"),
    }
    r
}
