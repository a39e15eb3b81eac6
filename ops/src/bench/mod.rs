//! `concord bench`: YCSB-like workloads against a router (or PD, as a
//! smart client), reporting throughput and latency percentiles.

pub mod histogram;
pub mod workload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use concord_proto::routerpb::raw_kv_client::RawKvClient;
use concord_proto::routerpb::{GetRequest, PutRequest};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::error::{OpsError, Result};
use crate::kv::DEFAULT_ROUTER;
use crate::router_conn::connect_lazy;
use histogram::Histogram;
use workload::{key_of, value_of, Distribution, KeyChooser, Op, Workload};

/// Options of `concord bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Router address(es), comma-separated; requests are spread over them.
    #[arg(long, env = "CONCORD_ROUTER", default_value = DEFAULT_ROUTER, conflicts_with = "pd")]
    pub router: String,
    /// Route by ourselves through PD (smart client, no router hop):
    /// PD address(es), comma-separated.
    #[arg(long)]
    pub pd: Option<String>,
    /// The workload.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// Records in the data set (inserted first unless --skip-load).
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of the run phase.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Stop the run phase after this many operations (0: run for the duration).
    #[arg(long, default_value_t = 0)]
    pub operations: u64,
    /// Key popularity during the run phase.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,
    /// Do not insert the records first (they were loaded before).
    #[arg(long)]
    pub skip_load: bool,
    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where requests go.
#[derive(Clone)]
enum Target {
    /// Router processes, one channel each; requests round-robin.
    Routers(Vec<RawKvClient<Channel>>),
    /// The routing library itself, through PD.
    Smart(concord_router::Client),
}

impl Target {
    async fn get(&self, worker: usize, key: Vec<u8>) -> Result<bool, String> {
        match self {
            Target::Routers(c) => {
                let mut c = c[worker % c.len()].clone();
                c.get(GetRequest { key })
                    .await
                    .map(|r| !r.into_inner().not_found)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Target::Smart(c) => c
                .get(&key)
                .await
                .map(|v| v.is_some())
                .map_err(|e| e.to_string()),
        }
    }

    async fn put(&self, worker: usize, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        match self {
            Target::Routers(c) => {
                let mut c = c[worker % c.len()].clone();
                c.put(PutRequest { key, value, ttl: 0 })
                    .await
                    .map(drop)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Target::Smart(c) => c.put(&key, &value).await.map_err(|e| e.to_string()),
        }
    }
}

/// Results of one phase.
#[derive(Debug, Default, Clone)]
pub struct PhaseReport {
    /// Phase name (`load` or `run`).
    pub name: String,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Latencies by operation name, in microseconds.
    pub latencies: Vec<(String, Histogram)>,
    /// Failed operations.
    pub errors: u64,
    /// Reads that found no value.
    pub not_found: u64,
    /// A few error messages.
    pub sample_errors: Vec<String>,
}

impl PhaseReport {
    /// Successful operations.
    pub fn ops(&self) -> u64 {
        self.latencies.iter().map(|(_, h)| h.count()).sum()
    }

    /// Successful operations per second.
    pub fn throughput(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Human-readable lines.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<5} {} ops in {:.1} s = {:.0} ops/s, {} errors",
            self.name,
            self.ops(),
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.errors
        );
        if self.not_found > 0 {
            out.push_str(&format!(", {} reads not found", self.not_found));
        }
        for (op, h) in &self.latencies {
            if h.count() == 0 {
                continue;
            }
            out.push_str(&format!(
                "\n      {op:<7} n={:<9} mean {} p50 {} p99 {} p999 {} max {}",
                h.count(),
                ms(h.mean() as u64),
                ms(h.quantile(0.5)),
                ms(h.quantile(0.99)),
                ms(h.quantile(0.999)),
                ms(h.max())
            ));
        }
        for e in &self.sample_errors {
            out.push_str(&format!("\n      error: {e}"));
        }
        out
    }

    /// A JSON document.
    pub fn json(&self) -> Value {
        let lat: serde_json::Map<String, Value> = self
            .latencies
            .iter()
            .map(|(op, h)| {
                (
                    op.clone(),
                    json!({
                        "count": h.count(),
                        "mean_us": h.mean(),
                        "p50_us": h.quantile(0.5),
                        "p99_us": h.quantile(0.99),
                        "p999_us": h.quantile(0.999),
                        "max_us": h.max(),
                    }),
                )
            })
            .collect();
        json!({
            "phase": self.name,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "ops": self.ops(),
            "ops_per_sec": self.throughput(),
            "errors": self.errors,
            "reads_not_found": self.not_found,
            "latency": lat,
            "sample_errors": self.sample_errors,
        })
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

fn split_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn validate(args: &BenchArgs) -> Result<()> {
    if args.records == 0 {
        return Err(OpsError::InvalidInput(
            "--records must be at least 1".into(),
        ));
    }
    if args.concurrency == 0 || args.concurrency > 4096 {
        return Err(OpsError::InvalidInput(
            "--concurrency must be between 1 and 4096".into(),
        ));
    }
    if args.duration_secs == 0 && args.operations == 0 {
        return Err(OpsError::InvalidInput(
            "give a positive --duration-secs or --operations".into(),
        ));
    }
    Ok(())
}

async fn connect(args: &BenchArgs) -> Result<Target> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    if let Some(pd) = &args.pd {
        let addrs = split_addrs(pd);
        if addrs.is_empty() {
            return Err(OpsError::InvalidInput("--pd is empty".into()));
        }
        let client = concord_router::Client::connect_pd(&addrs)
            .await
            .map_err(|e| OpsError::Connect {
                addr: pd.clone(),
                message: e.to_string(),
            })?;
        return Ok(Target::Smart(client));
    }
    let addrs = split_addrs(&args.router);
    if addrs.is_empty() {
        return Err(OpsError::InvalidInput("--router is empty".into()));
    }
    // A few HTTP/2 connections per router spread the load over more streams.
    let per_router = args.concurrency.div_ceil(32).clamp(1, 4);
    let mut clients = Vec::new();
    for _ in 0..per_router {
        for a in &addrs {
            clients.push(connect_lazy(a, timeout)?);
        }
    }
    Ok(Target::Routers(clients))
}

/// Runs the benchmark and prints its report.
pub async fn run(args: BenchArgs) -> Result<()> {
    validate(&args)?;
    let target = connect(&args).await?;
    let mut phases = Vec::new();
    let header = format!(
        "{}, {} records of {} bytes, concurrency {}, {} keys, target {}{}",
        args.workload.describe(),
        args.records,
        args.value_size,
        args.concurrency,
        format!("{:?}", args.distribution).to_lowercase(),
        args.pd
            .as_ref()
            .map_or(format!("router {}", args.router), |p| format!(
                "PD {p} (smart client)"
            )),
        if cfg!(debug_assertions) {
            " [concord built in debug mode]"
        } else {
            ""
        }
    );
    if !args.json {
        println!("{header}");
    }
    if !args.skip_load || args.workload == Workload::Load {
        let load = load_phase(&args, &target).await;
        if !args.json {
            println!("{}", load.text());
        }
        phases.push(load);
    }
    if args.workload != Workload::Load {
        let run = run_phase(&args, &target).await;
        if !args.json {
            println!("{}", run.text());
        }
        phases.push(run);
    }
    if args.json {
        let doc = json!({
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "records": args.records,
            "value_size": args.value_size,
            "concurrency": args.concurrency,
            "distribution": format!("{:?}", args.distribution).to_lowercase(),
            "debug_build": cfg!(debug_assertions),
            "phases": phases.iter().map(PhaseReport::json).collect::<Vec<_>>(),
        });
        println!("{doc}");
    }
    let errors: u64 = phases.iter().map(|p| p.errors).sum();
    let ops: u64 = phases.iter().map(PhaseReport::ops).sum();
    if ops == 0 && errors > 0 {
        return Err(OpsError::Request {
            op: "bench",
            message: format!(
                "every operation failed; first error: {}",
                phases
                    .iter()
                    .flat_map(|p| p.sample_errors.first())
                    .next()
                    .map_or("unknown", String::as_str)
            ),
        });
    }
    Ok(())
}

/// What one worker saw.
#[derive(Default)]
struct WorkerStats {
    read: Histogram,
    write: Histogram,
    errors: u64,
    not_found: u64,
    sample_errors: Vec<String>,
}

impl WorkerStats {
    fn failed(&mut self, e: String) {
        self.errors += 1;
        if self.sample_errors.len() < 3 {
            self.sample_errors.push(e);
        }
    }
}

fn merge(name: &str, write_name: &str, elapsed: Duration, stats: Vec<WorkerStats>) -> PhaseReport {
    let mut read = Histogram::default();
    let mut write = Histogram::default();
    let mut report = PhaseReport {
        name: name.into(),
        elapsed,
        ..PhaseReport::default()
    };
    for s in stats {
        read.merge(&s.read);
        write.merge(&s.write);
        report.errors += s.errors;
        report.not_found += s.not_found;
        for e in s.sample_errors {
            if report.sample_errors.len() < 5 && !report.sample_errors.contains(&e) {
                report.sample_errors.push(e);
            }
        }
    }
    if read.count() > 0 {
        report.latencies.push(("read".into(), read));
    }
    report.latencies.push((write_name.into(), write));
    report
}

async fn load_phase(args: &BenchArgs, target: &Target) -> PhaseReport {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (target, next) = (target.clone(), next.clone());
            let (records, size) = (args.records, args.value_size);
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_entropy();
                let mut stats = WorkerStats::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= records {
                        break stats;
                    }
                    let value = value_of(&mut rng, size);
                    let t = Instant::now();
                    match target.put(w, key_of(n), value).await {
                        Ok(()) => stats.write.record(t.elapsed().as_micros() as u64),
                        Err(e) => stats.failed(e),
                    }
                }
            })
        })
        .collect();
    let stats = join_workers(workers).await;
    merge("load", "insert", started.elapsed(), stats)
}

async fn run_phase(args: &BenchArgs, target: &Target) -> PhaseReport {
    let chooser = Arc::new(KeyChooser::new(args.distribution, args.records));
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let read_share = args.workload.read_proportion();
    let deadline =
        (args.duration_secs > 0).then(|| Instant::now() + Duration::from_secs(args.duration_secs));
    let started = Instant::now();
    // Ctrl-C ends the run phase early; the report covers what ran.
    let interrupt = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (target, chooser, stop, issued) = (
                target.clone(),
                chooser.clone(),
                stop.clone(),
                issued.clone(),
            );
            let (size, limit) = (args.value_size, args.operations);
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_entropy();
                let mut stats = WorkerStats::default();
                loop {
                    if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break stats;
                    }
                    if limit > 0 && issued.fetch_add(1, Ordering::Relaxed) >= limit {
                        break stats;
                    }
                    let key = key_of(chooser.next(&mut rng));
                    let op = if rng.gen_bool(read_share) {
                        Op::Read
                    } else {
                        Op::Update
                    };
                    let t = Instant::now();
                    match op {
                        Op::Read => match target.get(w, key).await {
                            Ok(found) => {
                                stats.read.record(t.elapsed().as_micros() as u64);
                                stats.not_found += u64::from(!found);
                            }
                            Err(e) => stats.failed(e),
                        },
                        Op::Update => {
                            let value = value_of(&mut rng, size);
                            match target.put(w, key, value).await {
                                Ok(()) => stats.write.record(t.elapsed().as_micros() as u64),
                                Err(e) => stats.failed(e),
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let stats = join_workers(workers).await;
    interrupt.abort();
    merge("run", "update", started.elapsed(), stats)
}

async fn join_workers(workers: Vec<tokio::task::JoinHandle<WorkerStats>>) -> Vec<WorkerStats> {
    let mut out = Vec::new();
    for r in futures::future::join_all(workers).await {
        match r {
            Ok(s) => out.push(s),
            Err(e) => {
                let mut s = WorkerStats::default();
                s.failed(format!("worker panicked: {e}"));
                out.push(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        b: BenchArgs,
    }

    #[test]
    fn defaults_and_validation() {
        let w = Wrap::try_parse_from(["bench"]).unwrap();
        assert_eq!(w.b.workload, Workload::A);
        assert!(validate(&w.b).is_ok());
        let w = Wrap::try_parse_from(["bench", "--concurrency", "0"]).unwrap();
        assert!(validate(&w.b).is_err());
        assert!(Wrap::try_parse_from(["bench", "--workload", "z"]).is_err());
        assert!(Wrap::try_parse_from(["bench", "--router", "a:1", "--pd", "b:2"]).is_err());
    }

    #[test]
    fn report_counts_and_renders() {
        let mut s = WorkerStats::default();
        s.read.record(1000);
        s.write.record(2000);
        s.failed("boom".into());
        let r = merge("run", "update", Duration::from_secs(1), vec![s]);
        assert_eq!(r.ops(), 2);
        assert_eq!(r.errors, 1);
        assert!(r.text().contains("p999"), "{}", r.text());
        assert_eq!(r.json()["latency"]["update"]["count"], 1);
        assert_eq!(split_addrs("a:1, b:2,,"), vec!["a:1", "b:2"]);
    }
}
