//! The async Rust client. Either a smart client that routes by itself with
//! the same code the router runs ([`Client::connect_pd`], no proxy hop), or
//! a client of one or more `concord-router` processes
//! ([`Client::connect_routers`]). Both refuse invalid input before sending,
//! with the messages the store uses.

use std::sync::Arc;

use concord_proto::kvrpcpb::KvPair;
use concord_proto::routerpb;

use crate::error::Result;
use crate::metrics::Op;
use crate::router_pool::{RouterPool, RouterPoolConfig};
use crate::routing::{CasOutcome, Router, RoutingConfig};

#[derive(Clone)]
enum Backend {
    Direct(Arc<Router>),
    Routers(Arc<RouterPool>),
}

/// A ConcordKV raw KV client. Cheap to clone; clones share connections and
/// the region cache.
#[derive(Clone)]
pub struct Client {
    backend: Backend,
}

impl Client {
    /// A smart client over the PD members `pd_addrs` with the default
    /// configuration; waits until PD answers (at most the retry budget).
    pub async fn connect_pd(pd_addrs: &[String]) -> Result<Client> {
        Client::connect_pd_with(pd_addrs, RoutingConfig::default()).await
    }

    /// A smart client with a given routing configuration.
    pub async fn connect_pd_with(pd_addrs: &[String], config: RoutingConfig) -> Result<Client> {
        let budget = config.backoff.total;
        let router = Router::connect_pd(pd_addrs, config)?;
        router.wait_pd(budget).await?;
        Ok(Client {
            backend: Backend::Direct(Arc::new(router)),
        })
    }

    /// A client of the routers at `router_addrs` with the default
    /// configuration. Connections are opened on first use, so this does not
    /// wait for any router to be up.
    pub async fn connect_routers(router_addrs: &[String]) -> Result<Client> {
        Client::connect_routers_with(router_addrs, RouterPoolConfig::default()).await
    }

    /// A client of routers with a given configuration.
    pub async fn connect_routers_with(
        router_addrs: &[String],
        config: RouterPoolConfig,
    ) -> Result<Client> {
        Ok(Client {
            backend: Backend::Routers(Arc::new(RouterPool::new(router_addrs, config)?)),
        })
    }

    /// The routing engine of a smart client (`None` for a router client).
    pub fn router(&self) -> Option<&Arc<Router>> {
        match &self.backend {
            Backend::Direct(router) => Some(router),
            Backend::Routers(_) => None,
        }
    }

    /// The value of `key`, or `None` if it does not exist or expired.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Direct(r) => r.get(key).await,
            Backend::Routers(p) => {
                p.limits().check_key(key)?;
                let req = routerpb::GetRequest { key: key.to_vec() };
                let resp = p
                    .call(Op::Get, key, |c| {
                        let req = req.clone();
                        async move { c.get(req).await }
                    })
                    .await?;
                Ok((!resp.not_found).then_some(resp.value))
            }
        }
    }

    /// The existing keys among `keys` with their values, in request order.
    pub async fn batch_get(&self, keys: &[Vec<u8>]) -> Result<Vec<KvPair>> {
        match &self.backend {
            Backend::Direct(r) => r.batch_get(keys).await,
            Backend::Routers(p) => {
                p.limits().check_keys(keys)?;
                let Some(first) = keys.first() else {
                    return Ok(Vec::new());
                };
                let req = routerpb::BatchGetRequest {
                    keys: keys.to_vec(),
                };
                let resp = p
                    .call(Op::BatchGet, first, |c| {
                        let req = req.clone();
                        async move { c.batch_get(req).await }
                    })
                    .await?;
                Ok(resp.pairs)
            }
        }
    }

    /// Writes `key` = `value` (no expiry).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_with_ttl(key, value, 0).await
    }

    /// Writes `key` = `value`, expiring after `ttl_secs` seconds (0: never).
    pub async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl_secs: u64) -> Result<()> {
        match &self.backend {
            Backend::Direct(r) => r.put(key, value, ttl_secs).await,
            Backend::Routers(p) => {
                p.limits().check_key(key)?;
                p.limits().check_value(value)?;
                let req = routerpb::PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ttl: ttl_secs,
                };
                p.call(Op::Put, key, |c| {
                    let req = req.clone();
                    async move { c.put(req).await }
                })
                .await
                .map(drop)
            }
        }
    }

    /// Writes every pair (no expiry). Each region's share is atomic; the
    /// batch as a whole is not.
    pub async fn batch_put(&self, pairs: &[KvPair]) -> Result<()> {
        self.batch_put_with_ttl(pairs, 0).await
    }

    /// Writes every pair, expiring after `ttl_secs` seconds (0: never).
    pub async fn batch_put_with_ttl(&self, pairs: &[KvPair], ttl_secs: u64) -> Result<()> {
        match &self.backend {
            Backend::Direct(r) => r.batch_put(pairs, ttl_secs).await,
            Backend::Routers(p) => {
                p.limits().check_pairs(
                    pairs
                        .iter()
                        .map(|kv| (kv.key.as_slice(), kv.value.as_slice())),
                )?;
                let req = routerpb::BatchPutRequest {
                    pairs: pairs.to_vec(),
                    ttl: ttl_secs,
                };
                p.call(Op::BatchPut, &pairs[0].key, |c| {
                    let req = req.clone();
                    async move { c.batch_put(req).await }
                })
                .await
                .map(drop)
            }
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &[u8]) -> Result<()> {
        match &self.backend {
            Backend::Direct(r) => r.delete(key).await,
            Backend::Routers(p) => {
                p.limits().check_key(key)?;
                let req = routerpb::DeleteRequest { key: key.to_vec() };
                p.call(Op::Delete, key, |c| {
                    let req = req.clone();
                    async move { c.delete(req).await }
                })
                .await
                .map(drop)
            }
        }
    }

    /// Deletes every key in `[start, end)` (empty `end`: no upper bound).
    pub async fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<()> {
        match &self.backend {
            Backend::Direct(r) => r.delete_range(start, end).await,
            Backend::Routers(p) => {
                p.limits().check_range(start, end)?;
                let req = routerpb::DeleteRangeRequest {
                    start_key: start.to_vec(),
                    end_key: end.to_vec(),
                };
                p.call(Op::DeleteRange, start, |c| {
                    let req = req.clone();
                    async move { c.delete_range(req).await }
                })
                .await
                .map(drop)
            }
        }
    }

    /// Pairs of `[start, end)` (empty `end`: no upper bound) in key order,
    /// or from the highest key down with `reverse`; at most `limit` of them
    /// (0: no limit).
    pub async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        reverse: bool,
    ) -> Result<Vec<KvPair>> {
        self.scan_inner(start, end, limit, reverse, false).await
    }

    /// Like [`Client::scan`] but returns keys only (values left empty).
    pub async fn scan_keys(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        reverse: bool,
    ) -> Result<Vec<Vec<u8>>> {
        let pairs = self.scan_inner(start, end, limit, reverse, true).await?;
        Ok(pairs.into_iter().map(|p| p.key).collect())
    }

    async fn scan_inner(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        reverse: bool,
        key_only: bool,
    ) -> Result<Vec<KvPair>> {
        match &self.backend {
            Backend::Direct(r) => r.scan(start, end, limit, reverse, key_only).await,
            Backend::Routers(p) => {
                p.limits().check_range(start, end)?;
                let req = routerpb::ScanRequest {
                    start_key: start.to_vec(),
                    end_key: end.to_vec(),
                    limit,
                    reverse,
                    key_only,
                };
                let resp = p
                    .call(Op::Scan, start, |c| {
                        let req = req.clone();
                        async move { c.scan(req).await }
                    })
                    .await?;
                Ok(resp.kvs)
            }
        }
    }

    /// Writes `value` if the current value of `key` is `previous` (`None`:
    /// the key must not exist); returns whether it did and the value found.
    /// See [`Router::compare_and_swap`] for the outcome of retried attempts.
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        previous: Option<&[u8]>,
        value: &[u8],
    ) -> Result<CasOutcome> {
        match &self.backend {
            Backend::Direct(r) => r.compare_and_swap(key, previous, value, 0).await,
            Backend::Routers(p) => {
                p.limits().check_key(key)?;
                p.limits().check_value(value)?;
                let req = routerpb::CasRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    previous_value: previous.map(<[u8]>::to_vec).unwrap_or_default(),
                    previous_not_exist: previous.is_none(),
                    ttl: 0,
                };
                let resp = p
                    .call(Op::CompareAndSwap, key, |c| {
                        let req = req.clone();
                        async move { c.compare_and_swap(req).await }
                    })
                    .await?;
                Ok(CasOutcome {
                    succeed: resp.succeed,
                    previous: (!resp.previous_not_exist).then_some(resp.previous_value),
                })
            }
        }
    }
}
