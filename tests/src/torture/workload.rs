//! The clients: each has links to every node that the nemesis can freeze (the torture run's
//! own proxies; the simulator's held links), one labelled session, and loops acquire → write to the fenced resource → release over a
//! handful of locks (half of them bound to wasm policies, `policies.rs`), with try-locks,
//! waits, priorities, shared holds and linearizable reads mixed in. Every operation
//! is recorded with its invocation and completion on the run's clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_client::{Client, LockMode, Session};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::rng::Rng;
use crate::history::{Append, Fault, FaultKind, Micros, Mode, Op, OpKind, Outcome};
use crate::proxy::{LinkMode, Proxy};

/// Lock names the workload uses: `torture/0` …
pub const LOCK_PREFIX: &str = "torture/";
/// Longest a client waits in a queued acquire.
const WAIT_MS_MAX: u64 = 2_000;
/// Longest a client holds a lock before releasing it.
const HOLD_MS_MAX: u64 = 20;
/// Pause after a failed session open before trying again.
const REOPEN_BACKOFF_MS: u64 = 100;

/// The run's clock: microseconds since it began.
pub type Clock = Box<dyn Fn() -> Micros + Send + Sync>;

/// What the clients share with the run.
pub struct Shared {
    pub clock: Clock,
    pub ops: Mutex<Vec<Op>>,
    pub faults: Mutex<Vec<Fault>>,
    pub resource: super::resource::FencedResource,
    pub stop: AtomicBool,
    pub session_ttl_ms: u64,
    pub locks: usize,
    /// The policy churn's log (`policies::churn`).
    pub policy_changes: Mutex<Vec<crate::history::PolicyChange>>,
}

impl Shared {
    pub fn now(&self) -> Micros {
        (self.clock)()
    }

    /// A clock that starts now, on tokio's time.
    pub fn clock_from_now() -> Clock {
        let start = Instant::now();
        Box::new(move || u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }
}

/// How a client's links to the cluster are frozen and thawed (the client "pause" fault).
pub trait Links: Send + Sync {
    fn freeze(&self, frozen: bool);
}

/// The torture run's links: the client's own proxies to every node.
pub struct Proxies(pub Vec<Proxy>);

impl Links for Proxies {
    fn freeze(&self, frozen: bool) {
        let mode = if frozen {
            LinkMode::Pause
        } else {
            LinkMode::Pass
        };
        for proxy in &self.0 {
            proxy.set_mode(mode);
        }
    }
}

/// One client's handle for the nemesis.
pub struct ClientHandle {
    pub links: Box<dyn Links>,
    /// A requested pause (ms); the client takes it right after its next exclusive grant.
    pub pause_ms: AtomicU64,
    pub paused: AtomicBool,
}

impl ClientHandle {
    pub fn new(links: Box<dyn Links>) -> ClientHandle {
        ClientHandle {
            links,
            pause_ms: AtomicU64::new(0),
            paused: AtomicBool::new(false),
        }
    }

    /// A handle whose links are proxies to every node, and a client over them (each client
    /// prefers a different node first).
    pub async fn with_proxies(node_addrs: &[String], index: usize) -> (ClientHandle, Client) {
        let mut proxies = Vec::new();
        for offset in 0..node_addrs.len() {
            let addr = &node_addrs[(index + offset) % node_addrs.len()];
            proxies.push(Proxy::start(addr.clone()).await);
        }
        let addrs: Vec<&str> = proxies.iter().map(|p| p.addr.as_str()).collect();
        let client = Client::connect(&addrs).expect("client");
        (ClientHandle::new(Box::new(Proxies(proxies))), client)
    }
}

/// The server no longer knows the session (it expired or was closed).
pub fn session_gone(status: &Status) -> bool {
    status.code() == Code::NotFound && status.message().contains("session")
}

/// How a failed call is recorded: `Fail` only where the server certainly did not apply it.
pub fn classify(status: &Status) -> Outcome {
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        // Refused at the edge or by apply, deterministically.
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::AlreadyExists => Outcome::Fail(text),
        // NotFound (unknown session) is not certain either: an earlier attempt of this call may
        // have been applied before the session ended and its answer lost.
        _ => Outcome::Unknown(text),
    }
}

pub async fn run_client(
    shared: Arc<Shared>,
    handle: Arc<ClientHandle>,
    client: Client,
    index: usize,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut session: Option<Session> = None;
    let mut seq = 0u64;
    let mut lost = false;
    let record = |session: u64, lock: &str, kind: OpKind, invoke: Micros, outcome: Outcome| {
        shared.ops.lock().expect("ops").push(Op {
            client: index,
            session,
            lock: lock.to_owned(),
            kind,
            invoke,
            complete: shared.now(),
            outcome,
        });
    };
    while !shared.stop.load(Ordering::Relaxed) {
        // The server said our session is gone: open a new one at once (the keepalive task
        // would notice within TTL/3, but a real client stops using a dead session now).
        if std::mem::take(&mut lost) {
            session = None;
        }
        let current = match &session {
            Some(current) if current.is_alive() => current,
            _ => {
                if let Some(old) = session.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), old.close()).await;
                }
                let invoke = shared.now();
                let labels = super::policies::labels(index);
                let labels = labels.each_ref().map(|(key, value)| (*key, value.as_str()));
                match client
                    .open_session_with_labels(
                        shared.session_ttl_ms,
                        &format!("torture-{index}"),
                        &labels,
                    )
                    .await
                {
                    Ok(opened) => {
                        record(
                            opened.id,
                            "",
                            OpKind::OpenSession,
                            invoke,
                            Outcome::Opened { session: opened.id },
                        );
                        session = Some(opened);
                    }
                    Err(status) => {
                        record(0, "", OpKind::OpenSession, invoke, classify(&status));
                        tokio::time::sleep(Duration::from_millis(REOPEN_BACKOFF_MS)).await;
                    }
                }
                continue;
            }
        };
        let sid = current.id;
        let (lock, namespace) = super::policies::pick_lock(&mut rng, shared.locks);
        let priority = super::policies::priority(&mut rng, namespace);
        let roll = rng.below(100);
        if roll < 10 {
            let invoke = shared.now();
            let outcome = match client.describe(&lock).await {
                Ok(response) => {
                    let mut holders: Vec<u64> = response
                        .lock
                        .map(|info| info.holders.iter().map(|h| h.token).collect())
                        .unwrap_or_default();
                    holders.sort_unstable();
                    Outcome::Described {
                        revision: response.header.map_or(0, |h| h.revision),
                        holders,
                    }
                }
                Err(status) => {
                    lost |= session_gone(&status);
                    classify(&status)
                }
            };
            record(sid, &lock, OpKind::Describe, invoke, outcome);
            continue;
        }
        let (mode, wire_mode) = if roll < 25 && namespace.allows_shared() {
            (Mode::Shared, LockMode::Shared)
        } else {
            (Mode::Exclusive, LockMode::Exclusive)
        };
        let wait_ms = if roll < 40 {
            0
        } else {
            rng.between(100, WAIT_MS_MAX)
        };
        let invoke = shared.now();
        let result = current
            .acquire_with_priority(&lock, wire_mode, wait_ms, priority)
            .await;
        let kind = OpKind::Acquire { mode, wait_ms };
        let hold = match result {
            Ok(Some(hold)) => {
                let outcome = if hold.reentrant {
                    Outcome::Reacquired { token: hold.token }
                } else {
                    Outcome::Acquired { token: hold.token }
                };
                record(sid, &lock, kind, invoke, outcome);
                hold
            }
            Ok(None) => {
                record(sid, &lock, kind, invoke, Outcome::NotAcquired);
                continue;
            }
            Err(status) => {
                lost |= session_gone(&status);
                record(sid, &lock, kind, invoke, classify(&status));
                continue;
            }
        };
        if mode == Mode::Exclusive {
            let pause_ms = handle.pause_ms.swap(0, Ordering::Relaxed);
            if pause_ms > 0 {
                // As if the process were stopped: nothing of ours reaches any node (keepalives
                // included) and we do nothing, past the session's TTL; then we carry on with
                // the token we hold.
                let start = shared.now();
                handle.paused.store(true, Ordering::Relaxed);
                handle.links.freeze(true);
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                handle.links.freeze(false);
                handle.paused.store(false, Ordering::Relaxed);
                shared.faults.lock().expect("faults").push(Fault {
                    kind: FaultKind::PauseClient,
                    detail: format!(
                        "client {index} holding {lock} (token {}) for {pause_ms} ms",
                        hold.token
                    ),
                    start,
                    end: Some(shared.now()),
                });
            }
            seq += 1;
            let invoke = shared.now();
            let accepted = shared.resource.append(
                &lock,
                Append {
                    token: hold.token,
                    client: index,
                    seq,
                },
            );
            record(
                sid,
                &lock,
                OpKind::Write {
                    token: hold.token,
                    seq,
                },
                invoke,
                Outcome::Written { accepted },
            );
        }
        let hold_ms = super::policies::hold_ms(&mut rng, namespace, HOLD_MS_MAX);
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        let invoke = shared.now();
        let outcome = match current.release(&hold).await {
            Ok(at) => Outcome::Released { at },
            Err(status) => {
                lost |= session_gone(&status);
                classify(&status)
            }
        };
        record(
            sid,
            &lock,
            OpKind::Release { token: hold.token },
            invoke,
            outcome,
        );
    }
    if let Some(session) = session {
        let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
    }
}
