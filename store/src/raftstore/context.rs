//! What a raft poller shares with every peer it runs: the engine, the
//! round's write batch, the outgoing message batches, and handles on the
//! apply pool, the PD worker and the transport.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_proto::metapb;
use concord_proto::raft_serverpb::RaftMessage;
use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use super::apply::ApplyPool;
use super::config::RaftStoreConfig;
use super::meta::StoreMeta;
use super::msg::Callback;
use super::router::StoreRouter;
use super::snapshot::SnapshotBuilder;
use crate::engine::{Engine, WriteBatch};

/// Sends raft messages to other stores. Delivery is best effort: raft
/// retransmits what is lost.
pub trait Transport: Send + Sync + 'static {
    /// Sends `msgs`, all addressed to peers on `store_id`; none is a
    /// snapshot.
    fn send(&self, store_id: u64, msgs: Vec<RaftMessage>);

    /// Sends a snapshot message to a peer on `store_id` and reports to the
    /// sending peer whether it was delivered. The snapshot's payload travels
    /// apart as `data` (the message carries it empty), so that it is never
    /// copied into an encoded message on the raft thread.
    fn send_snapshot(&self, store_id: u64, msg: RaftMessage, data: Bytes);
}

/// Work for the PD worker.
pub enum PdTask {
    /// Report a region from its leader.
    RegionHeartbeat {
        /// The region.
        region: metapb::Region,
        /// This store's peer, the leader.
        leader: metapb::Peer,
        /// Peers far behind the leader's log.
        pending_peers: Vec<metapb::Peer>,
        /// Bytes written since the last heartbeat.
        written_bytes: u64,
        /// Keys written since the last heartbeat.
        written_keys: u64,
        /// The leader's term.
        term: u64,
    },
    /// Measure a region and split it at its middle key if it is too big
    /// (or in any case with `force`).
    SplitCheck {
        /// The region.
        region: metapb::Region,
        /// Split even if the region is under the limits.
        force: bool,
    },
    /// Split a region at the given keys (asking PD for ids first).
    Split {
        /// The region.
        region: metapb::Region,
        /// Where to split.
        keys: Vec<Vec<u8>>,
        /// Completed with the resulting regions.
        callback: Option<Callback>,
    },
    /// Tell PD about the regions a split produced.
    ReportSplit {
        /// The regions.
        regions: Vec<metapb::Region>,
    },
}

/// The long-lived parts of a [`PollContext`].
#[derive(Clone)]
pub struct StoreServices {
    /// This store's id.
    pub store_id: u64,
    /// Raftstore settings.
    pub cfg: Arc<RaftStoreConfig>,
    /// The store's engine.
    pub engine: Engine,
    /// Mailboxes of every peer.
    pub router: StoreRouter,
    /// The apply threads.
    pub apply: Arc<ApplyPool>,
    /// The thread that builds snapshots for followers.
    pub snapshots: Arc<SnapshotBuilder>,
    /// Ranges and leadership of all regions.
    pub meta: Arc<Mutex<StoreMeta>>,
    /// Store-to-store messages.
    pub transport: Arc<dyn Transport>,
    /// The PD worker's queue.
    pub pd_tx: UnboundedSender<PdTask>,
    /// Proposals not yet handed to apply, store-wide.
    pub pending_proposals: Arc<AtomicUsize>,
    /// Counters of the raft write path.
    pub stats: Arc<RaftStats>,
}

/// A running total of durations and how many there were: a Prometheus
/// summary's `_sum` and `_count`, whose ratio over an interval is the
/// mean duration in it.
#[derive(Debug, Default)]
pub struct Timing {
    micros: AtomicU64,
    count: AtomicU64,
}

impl Timing {
    /// Adds one duration.
    pub fn record(&self, elapsed: Duration) {
        self.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their total, in seconds.
    pub fn seconds(&self) -> f64 {
        self.micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Counters and stage timings of the write path, for metrics and tests.
/// Along a write: [`Self::write`] spans its whole stay in the leader's
/// store; within it [`Self::commit_wait`] (proposed until committed: the
/// log writes here and on a quorum, and the round trips), then
/// [`Self::apply_wait`] and [`Self::apply`]. [`Self::log_write`] times each
/// synced raft write on every store, leader or follower.
#[derive(Debug, Default)]
pub struct RaftStats {
    /// Synced writes of raft state (one per poll round with work).
    pub log_write: Timing,
    /// Region readies persisted by those writes; divided by the number of
    /// writes this is how many regions share each fsync.
    pub persisted_readies: AtomicU64,
    /// Writes answered when their entry committed, before it applied.
    pub acked_at_commit: AtomicU64,
    /// Per proposed entry: from its proposal until the leader hands it to
    /// apply.
    pub commit_wait: Timing,
    /// Per batch of committed entries: the wait for an apply thread.
    pub apply_wait: Timing,
    /// Per round of an apply thread: applying its batches, the engine
    /// write and answering the callers.
    pub apply: Timing,
    /// Per command (a write) this store answered OK: from its arrival
    /// until the answer.
    pub write: Timing,
}

/// The services plus the per-round state of one raft poller.
pub struct PollContext {
    services: StoreServices,
    /// The round's write batch: written once, synced, per round.
    pub wb: WriteBatch,
    /// Region readies added to `wb` this round.
    pub round_readies: u64,
    outbox: HashMap<u64, Vec<RaftMessage>>,
    snapshots: Vec<(RaftMessage, Bytes)>,
}

impl std::ops::Deref for PollContext {
    type Target = StoreServices;

    fn deref(&self) -> &StoreServices {
        &self.services
    }
}

impl PollContext {
    /// A context for one poller.
    pub fn new(services: StoreServices) -> PollContext {
        let wb = services.engine.write_batch();
        PollContext {
            services,
            wb,
            round_readies: 0,
            outbox: HashMap::new(),
            snapshots: Vec::new(),
        }
    }

    /// Queues a message; messages are sent per store after the round's write.
    pub fn send(&mut self, msg: RaftMessage) {
        let store = msg.to_peer.as_ref().map_or(0, |p| p.store_id);
        self.outbox.entry(store).or_default().push(msg);
    }

    /// Queues a snapshot message (its payload apart, see
    /// [`Transport::send_snapshot`]), sent on its own stream with the
    /// round's other messages.
    pub fn send_snapshot(&mut self, msg: RaftMessage, data: Bytes) {
        self.snapshots.push((msg, data));
    }

    /// Sends every queued message, one batch per destination store.
    pub fn flush_messages(&mut self) {
        for (store, msgs) in self.outbox.drain() {
            self.services.transport.send(store, msgs);
        }
        for (msg, data) in self.snapshots.drain(..) {
            let store = msg.to_peer.as_ref().map_or(0, |p| p.store_id);
            self.services.transport.send_snapshot(store, msg, data);
        }
    }

    /// Queues work for the PD worker.
    pub fn pd(&self, task: PdTask) {
        let _ = self.pd_tx.send(task);
    }

    /// Writes the round's batch with one fsync and starts a new batch.
    pub fn write_round(&mut self) {
        if self.wb.is_empty() {
            return;
        }
        let wb = std::mem::replace(&mut self.wb, self.services.engine.write_batch());
        let started = Instant::now();
        if let Err(e) = self.services.engine.write(wb, true) {
            // Raft must not go on as if the log were durable.
            tracing::error!("raft log write failed: {e}");
            std::process::abort();
        }
        let stats = &self.services.stats;
        stats.log_write.record(started.elapsed());
        stats
            .persisted_readies
            .fetch_add(std::mem::take(&mut self.round_readies), Ordering::Relaxed);
    }
}
