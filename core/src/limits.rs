//! Every bound the replicated state machine enforces, in one place.
//!
//! The shell (`server::api`) checks the same limits at the edge so that bad input is rejected
//! before it is proposed; `apply` checks them again because a log entry is the only input it
//! trusts.

/// Longest lock name, in bytes (UTF-8).
pub const LOCK_NAME_BYTES_MAX: usize = 512;
/// Longest principal, in bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 256;
/// Most labels on one session.
pub const LABELS_PER_SESSION_MAX: usize = 16;
/// Longest label key or value, in bytes.
pub const LABEL_BYTES_MAX: usize = 128;
/// Shortest session TTL. Below this a leader fail-over (≈ 0.4 s with the default Raft timing,
/// seconds with slower settings) could eat most of the TTL.
pub const SESSION_TTL_MS_MIN: u64 = 2_000;
/// Longest session TTL.
pub const SESSION_TTL_MS_MAX: u64 = 3_600_000;
/// Most open sessions in the cluster.
pub const SESSIONS_MAX: usize = 100_000;
/// Most open sessions of one principal, so that one client (or tenant) cannot take every
/// session slot of the cluster.
pub const SESSIONS_PER_PRINCIPAL_MAX: usize = 10_000;
/// Most waiters queued on one lock.
pub const WAITERS_PER_LOCK_MAX: usize = 1_024;
/// Most locks one session may hold or wait for at once.
pub const LOCKS_PER_SESSION_MAX: usize = 1_024;
/// Largest `max_holders` of a shared lock.
pub const HOLDERS_PER_LOCK_MAX: u32 = 1_024;
/// Longest queued wait.
pub const WAIT_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Longest lease a policy may give a hold.
pub const LEASE_MS_MAX: u64 = 24 * 3_600_000;
/// Longest lock-delay a policy may impose.
pub const LOCK_DELAY_MS_MAX: u64 = 60_000;
/// Longest a policy may postpone an election decision: a preemption's grace period, or the
/// time it asks to be asked again.
pub const ELECTION_DELAY_MS_MAX: u64 = 24 * 3_600_000;
/// Largest value a hold carries (an election candidate's proclamation).
pub const VALUE_BYTES_MAX: usize = 4_096;
/// How many recent request outcomes each session remembers for idempotent retries.
pub const RECENT_REQUESTS_PER_SESSION_MAX: usize = 128;
/// Most sessions renewed by one `Tick` entry.
pub const RENEWALS_PER_TICK_MAX: usize = 10_000;
/// Most locks returned by one `List`.
pub const LIST_LOCKS_MAX: usize = 10_000;
/// Longest deny reason a policy may give, in bytes; longer reasons are truncated.
pub const POLICY_REASON_BYTES_MAX: usize = 256;
/// Longest policy name, in bytes (`[a-z0-9._-]`, starting with a letter or digit).
pub const POLICY_NAME_BYTES_MAX: usize = 64;
/// Largest policy module accepted by `DeployPolicy`, in bytes.
pub const POLICY_MODULE_BYTES_MAX: usize = 1 << 20;
/// Largest declared initial linear memory of a policy module, in 64 KiB pages (16 MiB). The
/// host caps growth at the same size.
pub const POLICY_MEMORY_PAGES_MAX: u64 = 256;
/// Largest declared table of a policy module, in elements.
pub const POLICY_TABLE_ELEMENTS_MAX: u64 = 10_000;
/// Most distinct policy names deployed at once.
pub const POLICIES_MAX: usize = 32;
/// Versions kept per policy name; deploying one more forgets the oldest version no binding
/// uses (or is refused if every kept version is bound).
pub const POLICY_VERSIONS_KEPT: usize = 8;
/// Most policy bindings (prefixes with an enforcing or shadow policy).
pub const POLICY_BINDINGS_MAX: usize = 256;
/// Largest binding config handed to a policy, in bytes.
pub const POLICY_CONFIG_BYTES_MAX: usize = 16 << 10;
/// Latest cluster time `apply` accepts (≈ 146 million years); later entry times are clamped.
/// Keeps every `now_ms + duration` far from overflow, so deadlines never saturate.
pub const NOW_MS_MAX: u64 = 1 << 62;

const _: () = assert!(SESSION_TTL_MS_MIN < SESSION_TTL_MS_MAX);
const _: () = assert!(WAITERS_PER_LOCK_MAX > 0 && HOLDERS_PER_LOCK_MAX > 0);
const _: () = assert!(RECENT_REQUESTS_PER_SESSION_MAX >= 2);
const _: () = assert!(NOW_MS_MAX.checked_add(LEASE_MS_MAX).is_some());
const _: () = assert!(LEASE_MS_MAX >= SESSION_TTL_MS_MAX && LEASE_MS_MAX >= WAIT_TIMEOUT_MS_MAX);
const _: () = assert!(LEASE_MS_MAX >= LOCK_DELAY_MS_MAX);
const _: () = assert!(NOW_MS_MAX.checked_add(ELECTION_DELAY_MS_MAX).is_some());
const _: () = assert!(POLICY_REASON_BYTES_MAX > 0);
const _: () = assert!(POLICY_VERSIONS_KEPT >= 2 && POLICIES_MAX > 0 && POLICY_BINDINGS_MAX > 0);
