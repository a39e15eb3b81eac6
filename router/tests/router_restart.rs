//! Routers restarted (SIGTERM and SIGKILL) or lost in the middle of a
//! workload: clients reconnect or fail over by themselves, and every
//! acknowledged write reads back. The only errors they see are writes in
//! flight on a router that went away, answered "outcome unknown" (such a
//! write is not sent again: it may already have been applied).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, RouterProc, TestCluster};
use concord_router::Client;

type Acked = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;
type Errors = Arc<Mutex<Vec<String>>>;

/// Writes (and reads back) unique keys until `stop`, at most 3000 of them.
fn writer(
    name: String,
    client: Client,
    acked: Acked,
    errors: Errors,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..3000u32 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let key = format!("{name}-{i:05}").into_bytes();
            let value = format!("value-{name}-{i}").into_bytes();
            match client.put(&key, &value).await {
                Ok(()) => {
                    acked
                        .lock()
                        .expect("acked")
                        .insert(key.clone(), value.clone());
                }
                // In doubt: neither acknowledged nor an error.
                Err(e) if e.to_string().contains("outcome unknown") => continue,
                Err(e) => {
                    errors
                        .lock()
                        .expect("errors")
                        .push(format!("put {name} {i}: {e}"));
                    continue;
                }
            }
            match client.get(&key).await {
                Ok(Some(v)) if v == value => {}
                other => errors
                    .lock()
                    .expect("errors")
                    .push(format!("get {name} {i}: {other:?}")),
            }
        }
    })
}

async fn grows(acked: &Acked, by: usize, what: &str) {
    let target = acked.lock().expect("acked").len() + by;
    eventually(Duration::from_secs(60), what, || async {
        acked.lock().expect("acked").len() >= target
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_survive_router_restarts_and_losses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = TestCluster::start(dir, None).await;
    let mut r1 = RouterProc::start(cluster.path(), "router1", &cluster.pd_addr, &[]);
    let mut r2 = RouterProc::start(cluster.path(), "router2", &cluster.pd_addr, &[]);
    let single = Client::connect_routers(&[r1.addr.clone()])
        .await
        .expect("client of router1");
    let pair = Client::connect_routers(&[r1.addr.clone(), r2.addr.clone()])
        .await
        .expect("client of both routers");

    let acked: Acked = Arc::default();
    let errors: Errors = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [
        ("single-a", &single),
        ("single-b", &single),
        ("pair-a", &pair),
        ("pair-b", &pair),
    ]
    .into_iter()
    .map(|(name, client)| {
        writer(
            name.to_string(),
            client.clone(),
            acked.clone(),
            errors.clone(),
            stop.clone(),
        )
    })
    .collect();

    grows(&acked, 100, "writes before any restart").await;
    // A graceful restart of router1: SIGTERM lets it finish and exit 0.
    assert!(
        r1.proc.terminate(Duration::from_secs(20)),
        "router1 did not exit cleanly on SIGTERM:\n{}",
        r1.proc.log_tail()
    );
    grows(
        &acked,
        20,
        "writes of the pair client while router1 is down",
    )
    .await;
    r1.restart();
    grows(&acked, 100, "writes after router1 restarted").await;

    // router2 dies for good: the pair client moves its keys to router1.
    r2.proc.kill();
    grows(&acked, 100, "writes after router2 was lost").await;

    // router1 is SIGKILLed and restarted.
    r1.proc.kill();
    r1.restart();
    grows(&acked, 100, "writes after router1 was killed and restarted").await;

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer task");
    }
    let errors = errors.lock().expect("errors").clone();
    assert!(errors.is_empty(), "client-visible errors: {errors:#?}");
    let acked = acked.lock().expect("acked").clone();
    for (key, value) in &acked {
        assert_eq!(
            single.get(key).await.expect("read back"),
            Some(value.clone()),
            "acknowledged write {} lost",
            String::from_utf8_lossy(key)
        );
    }
}
