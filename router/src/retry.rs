//! The retry policy: why a request is retried, how long to wait before the
//! next attempt (exponential backoff with jitter), and the bounded total
//! time after which a request fails with one clear error.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;

use crate::error::Error;

/// Why an attempt failed and will be retried. Counted per reason in the
/// router's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The peer asked was not the leader.
    NotLeader,
    /// The cached region epoch was stale (split, merge or conf change).
    EpochNotMatch,
    /// The store holds no peer of the region.
    RegionNotFound,
    /// The key lies outside the cached region's range.
    KeyNotInRegion,
    /// The store is overloaded.
    ServerIsBusy,
    /// The command was superseded by a new leader before it was applied.
    StaleCommand,
    /// The request reached a different store than intended.
    StoreNotMatch,
    /// No connection to the store could be made: the request was not sent.
    StoreNotConnected,
    /// The store did not answer: the link broke or the deadline passed
    /// after the request went out.
    StoreUnreachable,
    /// The store answered with an internal error.
    StoreError,
    /// PD could not be reached or did not know the region or store.
    PdUnavailable,
    /// No connection to a router (client side of `connect_routers`) could
    /// be made: the request was not sent.
    RouterNotConnected,
    /// A router (client side of `connect_routers`) did not answer.
    RouterUnreachable,
}

impl RetryReason {
    /// Every reason, in metrics order.
    pub const ALL: [RetryReason; 13] = [
        RetryReason::NotLeader,
        RetryReason::EpochNotMatch,
        RetryReason::RegionNotFound,
        RetryReason::KeyNotInRegion,
        RetryReason::ServerIsBusy,
        RetryReason::StaleCommand,
        RetryReason::StoreNotMatch,
        RetryReason::StoreNotConnected,
        RetryReason::StoreUnreachable,
        RetryReason::StoreError,
        RetryReason::PdUnavailable,
        RetryReason::RouterNotConnected,
        RetryReason::RouterUnreachable,
    ];

    /// A stable snake_case name (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::NotLeader => "not_leader",
            RetryReason::EpochNotMatch => "epoch_not_match",
            RetryReason::RegionNotFound => "region_not_found",
            RetryReason::KeyNotInRegion => "key_not_in_region",
            RetryReason::ServerIsBusy => "server_is_busy",
            RetryReason::StaleCommand => "stale_command",
            RetryReason::StoreNotMatch => "store_not_match",
            RetryReason::StoreNotConnected => "store_not_connected",
            RetryReason::StoreUnreachable => "store_unreachable",
            RetryReason::StoreError => "store_error",
            RetryReason::PdUnavailable => "pd_unavailable",
            RetryReason::RouterNotConnected => "router_not_connected",
            RetryReason::RouterUnreachable => "router_unreachable",
        }
    }

    /// Whether the failed attempt may still have taken effect: the request
    /// may have reached the store (or router) before the link failed or the
    /// deadline passed. Region errors, connection failures and PD failures
    /// are definite: the request was refused, or never sent.
    pub fn may_have_applied(self) -> bool {
        matches!(
            self,
            RetryReason::StoreUnreachable
                | RetryReason::StoreError
                | RetryReason::RouterUnreachable
        )
    }

    /// Position in [`RetryReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a failed call cannot have been sent: no connection could be made
/// (refused, no route), or the connection closed while the request still
/// waited in its queue (hyper reports that as canceled). Any other
/// transport failure may have happened after the request went out.
pub fn connect_failed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let refused = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        });
        let unsent = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
            || e.is::<crate::batch_client::NotSent>();
        if refused || unsent || e.to_string().starts_with("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    false
}

/// How soon the next attempt may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// Right away: the failure told us where to go (a leader hint, the new
    /// regions). Bounded: after a few immediate retries in a row the normal
    /// backoff applies.
    Immediate,
    /// After the exponential backoff.
    Backoff,
    /// After the exponential backoff, but no sooner than this (the store's
    /// `ServerIsBusy` backoff).
    AtLeast(Duration),
}

/// A failed attempt that is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Why it failed.
    pub reason: RetryReason,
    /// What exactly happened, for the final error message and logs.
    pub detail: String,
    /// When to try again.
    pub delay: Delay,
}

impl Retry {
    /// A retry after the normal backoff.
    pub fn backoff(reason: RetryReason, detail: impl Into<String>) -> Retry {
        Retry {
            reason,
            detail: detail.into(),
            delay: Delay::Backoff,
        }
    }

    /// A retry that may go out at once.
    pub fn immediate(reason: RetryReason, detail: impl Into<String>) -> Retry {
        Retry {
            reason,
            detail: detail.into(),
            delay: Delay::Immediate,
        }
    }
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First backoff delay.
    pub base: Duration,
    /// Largest single delay.
    pub max: Duration,
    /// Total time a request may spend (attempts and delays) before it fails.
    pub total: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(5),
            max: Duration::from_millis(1000),
            total: Duration::from_secs(20),
        }
    }
}

/// Immediate retries allowed in a row before backing off anyway.
const MAX_IMMEDIATE_STREAK: u32 = 3;

/// The retry state of one request.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    operation: &'static str,
    writes: bool,
    started: Instant,
    failures: u32,
    backoffs: u32,
    immediate_streak: u32,
}

impl Backoff {
    /// Starts the clock for `operation` (named in the final error).
    pub fn new(operation: &'static str, config: BackoffConfig) -> Backoff {
        Backoff {
            config,
            operation,
            writes: false,
            started: Instant::now(),
            failures: 0,
            backoffs: 0,
            immediate_streak: 0,
        }
    }

    /// Marks the operation as a write: it is not retried after an attempt
    /// that may have been applied (see [`RetryReason::may_have_applied`]).
    pub fn for_writes(mut self, writes: bool) -> Backoff {
        self.writes = writes;
        self
    }

    /// Time left in the budget.
    pub fn remaining(&self) -> Duration {
        self.config.total.saturating_sub(self.started.elapsed())
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The final error: what gave up, after how much, and why.
    pub fn exhausted(&self, last: &Retry) -> Error {
        Error::Unavailable(format!(
            "{} gave up after {} failed attempts in {:.1}s (retry budget {:.1}s); last error ({}): {}",
            self.operation,
            self.failures,
            self.started.elapsed().as_secs_f64(),
            self.config.total.as_secs_f64(),
            last.reason,
            last.detail
        ))
    }

    /// The delay before the next attempt after `retry`, without sleeping.
    fn next_delay(&mut self, retry: &Retry) -> Duration {
        if retry.delay == Delay::Immediate && self.immediate_streak < MAX_IMMEDIATE_STREAK {
            self.immediate_streak += 1;
            return Duration::ZERO;
        }
        self.immediate_streak = 0;
        let exp = self
            .config
            .base
            .saturating_mul(1u32 << self.backoffs.min(20))
            .min(self.config.max);
        self.backoffs += 1;
        // "Equal jitter": half fixed, half random, so concurrent retries
        // spread out but never collapse to zero.
        let half = exp / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_micros() as u64);
        let delay = half + Duration::from_micros(jitter);
        match retry.delay {
            Delay::AtLeast(min) => delay.max(min),
            Delay::Immediate | Delay::Backoff => delay,
        }
    }

    /// Records a failed attempt and waits before the next one, or returns
    /// the final error: when the next attempt would start past the budget,
    /// or when it would repeat a write that may already have been applied.
    pub async fn wait(&mut self, retry: &Retry) -> Result<(), Error> {
        self.failures += 1;
        if self.writes && retry.reason.may_have_applied() {
            return Err(Error::Unavailable(format!(
                "{}: outcome unknown, the write may or may not have been applied \
                 (not retried, so that it cannot be applied twice); {}: {}",
                self.operation, retry.reason, retry.detail
            )));
        }
        let delay = self.next_delay(retry);
        if self.started.elapsed() + delay >= self.config.total {
            return Err(self.exhausted(retry));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(total_ms: u64) -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(10),
            max: Duration::from_millis(80),
            total: Duration::from_millis(total_ms),
        }
    }

    #[test]
    fn delays_grow_exponentially_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new("raw_get", config(60_000));
        let retry = Retry::backoff(RetryReason::StoreError, "boom");
        let expected_caps = [10u64, 20, 40, 80, 80, 80];
        for cap in expected_caps {
            let d = b.next_delay(&retry);
            let cap = Duration::from_millis(cap);
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
    }

    #[test]
    fn immediate_retries_are_bounded_then_back_off() {
        let mut b = Backoff::new("raw_get", config(60_000));
        let retry = Retry::immediate(RetryReason::NotLeader, "leader moved");
        for _ in 0..MAX_IMMEDIATE_STREAK {
            assert_eq!(b.next_delay(&retry), Duration::ZERO);
        }
        assert!(b.next_delay(&retry) >= Duration::from_millis(5));
        assert_eq!(b.next_delay(&retry), Duration::ZERO);
    }

    #[test]
    fn server_is_busy_waits_at_least_its_hint() {
        let mut b = Backoff::new("raw_put", config(60_000));
        let retry = Retry {
            reason: RetryReason::ServerIsBusy,
            detail: "busy".into(),
            delay: Delay::AtLeast(Duration::from_millis(500)),
        };
        assert!(b.next_delay(&retry) >= Duration::from_millis(500));
    }

    #[tokio::test]
    async fn the_budget_ends_in_one_clear_error() {
        let mut b = Backoff::new("raw_put", config(300));
        let retry = Retry::backoff(
            RetryReason::StoreUnreachable,
            "store 2 at 127.0.0.1:1 refused",
        );
        let err = loop {
            if let Err(e) = b.wait(&retry).await {
                break e;
            }
        };
        let Error::Unavailable(msg) = err else {
            panic!("expected Unavailable, got {err:?}");
        };
        assert!(msg.starts_with("raw_put gave up after"), "{msg}");
        assert!(msg.contains("store_unreachable"), "{msg}");
        assert!(msg.contains("store 2 at 127.0.0.1:1 refused"), "{msg}");
        assert!(b.failures() >= 3, "{} failures", b.failures());
    }
}
