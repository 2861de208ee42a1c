//! Replays the `server_session` fuzz corpus and every saved finding on
//! stable, through the very logic the fuzz target runs
//! (`fuzz/src/server_session.rs`, included here by path so there is one
//! copy), and the MTA captures in `milter-proto/tests/data/*.bin` if any.
//!
//! The seed corpus is generated from real encoded conversations by this
//! file: `MILTER_WRITE_SEEDS=1 cargo test -p milter-server --test
//! fuzz_replay` (re)writes `fuzz/corpus/server_session/seed-*`; without the
//! variable the test checks that the committed seeds match what the
//! encoders produce now.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use milter_proto::{
    Command, Connect, ConnectAddress, Envelope, FrameDecoder, Header, Macros, OptNeg,
    ProtocolFlags, Response,
};

// The fuzz target uses more of the module than the tests do.
#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/server_session.rs"]
mod logic;

const TARGET: &str = "server_session";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Input files of a directory, sorted, without the README.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(paths: &[PathBuf], wrap: impl Fn(Vec<u8>) -> Vec<u8>) -> Vec<String> {
    let mut failures = Vec::new();
    for path in paths {
        let data = wrap(fs::read(path).expect("readable input file"));
        if catch_unwind(AssertUnwindSafe(|| logic::server_session(&data))).is_err() {
            failures.push(path.display().to_string());
        }
    }
    failures
}

#[test]
fn replay_corpus_and_regressions() {
    let corpus = inputs(&fuzz_dir().join("corpus").join(TARGET));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{TARGET} is empty: generate the seeds (see this file's docs)"
    );
    let regressions = inputs(&fuzz_dir().join("regressions").join(TARGET));
    let mut failures = replay(&corpus, |d| d);
    failures.extend(replay(&regressions, |d| d));
    assert!(failures.is_empty(), "fuzz inputs that fail: {failures:#?}");
}

#[test]
fn regression_directory_exists() {
    let readme = fuzz_dir()
        .join("regressions")
        .join(TARGET)
        .join("README.md");
    assert!(readme.is_file(), "{} is missing", readme.display());
}

fn capture_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../milter-proto/tests/data");
    inputs(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect()
}

/// The input header for a recorded MTA stream (which starts with its own
/// OPTNEG: no prefix): the filter implements the stages the stream carries
/// (a recorded filter negotiated the others away, so the MTA never sent
/// them), with every action.
fn capture_header(stream: &[u8], seed: u8) -> [u8; 5] {
    let mut decoder = FrameDecoder::new(milter_proto::frame::DEFAULT_MAX_INBOUND);
    let mut buf = BytesMut::from(stream);
    let mut seen = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        seen.push(frame.code);
    }
    let mut not_stages = 0u8;
    for (bit, code) in b"CHMRTLNB".iter().enumerate() {
        if !seen.contains(code) {
            not_stages |= 1 << bit;
        }
    }
    [0, not_stages, 0, 0, seed]
}

/// Recorded MTA streams, with filters that continue everywhere, mostly
/// continue, and fail often.
#[test]
fn replay_mta_captures() {
    let captures = capture_files();
    for seed in [0u8, 0x5a, 0xe0] {
        let failures = replay(&captures, |d| [&capture_header(&d, seed)[..], &d].concat());
        assert!(failures.is_empty(), "captures that fail: {failures:#?}");
    }
}

// ----------------------------------------------------- behaviour, spelled out

const HELO: &[u8] = b"client.example.net";

/// A seed whose HELO decision key (with the prefix-2 HELO) is in `range`.
fn seed_for_helo(range: std::ops::RangeInclusive<u8>) -> u8 {
    (0..=255u8)
        .find(|&s| s != 0 && s != 0xee && s != 0xef && range.contains(&logic::key_of(s, HELO)))
        .expect("some seed hits every range")
}

fn responses(output: &[u8]) -> Vec<Response> {
    let mut decoder = FrameDecoder::new(1 << 24);
    let mut buf = BytesMut::from(output);
    let mut out = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).expect("valid framing") {
        out.push(Response::decode(&frame).expect("a valid response"));
    }
    out
}

/// A HELO callback that panics, never finishes, or returns an error gets
/// the failure policy's reply, and the session goes on: the next HELO gets
/// an answer too, and QUIT ends it cleanly.
#[test]
fn callback_failures_answer_with_the_policy() {
    let policies: [(u8, Response); 4] = [
        (0, Response::Tempfail),
        (1, Response::Reject),
        (2, Response::Continue),
        (3, Response::Accept),
    ];
    for (what, range) in [
        ("error", 220..=229),
        ("panic", 230..=235),
        ("hang", 236..=241),
    ] {
        let seed = seed_for_helo(range);
        for (policy, expected) in &policies {
            // Prefix 2: OPTNEG, CONNECT macros, CONNECT, HELO; then a second
            // HELO with another name (decided separately) and QUIT.
            let tail = logic::encode_commands(&[
                Command::Helo(Bytes::from_static(b"other")),
                Command::Quit,
            ]);
            let data = [&[2 | (policy << 2), 0, 0, 0, seed][..], &tail].concat();
            let outcome = logic::run(&data);
            logic::check(&outcome);
            assert!(outcome.result.is_ok(), "{what}: {:?}", outcome.result);
            let r = responses(&outcome.output);
            assert_eq!(r.len(), 4, "{what}: optneg, connect, helo, helo: {r:?}");
            assert!(matches!(r[0], Response::OptNeg(_)));
            assert_eq!(&r[2], expected, "{what} with policy {policy}");
        }
    }
}

/// A session that stops in the middle of a frame, or sends nothing for the
/// idle timeout, ends on its own.
#[test]
fn truncated_and_idle_sessions_end() {
    let outcome = logic::run(&[1, 0, 0, 0, 0, 0, 0, 0, 9, b'H', b'x']);
    assert!(outcome.result.is_err());
    logic::check(&outcome);
}

// ------------------------------------------------------------------- seeds

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn macros(stage: u8, pairs: &[(&'static str, &'static str)]) -> Command {
    Command::Macro(Macros::new(stage, pairs.iter().copied()).expect("valid macros"))
}

fn env(addr: &'static str, args: &[&'static str]) -> Envelope {
    Envelope::new(b(addr), args.iter().copied()).expect("a valid envelope")
}

/// One message as Postfix sends it, macros before every stage.
fn message(commands: &mut Vec<Command>, queue_id: &'static str, body: Bytes) {
    commands.extend([
        macros(b'M', &[("i", queue_id), ("{mail_addr}", "a@example.org")]),
        Command::Mail(env("<a@example.org>", &["SIZE=1234", "BODY=8BITMIME"])),
        macros(b'R', &[("{rcpt_addr}", "b@example.net")]),
        Command::Rcpt(env("<b@example.net>", &[])),
        Command::Rcpt(env("<c@example.net>", &["NOTIFY=NEVER"])),
        macros(b'T', &[("i", queue_id)]),
        Command::Data,
        Command::Header(Header {
            name: b("Subject"),
            value: b("hello"),
        }),
        Command::Header(Header {
            name: b("Received"),
            value: b("from x\n\tby y; Mon, 1 Jan 2024 00:00:00 +0000"),
        }),
        macros(b'N', &[("i", queue_id)]),
        Command::EndOfHeaders,
        Command::Body(body),
        macros(b'E', &[("i", queue_id)]),
        Command::EndOfMessage(Bytes::new()),
        Command::Abort,
    ]);
}

/// A Postfix conversation after OPTNEG: CONNECT, HELO, `n` messages, QUIT.
fn conversation(n: usize, body: Bytes, quit: Command) -> Vec<Command> {
    let mut c = vec![
        macros(b'C', &[("j", "mx.example.org"), ("{daemon_name}", "smtpd")]),
        Command::Connect(Connect {
            hostname: b("client.example.net"),
            address: ConnectAddress::Inet("192.0.2.1:54321".parse().unwrap()),
        }),
        macros(b'H', &[]),
        Command::Helo(b("client.example.net")),
    ];
    for i in 0..n {
        message(&mut c, ["4XyZ1", "4XyZ2", "4XyZ3"][i % 3], body.clone());
    }
    c.push(quit);
    c
}

fn with_header(header: [u8; 5], commands: &[Command]) -> Vec<u8> {
    [&header[..], &logic::encode_commands(commands)].concat()
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let body = b("Hello,\r\n\r\nbye.\r\n");
    let mut out = Vec::new();
    let mut push = |name: &str, bytes: Vec<u8>| out.push((format!("seed-{name}"), bytes));

    let postfix = conversation(2, body.clone(), Command::Quit);
    // Prefix 1 (OPTNEG written by the target), several filter shapes.
    for (name, header) in [
        ("postfix-all-stages", [1, 0, 0, 0, 0]),
        ("postfix-all-stages-seed-5a", [1, 0, 0, 0, 0x5a]),
        ("postfix-no-reply", [1, 0, 0xff, 0, 0]),
        ("postfix-eom-only", [1, 0xff, 0, 0x80, 0x11]),
        ("postfix-no-actions", [1, 0, 0, 1, 0]),
        (
            "postfix-macros-leadspace-mds",
            [1 | (6 << 5), 0, 0, 0x6c, 0],
        ),
        (
            "postfix-small-pipe-reply-policy",
            [1 | (4 << 2), 0, 0, 0, 0],
        ),
    ] {
        push(name, with_header(header, &postfix));
    }
    // The stream carries its own OPTNEG.
    let mut own = vec![Command::OptNeg(OptNeg::POSTFIX)];
    own.extend(conversation(1, body.clone(), Command::Quit));
    push("own-optneg", with_header([0, 0, 0, 0, 0], &own));
    // An old MTA (protocol 2): no NR bits, no SKIP.
    push(
        "v2",
        with_header(
            [3, 0, 0x0f, 0, 0],
            &conversation(1, body.clone(), Command::Quit),
        ),
    );
    // QUIT_NC: the connection is reused for a new SMTP session.
    let mut reuse = conversation(1, body.clone(), Command::QuitNc);
    reuse.extend(conversation(1, body.clone(), Command::Quit));
    push("quit-nc-reuse", with_header([1, 0, 0, 0, 0], &reuse));
    // Prefix 2 (through HELO) and a message whose bytes script EOM changes.
    let mut short = Vec::new();
    message(
        &mut short,
        "4XyZ9",
        b("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e"),
    );
    short.push(Command::Quit);
    for seed in [0u8, 1] {
        push(
            &format!("eom-modifications-{seed}"),
            with_header([2, 0, 0, 0, seed], &short),
        );
    }
    // Every failing decision at HELO, under two policies.
    for (what, range) in [
        ("error", 220..=229),
        ("panic", 230..=235),
        ("hang", 236..=241),
    ] {
        let seed = seed_for_helo(range);
        let tail = [Command::Helo(b("other")), Command::Quit];
        push(
            &format!("helo-{what}"),
            with_header([2, 0, 0, 0, seed], &tail),
        );
        push(
            &format!("helo-{what}-continue-policy"),
            with_header([2 | (2 << 2), 0, 0, 0, seed], &tail),
        );
    }
    // Negotiation callback failures.
    push(
        "negotiate-error",
        with_header([1, 0, 0, 0, 0xee], &[Command::Quit]),
    );
    push(
        "negotiate-panic",
        with_header([1, 0, 0, 0, 0xef], &[Command::Quit]),
    );
    // A body bigger than one pipe buffer, in 64 KiB chunks, after MDS 1M.
    let big = Bytes::from(vec![b'x'; 65535]);
    let mut chunks = vec![
        Command::Mail(env("<a@example.org>", &[])),
        Command::Rcpt(env("<b@example.net>", &[])),
        Command::Data,
        Command::EndOfHeaders,
        Command::Body(big.clone()),
        Command::Body(big),
        Command::EndOfMessage(b("tail\r\n")),
        Command::Quit,
    ];
    push(
        "big-body",
        with_header([2 | (1 << 5), 0, 0, 0x20, 0], &chunks),
    );
    chunks.truncate(4);
    push("unfinished-message", with_header([2, 0, 0, 0, 0], &chunks));
    // Unknown SMTP commands and pipelined packets.
    push(
        "unknown",
        with_header(
            [2, 0, 0, 0, 0],
            &[
                Command::Unknown(b("HELP")),
                Command::Unknown(b("")),
                Command::Quit,
            ],
        ),
    );
    // Hostile bytes.
    push(
        "http-probe",
        [&[0u8, 0, 0, 0, 0][..], b"GET / HTTP/1.0\r\n\r\n"].concat(),
    );
    push("zero-length", vec![1, 0, 0, 0, 0, 0, 0, 0, 0, b'H']);
    push(
        "oversize-length",
        vec![1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, b'B', b'x'],
    );
    push("half-frame", vec![2, 0, 0, 0, 0, 0, 0, 0x10, 0x00, b'B']);
    push(
        "unknown-command-byte",
        vec![2, 0, 0, 0, 0, 0, 0, 0, 1, b'Z'],
    );
    push(
        "out-of-order",
        with_header([1, 0, 0, 0, 0], &[Command::EndOfMessage(Bytes::new())]),
    );
    // The recorded MTA streams (milter-proto/tests/data), continuing.
    for path in capture_files() {
        let data = fs::read(&path).expect("readable capture");
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("a name");
        push(
            &format!("capture-{stem}"),
            [&capture_header(&data, 0)[..], &data].concat(),
        );
    }
    push(
        "optneg-weird",
        with_header(
            [0, 0, 0, 0, 0],
            &[Command::OptNeg(OptNeg {
                version: 13,
                actions: milter_proto::Actions::empty(),
                protocol: ProtocolFlags::from_bits_retain(0xffff_ffff),
            })],
        ),
    );
    out
}

#[test]
fn seed_corpus_is_current() {
    let write = std::env::var_os("MILTER_WRITE_SEEDS").is_some();
    let dir = fuzz_dir().join("corpus").join(TARGET);
    let mut stale = Vec::new();
    for (name, bytes) in seeds() {
        let path = dir.join(&name);
        if write {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &bytes).unwrap();
        } else if fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (regenerate with MILTER_WRITE_SEEDS=1): {stale:#?}"
    );
}

#[test]
fn seeds_pass_the_target() {
    for (name, bytes) in seeds() {
        let ok = catch_unwind(AssertUnwindSafe(|| logic::server_session(&bytes))).is_ok();
        assert!(ok, "seed {name} fails the target");
    }
}

/// With seed 0 the filter continues everywhere: the Postfix-like seeds and
/// the recorded MTA streams get through every message to QUIT without a
/// session error (the target itself accepts a session that ends in error).
#[test]
fn continuing_conversations_complete() {
    let mut checked = 0;
    for (name, bytes) in seeds() {
        let whole = name.starts_with("seed-postfix") || name.starts_with("seed-capture");
        if !whole || bytes[4] != 0 {
            continue;
        }
        let outcome = logic::run(&bytes);
        assert!(outcome.result.is_ok(), "{name}: {:?}", outcome.result);
        let r = responses(&outcome.output);
        let finals = r.iter().filter(|r| r.is_final()).count();
        assert!(finals >= 3, "{name}: {r:?}");
        checked += 1;
    }
    assert!(checked >= 4 + capture_files().len());
}

// ------------------------------------------ found by the robustness runs

/// Adds a header at end of message, then fails (an error, a panic, or
/// never finishing).
struct FailingEom(u8);

#[milter_server::async_trait]
impl milter_server::Milter for FailingEom {
    type Message = ();
    async fn negotiate(
        &mut self,
        _: &OptNeg,
    ) -> Result<milter_server::Options, milter_server::BoxError> {
        Ok(milter_server::Options::new()
            .actions(milter_proto::Actions::ADD_HEADERS)
            .stages(milter_server::Stages::empty()))
    }
    async fn eom(
        &mut self,
        ctx: &mut milter_server::EomContext<'_>,
        _: &mut (),
    ) -> Result<milter_server::Status, milter_server::BoxError> {
        ctx.add_header("X-Failed", "yes")?;
        match self.0 {
            0 => Err("scripted error".into()),
            1 => std::panic::resume_unwind(Box::new("scripted panic")),
            _ => std::future::pending().await,
        }
    }
}

/// Modifications made by an EOM callback that then fails (error, panic,
/// timeout) are not sent, under every failure policy. Found by
/// `hostile failures`: `Conn::end_of_message` used to clear only the
/// body-replacement buffer, so header and envelope changes already encoded
/// by `EomContext::push` went out before the policy's reply (and were
/// applied under `Continue` or `Accept`).
#[tokio::test(start_paused = true)]
async fn failed_eom_callback_sends_no_modifications() {
    for (mode, policy) in [
        (0u8, milter_server::FailurePolicy::Continue),
        (1, milter_server::FailurePolicy::Tempfail),
        (2, milter_server::FailurePolicy::Accept),
    ] {
        let (mta, filter) = tokio::io::duplex(1 << 16);
        let config = milter_server::Config::new()
            .callback_timeout(std::time::Duration::from_secs(1))
            .failure_policy(policy.clone());
        let server = tokio::spawn(async move {
            milter_server::serve_connection(filter, FailingEom(mode), &config).await
        });
        let client = milter_client::Client::default();
        let mut conn = client.handshake(mta).await.expect("negotiates");
        let outcome = conn
            .send_message(
                &milter_client::Message::new()
                    .sender("a@example.org")
                    .rcpt("b@example.net")
                    .body("x\r\n"),
            )
            .await
            .expect("a message outcome");
        conn.quit().await.expect("quit");
        server.await.expect("no panic").expect("clean end");
        assert!(
            outcome.modifications.is_empty(),
            "mode {mode}, policy {policy:?}: {:?} sent by a failed callback",
            outcome.modifications
        );
    }
}
