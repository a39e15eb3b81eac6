//! Range scans across regions: the range is walked region by region in key
//! order (or from the top down for reverse scans), a growing wave of
//! consecutive regions at a time scanned in parallel, until the range ends
//! or `limit` pairs were collected. Each key comes back exactly once: the
//! walk only moves past a region once that region's share succeeded, and a
//! share that hit a region error is re-planned against the updated cache.

use concord_proto::kvrpcpb::{self, KvPair};
use futures::StreamExt;

use crate::error::Result;
use crate::metrics::Op;
use crate::multi_key::{min_end, reaches, SubRange};
use crate::retry::Retry;
use crate::routing::{AttemptError, Router};

/// One region's share of a scan and whether it finishes the range.
struct Step {
    sub: SubRange,
    last: bool,
}

impl Router {
    /// Up to `n` consecutive region shares of `[lo, hi)` in scan order.
    async fn plan_wave(
        &self,
        lo: &[u8],
        hi: &[u8],
        reverse: bool,
        n: usize,
    ) -> std::result::Result<Vec<Step>, Retry> {
        let mut steps: Vec<Step> = Vec::with_capacity(n);
        if reverse {
            let mut top = hi.to_vec();
            while steps.len() < n {
                let region = self.locate_before(lo, &top).await?;
                let region_start = region.region.start_key.clone();
                let last = region_start.as_slice() <= lo;
                let start = if last {
                    lo.to_vec()
                } else {
                    region_start.clone()
                };
                steps.push(Step {
                    sub: SubRange {
                        region,
                        start,
                        end: top,
                    },
                    last,
                });
                if last {
                    break;
                }
                top = region_start;
            }
        } else {
            let mut cursor = lo.to_vec();
            while steps.len() < n {
                let region = self.locate_in_range(&cursor, hi).await?;
                let region_end = region.region.end_key.clone();
                let last = reaches(&region_end, hi);
                steps.push(Step {
                    sub: SubRange {
                        start: cursor,
                        end: min_end(&region_end, hi).to_vec(),
                        region,
                    },
                    last,
                });
                if last {
                    break;
                }
                cursor = region_end;
            }
        }
        Ok(steps)
    }

    /// Pairs of `[start, end)` (empty `end`: no upper bound) in key order,
    /// or from the highest key down with `reverse`, at most `limit` of them
    /// (0: no limit). With `key_only` the values are left empty.
    pub async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        reverse: bool,
        key_only: bool,
    ) -> Result<Vec<KvPair>> {
        self.observed(Op::Scan, async {
            self.config.limits.check_range(start, end)?;
            let mut out: Vec<KvPair> = Vec::new();
            if !end.is_empty() && start == end {
                return Ok(out);
            }
            let limit = limit as usize;
            let (mut lo, mut hi) = (start.to_vec(), end.to_vec());
            let mut backoff = self.backoff(Op::Scan);
            let max_wave = self.config.max_parallel.max(1);
            let mut wave = 1;
            loop {
                let steps = match self.plan_wave(&lo, &hi, reverse, wave).await {
                    Ok(steps) => steps,
                    Err(retry) => {
                        self.retry_wait(&mut backoff, &retry).await?;
                        continue;
                    }
                };
                let want = if limit == 0 {
                    0
                } else {
                    (limit - out.len()) as u32
                };
                let remaining = backoff.remaining();
                let outcomes: Vec<_> = futures::stream::iter(0..steps.len())
                    .map(|i| {
                        let step = &steps[i];
                        self.attempt(&step.sub.region, remaining, move |c, ctx| async move {
                            c.raw_scan(kvrpcpb::RawScanRequest {
                                context: Some(ctx),
                                start_key: step.sub.start.clone(),
                                end_key: step.sub.end.clone(),
                                limit: want,
                                reverse,
                                key_only,
                            })
                            .await
                        })
                    })
                    .buffered(max_wave)
                    .collect()
                    .await;
                let mut retry = None;
                for (step, outcome) in steps.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(resp) => {
                            out.extend(resp.kvs);
                            if limit > 0 && out.len() >= limit {
                                out.truncate(limit);
                                return Ok(out);
                            }
                            if step.last {
                                return Ok(out);
                            }
                            if reverse {
                                hi = step.sub.start;
                            } else {
                                lo = step.sub.end;
                            }
                        }
                        Err(AttemptError::Fatal(e)) => return Err(e),
                        Err(AttemptError::Retry(r)) => {
                            retry = Some(r);
                            break;
                        }
                    }
                }
                match retry {
                    Some(r) => {
                        wave = 1;
                        self.retry_wait(&mut backoff, &r).await?;
                    }
                    None => wave = (wave * 2).min(max_wave),
                }
            }
        })
        .await
    }
}
