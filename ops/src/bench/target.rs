//! Where the benchmark's requests go (router processes over gRPC, or the
//! smart client through PD), the probe that checks the target answers
//! before any phase starts, and how failed requests are classified.

use std::fmt;
use std::time::Duration;

use concord_proto::routerpb::{CasRequest, GetRequest, PutRequest, ScanRequest};
use concord_router::batch_client::RouterClient;
use concord_router::store_conn::MAX_MESSAGE_SIZE;
use concord_router::{Client, RoutingConfig};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::workload::{key_of, KEY_END};
use crate::error::{OpsError, Result};
use crate::router_conn::connect_lazy;

/// Longest wait for the target to answer the probe (a get of record 0)
/// before any phase starts.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Extra time past `--timeout-secs` before a call is abandoned on our side
/// (the router's channel or the smart client's retry budget normally ends
/// it first, with a more telling error).
const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// Where to send requests, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `concord-router` processes (`--router`).
    Routers(Vec<String>),
    /// PD members, for the smart client (`--pd`).
    Pd(Vec<String>),
}

impl Destination {
    /// `router` or `pd`.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Routers(_) => "router",
            Destination::Pd(_) => "pd",
        }
    }

    /// The addresses.
    pub fn addrs(&self) -> &[String] {
        match self {
            Destination::Routers(a) | Destination::Pd(a) => a,
        }
    }

    /// E.g. `router 127.0.0.1:20170` or `PD 127.0.0.1:2379 (smart client)`.
    pub fn describe(&self) -> String {
        let list = self.addrs().join(",");
        match self {
            Destination::Routers(_) => format!("router {list}"),
            Destination::Pd(_) => format!("PD {list} (smart client)"),
        }
    }
}

/// A failed operation: a short kind to count failures by, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// `unavailable`, `invalid_argument`, `timeout`, `transport`, `config`,
    /// or the snake_case name of another gRPC code.
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

impl OpError {
    /// No answer within `after`.
    pub fn timeout(after: Duration) -> OpError {
        OpError {
            kind: "timeout",
            message: format!("no answer within {:.1} s", after.as_secs_f64()),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl From<concord_router::Error> for OpError {
    /// Errors of the smart client (and of a router, once decoded).
    fn from(e: concord_router::Error) -> OpError {
        let (kind, message) = match e {
            concord_router::Error::InvalidArgument(m) => ("invalid_argument", m),
            concord_router::Error::Unavailable(m) => ("unavailable", m),
            concord_router::Error::Config(m) => ("config", m),
        };
        OpError { kind, message }
    }
}

impl From<Status> for OpError {
    /// A router's answer keeps the router's error kind; a status that the
    /// router did not send (tonic's own) is a `transport` failure or a
    /// `timeout`, or else named after its code.
    fn from(status: Status) -> OpError {
        if let Some(e) = concord_router::Error::from_router_status(&status) {
            return e.into();
        }
        let mut message = if status.message().is_empty() {
            code_name(status.code()).replace('_', " ")
        } else {
            status.message().to_string()
        };
        // tonic's message is terse ("tcp connect error"); the root cause
        // ("Connection refused") is at the end of the source chain.
        let root = std::iter::successors(std::error::Error::source(&status), |e| e.source()).last();
        if let Some(root) = root.map(|e| e.to_string()) {
            if !message.contains(&root) {
                message = format!("{message}: {root}");
            }
        }
        let kind = match status.code() {
            Code::DeadlineExceeded => "timeout",
            // tonic's channel timeout.
            Code::Cancelled if message.contains("Timeout expired") => "timeout",
            Code::Unavailable => "transport",
            Code::Unknown if message.contains("transport error") => "transport",
            code => code_name(code),
        };
        OpError { kind, message }
    }
}

/// The snake_case name of a gRPC code, as in the gRPC spec.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[derive(Clone)]
enum Backend {
    /// Router processes, one batched stream each; worker `w` uses router
    /// `w % len`.
    Routers(Vec<RouterClient>),
    /// The routing library itself, through PD.
    Smart(Client),
}

/// The connected target. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Target {
    backend: Backend,
    /// Our own bound on one call.
    call_limit: Duration,
}

impl Target {
    /// Connects to `dest` and probes it with a get of record 0; fails
    /// within about [`PROBE_TIMEOUT`] if the target cannot serve. `timeout`
    /// bounds every later request.
    pub async fn connect(dest: &Destination, timeout: Duration) -> Result<Target> {
        let backend = match dest {
            Destination::Routers(addrs) => connect_routers(addrs, timeout).await?,
            Destination::Pd(addrs) => connect_pd(addrs, timeout).await?,
        };
        Ok(Target {
            backend,
            call_limit: timeout + TIMEOUT_GRACE,
        })
    }

    /// The value of `key` (`None`: not found).
    pub async fn get(&self, worker: usize, key: Vec<u8>) -> Result<Option<Vec<u8>>, OpError> {
        self.bounded(async {
            Ok(match &self.backend {
                Backend::Routers(c) => {
                    let resp = pick(c, worker).get(GetRequest { key }).await?;
                    (!resp.not_found).then_some(resp.value)
                }
                Backend::Smart(c) => c.get(&key).await?,
            })
        })
        .await
    }

    /// Writes `key` = `value`.
    pub async fn put(&self, worker: usize, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.bounded(async {
            match &self.backend {
                Backend::Routers(c) => {
                    let req = PutRequest { key, value, ttl: 0 };
                    pick(c, worker).put(req).await?;
                }
                Backend::Smart(c) => c.put(&key, &value).await?,
            }
            Ok(())
        })
        .await
    }

    /// Reads up to `limit` records in key order from `start` (within the
    /// benchmark's key space); returns how many came back.
    pub async fn scan(&self, worker: usize, start: Vec<u8>, limit: u32) -> Result<usize, OpError> {
        self.bounded(async {
            Ok(match &self.backend {
                Backend::Routers(c) => {
                    let req = ScanRequest {
                        start_key: start,
                        end_key: KEY_END.to_vec(),
                        limit,
                        reverse: false,
                        key_only: false,
                    };
                    pick(c, worker).scan(req).await?.kvs.len()
                }
                Backend::Smart(c) => c.scan(&start, KEY_END, limit, false).await?.len(),
            })
        })
        .await
    }

    /// Writes `value` if `key` currently holds `previous` (`None`: absent);
    /// returns whether it did.
    pub async fn compare_and_swap(
        &self,
        worker: usize,
        key: Vec<u8>,
        previous: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, OpError> {
        self.bounded(async {
            Ok(match &self.backend {
                Backend::Routers(c) => {
                    let req = CasRequest {
                        key,
                        value,
                        previous_not_exist: previous.is_none(),
                        previous_value: previous.unwrap_or_default(),
                        ttl: 0,
                    };
                    pick(c, worker).compare_and_swap(req).await?.succeed
                }
                Backend::Smart(c) => {
                    c.compare_and_swap(&key, previous.as_deref(), &value)
                        .await?
                        .succeed
                }
            })
        })
        .await
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, OpError>>,
    ) -> Result<T, OpError> {
        tokio::time::timeout(self.call_limit, call)
            .await
            .unwrap_or_else(|_| Err(OpError::timeout(self.call_limit)))
    }
}

fn pick(clients: &[RouterClient], worker: usize) -> &RouterClient {
    &clients[worker % clients.len()]
}

/// A batched stream to every router, after each router answered the probe.
async fn connect_routers(addrs: &[String], timeout: Duration) -> Result<Backend> {
    let mut clients = Vec::with_capacity(addrs.len());
    for addr in addrs {
        clients.push(RouterClient::new(
            connect_lazy(addr, timeout)?
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        ));
    }
    let probes = addrs.iter().zip(&clients).map(|(addr, client)| async move {
        let probe = client.get(GetRequest { key: key_of(0) });
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(router_probe_error(addr, status)),
            Err(_) => Err(OpsError::Connect {
                addr: addr.clone(),
                message: format!("no answer to a get within {} s", PROBE_TIMEOUT.as_secs()),
            }),
        }
    });
    for result in futures::future::join_all(probes).await {
        result?;
    }
    Ok(Backend::Routers(clients))
}

/// A failed probe of the router at `addr`: unreachable, or reachable but
/// unable to serve.
fn router_probe_error(addr: &str, status: Status) -> OpsError {
    let answered = concord_router::Error::from_router_status(&status).is_some();
    let e = OpError::from(status);
    if answered {
        OpsError::Request {
            op: "bench",
            message: format!("router {addr} answered a probe get with {e}"),
        }
    } else {
        OpsError::Connect {
            addr: addr.to_string(),
            message: e.to_string(),
        }
    }
}

/// The smart client, once PD answered and a get through it succeeded.
async fn connect_pd(addrs: &[String], timeout: Duration) -> Result<Backend> {
    let list = addrs.join(",");
    let fail = |message: String| OpsError::Request {
        op: "bench",
        message,
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut config = RoutingConfig::default();
    config.backoff.total = timeout;
    config.rpc_timeout = config.rpc_timeout.min(timeout);
    let client =
        match tokio::time::timeout_at(deadline, Client::connect_pd_with(addrs, config)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(format!("cannot reach PD {list}: {e}"))),
            Err(_) => {
                return Err(fail(format!(
                    "cannot reach PD {list}: no answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                )))
            }
        };
    match tokio::time::timeout_at(deadline, client.get(&key_of(0))).await {
        Ok(Ok(_)) => Ok(Backend::Smart(client)),
        Ok(Err(e)) => Err(fail(format!(
            "PD {list} answered, but a probe get through it failed: {e}"
        ))),
        Err(_) => Err(fail(format!(
            "PD {list} answered, but a probe get through it got no answer within {} s",
            PROBE_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_answers_keep_their_kind() {
        for (err, kind) in [
            (
                concord_router::Error::Unavailable("gave up".into()),
                "unavailable",
            ),
            (
                concord_router::Error::InvalidArgument("key must not be empty".into()),
                "invalid_argument",
            ),
            (concord_router::Error::Config("no address".into()), "config"),
        ] {
            let via_router = OpError::from(err.to_status());
            let direct = OpError::from(err);
            assert_eq!(via_router, direct);
            assert_eq!(direct.kind, kind);
        }
    }

    #[test]
    fn transport_failures_and_timeouts_are_told_apart() {
        let refused = OpError::from(Status::unavailable(
            "tcp connect error: Connection refused (os error 111)",
        ));
        assert_eq!(refused.kind, "transport");
        assert!(refused.message.contains("refused"));
        assert_eq!(
            OpError::from(Status::unknown("transport error")).kind,
            "transport"
        );
        assert_eq!(
            OpError::from(Status::cancelled("Timeout expired")).kind,
            "timeout"
        );
        assert_eq!(OpError::from(Status::deadline_exceeded("")).kind, "timeout");
        assert_eq!(OpError::from(Status::cancelled("bye")).kind, "cancelled");
        let big = OpError::from(Status::resource_exhausted(""));
        assert_eq!(
            (big.kind, big.message.as_str()),
            ("resource_exhausted", "resource exhausted")
        );
        assert_eq!(
            OpError::timeout(Duration::from_secs(3)).to_string(),
            "timeout: no answer within 3.0 s"
        );
    }

    #[test]
    fn destinations_describe_themselves() {
        let r = Destination::Routers(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(
            (r.kind(), r.describe().as_str()),
            ("router", "router a:1,b:2")
        );
        let p = Destination::Pd(vec!["c:3".into()]);
        assert_eq!(p.describe(), "PD c:3 (smart client)");
    }

    /// An address nothing listens on.
    fn closed_addr() -> String {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        closed.local_addr().unwrap().to_string()
    }

    /// Connects to `dest`, which must fail within the probe's time; the error.
    async fn connect_fails_fast(dest: Destination) -> String {
        let started = std::time::Instant::now();
        let err = Target::connect(&dest, Duration::from_secs(30))
            .await
            .err()
            .expect("nothing listens there");
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(1));
        err.to_string()
    }

    #[tokio::test]
    async fn an_unreachable_router_fails_fast_and_is_named() {
        let addr = closed_addr();
        let text = connect_fails_fast(Destination::Routers(vec![addr.clone()])).await;
        assert!(
            text.contains(&format!("cannot connect to router {addr}")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_pd_fails_fast_and_is_named() {
        let addr = closed_addr();
        let text = connect_fails_fast(Destination::Pd(vec![addr.clone()])).await;
        assert!(text.contains(&format!("cannot reach PD {addr}")), "{text}");
    }
}
