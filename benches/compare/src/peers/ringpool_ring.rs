//! **ringpool `Ring`**, ringpool's byte ring, in five uses:
//!
//! - `ringpool-ring`: one message per call, the way ipmpsc's row sends: the message is written
//!   into a reused local buffer, `Sender::send` copies it into the ring; received in place with
//!   `Receiver::recv_with` (the check reads the bytes where they lie in the ring).
//! - `ringpool-ring-inplace`: one message per call, written in place: `Sender::reserve(len)`, the
//!   message written into the reserved bytes, `commit`; received as above.
//! - `ringpool-ring-park`: as `ringpool-ring`, with `SpinPolicy::park()` on both ends: every wait
//!   sleeps in the kernel at once (compare with the futex floor).
//! - `ringpool-ring-solo`: as `ringpool-ring`, through solo handles (`Ring::solo_sender`,
//!   `Ring::solo_receiver`): each side keeps its lock between messages, so a message costs no
//!   locked instruction (the single-producer, single-consumer case).
//! - `ringpool-ring-batch`: the batch API: the sender writes messages into a local buffer and
//!   hands up to 256 at a time to `Sender::send_many` (one lock hold, one copy into the ring); the
//!   receiver takes up to 256 per `Receiver::recv_many` (one lock hold), checking each in place. A
//!   batch is flushed early on the receiver's clock markers, so the clock sees every message. It
//!   sits out the round trip (one message at a time is the other rows' job).
//!
//! The ring is anonymous (a `memfd`, passed to the sender over the link), `capacity_bytes` large,
//! with the crate's default spin policy (spin 50 µs, then park) unless said otherwise. Both
//! processes are real, separate processes; the payload is written and read as the runner's
//! `Message` prescribes.

use ringpool::Ring;
use ringpool::ring::{Receiver, Sender};
use ringpool::sync::SpinPolicy;

use crate::harness::Result;
use crate::payload::Message;
use crate::peers::{Ctx, Peer, Rx, Tx};

/// One message per call, copied in from a buffer.
pub struct RingpoolRing;

/// One message per call, written in place.
pub struct RingpoolRingInPlace;

/// One message per call, copied in, both ends parking at once.
pub struct RingpoolRingPark;

/// The batch API.
pub struct RingpoolRingBatch;

/// One message per call, copied in, through solo handles.
pub struct RingpoolRingSolo;

fn open_rx_ring(ctx: &mut Ctx<'_>, spin: SpinPolicy) -> Result<(Ring, Receiver)> {
    let ring = Ring::builder().capacity(ctx.spec().capacity_bytes.max(4096)).spin(spin).anonymous()?;
    let rx = ring.receiver()?;
    ctx.link().send_fd(b"ring", ring.fd())?;
    Ok((ring, rx))
}

fn open_tx_ring(ctx: &mut Ctx<'_>, spin: SpinPolicy) -> Result<(Ring, Sender)> {
    let (_, fd) = ctx.link().recv_fd()?;
    let ring = Ring::builder().spin(spin).from_fd(fd)?;
    let tx = ring.sender()?;
    Ok((ring, tx))
}

/// The sending end, one message per call: copied from `buf`, or written in place.
pub struct RingTx {
    tx: Sender,
    buf: Option<Vec<u8>>,
    _ring: Ring,
}

/// The receiving end, one message per call.
pub struct RingRx {
    rx: Receiver,
    _ring: Ring,
}

macro_rules! single_peer {
    ($ty:ty, $name:literal, $about:literal, $spin:expr, $copy:expr) => {
        impl Peer for $ty {
            const NAME: &'static str = $name;
            const ABOUT: &'static str = $about;
            const OURS: bool = true;
            type Tx = RingTx;
            type Rx = RingRx;

            fn open_rx(ctx: &mut Ctx<'_>) -> Result<RingRx> {
                let (ring, rx) = open_rx_ring(ctx, $spin)?;
                Ok(RingRx { rx, _ring: ring })
            }

            fn open_tx(ctx: &mut Ctx<'_>) -> Result<RingTx> {
                let (ring, tx) = open_tx_ring(ctx, $spin)?;
                Ok(RingTx { tx, buf: $copy.then(Vec::new), _ring: ring })
            }
        }
    };
}

single_peer!(
    RingpoolRing,
    "ringpool-ring",
    "ringpool Ring (memfd, capacity_bytes): message written into a local buffer, Sender::send copies it in; \
     Receiver::recv_with reading in place; default spin (50 µs) then park",
    SpinPolicy::default(),
    true
);
single_peer!(
    RingpoolRingInPlace,
    "ringpool-ring-inplace",
    "ringpool Ring: Sender::reserve + message written in place + commit; Receiver::recv_with reading in place; \
     default spin then park",
    SpinPolicy::default(),
    false
);
single_peer!(
    RingpoolRingPark,
    "ringpool-ring-park",
    "ringpool Ring as ringpool-ring, with SpinPolicy::park() on both ends: every wait sleeps in the kernel at once",
    SpinPolicy::park(),
    true
);

impl Peer for RingpoolRingSolo {
    const NAME: &'static str = "ringpool-ring-solo";
    const ABOUT: &'static str = "ringpool Ring as ringpool-ring, through solo handles (Ring::solo_sender, \
         Ring::solo_receiver): each side keeps its lock between messages, no locked instruction per message";
    const OURS: bool = true;
    type Tx = SoloTx;
    type Rx = SoloRx;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<SoloRx> {
        let (ring, rx) = open_rx_ring(ctx, SpinPolicy::default())?;
        Ok(SoloRx { rx: rx.into_solo(), _ring: ring })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<SoloTx> {
        let (ring, tx) = open_tx_ring(ctx, SpinPolicy::default())?;
        Ok(SoloTx { tx: tx.into_solo(), buf: Vec::new(), _ring: ring })
    }
}

/// The sending end through a solo handle, copied from `buf`.
pub struct SoloTx {
    tx: ringpool::ring::SoloSender,
    buf: Vec<u8>,
    _ring: Ring,
}

/// The receiving end through a solo handle.
pub struct SoloRx {
    rx: ringpool::ring::SoloReceiver,
    _ring: Ring,
}

impl Tx for SoloTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        self.buf.resize(msg.len(), 0);
        msg.write(&mut self.buf);
        self.tx.send(&self.buf[..]).map_err(|e| format!("send: {e}"))?;
        Ok(())
    }
}

impl Rx for SoloRx {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(self.rx.recv_with(read)?)
    }
}

impl Tx for RingTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        match &mut self.buf {
            Some(buf) => {
                buf.resize(msg.len(), 0);
                msg.write(buf);
                self.tx.send(&buf[..]).map_err(|e| format!("send: {e}"))?;
            }
            None => {
                let mut w = self.tx.reserve(msg.len())?;
                msg.write(&mut w);
                w.commit();
            }
        }
        Ok(())
    }
}

impl Rx for RingRx {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(self.rx.recv_with(read)?)
    }
}

/// Messages per batch (256: the criterion bench shows batches gaining up to there).
const BATCH: usize = 256;

/// The sending end of the batch API: messages gather in `buf`, `size` bytes each, until 64 are
/// there.
pub struct BatchTx {
    tx: Sender,
    buf: Vec<u8>,
    size: usize,
    count: usize,
    _ring: Ring,
}

/// The receiving end of the batch API: up to 256 messages per lock hold, each checked in place.
pub struct BatchRx {
    rx: Receiver,
    _ring: Ring,
}

impl Peer for RingpoolRingBatch {
    const NAME: &'static str = "ringpool-ring-batch";
    const ABOUT: &'static str = "ringpool Ring, batch API: Sender::send_many of 256 messages written into a local \
         buffer, Receiver::recv_many of up to 256 checked in place; default spin then park";
    const OURS: bool = true;
    const ROUND_TRIP: bool = false;
    type Tx = BatchTx;
    type Rx = BatchRx;

    fn supports(size: usize) -> bool {
        size <= 1024
    }

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<BatchRx> {
        let (ring, rx) = open_rx_ring(ctx, SpinPolicy::default())?;
        Ok(BatchRx { rx, _ring: ring })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<BatchTx> {
        let (ring, tx) = open_tx_ring(ctx, SpinPolicy::default())?;
        let size = ctx.spec().size;
        Ok(BatchTx { tx, buf: vec![0; size * BATCH], size, count: 0, _ring: ring })
    }
}

impl BatchTx {
    fn flush(&mut self) -> Result<()> {
        let mut msgs: [&[u8]; BATCH] = [&[]; BATCH];
        for (m, chunk) in msgs.iter_mut().zip(self.buf.chunks_exact(self.size)).take(self.count) {
            *m = chunk;
        }
        self.tx.send_many(&msgs[..self.count]).map_err(|e| format!("send_many: {e}"))?;
        self.count = 0;
        Ok(())
    }
}

impl Tx for BatchTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        let at = self.count * self.size;
        msg.write(&mut self.buf[at..at + self.size]);
        self.count += 1;
        if self.count == BATCH || msg.is_marker() {
            self.flush()?;
        }
        Ok(())
    }
}

impl Rx for BatchRx {
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(self.rx.recv_with(read)?)
    }

    fn recv_batch(&mut self, max: usize, read: impl FnMut(&[u8])) -> Result<usize> {
        Ok(self.rx.recv_many(max, read)?)
    }
}
