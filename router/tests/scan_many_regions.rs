//! Scans over more than 50 regions (made with the store's SplitRegion RPC)
//! return each key exactly once, in order (or reverse order), honouring
//! limit and bounds; multi-key requests across the regions keep request
//! order; delete_range spans them all. Checked through a router process
//! and through the smart client.

mod common;

use std::collections::BTreeMap;

use common::{RouterProc, TestCluster};
use concord_router::{Client, KvPair};

/// Key number `i`, zero-padded so byte order is numeric order.
fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

/// The expected scan of `model` over `[start, end)`.
fn expected(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: &[u8],
    limit: usize,
    reverse: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let inside = model
        .iter()
        .filter(|(k, _)| k.as_slice() >= start && (end.is_empty() || k.as_slice() < end))
        .map(|(k, v)| (k.clone(), v.clone()));
    let all: Vec<_> = if reverse {
        inside.rev().collect()
    } else {
        inside.collect()
    };
    let n = if limit == 0 {
        all.len()
    } else {
        limit.min(all.len())
    };
    all[..n].to_vec()
}

fn pairs(kvs: Vec<KvPair>) -> Vec<(Vec<u8>, Vec<u8>)> {
    kvs.into_iter().map(|p| (p.key, p.value)).collect()
}

async fn check_scans(client: &Client, model: &BTreeMap<Vec<u8>, Vec<u8>>, who: &str) {
    let cases: Vec<(Vec<u8>, Vec<u8>, u32)> = vec![
        (Vec::new(), Vec::new(), 0),
        (Vec::new(), Vec::new(), 7),
        (Vec::new(), Vec::new(), 333),
        (key(105), key(1234), 0),
        (key(105), key(1234), 250),
        // Bounds between keys and on region boundaries.
        (b"key001".to_vec(), b"key01".to_vec(), 0),
        (key(400), key(400), 0),
        (key(1199), Vec::new(), 0),
        (b"a".to_vec(), b"b".to_vec(), 0),
    ];
    for (start, end, limit) in cases {
        for reverse in [false, true] {
            let got = client
                .scan(&start, &end, limit, reverse)
                .await
                .unwrap_or_else(|e| panic!("{who}: scan failed: {e}"));
            let want = expected(model, &start, &end, limit as usize, reverse);
            assert_eq!(
                got.len(),
                want.len(),
                "{who}: scan [{:?}, {:?}) limit {limit} reverse {reverse}",
                String::from_utf8_lossy(&start),
                String::from_utf8_lossy(&end)
            );
            assert!(
                pairs(got) == want,
                "{who}: scan [{:?}, {:?}) limit {limit} reverse {reverse} returned wrong keys",
                String::from_utf8_lossy(&start),
                String::from_utf8_lossy(&end)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scans_and_multi_key_requests_over_more_than_fifty_regions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = TestCluster::start(dir, None).await;
    let router = RouterProc::start(cluster.path(), "router", &cluster.pd_addr, &[]);
    let via_router = Client::connect_routers(std::slice::from_ref(&router.addr))
        .await
        .expect("router client");
    let smart = Client::connect_pd(std::slice::from_ref(&cluster.pd_addr))
        .await
        .expect("smart client");

    // Warm the router's cache with the single region, so the splits below
    // also exercise EpochNotMatch handling.
    via_router.put(b"warm", b"up").await.expect("put");
    smart.put(b"warm", b"up").await.expect("put");

    // 60 split keys: 61 regions, most of them holding 20 keys.
    let split_keys: Vec<Vec<u8>> = (1..=60).map(|i| key(i * 20)).collect();
    cluster.split_at(&split_keys).await;
    let regions = cluster.region_count().await;
    assert!(regions > 50, "only {regions} regions");
    cluster.wait_healthy().await;

    let mut model = BTreeMap::new();
    model.insert(b"warm".to_vec(), b"up".to_vec());
    let batch: Vec<KvPair> = (0..1300)
        .map(|i| KvPair {
            key: key(i),
            value: format!("value-{i}").into_bytes(),
        })
        .collect();
    for chunk in batch.chunks(100) {
        via_router.batch_put(chunk).await.expect("batch put");
    }
    for p in &batch {
        model.insert(p.key.clone(), p.value.clone());
    }

    check_scans(&via_router, &model, "router").await;
    check_scans(&smart, &model, "smart client").await;

    // A batch get across many regions answers in request order, without
    // the missing keys.
    let wanted: Vec<Vec<u8>> = [1250, 3, 777, 99_999, 20, 640, 19, 21, 1299]
        .iter()
        .map(|&i| key(i))
        .collect();
    for client in [&via_router, &smart] {
        let got = client.batch_get(&wanted).await.expect("batch get");
        let want: Vec<(Vec<u8>, Vec<u8>)> = wanted
            .iter()
            .filter_map(|k| model.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        assert_eq!(pairs(got), want);
    }

    // delete_range over about 40 regions.
    via_router
        .delete_range(&key(150), &key(951))
        .await
        .expect("delete range");
    model.retain(|k, _| {
        !(k.as_slice() >= key(150).as_slice() && k.as_slice() < key(951).as_slice())
    });
    check_scans(&via_router, &model, "router after delete_range").await;
    check_scans(&smart, &model, "smart client after delete_range").await;

    let hits = smart.router().map(|r| r.region_cache().len()).unwrap_or(0);
    assert!(hits > 50, "smart client caches only {hits} regions");
}
