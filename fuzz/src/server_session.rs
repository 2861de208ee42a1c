//! What the `server_session` fuzz target does with one input: a whole
//! milter session through the real server code,
//! [`milter_server::serve_connection`], over an in-memory pipe.
//!
//! Kept free of libFuzzer so that `milter-server/tests/fuzz_replay.rs` can
//! include this file with `#[path]` and replay the corpus on stable: one
//! copy of the logic for both.
//!
//! # Input
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | bits 0-1: prefix written before the stream (0 none, 1 Postfix OPTNEG v6, 2 OPTNEG v6 + CONNECT macros + CONNECT + HELO, 3 OPTNEG v2); bits 2-4: failure policy; bits 5-7: pipe buffer size (16 B .. 64 KiB) |
//! | 1 | stages the filter does NOT implement (bits of `Stages`; 0 = every stage) |
//! | 2 | no-reply stages (bits of `Stages`) |
//! | 3 | bits 0-1: actions (all, none, headers only, all but body); bit 2: header leading space; bit 3: rejected recipients; bits 4-5: max data size; bit 6: request macros; bit 7: no UNKNOWN stage |
//! | 4 | decision seed |
//! | 5.. | the MTA → filter byte stream |
//!
//! Missing header bytes count as 0. With seed 0 every callback continues.
//! Otherwise the filter decides from its seed and the first byte and length
//! of what each callback is given: mostly CONTINUE, sometimes
//! every other decision, an error, a panic (`resume_unwind`, which does not
//! run the panic hook, so libFuzzer does not count it), a callback that never
//! finishes (the callback timeout answers), a sleep, or a yield. At end of
//! message it makes modifications chosen by the bytes of the message (some
//! not negotiated or not encodable, which must fail cleanly), sends progress,
//! and replaces the body (up to 70,000 bytes, which needs two chunks).
//!
//! # Checks
//!
//! * The server never panics (a panic in the server is a finding; a panic
//!   in a callback must be caught by the server).
//! * It returns: the run happens on a current-thread runtime with paused
//!   time and short idle, callback and write timeouts, under a deadline far
//!   beyond what any input can legitimately take; a deadlock reaches it.
//! * It never breaks the protocol itself: it does not end a session because
//!   its own reply was illegal (unexpected, wrong stage, action not
//!   negotiated) or could not be encoded.
//! * What it wrote is whole frames of valid responses: the first is the
//!   negotiation reply; modifications only use negotiated actions, and each
//!   is followed by a final reply; reply texts are valid SMTP replies; body
//!   chunks are at most 65,535 bytes; there are no more final replies than
//!   the MTA sent packets.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, FrameDecoder, Header, MacroStage, Macros,
    OptNeg, ProtocolError, Response, SmtpReply,
};
use milter_server::{
    BoxError, Config, Context, EomContext, FailurePolicy, Milter, Options, SessionError, Stages,
    Status, async_trait, serve_connection,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes before the stream.
pub const HEADER_LEN: usize = 5;

/// How long the server waits for the next packet.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a callback may run.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most (virtual) time one input may take; far beyond what the longest
/// input could need (every packet a hanging callback).
const DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Pipe buffer sizes chosen by bits 5-7 of byte 0.
const PIPE_SIZES: [usize; 8] = [16, 64, 256, 1024, 4096, 16384, 65536, 65536];
/// Largest body replacement the filter makes.
const BIG_BODY: usize = 70_000;

/// The decoded input header.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The prefix mode (0..=3).
    pub prefix: u8,
    /// The server's failure policy.
    pub policy: FailurePolicy,
    /// The pipe buffer size.
    pub pipe: usize,
    /// What the filter asks for at negotiation.
    pub options: Options,
    /// The decision seed.
    pub seed: u8,
    /// The MTA → filter stream after the prefix.
    pub stream: &'a [u8],
}

fn header_byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

impl<'a> Input<'a> {
    /// Splits an input into the header and the stream.
    pub fn parse(data: &'a [u8]) -> Self {
        let mode = header_byte(data, 0);
        let not_stages = header_byte(data, 1);
        let no_reply = header_byte(data, 2);
        let opts = header_byte(data, 3);
        let seed = header_byte(data, 4);
        let policy = match (mode >> 2) & 7 {
            0 | 6 => FailurePolicy::Tempfail,
            1 => FailurePolicy::Reject,
            2 | 7 => FailurePolicy::Continue,
            3 => FailurePolicy::Accept,
            4 => FailurePolicy::Reply(
                SmtpReply::parse(b"451 4.7.1 filter failure").expect("a valid reply"),
            ),
            _ => FailurePolicy::Reply(
                SmtpReply::parse(b"550-5.7.1 filter\r\n550 5.7.1 failure").expect("a valid reply"),
            ),
        };
        let mut stages = Stages::from_bits_truncate(!u16::from(not_stages) & 0xff);
        if opts & 0x80 == 0 {
            stages |= Stages::UNKNOWN;
        }
        let actions = match opts & 3 {
            0 => Actions::all(),
            1 => Actions::empty(),
            2 => Actions::ADD_HEADERS | Actions::CHANGE_HEADERS,
            _ => Actions::all() - Actions::CHANGE_BODY,
        };
        let mut options = Options::new()
            .actions(actions)
            .stages(stages)
            .no_reply(Stages::from_bits_truncate(u16::from(no_reply)));
        options.header_leading_space = opts & 4 != 0;
        options.rejected_recipients = opts & 8 != 0;
        options.max_data_size = match (opts >> 4) & 3 {
            1 => milter_proto::frame::MAX_DATA_SIZE_256K,
            2 => milter_proto::frame::MAX_DATA_SIZE_1M,
            _ => milter_proto::frame::MAX_DATA_SIZE_64K,
        };
        if opts & 0x40 != 0 {
            options = options
                .macros(MacroStage::Connect, "j {daemon_name} _")
                .macros(MacroStage::Mail, "i {auth_authen} {mail_addr}")
                .macros(MacroStage::Rcpt, "{rcpt_addr} {rcpt_mailer}")
                .macros(MacroStage::EndOfMessage, "i {msg_id}");
        }
        Input {
            prefix: mode & 3,
            policy,
            pipe: PIPE_SIZES[usize::from(mode >> 5)],
            options,
            seed,
            stream: data.get(HEADER_LEN..).unwrap_or_default(),
        }
    }
}

/// Encodes commands into one stream.
pub fn encode_commands(commands: &[Command]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for c in commands {
        c.encode(&mut out, milter_proto::frame::MAX_DATA_SIZE_1M)
            .expect("fixed commands encode");
    }
    out.to_vec()
}

/// The bytes written before the stream for a prefix mode.
pub fn prefix(mode: u8) -> Vec<u8> {
    match mode {
        1 => encode_commands(&[Command::OptNeg(OptNeg::POSTFIX)]),
        2 => encode_commands(&[
            Command::OptNeg(OptNeg::POSTFIX),
            Command::Macro(
                Macros::new(b'C', [("j", "mx.example.org"), ("{daemon_name}", "smtpd")])
                    .expect("valid macros"),
            ),
            Command::Connect(Connect {
                hostname: Bytes::from_static(b"client.example.net"),
                address: ConnectAddress::Inet("192.0.2.1:54321".parse().expect("an address")),
            }),
            Command::Helo(Bytes::from_static(b"client.example.net")),
        ]),
        3 => encode_commands(&[Command::OptNeg(OptNeg::V2)]),
        _ => Vec::new(),
    }
}

/// The payload of a panic raised on purpose by a callback.
#[derive(Debug)]
pub struct CallbackPanic;

/// The scripted filter.
struct FuzzMilter {
    options: Options,
    seed: u8,
}

impl FuzzMilter {
    /// The decision key of a callback: seed 0 always continues (so that
    /// whole conversations get through to end of message); other seeds,
    /// rotated by `salt`, go through [`key_of`].
    fn key(&self, salt: u32, arg: &[u8]) -> u8 {
        if self.seed == 0 {
            0
        } else {
            key_of(self.seed.rotate_left(salt), arg)
        }
    }
}

/// Per-message state: some bytes of what the message carried.
#[derive(Default)]
struct Msg {
    bytes: Vec<u8>,
    rcpts: Vec<Bytes>,
}

impl Msg {
    fn remember(&mut self, b: &[u8]) {
        let room = 64usize.saturating_sub(self.bytes.len());
        self.bytes.extend(b.iter().take(room.min(8)));
    }
}

/// The decision key of a callback argument: [`decide`] maps it to a
/// decision (0..=175 continue, 176.. accept, reject, tempfail, discard,
/// skip, replies, 220..=229 error, 230..=235 panic, 236..=241 never
/// finishes, 242..=247 sleeps 1 s, 248.. yields once).
pub fn key_of(seed: u8, arg: &[u8]) -> u8 {
    let first = arg.first().copied().unwrap_or(0);
    // The length takes part so that empty and short arguments vary too.
    seed ^ first ^ (arg.len() as u8).wrapping_mul(37)
}

/// A decision from a key, possibly an error, a panic or a wait.
pub async fn decide(key: u8) -> Result<Status, BoxError> {
    Ok(match key {
        0..=175 => Status::Continue,
        176..=183 => Status::Accept,
        184..=191 => Status::Reject,
        192..=199 => Status::Tempfail,
        200..=205 => Status::Discard,
        206..=211 => Status::Skip,
        212..=215 => Status::Reply(SmtpReply::parse(b"451 4.7.1 later").expect("a valid reply")),
        216..=219 => Status::Reply(
            SmtpReply::parse(b"550-5.7.1 first line\r\n550 5.7.1 second, 100% sure")
                .expect("a valid reply"),
        ),
        220..=229 => return Err(format!("scripted error {key}").into()),
        230..=235 => std::panic::resume_unwind(Box::new(CallbackPanic)),
        236..=241 => std::future::pending().await,
        242..=247 => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Status::Continue
        }
        _ => {
            tokio::task::yield_now().await;
            Status::Continue
        }
    })
}

/// Uses what a context offers (the answers do not matter, only that
/// asking never fails).
fn look(ctx: &Context<'_>) {
    let _ = (ctx.macro_value("i"), ctx.macro_str("{daemon_name}"));
    let _ = (ctx.client_ip(), ctx.client(), ctx.queue_id());
    let _ = (ctx.connection_id(), ctx.protocol_version());
    let _ = (ctx.actions(), ctx.protocol(), ctx.macros().get("j"));
}

#[async_trait]
impl Milter for FuzzMilter {
    type Message = Msg;

    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        match self.seed {
            0xee => Err("scripted negotiate error".into()),
            0xef => std::panic::resume_unwind(Box::new(CallbackPanic)),
            _ => {
                let _ = offer.version;
                Ok(self.options.clone())
            }
        }
    }

    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        look(ctx);
        let _ = (client.ip(), client.hostname.len());
        decide(self.key(0, &client.hostname)).await
    }

    async fn helo(&mut self, ctx: &Context<'_>, name: &Bytes) -> Result<Status, BoxError> {
        look(ctx);
        decide(self.key(0, name)).await
    }

    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Msg,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        look(ctx);
        msg.remember(&from.address);
        let _ = from.args().count();
        decide(self.key(0, &from.address)).await
    }

    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Msg,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        look(ctx);
        msg.remember(&rcpt.address);
        if msg.rcpts.len() < 4 {
            msg.rcpts.push(rcpt.address.clone());
        }
        decide(self.key(0, &rcpt.address)).await
    }

    async fn data(&mut self, ctx: &Context<'_>, msg: &mut Msg) -> Result<Status, BoxError> {
        look(ctx);
        decide(self.key(0, &msg.bytes)).await
    }

    async fn header(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Msg,
        header: &Header,
    ) -> Result<Status, BoxError> {
        look(ctx);
        msg.remember(&header.name);
        msg.remember(&header.value);
        decide(self.key(0, &header.value)).await
    }

    async fn eoh(&mut self, ctx: &Context<'_>, msg: &mut Msg) -> Result<Status, BoxError> {
        look(ctx);
        decide(self.key(3, &msg.bytes)).await
    }

    async fn body(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Msg,
        chunk: &Bytes,
    ) -> Result<Status, BoxError> {
        look(ctx);
        msg.remember(chunk);
        decide(self.key(0, chunk)).await
    }

    async fn eom(&mut self, ctx: &mut EomContext<'_>, msg: &mut Msg) -> Result<Status, BoxError> {
        let script: Vec<u8> = msg.bytes.iter().take(8).map(|b| b ^ self.seed).collect();
        let strict = self.seed & 1 == 1;
        for op in script {
            let name = String::from_utf8_lossy(msg.bytes.get(..3).unwrap_or_default()).into_owned();
            let result = match op % 16 {
                0 => ctx.add_header("X-Fuzz", "value"),
                1 => ctx.add_header(&name, "from the message"),
                2 => ctx.insert_header(u32::from(op), "X-Inserted", "1"),
                3 => ctx.change_header("Subject", 1, "changed"),
                4 => ctx.delete_header("X-Fuzz", 2),
                5 => ctx.change_from("<f@example.org>", Some("SIZE=1")),
                6 => ctx.change_from("<g@example.org>", None),
                7 => ctx.add_rcpt("<r@example.org>"),
                8 => ctx.add_rcpt_with_args("<s@example.org>", Some("NOTIFY=NEVER")),
                9 => {
                    let rcpt = msg.rcpts.first().map_or_else(
                        || "<x@example.org>".to_string(),
                        |r| String::from_utf8_lossy(r).into_owned(),
                    );
                    ctx.delete_rcpt(&rcpt)
                }
                10 => ctx.replace_body(b"replaced\r\n"),
                11 => ctx.replace_body(&[]),
                12 => ctx.replace_body(&vec![b'x'; BIG_BODY]),
                13 => ctx.quarantine("fuzz"),
                14 => ctx.progress().await,
                _ => break,
            };
            if let Err(e) = result
                && strict
            {
                return Err(e.into());
            }
        }
        let _ = ctx.modification_count();
        look(ctx);
        decide(self.key(5, &msg.bytes)).await
    }

    async fn abort(&mut self, ctx: &Context<'_>, msg: Msg) -> Result<(), BoxError> {
        look(ctx);
        decide(self.key(1, &msg.bytes)).await.map(drop)
    }

    async fn unknown(&mut self, ctx: &Context<'_>, line: &Bytes) -> Result<Status, BoxError> {
        look(ctx);
        decide(self.key(0, line)).await
    }

    async fn close(&mut self, ctx: &Context<'_>) -> Result<(), BoxError> {
        look(ctx);
        decide(self.key(2, &[])).await.map(drop)
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    /// What `serve_connection` returned.
    pub result: Result<(), SessionError>,
    /// Everything the server wrote.
    pub output: Vec<u8>,
    /// Everything written to the server (prefix + stream).
    pub input: Vec<u8>,
}

/// Runs one session; panics if the server does not return in time.
pub fn run(data: &[u8]) -> Outcome {
    let input = Input::parse(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(drive(&input))
}

async fn drive(input: &Input<'_>) -> Outcome {
    let mut written = prefix(input.prefix);
    written.extend_from_slice(input.stream);
    let config = Config::new()
        .idle_timeout(IDLE_TIMEOUT)
        .callback_timeout(CALLBACK_TIMEOUT)
        .write_timeout(WRITE_TIMEOUT)
        .failure_policy(input.policy.clone());
    let milter = FuzzMilter {
        options: input.options.clone(),
        seed: input.seed,
    };
    let (mta, filter) = tokio::io::duplex(input.pipe);
    let (mut rd, mut wr) = tokio::io::split(mta);
    let server = serve_connection(filter, milter, &config);
    let writer = async {
        // The server may close first; a failed write is expected then.
        let _ = wr.write_all(&written).await;
        let _ = wr.shutdown().await;
    };
    let reader = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let all = async { tokio::join!(server, writer, reader) };
    match tokio::time::timeout(DEADLINE, all).await {
        Ok((result, (), output)) => Outcome {
            result,
            output,
            input: written,
        },
        Err(_) => panic!("the server did not return within {DEADLINE:?} of virtual time"),
    }
}

/// Number of whole frames at the start of a stream (up to the first
/// framing error).
fn count_frames(stream: &[u8]) -> usize {
    let mut decoder = FrameDecoder::new(milter_proto::frame::DEFAULT_MAX_INBOUND);
    let mut buf = BytesMut::from(stream);
    let mut n = 0;
    while let Ok(Some(_)) = decoder.decode(&mut buf) {
        n += 1;
    }
    n
}

/// Checks an outcome (see the module docs).
pub fn check(outcome: &Outcome) {
    match &outcome.result {
        Err(SessionError::Protocol(
            e @ (ProtocolError::UnexpectedResponse { .. }
            | ProtocolError::WrongStage { .. }
            | ProtocolError::ActionNotNegotiated { .. }),
        )) => panic!("the server's own reply broke the protocol: {e}"),
        Err(SessionError::Encode(e)) => panic!("the server could not encode its reply: {e}"),
        _ => {}
    }

    let mut decoder = FrameDecoder::new(usize::MAX >> 8);
    let mut buf = BytesMut::from(&outcome.output[..]);
    let mut responses = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let r = Response::decode(&frame).unwrap_or_else(|e| {
                    panic!("the server wrote an undecodable response {frame:?}: {e}")
                });
                responses.push(r);
            }
            Ok(None) => break,
            Err(e) => panic!("the server wrote bad framing: {e}"),
        }
    }
    assert!(buf.is_empty(), "the server's output ends inside a frame");

    let mut actions = Actions::empty();
    let mut modifications_pending = false;
    let mut finals = 0usize;
    for (i, r) in responses.iter().enumerate() {
        match r {
            Response::OptNeg(reply) => {
                assert_eq!(i, 0, "a negotiation reply after the first response");
                actions = reply.actions;
            }
            _ => assert!(
                i > 0,
                "the first response is not the negotiation reply: {r:?}"
            ),
        }
        if let Some(action) = r.required_action() {
            assert!(
                actions.contains(action),
                "modification {r:?} without its negotiated action"
            );
            modifications_pending = true;
        }
        if let Response::ReplaceBody(chunk) = r {
            assert!(
                chunk.len() <= 65535,
                "a body chunk of {} bytes",
                chunk.len()
            );
        }
        if let Response::ReplyCode(text) = r {
            assert!(
                SmtpReply::parse(text).is_ok(),
                "an invalid reply text {text:?}"
            );
        }
        if r.is_final() {
            finals += 1;
            modifications_pending = false;
        }
    }
    assert!(
        !modifications_pending,
        "modifications without a final reply after them"
    );
    let packets = count_frames(&outcome.input);
    assert!(
        finals <= packets,
        "{finals} final replies to {packets} packets"
    );
}

/// The fuzz target: run and check.
pub fn server_session(data: &[u8]) {
    check(&run(data));
}
