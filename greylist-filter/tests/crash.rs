//! Crash safety: a child process writes to a redb store and is killed with SIGKILL in
//! the middle of its writes; the file must reopen and keep every pass it acknowledged.
//!
//! The child is this test binary re-executed with `GREYLIST_CRASH_CHILD` set.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use greylist_filter::record::{Durability, TupleRecord, TupleState, TupleWrite, Updates};
use greylist_filter::store::{RedbStore, Store};
use greylist_filter::tuple::{Key, Network};

const ENV: &str = "GREYLIST_CRASH_CHILD";

fn key(i: u64) -> Key {
    let net = Network::parse(&format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255)).unwrap();
    Key::new(&net, &format!("s{i}@example.com"), "r@example.net")
}

fn update(i: u64, durability: Durability) -> Updates {
    let mut rec = TupleRecord::pending(1000 + i, 100_000 + i);
    if durability == Durability::Durable {
        rec.state = TupleState::Passed;
        rec.passed_at = 1300 + i;
    }
    Updates {
        tuple: Some(TupleWrite {
            record: rec,
            durability,
        }),
        host: None,
    }
}

/// The child: acknowledged passes are printed as `ACK n` after `apply` returns.
fn child(path: &str) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RedbStore::open(path).unwrap();
        let mut out = std::io::stdout();
        let mut i = 0u64;
        loop {
            // Many lazy first-seen writes (group-committed) between durable passes.
            for j in 0..50 {
                store
                    .apply(&key(1_000_000 + i * 50 + j), &update(i, Durability::Lazy))
                    .await
                    .unwrap();
            }
            store
                .apply(&key(i), &update(i, Durability::Durable))
                .await
                .unwrap();
            writeln!(out, "ACK {i}").unwrap();
            out.flush().unwrap();
            i += 1;
        }
    })
}

#[test]
fn kill9_keeps_acknowledged_passes() {
    if let Ok(path) = std::env::var(ENV) {
        child(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill9_keeps_acknowledged_passes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = None;
    let reader = BufReader::new(c.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ACK ") {
            let n: u64 = n.trim().parse().unwrap();
            acked = Some(n);
            if n >= 40 {
                // Kill while the child is in the middle of further writes.
                c.kill().unwrap(); // SIGKILL on Unix
                break;
            }
        }
    }
    c.wait().unwrap();
    let acked = acked.expect("child acknowledged passes");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RedbStore::open(&path).expect("file opens after kill -9");
        for i in 0..=acked {
            let r = store.get(&key(i)).await.unwrap();
            assert_eq!(
                r.map(|r| r.state),
                Some(TupleState::Passed),
                "acknowledged pass {i} of {acked} survived"
            );
        }
        // The store still works: counts are readable, new writes commit.
        let stats = store.stats().await.unwrap();
        assert!(stats.tuples > acked);
        store
            .apply(&key(999_999), &update(1, Durability::Durable))
            .await
            .unwrap();
        assert!(store.get(&key(999_999)).await.unwrap().is_some());
        // The expiry index is consistent with the records: expiring everything leaves
        // nothing, pending counts included.
        let before = store.stats().await.unwrap().tuples;
        let r = store.expire(u64::MAX, 10_000_000).await.unwrap();
        assert_eq!(r.tuples, before);
        let after = store.stats().await.unwrap();
        assert_eq!((after.tuples, after.pending), (0, 0));
    });
}
