//! The batched stream to a store ([`StoreClient`]): concurrent requests
//! share stream messages and each caller gets its own answer; a failure to
//! connect reads as "not sent", a stream that breaks under requests in
//! flight as "may have been applied".

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_common::batch_stream::BatchStream;
use concord_common::kv_batch;
use concord_proto::kvrpcpb::kv_client::KvClient;
use concord_proto::kvrpcpb::kv_server::Kv;
use concord_proto::kvrpcpb::*;
use concord_router::batch_client::StoreClient;
use concord_router::retry::connect_failed;
use futures::StreamExt;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status, Streaming};

type Answered<T> = Result<Response<T>, Status>;

/// Answers a get with its key as the value (an empty key is refused) and
/// never answers a put. Counts the stream messages it receives; breaks
/// every stream after `break_after` messages.
#[derive(Clone)]
struct EchoStore {
    messages: Arc<AtomicUsize>,
    break_after: usize,
}

#[allow(clippy::result_large_err)] // tonic's handler signature fixes the error type.
fn unimplemented<T>() -> Answered<T> {
    Err(Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl Kv for EchoStore {
    async fn raw_get(&self, req: Request<RawGetRequest>) -> Answered<RawGetResponse> {
        let key = req.into_inner().key;
        if key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        Ok(Response::new(RawGetResponse {
            value: key,
            ..Default::default()
        }))
    }
    async fn raw_put(&self, _: Request<RawPutRequest>) -> Answered<RawPutResponse> {
        futures::future::pending().await
    }
    async fn raw_batch_get(&self, _: Request<RawBatchGetRequest>) -> Answered<RawBatchGetResponse> {
        unimplemented()
    }
    async fn raw_batch_put(&self, _: Request<RawBatchPutRequest>) -> Answered<RawBatchPutResponse> {
        unimplemented()
    }
    async fn raw_delete(&self, _: Request<RawDeleteRequest>) -> Answered<RawDeleteResponse> {
        unimplemented()
    }
    async fn raw_delete_range(
        &self,
        _: Request<RawDeleteRangeRequest>,
    ) -> Answered<RawDeleteRangeResponse> {
        unimplemented()
    }
    async fn raw_scan(&self, _: Request<RawScanRequest>) -> Answered<RawScanResponse> {
        unimplemented()
    }
    async fn raw_compare_and_swap(&self, _: Request<RawCasRequest>) -> Answered<RawCasResponse> {
        unimplemented()
    }
    async fn split_region(&self, _: Request<SplitRegionRequest>) -> Answered<SplitRegionResponse> {
        unimplemented()
    }
    async fn region_checksum(
        &self,
        _: Request<RegionChecksumRequest>,
    ) -> Answered<RegionChecksumResponse> {
        unimplemented()
    }

    type BatchCommandsStream = BatchStream<BatchCommandsResponse>;

    async fn batch_commands(
        &self,
        req: Request<Streaming<BatchCommandsRequest>>,
    ) -> Answered<Self::BatchCommandsStream> {
        let messages = self.messages.clone();
        let break_after = self.break_after;
        let broken = Arc::new(Notify::new());
        let breaking = broken.clone();
        #[allow(clippy::result_large_err)]
        let incoming = req.into_inner().enumerate().map(move |(n, m)| {
            messages.fetch_add(1, Ordering::SeqCst);
            if n >= break_after {
                breaking.notify_one();
                Err(Status::unavailable("scripted break"))
            } else {
                m
            }
        });
        // Once the incoming stream breaks, so does the response stream,
        // with requests still unanswered.
        let out = kv_batch::serve(self.clone(), Box::pin(incoming), &Default::default())
            .take_until(async move { broken.notified().await })
            .chain(futures::stream::once(async {
                Err(Status::unavailable("scripted break"))
            }));
        Ok(Response::new(Box::pin(out)))
    }
}

async fn start(break_after: usize) -> (StoreClient, Arc<AtomicUsize>) {
    let messages = Arc::new(AtomicUsize::new(0));
    let addr = common::serve_fake_store(EchoStore {
        messages: messages.clone(),
        break_after,
    })
    .await;
    (client(&addr.to_string()), messages)
}

fn client(addr: &str) -> StoreClient {
    let channel =
        concord_router::store_conn::lazy_channel(addr, Duration::from_secs(1)).expect("channel");
    StoreClient::new(KvClient::new(channel))
}

fn get(key: &[u8]) -> RawGetRequest {
    RawGetRequest {
        context: None,
        key: key.to_vec(),
    }
}

#[tokio::test]
async fn concurrent_requests_share_messages_and_each_caller_gets_its_answer() {
    let (store, messages) = start(usize::MAX).await;
    let callers: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { (i, store.raw_get(get(format!("key{i}").as_bytes())).await) })
        })
        .collect();
    for caller in callers {
        let (i, answer) = caller.await.expect("caller");
        assert_eq!(
            answer.expect("answer").value,
            format!("key{i}").into_bytes()
        );
    }
    let sent = messages.load(Ordering::SeqCst);
    assert!(
        sent < 20,
        "200 concurrent requests took {sent} stream messages"
    );
}

#[tokio::test]
async fn a_failed_request_keeps_its_status_and_the_stream_goes_on() {
    let (store, _) = start(usize::MAX).await;
    let refused = store.raw_get(get(b"")).await.expect_err("empty key");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "key must not be empty");
    assert_eq!(store.raw_get(get(b"k")).await.expect("next").value, b"k");
}

#[tokio::test]
async fn a_request_over_the_stores_limit_is_refused_before_sending() {
    let (store, messages) = start(usize::MAX).await;
    let huge = RawPutRequest {
        key: b"k".to_vec(),
        value: vec![0; concord_common::limits::MAX_STORE_REQUEST_SIZE],
        ..Default::default()
    };
    let refused = store.raw_put(huge).await.expect_err("too big");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(messages.load(Ordering::SeqCst), 0, "nothing sent");
    assert_eq!(
        store.raw_get(get(b"k")).await.expect("stream fine").value,
        b"k"
    );
}

#[tokio::test]
async fn a_store_nobody_listens_on_fails_as_not_sent() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let status = client(&closed.to_string())
        .raw_get(get(b"k"))
        .await
        .expect_err("nothing listens");
    assert!(connect_failed(&status), "{status:?}");
}

#[tokio::test]
async fn requests_in_flight_when_the_stream_breaks_may_have_applied_and_the_next_reopens_it() {
    // The first message (a put the store never answers) goes through; the
    // second breaks the stream under it.
    let (store, _) = start(1).await;
    let put = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .raw_put(RawPutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await
        })
    };
    // Wait until the put is on the stream, then break it with a get.
    let broke = loop {
        match store.raw_get(get(b"a")).await {
            Ok(_) => tokio::task::yield_now().await,
            Err(status) => break status,
        }
    };
    let status = put.await.expect("put task").expect_err("stream broke");
    assert!(!connect_failed(&status), "{status:?}");
    assert!(!connect_failed(&broke), "{broke:?}");
    // The next request opens a new stream.
    assert_eq!(
        store.raw_get(get(b"b")).await.expect("reopened").value,
        b"b"
    );
}
