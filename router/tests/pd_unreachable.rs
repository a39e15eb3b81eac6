//! A router started before PD (and with a config file) keeps running,
//! logs a clear error naming the PD address, answers requests with one
//! clear error naming it, and serves as soon as PD is up.

mod common;

use std::time::Duration;

use common::{eventually, free_port, RouterProc, TestCluster};
use concord_router::router_pool::RouterPoolConfig;
use concord_router::{Client, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn router_waits_for_pd_and_then_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pd_addr = format!("127.0.0.1:{}", free_port());
    // The file names a PD that never exists; the flag overrides it.
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        "pd = [\"127.0.0.1:1\"]\nmax-retry-time-ms = 1500\nbackoff-max-ms = 200\n",
    )
    .expect("write router config");
    let mut router = RouterProc::start(
        dir.path(),
        "router",
        &pd_addr,
        &["--config", &config.display().to_string()],
    );
    let log = router.proc.log();
    assert!(
        log.contains(&format!("\"{pd_addr}\"")) && log.contains("max-retry-time-ms = 1500"),
        "effective config not logged:\n{log}"
    );

    let unreachable = format!("PD unreachable at {pd_addr}");
    eventually(
        Duration::from_secs(30),
        "the router to report PD unreachable 3 times",
        || {
            let count = router.proc.log().matches(unreachable.as_str()).count();
            async move { count >= 3 }
        },
    )
    .await;
    assert!(
        router.proc.is_running(),
        "router exited without PD:\n{}",
        router.proc.log_tail()
    );

    // A request now fails with one clear error naming PD's address.
    let client = Client::connect_routers_with(&[router.addr.clone()], RouterPoolConfig::default())
        .await
        .expect("router client");
    match client.put(b"k", b"v").await {
        Err(Error::Unavailable(msg)) => {
            assert!(msg.contains(&pd_addr), "error does not name PD: {msg}");
            assert!(msg.starts_with("put gave up after"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // PD (and stores) come up on that address: the router serves.
    let cluster = TestCluster::start(dir, Some(pd_addr.clone())).await;
    eventually(
        Duration::from_secs(30),
        "a put through the router",
        || async { client.put(b"k", b"v").await.is_ok() },
    )
    .await;
    assert_eq!(client.get(b"k").await.expect("get"), Some(b"v".to_vec()));
    assert!(router.proc.is_running());
    drop(cluster);
}
