//! Raw KV operations through a `concord-router` process over PD and three
//! store processes, bad input refused with InvalidArgument without writing
//! anything, and the router's /metrics and /status.

mod common;

use common::{RouterProc, TestCluster};
use concord_proto::routerpb::{self, raw_kv_client::RawKvClient};
use concord_router::{Client, Error, KvPair};
use tonic::Code;

fn kv(k: &str, v: &str) -> KvPair {
    KvPair {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    }
}

fn keys(pairs: &[KvPair]) -> Vec<String> {
    pairs
        .iter()
        .map(|p| String::from_utf8_lossy(&p.key).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_operations_and_bad_input_through_the_router() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = TestCluster::start(dir, None).await;
    let router = RouterProc::start(cluster.path(), "router", &cluster.pd_addr, &[]);
    let client = Client::connect_routers(std::slice::from_ref(&router.addr))
        .await
        .expect("router client");

    // Point operations.
    client.put(b"hello", b"world").await.expect("put");
    assert_eq!(
        client.get(b"hello").await.expect("get"),
        Some(b"world".to_vec())
    );
    assert_eq!(client.get(b"absent").await.expect("get"), None);
    client
        .put_with_ttl(b"ttl-key", b"v", 3600)
        .await
        .expect("put with ttl");
    assert_eq!(
        client.get(b"ttl-key").await.expect("get"),
        Some(b"v".to_vec())
    );
    client.delete(b"hello").await.expect("delete");
    assert_eq!(client.get(b"hello").await.expect("get"), None);

    // Batches come back in request order with missing keys left out.
    client
        .batch_put(&[kv("b1", "1"), kv("b3", "3"), kv("b2", "2")])
        .await
        .expect("batch put");
    let got = client
        .batch_get(&[
            b"b3".to_vec(),
            b"nope".to_vec(),
            b"b1".to_vec(),
            b"b2".to_vec(),
        ])
        .await
        .expect("batch get");
    assert_eq!(got, vec![kv("b3", "3"), kv("b1", "1"), kv("b2", "2")]);

    // Scans, both directions, with limits and bounds.
    let all = client.scan(b"b", b"c", 0, false).await.expect("scan");
    assert_eq!(keys(&all), ["b1", "b2", "b3"]);
    let rev = client
        .scan(b"b", b"c", 2, true)
        .await
        .expect("reverse scan");
    assert_eq!(keys(&rev), ["b3", "b2"]);
    let only_keys = client
        .scan_keys(b"b2", b"", 0, false)
        .await
        .expect("scan keys");
    assert_eq!(
        only_keys,
        [b"b2".to_vec(), b"b3".to_vec(), b"ttl-key".to_vec()]
    );

    // Compare-and-swap.
    let cas = client
        .compare_and_swap(b"cas", None, b"one")
        .await
        .expect("cas on absent key");
    assert!(cas.succeed && cas.previous.is_none());
    let cas = client
        .compare_and_swap(b"cas", Some(b"wrong"), b"two")
        .await
        .expect("failing cas");
    assert!(!cas.succeed);
    assert_eq!(cas.previous, Some(b"one".to_vec()));
    let cas = client
        .compare_and_swap(b"cas", Some(b"one"), b"two")
        .await
        .expect("cas");
    assert!(cas.succeed);
    assert_eq!(
        client.get(b"cas").await.expect("get"),
        Some(b"two".to_vec())
    );

    // Range delete.
    client
        .delete_range(b"b", b"b3")
        .await
        .expect("delete range");
    assert_eq!(
        keys(&client.scan(b"b", b"c", 0, false).await.expect("scan")),
        ["b3"]
    );

    // Bad input straight to the router's gRPC service (no client-side
    // checks): InvalidArgument with the store's message, nothing written.
    let mut raw = RawKvClient::connect(format!("http://{}", router.addr))
        .await
        .expect("raw router client")
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let big_key = vec![b'k'; 8193];
    let big_value = vec![0u8; (8 << 20) + 1];
    let cases: Vec<(&str, tonic::Status, &str)> = vec![
        (
            "empty key",
            raw.put(routerpb::PutRequest {
                key: Vec::new(),
                value: b"v".to_vec(),
                ttl: 0,
            })
            .await
            .expect_err("empty key refused"),
            "key must not be empty",
        ),
        (
            "key over 8 KiB",
            raw.put(routerpb::PutRequest {
                key: big_key.clone(),
                value: b"v".to_vec(),
                ttl: 0,
            })
            .await
            .expect_err("big key refused"),
            "key is 8193 bytes, over the limit of 8192 bytes",
        ),
        (
            "value over 8 MiB",
            raw.put(routerpb::PutRequest {
                key: b"big-value".to_vec(),
                value: big_value.clone(),
                ttl: 0,
            })
            .await
            .expect_err("big value refused"),
            "value is 8388609 bytes, over the limit of 8388608 bytes",
        ),
        (
            "batch with one bad pair",
            raw.batch_put(routerpb::BatchPutRequest {
                pairs: vec![kv("batch-good", "1"), kv("", "2")],
                ttl: 0,
            })
            .await
            .expect_err("bad batch refused"),
            "key must not be empty",
        ),
        (
            "scan start after end",
            raw.scan(routerpb::ScanRequest {
                start_key: b"z".to_vec(),
                end_key: b"a".to_vec(),
                ..Default::default()
            })
            .await
            .expect_err("inverted scan refused"),
            "range start [122] is after its end [97]",
        ),
        (
            "delete range start after end",
            raw.delete_range(routerpb::DeleteRangeRequest {
                start_key: b"z".to_vec(),
                end_key: b"a".to_vec(),
            })
            .await
            .expect_err("inverted delete range refused"),
            "range start [122] is after its end [97]",
        ),
    ];
    for (what, status, message) in cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(status.message(), message, "{what}");
    }
    // Nothing of the refused requests was written (an over-long key cannot
    // be stored at all, and a batch is refused as a whole).
    for key in [&b"big-value"[..], b"batch-good"] {
        assert_eq!(client.get(key).await, Ok(None), "{key:?}");
    }
    // The Rust client refuses the same input before sending.
    assert_eq!(
        client.put(b"", b"v").await,
        Err(Error::InvalidArgument("key must not be empty".into()))
    );
    assert_eq!(
        client.scan(b"z", b"a", 0, false).await,
        Err(Error::InvalidArgument(
            "range start [122] is after its end [97]".into()
        ))
    );

    // Metrics and status.
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("http://{}/metrics", router.status_addr))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for needle in [
        "concord_router_requests_total{op=\"put\",outcome=\"ok\"}",
        "concord_router_requests_total{op=\"put\",outcome=\"invalid_argument\"} 3",
        "concord_router_retries_total{reason=\"not_leader\"}",
        "concord_router_region_cache_misses_total",
        "concord_router_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"}",
        "concord_router_pd_connected 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let status: serde_json::Value = http
        .get(format!("http://{}/status", router.status_addr))
        .send()
        .await
        .expect("GET /status")
        .json()
        .await
        .expect("status JSON");
    assert_eq!(status["pd_connected"], true, "{status}");
    assert_eq!(status["pd"][0], cluster.pd_addr.as_str(), "{status}");
    assert!(status["cached_regions"].as_u64() >= Some(1), "{status}");
}
