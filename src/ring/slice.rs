//! The error of [`Receiver::recv_into_slice`](super::Receiver::recv_into_slice).

use super::error::{Broken, Fail};

/// Why [`Receiver::recv_into_slice`](super::Receiver::recv_into_slice) did not fill the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvIntoSliceError {
    /// The next message is longer than the buffer. It was **not** received: it is still at the
    /// head of the ring, for a call with a buffer of at least `needed` bytes (or for `recv`).
    #[error("the next message is {needed} bytes, the buffer {buf_len}: the message stays in the ring")]
    BufferTooSmall {
        /// The message's length.
        needed: usize,
        /// The buffer's length.
        buf_len: usize,
    },
    /// The ring is empty and every sender is gone (dropped, closed or dead).
    #[error("the ring is empty and every sender is gone")]
    Disconnected,
    /// The ring is corrupted or poisoned.
    #[error(transparent)]
    Broken(#[from] Broken),
}

impl RecvIntoSliceError {
    pub(crate) fn from_fail(f: Fail) -> RecvIntoSliceError {
        match f {
            Fail::Broken(b) => RecvIntoSliceError::Broken(b),
            _ => RecvIntoSliceError::Disconnected,
        }
    }
}
