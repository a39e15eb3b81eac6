//! ConcordKV's multi-process and chaos tests: they run the real binaries,
//! kill them, cut their links and check that no acknowledged write is lost.
//!
//! This library is the harness: [`process`] starts and kills PD and store
//! processes on free loopback ports; [`raw_client`] is a minimal retrying
//! client that talks to stores directly, for checks that must reach one
//! particular store; [`cluster`] and [`compose`] run whole clusters as
//! processes or containers; [`chaos`] throws faults at them under load and
//! judges the outcome.

pub mod chaos;
pub mod cluster;
pub mod compose;
pub mod history;
pub mod linearizability;
pub mod process;
pub mod raw_client;

/// Polls `check` every 100 ms until it holds (true) or `timeout` passes (false).
pub async fn wait_for<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
