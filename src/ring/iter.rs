//! Iterators over a receiver, named as crossbeam-channel names them:
//!
//! | call | yields | ends when |
//! | --- | --- | --- |
//! | `rx.iter()`, `for m in &rx` | each message, waiting for the next | every sender is gone and the ring is drained (`Disconnected`) |
//! | `rx.try_iter()` | the messages there now | the ring is empty (`Empty`), or as above |
//! | `rx.into_iter()`, `for m in rx` | as `iter()`, owning the handle | as `iter()` |
//!
//! An iterator also ends when the ring is found broken (corrupted or poisoned); it cannot say so
//! itself, so a caller that must tell the two endings apart calls `recv` once more afterwards: it
//! answers `Disconnected` or `Broken` again.
//!
//! A new sender reconnects a disconnected ring or queue ([`Ring::sender`](crate::Ring::sender),
//! [`Queue::sender`](crate::Queue::sender), in this process or any other): an iterator that has
//! ended stays ended (the iterators are fused), but one made again (`rx.iter()`) after the new
//! sender joined waits for and yields what it sends. An iterator made before any sender joined
//! ends at once.

use std::iter::FusedIterator;

use bytemuck::Pod;

use super::bytes;
use super::queue;

/// [`Ring`](crate::Ring) receivers: [`iter`](bytes::Receiver::iter),
/// [`try_iter`](bytes::Receiver::try_iter) and `IntoIterator`.
pub mod ring_iter {
    use super::*;

    /// A blocking iterator over a byte ring's messages; see [`bytes::Receiver::iter`].
    #[derive(Debug)]
    #[must_use = "iterators do nothing unless consumed"]
    pub struct Iter<'a> {
        pub(super) rx: &'a bytes::Receiver,
        pub(super) done: bool,
    }

    /// A non-blocking iterator over the messages in a byte ring now; see
    /// [`bytes::Receiver::try_iter`].
    #[derive(Debug)]
    #[must_use = "iterators do nothing unless consumed"]
    pub struct TryIter<'a> {
        pub(super) rx: &'a bytes::Receiver,
    }

    /// A blocking iterator that owns its receiver; see `IntoIterator for Receiver`.
    #[derive(Debug)]
    #[must_use = "iterators do nothing unless consumed"]
    pub struct IntoIter {
        pub(super) rx: bytes::Receiver,
        pub(super) done: bool,
    }

    impl Iterator for Iter<'_> {
        type Item = Vec<u8>;
        fn next(&mut self) -> Option<Vec<u8>> {
            if self.done {
                return None;
            }
            let m = self.rx.recv().ok();
            self.done = m.is_none();
            m
        }
    }

    impl FusedIterator for Iter<'_> {}

    impl Iterator for TryIter<'_> {
        type Item = Vec<u8>;
        fn next(&mut self) -> Option<Vec<u8>> {
            self.rx.try_recv().ok()
        }
    }

    impl Iterator for IntoIter {
        type Item = Vec<u8>;
        fn next(&mut self) -> Option<Vec<u8>> {
            if self.done {
                return None;
            }
            let m = self.rx.recv().ok();
            self.done = m.is_none();
            m
        }
    }

    impl FusedIterator for IntoIter {}

    impl bytes::Receiver {
        /// A blocking iterator over the messages: each `next` is a [`recv`](Self::recv), and the
        /// iterator ends at the first error, which is `Disconnected` (every sender gone and the
        /// ring drained) unless the ring is broken. See the [module docs](crate::ring::iter).
        /// After it ended, a new sender reconnects the receiver: call `iter()` again.
        ///
        /// ```no_run
        /// # let ring = ringpool::Ring::builder().anonymous()?;
        /// let rx = ring.receiver()?;
        /// for msg in rx.iter() {
        ///     println!("{} bytes", msg.len());
        /// }
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn iter(&self) -> Iter<'_> {
            Iter { rx: self, done: false }
        }

        /// A non-blocking iterator over the messages in the ring now: each `next` is a
        /// [`try_recv`](Self::try_recv), and it ends at the first error (the ring is empty, every
        /// sender is gone, or it is broken). Calling `next` again after `None` looks again.
        pub fn try_iter(&self) -> TryIter<'_> {
            TryIter { rx: self }
        }
    }

    impl<'a> IntoIterator for &'a bytes::Receiver {
        type Item = Vec<u8>;
        type IntoIter = Iter<'a>;
        fn into_iter(self) -> Iter<'a> {
            self.iter()
        }
    }

    impl IntoIterator for bytes::Receiver {
        type Item = Vec<u8>;
        type IntoIter = IntoIter;
        fn into_iter(self) -> IntoIter {
            IntoIter { rx: self, done: false }
        }
    }
}

/// [`Queue`](crate::Queue) receivers: [`iter`](queue::Receiver::iter),
/// [`try_iter`](queue::Receiver::try_iter) and `IntoIterator`.
pub mod queue_iter {
    use super::*;

    /// A blocking iterator over a queue's values; see [`queue::Receiver::iter`].
    #[derive(Debug)]
    #[must_use = "iterators do nothing unless consumed"]
    pub struct Iter<'a, T> {
        pub(super) rx: &'a queue::Receiver<T>,
        pub(super) done: bool,
    }

    /// A non-blocking iterator over the values in a queue now; see [`queue::Receiver::try_iter`].
    #[derive(Debug)]
    #[must_use = "iterators do nothing unless consumed"]
    pub struct TryIter<'a, T> {
        pub(super) rx: &'a queue::Receiver<T>,
    }

    /// A blocking iterator that owns its receiver; see `IntoIterator for Receiver<T>`.
    #[derive(Debug)]
    #[must_use = "iterators do nothing unless consumed"]
    pub struct IntoIter<T> {
        pub(super) rx: queue::Receiver<T>,
        pub(super) done: bool,
    }

    impl<T: Pod> Iterator for Iter<'_, T> {
        type Item = T;
        fn next(&mut self) -> Option<T> {
            if self.done {
                return None;
            }
            let v = self.rx.recv().ok();
            self.done = v.is_none();
            v
        }
    }

    impl<T: Pod> FusedIterator for Iter<'_, T> {}

    impl<T: Pod> Iterator for TryIter<'_, T> {
        type Item = T;
        fn next(&mut self) -> Option<T> {
            self.rx.try_recv().ok()
        }
    }

    impl<T: Pod> Iterator for IntoIter<T> {
        type Item = T;
        fn next(&mut self) -> Option<T> {
            if self.done {
                return None;
            }
            let v = self.rx.recv().ok();
            self.done = v.is_none();
            v
        }
    }

    impl<T: Pod> FusedIterator for IntoIter<T> {}

    impl<T: Pod> queue::Receiver<T> {
        /// A blocking iterator over the values: each `next` is a [`recv`](Self::recv), and the
        /// iterator ends at the first error, which is `Disconnected` (every sender gone and the
        /// queue drained) unless the queue is broken. See the [module docs](crate::ring::iter).
        /// After it ended, a new sender reconnects the receiver: call `iter()` again.
        pub fn iter(&self) -> Iter<'_, T> {
            Iter { rx: self, done: false }
        }

        /// A non-blocking iterator over the values in the queue now: each `next` is a
        /// [`try_recv`](Self::try_recv), and it ends at the first error.
        pub fn try_iter(&self) -> TryIter<'_, T> {
            TryIter { rx: self }
        }
    }

    impl<'a, T: Pod> IntoIterator for &'a queue::Receiver<T> {
        type Item = T;
        type IntoIter = Iter<'a, T>;
        fn into_iter(self) -> Iter<'a, T> {
            self.iter()
        }
    }

    impl<T: Pod> IntoIterator for queue::Receiver<T> {
        type Item = T;
        type IntoIter = IntoIter<T>;
        fn into_iter(self) -> IntoIter<T> {
            IntoIter { rx: self, done: false }
        }
    }
}
