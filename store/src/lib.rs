//! The ConcordKV store node.
//!
//! A store keeps many regions (key ranges), each replicated by its own raft
//! group, over ONE shared storage engine. This crate holds the engine
//! ([`engine`]), the key layout inside it ([`keys`]), the multi-raft store and
//! the KV service that clients and routers call.

pub mod engine;
pub mod keys;
pub mod kv;
pub mod raftstore;
pub mod raw_value;
pub mod server;
pub mod service;
pub mod transport;
