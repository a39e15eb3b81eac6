//! Store addresses (from PD) and one reusable gRPC channel per store, plus
//! which stores recently failed to answer so requests try other peers
//! first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::kvrpcpb::kv_client::KvClient;
use concord_proto::metapb;
use dashmap::DashMap;
use tonic::transport::Channel;

use crate::batch_client::StoreClient;
use crate::pd::RegionSource;
use crate::retry::{Retry, RetryReason};

/// Largest gRPC message sent or accepted (values may be 8 MiB, batches and
/// scans more).
pub const MAX_MESSAGE_SIZE: usize = 256 << 20;

/// How long a store that failed to answer is avoided when another peer can
/// be tried instead.
const SUSPECT_FOR: Duration = Duration::from_secs(2);

/// A connection to one store.
#[derive(Clone, Debug)]
pub struct StoreConn {
    /// The store id.
    pub store_id: u64,
    /// The address PD gave for it.
    pub address: String,
    /// The store's raw KV calls, over one batched stream.
    pub client: StoreClient,
}

/// Store addresses and channels, keyed by store id.
pub struct StoreConnections {
    source: Arc<dyn RegionSource>,
    connect_timeout: Duration,
    conns: DashMap<u64, StoreConn>,
    suspects: DashMap<u64, Instant>,
}

/// A lazily connecting channel to `addr`.
pub fn lazy_channel(addr: &str, connect_timeout: Duration) -> Result<Channel, String> {
    Ok(concord_common::grpc::endpoint(addr, connect_timeout)?.connect_lazy())
}

impl StoreConnections {
    /// An empty cache resolving addresses through `source`.
    pub fn new(source: Arc<dyn RegionSource>, connect_timeout: Duration) -> StoreConnections {
        StoreConnections {
            source,
            connect_timeout,
            conns: DashMap::new(),
            suspects: DashMap::new(),
        }
    }

    /// Number of stores with a cached connection.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no store connection is cached.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection to `store_id`, resolving its address from PD first
    /// if needed.
    pub async fn get(&self, store_id: u64) -> Result<StoreConn, Retry> {
        if let Some(conn) = self.conns.get(&store_id) {
            return Ok(conn.clone());
        }
        let store = self.source.store(store_id).await.map_err(|e| {
            Retry::backoff(
                RetryReason::PdUnavailable,
                format!("address of store {store_id}: {e}"),
            )
        })?;
        if store.state() == metapb::StoreState::Tombstone || store.address.is_empty() {
            // Removed: as unreachable as a store that refuses connections.
            return Err(Retry::backoff(
                RetryReason::StoreNotConnected,
                format!(
                    "store {store_id} has no usable address (state {}, address {:?})",
                    store.state().as_str_name(),
                    store.address
                ),
            ));
        }
        let channel = lazy_channel(&store.address, self.connect_timeout).map_err(|e| {
            Retry::backoff(RetryReason::PdUnavailable, format!("store {store_id}: {e}"))
        })?;
        let conn = StoreConn {
            store_id,
            address: store.address,
            client: StoreClient::new(
                KvClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            ),
        };
        Ok(self.conns.entry(store_id).or_insert(conn).clone())
    }

    /// Records that `store_id` did not answer: drop its connection (the
    /// next use re-reads its address from PD) and avoid it for a while.
    pub fn mark_unreachable(&self, store_id: u64) {
        self.conns.remove(&store_id);
        self.suspects.insert(store_id, Instant::now() + SUSPECT_FOR);
    }

    /// Records that `store_id` answered.
    pub fn mark_reachable(&self, store_id: u64) {
        if !self.suspects.is_empty() {
            self.suspects.remove(&store_id);
        }
    }

    /// Forgets the cached address of `store_id` (it answered as another
    /// store).
    pub fn forget(&self, store_id: u64) {
        self.conns.remove(&store_id);
    }

    /// Whether `store_id` failed to answer recently.
    pub fn is_suspect(&self, store_id: u64) -> bool {
        if self.suspects.is_empty() {
            return false;
        }
        let expired = match self.suspects.get(&store_id) {
            None => return false,
            Some(until) => *until <= Instant::now(),
        };
        if expired {
            self.suspects.remove(&store_id);
        }
        !expired
    }
}
