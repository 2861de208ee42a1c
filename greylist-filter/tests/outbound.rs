//! Outbound-learned trust end to end: the real binary learns from an authenticated
//! user's mail that replies to it must not be delayed.

mod common;

use common::*;
use milter_client::{Stage, Verdict};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_authenticated_outbound_mail_are_not_delayed() {
    let dir = tempdir();
    let d = Daemon::start_with_config(
        dir.path(),
        "[greylist]\ndelay = \"10m\"\n[outbound]\nlearn = true\ntrust = \"30d\"\n",
        &["--listen", "inet:0@127.0.0.1", "--store", "g.redb"],
    );

    // Before any outbound mail, mail from x@remote.example to the user is greylisted.
    let stranger = message("203.0.113.40", "x@remote.example", &["carol@local.example"]);
    assert_eq!(
        send(&d.milter, &stranger).await.verdict,
        Verdict::Tempfailed
    );

    // The user, authenticated, writes to x@remote.example (and y@other.example).
    let out = send(
        &d.milter,
        &message(
            "192.0.2.30",
            "<Alice@Local.Example>",
            &["<X@Remote.Example>", "y@other.example"],
        )
        .macro_at(Stage::Mail, "{auth_authen}", "alice"),
    )
    .await;
    assert!(accepted(&out, "X@Remote.Example"), "{}", out.smtp_text());

    // The reply from any address passes at once, with no X-Greylist header.
    let reply = message(
        "198.51.100.61",
        "x@remote.example",
        &["alice@local.example"],
    );
    let got = send(&d.milter, &reply).await;
    assert!(accepted(&got, "alice@local.example"), "{}", got.smtp_text());
    assert!(x_greylist(&got).is_none());
    // Only the reverse direction of what was sent is trusted.
    let other = message(
        "198.51.100.62",
        "z@remote.example",
        &["alice@local.example"],
    );
    assert_eq!(send(&d.milter, &other).await.verdict, Verdict::Tempfailed);
    let other = message("198.51.100.63", "x@remote.example", &["bob@local.example"]);
    assert_eq!(send(&d.milter, &other).await.verdict, Verdict::Tempfailed);

    let log = d.stop();
    assert!(log.contains("reason=outbound_reply"), "{log}");
}

/// The pre-approval lasts `[outbound] trust`, and nothing is learned when off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_trust_expires_and_is_off_by_default() {
    use std::time::Duration;

    use common::engine::{ctx, engine};
    use greylist_filter::RcptContext;
    use greylist_filter::policy::{Decision, PassReason};

    let rc =
        |ip: &str, from: &'static str, to: &'static str, auth: Option<&'static str>| RcptContext {
            auth_authen: auth,
            ..ctx(ip, from, to)
        };
    for (toml, learns) in [
        ("[outbound]\nlearn = true\ntrust = \"1d\"\n", true),
        ("", false),
    ] {
        let (e, clock) = engine(toml);
        let _ = e
            .check_rcpt(&rc(
                "192.0.2.1",
                "alice@l.example",
                "x@r.example",
                Some("alice"),
            ))
            .await;
        let reply = e
            .check_rcpt(&rc("198.51.100.1", "x@r.example", "alice@l.example", None))
            .await;
        if learns {
            assert_eq!(reply.decision, Decision::Pass(PassReason::OutboundReply));
            clock.advance(Duration::from_secs(86_401));
            let late = e
                .check_rcpt(&rc("198.51.100.2", "x@r.example", "alice@l.example", None))
                .await;
            assert!(
                matches!(late.decision, Decision::Greylist { .. }),
                "{late:?}"
            );
        } else {
            assert!(
                matches!(reply.decision, Decision::Greylist { .. }),
                "{reply:?}"
            );
        }
    }
}
