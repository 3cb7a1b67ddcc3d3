//! Layer 3: the lock-protected ring. (in progress)

mod fork;
pub(crate) use fork::ForkGuard;

/// A byte-message ring (in progress).
pub struct Ring;
/// Builder (in progress).
pub struct RingBuilder;
