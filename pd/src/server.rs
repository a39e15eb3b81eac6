//! Starting and stopping a PD server: the gRPC service and the HTTP API on
//! their listeners, over one [`Cluster`]; for a replicated PD also the
//! member-to-member raft service on the peer address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::pd_raftpb::pd_peer_server::PdPeerServer;
use concord_proto::pdpb::pd_server::PdServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::config::PdConfig;
use crate::error::{PdServerError, Result};
use crate::http_api;
use crate::members::Membership;
use crate::peer_transport::{PeerService, MAX_BATCH_BYTES};
use crate::service::PdService;
use crate::storage::MetaStorage;

/// A running PD server.
pub struct PdServerHandle {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    cluster: Arc<Cluster>,
    shutdown: watch::Sender<bool>,
    grpc_task: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    http_task: JoinHandle<std::io::Result<()>>,
    schedule_task: JoinHandle<()>,
    peer_task: Option<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
}

/// Runs a scheduling round every `interval` until shutdown.
async fn schedule_loop(
    cluster: Arc<Cluster>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let c = cluster.clone();
        let round = tokio::task::spawn_blocking(move || {
            c.ensure_leader()?;
            c.schedule_once()
        });
        match round.await {
            Ok(Ok(_)) | Ok(Err(PdServerError::NotLeader { .. })) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "scheduling round failed"),
            Err(e) => tracing::warn!(error = %e, "scheduling task failed"),
        }
    }
}

async fn wait_for_shutdown(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        PdServerError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e}"),
        ))
    })
}

fn join_error(e: tokio::task::JoinError) -> PdServerError {
    PdServerError::Io(std::io::Error::other(e))
}

/// Opens the metadata in `config.data_dir` and serves gRPC on `config.addr`
/// and HTTP on `config.http_addr` (port 0 picks a free port; see
/// [`PdServerHandle::grpc_addr`]). With several members in
/// `config.initial_cluster` it also serves the raft service on
/// `config.peer_addr` and returns once the group agreed on a cluster (a
/// quorum of members is up); only the group's leader serves requests.
pub async fn start(config: PdConfig) -> Result<PdServerHandle> {
    config.validate()?;
    let grpc_listener = bind(&config.addr).await?;
    let http_listener = bind(&config.http_addr).await?;
    let replicated = !config.initial_cluster.trim().is_empty();
    let peer_listener = match replicated {
        true => Some(bind(&config.peer_addr).await?),
        false => None,
    };
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let peer_addr = match &peer_listener {
        Some(l) => l.local_addr()?.to_string(),
        None => config.peer_addr.clone(),
    };
    let advertised = |configured: &str, bound: SocketAddr| match configured {
        "" => bound.to_string(),
        a => a.to_string(),
    };
    let members = Arc::new(Membership::new(
        &config,
        &advertised(&config.advertise_addr, grpc_addr),
        &advertised(&config.advertise_http_addr, http_addr),
        &peer_addr,
    )?);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let (dir, group, settings) = (
        config.data_dir.clone(),
        members.clone(),
        config.raft_settings(),
    );
    let runtime = tokio::runtime::Handle::current();
    let storage = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        MetaStorage::open_replicated(&dir, group, settings, Some(runtime))
    })
    .await
    .map_err(join_error)??;
    let peer_task = peer_listener.map(|listener| {
        let service = PeerService::new(storage.replicator().inbox(), members.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                // A snapshot carries all the metadata in one message.
                .add_service(PdPeerServer::new(service).max_decoding_message_size(MAX_BATCH_BYTES))
                .serve_with_incoming_shutdown(
                    concord_common::grpc::incoming(listener),
                    wait_for_shutdown(shutdown_rx.clone()),
                ),
        )
    });
    let opened = config.clone();
    let cluster = match tokio::task::spawn_blocking(move || Cluster::open_on(&opened, storage))
        .await
        .map_err(join_error)
        .and_then(|r| r)
    {
        Ok(cluster) => Arc::new(cluster),
        Err(e) => {
            let _ = shutdown.send(true);
            if let Some(task) = peer_task {
                let _ = task.await;
            }
            return Err(e);
        }
    };

    let service = PdService::new(cluster.clone(), shutdown_rx.clone());
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PdServer::new(service))
            .serve_with_incoming_shutdown(
                concord_common::grpc::incoming(grpc_listener),
                wait_for_shutdown(shutdown_rx.clone()),
            ),
    );
    let schedule_task = tokio::spawn(schedule_loop(
        cluster.clone(),
        Duration::from_millis(config.schedule_interval_ms),
        shutdown_rx.clone(),
    ));
    let app = http_api::router(cluster.clone());
    let http_task = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(wait_for_shutdown(shutdown_rx))
            .await
    });
    tracing::info!(
        %grpc_addr,
        %http_addr,
        member = %members.me().name,
        members = members.voters().len(),
        cluster_id = cluster.cluster_id(),
        "PD serving"
    );
    Ok(PdServerHandle {
        grpc_addr,
        http_addr,
        cluster,
        shutdown,
        grpc_task,
        http_task,
        schedule_task,
        peer_task,
    })
}

impl PdServerHandle {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The PD state being served (for in-process tests and tools).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Stops accepting work, ends open streams, waits for both servers to
    /// finish and releases the metadata store.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let cluster = self.cluster.clone();
        // Go silent to the other members at once so they elect a new leader.
        tokio::task::spawn_blocking(move || cluster.stop_replication())
            .await
            .map_err(join_error)?;
        if let Some(task) = self.peer_task {
            if let Ok(Err(e)) = task.await {
                tracing::warn!(error = %e, "PD peer service ended with an error");
            }
        }
        let grpc = self.grpc_task.await;
        let http = self.http_task.await;
        if let Err(e) = self.schedule_task.await {
            tracing::warn!(error = %e, "scheduling loop ended abnormally");
        }
        match grpc {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(PdServerError::Io(std::io::Error::other(e))),
            Err(e) => return Err(PdServerError::Io(std::io::Error::other(e))),
        }
        match http {
            Ok(result) => result?,
            Err(e) => return Err(PdServerError::Io(std::io::Error::other(e))),
        }
        tracing::info!(grpc_addr = %self.grpc_addr, "PD stopped");
        Ok(())
    }
}
