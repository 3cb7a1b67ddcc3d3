//! Layer 2: synchronization between processes.
//!
//! - [`RobustMutex`]: a one-word futex lock that survives its owner's death: the next locker takes
//!   it over and is told to repair the state it protects, or the lock reports
//!   [`LockError::Poisoned`].
//! - [`EventCount`]: wait for a condition that lives in shared memory, and wake waiters, with
//!   monotonic deadlines that never fail early.
//! - [`SpinPolicy`]: how long a waiter polls before it parks in the kernel.
//! - [`liveness`]: is a process (pid plus start time) still alive, zombies counted as dead.
//!
//! Why this replaces raw_sync 0.1.5 (timed waits that fail at once, a mutex that is not robust,
//! wall-clock timeouts, undefined behaviour in its initializers): see `SAFETY.md`.

mod event;
mod mutex;
mod spin;

pub use crate::sys::liveness;
pub use crate::sys::{current_pid, fork_generation};
pub use event::{EventCount, WaitKey, store_load_barrier_after_rmw};
pub use mutex::{LockError, OwnerToken, RobustMutex, RobustMutexGuard, TryLockError};
pub use spin::SpinPolicy;
pub(crate) use spin::Spinner;

pub use crate::sys::Deadline;
pub use crate::sys::FutexWait;
