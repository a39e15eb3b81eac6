//! Helpers shared by the router's integration tests (included with
//! `mod common;`): an in-process PD, `concord-store` and `concord-router`
//! child processes that are killed when dropped, and condition polling.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

pub use concord_integration::process::{free_port, Proc};

use concord_common::pd_client::PdClient;
use concord_pd::config::PdConfig;
use concord_pd::grpc_client::GrpcPdClient;
use concord_pd::server::PdServerHandle;
use concord_proto::kvrpcpb::{self, kv_client::KvClient};

/// Serves `store` (a fake `kvrpcpb.Kv`) on a free port of 127.0.0.1 in
/// the background; its address.
pub async fn serve_fake_store<K: kvrpcpb::kv_server::Kv>(store: K) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake store");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(kvrpcpb::kv_server::KvServer::new(store))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// Store settings for tests: fast ticks so elections take well under a
/// second.
const STORE_CONFIG: &str = "[raftstore]\ntick-interval-ms = 50\n";

/// Polls `check` until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `concord-router` child process.
pub struct RouterProc {
    /// The process.
    pub proc: Proc,
    /// Its client-facing gRPC address.
    pub addr: String,
    /// Its HTTP status address.
    pub status_addr: String,
}

impl RouterProc {
    /// Starts a router against `pd` on a free port, plus `extra` flags.
    pub fn start(dir: &Path, name: &str, pd: &str, extra: &[&str]) -> RouterProc {
        let mut args: Vec<String> = vec![
            "--addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--status-addr".into(),
            "127.0.0.1:0".into(),
            "--pd".into(),
            pd.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::start("concord-router", args, dir.join(format!("{name}.log")));
        let (addr, status_addr) = Self::ready(&proc);
        RouterProc {
            proc,
            addr,
            status_addr,
        }
    }

    fn ready(proc: &Proc) -> (String, String) {
        let line = proc.wait_line("concord-router ready:", Duration::from_secs(30));
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        (field("grpc="), field("status="))
    }

    /// Starts the router again (same gRPC port) and waits until it serves.
    pub fn restart(&mut self) {
        self.proc.restart();
        let (addr, status_addr) = Self::ready(&self.proc);
        assert_eq!(addr, self.addr, "router came back on another address");
        self.status_addr = status_addr;
    }
}

/// A store child process.
pub struct StoreProc {
    /// The process.
    pub proc: Proc,
    /// Its gRPC address.
    pub addr: String,
}

/// PD in-process plus three `concord-store` processes.
pub struct TestCluster {
    /// Holds every data directory and log.
    pub dir: tempfile::TempDir,
    /// The in-process PD.
    pub pd: Option<PdServerHandle>,
    /// PD's gRPC address.
    pub pd_addr: String,
    /// A PD client for the test's own checks.
    pub pd_client: GrpcPdClient,
    /// The stores.
    pub stores: Vec<StoreProc>,
}

impl TestCluster {
    /// Starts PD (on `pd_addr` if given, else a free port) and three
    /// stores, and waits until the first region has three voters and a
    /// leader.
    pub async fn start(dir: tempfile::TempDir, pd_addr: Option<String>) -> TestCluster {
        let pd = concord_pd::server::start(PdConfig {
            addr: pd_addr.unwrap_or_else(|| "127.0.0.1:0".into()),
            http_addr: "127.0.0.1:0".into(),
            data_dir: dir.path().join("pd"),
            ..PdConfig::default()
        })
        .await
        .expect("PD starts");
        let pd_addr = pd.grpc_addr().to_string();
        let config = dir.path().join("store.toml");
        std::fs::write(&config, STORE_CONFIG).expect("write store config");
        let stores = (1..=3)
            .map(|n| {
                let addr = format!("127.0.0.1:{}", free_port());
                let args = vec![
                    "--addr".into(),
                    addr.clone(),
                    "--status-addr".into(),
                    format!("127.0.0.1:{}", free_port()),
                    "--data-dir".into(),
                    dir.path().join(format!("store{n}")).display().to_string(),
                    "--pd".into(),
                    pd_addr.clone(),
                    "--config".into(),
                    config.display().to_string(),
                ];
                StoreProc {
                    proc: Proc::start(
                        "concord-store",
                        args,
                        dir.path().join(format!("store{n}.log")),
                    ),
                    addr,
                }
            })
            .collect();
        let pd_client = GrpcPdClient::connect(std::slice::from_ref(&pd_addr))
            .await
            .expect("PD client");
        let cluster = TestCluster {
            dir,
            pd: Some(pd),
            pd_addr,
            pd_client,
            stores,
        };
        cluster.wait_healthy().await;
        cluster
    }

    /// Waits until every region PD knows has three voters and a leader.
    pub async fn wait_healthy(&self) {
        eventually(
            Duration::from_secs(90),
            "3 voters and a leader in every region",
            || async {
                match self.pd_client.scan_regions(b"", b"", 0).await {
                    Ok(regions) if !regions.is_empty() => regions.iter().all(|r| {
                        r.leader.is_some()
                            && r.region.peers.len() == 3
                            && r.region.peers.iter().all(|p| p.role == 0)
                    }),
                    _ => false,
                }
            },
        )
        .await;
    }

    /// The data directory (logs live there too).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Number of regions PD knows.
    pub async fn region_count(&self) -> usize {
        self.pd_client
            .scan_regions(b"", b"", 0)
            .await
            .map_or(0, |r| r.len())
    }

    /// Splits the cluster's regions at every key of `keys` with the store's
    /// SplitRegion RPC, then waits until PD knows every split.
    pub async fn split_at(&self, keys: &[Vec<u8>]) {
        let mut pending: Vec<Vec<u8>> = keys.to_vec();
        pending.sort();
        pending.dedup();
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(first) = pending.first().cloned() {
            assert!(Instant::now() < deadline, "could not split at {pending:?}");
            match self.split_once(&first, &pending).await {
                Some(done) => pending.retain(|k| !done.contains(k)),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let boundaries = keys.to_vec();
        eventually(
            Duration::from_secs(30),
            "PD to learn every split",
            || async {
                let Ok(regions) = self.pd_client.scan_regions(b"", b"", 0).await else {
                    return false;
                };
                boundaries
                    .iter()
                    .all(|k| regions.iter().any(|r| &r.region.start_key == k))
            },
        )
        .await;
    }

    /// One SplitRegion call on the region holding `key`, at the keys of
    /// `pending` inside it. Returns the keys split at, or `None` to retry.
    async fn split_once(&self, key: &[u8], pending: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let info = self.pd_client.get_region(key).await.ok()?;
        let leader = info.leader?;
        let region = &info.region;
        let inside: Vec<Vec<u8>> = pending
            .iter()
            .filter(|k| {
                k.as_slice() > region.start_key.as_slice()
                    && (region.end_key.is_empty() || k.as_slice() < region.end_key.as_slice())
            })
            .cloned()
            .collect();
        if inside.is_empty() {
            // Already a boundary.
            return Some(vec![key.to_vec()]);
        }
        let addr = self
            .pd_client
            .get_store(leader.store_id)
            .await
            .ok()?
            .address;
        let mut kv = KvClient::connect(format!("http://{addr}")).await.ok()?;
        let resp = kv
            .split_region(kvrpcpb::SplitRegionRequest {
                context: Some(kvrpcpb::Context {
                    region_id: region.id,
                    region_epoch: region.region_epoch,
                    peer: Some(leader),
                }),
                split_keys: inside.clone(),
            })
            .await
            .ok()?
            .into_inner();
        (resp.region_error.is_none() && resp.error.is_empty()).then_some(inside)
    }

    /// Asks PD, through `pd-ctl operator add transfer-leader`, to move every
    /// region's leader to `store_id` (best effort: regions already led there
    /// or busy with another operator are skipped). Returns how many
    /// operators were created.
    pub async fn transfer_leaders_to(&self, store_id: u64) -> usize {
        let Some(pd) = &self.pd else { return 0 };
        let Ok(regions) = self.pd_client.scan_regions(b"", b"", 0).await else {
            return 0;
        };
        let url = format!("http://{}", pd.http_addr());
        let pd_ctl = concord_integration::process::bin_dir().join("pd-ctl");
        regions
            .iter()
            .filter(|r| r.leader.is_some_and(|l| l.store_id != store_id))
            .filter(|r| {
                std::process::Command::new(&pd_ctl)
                    .args(["-u", &url, "operator", "add", "transfer-leader"])
                    .args([r.region.id.to_string(), store_id.to_string()])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .count()
    }

    /// The store id of the store process at `index`.
    pub async fn store_id(&self, index: usize) -> u64 {
        let addr = &self.stores[index].addr;
        let stores = self.pd_client.get_all_stores().await.expect("stores");
        stores
            .iter()
            .find(|s| &s.address == addr)
            .map(|s| s.id)
            .unwrap_or_else(|| panic!("no store registered at {addr}"))
    }

    /// The index of the store process leading the most regions.
    pub async fn busiest_leader(&self) -> usize {
        let regions = self
            .pd_client
            .scan_regions(b"", b"", 0)
            .await
            .expect("regions");
        let mut best = (0, 0);
        for i in 0..self.stores.len() {
            let id = self.store_id(i).await;
            let led = regions
                .iter()
                .filter(|r| r.leader.is_some_and(|l| l.store_id == id))
                .count();
            if led > best.1 {
                best = (i, led);
            }
        }
        best.0
    }

    /// Stops the in-process PD.
    pub async fn stop_pd(&mut self) {
        if let Some(pd) = self.pd.take() {
            pd.shutdown().await.expect("PD stops");
        }
    }
}
