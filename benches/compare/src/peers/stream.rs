//! Framing shared by the two byte-stream peers ([`super::pipe`], [`super::unix_socket`]):
//! a message is a 4-byte little-endian length and the payload.
//!
//! The sender writes each message with **one** `write_all` of `[length | payload]` from a buffer
//! it reuses (one `write(2)` per message while the message fits in the kernel's buffer; a 1 MiB
//! message takes several). It does not gather several messages into one write: a program sending
//! messages one at a time cannot. The receiver reads through a 64 KiB `BufReader`, as a program
//! reading framed messages would (so a small message usually costs it no system call), with
//! `read_exact` of the length and then of the payload into a buffer it reuses.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::OwnedFd;

use crate::harness::Result;
use crate::payload::Message;
use crate::peers::{Rx, Tx};

/// The sending end of a byte stream.
pub struct StreamTx {
    out: File,
    buf: Vec<u8>,
}

impl StreamTx {
    /// Writes to `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        Self { out: File::from(fd), buf: Vec::new() }
    }
}

impl Tx for StreamTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        let len = msg.len();
        self.buf.resize(4 + len, 0);
        self.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        msg.write(&mut self.buf[4..]);
        self.out.write_all(&self.buf)?;
        Ok(())
    }
}

/// The receiving end of a byte stream.
pub struct StreamRx {
    input: BufReader<File>,
    buf: Vec<u8>,
}

impl StreamRx {
    /// Reads from `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        Self { input: BufReader::with_capacity(64 * 1024, File::from(fd)), buf: Vec::new() }
    }
}

impl Rx for StreamRx {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        self.buf.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(&mut self.buf)?;
        Ok(read(&self.buf))
    }
}
