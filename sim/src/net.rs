//! Holdfast's gRPC over turmoil's simulated TCP: a node's listener as tonic's incoming stream,
//! and the dialer its peer channels and the clients' channels connect through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use holdfast_server::raft::network::{Dial, PeerIo, dialed_channel};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};

/// The port every node serves on (hosts are told apart by name: `n1`, `n2`, …).
pub const PORT: u16 = 7700;
/// How long a simulated connect may take before the channel reports the peer unreachable.
const CONNECT_TIMEOUT_MS: u64 = 500;
/// HTTP/2 keepalive of the clients' channels: a ping this often, and this long for its answer.
const KEEPALIVE_INTERVAL_MS: u64 = 1_000;
const KEEPALIVE_TIMEOUT_MS: u64 = 2_000;

pub fn node_addr(id: u64) -> String {
    format!("n{id}:{PORT}")
}

/// A connection accepted by a node's listener.
pub struct Accepted(turmoil::net::TcpStream);

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections a node's listener accepts, as tonic's incoming stream.
pub async fn incoming() -> std::io::Result<impl Stream<Item = std::io::Result<Accepted>>> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    Ok(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| Accepted(stream));
        Some((accepted, listener))
    }))
}

/// Connects over the simulated network.
pub fn dial() -> Dial {
    Arc::new(|addr: String| {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn PeerIo>)
        })
    })
}

/// A lazily connected channel to `addr` over the simulated network, with HTTP/2 keepalives.
///
/// turmoil's TCP does not retransmit: a segment dropped by a partition or a lossy link wedges
/// its connection for good, as a real connection is wedged once a partition outlasts its
/// retransmissions. The nodes' peer channels notice by HTTP/2 keepalive (1 s, 2 s to answer);
/// the simulated clients' channels do the same, so that a client reconnects after a partition
/// instead of waiting on a dead connection forever.
pub fn channel(addr: &str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a host:port address")
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true);
    dialed_channel(endpoint, &dial())
}

/// A client of the cluster whose endpoints are `nodes`, first preferring `first`.
pub fn client(nodes: &[u64], first: usize) -> holdfast_client::Client {
    let channels = (0..nodes.len())
        .map(|offset| {
            let addr = node_addr(nodes[(first + offset) % nodes.len()]);
            let channel = channel(&addr);
            (addr, channel)
        })
        .collect();
    holdfast_client::Client::from_channels(channels).expect("at least one node")
}
