//! [`BatchClient`]: the raw KV calls of a store or of a router,
//! multiplexed over one long-lived `BatchCommands` stream. Requests made
//! while earlier ones are on their way are packed into the next stream
//! message, so under load one HTTP/2 frame and one wake-up on each side
//! carry many requests, instead of one HTTP/2 stream (headers, data,
//! trailers) per request. [`StoreClient`] talks to a store, [`RouterClient`]
//! to a router.
//!
//! A failure to open the stream, a request that never reached it, or one a
//! shutting-down server refused unexecuted fails with a status
//! [`crate::retry::connect_failed`] recognizes (the request was not sent);
//! requests in flight when the stream breaks fail as `Unavailable`: they
//! may have been applied.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use concord_common::batch_stream::{
    gather, Envelope, KvEnvelope, RouterEnvelope, REFUSED_SHUTTING_DOWN,
};
use concord_proto::kvrpcpb::{self, kv_client::KvClient};
use concord_proto::routerpb::{self, raw_kv_client::RawKvClient};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Most requests waiting to join a stream message; callers beyond it wait.
const QUEUE: usize = 4096;

/// The source of a status for a request that never went out.
#[derive(Debug)]
pub struct NotSent(String);

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request not sent: {}", self.0)
    }
}

impl std::error::Error for NotSent {}

/// A status saying the request was not sent, for `reason`.
fn not_sent(reason: &str) -> Status {
    marked_not_sent(
        Status::unavailable(format!("request not sent: {reason}")),
        reason,
    )
}

/// `status`, marked (by its source) as failing a request that was not sent.
fn marked_not_sent(mut status: Status, reason: &str) -> Status {
    status.set_source(Arc::new(NotSent(reason.to_string())));
    status
}

/// A client of a service with a `BatchCommands` stream.
pub trait Batching: Send + 'static {
    /// The protocol's messages.
    type Envelope: Envelope;

    /// Largest request the server decodes. A bigger one is refused here:
    /// sent, it would break the stream under every other request on it.
    const MAX_REQUEST_SIZE: usize;

    /// Opens a stream sending `requests`.
    fn open(
        &mut self,
        requests: UnboundedReceiverStream<Requests<Self>>,
    ) -> impl Future<Output = Result<Streaming<Answers<Self>>, Status>> + Send;

    /// The status of a request the server answered as failed, marked the
    /// way the unary call's status would be.
    fn answered(status: Status) -> Status {
        status
    }
}

type Cmd<B> = <<B as Batching>::Envelope as Envelope>::Cmd;
type Answer<B> = <<B as Batching>::Envelope as Envelope>::Answer;
type Requests<B> = <<B as Batching>::Envelope as Envelope>::Requests;
type Answers<B> = <<B as Batching>::Envelope as Envelope>::Answers;

type Reply<B> = oneshot::Sender<Result<Answer<B>, Status>>;

/// A request waiting to be packed into a stream message.
struct Call<B: Batching> {
    cmd: Cmd<B>,
    reply: Reply<B>,
}

/// The calls of one server over one batched stream. Cheap to clone; the
/// stream closes when the last clone is dropped.
pub struct BatchClient<B: Batching> {
    calls: mpsc::Sender<Call<B>>,
}

impl<B: Batching> Clone for BatchClient<B> {
    fn clone(&self) -> Self {
        BatchClient {
            calls: self.calls.clone(),
        }
    }
}

impl<B: Batching> fmt::Debug for BatchClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchClient").finish_non_exhaustive()
    }
}

impl<B: Batching> BatchClient<B> {
    /// A client sending over `service`. The stream opens with the first
    /// request and reopens with the next request after it breaks.
    pub fn new(service: B) -> BatchClient<B> {
        let (calls, rx) = mpsc::channel(QUEUE);
        tokio::spawn(drive(service, rx));
        BatchClient { calls }
    }

    async fn call(&self, cmd: Cmd<B>) -> Result<Answer<B>, Status> {
        let size = B::Envelope::cmd_len(&cmd);
        if size > B::MAX_REQUEST_SIZE {
            return Err(Status::invalid_argument(format!(
                "a request of {size} bytes is over the server's limit of {} bytes",
                B::MAX_REQUEST_SIZE
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call { cmd, reply })
            .await
            .map_err(|_| not_sent("the stream task has stopped"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("the stream closed with the request"))?
    }
}

/// An open stream and the requests sent on it that wait for answers.
struct Stream<B: Batching> {
    /// `None` once the server refused a request because it is shutting
    /// down: nothing more is sent (the stream is half-closed) while the
    /// answers still due come in.
    requests: Option<mpsc::UnboundedSender<Requests<B>>>,
    answers: Streaming<Answers<B>>,
    pending: HashMap<u64, Reply<B>>,
}

impl<B: Batching> Stream<B> {
    async fn open(service: &mut B) -> Result<Stream<B>, Status> {
        let (requests, rx) = mpsc::unbounded_channel();
        let answers = service.open(UnboundedReceiverStream::new(rx)).await?;
        Ok(Stream {
            requests: Some(requests),
            answers,
            pending: HashMap::new(),
        })
    }

    /// Answers every pending request with `status`.
    fn fail_pending(&mut self, status: &Status) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(status.clone()));
        }
    }

    /// Sends `batch` as one message; the stream back if still usable.
    fn send(mut self, batch: Vec<Call<B>>, next_id: &mut u64) -> Option<Stream<B>> {
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        // Callers that gave up (timed out) are not sent for.
        for call in batch.into_iter().filter(|c| !c.reply.is_closed()) {
            *next_id += 1;
            requests.push((*next_id, call.cmd));
            replies.push((*next_id, call.reply));
        }
        if requests.is_empty() {
            return Some(self);
        }
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|tx| tx.send(B::Envelope::pack_requests(requests)).is_ok());
        if !sent {
            // The transport dropped the stream's sending half: this message
            // cannot have gone out, the earlier ones may have.
            for (_, reply) in replies {
                let _ = reply.send(Err(not_sent("the stream is closed")));
            }
            self.fail_pending(&Status::unavailable("the stream closed"));
            return None;
        }
        self.pending.extend(replies);
        Some(self)
    }
}

/// What woke the stream task.
enum Event<B: Batching> {
    Call(Option<Call<B>>),
    Answers(Result<Option<Answers<B>>, Status>),
}

/// The stream task: packs queued calls into messages and routes answers
/// back by id, until every [`BatchClient`] clone is gone.
async fn drive<B: Batching>(mut service: B, mut calls: mpsc::Receiver<Call<B>>) {
    let mut stream: Option<Stream<B>> = None;
    let mut next_id = 0u64;
    // A call that did not fit in the last message.
    let mut carried: Option<Call<B>> = None;
    loop {
        let event = match (carried.take(), stream.as_mut()) {
            // Closing: only the answers still due, then a new stream.
            (carried_call, Some(s)) if s.requests.is_none() => {
                carried = carried_call;
                Event::Answers(s.answers.message().await)
            }
            (Some(call), _) => Event::Call(Some(call)),
            (None, Some(s)) => tokio::select! {
                call = calls.recv() => Event::Call(call),
                answers = s.answers.message() => Event::Answers(answers),
            },
            (None, None) => Event::Call(calls.recv().await),
        };
        match event {
            Event::Call(None) => return,
            Event::Call(Some(first)) => {
                let (batch, carry) = gather(
                    first,
                    || calls.try_recv().ok(),
                    |call| B::Envelope::cmd_len(&call.cmd),
                );
                carried = carry;
                let s = match stream.take() {
                    Some(s) => s,
                    None => match Stream::open(&mut service).await {
                        Ok(s) => s,
                        Err(status) => {
                            // Requests go out only on an open stream:
                            // nothing was sent, whatever the failure.
                            let status = marked_not_sent(status, "the stream could not be opened");
                            for call in batch {
                                let _ = call.reply.send(Err(status.clone()));
                            }
                            continue;
                        }
                    },
                };
                stream = s.send(batch, &mut next_id);
            }
            Event::Answers(Ok(Some(message))) => {
                if let Some(s) = stream.as_mut() {
                    for (id, answer) in B::Envelope::unpack_answers(message) {
                        let Some(reply) = s.pending.remove(&id) else {
                            continue;
                        };
                        let answer = match answer {
                            Err(status) if status.message() == REFUSED_SHUTTING_DOWN => {
                                s.requests = None;
                                Err(not_sent("the server is shutting down"))
                            }
                            other => other.map_err(B::answered),
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
            Event::Answers(end) => {
                let status = end
                    .err()
                    .unwrap_or_else(|| Status::unavailable("the server closed the stream"));
                if let Some(mut s) = stream.take() {
                    s.fail_pending(&status);
                }
            }
        }
    }
}

/// Typed calls over a [`BatchClient`]: `method(Request) -> Response = Variant`.
macro_rules! typed_calls {
    ($service:ty, $pb:ident; $($name:ident($req:ident) -> $resp:ident = $variant:ident;)*) => {
        impl BatchClient<$service> {
            $(#[doc = concat!("The `", stringify!($variant), "` request.")]
            pub async fn $name(&self, request: $pb::$req) -> Result<$pb::$resp, Status> {
                use $pb::batch_commands_request::request::Cmd as Ask;
                use $pb::batch_commands_response::response::Cmd as Answer;
                match self.call(Ask::$variant(request)).await? {
                    Answer::$variant(response) => Ok(response),
                    #[allow(unreachable_patterns)]
                    _ => Err(Status::internal(concat!(
                        "the server answered ",
                        stringify!($name),
                        " with another kind of response"
                    ))),
                }
            })*
        }
    };
}

/// The raw KV calls of one store.
pub type StoreClient = BatchClient<KvClient<Channel>>;

impl Batching for KvClient<Channel> {
    type Envelope = KvEnvelope;
    const MAX_REQUEST_SIZE: usize = concord_common::limits::MAX_STORE_REQUEST_SIZE;

    async fn open(
        &mut self,
        requests: UnboundedReceiverStream<Requests<Self>>,
    ) -> Result<Streaming<Answers<Self>>, Status> {
        Ok(self.batch_commands(requests).await?.into_inner())
    }
}

typed_calls! {
    KvClient<Channel>, kvrpcpb;
    raw_get(RawGetRequest) -> RawGetResponse = Get;
    raw_batch_get(RawBatchGetRequest) -> RawBatchGetResponse = BatchGet;
    raw_put(RawPutRequest) -> RawPutResponse = Put;
    raw_batch_put(RawBatchPutRequest) -> RawBatchPutResponse = BatchPut;
    raw_delete(RawDeleteRequest) -> RawDeleteResponse = Delete;
    raw_delete_range(RawDeleteRangeRequest) -> RawDeleteRangeResponse = DeleteRange;
    raw_scan(RawScanRequest) -> RawScanResponse = Scan;
    raw_compare_and_swap(RawCasRequest) -> RawCasResponse = Cas;
}

/// The calls of one router.
pub type RouterClient = BatchClient<RawKvClient<Channel>>;

impl Batching for RawKvClient<Channel> {
    type Envelope = RouterEnvelope;
    const MAX_REQUEST_SIZE: usize = crate::store_conn::MAX_MESSAGE_SIZE;

    /// The router's own errors are final for its clients, transport
    /// failures are not; see [`crate::Error::from_router_status`].
    fn answered(status: Status) -> Status {
        crate::Error::mark_router_status(status)
    }

    async fn open(
        &mut self,
        requests: UnboundedReceiverStream<Requests<Self>>,
    ) -> Result<Streaming<Answers<Self>>, Status> {
        Ok(self.batch_commands(requests).await?.into_inner())
    }
}

typed_calls! {
    RawKvClient<Channel>, routerpb;
    get(GetRequest) -> GetResponse = Get;
    batch_get(BatchGetRequest) -> BatchGetResponse = BatchGet;
    put(PutRequest) -> PutResponse = Put;
    batch_put(BatchPutRequest) -> BatchPutResponse = BatchPut;
    delete(DeleteRequest) -> DeleteResponse = Delete;
    delete_range(DeleteRangeRequest) -> DeleteRangeResponse = DeleteRange;
    scan(ScanRequest) -> ScanResponse = Scan;
    compare_and_swap(CasRequest) -> CasResponse = Cas;
}
