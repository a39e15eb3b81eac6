//! The PD client interface that stores and routers program against. The
//! trait lives in `concord_common::pd_client` so that the store can use it
//! (and its in-process mock) without depending on the PD server; it is
//! re-exported here beside its gRPC implementation,
//! [`crate::grpc_client::GrpcPdClient`].

pub use concord_common::pd_client::{PdClient, PdError, PdResult, RegionInfo};
