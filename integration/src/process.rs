//! Child processes of the real binaries, killed when dropped so that a
//! failing test never leaves servers behind.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1, as the OS hands them out, and never one this
/// process was given before: a port handed to a server that has not bound it
/// yet must not go to a second server.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// The directory holding the workspace's built binaries: the running
/// binary's own (`concord`) or, for a test, the one above `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running binary");
    let dir = exe.parent().expect("binary in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        // target/<profile>/deps/<test> -> target/<profile>
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A running binary; killed (SIGKILL) on drop. Its stderr goes to a log
/// file; its stdout lines can be awaited with [`Proc::wait_line`].
pub struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    stdout: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts the workspace binary `binary` with `args`, its stderr going
    /// to `log`.
    pub fn start(binary: &str, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc {
            name: binary.to_string(),
            args,
            log,
            child: None,
            stdout: None,
        };
        p.restart();
        p
    }

    /// Starts the process again with the same arguments.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        let path = bin_dir().join(&self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open process log");
        let mut child = Command::new(&path)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with `cargo build --workspace --bins`)",
                    path.display()
                )
            });
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        self.stdout = Some(rx);
        self.child = Some(child);
    }

    /// The first stdout line starting with `prefix`, waiting up to
    /// `timeout`; panics with the log tail if none comes.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let rx = self.stdout.as_ref().expect("process started");
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "{} printed no {prefix:?} line; log:\n{}",
                    self.name,
                    self.log_tail()
                ),
            }
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait up to `timeout` for a clean exit (then SIGKILL).
    /// Returns whether it exited by itself with success.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: signalling a child we own by pid. A stopped process
        // must be continued to act on SIGTERM.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
            libc::kill(c.id() as i32, libc::SIGCONT);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to the running process.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<(), String> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| format!("{} is not running", self.name()))?;
        // SAFETY: signalling a child we own by pid.
        if unsafe { libc::kill(child.id() as i32, signal) } == 0 {
            Ok(())
        } else {
            Err(format!(
                "cannot signal {}: {}",
                self.name(),
                std::io::Error::last_os_error()
            ))
        }
    }

    /// The process's name: its log file's stem (`store2`, `pd1`, ...).
    pub fn name(&self) -> String {
        self.log
            .file_stem()
            .map_or_else(|| self.name.clone(), |s| s.to_string_lossy().into_owned())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The whole process log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the process log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PD process.
pub struct PdProc {
    /// The process.
    pub proc: Proc,
    /// gRPC address.
    pub addr: String,
    /// HTTP address.
    pub http_addr: String,
}

impl PdProc {
    /// Starts `concord-pd` with its data under `dir`.
    pub fn start(dir: &Path) -> PdProc {
        let addr = format!("127.0.0.1:{}", free_port());
        let http_addr = format!("127.0.0.1:{}", free_port());
        let args = vec![
            "--addr".into(),
            addr.clone(),
            "--http-addr".into(),
            http_addr.clone(),
            "--data-dir".into(),
            dir.join("pd").display().to_string(),
        ];
        PdProc {
            proc: Proc::start("concord-pd", args, dir.join("pd.log")),
            addr,
            http_addr,
        }
    }
}

/// A store process.
pub struct StoreProc {
    /// The process.
    pub proc: Proc,
    /// gRPC address.
    pub addr: String,
    /// Status address.
    pub status_addr: String,
}

impl StoreProc {
    /// Starts `concord-store` number `n` with its data under `dir`, plus
    /// `extra` arguments.
    pub fn start(dir: &Path, n: usize, pd: &str, extra: &[&str]) -> StoreProc {
        let addr = format!("127.0.0.1:{}", free_port());
        let status_addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--addr".into(),
            addr.clone(),
            "--status-addr".into(),
            status_addr.clone(),
            "--data-dir".into(),
            dir.join(format!("store{n}")).display().to_string(),
            "--pd".into(),
            pd.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        StoreProc {
            proc: Proc::start("concord-store", args, dir.join(format!("store{n}.log"))),
            addr,
            status_addr,
        }
    }
}
