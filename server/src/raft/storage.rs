//! The seam between a node and its disk. `holdfast serve` keeps the log in rocksdb
//! ([`super::log_store::LogStore`]) and the snapshot in a file beside it; the simulator
//! (crate `holdfast-sim`) keeps both in memory with a crash model. openraft takes the log store
//! as a generic parameter (monomorphized); the two rare paths that outlive `Raft::new` — reading
//! the log back for `Cluster.ReadLog`, and persisting a snapshot — go through the traits here.

use std::io;
use std::ops::RangeInclusive;

use futures::future::BoxFuture;
use openraft::storage::RaftLogReader;
use rocksdb::DB;

use super::snapshot_file::{self, StoredSnapshot};
use super::types::{Entry, SnapshotMeta, TypeConfig};

/// Where a node keeps its last snapshot. `save` returns once the snapshot is durable.
pub trait SnapshotStore: Send + Sync + 'static {
    fn load(&self) -> io::Result<Option<StoredSnapshot>>;
    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()>;
}

impl SnapshotStore for DB {
    fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        snapshot_file::load(self)
    }

    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        snapshot_file::save(self, meta, data)
    }
}

/// Reads entries back from a node's log (`Node::read_log`, behind `Cluster.ReadLog`).
pub trait ReadLog: Send + Sync + 'static {
    fn entries(&self, range: RangeInclusive<u64>) -> BoxFuture<'static, io::Result<Vec<Entry>>>;
}

impl<L> ReadLog for L
where
    L: RaftLogReader<TypeConfig> + Clone + Send + Sync + 'static,
{
    fn entries(&self, range: RangeInclusive<u64>) -> BoxFuture<'static, io::Result<Vec<Entry>>> {
        let mut log = self.clone();
        Box::pin(async move { log.try_get_log_entries(range).await })
    }
}
