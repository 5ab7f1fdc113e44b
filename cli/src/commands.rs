//! Client-side subcommands of the `holdfast` binary: `status`, `describe`, `locks`, `watch` and
//! `lock NAME -- CMD` (run a command while holding a lock, like `consul lock`).

use std::process::ExitCode;

use anyhow::Context as _;
use std::time::Duration;

use clap::{Args, ValueEnum};
use holdfast_client::{Client, DEV_ENDPOINTS, Health, LockMode};
use holdfast_proto::v1 as pb;
use serde_json::json;

/// Exit code of `holdfast lock` when the lock was not granted within `--timeout`.
pub const EXIT_LOCK_TIMEOUT: u8 = 124;
/// Exit code of any subcommand that failed on Holdfast's side (unreachable cluster, refusal).
pub const EXIT_ERROR: u8 = 125;
/// Exit code of `holdfast lock` when the session was lost while the command ran (the command got
/// SIGTERM, then SIGKILL after the grace period).
pub const EXIT_SESSION_LOST: u8 = 75;
/// `holdfast serve` stopped itself because Raft hit a fatal storage error (e.g. the disk is
/// full): it acknowledged nothing it had not persisted, and restarting it once the disk is
/// fixed recovers it from its data dir (EX_IOERR).
pub const EXIT_FAIL_STOP: u8 = 74;
/// How long a command gets between SIGTERM and SIGKILL.
pub const KILL_GRACE_MS: u64 = 5_000;

#[derive(Args, Clone)]
pub struct Connection {
    /// Comma-separated node addresses (default: the `holdfast dev` cluster).
    #[arg(long, env = "HOLDFAST_ENDPOINTS", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true)]
    pub(crate) output: Output,
    /// Bearer token for clusters that require one (their `--token-file`).
    #[arg(long, env = "HOLDFAST_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// TLS: the cluster CA (PEM); clients connect with https. (For `holdfast serve` the three
    /// TLS flags name the node's own certificate, key and the CA.)
    #[arg(long, env = "HOLDFAST_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// TLS: a client certificate (PEM) for mutual TLS; with --tls-key.
    #[arg(long, env = "HOLDFAST_TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS: the client certificate's key (PEM).
    #[arg(long, env = "HOLDFAST_TLS_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

impl Connection {
    /// The TLS flags as a node's own certificate, key and CA (`holdfast serve`): all three or
    /// none.
    pub fn tls_files(&self) -> anyhow::Result<Option<holdfast_server::tls::TlsFiles>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(holdfast_server::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => anyhow::bail!("a node needs --tls-cert, --tls-key and --tls-ca together"),
        }
    }

    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let endpoints: Vec<String> = if self.endpoints.is_empty() {
            DEV_ENDPOINTS.iter().map(|e| (*e).to_owned()).collect()
        } else {
            self.endpoints.clone()
        };
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let tls = match &self.tls_ca {
            Some(ca) => Some(holdfast_client::ClientTls {
                ca_pem: read(ca)?,
                identity: match (&self.tls_cert, &self.tls_key) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                },
            }),
            None => None,
        };
        let client = Client::connect_with(&endpoints, tls.as_ref())?;
        Ok(match &self.token {
            Some(token) => client.with_token(token)?,
            None => client,
        })
    }
}

/// A binding's config: the bytes of `path`, or none.
pub fn read_config(path: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    path.map_or(Ok(Vec::new()), |path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    })
}

/// Parses `500ms`, `10s`, `2m`, or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1)
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    Ok(Duration::from_millis(value.saturating_mul(unit_ms)))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn mode_name(mode: i32) -> &'static str {
    if mode == pb::LockMode::Shared as i32 {
        "shared"
    } else {
        "exclusive"
    }
}

fn lock_json(lock: &pb::LockInfo) -> serde_json::Value {
    json!({
        "name": lock.name,
        "mode": mode_name(lock.mode),
        "max_holders": lock.max_holders,
        "delayed_until_ms": lock.delayed_until_ms,
        "holders": lock.holders.iter().map(|h| json!({
            "session_id": h.session_id, "token": h.token, "mode": mode_name(h.mode),
            "since_ms": h.since_ms, "lease_expires_at_ms": h.lease_expires_at_ms,
            "policy": h.policy, "policy_version": h.policy_version,
        })).collect::<Vec<_>>(),
        "waiters": lock.waiters.iter().map(|w| json!({
            "session_id": w.session_id, "position": w.position, "mode": mode_name(w.mode),
            "priority": w.priority, "queued_at_ms": w.queued_at_ms, "deadline_ms": w.deadline_ms,
        })).collect::<Vec<_>>(),
    })
}

fn print_lock_text(lock: &pb::LockInfo) {
    println!(
        "{} ({}, max_holders {})",
        lock.name,
        mode_name(lock.mode),
        lock.max_holders
    );
    for h in &lock.holders {
        println!(
            "  holder  session {:<8} token {:<8} since {} ms  granted by {}@{}",
            h.session_id, h.token, h.since_ms, h.policy, h.policy_version
        );
    }
    for w in &lock.waiters {
        println!(
            "  waiter  session {:<8} position {:<5} {}",
            w.session_id,
            w.position,
            mode_name(w.mode)
        );
    }
    if lock.delayed_until_ms > 0 {
        println!("  lock-delay until {} ms", lock.delayed_until_ms);
    }
}

pub async fn status(connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let mut rows = Vec::new();
    for (index, endpoint) in client.endpoints().iter().enumerate() {
        rows.push((endpoint.clone(), client.status(index).await));
    }
    let answered: Vec<&pb::StatusResponse> =
        rows.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let agree = answered.windows(2).all(|w| {
        w[0].applied_index != w[1].applied_index || w[0].state_digest == w[1].state_digest
    });
    match connection.output {
        Output::Json => {
            let nodes: Vec<serde_json::Value> = rows
                .iter()
                .map(|(endpoint, r)| match r {
                    Ok(s) => json!({
                        "endpoint": endpoint, "node_id": s.node_id, "leader_id": s.leader_id, "term": s.term,
                        "last_log_index": s.last_log_index, "applied_index": s.applied_index, "now_ms": s.now_ms,
                        "voters": s.voters, "sessions": s.session_count, "state_digest": s.state_digest,
                        "checkpoint_index": s.checkpoint_index, "checkpoint_digest": s.checkpoint_digest,
                        "digest_mismatches": s.digest_mismatches, "divergence": s.divergence,
                    }),
                    Err(e) => json!({ "endpoint": endpoint, "error": e.message() }),
                })
                .collect();
            println!("{}", json!({ "nodes": nodes, "digests_agree": agree }));
        }
        Output::Text => {
            for (endpoint, r) in &rows {
                match r {
                    Ok(s) => println!(
                        "{endpoint:<22} node {} {:<8} term {:<4} applied {:<8} sessions {:<5} digest {}",
                        s.node_id,
                        if s.leader_id == s.node_id {
                            "leader"
                        } else {
                            "follower"
                        },
                        s.term,
                        s.applied_index,
                        s.session_count,
                        &s.state_digest[..s.state_digest.len().min(16)]
                    ),
                    Err(e) => println!("{endpoint:<22} unreachable: {}", e.message()),
                }
                if let Ok(s) = r
                    && !s.divergence.is_empty()
                {
                    println!(
                        "{endpoint:<22} DETERMINISM GUARD ALARM ({} mismatches): {}",
                        s.digest_mismatches, s.divergence
                    );
                }
            }
            println!(
                "state digests at equal applied index agree: {}",
                if agree { "yes" } else { "NO" }
            );
        }
    }
    Ok(if answered.is_empty() {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn describe(connection: &Connection, name: &str) -> anyhow::Result<ExitCode> {
    let response = connection.client()?.describe(name).await?;
    match (&response.lock, connection.output) {
        (Some(lock), Output::Json) => println!("{}", lock_json(lock)),
        (None, Output::Json) => println!("{}", json!({ "name": name, "held": false })),
        (Some(lock), Output::Text) => print_lock_text(lock),
        (None, Output::Text) => println!("{name}: free (no holders, no waiters)"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke(connection: &Connection, name: &str, token: u64) -> anyhow::Result<ExitCode> {
    let released_at = connection.client()?.revoke(name, token).await?;
    match connection.output {
        Output::Json => println!(
            "{}",
            json!({ "name": name, "token": token, "released_at": released_at })
        ),
        Output::Text => println!("{name}: hold {token} revoked at index {released_at}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn locks(connection: &Connection, prefix: &str) -> anyhow::Result<ExitCode> {
    let response = connection.client()?.list(prefix, 0).await?;
    match connection.output {
        Output::Json => println!(
            "{}",
            serde_json::Value::Array(response.locks.iter().map(lock_json).collect())
        ),
        Output::Text if response.locks.is_empty() => {
            println!("no locks held or waited for under {prefix:?}")
        }
        Output::Text => response.locks.iter().for_each(print_lock_text),
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_name(kind: i32) -> &'static str {
    pb::EventKind::try_from(kind).map_or("unknown", |k| match k {
        pb::EventKind::Unspecified => "unknown",
        pb::EventKind::SessionOpened => "session-opened",
        pb::EventKind::SessionClosed => "session-closed",
        pb::EventKind::SessionExpired => "session-expired",
        pb::EventKind::Acquired => "acquired",
        pb::EventKind::Released => "released",
        pb::EventKind::Queued => "queued",
        pb::EventKind::LeftQueue => "left-queue",
        pb::EventKind::Proclaimed => "proclaimed",
        pb::EventKind::PolicyDeployed => "policy-deployed",
        pb::EventKind::PolicyBound => "policy-bound",
        pb::EventKind::PolicyUnbound => "policy-unbound",
        pb::EventKind::PolicyFault => "policy-fault",
        pb::EventKind::PolicyDisagreement => "policy-disagreement",
    })
}

fn reason_name(reason: i32) -> &'static str {
    pb::EventReason::try_from(reason).map_or("", |r| match r {
        pb::EventReason::None => "",
        pb::EventReason::Released => "released",
        pb::EventReason::SessionClosed => "session-closed",
        pb::EventReason::SessionExpired => "session-expired",
        pb::EventReason::LeaseExpired => "lease-expired",
        pb::EventReason::TimedOut => "timed-out",
        pb::EventReason::Cancelled => "cancelled",
        pb::EventReason::Preempted => "preempted",
        pb::EventReason::Revoked => "revoked",
    })
}

pub async fn watch(
    connection: &Connection,
    prefix: &str,
    from_revision: u64,
) -> anyhow::Result<ExitCode> {
    let mut stream = connection.client()?.watch(prefix, from_revision).await?;
    while let Some(response) = stream.message().await? {
        for e in &response.events {
            match connection.output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "revision": response.revision, "kind": kind_name(e.kind), "lock": e.lock,
                        "session_id": e.session_id, "token": e.token, "reason": reason_name(e.reason),
                        "position": e.position, "policy": e.policy,
                        "policy_version": e.policy_version, "prefix": e.prefix, "hook": e.hook,
                    })
                ),
                Output::Text
                    if e.kind != pb::EventKind::Acquired as i32
                        && (!e.policy.is_empty() || !e.prefix.is_empty()) =>
                {
                    println!(
                        "{:<8} {:<15} {:<24} policy {}@{} prefix {:?}{}",
                        response.revision,
                        kind_name(e.kind),
                        e.lock,
                        e.policy,
                        e.policy_version,
                        e.prefix,
                        if e.hook.is_empty() {
                            String::new()
                        } else {
                            format!(" hook {}", e.hook)
                        }
                    );
                }
                Output::Text => println!(
                    "{:<8} {:<15} {:<24} session {:<8} {}{}{}",
                    response.revision,
                    kind_name(e.kind),
                    e.lock,
                    e.session_id,
                    if e.token > 0 {
                        format!("token {} ", e.token)
                    } else {
                        String::new()
                    },
                    reason_name(e.reason),
                    if e.kind == pb::EventKind::Acquired as i32 {
                        format!(" by {}@{}", e.policy, e.policy_version)
                    } else {
                        String::new()
                    }
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct LockArgs {
    /// Lock name.
    pub name: String,
    /// Take the lock in shared mode.
    #[arg(long)]
    pub shared: bool,
    /// How long to wait for the lock (0 = try once).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Session TTL.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub ask: AskArgs,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command while holding the lock; its exit code becomes ours.
pub async fn lock(connection: &Connection, args: LockArgs) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let session = args.ask.open_session(&client, args.ttl).await?;
    let mode = if args.shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    let Some(hold) = session
        .acquire_with_priority(&args.name, mode, millis(args.timeout), args.ask.priority)
        .await?
    else {
        eprintln!(
            "holdfast lock: {} was not granted within {:?}",
            args.name, args.timeout
        );
        let _ = session.close().await;
        return Ok(ExitCode::from(EXIT_LOCK_TIMEOUT));
    };
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("HOLDFAST_LOCK", &args.name)
        .env("HOLDFAST_FENCING_TOKEN", hold.token.to_string())
        .env("HOLDFAST_SESSION_ID", session.id.to_string())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {:?}: {e}", args.command[0]))?;
    let mut health = session.health_watch();
    let exit = tokio::select! {
        status = child.wait() => {
            let status = status?;
            ExitCode::from(status.code().map_or(EXIT_ERROR, |c| u8::try_from(c).unwrap_or(EXIT_ERROR)))
        }
        _ = health.wait_for(|h| *h == Health::Lost) => {
            eprintln!("holdfast lock: session {} lost; stopping the command (SIGTERM, SIGKILL after {KILL_GRACE_MS} ms)", session.id);
            terminate(&mut child).await;
            ExitCode::from(EXIT_SESSION_LOST)
        }
    };
    if session.health() != Health::Lost {
        session.release(&hold).await?;
    }
    let _ = session.close().await;
    Ok(exit)
}

async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_millis(KILL_GRACE_MS), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("ten").is_err());
    }
}

#[derive(Args)]
pub struct ElectArgs {
    /// Election name.
    pub name: String,
    /// The value to proclaim when elected.
    #[arg(default_value = "")]
    pub value: String,
    /// Only print leader changes (no campaign).
    #[arg(long)]
    pub observe: bool,
    /// Session TTL while campaigning and leading.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub ask: AskArgs,
}

/// What `lock` and `elect` tell the policies: the request's priority and the session's labels
/// (the priority, tenant-quota and election-preference policies decide by them).
#[derive(Args)]
pub struct AskArgs {
    /// The request's priority (policies may clamp or ignore it; the built-in FIFO ignores it).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// A session label KEY=VALUE (repeatable), e.g. --label tenant=payments.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

impl AskArgs {
    /// Opens the session for `lock` / `elect` with these labels.
    async fn open_session(
        &self,
        client: &Client,
        ttl: Duration,
    ) -> anyhow::Result<holdfast_client::Session> {
        let principal = std::env::var("USER").unwrap_or_else(|_| "holdfast-cli".to_owned());
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        Ok(client
            .open_session_with_labels(millis(ttl), &principal, &labels)
            .await?)
    }
}

/// Campaigns until elected, leads until interrupted (then resigns) or the session is lost; or,
/// with `--observe`, prints every leader change.
pub async fn elect(connection: &Connection, args: ElectArgs) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    if args.observe {
        let mut changes = client.observe(&args.name).await?;
        while let Some(change) = changes.message().await? {
            let leader = change.leader.and_then(|l| l.key.map(|k| (k, l.value)));
            match (connection.output, leader) {
                (Output::Json, Some((key, value))) => println!(
                    "{}",
                    json!({ "revision": change.revision, "session_id": key.session_id, "token": key.token,
                            "value": String::from_utf8_lossy(&value) })
                ),
                (Output::Json, None) => {
                    println!("{}", json!({ "revision": change.revision, "leader": null }))
                }
                (Output::Text, Some((key, value))) => println!(
                    "{:<8} leader: session {} token {} value {:?}",
                    change.revision,
                    key.session_id,
                    key.token,
                    String::from_utf8_lossy(&value)
                ),
                (Output::Text, None) => println!("{:<8} no leader", change.revision),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Install the Ctrl-C handler before campaigning: once we lead, an interrupt must resign,
    // not kill the process with the default action.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let session = args.ask.open_session(&client, args.ttl).await?;
    let leadership = loop {
        if let Some(leadership) = session
            .campaign_with_priority(
                &args.name,
                args.value.as_bytes(),
                holdfast_client::LOCK_WAIT_MS_MAX,
                args.ask.priority,
            )
            .await?
        {
            break leadership;
        }
    };
    match connection.output {
        Output::Json => println!(
            "{}",
            json!({ "elected": args.name, "session_id": session.id, "token": leadership.token })
        ),
        Output::Text => println!(
            "elected: {} (session {}, token {})",
            args.name, session.id, leadership.token
        ),
    }
    let mut health = session.health_watch();
    tokio::select! {
        _ = interrupt.recv() => {
            session.resign(&leadership).await?;
            let _ = session.close().await;
            Ok(ExitCode::SUCCESS)
        }
        _ = health.wait_for(|h| *h == Health::Lost) => {
            eprintln!("holdfast elect: session {} lost; no longer leading {}", session.id, args.name);
            Ok(ExitCode::from(EXIT_SESSION_LOST))
        }
    }
}

#[derive(clap::Subcommand)]
pub enum MemberCommand {
    /// Voters and learners with their addresses.
    List,
    /// Add node ID serving at ADDR as a learner; waits until it has caught up.
    Add { id: u64, addr: String },
    /// Make learner ID a voter.
    Promote { id: u64 },
    /// Remove node ID from the cluster.
    Remove { id: u64 },
}

#[derive(clap::Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to voter ID.
    Transfer { id: u64 },
}

fn print_members(connection: &Connection, leader_id: u64, members: &[pb::Member]) {
    match connection.output {
        Output::Json => println!(
            "{}",
            json!({
                "leader_id": leader_id,
                "members": members.iter().map(|m| json!({
                    "id": m.id, "addr": m.addr, "voter": m.voter,
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Text => {
            for member in members {
                println!(
                    "node {:<4} {:<22} {}{}",
                    member.id,
                    member.addr,
                    if member.voter { "voter" } else { "learner" },
                    if member.id == leader_id {
                        " (leader)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

pub async fn member(connection: &Connection, command: MemberCommand) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let members = match command {
        MemberCommand::List => {
            let response = client.members().await?;
            print_members(connection, response.leader_id, &response.members);
            return Ok(ExitCode::SUCCESS);
        }
        MemberCommand::Add { id, addr } => client.add_learner(id, &addr).await?.members,
        MemberCommand::Promote { id } => client.promote(id).await?.members,
        MemberCommand::Remove { id } => client.remove_member(id).await?.members,
    };
    let leader_id = client.members().await.map_or(0, |r| r.leader_id);
    print_members(connection, leader_id, &members);
    Ok(ExitCode::SUCCESS)
}

pub async fn leader(connection: &Connection, command: LeaderCommand) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    match command {
        LeaderCommand::Transfer { id } => {
            let leader = client.transfer_leader(id).await?;
            match connection.output {
                Output::Json => println!("{}", json!({ "leader_id": leader })),
                Output::Text => println!("node {leader} leads"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum SnapshotCommand {
    /// Write a consistent copy of the cluster's state to FILE (admin): every write acknowledged
    /// before the call is in it.
    Save { file: std::path::PathBuf },
    /// Check a backup file and print what it holds.
    Inspect { file: std::path::PathBuf },
    /// Build the data dir of one member of a new cluster from a backup (offline, like
    /// `etcdutl snapshot restore`): run it for every member with the same --peer list, then
    /// start each with `holdfast serve` on its data dir.
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct RestoreArgs {
    file: std::path::PathBuf,
    /// The new data dir (must not exist or be empty).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// This member's id.
    #[arg(long)]
    id: u64,
    /// Every voter of the new cluster, ID=HOST:PORT; repeat for each (include this node).
    #[arg(long = "peer", value_parser = holdfast_server::config::parse_peer, value_delimiter = ',', required = true)]
    peers: Vec<(u64, String)>,
    /// Start the restored log this many entries past the backup's index, so that no fencing
    /// token the old cluster granted after the backup is ever granted again (0 = none).
    #[arg(long, default_value_t = holdfast_server::backup::DEFAULT_BUMP_INDEX)]
    bump_index: u64,
}

fn print_backup(
    connection: &Connection,
    header: &holdfast_server::backup::Header,
    extra: serde_json::Value,
) {
    match connection.output {
        Output::Json => {
            let mut value = serde_json::to_value(header).expect("header serializes");
            if let (Some(map), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
                map.extend(extra);
            }
            println!("{value}");
        }
        Output::Text => {
            println!(
                "index {}  term {}  {} bytes  sha256 {}  (from node {})",
                header.index, header.term, header.size_bytes, header.sha256, header.node_id
            );
            if let serde_json::Value::Object(extra) = extra {
                for (key, value) in extra {
                    println!("{key}: {value}");
                }
            }
        }
    }
}

pub async fn snapshot(
    connection: &Connection,
    command: SnapshotCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Save { file } => {
            let client = connection.client()?;
            let (header, state) = client.snapshot().await?;
            let header = holdfast_server::backup::save(&file, &header, &state)?;
            print_backup(
                connection,
                &header,
                json!({ "file": file.display().to_string() }),
            );
        }
        SnapshotCommand::Inspect { file } => {
            let (header, state) = holdfast_server::backup::load(&file)?;
            let (locks, holds, waiters) = state.lock_counts();
            print_backup(
                connection,
                &header,
                json!({
                    "locks": locks, "holds": holds, "waiters": waiters,
                    "sessions": state.session_count(),
                }),
            );
        }
        SnapshotCommand::Restore(args) => {
            let target = holdfast_server::backup::RestoreTarget {
                data_dir: args.data_dir,
                id: args.id,
                peers: args.peers.into_iter().collect(),
                bump_index: args.bump_index,
            };
            let restored = holdfast_server::backup::restore(&args.file, &target)?;
            print_backup(
                connection,
                &restored.header,
                json!({
                    "data_dir": target.data_dir.display().to_string(),
                    "restored_index": restored.index,
                }),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
