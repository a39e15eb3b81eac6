//! Raftstore tests that stop the apply threads at the `apply_commit`
//! failpoint (compiled in by the `failpoints` feature, which this crate's
//! tests turn on). Failpoints are process-wide, so these tests live in a
//! binary of their own and take turns ([`fail::FailScenario`]).

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{test_config, wait_for, Cluster, FIRST_REGION};
use concord_proto::errorpb::error::Kind;
use concord_proto::raft_cmdpb::{
    admin_request, request, AdminRequest, BatchSplitRequest, PutRequest, RaftCmdRequest,
    RaftRequestHeader, Request, SplitRequest,
};
use concord_proto::raft_serverpb::RaftLocalState;
use concord_store::engine::{Reader, CF_DEFAULT, CF_RAFT};
use concord_store::keys;
use concord_store::raftstore::msg::{CmdResponse, PeerMsg};
use concord_store::raftstore::CmdError;
use prost::Message as _;
use tokio::sync::oneshot::Receiver;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// What `store`'s engine holds for user key `key` (raw, as applied).
fn applied_value(cluster: &Cluster, store: u64, key: &[u8]) -> Option<Vec<u8>> {
    cluster
        .services(store)
        .engine
        .get_cf(CF_DEFAULT, &keys::data_key(key))
        .unwrap()
}

/// Writes `store` answered at commit so far.
fn acked_at_commit(cluster: &Cluster, store: u64) -> u64 {
    cluster.services(store).stats.acked_at_commit.load(Relaxed)
}

/// The header of a command to the first region's peer on `store`, with
/// that peer's view of the region.
fn header(cluster: &Cluster, store: u64) -> RaftRequestHeader {
    let region = cluster.region_on(store, FIRST_REGION).unwrap();
    RaftRequestHeader {
        region_id: FIRST_REGION,
        peer: region.peers.iter().find(|p| p.store_id == store).copied(),
        region_epoch: region.region_epoch,
        proposal_id: 0,
    }
}

/// A command writing `key`.
fn put(header: RaftRequestHeader, key: &[u8]) -> RaftCmdRequest {
    RaftCmdRequest {
        header: Some(header),
        requests: vec![Request {
            cmd: Some(request::Cmd::Put(PutRequest {
                cf: CF_DEFAULT.to_string(),
                key: key.to_vec(),
                value: b"1".to_vec(),
            })),
        }],
        admin_request: None,
    }
}

/// A command splitting the first region at "m": "a" goes to the new
/// region, so the split changes the range under a put of "a" proposed
/// before it applies.
fn split_at_m(cluster: &Cluster, store: u64) -> RaftCmdRequest {
    let region = cluster.region_on(store, FIRST_REGION).unwrap();
    RaftCmdRequest {
        header: Some(header(cluster, store)),
        requests: Vec::new(),
        admin_request: Some(AdminRequest {
            cmd: Some(admin_request::Cmd::Splits(BatchSplitRequest {
                requests: vec![SplitRequest {
                    split_key: b"m".to_vec(),
                    new_region_id: 5000,
                    new_peer_ids: region.peers.iter().map(|p| 5000 + p.id).collect(),
                }],
            })),
        }),
    }
}

/// Waits until the leader on `store` has recorded a commit index of at
/// least `index`, sending it more writes meanwhile (a commit index alone
/// is not written down).
fn wait_recorded_commit(cluster: &Cluster, store: u64, index: u64) {
    let header = header(cluster, store);
    let mut answers = Vec::new();
    assert!(wait_for(WAIT, || {
        answers.push(send_command(cluster, store, put(header, b"zz")));
        raft_state(cluster, store).commit >= index
    }));
}

/// With apply paused and `split` proposed, puts "a" through the leader on
/// `store` (whose recorded log ended at `last`, so the put's entry is at
/// most `last` + 2) and waits until that entry commits: answering the put
/// now would acknowledge a write apply is going to refuse. Then resumes
/// apply: the put must be answered `EpochNotMatch` and write nothing.
fn put_behind_split_is_refused(
    cluster: &Cluster,
    store: u64,
    last: u64,
    split: Receiver<Result<CmdResponse, CmdError>>,
) {
    let answer = send_command(cluster, store, put(header(cluster, store), b"a"));
    wait_recorded_commit(cluster, store, last + 2);
    fail::remove("apply_commit");
    match cluster.rt.block_on(answer).unwrap() {
        Err(CmdError::Region(e)) => {
            assert!(matches!(e.kind, Some(Kind::EpochNotMatch(_))), "{e:?}")
        }
        other => panic!("the put behind the split was answered {other:?}"),
    }
    assert!(cluster.rt.block_on(split).unwrap().is_ok());
    assert_eq!(cluster.must_get(b"a"), None);
}

/// Waits until every store applied `key`.
fn wait_applied(cluster: &Cluster, key: &[u8]) {
    assert!(wait_for(WAIT, || cluster
        .store_ids()
        .into_iter()
        .all(|s| applied_value(cluster, s, key).is_some())));
}

/// The first region's raft state as `store` last wrote it.
fn raft_state(cluster: &Cluster, store: u64) -> RaftLocalState {
    cluster
        .services(store)
        .engine
        .get_cf(CF_RAFT, &keys::raft_state_key(FIRST_REGION))
        .unwrap()
        .map_or_else(RaftLocalState::default, |b| {
            RaftLocalState::decode(b.as_slice()).unwrap()
        })
}

/// Sends `request` to the first region's peer on `store`; the receiver
/// gets its answer.
fn send_command(
    cluster: &Cluster,
    store: u64,
    request: RaftCmdRequest,
) -> Receiver<Result<CmdResponse, CmdError>> {
    let (callback, answer) = tokio::sync::oneshot::channel();
    cluster.send(store, FIRST_REGION, PeerMsg::Command { request, callback });
    answer
}

/// Puts "k" = "v2" and checks that `leader` answered it at commit, while
/// every store still holds `before` for "k".
fn put_answered_unapplied(cluster: &Cluster, leader: u64, before: &Option<Vec<u8>>) {
    let acked = acked_at_commit(cluster, leader);
    cluster.must_put(b"k", b"v2");
    assert!(acked_at_commit(cluster, leader) > acked);
    for store in cluster.store_ids() {
        assert_eq!(
            &applied_value(cluster, store, b"k"),
            before,
            "store {store}"
        );
    }
}

/// Whether `task` finishes within `limit`.
fn finishes_within<T>(cluster: &Cluster, task: &JoinHandle<T>, limit: Duration) -> bool {
    cluster.rt.block_on(async {
        let finished = async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(limit, finished).await.is_ok()
    })
}

/// A three-store cluster whose stores all applied `key`, with this test
/// holding the failpoints, and the region's leader.
fn start(key: &[u8]) -> (fail::FailScenario<'static>, Cluster, u64) {
    let scenario = fail::FailScenario::setup();
    let cluster = Cluster::new(3, &[1, 2, 3], test_config());
    cluster.must_put(key, b"v1");
    wait_applied(&cluster, key);
    let leader = cluster.wait_leader(FIRST_REGION);
    (scenario, cluster, leader)
}

#[test]
fn a_write_is_answered_once_committed_and_reads_wait_for_it_to_apply() {
    let (scenario, cluster, leader) = start(b"k");
    let before = applied_value(&cluster, leader, b"k");

    fail::cfg("apply_commit", "pause").unwrap();
    // Without answers at commit this put would wait for apply: forever.
    put_answered_unapplied(&cluster, leader, &before);
    // A read must not answer from before the acknowledged write.
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let ctx = cluster.context(leader, &region);
    let api = cluster.api(leader);
    let read = cluster
        .rt
        .spawn(async move { api.raw_get(&ctx, b"k").await });
    assert!(
        !finishes_within(&cluster, &read, Duration::from_millis(300)),
        "a read was answered before the write it follows applied"
    );

    fail::remove("apply_commit");
    let read = cluster.rt.block_on(read).unwrap().unwrap();
    assert_eq!(read, Some(b"v2".to_vec()));
    cluster.shutdown();
    scenario.teardown();
}

#[test]
fn a_write_answered_at_commit_survives_every_store_losing_what_it_had_not_applied() {
    let (scenario, mut cluster, leader) = start(b"k");
    let v1 = applied_value(&cluster, leader, b"k");

    // Every apply round from now on is dropped unwritten, as if each store
    // died before applying.
    fail::cfg("apply_commit", "return").unwrap();
    put_answered_unapplied(&cluster, leader, &v1);
    for store in cluster.store_ids() {
        cluster.stop_store(store);
    }
    fail::remove("apply_commit");
    for store in 1..=3 {
        cluster.start_store(store);
    }
    assert_eq!(cluster.must_get(b"k"), Some(b"v2".to_vec()));
    cluster.shutdown();
    scenario.teardown();
}

#[test]
fn a_write_behind_an_unapplied_split_waits_for_apply_and_is_refused() {
    let (scenario, cluster, leader) = start(b"z");
    // Everything the leader proposed so far is applied, so on its disk.
    let last = raft_state(&cluster, leader).last_index;

    fail::cfg("apply_commit", "pause").unwrap();
    let split = send_command(&cluster, leader, split_at_m(&cluster, leader));
    put_behind_split_is_refused(&cluster, leader, last, split);
    cluster.shutdown();
    scenario.teardown();
}

#[test]
fn a_new_leader_answers_at_commit_only_once_it_applied_the_earlier_terms() {
    let (scenario, cluster, old) = start(b"z");

    fail::cfg("apply_commit", "pause").unwrap();
    let split = send_command(&cluster, old, split_at_m(&cluster, old));
    // The split entry of the old term reaches the next leader unapplied:
    // its view of the region still has the old version.
    let next = cluster.store_ids().into_iter().find(|s| *s != old).unwrap();
    let to = header(&cluster, next).peer.unwrap();
    assert!(wait_for(WAIT, || match cluster.leader_of(FIRST_REGION) {
        Some(current) if current == next => true,
        Some(current) => {
            cluster.send(current, FIRST_REGION, PeerMsg::TransferLeader(to));
            false
        }
        None => false,
    }));
    // The new leader's first entry is at most one past what it recorded.
    let last = raft_state(&cluster, next).last_index;
    put_behind_split_is_refused(&cluster, next, last, split);
    cluster.shutdown();
    scenario.teardown();
}

#[test]
fn writers_wait_for_apply_again_once_it_falls_behind() {
    let (scenario, cluster, leader) = start(b"k");
    let region = cluster.region_on(leader, FIRST_REGION).unwrap();
    let ctx = cluster.context(leader, &region);
    let api = cluster.api(leader);

    fail::cfg("apply_commit", "pause").unwrap();
    // One write at a time, so each is an entry of its own: the leader
    // answers them at commit until 64 entries wait for apply.
    let mut answered = 0;
    let blocked = loop {
        let (api, ctx) = (api.clone(), ctx);
        let put = cluster.rt.spawn(async move {
            api.raw_put(&ctx, format!("k{answered}").as_bytes(), b"v", 0)
                .await
        });
        if !finishes_within(&cluster, &put, Duration::from_secs(5)) {
            break put;
        }
        cluster.rt.block_on(put).unwrap().unwrap();
        answered += 1;
        assert!(
            answered <= 64,
            "more than 64 writes answered while apply stood still"
        );
    };
    assert!(answered >= 32, "only {answered} writes answered at commit");
    fail::remove("apply_commit");
    cluster.rt.block_on(blocked).unwrap().unwrap();
    cluster.shutdown();
    scenario.teardown();
}
