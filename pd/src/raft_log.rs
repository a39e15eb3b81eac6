//! The raft log of a replicated PD, in the `raft` column family of the
//! member's metadata RocksDB: entries, hard state, the (fixed) member
//! configuration and the applied index. Implements raft-rs's [`Storage`];
//! appends and state changes go into a [`WriteBatch`] the caller writes.

use std::sync::Arc;

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
}

impl RaftLog {
    /// Loads the log from `db`; a fresh one starts empty with `voters` as
    /// its members. A log created with other members is refused.
    pub fn open(db: Arc<DB>, voters: &[u64]) -> Result<Self> {
        let cf = db
            .cf_handle(CF_RAFT)
            .ok_or_else(|| corrupt("column family", "missing"))?;
        let hard_state = match db.get_cf(&cf, HARD_STATE_KEY)? {
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
        let (last_index, last_term) = last.map_or((0, 0), |e| (e.index, e.term));
        Ok(RaftLog {
            db,
            hard_state,
            conf_state,
            last_index,
            last_term,
            applied,
        })
    }

    /// Index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Adds `entries` to `wb`, replacing any conflicting tail of the log.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let cf = self
            .db
            .cf_handle(CF_RAFT)
            .ok_or_else(|| corrupt("column family", "missing"))?;
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
        let cf = self
            .db
            .cf_handle(CF_RAFT)
            .ok_or_else(|| corrupt("column family", "missing"))?;
        let bytes = self
            .hard_state
            .write_to_bytes()
            .map_err(|e| corrupt("hard state", e))?;
        wb.put_cf(&cf, HARD_STATE_KEY, bytes);
        Ok(())
    }

    /// Records `index` as applied in `wb`.
    pub fn set_applied(&mut self, index: u64, wb: &mut WriteBatch) -> Result<()> {
        let cf = self
            .db
            .cf_handle(CF_RAFT)
            .ok_or_else(|| corrupt("column family", "missing"))?;
        wb.put_cf(&cf, APPLIED_KEY, index.to_be_bytes());
        self.applied = index;
        Ok(())
    }

    fn read_entry(&self, index: u64) -> Result<Entry> {
        let cf = self
            .db
            .cf_handle(CF_RAFT)
            .ok_or_else(|| corrupt("column family", "missing"))?;
        match self.db.get_cf(&cf, log_key(index))? {
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
        if low == 0 {
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
        if idx == 0 {
            return Ok(0);
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.read_entry(idx).map(|e| e.term).map_err(to_raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The log is never compacted, so raft never needs a snapshot.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
