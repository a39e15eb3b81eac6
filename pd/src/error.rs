//! Errors of the PD server side (metadata, allocators, services).

use concord_proto::pd_raftpb::MemberInfo;
use concord_proto::pdpb::ErrorType;

/// What can go wrong inside PD.
#[derive(Debug, thiserror::Error)]
pub enum PdServerError {
    /// The local metadata store failed.
    #[error("metadata storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A value in the metadata store could not be decoded.
    #[error("corrupt metadata under key {key}: {reason}")]
    Corrupt {
        /// The key whose value is corrupt.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The cluster has not been bootstrapped yet.
    #[error("cluster is not bootstrapped")]
    NotBootstrapped,
    /// A second bootstrap was refused.
    #[error("cluster is already bootstrapped")]
    AlreadyBootstrapped,
    /// No store with this id is known.
    #[error("store {0} not found")]
    StoreNotFound(u64),
    /// The store was removed from the cluster and may not come back.
    #[error("store {0} is tombstone")]
    StoreTombstone(u64),
    /// No region with this id, or none covering the key, is known.
    #[error("region not found: {0}")]
    RegionNotFound(String),
    /// The request itself is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request names another cluster.
    #[error("cluster id mismatch: this PD serves cluster {expected}, request is for {got}")]
    ClusterMismatch {
        /// This PD's cluster id.
        expected: u64,
        /// The cluster id in the request header.
        got: u64,
    },
    /// A configuration value is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// This PD member does not lead the PD group; `leader` is the leader
    /// it knows of.
    #[error("this PD member is not the leader{}", leader_hint(.leader))]
    NotLeader {
        /// The current leader, when known.
        leader: Option<Box<MemberInfo>>,
    },
    /// Replicating a metadata write through the PD group failed.
    #[error("replication: {0}")]
    Replication(String),
    /// Binding or serving a socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl PdServerError {
    /// The wire error class reported in a response header.
    pub fn error_type(&self) -> ErrorType {
        match self {
            PdServerError::NotBootstrapped => ErrorType::NotBootstrapped,
            PdServerError::AlreadyBootstrapped => ErrorType::AlreadyBootstrapped,
            PdServerError::StoreNotFound(_) => ErrorType::StoreNotFound,
            PdServerError::StoreTombstone(_) => ErrorType::StoreTombstone,
            PdServerError::RegionNotFound(_) => ErrorType::RegionNotFound,
            PdServerError::InvalidArgument(_) => ErrorType::InvalidArgument,
            PdServerError::ClusterMismatch { .. } => ErrorType::ClusterMismatch,
            PdServerError::NotLeader { .. } => ErrorType::NotLeader,
            PdServerError::Storage(_)
            | PdServerError::Corrupt { .. }
            | PdServerError::Config(_)
            | PdServerError::Replication(_)
            | PdServerError::Io(_) => ErrorType::Unknown,
        }
    }
}

fn leader_hint(leader: &Option<Box<MemberInfo>>) -> String {
    match leader {
        Some(m) if !m.client_url.is_empty() => {
            format!("; the leader is {} at {}", m.name, m.client_url)
        }
        Some(m) => format!("; the leader is {}", m.name),
        None => "; no leader is known yet".into(),
    }
}

/// Result of PD server operations.
pub type Result<T> = std::result::Result<T, PdServerError>;
