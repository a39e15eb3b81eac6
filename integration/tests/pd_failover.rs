//! Three PD members: SIGKILL the PD leader while clients write through a
//! router; a new PD leader serves, timestamps never go back, and stores and
//! routers carry on without a client-visible error or a lost write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_common::pd_client::PdClient;
use concord_integration::process::{free_port, Proc, StoreProc};
use concord_integration::raw_client::{pd_leader, RawClient};
use concord_integration::wait_for;
use concord_router::Client;

const STORE_CONFIG: &str = "[raftstore]\ntick-interval-ms = 50\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_pd_leader_disturbs_no_client() {
    let dir = tempfile::tempdir().unwrap();
    let grpc: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let initial = (0..3)
        .map(|i| format!("pd{i}={}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut pds: Vec<Proc> = (0..3)
        .map(|i| {
            let args = [
                "--name",
                &format!("pd{i}"),
                "--addr",
                &grpc[i],
                "--http-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--peer-addr",
                &peers[i],
                "--initial-cluster",
                &initial,
                "--election-timeout-ms",
                "500",
                "--data-dir",
                &dir.path().join(format!("pd{i}")).display().to_string(),
            ];
            Proc::start(
                "concord-pd",
                args.iter().map(|s| s.to_string()).collect(),
                dir.path().join(format!("pd{i}.log")),
            )
        })
        .collect();
    let pd_list = grpc.join(",");
    let config = dir.path().join("store.toml");
    std::fs::write(&config, STORE_CONFIG).unwrap();
    let config = config.display().to_string();
    let _stores: Vec<StoreProc> = (1..=3)
        .map(|n| StoreProc::start(dir.path(), n, &pd_list, &["--config", &config]))
        .collect();
    let router_addr = format!("127.0.0.1:{}", free_port());
    let router = Proc::start(
        "concord-router",
        [
            "--addr",
            &router_addr,
            "--status-addr",
            "127.0.0.1:0",
            "--pd",
            &pd_list,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        dir.path().join("router.log"),
    );
    router.wait_line("concord-router ready", Duration::from_secs(60));

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
    assert!(
        replicated,
        "region never got 3 voters\n{}",
        pds[0].log_tail()
    );
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
    pds[victim].kill();
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
    // Stores keep heartbeating to the new leader: a split still reaches PD.
    let region = raw.pd.get_region(b"w2").await.unwrap().region;
    let leader_store = raw
        .pd
        .get_region(b"w2")
        .await
        .unwrap()
        .leader
        .unwrap()
        .store_id;
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
