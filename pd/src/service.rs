//! The gRPC `PD` service over [`Cluster`]. PD-level failures are answered in
//! the response header (`ResponseHeader.error`); gRPC statuses are kept for
//! transport-level problems.

use std::sync::Arc;

use concord_proto::pdpb::{self, pd_server::Pd};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::Cluster;
use crate::error::{PdServerError, Result};
use crate::members::to_pd_member;
use crate::region_tree::RegionEntry;

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct PdService {
    cluster: Arc<Cluster>,
    shutdown: watch::Receiver<bool>,
}

type StreamOut<T> = ReceiverStream<std::result::Result<T, Status>>;

fn error_header(cluster_id: u64, err: &PdServerError) -> pdpb::ResponseHeader {
    let leader = match err {
        PdServerError::NotLeader { leader } => leader.as_deref().map(to_pd_member),
        _ => None,
    };
    pdpb::ResponseHeader {
        cluster_id,
        error: Some(pdpb::Error {
            r#type: err.error_type() as i32,
            message: err.to_string(),
        }),
        leader,
    }
}

fn region_response(
    header: pdpb::ResponseHeader,
    entry: Option<RegionEntry>,
) -> pdpb::GetRegionResponse {
    let (region, leader) = match entry {
        Some(e) => (Some(e.region), e.leader),
        None => (None, None),
    };
    pdpb::GetRegionResponse {
        header: Some(header),
        region,
        leader,
    }
}

impl PdService {
    /// A service over `cluster`; streams end when `shutdown` turns true.
    pub fn new(cluster: Arc<Cluster>, shutdown: watch::Receiver<bool>) -> Self {
        PdService { cluster, shutdown }
    }

    fn ok_header(&self) -> pdpb::ResponseHeader {
        pdpb::ResponseHeader {
            cluster_id: self.cluster.cluster_id(),
            error: None,
            leader: None,
        }
    }

    fn check_header(&self, header: &Option<pdpb::RequestHeader>) -> Result<()> {
        let got = header.as_ref().map_or(0, |h| h.cluster_id);
        let expected = self.cluster.cluster_id();
        if got != 0 && got != expected {
            return Err(PdServerError::ClusterMismatch { expected, got });
        }
        Ok(())
    }

    /// Runs `f` on a blocking thread (it may write to disk) after checking
    /// the request header and that this member leads the PD group; errors
    /// become an error header (`NOT_LEADER` with the leader on followers).
    async fn run<T, F>(
        &self,
        header: &Option<pdpb::RequestHeader>,
        f: F,
    ) -> std::result::Result<(pdpb::ResponseHeader, Option<T>), Status>
    where
        T: Send + 'static,
        F: FnOnce(&Cluster) -> Result<T> + Send + 'static,
    {
        if let Err(e) = self.check_header(header) {
            return Ok((error_header(self.cluster.cluster_id(), &e), None));
        }
        let cluster = self.cluster.clone();
        let result = tokio::task::spawn_blocking(move || {
            cluster.ensure_leader()?;
            f(&cluster)
        })
        .await
        .map_err(|e| Status::internal(format!("PD task failed: {e}")))?;
        Ok(match result {
            Ok(value) => (self.ok_header(), Some(value)),
            Err(e) => (error_header(self.cluster.cluster_id(), &e), None),
        })
    }
}

#[tonic::async_trait]
impl Pd for PdService {
    async fn get_members(
        &self,
        request: Request<pdpb::GetMembersRequest>,
    ) -> std::result::Result<Response<pdpb::GetMembersResponse>, Status> {
        // Every member answers, leader or not.
        let header = match self.check_header(&request.into_inner().header) {
            Ok(()) => self.ok_header(),
            Err(e) => error_header(self.cluster.cluster_id(), &e),
        };
        let replication = self.cluster.replication();
        Ok(Response::new(pdpb::GetMembersResponse {
            header: Some(header),
            members: replication.members().pd_members(),
            leader: replication.leader().as_ref().map(to_pd_member),
        }))
    }

    async fn bootstrap(
        &self,
        request: Request<pdpb::BootstrapRequest>,
    ) -> std::result::Result<Response<pdpb::BootstrapResponse>, Status> {
        let req = request.into_inner();
        let (store, region) = (req.store, req.region);
        let (header, _) = self
            .run(&req.header, move |c| {
                let store = store.ok_or_else(|| {
                    PdServerError::InvalidArgument("bootstrap without store".into())
                })?;
                let region = region.ok_or_else(|| {
                    PdServerError::InvalidArgument("bootstrap without region".into())
                })?;
                c.bootstrap(store, region)
            })
            .await?;
        Ok(Response::new(pdpb::BootstrapResponse {
            header: Some(header),
        }))
    }

    async fn is_bootstrapped(
        &self,
        request: Request<pdpb::IsBootstrappedRequest>,
    ) -> std::result::Result<Response<pdpb::IsBootstrappedResponse>, Status> {
        let (header, bootstrapped) = self
            .run(&request.into_inner().header, |c| Ok(c.is_bootstrapped()))
            .await?;
        Ok(Response::new(pdpb::IsBootstrappedResponse {
            header: Some(header),
            bootstrapped: bootstrapped.unwrap_or(false),
        }))
    }

    async fn alloc_id(
        &self,
        request: Request<pdpb::AllocIdRequest>,
    ) -> std::result::Result<Response<pdpb::AllocIdResponse>, Status> {
        let (header, id) = self
            .run(&request.into_inner().header, |c| c.alloc_id())
            .await?;
        Ok(Response::new(pdpb::AllocIdResponse {
            header: Some(header),
            id: id.unwrap_or(0),
        }))
    }

    type TsoStream = StreamOut<pdpb::TsoResponse>;

    async fn tso(
        &self,
        request: Request<Streaming<pdpb::TsoRequest>>,
    ) -> std::result::Result<Response<Self::TsoStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    msg = inbound.message() => msg,
                    _ = shutdown.changed() => break,
                };
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "TSO stream ended");
                        break;
                    }
                };
                let count = req.count;
                // The oracle occasionally syncs its window to disk.
                let resp = match service.run(&req.header, move |c| c.tso(count)).await {
                    Ok((header, timestamp)) => Ok(pdpb::TsoResponse {
                        count: if timestamp.is_some() { count } else { 0 },
                        header: Some(header),
                        timestamp,
                    }),
                    Err(status) => Err(status),
                };
                if tx.send(resp).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn put_store(
        &self,
        request: Request<pdpb::PutStoreRequest>,
    ) -> std::result::Result<Response<pdpb::PutStoreResponse>, Status> {
        let req = request.into_inner();
        let store = req.store;
        let (header, _) = self
            .run(&req.header, move |c| {
                c.put_store(store.ok_or_else(|| {
                    PdServerError::InvalidArgument("PutStore without store".into())
                })?)
            })
            .await?;
        Ok(Response::new(pdpb::PutStoreResponse {
            header: Some(header),
        }))
    }

    async fn get_store(
        &self,
        request: Request<pdpb::GetStoreRequest>,
    ) -> std::result::Result<Response<pdpb::GetStoreResponse>, Status> {
        let req = request.into_inner();
        let store_id = req.store_id;
        let (header, info) = self
            .run(&req.header, move |c| c.get_store(store_id))
            .await?;
        let (store, stats) = match info {
            Some(info) => (Some(info.meta), info.stats),
            None => (None, None),
        };
        Ok(Response::new(pdpb::GetStoreResponse {
            header: Some(header),
            store,
            stats,
        }))
    }

    async fn get_all_stores(
        &self,
        request: Request<pdpb::GetAllStoresRequest>,
    ) -> std::result::Result<Response<pdpb::GetAllStoresResponse>, Status> {
        let req = request.into_inner();
        let exclude = req.exclude_tombstone_stores;
        let (header, stores) = self
            .run(&req.header, move |c| {
                Ok(c.stores(exclude).into_iter().map(|s| s.meta).collect())
            })
            .await?;
        Ok(Response::new(pdpb::GetAllStoresResponse {
            header: Some(header),
            stores: stores.unwrap_or_default(),
        }))
    }

    async fn store_heartbeat(
        &self,
        request: Request<pdpb::StoreHeartbeatRequest>,
    ) -> std::result::Result<Response<pdpb::StoreHeartbeatResponse>, Status> {
        let req = request.into_inner();
        let stats = req.stats;
        let (header, _) = self
            .run(&req.header, move |c| {
                c.store_heartbeat(stats.ok_or_else(|| {
                    PdServerError::InvalidArgument("store heartbeat without stats".into())
                })?)
            })
            .await?;
        Ok(Response::new(pdpb::StoreHeartbeatResponse {
            header: Some(header),
        }))
    }

    type RegionHeartbeatStream = StreamOut<pdpb::RegionHeartbeatResponse>;

    async fn region_heartbeat(
        &self,
        request: Request<Streaming<pdpb::RegionHeartbeatRequest>>,
    ) -> std::result::Result<Response<Self::RegionHeartbeatStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Steps of new operators, pushed without waiting for a heartbeat.
            let (push_tx, mut pushed) = mpsc::unbounded_channel();
            let mut store_id = None;
            loop {
                let req = tokio::select! {
                    msg = inbound.message() => msg,
                    Some(step) = pushed.recv() => {
                        if tx.send(Ok(step)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    _ = shutdown.changed() => break,
                };
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "region heartbeat stream ended");
                        break;
                    }
                };
                if let Some(id) = req.leader.map(|l| l.store_id) {
                    if store_id != Some(id) {
                        store_id = Some(id);
                        service.cluster.register_step_stream(id, push_tx.clone());
                    }
                }
                let header = req.header;
                let result = service
                    .run(&header, move |c| c.region_heartbeat_with_operator(&req))
                    .await;
                let reply = match result {
                    Ok((_, Some(Some(step)))) => Some(Ok(step)),
                    Ok((_, Some(None))) => None,
                    // Errors go back on the stream so the store can log them.
                    Ok((header, None)) => Some(Ok(pdpb::RegionHeartbeatResponse {
                        header: Some(header),
                        ..Default::default()
                    })),
                    Err(status) => Some(Err(status)),
                };
                if let Some(reply) = reply {
                    if tx.send(reply).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_region(
        &self,
        request: Request<pdpb::GetRegionRequest>,
    ) -> std::result::Result<Response<pdpb::GetRegionResponse>, Status> {
        let req = request.into_inner();
        let key = req.region_key;
        let (header, entry) = self.run(&req.header, move |c| c.get_region(&key)).await?;
        Ok(Response::new(region_response(header, entry)))
    }

    async fn get_region_by_id(
        &self,
        request: Request<pdpb::GetRegionByIdRequest>,
    ) -> std::result::Result<Response<pdpb::GetRegionResponse>, Status> {
        let req = request.into_inner();
        let id = req.region_id;
        let (header, entry) = self
            .run(&req.header, move |c| Ok(c.get_region_by_id(id)))
            .await?;
        Ok(Response::new(region_response(header, entry.flatten())))
    }

    async fn scan_regions(
        &self,
        request: Request<pdpb::ScanRegionsRequest>,
    ) -> std::result::Result<Response<pdpb::ScanRegionsResponse>, Status> {
        let req = request.into_inner();
        let (start, end, limit) = (req.start_key, req.end_key, req.limit as usize);
        let (header, entries) = self
            .run(
                &req.header,
                move |c| Ok(c.scan_regions(&start, &end, limit)),
            )
            .await?;
        let ok = self.ok_header();
        Ok(Response::new(pdpb::ScanRegionsResponse {
            header: Some(header),
            regions: entries
                .unwrap_or_default()
                .into_iter()
                .map(|e| region_response(ok.clone(), Some(e)))
                .collect(),
        }))
    }

    async fn ask_batch_split(
        &self,
        request: Request<pdpb::AskBatchSplitRequest>,
    ) -> std::result::Result<Response<pdpb::AskBatchSplitResponse>, Status> {
        let req = request.into_inner();
        let (region, count) = (req.region, req.split_count);
        let (header, ids) = self
            .run(&req.header, move |c| {
                let region = region.ok_or_else(|| {
                    PdServerError::InvalidArgument("AskBatchSplit without region".into())
                })?;
                c.ask_batch_split(&region, count)
            })
            .await?;
        Ok(Response::new(pdpb::AskBatchSplitResponse {
            header: Some(header),
            ids: ids.unwrap_or_default(),
        }))
    }

    async fn report_batch_split(
        &self,
        request: Request<pdpb::ReportBatchSplitRequest>,
    ) -> std::result::Result<Response<pdpb::ReportBatchSplitResponse>, Status> {
        let req = request.into_inner();
        let regions = req.regions;
        let (header, _) = self
            .run(&req.header, move |c| c.report_batch_split(&regions))
            .await?;
        Ok(Response::new(pdpb::ReportBatchSplitResponse {
            header: Some(header),
        }))
    }
}
