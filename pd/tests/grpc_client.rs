//! The gRPC PD client against an in-process PD server.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{peer, region, restart_pd, start_pd, store};
use concord_pd::client::{PdClient, PdError};
use concord_pd::grpc_client::GrpcPdClient;
use concord_pd::operator::{OpKind, OpStep, Operator};
use concord_pd::tso::compose;
use concord_proto::pdpb;

async fn client_for(addr: std::net::SocketAddr) -> GrpcPdClient {
    GrpcPdClient::connect(&[addr.to_string()])
        .await
        .expect("client connects")
}

fn heartbeat(r: concord_proto::metapb::Region) -> pdpb::RegionHeartbeatRequest {
    pdpb::RegionHeartbeatRequest {
        leader: r.peers.first().cloned(),
        region: Some(r),
        approximate_size: 1024,
        ..Default::default()
    }
}

/// Bootstraps store 1 with region [.., ..) whose only peer is on store 1.
async fn bootstrap(client: &GrpcPdClient) -> concord_proto::metapb::Region {
    let store_id = client.alloc_id().await.unwrap();
    let region_id = client.alloc_id().await.unwrap();
    let peer_id = client.alloc_id().await.unwrap();
    let mut s = store(store_id);
    s.id = store_id;
    let r = region(region_id, b"", b"", 1, 1, vec![peer(peer_id, store_id)]);
    client.bootstrap(s, r.clone()).await.unwrap();
    r
}

#[tokio::test]
async fn metadata_calls_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let pd = start_pd(dir.path()).await;
    let client = client_for(pd.grpc_addr()).await;
    assert_eq!(
        client.cluster_id().await.unwrap(),
        pd.cluster().cluster_id()
    );

    assert!(!client.is_bootstrapped().await.unwrap());
    assert!(matches!(
        client.get_region(b"a").await,
        Err(PdError::NotBootstrapped)
    ));
    assert!(matches!(
        client.put_store(store(50)).await,
        Err(PdError::NotBootstrapped)
    ));
    let first = bootstrap(&client).await;
    let store_id = first.peers[0].store_id;
    assert!(client.is_bootstrapped().await.unwrap());
    let again = client
        .bootstrap(store(90), region(91, b"", b"", 1, 1, vec![peer(92, 90)]))
        .await;
    assert!(
        matches!(again, Err(PdError::AlreadyBootstrapped)),
        "{again:?}"
    );

    client.put_store(store(100)).await.unwrap();
    let fetched = client.get_store(100).await.unwrap();
    assert_eq!(fetched.address, store(100).address);
    assert_eq!(fetched.labels, store(100).labels);
    let missing = client.get_store(12345).await;
    assert!(
        matches!(
            missing,
            Err(PdError::Server {
                kind: pdpb::ErrorType::StoreNotFound,
                ..
            })
        ),
        "{missing:?}"
    );
    let ids: Vec<u64> = client
        .get_all_stores()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![store_id, 100]);
    client
        .store_heartbeat(pdpb::StoreStats {
            store_id: 100,
            capacity: 1000,
            used_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pd.cluster().get_store(100).unwrap().stats.unwrap().capacity,
        1000
    );

    let info = client.get_region(b"anything").await.unwrap();
    assert_eq!(info.region, first);
    assert_eq!(info.leader, Some(first.peers[0]));
    assert_eq!(
        client
            .get_region_by_id(first.id)
            .await
            .unwrap()
            .unwrap()
            .region,
        first
    );
    assert!(client.get_region_by_id(999_999).await.unwrap().is_none());

    // Split [.., ..) at "m" the way a store does it.
    let ids = client.ask_batch_split(&first, 1).await.unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].new_peer_ids.len(), 1);
    let left = region(first.id, b"", b"m", 2, 1, first.peers.clone());
    let right = region(
        ids[0].new_region_id,
        b"m",
        b"",
        2,
        1,
        vec![peer(ids[0].new_peer_ids[0], store_id)],
    );
    client
        .report_batch_split(vec![left.clone(), right.clone()])
        .await
        .unwrap();
    assert_eq!(client.get_region(b"z").await.unwrap().region, right);
    let scanned: Vec<u64> = client
        .scan_regions(b"", b"", 0)
        .await
        .unwrap()
        .iter()
        .map(|r| r.region.id)
        .collect();
    assert_eq!(scanned, vec![left.id, right.id]);
    assert_eq!(client.scan_regions(b"n", b"", 0).await.unwrap().len(), 1);
    assert_eq!(client.scan_regions(b"", b"", 1).await.unwrap().len(), 1);
    // The parent's epoch is now stale: no more split ids for it.
    assert!(client.ask_batch_split(&first, 1).await.is_err());
    drop(client);
    pd.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_tso_requests_get_distinct_increasing_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let pd = start_pd(dir.path()).await;
    let client = std::sync::Arc::new(client_for(pd.grpc_addr()).await);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.get_tso().await.unwrap() }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        let ts = task.await.unwrap();
        assert!(ts.logical > 0);
        assert!(seen.insert(compose(&ts)), "duplicate timestamp");
    }
    let mut last = seen.into_iter().max().unwrap();
    for _ in 0..20 {
        let ts = compose(&client.get_tso().await.unwrap());
        assert!(ts > last);
        last = ts;
    }
    drop(client);
    pd.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_pd_names_the_addresses() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let addrs = vec![addr.clone(), "127.0.0.1:1".to_string()];
    match GrpcPdClient::connect(&addrs).await {
        Err(PdError::Unreachable { addresses, .. }) => {
            assert!(addresses.contains(&addr), "{addresses}");
            assert!(addresses.contains("127.0.0.1:1"), "{addresses}");
            let message = PdError::Unreachable {
                addresses,
                reason: String::new(),
            }
            .to_string();
            assert!(message.contains(&addr));
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(matches!(
        GrpcPdClient::connect(&[]).await,
        Err(PdError::Unreachable { .. })
    ));
}

/// Sends `hb` until a response arrives on `rx` (the stream may still be
/// reconnecting, in which case heartbeats are dropped).
async fn heartbeat_until_answered(
    client: &GrpcPdClient,
    rx: &mut tokio::sync::mpsc::Receiver<pdpb::RegionHeartbeatResponse>,
    hb: &pdpb::RegionHeartbeatRequest,
) -> pdpb::RegionHeartbeatResponse {
    for _ in 0..200 {
        client.region_heartbeat(hb.clone()).await.unwrap();
        if let Ok(Some(resp)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            return resp;
        }
    }
    panic!("no heartbeat response");
}

#[tokio::test]
async fn heartbeat_stream_delivers_operator_steps_and_survives_pd_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pd = start_pd(dir.path()).await;
    let client = client_for(pd.grpc_addr()).await;
    let first = bootstrap(&client).await;
    let store_a = first.peers[0].store_id;
    let mut two = first.clone();
    two.peers.push(peer(client.alloc_id().await.unwrap(), 200));
    two.region_epoch = Some(concord_proto::metapb::RegionEpoch {
        conf_ver: 2,
        version: 1,
    });
    let mut rx = client.heartbeat_responses();

    let transfer = |r: &concord_proto::metapb::Region| {
        Operator::new(
            "test-transfer",
            OpKind::Admin,
            r,
            vec![OpStep::TransferLeader { store_id: 200 }],
            Duration::from_secs(60),
        )
    };
    pd.cluster().add_operator(transfer(&two)).unwrap();
    let resp = heartbeat_until_answered(&client, &mut rx, &heartbeat(two.clone())).await;
    assert_eq!(resp.region_id, two.id);
    assert_eq!(resp.target_peer.unwrap().store_id, store_a);
    assert_eq!(resp.transfer_leader.unwrap().peer.unwrap().store_id, 200);

    // Restart PD on the same ports; the client reconnects by itself.
    let ts_before = compose(&client.get_tso().await.unwrap());
    let (grpc, http) = (pd.grpc_addr(), pd.http_addr());
    pd.shutdown().await.unwrap();
    let pd = restart_pd(dir.path(), grpc, http).await;
    assert!(pd.cluster().get_region_by_id(two.id).is_some());
    pd.cluster().add_operator(transfer(&two)).unwrap();
    let resp = heartbeat_until_answered(&client, &mut rx, &heartbeat(two.clone())).await;
    assert!(resp.transfer_leader.is_some());

    // TSO and unary calls recover too; time never goes back.
    let mut ts_after = None;
    for _ in 0..3 {
        if let Ok(ts) = client.get_tso().await {
            ts_after = Some(compose(&ts));
            break;
        }
    }
    assert!(ts_after.expect("TSO after restart") > ts_before);
    assert!(client.is_bootstrapped().await.unwrap());
    drop(client);
    pd.shutdown().await.unwrap();
}

#[tokio::test]
async fn background_scheduling_sends_replica_steps_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.schedule_interval_ms = 10;
    let pd = concord_pd::server::start(config).await.unwrap();
    let client = client_for(pd.grpc_addr()).await;
    let first = bootstrap(&client).await;
    client.put_store(store(500)).await.unwrap();
    client.put_store(store(600)).await.unwrap();
    let mut rx = client.heartbeat_responses();
    // One replica of three: the replica checker adds a learner.
    let resp = heartbeat_until_answered(&client, &mut rx, &heartbeat(first.clone())).await;
    let change = resp.change_peer.expect("a conf change");
    assert_eq!(change.change_type(), pdpb::ConfChangeType::AddLearnerNode);
    let target = change.peer.unwrap();
    assert!([500, 600].contains(&target.store_id));
    assert_eq!(resp.region_id, first.id);
    let ops = pd.cluster().operators();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].desc, "add-missing-replica");
    drop(client);
    pd.shutdown().await.unwrap();
}
