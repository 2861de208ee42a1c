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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin args...` and waits (bounded) until `socket` accepts connections.
fn start(bin: &Path, args: &[String], socket: &Path) -> Running {
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not start listening",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

/// The cmilter in `mode` on a socket in `dir`.
fn start_cmilter(bin: &Path, mode: &str, dir: &Path) -> (Running, String) {
    let socket = dir.join(format!("c-{mode}.sock"));
    let spec = format!("unix:{}", socket.display());
    let args = ["-p", &spec, "-m", mode].map(String::from);
    (start(bin, &args, &socket), spec)
}

/// One of our examples on a socket in `dir`.
fn start_ours(bin: &str, extra: &[&str], dir: &Path) -> (Running, String) {
    let name = Path::new(bin).file_name().unwrap().to_string_lossy();
    let socket = dir.join(format!("rs-{name}.sock"));
    let spec = format!("unix:{}", socket.display());
    let mut args = vec!["--listen".to_string(), spec.clone()];
    args.extend(extra.iter().map(|s| s.to_string()));
    (start(Path::new(bin), &args, &socket), spec)
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
    let dir = tempfile::tempdir().unwrap();
    let (_c, c_spec) = start_cmilter(&bin, "accept", dir.path());
    let (_r, r_spec) = start_ours(env!("CARGO_BIN_EXE_accept-all"), &[], dir.path());
    compare(&c_spec, &r_spec, "accept-all vs cmilter -m accept").await;
}

#[tokio::test]
async fn add_header_matches_libmilter_addheader() {
    let Some(bin) = cmilter() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_c, c_spec) = start_cmilter(&bin, "addheader", dir.path());
    let (_r, r_spec) = start_ours(
        env!("CARGO_BIN_EXE_add-header"),
        &["--name", "X-CMilter", "--value", "seen"],
        dir.path(),
    );
    compare(&c_spec, &r_spec, "add-header vs cmilter -m addheader").await;
}

/// Both sides refuse nothing and modify nothing on a connection that only
/// says hello and leaves: negotiation and QUIT alone.
#[tokio::test]
async fn connection_without_messages_matches() {
    let Some(bin) = cmilter() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_c, c_spec) = start_cmilter(&bin, "accept", dir.path());
    let (_r, r_spec) = start_ours(env!("CARGO_BIN_EXE_accept-all"), &[], dir.path());
    for version in [6, 2] {
        let expected = converse(&c_spec, version, 0).await;
        let got = converse(&r_spec, version, 0).await;
        assert_eq!(got.steps, expected.steps, "protocol version {version}");
    }
}
