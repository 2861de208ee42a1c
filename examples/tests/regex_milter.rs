//! `regex-milter` as an operator runs it: the real binary on a unix socket in
//! a temporary directory, driven through milter-client like an MTA would.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Milter, PATIENCE};
use milter_client::{
    Client, ClientConfig, MacroStage, Message, MessageOutcome, Modification, Stage, Verdict,
};

const BIN: &str = env!("CARGO_BIN_EXE_regex-milter");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn data(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

/// regex-milter with `rules`, logging at level info.
fn command(rules: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--rules")
        .arg(rules)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

/// regex-milter with `rules`, listening.
fn start(rules: &Path) -> Milter {
    Milter::start(&mut command(rules), "regex.sock")
}

/// A message from an outside client with a plain body.
fn message() -> Message {
    Message::new()
        .client("client.example.net", "192.0.2.1:4567".parse().unwrap())
        .helo("client.example.net")
        .sender("alice@example.org")
        .rcpt("bob@example.net")
        .header("From", "Alice <alice@example.org>")
        .header("Subject", "hello")
        .body("Hi Bob.\r\n")
}

fn reply_text(out: &MessageOutcome) -> String {
    out.smtp_text()
}

// --- the ZIP sample ------------------------------------------------------------------

#[tokio::test]
async fn zip_sample_rejects_a_zip_attachment_and_passes_clean_mail() {
    let milter = start(&data("zip.rules"));
    let zip = std::fs::read(data("zip-attachment.eml")).unwrap();
    let out = milter.send(&message().eml(&zip)).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    assert_eq!(
        reply_text(&out),
        "554 5.7.1 Sorry, we do not accept ZIP archives anymore"
    );
    assert!(
        matches!(out.decided_at, Stage::Body | Stage::EndOfMessage),
        "decided in the body: {:?}",
        out.decided_at
    );

    let clean = std::fs::read(data("clean.eml")).unwrap();
    let out = milter.send(&message().eml(&clean)).await;
    assert_eq!(out.verdict, Verdict::Accepted, "{out:?}");
    assert!(out.modifications.is_empty());
}

#[tokio::test]
async fn zip_sample_matches_the_line_split_across_body_chunks() {
    let milter = start(&data("zip.rules"));
    let mut conn = milter.client().connect(milter.spec()).await.unwrap();
    assert!(
        conn.mail(&[], "<alice@example.org>", &[])
            .await
            .unwrap()
            .is_continue()
    );
    assert!(
        conn.rcpt(&[], "<bob@example.net>", &[])
            .await
            .unwrap()
            .is_continue()
    );
    conn.data(&[]).await.unwrap();
    conn.end_of_headers(&[]).await.unwrap();
    let first = conn
        .body(&[], b"text\r\nContent-Disposition: attach")
        .await
        .unwrap();
    assert!(first.is_continue(), "{first:?}");
    let second = conn
        .body(&[], b"ment; filename=\"x.zip\"\r\n")
        .await
        .unwrap();
    assert!(second.is_reject(), "{second:?}");
}

#[tokio::test]
async fn only_the_stages_the_rules_use_are_negotiated() {
    let milter = start(&data("zip.rules"));
    let client = Client::new(ClientConfig::default());
    let conn = client.connect(milter.spec()).await.unwrap();
    let agreed = conn.agreed();
    for stage in [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::EndOfHeaders,
    ] {
        assert!(!agreed.sends(stage), "{stage} should be negotiated away");
    }
    assert!(agreed.sends(Stage::Body));
    assert!(agreed.sends(Stage::EndOfMessage));

    // The logic rules need HELO, MAIL, RCPT, headers and the auth macro.
    let milter = start(&data("logic.rules"));
    let conn = client.connect(milter.spec()).await.unwrap();
    let agreed = conn.agreed();
    for stage in [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Header,
        Stage::EndOfHeaders,
        Stage::Body,
    ] {
        assert!(agreed.sends(stage), "{stage} should be negotiated");
    }
    assert!(!agreed.sends(Stage::Data));
    assert_eq!(
        agreed.requested_macros(MacroStage::Mail),
        Some(vec!["{auth_authen}"])
    );
}

// --- one rule per stage -------------------------------------------------------------

#[tokio::test]
async fn connect_envelope_and_header_rules_decide_at_their_stage() {
    let milter = start(&data("stages.rules"));

    let out = milter
        .send(
            &message()
                .client(
                    "host-7.dialup.example",
                    "198.51.100.7:1000".parse().unwrap(),
                )
                .helo("host-7.dialup.example"),
        )
        .await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(out.decided_at, Stage::Connect);
    assert_eq!(
        reply_text(&out),
        "554 5.7.1 Dialup clients are not accepted"
    );

    let out = milter.send(&message().sender("eve@spam.example")).await;
    assert_eq!(out.verdict, Verdict::Tempfailed);
    assert_eq!(out.decided_at, Stage::Mail);
    assert_eq!(
        reply_text(&out),
        "451 4.7.1 Senders at spam.example must retry later"
    );

    // A recipient rule refuses that recipient only.
    let out = milter
        .send(
            &message()
                .rcpt("nobody@example.net")
                .rcpt("carol@example.net"),
        )
        .await;
    assert_eq!(out.verdict, Verdict::Accepted, "{out:?}");
    assert_eq!(out.rejected_recipients.len(), 1);
    assert_eq!(out.rejected_recipients[0].0, "<nobody@example.net>");
    assert_eq!(
        out.rejected_recipients[0]
            .1
            .smtp_reply()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned()),
        Some("554 5.7.1 No such recipient here".to_string())
    );
    assert_eq!(
        out.accepted_recipients,
        vec!["<bob@example.net>", "<carol@example.net>"]
    );

    let out = milter
        .send(&message().header("subject", "Cheap VIAGRA"))
        .await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(out.decided_at, Stage::Header);
    assert_eq!(reply_text(&out), "554 5.7.1 We do not want this subject");

    let out = milter.send(&message().header("X-Discard-Me", "yes")).await;
    assert_eq!(out.verdict, Verdict::Discarded);

    let out = milter.send(&message().header("X-Hold", "please")).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(
        out.modifications,
        vec![Modification::Quarantine {
            reason: "Held for review".into()
        }]
    );

    // None of the rules: accepted, untouched.
    let out = milter.send(&message()).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert!(out.modifications.is_empty());
    assert!(out.rejected_recipients.is_empty());
}

// --- and / or / not ------------------------------------------------------------------

#[tokio::test]
async fn expressions_with_and_or_not_and_named_expressions() {
    let milter = start(&data("logic.rules"));

    // helo localhost and not from 127.x: rejected at HELO ...
    let out = milter.send(&message().helo("localhost")).await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(out.decided_at, Stage::Helo);
    assert_eq!(reply_text(&out), "554 5.7.1 HELO localhost from outside");
    // ... but fine from loopback.
    let out = milter
        .send(
            &message()
                .client("localhost", "127.0.0.1:1000".parse().unwrap())
                .helo("localhost"),
        )
        .await;
    assert_eq!(out.verdict, Verdict::Accepted, "{out:?}");

    // (envfrom and header) or body
    let out = milter
        .send(&message().header("Subject", "A special OFFER"))
        .await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(out.decided_at, Stage::Header);
    let out = milter
        .send(
            &message()
                .sender("alice@example.com")
                .header("Subject", "A special offer"),
        )
        .await;
    assert_eq!(out.verdict, Verdict::Accepted, "other sender: {out:?}");
    let out = milter
        .send(
            &message()
                .sender("zed@elsewhere.example")
                .body("Hi\r\nBUY NOW\r\n"),
        )
        .await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(
        reply_text(&out),
        "554 5.7.1 Offers from example.org are not welcome"
    );

    // envrcpt and not macro: decided once macros are final (the first
    // header, as in milter-regex).
    let out = milter.send(&message().rcpt("staff@internal.example")).await;
    assert_eq!(out.verdict, Verdict::Tempfailed, "{out:?}");
    assert_eq!(out.decided_at, Stage::Header);
    assert_eq!(
        reply_text(&out),
        "451 4.7.1 Please log in to write to internal.example"
    );
    let out = milter
        .send(&message().rcpt("staff@internal.example").macro_at(
            Stage::Mail,
            "{auth_authen}",
            "alice",
        ))
        .await;
    assert_eq!(out.verdict, Verdict::Accepted, "authenticated: {out:?}");
}

// --- rule file errors ----------------------------------------------------------------

#[test]
fn a_broken_rule_file_stops_the_start_and_names_the_line() {
    let mut milter = Milter::spawn(
        &mut command(&data("broken.rules")),
        "--listen",
        "regex.sock",
    );
    let status = milter.wait_exit();
    assert!(!status.success(), "{status}");
    let log = milter.log();
    assert!(
        log.contains("broken.rules:5:1: unknown keyword `heder`"),
        "{log}"
    );
    assert!(!milter.socket().exists(), "never listened");
}

#[test]
fn check_mode_lists_the_errors_and_needs_no_socket() {
    let out = Command::new(BIN)
        .arg("--rules")
        .arg(data("broken.rules"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.rules:5:1: unknown keyword `heder`"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .arg("--rules")
        .arg(data("zip.rules"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK, 1 rule(s)"), "{stdout}");
}

// --- SIGHUP ----------------------------------------------------------------------------

/// Writes a rule file the way editors and config tools do: a new file
/// renamed over the old one, so the milter never reads half a file.
fn write_rules(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn subject(s: &str) -> Message {
    message().header("Subject", s)
}

#[tokio::test]
async fn sighup_reloads_good_rules_and_keeps_the_old_ones_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("live.rules");
    write_rules(
        &rules,
        "reject \"alpha refused\"\nheader /^Subject$/ /alpha/\n",
    );
    let milter = start(&rules);
    assert_eq!(
        milter.send(&subject("alpha")).await.verdict,
        Verdict::Rejected
    );
    assert_eq!(
        milter.send(&subject("beta")).await.verdict,
        Verdict::Accepted
    );

    // A good file: new connections get the new rules.
    write_rules(
        &rules,
        "reject \"beta refused\"\nheader /^Subject$/ /beta/\n",
    );
    milter.signal("HUP");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = milter.send(&subject("beta")).await;
        if out.verdict == Verdict::Rejected {
            assert_eq!(reply_text(&out), "554 5.7.1 beta refused");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not reloaded: {}",
            milter.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        milter.send(&subject("alpha")).await.verdict,
        Verdict::Accepted
    );

    // A broken file: refused with its line, the beta rules stay.
    write_rules(
        &rules,
        "reject \"gamma refused\"\nheader /^Subject$/ /gamma/\nreject \"oops\"\nbody /(/e\n",
    );
    milter.signal("HUP");
    let deadline = Instant::now() + PATIENCE;
    while !milter.log().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {}",
            milter.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = milter.log();
    assert!(
        log.contains("live.rules:4:6: bad regular expression"),
        "{log}"
    );
    assert_eq!(
        milter.send(&subject("beta")).await.verdict,
        Verdict::Rejected
    );
    assert_eq!(
        milter.send(&subject("gamma")).await.verdict,
        Verdict::Accepted
    );
}
