//! Raftstore settings.

use std::time::Duration;

use concord_common::limits::{DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_VALUE_SIZE};

/// How a store runs its regions. Defaults suit production; tests shrink the
/// tick and the split and log-GC limits.
#[derive(Debug, Clone)]
pub struct RaftStoreConfig {
    /// Interval of the store-level clock that ticks every region.
    pub tick_interval: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Threads that drive raft for all regions.
    pub raft_pollers: usize,
    /// Threads that apply committed entries to the data column families.
    pub apply_pollers: usize,
    /// Most regions a poller handles in one round (one fsync).
    pub max_batch_regions: usize,
    /// Largest accepted key.
    pub max_key_size: usize,
    /// Largest accepted value.
    pub max_value_size: usize,
    /// Proposals waiting for apply, store-wide, above which new writes are
    /// answered `ServerIsBusy`.
    pub max_pending_proposals: usize,
    /// A region whose approximate size reaches this is split.
    pub region_max_size: u64,
    /// A region holding this many keys is split.
    pub region_max_keys: u64,
    /// Bytes written to a region between two split checks.
    pub split_check_diff: u64,
    /// Applied entries kept in the log before the leader proposes CompactLog.
    pub raft_log_gc_threshold: u64,
    /// A follower lagging more than this many entries no longer holds back
    /// log GC; it will catch up by snapshot.
    pub raft_log_gc_max_lag: u64,
    /// Ticks between checks for log GC, split and PD heartbeats.
    pub housekeeping_ticks: u64,
    /// Size of one snapshot chunk on the wire.
    pub snapshot_chunk_size: usize,
    /// Messages buffered per destination store before new ones are dropped.
    pub transport_queue_size: usize,
    /// Whether idle regions hibernate: a leader whose log every follower
    /// holds stops ticking after `hibernate_idle_ticks`, tells its
    /// followers, and they stop too until anything happens in the region.
    pub hibernate_regions: bool,
    /// Idle ticks before a leader hibernates.
    pub hibernate_idle_ticks: u64,
    /// Ticks between two ticks of a hibernating peer. On each, its leader
    /// repeats the hibernate notice; a follower that missed
    /// [`MISSED_NOTICES_BEFORE_WAKING`] of them wakes up, and so campaigns
    /// if the leader is gone.
    pub sleep_tick_ticks: u64,
}

/// Hibernate notices a sleeping follower may miss before it wakes up.
pub const MISSED_NOTICES_BEFORE_WAKING: u64 = 2;

/// Sleep ticks between two PD heartbeats of a sleeping leader (a minute by
/// default): nothing changes in an idle region, and PD pushes the steps of
/// new operators instead of waiting for a heartbeat.
pub const SLEEP_TICKS_PER_PD_HEARTBEAT: u64 = 12;

impl RaftStoreConfig {
    /// How long after a leader sent a message that a quorum acknowledged it
    /// may still serve reads without asking the quorum again.
    ///
    /// A follower that heard from the leader refuses to vote (check-quorum)
    /// and does not campaign until `election_ticks` ticks have passed, which
    /// takes at least `election_ticks - 1` intervals; two intervals of
    /// margin are kept for the clocks' granularity.
    pub fn leader_lease(&self) -> Duration {
        self.tick_interval * (self.election_ticks.saturating_sub(2) as u32)
    }
}

impl Default for RaftStoreConfig {
    fn default() -> Self {
        RaftStoreConfig {
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            raft_pollers: 2,
            apply_pollers: 2,
            max_batch_regions: 256,
            max_key_size: DEFAULT_MAX_KEY_SIZE,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            max_pending_proposals: 20_000,
            region_max_size: 96 << 20,
            region_max_keys: 960_000,
            split_check_diff: 6 << 20,
            raft_log_gc_threshold: 1024,
            raft_log_gc_max_lag: 10_240,
            housekeeping_ticks: 10,
            snapshot_chunk_size: 1 << 20,
            hibernate_regions: true,
            hibernate_idle_ticks: 20,
            sleep_tick_ticks: 50,
            transport_queue_size: 4096,
        }
    }
}
