//! **ringpool `Ring`**, ringpool's byte ring, in two uses:
//!
//! - `ringpool-ring`: one message per call, written in place: `Sender::reserve(len)`, the message
//!   written into the reserved bytes, `commit`; received in place with `Receiver::recv_with`
//!   (the check reads the bytes where they lie in the ring). One lock hold per message per side.
//! - `ringpool-ring-batch`: the batch API: the sender writes messages into a local buffer and
//!   hands up to 64 at a time to `Sender::send_many` (one lock hold, one copy into the ring); the
//!   receiver takes up to 64 per `Receiver::recv_many` (one lock hold) into a local buffer. A batch
//!   is flushed early on the receiver's clock markers, so the clock sees every message.
//!
//! The ring is anonymous (a `memfd`, passed to the sender over the link), `capacity_bytes` large,
//! with the crate's default spin policy (spin 50 µs, then park). Both processes are real,
//! separate processes; the payload is written and read as the runner's `Message` prescribes.

use ringpool::Ring;
use ringpool::ring::{Receiver, Sender};

use crate::harness::Result;
use crate::payload::Message;
use crate::peers::{Ctx, Peer, Rx, Tx};

/// One message per call, in place.
pub struct RingpoolRing;

/// The batch API.
pub struct RingpoolRingBatch;

fn open_rx_ring(ctx: &mut Ctx<'_>) -> Result<(Ring, Receiver)> {
    let ring = Ring::builder().capacity(ctx.spec().capacity_bytes.max(4096)).anonymous()?;
    let rx = ring.receiver()?;
    ctx.link().send_fd(b"ring", ring.fd())?;
    Ok((ring, rx))
}

fn open_tx_ring(ctx: &mut Ctx<'_>) -> Result<(Ring, Sender)> {
    let (_, fd) = ctx.link().recv_fd()?;
    let ring = Ring::builder().from_fd(fd)?;
    let tx = ring.sender()?;
    Ok((ring, tx))
}

/// The sending end, one message per call.
pub struct RingTx {
    tx: Sender,
    _ring: Ring,
}

/// The receiving end, one message per call.
pub struct RingRx {
    rx: Receiver,
    _ring: Ring,
}

impl Peer for RingpoolRing {
    const NAME: &'static str = "ringpool-ring";
    const ABOUT: &'static str = "ringpool Ring (memfd, capacity_bytes): Sender::reserve + write in place + commit, \
         Receiver::recv_with reading in place; default spin (50 µs) then park";
    const OURS: bool = true;
    type Tx = RingTx;
    type Rx = RingRx;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<RingRx> {
        let (ring, rx) = open_rx_ring(ctx)?;
        Ok(RingRx { rx, _ring: ring })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<RingTx> {
        let (ring, tx) = open_tx_ring(ctx)?;
        Ok(RingTx { tx, _ring: ring })
    }
}

impl Tx for RingTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        let mut w = self.tx.reserve(msg.len())?;
        msg.write(&mut w);
        w.commit();
        Ok(())
    }
}

impl Rx for RingRx {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(self.rx.recv_with(read)?)
    }
}

/// Messages per batch.
const BATCH: usize = 64;

/// The sending end of the batch API: messages gather in `buf` (at `ends`) until 64 are there.
pub struct BatchTx {
    tx: Sender,
    buf: Vec<u8>,
    ends: Vec<usize>,
    _ring: Ring,
}

/// The receiving end of the batch API: a batch lands in `buf`, then is handed out one by one.
pub struct BatchRx {
    rx: Receiver,
    buf: Vec<u8>,
    ends: Vec<usize>,
    next: usize,
    _ring: Ring,
}

impl Peer for RingpoolRingBatch {
    const NAME: &'static str = "ringpool-ring-batch";
    const ABOUT: &'static str = "ringpool Ring, batch API: Sender::send_many of 64 messages written into a local \
         buffer, Receiver::recv_many of up to 64 into a local buffer; default spin then park";
    const OURS: bool = true;
    const ROUND_TRIP: bool = false;
    type Tx = BatchTx;
    type Rx = BatchRx;

    fn supports(size: usize) -> bool {
        size <= 1024
    }

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<BatchRx> {
        let (ring, rx) = open_rx_ring(ctx)?;
        Ok(BatchRx { rx, buf: Vec::new(), ends: Vec::new(), next: 0, _ring: ring })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<BatchTx> {
        let (ring, tx) = open_tx_ring(ctx)?;
        Ok(BatchTx { tx, buf: Vec::new(), ends: Vec::new(), _ring: ring })
    }
}

impl BatchTx {
    fn flush(&mut self) -> Result<()> {
        let mut start = 0;
        let msgs: Vec<&[u8]> = self
            .ends
            .iter()
            .map(|&end| {
                let m = &self.buf[start..end];
                start = end;
                m
            })
            .collect();
        self.tx.send_many(&msgs).map_err(|e| format!("send_many: {e}"))?;
        self.buf.clear();
        self.ends.clear();
        Ok(())
    }
}

impl Tx for BatchTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        let start = self.buf.len();
        self.buf.resize(start + msg.len(), 0);
        msg.write(&mut self.buf[start..]);
        self.ends.push(self.buf.len());
        if self.ends.len() == BATCH || msg.is_marker() {
            self.flush()?;
        }
        Ok(())
    }
}

impl Rx for BatchRx {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        if self.next == self.ends.len() {
            self.buf.clear();
            self.ends.clear();
            self.next = 0;
            let (buf, ends) = (&mut self.buf, &mut self.ends);
            self.rx.recv_many(BATCH, |m| {
                buf.extend_from_slice(m);
                ends.push(buf.len());
            })?;
        }
        let start = if self.next == 0 { 0 } else { self.ends[self.next - 1] };
        let end = self.ends[self.next];
        self.next += 1;
        Ok(read(&self.buf[start..end]))
    }
}
