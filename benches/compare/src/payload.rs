//! The message every peer carries: written in full by the sender, checked by the receiver.
//!
//! Layout of a message of `len` bytes (`len >= 8`):
//!
//! ```text
//! [0..8)          head: sequence number | flags, little endian
//! [8..len-8)      fill_byte(seq), repeated (a memset of a byte that changes with every message)
//! [len-8..len)    head again (only when len >= 16), so a torn or half-copied message is caught
//! ```
//!
//! The receiver checks, for every message: the sequence number is the next one, the length is
//! right, both heads agree, and three sampled fill bytes (first, middle, last). Every
//! [`FULL_CHECK_EVERY`]-th message is compared byte by byte in full. Any mismatch is fatal: the
//! child prints it and exits with [`MISMATCH_EXIT`], and the runner aborts the whole run.

use std::mem::MaybeUninit;

/// The flag on the message whose arrival starts the receiver's clock.
pub const MARK: u64 = 1 << 62;
/// The flag on the last message of a run (its arrival stops the receiver's clock).
pub const LAST: u64 = 1 << 63;
const FLAGS: u64 = MARK | LAST;

/// The smallest message: the head alone.
pub const MIN_SIZE: usize = 8;
/// One message in this many is compared byte by byte in full.
pub const FULL_CHECK_EVERY: u64 = 16;
/// The exit status of a child that received a wrong message.
pub const MISMATCH_EXIT: i32 = 3;

/// The byte that fills message `seq`: it changes from one message to the next.
pub fn fill_byte(seq: u64) -> u8 {
    (seq.wrapping_mul(131).wrapping_add(17) & 0xff) as u8
}

/// One message to send: the peer asks for its bytes with [`Message::write`] (or
/// [`Message::write_uninit`] into loaned, uninitialised memory) wherever it wants them.
#[derive(Clone, Copy, Debug)]
pub struct Message {
    seq: u64,
    flags: u64,
    len: usize,
}

impl Message {
    /// Message `seq` of `len` bytes with `flags` ([`MARK`], [`LAST`] or 0).
    pub fn new(seq: u64, flags: u64, len: usize) -> Self {
        assert!(len >= MIN_SIZE, "messages are at least {MIN_SIZE} bytes");
        assert_eq!(seq & FLAGS, 0, "sequence number overflowed into the flags");
        Self { seq, flags, len }
    }

    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the receiver's clock starts or stops on this message: a peer that holds messages
    /// back to send them in batches must flush on it.
    pub fn is_marker(&self) -> bool {
        self.flags != 0
    }

    fn head(&self) -> [u8; 8] {
        (self.seq | self.flags).to_le_bytes()
    }

    /// Writes every byte of the message into `buf`, which must be exactly [`Message::len`] long.
    pub fn write(&self, buf: &mut [u8]) {
        assert_eq!(buf.len(), self.len, "buffer is not the message's length");
        let head = self.head();
        buf[..8].copy_from_slice(&head);
        let end = self.body_end();
        if end > 8 {
            buf[8..end].fill(fill_byte(self.seq));
        }
        if end < self.len {
            buf[end..].copy_from_slice(&head);
        }
    }

    /// Writes every byte of the message into uninitialised memory (a loaned sample); after this
    /// returns, all of `buf` is initialised.
    pub fn write_uninit(&self, buf: &mut [MaybeUninit<u8>]) {
        assert_eq!(buf.len(), self.len, "buffer is not the message's length");
        let head = self.head().map(MaybeUninit::new);
        buf[..8].copy_from_slice(&head);
        let end = self.body_end();
        buf[8..end].fill(MaybeUninit::new(fill_byte(self.seq)));
        if end < self.len {
            buf[end..].copy_from_slice(&head);
        }
    }

    fn body_end(&self) -> usize {
        if self.len >= 16 { self.len - 8 } else { self.len }
    }
}

/// What the receiver learned from one message.
#[derive(Clone, Copy, Debug)]
pub struct Got {
    /// Its sequence number.
    pub seq: u64,
    /// Its flags ([`MARK`], [`LAST`]).
    pub flags: u64,
}

/// The receiver's side: expects messages in order and checks their bytes.
#[derive(Debug)]
pub struct Checker {
    next: u64,
    len: usize,
    /// How many messages were compared byte by byte in full.
    pub full_checks: u64,
}

impl Checker {
    /// Expects messages of `len` bytes, starting at sequence number 0.
    pub fn new(len: usize) -> Self {
        Self { next: 0, len, full_checks: 0 }
    }

    /// Checks one received message; an `Err` describes the first thing found wrong.
    pub fn check(&mut self, buf: &[u8]) -> Result<Got, String> {
        let expect = self.next;
        if buf.len() != self.len {
            return Err(format!("message {expect}: {} bytes, expected {}", buf.len(), self.len));
        }
        let head = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let (seq, flags) = (head & !FLAGS, head & FLAGS);
        if seq != expect {
            return Err(format!("got message {seq}, expected {expect} (lost, duplicated or reordered)"));
        }
        let end = if self.len >= 16 { self.len - 8 } else { self.len };
        if end < self.len && buf[end..] != buf[..8] {
            return Err(format!("message {seq}: tail head differs from head (torn message)"));
        }
        let fill = fill_byte(seq);
        if end > 8 {
            for at in [8, 8 + (end - 8) / 2, end - 1] {
                if buf[at] != fill {
                    return Err(format!("message {seq}: byte {at} is {:#04x}, expected {fill:#04x}", buf[at]));
                }
            }
            if seq.is_multiple_of(FULL_CHECK_EVERY) {
                self.full_checks += 1;
                if let Some(at) = buf[8..end].iter().position(|&b| b != fill) {
                    return Err(format!(
                        "message {seq}: byte {} is {:#04x}, expected {fill:#04x} (full check)",
                        at + 8,
                        buf[at + 8]
                    ));
                }
            }
        }
        self.next += 1;
        Ok(Got { seq, flags })
    }
}

/// Reports a wrong message loudly and ends this child with [`MISMATCH_EXIT`].
pub fn abort_mismatch(peer: &str, what: &str) -> ! {
    eprintln!("\n*** PAYLOAD MISMATCH in peer {peer}: {what} ***\n");
    std::process::exit(MISMATCH_EXIT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_messages_check_and_corruption_is_caught() {
        for len in [8, 9, 16, 17, 1024, 65536] {
            let mut chk = Checker::new(len);
            let mut buf = vec![0u8; len];
            for seq in 0..40 {
                Message::new(seq, if seq == 39 { LAST } else { 0 }, len).write(&mut buf);
                assert_eq!(chk.check(&buf).expect("a written message checks").seq, seq);
            }
            let mut uninit = vec![MaybeUninit::new(0u8); len];
            Message::new(40, 0, len).write_uninit(&mut uninit);
            // SAFETY: every element was created with `MaybeUninit::new`, so it is initialised.
            let bytes: Vec<u8> = uninit.iter().map(|b| unsafe { b.assume_init() }).collect();
            chk.check(&bytes).expect("write_uninit writes the same bytes");
            // A wrong byte inside a fully checked message (48 is a multiple of 16) is caught.
            if len > 16 {
                Message::new(48, 0, len).write(&mut buf);
                buf[len / 3] ^= 1;
                assert!(Checker { next: 48, len, full_checks: 0 }.check(&buf).is_err());
            }
            // A skipped message is caught.
            Message::new(42, 0, len).write(&mut buf);
            assert!(chk.check(&buf).is_err());
        }
    }
}
