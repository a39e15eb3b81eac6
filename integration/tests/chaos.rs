//! Chaos scenarios in CI: a kill scenario on processes and a partition
//! scenario on containers, each with 30 s of load under faults, judged by
//! the linearizability checker, the set read-back and the replica
//! checksums. Longer soaks: `concord chaos <scenario> --secs 600`.

use concord_integration::chaos::{self, Options, Scenario};
use concord_integration::compose::on_path;

/// The seed: `CHAOS_SEED` if set (to replay a run), else fixed.
fn options() -> Options {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    Options {
        seed,
        secs: 30,
        ..Options::default()
    }
}

/// One scenario at a time: two clusters under load on two cores would
/// starve each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_and_judge(scenario: Scenario) {
    let _serial = SERIAL.lock().await;
    let report = chaos::run(scenario, options())
        .await
        .unwrap_or_else(|e| panic!("{} could not run: {e}", scenario.name()));
    println!("{report}");
    assert!(report.faults > 0, "no fault was injected:\n{report}");
    let counts = report.counts();
    assert!(
        counts.read.ok + counts.write.ok + counts.cas.ok > 100,
        "too few operations succeeded to judge anything:\n{report}"
    );
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_store_scenario_keeps_history_linearizable() {
    run_and_judge(Scenario::KillStore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_faults_scenario_keeps_history_linearizable() {
    run_and_judge(Scenario::Mixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_leader_scenario_keeps_history_linearizable() {
    if !on_path("docker") {
        println!("SKIPPED partition_leader: `docker` is not installed on this machine");
        return;
    }
    run_and_judge(Scenario::PartitionLeader).await;
}
