//! One milter connection: read frames, run callbacks, write replies.
//!
//! Everything for one connection runs in one task with no per-message
//! spawn. Frames are cut from one read buffer without copying; all the
//! packets of one turn (end-of-message modifications plus the final reply,
//! or the replies to pipelined commands) leave in one write, so Nagle never
//! holds a reply back. What a command needs no waiting for (the state
//! machine, macros, the reply of a stage without a callback) runs without a
//! future; callbacks and the handler of negotiation, CONNECT, end of
//! message, QUIT and aborts run as boxed futures, so that an idle
//! connection's task does not carry their state.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use milter_proto::command::code as cmd;
use milter_proto::{
    Actions, Command, CommandEffect, Connect, Expect, FilterOptions, FrameDecoder, MacroStore,
    OptNeg, ProtocolFlags, Response, Session, negotiate,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, Span, debug, info_span, warn};

use crate::config::{Config, FailurePolicy};
use crate::context::{Context, EomContext, Negotiated};
use crate::error::SessionError;
use crate::milter::{BoxError, Milter, Options, Stages, Status};
use crate::shutdown::Shutdown;

/// A byte stream a milter session can run on. Implemented for tokio's TCP
/// and unix streams and for in-memory duplex pipes; wrap anything else in
/// [`Plain`].
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Called after a read whose packets needed no reply (a reply would
    /// carry the ACK). On TCP this re-arms `TCP_QUICKACK`, so an MTA that
    /// writes a packet needing no reply and then another does not wait
    /// 40 ms for our delayed ACK.
    fn after_read(&self) {}

    /// Waits until the stream is readable without reserving a buffer, so an
    /// idle connection holds no read buffer. The default is always ready.
    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl Transport for tokio::net::TcpStream {
    fn after_read(&self) {
        #[cfg(target_os = "linux")]
        {
            // Best effort: the option is an optimisation, not a requirement.
            let _ = socket2::SockRef::from(self).set_tcp_quickack(true);
        }
    }

    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl Transport for tokio::net::UnixStream {
    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_read_ready(self, cx)
    }
}

impl Transport for tokio::io::DuplexStream {}

/// Adapts any `AsyncRead + AsyncWrite` stream as a [`Transport`].
#[derive(Debug)]
pub struct Plain<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Plain<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Plain<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for Plain<T> {}

/// Serves one milter connection with `milter` until the MTA quits, the
/// connection fails, or the peer breaks the protocol (the error says why).
///
/// For people who own their accept loop; [`crate::Server`] does the rest.
pub async fn serve_connection<M: Milter, T: Transport>(
    io: T,
    milter: M,
    config: &Config,
) -> Result<(), SessionError> {
    /// A shutdown nobody starts: the caller ends the session by dropping it.
    static NEVER: Shutdown = Shutdown::new();
    run(io, milter, config, next_id(), &NEVER, ()).await
}

pub(crate) fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the loop does after a command.
enum Flow {
    Continue,
    Quit,
}

/// The boxed future of a command that must wait: a stage callback, or the
/// full handler.
type Handling<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Flow, SessionError>> + Send + 'a>>;

/// How a command goes on after the part of it that needs no waiting
/// ([`Conn::begin`]).
enum Step {
    /// Done: a macro, an abort with nothing to abort, or a stage the
    /// filter has no callback for (already answered).
    Done,
    /// The filter's callback for this stage command decides the reply.
    Callback(Command, Expect),
    /// Negotiation, CONNECT, end of message, QUIT, or a command that ends
    /// a message the abort callback must see first: the full handler.
    Handler(Command, CommandEffect),
}

/// Why a callback produced no status.
enum Failure {
    Error(BoxError),
    Panic(String),
    Timeout(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "returned an error: {e}"),
            Failure::Panic(msg) => write!(f, "panicked: {msg}"),
            Failure::Timeout(d) => write!(f, "did not finish within {d:?}"),
        }
    }
}

/// Runs a callback with the configured timeout, catching panics.
///
/// Most callbacks finish on their first poll (they decide from what they
/// were given), so the future is polled once before a timer is armed: the
/// timer wheel is only touched by callbacks that really wait, and the
/// timer's state is boxed so that it takes no room in the caller's future.
async fn guarded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, Failure> {
    let mut fut = std::pin::pin!(AssertUnwindSafe(fut).catch_unwind());
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    let outcome = match first {
        Poll::Ready(outcome) => outcome,
        Poll::Pending => match Box::pin(tokio::time::timeout(limit, fut)).await {
            Err(_) => return Err(Failure::Timeout(limit)),
            Ok(outcome) => outcome,
        },
    };
    match outcome {
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Err(Failure::Panic(msg))
        }
        Ok(Err(e)) => Err(Failure::Error(e)),
        Ok(Ok(v)) => Ok(v),
    }
}

/// What callbacks can see, kept apart from the filter so that a
/// [`Context`] can borrow it while the filter is borrowed mutably.
struct View {
    id: u64,
    macros: MacroStore,
    client: Option<Connect>,
    agreed: Negotiated,
}

impl View {
    fn ctx(&self) -> Context<'_> {
        Context {
            id: self.id,
            macros: &self.macros,
            client: self.client.as_ref(),
            agreed: &self.agreed,
        }
    }
}

struct Conn<'c, M: Milter> {
    milter: M,
    id: u64,
    config: &'c Config,
    session: Session,
    view: View,
    /// No-reply bits the filter wanted but the MTA does not know: answer CONTINUE.
    fake_no_reply: ProtocolFlags,
    /// The stages whose callbacks the filter implements, as negotiated.
    stages: Stages,
    message: Option<M::Message>,
    /// Only while a message is in progress (see [`MessageExtras`]).
    extras: Option<Box<MessageExtras>>,
    out: BytesMut,
}

/// What the server keeps for a message in progress: created at MAIL,
/// dropped when the message ends, so that an idle connection's task does
/// not carry it.
struct MessageExtras {
    /// The message's span; its `queue_id` is filled in when the MTA's `i`
    /// macro arrives.
    span: Span,
    queue_id_known: bool,
    /// Header and recipient modifications of the end-of-message callback.
    mods: BytesMut,
    /// Replacement body packets of the end-of-message callback.
    body: BytesMut,
}

impl MessageExtras {
    fn new(span: Span) -> Box<Self> {
        Box::new(Self {
            span,
            queue_id_known: false,
            mods: BytesMut::new(),
            body: BytesMut::new(),
        })
    }
}

fn initial_agreed() -> Negotiated {
    Negotiated {
        version: 0,
        actions: Actions::empty(),
        protocol: ProtocolFlags::empty(),
        max_data_size: milter_proto::frame::MAX_DATA_SIZE_64K,
    }
}

/// Protocol flags for a filter's options against an offer.
fn wanted_protocol(options: &Options, offer: &OptNeg) -> ProtocolFlags {
    let mut p = ProtocolFlags::empty();
    let pairs = [
        (
            Stages::CONNECT,
            ProtocolFlags::NO_CONNECT,
            ProtocolFlags::NR_CONNECT,
        ),
        (Stages::HELO, ProtocolFlags::NO_HELO, ProtocolFlags::NR_HELO),
        (Stages::MAIL, ProtocolFlags::NO_MAIL, ProtocolFlags::NR_MAIL),
        (Stages::RCPT, ProtocolFlags::NO_RCPT, ProtocolFlags::NR_RCPT),
        (Stages::DATA, ProtocolFlags::NO_DATA, ProtocolFlags::NR_DATA),
        (
            Stages::HEADER,
            ProtocolFlags::NO_HEADERS,
            ProtocolFlags::NR_HEADER,
        ),
        (Stages::EOH, ProtocolFlags::NO_EOH, ProtocolFlags::NR_EOH),
        (Stages::BODY, ProtocolFlags::NO_BODY, ProtocolFlags::NR_BODY),
        (
            Stages::UNKNOWN,
            ProtocolFlags::NO_UNKNOWN,
            ProtocolFlags::NR_UNKNOWN,
        ),
    ];
    for (stage, no, nr) in pairs {
        if !options.stages.contains(stage) {
            p |= no;
        } else if options.no_reply.contains(stage) {
            p |= nr;
        }
    }
    // A stage nobody handles needs no reply either: if the MTA knows NO*
    // it will not send it, and if it does not, NR spares the round trip.
    if offer.protocol.contains(ProtocolFlags::SKIP) {
        p |= ProtocolFlags::SKIP;
    }
    if options.header_leading_space {
        p |= ProtocolFlags::HEADER_LEADING_SPACE;
    }
    if options.rejected_recipients {
        p |= ProtocolFlags::RCPT_REJ;
    }
    p
}

fn stage_of(code: u8) -> Stages {
    match code {
        cmd::CONNECT => Stages::CONNECT,
        cmd::HELO => Stages::HELO,
        cmd::MAIL => Stages::MAIL,
        cmd::RCPT => Stages::RCPT,
        cmd::DATA => Stages::DATA,
        cmd::HEADER => Stages::HEADER,
        cmd::EOH => Stages::EOH,
        cmd::BODY => Stages::BODY,
        cmd::UNKNOWN => Stages::UNKNOWN,
        _ => Stages::empty(),
    }
}

/// The failure policy's answer to a failed callback, logged once.
fn failed(config: &Config, id: u64, stage: &'static str, failure: Failure) -> Status {
    let status = match config.failure_policy {
        FailurePolicy::Tempfail => Status::Tempfail,
        FailurePolicy::Reject => Status::Reject,
        FailurePolicy::Continue => Status::Continue,
        FailurePolicy::Accept => Status::Accept,
        FailurePolicy::Reply(ref r) => Status::Reply(r.clone()),
    };
    warn!(conn = id, stage, reply = ?status, "milter callback {failure}; answering with the failure policy");
    status
}

/// A callback's future, as `async_trait` boxes it.
type CallbackFuture<'f> =
    std::pin::Pin<Box<dyn Future<Output = Result<Status, BoxError>> + Send + 'f>>;

/// The filter's callback for a stage command other than CONNECT and end of
/// message, with the stage's name for the log; `None` if the command has
/// none (or needs a message and none is in progress).
fn stage_future<'f, M: Milter>(
    milter: &'f mut M,
    message: Option<&'f mut M::Message>,
    ctx: &'f Context<'f>,
    command: &'f Command,
) -> Option<(&'static str, CallbackFuture<'f>)> {
    Some(match (command, message) {
        (Command::Helo(name), _) => ("helo", milter.helo(ctx, name)),
        (Command::Unknown(line), _) => ("unknown", milter.unknown(ctx, line)),
        (Command::Mail(env), Some(msg)) => ("envfrom", milter.envfrom(ctx, msg, env)),
        (Command::Rcpt(env), Some(msg)) => ("envrcpt", milter.envrcpt(ctx, msg, env)),
        (Command::Data, Some(msg)) => ("data", milter.data(ctx, msg)),
        (Command::Header(h), Some(msg)) => ("header", milter.header(ctx, msg, h)),
        (Command::EndOfHeaders, Some(msg)) => ("eoh", milter.eoh(ctx, msg)),
        (Command::Body(chunk), Some(msg)) => ("body", milter.body(ctx, msg, chunk)),
        _ => return None,
    })
}

impl<M: Milter> Conn<'_, M> {
    fn failed(&self, stage: &'static str, failure: Failure) -> Status {
        failed(self.config, self.id, stage, failure)
    }

    /// The span callbacks of the message in progress run in.
    fn message_span(&self) -> Span {
        self.extras
            .as_ref()
            .map_or_else(Span::none, |x| x.span.clone())
    }

    fn status_to_response(&self, status: Status, at_eom: bool) -> Response {
        match status {
            Status::Continue => Response::Continue,
            Status::Accept => Response::Accept,
            Status::Reject => Response::Reject,
            Status::Tempfail => Response::Tempfail,
            Status::Discard => Response::Discard,
            Status::Skip if at_eom || !self.view.agreed.protocol.contains(ProtocolFlags::SKIP) => {
                Response::Continue
            }
            Status::Skip => Response::Skip,
            Status::Reply(reply) => Response::ReplyCode(reply.to_bytes()),
        }
    }

    fn reply(&mut self, response: &Response) -> Result<(), SessionError> {
        let effect = self.session.on_response(response)?;
        response.encode(&mut self.out, self.view.agreed.max_data_size)?;
        if effect.message_ended {
            self.message = None;
        }
        Ok(())
    }

    async fn negotiate(&mut self, offer: &OptNeg) -> Result<(), SessionError> {
        let mut options =
            match guarded(self.config.callback_timeout, self.milter.negotiate(offer)).await {
                Ok(o) => o,
                Err(failure) => return Err(SessionError::NegotiateCallback(failure.to_string())),
            };
        let wanted = FilterOptions {
            actions: options.actions,
            protocol: wanted_protocol(&options, offer),
            max_data_size: options.max_data_size,
            macros: std::mem::take(&mut options.macros),
        };
        let agreed = negotiate(offer, &wanted)?;
        self.fake_no_reply = agreed.fake_no_reply;
        self.stages = options.stages;
        self.view.agreed = Negotiated {
            version: agreed.version,
            actions: agreed.actions,
            protocol: agreed.protocol,
            max_data_size: agreed.max_data_size,
        };
        let reply = Response::OptNeg(agreed.reply);
        debug!(conn = self.id, version = self.view.agreed.version, actions = ?self.view.agreed.actions, protocol = ?self.view.agreed.protocol, "negotiated");
        self.reply(&reply)
    }

    /// The part of a command that needs no waiting: the state machine, the
    /// macros, and the reply for a stage the filter has no callback for.
    /// Most commands end here (every macro packet does), so they cost no
    /// future; the others say how they go on.
    fn begin(&mut self, command: Command) -> Result<Step, SessionError> {
        let code = command.code();
        let effect = self.session.on_command(&command)?;
        self.view.macros.on_command(code);
        if effect.aborted && self.message.is_some() {
            return Ok(Step::Handler(command, effect));
        }
        if effect.message_started {
            self.message = Some(M::Message::default());
        }
        match command {
            Command::OptNeg(_)
            | Command::Connect(_)
            | Command::Quit
            | Command::QuitNc
            | Command::EndOfMessage(_) => Ok(Step::Handler(command, effect)),
            other => Ok(match self.route(other, effect.expect)? {
                Some(command) => Step::Callback(command, effect.expect),
                None => Step::Done,
            }),
        }
    }

    /// Macros, ABORT and the stage commands other than CONNECT and end of
    /// message: does what needs no waiting (macros stored, the reply of a
    /// stage without a callback) and gives back the command whose callback
    /// decides.
    fn route(&mut self, command: Command, expect: Expect) -> Result<Option<Command>, SessionError> {
        let code = command.code();
        match command {
            Command::Macro(m) => {
                self.set_macros(m);
                Ok(None)
            }
            Command::Abort => Ok(None),
            other if self.stages.contains(stage_of(code)) => Ok(Some(other)),
            _ => {
                self.answer(code, expect, Status::Continue)?;
                Ok(None)
            }
        }
    }

    /// Stores a macro packet's values; names the message's span after the
    /// queue id once it is known.
    fn set_macros(&mut self, m: milter_proto::Macros) {
        self.view.macros.set(m);
        if let Some(x) = self.extras.as_mut()
            && !x.queue_id_known
            && !x.span.is_disabled()
            && let Some(id) = self.view.macros.get("i")
        {
            x.span
                .record("queue_id", String::from_utf8_lossy(&id).as_ref());
            x.queue_id_known = true;
        }
    }

    /// Handles a command [`Conn::begin`] passed on (with what it meant);
    /// replies are appended to `self.out`.
    async fn handle(
        &mut self,
        command: Command,
        effect: CommandEffect,
        io: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Flow, SessionError> {
        let limit = self.config.callback_timeout;
        if effect.aborted
            && let Some(msg) = self.message.take()
        {
            let ctx = self.view.ctx();
            if let Err(failure) = guarded(limit, self.milter.abort(&ctx, msg)).await {
                warn!(conn = self.id, "abort callback {failure}");
            }
        }
        if effect.message_started {
            self.message = Some(M::Message::default());
        }
        match command {
            Command::OptNeg(offer) => self.negotiate(&offer).await?,
            Command::Connect(mut c) => {
                // Connection-level data outlives many read buffers: own it.
                c.detach();
                self.view.client = Some(c);
                let ctx = self.view.ctx();
                let status = match (self.stages.contains(Stages::CONNECT), ctx.client) {
                    (true, Some(client)) => guarded(limit, self.milter.connect(&ctx, client))
                        .await
                        .unwrap_or_else(|f| self.failed("connect", f)),
                    _ => Status::Continue,
                };
                self.answer(cmd::CONNECT, effect.expect, status)?;
            }
            Command::Quit | Command::QuitNc => {
                let ctx = self.view.ctx();
                if let Err(failure) = guarded(limit, self.milter.close(&ctx)).await {
                    warn!(conn = self.id, "close callback {failure}");
                }
                self.view.client = None;
                self.message = None;
                if effect.quit {
                    return Ok(Flow::Quit);
                }
            }
            Command::EndOfMessage(chunk) => {
                let status = self.end_of_message(chunk, io).await?;
                let response = self.status_to_response(status, true);
                if let Some(x) = self.extras.as_mut() {
                    self.out.extend_from_slice(&x.mods);
                    self.out.extend_from_slice(&x.body);
                    x.mods.clear();
                    x.body.clear();
                }
                self.reply(&response)?;
                self.message = None;
            }
            // A command that ended a message: what remains of it is what
            // `begin` does for it.
            other => {
                if let Some(command) = self.route(other, effect.expect)? {
                    return self.callback(command, effect.expect).await;
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Replies to a stage command with the filter's decision, if the MTA
    /// waits for a reply (a no-reply stage's decision other than continue
    /// is dropped, with a warning).
    fn answer(&mut self, code: u8, expect: Expect, status: Status) -> Result<(), SessionError> {
        match expect {
            Expect::Reply => {
                let response = if ProtocolFlags::no_reply_bit(code)
                    .is_some_and(|nr| self.fake_no_reply.contains(nr))
                {
                    if status != Status::Continue {
                        warn!(conn = self.id, command = %char::from(code), ?status, "decision of a no-reply stage dropped");
                    }
                    Response::Continue
                } else {
                    self.status_to_response(status, false)
                };
                self.reply(&response)
            }
            Expect::Nothing if status != Status::Continue => {
                warn!(conn = self.id, command = %char::from(code), ?status, "decision of a no-reply stage dropped");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs a stage command's callback and answers with its decision.
    async fn callback(&mut self, command: Command, expect: Expect) -> Result<Flow, SessionError> {
        let code = command.code();
        let status = {
            let ctx = self.view.ctx();
            match stage_future(&mut self.milter, self.message.as_mut(), &ctx, &command) {
                Some((stage, fut)) => match guarded(self.config.callback_timeout, fut).await {
                    Ok(status) => status,
                    Err(failure) => failed(self.config, self.id, stage, failure),
                },
                None => Status::Continue,
            }
        };
        self.answer(code, expect, status)?;
        Ok(Flow::Continue)
    }

    /// End of message: an optional last body chunk, then the eom callback
    /// with its modifications.
    async fn end_of_message(
        &mut self,
        chunk: Bytes,
        io: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Status, SessionError> {
        let limit = self.config.callback_timeout;
        let msg = self.message.get_or_insert_with(M::Message::default);
        if !chunk.is_empty() && self.stages.contains(Stages::BODY) {
            let ctx = self.view.ctx();
            // libmilter would send the body decision and then the EOM one
            // (two replies to one command); a decision here is final instead.
            match guarded(limit, self.milter.body(&ctx, msg, &chunk)).await {
                Ok(Status::Continue) | Ok(Status::Skip) => {}
                Ok(status) => return Ok(status),
                Err(failure) => return Ok(failed(self.config, self.id, "body", failure)),
            }
        }
        let extras = self
            .extras
            .get_or_insert_with(|| MessageExtras::new(Span::none()));
        let mut eom = EomContext {
            ctx: self.view.ctx(),
            out: &mut self.out,
            mods: &mut extras.mods,
            body: &mut extras.body,
            io,
            max_payload: self.view.agreed.max_data_size,
            body_replaced: false,
            modifications: 0,
        };
        let result = guarded(limit, self.milter.eom(&mut eom, msg)).await;
        Ok(match result {
            Ok(status) => status,
            Err(failure) => {
                // Modifications of a failed callback are not sent.
                extras.mods.clear();
                extras.body.clear();
                failed(self.config, self.id, "eom", failure)
            }
        })
    }

    /// Runs the abort and close callbacks when the connection ends
    /// without QUIT.
    async fn lost(&mut self) {
        let limit = self.config.callback_timeout;
        let ctx = self.view.ctx();
        if let Some(msg) = self.message.take()
            && let Err(failure) = guarded(limit, self.milter.abort(&ctx, msg)).await
        {
            warn!(conn = self.id, "abort callback {failure}");
        }
        if self.session.is_negotiated()
            && let Err(failure) = guarded(limit, self.milter.close(&ctx)).await
        {
            warn!(conn = self.id, "close callback {failure}");
        }
    }
}

/// The size a read buffer is given before a read.
const READ_RESERVE: usize = 8 * 1024;
/// The read buffer reserved between messages (macros, CONNECT, HELO, MAIL).
const IDLE_READ_RESERVE: usize = 512;
/// A read buffer larger than this is released once it is empty.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Runs a session to its end; `guard` (the connection-limit permit) is
/// dropped at the end.
///
/// The returned future is the whole task of a session, so what it holds
/// is what every idle connection costs. Hence a plain function returning
/// an `async move` block that owns everything (the caller need not wrap it
/// in another block holding a second copy of the stream), rather than an
/// `async fn`, which keeps its arguments twice.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<'a, M, T, C, S, G>(
    mut io: T,
    milter: M,
    config: C,
    id: u64,
    shutdown: S,
    guard: G,
) -> impl Future<Output = Result<(), SessionError>> + 'a
where
    M: Milter + 'a,
    T: Transport + 'a,
    C: std::ops::Deref<Target = Config> + 'a,
    S: std::borrow::Borrow<Shutdown> + 'a,
    G: 'a,
{
    async move {
        let config: &Config = &config;
        let shutdown: &Shutdown = shutdown.borrow();
        let mut conn = Conn {
            milter,
            id,
            config,
            session: Session::new(),
            view: View {
                id,
                macros: MacroStore::new(),
                client: None,
                agreed: initial_agreed(),
            },
            fake_no_reply: ProtocolFlags::empty(),
            stages: Options::default().stages,
            message: None,
            extras: None,
            out: BytesMut::new(),
        };
        let result = tokio::select! {
            biased;
            () = shutdown.until_cut() => Err(SessionError::Shutdown),
            r = serve(&mut conn, &mut io, shutdown) => r,
        };
        match &result {
            Ok(Ended::Quit) => {}
            Ok(Ended::Shutdown) | Err(SessionError::Closed) => {
                Box::pin(conn.lost()).await;
            }
            Err(e) => {
                if !matches!(e, SessionError::Shutdown) {
                    warn!(conn = id, error = %e, "closing milter session");
                }
                Box::pin(conn.lost()).await;
            }
        }
        if !matches!(result, Ok(Ended::Quit)) {
            // Tell the MTA at once; after QUIT it closes by itself.
            let _ = io.shutdown().await;
        }
        drop(guard);
        match result {
            Ok(_) | Err(SessionError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// How a session ended without error.
enum Ended {
    /// The MTA sent QUIT.
    Quit,
    /// The server is shutting down and the session was idle.
    Shutdown,
}

async fn serve<M: Milter, T: Transport>(
    conn: &mut Conn<'_, M>,
    io: &mut T,
    shutdown: &Shutdown,
) -> Result<Ended, SessionError> {
    let config = conn.config;
    let mut decoder = FrameDecoder::new(config.max_inbound_frame);
    let mut buf = BytesMut::new();
    // One idle timer for the session. Activity only moves `deadline`; the
    // timer is re-armed when it fires before the deadline it guards.
    let mut deadline = tokio::time::Instant::now() + config.idle_timeout;
    let idle_timer = tokio::time::sleep_until(deadline);
    tokio::pin!(idle_timer);
    // Draining is seen on the wake-up `Shutdown::until_cut` gets for it.
    let draining = std::future::poll_fn(|_| {
        if shutdown.is_draining() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::pin!(draining);
    loop {
        // Every whole frame in the buffer, then one write for all replies.
        loop {
            // A command that must wait runs as a boxed future: it would
            // otherwise sit in every idle connection's task. The future is
            // made inside this block so that neither the command nor the
            // decoder's result takes room in this future's saved state.
            let flow = {
                let waiting: Option<Handling<'_>> = {
                    let Some(command) = next_command(&mut decoder, &mut buf)? else {
                        break;
                    };
                    if matches!(command, Command::Mail(_)) {
                        let span = info_span!("message", queue_id = tracing::field::Empty);
                        conn.extras = Some(MessageExtras::new(span));
                    }
                    debug!(conn = conn.id, command = %char::from(command.code()), "received");
                    match conn.begin(command)? {
                        Step::Done => None,
                        Step::Callback(command, expect) => {
                            let span = conn.message_span();
                            Some(Box::pin(conn.callback(command, expect).instrument(span)))
                        }
                        Step::Handler(command, effect) => {
                            let span = conn.message_span();
                            Some(Box::pin(conn.handle(command, effect, io).instrument(span)))
                        }
                    }
                };
                match waiting {
                    Some(handling) => handling.await?,
                    None => Flow::Continue,
                }
            };
            if !conn.session.in_message() {
                conn.extras = None;
            }
            if let Flow::Quit = flow {
                flush(conn, io).await?;
                return Ok(Ended::Quit);
            }
        }
        let wrote = flush(conn, io).await?;
        let between_messages = !conn.session.in_message() && conn.session.pending_reply().is_none();
        if between_messages && shutdown.is_draining() {
            debug!(conn = conn.id, "closing idle session for shutdown");
            return Ok(Ended::Shutdown);
        }
        if !wrote {
            // Nothing of ours carries the ACK of what we read: send it now.
            io.after_read();
        }
        if between_messages {
            // Between messages a connection keeps no buffer: not the read
            // buffer (the macros it still needs are copied out of it
            // first), nor the reply buffer.
            if buf.is_empty() {
                conn.view.macros.detach();
                buf = BytesMut::new();
            }
            if conn.out.is_empty() && conn.out.capacity() > 0 {
                conn.out = BytesMut::new();
            }
        } else if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
            buf = BytesMut::new();
        }
        let wait = async {
            if buf.is_empty() && between_messages {
                std::future::poll_fn(|cx| io.poll_read_ready(cx)).await?;
            }
            let reserve = if between_messages {
                IDLE_READ_RESERVE
            } else {
                READ_RESERVE
            };
            if buf.capacity() - buf.len() < reserve / 2 {
                buf.reserve(reserve);
            }
            io.read_buf(&mut buf).await
        };
        tokio::pin!(wait);
        deadline = tokio::time::Instant::now() + config.idle_timeout;
        let n = loop {
            tokio::select! {
                biased;
                r = &mut wait => break r?,
                () = &mut draining, if between_messages => {
                    debug!(conn = conn.id, "closing idle session for shutdown");
                    return Ok(Ended::Shutdown);
                }
                () = &mut idle_timer => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(SessionError::IdleTimeout(config.idle_timeout));
                    }
                    idle_timer.as_mut().reset(deadline);
                }
            }
        };
        if n == 0 {
            return if buf.is_empty() && conn.session.is_closed() {
                Ok(Ended::Quit)
            } else if buf.is_empty() {
                Err(SessionError::Closed)
            } else {
                Err(SessionError::TruncatedFrame)
            };
        }
    }
}

/// The next whole command in `buf`, if any.
fn next_command(
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
) -> Result<Option<Command>, SessionError> {
    match decoder.decode(buf)? {
        Some(frame) => Ok(Some(Command::from_frame(frame)?)),
        None => Ok(None),
    }
}

/// Writes the replies of a turn; tells whether anything was written.
async fn flush<M: Milter, T: Transport>(
    conn: &mut Conn<'_, M>,
    io: &mut T,
) -> Result<bool, SessionError> {
    if conn.out.is_empty() {
        return Ok(false);
    }
    // A socket with room takes the whole turn at once: no timer for that.
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(
            match std::pin::Pin::new(&mut *io).poll_write(cx, &conn.out) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            },
        )
    })
    .await;
    let written = match first {
        Some(Ok(0)) => return Err(SessionError::Io(io::ErrorKind::WriteZero.into())),
        Some(Ok(n)) => n,
        Some(Err(e)) => return Err(e.into()),
        None => 0,
    };
    if written < conn.out.len() {
        // The slow path, with its timer, is boxed so that its state is not
        // reserved in every session's task.
        let limit = conn.config.write_timeout;
        let rest = conn.out.get(written..).unwrap_or_default();
        match Box::pin(tokio::time::timeout(limit, io.write_all(rest))).await {
            Err(_) => return Err(SessionError::WriteTimeout(limit)),
            Ok(r) => r?,
        }
    }
    io.flush().await?;
    conn.out.clear();
    if conn.out.capacity() > SHRINK_ABOVE {
        conn.out = BytesMut::new();
    }
    Ok(true)
}
