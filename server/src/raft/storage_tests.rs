//! openraft's storage conformance suite against our rocksdb log store and state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::{LogStore, open_db};
use super::state_machine::StateMachineStore;
use super::types::TypeConfig;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(dir.path()).expect("open rocksdb");
        let state_machine = StateMachineStore::open(db.clone(), 0, 1).expect("state machine");
        Ok((dir, LogStore::new(db, 1, Default::default()), state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder)
        .await
        .expect("openraft storage suite");
}
