//! The atomics every word in shared memory is made of: a seam for the model checks.
//!
//! In every ordinary build these are `std::sync::atomic`'s own types, re-exported. The model
//! checks of the protocols (`SAFETY.md`, "How it is checked") swap in same-layout wrappers that
//! make each operation a point where the model may switch threads or stop one for good; the crate's
//! code is written once, against this module.

pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, compiler_fence};
