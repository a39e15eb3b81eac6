//! `concord-store`: a ConcordKV store node.

use std::path::PathBuf;

use clap::Parser;
use concord_store::server::{run, StoreConfig};

/// A ConcordKV store: hosts region replicas and serves the KV API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address (KV and raft) [default: 127.0.0.1:20160].
    #[arg(long)]
    addr: Option<String>,
    /// Address other processes use to reach this store [default: --addr].
    #[arg(long)]
    advertise_addr: Option<String>,
    /// HTTP status address (/metrics, /status) [default: 127.0.0.1:20180].
    #[arg(long)]
    status_addr: Option<String>,
    /// Data directory [default: concord-store-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PD endpoints, comma-separated [default: 127.0.0.1:2379].
    #[arg(long, value_delimiter = ',')]
    pd: Option<Vec<String>>,
    /// Placement labels, e.g. zone=z1,host=h1.
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
}

fn load(args: Args) -> Result<StoreConfig, String> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?
        }
        None => StoreConfig::default(),
    };
    if let Some(v) = args.addr {
        cfg.addr = v;
    }
    if let Some(v) = args.advertise_addr {
        cfg.advertise_addr = v;
    }
    if let Some(v) = args.status_addr {
        cfg.status_addr = v;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.pd {
        cfg.pd = v;
    }
    for label in args.labels.unwrap_or_default() {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| format!("label {label:?} is not key=value"))?;
        cfg.labels.insert(k.to_string(), v.to_string());
    }
    Ok(cfg)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() {
    concord_common::init_logging();
    let cfg = match load(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(
        "effective config:\n{}",
        toml::to_string(&cfg).unwrap_or_default()
    );
    if let Err(e) = run(cfg, shutdown_signal()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
