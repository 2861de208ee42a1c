//! In-process greylisting decisions per second: the policy, the whitelist and the
//! default redb store behind [`Engine::check_rcpt`], without the milter protocol.
//!
//! - `auto_whitelisted`: lookups of tuples that already passed (the steady state of a
//!   mail server: most mail comes from known senders). Target ≥ 200,000/s.
//!   `auto_whitelisted_uncached` is the same with the read cache off (every lookup a
//!   redb read transaction).
//! - `new_tuples`: first attempts of never-seen tuples, each one a write that the store
//!   group-commits in the background. Target ≥ 50,000/s.
//! - `auto_whitelisted_10_acl_rules`: `auto_whitelisted` behind ten `[[acl]]` rules that
//!   all have to be tried (none matches), for the cost of the rules.
//!
//! `cargo bench -p greylist-filter --bench engine`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use greylist_filter::clock::SystemClock;
use greylist_filter::config::Config;
use greylist_filter::record::{Durability, TupleRecord, TupleState, TupleWrite, Updates};
use greylist_filter::store::{RedbStore, Store};
use greylist_filter::tuple::Key;
use greylist_filter::{Action, Engine, RcptContext};

const BATCH: u64 = 1000;
const KNOWN: u32 = 20_000;

fn ip(i: u32) -> IpAddr {
    // 10.x.y.z spread over many /24 networks.
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | ((i * 7919) % 0x00FF_FFFF)))
}

fn rcpt(i: u32) -> String {
    format!("user{i}@example.net")
}

/// Ten rules of the usual kinds, none matching the benchmark's mail.
const RULES: &str = r#"
[[acl]]
action = "whitelist"
addr = ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32", "203.0.113.7"]
[[acl]]
action = "blacklist"
from = ["/^(offers|promo|deals)[0-9]*@/", "spam.example", "@bulk.example"]
[[acl]]
action = "blacklist"
helo = ["/^(localhost|ylmf-pc|user)$/"]
[[acl]]
action = "whitelist"
rcpt = ["postmaster@", "hostmaster@example.net", "@lists.example.net"]
[[acl]]
action = "greylist"
rcptcount = "> 50"
delay = "1h"
[[acl]]
action = "whitelist"
domain = ["google.com", "outlook.com", '/^mail-[a-z0-9-]+\.example\.com$/']
[[acl]]
action = "whitelist"
auth = ["/./"]
[[acl]]
action = "whitelist"
macro = [{ name = "{daemon_name}", value = "ORIGINATING" }]
[[acl]]
action = "greylist"
rcpt = ["sales@example.net"]
not = { addr = ["10.0.0.0/8"] }
delay = "1h"
[[acl]]
action = "blacklist"
from = ['/@[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/']
"#;

fn make_engine(store: &Arc<dyn Store>, cache_entries: usize, acl: &str) -> Engine {
    let mut config = Config::parse(acl, Path::new("bench.toml")).unwrap();
    config.store.cache_entries = cache_entries;
    Engine::new(
        &config,
        Path::new("bench.toml"),
        Arc::clone(store),
        Arc::new(SystemClock),
        "bench.example",
    )
    .unwrap()
}

fn known(engine: &Engine, rt: &tokio::runtime::Runtime, rcpts: &[String], n: &mut u32) {
    rt.block_on(async {
        for _ in 0..BATCH {
            *n = (*n + 1) % KNOWN;
            let ctx = RcptContext {
                client_addr: Some(ip(*n)),
                sender: "<sender@example.org>",
                recipient: &rcpts[*n as usize],
                ..RcptContext::default()
            };
            let out = engine.check_rcpt(&ctx).await;
            debug_assert_eq!(out.action, Action::Continue);
            black_box(out);
        }
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("bench.redb")).unwrap());
    // The daemon's default: a read cache of 100,000 auto-whitelisted tuples.
    let engine = make_engine(&store, Config::default().store.cache_entries, "");
    let uncached = make_engine(&store, 0, "");
    let with_rules = make_engine(&store, Config::default().store.cache_entries, RULES);
    let now = greylist_filter::clock::Clock::now(&SystemClock);
    let config = Config::default();
    rt.block_on(async {
        for i in 0..KNOWN {
            let key = Key::from_raw(
                ip(i),
                "sender@example.org",
                &rcpt(i),
                config.greylist.ipv4_prefix,
                config.greylist.ipv6_prefix,
            );
            let rec = TupleRecord {
                state: TupleState::Passed,
                first_seen: now - 600,
                passed_at: now - 300,
                last_seen: now - 10,
                expires: now + 30 * 86_400,
                attempts: 1,
                passes: 1,
            };
            // Staged and group-committed (a durable put per record would fsync each).
            let w = Updates {
                tuple: Some(TupleWrite {
                    record: rec,
                    durability: Durability::Lazy,
                }),
                host: None,
            };
            store.apply(&key, &w).await.unwrap();
        }
        store.flush().await.unwrap();
    });
    let rcpts: Vec<String> = (0..KNOWN).map(rcpt).collect();

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(BATCH));
    let mut n = 0u32;
    g.bench_function("auto_whitelisted", |b| {
        b.iter(|| known(&engine, &rt, &rcpts, &mut n));
    });
    // The same lookups straight from redb (cache off), for comparison.
    g.bench_function("auto_whitelisted_uncached", |b| {
        b.iter(|| known(&uncached, &rt, &rcpts, &mut n));
    });
    g.bench_function("auto_whitelisted_10_acl_rules", |b| {
        b.iter(|| known(&with_rules, &rt, &rcpts, &mut n));
    });

    let mut fresh = 0u64;
    g.bench_function("new_tuples", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    fresh += 1;
                    let r = format!("new{fresh}@example.net");
                    let ctx = RcptContext {
                        client_addr: Some(ip((fresh % 50_000) as u32 + KNOWN)),
                        sender: "<spammer@example.biz>",
                        recipient: &r,
                        ..RcptContext::default()
                    };
                    let out = engine.check_rcpt(&ctx).await;
                    debug_assert!(matches!(out.action, Action::Tempfail(_)));
                    black_box(out);
                }
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
