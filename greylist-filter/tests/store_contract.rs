//! The store contract suite run against every backend in this crate.

mod common;

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

/// The Redis backend against a real `redis-server` on a loopback port; every case gets
/// its own key prefix on one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_contract() {
    use greylist_filter::store::{RedisOptions, RedisStore};
    let Some(bin) = common::redis_server::redis_binary("redis_store_contract") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = common::redis_server::RedisServer::start(&bin, dir.path());
    let url = server.url(0);
    let mut n = 0;
    run_all(|| {
        n += 1;
        let opts = RedisOptions {
            prefix: format!("contract{n}:"),
            ..RedisOptions::default()
        };
        let url = url.clone();
        async move { RedisStore::open(&url, opts).unwrap() }
    })
    .await;
}
