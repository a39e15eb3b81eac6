//! Three PD members: SIGKILL the PD leader while clients write through a
//! router; a new PD leader serves, timestamps never go back, and stores and
//! routers carry on without a client-visible error or a lost write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_common::pd_client::PdClient;
use concord_integration::cluster::{Cluster, LocalCluster, Node};
use concord_integration::raw_client::{pd_leader, RawClient};
use concord_integration::wait_for;
use concord_router::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_pd_leader_disturbs_no_client() {
    // Three PD members, three stores, a router (ready when this returns).
    let mut cluster = tokio::task::spawn_blocking(|| LocalCluster::start(3, 3))
        .await
        .unwrap();
    let grpc = cluster.pd_addrs().to_vec();
    let router_addr = cluster.router_addrs().remove(0);

    let raw = Arc::new(loop {
        if let Ok(c) = RawClient::connect(&grpc).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let replicated = wait_for(Duration::from_secs(90), || {
        let raw = raw.clone();
        async move {
            raw.pd.get_region(b"").await.is_ok_and(|r| {
                r.leader.is_some()
                    && r.region.peers.len() == 3
                    && r.region.peers.iter().all(|p| p.role == 0)
            })
        }
    })
    .await;
    assert!(replicated, "region never got 3 voters");
    let tso_before = raw.pd.get_tso().await.unwrap();

    let client = Client::connect_routers(std::slice::from_ref(&router_addr))
        .await
        .unwrap();
    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, acked, errors) = (client.clone(), acked.clone(), errors.clone());
            tokio::spawn(async move {
                for i in 0..200u32 {
                    let key = format!("w{w}-{i:04}").into_bytes();
                    let value = format!("v{w}-{i}").into_bytes();
                    match client.put(&key, &value).await {
                        Ok(()) => {
                            acked.lock().unwrap().insert(key, value);
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();

    assert!(
        wait_for(Duration::from_secs(60), || {
            let acked = acked.clone();
            async move { acked.lock().unwrap().len() >= 150 }
        })
        .await
    );
    let leader = pd_leader(&grpc).await.expect("a PD leader");
    let victim = grpc
        .iter()
        .position(|a| *a == leader)
        .expect("the leader is a member");
    cluster.kill(Node::Pd(victim)).unwrap();
    let survivors: Vec<String> = grpc.iter().filter(|a| **a != leader).cloned().collect();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let (survivors, old) = (survivors.clone(), leader.clone());
            async move { pd_leader(&survivors).await.is_some_and(|l| l != old) }
        })
        .await,
        "no new PD leader"
    );
    for w in writers {
        w.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    let tso_after = raw.pd.get_tso().await.unwrap();
    assert!(
        (tso_after.physical, tso_after.logical) > (tso_before.physical, tso_before.logical),
        "TSO went back: {tso_before:?} then {tso_after:?}"
    );
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 800);
    for (key, value) in &acked {
        assert_eq!(
            client.get(key).await.unwrap().as_ref(),
            Some(value),
            "lost {key:?}"
        );
    }
    // Stores follow the new leader: their heartbeat stream reopens to it
    // and every region leader reports at once, and a split still reaches PD.
    assert!(
        wait_for(Duration::from_secs(30), || {
            let raw = raw.clone();
            async move {
                raw.pd
                    .get_region(b"w2")
                    .await
                    .is_ok_and(|r| r.leader.is_some())
            }
        })
        .await,
        "the new PD leader never learned the region's leader"
    );
    let info = raw.pd.get_region(b"w2").await.unwrap();
    let region = info.region;
    let leader_store = info.leader.unwrap().store_id;
    let store_addr = raw.pd.get_store(leader_store).await.unwrap().address;
    let mut kv = raw.store_client(&store_addr).await.unwrap();
    kv.split_region(concord_proto::kvrpcpb::SplitRegionRequest {
        context: Some(concord_proto::kvrpcpb::Context {
            region_id: region.id,
            region_epoch: region.region_epoch,
            peer: region
                .peers
                .iter()
                .find(|p| p.store_id == leader_store)
                .copied(),
        }),
        split_keys: vec![b"w2".to_vec()],
    })
    .await
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let raw = raw.clone();
            async move {
                raw.pd
                    .scan_regions(b"", b"", 0)
                    .await
                    .is_ok_and(|r| r.len() >= 2)
            }
        })
        .await,
        "the new PD leader never learned of the split"
    );
}
