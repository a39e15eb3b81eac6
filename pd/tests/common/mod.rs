//! Helpers shared by the integration tests (included with `mod common;`).

#![allow(dead_code)]

use std::path::Path;

use concord_pd::config::PdConfig;
use concord_pd::server::{self, PdServerHandle};
use concord_proto::metapb;

/// A config for an in-process PD on OS-assigned ports over `dir`.
pub fn test_config(dir: &Path) -> PdConfig {
    PdConfig {
        addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        ..PdConfig::default()
    }
}

/// Starts a PD over `dir` on OS-assigned ports.
pub async fn start_pd(dir: &Path) -> PdServerHandle {
    server::start(test_config(dir)).await.expect("PD starts")
}

/// Restarts a PD over `dir` on the given (now free) addresses.
pub async fn restart_pd(
    dir: &Path,
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
) -> PdServerHandle {
    let mut config = test_config(dir);
    config.addr = grpc.to_string();
    config.http_addr = http.to_string();
    server::start(config).await.expect("PD restarts")
}

pub fn store(id: u64) -> metapb::Store {
    metapb::Store {
        id,
        address: format!("127.0.0.1:{}", 30000 + id),
        labels: vec![metapb::StoreLabel {
            key: "zone".into(),
            value: format!("z{id}"),
        }],
        version: "0.1.0".into(),
        ..Default::default()
    }
}

pub fn peer(id: u64, store_id: u64) -> metapb::Peer {
    metapb::Peer {
        id,
        store_id,
        role: metapb::PeerRole::Voter as i32,
    }
}

pub fn region(
    id: u64,
    start: &[u8],
    end: &[u8],
    version: u64,
    conf_ver: u64,
    peers: Vec<metapb::Peer>,
) -> metapb::Region {
    metapb::Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        region_epoch: Some(metapb::RegionEpoch { conf_ver, version }),
        peers,
    }
}
