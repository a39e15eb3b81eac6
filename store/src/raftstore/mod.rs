//! The multi-raft store: many region peers, each a raft-rs group, over one
//! shared engine, driven by a small pool of pollers with group commit and
//! applied by a separate apply pool.

pub mod apply;
pub mod config;
pub mod context;
pub mod meta;
pub mod msg;
pub mod pd_worker;
pub mod peer;
pub mod poller;
pub mod proposal_batch;
pub mod router;
pub mod snapshot;
pub mod storage;
pub mod store;
pub mod util;

pub use config::RaftStoreConfig;
pub use context::{PdTask, RaftStats, StoreServices, Transport};
pub use msg::{CmdError, PeerMsg};
pub use router::StoreRouter;
pub use store::{bootstrap, Store, StoreError};
