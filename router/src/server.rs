//! Running a router: the client-facing gRPC service and the HTTP status
//! server (`/metrics`, `/status`) over one [`Router`]. Used by the
//! `concord-router` binary and, in-process, by tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use concord_common::batch_stream::ServeOptions;
use concord_proto::routerpb::raw_kv_server::RawKvServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::RouterConfig;
use crate::error::{Error, Result};
use crate::routing::Router;
use crate::service::RouterService;
use crate::store_conn::MAX_MESSAGE_SIZE;

/// A running router.
pub struct RouterServerHandle {
    grpc_addr: SocketAddr,
    status_addr: SocketAddr,
    router: Arc<Router>,
    shutdown: watch::Sender<bool>,
    grpc_task: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    http_task: JoinHandle<std::io::Result<()>>,
}

struct StatusState {
    router: Arc<Router>,
    config: RouterConfig,
    grpc_addr: SocketAddr,
    started: Instant,
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen for {what} on {addr}: {e}")))
}

async fn metrics(State(state): State<Arc<StatusState>>) -> impl IntoResponse {
    let router = &state.router;
    let gauges = [
        (
            "concord_router_pd_connected",
            "1 once PD has answered.",
            f64::from(u8::from(router.pd_connected())),
        ),
        (
            "concord_router_cached_regions",
            "Regions in the region cache.",
            router.region_cache().len() as f64,
        ),
        (
            "concord_router_store_connections",
            "Stores with an open channel.",
            router.store_connections() as f64,
        ),
        (
            "concord_router_uptime_seconds",
            "Seconds since the router started.",
            state.started.elapsed().as_secs_f64(),
        ),
    ];
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        router.metrics().render(&gauges),
    )
}

async fn status(State(state): State<Arc<StatusState>>) -> impl IntoResponse {
    let router = &state.router;
    Json(serde_json::json!({
        "component": "concord-router",
        "version": env!("CARGO_PKG_VERSION"),
        "grpc_addr": state.grpc_addr.to_string(),
        "pd": state.config.pd,
        "pd_connected": router.pd_connected(),
        "cached_regions": router.region_cache().len(),
        "store_connections": router.store_connections(),
        "uptime_secs": state.started.elapsed().as_secs(),
        "config": state.config,
    }))
}

/// Starts a router with `config`: binds both listeners (port 0 picks a
/// free port; see [`RouterServerHandle::grpc_addr`]) and starts serving at
/// once. PD is connected in the background: until it answers, requests
/// retry within their budget and the log names the PD address.
pub async fn start(config: RouterConfig) -> Result<RouterServerHandle> {
    config.validate()?;
    let grpc_listener = bind(&config.addr, "gRPC").await?;
    let status_listener = bind(&config.status_addr, "HTTP status").await?;
    let io = |e: std::io::Error| Error::Config(format!("listener address: {e}"));
    let grpc_addr = grpc_listener.local_addr().map_err(io)?;
    let status_addr = status_listener.local_addr().map_err(io)?;
    let router = Arc::new(Router::connect_pd(&config.pd, config.routing())?);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let batching = ServeOptions {
        max_in_flight: config.max_concurrent_requests_per_connection,
        shutdown: Some(shutdown_rx.clone()),
    };
    let service = RawKvServer::new(RouterService::new(router.clone(), batching))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(config.max_concurrent_requests_per_connection)
            .add_service(service)
            .serve_with_incoming_shutdown(
                concord_common::grpc::incoming(grpc_listener),
                concord_common::grpc::stopped(shutdown_rx.clone()),
            ),
    );
    let state = Arc::new(StatusState {
        router: router.clone(),
        config,
        grpc_addr,
        started: Instant::now(),
    });
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state);
    let http_task = tokio::spawn(async move {
        axum::serve(status_listener, app)
            .with_graceful_shutdown(concord_common::grpc::stopped(shutdown_rx))
            .await
    });
    tracing::info!(%grpc_addr, %status_addr, "router serving");
    Ok(RouterServerHandle {
        grpc_addr,
        status_addr,
        router,
        shutdown,
        grpc_task,
        http_task,
    })
}

impl RouterServerHandle {
    /// The bound client-facing gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP status address.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// The routing engine (metrics, cache).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Stops accepting requests, lets in-flight ones finish, and returns
    /// once both servers have stopped.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let failed = |what: &str, e: String| Error::Unavailable(format!("{what} server: {e}"));
        self.grpc_task
            .await
            .map_err(|e| failed("gRPC", e.to_string()))?
            .map_err(|e| failed("gRPC", e.to_string()))?;
        self.http_task
            .await
            .map_err(|e| failed("HTTP status", e.to_string()))?
            .map_err(|e| failed("HTTP status", e.to_string()))?;
        Ok(())
    }
}
