//! Migration from milter-greylist: a realistic greylist.conf and dump.

use std::path::Path;
use std::sync::Arc;

use greylist_filter::acl::{AclAction, AclSet, Facts, Matcher};
use greylist_filter::config::Config;
use greylist_filter::import::{DumpKind, ImportWarning, import_conf, import_db, import_into};
use greylist_filter::policy::Params;
use greylist_filter::record::TupleState;
use greylist_filter::store::{MemoryStore, Store};
use greylist_filter::tuple::{Key, Network};

const CONF: &str = include_str!("data/greylist.conf");
const DUMP: &str = include_str!("data/greylist.db");

/// Imports `conf`; the TOML must parse with the daemon's own parser.
fn import(conf: &str) -> (Config, Vec<ImportWarning>) {
    let r = import_conf(conf);
    let c = Config::parse(&r.toml, Path::new("imported.toml"))
        .unwrap_or_else(|e| panic!("{e:?}\n{}", r.toml));
    (c, r.warnings)
}

/// The 1-based line of the sample that starts with `needle`.
fn line_of(needle: &str) -> usize {
    CONF.lines()
        .position(|l| l.starts_with(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle} not in sample"))
}

/// The warnings of `line`.
fn warnings_of(w: &[ImportWarning], line: usize) -> Vec<&str> {
    w.iter()
        .filter(|w| w.line == line)
        .map(|w| w.message.as_str())
        .collect()
}

/// The texts of a clause's entries (`/regex/` for a regular expression).
fn texts(m: &[Matcher]) -> Vec<String> {
    m.iter()
        .map(|m| match m {
            Matcher::Literal(l) => l.clone(),
            Matcher::Regex(p) => format!("/{}/", p.0.as_str()),
        })
        .collect()
}

fn nets(c: &[greylist_filter::config::Cidr]) -> Vec<String> {
    c.iter().map(|n| n.0.to_string()).collect()
}

/// The rule that decides for one recipient (no DNS): its name and action.
async fn decide(
    set: &AclSet,
    ip: &str,
    sender: &str,
    rcpt: &str,
    rcpt_count: u64,
) -> Option<(String, AclAction)> {
    let f = Facts {
        client_ip: ip.parse().unwrap(),
        client_name: None,
        helo: None,
        sender,
        recipient: rcpt,
        auth: None,
        macros: &[],
        rcpt_count,
    };
    let out = set.evaluate(&f, None).await;
    out.rule.map(|r| (r.name.clone(), r.action))
}

#[test]
fn conf_translates_to_valid_toml() {
    let (c, _) = import(CONF);
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
    assert!(
        !c.whitelist.authenticated,
        "an auth clause turns off the authenticated bypass, as in milter-greylist"
    );
    // racl lines are rules now, not [whitelist] entries.
    assert!(c.whitelist.networks.is_empty() && c.whitelist.senders.is_empty());

    let a = &c.acl;
    assert_eq!(a.len(), 20, "{a:#?}");
    assert_eq!(
        nets(&a[0].addr),
        ["127.0.0.0/8", "10.0.0.0/8", "192.0.2.0/24"]
    );
    assert_eq!(
        nets(&a[1].addr),
        ["12.5.136.141/32", "64.12.137.0/24", "66.94.237.0/24"]
    );
    assert_eq!(a[2].name.as_deref(), Some("office"));
    assert_eq!(nets(&a[2].addr), ["198.51.100.7/32"]);
    assert_eq!(texts(&a[3].domain), ["mta.example.net"]);
    assert_eq!(texts(&a[4].from), [r"/^newsletter@.*\.example\.com$/"]);
    assert_eq!(texts(&a[5].from), ["billing@example.org"]);
    assert_eq!(
        texts(&a[6].from),
        ["friend@example.org", "@partner.example"]
    );
    assert_eq!(texts(&a[7].rcpt), ["postmaster@example.com"]);
    assert_eq!(texts(&a[8].rcpt), ["/^abuse@/"]);
    assert!(a[..9].iter().all(|r| r.action == AclAction::Whitelist));

    // continue dnsrbl "spamhaus" flushaddr nolog
    assert_eq!(a[9].action, AclAction::Continue);
    assert_eq!(a[9].dnsrbl, ["zen.spamhaus.org"]);
    assert!(a[9].flushaddr && a[9].nolog);
    // "spammers" blacklist dnsrbl "spamhaus" not list "friends" code ecode msg
    let r = &a[10];
    assert_eq!(
        (r.name.as_deref(), r.action),
        (Some("spammers"), AclAction::Blacklist)
    );
    let not = r.not.as_ref().unwrap();
    assert_eq!(texts(&not.from), ["friend@example.org", "@partner.example"]);
    assert_eq!(
        (r.code, r.ecode.as_deref(), r.msg.as_deref()),
        (Some(550), Some("5.7.1"), Some("Rejected: %i is listed"))
    );
    assert_eq!(a[11].rcptcount.unwrap().to_string(), ">= 25");
    assert_eq!(a[12].macros[0].name, "{daemon_name}");
    assert!(matches!(&a[12].macros[0].value, Some(Matcher::Regex(p)) if p.0.as_str() == "^ORIG"));
    assert_eq!(
        a[13].macros[0].value,
        Some(Matcher::Literal("FORGED".into()))
    );
    assert_eq!(a[13].delay.map(|d| d.0), Some(3600));
    assert_eq!(a[14].dnsrbl, ["dnsbl.sorbs.net"]);
    // list "dialup" (a domain list with a regex) not sm_macro "no auth" (unset)
    assert_eq!(
        texts(&a[15].domain),
        [r"/^dsl-.*\.example\.net$/", "dyn.example.net"]
    );
    let not = a[15].not.as_ref().unwrap();
    assert!(not.macros[0].unset && not.macros[0].name == "{auth_type}");
    assert_eq!(a[16].dnsrbl, ["bl.example.org"]);
    // greylist rcpt sales@ not auth /./ (report dropped)
    assert_eq!(texts(&a[17].rcpt), ["sales@example.com"]);
    assert_eq!(texts(&a[17].not.as_ref().unwrap().auth), ["/./"]);
    assert_eq!(
        (a[18].delay.map(|d| d.0), a[18].autowhite.map(|d| d.0)),
        (Some(1800), Some(86_400))
    );
    assert_eq!(
        texts(&a[18].rcpt),
        ["user1@example.com", "user2@example.com"]
    );
    // `racl greylist default` is kept, last, as written.
    let last = c.acl.last().unwrap();
    assert!(last.default && last.action == AclAction::Greylist);
}

#[test]
fn conf_warns_once_per_unsupported_line() {
    let (_, w) = import(CONF);
    for needle in [
        "pidfile",
        "dumpfile",
        "dumpfreq",
        "user",
        "nospf",
        "lazyaw",
        "racl whitelist from /^newsletter",
        "racl whitelist rcpt /^abuse",
        "racl \"spammers\"",
        "racl greylist dnsrbl \"any answer\"",
        "racl whitelist spf",
        "racl whitelist time",
        "racl greylist rcpt sales",
        "dacl",
    ] {
        let l = line_of(needle);
        assert_eq!(
            warnings_of(&w, l).len(),
            1,
            "one warning for line {l} ({needle}): {w:?}"
        );
    }
    // Translated lines, definitions and "racl greylist default" produce no warning.
    for needle in [
        "greylist 15m",
        "subnetmatch /24",
        "quiet",
        "dnsrbl \"SORBS DUN\"",
        "sm_macro \"maybe_forged\"",
        "list \"my network\"",
        "racl whitelist list \"my network\"",
        "racl \"office\" whitelist addr",
        "racl continue",
        "racl blacklist rcptcount",
        "racl greylist list \"dialup\"",
        "racl greylist list \"grey users\"",
        "racl greylist default",
    ] {
        assert!(
            warnings_of(&w, line_of(needle)).is_empty(),
            "{needle}: {w:?}"
        );
    }
    assert!(w.iter().all(|w| !w.message.is_empty()));
    assert!(
        w.windows(2).all(|p| p[0].line <= p[1].line),
        "in line order"
    );
    let msg = |needle: &str| warnings_of(&w, line_of(needle)).join(" ");
    assert!(msg("racl whitelist spf").contains("`spf` is not supported"));
    assert!(msg("racl whitelist time").contains("`time` is not supported"));
    assert!(msg("racl \"spammers\"").contains("%i"));
    assert!(msg("racl greylist rcpt sales").contains("`report` is not supported"));
    assert!(msg("racl greylist dnsrbl \"any answer\"").contains("0.0.0.0/0"));
    assert!(msg("racl whitelist rcpt /^abuse").contains("angle brackets"));
}

#[tokio::test]
async fn imported_rules_decide_in_order() {
    let (c, _) = import(CONF);
    let set = AclSet::new(&c.acl);
    let d = |ip, from, rcpt, n| decide(&set, ip, from, rcpt, n);
    let wl = AclAction::Whitelist;
    // The own network is whitelisted first, whatever else matches later.
    assert_eq!(
        d("192.0.2.10", "x@example.net", "user1@example.com", 30).await,
        Some(("acl#1".into(), wl))
    );
    // A named rule.
    assert_eq!(
        d("198.51.100.7", "x@example.net", "user1@example.com", 1).await,
        Some(("office".into(), wl))
    );
    // postmaster@ is whitelisted before the recipient-count blacklist.
    assert_eq!(
        d("203.0.113.5", "x@example.net", "postmaster@example.com", 30).await,
        Some(("acl#8".into(), wl))
    );
    // Too many recipients: rejected by the rcptcount rule, with its text.
    let set2 = &set;
    let f = Facts {
        client_ip: "203.0.113.5".parse().unwrap(),
        client_name: None,
        helo: None,
        sender: "x@example.net",
        recipient: "someone@example.com",
        auth: None,
        macros: &[],
        rcpt_count: 25,
    };
    let out = set2.evaluate(&f, None).await;
    let r = out.rule.unwrap();
    assert_eq!(
        (r.name.as_str(), r.action),
        ("acl#12", AclAction::Blacklist)
    );
    assert_eq!(r.msg.as_deref(), Some("No more than 25 recipients, please"));
    // A "grey users" recipient: greylisted with that rule's delay and auto-whitelist.
    let f = Facts {
        recipient: "user1@example.com",
        rcpt_count: 1,
        ..f
    };
    let out = set.evaluate(&f, None).await;
    let r = out.rule.unwrap();
    assert_eq!((r.name.as_str(), r.action), ("acl#19", AclAction::Greylist));
    assert_eq!((r.delay, r.autowhite), (Some(1800), Some(86_400)));
    // Anyone else: the final greylist default.
    assert_eq!(
        d("203.0.113.5", "x@example.net", "bob@example.com", 1).await,
        Some(("acl#20".into(), AclAction::Greylist))
    );
}

#[test]
fn conf_edge_cases() {
    let (c, w) = import(
        "racl whitelist default\nracl whitelist addr 192.0.2.1 rcpt x@y.example\nracl whitelist list \"nope\"\ngreylist soon\nsubnetmatch /40\nracl blacklist addr 1.2.3.4\n",
    );
    assert_eq!(
        w.iter().map(|w| w.line).collect::<Vec<_>>(),
        vec![3, 4, 5],
        "{w:?}"
    );
    assert!(w[0].message.contains("not defined before use"), "{w:?}");
    // Rules keep their order, even after a default one (unreachable, as in milter-greylist).
    let actions: Vec<AclAction> = c.acl.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [
            AclAction::Whitelist,
            AclAction::Whitelist,
            AclAction::Blacklist
        ]
    );
    assert!(c.acl[0].default);
    // Values with quotes and backslashes survive the TOML round trip.
    let (c, w) = import("racl whitelist rcpt /^a\\.b\"c@/\n");
    assert_eq!(texts(&c.acl[0].rcpt), ["/^a\\.b\"c@/"], "{w:?}");
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
