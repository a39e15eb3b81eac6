//! Serving a `BatchCommands` stream: many requests per stream message, each
//! answered by id. The store's KV service and the router's client service
//! both speak it, each through its own unary calls (a [`BatchService`]), so
//! a batched request is answered exactly as the same request alone.
//!
//! Each request runs as its own task; answers are packed into response
//! messages as they complete, so one slow request (a write waiting for
//! raft) never holds back a fast one (a lease read).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::{kvrpcpb, routerpb};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::{Code, Status};

/// The response stream of a `BatchCommands` call.
pub type BatchStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How a server serves its `BatchCommands` streams.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Most requests of one stream being handled or answered but not yet
    /// sent back; beyond it the stream is not read, so HTTP/2 flow control
    /// pushes back on the sender.
    pub max_in_flight: usize,
    /// Turns true when the server shuts down: every stream answers the
    /// requests it has, refuses new ones unexecuted
    /// ([`REFUSED_SHUTTING_DOWN`]) for a moment, then ends, so a graceful
    /// shutdown neither waits for clients to hang up nor leaves a write's
    /// fate unknown. `None`: never.
    pub shutdown: Option<watch::Receiver<bool>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_in_flight: 4096,
            shutdown: None,
        }
    }
}

/// Completes once `shutdown` turns true or its sender is gone, as the
/// server's own shutdown does (never for `None`).
async fn shutting_down(shutdown: Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => crate::grpc::stopped(rx).await,
        None => std::future::pending().await,
    }
}

/// The status message of a request a shutting-down server refused without
/// executing it: the client may send it elsewhere.
pub const REFUSED_SHUTTING_DOWN: &str = "the server is shutting down; the request was not executed";

/// How long a shutting-down server keeps reading (and refusing) requests
/// before it stops reading its streams.
const REFUSE_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

/// Most requests or answers packed into one stream message.
const MAX_ITEMS_PER_MESSAGE: usize = 512;

/// Bytes after which no more requests or answers join a stream message
/// (one bigger item still travels alone), so a message stays far below
/// the gRPC message limit and big values do not hold back small ones.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The items for one stream message: `first`, then whatever `next` has
/// ready, until the count or byte budget is reached. The item that would
/// overflow the budget is returned apart, to start the next message.
pub fn gather<T>(
    first: T,
    mut next: impl FnMut() -> Option<T>,
    size: impl Fn(&T) -> usize,
) -> (Vec<T>, Option<T>) {
    let mut bytes = size(&first);
    let mut items = vec![first];
    while items.len() < MAX_ITEMS_PER_MESSAGE {
        let Some(item) = next() else {
            break;
        };
        bytes += size(&item);
        if bytes > MAX_MESSAGE_BYTES {
            return (items, Some(item));
        }
        items.push(item);
    }
    (items, None)
}

/// The messages of a `BatchCommands` protocol: requests and answers
/// packed many to a message, each with its id; a failed request's answer
/// carries the gRPC status its unary call would have failed with.
pub trait Envelope: Send + 'static {
    /// One request.
    type Cmd: Send + 'static;
    /// One answer.
    type Answer: Send + 'static;
    /// A stream message of requests.
    type Requests: Send + 'static;
    /// A stream message of answers.
    type Answers: Send + 'static;

    /// A message carrying `requests`.
    fn pack_requests(requests: Vec<(u64, Self::Cmd)>) -> Self::Requests;
    /// The requests of a message; `None` for one without a command.
    fn unpack_requests(message: Self::Requests) -> Vec<(u64, Option<Self::Cmd>)>;
    /// A message carrying `answers`.
    fn pack_answers(answers: Vec<(u64, Result<Self::Answer, Status>)>) -> Self::Answers;
    /// The answers of a message.
    fn unpack_answers(message: Self::Answers) -> Vec<(u64, Result<Self::Answer, Status>)>;
    /// The encoded size of a request.
    fn cmd_len(cmd: &Self::Cmd) -> usize;
    /// The encoded size of an answer.
    fn answer_len(answer: &Result<Self::Answer, Status>) -> usize;
}

/// The [`Envelope`] of a proto package's `BatchCommandsRequest` and
/// `BatchCommandsResponse` (the same shape in `kvrpcpb` and `routerpb`).
macro_rules! envelope {
    ($(#[$doc:meta])* $name:ident, $pb:ident) => {
        $(#[$doc])*
        pub struct $name;

        impl Envelope for $name {
            type Cmd = $pb::batch_commands_request::request::Cmd;
            type Answer = $pb::batch_commands_response::response::Cmd;
            type Requests = $pb::BatchCommandsRequest;
            type Answers = $pb::BatchCommandsResponse;

            fn pack_requests(requests: Vec<(u64, Self::Cmd)>) -> Self::Requests {
                $pb::BatchCommandsRequest {
                    requests: requests
                        .into_iter()
                        .map(|(id, cmd)| $pb::batch_commands_request::Request { id, cmd: Some(cmd) })
                        .collect(),
                }
            }

            fn unpack_requests(message: Self::Requests) -> Vec<(u64, Option<Self::Cmd>)> {
                message.requests.into_iter().map(|r| (r.id, r.cmd)).collect()
            }

            fn pack_answers(answers: Vec<(u64, Result<Self::Answer, Status>)>) -> Self::Answers {
                $pb::BatchCommandsResponse {
                    responses: answers
                        .into_iter()
                        .map(|(id, answer)| match answer {
                            Ok(cmd) => $pb::batch_commands_response::Response {
                                id,
                                cmd: Some(cmd),
                                ..Default::default()
                            },
                            Err(status) => $pb::batch_commands_response::Response {
                                id,
                                cmd: None,
                                status_code: status.code() as i32,
                                status_message: status.message().to_string(),
                            },
                        })
                        .collect(),
                }
            }

            fn unpack_answers(message: Self::Answers) -> Vec<(u64, Result<Self::Answer, Status>)> {
                message
                    .responses
                    .into_iter()
                    .map(|r| {
                        let answer = r.cmd.ok_or_else(|| {
                            Status::new(Code::from_i32(r.status_code), r.status_message)
                        });
                        (r.id, answer)
                    })
                    .collect()
            }

            fn cmd_len(cmd: &Self::Cmd) -> usize {
                cmd.encoded_len()
            }

            fn answer_len(answer: &Result<Self::Answer, Status>) -> usize {
                match answer {
                    Ok(cmd) => cmd.encoded_len(),
                    Err(status) => status.message().len(),
                }
            }
        }
    };
}

envelope!(
    /// The store's `kvrpcpb.Kv/BatchCommands`.
    KvEnvelope,
    kvrpcpb
);
envelope!(
    /// The router's `routerpb.RawKv/BatchCommands`.
    RouterEnvelope,
    routerpb
);

/// A service answering the requests of a batched stream one at a time.
pub trait BatchService: Clone + Send + Sync + 'static {
    /// The protocol's messages.
    type Envelope: Envelope;

    /// Answers one request, as the unary call for it would.
    fn answer(
        &self,
        cmd: <Self::Envelope as Envelope>::Cmd,
    ) -> impl Future<Output = Result<<Self::Envelope as Envelope>::Answer, Status>> + Send;
}

/// Answers every request arriving on `incoming` (the `tonic::Streaming`
/// of a `BatchCommands` handler) with `service`. The returned stream ends
/// once `incoming` has ended (or the server shuts down) and every request
/// read has been answered.
pub fn serve<S, I>(
    service: S,
    mut incoming: I,
    options: &ServeOptions,
) -> BatchStream<<S::Envelope as Envelope>::Answers>
where
    S: BatchService,
    I: Stream<Item = Result<<S::Envelope as Envelope>::Requests, Status>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(options.max_in_flight));
    let shutdown = shutting_down(options.shutdown.clone());
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        // After a shutdown, requests still arriving are refused unexecuted
        // for a short while (the client, seeing the refusal, stops sending
        // and retries elsewhere); then reading stops. Requests already
        // running still answer (into the void if the client is gone).
        let mut refusing_until: Option<tokio::time::Instant> = None;
        loop {
            let next = match refusing_until {
                Some(deadline) => tokio::time::timeout_at(deadline, incoming.next())
                    .await
                    .unwrap_or(None),
                None => tokio::select! {
                    next = incoming.next() => next,
                    () = &mut shutdown => {
                        refusing_until = Some(tokio::time::Instant::now() + REFUSE_AFTER_SHUTDOWN);
                        continue;
                    }
                },
            };
            let Some(Ok(message)) = next else {
                return;
            };
            for (id, cmd) in S::Envelope::unpack_requests(message) {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                if refusing_until.is_some() {
                    let refused = Status::unavailable(REFUSED_SHUTTING_DOWN);
                    let _ = tx.send((id, Err(refused), permit));
                    continue;
                }
                let (service, tx) = (service.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = match cmd {
                        Some(cmd) => service.answer(cmd).await,
                        None => Err(Status::invalid_argument(
                            "a batched request without a command",
                        )),
                    };
                    // The permit travels with the answer until it is
                    // packed: a client that does not read its answers
                    // stops the reading of its requests.
                    let _ = tx.send((id, answer, permit));
                });
            }
        }
    });
    let answer_len = |(_, answer, _): &(u64, _, _)| S::Envelope::answer_len(answer);
    Box::pin(futures::stream::unfold(
        (rx, None),
        move |(mut rx, carried)| async move {
            let first = match carried {
                Some(answer) => answer,
                None => rx.recv().await?,
            };
            let (answers, carry) = gather(first, || rx.try_recv().ok(), answer_len);
            let answers = answers
                .into_iter()
                .map(|(id, answer, _permit)| (id, answer));
            Some((
                Ok(S::Envelope::pack_answers(answers.collect())),
                (rx, carry),
            ))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::kvrpcpb::batch_commands_request::request::Cmd as Ask;
    use concord_proto::kvrpcpb::batch_commands_response::response::Cmd as Answer;
    use concord_proto::kvrpcpb::{RawGetRequest, RawGetResponse};
    use tokio_stream::wrappers::UnboundedReceiverStream;

    /// Answers a get with its key; an empty key waits forever.
    #[derive(Clone)]
    struct Echo;

    impl BatchService for Echo {
        type Envelope = KvEnvelope;

        async fn answer(&self, cmd: Ask) -> Result<Answer, Status> {
            match cmd {
                Ask::Get(r) if r.key.is_empty() => std::future::pending().await,
                Ask::Get(r) => Ok(Answer::Get(RawGetResponse {
                    value: r.key,
                    ..Default::default()
                })),
                _ => Err(Status::unimplemented("echo answers gets")),
            }
        }
    }

    fn gets(keys: &[&str]) -> kvrpcpb::BatchCommandsRequest {
        let requests = keys.iter().enumerate().map(|(id, key)| {
            let get = RawGetRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            };
            (id as u64, Ask::Get(get))
        });
        KvEnvelope::pack_requests(requests.collect())
    }

    type Requests = mpsc::UnboundedSender<Result<kvrpcpb::BatchCommandsRequest, Status>>;

    /// `Echo` serving one stream: the client's sending side, the server's
    /// shutdown switch and the answers.
    fn serve_echo() -> (
        Requests,
        watch::Sender<bool>,
        BatchStream<kvrpcpb::BatchCommandsResponse>,
    ) {
        let (requests, incoming) = mpsc::unbounded_channel();
        let (stop, shutdown) = watch::channel(false);
        let options = ServeOptions {
            shutdown: Some(shutdown),
            ..ServeOptions::default()
        };
        let answers = serve(Echo, UnboundedReceiverStream::new(incoming), &options);
        (requests, stop, answers)
    }

    #[tokio::test]
    async fn answers_come_back_by_id_and_after_a_shutdown_new_requests_are_refused() {
        let (requests, stop, mut answers) = serve_echo();
        requests.send(Ok(gets(&["a", "b", "c"]))).expect("send");
        let mut got = Vec::new();
        while got.len() < 3 {
            let message = answers.next().await.expect("answers").expect("ok");
            got.extend(KvEnvelope::unpack_answers(message));
        }
        got.sort_by_key(|(id, _)| *id);
        for ((id, answer), key) in got.into_iter().zip(["a", "b", "c"]) {
            let Ok(Answer::Get(r)) = answer else {
                panic!("{id}: {answer:?}");
            };
            assert_eq!(r.value, key.as_bytes());
        }
        // After a shutdown new requests are refused unexecuted, and the
        // stream ends once the client stops sending.
        stop.send(true).expect("signal");
        tokio::task::yield_now().await;
        requests.send(Ok(gets(&["d"]))).expect("send");
        let message = answers.next().await.expect("answer").expect("ok");
        let refused = KvEnvelope::unpack_answers(message);
        assert!(
            matches!(&refused[..], [(0, Err(s))] if s.message() == REFUSED_SHUTTING_DOWN),
            "{refused:?}"
        );
        drop(requests);
        assert!(answers.next().await.is_none());
    }

    #[tokio::test]
    async fn after_a_shutdown_a_stream_ends_even_if_the_client_keeps_it_open() {
        let (requests, stop, mut answers) = serve_echo();
        stop.send(true).expect("signal");
        assert!(answers.next().await.is_none());
        drop(requests);
    }

    #[test]
    fn gather_takes_what_is_ready_up_to_the_count_limit() {
        let mut ready = 1..;
        let (items, carry) = gather(0, || ready.next(), |_| 1);
        assert_eq!(items.len(), MAX_ITEMS_PER_MESSAGE);
        assert_eq!(items[..3], [0, 1, 2]);
        assert!(carry.is_none());
        let mut few = vec![2, 1].into_iter();
        assert_eq!(gather(0, || few.next(), |_| 1), (vec![0, 2, 1], None));
    }

    #[test]
    fn gather_carries_the_item_that_overflows_the_byte_budget() {
        let half = MAX_MESSAGE_BYTES / 2;
        let mut ready = vec![half, 10, 20].into_iter();
        let (items, carry) = gather(half + 1, || ready.next(), |&n| n);
        assert_eq!((items, carry), (vec![half + 1], Some(half)));
        assert_eq!(ready.next(), Some(10), "nothing taken beyond the overflow");
        // One item over the budget still travels, alone.
        let mut more = vec![1].into_iter();
        let big = MAX_MESSAGE_BYTES * 3;
        assert_eq!(gather(big, || more.next(), |&n| n), (vec![big], Some(1)));
    }
}
