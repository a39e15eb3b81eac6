//! The retry loop against scripted in-process stores and a fake PD: each
//! region error updates the cache the way it should, the request then
//! succeeds, and when nothing helps the caller gets one clear error.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_common::pd_client::{PdError, PdResult, RegionInfo};
use concord_proto::errorpb::{self, error::Kind};
use concord_proto::kvrpcpb::{self, kv_server::Kv, Context};
use concord_proto::metapb;
use concord_router::pd::RegionSource;
use concord_router::retry::{BackoffConfig, RetryReason};
use concord_router::{Error, Router, RoutingConfig};
use tonic::{Request, Response, Status};

/// What a scripted store answers to a RawGet.
enum Answer {
    Value(Vec<u8>),
    RegionError(Kind),
    Status(Status),
}

/// Decides the answer from the store id, the call number on that store
/// (from 1) and the request context.
type Script = Arc<dyn Fn(u64, u64, &Context) -> Answer + Send + Sync>;

#[derive(Clone)]
struct FakeStore {
    id: u64,
    script: Script,
    calls: Arc<AtomicU64>,
}

type Answered<T> = Result<Response<T>, Status>;

impl FakeStore {
    /// Counts the call and runs the script: a value or a region error to
    /// answer with, or a failed call (a `Status`, as every tonic handler
    /// returns).
    #[allow(clippy::result_large_err)]
    fn answer(&self, ctx: Option<Context>) -> Result<(Vec<u8>, Option<errorpb::Error>), Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match (self.script)(self.id, call, &ctx.unwrap_or_default()) {
            Answer::Value(value) => Ok((value, None)),
            Answer::RegionError(kind) => Ok((
                Vec::new(),
                Some(errorpb::Error {
                    message: "scripted".into(),
                    kind: Some(kind),
                }),
            )),
            Answer::Status(status) => Err(status),
        }
    }
}

#[tonic::async_trait]
impl Kv for FakeStore {
    async fn raw_get(
        &self,
        req: Request<kvrpcpb::RawGetRequest>,
    ) -> Answered<kvrpcpb::RawGetResponse> {
        let (value, region_error) = self.answer(req.into_inner().context)?;
        Ok(Response::new(kvrpcpb::RawGetResponse {
            value,
            region_error,
            ..Default::default()
        }))
    }
    async fn raw_batch_get(
        &self,
        _: Request<kvrpcpb::RawBatchGetRequest>,
    ) -> Answered<kvrpcpb::RawBatchGetResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn raw_put(
        &self,
        _: Request<kvrpcpb::RawPutRequest>,
    ) -> Answered<kvrpcpb::RawPutResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn raw_batch_put(
        &self,
        _: Request<kvrpcpb::RawBatchPutRequest>,
    ) -> Answered<kvrpcpb::RawBatchPutResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn raw_delete(
        &self,
        _: Request<kvrpcpb::RawDeleteRequest>,
    ) -> Answered<kvrpcpb::RawDeleteResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn raw_delete_range(
        &self,
        _: Request<kvrpcpb::RawDeleteRangeRequest>,
    ) -> Answered<kvrpcpb::RawDeleteRangeResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn raw_scan(
        &self,
        _: Request<kvrpcpb::RawScanRequest>,
    ) -> Answered<kvrpcpb::RawScanResponse> {
        Err(Status::unimplemented("fake"))
    }
    /// A scripted value is the value found: the swap is refused.
    async fn raw_compare_and_swap(
        &self,
        req: Request<kvrpcpb::RawCasRequest>,
    ) -> Answered<kvrpcpb::RawCasResponse> {
        let (previous_value, region_error) = self.answer(req.into_inner().context)?;
        Ok(Response::new(kvrpcpb::RawCasResponse {
            succeed: false,
            previous_value,
            region_error,
            ..Default::default()
        }))
    }
    async fn split_region(
        &self,
        _: Request<kvrpcpb::SplitRegionRequest>,
    ) -> Answered<kvrpcpb::SplitRegionResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn region_checksum(
        &self,
        _: Request<kvrpcpb::RegionChecksumRequest>,
    ) -> Answered<kvrpcpb::RegionChecksumResponse> {
        Err(Status::unimplemented("fake"))
    }

    type BatchCommandsStream =
        concord_common::batch_stream::BatchStream<kvrpcpb::BatchCommandsResponse>;

    async fn batch_commands(
        &self,
        req: Request<tonic::Streaming<kvrpcpb::BatchCommandsRequest>>,
    ) -> Answered<Self::BatchCommandsStream> {
        Ok(Response::new(concord_common::kv_batch::serve(
            self.clone(),
            req.into_inner(),
            &Default::default(),
        )))
    }
}

/// A fake PD with fixed regions and store addresses.
struct FakePd {
    regions: Mutex<Vec<RegionInfo>>,
    stores: HashMap<u64, String>,
    /// Stores PD reports as removed.
    tombstones: Mutex<Vec<u64>>,
    region_lookups: AtomicU64,
}

#[tonic::async_trait]
impl RegionSource for FakePd {
    async fn region_by_key(&self, key: &[u8]) -> PdResult<RegionInfo> {
        self.region_lookups.fetch_add(1, Ordering::SeqCst);
        let regions = self.regions.lock().expect("regions");
        regions
            .iter()
            .find(|r| {
                key >= r.region.start_key.as_slice()
                    && (r.region.end_key.is_empty() || key < r.region.end_key.as_slice())
            })
            .cloned()
            .ok_or_else(|| PdError::Unreachable {
                addresses: "fake".into(),
                reason: "no region".into(),
            })
    }

    async fn scan_regions(&self, _: &[u8], _: &[u8], _: u32) -> PdResult<Vec<RegionInfo>> {
        self.region_lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.regions.lock().expect("regions").clone())
    }

    async fn store(&self, store_id: u64) -> PdResult<metapb::Store> {
        let mut store = metapb::Store {
            id: store_id,
            address: self.stores.get(&store_id).cloned().unwrap_or_default(),
            ..Default::default()
        };
        if self
            .tombstones
            .lock()
            .expect("tombstones")
            .contains(&store_id)
        {
            store.set_state(metapb::StoreState::Tombstone);
        }
        Ok(store)
    }
}

fn peer(store_id: u64) -> metapb::Peer {
    metapb::Peer {
        id: 100 + store_id,
        store_id,
        role: metapb::PeerRole::Voter as i32,
    }
}

fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> metapb::Region {
    metapb::Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        region_epoch: Some(metapb::RegionEpoch {
            conf_ver: 1,
            version,
        }),
        peers: (1..=3).map(peer).collect(),
    }
}

struct Setup {
    router: Router,
    pd: Arc<FakePd>,
    calls: HashMap<u64, Arc<AtomicU64>>,
}

impl Setup {
    fn calls(&self, store: u64) -> u64 {
        self.calls[&store].load(Ordering::SeqCst)
    }
}

/// Stores 1 and 2 run `script`; store 3's address refuses connections.
/// PD says region 1 covers everything, led by the peer on `leader_store`.
async fn setup(leader_store: u64, script: Script) -> Setup {
    let mut stores = HashMap::new();
    let mut calls = HashMap::new();
    for id in [1u64, 2] {
        let counter = Arc::new(AtomicU64::new(0));
        let addr = common::serve_fake_store(FakeStore {
            id,
            script: script.clone(),
            calls: counter.clone(),
        })
        .await;
        stores.insert(id, addr.to_string());
        calls.insert(id, counter);
    }
    // A port nobody listens on (bound, then released).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    stores.insert(3, closed.to_string());
    calls.insert(3, Arc::new(AtomicU64::new(0)));
    let pd = Arc::new(FakePd {
        regions: Mutex::new(vec![RegionInfo {
            region: region(1, b"", b"", 1),
            leader: Some(peer(leader_store)),
        }]),
        stores,
        tombstones: Mutex::new(Vec::new()),
        region_lookups: AtomicU64::new(0),
    });
    let config = RoutingConfig {
        backoff: BackoffConfig {
            base: Duration::from_millis(5),
            max: Duration::from_millis(50),
            total: Duration::from_secs(3),
        },
        rpc_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        ..RoutingConfig::default()
    };
    Setup {
        router: Router::with_source(pd.clone(), config),
        pd,
        calls,
    }
}

#[tokio::test]
async fn not_leader_with_a_hint_switches_to_that_leader_for_good() {
    let s = setup(
        1,
        Arc::new(|store, _, _| match store {
            1 => Answer::RegionError(Kind::NotLeader(errorpb::NotLeader {
                region_id: 1,
                leader: Some(peer(2)),
            })),
            _ => Answer::Value(b"from 2".to_vec()),
        }),
    )
    .await;
    assert_eq!(s.router.get(b"k").await, Ok(Some(b"from 2".to_vec())));
    assert_eq!(s.router.get(b"k").await, Ok(Some(b"from 2".to_vec())));
    assert_eq!((s.calls(1), s.calls(2)), (1, 2));
    assert_eq!(s.router.metrics().retries(RetryReason::NotLeader), 1);
}

#[tokio::test]
async fn epoch_not_match_installs_the_new_regions_without_asking_pd() {
    let s = setup(
        2,
        Arc::new(|_, _, ctx: &Context| {
            let version = ctx.region_epoch.map_or(0, |e| e.version);
            if version < 2 {
                Answer::RegionError(Kind::EpochNotMatch(errorpb::EpochNotMatch {
                    current_regions: vec![region(1, b"", b"m", 2), region(7, b"m", b"", 2)],
                }))
            } else {
                Answer::Value(format!("region {}", ctx.region_id).into_bytes())
            }
        }),
    )
    .await;
    assert_eq!(s.router.get(b"a").await, Ok(Some(b"region 1".to_vec())));
    assert_eq!(s.router.get(b"x").await, Ok(Some(b"region 7".to_vec())));
    assert_eq!(s.pd.region_lookups.load(Ordering::SeqCst), 1);
    assert_eq!(s.router.metrics().retries(RetryReason::EpochNotMatch), 1);
    assert_eq!(s.router.region_cache().len(), 2);
}

#[tokio::test]
async fn server_is_busy_is_retried_after_its_backoff() {
    let s = setup(
        1,
        Arc::new(|_, call, _| {
            if call == 1 {
                Answer::RegionError(Kind::ServerIsBusy(errorpb::ServerIsBusy {
                    reason: "scripted".into(),
                    backoff_ms: 20,
                }))
            } else {
                Answer::Value(b"ok".to_vec())
            }
        }),
    )
    .await;
    assert_eq!(s.router.get(b"k").await, Ok(Some(b"ok".to_vec())));
    assert_eq!(s.calls(1), 2);
    assert_eq!(s.router.metrics().retries(RetryReason::ServerIsBusy), 1);
}

/// PD names the peer on store 3 as leader, but store 3 cannot serve (its
/// address refuses connections, or PD reports it `removed`): the router
/// avoids it, reloads the region and gets its answer from store 1.
async fn a_leader_store_that_cannot_serve_is_avoided(removed: bool) {
    let s = setup(3, Arc::new(|_, _, _| Answer::Value(b"served".to_vec()))).await;
    if removed {
        s.pd.tombstones.lock().unwrap().push(3);
    }
    assert_eq!(s.router.get(b"k").await, Ok(Some(b"served".to_vec())));
    assert!(s.router.metrics().retries(RetryReason::StoreNotConnected) >= 1);
    assert!(
        s.pd.region_lookups.load(Ordering::SeqCst) >= 2,
        "region not reloaded"
    );
    assert_eq!(s.calls(1), 1);
}

#[tokio::test]
async fn an_unreachable_leader_store_is_avoided_and_the_region_reloaded() {
    // PD still names the dead store's peer as leader; store 1 knows better.
    a_leader_store_that_cannot_serve_is_avoided(false).await;
}

#[tokio::test]
async fn a_leader_on_a_removed_store_is_avoided_and_the_region_reloaded() {
    // Store 3 was removed (tombstone, as the chaos remove-store scenario
    // does): the router must not keep asking PD for its address until the
    // budget runs out.
    a_leader_store_that_cannot_serve_is_avoided(true).await;
}

#[tokio::test]
async fn when_nothing_helps_the_caller_gets_one_clear_error_in_budget() {
    let s = setup(
        1,
        Arc::new(|_, _, _| Answer::RegionError(Kind::StaleCommand(errorpb::StaleCommand {}))),
    )
    .await;
    let err = s.router.get(b"k").await.expect_err("never succeeds");
    let Error::Unavailable(msg) = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(msg.starts_with("get gave up after"), "{msg}");
    assert!(msg.contains("stale command"), "{msg}");
    assert!(s.calls(1) > 3);
}

#[tokio::test]
async fn invalid_argument_from_a_store_is_final() {
    let s = setup(
        1,
        Arc::new(|_, _, _| Answer::Status(Status::invalid_argument("key must not be empty"))),
    )
    .await;
    assert_eq!(
        s.router.get(b"k").await,
        Err(Error::InvalidArgument("key must not be empty".into()))
    );
    assert_eq!(s.calls(1), 1);
}

#[tokio::test]
async fn a_write_whose_attempt_may_have_applied_is_not_retried() {
    // The link fails after the request went out: it may have been applied,
    // and sending it again could apply it twice (undoing a newer write in
    // between). The caller learns that the outcome is unknown.
    let s = setup(
        1,
        Arc::new(|_, _, _| Answer::Status(Status::unavailable("connection reset"))),
    )
    .await;
    let answer = s
        .router
        .compare_and_swap(b"k", Some(b"old"), b"new", 0)
        .await;
    assert!(
        matches!(&answer, Err(Error::Unavailable(m)) if m.contains("outcome unknown")),
        "{answer:?}"
    );
    assert_eq!((s.calls(1), s.calls(2)), (1, 0), "sent once, not retried");
    // A read is retried as usual.
    assert!(s.router.get(b"k").await.is_err());
    assert!(s.calls(1) + s.calls(2) > 2);
}

#[tokio::test]
async fn a_write_refused_before_it_was_sent_is_retried() {
    // Store 3 refuses connections: nothing was sent, so trying the next
    // peer is safe; so is retrying after a NotLeader.
    let s = setup(
        3,
        Arc::new(|store, _, _| match store {
            1 => Answer::RegionError(Kind::NotLeader(errorpb::NotLeader {
                region_id: 1,
                leader: Some(peer(2)),
            })),
            _ => Answer::Value(b"other".to_vec()),
        }),
    )
    .await;
    let answer = s
        .router
        .compare_and_swap(b"k", Some(b"old"), b"new", 0)
        .await
        .expect("a definite answer");
    assert!(!answer.succeed);
    assert_eq!(answer.previous, Some(b"other".to_vec()));
    assert!(s.router.metrics().retries(RetryReason::StoreNotConnected) >= 1);
}
