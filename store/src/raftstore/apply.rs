//! The apply pool: threads that apply committed raft entries to the data
//! column families, off the raft threads, so applying never blocks raft.
//!
//! Each region is served by one apply thread (chosen by region id), so its
//! entries apply in log order. A thread drains its queue in batches and
//! writes every region's changes together with that region's new apply state
//! in ONE write batch: the applied index always matches the data it covers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use concord_proto::metapb::{self, PeerRole};
use concord_proto::raft_cmdpb::{
    admin_request, request, AdminRequest, BatchSplitRequest, CasResponse, ChangePeerV2Request,
    ConfChangeType, RaftCmdRequest, Request, Response,
};
use concord_proto::raft_serverpb::{PeerState, RaftApplyState, RaftTruncatedState};
use crossbeam_channel::{Receiver, Sender};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType};
use tracing::{error, info};

use super::context::RaftStats;
use super::msg::{ApplyResult, CmdError, CmdResponse, CmdResult, ExecResult, PeerMsg};
use super::proposal_batch::Waiters;
use super::router::StoreRouter;
use super::storage::{write_initial_states, write_region_state, write_state};
use super::util;
use crate::engine::{Engine, Reader, WriteBatch};
use crate::{keys, raw_value};

/// Work for an apply thread.
pub enum ApplyTask {
    /// Start applying for a region whose data is at `apply_state`.
    Register {
        /// The region.
        region: metapb::Region,
        /// Where its data stands.
        apply_state: RaftApplyState,
    },
    /// Committed entries of a region, with the callbacks of the proposals
    /// among them as `(index, term, callback)`.
    Apply {
        /// The region.
        region_id: u64,
        /// The entries, in log order.
        entries: Vec<Entry>,
        /// Callers to answer once their entry is applied.
        callbacks: Vec<(u64, u64, Waiters)>,
        /// When the entries were handed over, to measure the apply wait.
        queued_at: Instant,
    },
    /// Answered once every earlier task of this thread is applied and written.
    Fence(Sender<()>),
    /// Finish the queue so far and exit.
    Stop,
    /// The region's peer is gone; fail its callbacks and forget it.
    Destroy {
        /// The region.
        region_id: u64,
    },
}

/// Handle on the apply threads.
pub struct ApplyPool {
    senders: Vec<Sender<ApplyTask>>,
    handles: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl ApplyPool {
    /// Starts `threads` apply threads writing to `engine` and reporting to
    /// the peers through `router`.
    pub fn start(
        threads: usize,
        engine: Engine,
        router: StoreRouter,
        stats: Arc<RaftStats>,
    ) -> ApplyPool {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = crossbeam_channel::unbounded();
            let mut worker = ApplyWorker {
                engine: engine.clone(),
                router: router.clone(),
                stats: stats.clone(),
                delegates: HashMap::new(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("apply-{i}"))
                .spawn(move || worker.run(rx))
                .expect("spawn apply thread");
            senders.push(tx);
            handles.push(handle);
        }
        ApplyPool {
            senders,
            handles: parking_lot::Mutex::new(handles),
        }
    }

    /// Queues `task` on the thread that serves `region_id`.
    pub fn schedule(&self, region_id: u64, task: ApplyTask) {
        let i = (region_id % self.senders.len() as u64) as usize;
        let _ = self.senders[i].send(task);
    }

    /// Waits until everything queued so far for `region_id` is applied.
    pub fn fence(&self, region_id: u64) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.schedule(region_id, ApplyTask::Fence(tx));
        let _ = rx.recv();
    }

    /// Stops the threads after they finish their queues.
    pub fn stop(&self) {
        for tx in &self.senders {
            let _ = tx.send(ApplyTask::Stop);
        }
        for h in self.handles.lock().drain(..) {
            let _ = h.join();
        }
    }
}

struct Delegate {
    region: metapb::Region,
    apply_state: RaftApplyState,
    callbacks: VecDeque<(u64, u64, Waiters)>,
}

/// Changes collected since the last engine write.
#[derive(Default)]
struct Pending {
    wb: Option<WriteBatch>,
    dirty: Vec<u64>,
    responses: Vec<(Waiters, CmdResult)>,
    results: HashMap<u64, ApplyResult>,
}

struct ApplyWorker {
    engine: Engine,
    router: StoreRouter,
    stats: Arc<RaftStats>,
    delegates: HashMap<u64, Delegate>,
}

const MAX_TASKS_PER_BATCH: usize = 256;

impl ApplyWorker {
    fn run(&mut self, rx: Receiver<ApplyTask>) {
        let mut stopping = false;
        while !stopping {
            let Ok(first) = rx.recv() else { return };
            let started = Instant::now();
            let mut applied = false;
            let mut pending = Pending::default();
            let mut fences = Vec::new();
            for task in std::iter::once(first).chain(rx.try_iter().take(MAX_TASKS_PER_BATCH)) {
                match task {
                    ApplyTask::Register {
                        region,
                        apply_state,
                    } => {
                        self.delegates.insert(
                            region.id,
                            Delegate {
                                region,
                                apply_state,
                                callbacks: VecDeque::new(),
                            },
                        );
                    }
                    ApplyTask::Apply {
                        region_id,
                        entries,
                        callbacks,
                        queued_at,
                    } => {
                        self.stats.apply_wait.record(queued_at.elapsed());
                        self.apply(&mut pending, region_id, entries, callbacks);
                        applied = true;
                    }
                    ApplyTask::Fence(tx) => fences.push(tx),
                    ApplyTask::Stop => stopping = true,
                    ApplyTask::Destroy { region_id } => {
                        if let Some(d) = self.delegates.remove(&region_id) {
                            for (_, _, waiters) in d.callbacks {
                                waiters.answer(Err(CmdError::peer_removed_before_apply(region_id)));
                            }
                        }
                    }
                }
            }
            self.commit(&mut pending);
            if applied {
                self.stats.apply.record(started.elapsed());
            }
            for f in fences {
                let _ = f.send(());
            }
        }
    }

    /// Writes what is pending, then answers callbacks and reports progress.
    fn commit(&mut self, pending: &mut Pending) {
        // Tests pause here (every round stops, fences too), or drop the
        // round unwritten and unanswered as a store dying before it applies
        // would (the thread's own state stays ahead: restart the store).
        fail::fail_point!("apply_commit", |_| *pending = Pending::default());
        let mut wb = pending
            .wb
            .take()
            .unwrap_or_else(|| self.engine.write_batch());
        for id in pending.dirty.drain(..) {
            if let Some(d) = self.delegates.get(&id) {
                write_state(&mut wb, &keys::apply_state_key(id), &d.apply_state);
            }
        }
        if !wb.is_empty() {
            if let Err(e) = self.engine.write(wb, false) {
                // The engine is unusable; nothing acknowledged can be trusted
                // to have been written, so stop the process.
                error!("apply write failed: {e}");
                std::process::abort();
            }
        }
        for (waiters, result) in pending.responses.drain(..) {
            waiters.answer(result);
        }
        for (region_id, result) in pending.results.drain() {
            let _ = self.router.send(region_id, PeerMsg::Applied(result));
        }
    }

    fn apply(
        &mut self,
        pending: &mut Pending,
        region_id: u64,
        entries: Vec<Entry>,
        callbacks: Vec<(u64, u64, Waiters)>,
    ) {
        let Some(delegate) = self.delegates.get_mut(&region_id) else {
            for (_, _, waiters) in callbacks {
                waiters.answer(Err(CmdError::peer_removed_before_apply(region_id)));
            }
            return;
        };
        delegate.callbacks.extend(callbacks);
        for entry in entries {
            let delegate = self.delegates.get_mut(&region_id).expect("checked above");
            if entry.index <= delegate.apply_state.applied_index {
                continue;
            }
            let (result, exec) = self.apply_entry(pending, region_id, &entry);
            let delegate = self.delegates.get_mut(&region_id).expect("checked above");
            delegate.apply_state.applied_index = entry.index;
            delegate.apply_state.applied_term = entry.term;
            if !pending.dirty.contains(&region_id) {
                pending.dirty.push(region_id);
            }
            while let Some((index, _, _)) = delegate.callbacks.front() {
                if *index > entry.index {
                    break;
                }
                let (index, term, waiters) = delegate.callbacks.pop_front().expect("front exists");
                let answer = if index < entry.index {
                    // The proposal's entry was never applied here: a
                    // snapshot from a newer leader covered its index. It
                    // may be in that snapshot, or may have been dropped.
                    Err(CmdError::covered_by_snapshot(region_id))
                } else if term == entry.term {
                    result.clone()
                } else {
                    // Another entry took the index: this one never commits.
                    Err(CmdError::stale_command())
                };
                pending.responses.push((waiters, answer));
            }
            let report = pending
                .results
                .entry(region_id)
                .or_insert_with(|| ApplyResult {
                    apply_state: RaftApplyState::default(),
                    exec_results: Vec::new(),
                    written_bytes: 0,
                    written_keys: 0,
                });
            report.apply_state = delegate.apply_state;
            if let Some(exec) = exec {
                report.exec_results.push(exec);
            }
        }
    }

    fn apply_entry(
        &mut self,
        pending: &mut Pending,
        region_id: u64,
        entry: &Entry,
    ) -> (CmdResult, Option<ExecResult>) {
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => (Ok(CmdResponse::default()), None),
            EntryType::EntryNormal => match RaftCmdRequest::decode(&entry.data[..]) {
                Ok(cmd) => self.apply_command(pending, region_id, cmd),
                Err(e) => (
                    Err(CmdError::Internal(format!("undecodable command: {e}"))),
                    None,
                ),
            },
            EntryType::EntryConfChangeV2 => match ConfChangeV2::parse_from_bytes(&entry.data) {
                Ok(cc) => self.apply_conf_change(pending, region_id, cc, &entry.context),
                Err(e) => (
                    Err(CmdError::Internal(format!("undecodable conf change: {e}"))),
                    None,
                ),
            },
            EntryType::EntryConfChange => (
                Err(CmdError::Internal("v1 conf changes are not used".into())),
                None,
            ),
        }
    }

    fn apply_command(
        &mut self,
        pending: &mut Pending,
        region_id: u64,
        cmd: RaftCmdRequest,
    ) -> (CmdResult, Option<ExecResult>) {
        let delegate = &self.delegates[&region_id];
        let header = cmd.header.unwrap_or_default();
        let check_conf_ver = cmd.admin_request.is_some();
        if let Err(e) = util::check_epoch(
            &delegate.region,
            header.region_epoch.as_ref(),
            check_conf_ver,
        ) {
            return (Err(e), None);
        }
        if let Some(admin) = cmd.admin_request {
            return self.apply_admin(pending, region_id, admin);
        }
        let region = delegate.region.clone();
        let mut responses = Vec::with_capacity(cmd.requests.len());
        for req in &cmd.requests {
            if let Err(e) = util::check_request_keys(&region, req) {
                return (Err(e), None);
            }
        }
        for req in cmd.requests {
            match self.apply_request(pending, region_id, req) {
                Ok(resp) => responses.push(resp),
                Err(e) => return (Err(e), None),
            }
        }
        (
            Ok(CmdResponse {
                responses,
                regions: Vec::new(),
            }),
            None,
        )
    }

    fn batch<'a>(&self, pending: &'a mut Pending) -> &'a mut WriteBatch {
        pending.wb.get_or_insert_with(|| self.engine.write_batch())
    }

    fn count_write(pending: &mut Pending, region_id: u64, bytes: usize) {
        let r = pending
            .results
            .entry(region_id)
            .or_insert_with(|| ApplyResult {
                apply_state: RaftApplyState::default(),
                exec_results: Vec::new(),
                written_bytes: 0,
                written_keys: 0,
            });
        r.written_bytes += bytes as u64;
        r.written_keys += 1;
    }

    fn apply_request(
        &mut self,
        pending: &mut Pending,
        region_id: u64,
        req: Request,
    ) -> Result<Response, CmdError> {
        let internal = |e: crate::engine::EngineError| CmdError::Internal(e.to_string());
        match req.cmd {
            Some(request::Cmd::Put(put)) => {
                Self::count_write(pending, region_id, put.key.len() + put.value.len());
                self.batch(pending)
                    .put_cf(&put.cf, &keys::data_key(&put.key), &put.value)
                    .map_err(internal)?;
            }
            Some(request::Cmd::Delete(del)) => {
                Self::count_write(pending, region_id, del.key.len());
                self.batch(pending)
                    .delete_cf(&del.cf, &keys::data_key(&del.key))
                    .map_err(internal)?;
            }
            Some(request::Cmd::DeleteRange(dr)) => {
                let region = &self.delegates[&region_id].region;
                let start =
                    keys::data_key(dr.start_key.as_slice().max(region.start_key.as_slice()));
                let end = if dr.end_key.is_empty() {
                    keys::data_end_key(&region.end_key)
                } else if region.end_key.is_empty() {
                    keys::data_key(&dr.end_key)
                } else {
                    keys::data_key(dr.end_key.as_slice().min(region.end_key.as_slice()))
                };
                self.batch(pending)
                    .delete_range_cf(&dr.cf, &start, &end)
                    .map_err(internal)?;
            }
            Some(request::Cmd::Cas(cas)) => {
                // Reads must see every earlier write, so write them first.
                if pending.wb.as_ref().is_some_and(|wb| !wb.is_empty()) {
                    self.commit(pending);
                }
                let key = keys::data_key(&cas.key);
                let stored = self.engine.get_cf(&cas.cf, &key).map_err(internal)?;
                let current = stored
                    .as_deref()
                    .and_then(|s| raw_value::decode(s, cas.now_secs));
                let succeed = match current {
                    None => cas.previous_not_exist,
                    Some(v) => !cas.previous_not_exist && v == cas.previous_value.as_slice(),
                };
                if succeed {
                    Self::count_write(pending, region_id, cas.key.len() + cas.value.len());
                    self.batch(pending)
                        .put_cf(&cas.cf, &key, &cas.value)
                        .map_err(internal)?;
                }
                return Ok(Response {
                    cas: Some(CasResponse {
                        succeed,
                        previous_not_exist: current.is_none(),
                        previous_value: current.map(<[u8]>::to_vec).unwrap_or_default(),
                    }),
                });
            }
            None => return Err(CmdError::InvalidArgument("empty request".into())),
        }
        Ok(Response::default())
    }

    fn apply_admin(
        &mut self,
        pending: &mut Pending,
        region_id: u64,
        admin: AdminRequest,
    ) -> (CmdResult, Option<ExecResult>) {
        match admin.cmd {
            Some(admin_request::Cmd::CompactLog(req)) => {
                let delegate = self.delegates.get_mut(&region_id).expect("exists");
                let truncated = delegate.apply_state.truncated_state.unwrap_or_default();
                if req.compact_index <= truncated.index
                    || req.compact_index > delegate.apply_state.applied_index
                {
                    return (Ok(CmdResponse::default()), None);
                }
                delegate.apply_state.truncated_state = Some(RaftTruncatedState {
                    index: req.compact_index,
                    term: req.compact_term,
                });
                (
                    Ok(CmdResponse::default()),
                    Some(ExecResult::CompactLog {
                        index: req.compact_index,
                    }),
                )
            }
            Some(admin_request::Cmd::Splits(req)) => {
                match self.apply_split(pending, region_id, req) {
                    Ok((derived, regions)) => (
                        Ok(CmdResponse {
                            responses: Vec::new(),
                            regions: regions.clone(),
                        }),
                        Some(ExecResult::Split { derived, regions }),
                    ),
                    Err(e) => (Err(e), None),
                }
            }
            Some(admin_request::Cmd::ChangePeerV2(_)) | None => (
                Err(CmdError::InvalidArgument(
                    "membership changes must be proposed as raft conf changes".into(),
                )),
                None,
            ),
        }
    }

    fn apply_split(
        &mut self,
        pending: &mut Pending,
        region_id: u64,
        req: BatchSplitRequest,
    ) -> Result<(metapb::Region, Vec<metapb::Region>), CmdError> {
        let parent = self.delegates[&region_id].region.clone();
        let regions = util::split_regions(&parent, &req)?;
        let wb = pending.wb.get_or_insert_with(|| self.engine.write_batch());
        for r in &regions {
            if r.id == region_id {
                write_region_state(wb, r, PeerState::Normal);
            } else {
                write_initial_states(wb, r);
            }
        }
        let derived = regions
            .iter()
            .find(|r| r.id == region_id)
            .cloned()
            .expect("the parent keeps a range");
        self.delegates.get_mut(&region_id).expect("exists").region = derived.clone();
        info!(region_id, ?regions, "region split");
        Ok((derived, regions))
    }

    fn apply_conf_change(
        &mut self,
        pending: &mut Pending,
        region_id: u64,
        cc: ConfChangeV2,

        context: &[u8],
    ) -> (CmdResult, Option<ExecResult>) {
        let delegate = &self.delegates[&region_id];
        let request = if context.is_empty() {
            None
        } else {
            match RaftCmdRequest::decode(context) {
                Ok(r) => Some(r),
                Err(e) => {
                    return (
                        Err(CmdError::Internal(format!("bad conf change context: {e}"))),
                        None,
                    )
                }
            }
        };
        let changes = match &request {
            Some(r) => {
                if let Err(e) = util::check_epoch(
                    &delegate.region,
                    r.header.as_ref().and_then(|h| h.region_epoch.as_ref()),
                    true,
                ) {
                    return (Err(e), None);
                }
                match r.admin_request.as_ref().and_then(|a| a.cmd.as_ref()) {
                    Some(admin_request::Cmd::ChangePeerV2(c)) => Some(c.clone()),
                    _ => {
                        return (
                            Err(CmdError::Internal("conf change without peers".into())),
                            None,
                        )
                    }
                }
            }
            None => None,
        };
        let region = match changes {
            Some(changes) => {
                match change_peers(&delegate.region, &changes, cc.enter_joint().is_some()) {
                    Ok(r) => r,
                    Err(e) => return (Err(e), None),
                }
            }
            None => leave_joint(&delegate.region),
        };
        let wb = pending.wb.get_or_insert_with(|| self.engine.write_batch());
        write_region_state(wb, &region, PeerState::Normal);
        self.delegates.get_mut(&region_id).expect("exists").region = region.clone();
        info!(region_id, ?region, "membership changed");
        (
            Ok(CmdResponse {
                responses: Vec::new(),
                regions: vec![region.clone()],
            }),
            Some(ExecResult::ConfChange { cc, region }),
        )
    }
}

/// The region after a membership change. In joint consensus, added voters
/// are `IncomingVoter` and demoted ones `DemotingVoter` until the joint state
/// is left; a voter must be demoted before it can be removed.
fn change_peers(
    region: &metapb::Region,
    req: &ChangePeerV2Request,
    joint: bool,
) -> Result<metapb::Region, CmdError> {
    let mut region = region.clone();
    for change in &req.changes {
        let peer = change
            .peer
            .ok_or_else(|| CmdError::InvalidArgument("conf change without a peer".into()))?;
        let existing = region.peers.iter().position(|p| p.id == peer.id);
        match (change.change_type(), existing) {
            (ConfChangeType::AddNode, None) => {
                let role = if joint {
                    PeerRole::IncomingVoter
                } else {
                    PeerRole::Voter
                };
                region.peers.push(metapb::Peer {
                    role: role as i32,
                    ..peer
                });
            }
            (ConfChangeType::AddNode, Some(i)) if region.peers[i].role() == PeerRole::Learner => {
                let role = if joint {
                    PeerRole::IncomingVoter
                } else {
                    PeerRole::Voter
                };
                region.peers[i].set_role(role);
            }
            (ConfChangeType::AddLearnerNode, None) => {
                region.peers.push(metapb::Peer {
                    role: PeerRole::Learner as i32,
                    ..peer
                });
            }
            (ConfChangeType::AddLearnerNode, Some(i))
                if joint && region.peers[i].role() == PeerRole::Voter =>
            {
                region.peers[i].set_role(PeerRole::DemotingVoter);
            }
            (ConfChangeType::RemoveNode, Some(i))
                if !joint || region.peers[i].role() == PeerRole::Learner =>
            {
                region.peers.remove(i);
            }
            (t, _) => {
                return Err(CmdError::InvalidArgument(format!(
                    "cannot apply {t:?} to peer {} of region {}",
                    peer.id, region.id
                )))
            }
        }
    }
    let epoch = region.region_epoch.get_or_insert_with(Default::default);
    epoch.conf_ver += req.changes.len().max(1) as u64;
    Ok(region)
}

fn leave_joint(region: &metapb::Region) -> metapb::Region {
    let mut region = region.clone();
    for p in &mut region.peers {
        match p.role() {
            PeerRole::IncomingVoter => p.set_role(PeerRole::Voter),
            PeerRole::DemotingVoter => p.set_role(PeerRole::Learner),
            _ => {}
        }
    }
    region
        .region_epoch
        .get_or_insert_with(Default::default)
        .conf_ver += 1;
    region
}
