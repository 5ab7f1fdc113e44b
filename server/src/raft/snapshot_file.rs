//! Where a node keeps its snapshot: one file in the data dir (`SNAPSHOT_FILE`), written to a
//! temporary file, fsynced, renamed over the old one, and the directory fsynced.
//!
//! Not a rocksdb value (as it was): a 70 MB put at a million locks went through the WAL and the
//! memtable that the Raft log shares, stalling log appends — and so commits and apply — for
//! 200–500 ms per snapshot, and kept the value in memory until the next flush
//! (`holdfast-bench scale`). A data dir written by an earlier version still has its snapshot
//! under the meta column family's `snapshot` key: it is read from there until the first
//! snapshot file replaces it.
//!
//! File layout: `SNAPSHOT_FILE_MAGIC`, the bincode-encoded `SnapshotMeta`'s length (u64, little
//! endian) and bytes, then the canonical state bytes to the end of the file.

use std::fs::File;
use std::io::{self, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};

use rocksdb::{DB, WriteOptions};

use super::log_store::CF_META;
use super::types::{SnapshotMeta, codec};

/// The snapshot's file name, in the data dir.
pub const SNAPSHOT_FILE: &str = "holdfast-snapshot";
/// First bytes of a snapshot file.
const SNAPSHOT_FILE_MAGIC: &[u8; 8] = b"HFSNAP1\n";
/// The largest encoded `SnapshotMeta` accepted (a membership of a few nodes is ~100 bytes).
const SNAPSHOT_META_BYTES_MAX: u64 = 1 << 20;
/// Where earlier versions kept the snapshot (meta column family).
const LEGACY_KEY_SNAPSHOT: &[u8] = b"snapshot";

/// A persisted snapshot: where it starts the log, and the state's canonical bytes.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

fn path_of(db: &DB) -> PathBuf {
    db.path().join(SNAPSHOT_FILE)
}

/// The data dir's snapshot, if any: the file, else an earlier version's rocksdb value.
pub fn load(db: &DB) -> io::Result<Option<StoredSnapshot>> {
    match File::open(path_of(db)) {
        Ok(file) => read(file).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let cf = db.cf_handle(CF_META).expect("meta column family");
            let bytes = db
                .get_cf(cf, LEGACY_KEY_SNAPSHOT)
                .map_err(io::Error::other)?;
            bytes.map(|b| codec::decode(&b)).transpose()
        }
        Err(error) => Err(error),
    }
}

fn read(mut file: File) -> io::Result<StoredSnapshot> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {what}"));
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)?;
    if &magic != SNAPSHOT_FILE_MAGIC {
        return Err(invalid("not a Holdfast snapshot"));
    }
    let mut length = [0u8; 8];
    file.read_exact(&mut length)?;
    let length = u64::from_le_bytes(length);
    if length > SNAPSHOT_META_BYTES_MAX {
        return Err(invalid("metadata too long"));
    }
    let mut meta = vec![0u8; length as usize];
    file.read_exact(&mut meta)?;
    let meta = codec::decode(&meta)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(StoredSnapshot { meta, data })
}

/// Persists a snapshot durably (temporary file, fsync, rename, fsync of the directory), then
/// drops an earlier version's rocksdb value if there is one.
pub fn save(db: &DB, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let path = path_of(db);
    let temporary = path.with_extension("tmp");
    {
        let mut out = BufWriter::new(File::create(&temporary)?);
        let meta = codec::encode(meta);
        out.write_all(SNAPSHOT_FILE_MAGIC)?;
        out.write_all(&(meta.len() as u64).to_le_bytes())?;
        out.write_all(&meta)?;
        out.write_all(data)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    let cf = db.cf_handle(CF_META).expect("meta column family");
    if db
        .get_pinned_cf(cf, LEGACY_KEY_SNAPSHOT)
        .map_err(io::Error::other)?
        .is_some()
    {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        db.delete_cf_opt(cf, LEGACY_KEY_SNAPSHOT, &options)
            .map_err(io::Error::other)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::impls::leader_id_adv::LeaderId;

    use crate::raft::log_store::open_db;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(crate::raft::LogId {
                leader_id: LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            }),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn saves_loads_replaces_and_reads_an_earlier_versions_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        assert!(load(&db).unwrap().is_none());
        // A data dir of an earlier version: the snapshot is a rocksdb value.
        let cf = db.cf_handle(CF_META).unwrap();
        let legacy = StoredSnapshot {
            meta: meta(7),
            data: b"legacy".to_vec(),
        };
        db.put_cf(cf, LEGACY_KEY_SNAPSHOT, codec::encode(&legacy))
            .unwrap();
        let loaded = load(&db).unwrap().unwrap();
        assert_eq!((loaded.meta, loaded.data), (meta(7), b"legacy".to_vec()));
        // The first file replaces it, and the value is gone.
        save(&db, &meta(9), b"state bytes").unwrap();
        let loaded = load(&db).unwrap().unwrap();
        assert_eq!(
            (loaded.meta, loaded.data),
            (meta(9), b"state bytes".to_vec())
        );
        assert!(db.get_cf(cf, LEGACY_KEY_SNAPSHOT).unwrap().is_none());
        save(&db, &meta(12), b"newer").unwrap();
        let loaded = load(&db).unwrap().unwrap();
        assert_eq!((loaded.meta, loaded.data), (meta(12), b"newer".to_vec()));
        assert!(!path_of(&db).with_extension("tmp").exists());
    }

    #[test]
    fn refuses_a_file_that_is_not_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        std::fs::write(path_of(&db), b"HFSNAP1\n\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
        assert_eq!(
            load(&db).err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidData)
        );
        std::fs::write(path_of(&db), b"something else entirely").unwrap();
        assert_eq!(
            load(&db).err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidData)
        );
    }
}
