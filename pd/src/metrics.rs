//! PD's counters, rendered with the cluster's gauges in the Prometheus text
//! format on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters PD keeps while serving.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TSO requests answered.
    pub tso_requests: AtomicU64,
    /// Timestamps issued (a request may ask for many).
    pub tso_timestamps: AtomicU64,
    /// Ids issued.
    pub ids_allocated: AtomicU64,
    /// Store heartbeats accepted.
    pub store_heartbeats: AtomicU64,
    /// Region heartbeats accepted.
    pub region_heartbeats: AtomicU64,
    /// Region heartbeats ignored because their epoch was stale.
    pub stale_region_heartbeats: AtomicU64,
    /// Region metadata writes caused by heartbeats, splits and bootstrap.
    pub region_updates: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Point-in-time values that complete the counters on `/metrics`.
#[derive(Debug, Default)]
pub struct Gauges {
    /// 1 once bootstrapped.
    pub bootstrapped: bool,
    /// Number of regions.
    pub regions: usize,
    /// Stores by displayed state ("Up", "Down", "Offline", "Tombstone").
    pub stores_by_state: Vec<(String, usize)>,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// This member's raft status: its applied index and the index its log
    /// was last compacted up to.
    pub raft_applied: u64,
    /// See `raft_applied`.
    pub raft_compacted: u64,
}

/// Renders the counters and gauges in the Prometheus text format.
pub fn render(metrics: &Metrics, gauges: &Gauges) -> String {
    let mut out = String::new();
    let counters: [(&str, &str, &AtomicU64); 7] = [
        (
            "pd_tso_requests_total",
            "TSO requests answered.",
            &metrics.tso_requests,
        ),
        (
            "pd_tso_timestamps_total",
            "Timestamps issued.",
            &metrics.tso_timestamps,
        ),
        (
            "pd_ids_allocated_total",
            "Ids issued.",
            &metrics.ids_allocated,
        ),
        (
            "pd_store_heartbeats_total",
            "Store heartbeats accepted.",
            &metrics.store_heartbeats,
        ),
        (
            "pd_region_heartbeats_total",
            "Region heartbeats accepted.",
            &metrics.region_heartbeats,
        ),
        (
            "pd_stale_region_heartbeats_total",
            "Region heartbeats ignored for a stale epoch.",
            &metrics.stale_region_heartbeats,
        ),
        (
            "pd_region_updates_total",
            "Region metadata writes.",
            &metrics.region_updates,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP pd_cluster_bootstrapped Whether the cluster is bootstrapped.\n# TYPE pd_cluster_bootstrapped gauge\npd_cluster_bootstrapped {}",
        u8::from(gauges.bootstrapped)
    );
    let _ = writeln!(
        out,
        "# HELP pd_regions Regions known to PD.\n# TYPE pd_regions gauge\npd_regions {}",
        gauges.regions
    );
    let _ = writeln!(
        out,
        "# HELP pd_stores Stores by state.\n# TYPE pd_stores gauge"
    );
    for (state, count) in &gauges.stores_by_state {
        let _ = writeln!(out, "pd_stores{{state=\"{state}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP pd_raft_applied_index Last raft entry this member applied.\n# TYPE pd_raft_applied_index gauge\npd_raft_applied_index {}",
        gauges.raft_applied
    );
    let _ = writeln!(
        out,
        "# HELP pd_raft_compacted_index Last raft entry compacted out of this member's log.\n# TYPE pd_raft_compacted_index gauge\npd_raft_compacted_index {}",
        gauges.raft_compacted
    );
    let _ = writeln!(
        out,
        "# HELP pd_uptime_seconds Seconds since start.\n# TYPE pd_uptime_seconds gauge\npd_uptime_seconds {}",
        gauges.uptime_secs
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labelled_gauges() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.tso_requests, 3);
        let gauges = Gauges {
            bootstrapped: true,
            regions: 4,
            stores_by_state: vec![("Up".into(), 2)],
            uptime_secs: 1,
            raft_applied: 40,
            raft_compacted: 20,
        };
        let text = render(&metrics, &gauges);
        assert!(text.contains("pd_tso_requests_total 3\n"), "{text}");
        assert!(text.contains("pd_cluster_bootstrapped 1\n"));
        assert!(text.contains("pd_regions 4\n"));
        assert!(text.contains("pd_stores{state=\"Up\"} 2\n"));
        assert!(text.contains("pd_raft_applied_index 40\n"));
        assert!(text.contains("pd_raft_compacted_index 20\n"));
    }
}
