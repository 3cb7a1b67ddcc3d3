//! Errors of the pool: a task's, the pool's, and a map's (which carries every item's outcome).

use std::fmt;
use std::sync::Arc;

use crate::process::{ExitStatus, StartError};
use crate::ring::{Broken, JoinRingError};
use crate::segment::SegmentError;

/// Why one task has no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the worker caught it and went on.
    #[error("task panicked in worker {pid}: {message}")]
    Panicked {
        /// The worker's pid.
        pid: u32,
        /// The panic message, with its location.
        message: String,
    },
    /// The worker running the task died (killed, crashed, or exited). It was replaced; the pool's
    /// other tasks were not affected.
    #[error("worker {pid} died while running the task: {status}")]
    WorkerDied {
        /// The dead worker's pid.
        pid: u32,
        /// How it ended (the signal, for a kill).
        status: ExitStatus,
    },
    /// Cancelled before it started.
    #[error("task cancelled before it started")]
    Cancelled,
    /// The pool was terminated before the task finished.
    #[error("pool terminated before the task finished")]
    Terminated,
    /// The pool itself failed while the task was outstanding (its rings broken, no worker left, or
    /// it was closed before the task could be queued). The [`PoolError`] is inside (shared, so
    /// that every task it failed holds it) and is this error's
    /// [`source`](std::error::Error::source).
    #[error("the pool failed: {0}")]
    Pool(#[source] SharedPoolError),
    /// An archived task's input or output is larger than the pool allows (archived tasks:
    /// `map_archived` and the rest of its family). Values larger than a slot cross through a spill
    /// file, up to [`PoolBuilder::max_value_bytes`](super::PoolBuilder::max_value_bytes); `available`
    /// is that limit (or, should a worker not spill an output that needed it, the room its slot
    /// had). The other items are not affected.
    #[error(
        "the task's {what} archives to {needed} bytes, more than the {available} allowed: raise \
         PoolBuilder::max_value_bytes (values larger than PoolBuilder::slot_bytes cross through a spill file; \
         a larger slot_bytes keeps them in shared memory, which is faster)"
    )]
    TooLarge {
        /// `"input"` or `"output"`.
        what: &'static str,
        /// Bytes the archive needs.
        needed: usize,
        /// Bytes allowed: the pool's largest value.
        available: usize,
    },
    /// A worker's result is not a valid archive of the task's output type (its memory was
    /// overwritten, or its `Serialize` failed); nothing of it was used.
    #[error("the task's output is invalid: {reason}")]
    InvalidOutput {
        /// What validation found.
        reason: String,
    },
    /// The task's input could not be archived (its `Serialize` failed), or the worker found it
    /// invalid (the slot's memory was overwritten); the task did not run.
    #[error("the task's input is invalid: {reason}")]
    InvalidInput {
        /// What went wrong.
        reason: String,
    },
}

impl From<PoolError> for TaskError {
    fn from(e: PoolError) -> TaskError {
        TaskError::Pool(SharedPoolError(Arc::new(e)))
    }
}

/// A [`PoolError`] shared by every task it failed: what [`TaskError::Pool`] holds (a `TaskError`
/// is `Clone`, a `PoolError` is not).
///
/// It stands for the pool error in an error chain: its `Display` and `source` are the pool
/// error's. Reach the [`PoolError`] itself through [`get`](Self::get) or `Deref`.
#[derive(Clone, Debug)]
pub struct SharedPoolError(Arc<PoolError>);

impl SharedPoolError {
    /// The pool error.
    pub fn get(&self) -> &PoolError {
        &self.0
    }
}

impl std::ops::Deref for SharedPoolError {
    type Target = PoolError;

    fn deref(&self) -> &PoolError {
        &self.0
    }
}

impl PartialEq for SharedPoolError {
    /// The same error (one failure shared by several tasks), or two that read the same (a
    /// `PoolError` has no equality of its own: some of its causes are OS errors).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for SharedPoolError {}

impl fmt::Display for SharedPoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedPoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why the pool could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Making the pool's shared memory failed.
    #[error("pool memory: {0}")]
    Segment(#[from] SegmentError),
    /// Starting a worker failed.
    #[error("starting a worker: {0}")]
    Start(#[from] StartError),
    /// The pool's rings refused a member (cannot happen with the pool's own sizes).
    #[error("joining the pool's rings: {0}")]
    Join(#[from] JoinRingError),
    /// The pool's rings are broken (their memory was overwritten).
    #[error("pool rings: {0}")]
    Broken(#[from] Broken),
    /// The pool was closed or terminated: it takes no new tasks.
    #[error("the pool is closed")]
    Closed,
    /// No worker is left and none can be started.
    #[error("no worker is running and none could be started")]
    NoWorkers,
    /// One task's input and output do not fit a slot.
    #[error("a task's input and output need {needed} bytes, a slot holds {available}: raise PoolBuilder::slot_bytes")]
    TaskTooLarge {
        /// Bytes one task needs.
        needed: usize,
        /// Bytes a slot offers.
        available: usize,
    },
    /// An input or output type with an alignment above 64 bytes.
    #[error("task types aligned to more than 64 bytes are not supported")]
    AlignmentTooLarge,
    /// A builder setting is invalid (one that is not a number: see [`OutOfRange`] for those).
    ///
    /// [`OutOfRange`]: PoolError::OutOfRange
    #[error("invalid pool setting: {0}")]
    InvalidSetting(&'static str),
    /// A builder setting's value is outside what the pool accepts.
    #[error("pool setting {setting}({value}) is out of range: {limit}")]
    OutOfRange {
        /// The builder method, as named in [`PoolBuilder`](super::PoolBuilder).
        setting: &'static str,
        /// The value given.
        value: u128,
        /// What is accepted.
        limit: &'static str,
    },
    /// A value the pool archives once for many tasks (a context, an initializer's arguments) is
    /// larger than [`PoolBuilder::max_value_bytes`](super::PoolBuilder::max_value_bytes). (One
    /// larger than a slot but within that limit goes into a spill file every worker maps.)
    #[error(
        "the {what} archives to {needed} bytes, more than the {available} allowed: raise \
         PoolBuilder::max_value_bytes (a {what} larger than PoolBuilder::slot_bytes is mapped by every worker \
         from a spill file; one that fits a slot stays in shared memory)"
    )]
    ArchiveTooLarge {
        /// `"context"` or `"initializer arguments"`.
        what: &'static str,
        /// Bytes the archive needs.
        needed: usize,
        /// Bytes allowed: the pool's largest value (`max_value_bytes`).
        available: usize,
    },
    /// A value could not be archived (its `Serialize` failed; rkyv's reason).
    #[error("the {what} could not be archived: {reason}")]
    Archive {
        /// What was being archived.
        what: &'static str,
        /// rkyv's reason.
        reason: String,
    },
}

/// Why a `map` did not give every result.
pub enum MapError<R> {
    /// The pool itself failed (closed, out of workers, ...). Nothing is known of the items.
    Pool(PoolError),
    /// Some tasks failed; every item's outcome is inside, in input order.
    Tasks(TaskFailures<R>),
}

/// The outcome of every item of a map in which some tasks failed.
pub struct TaskFailures<R> {
    results: Vec<Result<R, TaskError>>,
    failed: usize,
}

impl<R> TaskFailures<R> {
    pub(crate) fn new(results: Vec<Result<R, TaskError>>) -> Self {
        let failed = results.iter().filter(|r| r.is_err()).count();
        TaskFailures { results, failed }
    }

    /// How many tasks failed.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Every item's outcome, in input order.
    pub fn results(&self) -> &[Result<R, TaskError>] {
        &self.results
    }

    /// Every item's outcome, in input order.
    pub fn into_results(self) -> Vec<Result<R, TaskError>> {
        self.results
    }

    /// The first failure.
    pub fn first_error(&self) -> Option<(usize, &TaskError)> {
        self.results.iter().enumerate().find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    }
}

impl<R> MapError<R> {
    /// Every item's outcome, if the pool got as far as running them.
    pub fn into_results(self) -> Option<Vec<Result<R, TaskError>>> {
        match self {
            MapError::Tasks(t) => Some(t.into_results()),
            MapError::Pool(_) => None,
        }
    }
}

impl<R> From<PoolError> for MapError<R> {
    fn from(e: PoolError) -> Self {
        MapError::Pool(e)
    }
}

impl<R> fmt::Debug for TaskFailures<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFailures")
            .field("tasks", &self.results.len())
            .field("failed", &self.failed)
            .field("first_error", &self.first_error())
            .finish()
    }
}

impl<R> fmt::Display for TaskFailures<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} tasks failed", self.failed, self.results.len())?;
        if let Some((i, e)) = self.first_error() {
            write!(f, "; the first, item {i}: {e}")?;
        }
        Ok(())
    }
}

impl<R> fmt::Debug for MapError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Pool(e) => f.debug_tuple("Pool").field(e).finish(),
            MapError::Tasks(t) => f.debug_tuple("Tasks").field(t).finish(),
        }
    }
}

impl<R> fmt::Display for MapError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Pool(e) => write!(f, "{e}"),
            MapError::Tasks(t) => write!(f, "{t}"),
        }
    }
}

impl<R> std::error::Error for MapError<R> {
    /// For `Pool`, the [`PoolError`]; for `Tasks`, the first task's [`TaskError`].
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MapError::Pool(e) => Some(e),
            MapError::Tasks(t) => t.first_error().map(|(_, e)| e as &(dyn std::error::Error + 'static)),
        }
    }
}

/// Why [`Future::wait_timeout`](super::Future::wait_timeout) has no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The timeout passed first; the task goes on.
    #[error("timed out waiting for the task")]
    Timeout,
    /// The task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The pool failed while the task was outstanding.
    #[error("the pool failed: {0}")]
    Pool(String),
}
