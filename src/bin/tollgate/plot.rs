//! A small hand-written SVG renderer for the scaling figures: panels of line series on linear
//! or logarithmic axes, with ticks, labels and a legend. No plotting crate: the figures need
//! a few polylines, and a hand-written file stays readable in a diff.

use std::fmt::Write;

/// How values map onto an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear,
    /// Evenly spaced powers of ten (both bounds must be positive).
    Log,
}

/// One axis: its range, its scale and the ticks drawn on it.
#[derive(Debug, Clone)]
pub struct Axis {
    /// The axis title.
    pub label: String,
    /// Lowest value shown.
    pub min: f64,
    /// Highest value shown.
    pub max: f64,
    /// Linear or logarithmic.
    pub scale: Scale,
    /// Tick positions (in data units) and their labels.
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis from 0 to a round value at or above `max`, with round ticks.
    pub fn linear_from_zero(label: &str, max: f64) -> Axis {
        let ticks = nice_ticks(0.0, max, 5);
        let top = ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
        Axis {
            label: label.into(),
            min: 0.0,
            max: top,
            scale: Scale::Linear,
            ticks: ticks.into_iter().map(|t| (t, fmt_number(t))).collect(),
        }
    }

    /// A logarithmic axis covering `[min, max]` from one power of ten to another, a tick at
    /// each power, labelled with `label_of`.
    /// The range reaches a tenth of a decade past the outer ticks, so that points on them
    /// stay clear of the frame.
    pub fn log_decades(label: &str, min: f64, max: f64, label_of: fn(f64) -> String) -> Axis {
        let ticks = decade_ticks(min, max);
        let lo = ticks.first().copied().unwrap_or(1.0);
        let hi = ticks.last().copied().unwrap_or(10.0).max(lo * 10.0);
        let pad = 10f64.powf(0.1);
        Axis {
            label: label.into(),
            min: lo / pad,
            max: hi * pad,
            scale: Scale::Log,
            ticks: ticks.into_iter().map(|t| (t, label_of(t))).collect(),
        }
    }

    /// A linear axis over `[min, max]` with ticks at the given values only (categories such as
    /// thread counts).
    pub fn categories(label: &str, min: f64, max: f64, at: &[f64]) -> Axis {
        Axis {
            label: label.into(),
            min,
            max,
            scale: Scale::Linear,
            ticks: at.iter().map(|&t| (t, fmt_number(t))).collect(),
        }
    }

    /// Where `v` falls on the axis, from 0 (at `min`) to 1 (at `max`).
    pub fn fraction(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => (v - self.min) / (self.max - self.min),
            Scale::Log => (v.log10() - self.min.log10()) / (self.max.log10() - self.min.log10()),
        }
    }
}

/// One line of points with its legend entry.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour (any SVG colour).
    pub color: &'static str,
    /// Points in data units, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Spreads drawn as vertical bars: (x, low, high) in data units (may be empty).
    pub ranges: Vec<(f64, f64, f64)>,
    /// Print each value under its marker instead of above it (for the lower of two close
    /// lines).
    pub labels_below: bool,
}

/// One chart: a title, two axes, series, and optional labelled horizontal reference lines.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Shown above the chart.
    pub title: String,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The lines.
    pub series: Vec<Series>,
    /// Dashed horizontal lines at a value, with a label.
    pub references: Vec<(f64, String)>,
}

/// Round tick values covering `[min, max]`: steps of 1, 2 or 5 times a power of ten, about
/// `target` intervals, the first tick at or below `min` and the last at or above `max`.
pub fn nice_ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    let span = if max > min { max - min } else { 1.0 };
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (min / step).floor() as i64;
    let last = (max / step).ceil().max(first as f64 + 1.0) as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Powers of ten from the one at or below `min` to the one at or above `max`.
pub fn decade_ticks(min: f64, max: f64) -> Vec<f64> {
    if !(min > 0.0 && max > 0.0) {
        return vec![1.0, 10.0];
    }
    let lo = min.log10().floor() as i32;
    let hi = (max.log10().ceil() as i32).max(lo + 1);
    (lo..=hi).map(|e| 10f64.powi(e)).collect()
}

/// A count the way the figures name it: 1, 10, 100, 1k, 10k, 100k, 1M, 10M, 1G.
pub fn fmt_count(v: f64) -> String {
    let (div, suffix) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    format!("{}{suffix}", fmt_number(v / div))
}

/// A tick value without trailing zeros: 0, 2.5, 100, 0.25.
pub fn fmt_number(v: f64) -> String {
    let s = format!("{:.3}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Escape text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Width of one panel, in pixels.
const PANEL_W: f64 = 480.0;
/// Height of one panel.
const PANEL_H: f64 = 330.0;
/// Margin left of the plotting area (tick labels, axis title).
const LEFT: f64 = 72.0;
/// Margin right of the plotting area.
const RIGHT: f64 = 18.0;
/// Margin above the plotting area (panel title, legend).
const TOP: f64 = 50.0;
/// Margin below the plotting area (tick labels, axis title).
const BOTTOM: f64 = 52.0;
/// Height of the figure's title and caption.
const HEADER: f64 = 82.0;
/// Space around and between panels.
const GAP: f64 = 20.0;

/// Render panels on a grid of `columns`, under a title and a caption of up to two lines
/// (split at `\n`).
pub fn render(title: &str, caption: &str, panels: &[Panel], columns: usize) -> String {
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns);
    let width = GAP + columns as f64 * (PANEL_W + GAP);
    let height = HEADER + rows as f64 * (PANEL_H + GAP);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{GAP}" y="28" font-size="19" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, line) in caption.lines().take(2).enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{GAP}" y="{}" font-size="12.5" fill="#444">{}</text>"##,
            50 + 17 * i,
            esc(line)
        );
    }
    for (i, p) in panels.iter().enumerate() {
        let ox = GAP + (i % columns) as f64 * (PANEL_W + GAP);
        let oy = HEADER + (i / columns) as f64 * (PANEL_H + GAP);
        panel(&mut s, p, ox, oy);
    }
    s.push_str("</svg>\n");
    s
}

/// Draw one panel with its top left corner at (`ox`, `oy`).
fn panel(s: &mut String, p: &Panel, ox: f64, oy: f64) {
    let (x0, y0) = (ox + LEFT, oy + TOP);
    let (w, h) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let px = |v: f64| x0 + p.x.fraction(v) * w;
    let py = |v: f64| y0 + h - p.y.fraction(v) * h;
    let _ = writeln!(s, "<g>");
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="14.5" font-weight="bold">{}</text>"#,
        x0,
        oy + 20.0,
        esc(&p.title)
    );
    // Grid and ticks.
    for (v, label) in &p.y.ticks {
        let y = py(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3e3"/>"##,
            x0 + w
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11.5" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + 4.0,
            esc(label)
        );
    }
    for (v, label) in &p.x.ticks {
        let x = px(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#e3e3e3"/>"##,
            y0 + h
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11.5" text-anchor="middle">{}</text>"#,
            y0 + h + 16.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##
    );
    // Axis titles.
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="12.5" text-anchor="middle">{}</text>"#,
        x0 + w / 2.0,
        y0 + h + 38.0,
        esc(&p.x.label)
    );
    let (lx, ly) = (ox + 16.0, y0 + h / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{lx}" y="{ly:.1}" font-size="12.5" text-anchor="middle" transform="rotate(-90 {lx} {ly:.1})">{}</text>"#,
        esc(&p.y.label)
    );
    // Reference lines.
    for (v, label) in &p.references {
        let y = py(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#777" stroke-dasharray="5 4"/>"##,
            x0 + w
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#555">{}</text>"##,
            x0 + 6.0,
            y + 13.0,
            esc(label)
        );
    }
    // Series: spreads, a line, a marker and the value at each point.
    for ser in &p.series {
        for &(x, lo, hi) in &ser.ranges {
            let (x, y1, y2) = (px(x), py(lo), py(hi));
            let _ = writeln!(
                s,
                r#"<path d="M{x:.1},{y1:.1}V{y2:.1}M{:.1},{y1:.1}h8M{:.1},{y2:.1}h8" stroke="{}" stroke-width="1.2" fill="none" opacity="0.6"/>"#,
                x - 4.0,
                x - 4.0,
                ser.color
            );
        }
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            ser.color
        );
        for &(x, y) in &ser.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                px(x),
                py(y),
                ser.color
            );
            // Beside the marker, on the side away from the nearer edge.
            let right_half = p.x.fraction(x) > 0.5;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="10.5" fill="{}" text-anchor="{}">{}</text>"#,
                px(x) + if right_half { -7.0 } else { 7.0 },
                py(y) + if ser.labels_below { 15.0 } else { -6.0 },
                ser.color,
                if right_half { "end" } else { "start" },
                fmt_value(y)
            );
        }
    }
    // Legend: one row between the title and the plotting area.
    let mut lx = x0;
    for ser in &p.series {
        let y = oy + 38.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"/>"#,
            lx + 22.0,
            ser.color
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            lx + 27.0,
            y + 4.0,
            esc(&ser.name)
        );
        lx += 46.0 + 6.8 * ser.name.chars().count() as f64;
    }
    let _ = writeln!(s, "</g>");
}

/// A measured value as printed beside its marker: three significant digits at most.
pub fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 1234.0, 5), vec![0.0, 500.0, 1000.0, 1500.0]);
        assert_eq!(nice_ticks(0.0, 9.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let small = nice_ticks(0.0, 0.7, 5);
        assert_eq!(small.len(), 5, "{small:?}");
        for (i, t) in small.iter().enumerate() {
            assert!((t - i as f64 * 0.2).abs() < 1e-9, "{small:?}");
        }
        // A range of nothing still gets two ticks.
        assert_eq!(nice_ticks(0.0, 0.0, 5).len(), 2);
    }

    #[test]
    fn decades_cover_the_range() {
        assert_eq!(decade_ticks(1000.0, 1e7), vec![1e3, 1e4, 1e5, 1e6, 1e7]);
        assert_eq!(
            decade_ticks(67.1, 4194.3),
            vec![10.0, 100.0, 1000.0, 10000.0]
        );
        assert_eq!(decade_ticks(100.0, 100.0), vec![100.0, 1000.0]);
        assert_eq!(decade_ticks(0.0, 5.0), vec![1.0, 10.0]);
    }

    #[test]
    fn counts_and_numbers_print_short() {
        let names: Vec<String> = [1.0, 1e3, 1e4, 1e5, 1e6, 1e7, 2.5e6]
            .iter()
            .map(|&v| fmt_count(v))
            .collect();
        assert_eq!(names, ["1", "1k", "10k", "100k", "1M", "10M", "2.5M"]);
        assert_eq!(fmt_number(0.0), "0");
        assert_eq!(fmt_number(0.6000000000000001), "0.6");
        assert_eq!(fmt_number(1500.0), "1500");
        assert_eq!(fmt_value(1234.4), "1234");
        assert_eq!(fmt_value(67.12), "67.1");
        assert_eq!(fmt_value(3.456), "3.46");
    }

    #[test]
    fn axes_place_values() {
        let lin = Axis::linear_from_zero("ns", 90.0);
        assert_eq!(lin.max, 100.0);
        assert!((lin.fraction(25.0) - 0.25).abs() < 1e-12);
        let log = Axis::log_decades("keys", 1000.0, 1e7, fmt_count);
        assert!((log.fraction(1e5) - 0.5).abs() < 1e-12);
        // A tenth of a decade of room each side of 4 decades.
        assert!((log.fraction(1e3) - 0.1 / 4.2).abs() < 1e-12);
        assert_eq!(log.ticks.first().map(|t| t.1.as_str()), Some("1k"));
        assert_eq!(log.ticks.last().map(|t| t.1.as_str()), Some("10M"));
    }

    #[test]
    fn a_rendered_panel_has_its_text_escaped_and_its_points() {
        let p = Panel {
            title: "cost <per> check & key".into(),
            x: Axis::log_decades("keys", 1000.0, 1e4, fmt_count),
            y: Axis::linear_from_zero("ns", 200.0),
            series: vec![Series {
                name: "check".into(),
                color: "#1f77b4",
                points: vec![(1000.0, 100.0), (1e4, 200.0)],
                ranges: vec![(1000.0, 50.0, 150.0)],
                labels_below: false,
            }],
            references: vec![(64.0, "one line".into())],
        };
        let svg = render("t", "c1\nc2", &[p], 2);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("cost &lt;per&gt; check &amp; key"));
        // x: 1k and 10k a tenth of a decade inside the edges (1.2 decades shown); y: 100 ns
        // half way up a 0..200 axis.
        let w = PANEL_W - LEFT - RIGHT;
        let (x0, x1) = (GAP + LEFT + w / 12.0, GAP + LEFT + w * 11.0 / 12.0);
        let h = PANEL_H - TOP - BOTTOM;
        let mid = HEADER + TOP + h / 2.0;
        assert!(
            svg.contains(&format!(r#"<circle cx="{x0:.1}" cy="{mid:.1}""#)),
            "{svg}"
        );
        assert!(svg.contains(&format!(r#"cx="{x1:.1}""#)), "{svg}");
        assert!(svg.contains(">c1</text>") && svg.contains(">c2</text>"));
        assert!(svg.contains("one line") && svg.contains("stroke-dasharray"));
        // The spread bar runs from 150 ns (a quarter down) to 50 ns (three quarters down).
        let (top, bottom) = (HEADER + TOP + h / 4.0, HEADER + TOP + 3.0 * h / 4.0);
        assert!(
            svg.contains(&format!("M{x0:.1},{bottom:.1}V{top:.1}")),
            "{svg}"
        );
    }
}
