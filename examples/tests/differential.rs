//! Differential test: the same conversations, driven by `milter-client`,
//! against the C libmilter baseline `cmilter` (shared/harness/cmilter.c) and
//! against our `accept-all` and `add-header`; the replies must agree.
//!
//! Needs a built cmilter in `CMILTER` (scripts/interop.sh builds one and
//! sets it); without it every test prints why and passes:
//!
//! ```text
//! gcc -O2 -Wall -o /tmp/cmilter ../shared/harness/cmilter.c -lmilter -lpthread
//! CMILTER=/tmp/cmilter cargo test -p milter-examples --test differential
//! ```
//!
//! What "the same" means: the transcript lists, per stage, what the MTA does
//! next. A stage our filter negotiated away (`SMFIP_NO*`, so it was never
//! sent) or answered without a reply (`SMFIP_NR_*`) counts as CONTINUE,
//! because the MTA goes on exactly as if the filter had continued; and at
//! end of message CONTINUE and ACCEPT both mean "accept". Everything else —
//! decisions, SMTP reply texts, modifications in order — must be equal.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Milter;
use milter_client::{Client, ClientConfig, ConnectAddress, Reply, postfix_offer};

/// The C baseline milter, if built.
fn cmilter() -> Option<PathBuf> {
    match std::env::var_os("CMILTER") {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        Some(p) => panic!("CMILTER={} is not a file", Path::new(&p).display()),
        None => {
            eprintln!(
                "SKIP: differential test needs CMILTER=/path/to/cmilter \
                 (gcc -O2 -o cmilter ../shared/harness/cmilter.c -lmilter -lpthread)"
            );
            None
        }
    }
}

/// The cmilter in `mode`.
fn start_cmilter(bin: &Path, mode: &str) -> Milter {
    Milter::spawn(Command::new(bin).args(["-m", mode]), "-p", "cmilter.sock").listening()
}

/// One of our examples.
fn start_ours(bin: &str, extra: &[&str]) -> Milter {
    Milter::start(Command::new(bin).args(extra), "ours.sock")
}

/// The MTA's next step after `reply` at `stage` (see the module docs).
fn meaning(stage: &str, reply: &Reply) -> String {
    let r = match reply {
        Reply::NotSent | Reply::NoReply => "continue".to_string(),
        Reply::Continue | Reply::Accept if stage == "EOM" => "accept".to_string(),
        other => other.to_string(),
    };
    format!("{stage}: {r}")
}

/// What a test conversation did, step by step.
#[derive(Default)]
struct Transcript {
    steps: Vec<String>,
}

impl Transcript {
    fn push(&mut self, stage: &str, reply: &Reply) {
        self.steps.push(meaning(stage, reply));
    }
}

/// Runs the conversation of the tests over one milter connection: connect,
/// HELO, then `messages` messages (the second one aborted after its first
/// header), each followed by ABORT as Postfix does, and QUIT.
async fn converse(spec: &str, version: u32, messages: usize) -> Transcript {
    let config = ClientConfig::default()
        .with_offer(postfix_offer(version))
        .with_timeouts(Duration::from_secs(10));
    let client = Client::new(config);
    let mut conn = client.connect(spec).await.expect("connect and negotiate");
    let mut t = Transcript::default();
    let addr = ConnectAddress::Inet("192.0.2.1:4567".parse().unwrap());
    let r = conn
        .connect(
            &[("j", "mx.example.org"), ("{daemon_name}", "smtpd")],
            "client.example.net",
            addr,
        )
        .await
        .unwrap();
    t.push("CONNECT", &r);
    let r = conn.helo(&[], "client.example.net").await.unwrap();
    t.push("HELO", &r);
    for n in 1..=messages {
        let qid = format!("Q{n}");
        let r = conn
            .mail(&[("i", qid.as_str())], "<a@example.org>", &["SIZE=100"])
            .await
            .unwrap();
        t.push("MAIL", &r);
        for rcpt in ["<b@example.com>", "<c@example.com>"] {
            let r = conn.rcpt(&[], rcpt, &[]).await.unwrap();
            t.push("RCPT", &r);
        }
        let r = conn.data(&[]).await.unwrap();
        t.push("DATA", &r);
        let r = conn.header(&[], "From", "a@example.org").await.unwrap();
        t.push("HEADER", &r);
        if n == 2 {
            // Aborted in the middle of the headers (client disconnected, RSET...).
            conn.abort().await.unwrap();
            t.steps.push("ABORT".into());
            continue;
        }
        let subject = format!("message {n}");
        let r = conn.header(&[], "Subject", &subject).await.unwrap();
        t.push("HEADER", &r);
        let r = conn.end_of_headers(&[]).await.unwrap();
        t.push("EOH", &r);
        let r = conn.body(&[], b"hello\r\nworld\r\n").await.unwrap();
        t.push("BODY", &r);
        let eom = conn.end_of_message(&[("i", qid.as_str())]).await.unwrap();
        for m in &eom.modifications {
            t.steps.push(format!("EOM modification: {m}"));
        }
        t.push("EOM", &eom.reply);
        conn.abort().await.unwrap();
    }
    conn.quit().await.unwrap();
    t
}

/// Runs the conversation against both filters for each protocol version and
/// compares.
async fn compare(c: &str, ours: &str, label: &str) {
    for version in [6, 2] {
        let expected = converse(c, version, 3).await;
        let got = converse(ours, version, 3).await;
        assert_eq!(
            got.steps, expected.steps,
            "{label}, protocol version {version}: ours (left) differs from libmilter (right)"
        );
        eprintln!(
            "{label} v{version}: {} steps identical: {}",
            got.steps.len(),
            got.steps.join(" | ")
        );
    }
}

#[tokio::test]
async fn accept_all_matches_libmilter_accept() {
    let Some(bin) = cmilter() else { return };
    let c = start_cmilter(&bin, "accept");
    let ours = start_ours(env!("CARGO_BIN_EXE_accept-all"), &[]);
    compare(&c.spec(), &ours.spec(), "accept-all vs cmilter -m accept").await;
}

#[tokio::test]
async fn add_header_matches_libmilter_addheader() {
    let Some(bin) = cmilter() else { return };
    let c = start_cmilter(&bin, "addheader");
    let ours = start_ours(
        env!("CARGO_BIN_EXE_add-header"),
        &["--name", "X-CMilter", "--value", "seen"],
    );
    compare(
        &c.spec(),
        &ours.spec(),
        "add-header vs cmilter -m addheader",
    )
    .await;
}

/// Both sides refuse nothing and modify nothing on a connection that only
/// says hello and leaves: negotiation and QUIT alone.
#[tokio::test]
async fn connection_without_messages_matches() {
    let Some(bin) = cmilter() else { return };
    let c = start_cmilter(&bin, "accept");
    let ours = start_ours(env!("CARGO_BIN_EXE_accept-all"), &[]);
    for version in [6, 2] {
        let expected = converse(&c.spec(), version, 0).await;
        let got = converse(&ours.spec(), version, 0).await;
        assert_eq!(got.steps, expected.steps, "protocol version {version}");
    }
}
