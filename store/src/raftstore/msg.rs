//! Messages between the KV service, the raft pollers, the apply workers and
//! the PD worker, and the answers they send back.

use concord_proto::errorpb;
use concord_proto::metapb;
use concord_proto::raft_cmdpb::{RaftCmdRequest, RaftRequestHeader, Response};
use concord_proto::raft_serverpb::{RaftApplyState, RaftMessage};
use raft::eraftpb::ConfChangeV2;
use tokio::sync::oneshot;

use crate::engine::Snapshot;

/// Why a command or read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CmdError {
    /// A region error the caller should act on (retry elsewhere, refresh).
    #[error("region error: {}", .0.message)]
    Region(errorpb::Error),
    /// The request itself is wrong; retrying will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The store failed internally.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<concord_common::limits::InvalidInput> for CmdError {
    fn from(e: concord_common::limits::InvalidInput) -> Self {
        CmdError::InvalidArgument(e.0)
    }
}

impl CmdError {
    /// A region error with the given description and kind.
    pub fn region(message: impl Into<String>, kind: errorpb::error::Kind) -> CmdError {
        CmdError::Region(errorpb::Error {
            message: message.into(),
            kind: Some(kind),
        })
    }

    /// `NotLeader` with the leader hint, if any.
    pub fn not_leader(region_id: u64, leader: Option<metapb::Peer>) -> CmdError {
        CmdError::region(
            format!("peer of region {region_id} is not leader"),
            errorpb::error::Kind::NotLeader(errorpb::NotLeader { region_id, leader }),
        )
    }

    /// `RegionNotFound`.
    pub fn region_not_found(region_id: u64) -> CmdError {
        CmdError::region(
            format!("region {region_id} is not on this store"),
            errorpb::error::Kind::RegionNotFound(errorpb::RegionNotFound { region_id }),
        )
    }

    /// `StaleCommand`.
    pub fn stale_command() -> CmdError {
        CmdError::region(
            "command was superseded by a newer leader before it was applied",
            errorpb::error::Kind::StaleCommand(errorpb::StaleCommand {}),
        )
    }

    /// A write whose fate this peer cannot tell: its log entry may have been
    /// committed by another leader (and so applied everywhere) or dropped.
    /// Not a region error: retrying it could apply it twice.
    pub fn outcome_unknown(region_id: u64, why: &str) -> CmdError {
        CmdError::Internal(format!(
            "region {region_id}: {why}; the write may or may not have been applied"
        ))
    }

    /// [`CmdError::outcome_unknown`] for a write whose peer was removed
    /// before applying it.
    pub fn peer_removed_before_apply(region_id: u64) -> CmdError {
        CmdError::outcome_unknown(region_id, "the peer was removed before applying this write")
    }

    /// [`CmdError::outcome_unknown`] for a write whose log index a snapshot
    /// from a newer leader covered.
    pub fn covered_by_snapshot(region_id: u64) -> CmdError {
        CmdError::outcome_unknown(region_id, "a snapshot replaced the log holding this write")
    }

    /// `ServerIsBusy`.
    pub fn server_is_busy(reason: impl Into<String>, backoff_ms: u64) -> CmdError {
        let reason = reason.into();
        CmdError::region(
            format!("server is busy: {reason}"),
            errorpb::error::Kind::ServerIsBusy(errorpb::ServerIsBusy { reason, backoff_ms }),
        )
    }
}

/// Result of a command that went through raft.
pub type CmdResult = Result<CmdResponse, CmdError>;

/// What an applied command produced.
#[derive(Debug, Clone, Default)]
pub struct CmdResponse {
    /// One response per request of the command.
    pub responses: Vec<Response>,
    /// Regions produced by an admin command (a split's regions).
    pub regions: Vec<metapb::Region>,
}

/// Completes a command once it is applied (or fails).
pub type Callback = oneshot::Sender<CmdResult>;

/// A consistent view of a region for serving a read.
pub struct ReadResponse {
    /// The engine snapshot, taken after everything up to the read index was applied.
    pub snapshot: Snapshot,
    /// The region at the time of the read.
    pub region: metapb::Region,
}

/// Completes a read once it is known to be linearizable.
pub type ReadCallback = oneshot::Sender<Result<ReadResponse, CmdError>>;

/// A key range a request touches, `[start, end)`; an empty end means the
/// single key `start` (point requests) unless `is_range` is set.
#[derive(Debug, Clone)]
pub struct KeyRange {
    /// First key.
    pub start: Vec<u8>,
    /// Exclusive end key for ranges.
    pub end: Vec<u8>,
    /// Whether this is a range (empty end: unbounded) rather than a point.
    pub is_range: bool,
}

impl KeyRange {
    /// A single key.
    pub fn point(key: &[u8]) -> KeyRange {
        KeyRange {
            start: key.to_vec(),
            end: Vec::new(),
            is_range: false,
        }
    }

    /// A range `[start, end)`; empty `end` is unbounded.
    pub fn range(start: &[u8], end: &[u8]) -> KeyRange {
        KeyRange {
            start: start.to_vec(),
            end: end.to_vec(),
            is_range: true,
        }
    }
}

/// What the apply worker reports to a region's peer.
#[derive(Debug)]
pub struct ApplyResult {
    /// The apply state after the batch.
    pub apply_state: RaftApplyState,
    /// Admin commands applied in the batch, in log order.
    pub exec_results: Vec<ExecResult>,
    /// Bytes and keys written by the batch.
    pub written_bytes: u64,
    /// See `written_bytes`.
    pub written_keys: u64,
}

/// The effect of an applied admin command that the raft side must mirror.
#[derive(Debug)]
pub enum ExecResult {
    /// Membership changed; raft must apply `cc` too.
    ConfChange {
        /// The raft-rs conf change to apply.
        cc: ConfChangeV2,
        /// The region after the change.
        region: metapb::Region,
    },
    /// The region was split.
    Split {
        /// The region after the split (it keeps the last range).
        derived: metapb::Region,
        /// Every resulting region in key order, `derived` included.
        regions: Vec<metapb::Region>,
    },
    /// Log entries up to `index` may be deleted.
    CompactLog {
        /// Last compacted index.
        index: u64,
    },
}

/// A message to a region peer.
pub enum PeerMsg {
    /// A raft message from another store.
    Raft(RaftMessage),
    /// A write or admin command to propose.
    Command {
        /// The command.
        request: RaftCmdRequest,
        /// Its completion.
        callback: Callback,
    },
    /// A linearizable read.
    Read {
        /// Region, epoch and peer the reader targets.
        header: RaftRequestHeader,
        /// Keys the read touches, checked against the region range.
        ranges: Vec<KeyRange>,
        /// Its completion.
        callback: ReadCallback,
    },
    /// A tick of the store clock (awake peers only).
    Tick,
    /// The slower tick of hibernating peers, every `sleep_tick_ticks`.
    SleepTick,
    /// Progress from the apply worker.
    Applied(ApplyResult),
    /// Hand leadership to `peer` (from PD or an operator).
    TransferLeader(metapb::Peer),
    /// Report the region to PD now if this peer leads it (PD's heartbeat
    /// stream reopened). Does not wake a hibernating peer.
    HeartbeatPd,
    /// A snapshot of the region from the snapshot thread, or why it could
    /// not be built.
    SnapshotBuilt(Result<raft::eraftpb::Snapshot, String>),
    /// Outcome of sending a snapshot to `to_peer_id`.
    SnapshotStatus {
        /// The peer the snapshot went to.
        to_peer_id: u64,
        /// Whether it was delivered.
        delivered: bool,
    },
}

impl std::fmt::Debug for PeerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerMsg::Raft(m) => write!(f, "Raft(region {})", m.region_id),
            PeerMsg::Command { request, .. } => write!(f, "Command({:?})", request.header),
            PeerMsg::Read { header, .. } => write!(f, "Read({header:?})"),
            PeerMsg::Tick => write!(f, "Tick"),
            PeerMsg::SleepTick => write!(f, "SleepTick"),
            PeerMsg::Applied(r) => write!(f, "Applied({:?})", r.apply_state),
            PeerMsg::TransferLeader(p) => write!(f, "TransferLeader({p:?})"),
            PeerMsg::HeartbeatPd => write!(f, "HeartbeatPd"),
            PeerMsg::SnapshotBuilt(Ok(s)) => {
                write!(f, "SnapshotBuilt(index {})", s.get_metadata().index)
            }
            PeerMsg::SnapshotBuilt(Err(e)) => write!(f, "SnapshotBuilt({e})"),
            PeerMsg::SnapshotStatus {
                to_peer_id,
                delivered,
            } => {
                write!(f, "SnapshotStatus({to_peer_id}, {delivered})")
            }
        }
    }
}
