//! The PD web view: one HTML page at `/` and `/dashboard` that shows the
//! stores (state, capacity, labels), region and leader counts per store
//! and the running operators, refreshed live from the JSON API by the
//! page's own script. Also serves `GET /pd/api/v1/stores/distribution`,
//! the per-store replica and leader counts as PD sees them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{extract::State, Json, Router};
use concord_proto::metapb::PeerRole;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::region_tree::RegionEntry;

/// The page itself (HTML, CSS and script in one file, no external assets).
pub const PAGE: &str = include_str!("dashboard.html");

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// Per store: regions with a replica there, of which leaders and learners.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreShare {
    /// Regions with a peer on the store.
    pub regions: u64,
    /// Regions whose leader is on the store.
    pub leaders: u64,
    /// Regions with a learner on the store.
    pub learners: u64,
}

/// Counts regions, leaders and learners per store id over `regions`.
pub fn distribution(regions: &[RegionEntry]) -> BTreeMap<u64, StoreShare> {
    let mut out: BTreeMap<u64, StoreShare> = BTreeMap::new();
    for r in regions {
        for p in &r.region.peers {
            let share = out.entry(p.store_id).or_default();
            share.regions += 1;
            if p.role() == PeerRole::Learner {
                share.learners += 1;
            }
        }
        if let Some(leader) = &r.leader {
            out.entry(leader.store_id).or_default().leaders += 1;
        }
    }
    out
}

async fn distribution_json(State(cluster): State<Arc<Cluster>>) -> Json<Value> {
    let regions = cluster.regions();
    let stores: Vec<Value> = distribution(&regions)
        .into_iter()
        .map(|(id, s)| {
            json!({
                "store_id": id,
                "region_count": s.regions,
                "leader_count": s.leaders,
                "learner_count": s.learners,
            })
        })
        .collect();
    Json(json!({ "region_count": regions.len(), "stores": stores }))
}

/// The dashboard routes, to merge into the HTTP router.
pub fn routes() -> Router<Arc<Cluster>> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard", get(page))
        .route(
            &format!("{}/stores/distribution", crate::http_api::API_PREFIX),
            get(distribution_json),
        )
}

#[cfg(test)]
mod tests {
    use concord_proto::metapb;

    use super::*;

    fn entry(id: u64, peers: &[(u64, u64, PeerRole)], leader: Option<usize>) -> RegionEntry {
        let peers: Vec<metapb::Peer> = peers
            .iter()
            .map(|&(id, store_id, role)| metapb::Peer {
                id,
                store_id,
                role: role as i32,
            })
            .collect();
        RegionEntry {
            leader: leader.map(|i| peers[i]),
            region: metapb::Region {
                id,
                peers,
                ..Default::default()
            },
            stats: Default::default(),
        }
    }

    #[test]
    fn counts_replicas_leaders_and_learners_per_store() {
        let regions = vec![
            entry(
                1,
                &[(10, 1, PeerRole::Voter), (11, 2, PeerRole::Voter)],
                Some(0),
            ),
            entry(
                2,
                &[(20, 1, PeerRole::Voter), (21, 3, PeerRole::Learner)],
                Some(0),
            ),
            entry(3, &[(30, 2, PeerRole::Voter)], None),
        ];
        let d = distribution(&regions);
        assert_eq!(
            d[&1],
            StoreShare {
                regions: 2,
                leaders: 2,
                learners: 0
            }
        );
        assert_eq!(
            d[&2],
            StoreShare {
                regions: 2,
                leaders: 0,
                learners: 0
            }
        );
        assert_eq!(
            d[&3],
            StoreShare {
                regions: 1,
                leaders: 0,
                learners: 1
            }
        );
    }

    #[test]
    fn page_fetches_the_api_it_renders() {
        let prefix = format!("const API = \"{}\"", crate::http_api::API_PREFIX);
        assert!(PAGE.contains(&prefix), "page does not use {prefix}");
        for path in ["\"/stores\"", "\"/stores/distribution\"", "\"/operators\""] {
            assert!(PAGE.contains(path), "page does not fetch {path}");
        }
    }
}
