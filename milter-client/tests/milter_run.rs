//! The `milter-run` binary against the fake filter.

mod common;

use std::io::Write;
use std::process::{Command as Process, Output, Stdio};

use common::*;
use milter_client::milter_proto::{Actions, Bytes, Command, OptNeg, ProtocolFlags, Response};

const BIN: &str = env!("CARGO_BIN_EXE_milter-run");
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sample.eml");

/// Runs the binary on the blocking pool while the fake serves on the runtime.
async fn milter_run(args: Vec<String>, stdin: Option<&'static [u8]>) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Process::new(BIN)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn milter-run");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().expect("milter-run output")
    });
    bounded(run).await.unwrap()
}

fn args(spec: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--socket", spec, "--from", "alice@example.org"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[tokio::test]
async fn an_accepted_message_exits_0_and_shows_the_modifications() {
    let fake = Fake::unix(script(
        optneg(
            Actions::ADD_HEADERS | Actions::CHANGE_HEADERS,
            ProtocolFlags::empty(),
        ),
        |cmd| {
            matches!(cmd, Command::EndOfMessage(_)).then(|| {
                Answer::Send(vec![
                    Response::AddHeader {
                        name: Bytes::from_static(b"X-Test"),
                        value: Bytes::from_static(b"passed"),
                    },
                    Response::ChangeHeader {
                        index: 1,
                        name: Bytes::from_static(b"Subject"),
                        value: Bytes::new(),
                    },
                    Response::Continue,
                ])
            })
        },
    ));
    let out = milter_run(
        args(
            &fake.spec,
            &[
                "--rcpt",
                "bob@example.net",
                "--rcpt",
                "<carol@example.net>",
                "--client-ip",
                "192.0.2.7",
                "--client-name",
                "client.example.net",
                "--macro",
                "mail:{auth_authen}=alice",
                SAMPLE,
            ],
        ),
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("negotiated: version 6"), "{stdout}");
    assert!(stdout.contains("add header X-Test: \"passed\""), "{stdout}");
    assert!(stdout.contains("delete header Subject #1"), "{stdout}");
    assert!(
        stdout.contains("result: accepted at EOM: 250 2.0.0 Ok"),
        "{stdout}"
    );
    assert!(stdout.contains("RCPT     <carol@example.net>"), "{stdout}");

    let log = fake.log().await;
    assert_eq!(log[0], Command::OptNeg(OptNeg::POSTFIX));
    let Command::Connect(c) = &log[2] else {
        panic!("{:?}", codes(&log))
    };
    assert_eq!(c.hostname, "client.example.net");
    assert_eq!(c.ip(), Some("192.0.2.7".parse().unwrap()));
    assert!(macros_at(&log, b'M', 0).contains(&("{auth_authen}".into(), "alice".into())));
    let headers = headers(&log);
    assert_eq!(
        headers[2],
        ("Subject".into(), "a folded\n\tsubject line".into())
    );
    assert_eq!(headers.len(), 4);
    assert_eq!(
        body_chunks(&log).concat(),
        b"Hello Bob,\r\n\r\nthis is the body.\r\n"
    );
    assert_eq!(codes(&log).last().map(String::as_str), Some("Q"));
}

#[tokio::test]
async fn a_rejected_message_exits_1() {
    let fake = Fake::unix(script(plain_optneg(), |cmd| {
        matches!(cmd, Command::Rcpt(_)).then(|| {
            Answer::Send(vec![Response::ReplyCode(Bytes::from_static(
                b"550 5.1.1 Unknown user",
            ))])
        })
    }));
    let out = milter_run(
        args(&fake.spec, &["--rcpt", "nobody@example.net", SAMPLE]),
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("result: rejected at RCPT: 550 5.1.1 Unknown user"),
        "{stdout}"
    );
    let codes = codes(&fake.log().await);
    assert!(!codes.contains(&"T".to_string()));
}

#[tokio::test]
async fn stdin_input_and_an_old_protocol_version() {
    let fake = Fake::unix(continue_all(milter_client::milter_proto::OptNegReply {
        version: 2,
        actions: Actions::empty(),
        protocol: ProtocolFlags::empty(),
        macros: milter_client::milter_proto::MacroLists::default(),
    }));
    let out = milter_run(
        args(
            &fake.spec,
            &["--rcpt", "bob@example.net", "--protocol-version", "2", "-"],
        ),
        Some(b"Subject: from stdin\r\n\r\nbody\r\n"),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("DATA"), "{stdout}");
    assert!(stdout.contains("not sent"), "{stdout}");
    let log = fake.log().await;
    assert_eq!(log[0], Command::OptNeg(OptNeg::V2));
    assert!(
        log.iter()
            .any(|c| matches!(c, Command::Header(h) if h.value == "from stdin"))
    );
}

#[tokio::test]
async fn errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("unix:{}/none.sock", dir.path().display());
    let out = milter_run(args(&spec, &["--rcpt", "bob@example.net", SAMPLE]), None).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("milter-run: error: connecting to the milter"),
        "{stderr}"
    );

    // A filter that breaks the protocol.
    let fake = Fake::unix(script(plain_optneg(), |cmd| {
        matches!(cmd, Command::Mail(_)).then(|| Answer::Raw(b"GET / HTTP/1.0".to_vec()))
    }));
    let out = milter_run(
        args(&fake.spec, &["--rcpt", "bob@example.net", SAMPLE]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not speaking the milter protocol"),
        "{stderr}"
    );
    fake.log().await;

    // Bad arguments.
    for [option, value] in [["--macro", "nowhere:a=b"], ["--protocol-version", "7"]] {
        let out = milter_run(
            args("unix:/x", &["--rcpt", "b@x", option, value, SAMPLE]),
            None,
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "{option} {value}");
    }
}
