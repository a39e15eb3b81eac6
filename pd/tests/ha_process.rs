//! Three `concord-pd` processes in one replicated group: SIGKILL the leader
//! while a client works; a new leader serves, TSO never goes back, no id is
//! reissued and the metadata survives.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{peer, region, store};
use concord_integration::process::free_port;
use concord_integration::raw_client::pd_leader;
use concord_pd::client::PdClient;
use concord_pd::grpc_client::GrpcPdClient;
use concord_pd::tso::compose;

const ELECTION_MS: u64 = 300;
const BOUND: Duration = Duration::from_secs(20);

/// A `concord-pd` child process, killed on drop.
struct Pd(Child);

impl Drop for Pd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_leader_process_fails_over() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
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
    let mut procs: Vec<Option<Pd>> = (0..3)
        .map(|i| {
            let child = Command::new(env!("CARGO_BIN_EXE_concord-pd"))
                .args(["--name", &format!("pd{i}")])
                .args(["--addr", &grpc[i]])
                .args(["--http-addr", "127.0.0.1:0"])
                .args(["--peer-addr", &peers[i]])
                .args(["--initial-cluster", &initial])
                .args(["--election-timeout-ms", &ELECTION_MS.to_string()])
                .arg("--data-dir")
                .arg(dirs[i].path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("concord-pd starts");
            Some(Pd(child))
        })
        .collect();

    let deadline = Instant::now() + BOUND;
    let client = loop {
        match GrpcPdClient::connect(&grpc).await {
            Ok(client) => break client,
            Err(e) => assert!(Instant::now() < deadline, "no PD leader: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let store_id = client.alloc_id().await.unwrap();
    let region_id = client.alloc_id().await.unwrap();
    let peer_id = client.alloc_id().await.unwrap();
    let first = region(region_id, b"", b"", 1, 1, vec![peer(peer_id, store_id)]);
    client.bootstrap(store(store_id), first).await.unwrap();
    let mut last_id = peer_id;
    let mut last_ts = 0;
    for _ in 0..20 {
        last_id = client.alloc_id().await.unwrap();
        last_ts = compose(&client.get_tso().await.unwrap());
    }

    let old = pd_leader(&grpc[..1]).await.expect("a leader");
    let old_index = grpc
        .iter()
        .position(|g| *g == old)
        .expect("leader is a member");
    let killed_at = Instant::now();
    drop(procs[old_index].take());

    // The client carries on by itself: TSO and ids move forward only.
    let ts = compose(&client.get_tso().await.unwrap());
    assert!(ts > last_ts, "TSO went back: {ts} <= {last_ts}");
    let id = client.alloc_id().await.unwrap();
    assert!(id > last_id, "id {id} reissued");
    assert_eq!(client.get_store(store_id).await.unwrap().id, store_id);
    assert_eq!(client.get_region(b"k").await.unwrap().region.id, region_id);
    assert!(killed_at.elapsed() < BOUND);
    let survivor = grpc[(old_index + 1) % 3].clone();
    let new = pd_leader(std::slice::from_ref(&survivor))
        .await
        .expect("a new leader");
    assert_ne!(new, old);
    drop(client);
    drop(procs);
}
