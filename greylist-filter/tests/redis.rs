//! The Redis backend end to end: two daemons sharing one `redis-server`, and Redis
//! going away and coming back while the daemons keep running.
//!
//! Skipped (with a SKIP line) without the `redis-server` binary, unless
//! `GREYLIST_REQUIRE_REDIS=1`.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::{RedisServer, redis_binary};
use common::*;
use milter_client::Verdict;

fn start(dir: &std::path::Path, url: &str) -> Daemon {
    Daemon::start(
        dir,
        &[
            "--listen",
            "inet:0@127.0.0.1",
            "--admin",
            "127.0.0.1:0",
            "--delay",
            "2s",
            "--store",
            url,
        ],
    )
}

async fn store_errors(d: &Daemon) -> u64 {
    let admin = d.admin.clone().expect("admin address");
    let (code, body) = greylist_filter::admin::request(&admin, "GET", "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("greylist_store_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("greylist_store_errors_total in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_redis_and_survive_its_restart() {
    let Some(bin) = redis_binary("two_daemons_share_one_redis_and_survive_its_restart") else {
        return;
    };
    let rdir = tempdir();
    let mut redis = RedisServer::start(&bin, rdir.path());
    let url = redis.url(3);
    let da = tempdir();
    let db = tempdir();
    let a = start(da.path(), &url);
    let b = start(db.path(), &url);
    assert!(a.log().contains(&url), "{}", a.log());

    // 1. First seen through A: 451.
    let m = message("192.0.2.10", "alice@example.org", &["bob@example.net"]);
    let t0 = Instant::now();
    let first = send(&a.milter, &m).await;
    assert_eq!(first.verdict, Verdict::Tempfailed, "{}", first.smtp_text());

    // 2. The retry through B passes once the delay is over: B sees A's record.
    let (passed, _) = retry_until_accepted(&b.milter, &m, Duration::from_millis(200)).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "passed before the delay"
    );
    assert!(accepted(&passed, "bob@example.net"));
    // And A now lets it through at once too (auto-whitelisted in the shared store).
    assert!(send(&a.milter, &m).await.is_accepted());

    // 3. Redis hangs: the decision fails open within the configured timeout, not after
    //    a TCP timeout.
    let before = store_errors(&a).await;
    redis.pause(true);
    let hung = message("198.51.100.99", "hung@example.org", &["dave@example.net"]);
    let t1 = Instant::now();
    let out = send(&a.milter, &hung).await;
    let took = t1.elapsed();
    redis.pause(false);
    assert!(out.is_accepted(), "fail open: {}", out.smtp_text());
    assert!(took < Duration::from_secs(3), "a hung Redis took {took:?}");

    // 4. Redis dies: both daemons fail open, quickly, and count the errors.
    redis.kill();
    let fresh = message("198.51.100.7", "carol@example.org", &["dave@example.net"]);
    let t1 = Instant::now();
    let out = send(&a.milter, &fresh).await;
    assert!(out.is_accepted(), "fail open: {}", out.smtp_text());
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "a dead Redis took {:?}",
        t1.elapsed()
    );
    assert!(send(&b.milter, &fresh).await.is_accepted());
    assert!(store_errors(&a).await > before, "store error counted");
    assert!(
        a.wait_log("greylist store failed", DEADLINE).is_some(),
        "{}",
        a.log()
    );

    // 5. Redis comes back (empty: no persistence): normal greylisting resumes without
    //    restarting the daemons.
    redis.restart(&bin);
    let other = message("203.0.113.9", "erin@example.org", &["frank@example.net"]);
    let end = Instant::now() + DEADLINE;
    loop {
        let out = send(&a.milter, &other).await;
        if out.verdict == Verdict::Tempfailed {
            break;
        }
        assert!(Instant::now() < end, "A never reconnected: {}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (passed, _) = retry_until_accepted(&b.milter, &other, Duration::from_millis(200)).await;
    assert!(accepted(&passed, "frank@example.net"));
    a.stop();
    b.stop();
}

/// Records carry Redis TTLs (expiry plus the grace) so Redis cleans up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_get_redis_ttls() {
    use greylist_filter::record::{Durability, TupleRecord, TupleWrite, Updates};
    use greylist_filter::store::{RedisOptions, RedisStore, Store};
    use greylist_filter::tuple::{Key, Network};

    let Some(bin) = redis_binary("records_get_redis_ttls") else {
        return;
    };
    let rdir = tempdir();
    let redis = RedisServer::start(&bin, rdir.path());
    let store = RedisStore::open(&redis.url(1), RedisOptions::default()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let net = Network::parse("192.0.2.0/24").unwrap();
    let key = Key::new(&net, "a@example.org", "b@example.net");
    let upd = Updates {
        tuple: Some(TupleWrite {
            record: TupleRecord::pending(now, now + 100),
            durability: Durability::Lazy,
        }),
        host: None,
    };
    store.apply(&key, &upd).await.unwrap();
    let client = redis::Client::open(redis.url(1)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut name = b"greylist:t:".to_vec();
    name.extend_from_slice(key.as_bytes());
    let ttl: i64 = redis::cmd("TTL")
        .arg(&name)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((86_400..=86_500).contains(&ttl), "ttl {ttl}");
}
