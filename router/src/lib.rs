//! The ConcordKV router: region-aware routing of raw KV requests, as a
//! library (the Rust [`Client`]) and as the stateless `concord-router`
//! proxy.
//!
//! - [`Client`]: `Client::connect_pd` routes by itself (smart client);
//!   `Client::connect_routers` talks to router processes over a
//!   consistent-hash ring ([`router_pool`]).
//! - [`Router`] ([`routing`]): the routing engine both use. It finds a
//!   key's region in the [`region_cache`] (PD on a miss, via [`pd`]), sends
//!   to the leader over one batched stream per store ([`store_conn`],
//!   [`batch_client`]), updates the
//!   cache from region errors ([`region_error`]) and retries with bounded
//!   exponential backoff ([`retry`]). Multi-key requests are split by
//!   region and sent in parallel ([`multi_key`]); scans walk regions in key
//!   order either way ([`scan`]).
//! - [`server::start`]: runs the router's gRPC service ([`service`],
//!   `routerpb.RawKv`) and its HTTP `/metrics` ([`metrics`]) and `/status`
//!   in-process; [`config`] holds its TOML/flag configuration.
//! - Input is checked before sending with the store's limits and messages
//!   ([`concord_common::limits`]); every failure ends as one [`Error`].

#![warn(missing_docs)]

pub mod batch_client;
pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod multi_key;
pub mod pd;
pub mod region_cache;
pub mod region_error;
pub mod retry;
pub mod router_pool;
pub mod routing;
pub mod scan;
pub mod server;
pub mod service;
pub mod store_conn;

pub use client::Client;
pub use concord_proto::kvrpcpb::KvPair;
pub use error::{Error, Result};
pub use routing::{CasOutcome, Router, RoutingConfig};
