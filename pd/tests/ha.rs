//! A replicated PD: three in-process members in one raft group. Writes
//! replicate, only the leader serves, and when the leader stops a new one
//! is elected and serves with no lost metadata, no reissued id and no
//! timestamp going backwards; a client given every member carries on.

mod common;

use std::time::{Duration, Instant};

use common::{peer, region, store};
use concord_integration::process::free_port;
use concord_pd::client::PdClient;
use concord_pd::config::PdConfig;
use concord_pd::grpc_client::GrpcPdClient;
use concord_pd::operator::{OpKind, OpStep, Operator};
use concord_pd::server::{self, PdServerHandle};
use concord_pd::tso::compose;
use concord_proto::pdpb;
use concord_proto::pdpb::pd_client::PdClient as PdGrpc;

const ELECTION_MS: u64 = 300;
/// Generous bound for a new leader to serve after the old one stops.
const FAILOVER_BOUND: Duration = Duration::from_millis(ELECTION_MS * 20);

struct Group {
    _dirs: Vec<tempfile::TempDir>,
    configs: Vec<PdConfig>,
    members: Vec<Option<PdServerHandle>>,
}

impl Group {
    async fn start() -> Group {
        Group::start_with(PdConfig::default().raft_log_gc_threshold).await
    }

    /// Three members that compact their logs past `raft_log_gc_threshold`
    /// applied entries.
    async fn start_with(raft_log_gc_threshold: u64) -> Group {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial = (0..3)
            .map(|i| format!("pd{i}=127.0.0.1:{}", ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let configs: Vec<_> = (0..3)
            .map(|i| PdConfig {
                name: format!("pd{i}"),
                peer_addr: format!("127.0.0.1:{}", ports[i]),
                initial_cluster: initial.clone(),
                election_timeout_ms: ELECTION_MS,
                raft_log_gc_threshold,
                ..common::test_config(dirs[i].path())
            })
            .collect();
        let members = futures::future::join_all(configs.iter().cloned().map(server::start))
            .await
            .into_iter()
            .map(|r| Some(r.expect("PD member starts")))
            .collect();
        Group {
            _dirs: dirs,
            configs,
            members,
        }
    }

    /// Starts stopped member `i` again over its data directory.
    async fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} runs");
        let member = server::start(self.configs[i].clone()).await;
        self.members[i] = Some(member.expect("PD member restarts"));
    }

    fn member(&self, i: usize) -> &PdServerHandle {
        self.members[i].as_ref().expect("member runs")
    }

    fn grpc_addrs(&self) -> Vec<String> {
        self.members
            .iter()
            .flatten()
            .map(|m| m.grpc_addr().to_string())
            .collect()
    }

    /// Waits until a running member serves as leader; returns its index.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + FAILOVER_BOUND;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if let Some(m) = m {
                    let c = m.cluster().clone();
                    if tokio::task::spawn_blocking(move || c.ensure_leader().is_ok())
                        .await
                        .unwrap()
                    {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no PD leader elected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(&mut self, i: usize) {
        let m = self.members[i].take().expect("member runs");
        m.shutdown().await.unwrap();
    }

    async fn shutdown(mut self) {
        for i in 0..self.members.len() {
            if self.members[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

fn heartbeat(r: &concord_proto::metapb::Region) -> pdpb::RegionHeartbeatRequest {
    pdpb::RegionHeartbeatRequest {
        leader: r.peers.first().cloned(),
        region: Some(r.clone()),
        approximate_size: 1024,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_keeps_metadata_ids_tso_and_streams() {
    let mut group = Group::start().await;
    let old = group.leader().await;
    let client = GrpcPdClient::connect(&group.grpc_addrs()).await.unwrap();

    // Metadata written through the leader.
    let store_id = client.alloc_id().await.unwrap();
    let region_id = client.alloc_id().await.unwrap();
    let peer_id = client.alloc_id().await.unwrap();
    let first = region(region_id, b"", b"", 1, 1, vec![peer(peer_id, store_id)]);
    client
        .bootstrap(store(store_id), first.clone())
        .await
        .unwrap();
    client.put_store(store(store_id + 100)).await.unwrap();
    let mut ids = vec![store_id, region_id, peer_id];
    for _ in 0..20 {
        ids.push(client.alloc_id().await.unwrap());
    }
    let mut ts_before = 0;
    for _ in 0..50 {
        let ts = compose(&client.get_tso().await.unwrap());
        assert!(ts > ts_before);
        ts_before = ts;
    }
    let mut rx = client.heartbeat_responses();
    client.region_heartbeat(heartbeat(&first)).await.unwrap();

    // Stop the leader; another member takes over.
    let stopped_at = Instant::now();
    group.stop(old).await;
    let new = group.leader().await;
    assert_ne!(new, old);
    assert!(
        stopped_at.elapsed() < FAILOVER_BOUND,
        "took {:?}",
        stopped_at.elapsed()
    );

    // The client follows the new leader by itself.
    let ts_after = compose(&client.get_tso().await.unwrap());
    assert!(
        ts_after > ts_before,
        "TSO went back: {ts_after} <= {ts_before}"
    );
    let id_after = client.alloc_id().await.unwrap();
    assert!(
        ids.iter().all(|&id| id < id_after),
        "id {id_after} reissued"
    );
    assert!(client.is_bootstrapped().await.unwrap());
    assert_eq!(
        client.get_store(store_id + 100).await.unwrap().id,
        store_id + 100
    );
    assert_eq!(
        client.get_region(b"any").await.unwrap().region.id,
        region_id
    );
    assert_eq!(
        client
            .get_region_by_id(region_id)
            .await
            .unwrap()
            .unwrap()
            .region,
        first
    );

    // The heartbeat stream reaches the new leader: an operator started
    // there is answered on it.
    let leader = group.members[new].as_ref().unwrap();
    leader
        .cluster()
        .add_operator(Operator::new(
            "test-transfer",
            OpKind::Admin,
            &first,
            vec![OpStep::TransferLeader {
                store_id: store_id + 100,
            }],
            Duration::from_secs(60),
        ))
        .unwrap();
    let deadline = Instant::now() + FAILOVER_BOUND;
    let resp = loop {
        client.region_heartbeat(heartbeat(&first)).await.unwrap();
        if let Ok(Some(resp)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            break resp;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat response from the new leader"
        );
    };
    assert_eq!(resp.region_id, region_id);
    assert!(resp.transfer_leader.is_some());

    drop(client);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot() {
    const GC_THRESHOLD: u64 = 16;
    let mut group = Group::start_with(GC_THRESHOLD).await;
    let leader = group.leader().await;
    let behind = (leader + 1) % 3;
    let client = GrpcPdClient::connect(&group.grpc_addrs()).await.unwrap();
    let store_id = client.alloc_id().await.unwrap();
    let first = region(
        store_id + 1,
        b"",
        b"",
        1,
        1,
        vec![peer(store_id + 2, store_id)],
    );
    client.bootstrap(store(store_id), first).await.unwrap();

    // One member stops; the others go on writing and compact their logs
    // well past where it stopped.
    let stopped_at = group
        .member(behind)
        .cluster()
        .replication()
        .status()
        .applied;
    group.stop(behind).await;
    for i in 0..(4 * GC_THRESHOLD) {
        client.put_store(store(store_id + 100 + i)).await.unwrap();
    }
    let leader_status = group.member(leader).cluster().replication().status();
    assert!(
        leader_status.compacted > stopped_at,
        "the leader's log was not compacted past {stopped_at}: {leader_status:?}"
    );
    assert!(leader_status.applied - leader_status.compacted <= GC_THRESHOLD);

    // Back, it cannot be sent the entries it missed (no member has them
    // any more): only a snapshot brings it up to date.
    group.restart(behind).await;
    let target = leader_status.applied;
    let cluster = group.member(behind).cluster().clone();
    let caught_up = tokio::task::spawn_blocking(move || {
        cluster
            .replication()
            .wait_status(FAILOVER_BOUND, |s| s.applied >= target)
    })
    .await
    .unwrap();
    assert!(caught_up.applied >= target, "{caught_up:?}");
    let (ours, theirs) = (
        group.member(behind).cluster().local_metadata(),
        group.member(leader).cluster().local_metadata(),
    );
    assert_eq!(ours.load_stores().unwrap(), theirs.load_stores().unwrap());
    assert_eq!(
        ours.load_stores().unwrap().len() as u64,
        1 + 4 * GC_THRESHOLD
    );
    assert_eq!(ours.load_regions().unwrap(), theirs.load_regions().unwrap());
    assert_eq!(
        ours.load_alloc_id().unwrap(),
        theirs.load_alloc_id().unwrap()
    );
    let expected = theirs.load_stores().unwrap();

    // What the snapshot brought survives a restart.
    group.stop(behind).await;
    group.restart(behind).await;
    let restarted = group.member(behind).cluster().local_metadata();
    assert_eq!(restarted.load_stores().unwrap(), expected);

    // It takes part again: with the old leader gone, the group still
    // commits, and every write the stopped member missed is served.
    group.stop(leader).await;
    group.leader().await;
    client.put_store(store(store_id + 99)).await.unwrap();
    assert_eq!(
        client.get_store(store_id + 100).await.unwrap().id,
        store_id + 100
    );
    drop(client);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_redirect_to_the_leader_and_every_member_lists_members() {
    let group = Group::start().await;
    let leader = group.leader().await;
    let leader_url = format!(
        "http://{}",
        group.members[leader].as_ref().unwrap().grpc_addr()
    );
    let leader_http = format!(
        "http://{}",
        group.members[leader].as_ref().unwrap().http_addr()
    );
    for (i, m) in group.members.iter().enumerate() {
        let m = m.as_ref().unwrap();
        let mut raw = PdGrpc::connect(format!("http://{}", m.grpc_addr()))
            .await
            .unwrap();
        let members = raw
            .get_members(pdpb::GetMembersRequest { header: None })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(members.members.len(), 3);
        assert_eq!(
            members.leader.unwrap().client_urls,
            vec![leader_url.clone()]
        );
        let resp = raw
            .alloc_id(pdpb::AllocIdRequest { header: None })
            .await
            .unwrap()
            .into_inner();
        let header = resp.header.unwrap();
        if i == leader {
            assert!(header.error.is_none());
            assert!(resp.id > 0);
        } else {
            assert_eq!(header.error.unwrap().r#type(), pdpb::ErrorType::NotLeader);
            assert_eq!(header.leader.unwrap().client_urls, vec![leader_url.clone()]);
            // HTTP: a follower answers 503 with the leader's URL ...
            let resp = reqwest::get(format!("http://{}/pd/api/v1/tso", m.http_addr()))
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 503);
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["leader"]["http_url"], leader_http.as_str());
            // ... and pd-ctl pointed at it follows to the leader.
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pd-ctl"))
                .args(["-u", &format!("http://{}", m.http_addr()), "tso"])
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    group.shutdown().await;
}
