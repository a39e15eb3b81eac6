//! ConcordKV's multi-process and chaos tests: they run the real binaries,
//! kill them, cut their links and check that no acknowledged write is lost.
//!
//! This library is the harness: [`process`] starts and kills PD and store
//! processes on free loopback ports; [`raw_client`] is a minimal retrying
//! client that talks to stores directly, for checks that must reach one
//! particular store.

pub mod process;
pub mod raw_client;
