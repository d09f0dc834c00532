//! A hook at the few places the store asks the operating system to make data durable or to
//! grow the file (msync, fdatasync, posix_fallocate), so tests can fail those calls on purpose
//! or watch them (the power-loss simulation of `tests/power_loss.rs` keeps a shadow copy of
//! the file up to date at exactly these points).
//!
//! Why an [`Options`](crate::Options)-level hook and not a cargo feature: the hook is looked at
//! only next to a system call that costs microseconds to milliseconds, never on the check path
//! (a check makes no system call), so leaving it compiled in costs nothing measurable; and the
//! build that ships is then the build the failure tests run, under plain `cargo test`, with no
//! second configuration to keep compiling. It is hidden from the documentation: it is test
//! instrumentation, not an API a gateway should use.

use std::fmt;
use std::io;
use std::sync::Arc;

/// What the store is about to ask of the operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoEvent {
    /// msync (`MS_SYNC`) of `len` bytes of the file's map at byte `offset` of the file.
    Msync {
        /// First byte, from the start of the file.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// fdatasync of the whole file (its length and every dirty page).
    SyncFile,
    /// A sync of `len` bytes of the file at byte `offset`, and of the file's length and
    /// blocks, that leaves the file's other dirty pages unwritten: on Linux an msync of a map
    /// of that range (the file system's fsync over the range alone); elsewhere an fdatasync
    /// of the whole file, which writes them too. Growth makes two.
    SyncRange {
        /// First byte, from the start of the file.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// posix_fallocate of `offset..offset + len` (the file grows by a segment).
    Allocate {
        /// First byte of the new space.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The segment-count word of the header page is written (`pwrite` of 8 bytes at
    /// `offset`), just before the [`IoEvent::SyncRange`] that makes it durable.
    WriteCount {
        /// Byte offset of the word in the file.
        offset: u64,
        /// The count written.
        segments: u32,
    },
}

/// Test instrumentation: called around every [`IoEvent`] of a file store.
pub trait IoHook: Send + Sync {
    /// Called before the operation. An error is returned in place of the operation's result,
    /// and the operation is not made (an injected failure).
    fn before(&self, event: IoEvent) -> io::Result<()> {
        let _ = event;
        Ok(())
    }

    /// Called after the operation succeeded.
    fn after(&self, event: IoEvent) {
        let _ = event;
    }
}

/// The hook of a store, if any (cloned into every part that makes a system call).
#[derive(Clone, Default)]
pub(crate) struct Hook(Option<Arc<dyn IoHook>>);

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

impl Hook {
    /// A hook calling `h`.
    pub(crate) fn new(h: Arc<dyn IoHook>) -> Hook {
        Hook(Some(h))
    }

    /// Run `op` for `event`, between the hook's two calls.
    #[inline]
    pub(crate) fn run<T>(
        &self,
        event: IoEvent,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        match &self.0 {
            None => op(),
            Some(h) => {
                h.before(event)?;
                let out = op()?;
                h.after(event);
                Ok(out)
            }
        }
    }
}
