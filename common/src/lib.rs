//! Code shared by the placement driver, the store and the router: logging
//! setup, gRPC serving, the PD client trait, the input limits of raw KV
//! requests and the batched stream of the store's KV service.

pub mod batch_stream;
pub mod grpc;
pub mod kv_batch;
pub mod limits;
pub mod pd_client;

/// Installs the process-wide `tracing` subscriber, filtered by `RUST_LOG`
/// (default `info`). Safe to call more than once; later calls do nothing.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
