//! The MTA side of the load: a Postfix-like milter conversation on
//! `milter-proto`, with every packet encoded once before the run.
//!
//! Per message: macros + CONNECT (first message of a connection only) +
//! HELO + MAIL + RCPT + HEADERs + EOH + BODY chunks + EOM, a MACRO packet
//! before every event (Postfix sends one even for events the filter
//! negotiated away), ABORT after every message and QUIT at the end of the
//! connection. Packets are coalesced until a reply is awaited, plus one
//! flush after DATA (Postfix's smtpd -> cleanup hand-off), exactly as
//! `milterload.c` does, so the two generators put the same bytes on the wire
//! in the same writes. The filter's negotiated `NO*` bits suppress events
//! and its `NR*` bits suppress the wait for a reply.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use milter_proto::frame::{CHUNK_SIZE, Frame, encode_raw};
use milter_proto::negotiate::OptNegReply;
use milter_proto::{FrameDecoder, ProtocolFlags, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Message stages in the order the MTA sends them.
pub(crate) const S_CONNECT: usize = 0;
const S_HELO: usize = 1;
const S_RCPT: usize = 3;
const S_DATA: usize = 4;
#[cfg(test)]
const S_HEADER: usize = 5;
#[cfg(test)]
const S_BODY: usize = 7;
pub(crate) const S_EOM: usize = 8;
const NSTAGE: usize = 9;

/// `SMFIP_NO*` bit of each stage (EOM cannot be negotiated away).
const NO_BIT: [ProtocolFlags; NSTAGE] = [
    ProtocolFlags::NO_CONNECT,
    ProtocolFlags::NO_HELO,
    ProtocolFlags::NO_MAIL,
    ProtocolFlags::NO_RCPT,
    ProtocolFlags::NO_DATA,
    ProtocolFlags::NO_HEADERS,
    ProtocolFlags::NO_EOH,
    ProtocolFlags::NO_BODY,
    ProtocolFlags::empty(),
];
/// `SMFIP_NR_*` bit of each stage.
const NR_BIT: [ProtocolFlags; NSTAGE] = [
    ProtocolFlags::NR_CONNECT,
    ProtocolFlags::NR_HELO,
    ProtocolFlags::NR_MAIL,
    ProtocolFlags::NR_RCPT,
    ProtocolFlags::NR_DATA,
    ProtocolFlags::NR_HEADER,
    ProtocolFlags::NR_EOH,
    ProtocolFlags::NR_BODY,
    ProtocolFlags::empty(),
];

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    Accept,
    Continue,
    Reject,
    Tempfail,
    ReplyCode,
    Discard,
    Shutdown,
    EarlyAccept,
    EarlyReject,
}

/// Every packet of the conversation, encoded once.
#[derive(Debug)]
pub(crate) struct Packets {
    optneg: Vec<u8>,
    abort: Vec<u8>,
    quit: Vec<u8>,
    macros: [Vec<u8>; NSTAGE],
    /// Per stage, the event packets (several for RCPT, HEADER and BODY).
    events: [Vec<Vec<u8>>; NSTAGE],
    rcpts: usize,
}

const HEADERS: [(&str, &str); 10] = [
    (
        "Received",
        "from client.example.org (client.example.org [192.0.2.1])\n\tby mx.example.net (Postfix) with ESMTP id 4XbQ2R1zK3z9sWk",
    ),
    ("Date", "Mon, 01 Jan 2024 12:00:00 +0000"),
    ("From", "Alice Example <a@example.org>"),
    ("To", "Bob Example <b@example.com>"),
    ("Subject", "milterload benchmark message"),
    (
        "Message-ID",
        "<20240101120000.4XbQ2R1zK3z9sWk@client.example.org>",
    ),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain; charset=us-ascii"),
    ("Content-Transfer-Encoding", "7bit"),
    ("X-Mailer", "milterload 1.0"),
];

fn frame(code: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_raw(&mut b, code, payload, usize::MAX >> 1).expect("benchmark packets are small");
    b.to_vec()
}

/// A payload of NUL-terminated strings after `prefix`.
fn strs(code: u8, prefix: &[u8], items: &[&str]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    for s in items {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    frame(code, &p)
}

impl Packets {
    /// The same packets as `milterload.c` builds for `-b body -H headers -r rcpts`.
    pub(crate) fn new(body: usize, headers: usize, rcpts: usize) -> Packets {
        let mut neg = Vec::with_capacity(12);
        neg.extend_from_slice(&6u32.to_be_bytes());
        neg.extend_from_slice(&0x1FFu32.to_be_bytes());
        neg.extend_from_slice(&0x1F_FFFFu32.to_be_bytes());
        let qid = ["i", "4XbQ2R1zK3z9sWk"];
        let macros = [
            strs(
                b'D',
                b"C",
                &[
                    "j",
                    "mx.example.net",
                    "{daemon_name}",
                    "mx.example.net",
                    "{daemon_addr}",
                    "192.0.2.25",
                    "v",
                    "Postfix 3.7.11",
                    "_",
                    "client.example.org [192.0.2.1]",
                ],
            ),
            strs(b'D', b"H", &[]),
            strs(
                b'D',
                b"M",
                &[
                    "{mail_addr}",
                    "a@example.org",
                    "{mail_host}",
                    "example.org",
                    "{mail_mailer}",
                    "smtp",
                ],
            ),
            strs(
                b'D',
                b"R",
                &[
                    "{rcpt_addr}",
                    "b@example.com",
                    "{rcpt_host}",
                    "example.com",
                    "{rcpt_mailer}",
                    "smtp",
                ],
            ),
            strs(b'D', b"T", &qid),
            strs(b'D', b"L", &qid),
            strs(b'D', b"N", &qid),
            strs(b'D', b"B", &qid),
            strs(b'D', b"E", &qid),
        ];
        let mut connect = b"client.example.org\0".to_vec();
        connect.push(b'4');
        connect.extend_from_slice(&12345u16.to_be_bytes());
        let connect = strs(b'C', &connect, &["192.0.2.1"]);
        let rcpt: Vec<Vec<u8>> = (0..rcpts)
            .map(|i| strs(b'R', b"", &[&format!("<r{i}@example.com>")]))
            .collect();
        let hdrs: Vec<Vec<u8>> = (0..headers)
            .map(|i| match HEADERS.get(i) {
                Some((n, v)) => strs(b'L', b"", &[n, v]),
                None => strs(
                    b'L',
                    b"",
                    &[
                        &format!("X-Bench-{i}"),
                        &format!("benchmark header number {i} with some filler text"),
                    ],
                ),
            })
            .collect();
        // 78-byte lines with a 6-digit line number, cut to exactly `body` bytes.
        let tmpl =
            b"000000 The quick brown fox jumps over the lazy dog; milterload body line....\r\n";
        let mut text = Vec::with_capacity(body + tmpl.len());
        let mut line = 0usize;
        while text.len() < body {
            let start = text.len();
            text.extend_from_slice(tmpl);
            let digits = format!("{:06}", line % 1_000_000);
            text[start..start + 6].copy_from_slice(digits.as_bytes());
            line += 1;
        }
        text.truncate(body);
        let chunks: Vec<Vec<u8>> = text.chunks(CHUNK_SIZE).map(|c| frame(b'B', c)).collect();
        Packets {
            optneg: frame(b'O', &neg),
            abort: frame(b'A', b""),
            quit: frame(b'Q', b""),
            macros,
            events: [
                vec![connect],
                vec![strs(b'H', b"", &["client.example.org"])],
                vec![strs(b'M', b"", &["<a@example.org>"])],
                rcpt,
                vec![frame(b'T', b"")],
                hdrs,
                vec![frame(b'N', b"")],
                chunks,
                vec![frame(b'E', b"")],
            ],
            rcpts,
        }
    }

    /// Every packet, for tests.
    #[cfg(test)]
    fn all(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = vec![&self.optneg, &self.abort, &self.quit];
        v.extend(self.macros.iter().map(Vec::as_slice));
        v.extend(self.events.iter().flatten().map(Vec::as_slice));
        v
    }
}

/// Where the filter listens.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "inet:{}@{}", a.port(), a.ip()),
        }
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) target: Target,
    pub(crate) conns: usize,
    pub(crate) messages: u64,
    pub(crate) per_conn: u64,
    /// Limit for one message (and for one connect + negotiation).
    pub(crate) io_timeout: Duration,
    /// No new message is started after this long.
    pub(crate) duration: Duration,
    /// Set `TCP_NODELAY` on the client's TCP sockets (Postfix does not).
    pub(crate) nodelay: bool,
}

/// Counters of one connection slot, merged at the end.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) conns: u64,
    pub(crate) conn_fail: u64,
    pub(crate) outcomes: BTreeMap<Outcome, u64>,
    pub(crate) mods: u64,
    pub(crate) rcpt_rejected: u64,
    pub(crate) skips: u64,
    pub(crate) errors: BTreeMap<&'static str, u64>,
    /// Message latencies in microseconds.
    pub(crate) lat_us: Vec<u32>,
    /// (version, actions, protocol) of the first negotiation.
    pub(crate) negotiated: Option<(u32, u32, u32)>,
}

impl Stats {
    fn err(&mut self, what: &'static str) {
        *self.errors.entry(what).or_default() += 1;
    }

    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.conns += o.conns;
        self.conn_fail += o.conn_fail;
        for (k, v) in o.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.mods += o.mods;
        self.rcpt_rejected += o.rcpt_rejected;
        self.skips += o.skips;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.lat_us.extend(o.lat_us);
        if self.negotiated.is_none() {
            self.negotiated = o.negotiated;
        }
    }

    fn done(&mut self, t0: Instant, outcome: Outcome) {
        self.ok += 1;
        *self.outcomes.entry(outcome).or_default() += 1;
        let us = t0.elapsed().as_micros();
        self.lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    /// Errors as `what=count` pairs, or `-`.
    pub(crate) fn error_summary(&self) -> String {
        if self.errors.is_empty() {
            return "-".into();
        }
        self.errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The result of one run.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) stats: Stats,
    pub(crate) elapsed: Duration,
}

impl Report {
    pub(crate) fn rate(&self) -> f64 {
        self.stats.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency percentile in microseconds (`lat_us` is sorted by `run`).
    pub(crate) fn pct_us(&self, q: f64) -> f64 {
        percentile(&self.stats.lat_us, q)
    }
}

pub(crate) fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

struct Shared {
    claimed: AtomicU64,
    messages: u64,
    stop_at: Instant,
    pk: Arc<Packets>,
    spec: Spec,
    first_neg: AtomicBool,
}

impl Shared {
    fn claim(&self) -> bool {
        Instant::now() < self.stop_at
            && self.claimed.fetch_add(1, Ordering::Relaxed) < self.messages
    }
}

/// Drives `spec` to completion (or `run_limit`) and reports.
pub(crate) async fn run(pk: Arc<Packets>, spec: Spec, run_limit: Duration) -> Report {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        claimed: AtomicU64::new(0),
        messages: spec.messages,
        stop_at: start + spec.duration,
        pk,
        first_neg: AtomicBool::new(false),
        spec,
    });
    let mut set = JoinSet::new();
    for _ in 0..shared.spec.conns {
        set.spawn(slot(shared.clone()));
    }
    let mut total = Stats::default();
    let limit = tokio::time::sleep(run_limit);
    tokio::pin!(limit);
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                None => break,
                Some(Ok(st)) => total.merge(st),
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(_)) => total.err("load task panicked"),
            },
            () = &mut limit, if !set.is_empty() => {
                total.err("run time limit reached");
                set.abort_all();
            }
        }
    }
    let elapsed = start.elapsed();
    total.lat_us.sort_unstable();
    Report {
        stats: total,
        elapsed,
    }
}

/// One connection slot: connections one after the other until the
/// messages are claimed.
async fn slot(sh: Arc<Shared>) -> Stats {
    let mut st = Stats::default();
    let mut bufs = Bufs::new();
    while sh.claim() {
        let t0 = Instant::now();
        match connect(&sh.spec.target, sh.spec.io_timeout).await {
            Ok(Io::Unix(s)) => conversation(s, t0, &sh, &mut st, &mut bufs).await,
            Ok(Io::Tcp(s)) if sh.spec.nodelay && s.set_nodelay(true).is_err() => {
                st.conn_fail += 1;
                st.failed += 1;
                st.err("setting TCP_NODELAY");
            }
            Ok(Io::Tcp(s)) => conversation(s, t0, &sh, &mut st, &mut bufs).await,
            Err(what) => {
                st.conn_fail += 1;
                st.failed += 1;
                st.err(what);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    st
}

enum Io {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Connects, retrying while a unix listener's backlog is full (EAGAIN).
async fn connect(target: &Target, limit: Duration) -> Result<Io, &'static str> {
    let until = Instant::now() + limit;
    loop {
        let r = match target {
            Target::Unix(p) => UnixStream::connect(p).await.map(Io::Unix),
            Target::Tcp(a) => TcpStream::connect(a).await.map(Io::Tcp),
        };
        match r {
            Ok(io) => return Ok(io),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err("connect: backlog full");
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err("connect: refused");
            }
            Err(e) if e.raw_os_error() == Some(24) => return Err("connect: EMFILE"),
            Err(_) => return Err("connect failed"),
        }
    }
}

/// Buffers reused across the connections of a slot.
struct Bufs {
    out: Vec<u8>,
    inbuf: BytesMut,
    decoder: FrameDecoder,
}

impl Bufs {
    fn new() -> Self {
        Bufs {
            out: Vec::with_capacity(4096),
            inbuf: BytesMut::with_capacity(4096),
            decoder: FrameDecoder::new(1 << 20),
        }
    }
}

/// The negotiated view of the conversation plus the position in it.
struct Conv<'a> {
    pk: &'a Packets,
    version: u32,
    proto: ProtocolFlags,
    stage: usize,
    idx: usize,
    skip: Option<usize>,
    rcpt_ok: usize,
}

enum Step {
    /// Wait for the reply to this stage.
    Await(usize),
    /// Write what is queued and go on without a reply (after DATA).
    Flush,
    /// Every recipient was rejected: the transaction ends before DATA.
    AllRejected,
}

impl Conv<'_> {
    fn begin(&mut self, stage: usize) {
        self.stage = stage;
        self.idx = 0;
        self.skip = None;
        self.rcpt_ok = 0;
    }

    /// Queues packets up to the next reply or flush point.
    fn pump(&mut self, out: &mut Vec<u8>) -> Step {
        loop {
            let s = self.stage;
            let events = &self.pk.events[s];
            if self.idx >= events.len() {
                self.stage += 1;
                self.idx = 0;
                if self.stage == S_DATA && self.pk.rcpts > 0 && self.rcpt_ok == 0 {
                    return Step::AllRejected;
                }
                continue;
            }
            if let Some(k) = self.skip {
                if k == s {
                    if s == S_RCPT {
                        self.rcpt_ok += 1;
                    }
                    self.idx += 1;
                    continue;
                }
                self.skip = None;
            }
            out.extend_from_slice(&self.pk.macros[s]);
            let send = !(self.proto.intersects(NO_BIT[s]) || (s == S_DATA && self.version < 4));
            let mut want = false;
            if send {
                out.extend_from_slice(&events[self.idx]);
                want = s == S_EOM || !self.proto.intersects(NR_BIT[s]);
            }
            if s == S_RCPT && !want {
                self.rcpt_ok += 1;
            }
            self.idx += 1;
            if want {
                return Step::Await(s);
            }
            if s == S_DATA {
                return Step::Flush;
            }
        }
    }
}

/// How a message ended on the wire.
enum End {
    /// Final reply; ABORT follows, then the next message or QUIT.
    Next(Outcome),
    /// The filter ended the SMTP session: close without QUIT.
    Close(Outcome),
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, b: &mut Bufs) -> Result<Frame, &'static str> {
    loop {
        if let Some(f) = b
            .decoder
            .decode(&mut b.inbuf)
            .map_err(|_| "bad frame from filter")?
        {
            return Ok(f);
        }
        if b.inbuf.capacity() - b.inbuf.len() < 512 {
            b.inbuf.reserve(4096);
        }
        match s.read_buf(&mut b.inbuf).await {
            Ok(0) => return Err("connection closed by filter"),
            Ok(_) => {}
            Err(_) => return Err("read failed"),
        }
    }
}

async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    b: &mut Bufs,
    pk: &Packets,
) -> Result<OptNegReply, &'static str> {
    s.write_all(&pk.optneg).await.map_err(|_| "write failed")?;
    let f = read_frame(s, b).await?;
    match Response::decode(&f) {
        Ok(Response::OptNeg(r)) => Ok(r),
        _ => Err("bad OPTNEG reply"),
    }
}

/// Sends one message from `conv`'s current stage to the final EOM reply.
async fn message<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    conv: &mut Conv<'_>,
    b: &mut Bufs,
    st: &mut Stats,
) -> Result<End, &'static str> {
    loop {
        let step = conv.pump(&mut b.out);
        s.write_all(&b.out).await.map_err(|_| "write failed")?;
        b.out.clear();
        let wait = match step {
            Step::Flush => continue,
            Step::AllRejected => return Ok(End::Next(Outcome::Reject)),
            Step::Await(w) => w,
        };
        loop {
            let f = read_frame(s, b).await?;
            if Response::decode(&f).is_err() {
                return Err("malformed reply");
            }
            let code = f.code;
            if wait == S_EOM {
                let outcome = match code {
                    b'h' | b'i' | b'm' | b'e' | b'+' | b'2' | b'-' | b'b' | b'q' => {
                        st.mods += 1;
                        continue;
                    }
                    b'p' => continue,
                    b'a' => Outcome::Accept,
                    b'c' | b's' => Outcome::Continue,
                    b'r' => Outcome::Reject,
                    b't' => Outcome::Tempfail,
                    b'y' => Outcome::ReplyCode,
                    b'd' => Outcome::Discard,
                    b'4' => return Ok(End::Close(Outcome::Shutdown)),
                    _ => return Err("unknown reply code at EOM"),
                };
                return Ok(End::Next(outcome));
            }
            let conn_stage = wait <= S_HELO;
            match code {
                b'c' | b's' => {
                    if code == b's' {
                        conv.skip = Some(wait);
                        st.skips += 1;
                    }
                    if wait == S_RCPT {
                        conv.rcpt_ok += 1;
                    }
                    break;
                }
                b'p' | b'q' => continue,
                b'a' if conn_stage => return Ok(End::Close(Outcome::EarlyAccept)),
                b'a' => return Ok(End::Next(Outcome::Accept)),
                b'r' | b't' | b'y' if conn_stage => {
                    return Ok(End::Close(Outcome::EarlyReject));
                }
                b'r' | b't' | b'y' if wait == S_RCPT => {
                    st.rcpt_rejected += 1;
                    break;
                }
                b'r' => return Ok(End::Next(Outcome::Reject)),
                b't' => return Ok(End::Next(Outcome::Tempfail)),
                b'y' => return Ok(End::Next(Outcome::ReplyCode)),
                b'd' if conn_stage => break,
                b'd' => return Ok(End::Next(Outcome::Discard)),
                b'4' => return Ok(End::Close(Outcome::Shutdown)),
                b'h' | b'i' | b'm' | b'e' | b'+' | b'2' | b'-' | b'b' => {
                    return Err("modification outside EOM");
                }
                _ => return Err("unknown reply code"),
            }
        }
    }
}

fn conv_for<'a>(pk: &'a Packets, r: &OptNegReply) -> Conv<'a> {
    let version = r.version.min(6);
    let mut proto = r.protocol;
    if version < 3 {
        proto |= ProtocolFlags::NO_UNKNOWN;
    }
    if version < 4 {
        proto |= ProtocolFlags::NO_DATA;
    }
    Conv {
        pk,
        version,
        proto,
        stage: S_CONNECT,
        idx: 0,
        skip: None,
        rcpt_ok: 0,
    }
}

/// One connection: negotiate, then messages until `per_conn` or no more
/// messages are left, then QUIT.
async fn conversation<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    t0: Instant,
    sh: &Shared,
    st: &mut Stats,
    b: &mut Bufs,
) {
    st.conns += 1;
    b.out.clear();
    b.inbuf.clear();
    let limit = sh.spec.io_timeout;
    let reply = match tokio::time::timeout(limit, negotiate(&mut s, b, &sh.pk)).await {
        Ok(Ok(r)) => r,
        Ok(Err(what)) => {
            st.conn_fail += 1;
            st.failed += 1;
            st.err(what);
            return;
        }
        Err(_) => {
            st.conn_fail += 1;
            st.failed += 1;
            st.err("negotiation timed out");
            return;
        }
    };
    if !sh.first_neg.swap(true, Ordering::Relaxed) {
        st.negotiated = Some((reply.version, reply.actions.bits(), reply.protocol.bits()));
    }
    let mut conv = conv_for(&sh.pk, &reply);
    let mut t_msg = t0;
    let mut stage = S_CONNECT;
    let mut in_conn = 0u64;
    loop {
        conv.begin(stage);
        match tokio::time::timeout(limit, message(&mut s, &mut conv, b, st)).await {
            Ok(Ok(End::Next(outcome))) => {
                st.done(t_msg, outcome);
                b.out.extend_from_slice(&sh.pk.abort);
            }
            Ok(Ok(End::Close(outcome))) => {
                st.done(t_msg, outcome);
                return;
            }
            Ok(Err(what)) => {
                st.failed += 1;
                st.err(what);
                return;
            }
            Err(_) => {
                st.failed += 1;
                st.err("message timed out");
                return;
            }
        }
        in_conn += 1;
        if in_conn >= sh.spec.per_conn || !sh.claim() {
            b.out.extend_from_slice(&sh.pk.quit);
            let _ = s.write_all(&b.out).await;
            b.out.clear();
            return;
        }
        t_msg = Instant::now();
        stage = S_HELO;
    }
}

/// The result of an idle-connection hold.
#[derive(Debug, Default)]
pub(crate) struct HoldReport {
    pub(crate) established: u64,
    pub(crate) secs_to_establish: f64,
    pub(crate) after_ok: u64,
    pub(crate) after_failed: u64,
    pub(crate) errors: BTreeMap<&'static str, u64>,
}

/// Opens `conns` connections (OPTNEG + CONNECT, `window` handshakes in
/// flight), calls `measure` while they are idle, then runs one message on
/// each still-open connection and QUITs.
pub(crate) async fn hold<F: FnOnce(&HoldReport)>(
    pk: Arc<Packets>,
    target: Target,
    conns: usize,
    window: usize,
    io_timeout: Duration,
    settle: Duration,
    measure: F,
) -> HoldReport {
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(window));
    let give_up = Arc::new(AtomicBool::new(false));
    let established = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let (release_tx, release_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let (pk, target, gate, give_up, established, ended, mut rx) = (
            pk.clone(),
            target.clone(),
            gate.clone(),
            give_up.clone(),
            established.clone(),
            ended.clone(),
            release_rx.clone(),
        );
        set.spawn(async move {
            let mut st = Stats::default();
            let mut b = Bufs::new();
            b.inbuf = BytesMut::new();
            let r = async {
                let permit = gate.acquire().await.map_err(|_| "closed")?;
                if give_up.load(Ordering::Relaxed) {
                    return Err("not tried: server saturated");
                }
                let io = tokio::time::timeout(io_timeout, async {
                    let io = connect(&target, io_timeout).await?;
                    match io {
                        Io::Unix(mut s) => handshake(&mut s, &mut b, &pk)
                            .await
                            .map(|c| (Io::Unix(s), c)),
                        Io::Tcp(mut s) => handshake(&mut s, &mut b, &pk)
                            .await
                            .map(|c| (Io::Tcp(s), c)),
                    }
                })
                .await
                .map_err(|_| "handshake timed out")
                .and_then(|r| r);
                drop(permit);
                io
            }
            .await;
            let (io, reply) = match r {
                Ok(x) => x,
                Err(what) => {
                    if what != "not tried: server saturated" {
                        give_up.store(true, Ordering::Relaxed);
                    }
                    st.err(what);
                    st.conn_fail += 1;
                    ended.fetch_add(1, Ordering::Relaxed);
                    return st;
                }
            };
            established.fetch_add(1, Ordering::Relaxed);
            ended.fetch_add(1, Ordering::Relaxed);
            let _ = rx.wait_for(|go| *go).await;
            let t0 = Instant::now();
            match io {
                Io::Unix(s) => after_hold(s, t0, &pk, &reply, &mut st, &mut b, io_timeout).await,
                Io::Tcp(s) => after_hold(s, t0, &pk, &reply, &mut st, &mut b, io_timeout).await,
            }
            st
        });
    }
    while ended.load(Ordering::Relaxed) < conns as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rep = HoldReport {
        established: established.load(Ordering::Relaxed),
        secs_to_establish: start.elapsed().as_secs_f64(),
        ..Default::default()
    };
    tokio::time::sleep(settle).await;
    measure(&rep);
    let _ = release_tx.send(true);
    while let Some(r) = set.join_next().await {
        if let Ok(st) = r {
            rep.after_ok += st.ok;
            rep.after_failed += st.failed;
            for (k, v) in st.errors {
                *rep.errors.entry(k).or_default() += v;
            }
        }
    }
    rep
}

/// OPTNEG, then macros + CONNECT (awaiting its reply unless negotiated away).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    b: &mut Bufs,
    pk: &Packets,
) -> Result<OptNegReply, &'static str> {
    let reply = negotiate(s, b, pk).await?;
    let conv = conv_for(pk, &reply);
    let mut out = pk.macros[S_CONNECT].clone();
    if !conv.proto.intersects(NO_BIT[S_CONNECT]) {
        out.extend_from_slice(&pk.events[S_CONNECT][0]);
    }
    s.write_all(&out).await.map_err(|_| "write failed")?;
    if !conv.proto.intersects(NO_BIT[S_CONNECT] | NR_BIT[S_CONNECT]) {
        let f = read_frame(s, b).await?;
        if f.code != b'c' {
            return Err("CONNECT not continued");
        }
    }
    Ok(reply)
}

async fn after_hold<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    t0: Instant,
    pk: &Packets,
    reply: &OptNegReply,
    st: &mut Stats,
    b: &mut Bufs,
    limit: Duration,
) {
    let mut conv = conv_for(pk, reply);
    conv.begin(S_HELO);
    match tokio::time::timeout(limit, message(&mut s, &mut conv, b, st)).await {
        Ok(Ok(End::Next(o))) => {
            st.done(t0, o);
            b.out.extend_from_slice(&pk.abort);
            b.out.extend_from_slice(&pk.quit);
            let _ = s.write_all(&b.out).await;
        }
        Ok(Ok(End::Close(o))) => st.done(t0, o),
        Ok(Err(what)) => {
            st.failed += 1;
            st.err(what);
        }
        Err(_) => {
            st.failed += 1;
            st.err("message timed out");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use milter_proto::Command;

    #[test]
    fn every_packet_decodes_as_a_command() {
        let pk = Packets::new(70_000, 12, 2);
        for p in pk.all() {
            let mut buf = BytesMut::from(p);
            let f = FrameDecoder::new(1 << 20)
                .decode(&mut buf)
                .expect("frame")
                .expect("whole frame");
            assert!(buf.is_empty(), "one frame per packet");
            Command::decode(&f).expect("valid command");
        }
        assert_eq!(pk.events[S_BODY].len(), 2, "70,000 bytes in two chunks");
        assert_eq!(pk.events[S_HEADER].len(), 12);
    }

    #[test]
    fn negotiated_bits_shape_the_writes() {
        let pk = Packets::new(1024, 10, 1);
        let reply = OptNegReply {
            version: 6,
            actions: Default::default(),
            protocol: ProtocolFlags::NO_HELO | ProtocolFlags::NR_HEADER | ProtocolFlags::NO_BODY,
            macros: Default::default(),
        };
        let mut conv = conv_for(&pk, &reply);
        conv.begin(S_CONNECT);
        let mut out = Vec::new();
        let mut steps = Vec::new();
        loop {
            match conv.pump(&mut out) {
                Step::Await(s) => {
                    steps.push(s);
                    if s == S_RCPT {
                        conv.rcpt_ok += 1; // as a CONTINUE reply does
                    }
                    if s == S_EOM {
                        break;
                    }
                }
                Step::Flush => steps.push(99),
                Step::AllRejected => unreachable!(),
            }
        }
        // CONNECT, (HELO skipped) MAIL, RCPT, DATA, (headers no reply) EOH, (no body) EOM
        assert_eq!(steps, vec![0, 2, 3, 4, 6, 8]);
        // HELO macros are still sent, the HELO packet is not.
        let helo = &pk.events[S_HELO][0];
        assert!(!out.windows(helo.len()).any(|w| w == helo.as_slice()));
    }
}
