//! Checkers and schedulers: pure functions from a snapshot of the cluster
//! to new operators.
//!
//! - The replica checker restores each region to `max_replicas` healthy
//!   voters: peers on Down, Offline or Tombstone stores (or reported down by
//!   the leader for longer than `max-store-down-time`) are replaced, missing
//!   replicas are added and extras removed; a learner no operator is
//!   promoting is promoted if the region lacks voters, else removed.
//! - balance-region moves replicas from the store with the most regions to
//!   the one with the fewest, until they differ by at most one.
//! - balance-leader moves leadership the same way.
//! - evict-leader moves every leadership off the chosen stores.
//! - hot-region moves the leadership of hot regions (by bytes written and
//!   read per second) from the store serving the most hot traffic to a
//!   follower's store serving less.
//!
//! Every choice respects per-store limits on in-flight operators and the
//! `location-labels` isolation (replicas of a region on distinct zones/racks/
//! hosts when the cluster allows it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use concord_proto::metapb;

use crate::cluster::StoreStatus;
use crate::operator::{OpKind, OpStep, Operator};
use crate::region_tree::RegionEntry;

/// Durations stored as whole seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// Scheduling knobs. Changed at run time through the HTTP API and persisted
/// with the cluster metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    /// Voters each region should have.
    pub max_replicas: usize,
    /// A peer reported down for longer than this is replaced.
    #[serde(with = "secs")]
    pub max_store_down_time: Duration,
    /// Most in-flight region (replica-moving) operators touching one store.
    pub region_limit: usize,
    /// Most in-flight leader operators touching one store.
    pub leader_limit: usize,
    /// Label keys, outermost first (e.g. zone, rack, host), over which the
    /// replicas of a region are spread.
    pub location_labels: Vec<String>,
    /// Timeout of operators that move data.
    #[serde(with = "secs")]
    pub region_op_timeout: Duration,
    /// Timeout of leader transfers.
    #[serde(with = "secs")]
    pub leader_op_timeout: Duration,
    /// Whether balance-region runs.
    pub balance_region: bool,
    /// Whether balance-leader runs.
    pub balance_leader: bool,
    /// Whether hot-region runs.
    pub hot_region: bool,
    /// Bytes per second (written + read) from which a region counts as hot.
    pub hot_region_min_flow: u64,
    /// Stores evict-leader keeps free of leaders.
    pub evict_leader_stores: BTreeSet<u64>,
    /// Per-store overrides of `region_limit`.
    pub store_limits: BTreeMap<u64, usize>,
}

impl ScheduleConfig {
    /// The in-flight region operator limit of one store.
    pub fn region_limit_of(&self, store_id: u64) -> usize {
        self.store_limits
            .get(&store_id)
            .copied()
            .unwrap_or(self.region_limit)
    }

    /// Names of the enabled schedulers (the replica checker always runs).
    pub fn scheduler_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.balance_region {
            names.push("balance-region".to_string());
        }
        if self.balance_leader {
            names.push("balance-leader".to_string());
        }
        if self.hot_region {
            names.push("hot-region".to_string());
        }
        names.extend(
            self.evict_leader_stores
                .iter()
                .map(|s| format!("evict-leader-{s}")),
        );
        names
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            max_replicas: 3,
            max_store_down_time: Duration::from_secs(30 * 60),
            region_limit: 4,
            leader_limit: 4,
            location_labels: Vec::new(),
            region_op_timeout: Duration::from_secs(600),
            leader_op_timeout: Duration::from_secs(30),
            balance_region: true,
            balance_leader: true,
            hot_region: true,
            hot_region_min_flow: 1024 * 1024,
            evict_leader_stores: BTreeSet::new(),
            store_limits: BTreeMap::new(),
        }
    }
}

/// A store as the schedulers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreView {
    /// Store id.
    pub id: u64,
    /// Displayed state (Down derived from silence).
    pub status: StoreStatus,
    /// Labels by key.
    pub labels: HashMap<String, String>,
}

impl StoreView {
    /// Builds the view of a store's metadata with its derived status.
    pub fn new(meta: &metapb::Store, status: StoreStatus) -> Self {
        StoreView {
            id: meta.id,
            status,
            labels: meta
                .labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect(),
        }
    }
}

/// What the schedulers read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every store.
    pub stores: Vec<StoreView>,
    /// Every region.
    pub regions: Vec<RegionEntry>,
    /// Operators already running.
    pub operators: Vec<Operator>,
}

/// A fresh id source (the cluster's allocator in production).
pub trait IdSource {
    /// A new unique peer id, or `None` when none can be had now.
    fn next_id(&mut self) -> Option<u64>;
}

impl<F: FnMut() -> Option<u64>> IdSource for F {
    fn next_id(&mut self) -> Option<u64> {
        self()
    }
}

/// Working state of one scheduling round: counts include the effect of
/// running and newly created operators, so one round never overshoots.
struct Round<'a> {
    config: &'a ScheduleConfig,
    stores: BTreeMap<u64, &'a StoreView>,
    region_count: HashMap<u64, i64>,
    leader_count: HashMap<u64, i64>,
    region_ops: HashMap<u64, usize>,
    leader_ops: HashMap<u64, usize>,
    busy_regions: HashSet<u64>,
    new_ops: Vec<Operator>,
}

fn peer_store_ids(region: &metapb::Region) -> Vec<u64> {
    region.peers.iter().map(|p| p.store_id).collect()
}

impl<'a> Round<'a> {
    fn new(config: &'a ScheduleConfig, snapshot: &'a Snapshot) -> Self {
        let mut round = Round {
            config,
            stores: snapshot.stores.iter().map(|s| (s.id, s)).collect(),
            region_count: HashMap::new(),
            leader_count: HashMap::new(),
            region_ops: HashMap::new(),
            leader_ops: HashMap::new(),
            busy_regions: HashSet::new(),
            new_ops: Vec::new(),
        };
        for entry in &snapshot.regions {
            for store in peer_store_ids(&entry.region) {
                *round.region_count.entry(store).or_default() += 1;
            }
            if let Some(leader) = &entry.leader {
                *round.leader_count.entry(leader.store_id).or_default() += 1;
            }
        }
        let leaders: HashMap<u64, u64> = snapshot
            .regions
            .iter()
            .filter_map(|e| Some((e.region.id, Self::leader_store(e)?)))
            .collect();
        for op in &snapshot.operators {
            round.account(op, leaders.get(&op.region_id).copied());
        }
        round
    }

    /// Counts an operator against its stores' limits and moves the counts
    /// to what they will be once it finishes. `leader` is the store leading
    /// the region now.
    fn account(&mut self, op: &Operator, mut leader: Option<u64>) {
        self.busy_regions.insert(op.region_id);
        let limits = if op.kind == OpKind::Leader {
            &mut self.leader_ops
        } else {
            &mut self.region_ops
        };
        for store in op.stores() {
            *limits.entry(store).or_default() += 1;
        }
        for step in &op.steps[op.current.min(op.steps.len())..] {
            match step {
                OpStep::AddLearner { store_id, .. } => {
                    *self.region_count.entry(*store_id).or_default() += 1
                }
                OpStep::RemovePeer { store_id } => {
                    *self.region_count.entry(*store_id).or_default() -= 1
                }
                OpStep::TransferLeader { store_id } => {
                    if let Some(from) = leader {
                        *self.leader_count.entry(from).or_default() -= 1;
                    }
                    *self.leader_count.entry(*store_id).or_default() += 1;
                    leader = Some(*store_id);
                }
                OpStep::PromoteLearner { .. } | OpStep::Split { .. } => {}
            }
        }
    }

    fn push(&mut self, op: Operator, leader: Option<u64>) {
        self.account(&op, leader);
        self.new_ops.push(op);
    }

    fn status(&self, store_id: u64) -> Option<StoreStatus> {
        self.stores.get(&store_id).map(|s| s.status)
    }

    fn is_up(&self, store_id: u64) -> bool {
        self.status(store_id) == Some(StoreStatus::Up)
    }

    fn region_ops(&self, store_id: u64) -> usize {
        self.region_ops.get(&store_id).copied().unwrap_or(0)
    }

    fn under_region_limit(&self, store_id: u64) -> bool {
        self.region_ops(store_id) < self.config.region_limit_of(store_id)
    }

    fn under_leader_limit(&self, store_id: u64) -> bool {
        self.leader_ops.get(&store_id).copied().unwrap_or(0) < self.config.leader_limit
    }

    fn regions_on(&self, store_id: u64) -> i64 {
        self.region_count.get(&store_id).copied().unwrap_or(0)
    }

    fn leaders_on(&self, store_id: u64) -> i64 {
        self.leader_count.get(&store_id).copied().unwrap_or(0)
    }

    /// How closely `candidate` shares location with `others`: the longest
    /// run of equal leading location labels with any of them (0: different
    /// outermost label; lower is better). Stores missing a label never match.
    fn colocation(&self, candidate: u64, others: &[u64]) -> usize {
        let labels = &self.config.location_labels;
        let Some(cand) = self.stores.get(&candidate) else {
            return 0;
        };
        others
            .iter()
            .filter(|o| **o != candidate)
            .filter_map(|o| self.stores.get(o))
            .map(|other| {
                labels
                    .iter()
                    .take_while(
                        |key| match (cand.labels.get(*key), other.labels.get(*key)) {
                            (Some(a), Some(b)) => a == b,
                            _ => false,
                        },
                    )
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The best Up store for a new replica of a region whose other replicas
    /// are on `keep`, excluding `exclude`: least co-located, then fewest
    /// regions, then lowest id.
    fn pick_target(&self, keep: &[u64], exclude: &[u64]) -> Option<u64> {
        self.stores
            .keys()
            .copied()
            .filter(|id| self.is_up(*id))
            .filter(|id| !keep.contains(id) && !exclude.contains(id))
            .filter(|id| self.under_region_limit(*id))
            .min_by_key(|id| (self.colocation(*id, keep), self.regions_on(*id), *id))
    }

    fn leader_store(entry: &RegionEntry) -> Option<u64> {
        entry.leader.as_ref().map(|l| l.store_id)
    }

    /// Steps that move leadership off `store_id` (if it leads) to another
    /// voter not in `avoid`.
    fn leave_leadership(
        &self,
        entry: &RegionEntry,
        store_id: u64,
        avoid: &[u64],
    ) -> Option<Vec<OpStep>> {
        if Self::leader_store(entry) != Some(store_id) {
            return Some(Vec::new());
        }
        let to = entry
            .region
            .peers
            .iter()
            .filter(|p| p.role() == metapb::PeerRole::Voter)
            .map(|p| p.store_id)
            .filter(|s| *s != store_id && !avoid.contains(s) && self.is_up(*s))
            .min_by_key(|s| (self.config.evict_leader_stores.contains(s), *s))?;
        Some(vec![OpStep::TransferLeader { store_id: to }])
    }

    fn is_bad_peer(&self, entry: &RegionEntry, peer: &metapb::Peer) -> bool {
        let store_bad = !matches!(self.status(peer.store_id), Some(StoreStatus::Up));
        let reported_down = entry.stats.down_peers.iter().any(|d| {
            d.peer.as_ref().is_some_and(|p| p.id == peer.id)
                && Duration::from_secs(d.down_seconds) > self.config.max_store_down_time
        });
        store_bad || reported_down
    }

    /// A learner with no operator left to promote it (one that was cancelled
    /// or timed out, or one a split copied into a new region): promote it
    /// when the region lacks healthy voters and its store is Up, otherwise
    /// remove it. True when an operator was pushed.
    fn check_learner(&mut self, entry: &RegionEntry) -> bool {
        let region = &entry.region;
        let Some(learner) = region
            .peers
            .iter()
            .find(|p| p.role() == metapb::PeerRole::Learner)
        else {
            return false;
        };
        let healthy_voters = region
            .peers
            .iter()
            .filter(|p| p.role() == metapb::PeerRole::Voter && !self.is_bad_peer(entry, p))
            .count();
        let (desc, step) =
            if healthy_voters < self.config.max_replicas && !self.is_bad_peer(entry, learner) {
                let step = OpStep::PromoteLearner {
                    store_id: learner.store_id,
                    peer_id: learner.id,
                };
                ("promote-orphan-learner", step)
            } else {
                let step = OpStep::RemovePeer {
                    store_id: learner.store_id,
                };
                ("remove-orphan-learner", step)
            };
        let op = Operator::new(
            desc,
            OpKind::Region,
            region,
            vec![step],
            self.config.region_op_timeout,
        );
        self.push(op, Self::leader_store(entry));
        true
    }

    /// The replica checker for one region.
    fn check_replicas(&mut self, entry: &RegionEntry, ids: &mut dyn IdSource) {
        if self.busy_regions.contains(&entry.region.id) || entry.leader.is_none() {
            return;
        }
        if self.check_learner(entry) {
            return;
        }
        let region = &entry.region;
        let stores = peer_store_ids(region);
        let bad: Vec<u64> = region
            .peers
            .iter()
            .filter(|p| self.is_bad_peer(entry, p))
            .map(|p| p.store_id)
            .collect();
        let healthy: Vec<u64> = stores
            .iter()
            .copied()
            .filter(|s| !bad.contains(s))
            .collect();
        let max = self.config.max_replicas;
        if let Some(&bad_store) = bad.first() {
            // Replace a bad replica: add a healthy one first unless there are
            // already enough, then remove the bad one.
            let mut steps = Vec::new();
            if healthy.len() < max {
                let Some(target) = self.pick_target(&healthy, &stores) else {
                    return;
                };
                let Some(peer_id) = ids.next_id() else { return };
                steps.push(OpStep::AddLearner {
                    store_id: target,
                    peer_id,
                });
                steps.push(OpStep::PromoteLearner {
                    store_id: target,
                    peer_id,
                });
            }
            let Some(leave) = self.leave_leadership(entry, bad_store, &bad) else {
                return;
            };
            steps.extend(leave);
            steps.push(OpStep::RemovePeer {
                store_id: bad_store,
            });
            let op = Operator::new(
                "replace-bad-replica",
                OpKind::Region,
                region,
                steps,
                self.config.region_op_timeout,
            );
            self.push(op, Self::leader_store(entry));
        } else if stores.len() < max {
            let Some(target) = self.pick_target(&stores, &[]) else {
                return;
            };
            let Some(peer_id) = ids.next_id() else { return };
            let op = Operator::new(
                "add-missing-replica",
                OpKind::Region,
                region,
                vec![
                    OpStep::AddLearner {
                        store_id: target,
                        peer_id,
                    },
                    OpStep::PromoteLearner {
                        store_id: target,
                        peer_id,
                    },
                ],
                self.config.region_op_timeout,
            );
            self.push(op, Self::leader_store(entry));
        } else if stores.len() > max {
            // Remove the most co-located replica, then the one on the
            // fullest store.
            let Some(victim) = stores
                .iter()
                .copied()
                .max_by_key(|s| (self.colocation(*s, &stores), self.regions_on(*s), *s))
            else {
                return;
            };
            let Some(mut steps) = self.leave_leadership(entry, victim, &[]) else {
                return;
            };
            steps.push(OpStep::RemovePeer { store_id: victim });
            let op = Operator::new(
                "remove-extra-replica",
                OpKind::Region,
                region,
                steps,
                self.config.region_op_timeout,
            );
            self.push(op, Self::leader_store(entry));
        }
    }

    /// One balance-region move, if the spread allows; false when balanced
    /// or limited.
    fn balance_region_once(&mut self, regions: &[RegionEntry], ids: &mut dyn IdSource) -> bool {
        let up: Vec<u64> = self
            .stores
            .keys()
            .copied()
            .filter(|s| self.is_up(*s))
            .collect();
        let mut by_load = up.clone();
        by_load.sort_by_key(|s| (std::cmp::Reverse(self.regions_on(*s)), *s));
        for &source in &by_load {
            if !self.under_region_limit(source) {
                continue;
            }
            let mut targets = up.clone();
            targets.sort_by_key(|s| (self.regions_on(*s), *s));
            for &target in &targets {
                if self.regions_on(source) - self.regions_on(target) <= 1 {
                    break;
                }
                if !self.under_region_limit(target) {
                    continue;
                }
                if let Some((op, leader)) = self.move_region(regions, source, target, ids) {
                    self.push(op, leader);
                    return true;
                }
            }
        }
        false
    }

    /// An operator moving some healthy, idle region from `source` to
    /// `target` without worsening its isolation.
    fn move_region(
        &self,
        regions: &[RegionEntry],
        source: u64,
        target: u64,
        ids: &mut dyn IdSource,
    ) -> Option<(Operator, Option<u64>)> {
        let entry = regions.iter().find(|e| {
            let stores = peer_store_ids(&e.region);
            if !stores.contains(&source)
                || stores.contains(&target)
                || self.busy_regions.contains(&e.region.id)
                || e.leader.is_none()
                || !e.stats.pending_peers.is_empty()
                || e.region.peers.iter().any(|p| self.is_bad_peer(e, p))
            {
                return false;
            }
            let rest: Vec<u64> = stores.iter().copied().filter(|s| *s != source).collect();
            self.colocation(target, &rest) <= self.colocation(source, &rest)
        })?;
        let peer_id = ids.next_id()?;
        let mut steps = vec![
            OpStep::AddLearner {
                store_id: target,
                peer_id,
            },
            OpStep::PromoteLearner {
                store_id: target,
                peer_id,
            },
        ];
        steps.extend(self.leave_leadership(entry, source, &[])?);
        steps.push(OpStep::RemovePeer { store_id: source });
        let op = Operator::new(
            "balance-region",
            OpKind::Region,
            &entry.region,
            steps,
            self.config.region_op_timeout,
        );
        Some((op, Self::leader_store(entry)))
    }

    /// One balance-leader transfer, if the spread allows.
    fn balance_leader_once(&mut self, regions: &[RegionEntry]) -> bool {
        let up: Vec<u64> = self
            .stores
            .keys()
            .copied()
            .filter(|s| self.is_up(*s))
            .collect();
        let mut sources = up.clone();
        sources.sort_by_key(|s| (std::cmp::Reverse(self.leaders_on(*s)), *s));
        for &source in &sources {
            if !self.under_leader_limit(source) {
                continue;
            }
            for entry in regions {
                if Self::leader_store(entry) != Some(source)
                    || self.busy_regions.contains(&entry.region.id)
                {
                    continue;
                }
                let target = entry
                    .region
                    .peers
                    .iter()
                    .filter(|p| p.role() == metapb::PeerRole::Voter && p.store_id != source)
                    .map(|p| p.store_id)
                    .filter(|s| self.is_up(*s) && self.under_leader_limit(*s))
                    .filter(|s| !self.config.evict_leader_stores.contains(s))
                    .filter(|s| self.leaders_on(source) - self.leaders_on(*s) > 1)
                    .min_by_key(|s| (self.leaders_on(*s), *s));
                if let Some(target) = target {
                    let op = Operator::new(
                        "balance-leader",
                        OpKind::Leader,
                        &entry.region,
                        vec![OpStep::TransferLeader { store_id: target }],
                        self.config.leader_op_timeout,
                    );
                    self.push(op, Some(source));
                    return true;
                }
            }
        }
        false
    }
}

impl Round<'_> {
    /// Transfers leaders off the evict-leader stores (within limits).
    fn evict_leaders(&mut self, regions: &[RegionEntry]) {
        for entry in regions {
            let Some(source) = Self::leader_store(entry) else {
                continue;
            };
            if !self.config.evict_leader_stores.contains(&source)
                || self.busy_regions.contains(&entry.region.id)
            {
                continue;
            }
            let target = entry
                .region
                .peers
                .iter()
                .filter(|p| p.role() == metapb::PeerRole::Voter)
                .map(|p| p.store_id)
                .filter(|s| *s != source && self.is_up(*s) && self.under_leader_limit(*s))
                .filter(|s| !self.config.evict_leader_stores.contains(s))
                .min_by_key(|s| (self.leaders_on(*s), *s));
            if let Some(target) = target {
                let op = Operator::new(
                    "evict-leader",
                    OpKind::Leader,
                    &entry.region,
                    vec![OpStep::TransferLeader { store_id: target }],
                    self.config.leader_op_timeout,
                );
                self.push(op, Some(source));
            }
        }
    }
}

/// Bytes per second a region served in its last reported interval.
fn region_flow(entry: &RegionEntry) -> u64 {
    (entry.stats.bytes_written + entry.stats.bytes_read) / entry.stats.interval_secs.max(1)
}

impl Round<'_> {
    /// One hot-region leader transfer, if it lowers the hottest store's
    /// hot traffic without making another store hotter than it was.
    fn balance_hot_once(&mut self, regions: &[RegionEntry]) -> bool {
        let min_flow = self.config.hot_region_min_flow.max(1);
        let hot: Vec<&RegionEntry> = regions
            .iter()
            .filter(|e| e.leader.is_some() && region_flow(e) >= min_flow)
            .collect();
        let mut flow: HashMap<u64, u64> = HashMap::new();
        for entry in &hot {
            if let Some(leader) = Self::leader_store(entry) {
                *flow.entry(leader).or_default() += region_flow(entry);
            }
        }
        let Some((&source, &source_flow)) = flow
            .iter()
            .filter(|(s, _)| self.under_leader_limit(**s))
            .max_by_key(|(s, f)| (**f, std::cmp::Reverse(**s)))
        else {
            return false;
        };
        let mut candidates: Vec<&&RegionEntry> = hot
            .iter()
            .filter(|e| Self::leader_store(e) == Some(source))
            .filter(|e| !self.busy_regions.contains(&e.region.id))
            .collect();
        candidates.sort_by_key(|e| (std::cmp::Reverse(region_flow(e)), e.region.id));
        for entry in candidates {
            let moved = region_flow(entry);
            let target = entry
                .region
                .peers
                .iter()
                .filter(|p| p.role() == metapb::PeerRole::Voter && p.store_id != source)
                .map(|p| p.store_id)
                .filter(|s| self.is_up(*s) && self.under_leader_limit(*s))
                .filter(|s| !self.config.evict_leader_stores.contains(s))
                .min_by_key(|s| (flow.get(s).copied().unwrap_or(0), *s));
            let Some(target) = target else { continue };
            if flow.get(&target).copied().unwrap_or(0) + moved >= source_flow {
                continue;
            }
            let op = Operator::new(
                "hot-region",
                OpKind::Leader,
                &entry.region,
                vec![OpStep::TransferLeader { store_id: target }],
                self.config.leader_op_timeout,
            );
            self.push(op, Some(source));
            return true;
        }
        false
    }
}

/// Runs the replica checker over every region, then evict-leader,
/// balance-region and balance-leader until balanced or limited. Returns the
/// new operators.
pub fn schedule(
    config: &ScheduleConfig,
    snapshot: &Snapshot,
    ids: &mut dyn IdSource,
) -> Vec<Operator> {
    let mut round = Round::new(config, snapshot);
    for entry in &snapshot.regions {
        round.check_replicas(entry, ids);
    }
    round.evict_leaders(&snapshot.regions);
    if config.hot_region {
        round.balance_hot_once(&snapshot.regions);
    }
    if config.balance_region {
        while round.balance_region_once(&snapshot.regions, ids) {}
    }
    if config.balance_leader {
        while round.balance_leader_once(&snapshot.regions) {}
    }
    round.new_ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_tree::RegionStats;

    fn store(id: u64, status: StoreStatus, zone: &str) -> StoreView {
        StoreView {
            id,
            status,
            labels: [("zone".to_string(), zone.to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn voter(id: u64, store_id: u64) -> metapb::Peer {
        metapb::Peer {
            id,
            store_id,
            role: metapb::PeerRole::Voter as i32,
        }
    }

    /// Regions `1..=n`, each with voters on `stores`, led by the first.
    fn regions(n: u64, stores: &[u64]) -> Vec<RegionEntry> {
        (1..=n)
            .map(|id| {
                let peers: Vec<metapb::Peer> = stores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| voter(id * 100 + i as u64, *s))
                    .collect();
                RegionEntry {
                    leader: peers.first().cloned(),
                    region: metapb::Region {
                        id,
                        start_key: format!("k{id:04}").into_bytes(),
                        end_key: format!("k{:04}", id + 1).into_bytes(),
                        region_epoch: Some(metapb::RegionEpoch {
                            conf_ver: 1,
                            version: 1,
                        }),
                        peers,
                    },
                    stats: RegionStats::default(),
                }
            })
            .collect()
    }

    /// Plays an operator to its end the way stores would.
    fn apply(op: &Operator, entry: &mut RegionEntry) {
        for step in &op.steps {
            let region = &mut entry.region;
            match step {
                OpStep::AddLearner { store_id, peer_id } => region.peers.push(metapb::Peer {
                    id: *peer_id,
                    store_id: *store_id,
                    role: metapb::PeerRole::Learner as i32,
                }),
                OpStep::PromoteLearner { peer_id, .. } => {
                    for p in region.peers.iter_mut().filter(|p| p.id == *peer_id) {
                        p.set_role(metapb::PeerRole::Voter);
                    }
                }
                OpStep::RemovePeer { store_id } => {
                    assert_ne!(
                        entry.leader.as_ref().map(|l| l.store_id),
                        Some(*store_id),
                        "leader removed without a transfer first"
                    );
                    region.peers.retain(|p| p.store_id != *store_id)
                }
                OpStep::TransferLeader { store_id } => {
                    entry.leader = region
                        .peers
                        .iter()
                        .find(|p| p.store_id == *store_id)
                        .cloned();
                    assert!(entry.leader.is_some());
                }
                OpStep::Split { .. } => unreachable!("schedulers do not split"),
            }
            if let Some(epoch) = region.region_epoch.as_mut() {
                epoch.conf_ver += 1;
            }
        }
    }

    fn counter() -> impl FnMut() -> Option<u64> {
        let mut next = 10_000;
        move || {
            next += 1;
            Some(next)
        }
    }

    fn count_on(snapshot: &Snapshot, store_id: u64) -> usize {
        snapshot
            .regions
            .iter()
            .filter(|e| e.region.peers.iter().any(|p| p.store_id == store_id))
            .count()
    }

    /// Runs rounds (applying each round's operators) until one schedules
    /// nothing; returns the number of operators per round.
    fn run_to_quiet(config: &ScheduleConfig, snapshot: &mut Snapshot) -> Vec<Vec<Operator>> {
        let mut ids = counter();
        let mut rounds = Vec::new();
        for _ in 0..100 {
            let ops = schedule(config, snapshot, &mut ids);
            if ops.is_empty() {
                return rounds;
            }
            for op in &ops {
                let entry = snapshot
                    .regions
                    .iter_mut()
                    .find(|e| e.region.id == op.region_id)
                    .unwrap();
                apply(op, entry);
            }
            rounds.push(ops);
        }
        panic!("scheduling never settles");
    }

    fn ops_touching(ops: &[Operator], store_id: u64) -> usize {
        ops.iter()
            .filter(|op| op.stores().contains(&store_id))
            .count()
    }

    #[test]
    fn balance_region_fills_an_empty_store_within_limits_and_stops() {
        let config = ScheduleConfig {
            balance_leader: false,
            ..ScheduleConfig::default()
        };
        let mut snapshot = Snapshot {
            stores: (1..=4)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: regions(12, &[1, 2, 3]),
            operators: vec![],
        };
        let rounds = run_to_quiet(&config, &mut snapshot);
        assert!(!rounds.is_empty());
        for ops in &rounds {
            for store_id in 1..=4 {
                assert!(
                    ops_touching(ops, store_id) <= config.region_limit,
                    "limit broken"
                );
            }
            for op in ops {
                assert_eq!(op.desc, "balance-region");
                assert!(
                    op.steps.contains(&OpStep::RemovePeer { store_id: 1 })
                        || op.steps.contains(&OpStep::RemovePeer { store_id: 2 })
                        || op.steps.contains(&OpStep::RemovePeer { store_id: 3 })
                );
                assert!(matches!(
                    op.steps[0],
                    OpStep::AddLearner { store_id: 4, .. }
                ));
            }
        }
        // 36 replicas over 4 stores: 9 each.
        for store_id in 1..=4 {
            assert_eq!(count_on(&snapshot, store_id), 9, "store {store_id}");
        }
        for entry in &snapshot.regions {
            assert_eq!(entry.region.peers.len(), 3);
        }
    }

    #[test]
    fn running_operators_count_against_the_limits() {
        let config = ScheduleConfig {
            balance_leader: false,
            region_limit: 2,
            ..ScheduleConfig::default()
        };
        let mut snapshot = Snapshot {
            stores: (1..=4)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: regions(12, &[1, 2, 3]),
            operators: vec![],
        };
        let mut ids = counter();
        let first = schedule(&config, &snapshot, &mut ids);
        assert_eq!(first.len(), 2);
        snapshot.operators = first;
        assert!(schedule(&config, &snapshot, &mut ids).is_empty());
    }

    #[test]
    fn replicas_on_a_down_store_are_recreated_elsewhere() {
        let config = ScheduleConfig {
            balance_region: false,
            balance_leader: false,
            ..ScheduleConfig::default()
        };
        let mut snapshot = Snapshot {
            stores: vec![
                store(1, StoreStatus::Up, "a"),
                store(2, StoreStatus::Up, "b"),
                store(3, StoreStatus::Down, "c"),
                store(4, StoreStatus::Up, "d"),
            ],
            regions: regions(6, &[3, 1, 2]),
            operators: vec![],
        };
        let rounds = run_to_quiet(&config, &mut snapshot);
        assert!(rounds
            .iter()
            .flatten()
            .all(|op| op.desc == "replace-bad-replica"));
        for entry in &snapshot.regions {
            let mut stores: Vec<u64> = entry.region.peers.iter().map(|p| p.store_id).collect();
            stores.sort();
            assert_eq!(stores, vec![1, 2, 4]);
            assert_ne!(entry.leader.as_ref().unwrap().store_id, 3);
        }
    }

    #[test]
    fn long_down_peer_reported_by_leader_is_replaced() {
        let config = ScheduleConfig {
            balance_region: false,
            balance_leader: false,
            max_store_down_time: Duration::from_secs(60),
            ..ScheduleConfig::default()
        };
        let mut entries = regions(2, &[1, 2, 3]);
        entries[0].stats.down_peers = vec![concord_proto::pdpb::PeerStats {
            peer: Some(entries[0].region.peers[2]),
            down_seconds: 61,
        }];
        entries[1].stats.down_peers = vec![concord_proto::pdpb::PeerStats {
            peer: Some(entries[1].region.peers[2]),
            down_seconds: 59,
        }];
        let snapshot = Snapshot {
            stores: (1..=4)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: entries,
            operators: vec![],
        };
        let ops = schedule(&config, &snapshot, &mut counter());
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].region_id, 1);
        assert!(ops[0].steps.contains(&OpStep::RemovePeer { store_id: 3 }));
    }

    #[test]
    fn missing_and_extra_replicas_are_fixed() {
        let config = ScheduleConfig {
            balance_region: false,
            balance_leader: false,
            ..ScheduleConfig::default()
        };
        let mut entries = regions(1, &[1]);
        entries.extend(regions(2, &[1, 2, 3, 4]).into_iter().skip(1));
        let mut snapshot = Snapshot {
            stores: (1..=4)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: entries,
            operators: vec![],
        };
        run_to_quiet(&config, &mut snapshot);
        for entry in &snapshot.regions {
            assert_eq!(entry.region.peers.len(), 3, "region {}", entry.region.id);
        }
    }

    #[test]
    fn a_learner_left_without_an_operator_is_promoted_or_removed() {
        let config = ScheduleConfig {
            balance_region: false,
            balance_leader: false,
            ..ScheduleConfig::default()
        };
        // Region 1 lost a voter to an Offline store while a learner was
        // being added; region 2 has all its voters and a stray learner.
        let mut entries = regions(1, &[1, 2, 3]);
        entries.extend(regions(2, &[1, 2, 4]).into_iter().skip(1));
        for (entry, (peer_id, store_id)) in entries.iter_mut().zip([(900, 4), (901, 5)]) {
            entry.region.peers.push(metapb::Peer {
                id: peer_id,
                store_id,
                role: metapb::PeerRole::Learner as i32,
            });
        }
        let mut stores: Vec<StoreView> = (1..=5)
            .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
            .collect();
        stores[2].status = StoreStatus::Offline;
        let mut snapshot = Snapshot {
            stores,
            regions: entries,
            operators: vec![],
        };
        let ops = schedule(&config, &snapshot, &mut counter());
        let steps: HashMap<u64, Vec<OpStep>> =
            ops.iter().map(|o| (o.region_id, o.steps.clone())).collect();
        assert_eq!(
            steps[&1],
            vec![OpStep::PromoteLearner {
                store_id: 4,
                peer_id: 900
            }]
        );
        assert_eq!(steps[&2], vec![OpStep::RemovePeer { store_id: 5 }]);

        // Played out, every region ends with three voters off the Offline store.
        run_to_quiet(&config, &mut snapshot);
        for entry in &snapshot.regions {
            let stores: BTreeSet<u64> = peer_store_ids(&entry.region).into_iter().collect();
            assert_eq!(
                stores,
                BTreeSet::from([1, 2, 4]),
                "region {}",
                entry.region.id
            );
            assert!(entry
                .region
                .peers
                .iter()
                .all(|p| p.role() == metapb::PeerRole::Voter));
        }
    }

    #[test]
    fn three_zones_never_hold_two_replicas_of_a_region() {
        let config = ScheduleConfig {
            location_labels: vec!["zone".into()],
            ..ScheduleConfig::default()
        };
        let stores = vec![
            store(1, StoreStatus::Up, "z1"),
            store(2, StoreStatus::Up, "z1"),
            store(3, StoreStatus::Up, "z2"),
            store(4, StoreStatus::Up, "z2"),
            store(5, StoreStatus::Up, "z3"),
            store(6, StoreStatus::Up, "z3"),
        ];
        let zone = |s: u64| s.div_ceil(2);
        // Every region starts on store 1 only; replicas are added, then
        // balance-region spreads them.
        let mut snapshot = Snapshot {
            stores,
            regions: regions(10, &[1]),
            operators: vec![],
        };
        run_to_quiet(&config, &mut snapshot);
        for entry in &snapshot.regions {
            let mut zones: Vec<u64> = entry
                .region
                .peers
                .iter()
                .map(|p| zone(p.store_id))
                .collect();
            zones.sort();
            assert_eq!(zones, vec![1, 2, 3], "region {}", entry.region.id);
        }
        // Balanced as far as isolation allows: 10 replicas per zone.
        let counts: Vec<usize> = (1..=6).map(|s| count_on(&snapshot, s)).collect();
        assert!(counts.iter().all(|c| (4..=6).contains(c)), "{counts:?}");
    }

    #[test]
    fn evict_leader_empties_a_store_of_leaders() {
        let config = ScheduleConfig {
            balance_region: false,
            evict_leader_stores: [1].into_iter().collect(),
            leader_limit: 2,
            ..ScheduleConfig::default()
        };
        let mut snapshot = Snapshot {
            stores: (1..=3)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: regions(6, &[1, 2, 3]),
            operators: vec![],
        };
        let rounds = run_to_quiet(&config, &mut snapshot);
        assert!(
            rounds.len() > 1,
            "the leader limit spreads the work over rounds"
        );
        assert!(snapshot
            .regions
            .iter()
            .all(|e| e.leader.as_ref().unwrap().store_id != 1));
        assert_eq!(
            config.scheduler_names(),
            vec![
                "balance-leader".to_string(),
                "hot-region".to_string(),
                "evict-leader-1".to_string()
            ]
        );
    }

    #[test]
    fn per_store_limit_overrides_the_default() {
        let config = ScheduleConfig {
            balance_leader: false,
            store_limits: [(4, 1)].into_iter().collect(),
            ..ScheduleConfig::default()
        };
        let snapshot = Snapshot {
            stores: (1..=4)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: regions(12, &[1, 2, 3]),
            operators: vec![],
        };
        assert_eq!(schedule(&config, &snapshot, &mut counter()).len(), 1);
    }

    #[test]
    fn hot_region_spreads_hot_leaders_and_leaves_cold_ones() {
        let config = ScheduleConfig {
            balance_region: false,
            balance_leader: false,
            ..ScheduleConfig::default()
        };
        let mut entries = regions(6, &[1, 2, 3]);
        for (i, entry) in entries.iter_mut().take(3).enumerate() {
            entry.stats.bytes_written = (30 - i as u64) * 1024 * 1024;
            entry.stats.interval_secs = 10;
        }
        let mut snapshot = Snapshot {
            stores: (1..=3)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: entries,
            operators: vec![],
        };
        let rounds = run_to_quiet(&config, &mut snapshot);
        assert!(rounds
            .iter()
            .all(|ops| ops.len() == 1 && ops[0].desc == "hot-region"));
        let mut hot_leaders: Vec<u64> = snapshot.regions[..3]
            .iter()
            .map(|e| e.leader.as_ref().unwrap().store_id)
            .collect();
        hot_leaders.sort();
        assert_eq!(hot_leaders, vec![1, 2, 3]);
        assert!(snapshot.regions[3..]
            .iter()
            .all(|e| e.leader.as_ref().unwrap().store_id == 1));
    }

    #[test]
    fn balance_leader_spreads_leadership() {
        let config = ScheduleConfig {
            balance_region: false,
            ..ScheduleConfig::default()
        };
        let mut snapshot = Snapshot {
            stores: (1..=3)
                .map(|id| store(id, StoreStatus::Up, &format!("z{id}")))
                .collect(),
            regions: regions(9, &[1, 2, 3]),
            operators: vec![],
        };
        let rounds = run_to_quiet(&config, &mut snapshot);
        for ops in &rounds {
            assert!(ops.iter().all(|op| op.kind == OpKind::Leader));
            for store_id in 1..=3 {
                assert!(ops_touching(ops, store_id) <= config.leader_limit);
            }
        }
        for store_id in 1..=3 {
            let leaders = snapshot
                .regions
                .iter()
                .filter(|e| e.leader.as_ref().unwrap().store_id == store_id)
                .count();
            assert_eq!(leaders, 3, "store {store_id}");
        }
    }
}
