//! The engine facade end to end over the memory and redb stores, with a manual clock.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::engine::{T0, config, engine_with};
use greylist_filter::clock::Clock;
use greylist_filter::config::Config;
use greylist_filter::policy::{BypassReason, Decision, GreylistReason, PassReason, TempfailReason};
use greylist_filter::store::{MemoryStore, RedbStore, Store};
use greylist_filter::{Action, RcptContext};

/// [`common::engine::ctx`] with a queue id.
fn ctx<'a>(ip: &str, sender: &'a str, rcpt: &'a str) -> RcptContext<'a> {
    RcptContext {
        queue_id: Some("4XyZ1"),
        ..common::engine::ctx(ip, sender, rcpt)
    }
}

async fn lifecycle(store: Arc<dyn Store>) {
    let (e, clock) = engine_with(&Config::default(), store.clone());
    let c = ctx(
        "198.51.100.20",
        "<prvs=0123abcd=news@example.com>",
        "<Bob@Example.NET>",
    );
    let out = e.check_rcpt(&c).await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 300,
            reason: GreylistReason::NewTuple
        }
    );
    match &out.action {
        Action::Tempfail(r) => {
            assert_eq!((r.code, r.status.as_str()), (451, "4.7.1"));
            assert!(r.text.to_lowercase().contains("greylist"));
            assert!(!r.text.chars().any(|c| c.is_ascii_digit()), "no countdown");
        }
        Action::Continue | Action::Reject(_) => panic!("new tuple must be tempfailed"),
    }
    let key = out.key.clone().unwrap();
    assert_eq!(key.network(), "198.51.100.0/24");
    assert_eq!(key.sender(), "news@example.com");
    assert_eq!(key.recipient(), "bob@example.net");

    // Early retry from another host of the /24 with a new BATV tag: still greylisted,
    // first-seen unchanged.
    clock.advance(Duration::from_secs(120));
    let c2 = ctx(
        "198.51.100.99",
        "prvs=0999ffff=news@example.com",
        "bob@example.net",
    );
    let out = e.check_rcpt(&c2).await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 180,
            reason: GreylistReason::TooEarly
        }
    );
    assert_eq!(store.get(&key).await.unwrap().unwrap().first_seen, T0);

    // After the delay: passes, the delay is reported for the header.
    clock.advance(Duration::from_secs(192));
    let out = e.check_rcpt(&c).await;
    assert_eq!(out.action, Action::Continue);
    assert_eq!(
        out.decision,
        Decision::Pass(PassReason::DelayMet { delayed: 312 })
    );
    assert_eq!(out.delayed, Some(312));
    let (name, value) = e.x_greylist_header(312).unwrap();
    assert_eq!(name, "X-Greylist");
    assert_eq!(
        value,
        "delayed 312 seconds by greylist-filter at mx.example.net; Tue, 14 Nov 2023 22:18:32 +0000"
    );

    // Next message: auto-whitelisted, no header.
    clock.advance(Duration::from_secs(86_400 * 10));
    let out = e.check_rcpt(&c).await;
    assert_eq!(out.decision, Decision::Pass(PassReason::AutoWhitelisted));
    assert_eq!(out.delayed, None);

    let m = e.metrics().snapshot();
    assert_eq!(m.decision("greylist", "new_tuple"), 1);
    assert_eq!(m.decision("greylist", "too_early"), 1);
    assert_eq!(m.decision("pass", "delay_met"), 1);
    assert_eq!(m.decision("pass", "auto_whitelisted"), 1);
    assert_eq!(m.delay_seconds_total, 312);
    assert!(m.store_latency.iter().sum::<u64>() >= 4);
}

#[tokio::test]
async fn lifecycle_memory() {
    lifecycle(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_redb() {
    let dir = tempfile::tempdir().unwrap();
    lifecycle(Arc::new(
        RedbStore::open(dir.path().join("g.redb")).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn ipv4_mapped_and_sendmail_forms_share_tuples() {
    let (e, clock) = engine_with(&Config::default(), Arc::new(MemoryStore::new()));
    e.check_rcpt(&ctx("::ffff:192.0.2.10", "a@example.com", "b@example.net"))
        .await;
    clock.advance(Duration::from_secs(301));
    let out = e
        .check_rcpt(&ctx("192.0.2.11", "A@Example.com", "b@example.net"))
        .await;
    assert!(matches!(
        out.decision,
        Decision::Pass(PassReason::DelayMet { .. })
    ));
}

#[tokio::test]
async fn bypasses_touch_no_store() {
    let store = Arc::new(MemoryStore::new());
    let cfg = config("[whitelist]\nnetworks = [\"203.0.113.0/24\"]\n");
    let (e, _) = engine_with(&cfg, store.clone());
    let cases = [
        (
            ctx("127.0.0.1", "a@b.example", "c@d.example"),
            BypassReason::Loopback,
        ),
        (
            ctx("203.0.113.5", "a@b.example", "c@d.example"),
            BypassReason::ClientNetwork,
        ),
        (
            ctx("198.51.100.1", "a@b.example", "Postmaster@d.example"),
            BypassReason::SpecialRecipient,
        ),
        (
            RcptContext {
                auth_authen: Some("alice"),
                ..ctx("198.51.100.1", "a@b.example", "c@d.example")
            },
            BypassReason::Authenticated,
        ),
        (
            RcptContext {
                client_addr: None,
                ..ctx("198.51.100.1", "a@b.example", "c@d.example")
            },
            BypassReason::NonIpClient,
        ),
    ];
    for (c, want) in cases {
        let out = e.check_rcpt(&c).await;
        assert_eq!(out.decision, Decision::Bypass(want));
        assert_eq!(out.action, Action::Continue);
        assert!(out.key.is_none());
    }
    assert_eq!(store.stats().await.unwrap().tuples, 0);
}

#[tokio::test]
async fn fail_open_and_fail_closed() {
    let store = Arc::new(MemoryStore::new());
    store.set_failing(true);
    let (e, _) = engine_with(&Config::default(), store.clone());
    let out = e
        .check_rcpt(&ctx("198.51.100.1", "a@b.example", "c@d.example"))
        .await;
    assert_eq!(out.decision, Decision::Pass(PassReason::StoreFailOpen));
    assert_eq!(out.action, Action::Continue);
    assert_eq!(e.metrics().snapshot().store_errors, 1);

    let (e, _) = engine_with(
        &config("[greylist]\nfail_open = \"tempfail\"\n"),
        store.clone(),
    );
    let out = e
        .check_rcpt(&ctx("198.51.100.1", "a@b.example", "c@d.example"))
        .await;
    assert_eq!(
        out.decision,
        Decision::Tempfail(TempfailReason::StoreUnavailable)
    );
    assert!(matches!(out.action, Action::Tempfail(_)));
    assert_eq!(
        e.metrics()
            .snapshot()
            .decision("tempfail", "store_unavailable"),
        1
    );
}

#[tokio::test]
async fn dry_run_records_but_continues() {
    let store = Arc::new(MemoryStore::new());
    let (e, clock) = engine_with(&config("[greylist]\ndry_run = true\n"), store.clone());
    let c = ctx("198.51.100.1", "a@b.example", "c@d.example");
    let out = e.check_rcpt(&c).await;
    assert!(matches!(out.decision, Decision::Greylist { .. }));
    assert_eq!(out.action, Action::Continue);
    assert_eq!(
        store.stats().await.unwrap().pending,
        1,
        "learning mode records"
    );
    clock.advance(Duration::from_secs(300));
    assert!(matches!(
        e.check_rcpt(&c).await.decision,
        Decision::Pass(PassReason::DelayMet { .. })
    ));
}

#[tokio::test]
async fn pending_cap_tempfails_without_storing() {
    let store = Arc::new(MemoryStore::new());
    let (e, _) = engine_with(
        &config("[greylist]\nmax_pending_per_network = 2\n"),
        store.clone(),
    );
    for i in 0..2 {
        let s = format!("s{i}@example.com");
        let out = e
            .check_rcpt(&ctx("198.51.100.1", &s, "r@example.net"))
            .await;
        assert!(matches!(out.decision, Decision::Greylist { .. }));
    }
    let out = e
        .check_rcpt(&ctx("198.51.100.2", "s9@example.com", "r@example.net"))
        .await;
    assert_eq!(out.decision, Decision::Tempfail(TempfailReason::PendingCap));
    assert!(matches!(out.action, Action::Tempfail(_)));
    assert_eq!(store.stats().await.unwrap().tuples, 2);
    // Another network is not affected.
    let out = e
        .check_rcpt(&ctx("198.51.101.2", "s9@example.com", "r@example.net"))
        .await;
    assert!(matches!(out.decision, Decision::Greylist { .. }));
}

#[tokio::test]
async fn host_trust_after_three_distinct_tuples() {
    let (e, clock) = engine_with(&Config::default(), Arc::new(MemoryStore::new()));
    let senders = ["a@x.example", "b@x.example", "c@x.example"];
    for s in senders {
        e.check_rcpt(&ctx("198.51.100.1", s, "r@example.net")).await;
    }
    clock.advance(Duration::from_secs(600));
    for s in senders {
        let out = e.check_rcpt(&ctx("198.51.100.1", s, "r@example.net")).await;
        assert!(matches!(
            out.decision,
            Decision::Pass(PassReason::DelayMet { .. })
        ));
    }
    let out = e
        .check_rcpt(&ctx("198.51.100.77", "new@y.example", "z@example.net"))
        .await;
    assert_eq!(out.decision, Decision::Pass(PassReason::HostTrusted));
    // Trust ends 35 days after the last pass.
    clock.advance(Duration::from_secs(35 * 86_400));
    let out = e
        .check_rcpt(&ctx("198.51.100.77", "new2@y.example", "z@example.net"))
        .await;
    assert!(matches!(out.decision, Decision::Greylist { .. }));
}

#[tokio::test]
async fn explain_does_not_mutate() {
    let store = Arc::new(MemoryStore::new());
    let (e, clock) = engine_with(&Config::default(), store.clone());
    let ip: IpAddr = "198.51.100.1".parse().unwrap();
    let x = e.explain(ip, "a@b.example", "c@d.example").await.unwrap();
    assert_eq!(
        x.decision,
        Decision::Greylist {
            retry_after: 300,
            reason: GreylistReason::NewTuple
        }
    );
    assert_eq!(x.record, None);
    assert_eq!(
        store.stats().await.unwrap().tuples,
        0,
        "explain wrote nothing"
    );

    e.check_rcpt(&ctx("198.51.100.1", "a@b.example", "c@d.example"))
        .await;
    clock.advance(Duration::from_secs(100));
    let x = e.explain(ip, "a@b.example", "c@d.example").await.unwrap();
    assert_eq!(x.passes_at, Some(T0 + 300));
    assert_eq!(x.record.unwrap().first_seen, T0);
    assert_eq!(
        x.record.unwrap().attempts,
        1,
        "explain did not count an attempt"
    );
    let x = e
        .explain("127.0.0.1".parse().unwrap(), "a@b", "c@d")
        .await
        .unwrap();
    assert_eq!(x.decision, Decision::Bypass(BypassReason::Loopback));
}

#[tokio::test]
async fn reload_changes_timing_and_header() {
    let (e, _) = engine_with(&Config::default(), Arc::new(MemoryStore::new()));
    let new = config("[greylist]\ndelay = \"1m\"\n[header]\nenabled = false\n");
    e.reload(&new, Path::new("test.toml")).unwrap();
    let out = e
        .check_rcpt(&ctx("198.51.100.1", "a@b.example", "c@d.example"))
        .await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 60,
            reason: GreylistReason::NewTuple
        }
    );
    assert_eq!(e.x_greylist_header(60), None);
}

#[tokio::test]
async fn expire_step_uses_clock_and_batch() {
    let store = Arc::new(MemoryStore::new());
    let (e, clock) = engine_with(&config("[store]\nexpire_batch = 1\n"), store.clone());
    e.check_rcpt(&ctx("198.51.100.1", "a@b.example", "c@d.example"))
        .await;
    e.check_rcpt(&ctx("198.51.100.1", "x@b.example", "c@d.example"))
        .await;
    assert_eq!(e.expire_step().await.unwrap().tuples, 0);
    clock.advance(Duration::from_secs(86_400));
    let r = e.expire_step().await.unwrap();
    assert_eq!((r.tuples, r.more), (1, true));
    assert_eq!(e.expire_step().await.unwrap().tuples, 1);
    assert_eq!(store.stats().await.unwrap().tuples, 0);
}

/// The in-memory pass cache stays coherent with the store: refreshes are written
/// through, an expired entry is not trusted, a flushed network is forgotten.
#[tokio::test]
async fn pass_cache_is_coherent() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("c.redb")).unwrap());
    let cfg = config("[greylist]\nauto_whitelist = \"2d\"\n[host_trust]\nthreshold = 0\n");
    let (e, clock) = engine_with(&cfg, store.clone());
    let c = ctx("192.0.2.9", "a@example.org", "b@example.net");
    e.check_rcpt(&c).await;
    clock.advance(Duration::from_secs(301));
    let out = e.check_rcpt(&c).await;
    assert!(matches!(
        out.decision,
        Decision::Pass(PassReason::DelayMet { .. })
    ));
    let key = out.key.unwrap();

    // Cached hits refresh the record in the store (sliding window), not only in memory.
    clock.advance(Duration::from_secs(86_400));
    let out = e.check_rcpt(&c).await;
    assert_eq!(out.decision, Decision::Pass(PassReason::AutoWhitelisted));
    store.flush().await.unwrap();
    let rec = store.get(&key).await.unwrap().unwrap();
    assert_eq!(rec.expires, clock.now() + 2 * 86_400);
    assert_eq!(rec.passes, 2);

    // Past its expiry the cached entry does not count.
    clock.advance(Duration::from_secs(2 * 86_400 + 1));
    let out = e.check_rcpt(&c).await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 300,
            reason: GreylistReason::AutoWhitelistExpired
        }
    );

    // Pass again, then flush the network: the cache forgets it too.
    clock.advance(Duration::from_secs(301));
    assert!(e.check_rcpt(&c).await.decision.accepts());
    assert_eq!(
        e.check_rcpt(&c).await.decision,
        Decision::Pass(PassReason::AutoWhitelisted)
    );
    let (net, n) = e.flush_ip("192.0.2.200".parse().unwrap()).await.unwrap();
    assert_eq!((net.as_str(), n), ("192.0.2.0/24", 1));
    assert_eq!(
        e.check_rcpt(&c).await.decision,
        Decision::Greylist {
            retry_after: 300,
            reason: GreylistReason::NewTuple
        }
    );
}
