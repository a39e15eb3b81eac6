//! The HTTP JSON API (what `pd-ctl` and dashboards use), `/metrics` in the
//! Prometheus text format, `/status` and the web view ([`crate::dashboard`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use concord_proto::{metapb, pdpb};
use serde_json::{json, Value};

use crate::cluster::{AdminOp, Cluster, StoreInfo};
use crate::error::PdServerError;
use crate::metrics;
use crate::operator::Operator;
use crate::region_tree::RegionEntry;
use crate::tso::compose;

/// Prefix of every JSON API route.
pub const API_PREFIX: &str = "/pd/api/v1";

/// An API error: a status code and a JSON `{"error": ...}` body.
struct ApiError(StatusCode, String);

impl From<PdServerError> for ApiError {
    fn from(err: PdServerError) -> Self {
        let code = match &err {
            PdServerError::StoreNotFound(_) | PdServerError::RegionNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            PdServerError::InvalidArgument(_) | PdServerError::ClusterMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            PdServerError::AlreadyBootstrapped | PdServerError::StoreTombstone(_) => {
                StatusCode::CONFLICT
            }
            PdServerError::NotBootstrapped | PdServerError::NotLeader { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            PdServerError::Storage(_)
            | PdServerError::Corrupt { .. }
            | PdServerError::Config(_)
            | PdServerError::Replication(_)
            | PdServerError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Lowercase hex of a key (keys are bytes, not text).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn peer_json(peer: &metapb::Peer) -> Value {
    json!({
        "id": peer.id,
        "store_id": peer.store_id,
        "role": peer.role().as_str_name(),
    })
}

fn store_json(cluster: &Cluster, info: &StoreInfo) -> Value {
    let now = SystemTime::now();
    let stats = info.stats.as_ref().map(|s: &pdpb::StoreStats| {
        json!({
            "capacity": s.capacity,
            "available": s.available,
            "used_size": s.used_size,
            "region_count": s.region_count,
            "leader_count": s.leader_count,
            "is_busy": s.is_busy,
            "bytes_written": s.bytes_written,
            "keys_written": s.keys_written,
            "bytes_read": s.bytes_read,
            "keys_read": s.keys_read,
            "sending_snap_count": s.sending_snap_count,
            "receiving_snap_count": s.receiving_snap_count,
            "applying_snap_count": s.applying_snap_count,
            "start_time": s.start_time,
        })
    });
    let labels: serde_json::Map<String, Value> = info
        .meta
        .labels
        .iter()
        .map(|l| (l.key.clone(), Value::String(l.value.clone())))
        .collect();
    json!({
        "id": info.meta.id,
        "address": info.meta.address,
        "status_address": info.meta.status_address,
        "labels": labels,
        "state": info.status(now, cluster.max_store_down_time()).as_str(),
        "version": info.meta.version,
        "start_timestamp": info.meta.start_timestamp,
        "last_heartbeat_unix_ms": info.last_heartbeat.map(unix_ms),
        "stats": stats,
    })
}

fn region_json(entry: &RegionEntry) -> Value {
    let epoch = entry.region.region_epoch.unwrap_or_default();
    let s = &entry.stats;
    json!({
        "id": entry.region.id,
        "start_key": hex(&entry.region.start_key),
        "end_key": hex(&entry.region.end_key),
        "epoch": { "conf_ver": epoch.conf_ver, "version": epoch.version },
        "peers": entry.region.peers.iter().map(peer_json).collect::<Vec<_>>(),
        "leader": entry.leader.as_ref().map(peer_json),
        "down_peers": s.down_peers.iter().map(|d| json!({
            "peer": d.peer.as_ref().map(peer_json),
            "down_seconds": d.down_seconds,
        })).collect::<Vec<_>>(),
        "pending_peers": s.pending_peers.iter().map(peer_json).collect::<Vec<_>>(),
        "approximate_size": s.approximate_size,
        "approximate_keys": s.approximate_keys,
        "bytes_written": s.bytes_written,
        "bytes_read": s.bytes_read,
        "keys_written": s.keys_written,
        "keys_read": s.keys_read,
    })
}

fn operator_json(op: &Operator) -> Value {
    json!({
        "region_id": op.region_id,
        "desc": op.desc,
        "kind": format!("{:?}", op.kind),
        "steps": op.steps.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>(),
        "current_step": op.current,
        "age_secs": op.created.elapsed().as_secs(),
        "timeout_secs": op.timeout.as_secs(),
    })
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The JSON body, or 400 with a JSON error.
fn body(payload: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    payload
        .map(|Json(v)| v)
        .map_err(|e| bad_request(format!("bad JSON body: {}", e.body_text())))
}

fn field_u64(body: &Value, key: &str) -> Result<u64, ApiError> {
    body.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| bad_request(format!("missing or non-numeric field {key:?}")))
}

/// Parses an id from the path, answering 400 with a JSON body when bad.
fn parse_id(what: &str, text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid {what} id {text:?}: expected a number"),
        )
    })
}

async fn blocking<T, F>(cluster: &Arc<Cluster>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Cluster) -> Result<T, PdServerError> + Send + 'static,
{
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || f(&cluster))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// Applies a scheduling configuration change on a blocking thread (it is
/// persisted).
async fn update_schedule<F>(cluster: &Arc<Cluster>, change: F) -> Result<(), ApiError>
where
    F: FnOnce(&mut crate::schedule::ScheduleConfig) + Send + 'static,
{
    blocking(cluster, move |c| c.update_schedule_config(change)).await
}

async fn health(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    let config = cluster.config();
    Ok(Json(json!([{
        "name": config.name,
        "member_id": cluster.cluster_id(),
        "client_urls": [format!("http://{}", config.addr)],
        "health": true,
    }])))
}

async fn stores(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    let stores: Vec<Value> = cluster
        .stores(false)
        .iter()
        .map(|s| store_json(&cluster, s))
        .collect();
    Ok(Json(json!({ "count": stores.len(), "stores": stores })))
}

async fn store(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("store", &id)?;
    let info = cluster.get_store(id)?;
    Ok(Json(store_json(&cluster, &info)))
}

async fn delete_store(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("store", &id)?;
    let state = blocking(&cluster, move |c| c.delete_store(id)).await?;
    Ok(Json(json!({ "id": id, "state": state.as_str_name() })))
}

async fn regions(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    let regions: Vec<Value> = cluster.regions().iter().map(region_json).collect();
    Ok(Json(json!({ "count": regions.len(), "regions": regions })))
}

async fn region_by_id(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("region", &id)?;
    let entry = cluster
        .get_region_by_id(id)
        .ok_or_else(|| PdServerError::RegionNotFound(format!("region {id}")))?;
    Ok(Json(region_json(&entry)))
}

#[derive(serde::Deserialize)]
struct KeyFormat {
    format: Option<String>,
}

async fn region_by_key(
    State(cluster): State<Arc<Cluster>>,
    Path(key): Path<String>,
    Query(format): Query<KeyFormat>,
) -> ApiResult {
    let key = match format.format.as_deref() {
        None | Some("raw") => key.into_bytes(),
        Some("hex") => unhex(&key)
            .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, format!("{key:?} is not hex")))?,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown key format {other:?} (raw or hex)"),
            ))
        }
    };
    let entry = cluster.get_region(&key)?;
    Ok(Json(region_json(&entry)))
}

async fn cluster_info(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    let meta = cluster.cluster_meta();
    Ok(Json(json!({
        "id": meta.id,
        "max_peer_count": cluster.schedule_config().max_replicas,
        "bootstrapped": cluster.is_bootstrapped(),
    })))
}

async fn tso(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    let ts = blocking(&cluster, |c| c.tso(1)).await?;
    Ok(Json(json!({
        "physical": ts.physical,
        "logical": ts.logical,
        "ts": compose(&ts),
    })))
}

async fn operators(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    let ops: Vec<Value> = cluster.operators().iter().map(operator_json).collect();
    Ok(Json(json!({ "count": ops.len(), "operators": ops })))
}

async fn members(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    Ok(Json(crate::http_leader::members_json(&cluster)))
}

async fn store_label(
    State(cluster): State<Arc<Cluster>>,
    Path(id): Path<String>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = parse_id("store", &id)?;
    let body = body(payload)?;
    let object = body
        .as_object()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| bad_request("expected a JSON object of labels, e.g. {\"zone\": \"z1\"}"))?;
    let mut labels = Vec::new();
    for (key, value) in object {
        let value = value
            .as_str()
            .ok_or_else(|| bad_request(format!("label {key:?} must be a string")))?;
        labels.push((key.clone(), value.to_string()));
    }
    blocking(&cluster, move |c| c.set_store_labels(id, &labels)).await?;
    let info = cluster.get_store(id)?;
    Ok(Json(store_json(&cluster, &info)))
}

async fn store_limits(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    let config = cluster.schedule_config();
    let limits: serde_json::Map<String, Value> = cluster
        .stores(true)
        .iter()
        .map(|s| {
            (
                s.meta.id.to_string(),
                json!(config.region_limit_of(s.meta.id)),
            )
        })
        .collect();
    Ok(Json(Value::Object(limits)))
}

async fn set_store_limit(
    State(cluster): State<Arc<Cluster>>,
    Path(id): Path<String>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = parse_id("store", &id)?;
    let limit = field_u64(&body(payload)?, "limit")? as usize;
    cluster.get_store(id)?;
    update_schedule(&cluster, move |c| {
        c.store_limits.insert(id, limit);
    })
    .await?;
    Ok(Json(json!({ "store_id": id, "limit": limit })))
}

#[derive(serde::Deserialize)]
struct TopParams {
    limit: Option<usize>,
}

fn top_regions(cluster: &Cluster, limit: usize, key: fn(&RegionEntry) -> u64) -> ApiResult {
    let mut regions = cluster.regions();
    regions.sort_by_key(|e| std::cmp::Reverse(key(e)));
    regions.truncate(limit);
    let regions: Vec<Value> = regions.iter().map(region_json).collect();
    Ok(Json(json!({ "count": regions.len(), "regions": regions })))
}

async fn top_write(State(cluster): State<Arc<Cluster>>, Query(p): Query<TopParams>) -> ApiResult {
    top_regions(&cluster, p.limit.unwrap_or(16), |e| e.stats.bytes_written)
}

async fn top_read(State(cluster): State<Arc<Cluster>>, Query(p): Query<TopParams>) -> ApiResult {
    top_regions(&cluster, p.limit.unwrap_or(16), |e| e.stats.bytes_read)
}

async fn operator_of(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("region", &id)?;
    let op = cluster
        .operators()
        .into_iter()
        .find(|op| op.region_id == id)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("region {id} has no operator"),
            )
        })?;
    Ok(Json(operator_json(&op)))
}

fn admin_op(body: &Value) -> Result<AdminOp, ApiError> {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("missing field \"name\""))?;
    let region_id = field_u64(body, "region_id")?;
    Ok(match name {
        "transfer-leader" => AdminOp::TransferLeader {
            region_id,
            store_id: field_u64(body, "to_store_id")?,
        },
        "transfer-region" => AdminOp::TransferRegion {
            region_id,
            store_ids: body
                .get("to_store_ids")
                .and_then(Value::as_array)
                .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
                .ok_or_else(|| bad_request("missing field \"to_store_ids\""))?,
        },
        "add-peer" => AdminOp::AddPeer {
            region_id,
            store_id: field_u64(body, "store_id")?,
        },
        "remove-peer" => AdminOp::RemovePeer {
            region_id,
            store_id: field_u64(body, "store_id")?,
        },
        "split-region" => {
            let keys = match body.get("keys").and_then(Value::as_array) {
                Some(keys) => keys
                    .iter()
                    .map(|k| k.as_str().and_then(unhex))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad_request("split keys must be hex strings"))?,
                None => Vec::new(),
            };
            AdminOp::Split { region_id, keys }
        }
        other => {
            return Err(bad_request(format!(
                "unknown operator {other:?} (transfer-leader, transfer-region, add-peer, remove-peer, split-region)"
            )))
        }
    })
}

async fn add_operator(
    State(cluster): State<Arc<Cluster>>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let request = admin_op(&body(payload)?)?;
    let op = blocking(&cluster, move |c| c.admin_operator(request)).await?;
    Ok(Json(operator_json(&op)))
}

async fn remove_operator(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("region", &id)?;
    let op = cluster.remove_operator(id).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("region {id} has no operator"),
        )
    })?;
    Ok(Json(json!({ "removed": operator_json(&op) })))
}

async fn schedulers(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    Ok(Json(json!(cluster.schedule_config().scheduler_names())))
}

async fn add_scheduler(
    State(cluster): State<Arc<Cluster>>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let body = body(payload)?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("missing field \"name\""))?;
    match name {
        "balance-region" => update_schedule(&cluster, move |c| c.balance_region = true).await?,
        "balance-leader" => update_schedule(&cluster, move |c| c.balance_leader = true).await?,
        "hot-region" => update_schedule(&cluster, move |c| c.hot_region = true).await?,
        "evict-leader" => {
            let store_id = field_u64(&body, "store_id")?;
            cluster.get_store(store_id)?;
            update_schedule(&cluster, move |c| {
                c.evict_leader_stores.insert(store_id);
            })
            .await?;
        }
        other => {
            return Err(bad_request(format!(
                "unknown scheduler {other:?} (balance-region, balance-leader, hot-region, evict-leader)"
            )))
        }
    }
    Ok(Json(json!(cluster.schedule_config().scheduler_names())))
}

async fn remove_scheduler(
    State(cluster): State<Arc<Cluster>>,
    Path(name): Path<String>,
) -> ApiResult {
    let config = cluster.schedule_config();
    if !config.scheduler_names().contains(&name) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("scheduler {name:?} is not running"),
        ));
    }
    update_schedule(&cluster, move |c| match name.as_str() {
        "balance-region" => c.balance_region = false,
        "balance-leader" => c.balance_leader = false,
        "hot-region" => c.hot_region = false,
        evict => {
            if let Some(id) = evict
                .strip_prefix("evict-leader-")
                .and_then(|id| id.parse::<u64>().ok())
            {
                c.evict_leader_stores.remove(&id);
            }
        }
    })
    .await?;
    Ok(Json(json!(cluster.schedule_config().scheduler_names())))
}

fn config_json(cluster: &Cluster) -> Value {
    let c = cluster.schedule_config();
    let static_config = serde_json::to_value(cluster.config()).unwrap_or(Value::Null);
    json!({
        "server": static_config,
        "schedule": {
            "max-replicas": c.max_replicas,
            "max-store-down-time-secs": c.max_store_down_time.as_secs(),
            "region-schedule-limit": c.region_limit,
            "leader-schedule-limit": c.leader_limit,
            "location-labels": c.location_labels,
            "region-op-timeout-secs": c.region_op_timeout.as_secs(),
            "leader-op-timeout-secs": c.leader_op_timeout.as_secs(),
            "hot-region-min-flow": c.hot_region_min_flow,
        },
    })
}

async fn show_config(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    Ok(Json(config_json(&cluster)))
}

async fn set_config(
    State(cluster): State<Arc<Cluster>>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let body = body(payload)?;
    let key = body
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("missing field \"key\""))?;
    let value = match body.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => return Err(bad_request("missing field \"value\"")),
    };
    let number = || -> Result<u64, ApiError> {
        value
            .parse::<u64>()
            .map_err(|_| bad_request(format!("{key} needs a non-negative integer, got {value:?}")))
    };
    match key {
        "max-replicas" => {
            let n = number()? as usize;
            if n == 0 {
                return Err(bad_request("max-replicas must be >= 1"));
            }
            update_schedule(&cluster, move |c| c.max_replicas = n).await?;
        }
        "max-store-down-time-secs" => {
            let n = number()?;
            update_schedule(&cluster, move |c| c.max_store_down_time = std::time::Duration::from_secs(n)).await?;
        }
        "region-schedule-limit" => {
            let n = number()? as usize;
            update_schedule(&cluster, move |c| c.region_limit = n).await?;
        }
        "leader-schedule-limit" => {
            let n = number()? as usize;
            update_schedule(&cluster, move |c| c.leader_limit = n).await?;
        }
        "region-op-timeout-secs" => {
            let n = number()?;
            update_schedule(&cluster, move |c| c.region_op_timeout = std::time::Duration::from_secs(n)).await?;
        }
        "leader-op-timeout-secs" => {
            let n = number()?;
            update_schedule(&cluster, move |c| c.leader_op_timeout = std::time::Duration::from_secs(n)).await?;
        }
        "hot-region-min-flow" => {
            let n = number()?;
            update_schedule(&cluster, move |c| c.hot_region_min_flow = n).await?;
        }
        "location-labels" => {
            let labels: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            update_schedule(&cluster, move |c| c.location_labels = labels).await?;
        }
        other => {
            return Err(bad_request(format!(
                "unknown or read-only config key {other:?} (max-replicas, max-store-down-time-secs, region-schedule-limit, leader-schedule-limit, region-op-timeout-secs, leader-op-timeout-secs, hot-region-min-flow, location-labels)"
            )))
        }
    }
    Ok(Json(config_json(&cluster)))
}

async fn status(State(cluster): State<Arc<Cluster>>) -> ApiResult {
    Ok(Json(json!({
        "component": "pd",
        "version": env!("CARGO_PKG_VERSION"),
        "name": cluster.config().name,
        "cluster_id": cluster.cluster_id(),
        "bootstrapped": cluster.is_bootstrapped(),
        "start_time_unix_ms": unix_ms(cluster.started_at()),
        "uptime_secs": SystemTime::now()
            .duration_since(cluster.started_at())
            .unwrap_or_default()
            .as_secs(),
    })))
}

async fn prometheus(State(cluster): State<Arc<Cluster>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics::render(cluster.metrics(), &cluster.gauges()),
    )
}

/// The HTTP routes over `cluster`.
pub fn router(cluster: Arc<Cluster>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/members", get(members))
        .route("/stores", get(stores))
        .route("/stores/limit", get(store_limits))
        .route("/store/:id", get(store).delete(delete_store))
        .route("/store/:id/label", post(store_label))
        .route("/store/:id/limit", post(set_store_limit))
        .route("/regions", get(regions))
        .route("/regions/writeflow", get(top_write))
        .route("/regions/readflow", get(top_read))
        .route("/region/id/:id", get(region_by_id))
        .route("/region/key/:key", get(region_by_key))
        .route("/cluster", get(cluster_info))
        .route("/tso", get(tso))
        .route("/operators", get(operators).post(add_operator))
        .route(
            "/operators/:region_id",
            get(operator_of).delete(remove_operator),
        )
        .route("/schedulers", get(schedulers).post(add_scheduler))
        .route("/schedulers/:name", delete(remove_scheduler))
        .route("/config", get(show_config).post(set_config))
        .route_layer(axum::middleware::from_fn_with_state(
            cluster.clone(),
            crate::http_leader::require_leader,
        ));
    Router::new()
        .nest(API_PREFIX, api)
        .merge(crate::dashboard::routes())
        .route("/metrics", get(prometheus))
        .route("/status", get(status))
        .with_state(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(hex(b"\x00\xffab"), "00ff6162");
        assert_eq!(unhex("00FF6162").unwrap(), b"\x00\xffab");
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
