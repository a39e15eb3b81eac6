//! The client-facing gRPC service (`routerpb.RawKv`): the raw KV operations
//! without region context, answered through the [`Router`]. Region errors
//! never leave the router; a client gets a result or one error status
//! (see [`crate::error::Error::to_status`]).

use std::sync::Arc;

use concord_common::batch_stream::{self, BatchService, BatchStream, RouterEnvelope, ServeOptions};
use concord_proto::routerpb::batch_commands_request::request::Cmd as Ask;
use concord_proto::routerpb::batch_commands_response::response::Cmd as Answer;
use concord_proto::routerpb::{self, raw_kv_server::RawKv};
use tonic::{Request, Response, Status, Streaming};

use crate::routing::Router;

/// The `RawKv` service over a shared [`Router`].
#[derive(Clone)]
pub struct RouterService {
    router: Arc<Router>,
    batching: ServeOptions,
}

impl RouterService {
    /// The service answering through `router`; its `BatchCommands` streams
    /// are served with `batching`.
    pub fn new(router: Arc<Router>, batching: ServeOptions) -> RouterService {
        RouterService { router, batching }
    }
}

type Answered<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RawKv for RouterService {
    async fn get(&self, req: Request<routerpb::GetRequest>) -> Answered<routerpb::GetResponse> {
        let req = req.into_inner();
        let value = self.router.get(&req.key).await.map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::GetResponse {
            not_found: value.is_none(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn batch_get(
        &self,
        req: Request<routerpb::BatchGetRequest>,
    ) -> Answered<routerpb::BatchGetResponse> {
        let req = req.into_inner();
        let pairs = self
            .router
            .batch_get(&req.keys)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::BatchGetResponse { pairs }))
    }

    async fn put(&self, req: Request<routerpb::PutRequest>) -> Answered<routerpb::PutResponse> {
        let req = req.into_inner();
        self.router
            .put(&req.key, &req.value, req.ttl)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::PutResponse {}))
    }

    async fn batch_put(
        &self,
        req: Request<routerpb::BatchPutRequest>,
    ) -> Answered<routerpb::BatchPutResponse> {
        let req = req.into_inner();
        self.router
            .batch_put(&req.pairs, req.ttl)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::BatchPutResponse {}))
    }

    async fn delete(
        &self,
        req: Request<routerpb::DeleteRequest>,
    ) -> Answered<routerpb::DeleteResponse> {
        let req = req.into_inner();
        self.router
            .delete(&req.key)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::DeleteResponse {}))
    }

    async fn delete_range(
        &self,
        req: Request<routerpb::DeleteRangeRequest>,
    ) -> Answered<routerpb::DeleteRangeResponse> {
        let req = req.into_inner();
        self.router
            .delete_range(&req.start_key, &req.end_key)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::DeleteRangeResponse {}))
    }

    async fn scan(&self, req: Request<routerpb::ScanRequest>) -> Answered<routerpb::ScanResponse> {
        let req = req.into_inner();
        let kvs = self
            .router
            .scan(
                &req.start_key,
                &req.end_key,
                req.limit,
                req.reverse,
                req.key_only,
            )
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::ScanResponse { kvs }))
    }

    async fn compare_and_swap(
        &self,
        req: Request<routerpb::CasRequest>,
    ) -> Answered<routerpb::CasResponse> {
        let req = req.into_inner();
        let previous = (!req.previous_not_exist).then_some(req.previous_value.as_slice());
        let outcome = self
            .router
            .compare_and_swap(&req.key, previous, &req.value, req.ttl)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::CasResponse {
            succeed: outcome.succeed,
            previous_not_exist: outcome.previous.is_none(),
            previous_value: outcome.previous.unwrap_or_default(),
        }))
    }

    type BatchCommandsStream = BatchStream<routerpb::BatchCommandsResponse>;

    async fn batch_commands(
        &self,
        req: Request<Streaming<routerpb::BatchCommandsRequest>>,
    ) -> Answered<Self::BatchCommandsStream> {
        Ok(Response::new(batch_stream::serve(
            self.clone(),
            req.into_inner(),
            &self.batching,
        )))
    }
}

/// Each request of a `BatchCommands` stream goes through the unary call.
impl BatchService for RouterService {
    type Envelope = RouterEnvelope;

    async fn answer(&self, cmd: Ask) -> std::result::Result<Answer, Status> {
        match cmd {
            Ask::Get(r) => self
                .get(Request::new(r))
                .await
                .map(|r| Answer::Get(r.into_inner())),
            Ask::BatchGet(r) => self
                .batch_get(Request::new(r))
                .await
                .map(|r| Answer::BatchGet(r.into_inner())),
            Ask::Put(r) => self
                .put(Request::new(r))
                .await
                .map(|r| Answer::Put(r.into_inner())),
            Ask::BatchPut(r) => self
                .batch_put(Request::new(r))
                .await
                .map(|r| Answer::BatchPut(r.into_inner())),
            Ask::Delete(r) => self
                .delete(Request::new(r))
                .await
                .map(|r| Answer::Delete(r.into_inner())),
            Ask::DeleteRange(r) => self
                .delete_range(Request::new(r))
                .await
                .map(|r| Answer::DeleteRange(r.into_inner())),
            Ask::Scan(r) => self
                .scan(Request::new(r))
                .await
                .map(|r| Answer::Scan(r.into_inner())),
            Ask::Cas(r) => self
                .compare_and_swap(Request::new(r))
                .await
                .map(|r| Answer::Cas(r.into_inner())),
        }
    }
}
