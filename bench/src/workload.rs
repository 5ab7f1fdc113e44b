//! The scenarios of issue #6, the same for Holdfast, etcd and ZooKeeper: one session (etcd:
//! lease) per client, client i talking to member (leader + i) mod N, a warm-up whose samples are
//! dropped, then a measured window. ZooKeeper runs S1 and S2 with the standard lock recipe
//! (an ephemeral sequential node under the lock's directory; the lowest holds it, every other
//! contender watches the node just below its own).
//!
//! - S1 `cycles`: each client locks and unlocks its own lock (no contention).
//! - S2 `handoff`: every client queues on ONE lock and unlocks as soon as it is granted.
//! - S3 `keepalive`: each client renews its session/lease back to back on one stream.
//! - S4 `failover` (in `compare`, which owns the processes): S1 with 16 clients while the
//!   leader is killed with SIGKILL; the time from the kill to the first successful lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use holdfast_client::{Client, Hold, LockMode, Session};
use holdfast_proto::v1 as pb;

/// Session (lease) time-to-live of every benchmark client.
pub const SESSION_TTL_MS: u64 = 60_000;
/// How long an S2 client waits for the contended lock before asking again.
const HANDOFF_WAIT_MS: u64 = 10_000;
/// etcd calls give up after this long (a call to a killed member would otherwise hang).
#[cfg(feature = "etcd")]
const ETCD_CALL_TIMEOUT_MS: u64 = 2_000;
/// ZooKeeper session timeout of every benchmark client (within the servers' default bounds,
/// 2 to 20 ticks of 2 s).
#[cfg(feature = "zookeeper")]
const ZK_SESSION_TIMEOUT_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Holdfast,
    Etcd,
    Zookeeper,
}

impl System {
    /// Whether this system has `scenario` (ZooKeeper's sessions are kept alive by its client
    /// library's pings: there is no keepalive call to measure).
    pub fn runs(self, scenario: Scenario) -> bool {
        !(self == System::Zookeeper && scenario == Scenario::Keepalive)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// S1: lock + unlock cycles, each client on its own lock.
    Cycles,
    /// S2: every client on one lock, unlocking as soon as granted.
    Handoff,
    /// S3: keepalives back to back, one stream per session.
    Keepalive,
}

/// The index (into `endpoints`) of the member every answering member names as leader.
pub async fn leader_index(system: System, endpoints: &[String]) -> anyhow::Result<Option<usize>> {
    match system {
        System::Holdfast => {
            let mut leader = None;
            for (index, endpoint) in endpoints.iter().enumerate() {
                let status = Client::connect(&[endpoint])?.status(0).await?;
                if status.leader_id == 0 {
                    return Ok(None);
                }
                if status.leader_id == status.node_id {
                    leader = Some(index);
                }
            }
            Ok(leader)
        }
        System::Etcd => etcd_leader_index(endpoints).await,
        System::Zookeeper => zk_leader_index(endpoints).await,
    }
}

/// Asks every ZooKeeper server for its mode with the `srvr` four-letter word.
async fn zk_leader_index(endpoints: &[String]) -> anyhow::Result<Option<usize>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut leader = None;
    for (index, endpoint) in endpoints.iter().enumerate() {
        let mut answer = String::new();
        let asked = tokio::time::timeout(Duration::from_secs(2), async {
            let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
            stream.write_all(b"srvr").await?;
            stream.read_to_string(&mut answer).await
        })
        .await;
        if !matches!(asked, Ok(Ok(_))) {
            return Ok(None);
        }
        match answer.lines().find_map(|l| l.strip_prefix("Mode: ")) {
            Some("leader") => leader = Some(index),
            Some("follower") => {}
            _ => return Ok(None),
        }
    }
    Ok(leader)
}

#[cfg(feature = "etcd")]
async fn etcd_leader_index(endpoints: &[String]) -> anyhow::Result<Option<usize>> {
    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    for endpoint in endpoints {
        let mut client = etcd_connect(endpoint).await?;
        let status = client.status().await?;
        let header = status.header().context("etcd status without a header")?;
        ids.push(header.member_id());
        leaders.push(status.leader());
    }
    if leaders.windows(2).any(|w| w[0] != w[1]) || leaders[0] == 0 {
        return Ok(None);
    }
    Ok(ids.iter().position(|id| *id == leaders[0]))
}

#[cfg(not(feature = "etcd"))]
async fn etcd_leader_index(_: &[String]) -> anyhow::Result<Option<usize>> {
    bail!(
        "this holdfast-bench was built without the `etcd` feature (scripts/bench-compare builds it)"
    )
}

#[cfg(feature = "etcd")]
async fn etcd_connect(endpoint: &str) -> anyhow::Result<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_millis(ETCD_CALL_TIMEOUT_MS))
        .with_connect_timeout(Duration::from_millis(ETCD_CALL_TIMEOUT_MS));
    Ok(etcd_client::Client::connect([format!("http://{endpoint}")], Some(options)).await?)
}

/// One benchmark client: a session (lease) on one member.
pub enum Locker {
    Holdfast {
        client: Client,
        session: Session,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        client: Box<etcd_client::Client>,
        lease: i64,
    },
    #[cfg(feature = "zookeeper")]
    Zookeeper {
        client: Box<zookeeper_client::Client>,
        /// Lock directories this client made sure exist.
        dirs: std::collections::BTreeSet<String>,
    },
}

/// What `Locker::lock` returns: what unlocking needs.
pub enum Key {
    Holdfast(Hold),
    #[cfg(feature = "etcd")]
    Etcd(Vec<u8>),
    /// The path of this contender's lock node.
    #[cfg(feature = "zookeeper")]
    Zookeeper(String),
}

impl Locker {
    /// Client `index` of a run: it talks to member (leader + index) mod N (a Holdfast client
    /// moves on to the next member only when that one fails; an etcd client knows only it).
    pub async fn open(
        system: System,
        endpoints: &[String],
        leader: usize,
        index: usize,
    ) -> anyhow::Result<Locker> {
        let first = (leader + index) % endpoints.len();
        match system {
            System::Holdfast => {
                let rotated: Vec<&String> = endpoints
                    .iter()
                    .cycle()
                    .skip(first)
                    .take(endpoints.len())
                    .collect();
                let client = Client::connect(&rotated)?;
                let session = client.open_session(SESSION_TTL_MS, "bench").await?;
                Ok(Locker::Holdfast { client, session })
            }
            System::Etcd => Locker::open_etcd(&endpoints[first]).await,
            System::Zookeeper => Locker::open_zookeeper(&endpoints[first]).await,
        }
    }

    #[cfg(feature = "zookeeper")]
    async fn open_zookeeper(endpoint: &str) -> anyhow::Result<Locker> {
        let client = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_millis(ZK_SESSION_TIMEOUT_MS))
            .connect(endpoint)
            .await?;
        Ok(Locker::Zookeeper {
            client: Box::new(client),
            dirs: Default::default(),
        })
    }

    #[cfg(not(feature = "zookeeper"))]
    async fn open_zookeeper(_: &str) -> anyhow::Result<Locker> {
        bail!(
            "this holdfast-bench was built without the `zookeeper` feature (scripts/bench-compare builds it)"
        )
    }

    #[cfg(feature = "etcd")]
    async fn open_etcd(endpoint: &str) -> anyhow::Result<Locker> {
        let mut client = etcd_connect(endpoint).await?;
        let ttl_s = i64::try_from(SESSION_TTL_MS / 1000).expect("small");
        let lease = client.lease_grant(ttl_s, None).await?.id();
        Ok(Locker::Etcd {
            client: Box::new(client),
            lease,
        })
    }

    #[cfg(not(feature = "etcd"))]
    async fn open_etcd(_: &str) -> anyhow::Result<Locker> {
        etcd_leader_index(&[]).await.map(|_| unreachable!())
    }

    /// Locks `name` exclusively, waiting up to `wait_ms` (Holdfast; 0 = refuse if held). etcd's
    /// Lock always waits (bounded by the call timeout). None = not granted in time.
    pub async fn lock(&mut self, name: &str, wait_ms: u64) -> anyhow::Result<Option<Key>> {
        match self {
            Locker::Holdfast { session, .. } => Ok(session
                .acquire(name, LockMode::Exclusive, wait_ms)
                .await?
                .map(Key::Holdfast)),
            #[cfg(feature = "etcd")]
            Locker::Etcd { client, lease } => {
                let options = etcd_client::LockOptions::new().with_lease(*lease);
                let response = client.lock(name, Some(options)).await?;
                Ok(Some(Key::Etcd(response.key().to_vec())))
            }
            #[cfg(feature = "zookeeper")]
            Locker::Zookeeper { client, dirs } => {
                Ok(Some(Key::Zookeeper(zk_lock(client, dirs, name).await?)))
            }
        }
    }

    pub async fn unlock(&mut self, key: Key) -> anyhow::Result<()> {
        match (self, key) {
            (Locker::Holdfast { session, .. }, Key::Holdfast(hold)) => {
                session.release(&hold).await?;
            }
            #[cfg(feature = "etcd")]
            (Locker::Etcd { client, .. }, Key::Etcd(key)) => {
                client.unlock(key).await?;
            }
            #[cfg(feature = "zookeeper")]
            (Locker::Zookeeper { client, .. }, Key::Zookeeper(path)) => {
                client.delete(&path, None).await?;
            }
            #[cfg(any(feature = "etcd", feature = "zookeeper"))]
            _ => bail!("a key of another system"),
        }
        Ok(())
    }

    pub async fn close(self) {
        match self {
            Locker::Holdfast { session, .. } => {
                let _ = session.close().await;
            }
            #[cfg(feature = "etcd")]
            Locker::Etcd { mut client, lease } => {
                let _ = client.lease_revoke(lease).await;
            }
            // Dropping the client closes its session.
            #[cfg(feature = "zookeeper")]
            Locker::Zookeeper { .. } => {}
        }
    }

    /// Renews the session back to back on one stream until `end`; returns the answer latency
    /// (µs) of each renewal that started at or after `from`.
    async fn keepalives(&mut self, from: Instant, end: Instant) -> anyhow::Result<Vec<u64>> {
        let mut samples = Vec::new();
        match self {
            Locker::Holdfast { client, session } => {
                let session_id = session.id;
                // The first keepalive is queued before the call so the stream opens with it.
                let mut start = Instant::now();
                let (sender, mut responses) = client
                    .retry_at_leader(|channel| async move {
                        let (sender, receiver) = tokio::sync::mpsc::channel(1);
                        sender
                            .try_send(pb::KeepAliveRequest { session_id })
                            .expect("an empty channel has room");
                        let responses = pb::sessions_client::SessionsClient::new(channel)
                            .keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
                            .await?
                            .into_inner();
                        Ok((sender, responses))
                    })
                    .await?;
                loop {
                    responses
                        .message()
                        .await?
                        .ok_or_else(|| anyhow!("keepalive stream ended"))?;
                    record(&mut samples, start, from);
                    if Instant::now() >= end {
                        break;
                    }
                    start = Instant::now();
                    sender.send(pb::KeepAliveRequest { session_id }).await?;
                }
            }
            #[cfg(feature = "etcd")]
            Locker::Etcd { client, lease } => {
                let (mut keeper, mut responses) = client.lease_keep_alive(*lease).await?;
                while Instant::now() < end {
                    let start = Instant::now();
                    keeper.keep_alive().await?;
                    responses
                        .message()
                        .await?
                        .ok_or_else(|| anyhow!("keepalive stream ended"))?;
                    record(&mut samples, start, from);
                }
            }
            #[cfg(feature = "zookeeper")]
            Locker::Zookeeper { .. } => bail!("ZooKeeper has no keepalive call to measure"),
        }
        Ok(samples)
    }
}

/// ZooKeeper's lock recipe: an ephemeral sequential node `lock-N` under the lock's directory
/// (`/` + `name`); the lowest N holds the lock; every other contender watches the node just
/// below its own and looks again when it goes. Returns the node's path (deleting it unlocks).
#[cfg(feature = "zookeeper")]
async fn zk_lock(
    client: &zookeeper_client::Client,
    dirs: &mut std::collections::BTreeSet<String>,
    name: &str,
) -> anyhow::Result<String> {
    use zookeeper_client::{Acls, CreateMode};
    let dir = format!("/{name}");
    if !dirs.contains(&dir) {
        client
            .mkdir(&dir, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
            .await?;
        dirs.insert(dir.clone());
    }
    let (_, sequence) = client
        .create(
            &format!("{dir}/lock-"),
            b"",
            &CreateMode::EphemeralSequential.with_acls(Acls::anyone_all()),
        )
        .await?;
    let mine = format!("lock-{sequence}");
    loop {
        let mut children = client.list_children(&dir).await?;
        // Same prefix, zero-padded sequence numbers: name order is sequence order.
        children.sort_unstable();
        let position = children
            .iter()
            .position(|child| *child == mine)
            .with_context(|| format!("lock node {dir}/{mine} vanished (session expired?)"))?;
        if position == 0 {
            return Ok(format!("{dir}/{mine}"));
        }
        let below = format!("{dir}/{}", children[position - 1]);
        let (stat, watcher) = client.check_and_watch_stat(&below).await?;
        if stat.is_some() {
            watcher.changed().await;
        }
    }
}

/// Adds the latency (µs) of an operation that started at `start`, if that was inside the
/// measured window (at or after `from`).
fn record(samples: &mut Vec<u64>, start: Instant, from: Instant) {
    if start >= from {
        samples.push(start.elapsed().as_micros() as u64);
    }
}

/// What one scenario run measured, per client.
pub struct Samples {
    /// Latency (µs) of each operation that started inside the measured window, per client.
    pub per_client: Vec<Vec<u64>>,
    pub errors: u64,
    pub measured: Duration,
}

/// Runs `scenario` with `clients` clients: `warmup`, then `duration` measured.
pub async fn run(
    system: System,
    endpoints: &[String],
    scenario: Scenario,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Samples> {
    let leader = leader_index(system, endpoints)
        .await?
        .context("the cluster has no leader")?;
    let mut lockers = Vec::with_capacity(clients);
    for index in 0..clients {
        lockers.push(Locker::open(system, endpoints, leader, index).await?);
    }
    let run_id = std::process::id() as u64 * 1_000_000 + u64::from(rand_suffix());
    let from = Instant::now() + warmup;
    let end = from + duration;
    let tasks: Vec<_> = lockers
        .into_iter()
        .enumerate()
        .map(|(index, mut locker)| {
            tokio::spawn(async move {
                let result = match scenario {
                    Scenario::Cycles => {
                        let name = format!("bench/s1/{run_id}/{index}");
                        cycles(&mut locker, &name, from, end, None).await
                    }
                    Scenario::Handoff => {
                        let name = format!("bench/s2/{run_id}");
                        handoff(&mut locker, &name, from, end).await
                    }
                    Scenario::Keepalive => locker
                        .keepalives(from, end)
                        .await
                        .map(|samples| (samples, 0)),
                };
                locker.close().await;
                result
            })
        })
        .collect();
    let mut samples = Samples {
        per_client: Vec::new(),
        errors: 0,
        measured: duration,
    };
    for task in tasks {
        let (latencies, errors) = task.await??;
        samples.per_client.push(latencies);
        samples.errors += errors;
    }
    Ok(samples)
}

/// A per-process suffix so that lock names of consecutive runs differ.
fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros())
}

/// Successful lock calls of the failover scenario: (call started, call answered).
pub type Grants = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// S1's loop: lock, unlock, again. Errors (a killed member) are counted and the loop goes on
/// after a short pause. With `grants`, every successful lock call is recorded.
pub async fn cycles(
    locker: &mut Locker,
    name: &str,
    from: Instant,
    end: Instant,
    grants: Option<Grants>,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut samples = Vec::new();
    let mut errors = 0;
    while Instant::now() < end {
        let start = Instant::now();
        let key = match locker.lock(name, 0).await {
            Ok(Some(key)) => key,
            Ok(None) if grants.is_none() => bail!("uncontended lock {name} was busy"),
            Ok(None) | Err(_) => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(grants) = &grants {
            grants
                .lock()
                .expect("grants lock")
                .push((start, Instant::now()));
        }
        if let Err(error) = locker.unlock(key).await {
            if grants.is_none() {
                return Err(error);
            }
            errors += 1;
            continue;
        }
        record(&mut samples, start, from);
    }
    Ok((samples, errors))
}

/// S2's loop: wait for the shared lock, unlock at once. The sample is the wait.
async fn handoff(
    locker: &mut Locker,
    name: &str,
    from: Instant,
    end: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut samples = Vec::new();
    let mut errors = 0;
    while Instant::now() < end {
        let start = Instant::now();
        let Some(key) = locker.lock(name, HANDOFF_WAIT_MS).await? else {
            errors += 1;
            continue;
        };
        record(&mut samples, start, from);
        locker.unlock(key).await?;
    }
    Ok((samples, errors))
}
