//! Calls into the operating system that the standard library does not offer.
//!
//! This module and [`super::raw`] are the only places in the crate that say `unsafe`.

use std::fs::File;
use std::io;

/// Milliseconds since the Unix epoch from the kernel's coarse real-time clock.
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn coarse_realtime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that lives across the call, and
    // CLOCK_REALTIME_COARSE is a clock id every Linux since 2.6.32 provides; the call writes only
    // into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 {
        return std_realtime_ms();
    }
    (ts.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

/// Milliseconds since the Unix epoch from `SystemTime`.
#[cfg(not(target_os = "linux"))]
#[inline]
pub(crate) fn coarse_realtime_ms() -> u64 {
    std_realtime_ms()
}

fn std_realtime_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Give the calling thread a lower scheduling priority (nice 10): background work, such as the
/// compactor, then gives way to the threads answering requests when they share a core.
/// Best effort: a refusal changes nothing.
#[cfg(target_os = "linux")]
pub(crate) fn lower_thread_priority() {
    // SAFETY: gettid takes no arguments and only returns the caller's thread id.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return;
    };
    // SAFETY: setpriority reads no memory of ours; on Linux PRIO_PROCESS with a thread id
    // applies to that one thread, which is the caller.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) };
}

/// Give the calling thread a lower scheduling priority (not done on this platform).
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_thread_priority() {}

/// `membarrier(2)` commands (linux/membarrier.h): register the process for, and issue, a
/// barrier on every CPU that runs one of its threads.
#[cfg(all(target_os = "linux", not(miri)))]
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
#[cfg(all(target_os = "linux", not(miri)))]
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// Register the process for [`process_barrier`]: `true` if the kernel offers it (Linux 4.14 and
/// later, unless a sandbox refuses the call).
#[cfg(all(target_os = "linux", not(miri)))]
pub(crate) fn register_process_barrier() -> bool {
    // SAFETY: membarrier reads and writes no memory of ours; the register command only marks
    // the process, and an unknown command or a refusal is an error return, not a fault.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0 as libc::c_long,
        )
    };
    rc == 0
}

/// Register the process for [`process_barrier`] (not offered on this platform, nor under
/// Miri, which does not model the call: readers then fence themselves).
#[cfg(any(not(target_os = "linux"), miri))]
pub(crate) fn register_process_barrier() -> bool {
    false
}

/// A full memory barrier on every CPU that runs a thread of this process, and a context switch
/// on the others' behalf (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`): `true` if it was
/// made. Only after [`register_process_barrier`] returned `true`.
#[cfg(all(target_os = "linux", not(miri)))]
pub(crate) fn process_barrier() -> bool {
    // SAFETY: as in `register_process_barrier`: no memory of ours is touched.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED,
            0 as libc::c_long,
        )
    };
    rc == 0
}

/// [`process_barrier`] (not offered on this platform, nor under Miri).
#[cfg(any(not(target_os = "linux"), miri))]
pub(crate) fn process_barrier() -> bool {
    false
}

/// Make sure the blocks of `file` in `offset..offset + len` are allocated, so that a full disk
/// is an error now and not a `SIGBUS` when the mapped pages are first written.
#[cfg(target_os = "linux")]
pub(crate) fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    let l = libc::off_t::try_from(len).map_err(|_| io::Error::other("length too large"))?;
    // SAFETY: the descriptor belongs to `file`, which is open for writing and outlives the call;
    // posix_fallocate reads no memory of ours.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), off, l) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate support: fall back to extending the length only.
        libc::EOPNOTSUPP | libc::EINVAL => extend(file, offset + len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Make bytes `offset..offset + len` of `file` durable, and the file's length and block map
/// with them, without writing back the file's other dirty pages.
///
/// `fdatasync` writes back every page of the file dirtied since the last one: on a busy store,
/// every page the checks wrote, each of which then takes a write fault again on its next
/// write. On Linux an `msync` of a map runs the file system's fsync over the map's range
/// alone (`vfs_fsync_range`), which still commits the file's length and the blocks allocated
/// for it: what a growth needs durable, at the cost of its own page.
#[cfg(target_os = "linux")]
pub(crate) fn sync_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let len = usize::try_from(len.max(1)).map_err(|_| io::Error::other("length too large"))?;
    memmap2::MmapOptions::new()
        .offset(offset)
        .len(len)
        .map_raw(file)?
        .flush()
}

/// [`sync_range`] where `msync` makes no such promise: an `fdatasync` of the whole file.
#[cfg(not(target_os = "linux"))]
pub(crate) fn sync_range(file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    file.sync_data()
}

/// Extend `file` to cover `offset..offset + len` (no block reservation on this platform).
#[cfg(not(target_os = "linux"))]
pub(crate) fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    extend(file, offset + len)
}

fn extend(file: &File, end: u64) -> io::Result<()> {
    if file.metadata()?.len() < end {
        file.set_len(end)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// A sync of a few bytes anywhere (unaligned, in space just allocated past the old end,
    /// in the first page) succeeds and leaves the file's bytes and length as they were.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map a file")]
    fn sync_range_keeps_the_bytes_and_the_length() {
        let file = tempfile::tempfile().expect("temp file");
        file.write_all_at(b"header", 72).expect("write");
        allocate(&file, 8192, 3 * 4096).expect("allocate");
        file.write_all_at(b"count!", 72).expect("rewrite");
        sync_range(&file, 8192, 8).expect("the new space's first bytes");
        sync_range(&file, 72, 8).expect("the count word");
        sync_range(&file, 4095, 2).expect("across a page boundary");
        assert_eq!(file.metadata().expect("stat").len(), 8192 + 3 * 4096);
        let mut back = [0u8; 6];
        file.read_exact_at(&mut back, 72).expect("read");
        assert_eq!(&back, b"count!");
    }
}
