//! Elections on locks: campaign (a queued acquire carrying a value), proclaim, resign, and
//! reading or observing who leads.

use std::time::Duration;

use holdfast_proto::v1 as pb;
use tonic::Status;

use crate::connection::{Client, RPC_TIMEOUT_MS};
use crate::locks::Hold;
use crate::session::Session;

impl Client {
    /// The current leader of election `name` (linearizable), or None.
    pub async fn leader(&self, name: &str) -> Result<Option<pb::Leadership>, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::LeaderRequest {
                name: name.to_owned(),
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(pb::elections_client::ElectionsClient::new(channel)
                .leader(request)
                .await?
                .into_inner()
                .leader)
        })
        .await
    }

    /// The current leader of election `name`, then every change (None = no leader).
    pub async fn observe(
        &self,
        name: &str,
    ) -> Result<tonic::Streaming<pb::ObserveResponse>, Status> {
        self.retry(|channel| async move {
            let request = pb::ObserveRequest {
                name: name.to_owned(),
            };
            Ok(pb::elections_client::ElectionsClient::new(channel)
                .observe(request)
                .await?
                .into_inner())
        })
        .await
    }
}

impl Session {
    /// Campaigns in election `name` with `value`, waiting up to `wait_timeout_ms` to be elected.
    /// Returns the leadership as a `Hold` (its token is the leader key's token), or None.
    pub async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        wait_timeout_ms: u64,
    ) -> Result<Option<Hold>, Status> {
        self.campaign_with_priority(name, value, wait_timeout_ms, 0)
            .await
    }

    /// [`Session::campaign`] with a priority for the election's policy to weigh (the built-in
    /// election ignores it).
    pub async fn campaign_with_priority(
        &self,
        name: &str,
        value: &[u8],
        wait_timeout_ms: u64,
        priority: i32,
    ) -> Result<Option<Hold>, Status> {
        let session_id = self.id;
        let response = self
            .with_new_request_id(|request_id| {
                self.client.retry_write(move |channel| async move {
                    let mut request = tonic::Request::new(pb::CampaignRequest {
                        session_id,
                        request_id,
                        name: name.to_owned(),
                        value: value.to_vec(),
                        wait_timeout_ms,
                        priority,
                    });
                    request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS + wait_timeout_ms));
                    Ok(pb::elections_client::ElectionsClient::new(channel)
                        .campaign(request)
                        .await?
                        .into_inner())
                })
            })
            .await?;
        Ok(response.leader.map(|key| Hold {
            name: key.name,
            token: key.token,
            lease_ms: 0,
            revision: response.header.map_or(0, |h| h.revision),
            reentrant: false,
        }))
    }

    fn leader_key(&self, leadership: &Hold) -> pb::LeaderKey {
        pb::LeaderKey {
            name: leadership.name.clone(),
            session_id: self.id,
            token: leadership.token,
        }
    }

    /// Replaces the leader's value; refused unless `leadership` is still the current leader key.
    pub async fn proclaim(&self, leadership: &Hold, value: &[u8]) -> Result<(), Status> {
        let key = self.leader_key(leadership);
        self.client
            .retry_write(|channel| {
                let key = key.clone();
                async move {
                    let mut request = tonic::Request::new(pb::ProclaimRequest {
                        leader: Some(key),
                        value: value.to_vec(),
                    });
                    request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                    pb::elections_client::ElectionsClient::new(channel)
                        .proclaim(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await
            .map(|_| ())
    }

    /// Gives up leadership (the next candidate is elected).
    pub async fn resign(&self, leadership: &Hold) -> Result<(), Status> {
        let request_id = self.next_request_id();
        let key = self.leader_key(leadership);
        self.client
            .retry_write(|channel| {
                let key = key.clone();
                async move {
                    let mut request = tonic::Request::new(pb::ResignRequest {
                        leader: Some(key),
                        request_id,
                    });
                    request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                    pb::elections_client::ElectionsClient::new(channel)
                        .resign(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await
            .map(|_| ())
    }
}
