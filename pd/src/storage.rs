//! Durable PD metadata in a local RocksDB: the cluster record, the bootstrap
//! mark, stores, regions, the id allocator's high-water mark and the end of
//! the TSO window. Reads are local; every write is a command replicated
//! through the PD members' raft group ([`crate::replication`]) and returns
//! once it is committed (the raft log is synced) and applied locally, so a
//! crash loses nothing that was acknowledged.

use std::path::Path;
use std::sync::Arc;

use concord_proto::metapb;
use concord_proto::pd_raftpb::{KvOp, MetaCommand};
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, DB};

use crate::config::PdConfig;
use crate::error::{PdServerError, Result};
use crate::members::Membership;
use crate::raft_log::CF_RAFT;
use crate::replication::{RaftSettings, Replicator};
use crate::schedule::ScheduleConfig;

const CLUSTER_KEY: &[u8] = b"cluster";
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";
const ALLOC_ID_KEY: &[u8] = b"alloc_id";
const TSO_KEY: &[u8] = b"tso_window_end";
const SCHEDULE_CONFIG_KEY: &[u8] = b"schedule_config";
const STORE_PREFIX: &[u8] = b"store/";
const REGION_PREFIX: &[u8] = b"region/";

/// Opens (creating if needed) a member's RocksDB under `dir`: the metadata
/// in the default column family, the raft log in [`CF_RAFT`].
pub(crate) fn open_db(dir: &Path) -> Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [
        ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, Options::default()),
        ColumnFamilyDescriptor::new(CF_RAFT, Options::default()),
    ];
    Ok(DB::open_cf_descriptors(&opts, dir, cfs)?)
}

/// The PD metadata store of one member.
pub struct MetaStorage {
    db: Arc<DB>,
    replicator: Replicator,
}

fn prefixed(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn decode_u64(key: &[u8], value: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| PdServerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("expected 8 bytes, found {}", value.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode_msg<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M> {
    M::decode(value).map_err(|e| PdServerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// A set of metadata changes applied atomically by [`MetaStorage::write`].
#[derive(Default)]
pub struct MetaBatch {
    ops: Vec<KvOp>,
}

impl MetaBatch {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(KvOp {
            key,
            value,
            delete: false,
        });
    }

    /// Records the cluster as bootstrapped.
    pub fn mark_bootstrapped(&mut self) {
        self.put(BOOTSTRAPPED_KEY.to_vec(), b"1".to_vec());
    }

    /// Stores (or replaces) a store record.
    pub fn put_store(&mut self, store: &metapb::Store) {
        self.put(prefixed(STORE_PREFIX, store.id), store.encode_to_vec());
    }

    /// Stores (or replaces) a region record.
    pub fn put_region(&mut self, region: &metapb::Region) {
        self.put(prefixed(REGION_PREFIX, region.id), region.encode_to_vec());
    }

    /// Deletes a region record.
    pub fn delete_region(&mut self, region_id: u64) {
        self.ops.push(KvOp {
            key: prefixed(REGION_PREFIX, region_id),
            value: Vec::new(),
            delete: true,
        });
    }
}

impl MetaStorage {
    /// Opens (creating if needed) the metadata store under `dir` as a PD
    /// that is its own one-member group.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = PdConfig::default();
        let members = Membership::new(&config, &config.addr, &config.http_addr, &config.peer_addr)?;
        Self::open_replicated(dir, Arc::new(members), config.raft_settings(), None)
    }

    /// Opens the metadata store under `dir` and starts this member's raft
    /// node in the group of `members` (see [`Replicator::start`]).
    pub fn open_replicated(
        dir: &Path,
        members: Arc<Membership>,
        settings: RaftSettings,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Result<Self> {
        let db = Arc::new(open_db(dir)?);
        let replicator = Replicator::start(db.clone(), members, settings, runtime)?;
        Ok(MetaStorage { db, replicator })
    }

    /// This member's raft node.
    pub fn replicator(&self) -> &Replicator {
        &self.replicator
    }

    fn put_synced(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut batch = MetaBatch::default();
        batch.put(key.to_vec(), value.to_vec());
        self.write(batch)
    }

    /// Applies a batch of changes atomically and durably on every member.
    pub fn write(&self, batch: MetaBatch) -> Result<()> {
        self.replicator.propose(&MetaCommand { ops: batch.ops })
    }

    /// The cluster record, if one was created.
    pub fn load_cluster(&self) -> Result<Option<metapb::Cluster>> {
        match self.db.get(CLUSTER_KEY)? {
            Some(value) => Ok(Some(decode_msg(CLUSTER_KEY, &value)?)),
            None => Ok(None),
        }
    }

    /// Saves the cluster record.
    pub fn save_cluster(&self, cluster: &metapb::Cluster) -> Result<()> {
        self.put_synced(CLUSTER_KEY, &cluster.encode_to_vec())
    }

    /// Whether the cluster was bootstrapped.
    pub fn is_bootstrapped(&self) -> Result<bool> {
        Ok(self.db.get(BOOTSTRAPPED_KEY)?.is_some())
    }

    /// The persisted high-water mark of the id allocator (0 if none).
    pub fn load_alloc_id(&self) -> Result<u64> {
        match self.db.get(ALLOC_ID_KEY)? {
            Some(value) => decode_u64(ALLOC_ID_KEY, &value),
            None => Ok(0),
        }
    }

    /// Persists the id allocator's high-water mark.
    pub fn save_alloc_id(&self, end: u64) -> Result<()> {
        self.put_synced(ALLOC_ID_KEY, &end.to_be_bytes())
    }

    /// The persisted end of the TSO window in ms (0 if none).
    pub fn load_tso_window(&self) -> Result<u64> {
        match self.db.get(TSO_KEY)? {
            Some(value) => decode_u64(TSO_KEY, &value),
            None => Ok(0),
        }
    }

    /// Persists the end of the TSO window in ms.
    pub fn save_tso_window(&self, end_ms: u64) -> Result<()> {
        self.put_synced(TSO_KEY, &end_ms.to_be_bytes())
    }

    /// The persisted scheduling configuration, if it was ever changed.
    pub fn load_schedule_config(&self) -> Result<Option<ScheduleConfig>> {
        match self.db.get(SCHEDULE_CONFIG_KEY)? {
            Some(value) => {
                serde_json::from_slice(&value)
                    .map(Some)
                    .map_err(|e| PdServerError::Corrupt {
                        key: String::from_utf8_lossy(SCHEDULE_CONFIG_KEY).into_owned(),
                        reason: e.to_string(),
                    })
            }
            None => Ok(None),
        }
    }

    /// Persists the scheduling configuration.
    pub fn save_schedule_config(&self, config: &ScheduleConfig) -> Result<()> {
        let value = serde_json::to_vec(config).map_err(|e| PdServerError::Corrupt {
            key: String::from_utf8_lossy(SCHEDULE_CONFIG_KEY).into_owned(),
            reason: e.to_string(),
        })?;
        self.put_synced(SCHEDULE_CONFIG_KEY, &value)
    }

    fn load_prefixed<M: Message + Default>(&self, prefix: &[u8]) -> Result<Vec<M>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode_msg(&key, &value)?);
        }
        Ok(out)
    }

    /// Every persisted store.
    pub fn load_stores(&self) -> Result<Vec<metapb::Store>> {
        self.load_prefixed(STORE_PREFIX)
    }

    /// Every persisted region.
    pub fn load_regions(&self) -> Result<Vec<metapb::Region>> {
        self.load_prefixed(REGION_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = MetaStorage::open(dir.path()).unwrap();
            storage.save_alloc_id(1000).unwrap();
            storage.save_tso_window(42).unwrap();
            let mut batch = MetaBatch::default();
            batch.mark_bootstrapped();
            batch.put_store(&metapb::Store {
                id: 7,
                address: "a:1".into(),
                ..Default::default()
            });
            batch.put_region(&metapb::Region {
                id: 3,
                ..Default::default()
            });
            batch.put_region(&metapb::Region {
                id: 4,
                ..Default::default()
            });
            storage.write(batch).unwrap();
            let mut batch = MetaBatch::default();
            batch.delete_region(4);
            storage.write(batch).unwrap();
        }
        let storage = MetaStorage::open(dir.path()).unwrap();
        assert_eq!(storage.load_alloc_id().unwrap(), 1000);
        assert_eq!(storage.load_tso_window().unwrap(), 42);
        assert!(storage.is_bootstrapped().unwrap());
        let stores = storage.load_stores().unwrap();
        assert_eq!(stores.len(), 1);
        assert_eq!(stores[0].address, "a:1");
        let regions = storage.load_regions().unwrap();
        assert_eq!(regions.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn corrupt_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MetaStorage::open(dir.path()).unwrap();
        storage.put_synced(ALLOC_ID_KEY, b"xyz").unwrap();
        assert!(matches!(
            storage.load_alloc_id(),
            Err(PdServerError::Corrupt { .. })
        ));
    }
}
