//! Chaos runs, Jepsen-style: a cluster (processes or containers) under a
//! register workload and a set workload while a seeded nemesis kills,
//! pauses, partitions, splits and moves things; then every fault is healed
//! and the run is judged: the register history must be linearizable, every
//! acknowledged insert present and nothing else, and all replicas of every
//! region identical.

pub mod nemesis;
pub mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_proto::kvrpcpb::kv_client::KvClient;
use concord_proto::kvrpcpb::RegionChecksumRequest;
use concord_router::Client;

use crate::cluster::{Cluster, LocalCluster};
use crate::compose::ComposeCluster;
use crate::history::{Counts, Op};
use crate::linearizability::{self, Verdict};
use nemesis::{is_voter, list, Fault, Nemesis};
use workload::{Registers, SetLog, SetVerdict};

/// A named chaos scenario: a cluster and the faults thrown at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Processes: SIGKILL and restart stores.
    KillStore,
    /// Processes: SIGKILL and restart PD members (3 of them).
    KillPd,
    /// Processes: SIGSTOP stores past the election timeout, then SIGCONT.
    PauseStore,
    /// Processes: leader transfers through pd-ctl.
    LeaderShuffle,
    /// Processes: region splits through pd-ctl among the register keys.
    SplitShuffle,
    /// Processes (4 stores): a store deleted through PD and a fresh one added.
    RemoveStore,
    /// Processes: all of kill, pause, PD kill, leader transfer and split.
    Mixed,
    /// Containers: cut the leader's store off from everything, heal.
    PartitionLeader,
    /// Containers: cut off a minority (a store and a PD member), heal.
    PartitionMinority,
    /// Containers: `docker kill` stores and PD members, start them again.
    KillContainer,
}

impl Scenario {
    /// Every scenario, in the order `--help` lists them.
    pub const ALL: [Scenario; 10] = [
        Scenario::KillStore,
        Scenario::KillPd,
        Scenario::PauseStore,
        Scenario::LeaderShuffle,
        Scenario::SplitShuffle,
        Scenario::RemoveStore,
        Scenario::Mixed,
        Scenario::PartitionLeader,
        Scenario::PartitionMinority,
        Scenario::KillContainer,
    ];

    /// The scenario's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillStore => "kill-store",
            Scenario::KillPd => "kill-pd",
            Scenario::PauseStore => "pause-store",
            Scenario::LeaderShuffle => "leader-shuffle",
            Scenario::SplitShuffle => "split-shuffle",
            Scenario::RemoveStore => "remove-store",
            Scenario::Mixed => "mixed",
            Scenario::PartitionLeader => "partition-leader",
            Scenario::PartitionMinority => "partition-minority",
            Scenario::KillContainer => "kill-container",
        }
    }

    /// The scenario called `name`; the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {name:?}; valid scenarios: {}",
                    Scenario::ALL.map(Scenario::name).join(", ")
                )
            })
    }

    /// Whether it runs the cluster as containers (needs Docker).
    pub fn uses_containers(self) -> bool {
        matches!(
            self,
            Scenario::PartitionLeader | Scenario::PartitionMinority | Scenario::KillContainer
        )
    }

    fn faults(self) -> &'static [Fault] {
        match self {
            Scenario::KillStore => &[Fault::KillStore],
            Scenario::KillPd => &[Fault::KillPd],
            Scenario::PauseStore => &[Fault::PauseStore],
            Scenario::LeaderShuffle => &[Fault::TransferLeader],
            Scenario::SplitShuffle => &[Fault::Split],
            Scenario::RemoveStore => &[Fault::RemoveStore],
            Scenario::Mixed => &[
                Fault::KillStore,
                Fault::PauseStore,
                Fault::KillPd,
                Fault::TransferLeader,
                Fault::Split,
            ],
            Scenario::PartitionLeader => &[Fault::IsolateLeader],
            Scenario::PartitionMinority => &[Fault::IsolateMinority],
            Scenario::KillContainer => &[Fault::KillStore, Fault::KillPd],
        }
    }

    fn start_cluster(self) -> Result<Box<dyn Cluster>, String> {
        Ok(match self {
            s if s.uses_containers() => Box::new(ComposeCluster::start()?),
            Scenario::RemoveStore => Box::new(LocalCluster::start(3, 4)),
            _ => Box::new(LocalCluster::start(3, 3)),
        })
    }
}

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of the fault schedule and the clients' choices.
    pub seed: u64,
    /// Seconds of load under faults.
    pub secs: u64,
    /// Register clients.
    pub clients: usize,
    /// Register keys.
    pub keys: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seed: 1,
            secs: 30,
            clients: 8,
            keys: 8,
        }
    }
}

/// The verdict of a run.
#[derive(Debug)]
pub struct Report {
    /// Scenario run.
    pub scenario: Scenario,
    /// Options it ran with.
    pub options: Options,
    /// The fault schedule as it happened.
    pub schedule: Vec<String>,
    /// Faults injected.
    pub faults: usize,
    /// The linearizability checker's verdict on the register history.
    pub linearizability: Verdict,
    /// The set read-back.
    pub set: SetVerdict,
    /// Regions whose replicas were compared, or why they differ.
    pub replicas: Result<usize, String>,
    /// Every register operation, in invocation order.
    pub history: Vec<Op>,
    /// Wall-clock time of the history's zero, to line it up with logs.
    pub history_start: std::time::SystemTime,
    /// Where the logs and history of a failed run were kept.
    pub evidence: Option<std::path::PathBuf>,
}

impl Report {
    /// Register operations by outcome.
    pub fn counts(&self) -> Counts {
        Counts::of(&self.history)
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.linearizability.ok && self.set.problems.is_empty() && self.replicas.is_ok()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scenario {} seed {} for {} s: {} faults",
            self.scenario.name(),
            self.options.seed,
            self.options.secs,
            self.faults
        )?;
        for line in &self.schedule {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "register operations: {}", self.counts())?;
        let l = &self.linearizability;
        writeln!(
            f,
            "linearizability: {} ({} ops on {} keys checked in {:.2} s)",
            if l.ok { "OK" } else { "VIOLATED" },
            l.ops,
            l.keys,
            l.elapsed.as_secs_f64()
        )?;
        for k in &l.timed_out_keys {
            writeln!(f, "  key {k}: the search ran out of time (no verdict)")?;
        }
        for failure in &l.failures {
            writeln!(f, "  key {}: {}", failure.key, failure.explanation)?;
        }
        let s = &self.set;
        writeln!(
            f,
            "set: {} keys read back, {} acknowledged, {} of {} unknown present: {}",
            s.found,
            s.acked,
            s.unknown_present,
            s.unknown,
            if s.problems.is_empty() {
                "OK"
            } else {
                "VIOLATED"
            }
        )?;
        for p in s.problems.iter().take(20) {
            writeln!(f, "  {p}")?;
        }
        match &self.replicas {
            Ok(n) => writeln!(f, "replicas: OK ({n} regions identical on every store)")?,
            Err(e) => writeln!(f, "replicas: DIFFER: {e}")?,
        }
        if let Some(dir) = &self.evidence {
            writeln!(f, "logs and history: {}", dir.display())?;
        }
        write!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Runs `scenario`: starts its cluster, runs the workloads under the fault
/// schedule for `options.secs`, heals, and judges. `Err` means the run
/// could not be carried out (cluster did not start), not that a check
/// failed: see [`Report::passed`].
pub async fn run(scenario: Scenario, options: Options) -> Result<Report, String> {
    let cluster = blocking(move || scenario.start_cluster()).await??;
    let seed = options.seed;
    let (cluster, mut result) = run_on(cluster, scenario, options).await;
    if result.as_ref().map_or(true, |r| !r.passed()) {
        let dir = std::env::temp_dir().join(format!(
            "concord-chaos-{}-seed{seed}-{}",
            scenario.name(),
            std::process::id()
        ));
        let saved = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| cluster.save_logs(&dir))
            .and_then(|()| match &result {
                Ok(report) => save_history(report, &dir),
                Err(_) => Ok(()),
            });
        match saved {
            Ok(()) => eprintln!("chaos: logs and history kept in {}", dir.display()),
            Err(e) => eprintln!("chaos: could not keep the logs: {e}"),
        }
        if let Ok(report) = &mut result {
            report.evidence = Some(dir);
        }
    }
    // Tearing down (containers especially) blocks.
    blocking(move || drop(cluster)).await?;
    result
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a chaos task panicked: {e}"))
}

async fn run_on(
    mut cluster: Box<dyn Cluster>,
    scenario: Scenario,
    options: Options,
) -> (Box<dyn Cluster>, Result<Report, String>) {
    let client = match Client::connect_routers(&cluster.router_addrs()).await {
        Ok(c) => c,
        Err(e) => return (cluster, Err(e.to_string())),
    };
    if let Err(e) = wait_until_ready(cluster.as_mut(), &client).await {
        return (cluster, Err(e));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let history_start = std::time::SystemTime::now();
    let registers = Registers::new(options.keys);
    let set_log = Arc::new(Mutex::new(SetLog::default()));
    let mut tasks = Vec::new();
    for p in 0..options.clients {
        tasks.push(tokio::spawn(registers.clone().client(
            client.clone(),
            p,
            options.clients,
            options.seed.wrapping_mul(1000).wrapping_add(p as u64),
            stop.clone(),
        )));
    }
    for w in 0..2 {
        tasks.push(tokio::spawn(workload::set_writer(
            client.clone(),
            w,
            set_log.clone(),
            stop.clone(),
        )));
    }

    // The nemesis blocks on processes, docker and pd-ctl: it runs on a
    // blocking thread and hands the cluster back when done.
    let until = Instant::now() + Duration::from_secs(options.secs);
    let (seed, keys) = (options.seed, options.keys);
    let (mut cluster, schedule, faults) = match tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let mut nemesis = Nemesis::new(cluster.as_mut(), seed, keys);
        nemesis.run(scenario.faults(), until);
        let (schedule, faults) = (nemesis.schedule, nemesis.faults);
        (cluster, schedule, faults)
    })
    .await
    {
        Ok(out) => out,
        // The cluster was dropped (processes killed) while unwinding.
        Err(e) => panic!("the nemesis panicked: {e}"),
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    let log = std::mem::take(&mut *set_log.lock().unwrap_or_else(|e| e.into_inner()));
    // A cluster that cannot serve the read-back fails the run.
    let set = workload::check_set(&client, &log)
        .await
        .unwrap_or_else(|e| SetVerdict {
            problems: vec![e],
            ..SetVerdict::default()
        });
    let history = registers.history.ops();
    // The checker borrows the history on its thread and hands it back.
    let checked = blocking(move || {
        let verdict = linearizability::check(&history, Duration::from_secs(60));
        (verdict, history)
    })
    .await;
    let (linearizability, history) = match checked {
        Ok(v) => v,
        Err(e) => return (cluster, Err(e)),
    };
    let replicas = replicas_identical(cluster.as_mut()).await;
    let report = Report {
        scenario,
        options,
        schedule,
        faults,
        linearizability,
        set,
        replicas,
        history,
        history_start,
        evidence: None,
    };
    (cluster, Ok(report))
}

/// Writes the history, one operation per line, to `dir/history.txt`.
fn save_history(report: &Report, dir: &std::path::Path) -> Result<(), String> {
    let zero = report
        .history_start
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut text = format!(
        "# times are since unix time {}.{:03} s\n",
        zero.as_secs(),
        zero.subsec_millis()
    );
    text.extend(report.history.iter().map(|op| format!("{op}\n")));
    let path = dir.join("history.txt");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Waits until the cluster serves writes and every region has three voters
/// (so that one lost store cannot lose quorum).
async fn wait_until_ready(cluster: &mut dyn Cluster, client: &Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.put(b"chaos/ready", b"1").await {
            Err(e) => last = e.to_string(),
            Ok(()) => match cluster.pd_ctl(&["region"]) {
                Err(e) => last = e,
                Ok(regions) => {
                    let all = list(&regions, "regions");
                    let voters =
                        |r: &serde_json::Value| list(r, "peers").iter().filter(is_voter).count();
                    if !all.is_empty() && all.iter().all(|r| voters(r) == 3) {
                        return Ok(());
                    }
                    last = "regions are still being replicated".into();
                }
            },
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("the cluster never became ready: {last}"))
}

/// Compares every region's checksum on every store holding a replica,
/// retrying for a while as lagging replicas catch up.
async fn replicas_identical(cluster: &mut dyn Cluster) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match compare_replicas(cluster).await {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Each region and the (store id, reachable address) of its replicas.
type Replicas = Vec<(u64, Vec<(u64, String)>)>;

fn replica_addrs(cluster: &dyn Cluster) -> Result<Replicas, String> {
    let regions = list(&cluster.pd_ctl(&["region"])?, "regions");
    let stores = list(&cluster.pd_ctl(&["store"])?, "stores");
    let addr_of = |id: u64| {
        stores
            .iter()
            .find(|s| s["id"].as_u64() == Some(id))
            .and_then(|s| s["address"].as_str())
            .map(|a| cluster.reachable_store_addr(a))
            .ok_or_else(|| format!("store {id} unknown"))
    };
    regions
        .iter()
        .map(|r| {
            let id = r["id"].as_u64().ok_or("region without id")?;
            let peers = list(r, "peers")
                .iter()
                .map(|p| {
                    let store = p["store_id"].as_u64().ok_or("peer without store")?;
                    Ok((store, addr_of(store)?))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok((id, peers))
        })
        .collect()
}

async fn compare_replicas(cluster: &mut dyn Cluster) -> Result<usize, String> {
    let regions = replica_addrs(cluster)?;
    for (id, peers) in &regions {
        let mut sums = Vec::new();
        for (store, addr) in peers {
            let mut kv = KvClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| format!("store {store} at {addr}: {e}"))?;
            let resp = kv
                .region_checksum(RegionChecksumRequest { region_id: *id })
                .await
                .map_err(|e| format!("checksum of region {id} on store {store}: {e}"))?
                .into_inner();
            if let Some(e) = resp.region_error {
                return Err(format!("region {id} on store {store}: {}", e.message));
            }
            sums.push((*store, resp.checksum, resp.total_kvs, resp.applied_index));
        }
        let first = sums
            .first()
            .ok_or_else(|| format!("region {id} has no peers"))?;
        if sums.iter().any(|s| (s.1, s.2) != (first.1, first.2)) {
            return Err(format!(
                "region {id}: (store, checksum, kvs, applied index) = {sums:?}"
            ));
        }
    }
    Ok(regions.len())
}
