//! Watch: a stream of applied events under a prefix, from a revision, from one node.

use holdfast_proto::v1 as pb;
use tonic::Status;

use crate::connection::Client;

impl Client {
    /// Streams applied events for `prefix` from `from_revision` (0 = from now) from one node.
    pub async fn watch(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<tonic::Streaming<pb::WatchResponse>, Status> {
        self.retry(|channel| async move {
            let request = pb::WatchRequest {
                prefix: prefix.to_owned(),
                from_revision,
            };
            Ok(pb::watch_client::WatchClient::new(channel)
                .watch(request)
                .await?
                .into_inner())
        })
        .await
    }
}
