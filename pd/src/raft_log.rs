//! The raft log of a replicated PD, in the `raft` column family of the
//! member's metadata RocksDB: entries, hard state, the (fixed) member
//! configuration, the applied index and where the log was last compacted.
//! Implements raft-rs's [`Storage`]; appends and state changes go into a
//! [`WriteBatch`] the caller writes.
//!
//! Compaction removes applied entries; a member that needs removed entries
//! gets a snapshot instead: every key of the metadata (the default column
//! family) as of the applied index.

use std::sync::Arc;

use concord_proto::pd_raftpb::{KvOp, MetaSnapshot};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::error::{PdServerError, Result};

/// Column family of the raft log and states.
pub const CF_RAFT: &str = "raft";

const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
const APPLIED_KEY: &[u8] = b"applied_index";
const TRUNCATED_KEY: &[u8] = b"truncated";
const LOG_PREFIX: &[u8] = b"log/";

fn log_key(index: u64) -> Vec<u8> {
    let mut key = LOG_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn corrupt(what: &str, reason: impl ToString) -> PdServerError {
    PdServerError::Corrupt {
        key: format!("raft {what}"),
        reason: reason.to_string(),
    }
}

fn to_raft_error(e: PdServerError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// The persisted raft state of this member.
pub struct RaftLog {
    db: Arc<DB>,
    hard_state: HardState,
    conf_state: ConfState,
    last_index: u64,
    last_term: u64,
    applied: u64,
    /// Index and term of the last entry compacted away (0, 0: none).
    truncated: (u64, u64),
}

impl RaftLog {
    /// Loads the log from `db`; a fresh one starts empty with `voters` as
    /// its members. A log created with other members is refused.
    pub fn open(db: Arc<DB>, voters: &[u64]) -> Result<Self> {
        let cf = db
            .cf_handle(CF_RAFT)
            .ok_or_else(|| corrupt("column family", "missing"))?;
        let mut hard_state = match db.get_cf(&cf, HARD_STATE_KEY)? {
            Some(bytes) => {
                HardState::parse_from_bytes(&bytes).map_err(|e| corrupt("hard state", e))?
            }
            None => HardState::default(),
        };
        let conf_state = match db.get_cf(&cf, CONF_STATE_KEY)? {
            Some(bytes) => {
                let cs =
                    ConfState::parse_from_bytes(&bytes).map_err(|e| corrupt("conf state", e))?;
                let mut saved = cs.voters.clone();
                saved.sort_unstable();
                let mut wanted = voters.to_vec();
                wanted.sort_unstable();
                if saved != wanted {
                    return Err(PdServerError::Config(format!(
                        "the data directory belongs to a PD group with members {saved:?}, \
                         the configuration names {wanted:?}"
                    )));
                }
                cs
            }
            None => {
                let cs = ConfState {
                    voters: voters.to_vec(),
                    ..Default::default()
                };
                let bytes = cs.write_to_bytes().map_err(|e| corrupt("conf state", e))?;
                db.put_cf(&cf, CONF_STATE_KEY, bytes)?;
                cs
            }
        };
        let applied = match db.get_cf(&cf, APPLIED_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("applied index", "expected 8 bytes"))?,
            ),
            None => 0,
        };
        // Committed entries are applied before the round's hard state is
        // written, so a crash in between leaves the recorded commit index
        // behind the applied one; what was applied was committed.
        hard_state.commit = hard_state.commit.max(applied);
        let truncated = match db.get_cf(&cf, TRUNCATED_KEY)? {
            Some(bytes) if bytes.len() == 16 => (
                u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")),
            ),
            Some(_) => return Err(corrupt("truncated state", "expected 16 bytes")),
            None => (0, 0),
        };
        let last = match db
            .iterator_cf(
                &cf,
                IteratorMode::From(&log_key(u64::MAX), Direction::Reverse),
            )
            .next()
        {
            Some(item) => {
                let (key, value) = item?;
                match key.starts_with(LOG_PREFIX) {
                    true => Some(Entry::parse_from_bytes(&value).map_err(|e| corrupt("entry", e))?),
                    false => None,
                }
            }
            None => None,
        };
        // A log compacted up to its end holds no entries.
        let (last_index, last_term) = last.map_or(truncated, |e| (e.index, e.term));
        Ok(RaftLog {
            db,
            hard_state,
            conf_state,
            last_index,
            last_term,
            applied,
            truncated,
        })
    }

    /// Index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Index of the last entry compacted away (0: none); the log holds the
    /// entries after it.
    pub fn truncated_index(&self) -> u64 {
        self.truncated.0
    }

    fn raft_cf(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(CF_RAFT)
            .ok_or_else(|| corrupt("column family", "missing"))
    }

    fn write_truncated(&mut self, truncated: (u64, u64), wb: &mut WriteBatch) -> Result<()> {
        let mut bytes = truncated.0.to_be_bytes().to_vec();
        bytes.extend_from_slice(&truncated.1.to_be_bytes());
        wb.put_cf(self.raft_cf()?, TRUNCATED_KEY, bytes);
        self.truncated = truncated;
        Ok(())
    }

    /// Removes the entries up to `index` (at most the applied index: only
    /// applied entries are ever compacted) in `wb`.
    pub fn compact(&mut self, index: u64, wb: &mut WriteBatch) -> Result<()> {
        let index = index.min(self.applied);
        if index <= self.truncated.0 {
            return Ok(());
        }
        let term = self.term_of(index)?;
        wb.delete_range_cf(self.raft_cf()?, log_key(0), log_key(index + 1));
        self.write_truncated((index, term), wb)
    }

    /// The metadata as of the applied index, as a raft snapshot.
    fn build_snapshot(&self) -> Result<Snapshot> {
        let mut entries = Vec::new();
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item?;
            entries.push(KvOp {
                key: key.into_vec(),
                value: value.into_vec(),
                delete: false,
            });
        }
        let mut snapshot = Snapshot {
            data: MetaSnapshot { entries }.encode_to_vec().into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = self.applied;
        meta.term = self.term_of(self.applied)?;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }

    /// Replaces the metadata and the log with `snapshot` in `wb`: the
    /// metadata becomes the snapshot's, applied up to its index, and the
    /// log starts after it.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot, wb: &mut WriteBatch) -> Result<()> {
        let meta = snapshot.get_metadata();
        let mut voters = meta.get_conf_state().voters.clone();
        voters.sort_unstable();
        let mut ours = self.conf_state.voters.clone();
        ours.sort_unstable();
        if voters != ours {
            return Err(corrupt(
                "snapshot",
                format!("its members {voters:?} are not this group's {ours:?}"),
            ));
        }
        let data = MetaSnapshot::decode(&snapshot.data[..]).map_err(|e| corrupt("snapshot", e))?;
        for item in self.db.iterator(IteratorMode::Start) {
            wb.delete(item?.0);
        }
        for op in data.entries {
            wb.put(op.key, op.value);
        }
        let (index, term) = (meta.index, meta.term);
        wb.delete_range_cf(self.raft_cf()?, log_key(0), log_key(u64::MAX));
        self.last_index = index;
        self.last_term = term;
        self.write_truncated((index, term), wb)?;
        // The hard state raft moves to with the snapshot comes in the same
        // ready and goes into the same batch.
        self.set_applied(index, wb)
    }

    fn term_of(&self, idx: u64) -> Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        Ok(self.read_entry(idx)?.term)
    }

    /// Adds `entries` to `wb`, replacing any conflicting tail of the log.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let cf = self.raft_cf()?;
        for e in entries {
            let bytes = e.write_to_bytes().map_err(|e| corrupt("entry", e))?;
            wb.put_cf(&cf, log_key(e.index), bytes);
        }
        if last.index < self.last_index {
            wb.delete_range_cf(&cf, log_key(last.index + 1), log_key(self.last_index + 1));
        }
        self.last_index = last.index;
        self.last_term = last.term;
        Ok(())
    }

    /// Records a new hard state in `wb`.
    pub fn set_hard_state(&mut self, hs: &HardState, wb: &mut WriteBatch) -> Result<()> {
        self.hard_state = hs.clone();
        self.write_hard_state(wb)
    }

    /// Records a new commit index in `wb`.
    pub fn set_commit(&mut self, commit: u64, wb: &mut WriteBatch) -> Result<()> {
        self.hard_state.commit = commit;
        self.write_hard_state(wb)
    }

    fn write_hard_state(&self, wb: &mut WriteBatch) -> Result<()> {
        let cf = self.raft_cf()?;
        let bytes = self
            .hard_state
            .write_to_bytes()
            .map_err(|e| corrupt("hard state", e))?;
        wb.put_cf(&cf, HARD_STATE_KEY, bytes);
        Ok(())
    }

    /// Records `index` as applied in `wb`.
    pub fn set_applied(&mut self, index: u64, wb: &mut WriteBatch) -> Result<()> {
        wb.put_cf(self.raft_cf()?, APPLIED_KEY, index.to_be_bytes());
        self.applied = index;
        Ok(())
    }

    fn read_entry(&self, index: u64) -> Result<Entry> {
        match self.db.get_cf(self.raft_cf()?, log_key(index))? {
            Some(bytes) => Entry::parse_from_bytes(&bytes).map_err(|e| corrupt("entry", e)),
            None => Err(corrupt("log", format!("entry {index} is missing"))),
        }
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut entries = Vec::with_capacity((high.saturating_sub(low)) as usize);
        let mut size = 0u64;
        for index in low..high {
            let entry = self.read_entry(index).map_err(to_raft_error)?;
            size += u64::from(entry.compute_size());
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.term_of(idx).map_err(to_raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.applied < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        // raft-rs panics on any other error here; a failed build is retried
        // when raft next wants a snapshot.
        self.build_snapshot().map_err(|e| {
            tracing::error!(error = %e, "building a PD snapshot failed");
            raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::ConfState;

    const VOTERS: [u64; 3] = [1, 2, 3];

    fn open_db(dir: &std::path::Path) -> Arc<DB> {
        Arc::new(crate::storage::open_db(dir).unwrap())
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|index| Entry {
                index,
                term,
                data: format!("entry {index}").into_bytes().into(),
                ..Default::default()
            })
            .collect()
    }

    /// A log holding `range` at `term`, applied up to `applied`.
    fn log_with(
        db: &Arc<DB>,
        range: std::ops::RangeInclusive<u64>,
        term: u64,
        applied: u64,
    ) -> RaftLog {
        let mut log = RaftLog::open(db.clone(), &VOTERS).unwrap();
        let mut wb = WriteBatch::default();
        log.append(&entries(range, term), &mut wb).unwrap();
        log.set_applied(applied, &mut wb).unwrap();
        db.write(wb).unwrap();
        log
    }

    fn compacted<T: std::fmt::Debug>(result: raft::Result<T>) -> bool {
        matches!(result, Err(raft::Error::Store(StorageError::Compacted)))
    }

    fn metadata(db: &DB) -> Vec<(Vec<u8>, Vec<u8>)> {
        db.iterator(IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.into_vec(), v.into_vec())
            })
            .collect()
    }

    #[test]
    fn compaction_drops_only_applied_entries_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let mut log = log_with(&db, 1..=10, 2, 8);
        let mut wb = WriteBatch::default();
        // Asked past the applied index, it stops there.
        log.compact(20, &mut wb).unwrap();
        db.write(wb).unwrap();
        let reopened = RaftLog::open(db.clone(), &VOTERS).unwrap();
        for log in [&log, &reopened] {
            assert_eq!(log.truncated_index(), 8);
            assert_eq!(log.first_index().unwrap(), 9);
            assert_eq!(log.last_index().unwrap(), 10);
            assert_eq!(log.term(8).unwrap(), 2);
            assert!(compacted(log.term(7)));
            let ctx = GetEntriesContext::empty(false);
            assert!(compacted(log.entries(8, 11, u64::MAX, ctx)));
            let kept = log.entries(9, 11, u64::MAX, GetEntriesContext::empty(false));
            assert_eq!(kept.unwrap(), entries(9..=10, 2));
        }
        // Compacted to its very end, the log still knows its last entry.
        let mut log = reopened;
        let mut wb = WriteBatch::default();
        log.set_applied(10, &mut wb).unwrap();
        log.compact(10, &mut wb).unwrap();
        db.write(wb).unwrap();
        let log = RaftLog::open(db.clone(), &VOTERS).unwrap();
        assert_eq!(log.first_index().unwrap(), 11);
        assert_eq!(log.last_index().unwrap(), 10);
        assert_eq!(log.term(10).unwrap(), 2);
    }

    #[test]
    fn a_member_killed_between_applying_and_recording_the_commit_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        // Entries 1..=5 applied, but the hard state written says commit 3.
        let mut log = log_with(&db, 1..=5, 2, 5);
        let mut wb = WriteBatch::default();
        let recorded = HardState {
            term: 2,
            commit: 3,
            ..Default::default()
        };
        log.set_hard_state(&recorded, &mut wb).unwrap();
        db.write(wb).unwrap();
        let log = RaftLog::open(db.clone(), &VOTERS).unwrap();
        assert_eq!(log.initial_state().unwrap().hard_state.commit, 5);
        let config = raft::Config {
            id: 1,
            applied: log.applied(),
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        // raft refuses (panics on) an applied index past the commit index.
        raft::RawNode::new(&config, log, &logger).unwrap();
    }

    #[test]
    fn a_snapshot_replaces_a_lagging_members_metadata_and_log() {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader_db = open_db(leader_dir.path());
        leader_db.put(b"region/1", b"r1").unwrap();
        leader_db.put(b"store/7", b"s7").unwrap();
        let leader = log_with(&leader_db, 1..=5, 3, 5);
        let snapshot = leader.snapshot(0, 2).unwrap();
        assert_eq!(snapshot.get_metadata().index, 5);
        assert_eq!(snapshot.get_metadata().term, 3);
        // raft may ask for a snapshot at least as new as an index.
        assert!(leader.snapshot(6, 2).is_err());

        let follower_db = open_db(follower_dir.path());
        follower_db.put(b"region/1", b"stale").unwrap();
        follower_db.put(b"region/9", b"gone since").unwrap();
        let mut follower = log_with(&follower_db, 1..=2, 1, 2);
        let mut wb = WriteBatch::default();
        follower.apply_snapshot(&snapshot, &mut wb).unwrap();
        follower_db.write(wb).unwrap();
        assert_eq!(metadata(&follower_db), metadata(&leader_db));
        let follower = RaftLog::open(follower_db.clone(), &VOTERS).unwrap();
        assert_eq!(follower.applied(), 5);
        assert_eq!(follower.first_index().unwrap(), 6);
        assert_eq!(follower.last_index().unwrap(), 5);
        assert_eq!(follower.term(5).unwrap(), 3);
        assert_eq!(follower.initial_state().unwrap().hard_state.commit, 5);

        // A snapshot of another group is refused and changes nothing.
        let mut foreign = snapshot.clone();
        foreign.mut_metadata().set_conf_state(ConfState {
            voters: vec![4, 5, 6],
            ..Default::default()
        });
        let mut follower = follower;
        let mut wb = WriteBatch::default();
        assert!(follower.apply_snapshot(&foreign, &mut wb).is_err());
        assert!(wb.is_empty());
    }
}
