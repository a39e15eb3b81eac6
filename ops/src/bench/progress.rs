//! The once-a-second progress line on stderr (stdout stays clean for
//! `--json`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::report::thousands;

/// Counters the workers bump and the progress line reads.
#[derive(Debug, Default)]
pub struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
}

impl Live {
    /// Counts one finished operation.
    pub fn record(&self, ok: bool) {
        let counter = if ok { &self.ops } else { &self.errors };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints the progress of `phase` every second until the handle is
/// aborted.
pub fn spawn(phase: &'static str, live: Arc<Live>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut last_ops, mut last_at) = (0, started);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let ops = live.ops.load(Ordering::Relaxed);
            let rate = (ops - last_ops) as f64 / (now - last_at).as_secs_f64().max(1e-9);
            let errors = live.errors.load(Ordering::Relaxed);
            eprintln!("{}", line(phase, now - started, ops, rate, errors));
            (last_ops, last_at) = (ops, now);
        }
    })
}

/// E.g. `[ 12s] run: 45,210 ops, 3,812 ops/s (last 1s), 0 errors`.
fn line(phase: &str, elapsed: Duration, ops: u64, rate: f64, errors: u64) -> String {
    format!(
        "[{:>3}s] {phase}: {} ops, {} ops/s (last 1s), {} errors",
        elapsed.as_secs_f64().round() as u64,
        thousands(ops),
        thousands(rate.round() as u64),
        thousands(errors)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_well() {
        assert_eq!(
            line("run", Duration::from_millis(12_004), 45_210, 3_811.6, 0),
            "[ 12s] run: 45,210 ops, 3,812 ops/s (last 1s), 0 errors"
        );
        let live = Live::default();
        live.record(true);
        live.record(false);
        assert_eq!(live.ops.load(Ordering::Relaxed), 1);
        assert_eq!(live.errors.load(Ordering::Relaxed), 1);
    }
}
