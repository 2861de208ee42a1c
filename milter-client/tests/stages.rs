//! The per-stage API against a scripted fake filter.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use milter_client::milter_proto::{
    Actions, Bytes, Command, ConnectAddress, DecodeError, FrameError, MacroLists, MacroStage,
    NegotiationError, OptNeg, OptNegReply, ProtocolError, ProtocolFlags, Response,
};
use milter_client::{Client, ClientConfig, ClientError, Modification, Reply, Stage};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn inet() -> ConnectAddress {
    ConnectAddress::Inet("192.0.2.1:4567".parse().unwrap())
}

#[tokio::test]
async fn negotiates_v6_over_unix_and_reports_what_was_agreed() {
    let reply = OptNegReply {
        version: 6,
        actions: Actions::ADD_HEADERS | Actions::SET_SYMLIST,
        protocol: ProtocolFlags::NO_UNKNOWN | ProtocolFlags::SKIP,
        macros: MacroLists::new([
            (0, "j {client_addr}"),
            (2, "{mail_addr},{auth_authen}"),
            (9, "ignored"),
        ])
        .unwrap(),
    };
    let (fake, conn) = connected(continue_all(reply)).await;
    let agreed = conn.agreed();
    assert_eq!(agreed.version, 6);
    assert_eq!(agreed.offer, OptNeg::POSTFIX);
    assert_eq!(agreed.actions, Actions::ADD_HEADERS | Actions::SET_SYMLIST);
    assert_eq!(
        agreed.protocol,
        ProtocolFlags::NO_UNKNOWN | ProtocolFlags::SKIP
    );
    assert_eq!(agreed.max_data_size, 65535);
    assert_eq!(
        agreed.requested_macros(MacroStage::Connect),
        Some(vec!["j", "{client_addr}"])
    );
    assert_eq!(
        agreed.requested_macros(MacroStage::Mail),
        Some(vec!["{mail_addr}", "{auth_authen}"])
    );
    assert_eq!(agreed.requested_macros(MacroStage::Rcpt), None);
    assert_eq!(agreed.macro_lists.len(), 2);
    assert!(!agreed.sends(Stage::Unknown));
    assert!(agreed.sends(Stage::Helo));
    assert!(agreed.replies_to(Stage::Helo));
    conn.quit().await.unwrap();
    let log = fake.log().await;
    assert_eq!(log[0], Command::OptNeg(OptNeg::POSTFIX));
    assert_eq!(codes(&log), ["O", "Q"]);
}

#[tokio::test]
async fn negotiates_over_tcp_in_both_spellings() {
    for libmilter_syntax in [false, true] {
        let fake = Fake::tcp(continue_all(plain_optneg())).await;
        let spec = if libmilter_syntax {
            let port = fake.spec.rsplit(':').next().unwrap();
            format!("inet:{port}@127.0.0.1")
        } else {
            fake.spec.clone()
        };
        let mut conn = bounded(Client::default().connect(spec)).await.unwrap();
        let reply = bounded(conn.connect(&[], "client.example.net", inet()))
            .await
            .unwrap();
        assert_eq!(reply, Reply::Continue);
        conn.quit().await.unwrap();
        assert_eq!(codes(&fake.log().await), ["O", "DC", "C", "Q"]);
    }
}

#[tokio::test]
async fn v2_offer_and_reply_suppress_data_and_unknown() {
    let reply = OptNegReply {
        version: 2,
        actions: Actions::ADD_HEADERS,
        protocol: ProtocolFlags::empty(),
        macros: MacroLists::default(),
    };
    let client = Client::new(ClientConfig::default().with_offer(OptNeg::V2));
    let (fake, mut conn) = connected_with(&client, continue_all(reply)).await;
    assert_eq!(conn.agreed().version, 2);
    assert!(
        conn.agreed()
            .protocol
            .contains(ProtocolFlags::NO_DATA | ProtocolFlags::NO_UNKNOWN)
    );
    bounded(async {
        assert_eq!(
            conn.connect(&[], "h", inet()).await.unwrap(),
            Reply::Continue
        );
        assert_eq!(conn.unknown(&[], "XYZZY").await.unwrap(), Reply::NotSent);
        assert_eq!(conn.mail(&[], "<a@x>", &[]).await.unwrap(), Reply::Continue);
        assert_eq!(conn.rcpt(&[], "<b@y>", &[]).await.unwrap(), Reply::Continue);
        assert_eq!(conn.data(&[("i", "Q1")]).await.unwrap(), Reply::NotSent);
        assert_eq!(
            conn.header(&[], "Subject", "x").await.unwrap(),
            Reply::Continue
        );
        conn.quit().await.unwrap();
    })
    .await;
    let log = fake.log().await;
    assert_eq!(log[0], Command::OptNeg(OptNeg::V2));
    // Macros still go out for stages that do not exist in version 2.
    assert_eq!(
        codes(&log),
        [
            "O", "DC", "C", "DU", "DM", "M", "DR", "R", "DT", "DL", "L", "Q"
        ]
    );
    assert_eq!(macros_at(&log, b'T', 0), [("i".into(), "Q1".into())]);
}

#[tokio::test]
async fn negotiation_failures_are_typed() {
    // A version above the offer.
    let mut too_new = plain_optneg();
    too_new.version = 7;
    let fake = Fake::unix(continue_all(too_new));
    let e = bounded(Client::default().connect(&fake.spec))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Negotiation(NegotiationError::VersionAboveOffer {
                replied: 7,
                offered: 6
            })
        ),
        "{e}"
    );

    // Actions that were not offered.
    let mut v2 = optneg(Actions::CHANGE_FROM, ProtocolFlags::empty());
    v2.version = 2;
    let fake = Fake::unix(continue_all(v2));
    let client = Client::new(ClientConfig::default().with_offer(OptNeg::V2.with_v2_actions()));
    let e = bounded(client.connect(&fake.spec)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Negotiation(NegotiationError::ActionsNotOffered { .. })
        ),
        "{e}"
    );

    // Something other than an OPTNEG reply.
    let fake = Fake::unix(Box::new(|_| Answer::Send(vec![Response::Continue])));
    let e = bounded(Client::default().connect(&fake.spec))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Negotiation(NegotiationError::NotOptNeg('c'))
        ),
        "{e}"
    );

    // The filter hangs up.
    let fake = Fake::unix(Box::new(|_| Answer::Close));
    let e = bounded(Client::default().connect(&fake.spec))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Closed), "{e}");

    // Nobody listening.
    let dir = tempfile::tempdir().unwrap();
    let e = bounded(Client::default().connect(format!("unix:{}/none.sock", dir.path().display())))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Io(_)), "{e}");
    assert!(e.is_filter_failure());

    let e = bounded(Client::default().connect("tcp:25@host"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Spec(_)), "{e}");
}

/// `OptNeg::V2` with only the version 2 actions.
trait V2Actions {
    fn with_v2_actions(self) -> OptNeg;
}

impl V2Actions for OptNeg {
    fn with_v2_actions(mut self) -> OptNeg {
        self.actions = Actions::V2;
        self
    }
}

#[tokio::test]
async fn macros_go_before_every_stage() {
    let (fake, mut conn) =
        connected(continue_all(optneg(Actions::all(), ProtocolFlags::empty()))).await;
    bounded(async {
        let r = conn
            .connect(
                &[("j", "mx.example.org"), ("{client_addr}", "192.0.2.1")],
                "client.example.net",
                inet(),
            )
            .await
            .unwrap();
        assert_eq!(r, Reply::Continue);
        conn.helo(&[], "client.example.net").await.unwrap();
        conn.mail(
            &[("{mail_addr}", "a@example.org")],
            "<a@example.org>",
            &["SIZE=10", "BODY=8BITMIME"],
        )
        .await
        .unwrap();
        conn.rcpt(&[("{rcpt_addr}", "b@example.net")], "<b@example.net>", &[])
            .await
            .unwrap();
        conn.data(&[("i", "4ABC")]).await.unwrap();
        conn.header(&[], "Subject", "hi").await.unwrap();
        conn.header(&[], "X-Empty", "").await.unwrap();
        conn.end_of_headers(&[("i", "4ABC")]).await.unwrap();
        conn.body(&[], "body\r\n").await.unwrap();
        let eom = conn.end_of_message(&[("i", "4ABC")]).await.unwrap();
        assert_eq!(eom.reply, Reply::Continue);
        conn.abort().await.unwrap();
        conn.unknown(&[], "XYZZY").await.unwrap();
        conn.quit().await.unwrap();
    })
    .await;
    let log = fake.log().await;
    assert_eq!(
        codes(&log),
        [
            "O", "DC", "C", "DH", "H", "DM", "M", "DR", "R", "DT", "T", "DL", "L", "DL", "L", "DN",
            "N", "DB", "B", "DE", "E", "A", "DU", "U", "Q"
        ]
    );
    assert_eq!(
        macros_at(&log, b'C', 0),
        [
            ("j".into(), "mx.example.org".into()),
            ("{client_addr}".into(), "192.0.2.1".into())
        ]
    );
    assert!(macros_at(&log, b'H', 0).is_empty());
    assert_eq!(macros_at(&log, b'E', 0), [("i".into(), "4ABC".into())]);
    let Command::Connect(c) = &log[2] else {
        panic!()
    };
    assert_eq!(c.hostname, "client.example.net");
    assert_eq!(c.address, inet());
    let Command::Mail(m) = &log[6] else { panic!() };
    assert_eq!(m.address, "<a@example.org>");
    assert_eq!(m.args().collect::<Vec<_>>(), ["SIZE=10", "BODY=8BITMIME"]);
    let Command::Header(h) = &log[14] else {
        panic!()
    };
    assert_eq!(
        (h.name.as_ref(), h.value.as_ref()),
        (&b"X-Empty"[..], &b""[..])
    );
    assert_eq!(log[20], Command::EndOfMessage(Bytes::new()));
}

#[tokio::test]
async fn empty_macro_packets_can_be_left_out() {
    let client = Client::new(ClientConfig::default().with_send_empty_macros(false));
    let (fake, mut conn) = connected_with(&client, continue_all(plain_optneg())).await;
    bounded(async {
        conn.connect(&[("j", "mx")], "h", ConnectAddress::Unknown)
            .await
            .unwrap();
        conn.helo(&[], "h").await.unwrap();
        conn.quit().await.unwrap();
    })
    .await;
    assert_eq!(codes(&fake.log().await), ["O", "DC", "C", "H", "Q"]);
}

#[tokio::test]
async fn macro_lists_are_honoured_when_asked() {
    let mut reply = optneg(Actions::SET_SYMLIST, ProtocolFlags::empty());
    reply.macros = MacroLists::new([(0, "{client_addr} i")]).unwrap();
    let client = Client::new(ClientConfig::default().with_honour_macro_lists(true));
    let (fake, mut conn) = connected_with(&client, continue_all(reply)).await;
    bounded(async {
        conn.connect(
            &[("j", "mx"), ("{client_addr}", "192.0.2.1"), ("{i}", "Q")],
            "h",
            inet(),
        )
        .await
        .unwrap();
        conn.helo(&[("{tls_version}", "TLSv1.3")], "h")
            .await
            .unwrap();
        conn.quit().await.unwrap();
    })
    .await;
    let log = fake.log().await;
    assert_eq!(
        macros_at(&log, b'C', 0),
        [
            ("{client_addr}".into(), "192.0.2.1".into()),
            ("{i}".into(), "Q".into())
        ]
    );
    // No list for HELO: everything given is sent.
    assert_eq!(macros_at(&log, b'H', 0).len(), 1);
}

#[tokio::test]
async fn stages_negotiated_away_send_only_their_macros() {
    let protocol = ProtocolFlags::NO_HELO
        | ProtocolFlags::NO_HEADERS
        | ProtocolFlags::NO_BODY
        | ProtocolFlags::NO_EOH
        | ProtocolFlags::NO_CONNECT;
    let (fake, mut conn) = connected(continue_all(optneg(Actions::empty(), protocol))).await;
    bounded(async {
        assert_eq!(
            conn.connect(&[("j", "mx")], "h", inet()).await.unwrap(),
            Reply::NotSent
        );
        assert_eq!(conn.helo(&[("x", "1")], "h").await.unwrap(), Reply::NotSent);
        assert_eq!(conn.mail(&[], "<a@x>", &[]).await.unwrap(), Reply::Continue);
        assert_eq!(conn.rcpt(&[], "<b@x>", &[]).await.unwrap(), Reply::Continue);
        assert_eq!(conn.header(&[], "A", "1").await.unwrap(), Reply::NotSent);
        assert_eq!(conn.end_of_headers(&[]).await.unwrap(), Reply::NotSent);
        assert_eq!(conn.body(&[], "x\r\n").await.unwrap(), Reply::NotSent);
        assert_eq!(
            conn.end_of_message(&[]).await.unwrap().reply,
            Reply::Continue
        );
        conn.quit().await.unwrap();
    })
    .await;
    assert_eq!(
        codes(&fake.log().await),
        [
            "O", "DC", "DH", "DM", "M", "DR", "R", "DL", "DN", "DB", "DE", "E", "Q"
        ]
    );
}

/// Counts write calls on a stream.
struct CountingIo<S> {
    inner: S,
    writes: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn no_reply_stages_are_pipelined_into_one_write_per_turn() {
    let protocol = ProtocolFlags::NR_HEADER | ProtocolFlags::NR_RCPT;
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let fake = tokio::spawn(serve(
        theirs,
        continue_all(optneg(Actions::empty(), protocol)),
    ));
    let writes = Arc::new(AtomicUsize::new(0));
    let io = CountingIo {
        inner: ours,
        writes: writes.clone(),
    };
    let mut conn = bounded(Client::default().handshake(io)).await.unwrap();
    assert_eq!(writes.load(Ordering::SeqCst), 1, "OPTNEG is one write");
    bounded(async {
        assert_eq!(
            conn.connect(&[("j", "mx")], "h", inet()).await.unwrap(),
            Reply::Continue
        );
        assert_eq!(
            writes.load(Ordering::SeqCst),
            2,
            "macros and CONNECT go out together"
        );
        assert_eq!(conn.mail(&[], "<a@x>", &[]).await.unwrap(), Reply::Continue);
        assert_eq!(conn.rcpt(&[], "<b@x>", &[]).await.unwrap(), Reply::NoReply);
        assert_eq!(conn.rcpt(&[], "<c@x>", &[]).await.unwrap(), Reply::NoReply);
        assert_eq!(conn.data(&[]).await.unwrap(), Reply::Continue);
        assert_eq!(conn.header(&[], "A", "1").await.unwrap(), Reply::NoReply);
        assert_eq!(conn.header(&[], "B", "2").await.unwrap(), Reply::NoReply);
        assert!(conn.buffered() > 0);
        assert_eq!(
            writes.load(Ordering::SeqCst),
            4,
            "nothing written for no-reply stages"
        );
        assert_eq!(conn.end_of_headers(&[]).await.unwrap(), Reply::Continue);
        assert_eq!(writes.load(Ordering::SeqCst), 5);
        assert_eq!(
            conn.end_of_message(&[]).await.unwrap().reply,
            Reply::Continue
        );
        conn.abort().await.unwrap();
        conn.quit().await.unwrap();
    })
    .await;
    assert_eq!(
        writes.load(Ordering::SeqCst),
        7,
        "ABORT and QUIT go out in the last write"
    );
    let log = bounded(fake).await.unwrap();
    assert_eq!(
        codes(&log),
        [
            "O", "DC", "C", "DM", "M", "DR", "R", "DR", "R", "DT", "T", "DL", "L", "DL", "L", "DN",
            "N", "DE", "E", "A", "Q"
        ]
    );
}

#[tokio::test]
async fn flush_pushes_buffered_packets_out() {
    let (fake, mut conn) = connected(continue_all(plain_optneg())).await;
    bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        conn.abort().await.unwrap();
        assert_eq!(conn.buffered(), 5);
        conn.flush().await.unwrap();
        assert_eq!(conn.buffered(), 0);
        conn.quit().await.unwrap();
    })
    .await;
    assert_eq!(
        codes(&fake.log().await),
        ["O", "DC", "C", "DM", "M", "A", "Q"]
    );
}

#[tokio::test]
async fn skip_suppresses_further_events_of_the_same_type() {
    let mut rcpts = 0;
    let mut bodies = 0;
    let (fake, mut conn) = connected(script(
        optneg(Actions::empty(), ProtocolFlags::SKIP),
        move |cmd| match cmd {
            Command::Rcpt(_) => {
                rcpts += 1;
                (rcpts == 1).then(|| Answer::Send(vec![Response::Skip]))
            }
            Command::Body(_) => {
                bodies += 1;
                (bodies == 1).then(|| Answer::Send(vec![Response::Skip]))
            }
            _ => None,
        },
    ))
    .await;
    bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        assert_eq!(conn.rcpt(&[], "<b@x>", &[]).await.unwrap(), Reply::Skip);
        assert_eq!(conn.rcpt(&[], "<c@x>", &[]).await.unwrap(), Reply::NotSent);
        assert_eq!(conn.rcpt(&[], "<d@x>", &[]).await.unwrap(), Reply::NotSent);
        assert_eq!(conn.data(&[]).await.unwrap(), Reply::Continue);
        assert_eq!(conn.end_of_headers(&[]).await.unwrap(), Reply::Continue);
        let body = vec![b'x'; 3 * 65535 + 10];
        assert_eq!(conn.body(&[], &body).await.unwrap(), Reply::Skip);
        assert_eq!(conn.body(&[], "more").await.unwrap(), Reply::NotSent);
        assert_eq!(
            conn.end_of_message(&[]).await.unwrap().reply,
            Reply::Continue
        );
        // A new message: the skip is over.
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        assert_eq!(conn.rcpt(&[], "<b@x>", &[]).await.unwrap(), Reply::Continue);
        conn.quit().await.unwrap();
    })
    .await;
    let log = fake.log().await;
    assert_eq!(
        codes(&log),
        [
            "O", "DC", "C", "DM", "M", "DR", "R", "DT", "T", "DN", "N", "DB", "B", "DE", "E", "DM",
            "M", "DR", "R", "Q"
        ]
    );
    let Command::Body(chunk) = &log[12] else {
        panic!()
    };
    assert_eq!(chunk.len(), 65535);
}

#[tokio::test]
async fn body_is_sent_in_chunks_of_at_most_65535_bytes() {
    let (fake, mut conn) = connected(continue_all(plain_optneg())).await;
    let body: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        conn.rcpt(&[], "<b@x>", &[]).await.unwrap();
        assert_eq!(conn.body(&[], &body).await.unwrap(), Reply::Continue);
        assert_eq!(conn.body(&[], b"").await.unwrap(), Reply::NotSent);
        conn.quit().await.unwrap();
    })
    .await;
    let chunks = body_chunks(&fake.log().await);
    assert_eq!(
        chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
        [65535, 65535, 18930]
    );
    assert_eq!(chunks.concat(), body);
}

#[tokio::test]
async fn end_of_message_collects_every_modification_and_progress() {
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    let (fake, mut conn) = connected(script(
        optneg(Actions::all(), ProtocolFlags::empty()),
        move |cmd| {
            matches!(cmd, Command::EndOfMessage(_)).then(|| {
                Answer::Send(vec![
                    Response::Progress,
                    Response::AddHeader {
                        name: b("X-A"),
                        value: b("1"),
                    },
                    Response::InsertHeader {
                        index: 0,
                        name: b("X-I"),
                        value: b("2"),
                    },
                    Response::ChangeHeader {
                        index: 1,
                        name: b("Subject"),
                        value: b(""),
                    },
                    Response::ChangeFrom {
                        address: b("<new@x>"),
                        args: Some(b("RET=HDRS")),
                    },
                    Response::AddRcpt {
                        address: b("<c@x>"),
                    },
                    Response::AddRcptPar {
                        address: b("<d@x>"),
                        args: None,
                    },
                    Response::DeleteRcpt {
                        address: b("<b@x>"),
                    },
                    Response::ReplaceBody(b("new ")),
                    Response::ReplaceBody(b("body\r\n")),
                    Response::Progress,
                    Response::Quarantine {
                        reason: b("suspicious"),
                    },
                    Response::ReplaceBody(b("")),
                    Response::Accept,
                ])
            })
        },
    ))
    .await;
    let eom = bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        conn.rcpt(&[], "<b@x>", &[]).await.unwrap();
        conn.end_of_message(&[]).await.unwrap()
    })
    .await;
    assert_eq!(eom.reply, Reply::Accept);
    assert_eq!(eom.progress_count, 2);
    assert_eq!(
        eom.modifications,
        [
            Modification::AddHeader {
                name: b("X-A"),
                value: b("1")
            },
            Modification::InsertHeader {
                index: 0,
                name: b("X-I"),
                value: b("2")
            },
            Modification::ChangeHeader {
                index: 1,
                name: b("Subject"),
                value: b("")
            },
            Modification::ChangeFrom {
                address: b("<new@x>"),
                args: Some(b("RET=HDRS"))
            },
            Modification::AddRcpt {
                address: b("<c@x>")
            },
            Modification::AddRcptPar {
                address: b("<d@x>"),
                args: None
            },
            Modification::DeleteRcpt {
                address: b("<b@x>")
            },
            Modification::ReplaceBody(b("new body\r\n")),
            Modification::Quarantine {
                reason: b("suspicious")
            },
            Modification::ReplaceBody(b("")),
        ]
    );
    assert_eq!(eom.modifications[2].to_string(), "delete header Subject #1");
    // The connection goes on: a second message.
    bounded(async {
        conn.abort().await.unwrap();
        assert_eq!(conn.mail(&[], "<a@x>", &[]).await.unwrap(), Reply::Continue);
        conn.quit().await.unwrap();
    })
    .await;
    fake.log().await;
}

/// Runs a conversation up to `stage` against a fake that answers `bad` there,
/// and returns the error.
async fn violation(actions: Actions, protocol: ProtocolFlags, at: u8, bad: Answer) -> ClientError {
    let mut bad = Some(bad);
    let (fake, mut conn) = connected(script(optneg(actions, protocol), move |cmd| {
        if cmd.code() == at { bad.take() } else { None }
    }))
    .await;
    let e = bounded(async {
        conn.connect(&[], "h", inet()).await?;
        conn.mail(&[], "<a@x>", &[]).await?;
        conn.rcpt(&[], "<b@x>", &[]).await?;
        conn.header(&[], "Subject", "x").await?;
        conn.end_of_headers(&[]).await?;
        conn.end_of_message(&[]).await?;
        Ok::<_, ClientError>(())
    })
    .await
    .expect_err("the filter misbehaved");
    assert!(conn.is_broken(), "{e}");
    let again = bounded(conn.helo(&[], "h")).await.unwrap_err();
    assert!(matches!(again, ClientError::Broken), "{again}");
    drop(conn);
    fake.log().await;
    e
}

#[tokio::test]
async fn misbehaving_filters_are_typed_errors() {
    let none = ProtocolFlags::empty();
    let h = Response::AddHeader {
        name: Bytes::from_static(b"X"),
        value: Bytes::new(),
    };

    let e = violation(Actions::all(), none, b'R', Answer::Send(vec![h.clone()])).await;
    assert!(
        matches!(
            e,
            ClientError::Protocol(ProtocolError::WrongStage {
                response: 'h',
                command: 'R'
            })
        ),
        "{e}"
    );

    let e = violation(
        Actions::empty(),
        none,
        b'E',
        Answer::Send(vec![h, Response::Continue]),
    )
    .await;
    assert!(
        matches!(
            e,
            ClientError::Protocol(ProtocolError::ActionNotNegotiated { response: 'h', .. })
        ),
        "{e}"
    );

    let e = violation(
        Actions::all(),
        ProtocolFlags::SKIP,
        b'E',
        Answer::Send(vec![Response::Skip]),
    )
    .await;
    assert!(
        matches!(
            e,
            ClientError::Protocol(ProtocolError::WrongStage { response: 's', .. })
        ),
        "{e}"
    );

    let e = violation(
        Actions::all(),
        none,
        b'M',
        Answer::Send(vec![Response::SetSymList(Bytes::new())]),
    )
    .await;
    assert!(matches!(e, ClientError::Protocol(_)), "{e}");

    let e = violation(
        Actions::all(),
        none,
        b'C',
        Answer::Raw(vec![0, 0, 0, 1, b'Z']),
    )
    .await;
    assert!(
        matches!(e, ClientError::Decode(DecodeError::UnknownResponse(b'Z'))),
        "{e}"
    );

    let e = violation(
        Actions::all(),
        none,
        b'R',
        Answer::Raw(vec![0, 0, 0, 2, b'c', b'x']),
    )
    .await;
    assert!(
        matches!(e, ClientError::Decode(DecodeError::TrailingData { .. })),
        "{e}"
    );

    let e = violation(
        Actions::all(),
        none,
        b'M',
        Answer::Raw(vec![0x40, 0, 0, 0, b'c']),
    )
    .await;
    assert!(
        matches!(e, ClientError::Frame(FrameError::TooLarge { .. })),
        "{e}"
    );

    let e = violation(Actions::all(), none, b'M', Answer::Raw(vec![0, 0, 0, 0])).await;
    assert!(
        matches!(e, ClientError::Frame(FrameError::ZeroLength)),
        "{e}"
    );

    let bad_reply = Response::ReplyCode(Bytes::from_static(b"550 4.7.1 classes differ"));
    let e = violation(Actions::all(), none, b'R', Answer::Send(vec![bad_reply])).await;
    assert!(matches!(e, ClientError::InvalidReply(_)), "{e}");

    let e = violation(Actions::all(), none, b'L', Answer::Close).await;
    assert!(matches!(e, ClientError::Closed), "{e}");
}

#[tokio::test]
async fn a_reply_to_a_command_that_takes_none_is_a_protocol_error() {
    // A reply to ABORT, read when the next command's reply is expected.
    let (fake, mut conn) = connected(script(plain_optneg(), |cmd| {
        matches!(cmd, Command::Abort).then(|| Answer::Send(vec![Response::Continue]))
    }))
    .await;
    let e = bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.abort().await.unwrap();
        conn.helo(&[], "h").await.unwrap_err()
    })
    .await;
    assert!(
        matches!(
            e,
            ClientError::Protocol(ProtocolError::UnexpectedResponse { response: 'c' })
        ),
        "{e}"
    );
    drop(conn);
    fake.log().await;

    // A reply to a no-reply stage.
    let (fake, mut conn) = connected(script(
        optneg(Actions::empty(), ProtocolFlags::NR_HEADER),
        |cmd| matches!(cmd, Command::Header(_)).then(|| Answer::Send(vec![Response::Continue])),
    ))
    .await;
    let e = bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        assert_eq!(conn.header(&[], "A", "1").await.unwrap(), Reply::NoReply);
        conn.end_of_headers(&[]).await.unwrap_err()
    })
    .await;
    assert!(
        matches!(
            e,
            ClientError::Protocol(ProtocolError::UnexpectedResponse { .. })
        ),
        "{e}"
    );
    drop(conn);
    fake.log().await;
}

#[tokio::test(start_paused = true)]
async fn postfix_default_timeouts_apply_per_stage() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let fake = tokio::spawn(serve(
        theirs,
        script(plain_optneg(), |cmd| {
            matches!(cmd, Command::Header(_)).then_some(Answer::Silent)
        }),
    ));
    let mut conn = Client::default().handshake(ours).await.unwrap();
    conn.connect(&[], "h", inet()).await.unwrap();
    conn.mail(&[], "<a@x>", &[]).await.unwrap();
    conn.rcpt(&[], "<b@x>", &[]).await.unwrap();
    let started = tokio::time::Instant::now();
    let e = conn.header(&[], "A", "1").await.unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout { stage: Stage::Header, timeout } if timeout == Duration::from_secs(300)),
        "{e}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(300));
    drop(conn);
    fake.await.unwrap();
}

#[tokio::test]
async fn a_silent_filter_times_out() {
    let config = ClientConfig::default().with_command_timeout(Duration::from_millis(200));
    let (fake, mut conn) = connected_with(
        &Client::new(config),
        script(plain_optneg(), |cmd| {
            matches!(cmd, Command::Mail(_)).then_some(Answer::Silent)
        }),
    )
    .await;
    let e = bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.mail(&[], "<a@x>", &[]).await.unwrap_err()
    })
    .await;
    assert!(
        matches!(e, ClientError::Timeout { stage: Stage::Mail, timeout } if timeout == Duration::from_millis(200)),
        "{e}"
    );
    assert!(matches!(
        conn.rcpt(&[], "<b@x>", &[]).await,
        Err(ClientError::Broken)
    ));
    drop(conn);
    fake.log().await;

    // Negotiation uses the connect timeout.
    let fake = Fake::unix(Box::new(|_| Answer::Silent));
    let config = ClientConfig::default().with_connect_timeout(Duration::from_millis(200));
    let e = bounded(Client::new(config).connect(&fake.spec))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Timeout {
                stage: Stage::Negotiate,
                ..
            }
        ),
        "{e}"
    );
    fake.log().await;
}

#[tokio::test(start_paused = true)]
async fn progress_restarts_the_content_timeout() {
    // Each packet arrives within the timeout; the whole reply takes longer.
    // In-memory stream and paused clock: the delays cost no real time.
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let config = ClientConfig::default().with_content_timeout(Duration::from_millis(300));
    let filter = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        // Negotiate, then wait until end of message arrives.
        loop {
            let n = theirs.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            if seen.len() >= 17 {
                break;
            }
        }
        let mut reply = milter_client::milter_proto::BytesMut::new();
        Response::OptNeg(optneg(
            Actions::empty(),
            ProtocolFlags::NO_CONNECT | ProtocolFlags::NO_MAIL,
        ))
        .encode(&mut reply, usize::MAX)
        .unwrap();
        theirs.write_all(&reply).await.unwrap();
        // D E + E.
        let mut seen = Vec::new();
        while seen.len() < 11 {
            let n = theirs.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            theirs.write_all(&[0, 0, 0, 1, b'p']).await.unwrap();
        }
        theirs.write_all(&[0, 0, 0, 1, b'a']).await.unwrap();
        theirs
    });
    let mut conn = bounded(Client::new(config).handshake(ours)).await.unwrap();
    let eom = bounded(conn.end_of_message(&[])).await.unwrap();
    assert_eq!(eom.reply, Reply::Accept);
    assert_eq!(eom.progress_count, 3);
    drop(bounded(filter).await.unwrap());
}

#[tokio::test]
async fn quit_nc_reuses_the_connection_for_a_new_session() {
    let (fake, mut conn) = connected(continue_all(plain_optneg())).await;
    bounded(async {
        conn.connect(&[], "one", inet()).await.unwrap();
        conn.helo(&[], "one").await.unwrap();
        conn.quit_nc().await.unwrap();
        // A HELO now would be out of order: the session waits for CONNECT.
        assert!(matches!(
            conn.helo(&[], "x").await,
            Err(ClientError::Usage(_))
        ));
        assert_eq!(
            conn.connect(&[], "two", inet()).await.unwrap(),
            Reply::Continue
        );
        conn.helo(&[], "two").await.unwrap();
        conn.quit().await.unwrap();
    })
    .await;
    let log = fake.log().await;
    assert_eq!(
        codes(&log),
        ["O", "DC", "C", "DH", "H", "K", "DC", "C", "DH", "H", "Q"]
    );
    let Command::Connect(c) = &log[7] else {
        panic!()
    };
    assert_eq!(c.hostname, "two");
}

#[tokio::test]
async fn caller_mistakes_send_nothing_and_keep_the_connection() {
    let (fake, mut conn) = connected(continue_all(plain_optneg())).await;
    bounded(async {
        let e = conn.helo(&[], "h").await.unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Usage(ProtocolError::OutOfOrder { command: 'H', .. })
            ),
            "{e}"
        );
        conn.connect(&[], "h", inet()).await.unwrap();
        let e = conn.rcpt(&[], "<b@x>", &[]).await.unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)), "{e}");
        let e = conn.mail(&[], "<a\0@x>", &[]).await.unwrap_err();
        assert!(matches!(e, ClientError::Encode(_)), "{e}");
        let e = conn
            .mail(&[("bad\0name", "v")], "<a@x>", &[])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Encode(_)), "{e}");
        assert!(!e.is_filter_failure());
        assert_eq!(conn.mail(&[], "<a@x>", &[]).await.unwrap(), Reply::Continue);
        let e = conn.header(&[], "", "x").await.unwrap_err();
        assert!(matches!(e, ClientError::Encode(_)), "{e}");
        assert!(!conn.is_broken());
        assert_eq!(conn.buffered(), 0);
        assert_eq!(conn.rcpt(&[], "<b@x>", &[]).await.unwrap(), Reply::Continue);
        conn.quit().await.unwrap();
    })
    .await;
    assert_eq!(
        codes(&fake.log().await),
        ["O", "DC", "C", "DM", "M", "DR", "R", "Q"]
    );
}

#[tokio::test]
async fn decisions_before_the_end_stop_the_message() {
    let (fake, mut conn) = connected(script(plain_optneg(), |cmd| {
        matches!(cmd, Command::Data).then(|| Answer::Send(vec![Response::Discard]))
    }))
    .await;
    bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        conn.rcpt(&[], "<b@x>", &[]).await.unwrap();
        assert_eq!(conn.data(&[]).await.unwrap(), Reply::Discard);
        assert_eq!(conn.header(&[], "A", "1").await.unwrap(), Reply::NotSent);
        assert_eq!(
            conn.end_of_message(&[]).await.unwrap().reply,
            Reply::NotSent
        );
        conn.abort().await.unwrap();
        assert_eq!(conn.mail(&[], "<a@x>", &[]).await.unwrap(), Reply::Continue);
        conn.quit().await.unwrap();
    })
    .await;
    assert_eq!(
        codes(&fake.log().await),
        [
            "O", "DC", "C", "DM", "M", "DR", "R", "DT", "T", "A", "DM", "M", "Q"
        ]
    );
}

#[tokio::test]
async fn custom_replies_and_shutdown_are_typed() {
    let mut first = true;
    let (fake, mut conn) = connected(script(plain_optneg(), move |cmd| match cmd {
        Command::Rcpt(_) if std::mem::take(&mut first) => {
            Some(Answer::Send(vec![Response::ReplyCode(Bytes::from_static(
                b"451-4.7.1 Greylisted\r\n451 4.7.1 come back later",
            ))]))
        }
        Command::Helo(_) => Some(Answer::Send(vec![Response::Shutdown])),
        _ => None,
    }))
    .await;
    bounded(async {
        conn.connect(&[], "h", inet()).await.unwrap();
        assert_eq!(conn.helo(&[], "h").await.unwrap(), Reply::Shutdown);
        conn.mail(&[], "<a@x>", &[]).await.unwrap();
        let r = conn.rcpt(&[], "<b@x>", &[]).await.unwrap();
        assert!(r.is_tempfail() && !r.is_reject(), "{r}");
        let code = r.smtp_reply().unwrap();
        assert_eq!(code.code(), 451);
        assert_eq!(
            code.as_bytes(),
            b"451-4.7.1 Greylisted\r\n451 4.7.1 come back later"
        );
        // A tempfail at RCPT does not end the message.
        assert_eq!(conn.rcpt(&[], "<c@x>", &[]).await.unwrap(), Reply::Continue);
        conn.quit().await.unwrap();
    })
    .await;
    fake.log().await;
}

#[tokio::test]
async fn raw_escape_hatches_see_the_filter_close() {
    for garbage in [
        vec![0u8, 0, 0, 0],                 // length 0
        vec![0x7f, 0xff, 0xff, 0xff, b'M'], // oversize length
        vec![0, 0, 0, 1, b'X'],             // unknown command
    ] {
        let (fake, mut conn) = connected(continue_all(plain_optneg())).await;
        bounded(conn.send_raw(&garbage)).await.unwrap();
        let e = bounded(conn.read_response()).await.unwrap_err();
        assert!(matches!(e, ClientError::Closed), "{e}");
        drop(conn);
        fake.log().await;
    }

    // Unchecked commands go out in any order and their replies can be read.
    let (fake, mut conn) = connected(continue_all(plain_optneg())).await;
    bounded(async {
        conn.send_unchecked(&Command::Data).await.unwrap();
        assert_eq!(conn.read_response().await.unwrap(), Response::Continue);
        conn.send_raw(&[0, 0, 0, 1, b'N']).await.unwrap();
        let frame = conn.read_frame().await.unwrap();
        assert_eq!(frame.code, b'c');
        conn.send_unchecked(&Command::Quit).await.unwrap();
    })
    .await;
    drop(conn);
    assert_eq!(codes(&fake.log().await), ["O", "T", "N", "Q"]);
}

/// A filter whose listen queue stays full: a non-blocking unix connect is
/// refused with EAGAIN there, which `connect` waits out, within the connect
/// timeout, instead of failing at once.
#[tokio::test]
async fn a_full_listen_queue_is_waited_out_within_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    let listener =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&socket2::SockAddr::unix(&path).unwrap())
        .unwrap();
    listener.listen(1).unwrap();
    let address = socket2::SockAddr::unix(&path).unwrap();
    let mut queued = Vec::new();
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&address) {
            Ok(()) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("unexpected connect error: {e}"),
        }
        assert!(queued.len() < 1000, "the listen queue never filled");
    }

    let config = ClientConfig::default().with_connect_timeout(Duration::from_millis(200));
    let spec = format!("unix:{}", path.display());
    let e = bounded(Client::new(config).connect(spec.as_str()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Timeout {
                stage: Stage::SocketConnect,
                timeout,
            } if timeout == Duration::from_millis(200)
        ),
        "{e}"
    );
    drop(listener);
}
