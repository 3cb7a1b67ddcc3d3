//! **Typed data**: one-way throughput of a 64-byte struct holding a short string ([`Record`]),
//! each peer with its natural typed API; and the data the pool rows map over.
//!
//! | row | sending | receiving |
//! | --- | --- | --- |
//! | ringpool TypedRing | `TypedSender::send(value)`: rkyv-serialized straight into the ring | `TypedReceiver::recv_archived()`: validated (bytecheck), checked in place |
//! | ipc-channel | `IpcSender<Record>::send(value)`: serde (bincode) into the socket | `IpcReceiver::recv()`: a new `Record` per message |
//! | ipmpsc | `Sender::send(&value)`: serde (bincode) into the ring | `Receiver::recv::<Record>()`: a new `Record` per message |
//!
//! The sender builds a fresh `Record` per message (its name a new `String`), as a user's code
//! would; the receiver compares every field of every message with what that sequence number must
//! carry. A mismatch aborts the run. Two processes pinned to two CPUs, timed from the MARK message
//! to the LAST one on the receiver's clock, as the byte rows are.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use ringpool::ring::archive::{TypedReceiver, TypedRing, TypedSender, rkyv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::harness::{Args, Link, Result};
use crate::payload::abort_mismatch;
use crate::peers::Spec;

/// Child roles of this module.
pub const ROLES: &[&str] = &["typed-tx", "typed-rx"];

/// The peers of the typed one-way table: (id, label).
pub const PEERS: [(&str, &str); 3] = [
    ("ringpool-typed", "ringpool TypedRing (rkyv)"),
    ("ipc-channel", "ipc-channel channel::<Record> (serde)"),
    ("ipmpsc", "ipmpsc send(&Record) (serde)"),
];

const MARK: u32 = 1;
const LAST: u32 = 2;

/// The message: 64 bytes (`size_of::<Record>()`), a short string among plain fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Record {
    /// The sequence number.
    pub seq: u64,
    /// A key derived from it.
    pub key: u64,
    /// A value derived from it.
    pub value: f64,
    /// Another.
    pub extra: u64,
    /// A count derived from it.
    pub count: u32,
    /// MARK / LAST.
    pub flags: u32,
    /// `item-<seq>`: 6 to 25 bytes.
    pub name: String,
}

const _: () = assert!(std::mem::size_of::<Record>() == 64);

impl Record {
    /// Message `seq`, built fresh.
    pub fn new(seq: u64, flags: u32) -> Self {
        let mut name = String::with_capacity(24);
        write!(name, "item-{seq}").ok();
        Self {
            seq,
            key: seq.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            value: seq as f64 * 0.5,
            extra: !seq,
            count: (seq % 1000) as u32,
            flags,
            name,
        }
    }

    /// What is wrong with message `expect` received as these fields, if anything.
    #[allow(clippy::too_many_arguments)]
    fn check(expect: u64, seq: u64, key: u64, value: f64, extra: u64, count: u32, name: &str) -> Option<String> {
        let want = Record::new(expect, 0);
        let ok = seq == want.seq
            && key == want.key
            && value.to_bits() == want.value.to_bits()
            && extra == want.extra
            && count == want.count
            && name == want.name;
        (!ok).then(|| format!("message {expect}: got seq {seq}, key {key:#x}, value {value}, extra {extra:#x}, count {count}, name {name:?}"))
    }
}

enum Tx {
    Ring(TypedSender<Record>),
    Ipc(IpcSender<Record>),
    Ipmpsc(::ipmpsc::Sender),
}

enum Rx {
    Ring(TypedReceiver<Record>),
    Ipc(Option<IpcOneShotServer<IpcReceiver<Record>>>, Option<IpcReceiver<Record>>),
    Ipmpsc(::ipmpsc::Receiver, String),
}

impl Drop for Rx {
    fn drop(&mut self) {
        if let Rx::Ipmpsc(_, path) = self {
            std::fs::remove_file(path.as_str()).ok();
        }
    }
}

fn open_rx(peer: &str, link: &Link, spec: Spec, name: &str) -> Result<Rx> {
    Ok(match peer {
        "ringpool-typed" => {
            let ring = TypedRing::<Record>::builder().capacity(spec.capacity_bytes.max(4096)).anonymous()?;
            link.send_fd(b"ring", ring.fd())?;
            Rx::Ring(ring.receiver()?)
        }
        "ipc-channel" => {
            let (server, name) = IpcOneShotServer::<IpcReceiver<Record>>::new()?;
            link.send(name.as_bytes())?;
            Rx::Ipc(Some(server), None)
        }
        "ipmpsc" => {
            let path = format!("/dev/shm/{name}");
            let buf = ::ipmpsc::SharedRingBuffer::create(&path, u32::try_from(spec.capacity_bytes)?)?;
            link.send(path.as_bytes())?;
            Rx::Ipmpsc(::ipmpsc::Receiver::new(buf), path)
        }
        _ => return Err(format!("no typed peer {peer}").into()),
    })
}

fn open_tx(peer: &str, link: &Link) -> Result<Tx> {
    Ok(match peer {
        "ringpool-typed" => {
            let (_, fd) = link.recv_fd()?;
            Tx::Ring(TypedRing::<Record>::builder().from_fd(fd)?.sender()?)
        }
        "ipc-channel" => {
            let name = link.recv_string()?;
            let (tx, rx) = ipc::channel::<Record>()?;
            IpcSender::<IpcReceiver<Record>>::connect(name)?.send(rx)?;
            Tx::Ipc(tx)
        }
        "ipmpsc" => {
            let path = link.recv_string()?;
            Tx::Ipmpsc(::ipmpsc::Sender::new(::ipmpsc::SharedRingBuffer::open(&path)?))
        }
        _ => return Err(format!("no typed peer {peer}").into()),
    })
}

impl Tx {
    fn send(&mut self, r: Record) -> Result<()> {
        match self {
            Tx::Ring(tx) => tx.send(r).map_err(|e| format!("send: {e}"))?,
            Tx::Ipc(tx) => tx.send(r)?,
            Tx::Ipmpsc(tx) => tx.send(&r)?,
        }
        Ok(())
    }
}

impl Rx {
    fn accept(&mut self) -> Result<()> {
        if let Rx::Ipc(server, rx) = self {
            let (_, got) = server.take().ok_or("accepted twice")?.accept()?;
            *rx = Some(got);
        }
        Ok(())
    }

    /// Receives message `expect`, checks every field; answers its flags.
    fn recv_checked(&mut self, expect: u64, peer: &str) -> Result<u32> {
        let (wrong, flags) = match self {
            Rx::Ring(rx) => {
                let g = rx.recv_archived()?;
                let wrong = Record::check(
                    expect,
                    g.seq.to_native(),
                    g.key.to_native(),
                    g.value.to_native(),
                    g.extra.to_native(),
                    g.count.to_native(),
                    g.name.as_str(),
                );
                (wrong, g.flags.to_native())
            }
            Rx::Ipc(_, rx) => {
                let r = rx.as_ref().ok_or("recv before accept")?.recv()?;
                (Record::check(expect, r.seq, r.key, r.value, r.extra, r.count, &r.name), r.flags)
            }
            Rx::Ipmpsc(rx, _) => {
                let r: Record = rx.recv()?;
                (Record::check(expect, r.seq, r.key, r.value, r.extra, r.count, &r.name), r.flags)
            }
        };
        if let Some(w) = wrong {
            abort_mismatch(peer, &w);
        }
        Ok(flags)
    }
}

/// Runs one role in this child process.
pub fn run(role: &str, link: Option<&Link>, args: &Args) -> Result<Value> {
    let link = link.ok_or("a typed peer needs its link")?;
    let peer = args.get("peer")?;
    let spec = Spec::for_size(std::mem::size_of::<Record>());
    match role {
        "typed-tx" => {
            let warm = Duration::from_millis(args.num("warm_ms")?);
            let measure = Duration::from_millis(args.num("measure_ms")?);
            let mut tx = open_tx(peer, link)?;
            link.barrier("start")?;
            let warm_end = Instant::now() + warm;
            let mut measure_end = None;
            let (mut seq, mut flags) = (0u64, 0u32);
            loop {
                tx.send(Record::new(seq, flags))?;
                if flags & LAST != 0 {
                    break;
                }
                seq += 1;
                flags = 0;
                if seq.is_multiple_of(64) {
                    let now = Instant::now();
                    match measure_end {
                        None if now >= warm_end => {
                            flags = MARK;
                            measure_end = Some(now + measure);
                        }
                        Some(end) if now >= end => flags = LAST,
                        _ => {}
                    }
                }
            }
            link.barrier("done")?;
            drop(tx);
            Ok(json!({ "sent": seq + 1 }))
        }
        "typed-rx" => {
            let name = format!("{}{}-typed", args.get("prefix")?, args.get("tag")?);
            let mut rx = open_rx(peer, link, spec, &name)?;
            rx.accept()?;
            link.barrier("start")?;
            let (mut mark, mut seq) = (None, 0u64);
            let (t1, n1) = loop {
                let flags = rx.recv_checked(seq, peer)?;
                if flags & MARK != 0 {
                    mark = Some((Instant::now(), seq));
                }
                if flags & LAST != 0 {
                    break (Instant::now(), seq);
                }
                seq += 1;
            };
            link.barrier("done")?;
            drop(rx);
            let (t0, n0) = mark.ok_or("LAST before MARK")?;
            let (msgs, secs) = (n1 - n0, (t1 - t0).as_secs_f64());
            let size = std::mem::size_of::<Record>() as f64;
            Ok(json!({
                "msgs": msgs,
                "msgs_per_s": msgs as f64 / secs,
                "bytes_per_s": msgs as f64 * size / secs,
            }))
        }
        _ => Err(format!("unknown typed role {role}").into()),
    }
}
