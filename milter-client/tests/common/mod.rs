//! A scripted fake filter for the client's tests: it decodes commands with
//! milter-proto, records them, and answers from a script. Each test binary
//! uses a different part of it.
#![allow(dead_code)] // shared by several test binaries, each using a subset

use std::future::Future;
use std::time::Duration;

use milter_client::milter_proto::{
    Actions, Bytes, BytesMut, Command, FrameDecoder, MacroLists, OptNegReply, ProtocolFlags,
    Response, Session,
};
use milter_client::{Client, Connection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

/// What the fake does with one command.
pub(crate) enum Answer {
    /// Send these responses (all packets of one read go out in one write).
    Send(Vec<Response>),
    /// Send these bytes.
    Raw(Vec<u8>),
    /// Send nothing.
    Silent,
    /// Close the connection.
    Close,
}

/// A script: one answer per command received (OPTNEG included).
pub(crate) type Script = Box<dyn FnMut(&Command) -> Answer + Send>;

/// The negotiation reply of a v6 filter.
pub(crate) fn optneg(actions: Actions, protocol: ProtocolFlags) -> OptNegReply {
    OptNegReply {
        version: 6,
        actions,
        protocol,
        macros: MacroLists::default(),
    }
}

/// The negotiation reply of a v6 filter that asks for no actions and sets
/// no protocol flags.
pub(crate) fn plain_optneg() -> OptNegReply {
    optneg(Actions::empty(), ProtocolFlags::empty())
}

/// Whether the MTA waits for a reply to `cmd` under `protocol`.
pub(crate) fn needs_reply(cmd: &Command, protocol: ProtocolFlags) -> bool {
    let mut s = Session::new();
    s.set_protocol(protocol);
    s.expects_reply(cmd.code())
}

/// Answers OPTNEG with `reply`, then lets `f` answer; commands `f` leaves
/// to the default (`None`) get CONTINUE when a reply is expected.
pub(crate) fn script(
    reply: OptNegReply,
    mut f: impl FnMut(&Command) -> Option<Answer> + Send + 'static,
) -> Script {
    let mut protocol = reply.protocol;
    if reply.version <= 2 {
        protocol |= ProtocolFlags::NO_UNKNOWN;
    }
    if reply.version <= 3 {
        protocol |= ProtocolFlags::NO_DATA;
    }
    Box::new(move |cmd| {
        if let Command::OptNeg(_) = cmd {
            return Answer::Send(vec![Response::OptNeg(reply.clone())]);
        }
        if let Some(a) = f(cmd) {
            return a;
        }
        if needs_reply(cmd, protocol) {
            Answer::Send(vec![Response::Continue])
        } else {
            Answer::Silent
        }
    })
}

/// A filter that continues everything.
pub(crate) fn continue_all(reply: OptNegReply) -> Script {
    script(reply, |_| None)
}

/// Serves one connection; returns every command received, in order.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    mut script: Script,
) -> Vec<Command> {
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut log = Vec::new();
    loop {
        let mut out = BytesMut::new();
        let mut close = false;
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    close = true;
                    break;
                }
            };
            let Ok(cmd) = Command::decode(&frame) else {
                close = true;
                break;
            };
            log.push(cmd.clone());
            match script(&cmd) {
                Answer::Send(responses) => {
                    for r in responses {
                        r.encode(&mut out, usize::MAX).expect("encodable response");
                    }
                }
                Answer::Raw(bytes) => out.extend_from_slice(&bytes),
                Answer::Silent => {}
                Answer::Close => {
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() && io.write_all(&out).await.is_err() {
            return log;
        }
        if close {
            return log;
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return log,
            Ok(_) => {}
        }
    }
}

/// A fake filter listening on a socket, serving one connection.
pub(crate) struct Fake {
    /// The socket spec to connect to.
    pub(crate) spec: String,
    handle: JoinHandle<Vec<Command>>,
    _dir: Option<tempfile::TempDir>,
}

impl Fake {
    /// Listens on a unix socket in a fresh temporary directory.
    pub(crate) fn unix(script: Script) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("filter.sock");
        let listener = UnixListener::bind(&path).expect("bind unix socket");
        let handle = tokio::spawn(async move {
            let (io, _) = listener.accept().await.expect("accept");
            serve(io, script).await
        });
        Fake {
            spec: format!("unix:{}", path.display()),
            handle,
            _dir: Some(dir),
        }
    }

    /// Listens on 127.0.0.1 on a free port; `spec` is in Postfix syntax.
    pub(crate) async fn tcp(script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let port = listener.local_addr().expect("local addr").port();
        let handle = tokio::spawn(async move {
            let (io, _) = listener.accept().await.expect("accept");
            serve(io, script).await
        });
        Fake {
            spec: format!("inet:127.0.0.1:{port}"),
            handle,
            _dir: None,
        }
    }

    /// Waits for the connection to end and returns what the fake received.
    pub(crate) async fn log(self) -> Vec<Command> {
        bounded(self.handle).await.expect("fake filter task")
    }
}

/// Starts a fake filter on a unix socket that answers from `script`, and
/// connects to it with the default client configuration.
pub(crate) async fn connected(script: Script) -> (Fake, Connection) {
    connected_with(&Client::default(), script).await
}

/// Starts a fake filter on a unix socket that answers from `script`, and
/// connects to it with `client`.
pub(crate) async fn connected_with(client: &Client, script: Script) -> (Fake, Connection) {
    let fake = Fake::unix(script);
    let conn = bounded(client.connect(fake.spec.as_str()))
        .await
        .expect("connect to the fake filter");
    (fake, conn)
}

/// Runs a future with a generous bound so a broken test fails instead of hanging.
pub(crate) async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step took longer than 20 s")
}

/// Command bytes of a log, `D` packets written as `D` + stage (`"DC"`).
pub(crate) fn codes(log: &[Command]) -> Vec<String> {
    log.iter()
        .map(|c| match c {
            Command::Macro(m) => format!("D{}", char::from(m.stage)),
            other => char::from(other.code()).to_string(),
        })
        .collect()
}

/// The macro pairs of the `n`-th macro packet for `stage`, as strings.
pub(crate) fn macros_at(log: &[Command], stage: u8, n: usize) -> Vec<(String, String)> {
    log.iter()
        .filter_map(|c| match c {
            Command::Macro(m) if m.stage == stage => Some(m),
            _ => None,
        })
        .nth(n)
        .map(|m| {
            m.pairs()
                .map(|(k, v)| (text(&k), text(&v)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| panic!("no macro packet #{n} for stage {}", char::from(stage)))
}

/// Name and value of every header in a log, in order.
pub(crate) fn headers(log: &[Command]) -> Vec<(String, String)> {
    log.iter()
        .filter_map(|c| match c {
            Command::Header(h) => Some((text(&h.name), text(&h.value))),
            _ => None,
        })
        .collect()
}

/// The body chunks of a log, in order.
pub(crate) fn body_chunks(log: &[Command]) -> Vec<Bytes> {
    log.iter()
        .filter_map(|c| match c {
            Command::Body(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Bytes as a string (test data is ASCII).
pub(crate) fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}
