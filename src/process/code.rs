//! Functions as offsets into the executable: how code crosses to another process of the same
//! binary, forked or re-executed.
//!
//! Under ASLR the executable is loaded at a different address in every exec'd process, but every
//! function keeps its distance from the image's load address. So a function travels as that
//! distance (a [`CodeOffset`]) and is found again by adding the receiving process's own load
//! address. A forked child has the parent's layout; a re-executed one its own; both work.
//!
//! An offset received from shared memory is not trusted blindly: [`CodeMap::address`] only answers
//! for offsets that land inside an executable mapping of the executable's image.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::StartError;
use super::spawn::{anchor, image_at, parse_mapping};

/// A function's distance from the executable's load address.
pub(crate) type CodeOffset = u64;

/// Where the executable's image is and which of its pages hold code.
#[derive(Debug)]
pub(crate) struct CodeMap {
    base: usize,
    code: Vec<(usize, usize)>,
}

/// The leaked map, published once: a forked child shares the layout and the value, a re-executed
/// process starts with zero and reads its own. (No `OnceLock`: a child forked while another thread
/// was filling one would wait for ever.)
static CACHED: AtomicUsize = AtomicUsize::new(0);

impl CodeMap {
    /// This process's map, read from `/proc/self/maps` once (kept for the process's life; a
    /// forked child inherits it, and its layout is the parent's).
    pub(crate) fn get() -> Result<&'static CodeMap, StartError> {
        let p = CACHED.load(Ordering::Acquire);
        if p != 0 {
            // SAFETY: a non-zero CACHED is the address of a CodeMap leaked below (never freed),
            // published with Release after it was fully written.
            return Ok(unsafe { &*(p as *const CodeMap) });
        }
        let map = Box::leak(Box::new(CodeMap::read()?));
        // Two threads may race here; the loser's copy is identical and merely leaked.
        CACHED.store(map as *const CodeMap as usize, Ordering::Release);
        Ok(map)
    }

    fn read() -> Result<CodeMap, StartError> {
        let maps = std::fs::read_to_string("/proc/self/maps")
            .map_err(|e| StartError::Os { op: "read /proc/self/maps", source: super::status::io_errno(e) })?;
        let exe = std::fs::read_link("/proc/self/exe")
            .map_err(|e| StartError::Os { op: "readlink /proc/self/exe", source: super::status::io_errno(e) })?;
        let image = image_at(&maps, anchor()).ok_or(StartError::NotInExecutable)?;
        if std::path::Path::new(image.path) != exe {
            return Err(StartError::NotInExecutable);
        }
        let code = maps
            .lines()
            .filter_map(parse_mapping)
            .filter(|m| m.executable && m.dev == image.dev && m.inode == image.inode && m.start >= image.base)
            .map(|m| (m.start, m.end))
            .collect();
        Ok(CodeMap { base: image.base, code })
    }

    /// The executable image's load address in this process.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    fn is_code(&self, addr: usize) -> bool {
        self.code.iter().any(|&(s, e)| (s..e).contains(&addr))
    }

    /// The offset of the function at `addr`, if it is code of the executable.
    pub(crate) fn offset(&self, addr: usize) -> Result<CodeOffset, StartError> {
        if !self.is_code(addr) {
            return Err(StartError::ForeignFunction);
        }
        Ok((addr - self.base) as CodeOffset)
    }

    /// The address of the function at `offset` in this process, if it lands in the executable's
    /// code.
    pub(crate) fn address(&self, offset: CodeOffset) -> Option<usize> {
        let addr = usize::try_from(offset).ok().and_then(|o| self.base.checked_add(o))?;
        self.is_code(addr).then_some(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(x: u64) -> u64 {
        x + 1
    }

    #[test]
    fn round_trip_and_refusals() {
        let map = CodeMap::get().unwrap();
        let f = sample as fn(u64) -> u64 as usize;
        let off = map.offset(f).unwrap();
        assert_eq!(map.address(off), Some(f));
        let heap = Box::new(0u64);
        assert!(map.offset(&*heap as *const u64 as usize).is_err(), "heap memory is not code");
        assert_eq!(map.address(u64::MAX), None);
        assert_eq!(map.address(1 << 46), None);
        let libc_fn = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
        assert!(map.offset(libc_fn).is_err(), "a shared library's function is foreign");
    }
}
