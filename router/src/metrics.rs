//! Request, retry, cache and latency counters of the routing library,
//! rendered in the Prometheus text format on the router's `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::retry::RetryReason;

/// The raw KV operations, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Point read.
    Get,
    /// Multi-key read.
    BatchGet,
    /// Point write.
    Put,
    /// Multi-key write.
    BatchPut,
    /// Point delete.
    Delete,
    /// Range delete.
    DeleteRange,
    /// Range read.
    Scan,
    /// Compare-and-swap.
    CompareAndSwap,
}

impl Op {
    /// Every operation, in metrics order.
    pub const ALL: [Op; 8] = [
        Op::Get,
        Op::BatchGet,
        Op::Put,
        Op::BatchPut,
        Op::Delete,
        Op::DeleteRange,
        Op::Scan,
        Op::CompareAndSwap,
    ];

    /// Whether the operation writes: such a request is never sent again
    /// after an attempt that may have been applied, as applying it twice
    /// could undo a newer write in between.
    pub fn writes(self) -> bool {
        !matches!(self, Op::Get | Op::BatchGet | Op::Scan)
    }

    /// The operation's name (metrics label, error messages).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::BatchGet => "batch_get",
            Op::Put => "put",
            Op::BatchPut => "batch_put",
            Op::Delete => "delete",
            Op::DeleteRange => "delete_range",
            Op::Scan => "scan",
            Op::CompareAndSwap => "compare_and_swap",
        }
    }
}

/// How a request ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    InvalidArgument,
    Unavailable,
}

const OUTCOMES: [(Outcome, &str); 3] = [
    (Outcome::Ok, "ok"),
    (Outcome::InvalidArgument, "invalid_argument"),
    (Outcome::Unavailable, "unavailable"),
];

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The routing counters. All updates are lock-free.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; OUTCOMES.len()]; Op::ALL.len()],
    latency: [Histogram; Op::ALL.len()],
    retries: [AtomicU64; RetryReason::ALL.len()],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl Metrics {
    /// Counts a finished request and its latency.
    pub fn observe<T>(&self, op: Op, elapsed: Duration, result: &Result<T, Error>) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(Error::InvalidArgument(_)) => Outcome::InvalidArgument,
            Err(_) => Outcome::Unavailable,
        };
        self.requests[op as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.latency[op as usize].observe(elapsed);
    }

    /// Counts a retry.
    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a region cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Retries so far for `reason`.
    pub fn retries(&self, reason: RetryReason) -> u64 {
        self.retries[reason.index()].load(Ordering::Relaxed)
    }

    /// Requests of `op` that succeeded so far.
    pub fn succeeded(&self, op: Op) -> u64 {
        self.requests[op as usize][Outcome::Ok as usize].load(Ordering::Relaxed)
    }

    /// Renders every counter in the Prometheus text format, followed by
    /// `gauges` (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP concord_router_requests_total Raw KV requests finished, by operation and outcome.\n");
        out.push_str("# TYPE concord_router_requests_total counter\n");
        for op in Op::ALL {
            for (outcome, label) in OUTCOMES {
                let n = self.requests[op as usize][outcome as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "concord_router_requests_total{{op=\"{}\",outcome=\"{label}\"}} {n}",
                    op.as_str()
                );
            }
        }
        out.push_str("# HELP concord_router_retries_total Attempts retried, by reason.\n");
        out.push_str("# TYPE concord_router_retries_total counter\n");
        for reason in RetryReason::ALL {
            let _ = writeln!(
                out,
                "concord_router_retries_total{{reason=\"{reason}\"}} {}",
                self.retries(reason)
            );
        }
        for (name, help, counter) in [
            (
                "concord_router_region_cache_hits_total",
                "Region lookups answered by the cache.",
                &self.cache_hits,
            ),
            (
                "concord_router_region_cache_misses_total",
                "Region lookups that went to PD.",
                &self.cache_misses,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        out.push_str("# HELP concord_router_request_duration_seconds Latency of raw KV requests, retries included.\n");
        out.push_str("# TYPE concord_router_request_duration_seconds histogram\n");
        for op in Op::ALL {
            let h = &self.latency[op as usize];
            let name = op.as_str();
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "concord_router_request_duration_seconds_bucket{{op=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += h.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "concord_router_request_duration_seconds_bucket{{op=\"{name}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "concord_router_request_duration_seconds_sum{{op=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "concord_router_request_duration_seconds_count{{op=\"{name}\"}} {}",
                h.count.load(Ordering::Relaxed)
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe::<()>(Op::Put, Duration::from_millis(3), &Ok(()));
        m.observe::<()>(Op::Put, Duration::from_secs(30), &Ok(()));
        m.observe::<()>(
            Op::Get,
            Duration::from_millis(1),
            &Err(Error::InvalidArgument("key must not be empty".into())),
        );
        m.retry(RetryReason::NotLeader);
        m.retry(RetryReason::NotLeader);
        m.cache_lookup(true);
        m.cache_lookup(false);
        let text = m.render(&[("concord_router_pd_connected", "1 once PD answered.", 1.0)]);
        for line in [
            "concord_router_requests_total{op=\"put\",outcome=\"ok\"} 2",
            "concord_router_requests_total{op=\"get\",outcome=\"invalid_argument\"} 1",
            "concord_router_retries_total{reason=\"not_leader\"} 2",
            "concord_router_region_cache_hits_total 1",
            "concord_router_region_cache_misses_total 1",
            "concord_router_request_duration_seconds_bucket{op=\"put\",le=\"0.0025\"} 0",
            "concord_router_request_duration_seconds_bucket{op=\"put\",le=\"0.005\"} 1",
            "concord_router_request_duration_seconds_bucket{op=\"put\",le=\"10\"} 1",
            "concord_router_request_duration_seconds_bucket{op=\"put\",le=\"+Inf\"} 2",
            "concord_router_request_duration_seconds_count{op=\"put\"} 2",
            "concord_router_pd_connected 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(m.succeeded(Op::Put), 2);
    }
}
