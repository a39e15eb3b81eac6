//! `concord bench`: YCSB-like workloads against routers (or PD, as a smart
//! client), reporting throughput, latency percentiles and errors by kind
//! per operation.
//!
//! - [`workload`]: the mixes and how records and values are picked.
//! - [`target`]: the router or smart-client connection, the probe before
//!   the phases, and the classification of failures.
//! - [`phase`]: the workers of one phase.
//! - [`report`]: what a phase measured, as text or JSON.
//! - [`progress`]: the once-a-second progress line.
//! - [`histogram`]: latency histograms.

pub mod histogram;
pub mod phase;
pub mod progress;
pub mod report;
pub mod target;
pub mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use concord_router::RoutingConfig;
use serde_json::{json, Value};

use crate::error::{OpsError, Result};
use crate::kv::DEFAULT_ROUTER;
use phase::{Schedule, Settings};
use report::{thousands, PhaseReport};
use target::{Destination, Target};
use workload::{Distribution, KeyChooser, Values, Workload};

/// Most concurrent requests allowed.
const MAX_CONCURRENCY: usize = 4096;

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
    /// The workload: load (inserts only), a (50% read / 50% update),
    /// b (95/5), c (read only), e (95% short scan / 5% insert),
    /// f (50% read / 50% read-modify-write), put (raw puts, no load phase),
    /// get (raw gets).
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// Records in the data set (inserted first unless --skip-load or
    /// --workload put).
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Value size in bytes (1 to 8 MiB).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Longest scan of workload e, in records (each scan reads a uniform
    /// 1..=this).
    #[arg(long, default_value_t = 10)]
    pub scan_length: u32,
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
    /// Per-request deadline in seconds (also the smart client's retry budget).
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// Whether the records are inserted before the run phase.
    fn loads(&self) -> bool {
        self.workload == Workload::Load || (self.workload.loads_by_default() && !self.skip_load)
    }

    /// Whether there is a run phase.
    fn runs(&self) -> bool {
        self.workload != Workload::Load
    }
}

fn split_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Checks the options and says where requests go.
fn validate(args: &BenchArgs) -> Result<Destination> {
    let invalid = |m: &str| Err(OpsError::InvalidInput(m.into()));
    if args.records == 0 {
        return invalid("--records must be at least 1");
    }
    let max_value = RoutingConfig::default().limits.max_value_size;
    if args.value_size == 0 || args.value_size > max_value {
        return Err(OpsError::InvalidInput(format!(
            "--value-size must be between 1 and {max_value} bytes (the store's limit)"
        )));
    }
    if args.scan_length == 0 {
        return invalid("--scan-length must be at least 1");
    }
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(OpsError::InvalidInput(format!(
            "--concurrency must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    if args.timeout_secs == 0 {
        return invalid("--timeout-secs must be at least 1");
    }
    if args.runs() && args.duration_secs == 0 && args.operations == 0 {
        return invalid("give a positive --duration-secs or --operations");
    }
    let (dest, flag) = match &args.pd {
        Some(pd) => (Destination::Pd(split_addrs(pd)), "--pd"),
        None => (Destination::Routers(split_addrs(&args.router)), "--router"),
    };
    if dest.addrs().is_empty() {
        return Err(OpsError::InvalidInput(format!(
            "{flag} needs at least one HOST:PORT"
        )));
    }
    Ok(dest)
}

/// The first line of the text report.
fn header(args: &BenchArgs, dest: &Destination) -> String {
    let scans = if args.workload == Workload::E {
        format!(", scans of 1..={} records", args.scan_length)
    } else {
        String::new()
    };
    let keys = if args.runs() {
        format!(", {} keys", distribution_name(args.distribution))
    } else {
        String::new()
    };
    format!(
        "{}, {} records of {} bytes, concurrency {}{keys}{scans}, target {}{}",
        args.workload.describe(),
        thousands(args.records),
        args.value_size,
        args.concurrency,
        dest.describe(),
        if cfg!(debug_assertions) {
            " [concord built in debug mode]"
        } else {
            ""
        }
    )
}

fn distribution_name(d: Distribution) -> &'static str {
    match d {
        Distribution::Uniform => "uniform",
        Distribution::Zipfian => "zipfian",
    }
}

/// The whole run as one JSON document.
fn document(args: &BenchArgs, dest: &Destination, phases: &[PhaseReport]) -> Value {
    json!({
        "workload": args.workload.name(),
        "target": dest.kind(),
        "addresses": dest.addrs(),
        "records": args.records,
        "value_size": args.value_size,
        "scan_length": args.scan_length,
        "concurrency": args.concurrency,
        "distribution": distribution_name(args.distribution),
        "debug_build": cfg!(debug_assertions),
        "phases": phases.iter().map(PhaseReport::json).collect::<Vec<_>>(),
    })
}

/// Runs the benchmark and prints its report.
pub async fn run(args: BenchArgs) -> Result<()> {
    let dest = validate(&args)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let target = Target::connect(&dest, timeout).await?;
    if !args.json {
        println!("{}", header(&args, &dest));
    }
    // Ctrl-C ends the current phase early; the report covers what ran.
    let stop = Arc::new(AtomicBool::new(false));
    let interrupt = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let settings = Settings {
        concurrency: args.concurrency,
        values: Values::new(&mut rand::thread_rng(), args.value_size),
        scan_length: args.scan_length,
        progress: !args.quiet,
    };
    let show = |report: &PhaseReport| {
        if !args.json {
            println!("{}", report.text());
        }
    };
    let mut phases = Vec::new();
    if args.loads() {
        let load = Schedule::load(args.records);
        let report = phase::run("load", load, &target, &settings, &stop).await;
        show(&report);
        phases.push(report);
    }
    if args.runs() && !stop.load(Ordering::Relaxed) {
        // Built now, so the duration counts from the end of the load.
        let chooser = KeyChooser::new(args.distribution, args.records);
        let duration = (args.duration_secs > 0).then(|| Duration::from_secs(args.duration_secs));
        let run = Schedule::run(
            args.workload,
            chooser,
            args.records,
            duration,
            args.operations,
        );
        let report = phase::run("run", run, &target, &settings, &stop).await;
        show(&report);
        phases.push(report);
    }
    interrupt.abort();
    if args.json {
        println!("{}", document(&args, &dest, &phases));
    }
    let ops: u64 = phases.iter().map(|p| p.stats.ops()).sum();
    let first_error = phases.iter().flat_map(|p| &p.stats.samples).next();
    match first_error {
        Some(sample) if ops == 0 => Err(OpsError::Request {
            op: "bench",
            message: format!("every operation failed; first error: {}", sample.error),
        }),
        _ => Ok(()),
    }
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

    fn parse(args: &[&str]) -> BenchArgs {
        Wrap::try_parse_from([&["bench"][..], args].concat())
            .expect("valid flags")
            .b
    }

    fn invalid(args: &[&str]) -> String {
        validate(&parse(args))
            .expect_err("invalid options")
            .to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let b = parse(&[]);
        assert_eq!(b.workload, Workload::A);
        assert_eq!(b.scan_length, 10);
        assert!(!b.quiet);
        assert_eq!(
            validate(&b).unwrap(),
            Destination::Routers(vec![DEFAULT_ROUTER.into()])
        );
        let b = parse(&["--pd", "a:1, b:2,,"]);
        assert_eq!(
            validate(&b).unwrap(),
            Destination::Pd(vec!["a:1".into(), "b:2".into()])
        );
    }

    #[test]
    fn bad_numbers_are_refused_with_the_flag_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--records", "0"], "--records must be at least 1"),
            (
                &["--value-size", "0"],
                "--value-size must be between 1 and 8388608",
            ),
            (
                &["--value-size", "8388609"],
                "--value-size must be between 1",
            ),
            (&["--scan-length", "0"], "--scan-length must be at least 1"),
            (
                &["--concurrency", "0"],
                "--concurrency must be between 1 and 4096",
            ),
            (&["--concurrency", "5000"], "--concurrency"),
            (&["--timeout-secs", "0"], "--timeout-secs"),
            (&["--duration-secs", "0"], "--duration-secs or --operations"),
            (
                &["--router", " , "],
                "--router needs at least one HOST:PORT",
            ),
            (&["--pd", ""], "--pd needs at least one HOST:PORT"),
        ];
        for (args, want) in cases {
            let err = invalid(args);
            assert!(err.contains(want), "{args:?}: {err}");
        }
        // The load workload has no run phase to time.
        assert!(validate(&parse(&["--workload", "load", "--duration-secs", "0"])).is_ok());
        assert!(validate(&parse(&["--value-size", "8388608"])).is_ok());
    }

    #[test]
    fn an_unknown_workload_lists_the_valid_ones() {
        let err = Wrap::try_parse_from(["bench", "--workload", "z"])
            .err()
            .expect("z is no workload")
            .to_string();
        for name in ["load", "a", "b", "c", "e", "f", "put", "get"] {
            assert!(err.contains(name), "{name} missing in {err}");
        }
        assert!(
            err.contains("[possible values: load, a, b, c, e, f, put, get]"),
            "{err}"
        );
        assert!(Wrap::try_parse_from(["bench", "--router", "a:1", "--pd", "b:2"]).is_err());
    }

    #[test]
    fn put_skips_the_load_and_load_has_no_run() {
        let phases = |args: &[&str]| {
            let b = parse(args);
            (b.loads(), b.runs())
        };
        assert_eq!(phases(&["--workload", "put"]), (false, true));
        assert_eq!(phases(&["--workload", "get"]), (true, true));
        assert_eq!(phases(&["--workload", "f", "--skip-load"]), (false, true));
        assert_eq!(
            phases(&["--workload", "load", "--skip-load"]),
            (true, false)
        );
    }

    #[test]
    fn the_json_document_parses_and_names_the_setup() {
        let b = parse(&["--workload", "e", "--pd", "p:1", "--records", "7"]);
        let dest = validate(&b).unwrap();
        let mut stats = report::Stats::default();
        stats.succeeded(
            workload::Op::Scan,
            Duration::from_millis(2),
            Default::default(),
        );
        let phase = PhaseReport {
            name: "run",
            elapsed: Duration::from_secs(1),
            interrupted: false,
            stats,
        };
        let doc = document(&b, &dest, &[phase]).to_string();
        let v: Value = serde_json::from_str(&doc).expect("valid JSON");
        assert_eq!(v["workload"], "e");
        assert_eq!(v["target"], "pd");
        assert_eq!(v["addresses"][0], "p:1");
        assert_eq!(v["records"], 7);
        assert_eq!(v["scan_length"], 10);
        assert_eq!(v["distribution"], "zipfian");
        assert_eq!(v["phases"][0]["operations"]["scan"]["count"], 1);
        assert_eq!(v["phases"][0]["errors"], 0);
        assert!(header(&b, &dest).starts_with(
            "workload e (95% scan, 5% insert), 7 records of 100 bytes, concurrency 16, \
             zipfian keys, scans of 1..=10 records, target PD p:1 (smart client)"
        ));
    }
}
