//! A store SIGKILLed during a write load loses no acknowledged write, and
//! after it restarts all three replicas hold identical data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_common::pd_client::PdClient;
use concord_integration::process::{PdProc, StoreProc};
use concord_integration::raw_client::RawClient;
use concord_integration::wait_for;

const STORE_CONFIG: &str = r#"
[raftstore]
tick-interval-ms = 50
raft-log-gc-threshold = 200
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_a_store_under_load_loses_nothing_and_replicas_converge() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("store.toml");
    std::fs::write(&config, STORE_CONFIG).unwrap();
    let config = config.display().to_string();
    let pd = PdProc::start(dir.path());
    let mut stores: Vec<StoreProc> = (1..=3)
        .map(|n| StoreProc::start(dir.path(), n, &pd.addr, &["--config", &config]))
        .collect();

    let client = Arc::new(loop {
        if let Ok(c) = RawClient::connect(std::slice::from_ref(&pd.addr)).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    // PD replicates the first region to all three stores.
    let replicated = wait_for(Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            client.pd.get_region(b"").await.is_ok_and(|r| {
                r.region.peers.len() == 3 && r.region.peers.iter().all(|p| p.role == 0)
            })
        }
    })
    .await;
    assert!(
        replicated,
        "region never got 3 voters\n{}",
        stores[0].proc.log_tail()
    );

    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, acked) = (client.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0..250u32 {
                    let key = format!("w{w}-k{i:05}").into_bytes();
                    let value = format!("value-{w}-{i}").into_bytes();
                    if client
                        .put(&key, &value, Duration::from_secs(30))
                        .await
                        .is_ok()
                    {
                        acked.lock().unwrap().insert(key, value);
                    }
                }
            })
        })
        .collect();

    // Kill the leader's store in the middle of the load, then bring it back.
    assert!(
        wait_for(Duration::from_secs(30), || {
            let acked = acked.clone();
            async move { acked.lock().unwrap().len() >= 400 }
        })
        .await
    );
    let leader_store = client
        .pd
        .get_region(b"")
        .await
        .unwrap()
        .leader
        .map_or(1, |l| l.store_id);
    let leader_addr = client.pd.get_store(leader_store).await.unwrap().address;
    let victim = stores
        .iter()
        .position(|s| s.addr == leader_addr)
        .unwrap_or(0);
    stores[victim].proc.kill();
    let before_restart = acked.lock().unwrap().len();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let acked = acked.clone();
            async move { acked.lock().unwrap().len() >= before_restart + 200 }
        })
        .await,
        "writes did not continue without the killed store"
    );
    stores[victim].proc.restart();
    for w in writers {
        w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 1900,
        "too few writes acknowledged: {}",
        acked.len()
    );
    for (key, value) in &acked {
        let got = client.get(key, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.as_ref(), Some(value), "acknowledged write {key:?} lost");
    }

    // Every region ends identical on every store.
    let regions = client.pd.scan_regions(b"", b"", 0).await.unwrap();
    for info in regions {
        let id = info.region.id;
        let converged = wait_for(Duration::from_secs(60), || {
            let (client, stores) = (
                client.clone(),
                stores.iter().map(|s| s.addr.clone()).collect::<Vec<_>>(),
            );
            async move {
                let mut sums = Vec::new();
                for addr in &stores {
                    match client.checksum(addr, id).await {
                        Ok(c) => sums.push((c.checksum, c.total_kvs, c.applied_index)),
                        Err(_) => return false,
                    }
                }
                sums.iter().all(|s| *s == sums[0])
            }
        })
        .await;
        assert!(converged, "region {id} differs between stores");
    }
    // SIGTERM stops every store cleanly although its peers still hold raft
    // streams open to it.
    for store in &mut stores {
        assert!(
            store.proc.terminate(Duration::from_secs(15)),
            "a store did not exit cleanly on SIGTERM\n{}",
            store.proc.log_tail()
        );
    }
}
