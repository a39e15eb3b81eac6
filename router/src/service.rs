//! The client-facing gRPC service (`routerpb.RawKv`): the raw KV operations
//! without region context, answered through the [`Router`]. Region errors
//! never leave the router; a client gets a result or one error status
//! (see [`crate::error::Error::to_status`]).

use std::sync::Arc;

use concord_proto::routerpb::{self, raw_kv_server::RawKv};
use tonic::{Request, Response, Status};

use crate::routing::Router;

/// The `RawKv` service over a shared [`Router`].
#[derive(Clone)]
pub struct RouterService {
    router: Arc<Router>,
}

impl RouterService {
    /// The service answering through `router`.
    pub fn new(router: Arc<Router>) -> RouterService {
        RouterService { router }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RawKv for RouterService {
    async fn get(&self, req: Request<routerpb::GetRequest>) -> Answer<routerpb::GetResponse> {
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
    ) -> Answer<routerpb::BatchGetResponse> {
        let req = req.into_inner();
        let pairs = self
            .router
            .batch_get(&req.keys)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::BatchGetResponse { pairs }))
    }

    async fn put(&self, req: Request<routerpb::PutRequest>) -> Answer<routerpb::PutResponse> {
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
    ) -> Answer<routerpb::BatchPutResponse> {
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
    ) -> Answer<routerpb::DeleteResponse> {
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
    ) -> Answer<routerpb::DeleteRangeResponse> {
        let req = req.into_inner();
        self.router
            .delete_range(&req.start_key, &req.end_key)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(routerpb::DeleteRangeResponse {}))
    }

    async fn scan(&self, req: Request<routerpb::ScanRequest>) -> Answer<routerpb::ScanResponse> {
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
    ) -> Answer<routerpb::CasResponse> {
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
}
