//! Is a process still alive? Read from `/proc/<pid>/stat`, so that a zombie counts as dead and a
//! pid reused by a newer process is not mistaken for the old one.
//!
//! A process is identified by its pid together with its start time (field 22 of `/proc/<pid>/stat`,
//! clock ticks since boot). `kill(pid, 0)` alone would call a killed-but-unreaped child alive (a
//! zombie answers signals' permission check) and would call a stranger with a recycled pid alive.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit: 2^22).
pub const PID_MAX: u32 = 1 << 22;

/// What `/proc/<pid>/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter: `R`, `S`, `D`, `Z` (zombie), `T`, `X` (dead), ...
    pub state: u8,
    /// The parent's pid.
    pub ppid: u32,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

/// Reads and parses `/proc/<pid>/stat`. `None` if the process does not exist (or cannot be read).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    if pid == 0 || pid >= PID_MAX {
        return None;
    }
    let mut path = [0u8; 32];
    let path = {
        use std::io::Write;
        let mut cur = std::io::Cursor::new(&mut path[..]);
        write!(cur, "/proc/{pid}/stat").ok()?;
        let n = cur.position() as usize;
        std::str::from_utf8(&path[..n]).ok()?
    };
    let mut buf = [0u8; 1024];
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    parse_stat(&buf[..len])
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so parsing starts after the last `)`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // Fields after the name: 3 state, 4 ppid, ..., 22 starttime.
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    let start_time = fields.nth(22 - 5)?.parse().ok()?;
    Some(ProcStat { state, ppid, start_time })
}

/// The start time of this process (cached; refreshed after a fork).
pub fn own_start_time() -> u64 {
    #[cfg(ringpool_model)]
    if super::model::pid().is_some() {
        return 1;
    }
    static CACHE: AtomicU64 = AtomicU64::new(0);
    static CACHE_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let pid = super::current_pid();
    if CACHE_PID.load(Ordering::Acquire) == pid {
        return CACHE.load(Ordering::Relaxed);
    }
    let t = proc_stat(pid).map_or(0, |s| s.start_time);
    CACHE.store(t, Ordering::Relaxed);
    CACHE_PID.store(pid, Ordering::Release);
    t
}

/// Whether the process `pid`, started at `start_time` (0: unknown, not compared), still runs.
///
/// Dead means: no such pid, a zombie (`Z`) or dying (`X`) process, or a live process with another
/// start time (the pid was reused). Where `/proc` cannot be read at all, `kill(pid, 0)` decides.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    // The model checks: liveness comes from the model's table of dead and finished threads.
    #[cfg(ringpool_model)]
    if let Some(alive) = super::model::alive(pid) {
        return alive;
    }
    if pid == 0 || pid >= PID_MAX {
        return false;
    }
    match proc_stat(pid) {
        Some(st) => !matches!(st.state, b'Z' | b'X' | b'x') && (start_time == 0 || st.start_time == start_time),
        None => {
            // /proc missing or unreadable: fall back to the signal check (cannot see zombies).
            let r = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None);
            !matches!(r, Err(nix::errno::Errno::ESRCH))
        }
    }
}

/// An identifier of this process's pid namespace (the inode of `/proc/self/ns/pid`), 0 if unknown.
///
/// Processes in different pid namespaces see different pids for the same process, so liveness by
/// pid is only meaningful among processes of one namespace; segments record their creator's.
pub fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    // A process cannot change its pid namespace (unshare affects its children only): read once.
    static NS: AtomicU64 = AtomicU64::new(u64::MAX);
    let ns = NS.load(Ordering::Relaxed);
    if ns != u64::MAX {
        return ns;
    }
    let ns = std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino());
    NS.store(ns, Ordering::Relaxed);
    ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_parens_and_spaces() {
        let text = b"1234 (a (weird) name) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10\n";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.state, b'S');
        assert_eq!(st.ppid, 77);
        assert_eq!(st.start_time, 987654);
    }

    #[test]
    fn self_is_alive_and_garbage_is_not() {
        let me = std::process::id();
        assert!(is_alive(me, own_start_time()));
        assert!(!is_alive(me, own_start_time() + 1), "a different start time is a different process");
        assert!(!is_alive(0, 0));
        assert!(!is_alive(PID_MAX + 5, 0));
        assert!(parse_stat(b"garbage").is_none());
    }
}
