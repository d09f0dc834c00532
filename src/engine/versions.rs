//! Versions (`crate::version`) as entries of kind 3: the layout and its crc, read, bump and
//! compare-and-bump, and the check of an entry read back at open.
//!
//! ```text
//! word 0      header: key_len | 0 | kind 3 | 0 | crc32 (over header, key, epoch)
//! key         the key, zero padded to a word
//! epoch       random, never 0, written once when the entry is created
//! number      the version number: 0 when created, +1 per bump (compare-and-swap)
//! ```
//!
//! A version entry is never moved and never expires (a version forgotten could let a stale
//! tag match, which is what the epoch guards against, at the price of spurious 412s): the
//! compactor passes over it. A bump is one atomic operation on the number word in the mapped
//! page, so a kill -9 loses no bump that returned; with `Durability::Sync` the entry's line is
//! also flushed (msync) before the bump returns, so a power loss loses none either.

use std::sync::atomic::{AtomicU64, Ordering};

use super::core::Core;
use super::lookup::read_key;
use crate::backend::check_key;
use crate::error::{Error, Result};
use crate::idempotency::Durability;
use crate::key::MAX_KEY_LEN;
use crate::storage::format::{entry_crc_parts, EntryHeader, KIND_VERSION, LINE};
use crate::storage::segment::Entry;
use crate::version::{random_word, Version, VersionBump};

/// Word offsets inside a version entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionLayout {
    /// The epoch word.
    pub epoch_at: usize,
    /// The number word.
    pub number_at: usize,
    /// Lines the entry takes.
    pub lines: u32,
}

impl VersionLayout {
    /// The layout for a key of `key_len` bytes.
    pub(crate) fn new(key_len: usize) -> VersionLayout {
        let epoch_at = 1 + key_len.div_ceil(8);
        VersionLayout {
            epoch_at,
            number_at: epoch_at + 1,
            lines: ((epoch_at + 2) * 8).div_ceil(LINE) as u32,
        }
    }
}

/// The header word of a version entry for `key` and `epoch`, crc included.
pub(crate) fn version_header(key: &[u8], epoch: u64) -> u64 {
    let h = EntryHeader::new(key.len(), 0, KIND_VERSION);
    let crc = entry_crc_parts(h.low(), &[], &[key, &epoch.to_le_bytes()]);
    h.with_crc(crc).encode()
}

impl Core {
    /// The line of `key`'s version entry, created (fresh epoch, number 0) if there is none.
    fn version_line(&self, key: &[u8], now_ms: u64, guard: &crossbeam_epoch::Guard) -> Result<u64> {
        check_key(key)?;
        self.saw(now_ms);
        let l = VersionLayout::new(key.len());
        self.find_or_insert_kind(key, KIND_VERSION, l.lines, now_ms, guard, |line| {
            let e = self.segs.entry(line);
            let epoch = random_word();
            if let (Some(ep), Some(n)) = (e.w(l.epoch_at), e.w(l.number_at)) {
                ep.store(epoch, Ordering::Relaxed);
                n.store(0, Ordering::Relaxed);
            }
            version_header(key, epoch)
        })
    }

    /// The words of the version entry at `line`: its epoch and its number word.
    fn version_words(&self, line: u64, key_len: usize) -> Result<(u64, &AtomicU64)> {
        let e = self.segs.entry(line);
        let l = VersionLayout::new(key_len);
        match (e.w(l.epoch_at), e.w(l.number_at)) {
            (Some(ep), Some(n)) => Ok((ep.load(Ordering::Relaxed), n)),
            _ => Err(Error::Corrupt {
                offset: self.segs.file_offset(line),
                reason: "version entry outside its segment",
            }),
        }
    }

    /// The current version of `key` (creating its entry if needed).
    pub(crate) fn version(&self, key: &[u8], now_ms: u64) -> Result<Version> {
        let guard = crossbeam_epoch::pin();
        let line = self.version_line(key, now_ms, &guard)?;
        let (epoch, n) = self.version_words(line, key.len())?;
        Ok(Version {
            epoch,
            number: n.load(Ordering::Acquire),
        })
    }

    /// Bump `key`'s version: the new one.
    pub(crate) fn bump_version(&self, key: &[u8], now_ms: u64) -> Result<Version> {
        let guard = crossbeam_epoch::pin();
        let line = self.version_line(key, now_ms, &guard)?;
        let (epoch, n) = self.version_words(line, key.len())?;
        let number = n.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.sync_version(line, key.len())?;
        Ok(Version { epoch, number })
    }

    /// Bump `key`'s version if it is `expected`, in one compare-and-swap.
    pub(crate) fn bump_version_if(
        &self,
        key: &[u8],
        expected: &Version,
        now_ms: u64,
    ) -> Result<VersionBump> {
        let guard = crossbeam_epoch::pin();
        let line = self.version_line(key, now_ms, &guard)?;
        let (epoch, n) = self.version_words(line, key.len())?;
        let current = n.load(Ordering::Acquire);
        if epoch != expected.epoch || current != expected.number {
            return Ok(VersionBump::Stale(Version {
                epoch,
                number: current,
            }));
        }
        let next = current.wrapping_add(1);
        match n.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.sync_version(line, key.len())?;
                Ok(VersionBump::Bumped(Version {
                    epoch,
                    number: next,
                }))
            }
            // Another writer bumped it first: this one is stale.
            Err(now) => Ok(VersionBump::Stale(Version { epoch, number: now })),
        }
    }

    /// With `Durability::Sync`, make the entry at `line` durable before a bump returns.
    fn sync_version(&self, line: u64, key_len: usize) -> Result<()> {
        if self.idem.durability == Durability::Sync {
            let l = VersionLayout::new(key_len);
            self.segs.flush_lines(line, u64::from(l.lines))?;
        }
        Ok(())
    }

    /// Check a version entry read at open: header, padding, layout and crc. Returns its key.
    pub(crate) fn check_version_entry(&self, e: &Entry<'_>, class_lines: u32) -> Option<Vec<u8>> {
        let key = self.version_entry_key(e)?;
        (VersionLayout::new(key.len()).lines == class_lines).then_some(key)
    }

    /// The key of a version entry whose header, padding, epoch and crc check out (reads
    /// only: `verify` calls it on a live store).
    pub(crate) fn version_entry_key(&self, e: &Entry<'_>) -> Option<Vec<u8>> {
        let h = EntryHeader::decode(e.load(0));
        let key_len = h.key_len;
        if h.kind != KIND_VERSION || h.windows != 0 || h.reserved != 0 {
            return None;
        }
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return None;
        }
        let l = VersionLayout::new(key_len);
        let key = read_key(e, 1, key_len)?;
        let epoch = e.w(l.number_at).map(|_| e.load(l.epoch_at))?;
        if epoch == 0 || version_header(&key, epoch) != e.load(0) {
            return None;
        }
        Some(key)
    }

    /// The epoch and number of the version entry at `line` (for `visit`).
    pub(crate) fn version_view(&self, line: u64, key_len: usize) -> (u64, u64) {
        let e = self.segs.entry(line);
        let l = VersionLayout::new(key_len);
        (e.load(l.epoch_at), e.load(l.number_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, Store};

    #[test]
    fn layouts() {
        let l = VersionLayout::new(32);
        assert_eq!((l.epoch_at, l.number_at, l.lines), (5, 6, 1));
        assert_eq!(VersionLayout::new(40).lines, 1);
        assert_eq!(VersionLayout::new(41).lines, 2);
        assert_eq!(VersionLayout::new(MAX_KEY_LEN).lines, 3);
    }

    #[test]
    fn read_bump_and_compare() {
        let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
        let core = &store.core;
        let now = 1_700_000_000_000;
        let v0 = core.version(b"/r", now).unwrap();
        assert_eq!(v0.number, 0);
        assert_ne!(v0.epoch, 0);
        assert_eq!(core.version(b"/r", now).unwrap(), v0);
        let v1 = core.bump_version(b"/r", now).unwrap();
        assert_eq!((v1.epoch, v1.number), (v0.epoch, 1));
        assert_eq!(
            core.bump_version_if(b"/r", &v0, now).unwrap(),
            VersionBump::Stale(v1)
        );
        let VersionBump::Bumped(v2) = core.bump_version_if(b"/r", &v1, now).unwrap() else {
            panic!("the current version bumps");
        };
        assert_eq!(v2.number, 2);
        // Another epoch never matches, whatever the number.
        let other = Version {
            epoch: v2.epoch ^ 2,
            number: 2,
        };
        assert_eq!(
            core.bump_version_if(b"/r", &other, now).unwrap(),
            VersionBump::Stale(v2)
        );
        // Keys are independent, and each has its own epoch.
        let w = core.version(b"/w", now).unwrap();
        assert_eq!(w.number, 0);
        assert!(core.version(b"", now).is_err());
        assert!(core.version(&[b'x'; MAX_KEY_LEN + 1], now).is_err());
    }
}
