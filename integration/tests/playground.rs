//! `concord playground` end to end: the real binary starts a cluster, the
//! commands it prints work when pasted, and SIGTERM stops every child and
//! removes the temporary data directory. Also: bad input to `concord`
//! gives one clear line and a non-zero exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use concord_integration::process::bin_dir;

/// The `concord` binary, which `cargo test` does not build by itself.
fn concord() -> PathBuf {
    let path = bin_dir().join("concord");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `concord bench ARGS --json`, checking it succeeded without errors
/// and did some work in every phase; returns the JSON text.
fn bench(args: &[&str]) -> String {
    let out = Command::new(concord())
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let json = text(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?}: {}{json}",
        text(&out.stderr)
    );
    let phases = json.matches(r#""phase":"#).count();
    assert!(phases >= 1, "{json}");
    assert_eq!(json.matches(r#""errors":0,"#).count(), phases, "{json}");
    assert!(!json.contains(r#""ops":0,"#), "{json}");
    json
}

/// A child process SIGKILLed on drop (its own children die with it through
/// PR_SET_PDEATHSIG, which the playground sets).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pids of the direct children of `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..." - comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn sh(line: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(line)
        .output()
        .expect("run sh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn playground_serves_its_printed_commands_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let stderr_log = tmp.path().join("playground.err");
    let mut pg = Killed(
        Command::new(concord())
            .args(["playground", "--stores", "3", "--stop-timeout-secs", "10"])
            // The example configs of ops/config must be accepted (flags
            // override their addresses).
            .arg("--pd-config")
            .arg(workspace().join("ops/config/pd.toml"))
            .arg("--store-config")
            .arg(workspace().join("ops/config/store.toml"))
            .arg("--router-config")
            .arg(workspace().join("ops/config/router.toml"))
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .expect("start concord playground"),
    );
    let stdout = pg.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Everything up to the stop hint is the ready block.
    let mut block = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let last = line.contains("Press Ctrl-C to stop");
                block.push(line);
                if last {
                    break;
                }
            }
            Err(_) => panic!(
                "no ready block; stdout so far:\n{}\nstderr:\n{}",
                block.join("\n"),
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            ),
        }
    }
    let all = block.join("\n");
    assert!(all.contains("ConcordKV playground is ready"), "{all}");
    let data_dir = block
        .iter()
        .find_map(|l| l.trim().strip_prefix("data and logs"))
        .map(|rest| PathBuf::from(rest.trim().trim_end_matches(" (removed on exit)")))
        .expect("data dir line");
    assert!(data_dir.starts_with(tmp.path()), "{}", data_dir.display());
    assert!(data_dir.is_dir());

    // Paste every printed `concord kv` command, in order.
    let kv_lines: Vec<&str> = block
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.contains("concord kv "))
        .collect();
    assert_eq!(kv_lines.len(), 3, "{all}");
    for line in &kv_lines {
        let out = sh(line);
        assert!(
            out.status.success(),
            "`{line}` failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        if line.ends_with(" get hello") {
            assert_eq!(text(&out.stdout).trim(), "world", "`{line}`");
        }
        if line.contains(" scan") {
            assert!(text(&out.stdout).contains("hello\tworld"), "`{line}`");
        }
    }
    // The same with --json.
    let get = kv_lines.iter().find(|l| l.ends_with(" get hello")).unwrap();
    let out = sh(&get.replace(" kv ", " kv --json "));
    assert!(
        text(&out.stdout).contains(r#""value":"world""#),
        "{}",
        text(&out.stdout)
    );

    // bench through the router (load + workload a) and as a smart client
    // through PD (workload c over the same records: every read finds one).
    let router = kv_lines[0]
        .split_whitespace()
        .skip_while(|w| *w != "--router")
        .nth(1)
        .expect("router address in the kv command")
        .to_string();
    let pd = block
        .iter()
        .find_map(|l| l.trim().strip_prefix("PD "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("PD line")
        .to_string();
    let common = [
        "--records",
        "300",
        "--duration-secs",
        "2",
        "--concurrency",
        "4",
    ];
    let json = bench(
        &[
            &["--router", router.as_str(), "--workload", "a"],
            &common[..],
        ]
        .concat(),
    );
    assert!(
        json.contains(r#""phase":"load""#) && json.contains(r#""phase":"run""#),
        "{json}"
    );
    let json = bench(
        &[
            &["--pd", pd.as_str(), "--workload", "c", "--skip-load"],
            &common[..],
        ]
        .concat(),
    );
    assert!(json.contains(r#""reads_not_found":0"#), "{json}");
    // Every other workload over the loaded records, through the router.
    for workload in ["b", "e", "f", "put", "get"] {
        let json = bench(
            &[
                &["--router", router.as_str(), "--workload", workload],
                &common[..],
                &["--skip-load"][..],
            ]
            .concat(),
        );
        assert!(json.contains(r#""phase":"run""#), "{workload}: {json}");
    }

    // The printed pd-ctl store command shows three Up stores.
    let store_line = block
        .iter()
        .map(|l| l.trim())
        .find(|l| l.contains("pd-ctl ") && l.ends_with(" store"))
        .expect("pd-ctl store line");
    let out = sh(store_line);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).matches(" Up ").count(),
        3,
        "{}",
        text(&out.stdout)
    );
    // Every printed metrics URL is a metrics endpoint: checked by the
    // component tests; here we only check they were printed.
    assert_eq!(all.matches("/metrics").count(), 5, "{all}");

    let pid = pg.0.id();
    let children = children_of(pid);
    assert_eq!(children.len(), 5, "PD + 3 stores + router: {children:?}");

    // SIGTERM: a clean exit, no child left, the temp dir gone.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(status) = pg.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(120),
            "playground did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&stderr_log).unwrap_or_default();
    assert!(status.success(), "exit {status}; stderr:\n{err}");
    assert!(err.contains("playground stopped"), "{err}");
    for child in children {
        assert!(
            !Path::new(&format!("/proc/{child}")).exists(),
            "child {child} still exists"
        );
    }
    assert!(!data_dir.exists(), "{} not removed", data_dir.display());
}

#[test]
fn bad_input_gives_one_clear_line_and_a_non_zero_exit() {
    let run = |args: &[&str]| {
        let out = Command::new(concord()).args(args).output().unwrap();
        (out.status.code(), text(&out.stderr))
    };

    let (code, err) = run(&["playground", "--pd", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--pd 0 is out of range"), "{err}");

    let (code, err) = run(&["playground", "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--no-such-flag"), "{err}");

    // An occupied port is named before anything starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = run(&["playground", "--base-port", &port]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("port {port} for PD 1 is not available")),
        "{err}"
    );

    let (code, err) = run(&["kv", "--router", "127.0.0.1:1", "get", ""]);
    assert_eq!(code, Some(1));
    assert!(err.contains("the key must not be empty"), "{err}");

    let (code, err) = run(&["kv", "--hex", "put", "zz", "00"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not hexadecimal"), "{err}");

    let (code, err) = run(&["kv", "cas", "k", "v"]);
    assert_eq!(
        code,
        Some(2),
        "cas needs --expect or --expect-absent: {err}"
    );

    let (code, err) = run(&["bench", "--records", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--records must be at least 1"), "{err}");

    // A router that is not there is named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, err) = run(&["kv", "--router", &addr, "--timeout-secs", "3", "get", "k"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot connect to router {addr}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, err) = run(&["bench", "--router", &addr, "--workload", "put"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot connect to router {addr}")),
        "{err}"
    );
    let (code, err) = run(&["bench", "--pd", &addr, "--workload", "put"]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("cannot reach PD {addr}")), "{err}");
}
