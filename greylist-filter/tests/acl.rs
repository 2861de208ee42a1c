//! `[[acl]]` rules in the engine: what each action does to the decision, the reply and
//! the store, their place among the bypasses and whitelist lists, reloads, `explain`,
//! and `dnsrbl` clauses against a loopback DNS server.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::dns::{Rr, start_dns};
use common::engine::{T0, config, ctx, engine, engine_with};
use greylist_filter::policy::{BypassReason, Decision, GreylistReason, PassReason, RejectReason};
use greylist_filter::store::{MemoryStore, Store};
use greylist_filter::{Action, RcptContext};

const RULES: &str = r#"
[greylist]
delay = "5m"

[whitelist]
senders = ["@lists.example"]

[[acl]]
name = "partners"
action = "whitelist"
addr = ["192.0.2.0/24"]

[[acl]]
name = "spammers"
action = "blacklist"
from = ["/^offers@/"]

[[acl]]
name = "known-bad"
action = "blacklist"
helo = ["bad.example"]
code = 554
ecode = "5.7.0"
msg = "Your HELO is on our list"

[[acl]]
name = "slow-lane"
action = "greylist"
from = ["@lists.example"]
rcpt = ["sales@"]
delay = "1h"
autowhite = "2d"
code = 450
msg = "Slow down, try later"
"#;

fn reply(a: &Action) -> (u16, String, String) {
    match a {
        Action::Tempfail(r) | Action::Reject(r) => (r.code, r.status.clone(), r.text.clone()),
        Action::Continue => panic!("no reply for continue"),
    }
}

#[tokio::test]
async fn whitelist_and_blacklist_rules_decide_without_the_store() {
    let store = Arc::new(MemoryStore::new());
    let (e, _) = engine_with(&config(RULES), store.clone());
    let out = e
        .check_rcpt(&ctx("192.0.2.7", "offers@spam.example", "a@example.net"))
        .await;
    assert_eq!(out.decision, Decision::Bypass(BypassReason::Acl));
    assert_eq!(out.action, Action::Continue);

    let out = e
        .check_rcpt(&ctx("198.51.100.7", "offers@spam.example", "a@example.net"))
        .await;
    assert_eq!(out.decision, Decision::Reject(RejectReason::Acl));
    assert_eq!(
        reply(&out.action),
        (550, "5.7.1".into(), "Access denied".into())
    );
    assert!(matches!(out.action, Action::Reject(_)));

    let helo = RcptContext {
        helo: Some("BAD.example"),
        ..ctx("198.51.100.7", "someone@x.example", "a@example.net")
    };
    let out = e.check_rcpt(&helo).await;
    assert_eq!(
        reply(&out.action),
        (554, "5.7.0".into(), "Your HELO is on our list".into())
    );
    assert_eq!(store.stats().await.unwrap().tuples, 0, "nothing stored");
    let m = e.metrics().snapshot();
    assert_eq!(m.decision("bypass", "acl"), 1);
    assert_eq!(m.decision("reject", "acl"), 2);
    let counts: Vec<(String, &str, u64)> = e.acl_matches();
    assert_eq!(
        counts,
        [
            ("partners".to_owned(), "whitelist", 1),
            ("spammers".to_owned(), "blacklist", 1),
            ("known-bad".to_owned(), "blacklist", 1),
            ("slow-lane".to_owned(), "greylist", 0),
        ]
    );
}

#[tokio::test]
async fn a_greylist_rule_overrides_lists_delay_autowhite_and_reply() {
    let store = Arc::new(MemoryStore::new());
    let (e, clock) = engine_with(&config(RULES), store.clone());
    // Without the rule the sender list lets the list through ...
    let other = ctx("198.51.100.7", "news@lists.example", "bob@example.net");
    assert_eq!(
        e.check_rcpt(&other).await.decision,
        Decision::Bypass(BypassReason::Sender)
    );
    // ... but to sales@ the rule greylists it, for an hour, with its own reply.
    let c = ctx("198.51.100.7", "news@lists.example", "sales@example.net");
    let out = e.check_rcpt(&c).await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 3600,
            reason: GreylistReason::NewTuple
        }
    );
    assert_eq!(
        reply(&out.action),
        (450, "4.7.1".into(), "Slow down, try later".into())
    );
    clock.advance(Duration::from_secs(600));
    let out = e.check_rcpt(&c).await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 3000,
            reason: GreylistReason::TooEarly
        }
    );
    clock.advance(Duration::from_secs(3000));
    let out = e.check_rcpt(&c).await;
    assert_eq!(
        out.decision,
        Decision::Pass(PassReason::DelayMet { delayed: 3600 })
    );
    let rec = store.get(out.key.as_ref().unwrap()).await.unwrap().unwrap();
    assert_eq!(rec.expires, T0 + 3600 + 2 * 86_400, "the rule's autowhite");
}

#[tokio::test]
async fn built_in_bypasses_come_before_the_rules() {
    let (e, _) = engine(
        "[whitelist]\nlocal_networks = [\"10.0.0.0/8\"]\nopt_out = [\"quiet@example.net\"]\n\n\
         [[acl]]\naction = \"blacklist\"\ndefault = true\n",
    );
    let cases = [
        (
            ctx("127.0.0.1", "a@b.example", "c@example.net"),
            BypassReason::Loopback,
        ),
        (
            ctx("10.1.2.3", "a@b.example", "c@example.net"),
            BypassReason::LocalNetwork,
        ),
        (
            RcptContext {
                auth_authen: Some("alice"),
                ..ctx("198.51.100.1", "a@b.example", "c@example.net")
            },
            BypassReason::Authenticated,
        ),
        (
            ctx("198.51.100.1", "a@b.example", "postmaster@example.net"),
            BypassReason::SpecialRecipient,
        ),
        (
            ctx("198.51.100.1", "a@b.example", "quiet@example.net"),
            BypassReason::OptOut,
        ),
    ];
    for (c, want) in cases {
        assert_eq!(e.check_rcpt(&c).await.decision, Decision::Bypass(want));
    }
    let out = e
        .check_rcpt(&ctx("198.51.100.1", "a@b.example", "c@example.net"))
        .await;
    assert_eq!(out.decision, Decision::Reject(RejectReason::Acl));
}

#[tokio::test]
async fn continue_with_flushaddr_forgets_the_network_and_goes_on() {
    let store = Arc::new(MemoryStore::new());
    let toml = "[[acl]]\naction = \"continue\"\nrcpt = [\"trap@example.net\"]\nflushaddr = true\n";
    let (e, clock) = engine_with(&config(toml), store.clone());
    // A tuple of 203.0.113.0/24 passes and is auto-whitelisted.
    let c = ctx("203.0.113.5", "a@b.example", "c@example.net");
    e.check_rcpt(&c).await;
    clock.advance(Duration::from_secs(400));
    assert!(matches!(e.check_rcpt(&c).await.decision, Decision::Pass(_)));
    assert_eq!(store.stats().await.unwrap().tuples, 1);
    // Mail from the same network to the trap: flushed, then greylisted as usual.
    let out = e
        .check_rcpt(&ctx("203.0.113.9", "x@y.example", "trap@example.net"))
        .await;
    assert!(matches!(
        out.decision,
        Decision::Greylist {
            reason: GreylistReason::NewTuple,
            ..
        }
    ));
    assert_eq!(store.stats().await.unwrap().tuples, 1, "only the new tuple");
    assert_eq!(
        e.acl_matches()[0].2,
        1,
        "a continue rule's matches are counted"
    );
    let out = e.check_rcpt(&c).await;
    assert!(
        matches!(
            out.decision,
            Decision::Greylist {
                reason: GreylistReason::NewTuple,
                ..
            }
        ),
        "the auto-whitelisted tuple was forgotten: {:?}",
        out.decision
    );
}

#[tokio::test]
async fn reload_swaps_the_rules_and_explain_names_them() {
    let (e, _) =
        engine("[[acl]]\nname = \"r1\"\naction = \"blacklist\"\nrcpt = [\"a@example.net\"]\n");
    let c = ctx("198.51.100.1", "x@y.example", "a@example.net");
    assert_eq!(
        e.check_rcpt(&c).await.decision,
        Decision::Reject(RejectReason::Acl)
    );
    let x = e
        .explain(
            "198.51.100.1".parse().unwrap(),
            "x@y.example",
            "a@example.net",
        )
        .await
        .unwrap();
    assert_eq!(x.decision, Decision::Reject(RejectReason::Acl));
    assert_eq!(x.factors, ["acl r1: blacklist"]);

    let next = config(
        "[[acl]]\nname = \"r2\"\naction = \"greylist\"\nrcpt = [\"a@example.net\"]\ndelay = \"2h\"\n",
    );
    e.reload(&next, Path::new("test.toml")).unwrap();
    let out = e.check_rcpt(&c).await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 7200,
            reason: GreylistReason::NewTuple
        }
    );
    let x = e
        .explain(
            "198.51.100.1".parse().unwrap(),
            "x@y.example",
            "a@example.net",
        )
        .await
        .unwrap();
    assert_eq!(x.factors, ["acl r2: greylist"]);
    assert_eq!(x.passes_at, Some(T0 + 7200));
}

#[tokio::test]
async fn rcptcount_and_macros_come_from_the_context() {
    let (e, _) = engine(
        "[[acl]]\naction = \"blacklist\"\nrcptcount = \">= 3\"\n\n\
         [[acl]]\naction = \"whitelist\"\nmacro = [{ name = \"{daemon_name}\", value = \"ORIGINATING\" }]\n",
    );
    assert_eq!(e.acl_macro_names(), ["{daemon_name}"]);
    assert!(!e.acl_uses_helo());
    let base = ctx("198.51.100.1", "x@y.example", "a@example.net");
    let third = RcptContext {
        rcpt_count: 3,
        ..base
    };
    assert_eq!(
        e.check_rcpt(&third).await.decision,
        Decision::Reject(RejectReason::Acl)
    );
    let m = [("{daemon_name}".to_owned(), "ORIGINATING".to_owned())];
    let orig = RcptContext {
        macros: &m,
        rcpt_count: 2,
        ..base
    };
    assert_eq!(
        e.check_rcpt(&orig).await.decision,
        Decision::Bypass(BypassReason::Acl)
    );
    assert!(matches!(
        e.check_rcpt(&base).await.decision,
        Decision::Greylist { .. }
    ));
}

#[tokio::test]
async fn dnsrbl_clauses_ask_the_dns() {
    let dns = start_dns(
        &["test."],
        &[
            Rr::A("66.113.0.203.bl.test.", "127.0.0.2".parse().unwrap()),
            Rr::A("99.113.0.203.bl.test.", "127.255.255.254".parse().unwrap()),
            Rr::A("77.113.0.203.bl.test.", "127.0.0.10".parse().unwrap()),
        ],
    )
    .await;
    let (e, _) = engine(&format!(
        "[dns]\nserver = \"{}\"\n\n[[acl]]\nname = \"dialup\"\naction = \"greylist\"\n\
         dnsrbl = [\"bl.test 127.0.0.10\"]\ndelay = \"2h\"\n\n\
         [[acl]]\nname = \"listed\"\naction = \"blacklist\"\n\
         dnsrbl = [\"bl.test\"]\nmsg = \"Listed on bl.test\"\n\n\
         [[acl]]\nname = \"unlisted-to-vip\"\naction = \"whitelist\"\nrcpt = [\"vip@example.net\"]\n\
         not = {{ dnsrbl = [\"bl.test\"] }}\n",
        dns.addr
    ));
    let out = e
        .check_rcpt(&ctx("203.0.113.66", "x@y.example", "vip@example.net"))
        .await;
    assert_eq!(out.decision, Decision::Reject(RejectReason::Acl));
    assert_eq!(reply(&out.action).2, "Listed on bl.test");
    // Only 127.0.0.10 is a listing for the first rule; the second takes any.
    let out = e
        .check_rcpt(&ctx("203.0.113.77", "x@y.example", "vip@example.net"))
        .await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 7200,
            reason: GreylistReason::NewTuple
        }
    );
    // 127.255.255.254 is a list's error answer, not a listing.
    for ip in ["203.0.113.99", "203.0.113.1"] {
        let out = e
            .check_rcpt(&ctx(ip, "x@y.example", "vip@example.net"))
            .await;
        assert_eq!(out.decision, Decision::Bypass(BypassReason::Acl), "{ip}");
    }
}

/// The daemon asks the MTA for HELO and the rules' macros only when rules need them,
/// applies the rules to real milter conversations, and keeps its rules when a reload
/// brings a bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_negotiates_what_its_rules_read_and_reloads_them() {
    use common::{DEADLINE, Daemon, accepted, client, message, refusal, send, tempdir};
    use milter_client::milter_proto::MacroStage;
    use milter_client::{Stage, Verdict};
    use nix::sys::signal::Signal;

    let dir = tempdir();
    let good = "[[acl]]\nname = \"bad-helo\"\naction = \"blacklist\"\nhelo = [\"/^bad\\\\./\"]\n\
                msg = \"Bad HELO\"\n\n[[acl]]\nname = \"submission\"\naction = \"whitelist\"\n\
                macro = [{ name = \"{daemon_name}\", value = \"ORIGINATING\" }]\n";
    let d = Daemon::start_with_config(dir.path(), good, &["--listen", "inet:0@127.0.0.1"]);

    let conn = client().connect(&d.milter).await.expect("connect");
    let agreed = conn.agreed();
    assert!(agreed.sends(Stage::Helo) && !agreed.replies_to(Stage::Helo));
    let rcpt_macros = agreed.requested_macros(MacroStage::Rcpt).unwrap();
    assert!(rcpt_macros.contains(&"{daemon_name}"), "{rcpt_macros:?}");
    drop(conn);

    let m = message("198.51.100.8", "a@example.org", &["b@example.net"]);
    let out = send(&d.milter, &m.clone().helo("bad.example")).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{}", out.smtp_text());
    let r = refusal(&out, "b@example.net").unwrap();
    assert!(r.starts_with("550 5.7.1 Bad HELO"), "{r}");
    let out = send(
        &d.milter,
        &m.clone()
            .macro_at(Stage::Rcpt, "{daemon_name}", "ORIGINATING"),
    )
    .await;
    assert!(accepted(&out, "b@example.net"), "{}", out.smtp_text());
    let out = send(&d.milter, &m).await;
    assert_eq!(out.verdict, Verdict::Tempfailed, "{}", out.smtp_text());
    d.wait_log("acl=\"bad-helo\"", DEADLINE)
        .unwrap_or_else(|| panic!("decision line without the rule:\n{}", d.log()));

    // A bad rule (a 4xx code for a blacklist, line 4) is refused; the rules stay.
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        "[[acl]]\naction = \"blacklist\"\ndefault = true\ncode = 451\n",
    )
    .unwrap();
    let mark = d.log_mark();
    d.signal(Signal::SIGHUP);
    let located = d
        .wait_log_after(mark, "g.toml:4:", DEADLINE)
        .unwrap_or_else(|| panic!("error not located:\n{}", d.log()));
    assert!(located.contains("code 451 must be 5xx"), "{located}");
    let out = send(&d.milter, &m.clone().helo("bad.example")).await;
    assert_eq!(out.verdict, Verdict::Rejected);

    // Without rules nothing extra is negotiated.
    std::fs::write(&cfg, "").unwrap();
    let mark = d.log_mark();
    d.signal(Signal::SIGHUP);
    d.wait_log_after(mark, "configuration reloaded", DEADLINE)
        .unwrap_or_else(|| panic!("no reload:\n{}", d.log()));
    let conn = client().connect(&d.milter).await.expect("connect");
    assert!(!conn.agreed().sends(Stage::Helo));
    let rcpt_macros = conn.agreed().requested_macros(MacroStage::Rcpt).unwrap();
    assert_eq!(rcpt_macros, ["{rcpt_addr}", "i"]);
    drop(conn);
    let out = send(&d.milter, &m.clone().helo("bad.example")).await;
    assert_eq!(out.verdict, Verdict::Tempfailed);
    d.stop();
}

#[tokio::test]
async fn spf_clauses_ask_the_spf_record_without_changing_the_key() {
    let dns = start_dns(
        &["test."],
        &[
            Rr::Txt("pool.test.", "v=spf1 ip4:192.0.2.0/24 -all"),
            Rr::Txt("soft.test.", "v=spf1 ~all"),
        ],
    )
    .await;
    let (e, _) = engine(&format!(
        "[dns]\nserver = \"{}\"\n\n\
         [[acl]]\nname = \"forged\"\naction = \"blacklist\"\nspf = [\"fail\"]\n\n\
         [[acl]]\nname = \"unsure\"\naction = \"greylist\"\nspf = [\"softfail\", \"neutral\"]\ndelay = \"1h\"\n\n\
         [[acl]]\nname = \"no-record\"\naction = \"greylist\"\nspf = [\"none\"]\ndelay = \"2h\"\n",
        dns.addr
    ));
    let d = |ip: &'static str, from: &'static str| {
        let e = &e;
        async move { e.check_rcpt(&ctx(ip, from, "a@example.net")).await }
    };
    // Outside the record: fail.
    let out = d("203.0.113.5", "x@pool.test").await;
    assert_eq!(out.decision, Decision::Reject(RejectReason::Acl));
    // Inside it: pass, which no rule names; greylisted as usual, keyed on the network
    // (the rules do not turn on `[identity] spf`).
    let out = d("192.0.2.5", "x@pool.test").await;
    assert_eq!(
        out.decision,
        Decision::Greylist {
            retry_after: 300,
            reason: GreylistReason::NewTuple
        }
    );
    assert_eq!(out.key.unwrap().network(), "192.0.2.0/24");
    let out = d("203.0.113.5", "x@soft.test").await;
    assert!(matches!(
        out.decision,
        Decision::Greylist {
            retry_after: 3600,
            ..
        }
    ));
    let out = d("203.0.113.5", "x@nothing.test").await;
    assert!(matches!(
        out.decision,
        Decision::Greylist {
            retry_after: 7200,
            ..
        }
    ));
    // The null sender has no domain to check: none.
    let out = d("203.0.113.5", "<>").await;
    assert!(matches!(
        out.decision,
        Decision::Greylist {
            retry_after: 7200,
            ..
        }
    ));
}
