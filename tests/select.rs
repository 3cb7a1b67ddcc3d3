//! `ring::Select`: waiting on several rings and queues at once, with children in other processes
//! sending into them; readiness by disconnection; the try and timeout forms; idle without spinning.

mod common;
mod process_common;

use std::time::{Duration, Instant};

use process_common::{fork, lock};
use ringpool::ring::{ReadyTimeoutError, Select, TryReadyError};
use ringpool::{Queue, Ring};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn select_receives_every_message_from_children_over_rings_and_queues() {
    let _g = lock();
    const PER: u64 = 2000;
    let rings: Vec<Ring> = (0..2).map(|_| Ring::builder().capacity(4096).anonymous().unwrap()).collect();
    let queues: Vec<Queue<u64>> = (0..2).map(|_| Queue::<u64>::builder().slots(64).anonymous().unwrap()).collect();
    let mut children = Vec::new();
    for (k, ring) in rings.iter().enumerate() {
        let tx = ring.sender().unwrap();
        children.push(fork(move || {
            for i in 0..PER {
                if i % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let msg = format!("{k}:{i}");
                tx.send_timeout(msg.as_bytes(), LONG).expect("ring send");
            }
        }));
    }
    for (k, queue) in queues.iter().enumerate() {
        let tx = queue.sender().unwrap();
        children.push(fork(move || {
            for i in 0..PER {
                if i % 700 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                tx.send_timeout(((k as u64) << 32) | i, LONG).expect("queue send");
            }
        }));
    }
    let ring_rx: Vec<_> = rings.iter().map(|r| r.receiver().unwrap()).collect();
    let queue_rx: Vec<_> = queues.iter().map(|q| q.receiver().unwrap()).collect();
    let mut sel = Select::new();
    let ring_idx: Vec<usize> = ring_rx.iter().map(|r| sel.recv(r)).collect();
    let queue_idx: Vec<usize> = queue_rx.iter().map(|q| sel.recv(q)).collect();
    let mut next = [0u64; 4];
    let mut done = [false; 4];
    let deadline = Instant::now() + LONG;
    while done.iter().any(|d| !d) {
        assert!(Instant::now() < deadline, "select did not see every message: {next:?}");
        let Ok(i) = sel.ready_timeout(Duration::from_secs(5)) else { panic!("no ring ready for 5 s: {next:?}") };
        if let Some(k) = ring_idx.iter().position(|&x| x == i) {
            match ring_rx[k].try_recv() {
                Ok(m) => {
                    assert_eq!(String::from_utf8(m).unwrap(), format!("{k}:{}", next[i]));
                    next[i] += 1;
                }
                Err(ringpool::ring::TryRecvError::Disconnected) => {
                    assert_eq!(next[i], PER);
                    done[i] = true;
                    sel = rebuild(&ring_rx, &queue_rx, &done);
                }
                Err(e) => panic!("ring {k}: {e}"),
            }
        } else {
            let k = queue_idx.iter().position(|&x| x == i).unwrap();
            match queue_rx[k].try_recv() {
                Ok(v) => {
                    assert_eq!(v, ((k as u64) << 32) | next[i]);
                    next[i] += 1;
                }
                Err(ringpool::ring::TryRecvError::Disconnected) => {
                    assert_eq!(next[i], PER);
                    done[i] = true;
                    sel = rebuild(&ring_rx, &queue_rx, &done);
                }
                Err(e) => panic!("queue {k}: {e}"),
            }
        }
    }
    for mut c in children {
        assert!(c.join_timeout(LONG).unwrap().success());
    }
}

/// A select over the handles not done yet, keeping every index (done ones get a stand-in that is
/// never ready: a receiver of a fresh ring whose sender lives).
fn rebuild<'a>(
    rings: &'a [ringpool::ring::Receiver],
    queues: &'a [ringpool::queue::Receiver<u64>],
    done: &[bool; 4],
) -> Select<'a> {
    static IDLE: std::sync::OnceLock<(ringpool::ring::Receiver, ringpool::ring::Sender)> = std::sync::OnceLock::new();
    let idle = IDLE.get_or_init(|| {
        let r = Ring::builder().capacity(4096).anonymous().unwrap();
        (r.receiver().unwrap(), r.sender().unwrap())
    });
    let mut sel = Select::new();
    for (k, r) in rings.iter().enumerate() {
        sel.recv(if done[k] { &idle.0 } else { r });
    }
    for (k, q) in queues.iter().enumerate() {
        if done[2 + k] {
            sel.recv(&idle.0);
        } else {
            sel.recv(q);
        }
    }
    sel
}

#[test]
fn try_and_timeout_forms_and_senders() {
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let queue = Queue::<u32>::builder().slots(2).anonymous().unwrap();
    let (rtx, rrx) = (ring.sender().unwrap(), ring.receiver().unwrap());
    let (qtx, qrx) = (queue.sender().unwrap(), queue.receiver().unwrap());
    let mut sel = Select::new();
    let r = sel.recv(&rrx);
    let q = sel.recv(&qrx);
    assert_eq!(sel.try_ready(), Err(TryReadyError));
    let t0 = Instant::now();
    assert_eq!(sel.ready_timeout(Duration::from_millis(80)), Err(ReadyTimeoutError));
    assert!(t0.elapsed() >= Duration::from_millis(80), "a timeout is never early");
    rtx.send(b"x").unwrap();
    assert_eq!(sel.try_ready(), Ok(r));
    assert_eq!(rrx.try_recv().unwrap(), b"x");
    qtx.send(1).unwrap();
    assert_eq!(sel.ready_timeout(LONG), Ok(q));
    // Senders: ready while there is room, not when full.
    let mut ssel = Select::new();
    let s = ssel.send(&qtx);
    assert_eq!(ssel.try_ready(), Ok(s));
    qtx.send(2).unwrap();
    assert_eq!(ssel.try_ready(), Err(TryReadyError));
    assert_eq!(ssel.ready_timeout(Duration::from_millis(30)), Err(ReadyTimeoutError));
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            qrx.recv_timeout(LONG).unwrap();
        });
        assert_eq!(ssel.ready_timeout(LONG), Ok(s), "a receive makes room and wakes the select");
    });
}

#[test]
fn a_receiver_whose_senders_died_is_ready() {
    let _g = lock();
    let ring = Ring::builder().capacity(4096).anonymous().unwrap();
    let queue = Queue::<u64>::builder().slots(8).anonymous().unwrap();
    let rx = ring.receiver().unwrap();
    let qrx = queue.receiver().unwrap();
    let _qtx = queue.sender().unwrap(); // a live sender: the queue never becomes ready
    let tx = ring.sender().unwrap();
    let mut child = fork(move || {
        let _tx = tx;
        std::thread::sleep(Duration::from_secs(600));
    });
    let mut sel = Select::new();
    sel.recv(&qrx);
    let r = sel.recv(&rx);
    assert_eq!(sel.try_ready(), Err(TryReadyError));
    child.kill().unwrap();
    child.join_timeout(LONG).unwrap();
    assert_eq!(sel.ready_timeout(LONG), Ok(r), "the dead sender's ring is ready");
    assert_eq!(rx.try_recv(), Err(ringpool::ring::TryRecvError::Disconnected));
}

#[test]
fn an_idle_select_sleeps_instead_of_spinning() {
    let rings: Vec<Ring> = (0..8).map(|_| Ring::builder().capacity(4096).anonymous().unwrap()).collect();
    let rxs: Vec<_> = rings.iter().map(|r| r.receiver().unwrap()).collect();
    let _txs: Vec<_> = rings.iter().map(|r| r.sender().unwrap()).collect();
    let mut sel = Select::new();
    for rx in &rxs {
        sel.recv(rx);
    }
    let cpu = || {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: RUSAGE_THREAD fills the struct it is given.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
        // SAFETY: zeroed and filled in: every field is an integer.
        let ru = unsafe { ru.assume_init() };
        Duration::new(ru.ru_utime.tv_sec as u64, ru.ru_utime.tv_usec as u32 * 1000)
            + Duration::new(ru.ru_stime.tv_sec as u64, ru.ru_stime.tv_usec as u32 * 1000)
    };
    let before = cpu();
    let wall = Instant::now();
    assert_eq!(sel.ready_timeout(Duration::from_millis(600)), Err(ReadyTimeoutError));
    let (used, wall) = (cpu() - before, wall.elapsed());
    // A spinning select would burn the whole wait; a sleeping one a few liveness looks.
    eprintln!("idle select: {used:?} CPU in {wall:?}");
    assert!(used * 10 < wall, "an idle select used {used:?} of CPU in {wall:?}");
}

#[test]
fn nothing_left_in_dev_shm() {
    assert!(common::leftovers().is_empty());
}
