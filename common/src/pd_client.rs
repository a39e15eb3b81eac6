//! The PD client: the calls a store and a router make to the placement
//! driver, behind a trait so that store tests can use an in-process mock.

use concord_proto::{metapb, pdpb};
use tokio::sync::{mpsc, watch};

/// What can go wrong talking to PD.
#[derive(Debug, thiserror::Error)]
pub enum PdError {
    /// No PD member could be reached.
    #[error("PD unreachable at {addresses}: {reason}")]
    Unreachable {
        /// The addresses tried, comma-separated.
        addresses: String,
        /// The last transport error.
        reason: String,
    },
    /// The cluster has not been bootstrapped yet.
    #[error("cluster is not bootstrapped")]
    NotBootstrapped,
    /// A second bootstrap was refused.
    #[error("cluster is already bootstrapped")]
    AlreadyBootstrapped,
    /// PD answered with an error.
    #[error("PD error {kind:?}: {message}")]
    Server {
        /// The error class PD reported.
        kind: pdpb::ErrorType,
        /// PD's description.
        message: String,
    },
}

/// Result of PD calls.
pub type PdResult<T> = Result<T, PdError>;

/// A region as PD knows it, with its leader when known.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionInfo {
    /// The region's range, epoch and peers.
    pub region: metapb::Region,
    /// The peer that last reported itself leader.
    pub leader: Option<metapb::Peer>,
}

/// The PD calls stores and routers make.
#[tonic::async_trait]
pub trait PdClient: Send + Sync + 'static {
    /// Whether the cluster has been bootstrapped.
    async fn is_bootstrapped(&self) -> PdResult<bool>;
    /// Bootstraps the cluster with its first store and first region.
    async fn bootstrap(&self, store: metapb::Store, region: metapb::Region) -> PdResult<()>;
    /// A new cluster-unique id (for stores, regions and peers).
    async fn alloc_id(&self) -> PdResult<u64>;
    /// Registers or updates a store.
    async fn put_store(&self, store: metapb::Store) -> PdResult<()>;
    /// One store's metadata.
    async fn get_store(&self, store_id: u64) -> PdResult<metapb::Store>;
    /// Every store PD knows, tombstones included.
    async fn get_all_stores(&self) -> PdResult<Vec<metapb::Store>>;
    /// Reports a store's load and state.
    async fn store_heartbeat(&self, stats: pdpb::StoreStats) -> PdResult<()>;
    /// Reports a region from its leader. PD's answers (operator steps) arrive
    /// on the receiver from [`PdClient::heartbeat_responses`].
    async fn region_heartbeat(&self, request: pdpb::RegionHeartbeatRequest) -> PdResult<()>;
    /// The stream of PD's answers to region heartbeats. Each call replaces
    /// the previous receiver.
    fn heartbeat_responses(&self) -> mpsc::Receiver<pdpb::RegionHeartbeatResponse>;
    /// How many times the region heartbeat stream has opened. It changes
    /// when the stream reopens (to a new PD leader, or after it broke):
    /// heartbeats sent while it was down are lost, and a new PD leader knows
    /// no region's leader until told, so a store then reports its leaders
    /// again.
    fn heartbeat_stream_opens(&self) -> watch::Receiver<u64>;
    /// The region containing `key`.
    async fn get_region(&self, key: &[u8]) -> PdResult<RegionInfo>;
    /// The region with this id, if PD knows it.
    async fn get_region_by_id(&self, region_id: u64) -> PdResult<Option<RegionInfo>>;
    /// Up to `limit` regions (0: no limit) overlapping `[start, end)` in key
    /// order; an empty `end` means no upper bound.
    async fn scan_regions(&self, start: &[u8], end: &[u8], limit: u32)
        -> PdResult<Vec<RegionInfo>>;
    /// New region and peer ids for splitting `region` into `count + 1` parts.
    async fn ask_batch_split(
        &self,
        region: &metapb::Region,
        count: u32,
    ) -> PdResult<Vec<pdpb::SplitId>>;
    /// Reports the regions a split produced.
    async fn report_batch_split(&self, regions: Vec<metapb::Region>) -> PdResult<()>;
    /// A new timestamp from the timestamp oracle.
    async fn get_tso(&self) -> PdResult<pdpb::Timestamp>;
}
