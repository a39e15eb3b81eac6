//! Where region and store metadata come from: the [`RegionSource`] trait
//! (what routing needs from PD) and [`PdConnection`], its implementation
//! over the gRPC PD client that keeps trying to reach PD in the background
//! while PD is down, so a router can start before PD and serve as soon as
//! PD answers.

use std::sync::Arc;
use std::time::Duration;

use concord_common::pd_client::{PdClient, PdError, PdResult, RegionInfo};
use concord_pd::grpc_client::GrpcPdClient;
use concord_proto::metapb;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The PD calls routing needs.
#[tonic::async_trait]
pub trait RegionSource: Send + Sync + 'static {
    /// The region holding `key` and its leader.
    async fn region_by_key(&self, key: &[u8]) -> PdResult<RegionInfo>;
    /// Up to `limit` regions (0: all) overlapping `[start, end)` in key
    /// order; an empty `end` means no upper bound.
    async fn scan_regions(&self, start: &[u8], end: &[u8], limit: u32)
        -> PdResult<Vec<RegionInfo>>;
    /// One store's metadata (its address).
    async fn store(&self, store_id: u64) -> PdResult<metapb::Store>;
}

/// A PD connection that is (re)established in the background.
pub struct PdConnection {
    addrs: Vec<String>,
    client: watch::Receiver<Option<Arc<GrpcPdClient>>>,
    last_error: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl Drop for PdConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Longest pause between two connection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

async fn connect_loop(
    addrs: Vec<String>,
    ready: watch::Sender<Option<Arc<GrpcPdClient>>>,
    last_error: Arc<Mutex<String>>,
) {
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        match GrpcPdClient::connect(&addrs).await {
            Ok(client) => {
                tracing::info!(pd = %addrs.join(","), attempts, "connected to PD");
                let _ = ready.send(Some(Arc::new(client)));
                return;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot reach PD; will keep retrying"
                );
                *last_error.lock() = match e {
                    PdError::Unreachable { reason, .. } => reason,
                    other => other.to_string(),
                };
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
}

impl PdConnection {
    /// Starts connecting to the PD members `addrs` in the background. Must
    /// be called within a tokio runtime.
    pub fn start(addrs: Vec<String>) -> PdConnection {
        let (tx, rx) = watch::channel(None);
        let last_error = Arc::new(Mutex::new("not connected yet".to_string()));
        let task = tokio::spawn(connect_loop(addrs.clone(), tx, last_error.clone()));
        PdConnection {
            addrs,
            client: rx,
            last_error,
            task,
        }
    }

    /// The PD addresses.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Whether PD has answered at least once.
    pub fn is_connected(&self) -> bool {
        self.client.borrow().is_some()
    }

    /// Waits up to `timeout` for PD to answer; the error names the
    /// addresses and the last failure.
    pub async fn wait_connected(&self, timeout: Duration) -> PdResult<()> {
        let mut rx = self.client.clone();
        let connected = tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok());
        if connected {
            Ok(())
        } else {
            Err(self.not_connected())
        }
    }

    fn not_connected(&self) -> PdError {
        PdError::Unreachable {
            addresses: self.addrs.join(","),
            reason: self.last_error.lock().clone(),
        }
    }

    fn client(&self) -> PdResult<Arc<GrpcPdClient>> {
        self.client
            .borrow()
            .clone()
            .ok_or_else(|| self.not_connected())
    }
}

#[tonic::async_trait]
impl RegionSource for PdConnection {
    async fn region_by_key(&self, key: &[u8]) -> PdResult<RegionInfo> {
        self.client()?.get_region(key).await
    }

    async fn scan_regions(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
    ) -> PdResult<Vec<RegionInfo>> {
        self.client()?.scan_regions(start, end, limit).await
    }

    async fn store(&self, store_id: u64) -> PdResult<metapb::Store> {
        self.client()?.get_store(store_id).await
    }
}
