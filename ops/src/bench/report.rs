//! What a phase measured, per operation and per error kind, and how it is
//! shown: aligned text or JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::histogram::Histogram;
use super::target::OpError;
use super::workload::Op;

/// Distinct sample messages kept per error kind.
const SAMPLES_PER_KIND: usize = 3;

/// What a successful operation found, beyond its latency.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A read (or the read of a read-modify-write) found no value.
    pub not_found: bool,
    /// The compare-and-swap of a read-modify-write lost to another writer.
    pub cas_conflict: bool,
    /// Records a scan returned.
    pub scanned: usize,
}

/// One failure kept as an example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorSample {
    /// The operation that failed.
    pub op: Op,
    /// Its error.
    pub error: OpError,
}

/// Counts and latencies of one worker, or merged over a phase.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Latencies of successful operations in microseconds, by operation.
    pub latencies: BTreeMap<Op, Histogram>,
    /// Failed operations by error kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// A few distinct failures of each kind.
    pub samples: Vec<ErrorSample>,
    /// Reads that found no value.
    pub not_found: u64,
    /// Read-modify-writes whose compare-and-swap lost the race (not errors).
    pub cas_conflicts: u64,
    /// Records returned by scans.
    pub scanned: u64,
}

impl Stats {
    /// Counts a successful `op` that took `latency`.
    pub fn succeeded(&mut self, op: Op, latency: Duration, outcome: Outcome) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies.entry(op).or_default().record(micros);
        self.not_found += u64::from(outcome.not_found);
        self.cas_conflicts += u64::from(outcome.cas_conflict);
        self.scanned += outcome.scanned as u64;
    }

    /// Counts a failed `op`.
    pub fn failed(&mut self, op: Op, error: OpError) {
        *self.errors.entry(error.kind).or_default() += 1;
        self.keep_sample(ErrorSample { op, error });
    }

    fn keep_sample(&mut self, sample: ErrorSample) {
        let same_kind: Vec<&ErrorSample> = self
            .samples
            .iter()
            .filter(|s| s.error.kind == sample.error.kind)
            .collect();
        let keep = same_kind.len() < SAMPLES_PER_KIND
            && same_kind
                .iter()
                .all(|s| s.error.message != sample.error.message);
        if keep {
            self.samples.push(sample);
        }
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: Stats) {
        for (op, h) in other.latencies {
            self.latencies.entry(op).or_default().merge(&h);
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for sample in other.samples {
            self.keep_sample(sample);
        }
        self.not_found += other.not_found;
        self.cas_conflicts += other.cas_conflicts;
        self.scanned += other.scanned;
    }

    /// Successful operations.
    pub fn ops(&self) -> u64 {
        self.latencies.values().map(Histogram::count).sum()
    }

    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Results of one phase (`load` or `run`).
#[derive(Debug, Clone)]
pub struct PhaseReport {
    /// `load` or `run`.
    pub name: &'static str,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Whether Ctrl-C ended it early.
    pub interrupted: bool,
    /// What it counted.
    pub stats: Stats,
}

impl PhaseReport {
    /// Successful operations per second.
    pub fn throughput(&self) -> f64 {
        rate(self.stats.ops(), self.elapsed)
    }

    /// Aligned text: a summary line, one line per operation, then
    /// conflicts, misses and errors by kind with sample messages.
    pub fn text(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "{}: {} ops in {:.1} s = {} ops/s, {} errors{}",
            self.name,
            thousands(s.ops()),
            self.elapsed.as_secs_f64(),
            thousands(self.throughput().round() as u64),
            thousands(s.error_count()),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        out.push_str(&format!(
            "\n  {:<7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "ops/s", "mean", "p50", "p99", "p999", "max"
        ));
        for (op, h) in &s.latencies {
            out.push_str(&format!(
                "\n  {:<7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                op.name(),
                thousands(h.count()),
                thousands(rate(h.count(), self.elapsed).round() as u64),
                ms(h.mean().round() as u64),
                ms(h.quantile(0.5)),
                ms(h.quantile(0.99)),
                ms(h.quantile(0.999)),
                ms(h.max())
            ));
        }
        if s.cas_conflicts > 0 {
            let rmw = s
                .latencies
                .get(&Op::ReadModifyWrite)
                .map_or(0, Histogram::count);
            out.push_str(&format!(
                "\n  cas conflicts: {} ({:.1}% of rmw; not errors)",
                thousands(s.cas_conflicts),
                100.0 * s.cas_conflicts as f64 / rmw.max(1) as f64
            ));
        }
        if s.not_found > 0 {
            out.push_str(&format!("\n  reads not found: {}", thousands(s.not_found)));
        }
        if s.scanned > 0 {
            out.push_str(&format!("\n  records scanned: {}", thousands(s.scanned)));
        }
        if !s.errors.is_empty() {
            let kinds: Vec<String> = s
                .errors
                .iter()
                .map(|(kind, n)| format!("{} {kind}", thousands(*n)))
                .collect();
            out.push_str(&format!("\n  errors: {}", kinds.join(", ")));
            for sample in &s.samples {
                out.push_str(&format!(
                    "\n    {} ({}): {}",
                    sample.error.kind,
                    sample.op.name(),
                    sample.error.message
                ));
            }
        }
        out
    }

    /// The phase as a JSON object.
    pub fn json(&self) -> Value {
        let s = &self.stats;
        let operations: serde_json::Map<String, Value> = s
            .latencies
            .iter()
            .map(|(op, h)| {
                let stats = json!({
                    "count": h.count(),
                    "ops_per_sec": rate(h.count(), self.elapsed),
                    "mean_us": h.mean(),
                    "p50_us": h.quantile(0.5),
                    "p99_us": h.quantile(0.99),
                    "p999_us": h.quantile(0.999),
                    "max_us": h.max(),
                });
                (op.name().to_string(), stats)
            })
            .collect();
        let samples: Vec<Value> = s
            .samples
            .iter()
            .map(|e| json!({"op": e.op.name(), "kind": e.error.kind, "message": e.error.message}))
            .collect();
        json!({
            "phase": self.name,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "interrupted": self.interrupted,
            "ops": s.ops(),
            "ops_per_sec": self.throughput(),
            "operations": operations,
            "errors": s.error_count(),
            "errors_by_kind": s.errors,
            "sample_errors": samples,
            "reads_not_found": s.not_found,
            "cas_conflicts": s.cas_conflicts,
            "records_scanned": s.scanned,
        })
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: &'static str, message: &str) -> OpError {
        OpError {
            kind,
            message: message.into(),
        }
    }

    fn sample_report() -> PhaseReport {
        let mut a = Stats::default();
        a.succeeded(Op::Read, Duration::from_micros(1000), Outcome::default());
        a.succeeded(
            Op::ReadModifyWrite,
            Duration::from_micros(3000),
            Outcome {
                cas_conflict: true,
                ..Outcome::default()
            },
        );
        a.failed(Op::Read, error("unavailable", "gave up after 20 s"));
        let mut b = Stats::default();
        b.succeeded(
            Op::Read,
            Duration::from_micros(2000),
            Outcome {
                not_found: true,
                ..Outcome::default()
            },
        );
        b.failed(
            Op::ReadModifyWrite,
            error("timeout", "no answer within 11.0 s"),
        );
        b.failed(Op::Read, error("unavailable", "gave up after 20 s"));
        a.merge(b);
        PhaseReport {
            name: "run",
            elapsed: Duration::from_secs(2),
            interrupted: false,
            stats: a,
        }
    }

    #[test]
    fn merge_counts_per_op_and_per_error_kind() {
        let r = sample_report();
        let s = &r.stats;
        assert_eq!(s.ops(), 3);
        assert_eq!(s.latencies[&Op::Read].count(), 2);
        assert_eq!(s.error_count(), 3);
        assert_eq!(s.errors["unavailable"], 2);
        assert_eq!(s.errors["timeout"], 1);
        // Duplicate messages are kept once.
        assert_eq!(s.samples.len(), 2);
        assert_eq!((s.not_found, s.cas_conflicts), (1, 1));
        assert!((r.throughput() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn samples_are_capped_per_kind() {
        let mut s = Stats::default();
        for i in 0..10 {
            s.failed(Op::Put, error("transport", &format!("refused {i}")));
        }
        s.failed(Op::Put, error("timeout", "slow"));
        assert_eq!(s.errors["transport"], 10);
        assert_eq!(s.samples.len(), SAMPLES_PER_KIND + 1);
    }

    #[test]
    fn text_shows_ops_errors_and_conflicts() {
        let text = sample_report().text();
        for want in [
            "run: 3 ops in 2.0 s = 2 ops/s, 3 errors",
            "p999",
            "\n  read ",
            "\n  rmw ",
            "cas conflicts: 1 (100.0% of rmw; not errors)",
            "reads not found: 1",
            "errors: 1 timeout, 2 unavailable",
            "unavailable (read): gave up after 20 s",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn json_round_trips_through_serde() {
        let doc = sample_report().json().to_string();
        let v: Value = serde_json::from_str(&doc).expect("valid JSON");
        assert_eq!(v["phase"], "run");
        assert_eq!(v["ops"], 3);
        assert_eq!(v["errors"], 3);
        assert_eq!(v["errors_by_kind"]["unavailable"], 2);
        assert_eq!(v["operations"]["read"]["count"], 2);
        assert_eq!(v["operations"]["rmw"]["p50_us"], 3000);
        assert_eq!(v["cas_conflicts"], 1);
        assert_eq!(v["reads_not_found"], 1);
        assert_eq!(v["sample_errors"][0]["kind"], "unavailable");
        assert_eq!(v["sample_errors"][0]["op"], "read");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(45_210), "45,210");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
