//! A write/read workload through a router (and a smart client beside it)
//! while regions split, PD transfers leaders, and the store leading the
//! most regions is SIGKILLed and restarted. The only client-visible errors
//! are writes in flight on the killed store, answered "outcome unknown"
//! (they are never retried: a write applied twice could undo a newer one).
//! Afterwards every acknowledged write reads back, and a full scan returns
//! the acknowledged keys in order plus, at most, some of the unknown ones.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, RouterProc, TestCluster};
use concord_router::retry::RetryReason;
use concord_router::{Client, KvPair};

type Acked = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;
type Errors = Arc<Mutex<Vec<String>>>;
/// Keys of writes whose outcome the client was told is unknown.
type Unknown = Arc<Mutex<Vec<Vec<u8>>>>;

fn key(writer: usize, i: u32) -> Vec<u8> {
    format!("w{writer}-{i:05}").into_bytes()
}

/// Puts (every 10th a batch of 4), reads back, and now and then scans its
/// own keys, until `stop` or 4000 operations.
fn writer(
    n: usize,
    client: Client,
    acked: Acked,
    unknown: Unknown,
    errors: Errors,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let fail = move |errors: &Errors, what: String| errors.lock().expect("errors").push(what);
    let in_doubt = |e: &concord_router::Error| e.to_string().contains("outcome unknown");
    tokio::spawn(async move {
        let mut i = 0u32;
        for op in 0..4000u32 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if op % 10 == 9 {
                let batch: Vec<KvPair> = (i..i + 4)
                    .map(|j| KvPair {
                        key: key(n, j),
                        value: format!("batch-{n}-{j}").into_bytes(),
                    })
                    .collect();
                i += 4;
                match client.batch_put(&batch).await {
                    Ok(()) => {
                        let mut acked = acked.lock().expect("acked");
                        for p in batch {
                            acked.insert(p.key, p.value);
                        }
                    }
                    Err(e) if in_doubt(&e) => unknown
                        .lock()
                        .expect("unknown")
                        .extend(batch.into_iter().map(|p| p.key)),
                    Err(e) => fail(&errors, format!("batch_put w{n} op {op}: {e}")),
                }
                continue;
            }
            let (k, v) = (key(n, i), format!("value-{n}-{i}").into_bytes());
            i += 1;
            match client.put(&k, &v).await {
                Ok(()) => {}
                Err(e) if in_doubt(&e) => {
                    unknown.lock().expect("unknown").push(k);
                    continue;
                }
                Err(e) => {
                    fail(&errors, format!("put w{n} op {op}: {e}"));
                    continue;
                }
            }
            acked.lock().expect("acked").insert(k.clone(), v.clone());
            match client.get(&k).await {
                Ok(Some(got)) if got == v => {}
                other => fail(&errors, format!("get w{n} op {op}: {other:?}")),
            }
            if op % 25 == 0 {
                let prefix_end = format!("w{n}.").into_bytes();
                if let Err(e) = client.scan(&key(n, 0), &prefix_end, 20, true).await {
                    fail(&errors, format!("scan w{n} op {op}: {e}"));
                }
            }
        }
    })
}

async fn grows(acked: &Acked, by: usize, what: &str) {
    let target = acked.lock().expect("acked").len() + by;
    eventually(Duration::from_secs(90), what, || async {
        acked.lock().expect("acked").len() >= target
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_errors_but_in_doubt_writes_through_splits_leader_transfers_and_a_store_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = TestCluster::start(dir, None).await;
    let router = RouterProc::start(cluster.path(), "router", &cluster.pd_addr, &[]);
    let via_router = Client::connect_routers(std::slice::from_ref(&router.addr))
        .await
        .expect("router client");
    let smart = Client::connect_pd(std::slice::from_ref(&cluster.pd_addr))
        .await
        .expect("smart client");
    cluster
        .split_at(&[
            b"w1".to_vec(),
            b"w2".to_vec(),
            b"w3".to_vec(),
            b"w4".to_vec(),
        ])
        .await;
    cluster.wait_healthy().await;

    let acked: Acked = Arc::default();
    let errors: Errors = Arc::default();
    let unknown: Unknown = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|n| {
            let client = if n < 4 { &via_router } else { &smart };
            writer(
                n,
                client.clone(),
                acked.clone(),
                unknown.clone(),
                errors.clone(),
                stop.clone(),
            )
        })
        .collect();

    grows(&acked, 200, "writes before any fault").await;
    // Regions split under load.
    let splits: Vec<Vec<u8>> = (0..6).flat_map(|n| [key(n, 40), key(n, 120)]).collect();
    cluster.split_at(&splits).await;
    grows(&acked, 100, "writes after the first splits").await;

    // PD moves every leader to the first store.
    let first = cluster.store_id(0).await;
    let moved = cluster.transfer_leaders_to(first).await;
    grows(&acked, 100, "writes after leader transfers").await;

    // The store leading the most regions is SIGKILLed...
    let victim = cluster.busiest_leader().await;
    cluster.stores[victim].proc.kill();
    grows(&acked, 200, "writes without the killed store").await;
    // ...and restarted; then leaders move onto it and regions split again.
    cluster.stores[victim].proc.restart();
    grows(&acked, 100, "writes after the store restarted").await;
    let victim_id = cluster.store_id(victim).await;
    let moved_back = cluster.transfer_leaders_to(victim_id).await;
    let splits: Vec<Vec<u8>> = (0..6).map(|n| key(n, 200)).collect();
    cluster.split_at(&splits).await;
    grows(&acked, 200, "writes after the last faults").await;

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer task");
    }
    let errors = errors.lock().expect("errors").clone();
    assert!(
        errors.is_empty(),
        "client-visible errors ({} leader transfers, then {moved_back}): {errors:#?}",
        moved
    );

    // The faults did reach the clients: they retried, and hid it.
    let metrics = smart.router().expect("smart client").metrics();
    let count = |reasons: &[RetryReason]| reasons.iter().map(|r| metrics.retries(*r)).sum::<u64>();
    eprintln!(
        "smart client retries: {:?}",
        RetryReason::ALL
            .iter()
            .map(|r| (r.as_str(), metrics.retries(*r)))
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    );
    assert!(
        count(&[RetryReason::EpochNotMatch]) > 0,
        "no split was noticed"
    );
    assert!(
        count(&[RetryReason::NotLeader, RetryReason::StoreUnreachable]) > 0,
        "no leader change was noticed"
    );
    let router_metrics = reqwest::get(format!("http://{}/metrics", router.status_addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let router_retries: u64 = router_metrics
        .lines()
        .filter(|l| l.starts_with("concord_router_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        router_retries > 0,
        "the router never retried:\n{router_metrics}"
    );

    let acked = acked.lock().expect("acked").clone();
    for (k, v) in &acked {
        for (who, client) in [("router", &via_router), ("smart client", &smart)] {
            assert_eq!(
                client.get(k).await.expect("read back"),
                Some(v.clone()),
                "{who}: acknowledged write {} lost",
                String::from_utf8_lossy(k)
            );
        }
    }
    let scanned = via_router
        .scan(b"", b"", 0, false)
        .await
        .expect("full scan");
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = scanned.into_iter().map(|p| (p.key, p.value)).collect();
    let unknown = unknown.lock().expect("unknown").clone();
    eprintln!("{} writes in doubt after the crash", unknown.len());
    for (k, _) in &scanned {
        assert!(
            acked.contains_key(k) || unknown.contains(k),
            "{} was never written",
            String::from_utf8_lossy(k)
        );
    }
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = scanned
        .into_iter()
        .filter(|(k, _)| acked.contains_key(k))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = acked.into_iter().collect();
    assert_eq!(scanned.len(), want.len(), "full scan size");
    assert!(
        scanned == want,
        "full scan differs from the acknowledged writes"
    );
    cluster.stop_pd().await;
}
