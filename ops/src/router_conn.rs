//! A connection to one `concord-router` over its client-facing gRPC
//! service (`routerpb.RawKv`).

use std::time::Duration;

use concord_proto::routerpb::raw_kv_client::RawKvClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{OpsError, Result};

/// The default per-request deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// A gRPC URL for `addr` (`host:port`, or already `http://host:port`).
pub fn url_of(addr: &str) -> Result<String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(OpsError::InvalidInput("the router address is empty".into()));
    }
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(url)
}

/// A lazily connecting client of the router at `addr`: nothing is sent
/// until the first request, and each request fails after `timeout`.
pub fn connect_lazy(addr: &str, timeout: Duration) -> Result<RawKvClient<Channel>> {
    let url = url_of(addr)?;
    let endpoint = Endpoint::from_shared(url).map_err(|e| OpsError::Connect {
        addr: addr.to_string(),
        message: format!("not a valid address ({e}); expected HOST:PORT"),
    })?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(RawKvClient::new(channel))
}

/// Maps a failed call to a clear error: an unreachable router is named.
pub fn call_error(op: &'static str, addr: &str, status: &tonic::Status) -> OpsError {
    let transport = status.code() == tonic::Code::Unavailable
        && (status.message().contains("transport")
            || status.message().contains("connect")
            || status.message().contains("Connection refused"));
    if transport {
        OpsError::Connect {
            addr: addr.to_string(),
            message: status.message().to_string(),
        }
    } else {
        OpsError::from_status(op, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme() {
        assert_eq!(url_of("127.0.0.1:1").unwrap(), "http://127.0.0.1:1");
        assert_eq!(url_of("http://h:2").unwrap(), "http://h:2");
        assert!(url_of(" ").is_err());
    }

    #[tokio::test]
    async fn malformed_address_is_refused_with_a_message() {
        let err = connect_lazy("not an address\u{0}", DEFAULT_TIMEOUT).unwrap_err();
        assert!(
            err.to_string().contains("cannot connect to router"),
            "{err}"
        );
    }
}
