//! Replication of the PD metadata through a raft-rs group of PD members.
//!
//! One thread per member drives the raft node: it ticks, steps messages
//! from the other members, takes proposals, persists the log (synced) and
//! applies committed [`MetaCommand`]s to the member's metadata RocksDB. A
//! write ([`Replicator::propose`]) returns once its command is committed
//! and applied locally. A single-member PD runs the same path with a
//! one-member group.
//!
//! Each member compacts its own log once more than `log_gc_threshold`
//! applied entries have piled up, keeping the newest half of them for
//! members slightly behind; a member further behind is sent a snapshot of
//! the metadata and replaces its own with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use concord_proto::pd_raftpb::{MemberInfo, MetaCommand};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};
use prost::Message as _;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, SnapshotStatus, StateRole};
use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::error::{PdServerError, Result};
use crate::members::Membership;
use crate::peer_transport::PeerSender;
use crate::raft_log::RaftLog;

/// Raft ticks per election timeout.
const ELECTION_TICKS: usize = 10;
/// Raft ticks per leader heartbeat.
const HEARTBEAT_TICKS: usize = 2;
/// Most inputs handled between two raft ready rounds.
const INPUT_BATCH: usize = 256;

/// How a member's raft node runs.
#[derive(Debug, Clone, Copy)]
pub struct RaftSettings {
    /// Raft election timeout.
    pub election_timeout: Duration,
    /// Applied entries kept in the log before it is compacted.
    pub log_gc_threshold: u64,
}

/// What this member's raft node currently is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// Current raft term.
    pub term: u64,
    /// Raft id of the leader this member knows of (0: none).
    pub leader_id: u64,
    /// Whether this member leads `term`.
    pub is_leader: bool,
    /// Whether this member leads `term` and has applied every entry of the
    /// terms before it, so its metadata is complete.
    pub leader_ready: bool,
    /// Index of the last applied entry.
    pub applied: u64,
    /// Index of the last entry compacted out of this member's log (0:
    /// none).
    pub compacted: u64,
    /// The raft thread has stopped (shutdown or a fatal storage error).
    pub stopped: bool,
}

struct StatusBoard {
    status: Mutex<RaftStatus>,
    changed: Condvar,
}

impl StatusBoard {
    fn publish(&self, status: RaftStatus) {
        let mut current = self.status.lock();
        if *current != status {
            *current = status;
            self.changed.notify_all();
        }
    }
}

type Reply = Sender<Result<()>>;

enum Input {
    Propose {
        data: Vec<u8>,
        reply: Reply,
    },
    Message(Box<Message>),
    /// Whether a snapshot sent to member `to` was delivered.
    SnapshotStatus {
        to: u64,
        delivered: bool,
    },
    Stop,
}

/// Where raft messages from other members are delivered; cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    tx: Sender<Input>,
}

impl Inbox {
    /// Hands a raft message to this member's raft thread.
    pub fn deliver(&self, msg: Message) {
        // A stopped member drops traffic, as a dead one would.
        let _ = self.tx.send(Input::Message(Box::new(msg)));
    }

    /// Tells the raft thread whether its snapshot reached member `to` (a
    /// leader sends `to` nothing more until told).
    pub fn report_snapshot(&self, to: u64, delivered: bool) {
        let _ = self.tx.send(Input::SnapshotStatus { to, delivered });
    }
}

/// Handle of a member's raft thread. Dropping it stops the thread.
pub struct Replicator {
    tx: Sender<Input>,
    board: Arc<StatusBoard>,
    thread: Mutex<Option<JoinHandle<()>>>,
    members: Arc<Membership>,
    write_timeout: Duration,
}

impl Replicator {
    /// Starts the raft thread over the log in `db`'s raft column family.
    /// Messages to other members are sent on `runtime` (needed only with
    /// other members).
    pub fn start(
        db: Arc<DB>,
        members: Arc<Membership>,
        settings: RaftSettings,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Result<Self> {
        let log = RaftLog::open(db.clone(), &members.voters())?;
        let config = raft::Config {
            id: members.me().id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied: log.applied(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, log, &logger)
            .map_err(|e| PdServerError::Replication(format!("cannot start raft: {e}")))?;
        let single = members.voters().len() == 1;
        if single {
            node.campaign()
                .map_err(|e| PdServerError::Replication(format!("cannot campaign: {e}")))?;
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let inbox = Inbox { tx: tx.clone() };
        let peers = PeerSender::start(&members, runtime.as_ref(), inbox)?;
        let board = Arc::new(StatusBoard {
            status: Mutex::new(RaftStatus::default()),
            changed: Condvar::new(),
        });
        let election_timeout = settings.election_timeout;
        let tick = (election_timeout / ELECTION_TICKS as u32).max(Duration::from_millis(1));
        let worker = Worker {
            node,
            db,
            rx,
            peers,
            board: board.clone(),
            waiters: BTreeMap::new(),
            leader_term: 0,
            term_start: 0,
            tick,
            log_gc_threshold: settings.log_gc_threshold.max(1),
        };
        let thread = std::thread::Builder::new()
            .name(format!("pd-raft-{}", members.me().name))
            .spawn(move || worker.run())?;
        Ok(Replicator {
            tx,
            board,
            thread: Mutex::new(Some(thread)),
            members,
            write_timeout: (election_timeout * 4).max(Duration::from_secs(5)),
        })
    }

    /// Where other members' raft messages for this member go.
    pub fn inbox(&self) -> Inbox {
        Inbox {
            tx: self.tx.clone(),
        }
    }

    /// The members of the group.
    pub fn members(&self) -> &Arc<Membership> {
        &self.members
    }

    /// The raft node's current status.
    pub fn status(&self) -> RaftStatus {
        *self.board.status.lock()
    }

    /// Waits up to `timeout` for a status satisfying `pred`; returns the
    /// last status seen either way.
    pub fn wait_status(&self, timeout: Duration, pred: impl Fn(&RaftStatus) -> bool) -> RaftStatus {
        let deadline = Instant::now() + timeout;
        let mut status = self.board.status.lock();
        while !pred(&status) && !status.stopped {
            if self
                .board
                .changed
                .wait_until(&mut status, deadline)
                .timed_out()
            {
                break;
            }
        }
        *status
    }

    /// The leader this member knows of, if any.
    pub fn leader(&self) -> Option<MemberInfo> {
        let status = self.status();
        if status.leader_id == 0 {
            return None;
        }
        self.members.info(status.leader_id)
    }

    /// The error a member that does not lead answers with.
    pub fn not_leader(&self) -> PdServerError {
        PdServerError::NotLeader {
            leader: self.leader().map(Box::new),
        }
    }

    /// Replicates `command`: returns once it is committed and applied to
    /// this member's metadata store.
    pub fn propose(&self, command: &MetaCommand) -> Result<()> {
        let (reply, done) = crossbeam_channel::bounded(1);
        let input = Input::Propose {
            data: command.encode_to_vec(),
            reply,
        };
        if self.tx.send(input).is_err() {
            return Err(PdServerError::Replication("the raft thread stopped".into()));
        }
        let wait = || done.recv_timeout(self.write_timeout);
        // Waiting for the quorum blocks; let the runtime move its other
        // tasks off this worker meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let outcome = if multi_thread {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        match outcome {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(PdServerError::Replication(format!(
                "write not committed within {:?}: no quorum of PD members",
                self.write_timeout
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(PdServerError::Replication("the raft thread stopped".into()))
            }
        }
    }

    /// Stops the raft thread (idempotent); pending writes fail.
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("PD raft thread panicked");
            }
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    node: RawNode<RaftLog>,
    db: Arc<DB>,
    rx: Receiver<Input>,
    peers: PeerSender,
    board: Arc<StatusBoard>,
    /// Proposals by log index: the term they were proposed in and who waits.
    waiters: BTreeMap<u64, (u64, Reply)>,
    /// The term this member last became leader in.
    leader_term: u64,
    /// Index of the first entry of `leader_term` (raft's empty entry).
    term_start: u64,
    tick: Duration,
    log_gc_threshold: u64,
}

impl Drop for Worker {
    /// However the raft thread ends (stopped, a storage error, a panic),
    /// waiting writes fail and the member no longer claims to lead.
    fn drop(&mut self) {
        self.fail_waiters(|| PdServerError::Replication("the raft thread stopped".into()));
        self.board.publish(RaftStatus {
            stopped: true,
            ..RaftStatus::default()
        });
    }
}

impl Worker {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        self.publish();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut inputs: Vec<Input> = first.into_iter().collect();
            while inputs.len() < INPUT_BATCH {
                match self.rx.try_recv() {
                    Ok(input) => inputs.push(input),
                    Err(_) => break,
                }
            }
            let mut stop = false;
            for input in inputs {
                match input {
                    Input::Stop => stop = true,
                    Input::Message(msg) => {
                        if let Err(e) = self.node.step(*msg) {
                            tracing::debug!(error = %e, "raft message dropped");
                        }
                    }
                    Input::Propose { data, reply } => self.propose(data, reply),
                    Input::SnapshotStatus { to, delivered } => {
                        let status = match delivered {
                            true => SnapshotStatus::Finish,
                            false => SnapshotStatus::Failure,
                        };
                        self.node.report_snapshot(to, status);
                    }
                }
                self.observe_role();
            }
            if stop {
                break;
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick = Instant::now() + self.tick;
                self.observe_role();
            }
            if let Err(e) = self.handle_ready() {
                tracing::error!(error = %e, "PD raft storage failed; this member stops replicating");
                break;
            }
            self.publish();
        }
    }

    fn propose(&mut self, data: Vec<u8>, reply: Reply) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(PdServerError::NotLeader { leader: None }));
            return;
        }
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose(vec![], data) {
            Ok(()) if self.node.raft.raft_log.last_index() > before => {
                let index = self.node.raft.raft_log.last_index();
                self.waiters.insert(index, (self.node.raft.term, reply));
            }
            Ok(()) => {
                let _ = reply.send(Err(PdServerError::Replication("proposal dropped".into())));
            }
            Err(e) => {
                let _ = reply.send(Err(PdServerError::Replication(format!(
                    "proposal refused: {e}"
                ))));
            }
        }
    }

    /// Notices leadership changes: records where a new term starts and
    /// fails the writes of a lost leadership (their outcome is unknown, and
    /// the new leader reloads everything from the replicated metadata).
    fn observe_role(&mut self) {
        let raft = &self.node.raft;
        if raft.state == StateRole::Leader {
            if raft.term != self.leader_term {
                self.leader_term = raft.term;
                self.term_start = raft.raft_log.last_index();
                tracing::info!(term = raft.term, id = raft.id, "became PD raft leader");
            }
        } else if !self.waiters.is_empty() {
            self.fail_waiters(|| PdServerError::NotLeader { leader: None });
        }
    }

    fn fail_waiters(&mut self, err: impl Fn() -> PdServerError) {
        for (_, (_, reply)) in std::mem::take(&mut self.waiters) {
            let _ = reply.send(Err(err()));
        }
    }

    fn publish(&self) {
        let raft = &self.node.raft;
        let is_leader = raft.state == StateRole::Leader;
        let applied = self.node.store().applied();
        self.board.publish(RaftStatus {
            term: raft.term,
            leader_id: raft.leader_id,
            is_leader,
            leader_ready: is_leader && raft.term == self.leader_term && applied >= self.term_start,
            applied,
            compacted: self.node.store().truncated_index(),
            stopped: false,
        });
    }

    fn handle_ready(&mut self) -> Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        self.peers.send(ready.take_messages());
        // A snapshot goes into the same synced batch as the entries after
        // it and the hard state (raft never hands out committed entries
        // with one).
        let mut wb = WriteBatch::default();
        if !ready.snapshot().is_empty() {
            self.node
                .mut_store()
                .apply_snapshot(ready.snapshot(), &mut wb)?;
            tracing::info!(
                index = ready.snapshot().get_metadata().index,
                "PD metadata replaced by the leader's snapshot"
            );
        }
        self.apply(ready.take_committed_entries())?;
        self.node.mut_store().append(ready.entries(), &mut wb)?;
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hard_state(hs, &mut wb)?;
        }
        if !wb.is_empty() {
            self.write(wb, true)?;
        }
        self.peers.send(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut wb = WriteBatch::default();
            self.node.mut_store().set_commit(commit, &mut wb)?;
            self.write(wb, false)?;
        }
        self.peers.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        self.compact_log()
    }

    /// Once more than `log_gc_threshold` applied entries are in the log,
    /// removes all but the newest half of them.
    fn compact_log(&mut self) -> Result<()> {
        let log = self.node.store();
        let (applied, truncated) = (log.applied(), log.truncated_index());
        if applied.saturating_sub(truncated) <= self.log_gc_threshold {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        self.node
            .mut_store()
            .compact(applied - self.log_gc_threshold / 2, &mut wb)?;
        // Not synced: the WAL keeps writes in order, so if this survives a
        // crash, so does the applied state it relies on.
        self.write(wb, false)
    }

    fn write(&self, wb: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }

    /// Applies committed entries to the metadata (the default column
    /// family) with the applied index, in one batch. Not synced: the log
    /// holding the entries is, and a restart re-applies from it.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        let mut wb = WriteBatch::default();
        for entry in &entries {
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            match MetaCommand::decode(&entry.data[..]) {
                Ok(command) => {
                    for op in command.ops {
                        if op.delete {
                            wb.delete(op.key);
                        } else {
                            wb.put(op.key, op.value);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(index = entry.index, error = %e, "undecodable PD command skipped");
                }
            }
        }
        self.node.mut_store().set_applied(last_index, &mut wb)?;
        self.write(wb, false)?;
        for entry in &entries {
            if let Some((term, reply)) = self.waiters.remove(&entry.index) {
                let result = if term == entry.term {
                    Ok(())
                } else {
                    Err(PdServerError::NotLeader { leader: None })
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}
