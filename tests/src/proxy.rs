//! A TCP proxy on 127.0.0.1 that the harness puts on a link (a peer link `from → to`, or one
//! client's link to one node), to make network faults without network namespaces or private
//! addresses.
//!
//! A proxy carries connections opened in one direction; its mode applies to the bytes of both
//! halves of every connection it carries:
//! - `Pass`: forwards at once;
//! - `Delay(ms)`: holds each chunk `ms` before forwarding it (a slow link);
//! - `Pause`: forwards nothing and holds the connections open (a blackhole: the sender's
//!   deadlines expire, nothing is reset); bytes read before the pause are delivered after it;
//! - `Sever`: closes every connection at once and refuses new ones (a link that is down).
//!
//! A one-way partition is the proxy of `a → b` severed while `b → a` passes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the proxy waits to connect to its target.
pub const PROXY_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Bytes read from one side before they are forwarded to the other.
const PROXY_CHUNK_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Delay(u64),
    Pause,
    Sever,
}

pub struct Proxy {
    pub addr: String,
    mode: watch::Sender<LinkMode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding a fresh 127.0.0.1 port to `target`.
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a proxy port");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let (mode, mode_rx) = watch::channel(LinkMode::Pass);
        let task = tokio::spawn(accept_loop(listener, Arc::new(target), mode_rx));
        Proxy { addr, mode, task }
    }

    pub fn set_mode(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    /// Severs (true) or restores (false) the link.
    pub fn set_cut(&self, cut: bool) {
        self.set_mode(if cut { LinkMode::Sever } else { LinkMode::Pass });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: Arc<String>, mode: watch::Receiver<LinkMode>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if *mode.borrow() == LinkMode::Sever {
            let _ = inbound.shutdown().await;
            continue;
        }
        let target = Arc::clone(&target);
        let mut severed = mode.clone();
        let (up_mode, down_mode) = (mode.clone(), mode.clone());
        tokio::spawn(async move {
            let connect = TcpStream::connect(target.as_str());
            let Ok(Ok(outbound)) =
                tokio::time::timeout(Duration::from_millis(PROXY_CONNECT_TIMEOUT_MS), connect)
                    .await
            else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            // Either half ending, or the link being severed, drops the whole connection.
            tokio::select! {
                () = pump(in_read, out_write, up_mode) => {}
                () = pump(out_read, in_write, down_mode) => {}
                _ = severed.wait_for(|mode| *mode == LinkMode::Sever) => {}
            }
        });
    }
}

/// Copies one half of a connection, obeying the link's mode before forwarding each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<LinkMode>,
) {
    let mut buffer = vec![0u8; PROXY_CHUNK_BYTES];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        loop {
            let current = *mode.borrow_and_update();
            match current {
                LinkMode::Pass => break,
                LinkMode::Delay(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    break;
                }
                LinkMode::Pause => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                LinkMode::Sever => return,
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
