//! One region peer: its raft state machine, the proposals and reads waiting
//! on it, and how it reacts to messages, ticks and apply results.
//!
//! A poll round runs [`Peer::handle`] for each message, then
//! [`Peer::collect_ready`] (which proposes the round's merged writes and
//! adds the peer's log and hard state to the round's shared write batch),
//! then — after the one synced write —
//! [`Peer::post_ready`] (which sends messages and hands committed entries to
//! the apply pool).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use concord_proto::metapb;
use concord_proto::raft_cmdpb::{
    admin_request, AdminRequest, CompactLogRequest, ConfChangeType, RaftCmdRequest,
    RaftRequestHeader, Response,
};
use concord_proto::raft_serverpb::{PeerState, RaftMessage, RegionSnapshot};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    self, ConfChangeSingle, ConfChangeTransition, ConfChangeV2, EntryType, MessageType,
};
use raft::{RawNode, Ready, SnapshotStatus, StateRole, Storage as _};
use tracing::{debug, info, warn};

use super::apply::ApplyTask;
use super::config::{MISSED_NOTICES_BEFORE_WAKING, SLEEP_TICKS_PER_PD_HEARTBEAT};
use super::context::{PdTask, PollContext, StoreServices};
use super::msg::{
    ApplyResult, Callback, CmdError, CmdResponse, ExecResult, KeyRange, PeerMsg, ReadCallback,
    ReadResponse,
};
use super::proposal_batch::{ProposalBatch, Waiters};
use super::storage::{write_region_state, PeerStorage, StorageFault};
use super::util;
use crate::engine::{CF_RAFT, DATA_CFS};
use crate::keys;

/// How long a built snapshot waits for raft to take it before it is
/// dropped (raft retries a follower that needs one at every heartbeat
/// answer, five times a second).
const UNTAKEN_SNAPSHOT_TTL: Duration = Duration::from_secs(10);

/// Most committed entries a leader may have waiting for apply and still
/// answer writes at commit: past it, writers wait for apply again, so a
/// lagging apply pool slows them down instead of queueing without bound.
const MAX_APPLY_LAG_FOR_COMMIT_ACK: u64 = 64;

struct Proposal {
    index: u64,
    term: u64,
    waiters: Waiters,
    proposed_at: Instant,
    /// Set for a command of plain puts and deletes, whose outcome is known
    /// once it commits (see [`Peer::may_ack_at_commit`]).
    blind: Option<BlindWrite>,
}

/// What answering a blind write at commit needs.
struct BlindWrite {
    /// Its requests (each gets an empty response).
    requests: usize,
    /// The region version it was checked against.
    version: u64,
}

struct PendingRead {
    batch: u64,
    index: Option<u64>,
    header: RaftRequestHeader,
    ranges: Vec<KeyRange>,
    callback: ReadCallback,
}

/// A region peer hosted by this store.
pub struct Peer {
    region_id: u64,
    meta: metapb::Peer,
    raft: RawNode<PeerStorage>,
    proposals: VecDeque<Proposal>,
    /// Writes of this round not yet proposed (see [`Peer::collect_ready`]).
    batch: ProposalBatch,
    reads: VecDeque<PendingRead>,
    next_read_batch: u64,
    unsent_read_batch: Option<u64>,
    /// Read-index rounds sent and not yet answered, with when they left.
    read_rounds: VecDeque<(u64, Instant)>,
    /// Until when this leader may serve reads without a read-index round.
    lease_until: Option<Instant>,
    /// Length of a lease, counted from the start of a confirmed round.
    lease: Duration,
    peer_cache: HashMap<u64, metapb::Peer>,
    ticks: u64,
    written_bytes: u64,
    written_keys: u64,
    bytes_since_split_check: u64,
    split_siblings: Vec<u64>,
    ready: Option<(Ready, Vec<eraftpb::Entry>, bool)>,
    destroyed: bool,
    /// Hibernating: raft is not ticked (see [`Peer::is_asleep`]).
    asleep: bool,
    /// The log index of the last entry of this term that may change the
    /// region: an admin command other than log compaction, or a conf change
    /// raft appended itself (leaving a joint state). Later writes are
    /// answered at commit only once it is applied (see
    /// [`Peer::may_ack_at_commit`]).
    admin_barrier: u64,
    /// Consecutive ticks this leader found its region idle.
    idle_ticks: u64,
    /// Sleep ticks seen, and at which of them the leader's notice last came.
    sleep_ticks: u64,
    last_notice: u64,
}

impl Peer {
    /// Builds the peer `meta` of `region` from what the engine holds.
    pub fn create(
        ctx: &StoreServices,
        region: metapb::Region,
        meta: metapb::Peer,
    ) -> Result<Peer, StorageFault> {
        let storage = PeerStorage::load(ctx.engine.clone(), region)?;
        let cfg = raft::Config {
            id: meta.id,
            election_tick: ctx.cfg.election_ticks,
            heartbeat_tick: ctx.cfg.heartbeat_ticks,
            applied: storage.applied_index(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raft = RawNode::new(&cfg, storage, &logger).map_err(|e| StorageFault::Corrupt {
            what: "raft state",
            region_id: meta.id,
            reason: e.to_string(),
        })?;
        let mut peer = Peer {
            region_id: raft.store().region().id,
            meta,
            raft,
            proposals: VecDeque::new(),
            batch: ProposalBatch::default(),
            reads: VecDeque::new(),
            next_read_batch: 1,
            unsent_read_batch: None,
            read_rounds: VecDeque::new(),
            lease_until: None,
            lease: ctx.cfg.leader_lease(),
            peer_cache: HashMap::new(),
            ticks: 0,
            written_bytes: 0,
            written_keys: 0,
            bytes_since_split_check: 0,
            split_siblings: Vec::new(),
            ready: None,
            destroyed: false,
            asleep: false,
            admin_barrier: 0,
            idle_ticks: 0,
            sleep_ticks: 0,
            last_notice: 0,
        };
        peer.refresh_peer_cache();
        Ok(peer)
    }

    /// The region this peer belongs to.
    pub fn region_id(&self) -> u64 {
        self.region_id
    }

    /// The region as this peer knows it.
    pub fn region(&self) -> &metapb::Region {
        self.raft.store().region()
    }

    /// Whether this peer is its region's leader.
    pub fn is_leader(&self) -> bool {
        self.raft.raft.state == StateRole::Leader
    }

    /// Makes this peer start an election (a freshly split region whose
    /// parent was led here).
    pub fn campaign(&mut self) {
        let _ = self.raft.campaign();
    }

    fn refresh_peer_cache(&mut self) {
        let peers = self.region().peers.clone();
        for p in peers {
            self.peer_cache.insert(p.id, p);
        }
    }

    fn leader(&self) -> Option<metapb::Peer> {
        self.peer_cache.get(&self.raft.raft.leader_id).cloned()
    }

    /// Whether this peer hibernates: its region has been idle with every
    /// replica holding the whole log, so raft is not ticked (no heartbeats,
    /// no election timeouts) until something happens in the region. The
    /// store clock then sends it only sleep ticks.
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Handles one message.
    pub fn handle(&mut self, ctx: &mut PollContext, msg: PeerMsg) {
        if self.destroyed {
            return;
        }
        match &msg {
            // Raft messages wake the peer unless they are only liveness.
            PeerMsg::Raft(_) | PeerMsg::Tick | PeerMsg::SleepTick | PeerMsg::HeartbeatPd => {}
            _ => self.wake(),
        }
        match msg {
            PeerMsg::Raft(m) => self.on_raft_message(ctx, m),
            PeerMsg::Command { request, callback } => self.propose(ctx, request, callback),
            PeerMsg::Read {
                header,
                ranges,
                callback,
            } => self.on_read(ctx, header, ranges, callback),
            PeerMsg::Tick if !self.asleep => self.on_tick(ctx),
            PeerMsg::SleepTick if self.asleep => self.on_sleep_tick(ctx),
            // A tick sent before the peer fell asleep or woke up.
            PeerMsg::Tick | PeerMsg::SleepTick => {}
            PeerMsg::Applied(result) => self.on_applied(ctx, result),
            PeerMsg::TransferLeader(to) => {
                if self.is_leader() && to.id != self.meta.id {
                    info!(
                        region_id = self.region_id,
                        to = to.id,
                        "transferring leadership"
                    );
                    self.raft.transfer_leader(to.id);
                }
            }
            PeerMsg::HeartbeatPd if self.is_leader() => self.heartbeat_pd(ctx),
            PeerMsg::HeartbeatPd => {}
            PeerMsg::SnapshotBuilt(built) => {
                let to = self.raft.mut_store().finish_snapshot(built);
                // Raft gave up sending it for now: offer it right away, if
                // this peer still leads and `to` is still a member.
                if let Some(to) =
                    to.filter(|to| self.is_leader() && self.raft.raft.prs().get(*to).is_some())
                {
                    self.raft.raft.send_append(to);
                }
            }
            PeerMsg::SnapshotStatus {
                to_peer_id,
                delivered,
            } => {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raft.report_snapshot(to_peer_id, status);
            }
        }
    }

    fn on_raft_message(&mut self, ctx: &mut PollContext, m: RaftMessage) {
        let epoch = m.region_epoch.unwrap_or_default();
        let ours = self.region().region_epoch.unwrap_or_default();
        if m.is_tombstone {
            // Only a newer configuration may remove us.
            if epoch.conf_ver > ours.conf_ver || !self.raft.store().is_initialized() {
                info!(region_id = self.region_id, "peer told it was removed");
                self.destroy(ctx);
            }
            return;
        }
        let Some(from) = m.from_peer else {
            return;
        };
        let known = self.region().peers.iter().any(|p| p.id == from.id);
        if !known && self.raft.store().is_initialized() && epoch.conf_ver < ours.conf_ver {
            // A removed peer still talking: tell it so it destroys itself.
            ctx.send(self.tombstone_for(&from));
            return;
        }
        let msg = match eraftpb::Message::parse_from_bytes(&m.message) {
            Ok(msg) => msg,
            Err(e) => {
                warn!(
                    region_id = self.region_id,
                    "dropping undecodable raft message: {e}"
                );
                return;
            }
        };
        if msg.get_msg_type() == MessageType::MsgPropose {
            // Only clients propose, and only to a leader that answers them;
            // a proposal raft forwarded from elsewhere has no caller here.
            debug!(region_id = self.region_id, "dropping a forwarded proposal");
            return;
        }
        if m.hibernate {
            self.on_hibernate_notice(&msg);
            return;
        }
        // Heartbeats and their answers without a read index change nothing
        // a sleeping region cares about; anything else wakes it.
        let liveness_only = matches!(
            msg.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
        ) && msg.context.is_empty();
        if !liveness_only {
            self.wake();
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot && !self.accept_snapshot(ctx, &msg) {
            return;
        }
        self.peer_cache.insert(from.id, from);
        if let Err(e) = self.raft.step(msg) {
            debug!(region_id = self.region_id, "raft step: {e}");
        }
    }

    fn accept_snapshot(&self, ctx: &PollContext, msg: &eraftpb::Message) -> bool {
        let Ok(payload) = RegionSnapshot::decode(&msg.get_snapshot().data[..]) else {
            return false;
        };
        let Some(region) = payload.region else {
            return false;
        };
        let overlap =
            ctx.meta
                .lock()
                .overlapping(&region.start_key, &region.end_key, self.region_id);
        if let Some(other) = overlap {
            info!(
                region_id = self.region_id,
                other, "snapshot overlaps another region; dropped"
            );
            return false;
        }
        true
    }

    fn tombstone_for(&self, to: &metapb::Peer) -> RaftMessage {
        RaftMessage {
            region_id: self.region_id,
            from_peer: Some(self.meta),
            to_peer: Some(*to),
            region_epoch: self.region().region_epoch,
            is_tombstone: true,
            ..Default::default()
        }
    }

    fn check_leader(&self) -> Result<(), CmdError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(CmdError::not_leader(self.region_id, self.leader()))
        }
    }

    fn check_epoch(
        &self,
        ctx: &PollContext,
        header: &RaftRequestHeader,
        conf_ver: bool,
    ) -> Result<(), CmdError> {
        util::check_epoch(self.region(), header.region_epoch.as_ref(), conf_ver).map_err(|e| {
            if let CmdError::Region(_) = e {
                // Hand back the regions that now cover the old range.
                let meta = ctx.meta.lock();
                let mut current = vec![self.region().clone()];
                current.extend(
                    self.split_siblings
                        .iter()
                        .filter_map(|id| meta.region(*id).cloned()),
                );
                util::epoch_not_match(self.region_id, current)
            } else {
                e
            }
        })
    }

    fn propose(&mut self, ctx: &mut PollContext, request: RaftCmdRequest, callback: Callback) {
        if let Err(e) = self.check_proposal(ctx, &request) {
            let _ = callback.send(Err(e));
            return;
        }
        if ProposalBatch::can_merge(&request) {
            if !self.batch.fits(&request) {
                self.flush_proposals(ctx);
            }
            self.batch.push(request, callback, self.raft.raft.term);
        } else {
            // Keep the log in arrival order.
            self.flush_proposals(ctx);
            self.propose_now(ctx, request, Waiters::one(callback));
        }
    }

    /// Proposes the writes merged during this round as one entry, if this
    /// peer still leads in the term it accepted them in. Otherwise raft
    /// would forward them to the new leader while their callers hear
    /// `NotLeader` and retry: a write applied twice.
    fn flush_proposals(&mut self, ctx: &mut PollContext) {
        let Some((request, waiters, term)) = self.batch.take() else {
            return;
        };
        if self.is_leader() && self.raft.raft.term == term {
            self.propose_now(ctx, request, waiters);
        } else {
            waiters.answer(Err(CmdError::not_leader(self.region_id, self.leader())));
        }
    }

    fn propose_now(&mut self, ctx: &mut PollContext, request: RaftCmdRequest, waiters: Waiters) {
        let last_before = self.raft.raft.raft_log.last_index();
        let result = match request.admin_request.as_ref().and_then(|a| a.cmd.as_ref()) {
            Some(admin_request::Cmd::ChangePeerV2(change)) => {
                let mut cc = ConfChangeV2::default();
                for c in &change.changes {
                    let mut single = ConfChangeSingle::default();
                    single.set_change_type(match c.change_type() {
                        ConfChangeType::AddNode => eraftpb::ConfChangeType::AddNode,
                        ConfChangeType::RemoveNode => eraftpb::ConfChangeType::RemoveNode,
                        ConfChangeType::AddLearnerNode => eraftpb::ConfChangeType::AddLearnerNode,
                    });
                    single.node_id = c.peer.as_ref().map_or(0, |p| p.id);
                    cc.mut_changes().push(single);
                }
                if change.changes.len() > 1 {
                    cc.set_transition(ConfChangeTransition::Auto);
                }
                self.raft.propose_conf_change(request.encode_to_vec(), cc)
            }
            _ => self.raft.propose(Vec::new(), request.encode_to_vec()),
        };
        let index = self.raft.raft.raft_log.last_index();
        match result {
            Ok(()) if index > last_before => {
                ctx.pending_proposals
                    .fetch_add(waiters.callers(), Ordering::Relaxed);
                let admin = request.admin_request.as_ref().and_then(|a| a.cmd.as_ref());
                if !matches!(admin, None | Some(admin_request::Cmd::CompactLog(_))) {
                    self.admin_barrier = index;
                }
                let blind = ProposalBatch::can_merge(&request).then(|| BlindWrite {
                    requests: request.requests.len(),
                    version: request
                        .header
                        .and_then(|h| h.region_epoch)
                        .map_or(0, |e| e.version),
                });
                self.proposals.push_back(Proposal {
                    index,
                    term: self.raft.raft.term,
                    waiters,
                    proposed_at: Instant::now(),
                    blind,
                });
            }
            // Dropped while leadership is moving: retry with the new leader.
            Ok(()) | Err(raft::Error::ProposalDropped) => {
                waiters.answer(Err(CmdError::not_leader(self.region_id, self.leader())));
            }
            Err(e) => waiters.answer(Err(CmdError::InvalidArgument(format!(
                "raft refused the proposal: {e}"
            )))),
        }
    }

    fn check_proposal(&self, ctx: &PollContext, request: &RaftCmdRequest) -> Result<(), CmdError> {
        self.check_leader()?;
        let header = request.header.unwrap_or_default();
        self.check_epoch(ctx, &header, request.admin_request.is_some())?;
        for req in &request.requests {
            util::check_request_cf(req)?;
            util::check_request_keys(self.region(), req)?;
        }
        if ctx.pending_proposals.load(Ordering::Relaxed) >= ctx.cfg.max_pending_proposals {
            return Err(CmdError::server_is_busy(
                "too many writes waiting for raft",
                50,
            ));
        }
        Ok(())
    }

    fn on_read(
        &mut self,
        ctx: &PollContext,
        header: RaftRequestHeader,
        ranges: Vec<KeyRange>,
        callback: ReadCallback,
    ) {
        let check = self
            .check_leader()
            .and_then(|()| self.check_epoch(ctx, &header, false))
            .and_then(|()| util::check_ranges(self.region(), &ranges));
        if let Err(e) = check {
            let _ = callback.send(Err(e));
            return;
        }
        let now = Instant::now();
        if let Some(until) = self.lease_until.filter(|_| self.can_read_on_lease(now)) {
            // Leadership was confirmed less than a lease ago: no follower
            // can have elected anyone else yet, so the commit index is
            // current. Renew the lease in the background when half of it
            // is gone, so a steady read load never waits for a round.
            if until.saturating_duration_since(now) < self.lease / 2 {
                self.read_batch();
            }
            self.reads.push_back(PendingRead {
                batch: 0,
                index: Some(self.raft.raft.raft_log.committed),
                header,
                ranges,
                callback,
            });
            self.serve_reads(ctx);
            return;
        }
        let batch = self.read_batch();
        self.reads.push_back(PendingRead {
            batch,
            index: None,
            header,
            ranges,
            callback,
        });
    }

    /// The read-index batch of this round (batch numbers start at 1).
    fn read_batch(&mut self) -> u64 {
        *self.unsent_read_batch.get_or_insert_with(|| {
            let b = self.next_read_batch;
            self.next_read_batch += 1;
            b
        })
    }

    /// Whether a lease, if one is held, may serve a read now: this peer
    /// leads, has committed in its term, and is not handing leadership
    /// over (the transferee campaigns without waiting for timeouts).
    fn can_read_on_lease(&self, now: Instant) -> bool {
        self.is_leader()
            && self.raft.raft.lead_transferee.is_none()
            && self.raft.raft.commit_to_current_term()
            && self.lease_until.is_some_and(|until| now < until)
    }

    /// Asks raft for one read index covering every read that arrived in
    /// this round.
    pub fn flush_reads(&mut self) {
        // raft-rs drops read requests on a leader that has not committed an
        // entry of its term yet; keep them until it has.
        if self.is_leader() && !self.raft.raft.commit_to_current_term() {
            return;
        }
        if let Some(batch) = self.unsent_read_batch.take() {
            self.read_rounds.push_back((batch, Instant::now()));
            self.raft.read_index(batch.to_be_bytes().to_vec());
        }
    }

    fn on_tick(&mut self, ctx: &mut PollContext) {
        self.raft.tick();
        self.ticks += 1;
        if self.ticks.is_multiple_of(ctx.cfg.housekeeping_ticks) && self.is_leader() {
            self.housekeeping(ctx);
        }
        self.maybe_hibernate(ctx);
    }

    /// Whether this leader's region has nothing in flight: every replica
    /// holds and has committed the whole log, everything is applied, and no
    /// request, read or leadership transfer waits.
    fn is_idle(&self) -> bool {
        let raft = &self.raft.raft;
        let last = raft.raft_log.last_index();
        self.is_leader()
            && self.proposals.is_empty()
            && self.batch.is_empty()
            && self.reads.is_empty()
            && self.read_rounds.is_empty()
            && self.unsent_read_batch.is_none()
            && raft.lead_transferee.is_none()
            && raft.raft_log.committed == last
            && self.raft.store().applied_index() == last
            && raft.prs().iter().all(|(_, pr)| pr.matched == last)
    }

    /// Puts a leader idle for `hibernate_idle_ticks` to sleep and tells
    /// its followers.
    fn maybe_hibernate(&mut self, ctx: &mut PollContext) {
        if !ctx.cfg.hibernate_regions || !self.is_idle() {
            self.idle_ticks = 0;
            return;
        }
        self.idle_ticks += 1;
        if self.idle_ticks >= ctx.cfg.hibernate_idle_ticks {
            debug!(region_id = self.region_id, "hibernating");
            self.asleep = true;
            self.send_hibernate_notices(ctx);
        }
    }

    /// A hibernating leader's notice: sleep too if it comes from the leader
    /// this follower knows, in its term, and nothing of the log is missing.
    fn on_hibernate_notice(&mut self, notice: &eraftpb::Message) {
        let raft = &self.raft.raft;
        let in_step = !self.is_leader()
            && notice.from == raft.leader_id
            && notice.term == raft.term
            && raft.raft_log.last_index() == notice.commit
            && raft.raft_log.committed == notice.commit;
        if in_step {
            self.asleep = true;
            self.last_notice = self.sleep_ticks;
        }
    }

    /// A tick of a hibernating peer: the leader repeats its notice (and now
    /// and then heartbeats PD); a follower that stopped hearing
    /// the notices wakes up, so that it campaigns if the leader is gone.
    fn on_sleep_tick(&mut self, ctx: &mut PollContext) {
        self.sleep_ticks += 1;
        if self.is_leader() {
            self.send_hibernate_notices(ctx);
            if self
                .sleep_ticks
                .is_multiple_of(SLEEP_TICKS_PER_PD_HEARTBEAT)
            {
                self.heartbeat_pd(ctx);
            }
        } else if self.sleep_ticks - self.last_notice > MISSED_NOTICES_BEFORE_WAKING {
            info!(
                region_id = self.region_id,
                "no word from the hibernating leader; waking up"
            );
            self.wake();
        }
    }

    fn send_hibernate_notices(&self, ctx: &mut PollContext) {
        let raft = &self.raft.raft;
        for peer in self.region().peers.iter().filter(|p| p.id != self.meta.id) {
            let mut notice = eraftpb::Message::default();
            notice.set_msg_type(MessageType::MsgHeartbeat);
            notice.from = self.meta.id;
            notice.to = peer.id;
            notice.term = raft.term;
            notice.commit = raft.raft_log.last_index();
            ctx.send(self.raft_message(*peer, &notice, true));
        }
    }

    /// Ends hibernation. Raft's clocks stood still meanwhile: a leader
    /// restarts its quorum check and heartbeats its followers at once, so
    /// that it does not step down before they could answer. (Heartbeats do
    /// not wake sleeping followers; its next append or read round does.)
    fn wake(&mut self) {
        if !self.asleep {
            return;
        }
        self.asleep = false;
        self.idle_ticks = 0;
        if self.is_leader() {
            self.raft.raft.election_elapsed = 0;
            self.raft.ping();
        }
    }

    fn housekeeping(&mut self, ctx: &mut PollContext) {
        self.raft.mut_store().expire_snapshot(UNTAKEN_SNAPSHOT_TTL);
        let last = self.raft.raft.raft_log.last_index();
        let min_matched = self.min_matched().unwrap_or(last);
        ctx.meta
            .lock()
            .log_lag
            .insert(self.region_id, last.saturating_sub(min_matched));
        self.propose_log_gc(ctx);
        if self.bytes_since_split_check >= ctx.cfg.split_check_diff {
            self.bytes_since_split_check = 0;
            ctx.pd(PdTask::SplitCheck {
                region: self.region().clone(),
                force: false,
            });
        }
        self.heartbeat_pd(ctx);
    }

    /// The lowest log index every peer is known to hold (leader's view).
    fn min_matched(&self) -> Option<u64> {
        self.raft.raft.prs().iter().map(|(_, pr)| pr.matched).min()
    }

    fn heartbeat_pd(&mut self, ctx: &mut PollContext) {
        let last = self.raft.raft.raft_log.last_index();
        let pending_peers = self
            .raft
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.matched + ctx.cfg.raft_log_gc_max_lag < last)
            .filter_map(|(id, _)| self.peer_cache.get(id).cloned())
            .collect();
        ctx.pd(PdTask::RegionHeartbeat {
            region: self.region().clone(),
            leader: self.meta,
            pending_peers,
            written_bytes: std::mem::take(&mut self.written_bytes),
            written_keys: std::mem::take(&mut self.written_keys),
            term: self.raft.raft.term,
        });
    }

    fn propose_log_gc(&mut self, ctx: &mut PollContext) {
        let applied = self.raft.store().applied_index();
        let first = self.raft.store().first_index().unwrap_or(1);
        if applied < first || applied - first + 1 < ctx.cfg.raft_log_gc_threshold {
            return;
        }
        let min_matched = self.min_matched().unwrap_or(applied);
        // Keep what lagging followers still need, within a bounded lag, and
        // what follows a snapshot in the making (its follower goes on from
        // there).
        let compact = if applied - min_matched.min(applied) > ctx.cfg.raft_log_gc_max_lag {
            applied
        } else {
            min_matched.min(applied)
        };
        let compact = compact.min(self.raft.store().snapshot_floor().unwrap_or(u64::MAX));
        if compact < first {
            return;
        }
        let Ok(term) = self.raft.raft.raft_log.term(compact) else {
            return;
        };
        let request = RaftCmdRequest {
            header: Some(self.header()),
            requests: Vec::new(),
            admin_request: Some(AdminRequest {
                cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest {
                    compact_index: compact,
                    compact_term: term,
                })),
            }),
        };
        let (tx, _rx) = tokio::sync::oneshot::channel();
        self.propose(ctx, request, tx);
    }

    /// A request header addressed to this peer at the current epoch.
    fn header(&self) -> RaftRequestHeader {
        RaftRequestHeader {
            region_id: self.region_id,
            peer: Some(self.meta),
            region_epoch: self.region().region_epoch,
            proposal_id: 0,
        }
    }

    fn on_applied(&mut self, ctx: &mut PollContext, result: ApplyResult) {
        // A result produced before a snapshot replaced the data is stale.
        if result.apply_state.applied_index <= self.raft.store().applied_index() {
            return;
        }
        self.written_bytes += result.written_bytes;
        self.written_keys += result.written_keys;
        self.bytes_since_split_check += result.written_bytes;
        let applied = result.apply_state.applied_index;
        self.raft.mut_store().set_apply_state(result.apply_state);
        for exec in result.exec_results {
            match exec {
                ExecResult::ConfChange { cc, region } => self.on_conf_change(ctx, cc, region),
                ExecResult::Split { derived, regions } => self.on_split(ctx, derived, regions),
                ExecResult::CompactLog { index } => {
                    self.raft.store().compact_log_to(index, &mut ctx.wb)
                }
            }
            if self.destroyed {
                return;
            }
        }
        self.raft.advance_apply_to(applied);
        self.serve_reads(ctx);
    }

    fn on_conf_change(&mut self, ctx: &mut PollContext, cc: ConfChangeV2, region: metapb::Region) {
        // Acknowledgements from the old voters say nothing about the new
        // quorum: confirm leadership afresh before the next lease read.
        self.lease_until = None;
        // A snapshot built before describes the old configuration.
        self.raft.mut_store().drop_snapshot();
        if let Err(e) = self.raft.apply_conf_change(&cc) {
            warn!(
                region_id = self.region_id,
                "raft refused an applied conf change: {e}"
            );
        }
        self.raft.mut_store().set_region(region.clone());
        self.refresh_peer_cache();
        ctx.meta.lock().set_region(&region);
        if !region.peers.iter().any(|p| p.id == self.meta.id) {
            info!(
                region_id = self.region_id,
                "this peer was removed from its region"
            );
            self.destroy(ctx);
            return;
        }
        if let Some(me) = region.peers.iter().find(|p| p.id == self.meta.id) {
            self.meta = *me;
        }
        if self.is_leader() {
            self.heartbeat_pd(ctx);
        }
    }

    fn on_split(
        &mut self,
        ctx: &mut PollContext,
        derived: metapb::Region,
        regions: Vec<metapb::Region>,
    ) {
        self.raft.mut_store().set_region(derived.clone());
        // A snapshot built before covers the whole unsplit range.
        self.raft.mut_store().drop_snapshot();
        let was_leader = self.is_leader();
        let mut meta = ctx.meta.lock();
        meta.set_region(&derived);
        self.split_siblings.clear();
        for r in regions.iter().filter(|r| r.id != self.region_id) {
            self.split_siblings.push(r.id);
            meta.set_region(r);
        }
        drop(meta);
        for r in regions.iter().filter(|r| r.id != self.region_id) {
            if ctx.router.contains(r.id) {
                continue;
            }
            let Some(me) = r.peers.iter().find(|p| p.store_id == ctx.store_id).cloned() else {
                continue;
            };
            match Peer::create(ctx, r.clone(), me) {
                Ok(mut peer) => {
                    if was_leader {
                        peer.campaign();
                    }
                    ctx.apply.schedule(
                        r.id,
                        ApplyTask::Register {
                            region: r.clone(),
                            apply_state: *peer.raft.store().apply_state(),
                        },
                    );
                    ctx.router.register(peer);
                }
                Err(e) => warn!(region_id = r.id, "cannot create split region: {e}"),
            }
        }
        if was_leader {
            ctx.pd(PdTask::ReportSplit { regions });
            self.heartbeat_pd(ctx);
        }
    }

    /// Stops the peer for good: its raft log, states and data are deleted
    /// and a tombstone is left so it can never vote again.
    pub fn destroy(&mut self, ctx: &mut PollContext) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        info!(
            region_id = self.region_id,
            peer_id = self.meta.id,
            "destroying peer"
        );
        ctx.apply.fence(self.region_id);
        ctx.apply.schedule(
            self.region_id,
            ApplyTask::Destroy {
                region_id: self.region_id,
            },
        );
        let region = self.region().clone();
        let wb = &mut ctx.wb;
        let (raft_start, raft_end) = keys::region_raft_range(self.region_id);
        wb.delete_range_cf(CF_RAFT, &raft_start, &raft_end)
            .expect("raft cf exists");
        if self.raft.store().is_initialized() {
            let start = keys::data_key(&region.start_key);
            let end = keys::data_end_key(&region.end_key);
            for cf in DATA_CFS {
                wb.delete_range_cf(cf, &start, &end)
                    .expect("data cfs exist");
            }
        }
        let mut tombstone = region;
        tombstone.peers.retain(|p| p.id == self.meta.id);
        if tombstone.peers.is_empty() {
            tombstone.peers.push(self.meta);
        }
        write_region_state(wb, &tombstone, PeerState::Tombstone);
        ctx.meta.lock().remove(self.region_id);
        ctx.router.close(self.region_id);
        if let Some((_, waiters, _)) = self.batch.take() {
            waiters.answer(Err(CmdError::peer_removed_before_apply(self.region_id)));
        }
        self.fail_proposals_up_to(ctx, u64::MAX, CmdError::peer_removed_before_apply);
        for r in self.reads.drain(..) {
            let _ = r
                .callback
                .send(Err(CmdError::region_not_found(self.region_id)));
        }
        self.ready = None;
    }

    /// Proposes the round's merged writes, then takes the raft `Ready`,
    /// adding its log entries, hard state and any snapshot to the round's
    /// write batch. Messages that may leave before the write (a leader's
    /// appends) are queued; the poller sends them before writing the batch.
    pub fn collect_ready(&mut self, ctx: &mut PollContext) {
        self.flush_proposals(ctx);
        if self.raft.store().start_snapshot()
            && !ctx.snapshots.build(self.region_id, ctx.engine.snapshot())
        {
            self.raft.mut_store().drop_snapshot();
        }
        if self.asleep && self.is_leader() && !self.is_idle() {
            // A follower turned out to lack entries: replicate awake.
            self.wake();
        }
        if self.destroyed || !self.raft.has_ready() {
            return;
        }
        let mut rd = self.raft.ready();
        if let Some(ss) = rd.ss() {
            self.on_role_change(ctx, ss.raft_state);
        }
        for m in rd.take_messages() {
            self.send_raft(ctx, m);
        }
        let mut snapshot_applied = false;
        if !rd.snapshot().is_empty() {
            ctx.apply.fence(self.region_id);
            match self
                .raft
                .mut_store()
                .apply_snapshot(rd.snapshot(), &mut ctx.wb)
            {
                Ok(()) => {
                    snapshot_applied = true;
                    // Each proposal the snapshot covers may be in it or
                    // may have been dropped: this peer cannot tell.
                    let index = rd.snapshot().get_metadata().index;
                    self.fail_proposals_up_to(ctx, index, CmdError::covered_by_snapshot);
                    info!(
                        region_id = self.region_id,
                        index = rd.snapshot().get_metadata().index,
                        "applied snapshot"
                    );
                }
                Err(e) => panic!("region {} cannot apply a snapshot: {e}", self.region_id),
            }
        }
        let mut committed = rd.take_committed_entries();
        if !snapshot_applied {
            // Raft hands out only entries already on disk here, so they
            // apply while this round's write is in flight (a snapshot's
            // entries wait for the snapshot to be written and registered).
            self.dispatch_committed(ctx, std::mem::take(&mut committed));
        }
        let store = self.raft.mut_store();
        store.append(rd.entries(), &mut ctx.wb);
        let hs_changed = rd.hs().is_some_and(|hs| store.set_hard_state(hs));
        if snapshot_applied || !rd.entries().is_empty() || hs_changed {
            store.write_raft_state(&mut ctx.wb);
            ctx.round_readies += 1;
        }
        for rs in rd.read_states() {
            let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let batch = u64::from_be_bytes(bytes);
            for r in self.reads.iter_mut().filter(|r| r.batch == batch) {
                r.index = Some(rs.index);
            }
            // A quorum acknowledged this round's heartbeats, all sent after
            // it started: the lease runs from then.
            while let Some(&(b, sent)) = self.read_rounds.front() {
                if b > batch {
                    break;
                }
                self.read_rounds.pop_front();
                if b == batch && self.is_leader() {
                    let until = sent + self.lease;
                    self.lease_until = Some(self.lease_until.map_or(until, |t| t.max(until)));
                }
            }
        }
        self.ready = Some((rd, committed, snapshot_applied));
    }

    /// Finishes the round after the write: sends messages that needed the
    /// log on disk and hands the apply pool the entries a snapshot held
    /// back and those the write itself committed.
    pub fn post_ready(&mut self, ctx: &mut PollContext) {
        let Some((mut rd, committed, snapshot_applied)) = self.ready.take() else {
            return;
        };
        if snapshot_applied {
            let region = self.region().clone();
            ctx.meta.lock().set_region(&region);
            self.refresh_peer_cache();
            ctx.apply.schedule(
                self.region_id,
                ApplyTask::Register {
                    region,
                    apply_state: *self.raft.store().apply_state(),
                },
            );
        }
        self.dispatch_committed(ctx, committed);
        for m in rd.take_persisted_messages() {
            self.send_raft(ctx, m);
        }
        let mut light = self.raft.advance_append(rd);
        if snapshot_applied {
            // The snapshot's data is the applied state; raft must know.
            let applied = self.raft.store().applied_index();
            self.raft.advance_apply_to(applied);
        }
        for m in light.take_messages() {
            self.send_raft(ctx, m);
        }
        self.dispatch_committed(ctx, light.take_committed_entries());
        // Read states of this Ready may already be covered by what is applied.
        self.serve_reads(ctx);
    }

    fn on_role_change(&mut self, ctx: &mut PollContext, role: StateRole) {
        let leader = role == StateRole::Leader;
        // A lease belongs to one term of leadership.
        self.lease_until = None;
        self.read_rounds.clear();
        let mut stepped_down = false;
        {
            let mut meta = ctx.meta.lock();
            if leader {
                meta.leaders.insert(self.region_id);
            } else {
                stepped_down = meta.leaders.remove(&self.region_id);
                meta.log_lag.remove(&self.region_id);
            }
        }
        if leader {
            info!(
                region_id = self.region_id,
                term = self.raft.raft.term,
                "became leader"
            );
            self.heartbeat_pd(ctx);
        } else {
            let hint = self.leader();
            if stepped_down {
                info!(
                    region_id = self.region_id,
                    term = self.raft.raft.term,
                    leader = hint.map_or(0, |p| p.store_id),
                    "stepped down"
                );
            }
            for r in self.reads.drain(..) {
                let _ = r
                    .callback
                    .send(Err(CmdError::not_leader(self.region_id, hint)));
            }
            // Only a leader sends snapshots.
            self.raft.mut_store().drop_snapshot();
        }
    }

    /// Answers the proposals with a log index up to `index` with
    /// `error(region_id)`.
    fn fail_proposals_up_to(&mut self, ctx: &PollContext, index: u64, error: fn(u64) -> CmdError) {
        while self.proposals.front().is_some_and(|p| p.index <= index) {
            let p = self.proposals.pop_front().expect("front exists");
            ctx.pending_proposals
                .fetch_sub(p.waiters.callers(), Ordering::Relaxed);
            p.waiters.answer(Err(error(self.region_id)));
        }
    }

    /// Hands committed entries to the apply pool. A write of plain puts and
    /// deletes is answered right away when [`Peer::may_ack_at_commit`]: its
    /// entry is on a quorum's disk and will apply as checked, and every read
    /// waits for the commit index to be applied, so no read misses it.
    fn dispatch_committed(&mut self, ctx: &mut PollContext, entries: Vec<eraftpb::Entry>) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let (first, last) = (first.index, last.index);
        if let Some(cc) = entries.iter().rev().find(|e| {
            matches!(
                e.get_entry_type(),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            )
        }) {
            self.admin_barrier = self.admin_barrier.max(cc.index);
        }
        let may_ack = self.may_ack_at_commit(last);
        let version = self.region().region_epoch.map_or(0, |e| e.version);
        let mut callbacks = Vec::new();
        while self.proposals.front().is_some_and(|p| p.index <= last) {
            let p = self.proposals.pop_front().expect("front exists");
            ctx.pending_proposals
                .fetch_sub(p.waiters.callers(), Ordering::Relaxed);
            ctx.stats.commit_wait.record(p.proposed_at.elapsed());
            let committed_term = p
                .index
                .checked_sub(first)
                .and_then(|i| entries.get(i as usize))
                .map(|e| e.term);
            match p.blind {
                Some(BlindWrite {
                    requests,
                    version: checked,
                }) if may_ack && checked == version && committed_term == Some(p.term) => {
                    ctx.stats
                        .acked_at_commit
                        .fetch_add(p.waiters.callers() as u64, Ordering::Relaxed);
                    p.waiters.answer(Ok(CmdResponse {
                        responses: vec![Response::default(); requests],
                        regions: Vec::new(),
                    }));
                }
                _ => callbacks.push((p.index, p.term, p.waiters)),
            }
        }
        ctx.apply.schedule(
            self.region_id,
            ApplyTask::Apply {
                region_id: self.region_id,
                entries,
                callbacks,
                queued_at: std::time::Instant::now(),
            },
        );
    }

    /// Whether writes committed up to `last` may be answered before they
    /// apply. Apply checks a write against the region as it is then, and
    /// only an admin command (a split) changes that: so every entry before
    /// them that may hold one must be applied already — all of earlier
    /// terms (once an entry of this term is applied) and this term's up to
    /// the barrier — and the region's version still the one they were
    /// checked against, which the caller compares. Apply must also be
    /// keeping up.
    fn may_ack_at_commit(&self, last: u64) -> bool {
        let store = self.raft.store();
        let applied = store.applied_index();
        self.is_leader()
            && store.apply_state().applied_term == self.raft.raft.term
            && self.admin_barrier <= applied
            && last.saturating_sub(applied) <= MAX_APPLY_LAG_FOR_COMMIT_ACK
    }

    fn serve_reads(&mut self, ctx: &PollContext) {
        let applied = self.raft.store().applied_index();
        while self
            .reads
            .front()
            .is_some_and(|r| r.index.is_some_and(|i| i <= applied))
        {
            let r = self.reads.pop_front().expect("front exists");
            let check = self
                .check_epoch(ctx, &r.header, false)
                .and_then(|()| util::check_ranges(self.region(), &r.ranges));
            let answer = check.map(|()| ReadResponse {
                snapshot: ctx.engine.snapshot(),
                region: self.region().clone(),
            });
            let _ = r.callback.send(answer);
        }
    }

    fn send_raft(&self, ctx: &mut PollContext, mut m: eraftpb::Message) {
        let Some(to) = self.peer_cache.get(&m.to).cloned() else {
            debug!(
                region_id = self.region_id,
                to = m.to,
                "no address for raft message"
            );
            return;
        };
        if m.get_msg_type() == MessageType::MsgSnapshot {
            // The payload (up to a whole region) is not encoded into the
            // message here: the transport streams it in chunks.
            let data = std::mem::take(&mut m.mut_snapshot().data);
            ctx.send_snapshot(self.raft_message(to, &m, false), data);
        } else {
            ctx.send(self.raft_message(to, &m, false));
        }
    }

    fn raft_message(&self, to: metapb::Peer, m: &eraftpb::Message, hibernate: bool) -> RaftMessage {
        let region = self.region();
        RaftMessage {
            region_id: self.region_id,
            from_peer: Some(self.meta),
            to_peer: Some(to),
            region_epoch: region.region_epoch,
            start_key: region.start_key.clone(),
            end_key: region.end_key.clone(),
            message: m.write_to_bytes().expect("raft messages encode"),
            is_tombstone: false,
            hibernate,
        }
    }
}
