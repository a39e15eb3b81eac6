//! Scale-out and scale-in with the real binaries while a client runs
//! through a router: 3 stores and 200+ regions, a 4th store joins and PD
//! gives it a fair share of regions (within 20 % of the mean) and leaders;
//! then `pd-ctl store delete` drains one store to Tombstone, leaving every
//! region with three voters (no learner stranded by a split). The client
//! sees no error and every acknowledged write reads back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_common::pd_client::PdClient;
use concord_integration::process::{bin_dir, free_port, Proc, StoreProc};
use concord_pd::grpc_client::GrpcPdClient;
use concord_proto::kvrpcpb::KvPair;
use concord_proto::metapb::{PeerRole, StoreState};
use concord_proto::routerpb::raw_kv_client::RawKvClient;
use concord_proto::routerpb::{BatchGetRequest, BatchPutRequest, GetRequest, PutRequest};
use tonic::transport::{Channel, Endpoint};

/// Small regions, so a few thousand keys make hundreds of them.
const STORE_CONFIG: &str = r#"
[raftstore]
region-max-size = 1048576
region-max-keys = 24
split-check-diff = 512
raft-log-gc-threshold = 200
"#;

/// Faster scheduling than the defaults, so the test moves quickly.
const PD_CONFIG: &str = r#"
region-schedule-limit = 8
leader-schedule-limit = 8
schedule-interval-ms = 300
"#;

fn key(n: u64) -> Vec<u8> {
    // Spread keys over the whole key space so every region splits.
    let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    format!("k{h:016x}-{n}").into_bytes()
}

async fn router_client(addr: &str) -> RawKvClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(60))
        .connect_lazy();
    RawKvClient::new(channel)
}

/// Replicas and leaders per store id, from PD.
async fn distribution(pd: &GrpcPdClient) -> (usize, HashMap<u64, (usize, usize)>) {
    let regions = pd.scan_regions(b"", b"", 0).await.unwrap_or_default();
    let mut per: HashMap<u64, (usize, usize)> = HashMap::new();
    for r in &regions {
        for p in &r.region.peers {
            per.entry(p.store_id).or_default().0 += 1;
        }
        if let Some(l) = r.leader {
            per.entry(l.store_id).or_default().1 += 1;
        }
    }
    (regions.len(), per)
}

async fn store_id_of(pd: &GrpcPdClient, addr: &str) -> Option<u64> {
    pd.get_all_stores()
        .await
        .ok()?
        .into_iter()
        .find(|s| s.address == addr)
        .map(|s| s.id)
}

/// The client load: writers of unique keys that also read back what they
/// wrote; every acknowledged write is remembered, every error counted.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(router: &RawKvClient<Channel>, workers: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..workers)
            .map(|w| {
                let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
                let mut client = router.clone();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("load-{w}-{i:08}").into_bytes();
                        let value = format!("v{w}-{i}").into_bytes();
                        let put = PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                            ttl: 0,
                        };
                        match client.put(put).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(key.clone(), value.clone());
                            }
                            Err(e) => errors.lock().unwrap().push(format!("put: {e}")),
                        }
                        match client.get(GetRequest { key: key.clone() }).await {
                            Ok(r) => {
                                let r = r.into_inner();
                                if r.not_found || r.value != value {
                                    errors.lock().unwrap().push(format!(
                                        "read of {} returned {:?}",
                                        String::from_utf8_lossy(&key),
                                        r
                                    ));
                                }
                            }
                            Err(e) => errors.lock().unwrap().push(format!("get: {e}")),
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            errors,
            tasks,
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    async fn stop(self) -> (BTreeMap<Vec<u8>, Vec<u8>>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        (acked, errors)
    }
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F, load: &Load)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let state = f().await;
        let errors = load.errors();
        assert!(
            errors.is_empty(),
            "client errors while waiting for {what}: {:?}",
            &errors[..errors.len().min(5)]
        );
        match state {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn pd_ctl(pd_http: &str, args: &[&str]) -> String {
    let out = Command::new(bin_dir().join("pd-ctl"))
        .args(["-u", &format!("http://{pd_http}")])
        .args(args)
        .output()
        .expect("run pd-ctl");
    assert!(
        out.status.success(),
        "pd-ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_pd(dir: &Path) -> (Proc, String, String) {
    let config = dir.join("pd.toml");
    std::fs::write(&config, PD_CONFIG).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let args = vec![
        "--addr".into(),
        addr.clone(),
        "--http-addr".into(),
        http.clone(),
        "--data-dir".into(),
        dir.join("pd").display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    (
        Proc::start("concord-pd", args, dir.join("pd.log")),
        addr,
        http,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_to_four_stores_then_drain_one_to_tombstone_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let store_config = dir.path().join("store.toml");
    std::fs::write(&store_config, STORE_CONFIG).unwrap();
    let store_config = store_config.display().to_string();
    let (_pd, pd_addr, pd_http) = start_pd(dir.path());
    let mut stores: Vec<StoreProc> = (1..=3)
        .map(|n| StoreProc::start(dir.path(), n, &pd_addr, &["--config", &store_config]))
        .collect();
    let router_addr = format!("127.0.0.1:{}", free_port());
    let _router = Proc::start(
        "concord-router",
        vec![
            "--addr".into(),
            router_addr.clone(),
            "--status-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--pd".into(),
            pd_addr.clone(),
        ],
        dir.path().join("router.log"),
    );
    let pd = loop {
        if let Ok(c) = GrpcPdClient::connect(std::slice::from_ref(&pd_addr)).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut router = router_client(&router_addr).await;

    // 200+ regions, replicated three times: preload through the router.
    let idle = Load::start(&router, 0);
    wait_for(
        "the first region to have 3 replicas",
        Duration::from_secs(120),
        || {
            let pd = &pd;
            async move {
                let (_, per) = distribution(pd).await;
                (per.len() == 3).then_some(()).ok_or(format!("{per:?}"))
            }
        },
        &idle,
    )
    .await;
    let mut preloaded = BTreeMap::new();
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (regions, _) = distribution(&pd).await;
        if regions >= 220 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {regions} regions after {n} keys\n{}",
            stores[0].proc.log_tail()
        );
        let pairs: Vec<KvPair> = (n..n + 200)
            .map(|i| KvPair {
                key: key(i),
                value: format!("pre{i}").into_bytes(),
            })
            .collect();
        router
            .batch_put(BatchPutRequest {
                pairs: pairs.clone(),
                ttl: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("preload batch at {n}: {e}"));
        preloaded.extend(pairs.into_iter().map(|p| (p.key, p.value)));
        n += 200;
    }
    wait_for(
        "every region to have 3 replicas",
        Duration::from_secs(300),
        || {
            let pd = &pd;
            async move {
                let regions = pd
                    .scan_regions(b"", b"", 0)
                    .await
                    .map_err(|e| e.to_string())?;
                let short = regions.iter().filter(|r| r.region.peers.len() < 3).count();
                (short == 0)
                    .then_some(())
                    .ok_or(format!("{short} regions under-replicated"))
            }
        },
        &idle,
    )
    .await;
    drop(idle);
    let (regions, per) = distribution(&pd).await;
    eprintln!("preloaded {n} keys: {regions} regions, replicas/leaders per store {per:?}");

    // Scale out: a 4th store while the client runs.
    let load = Load::start(&router, 4);
    let s4 = StoreProc::start(dir.path(), 4, &pd_addr, &["--config", &store_config]);
    let s4_addr = s4.addr.clone();
    stores.push(s4);
    wait_for(
        "store 4 to hold a fair share of regions and some leaders",
        Duration::from_secs(900),
        || {
            let (pd, s4_addr) = (&pd, &s4_addr);
            async move {
                let id = store_id_of(pd, s4_addr).await.ok_or("store 4 not registered")?;
                let (regions, per) = distribution(pd).await;
                let total: usize = per.values().map(|v| v.0).sum();
                let mean = total as f64 / per.len().max(1) as f64;
                let (r4, l4) = per.get(&id).copied().unwrap_or_default();
                let fair = per.len() == 4 && (r4 as f64 - mean).abs() <= 0.2 * mean && l4 > 0;
                fair.then_some(()).ok_or(format!(
                    "{regions} regions, mean {mean:.1} replicas/store, store 4 has {r4} replicas and {l4} leaders: {per:?}"
                ))
            }
        },
        &load,
    )
    .await;

    let (regions, per) = distribution(&pd).await;
    eprintln!("after scale-out: {regions} regions, replicas/leaders per store {per:?}");

    // Scale in: pd-ctl store delete drains store 2 to Tombstone.
    let victim = store_id_of(&pd, &stores[1].addr).await.expect("store 2 id");
    pd_ctl(&pd_http, &["store", "delete", &victim.to_string()]);
    wait_for(
        "store 2 to drain to Tombstone, every region with 3 voters",
        Duration::from_secs(900),
        || {
            let pd = &pd;
            async move {
                let regions = pd
                    .scan_regions(b"", b"", 0)
                    .await
                    .map_err(|e| e.to_string())?;
                let left = regions
                    .iter()
                    .flat_map(|r| &r.region.peers)
                    .filter(|p| p.store_id == victim)
                    .count();
                let not_three_voters = regions
                    .iter()
                    .filter(|r| {
                        let peers = &r.region.peers;
                        peers.len() != 3 || peers.iter().any(|p| p.role() != PeerRole::Voter)
                    })
                    .count();
                let state = pd
                    .get_all_stores()
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|s| s.id == victim)
                    .map(|s| s.state());
                (state == Some(StoreState::Tombstone) && left == 0 && not_three_voters == 0)
                    .then_some(())
                    .ok_or(format!(
                        "state {state:?}, {left} replicas left, {not_three_voters} regions without exactly 3 voters"
                    ))
            }
        },
        &load,
    )
    .await;
    let (regions, per) = distribution(&pd).await;
    eprintln!(
        "after scale-in of store {victim}: {regions} regions, replicas/leaders per store {per:?}"
    );
    let table = pd_ctl(&pd_http, &["--table", "store"]);
    assert!(table.contains("Tombstone"), "{table}");

    let (acked, errors) = load.stop().await;
    assert!(
        errors.is_empty(),
        "client errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(
        acked.len() > 100,
        "the client made too little progress: {}",
        acked.len()
    );

    eprintln!(
        "client: {} acknowledged writes, each read back at once, 0 errors",
        acked.len()
    );

    // Nothing lost: every preloaded and acknowledged pair reads back.
    let all: Vec<(Vec<u8>, Vec<u8>)> = preloaded.into_iter().chain(acked).collect();
    for chunk in all.chunks(200) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| k.clone()).collect();
        let got = router
            .batch_get(BatchGetRequest { keys })
            .await
            .expect("final read")
            .into_inner()
            .pairs;
        let got: HashMap<Vec<u8>, Vec<u8>> = got.into_iter().map(|p| (p.key, p.value)).collect();
        for (k, v) in chunk {
            assert_eq!(got.get(k), Some(v), "lost {}", String::from_utf8_lossy(k));
        }
    }
}
