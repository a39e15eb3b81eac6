//! Building region snapshots off the raft threads.
//!
//! A leader whose follower is too far behind its log sends it a snapshot of
//! the region. Reading a region of up to `region_max_size` bytes out of the
//! engine and encoding it takes long enough to stall every other region of
//! the raft poller (and their elections and leases) if done where raft
//! asks for it. So raft's request only marks the snapshot wanted
//! ([`super::storage::PeerStorage`] answers "temporarily unavailable"); the
//! peer takes a point-in-time view of the engine at once (data and apply
//! state agree in it; its applied index is at least the one the peer knows,
//! and log GC keeps the entries after that until raft has taken the
//! snapshot) and hands it to this store's one snapshot thread, which reads
//! the region out of it and posts the result back to the peer as
//! [`PeerMsg::SnapshotBuilt`]. One thread builds one snapshot at a time, so
//! at most one region's copy is being assembled in memory.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use tracing::info;

use super::msg::PeerMsg;
use super::router::StoreRouter;
use super::storage::build_snapshot;
use crate::engine::Snapshot as EngineView;

/// The store's snapshot thread.
pub struct SnapshotBuilder {
    requests: Mutex<Option<Sender<(u64, EngineView)>>>,
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SnapshotBuilder {
    /// Starts the thread; it answers through `router`.
    pub fn start(router: StoreRouter) -> SnapshotBuilder {
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, EngineView)>();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                for (region_id, view) in rx {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let started = std::time::Instant::now();
                    // A panic must not end the thread: every later build
                    // would wait for it forever.
                    let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        build_snapshot(&view, region_id).map_err(|e| e.to_string())
                    }))
                    .unwrap_or_else(|_| Err("building the snapshot panicked".to_string()));
                    drop(view);
                    if let Ok(snap) = &built {
                        info!(
                            region_id,
                            index = snap.get_metadata().index,
                            bytes = snap.data.len(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "built snapshot"
                        );
                    }
                    // The peer may be gone; then so is the need.
                    let _ = router.send(region_id, PeerMsg::SnapshotBuilt(built));
                }
            })
            .expect("spawn snapshot thread");
        SnapshotBuilder {
            requests: Mutex::new(Some(tx)),
            stopping,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Queues a snapshot of `region_id`, read from `view`, for its peer;
    /// false if the thread has stopped.
    pub fn build(&self, region_id: u64, view: EngineView) -> bool {
        self.requests
            .lock()
            .as_ref()
            .is_some_and(|tx| tx.send((region_id, view)).is_ok())
    }

    /// Stops the thread after the build in progress; queued ones are
    /// dropped (their peers are stopping too).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.requests.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}
