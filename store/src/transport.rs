//! Store-to-store raft traffic over gRPC.
//!
//! Sending: one long-lived client stream per destination store carries
//! batches of raft messages; a bounded queue sits in front of it and drops
//! batches when full (raft retransmits). A broken stream is reconnected with
//! backoff, re-resolving the store's address from PD. Snapshot messages go
//! on their own stream, split into chunks, and their outcome is reported to
//! the sending peer.
//!
//! Receiving: [`RaftService`] hands each message to the region's peer, or
//! creates the peer for a region this store does not have yet.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use concord_common::pd_client::PdClient;
use concord_proto::raft_serverpb::raft_client::RaftClient;
use concord_proto::raft_serverpb::raft_server::Raft;
use concord_proto::raft_serverpb::{Done, RaftMessage, RaftMessageBatch, SnapshotChunk};
use dashmap::DashMap;
use futures::StreamExt;
use protobuf::Message as _;
use raft::eraftpb;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::raftstore::store::deliver_raft_message;
use crate::raftstore::{PeerMsg, StoreRouter, StoreServices, Transport};

/// Sends raft messages to other stores over gRPC.
pub struct GrpcTransport {
    pd: Arc<dyn PdClient>,
    runtime: tokio::runtime::Handle,
    queues: DashMap<u64, mpsc::Sender<Vec<RaftMessage>>>,
    router: parking_lot::RwLock<Option<StoreRouter>>,
    queue_size: usize,
    chunk_size: usize,
}

impl GrpcTransport {
    /// A transport resolving store addresses through `pd`, running its
    /// connections on `runtime`.
    pub fn new(
        pd: Arc<dyn PdClient>,
        runtime: tokio::runtime::Handle,
        queue_size: usize,
        chunk_size: usize,
    ) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            pd,
            runtime,
            queues: DashMap::new(),
            router: parking_lot::RwLock::new(None),
            queue_size,
            chunk_size,
        })
    }

    /// Where to report snapshot outcomes (set once the store has started).
    pub fn set_router(&self, router: StoreRouter) {
        *self.router.write() = Some(router);
    }

    fn queue(&self, store_id: u64) -> mpsc::Sender<Vec<RaftMessage>> {
        self.queues
            .entry(store_id)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(self.queue_size);
                self.runtime
                    .spawn(run_connection(self.pd.clone(), store_id, rx));
                tx
            })
            .clone()
    }
}

impl Transport for GrpcTransport {
    fn send(&self, store_id: u64, msgs: Vec<RaftMessage>) {
        if !msgs.is_empty() && self.queue(store_id).try_send(msgs).is_err() {
            debug!(store_id, "raft queue full or closed; dropping a batch");
        }
    }

    fn send_snapshot(&self, store_id: u64, msg: RaftMessage, data: Bytes) {
        let pd = self.pd.clone();
        let router = self.router.read().clone();
        let chunk_size = self.chunk_size;
        self.runtime.spawn(async move {
            let (region_id, to_peer_id) = (msg.region_id, msg.to_peer.map_or(0, |p| p.id));
            let delivered = match send_snapshot(&*pd, store_id, msg, data, chunk_size).await {
                Ok(()) => true,
                Err(e) => {
                    info!(region_id, store_id, "sending snapshot failed: {e}");
                    false
                }
            };
            if let Some(router) = router {
                let _ = router.send(
                    region_id,
                    PeerMsg::SnapshotStatus {
                        to_peer_id,
                        delivered,
                    },
                );
            }
        });
    }
}

async fn connect(pd: &dyn PdClient, store_id: u64) -> Result<RaftClient<Channel>, String> {
    let store = pd.get_store(store_id).await.map_err(|e| e.to_string())?;
    let channel = concord_common::grpc::endpoint(&store.address, Duration::from_secs(3))?
        .connect()
        .await
        .map_err(|e| format!("connecting to store {store_id} at {}: {e}", store.address))?;
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Keeps one stream open to `store_id` and forwards queued batches to it.
async fn run_connection(
    pd: Arc<dyn PdClient>,
    store_id: u64,
    mut rx: mpsc::Receiver<Vec<RaftMessage>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut client = match connect(&*pd, store_id).await {
            Ok(c) => {
                backoff = Duration::from_millis(100);
                c
            }
            Err(e) => {
                debug!(store_id, "raft connection: {e}");
                // Drop what queued up meanwhile; raft will resend.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (tx, stream_rx) = mpsc::channel::<RaftMessageBatch>(16);
        let call = tokio::spawn(async move {
            client
                .raft(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                .await
        });
        loop {
            let Some(msgs) = rx.recv().await else { return };
            if tx.send(RaftMessageBatch { msgs }).await.is_err() {
                break;
            }
        }
        let _ = call.await;
        debug!(store_id, "raft stream closed; reconnecting");
    }
}

/// Streams `msg` (its snapshot's payload left out) and then `data` in
/// chunks, each copied out of `data` only when the stream takes it.
async fn send_snapshot(
    pd: &dyn PdClient,
    store_id: u64,
    msg: RaftMessage,
    data: Bytes,
    chunk_size: usize,
) -> Result<(), String> {
    let chunk_size = chunk_size.max(1);
    let first = SnapshotChunk {
        message: Some(msg),
        data: Vec::new(),
    };
    let rest = (0..data.len())
        .step_by(chunk_size)
        .map(move |at| SnapshotChunk {
            message: None,
            data: data[at..data.len().min(at + chunk_size)].to_vec(),
        });
    let mut client = connect(pd, store_id).await?;
    client
        .snapshot(futures::stream::iter(std::iter::once(first).chain(rest)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The receiving side of the raft transport.
pub struct RaftService {
    services: StoreServices,
}

impl RaftService {
    /// A service delivering into this store's peers.
    pub fn new(services: StoreServices) -> RaftService {
        RaftService { services }
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftMessageBatch>>,
    ) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.next().await {
            for msg in batch?.msgs {
                deliver_raft_message(&self.services, msg);
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let mut msg = first.message.ok_or_else(|| {
            Status::invalid_argument("the first snapshot chunk carries no message")
        })?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?.data);
        }
        let mut raft_msg = eraftpb::Message::parse_from_bytes(&msg.message)
            .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
        raft_msg.mut_snapshot().data = data.into();
        msg.message = raft_msg
            .write_to_bytes()
            .map_err(|e| Status::internal(e.to_string()))?;
        deliver_raft_message(&self.services, msg);
        Ok(Response::new(Done {}))
    }
}
