//! Memory hints for large buffers.

use std::ptr::NonNull;

use nix::sys::mman::{madvise, MmapAdvise};

/// Transparent huge pages come in this size on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the unused capacity of `buffer` with transparent
/// huge pages where it can (`MADV_HUGEPAGE`).
///
/// A large result — `read_logs` over a 50 MiB chain collects 60 MB of
/// entries — is otherwise faulted in 4 KiB at a time: about 15,000 page
/// faults, a quarter of the read on a virtual machine. With the hint the
/// same buffer takes a few dozen. Only whole, aligned huge pages inside
/// the spare capacity are advised, so the hint never touches memory the
/// buffer does not own. A hint: where the kernel has no huge pages (or
/// `transparent_hugepage` is `never`) nothing changes.
pub fn prefer_huge_pages<T>(buffer: &mut Vec<T>) {
    let spare = buffer.spare_capacity_mut();
    let start = spare.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(spare);
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end - end % HUGE_PAGE;
    if last <= first {
        return;
    }
    let Some(at) = NonNull::new(first as *mut std::ffi::c_void) else {
        return;
    };
    // SAFETY: `first..last` lies inside the vector's own allocation (its
    // spare capacity), and MADV_HUGEPAGE changes how those pages are backed,
    // never their contents.
    if let Err(err) = unsafe { madvise(at, last - first, MmapAdvise::MADV_HUGEPAGE) } {
        tracing::trace!(%err, "no huge pages for a large buffer");
    }
}
