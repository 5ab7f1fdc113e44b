//! Backups. `holdfast snapshot save FILE` writes what `Cluster.Snapshot` streams (a consistent
//! copy of the applied state) into a file; `holdfast snapshot restore FILE` turns that file into
//! the data dir of one member of a *new* cluster, like `etcdutl snapshot restore`: every member
//! is restored from the same file with the same `--peer` list, and they elect a leader among
//! themselves.
//!
//! File layout: [`MAGIC`], the header's length (u32, little-endian), the header (JSON, so
//! `head -c 400 FILE` shows it), then the state's canonical bytes (`State::to_snapshot_bytes`),
//! whose length and SHA-256 the header gives. Reading checks all of it before anything is
//! written.
//!
//! Fencing across a restore: the old cluster may have granted locks after the backup was taken,
//! with tokens (log indexes) above the backup's index. A restored cluster that carried on from
//! the backup's index would grant those same tokens again, and a fenced resource that saw the
//! old grant would accept the new holder *and* the old one. So the restored log starts
//! [`DEFAULT_BUMP_INDEX`] entries later (`--bump-index`, like etcdutl's `--bump-revision`):
//! every token the new cluster grants is above every token the old one could have granted
//! since the backup.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use holdfast_core::State;
use holdfast_proto::v1 as pb;
use openraft::Membership;
use openraft::impls::leader_id_adv::LeaderId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::module::hex;
use crate::raft::{
    LogId, NodeInfo, SnapshotMeta, StoredMembership, Vote, log_store, state_machine,
};

/// First bytes of a backup file (format version 1).
pub const MAGIC: &[u8; 8] = b"HFBACKv1";
/// Largest header a backup file may declare.
pub const HEADER_BYTES_MAX: u32 = 64 * 1024;
/// How far past the backup's index a restored cluster's log starts (see the module docs). A
/// billion entries is ~14 hours at 20,000 writes/s; tokens stay far below 2^53.
pub const DEFAULT_BUMP_INDEX: u64 = 1_000_000_000;

/// What a backup file says about the state it carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Log position of the state: its last applied entry's index and term, and that term's
    /// leader.
    pub index: u64,
    pub term: u64,
    pub leader_node_id: u64,
    /// Length and SHA-256 (lowercase hex) of the state bytes that follow the header.
    pub size_bytes: u64,
    pub sha256: String,
    /// The node that served it, and the state's cluster time.
    pub node_id: u64,
    pub now_ms: u64,
}

impl Header {
    fn from_stream(header: &pb::SnapshotHeader) -> Header {
        Header {
            index: header.index,
            term: header.term,
            leader_node_id: header.leader_node_id,
            size_bytes: header.size_bytes,
            sha256: header.sha256.clone(),
            node_id: header.node_id,
            now_ms: header.now_ms,
        }
    }
}

/// Checks `state` against what `header` says (length, SHA-256, a valid state) and writes the
/// backup file atomically: a temporary file beside `path`, fsynced, renamed over it.
pub fn save(path: &Path, header: &pb::SnapshotHeader, state: &[u8]) -> anyhow::Result<Header> {
    let header = Header::from_stream(header);
    verify(&header, state)?;
    let json = serde_json::to_vec(&header).expect("header serializes");
    let length = u32::try_from(json.len()).expect("a header is small");
    let tmp = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&length.to_le_bytes())?;
        file.write_all(&json)?;
        file.write_all(state)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(header)
}

/// Reads and checks a backup file: magic, header, length, SHA-256, and the state itself
/// (decoded, invariants checked).
pub fn load(path: &Path) -> anyhow::Result<(Header, State)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .with_context(|| format!("{} is too short to be a backup", path.display()))?;
    ensure!(
        &magic == MAGIC,
        "{} is not a Holdfast backup (it does not start with {:?})",
        path.display(),
        std::str::from_utf8(MAGIC).expect("ascii magic")
    );
    let mut length = [0u8; 4];
    file.read_exact(&mut length)
        .context("backup file ends inside its header")?;
    let length = u32::from_le_bytes(length);
    ensure!(
        length <= HEADER_BYTES_MAX,
        "backup header of {length} bytes is over HEADER_BYTES_MAX ({HEADER_BYTES_MAX})"
    );
    let mut json = vec![0u8; length as usize];
    file.read_exact(&mut json)
        .context("backup file ends inside its header")?;
    let header: Header = serde_json::from_slice(&json).context("backup header is not valid")?;
    let mut state = Vec::new();
    file.read_to_end(&mut state)
        .with_context(|| format!("reading {}", path.display()))?;
    let state = verify(&header, &state)?;
    Ok((header, state))
}

fn verify(header: &Header, state: &[u8]) -> anyhow::Result<State> {
    ensure!(
        state.len() as u64 == header.size_bytes,
        "backup holds {} bytes of state, its header says {} (truncated or corrupt)",
        state.len(),
        header.size_bytes
    );
    let sha256 = hex(&Sha256::digest(state));
    ensure!(
        sha256 == header.sha256,
        "backup state's SHA-256 is {sha256}, its header says {} (corrupt)",
        header.sha256
    );
    let decoded = State::from_snapshot_bytes(state).context("backup state does not decode")?;
    ensure!(
        decoded.applied_index() == header.index,
        "backup state is at index {}, its header says {}",
        decoded.applied_index(),
        header.index
    );
    Ok(decoded)
}

/// One member of the new cluster.
pub struct RestoreTarget {
    /// Its data dir: must not exist yet, or be empty.
    pub data_dir: PathBuf,
    pub id: u64,
    /// Every voter of the new cluster, this one included: id → address.
    pub peers: BTreeMap<u64, String>,
    /// How far past the backup's index the new log starts.
    pub bump_index: u64,
}

/// What a restore wrote.
#[derive(Debug)]
pub struct Restored {
    pub header: Header,
    /// The log index the restored member starts at (the backup's index + the bump).
    pub index: u64,
}

/// Writes the data dir of one member of a new cluster whose state is the backup's.
pub fn restore(file: &Path, target: &RestoreTarget) -> anyhow::Result<Restored> {
    ensure!(target.id > 0, "--id must be > 0");
    ensure!(
        target.peers.contains_key(&target.id),
        "--peer must list every voter of the new cluster, this node ({}) included",
        target.id
    );
    if let Ok(mut entries) = std::fs::read_dir(&target.data_dir)
        && entries.next().is_some()
    {
        bail!(
            "data dir {} is not empty: a restore writes a new one (remove it or pick another)",
            target.data_dir.display()
        );
    }
    let (header, mut state) = load(file)?;
    let index = header
        .index
        .checked_add(target.bump_index)
        .with_context(|| {
            format!(
                "--bump-index {} overflows from index {}",
                target.bump_index, header.index
            )
        })?;
    state.raise_applied_index(index);
    let log_id = LogId {
        leader_id: LeaderId {
            term: header.term,
            node_id: header.leader_node_id,
        },
        index,
    };
    let voters: BTreeSet<u64> = target.peers.keys().copied().collect();
    let nodes: BTreeMap<u64, NodeInfo> = target
        .peers
        .iter()
        .map(|(id, addr)| (*id, NodeInfo { addr: addr.clone() }))
        .collect();
    let membership = Membership::new(vec![voters], nodes)
        .context("the --peer list is not a valid membership")?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    };
    std::fs::create_dir_all(&target.data_dir)
        .with_context(|| format!("creating {}", target.data_dir.display()))?;
    let db = log_store::open_db(&target.data_dir)
        .with_context(|| format!("opening {}", target.data_dir.display()))?;
    state_machine::write_restored(&db, meta, state.to_snapshot_bytes())
        .context("writing the restored snapshot")?;
    // The backup's term, not yet voted in by anyone of the new cluster: its first election
    // runs in a later term, so its entries' terms never go down.
    let vote = Vote::new(header.term, header.leader_node_id);
    log_store::write_restored(&db, log_id, &vote).context("writing the restored log state")?;
    Ok(Restored { header, index })
}
