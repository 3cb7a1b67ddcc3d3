//! **ipc-channel 0.23**: `ipc::bytes_channel()`, the crate's API for raw bytes (no
//! serialisation): `IpcBytesSender::send(&[u8])`, `IpcBytesReceiver::recv() -> Vec<u8>`.
//!
//! Underneath, on Linux, a `SOCK_SEQPACKET` Unix socket (large messages are fragmented or go
//! through a shared-memory side channel, as the crate decides). The sending process creates the
//! channel and hands its receiving end to the receiving process the way the crate's docs show:
//! through an `IpcOneShotServer` whose name travels over the link. The sender fills a reused
//! buffer with the message and `send`s it; the receiver gets a fresh `Vec<u8>` per message, as
//! the API returns.

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

use crate::harness::{Link, Result};
use crate::payload::Message;
use crate::peers::{Ctx, Peer, Rx, Tx};

/// ipc-channel's bytes channel.
pub struct IpcChannel;

/// Sends through `IpcBytesSender`.
pub struct IpcChannelTx {
    tx: IpcBytesSender,
    buf: Vec<u8>,
}

/// Receives through `IpcBytesReceiver`, once the sender has handed it over.
pub struct IpcChannelRx {
    server: Option<IpcOneShotServer<IpcBytesReceiver>>,
    rx: Option<IpcBytesReceiver>,
}

impl Peer for IpcChannel {
    const NAME: &'static str = "ipc-channel";
    const ABOUT: &'static str = "ipc-channel 0.23 bytes_channel(): IpcBytesSender::send(&[u8]), \
         IpcBytesReceiver::recv() -> Vec<u8>; receiver handed over by IpcOneShotServer; blocking";
    type Tx = IpcChannelTx;
    type Rx = IpcChannelRx;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<IpcChannelRx> {
        let (server, name) = IpcOneShotServer::<IpcBytesReceiver>::new()?;
        ctx.link().send(name.as_bytes())?;
        Ok(IpcChannelRx { server: Some(server), rx: None })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<IpcChannelTx> {
        let name = ctx.link().recv_string()?;
        let (tx, rx) = ipc::bytes_channel()?;
        IpcSender::<IpcBytesReceiver>::connect(name)?.send(rx)?;
        Ok(IpcChannelTx { tx, buf: Vec::new() })
    }
}

impl Tx for IpcChannelTx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        self.buf.resize(msg.len(), 0);
        msg.write(&mut self.buf);
        self.tx.send(&self.buf)?;
        Ok(())
    }
}

impl Rx for IpcChannelRx {
    fn accept(&mut self, _link: &Link) -> Result<()> {
        let server = self.server.take().ok_or("ipc-channel: accepted twice")?;
        let (_handshake, rx) = server.accept()?;
        self.rx = Some(rx);
        Ok(())
    }

    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let rx = self.rx.as_ref().ok_or("ipc-channel: recv before accept")?;
        let msg = rx.recv()?;
        Ok(read(&msg))
    }
}
