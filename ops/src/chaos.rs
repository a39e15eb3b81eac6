//! `concord chaos`: runs one named fault scenario against a fresh cluster
//! (processes on loopback, or containers) under a register and a set
//! workload, and prints the fault schedule, the operation counts and the
//! verdict of the linearizability, set and replica checks.

use clap::Args;
use concord_integration::chaos::{self, Options, Scenario};

use crate::error::{OpsError, Result};
use crate::signals::StopSignals;

/// Options of `concord chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// The scenario: kill-store, kill-pd, pause-store, leader-shuffle,
    /// split-shuffle, remove-store, mixed (processes on loopback), or
    /// partition-leader, partition-minority, kill-container (containers).
    pub scenario: String,
    /// Seed of the fault schedule and of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of load under faults.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Register clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Register keys.
    #[arg(long, default_value_t = 8)]
    pub keys: u64,
}

/// Runs the scenario; fails if it could not run or any check failed.
pub async fn run(args: ChaosArgs) -> Result<()> {
    let scenario = Scenario::from_name(&args.scenario).map_err(OpsError::InvalidInput)?;
    if !(5..=86_400).contains(&args.secs) {
        return Err(OpsError::InvalidInput(
            "--secs must be between 5 and 86400".into(),
        ));
    }
    if !(1..=256).contains(&args.clients) || !(2..=1000).contains(&args.keys) {
        return Err(OpsError::InvalidInput(
            "--clients must be 1..=256 and --keys 2..=1000".into(),
        ));
    }
    let options = Options {
        seed: args.seed,
        secs: args.secs,
        clients: args.clients,
        keys: args.keys,
    };
    // A stop signal drops the run, and with it the cluster: processes are
    // killed, containers, volumes and the image removed.
    let mut signals = StopSignals::new()?;
    let report = tokio::select! {
        r = chaos::run(scenario, options) => r.map_err(|e| {
            OpsError::Setup(format!("the chaos run could not be carried out: {e}"))
        })?,
        s = signals.next() => return Err(OpsError::Setup(format!("stopped by {s}; the cluster was torn down"))),
    };
    println!("{report}");
    if report.passed() {
        Ok(())
    } else {
        Err(OpsError::Request {
            op: "chaos",
            message: "a check failed (see the report above)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scenario_lists_the_valid_ones() {
        let args = ChaosArgs {
            scenario: "nope".into(),
            seed: 1,
            secs: 30,
            clients: 8,
            keys: 8,
        };
        let err = run(args).await.unwrap_err().to_string();
        for s in Scenario::ALL {
            assert!(err.contains(s.name()), "{err}");
        }
    }
}
