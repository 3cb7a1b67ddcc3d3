//! The atomics every word in shared memory is made of: a seam for the model checks.
//!
//! In every ordinary build these are `std::sync::atomic`'s own types, re-exported. The model
//! checks of the protocols (`SAFETY.md`, "How it is checked"; built with
//! `RUSTFLAGS="--cfg ringpool_model"`, run by `.ci/models`) swap in same-layout wrappers
//! (`#[repr(transparent)]` over std's types, so a control block in shared memory is laid out
//! exactly as in production) that make each operation a point where the model may switch threads
//! or stop one for good ([`super::model::hook`]); the crate's code is written once, against this
//! module.

#[cfg(not(ringpool_model))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, compiler_fence};

#[cfg(ringpool_model)]
pub(crate) use model_types::*;

#[cfg(ringpool_model)]
mod model_types {
    pub(crate) use std::sync::atomic::{Ordering, compiler_fence};

    /// A full fence. The model runs every operation sequentially consistent, so only the hook
    /// remains.
    #[allow(dead_code, reason = "used on targets other than x86-64 only")]
    pub(crate) fn fence(order: Ordering) {
        crate::sys::model::hook();
        std::sync::atomic::fence(order);
    }

    macro_rules! model_atomic {
        ($name:ident, $prim:ty) => {
            /// `std`'s atomic of the same name, each operation preceded by the model's hook.
            #[repr(transparent)]
            #[derive(Default)]
            pub(crate) struct $name(std::sync::atomic::$name);

            #[allow(dead_code, reason = "the same surface as std's type; not every method is used")]
            impl $name {
                pub(crate) const fn new(v: $prim) -> Self {
                    Self(std::sync::atomic::$name::new(v))
                }
                #[inline]
                pub(crate) fn load(&self, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.load(order)
                }
                #[inline]
                pub(crate) fn store(&self, v: $prim, order: Ordering) {
                    crate::sys::model::hook();
                    self.0.store(v, order)
                }
                #[inline]
                pub(crate) fn swap(&self, v: $prim, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.swap(v, order)
                }
                #[inline]
                pub(crate) fn compare_exchange(
                    &self,
                    current: $prim,
                    new: $prim,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$prim, $prim> {
                    crate::sys::model::hook();
                    self.0.compare_exchange(current, new, success, failure)
                }
                /// Never fails spuriously in the model (one step, sequentially consistent).
                #[inline]
                pub(crate) fn compare_exchange_weak(
                    &self,
                    current: $prim,
                    new: $prim,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$prim, $prim> {
                    crate::sys::model::hook();
                    self.0.compare_exchange(current, new, success, failure)
                }
                /// One model step: `f` runs without a scheduling point inside.
                #[inline]
                pub(crate) fn fetch_update(
                    &self,
                    set_order: Ordering,
                    fetch_order: Ordering,
                    f: impl FnMut($prim) -> Option<$prim>,
                ) -> Result<$prim, $prim> {
                    crate::sys::model::hook();
                    self.0.fetch_update(set_order, fetch_order, f)
                }
                #[inline]
                pub(crate) fn get_mut(&mut self) -> &mut $prim {
                    self.0.get_mut()
                }
                #[inline]
                pub(crate) fn into_inner(self) -> $prim {
                    self.0.into_inner()
                }
                #[inline]
                pub(crate) const fn as_ptr(&self) -> *mut $prim {
                    self.0.as_ptr()
                }
                #[inline]
                pub(crate) fn fetch_and(&self, v: $prim, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.fetch_and(v, order)
                }
                #[inline]
                pub(crate) fn fetch_or(&self, v: $prim, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.fetch_or(v, order)
                }
                /// The underlying std atomic, for the model's own bookkeeping (no hook).
                #[inline]
                pub(crate) fn raw(&self) -> &std::sync::atomic::$name {
                    &self.0
                }
            }

            impl std::fmt::Debug for $name {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    // No hook: formatting is not part of any protocol.
                    std::fmt::Debug::fmt(&self.0, f)
                }
            }
        };
    }

    macro_rules! model_int {
        ($name:ident, $prim:ty) => {
            model_atomic!($name, $prim);

            #[allow(dead_code, reason = "the same surface as std's type; not every method is used")]
            impl $name {
                #[inline]
                pub(crate) fn fetch_add(&self, v: $prim, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.fetch_add(v, order)
                }
                #[inline]
                pub(crate) fn fetch_sub(&self, v: $prim, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.fetch_sub(v, order)
                }
                #[inline]
                pub(crate) fn fetch_max(&self, v: $prim, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.fetch_max(v, order)
                }
                #[inline]
                pub(crate) fn fetch_min(&self, v: $prim, order: Ordering) -> $prim {
                    crate::sys::model::hook();
                    self.0.fetch_min(v, order)
                }
            }
        };
    }

    model_atomic!(AtomicBool, bool);
    model_int!(AtomicU8, u8);
    model_int!(AtomicU32, u32);
    model_int!(AtomicU64, u64);

    // Same layout as std's: the control block in shared memory does not change under the model.
    const _: () = {
        assert!(std::mem::size_of::<AtomicU64>() == 8 && std::mem::align_of::<AtomicU64>() == 8);
        assert!(std::mem::size_of::<AtomicU32>() == 4 && std::mem::align_of::<AtomicU32>() == 4);
        assert!(std::mem::size_of::<AtomicU8>() == 1 && std::mem::size_of::<AtomicBool>() == 1);
    };
}
