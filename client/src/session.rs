//! Sessions: opening one, renewing it in the background every TTL/3, and judging its
//! [`Health`] from the client's own conservative deadline (send time of the last acknowledged
//! keepalive + the time the leader said the session had left), so a holder learns it may have
//! lost its locks before the server could have expired the session.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::sessions_client::SessionsClient;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::connection::{Client, RPC_TIMEOUT_MS};

impl Client {
    /// Opens a session and starts renewing it every TTL/3 in the background.
    pub async fn open_session(&self, ttl_ms: u64, principal: &str) -> Result<Session, Status> {
        self.open_session_with_labels(ttl_ms, principal, &[]).await
    }

    /// [`Client::open_session`] with labels (policies see them, e.g. `tenant`).
    pub async fn open_session_with_labels(
        &self,
        ttl_ms: u64,
        principal: &str,
        labels: &[(&str, &str)],
    ) -> Result<Session, Status> {
        let sent = Instant::now();
        let labels: std::collections::HashMap<String, String> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let labels = &labels;
        let response = self
            .retry_write(|channel| async move {
                let mut request = tonic::Request::new(pb::OpenSessionRequest {
                    ttl_ms,
                    principal: principal.to_owned(),
                    labels: labels.clone(),
                });
                request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                Ok(SessionsClient::new(channel)
                    .open(request)
                    .await?
                    .into_inner())
            })
            .await?;
        let session_id = response.session_id;
        let ttl = Duration::from_millis(response.ttl_ms);
        let state = Arc::new(SessionState {
            next_request_id: AtomicU64::new(1),
            alive: tokio::sync::watch::channel(true).0,
            health: tokio::sync::watch::channel(Health::Healthy).0,
            deadline: std::sync::Mutex::new(sent + ttl),
            period: ttl / 3,
        });
        let keepalive = tokio::spawn(keep_alive(self.clone(), session_id, Arc::clone(&state)));
        Ok(Session {
            client: self.clone(),
            id: session_id,
            ttl_ms: response.ttl_ms,
            state,
            keepalive,
        })
    }
}

/// How many times a blocking request is sent again as a new request after its wait was
/// cancelled under it (see `Session::with_new_request_id`).
pub const REISSUE_MAX: usize = 3;

/// How safe it is to act as the session's lock holder, judged by the client alone.
///
/// The deadline: the leader answers a keepalive at once with the time the session has left in
/// its committed state (`remaining_ms`); the renewal the keepalive asks for commits just after
/// and shows in the next answer. So the deadline is the send time of the last acknowledged
/// keepalive + its `remaining_ms`: with renewals every TTL/3, about two renewal periods ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Renewals are being acknowledged.
    Healthy,
    /// Less than half a renewal period is left before the deadline (a keepalive is overdue):
    /// stop starting new work under the session's locks.
    AtRisk,
    /// The conservative deadline has passed, or the server said the session is gone: the
    /// server may have expired it, so its locks may belong to someone else. Stop using them.
    /// (Recovers to Healthy if a later keepalive is acknowledged, i.e. the server had not
    /// expired it after all, unless the server said so.)
    Lost,
}

struct SessionState {
    next_request_id: AtomicU64,
    /// False once a keepalive was refused with NOT_FOUND: the server expired or closed it.
    alive: tokio::sync::watch::Sender<bool>,
    health: tokio::sync::watch::Sender<Health>,
    /// Send time of the last acknowledged keepalive + the time it said was left (or send time
    /// of the Open request + TTL).
    deadline: std::sync::Mutex<Instant>,
    /// TTL/3: how often keepalives go out.
    period: Duration,
}

impl SessionState {
    fn deadline(&self) -> Instant {
        *self.deadline.lock().expect("deadline lock")
    }

    /// A keepalive sent at `sent` was answered: the session had `remaining` left when the
    /// leader looked, which was after `sent`.
    fn acknowledged(&self, sent: Instant, remaining: Duration) {
        let mut deadline = self.deadline.lock().expect("deadline lock");
        *deadline = (*deadline).max(sent + remaining);
    }

    /// When the next keepalive should go: a renewal period after the last, or sooner when the
    /// deadline is nearer than two periods (a renewal that did not commit), but not in a loop.
    fn next_keepalive(&self, sent: Instant) -> Instant {
        let soonest = Instant::now() + self.period / 8;
        let by_deadline = self.deadline().checked_sub(self.period).unwrap_or(soonest);
        (sent + self.period).min(by_deadline).max(soonest)
    }

    /// Re-judges health now; returns when it should next be re-judged.
    fn refresh_health(&self) -> Instant {
        let now = Instant::now();
        let deadline = self.deadline();
        let at_risk_from = deadline - self.period / 2;
        let (health, next) = if !*self.alive.borrow() || now >= deadline {
            (Health::Lost, now + 3 * self.period)
        } else if now >= at_risk_from {
            (Health::AtRisk, deadline)
        } else {
            (Health::Healthy, at_risk_from)
        };
        self.health
            .send_if_modified(|current| std::mem::replace(current, health) != health);
        next
    }
}

/// An open session, renewed in the background until dropped or closed.
pub struct Session {
    pub(crate) client: Client,
    pub id: u64,
    pub ttl_ms: u64,
    state: Arc<SessionState>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// What a keepalive answer says the session has left. A server from before `remaining_ms`
/// (which is never 0 for a live session) answered only once the renewal had committed: then
/// the whole TTL is left.
fn remaining(response: &pb::KeepAliveResponse) -> Duration {
    Duration::from_millis(match response.remaining_ms {
        0 => response.ttl_ms,
        remaining => remaining,
    })
}

async fn keep_alive(client: Client, session_id: u64, state: Arc<SessionState>) {
    loop {
        let sent = Instant::now();
        let renew = client.retry_write(|channel| async move {
            let mut request =
                tonic::Request::new(tokio_stream::iter([pb::KeepAliveRequest { session_id }]));
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            let mut responses = SessionsClient::new(channel)
                .keep_alive(request)
                .await?
                .into_inner();
            match responses.message().await? {
                Some(response) => Ok(response),
                None => Err(Status::unavailable("keepalive stream closed")),
            }
        });
        tokio::pin!(renew);
        // Health changes with time even while a renewal hangs.
        let result = loop {
            let next_check = state.refresh_health();
            tokio::select! {
                biased;
                result = &mut renew => break result,
                () = tokio::time::sleep_until(next_check) => {}
            }
        };
        match result {
            Ok(response) => state.acknowledged(sent, remaining(&response)),
            Err(status) if status.code() == Code::NotFound => {
                state.alive.send_replace(false);
                state.refresh_health();
                return;
            }
            Err(_) => {}
        }
        let wake = state.next_keepalive(sent);
        loop {
            let next_check = state.refresh_health().min(wake);
            tokio::time::sleep_until(next_check).await;
            if Instant::now() >= wake {
                break;
            }
        }
    }
}

impl Session {
    /// Stops renewing (as if the client hung), without closing the session.
    pub fn stop_keepalive(&self) {
        self.keepalive.abort();
    }

    /// False once the server reported the session gone.
    pub fn is_alive(&self) -> bool {
        *self.state.alive.borrow()
    }

    /// The session's health as the client judges it (see [`Health`]).
    pub fn health(&self) -> Health {
        *self.state.health.borrow()
    }

    /// Watches health changes (e.g. to stop work when it turns `AtRisk` or `Lost`).
    pub fn health_watch(&self) -> tokio::sync::watch::Receiver<Health> {
        self.state.health.subscribe()
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.state.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a blocking request (Acquire, Campaign) with a new request id, and again with
    /// another (up to [`REISSUE_MAX`] times) when the server answers that its wait was
    /// cancelled under it: an earlier attempt's RPC ended (its connection broke) and the retry
    /// of the same request found the recorded cancellation.
    pub(crate) async fn with_new_request_id<T, F, Fut>(&self, mut send: F) -> Result<T, Status>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut reissued = 0;
        loop {
            match send(self.next_request_id()).await {
                Err(status) if status.code() == Code::Aborted && reissued < REISSUE_MAX => {
                    reissued += 1;
                }
                result => return result,
            }
        }
    }

    /// Closes the session, releasing everything it holds.
    pub async fn close(self) -> Result<(), Status> {
        self.keepalive.abort();
        let session_id = self.id;
        self.client
            .retry_write(|channel| async move {
                let mut request = tonic::Request::new(pb::CloseSessionRequest { session_id });
                request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                SessionsClient::new(channel)
                    .close(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await
            .map(|_| ())
    }
}
