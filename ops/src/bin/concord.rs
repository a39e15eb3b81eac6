//! `concord`: run a local cluster, talk to it, benchmark it.

use clap::{Parser, Subcommand};
use concord_ops::bench::{self, BenchArgs};
use concord_ops::chaos::{self, ChaosArgs};
use concord_ops::kv::{self, KvArgs};
use concord_ops::playground::{self, PlaygroundArgs};

/// The ConcordKV command line.
#[derive(Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "ConcordKV: local playground, KV commands and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run PD, stores and a router on localhost until Ctrl-C.
    Playground(PlaygroundArgs),
    /// Read and write keys through a router.
    Kv(KvArgs),
    /// Run a YCSB-like benchmark against a router or PD.
    Bench(BenchArgs),
    /// Run a fault scenario under load and check the history for
    /// linearizability, lost writes and diverged replicas.
    Chaos(ChaosArgs),
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // The main future runs on this thread, so children spawned by the
    // playground are tied (PR_SET_PDEATHSIG) to a thread that lives until exit.
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Playground(a) => playground::run(a).await,
            Command::Kv(a) => kv::run(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Chaos(a) => chaos::run(a).await,
        }
    });
    // Dropping the runtime waits for blocking tasks (a chaos run's fault
    // schedule still holding its cluster) so that their clean-up runs.
    drop(runtime);
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
