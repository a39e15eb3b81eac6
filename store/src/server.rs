//! A store server: configuration, start-up against PD, the gRPC services
//! (KV and raft) and the HTTP status server.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord_common::batch_stream::ServeOptions;
use concord_common::pd_client::{PdClient, PdError};
use concord_pd::grpc_client::GrpcPdClient;
use concord_proto::kvrpcpb::kv_server::KvServer;
use concord_proto::metapb;
use concord_proto::raft_serverpb::raft_server::RaftServer;
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::engine::{Engine, EngineConfig};
use crate::kv::KvApi;
use crate::raftstore::{bootstrap, RaftStoreConfig, Store, StoreServices};
use crate::service::KvService;
use crate::transport::{GrpcTransport, RaftService};

/// Raftstore settings as they appear in the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RaftStoreSection {
    /// Store clock interval in milliseconds.
    pub tick_interval_ms: u64,
    /// Ticks before a follower without leader campaigns.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Raft poller threads.
    pub raft_pollers: usize,
    /// Apply threads.
    pub apply_pollers: usize,
    /// Split a region when it reaches this many bytes.
    pub region_max_size: u64,
    /// Split a region when it holds this many keys.
    pub region_max_keys: u64,
    /// Bytes written to a region between split checks.
    pub split_check_diff: u64,
    /// Applied log entries kept before log GC.
    pub raft_log_gc_threshold: u64,
    /// Largest accepted value in bytes.
    pub max_value_size: usize,
    /// Let idle regions stop ticking (no raft heartbeats) until used.
    pub hibernate_regions: bool,
}

impl Default for RaftStoreSection {
    fn default() -> Self {
        RaftStoreSection::from(&RaftStoreConfig::default())
    }
}

impl From<&RaftStoreConfig> for RaftStoreSection {
    fn from(c: &RaftStoreConfig) -> Self {
        RaftStoreSection {
            tick_interval_ms: c.tick_interval.as_millis() as u64,
            election_ticks: c.election_ticks,
            heartbeat_ticks: c.heartbeat_ticks,
            raft_pollers: c.raft_pollers,
            apply_pollers: c.apply_pollers,
            region_max_size: c.region_max_size,
            region_max_keys: c.region_max_keys,
            split_check_diff: c.split_check_diff,
            raft_log_gc_threshold: c.raft_log_gc_threshold,
            max_value_size: c.max_value_size,
            hibernate_regions: c.hibernate_regions,
        }
    }
}

impl RaftStoreSection {
    /// The raftstore configuration these settings describe.
    pub fn to_config(&self) -> RaftStoreConfig {
        RaftStoreConfig {
            tick_interval: Duration::from_millis(self.tick_interval_ms.max(1)),
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            raft_pollers: self.raft_pollers,
            apply_pollers: self.apply_pollers,
            region_max_size: self.region_max_size,
            region_max_keys: self.region_max_keys,
            split_check_diff: self.split_check_diff,
            raft_log_gc_threshold: self.raft_log_gc_threshold,
            max_value_size: self.max_value_size,
            hibernate_regions: self.hibernate_regions,
            ..RaftStoreConfig::default()
        }
    }
}

/// Everything a store process is configured with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoreConfig {
    /// Address the gRPC server (KV and raft) listens on.
    pub addr: String,
    /// Address other processes use to reach this store (default: `addr`).
    pub advertise_addr: String,
    /// Address of the HTTP status server (`/metrics`, `/status`).
    pub status_addr: String,
    /// Directory of the engine.
    pub data_dir: PathBuf,
    /// PD endpoints.
    pub pd: Vec<String>,
    /// Labels for placement (zone, rack, host).
    pub labels: BTreeMap<String, String>,
    /// Raftstore tuning.
    pub raftstore: RaftStoreSection,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            addr: "127.0.0.1:20160".into(),
            advertise_addr: String::new(),
            status_addr: "127.0.0.1:20180".into(),
            data_dir: PathBuf::from("concord-store-data"),
            pd: vec!["127.0.0.1:2379".into()],
            labels: BTreeMap::new(),
            raftstore: RaftStoreSection::default(),
        }
    }
}

/// Why a store server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The engine could not be opened.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The raftstore could not start.
    #[error(transparent)]
    Store(#[from] crate::raftstore::StoreError),
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The gRPC server task died.
    #[error("gRPC server task: {0}")]
    Task(String),
}

/// How long in-flight requests may take to finish after a shutdown signal.
const SERVER_DRAIN: Duration = Duration::from_secs(2);

/// Connects to PD, retrying (and saying so) until it answers or `stop`
/// completes.
async fn connect_pd(endpoints: &[String]) -> Arc<dyn PdClient> {
    let mut delay = Duration::from_millis(200);
    loop {
        match GrpcPdClient::connect(endpoints).await {
            Ok(c) => return Arc::new(c),
            Err(e @ PdError::Unreachable { .. }) => error!("{e}; retrying"),
            Err(e) => error!("PD: {e}; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Runs a store until `shutdown` completes, then stops it cleanly.
pub async fn run(
    cfg: StoreConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let engine = Engine::open(&cfg.data_dir, &EngineConfig::default())?;
    let listener = tokio::net::TcpListener::bind(&cfg.addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.addr.clone(),
            source,
        })?;
    let status_listener = tokio::net::TcpListener::bind(&cfg.status_addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.status_addr.clone(),
            source,
        })?;
    let advertise = if cfg.advertise_addr.is_empty() {
        listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: cfg.addr.clone(),
                source,
            })?
            .to_string()
    } else {
        cfg.advertise_addr.clone()
    };
    let pd = connect_pd(&cfg.pd).await;
    let store_meta = metapb::Store {
        address: advertise.clone(),
        status_address: status_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        labels: cfg
            .labels
            .iter()
            .map(|(k, v)| metapb::StoreLabel {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        version: env!("CARGO_PKG_VERSION").into(),
        start_timestamp: crate::raw_value::now_secs(),
        ..Default::default()
    };
    let store_id = loop {
        match bootstrap(&engine, &*pd, store_meta.clone()).await {
            Ok(id) => break id,
            Err(crate::raftstore::StoreError::Pd(e)) => {
                error!("registering with PD failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let raft_cfg = cfg.raftstore.to_config();
    let transport = GrpcTransport::new(
        pd.clone(),
        tokio::runtime::Handle::current(),
        raft_cfg.transport_queue_size,
        raft_cfg.snapshot_chunk_size,
    );
    let store = Store::start(engine, raft_cfg, pd, transport.clone())?;
    let services = store.services().clone();
    transport.set_router(services.router.clone());
    tokio::spawn(serve_status(status_listener, services.clone()));
    info!(store_id, address = %advertise, "store ready");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let batching = ServeOptions {
        shutdown: Some(stop_rx.clone()),
        ..ServeOptions::default()
    };
    let kv = KvServer::new(KvService::new(KvApi::new(&services), batching))
        .max_decoding_message_size(concord_common::limits::MAX_STORE_REQUEST_SIZE)
        .max_encoding_message_size(usize::MAX);
    let raft = RaftServer::new(RaftService::new(services)).max_decoding_message_size(usize::MAX);
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(kv)
            .add_service(raft)
            .serve_with_incoming_shutdown(
                concord_common::grpc::incoming(listener),
                concord_common::grpc::stopped(stop_rx),
            ),
    );
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown => {
            let _ = stop_tx.send(true);
            // Other stores keep their raft streams to us open; do not wait
            // for them to hang up.
            match tokio::time::timeout(SERVER_DRAIN, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    store.shutdown().await;
    info!(store_id, "store stopped");
    match result {
        Ok(served) => Ok(served?),
        Err(e) => Err(ServerError::Task(e.to_string())),
    }
}

async fn serve_status(listener: tokio::net::TcpListener, services: StoreServices) {
    use axum::routing::get;
    let metrics_services = services.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let s = metrics_services.clone();
                async move { metrics_text(&s) }
            }),
        )
        .route(
            "/status",
            get(move || {
                let s = services.clone();
                async move {
                    format!(
                        "{{\"store_id\":{},\"version\":\"{}\",\"health\":\"ok\",\"role\":\"store\"}}\n",
                        s.store_id,
                        env!("CARGO_PKG_VERSION")
                    )
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        error!("status server: {e}");
    }
}

fn metrics_text(s: &StoreServices) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let (regions, leaders, log_lag) = {
        let meta = s.meta.lock();
        (
            meta.region_count() as u64,
            meta.leaders.len() as u64,
            meta.log_lag.values().sum::<u64>(),
        )
    };
    let stats = &s.stats;
    let metrics: [(&str, &str, &str, String); 7] = [
        (
            "regions",
            "gauge",
            "Regions with a peer on this store.",
            regions.to_string(),
        ),
        (
            "leaders",
            "gauge",
            "Regions this store leads.",
            leaders.to_string(),
        ),
        (
            "hibernating_regions",
            "gauge",
            "Regions whose peer here sleeps (idle, not ticking).",
            s.router.hibernating().to_string(),
        ),
        (
            "pending_proposals",
            "gauge",
            "Writes proposed but not yet handed to apply.",
            s.pending_proposals.load(Relaxed).to_string(),
        ),
        (
            "raft_persisted_readies",
            "counter",
            "Region readies persisted by the synced raft log writes.",
            stats.persisted_readies.load(Relaxed).to_string(),
        ),
        (
            "writes_acked_at_commit",
            "counter",
            "Writes answered once committed, before they were applied.",
            stats.acked_at_commit.load(Relaxed).to_string(),
        ),
        (
            "raft_log_lag_entries",
            "gauge",
            "Entries the slowest follower is behind, summed over the regions led here.",
            log_lag.to_string(),
        ),
    ];
    // Stages of the write path, as summaries (`_sum` / `_count` is the mean).
    let timings = [
        (
            "raft_log_write_seconds",
            "Synced raft log writes (one per poll round), leader or follower.",
            &stats.log_write,
        ),
        (
            "commit_wait_seconds",
            "Proposed log entries, from proposal until committed and handed to apply.",
            &stats.commit_wait,
        ),
        (
            "apply_wait_seconds",
            "Batches of committed entries, waiting for an apply thread.",
            &stats.apply_wait,
        ),
        (
            "apply_seconds",
            "Apply rounds: applying, writing and answering the callers.",
            &stats.apply,
        ),
        (
            "write_seconds",
            "Writes answered OK, from arrival at this store until answered.",
            &stats.write,
        ),
    ];
    let id = s.store_id;
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        out.push_str(&format!(
            "# HELP concord_store_{name} {help}\n# TYPE concord_store_{name} {kind}\nconcord_store_{name}{{store=\"{id}\"}} {value}\n",
        ));
    }
    for (name, help, timing) in timings {
        out.push_str(&format!(
            "# HELP concord_store_{name} {help}\n# TYPE concord_store_{name} summary\nconcord_store_{name}_sum{{store=\"{id}\"}} {:.6}\nconcord_store_{name}_count{{store=\"{id}\"}} {}\n",
            timing.seconds(),
            timing.count(),
        ));
    }
    out
}
