//! The PD core: cluster metadata (bootstrap state, stores, regions) kept in
//! memory and persisted in [`MetaStorage`], plus the id allocator and the
//! timestamp oracle. Every method is synchronous and may write to disk; async
//! callers run them on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_proto::{metapb, pdpb};
use parking_lot::{Mutex, RwLock};

use crate::config::PdConfig;
use crate::error::{PdServerError, Result};
use crate::http_api::hex;
use crate::id_alloc::IdAllocator;
use crate::members::Membership;
use crate::metrics::{Gauges, Metrics};
use crate::operator::{OpKind, OpProgress, OpStep, Operator};
use crate::region_tree::{RegionEntry, RegionStats, RegionTree};
use crate::replication::Replicator;
use crate::schedule::{self, ScheduleConfig, Snapshot, StoreView};
use crate::storage::{MetaBatch, MetaStorage};
use crate::tso::TsoOracle;

/// Where a store's operator steps are pushed: its region heartbeat stream.
pub type StepSender = tokio::sync::mpsc::UnboundedSender<pdpb::RegionHeartbeatResponse>;

/// A store's metadata and its last reported load.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreInfo {
    /// Address, labels, state.
    pub meta: metapb::Store,
    /// The last store heartbeat's figures.
    pub stats: Option<pdpb::StoreStats>,
    /// When the last heartbeat arrived.
    pub last_heartbeat: Option<SystemTime>,
    /// When this PD first saw the store (registration or PD start); the
    /// reference for down detection until the first heartbeat.
    pub known_since: SystemTime,
}

/// A store's state as displayed: the persisted state, or `Down` for an Up
/// or Offline store silent for longer than `max-store-down-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoreStatus {
    /// Serving.
    Up,
    /// Being drained before removal.
    Offline,
    /// Not heard from for longer than `max-store-down-time`.
    Down,
    /// Removed for good.
    Tombstone,
}

impl StoreStatus {
    /// The display name.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreStatus::Up => "Up",
            StoreStatus::Offline => "Offline",
            StoreStatus::Down => "Down",
            StoreStatus::Tombstone => "Tombstone",
        }
    }
}

impl StoreInfo {
    /// Time since the last heartbeat (or since PD learnt of the store).
    pub fn silent_for(&self, now: SystemTime) -> Duration {
        let since = self.last_heartbeat.unwrap_or(self.known_since);
        now.duration_since(since).unwrap_or_default()
    }

    /// The displayed state at `now`.
    pub fn status(&self, now: SystemTime, max_down: Duration) -> StoreStatus {
        match self.meta.state() {
            metapb::StoreState::Tombstone => StoreStatus::Tombstone,
            _ if self.silent_for(now) > max_down => StoreStatus::Down,
            metapb::StoreState::Offline => StoreStatus::Offline,
            metapb::StoreState::Up => StoreStatus::Up,
        }
    }
}

/// An operator requested by an administrator (`pd-ctl operator add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOp {
    /// Move the region's leadership to its peer on `store_id`.
    TransferLeader {
        /// The region.
        region_id: u64,
        /// Store of the new leader.
        store_id: u64,
    },
    /// Place the region's replicas on exactly `store_ids` (the first leads
    /// if the current leader's store is not among them).
    TransferRegion {
        /// The region.
        region_id: u64,
        /// Target stores.
        store_ids: Vec<u64>,
    },
    /// Add a replica on `store_id`.
    AddPeer {
        /// The region.
        region_id: u64,
        /// Target store.
        store_id: u64,
    },
    /// Remove the replica on `store_id`.
    RemovePeer {
        /// The region.
        region_id: u64,
        /// Store whose replica goes.
        store_id: u64,
    },
    /// Split the region at `keys` (empty: the store picks the middle).
    Split {
        /// The region.
        region_id: u64,
        /// Split keys.
        keys: Vec<Vec<u8>>,
    },
}

impl AdminOp {
    /// The region the operator changes.
    pub fn region_id(&self) -> u64 {
        match self {
            AdminOp::TransferLeader { region_id, .. }
            | AdminOp::TransferRegion { region_id, .. }
            | AdminOp::AddPeer { region_id, .. }
            | AdminOp::RemovePeer { region_id, .. }
            | AdminOp::Split { region_id, .. } => *region_id,
        }
    }
}

/// What PD did with a region heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionUpdate {
    /// The report was older than what PD knows and was ignored.
    Stale,
    /// Leader and figures were refreshed; range, epoch and peers unchanged.
    Refreshed,
    /// The region's metadata changed and was persisted.
    Changed,
}

struct Meta {
    bootstrapped: bool,
    stores: BTreeMap<u64, StoreInfo>,
    regions: RegionTree,
}

/// The placement driver's state.
pub struct Cluster {
    storage: MetaStorage,
    config: PdConfig,
    cluster: metapb::Cluster,
    meta: RwLock<Meta>,
    ids: Mutex<IdAllocator>,
    /// Started when this member takes over as leader.
    tso: Mutex<Option<TsoOracle>>,
    operators: Mutex<HashMap<u64, Operator>>,
    /// Per store, the region heartbeat stream it last used: a new
    /// operator's first step is pushed there at once, so a region that
    /// hibernates (and heartbeats rarely) starts it without delay.
    step_streams: Mutex<HashMap<u64, StepSender>>,
    schedule: RwLock<ScheduleConfig>,
    metrics: Metrics,
    started_at: SystemTime,
    /// The raft term this member took over as leader in (0: never).
    serving_term: Mutex<u64>,
}

fn new_cluster_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    // Seconds in the high bits, entropy from the clock and pid below.
    (nanos / 1_000_000_000) << 32 | ((nanos ^ u64::from(std::process::id())) & 0xffff_ffff) | 1
}

fn check_epoch_present(region: &metapb::Region) -> Result<()> {
    if region.id == 0 {
        return Err(PdServerError::InvalidArgument("region id is 0".into()));
    }
    if region.region_epoch.is_none() {
        return Err(PdServerError::InvalidArgument(format!(
            "region {} has no epoch",
            region.id
        )));
    }
    if !region.end_key.is_empty() && region.start_key >= region.end_key {
        return Err(PdServerError::InvalidArgument(format!(
            "region {} has an empty or inverted range",
            region.id
        )));
    }
    Ok(())
}

/// How long a single-member PD may take to elect itself.
const SINGLE_MEMBER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a member waiting for the cluster record looks again.
const CLUSTER_RECORD_POLL: Duration = Duration::from_secs(5);

fn load_meta(storage: &MetaStorage, now: SystemTime) -> Result<Meta> {
    let stores = storage
        .load_stores()?
        .into_iter()
        .map(|meta| {
            let info = StoreInfo {
                meta,
                stats: None,
                last_heartbeat: None,
                known_since: now,
            };
            (info.meta.id, info)
        })
        .collect();
    let mut regions = RegionTree::default();
    for region in storage.load_regions()? {
        regions.insert(RegionEntry {
            region,
            leader: None,
            stats: RegionStats::default(),
        });
    }
    Ok(Meta {
        bootstrapped: storage.is_bootstrapped()?,
        stores,
        regions,
    })
}

fn load_schedule(storage: &MetaStorage, config: &PdConfig) -> Result<ScheduleConfig> {
    Ok(match storage.load_schedule_config()? {
        Some(saved) => {
            tracing::info!(
                "scheduling configuration restored from the metadata store; \
                 change it with `pd-ctl config set`"
            );
            saved
        }
        None => ScheduleConfig {
            max_replicas: config.max_replicas as usize,
            max_store_down_time: Duration::from_secs(config.max_store_down_time_secs),
            region_limit: config.region_schedule_limit,
            leader_limit: config.leader_schedule_limit,
            location_labels: config.location_labels.clone(),
            ..ScheduleConfig::default()
        },
    })
}

impl Cluster {
    /// Opens the metadata under `config.data_dir` as a single-member PD
    /// (its own one-member raft group), creating a new cluster id on first
    /// start and reloading stores, regions and allocators after. Returns
    /// once this member serves.
    pub fn open(config: &PdConfig) -> Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)?;
        let members = Membership::new(config, &config.addr, &config.http_addr, &config.peer_addr)?;
        let storage = MetaStorage::open_replicated(
            &config.data_dir,
            Arc::new(members),
            config.raft_settings(),
            None,
        )?;
        Self::open_on(config, storage)
    }

    /// The PD over an opened (possibly replicated) metadata store. Waits
    /// until the group has a cluster record, creating it when this member
    /// leads a group without one; takes over at once if it leads (a
    /// single-member PD always does before this returns).
    pub fn open_on(config: &PdConfig, storage: MetaStorage) -> Result<Self> {
        config.validate()?;
        let cluster = Self::wait_for_cluster_record(&storage)?;
        let now = SystemTime::now();
        let meta = load_meta(&storage, now)?;
        let schedule = load_schedule(&storage, config)?;
        let ids = IdAllocator::load(&storage, config.id_batch)?;
        let opened = Cluster {
            storage,
            config: config.clone(),
            cluster,
            meta: RwLock::new(meta),
            ids: Mutex::new(ids),
            tso: Mutex::new(None),
            operators: Mutex::new(HashMap::new()),
            step_streams: Mutex::new(HashMap::new()),
            schedule: RwLock::new(schedule),
            metrics: Metrics::default(),
            started_at: now,
            serving_term: Mutex::new(0),
        };
        if opened.replication().members().voters().len() == 1 {
            let status = opened
                .replication()
                .wait_status(SINGLE_MEMBER_READY_TIMEOUT, |s| s.leader_ready);
            if !status.leader_ready {
                return Err(PdServerError::Replication(
                    "a single-member PD did not become leader".into(),
                ));
            }
        }
        match opened.ensure_leader() {
            Ok(()) => Ok(opened),
            Err(PdServerError::NotLeader { .. })
                if opened.replication().members().voters().len() > 1 =>
            {
                Ok(opened)
            }
            Err(e) => Err(e),
        }
    }

    fn wait_for_cluster_record(storage: &MetaStorage) -> Result<metapb::Cluster> {
        let mut waited_since = Instant::now();
        loop {
            if let Some(cluster) = storage.load_cluster()? {
                return Ok(cluster);
            }
            let before = storage.replicator().status();
            if before.leader_ready {
                let cluster = metapb::Cluster {
                    id: new_cluster_id(),
                    max_peer_count: 0,
                };
                match storage.save_cluster(&cluster) {
                    Ok(()) => return Ok(cluster),
                    Err(PdServerError::NotLeader { .. } | PdServerError::Replication(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let status = storage.replicator().wait_status(CLUSTER_RECORD_POLL, |s| {
                s.leader_ready || s.applied != before.applied
            });
            if status.stopped {
                return Err(PdServerError::Replication(
                    "the raft thread stopped before the cluster record arrived".into(),
                ));
            }
            if waited_since.elapsed() >= CLUSTER_RECORD_POLL * 2 {
                tracing::info!(
                    leader_id = status.leader_id,
                    "waiting for the PD group to elect a leader and agree on the cluster"
                );
                waited_since = Instant::now();
            }
        }
    }

    /// Serves as leader if this member leads the raft group: on the first
    /// call in a new term, reloads stores, regions and the scheduling
    /// configuration from the replicated metadata and restarts the id
    /// allocator and the TSO past their replicated high-water marks.
    /// Otherwise answers [`PdServerError::NotLeader`] with the leader.
    pub fn ensure_leader(&self) -> Result<()> {
        let status = self.replication().status();
        if !status.leader_ready {
            return Err(self.replication().not_leader());
        }
        let mut serving = self.serving_term.lock();
        if *serving == status.term {
            return Ok(());
        }
        tracing::info!(term = status.term, name = %self.config.name, "PD member takes over as leader");
        self.take_over()?;
        *serving = status.term;
        Ok(())
    }

    fn take_over(&self) -> Result<()> {
        if let Some(mut record) = self.storage.load_cluster()? {
            if record.max_peer_count != self.config.max_replicas {
                record.max_peer_count = self.config.max_replicas;
                self.storage.save_cluster(&record)?;
            }
        }
        let meta = load_meta(&self.storage, SystemTime::now())?;
        let schedule = load_schedule(&self.storage, &self.config)?;
        let ids = IdAllocator::load(&self.storage, self.config.id_batch)?;
        let tso = TsoOracle::load(&self.storage, self.config.tso_save_window_ms)?;
        *self.meta.write() = meta;
        *self.schedule.write() = schedule;
        *self.ids.lock() = ids;
        *self.tso.lock() = Some(tso);
        self.operators.lock().clear();
        Ok(())
    }

    /// This member's raft node (status, leader, members).
    pub fn replication(&self) -> &Replicator {
        self.storage.replicator()
    }

    /// This member's own copy of the metadata, as far as it has applied
    /// the log (on a follower too).
    pub fn local_metadata(&self) -> &MetaStorage {
        &self.storage
    }

    /// Stops replicating: this member goes silent to the group.
    pub fn stop_replication(&self) {
        self.replication().stop();
    }

    /// This cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.id
    }

    /// The cluster record.
    pub fn cluster_meta(&self) -> metapb::Cluster {
        self.cluster
    }

    /// The configuration PD runs with.
    pub fn config(&self) -> &PdConfig {
        &self.config
    }

    /// PD's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// When this PD started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// How long a store may stay silent before it is Down.
    pub fn max_store_down_time(&self) -> Duration {
        self.schedule.read().max_store_down_time
    }

    /// The scheduling configuration in force.
    pub fn schedule_config(&self) -> ScheduleConfig {
        self.schedule.read().clone()
    }

    /// Changes the scheduling configuration (e.g. from `pd-ctl config set`)
    /// durably: once changed, the persisted configuration is used on restart
    /// instead of the file and flags.
    pub fn update_schedule_config(&self, change: impl FnOnce(&mut ScheduleConfig)) -> Result<()> {
        let mut current = self.schedule.write();
        let mut updated = current.clone();
        change(&mut updated);
        self.storage.save_schedule_config(&updated)?;
        *current = updated;
        Ok(())
    }

    /// Whether the cluster was bootstrapped.
    pub fn is_bootstrapped(&self) -> bool {
        self.meta.read().bootstrapped
    }

    fn require_bootstrapped(meta: &Meta) -> Result<()> {
        if meta.bootstrapped {
            Ok(())
        } else {
            Err(PdServerError::NotBootstrapped)
        }
    }

    /// Bootstraps the cluster with its first store and the region covering
    /// the whole key space, with one peer on that store.
    pub fn bootstrap(&self, store: metapb::Store, region: metapb::Region) -> Result<()> {
        let mut meta = self.meta.write();
        if meta.bootstrapped {
            return Err(PdServerError::AlreadyBootstrapped);
        }
        if store.id == 0 || store.address.is_empty() {
            return Err(PdServerError::InvalidArgument(
                "bootstrap store needs an id and an address".into(),
            ));
        }
        check_epoch_present(&region)?;
        if !region.start_key.is_empty() || !region.end_key.is_empty() {
            return Err(PdServerError::InvalidArgument(
                "the first region must cover the whole key space".into(),
            ));
        }
        if region.peers.is_empty()
            || region
                .peers
                .iter()
                .any(|p| p.id == 0 || p.store_id != store.id)
        {
            return Err(PdServerError::InvalidArgument(format!(
                "the first region's peers must be on store {} and have ids",
                store.id
            )));
        }
        let mut store = store;
        store.set_state(metapb::StoreState::Up);
        let mut batch = MetaBatch::default();
        batch.put_store(&store);
        batch.put_region(&region);
        batch.mark_bootstrapped();
        self.storage.write(batch)?;
        meta.bootstrapped = true;
        let now = SystemTime::now();
        meta.stores.insert(
            store.id,
            StoreInfo {
                meta: store,
                stats: None,
                last_heartbeat: None,
                known_since: now,
            },
        );
        let leader = region.peers.first().cloned();
        meta.regions.insert(RegionEntry {
            region,
            leader,
            stats: RegionStats::default(),
        });
        Metrics::add(&self.metrics.region_updates, 1);
        Ok(())
    }

    /// A new cluster-unique id.
    pub fn alloc_id(&self) -> Result<u64> {
        let id = self.ids.lock().alloc(&self.storage, 1)?;
        Metrics::add(&self.metrics.ids_allocated, 1);
        Ok(id)
    }

    /// `count` consecutive timestamps; returns the last.
    pub fn tso(&self, count: u32) -> Result<pdpb::Timestamp> {
        let ts = {
            let mut tso = self.tso.lock();
            let oracle = tso
                .as_mut()
                .ok_or_else(|| self.replication().not_leader())?;
            oracle.next(&self.storage, count)?
        };
        Metrics::add(&self.metrics.tso_requests, 1);
        Metrics::add(&self.metrics.tso_timestamps, u64::from(count));
        Ok(ts)
    }

    /// Registers a new store or updates an existing one's address, labels
    /// and version. PD owns the state: an existing store keeps it, a new one
    /// starts Up, a Tombstone store is refused.
    pub fn put_store(&self, store: metapb::Store) -> Result<()> {
        let mut meta = self.meta.write();
        Self::require_bootstrapped(&meta)?;
        if store.id == 0 || store.address.is_empty() {
            return Err(PdServerError::InvalidArgument(
                "store needs an id and an address".into(),
            ));
        }
        if let Some(other) = meta.stores.values().find(|s| {
            s.meta.id != store.id
                && s.meta.address == store.address
                && s.meta.state() != metapb::StoreState::Tombstone
        }) {
            return Err(PdServerError::InvalidArgument(format!(
                "address {} is already used by store {}",
                store.address, other.meta.id
            )));
        }
        let mut updated = store;
        match meta.stores.get(&updated.id) {
            Some(old) if old.meta.state() == metapb::StoreState::Tombstone => {
                return Err(PdServerError::StoreTombstone(updated.id));
            }
            Some(old) => updated.state = old.meta.state,
            None => updated.set_state(metapb::StoreState::Up),
        }
        let mut batch = MetaBatch::default();
        batch.put_store(&updated);
        self.storage.write(batch)?;
        let now = SystemTime::now();
        let entry = meta.stores.entry(updated.id).or_insert_with(|| StoreInfo {
            meta: updated.clone(),
            stats: None,
            last_heartbeat: None,
            known_since: now,
        });
        entry.meta = updated;
        Ok(())
    }

    /// One store.
    pub fn get_store(&self, store_id: u64) -> Result<StoreInfo> {
        self.meta
            .read()
            .stores
            .get(&store_id)
            .cloned()
            .ok_or(PdServerError::StoreNotFound(store_id))
    }

    /// Every store, optionally without tombstones, by id.
    pub fn stores(&self, exclude_tombstone: bool) -> Vec<StoreInfo> {
        self.meta
            .read()
            .stores
            .values()
            .filter(|s| !exclude_tombstone || s.meta.state() != metapb::StoreState::Tombstone)
            .cloned()
            .collect()
    }

    /// Records a store's load report.
    pub fn store_heartbeat(&self, stats: pdpb::StoreStats) -> Result<()> {
        let mut meta = self.meta.write();
        Self::require_bootstrapped(&meta)?;
        let store = meta
            .stores
            .get_mut(&stats.store_id)
            .ok_or(PdServerError::StoreNotFound(stats.store_id))?;
        if store.meta.state() == metapb::StoreState::Tombstone {
            return Err(PdServerError::StoreTombstone(stats.store_id));
        }
        store.stats = Some(stats);
        store.last_heartbeat = Some(SystemTime::now());
        Metrics::add(&self.metrics.store_heartbeats, 1);
        Ok(())
    }

    /// Applies a region heartbeat from the region's leader.
    pub fn region_heartbeat(&self, hb: &pdpb::RegionHeartbeatRequest) -> Result<RegionUpdate> {
        let region = hb
            .region
            .as_ref()
            .ok_or_else(|| PdServerError::InvalidArgument("heartbeat without region".into()))?;
        check_epoch_present(region)?;
        let leader = hb
            .leader
            .as_ref()
            .ok_or_else(|| PdServerError::InvalidArgument("heartbeat without leader".into()))?;
        if !region.peers.iter().any(|p| p.id == leader.id) {
            return Err(PdServerError::InvalidArgument(format!(
                "leader peer {} is not a peer of region {}",
                leader.id, region.id
            )));
        }
        let update =
            self.apply_region(region, Some(*leader), Some(RegionStats::from_heartbeat(hb)))?;
        if update == RegionUpdate::Stale {
            Metrics::add(&self.metrics.stale_region_heartbeats, 1);
        } else {
            Metrics::add(&self.metrics.region_heartbeats, 1);
        }
        Ok(update)
    }

    /// Applies a region heartbeat and, when an operator runs on the region,
    /// returns its current step for the leader.
    pub fn region_heartbeat_with_operator(
        &self,
        hb: &pdpb::RegionHeartbeatRequest,
    ) -> Result<Option<pdpb::RegionHeartbeatResponse>> {
        if self.region_heartbeat(hb)? == RegionUpdate::Stale {
            return Ok(None);
        }
        let region_id = hb.region.as_ref().map_or(0, |r| r.id);
        Ok(self.operator_step(region_id))
    }

    /// The step the leader of `region_id` should take for its operator, if
    /// one runs; ends the operator when it is done, timed out or cancelled.
    fn operator_step(&self, region_id: u64) -> Option<pdpb::RegionHeartbeatResponse> {
        let entry = self.get_region_by_id(region_id)?;
        let mut operators = self.operators.lock();
        let op = operators.get_mut(&region_id)?;
        match op.check(&entry, Instant::now()) {
            OpProgress::Running(step) => {
                let mut step = *step;
                step.header = Some(pdpb::ResponseHeader {
                    cluster_id: self.cluster.id,
                    error: None,
                    leader: None,
                });
                Some(step)
            }
            progress => {
                tracing::info!(region_id, desc = %op.desc, ?progress, "operator ended");
                operators.remove(&region_id);
                None
            }
        }
    }

    /// Records the stream on which `store_id` sends region heartbeats, for
    /// pushing operator steps to it.
    pub fn register_step_stream(&self, store_id: u64, stream: StepSender) {
        self.step_streams.lock().insert(store_id, stream);
    }

    /// Sends the current step of `region_id`'s operator to its leader's
    /// store now instead of on the region's next heartbeat.
    fn push_step(&self, region_id: u64) {
        let Some(step) = self.operator_step(region_id) else {
            return;
        };
        // The step is addressed to the leader.
        let Some(store_id) = step.target_peer.map(|l| l.store_id) else {
            return;
        };
        let mut streams = self.step_streams.lock();
        if streams
            .get(&store_id)
            .is_some_and(|s| s.send(step).is_err())
        {
            streams.remove(&store_id);
        }
    }

    /// Starts an operator; refused if the region is unknown or already has
    /// one running.
    pub fn add_operator(&self, op: Operator) -> Result<()> {
        if self.get_region_by_id(op.region_id).is_none() {
            return Err(PdServerError::RegionNotFound(format!(
                "region {}",
                op.region_id
            )));
        }
        let mut operators = self.operators.lock();
        if operators.contains_key(&op.region_id) {
            return Err(PdServerError::InvalidArgument(format!(
                "region {} already has an operator",
                op.region_id
            )));
        }
        let region_id = op.region_id;
        operators.insert(region_id, op);
        drop(operators);
        self.push_step(region_id);
        Ok(())
    }

    /// Cancels the operator of a region; returns it if there was one.
    pub fn remove_operator(&self, region_id: u64) -> Option<Operator> {
        self.operators.lock().remove(&region_id)
    }

    /// The running operators.
    pub fn operators(&self) -> Vec<Operator> {
        self.operators.lock().values().cloned().collect()
    }

    /// Puts a reported region into the tree unless it is stale. `leader`
    /// and `stats` of `None` keep what PD knew (when still valid).
    fn apply_region(
        &self,
        region: &metapb::Region,
        leader: Option<metapb::Peer>,
        stats: Option<RegionStats>,
    ) -> Result<RegionUpdate> {
        let mut meta = self.meta.write();
        Self::require_bootstrapped(&meta)?;
        if meta.regions.is_stale(region) {
            return Ok(RegionUpdate::Stale);
        }
        if let Some(known) = meta.regions.get_mut(region.id) {
            if known.region == *region {
                if leader.is_some() {
                    known.leader = leader;
                }
                if let Some(stats) = stats {
                    known.stats = stats;
                }
                return Ok(RegionUpdate::Refreshed);
            }
        }
        let previous = meta.regions.get(region.id).cloned();
        let leader = leader.or_else(|| {
            previous
                .as_ref()
                .and_then(|p| p.leader)
                .filter(|l| region.peers.iter().any(|p| p.id == l.id))
        });
        let stats = stats
            .or_else(|| previous.map(|p| p.stats))
            .unwrap_or_default();
        // Persist first: the overlapped regions are deleted with the write.
        let mut batch = MetaBatch::default();
        batch.put_region(region);
        let overlapped: Vec<u64> = meta
            .regions
            .scan(&region.start_key, &region.end_key, 0)
            .iter()
            .map(|e| e.region.id)
            .filter(|id| *id != region.id)
            .collect();
        for id in &overlapped {
            batch.delete_region(*id);
        }
        self.storage.write(batch)?;
        meta.regions.insert(RegionEntry {
            region: region.clone(),
            leader,
            stats,
        });
        Metrics::add(&self.metrics.region_updates, 1);
        Ok(RegionUpdate::Changed)
    }

    /// The region holding `key`.
    pub fn get_region(&self, key: &[u8]) -> Result<RegionEntry> {
        let meta = self.meta.read();
        Self::require_bootstrapped(&meta)?;
        meta.regions
            .get_by_key(key)
            .cloned()
            .ok_or_else(|| PdServerError::RegionNotFound(format!("no region holds key {key:?}")))
    }

    /// The region with this id.
    pub fn get_region_by_id(&self, region_id: u64) -> Option<RegionEntry> {
        self.meta.read().regions.get(region_id).cloned()
    }

    /// Up to `limit` regions (0: no limit) overlapping `[start, end)`.
    pub fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<RegionEntry> {
        self.meta
            .read()
            .regions
            .scan(start, end, limit)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Every region in key order.
    pub fn regions(&self) -> Vec<RegionEntry> {
        self.meta.read().regions.iter().cloned().collect()
    }

    /// Number of regions.
    pub fn region_count(&self) -> usize {
        self.meta.read().regions.len()
    }

    /// Ids for splitting `region` into `count + 1` regions: per new region a
    /// region id and one peer id for each of the region's peers.
    pub fn ask_batch_split(
        &self,
        region: &metapb::Region,
        count: u32,
    ) -> Result<Vec<pdpb::SplitId>> {
        check_epoch_present(region)?;
        if count == 0 {
            return Err(PdServerError::InvalidArgument("split count is 0".into()));
        }
        if region.peers.is_empty() {
            return Err(PdServerError::InvalidArgument(format!(
                "region {} has no peers",
                region.id
            )));
        }
        {
            let meta = self.meta.read();
            Self::require_bootstrapped(&meta)?;
            if meta.regions.get(region.id).is_none() {
                return Err(PdServerError::RegionNotFound(format!(
                    "region {}",
                    region.id
                )));
            }
            if meta.regions.is_stale(region) {
                return Err(PdServerError::InvalidArgument(format!(
                    "region {} epoch {:?} is stale",
                    region.id, region.region_epoch
                )));
            }
        }
        let per_split = 1 + region.peers.len() as u64;
        let total = per_split * u64::from(count);
        let first = self.ids.lock().alloc(&self.storage, total)?;
        Metrics::add(&self.metrics.ids_allocated, total);
        Ok((0..u64::from(count))
            .map(|i| {
                let base = first + i * per_split;
                pdpb::SplitId {
                    new_region_id: base,
                    new_peer_ids: (base + 1..base + per_split).collect(),
                }
            })
            .collect())
    }

    /// Records the regions a split produced (each is ignored if stale).
    pub fn report_batch_split(&self, regions: &[metapb::Region]) -> Result<()> {
        if regions.is_empty() {
            return Err(PdServerError::InvalidArgument("no regions reported".into()));
        }
        for region in regions {
            check_epoch_present(region)?;
        }
        for region in regions {
            self.apply_region(region, None, None)?;
        }
        Ok(())
    }

    /// Starts removing a store: an Up store becomes Offline (its replicas
    /// are to be moved away), and a store holding no replica becomes
    /// Tombstone at once. Returns the new state.
    pub fn delete_store(&self, store_id: u64) -> Result<metapb::StoreState> {
        let mut meta = self.meta.write();
        let holds_replicas = Self::store_region_count(&meta, store_id) > 0;
        let store = meta
            .stores
            .get_mut(&store_id)
            .ok_or(PdServerError::StoreNotFound(store_id))?;
        let state = match store.meta.state() {
            metapb::StoreState::Tombstone => return Err(PdServerError::StoreTombstone(store_id)),
            _ if holds_replicas => metapb::StoreState::Offline,
            _ => metapb::StoreState::Tombstone,
        };
        let mut updated = store.meta.clone();
        updated.set_state(state);
        let mut batch = MetaBatch::default();
        batch.put_store(&updated);
        self.storage.write(batch)?;
        store.meta = updated;
        Ok(state)
    }

    /// Turns every Offline store that no longer holds a replica into a
    /// Tombstone. Returns the ids buried.
    pub fn bury_drained_stores(&self) -> Result<Vec<u64>> {
        let mut meta = self.meta.write();
        let drained: Vec<u64> = meta
            .stores
            .values()
            .filter(|s| s.meta.state() == metapb::StoreState::Offline)
            .map(|s| s.meta.id)
            .filter(|id| Self::store_region_count(&meta, *id) == 0)
            .collect();
        for id in &drained {
            if let Some(store) = meta.stores.get_mut(id) {
                let mut updated = store.meta.clone();
                updated.set_state(metapb::StoreState::Tombstone);
                let mut batch = MetaBatch::default();
                batch.put_store(&updated);
                self.storage.write(batch)?;
                store.meta = updated;
            }
        }
        Ok(drained)
    }

    fn store_region_count(meta: &Meta, store_id: u64) -> usize {
        meta.regions
            .iter()
            .filter(|e| e.region.peers.iter().any(|p| p.store_id == store_id))
            .count()
    }

    /// Replaces a store's labels with `labels` merged over the old ones.
    pub fn set_store_labels(&self, store_id: u64, labels: &[(String, String)]) -> Result<()> {
        let mut meta = self.meta.write();
        let store = meta
            .stores
            .get_mut(&store_id)
            .ok_or(PdServerError::StoreNotFound(store_id))?;
        if store.meta.state() == metapb::StoreState::Tombstone {
            return Err(PdServerError::StoreTombstone(store_id));
        }
        let mut updated = store.meta.clone();
        for (key, value) in labels {
            if key.is_empty() {
                return Err(PdServerError::InvalidArgument("empty label key".into()));
            }
            match updated.labels.iter_mut().find(|l| &l.key == key) {
                Some(label) => label.value = value.clone(),
                None => updated.labels.push(metapb::StoreLabel {
                    key: key.clone(),
                    value: value.clone(),
                }),
            }
        }
        let mut batch = MetaBatch::default();
        batch.put_store(&updated);
        self.storage.write(batch)?;
        store.meta = updated;
        Ok(())
    }

    /// What the schedulers look at.
    pub fn snapshot(&self) -> Snapshot {
        let now = SystemTime::now();
        let max_down = self.max_store_down_time();
        let meta = self.meta.read();
        Snapshot {
            stores: meta
                .stores
                .values()
                .map(|s| StoreView::new(&s.meta, s.status(now, max_down)))
                .collect(),
            regions: meta.regions.iter().cloned().collect(),
            operators: self.operators(),
        }
    }

    /// One scheduling round: drops timed-out operators, buries drained
    /// Offline stores, then runs the checkers and schedulers and starts the
    /// operators they produce. Returns the operators started.
    pub fn schedule_once(&self) -> Result<Vec<Operator>> {
        let now = Instant::now();
        self.operators.lock().retain(|region_id, op| {
            let alive = now.duration_since(op.created) <= op.timeout;
            if !alive {
                tracing::info!(region_id, desc = %op.desc, "operator timed out");
            }
            alive
        });
        for store_id in self.bury_drained_stores()? {
            tracing::info!(store_id, "store drained: now Tombstone");
        }
        if !self.is_bootstrapped() {
            return Ok(Vec::new());
        }
        let snapshot = self.snapshot();
        let config = self.schedule_config();
        let mut alloc_error = None;
        let mut ids = || match self.alloc_id() {
            Ok(id) => Some(id),
            Err(e) => {
                alloc_error = Some(e);
                None
            }
        };
        let ops = schedule::schedule(&config, &snapshot, &mut ids);
        if let Some(e) = alloc_error {
            return Err(e);
        }
        let mut started = Vec::new();
        for op in ops {
            tracing::info!(region_id = op.region_id, desc = %op.desc, steps = ?op.steps, "operator created");
            if self.add_operator(op.clone()).is_ok() {
                started.push(op);
            }
        }
        Ok(started)
    }

    /// Builds an operator an administrator asked for (see [`AdminOp`]).
    pub fn admin_operator(&self, request: AdminOp) -> Result<Operator> {
        let region_id = request.region_id();
        let entry = self
            .get_region_by_id(region_id)
            .ok_or_else(|| PdServerError::RegionNotFound(format!("region {region_id}")))?;
        let region = &entry.region;
        let has_peer = |store_id: u64| region.peers.iter().any(|p| p.store_id == store_id);
        let check_store = |store_id: u64| -> Result<()> {
            let store = self.get_store(store_id)?;
            if store.meta.state() != metapb::StoreState::Up {
                return Err(PdServerError::InvalidArgument(format!(
                    "store {store_id} is {}",
                    store.meta.state().as_str_name()
                )));
            }
            Ok(())
        };
        let timeout = self.schedule_config().region_op_timeout;
        let (desc, steps) = match &request {
            AdminOp::TransferLeader { store_id, .. } => {
                if !has_peer(*store_id) {
                    return Err(PdServerError::InvalidArgument(format!(
                        "region {region_id} has no peer on store {store_id}"
                    )));
                }
                (
                    "admin-transfer-leader",
                    vec![OpStep::TransferLeader {
                        store_id: *store_id,
                    }],
                )
            }
            AdminOp::AddPeer { store_id, .. } => {
                check_store(*store_id)?;
                if has_peer(*store_id) {
                    return Err(PdServerError::InvalidArgument(format!(
                        "region {region_id} already has a peer on store {store_id}"
                    )));
                }
                let peer_id = self.alloc_id()?;
                (
                    "admin-add-peer",
                    vec![
                        OpStep::AddLearner {
                            store_id: *store_id,
                            peer_id,
                        },
                        OpStep::PromoteLearner {
                            store_id: *store_id,
                            peer_id,
                        },
                    ],
                )
            }
            AdminOp::RemovePeer { store_id, .. } => {
                if !has_peer(*store_id) {
                    return Err(PdServerError::InvalidArgument(format!(
                        "region {region_id} has no peer on store {store_id}"
                    )));
                }
                let mut steps = Vec::new();
                if entry
                    .leader
                    .as_ref()
                    .is_some_and(|l| l.store_id == *store_id)
                {
                    let to = region
                        .peers
                        .iter()
                        .find(|p| p.store_id != *store_id && p.role() == metapb::PeerRole::Voter)
                        .ok_or_else(|| {
                            PdServerError::InvalidArgument(format!(
                                "cannot remove the only voter of region {region_id}"
                            ))
                        })?;
                    steps.push(OpStep::TransferLeader {
                        store_id: to.store_id,
                    });
                }
                steps.push(OpStep::RemovePeer {
                    store_id: *store_id,
                });
                ("admin-remove-peer", steps)
            }
            AdminOp::TransferRegion { store_ids, .. } => {
                if store_ids.is_empty() {
                    return Err(PdServerError::InvalidArgument("no target stores".into()));
                }
                let mut steps = Vec::new();
                for store_id in store_ids.iter().filter(|s| !has_peer(**s)) {
                    check_store(*store_id)?;
                    let peer_id = self.alloc_id()?;
                    steps.push(OpStep::AddLearner {
                        store_id: *store_id,
                        peer_id,
                    });
                    steps.push(OpStep::PromoteLearner {
                        store_id: *store_id,
                        peer_id,
                    });
                }
                if let Some(leader) = &entry.leader {
                    if !store_ids.contains(&leader.store_id) {
                        steps.push(OpStep::TransferLeader {
                            store_id: store_ids[0],
                        });
                    }
                }
                for peer in region
                    .peers
                    .iter()
                    .filter(|p| !store_ids.contains(&p.store_id))
                {
                    steps.push(OpStep::RemovePeer {
                        store_id: peer.store_id,
                    });
                }
                ("admin-transfer-region", steps)
            }
            AdminOp::Split { keys, .. } => {
                let (start, end) = (&region.start_key, &region.end_key);
                if let Some(k) = keys
                    .iter()
                    .find(|k| *k <= start || (!end.is_empty() && *k >= end))
                {
                    // The store would refuse it, and the operator would
                    // hold the region until it timed out.
                    return Err(PdServerError::InvalidArgument(format!(
                        "split key {} is not inside region {region_id} [{}, {})",
                        hex(k),
                        hex(start),
                        hex(end)
                    )));
                }
                (
                    "admin-split-region",
                    vec![OpStep::Split { keys: keys.clone() }],
                )
            }
        };
        if steps.is_empty() {
            return Err(PdServerError::InvalidArgument(format!(
                "region {region_id} is already where it was asked to be"
            )));
        }
        let op = Operator::new(desc, OpKind::Admin, region, steps, timeout);
        self.add_operator(op.clone())?;
        Ok(op)
    }

    /// Point-in-time gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let meta = self.meta.read();
        let now = SystemTime::now();
        let mut by_state: BTreeMap<StoreStatus, usize> = BTreeMap::new();
        for store in meta.stores.values() {
            *by_state
                .entry(store.status(now, self.max_store_down_time()))
                .or_default() += 1;
        }
        let raft = self.replication().status();
        Gauges {
            bootstrapped: meta.bootstrapped,
            regions: meta.regions.len(),
            stores_by_state: by_state
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
            uptime_secs: now
                .duration_since(self.started_at)
                .unwrap_or_default()
                .as_secs(),
            raft_applied: raft.applied,
            raft_compacted: raft.compacted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tso::compose;

    fn config(dir: &std::path::Path) -> PdConfig {
        PdConfig {
            data_dir: dir.to_path_buf(),
            id_batch: 5,
            ..PdConfig::default()
        }
    }

    fn store(id: u64) -> metapb::Store {
        metapb::Store {
            id,
            address: format!("127.0.0.1:{}", 20160 + id),
            labels: vec![metapb::StoreLabel {
                key: "zone".into(),
                value: format!("z{id}"),
            }],
            ..Default::default()
        }
    }

    fn peer(id: u64, store_id: u64) -> metapb::Peer {
        metapb::Peer {
            id,
            store_id,
            role: metapb::PeerRole::Voter as i32,
        }
    }

    fn region(
        id: u64,
        start: &str,
        end: &str,
        version: u64,
        conf_ver: u64,
        peers: Vec<metapb::Peer>,
    ) -> metapb::Region {
        metapb::Region {
            id,
            start_key: start.as_bytes().to_vec(),
            end_key: end.as_bytes().to_vec(),
            region_epoch: Some(metapb::RegionEpoch { conf_ver, version }),
            peers,
        }
    }

    fn heartbeat(region: metapb::Region) -> pdpb::RegionHeartbeatRequest {
        pdpb::RegionHeartbeatRequest {
            leader: region.peers.first().cloned(),
            region: Some(region),
            approximate_size: 96,
            ..Default::default()
        }
    }

    fn bootstrapped(dir: &std::path::Path) -> Cluster {
        let cluster = Cluster::open(&config(dir)).unwrap();
        cluster
            .bootstrap(store(1), region(2, "", "", 1, 1, vec![peer(3, 1)]))
            .unwrap();
        cluster
    }

    #[test]
    fn second_bootstrap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::open(&config(dir.path())).unwrap();
        assert!(!cluster.is_bootstrapped());
        assert!(matches!(
            cluster.put_store(store(1)),
            Err(PdServerError::NotBootstrapped)
        ));
        // Malformed bootstrap requests change nothing.
        assert!(cluster
            .bootstrap(store(1), region(2, "a", "", 1, 1, vec![peer(3, 1)]))
            .is_err());
        assert!(cluster
            .bootstrap(store(1), region(2, "", "", 1, 1, vec![peer(3, 9)]))
            .is_err());
        assert!(!cluster.is_bootstrapped());
        cluster
            .bootstrap(store(1), region(2, "", "", 1, 1, vec![peer(3, 1)]))
            .unwrap();
        assert!(matches!(
            cluster.bootstrap(store(4), region(5, "", "", 1, 1, vec![peer(6, 4)])),
            Err(PdServerError::AlreadyBootstrapped)
        ));
        assert_eq!(cluster.get_region(b"any").unwrap().region.id, 2);
        assert_eq!(cluster.stores(false).len(), 1);
    }

    #[test]
    fn restart_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster_id, last_id, last_ts);
        {
            let cluster = bootstrapped(dir.path());
            cluster.put_store(store(7)).unwrap();
            // A split into [, m) and [m, ) reported by heartbeats.
            cluster
                .region_heartbeat(&heartbeat(region(2, "", "m", 2, 1, vec![peer(3, 1)])))
                .unwrap();
            cluster
                .region_heartbeat(&heartbeat(region(8, "m", "", 2, 1, vec![peer(9, 1)])))
                .unwrap();
            let mut id = 0;
            for _ in 0..12 {
                id = cluster.alloc_id().unwrap();
            }
            cluster_id = cluster.cluster_id();
            last_id = id;
            last_ts = compose(&cluster.tso(10).unwrap());
        }
        let cluster = Cluster::open(&config(dir.path())).unwrap();
        assert!(cluster.is_bootstrapped());
        assert_eq!(cluster.cluster_id(), cluster_id);
        let stores: Vec<u64> = cluster.stores(false).iter().map(|s| s.meta.id).collect();
        assert_eq!(stores, vec![1, 7]);
        assert_eq!(cluster.get_store(7).unwrap().meta.labels, store(7).labels);
        let regions: Vec<u64> = cluster.regions().iter().map(|r| r.region.id).collect();
        assert_eq!(regions, vec![2, 8]);
        assert_eq!(cluster.get_region(b"z").unwrap().region.id, 8);
        assert!(cluster.alloc_id().unwrap() > last_id);
        let ts = compose(&cluster.tso(1).unwrap());
        assert!(ts > last_ts, "{ts} <= {last_ts}");
    }

    #[test]
    fn schedule_config_changes_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cluster = Cluster::open(&config(dir.path())).unwrap();
            assert_eq!(cluster.schedule_config().region_limit, 4);
            cluster
                .update_schedule_config(|c| {
                    c.region_limit = 9;
                    c.evict_leader_stores.insert(3);
                    c.max_store_down_time = Duration::from_secs(77);
                })
                .unwrap();
        }
        let cluster = Cluster::open(&config(dir.path())).unwrap();
        let restored = cluster.schedule_config();
        assert_eq!(restored.region_limit, 9);
        assert!(restored.evict_leader_stores.contains(&3));
        assert_eq!(cluster.max_store_down_time(), Duration::from_secs(77));
    }

    #[test]
    fn stale_heartbeats_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = bootstrapped(dir.path());
        let newer = region(2, "", "", 1, 3, vec![peer(3, 1), peer(10, 2), peer(11, 3)]);
        assert_eq!(
            cluster.region_heartbeat(&heartbeat(newer.clone())).unwrap(),
            RegionUpdate::Changed
        );
        assert_eq!(
            cluster.region_heartbeat(&heartbeat(newer.clone())).unwrap(),
            RegionUpdate::Refreshed
        );
        let older = region(2, "", "", 1, 2, vec![peer(3, 1), peer(10, 2)]);
        assert_eq!(
            cluster.region_heartbeat(&heartbeat(older)).unwrap(),
            RegionUpdate::Stale
        );
        assert_eq!(cluster.get_region_by_id(2).unwrap().region, newer);
        // Stale reports are not persisted either.
        drop(cluster);
        let cluster = Cluster::open(&config(dir.path())).unwrap();
        assert_eq!(cluster.get_region_by_id(2).unwrap().region, newer);
    }

    #[test]
    fn a_new_operator_is_pushed_to_the_leaders_heartbeat_stream_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = bootstrapped(dir.path());
        cluster.put_store(store(2)).unwrap();
        let two = region(2, "", "", 1, 2, vec![peer(3, 1), peer(10, 2)]);
        cluster.region_heartbeat(&heartbeat(two)).unwrap();
        let (tx, mut steps) = tokio::sync::mpsc::unbounded_channel();
        cluster.register_step_stream(1, tx);
        assert!(steps.try_recv().is_err());

        // No heartbeat in between: the first step is already on its way.
        cluster
            .admin_operator(AdminOp::TransferLeader {
                region_id: 2,
                store_id: 2,
            })
            .unwrap();
        let step = steps.try_recv().expect("the step was pushed");
        assert_eq!(step.region_id, 2);
        assert_eq!(step.transfer_leader.unwrap().peer, Some(peer(10, 2)));
    }

    #[test]
    fn newer_region_removes_overlapped_regions_durably() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = bootstrapped(dir.path());
        cluster
            .report_batch_split(&[
                region(2, "", "f", 2, 1, vec![peer(3, 1)]),
                region(20, "f", "p", 2, 1, vec![peer(21, 1)]),
                region(30, "p", "", 2, 1, vec![peer(31, 1)]),
            ])
            .unwrap();
        assert_eq!(cluster.region_count(), 3);
        // Region 20 merged its neighbours: it now covers everything.
        cluster
            .region_heartbeat(&heartbeat(region(20, "", "", 3, 1, vec![peer(21, 1)])))
            .unwrap();
        assert_eq!(cluster.region_count(), 1);
        drop(cluster);
        let cluster = Cluster::open(&config(dir.path())).unwrap();
        let regions: Vec<u64> = cluster.regions().iter().map(|r| r.region.id).collect();
        assert_eq!(regions, vec![20]);
    }

    #[test]
    fn heartbeat_validation_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = bootstrapped(dir.path());
        let mut hb = heartbeat(region(2, "", "", 1, 1, vec![peer(3, 1)]));
        hb.leader = Some(peer(99, 1));
        assert!(matches!(
            cluster.region_heartbeat(&hb),
            Err(PdServerError::InvalidArgument(_))
        ));
        hb.region = None;
        assert!(cluster.region_heartbeat(&hb).is_err());
    }

    #[test]
    fn ask_batch_split_allocates_region_and_peer_ids() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = bootstrapped(dir.path());
        let three = region(2, "", "", 1, 3, vec![peer(3, 1), peer(10, 2), peer(11, 3)]);
        cluster.region_heartbeat(&heartbeat(three.clone())).unwrap();
        let ids = cluster.ask_batch_split(&three, 2).unwrap();
        assert_eq!(ids.len(), 2);
        let mut all: Vec<u64> = Vec::new();
        for split in &ids {
            assert_eq!(split.new_peer_ids.len(), 3);
            all.push(split.new_region_id);
            all.extend(&split.new_peer_ids);
        }
        let before = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), before, "ids are distinct");
        assert!(cluster.alloc_id().unwrap() > *all.last().unwrap());
        assert!(cluster.ask_batch_split(&three, 0).is_err());
        let unknown = region(77, "", "", 1, 1, vec![peer(78, 1)]);
        assert!(matches!(
            cluster.ask_batch_split(&unknown, 1),
            Err(PdServerError::RegionNotFound(_))
        ));
        let stale = region(2, "", "", 1, 1, vec![peer(3, 1)]);
        assert!(cluster.ask_batch_split(&stale, 1).is_err());
    }

    #[test]
    fn store_registration_heartbeats_and_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = bootstrapped(dir.path());
        cluster.put_store(store(4)).unwrap();
        // Another store may not take a live store's address.
        let mut clash = store(5);
        clash.address = store(4).address;
        assert!(matches!(
            cluster.put_store(clash),
            Err(PdServerError::InvalidArgument(_))
        ));
        assert!(matches!(
            cluster.store_heartbeat(pdpb::StoreStats {
                store_id: 42,
                ..Default::default()
            }),
            Err(PdServerError::StoreNotFound(42))
        ));
        cluster
            .store_heartbeat(pdpb::StoreStats {
                store_id: 4,
                capacity: 100,
                used_size: 40,
                region_count: 2,
                is_busy: true,
                ..Default::default()
            })
            .unwrap();
        let info = cluster.get_store(4).unwrap();
        assert_eq!(info.stats.as_ref().unwrap().used_size, 40);
        assert!(info.last_heartbeat.is_some());
        assert_eq!(
            info.status(SystemTime::now(), cluster.max_store_down_time()),
            StoreStatus::Up
        );
        // Store 4 holds no replica: deleting it makes it a tombstone at once.
        assert_eq!(
            cluster.delete_store(4).unwrap(),
            metapb::StoreState::Tombstone
        );
        assert!(matches!(
            cluster.put_store(store(4)),
            Err(PdServerError::StoreTombstone(4))
        ));
        assert!(matches!(
            cluster.store_heartbeat(pdpb::StoreStats {
                store_id: 4,
                ..Default::default()
            }),
            Err(PdServerError::StoreTombstone(4))
        ));
        assert_eq!(cluster.stores(true).len(), 1);
        // Store 1 holds region 2: it goes Offline until drained.
        assert_eq!(
            cluster.delete_store(1).unwrap(),
            metapb::StoreState::Offline
        );
        assert!(cluster.bury_drained_stores().unwrap().is_empty());
        drop(cluster);
        let cluster = Cluster::open(&config(dir.path())).unwrap();
        assert_eq!(
            cluster.get_store(4).unwrap().meta.state(),
            metapb::StoreState::Tombstone
        );
        assert_eq!(
            cluster.get_store(1).unwrap().meta.state(),
            metapb::StoreState::Offline
        );
        // Re-registering an Offline store keeps it Offline.
        cluster.put_store(store(1)).unwrap();
        assert_eq!(
            cluster.get_store(1).unwrap().meta.state(),
            metapb::StoreState::Offline
        );
    }
}
