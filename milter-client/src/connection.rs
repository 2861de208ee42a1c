//! [`Client`] opens connections; [`Connection`] drives one filter through
//! the stages of SMTP sessions.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_proto::command::code;
use milter_proto::frame::{CHUNK_SIZE, MAX_DATA_SIZE_64K};
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, Expect, Frame, FrameDecoder, Header,
    MacroStage, Macros, OptNeg, OptNegReply, ProtocolError, ProtocolFlags, Response, Session,
    SocketSpec, SpecError, check_reply,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::reply::{EomOutcome, Modification, Reply, Stage};

/// Anything a connection can run over.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Things that name a filter socket: `&str`/`String` in libmilter or
/// Postfix syntax (`unix:/path`, `inet:PORT@HOST`, `inet:HOST:PORT`,
/// `inet6:PORT@HOST`), or a parsed [`SocketSpec`].
pub trait ToSocketSpec {
    /// Parses (or clones) the specification.
    fn to_socket_spec(&self) -> Result<SocketSpec, SpecError>;
}

impl ToSocketSpec for str {
    fn to_socket_spec(&self) -> Result<SocketSpec, SpecError> {
        SocketSpec::parse(self)
    }
}

impl ToSocketSpec for String {
    fn to_socket_spec(&self) -> Result<SocketSpec, SpecError> {
        SocketSpec::parse(self)
    }
}

impl ToSocketSpec for SocketSpec {
    fn to_socket_spec(&self) -> Result<SocketSpec, SpecError> {
        Ok(self.clone())
    }
}

impl<T: ToSocketSpec + ?Sized> ToSocketSpec for &T {
    fn to_socket_spec(&self) -> Result<SocketSpec, SpecError> {
        (**self).to_socket_spec()
    }
}

/// Opens connections to filters with one [`ClientConfig`]. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), milter_client::ClientError> {
/// use milter_client::{Client, Reply};
/// use milter_proto::ConnectAddress;
///
/// let client = Client::default();
/// let mut conn = client.connect("inet:127.0.0.1:7357").await?;
/// let addr = ConnectAddress::Inet("192.0.2.1:4567".parse().unwrap());
/// assert_eq!(conn.connect(&[("j", "mx.example.org")], "client.example.net", addr).await?, Reply::Continue);
/// conn.helo(&[], "client.example.net").await?;
/// conn.quit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Client {
    config: Arc<ClientConfig>,
}

impl Client {
    /// A client with this configuration.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Opens the socket and negotiates. `inet` specs without a host
    /// connect to the loopback address.
    ///
    /// TCP sockets get `TCP_NODELAY`. Unix sockets are a
    /// [`milter_io::UnixConnection`]: the filter reading a command does not
    /// wake the client while it waits for the reply, as it would with
    /// tokio's `UnixStream`; a full listen queue is waited out within
    /// [`ClientConfig::connect_timeout`].
    pub async fn connect(&self, spec: impl ToSocketSpec) -> Result<Connection, ClientError> {
        let spec = spec.to_socket_spec()?;
        let timeout = self.config.connect_timeout;
        let timed_out = |_| ClientError::Timeout {
            stage: Stage::SocketConnect,
            timeout,
        };
        let io: Box<dyn Stream> = match &spec {
            SocketSpec::Unix(path) => {
                let s = tokio::time::timeout(timeout, milter_io::UnixConnection::connect(path))
                    .await
                    .map_err(timed_out)??;
                Box::new(s)
            }
            SocketSpec::Inet { host, port, ipv6 } => {
                let host = match host {
                    Some(h) => h.as_str(),
                    None if *ipv6 => "::1",
                    None => "127.0.0.1",
                };
                let s = tokio::time::timeout(timeout, TcpStream::connect((host, *port)))
                    .await
                    .map_err(timed_out)??;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Connection::negotiate(io, self.config.clone(), spec.to_string()).await
    }

    /// Negotiates over an already open stream (a `tokio::io::duplex` half,
    /// a socket accepted elsewhere, ...).
    pub async fn handshake<S>(&self, io: S) -> Result<Connection, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Connection::negotiate(Box::new(io), self.config.clone(), "stream".to_string()).await
    }
}

/// What negotiation agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// What was offered.
    pub offer: OptNeg,
    /// The filter's reply as received.
    pub reply: OptNegReply,
    /// Protocol version in use.
    pub version: u32,
    /// Actions the filter may take.
    pub actions: Actions,
    /// Protocol flags in force: the filter's reply, plus `NO_UNKNOWN` for
    /// version 2 and `NO_DATA` for versions up to 3 (those stages do not exist there).
    pub protocol: ProtocolFlags,
    /// Largest payload either side may send (64 KiB unless MDS was agreed).
    pub max_data_size: usize,
    /// Macro lists the filter requested, by stage (stages outside 0..=6 are dropped).
    pub macro_lists: Vec<(MacroStage, String)>,
}

impl Negotiated {
    /// The macro names the filter asked for at `stage` (split on spaces
    /// and commas), or `None` if it sent no list for that stage.
    pub fn requested_macros(&self, stage: MacroStage) -> Option<Vec<&str>> {
        self.macro_lists
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, list)| {
                list.split([' ', ','])
                    .filter(|n| !n.is_empty())
                    .collect::<Vec<_>>()
            })
    }

    /// Whether commands of this stage are sent at all (not negotiated away
    /// with a `SMFIP_NO*` flag).
    pub fn sends(&self, stage: Stage) -> bool {
        stage
            .code()
            .and_then(no_flag)
            .is_none_or(|f| !self.protocol.contains(f))
    }

    /// Whether the filter replies to commands of this stage (no `SMFIP_NR_*` flag).
    pub fn replies_to(&self, stage: Stage) -> bool {
        let mut s = Session::new();
        s.set_protocol(self.protocol);
        stage.code().is_some_and(|c| s.expects_reply(c))
    }
}

/// The `SMFIP_NO*` flag that suppresses a command.
fn no_flag(c: u8) -> Option<ProtocolFlags> {
    Some(match c {
        code::CONNECT => ProtocolFlags::NO_CONNECT,
        code::HELO => ProtocolFlags::NO_HELO,
        code::MAIL => ProtocolFlags::NO_MAIL,
        code::RCPT => ProtocolFlags::NO_RCPT,
        code::DATA => ProtocolFlags::NO_DATA,
        code::HEADER => ProtocolFlags::NO_HEADERS,
        code::EOH => ProtocolFlags::NO_EOH,
        code::BODY => ProtocolFlags::NO_BODY,
        code::UNKNOWN => ProtocolFlags::NO_UNKNOWN,
        _ => return None,
    })
}

/// The macro list stage of a command.
fn macro_stage(c: u8) -> Option<MacroStage> {
    Some(match c {
        code::CONNECT => MacroStage::Connect,
        code::HELO => MacroStage::Helo,
        code::MAIL => MacroStage::Mail,
        code::RCPT => MacroStage::Rcpt,
        code::DATA => MacroStage::Data,
        code::EOH => MacroStage::EndOfHeaders,
        code::BODYEOB => MacroStage::EndOfMessage,
        _ => return None,
    })
}

/// Events that belong to a message (after MAIL).
fn is_message_event(c: u8) -> bool {
    matches!(
        c,
        code::RCPT | code::DATA | code::HEADER | code::EOH | code::BODY | code::BODYEOB
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageState {
    /// No message open.
    None,
    /// MAIL was sent (or negotiated away) and no decision came yet.
    Open,
    /// The filter decided the message before its end: Postfix sends it no
    /// more events of that message.
    Decided,
}

enum Prepared {
    /// Not sent, and no macros either (SKIP, or message already decided).
    Suppressed,
    /// Macros sent, command negotiated away.
    NotSent,
    /// Sent, no reply expected.
    NoReply,
    /// Sent, a reply is expected.
    Await,
}

/// Collects what arrives before the final reply to end of message.
#[derive(Default)]
struct Collector {
    modifications: Vec<Modification>,
    body: Option<BytesMut>,
    progress: usize,
}

impl Collector {
    fn push(&mut self, r: &Response) {
        match r {
            Response::Progress => self.progress += 1,
            Response::ReplaceBody(chunk) => self
                .body
                .get_or_insert_with(BytesMut::new)
                .extend_from_slice(chunk),
            other => {
                if let Some(m) = Modification::from_response(other) {
                    self.end_body();
                    self.modifications.push(m);
                }
            }
        }
    }

    fn end_body(&mut self) {
        if let Some(body) = self.body.take() {
            self.modifications
                .push(Modification::ReplaceBody(body.freeze()));
        }
    }
}

/// One negotiated connection to a filter: the MTA side of a milter session.
///
/// Every stage method sends a macro packet for the stage first (as Postfix
/// does, even when the stage itself was negotiated away), then the command,
/// and returns the filter's [`Reply`]. The commands are checked against
/// [`milter_proto::Session`] before they are sent, and every packet from the
/// filter after it arrives, so a filter that breaks the protocol is a
/// [`ClientError::Protocol`], never a panic or a silent desync.
///
/// Writes are coalesced like Postfix's output stream: packets that get no
/// reply (macros, ABORT, QUIT_NC, no-reply stages) are buffered and go out
/// in one write with the next command that expects a reply, or on
/// [`Connection::flush`] / [`Connection::quit`].
///
/// Postfix's event rules are followed:
///
/// * after SKIP to an event, later events of the same type in the message
///   are not sent (returned as [`Reply::NotSent`]) until another event type;
/// * after a decision that ends the message early (accept, reject,
///   tempfail, discard at MAIL, DATA, a header, ...; accept or discard at
///   RCPT), the rest of that message is not sent;
/// * a reject or tempfail at RCPT only drops that recipient.
///
/// After a filter failure (I/O, timeout, bad packet, protocol violation)
/// every later call returns [`ClientError::Broken`]; the raw escape hatches
/// ([`Connection::send_raw`], [`Connection::read_response`]) still work so
/// tests can watch the filter close the connection.
pub struct Connection {
    io: Box<dyn Stream>,
    config: Arc<ClientConfig>,
    peer: String,
    negotiated: Negotiated,
    session: Session,
    decoder: FrameDecoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_out: usize,
    skip: Option<u8>,
    message: MessageState,
    broken: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("negotiated", &self.negotiated)
            .field("session", &self.session)
            .field("buffered", &self.wbuf.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Connection {
    async fn negotiate(
        io: Box<dyn Stream>,
        config: Arc<ClientConfig>,
        peer: String,
    ) -> Result<Connection, ClientError> {
        let offer = config.offer;
        let mut conn = Connection {
            io,
            decoder: FrameDecoder::new(config.max_inbound_payload),
            peer,
            negotiated: Negotiated {
                offer,
                reply: OptNegReply::default(),
                version: 0,
                actions: Actions::empty(),
                protocol: ProtocolFlags::empty(),
                max_data_size: MAX_DATA_SIZE_64K,
                macro_lists: Vec::new(),
            },
            session: Session::new(),
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(8192),
            max_out: MAX_DATA_SIZE_64K,
            skip: None,
            message: MessageState::None,
            broken: false,
            config,
        };
        let cmd = Command::OptNeg(offer);
        conn.session.on_command(&cmd).map_err(ClientError::Usage)?;
        cmd.encode(&mut conn.wbuf, MAX_DATA_SIZE_64K)?;
        debug!(peer = %conn.peer, version = offer.version, actions = format_args!("{:#x}", offer.actions.bits()),
            protocol = format_args!("{:#x}", offer.protocol.bits()), "sending OPTNEG");
        let timeout = conn.config.connect_timeout;
        conn.flush_with(Stage::Negotiate, timeout).await?;
        let frame = conn.read_frame_with(Stage::Negotiate, timeout).await?;
        let response = Response::decode(&frame)?;
        let Response::OptNeg(reply) = &response else {
            return Err(milter_proto::NegotiationError::NotOptNeg(char::from(frame.code)).into());
        };
        let agreed = check_reply(&offer, reply)?;
        conn.session.on_response(&response)?;
        conn.session.set_protocol(agreed.protocol);
        debug!(peer = %conn.peer, version = agreed.version, actions = format_args!("{:#x}", agreed.actions.bits()),
            protocol = format_args!("{:#x}", agreed.protocol.bits()), "negotiated");
        conn.negotiated = Negotiated {
            offer,
            reply: reply.clone(),
            version: agreed.version,
            actions: agreed.actions,
            protocol: agreed.protocol,
            max_data_size: agreed.max_data_size,
            macro_lists: reply
                .macros
                .iter()
                .filter_map(|(stage, names)| {
                    Some((
                        MacroStage::from_wire(stage)?,
                        String::from_utf8_lossy(&names).into_owned(),
                    ))
                })
                .collect(),
        };
        conn.max_out = conn
            .config
            .max_outbound_payload
            .unwrap_or(agreed.max_data_size);
        Ok(conn)
    }

    /// What negotiation agreed: version, actions, protocol flags, macro lists.
    pub fn agreed(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The protocol state machine as this connection tracks it.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether an earlier filter failure made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes waiting in the output buffer.
    pub fn buffered(&self) -> usize {
        self.wbuf.len()
    }

    // ----- stages -------------------------------------------------------

    /// `SMFIC_CONNECT`: the SMTP client's host name and address
    /// (`xxfi_connect`). Postfix sends `[addr]` as host name when the name
    /// is unknown.
    #[doc(alias = "SMFIC_CONNECT")]
    pub async fn connect(
        &mut self,
        macros: &[(&str, &str)],
        hostname: impl AsRef<[u8]>,
        address: ConnectAddress,
    ) -> Result<Reply, ClientError> {
        self.message = MessageState::None;
        let cmd = Command::Connect(Connect {
            hostname: Bytes::copy_from_slice(hostname.as_ref()),
            address,
        });
        self.turn(macros, cmd).await
    }

    /// `SMFIC_HELO`: the HELO/EHLO argument.
    #[doc(alias = "SMFIC_HELO")]
    pub async fn helo(
        &mut self,
        macros: &[(&str, &str)],
        name: impl AsRef<[u8]>,
    ) -> Result<Reply, ClientError> {
        self.message = MessageState::None;
        let cmd = Command::Helo(Bytes::copy_from_slice(name.as_ref()));
        self.turn(macros, cmd).await
    }

    /// `SMFIC_MAIL`: the sender as the client wrote it (`<a@example.org>`,
    /// `<>`) and its ESMTP arguments (`SIZE=1234`), one per item. Starts a message.
    #[doc(alias = "SMFIC_MAIL")]
    pub async fn mail(
        &mut self,
        macros: &[(&str, &str)],
        from: impl AsRef<[u8]>,
        args: &[&str],
    ) -> Result<Reply, ClientError> {
        let cmd = Command::Mail(Envelope::new(Bytes::copy_from_slice(from.as_ref()), args)?);
        self.message = MessageState::Open;
        self.turn(macros, cmd).await
    }

    /// `SMFIC_RCPT`: one recipient and its ESMTP arguments.
    #[doc(alias = "SMFIC_RCPT")]
    pub async fn rcpt(
        &mut self,
        macros: &[(&str, &str)],
        to: impl AsRef<[u8]>,
        args: &[&str],
    ) -> Result<Reply, ClientError> {
        let cmd = Command::Rcpt(Envelope::new(Bytes::copy_from_slice(to.as_ref()), args)?);
        self.turn(macros, cmd).await
    }

    /// `SMFIC_DATA` (protocol version 4 and later; [`Reply::NotSent`] below).
    #[doc(alias = "SMFIC_DATA")]
    pub async fn data(&mut self, macros: &[(&str, &str)]) -> Result<Reply, ClientError> {
        self.turn(macros, Command::Data).await
    }

    /// `SMFIC_HEADER`: one header. The value is sent as given: an MTA strips
    /// one leading space unless `SMFIP_HDR_LEADSPC` was negotiated, and
    /// joins folded lines with a bare `\n`.
    /// [`Connection::send_message`] does both.
    #[doc(alias = "SMFIC_HEADER")]
    pub async fn header(
        &mut self,
        macros: &[(&str, &str)],
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Reply, ClientError> {
        let cmd = Command::Header(Header {
            name: Bytes::copy_from_slice(name.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
        });
        self.turn(macros, cmd).await
    }

    /// `SMFIC_EOH`: end of headers.
    #[doc(alias = "SMFIC_EOH")]
    pub async fn end_of_headers(&mut self, macros: &[(&str, &str)]) -> Result<Reply, ClientError> {
        self.turn(macros, Command::EndOfHeaders).await
    }

    /// `SMFIC_BODY`: body bytes (CRLF line ends), split into chunks of at
    /// most 65535 bytes, each preceded by its macro packet. Returns the
    /// first reply that is not a plain continue (SKIP stops the chunks), or
    /// the last one. An empty body sends nothing and returns [`Reply::NotSent`].
    #[doc(alias = "SMFIC_BODY")]
    pub async fn body(
        &mut self,
        macros: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Result<Reply, ClientError> {
        let mut last = Reply::NotSent;
        for chunk in body.as_ref().chunks(CHUNK_SIZE) {
            let reply = self
                .turn(macros, Command::Body(Bytes::copy_from_slice(chunk)))
                .await?;
            match reply {
                Reply::Continue | Reply::NoReply | Reply::NotSent => last = reply,
                other => return Ok(other),
            }
        }
        Ok(last)
    }

    /// `SMFIC_BODYEOB`: end of message. Collects every modification and
    /// progress packet until the final reply. Sent without body data, like
    /// both real MTAs.
    #[doc(alias = "SMFIC_BODYEOB")]
    pub async fn end_of_message(
        &mut self,
        macros: &[(&str, &str)],
    ) -> Result<EomOutcome, ClientError> {
        let cmd = Command::EndOfMessage(Bytes::new());
        let prepared = self.prepare(macros, &cmd)?;
        self.message = MessageState::None;
        match prepared {
            Prepared::Suppressed | Prepared::NotSent | Prepared::NoReply => {
                return Ok(EomOutcome::not_sent());
            }
            Prepared::Await => {}
        }
        let mut collector = Collector::default();
        let timeout = self.config.content_timeout;
        let result = self
            .round_trip(code::BODYEOB, timeout, Some(&mut collector))
            .await;
        let reply = result.map_err(|e| self.fail(e))?;
        collector.end_body();
        Ok(EomOutcome {
            modifications: collector.modifications,
            reply,
            progress_count: collector.progress,
        })
    }

    /// `SMFIC_ABORT`: ends the current message (harmless outside one;
    /// Postfix sends it after every transaction). No reply; buffered until
    /// the next command or [`Connection::flush`].
    #[doc(alias = "SMFIC_ABORT")]
    pub async fn abort(&mut self) -> Result<(), ClientError> {
        self.queue_control(Command::Abort)?;
        self.message = MessageState::None;
        Ok(())
    }

    /// `SMFIC_UNKNOWN`: an SMTP command line the MTA did not recognise
    /// (version 3 and later; [`Reply::NotSent`] below).
    #[doc(alias = "SMFIC_UNKNOWN")]
    pub async fn unknown(
        &mut self,
        macros: &[(&str, &str)],
        line: impl AsRef<[u8]>,
    ) -> Result<Reply, ClientError> {
        let cmd = Command::Unknown(Bytes::copy_from_slice(line.as_ref()));
        self.turn(macros, cmd).await
    }

    /// `SMFIC_QUIT_NC`: ends the SMTP session but keeps the connection and
    /// the negotiated options; the next command is a new
    /// [`Connection::connect`]. Buffered like ABORT.
    #[doc(alias = "SMFIC_QUIT_NC")]
    pub async fn quit_nc(&mut self) -> Result<(), ClientError> {
        self.queue_control(Command::QuitNc)?;
        self.message = MessageState::None;
        Ok(())
    }

    /// `SMFIC_QUIT`: flushes everything buffered, sends QUIT and closes
    /// our side. Does not wait for the filter to close.
    #[doc(alias = "SMFIC_QUIT")]
    pub async fn quit(mut self) -> Result<(), ClientError> {
        self.queue_control(Command::Quit)?;
        let timeout = self.config.command_timeout;
        self.flush_with(Stage::Quit, timeout).await?;
        // The filter may have closed first; that is fine after QUIT.
        let _ = tokio::time::timeout(timeout, self.io.shutdown()).await;
        Ok(())
    }

    /// Writes out everything buffered (macros, ABORT, QUIT_NC, no-reply stages).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.usable()?;
        let timeout = self.config.command_timeout;
        let r = self.flush_with(Stage::Macro, timeout).await;
        r.map_err(|e| self.fail(e))
    }

    // ----- escape hatches -------------------------------------------------

    /// Writes raw bytes now (after anything buffered), bypassing the
    /// session state machine: for tests that send malformed frames. After
    /// raw traffic the session state may no longer match the filter's;
    /// keep to the raw methods.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.wbuf.extend_from_slice(bytes);
        let timeout = self.config.command_timeout;
        self.flush_with(Stage::Raw, timeout).await
    }

    /// Encodes and writes one command now, bypassing the state machine (any
    /// order, any size up to 4 GiB).
    pub async fn send_unchecked(&mut self, command: &Command) -> Result<(), ClientError> {
        command.encode(&mut self.wbuf, usize::MAX)?;
        debug!(peer = %self.peer, cmd = %char::from(command.code()), "sending unchecked command");
        let timeout = self.config.command_timeout;
        self.flush_with(Stage::Raw, timeout).await
    }

    /// Reads one frame from the filter, whatever it is, bypassing the state
    /// machine. [`ClientError::Closed`] when the filter closed the connection.
    pub async fn read_frame(&mut self) -> Result<Frame, ClientError> {
        let timeout = self.config.command_timeout;
        self.read_frame_with(Stage::Raw, timeout).await
    }

    /// Reads and decodes one response, bypassing the state machine.
    /// [`ClientError::Closed`] when the filter closed the connection.
    pub async fn read_response(&mut self) -> Result<Response, ClientError> {
        let frame = self.read_frame().await?;
        let response = Response::decode(&frame)?;
        debug!(peer = %self.peer, response = %char::from(frame.code), len = frame.payload.len(), "received (raw)");
        Ok(response)
    }

    // ----- internals -------------------------------------------------------

    fn usable(&self) -> Result<(), ClientError> {
        if self.broken {
            Err(ClientError::Broken)
        } else {
            Ok(())
        }
    }

    /// Records a filter failure: the connection is unusable afterwards.
    fn fail(&mut self, e: ClientError) -> ClientError {
        if e.is_filter_failure() {
            debug!(peer = %self.peer, error = %e, "connection broken");
            self.broken = true;
        }
        e
    }

    fn timeout_for(&self, c: u8) -> Duration {
        match c {
            code::HEADER | code::EOH | code::BODY | code::BODYEOB => self.config.content_timeout,
            _ => self.config.command_timeout,
        }
    }

    /// Buffers a command that gets no reply and takes no macros.
    fn queue_control(&mut self, cmd: Command) -> Result<(), ClientError> {
        self.usable()?;
        self.session.on_command(&cmd).map_err(ClientError::Usage)?;
        cmd.encode(&mut self.wbuf, self.max_out)?;
        debug!(peer = %self.peer, cmd = %char::from(cmd.code()), "buffered");
        self.skip = None;
        Ok(())
    }

    /// Sends macros and a reply-bearing stage command, and reads the reply.
    async fn turn(&mut self, macros: &[(&str, &str)], cmd: Command) -> Result<Reply, ClientError> {
        let c = cmd.code();
        match self.prepare(macros, &cmd)? {
            Prepared::Suppressed | Prepared::NotSent => Ok(Reply::NotSent),
            Prepared::NoReply => Ok(Reply::NoReply),
            Prepared::Await => {
                let timeout = self.timeout_for(c);
                let result = self.round_trip(c, timeout, None).await;
                result.map_err(|e| self.fail(e))
            }
        }
    }

    /// Buffers the macro packet and the command, checking both against the
    /// session. On error nothing is buffered and the session is unchanged.
    fn prepare(&mut self, macros: &[(&str, &str)], cmd: &Command) -> Result<Prepared, ClientError> {
        self.usable()?;
        let c = cmd.code();
        if (self.message == MessageState::Decided && is_message_event(c)) || self.skip == Some(c) {
            debug!(peer = %self.peer, cmd = %char::from(c), "not sent: skipped or message already decided");
            return Ok(Prepared::Suppressed);
        }
        let mark = self.wbuf.len();
        let saved = self.session.clone();
        match self.prepare_inner(macros, cmd) {
            Ok(p) => {
                self.skip = None;
                Ok(p)
            }
            Err(e) => {
                self.wbuf.truncate(mark);
                self.session = saved;
                Err(e)
            }
        }
    }

    fn prepare_inner(
        &mut self,
        macros: &[(&str, &str)],
        cmd: &Command,
    ) -> Result<Prepared, ClientError> {
        let c = cmd.code();
        let list = if self.config.honour_macro_lists {
            macro_stage(c)
                .and_then(|s| self.negotiated.requested_macros(s))
                .filter(|l| !l.is_empty())
        } else {
            None
        };
        let pairs: Vec<(&str, &str)> = macros
            .iter()
            .filter(|(name, _)| {
                list.as_ref()
                    .is_none_or(|l| l.iter().any(|w| same_macro(w, name)))
            })
            .copied()
            .collect();
        if !pairs.is_empty() || self.config.send_empty_macros {
            let packet = Command::Macro(Macros::new(c, pairs.iter().copied())?);
            self.session
                .on_command(&packet)
                .map_err(ClientError::Usage)?;
            packet.encode(&mut self.wbuf, self.max_out)?;
            debug!(peer = %self.peer, stage = %char::from(c), count = pairs.len(), "buffered macros");
        }
        if no_flag(c).is_some_and(|f| self.session.protocol().contains(f)) {
            debug!(peer = %self.peer, cmd = %char::from(c), "not sent: negotiated away");
            return Ok(Prepared::NotSent);
        }
        let effect = self.session.on_command(cmd).map_err(ClientError::Usage)?;
        cmd.encode(&mut self.wbuf, self.max_out)?;
        debug!(peer = %self.peer, cmd = %char::from(c), expect = ?effect.expect, "buffered");
        Ok(match effect.expect {
            Expect::Nothing => Prepared::NoReply,
            _ => Prepared::Await,
        })
    }

    /// Flushes the buffer and reads packets until the final reply to `c`.
    async fn round_trip(
        &mut self,
        c: u8,
        timeout: Duration,
        mut collector: Option<&mut Collector>,
    ) -> Result<Reply, ClientError> {
        let stage = Stage::from_code(c);
        self.flush_with(stage, timeout).await?;
        loop {
            let frame = self.read_frame_with(stage, timeout).await?;
            let response = Response::decode(&frame)?;
            debug!(peer = %self.peer, response = %char::from(frame.code), len = frame.payload.len(), "received");
            let effect = self.session.on_response(&response)?;
            if !effect.is_final {
                // Progress (any stage) or a modification (end of message
                // only, with its action: the session checked both).
                if let Some(collector) = collector.as_deref_mut() {
                    collector.push(&response);
                }
                continue;
            }
            let reply = Reply::from_response(&response).ok_or(ProtocolError::WrongStage {
                response: char::from(frame.code),
                command: char::from(c),
            })??;
            if effect.message_ended && c != code::BODYEOB && self.message == MessageState::Open {
                self.message = MessageState::Decided;
            }
            if reply == Reply::Skip {
                self.skip = Some(c);
            }
            self.check_no_stray()?;
            return Ok(reply);
        }
    }

    /// A whole packet already waiting after the final reply answers nothing
    /// (e.g. a reply to ABORT read as the reply to the next command): a
    /// protocol violation.
    fn check_no_stray(&mut self) -> Result<(), ClientError> {
        if let Some(frame) = self.decoder.decode(&mut self.rbuf)? {
            let response = Response::decode(&frame)?;
            self.session.on_response(&response)?;
            return Err(ProtocolError::UnexpectedResponse {
                response: char::from(frame.code),
            }
            .into());
        }
        Ok(())
    }

    async fn flush_with(&mut self, stage: Stage, timeout: Duration) -> Result<(), ClientError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Err(_) => Err(ClientError::Timeout { stage, timeout }),
            Ok(Err(e)) => Err(ClientError::from_io(e)),
            Ok(Ok(())) => {
                debug!(peer = %self.peer, bytes = self.wbuf.len(), "wrote");
                self.wbuf.clear();
                Ok(())
            }
        }
    }

    async fn read_frame_with(
        &mut self,
        stage: Stage,
        timeout: Duration,
    ) -> Result<Frame, ClientError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(frame);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(8192);
            }
            match tokio::time::timeout(timeout, self.io.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(ClientError::Timeout { stage, timeout }),
                Ok(Err(e)) => return Err(ClientError::from_io(e)),
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Macro names with libmilter's aliasing: `{x}` and `x` are the same for
/// one-character names.
fn same_macro(a: &str, b: &str) -> bool {
    fn bare(s: &str) -> &str {
        match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(inner) if inner.len() == 1 => inner,
            _ => s,
        }
    }
    a == b || bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    #[test]
    fn connections_and_their_futures_are_send() {
        // Type-checked only: the closure is never called.
        let _ = |mut conn: Connection, m: crate::Message, client: Client| {
            is_send(&conn);
            is_send(&client.connect("unix:/x"));
            is_send(&client.check_message("unix:/x", &m));
            is_send(&conn.end_of_message(&[]));
            is_send(&conn.send_message(&m));
        };
    }

    #[test]
    fn macro_aliasing() {
        assert!(same_macro("{i}", "i"));
        assert!(same_macro("i", "{i}"));
        assert!(same_macro("{client_addr}", "{client_addr}"));
        assert!(!same_macro("client_addr", "{client_addr}"));
        assert!(!same_macro("i", "j"));
    }
}
