//! **iceoryx2 0.10**: publish-subscribe over `ipc::Service` with dynamically sized `[u8]`
//! payloads, zero-copy on both sides.
//!
//! The publisher loans a sample (`loan_slice_uninit`), the message is written in place into the
//! shared memory, and `send` publishes it; the subscriber busy-polls `receive()` (with a
//! `spin_loop` hint between empty polls), as iceoryx2's own benchmarks do, and reads the sample
//! in place. Nothing is lost: safe overflow is off and the publisher's backpressure strategy is
//! `RetryUntilDelivered` (it spins while the subscriber's buffer is full). The subscriber buffer
//! holds `depth` samples, history is 0, one publisher and one subscriber per service. The payload
//! is copied once (written into the loan) and read in place.
//!
//! Start-up: the subscriber must have attached to the publisher's connection before the first
//! sample is sent. A publisher whose subscriber has not yet attached (it does so inside
//! `receive()` or `has_samples()`) does not wait when the buffer is full, even with
//! `RetryUntilDelivered`: it drops the sample and `send` still returns `Ok` (iceoryx2-cal's
//! `blocking_send`, "to prevent a deadlock on sender side"). The first version of this runner lost
//! 12,064 messages that way, caught by the sequence check. So the publisher announces itself over
//! the link and [`Rx::accept`] attaches the subscriber (`has_samples()`) before the start barrier.
//!
//! Every file iceoryx2 creates carries this run's prefix (`Config::global.prefix`) and its
//! directories live under the run's scratch directory (`Config::global.root_path`), so the
//! runner can check and clean up `/dev/shm` and leaves nothing in `/tmp/iceoryx2`.

use std::hint::spin_loop;

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

use crate::harness::{Link, Result};
use crate::payload::Message;
use crate::peers::{Ctx, Peer, Rx, Tx};

/// iceoryx2 publish-subscribe.
pub struct Iceoryx2;

type Svc = ipc::Service;

/// The publishing end. (Fields drop in order: the port, then the service, then the node.)
pub struct Iceoryx2Tx {
    publisher: Publisher<Svc, [u8], ()>,
    _service: PortFactory<Svc, [u8], ()>,
    _node: Node<Svc>,
}

/// The subscribing end.
pub struct Iceoryx2Rx {
    subscriber: Subscriber<Svc, [u8], ()>,
    _service: PortFactory<Svc, [u8], ()>,
    _node: Node<Svc>,
}

fn node(ctx: &Ctx<'_>) -> Result<Node<Svc>> {
    set_log_level(LogLevel::Error);
    let mut config = Config::default();
    config.global.prefix = FileName::new(ctx.shm_prefix().as_bytes())?;
    let root = format!("{}/iceoryx2/", ctx.scratch_dir().display());
    config.global.set_root_path(&Path::new(root.as_bytes())?);
    Ok(NodeBuilder::new().config(&config).signal_handling_mode(SignalHandlingMode::Disabled).create::<Svc>()?)
}

impl Peer for Iceoryx2 {
    const NAME: &'static str = "iceoryx2";
    const ABOUT: &'static str = "iceoryx2 0.10 ipc::Service publish-subscribe of [u8]: loan_slice_uninit, written \
         in place, send; subscriber busy-polls receive(), reads in place; no overflow, \
         RetryUntilDelivered, buffer = depth";
    type Tx = Iceoryx2Tx;
    type Rx = Iceoryx2Rx;

    fn open_rx(ctx: &mut Ctx<'_>) -> Result<Iceoryx2Rx> {
        let node = node(ctx)?;
        let depth = ctx.spec().depth;
        let name = ctx.unique_name("iox2");
        let service = node
            .service_builder(&ServiceName::new(&name)?)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(depth)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .create()?;
        let subscriber = service.subscriber_builder().buffer_size(depth).create()?;
        ctx.link().send(name.as_bytes())?;
        Ok(Iceoryx2Rx { subscriber, _service: service, _node: node })
    }

    fn open_tx(ctx: &mut Ctx<'_>) -> Result<Iceoryx2Tx> {
        let name = ctx.link().recv_string()?;
        let node = node(ctx)?;
        let service = node.service_builder(&ServiceName::new(&name)?).publish_subscribe::<[u8]>().open()?;
        let publisher = service
            .publisher_builder()
            .initial_max_slice_len(ctx.spec().size)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        ctx.link().send(b"publisher created")?;
        Ok(Iceoryx2Tx { publisher, _service: service, _node: node })
    }
}

impl Tx for Iceoryx2Tx {
    fn send(&mut self, msg: &Message) -> Result<()> {
        let mut sample = self.publisher.loan_slice_uninit(msg.len())?;
        msg.write_uninit(sample.payload_mut());
        // SAFETY: `write_uninit` wrote every byte of the payload (it asserts that the slice is
        // exactly the message's length and fills all of it).
        let sample = unsafe { sample.assume_init() };
        sample.send()?;
        Ok(())
    }
}

impl Rx for Iceoryx2Rx {
    fn accept(&mut self, link: &Link) -> Result<()> {
        // Wait for the publisher, then attach to its connection (see the module's docs).
        let said = link.recv()?;
        if said != b"publisher created" {
            return Err(format!("iceoryx2: unexpected link message {said:?}").into());
        }
        self.subscriber.has_samples()?;
        Ok(())
    }

    fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        loop {
            if let Some(sample) = self.subscriber.receive()? {
                return Ok(read(sample.payload()));
            }
            spin_loop();
        }
    }
}
