//! The milter glue: [`Greylist`] implements [`milter_server::Milter`] over an [`Engine`].
//!
//! | stage | what it does |
//! |---|---|
//! | negotiate | asks for CONNECT (no reply: the MTA does not wait), MAIL, RCPT and end of message only; everything else is negotiated away. Action: add headers. Macros: `{client_addr} {client_name}` at CONNECT, `{auth_authen}` at MAIL, `{rcpt_addr} i` at RCPT, `i` at end of message. When `[[acl]]` rules need them: HELO (no reply) and, at RCPT, the macros the rules read. |
//! | CONNECT | nothing to decide; the server keeps the client address for later stages |
//! | HELO | (only for `[[acl]]` `helo` clauses) remembers the name |
//! | MAIL | remembers the raw sender and `{auth_authen}` in the message state |
//! | RCPT | [`Engine::check_rcpt`] for this recipient: continue, `451 4.7.1 …` (the configured reply), or a rule's reply |
//! | end of message | if a recipient passed after being delayed, adds `X-Greylist` |
//!
//! The client address comes from the CONNECT packet; if the MTA sent none (or an
//! unknown family), from `{client_addr}` (Sendmail's `IPv6:` prefix and brackets are
//! accepted). The host name is `{client_name}` if the MTA sent it, else the CONNECT host
//! name (Postfix sends `[address]` there when the name is unknown, which the whitelist
//! ignores).
//!
//! Nothing here can panic on input: every byte string is read leniently (invalid UTF-8
//! is replaced, which only changes the tuple key of such addresses), and a header that
//! cannot be added is logged, not turned into a failure.

use std::net::IpAddr;
use std::sync::Arc;

use milter_proto::{Actions, Envelope, MacroStage, OptNeg, SmtpReply};
use milter_server::{BoxError, Context, EomContext, Milter, Options, Stages, Status};

use crate::engine::{Action, Engine, RcptContext};
use crate::tuple::parse_client_addr;

/// Per-message state: created at MAIL, dropped at the end of the message.
#[derive(Debug, Default)]
pub struct MessageState {
    sender: String,
    auth_authen: Option<String>,
    /// Recipients seen in this transaction.
    rcpts: u64,
    /// The longest delay of a recipient that passed after being greylisted.
    delayed: Option<u64>,
}

/// The greylisting milter: one value per MTA connection, sharing one [`Engine`].
#[derive(Debug, Clone)]
pub struct Greylist {
    engine: Arc<Engine>,
    /// The HELO name, when `[[acl]]` rules asked for it.
    helo: Option<String>,
    /// The macros `[[acl]]` rules read, as negotiated for this connection.
    acl_macros: Vec<String>,
}

impl Greylist {
    /// A filter deciding with `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Greylist {
            engine,
            helo: None,
            acl_macros: Vec::new(),
        }
    }
}

/// The stages the filter asks the MTA for.
pub const STAGES: Stages = Stages::CONNECT.union(Stages::MAIL).union(Stages::RCPT);

/// The options the filter negotiates (see the module documentation).
pub fn options() -> Options {
    Options::new()
        .actions(Actions::ADD_HEADERS)
        .stages(STAGES)
        .no_reply(Stages::CONNECT)
        .macros(MacroStage::Connect, "{client_addr} {client_name}")
        .macros(MacroStage::Mail, "{auth_authen}")
        .macros(MacroStage::Rcpt, "{rcpt_addr} i")
        .macros(MacroStage::EndOfMessage, "i")
}

/// [`options`] plus what the `[[acl]]` rules need: HELO (no reply) when a rule reads
/// the HELO name, and the macros rules read, at RCPT.
pub fn options_with_acl(helo: bool, macros: &[String]) -> Options {
    let mut o = options();
    if helo {
        o = o
            .stages(STAGES | Stages::HELO)
            .no_reply(Stages::CONNECT | Stages::HELO);
    }
    if !macros.is_empty() {
        o = o.macros(
            MacroStage::Rcpt,
            &format!("{{rcpt_addr}} i {}", macros.join(" ")),
        );
    }
    o
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The client address: CONNECT's, else `{client_addr}`.
fn client_addr(ctx: &Context<'_>) -> Option<IpAddr> {
    ctx.client_ip().or_else(|| {
        // A CONNECT from a local (non-IP) client is authoritative: no fallback.
        if ctx.client().is_some() {
            return None;
        }
        ctx.macro_value("{client_addr}")
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(parse_client_addr))
    })
}

fn client_name(ctx: &Context<'_>) -> Option<String> {
    ctx.macro_value("{client_name}")
        .map(|v| text(&v))
        .filter(|s| !s.trim().is_empty())
        .or_else(|| ctx.client().map(|c| text(&c.hostname)))
}

/// The SMTP reply for a tempfailed (4xx) or rejected (5xx) recipient.
fn tempfail_status(reply: &crate::engine::SmtpReply) -> Status {
    match SmtpReply::new(reply.code, Some(&reply.status), &reply.text) {
        Ok(r) => Status::Reply(r),
        // The configuration is validated; should the text still be refused, the MTA's
        // own reply is the next best answer.
        Err(_) if reply.code >= 500 => Status::Reject,
        Err(_) => Status::Tempfail,
    }
}

#[milter_server::async_trait]
impl Milter for Greylist {
    type Message = MessageState;

    async fn negotiate(&mut self, _offer: &OptNeg) -> Result<Options, BoxError> {
        self.acl_macros = self.engine.acl_macro_names();
        Ok(options_with_acl(
            self.engine.acl_uses_helo(),
            &self.acl_macros,
        ))
    }

    async fn helo(&mut self, _ctx: &Context<'_>, name: &bytes::Bytes) -> Result<Status, BoxError> {
        self.helo = Some(text(name));
        Ok(Status::Continue)
    }

    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut MessageState,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        msg.sender = text(&from.address);
        msg.auth_authen = ctx
            .macro_value("{auth_authen}")
            .map(|v| text(&v))
            .filter(|s| !s.trim().is_empty());
        msg.delayed = None;
        msg.rcpts = 0;
        Ok(Status::Continue)
    }

    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut MessageState,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        let mut recipient = text(&rcpt.address);
        if recipient.trim().is_empty()
            && let Some(r) = ctx.macro_value("{rcpt_addr}")
        {
            recipient = text(&r);
        }
        let name = client_name(ctx);
        let queue_id = ctx.queue_id();
        msg.rcpts += 1;
        let macros: Vec<(String, String)> = self
            .acl_macros
            .iter()
            .filter_map(|n| ctx.macro_value(n).map(|v| (n.clone(), text(&v))))
            .collect();
        let rc = RcptContext {
            client_addr: client_addr(ctx),
            client_name: name.as_deref(),
            auth_authen: msg.auth_authen.as_deref(),
            sender: &msg.sender,
            recipient: &recipient,
            queue_id: queue_id.as_deref(),
            helo: self.helo.as_deref(),
            macros: &macros,
            rcpt_count: msg.rcpts,
        };
        let outcome = self.engine.check_rcpt(&rc).await;
        match outcome.action {
            Action::Continue => {
                if let Some(d) = outcome.delayed {
                    msg.delayed = Some(msg.delayed.map_or(d, |m| m.max(d)));
                }
                Ok(Status::Continue)
            }
            Action::Tempfail(reply) | Action::Reject(reply) => Ok(tempfail_status(&reply)),
        }
    }

    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut MessageState,
    ) -> Result<Status, BoxError> {
        if let Some(d) = msg.delayed
            && let Some((name, value)) = self.engine.x_greylist_header(d)
            && let Err(e) = ctx.add_header(&name, &value)
        {
            tracing::warn!(error = %e, header = %name, "cannot add the greylist header");
        }
        Ok(Status::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_only_what_it_uses() {
        let o = options();
        assert_eq!(o.stages, Stages::CONNECT | Stages::MAIL | Stages::RCPT);
        assert_eq!(o.no_reply, Stages::CONNECT);
        assert_eq!(o.actions, Actions::ADD_HEADERS);
        assert!(
            o.macros
                .iter()
                .any(|(s, m)| *s == MacroStage::Mail && m.contains("{auth_authen}"))
        );
    }

    #[test]
    fn tempfail_reply_is_451_471() {
        let r = crate::engine::SmtpReply {
            code: 451,
            status: "4.7.1".into(),
            text: "Greylisted, 100% sure".into(),
        };
        match tempfail_status(&r) {
            Status::Reply(r) => {
                assert_eq!(r.code(), 451);
                let b = String::from_utf8_lossy(r.as_bytes()).into_owned();
                assert!(b.starts_with("451 4.7.1 Greylisted"), "{b}");
            }
            other => panic!("{other:?}"),
        }
    }
}
