//! Measures a 3-store in-process cluster holding many regions: CPU at idle,
//! then raw-put throughput and latency percentiles under concurrent load.
//!
//! ```sh
//! cargo run --release -p concord-store --example inproc_bench -- [REGIONS] [CONCURRENCY] [SECONDS] [--no-hibernate]
//! ```
//! Defaults: 1000 regions, 64 concurrent writers, 15 s of load, 256-byte
//! values, idle regions hibernating.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, FIRST_REGION};
use concord_store::raftstore::RaftStoreConfig;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Resident memory of this process.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let regions = args.first().copied().unwrap_or(1000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    let seconds = args.get(2).copied().unwrap_or(15);
    let cfg = RaftStoreConfig {
        hibernate_regions: !std::env::args().any(|a| a == "--no-hibernate"),
        ..RaftStoreConfig::default()
    };

    let cluster = Arc::new(Cluster::new(3, &[1, 2, 3], cfg));
    let leader = cluster.wait_leader(FIRST_REGION);
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let ctx = cluster.context(leader, &region);
    let keys: Vec<Vec<u8>> = (1..regions)
        .map(|i| format!("r{i:05}").into_bytes())
        .collect();
    let started = Instant::now();
    cluster
        .rt
        .block_on(cluster.api(leader).split_region(&ctx, keys))
        .expect("split");
    let all_led = wait_for(Duration::from_secs(120), || {
        let led: usize = cluster
            .store_ids()
            .into_iter()
            .map(|s| cluster.services(s).meta.lock().leaders.len())
            .sum();
        led as u64 == regions
    });
    assert!(all_led, "not every region elected a leader");
    println!(
        "{regions} regions on 3 stores ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Idle: once the regions that will hibernate have, nothing but ticks
    // (and heartbeats for those awake).
    let hibernating = || -> u64 {
        cluster
            .store_ids()
            .into_iter()
            .map(|s| cluster.services(s).router.hibernating() as u64)
            .sum()
    };
    if cluster.cfg.hibernate_regions {
        wait_for(Duration::from_secs(60), || hibernating() == 3 * regions);
    }
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let idle = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    println!(
        "idle: {:.1}% of one core for 3 stores x {regions} regions ({} peers hibernating), RSS {} MiB",
        idle * 100.0,
        hibernating(),
        rss_kib() / 1024
    );

    // Load: raw puts of 256-byte values on keys spread over every region.
    let value = vec![b'v'; 256];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let handle = cluster.rt.handle().clone();
            let (cluster, value) = (cluster.clone(), value.clone());
            handle.spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let key =
                        format!("r{:05}-{w}-{n}", (n * 7919 + w * 104_729) % regions).into_bytes();
                    let target = cluster.store_ids().into_iter().find_map(|s| {
                        let meta = cluster.services(s).meta.lock();
                        let r = meta.region_by_key(&key)?.clone();
                        meta.leaders.contains(&r.id).then_some((s, r))
                    });
                    let Some((store, r)) = target else { continue };
                    let ctx = cluster.context(store, &r);
                    let t = Instant::now();
                    match cluster.api(store).raw_put(&ctx, &key, &value, 0).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = cluster.rt.block_on(t).unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / elapsed;
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "raw put 256 B x {concurrency} concurrent for {seconds} s: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, {errors} retried errors, CPU {:.0}% of one core",
        latencies.len() as f64 / elapsed,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 0.999)),
        cpu * 100.0
    );
    match Arc::try_unwrap(cluster) {
        Ok(c) => c.shutdown(),
        Err(_) => unreachable!("the load tasks are done"),
    }
}
