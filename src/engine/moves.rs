//! Moving a window entry to a new set of windows, when a key is checked with other limits
//! than its entry holds (a policy change): freeze the old entry, write the new one with the
//! state of every window both sets share, switch the index, release the old lines after the
//! epoch. A crash at any point leaves one live copy: recovery keeps the unfrozen one.

use std::sync::atomic::Ordering;

use crossbeam_epoch::Guard;

use super::core::Core;
use super::entry::{raw_descriptors, sliding_window, KeyWords, Place};
use crate::error::{Error, Result};
use crate::limit::{Descriptor, Limits, MAX_WINDOWS};
use crate::storage::format::{EntryHeader, EntryLayout};
use crate::window::cell::{self, META_FROZEN};
use crate::window::sliding::{self, Slide, Snap};

impl Core {
    /// Move the entry at `old` to a new entry shaped for `limits` (`None`: the same windows,
    /// moved home, `homing.rs`), keeping the state of every window both shapes share. The new
    /// entry goes to `place`; a slot claimed for it is given back if the move does not happen.
    #[cold]
    #[inline(never)]
    pub(crate) fn migrate(
        &self,
        hash: u64,
        old: u64,
        key: &[u8],
        limits: Option<&Limits>,
        place: Place,
        guard: &Guard,
    ) -> Result<()> {
        let give_back = || {
            if let Place::At(line) = place {
                self.segs.unclaim(line);
            }
        };
        let Ok(kw) = &KeyWords::new(key) else {
            give_back();
            return KeyWords::new(key).map(|_| ());
        };
        let mut lock = self.index.lock(hash);
        if self.find(hash, key, guard) != Some(old) {
            give_back();
            return Ok(()); // someone else moved it
        }
        let e = self.segs.entry(old);
        let n = EntryHeader::decode(e.load(0)).windows;
        let old_descs = raw_descriptors(&e, n);
        let old_descs = old_descs.get(..n).unwrap_or(&[]);
        let decoded: Vec<Descriptor> = old_descs
            .iter()
            .filter_map(|&d| Descriptor::decode(d))
            .collect();
        let Some(old_layout) = EntryLayout::new(&decoded, kw.len, self.b) else {
            give_back();
            return Err(Error::Corrupt {
                offset: old,
                reason: "entry descriptors",
            });
        };
        // Freeze the old entry: exact windows by their meta word, sliding ones by the frozen
        // bit of their head (which also gives the frozen copy to carry over).
        let mut frozen: [Option<(Snap, Slide)>; MAX_WINDOWS] = [None; MAX_WINDOWS];
        for ((d, &at), copy) in decoded.iter().zip(&old_layout.at).zip(frozen.iter_mut()) {
            if d.exact {
                if let Some(w) = e.w(at.head) {
                    // `None` means already frozen; otherwise we hold the lock, so no check is
                    // half-way through the ring when it freezes.
                    if cell::lock_meta(w) {
                        w.fetch_or(META_FROZEN, Ordering::AcqRel);
                        cell::unlock_meta(w);
                    }
                }
            } else if let Some(geo) = d.slide(self.b) {
                if let Some(win) = sliding_window(&e, at, &geo) {
                    *copy = Some((sliding::freeze(&win, &geo), geo));
                }
            }
        }
        let new_descs = limits.map_or(old_descs, Limits::descriptors);
        let written = self.write_entry(kw, new_descs, place, |i, out| {
            let nd = Descriptor::decode(*new_descs.get(i)?)?;
            // The same window in the old entry: same length and mode.
            let j = decoded
                .iter()
                .position(|d| d.window_ms == nd.window_ms && d.exact == nd.exact)?;
            let at = *old_layout.at.get(j)?;
            if nd.exact {
                let od = decoded.get(j)?;
                let ring = cell::read_ring(|k| e.w(k), at.head, od.cap);
                let mut times: Vec<u64> = ring
                    .slots
                    .iter()
                    .take(od.cap as usize)
                    .copied()
                    .filter(|&v| v != 0)
                    .collect();
                times.sort_unstable();
                let keep = times.len().saturating_sub(nd.cap as usize);
                let kept = times.get(keep..).unwrap_or(&[]);
                for (k, &t) in kept.iter().enumerate() {
                    *out.get_mut(1 + k)? = t;
                }
                *out.first_mut()? = (kept.len() as u64) % u64::from(nd.cap.max(1));
            } else {
                // The same counts in the new counter width (the limit changed).
                let (snap, old_geo) = frozen.get(j).copied().flatten()?;
                let words = snap.reshape(&old_geo, &nd.slide(self.b)?)?;
                for (dst, &v) in out.iter_mut().zip(words.iter()) {
                    *dst = v;
                }
            }
            Some(())
        });
        let new_line = match written {
            Ok(line) => line,
            Err(err) => {
                // The move failed (no space, or the new windows do not fit an entry): thaw the
                // old entry, so the key keeps working with the windows it has.
                for (d, &at) in decoded.iter().zip(&old_layout.at) {
                    if d.exact {
                        if let Some(w) = e.w(at.head) {
                            cell::thaw_meta(w);
                        }
                    } else if let Some(win) =
                        d.slide(self.b).and_then(|geo| sliding_window(&e, at, &geo))
                    {
                        sliding::thaw(&win);
                    }
                }
                return Err(err);
            }
        };
        lock.replace(hash, old, new_line, guard);
        self.clear_entry(old);
        self.segs.release_later(old, old_layout.lines, guard);
        Ok(())
    }
}
