//! One phase of a benchmark: `--concurrency` workers drawing operations
//! from a [`Schedule`] and running them against the [`Target`] until the
//! schedule ends or Ctrl-C.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::progress::{self, Live};
use super::report::{Outcome, PhaseReport, Stats};
use super::target::{OpError, Target};
use super::workload::{key_of, KeyChooser, Op, Values, Workload};

/// One operation on one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// What to do.
    pub op: Op,
    /// The record it touches (where a scan starts).
    pub record: u64,
}

/// Which tasks a phase's workers run, and when they stop.
#[derive(Debug)]
pub enum Schedule {
    /// Insert records `0..records`, each once.
    Load {
        /// Records to insert.
        records: u64,
        /// The next record to insert.
        next: AtomicU64,
    },
    /// Draw from the workload's mix until the deadline or the limit.
    Run {
        /// The mix.
        workload: Workload,
        /// Picks existing records.
        chooser: KeyChooser,
        /// Stop starting tasks at this time (`None`: no time limit).
        deadline: Option<Instant>,
        /// Stop after this many tasks (0: no limit).
        limit: u64,
        /// Tasks started so far.
        issued: AtomicU64,
        /// The next new record for inserts (starts past the loaded ones).
        next_insert: AtomicU64,
    },
}

impl Schedule {
    /// The load phase over `records` records.
    pub fn load(records: u64) -> Schedule {
        Schedule::Load {
            records,
            next: AtomicU64::new(0),
        }
    }

    /// The run phase of `workload` over `chooser`'s `records` records: for
    /// `duration` from now (if any) and at most `limit` tasks (0: no
    /// limit). Inserts add records from `records` on.
    pub fn run(
        workload: Workload,
        chooser: KeyChooser,
        records: u64,
        duration: Option<Duration>,
        limit: u64,
    ) -> Schedule {
        Schedule::Run {
            workload,
            chooser,
            deadline: duration.map(|d| Instant::now() + d),
            limit,
            issued: AtomicU64::new(0),
            next_insert: AtomicU64::new(records),
        }
    }

    /// The next task, or `None` when the phase is over.
    pub fn next(&self, rng: &mut impl Rng) -> Option<Task> {
        match self {
            Schedule::Load { records, next } => {
                let record = next.fetch_add(1, Ordering::Relaxed);
                (record < *records).then_some(Task {
                    op: Op::Insert,
                    record,
                })
            }
            Schedule::Run {
                workload,
                chooser,
                deadline,
                limit,
                issued,
                next_insert,
            } => {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || (*limit > 0 && issued.fetch_add(1, Ordering::Relaxed) >= *limit)
                {
                    return None;
                }
                let op = workload.choose(rng);
                let record = match op {
                    Op::Insert => next_insert.fetch_add(1, Ordering::Relaxed),
                    _ => chooser.next(rng),
                };
                Some(Task { op, record })
            }
        }
    }
}

/// Settings every worker of a phase shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Workers.
    pub concurrency: usize,
    /// Values to write.
    pub values: Values,
    /// Longest scan (scans read a uniform 1..=this records).
    pub scan_length: u32,
    /// Print a progress line every second.
    pub progress: bool,
}

/// Runs the phase `name` to its end (or until `stop` is set) and reports.
pub async fn run(
    name: &'static str,
    schedule: Schedule,
    target: &Target,
    settings: &Settings,
    stop: &Arc<AtomicBool>,
) -> PhaseReport {
    let schedule = Arc::new(schedule);
    let live = Arc::new(Live::default());
    let ticker = settings
        .progress
        .then(|| progress::spawn(name, live.clone()));
    let started = Instant::now();
    let workers: Vec<_> = (0..settings.concurrency)
        .map(|worker| {
            let (schedule, target, settings, stop, live) = (
                schedule.clone(),
                target.clone(),
                settings.clone(),
                stop.clone(),
                live.clone(),
            );
            tokio::spawn(async move {
                let mut rng = StdRng::from_entropy();
                let mut stats = Stats::default();
                while !stop.load(Ordering::Relaxed) {
                    let Some(task) = schedule.next(&mut rng) else {
                        break;
                    };
                    let t = Instant::now();
                    let result = execute(&target, worker, task, &settings, &mut rng).await;
                    live.record(result.is_ok());
                    match result {
                        Ok(outcome) => stats.succeeded(task.op, t.elapsed(), outcome),
                        Err(e) => stats.failed(task.op, e),
                    }
                }
                stats
            })
        })
        .collect();
    let mut stats = Stats::default();
    for joined in futures::future::join_all(workers).await {
        match joined {
            Ok(s) => stats.merge(s),
            // A bug, not a measurement: let it show.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Workers are never aborted.
            Err(_) => {}
        }
    }
    if let Some(t) = ticker {
        t.abort();
    }
    PhaseReport {
        name,
        elapsed: started.elapsed(),
        interrupted: stop.load(Ordering::Relaxed),
        stats,
    }
}

/// Runs one task; a read-modify-write reads the record, then swaps the
/// value read for a new one.
async fn execute(
    target: &Target,
    worker: usize,
    task: Task,
    settings: &Settings,
    rng: &mut StdRng,
) -> Result<Outcome, OpError> {
    let key = key_of(task.record);
    let mut outcome = Outcome::default();
    match task.op {
        Op::Read | Op::Get => {
            outcome.not_found = target.get(worker, key).await?.is_none();
        }
        Op::Update | Op::Insert | Op::Put => {
            target.put(worker, key, settings.values.next(rng)).await?;
        }
        Op::Scan => {
            let limit = rng.gen_range(1..=settings.scan_length);
            outcome.scanned = target.scan(worker, key, limit).await?;
        }
        Op::ReadModifyWrite => {
            let current = target.get(worker, key.clone()).await?;
            outcome.not_found = current.is_none();
            let value = settings.values.next(rng);
            let swapped = target.compare_and_swap(worker, key, current, value).await?;
            outcome.cas_conflict = !swapped;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::workload::Distribution;
    use super::*;

    #[test]
    fn load_inserts_every_record_once() {
        let schedule = Schedule::load(100);
        let mut rng = StdRng::seed_from_u64(1);
        let tasks: Vec<Task> = std::iter::from_fn(|| schedule.next(&mut rng)).collect();
        assert_eq!(tasks.len(), 100);
        assert!(tasks.iter().all(|t| t.op == Op::Insert));
        let records: HashSet<u64> = tasks.iter().map(|t| t.record).collect();
        assert_eq!(records, (0..100).collect());
    }

    #[test]
    fn run_stops_at_the_limit_and_inserts_new_records() {
        let chooser = KeyChooser::new(Distribution::Uniform, 50);
        let schedule = Schedule::run(Workload::E, chooser, 50, None, 2000);
        let mut rng = StdRng::seed_from_u64(2);
        let tasks: Vec<Task> = std::iter::from_fn(|| schedule.next(&mut rng)).collect();
        assert_eq!(tasks.len(), 2000);
        let inserts: Vec<u64> = tasks
            .iter()
            .filter(|t| t.op == Op::Insert)
            .map(|t| t.record)
            .collect();
        assert!(!inserts.is_empty());
        assert_eq!(inserts, (50..50 + inserts.len() as u64).collect::<Vec<_>>());
        assert!(tasks
            .iter()
            .filter(|t| t.op == Op::Scan)
            .all(|t| t.record < 50));
    }

    #[test]
    fn run_stops_at_the_deadline() {
        let chooser = KeyChooser::new(Distribution::Zipfian, 10);
        let schedule = Schedule::run(Workload::F, chooser, 10, Some(Duration::ZERO), 0);
        assert_eq!(schedule.next(&mut StdRng::seed_from_u64(3)), None);
    }
}
