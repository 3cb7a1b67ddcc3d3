//! The physical limits every figure is read against, measured in the same run, with the same
//! pinning and the same timing as the peers.
//!
//! - **cache line**: one 64-bit word in one shared cache line, bounced between two processes that
//!   spin on it (the client writes an odd number, the server answers with the next even one).
//!   The least any shared-memory round trip can cost.
//! - **futex**: two words, each process sleeping in `FUTEX_WAIT` on its own until the other
//!   writes it and calls `FUTEX_WAKE`; no spinning at all. The least a round trip costs when
//!   both sides sleep, as a pipe's or a condition variable's readers do.
//! - **memcpy** at each message size, hot in cache: the least a copying peer pays per message.
//! - **system call** (`getppid`) and **clock read** (`Instant::now`, two per timed round trip).
//!
//! The two round trips are timed one by one, exactly like the peers' (see [`crate::workload`]).

use std::fs::File;
use std::hint::{black_box, spin_loop};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use nix::sys::memfd::{MFdFlags, memfd_create};
use serde_json::{Value, json};

use crate::harness::{Link, Result};
use crate::workload::rtt_summary;

/// Child roles of this module.
pub const ROLES: &[&str] = &[
    "limit-line-client",
    "limit-line-server",
    "limit-futex-client",
    "limit-futex-server",
    "limit-memcpy",
    "limit-calls",
];

/// Runs one role in this child process.
pub fn run(role: &str, link: Option<&Link>, args: &crate::harness::Args) -> Result<Value> {
    let link = || link.ok_or("this limit needs a link");
    match role {
        "limit-line-client" => line(link()?, true, args),
        "limit-line-server" => line(link()?, false, args),
        "limit-futex-client" => futex(link()?, true, args),
        "limit-futex-server" => futex(link()?, false, args),
        "limit-memcpy" => memcpy(args.num("size")?, Duration::from_millis(args.num("limit_ms")?)),
        "limit-calls" => calls(Duration::from_millis(args.num("limit_ms")?)),
        _ => Err(format!("unknown limit role {role}").into()),
    }
}

/// One page of shared memory: the client creates it (a memfd, so nothing is left behind) and
/// passes it to the server over the link.
fn shared_page(link: &Link, client: bool) -> Result<MmapMut> {
    let file = if client {
        let fd = memfd_create(c"ringpool-compare-limit", MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, 4096)?;
        link.send_fd(b"page", fd.as_fd())?;
        File::from(fd)
    } else {
        File::from(link.recv_fd()?.1)
    };
    // SAFETY: the memfd is 4096 bytes and is never truncated; the two processes only touch it
    // through the atomics below.
    Ok(unsafe { MmapMut::map_mut(&file)? })
}

fn u64_at(page: &MmapMut, offset: usize) -> &AtomicU64 {
    assert!(offset.is_multiple_of(8));
    let ptr = page[offset..offset + 8].as_ptr().cast::<AtomicU64>();
    // SAFETY: in bounds (sliced above) and 8-aligned (the mapping is page-aligned), and lives as
    // long as the borrow of `page`; the memory is shared with one other process, which also uses
    // it only through atomic operations, so an `AtomicU64` view is sound.
    unsafe { &*ptr }
}

fn u32_at(page: &MmapMut, offset: usize) -> &AtomicU32 {
    assert!(offset.is_multiple_of(4));
    let ptr = page[offset..offset + 4].as_ptr().cast::<AtomicU32>();
    // SAFETY: as in `u64_at`, for a 4-byte word.
    unsafe { &*ptr }
}

fn counts(args: &crate::harness::Args) -> Result<(u64, u64)> {
    Ok((args.num("rtt_warm")?, args.num("rtt_n")?))
}

fn line(link: &Link, client: bool, args: &crate::harness::Args) -> Result<Value> {
    let (warm, n) = counts(args)?;
    let page = shared_page(link, client)?;
    let word = u64_at(&page, 0);
    link.barrier("start")?;
    let mut ns = Vec::with_capacity(n as usize);
    for i in 0..warm + n {
        let (ping, pong) = (2 * i + 1, 2 * i + 2);
        if client {
            let t0 = Instant::now();
            word.store(ping, Ordering::Release);
            while word.load(Ordering::Acquire) != pong {
                spin_loop();
            }
            if i >= warm {
                ns.push(t0.elapsed().as_nanos() as u64);
            }
        } else {
            while word.load(Ordering::Acquire) != ping {
                spin_loop();
            }
            word.store(pong, Ordering::Release);
        }
    }
    link.barrier("done")?;
    Ok(if client { rtt_summary(&mut ns) } else { json!({ "answered": warm + n }) })
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT reads the 4-byte word at a valid, aligned address that stays mapped for
    // the call; a null timeout means "no timeout". Its result (woken, EAGAIN, EINTR) is
    // re-checked by the caller's loop.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, std::ptr::null::<libc::timespec>());
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; it is valid and aligned.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

/// Sleeps until `word` holds `value` (no spinning).
fn sleep_until(word: &AtomicU32, value: u32) {
    loop {
        let now = word.load(Ordering::Acquire);
        if now == value {
            return;
        }
        futex_wait(word, now);
    }
}

fn futex(link: &Link, client: bool, args: &crate::harness::Args) -> Result<Value> {
    let (warm, n) = counts(args)?;
    let page = shared_page(link, client)?;
    // Two words on two cache lines: the client sleeps on `to_client`, the server on `to_server`.
    let (to_server, to_client) = (u32_at(&page, 0), u32_at(&page, 128));
    link.barrier("start")?;
    let mut ns = Vec::with_capacity(n as usize);
    for i in 0..warm + n {
        let v = (i as u32).wrapping_add(1);
        if client {
            let t0 = Instant::now();
            to_server.store(v, Ordering::Release);
            futex_wake(to_server);
            sleep_until(to_client, v);
            if i >= warm {
                ns.push(t0.elapsed().as_nanos() as u64);
            }
        } else {
            sleep_until(to_server, v);
            to_client.store(v, Ordering::Release);
            futex_wake(to_client);
        }
    }
    link.barrier("done")?;
    Ok(if client { rtt_summary(&mut ns) } else { json!({ "answered": warm + n }) })
}

/// Repeats `batch` until `target` has passed; returns the time per call in ns.
fn time_per_call(target: Duration, batch: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..batch {
        f(); // warm-up: page faults, caches
    }
    let t0 = Instant::now();
    let mut calls = 0u64;
    loop {
        for _ in 0..batch {
            f();
        }
        calls += batch;
        let dt = t0.elapsed();
        if dt >= target {
            return dt.as_nanos() as f64 / calls as f64;
        }
    }
}

fn memcpy(size: usize, target: Duration) -> Result<Value> {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![0u8; size];
    let batch = ((1 << 20) / size).max(1) as u64;
    let ns = time_per_call(target, batch, || {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    });
    Ok(json!({
        "size": size,
        "ns_per_msg": ns,
        "msgs_per_s": 1e9 / ns,
        "bytes_per_s": size as f64 * 1e9 / ns,
    }))
}

fn calls(target: Duration) -> Result<Value> {
    let syscall = time_per_call(target, 1000, || {
        black_box(nix::unistd::getppid());
    });
    let clock = time_per_call(target, 1000, || {
        black_box(Instant::now());
    });
    Ok(json!({ "syscall_ns": syscall, "clock_ns": clock }))
}
