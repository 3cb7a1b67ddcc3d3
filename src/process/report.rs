//! The report channel: a pipe from a child to its parent, through which the child says that it has
//! started, that it panicked (and with which message), or that it refused to run.
//!
//! Both ends are `O_CLOEXEC | O_NONBLOCK`: the write end reaches no program the child executes
//! (except a spawned child, which clears `FD_CLOEXEC` on purpose), and neither side ever blocks on
//! it. Each report is one record, `[tag][length: u16 LE][payload]`, written with a single `write`
//! of at most [`MAX_RECORD`] bytes. That is below `PIPE_BUF`, so a record arrives whole or not at
//! all, and a "started" record plus a panic record fit even in the smallest pipe Linux makes (one
//! page), so the child's writes never fail for want of room.
//!
//! The parent does not rely on end-of-file: a grandchild forked by the child may hold a copy of the
//! write end. It reads what is there after the child has been reaped (everything the child wrote
//! before dying is in the pipe by then), and watches the child's pidfd while waiting for "started".

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::sys::{Errno, cvt};

/// The child runs: it has done the ring layer's at-fork child hook and is about to run the
/// caller's code.
pub(crate) const STARTED: u8 = b'S';
/// The child's main function panicked. Payload: location, a NUL byte, message.
pub(crate) const PANICKED: u8 = b'P';
/// A spawned child refused to run. Payload: the reason.
pub(crate) const REFUSED: u8 = b'R';

/// The longest record, header included. Longer payloads are cut.
pub(crate) const MAX_RECORD: usize = 4000;
const HEADER: usize = 3;

/// The write end of this process's report channel to its parent, or -1. Owned by this static: set
/// by [`set_channel`], closed only there.
static CHANNEL: AtomicI32 = AtomicI32::new(-1);

/// In a new child: makes `fd` the report channel, and closes the one inherited from the parent (the
/// parent's own channel to the grandparent), so that this child cannot write into it and does not
/// keep it open.
pub(crate) fn set_channel(fd: OwnedFd) {
    let old = CHANNEL.swap(fd.into_raw_fd(), Ordering::AcqRel);
    if old >= 0 {
        // SAFETY: `old` came from `OwnedFd::into_raw_fd` in an earlier `set_channel` (in this
        // process or in the parent whose memory this child copied); only CHANNEL owns it, and the
        // swap above took it out, so it is closed exactly once. A failed close leaks nothing.
        unsafe { libc::close(old) };
    }
}

/// Sends one record on the report channel, if there is one (returns whether there is). A record
/// that does not fit in [`MAX_RECORD`] is cut. Never blocks, never allocates, never panics; a report
/// that cannot be written (the parent is gone) is dropped.
pub(crate) fn send(tag: u8, payload: impl FnOnce(&mut dyn Write)) -> bool {
    let fd = CHANNEL.load(Ordering::Acquire);
    if fd >= 0 {
        send_to(fd, tag, payload);
    }
    fd >= 0
}

fn send_to(fd: RawFd, tag: u8, payload: impl FnOnce(&mut dyn Write)) {
    let mut buf = [0u8; MAX_RECORD];
    buf[0] = tag;
    let len = {
        let mut cur = std::io::Cursor::new(&mut buf[HEADER..]);
        payload(&mut cur);
        cur.position() as usize
    };
    buf[1..HEADER].copy_from_slice(&(len as u16).to_le_bytes());
    write_once(fd, &buf[..HEADER + len]);
}

/// One `write` of `bytes` to `fd`, retried on EINTR only.
fn write_once(fd: RawFd, bytes: &[u8]) {
    loop {
        // SAFETY: `bytes` is a live slice of `bytes.len()` readable bytes; `fd` is a descriptor
        // number (a stale one only makes write fail with EBADF).
        let res = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if !matches!(cvt(res), Err(Errno::EINTR)) {
            return;
        }
    }
}

/// A child's reports as the parent read them.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    /// Bytes read but not yet a whole record.
    pending: Vec<u8>,
    /// A [`STARTED`] record arrived.
    pub(crate) started: bool,
    /// The write end was closed everywhere (end-of-file).
    pub(crate) closed: bool,
    /// A [`PANICKED`] record: location (if known) and message.
    pub(crate) panic: Option<(Option<String>, String)>,
    /// A [`REFUSED`] record: the reason.
    pub(crate) refused: Option<String>,
}

impl Reports {
    /// Reads everything the channel holds now (the fd is non-blocking) and parses whole records.
    /// Garbage is skipped, never trusted: a record with an unknown tag is ignored.
    pub(crate) fn read_from(&mut self, fd: BorrowedFd<'_>) {
        let mut chunk = [0u8; 1024];
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) => continue,
                // EAGAIN: nothing more for now. Anything else: nothing more to learn.
                Err(_) => break,
            }
        }
        self.parse();
    }

    fn parse(&mut self) {
        let mut at = 0;
        while let Some(header) = self.pending.get(at..at + HEADER) {
            let len = u16::from_le_bytes([header[1], header[2]]) as usize;
            let tag = header[0];
            let Some(payload) = self.pending.get(at + HEADER..at + HEADER + len) else {
                break;
            };
            match tag {
                STARTED => self.started = true,
                PANICKED => {
                    let (loc, msg) = match payload.iter().position(|&b| b == 0) {
                        Some(nul) => (Some(&payload[..nul]), &payload[nul + 1..]),
                        None => (None, payload),
                    };
                    let loc = loc.filter(|l| !l.is_empty()).map(|l| String::from_utf8_lossy(l).into_owned());
                    self.panic = Some((loc, String::from_utf8_lossy(msg).into_owned()));
                }
                REFUSED => self.refused = Some(String::from_utf8_lossy(payload).into_owned()),
                _ => {}
            }
            at += HEADER + len;
        }
        self.pending.drain(..at);
    }
}

/// The parent's end of a report channel together with what has been read from it.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
    pub(crate) reports: Reports,
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd) -> Channel {
        Channel { fd, reports: Reports::default() }
    }

    /// Reads what has arrived.
    pub(crate) fn poll_reports(&mut self) -> &Reports {
        self.reports.read_from(self.fd.as_fd());
        &self.reports
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A new report channel: (parent's read end, child's write end), both close-on-exec and
/// non-blocking.
pub(crate) fn channel() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
}

/// Takes ownership of a report channel's write end passed by number (to a spawned child).
/// Fails unless `fd` is an open descriptor above the standard three.
pub(crate) fn adopt_channel(fd: RawFd) -> Result<(), Errno> {
    if fd < 3 {
        return Err(Errno::EBADF);
    }
    // SAFETY: F_GETFD reads the descriptor flags of a number; it touches no memory.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: `fd` is open (checked above) and was left open across exec by the parent for this
    // process alone; nothing else in this fresh process image owns it.
    set_channel(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn record(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_records_split_anywhere() {
        let mut all = record(STARTED, b"");
        all.extend(record(b'?', b"ignored"));
        all.extend(record(PANICKED, b"src/a.rs:1:2\0boom"));
        for cut in 0..all.len() {
            let mut r = Reports::default();
            r.pending.extend_from_slice(&all[..cut]);
            r.parse();
            r.pending.extend_from_slice(&all[cut..]);
            r.parse();
            assert!(r.started);
            assert_eq!(r.panic, Some((Some("src/a.rs:1:2".into()), "boom".into())), "cut at {cut}");
            assert!(r.pending.is_empty());
        }
    }

    #[test]
    fn garbage_is_harmless() {
        let mut r = Reports::default();
        r.pending.extend_from_slice(&[PANICKED, 0xff, 0xff, 1, 2, 3]);
        r.parse();
        assert!(r.panic.is_none(), "an incomplete record is kept, not trusted");
        let mut r = Reports::default();
        r.pending.extend_from_slice(&record(PANICKED, &[0xff, 0xfe]));
        r.parse();
        assert_eq!(r.panic, Some((None, "\u{fffd}\u{fffd}".into())));
    }

    #[test]
    fn a_pipe_carries_a_cut_record() {
        let (rd, wr) = channel().unwrap();
        send_to(wr.as_raw_fd(), STARTED, |_| {});
        send_to(wr.as_raw_fd(), REFUSED, |w| {
            let _ = w.write_all("x".repeat(10_000).as_bytes());
        });
        drop(wr);
        let mut ch = Channel::new(rd);
        let r = ch.poll_reports();
        assert!(r.closed && r.started);
        assert_eq!(r.refused.as_deref().map(str::len), Some(MAX_RECORD - HEADER));
    }
}
