//! The container image and compose cluster of `ops/docker`: builds the
//! image from the workspace's binaries (no base image), starts PD, three
//! stores and a router on a private network, checks put/get through the
//! router and that `pd-ctl store` shows three Up stores, then tears
//! everything down. Skipped, with a printed reason, only when `docker` is
//! not installed.

use std::process::Command;
use std::time::Duration;

use concord_integration::compose::{on_path, text, ComposeCluster};
use concord_integration::process::bin_dir;

fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> Result<(), String>) {
    if let Err(e) = ComposeCluster::wait_until(what, timeout, f) {
        panic!("{e}");
    }
}

#[test]
fn compose_cluster_builds_starts_and_serves() {
    if !on_path("docker") {
        println!("SKIPPED compose_cluster: `docker` is not installed on this machine");
        return;
    }
    let compose = ComposeCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let bins = bin_dir();

    // put/get through the router, from inside the network.
    wait_until("a put through the router", Duration::from_secs(180), || {
        let out = compose.exec(
            "router",
            &[
                "concord",
                "kv",
                "--router",
                "router:20170",
                "--timeout-secs",
                "5",
                "put",
                "smoke",
                "compose-ok",
            ],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", text(&out.stderr), compose.logs()))
        }
    });
    let out = compose.exec(
        "router",
        &["concord", "kv", "--router", "router:20170", "get", "smoke"],
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "compose-ok",
        "{}",
        text(&out.stderr)
    );

    // ... and from the host, through the published port.
    let out = Command::new(bins.join("concord"))
        .args(["kv", "--router", &compose.router_addr(), "get", "smoke"])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "compose-ok",
        "{}",
        text(&out.stderr)
    );

    // pd-ctl store: three Up stores.
    wait_until("3 Up stores in pd-ctl", Duration::from_secs(60), || {
        let out = compose.exec(
            "pd1",
            &[
                "pd-ctl",
                "-u",
                "http://pd1:2380,http://pd2:2380,http://pd3:2380",
                "--table",
                "store",
            ],
        );
        let table = text(&out.stdout);
        let up = table.lines().filter(|l| l.contains(" Up ")).count();
        if up == 3 {
            Ok(())
        } else {
            Err(format!("{up} Up stores:\n{table}{}", text(&out.stderr)))
        }
    });
}
