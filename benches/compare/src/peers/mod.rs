//! The peers: one trait, implemented once per peer, so every workload runs on every peer in the
//! same run and the same way (flume's `benches/basic.rs` habit).
//!
//! A peer is one small file here. It says how to open the receiving end and the sending end of
//! one one-way channel, each in its own process, and how to send and receive one message.
//! The workloads ([`crate::workload`]) do everything else: pinning, warm-up, the start barrier,
//! writing and checking the payload, timing, and the end barrier. A round trip uses two one-way
//! channels of the same peer, opened in opposite directions.
//!
//! # Adding a peer
//!
//! 1. Write `src/peers/<name>.rs` with a unit struct implementing [`Peer`] (its `Tx` and `Rx`).
//!    Put in its doc comment what a row of this peer measures: which API, which buffer sizes,
//!    blocking or polling, how many copies the API forces. The README's table is built from it.
//! 2. Add `mod <name>;` and one `entry::<name::Type>()` line to [`all`] below.
//!
//! That is all: the runner then measures it in every one-way size it [`Peer::supports`] and in the
//! round trip, pinned and checked like every other peer. One name may be registered several times
//! with disjoint [`Peer::supports`] (a typed `Queue<[u8; N]>` per `N`): the rows share the name.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{Args, Link, Result};
use crate::payload::Message;
use crate::workload;

mod iceoryx2;
mod ipc_channel;
mod ipmpsc;
mod pipe;
mod ringpool_queue;
mod ringpool_ring;
pub mod shmsync;
mod stream;
mod unix_socket;

/// The registration point: every peer the runner knows, in the order of the tables.
pub fn all() -> Vec<Entry> {
    vec![
        // ---- ringpool's own peers go first; they set `Peer::OURS = true`, which gives every
        // ---- table a "ratio" column for each of them. Register them here, e.g.:
        entry::<ringpool_ring::RingpoolRing>(),
        entry::<ringpool_ring::RingpoolRingInPlace>(),
        entry::<ringpool_ring::RingpoolRingPark>(),
        entry::<ringpool_ring::RingpoolRingBatch>(),
        entry::<ringpool_ring::RingpoolRingSolo>(),
        entry::<ringpool_queue::RingpoolQueue<8>>(),
        entry::<ringpool_queue::RingpoolQueue<1024>>(),
        entry::<ringpool_queue::RingpoolQueue<65536>>(),
        entry::<ringpool_queue::RingpoolQueue<1048576>>(),
        entry::<pipe::Pipe>(),
        entry::<unix_socket::UnixSocket>(),
        entry::<ipmpsc::Ipmpsc>(),
        entry::<ipc_channel::IpcChannel>(),
        entry::<iceoryx2::Iceoryx2>(),
        entry::<shmsync::ShmSync>(),
    ]
}

/// The shape of one channel, the same for every peer in a measurement.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Bytes per message (every message of a run has this length).
    pub size: usize,
    /// How many messages the channel should be able to hold, for peers whose capacity is
    /// counted in messages (iceoryx2's subscriber buffer, a `Queue`'s slots).
    pub depth: usize,
    /// How many bytes the channel should be able to hold, for peers whose capacity is counted in
    /// bytes (ipmpsc's ring, a `Ring`'s data area): `depth` messages with 64 bytes of framing each.
    pub capacity_bytes: usize,
}

impl Spec {
    /// The channel shape used for `size`-byte messages: 1024 messages deep up to 1 KiB, then as
    /// many as fit in 16 MiB (at least 8).
    pub fn for_size(size: usize) -> Self {
        let depth = if size <= 1024 { 1024 } else { (16 << 20) / size }.max(8);
        Self { size, depth, capacity_bytes: depth * (size + 64) }
    }
}

/// What a peer gets while it opens an end: the link to the other process, the channel's shape,
/// and names that are unique to this measurement.
pub struct Ctx<'a> {
    link: &'a Link,
    spec: Spec,
    chan: u8,
    tag: &'a str,
    shm_prefix: &'a str,
    scratch: &'a Path,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(session: &'a Session, chan: u8) -> Self {
        Self {
            link: &session.link,
            spec: session.spec,
            chan,
            tag: &session.tag,
            shm_prefix: &session.shm_prefix,
            scratch: &session.scratch,
        }
    }

    /// The control link to the other process (for rendezvous only, never while timing).
    pub fn link(&self) -> &Link {
        self.link
    }

    /// The channel's shape.
    pub fn spec(&self) -> Spec {
        self.spec
    }

    /// A name unique to this measurement and channel, made of `[A-Za-z0-9_-]`, starting with
    /// [`Ctx::shm_prefix`]: use it for anything created in `/dev/shm`, so that the runner can
    /// recognise and remove what a crashed run left there.
    pub fn unique_name(&self, what: &str) -> String {
        format!("{}{}-{what}-c{}", self.shm_prefix, self.tag, self.chan)
    }

    /// The prefix of every name this run creates in `/dev/shm`.
    pub fn shm_prefix(&self) -> &str {
        self.shm_prefix
    }

    /// A scratch directory the runner removes at the end (for a peer's config or service files).
    pub fn scratch_dir(&self) -> PathBuf {
        self.scratch.to_path_buf()
    }
}

/// One peer: a way to move byte messages from one process to another.
///
/// Opening follows one protocol, so that the two ends of a round trip (two channels, opened in
/// opposite directions) can never wait on each other: in each process every receiving end is
/// opened first ([`Peer::open_rx`], which may send what the other side needs over the link but
/// must not wait for anything), then every sending end ([`Peer::open_tx`], which reads what its
/// `open_rx` sent, and may send an answer), then [`Rx::accept`] is called on each receiving end
/// (which reads that answer, if the peer sends one, and may wait for its sender to connect).
/// Link messages are read in the order they were sent. Then both processes meet at a barrier and
/// the clock starts.
pub trait Peer {
    /// The row's name in every table, and what `--only` matches.
    const NAME: &'static str;
    /// One line for the README and `--list`: which API, how it is used.
    const ABOUT: &'static str;
    /// Whether this is one of ringpool's own: its figures are the numerator of the ratio columns.
    const OURS: bool = false;
    /// Whether the peer takes part in the round trip (a batching peer, which holds messages back
    /// until a batch is full, does not: a round trip is one message at a time).
    const ROUND_TRIP: bool = true;
    /// The sending end.
    type Tx: Tx;
    /// The receiving end.
    type Rx: Rx;

    /// Whether the peer can carry `size`-byte messages (a typed queue may not).
    fn supports(size: usize) -> bool {
        let _ = size;
        true
    }

    /// Opens the receiving end of channel `ctx`, in the receiving process.
    fn open_rx(ctx: &mut Ctx<'_>) -> Result<Self::Rx>;

    /// Opens the sending end of channel `ctx`, in the sending process.
    fn open_tx(ctx: &mut Ctx<'_>) -> Result<Self::Tx>;
}

/// The sending end of one channel.
pub trait Tx {
    /// Sends one message, blocking while the channel is full. The peer writes the message's
    /// bytes wherever it wants them ([`Message::write`] into its own buffer, or
    /// [`Message::write_uninit`] into loaned shared memory), once per message.
    fn send(&mut self, msg: &Message) -> Result<()>;
}

/// The receiving end of one channel.
pub trait Rx {
    /// Waits until the sender has connected, where the peer needs that (see [`Peer`]); may read
    /// what the sending end's [`Peer::open_tx`] sent over the link.
    fn accept(&mut self, link: &Link) -> Result<()> {
        let _ = link;
        Ok(())
    }

    /// Receives the next message, blocking (or polling, if that is how the peer is meant to be
    /// used) until there is one, and hands its bytes to `read` (in place, where the peer can).
    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R>;

    /// Receives at least one message, up to `max`, handing each to `read` in order; answers how
    /// many. The one-way receiver calls this; peers with a batch API receive many per call (by
    /// default: one, through [`Rx::recv`]).
    fn recv_batch(&mut self, max: usize, mut read: impl FnMut(&[u8])) -> Result<usize> {
        let _ = max;
        self.recv(|m| read(m))?;
        Ok(1)
    }
}

/// Everything a child process knows about its measurement.
pub struct Session {
    /// The link to the other side.
    pub link: Link,
    /// The channel's shape.
    pub spec: Spec,
    /// Unique to this measurement.
    pub tag: String,
    /// The prefix of every `/dev/shm` name of this run.
    pub shm_prefix: String,
    /// The run's scratch directory.
    pub scratch: PathBuf,
    /// The workload's own arguments.
    pub args: Args,
}

/// What a child does in a peer measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends the one-way stream.
    OneWayTx,
    /// Receives and checks the one-way stream, and times it.
    OneWayRx,
    /// Sends each ping, times each round trip.
    RttClient,
    /// Answers each ping.
    RttServer,
}

impl Role {
    /// The role's name on the child's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::OneWayTx => "oneway-tx",
            Role::OneWayRx => "oneway-rx",
            Role::RttClient => "rtt-client",
            Role::RttServer => "rtt-server",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Role::OneWayTx, Role::OneWayRx, Role::RttClient, Role::RttServer].into_iter().find(|r| r.as_str() == s)
    }
}

/// A registered peer, its generic code instantiated.
#[derive(Clone, Copy)]
pub struct Entry {
    /// [`Peer::NAME`].
    pub name: &'static str,
    /// [`Peer::ABOUT`].
    pub about: &'static str,
    /// [`Peer::OURS`].
    pub ours: bool,
    /// [`Peer::supports`].
    pub supports: fn(usize) -> bool,
    /// [`Peer::ROUND_TRIP`].
    pub round_trip: bool,
    /// Runs one role of one measurement in this (child) process.
    pub run: fn(Role, &Session) -> Result<Value>,
}

/// Registers peer `P`.
pub fn entry<P: Peer>() -> Entry {
    Entry {
        name: P::NAME,
        about: P::ABOUT,
        ours: P::OURS,
        supports: P::supports,
        round_trip: P::ROUND_TRIP,
        run: workload::run::<P>,
    }
}
