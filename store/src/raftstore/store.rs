//! A running store: bootstrap against PD, recovery of every region from the
//! engine, and the threads that drive them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use concord_common::pd_client::{PdClient, PdError};
use concord_proto::metapb;
use concord_proto::raft_serverpb::{PeerState, RaftMessage, RegionLocalState, StoreIdent};
use parking_lot::Mutex;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{self, MessageType};
use tracing::{debug, info, warn};

use super::apply::{ApplyPool, ApplyTask};
use super::config::RaftStoreConfig;
use super::context::{RaftStats, StoreServices, Transport};
use super::meta::StoreMeta;
use super::msg::PeerMsg;
use super::peer::Peer;
use super::router::StoreRouter;
use super::snapshot::SnapshotBuilder;
use super::storage::{read_state, write_initial_states, StorageFault};
use super::{pd_worker, poller};
use crate::engine::{Engine, Reader, CF_RAFT};
use crate::keys;

/// Why a store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing local state failed.
    #[error(transparent)]
    Storage(#[from] StorageFault),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// PD could not be used.
    #[error("PD: {0}")]
    Pd(#[from] PdError),
}

/// Reads the store id this engine was bootstrapped with, if any.
pub fn load_store_id(engine: &Engine) -> Result<Option<u64>, StorageFault> {
    let ident: Option<StoreIdent> = read_state(engine, keys::STORE_IDENT_KEY, "store ident", 0)?;
    Ok(ident.map(|i| i.store_id))
}

/// Marks the engine as belonging to `store_id` (synced).
pub fn write_store_ident(engine: &Engine, store_id: u64) -> Result<(), StorageFault> {
    let mut wb = engine.write_batch();
    super::storage::write_state(
        &mut wb,
        keys::STORE_IDENT_KEY,
        &StoreIdent {
            cluster_id: 0,
            store_id,
        },
    );
    engine.write(wb, true)?;
    Ok(())
}

/// Writes the first region of a new cluster into this store's engine (synced).
pub fn write_first_region(engine: &Engine, region: &metapb::Region) -> Result<(), StorageFault> {
    let mut wb = engine.write_batch();
    write_initial_states(&mut wb, region);
    engine.write(wb, true)?;
    Ok(())
}

/// Every region state recorded in the engine.
fn load_region_states(engine: &Engine) -> Result<Vec<RegionLocalState>, StorageFault> {
    let (start, end) = keys::region_meta_range();
    let mut states = Vec::new();
    let mut fault = None;
    engine.scan_cf(
        CF_RAFT,
        &start,
        &end,
        false,
        |k, v| match RegionLocalState::decode(v) {
            Ok(s) => {
                states.push(s);
                true
            }
            Err(e) => {
                fault = Some(StorageFault::Corrupt {
                    what: "region state",
                    region_id: keys::region_id_of_state_key(k).unwrap_or(0),
                    reason: e.to_string(),
                });
                false
            }
        },
    )?;
    match fault {
        Some(f) => Err(f),
        None => Ok(states),
    }
}

/// Makes sure the engine has a store id and the cluster is bootstrapped,
/// registering this store with PD. Returns the store id.
pub async fn bootstrap(
    engine: &Engine,
    pd: &dyn PdClient,
    mut store: metapb::Store,
) -> Result<u64, StoreError> {
    let store_id = match load_store_id(engine)? {
        Some(id) => id,
        None => {
            let id = pd.alloc_id().await?;
            write_store_ident(engine, id)?;
            info!(store_id = id, "store bootstrapped");
            id
        }
    };
    store.id = store_id;
    if !pd.is_bootstrapped().await? {
        let existing = load_region_states(engine)?;
        let region = match existing.into_iter().find_map(|s| s.region) {
            Some(r) => r,
            None => {
                let region = metapb::Region {
                    id: pd.alloc_id().await?,
                    start_key: Vec::new(),
                    end_key: Vec::new(),
                    region_epoch: Some(metapb::RegionEpoch {
                        conf_ver: 1,
                        version: 1,
                    }),
                    peers: vec![metapb::Peer {
                        id: pd.alloc_id().await?,
                        store_id,
                        role: metapb::PeerRole::Voter as i32,
                    }],
                };
                write_first_region(engine, &region)?;
                region
            }
        };
        match pd.bootstrap(store.clone(), region.clone()).await {
            Ok(()) => info!(
                region_id = region.id,
                "cluster bootstrapped with the first region"
            ),
            Err(PdError::AlreadyBootstrapped) => {
                // Another store won the race; drop the region prepared here.
                let mut wb = engine.write_batch();
                let (start, end) = keys::region_raft_range(region.id);
                wb.delete_range_cf(CF_RAFT, &start, &end)?;
                wb.delete_cf(CF_RAFT, &keys::region_state_key(region.id))?;
                engine.write(wb, true)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    pd.put_store(store).await?;
    Ok(store_id)
}

/// A running store: its pollers, apply threads, clock and PD worker.
pub struct Store {
    services: StoreServices,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pd_worker: tokio::task::JoinHandle<()>,
}

impl Store {
    /// Starts every region recorded in the engine. The engine must already
    /// carry a store id (see [`bootstrap`]). Must be called inside a tokio
    /// runtime (the PD worker runs on it).
    pub fn start(
        engine: Engine,
        cfg: RaftStoreConfig,
        pd: Arc<dyn PdClient>,
        transport: Arc<dyn Transport>,
    ) -> Result<Store, StoreError> {
        let store_id = load_store_id(&engine)?.ok_or_else(|| StorageFault::Corrupt {
            what: "store ident",
            region_id: 0,
            reason: "the store was never bootstrapped".into(),
        })?;
        let cfg = Arc::new(cfg);
        let (router, ready) = StoreRouter::new();
        let stats: Arc<RaftStats> = Arc::default();
        let apply = Arc::new(ApplyPool::start(
            cfg.apply_pollers,
            engine.clone(),
            router.clone(),
            stats.clone(),
        ));
        let (pd_tx, pd_rx) = tokio::sync::mpsc::unbounded_channel();
        let services = StoreServices {
            store_id,
            cfg: cfg.clone(),
            engine: engine.clone(),
            router: router.clone(),
            apply: apply.clone(),
            snapshots: Arc::new(SnapshotBuilder::start(router.clone())),
            meta: Arc::new(Mutex::new(StoreMeta::default())),
            transport,
            pd_tx,
            pending_proposals: Arc::new(AtomicUsize::new(0)),
            stats,
        };
        let mut count = 0;
        for state in load_region_states(&engine)? {
            if state.state() == PeerState::Tombstone {
                continue;
            }
            let Some(region) = state.region else { continue };
            let Some(me) = region
                .peers
                .iter()
                .find(|p| p.store_id == store_id)
                .cloned()
            else {
                warn!(
                    region_id = region.id,
                    "region has no peer on this store; skipped"
                );
                continue;
            };
            let peer = Peer::create(&services, region.clone(), me)?;
            services.meta.lock().set_region(&region);
            apply.schedule(
                region.id,
                ApplyTask::Register {
                    region: region.clone(),
                    apply_state: super::storage::read_state(
                        &engine,
                        &keys::apply_state_key(region.id),
                        "apply state",
                        region.id,
                    )?
                    .unwrap_or_default(),
                },
            );
            router.register(peer);
            count += 1;
        }
        info!(store_id, regions = count, "store started");
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = poller::start_pollers(cfg.raft_pollers, &services, ready, stop.clone());
        threads.push(poller::start_ticker(
            router,
            cfg.tick_interval,
            cfg.sleep_tick_ticks,
            stop.clone(),
        ));
        let pd_worker = tokio::spawn(pd_worker::run(
            services.clone(),
            pd,
            pd_rx,
            Duration::from_secs(10),
        ));
        Ok(Store {
            services,
            stop,
            threads,
            pd_worker,
        })
    }

    /// The store's services (router, engine, settings) for the KV service.
    pub fn services(&self) -> &StoreServices {
        &self.services
    }

    /// Stops every thread and lets go of the engine (once the caller's own
    /// handles are gone). Unapplied entries are applied again from the log
    /// on the next start.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.pd_worker.abort();
        let _ = self.pd_worker.await;
        let apply = self.services.apply.clone();
        let _ = tokio::task::spawn_blocking(move || apply.stop()).await;
        let snapshots = self.services.snapshots.clone();
        let _ = tokio::task::spawn_blocking(move || snapshots.stop()).await;
        self.services.router.close_all();
    }
}

/// Delivers a raft message from another store: to the region's peer, or —
/// for a region this store does not have yet — to a new, uninitialized peer
/// that will receive the region by snapshot.
pub fn deliver_raft_message(s: &StoreServices, msg: RaftMessage) {
    let region_id = msg.region_id;
    let Err(msg) = s.router.send(region_id, PeerMsg::Raft(msg)) else {
        return;
    };
    let PeerMsg::Raft(msg) = *msg else { return };
    if let Some(msg) = maybe_create_peer(s, msg) {
        let _ = s.router.send(region_id, PeerMsg::Raft(msg));
    }
}

/// Creates a peer for a message addressed to a region this store lacks, if
/// the message comes from a live group and clashes with nothing here.
/// Returns the message when a peer now exists to take it.
fn maybe_create_peer(s: &StoreServices, msg: RaftMessage) -> Option<RaftMessage> {
    let to = msg.to_peer?;
    if msg.is_tombstone || to.store_id != s.store_id {
        return None;
    }
    let raft_msg = eraftpb::Message::parse_from_bytes(&msg.message).ok()?;
    if !matches!(
        raft_msg.get_msg_type(),
        MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
    ) {
        return None;
    }
    let region_id = msg.region_id;
    let local: Option<RegionLocalState> = read_state(
        &s.engine,
        &keys::region_state_key(region_id),
        "region state",
        region_id,
    )
    .ok()?;
    if let Some(local) = local {
        let tombstone = local.state() == PeerState::Tombstone;
        let old = local.region.unwrap_or_default();
        let old_conf_ver = old.region_epoch.map_or(0, |e| e.conf_ver);
        let new_conf_ver = msg.region_epoch.map_or(0, |e| e.conf_ver);
        let old_peer = old
            .peers
            .iter()
            .find(|p| p.store_id == s.store_id)
            .map_or(0, |p| p.id);
        if !tombstone || new_conf_ver <= old_conf_ver || to.id <= old_peer {
            return None;
        }
    }
    let meta = s.meta.lock();
    if s.router.contains(region_id) {
        return Some(msg);
    }
    if let Some(other) = meta.overlapping(&msg.start_key, &msg.end_key, region_id) {
        debug!(
            region_id,
            other, "not creating a peer that overlaps another region"
        );
        return None;
    }
    let region = metapb::Region {
        id: region_id,
        ..Default::default()
    };
    match Peer::create(s, region, to) {
        Ok(peer) => {
            info!(
                region_id,
                peer_id = to.id,
                "created peer to receive a snapshot"
            );
            s.router.register(peer);
            drop(meta);
            Some(msg)
        }
        Err(e) => {
            warn!(region_id, "cannot create peer: {e}");
            None
        }
    }
}
