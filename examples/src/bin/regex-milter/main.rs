//! `regex-milter`: accepts, rejects, tempfails, discards or quarantines mail
//! by regular expression rules, reading the rule files of OpenBSD's
//! milter-regex unchanged.
//!
//! ```text
//! regex-milter --rules /etc/regex-milter.conf --listen unix:/run/regex.sock --socket-mode 666
//! regex-milter --rules /etc/regex-milter.conf --check
//! kill -HUP <pid>        # reload the rule file
//! ```
//!
//! # How this file is built (copy it to write your own milter)
//!
//! The decisions are made by a plain library with no milter code in it
//! ([`rules`]: parser and evaluator, [`posix`]: regex translation), tested
//! with ordinary unit tests. This file is only the *glue*, in four parts:
//!
//! 1. the command line ([`Cli`]);
//! 2. [`options_for`]: what to ask the MTA for at negotiation. Only the
//!    stages the rules look at are requested, so with body-only rules the MTA
//!    sends no HELO, MAIL, RCPT or header packets at all;
//! 3. the [`Milter`] implementation ([`RegexMilter`]): every callback feeds
//!    what the MTA reports into the evaluator and then asks it whether a
//!    decision is known yet ([`answer`] turns that into a milter [`Status`]);
//! 4. `main`: load the rules, reload them on SIGHUP, serve until SIGTERM.
//!
//! State has three lifetimes, and each lives in its own place:
//!
//! * process: the current rule set, in an `Arc<SharedRules>` that the
//!   factory closure and the SIGHUP task share;
//! * connection: a [`RegexMilter`], made by the factory for every MTA
//!   connection, holding what CONNECT and HELO matched;
//! * message: [`Milter::Message`], here a copy of the connection's
//!   evaluator made when the message starts. The server drops it at the end
//!   of the message, at ABORT or after a decision, so nothing one message
//!   matched can leak into the next.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use milter_examples::{ListenArgs, init_logging, serve};
use milter_proto::{
    Actions, Connect, ConnectAddress, Envelope, Header, MacroStage, OptNeg, SmtpReply,
};
use milter_server::{BoxError, Context, EomContext, Milter, Options, Stages, Status, async_trait};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

mod posix;
mod rules;

use rules::{Action, CondKind, Evaluator, LoadError, Rule, RuleSet, SharedRules, Stage};

// ---------------------------------------------------------------------------
// 1. Command line
// ---------------------------------------------------------------------------

/// Filter mail with milter-regex rules.
#[derive(Debug, Parser)]
#[command(
    name = "regex-milter",
    version,
    about = "Filter mail with milter-regex compatible regular expression rules",
    after_help = "SIGHUP reloads the rule file; a file with errors is refused and the \
                  old rules stay in force. SIGTERM stops after the messages in flight.",
    // `--listen` (from the shared ListenArgs) is not needed for --check.
    mut_arg("listen", |a| a.required(false).required_unless_present("check"))
)]
struct Cli {
    /// Where to listen (required unless --check).
    #[command(flatten)]
    listen: Option<ListenArgs>,

    /// The rule file (milter-regex syntax).
    #[arg(long, short = 'c', value_name = "FILE")]
    rules: PathBuf,

    /// Only parse the rule file, print every error as FILE:LINE:COLUMN:
    /// MESSAGE and exit non-zero if there is any.
    #[arg(long)]
    check: bool,
}

// ---------------------------------------------------------------------------
// 2. Negotiation: ask only for what the rules use
// ---------------------------------------------------------------------------

/// The macros MTAs can send, by the stage at which they are first known
/// (Postfix's `milter_*_macros` and Sendmail's defaults). A `macro`
/// condition's name pattern is matched against these names, and the ones
/// that match are requested at their stage. Others reach the rules only if
/// the MTA is configured to send them anyway.
const KNOWN_MACROS: &[(MacroStage, &[&str])] = &[
    (
        MacroStage::Connect,
        &[
            "j",
            "_",
            "v",
            "{daemon_name}",
            "{daemon_addr}",
            "{daemon_port}",
            "{if_name}",
            "{if_addr}",
            "{client_addr}",
            "{client_name}",
            "{client_port}",
            "{client_ptr}",
            "{client_resolve}",
            "{client_connections}",
        ],
    ),
    (
        MacroStage::Helo,
        &[
            "{tls_version}",
            "{cipher}",
            "{cipher_bits}",
            "{cert_subject}",
            "{cert_issuer}",
        ],
    ),
    (
        MacroStage::Mail,
        &[
            "i",
            "{auth_type}",
            "{auth_authen}",
            "{auth_author}",
            "{auth_ssf}",
            "{mail_addr}",
            "{mail_host}",
            "{mail_mailer}",
        ],
    ),
    (
        MacroStage::Rcpt,
        &["{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
    ),
    // Postfix knows the queue id only from DATA on.
    (MacroStage::Data, &["i"]),
];

/// What to ask the MTA for, given the rules of this connection.
///
/// A stage is requested when some condition looks at its data, when the
/// rules need macros that arrive with it, or (end of headers) when it is
/// where `header` and `macro` conditions become final. End of message is
/// always sent; it is where quarantine happens and where the last decision
/// is made.
fn options_for(rules: &RuleSet) -> Options {
    let mut options = Options::new().actions(Actions::QUARANTINE);
    let mut macro_stages = Stages::empty();
    for (stage, names) in KNOWN_MACROS {
        let wanted: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| rules.wants_macro(n))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        options = options.macros(*stage, &wanted.join(" "));
        macro_stages |= match stage {
            MacroStage::Connect => Stages::CONNECT,
            MacroStage::Helo => Stages::HELO,
            MacroStage::Mail => Stages::MAIL,
            MacroStage::Rcpt => Stages::RCPT,
            _ => Stages::DATA,
        };
    }
    let mut stages = macro_stages;
    for (kind, needed) in [
        (CondKind::Connect, Stages::CONNECT),
        (CondKind::Helo, Stages::HELO),
        (CondKind::EnvFrom, Stages::MAIL),
        (CondKind::EnvRcpt, Stages::RCPT),
        (CondKind::Header, Stages::HEADER | Stages::EOH),
        (CondKind::Macro, Stages::EOH),
        (CondKind::Body, Stages::BODY),
    ] {
        if rules.uses(kind) {
            stages |= needed;
        }
    }
    // DATA only delivers macros; nothing is decided there, so the MTA need
    // not wait for an answer (SMFIP_NR_DATA).
    options.stages(stages).no_reply(stages & Stages::DATA)
}

// ---------------------------------------------------------------------------
// 3. The milter
// ---------------------------------------------------------------------------

/// One per MTA connection.
struct RegexMilter {
    /// The connection-level evaluation: what CONNECT and HELO matched.
    /// Every message starts from a copy of it.
    conn: Evaluator,
}

impl RegexMilter {
    /// The message's evaluator, created from the connection's on first use
    /// (at MAIL, or at the first stage the rules asked for).
    fn message<'m>(&self, msg: &'m mut Option<Evaluator>) -> &'m mut Evaluator {
        msg.get_or_insert_with(|| self.conn.clone())
    }
}

/// Hands the macros the MTA sent to the evaluator (only if a rule looks at
/// macros; milter-regex counts them until the first header).
fn feed_macros(eval: &mut Evaluator, ctx: &Context<'_>) {
    if !eval.rules().uses(CondKind::Macro) {
        return;
    }
    for (name, value) in ctx.macros().iter() {
        eval.macro_value(&text(&name), &text(&value));
    }
}

/// Bytes from the wire as text; invalid UTF-8 becomes U+FFFD.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The milter answer for the evaluator's decision after `stage`, and a log
/// line when there is one. `None` (no rule triggered yet) continues.
///
/// | action       | answer                                                   |
/// |--------------|----------------------------------------------------------|
/// | `reject`     | `554 5.7.1 text` (at RCPT: this recipient only)          |
/// | `tempfail`   | `451 4.7.1 text` (at RCPT: this recipient only)          |
/// | `accept`     | accept (at CONNECT/HELO: the whole connection)           |
/// | `discard`    | discard; MTAs ignore it at CONNECT/HELO, so there the    |
/// |              | decision waits for the first message stage               |
/// | `quarantine` | only at end of message, see [`RegexMilter::eom`]         |
fn answer(ctx: &Context<'_>, stage: Stage, decision: Option<&Rule>) -> Status {
    let Some(rule) = decision else {
        return Status::Continue;
    };
    let action = rule.action();
    let status = match action {
        Action::Accept => Status::Accept,
        Action::Discard if stage <= Stage::Helo => return Status::Continue,
        Action::Discard => Status::Discard,
        Action::Quarantine(_) => return Status::Continue,
        Action::Reject(_) | Action::Tempfail(_) => match action.reply() {
            Some(r) => match SmtpReply::new(r.code, Some(r.enhanced), &r.text) {
                Ok(reply) => Status::Reply(reply),
                // A text no MTA would take (over 980 characters): the
                // MTA's own default reply still refuses.
                Err(e) => {
                    warn!(%e, "reply text unusable; sending a plain refusal");
                    if r.code >= 500 {
                        Status::Reject
                    } else {
                        Status::Tempfail
                    }
                }
            },
            None => Status::Continue,
        },
    };
    info!(
        conn = ctx.connection_id(),
        queue_id = ctx.queue_id().as_deref().unwrap_or("-"),
        ?stage,
        ?action,
        line = rule.line(),
        "rule triggered"
    );
    status
}

#[async_trait]
impl Milter for RegexMilter {
    /// The message's evaluator (`None` until the message's first callback).
    type Message = Option<Evaluator>;

    async fn negotiate(&mut self, _offer: &OptNeg) -> Result<Options, BoxError> {
        Ok(options_for(self.conn.rules()))
    }

    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        // milter-regex matches the address as text, "unknown" for clients
        // that did not come over IP.
        let addr = match &client.address {
            ConnectAddress::Inet(sa) => sa.ip().to_string(),
            _ => "unknown".to_string(),
        };
        self.conn.connect(&text(&client.hostname), &addr);
        feed_macros(&mut self.conn, ctx);
        Ok(answer(
            ctx,
            Stage::Connect,
            self.conn.rule_at(Stage::Connect),
        ))
    }

    async fn helo(&mut self, ctx: &Context<'_>, name: &Bytes) -> Result<Status, BoxError> {
        self.conn.helo(&text(name));
        feed_macros(&mut self.conn, ctx);
        Ok(answer(ctx, Stage::Helo, self.conn.rule_at(Stage::Helo)))
    }

    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Option<Evaluator>,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        let eval = self.message(msg);
        eval.envfrom(&text(&from.address));
        feed_macros(eval, ctx);
        Ok(answer(ctx, Stage::EnvFrom, eval.rule_at(Stage::EnvFrom)))
    }

    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Option<Evaluator>,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        let eval = self.message(msg);
        eval.envrcpt(&text(&rcpt.address));
        feed_macros(eval, ctx);
        Ok(answer(ctx, Stage::EnvRcpt, eval.rule_at(Stage::EnvRcpt)))
    }

    /// Only requested for macros that arrive with DATA (no reply is sent).
    async fn data(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Option<Evaluator>,
    ) -> Result<Status, BoxError> {
        feed_macros(self.message(msg), ctx);
        Ok(Status::Continue)
    }

    async fn header(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Option<Evaluator>,
        header: &Header,
    ) -> Result<Status, BoxError> {
        let eval = self.message(msg);
        eval.header(&text(&header.name), &text(&header.value));
        Ok(answer(ctx, Stage::Header, eval.rule_at(Stage::Header)))
    }

    async fn eoh(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Option<Evaluator>,
    ) -> Result<Status, BoxError> {
        let eval = self.message(msg);
        eval.eoh();
        Ok(answer(ctx, Stage::Eoh, eval.rule_at(Stage::Eoh)))
    }

    async fn body(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Option<Evaluator>,
        chunk: &Bytes,
    ) -> Result<Status, BoxError> {
        let eval = self.message(msg);
        eval.body(chunk);
        Ok(answer(ctx, Stage::Body, eval.rule_at(Stage::Body)))
    }

    /// Everything is final here. Quarantine is a modification, so it can
    /// only happen now; the message is then accepted into the hold queue.
    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut Option<Evaluator>,
    ) -> Result<Status, BoxError> {
        let eval = self.message(msg);
        eval.eom();
        let decision = eval.rule_at(Stage::Eom);
        if let Some(rule) = decision
            && let Action::Quarantine(reason) = rule.action()
        {
            info!(
                conn = ctx.connection_id(),
                queue_id = ctx.queue_id().as_deref().unwrap_or("-"),
                reason,
                line = rule.line(),
                "rule triggered: quarantine"
            );
            ctx.quarantine(reason)?;
            return Ok(Status::Continue);
        }
        Ok(answer(ctx, Stage::Eom, decision))
    }
}

// ---------------------------------------------------------------------------
// 4. main: load, reload on SIGHUP, serve
// ---------------------------------------------------------------------------

/// Prints why a rule file cannot be used: every error as
/// `FILE:LINE:COLUMN: message`, or the I/O error.
fn report(e: &LoadError) {
    match e {
        LoadError::Rules { path, errors } => {
            for e in errors {
                error!("{path}:{}:{}: {}", e.line, e.column, e.kind);
            }
        }
        LoadError::Io { .. } => error!("{e}"),
    }
}

/// Reloads the rule file on every SIGHUP. A file with errors is refused
/// (the errors are logged) and the old rules stay; connections opened after
/// a successful reload use the new rules, open ones keep theirs.
async fn reload_on_hangup(mut hangup: Signal, shared: Arc<SharedRules>, path: PathBuf) {
    while hangup.recv().await.is_some() {
        match shared.reload(&path) {
            Ok(n) => info!(rules = n, file = %path.display(), "rules reloaded"),
            Err(e) => {
                report(&e);
                warn!(file = %path.display(), "reload refused, keeping the previous rules");
            }
        }
    }
}

/// `--check`: every error, or a one-line summary on stdout.
fn check(path: &Path) -> ExitCode {
    match RuleSet::load(path) {
        Ok(set) => {
            println!(
                "{}: OK, {} rule(s), decided by the {:?} stage at the latest",
                path.display(),
                set.rules().len(),
                set.decided_by_all()
            );
            ExitCode::SUCCESS
        }
        Err(LoadError::Rules { path, errors }) => {
            for e in &errors {
                eprintln!("{path}:{}:{}: {}", e.line, e.column, e.kind);
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("regex-milter: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check {
        return check(&cli.rules);
    }
    let Some(listen) = cli.listen else {
        // Not reached: clap requires --listen without --check.
        eprintln!("regex-milter: --listen SPEC is required");
        return ExitCode::from(2);
    };
    init_logging();

    // Refuse to start with a broken rule file: the errors name the lines.
    let rules = match RuleSet::load(&cli.rules) {
        Ok(rules) => rules,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    info!(rules = rules.rules().len(), file = %cli.rules.display(), "rules loaded");
    let shared = Arc::new(SharedRules::new(rules));
    // Install the SIGHUP handler before listening: from the first
    // connection on, a SIGHUP reloads instead of killing the process.
    let hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            error!(%e, "cannot handle SIGHUP");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(reload_on_hangup(
        hangup,
        Arc::clone(&shared),
        cli.rules.clone(),
    ));

    // One RegexMilter per MTA connection, with the rules current right now.
    let factory = move || RegexMilter {
        conn: Evaluator::new(shared.current()),
    };
    match serve(&listen, factory).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
