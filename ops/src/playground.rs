//! `concord playground`: PD, stores and a router on localhost with one
//! command; waits until the cluster serves, prints how to use it, and stops
//! everything in order on Ctrl-C or SIGTERM.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use concord_proto::routerpb::{GetRequest, PutRequest};
use serde_json::Value;

use crate::binaries;
use crate::error::{OpsError, Result};
use crate::ports::{PortPlan, MAX_PD, MAX_STORES};
use crate::router_conn::connect_lazy;
use crate::signals::StopSignals;
use crate::supervisor::Supervised;

/// The line printed once the cluster serves.
pub const READY_LINE: &str = "ConcordKV playground is ready";
/// The last line of the ready block.
pub const STOP_HINT: &str = "Press Ctrl-C to stop.";

/// Options of `concord playground`.
#[derive(Debug, Clone, Args)]
pub struct PlaygroundArgs {
    /// Number of stores.
    #[arg(long, default_value_t = 3)]
    pub stores: usize,
    /// Number of PD members; more than one form a replicated (raft) group.
    #[arg(long, default_value_t = 1)]
    pub pd: usize,
    /// Directory for data and logs [default: a fresh temporary directory,
    /// removed on exit unless --keep].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary data directory on exit.
    #[arg(long)]
    pub keep: bool,
    /// First port of a fixed layout: PD member i (from 0) at BASE+3i gRPC,
    /// BASE+3i+1 HTTP, BASE+3i+2 peer; router at BASE+30 gRPC, BASE+31
    /// status; store i (from 0) at BASE+40+2i gRPC, BASE+41+2i status
    /// (0: free ports chosen by the OS).
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// TOML config passed to PD with --config.
    #[arg(long, value_name = "FILE")]
    pub pd_config: Option<PathBuf>,
    /// TOML config passed to every store with --config.
    #[arg(long, value_name = "FILE")]
    pub store_config: Option<PathBuf>,
    /// TOML config passed to the router with --config.
    #[arg(long, value_name = "FILE")]
    pub router_config: Option<PathBuf>,
    /// Seconds to wait for the cluster to serve before giving up.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout_secs: u64,
    /// Seconds each component gets to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout_secs: u64,
}

/// Where the playground keeps its data.
enum DataDir {
    /// Removed when dropped.
    Temp(tempfile::TempDir),
    /// Left in place.
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// The binaries a playground runs.
struct Binaries {
    pd: PathBuf,
    store: PathBuf,
    router: PathBuf,
    pd_ctl: PathBuf,
    concord: PathBuf,
}

/// A running playground.
struct Playground {
    router: Option<Supervised>,
    stores: Vec<Supervised>,
    pds: Vec<Supervised>,
    plan: PortPlan,
    bins: Binaries,
    dir: DataDir,
}

/// Runs a playground until Ctrl-C or SIGTERM.
pub async fn run(args: PlaygroundArgs) -> Result<()> {
    validate(&args)?;
    let mut signals = StopSignals::new()?;

    let bins = Binaries {
        pd: binaries::locate("concord-pd")?,
        store: binaries::locate("concord-store")?,
        router: binaries::locate("concord-router")?,
        pd_ctl: binaries::locate("pd-ctl")?,
        concord: std::env::current_exe()
            .map_err(|e| OpsError::io("cannot locate the running executable", "concord", e))?,
    };
    if args.pd > 1 && !supports_pd_members(&bins.pd) {
        return Err(OpsError::Unsupported(format!(
            "--pd {} needs a replicated PD, but {} has no --initial-cluster flag; use --pd 1",
            args.pd,
            bins.pd.display()
        )));
    }
    let plan = PortPlan::new(args.base_port, args.pd, args.stores)?;
    plan.check_free()?;
    let dir = match (&args.data_dir, args.keep) {
        (Some(d), _) => {
            std::fs::create_dir_all(d).map_err(|e| OpsError::io("cannot create", d, e))?;
            DataDir::Kept(d.clone())
        }
        (None, keep) => {
            let t = tempfile::Builder::new()
                .prefix("concord-playground-")
                .tempdir()
                .map_err(|e| {
                    OpsError::io("cannot create a directory in", std::env::temp_dir(), e)
                })?;
            if keep {
                DataDir::Kept(t.keep())
            } else {
                DataDir::Temp(t)
            }
        }
    };
    let mut pg = Playground {
        router: None,
        stores: Vec::new(),
        pds: Vec::new(),
        plan,
        bins,
        dir,
    };
    eprintln!(
        "starting {} PD, {} stores and 1 router under {}",
        args.pd,
        args.stores,
        pg.dir.path().display()
    );

    let started = tokio::select! {
        r = pg.start(&args) => r,
        s = signals.next() => Err(OpsError::Interrupted(s)),
    };
    if let Err(e) = started {
        pg.shutdown(args.stop_timeout_secs).await;
        return Err(e);
    }
    println!("{}", pg.banner(args.data_dir.is_none() && !args.keep));

    let mut reported: Vec<bool> = vec![false; args.pd + args.stores + 1];
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        tokio::select! {
            s = signals.next() => break s,
            _ = watch.tick() => pg.report_exits(&mut reported),
        }
    };
    eprintln!("{why}: stopping the playground");
    pg.shutdown(args.stop_timeout_secs).await;
    eprintln!("playground stopped");
    Ok(())
}

fn validate(args: &PlaygroundArgs) -> Result<()> {
    if args.pd == 0 || args.pd > MAX_PD {
        return Err(OpsError::InvalidInput(format!(
            "--pd {} is out of range (1 to {MAX_PD})",
            args.pd
        )));
    }
    if args.stores == 0 || args.stores > MAX_STORES {
        return Err(OpsError::InvalidInput(format!(
            "--stores {} is out of range (1 to {MAX_STORES})",
            args.stores
        )));
    }
    for f in [&args.pd_config, &args.store_config, &args.router_config]
        .into_iter()
        .flatten()
    {
        if !f.is_file() {
            return Err(OpsError::InvalidInput(format!(
                "config file {} does not exist",
                f.display()
            )));
        }
    }
    Ok(())
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Whether the `concord-pd` at `binary` can run as one of several members.
fn supports_pd_members(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .arg("--help")
        .output()
        .is_ok_and(|o| help_offers_members(&String::from_utf8_lossy(&o.stdout)))
}

/// Whether a `concord-pd --help` text offers several members.
fn help_offers_members(help: &str) -> bool {
    help.contains("--initial-cluster")
}

/// The flags of PD member `i` (from 0) of the plan.
fn pd_args(plan: &PortPlan, i: usize, dir: &Path, max_replicas: usize) -> Vec<String> {
    let me = plan.pds[i];
    let mut args = vec![
        "--addr".into(),
        addr(me.grpc),
        "--http-addr".into(),
        addr(me.http),
        "--data-dir".into(),
        dir.join(format!("pd{}", i + 1)).display().to_string(),
        "--max-replicas".into(),
        max_replicas.to_string(),
    ];
    if plan.pds.len() > 1 {
        let members: Vec<String> = plan
            .pds
            .iter()
            .enumerate()
            .map(|(j, p)| format!("pd{}={}", j + 1, addr(p.peer)))
            .collect();
        args.extend([
            "--name".into(),
            format!("pd{}", i + 1),
            "--peer-addr".into(),
            addr(me.peer),
            "--initial-cluster".into(),
            members.join(","),
        ]);
    }
    args
}

/// The PD gRPC endpoints, comma-separated, as stores and routers take them.
fn pd_endpoints(plan: &PortPlan) -> String {
    plan.pds
        .iter()
        .map(|p| addr(p.grpc))
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` quoted for a POSIX shell when it needs it.
pub fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-:=,+@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn with_config(mut args: Vec<String>, config: &Option<PathBuf>) -> Vec<String> {
    if let Some(c) = config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    args
}

impl Playground {
    async fn start(&mut self, args: &PlaygroundArgs) -> Result<()> {
        let dir = self.dir.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(args.ready_timeout_secs);
        for i in 0..args.pd {
            let pd_args = with_config(
                pd_args(&self.plan, i, &dir, args.stores.min(3)),
                &args.pd_config,
            );
            let name = if args.pd == 1 {
                "PD".to_string()
            } else {
                format!("PD {}", i + 1)
            };
            self.pds.push(Supervised::spawn(
                &name,
                &self.bins.pd,
                &pd_args,
                &dir.join(format!("pd{}.log", i + 1)),
            )?);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| OpsError::Setup(format!("cannot build an HTTP client: {e}")))?;
        for p in self.plan.pds.clone() {
            let url = format!("http://{}/status", addr(p.http));
            self.await_condition(deadline, "PD to answer on its HTTP address", || {
                let (http, url) = (http.clone(), url.clone());
                async move { pd_json(&http, &url).await.map(|_| true) }
            })
            .await?;
        }
        let pd_http = addr(self.plan.pds[0].http);
        // Any member may be the one that knows first (the raft leader).
        let status_urls: Vec<String> = self
            .plan
            .pds
            .iter()
            .map(|p| format!("http://{}/status", addr(p.http)))
            .collect();
        let pd_list = pd_endpoints(&self.plan);

        for i in 0..args.stores {
            let (grpc, status) = self.plan.stores[i];
            let store_args = with_config(
                vec![
                    "--addr".into(),
                    addr(grpc),
                    "--status-addr".into(),
                    addr(status),
                    "--data-dir".into(),
                    dir.join(format!("store{}", i + 1)).display().to_string(),
                    "--pd".into(),
                    pd_list.clone(),
                    "--labels".into(),
                    format!("host=store{}", i + 1),
                ],
                &args.store_config,
            );
            let name = format!("store {}", i + 1);
            self.stores.push(Supervised::spawn(
                &name,
                &self.bins.store,
                &store_args,
                &dir.join(format!("store{}.log", i + 1)),
            )?);
            if i == 0 {
                // The first store bootstraps the cluster; the others join it.
                self.await_condition(deadline, "the first store to bootstrap the cluster", || {
                    let (http, urls) = (http.clone(), status_urls.clone());
                    async move {
                        let mut last = Ok(false);
                        for url in &urls {
                            match pd_json(&http, url).await {
                                Ok(v) if v["bootstrapped"] == Value::Bool(true) => return Ok(true),
                                Ok(_) => {}
                                Err(e) => last = Err(e),
                            }
                        }
                        last
                    }
                })
                .await?;
            }
        }

        let router_args = with_config(
            vec![
                "--addr".into(),
                addr(self.plan.router),
                "--status-addr".into(),
                addr(self.plan.router_status),
                "--pd".into(),
                pd_list.clone(),
            ],
            &args.router_config,
        );
        self.router = Some(Supervised::spawn(
            "router",
            &self.bins.router,
            &router_args,
            &dir.join("router.log"),
        )?);

        let stores_url = format!("http://{pd_http}/pd/api/v1/stores");
        let want = args.stores;
        self.await_condition(deadline, "every store to be Up in PD", || {
            let (http, url) = (http.clone(), stores_url.clone());
            async move {
                let v = pd_json(&http, &url).await?;
                let up = v["stores"]
                    .as_array()
                    .map_or(0, |s| s.iter().filter(|s| s["state"] == "Up").count());
                Ok(up >= want)
            }
        })
        .await?;

        let client = connect_lazy(&addr(self.plan.router), Duration::from_secs(5))?;
        self.await_condition(deadline, "a put/get round trip through the router", || {
            let mut client = client.clone();
            async move {
                let key = b"__concord_playground_ready".to_vec();
                let value = format!("{:?}", std::time::SystemTime::now()).into_bytes();
                client
                    .put(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ttl: 0,
                    })
                    .await
                    .map_err(|s| s.message().to_string())?;
                let got = client
                    .get(GetRequest { key })
                    .await
                    .map_err(|s| s.message().to_string())?
                    .into_inner();
                Ok(!got.not_found && got.value == value)
            }
        })
        .await
    }

    /// Polls `check` until it returns true, failing early when a child
    /// exits and late when `deadline` passes.
    async fn await_condition<F, Fut>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut check: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, String>>,
    {
        let started = Instant::now();
        let mut last;
        loop {
            if let Some(e) = self.first_exit() {
                return Err(e);
            }
            match check().await {
                Ok(true) => return Ok(()),
                Ok(false) => last = format!("still waiting for {what}"),
                Err(e) => last = format!("{what}: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(OpsError::NotReady {
                    secs: started.elapsed().as_secs(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn children_mut(&mut self) -> impl Iterator<Item = &mut Supervised> {
        self.pds
            .iter_mut()
            .chain(self.stores.iter_mut())
            .chain(self.router.iter_mut())
    }

    fn first_exit(&mut self) -> Option<OpsError> {
        self.children_mut().find_map(|c| c.exited_error())
    }

    fn report_exits(&mut self, reported: &mut [bool]) {
        for (i, c) in self.children_mut().enumerate() {
            if let Some(status) = c.exit_status() {
                if !reported.get(i).copied().unwrap_or(true) {
                    eprintln!(
                        "warning: {} exited ({status}); see {}",
                        c.name,
                        c.log.display()
                    );
                    reported[i] = true;
                }
            }
        }
    }

    /// Stops the router, then the stores, then PD; SIGKILL after a grace
    /// period. The temporary directory goes when `self` is dropped.
    async fn shutdown(&mut self, grace_secs: u64) {
        let grace = Duration::from_secs(grace_secs);
        if let Some(r) = self.router.as_mut() {
            let clean = r.stop(grace).await;
            report_stop(r, clean);
        }
        let stops = self.stores.iter_mut().map(|s| async move {
            let clean = s.stop(grace).await;
            (s, clean)
        });
        for (s, clean) in futures::future::join_all(stops).await {
            report_stop(s, clean);
        }
        let stops = self.pds.iter_mut().map(|p| async move {
            let clean = p.stop(grace).await;
            (p, clean)
        });
        for (p, clean) in futures::future::join_all(stops).await {
            report_stop(p, clean);
        }
    }

    fn banner(&self, removed_on_exit: bool) -> String {
        let p = &self.plan;
        let concord = shell_quote(&self.bins.concord.display().to_string());
        let pd_ctl = shell_quote(&self.bins.pd_ctl.display().to_string());
        let router = addr(p.router);
        let pd_http = format!("http://{}", addr(p.pds[0].http));
        let dir = self.dir.path();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{READY_LINE}: {} PD, {} stores, 1 router.\n",
            p.pds.len(),
            self.stores.len()
        );
        let _ = writeln!(s, "  router endpoint  {router}");
        for (i, m) in p.pds.iter().enumerate() {
            let label = if p.pds.len() == 1 {
                "PD".to_string()
            } else {
                format!("PD {}", i + 1)
            };
            let _ = writeln!(
                s,
                "  {label:<16} {} (HTTP http://{})",
                addr(m.grpc),
                addr(m.http)
            );
        }
        let _ = writeln!(s, "  dashboard        {pd_http}/dashboard");
        let _ = writeln!(
            s,
            "  data and logs    {}{}\n",
            dir.display(),
            if removed_on_exit {
                " (removed on exit)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "Try:");
        let _ = writeln!(s, "  {concord} kv --router {router} put hello world");
        let _ = writeln!(s, "  {concord} kv --router {router} get hello");
        let _ = writeln!(s, "  {concord} kv --router {router} scan --limit 10");
        let _ = writeln!(s, "  {pd_ctl} -u {pd_http} --table store");
        let _ = writeln!(s, "  {pd_ctl} -u {pd_http} region");
        let _ = writeln!(
            s,
            "  {concord} bench --router {router} --workload a --duration-secs 10\n"
        );
        let _ = writeln!(s, "Metrics:");
        for (i, m) in p.pds.iter().enumerate() {
            let label = if p.pds.len() == 1 {
                "PD".to_string()
            } else {
                format!("PD {}", i + 1)
            };
            let _ = writeln!(s, "  {label:<8} http://{}/metrics", addr(m.http));
        }
        for (i, (_, status)) in p.stores.iter().enumerate() {
            let _ = writeln!(s, "  store {:<2} http://{}/metrics", i + 1, addr(*status));
        }
        let _ = writeln!(s, "  router   http://{}/metrics\n", addr(p.router_status));
        let n = self.stores.len() + 1;
        let _ = writeln!(s, "Scale out (one more store; PD moves regions onto it):");
        let _ = writeln!(
            s,
            "  {} --pd {} --addr 127.0.0.1:PORT --status-addr 127.0.0.1:PORT2 --data-dir {}\n",
            shell_quote(&self.bins.store.display().to_string()),
            pd_endpoints(p),
            shell_quote(&dir.join(format!("store{n}")).display().to_string())
        );
        let _ = write!(s, "{STOP_HINT}");
        s
    }
}

fn report_stop(c: &Supervised, clean: bool) {
    if !clean {
        eprintln!(
            "{} did not stop within the grace period and was killed",
            c.name
        );
    }
}

async fn pd_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    resp.json::<Value>().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> PlaygroundArgs {
        PlaygroundArgs {
            stores: 3,
            pd: 1,
            data_dir: None,
            keep: false,
            base_port: 0,
            pd_config: None,
            store_config: None,
            router_config: None,
            ready_timeout_secs: 1,
            stop_timeout_secs: 1,
        }
    }

    #[test]
    fn counts_are_checked() {
        let err = validate(&PlaygroundArgs { pd: 0, ..args() }).unwrap_err();
        assert!(err.to_string().contains("--pd 0 is out of range"), "{err}");
        assert!(validate(&PlaygroundArgs { pd: 3, ..args() }).is_ok());
        assert!(validate(&args()).is_ok());
        assert!(validate(&PlaygroundArgs {
            stores: 0,
            ..args()
        })
        .is_err());
        let missing = PlaygroundArgs {
            store_config: Some("/nonexistent/store.toml".into()),
            ..args()
        };
        assert!(validate(&missing)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }

    #[test]
    fn pd_members_know_each_other() {
        let dir = Path::new("/d");
        let single = PortPlan::new(30000, 1, 3).unwrap();
        let a = pd_args(&single, 0, dir, 3);
        assert!(!a.contains(&"--initial-cluster".to_string()), "{a:?}");
        assert_eq!(pd_endpoints(&single), "127.0.0.1:30000");

        let three = PortPlan::new(30000, 3, 3).unwrap();
        let a = pd_args(&three, 1, dir, 3);
        let flag = |name: &str| a[a.iter().position(|x| x == name).unwrap() + 1].clone();
        assert_eq!(flag("--name"), "pd2");
        assert_eq!(flag("--addr"), "127.0.0.1:30003");
        assert_eq!(flag("--peer-addr"), "127.0.0.1:30005");
        assert_eq!(
            flag("--initial-cluster"),
            "pd1=127.0.0.1:30002,pd2=127.0.0.1:30005,pd3=127.0.0.1:30008"
        );
        assert_eq!(flag("--data-dir"), "/d/pd2");
        assert_eq!(
            pd_endpoints(&three),
            "127.0.0.1:30000,127.0.0.1:30003,127.0.0.1:30006"
        );
    }

    #[test]
    fn a_pd_without_replication_is_detected() {
        assert!(!help_offers_members(
            "--addr <HOST:PORT>  gRPC listen address"
        ));
        assert!(help_offers_members("--initial-cluster <NAME=ADDR,...>"));
        assert!(!supports_pd_members(Path::new("/nonexistent/concord-pd")));
    }

    #[test]
    fn shell_quoting_only_when_needed() {
        assert_eq!(shell_quote("/usr/bin/concord"), "/usr/bin/concord");
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
