//! One measured point, its CSV line, and the combination of several runs of it.

use super::BoxResult;

/// What one point measured.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) keys: u64,
    pub(super) windows: usize,
    pub(super) threads: usize,
    /// Checks per thread per round.
    pub(super) checks: u64,
    pub(super) rounds: u32,
    /// Processes (runs of the plan) the figures come from.
    pub(super) runs: u32,
    /// Time per check on one thread (round time / checks per thread): median, and the fastest
    /// and slowest round of all runs, ns.
    pub(super) ns_per_check: f64,
    pub(super) ns_min: f64,
    pub(super) ns_max: f64,
    /// Checks per second of all threads together in the median round, millions (the median
    /// of the runs, as for every other figure).
    pub(super) mchecks_per_s: f64,
    /// Time to insert the keys (first check of each), per key, ns.
    pub(super) insert_ns: f64,
    /// The store file's size after the inserts.
    pub(super) file_bytes: u64,
    /// Growth of the process's resident set from before opening the store to after the
    /// inserts (mapped file pages and the in-memory index).
    pub(super) rss_bytes: u64,
    /// Timed checks rejected (expected 0: the limits are never reached).
    pub(super) rejected: u64,
    /// 1-minute load average when the point finished (this point's own threads included).
    pub(super) load1: f64,
    /// CPU time used by everything but this process during the timed rounds (other
    /// processes, the kernel's work for them, steal), in cores: 0 on a quiet machine, up to
    /// the number of cores.
    pub(super) other_cores: f64,
}

/// The CSV header, one column per field; bytes per key are derived columns.
pub(super) const CSV_HEADER: &str = "keys,windows,threads,checks_per_thread,rounds,runs,ns_per_check,ns_min,ns_max,mchecks_per_s,insert_ns_per_key,file_bytes,rss_growth_bytes,file_bytes_per_key,rss_bytes_per_key,rejected,load1,other_cpu_cores";

impl Row {
    /// File size over keys.
    pub(super) fn file_per_key(&self) -> f64 {
        self.file_bytes as f64 / self.keys as f64
    }

    /// RSS growth over keys.
    pub(super) fn rss_per_key(&self) -> f64 {
        self.rss_bytes as f64 / self.keys as f64
    }

    /// One CSV line (no newline) in the order of [`CSV_HEADER`].
    pub(super) fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{:.1},{:.1},{:.1},{:.3},{:.1},{},{},{:.1},{:.1},{},{:.2},{:.2}",
            self.keys,
            self.windows,
            self.threads,
            self.checks,
            self.rounds,
            self.runs,
            self.ns_per_check,
            self.ns_min,
            self.ns_max,
            self.mchecks_per_s,
            self.insert_ns,
            self.file_bytes,
            self.rss_bytes,
            self.file_per_key(),
            self.rss_per_key(),
            self.rejected,
            self.load1,
            self.other_cores
        )
    }

    /// Parse a line written by [`Row::to_csv`] (the derived columns are recomputed).
    pub(super) fn from_csv(line: &str) -> BoxResult<Row> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != CSV_HEADER.split(',').count() {
            return Err(format!("a scaling row has {} fields: {line:?}", f.len()).into());
        }
        let g = |i: usize| f.get(i).copied().unwrap_or("");
        Ok(Row {
            keys: g(0).parse()?,
            windows: g(1).parse()?,
            threads: g(2).parse()?,
            checks: g(3).parse()?,
            rounds: g(4).parse()?,
            runs: g(5).parse()?,
            ns_per_check: g(6).parse()?,
            ns_min: g(7).parse()?,
            ns_max: g(8).parse()?,
            mchecks_per_s: g(9).parse()?,
            insert_ns: g(10).parse()?,
            file_bytes: g(11).parse()?,
            rss_bytes: g(12).parse()?,
            rejected: g(15).parse()?,
            load1: g(16).parse()?,
            other_cores: g(17).parse()?,
        })
    }
}

/// The median of `v` (the upper one of an even count; 0 for none).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One row from several runs of the same point: the median of each figure, the fastest and
/// slowest round of all, every rejection, and the busiest the machine was.
pub(super) fn combine(runs: &[Row]) -> Option<Row> {
    let first = runs.first()?;
    let med = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
    Some(Row {
        runs: runs.iter().map(|r| r.runs).sum(),
        ns_per_check: med(|r| r.ns_per_check),
        ns_min: runs.iter().map(|r| r.ns_min).fold(f64::INFINITY, f64::min),
        ns_max: runs.iter().map(|r| r.ns_max).fold(0.0, f64::max),
        mchecks_per_s: med(|r| r.mchecks_per_s),
        insert_ns: med(|r| r.insert_ns),
        file_bytes: med(|r| r.file_bytes as f64) as u64,
        rss_bytes: med(|r| r.rss_bytes as f64) as u64,
        rejected: runs.iter().map(|r| r.rejected).sum(),
        load1: runs.iter().map(|r| r.load1).fold(0.0, f64::max),
        other_cores: runs.iter().map(|r| r.other_cores).fold(0.0, f64::max),
        ..first.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_the_csv() {
        let r = Row {
            keys: 1_000_000,
            windows: 2,
            threads: 4,
            checks: 2_000_000,
            rounds: 5,
            runs: 1,
            ns_per_check: 812.5,
            ns_min: 800.1,
            ns_max: 830.0,
            mchecks_per_s: 2.462,
            insert_ns: 512.3,
            file_bytes: 67_112_960,
            rss_bytes: 79_400_000,
            rejected: 0,
            load1: 1.25,
            other_cores: 0.5,
        };
        let line = r.to_csv();
        assert_eq!(line.split(',').count(), CSV_HEADER.split(',').count());
        assert!(line.contains(",67.1,79.4,"), "{line}");
        assert_eq!(Row::from_csv(&line).unwrap(), r);
        assert!(Row::from_csv("1,2,3").is_err());
    }

    #[test]
    fn runs_combine_into_medians_and_extremes() {
        let run = |ns: f64, lo: f64, hi: f64, others: f64| Row {
            keys: 1_000,
            windows: 2,
            threads: 1,
            checks: 10,
            rounds: 5,
            runs: 1,
            ns_per_check: ns,
            ns_min: lo,
            ns_max: hi,
            mchecks_per_s: 1e3 / ns,
            insert_ns: ns * 2.0,
            file_bytes: 4_198_400,
            rss_bytes: 300_000,
            rejected: 0,
            load1: others,
            other_cores: others,
        };
        let r = combine(&[
            run(100.0, 90.0, 120.0, 0.0),
            run(300.0, 250.0, 310.0, 0.9),
            run(150.0, 140.0, 160.0, 0.1),
        ])
        .unwrap();
        assert_eq!(r.runs, 3);
        assert_eq!((r.ns_per_check, r.ns_min, r.ns_max), (150.0, 90.0, 310.0));
        assert_eq!(r.insert_ns, 300.0);
        assert_eq!(r.mchecks_per_s, 1e3 / 150.0);
        assert_eq!(r.other_cores, 0.9);
        assert_eq!(combine(&[]), None);
    }
}
