//! Async sends and receives (feature `tokio`) under a multi-threaded tokio runtime: hundreds of
//! tasks over several rings and queues fed by (and feeding) other processes, every message
//! checked; cancellation (a dropped `recv_async` loses nothing); pool futures awaited; a deadline
//! on every wait.
#![cfg(feature = "tokio")]

mod common;
mod process_common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use process_common::{fork, lock};
use ringpool::ring::{RecvError, TryRecvError};
use ringpool::{Pool, Queue, Ring};
use tokio::time::timeout;

const LONG: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_time().build().expect("runtime")
}

#[test]
fn hundreds_of_tasks_over_rings_queues_and_processes() {
    let _g = lock();
    const PER: u64 = 3000;
    const TASKS_PER_CHANNEL: usize = 50;
    // Into the parent: two byte rings and two queues, each fed by its own child process.
    let rings: Vec<Ring> = (0..2).map(|_| Ring::builder().capacity(1 << 12).anonymous().unwrap()).collect();
    let queues: Vec<Queue<u64>> = (0..2).map(|_| Queue::<u64>::builder().slots(32).anonymous().unwrap()).collect();
    // Out of the parent: one queue read by a child that runs its own async receiver.
    let back = Queue::<u64>::builder().slots(16).anonymous().unwrap();
    let mut children = Vec::new();
    for (k, ring) in rings.iter().enumerate() {
        let tx = ring.sender().unwrap();
        children.push(fork(move || {
            for i in 0..PER {
                tx.send_timeout(format!("{k}:{i}"), LONG).expect("ring send");
                if i % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    for (k, queue) in queues.iter().enumerate() {
        let tx = queue.sender().unwrap();
        children.push(fork(move || {
            for i in 0..PER {
                tx.send_timeout(((k as u64 + 2) << 32) | i, LONG).expect("queue send");
                if i % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    let back_rx = back.receiver().unwrap();
    let mut back_child = fork(move || {
        // A child's own runtime and waker thread (the parent's, if any, is not inherited).
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("child runtime");
        let seen = rt.block_on(async {
            let mut seen = HashSet::new();
            loop {
                match timeout(LONG, back_rx.recv_async()).await.expect("child: recv_async timed out") {
                    Ok(v) => assert!(seen.insert(v), "child: {v} twice"),
                    Err(RecvError::Disconnected) => break seen,
                    Err(e) => panic!("child: {e}"),
                }
            }
        });
        let want: HashSet<u64> = (0..100 * 40u64).collect();
        assert_eq!(seen, want, "child: every value sent by the parent's tasks, once");
    });
    let back_tx = back.sender().unwrap();
    drop(back);

    let rt = runtime();
    let ring_rx: Vec<_> = rings.iter().map(|r| Arc::new(r.receiver().unwrap())).collect();
    let queue_rx: Vec<_> = queues.iter().map(|q| Arc::new(q.receiver().unwrap())).collect();
    drop((rings, queues));
    let got: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (k, rx) in ring_rx.iter().enumerate() {
            for _ in 0..TASKS_PER_CHANNEL {
                let (rx, got) = (rx.clone(), got.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        match timeout(LONG, rx.recv_async()).await.expect("recv_async timed out") {
                            Ok(m) => {
                                let s = String::from_utf8(m).unwrap();
                                let (ch, i) = s.split_once(':').unwrap();
                                assert_eq!(ch.parse::<usize>().unwrap(), k);
                                got.lock().unwrap()[k].push(i.parse().unwrap());
                            }
                            Err(RecvError::Disconnected) => return,
                            Err(e) => panic!("ring {k}: {e}"),
                        }
                    }
                }));
            }
        }
        for (k, rx) in queue_rx.iter().enumerate() {
            for _ in 0..TASKS_PER_CHANNEL {
                let (rx, got) = (rx.clone(), got.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        match timeout(LONG, rx.recv_async()).await.expect("recv_async timed out") {
                            Ok(v) => {
                                assert_eq!(v >> 32, k as u64 + 2);
                                got.lock().unwrap()[k + 2].push(v & 0xffff_ffff);
                            }
                            Err(RecvError::Disconnected) => return,
                            Err(e) => panic!("queue {k}: {e}"),
                        }
                    }
                }));
            }
        }
        // 100 tasks sending 40 values each into a 16-slot queue: most sends wait for room.
        let back_tx = Arc::new(back_tx);
        for t in 0..100u64 {
            let tx = back_tx.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..40 {
                    timeout(LONG, tx.send_async(t * 40 + j)).await.expect("send_async timed out").expect("send");
                }
            }));
        }
        drop(back_tx);
        assert!(tasks.len() >= 300);
        for t in tasks {
            timeout(LONG, t).await.expect("task timed out").expect("task panicked");
        }
    });
    for (k, mut v) in Arc::try_unwrap(got).unwrap().into_inner().unwrap().into_iter().enumerate() {
        v.sort_unstable();
        assert_eq!(v, (0..PER).collect::<Vec<_>>(), "channel {k}: every message exactly once");
    }
    drop(rt);
    for mut c in children {
        assert!(c.join_timeout(LONG).unwrap().success());
    }
    assert!(back_child.join_timeout(LONG).unwrap().success(), "the async child saw every value");
}

#[test]
fn a_dropped_recv_async_loses_no_message() {
    let _g = lock();
    const N: u64 = 5000;
    let queue = Queue::<u64>::builder().slots(8).anonymous().unwrap();
    let tx = queue.sender().unwrap();
    let mut child = fork(move || {
        for i in 0..N {
            tx.send_timeout(i, LONG).expect("send");
            if i % 7 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
    });
    let rx = Arc::new(queue.receiver().unwrap());
    drop(queue);
    let rt = runtime();
    let (got, cancelled) = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                let (mut got, mut cancelled) = (Vec::new(), 0u64);
                loop {
                    // Very short timeouts: most receives are dropped while pending.
                    let wait = Duration::from_micros(50 + 37 * t);
                    match timeout(wait, rx.recv_async()).await {
                        Err(_elapsed) => cancelled += 1,
                        Ok(Ok(v)) => got.push(v),
                        Ok(Err(RecvError::Disconnected)) => return (got, cancelled),
                        Ok(Err(e)) => panic!("{e}"),
                    }
                }
            }));
        }
        let (mut all, mut cancelled) = (Vec::new(), 0);
        for t in tasks {
            let (g, c) = timeout(LONG, t).await.expect("task timed out").expect("task panicked");
            all.extend(g);
            cancelled += c;
        }
        (all, cancelled)
    });
    let mut got = got;
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every value once, after {cancelled} dropped receives");
    assert!(cancelled > 0, "the test dropped no pending receive");
    assert!(child.join_timeout(LONG).unwrap().success());
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
}

#[test]
fn a_task_waiting_on_a_ring_whose_sender_died_is_woken() {
    let _g = lock();
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let tx = ring.sender().unwrap();
    let mut child = fork(move || {
        let _tx = tx;
        std::thread::sleep(Duration::from_secs(600));
    });
    let rx = ring.receiver().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let waiting = async { timeout(LONG, rx.recv_async()).await };
        let killer = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            child.kill().unwrap();
        };
        let (r, ()) = tokio::join!(waiting, killer);
        assert_eq!(r.expect("not woken by the death"), Err(RecvError::Disconnected));
    });
    child.join_timeout(LONG).unwrap();
}

#[test]
fn ring_send_async_waits_for_room_that_another_process_frees() {
    let _g = lock();
    const TASKS: u64 = 40;
    const EACH: u64 = 50;
    let ring = Ring::builder().capacity(1024).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let mut child = fork(move || {
        let mut seen = HashSet::new();
        loop {
            match rx.recv_timeout(LONG) {
                Ok(m) => {
                    assert_eq!(m.len(), 100, "child: a message of the wrong length");
                    let text = String::from_utf8(m[..20].to_vec()).unwrap();
                    let (t, j) = text.trim_end().split_once(':').unwrap();
                    let (t, j): (u64, u64) = (t.parse().unwrap(), j.parse().unwrap());
                    assert!(m[20..].iter().all(|&b| b == (t + j) as u8), "child: a corrupted message");
                    assert!(seen.insert((t, j)), "child: ({t}, {j}) twice");
                    // Slow enough that the senders find the ring full.
                    if seen.len() % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Err(ringpool::ring::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("child: {e}"),
            }
        }
        assert_eq!(seen.len() as u64, TASKS * EACH, "child: every message once");
    });
    let tx = Arc::new(ring.sender().unwrap());
    drop(ring);
    let rt = runtime();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for j in 0..EACH {
                        let mut m = format!("{t}:{j}").into_bytes();
                        m.resize(20, b' ');
                        m.resize(100, (t + j) as u8);
                        timeout(LONG, tx.send_async(m)).await.expect("send_async timed out").expect("send");
                    }
                })
            })
            .collect();
        for t in tasks {
            timeout(LONG, t).await.expect("task timed out").expect("task panicked");
        }
    });
    drop(tx);
    assert!(child.join_timeout(LONG).unwrap().success(), "the child saw every message");
}

#[test]
fn batch_and_in_place_forms_wait_then_take() {
    let ring = Ring::builder().capacity(1 << 14).anonymous().unwrap();
    let queue = Queue::<u64>::builder().slots(64).anonymous().unwrap();
    let (rtx, rrx) = (ring.sender().unwrap(), ring.receiver().unwrap());
    let (qtx, qrx) = (queue.sender().unwrap(), queue.receiver().unwrap());
    let rt = runtime();
    rt.block_on(async {
        let feeder = tokio::task::spawn_blocking(move || {
            for round in 0..20u64 {
                std::thread::sleep(Duration::from_millis(2));
                qtx.send_many(&[round * 3, round * 3 + 1, round * 3 + 2]).unwrap();
                rtx.send(round.to_le_bytes()).unwrap();
                rtx.send(round.to_le_bytes()).unwrap();
            }
        });
        let mut values = Vec::new();
        let mut buf = [0u64; 16];
        while values.len() < 60 {
            let n = timeout(LONG, qrx.recv_many_async(&mut buf)).await.expect("recv_many_async timed out").unwrap();
            assert!(n >= 1);
            values.extend_from_slice(&buf[..n]);
        }
        assert_eq!(values, (0..60).collect::<Vec<_>>());
        let mut msgs = Vec::new();
        while msgs.len() < 36 {
            let n = timeout(LONG, rrx.recv_many_async(4, |m| msgs.push(u64::from_le_bytes(m.try_into().unwrap()))))
                .await
                .expect("recv_many_async timed out")
                .unwrap();
            assert!((1..=4).contains(&n));
        }
        while msgs.len() < 40 {
            let v = timeout(LONG, rrx.recv_with_async(|m| u64::from_le_bytes(m.try_into().unwrap())))
                .await
                .expect("recv_with_async timed out")
                .unwrap();
            msgs.push(v);
        }
        let want: Vec<u64> = (0..20).flat_map(|r| [r, r]).collect();
        assert_eq!(msgs, want);
        timeout(LONG, feeder).await.unwrap().unwrap();
        // Every sender gone: the batch forms answer Disconnected.
        assert_eq!(timeout(LONG, qrx.recv_many_async(&mut buf)).await.unwrap(), Err(RecvError::Disconnected));
        assert_eq!(timeout(LONG, rrx.recv_with_async(|m| m.len())).await.unwrap(), Err(RecvError::Disconnected));
    });
}

fn square(x: &u64) -> u64 {
    x * x
}

#[test]
fn pool_futures_are_std_futures() {
    let _g = lock();
    let pool = Pool::new(2).unwrap();
    let rt = runtime();
    let futures: Vec<_> = (0..300u64).map(|i| pool.submit(square, i).unwrap()).collect();
    rt.block_on(async {
        let tasks: Vec<_> = futures
            .into_iter()
            .enumerate()
            .map(|(i, f)| tokio::spawn(async move { (i as u64, timeout(LONG, f).await) }))
            .collect();
        for t in tasks {
            let (i, r) = timeout(LONG, t).await.unwrap().unwrap();
            assert_eq!(r.expect("pool future timed out").unwrap(), i * i);
        }
    });
    // Awaited in one task, one after the other, too.
    rt.block_on(async {
        for i in 0..50u64 {
            let r = timeout(LONG, pool.submit(square, i).unwrap()).await.expect("timed out");
            assert_eq!(r.unwrap(), i * i);
        }
    });
}

#[test]
fn ring_send_many_async_waits_for_room_across_processes_and_keeps_each_batch_in_order() {
    let _g = lock();
    const TASKS: u64 = 8;
    const BATCHES: u64 = 10;
    const PER_BATCH: u64 = 50;
    // 50 messages of 100 bytes (112 with their headers) do not fit the ring (4 KiB, a page): every
    // batch waits for room that the child frees.
    let ring = Ring::builder().capacity(1024).anonymous().unwrap();
    assert!((ring.capacity() as u64) < PER_BATCH * 112, "{}", ring.capacity());
    let rx = ring.receiver().unwrap();
    let mut child = fork(move || {
        let mut next = vec![0u64; TASKS as usize];
        loop {
            match rx.recv_timeout(LONG) {
                Ok(m) => {
                    assert_eq!(m.len(), 100, "child: a message of the wrong length");
                    let (t, j) = (m[0] as usize, u64::from_le_bytes(m[1..9].try_into().unwrap()));
                    assert!(m[9..].iter().all(|&b| b == (t as u64 + j) as u8), "child: a corrupted message");
                    assert_eq!(j, next[t], "child: task {t}'s messages out of order");
                    next[t] += 1;
                }
                Err(ringpool::ring::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("child: {e}"),
            }
        }
        assert!(next.iter().all(|&n| n == BATCHES * PER_BATCH), "child: every message once: {next:?}");
    });
    let tx = Arc::new(ring.sender().unwrap());
    let rt = runtime();
    rt.block_on(async {
        // A message too large for the ring stops the batch before it: the error says how many went.
        let max = ring.max_message_len();
        let bad = [vec![0u8; max + 1], vec![0u8; 100]];
        let e = timeout(LONG, tx.send_many_async(&bad)).await.unwrap().unwrap_err();
        assert!(matches!(e, ringpool::ring::SendError::TooLarge { msg: 0, .. }), "{e:?}");
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for b in 0..BATCHES {
                        let batch: Vec<Vec<u8>> = (b * PER_BATCH..(b + 1) * PER_BATCH)
                            .map(|j| {
                                let mut m = vec![t as u8];
                                m.extend_from_slice(&j.to_le_bytes());
                                m.resize(100, (t + j) as u8);
                                m
                            })
                            .collect();
                        timeout(LONG, tx.send_many_async(&batch))
                            .await
                            .expect("send_many_async timed out")
                            .expect("send_many_async");
                    }
                })
            })
            .collect();
        for t in tasks {
            timeout(LONG, t).await.expect("task timed out").expect("task panicked");
        }
    });
    drop((tx, ring));
    assert!(child.join_timeout(LONG).unwrap().success(), "the child saw every message, in order");
}

#[test]
fn a_dropped_send_many_async_has_sent_a_prefix_and_nothing_more() {
    let _g = lock();
    const TASKS: u64 = 4;
    const PER_BATCH: u64 = 50;
    let queue = Queue::<u64>::builder().slots(8).anonymous().unwrap();
    let go = Ring::builder().capacity(1024).anonymous().unwrap();
    let (rx, go_rx) = (queue.receiver().unwrap(), go.receiver().unwrap());
    let mut child = fork(move || {
        // Nothing is received until the parent says so: the first batch fills the 8 slots and
        // then waits for ever, until the parent drops it.
        go_rx.recv_timeout(LONG).expect("child: no go");
        let mut got: Vec<u64> = Vec::new();
        loop {
            match rx.recv_timeout(LONG) {
                Ok(v) => got.push(v),
                Err(ringpool::ring::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("child: {e}"),
            }
        }
        // Values are (task << 32) | index; task 99 is the dropped batch.
        let dropped: Vec<u64> = got.iter().filter(|&&v| v >> 32 == 99).map(|&v| v & 0xffff_ffff).collect();
        assert_eq!(dropped, (0..8).collect::<Vec<_>>(), "child: the dropped batch's prefix, and nothing after");
        for t in 0..TASKS {
            let mine: Vec<u64> = got.iter().filter(|&&v| v >> 32 == t).map(|&v| v & 0xffff_ffff).collect();
            assert_eq!(mine, (0..PER_BATCH).collect::<Vec<_>>(), "child: task {t}'s batch, whole and in order");
        }
    });
    let tx = Arc::new(queue.sender().unwrap());
    let go_tx = go.sender().unwrap();
    drop((queue, go));
    let rt = runtime();
    rt.block_on(async {
        let first: Vec<u64> = (0..20).map(|i| (99 << 32) | i).collect();
        // The future is Unpin: awaited through `&mut`, it can be asked how far it got.
        let mut fut = tx.send_many_async(&first);
        // Nobody receives: the future sends what fits (8 slots) and waits; the timeout drops it.
        assert!(timeout(Duration::from_millis(50), &mut fut).await.is_err(), "20 values fitted 8 slots");
        assert_eq!(fut.sent(), 8);
        drop(fut);
        go_tx.send(b"go").unwrap();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let values: Vec<u64> = (0..PER_BATCH).map(|i| (t << 32) | i).collect();
                    timeout(LONG, tx.send_many_async(&values)).await.expect("timed out").expect("send_many_async");
                })
            })
            .collect();
        for t in tasks {
            timeout(LONG, t).await.expect("task timed out").expect("task panicked");
        }
    });
    drop(tx);
    assert!(child.join_timeout(LONG).unwrap().success(), "the child saw exactly the sent prefix and the batches");
}

#[test]
fn nothing_left_in_dev_shm() {
    assert!(common::leftovers().is_empty());
}
