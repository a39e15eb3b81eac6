//! The PD worker: talks to PD for the raftstore. It sends region and store
//! heartbeats, turns PD's operator steps into peer messages, measures
//! regions that grew and splits them with ids from PD.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_common::pd_client::PdClient;
use concord_proto::metapb;
use concord_proto::pdpb::{self, RegionHeartbeatResponse};
use concord_proto::raft_cmdpb::{
    admin_request, AdminRequest, BatchSplitRequest, ChangePeerRequest, ChangePeerV2Request,
    ConfChangeType, RaftCmdRequest, RaftRequestHeader, SplitRequest,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};

use super::context::{PdTask, StoreServices};
use super::msg::{Callback, CmdError, PeerMsg};
use crate::engine::{RangeStats, Reader, CF_DEFAULT};
use crate::keys;

/// How long a region's measured size is reused by its heartbeats:
/// measuring scans the region's memtable entries, and a busy leader
/// heartbeats every second.
const REGION_SIZE_TTL: Duration = Duration::from_secs(10);

/// Each region's last measured size, by region id, with the region's epoch
/// version (a split changes the range) and when it was taken.
#[derive(Default)]
struct RegionSizes(HashMap<u64, (u64, Instant, RangeStats)>);

impl RegionSizes {
    fn fresh(&self, region: &metapb::Region) -> Option<RangeStats> {
        let version = region.region_epoch.unwrap_or_default().version;
        self.0
            .get(&region.id)
            .filter(|(v, at, _)| *v == version && at.elapsed() < REGION_SIZE_TTL)
            .map(|(_, _, stats)| *stats)
    }

    fn record(&mut self, region: &metapb::Region, stats: RangeStats) {
        let version = region.region_epoch.unwrap_or_default().version;
        self.0.insert(region.id, (version, Instant::now(), stats));
    }

    /// Forgets sizes too old to be used (regions that went away or stopped
    /// heartbeating).
    fn evict_stale(&mut self) {
        self.0
            .retain(|_, (_, at, _)| at.elapsed() < REGION_SIZE_TTL);
    }
}

/// Runs the PD worker until `tasks` closes.
pub async fn run(
    services: StoreServices,
    pd: Arc<dyn PdClient>,
    mut tasks: UnboundedReceiver<PdTask>,
    store_heartbeat: Duration,
) {
    let mut responses = pd.heartbeat_responses();
    let mut stream_opens = pd.heartbeat_stream_opens();
    let mut ticker = tokio::time::interval(store_heartbeat);
    let mut region_sizes = RegionSizes::default();
    loop {
        tokio::select! {
            task = tasks.recv() => match task {
                Some(task) => handle(&services, &pd, &mut region_sizes, task).await,
                None => return,
            },
            Some(resp) = responses.recv() => on_operator(&services, resp),
            Ok(()) = stream_opens.changed() => {
                stream_opens.borrow_and_update();
                report_leaders(&services);
            }
            _ = ticker.tick() => {
                region_sizes.evict_stale();
                store_heartbeat_once(&services, &pd).await;
            }
        }
    }
}

/// Has every region this store leads heartbeat PD now.
fn report_leaders(s: &StoreServices) {
    let leaders: Vec<u64> = s.meta.lock().leaders.iter().copied().collect();
    debug!(
        count = leaders.len(),
        "PD heartbeat stream opened; reporting leaders"
    );
    for region_id in leaders {
        let _ = s.router.send(region_id, PeerMsg::HeartbeatPd);
    }
}

async fn handle(
    s: &StoreServices,
    pd: &Arc<dyn PdClient>,
    region_sizes: &mut RegionSizes,
    task: PdTask,
) {
    match task {
        PdTask::RegionHeartbeat {
            region,
            leader,
            pending_peers,
            written_bytes,
            written_keys,
            term,
        } => {
            let stats = region_stats(s, &region, region_sizes).await;
            let req = pdpb::RegionHeartbeatRequest {
                region: Some(region),
                leader: Some(leader),
                pending_peers,
                bytes_written: written_bytes,
                keys_written: written_keys,
                approximate_size: stats.size,
                approximate_keys: stats.keys,
                term,
                ..Default::default()
            };
            if let Err(e) = pd.region_heartbeat(req).await {
                debug!("region heartbeat failed: {e}");
            }
        }
        PdTask::SplitCheck { region, force } => {
            let (max_size, max_keys) = if force {
                (0, 0)
            } else {
                (s.cfg.region_max_size, s.cfg.region_max_keys)
            };
            let engine = s.engine.clone();
            let r = region.clone();
            let key = tokio::task::spawn_blocking(move || {
                find_split_key(&engine, &r, max_size, max_keys)
            })
            .await
            .ok()
            .flatten();
            if let Some(key) = key {
                info!(
                    region_id = region.id,
                    force, "splitting region at its middle key"
                );
                split(s, pd, region, vec![key], None).await;
            }
        }
        PdTask::Split {
            region,
            keys,
            callback,
        } => split(s, pd, region, keys, callback).await,
        PdTask::ReportSplit { regions } => {
            if let Err(e) = pd.report_batch_split(regions).await {
                warn!("reporting a split to PD failed: {e}");
            }
        }
    }
}

/// A region's approximate size and keys: its SST files' share from their
/// metadata plus its memtable entries, measured at most once per
/// [`REGION_SIZE_TTL`].
async fn region_stats(
    s: &StoreServices,
    region: &metapb::Region,
    region_sizes: &mut RegionSizes,
) -> RangeStats {
    if let Some(stats) = region_sizes.fresh(region) {
        return stats;
    }
    let engine = s.engine.clone();
    let start = keys::data_key(&region.start_key);
    let end = keys::data_end_key(&region.end_key);
    let measured = tokio::task::spawn_blocking(move || {
        engine.approximate_range_stats(CF_DEFAULT, &start, &end)
    })
    .await;
    match measured {
        Ok(Ok(stats)) => {
            region_sizes.record(region, stats);
            stats
        }
        // The engine failed, or the runtime is shutting down.
        _ => RangeStats::default(),
    }
}

/// The key at which to split `region` in two halves of about equal size,
/// if the region is over either limit.
pub fn find_split_key(
    engine: &crate::engine::Engine,
    region: &metapb::Region,
    max_size: u64,
    max_keys: u64,
) -> Option<Vec<u8>> {
    let start = keys::data_key(&region.start_key);
    let end = keys::data_end_key(&region.end_key);
    let snap = engine.snapshot();
    let (mut size, mut count) = (0u64, 0u64);
    snap.scan_cf(CF_DEFAULT, &start, &end, false, |k, v| {
        size += (k.len() + v.len()) as u64;
        count += 1;
        true
    })
    .ok()?;
    if size < max_size && count < max_keys {
        return None;
    }
    let (half_size, half_keys) = (size / 2, count / 2);
    let (mut acc_size, mut acc_keys) = (0u64, 0u64);
    let mut split = None;
    snap.scan_cf(CF_DEFAULT, &start, &end, false, |k, v| {
        acc_size += (k.len() + v.len()) as u64;
        acc_keys += 1;
        if acc_size >= half_size || acc_keys >= half_keys.max(1) {
            split = Some(keys::origin_key(k).to_vec());
            return false;
        }
        true
    })
    .ok()?;
    // A split key equal to the region start would make an empty region.
    split.filter(|k| k.as_slice() > region.start_key.as_slice())
}

async fn split(
    s: &StoreServices,
    pd: &Arc<dyn PdClient>,
    region: metapb::Region,
    keys: Vec<Vec<u8>>,
    callback: Option<Callback>,
) {
    let ids = match pd.ask_batch_split(&region, keys.len() as u32).await {
        Ok(ids) if ids.len() == keys.len() => ids,
        Ok(ids) => {
            fail(
                callback,
                CmdError::Internal(format!(
                    "PD gave {} split ids for {} keys",
                    ids.len(),
                    keys.len()
                )),
            );
            return;
        }
        Err(e) => {
            fail(
                callback,
                CmdError::Internal(format!("asking PD for split ids: {e}")),
            );
            return;
        }
    };
    let requests = keys
        .into_iter()
        .zip(ids)
        .map(|(split_key, id)| SplitRequest {
            split_key,
            new_region_id: id.new_region_id,
            new_peer_ids: id.new_peer_ids,
        })
        .collect();
    let request = admin_command(
        &region,
        admin_request::Cmd::Splits(BatchSplitRequest { requests }),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    if s.router
        .send(
            region.id,
            PeerMsg::Command {
                request,
                callback: tx,
            },
        )
        .is_err()
    {
        fail(callback, CmdError::region_not_found(region.id));
        return;
    }
    let result = rx
        .await
        .unwrap_or_else(|_| Err(CmdError::region_not_found(region.id)));
    if let Err(e) = &result {
        info!(region_id = region.id, "split not done: {e}");
    }
    if let Some(cb) = callback {
        let _ = cb.send(result);
    }
}

fn fail(callback: Option<Callback>, e: CmdError) {
    warn!("split failed: {e}");
    if let Some(cb) = callback {
        let _ = cb.send(Err(e));
    }
}

fn admin_command(region: &metapb::Region, cmd: admin_request::Cmd) -> RaftCmdRequest {
    RaftCmdRequest {
        header: Some(RaftRequestHeader {
            region_id: region.id,
            peer: None,
            region_epoch: region.region_epoch,
            proposal_id: 0,
        }),
        requests: Vec::new(),
        admin_request: Some(AdminRequest { cmd: Some(cmd) }),
    }
}

fn on_operator(s: &StoreServices, resp: RegionHeartbeatResponse) {
    let region_id = resp.region_id;
    let region = s.meta.lock().region(region_id).cloned();
    let Some(mut region) = region else { return };
    if let Some(epoch) = resp.region_epoch {
        region.region_epoch = Some(epoch);
    }
    let msg = if let Some(t) = resp.transfer_leader.and_then(|t| t.peer) {
        PeerMsg::TransferLeader(t)
    } else if let Some(change) = resp
        .change_peer_v2
        .map(|c| c.changes)
        .or(resp.change_peer.map(|c| vec![c]))
    {
        let changes = change
            .into_iter()
            .map(|c| ChangePeerRequest {
                change_type: match c.change_type() {
                    pdpb::ConfChangeType::AddNode => ConfChangeType::AddNode,
                    pdpb::ConfChangeType::RemoveNode => ConfChangeType::RemoveNode,
                    pdpb::ConfChangeType::AddLearnerNode => ConfChangeType::AddLearnerNode,
                } as i32,
                peer: c.peer,
            })
            .collect();
        let request = admin_command(
            &region,
            admin_request::Cmd::ChangePeerV2(ChangePeerV2Request { changes }),
        );
        let (tx, _rx) = tokio::sync::oneshot::channel();
        PeerMsg::Command {
            request,
            callback: tx,
        }
    } else if let Some(split_region) = resp.split_region {
        let task = if split_region.keys.is_empty() {
            PdTask::SplitCheck {
                region,
                force: true,
            }
        } else {
            PdTask::Split {
                region,
                keys: split_region.keys,
                callback: None,
            }
        };
        let _ = s.pd_tx.send(task);
        return;
    } else {
        return;
    };
    let _ = s.router.send(region_id, msg);
}

async fn store_heartbeat_once(s: &StoreServices, pd: &Arc<dyn PdClient>) {
    let (region_count, leader_count) = {
        let meta = s.meta.lock();
        (meta.region_count() as u32, meta.leaders.len() as u32)
    };
    let engine = s.engine.clone();
    let (space, used) = tokio::task::spawn_blocking(move || {
        let (start, end) = (keys::data_key(b""), keys::DATA_MAX_KEY);
        let used = engine
            .file_stats(CF_DEFAULT, &start, end)
            .and_then(|files| Ok(files + engine.memtable_totals(CF_DEFAULT)?))
            .map_or(0, |r| r.size);
        (disk_space(engine.path()), used)
    })
    .await
    .unwrap_or_default();
    let (capacity, available) = space.unwrap_or_default();
    let stats = pdpb::StoreStats {
        store_id: s.store_id,
        capacity,
        available,
        used_size: used,
        region_count,
        leader_count,
        is_busy: s
            .pending_proposals
            .load(std::sync::atomic::Ordering::Relaxed)
            >= s.cfg.max_pending_proposals / 2,
        ..Default::default()
    };
    if let Err(e) = pd.store_heartbeat(stats).await {
        debug!("store heartbeat failed: {e}");
    }
}

/// Total and available bytes of the file system holding `path`.
fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid C string and `st` is large enough.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize;
    Some((st.f_blocks * frsize, st.f_bavail * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_reports_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, available) = disk_space(dir.path()).unwrap();
        assert!(capacity > 0 && available <= capacity);
        assert!(disk_space(std::path::Path::new("/no/such/dir")).is_none());
    }

    #[test]
    fn a_region_size_is_reused_until_the_region_splits() {
        let mut region = metapb::Region {
            id: 7,
            region_epoch: Some(metapb::RegionEpoch {
                version: 1,
                conf_ver: 1,
            }),
            ..Default::default()
        };
        let stats = RangeStats { size: 10, keys: 1 };
        let mut counts = RegionSizes::default();
        assert_eq!(counts.fresh(&region), None);
        counts.record(&region, stats);
        assert_eq!(counts.fresh(&region), Some(stats));
        counts.evict_stale();
        assert_eq!(counts.fresh(&region), Some(stats), "still fresh");
        region.region_epoch.as_mut().unwrap().version = 2;
        assert_eq!(counts.fresh(&region), None, "the range changed");
    }

    #[test]
    fn split_key_is_the_middle_of_a_region_over_its_limits() {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::engine::Engine::open(dir.path(), &Default::default()).unwrap();
        let mut wb = engine.write_batch();
        for i in 0..100u32 {
            wb.put_cf(
                CF_DEFAULT,
                &keys::data_key(format!("k{i:03}").as_bytes()),
                &[0u8; 100],
            )
            .unwrap();
        }
        engine.write(wb, false).unwrap();
        let region = metapb::Region::default();
        assert_eq!(find_split_key(&engine, &region, 1 << 20, 1000), None);
        let key = find_split_key(&engine, &region, 5000, 1000).unwrap();
        assert!(
            (b"k045".as_slice()..=b"k055".as_slice()).contains(&key.as_slice()),
            "{key:?}"
        );
    }
}
