//! One milter connection: read frames, run callbacks, write replies.
//!
//! Everything for one connection runs in one task with no per-message
//! spawn. Frames are cut from one read buffer without copying; all the
//! packets of one turn (end-of-message modifications plus the final reply,
//! or the replies to pipelined commands) leave in one write, so Nagle never
//! holds a reply back. What a command needs no waiting for (the state
//! machine, macros, the reply of a stage without a callback) runs without a
//! future. A callback is polled once in place, and most decide then; only
//! one that waits is boxed with its timer. The handlers of negotiation, end
//! of message and aborts run as boxed futures. Either way an idle
//! connection's task does not carry their state.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_proto::command::code as cmd;
use milter_proto::{
    Actions, Command, CommandEffect, Expect, FilterOptions, FrameDecoder, MacroStore, OptNeg,
    ProtocolFlags, Response, Session, negotiate,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, Span, debug, info_span, warn};

use crate::bufpool;
use crate::config::{Config, FailurePolicy};
use crate::context::{Context, EomContext, Negotiated};
use crate::error::SessionError;
use crate::milter::{BoxError, CallbackFuture, Milter, Options, Stages, Status};
use crate::shutdown::Shutdown;

/// A byte stream a milter session can run on. Implemented for tokio's TCP
/// and unix streams, for [`crate::UnixConnection`] (a unix stream that
/// the MTA's reads of replies do not wake; prefer it to tokio's) and for
/// in-memory duplex pipes; wrap anything else in [`Plain`].
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

impl Transport for milter_io::UnixConnection {
    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        milter_io::UnixConnection::poll_read_ready(self, cx)
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
/// On a unix socket, wrap each accepted stream in a
/// [`crate::UnixConnection`]:
///
/// ```no_run
/// # use milter_server::{Config, Milter, UnixConnection, async_trait, serve_connection};
/// # struct AcceptAll;
/// # #[async_trait]
/// # impl Milter for AcceptAll { type Message = (); }
/// # async fn run(listener: std::os::unix::net::UnixListener) -> std::io::Result<()> {
/// let (stream, _) = listener.accept()?;
/// let conn = UnixConnection::new(stream)?;
/// tokio::spawn(async move { serve_connection(conn, AcceptAll, &Config::default()).await });
/// # Ok(())
/// # }
/// ```
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

/// The boxed future of a handler: negotiation, end of message, or the abort
/// callback of a message another command ended.
type Handling<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send + 'a>>;

/// How a command goes on after the part of it that needs no waiting
/// ([`Conn::begin`]). A command something waits for is kept in the
/// [`MessageExtras`] meanwhile, so that what the session's task holds
/// across a wait is this small value, not the command.
#[derive(Clone, Copy)]
enum Step {
    /// Done: a macro, an abort with nothing to abort, or a stage the
    /// filter has no callback for (already answered).
    Done,
    /// The filter's callback for this stage command (its code) decides
    /// the reply.
    Callback(u8, Expect),
    /// CONNECT, its client kept: the connect callback decides.
    Connect(Expect),
    /// QUIT (`true`) or QUIT_NC (`false`): the close callback runs.
    Quit(bool),
    /// Negotiation or end of message: the full handler.
    Handler,
    /// A command that ended a message the abort callback must see first;
    /// then the command goes on as [`Conn::dispatch`] says.
    Abort(CommandEffect),
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

/// Polls a callback once, catching a panic.
fn poll_callback<T>(
    fut: &mut CallbackFuture<'_, T>,
    cx: &mut TaskContext<'_>,
) -> Poll<Result<T, Failure>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(Ok(v))) => Poll::Ready(Ok(v)),
        Ok(Poll::Ready(Err(e))) => Poll::Ready(Err(Failure::Error(e))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Poll::Ready(Err(Failure::Panic(msg)))
        }
    }
}

/// What is left of a callback that did not finish on its first poll.
type Rest<'f, T> = std::pin::Pin<Box<Guarded<'f, T>>>;

/// A callback after its first poll ([`poll_now`]).
enum Started<'f, T> {
    /// It finished: its outcome.
    Done(Result<T, Failure>),
    /// It waits: what is left of it.
    Waiting(Rest<'f, T>),
}

impl<'f, T> Started<'f, T> {
    /// The outcome or what is left, apart (see [`finish!`]).
    #[allow(clippy::type_complexity)]
    fn split(started: Option<Self>) -> (Option<Result<T, Failure>>, Option<Rest<'f, T>>) {
        match started {
            Some(Started::Done(outcome)) => (Some(outcome), None),
            Some(Started::Waiting(rest)) => (None, Some(rest)),
            None => (None, None),
        }
    }
}

/// Finishes a callback started in place (an `Option<Started>`, `None` if
/// there is no callback): its outcome, waiting for it if it waits. The
/// outcome and what is left are taken apart first, so that across the wait
/// the session's task holds the box of what is left and nothing more; a
/// `match` on the started value would keep all of it there, outcome
/// included, in every idle connection.
macro_rules! finish {
    ($started:expr) => {{
        let (done, rest) = Started::split($started);
        match rest {
            Some(rest) => {
                drop(done);
                Some(rest.await)
            }
            None => done,
        }
    }};
}

/// Polls a callback once, in place, and boxes what is left if it waits.
///
/// Most callbacks finish on their first poll (they decide from what they
/// were given): such a callback costs no allocation besides its own box
/// and no timer, and no room in the session's task. That poll is made
/// with a waker that does nothing, so that it needs no `async` context.
/// A callback that waits is boxed and, once awaited, polled again with the
/// task's waker straight away; the contract of [`Future::poll`] is that
/// only the waker of the latest poll is woken. Its timer is armed then.
fn poll_now<'f, T>(
    limit: Duration,
    span: Option<&'f Span>,
    fut: CallbackFuture<'f, T>,
) -> Started<'f, T> {
    let mut guarded = Guarded {
        fut,
        span,
        limit,
        timer: None,
    };
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    match guarded.poll_first(&mut cx) {
        Poll::Ready(outcome) => Started::Done(outcome),
        Poll::Pending => Started::Waiting(Box::pin(guarded)),
    }
}

/// Runs a callback to its end: [`poll_now`], then what is left.
async fn run_guarded<T>(
    limit: Duration,
    span: Option<&Span>,
    fut: CallbackFuture<'_, T>,
) -> Result<T, Failure> {
    match poll_now(limit, span, fut) {
        Started::Done(outcome) => outcome,
        Started::Waiting(rest) => rest.await,
    }
}

/// A callback with the configured timeout, catching panics, polled in
/// `span` if one is given.
struct Guarded<'f, T> {
    fut: CallbackFuture<'f, T>,
    span: Option<&'f Span>,
    limit: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Guarded<'_, T> {
    /// The first poll: the callback only, with no timer yet.
    fn poll_first(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<T, Failure>> {
        let _entered = self.span.map(Span::enter);
        poll_callback(&mut self.fut, cx)
    }
}

impl<T> Future for Guarded<'_, T> {
    type Output = Result<T, Failure>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(outcome) = this.poll_first(cx) {
            return Poll::Ready(outcome);
        }
        let limit = this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Failure::Timeout(limit))),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct Conn<'c, M: Milter> {
    milter: M,
    id: u64,
    config: &'c Config,
    session: Session,
    /// What callbacks see, kept apart from the filter so that it can be
    /// lent while the filter is borrowed mutably.
    view: Context<'static>,
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
/// not carry it. Outside a message it holds a command being waited for,
/// and is dropped once the command is done.
struct MessageExtras {
    /// The message's span; its `queue_id` is filled in when the MTA's `i`
    /// macro arrives.
    span: Span,
    queue_id_known: bool,
    /// The command being waited for (see [`Step`]); a callback borrows it.
    command: Option<Command>,
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
            command: None,
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

/// The filter's callback for a stage command other than CONNECT and end of
/// message; `None` if the command has none (or needs a message and none is
/// in progress).
fn stage_future<'f, M: Milter>(
    milter: &'f mut M,
    message: Option<&'f mut M::Message>,
    ctx: &'f Context<'f>,
    command: &'f Command,
) -> Option<CallbackFuture<'f, Status>> {
    Some(match (command, message) {
        (Command::Helo(name), _) => milter.helo(ctx, name),
        (Command::Unknown(line), _) => milter.unknown(ctx, line),
        (Command::Mail(env), Some(msg)) => milter.envfrom(ctx, msg, env),
        (Command::Rcpt(env), Some(msg)) => milter.envrcpt(ctx, msg, env),
        (Command::Data, Some(msg)) => milter.data(ctx, msg),
        (Command::Header(h), Some(msg)) => milter.header(ctx, msg, h),
        (Command::EndOfHeaders, Some(msg)) => milter.eoh(ctx, msg),
        (Command::Body(chunk), Some(msg)) => milter.body(ctx, msg, chunk),
        _ => return None,
    })
}

/// The name of a stage command's callback, for the log.
fn stage_name(code: u8) -> &'static str {
    match code {
        cmd::CONNECT => "connect",
        cmd::HELO => "helo",
        cmd::MAIL => "envfrom",
        cmd::RCPT => "envrcpt",
        cmd::DATA => "data",
        cmd::HEADER => "header",
        cmd::EOH => "eoh",
        cmd::BODY => "body",
        cmd::UNKNOWN => "unknown",
        _ => "stage",
    }
}

impl<M: Milter> Conn<'_, M> {
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
        if self.out.capacity() == 0 {
            self.out = bufpool::take();
        }
        response.encode(&mut self.out, self.view.agreed.max_data_size)?;
        if effect.message_ended {
            self.message = None;
        }
        Ok(())
    }

    async fn negotiate(&mut self, offer: &OptNeg) -> Result<(), SessionError> {
        let mut options = match run_guarded(
            self.config.callback_timeout,
            None,
            self.milter.negotiate(offer),
        )
        .await
        {
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
            self.keep(command);
            return Ok(Step::Abort(effect));
        }
        self.dispatch(command, effect)
    }

    /// Keeps a command something waits for (see [`Step`]).
    fn keep(&mut self, command: Command) {
        let extras = self
            .extras
            .get_or_insert_with(|| MessageExtras::new(Span::none()));
        extras.command = Some(command);
    }

    /// Takes back the command [`Conn::keep`] kept.
    fn kept(&mut self) -> Option<Command> {
        self.extras.as_mut().and_then(|x| x.command.take())
    }

    /// What a command does after the state machine, the macros and any
    /// abort: starts a message, keeps the client of CONNECT, and says how
    /// the command goes on.
    fn dispatch(&mut self, command: Command, effect: CommandEffect) -> Result<Step, SessionError> {
        if effect.message_started {
            self.message = Some(M::Message::default());
        }
        match command {
            Command::OptNeg(_) | Command::EndOfMessage(_) => {
                self.keep(command);
                Ok(Step::Handler)
            }
            Command::Connect(mut client) => {
                // Connection-level data outlives many read buffers: own it.
                client.detach();
                self.view.client = Some(client);
                Ok(Step::Connect(effect.expect))
            }
            Command::Quit | Command::QuitNc => Ok(Step::Quit(effect.quit)),
            other => Ok(match self.route(other, effect.expect)? {
                Some(command) => {
                    let code = command.code();
                    self.keep(command);
                    Step::Callback(code, effect.expect)
                }
                None => Step::Done,
            }),
        }
    }

    /// Runs the abort callback of the message the kept command ended, then
    /// goes on with the command.
    async fn abort_message(&mut self, effect: CommandEffect) -> Result<Step, SessionError> {
        if let Some(msg) = self.message.take() {
            let fut = self.milter.abort(&self.view, msg);
            if let Err(failure) = run_guarded(self.config.callback_timeout, None, fut).await {
                warn!(conn = self.id, "abort callback {failure}");
            }
        }
        match self.kept() {
            Some(command) => self.dispatch(command, effect),
            None => Ok(Step::Done),
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

    /// Negotiation and end of message, the command kept; replies are
    /// appended to `self.out`.
    async fn handle(
        &mut self,
        io: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<(), SessionError> {
        match self.kept() {
            Some(Command::OptNeg(offer)) => self.negotiate(&offer).await?,
            Some(Command::EndOfMessage(chunk)) => {
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
            // `dispatch` sends nothing else here.
            _ => {}
        }
        Ok(())
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

    /// Starts the kept stage command's callback, in the message's span: its
    /// outcome, or what is left of it (see [`poll_now`]); [`Conn::settle`]
    /// answers.
    fn callback_now(&mut self) -> Option<Started<'_, Status>> {
        let extras = self.extras.as_deref()?;
        let command = extras.command.as_ref()?;
        let message = self.message.as_mut();
        let fut = stage_future(&mut self.milter, message, &self.view, command)?;
        Some(poll_now(
            self.config.callback_timeout,
            Some(&extras.span),
            fut,
        ))
    }

    /// Starts the connect callback, the client already kept.
    fn connect_now(&mut self) -> Option<Started<'_, Status>> {
        let client = self.view.client.as_ref()?;
        if !self.stages.contains(Stages::CONNECT) {
            return None;
        }
        let fut = self.milter.connect(&self.view, client);
        Some(poll_now(self.config.callback_timeout, None, fut))
    }

    /// Starts the close callback of QUIT or QUIT_NC.
    fn close_now(&mut self) -> Option<Started<'_, ()>> {
        let fut = self.milter.close(&self.view);
        Some(poll_now(self.config.callback_timeout, None, fut))
    }

    /// Answers a stage command with its callback's outcome (`None`: no
    /// callback, continue; a failure gets the failure policy's reply,
    /// logged in the message's span) and lets go of the command.
    fn settle(
        &mut self,
        code: u8,
        expect: Expect,
        outcome: Option<Result<Status, Failure>>,
    ) -> Result<Flow, SessionError> {
        let status = match outcome {
            None => Status::Continue,
            Some(Ok(status)) => status,
            Some(Err(failure)) => {
                let _entered = self.extras.as_ref().map(|x| x.span.enter());
                failed(self.config, self.id, stage_name(code), failure)
            }
        };
        if let Some(x) = self.extras.as_mut() {
            x.command = None;
        }
        self.answer(code, expect, status)?;
        Ok(Flow::Continue)
    }

    /// After the close callback of QUIT (`quit`) or QUIT_NC: forgets the
    /// client.
    fn closed(&mut self, outcome: Option<Result<(), Failure>>, quit: bool) -> Flow {
        if let Some(Err(failure)) = outcome {
            warn!(conn = self.id, "close callback {failure}");
        }
        self.view.client = None;
        self.message = None;
        if quit { Flow::Quit } else { Flow::Continue }
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
            // libmilter would send the body decision and then the EOM one
            // (two replies to one command); a decision here is final instead.
            let fut = self.milter.body(&self.view, msg, &chunk);
            match run_guarded(limit, None, fut).await {
                Ok(Status::Continue) | Ok(Status::Skip) => {}
                Ok(status) => return Ok(status),
                Err(failure) => return Ok(failed(self.config, self.id, "body", failure)),
            }
        }
        let extras = self
            .extras
            .get_or_insert_with(|| MessageExtras::new(Span::none()));
        let mut eom = EomContext {
            ctx: &self.view,
            out: &mut self.out,
            mods: &mut extras.mods,
            body: &mut extras.body,
            io,
            max_payload: self.view.agreed.max_data_size,
            body_replaced: false,
            modifications: 0,
        };
        let result = run_guarded(limit, None, self.milter.eom(&mut eom, msg)).await;
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
        let ctx = &self.view;
        if let Some(msg) = self.message.take()
            && let Err(failure) = run_guarded(limit, None, self.milter.abort(ctx, msg)).await
        {
            warn!(conn = self.id, "abort callback {failure}");
        }
        if self.session.is_negotiated()
            && let Err(failure) = run_guarded(limit, None, self.milter.close(ctx)).await
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
            view: Context {
                id,
                macros: MacroStore::new(),
                client: None,
                agreed: initial_agreed(),
                session: std::marker::PhantomData,
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
            // Stage callbacks, CONNECT and QUIT are polled in place, and
            // only one that waits is boxed (see `poll_now`). The handlers of
            // negotiation, end of message and aborts run as boxed futures:
            // they would otherwise sit in every idle connection's task.
            let flow = {
                // The command is gone before anything is waited for.
                let mut step = {
                    let Some(command) = next_command(&mut decoder, &mut buf)? else {
                        break;
                    };
                    if matches!(command, Command::Mail(_)) {
                        let span = info_span!("message", queue_id = tracing::field::Empty);
                        conn.extras = Some(MessageExtras::new(span));
                    }
                    debug!(conn = conn.id, command = %char::from(command.code()), "received");
                    conn.begin(command)?
                };
                loop {
                    break match step {
                        Step::Done => Flow::Continue,
                        Step::Callback(code, expect) => {
                            let outcome = finish!(conn.callback_now());
                            conn.settle(code, expect, outcome)?
                        }
                        Step::Connect(expect) => {
                            let outcome = finish!(conn.connect_now());
                            conn.settle(cmd::CONNECT, expect, outcome)?
                        }
                        Step::Quit(quit) => {
                            let outcome = finish!(conn.close_now());
                            conn.closed(outcome, quit)
                        }
                        Step::Handler => {
                            let span = conn.message_span();
                            let handling: Handling<'_, ()> =
                                Box::pin(conn.handle(io).instrument(span));
                            handling.await?;
                            Flow::Continue
                        }
                        Step::Abort(effect) => {
                            let span = conn.message_span();
                            let aborting: Handling<'_, Step> =
                                Box::pin(conn.abort_message(effect).instrument(span));
                            step = aborting.await?;
                            continue;
                        }
                    };
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
            // first), nor the reply buffer. They go back to the pool.
            if buf.is_empty() {
                conn.view.macros.detach();
                bufpool::give(std::mem::take(&mut buf));
            }
            if conn.out.is_empty() {
                bufpool::give(std::mem::take(&mut conn.out));
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
            if buf.capacity() == 0 {
                buf = bufpool::take();
            }
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
