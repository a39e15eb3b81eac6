//! The compose cluster of `ops/docker` (three PD members, three stores, a
//! router) as containers on their own network, built from the workspace's
//! binaries, torn down with its volumes and image on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{Cluster, Node};
use crate::process::{bin_dir, free_port};

/// Whether `name` is an executable file on `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// The workspace root (the image build script and compose file live there).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Stdout or stderr as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `docker-compose`, or `docker compose` when that plugin is installed.
fn compose_program() -> Result<Vec<String>, String> {
    if on_path("docker-compose") {
        return Ok(vec!["docker-compose".into()]);
    }
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|o| o.status.success()) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    Err("docker is installed but neither `docker-compose` nor `docker compose` is".into())
}

const FIXED_STORES: &str = "the compose cluster has a fixed set of stores";

const PD_URLS: &str = "http://pd1:2380,http://pd2:2380,http://pd3:2380";

/// A running compose project.
pub struct ComposeCluster {
    program: Vec<String>,
    project: String,
    file: PathBuf,
    image: String,
    env: Vec<(String, String)>,
    router_port: u16,
}

impl ComposeCluster {
    /// Builds the image from the binaries next to the running one and
    /// starts the cluster (`up -d`); does not wait for it to serve.
    pub fn start() -> Result<ComposeCluster, String> {
        if !on_path("docker") {
            return Err("`docker` is not installed on this machine".into());
        }
        let bins = bin_dir();
        for b in [
            "concord-pd",
            "pd-ctl",
            "concord-store",
            "concord-router",
            "concord",
        ] {
            if !bins.join(b).is_file() {
                return Err(format!(
                    "{} missing: run `cargo build --workspace --bins` first",
                    bins.join(b).display()
                ));
            }
        }
        let profile = bins
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("binaries are not in target/<profile>")?
            .to_string();
        let id = format!("{}x{}", std::process::id(), free_port());
        let image = format!("concordkv:it-{id}");
        let router_port = free_port();
        let cluster = ComposeCluster {
            program: compose_program()?,
            project: format!("concordit{id}"),
            file: workspace().join("ops/docker/compose.yml"),
            image: image.clone(),
            env: vec![
                ("CONCORD_IMAGE".into(), image.clone()),
                ("CONCORD_ROUTER_PORT".into(), router_port.to_string()),
                ("CONCORD_PD_HTTP_PORT".into(), free_port().to_string()),
            ],
            router_port,
        };
        let build = Command::new(workspace().join("ops/docker/build-image.sh"))
            .args(["--profile", &profile, "--no-cargo", "--tag", &image])
            .env("CARGO_TARGET_DIR", bins.parent().ok_or("no target dir")?)
            .output()
            .map_err(|e| format!("cannot run build-image.sh: {e}"))?;
        if !build.status.success() {
            return Err(format!(
                "image build failed:\n{}{}",
                text(&build.stdout),
                text(&build.stderr)
            ));
        }
        cluster.run_ok(&["up", "-d"])?;
        Ok(cluster)
    }

    /// Runs `docker-compose -p <project> -f <file> <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.output().unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot run {:?}: {e}", self.program).into_bytes(),
        })
    }

    fn run_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run(args);
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!("compose {args:?}: {}", text(&out.stderr).trim()))
        }
    }

    /// Runs a command inside a service's container.
    pub fn exec(&self, service: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "-T", service];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The last log lines of every container.
    pub fn logs(&self) -> String {
        text(&self.run(&["logs", "--no-color", "--tail", "30"]).stdout)
    }

    /// The router's address as published on the host.
    pub fn router_addr(&self) -> String {
        format!("127.0.0.1:{}", self.router_port)
    }

    fn service(node: Node) -> String {
        node.to_string()
    }

    fn container(&self, service: &str) -> Result<String, String> {
        let id = self.run_ok(&["ps", "-q", service])?.trim().to_string();
        if id.is_empty() {
            return Err(format!("no container for {service}"));
        }
        Ok(id)
    }

    fn network(&self) -> String {
        format!("{}_concord", self.project)
    }

    fn docker(args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run docker: {e}"))?;
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!("docker {args:?}: {}", text(&out.stderr).trim()))
        }
    }

    /// Polls `f` every 500 ms until it succeeds or `timeout` passes.
    pub fn wait_until(
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match f() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("timed out waiting for {what}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        let _ = self.run(&["kill"]);
        let _ = self.run(&["down", "-v", "--remove-orphans"]);
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

impl Cluster for ComposeCluster {
    fn router_addrs(&self) -> Vec<String> {
        vec![self.router_addr()]
    }

    fn pd_count(&self) -> usize {
        3
    }

    fn store_count(&self) -> usize {
        3
    }

    /// Runs pd-ctl inside the first PD container that answers (a member
    /// may be killed or cut off).
    fn pd_ctl(&self, args: &[&str]) -> Result<Value, String> {
        let mut last = String::new();
        for pd in ["pd1", "pd2", "pd3"] {
            let mut all = vec!["pd-ctl", "-u", PD_URLS];
            all.extend_from_slice(args);
            let out = self.exec(pd, &all);
            if out.status.success() {
                return serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("pd-ctl {args:?} printed no JSON: {e}"));
            }
            last = text(&out.stderr);
        }
        Err(format!("pd-ctl {args:?}: {}", last.trim()))
    }

    fn store_of_addr(&self, addr: &str) -> Option<usize> {
        let n: usize = addr
            .strip_prefix("store")?
            .split(':')
            .next()?
            .parse()
            .ok()?;
        (1..=3).contains(&n).then(|| n - 1)
    }

    /// The store's container IP: the host reaches containers on their
    /// bridge network directly.
    fn reachable_store_addr(&self, addr: &str) -> String {
        let Some(i) = self.store_of_addr(addr) else {
            return addr.to_string();
        };
        let ip = self
            .container(&Self::service(Node::Store(i)))
            .and_then(|c| {
                Self::docker(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    &c,
                ])
            })
            .map(|ip| ip.trim().to_string());
        match ip {
            Ok(ip) if !ip.is_empty() => format!("{ip}:20160"),
            _ => addr.to_string(),
        }
    }

    fn kill(&mut self, node: Node) -> Result<(), String> {
        self.run_ok(&["kill", &Self::service(node)]).map(drop)
    }

    fn restart(&mut self, node: Node) -> Result<(), String> {
        self.run_ok(&["start", &Self::service(node)]).map(drop)
    }

    fn pause(&mut self, node: Node) -> Result<(), String> {
        self.run_ok(&["pause", &Self::service(node)]).map(drop)
    }

    fn resume(&mut self, node: Node) -> Result<(), String> {
        self.run_ok(&["unpause", &Self::service(node)]).map(drop)
    }

    fn isolate(&mut self, node: Node) -> Result<(), String> {
        let c = self.container(&Self::service(node))?;
        Self::docker(&["network", "disconnect", &self.network(), &c]).map(drop)
    }

    fn heal(&mut self, node: Node) -> Result<(), String> {
        let service = Self::service(node);
        let c = self.container(&service)?;
        Self::docker(&[
            "network",
            "connect",
            "--alias",
            &service,
            &self.network(),
            &c,
        ])
        .map(drop)
    }

    fn add_store(&mut self) -> Result<usize, String> {
        Err(FIXED_STORES.into())
    }

    fn drop_store(&mut self, _index: usize) -> Result<(), String> {
        Err(FIXED_STORES.into())
    }

    fn save_logs(&self, dir: &Path) -> Result<(), String> {
        let logs = self.run_ok(&["logs", "--no-color", "--timestamps"])?;
        let path = dir.join("compose.log");
        std::fs::write(&path, logs).map_err(|e| format!("{}: {e}", path.display()))
    }
}
