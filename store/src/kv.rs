//! Raw KV operations on one region of this store: input checks, then writes
//! through raft and linearizable reads. The gRPC service and the in-process
//! test cluster both call this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::kvrpcpb::{Context, KvPair};
use concord_proto::metapb;
use concord_proto::raft_cmdpb::{
    request, CasRequest, DeleteRangeRequest, DeleteRequest, PutRequest, RaftCmdRequest,
    RaftRequestHeader, Request,
};
use concord_proto::raft_serverpb::RaftApplyState;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::engine::{Reader, CF_DEFAULT};
use crate::raftstore::meta::StoreMeta;
use crate::raftstore::msg::{CmdResponse, KeyRange, ReadResponse};
use crate::raftstore::storage::read_state;
use concord_common::limits::Limits;

use crate::raftstore::{CmdError, PdTask, PeerMsg, RaftStats, StoreRouter, StoreServices};
use crate::{keys, raw_value};

/// How long a request may wait for raft before it fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the new value was written.
    pub succeed: bool,
    /// The value before the operation; `None` if the key did not exist.
    pub previous: Option<Vec<u8>>,
}

/// Checksum of a region's data on one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionChecksum {
    /// FNV-1a over every key and stored value, in key order.
    pub checksum: u64,
    /// Number of keys.
    pub total_kvs: u64,
    /// Bytes of keys and values.
    pub total_bytes: u64,
    /// The applied index the data corresponds to.
    pub applied_index: u64,
}

/// The raw KV operations of a store.
#[derive(Clone)]
pub struct KvApi {
    router: StoreRouter,
    limits: Limits,
    meta: Arc<Mutex<StoreMeta>>,
    engine: crate::engine::Engine,
    pd_tx: tokio::sync::mpsc::UnboundedSender<PdTask>,
    stats: Arc<RaftStats>,
}

fn header(ctx: &Context) -> RaftRequestHeader {
    RaftRequestHeader {
        region_id: ctx.region_id,
        peer: ctx.peer,
        region_epoch: ctx.region_epoch,
        proposal_id: 0,
    }
}

fn put(key: &[u8], value: Vec<u8>) -> Request {
    Request {
        cmd: Some(request::Cmd::Put(PutRequest {
            cf: CF_DEFAULT.to_string(),
            key: key.to_vec(),
            value,
        })),
    }
}

impl KvApi {
    /// The KV operations over a running store's services.
    pub fn new(s: &StoreServices) -> KvApi {
        KvApi {
            router: s.router.clone(),
            limits: Limits {
                max_key_size: s.cfg.max_key_size,
                max_value_size: s.cfg.max_value_size,
            },
            meta: s.meta.clone(),
            engine: s.engine.clone(),
            pd_tx: s.pd_tx.clone(),
            stats: s.stats.clone(),
        }
    }

    /// The answer on `rx`; `gone` if the peer dropped the request.
    async fn wait<T>(
        &self,
        rx: oneshot::Receiver<Result<T, CmdError>>,
        region_id: u64,
        gone: CmdError,
    ) -> Result<T, CmdError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone),
            Err(_) => Err(CmdError::Internal(format!(
                "timed out after {REQUEST_TIMEOUT:?} waiting for region {region_id}; a write may or may not have been applied"
            ))),
        }
    }

    async fn read(&self, ctx: &Context, ranges: Vec<KeyRange>) -> Result<ReadResponse, CmdError> {
        let (tx, rx) = oneshot::channel();
        let msg = PeerMsg::Read {
            header: header(ctx),
            ranges,
            callback: tx,
        };
        if self.router.send(ctx.region_id, msg).is_err() {
            return Err(CmdError::region_not_found(ctx.region_id));
        }
        let gone = CmdError::region_not_found(ctx.region_id);
        self.wait(rx, ctx.region_id, gone).await
    }

    /// Proposes `requests` (or an admin command) and waits until applied.
    pub async fn command(&self, request: RaftCmdRequest) -> Result<CmdResponse, CmdError> {
        let region_id = request.header.as_ref().map_or(0, |h| h.region_id);
        let arrived = Instant::now();
        let (tx, rx) = oneshot::channel();
        let msg = PeerMsg::Command {
            request,
            callback: tx,
        };
        if self.router.send(region_id, msg).is_err() {
            return Err(CmdError::region_not_found(region_id));
        }
        // Once proposed, a command may commit even if this peer goes away.
        let gone = CmdError::outcome_unknown(region_id, "the peer went away with this command");
        let answer = self.wait(rx, region_id, gone).await;
        if answer.is_ok() {
            self.stats.write.record(arrived.elapsed());
        }
        answer
    }

    async fn write(&self, ctx: &Context, requests: Vec<Request>) -> Result<CmdResponse, CmdError> {
        self.command(RaftCmdRequest {
            header: Some(header(ctx)),
            requests,
            admin_request: None,
        })
        .await
    }

    /// The live value of `key`.
    pub async fn raw_get(&self, ctx: &Context, key: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
        self.limits.check_key(key)?;
        let read = self.read(ctx, vec![KeyRange::point(key)]).await?;
        let now = raw_value::now_secs();
        let stored = read
            .snapshot
            .get_cf(CF_DEFAULT, &keys::data_key(key))
            .map_err(|e| CmdError::Internal(e.to_string()))?;
        Ok(stored
            .as_deref()
            .and_then(|v| raw_value::decode(v, now))
            .map(<[u8]>::to_vec))
    }

    /// The live values of `keys` that exist, in request order.
    pub async fn raw_batch_get(
        &self,
        ctx: &Context,
        keys_: &[Vec<u8>],
    ) -> Result<Vec<KvPair>, CmdError> {
        self.limits.check_keys(keys_)?;
        let read = self
            .read(ctx, keys_.iter().map(|k| KeyRange::point(k)).collect())
            .await?;
        let now = raw_value::now_secs();
        let mut pairs = Vec::new();
        for k in keys_ {
            let stored = read
                .snapshot
                .get_cf(CF_DEFAULT, &keys::data_key(k))
                .map_err(|e| CmdError::Internal(e.to_string()))?;
            if let Some(v) = stored.as_deref().and_then(|v| raw_value::decode(v, now)) {
                pairs.push(KvPair {
                    key: k.clone(),
                    value: v.to_vec(),
                });
            }
        }
        Ok(pairs)
    }

    /// Writes `key` = `value`, expiring after `ttl` seconds (0: never).
    pub async fn raw_put(
        &self,
        ctx: &Context,
        key: &[u8],
        value: &[u8],
        ttl: u64,
    ) -> Result<(), CmdError> {
        self.raw_batch_put(
            ctx,
            &[KvPair {
                key: key.to_vec(),
                value: value.to_vec(),
            }],
            ttl,
        )
        .await
    }

    /// Writes every pair atomically.
    pub async fn raw_batch_put(
        &self,
        ctx: &Context,
        pairs: &[KvPair],
        ttl: u64,
    ) -> Result<(), CmdError> {
        self.limits
            .check_pairs(pairs.iter().map(|p| (p.key.as_slice(), p.value.as_slice())))?;
        let now = raw_value::now_secs();
        let requests = pairs
            .iter()
            .map(|p| put(&p.key, raw_value::encode(&p.value, ttl, now)))
            .collect();
        self.write(ctx, requests).await.map(drop)
    }

    /// Deletes `key`.
    pub async fn raw_delete(&self, ctx: &Context, key: &[u8]) -> Result<(), CmdError> {
        self.limits.check_key(key)?;
        let req = Request {
            cmd: Some(request::Cmd::Delete(DeleteRequest {
                cf: CF_DEFAULT.to_string(),
                key: key.to_vec(),
            })),
        };
        self.write(ctx, vec![req]).await.map(drop)
    }

    /// Deletes every key in `[start, end)` (clipped to the region).
    pub async fn raw_delete_range(
        &self,
        ctx: &Context,
        start: &[u8],
        end: &[u8],
    ) -> Result<(), CmdError> {
        self.limits.check_range(start, end)?;
        let req = Request {
            cmd: Some(request::Cmd::DeleteRange(DeleteRangeRequest {
                cf: CF_DEFAULT.to_string(),
                start_key: start.to_vec(),
                end_key: end.to_vec(),
            })),
        };
        self.write(ctx, vec![req]).await.map(drop)
    }

    /// Live pairs of `[start, end)` within the region, in key order (or
    /// reverse), at most `limit` of them (0: no limit).
    pub async fn raw_scan(
        &self,
        ctx: &Context,
        start: &[u8],
        end: &[u8],
        limit: u32,
        reverse: bool,
        key_only: bool,
    ) -> Result<Vec<KvPair>, CmdError> {
        self.limits.check_range(start, end)?;
        // A forward scan must start inside the region; a reverse scan is
        // clipped to it from its end.
        let ranges = if reverse {
            Vec::new()
        } else {
            vec![KeyRange::point(start)]
        };
        let read = self.read(ctx, ranges).await?;
        let region = &read.region;
        let lo = start.max(region.start_key.as_slice());
        let hi_user: &[u8] = match (end.is_empty(), region.end_key.is_empty()) {
            (true, _) => &region.end_key,
            (false, true) => end,
            (false, false) => end.min(region.end_key.as_slice()),
        };
        let now = raw_value::now_secs();
        let mut pairs = Vec::new();
        read.snapshot
            .scan_cf(
                CF_DEFAULT,
                &keys::data_key(lo),
                &keys::data_end_key(hi_user),
                reverse,
                |k, v| {
                    if let Some(v) = raw_value::decode(v, now) {
                        pairs.push(KvPair {
                            key: keys::origin_key(k).to_vec(),
                            value: if key_only { Vec::new() } else { v.to_vec() },
                        });
                    }
                    limit == 0 || pairs.len() < limit as usize
                },
            )
            .map_err(|e| CmdError::Internal(e.to_string()))?;
        Ok(pairs)
    }

    /// Writes `value` if the current value is `previous` (`None`: absent).
    pub async fn raw_compare_and_swap(
        &self,
        ctx: &Context,
        key: &[u8],
        value: &[u8],
        previous: Option<&[u8]>,
        ttl: u64,
    ) -> Result<CasOutcome, CmdError> {
        self.limits.check_key(key)?;
        self.limits.check_value(value)?;
        let now = raw_value::now_secs();
        let req = Request {
            cmd: Some(request::Cmd::Cas(CasRequest {
                cf: CF_DEFAULT.to_string(),
                key: key.to_vec(),
                value: raw_value::encode(value, ttl, now),
                previous_value: previous.map(<[u8]>::to_vec).unwrap_or_default(),
                previous_not_exist: previous.is_none(),
                now_secs: now,
            })),
        };
        let resp = self.write(ctx, vec![req]).await?;
        let cas = resp
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.cas)
            .ok_or_else(|| CmdError::Internal("compare-and-swap returned no outcome".into()))?;
        Ok(CasOutcome {
            succeed: cas.succeed,
            previous: (!cas.previous_not_exist).then_some(cas.previous_value),
        })
    }

    /// Splits the region at `split_keys` and returns the resulting regions.
    pub async fn split_region(
        &self,
        ctx: &Context,
        split_keys: Vec<Vec<u8>>,
    ) -> Result<Vec<metapb::Region>, CmdError> {
        if split_keys.is_empty() {
            return Err(CmdError::InvalidArgument("split without split keys".into()));
        }
        let region = self
            .meta
            .lock()
            .region(ctx.region_id)
            .cloned()
            .ok_or_else(|| CmdError::region_not_found(ctx.region_id))?;
        let region = metapb::Region {
            region_epoch: ctx.region_epoch,
            ..region
        };
        let (tx, rx) = oneshot::channel();
        let task = PdTask::Split {
            region,
            keys: split_keys,
            callback: Some(tx),
        };
        if self.pd_tx.send(task).is_err() {
            return Err(CmdError::Internal("the PD worker is stopped".into()));
        }
        let gone = CmdError::Internal("the PD worker dropped the split".into());
        self.wait(rx, ctx.region_id, gone).await.map(|r| r.regions)
    }

    /// A checksum of the region's data as this store holds it now.
    pub fn region_checksum(&self, region_id: u64) -> Result<RegionChecksum, CmdError> {
        let region = self
            .meta
            .lock()
            .region(region_id)
            .cloned()
            .ok_or_else(|| CmdError::region_not_found(region_id))?;
        let snap = self.engine.snapshot();
        let internal = |e: String| CmdError::Internal(e);
        let apply: RaftApplyState = read_state(
            &snap,
            &keys::apply_state_key(region_id),
            "apply state",
            region_id,
        )
        .map_err(|e| internal(e.to_string()))?
        .unwrap_or_default();
        let mut sum = RegionChecksum {
            checksum: 0xcbf2_9ce4_8422_2325,
            total_kvs: 0,
            total_bytes: 0,
            applied_index: apply.applied_index,
        };
        let start = keys::data_key(&region.start_key);
        let end = keys::data_end_key(&region.end_key);
        snap.scan_cf(CF_DEFAULT, &start, &end, false, |k, v| {
            for b in k.iter().chain(v) {
                sum.checksum = (sum.checksum ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
            sum.total_kvs += 1;
            sum.total_bytes += (k.len() + v.len()) as u64;
            true
        })
        .map_err(|e| internal(e.to_string()))?;
        Ok(sum)
    }
}
