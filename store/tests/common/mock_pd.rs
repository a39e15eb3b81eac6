//! An in-process PD for raftstore tests: ids, the region map from
//! heartbeats and splits, and a channel to push operator steps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_common::pd_client::{PdClient, PdError, PdResult, RegionInfo};
use concord_proto::{metapb, pdpb};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

#[derive(Default)]
pub struct MockPd {
    next_id: AtomicU64,
    tso: AtomicU64,
    bootstrapped: Mutex<bool>,
    stores: Mutex<HashMap<u64, metapb::Store>>,
    regions: Mutex<HashMap<u64, RegionInfo>>,
    operators: Mutex<Vec<mpsc::Sender<pdpb::RegionHeartbeatResponse>>>,
    heartbeat_stream_opens: watch::Sender<u64>,
}

fn newer(a: &metapb::Region, b: &metapb::Region) -> bool {
    let (ea, eb) = (
        a.region_epoch.unwrap_or_default(),
        b.region_epoch.unwrap_or_default(),
    );
    ea.version > eb.version || (ea.version == eb.version && ea.conf_ver >= eb.conf_ver)
}

impl MockPd {
    pub fn new(first_id: u64) -> MockPd {
        MockPd {
            next_id: AtomicU64::new(first_id),
            ..Default::default()
        }
    }

    /// Marks the cluster bootstrapped with `region`.
    pub fn set_bootstrapped(&self, region: metapb::Region) {
        *self.bootstrapped.lock() = true;
        self.put_region(region, None);
    }

    fn put_region(&self, region: metapb::Region, leader: Option<metapb::Peer>) {
        let mut regions = self.regions.lock();
        if let Some(old) = regions.get(&region.id) {
            if !newer(&region, &old.region) {
                return;
            }
        }
        regions.insert(region.id, RegionInfo { region, leader });
    }

    /// Forgets every region's leader, as a newly elected PD leader knows none.
    pub fn forget_leaders(&self) {
        for info in self.regions.lock().values_mut() {
            info.leader = None;
        }
    }

    /// Tells the stores their heartbeat stream reopened (to a new leader).
    pub fn reopen_heartbeat_stream(&self) {
        self.heartbeat_stream_opens.send_modify(|n| *n += 1);
    }

    /// PD's current view of a region.
    pub fn region(&self, id: u64) -> Option<RegionInfo> {
        self.regions.lock().get(&id).cloned()
    }

    /// Number of regions PD knows.
    pub fn region_count(&self) -> usize {
        self.regions.lock().len()
    }

    /// Pushes an operator step to the stores' PD workers.
    pub fn push_operator(&self, resp: pdpb::RegionHeartbeatResponse) {
        for tx in self.operators.lock().iter() {
            let _ = tx.try_send(resp.clone());
        }
    }
}

#[tonic::async_trait]
impl PdClient for MockPd {
    async fn is_bootstrapped(&self) -> PdResult<bool> {
        Ok(*self.bootstrapped.lock())
    }

    async fn bootstrap(&self, store: metapb::Store, region: metapb::Region) -> PdResult<()> {
        let mut b = self.bootstrapped.lock();
        if *b {
            return Err(PdError::AlreadyBootstrapped);
        }
        *b = true;
        self.stores.lock().insert(store.id, store);
        drop(b);
        self.put_region(region, None);
        Ok(())
    }

    async fn alloc_id(&self) -> PdResult<u64> {
        Ok(self.next_id.fetch_add(1, Ordering::SeqCst))
    }

    async fn put_store(&self, store: metapb::Store) -> PdResult<()> {
        self.stores.lock().insert(store.id, store);
        Ok(())
    }

    async fn get_store(&self, store_id: u64) -> PdResult<metapb::Store> {
        self.stores
            .lock()
            .get(&store_id)
            .cloned()
            .ok_or(PdError::Server {
                kind: pdpb::ErrorType::StoreNotFound,
                message: format!("store {store_id} not found"),
            })
    }

    async fn get_all_stores(&self) -> PdResult<Vec<metapb::Store>> {
        Ok(self.stores.lock().values().cloned().collect())
    }

    async fn store_heartbeat(&self, _stats: pdpb::StoreStats) -> PdResult<()> {
        Ok(())
    }

    async fn region_heartbeat(&self, request: pdpb::RegionHeartbeatRequest) -> PdResult<()> {
        if let Some(region) = request.region {
            self.put_region(region, request.leader);
        }
        Ok(())
    }

    fn heartbeat_responses(&self) -> mpsc::Receiver<pdpb::RegionHeartbeatResponse> {
        let (tx, rx) = mpsc::channel(64);
        self.operators.lock().push(tx);
        rx
    }

    fn heartbeat_stream_opens(&self) -> watch::Receiver<u64> {
        self.heartbeat_stream_opens.subscribe()
    }

    async fn get_region(&self, key: &[u8]) -> PdResult<RegionInfo> {
        self.regions
            .lock()
            .values()
            .find(|r| {
                key >= r.region.start_key.as_slice()
                    && (r.region.end_key.is_empty() || key < r.region.end_key.as_slice())
            })
            .cloned()
            .ok_or(PdError::Server {
                kind: pdpb::ErrorType::RegionNotFound,
                message: "no region".into(),
            })
    }

    async fn get_region_by_id(&self, region_id: u64) -> PdResult<Option<RegionInfo>> {
        Ok(self.region(region_id))
    }

    async fn scan_regions(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
    ) -> PdResult<Vec<RegionInfo>> {
        let mut all: Vec<RegionInfo> = self
            .regions
            .lock()
            .values()
            .filter(|r| {
                (r.region.end_key.is_empty() || r.region.end_key.as_slice() > start)
                    && (end.is_empty() || r.region.start_key.as_slice() < end)
            })
            .cloned()
            .collect();
        all.sort_by(|a, b| a.region.start_key.cmp(&b.region.start_key));
        if limit > 0 {
            all.truncate(limit as usize);
        }
        Ok(all)
    }

    async fn ask_batch_split(
        &self,
        region: &metapb::Region,
        count: u32,
    ) -> PdResult<Vec<pdpb::SplitId>> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let new_region_id = self.alloc_id().await?;
            let mut new_peer_ids = Vec::new();
            for _ in &region.peers {
                new_peer_ids.push(self.alloc_id().await?);
            }
            ids.push(pdpb::SplitId {
                new_region_id,
                new_peer_ids,
            });
        }
        Ok(ids)
    }

    async fn report_batch_split(&self, regions: Vec<metapb::Region>) -> PdResult<()> {
        for r in regions {
            self.put_region(r, None);
        }
        Ok(())
    }

    async fn get_tso(&self) -> PdResult<pdpb::Timestamp> {
        let t = self.tso.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(pdpb::Timestamp {
            physical: (t >> 18) as i64,
            logical: (t & ((1 << 18) - 1)) as i64,
        })
    }
}
