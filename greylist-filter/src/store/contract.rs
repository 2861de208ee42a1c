//! The store contract: one suite every [`Store`] backend must pass.
//!
//! Enabled by the `contract-tests` feature. A backend's integration test calls
//! [`run_all`] with a factory that returns a fresh, empty store for each case:
//!
//! ```ignore
//! #[tokio::test]
//! async fn memory_store_contract() {
//!     greylist_filter::store::contract::run_all(|| async { MemoryStore::new() }).await;
//! }
//! ```
//!
//! Each case panics (like `assert!`) with a message naming what broke.

use std::future::Future;
use std::sync::Arc;

use super::{Store, StoreStats};
use crate::record::{
    Durability, HostUpdate, Snapshot, TupleRecord, TupleState, TupleWrite, Updates,
};
use crate::tuple::{Key, Network};

const T0: u64 = 1_700_000_000;

fn key(net: &str, sender: &str, rcpt: &str) -> Key {
    let n = Network::parse(net).expect("contract: valid network");
    Key::new(&n, sender, rcpt)
}

fn first_seen(now: u64, expires: u64) -> Updates {
    Updates {
        tuple: Some(TupleWrite {
            record: TupleRecord::pending(now, expires),
            durability: Durability::Lazy,
        }),
        host: None,
    }
}

fn passed(rec: TupleRecord, now: u64, aw: u64) -> Updates {
    Updates {
        tuple: Some(TupleWrite {
            record: TupleRecord {
                state: TupleState::Passed,
                passed_at: now,
                last_seen: now,
                expires: now + aw,
                passes: 1,
                ..rec
            },
            durability: Durability::Durable,
        }),
        host: Some(HostUpdate::CountPass {
            now,
            threshold: 3,
            period: 1000,
        }),
    }
}

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<F, Fut, S>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: Store + 'static,
{
    empty_store(&make().await).await;
    first_seen_is_visible_and_counted(&make().await).await;
    pass_is_recorded_and_uncounted(&make().await).await;
    host_trust_counts_distinct_passes(&make().await).await;
    host_refresh_extends_trust(&make().await).await;
    pending_counts_are_per_network(&make().await).await;
    expiry_is_incremental(&make().await).await;
    expiry_respects_updated_expiry(&make().await).await;
    list_and_flush_network(&make().await).await;
    put_imports_records(&make().await).await;
    concurrent_passes_are_all_counted(Arc::new(make().await)).await;
}

/// A new store is empty.
pub async fn empty_store<S: Store>(s: &S) {
    let k = key("192.0.2.0/24", "a@example.com", "b@example.net");
    assert_eq!(
        s.lookup(&k).await.unwrap(),
        Snapshot::default(),
        "empty lookup"
    );
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert_eq!(s.host("192.0.2.0/24").await.unwrap(), None);
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 0);
    assert_eq!(s.stats().await.unwrap(), StoreStats::default());
    assert_eq!(s.expire(u64::MAX, 100).await.unwrap().tuples, 0);
    s.flush().await.unwrap();
}

/// A lazy first-seen write is visible at once and counts as pending, before and after flush.
pub async fn first_seen_is_visible_and_counted<S: Store>(s: &S) {
    let k = key("192.0.2.0/24", "a@example.com", "b@example.net");
    s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
    let snap = s.lookup(&k).await.unwrap();
    assert_eq!(
        snap.tuple,
        Some(TupleRecord::pending(T0, T0 + 100)),
        "read your write"
    );
    assert_eq!(snap.pending_in_network, 1, "pending counted");
    // Rewriting a pending record (an early retry) does not count it twice.
    let mut again = TupleRecord::pending(T0, T0 + 100);
    again.attempts = 2;
    again.last_seen = T0 + 5;
    let upd = Updates {
        tuple: Some(TupleWrite {
            record: again,
            durability: Durability::Lazy,
        }),
        host: None,
    };
    s.apply(&k, &upd).await.unwrap();
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 1);
    s.flush().await.unwrap();
    let snap = s.lookup(&k).await.unwrap();
    assert_eq!(snap.tuple, Some(again), "survives flush");
    assert_eq!(snap.pending_in_network, 1, "still counted once after flush");
    assert_eq!(
        s.stats().await.unwrap(),
        StoreStats {
            tuples: 1,
            pending: 1,
            hosts: 0
        }
    );
}

/// A durable pass replaces the pending record, leaves the pending count and counts a pass.
pub async fn pass_is_recorded_and_uncounted<S: Store>(s: &S) {
    let k = key("192.0.2.0/24", "a@example.com", "b@example.net");
    s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
    let rec = s.get(&k).await.unwrap().unwrap();
    s.apply(&k, &passed(rec, T0 + 50, 500)).await.unwrap();
    let snap = s.lookup(&k).await.unwrap();
    let t = snap.tuple.unwrap();
    assert_eq!(t.state, TupleState::Passed);
    assert_eq!(
        (t.first_seen, t.passed_at, t.expires),
        (T0, T0 + 50, T0 + 550)
    );
    assert_eq!(snap.pending_in_network, 0, "passed tuple is not pending");
    let h = snap.host.expect("host record after a pass");
    assert_eq!((h.passed_tuples, h.trusted_until), (1, 0));
    assert_eq!(s.host("192.0.2.0/24").await.unwrap(), Some(h));
}

/// Three distinct passes from one network make it trusted.
pub async fn host_trust_counts_distinct_passes<S: Store>(s: &S) {
    for i in 0..3 {
        let k = key(
            "198.51.100.0/24",
            &format!("s{i}@example.com"),
            "r@example.net",
        );
        s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
        let rec = s.get(&k).await.unwrap().unwrap();
        s.apply(&k, &passed(rec, T0 + 10 * (i + 1), 500))
            .await
            .unwrap();
    }
    let h = s.host("198.51.100.0/24").await.unwrap().unwrap();
    assert_eq!(h.passed_tuples, 3);
    assert_eq!(
        h.trusted_until,
        T0 + 30 + 1000,
        "trusted after the third pass"
    );
    assert_eq!(
        s.host("198.51.101.0/24").await.unwrap(),
        None,
        "other network untouched"
    );
}

/// A lazy host refresh extends trust and is visible at once.
pub async fn host_refresh_extends_trust<S: Store>(s: &S) {
    let k = key("203.0.113.0/24", "a@example.com", "b@example.net");
    let upd = Updates {
        tuple: None,
        host: Some(HostUpdate::CountPass {
            now: T0,
            threshold: 1,
            period: 100,
        }),
    };
    s.apply(&k, &upd).await.unwrap();
    assert_eq!(
        s.host("203.0.113.0/24")
            .await
            .unwrap()
            .unwrap()
            .trusted_until,
        T0 + 100
    );
    let refresh = Updates {
        tuple: None,
        host: Some(HostUpdate::Refresh { until: T0 + 5000 }),
    };
    s.apply(&k, &refresh).await.unwrap();
    assert_eq!(
        s.lookup(&k).await.unwrap().host.unwrap().trusted_until,
        T0 + 5000
    );
    s.flush().await.unwrap();
    let h = s.host("203.0.113.0/24").await.unwrap().unwrap();
    assert_eq!((h.trusted_until, h.expires), (T0 + 5000, T0 + 5000));
}

/// Pending counts are kept per network.
pub async fn pending_counts_are_per_network<S: Store>(s: &S) {
    for i in 0..5 {
        let k = key(
            "192.0.2.0/24",
            &format!("s{i}@example.com"),
            "r@example.net",
        );
        s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
    }
    for i in 0..2 {
        let k = key(
            "2001:db8::/64",
            &format!("s{i}@example.com"),
            "r@example.net",
        );
        s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
    }
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 5);
    assert_eq!(s.pending_count("2001:db8::/64").await.unwrap(), 2);
    let probe = key("2001:db8::/64", "x@example.com", "y@example.net");
    assert_eq!(s.lookup(&probe).await.unwrap().pending_in_network, 2);
    s.flush().await.unwrap();
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 5);
    assert_eq!(s.stats().await.unwrap().pending, 7);
}

/// Expiry deletes only due records, at most `limit` per call, and keeps counts right.
pub async fn expiry_is_incremental<S: Store>(s: &S) {
    for i in 0..10u64 {
        let k = key(
            "192.0.2.0/24",
            &format!("s{i}@example.com"),
            "r@example.net",
        );
        s.apply(&k, &first_seen(T0, T0 + 100 + i)).await.unwrap();
    }
    s.flush().await.unwrap();
    // Nothing due yet.
    let r = s.expire(T0 + 99, 100).await.unwrap();
    assert_eq!((r.tuples, r.more), (0, false));
    // Seven due (expires 100..=106), removed three at a time.
    let r = s.expire(T0 + 106, 3).await.unwrap();
    assert_eq!((r.tuples, r.more), (3, true));
    let r = s.expire(T0 + 106, 3).await.unwrap();
    assert_eq!((r.tuples, r.more), (3, true));
    let r = s.expire(T0 + 106, 3).await.unwrap();
    assert_eq!((r.tuples, r.more), (1, false));
    assert_eq!(s.stats().await.unwrap().tuples, 3);
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 3);
    let survivor = key("192.0.2.0/24", "s9@example.com", "r@example.net");
    assert!(s.get(&survivor).await.unwrap().is_some());
    let gone = key("192.0.2.0/24", "s0@example.com", "r@example.net");
    assert!(s.get(&gone).await.unwrap().is_none());
}

/// A record whose expiry moved later is not deleted at its old expiry time; host records
/// expire too.
pub async fn expiry_respects_updated_expiry<S: Store>(s: &S) {
    let k = key("192.0.2.0/24", "a@example.com", "b@example.net");
    s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
    let rec = s.get(&k).await.unwrap().unwrap();
    s.apply(&k, &passed(rec, T0 + 50, 1000)).await.unwrap();
    s.flush().await.unwrap();
    let r = s.expire(T0 + 200, 100).await.unwrap();
    assert_eq!(
        r.tuples, 0,
        "old expiry entry must not delete the refreshed record"
    );
    assert!(s.get(&k).await.unwrap().is_some());
    // The host record (expires T0+50+1000) and the tuple (T0+1050) both go at T0+1050.
    let r = s.expire(T0 + 1050, 100).await.unwrap();
    assert_eq!((r.tuples, r.hosts), (1, 1));
    assert_eq!(s.stats().await.unwrap(), StoreStats::default());
}

/// Listing and flushing a network touch only that network.
pub async fn list_and_flush_network<S: Store>(s: &S) {
    for i in 0..3 {
        let k = key(
            "192.0.2.0/24",
            &format!("s{i}@example.com"),
            "r@example.net",
        );
        s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
    }
    // 192.0.2.0/25 shares a textual prefix with 192.0.2.0/24 but is another network.
    let other = key("192.0.2.0/25", "s@example.com", "r@example.net");
    s.apply(&other, &first_seen(T0, T0 + 100)).await.unwrap();
    let listed = s.list_network("192.0.2.0/24", 100).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|(k, _)| k.network() == "192.0.2.0/24"));
    assert_eq!(
        s.list_network("192.0.2.0/24", 2).await.unwrap().len(),
        2,
        "limit"
    );
    assert_eq!(s.flush_network("192.0.2.0/24").await.unwrap(), 3);
    assert!(
        s.list_network("192.0.2.0/24", 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 0);
    assert_eq!(s.list_network("192.0.2.0/25", 100).await.unwrap().len(), 1);
    assert_eq!(s.stats().await.unwrap().tuples, 1);
    // Flushed records do not linger in the expiry index.
    assert_eq!(s.expire(u64::MAX, 100).await.unwrap().tuples, 1);
}

/// `put` stores a record as given and keeps counts right.
pub async fn put_imports_records<S: Store>(s: &S) {
    let k = key("192.0.2.0/24", "a@example.com", "b@example.net");
    let mut rec = TupleRecord::pending(T0, T0 + 100);
    s.put(&k, &rec).await.unwrap();
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 1);
    rec.state = TupleState::Passed;
    rec.expires = T0 + 9999;
    s.put(&k, &rec).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), Some(rec));
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 0);
}

/// Passes of distinct tuples racing from many tasks are all counted.
pub async fn concurrent_passes_are_all_counted<S: Store + 'static>(s: Arc<S>) {
    let n = 16u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let k = key(
                "192.0.2.0/24",
                &format!("s{i}@example.com"),
                "r@example.net",
            );
            s.apply(&k, &first_seen(T0, T0 + 100)).await.unwrap();
            let rec = s.get(&k).await.unwrap().unwrap();
            s.apply(&k, &passed(rec, T0 + 10, 500)).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let h = s.host("192.0.2.0/24").await.unwrap().unwrap();
    assert_eq!(u64::from(h.passed_tuples), n, "every pass counted");
    assert_eq!(s.pending_count("192.0.2.0/24").await.unwrap(), 0);
}
