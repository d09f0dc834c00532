//! Walking the live entries of a store, for [`Store::visit`](crate::Store::visit),
//! [`Store::verify_with`](crate::Store::verify_with) and the `tollgate` command. Not on any request path.

use std::time::Duration;

use super::core::Core;
use super::entry::{entry_windows, sliding_window};
use crate::idempotency::record::{
    unpack, IdemLayout, ResponseMeta, ST_COMPLETING, ST_DEAD, ST_DONE, ST_INFLIGHT,
};
use crate::inspect::{EntryView, RecordState, VerifyReport, WindowView};
use crate::limit::MAX_WINDOWS;
use crate::storage::format::{
    EntryHeader, SegmentHeader, BLOB_SEGMENT, KIND_IDEM, KIND_PERMITS, KIND_VERSION, KIND_WINDOWS,
};
use crate::window::sliding;

impl Core {
    /// Call `f(line, kind)` for every entry the index reaches.
    pub(crate) fn for_each_live(&self, f: impl FnMut(u64, u8)) {
        self.for_each_live_with(f, &mut |_, _| {});
    }

    /// [`Core::for_each_live`], calling `progress(done, total)` after each segment (`total`:
    /// the segments mapped when the walk starts; response segments count, with no entry).
    pub(crate) fn for_each_live_with(
        &self,
        mut f: impl FnMut(u64, u8),
        progress: &mut dyn FnMut(u64, u64),
    ) {
        let guard = crossbeam_epoch::pin();
        let seg_lines = self.segs.seg_lines();
        let total = self.segs.count();
        for seg in 0..total {
            self.walk_segment(seg, seg_lines, &mut f, &guard);
            progress(seg as u64 + 1, total as u64);
        }
    }

    /// The live entries of segment `seg`, for [`Core::for_each_live_with`].
    fn walk_segment(
        &self,
        seg: usize,
        seg_lines: u64,
        f: &mut impl FnMut(u64, u8),
        guard: &crossbeam_epoch::Guard,
    ) {
        let h = SegmentHeader::decode(&self.segs.read_segment_header(seg), seg as u32);
        let class = match h {
            Ok(Some(h)) if h.entry_lines != BLOB_SEGMENT => u64::from(h.entry_lines),
            _ => return,
        };
        let end = self.segs.scan_end(seg);
        let mut at = 1;
        while at + class <= end {
            let line = seg as u64 * seg_lines + at;
            at += class;
            let head = self.segs.entry(line).load(0);
            let kind = EntryHeader::decode(head).kind;
            let known = matches!(kind, KIND_WINDOWS | KIND_IDEM | KIND_VERSION | KIND_PERMITS);
            if head == 0 || !known {
                continue;
            }
            if self.index_points_at(line, kind, guard) {
                f(line, kind);
            }
        }
    }

    pub(crate) fn visit(&self, now_ms: u64, f: &mut dyn FnMut(EntryView<'_>)) {
        self.for_each_live(|line, kind| {
            let e = self.segs.entry(line);
            let h = EntryHeader::decode(e.load(0));
            let (key_len, n) = (h.key_len, h.windows);
            let (key_buf, _) = self.entry_key(line);
            let key = key_buf.get(..key_len).unwrap_or(&[]);
            if kind == KIND_VERSION {
                let (epoch, number) = self.version_view(line, key_len);
                f(EntryView::Version { key, epoch, number });
            } else if kind == KIND_PERMITS {
                let (held, latest) = self.permits_view(line, key_len, now_ms);
                f(EntryView::Permits {
                    key,
                    held,
                    latest_deadline_ms: latest,
                    expired: held == 0,
                });
            } else if kind == KIND_WINDOWS {
                let mut views = [WindowView {
                    window: Duration::ZERO,
                    exact: false,
                    used: 0,
                }; MAX_WINDOWS];
                let mut expired = true;
                let Some(windows) = entry_windows(&e, self.b) else {
                    return;
                };
                for (v, &(at, d)) in views.iter_mut().zip(windows.iter()) {
                    let used = if d.exact {
                        (0..d.cap as usize)
                            .filter(|&k| {
                                let t = e.load(at.head + 1 + k);
                                t != 0 && (t - 1).saturating_add(d.window_ms) > now_ms
                            })
                            .count() as u32
                    } else {
                        d.slide(self.b)
                            .and_then(|geo| {
                                let win = sliding_window(&e, at, &geo)?;
                                let used = sliding::snapshot(&win, &geo).used(&geo, now_ms);
                                u32::try_from(used).ok()
                            })
                            .unwrap_or(0)
                    };
                    expired &= used == 0;
                    *v = WindowView {
                        window: Duration::from_millis(d.window_ms),
                        exact: d.exact,
                        used,
                    };
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
                        .then(|| ResponseMeta::decode(e.load(l.state_at + 2)).len),
                    expired: state_view == RecordState::Vacant
                        || (matches!(state_view, RecordState::InFlight | RecordState::Completed)
                            && now_ms >= deadline_ms),
                });
            }
        });
    }

    /// Check every live entry and read back every stored response, calling `progress(done,
    /// total)` after each segment.
    pub(crate) fn verify_with(&self, progress: &mut dyn FnMut(u64, u64)) -> VerifyReport {
        let mut report = VerifyReport::default();
        let core = self;
        core.for_each_live_with(
            |line, kind| {
                report.entries += 1;
                if kind == KIND_IDEM {
                    let e = core.segs.entry(line);
                    let l = IdemLayout::new(EntryHeader::decode(e.load(0)).key_len);
                    if unpack(e.load(l.state_at)).0 == ST_DONE {
                        match core.read_response_at(line) {
                            Ok(_) => report.responses += 1,
                            Err(err) => report
                                .problems
                                .push((core.segs.file_offset(line), err.to_string())),
                        }
                    }
                } else if kind == KIND_VERSION || kind == KIND_PERMITS {
                    // Their immutable part is checked again (the crc over key and epoch);
                    // their live words take any value.
                    let e = core.segs.entry(line);
                    let fine = if kind == KIND_VERSION {
                        core.version_entry_key(&e).is_some()
                    } else {
                        core.permits_entry_key(&e).is_some()
                    };
                    if !fine {
                        report.problems.push((
                            core.segs.file_offset(line),
                            "entry checksum mismatch".into(),
                        ));
                    }
                } else if kind == KIND_WINDOWS {
                    let e = core.segs.entry(line);
                    match entry_windows(&e, core.b) {
                        Some(windows) => {
                            for &(at, d) in windows.iter() {
                                let consistent = d.exact
                                    || d.slide(core.b).is_some_and(|geo| {
                                        sliding_window(&e, at, &geo).is_some_and(|win| {
                                            sliding::snapshot(&win, &geo).is_consistent(&geo)
                                        })
                                    });
                                if !consistent {
                                    report.problems.push((
                                        core.segs.file_offset(line),
                                        "invalid window word".into(),
                                    ));
                                }
                            }
                        }
                        None => {
                            report.problems.push((
                                core.segs.file_offset(line),
                                "invalid window descriptor".into(),
                            ));
                        }
                    }
                }
            },
            progress,
        );
        report
    }
}
