//! `serve_connection` over in-memory pipes: the exact reason a session ends,
//! and timeouts under paused time.

mod common;

use std::time::Duration;

use common::{Log, Scripted};
use milter_proto::{Command, DecodeError, FrameError, OptNeg, ProtocolError, Response};
use milter_server::{Config, SessionError, serve_connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn optneg() -> Vec<u8> {
    let mut b = milter_proto::BytesMut::new();
    Command::OptNeg(OptNeg::POSTFIX)
        .encode(&mut b, 65535)
        .unwrap();
    b.to_vec()
}

/// Feeds `input` after negotiation and returns how the session ended.
async fn session_end(input: &[u8], config: Config) -> Result<(), SessionError> {
    let (mut mta, filter) = tokio::io::duplex(1 << 20);
    let log = Log::default();
    let server =
        tokio::spawn(async move { serve_connection(filter, Scripted::new(&log), &config).await });
    mta.write_all(&optneg()).await.unwrap();
    mta.write_all(input).await.unwrap();
    // Read the negotiation reply so the pipe never fills.
    let mut buf = vec![0u8; 4096];
    let _ = mta.read(&mut buf).await;
    server.await.unwrap()
}

#[tokio::test]
async fn each_malformed_input_ends_the_session_with_its_reason() {
    let config = Config::default;
    let e = session_end(&[0, 0, 0, 0], config()).await.unwrap_err();
    assert!(
        matches!(e, SessionError::Frame(FrameError::ZeroLength)),
        "{e}"
    );

    let e = session_end(b"GET / HTTP/1.1\r\n", config())
        .await
        .unwrap_err();
    assert!(
        matches!(e, SessionError::Frame(FrameError::TooLarge { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains("not speaking the milter protocol"),
        "{e}"
    );

    let e = session_end(&[0, 0, 0, 1, b'Z'], config())
        .await
        .unwrap_err();
    assert!(
        matches!(e, SessionError::Decode(DecodeError::UnknownCommand(b'Z'))),
        "{e}"
    );

    let e = session_end(&[0, 0, 0, 3, b'H', b'x', b'y'], config())
        .await
        .unwrap_err();
    assert!(
        matches!(e, SessionError::Decode(DecodeError::MissingNul { .. })),
        "{e}"
    );

    let e = session_end(&[0, 0, 0, 1, b'N'], config())
        .await
        .unwrap_err();
    assert!(
        matches!(e, SessionError::Protocol(ProtocolError::OutOfOrder { .. })),
        "{e}"
    );

    // A second negotiation is out of order too.
    let e = session_end(&optneg(), config()).await.unwrap_err();
    assert!(
        matches!(e, SessionError::Protocol(ProtocolError::OutOfOrder { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn the_mta_hanging_up_mid_frame_is_reported() {
    let (mut mta, filter) = tokio::io::duplex(1 << 16);
    let log = Log::default();
    let l = log.clone();
    let server = tokio::spawn(async move {
        serve_connection(filter, Scripted::new(&l), &Config::default()).await
    });
    mta.write_all(&optneg()).await.unwrap();
    mta.write_all(&[0, 0, 0, 9, b'H']).await.unwrap();
    let mut buf = vec![0u8; 64];
    let _ = mta.read(&mut buf).await.unwrap();
    drop(mta);
    let e = server.await.unwrap().unwrap_err();
    assert!(matches!(e, SessionError::TruncatedFrame), "{e}");
    // The filter was told the session is over.
    assert_eq!(log.take().last().map(String::as_str), Some("close"));
}

#[tokio::test(start_paused = true)]
async fn an_idle_mta_is_dropped_at_the_idle_timeout() {
    let config = Config::default().idle_timeout(Duration::from_secs(120));
    let (mut mta, filter) = tokio::io::duplex(1 << 16);
    let log = Log::default();
    let server =
        tokio::spawn(async move { serve_connection(filter, Scripted::new(&log), &config).await });
    mta.write_all(&optneg()).await.unwrap();
    let start = tokio::time::Instant::now();
    let e = server.await.unwrap().unwrap_err();
    assert!(
        matches!(e, SessionError::IdleTimeout(d) if d == Duration::from_secs(120)),
        "{e}"
    );
    assert!(start.elapsed() >= Duration::from_secs(120));
}

#[tokio::test]
async fn quit_ends_the_session_cleanly_and_replies_are_exact() {
    let (mut mta, filter) = tokio::io::duplex(1 << 16);
    let log = Log::default();
    let server = tokio::spawn(async move {
        serve_connection(filter, Scripted::new(&log), &Config::default()).await
    });
    let mut out = milter_proto::BytesMut::new();
    for c in [
        Command::OptNeg(OptNeg::POSTFIX),
        Command::Macro(milter_proto::Macros::new(b'C', [("j", "mx")]).unwrap()),
        Command::Connect(milter_proto::Connect {
            hostname: "h".into(),
            address: milter_proto::ConnectAddress::Unknown,
        }),
        Command::Abort,
        Command::Quit,
    ] {
        c.encode(&mut out, 65535).unwrap();
    }
    mta.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    mta.read_to_end(&mut got).await.unwrap();
    server.await.unwrap().unwrap();
    // Exactly two replies: the negotiation reply and CONTINUE for CONNECT;
    // none for MACRO, ABORT (outside a message) or QUIT.
    let mut buf = milter_proto::BytesMut::from(&got[..]);
    let mut dec = milter_proto::FrameDecoder::default();
    let first = Response::decode(&dec.decode(&mut buf).unwrap().unwrap()).unwrap();
    assert!(matches!(first, Response::OptNeg(_)));
    let second = Response::decode(&dec.decode(&mut buf).unwrap().unwrap()).unwrap();
    assert_eq!(second, Response::Continue);
    assert!(buf.is_empty(), "no further reply");
}
