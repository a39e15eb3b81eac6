//! The container image and compose cluster of `ops/docker`: builds the
//! image from the workspace's binaries (no base image), starts PD, three
//! stores and a router on a private network, checks put/get through the
//! router and that `pd-ctl store` shows three Up stores, then tears
//! everything down. Skipped, with a printed reason, only when `docker` is
//! not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use concord_integration::process::{bin_dir, free_port};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A compose project, killed and removed (with its volumes and image) on drop.
struct Compose {
    program: Vec<String>,
    project: String,
    file: PathBuf,
    image: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.output().expect("run docker compose")
    }

    fn exec(&self, service: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "-T", service];
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn logs(&self) -> String {
        let out = self.run(&["logs", "--no-color", "--tail", "15"]);
        text(&out.stdout)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.run(&["kill"]);
        let _ = self.run(&["down", "-v", "--remove-orphans"]);
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

/// `docker-compose`, or `docker compose` when that plugin is installed.
fn compose_program() -> Vec<String> {
    if on_path("docker-compose") {
        return vec!["docker-compose".into()];
    }
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|o| o.status.success()) {
        return vec!["docker".into(), "compose".into()];
    }
    panic!("docker is installed but neither `docker-compose` nor `docker compose` is");
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn compose_cluster_builds_starts_and_serves() {
    if !on_path("docker") {
        println!("SKIPPED compose_cluster: `docker` is not installed on this machine");
        return;
    }
    let bins = bin_dir();
    let profile = bins
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile dir")
        .to_string();
    for b in [
        "concord-pd",
        "pd-ctl",
        "concord-store",
        "concord-router",
        "concord",
    ] {
        assert!(
            bins.join(b).is_file(),
            "{} missing: run `cargo build --workspace --bins` first",
            bins.join(b).display()
        );
    }
    let id = std::process::id();
    let image = format!("concordkv:it-{id}");
    let router_port = free_port();
    let pd_port = free_port();
    let compose = Compose {
        program: compose_program(),
        project: format!("concordit{id}"),
        file: workspace().join("ops/docker/compose.yml"),
        image: image.clone(),
        env: vec![
            ("CONCORD_IMAGE".into(), image.clone()),
            ("CONCORD_ROUTER_PORT".into(), router_port.to_string()),
            ("CONCORD_PD_HTTP_PORT".into(), pd_port.to_string()),
        ],
    };

    let build = Command::new(workspace().join("ops/docker/build-image.sh"))
        .args(["--profile", &profile, "--no-cargo", "--tag", &image])
        .env("CARGO_TARGET_DIR", bins.parent().expect("target dir"))
        .output()
        .expect("run build-image.sh");
    assert!(
        build.status.success(),
        "image build failed:\n{}{}",
        text(&build.stdout),
        text(&build.stderr)
    );

    let up = compose.run(&["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up failed: {}",
        text(&up.stderr)
    );

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
        .args([
            "kv",
            "--router",
            &format!("127.0.0.1:{router_port}"),
            "get",
            "smoke",
        ])
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
