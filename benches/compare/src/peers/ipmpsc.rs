//! **ipmpsc 0.5**: `SharedRingBuffer` (a file-backed ring guarded by a process-shared pthread
//! mutex and condition variable), `Sender::send` and `Receiver::zero_copy_context().recv`.
//!
//! As the crate's README recommends for byte payloads, the message is serialised as serde
//! *bytes* (bincode writes a length and copies the slice; [`Bytes`] is the `serde_bytes`
//! encoding, written out here) and received zero-copy: the receiver borrows `&[u8]` straight from
//! the ring. The sender fills a reused buffer with the message and `send` copies it into the
//! ring. The ring's file lives in `/dev/shm` (tmpfs, so no disk write-back), is `capacity_bytes`
//! large, and is removed by the receiving end when it closes.

use serde::{Serialize, Serializer};

use crate::harness::Result;
use crate::payload::Message;
use crate::peers::{Ctx, Peer, Rx, Tx};

/// ipmpsc's shared ring.
pub struct Ipmpsc;

/// A byte slice serialised as serde bytes (what `serde_bytes::Bytes` does).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Sends through `ipmpsc::Sender`.
pub struct IpmpscTx {
    tx: ::ipmpsc::Sender,
    buf: Vec<u8>,
}

/// Receives through `ipmpsc::Receiver`; removes the ring's file when dropped.
pub struct IpmpscRx {
    rx: ::ipmpsc::Receiver,
    path: String,
}

impl Peer for Ipmpsc {
    const NAME: &'static str = "ipmpsc";
    const ABOUT: &'static str = "ipmpsc 0.5 SharedRingBuffer in /dev/shm (capacity_bytes), Sender::send of serde \
         bytes (bincode), Receiver::zero_copy_context().recv::<&[u8]>(); mutex + condvar, blocking";
    type Tx = IpmpscTx;
    type Rx = IpmpscRx;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<IpmpscRx> {
        let path = format!("/dev/shm/{}", ctx.unique_name("ipmpsc"));
        let cap = u32::try_from(ctx.spec().capacity_bytes)?;
        let ring = ::ipmpsc::SharedRingBuffer::create(&path, cap)?;
        ctx.link().send(path.as_bytes())?;
        Ok(IpmpscRx { rx: ::ipmpsc::Receiver::new(ring), path })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<IpmpscTx> {
        let path = ctx.link().recv_string()?;
        let ring = ::ipmpsc::SharedRingBuffer::open(&path)?;
        Ok(IpmpscTx { tx: ::ipmpsc::Sender::new(ring), buf: Vec::new() })
    }
}

impl Tx for IpmpscTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        self.buf.resize(msg.len(), 0);
        msg.write(&mut self.buf);
        self.tx.send(&Bytes(&self.buf))?;
        Ok(())
    }
}

impl Rx for IpmpscRx {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let mut ctx = self.rx.zero_copy_context();
        let bytes: &[u8] = ctx.recv()?;
        Ok(read(bytes))
    }
}

impl Drop for IpmpscRx {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}
