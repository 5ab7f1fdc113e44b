//! One watcher per node: streams every event from revision 1 on, resuming after each
//! disconnection from the last revision received + 1 (node restarts included), and records
//! compaction gaps the node reports. Its stream is that node's applied record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use holdfast_client::Client;
use tonic::Code;

use crate::history::{StreamItem, WatchStream};

/// Pause before reconnecting to a node that refused or dropped the stream.
const RECONNECT_MS: u64 = 200;
/// How long one connection attempt may take (the client library's own retry is longer).
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Watches node `node` through `client` (whose only endpoint is that node).
pub async fn watch_node(node: u64, client: Client, stop: Arc<AtomicBool>) -> WatchStream {
    let mut items = Vec::new();
    let mut next = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let connect = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            client.watch("", next),
        )
        .await;
        let mut stream = match connect {
            Ok(Ok(stream)) => stream,
            Ok(Err(status)) if status.code() == Code::OutOfRange => {
                let oldest = status
                    .metadata()
                    .get("holdfast-compacted-revision")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(next + 1);
                items.push(StreamItem::Compacted {
                    requested: next,
                    oldest,
                });
                next = oldest.max(next + 1);
                continue;
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(RECONNECT_MS)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                biased;
                message = stream.message() => message,
                () = tokio::time::sleep(Duration::from_millis(RECONNECT_MS)) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(response)) => {
                    next = response.revision + 1;
                    items.push(StreamItem::Revision(response.revision, response.events));
                }
                _ => break,
            }
        }
    }
    WatchStream {
        node,
        from: 1,
        items,
    }
}
