//! Mapping a descriptor into memory: plainly (memmap2), or with the tail mapped twice (nix `mmap`
//! with `MAP_FIXED`, which memmap2 does not offer).

use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags};

use crate::sys::Errno;

/// A shared, read-write mapping of a whole file, possibly followed by a second view of its tail.
#[derive(Debug)]
pub(crate) enum Mapping {
    Plain(memmap2::MmapRaw),
    Mirrored { base: NonNull<u8>, len: usize },
}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0. With `mirror_from = Some(off)`, the bytes
    /// `off..len` are mapped a second time at `base + len`, so that `base[len + i] == base[off + i]`.
    /// `off` and `len` must be page multiples.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize, mirror_from: Option<usize>) -> Result<Mapping, Errno> {
        let Some(off) = mirror_from else {
            let map = memmap2::MmapOptions::new()
                .len(len)
                .map_raw(&fd)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            return Ok(Mapping::Plain(map));
        };
        let mirror = len.checked_sub(off).filter(|&m| m > 0).ok_or(Errno::EINVAL)?;
        let total = len.checked_add(mirror).and_then(NonZeroUsize::new).ok_or(Errno::EINVAL)?;
        let first = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        let second = NonZeroUsize::new(mirror).ok_or(Errno::EINVAL)?;
        let offset = libc::off_t::try_from(off).map_err(|_| Errno::EINVAL)?;
        // SAFETY: an anonymous PROT_NONE reservation at an address of the kernel's choosing cannot
        // alias anything; it only reserves `total` bytes of address space for the two views.
        let base = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                total,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )?
        };
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let flags = MapFlags::MAP_SHARED | MapFlags::MAP_FIXED;
        // SAFETY: MAP_FIXED replaces pages inside the reservation we own exclusively (made just
        // above, not yet shared with any other code), so nothing else is unmapped by it.
        let first_view = unsafe { nix::sys::mman::mmap(Some(base.addr()), first, rw, flags, fd, 0) };
        let second_view = first_view.and_then(|_| {
            // SAFETY: `base + len` is inside the reservation (total = len + mirror) and
            // page-aligned (len is a page multiple); as above, only our own reservation is replaced.
            let at = unsafe { base.byte_add(len) };
            // SAFETY: same reservation argument; `offset` is a page multiple below the file size.
            unsafe { nix::sys::mman::mmap(Some(at.addr()), second, rw, flags, fd, offset) }
        });
        if let Err(e) = second_view {
            // SAFETY: unmapping the reservation we made above, which nothing else references.
            let _ = unsafe { nix::sys::mman::munmap(base, total.get()) };
            return Err(e);
        }
        Ok(Mapping::Mirrored { base: base.cast(), len: total.get() })
    }

    /// The first byte of the mapping (page-aligned).
    pub(crate) fn base(&self) -> NonNull<u8> {
        match self {
            // memmap2 never returns a null mapping.
            Mapping::Plain(m) => NonNull::new(m.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            Mapping::Mirrored { base, .. } => *base,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Mapping::Mirrored { base, len } = *self {
            // SAFETY: `base..base+len` is exactly the region mapped in `new`, owned by this value and
            // unmapped only here. Every pointer into it handed out by the segment borrows the
            // segment, which owns this mapping, so none outlives it.
            let _ = unsafe { nix::sys::mman::munmap(base.cast(), len) };
        }
    }
}
