//! The results: one markdown table per workload, one JSON object per line, in the order measured.
//!
//! Each figure is measured once per round, several rounds (peers interleaved within a round, so
//! all of them see the same moments of a noisy machine); a table shows the median, min and max
//! over the rounds of its first metric, the median of the others, and, for every ringpool peer
//! in the table, the ratio of ringpool's median to each row's median, oriented so that a ratio
//! above 1 means ringpool is better (faster, or shorter).

use std::fmt::Write as _;

use serde_json::json;

/// A kind of figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric {
    /// Its id in the JSON lines.
    pub id: &'static str,
    /// Its column title.
    pub title: &'static str,
    /// Its unit in the JSON lines.
    pub unit: &'static str,
    /// Whether more is better.
    pub higher_is_better: bool,
}

/// Messages per second (one-way).
pub const MSGS: Metric = Metric { id: "msgs_per_s", title: "msgs/s", unit: "msg/s", higher_is_better: true };
/// Payload bytes per second (one-way).
pub const BYTES: Metric = Metric { id: "bytes_per_s", title: "bytes/s", unit: "B/s", higher_is_better: true };
/// Time per message (one-way: 1 / msgs/s).
pub const NS_PER_MSG: Metric = Metric { id: "ns_per_msg", title: "per msg", unit: "ns", higher_is_better: false };
/// Median of individually timed round trips.
pub const RTT_MEDIAN: Metric = Metric { id: "rtt_median", title: "round trip", unit: "ns", higher_is_better: false };
/// 99th percentile of individually timed round trips.
pub const RTT_P99: Metric = Metric { id: "rtt_p99", title: "p99", unit: "ns", higher_is_better: false };
/// Pool tasks per second.
pub const TASKS: Metric = Metric { id: "tasks_per_s", title: "tasks/s", unit: "tasks/s", higher_is_better: true };
/// Wall time of a whole scene.
pub const WALL_MS: Metric = Metric { id: "wall_ms", title: "wall time", unit: "ms", higher_is_better: false };
/// Failures counted (the "what goes wrong" table).
pub const FAILURES: Metric = Metric { id: "failures", title: "failures", unit: "count", higher_is_better: false };
/// Trials behind a count of failures.
pub const TRIALS: Metric = Metric { id: "trials", title: "trials", unit: "count", higher_is_better: false };
/// Time per call.
pub const NS_PER_CALL: Metric = Metric { id: "ns_per_call", title: "per call", unit: "ns", higher_is_better: false };

/// What produced a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One of ringpool's own.
    Ours,
    /// A Rust peer.
    Peer,
    /// Python's multiprocessing.
    Python,
    /// A physical limit.
    Floor,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Ours => "ringpool",
            Kind::Peer => "rust-peer",
            Kind::Python => "python",
            Kind::Floor => "floor",
        }
    }
}

/// One row: one peer in one workload.
#[derive(Debug)]
pub struct Row {
    /// What `--only` matches, and the JSON's `peer`.
    pub peer: String,
    /// The name shown in the table.
    pub label: String,
    /// What produced it.
    pub kind: Kind,
    /// One list of per-round values per metric of the bench.
    pub values: Vec<Vec<f64>>,
    /// Why a round produced nothing.
    pub failures: Vec<String>,
}

/// One workload's table.
#[derive(Debug)]
pub struct Bench {
    /// A short id, for the JSON lines.
    pub id: String,
    /// The table's title.
    pub title: String,
    /// The message size, for the one-way benches (the plot's x axis).
    pub size: Option<usize>,
    /// The metrics, the first one the table's main figure.
    pub metrics: Vec<Metric>,
    /// What the reader needs to know to read it.
    pub note: String,
    /// The rows, in the order first measured.
    pub rows: Vec<Row>,
    /// Whether ringpool's rows add ratio columns (not for counts of failures).
    pub ratios: bool,
}

/// Median, min and max.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

/// The statistics of `values`, or `None` when there are none.
pub fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(Stats { median, min: v[0], max: v[n - 1] })
}

impl Bench {
    /// A table with these metrics.
    pub fn new(id: &str, title: &str, size: Option<usize>, metrics: &[Metric], note: &str) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            size,
            metrics: metrics.to_vec(),
            note: note.into(),
            rows: Vec::new(),
            ratios: true,
        }
    }

    fn row_mut(&mut self, peer: &str, label: &str, kind: Kind) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.peer == peer && r.label == label) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            peer: peer.into(),
            label: label.into(),
            kind,
            values: vec![Vec::new(); self.metrics.len()],
            failures: Vec::new(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// Adds one round's figures of one peer (metrics the bench does not have are ignored).
    pub fn record(&mut self, peer: &str, label: &str, kind: Kind, figures: &[(Metric, f64)]) {
        let metrics = self.metrics.clone();
        let row = self.row_mut(peer, label, kind);
        for (m, v) in figures {
            if let Some(i) = metrics.iter().position(|x| x == m) {
                row.values[i].push(*v);
            }
        }
    }

    /// Notes that one round of one peer failed.
    pub fn fail(&mut self, peer: &str, label: &str, kind: Kind, why: &str) {
        self.row_mut(peer, label, kind).failures.push(why.into());
    }

    fn primary(&self, row: &Row) -> Option<Stats> {
        stats(&row.values[0])
    }
}

/// How a value of `unit` is written in the tables.
pub fn human(value: f64, unit: &str) -> String {
    fn sig3(x: f64) -> String {
        let a = x.abs();
        if a >= 100.0 {
            format!("{x:.0}")
        } else if a >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    }
    fn si(x: f64, suffix: &str) -> String {
        let (v, p) = if x >= 1e12 {
            (x / 1e12, "T")
        } else if x >= 1e9 {
            (x / 1e9, "G")
        } else if x >= 1e6 {
            (x / 1e6, "M")
        } else if x >= 1e3 {
            (x / 1e3, "k")
        } else {
            (x, "")
        };
        format!("{} {p}{suffix}", sig3(v)).trim_end().to_string()
    }
    match unit {
        "ns" if value >= 1e6 => format!("{} ms", sig3(value / 1e6)),
        "ns" if value >= 1e3 => format!("{} µs", sig3(value / 1e3)),
        "ns" => format!("{} ns", sig3(value)),
        "ms" => format!("{} ms", sig3(value)),
        "B/s" => si(value, "B/s"),
        "count" => format!("{value:.0}"),
        "msg/s" | "tasks/s" => si(value, "/s"),
        _ => sig3(value),
    }
}

/// All the results of one run.
#[derive(Debug, Default)]
pub struct Report {
    /// Lines describing the machine and the run, shown above the tables.
    pub header: Vec<String>,
    /// The tables.
    pub benches: Vec<Bench>,
    /// Whether this was a `--quick` run (recorded in the JSON lines).
    pub quick: bool,
}

impl Report {
    /// Whether any row failed.
    pub fn any_failure(&self) -> bool {
        self.benches.iter().any(|b| b.rows.iter().any(|r| !r.failures.is_empty()))
    }

    /// The tables, in markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            writeln!(out, "{line}").ok();
        }
        let any_ours = self.benches.iter().any(|b| b.rows.iter().any(|r| r.kind == Kind::Ours));
        if !any_ours {
            writeln!(
                out,
                "\nNo ringpool peer was measured in this run, so the tables have no ratio columns; \
                 each registered ringpool peer adds one (ringpool's median over the row's, >1 = ringpool better)."
            )
            .ok();
        }
        for b in self.benches.iter().filter(|b| !b.rows.is_empty()) {
            self.table(&mut out, b);
        }
        out
    }

    fn table(&self, out: &mut String, b: &Bench) {
        let ours: Vec<&Row> =
            b.rows.iter().filter(|r| b.ratios && r.kind == Kind::Ours && b.primary(r).is_some()).collect();
        let m0 = b.metrics[0];
        writeln!(out, "\n### {}\n", b.title).ok();
        if !b.note.is_empty() {
            writeln!(out, "{}\n", b.note).ok();
        }
        let mut head = format!("| peer | {} median | min | max |", m0.title);
        let mut rule = String::from("| --- | ---: | ---: | ---: |");
        for m in &b.metrics[1..] {
            write!(head, " {} |", m.title).ok();
            rule.push_str(" ---: |");
        }
        for o in &ours {
            write!(head, " {} × |", o.label).ok();
            rule.push_str(" ---: |");
        }
        writeln!(out, "{head}\n{rule}").ok();
        for r in &b.rows {
            let label = if r.kind == Kind::Floor { format!("{} (floor)", r.label) } else { r.label.clone() };
            let Some(s) = b.primary(r) else {
                let why = r.failures.first().map(String::as_str).unwrap_or("no figure");
                writeln!(out, "| {label} | FAILED: {} |", why.replace('|', "/")).ok();
                continue;
            };
            let mut line = format!(
                "| {label} | {} | {} | {} |",
                human(s.median, m0.unit),
                human(s.min, m0.unit),
                human(s.max, m0.unit)
            );
            for (i, m) in b.metrics.iter().enumerate().skip(1) {
                let cell = stats(&r.values[i]).map(|s| human(s.median, m.unit)).unwrap_or_else(|| "–".into());
                write!(line, " {cell} |").ok();
            }
            for o in &ours {
                let om = b.primary(o).expect("filtered").median;
                let ratio = if m0.higher_is_better { om / s.median } else { s.median / om };
                if std::ptr::eq(*o, r) {
                    line.push_str(" – |");
                } else {
                    write!(line, " {ratio:.2}× |").ok();
                }
            }
            if !r.failures.is_empty() {
                write!(line, " ({} of the rounds failed: {})", r.failures.len(), r.failures[0]).ok();
            }
            writeln!(out, "{line}").ok();
        }
    }

    /// One JSON object per line: `bench, peer, metric, unit, median, min, max` and more.
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for b in &self.benches {
            for r in &b.rows {
                for (i, m) in b.metrics.iter().enumerate() {
                    let s = stats(&r.values[i]);
                    if s.is_none() && (i > 0 || r.failures.is_empty()) {
                        continue;
                    }
                    let obj = json!({
                        "bench": b.id,
                        "peer": r.peer,
                        "metric": m.id,
                        "unit": m.unit,
                        "median": s.map(|s| s.median),
                        "min": s.map(|s| s.min),
                        "max": s.map(|s| s.max),
                        "runs": r.values[i],
                        "better": if m.higher_is_better { "higher" } else { "lower" },
                        "label": r.label,
                        "kind": r.kind.as_str(),
                        "size": b.size,
                        "failures": r.failures,
                        "mode": if self.quick { "quick" } else { "full" },
                    });
                    writeln!(out, "{obj}").ok();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_formatting() {
        let s = stats(&[3.0, 1.0, 2.0, 10.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(human(6.52e6, "msg/s"), "6.52 M/s");
        assert_eq!(human(130.4, "ns"), "130 ns");
        assert_eq!(human(46_200.0, "ns"), "46.2 µs");
        assert_eq!(human(2.5e9, "B/s"), "2.50 GB/s");
        assert_eq!(human(13.3, "ms"), "13.3 ms");
    }

    #[test]
    fn ratio_columns_appear_for_ours() {
        let mut b = Bench::new("x", "x", None, &[MSGS], "");
        b.record("pipe", "pipe", Kind::Peer, &[(MSGS, 2e6)]);
        b.record("ring", "ring", Kind::Ours, &[(MSGS, 2e7)]);
        let r = Report { benches: vec![b], ..Default::default() };
        let md = r.markdown();
        assert!(md.contains("ring × |"), "{md}");
        assert!(md.contains("10.00×"), "{md}");
    }
}
