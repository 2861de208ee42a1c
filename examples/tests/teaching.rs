//! The teaching examples as an operator runs them: real binaries, real
//! sockets, SIGTERM.

mod common;

use std::process::Command;

use common::Milter;
use milter_client::{Message, Modification, Verdict};

/// Sends SIGTERM and returns the exit status (bounded wait).
fn terminate(milter: &mut Milter) -> std::process::ExitStatus {
    milter.signal("TERM");
    milter.wait_exit()
}

fn message() -> Message {
    Message::new()
        .client("client.example", "192.0.2.1:1234".parse().unwrap())
        .helo("client.example")
        .sender("<a@example.org>")
        .rcpt("<b@example.net>")
        .header("Subject", "test")
        .body("hello\r\n")
}

#[tokio::test]
async fn accept_all_accepts_and_exits_cleanly_on_sigterm() {
    let mut milter = Milter::start(
        &mut Command::new(env!("CARGO_BIN_EXE_accept-all")),
        "accept.sock",
    );
    let out = milter.send(&message()).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert!(out.modifications.is_empty());
    let status = terminate(&mut milter);
    assert!(status.success(), "{status}");
    assert!(!milter.socket().exists(), "the socket is removed at exit");
}

#[tokio::test]
async fn add_header_adds_its_header() {
    let mut milter = Milter::start(
        Command::new(env!("CARGO_BIN_EXE_add-header")).args([
            "--name",
            "X-Scanned",
            "--value",
            "by test",
        ]),
        "add.sock",
    );
    let out = milter.send(&message()).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    match out.modifications.as_slice() {
        [Modification::AddHeader { name, value }] => {
            assert_eq!(name.as_ref(), b"X-Scanned");
            assert_eq!(value.as_ref(), b"by test");
        }
        other => panic!("unexpected modifications {other:?}"),
    }
    assert!(terminate(&mut milter).success());
}

#[tokio::test]
async fn inspect_accepts_everything() {
    let mut milter = Milter::start(
        &mut Command::new(env!("CARGO_BIN_EXE_inspect")),
        "inspect.sock",
    );
    let out = milter.send(&message()).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert!(terminate(&mut milter).success());
}

#[test]
fn a_bad_listen_spec_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_accept-all"))
        .args(["--listen", "tcp:25@localhost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcp:25@localhost"), "{err}");
}
