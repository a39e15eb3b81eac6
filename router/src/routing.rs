//! The [`Router`]: locates the region of a key (cache first, PD on a miss),
//! sends the request to the region's leader with the region context, turns
//! every failure into either a retry (after updating the cache) or one
//! final error, and runs the single-key operations. Multi-key operations
//! are in [`crate::multi_key`], scans in [`crate::scan`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch_client::StoreClient;
use concord_proto::errorpb;
use concord_proto::kvrpcpb::{self, Context};
use tonic::{Code, Status};

use crate::error::{Error, Result};
use crate::metrics::{Metrics, Op};
use crate::pd::{PdConnection, RegionSource};
use crate::region_cache::{CachedRegion, RegionCache};
use crate::region_error::apply_region_error;
use crate::retry::{connect_failed, Backoff, BackoffConfig, Retry, RetryReason};
use crate::store_conn::StoreConnections;
use concord_common::limits::Limits;

/// Tuning of the routing library.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Backoff and the total time budget of one request.
    pub backoff: BackoffConfig,
    /// Longest wait for one store RPC before the store counts as
    /// unreachable for this attempt.
    pub rpc_timeout: Duration,
    /// Longest wait to open a connection to a store.
    pub connect_timeout: Duration,
    /// Most region sub-requests of one multi-key request in flight at once.
    pub max_parallel: usize,
    /// Key and value size limits checked before sending.
    pub limits: Limits,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            backoff: BackoffConfig::default(),
            rpc_timeout: Duration::from_secs(12),
            connect_timeout: Duration::from_secs(3),
            max_parallel: 16,
            limits: Limits::default(),
        }
    }
}

/// Responses of the store's KV service: each may carry a region error and
/// a non-region error message.
pub(crate) trait KvResponse {
    /// Takes the region error out, if any.
    fn take_region_error(&mut self) -> Option<errorpb::Error>;
    /// The non-region error message ("" if none).
    fn error_message(&self) -> &str;
}

macro_rules! kv_response {
    ($($ty:ty),* $(,)?) => {
        $(impl KvResponse for $ty {
            fn take_region_error(&mut self) -> Option<errorpb::Error> {
                self.region_error.take()
            }
            fn error_message(&self) -> &str {
                &self.error
            }
        })*
    };
}

kv_response!(
    kvrpcpb::RawGetResponse,
    kvrpcpb::RawBatchGetResponse,
    kvrpcpb::RawPutResponse,
    kvrpcpb::RawBatchPutResponse,
    kvrpcpb::RawDeleteResponse,
    kvrpcpb::RawDeleteRangeResponse,
    kvrpcpb::RawScanResponse,
    kvrpcpb::RawCasResponse,
);

/// How one attempt against one region failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Worth retrying (the cache has been updated).
    Retry(Retry),
    /// Final: retrying cannot help.
    Fatal(Error),
}

impl From<Retry> for AttemptError {
    fn from(r: Retry) -> Self {
        AttemptError::Retry(r)
    }
}

/// Result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the new value was written.
    pub succeed: bool,
    /// The value before the operation; `None` if the key did not exist.
    pub previous: Option<Vec<u8>>,
}

/// Region-aware routing of raw KV requests: the region cache, the store
/// connections, the retry policy and the metrics. One `Router` is shared by
/// all requests of a process (wrap it in an `Arc`).
pub struct Router {
    pub(crate) config: RoutingConfig,
    pub(crate) source: Arc<dyn RegionSource>,
    pub(crate) cache: RegionCache,
    pub(crate) stores: StoreConnections,
    pub(crate) metrics: Metrics,
    pd: Option<Arc<PdConnection>>,
}

/// Maps a gRPC status from a store to a retry or a final error.
fn classify_status(status: &Status, store_id: u64, address: &str) -> AttemptError {
    match status.code() {
        Code::InvalidArgument => {
            AttemptError::Fatal(Error::InvalidArgument(status.message().to_string()))
        }
        Code::Unavailable | Code::Unknown | Code::Cancelled => AttemptError::Retry(Retry::backoff(
            if connect_failed(status) {
                RetryReason::StoreNotConnected
            } else {
                RetryReason::StoreUnreachable
            },
            format!(
                "store {store_id} at {address} unreachable: {}",
                status.message()
            ),
        )),
        code => AttemptError::Retry(Retry::backoff(
            RetryReason::StoreError,
            format!(
                "store {store_id} at {address} failed: {code:?}: {}",
                status.message()
            ),
        )),
    }
}

/// The store's own prefix for invalid-argument messages in `error`.
const INVALID_ARGUMENT_PREFIX: &str = "invalid argument: ";

impl Router {
    /// A router reading region and store metadata from PD at `pd_addrs`.
    /// Returns at once; PD is connected in the background and retried
    /// until it answers (see [`Router::wait_pd`]). Must be called within a
    /// tokio runtime.
    pub fn connect_pd(pd_addrs: &[String], config: RoutingConfig) -> Result<Router> {
        if pd_addrs.is_empty() {
            return Err(Error::Config("no PD address given".into()));
        }
        let pd = Arc::new(PdConnection::start(pd_addrs.to_vec()));
        let mut router = Router::with_source(pd.clone(), config);
        router.pd = Some(pd);
        Ok(router)
    }

    /// A router over any source of region metadata (tests use fakes).
    pub fn with_source(source: Arc<dyn RegionSource>, config: RoutingConfig) -> Router {
        Router {
            stores: StoreConnections::new(source.clone(), config.connect_timeout),
            config,
            source,
            cache: RegionCache::new(),
            metrics: Metrics::default(),
            pd: None,
        }
    }

    /// Waits up to `timeout` for PD to answer. Routers over another source
    /// are always ready.
    pub async fn wait_pd(&self, timeout: Duration) -> Result<()> {
        match &self.pd {
            Some(pd) => pd
                .wait_connected(timeout)
                .await
                .map_err(|e| Error::Unavailable(e.to_string())),
            None => Ok(()),
        }
    }

    /// Whether PD has answered (always true over another source).
    pub fn pd_connected(&self) -> bool {
        match &self.pd {
            Some(pd) => pd.is_connected(),
            None => true,
        }
    }

    /// The routing configuration.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The request counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The region cache.
    pub fn region_cache(&self) -> &RegionCache {
        &self.cache
    }

    /// Number of stores with an open channel.
    pub fn store_connections(&self) -> usize {
        self.stores.len()
    }

    pub(crate) fn backoff(&self, op: Op) -> Backoff {
        Backoff::new(op.as_str(), self.config.backoff).for_writes(op.writes())
    }

    /// Counts `retry` and waits before the next attempt.
    pub(crate) async fn retry_wait(&self, backoff: &mut Backoff, retry: &Retry) -> Result<()> {
        self.metrics.retry(retry.reason);
        tracing::debug!(reason = %retry.reason, detail = %retry.detail, "retrying");
        backoff.wait(retry).await
    }

    /// Runs `request` and counts it (outcome and latency).
    pub(crate) async fn observed<T>(
        &self,
        op: Op,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = request.await;
        self.metrics.observe(op, started.elapsed(), &result);
        match &result {
            Err(e @ Error::InvalidArgument(_)) => {
                tracing::debug!(op = op.as_str(), error = %e, "request refused");
            }
            Err(e) => tracing::warn!(op = op.as_str(), error = %e, "request failed"),
            Ok(_) => {}
        }
        result
    }

    fn pd_retry(what: String, e: impl std::fmt::Display) -> Retry {
        Retry::backoff(RetryReason::PdUnavailable, format!("{what}: {e}"))
    }

    /// The region holding `key`: from the cache, else from PD.
    pub(crate) async fn locate_key(&self, key: &[u8]) -> std::result::Result<CachedRegion, Retry> {
        if let Some(region) = self.cache.locate(key) {
            self.metrics.cache_lookup(true);
            return Ok(region);
        }
        self.metrics.cache_lookup(false);
        let info = self
            .source
            .region_by_key(key)
            .await
            .map_err(|e| Self::pd_retry(format!("region of key {key:?}"), e))?;
        let region = CachedRegion::from(info);
        if !region.contains(key) {
            return Err(Retry::backoff(
                RetryReason::PdUnavailable,
                format!(
                    "PD answered region {} which does not hold key {key:?}",
                    region.id()
                ),
            ));
        }
        self.cache.insert(region.clone());
        Ok(region)
    }

    /// The region holding the keys just below `end` (empty: the last
    /// region), where a reverse scan over `[start, end)` continues.
    pub(crate) async fn locate_before(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> std::result::Result<CachedRegion, Retry> {
        if let Some(region) = self.cache.locate_before(end) {
            self.metrics.cache_lookup(true);
            return Ok(region);
        }
        self.metrics.cache_lookup(false);
        // PD has no "previous region" call: load every region of the
        // remaining range (it fills the cache for the rest of the scan too)
        // and take the last.
        let infos = self
            .source
            .scan_regions(start, end, 0)
            .await
            .map_err(|e| Self::pd_retry(format!("regions of [{start:?}, {end:?})"), e))?;
        let mut last = None;
        for info in infos {
            let region = CachedRegion::from(info);
            self.cache.insert(region.clone());
            last = Some(region);
        }
        last.filter(|r| end.is_empty() || r.region.start_key.as_slice() < end)
            .filter(|r| {
                r.region.end_key.is_empty()
                    || (!end.is_empty() && r.region.end_key.as_slice() >= end)
            })
            .ok_or_else(|| {
                Retry::backoff(
                    RetryReason::PdUnavailable,
                    format!("PD returned no region ending the range [{start:?}, {end:?})"),
                )
            })
    }

    /// Sends one request to `region`'s leader (or best guess) and maps
    /// every failure: region errors update the cache, unreachable stores
    /// are avoided and the region reloaded from PD, invalid arguments are
    /// final.
    pub(crate) async fn attempt<T, F, Fut>(
        &self,
        region: &CachedRegion,
        remaining: Duration,
        call: F,
    ) -> std::result::Result<T, AttemptError>
    where
        T: KvResponse,
        F: FnOnce(StoreClient, Context) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let Some(peer) = region.target_peer(|s| self.stores.is_suspect(s)) else {
            self.cache.remove(region.id());
            return Err(Retry::backoff(
                RetryReason::RegionNotFound,
                format!("region {} has no voter", region.id()),
            )
            .into());
        };
        let conn = match self.stores.get(peer.store_id).await {
            Ok(conn) => conn,
            Err(retry) => {
                if retry.reason == RetryReason::StoreNotConnected {
                    // PD says the store was removed: try the other peers
                    // meanwhile, and reload the region, whose cached leader
                    // may be long gone. (A PD error says nothing about the
                    // store and leaves both alone.)
                    self.stores.mark_unreachable(peer.store_id);
                    self.cache.remove(region.id());
                }
                return Err(retry.into());
            }
        };
        let timeout = self
            .config
            .rpc_timeout
            .min(remaining.max(Duration::from_millis(1)));
        let outcome =
            tokio::time::timeout(timeout, call(conn.client.clone(), region.context(peer))).await;
        let mut resp = match outcome {
            Err(_) => {
                self.stores.mark_unreachable(peer.store_id);
                self.cache.remove(region.id());
                return Err(Retry::backoff(
                    RetryReason::StoreUnreachable,
                    format!(
                        "store {} at {} did not answer within {timeout:?}",
                        peer.store_id, conn.address
                    ),
                )
                .into());
            }
            Ok(Err(status)) => {
                let err = classify_status(&status, peer.store_id, &conn.address);
                if let AttemptError::Retry(r) = &err {
                    if matches!(
                        r.reason,
                        RetryReason::StoreUnreachable | RetryReason::StoreNotConnected
                    ) {
                        self.stores.mark_unreachable(peer.store_id);
                        self.cache.remove(region.id());
                    }
                }
                return Err(err);
            }
            Ok(Ok(resp)) => resp,
        };
        self.stores.mark_reachable(peer.store_id);
        if let Some(region_error) = resp.take_region_error() {
            let retry = apply_region_error(&self.cache, region, &peer, region_error);
            if retry.reason == RetryReason::StoreNotMatch {
                self.stores.forget(peer.store_id);
            }
            return Err(retry.into());
        }
        let message = resp.error_message();
        if let Some(invalid) = message.strip_prefix(INVALID_ARGUMENT_PREFIX) {
            return Err(AttemptError::Fatal(Error::InvalidArgument(
                invalid.to_string(),
            )));
        }
        if !message.is_empty() {
            return Err(Retry::backoff(
                RetryReason::StoreError,
                format!("store {} at {}: {message}", peer.store_id, conn.address),
            )
            .into());
        }
        Ok(resp)
    }

    /// Runs a single-key request against the region of `key` until it
    /// succeeds, fails for good, or the budget runs out.
    pub(crate) async fn on_key<T, F, Fut>(&self, op: Op, key: &[u8], call: F) -> Result<T>
    where
        T: KvResponse,
        F: Fn(StoreClient, Context) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let mut backoff = self.backoff(op);
        loop {
            let retry = match self.locate_key(key).await {
                Ok(region) => match self.attempt(&region, backoff.remaining(), &call).await {
                    Ok(resp) => return Ok(resp),
                    Err(AttemptError::Fatal(e)) => return Err(e),
                    Err(AttemptError::Retry(r)) => r,
                },
                Err(r) => r,
            };
            self.retry_wait(&mut backoff, &retry).await?;
        }
    }

    /// The value of `key`, or `None` if it does not exist (or expired).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.observed(Op::Get, async {
            self.config.limits.check_key(key)?;
            let resp = self
                .on_key(Op::Get, key, |c, ctx| async move {
                    c.raw_get(kvrpcpb::RawGetRequest {
                        context: Some(ctx),
                        key: key.to_vec(),
                    })
                    .await
                })
                .await?;
            Ok((!resp.not_found).then_some(resp.value))
        })
        .await
    }

    /// Writes `key` = `value`, expiring after `ttl` seconds (0: never).
    pub async fn put(&self, key: &[u8], value: &[u8], ttl: u64) -> Result<()> {
        self.observed(Op::Put, async {
            self.config.limits.check_key(key)?;
            self.config.limits.check_value(value)?;
            self.on_key(Op::Put, key, |c, ctx| async move {
                c.raw_put(kvrpcpb::RawPutRequest {
                    context: Some(ctx),
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ttl,
                })
                .await
            })
            .await
            .map(drop)
        })
        .await
    }

    /// Deletes `key` (no error if it does not exist).
    pub async fn delete(&self, key: &[u8]) -> Result<()> {
        self.observed(Op::Delete, async {
            self.config.limits.check_key(key)?;
            self.on_key(Op::Delete, key, |c, ctx| async move {
                c.raw_delete(kvrpcpb::RawDeleteRequest {
                    context: Some(ctx),
                    key: key.to_vec(),
                })
                .await
            })
            .await
            .map(drop)
        })
        .await
    }

    /// Writes `value` (expiring after `ttl` seconds, 0: never) if the
    /// current value is `previous` (`None`: the key must not exist).
    ///
    /// Like every write, it is not retried after an attempt whose outcome
    /// is unknown (see [`crate::retry::Backoff::for_writes`]): the answer is
    /// then [`Error::Unavailable`].
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        previous: Option<&[u8]>,
        value: &[u8],
        ttl: u64,
    ) -> Result<CasOutcome> {
        self.observed(Op::CompareAndSwap, async {
            self.config.limits.check_key(key)?;
            self.config.limits.check_value(value)?;
            let resp = self
                .on_key(Op::CompareAndSwap, key, |c, ctx| async move {
                    c.raw_compare_and_swap(kvrpcpb::RawCasRequest {
                        context: Some(ctx),
                        key: key.to_vec(),
                        value: value.to_vec(),
                        previous_value: previous.map(<[u8]>::to_vec).unwrap_or_default(),
                        previous_not_exist: previous.is_none(),
                        ttl,
                    })
                    .await
                })
                .await?;
            Ok(CasOutcome {
                succeed: resp.succeed,
                previous: (!resp.previous_not_exist).then_some(resp.previous_value),
            })
        })
        .await
    }
}
