//! **pipe**: an anonymous `pipe(2)` with the kernel's default capacity (64 KiB), blocking.
//!
//! The receiving process creates the pipe and passes the write end to the sending process over
//! the link (`SCM_RIGHTS`), then closes its own copy. Framing and the one-write-per-message rule:
//! see [`super::stream`]. The payload is copied twice (into the pipe, out of it), as every pipe
//! user's is.

use std::os::fd::AsFd;

use crate::harness::Result;
use crate::peers::stream::{StreamRx, StreamTx};
use crate::peers::{Ctx, Peer};

/// An anonymous pipe.
pub struct Pipe;

impl Peer for Pipe {
    const NAME: &'static str = "pipe";
    const ABOUT: &'static str = "pipe(2), default 64 KiB capacity, blocking; one write_all of [len|payload] per \
         message; receiver reads through a 64 KiB BufReader";
    type Tx = StreamTx;
    type Rx = StreamRx;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<StreamRx> {
        let (read_end, write_end) = nix::unistd::pipe()?;
        ctx.link().send_fd(b"pipe", write_end.as_fd())?;
        drop(write_end);
        Ok(StreamRx::new(read_end))
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<StreamTx> {
        let (_, write_end) = ctx.link().recv_fd()?;
        Ok(StreamTx::new(write_end))
    }
}
