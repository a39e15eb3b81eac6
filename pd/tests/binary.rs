//! The `concord-pd` binary: flags, help, serving and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn help_lists_flags_with_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-pd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--addr",
        "--http-addr",
        "--data-dir",
        "--config",
        "127.0.0.1:2379",
        "127.0.0.1:2380",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn bad_config_exits_non_zero_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pd.toml");
    std::fs::write(&path, "no-such-key = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_concord-pd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-key"));
}

#[tokio::test]
async fn serves_until_sigterm_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pd.toml");
    let http_port = free_port();
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:{}\"\nhttp-addr = \"127.0.0.1:1\"\nname = \"from-file\"\n",
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord-pd"))
        .arg("--config")
        .arg(&config)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{http_port}/status");
    let mut status = None;
    for _ in 0..300 {
        if let Ok(resp) = reqwest::get(&url).await {
            status = Some(resp.json::<serde_json::Value>().await.unwrap());
            break;
        }
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("concord-pd exited early: {exit}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("concord-pd serves HTTP");
    // The flag overrode the file's http-addr; the file's name was kept.
    assert_eq!(status["name"], "from-file");
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit status {}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("starting concord-pd"), "{log}");
    assert!(log.contains("from-file"), "config is logged: {log}");
}
