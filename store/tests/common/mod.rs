//! The in-process test cluster: N stores in one process over real engines in
//! temporary directories, a mock PD, and a transport with filters that drop
//! traffic to model partitions and isolated stores.

#![allow(dead_code)]

pub mod mock_pd;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::kvrpcpb::Context;
use concord_proto::metapb;
use concord_proto::raft_serverpb::RaftMessage;
use concord_store::engine::{Engine, EngineConfig};
use concord_store::kv::KvApi;
use concord_store::raftstore::msg::PeerMsg;
use concord_store::raftstore::store::{
    deliver_raft_message, write_first_region, write_store_ident,
};
use concord_store::raftstore::{CmdError, RaftStoreConfig, Store, StoreServices, Transport};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::MessageType;

pub use mock_pd::MockPd;

/// Which store-to-store links are cut.
#[derive(Clone, Debug)]
pub enum Filter {
    /// Every message to or from this store is dropped.
    Isolate(u64),
    /// Messages between the two sides are dropped.
    Partition(Vec<u64>, Vec<u64>),
    /// Messages to this store are dropped; its own messages go out.
    DropTo(u64),
    /// Messages to or from this store arrive this much later.
    Delay(u64, Duration),
}

impl Filter {
    fn drops(&self, from: u64, to: u64) -> bool {
        match self {
            Filter::Isolate(s) => from == *s || to == *s,
            Filter::Partition(a, b) => {
                (a.contains(&from) && b.contains(&to)) || (b.contains(&from) && a.contains(&to))
            }
            Filter::DropTo(s) => to == *s,
            Filter::Delay(..) => false,
        }
    }

    fn delay(&self, from: u64, to: u64) -> Option<Duration> {
        match self {
            Filter::Delay(s, d) if from == *s || to == *s => Some(*d),
            _ => None,
        }
    }
}

/// Delivers messages straight to the destination store, unless a filter cuts
/// the link.
#[derive(Default)]
pub struct TestTransport {
    stores: RwLock<HashMap<u64, StoreServices>>,
    filters: RwLock<Vec<Filter>>,
    /// Raft messages handed to the transport so far.
    pub sent: std::sync::atomic::AtomicU64,
}

impl Transport for TestTransport {
    fn send_snapshot(&self, store_id: u64, mut msg: RaftMessage, data: bytes::Bytes) {
        // In process the payload goes back into the message.
        let mut m = raft::eraftpb::Message::parse_from_bytes(&msg.message).unwrap();
        m.mut_snapshot().data = data;
        msg.message = m.write_to_bytes().unwrap();
        self.send(store_id, vec![msg]);
    }

    fn send(&self, store_id: u64, msgs: Vec<RaftMessage>) {
        self.sent
            .fetch_add(msgs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let stores = self.stores.read();
        for msg in msgs {
            let from = msg.from_peer.map_or(0, |p| p.store_id);
            let cut = self.filters.read().iter().any(|f| f.drops(from, store_id));
            let target = stores.get(&store_id).filter(|_| !cut);
            let is_snapshot = raft::eraftpb::Message::parse_from_bytes(&msg.message)
                .is_ok_and(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let (region_id, to_peer_id) = (msg.region_id, msg.to_peer.map_or(0, |p| p.id));
            let delivered = target.is_some();
            let delay = self
                .filters
                .read()
                .iter()
                .find_map(|f| f.delay(from, store_id));
            match (target, delay) {
                (Some(target), Some(delay)) => {
                    let target = target.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        deliver_raft_message(&target, msg);
                    });
                }
                (Some(target), None) => deliver_raft_message(target, msg),
                (None, _) => {}
            }
            if is_snapshot {
                if let Some(sender) = stores.get(&from) {
                    let _ = sender.router.send(
                        region_id,
                        PeerMsg::SnapshotStatus {
                            to_peer_id,
                            delivered,
                        },
                    );
                }
            }
        }
    }
}

/// N stores in one process.
pub struct Cluster {
    pub rt: tokio::runtime::Runtime,
    pub pd: Arc<MockPd>,
    pub transport: Arc<TestTransport>,
    pub cfg: RaftStoreConfig,
    dirs: HashMap<u64, tempfile::TempDir>,
    stores: HashMap<u64, Store>,
}

/// Settings that make tests fast: short ticks and tiny limits.
pub fn test_config() -> RaftStoreConfig {
    RaftStoreConfig {
        tick_interval: Duration::from_millis(20),
        raft_log_gc_threshold: 50,
        raft_log_gc_max_lag: 200,
        housekeeping_ticks: 5,
        ..RaftStoreConfig::default()
    }
}

/// Polls `f` until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub const FIRST_REGION: u64 = 1;

impl Cluster {
    /// Starts `n` stores (ids 1..=n) sharing region 1 over the whole key space,
    /// with peers on `region_stores`.
    pub fn new(n: u64, region_stores: &[u64], cfg: RaftStoreConfig) -> Cluster {
        concord_common::init_logging();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pd = Arc::new(MockPd::new(1000));
        let region = metapb::Region {
            id: FIRST_REGION,
            start_key: vec![],
            end_key: vec![],
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: region_stores
                .iter()
                .map(|s| metapb::Peer {
                    id: 100 + s,
                    store_id: *s,
                    role: 0,
                })
                .collect(),
        };
        let mut dirs = HashMap::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
            write_store_ident(&engine, id).unwrap();
            if region_stores.contains(&id) {
                write_first_region(&engine, &region).unwrap();
            }
            dirs.insert(id, dir);
        }
        pd.set_bootstrapped(region);
        let mut cluster = Cluster {
            rt,
            pd,
            transport: Arc::new(TestTransport::default()),
            cfg,
            dirs,
            stores: HashMap::new(),
        };
        for id in 1..=n {
            cluster.start_store(id);
        }
        cluster
    }

    pub fn start_store(&mut self, id: u64) {
        let engine = Engine::open(self.dirs[&id].path(), &EngineConfig::default()).unwrap();
        let _guard = self.rt.enter();
        let store = Store::start(
            engine,
            self.cfg.clone(),
            self.pd.clone(),
            self.transport.clone(),
        )
        .unwrap();
        self.transport
            .stores
            .write()
            .insert(id, store.services().clone());
        self.stores.insert(id, store);
    }

    pub fn stop_store(&mut self, id: u64) {
        self.transport.stores.write().remove(&id);
        let store = self.stores.remove(&id).expect("store is running");
        self.rt.block_on(store.shutdown());
    }

    pub fn add_filter(&self, f: Filter) {
        self.transport.filters.write().push(f);
    }

    pub fn clear_filters(&self) {
        self.transport.filters.write().clear();
    }

    pub fn services(&self, store: u64) -> &StoreServices {
        self.stores[&store].services()
    }

    pub fn api(&self, store: u64) -> KvApi {
        KvApi::new(self.services(store))
    }

    pub fn store_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.stores.keys().copied().collect();
        ids.sort();
        ids
    }

    /// The store whose peer leads `region_id`, if any claims to.
    pub fn leader_of(&self, region_id: u64) -> Option<u64> {
        self.store_ids()
            .into_iter()
            .find(|s| self.services(*s).meta.lock().leaders.contains(&region_id))
    }

    pub fn wait_leader(&self, region_id: u64) -> u64 {
        let mut leader = None;
        assert!(
            wait_for(Duration::from_secs(10), || {
                leader = self.leader_of(region_id);
                leader.is_some()
            }),
            "region {region_id} has no leader"
        );
        leader.unwrap()
    }

    /// The region as `store` knows it.
    pub fn region_on(&self, store: u64, region_id: u64) -> Option<metapb::Region> {
        self.services(store).meta.lock().region(region_id).cloned()
    }

    /// A request context for `region` sent to its peer on `store`.
    pub fn context(&self, store: u64, region: &metapb::Region) -> Context {
        Context {
            region_id: region.id,
            region_epoch: region.region_epoch,
            peer: region.peers.iter().find(|p| p.store_id == store).copied(),
        }
    }

    /// Runs `op` against the leader of the region holding `key` until it
    /// succeeds or `timeout` passes, following leader changes and splits.
    pub fn with_leader<T, F, Fut>(
        &self,
        key: &[u8],
        timeout: Duration,
        mut op: F,
    ) -> Result<T, CmdError>
    where
        F: FnMut(KvApi, Context) -> Fut,
        Fut: std::future::Future<Output = Result<T, CmdError>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let target = self.store_ids().into_iter().find_map(|s| {
                let meta = self.services(s).meta.lock();
                let region = meta.region_by_key(key)?.clone();
                meta.leaders.contains(&region.id).then_some((s, region))
            });
            let result = match target {
                Some((store, region)) => {
                    let ctx = self.context(store, &region);
                    self.rt.block_on(op(self.api(store), ctx))
                }
                None => Err(CmdError::Internal("no leader yet".into())),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(CmdError::InvalidArgument(m)) => return Err(CmdError::InvalidArgument(m)),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Runs `op` on the leader of `region_id` with a context for that
    /// leader's view of the region, retrying while leadership moves.
    pub fn on_leader<T, F, Fut>(&self, region_id: u64, mut op: F) -> Result<T, CmdError>
    where
        F: FnMut(KvApi, Context) -> Fut,
        Fut: std::future::Future<Output = Result<T, CmdError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = self.wait_leader(region_id);
            let Some(region) = self.region_on(leader, region_id) else {
                continue;
            };
            let ctx = self.context(leader, &region);
            match self.rt.block_on(op(self.api(leader), ctx)) {
                Err(CmdError::Region(e))
                    if matches!(
                        e.kind,
                        Some(concord_proto::errorpb::error::Kind::NotLeader(_))
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    /// Starts a put of `key` = `value` on `store` with `ctx` and does not
    /// wait for it (the caller awaits the handle).
    pub fn spawn_put(
        &self,
        store: u64,
        ctx: Context,
        key: &'static [u8],
        value: &'static [u8],
    ) -> tokio::task::JoinHandle<Result<(), CmdError>> {
        let api = self.api(store);
        self.rt
            .spawn(async move { api.raw_put(&ctx, key, value, 0).await })
    }

    pub fn must_put(&self, key: &[u8], value: &[u8]) {
        let (k, v) = (key.to_vec(), value.to_vec());
        self.with_leader(key, Duration::from_secs(20), |api, ctx| {
            let (k, v) = (k.clone(), v.clone());
            async move { api.raw_put(&ctx, &k, &v, 0).await }
        })
        .unwrap_or_else(|e| panic!("put {key:?} failed: {e}"));
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
        let k = key.to_vec();
        self.with_leader(key, Duration::from_secs(20), |api, ctx| {
            let k = k.clone();
            async move { api.raw_get(&ctx, &k).await }
        })
    }

    pub fn must_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get(key)
            .unwrap_or_else(|e| panic!("get {key:?} failed: {e}"))
    }

    /// Sends `msg` to the peer of `region_id` on `store`.
    pub fn send(&self, store: u64, region_id: u64, msg: PeerMsg) {
        assert!(
            self.services(store).router.send(region_id, msg).is_ok(),
            "no peer of {region_id} on {store}"
        );
    }

    /// Stops every store.
    pub fn shutdown(mut self) {
        for id in self.store_ids() {
            self.stop_store(id);
        }
    }
}
