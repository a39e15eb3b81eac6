//! Scheduling driven end to end through region heartbeats: operators are
//! created by scheduling rounds, handed out in heartbeat responses, advanced
//! by the regions the (simulated) stores report, and stores drain from Up to
//! Offline to Tombstone.

mod common;

use common::{peer, region, store};
use concord_pd::cluster::{AdminOp, Cluster};
use concord_pd::config::PdConfig;
use concord_proto::{metapb, pdpb};

fn open(dir: &std::path::Path) -> Cluster {
    Cluster::open(&PdConfig {
        data_dir: dir.to_path_buf(),
        ..PdConfig::default()
    })
    .unwrap()
}

fn heartbeat(entry: &(metapb::Region, metapb::Peer)) -> pdpb::RegionHeartbeatRequest {
    pdpb::RegionHeartbeatRequest {
        region: Some(entry.0.clone()),
        leader: Some(entry.1),
        ..Default::default()
    }
}

/// Does what a region leader does with a heartbeat response.
fn perform(step: &pdpb::RegionHeartbeatResponse, state: &mut (metapb::Region, metapb::Peer)) {
    let (region, leader) = state;
    let epoch = region.region_epoch.as_mut().unwrap();
    if let Some(change) = &step.change_peer {
        let target = change.peer.unwrap();
        match change.change_type() {
            pdpb::ConfChangeType::AddLearnerNode => region.peers.push(target),
            pdpb::ConfChangeType::AddNode => {
                for p in region.peers.iter_mut().filter(|p| p.id == target.id) {
                    p.set_role(metapb::PeerRole::Voter);
                }
            }
            pdpb::ConfChangeType::RemoveNode => {
                assert_ne!(target.id, leader.id, "PD asked the leader to remove itself");
                region.peers.retain(|p| p.id != target.id);
            }
        }
        epoch.conf_ver += 1;
    }
    if let Some(transfer) = &step.transfer_leader {
        *leader = transfer.peer.unwrap();
    }
}

/// Heartbeats until PD has nothing more to ask; returns the steps taken.
fn drive(cluster: &Cluster, state: &mut (metapb::Region, metapb::Peer)) -> usize {
    for taken in 0..20 {
        match cluster
            .region_heartbeat_with_operator(&heartbeat(state))
            .unwrap()
        {
            Some(step) => {
                assert_eq!(step.region_id, state.0.id);
                assert_eq!(step.target_peer, Some(state.1));
                perform(&step, state);
            }
            None => return taken,
        }
    }
    panic!("operator never finished");
}

fn stores_of(region: &metapb::Region) -> Vec<u64> {
    let mut stores: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
    stores.sort();
    stores
}

#[test]
fn offline_store_is_drained_then_becomes_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = open(dir.path());
    cluster
        .bootstrap(store(1), region(10, b"", b"", 1, 1, vec![peer(11, 1)]))
        .unwrap();
    for id in 2..=4 {
        cluster.put_store(store(id)).unwrap();
    }
    let mut state = (
        region(
            10,
            b"",
            b"",
            1,
            3,
            vec![peer(11, 1), peer(12, 2), peer(13, 3)],
        ),
        peer(13, 3),
    );
    // Balance would also move replicas to the empty store 4; keep this test
    // about draining.
    cluster
        .update_schedule_config(|c| {
            c.balance_region = false;
            c.balance_leader = false;
        })
        .unwrap();
    assert_eq!(drive(&cluster, &mut state), 0);
    assert!(
        cluster.schedule_once().unwrap().is_empty(),
        "healthy: nothing to do"
    );

    assert_eq!(
        cluster.delete_store(3).unwrap(),
        metapb::StoreState::Offline
    );
    let ops = cluster.schedule_once().unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].desc, "replace-bad-replica");
    let steps = drive(&cluster, &mut state);
    assert_eq!(steps, 4, "add learner, promote, transfer leader, remove");
    assert_eq!(stores_of(&state.0), vec![1, 2, 4]);
    assert_ne!(state.1.store_id, 3);
    assert!(cluster.operators().is_empty());

    assert!(cluster.schedule_once().unwrap().is_empty());
    assert_eq!(
        cluster.get_store(3).unwrap().meta.state(),
        metapb::StoreState::Tombstone
    );
    assert!(cluster.put_store(store(3)).is_err());
}

#[test]
fn balance_region_moves_replicas_to_a_new_store_through_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = open(dir.path());
    cluster
        .bootstrap(store(1), region(100, b"", b"", 1, 1, vec![peer(101, 1)]))
        .unwrap();
    for id in 2..=4 {
        cluster.put_store(store(id)).unwrap();
    }
    cluster
        .update_schedule_config(|c| c.balance_leader = false)
        .unwrap();
    // Four regions, each on stores 1-3.
    let mut states: Vec<(metapb::Region, metapb::Peer)> = (0..4u64)
        .map(|i| {
            let id = 100 + i * 10;
            let start = if i == 0 { vec![] } else { vec![b'a' + i as u8] };
            let end = if i == 3 { vec![] } else { vec![b'b' + i as u8] };
            let r = region(
                id,
                &start,
                &end,
                2,
                3,
                vec![peer(id + 1, 1), peer(id + 2, 2), peer(id + 3, 3)],
            );
            (r, peer(id + 1, 1))
        })
        .collect();
    cluster
        .report_batch_split(&states.iter().map(|s| s.0.clone()).collect::<Vec<_>>())
        .unwrap();
    for state in &mut states {
        drive(&cluster, state);
    }
    for _round in 0..10 {
        if cluster.schedule_once().unwrap().is_empty() {
            break;
        }
        for state in &mut states {
            drive(&cluster, state);
        }
    }
    let on = |store_id: u64| {
        states
            .iter()
            .filter(|s| stores_of(&s.0).contains(&store_id))
            .count()
    };
    assert_eq!(on(4), 3, "12 replicas over 4 stores");
    for id in 1..=3 {
        assert_eq!(on(id), 3);
    }
}

#[test]
fn admin_operators_are_validated_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = open(dir.path());
    cluster
        .bootstrap(store(1), region(10, b"", b"", 1, 1, vec![peer(11, 1)]))
        .unwrap();
    cluster.put_store(store(2)).unwrap();
    let mut state = (region(10, b"", b"", 1, 1, vec![peer(11, 1)]), peer(11, 1));
    assert!(cluster
        .admin_operator(AdminOp::TransferLeader {
            region_id: 10,
            store_id: 2
        })
        .is_err());
    assert!(cluster
        .admin_operator(AdminOp::AddPeer {
            region_id: 99,
            store_id: 2
        })
        .is_err());
    assert!(cluster
        .admin_operator(AdminOp::RemovePeer {
            region_id: 10,
            store_id: 1
        })
        .is_err());
    cluster
        .admin_operator(AdminOp::AddPeer {
            region_id: 10,
            store_id: 2,
        })
        .unwrap();
    assert!(
        cluster
            .admin_operator(AdminOp::AddPeer {
                region_id: 10,
                store_id: 2
            })
            .is_err(),
        "one operator per region"
    );
    assert_eq!(drive(&cluster, &mut state), 2);
    cluster
        .admin_operator(AdminOp::TransferRegion {
            region_id: 10,
            store_ids: vec![2],
        })
        .unwrap();
    assert_eq!(drive(&cluster, &mut state), 2, "transfer leader, remove");
    assert_eq!(stores_of(&state.0), vec![2]);
    let at_start = cluster.admin_operator(AdminOp::Split {
        region_id: 10,
        keys: vec![b"m".to_vec(), Vec::new()],
    });
    assert!(
        matches!(&at_start, Err(e) if e.to_string().contains("not inside region 10")),
        "a split at the region's start key is refused: {at_start:?}"
    );
    cluster
        .admin_operator(AdminOp::Split {
            region_id: 10,
            keys: vec![b"m".to_vec()],
        })
        .unwrap();
    let step = cluster
        .region_heartbeat_with_operator(&heartbeat(&state))
        .unwrap()
        .unwrap();
    assert_eq!(step.split_region.unwrap().keys, vec![b"m".to_vec()]);
    assert!(cluster.remove_operator(10).is_some());
    assert!(cluster
        .region_heartbeat_with_operator(&heartbeat(&state))
        .unwrap()
        .is_none());
}
