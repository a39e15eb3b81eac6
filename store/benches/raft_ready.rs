//! Raft ready handling: what one raftstore poll round costs for a region.
//!
//! A single-voter region runs on the store's real code: a [`Peer`] over
//! [`PeerStorage`](concord_store::raftstore::storage::PeerStorage) on a
//! temp-dir engine, its mailbox in a [`StoreRouter`], and a real
//! [`ApplyPool`] thread applying committed entries and reporting back. The
//! benchmark thread plays the raft poller: each round it takes the ready
//! mailbox, handles its messages (the proposal, apply reports), then
//! `collect_ready` → one write of the round's batch → `post_ready`
//! (advance, dispatch committed entries to apply) — the same calls, in the
//! same order, as `raftstore::poller`.
//!
//! Run with `cargo bench -p concord-store --bench raft_ready`.

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use concord_proto::metapb;
use concord_proto::raft_cmdpb::{request, PutRequest, RaftCmdRequest, RaftRequestHeader, Request};
use concord_proto::raft_serverpb::{RaftApplyState, RaftMessage};
use concord_store::engine::{Engine, EngineConfig, CF_DEFAULT};
use concord_store::raftstore::apply::{ApplyPool, ApplyTask};
use concord_store::raftstore::context::PollContext;
use concord_store::raftstore::meta::StoreMeta;
use concord_store::raftstore::msg::CmdResult;
use concord_store::raftstore::peer::Peer;
use concord_store::raftstore::router::ReadyQueue;
use concord_store::raftstore::snapshot::SnapshotBuilder;
use concord_store::raftstore::storage::read_state;
use concord_store::raftstore::store::write_first_region;
use concord_store::raftstore::{
    PdTask, PeerMsg, RaftStats, RaftStoreConfig, StoreRouter, StoreServices, Transport,
};
use concord_store::{keys, raw_value};

use common::{config, user_key, VALUE_SIZE};

const STORE_ID: u64 = 1;
const REGION_ID: u64 = 1;
const PEER_ID: u64 = 2;
/// Messages a poller takes from one mailbox per round (as in the poller).
const MAX_MESSAGES_PER_PEER: usize = 4096;

/// A single voter sends nothing; the transport only has to exist.
struct NullTransport;

impl Transport for NullTransport {
    fn send(&self, _store_id: u64, _msgs: Vec<RaftMessage>) {}

    fn send_snapshot(&self, _store_id: u64, _msg: RaftMessage, _data: bytes::Bytes) {}
}

/// One store with one single-voter region, polled by the caller.
struct Fixture {
    ctx: PollContext,
    ready: ReadyQueue,
    region: metapb::Region,
    seq: u64,
    value: Vec<u8>,
    _pd_rx: tokio::sync::mpsc::UnboundedReceiver<PdTask>,
    // Last: the engine directory outlives everything using it.
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path(), &EngineConfig::default()).expect("open engine");
        let peer = metapb::Peer {
            id: PEER_ID,
            store_id: STORE_ID,
            role: metapb::PeerRole::Voter as i32,
        };
        let region = metapb::Region {
            id: REGION_ID,
            start_key: Vec::new(),
            end_key: Vec::new(),
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: vec![peer],
        };
        write_first_region(&engine, &region).expect("write first region");

        let cfg = Arc::new(RaftStoreConfig::default());
        let (router, ready) = StoreRouter::new();
        let stats: Arc<RaftStats> = Arc::default();
        let apply = Arc::new(ApplyPool::start(
            1,
            engine.clone(),
            router.clone(),
            stats.clone(),
        ));
        let (pd_tx, pd_rx) = tokio::sync::mpsc::unbounded_channel();
        let services = StoreServices {
            store_id: STORE_ID,
            cfg,
            engine: engine.clone(),
            router: router.clone(),
            apply: apply.clone(),
            snapshots: Arc::new(SnapshotBuilder::start(router.clone())),
            meta: Arc::new(Mutex::new(StoreMeta::default())),
            transport: Arc::new(NullTransport),
            pd_tx,
            pending_proposals: Arc::new(AtomicUsize::new(0)),
            stats,
        };
        // As `Store::start` does for every region it recovers.
        let mut raft_peer = Peer::create(&services, region.clone(), peer).expect("create peer");
        services.meta.lock().set_region(&region);
        let apply_state: RaftApplyState = read_state(
            &engine,
            &keys::apply_state_key(REGION_ID),
            "apply state",
            REGION_ID,
        )
        .expect("read apply state")
        .expect("bootstrapped region has an apply state");
        apply.schedule(
            REGION_ID,
            ApplyTask::Register {
                region: region.clone(),
                apply_state,
            },
        );
        raft_peer.campaign();
        router.register(raft_peer);

        let mut fixture = Fixture {
            ctx: PollContext::new(services),
            ready,
            region,
            seq: 0,
            value: vec![0xab; VALUE_SIZE],
            _pd_rx: pd_rx,
            _dir: dir,
        };
        // Poll until the peer leads and a write goes all the way through.
        let mut rx = fixture.propose();
        loop {
            fixture.poll_round(true);
            match rx.try_recv() {
                Ok(result) => {
                    result.expect("warm-up write succeeds");
                    break;
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_micros(50))
                }
                Err(e) => panic!("warm-up write lost: {e}"),
            }
        }
        fixture
    }

    /// Sends a raw put of a fresh key to the region, as `KvApi` does.
    fn propose(&mut self) -> oneshot::Receiver<CmdResult> {
        self.seq += 1;
        let put = Request {
            cmd: Some(request::Cmd::Put(PutRequest {
                cf: CF_DEFAULT.to_string(),
                key: user_key(self.seq),
                value: raw_value::encode(&self.value, 0, 0),
            })),
        };
        let request = RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id: REGION_ID,
                peer: self.region.peers.first().copied(),
                region_epoch: self.region.region_epoch,
                proposal_id: 0,
            }),
            requests: vec![put],
            admin_request: None,
        };
        let (tx, rx) = oneshot::channel();
        let msg = PeerMsg::Command {
            request,
            callback: tx,
        };
        self.ctx
            .router
            .send(REGION_ID, msg)
            .expect("the region has a mailbox");
        rx
    }

    /// One poller round over the ready mailbox (the body of the poller's
    /// loop). With `sync` false the round's batch is written without an
    /// fsync, to see the CPU cost alone. Returns whether there was work.
    fn poll_round(&mut self, sync: bool) -> bool {
        let Ok(mailbox) = self.ready.try_recv() else {
            return false;
        };
        let ctx = &mut self.ctx;
        let mut peer = mailbox.peer.lock();
        for msg in mailbox.drain(MAX_MESSAGES_PER_PEER) {
            peer.handle(ctx, msg);
        }
        peer.flush_reads();
        peer.collect_ready(ctx);
        if sync {
            ctx.write_round();
        } else if !ctx.wb.is_empty() {
            let fresh = ctx.engine.write_batch();
            let wb = std::mem::replace(&mut ctx.wb, fresh);
            ctx.engine.write(wb, false).expect("raft log write");
            ctx.round_readies = 0;
        }
        peer.post_ready(ctx);
        drop(peer);
        ctx.flush_messages();
        ctx.router.release(&mailbox);
        true
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.ctx.apply.stop();
        self.ctx.router.close_all();
    }
}

fn raft_ready(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_ready");

    // One proposal per round: propose → ready → persist (fsync) → advance →
    // committed entry handed to apply. Apply runs on its own thread.
    {
        let mut f = Fixture::new();
        group.throughput(Throughput::Elements(1));
        group.bench_function("round/1_proposal/sync", |b| {
            b.iter(|| {
                drop(f.propose());
                f.poll_round(true);
            })
        });
        group.bench_function("round/1_proposal/nosync", |b| {
            b.iter(|| {
                drop(f.propose());
                f.poll_round(false);
            })
        });
    }

    // Sixteen proposals share one ready and one fsync (group commit).
    {
        let mut f = Fixture::new();
        group.throughput(Throughput::Elements(16));
        group.bench_function("round/16_proposals/sync", |b| {
            b.iter(|| {
                for _ in 0..16 {
                    drop(f.propose());
                }
                f.poll_round(true);
            })
        });
    }

    // Proposal until its callback says applied: the round above plus the
    // hand-off to the apply thread, its write, and the answer.
    {
        let mut f = Fixture::new();
        group.throughput(Throughput::Elements(1));
        group.bench_function("propose_to_applied/sync", |b| {
            b.iter(|| {
                let rx = f.propose();
                f.poll_round(true);
                rx.blocking_recv()
                    .expect("callback answered")
                    .expect("write applied");
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = raft_ready
}
criterion_main!(benches);
