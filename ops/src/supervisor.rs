//! Child processes of the playground: started in their own process group
//! (so a terminal's Ctrl-C reaches only the playground, which then stops
//! them in order), killed by the kernel if the playground dies, and killed
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::{OpsError, Result};

/// One running component.
pub struct Supervised {
    /// Display name, e.g. `store 2`.
    pub name: String,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Supervised {
    /// Starts `binary args…` with its output appended to `log`.
    pub fn spawn(name: &str, binary: &Path, args: &[String], log: &Path) -> Result<Supervised> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| OpsError::io("cannot open log", log, e))?;
        let err = out
            .try_clone()
            .map_err(|e| OpsError::io("cannot open log", log, e))?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Own process group: a terminal Ctrl-C goes to the playground only.
                libc::setpgid(0, 0);
                // Die with the playground even if it is SIGKILLed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| OpsError::Spawn {
            name: format!("{name} ({})", binary.display()),
            source,
        })?;
        Ok(Supervised {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            exited: None,
        })
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// How the process exited, if it did (does not block).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// An error describing an unexpected exit, with the end of the log.
    pub fn exited_error(&mut self) -> Option<OpsError> {
        let status = self.exit_status()?;
        Some(OpsError::ChildExited {
            name: self.name.clone(),
            status: status.to_string(),
            log: self.log.clone(),
            tail: log_tail(&self.log, 15),
        })
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILLs.
    /// Returns whether it stopped by itself.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        if self.exit_status().is_some() {
            return true;
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child by pid; it is not reaped yet.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = Some(status);
                true
            }
            _ => {
                let _ = self.child.kill().await;
                self.exited = self.child.try_wait().ok().flatten();
                false
            }
        }
    }
}

/// The last `n` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_terminates_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut p = Supervised::spawn(
            "sleeper",
            Path::new("/bin/sleep"),
            &["1000".to_string()],
            &log,
        )
        .unwrap();
        assert!(p.pid().is_some());
        assert!(p.exit_status().is_none());
        assert!(p.stop(Duration::from_secs(10)).await);
        assert!(p.exit_status().is_some());
        assert!(p.exited_error().is_some());
    }

    #[tokio::test]
    async fn early_exit_carries_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut p = Supervised::spawn(
            "failing",
            Path::new("/bin/sh"),
            &[
                "-c".to_string(),
                "echo cannot listen on port; exit 3".to_string(),
            ],
            &log,
        )
        .unwrap();
        let status = p.child.wait().await.unwrap();
        p.exited = Some(status);
        let err = p.exited_error().unwrap().to_string();
        assert!(err.contains("failing exited"), "{err}");
        assert!(err.contains("cannot listen on port"), "{err}");
    }
}
