//! # ringpool
//!
//! Inter-process communication through a lock-protected ring buffer in shared memory, and a process
//! pool on top of it that writes tasks into shared slots and reads results in place, without
//! serialization: Rust's answer to Python's `multiprocessing`.
//!
//! The crate is five layers, each one module, each using only the ones below it:
//!
//! | layer | module | what it gives |
//! | --- | --- | --- |
//! | 1 | [`segment`] | a mapped region with a validated header: named, anonymous (`memfd`) or file-backed |
//! | 2 | [`sync`] | a process-shared lock that survives its owner's death, and wait/wake with monotonic deadlines |
//! | 3 | [`ring`] (with [`queue`]) | the lock-protected ring: byte messages ([`Ring`]) and typed slots ([`Queue`]) |
//! | 4 | [`process`] | [`Process`]: a closure in a forked child, or the current binary re-executed |
//! | 5 | [`pool`] | [`Pool`]: worker processes over shared task slots |
//!
//! Linux is the supported platform; elsewhere the crate does not compile.
//!
//! See `SAFETY.md` for the argument behind every `unsafe` and the list of hazards.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(target_os = "linux"))]
compile_error!("ringpool supports Linux only: it relies on futex, memfd and /proc");

mod sys;
/// The model checks' runtime (`RUSTFLAGS="--cfg ringpool_model"` builds only; see `.ci/models`).
#[cfg(ringpool_model)]
#[doc(hidden)]
pub use sys::model;
mod trace;

pub mod segment;
pub mod sync;

pub mod ring;
pub use ring::queue;

pub mod pool;
pub mod process;

#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;

/// The pool's handle to a submitted task's result ([`pool::Future`]), under a name that does not
/// shadow [`std::future::Future`] when the crate is glob-imported.
pub use crate::pool::Future as TaskFuture;
pub use crate::pool::{Pool, PoolBuilder};
pub use crate::process::{Process, Signal, current_process};
#[cfg(feature = "archive")]
pub use crate::ring::archive::{TypedQueue, TypedRing, TypedRingBuilder};
pub use crate::ring::queue::{Queue, QueueBuilder};
pub use crate::ring::{Ring, RingBuilder};
pub use crate::segment::{OpenMode, Segment, SegmentError};
pub use crate::sync::SpinPolicy;
pub use bytemuck::{Pod, Zeroable};

/// The README's code, compiled as doc tests so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
