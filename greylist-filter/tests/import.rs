//! Migration from milter-greylist: a realistic greylist.conf and dump.

use std::path::Path;
use std::sync::Arc;

use greylist_filter::acl::{AclAction, AclSet, Facts, Lookups, Matcher, SpfOutcome};
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
        rcpt_count,
        ..Facts::new(ip.parse().unwrap(), sender, rcpt)
    };
    let out = set.evaluate(&f, Lookups::default()).await;
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
    // The definition's answers carry over: 127.0.0.2/31 is 127.0.0.2 and 127.0.0.3.
    assert_eq!(a[9].dnsrbl, ["zen.spamhaus.org 127.0.0.2/31"]);
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
    assert_eq!(a[14].dnsrbl, ["dnsbl.sorbs.net 127.0.0.10/32"]);
    // list "dialup" (a domain list with a regex) not sm_macro "no auth" (unset)
    assert_eq!(
        texts(&a[15].domain),
        [r"/^dsl-.*\.example\.net$/", "dyn.example.net"]
    );
    let not = a[15].not.as_ref().unwrap();
    assert!(not.macros[0].unset && not.macros[0].name == "{auth_type}");
    assert_eq!(a[16].dnsrbl, ["bl.example.org 0.0.0.0/0"]);
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
        "racl greylist dnsrbl \"any answer\"",
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
    assert!(msg("racl whitelist spf").contains("spf self"));
    assert!(msg("racl whitelist time").contains("`time` is not supported"));
    assert!(msg("racl \"spammers\"").contains("%i"));
    assert!(msg("racl greylist rcpt sales").contains("`report` is not supported"));
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
        rcpt_count: 25,
        ..Facts::new(
            "203.0.113.5".parse().unwrap(),
            "x@example.net",
            "someone@example.com",
        )
    };
    let out = set2.evaluate(&f, Lookups::default()).await;
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
    let out = set.evaluate(&f, Lookups::default()).await;
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
fn each_action_and_an_id() {
    let (c, w) = import(
        "racl whitelist addr 192.0.2.1\n\
         racl greylist addr 192.0.2.2\n\
         racl blacklist addr 192.0.2.3\n\
         racl continue addr 192.0.2.4 flushaddr\n\
         racl \"my id\" whitelist addr 192.0.2.5\n\
         acl greylist addr 192.0.2.6\n\
         RACL Whitelist: ADDR 192.0.2.7\n",
    );
    assert!(w.is_empty(), "{w:?}");
    let actions: Vec<AclAction> = c.acl.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [
            AclAction::Whitelist,
            AclAction::Greylist,
            AclAction::Blacklist,
            AclAction::Continue,
            AclAction::Whitelist,
            AclAction::Greylist,
            AclAction::Whitelist,
        ]
    );
    assert_eq!(c.acl[4].name.as_deref(), Some("my id"));
    assert!(
        c.acl
            .iter()
            .enumerate()
            .all(|(i, r)| i == 4 || r.name.is_none())
    );
}

#[test]
fn an_id_used_twice_is_made_unique() {
    let (c, w) = import(
        "racl \"a\" whitelist addr 192.0.2.1\nracl \"a\" whitelist addr 192.0.2.2\nracl \"acl#4\" whitelist addr 192.0.2.3\nracl greylist default\n",
    );
    let names: Vec<Option<&str>> = c.acl.iter().map(|r| r.name.as_deref()).collect();
    assert_eq!(
        names,
        [Some("a"), Some("a (line 2)"), Some("acl#4 (line 3)"), None]
    );
    assert_eq!(
        w.iter().map(|w| w.line).collect::<Vec<_>>(),
        [2, 3],
        "{w:?}"
    );
}

#[tokio::test]
async fn clauses_of_a_rule_must_all_match() {
    let (c, w) = import(
        "racl whitelist addr 192.0.2.0/24 from friend@example.org rcpt /^sales@/\nracl greylist default\n",
    );
    let r = &c.acl[0];
    assert_eq!(nets(&r.addr), ["192.0.2.0/24"]);
    assert_eq!(texts(&r.from), ["friend@example.org"]);
    assert_eq!(texts(&r.rcpt), ["/^sales@/"]);
    assert_eq!(w.len(), 1, "the anchored rcpt regex: {w:?}");
    let set = AclSet::new(&c.acl);
    let wl = Some(("acl#1".to_owned(), AclAction::Whitelist));
    let gl = Some(("acl#2".to_owned(), AclAction::Greylist));
    assert_eq!(
        decide(
            &set,
            "192.0.2.9",
            "friend@example.org",
            "sales@example.com",
            1
        )
        .await,
        wl
    );
    assert_eq!(
        decide(
            &set,
            "198.51.100.9",
            "friend@example.org",
            "sales@example.com",
            1
        )
        .await,
        gl
    );
    assert_eq!(
        decide(
            &set,
            "192.0.2.9",
            "other@example.org",
            "sales@example.com",
            1
        )
        .await,
        gl
    );
    assert_eq!(
        decide(
            &set,
            "192.0.2.9",
            "friend@example.org",
            "bob@example.com",
            1
        )
        .await,
        gl
    );
}

#[tokio::test]
async fn negated_clauses_go_to_the_not_table() {
    let (c, w) = import(
        "racl blacklist from /@spam\\.example>$/ not addr 10.0.0.0/8 not addr 192.0.2.0/24 ! rcpt postmaster@example.com no rcpt abuse@example.com\n",
    );
    assert_eq!(w.len(), 1, "the anchored regex: {w:?}");
    let r = &c.acl[0];
    assert_eq!(texts(&r.from), [r"/@spam\.example>$/"]);
    let not = r.not.as_ref().unwrap();
    assert_eq!(nets(&not.addr), ["10.0.0.0/8", "192.0.2.0/24"]);
    assert_eq!(
        texts(&not.rcpt),
        ["postmaster@example.com", "abuse@example.com"]
    );
    // `not` before `default`, twice, or at the end: not translated.
    for bad in [
        "racl whitelist not default\n",
        "racl whitelist not not addr 10.0.0.1\n",
        "racl whitelist addr 10.0.0.1 not\n",
    ] {
        let (c, w) = import(bad);
        assert!(c.acl.is_empty() && w.len() == 1, "{bad}: {w:?}");
    }
    // Two negated rcptcount clauses cannot be merged into one.
    let (c, w) = import("racl blacklist rcpt x@example.com not rcptcount > 5 not rcptcount < 2\n");
    assert!(
        c.acl.is_empty() && w[0].message.contains("rcptcount"),
        "{w:?}"
    );
    let set = AclSet::new(&[]);
    assert!(
        decide(&set, "10.0.0.1", "a@b.example", "c@d.example", 1)
            .await
            .is_none()
    );
}

#[test]
fn lists_expand_into_their_clause() {
    let (c, w) = import(
        "list \"nets\" addr { 192.0.2.0/24 2001:db8::/32 198.51.100.7 }\n\
         list \"senders\" from { friend@example.org \"@partner.example\" /^news@/ }\n\
         list \"rcpts\" rcpt { a@example.com b@example.com }\n\
         list \"hosts\" domain { mx.example.net /^mail[0-9]*\\.example\\.org$/ }\n\
         list \"helos\" helo { \"mx1.example.com\" }\n\
         list \"users\" auth { \"alice\" }\n\
         list \"countries\" geoip { \"FR\" }\n\
         racl whitelist list \"nets\"\n\
         racl whitelist list \"senders\" list \"rcpts\"\n\
         racl whitelist list \"hosts\" not list \"nets\"\n\
         racl whitelist list \"helos\" list \"users\"\n\
         racl whitelist list \"countries\"\n\
         racl whitelist addr 192.0.2.1 list \"nets\"\n",
    );
    assert_eq!(
        nets(&c.acl[0].addr),
        ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]
    );
    assert_eq!(
        texts(&c.acl[1].from),
        ["friend@example.org", "@partner.example", "/^news@/"]
    );
    assert_eq!(texts(&c.acl[1].rcpt), ["a@example.com", "b@example.com"]);
    assert_eq!(
        texts(&c.acl[2].domain),
        ["mx.example.net", r"/^mail[0-9]*\.example\.org$/"]
    );
    assert_eq!(nets(&c.acl[2].not.as_ref().unwrap().addr).len(), 3);
    assert_eq!(texts(&c.acl[3].helo), ["mx1.example.com"]);
    assert_eq!(texts(&c.acl[3].auth), ["alice"]);
    assert_eq!(c.acl.len(), 4);
    let lines: Vec<usize> = w.iter().map(|w| w.line).collect();
    assert_eq!(lines, [9, 12, 13], "{w:?}");
    assert!(w[1].message.contains("geoip list"), "{w:?}");
    assert!(w[2].message.contains("two addr clauses"), "{w:?}");
}

#[test]
fn dnsrbl_and_sm_macro_definitions() {
    let (c, w) = import(
        "dnsrbl \"SORBS DUN\" dnsbl.sorbs.net 127.0.0.10/32\n\
         dnsrbl \"quoted\" \"bl.example.org\" \"127.0.0.2\"\n\
         dnsrbl \"odd\" odd.example.org 10.0.0.1\n\
         sm_macro \"forged\" \"{client_resolve}\" \"FORGED\"\n\
         sm_macro \"orig\" \"{daemon_name}\" /^orig/\n\
         sm_macro \"no verify\" \"{verify}\" unset\n\
         list \"rbls\" dnsrbl { \"SORBS DUN\" \"quoted\" }\n\
         list \"macros\" sm_macro { \"forged\" \"orig\" }\n\
         racl greylist dnsrbl \"SORBS DUN\" delay 1h\n\
         racl greylist dnsrbl \"odd\"\n\
         racl greylist list \"rbls\"\n\
         racl whitelist sm_macro \"orig\" not sm_macro \"no verify\"\n\
         racl greylist list \"macros\"\n\
         racl greylist dnsrbl \"missing\"\n\
         racl greylist sm_macro \"missing\"\n",
    );
    assert_eq!(c.acl[0].dnsrbl, ["dnsbl.sorbs.net 127.0.0.10/32"]);
    assert_eq!(c.acl[1].dnsrbl, ["odd.example.org 10.0.0.1/32"]);
    assert_eq!(
        c.acl[2].dnsrbl,
        [
            "dnsbl.sorbs.net 127.0.0.10/32",
            "bl.example.org 127.0.0.2/32"
        ]
    );
    let m = &c.acl[3].macros[0];
    assert_eq!(m.name, "{daemon_name}");
    assert!(matches!(&m.value, Some(Matcher::Regex(p)) if p.0.is_match("ORIGINATING")));
    let n = &c.acl[3].not.as_ref().unwrap().macros[0];
    assert!(n.unset && n.value.is_none() && n.name == "{verify}");
    assert_eq!(c.acl[4].macros.len(), 2);
    assert_eq!(c.acl.len(), 5);
    let lines: Vec<usize> = w.iter().map(|w| w.line).collect();
    assert_eq!(lines, [14, 15], "{w:?}");
    assert!(w[0].message.contains("not defined"), "{w:?}");
    assert!(import_conf("dnsrbl \"x\" bl.example.org\n").warnings.len() == 1);
    assert!(import_conf("sm_macro \"x\" \"{j}\"\n").warnings.len() == 1);
}

#[test]
fn rcptcount_comparisons() {
    let (c, w) = import(
        "racl blacklist rcptcount >= 25\nracl blacklist rcptcount >10\nracl greylist rcptcount != 1 delay 1h\nracl whitelist rcptcount 3\n",
    );
    let cmp: Vec<String> = c
        .acl
        .iter()
        .map(|r| r.rcptcount.unwrap().to_string())
        .collect();
    assert_eq!(cmp, [">= 25", "> 10", "!= 1"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].line, 4);
}

#[test]
fn per_rule_values() {
    let (c, w) = import(
        "racl greylist rcpt a@example.com delay 1h autowhite 3d code \"451\" ecode \"4.7.1\" msg \"Come back later\" nolog\n\
         racl blacklist from spam@example.com code 554 ecode 5.7.1 msg \"No\" flushaddr\n\
         racl whitelist rcpt b@example.com delay 1h msg \"hi\"\n\
         racl greylist rcpt c@example.com code 550 delay 90\n\
         racl greylist rcpt d@example.com msg \"Retry %r from %i in %E\"\n\
         racl greylist rcpt e@example.com delay 1h delay 2h\n",
    );
    let r = &c.acl[0];
    assert_eq!(
        (r.delay.map(|d| d.0), r.autowhite.map(|d| d.0), r.code),
        (Some(3600), Some(3 * 86_400), Some(451))
    );
    assert_eq!(
        (r.ecode.as_deref(), r.msg.as_deref(), r.nolog, r.flushaddr),
        (Some("4.7.1"), Some("Come back later"), true, false)
    );
    let r = &c.acl[1];
    assert_eq!(
        (r.code, r.ecode.as_deref(), r.flushaddr),
        (Some(554), Some("5.7.1"), true)
    );
    // Values the action does not use, or of the wrong class, are dropped with a warning.
    let r = &c.acl[2];
    assert!(r.delay.is_none() && r.msg.is_none());
    let r = &c.acl[3];
    assert_eq!((r.code, r.delay.map(|d| d.0)), (None, Some(90)));
    // Format tokens are kept as written, with a warning.
    assert_eq!(c.acl[4].msg.as_deref(), Some("Retry %r from %i in %E"));
    assert_eq!(c.acl.len(), 5, "a value given twice: not translated");
    let lines: Vec<usize> = w.iter().map(|w| w.line).collect();
    assert_eq!(lines, [3, 4, 5, 6], "{w:?}");
    assert!(
        w[0].message.contains("delay only applies to greylist"),
        "{w:?}"
    );
    assert!(w[0].message.contains("msg only applies"), "{w:?}");
    assert!(w[1].message.contains("code 550"), "{w:?}");
    assert!(w[2].message.contains("%r, %i, %E"), "{w:?}");
    assert!(w[3].message.contains("given twice"), "{w:?}");
}

#[test]
fn a_delay_the_retry_window_cannot_hold_is_dropped() {
    let (c, w) = import("greylist 10m\ntimeout 1h\nracl greylist rcpt a@example.com delay 2h\n");
    assert!(c.acl[0].delay.is_none());
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("retry window"), "{w:?}");
}

#[test]
fn a_repeated_clause_is_not_translated() {
    // AND in milter-greylist, OR within one of our clauses.
    for conf in [
        "racl whitelist from a@example.com from b@example.com\n",
        "racl whitelist rcpt a@example.com rcpt b@example.com\n",
        "list \"l\" rcpt { a@example.com }\nracl whitelist rcpt b@example.com list \"l\"\n",
        "dnsrbl \"a\" a.example 127.0.0.2\ndnsrbl \"b\" b.example 127.0.0.2\nracl blacklist dnsrbl \"a\" dnsrbl \"b\"\n",
    ] {
        let (c, w) = import(conf);
        assert!(c.acl.is_empty(), "{conf}");
        assert_eq!(w.len(), 1, "{conf}: {w:?}");
        assert!(w[0].message.contains("clauses"), "{w:?}");
    }
}

#[test]
fn spf_results() {
    let (c, w) = import(
        "racl whitelist spf pass\nracl blacklist spf FAIL code 550\n\
         racl greylist not spf pass delay 1h\nracl greylist spf error\nracl greylist spf unknown\n\
         racl whitelist spf pass spf neutral\n",
    );
    let spf: Vec<Vec<SpfOutcome>> = c
        .acl
        .iter()
        .map(|r| {
            r.spf
                .iter()
                .chain(r.not.iter().flat_map(|n| &n.spf))
                .copied()
                .collect()
        })
        .collect();
    assert_eq!(
        spf,
        [
            vec![SpfOutcome::Pass],
            vec![SpfOutcome::Fail],
            vec![SpfOutcome::Pass],
            vec![SpfOutcome::Temperror],
            vec![SpfOutcome::Permerror],
        ]
    );
    assert!(c.acl[2].spf.is_empty() && c.acl[2].not.is_some());
    // Two spf clauses must both hold in milter-greylist: not translated.
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].line, 6);
}

#[test]
fn unsupported_clauses_drop_the_rule() {
    for clause in [
        "time \"* 8-16 * * 1-5\"",
        "spf self",
        "geoip \"FR\"",
        "p0f \"Windows\"",
        "mx 192.0.2.0/24",
        "ratelimit \"r\"",
        "urlcheck \"u\"",
        "ldapcheck \"l\"",
        "header /X-Spam/",
        "body /viagra/",
        "msgsize > 10",
        "dkim pass",
        "spamd",
        "$dnsrbl \"x\"",
        "set $p=\"1\"",
        "log \"x\"",
        "nsupdate \"n\"",
        "tarpit 10s",
        "not spf self",
        "spf maybe",
    ] {
        let conf = format!("racl whitelist rcpt a@example.com {clause}\nracl greylist default\n");
        let (c, w) = import(&conf);
        assert_eq!(c.acl.len(), 1, "{clause}: only the default rule");
        assert_eq!(w.len(), 1, "{clause}: {w:?}");
        assert_eq!(w[0].line, 1);
        assert!(w[0].message.contains("not translated"), "{w:?}");
    }
}

#[test]
fn unsupported_values_are_dropped_with_a_warning() {
    for value in [
        "report \"Delayed %E\"",
        "addheader \"X-Foo: bar\"",
        "addheader \"X-Foo: bar\",2",
        "addfooter \"footer\"",
        "subjtag \"[SPAM]\"",
        "maxpeek 1000",
    ] {
        let conf = format!("racl greylist rcpt a@example.com {value} delay 1h\n");
        let (c, w) = import(&conf);
        assert_eq!(c.acl.len(), 1, "{value}");
        assert_eq!(c.acl[0].delay.map(|d| d.0), Some(3600), "{value}");
        assert_eq!(w.len(), 1, "{value}: {w:?}");
        assert!(w[0].message.contains("is not supported, dropped"), "{w:?}");
    }
}

#[test]
fn dacl_lines_warn() {
    let (c, w) = import("dacl blacklist msgsize > 10M\ndacl greylist spamd > 5 delay 2h\n");
    assert!(c.acl.is_empty());
    assert_eq!(w.iter().map(|w| w.line).collect::<Vec<_>>(), [1, 2]);
    assert!(w[0].message.starts_with("dacl"));
}

#[test]
fn regexes_are_carried_over() {
    let (c, w) = import(
        "racl whitelist domain /^mx[0-9]*\\.example\\.net$/\n\
         racl whitelist helo /^mail\\./\n\
         racl whitelist from /@partner\\.example/\n\
         racl whitelist rcpt /(sales|info)@/\n\
         extendedregex\n\
         racl whitelist rcpt /(sales|info)@/\n\
         racl whitelist auth /^[a-z]+$/\n",
    );
    assert_eq!(texts(&c.acl[0].domain), [r"/^mx[0-9]*\.example\.net$/"]);
    assert_eq!(texts(&c.acl[1].helo), [r"/^mail\./"]);
    assert_eq!(texts(&c.acl[2].from), [r"/@partner\.example/"]);
    // Basic syntax before `extendedregex`: the parentheses and bar are characters.
    assert_eq!(texts(&c.acl[3].rcpt), [r"/\(sales\|info\)@/"]);
    assert_eq!(texts(&c.acl[4].rcpt), ["/(sales|info)@/"]);
    assert_eq!(texts(&c.acl[5].auth), ["/^[a-z]+$/"]);
    let lines: Vec<usize> = w.iter().map(|w| w.line).collect();
    assert_eq!(lines, [4], "{w:?}");
    assert!(w[0].message.contains("basic expression"), "{w:?}");
}

#[test]
fn a_regex_we_cannot_compile_drops_the_rule() {
    for conf in [
        "racl whitelist from /\\(a\\)\\1/\n",
        "extendedregex\nracl whitelist from /a{3,2}/\n",
        "racl whitelist rcpt /[[.space.]]/\n",
        "racl whitelist rcpt /a\\+/\n",
        "list \"l\" from { /x\\1/ }\nracl whitelist list \"l\"\n",
    ] {
        let (c, w) = import(conf);
        assert!(c.acl.is_empty(), "{conf}");
        assert_eq!(w.len(), 1, "{conf}: {w:?}");
        assert!(w[0].message.contains("not translated"), "{w:?}");
    }
}

#[test]
fn literals_that_are_not_addresses_become_equivalent_regexes() {
    let (c, w) = import(
        "racl whitelist from <Friend@Example.org>\n\
         racl whitelist rcpt .example.com\n\
         racl whitelist rcpt postmaster\n\
         racl whitelist from \"john doe\"\n\
         racl whitelist domain -dsl.example.net\n\
         racl whitelist domain example.net\n\
         racl whitelist rcpt user@\n",
    );
    assert_eq!(texts(&c.acl[0].from), ["Friend@Example.org"]);
    assert_eq!(texts(&c.acl[1].rcpt), [r"/\.example\.com/"]);
    assert_eq!(texts(&c.acl[2].rcpt), ["/postmaster/"]);
    assert_eq!(texts(&c.acl[3].from), [r"/john doe/"]);
    assert_eq!(texts(&c.acl[4].domain), [r"/\-dsl\.example\.net$/"]);
    assert_eq!(texts(&c.acl[5].domain), ["example.net"]);
    assert_eq!(texts(&c.acl[6].rcpt), ["user@"]);
    let lines: Vec<usize> = w.iter().map(|w| w.line).collect();
    assert_eq!(lines, [2, 3, 4, 5], "{w:?}");
    assert!(w[0].message.contains("substring"), "{w:?}");
    assert!(w[3].message.contains("suffix"), "{w:?}");
    // With domainexact, milter-greylist matches on label boundaries too.
    let (c, _) = import("domainexact\nracl whitelist domain -dsl.example.net\n");
    assert_eq!(texts(&c.acl[0].domain), [r"/(^|\.)\-dsl\.example\.net$/"]);
}

#[test]
fn tls_requires_a_verified_certificate() {
    let (c, w) = import(
        "racl whitelist tls \"/CN=relay.example.net\"\n\
         racl whitelist tls /example/ sm_macro \"m\"\n\
         sm_macro \"m\" \"{daemon_name}\" \"MTA\"\n\
         racl whitelist tls /example/ sm_macro \"m\"\n\
         racl greylist rcpt a@example.com not tls /example/\n",
    );
    let r = &c.acl[0];
    assert_eq!(texts(&r.tls), ["/CN=relay.example.net"]);
    assert_eq!(r.macros[0].name, "{verify}");
    assert_eq!(r.macros[0].value, Some(Matcher::Literal("OK".into())));
    assert_eq!(c.acl.len(), 1);
    assert_eq!(
        w.iter().map(|w| w.line).collect::<Vec<_>>(),
        [2, 4, 5],
        "{w:?}"
    );
    assert!(!c.whitelist.authenticated);
    let (c, _) = import("racl whitelist addr 192.0.2.1\n");
    assert!(
        c.whitelist.authenticated,
        "no auth/tls clause: default kept"
    );
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

/// Line starts for the property below: mostly access lists.
const PREFIXES: &[&str] = &[
    "racl whitelist",
    "racl greylist",
    "racl blacklist",
    "racl continue",
    "racl \"id\" greylist",
    "racl \"id\" whitelist",
    "acl whitelist",
    "",
];

/// Clauses and values of greylist.conf, mostly good, some bad, for the property below.
const WORDS: &[&str] = &[
    "default",
    "addr 192.0.2.0/24",
    "not addr 2001:db8::/32",
    "addr 10.0.0.300",
    "domain example.com",
    "domain -bad.example",
    "not domain /^dsl-/",
    "helo /a\\(b\\)/",
    "helo mx.example.org",
    "from user@example.com",
    "from user@",
    "from @example.net",
    "from /[[:alpha:]]x/",
    "rcpt /^a+b/",
    "rcpt a b",
    "not rcpt postmaster@example.com",
    "auth alice",
    "auth /./",
    "tls /CN=x/",
    "not tls \"CN=y\"",
    "dnsrbl \"R\"",
    "dnsrbl \"nope\"",
    "sm_macro \"M\"",
    "not sm_macro \"M\"",
    "list \"L\"",
    "list \"R\"",
    "rcptcount > 3",
    "rcptcount >=10",
    "rcptcount != x",
    "delay 1h",
    "delay 30m",
    "delay 9d",
    "autowhite 5d",
    "code 451",
    "code 550",
    "ecode 4.7.1",
    "ecode 5.7.1",
    "msg \"Go %r\"",
    "msg \"Later\"",
    "nolog",
    "flushaddr",
    "report \"x\"",
    "addheader \"X-A: b\",2",
    "time \"* * * * *\"",
    "spf pass",
    "not",
    "!",
    "/(/",
    "/a|b/",
    "from //",
    "rcpt //",
    "\\",
    "{",
    "}",
    "#",
    "\"",
    "racl",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

    /// Whatever lines it is given, the importer neither panics nor writes a file the
    /// daemon refuses: a line it cannot carry over is a warning, never bad TOML.
    #[test]
    fn any_configuration_imports_to_toml_the_daemon_accepts(
        lines in proptest::collection::vec(
            (
                proptest::sample::select(PREFIXES),
                proptest::collection::vec(proptest::sample::select(WORDS), 0..6),
            ),
            0..8,
        )
    ) {
        let mut conf = String::from(
            "list \"L\" addr { 198.51.100.0/24 }\nlist \"R\" rcpt { a@example.com }\n\
             dnsrbl \"R\" bl.example 127.0.0.2/31\nsm_macro \"M\" \"{daemon_name}\" /^ORIG/\n",
        );
        for (prefix, words) in &lines {
            conf.push_str(prefix);
            conf.push(' ');
            conf.push_str(&words.join(" "));
            conf.push('\n');
        }
        let r = import_conf(&conf);
        if let Err(e) = Config::parse(&r.toml, Path::new("imported.toml")) {
            proptest::prop_assert!(false, "{e:?}\n--- input\n{conf}\n--- output\n{}", r.toml);
        }
    }
}
