//! Admin calls: membership (members, add a learner, promote, remove, transfer leadership),
//! backups (a consistent snapshot of the applied state), policies (deploy, bind, unbind, list,
//! describe) and revoking a hold. The cluster refuses them to callers without the admin role.

use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use pb::locks_client::LocksClient;
use pb::policies_client::PoliciesClient;
use tonic::Status;

use crate::connection::{Client, DEPLOY_TIMEOUT_MS, RPC_TIMEOUT_MS};

impl Client {
    /// The cluster's voters and learners (from the node answering).
    pub async fn members(&self) -> Result<pb::MembersResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::MembersRequest {});
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .members(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Committed log entries from `from_index` on (admin; `Cluster.ReadLog`), at most `limit`
    /// (0 = the server's page size). Empty when nothing past `from_index` is applied yet.
    pub async fn read_log(
        &self,
        from_index: u64,
        limit: u32,
    ) -> Result<pb::ReadLogResponse, Status> {
        self.retry(|channel| async move {
            ClusterClient::new(channel)
                .read_log(pb::ReadLogRequest { from_index, limit })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// A consistent copy of the applied state for backups (admin): the header and the state's
    /// bytes, whole (a download cut off midway is retried from the start, on any node).
    pub async fn snapshot(&self) -> Result<(pb::SnapshotHeader, Vec<u8>), Status> {
        self.retry(|channel| async move {
            let mut stream = ClusterClient::new(channel)
                .snapshot(pb::SnapshotRequest {})
                .await?
                .into_inner();
            let mut header = None;
            let mut data = Vec::new();
            while let Some(message) = stream.message().await? {
                if let Some(first) = message.header {
                    data.reserve(usize::try_from(first.size_bytes).unwrap_or(0));
                    header = Some(first);
                }
                data.extend_from_slice(&message.chunk);
            }
            let header =
                header.ok_or_else(|| Status::data_loss("snapshot stream had no header"))?;
            if data.len() as u64 != header.size_bytes {
                return Err(Status::unavailable(format!(
                    "snapshot stream ended after {} of {} bytes",
                    data.len(),
                    header.size_bytes
                )));
            }
            Ok((header, data))
        })
        .await
    }

    /// Adds node `id` (serving at `addr`) as a learner and waits until it caught up (admin).
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<pb::MembershipResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::AddLearnerRequest {
                id,
                addr: addr.to_owned(),
            });
            request.set_timeout(Duration::from_millis(DEPLOY_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .add_learner(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Makes learner `id` a voter (admin).
    pub async fn promote(&self, id: u64) -> Result<pb::MembershipResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::PromoteRequest { id });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .promote(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Removes node `id` from the cluster (admin).
    pub async fn remove_member(&self, id: u64) -> Result<pb::MembershipResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::RemoveRequest { id });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .remove(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Hands leadership to voter `to`; returns the new leader (admin).
    pub async fn transfer_leader(&self, to: u64) -> Result<u64, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::TransferLeaderRequest { to });
            request.set_timeout(Duration::from_millis(2 * RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .transfer_leader(request)
                .await?
                .into_inner()
                .leader_id)
        })
        .await
    }

    /// Deploys a policy module as the next version of `name` (admin; see holdfast.v1.Policies).
    pub async fn deploy_policy(
        &self,
        name: &str,
        wasm: &[u8],
    ) -> Result<pb::DeployPolicyResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::DeployPolicyRequest {
                name: name.to_owned(),
                wasm: wasm.to_vec(),
            });
            request.set_timeout(Duration::from_millis(DEPLOY_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .deploy(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Binds `policy` (`version` 0 = newest; "builtin" = the native FIFO) to `prefix` (admin).
    pub async fn bind_policy(
        &self,
        request: pb::BindPolicyRequest,
    ) -> Result<pb::BindPolicyResponse, Status> {
        let request = &request;
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .bind(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Removes the `mode` binding of `prefix` (admin).
    pub async fn unbind_policy(
        &self,
        prefix: &str,
        mode: pb::BindMode,
    ) -> Result<pb::UnbindPolicyResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::UnbindPolicyRequest {
                prefix: prefix.to_owned(),
                mode: mode as i32,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .unbind(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Deployed policy versions and bindings (linearizable).
    pub async fn list_policies(&self) -> Result<pb::ListPoliciesResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::ListPoliciesRequest {
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .list(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Which bindings decide for lock `name` (linearizable).
    pub async fn describe_policy(&self, name: &str) -> Result<pb::DescribePolicyResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::DescribePolicyRequest {
                lock: name.to_owned(),
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .describe(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Ends hold `token` of `name` whoever holds it (an admin call; release reason `Revoked`).
    /// Returns the log index at which the hold ended.
    pub async fn revoke(&self, name: &str, token: u64) -> Result<u64, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::RevokeRequest {
                name: name.to_owned(),
                token,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .revoke(request)
                .await?
                .into_inner()
                .released_at)
        })
        .await
    }
}
