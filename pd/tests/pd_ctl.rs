//! Every pd-ctl command, including its error cases, against a running
//! `concord-pd` process.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use concord_pd::client::PdClient;
use concord_pd::grpc_client::GrpcPdClient;
use concord_proto::{metapb, pdpb};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Pd {
    child: Child,
    http: String,
    grpc: String,
}

impl Drop for Pd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_pd(dir: &std::path::Path) -> Pd {
    let (grpc, http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = dir.join("pd.toml");
    // No background scheduling: the test places every operator itself.
    std::fs::write(&config, "schedule-interval-ms = 0\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord-pd"))
        .args(["--addr", &grpc, "--http-addr", &http, "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if reqwest::get(format!("http://{http}/status")).await.is_ok() {
            return Pd { child, http, grpc };
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("concord-pd exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("concord-pd did not come up");
}

struct Out {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
}

fn ctl(http: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_pd-ctl"))
        .args(["--pd", http])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Out {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(http: &str, args: &[&str]) -> Value {
    let out = ctl(http, args);
    assert_eq!(out.code, 0, "pd-ctl {args:?} failed: {}", out.stderr);
    out.json
}

fn fails(http: &str, args: &[&str], code: i32, needle: &str) {
    let out = ctl(http, args);
    assert_eq!(
        out.code, code,
        "pd-ctl {args:?}: {} {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "pd-ctl {args:?}: {needle:?} not in {}",
        out.stderr
    );
}

fn voter(id: u64, store_id: u64) -> metapb::Peer {
    metapb::Peer {
        id,
        store_id,
        role: metapb::PeerRole::Voter as i32,
    }
}

fn store(id: u64) -> metapb::Store {
    metapb::Store {
        id,
        address: format!("127.0.0.1:{}", 40000 + id),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_command_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pd = spawn_pd(dir.path()).await;
    let http = pd.http.as_str();

    // Unbootstrapped cluster.
    assert_eq!(ok(http, &["cluster"])["bootstrapped"], false);

    // Bootstrap: stores 1-3; region 10 on stores 1 and 2, led by 1.
    let client = GrpcPdClient::connect(std::slice::from_ref(&pd.grpc))
        .await
        .unwrap();
    let region = |conf_ver, peers| metapb::Region {
        id: 10,
        start_key: vec![],
        end_key: vec![],
        region_epoch: Some(metapb::RegionEpoch {
            conf_ver,
            version: 1,
        }),
        peers,
    };
    client
        .bootstrap(store(1), region(1, vec![voter(11, 1)]))
        .await
        .unwrap();
    client.put_store(store(2)).await.unwrap();
    client.put_store(store(3)).await.unwrap();
    client
        .region_heartbeat(pdpb::RegionHeartbeatRequest {
            region: Some(region(2, vec![voter(11, 1), voter(12, 2)])),
            leader: Some(voter(11, 1)),
            bytes_written: 4096,
            bytes_read: 512,
            ..Default::default()
        })
        .await
        .unwrap();
    // The heartbeat is asynchronous: wait until PD has applied it.
    for _ in 0..300 {
        if ok(http, &["region", "10"])["bytes_written"] == 4096 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let cluster = ok(http, &["cluster"]);
    assert_eq!(cluster["bootstrapped"], true);
    assert_eq!(ok(http, &["health"])[0]["health"], true);
    assert!(ok(http, &["member"])["leader"]["client_urls"][0]
        .as_str()
        .unwrap()
        .contains(&pd.grpc));
    let t1 = ok(http, &["tso"])["ts"].as_u64().unwrap();
    let t2 = ok(http, &["tso"])["ts"].as_u64().unwrap();
    assert!(t2 > t1);

    // store
    assert_eq!(ok(http, &["store"])["count"], 3);
    assert_eq!(ok(http, &["store", "2"])["address"], store(2).address);
    fails(http, &["store", "99"], 1, "store 99 not found");
    fails(http, &["store", "abc"], 2, "invalid value");
    let labelled = ok(http, &["store", "label", "2", "zone=z9", "host=h1"]);
    assert_eq!(labelled["labels"]["zone"], "z9");
    assert_eq!(labelled["labels"]["host"], "h1");
    fails(http, &["store", "label", "2", "zone"], 2, "KEY=VALUE");
    fails(http, &["store", "label", "77", "zone=z1"], 1, "not found");
    assert_eq!(ok(http, &["store", "limit"])["2"], 4);
    assert_eq!(ok(http, &["store", "limit", "2", "8"])["limit"], 8);
    assert_eq!(ok(http, &["store", "limit"])["2"], 8);
    fails(http, &["store", "limit", "2"], 2, "usage");
    fails(http, &["store", "limit", "77", "1"], 1, "not found");
    let table = ctl(http, &["store", "--table"]);
    assert_eq!(table.code, 0);
    assert!(
        table.stdout.lines().next().unwrap().contains("ADDRESS"),
        "{}",
        table.stdout
    );
    assert_eq!(table.stdout.lines().count(), 4);

    // region
    assert_eq!(ok(http, &["region"])["count"], 1);
    assert_eq!(ok(http, &["region", "10"])["peers"][1]["store_id"], 2);
    fails(http, &["region", "999"], 1, "region 999");
    assert_eq!(ok(http, &["region", "key", "anything"])["id"], 10);
    assert_eq!(ok(http, &["region", "key", "--hex", "00ff"])["id"], 10);
    fails(http, &["region", "key", "--hex", "zz"], 1, "not hex");
    assert_eq!(
        ok(http, &["region", "topwrite", "1"])["regions"][0]["bytes_written"],
        4096
    );
    assert_eq!(
        ok(http, &["region", "topread", "1"])["regions"][0]["bytes_read"],
        512
    );

    // operator
    assert_eq!(ok(http, &["operator", "show"])["count"], 0);
    let op = ok(http, &["operator", "add", "transfer-leader", "10", "2"]);
    assert_eq!(op["region_id"], 10);
    fails(
        http,
        &["operator", "add", "transfer-leader", "10", "2"],
        1,
        "already has an operator",
    );
    assert_eq!(ok(http, &["operator", "show"])["count"], 1);
    assert_eq!(
        ok(http, &["operator", "show", "10"])["desc"],
        "admin-transfer-leader"
    );
    ok(http, &["operator", "remove", "10"]);
    fails(http, &["operator", "remove", "10"], 1, "no operator");
    fails(http, &["operator", "show", "10"], 1, "no operator");
    fails(
        http,
        &["operator", "add", "transfer-leader", "10", "3"],
        1,
        "no peer on store 3",
    );
    fails(
        http,
        &["operator", "add", "add-peer", "999", "3"],
        1,
        "region 999",
    );
    ok(http, &["operator", "add", "add-peer", "10", "3"]);
    ok(http, &["operator", "remove", "10"]);
    ok(http, &["operator", "add", "remove-peer", "10", "2"]);
    ok(http, &["operator", "remove", "10"]);
    let op = ok(
        http,
        &["operator", "add", "transfer-region", "10", "2", "3"],
    );
    assert!(op["steps"].as_array().unwrap().len() >= 4, "{op}");
    ok(http, &["operator", "remove", "10"]);
    ok(http, &["operator", "add", "split-region", "10", "6d"]);
    ok(http, &["operator", "remove", "10"]);
    fails(
        http,
        &["operator", "add", "split-region", "10", "xyz"],
        1,
        "hex",
    );
    fails(
        http,
        &["operator", "add", "teleport", "10"],
        2,
        "unrecognized subcommand",
    );

    // scheduler
    let names = ok(http, &["scheduler", "show"]);
    assert_eq!(
        names,
        serde_json::json!(["balance-region", "balance-leader", "hot-region"])
    );
    let names = ok(http, &["scheduler", "add", "evict-leader", "1"]);
    assert!(names.as_array().unwrap().contains(&"evict-leader-1".into()));
    fails(http, &["scheduler", "add", "evict-leader"], 2, "STORE_ID");
    fails(
        http,
        &["scheduler", "add", "evict-leader", "77"],
        1,
        "not found",
    );
    fails(
        http,
        &["scheduler", "add", "hot-potato"],
        1,
        "unknown scheduler",
    );
    ok(http, &["scheduler", "remove", "evict-leader-1"]);
    ok(http, &["scheduler", "remove", "balance-leader"]);
    ok(http, &["scheduler", "remove", "hot-region"]);
    assert_eq!(
        ok(http, &["scheduler", "show"]),
        serde_json::json!(["balance-region"])
    );
    ok(http, &["scheduler", "add", "hot-region"]);
    fails(
        http,
        &["scheduler", "remove", "balance-leader"],
        1,
        "not running",
    );
    ok(http, &["scheduler", "add", "balance-leader"]);

    // config
    let config = ok(http, &["config", "show"]);
    assert_eq!(config["schedule"]["region-schedule-limit"], 4);
    assert_eq!(config["server"]["schedule-interval-ms"], 0);
    let config = ok(http, &["config", "set", "region-schedule-limit", "8"]);
    assert_eq!(config["schedule"]["region-schedule-limit"], 8);
    ok(http, &["config", "set", "location-labels", "zone,host"]);
    assert_eq!(
        ok(http, &["config", "show"])["schedule"]["location-labels"],
        serde_json::json!(["zone", "host"])
    );
    fails(
        http,
        &["config", "set", "max-replicas", "lots"],
        1,
        "integer",
    );
    fails(http, &["config", "set", "max-replicas", "0"], 1, ">= 1");
    fails(
        http,
        &["config", "set", "no-such-key", "1"],
        1,
        "unknown or read-only",
    );

    // store delete: store 3 holds nothing and becomes Tombstone at once;
    // store 1 holds region 10 and goes Offline.
    assert_eq!(ok(http, &["store", "delete", "3"])["state"], "TOMBSTONE");
    fails(http, &["store", "delete", "3"], 1, "tombstone");
    assert_eq!(ok(http, &["store", "delete", "1"])["state"], "OFFLINE");
    assert_eq!(ok(http, &["store", "1"])["state"], "Offline");
    fails(http, &["store", "delete", "99"], 1, "not found");

    // Syntax errors and an unreachable PD.
    fails(http, &["nonsense"], 2, "unrecognized subcommand");
    let port = free_port();
    let out = ctl(&format!("127.0.0.1:{port}"), &["cluster"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("cannot reach PD at http://127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
}
