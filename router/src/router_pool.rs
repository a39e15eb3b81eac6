//! The client side of `concord-router` processes: a consistent-hash ring
//! (the `hashring` crate, with virtual nodes) maps each key to one router so
//! its region cache stays warm for that key; a router that cannot be
//! reached is skipped for a while and its keys go to the next router on the
//! ring, so only its share moves.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::routerpb::raw_kv_client::RawKvClient;
use hashring::HashRing;
use parking_lot::Mutex;
use tonic::Status;

use crate::batch_client::RouterClient;
use crate::error::{Error, Result};
use crate::metrics::Op;
use crate::retry::{connect_failed, Backoff, BackoffConfig, Retry, RetryReason};
use crate::store_conn::{lazy_channel, MAX_MESSAGE_SIZE};
use concord_common::limits::Limits;

/// Virtual nodes per router on the ring.
const VNODES_PER_ROUTER: u32 = 64;

/// How long a router that failed to answer is skipped.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// Tuning of the router pool.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterPoolConfig {
    /// Backoff between attempts and the total time budget of one request
    /// (should exceed the routers' own budget).
    pub backoff: BackoffConfig,
    /// Longest wait for one router call (should exceed the routers' own
    /// retry budget, since a router retries before answering).
    pub rpc_timeout: Duration,
    /// Longest wait to open a connection to a router.
    pub connect_timeout: Duration,
    /// Limits checked before sending.
    pub limits: Limits,
}

impl Default for RouterPoolConfig {
    fn default() -> Self {
        RouterPoolConfig {
            backoff: BackoffConfig {
                base: Duration::from_millis(20),
                max: Duration::from_millis(1000),
                total: Duration::from_secs(30),
            },
            rpc_timeout: Duration::from_secs(25),
            connect_timeout: Duration::from_secs(3),
            limits: Limits::default(),
        }
    }
}

/// A point of a router on the ring; hashed by the router's address so every
/// client builds the same ring whatever the order of its address list.
#[derive(Debug, Clone)]
struct VNode {
    router: usize,
    addr: Arc<str>,
    replica: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.replica.hash(state);
    }
}

struct Endpoint {
    addr: String,
    client: RouterClient,
    down_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn is_down(&self) -> bool {
        let mut down = self.down_until.lock();
        match *down {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                *down = None;
                false
            }
            None => false,
        }
    }
}

/// A set of routers behind a consistent-hash ring.
pub struct RouterPool {
    config: RouterPoolConfig,
    routers: Vec<Endpoint>,
    ring: HashRing<VNode>,
}

impl RouterPool {
    /// A pool over the routers at `addrs` (`host:port`). Connections are
    /// opened lazily, so routers may come and go.
    pub fn new(addrs: &[String], config: RouterPoolConfig) -> Result<RouterPool> {
        if addrs.is_empty() {
            return Err(Error::Config("no router address given".into()));
        }
        let mut routers = Vec::new();
        let mut ring = HashRing::new();
        for (i, addr) in addrs.iter().enumerate() {
            let channel = lazy_channel(addr, config.connect_timeout).map_err(Error::Config)?;
            routers.push(Endpoint {
                addr: addr.clone(),
                client: RouterClient::new(
                    RawKvClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_SIZE)
                        .max_encoding_message_size(MAX_MESSAGE_SIZE),
                ),
                down_until: Mutex::new(None),
            });
            let shared: Arc<str> = Arc::from(addr.as_str());
            ring.batch_add(
                (0..VNODES_PER_ROUTER)
                    .map(|replica| VNode {
                        router: i,
                        addr: shared.clone(),
                        replica,
                    })
                    .collect(),
            );
        }
        Ok(RouterPool {
            config,
            routers,
            ring,
        })
    }

    /// The limits checked before sending.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The router `key` maps to when every router is up.
    pub fn home_router(&self, key: &[u8]) -> Option<&str> {
        self.ring
            .get(&key)
            .map(|v| self.routers[v.router].addr.as_str())
    }

    /// The router to use for `key`: its home router if up, else the next
    /// router up along the ring, else (all down) the home router anyway.
    fn pick(&self, key: &[u8]) -> Option<usize> {
        let home = self.ring.get(&key)?.router;
        if !self.routers[home].is_down() {
            return Some(home);
        }
        let order = self.ring.get_with_replicas(&key, self.ring.len())?;
        let mut seen = vec![false; self.routers.len()];
        for vnode in order {
            if std::mem::replace(&mut seen[vnode.router], true) {
                continue;
            }
            if !self.routers[vnode.router].is_down() {
                return Some(vnode.router);
            }
        }
        Some(home)
    }

    /// Calls the router `key` maps to, moving to the next router on the
    /// ring when one cannot be reached, until an answer or the budget ends.
    /// Errors the router itself answered with are final.
    pub(crate) async fn call<T, F, Fut>(&self, op: Op, key: &[u8], f: F) -> Result<T>
    where
        F: Fn(RouterClient) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let mut backoff = Backoff::new(op.as_str(), self.config.backoff).for_writes(op.writes());
        loop {
            let Some(i) = self.pick(key) else {
                return Err(Error::Config("no router address given".into()));
            };
            let router = &self.routers[i];
            let timeout = self.config.rpc_timeout.min(backoff.remaining());
            let (reason, detail) =
                match tokio::time::timeout(timeout, f(router.client.clone())).await {
                    Ok(Ok(resp)) => return Ok(resp),
                    Ok(Err(status)) => match Error::from_router_status(&status) {
                        Some(e) => return Err(e),
                        None => (
                            if connect_failed(&status) {
                                RetryReason::RouterNotConnected
                            } else {
                                RetryReason::RouterUnreachable
                            },
                            format!(
                                "router at {} unreachable: {}",
                                router.addr,
                                status.message()
                            ),
                        ),
                    },
                    Err(_) => (
                        RetryReason::RouterUnreachable,
                        format!(
                            "router at {} did not answer within {timeout:?}",
                            router.addr
                        ),
                    ),
                };
            *router.down_until.lock() = Some(Instant::now() + DOWN_FOR);
            tracing::debug!(%detail, "trying another router");
            let another_up = self.routers.iter().any(|r| !r.is_down());
            let retry = if another_up {
                Retry::immediate(reason, detail)
            } else {
                Retry::backoff(reason, detail)
            };
            backoff.wait(&retry).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 41000 + i)).collect()
    }

    #[tokio::test]
    async fn keys_spread_over_routers_and_a_lost_router_moves_only_its_share() {
        let all = RouterPool::new(&addrs(3), RouterPoolConfig::default()).expect("pool");
        let keys: Vec<Vec<u8>> = (0..3000).map(|i| format!("key{i}").into_bytes()).collect();
        let homes: Vec<usize> = keys.iter().map(|k| all.pick(k).expect("router")).collect();
        for r in 0..3 {
            let share = homes.iter().filter(|&&h| h == r).count();
            assert!(share > 500, "router {r} got only {share} of 3000 keys");
        }
        // Router 1 goes down: its keys move, nobody else's do.
        *all.routers[1].down_until.lock() = Some(Instant::now() + Duration::from_secs(60));
        for (key, home) in keys.iter().zip(&homes) {
            let now = all.pick(key).expect("router");
            if *home == 1 {
                assert_ne!(now, 1);
            } else {
                assert_eq!(now, *home);
            }
        }
        // The ring does not depend on the order of the address list.
        let mut reversed = addrs(3);
        reversed.reverse();
        let other = RouterPool::new(&reversed, RouterPoolConfig::default()).expect("pool");
        for key in keys.iter().take(200) {
            assert_eq!(all.home_router(key), other.home_router(key));
        }
    }

    #[test]
    fn an_empty_router_list_is_a_config_error() {
        assert!(matches!(
            RouterPool::new(&[], RouterPoolConfig::default()),
            Err(Error::Config(_))
        ));
    }
}
