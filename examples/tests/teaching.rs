//! The teaching examples as an operator runs them: real binaries, real
//! sockets, SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use milter_client::{Client, ClientConfig, Message, Modification, Verdict};

/// Starts an example binary on a unix socket and waits (bounded) until it
/// accepts connections.
fn start(bin: &str, socket: &Path, extra: &[&str]) -> Child {
    let child = Command::new(bin)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "{bin} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends SIGTERM and returns the exit status (bounded wait).
fn terminate(mut child: Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
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

async fn send(socket: &Path) -> milter_client::MessageOutcome {
    let client = Client::new(ClientConfig::default().with_timeouts(Duration::from_secs(10)));
    let spec = format!("unix:{}", socket.display());
    let mut conn = client.connect(spec.as_str()).await.unwrap();
    let out = conn.send_message(&message()).await.unwrap();
    conn.quit().await.unwrap();
    out
}

#[tokio::test]
async fn accept_all_accepts_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("accept.sock");
    let child = start(env!("CARGO_BIN_EXE_accept-all"), &socket, &[]);
    let out = send(&socket).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert!(out.modifications.is_empty());
    let status = terminate(child);
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[tokio::test]
async fn add_header_adds_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("add.sock");
    let child = start(
        env!("CARGO_BIN_EXE_add-header"),
        &socket,
        &["--name", "X-Scanned", "--value", "by test"],
    );
    let out = send(&socket).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    match out.modifications.as_slice() {
        [Modification::AddHeader { name, value }] => {
            assert_eq!(name.as_ref(), b"X-Scanned");
            assert_eq!(value.as_ref(), b"by test");
        }
        other => panic!("unexpected modifications {other:?}"),
    }
    assert!(terminate(child).success());
}

#[tokio::test]
async fn inspect_accepts_everything() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("inspect.sock");
    let child = start(env!("CARGO_BIN_EXE_inspect"), &socket, &[]);
    let out = send(&socket).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert!(terminate(child).success());
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
