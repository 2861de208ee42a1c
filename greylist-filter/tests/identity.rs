//! Identity beyond the IP: SPF-authorised domains key the tuple, against a loopback
//! authoritative DNS server.

mod common;

use common::dns::{Rr, start_dns};
use common::engine::{ctx, engine};
use greylist_filter::identity::Identity;
use greylist_filter::policy::{Decision, GreylistReason, PassReason};

const RECORDS: &[Rr] = &[
    Rr::Txt(
        "pool.test.",
        "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all",
    ),
    Rr::Txt("soft.test.", "v=spf1 ~all"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_pass_keys_on_the_domain_so_a_pool_retry_passes() {
    let dns = start_dns(&["test."], RECORDS).await;
    let (e, clock) = engine(&format!(
        "[identity]\nspf = true\n[dns]\nserver = \"{}\"\n",
        dns.addr
    ));

    // First attempt from one address of the pool: 451, keyed on the SPF domain.
    let first = e
        .check_rcpt(&ctx("192.0.2.10", "alice@pool.test", "bob@example.net"))
        .await;
    assert!(
        matches!(
            first.decision,
            Decision::Greylist {
                reason: GreylistReason::NewTuple,
                ..
            }
        ),
        "{:?}",
        first.decision
    );
    let key = first.key.expect("key");
    assert_eq!(key.network(), "spf:pool.test");
    assert_eq!(
        Identity::of_key(&key),
        Identity::Spf {
            domain: "pool.test".into()
        }
    );

    // explain shows the identity.
    let ex = e
        .explain(
            "198.51.100.20".parse().unwrap(),
            "alice@pool.test",
            "bob@example.net",
        )
        .await
        .unwrap();
    assert_eq!(
        ex.identity,
        Identity::Spf {
            domain: "pool.test".into()
        }
    );
    assert!(ex.record.is_some(), "same record from the other address");

    // The retry after the delay from another network of the pool passes.
    clock.advance(std::time::Duration::from_secs(301));
    let retry = e
        .check_rcpt(&ctx("198.51.100.20", "alice@pool.test", "bob@example.net"))
        .await;
    assert!(
        matches!(retry.decision, Decision::Pass(PassReason::DelayMet { .. })),
        "{:?}",
        retry.decision
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spf_pass_means_the_network_identity() {
    let dns = start_dns(&["test."], RECORDS).await;
    let (e, clock) = engine(&format!(
        "[identity]\nspf = true\n[dns]\nserver = \"{}\"\n",
        dns.addr
    ));
    // Not in the record (-all: fail), softfail, no record: all keyed on the network,
    // and never a bypass.
    for (ip, from) in [
        ("203.0.113.5", "alice@pool.test"),
        ("192.0.2.10", "carol@soft.test"),
        ("192.0.2.10", "dave@nothing.test"),
        ("192.0.2.10", ""),
    ] {
        let out = e.check_rcpt(&ctx(ip, from, "bob@example.net")).await;
        assert!(
            matches!(out.decision, Decision::Greylist { .. }),
            "{from}: {:?}",
            out.decision
        );
        let key = out.key.expect("key");
        assert_eq!(Identity::of_key(&key), Identity::Network, "{from}");
        assert!(!key.network().starts_with("spf:"));
    }
    // A pool retry from another network does not pass when SPF identities are off.
    let (off, clock_off) = engine(&format!("[dns]\nserver = \"{}\"\n", dns.addr));
    let _ = off
        .check_rcpt(&ctx("192.0.2.10", "alice@pool.test", "bob@example.net"))
        .await;
    clock_off.advance(std::time::Duration::from_secs(301));
    clock.advance(std::time::Duration::from_secs(301));
    let other = off
        .check_rcpt(&ctx("198.51.100.20", "alice@pool.test", "bob@example.net"))
        .await;
    assert!(
        matches!(
            other.decision,
            Decision::Greylist {
                reason: GreylistReason::NewTuple,
                ..
            }
        ),
        "{:?}",
        other.decision
    );
}

/// `lenient`: SPF pass for a domain that passed greylisting before is trusted
/// evidence, so a new tuple of that domain is not delayed; `balanced` still delays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_trusts_spf_pass_with_history() {
    let dns = start_dns(&["test."], RECORDS).await;
    for (preset, low_risk) in [("lenient", true), ("balanced", false)] {
        let (e, clock) = engine(&format!(
            "[greylist]\nrisk = \"{preset}\"\n[identity]\nspf = true\n\
             [dns]\nserver = \"{}\"\n",
            dns.addr
        ));
        let c = ctx("192.0.2.10", "alice@pool.test", "bob@example.net");
        assert!(matches!(
            e.check_rcpt(&c).await.decision,
            Decision::Greylist { .. }
        ));
        // No reverse DNS in this zone: lenient doubles the first delay.
        clock.advance(std::time::Duration::from_secs(601));
        assert!(matches!(
            e.check_rcpt(&c).await.decision,
            Decision::Pass(PassReason::DelayMet { .. })
        ));
        let other = e
            .check_rcpt(&ctx("198.51.100.20", "carol@pool.test", "dave@example.net"))
            .await;
        if low_risk {
            assert_eq!(
                other.decision,
                Decision::Pass(PassReason::LowRisk),
                "{preset}"
            );
        } else {
            assert!(
                matches!(other.decision, Decision::Greylist { .. }),
                "{preset}: {:?}",
                other.decision
            );
        }
        // SPF pass without history (a domain never seen) is delayed in both.
        let fresh = e
            .check_rcpt(&ctx("192.0.2.10", "erin@soft.test", "dave@example.net"))
            .await;
        assert!(
            matches!(fresh.decision, Decision::Greylist { .. }),
            "{preset}"
        );
    }
}
