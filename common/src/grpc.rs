//! gRPC connection details every server and client of ours shares.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Endpoint;

/// Interval of HTTP/2 pings on idle and busy connections, and how long an
/// answer may take before the connection is declared dead.
pub const KEEPALIVE: Duration = Duration::from_secs(2);

/// The URL of a gRPC address: `host:port` gets `http://`, URLs stay.
pub fn url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// An endpoint for `addr` (`host:port` or a URL) with our connection
/// settings: `TCP_NODELAY`, and HTTP/2 keepalive pings so that a peer that
/// vanished without a reset (its network cut, its container moved to a
/// new IP) is noticed in seconds and the channel reconnects, instead of
/// requests queueing on a dead connection until TCP gives up.
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(url(addr))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true))
}

/// Completes once `rx` turns true or its sender is gone: the shutdown
/// signal of our servers.
pub async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The connections `listener` accepts, with `TCP_NODELAY` set on each.
///
/// tonic applies its own `tcp_nodelay` setting only to listeners it binds
/// itself; sockets from a listener we bound would otherwise keep Nagle's
/// algorithm, and a small response waiting for the peer's delayed ACK adds
/// about 40 ms to a request.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    // from_listener cannot fail: it only wraps the listener.
    TcpIncoming::from_listener(listener, true, None).expect("wrapping a bound listener")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    #[test]
    fn endpoints_take_addresses_or_urls_and_refuse_garbage() {
        let t = Duration::from_secs(1);
        assert_eq!(
            super::endpoint("127.0.0.1:1", t).unwrap().uri().to_string(),
            "http://127.0.0.1:1/"
        );
        assert_eq!(
            super::endpoint("http://pd1:2381", t)
                .unwrap()
                .uri()
                .to_string(),
            "http://pd1:2381/"
        );
        assert!(super::endpoint("not an address\u{0}", t).is_err());
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
