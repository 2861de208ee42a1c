//! Persistence of tuple and host records behind one [`Store`] trait.
//!
//! Backends:
//! - [`RedbStore`]: the default. One file, redb transactions (copy-on-write B-trees with
//!   checksummed commits, so a `kill -9` never leaves a corrupt file). First-seen writes
//!   are group-committed by a background writer; passes are committed durably before
//!   [`Store::apply`] returns.
//! - [`MemoryStore`]: everything in a mutex-protected map; for tests and dry runs.
//! - [`RedisStore`]: a Redis server shared by several daemons (`--store redis://…`);
//!   atomic Lua-script updates, Redis TTLs, bounded timeouts so a dead Redis fails open.
//!
//! Every backend must pass the contract suite in `store::contract` (enabled by the
//! `contract-tests` feature), which is written once as generic async functions.
//!
//! Semantics all backends share:
//! - A record with `expires <= now` no longer counts (the policy checks it); the sweep
//!   ([`Store::expire`]) deletes such records incrementally, at most `limit` per call,
//!   using an index ordered by expiry time, so no pass ever rewrites or scans the store.
//! - The pending count of a network is maintained on every write (see
//!   [`pending_delta`](crate::record::pending_delta)) so the cap check is one lookup.
//! - Host updates are read-modify-write with [`HostRecord::apply`] inside the backend's
//!   atomic section, so concurrent passes are all counted.

use std::error::Error as StdError;

use async_trait::async_trait;

use crate::record::{HostRecord, Snapshot, TupleRecord, Updates};
use crate::tuple::Key;

mod memory;
mod redb_store;
mod redis_store;

#[cfg(feature = "contract-tests")]
pub mod contract;

pub use memory::MemoryStore;
pub use redb_store::{RedbOptions, RedbStore};
pub use redis_store::{RedisOptions, RedisStore};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend (database, network) reported an error.
    #[error("store backend error: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
    /// The database file could not be opened or created.
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A blocking store task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The backend is unavailable (for example injected in tests, or shut down).
    #[error("store unavailable")]
    Unavailable,
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(e: impl StdError + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// Outcome of one incremental expiry step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpireReport {
    /// Tuple records deleted.
    pub tuples: u64,
    /// Host records deleted.
    pub hosts: u64,
    /// True if the limit was reached and more expired records may remain.
    pub more: bool,
}

/// Record counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// All tuple records.
    pub tuples: u64,
    /// Pending tuple records.
    pub pending: u64,
    /// Host (network) records.
    pub hosts: u64,
}

/// The persistence the greylisting engine needs.
///
/// Network arguments are the `network` part of a [`Key`] (e.g. `192.0.2.0/24`).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Everything the policy needs for `key` in one call: the tuple record, the host
    /// record of its network and the network's pending count.
    async fn lookup(&self, key: &Key) -> Result<Snapshot, StoreError>;

    /// Applies the policy's updates for `key`. Returns once durable writes (see
    /// [`Updates::is_durable`]) are committed; lazy writes may still be buffered, but are
    /// visible to [`Store::lookup`] at once.
    async fn apply(&self, key: &Key, updates: &Updates) -> Result<(), StoreError>;

    /// The tuple record for `key`.
    async fn get(&self, key: &Key) -> Result<Option<TupleRecord>, StoreError> {
        Ok(self.lookup(key).await?.tuple)
    }

    /// The host record of `network`.
    async fn host(&self, network: &str) -> Result<Option<HostRecord>, StoreError>;

    /// Pending tuples stored for `network`.
    async fn pending_count(&self, network: &str) -> Result<u32, StoreError>;

    /// Inserts or replaces a tuple record durably (used by import and admin tools).
    async fn put(&self, key: &Key, record: &TupleRecord) -> Result<(), StoreError>;

    /// Deletes up to `limit` records whose expiry is at or before `now`.
    async fn expire(&self, now: u64, limit: usize) -> Result<ExpireReport, StoreError>;

    /// Up to `limit` tuple records of `network`, in key order.
    async fn list_network(
        &self,
        network: &str,
        limit: usize,
    ) -> Result<Vec<(Key, TupleRecord)>, StoreError>;

    /// Forgets everything about `network` (its tuples, host record and pending count).
    /// Returns the number of tuple records deleted.
    async fn flush_network(&self, network: &str) -> Result<u64, StoreError>;

    /// Record counts.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Waits until every buffered write is committed durably.
    async fn flush(&self) -> Result<(), StoreError>;
}

/// Key of an entry in the expiry index: a tag byte (`T` tuple, `H` host) then the
/// tuple key or network name.
pub(crate) fn expiry_entry(tag: u8, id: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(id.len() + 1);
    v.push(tag);
    v.extend_from_slice(id);
    v
}

/// Tag of tuple entries in the expiry index.
pub(crate) const TAG_TUPLE: u8 = b'T';
/// Tag of host entries in the expiry index.
pub(crate) const TAG_HOST: u8 = b'H';
