//! Whole clusters under test, as processes on loopback ([`LocalCluster`])
//! or as containers on their own network (`crate::compose::ComposeCluster`),
//! behind one interface the chaos runner drives: [`Cluster`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{bin_dir, free_port, Proc, StoreProc};

/// A process a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// PD member `i` (0-based).
    Pd(usize),
    /// Store process `i` (0-based).
    Store(usize),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Pd(i) => write!(f, "pd{}", i + 1),
            Node::Store(i) => write!(f, "store{}", i + 1),
        }
    }
}

/// What the chaos runner needs of a cluster: where clients connect, how to
/// ask PD, and the faults it can inject. Calls block until the fault is in
/// place.
pub trait Cluster: Send {
    /// Router addresses clients connect to.
    fn router_addrs(&self) -> Vec<String>;
    /// Number of PD members.
    fn pd_count(&self) -> usize;
    /// Number of store processes started so far (some may be removed).
    fn store_count(&self) -> usize;
    /// Runs `pd-ctl` against the cluster's PD and parses its JSON answer.
    fn pd_ctl(&self, args: &[&str]) -> Result<Value, String>;
    /// The store process whose advertised address is `addr`.
    fn store_of_addr(&self, addr: &str) -> Option<usize>;
    /// The address at which this process reaches the store advertised as
    /// `addr` (for checksums).
    fn reachable_store_addr(&self, addr: &str) -> String;
    /// SIGKILL.
    fn kill(&mut self, node: Node) -> Result<(), String>;
    /// Starts a killed node again, with its data.
    fn restart(&mut self, node: Node) -> Result<(), String>;
    /// SIGSTOP.
    fn pause(&mut self, node: Node) -> Result<(), String>;
    /// SIGCONT.
    fn resume(&mut self, node: Node) -> Result<(), String>;
    /// Cuts every link of the node (containers only).
    fn isolate(&mut self, node: Node) -> Result<(), String>;
    /// Restores the links [`Cluster::isolate`] cut.
    fn heal(&mut self, node: Node) -> Result<(), String>;
    /// Starts one more store with empty data; returns its index.
    fn add_store(&mut self) -> Result<usize, String>;
    /// Stops a store for good (after PD removed it).
    fn drop_store(&mut self, index: usize) -> Result<(), String>;
    /// Writes every process's whole log into `dir`, for failure reports.
    fn save_logs(&self, dir: &Path) -> Result<(), String>;
}

/// Store settings of clusters under test: a fast clock so elections and
/// failovers fit in short runs.
pub const TEST_STORE_CONFIG: &str =
    "[raftstore]\ntick-interval-ms = 50\nraft-log-gc-threshold = 200\n";

/// Runs `pd-ctl -u <urls> <args>` and parses the JSON it prints.
pub fn run_pd_ctl(urls: &str, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(bin_dir().join("pd-ctl"))
        .arg("-u")
        .arg(urls)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run pd-ctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pd-ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("pd-ctl {args:?} printed no JSON: {e}"))
}

/// PD (one or three members), stores and a router as processes on
/// 127.0.0.1, with their data in a temporary directory that is removed
/// (and every process killed) on drop.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    pds: Vec<Proc>,
    pd_addrs: Vec<String>,
    pd_http: Vec<String>,
    stores: Vec<Option<StoreProc>>,
    store_config: PathBuf,
    router: Proc,
    router_addr: String,
}

impl LocalCluster {
    /// Starts `pds` PD members (1 or 3), `stores` stores and a router, and
    /// waits until the router is ready.
    pub fn start(pds: usize, stores: usize) -> LocalCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let grpc: Vec<String> = (0..pds).map(|_| local_addr()).collect();
        let http: Vec<String> = (0..pds).map(|_| local_addr()).collect();
        let peers: Vec<String> = (0..pds).map(|_| local_addr()).collect();
        let initial = (0..pds)
            .map(|i| format!("pd{}={}", i + 1, peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let pd_procs = (0..pds)
            .map(|i| {
                let mut args = vec![
                    "--name".to_string(),
                    format!("pd{}", i + 1),
                    "--addr".into(),
                    grpc[i].clone(),
                    "--http-addr".into(),
                    http[i].clone(),
                    "--data-dir".into(),
                    dir.path()
                        .join(format!("pd{}", i + 1))
                        .display()
                        .to_string(),
                ];
                if pds > 1 {
                    args.extend([
                        "--peer-addr".into(),
                        peers[i].clone(),
                        "--initial-cluster".into(),
                        initial.clone(),
                        "--election-timeout-ms".into(),
                        "500".into(),
                    ]);
                }
                Proc::start(
                    "concord-pd",
                    args,
                    dir.path().join(format!("pd{}.log", i + 1)),
                )
            })
            .collect();
        let store_config = dir.path().join("store.toml");
        std::fs::write(&store_config, TEST_STORE_CONFIG).expect("write store config");
        let router_addr = local_addr();
        let router = Proc::start(
            "concord-router",
            vec![
                "--addr".into(),
                router_addr.clone(),
                "--status-addr".into(),
                "127.0.0.1:0".into(),
                "--pd".into(),
                grpc.join(","),
            ],
            dir.path().join("router.log"),
        );
        let mut cluster = LocalCluster {
            dir,
            pds: pd_procs,
            pd_addrs: grpc,
            pd_http: http,
            stores: Vec::new(),
            store_config,
            router,
            router_addr,
        };
        for _ in 0..stores {
            cluster.add_store().expect("start a store");
        }
        cluster
            .router
            .wait_line("concord-router ready", Duration::from_secs(60));
        cluster
    }

    /// PD gRPC addresses.
    pub fn pd_addrs(&self) -> &[String] {
        &self.pd_addrs
    }

    /// The data directory of the whole cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn store(&mut self, i: usize) -> Result<&mut StoreProc, String> {
        self.stores
            .get_mut(i)
            .and_then(Option::as_mut)
            .ok_or_else(|| format!("no store{}", i + 1))
    }

    fn proc(&mut self, node: Node) -> Result<&mut Proc, String> {
        match node {
            Node::Pd(i) => self.pds.get_mut(i).ok_or_else(|| format!("no {node}")),
            Node::Store(i) => self.store(i).map(|s| &mut s.proc),
        }
    }
}

const NO_LINKS: &str = "processes on loopback cannot be cut off; use a container scenario";

fn local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

impl Cluster for LocalCluster {
    fn router_addrs(&self) -> Vec<String> {
        vec![self.router_addr.clone()]
    }

    fn pd_count(&self) -> usize {
        self.pds.len()
    }

    fn store_count(&self) -> usize {
        self.stores.len()
    }

    fn pd_ctl(&self, args: &[&str]) -> Result<Value, String> {
        let urls: Vec<String> = self.pd_http.iter().map(|a| format!("http://{a}")).collect();
        run_pd_ctl(&urls.join(","), args)
    }

    fn store_of_addr(&self, addr: &str) -> Option<usize> {
        self.stores
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.addr == addr))
    }

    fn reachable_store_addr(&self, addr: &str) -> String {
        addr.to_string()
    }

    fn kill(&mut self, node: Node) -> Result<(), String> {
        self.proc(node)?.kill();
        Ok(())
    }

    fn restart(&mut self, node: Node) -> Result<(), String> {
        let p = self.proc(node)?;
        if !p.is_running() {
            p.kill();
            p.restart();
        }
        Ok(())
    }

    fn pause(&mut self, node: Node) -> Result<(), String> {
        self.proc(node)?.signal(libc::SIGSTOP)
    }

    fn resume(&mut self, node: Node) -> Result<(), String> {
        self.proc(node)?.signal(libc::SIGCONT)
    }

    fn isolate(&mut self, _node: Node) -> Result<(), String> {
        Err(NO_LINKS.into())
    }

    fn heal(&mut self, _node: Node) -> Result<(), String> {
        Err(NO_LINKS.into())
    }

    fn add_store(&mut self) -> Result<usize, String> {
        let n = self.stores.len() + 1;
        let config = self.store_config.display().to_string();
        let store = StoreProc::start(
            self.dir.path(),
            n,
            &self.pd_addrs.join(","),
            &["--config", &config],
        );
        self.stores.push(Some(store));
        Ok(n - 1)
    }

    fn drop_store(&mut self, index: usize) -> Result<(), String> {
        let mut store = self
            .stores
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| format!("no store{}", index + 1))?;
        store.proc.terminate(Duration::from_secs(10));
        Ok(())
    }

    fn save_logs(&self, dir: &Path) -> Result<(), String> {
        let procs = self
            .pds
            .iter()
            .chain(self.stores.iter().flatten().map(|s| &s.proc))
            .chain(std::iter::once(&self.router));
        for p in procs {
            let path = dir.join(format!("{}.log", p.name()));
            std::fs::write(&path, p.log()).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }
}
