//! Locks: acquire (queued, try-lock, shared, with a priority), release, and [`LockGuard`],
//! which carries the fencing token and releases on drop; plus the lock reads (describe, list,
//! check a token).

use std::time::Duration;

use holdfast_proto::v1 as pb;
pub use holdfast_proto::v1::{AcquireStatus, LockMode};
use pb::locks_client::LocksClient;
use tonic::Status;

use crate::connection::{Client, RPC_TIMEOUT_MS};
use crate::session::Session;

/// A granted lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub name: String,
    pub token: u64,
    pub lease_ms: u64,
    /// Log index at which the grant was applied.
    pub revision: u64,
    /// The session already held the lock (an earlier grant, `token`, not a new one): e.g. the
    /// release of an earlier hold did not take effect.
    pub reentrant: bool,
}

/// Longest wait `Session::lock` asks for (the server's `WAIT_TIMEOUT_MS_MAX`).
pub const LOCK_WAIT_MS_MAX: u64 = 3_600_000;

async fn release_hold(
    client: &Client,
    session_id: u64,
    request_id: u64,
    hold: &Hold,
) -> Result<u64, Status> {
    let response = client
        .retry_write(|channel| async move {
            let mut request = tonic::Request::new(pb::ReleaseRequest {
                session_id,
                request_id,
                name: hold.name.clone(),
                token: hold.token,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .release(request)
                .await?
                .into_inner())
        })
        .await?;
    Ok(response.released_at)
}

/// A held lock, released by [`LockGuard::release`] or, best-effort in the background, on drop.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = holdfast_client::Client::connect(&holdfast_client::DEV_ENDPOINTS)?;
/// let session = client.open_session(10_000, "docs").await?;
/// let guard = session.lock("reports/nightly").await?;
/// println!("fencing token {}", guard.token()); // pass it to the resource you write
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct LockGuard<'s> {
    session: &'s Session,
    hold: Option<Hold>,
}

impl LockGuard<'_> {
    /// The fencing token of this hold.
    pub fn token(&self) -> u64 {
        self.hold.as_ref().map_or(0, |h| h.token)
    }

    pub fn hold(&self) -> &Hold {
        self.hold.as_ref().expect("a guard holds until released")
    }

    /// Releases the lock; returns the log index at which the hold ended.
    pub async fn release(mut self) -> Result<u64, Status> {
        let hold = self.hold.take().expect("a guard holds until released");
        self.session.release(&hold).await
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            let client = self.session.client.clone();
            let session_id = self.session.id;
            let request_id = self.session.next_request_id();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = release_hold(&client, session_id, request_id, &hold).await;
                });
            }
        }
    }
}

impl Client {
    pub async fn describe(&self, name: &str) -> Result<pb::DescribeResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::DescribeRequest {
                name: name.to_owned(),
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .describe(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Locks whose names start with `prefix`, in name order (linearizable).
    pub async fn list(&self, prefix: &str, limit: u32) -> Result<pb::ListResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::ListRequest {
                prefix: prefix.to_owned(),
                limit,
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel).list(request).await?.into_inner())
        })
        .await
    }

    pub async fn check_token(
        &self,
        name: &str,
        token: u64,
    ) -> Result<pb::CheckTokenResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::CheckTokenRequest {
                name: name.to_owned(),
                token,
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .check_token(request)
                .await?
                .into_inner())
        })
        .await
    }
}

impl Session {
    /// Acquires `name` exclusively, waiting up to `wait_timeout_ms` (0 = try-lock). Returns
    /// `None` if not granted (busy or timed out).
    pub async fn acquire(
        &self,
        name: &str,
        mode: LockMode,
        wait_timeout_ms: u64,
    ) -> Result<Option<Hold>, Status> {
        self.acquire_with_priority(name, mode, wait_timeout_ms, 0)
            .await
    }

    /// [`Session::acquire`] with a priority (the built-in FIFO ignores it; policies such as
    /// `priority` order waiters by it).
    pub async fn acquire_with_priority(
        &self,
        name: &str,
        mode: LockMode,
        wait_timeout_ms: u64,
        priority: i32,
    ) -> Result<Option<Hold>, Status> {
        let session_id = self.id;
        let response = self
            .with_new_request_id(|request_id| {
                self.client.retry_write(move |channel| async move {
                    let mut request = tonic::Request::new(pb::AcquireRequest {
                        session_id,
                        request_id,
                        name: name.to_owned(),
                        mode: mode as i32,
                        max_holders: 0,
                        wait_timeout_ms,
                        priority,
                    });
                    request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS + wait_timeout_ms));
                    Ok(LocksClient::new(channel)
                        .acquire(request)
                        .await?
                        .into_inner())
                })
            })
            .await?;
        if response.status == AcquireStatus::Acquired as i32 {
            Ok(Some(Hold {
                name: name.to_owned(),
                token: response.token,
                lease_ms: response.lease_ms,
                revision: response.header.map_or(0, |h| h.revision),
                reentrant: response.reentrant,
            }))
        } else {
            Ok(None)
        }
    }

    /// Releases a hold; returns the log index at which it ended.
    pub async fn release(&self, hold: &Hold) -> Result<u64, Status> {
        release_hold(&self.client, self.id, self.next_request_id(), hold).await
    }

    /// Waits (up to the server's longest wait, 1 h) for `name`, exclusively.
    pub async fn lock(&self, name: &str) -> Result<LockGuard<'_>, Status> {
        self.lock_with_timeout(name, Duration::from_millis(LOCK_WAIT_MS_MAX))
            .await?
            .ok_or_else(|| Status::deadline_exceeded(format!("lock {name} not granted within 1 h")))
    }

    /// Takes `name` exclusively if it is free now.
    pub async fn try_lock(&self, name: &str) -> Result<Option<LockGuard<'_>>, Status> {
        self.lock_with_timeout(name, Duration::ZERO).await
    }

    /// Waits up to `timeout` for `name`, exclusively; None if not granted in time.
    pub async fn lock_with_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<LockGuard<'_>>, Status> {
        self.guard(name, LockMode::Exclusive, timeout).await
    }

    /// Waits up to `timeout` for a shared hold of `name`.
    pub async fn lock_shared(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<LockGuard<'_>>, Status> {
        self.guard(name, LockMode::Shared, timeout).await
    }

    async fn guard(
        &self,
        name: &str,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<Option<LockGuard<'_>>, Status> {
        let wait_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .min(LOCK_WAIT_MS_MAX);
        let hold = self.acquire(name, mode, wait_ms).await?;
        Ok(hold.map(|hold| LockGuard {
            session: self,
            hold: Some(hold),
        }))
    }
}
