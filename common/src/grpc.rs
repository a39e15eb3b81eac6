//! gRPC serving details every server of ours shares.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

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
    use tokio_stream::StreamExt;

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
