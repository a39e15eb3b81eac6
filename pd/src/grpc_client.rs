//! The gRPC implementation of [`PdClient`]: finds the PD leader through any
//! reachable member of a list of PD addresses (`GetMembers`), follows
//! `NOT_LEADER` answers and broken connections to the new leader (retrying
//! for a while, so a PD leader change is invisible to callers), keeps one
//! bidirectional region-heartbeat stream open to the leader (reconnecting
//! it when it breaks or the leader changes) and batches timestamp requests
//! over one TSO stream, re-sending unanswered ones after a leader change.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::pdpb::pd_client::PdClient as PdGrpc;
use concord_proto::{metapb, pdpb};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::{PdClient, PdError, PdResult, RegionInfo};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const QUEUE_CAPACITY: usize = 1024;
/// How long calls keep retrying while PD has no reachable leader (covers
/// a PD leader election).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(8);
/// Longest pause between two retries of a call.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// A live connection to one PD member.
#[derive(Clone)]
struct Conn {
    client: PdGrpc<Channel>,
    cluster_id: u64,
    addr: String,
}

impl Conn {
    fn header(&self) -> pdpb::RequestHeader {
        pdpb::RequestHeader {
            cluster_id: self.cluster_id,
        }
    }
}

type TsoWaiter = oneshot::Sender<PdResult<pdpb::Timestamp>>;

/// State shared by the client and its background stream tasks.
struct Shared {
    addrs: Vec<String>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    responses: parking_lot::Mutex<mpsc::Sender<pdpb::RegionHeartbeatResponse>>,
    /// Openings of the region heartbeat stream.
    heartbeat_stream_opens: watch::Sender<u64>,
}

/// Whether a gRPC status means the connection (not the request) failed.
fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Whether a response header says the member is not the PD leader.
fn is_not_leader(header: Option<&pdpb::ResponseHeader>) -> bool {
    header
        .and_then(|h| h.error.as_ref())
        .is_some_and(|e| e.r#type() == pdpb::ErrorType::NotLeader)
}

/// Response types that carry a PD header.
trait HasHeader {
    fn header(&self) -> Option<&pdpb::ResponseHeader>;
}

macro_rules! has_header {
    ($($ty:ty),* $(,)?) => {
        $(impl HasHeader for $ty {
            fn header(&self) -> Option<&pdpb::ResponseHeader> {
                self.header.as_ref()
            }
        })*
    };
}

has_header!(
    pdpb::GetMembersResponse,
    pdpb::BootstrapResponse,
    pdpb::IsBootstrappedResponse,
    pdpb::AllocIdResponse,
    pdpb::TsoResponse,
    pdpb::PutStoreResponse,
    pdpb::GetStoreResponse,
    pdpb::GetAllStoresResponse,
    pdpb::StoreHeartbeatResponse,
    pdpb::GetRegionResponse,
    pdpb::ScanRegionsResponse,
    pdpb::AskBatchSplitResponse,
    pdpb::ReportBatchSplitResponse,
);

/// Turns an error in a response header into a [`PdError`].
fn check_header(header: Option<&pdpb::ResponseHeader>) -> PdResult<()> {
    let Some(error) = header.and_then(|h| h.error.as_ref()) else {
        return Ok(());
    };
    match error.r#type() {
        pdpb::ErrorType::Ok => Ok(()),
        pdpb::ErrorType::NotBootstrapped => Err(PdError::NotBootstrapped),
        pdpb::ErrorType::AlreadyBootstrapped => Err(PdError::AlreadyBootstrapped),
        kind => Err(PdError::Server {
            kind,
            message: error.message.clone(),
        }),
    }
}

fn region_info(resp: pdpb::GetRegionResponse) -> Option<RegionInfo> {
    resp.region.map(|region| RegionInfo {
        region,
        leader: resp.leader,
    })
}

impl Shared {
    fn unreachable(&self, reason: impl Into<String>) -> PdError {
        PdError::Unreachable {
            addresses: self.addrs.join(","),
            reason: reason.into(),
        }
    }

    /// Connects to `addr` and asks it for the members.
    async fn members_of(addr: &str) -> Result<(PdGrpc<Channel>, pdpb::GetMembersResponse), String> {
        let endpoint = concord_common::grpc::endpoint(addr, CONNECT_TIMEOUT)?;
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| format!("{addr}: connect timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut client = PdGrpc::new(channel);
        let members = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.get_members(pdpb::GetMembersRequest { header: None }),
        )
        .await
        .map_err(|_| format!("{addr}: GetMembers timed out"))?
        .map_err(|s| format!("{addr}: {}", s.message()))?
        .into_inner();
        check_header(members.header()).map_err(|e| format!("{addr}: {e}"))?;
        Ok((client, members))
    }

    /// Connects to the PD leader as `addr` knows it: `addr` itself when it
    /// leads, else the leader it names.
    async fn connect_one(addr: &str) -> Result<Conn, String> {
        let (client, members) = Self::members_of(addr).await?;
        let leader_url = members
            .leader
            .as_ref()
            .and_then(|m| m.client_urls.first())
            .cloned()
            .ok_or_else(|| format!("{addr}: knows no PD leader"))?;
        let (client, members, addr) = if leader_url == concord_common::grpc::url(addr) {
            (client, members, addr.to_string())
        } else {
            let (client, members) = Self::members_of(&leader_url).await?;
            (client, members, leader_url)
        };
        let cluster_id = members.header.map_or(0, |h| h.cluster_id);
        Ok(Conn {
            client,
            cluster_id,
            addr,
        })
    }

    /// The current connection, connecting to the first reachable member if
    /// there is none.
    async fn conn(&self) -> PdResult<Conn> {
        let mut current = self.conn.lock().await;
        if let Some(conn) = current.as_ref() {
            return Ok(conn.clone());
        }
        let mut reasons = Vec::new();
        for addr in &self.addrs {
            match Self::connect_one(addr).await {
                Ok(conn) => {
                    tracing::debug!(addr = %conn.addr, cluster_id = conn.cluster_id, "connected to PD");
                    *current = Some(conn.clone());
                    return Ok(conn);
                }
                Err(reason) => reasons.push(reason),
            }
        }
        Err(self.unreachable(reasons.join("; ")))
    }

    /// Forgets `failed` so the next call reconnects (unless another caller
    /// already replaced it).
    async fn reset(&self, failed: &Conn) {
        let mut current = self.conn.lock().await;
        if current.as_ref().is_some_and(|c| c.addr == failed.addr) {
            *current = None;
        }
    }

    fn deliver(&self, resp: pdpb::RegionHeartbeatResponse) {
        let tx = self.responses.lock().clone();
        if let Err(mpsc::error::TrySendError::Full(resp)) = tx.try_send(resp) {
            tracing::warn!(
                region_id = resp.region_id,
                "heartbeat response dropped: receiver is full"
            );
        }
    }
}

/// The gRPC PD client. Dropping it stops its background streams.
pub struct GrpcPdClient {
    shared: Arc<Shared>,
    heartbeats: mpsc::Sender<pdpb::RegionHeartbeatRequest>,
    tso_requests: mpsc::Sender<TsoWaiter>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for GrpcPdClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Discards queued items for `period`; false once the queue is closed.
async fn discard_for<T>(queue: &mut mpsc::Receiver<T>, period: Duration) -> bool {
    let drain = async { while queue.recv().await.is_some() {} };
    tokio::time::timeout(period, drain).await.is_err()
}

async fn heartbeat_loop(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<pdpb::RegionHeartbeatRequest>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let opened = match shared.conn().await {
            Ok(conn) => {
                let (tx, rx) = mpsc::channel(256);
                let mut client = conn.client.clone();
                match client.region_heartbeat(ReceiverStream::new(rx)).await {
                    Ok(resp) => Ok((conn, tx, resp.into_inner())),
                    Err(status) => {
                        shared.reset(&conn).await;
                        Err(status.to_string())
                    }
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let (conn, tx, mut inbound) = match opened {
            Ok(parts) => parts,
            Err(reason) => {
                tracing::warn!(%reason, "region heartbeat stream unavailable; retrying");
                if !discard_for(&mut queue, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        shared.heartbeat_stream_opens.send_modify(|n| *n += 1);
        loop {
            tokio::select! {
                req = queue.recv() => match req {
                    Some(mut req) => {
                        req.header = Some(conn.header());
                        if tx.send(req).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        if is_not_leader(resp.header.as_ref()) {
                            tracing::info!(addr = %conn.addr, "PD member no longer leads; reconnecting the heartbeat stream");
                            break;
                        }
                        if let Err(e) = check_header(resp.header.as_ref()) {
                            tracing::warn!(error = %e, "PD rejected a region heartbeat");
                        }
                        if resp.region_id != 0 {
                            shared.deliver(resp);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(%status, "region heartbeat stream broke");
                        break;
                    }
                },
            }
        }
        shared.reset(&conn).await;
        if !discard_for(&mut queue, backoff).await {
            return;
        }
    }
}

fn fail_all(shared: &Shared, waiters: impl IntoIterator<Item = TsoWaiter>, reason: &str) {
    for waiter in waiters {
        let _ = waiter.send(Err(shared.unreachable(reason)));
    }
}

/// Takes `first` plus everything already queued.
fn batch(first: TsoWaiter, queue: &mut mpsc::Receiver<TsoWaiter>) -> Vec<TsoWaiter> {
    let mut waiters = vec![first];
    while waiters.len() < 4096 {
        match queue.try_recv() {
            Ok(w) => waiters.push(w),
            Err(_) => break,
        }
    }
    waiters
}

fn answer(resp: pdpb::TsoResponse, waiters: Vec<TsoWaiter>) {
    let result = check_header(resp.header.as_ref()).and_then(|()| {
        let ts = resp.timestamp.ok_or_else(|| PdError::Server {
            kind: pdpb::ErrorType::Unknown,
            message: "TSO response without timestamp".into(),
        })?;
        if resp.count as usize != waiters.len() {
            return Err(PdError::Server {
                kind: pdpb::ErrorType::Unknown,
                message: format!("asked for {} timestamps, got {}", waiters.len(), resp.count),
            });
        }
        Ok(ts)
    });
    match result {
        Ok(last) => {
            let n = waiters.len() as i64;
            for (i, waiter) in waiters.into_iter().enumerate() {
                let _ = waiter.send(Ok(pdpb::Timestamp {
                    physical: last.physical,
                    logical: last.logical - (n - 1 - i as i64),
                }));
            }
        }
        Err(e) => {
            let message = e.to_string();
            let kind = match &e {
                PdError::Server { kind, .. } => *kind,
                _ => pdpb::ErrorType::Unknown,
            };
            for waiter in waiters {
                let _ = waiter.send(Err(PdError::Server {
                    kind,
                    message: message.clone(),
                }));
            }
        }
    }
}

/// The TSO stream task. Waiters whose request went unanswered because the
/// stream broke or the member stopped leading are re-sent on the next
/// connection; they fail only when no leader answers for
/// [`FAILOVER_DEADLINE`].
async fn tso_loop(shared: Arc<Shared>, mut queue: mpsc::Receiver<TsoWaiter>) {
    let mut carried: Vec<TsoWaiter> = Vec::new();
    let mut failing_since: Option<Instant> = None;
    let mut pause = MIN_BACKOFF;
    loop {
        let waiting = if carried.is_empty() {
            let Some(first) = queue.recv().await else {
                return;
            };
            batch(first, &mut queue)
        } else {
            let mut waiting = std::mem::take(&mut carried);
            while let Ok(w) = queue.try_recv() {
                waiting.push(w);
            }
            waiting
        };
        let (reason, unanswered) =
            tso_session(&shared, &mut queue, waiting, &mut failing_since).await;
        let Some(reason) = reason else {
            return;
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= FAILOVER_DEADLINE {
            fail_all(&shared, unanswered, &reason);
            failing_since = None;
            pause = MIN_BACKOFF;
            continue;
        }
        tracing::debug!(%reason, "TSO stream broke; retrying on the PD leader");
        carried = unanswered;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    }
}

/// Serves waiters over one TSO stream until it breaks; returns why (None:
/// the client is gone) and the waiters left unanswered.
async fn tso_session(
    shared: &Shared,
    queue: &mut mpsc::Receiver<TsoWaiter>,
    waiting: Vec<TsoWaiter>,
    failing_since: &mut Option<Instant>,
) -> (Option<String>, Vec<TsoWaiter>) {
    let conn = match shared.conn().await {
        Ok(conn) => conn,
        Err(e) => return (Some(e.to_string()), waiting),
    };
    let (tx, rx) = mpsc::channel(256);
    let mut client = conn.client.clone();
    let mut inbound = match client.tso(ReceiverStream::new(rx)).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => {
            shared.reset(&conn).await;
            return (Some(status.message().to_string()), waiting);
        }
    };
    let mut in_flight: VecDeque<Vec<TsoWaiter>> = VecDeque::new();
    let mut next = Some(waiting);
    let reason = loop {
        if let Some(waiters) = next.take() {
            let req = pdpb::TsoRequest {
                header: Some(conn.header()),
                count: waiters.len() as u32,
            };
            in_flight.push_back(waiters);
            if tx.send(req).await.is_err() {
                break "TSO stream closed".to_string();
            }
        }
        tokio::select! {
            w = queue.recv() => match w {
                Some(first) => next = Some(batch(first, queue)),
                None => return (None, Vec::new()),
            },
            msg = inbound.message() => match msg {
                Ok(Some(resp)) if is_not_leader(resp.header.as_ref()) => {
                    break format!("{} is not the PD leader", conn.addr);
                }
                Ok(Some(resp)) => match in_flight.pop_front() {
                    Some(waiters) => {
                        *failing_since = None;
                        answer(resp, waiters);
                    }
                    None => break "unexpected TSO response".to_string(),
                },
                Ok(None) => break "TSO stream ended".to_string(),
                Err(status) => break status.message().to_string(),
            },
        }
    };
    tracing::warn!(%reason, addr = %conn.addr, "TSO stream broke");
    shared.reset(&conn).await;
    let mut unanswered: Vec<TsoWaiter> = in_flight.into_iter().flatten().collect();
    unanswered.extend(next.into_iter().flatten());
    (Some(reason), unanswered)
}

impl GrpcPdClient {
    /// Connects to the first reachable PD among `addrs` (`host:port` or
    /// `http://host:port`) and starts the heartbeat and TSO streams. Must be
    /// called within a tokio runtime.
    pub async fn connect(addrs: &[String]) -> PdResult<Self> {
        if addrs.is_empty() {
            return Err(PdError::Unreachable {
                addresses: String::new(),
                reason: "no PD address given".into(),
            });
        }
        let (responses, _) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            addrs: addrs.to_vec(),
            conn: tokio::sync::Mutex::new(None),
            responses: parking_lot::Mutex::new(responses),
            heartbeat_stream_opens: watch::Sender::new(0),
        });
        shared.conn().await?;
        let (heartbeats, hb_queue) = mpsc::channel(QUEUE_CAPACITY);
        let (tso_requests, tso_queue) = mpsc::channel(QUEUE_CAPACITY);
        let tasks = vec![
            tokio::spawn(heartbeat_loop(shared.clone(), hb_queue)),
            tokio::spawn(tso_loop(shared.clone(), tso_queue)),
        ];
        Ok(GrpcPdClient {
            shared,
            heartbeats,
            tso_requests,
            tasks,
        })
    }

    /// The cluster id PD reported.
    pub async fn cluster_id(&self) -> PdResult<u64> {
        Ok(self.shared.conn().await?.cluster_id)
    }

    /// Runs a unary call on the PD leader. When the connection fails or
    /// the member is no longer the leader, finds the leader again and
    /// retries, with growing pauses, for up to [`FAILOVER_DEADLINE`].
    async fn call<T, F, Fut>(&self, f: F) -> PdResult<T>
    where
        T: HasHeader,
        F: Fn(PdGrpc<Channel>, pdpb::RequestHeader) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        let mut pause = MIN_BACKOFF;
        loop {
            let failure = match self.shared.conn().await {
                Err(e) => e.to_string(),
                Ok(conn) => {
                    let outcome = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        f(conn.client.clone(), conn.header()),
                    )
                    .await;
                    match outcome {
                        Ok(Ok(resp)) => {
                            let resp = resp.into_inner();
                            if !is_not_leader(resp.header()) {
                                check_header(resp.header())?;
                                return Ok(resp);
                            }
                            self.shared.reset(&conn).await;
                            format!("{}: not the PD leader", conn.addr)
                        }
                        Ok(Err(status)) if is_transport_failure(&status) => {
                            self.shared.reset(&conn).await;
                            format!("{}: {}", conn.addr, status.message())
                        }
                        Ok(Err(status)) => {
                            return Err(PdError::Server {
                                kind: pdpb::ErrorType::Unknown,
                                message: status.message().to_string(),
                            })
                        }
                        Err(_) => {
                            self.shared.reset(&conn).await;
                            format!("{}: request timed out", conn.addr)
                        }
                    }
                }
            };
            if Instant::now() + pause > deadline {
                return Err(self.shared.unreachable(failure));
            }
            tracing::debug!(%failure, "PD call failed; finding the leader again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }
}

#[tonic::async_trait]
impl PdClient for GrpcPdClient {
    async fn is_bootstrapped(&self) -> PdResult<bool> {
        let resp = self
            .call(|mut c, h| async move {
                c.is_bootstrapped(pdpb::IsBootstrappedRequest { header: Some(h) })
                    .await
            })
            .await?;
        Ok(resp.bootstrapped)
    }

    async fn bootstrap(&self, store: metapb::Store, region: metapb::Region) -> PdResult<()> {
        self.call(|mut c, h| {
            let req = pdpb::BootstrapRequest {
                header: Some(h),
                store: Some(store.clone()),
                region: Some(region.clone()),
            };
            async move { c.bootstrap(req).await }
        })
        .await?;
        Ok(())
    }

    async fn alloc_id(&self) -> PdResult<u64> {
        let resp =
            self.call(|mut c, h| async move {
                c.alloc_id(pdpb::AllocIdRequest { header: Some(h) }).await
            })
            .await?;
        Ok(resp.id)
    }

    async fn put_store(&self, store: metapb::Store) -> PdResult<()> {
        self.call(|mut c, h| {
            let req = pdpb::PutStoreRequest {
                header: Some(h),
                store: Some(store.clone()),
            };
            async move { c.put_store(req).await }
        })
        .await?;
        Ok(())
    }

    async fn get_store(&self, store_id: u64) -> PdResult<metapb::Store> {
        let resp = self
            .call(|mut c, h| async move {
                c.get_store(pdpb::GetStoreRequest {
                    header: Some(h),
                    store_id,
                })
                .await
            })
            .await?;
        resp.store.ok_or_else(|| PdError::Server {
            kind: pdpb::ErrorType::StoreNotFound,
            message: format!("store {store_id} not found"),
        })
    }

    async fn get_all_stores(&self) -> PdResult<Vec<metapb::Store>> {
        let resp = self
            .call(|mut c, h| async move {
                c.get_all_stores(pdpb::GetAllStoresRequest {
                    header: Some(h),
                    exclude_tombstone_stores: false,
                })
                .await
            })
            .await?;
        Ok(resp.stores)
    }

    async fn store_heartbeat(&self, stats: pdpb::StoreStats) -> PdResult<()> {
        self.call(|mut c, h| {
            let req = pdpb::StoreHeartbeatRequest {
                header: Some(h),
                stats: Some(stats),
            };
            async move { c.store_heartbeat(req).await }
        })
        .await?;
        Ok(())
    }

    async fn region_heartbeat(&self, request: pdpb::RegionHeartbeatRequest) -> PdResult<()> {
        self.heartbeats
            .send(request)
            .await
            .map_err(|_| self.shared.unreachable("heartbeat stream task stopped"))
    }

    fn heartbeat_responses(&self) -> mpsc::Receiver<pdpb::RegionHeartbeatResponse> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        *self.shared.responses.lock() = tx;
        rx
    }

    fn heartbeat_stream_opens(&self) -> watch::Receiver<u64> {
        self.shared.heartbeat_stream_opens.subscribe()
    }

    async fn get_region(&self, key: &[u8]) -> PdResult<RegionInfo> {
        let resp = self
            .call(|mut c, h| {
                let req = pdpb::GetRegionRequest {
                    header: Some(h),
                    region_key: key.to_vec(),
                };
                async move { c.get_region(req).await }
            })
            .await?;
        region_info(resp).ok_or_else(|| PdError::Server {
            kind: pdpb::ErrorType::RegionNotFound,
            message: format!("no region holds key {key:?}"),
        })
    }

    async fn get_region_by_id(&self, region_id: u64) -> PdResult<Option<RegionInfo>> {
        let resp = self
            .call(|mut c, h| async move {
                c.get_region_by_id(pdpb::GetRegionByIdRequest {
                    header: Some(h),
                    region_id,
                })
                .await
            })
            .await?;
        Ok(region_info(resp))
    }

    async fn scan_regions(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
    ) -> PdResult<Vec<RegionInfo>> {
        let resp = self
            .call(|mut c, h| {
                let req = pdpb::ScanRegionsRequest {
                    header: Some(h),
                    start_key: start.to_vec(),
                    end_key: end.to_vec(),
                    limit,
                };
                async move { c.scan_regions(req).await }
            })
            .await?;
        Ok(resp.regions.into_iter().filter_map(region_info).collect())
    }

    async fn ask_batch_split(
        &self,
        region: &metapb::Region,
        count: u32,
    ) -> PdResult<Vec<pdpb::SplitId>> {
        let resp = self
            .call(|mut c, h| {
                let req = pdpb::AskBatchSplitRequest {
                    header: Some(h),
                    region: Some(region.clone()),
                    split_count: count,
                };
                async move { c.ask_batch_split(req).await }
            })
            .await?;
        Ok(resp.ids)
    }

    async fn report_batch_split(&self, regions: Vec<metapb::Region>) -> PdResult<()> {
        self.call(|mut c, h| {
            let req = pdpb::ReportBatchSplitRequest {
                header: Some(h),
                regions: regions.clone(),
            };
            async move { c.report_batch_split(req).await }
        })
        .await?;
        Ok(())
    }

    async fn get_tso(&self) -> PdResult<pdpb::Timestamp> {
        let (tx, rx) = oneshot::channel();
        self.tso_requests
            .send(tx)
            .await
            .map_err(|_| self.shared.unreachable("TSO task stopped"))?;
        rx.await
            .map_err(|_| self.shared.unreachable("TSO request dropped"))?
    }
}
