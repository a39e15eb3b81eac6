//! The HTTP JSON API, /metrics and /status of an in-process PD.

mod common;

use common::{peer, region, start_pd, store};
use concord_proto::pdpb;
use serde_json::Value;

async fn get(base: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn json_api_reports_cluster_stores_regions_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pd = start_pd(dir.path()).await;
    let base = format!("http://{}", pd.http_addr());
    let api = "/pd/api/v1";

    let (code, body) = get(&base, &format!("{api}/cluster")).await;
    assert_eq!(code, 200);
    assert_eq!(body["bootstrapped"], false);
    assert_eq!(body["id"], pd.cluster().cluster_id());
    let (code, _) = get(&base, &format!("{api}/region/key/a")).await;
    assert_eq!(code, 503, "not bootstrapped yet");

    let cluster = pd.cluster().clone();
    cluster
        .bootstrap(store(1), region(2, b"", b"", 1, 1, vec![peer(3, 1)]))
        .unwrap();
    cluster
        .report_batch_split(&[
            region(2, b"", b"m", 2, 1, vec![peer(3, 1)]),
            region(4, b"m", b"", 2, 1, vec![peer(5, 1)]),
        ])
        .unwrap();
    cluster
        .store_heartbeat(pdpb::StoreStats {
            store_id: 1,
            capacity: 500,
            used_size: 7,
            region_count: 2,
            ..Default::default()
        })
        .unwrap();

    let (code, body) = get(&base, &format!("{api}/health")).await;
    assert_eq!(code, 200);
    assert_eq!(body[0]["health"], true);

    let (_, body) = get(&base, &format!("{api}/stores")).await;
    assert_eq!(body["count"], 1);
    assert_eq!(body["stores"][0]["state"], "Up");
    assert_eq!(body["stores"][0]["labels"]["zone"], "z1");
    assert_eq!(body["stores"][0]["stats"]["capacity"], 500);

    let (code, body) = get(&base, &format!("{api}/store/1")).await;
    assert_eq!(code, 200);
    assert_eq!(body["address"], store(1).address);
    let (code, body) = get(&base, &format!("{api}/store/77")).await;
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("77"));
    let (code, body) = get(&base, &format!("{api}/store/abc")).await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("abc"));

    let (_, body) = get(&base, &format!("{api}/regions")).await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["regions"][1]["start_key"], "6d");
    let (_, body) = get(&base, &format!("{api}/region/id/4")).await;
    assert_eq!(body["epoch"]["version"], 2);
    assert_eq!(body["peers"][0]["role"], "VOTER");
    let (code, _) = get(&base, &format!("{api}/region/id/40")).await;
    assert_eq!(code, 404);
    let (_, body) = get(&base, &format!("{api}/region/key/zebra")).await;
    assert_eq!(body["id"], 4);
    let (_, body) = get(&base, &format!("{api}/region/key/61?format=hex")).await;
    assert_eq!(body["id"], 2);
    let (code, _) = get(&base, &format!("{api}/region/key/6?format=hex")).await;
    assert_eq!(code, 400);

    let (_, first) = get(&base, &format!("{api}/tso")).await;
    let (_, second) = get(&base, &format!("{api}/tso")).await;
    assert!(second["ts"].as_u64().unwrap() > first["ts"].as_u64().unwrap());

    let (_, body) = get(&base, &format!("{api}/operators")).await;
    assert_eq!(body["count"], 0);

    let (code, body) = get(&base, "/status").await;
    assert_eq!(code, 200);
    assert_eq!(body["component"], "pd");
    assert_eq!(body["bootstrapped"], true);

    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("pd_regions 2\n"), "{text}");
    assert!(text.contains("pd_stores{state=\"Up\"} 1\n"), "{text}");
    assert!(text.contains("pd_tso_requests_total 2\n"), "{text}");

    pd.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleting_a_store_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let pd = start_pd(dir.path()).await;
    let base = format!("http://{}", pd.http_addr());
    let cluster = pd.cluster().clone();
    cluster
        .bootstrap(store(1), region(2, b"", b"", 1, 1, vec![peer(3, 1)]))
        .unwrap();
    cluster.put_store(store(6)).unwrap();
    let http = reqwest::Client::new();
    let delete = |id: u64| http.delete(format!("{base}/pd/api/v1/store/{id}")).send();
    let resp = delete(6).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "TOMBSTONE");
    assert_eq!(delete(6).await.unwrap().status().as_u16(), 409);
    let body: Value = delete(1).await.unwrap().json().await.unwrap();
    assert_eq!(body["state"], "OFFLINE");
    assert_eq!(delete(99).await.unwrap().status().as_u16(), 404);
    pd.shutdown().await.unwrap();
}
