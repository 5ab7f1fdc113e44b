//! Real wasm policies through the faults: part of the workload's namespace is bound to the
//! example policies for the whole run (priority with aging, tenant-quota over labelled
//! sessions, lease-rules, election-preference), and a churn task redeploys and rebinds during
//! the run. A digest poller records every node's checkpoints, so that replicas running user
//! code inside apply can be compared index by index (`checkers::digests`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use holdfast_client::Client;
use holdfast_proto::v1 as pb;

use super::rng::Rng;
use super::workload::{LOCK_PREFIX, Shared};
use crate::history::{Checkpoint, PolicyChange, QueueSample};

/// Sessions carry `tenant = t{client % TENANTS}` and `zone = z{client % ZONES}`.
pub const TENANTS: usize = 3;
pub const ZONES: usize = 3;

/// Locks under tenant-quota. Waiting is never admitted (`max_waits = 0`), so hand-offs cannot
/// add holds the quota did not admit, and a tenant's holds under the prefix never exceed
/// `max_holds` of some config in force: the checker's bound is the largest.
pub const QUOTA_PREFIX: &str = "torture/quota/";
pub const QUOTA_CONFIGS: [&str; 2] = [
    "max_holds = 1\nmax_waits = 0\n",
    "max_holds = 2\nmax_waits = 0\n",
];
pub const QUOTA_MAX_HOLDS: usize = 2;

/// Locks under the priority policy (`aging_ms = PRIORITY_AGING_MS`, priorities clamped into
/// 0..=PRIORITY_MAX, which the workload asks for).
pub const PRIORITY_PREFIX: &str = "torture/prio/";
pub const PRIORITY_MAX: u64 = 10;
pub const PRIORITY_AGING_MS: u64 = 50;
/// Locks under lease-rules: holds end after their lease, so a slow release may find its hold
/// gone (FAILED_PRECONDITION).
pub const LEASE_PREFIX: &str = "torture/lease/";
/// Elections (plain exclusive acquires on locks whose policy has an `elect` hook).
pub const ELECTION_PREFIX: &str = "torture/elect/";
/// Redeployed and rebound during the run: alternately the `fifo` and `priority` modules as
/// new versions of policy `churn`.
pub const CHURN_PREFIX: &str = "torture/churn/";
const CHURN_POLICY: &str = "churn";
const CHURN_MODULES: [&str; 2] = ["fifo", "priority"];

/// (prefix, example module, deployed name, config) bound for the whole run.
const BINDINGS: [(&str, &str, &str, &str); 4] = [
    (
        PRIORITY_PREFIX,
        "priority",
        "prio",
        "aging_ms = 50\nmax_priority = 10\n",
    ),
    (QUOTA_PREFIX, "tenant_quota", "quota", QUOTA_CONFIGS[0]),
    (
        LEASE_PREFIX,
        "lease_rules",
        "lease",
        "lease_ms = 800\nlock_delay_ms = 300\n",
    ),
    (
        ELECTION_PREFIX,
        "election_preference",
        "zones",
        "preferred_zones = z0, z1\nmin_tenure_ms = 200\npreempt_grace_ms = 100\n",
    ),
];

/// How often the churn task changes a deployment or binding.
const CHURN_EVERY_MS: u64 = 4_000;
/// Bound of one admin call (a partition may leave it unanswered).
const ADMIN_TIMEOUT_MS: u64 = 10_000;
/// How often the priority locks' queues are read.
const SAMPLE_EVERY_MS: u64 = 100;
/// How often the digest poller asks every node for its latest checkpoint.
const POLL_EVERY_MS: u64 = 300;

/// A policy may end holds of this lock on its own (a lease, or an election's preemption), so
/// its holder's release may find the hold gone (FAILED_PRECONDITION).
pub fn policy_ends_holds(lock: &str) -> bool {
    lock.starts_with(LEASE_PREFIX) || lock.starts_with(ELECTION_PREFIX)
}

/// What the workload does on a lock of each namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    Plain,
    Priority,
    Quota,
    Lease,
    Election,
    Churn,
}

impl Namespace {
    fn prefix(self) -> String {
        match self {
            Namespace::Plain => LOCK_PREFIX.to_owned(),
            Namespace::Priority => PRIORITY_PREFIX.to_owned(),
            Namespace::Quota => QUOTA_PREFIX.to_owned(),
            Namespace::Lease => LEASE_PREFIX.to_owned(),
            Namespace::Election => ELECTION_PREFIX.to_owned(),
            Namespace::Churn => CHURN_PREFIX.to_owned(),
        }
    }

    /// Election locks are only ever campaigned for exclusively.
    pub fn allows_shared(self) -> bool {
        self != Namespace::Election
    }
}

/// A lock for the next operation: half of them plain, the rest spread over the policies.
pub fn pick_lock(rng: &mut Rng, locks: usize) -> (String, Namespace) {
    let namespace = match rng.below(10) {
        0..=4 => Namespace::Plain,
        5 => Namespace::Priority,
        6 => Namespace::Quota,
        7 => Namespace::Lease,
        8 => Namespace::Election,
        _ => Namespace::Churn,
    };
    let index = rng.below(locks);
    // One priority lock, so that queues form there and grants pass waiters.
    let index = if namespace == Namespace::Priority {
        0
    } else {
        index
    };
    (format!("{}{index}", namespace.prefix()), namespace)
}

/// How long to hold a lock of `namespace`: the priority lock longer, so that its queue is
/// there when it is sampled.
pub fn hold_ms(rng: &mut Rng, namespace: Namespace, hold_ms_max: u64) -> u64 {
    match namespace {
        Namespace::Priority => rng.between(50, 150),
        _ => rng.between(0, hold_ms_max),
    }
}

/// The priority to ask for on a lock of `namespace`.
pub fn priority(rng: &mut Rng, namespace: Namespace) -> i32 {
    match namespace {
        Namespace::Priority | Namespace::Election | Namespace::Churn => {
            i32::try_from(rng.below(PRIORITY_MAX as usize + 1)).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Client `index`'s session labels.
pub fn labels(index: usize) -> [(&'static str, String); 2] {
    [
        ("tenant", format!("t{}", index % TENANTS)),
        ("zone", format!("z{}", index % ZONES)),
    ]
}

fn wasm(module: &str) -> Vec<u8> {
    crate::policy_wasm(module)
}

async fn bind(client: &Client, prefix: &str, policy: &str, config: &str) -> Result<(), String> {
    let request = pb::BindPolicyRequest {
        prefix: prefix.to_owned(),
        policy: policy.to_owned(),
        version: 0,
        config: config.as_bytes().to_vec(),
        mode: pb::BindMode::Enforce as i32,
    };
    admin(client.bind_policy(request)).await.map(|_| ())
}

async fn admin<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(ADMIN_TIMEOUT_MS), call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {ADMIN_TIMEOUT_MS} ms")),
    }
}

/// Deploys and binds every policy of the run, and the first version of `churn`.
pub async fn install(client: &Client) -> Result<(), String> {
    for (prefix, module, name, config) in BINDINGS {
        admin(client.deploy_policy(name, &wasm(module))).await?;
        bind(client, prefix, name, config).await?;
    }
    admin(client.deploy_policy(CHURN_POLICY, &wasm(CHURN_MODULES[0]))).await?;
    bind(client, CHURN_PREFIX, CHURN_POLICY, "").await
}

/// Until `stop`: every CHURN_EVERY_MS either deploys the other `churn` module as a new version
/// and binds it, or rebinds the quota with its other config. Records each attempt.
pub async fn churn(client: Client, shared: Arc<Shared>, stop: Arc<AtomicBool>, seed: u64) {
    let modules = CHURN_MODULES.map(wasm);
    let mut rng = Rng::new(seed ^ 0xC4A2);
    let mut step = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(
            CHURN_EVERY_MS / 2 + rng.between(0, CHURN_EVERY_MS),
        ))
        .await;
        step += 1;
        let at = shared.now();
        let (what, result) = if step % 2 == 1 {
            let module = (step / 2 + 1) % 2;
            let outcome = match admin(client.deploy_policy(CHURN_POLICY, &modules[module])).await {
                Ok(deployed) => bind(&client, CHURN_PREFIX, CHURN_POLICY, "")
                    .await
                    .map(|()| format!("version {}", deployed.version)),
                Err(error) => Err(error),
            };
            (
                format!(
                    "deploy {} as {CHURN_POLICY} and bind it",
                    CHURN_MODULES[module]
                ),
                outcome,
            )
        } else {
            let config = QUOTA_CONFIGS[(step / 2) % 2];
            (
                format!("rebind quota with {:?}", config.trim()),
                bind(&client, QUOTA_PREFIX, "quota", config)
                    .await
                    .map(|()| "bound".to_owned()),
            )
        };
        let change = PolicyChange {
            at,
            accepted: result.is_ok(),
            what: match result {
                Ok(detail) => format!("{what}: {detail}"),
                Err(error) => format!("{what}: {error}"),
            },
        };
        shared
            .policy_changes
            .lock()
            .expect("policy changes")
            .push(change);
    }
}

/// Until `stop`: asks every node for its latest checkpoint (index, digest) and records each
/// one the first time it is seen.
pub async fn poll_checkpoints(
    nodes: BTreeMap<u64, String>,
    stop: Arc<AtomicBool>,
) -> Vec<Checkpoint> {
    let clients: BTreeMap<u64, Client> = nodes
        .iter()
        .map(|(id, addr)| (*id, Client::connect(&[addr.as_str()]).expect("client")))
        .collect();
    let mut seen = BTreeSet::new();
    let mut checkpoints = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for (node, client) in &clients {
            let status =
                tokio::time::timeout(Duration::from_millis(POLL_EVERY_MS * 3), client.status(0))
                    .await;
            let Ok(Ok(status)) = status else { continue };
            if status.checkpoint_index == 0 || !seen.insert((*node, status.checkpoint_index)) {
                continue;
            }
            checkpoints.push(Checkpoint {
                node: *node,
                index: status.checkpoint_index,
                digest: status.checkpoint_digest,
            });
        }
        tokio::time::sleep(Duration::from_millis(POLL_EVERY_MS)).await;
    }
    checkpoints
}

/// Until `stop`: reads the holders and waiters of every priority-policy lock every
/// SAMPLE_EVERY_MS (one linearizable List), for `checkers::priority_aging`.
pub async fn sample_priority_queues(client: Client, stop: Arc<AtomicBool>) -> Vec<QueueSample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let read = tokio::time::timeout(
            Duration::from_millis(ADMIN_TIMEOUT_MS),
            client.list(PRIORITY_PREFIX, 0),
        )
        .await;
        if let Ok(Ok(list)) = read {
            samples.extend(list.locks.into_iter().map(|lock| {
                QueueSample {
                    lock: lock.name,
                    holders: lock
                        .holders
                        .iter()
                        .map(|h| (h.session_id, h.token, h.since_ms))
                        .collect(),
                    waiters: lock
                        .waiters
                        .iter()
                        .map(|w| (w.session_id, w.priority, w.queued_at_ms))
                        .collect(),
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(SAMPLE_EVERY_MS)).await;
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkers_bounds_are_the_bound_configs() {
        assert!(
            BINDINGS[0]
                .3
                .contains(&format!("aging_ms = {PRIORITY_AGING_MS}\n"))
        );
        assert!(
            BINDINGS[0]
                .3
                .contains(&format!("max_priority = {PRIORITY_MAX}\n"))
        );
        let max_holds = QUOTA_CONFIGS.map(|config| {
            config
                .lines()
                .find_map(|line| line.strip_prefix("max_holds = "))
                .and_then(|value| value.parse::<usize>().ok())
                .expect("max_holds")
        });
        assert_eq!(max_holds.into_iter().max(), Some(QUOTA_MAX_HOLDS));
        assert!(QUOTA_CONFIGS.iter().all(|c| c.contains("max_waits = 0\n")));
    }
}
