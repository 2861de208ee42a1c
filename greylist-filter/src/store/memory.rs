//! In-memory [`Store`] for tests and dry runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{ExpireReport, Store, StoreError, StoreStats, TAG_HOST, TAG_TUPLE, expiry_entry};
use crate::record::{HostRecord, Snapshot, TupleRecord, Updates, pending_delta};
use crate::tuple::Key;

#[derive(Debug, Default)]
struct Inner {
    tuples: BTreeMap<Vec<u8>, TupleRecord>,
    hosts: HashMap<String, HostRecord>,
    pending: HashMap<String, u32>,
    expiry: BTreeSet<(u64, Vec<u8>)>,
}

/// A [`Store`] held in memory. Nothing survives the process.
///
/// [`MemoryStore::set_failing`] makes every operation fail, to test fail-open handling.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    failing: AtomicBool,
}

fn adjust(pending: &mut HashMap<String, u32>, network: &str, delta: i64) {
    if delta == 0 {
        return;
    }
    let cur = i64::from(pending.get(network).copied().unwrap_or(0));
    let new = u32::try_from((cur + delta).max(0)).unwrap_or(u32::MAX);
    if new == 0 {
        pending.remove(network);
    } else {
        pending.insert(network.to_owned(), new);
    }
}

impl Inner {
    fn write_tuple(&mut self, key: &Key, rec: TupleRecord) {
        let kb = key.as_bytes();
        let old = self.tuples.insert(kb.to_vec(), rec);
        if let Some(o) = old {
            self.expiry
                .remove(&(o.expires, expiry_entry(TAG_TUPLE, kb)));
        }
        self.expiry
            .insert((rec.expires, expiry_entry(TAG_TUPLE, kb)));
        adjust(
            &mut self.pending,
            key.network(),
            pending_delta(old.as_ref(), Some(&rec)),
        );
    }

    fn write_host(&mut self, network: &str, rec: HostRecord) {
        let old = self.hosts.insert(network.to_owned(), rec);
        if let Some(o) = old {
            self.expiry
                .remove(&(o.expires, expiry_entry(TAG_HOST, network.as_bytes())));
        }
        self.expiry
            .insert((rec.expires, expiry_entry(TAG_HOST, network.as_bytes())));
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// When `true`, every operation returns [`StoreError::Unavailable`].
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable);
        }
        Ok(self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn lookup(&self, key: &Key) -> Result<Snapshot, StoreError> {
        let g = self.lock()?;
        Ok(Snapshot {
            tuple: g.tuples.get(key.as_bytes()).copied(),
            host: g.hosts.get(key.network()).copied(),
            pending_in_network: g.pending.get(key.network()).copied().unwrap_or(0),
        })
    }

    async fn apply(&self, key: &Key, updates: &Updates) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if let Some(w) = updates.tuple {
            g.write_tuple(key, w.record);
        }
        if let Some(h) = updates.host {
            let cur = g.hosts.get(key.network()).copied();
            g.write_host(key.network(), HostRecord::apply(cur, h));
        }
        Ok(())
    }

    async fn host(&self, network: &str) -> Result<Option<HostRecord>, StoreError> {
        Ok(self.lock()?.hosts.get(network).copied())
    }

    async fn pending_count(&self, network: &str) -> Result<u32, StoreError> {
        Ok(self.lock()?.pending.get(network).copied().unwrap_or(0))
    }

    async fn put(&self, key: &Key, record: &TupleRecord) -> Result<(), StoreError> {
        self.lock()?.write_tuple(key, *record);
        Ok(())
    }

    async fn expire(&self, now: u64, limit: usize) -> Result<ExpireReport, StoreError> {
        let mut g = self.lock()?;
        let mut report = ExpireReport::default();
        let due: Vec<(u64, Vec<u8>)> = g
            .expiry
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(limit.saturating_add(1))
            .cloned()
            .collect();
        report.more = due.len() > limit;
        for entry in due.into_iter().take(limit) {
            g.expiry.remove(&entry);
            let (_, id) = entry;
            match id.split_first() {
                Some((&TAG_TUPLE, kb)) => {
                    if let Some(old) = g.tuples.remove(kb) {
                        report.tuples += 1;
                        if let Some(k) = Key::from_bytes(kb) {
                            adjust(&mut g.pending, k.network(), pending_delta(Some(&old), None));
                        }
                    }
                }
                Some((&TAG_HOST, nb)) => {
                    if let Ok(n) = std::str::from_utf8(nb)
                        && g.hosts.remove(n).is_some()
                    {
                        report.hosts += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(report)
    }

    async fn list_network(
        &self,
        network: &str,
        limit: usize,
    ) -> Result<Vec<(Key, TupleRecord)>, StoreError> {
        let g = self.lock()?;
        let prefix = Key::network_prefix(network);
        Ok(g.tuples
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, r)| Some((Key::from_bytes(k)?, *r)))
            .take(limit)
            .collect())
    }

    async fn flush_network(&self, network: &str) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        let prefix = Key::network_prefix(network);
        let keys: Vec<(Vec<u8>, TupleRecord)> = g
            .tuples
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        for (k, r) in &keys {
            g.tuples.remove(k);
            g.expiry.remove(&(r.expires, expiry_entry(TAG_TUPLE, k)));
        }
        if let Some(h) = g.hosts.remove(network) {
            g.expiry
                .remove(&(h.expires, expiry_entry(TAG_HOST, network.as_bytes())));
        }
        g.pending.remove(network);
        Ok(keys.len() as u64)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let g = self.lock()?;
        Ok(StoreStats {
            tuples: g.tuples.len() as u64,
            pending: g.pending.values().map(|&v| u64::from(v)).sum(),
            hosts: g.hosts.len() as u64,
        })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }
}
