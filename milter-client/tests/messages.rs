//! Whole messages through `send_message`, and the failure policy.

mod common;

use std::time::Duration;

use common::*;
use milter_client::milter_proto::{Actions, Bytes, Command, ProtocolFlags, Response};
use milter_client::{
    Client, ClientConfig, ClientError, FailurePolicy, Message, Modification, Reply, Stage, Verdict,
};

fn message() -> Message {
    Message::new()
        .client("client.example.net", "192.0.2.1:4567".parse().unwrap())
        .helo("client.example.net")
        .sender("alice@example.org")
        .sender_args(["SIZE=100"])
        .rcpt("bob@example.net")
        .rcpt_with_args("carol@example.net", ["NOTIFY=NEVER"])
        .header("Subject", "hello")
        .header_raw("X-Folded", " one\n\ttwo")
        .body("Hi.\r\n")
        .queue_id("4QUEUE")
}

async fn run(
    reply: milter_client::milter_proto::OptNegReply,
    f: impl FnMut(&Command) -> Option<Answer> + Send + 'static,
    m: &Message,
) -> (milter_client::MessageOutcome, Vec<Command>) {
    let (fake, mut conn) = connected(script(reply, f)).await;
    let out = bounded(conn.send_message(m)).await.unwrap();
    bounded(conn.quit()).await.unwrap();
    (out, fake.log().await)
}

/// `message()` through a v6 filter that negotiates nothing special and
/// answers `r` to the first command `code`.
async fn run_answering(code: u8, r: Response) -> (milter_client::MessageOutcome, Vec<Command>) {
    run(plain_optneg(), answer_at(code, r), &message()).await
}

fn answer_at(code: u8, r: Response) -> impl FnMut(&Command) -> Option<Answer> + Send + 'static {
    let mut r = Some(r);
    move |cmd| {
        if cmd.code() == code {
            r.take().map(|r| Answer::Send(vec![r]))
        } else {
            None
        }
    }
}

#[tokio::test]
async fn a_clean_message_goes_through_every_stage_and_ends_with_abort() {
    let fake_reply = optneg(Actions::ADD_HEADERS, ProtocolFlags::empty());
    let (out, log) = run(
        fake_reply,
        |cmd| {
            matches!(cmd, Command::EndOfMessage(_)).then(|| {
                Answer::Send(vec![
                    Response::AddHeader {
                        name: Bytes::from_static(b"X-Seen"),
                        value: Bytes::from_static(b"yes"),
                    },
                    Response::Continue,
                ])
            })
        },
        &message(),
    )
    .await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert!(out.is_accepted());
    assert_eq!(out.decided_at, Stage::EndOfMessage);
    assert_eq!(out.smtp_text(), "250 2.0.0 Ok");
    assert_eq!(
        out.accepted_recipients,
        ["<bob@example.net>", "<carol@example.net>"]
    );
    assert!(out.failure.is_none());
    assert_eq!(
        out.modifications,
        [Modification::AddHeader {
            name: Bytes::from_static(b"X-Seen"),
            value: Bytes::from_static(b"yes")
        }]
    );
    let stages: Vec<Stage> = out.stages.iter().map(|s| s.stage).collect();
    use Stage::*;
    assert_eq!(
        stages,
        [
            Connect,
            Helo,
            Mail,
            Rcpt,
            Rcpt,
            Data,
            Header,
            Header,
            EndOfHeaders,
            Body,
            EndOfMessage
        ]
    );
    assert_eq!(out.reply_at(Stage::Rcpt), Some(&Reply::Continue));
    assert_eq!(
        codes(&log),
        [
            "O", "DC", "C", "DH", "H", "DM", "M", "DR", "R", "DR", "R", "DT", "T", "DL", "L", "DL",
            "L", "DN", "N", "DB", "B", "DE", "E", "A", "Q"
        ]
    );
    // Postfix-like macros.
    let connect = macros_at(&log, b'C', 0);
    assert!(connect.contains(&("{client_addr}".into(), "192.0.2.1".into())));
    assert!(connect.contains(&("j".into(), "mx.example.org".into())));
    assert_eq!(
        macros_at(&log, b'M', 0),
        [("{mail_addr}".into(), "alice@example.org".into())]
    );
    assert_eq!(
        macros_at(&log, b'R', 1),
        [("{rcpt_addr}".into(), "carol@example.net".into())]
    );
    assert_eq!(macros_at(&log, b'E', 0), [("i".into(), "4QUEUE".into())]);
    // One leading space stripped, folding kept as a bare LF.
    let headers = headers(&log);
    assert_eq!(
        headers,
        [
            ("Subject".into(), "hello".into()),
            ("X-Folded".into(), "one\n\ttwo".into())
        ]
    );
    let Command::Rcpt(r) = &log[10] else { panic!() };
    assert_eq!(r.args().collect::<Vec<_>>(), ["NOTIFY=NEVER"]);
}

#[tokio::test]
async fn leading_space_is_kept_when_negotiated() {
    let reply = optneg(Actions::empty(), ProtocolFlags::HEADER_LEADING_SPACE);
    let (_, log) = run(reply, |_| None, &message()).await;
    let values: Vec<String> = headers(&log).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, [" hello", " one\n\ttwo"]);
}

#[tokio::test]
async fn a_reject_at_mail_ends_the_message() {
    let (out, log) = run_answering(b'M', Response::Reject).await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(out.decided_at, Stage::Mail);
    assert_eq!(out.smtp_text(), "550 5.7.1 Command rejected");
    assert!(out.accepted_recipients.is_empty());
    assert_eq!(
        codes(&log),
        ["O", "DC", "C", "DH", "H", "DM", "M", "A", "Q"]
    );
}

#[tokio::test]
async fn an_accept_at_mail_keeps_every_recipient_and_sends_nothing_more() {
    let (out, log) = run_answering(b'M', Response::Accept).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(out.decided_at, Stage::Mail);
    assert_eq!(out.accepted_recipients.len(), 2);
    assert_eq!(
        codes(&log),
        ["O", "DC", "C", "DH", "H", "DM", "M", "A", "Q"]
    );
}

#[tokio::test]
async fn a_tempfail_at_one_rcpt_drops_only_that_recipient() {
    let (out, log) = run_answering(b'R', Response::Tempfail).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(out.accepted_recipients, ["<carol@example.net>"]);
    assert_eq!(
        out.rejected_recipients,
        [("<bob@example.net>".to_string(), Reply::Tempfail)]
    );
    assert!(codes(&log).contains(&"E".to_string()));
}

#[tokio::test]
async fn without_recipients_left_data_is_not_sent() {
    let mut n = 0;
    let (out, log) = run(
        plain_optneg(),
        move |cmd| {
            matches!(cmd, Command::Rcpt(_)).then(|| {
                n += 1;
                Answer::Send(vec![if n == 1 {
                    Response::ReplyCode(Bytes::from_static(b"550 5.1.1 No such user"))
                } else {
                    Response::ReplyCode(Bytes::from_static(b"451 4.7.1 Greylisted"))
                }])
            })
        },
        &message(),
    )
    .await;
    assert_eq!(out.verdict, Verdict::Tempfailed);
    assert_eq!(out.decided_at, Stage::Rcpt);
    assert_eq!(out.smtp_text(), "451 4.7.1 Greylisted");
    assert_eq!(out.rejected_recipients.len(), 2);
    assert_eq!(
        codes(&log),
        [
            "O", "DC", "C", "DH", "H", "DM", "M", "DR", "R", "DR", "R", "A", "Q"
        ]
    );
}

#[tokio::test]
async fn an_accept_at_rcpt_accepts_the_whole_message() {
    let (out, log) = run_answering(b'R', Response::Accept).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(out.decided_at, Stage::Rcpt);
    assert_eq!(out.accepted_recipients.len(), 2);
    assert_eq!(
        codes(&log),
        ["O", "DC", "C", "DH", "H", "DM", "M", "DR", "R", "A", "Q"]
    );
}

#[tokio::test]
async fn a_discard_at_a_header_ends_the_message() {
    let (out, log) = run_answering(b'L', Response::Discard).await;
    assert_eq!(out.verdict, Verdict::Discarded);
    assert_eq!(out.decided_at, Stage::Header);
    let codes = codes(&log);
    assert_eq!(codes.iter().filter(|c| *c == "L").count(), 1);
    assert!(!codes.contains(&"N".to_string()));
    assert_eq!(codes.last().map(String::as_str), Some("Q"));
}

#[tokio::test]
async fn a_custom_reject_at_end_of_message_keeps_its_text() {
    let (out, _) = run_answering(
        b'E',
        Response::ReplyCode(Bytes::from_static(b"554 5.7.1 Spam score too high")),
    )
    .await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(out.decided_at, Stage::EndOfMessage);
    assert_eq!(out.reply.as_ref().unwrap().code(), 554);
    assert_eq!(out.smtp_text(), "554 5.7.1 Spam score too high");
}

#[tokio::test]
async fn a_reject_at_connect_ends_before_mail() {
    let (out, log) = run_answering(b'C', Response::Tempfail).await;
    assert_eq!(out.verdict, Verdict::Tempfailed);
    assert_eq!(out.decided_at, Stage::Connect);
    assert_eq!(codes(&log), ["O", "DC", "C", "Q"]);
}

#[tokio::test]
async fn several_messages_on_one_connection() {
    let (fake, mut conn) = connected(continue_all(plain_optneg())).await;
    let first = message();
    let second = Message::new().sender("x@example.org").rcpt("y@example.org");
    bounded(async {
        assert!(conn.send_message(&first).await.unwrap().is_accepted());
        let out = conn.send_message(&second).await.unwrap();
        assert!(out.is_accepted());
        assert_eq!(out.reply_at(Stage::Connect), None);
        conn.quit().await.unwrap();
    })
    .await;
    let codes = codes(&fake.log().await);
    assert_eq!(codes.iter().filter(|c| *c == "M").count(), 2);
    assert_eq!(codes.iter().filter(|c| *c == "A").count(), 2);
    assert_eq!(codes.iter().filter(|c| *c == "C").count(), 1);
}

#[tokio::test]
async fn an_unreachable_filter_yields_the_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("unix:{}/nobody.sock", dir.path().display());
    for (policy, verdict) in [
        (FailurePolicy::Tempfail, Verdict::Tempfailed),
        (FailurePolicy::Reject, Verdict::Rejected),
        (FailurePolicy::Continue, Verdict::Accepted),
    ] {
        let client = Client::new(ClientConfig::default().with_failure_policy(policy));
        let out = bounded(client.check_message(&spec, &message())).await;
        assert_eq!(out.verdict, verdict);
        assert!(
            matches!(out.failure, Some(ClientError::Io(_))),
            "{:?}",
            out.failure
        );
        if policy == FailurePolicy::Continue {
            assert_eq!(out.accepted_recipients.len(), 2);
        }
    }
    assert_eq!(FailurePolicy::default().reply(), Reply::Tempfail);
}

#[tokio::test]
async fn a_misbehaving_or_silent_filter_yields_the_failure_policy() {
    // Garbage at RCPT with F=R.
    let client = Client::new(ClientConfig::default().with_failure_policy(FailurePolicy::Reject));
    let (fake, mut conn) = connected_with(
        &client,
        script(plain_optneg(), |cmd| {
            matches!(cmd, Command::Rcpt(_)).then(|| Answer::Raw(b"post".to_vec()))
        }),
    )
    .await;
    let out = bounded(conn.send_message_or_policy(&message())).await;
    assert_eq!(out.verdict, Verdict::Rejected);
    assert_eq!(
        out.decided_at,
        Stage::Rcpt,
        "{:?} {:?}",
        out.failure,
        out.stages
    );
    assert!(
        matches!(out.failure, Some(ClientError::Frame(_))),
        "{:?}",
        out.failure
    );
    // The filter is in error state for the rest of the session.
    let again = bounded(conn.send_message_or_policy(&message())).await;
    assert_eq!(again.verdict, Verdict::Rejected);
    assert!(matches!(again.failure, Some(ClientError::Broken)));
    drop(conn);
    fake.log().await;

    // A filter that stops answering at end of message, fail-open.
    let fake = Fake::unix(script(
        optneg(Actions::ADD_HEADERS, ProtocolFlags::empty()),
        |cmd| {
            matches!(cmd, Command::EndOfMessage(_)).then(|| {
                Answer::Send(vec![Response::AddHeader {
                    name: Bytes::from_static(b"X"),
                    value: Bytes::new(),
                }])
            })
        },
    ));
    let client = Client::new(
        ClientConfig::default()
            .with_failure_policy(FailurePolicy::Continue)
            .with_content_timeout(Duration::from_millis(200)),
    );
    let out = bounded(client.check_message(&fake.spec, &message())).await;
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(out.decided_at, Stage::EndOfMessage);
    assert!(out.modifications.is_empty());
    assert!(matches!(
        out.failure,
        Some(ClientError::Timeout {
            stage: Stage::EndOfMessage,
            ..
        })
    ));
    fake.log().await;
}

#[tokio::test]
async fn check_message_simulates_a_local_connect_when_none_is_given() {
    let fake = Fake::unix(continue_all(plain_optneg()));
    let m = Message::new().sender("a@example.org").rcpt("b@example.org");
    let out = bounded(Client::default().check_message(&fake.spec, &m)).await;
    assert!(out.is_accepted(), "{:?}", out.failure);
    let log = fake.log().await;
    let Command::Connect(c) = &log[2] else {
        panic!("{:?}", codes(&log))
    };
    assert_eq!(c.hostname, "localhost");
    assert_eq!(codes(&log).last().map(String::as_str), Some("Q"));
}
