//! rewrite: modifies each message as the message itself asks, in its own
//! `X-Test-Action` headers — every modification and every kind of reply a
//! milter can make, from one binary, so that tests can check them through a
//! real MTA.
//!
//! ```text
//! rewrite --listen unix:/tmp/rewrite.sock --socket-mode 666
//! ```
//!
//! One action per header, applied at end of message in header order:
//!
//! | `X-Test-Action:` value | what the milter does |
//! |---|---|
//! | `add-header [NAME [VALUE]]` | appends `NAME: VALUE` (default `X-Rewrite-Added: yes`) |
//! | `insert-header [NAME [VALUE]]` | inserts it at the top (default `X-Rewrite-Inserted: top`) |
//! | `change-header NAME [VALUE]` | sets the first `NAME` header to VALUE (default `rewritten`) |
//! | `delete-header NAME` | deletes the first `NAME` header |
//! | `replace-body [TEXT]` | replaces the body with TEXT and CRLF (default `Body replaced by rewrite.`) |
//! | `add-rcpt ADDR` | adds a recipient |
//! | `add-rcpt-par ADDR ARGS...` | adds a recipient with ESMTP arguments (`NOTIFY=NEVER`) |
//! | `delete-rcpt ADDR` | removes a recipient, written as the MTA sent it (`<b@example.com>`) |
//! | `change-from ADDR [ARGS...]` | changes the envelope sender |
//! | `quarantine REASON...` | puts the message on hold with this reason |
//! | `reject` / `tempfail` / `discard` | the MTA's default 5xx / 4xx reply, or drop the message |
//! | `reply CODE [X.Y.Z] TEXT...` | rejects or tempfails with this reply (`reply 550 5.7.1 no thanks`) |
//! | `multiline-reply [CODE [X.Y.Z]]` | a three-line reply (default `550 5.7.1`) |
//!
//! The first decision (`reject` ... `multiline-reply`) ends the list. A
//! value that is not understood is logged and skipped.

use clap::Parser;
use milter_examples::{ListenArgs, init_logging, serve};
use milter_proto::{Actions, Header, OptNeg, SmtpReply};
use milter_server::{BoxError, Context, EomContext, Milter, Options, Stages, Status, async_trait};
use tracing::{info, warn};

/// Command line.
#[derive(Parser)]
#[command(about = "A milter that modifies each message as its X-Test-Action headers ask")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
}

/// The header that carries the actions.
const ACTION_HEADER: &str = "X-Test-Action";

/// Every action this milter may use. Postfix and Sendmail offer them all;
/// a test MTA offering fewer gets only those (see `negotiate`).
const WANTED: Actions = Actions::ADD_HEADERS
    .union(Actions::CHANGE_HEADERS)
    .union(Actions::CHANGE_BODY)
    .union(Actions::ADD_RCPT)
    .union(Actions::ADD_RCPT_PAR)
    .union(Actions::DELETE_RCPT)
    .union(Actions::CHANGE_FROM)
    .union(Actions::QUARANTINE);

/// Per message: the action lines, in the order the headers came.
#[derive(Default)]
struct Wanted {
    actions: Vec<String>,
}

struct Rewrite;

#[async_trait]
impl Milter for Rewrite {
    type Message = Wanted;

    /// Only the headers are needed to decide; everything else is
    /// negotiated away. The actions are what the MTA offers of `WANTED`:
    /// asking for one it does not offer would end the session.
    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new()
            .actions(offer.actions & WANTED)
            .stages(Stages::HEADER))
    }

    /// Collects `X-Test-Action` values (the MTA strips the space after the colon).
    async fn header(
        &mut self,
        _: &Context<'_>,
        msg: &mut Wanted,
        header: &Header,
    ) -> Result<Status, BoxError> {
        if header.name.eq_ignore_ascii_case(ACTION_HEADER.as_bytes()) {
            let value = String::from_utf8_lossy(&header.value).trim().to_string();
            msg.actions.push(value);
        }
        Ok(Status::Continue)
    }

    /// Applies the actions. A modification the MTA did not allow returns
    /// an error, which the server answers with its failure policy (tempfail).
    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut Wanted,
    ) -> Result<Status, BoxError> {
        let queue_id = ctx.queue_id().unwrap_or_else(|| "-".into());
        for line in &msg.actions {
            info!(queue_id = %queue_id, action = %line, "applying");
            if let Some(decision) = apply(ctx, line)? {
                return Ok(decision);
            }
        }
        Ok(Status::Continue)
    }
}

/// Applies one action line; returns the decision if it is one.
fn apply(ctx: &mut EomContext<'_>, line: &str) -> Result<Option<Status>, BoxError> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default().to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    // The first argument, the second, and everything from the second on.
    let arg = |i: usize| args.get(i).copied();
    let rest = |i: usize| args.get(i..).map(|a| a.join(" ")).filter(|s| !s.is_empty());

    match (verb.as_str(), arg(0)) {
        ("add-header", name) => {
            let value = rest(1).unwrap_or_else(|| "yes".into());
            ctx.add_header(name.unwrap_or("X-Rewrite-Added"), &value)?;
        }
        ("insert-header", name) => {
            let value = rest(1).unwrap_or_else(|| "top".into());
            ctx.insert_header(0, name.unwrap_or("X-Rewrite-Inserted"), &value)?;
        }
        ("change-header", Some(name)) => {
            let value = rest(1).unwrap_or_else(|| "rewritten".into());
            ctx.change_header(name, 1, &value)?;
        }
        ("delete-header", Some(name)) => ctx.delete_header(name, 1)?,
        ("replace-body", _) => {
            let text = rest(0).unwrap_or_else(|| "Body replaced by rewrite.".into());
            ctx.replace_body(format!("{text}\r\n").as_bytes())?;
        }
        ("add-rcpt", Some(addr)) => ctx.add_rcpt(addr)?,
        ("add-rcpt-par", Some(addr)) => ctx.add_rcpt_with_args(addr, rest(1).as_deref())?,
        ("delete-rcpt", Some(addr)) => ctx.delete_rcpt(addr)?,
        ("change-from", Some(addr)) => ctx.change_from(addr, rest(1).as_deref())?,
        ("quarantine", _) => {
            ctx.quarantine(&rest(0).unwrap_or_else(|| "rewrite test".into()))?;
        }
        ("reject", _) => return Ok(Some(Status::Reject)),
        ("tempfail", _) => return Ok(Some(Status::Tempfail)),
        ("discard", _) => return Ok(Some(Status::Discard)),
        ("reply", Some(code)) => {
            let code: u16 = code.parse()?;
            // An enhanced code is optional: "reply 550 text" works too.
            let (enhanced, text) = match arg(1) {
                Some(x) if x.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                    (Some(x), rest(2))
                }
                _ => (None, rest(1)),
            };
            let text = text.unwrap_or_else(|| "rewrite says no".into());
            return Ok(Some(Status::Reply(SmtpReply::new(code, enhanced, &text)?)));
        }
        ("multiline-reply", code) => {
            let code: u16 = code.unwrap_or("550").parse()?;
            let default = if code >= 500 { "5.7.1" } else { "4.7.1" };
            let lines = ["rewrite line one", "rewrite line two", "rewrite line three"];
            let reply = SmtpReply::multiline(code, Some(arg(1).unwrap_or(default)), &lines)?;
            return Ok(Some(Status::Reply(reply)));
        }
        _ => warn!(action = %line, "not understood; skipped"),
    }
    Ok(None)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    serve(&args.listen, || Rewrite).await
}
