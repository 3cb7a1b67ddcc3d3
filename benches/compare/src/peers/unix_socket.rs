//! **unix-socket**: a connected `AF_UNIX` `SOCK_STREAM` socket pair with the kernel's default
//! buffer sizes, blocking.
//!
//! The receiving process creates the pair and passes one end to the sending process over the link
//! (`SCM_RIGHTS`), then closes it. (A socket bound to a path and connected to gives the same
//! kind of socket; the pair just leaves no file behind.) Framing and the one-write-per-message
//! rule: see [`super::stream`].

use std::os::fd::AsFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::harness::Result;
use crate::peers::stream::{StreamRx, StreamTx};
use crate::peers::{Ctx, Peer};

/// A Unix stream socket.
pub struct UnixSocket;

impl Peer for UnixSocket {
    const NAME: &'static str = "unix-socket";
    const ABOUT: &'static str = "AF_UNIX SOCK_STREAM, default buffers, blocking; one write_all of [len|payload] per \
         message; receiver reads through a 64 KiB BufReader";
    type Tx = StreamTx;
    type Rx = StreamRx;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<StreamRx> {
        let (mine, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)?;
        ctx.link().send_fd(b"socket", theirs.as_fd())?;
        drop(theirs);
        Ok(StreamRx::new(mine))
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<StreamTx> {
        let (_, fd) = ctx.link().recv_fd()?;
        Ok(StreamTx::new(fd))
    }
}
