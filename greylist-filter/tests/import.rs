//! Migration from milter-greylist: a realistic greylist.conf and dump.

use std::path::Path;
use std::sync::Arc;

use greylist_filter::config::Config;
use greylist_filter::import::{DumpKind, import_conf, import_db, import_into};
use greylist_filter::policy::Params;
use greylist_filter::record::TupleState;
use greylist_filter::store::{MemoryStore, Store};
use greylist_filter::tuple::{Key, Network};

const CONF: &str = include_str!("data/greylist.conf");
const DUMP: &str = include_str!("data/greylist.db");

#[test]
fn conf_translates_to_valid_toml() {
    let r = import_conf(CONF);
    let c = Config::parse(&r.toml, Path::new("imported.toml"))
        .unwrap_or_else(|e| panic!("{e:?}\n{}", r.toml));
    assert_eq!(c.greylist.delay.0, 15 * 60);
    assert_eq!(c.greylist.auto_whitelist.0, 3 * 86_400);
    assert_eq!(
        c.greylist.retry_window.0,
        15 * 60 + 5 * 86_400,
        "timeout counts after the delay"
    );
    assert_eq!((c.greylist.ipv4_prefix, c.greylist.ipv6_prefix), (24, 64));
    assert_eq!(
        c.milter.socket,
        "unix:/var/run/milter-greylist/milter-greylist.sock"
    );
    assert_eq!(c.milter.mode(), Some(0o660));

    let nets: Vec<String> = c
        .whitelist
        .networks
        .iter()
        .map(|n| n.0.to_string())
        .collect();
    for want in [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "192.0.2.0/24",
        "12.5.136.141/32",
        "64.12.137.0/24",
        "66.94.237.0/24",
        "198.51.100.7/32",
    ] {
        assert!(nets.contains(&want.to_owned()), "{want} in {nets:?}");
    }
    assert_eq!(c.whitelist.hosts, vec!["mta.example.net"]);
    assert_eq!(
        c.whitelist.senders,
        vec![
            "billing@example.org",
            "friend@example.org",
            "@partner.example"
        ]
    );
    assert_eq!(c.whitelist.recipients, vec!["postmaster@example.com"]);
    assert_eq!(c.whitelist.sender_regex.len(), 1);
    assert!(
        c.whitelist.sender_regex[0]
            .0
            .is_match("newsletter@mail.example.com")
    );
    assert!(
        c.whitelist.recipient_regex[0]
            .0
            .is_match("abuse@example.com")
    );
}

#[test]
fn conf_warns_once_per_unsupported_line() {
    let r = import_conf(CONF);
    let lines: Vec<usize> = r.warnings.iter().map(|w| w.line).collect();
    let line_of = |needle: &str| {
        CONF.lines()
            .position(|l| l.starts_with(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{needle} not in sample"))
    };
    for needle in [
        "pidfile",
        "dumpfile",
        "dumpfreq",
        "user",
        "nospf",
        "lazyaw",
        "racl whitelist dnsrbl",
        "racl whitelist spf",
        "racl greylist list",
    ] {
        let l = line_of(needle);
        assert_eq!(
            lines.iter().filter(|&&x| x == l).count(),
            1,
            "one warning for line {l} ({needle}): {:?}",
            r.warnings
        );
    }
    // Translated lines and "racl greylist default" produce no warning.
    for needle in [
        "greylist 15m",
        "subnetmatch /24",
        "racl whitelist addr",
        "racl greylist default",
        "quiet",
    ] {
        assert!(
            !lines.contains(&line_of(needle)),
            "{needle}: {:?}",
            r.warnings
        );
    }
    assert!(r.warnings.iter().all(|w| !w.message.is_empty()));
}

#[test]
fn conf_edge_cases() {
    let r = import_conf(
        "racl whitelist default\nracl whitelist addr 192.0.2.1 rcpt x@y\nracl whitelist list \"nope\"\ngreylist soon\nsubnetmatch /40\nracl blacklist addr 1.2.3.4\n",
    );
    assert_eq!(r.warnings.len(), 6, "{:?}", r.warnings);
    assert_eq!(
        r.warnings.iter().map(|w| w.line).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(Config::parse(&r.toml, Path::new("x")).is_ok(), "{}", r.toml);
    // Values with quotes and backslashes survive the TOML round trip.
    let r = import_conf("racl whitelist rcpt /^a\\.b\"c@/\n");
    let c = Config::parse(&r.toml, Path::new("x")).unwrap_or_else(|e| panic!("{e:?}\n{}", r.toml));
    assert_eq!(c.whitelist.recipient_regex[0].0.as_str(), "^a\\.b\"c@");
}

#[test]
fn dump_is_read_with_warnings_for_bad_lines() {
    let d = import_db(DUMP);
    assert_eq!(d.records.len(), 5);
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    let bad: Vec<usize> = d.warnings.iter().map(|w| w.line).collect();
    assert_eq!(bad, vec![20, 21]);
    let r = &d.records[1];
    assert_eq!(r.ip.to_string(), "2001:db8::17");
    assert_eq!(r.from, "prvs=1234abcd=alice@example.org");
    assert_eq!(r.rcpt, "carol@example.net");
    assert_eq!((r.time, r.kind), (1_700_001_200, DumpKind::Pending));
    assert_eq!(d.records[2].from, "");
    assert_eq!(d.records[2].kind, DumpKind::AutoWhitelisted);
    assert_eq!(d.records[4].kind, DumpKind::Tarpit);
}

#[tokio::test]
async fn dump_imports_into_store() {
    let store = Arc::new(MemoryStore::new());
    let d = import_db(DUMP);
    let p = Params::default();
    let n = import_into(store.as_ref(), &d, &p, 24, 64).await.unwrap();
    assert_eq!(n, 4, "tarpit entry skipped");
    let st = store.stats().await.unwrap();
    assert_eq!((st.tuples, st.pending), (4, 2));

    let net = Network::parse("192.0.2.0/24").unwrap();
    let rec = store
        .get(&Key::new(&net, "news@example.com", "bob@example.net"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, TupleState::Pending);
    assert_eq!(
        rec.first_seen + p.delay,
        1_700_000_900,
        "acceptable time kept"
    );

    let net = Network::parse("198.51.100.0/24").unwrap();
    let rec = store
        .get(&Key::new(&net, "<>", "postmaster@example.net"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, TupleState::Passed);
    assert_eq!(rec.expires, 1_700_250_000);

    // The BATV tag is normalised away in the imported key.
    let net = Network::parse("2001:db8::/64").unwrap();
    assert!(
        store
            .get(&Key::new(&net, "alice@example.org", "carol@example.net"))
            .await
            .unwrap()
            .is_some()
    );
}
