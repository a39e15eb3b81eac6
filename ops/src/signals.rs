//! The signals that stop a long-running command: SIGTERM, Ctrl-C, SIGHUP.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::error::{OpsError, Result};

/// Watches the stop signals from creation on.
pub struct StopSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl StopSignals {
    /// Starts watching; must be called within a tokio runtime.
    pub fn new() -> Result<StopSignals> {
        let watch = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|e| OpsError::io("cannot watch signal", name, e))
        };
        Ok(StopSignals {
            term: watch(SignalKind::terminate(), "SIGTERM")?,
            int: watch(SignalKind::interrupt(), "SIGINT")?,
            hup: watch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for the next stop signal and names it.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "Ctrl-C",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
