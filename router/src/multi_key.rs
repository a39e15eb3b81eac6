//! Multi-key operations: the keys (or the range) are split by region, the
//! regions' shares are sent in parallel, shares that hit a region error are
//! re-split against the updated cache and retried, and the results are put
//! back in request order.

use std::collections::HashMap;
use std::future::Future;

use crate::batch_client::StoreClient;
use concord_proto::kvrpcpb::{self, Context, KvPair};
use futures::StreamExt;
use tonic::Status;

use crate::error::Result;
use crate::metrics::Op;
use crate::region_cache::CachedRegion;
use crate::retry::{Retry, RetryReason};
use crate::routing::{AttemptError, KvResponse, Router};

/// Regions loaded from PD at once when walking a range.
const PREFETCH_REGIONS: u32 = 64;

/// One region's share of a range: the region and `[start, end)` within it
/// (empty `end`: up to the region's end, which is unbounded).
pub(crate) struct SubRange {
    pub(crate) region: CachedRegion,
    pub(crate) start: Vec<u8>,
    pub(crate) end: Vec<u8>,
}

/// The smaller of two range ends, where empty means unbounded.
pub(crate) fn min_end<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

/// Whether range end `end` (empty: unbounded) is at or past `bound`.
pub(crate) fn reaches(end: &[u8], bound: &[u8]) -> bool {
    end.is_empty() || (!bound.is_empty() && end >= bound)
}

impl Router {
    /// The region holding `key`, loading a batch of the following regions
    /// up to `end` from PD on a miss (for range walks).
    pub(crate) async fn locate_in_range(
        &self,
        key: &[u8],
        end: &[u8],
    ) -> std::result::Result<CachedRegion, Retry> {
        if let Some(region) = self.cache.locate(key) {
            self.metrics.cache_lookup(true);
            return Ok(region);
        }
        self.metrics.cache_lookup(false);
        let infos = self
            .source
            .scan_regions(key, end, PREFETCH_REGIONS)
            .await
            .map_err(|e| {
                Retry::backoff(
                    RetryReason::PdUnavailable,
                    format!("regions of [{key:?}, {end:?}): {e}"),
                )
            })?;
        let mut first = None;
        for info in infos {
            let region = CachedRegion::from(info);
            self.cache.insert(region.clone());
            if first.is_none() && region.contains(key) {
                first = Some(region);
            }
        }
        first.ok_or_else(|| {
            Retry::backoff(
                RetryReason::PdUnavailable,
                format!("PD returned no region holding key {key:?}"),
            )
        })
    }

    /// Splits `[start, end)` into per-region sub-ranges, in key order.
    pub(crate) async fn split_range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> std::result::Result<Vec<SubRange>, Retry> {
        let mut parts = Vec::new();
        let mut cursor = start.to_vec();
        loop {
            let region = self.locate_in_range(&cursor, end).await?;
            let region_end = region.region.end_key.clone();
            let done = reaches(&region_end, end);
            parts.push(SubRange {
                start: cursor,
                end: min_end(&region_end, end).to_vec(),
                region,
            });
            if done {
                return Ok(parts);
            }
            cursor = region_end;
        }
    }

    /// Runs one request per region over the items routed by `keys[i]`;
    /// returns, per successful region share, the item indexes (ascending)
    /// and the response.
    async fn run_by_region<T, F, Fut>(
        &self,
        op: Op,
        keys: &[&[u8]],
        call: F,
    ) -> Result<Vec<(Vec<usize>, T)>>
    where
        T: KvResponse,
        F: Fn(StoreClient, Context, Vec<usize>) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let mut backoff = self.backoff(op);
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut done = Vec::new();
        loop {
            pending.sort_unstable();
            let mut failed = Vec::new();
            let mut last_retry = None;
            let mut groups: Vec<(CachedRegion, Vec<usize>)> = Vec::new();
            let mut group_of: HashMap<u64, usize> = HashMap::new();
            for i in pending {
                match self.locate_key(keys[i]).await {
                    Ok(region) => {
                        let g = *group_of.entry(region.id()).or_insert_with(|| {
                            groups.push((region, Vec::new()));
                            groups.len() - 1
                        });
                        groups[g].1.push(i);
                    }
                    Err(retry) => {
                        failed.push(i);
                        last_retry = Some(retry);
                    }
                }
            }
            let remaining = backoff.remaining();
            let call = &call;
            let results: Vec<_> = futures::stream::iter(groups)
                .map(|(region, items)| async move {
                    let outcome = self
                        .attempt(&region, remaining, |c, ctx| call(c, ctx, items.clone()))
                        .await;
                    (items, outcome)
                })
                .buffer_unordered(self.config.max_parallel.max(1))
                .collect()
                .await;
            for (items, outcome) in results {
                match outcome {
                    Ok(resp) => done.push((items, resp)),
                    Err(AttemptError::Fatal(e)) => return Err(e),
                    Err(AttemptError::Retry(retry)) => {
                        failed.extend(items);
                        last_retry = Some(retry);
                    }
                }
            }
            match last_retry {
                None => return Ok(done),
                Some(retry) => self.retry_wait(&mut backoff, &retry).await?,
            }
            pending = failed;
        }
    }

    /// The existing keys among `keys` with their values, in request order
    /// (missing keys are left out).
    pub async fn batch_get(&self, keys: &[Vec<u8>]) -> Result<Vec<KvPair>> {
        self.observed(Op::BatchGet, async {
            self.config.limits.check_keys(keys)?;
            let routing: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let shares = self
                .run_by_region(Op::BatchGet, &routing, |c, ctx, items| async move {
                    c.raw_batch_get(kvrpcpb::RawBatchGetRequest {
                        context: Some(ctx),
                        keys: items.iter().map(|&i| keys[i].clone()).collect(),
                    })
                    .await
                })
                .await?;
            let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
            for (items, resp) in shares {
                let values: HashMap<Vec<u8>, Vec<u8>> =
                    resp.pairs.into_iter().map(|p| (p.key, p.value)).collect();
                for i in items {
                    found[i] = values.get(&keys[i]).cloned();
                }
            }
            Ok(keys
                .iter()
                .zip(found)
                .filter_map(|(key, value)| {
                    value.map(|value| KvPair {
                        key: key.clone(),
                        value,
                    })
                })
                .collect())
        })
        .await
    }

    /// Writes every pair, each expiring after `ttl` seconds (0: never).
    /// Each region's share is atomic; the batch as a whole is not.
    pub async fn batch_put(&self, pairs: &[KvPair], ttl: u64) -> Result<()> {
        self.observed(Op::BatchPut, async {
            self.config
                .limits
                .check_pairs(pairs.iter().map(|p| (p.key.as_slice(), p.value.as_slice())))?;
            let routing: Vec<&[u8]> = pairs.iter().map(|p| p.key.as_slice()).collect();
            self.run_by_region(Op::BatchPut, &routing, |c, ctx, items| async move {
                c.raw_batch_put(kvrpcpb::RawBatchPutRequest {
                    context: Some(ctx),
                    pairs: items.iter().map(|&i| pairs[i].clone()).collect(),
                    ttl,
                })
                .await
            })
            .await
            .map(drop)
        })
        .await
    }

    /// Deletes every key in `[start, end)` (empty `end`: no upper bound),
    /// region by region in parallel.
    pub async fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<()> {
        self.observed(Op::DeleteRange, async {
            self.config.limits.check_range(start, end)?;
            if !end.is_empty() && start == end {
                return Ok(());
            }
            let mut backoff = self.backoff(Op::DeleteRange);
            let mut pending = vec![(start.to_vec(), end.to_vec())];
            loop {
                let mut failed = Vec::new();
                let mut last_retry = None;
                let mut parts = Vec::new();
                for (s, e) in pending {
                    match self.split_range(&s, &e).await {
                        Ok(p) => parts.extend(p),
                        Err(retry) => {
                            failed.push((s, e));
                            last_retry = Some(retry);
                        }
                    }
                }
                let remaining = backoff.remaining();
                let results: Vec<_> = futures::stream::iter(parts)
                    .map(|part| async move {
                        let range = (&part.start, &part.end);
                        let outcome = self
                            .attempt(&part.region, remaining, |c, ctx| async move {
                                c.raw_delete_range(kvrpcpb::RawDeleteRangeRequest {
                                    context: Some(ctx),
                                    start_key: range.0.clone(),
                                    end_key: range.1.clone(),
                                })
                                .await
                            })
                            .await;
                        (part, outcome)
                    })
                    .buffer_unordered(self.config.max_parallel.max(1))
                    .collect()
                    .await;
                for (part, outcome) in results {
                    match outcome {
                        Ok(_) => {}
                        Err(AttemptError::Fatal(e)) => return Err(e),
                        Err(AttemptError::Retry(retry)) => {
                            failed.push((part.start, part.end));
                            last_retry = Some(retry);
                        }
                    }
                }
                match last_retry {
                    None => return Ok(()),
                    Some(retry) => self.retry_wait(&mut backoff, &retry).await?,
                }
                pending = failed;
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_helpers_treat_empty_as_unbounded() {
        assert_eq!(min_end(b"", b"k"), b"k");
        assert_eq!(min_end(b"k", b""), b"k");
        assert_eq!(min_end(b"", b""), b"");
        assert_eq!(min_end(b"a", b"b"), b"a");
        assert!(reaches(b"", b"k"));
        assert!(reaches(b"k", b"k"));
        assert!(reaches(b"m", b"k"));
        assert!(!reaches(b"a", b"k"));
        assert!(!reaches(b"a", b""));
    }
}
