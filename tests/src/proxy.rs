//! A TCP proxy on 127.0.0.1 that the harness puts between nodes, to cut links on demand
//! (partitions without network namespaces or private addresses).
//!
//! While a proxy is cut it closes every connection it carries and refuses new ones at once, so a
//! peer sees the link down rather than a slow one.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the proxy waits to connect to its target.
pub const PROXY_CONNECT_TIMEOUT_MS: u64 = 1_000;

pub struct Proxy {
    pub addr: String,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding a fresh 127.0.0.1 port to `target`.
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a proxy port");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::new(target), cut_rx));
        Proxy { addr, cut, task }
    }

    /// Cuts (true) or restores (false) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: Arc<String>, cut: watch::Receiver<bool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            let _ = inbound.shutdown().await;
            continue;
        }
        let target = Arc::clone(&target);
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let connect = TcpStream::connect(target.as_str());
            let Ok(Ok(mut outbound)) =
                tokio::time::timeout(Duration::from_millis(PROXY_CONNECT_TIMEOUT_MS), connect)
                    .await
            else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
    }
}
