//! Raftstore tests on the in-process cluster.

mod common;

use std::time::Duration;

use common::{test_config, wait_for, Cluster, Filter, FIRST_REGION};
use concord_proto::errorpb::error::Kind;
use concord_proto::metapb;
use concord_proto::raft_cmdpb::{
    admin_request, AdminRequest, ChangePeerRequest, ChangePeerV2Request, ConfChangeType,
    RaftCmdRequest, RaftRequestHeader,
};
use concord_proto::raft_serverpb::{PeerState, RaftApplyState, RaftLocalState, RegionLocalState};
use concord_store::engine::{Reader, CF_DEFAULT, CF_RAFT};
use concord_store::keys;
use concord_store::raftstore::context::PdTask;
use concord_store::raftstore::msg::PeerMsg;
use concord_store::raftstore::storage::RAFT_INIT_LOG_INDEX;
use concord_store::raftstore::{CmdError, RaftStoreConfig};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(20);

fn key(i: u32) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

fn change_peer(
    region: &metapb::Region,
    change_type: ConfChangeType,
    peer: metapb::Peer,
) -> RaftCmdRequest {
    RaftCmdRequest {
        header: Some(RaftRequestHeader {
            region_id: region.id,
            peer: None,
            region_epoch: region.region_epoch,
            proposal_id: 0,
        }),
        requests: vec![],
        admin_request: Some(AdminRequest {
            cmd: Some(admin_request::Cmd::ChangePeerV2(ChangePeerV2Request {
                changes: vec![ChangePeerRequest {
                    change_type: change_type as i32,
                    peer: Some(peer),
                }],
            })),
        }),
    }
}

/// Asks whoever leads the first region to hand leadership to `to` until it
/// has; false if it has not within `WAIT`.
fn move_leader(cluster: &Cluster, to: metapb::Peer) -> bool {
    wait_for(WAIT, || match cluster.leader_of(FIRST_REGION) {
        Some(current) if current == to.store_id => true,
        Some(current) => {
            cluster.send(current, FIRST_REGION, PeerMsg::TransferLeader(to));
            false
        }
        None => false,
    })
}

fn apply_state(cluster: &Cluster, store: u64, region_id: u64) -> Option<RaftApplyState> {
    let engine = &cluster.services(store).engine;
    let bytes = engine
        .get_cf(CF_RAFT, &keys::apply_state_key(region_id))
        .unwrap()?;
    Some(RaftApplyState::decode(bytes.as_slice()).unwrap())
}

#[test]
fn three_stores_elect_a_leader_and_replicate_writes() {
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    cluster.wait_leader(FIRST_REGION);
    for i in 0..50 {
        cluster.must_put(&key(i), &value(i));
    }
    for i in 0..50 {
        assert_eq!(cluster.must_get(&key(i)), Some(value(i)));
    }
    assert_eq!(cluster.must_get(b"missing"), None);
    // Every replica applies the same data.
    assert!(wait_for(WAIT, || {
        let sums: Vec<_> = (1..=3)
            .map(|s| cluster.api(s).region_checksum(FIRST_REGION).unwrap())
            .map(|c| (c.checksum, c.total_kvs))
            .collect();
        sums.iter().all(|s| *s == sums[0]) && sums[0].1 == 50
    }));
    cluster.shutdown();
}

#[test]
fn leader_isolation_loses_no_acknowledged_write_and_serves_no_stale_read() {
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let old = cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"k", b"before");
    let region = cluster.region_on(old, FIRST_REGION).unwrap();
    let old_ctx = cluster.context(old, &region);

    cluster.add_filter(Filter::Isolate(old));
    // A read sent to the isolated leader while it still believes it leads.
    let stale_read = {
        let api = cluster.api(old);
        let ctx = old_ctx;
        cluster
            .rt
            .spawn(async move { api.raw_get(&ctx, b"k").await })
    };
    assert!(wait_for(WAIT, || !cluster
        .services(old)
        .meta
        .lock()
        .leaders
        .contains(&FIRST_REGION)));
    cluster.must_put(b"k", b"after");
    for i in 0..20 {
        cluster.must_put(&key(i), &value(i));
    }
    let answer = cluster.rt.block_on(stale_read).unwrap();
    assert!(
        !matches!(&answer, Ok(Some(v)) if v == b"before"),
        "the isolated old leader served a stale read: {answer:?}"
    );
    assert!(
        answer.is_err(),
        "an isolated peer cannot confirm a read: {answer:?}"
    );
    let direct = cluster
        .rt
        .block_on(cluster.api(old).raw_get(&old_ctx, b"k"));
    assert!(
        matches!(&direct, Err(CmdError::Region(e)) if matches!(e.kind, Some(Kind::NotLeader(_)))),
        "{direct:?}"
    );

    cluster.clear_filters();
    assert_eq!(cluster.must_get(b"k"), Some(b"after".to_vec()));
    for i in 0..20 {
        assert_eq!(cluster.must_get(&key(i)), Some(value(i)));
    }
    // The old leader catches up with everything acknowledged while it was cut off.
    assert!(wait_for(WAIT, || {
        cluster
            .api(old)
            .region_checksum(FIRST_REGION)
            .unwrap()
            .total_kvs
            == 21
    }));
    cluster.shutdown();
}

#[test]
fn split_under_concurrent_writes_loses_nothing_and_old_epochs_are_refused() {
    let cfg = RaftStoreConfig {
        region_max_size: 8 << 10,
        region_max_keys: 100,
        split_check_diff: 2 << 10,
        ..test_config()
    };
    let cluster = Cluster::new(3, &[1, 2, 3], cfg);
    let leader = cluster.wait_leader(FIRST_REGION);
    let original = cluster.region_on(leader, FIRST_REGION).unwrap();
    const KEYS: u32 = 600;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..KEYS {
                cluster.must_put(&key(i), &[b'x'; 64]);
            }
        });
    });
    assert!(
        wait_for(WAIT, || cluster.pd.region_count() >= 3),
        "regions did not split: {}",
        cluster.pd.region_count()
    );
    for i in 0..KEYS {
        assert_eq!(cluster.must_get(&key(i)), Some(vec![b'x'; 64]), "key {i}");
    }
    // Every region serves writes and reads on its own.
    let regions: Vec<metapb::Region> = cluster
        .services(leader)
        .meta
        .lock()
        .regions()
        .cloned()
        .collect();
    assert!(regions.len() >= 3);
    for r in &regions {
        let probe = [r.start_key.as_slice(), b"\x00probe"].concat();
        cluster.must_put(&probe, b"p");
        assert_eq!(cluster.must_get(&probe), Some(b"p".to_vec()));
    }
    // A request with the pre-split epoch is refused with the current regions.
    let leader = cluster.wait_leader(FIRST_REGION);
    let ctx = cluster.context(leader, &original);
    let current = cluster.region_on(leader, FIRST_REGION).unwrap();
    let err = cluster
        .rt
        .block_on(cluster.api(leader).raw_get(&ctx, &current.start_key))
        .unwrap_err();
    match err {
        CmdError::Region(e) => match e.kind {
            Some(Kind::EpochNotMatch(m)) => {
                assert!(m.current_regions.len() >= 2, "{m:?}");
                assert!(m.current_regions.iter().any(|r| r.id == FIRST_REGION));
            }
            other => panic!("expected EpochNotMatch, got {other:?}"),
        },
        other => panic!("expected a region error, got {other:?}"),
    }
    cluster.shutdown();
}

#[test]
fn admin_split_at_given_keys_serves_both_halves() {
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"a", b"1");
    cluster.must_put(b"z", b"2");
    let regions = cluster
        .on_leader(FIRST_REGION, |api, ctx| async move {
            api.split_region(&ctx, vec![b"m".to_vec()]).await
        })
        .unwrap();
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[0].end_key, b"m".to_vec());
    assert_eq!(regions[1].start_key, b"m".to_vec());
    assert_eq!(cluster.must_get(b"a"), Some(b"1".to_vec()));
    assert_eq!(cluster.must_get(b"z"), Some(b"2".to_vec()));
    cluster.must_put(b"b", b"3");
    cluster.must_put(b"y", b"4");
    assert_eq!(cluster.must_get(b"b"), Some(b"3".to_vec()));
    // A bad split key is refused and changes nothing.
    let err = cluster.on_leader(FIRST_REGION, |api, ctx| async move {
        api.split_region(&ctx, vec![b"a".to_vec()]).await
    });
    assert!(err.is_err(), "{err:?}");
    cluster.shutdown();
}

#[test]
fn a_peer_added_after_log_compaction_catches_up_by_snapshot_and_leads() {
    let mut cluster = Cluster::new(3, &[1, 2], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    for i in 0..300 {
        cluster.must_put(&key(i), &value(i));
    }
    assert!(
        wait_for(WAIT, || apply_state(&cluster, leader, FIRST_REGION)
            .and_then(|s| s.truncated_state)
            .is_some_and(|t| t.index > RAFT_INIT_LOG_INDEX + 100)),
        "the log was not compacted"
    );
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let new_peer = metapb::Peer {
        id: 103,
        store_id: 3,
        role: 0,
    };
    cluster
        .on_leader(FIRST_REGION, |api, _| {
            let request = change_peer(&region, ConfChangeType::AddNode, new_peer);
            async move { api.command(request).await }
        })
        .unwrap();
    assert!(
        wait_for(WAIT, || cluster.region_on(3, FIRST_REGION).is_some()),
        "store 3 never received the region"
    );
    let state = apply_state(&cluster, 3, FIRST_REGION).unwrap();
    assert!(
        state.truncated_state.unwrap().index > RAFT_INIT_LOG_INDEX,
        "store 3 should start from a snapshot: {state:?}"
    );
    assert!(move_leader(&cluster, new_peer), "leadership did not move");
    let region = cluster.region_on(3, FIRST_REGION).unwrap();
    let ctx = cluster.context(3, &region);
    for i in (0..300).step_by(7) {
        let got = cluster
            .rt
            .block_on(cluster.api(3).raw_get(&ctx, &key(i)))
            .unwrap();
        assert_eq!(got, Some(value(i)));
    }
    cluster.must_put(b"after", b"transfer");
    assert_eq!(cluster.must_get(b"after"), Some(b"transfer".to_vec()));
    cluster.stop_store(1);
    assert_eq!(cluster.must_get(&key(299)), Some(value(299)));
    cluster.shutdown();
}

#[test]
fn a_removed_peer_is_destroyed_and_stays_gone_after_restart() {
    let mut cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    for i in 0..20 {
        cluster.must_put(&key(i), &value(i));
    }
    let victim = (1..=3).find(|s| *s != leader).unwrap();
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let peer = *region.peers.iter().find(|p| p.store_id == victim).unwrap();
    cluster
        .on_leader(FIRST_REGION, |api, _| {
            let request = change_peer(&region, ConfChangeType::RemoveNode, peer);
            async move { api.command(request).await }
        })
        .unwrap();
    assert!(wait_for(WAIT, || !cluster
        .services(victim)
        .router
        .contains(FIRST_REGION)));

    cluster.stop_store(victim);
    cluster.start_store(victim);
    let services = cluster.services(victim);
    assert!(
        !services.router.contains(FIRST_REGION),
        "the removed peer came back"
    );
    let state = services
        .engine
        .get_cf(CF_RAFT, &keys::region_state_key(FIRST_REGION))
        .unwrap()
        .unwrap();
    assert_eq!(
        RegionLocalState::decode(state.as_slice()).unwrap().state(),
        PeerState::Tombstone
    );
    let mut data_keys = 0;
    services
        .engine
        .scan_cf(
            CF_DEFAULT,
            &keys::data_key(b""),
            keys::DATA_MAX_KEY,
            false,
            |_, _| {
                data_keys += 1;
                true
            },
        )
        .unwrap();
    assert_eq!(data_keys, 0, "the removed peer's data was not deleted");

    // The group carries on undisturbed by the restarted store.
    let leader_before = cluster.wait_leader(FIRST_REGION);
    for i in 20..40 {
        cluster.must_put(&key(i), &value(i));
    }
    assert_eq!(cluster.must_get(&key(39)), Some(value(39)));
    assert_eq!(cluster.leader_of(FIRST_REGION), Some(leader_before));
    assert!(!cluster.services(victim).router.contains(FIRST_REGION));
    cluster.shutdown();
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let cluster = Cluster::new(1, &[1], test_config());
    cluster.wait_leader(FIRST_REGION);
    let region = cluster.region_on(1, FIRST_REGION).unwrap();
    let ctx = cluster.context(1, &region);
    let api = cluster.api(1);
    let big_key = vec![b'k'; 8 * 1024 + 1];
    let big_value = vec![b'v'; 8 * 1024 * 1024 + 1];
    let cases: Vec<(Result<(), CmdError>, &str)> = vec![
        (
            cluster.rt.block_on(api.raw_put(&ctx, b"", b"v", 0)),
            "empty",
        ),
        (
            cluster.rt.block_on(api.raw_put(&ctx, &big_key, b"v", 0)),
            "over the limit",
        ),
        (
            cluster.rt.block_on(api.raw_put(&ctx, b"k", &big_value, 0)),
            "over the limit",
        ),
        (
            cluster.rt.block_on(api.raw_delete_range(&ctx, b"z", b"a")),
            "after its end",
        ),
    ];
    for (result, message) in cases {
        match result {
            Err(CmdError::InvalidArgument(m)) => assert!(m.contains(message), "{m}"),
            other => panic!("expected InvalidArgument({message}), got {other:?}"),
        }
    }
    assert!(matches!(
        cluster.rt.block_on(api.raw_get(&ctx, b"")),
        Err(CmdError::InvalidArgument(_))
    ));
    assert_eq!(api.region_checksum(FIRST_REGION).unwrap().total_kvs, 0);
    // A good write still works afterwards (read back first: it may be
    // answered before it applies).
    let key = vec![b'k'; 8 * 1024];
    cluster
        .rt
        .block_on(api.raw_put(&ctx, &key, b"v", 0))
        .unwrap();
    assert_eq!(
        cluster.rt.block_on(api.raw_get(&ctx, &key)).unwrap(),
        Some(b"v".to_vec())
    );
    assert_eq!(api.region_checksum(FIRST_REGION).unwrap().total_kvs, 1);
    cluster.shutdown();
}

#[test]
fn joint_consensus_swaps_a_voter_and_leaves_the_joint_state() {
    let cluster = Cluster::new(4, &[1, 2, 3], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"before", b"joint");
    let demoted = (1..=3).find(|s| *s != leader).unwrap();
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let demoted_peer = *region.peers.iter().find(|p| p.store_id == demoted).unwrap();
    let added = metapb::Peer {
        id: 104,
        store_id: 4,
        role: 0,
    };
    let mut request = change_peer(&region, ConfChangeType::AddLearnerNode, demoted_peer);
    if let Some(admin_request::Cmd::ChangePeerV2(c)) =
        request.admin_request.as_mut().and_then(|a| a.cmd.as_mut())
    {
        c.changes.push(ChangePeerRequest {
            change_type: ConfChangeType::AddNode as i32,
            peer: Some(added),
        });
    }
    let applied = cluster
        .on_leader(FIRST_REGION, |api, _| {
            let request = request.clone();
            async move { api.command(request).await }
        })
        .unwrap();
    // Entering the joint state: the new voter is incoming, the old one demoting.
    let joint = &applied.regions[0];
    let role_of =
        |r: &metapb::Region, id: u64| r.peers.iter().find(|p| p.id == id).map(|p| p.role());
    assert_eq!(role_of(joint, 104), Some(metapb::PeerRole::IncomingVoter));
    assert_eq!(
        role_of(joint, demoted_peer.id),
        Some(metapb::PeerRole::DemotingVoter)
    );
    // Raft leaves the joint state by itself.
    assert!(wait_for(WAIT, || {
        let r = cluster.region_on(leader, FIRST_REGION).unwrap();
        role_of(&r, 104) == Some(metapb::PeerRole::Voter)
            && role_of(&r, demoted_peer.id) == Some(metapb::PeerRole::Learner)
    }));
    let left = cluster.region_on(leader, FIRST_REGION).unwrap();
    assert_eq!(
        left.region_epoch.unwrap().conf_ver,
        region.region_epoch.unwrap().conf_ver + 3
    );
    assert!(wait_for(WAIT, || cluster
        .region_on(4, FIRST_REGION)
        .is_some()));
    cluster.must_put(b"after", b"joint");
    assert_eq!(cluster.must_get(b"before"), Some(b"joint".to_vec()));
    // A voter cannot be removed in one joint step; a learner can be.
    let current = cluster.region_on(leader, FIRST_REGION).unwrap();
    let demoted_now = *current
        .peers
        .iter()
        .find(|p| p.id == demoted_peer.id)
        .unwrap();
    cluster
        .on_leader(FIRST_REGION, |api, _| {
            let request = change_peer(&current, ConfChangeType::RemoveNode, demoted_now);
            async move { api.command(request).await }
        })
        .unwrap();
    assert!(wait_for(WAIT, || !cluster
        .services(demoted)
        .router
        .contains(FIRST_REGION)));
    assert_eq!(cluster.must_get(b"after"), Some(b"joint".to_vec()));
    cluster.shutdown();
}

#[test]
fn a_stale_epoch_conf_change_is_refused() {
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let follower = *region.peers.iter().find(|p| p.store_id != leader).unwrap();
    let learner = metapb::Peer {
        id: 200,
        store_id: follower.store_id,
        role: 0,
    };
    let mut stale = region.clone();
    stale.region_epoch.as_mut().unwrap().conf_ver -= 1;
    let err = cluster
        .on_leader(FIRST_REGION, |api, _| {
            let request = change_peer(&stale, ConfChangeType::AddLearnerNode, learner);
            async move { api.command(request).await }
        })
        .unwrap_err();
    assert!(
        matches!(&err, CmdError::Region(e) if matches!(e.kind, Some(Kind::EpochNotMatch(_)))),
        "{err:?}"
    );
    assert_eq!(cluster.region_on(leader, FIRST_REGION).unwrap(), region);
    cluster.shutdown();
}

#[test]
fn one_fsync_persists_the_readies_of_many_regions() {
    use std::sync::atomic::Ordering::Relaxed;
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    cluster.wait_leader(FIRST_REGION);
    let split_keys: Vec<Vec<u8>> = (1..16).map(|i| format!("r{i:02}").into_bytes()).collect();
    cluster
        .on_leader(FIRST_REGION, |api, ctx| {
            let keys = split_keys.clone();
            async move { api.split_region(&ctx, keys).await }
        })
        .unwrap();
    for i in 0..16 {
        cluster.must_put(format!("r{i:02}-warmup").as_bytes(), b"v");
    }
    // Summed over every store: followers group-commit too.
    let totals = || {
        cluster.store_ids().into_iter().fold((0, 0), |(w, r), s| {
            let stats = &cluster.services(s).stats;
            (
                w + stats.log_write.count(),
                r + stats.persisted_readies.load(Relaxed),
            )
        })
    };
    let (writes_before, readies_before) = totals();
    // 64 writers spread over 16 regions.
    std::thread::scope(|s| {
        for w in 0..64u32 {
            let cluster = &cluster;
            s.spawn(move || {
                for i in 0..20u32 {
                    cluster.must_put(format!("r{:02}-w{w}-{i}", w % 16).as_bytes(), b"v");
                }
            });
        }
    });
    let (writes_after, readies_after) = totals();
    let (writes, readies) = (writes_after - writes_before, readies_after - readies_before);
    assert!(writes > 0);
    assert!(
        readies > writes,
        "each fsync should carry several regions' readies: {readies} readies in {writes} writes"
    );
    cluster.shutdown();
}

#[test]
fn a_slow_link_delays_but_loses_nothing() {
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    let slow = (1..=3).find(|s| *s != leader).unwrap();
    cluster.add_filter(Filter::Delay(slow, Duration::from_millis(30)));
    for i in 0..30 {
        cluster.must_put(&key(i), &value(i));
    }
    cluster.clear_filters();
    assert!(wait_for(WAIT, || {
        cluster
            .api(slow)
            .region_checksum(FIRST_REGION)
            .unwrap()
            .total_kvs
            == 30
    }));
    let sums: Vec<_> = (1..=3)
        .map(|s| {
            cluster
                .api(s)
                .region_checksum(FIRST_REGION)
                .unwrap()
                .checksum
        })
        .collect();
    assert!(wait_for(WAIT, || (1..=3).all(|s| cluster
        .api(s)
        .region_checksum(FIRST_REGION)
        .unwrap()
        .checksum
        == sums[0])));
    cluster.shutdown();
}

#[test]
fn a_write_overwritten_by_a_new_leader_gets_stale_command_and_overload_gets_busy() {
    let cfg = RaftStoreConfig {
        max_pending_proposals: 1,
        ..test_config()
    };
    let cluster = Cluster::new(3, &[1, 2, 3], cfg);
    let old = cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"k", b"v0");
    let region = cluster.region_on(old, FIRST_REGION).unwrap();
    let ctx = cluster.context(old, &region);
    cluster.add_filter(Filter::Isolate(old));
    // Proposed on the cut-off leader: it can never commit there.
    let doomed = cluster.spawn_put(old, ctx, b"k", b"lost");
    assert!(wait_for(WAIT, || cluster
        .services(old)
        .pending_proposals
        .load(std::sync::atomic::Ordering::Relaxed)
        == 1));
    let busy = cluster
        .rt
        .block_on(cluster.api(old).raw_put(&ctx, b"k2", b"v", 0));
    assert!(
        matches!(&busy, Err(CmdError::Region(e)) if matches!(e.kind, Some(Kind::ServerIsBusy(_)))),
        "{busy:?}"
    );
    // The majority elects a new leader and writes over the doomed entry.
    assert!(wait_for(WAIT, || (1..=3).any(|s| s != old
        && cluster
            .services(s)
            .meta
            .lock()
            .leaders
            .contains(&FIRST_REGION))));
    cluster.must_put(b"k", b"v1");
    cluster.clear_filters();
    let answer = cluster.rt.block_on(doomed).unwrap();
    assert!(
        matches!(&answer, Err(CmdError::Region(e)) if matches!(e.kind, Some(Kind::StaleCommand(_)))),
        "{answer:?}"
    );
    assert_eq!(cluster.must_get(b"k"), Some(b"v1".to_vec()));
    cluster.shutdown();
}

/// The raft state `store` recorded for the first region.
fn raft_state(cluster: &Cluster, store: u64) -> RaftLocalState {
    let engine = &cluster.services(store).engine;
    engine
        .get_cf(CF_RAFT, &keys::raft_state_key(FIRST_REGION))
        .unwrap()
        .map_or_else(RaftLocalState::default, |b| {
            RaftLocalState::decode(b.as_slice()).unwrap()
        })
}

#[test]
fn a_write_whose_entry_only_a_snapshot_brings_back_is_answered_outcome_unknown() {
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let old = cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"k", b"v0");
    let region = cluster.region_on(old, FIRST_REGION).unwrap();
    let ctx = cluster.context(old, &region);
    let others: Vec<u64> = (1..=3).filter(|&s| s != old).collect();
    let before = raft_state(&cluster, old).last_index;
    // The leader's append goes out but no answer comes back: it cannot
    // commit the write, yet both followers hold it.
    cluster.add_filter(Filter::DropTo(old));
    let maybe = cluster.spawn_put(old, ctx, b"k", b"maybe");
    let last_index = |store| raft_state(&cluster, store).last_index;
    assert!(wait_for(WAIT, || others
        .iter()
        .all(|&s| last_index(s) > before)));
    cluster.clear_filters();
    cluster.add_filter(Filter::Isolate(old));
    // The others elect a leader, which commits the entry along with its
    // own, and write on until the log is compacted past it.
    assert_eq!(cluster.must_get(b"k"), Some(b"maybe".to_vec()));
    let mut i = 0;
    let mut write_until = |done: &dyn Fn() -> bool| {
        wait_for(WAIT, || {
            cluster.must_put(&key(i), &value(i));
            i += 1;
            done()
        })
    };
    assert!(write_until(&|| others.iter().all(|&s| {
        apply_state(&cluster, s, FIRST_REGION)
            .and_then(|a| a.truncated_state)
            .is_some_and(|t| t.index > before + 1)
    })));
    // Back in touch, the old leader catches up by snapshot, then by new
    // entries. Its write was applied, but not through its own log: it
    // cannot tell, and must not say "stale command" (a client would retry
    // and apply the write twice).
    cluster.clear_filters();
    let applied = |s| apply_state(&cluster, s, FIRST_REGION).map_or(0, |a| a.applied_index);
    assert!(write_until(
        &|| applied(old) >= others.iter().map(|&s| applied(s)).max().unwrap_or(0)
    ));
    let answer = cluster.rt.block_on(maybe).unwrap();
    assert!(
        matches!(&answer, Err(CmdError::Internal(m)) if m.contains("a snapshot replaced the log holding this write")),
        "{answer:?}"
    );
    assert_eq!(cluster.must_get(b"k"), Some(b"maybe".to_vec()));
    cluster.shutdown();
}

#[test]
fn raft_log_lag_and_the_write_path_stages_are_measured() {
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    let follower = (1..=3).find(|s| *s != leader).unwrap();
    cluster.add_filter(Filter::Isolate(follower));
    for i in 0..20 {
        cluster.must_put(&key(i), &value(i));
    }
    let lag = |store: u64| {
        cluster
            .services(store)
            .meta
            .lock()
            .log_lag
            .get(&FIRST_REGION)
            .copied()
    };
    let leader = cluster.wait_leader(FIRST_REGION);
    assert!(
        wait_for(WAIT, || lag(leader).is_some_and(|l| l >= 20)),
        "lag {:?}",
        lag(leader)
    );
    cluster.clear_filters();
    assert!(
        wait_for(WAIT, || lag(leader) == Some(0)),
        "lag {:?}",
        lag(leader)
    );
    // The writes went through every stage on their leader.
    let stats = &cluster.services(leader).stats;
    for (stage, timing) in [
        ("write", &stats.write),
        ("commit wait", &stats.commit_wait),
        ("apply wait", &stats.apply_wait),
        ("apply", &stats.apply),
        ("raft log write", &stats.log_write),
    ] {
        assert!(
            timing.count() > 0 && timing.seconds() > 0.0,
            "{stage}: {timing:?}"
        );
    }
    let writes: u64 = (1..=3)
        .map(|s| cluster.services(s).stats.write.count())
        .sum();
    assert!(writes >= 20, "{writes} writes timed");
    cluster.shutdown();
}

#[test]
fn a_leader_lease_serves_reads_but_never_past_a_newer_leaders_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    assert!(
        cluster.cfg.leader_lease() < cluster.cfg.tick_interval * cluster.cfg.election_ticks as u32,
        "a lease must end before a follower may vote for another leader"
    );
    let old = cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"k", b"before");
    // A confirmed read gives the leader a lease.
    assert_eq!(cluster.must_get(b"k"), Some(b"before".to_vec()));
    let region = cluster.region_on(old, FIRST_REGION).unwrap();
    let ctx = cluster.context(old, &region);

    // Read from the old leader without pause while it is cut off, until
    // it gives up leadership; note whether each read started after the
    // new leader acknowledged "after".
    let after_acked = Arc::new(AtomicBool::new(false));
    let reader = {
        let (api, after_acked) = (cluster.api(old), after_acked.clone());
        cluster.rt.spawn(async move {
            let mut stale = Vec::new();
            let mut reads = 0;
            loop {
                let issued_after = after_acked.load(Ordering::SeqCst);
                let answer = api.raw_get(&ctx, b"k").await;
                reads += 1;
                match answer {
                    Ok(Some(v)) if issued_after && v == b"before" => stale.push(reads),
                    Ok(_) => {}
                    Err(_) => return (reads, stale),
                }
            }
        })
    };
    cluster.add_filter(Filter::Isolate(old));
    assert!(
        wait_for(WAIT, || cluster.store_ids().into_iter().any(|s| s != old
            && cluster
                .services(s)
                .meta
                .lock()
                .leaders
                .contains(&FIRST_REGION))),
        "no new leader"
    );
    cluster.must_put(b"k", b"after");
    after_acked.store(true, Ordering::SeqCst);
    let (reads, stale) = cluster.rt.block_on(reader).unwrap();
    assert!(reads >= 1);
    assert!(
        stale.is_empty(),
        "the old leader answered \"before\" to reads {stale:?} issued after a newer leader wrote \"after\""
    );
    cluster.clear_filters();
    assert_eq!(cluster.must_get(b"k"), Some(b"after".to_vec()));
    cluster.shutdown();
}

/// Whether every store's one region hibernates.
fn all_asleep(cluster: &Cluster) -> bool {
    cluster
        .store_ids()
        .iter()
        .all(|s| cluster.services(*s).router.hibernating() == 1)
}

#[test]
fn idle_regions_hibernate_wake_on_use_and_followers_outlive_a_dead_sleeping_leader() {
    use std::sync::atomic::Ordering;

    let cfg = RaftStoreConfig {
        sleep_tick_ticks: 10,
        ..test_config()
    };
    let sleep_tick = cfg.tick_interval * cfg.sleep_tick_ticks as u32;
    let mut cluster = Cluster::new(3, &[1, 2, 3], cfg);
    cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"k", b"v1");
    assert!(
        wait_for(WAIT, || all_asleep(&cluster)),
        "the region never slept"
    );

    // Asleep, the region sends only the leader's notices, one per follower
    // per sleep tick; awake it would heartbeat every other tick.
    let sent = cluster.transport.sent.load(Ordering::Relaxed);
    std::thread::sleep(sleep_tick * 5);
    let while_asleep = cluster.transport.sent.load(Ordering::Relaxed) - sent;
    assert!(
        while_asleep <= 2 * 6,
        "{while_asleep} raft messages in 5 sleep ticks"
    );

    // A write and a read wake it and are served; then it sleeps again.
    let leader = cluster.leader_of(FIRST_REGION).unwrap();
    cluster.must_put(b"k", b"v2");
    assert_eq!(cluster.must_get(b"k"), Some(b"v2".to_vec()));
    assert!(
        wait_for(WAIT, || all_asleep(&cluster)),
        "the region never slept again"
    );
    assert_eq!(
        cluster.leader_of(FIRST_REGION),
        Some(leader),
        "waking moved leadership"
    );

    // The sleeping leader dies. Nobody asks the followers anything: they
    // notice the missing notices, wake, and elect a leader on their own.
    cluster.stop_store(leader);
    assert!(
        wait_for(WAIT, || cluster
            .leader_of(FIRST_REGION)
            .is_some_and(|l| l != leader)),
        "the followers of a dead sleeping leader never elected another"
    );
    assert_eq!(cluster.must_get(b"k"), Some(b"v2".to_vec()));
    cluster.shutdown();
}

#[test]
fn a_sleeping_leader_reports_to_pd_again_when_the_heartbeat_stream_reopens() {
    // Asleep, a leader heartbeats PD every 12 sleep ticks: a minute here.
    let cfg = RaftStoreConfig {
        sleep_tick_ticks: 250,
        ..test_config()
    };
    let cluster = Cluster::new(3, &[1, 2, 3], cfg);
    let leader = cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"k", b"v");
    assert!(
        wait_for(WAIT, || all_asleep(&cluster)),
        "the region never slept"
    );
    // Let the leader's PD worker finish what it queued before the region
    // slept: a heartbeat of a made-up region, queued now, is done last.
    let marker = metapb::Region {
        id: 999,
        ..Default::default()
    };
    let tasks = &cluster.services(leader).pd_tx;
    tasks
        .send(PdTask::RegionHeartbeat {
            region: marker,
            leader: metapb::Peer::default(),
            pending_peers: Vec::new(),
            written_bytes: 0,
            written_keys: 0,
            term: 0,
        })
        .unwrap();
    assert!(wait_for(WAIT, || cluster.pd.region(999).is_some()));
    // PD's leader changed: the new one knows no region's leader until told.
    cluster.pd.forget_leaders();
    cluster.pd.reopen_heartbeat_stream();
    assert!(
        wait_for(Duration::from_secs(5), || cluster
            .pd
            .region(FIRST_REGION)
            .and_then(|r| r.leader)
            .is_some_and(|p| p.store_id == leader)),
        "the sleeping leader did not report its region on the reopened stream"
    );
    assert!(all_asleep(&cluster), "reporting woke the region");
    cluster.shutdown();
}

#[test]
fn a_store_whose_recorded_commit_lags_what_it_applied_restarts() {
    let mut cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    for i in 0..20 {
        cluster.must_put(&key(i), &value(i));
    }
    // The leader learns its last write committed after writing the entry;
    // a new commit index alone is not written (it would cost an fsync on
    // every write's path), and the write applied anyway.
    assert!(
        wait_for(WAIT, || {
            let applied =
                apply_state(&cluster, leader, FIRST_REGION).map_or(0, |s| s.applied_index);
            raft_state(&cluster, leader).commit < applied
        }),
        "the recorded commit index never lagged the applied index"
    );
    cluster.stop_store(leader);
    cluster.start_store(leader);
    // The restarted store leads again and serves what it applied.
    let target = metapb::Peer {
        id: 100 + leader,
        store_id: leader,
        role: 0,
    };
    assert!(
        move_leader(&cluster, target),
        "the restarted store never took leadership back"
    );
    cluster.must_put(b"after", b"restart");
    for i in 0..20 {
        assert_eq!(cluster.must_get(&key(i)), Some(value(i)));
    }
    cluster.shutdown();
}

#[test]
fn writes_arriving_together_share_a_log_entry_and_each_caller_gets_its_own_answer() {
    use concord_proto::raft_cmdpb::{request, DeleteRequest, PutRequest, Request};
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    let leader = cluster.wait_leader(FIRST_REGION);
    cluster.must_put(b"gone-0", b"v");
    cluster.must_put(b"gone-1", b"v");
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let ctx = cluster.context(leader, &region);
    let header = RaftRequestHeader {
        region_id: FIRST_REGION,
        peer: ctx.peer,
        region_epoch: ctx.region_epoch,
        proposal_id: 0,
    };
    let put = |key: String| Request {
        cmd: Some(request::Cmd::Put(PutRequest {
            cf: CF_DEFAULT.into(),
            key: key.into_bytes(),
            value: concord_store::raw_value::encode(b"v", 0, 0),
        })),
    };
    let delete = |key: &str| Request {
        cmd: Some(request::Cmd::Delete(DeleteRequest {
            cf: CF_DEFAULT.into(),
            key: key.as_bytes().to_vec(),
        })),
    };
    // 200 callers at once: one or three puts each, and two deletes.
    let mut commands: Vec<Vec<Request>> = (0..200)
        .map(|i| {
            (0..1 + 2 * (i % 2))
                .map(|j| put(format!("k{i}-{j}")))
                .collect()
        })
        .collect();
    commands.push(vec![delete("gone-0")]);
    commands.push(vec![delete("gone-1")]);
    let first_index = raft_state(&cluster, leader).last_index;
    let api = cluster.api(leader);
    let answers = cluster.rt.block_on(async {
        let calls = commands.iter().map(|requests| {
            let api = api.clone();
            let request = RaftCmdRequest {
                header: Some(header),
                requests: requests.clone(),
                admin_request: None,
            };
            tokio::spawn(async move { api.command(request).await })
        });
        let calls: Vec<_> = calls.collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        answers
    });
    for (requests, answer) in commands.iter().zip(&answers) {
        let answer = answer.as_ref().expect("every write succeeds");
        assert_eq!(
            answer.responses.len(),
            requests.len(),
            "one response per request"
        );
    }
    let entries = raft_state(&cluster, leader).last_index - first_index;
    assert!(
        entries < commands.len() as u64,
        "{} writes took {entries} log entries",
        commands.len()
    );
    for i in 0..200 {
        for j in 0..1 + 2 * (i % 2) {
            assert_eq!(
                cluster.must_get(format!("k{i}-{j}").as_bytes()),
                Some(b"v".to_vec())
            );
        }
    }
    assert_eq!(cluster.must_get(b"gone-0"), None);
    assert_eq!(cluster.must_get(b"gone-1"), None);
    cluster.shutdown();
}
