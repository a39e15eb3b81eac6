//! Raft storage of one region peer over the store's shared engine.
//!
//! Implements raft-rs's [`Storage`] by reading the region's log and states
//! from the `raft` column family. Writes never go straight to the engine:
//! they are added to the write batch of the poll round (group commit), and
//! the in-memory states here are updated in step.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use concord_proto::metapb::{self, PeerRole};
use concord_proto::raft_serverpb::{
    PeerState, RaftApplyState, RaftLocalState, RaftTruncatedState, RegionLocalState,
    RegionSnapshot, SnapshotEntry,
};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::engine::{Engine, Reader, WriteBatch, CF_RAFT, DATA_CFS};
use crate::keys;

/// Index and term of the first log position of a region created by
/// bootstrap or split: its peers start with identical, already-applied logs.
pub const RAFT_INIT_LOG_INDEX: u64 = 5;
/// See [`RAFT_INIT_LOG_INDEX`].
pub const RAFT_INIT_LOG_TERM: u64 = 5;

/// Errors while loading or saving raft state.
#[derive(Debug, thiserror::Error)]
pub enum StorageFault {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// Persisted state could not be decoded.
    #[error("corrupt {what} of region {region_id}: {reason}")]
    Corrupt {
        /// Which state.
        what: &'static str,
        /// The region it belongs to.
        region_id: u64,
        /// The decoder's complaint.
        reason: String,
    },
}

fn corrupt(what: &'static str, region_id: u64, reason: impl ToString) -> StorageFault {
    StorageFault::Corrupt {
        what,
        region_id,
        reason: reason.to_string(),
    }
}

fn to_raft_error(e: StorageFault) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// Reads a prost message from the `raft` column family.
pub fn read_state<M: prost::Message + Default>(
    reader: &impl Reader,
    key: &[u8],
    what: &'static str,
    region_id: u64,
) -> Result<Option<M>, StorageFault> {
    match reader.get_cf(CF_RAFT, key)? {
        None => Ok(None),
        Some(bytes) => M::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| corrupt(what, region_id, e)),
    }
}

/// Adds a prost message to the `raft` column family in `wb`.
pub fn write_state(wb: &mut WriteBatch, key: &[u8], state: &impl prost::Message) {
    wb.put_cf(CF_RAFT, key, &state.encode_to_vec())
        .expect("the raft column family exists");
}

/// The raft configuration a region's peer list describes.
pub fn conf_state_of(region: &metapb::Region) -> ConfState {
    let mut cs = ConfState::default();
    let joint = region
        .peers
        .iter()
        .any(|p| matches!(p.role(), PeerRole::IncomingVoter | PeerRole::DemotingVoter));
    for p in &region.peers {
        match p.role() {
            PeerRole::Voter => {
                cs.voters.push(p.id);
                if joint {
                    cs.voters_outgoing.push(p.id);
                }
            }
            PeerRole::IncomingVoter => cs.voters.push(p.id),
            PeerRole::DemotingVoter => {
                cs.voters_outgoing.push(p.id);
                cs.learners_next.push(p.id);
            }
            PeerRole::Learner => cs.learners.push(p.id),
        }
    }
    cs
}

/// Adds the states of a freshly created (bootstrapped or split-off) region.
pub fn write_initial_states(wb: &mut WriteBatch, region: &metapb::Region) {
    let raft_state = RaftLocalState {
        term: RAFT_INIT_LOG_TERM,
        vote: 0,
        commit: RAFT_INIT_LOG_INDEX,
        last_index: RAFT_INIT_LOG_INDEX,
    };
    let apply_state = initial_apply_state(RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM);
    write_state(wb, &keys::raft_state_key(region.id), &raft_state);
    write_state(wb, &keys::apply_state_key(region.id), &apply_state);
    write_region_state(wb, region, PeerState::Normal);
}

/// Adds a region's local state.
pub fn write_region_state(wb: &mut WriteBatch, region: &metapb::Region, state: PeerState) {
    let local = RegionLocalState {
        state: state as i32,
        region: Some(region.clone()),
    };
    write_state(wb, &keys::region_state_key(region.id), &local);
}

fn initial_apply_state(index: u64, term: u64) -> RaftApplyState {
    RaftApplyState {
        applied_index: index,
        applied_term: term,
        truncated_state: Some(RaftTruncatedState { index, term }),
    }
}

/// The raft log, hard state and apply position of one region peer.
pub struct PeerStorage {
    engine: Engine,
    region: metapb::Region,
    raft_state: RaftLocalState,
    apply_state: RaftApplyState,
    last_term: u64,
    /// Raft asks for snapshots through `&self`.
    snapshot: RefCell<SnapshotState>,
}

/// Where a leader's snapshot for a follower stands (built off the raft
/// thread, see [`super::snapshot`]).
#[derive(Default)]
enum SnapshotState {
    #[default]
    None,
    /// Raft asked for one, to send to peer `to`; not handed out yet.
    Wanted { to: u64 },
    /// The snapshot thread builds it from an engine view taken when at
    /// least `floor` was applied (its index will be that or more).
    Building { to: u64, floor: u64 },
    /// Built `at`; raft takes it when it asks next.
    Built { snap: Snapshot, at: Instant },
}

impl PeerStorage {
    /// Loads a peer's storage from the engine. A region without persisted
    /// raft state is an uninitialized peer (created to receive a snapshot).
    pub fn load(engine: Engine, region: metapb::Region) -> Result<PeerStorage, StorageFault> {
        let id = region.id;
        let raft_state: RaftLocalState =
            read_state(&engine, &keys::raft_state_key(id), "raft state", id)?.unwrap_or_default();
        let apply_state: RaftApplyState =
            read_state(&engine, &keys::apply_state_key(id), "apply state", id)?
                .unwrap_or_else(|| initial_apply_state(0, 0));
        let mut storage = PeerStorage {
            engine,
            region,
            raft_state,
            apply_state,
            last_term: 0,
            snapshot: RefCell::default(),
        };
        // A hard state whose only change is the commit index is not written
        // (see `set_hard_state`), and entries apply before their commit is
        // recorded: what was applied was committed.
        storage.raft_state.commit = storage
            .raft_state
            .commit
            .max(storage.apply_state.applied_index);
        let last = storage.raft_state.last_index;
        storage.last_term = storage.term_of(last)?;
        Ok(storage)
    }

    /// Marks a wanted snapshot as being built; true if one was wanted (the
    /// caller then takes an engine view at once and hands it to the
    /// snapshot thread).
    pub fn start_snapshot(&self) -> bool {
        let mut state = self.snapshot.borrow_mut();
        match *state {
            SnapshotState::Wanted { to } => {
                *state = SnapshotState::Building {
                    to,
                    floor: self.apply_state.applied_index,
                };
                true
            }
            _ => false,
        }
    }

    /// While a snapshot is being built or waits for raft: an index it
    /// covers at most up to, so log GC keeps the entries after it (the
    /// follower continues from there).
    pub fn snapshot_floor(&self) -> Option<u64> {
        match &*self.snapshot.borrow() {
            SnapshotState::Building { floor, .. } => Some(*floor),
            SnapshotState::Built { snap, .. } => Some(snap.get_metadata().index),
            SnapshotState::None | SnapshotState::Wanted { .. } => None,
        }
    }

    /// Drops a built snapshot raft has not taken within `max_age` (the
    /// follower it was for no longer needs it).
    pub fn expire_snapshot(&mut self, max_age: Duration) {
        let state = self.snapshot.get_mut();
        if matches!(state, SnapshotState::Built { at, .. } if at.elapsed() > max_age) {
            *state = SnapshotState::None;
        }
    }

    /// Takes the snapshot thread's result; the peer it was wanted for, if
    /// it is now ready for raft to send.
    pub fn finish_snapshot(&mut self, built: Result<Snapshot, String>) -> Option<u64> {
        let state = self.snapshot.get_mut();
        let SnapshotState::Building { to, .. } = *state else {
            // Dropped meanwhile (this peer stopped leading).
            return None;
        };
        match built {
            Ok(snap) => {
                *state = SnapshotState::Built {
                    snap,
                    at: Instant::now(),
                };
                Some(to)
            }
            Err(e) => {
                tracing::warn!(
                    region_id = self.region.id,
                    "building a snapshot failed: {e}"
                );
                *state = SnapshotState::None;
                None
            }
        }
    }

    /// Forgets any snapshot wanted, in the making or built.
    pub fn drop_snapshot(&mut self) {
        *self.snapshot.get_mut() = SnapshotState::None;
    }

    /// The region as this peer knows it.
    pub fn region(&self) -> &metapb::Region {
        &self.region
    }

    /// Replaces the in-memory region (after a conf change or split was applied).
    pub fn set_region(&mut self, region: metapb::Region) {
        self.region = region;
    }

    /// Whether the peer has a range and a log (it is not waiting for its
    /// first snapshot).
    pub fn is_initialized(&self) -> bool {
        !self.region.peers.is_empty()
    }

    /// The apply position the raft thread last heard of.
    pub fn apply_state(&self) -> &RaftApplyState {
        &self.apply_state
    }

    /// Records the apply worker's progress.
    pub fn set_apply_state(&mut self, state: RaftApplyState) {
        self.apply_state = state;
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.apply_state.applied_index
    }

    /// Index of the last entry in the log.
    pub fn last_index(&self) -> u64 {
        self.raft_state.last_index
    }

    fn truncated(&self) -> RaftTruncatedState {
        self.apply_state.truncated_state.unwrap_or_default()
    }

    fn term_of(&self, idx: u64) -> Result<u64, StorageFault> {
        let truncated = self.truncated();
        if idx == truncated.index {
            return Ok(truncated.term);
        }
        let id = self.region.id;
        match self.engine.get_cf(CF_RAFT, &keys::raft_log_key(id, idx))? {
            Some(bytes) => Entry::parse_from_bytes(&bytes)
                .map(|e| e.term)
                .map_err(|e| corrupt("log entry", id, e)),
            None => Err(corrupt("log", id, format!("entry {idx} is missing"))),
        }
    }

    /// Adds `entries` (from a raft Ready) to `wb`, replacing any conflicting
    /// tail of the log.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let id = self.region.id;
        for e in entries {
            wb.put_cf(
                CF_RAFT,
                &keys::raft_log_key(id, e.index),
                &e.write_to_bytes().expect("entries always encode"),
            )
            .expect("the raft column family exists");
        }
        if last.index < self.raft_state.last_index {
            wb.delete_range_cf(
                CF_RAFT,
                &keys::raft_log_key(id, last.index + 1),
                &keys::raft_log_key(id, self.raft_state.last_index + 1),
            )
            .expect("the raft column family exists");
        }
        debug_assert!(first.index > self.truncated().index);
        self.raft_state.last_index = last.index;
        self.last_term = last.term;
    }

    /// Records a new hard state; true if it must be written before the
    /// messages that depend on it leave. A new term or vote must; a new
    /// commit index alone need not (raft keeps it in memory and a restarted
    /// peer relearns it from its leader), so it is written with the next
    /// raft state that is, sparing a round its fsync when a commit is all
    /// it has to record.
    pub fn set_hard_state(&mut self, hs: &HardState) -> bool {
        let must_write = (hs.term, hs.vote) != (self.raft_state.term, self.raft_state.vote);
        self.raft_state.term = hs.term;
        self.raft_state.vote = hs.vote;
        self.raft_state.commit = hs.commit;
        must_write
    }

    /// Adds the raft state (hard state and last index) to `wb`.
    pub fn write_raft_state(&self, wb: &mut WriteBatch) {
        write_state(wb, &keys::raft_state_key(self.region.id), &self.raft_state);
    }

    /// Deletes the log entries up to and including `index`, which the apply
    /// worker has already recorded as truncated.
    pub fn compact_log_to(&self, index: u64, wb: &mut WriteBatch) {
        let id = self.region.id;
        wb.delete_range_cf(
            CF_RAFT,
            &keys::raft_log_key(id, 0),
            &keys::raft_log_key(id, index + 1),
        )
        .expect("the raft column family exists");
    }

    /// Replaces the region's data and log with a snapshot's, in `wb`.
    pub fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        wb: &mut WriteBatch,
    ) -> Result<(), StorageFault> {
        let id = self.region.id;
        let payload =
            RegionSnapshot::decode(&snap.data[..]).map_err(|e| corrupt("snapshot", id, e))?;
        let region = payload
            .region
            .ok_or_else(|| corrupt("snapshot", id, "it carries no region"))?;
        let start = keys::data_key(&region.start_key);
        let end = keys::data_end_key(&region.end_key);
        for cf in DATA_CFS {
            wb.delete_range_cf(cf, &start, &end)?;
        }
        for e in &payload.entries {
            wb.put_cf(&e.cf, &e.key, &e.value)?;
        }
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        wb.delete_range_cf(
            CF_RAFT,
            &keys::raft_log_key(id, 0),
            &keys::raft_log_key(id, self.raft_state.last_index.max(index) + 1),
        )?;
        self.apply_state = initial_apply_state(index, term);
        self.raft_state.last_index = index;
        self.raft_state.commit = self.raft_state.commit.max(index);
        self.raft_state.term = self.raft_state.term.max(term);
        self.last_term = term;
        write_state(wb, &keys::apply_state_key(id), &self.apply_state);
        write_region_state(wb, &region, PeerState::Normal);
        self.region = region;
        Ok(())
    }
}

/// A snapshot of region `id` as `view` (a point-in-time view of the
/// engine) has it applied: its data and region at its applied index.
pub fn build_snapshot(view: &crate::engine::Snapshot, id: u64) -> Result<Snapshot, StorageFault> {
    let apply: RaftApplyState = read_state(view, &keys::apply_state_key(id), "apply state", id)?
        .ok_or_else(|| corrupt("apply state", id, "missing"))?;
    let local: RegionLocalState =
        read_state(view, &keys::region_state_key(id), "region state", id)?
            .ok_or_else(|| corrupt("region state", id, "missing"))?;
    let region = local.region.unwrap_or_default();
    let start = keys::data_key(&region.start_key);
    let end = keys::data_end_key(&region.end_key);
    let mut entries = Vec::new();
    for cf in DATA_CFS {
        view.scan_cf(cf, &start, &end, false, |k, v| {
            entries.push(SnapshotEntry {
                cf: cf.to_string(),
                key: k.to_vec(),
                value: v.to_vec(),
            });
            true
        })?;
    }
    let mut out = Snapshot::default();
    let meta = out.mut_metadata();
    meta.index = apply.applied_index;
    meta.term = apply.applied_term;
    meta.set_conf_state(conf_state_of(&region));
    out.data = RegionSnapshot {
        region: Some(region),
        entries,
    }
    .encode_to_vec()
    .into();
    Ok(out)
}

impl raft::Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hs = HardState {
            term: self.raft_state.term,
            vote: self.raft_state.vote,
            commit: self.raft_state.commit,
            ..Default::default()
        };
        Ok(RaftState::new(hs, conf_state_of(&self.region)))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated().index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.raft_state.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let id = self.region.id;
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut fault = None;
        self.engine
            .scan_cf(
                CF_RAFT,
                &keys::raft_log_key(id, low),
                &keys::raft_log_key(id, high),
                false,
                |_, v| match Entry::parse_from_bytes(v) {
                    Ok(e) => {
                        size += v.len() as u64;
                        if !entries.is_empty() && size > max_size {
                            return false;
                        }
                        entries.push(e);
                        true
                    }
                    Err(e) => {
                        fault = Some(corrupt("log entry", id, e));
                        false
                    }
                },
            )
            .map_err(|e| to_raft_error(e.into()))?;
        if let Some(f) = fault {
            return Err(to_raft_error(f));
        }
        let expected_last = entries.last().map(|e| e.index);
        if entries.first().map(|e| e.index) != Some(low)
            || expected_last != Some(low + entries.len() as u64 - 1)
        {
            return Err(to_raft_error(corrupt(
                "log",
                id,
                format!("a gap in entries [{low}, {high})"),
            )));
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let truncated = self.truncated();
        if idx < truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.raft_state.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.raft_state.last_index {
            return Ok(self.last_term);
        }
        self.term_of(idx).map_err(to_raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated().index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.raft_state.last_index)
    }

    /// A built snapshot recent enough for the request (and the log's
    /// start); otherwise marks one wanted and answers that it is not
    /// available yet (raft asks again on its next append to `to`).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut state = self.snapshot.borrow_mut();
        match std::mem::take(&mut *state) {
            SnapshotState::Built { snap, .. }
                if snap.get_metadata().index >= request_index.max(self.truncated().index) =>
            {
                return Ok(snap);
            }
            pending @ (SnapshotState::Wanted { .. } | SnapshotState::Building { .. }) => {
                *state = pending;
            }
            // None yet, or one too old for this request.
            SnapshotState::None | SnapshotState::Built { .. } => {
                *state = SnapshotState::Wanted { to }
            }
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CF_DEFAULT;
    use raft::Storage as _;

    fn unavailable(r: raft::Result<Snapshot>) -> bool {
        matches!(
            r,
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        )
    }

    #[test]
    fn raft_gets_a_snapshot_only_once_the_snapshot_thread_has_built_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &Default::default()).unwrap();
        let region = metapb::Region {
            id: 7,
            peers: vec![metapb::Peer {
                id: 1,
                store_id: 1,
                ..Default::default()
            }],
            region_epoch: Some(Default::default()),
            ..Default::default()
        };
        let mut wb = engine.write_batch();
        write_initial_states(&mut wb, &region);
        wb.put_cf(CF_DEFAULT, &keys::data_key(b"k"), b"v").unwrap();
        engine.write(wb, true).unwrap();
        let mut storage = PeerStorage::load(engine.clone(), region).unwrap();
        let build = || build_snapshot(&engine.snapshot(), 7).map_err(|e| e.to_string());

        assert!(!storage.start_snapshot(), "nothing was asked for");
        assert!(unavailable(storage.snapshot(0, 2)));
        assert!(storage.start_snapshot());
        assert_eq!(storage.snapshot_floor(), Some(RAFT_INIT_LOG_INDEX));
        // Asked again while it is being built: still unavailable, and no
        // second build is started.
        assert!(unavailable(storage.snapshot(0, 3)));
        assert!(!storage.start_snapshot());
        assert_eq!(storage.finish_snapshot(build()), Some(2));
        // Kept while younger than the limit.
        storage.expire_snapshot(Duration::from_secs(60));
        assert_eq!(storage.snapshot_floor(), Some(RAFT_INIT_LOG_INDEX));
        let snap = storage.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, RAFT_INIT_LOG_INDEX);
        let payload = RegionSnapshot::decode(&snap.data[..]).unwrap();
        assert!(payload
            .entries
            .iter()
            .any(|e| e.key == keys::data_key(b"k")));
        // Raft took it: the next request starts a new build.
        assert!(unavailable(storage.snapshot(0, 2)));
        assert!(storage.start_snapshot());
        assert_eq!(storage.finish_snapshot(build()), Some(2));
        storage.expire_snapshot(Duration::ZERO);
        assert_eq!(storage.snapshot_floor(), None);
        // A peer that stops leading drops the build in progress.
        assert!(unavailable(storage.snapshot(0, 2)));
        assert!(storage.start_snapshot());
        storage.drop_snapshot();
        assert_eq!(storage.finish_snapshot(build()), None);
        assert!(unavailable(storage.snapshot(0, 2)));
    }
}
