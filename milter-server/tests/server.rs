//! Black-box tests: real sockets, driven by milter-client.

mod common;

use std::time::Duration;

use common::{Log, Scripted, start_scripted, start_tcp, start_unix};
use milter_client::{Client, ClientConfig, ClientError, Message, Modification, Reply, Verdict};
use milter_proto::{Actions, ConnectAddress, MacroStage, OptNeg, ProtocolFlags};
use milter_server::{Config, FailurePolicy, Options, OverLimit, Stages};

fn client() -> Client {
    Client::new(ClientConfig::default().with_timeouts(Duration::from_secs(10)))
}

fn message(from: &str) -> Message {
    Message::new()
        .client("client.example", "192.0.2.7:4321".parse().unwrap())
        .helo("client.example")
        .sender(from)
        .rcpt("<bob@example.net>")
        .header("Subject", "hello")
        .header("X-Remove", "me")
        .body("line one\r\nline two\r\n")
}

#[tokio::test]
async fn every_callback_runs_in_order_with_macros() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    assert_eq!(conn.agreed().version, 6);
    let r = conn
        .connect(
            &[("j", "mx.example")],
            "client.example",
            ConnectAddress::Inet("192.0.2.7:4321".parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r, Reply::Continue);
    assert_eq!(
        conn.helo(&[], "client.example").await.unwrap(),
        Reply::Continue
    );
    let r = conn
        .mail(
            &[("{auth_authen}", "alice"), ("i", "Q1")],
            "<alice@x>",
            &["SIZE=100", "BODY=8BITMIME"],
        )
        .await
        .unwrap();
    assert_eq!(r, Reply::Continue);
    assert_eq!(
        conn.rcpt(&[], "<bob@x>", &[] as &[&str]).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(conn.data(&[]).await.unwrap(), Reply::Continue);
    assert_eq!(
        conn.header(&[], "Subject", "hi").await.unwrap(),
        Reply::Continue
    );
    assert_eq!(
        conn.header(&[], "X-Empty", "").await.unwrap(),
        Reply::Continue
    );
    assert_eq!(conn.end_of_headers(&[]).await.unwrap(), Reply::Continue);
    assert_eq!(
        conn.body(&[], b"hello\r\n".as_slice()).await.unwrap(),
        Reply::Continue
    );
    let eom = conn.end_of_message(&[("i", "Q1")]).await.unwrap();
    assert_eq!(eom.reply, Reply::Continue);
    assert!(eom.modifications.is_empty());
    conn.quit().await.unwrap();
    server.stop().await;
    assert_eq!(
        log.take(),
        vec![
            "negotiate v6",
            "connect client.example Some(192.0.2.7) j=Some(\"mx.example\")",
            "helo client.example",
            "mail <alice@x> [\"SIZE=100\", \"BODY=8BITMIME\"] auth=Some(\"alice\")",
            "rcpt <bob@x>",
            "data",
            "header Subject: hi",
            "header X-Empty: ",
            "eoh",
            "body 7",
            "eom rcpts=1 headers=2 body=7 queue=Some(\"Q1\")",
            "close",
        ]
    );
}

#[tokio::test]
async fn every_modification_reaches_the_mta() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    let out = conn.send_message(&message("<mods@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    let kinds: Vec<String> = out
        .modifications
        .iter()
        .map(|m| match m {
            Modification::AddHeader { name, value } => format!("add {}={}", s(name), s(value)),
            Modification::InsertHeader { index, name, value } => {
                format!("ins {index} {}={}", s(name), s(value))
            }
            Modification::ChangeHeader { index, name, value } => {
                format!("chg {index} {}={}", s(name), s(value))
            }
            Modification::ChangeFrom { address, args } => {
                format!("from {} {:?}", s(address), args.as_deref().map(s))
            }
            Modification::AddRcpt { address } => format!("addrcpt {}", s(address)),
            Modification::AddRcptPar { address, args } => {
                format!("addrcpt2 {} {:?}", s(address), args.as_deref().map(s))
            }
            Modification::DeleteRcpt { address } => format!("delrcpt {}", s(address)),
            Modification::ReplaceBody(b) => format!("body {} bytes", b.len()),
            Modification::Quarantine { reason } => format!("quarantine {}", s(reason)),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "add X-Added=one",
            "ins 0 X-Inserted=top",
            "chg 1 Subject=changed",
            "chg 1 X-Remove=",
            "from <new@x> Some(\"RET=HDRS\")",
            "addrcpt <added@x>",
            "addrcpt2 <added2@x> Some(\"NOTIFY=NEVER\")",
            "delrcpt <gone@x>",
            "quarantine held for review",
            "body 70000 bytes",
        ]
    );
    server.stop().await;
}

/// A unix connection waits for read readiness only, until a write would
/// block: a body of 1 MiB in, a replacement body of 4 MiB out (more than
/// a socket buffer holds), then another message on the same connection.
#[tokio::test]
async fn large_transfers_both_ways_over_a_unix_socket() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    send_big_body(&mut conn).await;
    let out = conn.send_message(&next_message("<mods@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(out.modifications.len(), 10);
    let seen = log.take();
    let eoms: Vec<&String> = seen.iter().filter(|l| l.starts_with("eom ")).collect();
    assert_eq!(eoms.len(), 2, "{seen:?}");
    assert!(eoms[0].contains("body=1048576"), "{}", eoms[0]);
    server.stop().await;
}

/// Sends 1 MiB of body for a 4 MiB replacement body, and checks it.
async fn send_big_body(conn: &mut milter_client::Connection) {
    let msg = message("<bigbody@x>").body(common::big_body(1 << 20));
    let out = conn.send_message(&msg).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    let mut body = Vec::new();
    for m in &out.modifications {
        match m {
            Modification::ReplaceBody(chunk) => body.extend_from_slice(chunk),
            other => panic!("unexpected modification {other:?}"),
        }
    }
    assert_eq!(body.len(), 4 << 20);
    assert!(
        body == common::big_body(4 << 20),
        "the replacement body differs"
    );
}

/// An accept loop of one's own: a `UnixConnection` made from a blocking
/// std stream serves a session to its QUIT.
#[tokio::test]
async fn serve_connection_on_a_unix_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let log = Log::default();
    let filter = Scripted::new(&log);
    let session = tokio::spawn(async move {
        let accepting = tokio::task::spawn_blocking(move || listener.accept());
        let (stream, _) = accepting.await.unwrap().unwrap();
        let io = milter_server::UnixConnection::new(stream).unwrap();
        milter_server::serve_connection(io, filter, &Config::default()).await
    });
    let spec = format!("unix:{}", path.display());
    let mut conn = client().connect(spec.as_str()).await.unwrap();
    send_big_body(&mut conn).await;
    conn.quit().await.unwrap();
    session.await.unwrap().unwrap();
    assert!(log.take().iter().any(|l| l == "close"), "no close callback");
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn a_modification_that_was_not_negotiated_is_an_action_error() {
    let log = Log::default();
    // No actions at all: add_header fails with ActionError, which the
    // callback returns, so the failure policy (tempfail) answers.
    let server = start_scripted(&log, Options::new()).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    let out = conn.send_message(&message("<mods@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Tempfailed);
    assert!(
        out.modifications.is_empty(),
        "no modification of a failed callback is sent"
    );
    server.stop().await;
}

#[tokio::test]
async fn decisions_and_custom_replies() {
    let log = Log::default();
    let l = log.clone();
    let server = start_tcp(move || Scripted::new(&l), Config::default()).await;
    let mut conn = connected(&server.spec).await;

    let out = conn
        .send_message(&next_message("<reject@x>"))
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Rejected);

    let out = conn.send_message(&next_message("<reply@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(
        out.reply.unwrap().as_bytes(),
        b"550-5.7.1 first line\r\n550 5.7.1 100%% second line"
    );

    // A tempfailed recipient drops only that recipient.
    let m = next_message("<a@x>").rcpt("<tempfail@x>");
    let out = conn.send_message(&m).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(out.rejected_recipients.len(), 1);
    assert_eq!(
        out.accepted_recipients,
        vec!["<bob@example.net>".to_string()]
    );

    let out = conn
        .send_message(&next_message("<eomreject@x>"))
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(out.reply.unwrap().as_bytes(), b"554 5.7.1 content rejected");

    let out = conn
        .send_message(&next_message("<discard@x>"))
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Discarded);

    // Accept at MAIL ends the message: nothing more is sent for it.
    let out = conn
        .send_message(&next_message("<accept@x>"))
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    conn.quit().await.unwrap();
    server.stop().await;
    let seen = log.take();
    assert!(seen.contains(&"rcpt <tempfail@x>".to_string()));
    // The accepted-at-MAIL message got no RCPT callback.
    let after_accept = seen
        .iter()
        .skip_while(|l| !l.starts_with("mail <accept@x>"))
        .nth(1);
    assert_eq!(after_accept.map(String::as_str), Some("close"));
}

#[tokio::test]
async fn several_messages_per_connection_with_abort_between() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = connected(&server.spec).await;
    for i in 0..3 {
        let m = if i == 0 {
            next_message("<a@x>")
        } else {
            Message::new()
                .sender(&format!("<m{i}@x>"))
                .rcpt("<b@x>")
                .body("x\r\n")
        };
        let out = conn.send_message(&m).await.unwrap();
        assert_eq!(out.verdict, Verdict::Accepted);
    }
    // A message aborted half way: the abort callback gets its state.
    conn.mail(&[], "<half@x>", &[] as &[&str]).await.unwrap();
    conn.rcpt(&[], "<b@x>", &[] as &[&str]).await.unwrap();
    conn.abort().await.unwrap();
    // MAIL inside a message (no ABORT) aborts implicitly.
    conn.mail(&[], "<one@x>", &[] as &[&str]).await.unwrap();
    conn.flush().await.unwrap();
    let mut raw = milter_proto::BytesMut::new();
    milter_proto::Command::Mail(milter_proto::Envelope::new("<two@x>", [] as [&str; 0]).unwrap())
        .encode(&mut raw, 65535)
        .unwrap();
    conn.send_raw(&raw).await.unwrap();
    assert_eq!(
        conn.read_response().await.unwrap(),
        milter_proto::Response::Continue
    );
    server.stop().await;
    let seen = log.take();
    let eoms = seen.iter().filter(|l| l.starts_with("eom rcpts=1")).count();
    assert_eq!(eoms, 3, "{seen:?}");
    assert!(
        seen.contains(&"abort from=<half@x>".to_string()),
        "{seen:?}"
    );
    assert!(seen.contains(&"abort from=<one@x>".to_string()), "{seen:?}");
}

#[tokio::test]
async fn quit_nc_reuses_the_connection() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    let addr = ConnectAddress::Inet("192.0.2.1:25".parse().unwrap());
    conn.connect(&[], "one.example", addr.clone())
        .await
        .unwrap();
    conn.quit_nc().await.unwrap();
    let r = conn.connect(&[], "two.example", addr).await.unwrap();
    assert_eq!(r, Reply::Continue);
    conn.quit().await.unwrap();
    server.stop().await;
    let seen = log.take();
    assert_eq!(seen.iter().filter(|l| l.starts_with("connect")).count(), 2);
    assert_eq!(seen.iter().filter(|l| *l == "close").count(), 2);
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("negotiate")).count(),
        1
    );
}

#[tokio::test]
async fn unimplemented_stages_are_negotiated_away_and_no_reply_is_honoured() {
    let log = Log::default();
    let options = Options::new()
        .stages(Stages::MAIL | Stages::HEADER)
        .no_reply(Stages::HEADER)
        .macros(MacroStage::Mail, "i");
    let server = start_scripted(&log, options).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    let p = conn.agreed().protocol;
    for no in [
        ProtocolFlags::NO_CONNECT,
        ProtocolFlags::NO_HELO,
        ProtocolFlags::NO_RCPT,
        ProtocolFlags::NO_BODY,
        ProtocolFlags::NO_EOH,
        ProtocolFlags::NO_DATA,
        ProtocolFlags::NO_UNKNOWN,
        ProtocolFlags::NR_HEADER,
    ] {
        assert!(p.contains(no), "{no:?} missing from {p:?}");
    }
    assert!(!p.contains(ProtocolFlags::NO_MAIL));
    assert_eq!(
        conn.agreed().requested_macros(MacroStage::Mail),
        Some(vec!["i"])
    );
    let out = conn.send_message(&message("<a@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    conn.quit().await.unwrap();
    server.stop().await;
    let seen = log.take();
    assert!(seen.iter().any(|l| l.starts_with("mail <a@x>")));
    assert!(seen.iter().any(|l| l.starts_with("header Subject")));
    assert!(
        !seen.iter().any(|l| l.starts_with("rcpt")
            || l.starts_with("body")
            || l.starts_with("helo")
            || l.starts_with("connect")),
        "{seen:?}"
    );
}

/// An MTA that offers no `NO*` bits sends every stage; the ones the filter
/// has no callback for are answered with CONTINUE without calling it (a
/// `<tempfail@x>` recipient would be refused if `envrcpt` ran). (An offer
/// of no bits at all means the version 1 set, as in libmilter, so this
/// one offers only SKIP.)
#[tokio::test]
async fn stages_the_mta_cannot_skip_are_answered_without_the_callback() {
    let log = Log::default();
    let options = Options::new().stages(Stages::MAIL);
    let server = start_scripted(&log, options).await;
    let offer = OptNeg {
        version: 6,
        actions: Actions::all(),
        protocol: ProtocolFlags::SKIP,
    };
    let c = Client::new(
        ClientConfig::default()
            .with_offer(offer)
            .with_timeouts(Duration::from_secs(10)),
    );
    let mut conn = c.connect(server.spec.as_str()).await.unwrap();
    assert_eq!(conn.agreed().protocol, ProtocolFlags::SKIP);
    let inet = ConnectAddress::Inet("192.0.2.7:4321".parse().unwrap());
    assert_eq!(
        conn.connect(&[], "client.example", inet).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(conn.helo(&[], "c").await.unwrap(), Reply::Continue);
    let no_args: &[&str] = &[];
    assert_eq!(
        conn.mail(&[("i", "Q2")], "<a@x>", no_args).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(
        conn.rcpt(&[], "<tempfail@x>", no_args).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(conn.data(&[]).await.unwrap(), Reply::Continue);
    assert_eq!(
        conn.header(&[], "Subject", "hi").await.unwrap(),
        Reply::Continue
    );
    assert_eq!(conn.end_of_headers(&[]).await.unwrap(), Reply::Continue);
    assert_eq!(
        conn.body(&[], b"text".as_slice()).await.unwrap(),
        Reply::Continue
    );
    let eom = conn.end_of_message(&[]).await.unwrap();
    assert_eq!(eom.reply, Reply::Continue);
    conn.quit().await.unwrap();
    server.stop().await;
    let seen = log.take();
    assert!(seen.iter().any(|l| l.starts_with("mail <a@x>")), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("eom rcpts=0 headers=0 body=0")),
        "{seen:?}"
    );
    for stage in ["connect", "helo", "rcpt", "data", "header", "eoh", "body"] {
        assert!(
            !seen.iter().any(|l| l.starts_with(stage)),
            "{stage} callback ran: {seen:?}"
        );
    }
}

#[tokio::test]
async fn no_reply_is_faked_for_an_mta_that_does_not_know_it() {
    let log = Log::default();
    let options = Options::new().no_reply(Stages::HEADER | Stages::BODY);
    let server = start_scripted(&log, options).await;
    // A version 2 MTA (Postfix milter_protocol = 2): no NR bits, no DATA.
    let c = Client::new(ClientConfig::default().with_offer(OptNeg::V2));
    let mut conn = c.connect(server.spec.as_str()).await.unwrap();
    assert_eq!(conn.agreed().version, 2);
    assert!(!conn.agreed().protocol.intersects(ProtocolFlags::ALL_NR));
    let out = conn.send_message(&message("<a@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    conn.quit().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn skip_stops_body_chunks_when_the_mta_offers_it() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = connected(&server.spec).await;
    assert!(conn.agreed().protocol.contains(ProtocolFlags::SKIP));
    conn.mail(&[], "<a@x>", &[] as &[&str]).await.unwrap();
    conn.rcpt(&[], "<b@x>", &[] as &[&str]).await.unwrap();
    assert_eq!(
        conn.body(&[], b"SKIP the rest".as_slice()).await.unwrap(),
        Reply::Skip
    );
    assert_eq!(
        conn.body(&[], b"more".as_slice()).await.unwrap(),
        Reply::NotSent
    );
    let eom = conn.end_of_message(&[]).await.unwrap();
    assert_eq!(eom.reply, Reply::Continue);
    server.stop().await;
}

#[tokio::test]
async fn mds_is_used_when_offered_and_wanted() {
    let log = Log::default();
    let mut options = Options::new();
    options.max_data_size = milter_proto::frame::MAX_DATA_SIZE_1M;
    let server = start_scripted(&log, options).await;
    let offer = OptNeg {
        version: 6,
        actions: Actions::all(),
        protocol: ProtocolFlags::V6 | ProtocolFlags::MDS_1M,
    };
    let c = Client::new(ClientConfig::default().with_offer(offer));
    let mut conn = c.connect(server.spec.as_str()).await.unwrap();
    assert!(conn.agreed().protocol.contains(ProtocolFlags::MDS_1M));
    conn.connect(&[], "c", ConnectAddress::Unknown)
        .await
        .unwrap();
    // A 200 KiB header value passes (Postfix may send such headers).
    conn.mail(&[], "<a@x>", &[] as &[&str]).await.unwrap();
    conn.rcpt(&[], "<b@x>", &[] as &[&str]).await.unwrap();
    let big = "v".repeat(200 * 1024);
    assert_eq!(
        conn.header(&[], "X-Big", big.as_str()).await.unwrap(),
        Reply::Continue
    );
    server.stop().await;
}

#[tokio::test]
async fn callback_error_panic_and_timeout_answer_with_the_policy() {
    let log = Log::default();
    let l = log.clone();
    let config = Config::default().callback_timeout(Duration::from_millis(300));
    let server = start_unix(move || Scripted::new(&l), config).await;
    for from in ["<error@x>", "<panic@x>", "<hang@x>"] {
        let mut conn = connected(&server.spec).await;
        let out = conn.send_message(&next_message(from)).await.unwrap();
        assert_eq!(out.verdict, Verdict::Tempfailed, "{from}");
        // The session goes on after the failure.
        let out = conn.send_message(&next_message("<fine@x>")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Accepted, "{from}");
        conn.quit().await.unwrap();
    }
    server.stop().await;

    // A fail-open policy continues instead.
    let l = log.clone();
    let config = Config::default().failure_policy(FailurePolicy::Continue);
    let server = start_unix(move || Scripted::new(&l), config).await;
    let mut conn = connected(&server.spec).await;
    let out = conn.send_message(&next_message("<panic@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    server.stop().await;
}

/// Most callbacks decide on their first poll; these wait first (a timer, a
/// wake-up during the first poll, another task's message) and their
/// decision must still arrive, for a stage command, CONNECT and HELO, on a
/// session that goes on afterwards.
#[tokio::test]
async fn callbacks_that_wait_decide_after_the_wait() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    assert_eq!(
        conn.connect(&[], "wait.example", ConnectAddress::Unknown)
            .await
            .unwrap(),
        Reply::Tempfail
    );
    assert_eq!(conn.helo(&[], "wait").await.unwrap(), Reply::Tempfail);
    assert_eq!(conn.helo(&[], "now").await.unwrap(), Reply::Continue);
    for from in ["<sleep@x>", "<yield@x>", "<woken@x>"] {
        let out = conn.send_message(&next_message(from)).await.unwrap();
        assert_eq!(out.verdict, Verdict::Rejected, "{from}");
        let out = conn.send_message(&next_message("<fine@x>")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Accepted, "after {from}");
    }
    conn.quit().await.unwrap();
    server.stop().await;
    let log = log.take();
    assert!(log.contains(&"helo now".to_string()), "{log:?}");
    assert!(log.contains(&"close".to_string()), "{log:?}");
}

#[tokio::test]
async fn unknown_command_reaches_its_callback() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let mut conn = client().connect(server.spec.as_str()).await.unwrap();
    conn.connect(&[], "h", ConnectAddress::Unknown)
        .await
        .unwrap();
    assert_eq!(conn.unknown(&[], "XFOO bar").await.unwrap(), Reply::Reject);
    server.stop().await;
    assert!(log.take().contains(&"unknown XFOO bar".to_string()));
}

/// A connection past CONNECT, ready for messages.
async fn connected(spec: &str) -> milter_client::Connection {
    let mut conn = client().connect(spec).await.unwrap();
    conn.connect(
        &[],
        "client.example",
        ConnectAddress::Inet("192.0.2.7:4321".parse().unwrap()),
    )
    .await
    .unwrap();
    conn
}

/// A message for a connection that already saw CONNECT.
fn next_message(from: &str) -> Message {
    Message::new()
        .sender(from)
        .rcpt("<bob@example.net>")
        .header("Subject", "hello")
        .header("X-Remove", "me")
        .body("line one\r\nline two\r\n")
}

/// A raw connection that negotiated, for malformed input.
async fn negotiated(spec: &str) -> milter_client::Connection {
    client().connect(spec).await.unwrap()
}

async fn expect_closed(conn: &mut milter_client::Connection) {
    match tokio::time::timeout(Duration::from_secs(10), conn.read_frame()).await {
        Ok(Err(ClientError::Closed)) | Ok(Err(ClientError::Io(_))) => {}
        other => panic!("expected the server to close the session, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_input_closes_only_that_session() {
    let log = Log::default();
    let l = log.clone();
    let config = Config::default().idle_timeout(Duration::from_secs(2));
    let server = start_unix(move || Scripted::new(&l), config).await;
    let mut good = negotiated(&server.spec).await;
    good.connect(&[], "good", ConnectAddress::Unknown)
        .await
        .unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 0", vec![0, 0, 0, 0]),
        (
            "length over the maximum",
            vec![0x7f, 0xff, 0xff, 0xff, b'B'],
        ),
        ("HTTP probe", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        ("unknown command", vec![0, 0, 0, 1, b'Z']),
        ("truncated payload", vec![0, 0, 0, 3, b'H', b'x', b'y']),
        ("out of order", vec![0, 0, 0, 1, b'N']),
    ];
    for (what, bytes) in cases {
        let mut bad = negotiated(&server.spec).await;
        bad.send_raw(&bytes).await.unwrap();
        expect_closed(&mut bad).await;
        // The good session still works.
        assert_eq!(
            good.helo(&[], what).await.unwrap(),
            Reply::Continue,
            "after {what}"
        );
    }
    good.quit().await.unwrap();
    // Half a frame, then silence: closed at the idle timeout; a session
    // opened meanwhile is served.
    let mut slow = negotiated(&server.spec).await;
    slow.send_raw(&[0, 0, 0, 9, b'H', b'a']).await.unwrap();
    let mut other = negotiated(&server.spec).await;
    other
        .connect(&[], "other", ConnectAddress::Unknown)
        .await
        .unwrap();
    assert_eq!(other.helo(&[], "x").await.unwrap(), Reply::Continue);
    expect_closed(&mut slow).await;
    server.stop().await;
}

/// An MTA that stops reading: the end-of-message reply (a 4 MiB body
/// replacement) fills the socket, the session is closed at the write
/// timeout, and a session beside it is served throughout.
#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_at_the_write_timeout() {
    let log = Log::default();
    let l = log.clone();
    let config = Config::default().write_timeout(Duration::from_millis(300));
    let server = start_unix(move || Scripted::new(&l), config).await;
    let mut good = connected(&server.spec).await;
    let mut stuck = connected(&server.spec).await;
    stuck.mail(&[], "<bigbody@x>", &[]).await.unwrap();
    stuck.rcpt(&[], "<bob@example.net>", &[]).await.unwrap();
    stuck.body(&[], "hello\r\n").await.unwrap();
    // End of message, and no more reading for a while.
    stuck.send_raw(&[0, 0, 0, 1, b'E']).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = good.send_message(&next_message("<a@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // What the socket held arrives, then the end of the connection.
    let mut body = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stuck.read_frame()).await {
            Ok(Ok(frame)) => body += frame.payload.len(),
            Ok(Err(ClientError::Closed | ClientError::Io(_))) => break,
            other => panic!("expected frames, then the end of the session: {other:?}"),
        }
    }
    assert!(body < 4 << 20, "the whole body arrived ({body} bytes)");
    let out = good.send_message(&next_message("<b@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    good.quit().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_sessions() {
    let log = Log::default();
    let server = start_scripted(&log, Options::new().stages(Stages::RCPT)).await;
    let spec = server.spec.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let spec = spec.clone();
        tasks.spawn(async move {
            let mut conn = client().connect(spec.as_str()).await?;
            let m = Message::new()
                .sender(&format!("<s{i}@x>"))
                .rcpt("<r@x>")
                .body("x\r\n");
            let out = conn.send_message(&m).await?;
            conn.quit().await?;
            Ok::<_, ClientError>(out.verdict)
        });
    }
    let mut accepted = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap(), Verdict::Accepted);
        accepted += 1;
    }
    assert_eq!(accepted, 1000);
    server.stop().await;
    assert_eq!(
        log.take().iter().filter(|l| l.starts_with("rcpt")).count(),
        1000
    );
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections() {
    let log = Log::default();
    let l = log.clone();
    let config = Config::default()
        .max_connections(2)
        .over_limit(OverLimit::Refuse);
    let server = start_unix(move || Scripted::new(&l), config).await;
    let mut a = negotiated(&server.spec).await;
    let mut b = negotiated(&server.spec).await;
    // The third is accepted and closed at once: negotiation fails.
    let third = client().connect(server.spec.as_str()).await;
    assert!(third.is_err(), "third connection must be refused");
    // Once one ends, a new one is served.
    a.connect(&[], "a", ConnectAddress::Unknown).await.unwrap();
    a.quit().await.unwrap();
    let mut ok = None;
    for _ in 0..100 {
        if let Ok(c) = client().connect(server.spec.as_str()).await {
            ok = Some(c);
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok.is_some(), "a slot was freed");
    b.connect(&[], "b", ConnectAddress::Unknown).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn connection_limit_makes_extra_connections_wait() {
    let log = Log::default();
    let l = log.clone();
    let config = Config::default().max_connections(1);
    let server = start_unix(move || Scripted::new(&l), config).await;
    let mut a = negotiated(&server.spec).await;
    let spec = server.spec.clone();
    let waiting = tokio::spawn(async move { client().connect(spec.as_str()).await.map(|_| ()) });
    a.connect(&[], "a", ConnectAddress::Unknown).await.unwrap();
    a.quit().await.unwrap();
    // The waiting connection is served once the first one ends.
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_message_in_flight() {
    let log = Log::default();
    let l = log.clone();
    let server = start_unix(move || Scripted::new(&l), Config::default()).await;
    let spec = server.spec.clone();
    let path = spec.trim_start_matches("unix:").to_string();
    let mut busy = connected(&spec).await;
    let mut idle = negotiated(&spec).await;
    idle.connect(&[], "idle", ConnectAddress::Unknown)
        .await
        .unwrap();
    busy.mail(&[], "<a@x>", &[] as &[&str]).await.unwrap();
    busy.rcpt(&[], "<b@x>", &[] as &[&str]).await.unwrap();
    let Running { stop, handle, .. } = server;
    stop.unwrap().send(()).unwrap();
    // The idle session is closed...
    expect_closed(&mut idle).await;
    // ...the busy one may finish its message...
    assert_eq!(
        busy.body(&[], b"x".as_slice()).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(
        busy.end_of_message(&[]).await.unwrap().reply,
        Reply::Continue
    );
    // ...and is then closed; the server returns and removes its socket.
    expect_closed(&mut busy).await;
    handle.await.unwrap().unwrap();
    assert!(!std::path::Path::new(&path).exists(), "socket file removed");
}

use common::Running;

#[tokio::test]
async fn drain_deadline_cuts_stuck_sessions() {
    let log = Log::default();
    let l = log.clone();
    let config = Config::default().drain_timeout(Duration::from_millis(200));
    let server = start_unix(move || Scripted::new(&l), config).await;
    let mut busy = connected(&server.spec).await;
    busy.mail(&[], "<a@x>", &[] as &[&str]).await.unwrap();
    // The MTA never finishes the message; shutdown must still complete.
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .unwrap();
    expect_closed(&mut busy).await;
    assert!(log.take().contains(&"abort from=<a@x>".to_string()));
}

#[tokio::test]
async fn stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let spec = format!("unix:{}", path.display());
    // A stale socket file (nobody listening) is removed.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let live = milter_server::Listener::bind(&spec).await.unwrap();
    // A live socket is refused.
    let err = milter_server::Listener::bind(&spec).await.unwrap_err();
    assert!(
        err.to_string().contains("another process is listening"),
        "{err}"
    );
    drop(live);
    // A regular file is never removed.
    let file = dir.path().join("file");
    std::fs::write(&file, b"data").unwrap();
    let err = milter_server::Listener::bind(&format!("unix:{}", file.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, milter_server::Error::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    // Bad specifications are clear errors naming the spec.
    let err = milter_server::Listener::bind("tcp:25@localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tcp:25@localhost"), "{err}");
}

#[tokio::test]
async fn unix_socket_mode_is_applied() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let spec = milter_proto::SocketSpec::Unix(path.clone());
    let _l =
        milter_server::Listener::bind_with(&spec, &milter_server::SocketOptions::new().mode(0o666))
            .await
            .unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o666
    );
    let err = milter_server::Listener::bind_with(
        &milter_proto::SocketSpec::Unix(dir.path().join("o.sock")),
        &milter_server::SocketOptions::new().owner("no-such-user-here"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no-such-user-here"), "{err}");
}

/// What an idle connection costs is mostly its session future: the state
/// kept across awaits. It was 1,640 bytes before the per-command and
/// write-timeout futures were boxed, the per-message state moved behind a
/// box and only the used part of the negotiation kept (1,064 now); this
/// keeps it from growing back unnoticed. (A session's task is this future
/// plus tokio's header and the connection-limit permit; benches/load.md
/// has the measured RSS per idle connection.)
#[test]
fn a_session_future_stays_small() {
    struct Nothing;
    #[milter_server::async_trait]
    impl milter_server::Milter for Nothing {
        type Message = ();
    }
    let (io, _peer) = tokio::io::duplex(64);
    let config = Config::default();
    let session = milter_server::serve_connection(io, Nothing, &config);
    let size = std::mem::size_of_val(&session);
    assert!(size <= 1100, "the session future grew to {size} bytes");
}

#[tokio::test]
async fn shutdown_is_seen_while_connections_keep_arriving() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flood.sock");
    let spec = format!("unix:{}", path.display());
    let listener = milter_server::Listener::bind(&spec).await.unwrap();
    // Every connection already waits in the backlog, so an accept is
    // always ready: the server must still see that it is to shut down.
    let waiting: Vec<_> = (0..300)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
        .collect();
    // Let the runtime see the listener readable.
    tokio::task::yield_now().await;
    let made = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&made);
    let log = Log::default();
    let serve = milter_server::Server::new(move || {
        m.fetch_add(1, Ordering::Relaxed);
        Scripted::new(&log)
    })
    .serve(listener, std::future::ready(()));
    tokio::time::timeout(Duration::from_secs(30), serve)
        .await
        .expect("the server stops")
        .unwrap();
    let accepted = made.load(Ordering::Relaxed);
    assert!(accepted > 0, "waiting connections are accepted first");
    assert!(
        accepted < waiting.len(),
        "shutdown was seen only after all {accepted} waiting connections were accepted"
    );
}
