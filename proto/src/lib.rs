//! The ConcordKV wire protocol: every protobuf message and gRPC service that
//! crosses a process boundary, generated at build time from `proto/*.proto`.
//!
//! - [`metapb`]: stores, regions, peers and epochs.
//! - [`errorpb`]: region errors answered in-band (not leader, stale epoch, ...).
//! - [`kvrpcpb`]: the raw KV service of a store.
//! - [`raft_serverpb`]: store-to-store raft messages and persisted local states.
//! - [`raft_cmdpb`]: commands proposed through a region's raft log.
//! - [`pdpb`]: the placement driver service.
//! - [`routerpb`]: the client-facing service of a router.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Stores, regions, peers and epochs.
pub mod metapb {
    tonic::include_proto!("metapb");
}

/// Region errors.
pub mod errorpb {
    tonic::include_proto!("errorpb");
}

/// The raw KV service of a store.
pub mod kvrpcpb {
    tonic::include_proto!("kvrpcpb");
}

/// Store-to-store raft traffic and persisted local states.
pub mod raft_serverpb {
    tonic::include_proto!("raft_serverpb");
}

/// Commands proposed through a region's raft log.
pub mod raft_cmdpb {
    tonic::include_proto!("raft_cmdpb");
}

/// The placement driver service.
pub mod pdpb {
    tonic::include_proto!("pdpb");
}

/// The client-facing raw KV service of a router (no region context).
pub mod routerpb {
    tonic::include_proto!("routerpb");
}

/// Member-to-member raft traffic and replicated commands of an HA PD.
pub mod pd_raftpb {
    tonic::include_proto!("pd_raftpb");
}
