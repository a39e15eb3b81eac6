//! The ConcordKV placement driver (PD): cluster metadata, the ID allocator,
//! the timestamp oracle, store and region heartbeats, and the schedulers that
//! move regions and leaders to keep the cluster healthy and balanced.
//!
//! - [`client`] / [`grpc_client`]: the PD client trait stores and routers
//!   use, and its gRPC implementation ([`grpc_client::GrpcPdClient::connect`]).
//! - [`server::start`]: runs a PD (gRPC + HTTP) in-process, e.g. for tests:
//!   give it a [`config::PdConfig`] with `127.0.0.1:0` addresses and read the
//!   bound ones from the returned [`server::PdServerHandle`].
//! - [`cluster::Cluster`]: the PD core over [`storage::MetaStorage`] (local
//!   RocksDB), with [`id_alloc`], [`tso`] and [`region_tree`].
//! - [`operator`] and [`schedule`]: operators and the checkers/schedulers
//!   that create them; [`service`] and [`http_api`] are the two front ends,
//!   and [`dashboard`] is the web view served beside the HTTP API.

#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod grpc_client;
pub mod http_api;
pub mod http_leader;
pub mod id_alloc;
pub mod members;
pub mod metrics;
pub mod operator;
pub mod peer_transport;
pub mod raft_log;
pub mod region_tree;
pub mod replication;
pub mod schedule;
pub mod server;
pub mod service;
pub mod storage;
pub mod tso;
