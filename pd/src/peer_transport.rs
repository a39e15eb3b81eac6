//! Member-to-member transport of a replicated PD: the `PdPeer` gRPC service
//! that receives raft messages, and [`PeerSender`], which sends them in
//! batches, one queue and one lazily (re)connecting channel per member.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::pd_raftpb::pd_peer_client::PdPeerClient;
use concord_proto::pd_raftpb::pd_peer_server::PdPeer;
use concord_proto::pd_raftpb::{RaftBatch, RaftBatchResponse};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::error::{PdServerError, Result};
use crate::members::Membership;
use crate::replication::Inbox;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes a batch may take per second on top of [`SEND_TIMEOUT`] (a
/// snapshot carries all the metadata).
const SEND_BYTES_PER_SEC: usize = 4 << 20;
/// Largest batch a member accepts: room for the metadata of millions of
/// regions in one snapshot.
pub const MAX_BATCH_BYTES: usize = 1 << 30;
const MAX_BATCH: usize = 512;

/// Sends raft messages to the other members.
pub struct PeerSender {
    queues: HashMap<u64, mpsc::UnboundedSender<Message>>,
}

impl PeerSender {
    /// One sending task per other member, on `runtime` (required when
    /// there are other members); whether each snapshot got through is
    /// reported to `inbox`.
    pub fn start(
        members: &Arc<Membership>,
        runtime: Option<&tokio::runtime::Handle>,
        inbox: Inbox,
    ) -> Result<Self> {
        let peers = members.peers();
        let mut queues = HashMap::new();
        if peers.is_empty() {
            return Ok(PeerSender { queues });
        }
        let runtime = runtime.ok_or_else(|| {
            PdServerError::Config(
                "a multi-member PD needs a tokio runtime for its transport".into(),
            )
        })?;
        for (id, url) in peers {
            let endpoint = concord_common::grpc::endpoint(&url, CONNECT_TIMEOUT)
                .map_err(|e| PdServerError::Config(format!("PD peer: {e}")))?;
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(send_loop(url, endpoint, members.clone(), rx, inbox.clone()));
            queues.insert(id, tx);
        }
        Ok(PeerSender { queues })
    }

    /// Queues `msgs` for their receivers (messages to unknown members are
    /// dropped; raft retransmits what gets lost).
    pub fn send(&self, msgs: Vec<Message>) {
        for msg in msgs {
            if let Some(queue) = self.queues.get(&msg.to) {
                let _ = queue.send(msg);
            }
        }
    }
}

async fn send_loop(
    url: String,
    endpoint: Endpoint,
    members: Arc<Membership>,
    mut queue: mpsc::UnboundedReceiver<Message>,
    inbox: Inbox,
) {
    let new_client = || PdPeerClient::new(endpoint.connect_lazy());
    let mut client = new_client();
    let mut failing = false;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let messages: Vec<Vec<u8>> = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        let bytes: usize = messages.iter().map(Vec::len).sum();
        let timeout = SEND_TIMEOUT + Duration::from_secs((bytes / SEND_BYTES_PER_SEC) as u64);
        let snapshot_to = batch
            .iter()
            .find(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .map(|m| m.to);
        let request = RaftBatch {
            from: Some(members.me().clone()),
            messages,
        };
        let outcome = tokio::time::timeout(timeout, client.send(request)).await;
        if let Some(to) = snapshot_to {
            inbox.report_snapshot(to, matches!(outcome, Ok(Ok(_))));
        }
        match outcome {
            Ok(Ok(resp)) => {
                if failing {
                    tracing::info!(%url, "PD peer reachable again");
                    failing = false;
                }
                if let Some(info) = resp.into_inner().from {
                    members.record(info);
                }
            }
            Ok(Err(status)) => {
                if !failing {
                    tracing::warn!(%url, %status, "cannot reach PD peer");
                    failing = true;
                }
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(%url, "sending to PD peer timed out");
                    failing = true;
                }
                // The connection may be dead without knowing it: start over.
                client = new_client();
            }
        }
    }
}

/// The `PdPeer` gRPC service: hands received raft messages to this
/// member's raft thread.
pub struct PeerService {
    inbox: Inbox,
    members: Arc<Membership>,
}

impl PeerService {
    /// A service delivering to `inbox`.
    pub fn new(inbox: Inbox, members: Arc<Membership>) -> Self {
        PeerService { inbox, members }
    }
}

#[tonic::async_trait]
impl PdPeer for PeerService {
    async fn send(
        &self,
        request: Request<RaftBatch>,
    ) -> std::result::Result<Response<RaftBatchResponse>, Status> {
        let batch = request.into_inner();
        if let Some(from) = batch.from {
            self.members.record(from);
        }
        let me = self.members.me().id;
        for bytes in &batch.messages {
            let msg = Message::parse_from_bytes(bytes)
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            if msg.to == me {
                self.inbox.deliver(msg);
            }
        }
        Ok(Response::new(RaftBatchResponse {
            from: Some(self.members.me().clone()),
        }))
    }
}
