//! Cross-process wake-up latency of the async operations (feature `tokio`), against the blocking
//! path: one `u64` there and back over two `Queue<u64>`s between this process and an echoing peer
//! process that uses the blocking `recv`/`send`.
//!
//! - `roundtrip/blocking_park`: this side blocking with `SpinPolicy::park()` (no spin: every wait
//!   parks on the futex), the peer parking too. The latency class async must stay in.
//! - `roundtrip/blocking_default`: both sides blocking with the default policy (spin, then park).
//! - `roundtrip/async_current_thread`: this side `send_async` + `recv_async` in a tokio
//!   current-thread runtime; the peer parks. A wake goes: peer's notify -> futex wake of the waker
//!   thread -> `Waker::wake` -> the runtime polls the task.
//! - `roundtrip/async_multi_thread`: the same in a 2-worker multi-threaded runtime.
//!
//! Run: `cargo bench --features tokio --bench async` (a few seconds:
//! `-- --warm-up-time 1 --measurement-time 3`). Smoke test: `cargo test --release --features tokio
//! --bench async`.

use std::time::{Duration, Instant};

use criterion::Criterion;
use ringpool::sync::SpinPolicy;
use ringpool::{Process, Queue, queue};

const ECHO: u64 = 0xec40_ec40_ec40_ec40;

/// This side's ends of one ping-pong pair, and its echoing peer.
struct Rig {
    ping: queue::Sender<u64>,
    pong: queue::Receiver<u64>,
    peer: Process,
}

fn rig(peer_spin: SpinPolicy, my_spin: SpinPolicy) -> Rig {
    let ping_q = Queue::<u64>::builder().slots(64).anonymous().expect("queue");
    let pong_q = Queue::<u64>::builder().slots(64).anonymous().expect("queue");
    let (peer_rx, peer_tx) = (ping_q.receiver().expect("rx"), pong_q.sender().expect("tx"));
    peer_rx.set_spin(peer_spin);
    peer_tx.set_spin(peer_spin);
    let peer = Process::start(move || {
        // Echo until this side leaves (or a minute passes without a ping).
        while let Ok(v) = peer_rx.recv_timeout(Duration::from_secs(60)) {
            if peer_tx.send_timeout(v ^ ECHO, Duration::from_secs(60)).is_err() {
                return;
            }
        }
    })
    .expect("fork the echo peer (the bench must start single-threaded)");
    let (ping, pong) = (ping_q.sender().expect("tx"), pong_q.receiver().expect("rx"));
    ping.set_spin(my_spin);
    pong.set_spin(my_spin);
    Rig { ping, pong, peer }
}

fn blocking(r: &Rig, iters: u64) -> Duration {
    let t = Instant::now();
    for i in 0..iters {
        r.ping.send(i).expect("send");
        let v = r.pong.recv_timeout(Duration::from_secs(10)).expect("echo");
        assert_eq!(v, i ^ ECHO);
    }
    t.elapsed()
}

async fn asynchronous(r: &Rig, iters: u64) -> Duration {
    let t = Instant::now();
    for i in 0..iters {
        r.ping.send_async(i).await.expect("send");
        let v = tokio::time::timeout(Duration::from_secs(10), r.pong.recv_async()).await.expect("echo timed out");
        assert_eq!(v.expect("echo"), i ^ ECHO);
    }
    t.elapsed()
}

fn main() {
    // Every peer is forked first, while this process has one thread.
    let park = rig(SpinPolicy::park(), SpinPolicy::park());
    let default = rig(SpinPolicy::default(), SpinPolicy::default());
    let async_ct = rig(SpinPolicy::park(), SpinPolicy::default());
    let async_mt = rig(SpinPolicy::park(), SpinPolicy::default());
    let current = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().expect("runtime");

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20)
        .configure_from_args();
    let mut g = c.benchmark_group("roundtrip");
    g.bench_function("blocking_park", |b| b.iter_custom(|n| blocking(&park, n)));
    g.bench_function("blocking_default", |b| b.iter_custom(|n| blocking(&default, n)));
    g.bench_function("async_current_thread", |b| b.iter_custom(|n| current.block_on(asynchronous(&async_ct, n))));
    g.bench_function("async_multi_thread", |b| b.iter_custom(|n| multi.block_on(asynchronous(&async_mt, n))));
    g.finish();
    c.final_summary();
    drop((current, multi));
    for r in [park, default, async_ct, async_mt] {
        let Rig { ping, pong, mut peer } = r;
        drop((ping, pong));
        let _ = peer.join_timeout(Duration::from_secs(10));
    }
}
