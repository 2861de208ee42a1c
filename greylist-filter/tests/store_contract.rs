//! The store contract suite run against every backend in this crate.

use std::time::Duration;

use greylist_filter::store::contract::run_all;
use greylist_filter::store::{MemoryStore, RedbOptions, RedbStore};

#[tokio::test]
async fn memory_store_contract() {
    run_all(|| async { MemoryStore::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_all(|| {
        n += 1;
        let path = dir.path().join(format!("store-{n}.redb"));
        async move { RedbStore::open(path).unwrap() }
    })
    .await;
}

/// With a long batch interval every lazy write stays in the overlay until an explicit
/// flush, which exercises the read-your-writes path of the group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_contract_with_buffered_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_all(|| {
        n += 1;
        let path = dir.path().join(format!("store-{n}.redb"));
        let opts = RedbOptions {
            batch_interval: Duration::from_secs(3600),
            ..RedbOptions::default()
        };
        async move { RedbStore::open_with(path, opts).unwrap() }
    })
    .await;
}
