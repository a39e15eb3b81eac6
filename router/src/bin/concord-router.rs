//! `concord-router`: the stateless ConcordKV router. Serves the raw KV
//! operations to clients and routes them to region leaders, learning the
//! cluster's layout from PD. Stops gracefully on SIGTERM or Ctrl-C.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use concord_router::config::{CliArgs, RouterConfig};
use concord_router::server;

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the router");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(args: CliArgs) -> Result<(), concord_router::Error> {
    let config = RouterConfig::load(&args)?;
    let effective = toml::to_string(&config).unwrap_or_else(|e| format!("<unprintable: {e}>"));
    tracing::info!("effective configuration:\n{effective}");
    let handle = server::start(config).await?;
    // One plain line on stdout for scripts and tests that need the bound
    // addresses (ports may have been chosen by the OS).
    println!(
        "concord-router ready: grpc={} status={}",
        handle.grpc_addr(),
        handle.status_addr()
    );
    let _ = std::io::stdout().flush();
    terminated().await;
    handle.shutdown().await?;
    tracing::info!("router stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = CliArgs::parse();
    concord_common::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("concord-router: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "concord-router failed");
            ExitCode::FAILURE
        }
    }
}
