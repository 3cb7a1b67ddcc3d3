//! Starting a child by re-executing the current binary, and catching that child before `main`.
//!
//! # The request
//!
//! The parent runs `/proc/self/exe` (the very file it runs, even if it was since replaced or
//! deleted on disk) with the environment variable [`ENV`] set to a request:
//!
//! - the executable's identity (device, inode, size, modification time of `/proc/self/exe`): the
//!   child refuses to run unless its own matches;
//! - three function addresses as offsets from the executable image's load address (read from
//!   `/proc/self/maps`): the trampoline (which knows the argument's type), the caller's `entry`,
//!   and [`anchor`], a function of this module. Within one image the distance between two of its
//!   functions is fixed, wherever ASLR loads it. The parent checks that ringpool and `entry` both
//!   lie in the executable's own image, not in a shared library ([`offsets`]); the anchor's offset
//!   tells this copy of ringpool from another one linked into the same binary;
//! - the argument's bytes, the child's name and place in the process tree, the report channel's
//!   descriptor number, and the parent's `comm` (else every spawned child would be called `exe`).
//!
//! # The child
//!
//! A constructor in `.init_array` ([`SPAWN_CONSTRUCTOR`]) runs in every process of the binary before
//! `main`. Without [`ENV`] it returns at once; with a request for another copy of ringpool (another
//! format or another anchor offset) too. With its own, it removes the variable (so that programs
//! the child runs do not take it for themselves), checks the request, runs the function and
//! `_exit`s: it never returns to the C runtime, so the program's `main` (libtest's, in a test
//! binary) never runs.
//! A request that cannot be honoured is refused: the reason goes to the parent and to stderr, and
//! the child exits with code 127.

use std::ffi::{CString, OsString};
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;

use super::child::{self, Kind};
use super::code::CodeMap;
use super::current::{self, Identity};
use super::report;
use super::status::io_errno;
use super::{Process, ProcessBuilder, StartError, StartMethod, wait};
use crate::sync::current_pid;
use crate::sys::{Errno, cvt};

/// The environment variable that carries a spawn request. Reserved.
pub(crate) const ENV: &str = "RINGPOOL_SPAWN";

/// The largest argument [`ProcessBuilder::spawn`] carries to a spawned child, in bytes. The
/// argument travels in the environment, which the kernel limits to 128 KiB per variable.
pub const MAX_SPAWN_ARG: usize = 32 * 1024;

/// The first field of a request; changes with its format.
const VERSION: &str = "v1";

/// A function that runs `entry` (an address, rebased in this process) on `arg`. Each knows the
/// real type of the function at `entry`.
pub(super) type Trampoline = fn(usize, &[u8]);

/// Runs a `fn(A)` found at `entry` on `arg`'s bytes.
pub(super) fn typed_trampoline<A: bytemuck::Pod>(entry: usize, arg: &[u8]) {
    // SAFETY: `entry` is the address of a `fn(A)` of this executable: the parent took it from such
    // a function (`ProcessBuilder::spawn`), checked that it lies in the executable's own mapping, and
    // sent its offset from `anchor` together with this very trampoline's (instantiated for that `A`);
    // the child checked that it runs the same executable file and rebased the offset on its own
    // `anchor`, so it points at the same function here.
    let f = unsafe { std::mem::transmute::<usize, fn(A)>(entry) };
    match bytemuck::try_pod_read_unaligned::<A>(arg) {
        Ok(a) => f(a),
        Err(e) => panic!("ringpool: spawn argument of {} bytes does not fit its type: {e}", arg.len()),
    }
}

/// Runs a `fn(&[u8])` found at `entry` on `arg`.
pub(super) fn raw_trampoline(entry: usize, arg: &[u8]) {
    // SAFETY: as in `typed_trampoline`: `entry` is the rebased address of a `fn(&[u8])` of this
    // executable (`ProcessBuilder::spawn_raw`).
    let f = unsafe { std::mem::transmute::<usize, fn(&[u8])>(entry) };
    f(arg)
}

/// A function of this copy of ringpool. Where the executable image that holds it is loaded tells
/// where every function of that image is, and its offset in the image tells this copy of ringpool
/// from another one linked into the same binary (two semver-incompatible versions, say).
pub(super) fn anchor() -> usize {
    spawned_child_main as extern "C" fn() as usize
}

/// The offsets a spawned child needs, each from the load address of the executable's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offsets {
    anchor: i64,
    trampoline: i64,
    entry: i64,
}

fn offset(addr: usize, base: usize) -> i64 {
    addr.wrapping_sub(base) as isize as i64
}

fn rebase(offset: i64, base: usize) -> usize {
    base.wrapping_add_signed(offset as isize)
}

/// In the parent: the offsets of [`anchor`], `trampoline` and `entry` from the executable's load
/// address, after checking (through the process's cached [`CodeMap`]) that ringpool is part of the
/// executable itself and that both functions are code of it.
fn offsets(trampoline: usize, entry: usize) -> Result<Offsets, StartError> {
    let map = CodeMap::get()?;
    map.offset(entry)?;
    map.offset(trampoline)?;
    let base = map.base();
    Ok(Offsets { anchor: offset(anchor(), base), trampoline: offset(trampoline, base), entry: offset(entry, base) })
}

/// In the child: the load address of the image that holds [`anchor`], if the request's anchor
/// offset is this copy of ringpool's (else the request is for another copy).
fn base_for(anchor_offset: i64) -> Result<Option<usize>, &'static str> {
    let map = CodeMap::get().map_err(|_| "ringpool is not in the executable's own image")?;
    Ok((offset(anchor(), map.base()) == anchor_offset).then_some(map.base()))
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mapping<'a> {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) executable: bool,
    pub(super) offset: u64,
    pub(super) dev: &'a str,
    pub(super) inode: u64,
    pub(super) path: &'a str,
}

pub(super) fn parse_mapping(line: &str) -> Option<Mapping<'_>> {
    // "start-end perms offset dev inode      path": single spaces, then padding before the path,
    // which may itself hold spaces.
    let mut f = line.splitn(6, ' ');
    let (start, end) = f.next()?.split_once('-')?;
    let perms = f.next()?;
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(f.next()?, 16).ok()?,
        dev: f.next()?,
        inode: f.next()?.parse().ok()?,
        path: f.next().unwrap_or("").trim_start(),
    })
}

/// The file image mapped at some address: its file, and its load address (where the file's offset
/// 0 is mapped, just below).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Image<'a> {
    pub(super) base: usize,
    pub(super) dev: &'a str,
    pub(super) inode: u64,
    pub(super) path: &'a str,
}

/// The image mapped at `addr`, from the text of `/proc/self/maps`; `None` for an unmapped address
/// or anonymous memory. Within one image, the distance between two addresses is fixed wherever
/// ASLR loads it; between two images (the executable and a shared library) it is not.
pub(super) fn image_at(maps: &str, addr: usize) -> Option<Image<'_>> {
    let all = || maps.lines().filter_map(parse_mapping);
    let m = all().find(|m| (m.start..m.end).contains(&addr))?;
    if m.inode == 0 {
        return None;
    }
    // The same file's mapping at offset 0 closest below: the start of this image (the file may be
    // mapped again elsewhere, as data).
    let first = all().rfind(|x| x.dev == m.dev && x.inode == m.inode && x.offset == 0 && x.start <= m.start)?;
    Some(Image { base: first.start, dev: m.dev, inode: m.inode, path: m.path })
}

/// What identifies the executable file: the child refuses to run unless it is the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExeId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn exe_id_now() -> Result<ExeId, Errno> {
    let m = std::fs::metadata("/proc/self/exe").map_err(io_errno)?;
    Ok(ExeId { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() })
}

/// The parent's executable identity, read once (fork-safe: a child forked while another thread
/// reads it reads it again, see `crate::sys::once`).
fn exe_id() -> Result<ExeId, Errno> {
    static ID: crate::sys::once::ForkSafeLazy<Result<ExeId, Errno>> = crate::sys::once::ForkSafeLazy::new();
    *ID.get_or_init(exe_id_now)
}

/// Everything a spawned child needs, as carried in [`ENV`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    exe: ExeId,
    at: Offsets,
    report_fd: RawFd,
    path: String,
    name: String,
    comm: Vec<u8>,
    arg: Vec<u8>,
}

impl Request {
    fn encode(&self) -> String {
        let e = &self.exe;
        let mut s = format!(
            "{VERSION};exe={},{},{},{},{};anchor={};tramp={};entry={};fd={};path={};name=",
            e.dev,
            e.ino,
            e.size,
            e.mtime,
            e.mtime_nsec,
            self.at.anchor,
            self.at.trampoline,
            self.at.entry,
            self.report_fd,
            self.path
        );
        hex_into(&mut s, self.name.as_bytes());
        s.push_str(";comm=");
        hex_into(&mut s, &self.comm);
        s.push_str(";arg=");
        hex_into(&mut s, &self.arg);
        s
    }

    /// Parses a request; any deviation from what [`encode`](Self::encode) writes is an error.
    fn decode(text: &[u8]) -> Result<Request, &'static str> {
        let text = std::str::from_utf8(text).map_err(|_| "request is not UTF-8")?;
        let mut fields = text.split(';');
        if fields.next() != Some(VERSION) {
            return Err("request of another ringpool version");
        }
        let mut field = |key: &str| -> Result<&str, &'static str> {
            let f = fields.next().ok_or("request is cut short")?;
            f.strip_prefix(key).and_then(|f| f.strip_prefix('=')).ok_or("request has an unexpected field")
        };
        let mut exe = field("exe")?.split(',');
        let mut num = || exe.next().and_then(|n| n.parse::<i128>().ok()).ok_or("bad executable identity");
        let exe = ExeId {
            dev: num()? as u64,
            ino: num()? as u64,
            size: num()? as u64,
            mtime: num()? as i64,
            mtime_nsec: num()? as i64,
        };
        let mut offset = |key| field(key)?.parse().map_err(|_| "bad offset");
        let at = Offsets { anchor: offset("anchor")?, trampoline: offset("tramp")?, entry: offset("entry")? };
        let report_fd = field("fd")?.parse().map_err(|_| "bad descriptor number")?;
        let path = field("path")?;
        if !path.bytes().all(|b| b.is_ascii_digit() || b == b':') {
            return Err("bad process path");
        }
        let path = path.to_owned();
        let name = String::from_utf8(unhex(field("name")?)?).map_err(|_| "name is not UTF-8")?;
        let comm = unhex(field("comm")?)?;
        let arg = unhex(field("arg")?)?;
        if fields.next().is_some() {
            return Err("request has trailing fields");
        }
        Ok(Request { exe, at, report_fd, path, name, comm, arg })
    }
}

fn hex_into(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, &'static str> {
    if s.len() % 2 != 0 {
        return Err("odd hex length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad hex digit"))
        .collect()
}

/// The parent's side: re-executes this binary to run `trampoline(entry, arg)`.
pub(super) fn spawn(
    b: ProcessBuilder,
    trampoline: Trampoline,
    entry: usize,
    arg: &[u8],
    inherit_fds: &[BorrowedFd<'_>],
) -> Result<Process, StartError> {
    let exe = exe_id().map_err(|source| StartError::Os { op: "stat /proc/self/exe", source })?;
    spawn_as(b, exe, trampoline, entry, arg, inherit_fds)
}

/// [`spawn`] with the executable identity to send (a test sends a wrong one).
fn spawn_as(
    b: ProcessBuilder,
    exe: ExeId,
    trampoline: Trampoline,
    entry: usize,
    arg: &[u8],
    inherit_fds: &[BorrowedFd<'_>],
) -> Result<Process, StartError> {
    if arg.len() > MAX_SPAWN_ARG {
        return Err(StartError::ArgTooLarge { len: arg.len(), max: MAX_SPAWN_ARG });
    }
    let at = offsets(trampoline as usize, entry)?;
    // The constructor must be linked into every binary that spawns: this use of it makes sure.
    std::hint::black_box(&SPAWN_CONSTRUCTOR);
    wait::sweep();
    child::install_hook();
    if b.die_with_parent {
        child::prepare_watch().map_err(|source| StartError::Os { op: "pipe2 (parent-death watch)", source })?;
    }

    let id = current::next_child(b.name);
    let (read_end, write_end) = report::channel().map_err(|source| StartError::Os { op: "pipe2", source })?;
    let request = Request {
        exe,
        at,
        report_fd: write_end.as_raw_fd(),
        path: id.path,
        name: id.name.clone(),
        comm: std::fs::read("/proc/self/comm").unwrap_or_default(),
        arg: arg.to_vec(),
    };

    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(ENV, request.encode());
    let mut keep: Vec<RawFd> = inherit_fds.iter().map(|fd| fd.as_raw_fd()).collect();
    keep.push(write_end.as_raw_fd());
    let expected_parent = b.die_with_parent.then_some(current_pid());
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed. It makes only system calls (fcntl, open, close, poll, prctl, getppid, kill) and reads the
    // vector captured here, allocated by the parent; it allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(move || before_exec(&keep, expected_parent)) };
    // The child executes a new image at once: it must not join the rings whose handles the parent
    // holds (the at-fork hooks run around the fork inside `spawn`), or it would count as a member
    // for as long as the new image runs.
    let child = crate::sys::atfork::with_inherit(crate::sys::atfork::Inherit::Forget, || cmd.spawn())
        .map_err(|e| StartError::Os { op: "spawn /proc/self/exe", source: io_errno(e) })?;
    drop(write_end);
    let mut p = Process::new(child.id(), id.name, StartMethod::Spawn, read_end);
    p.await_start()?;
    Ok(p)
}

/// In the child between fork and exec: lets the descriptors in `keep` cross the exec, and asks to
/// die with the parent. Async-signal-safe.
fn before_exec(keep: &[RawFd], expected_parent: Option<u32>) -> std::io::Result<()> {
    for &fd in keep {
        // SAFETY: F_GETFD and F_SETFD read and write a descriptor's flags; no memory is involved.
        let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
    }
    if let Some(parent) = expected_parent {
        // The armed descriptor crosses the exec (the spawned child makes it close-on-exec then).
        let _ = child::die_with_parent(parent);
    }
    Ok(())
}

/// Runs before `main` in every process of a binary that links this module; see the module docs.
// SAFETY: `.init_array` holds pointers to functions that the C runtime calls, once, before `main`,
// with (argc, argv, envp); a C-ABI function that takes no parameters may be called with arguments
// it ignores. The static is a plain function pointer of that type, nothing else in the section.
#[used]
#[unsafe(link_section = ".init_array")]
static SPAWN_CONSTRUCTOR: extern "C" fn() = spawned_child_main;

extern "C" fn spawned_child_main() {
    let Some(request) = std::env::var_os(ENV) else {
        return;
    };
    if secure_execution() {
        // A setuid/setgid (or file-capability) program: its environment is the unprivileged
        // caller's, so the request (a function to run, a descriptor to write to) is not obeyed.
        // The request is not passed on to `main` either: this exits, as a refused request does.
        let msg = b"ringpool: a spawn request (RINGPOOL_SPAWN) is refused in a secure-execution (setuid) process\n";
        // SAFETY: write(2) of a static buffer, valid for its length, to stderr.
        let _ = unsafe { libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len()) };
        // SAFETY: _exit ends the process at once; nothing of Rust's runtime has started yet.
        unsafe { libc::_exit(127) }
    }
    // A panic of ringpool's own code must not unwind into the C runtime.
    match std::panic::catch_unwind(move || run_request(request)) {
        // The request is for another copy of ringpool in this binary: its constructor takes it.
        Ok(NotOurs) => {}
        Err(_) => current::exit_now(127),
    }
}

/// Whether this process runs in secure-execution mode (`AT_SECURE`: set-user-ID or set-group-ID,
/// or file capabilities): then the environment came from a less privileged caller.
fn secure_execution() -> bool {
    // SAFETY: getauxval reads this process's auxiliary vector; it has no preconditions.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// What [`run_request`] answers when it returns at all.
struct NotOurs;

/// Checks and runs a spawn request, then `_exit`s. Returns only if the request is meant for another
/// copy of ringpool linked into this binary (another request format, or another anchor).
fn run_request(request: OsString) -> NotOurs {
    let text = request.as_bytes();
    if !text.starts_with(VERSION.as_bytes()) || text.get(VERSION.len()) != Some(&b';') {
        return NotOurs;
    }
    let req = match Request::decode(text) {
        Ok(r) => r,
        Err(reason) => take_and_refuse(reason),
    };
    let base = match base_for(req.at.anchor) {
        Ok(Some(base)) => base,
        Ok(None) => return NotOurs,
        Err(reason) => take_and_refuse(reason),
    };
    take_request();
    // The channel first, so that a refusal reaches the parent.
    if report::adopt_channel(req.report_fd).is_err() {
        refuse("the report channel's descriptor is not open");
    }
    match exe_id_now() {
        Ok(id) if id == req.exe => {}
        Ok(_) => refuse("the executable is not the file the parent runs"),
        Err(_) => refuse("cannot stat /proc/self/exe"),
    }
    // As Rust's runtime does before `main`, which this child never reaches: a write to a closed
    // pipe is an EPIPE error, not death by SIGPIPE.
    // SAFETY: SIG_IGN installs no handler code; no other thread exists yet to be surprised.
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) };
    if let Ok(comm) = CString::new(req.comm.trim_ascii_end()) {
        let _ = nix::sys::prctl::set_name(&comm);
    }
    child::install_hook();
    let id = Identity { name: req.name, path: req.path };
    child::enter(Kind::Spawned, Box::new(id), None, None);
    let trampoline = rebase(req.at.trampoline, base);
    // SAFETY: see `typed_trampoline`: the parent sent the offset of a `Trampoline` of this
    // executable from the image's load address; this is the same executable file (checked above)
    // and the same copy of ringpool (same anchor offset), so the rebased address is that function.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline) };
    let entry = rebase(req.at.entry, base);
    child::run_and_exit(move || trampoline(entry, &req.arg))
}

/// Removes [`ENV`], so that programs this child runs do not take the request for themselves.
fn take_request() {
    // SAFETY: this runs before `main`, while the C runtime runs constructors on its only thread;
    // no thread of this program exists yet that could read the environment concurrently (a
    // constructor of another library that starts threads which read the environment would be the
    // one exception: see SAFETY.md).
    unsafe { std::env::remove_var(ENV) };
}

/// [`take_request`], then [`refuse`].
fn take_and_refuse(reason: &str) -> ! {
    take_request();
    refuse(reason)
}

/// Reports why a spawned child will not run (to the parent, whose start answers
/// [`StartError::Refused`]; to stderr when there is no channel to the parent), then exits with code
/// 127.
fn refuse(reason: &str) -> ! {
    let told = report::send(report::REFUSED, |w| {
        let _ = w.write_all(reason.as_bytes());
    });
    if !told {
        child::write_stderr(format!("ringpool: spawned child {} refused to run: {reason}\n", current_pid()).as_bytes());
    }
    current::exit_now(127)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Request {
        Request {
            exe: ExeId { dev: 2049, ino: 1234567, size: 99, mtime: -5, mtime_nsec: 999_999_999 },
            at: Offsets { anchor: 5, trampoline: -123_456, entry: 77 },
            report_fd: 9,
            path: "1:2".into(),
            name: "weird; name=\u{e9}".into(),
            comm: b"proc\n".to_vec(),
            arg: vec![0, 1, 0xfe, 0xff],
        }
    }

    #[test]
    fn request_round_trips_and_garbage_is_refused() {
        let r = sample();
        assert_eq!(Request::decode(r.encode().as_bytes()), Ok(r.clone()));
        let text = r.encode();
        for cut in 0..text.len() {
            // Every prefix is either refused or (for a cut inside the last hex field at an even
            // length) a different argument; never a panic.
            let _ = Request::decode(&text.as_bytes()[..cut]);
        }
        assert!(Request::decode(b"v2;exe=1").is_err());
        assert!(Request::decode(format!("{text};x=1").as_bytes()).is_err());
        assert!(Request::decode(text.replace("path=1:2", "path=1;2").as_bytes()).is_err());
        assert!(Request::decode(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn offsets_rebase_to_the_same_address() {
        let f = raw_trampoline as Trampoline as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let here = image_at(&maps, anchor()).unwrap();
        let at = offsets(f, typed_trampoline::<u64> as Trampoline as usize).unwrap();
        assert_eq!(rebase(at.trampoline, here.base), f);
        assert_eq!(base_for(at.anchor), Ok(Some(here.base)));
        assert_eq!(base_for(at.anchor + 16), Ok(None), "another copy's anchor");
    }

    #[test]
    fn a_function_of_a_shared_library_is_foreign() {
        let f = raw_trampoline as Trampoline as usize;
        let getpid = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
        assert!(matches!(offsets(f, getpid), Err(StartError::ForeignFunction)));
        let heap = Box::new(0u64);
        let on_heap = &*heap as *const u64 as usize;
        assert!(matches!(offsets(f, on_heap), Err(StartError::ForeignFunction)));
    }

    #[test]
    fn maps_lines_parse() {
        let maps = "\
5600-5700 r--p 00000000 fd:01 42                         /bin/my prog (deleted)
5700-5900 r-xp 00001000 fd:01 42                         /bin/my prog (deleted)
7000-7100 r--p 00000000 fd:01 42                         /bin/my prog (deleted)
7f00-7f10 rw-p 00000000 00:00 0 
garbage
";
        let img = image_at(maps, 0x5800).unwrap();
        assert_eq!((img.base, img.inode, img.path), (0x5600, 42, "/bin/my prog (deleted)"));
        assert_eq!(image_at(maps, 0x7050).unwrap().base, 0x7000, "a second mapping of the file");
        assert_eq!(image_at(maps, 0x7f05), None, "anonymous memory");
        assert_eq!(image_at(maps, 0x100), None, "unmapped");
    }

    fn exit_with(code: u32) {
        super::current::exit(code as i32)
    }

    #[test]
    fn a_child_refuses_another_executable() {
        let mut exe = exe_id().unwrap();
        exe.ino ^= 1;
        let b = ProcessBuilder::new().start_method(StartMethod::Spawn);
        let code: u32 = 3;
        let e =
            spawn_as(b, exe, typed_trampoline::<u32>, exit_with as fn(u32) as usize, bytemuck::bytes_of(&code), &[])
                .unwrap_err();
        match e {
            StartError::Refused { reason, .. } => {
                assert!(reason.contains("not the file"), "{reason}")
            }
            other => panic!("expected a refusal, got {other}"),
        }
        // The same request with the right identity runs.
        let mut p = ProcessBuilder::new().start_method(StartMethod::Spawn).spawn(exit_with, code).unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), super::super::ExitStatus::Code(3));
    }

    #[test]
    fn arguments_over_the_limit_are_refused() {
        let big = vec![0u8; MAX_SPAWN_ARG + 1];
        let b = ProcessBuilder::new().start_method(StartMethod::Spawn);
        let e = b.spawn_raw(|_| {}, &big, &[]).unwrap_err();
        assert!(matches!(e, StartError::ArgTooLarge { .. }), "{e}");
    }

    #[test]
    fn this_test_process_is_not_in_secure_execution() {
        // The refusal itself needs a set-user-ID binary: see tests/robust.rs.
        assert!(!secure_execution());
    }
}
