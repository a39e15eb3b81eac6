//! ConcordKV operations: the `concord` command line (playground, kv, bench),
//! with example configs, container images and dashboards beside it in `ops/`.
//!
//! - [`playground`]: PD, stores and a router on localhost in one command,
//!   supervised by [`supervisor`] on ports planned by [`ports`], using the
//!   sibling binaries found by [`binaries`].
//! - [`kv`]: single raw KV operations through a router ([`router_conn`]),
//!   with keys and values shown by [`bytes_text`].
//! - [`bench`]: YCSB-like workloads with latency percentiles.
//! - [`chaos`]: fault scenarios judged by the history checker.

#![warn(missing_docs)]

pub mod bench;
pub mod binaries;
pub mod bytes_text;
pub mod chaos;
pub mod error;
pub mod kv;
pub mod playground;
pub mod ports;
pub mod router_conn;
pub mod signals;
pub mod supervisor;

pub use error::{OpsError, Result};
