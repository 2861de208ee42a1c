//! Whole messages: a [`Message`] builder with Postfix-like macros, and
//! [`Connection::send_message`] that runs it through a filter the way an
//! MTA does and reports a [`MessageOutcome`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use milter_proto::{ConnectAddress, ProtocolFlags, SmtpReply};

use crate::config::FailurePolicy;
use crate::connection::{Client, Connection, ToSocketSpec};
use crate::error::ClientError;
use crate::reply::{Modification, Reply, Stage, text};

static QUEUE_IDS: AtomicU64 = AtomicU64::new(1);

/// One SMTP transaction to run through a filter: optional connection
/// information and HELO, the envelope, headers, body, and macros.
///
/// Macros default to what Postfix sends (see [`Message::macros_for`]);
/// [`Message::macro_at`] adds or overrides one,
/// [`Message::without_default_macros`] turns the defaults off.
///
/// ```
/// use milter_client::{Message, Stage};
///
/// let message = Message::new()
///     .client("client.example.net", "192.0.2.1:4567".parse().unwrap())
///     .helo("client.example.net")
///     .sender("alice@example.org")            // sent as <alice@example.org>
///     .sender_args(["SIZE=1234"])
///     .rcpt("bob@example.net")
///     .header("Subject", "hello")
///     .body("Hi Bob.\r\n")
///     .macro_at(Stage::Mail, "{auth_authen}", "alice");
/// assert_eq!(message.recipients()[0].0, "<bob@example.net>");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    connect: Option<(String, ConnectAddress)>,
    helo: Option<String>,
    sender: String,
    sender_args: Vec<String>,
    recipients: Vec<(String, Vec<String>)>,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    macros: Vec<(Stage, String, String)>,
    default_macros: bool,
    mta_hostname: String,
    queue_id: String,
}

impl Default for Message {
    fn default() -> Self {
        Self::new()
    }
}

/// Angle brackets around an address, unless it has them.
fn bracket(addr: &str) -> String {
    if addr.starts_with('<') {
        addr.to_string()
    } else {
        format!("<{addr}>")
    }
}

/// The address without angle brackets (what `{mail_addr}` carries).
fn unbracket(addr: &str) -> &str {
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
}

impl Message {
    /// An empty message from the null sender `<>` with no recipients, a
    /// fresh queue id, MTA host name `mx.example.org`, default macros on.
    pub fn new() -> Self {
        let n = QUEUE_IDS.fetch_add(1, Ordering::Relaxed);
        Self {
            connect: None,
            helo: None,
            sender: "<>".to_string(),
            sender_args: Vec::new(),
            recipients: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
            macros: Vec::new(),
            default_macros: true,
            mta_hostname: "mx.example.org".to_string(),
            queue_id: format!("4{n:09X}"),
        }
    }

    /// Sends CONNECT first, with this host name and address.
    pub fn connect(mut self, hostname: &str, address: ConnectAddress) -> Self {
        self.connect = Some((hostname.to_string(), address));
        self
    }

    /// Sends CONNECT first, from an IP client.
    pub fn client(self, hostname: &str, address: SocketAddr) -> Self {
        self.connect(hostname, ConnectAddress::Inet(address))
    }

    /// Sends HELO with this name (after CONNECT, if any).
    pub fn helo(mut self, name: &str) -> Self {
        self.helo = Some(name.to_string());
        self
    }

    /// The envelope sender; angle brackets are added unless present
    /// (`""` becomes the null sender `<>`).
    pub fn sender(mut self, address: &str) -> Self {
        self.sender = bracket(address);
        self
    }

    /// ESMTP arguments of MAIL FROM (`SIZE=1234`, `BODY=8BITMIME`).
    pub fn sender_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.sender_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a recipient (angle brackets added unless present).
    pub fn rcpt(self, address: &str) -> Self {
        self.rcpt_with_args(address, Vec::<String>::new())
    }

    /// Adds a recipient with ESMTP arguments (`NOTIFY=NEVER`).
    pub fn rcpt_with_args<S: Into<String>>(
        mut self,
        address: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        self.recipients
            .push((bracket(address), args.into_iter().map(Into::into).collect()));
        self
    }

    /// Adds a header `Name: value` (stored with the usual space after the colon).
    pub fn header(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let mut raw = BytesMut::from(&b" "[..]);
        raw.extend_from_slice(value.as_ref());
        self.header_raw(name, raw.freeze())
    }

    /// Adds a header with its text after the colon exactly as given
    /// (leading whitespace included; folded lines joined by `\n`).
    pub fn header_raw(mut self, name: &str, raw: impl Into<Bytes>) -> Self {
        self.headers.push((name.to_string(), raw.into()));
        self
    }

    /// Sets the body (CRLF line ends, as MTAs send it).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Replaces headers and body with those of an RFC 5322 message (see [`parse_eml`]).
    pub fn eml(mut self, input: &[u8]) -> Self {
        let (headers, body) = parse_eml(input);
        self.headers = headers;
        self.body = body;
        self
    }

    /// Adds (or overrides) a macro sent before `stage`.
    pub fn macro_at(mut self, stage: Stage, name: &str, value: &str) -> Self {
        self.macros.retain(|(s, n, _)| !(*s == stage && n == name));
        self.macros
            .push((stage, name.to_string(), value.to_string()));
        self
    }

    /// Sends only the macros given with [`Message::macro_at`].
    pub fn without_default_macros(mut self) -> Self {
        self.default_macros = false;
        self
    }

    /// The MTA's host name for `j` and `{daemon_name}` (default `mx.example.org`).
    pub fn mta_hostname(mut self, name: &str) -> Self {
        self.mta_hostname = name.to_string();
        self
    }

    /// The queue id `i` (default: a fresh one per message).
    pub fn queue_id(mut self, id: &str) -> Self {
        self.queue_id = id.to_string();
        self
    }

    /// The envelope sender as sent.
    pub fn sender_address(&self) -> &str {
        &self.sender
    }

    /// The recipients as sent, with their arguments.
    pub fn recipients(&self) -> &[(String, Vec<String>)] {
        &self.recipients
    }

    /// The headers: name and the raw text after the colon.
    pub fn headers(&self) -> &[(String, Bytes)] {
        &self.headers
    }

    /// The body.
    pub fn body_bytes(&self) -> &Bytes {
        &self.body
    }

    /// The queue id.
    pub fn id(&self) -> &str {
        &self.queue_id
    }

    /// The macros sent before `stage` (for RCPT: before recipient `rcpt`).
    ///
    /// Defaults, after Postfix (its `milter_*_macros` plus the client
    /// macros it can provide):
    ///
    /// | stage | macros |
    /// |---|---|
    /// | CONNECT | `j`, `{daemon_name}`, `{daemon_addr}`, `v`, `_`, `{client_addr}` (IPv6 as `IPv6:…`), `{client_name}`, `{client_port}` |
    /// | MAIL | `{mail_addr}` (without brackets) |
    /// | RCPT | `{rcpt_addr}` |
    /// | DATA, EOH, EOM | `i` (Postfix knows the queue id only from then on) |
    /// | HELO, HEADER, BODY, UNKNOWN | none (an empty packet is still sent) |
    pub fn macros_for(&self, stage: Stage, rcpt: Option<&str>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if self.default_macros {
            let mut add = |n: &str, v: String| out.push((n.to_string(), v));
            match stage {
                Stage::Connect => {
                    add("j", self.mta_hostname.clone());
                    add("{daemon_name}", self.mta_hostname.clone());
                    add("{daemon_addr}", "127.0.0.1".to_string());
                    add("v", format!("milter-client {}", env!("CARGO_PKG_VERSION")));
                    if let Some((host, address)) = &self.connect {
                        match address {
                            ConnectAddress::Inet(sa) => {
                                let ip = match sa.ip() {
                                    IpAddr::V4(ip) => ip.to_string(),
                                    IpAddr::V6(ip) => format!("IPv6:{ip}"),
                                };
                                add("_", format!("{host} [{ip}]"));
                                add("{client_addr}", ip);
                                add("{client_port}", sa.port().to_string());
                            }
                            _ => add("_", host.clone()),
                        }
                        add("{client_name}", host.clone());
                    }
                }
                Stage::Mail => add("{mail_addr}", unbracket(&self.sender).to_string()),
                Stage::Rcpt => {
                    if let Some(r) = rcpt {
                        add("{rcpt_addr}", unbracket(r).to_string());
                    }
                }
                Stage::Data | Stage::EndOfHeaders | Stage::EndOfMessage => {
                    add("i", self.queue_id.clone());
                }
                _ => {}
            }
        }
        for (s, n, v) in &self.macros {
            if *s == stage {
                out.retain(|(name, _)| name != n);
                out.push((n.clone(), v.clone()));
            }
        }
        out
    }
}

/// Splits an RFC 5322 message into headers and body the way an MTA reads
/// it: LF or CRLF line ends; folded continuation lines joined to their
/// header with a bare `\n` (as MTAs pass them to filters); headers end at
/// the first empty line (or at the first line that is not a header); a
/// leading mbox `From ` line is dropped. The body comes back with CRLF line
/// ends. Header values are the raw text after the colon.
pub fn parse_eml(input: &[u8]) -> (Vec<(String, Bytes)>, Bytes) {
    let mut lines: Vec<&[u8]> = input
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    if input.ends_with(b"\n") {
        lines.pop();
    }
    let mut headers: Vec<(String, BytesMut)> = Vec::new();
    let mut body_start = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if i == 0 && line.starts_with(b"From ") {
            continue;
        }
        if line.is_empty() {
            body_start = i + 1;
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t'))
            && let Some((_, value)) = headers.last_mut()
        {
            value.extend_from_slice(b"\n");
            value.extend_from_slice(line);
            continue;
        }
        match line.iter().position(|&b| b == b':') {
            Some(colon) if colon > 0 => {
                let (name, rest) = line.split_at(colon);
                let value = rest.get(1..).unwrap_or_default();
                headers.push((
                    String::from_utf8_lossy(name).into_owned(),
                    BytesMut::from(value),
                ));
            }
            _ => {
                body_start = i;
                break;
            }
        }
    }
    let mut body = BytesMut::new();
    for line in lines.iter().skip(body_start) {
        body.extend_from_slice(line);
        body.extend_from_slice(b"\r\n");
    }
    (
        headers.into_iter().map(|(n, v)| (n, v.freeze())).collect(),
        body.freeze(),
    )
}

/// How the MTA ends up treating the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// Accepted (the filter continued to the end or accepted early).
    Accepted,
    /// Rejected permanently (5xx).
    Rejected,
    /// Failed temporarily (4xx).
    Tempfailed,
    /// Accepted and dropped.
    Discarded,
    /// The filter asked to shut the SMTP session down (421).
    Shutdown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Tempfailed => "tempfailed",
            Verdict::Discarded => "discarded",
            Verdict::Shutdown => "shutdown",
        })
    }
}

/// One event of a transcript: the stage, its argument as text (address,
/// header name, byte count), and the filter's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageReply {
    /// The stage.
    pub stage: Stage,
    /// What was sent, for display.
    pub argument: String,
    /// The reply.
    pub reply: Reply,
}

/// What happened to a [`Message`].
#[derive(Debug)]
#[non_exhaustive]
pub struct MessageOutcome {
    /// The result.
    pub verdict: Verdict,
    /// The stage whose reply decided it ([`Stage::EndOfMessage`] when the
    /// filter went through to the end; [`Stage::Rcpt`] when every recipient
    /// was refused).
    pub decided_at: Stage,
    /// The filter's own SMTP reply, if it sent one with the decision.
    pub reply: Option<SmtpReply>,
    /// Modifications requested at end of message.
    pub modifications: Vec<Modification>,
    /// Progress packets received at end of message.
    pub progress_count: usize,
    /// Every event sent (or suppressed) and its reply, in order.
    pub stages: Vec<StageReply>,
    /// Recipients the MTA keeps.
    pub accepted_recipients: Vec<String>,
    /// Recipients the filter refused, with the reply.
    pub rejected_recipients: Vec<(String, Reply)>,
    /// When the failure policy produced this outcome: the filter failure.
    pub failure: Option<ClientError>,
    /// The stage being run, for the failure policy.
    in_progress: Stage,
}

impl MessageOutcome {
    fn new() -> Self {
        Self {
            verdict: Verdict::Accepted,
            decided_at: Stage::EndOfMessage,
            reply: None,
            modifications: Vec::new(),
            progress_count: 0,
            stages: Vec::new(),
            accepted_recipients: Vec::new(),
            rejected_recipients: Vec::new(),
            failure: None,
            in_progress: Stage::Negotiate,
        }
    }

    /// Whether the MTA accepts the message.
    pub fn is_accepted(&self) -> bool {
        self.verdict == Verdict::Accepted
    }

    /// The first reply recorded for `stage`.
    pub fn reply_at(&self, stage: Stage) -> Option<&Reply> {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .map(|s| &s.reply)
    }

    /// The SMTP reply the MTA gives the client: the filter's own text, or
    /// Postfix's defaults (`550 5.7.1 Command rejected`, `451 4.7.1 Service
    /// unavailable - try again later`, `421 4.7.0 Server closing
    /// connection`, `250 2.0.0 Ok`).
    pub fn smtp_text(&self) -> String {
        if let Some(r) = &self.reply {
            return text(r.as_bytes());
        }
        match self.verdict {
            Verdict::Accepted | Verdict::Discarded => "250 2.0.0 Ok",
            Verdict::Rejected => "550 5.7.1 Command rejected",
            Verdict::Tempfailed => "451 4.7.1 Service unavailable - try again later",
            Verdict::Shutdown => "421 4.7.0 Server closing connection",
        }
        .to_string()
    }

    fn record(&mut self, stage: Stage, argument: impl Into<String>, reply: &Reply) {
        self.stages.push(StageReply {
            stage,
            argument: argument.into(),
            reply: reply.clone(),
        });
    }

    /// Records a decision if `reply` is one; returns whether it was.
    fn decide(&mut self, stage: Stage, reply: &Reply) -> bool {
        let verdict = match reply {
            Reply::Accept => Verdict::Accepted,
            Reply::Reject => Verdict::Rejected,
            Reply::Tempfail => Verdict::Tempfailed,
            Reply::Code(r) if r.is_temporary() => Verdict::Tempfailed,
            Reply::Code(_) => Verdict::Rejected,
            Reply::Discard => Verdict::Discarded,
            Reply::Shutdown => Verdict::Shutdown,
            _ => return false,
        };
        self.verdict = verdict;
        self.decided_at = stage;
        self.reply = reply.smtp_reply().cloned();
        true
    }

    fn apply_policy(&mut self, policy: FailurePolicy, error: ClientError, message: &Message) {
        self.verdict = match policy {
            FailurePolicy::Tempfail => Verdict::Tempfailed,
            FailurePolicy::Reject => Verdict::Rejected,
            FailurePolicy::Continue => Verdict::Accepted,
        };
        self.decided_at = match &error {
            ClientError::Timeout { stage, .. } => *stage,
            _ => self.in_progress,
        };
        self.reply = None;
        self.modifications.clear();
        self.progress_count = 0;
        if policy == FailurePolicy::Continue {
            self.accepted_recipients = message
                .recipients
                .iter()
                .map(|(r, _)| r.clone())
                .filter(|r| !self.rejected_recipients.iter().any(|(x, _)| x == r))
                .collect();
        }
        self.failure = Some(error);
    }
}

impl Connection {
    /// Runs a message through the filter as an MTA does: CONNECT and HELO
    /// if the message has them, then MAIL, each RCPT, DATA, the headers,
    /// EOH, the body, end of message, and ABORT (unless
    /// [`crate::ClientConfig::abort_after_message`] is off). Every stage
    /// gets its macro packet first.
    ///
    /// It stops at the first final decision, like an MTA: a reject,
    /// tempfail, accept or discard at MAIL, DATA, a header, EOH or the body
    /// ends the message; a reject or tempfail at RCPT drops only that
    /// recipient, and when no recipient is left DATA is not sent; an accept
    /// at CONNECT or HELO ends filtering for the session. Header values
    /// lose one leading space unless `SMFIP_HDR_LEADSPC` was negotiated.
    ///
    /// Errors are returned as they happen; see
    /// [`Connection::send_message_or_policy`] for MTA-style handling.
    pub async fn send_message(&mut self, message: &Message) -> Result<MessageOutcome, ClientError> {
        let mut out = MessageOutcome::new();
        self.run_message(message, &mut out).await?;
        Ok(out)
    }

    /// As [`Connection::send_message`], but a filter failure (or a broken
    /// connection) yields the configured [`FailurePolicy`] as the outcome,
    /// with the error in [`MessageOutcome::failure`] — what an MTA does.
    pub async fn send_message_or_policy(&mut self, message: &Message) -> MessageOutcome {
        let mut out = MessageOutcome::new();
        if let Err(e) = self.run_message(message, &mut out).await {
            out.apply_policy(self.config().failure_policy, e, message);
        }
        out
    }

    async fn run_message(
        &mut self,
        m: &Message,
        out: &mut MessageOutcome,
    ) -> Result<(), ClientError> {
        if let Some((host, address)) = &m.connect {
            let macros = m.macros_for(Stage::Connect, None);
            out.in_progress = Stage::Connect;
            let reply = self
                .connect(&as_pairs(&macros), host, address.clone())
                .await?;
            out.record(Stage::Connect, host.clone(), &reply);
            // Postfix ignores DISCARD at CONNECT and HELO.
            if reply != Reply::Discard && out.decide(Stage::Connect, &reply) {
                return Ok(());
            }
        }
        if let Some(name) = &m.helo {
            let macros = m.macros_for(Stage::Helo, None);
            out.in_progress = Stage::Helo;
            let reply = self.helo(&as_pairs(&macros), name).await?;
            out.record(Stage::Helo, name.clone(), &reply);
            if reply != Reply::Discard && out.decide(Stage::Helo, &reply) {
                return Ok(());
            }
        }
        let result = self.run_transaction(m, out).await;
        if result.is_ok() && self.config().abort_after_message {
            out.in_progress = Stage::Abort;
            self.abort().await?;
        }
        result
    }

    async fn run_transaction(
        &mut self,
        m: &Message,
        out: &mut MessageOutcome,
    ) -> Result<(), ClientError> {
        let all_recipients = || m.recipients.iter().map(|(r, _)| r.clone()).collect();
        let macros = m.macros_for(Stage::Mail, None);
        let args: Vec<&str> = m.sender_args.iter().map(String::as_str).collect();
        out.in_progress = Stage::Mail;
        let reply = self.mail(&as_pairs(&macros), &m.sender, &args).await?;
        out.record(Stage::Mail, m.sender.clone(), &reply);
        if out.decide(Stage::Mail, &reply) {
            if out.verdict == Verdict::Accepted {
                out.accepted_recipients = all_recipients();
            }
            return Ok(());
        }

        let mut decided = false;
        for (rcpt, args) in &m.recipients {
            if decided {
                out.accepted_recipients.push(rcpt.clone());
                continue;
            }
            let macros = m.macros_for(Stage::Rcpt, Some(rcpt));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            out.in_progress = Stage::Rcpt;
            let reply = self.rcpt(&as_pairs(&macros), rcpt, &args).await?;
            out.record(Stage::Rcpt, rcpt.clone(), &reply);
            match &reply {
                r if r.is_reject() || r.is_tempfail() => {
                    out.rejected_recipients.push((rcpt.clone(), reply.clone()));
                }
                Reply::Accept => {
                    out.accepted_recipients.push(rcpt.clone());
                    out.decide(Stage::Rcpt, &reply);
                    decided = true;
                }
                Reply::Discard | Reply::Shutdown => {
                    out.decide(Stage::Rcpt, &reply);
                    return Ok(());
                }
                _ => out.accepted_recipients.push(rcpt.clone()),
            }
        }
        if decided {
            return Ok(());
        }
        if out.accepted_recipients.is_empty() {
            // No recipient left: the MTA does not go on to DATA.
            let any_temp = out.rejected_recipients.iter().any(|(_, r)| r.is_tempfail());
            let last = out.rejected_recipients.last().map(|(_, r)| r.clone());
            out.verdict = if any_temp {
                Verdict::Tempfailed
            } else {
                Verdict::Rejected
            };
            out.decided_at = Stage::Rcpt;
            out.reply = last.and_then(|r| r.smtp_reply().cloned());
            return Ok(());
        }

        let macros = m.macros_for(Stage::Data, None);
        out.in_progress = Stage::Data;
        let reply = self.data(&as_pairs(&macros)).await?;
        out.record(Stage::Data, "", &reply);
        if out.decide(Stage::Data, &reply) {
            return Ok(());
        }

        let leading_space = self
            .agreed()
            .protocol
            .contains(ProtocolFlags::HEADER_LEADING_SPACE);
        let macros = m.macros_for(Stage::Header, None);
        for (name, raw) in &m.headers {
            let value = if leading_space {
                raw.clone()
            } else {
                raw.strip_prefix(b" ")
                    .map_or_else(|| raw.clone(), |v| raw.slice_ref(v))
            };
            out.in_progress = Stage::Header;
            let reply = self.header(&as_pairs(&macros), name, &value).await?;
            out.record(Stage::Header, name.clone(), &reply);
            if out.decide(Stage::Header, &reply) {
                return Ok(());
            }
        }

        let macros = m.macros_for(Stage::EndOfHeaders, None);
        out.in_progress = Stage::EndOfHeaders;
        let reply = self.end_of_headers(&as_pairs(&macros)).await?;
        out.record(Stage::EndOfHeaders, "", &reply);
        if out.decide(Stage::EndOfHeaders, &reply) {
            return Ok(());
        }

        if !m.body.is_empty() {
            let macros = m.macros_for(Stage::Body, None);
            out.in_progress = Stage::Body;
            let reply = self.body(&as_pairs(&macros), &m.body).await?;
            out.record(Stage::Body, format!("{} bytes", m.body.len()), &reply);
            if out.decide(Stage::Body, &reply) {
                return Ok(());
            }
        }

        let macros = m.macros_for(Stage::EndOfMessage, None);
        out.in_progress = Stage::EndOfMessage;
        let eom = self.end_of_message(&as_pairs(&macros)).await?;
        out.record(Stage::EndOfMessage, "", &eom.reply);
        out.modifications = eom.modifications;
        out.progress_count = eom.progress_count;
        out.decide(Stage::EndOfMessage, &eom.reply);
        out.decided_at = Stage::EndOfMessage;
        Ok(())
    }
}

fn as_pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

impl Client {
    /// Runs one message through a filter the way an MTA does: connect,
    /// negotiate, [`Connection::send_message_or_policy`], QUIT. A filter
    /// that cannot be reached or fails yields the failure policy. A message
    /// without connection information is sent with a simulated connect
    /// from `localhost` / 127.0.0.1, as Postfix does for locally submitted mail.
    pub async fn check_message(
        &self,
        spec: impl ToSocketSpec,
        message: &Message,
    ) -> MessageOutcome {
        let message = if message.connect.is_some() {
            message.clone()
        } else {
            message.clone().client(
                "localhost",
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            )
        };
        match self.connect(spec).await {
            Ok(mut conn) => {
                let out = conn.send_message_or_policy(&message).await;
                if !conn.is_broken() {
                    // The decision is made; a failing QUIT changes nothing.
                    let _ = conn.quit().await;
                }
                out
            }
            Err(e) => {
                let mut out = MessageOutcome::new();
                out.apply_policy(self.config().failure_policy, e, &message);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eml_with_lf_folding_and_mbox_line() {
        let input = b"From alice Mon Jan  1 00:00:00 2024\nSubject: hello\n  world\nX-Empty:\nTo: <b@example.net>\n\nline 1\nline 2\n";
        let (headers, body) = parse_eml(input);
        assert_eq!(
            headers,
            vec![
                (
                    "Subject".to_string(),
                    Bytes::from_static(b" hello\n  world")
                ),
                ("X-Empty".to_string(), Bytes::new()),
                ("To".to_string(), Bytes::from_static(b" <b@example.net>")),
            ]
        );
        assert_eq!(body, Bytes::from_static(b"line 1\r\nline 2\r\n"));
    }

    #[test]
    fn eml_with_crlf_and_no_final_newline() {
        let (headers, body) = parse_eml(b"A: 1\r\nB:\t2\r\n\r\nx\r\n\r\ny");
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].1, Bytes::from_static(b"\t2"));
        assert_eq!(body, Bytes::from_static(b"x\r\n\r\ny\r\n"));
    }

    #[test]
    fn eml_without_body_or_with_a_non_header_line() {
        let (headers, body) = parse_eml(b"A: 1\n");
        assert_eq!(headers.len(), 1);
        assert!(body.is_empty());
        let (headers, body) = parse_eml(b"A: 1\nnot a header\nmore\n");
        assert_eq!(headers.len(), 1);
        assert_eq!(body, Bytes::from_static(b"not a header\r\nmore\r\n"));
    }

    #[test]
    fn default_macros_follow_postfix() {
        let m = Message::new()
            .client("c.example.net", "[2001:db8::1]:25".parse().unwrap())
            .sender("a@example.org")
            .rcpt("<b@example.net>")
            .queue_id("ABC")
            .macro_at(Stage::Connect, "j", "mx.test");
        let connect = m.macros_for(Stage::Connect, None);
        let get = |v: &[(String, String)], n: &str| {
            v.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&connect, "j").as_deref(), Some("mx.test"));
        assert_eq!(
            get(&connect, "{client_addr}").as_deref(),
            Some("IPv6:2001:db8::1")
        );
        assert_eq!(
            get(&m.macros_for(Stage::Mail, None), "{mail_addr}").as_deref(),
            Some("a@example.org")
        );
        assert_eq!(
            get(
                &m.macros_for(Stage::Rcpt, Some("<b@example.net>")),
                "{rcpt_addr}"
            )
            .as_deref(),
            Some("b@example.net")
        );
        assert_eq!(
            get(&m.macros_for(Stage::EndOfMessage, None), "i").as_deref(),
            Some("ABC")
        );
        assert!(m.macros_for(Stage::Helo, None).is_empty());
        assert!(
            m.clone()
                .without_default_macros()
                .macros_for(Stage::Mail, None)
                .is_empty()
        );
        assert_eq!(m.sender_address(), "<a@example.org>");
        assert_eq!(Message::new().sender("").sender_address(), "<>");
    }
}
