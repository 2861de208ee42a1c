//! The default [`Store`]: one redb file with group commit.
//!
//! Tables:
//! - `tuples`: key bytes → [`TupleRecord`] (42 bytes)
//! - `hosts`: network → [`HostRecord`]
//! - `pending`: network → pending tuple count
//! - `expiry`: (expires, tag + id) → () — the index the incremental sweep walks
//!
//! Writes come in two kinds (see [`Durability`](crate::record::Durability)):
//! - *lazy* writes (first seen, attempt counters, sliding refreshes) are staged in an
//!   in-memory overlay that reads consult first, and a background thread commits them in
//!   one transaction every `batch_interval` (1 s) or as soon as `batch_max` are staged.
//!   A crash loses at most that window: those tuples are greylisted again.
//! - *durable* writes (a tuple passing) commit at once, together with everything staged,
//!   before [`Store::apply`] returns. One fsync covers the whole group.
//!
//! All commits are serialised by one lock, and a batch being committed stays visible
//! to readers until it is in the file, so no reader ever sees an older state than one
//! it could have seen before.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{ExpireReport, Store, StoreError, StoreStats, TAG_HOST, TAG_TUPLE, expiry_entry};
use crate::record::{
    Durability, HostRecord, HostUpdate, Snapshot, TupleRecord, Updates, pending_delta,
};
use crate::tuple::Key;

const TUPLES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("tuples");
const HOSTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("hosts");
const PENDING: TableDefinition<'_, &str, u32> = TableDefinition::new("pending");
const EXPIRY: TableDefinition<'_, (u64, &[u8]), ()> = TableDefinition::new("expiry");

fn be<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::backend(e.into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tuning of [`RedbStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// Longest time a lazy write stays buffered. Default 1 s.
    pub batch_interval: Duration,
    /// Staged lazy writes that trigger a commit before the interval. Default 10,000.
    pub batch_max: usize,
    /// redb page cache size in bytes. Default 64 MiB.
    pub cache_size: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            batch_interval: Duration::from_secs(1),
            batch_max: 10_000,
            cache_size: 64 << 20,
        }
    }
}

/// Lazy writes not yet in the file.
#[derive(Debug, Default)]
struct Batch {
    tuples: HashMap<Vec<u8>, TupleRecord>,
    /// network → latest host update to apply (only refreshes are lazy).
    hosts: HashMap<String, u64>,
    /// network → change of its pending count that `tuples` implies.
    pending: HashMap<String, i64>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.tuples.is_empty() && self.hosts.is_empty()
    }
}

#[derive(Debug, Default)]
struct Overlay {
    active: Batch,
    flushing: Option<Arc<Batch>>,
    shutdown: bool,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    /// Serialises commits (batch and durable).
    commit_lock: Mutex<()>,
    overlay: Mutex<Overlay>,
    wake: Condvar,
    opts: RedbOptions,
}

/// The default store: a crash-safe single redb file, no service needed.
///
/// Dropping it commits what is buffered and stops the writer thread.
#[derive(Debug)]
pub struct RedbStore {
    inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
}

impl RedbStore {
    /// Opens (or creates) the store file at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens (or creates) the store file at `path`. Blocking; call at start-up.
    pub fn open_with(path: impl AsRef<Path>, opts: RedbOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let open_err = |e: redb::Error| StoreError::Open {
            path: path.to_owned(),
            source: Box::new(e),
        };
        let db = Database::builder()
            .set_cache_size(opts.cache_size)
            .create(path)
            .map_err(|e| open_err(e.into()))?;
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        {
            txn.open_table(TUPLES).map_err(|e| open_err(e.into()))?;
            txn.open_table(HOSTS).map_err(|e| open_err(e.into()))?;
            txn.open_table(PENDING).map_err(|e| open_err(e.into()))?;
            txn.open_table(EXPIRY).map_err(|e| open_err(e.into()))?;
        }
        txn.commit().map_err(|e| open_err(e.into()))?;
        let inner = Arc::new(Inner {
            db,
            commit_lock: Mutex::new(()),
            overlay: Mutex::new(Overlay::default()),
            wake: Condvar::new(),
            opts,
        });
        let w = Arc::clone(&inner);
        let writer = std::thread::Builder::new()
            .name("greylist-store-writer".into())
            .spawn(move || writer_loop(&w))
            .map_err(|e| open_err(redb::Error::Io(e)))?;
        Ok(RedbStore {
            inner,
            writer: Some(writer),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        lock(&self.inner.overlay).shutdown = true;
        self.inner.wake.notify_all();
        if let Some(w) = self.writer.take() {
            // The writer commits what is left and exits; a panic there was already logged.
            let _ = w.join();
        }
    }
}

fn writer_loop(inner: &Inner) {
    loop {
        let mut ov = lock(&inner.overlay);
        if !ov.shutdown && ov.active.tuples.len() < inner.opts.batch_max {
            ov = inner
                .wake
                .wait_timeout(ov, inner.opts.batch_interval)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let shutdown = ov.shutdown;
        let work = !ov.active.is_empty();
        drop(ov);
        if work && let Err(e) = inner.commit(None) {
            tracing::error!(error = %e, "greylist store: group commit failed");
        }
        if shutdown {
            return;
        }
    }
}

/// The tables of one write transaction, opened once for a whole batch. Pending-count
/// changes are summed per network and written once in [`WriteTables::finish`].
struct WriteTables<'t> {
    tuples: redb::Table<'t, &'static [u8], &'static [u8]>,
    hosts: redb::Table<'t, &'static str, &'static [u8]>,
    expiry: redb::Table<'t, (u64, &'static [u8]), ()>,
    pending_delta: HashMap<String, i64>,
}

impl<'t> WriteTables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(WriteTables {
            tuples: txn.open_table(TUPLES).map_err(be)?,
            hosts: txn.open_table(HOSTS).map_err(be)?,
            expiry: txn.open_table(EXPIRY).map_err(be)?,
            pending_delta: HashMap::new(),
        })
    }

    /// Writes a tuple record, keeping the expiry index (and, at `finish`, the pending
    /// count) in step.
    fn write_tuple(&mut self, kb: &[u8], rec: &TupleRecord) -> Result<(), StoreError> {
        let old = self
            .tuples
            .insert(kb, rec.encode().as_slice())
            .map_err(be)?
            .and_then(|g| TupleRecord::decode(g.value()));
        let entry = expiry_entry(TAG_TUPLE, kb);
        match old {
            Some(o) if o.expires == rec.expires => {}
            Some(o) => {
                self.expiry
                    .remove((o.expires, entry.as_slice()))
                    .map_err(be)?;
                self.expiry
                    .insert((rec.expires, entry.as_slice()), ())
                    .map_err(be)?;
            }
            None => {
                self.expiry
                    .insert((rec.expires, entry.as_slice()), ())
                    .map_err(be)?;
            }
        }
        let delta = pending_delta(old.as_ref(), Some(rec));
        if delta != 0
            && let Some(k) = Key::from_bytes(kb)
        {
            *self
                .pending_delta
                .entry(k.network().to_owned())
                .or_default() += delta;
        }
        Ok(())
    }

    fn write_host(&mut self, network: &str, upd: HostUpdate) -> Result<(), StoreError> {
        let cur = self
            .hosts
            .get(network)
            .map_err(be)?
            .and_then(|g| HostRecord::decode(g.value()));
        let new = HostRecord::apply(cur, upd);
        if cur == Some(new) {
            return Ok(());
        }
        let entry = expiry_entry(TAG_HOST, network.as_bytes());
        if let Some(c) = cur {
            self.expiry
                .remove((c.expires, entry.as_slice()))
                .map_err(be)?;
        }
        self.expiry
            .insert((new.expires, entry.as_slice()), ())
            .map_err(be)?;
        self.hosts
            .insert(network, new.encode().as_slice())
            .map_err(be)?;
        Ok(())
    }

    /// Closes the tables and writes the summed pending-count changes.
    fn finish(self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let WriteTables {
            tuples,
            hosts,
            expiry,
            pending_delta,
        } = self;
        drop((tuples, hosts, expiry));
        let mut deltas: Vec<(String, i64)> =
            pending_delta.into_iter().filter(|(_, d)| *d != 0).collect();
        deltas.sort_unstable();
        for (n, d) in deltas {
            adjust_pending(txn, &n, d)?;
        }
        Ok(())
    }
}

fn adjust_pending(
    txn: &redb::WriteTransaction,
    network: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let mut pending = txn.open_table(PENDING).map_err(be)?;
    let cur = pending.get(network).map_err(be)?.map_or(0, |g| g.value());
    let new = u32::try_from((i64::from(cur) + delta).max(0)).unwrap_or(u32::MAX);
    if new == 0 {
        pending.remove(network).map_err(be)?;
    } else {
        pending.insert(network, new).map_err(be)?;
    }
    Ok(())
}

/// A write to make durably together with the staged batch.
enum Extra<'a> {
    Updates(&'a [u8], &'a Updates),
    Put(&'a [u8], &'a TupleRecord),
}

impl Inner {
    /// Commits the staged batch plus `extra` in one durable transaction.
    fn commit(&self, extra: Option<Extra<'_>>) -> Result<(), StoreError> {
        let _serial = lock(&self.commit_lock);
        let batch = {
            let mut ov = lock(&self.overlay);
            let b = Arc::new(std::mem::take(&mut ov.active));
            ov.flushing = Some(Arc::clone(&b));
            b
        };
        let result = self.commit_batch(&batch, extra);
        let mut ov = lock(&self.overlay);
        ov.flushing = None;
        if result.is_err() {
            // Put the batch back under anything staged since, so it is retried.
            for (k, r) in &batch.tuples {
                ov.active.tuples.entry(k.clone()).or_insert(*r);
            }
            for (n, d) in &batch.pending {
                *ov.active.pending.entry(n.clone()).or_default() += d;
            }
            for (n, u) in &batch.hosts {
                let e = ov.active.hosts.entry(n.clone()).or_default();
                *e = (*e).max(*u);
            }
        }
        result
    }

    fn commit_batch(&self, batch: &Batch, extra: Option<Extra<'_>>) -> Result<(), StoreError> {
        if batch.is_empty() && extra.is_none() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(be)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(be)?;
        let mut t = WriteTables::open(&txn)?;
        // In key order: neighbouring inserts touch the same B-tree pages.
        let mut tuples: Vec<(&Vec<u8>, &TupleRecord)> = batch.tuples.iter().collect();
        tuples.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, r) in tuples {
            t.write_tuple(k, r)?;
        }
        for (n, until) in &batch.hosts {
            t.write_host(n, HostUpdate::Refresh { until: *until })?;
        }
        match extra {
            Some(Extra::Updates(kb, u)) => {
                if let Some(w) = u.tuple {
                    t.write_tuple(kb, &w.record)?;
                }
                if let Some(h) = u.host
                    && let Some(k) = Key::from_bytes(kb)
                {
                    t.write_host(k.network(), h)?;
                }
            }
            Some(Extra::Put(kb, r)) => t.write_tuple(kb, r)?,
            None => {}
        }
        t.finish(&txn)?;
        txn.commit().map_err(be)
    }

    fn read_tuple(&self, kb: &[u8]) -> Result<Option<TupleRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(be)?;
        let t = txn.open_table(TUPLES).map_err(be)?;
        Ok(t.get(kb)
            .map_err(be)?
            .and_then(|g| decode_tuple(kb, g.value())))
    }

    /// Stages lazy updates in the overlay.
    fn stage(&self, key: &Key, updates: &Updates) -> Result<(), StoreError> {
        let kb = key.as_bytes();
        // Read the committed state outside the overlay lock.
        let committed = match updates.tuple {
            Some(_) => self.read_tuple(kb)?,
            None => None,
        };
        let mut ov = lock(&self.overlay);
        if let Some(w) = updates.tuple {
            let visible = ov
                .active
                .tuples
                .get(kb)
                .copied()
                .or_else(|| ov.flushing.as_ref().and_then(|f| f.tuples.get(kb).copied()))
                .or(committed);
            let delta = pending_delta(visible.as_ref(), Some(&w.record));
            if delta != 0 {
                *ov.active
                    .pending
                    .entry(key.network().to_owned())
                    .or_default() += delta;
            }
            ov.active.tuples.insert(kb.to_vec(), w.record);
        }
        if let Some(HostUpdate::Refresh { until }) = updates.host {
            let e = ov.active.hosts.entry(key.network().to_owned()).or_default();
            *e = (*e).max(until);
        }
        let full = ov.active.tuples.len() >= self.opts.batch_max;
        drop(ov);
        if full {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn lookup(&self, key: &Key) -> Result<Snapshot, StoreError> {
        let kb = key.as_bytes();
        let net = key.network();
        // Overlay first: a record staged or being committed is the newest.
        let (staged, refresh, delta) = {
            let ov = lock(&self.overlay);
            let f = ov.flushing.as_deref();
            let staged = ov
                .active
                .tuples
                .get(kb)
                .or_else(|| f.and_then(|f| f.tuples.get(kb)))
                .copied();
            let refresh = ov
                .active
                .hosts
                .get(net)
                .or_else(|| f.and_then(|f| f.hosts.get(net)))
                .copied();
            let delta = ov.active.pending.get(net).copied().unwrap_or(0)
                + f.and_then(|f| f.pending.get(net).copied()).unwrap_or(0);
            (staged, refresh, delta)
        };
        let txn = self.db.begin_read().map_err(be)?;
        let tuple = match staged {
            Some(r) => Some(r),
            None => {
                let t = txn.open_table(TUPLES).map_err(be)?;
                t.get(kb)
                    .map_err(be)?
                    .and_then(|g| decode_tuple(kb, g.value()))
            }
        };
        let hosts = txn.open_table(HOSTS).map_err(be)?;
        let mut host = hosts
            .get(net)
            .map_err(be)?
            .and_then(|g| HostRecord::decode(g.value()));
        if let Some(until) = refresh
            && host.is_some()
        {
            host = Some(HostRecord::apply(host, HostUpdate::Refresh { until }));
        }
        let pending = txn.open_table(PENDING).map_err(be)?;
        let committed = pending.get(net).map_err(be)?.map_or(0, |g| g.value());
        let pending_in_network =
            u32::try_from((i64::from(committed) + delta).max(0)).unwrap_or(u32::MAX);
        Ok(Snapshot {
            tuple,
            host,
            pending_in_network,
        })
    }

    fn expire(&self, now: u64, limit: usize) -> Result<ExpireReport, StoreError> {
        let _serial = lock(&self.commit_lock);
        let mut report = ExpireReport::default();
        let mut txn = self.db.begin_write().map_err(be)?;
        // Deleting expired records is idempotent: it need not be fsynced on its own.
        txn.set_durability(redb::Durability::None).map_err(be)?;
        {
            let mut expiry = txn.open_table(EXPIRY).map_err(be)?;
            let mut tuples = txn.open_table(TUPLES).map_err(be)?;
            let mut hosts = txn.open_table(HOSTS).map_err(be)?;
            let mut due: Vec<(u64, Vec<u8>)> = Vec::new();
            for item in expiry.range::<(u64, &[u8])>(..).map_err(be)? {
                let (k, _) = item.map_err(be)?;
                let (t, id) = k.value();
                if t > now {
                    break;
                }
                if due.len() == limit {
                    report.more = true;
                    break;
                }
                due.push((t, id.to_vec()));
            }
            let mut pending_changes: Vec<(String, i64)> = Vec::new();
            for (t, id) in &due {
                expiry.remove((*t, id.as_slice())).map_err(be)?;
                match id.split_first() {
                    Some((&TAG_TUPLE, kb)) => {
                        let old = tuples
                            .get(kb)
                            .map_err(be)?
                            .and_then(|g| TupleRecord::decode(g.value()));
                        // Only delete if the index entry is current.
                        if old.is_none_or(|o| o.expires == *t) {
                            tuples.remove(kb).map_err(be)?;
                            report.tuples += 1;
                            if old.is_some_and(|o| o.is_pending())
                                && let Some(k) = Key::from_bytes(kb)
                            {
                                pending_changes.push((k.network().to_owned(), -1));
                            }
                        }
                    }
                    Some((&TAG_HOST, nb)) => {
                        if let Ok(n) = std::str::from_utf8(nb) {
                            let old = hosts
                                .get(n)
                                .map_err(be)?
                                .and_then(|g| HostRecord::decode(g.value()));
                            if old.is_none_or(|o| o.expires == *t)
                                && hosts.remove(n).map_err(be)?.is_some()
                            {
                                report.hosts += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
            drop((expiry, tuples, hosts));
            for (n, d) in pending_changes {
                adjust_pending(&txn, &n, d)?;
            }
        }
        txn.commit().map_err(be)?;
        Ok(report)
    }

    fn list_network(
        &self,
        network: &str,
        limit: usize,
    ) -> Result<Vec<(Key, TupleRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(be)?;
        let t = txn.open_table(TUPLES).map_err(be)?;
        let prefix = Key::network_prefix(network);
        let mut out = Vec::new();
        for item in t.range::<&[u8]>(prefix.as_slice()..).map_err(be)? {
            let (k, v) = item.map_err(be)?;
            let kb = k.value();
            if !kb.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            if let (Some(key), Some(rec)) = (Key::from_bytes(kb), decode_tuple(kb, v.value())) {
                out.push((key, rec));
            }
        }
        Ok(out)
    }

    fn flush_network(&self, network: &str) -> Result<u64, StoreError> {
        self.commit(None)?;
        let _serial = lock(&self.commit_lock);
        let txn = self.db.begin_write().map_err(be)?;
        let prefix = Key::network_prefix(network);
        let mut n = 0u64;
        {
            let mut tuples = txn.open_table(TUPLES).map_err(be)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(be)?;
            let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
            for item in tuples.range::<&[u8]>(prefix.as_slice()..).map_err(be)? {
                let (k, v) = item.map_err(be)?;
                let kb = k.value();
                if !kb.starts_with(&prefix) {
                    break;
                }
                let exp = TupleRecord::decode(v.value()).map_or(0, |r| r.expires);
                doomed.push((kb.to_vec(), exp));
            }
            for (kb, exp) in &doomed {
                tuples.remove(kb.as_slice()).map_err(be)?;
                expiry
                    .remove((*exp, expiry_entry(TAG_TUPLE, kb).as_slice()))
                    .map_err(be)?;
                n += 1;
            }
            let mut hosts = txn.open_table(HOSTS).map_err(be)?;
            let old = hosts
                .remove(network)
                .map_err(be)?
                .and_then(|g| HostRecord::decode(g.value()));
            if let Some(h) = old {
                expiry
                    .remove((
                        h.expires,
                        expiry_entry(TAG_HOST, network.as_bytes()).as_slice(),
                    ))
                    .map_err(be)?;
            }
            let mut pending = txn.open_table(PENDING).map_err(be)?;
            pending.remove(network).map_err(be)?;
        }
        txn.commit().map_err(be)?;
        Ok(n)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let txn = self.db.begin_read().map_err(be)?;
        let tuples = txn.open_table(TUPLES).map_err(be)?.len().map_err(be)?;
        let hosts = txn.open_table(HOSTS).map_err(be)?.len().map_err(be)?;
        let mut pending = 0u64;
        for item in txn.open_table(PENDING).map_err(be)?.iter().map_err(be)? {
            let (_, v) = item.map_err(be)?;
            pending += u64::from(v.value());
        }
        Ok(StoreStats {
            tuples,
            pending,
            hosts,
        })
    }
}

fn decode_tuple(kb: &[u8], v: &[u8]) -> Option<TupleRecord> {
    let r = TupleRecord::decode(v);
    if r.is_none() {
        tracing::warn!(key = %String::from_utf8_lossy(kb), "greylist store: undecodable record ignored");
    }
    r
}

#[async_trait]
impl Store for RedbStore {
    async fn lookup(&self, key: &Key) -> Result<Snapshot, StoreError> {
        // A read is a few page-cache lookups: done inline, not on the blocking pool.
        self.inner.lookup(key)
    }

    async fn apply(&self, key: &Key, updates: &Updates) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let durable = updates.is_durable()
            || updates
                .tuple
                .is_some_and(|w| w.durability == Durability::Durable);
        if !durable {
            return self.inner.stage(key, updates);
        }
        let kb = key.as_bytes().to_vec();
        let u = *updates;
        self.blocking(move |inner| inner.commit(Some(Extra::Updates(&kb, &u))))
            .await
    }

    async fn host(&self, network: &str) -> Result<Option<HostRecord>, StoreError> {
        let probe = Key::network_probe(network);
        Ok(self.inner.lookup(&probe)?.host)
    }

    async fn pending_count(&self, network: &str) -> Result<u32, StoreError> {
        let probe = Key::network_probe(network);
        Ok(self.inner.lookup(&probe)?.pending_in_network)
    }

    async fn put(&self, key: &Key, record: &TupleRecord) -> Result<(), StoreError> {
        let kb = key.as_bytes().to_vec();
        let r = *record;
        self.blocking(move |inner| inner.commit(Some(Extra::Put(&kb, &r))))
            .await
    }

    async fn expire(&self, now: u64, limit: usize) -> Result<ExpireReport, StoreError> {
        self.blocking(move |inner| inner.expire(now, limit)).await
    }

    async fn list_network(
        &self,
        network: &str,
        limit: usize,
    ) -> Result<Vec<(Key, TupleRecord)>, StoreError> {
        let n = network.to_owned();
        self.blocking(move |inner| {
            inner.commit(None)?;
            inner.list_network(&n, limit)
        })
        .await
    }

    async fn flush_network(&self, network: &str) -> Result<u64, StoreError> {
        let n = network.to_owned();
        self.blocking(move |inner| inner.flush_network(&n)).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.blocking(|inner| {
            inner.commit(None)?;
            inner.stats()
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.commit(None)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TupleWrite;
    use crate::tuple::mask;

    fn key(i: u32) -> Key {
        let net = mask("192.0.2.1".parse().unwrap(), 24, 64);
        Key::new(&net, &format!("s{i}@example.com"), "r@example.net")
    }

    fn lazy(rec: TupleRecord) -> Updates {
        Updates {
            tuple: Some(TupleWrite {
                record: rec,
                durability: Durability::Lazy,
            }),
            host: None,
        }
    }

    #[tokio::test]
    async fn lazy_writes_are_visible_before_and_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RedbOptions {
            batch_interval: Duration::from_secs(3600),
            ..RedbOptions::default()
        };
        let s = RedbStore::open_with(dir.path().join("g.redb"), opts).unwrap();
        let k = key(1);
        s.apply(&k, &lazy(TupleRecord::pending(10, 100)))
            .await
            .unwrap();
        // Staged only: visible through the overlay, counted as pending.
        let snap = s.lookup(&k).await.unwrap();
        assert_eq!(snap.tuple, Some(TupleRecord::pending(10, 100)));
        assert_eq!(snap.pending_in_network, 1);
        assert_eq!(s.inner.read_tuple(k.as_bytes()).unwrap(), None);
        s.flush().await.unwrap();
        assert_eq!(
            s.inner.read_tuple(k.as_bytes()).unwrap(),
            Some(TupleRecord::pending(10, 100))
        );
        let snap = s.lookup(&k).await.unwrap();
        assert_eq!(
            snap.pending_in_network, 1,
            "not double counted after commit"
        );
    }

    #[tokio::test]
    async fn drop_commits_staged_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.redb");
        let opts = RedbOptions {
            batch_interval: Duration::from_secs(3600),
            ..RedbOptions::default()
        };
        {
            let s = RedbStore::open_with(&path, opts).unwrap();
            s.apply(&key(2), &lazy(TupleRecord::pending(10, 100)))
                .await
                .unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert!(s.get(&key(2)).await.unwrap().is_some());
    }
}
