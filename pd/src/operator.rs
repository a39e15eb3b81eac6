//! Operators: a sequence of steps that change one region (add a learner,
//! promote it, remove a peer, transfer leadership, split). PD sends the
//! current step to the region leader in a heartbeat response, and advances
//! when a later heartbeat shows the step done. An operator that does not
//! finish within its timeout is dropped.

use std::time::{Duration, Instant};

use concord_proto::{metapb, pdpb};

use crate::region_tree::RegionEntry;

/// One step of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpStep {
    /// Add `peer_id` on `store_id` as a learner.
    AddLearner {
        /// Target store.
        store_id: u64,
        /// Id of the new peer.
        peer_id: u64,
    },
    /// Turn the learner `peer_id` on `store_id` into a voter.
    PromoteLearner {
        /// Store of the learner.
        store_id: u64,
        /// The learner's peer id.
        peer_id: u64,
    },
    /// Remove the region's peer on `store_id`.
    RemovePeer {
        /// Store whose peer goes.
        store_id: u64,
    },
    /// Move leadership to the peer on `store_id`.
    TransferLeader {
        /// Store of the new leader.
        store_id: u64,
    },
    /// Split the region at `keys` (empty: the store picks the middle).
    Split {
        /// Split keys.
        keys: Vec<Vec<u8>>,
    },
}

fn peer_on(region: &metapb::Region, store_id: u64) -> Option<&metapb::Peer> {
    region.peers.iter().find(|p| p.store_id == store_id)
}

fn version(region: &metapb::Region) -> u64 {
    region.region_epoch.map_or(0, |e| e.version)
}

fn conf_ver(region: &metapb::Region) -> u64 {
    region.region_epoch.map_or(0, |e| e.conf_ver)
}

impl OpStep {
    /// Whether the region as reported shows this step done. `start_version`
    /// is the region's version when the operator was created.
    fn is_done(&self, entry: &RegionEntry, start_version: u64) -> bool {
        let region = &entry.region;
        match self {
            OpStep::AddLearner { store_id, peer_id } => {
                peer_on(region, *store_id).is_some_and(|p| p.id == *peer_id)
            }
            OpStep::PromoteLearner { store_id, peer_id } => peer_on(region, *store_id)
                .is_some_and(|p| p.id == *peer_id && p.role() == metapb::PeerRole::Voter),
            OpStep::RemovePeer { store_id } => peer_on(region, *store_id).is_none(),
            OpStep::TransferLeader { store_id } => entry
                .leader
                .as_ref()
                .is_some_and(|l| l.store_id == *store_id),
            OpStep::Split { .. } => version(region) > start_version,
        }
    }

    /// Whether this step is a membership change (bumps the conf_ver).
    fn is_conf_change(&self) -> bool {
        matches!(
            self,
            OpStep::AddLearner { .. } | OpStep::PromoteLearner { .. } | OpStep::RemovePeer { .. }
        )
    }

    /// The stores this step adds load to (for per-store limits).
    pub fn stores(&self) -> Vec<u64> {
        match self {
            OpStep::AddLearner { store_id, .. }
            | OpStep::PromoteLearner { store_id, .. }
            | OpStep::RemovePeer { store_id }
            | OpStep::TransferLeader { store_id } => vec![*store_id],
            OpStep::Split { .. } => vec![],
        }
    }

    /// The heartbeat response that asks the leader to perform this step.
    fn to_response(&self, entry: &RegionEntry) -> pdpb::RegionHeartbeatResponse {
        let region = &entry.region;
        let mut resp = pdpb::RegionHeartbeatResponse {
            region_id: region.id,
            region_epoch: region.region_epoch,
            target_peer: entry.leader,
            ..Default::default()
        };
        let change = |peer: metapb::Peer, kind: pdpb::ConfChangeType| pdpb::ChangePeer {
            peer: Some(peer),
            change_type: kind as i32,
        };
        match self {
            OpStep::AddLearner { store_id, peer_id } => {
                resp.change_peer = Some(change(
                    metapb::Peer {
                        id: *peer_id,
                        store_id: *store_id,
                        role: metapb::PeerRole::Learner as i32,
                    },
                    pdpb::ConfChangeType::AddLearnerNode,
                ));
            }
            OpStep::PromoteLearner { store_id, peer_id } => {
                resp.change_peer = Some(change(
                    metapb::Peer {
                        id: *peer_id,
                        store_id: *store_id,
                        role: metapb::PeerRole::Voter as i32,
                    },
                    pdpb::ConfChangeType::AddNode,
                ));
            }
            OpStep::RemovePeer { store_id } => {
                let peer = peer_on(region, *store_id).cloned().unwrap_or(metapb::Peer {
                    id: 0,
                    store_id: *store_id,
                    role: 0,
                });
                resp.change_peer = Some(change(peer, pdpb::ConfChangeType::RemoveNode));
            }
            OpStep::TransferLeader { store_id } => {
                resp.transfer_leader = Some(pdpb::TransferLeader {
                    peer: peer_on(region, *store_id).cloned(),
                });
            }
            OpStep::Split { keys } => {
                resp.split_region = Some(pdpb::SplitRegion { keys: keys.clone() });
            }
        }
        resp
    }
}

/// What an operator is for; schedulers limit each kind separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Moves only leadership.
    Leader,
    /// Moves replicas (data).
    Region,
    /// Requested by an administrator or a store (split, manual moves).
    Admin,
}

/// A running operator.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Human-readable purpose, e.g. "balance-region".
    pub desc: String,
    /// What the operator moves.
    pub kind: OpKind,
    /// The region it changes.
    pub region_id: u64,
    /// The region's version when created: a split step is done once the
    /// version has grown past it.
    pub start_version: u64,
    /// The region's conf_ver when created: a membership change the
    /// operator did not make itself cancels it.
    pub start_conf_ver: u64,
    /// The steps in order.
    pub steps: Vec<OpStep>,
    /// Index of the step in progress.
    pub current: usize,
    /// Creation time.
    pub created: Instant,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Where an operator stands after a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum OpProgress {
    /// Send this step to the leader.
    Running(Box<pdpb::RegionHeartbeatResponse>),
    /// Every step is done.
    Finished,
    /// The timeout passed first.
    TimedOut,
    /// The region's membership changed under the operator. A split does
    /// not cancel it: the region keeps its id and peers, only its range
    /// shrinks, so moving its replicas still makes sense.
    Cancelled,
}

impl Operator {
    /// A new operator for `region` (as PD knows it now).
    pub fn new(
        desc: impl Into<String>,
        kind: OpKind,
        region: &metapb::Region,
        steps: Vec<OpStep>,
        timeout: Duration,
    ) -> Self {
        Operator {
            desc: desc.into(),
            kind,
            region_id: region.id,
            start_version: version(region),
            start_conf_ver: conf_ver(region),
            steps,
            current: 0,
            created: Instant::now(),
            timeout,
        }
    }

    /// Advances past the steps `entry` shows done and says what to do next.
    pub fn check(&mut self, entry: &RegionEntry, now: Instant) -> OpProgress {
        while let Some(step) = self.steps.get(self.current) {
            if !step.is_done(entry, self.start_version) {
                break;
            }
            self.current += 1;
        }
        let Some(step) = self.steps.get(self.current) else {
            return OpProgress::Finished;
        };
        if now.duration_since(self.created) > self.timeout {
            return OpProgress::TimedOut;
        }
        let own_changes = self.steps[..self.current]
            .iter()
            .filter(|s| s.is_conf_change())
            .count() as u64;
        if conf_ver(&entry.region) > self.start_conf_ver + own_changes {
            return OpProgress::Cancelled;
        }
        OpProgress::Running(Box::new(step.to_response(entry)))
    }

    /// Stores the remaining steps touch.
    pub fn stores(&self) -> Vec<u64> {
        let mut stores: Vec<u64> = self.steps[self.current.min(self.steps.len())..]
            .iter()
            .flat_map(OpStep::stores)
            .collect();
        stores.sort_unstable();
        stores.dedup();
        stores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_tree::RegionStats;

    fn peer(id: u64, store_id: u64, role: metapb::PeerRole) -> metapb::Peer {
        metapb::Peer {
            id,
            store_id,
            role: role as i32,
        }
    }

    /// A region with id 9 as its leader on `leader_store` reports it, with
    /// its epoch as `(conf_ver, version)`.
    fn entry(peers: Vec<metapb::Peer>, leader_store: u64, epoch: (u64, u64)) -> RegionEntry {
        let leader = peers.iter().find(|p| p.store_id == leader_store).cloned();
        RegionEntry {
            region: metapb::Region {
                id: 9,
                start_key: vec![],
                end_key: vec![],
                region_epoch: Some(metapb::RegionEpoch {
                    conf_ver: epoch.0,
                    version: epoch.1,
                }),
                peers,
            },
            leader,
            stats: RegionStats::default(),
        }
    }

    /// The two steps that add peer `peer_id` on `store_id` as a voter.
    fn add_voter(store_id: u64, peer_id: u64) -> [OpStep; 2] {
        [
            OpStep::AddLearner { store_id, peer_id },
            OpStep::PromoteLearner { store_id, peer_id },
        ]
    }

    #[test]
    fn move_peer_walks_through_its_steps() {
        use metapb::PeerRole::{Learner, Voter};
        let start = entry(vec![peer(1, 1, Voter), peer(2, 2, Voter)], 1, (2, 1));
        let mut op = Operator::new(
            "move",
            OpKind::Region,
            &start.region,
            [
                add_voter(3, 7).as_slice(),
                &[
                    OpStep::TransferLeader { store_id: 2 },
                    OpStep::RemovePeer { store_id: 1 },
                ],
            ]
            .concat(),
            Duration::from_secs(60),
        );
        let now = Instant::now();
        let OpProgress::Running(step) = op.check(&start, now) else {
            panic!("expected a step")
        };
        let change = step.change_peer.unwrap();
        assert_eq!(change.change_type(), pdpb::ConfChangeType::AddLearnerNode);
        assert_eq!(change.peer.unwrap().store_id, 3);
        assert_eq!(step.target_peer.unwrap().store_id, 1);

        // The region splits while the learner catches up: the move goes on.
        let learner = entry(
            vec![peer(1, 1, Voter), peer(2, 2, Voter), peer(7, 3, Learner)],
            1,
            (3, 2),
        );
        let OpProgress::Running(step) = op.check(&learner, now) else {
            panic!("expected a step")
        };
        assert_eq!(
            step.change_peer.unwrap().change_type(),
            pdpb::ConfChangeType::AddNode
        );

        let voters = entry(
            vec![peer(1, 1, Voter), peer(2, 2, Voter), peer(7, 3, Voter)],
            1,
            (4, 2),
        );
        let OpProgress::Running(step) = op.check(&voters, now) else {
            panic!("expected a step")
        };
        assert_eq!(step.transfer_leader.unwrap().peer.unwrap().id, 2);
        assert_eq!(op.stores(), vec![1, 2]);

        let moved = entry(
            vec![peer(1, 1, Voter), peer(2, 2, Voter), peer(7, 3, Voter)],
            2,
            (4, 2),
        );
        let OpProgress::Running(step) = op.check(&moved, now) else {
            panic!("expected a step")
        };
        let change = step.change_peer.unwrap();
        assert_eq!(change.change_type(), pdpb::ConfChangeType::RemoveNode);
        assert_eq!(change.peer.unwrap().id, 1);

        let done = entry(vec![peer(2, 2, Voter), peer(7, 3, Voter)], 2, (5, 2));
        assert_eq!(op.check(&done, now), OpProgress::Finished);
    }

    #[test]
    fn a_membership_change_by_someone_else_cancels_the_operator() {
        use metapb::PeerRole::{Learner, Voter};
        let start = entry(vec![peer(1, 1, Voter), peer(2, 2, Voter)], 1, (2, 1));
        let mut op = Operator::new(
            "add",
            OpKind::Region,
            &start.region,
            add_voter(3, 7).to_vec(),
            Duration::from_secs(60),
        );
        // Someone else put a different peer on store 3: step one can never
        // be done, and the operator must not wait for its timeout.
        let other = entry(
            vec![peer(1, 1, Voter), peer(2, 2, Voter), peer(8, 3, Learner)],
            1,
            (3, 1),
        );
        assert_eq!(op.check(&other, op.created), OpProgress::Cancelled);
    }

    #[test]
    fn timeout_and_split_under_operator() {
        use metapb::PeerRole::Voter;
        let start = entry(vec![peer(1, 1, Voter), peer(2, 2, Voter)], 1, (2, 1));
        let mut op = Operator::new(
            "leader",
            OpKind::Leader,
            &start.region,
            vec![OpStep::TransferLeader { store_id: 2 }],
            Duration::from_secs(10),
        );
        let later = op.created + Duration::from_secs(11);
        assert_eq!(op.check(&start, later), OpProgress::TimedOut);
        let split = entry(vec![peer(1, 1, Voter), peer(2, 2, Voter)], 1, (2, 2));
        assert!(matches!(
            op.check(&split, op.created),
            OpProgress::Running(_)
        ));

        let mut split_op = Operator::new(
            "split",
            OpKind::Admin,
            &start.region,
            vec![OpStep::Split {
                keys: vec![b"k".to_vec()],
            }],
            Duration::from_secs(10),
        );
        let OpProgress::Running(step) = split_op.check(&start, split_op.created) else {
            panic!("expected a step")
        };
        assert_eq!(step.split_region.unwrap().keys, vec![b"k".to_vec()]);
        assert_eq!(
            split_op.check(&split, split_op.created),
            OpProgress::Finished
        );
    }
}
