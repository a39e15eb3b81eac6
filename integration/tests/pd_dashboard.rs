//! The PD web view in a real browser: PD and three labelled stores run as
//! processes, headless Chromium loads `/dashboard`, runs its script (which
//! fetches the JSON API) and the resulting DOM lists the three stores as
//! Up, with their addresses, labels and region counts.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use concord_integration::process::{bin_dir, PdProc, StoreProc};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The Chromium binary (Debian's `chromium`; install it with
/// scripts/install-deps).
fn chromium() -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(p) = std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        {
            return p;
        }
    }
    panic!("chromium is not installed: run scripts/install-deps (apt-get install chromium)");
}

/// The DOM of `url` after its scripts ran for a few (virtual) seconds.
fn dump_dom(browser: &PathBuf, profile: &std::path::Path, url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn up_stores(pd_http: &str) -> usize {
    let out = Command::new(bin_dir().join("pd-ctl"))
        .args(["-u", &format!("http://{pd_http}"), "--table", "store"])
        .output()
        .expect("run pd-ctl");
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains(" Up "))
        .count()
}

#[test]
fn dashboard_in_headless_chromium_lists_the_stores() {
    let browser = chromium();
    let dir = tempfile::tempdir().unwrap();
    let pd = PdProc::start(dir.path());
    let stores: Vec<StoreProc> = (1..=3)
        .map(|n| {
            let labels = format!("zone=z{n},host=dash-h{n}");
            StoreProc::start(dir.path(), n, &pd.addr, &["--labels", &labels])
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(120);
    while up_stores(&pd.http_addr) < 3 {
        assert!(
            Instant::now() < deadline,
            "stores never came Up\n{}",
            stores[0].proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The page at / is the same dashboard.
    let profile = dir.path().join("chromium-profile");
    let root = dump_dom(&browser, &profile, &format!("http://{}/", pd.http_addr));
    assert!(root.contains("ConcordKV placement driver"), "{root}");

    let url = format!("http://{}/dashboard", pd.http_addr);
    let mut dom = String::new();
    let mut found = false;
    while Instant::now() < deadline + Duration::from_secs(60) {
        dom = dump_dom(&browser, &profile, &url);
        let up_rows = dom.matches(r#"data-state="Up""#).count();
        let addresses = stores.iter().all(|s| dom.contains(&s.addr));
        if up_rows == 3 && addresses && !dom.contains(">never<") {
            found = true;
            break;
        }
    }
    assert!(found, "the dashboard does not list 3 Up stores:\n{dom}");
    for n in 1..=3 {
        assert!(
            dom.contains(&format!("host=dash-h{n}")),
            "label of store {n}:\n{dom}"
        );
        assert!(
            dom.contains(&format!("zone=z{n}")),
            "zone of store {n}:\n{dom}"
        );
    }
    assert_eq!(dom.matches("data-store-id=").count(), 3, "{dom}");
    // The script rendered counts (the bootstrap region exists) and the
    // operators table.
    assert!(
        !dom.contains(r#"<span id="region-total">?</span>"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<div id="error"></div>"#), "{dom}");
    let ops_rendered = dom.contains("no running operators</td>") || dom.contains("data-region-id=");
    assert!(ops_rendered, "operators table not rendered:\n{dom}");
}
