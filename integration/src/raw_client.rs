//! A minimal client that finds region leaders through PD and talks to
//! stores directly, retrying on region errors and unreachable stores. Tests
//! use it to reach one particular store (checksums) and to drive load
//! without depending on the router.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use concord_common::pd_client::PdClient;
use concord_pd::grpc_client::GrpcPdClient;
use concord_proto::errorpb::{self, error::Kind};
use concord_proto::kvrpcpb::kv_client::KvClient;
use concord_proto::kvrpcpb::{
    Context, RawGetRequest, RawPutRequest, RegionChecksumRequest, RegionChecksumResponse,
};
use concord_proto::metapb;
use concord_proto::pdpb;
use concord_proto::pdpb::pd_client::PdClient as PdGrpc;
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// Talks to PD and stores directly.
pub struct RawClient {
    /// The PD client.
    pub pd: GrpcPdClient,
    channels: Mutex<HashMap<String, KvClient<Channel>>>,
    leaders: Mutex<HashMap<u64, metapb::Peer>>,
}

impl RawClient {
    /// Connects to the PD members at `pd`.
    pub async fn connect(pd: &[String]) -> Result<RawClient, String> {
        let pd = GrpcPdClient::connect(pd).await.map_err(|e| e.to_string())?;
        Ok(RawClient {
            pd,
            channels: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
        })
    }

    /// A KV client for the store at `addr`.
    pub async fn store_client(&self, addr: &str) -> Result<KvClient<Channel>, String> {
        let mut channels = self.channels.lock().await;
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        let client = KvClient::new(channel);
        channels.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    async fn target(&self, key: &[u8]) -> Result<(Context, String), String> {
        let info = self.pd.get_region(key).await.map_err(|e| e.to_string())?;
        let region = info.region;
        let cached = self.leaders.lock().await.get(&region.id).copied();
        let leader = cached
            .filter(|p| region.peers.iter().any(|q| q.id == p.id))
            .or(info.leader)
            .or_else(|| region.peers.first().copied())
            .ok_or("region without peers")?;
        let store = self
            .pd
            .get_store(leader.store_id)
            .await
            .map_err(|e| e.to_string())?;
        let ctx = Context {
            region_id: region.id,
            region_epoch: region.region_epoch,
            peer: Some(leader),
        };
        Ok((ctx, store.address))
    }

    async fn note_error(&self, region_id: u64, kind: Option<Kind>) {
        match kind {
            Some(Kind::NotLeader(n)) => match n.leader {
                Some(l) => {
                    self.leaders.lock().await.insert(region_id, l);
                }
                None => {
                    self.leaders.lock().await.remove(&region_id);
                }
            },
            _ => {
                self.leaders.lock().await.remove(&region_id);
            }
        }
    }

    /// Runs `call` on the leader of the region holding `key` until it
    /// succeeds, the store refuses the input, or `timeout` passes. `call`
    /// answers the region error, if any, in its inner result.
    async fn on_leader<T, F, Fut>(
        &self,
        key: &[u8],
        timeout: Duration,
        what: &str,
        mut call: F,
    ) -> Result<T, String>
    where
        F: FnMut(KvClient<Channel>, Context) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, errorpb::Error>, tonic::Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.target(key).await {
                Ok((ctx, addr)) => match call(self.store_client(&addr).await?, ctx).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => {
                        last = e.message.clone();
                        self.note_error(ctx.region_id, e.kind).await;
                    }
                    Err(status) if status.code() == tonic::Code::InvalidArgument => {
                        return Err(status.message().to_string())
                    }
                    Err(status) => {
                        last = status.to_string();
                        self.note_error(ctx.region_id, None).await;
                    }
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{what} timed out: {last}"))
    }

    /// Writes `key` = `value`, retrying until `timeout`; `Ok` means acknowledged.
    pub async fn put(&self, key: &[u8], value: &[u8], timeout: Duration) -> Result<(), String> {
        self.on_leader(key, timeout, "put", |mut client, ctx| async move {
            let req = RawPutRequest {
                context: Some(ctx),
                key: key.to_vec(),
                value: value.to_vec(),
                ttl: 0,
            };
            let resp = client.raw_put(req).await?.into_inner();
            Ok(resp.region_error.map_or(Ok(()), Err))
        })
        .await
    }

    /// Reads `key` linearizably, retrying until `timeout`.
    pub async fn get(&self, key: &[u8], timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        self.on_leader(key, timeout, "get", |mut client, ctx| async move {
            let req = RawGetRequest {
                context: Some(ctx),
                key: key.to_vec(),
            };
            let resp = client.raw_get(req).await?.into_inner();
            Ok(match resp.region_error {
                None => Ok((!resp.not_found).then_some(resp.value)),
                Some(e) => Err(e),
            })
        })
        .await
    }

    /// The checksum of `region_id` as the store at `addr` holds it.
    pub async fn checksum(
        &self,
        addr: &str,
        region_id: u64,
    ) -> Result<RegionChecksumResponse, String> {
        let mut client = self.store_client(addr).await?;
        let resp = client
            .region_checksum(RegionChecksumRequest { region_id })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        match resp.region_error {
            Some(e) => Err(e.message),
            None => Ok(resp),
        }
    }
}

/// The gRPC address of the current PD leader, asked of any live member.
pub async fn pd_leader(addrs: &[String]) -> Option<String> {
    for addr in addrs {
        let Ok(mut pd) = PdGrpc::connect(format!("http://{addr}")).await else {
            continue;
        };
        let Ok(members) = pd
            .get_members(pdpb::GetMembersRequest { header: None })
            .await
        else {
            continue;
        };
        if let Some(url) = members
            .into_inner()
            .leader
            .and_then(|l| l.client_urls.first().cloned())
        {
            return Some(url.trim_start_matches("http://").to_string());
        }
    }
    None
}
