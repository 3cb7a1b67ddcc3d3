//! **ringpool `Queue<[u8; N]>`**: ringpool's typed queue of fixed slots, one type per message size
//! (8 B, 1 KiB, 64 KiB, 1 MiB). Sent in place (`Sender::reserve`: the message written into the
//! slot, `commit`), received in place (`Receiver::recv_in_place`: the check reads the slot, which
//! is released when the guard drops). Slots: `depth` of them, in an anonymous segment passed over
//! the link. Default spin policy.

use ringpool::Queue;
use ringpool::queue::{Receiver, Sender};

use crate::harness::Result;
use crate::payload::Message;
use crate::peers::{Ctx, Peer, Rx, Tx};

/// A queue of `N`-byte slots.
pub struct RingpoolQueue<const N: usize>;

/// The sending end.
pub struct QueueTx<const N: usize> {
    tx: Sender<[u8; N]>,
    _q: Queue<[u8; N]>,
}

/// The receiving end.
pub struct QueueRx<const N: usize> {
    rx: Receiver<[u8; N]>,
    _q: Queue<[u8; N]>,
}

impl<const N: usize> Peer for RingpoolQueue<N>
where
    [u8; N]: bytemuck::Pod,
{
    const NAME: &'static str = "ringpool-queue";
    const ABOUT: &'static str = "ringpool Queue<[u8; N]> (memfd, depth slots): Sender::reserve + write in the slot \
         + commit, Receiver::recv_in_place reading the slot; default spin then park";
    const OURS: bool = true;
    type Tx = QueueTx<N>;
    type Rx = QueueRx<N>;

    fn supports(size: usize) -> bool {
        size == N
    }

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<QueueRx<N>> {
        let q = Queue::<[u8; N]>::builder().slots(ctx.spec().depth).anonymous()?;
        let rx = q.receiver()?;
        ctx.link().send_fd(b"queue", q.fd())?;
        Ok(QueueRx { rx, _q: q })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<QueueTx<N>> {
        let (_, fd) = ctx.link().recv_fd()?;
        let q = Queue::<[u8; N]>::builder().from_fd(fd)?;
        let tx = q.sender()?;
        Ok(QueueTx { tx, _q: q })
    }
}

impl<const N: usize> Tx for QueueTx<N>
where
    [u8; N]: bytemuck::Pod,
{
    fn send(&mut self, msg: &Message) -> Result<()> {
        let mut w = self.tx.reserve().map_err(|e| format!("reserve: {e}"))?;
        msg.write(&mut w[..]);
        w.commit();
        Ok(())
    }
}

impl<const N: usize> Rx for QueueRx<N>
where
    [u8; N]: bytemuck::Pod,
{
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let slot = self.rx.recv_in_place()?;
        Ok(read(&slot[..]))
    }
}
