//! The store's KV service (any `kvrpcpb.Kv`: the store, test doubles) as a
//! [`BatchService`]: each request of a `BatchCommands` stream goes through
//! the service's own unary call.

use concord_proto::kvrpcpb::batch_commands_request::request::Cmd as Ask;
use concord_proto::kvrpcpb::batch_commands_response::response::Cmd as Answer;
use concord_proto::kvrpcpb::kv_server::Kv;
use concord_proto::kvrpcpb::{BatchCommandsRequest, BatchCommandsResponse};
use tonic::{Request, Status};

use crate::batch_stream::{self, BatchService, BatchStream, KvEnvelope, ServeOptions};

/// A `kvrpcpb.Kv` implementation answering batched requests.
#[derive(Clone)]
pub struct KvBatch<K>(pub K);

/// Serves one `BatchCommands` call of `service`.
pub fn serve<K, I>(
    service: K,
    incoming: I,
    options: &ServeOptions,
) -> BatchStream<BatchCommandsResponse>
where
    K: Kv + Clone,
    I: futures::Stream<Item = Result<BatchCommandsRequest, Status>> + Send + Unpin + 'static,
{
    batch_stream::serve(KvBatch(service), incoming, options)
}

impl<K: Kv + Clone> BatchService for KvBatch<K> {
    type Envelope = KvEnvelope;

    async fn answer(&self, cmd: Ask) -> Result<Answer, Status> {
        let k = &self.0;
        match cmd {
            Ask::Get(r) => k
                .raw_get(Request::new(r))
                .await
                .map(|r| Answer::Get(r.into_inner())),
            Ask::BatchGet(r) => k
                .raw_batch_get(Request::new(r))
                .await
                .map(|r| Answer::BatchGet(r.into_inner())),
            Ask::Put(r) => k
                .raw_put(Request::new(r))
                .await
                .map(|r| Answer::Put(r.into_inner())),
            Ask::BatchPut(r) => k
                .raw_batch_put(Request::new(r))
                .await
                .map(|r| Answer::BatchPut(r.into_inner())),
            Ask::Delete(r) => k
                .raw_delete(Request::new(r))
                .await
                .map(|r| Answer::Delete(r.into_inner())),
            Ask::DeleteRange(r) => k
                .raw_delete_range(Request::new(r))
                .await
                .map(|r| Answer::DeleteRange(r.into_inner())),
            Ask::Scan(r) => k
                .raw_scan(Request::new(r))
                .await
                .map(|r| Answer::Scan(r.into_inner())),
            Ask::Cas(r) => k
                .raw_compare_and_swap(Request::new(r))
                .await
                .map(|r| Answer::Cas(r.into_inner())),
        }
    }
}
