//! The gRPC KV service of a store, over [`KvApi`].

use concord_common::batch_stream::ServeOptions;
use concord_proto::errorpb;
use concord_proto::kvrpcpb::kv_server::Kv;
use concord_proto::kvrpcpb::*;
use tonic::{Request, Response, Status, Streaming};

use crate::kv::KvApi;
use crate::raftstore::CmdError;

/// Serves `kvrpcpb.Kv` for one store.
#[derive(Clone)]
pub struct KvService {
    api: KvApi,
    batching: ServeOptions,
}

impl KvService {
    /// A service answering with `api`; its `BatchCommands` streams are
    /// served with `batching`.
    pub fn new(api: KvApi, batching: ServeOptions) -> KvService {
        KvService { api, batching }
    }
}

/// Responses that can carry a region error.
trait WithRegionError: Default {
    fn set_region_error(&mut self, e: errorpb::Error);
}

macro_rules! with_region_error {
    ($($t:ty),*) => {$(
        impl WithRegionError for $t {
            fn set_region_error(&mut self, e: errorpb::Error) {
                self.region_error = Some(e);
            }
        }
    )*};
}

with_region_error!(
    RawGetResponse,
    RawBatchGetResponse,
    RawPutResponse,
    RawBatchPutResponse,
    RawDeleteResponse,
    RawDeleteRangeResponse,
    RawScanResponse,
    RawCasResponse,
    SplitRegionResponse,
    RegionChecksumResponse
);

/// Region errors go in the response for the router to act on; bad input
/// and internal failures are gRPC errors.
#[allow(clippy::result_large_err)] // tonic's handler signature fixes the error type.
fn respond<T: WithRegionError, V>(
    result: Result<V, CmdError>,
    fill: impl FnOnce(V) -> T,
) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => Ok(Response::new(fill(v))),
        Err(CmdError::Region(e)) => {
            let mut resp = T::default();
            resp.set_region_error(e);
            Ok(Response::new(resp))
        }
        Err(CmdError::InvalidArgument(m)) => Err(Status::invalid_argument(m)),
        Err(CmdError::Internal(m)) => Err(Status::unavailable(m)),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn raw_get(
        &self,
        request: Request<RawGetRequest>,
    ) -> Result<Response<RawGetResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        respond(self.api.raw_get(&ctx, &r.key).await, |v| RawGetResponse {
            not_found: v.is_none(),
            value: v.unwrap_or_default(),
            ..Default::default()
        })
    }

    async fn raw_batch_get(
        &self,
        request: Request<RawBatchGetRequest>,
    ) -> Result<Response<RawBatchGetResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        respond(self.api.raw_batch_get(&ctx, &r.keys).await, |pairs| {
            RawBatchGetResponse {
                pairs,
                ..Default::default()
            }
        })
    }

    async fn raw_put(
        &self,
        request: Request<RawPutRequest>,
    ) -> Result<Response<RawPutResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        respond(
            self.api.raw_put(&ctx, &r.key, &r.value, r.ttl).await,
            |()| RawPutResponse::default(),
        )
    }

    async fn raw_batch_put(
        &self,
        request: Request<RawBatchPutRequest>,
    ) -> Result<Response<RawBatchPutResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        respond(self.api.raw_batch_put(&ctx, &r.pairs, r.ttl).await, |()| {
            RawBatchPutResponse::default()
        })
    }

    async fn raw_delete(
        &self,
        request: Request<RawDeleteRequest>,
    ) -> Result<Response<RawDeleteResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        respond(self.api.raw_delete(&ctx, &r.key).await, |()| {
            RawDeleteResponse::default()
        })
    }

    async fn raw_delete_range(
        &self,
        request: Request<RawDeleteRangeRequest>,
    ) -> Result<Response<RawDeleteRangeResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        respond(
            self.api
                .raw_delete_range(&ctx, &r.start_key, &r.end_key)
                .await,
            |()| RawDeleteRangeResponse::default(),
        )
    }

    async fn raw_scan(
        &self,
        request: Request<RawScanRequest>,
    ) -> Result<Response<RawScanResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        let result = self
            .api
            .raw_scan(
                &ctx,
                &r.start_key,
                &r.end_key,
                r.limit,
                r.reverse,
                r.key_only,
            )
            .await;
        respond(result, |kvs| RawScanResponse {
            kvs,
            ..Default::default()
        })
    }

    async fn raw_compare_and_swap(
        &self,
        request: Request<RawCasRequest>,
    ) -> Result<Response<RawCasResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        let previous = (!r.previous_not_exist).then_some(r.previous_value.as_slice());
        let result = self
            .api
            .raw_compare_and_swap(&ctx, &r.key, &r.value, previous, r.ttl)
            .await;
        respond(result, |o| RawCasResponse {
            succeed: o.succeed,
            previous_not_exist: o.previous.is_none(),
            previous_value: o.previous.unwrap_or_default(),
            ..Default::default()
        })
    }

    async fn split_region(
        &self,
        request: Request<SplitRegionRequest>,
    ) -> Result<Response<SplitRegionResponse>, Status> {
        let r = request.into_inner();
        let ctx = r.context.unwrap_or_default();
        respond(self.api.split_region(&ctx, r.split_keys).await, |regions| {
            SplitRegionResponse {
                regions,
                ..Default::default()
            }
        })
    }

    async fn region_checksum(
        &self,
        request: Request<RegionChecksumRequest>,
    ) -> Result<Response<RegionChecksumResponse>, Status> {
        let r = request.into_inner();
        respond(self.api.region_checksum(r.region_id), |c| {
            RegionChecksumResponse {
                checksum: c.checksum,
                total_kvs: c.total_kvs,
                total_bytes: c.total_bytes,
                applied_index: c.applied_index,
                ..Default::default()
            }
        })
    }

    type BatchCommandsStream = concord_common::batch_stream::BatchStream<BatchCommandsResponse>;

    async fn batch_commands(
        &self,
        request: Request<Streaming<BatchCommandsRequest>>,
    ) -> Result<Response<Self::BatchCommandsStream>, Status> {
        Ok(Response::new(concord_common::kv_batch::serve(
            self.clone(),
            request.into_inner(),
            &self.batching,
        )))
    }
}
