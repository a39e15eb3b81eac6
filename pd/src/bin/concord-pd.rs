//! `concord-pd`: the ConcordKV placement driver server.

use clap::Parser;
use concord_pd::config::{CliArgs, PdConfig};

async fn terminate_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops PD");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = CliArgs::parse();
    concord_common::init_logging();
    let config = match PdConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("concord-pd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(config = ?config, "starting concord-pd");
    let server = match concord_pd::server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "concord-pd failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    terminate_signal().await;
    tracing::info!("shutting down");
    match server.shutdown().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "unclean shutdown");
            std::process::ExitCode::FAILURE
        }
    }
}
