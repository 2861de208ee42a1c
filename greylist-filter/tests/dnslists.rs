//! DNS allow and block lists and FCrDNS-verified host names, against a loopback
//! authoritative DNS server.

mod common;

use std::time::Duration;

use common::dns::{Rr, TestDns, start_dns};
use common::engine::engine;
use greylist_filter::policy::{BypassReason, Decision, GreylistReason, PassReason, RejectReason};
use greylist_filter::{Action, RcptContext};

async fn dns() -> TestDns {
    start_dns(
        &["test.", "2.0.192.in-addr.arpa."],
        &[
            // The conventional test entries, and one listed client each.
            Rr::A("2.0.0.127.bl.test.", "127.0.0.2".parse().unwrap()),
            Rr::A("66.113.0.203.bl.test.", "127.0.0.2".parse().unwrap()),
            Rr::A("2.0.0.127.wl.test.", "127.0.10.2".parse().unwrap()),
            Rr::A("77.100.51.198.wl.test.", "127.0.10.2".parse().unwrap()),
            // A list's "query refused" answer is not a listing.
            Rr::A("99.100.51.198.bl.test.", "127.255.255.254".parse().unwrap()),
            // 192.0.2.10 <-> mail.good.test both ways; 192.0.2.11 claims the name.
            Rr::Ptr("10.2.0.192.in-addr.arpa.", "mail.good.test."),
            Rr::Ptr("11.2.0.192.in-addr.arpa.", "mail.good.test."),
            Rr::A("mail.good.test.", "192.0.2.10".parse().unwrap()),
            Rr::Ptr("12.2.0.192.in-addr.arpa.", "dsl-192-0-2-12.good.test."),
            Rr::A("dsl-192-0-2-12.good.test.", "192.0.2.12".parse().unwrap()),
        ],
    )
    .await
}

/// alice@example.org to bob@example.net from `ip`, which the MTA calls `name`.
fn ctx<'a>(ip: &str, name: Option<&'a str>) -> RcptContext<'a> {
    RcptContext {
        client_name: name,
        ..common::engine::ctx(ip, "alice@example.org", "bob@example.net")
    }
}

fn lists(dns: &TestDns, action: &str) -> String {
    format!(
        "[dns]\nserver = \"{}\"\ndnswl = [\"wl.test\"]\ndnsbl = [\"bl.test\"]\n\
         dnsbl_action = \"{action}\"\ndnsbl_delay = \"30m\"\n",
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnswl_passes_at_once_and_dnsbl_gets_the_longer_delay() {
    let dns = dns().await;
    let (e, clock) = engine(&lists(&dns, "delay"));

    let wl = e.check_rcpt(&ctx("198.51.100.77", None)).await;
    assert_eq!(wl.decision, Decision::Bypass(BypassReason::Dnswl));
    assert_eq!(wl.action, Action::Continue);

    let bl = e.check_rcpt(&ctx("203.0.113.66", None)).await;
    assert_eq!(
        bl.decision,
        Decision::Greylist {
            retry_after: 1800,
            reason: GreylistReason::NewTuple
        }
    );
    let ex = e
        .explain(
            "203.0.113.66".parse().unwrap(),
            "alice@example.org",
            "bob@example.net",
        )
        .await
        .unwrap();
    assert!(
        ex.factors
            .iter()
            .any(|f| f.contains("bl.test") && f.contains("1800")),
        "{:?}",
        ex.factors
    );
    clock.advance(Duration::from_secs(301));
    let early = e.check_rcpt(&ctx("203.0.113.66", None)).await;
    assert!(
        matches!(
            early.decision,
            Decision::Greylist {
                reason: GreylistReason::TooEarly,
                ..
            }
        ),
        "{:?}",
        early.decision
    );
    clock.advance(Duration::from_secs(1500));
    let later = e.check_rcpt(&ctx("203.0.113.66", None)).await;
    assert!(
        matches!(later.decision, Decision::Pass(PassReason::DelayMet { .. })),
        "{:?}",
        later.decision
    );

    // Unlisted, and a list's error answer: the normal delay.
    for ip in ["192.0.2.200", "198.51.100.99"] {
        let out = e.check_rcpt(&ctx(ip, None)).await;
        assert_eq!(
            out.decision,
            Decision::Greylist {
                retry_after: 300,
                reason: GreylistReason::NewTuple
            },
            "{ip}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsbl_reject_answers_550() {
    let dns = dns().await;
    let (e, _) = engine(&lists(&dns, "reject"));
    let out = e.check_rcpt(&ctx("203.0.113.66", None)).await;
    assert_eq!(out.decision, Decision::Reject(RejectReason::Dnsbl));
    match out.action {
        Action::Reject(r) => assert_eq!((r.code, r.status.as_str()), (550, "5.7.1")),
        other => panic!("{other:?}"),
    }
    assert!(out.key.is_none(), "nothing stored");
    assert_eq!(
        e.metrics().snapshot().decision("reject", "dnsbl"),
        1,
        "counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_whitelist_uses_only_the_forward_confirmed_name() {
    let dns = dns().await;
    let (e, _) = engine(&format!(
        "[dns]\nserver = \"{}\"\nfcrdns = true\n[whitelist]\nhosts = [\"good.test\"]\n",
        dns.addr
    ));
    // PTR and A agree: whitelisted, whatever the MTA says.
    let ok = e.check_rcpt(&ctx("192.0.2.10", None)).await;
    assert_eq!(ok.decision, Decision::Bypass(BypassReason::ClientHost));
    // The PTR points at the name but its A record does not point back; the MTA's
    // claimed name does not count either.
    let spoof = e
        .check_rcpt(&ctx("192.0.2.11", Some("mail.good.test")))
        .await;
    assert!(
        matches!(spoof.decision, Decision::Greylist { .. }),
        "{:?}",
        spoof.decision
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_presets_scale_the_delay_by_reverse_dns_and_lists() {
    let dns = dns().await;
    let base = |preset: &str| {
        format!(
            "[greylist]\nrisk = \"{preset}\"\n[dns]\nserver = \"{}\"\n\
             dnsbl = [\"bl.test\"]\ndnsbl_delay = \"5m\"\n",
            dns.addr
        )
    };
    let first = |d: &Decision| match d {
        Decision::Greylist { retry_after, .. } => *retry_after,
        other => panic!("{other:?}"),
    };
    // (client, strict, balanced, lenient) delays for a new tuple.
    let table = [
        ("192.0.2.10", 300, 300, 300),    // forward-confirmed, specific name
        ("192.0.2.11", 900, 300, 600),    // PTR does not confirm: no reverse DNS
        ("192.0.2.12", 900, 300, 600),    // generic (access line) name
        ("203.0.113.66", 2700, 300, 600), // DNSBL and no reverse DNS
    ];
    for (preset, col) in [("strict", 1), ("balanced", 2), ("lenient", 3)] {
        let (e, _) = engine(&base(preset));
        for row in &table {
            let want = match col {
                1 => row.1,
                2 => row.2,
                _ => row.3,
            };
            let out = e.check_rcpt(&ctx(row.0, None)).await;
            assert_eq!(first(&out.decision), want, "{preset} {}", row.0);
        }
        let ex = e
            .explain(
                "192.0.2.11".parse().unwrap(),
                "x@example.org",
                "y@example.net",
            )
            .await
            .unwrap();
        if preset != "balanced" {
            assert!(
                ex.factors.iter().any(|f| f.contains("no_reverse_dns")),
                "{preset}: {:?}",
                ex.factors
            );
        }
    }
}
