//! Layer 5 (in progress)
pub struct Pool;
