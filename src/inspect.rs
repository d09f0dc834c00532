//! Looking inside a store: every live entry, and a full verification. For tools (`tollgate
//! stat`, `dump`, `verify`) and operators; not on any request path.

use std::time::Duration;

use crate::format::{KIND_IDEM, KIND_WINDOWS};
use crate::idempotency::engine::{
    unpack, IdemLayout, ST_COMPLETING, ST_DEAD, ST_DONE, ST_INFLIGHT,
};
use crate::limit::Descriptor;
use crate::store::{Core, Store};
use crate::window;

/// One window of a window entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowView {
    /// The window's length.
    pub window: Duration,
    /// Whether it is an exact (timestamp log) window.
    pub exact: bool,
    /// Units counted in it at the time of the visit.
    pub used: u32,
}

/// The state of an idempotency record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// Aborted: the key is free.
    Vacant,
    /// A lease is out.
    InFlight,
    /// Completed: a response is stored.
    Completed,
    /// Being completed or replaced at this instant.
    Changing,
}

/// A live entry, as [`Store::visit`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryView<'a> {
    /// Sliding-window counters of one key.
    Windows {
        /// The key.
        key: &'a [u8],
        /// Its windows.
        windows: &'a [WindowView],
        /// True when every window has aged out (the compactor will unlink it).
        expired: bool,
    },
    /// An idempotency record.
    Idempotency {
        /// The scope (token or account).
        scope: &'a [u8],
        /// The Idempotency-Key.
        key: uuid::Uuid,
        /// Its state.
        state: RecordState,
        /// Fencing number of the current or last lease.
        fence: u32,
        /// Lease expiry (in flight) or record expiry (completed), ms since the Unix epoch.
        deadline_ms: u64,
        /// Encoded size of the stored response (completed records).
        response_len: Option<u32>,
        /// True when past its deadline (the compactor will unlink it).
        expired: bool,
    },
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Live entries checked.
    pub entries: u64,
    /// Stored responses read back and checked (crc32 and encoding).
    pub responses: u64,
    /// Problems, each with the byte offset in the file and what failed.
    pub problems: Vec<(u64, String)>,
}

impl Store {
    /// Call `f` for every live entry (entries the index reaches), as of `now_ms`.
    pub fn visit(&self, now_ms: u64, mut f: impl FnMut(EntryView<'_>)) {
        self.core.visit(now_ms, &mut f);
    }

    /// Check every live entry and read back every stored response. Entries that failed their
    /// checks when the store was opened are in [`Store::open_report`]; this finds what went
    /// wrong since (or in responses, which are only checked when replayed).
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        let core = &self.core;
        core.for_each_live(|line, kind| {
            report.entries += 1;
            if kind == KIND_IDEM {
                let e = core.segs.entry(line);
                let key_len = (e.load(0) & 0xFF) as usize;
                let l = IdemLayout::new(key_len);
                if unpack(e.load(l.state_at)).0 == ST_DONE {
                    match core.read_response_at(line) {
                        Ok(_) => report.responses += 1,
                        Err(err) => report
                            .problems
                            .push((core.segs.file_offset(line), err.to_string())),
                    }
                }
            } else if kind == KIND_WINDOWS {
                let e = core.segs.entry(line);
                let h = e.load(0);
                let n = ((h >> 8) & 0xFF) as usize;
                let key_len = (h & 0xFF) as usize;
                let mut at = 1 + n.div_ceil(2) + key_len.div_ceil(8);
                for i in 0..n {
                    match Descriptor::decode((e.load(1 + i / 2) >> ((i % 2) * 32)) as u32) {
                        Some(d) => {
                            if !d.exact
                                && !window::word_is_valid(e.load(at) & !window::FROZEN, core.kmax)
                            {
                                report.problems.push((
                                    core.segs.file_offset(line),
                                    "invalid window word".into(),
                                ));
                            }
                            at += d.words();
                        }
                        None => {
                            report.problems.push((
                                core.segs.file_offset(line),
                                "invalid window descriptor".into(),
                            ));
                            break;
                        }
                    }
                }
            }
        });
        report
    }
}

impl Core {
    /// Call `f(line, kind)` for every entry the index reaches.
    pub(crate) fn for_each_live(&self, mut f: impl FnMut(u64, u8)) {
        let guard = crossbeam_epoch::pin();
        let seg_lines = self.segs.seg_lines();
        for seg in 0..self.segs.count() {
            let h = crate::format::SegmentHeader::decode(
                &self.segs.read_segment_header(seg),
                seg as u32,
            );
            let class = match h {
                Ok(Some(h)) if h.entry_lines != crate::format::BLOB_SEGMENT => {
                    u64::from(h.entry_lines)
                }
                _ => continue,
            };
            let end = self.segs.scan_end(seg);
            let mut at = 1;
            while at + class <= end {
                let line = seg as u64 * seg_lines + at;
                at += class;
                let head = self.segs.entry(line).load(0);
                let kind = (head >> 16) as u8;
                if head == 0 || (kind != KIND_WINDOWS && kind != KIND_IDEM) {
                    continue;
                }
                if self.index_points_at(line, kind, &guard) {
                    f(line, kind);
                }
            }
        }
    }

    fn visit(&self, now_ms: u64, f: &mut dyn FnMut(EntryView<'_>)) {
        self.for_each_live(|line, kind| {
            let e = self.segs.entry(line);
            let h = e.load(0);
            let key_len = (h & 0xFF) as usize;
            let n = ((h >> 8) & 0xFF) as usize;
            let key_at = 1 + n.div_ceil(2);
            let (key_buf, _) = self.entry_key(line);
            let key = key_buf.get(..key_len).unwrap_or(&[]);
            if kind == KIND_WINDOWS {
                let mut views = [WindowView {
                    window: Duration::ZERO,
                    exact: false,
                    used: 0,
                }; crate::MAX_WINDOWS];
                let mut at = key_at + key_len.div_ceil(8);
                let mut expired = true;
                for (i, v) in views.iter_mut().enumerate().take(n) {
                    let Some(d) = Descriptor::decode((e.load(1 + i / 2) >> ((i % 2) * 32)) as u32)
                    else {
                        return;
                    };
                    let used = if d.exact {
                        (0..d.cap as usize)
                            .filter(|&k| {
                                let t = e.load(at + 1 + k);
                                t != 0 && (t - 1).saturating_add(d.window_ms) > now_ms
                            })
                            .count() as u32
                    } else {
                        window::word_count(
                            e.load(at),
                            d.window_ms,
                            self.kmax,
                            now_ms,
                            self.seen_ms(now_ms),
                        )
                    };
                    expired &= used == 0;
                    *v = WindowView {
                        window: Duration::from_millis(d.window_ms),
                        exact: d.exact,
                        used,
                    };
                    at += d.words();
                }
                f(EntryView::Windows {
                    key,
                    windows: views.get(..n).unwrap_or(&[]),
                    expired,
                });
            } else {
                let l = IdemLayout::new(key_len);
                let (state, fence, dl) = unpack(e.load(l.state_at));
                let scope_len = key.first().copied().unwrap_or(0) as usize;
                let scope = key.get(1..1 + scope_len).unwrap_or(&[]);
                let uuid = key
                    .get(1 + scope_len..1 + scope_len + 16)
                    .and_then(|b| uuid::Uuid::from_slice(b).ok())
                    .unwrap_or_default();
                let state_view = match state {
                    ST_DONE => RecordState::Completed,
                    ST_INFLIGHT => RecordState::InFlight,
                    ST_COMPLETING | ST_DEAD => RecordState::Changing,
                    _ => RecordState::Vacant,
                };
                let deadline_ms = dl.saturating_mul(1000);
                f(EntryView::Idempotency {
                    scope,
                    key: uuid,
                    state: state_view,
                    fence,
                    deadline_ms,
                    response_len: (state == ST_DONE)
                        .then(|| (e.load(l.state_at + 2) & 0xFFFF_FFFF) as u32),
                    expired: state_view == RecordState::Vacant
                        || (matches!(state_view, RecordState::InFlight | RecordState::Completed)
                            && now_ms >= deadline_ms),
                });
            }
        });
    }
}
