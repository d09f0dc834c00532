//! The four panels of `scaling.svg`, from the measured rows.

use crate::plot::{self, Axis, Panel, Series};

use super::row::Row;
use super::{Plan, THREADS};

/// A point of a series: (x, y).
type Point2 = (f64, f64);

/// A spread at x: (x, low, high).
type Spread = (f64, f64, f64);

/// The colours of the first and second series of a panel.
const BLUE: &str = "#1f6fb4";
const RED: &str = "#d03a2c";

/// The four panels: cost vs keys, bytes per key vs keys, throughput vs threads, cost vs
/// windows.
pub(super) fn panels(plan: &Plan, rows: &[Row]) -> Vec<Panel> {
    let find = |k: u64, w: usize, t: usize| {
        rows.iter()
            .find(|r| r.keys == k && r.windows == w && r.threads == t)
    };
    let max_of = |s: &[Series]| {
        s.iter()
            .flat_map(|s| {
                s.points
                    .iter()
                    .map(|p| p.1)
                    .chain(s.ranges.iter().map(|r| r.2))
            })
            .fold(0.0, f64::max)
    };
    // Time per check: the median and the fastest and slowest round, at `x`.
    let cost = |x: f64, r: &Row| ((x, r.ns_per_check), (x, r.ns_min, r.ns_max));
    let series = |name: String, color, below, data: Vec<(Point2, Spread)>| {
        let (points, ranges) = data.into_iter().unzip();
        Series {
            name,
            color,
            points,
            ranges,
            labels_below: below,
        }
    };
    let key_rows: Vec<&Row> = plan.keys.iter().filter_map(|&k| find(k, 2, 1)).collect();
    let (kmin, kmax) = (
        plan.keys.first().copied().unwrap_or(1) as f64,
        plan.keys.last().copied().unwrap_or(10) as f64,
    );
    let keys_axis =
        || Axis::log_decades("keys in the store (log scale)", kmin, kmax, plot::fmt_count);

    let per_key = vec![
        series(
            "existing key".into(),
            BLUE,
            true,
            key_rows.iter().map(|r| cost(r.keys as f64, r)).collect(),
        ),
        Series {
            name: "new key (the inserts)".into(),
            color: RED,
            points: key_rows
                .iter()
                .map(|r| (r.keys as f64, r.insert_ns))
                .collect(),
            ranges: vec![],
            labels_below: false,
        },
    ];
    let p1 = Panel {
        title: "ns per check vs keys (1 thread, 2 windows)".into(),
        x: keys_axis(),
        y: Axis::linear_from_zero("ns per check", max_of(&per_key) * 1.1),
        series: per_key,
        references: vec![],
    };

    let line = |name: &str, color, below, pts: Vec<(f64, f64)>| Series {
        name: name.into(),
        color,
        points: pts,
        ranges: vec![],
        labels_below: below,
    };
    let bytes = vec![
        line(
            "file size / keys",
            BLUE,
            true,
            key_rows
                .iter()
                .map(|r| (r.keys as f64, r.file_per_key()))
                .collect(),
        ),
        line(
            "RSS growth / keys",
            RED,
            false,
            key_rows
                .iter()
                .filter(|r| r.rss_bytes > 0)
                .map(|r| (r.keys as f64, r.rss_per_key()))
                .collect(),
        ),
    ];
    let (bmin, bmax) = bytes
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold((64.0f64, 64.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v * 1.5))
        });
    let p2 = Panel {
        title: "bytes per key vs keys (2 windows, 32-byte keys)".into(),
        x: keys_axis(),
        y: Axis::log_decades("bytes per key (log scale)", bmin, bmax, plot::fmt_number),
        series: bytes,
        references: vec![(64.0, "64 B: one entry line".into())],
    };

    let colors = [BLUE, RED];
    let threads: Vec<Series> = plan
        .thread_sets
        .iter()
        .zip(colors)
        .map(|(&k, color)| {
            series(
                format!("{} keys", plot::fmt_count(k as f64)),
                color,
                false,
                THREADS
                    .iter()
                    .filter_map(|&t| find(k, 2, t).map(|r| (t as f64, r)))
                    .map(|(t, r)| {
                        // Throughput of the median, slowest and fastest round.
                        let rate = |ns: f64| t * 1e3 / ns.max(1e-9);
                        ((t, r.mchecks_per_s), (t, rate(r.ns_max), rate(r.ns_min)))
                    })
                    .collect(),
            )
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let p3 = Panel {
        title: format!("throughput vs threads (2 windows, {cores} cores)"),
        x: Axis::categories("threads", 0.6, 4.4, &[1.0, 2.0, 4.0]),
        y: Axis::linear_from_zero("million checks per second", max_of(&threads) * 1.1),
        series: threads,
        references: vec![],
    };

    let windows: Vec<Series> = plan
        .window_sets
        .iter()
        .zip(colors)
        .map(|(&k, color)| {
            series(
                if k == 1 {
                    "1 key (hot)".into()
                } else {
                    format!("{} keys", plot::fmt_count(k as f64))
                },
                color,
                false,
                (1..=4)
                    .filter_map(|w| find(k, w, 1).map(|r| cost(w as f64, r)))
                    .collect(),
            )
        })
        .collect();
    let p4 = Panel {
        title: "ns per check vs windows per key (1 thread)".into(),
        x: Axis::categories("windows per key", 0.6, 4.4, &[1.0, 2.0, 3.0, 4.0]),
        y: Axis::linear_from_zero("ns per check", max_of(&windows) * 1.1),
        series: windows,
        references: vec![],
    };
    vec![p1, p2, p3, p4]
}
