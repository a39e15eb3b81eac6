//! Leadership on the HTTP API of a replicated PD: only the leader answers
//! the JSON API (except `/members` and `/health`, which every member
//! answers); a follower answers `503` with the leader's URLs so that
//! `pd-ctl` can follow it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use concord_proto::pd_raftpb::MemberInfo;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::error::PdServerError;

fn member_json(info: &MemberInfo) -> Value {
    json!({
        "name": info.name,
        "member_id": info.id,
        "client_urls": if info.client_url.is_empty() { vec![] } else { vec![info.client_url.clone()] },
        "http_url": info.http_url,
        "peer_urls": [info.peer_url],
    })
}

/// The members and the leader, as `GET /members` shows them.
pub fn members_json(cluster: &Cluster) -> Value {
    let replication = cluster.replication();
    let members = replication.members();
    let all: Vec<Value> = members
        .voters()
        .into_iter()
        .filter_map(|id| members.info(id))
        .map(|info| member_json(&info))
        .collect();
    json!({
        "members": all,
        "leader": replication.leader().as_ref().map(member_json),
    })
}

/// Middleware: passes requests to the leader's handlers, answers `503`
/// with a `leader` hint on other members.
pub async fn require_leader(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.ends_with("/members") || path.ends_with("/health") {
        return next.run(request).await;
    }
    let c = cluster.clone();
    match tokio::task::spawn_blocking(move || c.ensure_leader()).await {
        Ok(Ok(())) => next.run(request).await,
        Ok(Err(e @ PdServerError::NotLeader { .. })) => {
            let leader = match &e {
                PdServerError::NotLeader { leader } => leader.as_deref().map(member_json),
                _ => None,
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": e.to_string(), "leader": leader })),
            )
                .into_response()
        }
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("leadership check failed: {e}") })),
        )
            .into_response(),
    }
}
