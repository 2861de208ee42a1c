//! The rules engine of `regex-milter`: a parser for milter-regex rule files
//! and an evaluator that decides, stage by stage, what to do with a message.
//!
//! This module knows nothing about sockets or the milter protocol. The milter
//! glue feeds it what the MTA reports (client host, HELO name, envelope,
//! headers, body) and asks after every stage whether a decision is known.
//! That split keeps the logic testable with plain unit tests, and it is the
//! shape to copy when writing your own filter.
//!
//! # The rule file
//!
//! The syntax is the one of OpenBSD's milter-regex (Daniel Hartmeier). A rule
//! is an *action* followed by one or more *expressions*; if any of the
//! expressions becomes true, the action is taken:
//!
//! ```text
//! # reject mail with zip attachments
//! reject "Sorry, we do not accept ZIP archives anymore"
//! body /^(Content-Type: [^;]*; | )name=".*\.zip"/ie
//! body /^(Content-Disposition: attachment; | )filename=".*\.zip"/ie
//!
//! tempfail "Try again later"
//! helo /^localhost$/ and not connect /./ /^127\./
//! ```
//!
//! * Actions: `reject "text"` (`554 5.7.1 text`), `tempfail "text"`
//!   (`451 4.7.1 text`), `quarantine "text"`, `discard`, `accept`. The text may
//!   be quoted with `"` or `'`.
//! * Conditions: `connect /host/ /addr/`, `helo /name/`, `envfrom /sender/`,
//!   `envrcpt /recipient/`, `header /name/ /value/`, `body /line/`,
//!   `macro /name/ /value/`. A condition with two patterns is true when both
//!   match the same event (the same header, the same macro).
//! * Expressions: conditions joined with `and`, `or`, `not` and parentheses.
//!   As in milter-regex, `and` and `or` have the *same* precedence and group to
//!   the right: `A and B or C` means `A and (B or C)`. Write parentheses when
//!   mixing them.
//! * Named expressions (milter-regex macros): `name = expression` defines,
//!   `$name` uses.
//! * Patterns: any delimiter character (`/re/`, `,re,`, `|re|`); the
//!   delimiter inside the pattern is written `\/` (and then means the literal
//!   character). Flags after the closing delimiter: `e` (POSIX *extended*
//!   syntax; without it the pattern is a POSIX *basic* regular expression),
//!   `i` (ignore case), `n` (the pattern must *not* match). An empty pattern
//!   `//` matches everything.
//! * Layout: `#` starts a comment, newlines are ordinary white space (so an
//!   expression may continue on the next line) and a backslash at the end of
//!   a line joins it with the next one.
//!
//! # Evaluation
//!
//! Every condition starts *undecided*. It becomes *true* when an event of its
//! kind matches (any header, any body line, ...) and *false* when its stage is
//! over without a match. Expressions use three-valued logic, so `not body /x/`
//! stays undecided until the end of the message, while
//! `helo /x/ or body /y/` is true as soon as the HELO name matches. After each
//! stage, [`Evaluator::decision_at`] returns the action of the first rule (in
//! file order) that is true, if any — exactly when milter-regex would reply.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use regex::{Regex, RegexBuilder};

use crate::posix::{self, Flavor, PatChar};

/// Longest body line handed to `body` conditions; longer lines are split
/// (milter-regex uses the same limit). This bounds the per-message buffer.
pub(crate) const MAX_BODY_LINE: usize = 8192;

/// Deepest nesting of `not`, parentheses and `and`/`or` chains accepted, so
/// that a hostile rule file cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Largest number of nodes in one expression after expanding `$name`s, so
/// that nested named expressions cannot blow up exponentially.
const MAX_NODES: usize = 10_000;

/// Largest compiled regular expression accepted (bytes of program).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Public vocabulary: stages, actions, replies
// ---------------------------------------------------------------------------

/// The points in an SMTP transaction at which the milter learns something,
/// in protocol order. A decision "at" a stage is made once that stage's data
/// is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Stage {
    /// Client connected (`xxfi_connect`): host name and address known.
    Connect,
    /// HELO/EHLO (`xxfi_helo`).
    Helo,
    /// MAIL FROM (`xxfi_envfrom`): a new message starts.
    EnvFrom,
    /// One RCPT TO (`xxfi_envrcpt`); a decision here concerns this recipient.
    EnvRcpt,
    /// The first header (`xxfi_header`); from here on macros are final.
    Header,
    /// End of headers (`xxfi_eoh`): header conditions are final.
    Eoh,
    /// A body chunk (`xxfi_body`).
    Body,
    /// End of message (`xxfi_eom`): everything is final.
    Eom,
}

/// What a rule does when it triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Refuse permanently with `554 5.7.1 <text>`.
    Reject(String),
    /// Refuse temporarily with `451 4.7.1 <text>`.
    Tempfail(String),
    /// Accept the message and silently drop it.
    Discard,
    /// Put the message on hold (`smfi_quarantine`) with the given reason.
    /// Only possible at end of message, so it is only reported there.
    Quarantine(String),
    /// Accept without looking further.
    Accept,
}

/// An SMTP reply the milter asks the MTA to send (`smfi_setreply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Basic SMTP code, e.g. 554.
    pub(crate) code: u16,
    /// Enhanced status code (RFC 3463), e.g. `5.7.1`.
    pub(crate) enhanced: &'static str,
    /// Human readable text from the rule file.
    pub(crate) text: String,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

impl Action {
    /// The reply milter-regex sends for this action, if it sends one.
    pub(crate) fn reply(&self) -> Option<Reply> {
        match self {
            Action::Reject(text) => Some(Reply {
                code: 554,
                enhanced: "5.7.1",
                text: text.clone(),
            }),
            Action::Tempfail(text) => Some(Reply {
                code: 451,
                enhanced: "4.7.1",
                text: text.clone(),
            }),
            _ => None,
        }
    }

    /// Whether the action refuses (rejects or tempfails) what it applies to.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Action::Reject(_) | Action::Tempfail(_))
    }

    fn keyword(&self) -> &'static str {
        match self {
            Action::Reject(_) => "reject",
            Action::Tempfail(_) => "tempfail",
            Action::Discard => "discard",
            Action::Quarantine(_) => "quarantine",
            Action::Accept => "accept",
        }
    }
}

/// The kinds of conditions, named after their rule-file keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CondKind {
    /// `connect /host/ /addr/`
    Connect,
    /// `helo /name/`
    Helo,
    /// `envfrom /sender/`
    EnvFrom,
    /// `envrcpt /recipient/`
    EnvRcpt,
    /// `macro /name/ /value/`
    Macro,
    /// `header /name/ /value/`
    Header,
    /// `body /line/`
    Body,
}

impl CondKind {
    /// The stage after which a condition of this kind can no longer become
    /// true (and so is false if it has not matched).
    pub(crate) fn final_stage(self) -> Stage {
        match self {
            CondKind::Connect => Stage::Connect,
            CondKind::Helo => Stage::Helo,
            CondKind::EnvFrom => Stage::EnvFrom,
            CondKind::EnvRcpt => Stage::EnvRcpt,
            CondKind::Macro => Stage::Header,
            CondKind::Header => Stage::Eoh,
            CondKind::Body => Stage::Eom,
        }
    }

    fn from_keyword(word: &str) -> Option<(CondKind, usize)> {
        Some(match word {
            "connect" => (CondKind::Connect, 2),
            "helo" => (CondKind::Helo, 1),
            "envfrom" => (CondKind::EnvFrom, 1),
            "envrcpt" => (CondKind::EnvRcpt, 1),
            "macro" => (CondKind::Macro, 2),
            "header" => (CondKind::Header, 2),
            "body" => (CondKind::Body, 1),
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What is wrong at one place of a rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RuleErrorKind {
    /// A quoted string does not end on its line.
    #[error("unterminated string")]
    UnterminatedString,
    /// A pattern does not end on its line.
    #[error("unterminated regular expression (missing closing `{delimiter}`)")]
    UnterminatedRegex {
        /// The delimiter that was expected.
        delimiter: char,
    },
    /// A word that is neither a keyword nor a named expression definition.
    #[error("unknown keyword `{0}`")]
    UnknownKeyword(String),
    /// The pattern does not compile.
    #[error("bad regular expression {pattern}: {message}")]
    BadRegex {
        /// The pattern as written in the file.
        pattern: String,
        /// Why: the regex crate's message, or what POSIX feature is missing.
        message: String,
    },
    /// An action that is not followed by any condition.
    #[error("`{action}` is not followed by any condition")]
    MissingCondition {
        /// The action keyword.
        action: &'static str,
    },
    /// A condition with no action before it.
    #[error("condition without an action before it")]
    MissingAction,
    /// A `(` without `)` or the other way round.
    #[error("unbalanced parentheses: {0}")]
    UnbalancedParentheses(&'static str),
    /// A flag other than `e`, `i`, `n` after a pattern.
    #[error("unknown flag `{0}` (expected e, i or n)")]
    UnknownFlag(char),
    /// `//i`: flags on an empty pattern mean nothing.
    #[error("empty regular expression with flags")]
    EmptyRegexWithFlags,
    /// An action that needs its reply text.
    #[error("`{0}` needs a quoted text")]
    ExpectedString(&'static str),
    /// A condition keyword not followed by enough patterns.
    #[error("`{0}` needs a regular expression here")]
    ExpectedRegex(&'static str),
    /// Something that does not fit the grammar here.
    #[error("unexpected {0}")]
    Unexpected(String),
    /// `$name` that was never defined.
    #[error("undefined expression `${0}`")]
    UndefinedName(String),
    /// `name = ...` twice.
    #[error("expression `{0}` is already defined")]
    DuplicateName(String),
    /// Nesting beyond [`MAX_DEPTH`] or size beyond [`MAX_NODES`].
    #[error("expression nested too deeply or too large")]
    TooComplex,
}

/// One error in a rule file, with its position (1-based line and column,
/// the column counted in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {kind}")]
pub(crate) struct RuleError {
    /// Line of the offending token.
    pub(crate) line: usize,
    /// Column of the offending token.
    pub(crate) column: usize,
    /// What is wrong.
    pub(crate) kind: RuleErrorKind,
}

/// Why a rule file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but has errors (all of them are listed).
    #[error("{path}: {} error(s) in rule file", errors.len())]
    Rules {
        /// The file.
        path: String,
        /// Every error found.
        errors: Vec<RuleError>,
    },
}

// ---------------------------------------------------------------------------
// The compiled rule set
// ---------------------------------------------------------------------------

/// One pattern of a condition, compiled.
#[derive(Debug, Clone)]
struct Pattern {
    /// `None` for the empty pattern `//`, which matches anything.
    regex: Option<Regex>,
    /// The `n` flag: the condition requires that the pattern does not match.
    negate: bool,
}

impl Pattern {
    fn matches(&self, text: &str) -> bool {
        match &self.regex {
            None => true,
            Some(re) => re.is_match(text) != self.negate,
        }
    }
}

/// A condition: a kind and one or two patterns.
#[derive(Debug, Clone)]
struct Condition {
    kind: CondKind,
    first: Pattern,
    second: Option<Pattern>,
}

impl Condition {
    fn matches(&self, a: &str, b: &str) -> bool {
        self.first.matches(a) && self.second.as_ref().is_none_or(|p| p.matches(b))
    }
}

/// A boolean expression over conditions (indices into `RuleSet::conds`).
///
/// Chains of the same operator are kept flat (`a or b or c` is one `Any`
/// with three members), so long chains do not make deep trees.
#[derive(Debug, Clone)]
enum Expr {
    Cond(usize),
    Not(Box<Expr>),
    /// True when every member is true (`and`).
    All(Vec<Expr>),
    /// True when some member is true (`or`).
    Any(Vec<Expr>),
}

impl Expr {
    fn nodes(&self) -> usize {
        match self {
            Expr::Cond(_) => 1,
            Expr::Not(e) => 1 + e.nodes(),
            Expr::All(v) | Expr::Any(v) => 1 + v.iter().map(Expr::nodes).sum::<usize>(),
        }
    }

    fn depth(&self) -> usize {
        match self {
            Expr::Cond(_) => 1,
            Expr::Not(e) => 1 + e.depth(),
            Expr::All(v) | Expr::Any(v) => 1 + v.iter().map(Expr::depth).max().unwrap_or(0),
        }
    }

    /// The latest `final_stage` among the conditions used.
    fn decided_by(&self, conds: &[Condition]) -> Stage {
        match self {
            Expr::Cond(i) => conds
                .get(*i)
                .map_or(Stage::Connect, |c| c.kind.final_stage()),
            Expr::Not(e) => e.decided_by(conds),
            Expr::All(v) | Expr::Any(v) => v
                .iter()
                .map(|e| e.decided_by(conds))
                .max()
                .unwrap_or(Stage::Connect),
        }
    }

    /// Three-valued evaluation: `None` is "not decided yet".
    fn eval(&self, cond: &dyn Fn(usize) -> Option<bool>) -> Option<bool> {
        match self {
            Expr::Cond(i) => cond(*i),
            Expr::Not(e) => e.eval(cond).map(|v| !v),
            // false if any member is false, true if all are true, else unknown
            Expr::All(v) => {
                let mut result = Some(true);
                for e in v {
                    match e.eval(cond) {
                        Some(false) => return Some(false),
                        None => result = None,
                        Some(true) => {}
                    }
                }
                result
            }
            // true if any member is true, false if all are false, else unknown
            Expr::Any(v) => {
                let mut result = Some(false);
                for e in v {
                    match e.eval(cond) {
                        Some(true) => return Some(true),
                        None => result = None,
                        Some(false) => {}
                    }
                }
                result
            }
        }
    }
}

/// One rule: an action and the expressions (OR-ed) that trigger it.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    action: Action,
    exprs: Vec<Expr>,
    line: usize,
}

impl Rule {
    /// The action taken when the rule triggers.
    pub(crate) fn action(&self) -> &Action {
        &self.action
    }

    /// The line of the action in the rule file.
    pub(crate) fn line(&self) -> usize {
        self.line
    }
}

/// A parsed, compiled rule file. Immutable and cheap to share in an [`Arc`]:
/// every connection evaluates against the rule set that was current when it
/// started, and a reload simply swaps in a new one (see [`SharedRules`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSet {
    rules: Vec<Rule>,
    conds: Vec<Condition>,
}

impl RuleSet {
    /// Parse a rule file. Either every rule compiles, or the result lists
    /// every error found (the parser resynchronises at the next line), so an
    /// operator can fix them all in one go.
    pub(crate) fn parse(text: &str) -> Result<RuleSet, Vec<RuleError>> {
        Parser::new(text).parse()
    }

    /// Read and parse a rule file.
    pub(crate) fn load(path: &Path) -> Result<RuleSet, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        RuleSet::parse(&text).map_err(|errors| LoadError::Rules {
            path: path.display().to_string(),
            errors,
        })
    }

    /// The rules in file order.
    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule looks at conditions of this kind. The milter glue uses
    /// this to skip stages nobody needs (e.g. not ask for the body at all).
    pub(crate) fn uses(&self, kind: CondKind) -> bool {
        self.conds.iter().any(|c| c.kind == kind)
    }

    /// Whether some `macro` condition's name pattern matches `name` (e.g.
    /// `{auth_authen}`). The milter asks the MTA for the macros that do.
    pub(crate) fn wants_macro(&self, name: &str) -> bool {
        self.conds
            .iter()
            .any(|c| c.kind == CondKind::Macro && c.first.matches(name))
    }

    /// The stage by which the outcome of `rule` is always known: the latest
    /// stage any of its conditions depends on. A rule using only `connect`
    /// and `helo` is decided at [`Stage::Helo`]; one with `body` (or
    /// `not body`) only at [`Stage::Eom`]. A rule can *trigger* earlier when a
    /// condition matches early (`helo /x/ or body /y/` triggers at HELO if the
    /// name matches).
    pub(crate) fn decided_by(&self, rule: &Rule) -> Stage {
        rule.exprs
            .iter()
            .map(|e| e.decided_by(&self.conds))
            .max()
            .unwrap_or(Stage::Connect)
    }

    /// The latest stage any rule depends on: after it, no rule can change its
    /// mind and the milter can accept the rest of the transaction unseen.
    pub(crate) fn decided_by_all(&self) -> Stage {
        self.rules
            .iter()
            .map(|r| self.decided_by(r))
            .max()
            .unwrap_or(Stage::Connect)
    }
}

/// The current rule set of a running milter, replaceable at run time.
///
/// On SIGHUP the binary calls [`SharedRules::reload`]: the new file is parsed
/// first and only swapped in when it has no error, so a typo never leaves the
/// milter without rules. Connections in progress keep the `Arc<RuleSet>` they
/// started with.
#[derive(Debug)]
pub(crate) struct SharedRules {
    current: RwLock<Arc<RuleSet>>,
}

impl SharedRules {
    /// Start with `rules`.
    pub(crate) fn new(rules: RuleSet) -> Self {
        Self {
            current: RwLock::new(Arc::new(rules)),
        }
    }

    /// The rule set new connections should use.
    pub(crate) fn current(&self) -> Arc<RuleSet> {
        // A poisoned lock only means a writer panicked while swapping an Arc;
        // the Arc inside is still valid, so keep serving it.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Parse `path`; on success replace the current rules and return how many
    /// rules were loaded, on error keep the old rules and return the error.
    pub(crate) fn reload(&self, path: &Path) -> Result<usize, LoadError> {
        let new = RuleSet::load(path)?;
        let count = new.rules.len();
        let new = Arc::new(new);
        match self.current.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        Ok(count)
    }
}

// ---------------------------------------------------------------------------
// The evaluator
// ---------------------------------------------------------------------------

/// The evaluation state of one SMTP connection.
///
/// Create one per connection with [`Evaluator::new`], feed it each stage's
/// data, then ask [`Evaluator::decision_at`] for that stage:
///
/// ```text
/// connect(host, addr)   -> decision_at(Stage::Connect)
/// helo(name)            -> decision_at(Stage::Helo)
/// envfrom(sender)       -> decision_at(Stage::EnvFrom)    (starts a new message)
/// envrcpt(rcpt)         -> decision_at(Stage::EnvRcpt)    (once per recipient)
/// header(name, value)   -> decision_at(Stage::Header)     (once per header)
/// eoh()                 -> decision_at(Stage::Eoh)
/// body(chunk)           -> decision_at(Stage::Body)       (once per chunk)
/// eom()                 -> decision_at(Stage::Eom)
/// ```
///
/// Macros (`macro_value`) may be supplied at any stage before the headers.
///
/// Recipients: at [`Stage::EnvRcpt`] `envrcpt` conditions look at the current
/// recipient only, so a rule rejects just the recipients that match. From the
/// headers on, an `envrcpt` condition is true if it matched any recipient that
/// the rules did not refuse. (milter-regex itself keeps only the last
/// recipient's result; this is a deliberate improvement.)
#[derive(Debug, Clone)]
pub(crate) struct Evaluator {
    rules: Arc<RuleSet>,
    /// Connection-level matches (connect, helo, macros seen before MAIL).
    conn: Vec<bool>,
    /// Message-level matches (envfrom, header, body, macros from MAIL on).
    msg: Vec<bool>,
    /// `envrcpt` matches of the current recipient.
    rcpt_current: Vec<bool>,
    /// `envrcpt` matches of the earlier, not refused, recipients.
    rcpt_accepted: Vec<bool>,
    has_current_rcpt: bool,
    /// True once MAIL FROM was seen (macros then count for the message).
    in_message: bool,
    /// Incomplete body line carried between chunks.
    partial_line: Vec<u8>,
}

impl Evaluator {
    /// Start evaluating a connection against `rules`.
    pub(crate) fn new(rules: Arc<RuleSet>) -> Self {
        let n = rules.conds.len();
        Self {
            rules,
            conn: vec![false; n],
            msg: vec![false; n],
            rcpt_current: vec![false; n],
            rcpt_accepted: vec![false; n],
            has_current_rcpt: false,
            in_message: false,
            partial_line: Vec::new(),
        }
    }

    /// The rule set this connection is evaluated against.
    pub(crate) fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Mark every not yet matched condition of `kind` that matches `(a, b)`.
    fn observe(&mut self, kind: CondKind, a: &str, b: &str) {
        let rules = Arc::clone(&self.rules);
        let target = match kind {
            CondKind::Connect | CondKind::Helo => &mut self.conn,
            CondKind::Macro if !self.in_message => &mut self.conn,
            CondKind::EnvRcpt => &mut self.rcpt_current,
            _ => &mut self.msg,
        };
        for (cond, seen) in rules.conds.iter().zip(target.iter_mut()) {
            // Once true, a condition stays true for the message: skip it,
            // which also keeps long bodies cheap.
            if cond.kind == kind && !*seen && cond.matches(a, b) {
                *seen = true;
            }
        }
    }

    fn clear(&mut self, kind: CondKind) {
        let rules = Arc::clone(&self.rules);
        for (i, cond) in rules.conds.iter().enumerate() {
            if cond.kind == kind {
                for v in [
                    &mut self.conn,
                    &mut self.msg,
                    &mut self.rcpt_current,
                    &mut self.rcpt_accepted,
                ] {
                    if let Some(x) = v.get_mut(i) {
                        *x = false;
                    }
                }
            }
        }
    }

    /// The client connected. `host` is the host name the MTA reports (often
    /// `[1.2.3.4]` when reverse DNS failed), `addr` its address as text
    /// (`unknown` for a non-IP connection, as milter-regex does).
    pub(crate) fn connect(&mut self, host: &str, addr: &str) {
        self.clear(CondKind::Connect);
        self.observe(CondKind::Connect, host, addr);
    }

    /// HELO/EHLO with the given name. A repeated HELO replaces the earlier
    /// one and, like an SMTP RSET, ends any message in progress.
    pub(crate) fn helo(&mut self, name: &str) {
        self.clear(CondKind::Helo);
        self.reset_message();
        self.observe(CondKind::Helo, name, "");
    }

    /// MAIL FROM: starts a new message. `sender` is the address as the MTA
    /// passes it, usually with angle brackets (`<user@example.org>`).
    pub(crate) fn envfrom(&mut self, sender: &str) {
        self.reset_message();
        self.in_message = true;
        self.observe(CondKind::EnvFrom, sender, "");
    }

    /// RCPT TO for one recipient (usually in angle brackets).
    pub(crate) fn envrcpt(&mut self, recipient: &str) {
        self.commit_recipient();
        self.rcpt_current.iter_mut().for_each(|v| *v = false);
        self.has_current_rcpt = true;
        self.observe(CondKind::EnvRcpt, recipient, "");
    }

    /// A macro value (`smfi_getsymval`), e.g. `("{auth_authen}", "alice")`.
    /// Macros count until the first header; later ones are ignored, as in
    /// milter-regex.
    pub(crate) fn macro_value(&mut self, name: &str, value: &str) {
        self.observe(CondKind::Macro, name, value);
    }

    /// One header. Header values may contain folded lines (`\n\t`); patterns
    /// are compiled so that `.` matches a newline as in POSIX.
    pub(crate) fn header(&mut self, name: &str, value: &str) {
        self.commit_recipient();
        self.observe(CondKind::Header, name, value);
    }

    /// End of headers. Nothing to record, but resets the body line buffer.
    pub(crate) fn eoh(&mut self) {
        self.commit_recipient();
        self.partial_line.clear();
    }

    /// A chunk of the body as the MTA sends it (CRLF line ends, arbitrary
    /// split points). Complete lines are matched one by one; an incomplete
    /// one waits for the next chunk or [`Evaluator::eom`].
    pub(crate) fn body(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut self.partial_line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.body_line(&String::from_utf8_lossy(&line));
            } else {
                self.partial_line.push(byte);
                if self.partial_line.len() >= MAX_BODY_LINE {
                    let line = std::mem::take(&mut self.partial_line);
                    self.body_line(&String::from_utf8_lossy(&line));
                }
            }
        }
    }

    /// One body line without its line ending. Bytes that are not UTF-8 are
    /// replaced with U+FFFD before matching.
    pub(crate) fn body_line(&mut self, line: &str) {
        self.commit_recipient();
        self.observe(CondKind::Body, line, "");
    }

    /// End of message: matches a last body line that had no line ending.
    pub(crate) fn eom(&mut self) {
        if !self.partial_line.is_empty() {
            let line = std::mem::take(&mut self.partial_line);
            self.body_line(&String::from_utf8_lossy(&line));
        }
    }

    /// Forget the message in progress (MAIL FROM, RSET, abort, or after the
    /// end of a message). Connection data (connect, HELO) is kept.
    pub(crate) fn reset_message(&mut self) {
        self.msg.iter_mut().for_each(|v| *v = false);
        self.rcpt_current.iter_mut().for_each(|v| *v = false);
        self.rcpt_accepted.iter_mut().for_each(|v| *v = false);
        self.has_current_rcpt = false;
        self.in_message = false;
        self.partial_line.clear();
    }

    /// Fold the current recipient into the message unless the rules refused it.
    fn commit_recipient(&mut self) {
        if !self.has_current_rcpt {
            return;
        }
        let refused = self
            .decide(Stage::EnvRcpt, false)
            .is_some_and(Action::is_refusal);
        if !refused {
            for (acc, cur) in self.rcpt_accepted.iter_mut().zip(&self.rcpt_current) {
                *acc |= *cur;
            }
        }
        self.rcpt_current.iter_mut().for_each(|v| *v = false);
        self.has_current_rcpt = false;
    }

    /// The action decided once `stage` is complete, if any: the action of the
    /// first rule (in file order) whose expression is true. `None` means
    /// "continue": no rule triggered yet.
    ///
    /// [`Action::Quarantine`] is only returned at [`Stage::Eom`], where the
    /// protocol allows it; before, quarantine rules are skipped.
    ///
    /// At [`Stage::Eom`] a `None` is final: the message passes.
    // The binary uses `rule_at` (to log the rule's line); the unit tests and
    // simpler copies of this glue use this.
    #[allow(dead_code)]
    pub(crate) fn decision_at(&self, stage: Stage) -> Option<&Action> {
        self.rule_at(stage).map(Rule::action)
    }

    /// As [`Evaluator::decision_at`], but the rule itself (for its line).
    pub(crate) fn rule_at(&self, stage: Stage) -> Option<&Rule> {
        // Is the pending recipient refused? Needed when looking past RCPT.
        let pending_refused = stage > Stage::EnvRcpt
            && self.has_current_rcpt
            && self
                .decide(Stage::EnvRcpt, false)
                .is_some_and(Action::is_refusal);
        self.decide_rule(stage, pending_refused)
    }

    fn decide(&self, stage: Stage, pending_refused: bool) -> Option<&Action> {
        self.decide_rule(stage, pending_refused).map(Rule::action)
    }

    fn decide_rule(&self, stage: Stage, pending_refused: bool) -> Option<&Rule> {
        let value = |i: usize| self.cond_value(i, stage, pending_refused);
        self.rules
            .rules
            .iter()
            .filter(|r| stage == Stage::Eom || !matches!(r.action, Action::Quarantine(_)))
            .find(|r| r.exprs.iter().any(|e| e.eval(&value) == Some(true)))
    }

    /// Three-valued truth of condition `i` once `stage` is complete.
    fn cond_value(&self, i: usize, stage: Stage, pending_refused: bool) -> Option<bool> {
        let cond = self.rules.conds.get(i)?;
        let at = |v: &Vec<bool>| v.get(i).copied().unwrap_or(false);
        let matched = match cond.kind {
            CondKind::Connect | CondKind::Helo => at(&self.conn),
            CondKind::EnvFrom | CondKind::Header | CondKind::Body => at(&self.msg),
            CondKind::Macro => at(&self.conn) || at(&self.msg),
            CondKind::EnvRcpt if stage == Stage::EnvRcpt => at(&self.rcpt_current),
            CondKind::EnvRcpt => {
                at(&self.rcpt_accepted)
                    || (self.has_current_rcpt && !pending_refused && at(&self.rcpt_current))
            }
        };
        if matched {
            Some(true)
        } else if stage >= cond.kind.final_stage() {
            Some(false)
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

/// A pattern token: `/text/flags`.
#[derive(Debug, Clone)]
struct RegexToken {
    chars: Vec<PatChar>,
    /// Flag letters with their columns.
    flags: Vec<(char, usize)>,
    /// The token as written, for error messages.
    source: String,
}

#[derive(Debug, Clone)]
enum Tok {
    Word(String),
    Str(String),
    Regex(RegexToken),
    LParen,
    RParen,
    Equals,
    Dollar,
    /// Where the lexer found an error (already reported).
    Bad,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Regex(r) => format!("pattern {}", r.source),
            Tok::LParen => "`(`".to_string(),
            Tok::RParen => "`)`".to_string(),
            Tok::Equals => "`=`".to_string(),
            Tok::Dollar => "`$`".to_string(),
            Tok::Bad => "invalid token".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
    /// First token on its line: where the parser resynchronises after errors.
    first_on_line: bool,
}

/// A character with its position, after joining backslash-continued lines.
#[derive(Debug, Clone, Copy)]
struct SrcChar {
    c: char,
    line: usize,
    col: usize,
}

fn source_chars(text: &str) -> Vec<SrcChar> {
    let mut out = Vec::with_capacity(text.len());
    let (mut line, mut col) = (1, 1);
    let mut iter = text.chars().peekable();
    while let Some(c) = iter.next() {
        // `\` + newline joins lines (milter-regex's lgetc does the same).
        if c == '\\' && iter.peek() == Some(&'\n') {
            iter.next();
            line += 1;
            col = 1;
            continue;
        }
        out.push(SrcChar { c, line, col });
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-' || c == '.'
}

fn lex(text: &str, errors: &mut Vec<RuleError>) -> Vec<Token> {
    let src = source_chars(text);
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    let mut last_line = 0;
    let err = |errors: &mut Vec<RuleError>, s: &SrcChar, kind| {
        errors.push(RuleError {
            line: s.line,
            column: s.col,
            kind,
        })
    };
    // Skip to the end of the current line (after a lexical error).
    let skip_line = |i: &mut usize| {
        while src.get(*i).is_some_and(|s| s.c != '\n') {
            *i += 1;
        }
    };
    while let Some(&start) = src.get(i) {
        let c = start.c;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            skip_line(&mut i);
            continue;
        }
        let mut bad = false;
        let tok = if c.is_alphabetic() {
            let mut word = String::new();
            while let Some(s) = src.get(i).filter(|s| is_word_char(s.c)) {
                word.push(s.c);
                i += 1;
            }
            Tok::Word(word)
        } else if c == '"' || c == '\'' {
            i += 1;
            let mut text = String::new();
            loop {
                match src.get(i) {
                    Some(s) if s.c == c => {
                        i += 1;
                        break;
                    }
                    Some(s) if s.c != '\n' => {
                        text.push(s.c);
                        i += 1;
                    }
                    _ => {
                        err(errors, &start, RuleErrorKind::UnterminatedString);
                        bad = true;
                        break;
                    }
                }
            }
            if bad { Tok::Bad } else { Tok::Str(text) }
        } else if c == '(' || c == ')' || c == '=' || c == '$' {
            i += 1;
            match c {
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '=' => Tok::Equals,
                _ => Tok::Dollar,
            }
        } else {
            // Any other character opens a pattern and is its delimiter.
            let delim = c;
            let mut source = String::from(delim);
            let mut chars = Vec::new();
            i += 1;
            let mut closed = false;
            while let Some(s) = src.get(i) {
                if s.c == '\n' {
                    break;
                }
                if s.c == delim {
                    source.push(delim);
                    i += 1;
                    closed = true;
                    break;
                }
                if s.c == '\\' && delim != '\\' {
                    match src.get(i + 1) {
                        Some(n) if n.c == delim => {
                            chars.push(PatChar {
                                c: delim,
                                literal: true,
                            });
                            source.push('\\');
                            source.push(delim);
                            i += 2;
                            continue;
                        }
                        Some(n) if n.c != '\n' => {
                            chars.push(PatChar::raw('\\'));
                            chars.push(PatChar::raw(n.c));
                            source.push('\\');
                            source.push(n.c);
                            i += 2;
                            continue;
                        }
                        _ => {}
                    }
                }
                chars.push(PatChar::raw(s.c));
                source.push(s.c);
                i += 1;
            }
            if !closed {
                err(
                    errors,
                    &start,
                    RuleErrorKind::UnterminatedRegex { delimiter: delim },
                );
                skip_line(&mut i);
                Tok::Bad
            } else {
                let mut flags = Vec::new();
                while let Some(s) = src.get(i).filter(|s| s.c.is_alphanumeric()) {
                    flags.push((s.c, s.col));
                    source.push(s.c);
                    i += 1;
                }
                Tok::Regex(RegexToken {
                    chars,
                    flags,
                    source,
                })
            }
        };
        tokens.push(Token {
            tok,
            line: start.line,
            col: start.col,
            first_on_line: start.line != last_line,
        });
        last_line = start.line;
    }
    tokens
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// Recursive descent over the token list:
///
/// ```text
/// file    := ( rule | define )*
/// rule    := action expr+
/// define  := NAME '=' expr
/// action  := 'reject' STR | 'tempfail' STR | 'quarantine' STR | 'discard' | 'accept'
/// expr    := unary ( ('and' | 'or') expr )?      -- right-assoc, equal precedence
/// unary   := 'not' unary | '(' expr ')' | '$' NAME | cond
/// cond    := 'connect' RE RE | 'helo' RE | 'envfrom' RE | 'envrcpt' RE
///          | 'header' RE RE | 'macro' RE RE | 'body' RE
/// ```
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    errors: Vec<RuleError>,
    conds: Vec<Condition>,
    rules: Vec<Rule>,
    names: HashMap<String, Expr>,
    /// Lines where the lexer already reported an error: follow-up parse
    /// errors there would only repeat it.
    lex_error_lines: Vec<usize>,
    /// True after an action: expressions met after an error still belong to
    /// that rule (they are checked, not reported as lacking an action).
    in_rule: bool,
}

/// A named expression keeps its depth so that uses can be checked cheaply.
fn error_at(tok: &Token, kind: RuleErrorKind) -> RuleError {
    RuleError {
        line: tok.line,
        column: tok.col,
        kind,
    }
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "reject" | "tempfail" | "quarantine" | "discard" | "accept" | "and" | "or" | "not"
    ) || CondKind::from_keyword(word).is_some()
}

impl Parser {
    fn new(text: &str) -> Self {
        let mut errors = Vec::new();
        let tokens = lex(text, &mut errors);
        let lex_error_lines = errors.iter().map(|e| e.line).collect();
        Self {
            tokens,
            pos: 0,
            errors,
            lex_error_lines,
            in_rule: false,
            conds: Vec::new(),
            rules: Vec::new(),
            names: HashMap::new(),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn next(&mut self) -> Option<Token> {
        let tok = self.tokens.get(self.pos).cloned();
        if tok.is_some() {
            self.pos += 1;
        }
        tok
    }

    /// Error recovery after an error in the item that started at token
    /// `item_start`: skip at least one token, then up to the next token that
    /// starts a line.
    fn recover(&mut self, item_start: usize) {
        if self.pos <= item_start {
            self.pos = item_start + 1;
        }
        while self.peek().is_some_and(|t| !t.first_on_line) {
            self.pos += 1;
        }
    }

    /// The position to blame for something missing at the end of input.
    fn eof_error(&self, kind: RuleErrorKind) -> RuleError {
        match self.tokens.last() {
            Some(t) => error_at(t, kind),
            None => RuleError {
                line: 1,
                column: 1,
                kind,
            },
        }
    }

    fn parse(mut self) -> Result<RuleSet, Vec<RuleError>> {
        while let Some(tok) = self.peek().cloned() {
            let item_start = self.pos;
            let result = match &tok.tok {
                // Already reported by the lexer: just resynchronise.
                Tok::Bad => {
                    self.recover(item_start);
                    Ok(())
                }
                Tok::Word(w) if self.action_keyword(w) => self.parse_rule(),
                Tok::Word(w)
                    if !is_keyword(w)
                        && matches!(
                            self.tokens.get(self.pos + 1).map(|t| &t.tok),
                            Some(Tok::Equals)
                        ) =>
                {
                    self.parse_define()
                }
                Tok::Word(w) if !is_keyword(w) => {
                    Err(error_at(&tok, RuleErrorKind::UnknownKeyword(w.clone())))
                }
                Tok::RParen => Err(error_at(
                    &tok,
                    RuleErrorKind::UnbalancedParentheses("`)` without `(`"),
                )),
                Tok::Word(_) | Tok::LParen | Tok::Dollar => {
                    // Either the rest of a rule that had an error (already
                    // reported), or expressions with no action at all: report
                    // that once. Parse them to find errors inside, then drop.
                    if !self.in_rule {
                        self.report(error_at(&tok, RuleErrorKind::MissingAction));
                    }
                    self.parse_orphans()
                }
                other => Err(error_at(&tok, RuleErrorKind::Unexpected(other.describe()))),
            };
            match result {
                Err(e) => {
                    self.report(e);
                    self.recover(item_start);
                }
                // Every item consumes at least one token; this guard makes
                // sure the loop ends whatever the input.
                Ok(()) if self.pos <= item_start => self.recover(item_start),
                Ok(()) => {}
            }
        }
        if self.errors.is_empty() {
            Ok(RuleSet {
                rules: self.rules,
                conds: self.conds,
            })
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            Err(self.errors)
        }
    }

    /// Record an error, unless it only repeats a lexical error (an
    /// unterminated string or pattern confuses the parser on that line).
    fn report(&mut self, e: RuleError) {
        let repeat = self.lex_error_lines.contains(&e.line)
            || self.peek().is_some_and(|t| matches!(t.tok, Tok::Bad));
        if !repeat {
            self.errors.push(e);
        }
    }

    /// Expressions without an action (already reported): parse them to
    /// find errors inside, then drop them.
    fn parse_orphans(&mut self) -> Result<(), RuleError> {
        while self.at_expr_start() {
            self.parse_expr(0)?;
        }
        Ok(())
    }

    fn action_keyword(&self, w: &str) -> bool {
        matches!(
            w,
            "reject" | "tempfail" | "quarantine" | "discard" | "accept"
        )
    }

    /// Can the next token start an expression?
    fn at_expr_start(&self) -> bool {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::LParen | Tok::Dollar) => true,
            Some(Tok::Word(w)) => w == "not" || CondKind::from_keyword(w).is_some(),
            _ => false,
        }
    }

    fn parse_rule(&mut self) -> Result<(), RuleError> {
        self.in_rule = true;
        let Some(tok) = self.next() else {
            return Ok(());
        };
        let Tok::Word(word) = &tok.tok else {
            return Err(error_at(
                &tok,
                RuleErrorKind::Unexpected(tok.tok.describe()),
            ));
        };
        // With a broken action the conditions are still parsed (and checked),
        // so that one mistake gives one error, not one per following line.
        let action = match word.as_str() {
            "discard" => Some(Action::Discard),
            "accept" => Some(Action::Accept),
            kw => match self.peek() {
                Some(Token {
                    tok: Tok::Str(text),
                    ..
                }) => {
                    let text = text.clone();
                    self.pos += 1;
                    Some(match kw {
                        "reject" => Action::Reject(text),
                        "tempfail" => Action::Tempfail(text),
                        _ => Action::Quarantine(text),
                    })
                }
                next => {
                    if next.is_some_and(|t| matches!(t.tok, Tok::Bad)) {
                        self.pos += 1;
                    }
                    let kw = match kw {
                        "reject" => "reject",
                        "tempfail" => "tempfail",
                        _ => "quarantine",
                    };
                    self.report(error_at(&tok, RuleErrorKind::ExpectedString(kw)));
                    None
                }
            },
        };
        let mut exprs = Vec::new();
        while self.at_expr_start() {
            exprs.push(self.parse_expr(0)?);
        }
        // An unknown word where the first condition should be is most likely
        // a misspelt keyword: report that (once) rather than a missing
        // condition. After some expressions, the top level reports it.
        if exprs.is_empty()
            && let Some(t) = self.peek()
            && let Tok::Word(w) = &t.tok
            && !is_keyword(w)
            && !matches!(
                self.tokens.get(self.pos + 1).map(|t| &t.tok),
                Some(Tok::Equals)
            )
        {
            let err = error_at(t, RuleErrorKind::UnknownKeyword(w.clone()));
            self.pos += 1;
            return Err(err);
        }
        if let Some(t) = self.peek().filter(|t| matches!(t.tok, Tok::RParen)) {
            return Err(error_at(
                t,
                RuleErrorKind::UnbalancedParentheses("`)` without `(`"),
            ));
        }
        match action {
            Some(action) if exprs.is_empty() => Err(error_at(
                &tok,
                RuleErrorKind::MissingCondition {
                    action: action.keyword(),
                },
            )),
            Some(action) => {
                self.push_rule(action, exprs, tok.line);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn push_rule(&mut self, action: Action, exprs: Vec<Expr>, line: usize) {
        self.rules.push(Rule {
            action,
            exprs,
            line,
        });
    }

    fn parse_define(&mut self) -> Result<(), RuleError> {
        self.in_rule = false;
        let Some(name_tok) = self.next() else {
            return Ok(());
        };
        self.pos += 1; // the `=`
        let Tok::Word(name) = &name_tok.tok else {
            return Err(error_at(
                &name_tok,
                RuleErrorKind::Unexpected(name_tok.tok.describe()),
            ));
        };
        if !self.at_expr_start() {
            return Err(match self.peek() {
                Some(t) => error_at(t, RuleErrorKind::Unexpected(t.tok.describe())),
                None => self.eof_error(RuleErrorKind::Unexpected("end of file".to_string())),
            });
        }
        let expr = self.parse_expr(0)?;
        if self.names.contains_key(name) {
            return Err(error_at(
                &name_tok,
                RuleErrorKind::DuplicateName(name.clone()),
            ));
        }
        self.names.insert(name.clone(), expr);
        Ok(())
    }

    /// `unary (op unary)*`, folded from the right as milter-regex's grammar
    /// (`expr := term AND expr | term OR expr`) does.
    fn parse_expr(&mut self, depth: usize) -> Result<Expr, RuleError> {
        let start = self.peek().cloned();
        let mut items = vec![self.parse_unary(depth + 1)?];
        let mut ops = Vec::new();
        let mut nodes = items.iter().map(Expr::nodes).sum::<usize>();
        while let Some(op) = self.peek_word().filter(|w| *w == "and" || *w == "or") {
            let is_and = op == "and";
            let op_tok = self.next();
            if !self.at_expr_start() {
                let kind = RuleErrorKind::Unexpected(format!(
                    "{} after `{}`",
                    self.peek()
                        .map_or_else(|| "end of file".to_string(), |t| t.tok.describe()),
                    if is_and { "and" } else { "or" }
                ));
                return Err(match (self.peek(), op_tok) {
                    (Some(t), _) => error_at(t, kind),
                    (None, Some(t)) => error_at(&t, kind),
                    (None, None) => self.eof_error(kind),
                });
            }
            let item = self.parse_unary(depth + 1)?;
            nodes += item.nodes();
            if nodes > MAX_NODES {
                return Err(match &start {
                    Some(t) => error_at(t, RuleErrorKind::TooComplex),
                    None => self.eof_error(RuleErrorKind::TooComplex),
                });
            }
            ops.push(is_and);
            items.push(item);
        }
        // Right fold: x0 op0 (x1 op1 (x2 ...)). Runs of one operator become
        // one flat node (members end up in reverse order, which does not
        // matter for `and`/`or`).
        let Some(mut acc) = items.pop() else {
            return Err(self.eof_error(RuleErrorKind::Unexpected("end of file".to_string())));
        };
        for (item, is_and) in items.into_iter().rev().zip(ops.into_iter().rev()) {
            acc = match (is_and, acc) {
                (true, Expr::All(mut v)) => {
                    v.push(item);
                    Expr::All(v)
                }
                (false, Expr::Any(mut v)) => {
                    v.push(item);
                    Expr::Any(v)
                }
                (true, other) => Expr::All(vec![other, item]),
                (false, other) => Expr::Any(vec![other, item]),
            };
        }
        Ok(acc)
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Expr, RuleError> {
        let Some(tok) = self.next() else {
            return Err(self.eof_error(RuleErrorKind::Unexpected("end of file".to_string())));
        };
        if depth > MAX_DEPTH {
            return Err(error_at(&tok, RuleErrorKind::TooComplex));
        }
        match &tok.tok {
            Tok::Word(w) if w == "not" => {
                if !self.at_expr_start() {
                    let kind = RuleErrorKind::Unexpected(format!(
                        "{} after `not`",
                        self.peek()
                            .map_or_else(|| "end of file".to_string(), |t| t.tok.describe())
                    ));
                    return Err(match self.peek() {
                        Some(t) => error_at(t, kind),
                        None => self.eof_error(kind),
                    });
                }
                Ok(Expr::Not(Box::new(self.parse_unary(depth + 1)?)))
            }
            Tok::LParen => {
                if !self.at_expr_start() {
                    return Err(match self.peek() {
                        Some(t) if matches!(t.tok, Tok::RParen) => error_at(
                            t,
                            RuleErrorKind::Unexpected("empty parentheses".to_string()),
                        ),
                        Some(t) => error_at(t, RuleErrorKind::Unexpected(t.tok.describe())),
                        None => error_at(
                            &tok,
                            RuleErrorKind::UnbalancedParentheses("`(` is never closed"),
                        ),
                    });
                }
                let inner = self.parse_expr(depth + 1)?;
                match self.peek() {
                    Some(t) if matches!(t.tok, Tok::RParen) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(error_at(
                        &tok,
                        RuleErrorKind::UnbalancedParentheses("`(` is never closed"),
                    )),
                }
            }
            Tok::Dollar => {
                let name = match self.next() {
                    Some(Token {
                        tok: Tok::Word(w), ..
                    }) => w,
                    _ => {
                        return Err(error_at(
                            &tok,
                            RuleErrorKind::Unexpected("`$` without a name".to_string()),
                        ));
                    }
                };
                match self.names.get(&name) {
                    Some(e) if e.depth() + depth > MAX_DEPTH => {
                        Err(error_at(&tok, RuleErrorKind::TooComplex))
                    }
                    Some(e) => Ok(e.clone()),
                    None => Err(error_at(&tok, RuleErrorKind::UndefinedName(name))),
                }
            }
            Tok::Word(w) => match CondKind::from_keyword(w) {
                Some((kind, nargs)) => self.parse_cond(&tok, kind, nargs),
                None => Err(error_at(&tok, RuleErrorKind::UnknownKeyword(w.clone()))),
            },
            other => Err(error_at(&tok, RuleErrorKind::Unexpected(other.describe()))),
        }
    }

    fn parse_cond(
        &mut self,
        keyword: &Token,
        kind: CondKind,
        nargs: usize,
    ) -> Result<Expr, RuleError> {
        let kw: &'static str = match kind {
            CondKind::Connect => "connect",
            CondKind::Helo => "helo",
            CondKind::EnvFrom => "envfrom",
            CondKind::EnvRcpt => "envrcpt",
            CondKind::Macro => "macro",
            CondKind::Header => "header",
            CondKind::Body => "body",
        };
        let mut patterns = Vec::with_capacity(2);
        for _ in 0..nargs {
            match self.peek().cloned() {
                Some(t) if matches!(t.tok, Tok::Regex(_)) => {
                    self.pos += 1;
                    if let Tok::Regex(r) = &t.tok {
                        patterns.push(compile(&t, r)?);
                    }
                }
                Some(t) => return Err(error_at(&t, RuleErrorKind::ExpectedRegex(kw))),
                None => return Err(error_at(keyword, RuleErrorKind::ExpectedRegex(kw))),
            }
        }
        let mut patterns = patterns.into_iter();
        let Some(first) = patterns.next() else {
            return Err(error_at(keyword, RuleErrorKind::ExpectedRegex(kw)));
        };
        self.conds.push(Condition {
            kind,
            first,
            second: patterns.next(),
        });
        Ok(Expr::Cond(self.conds.len() - 1))
    }
}

/// Compile one pattern token: check the flags, translate POSIX to `regex`
/// syntax, build the regex.
fn compile(tok: &Token, r: &RegexToken) -> Result<Pattern, RuleError> {
    let mut extended = false;
    let mut icase = false;
    let mut negate = false;
    for &(flag, col) in &r.flags {
        match flag {
            'e' => extended = true,
            'i' => icase = true,
            'n' => negate = true,
            other => {
                return Err(RuleError {
                    line: tok.line,
                    column: col,
                    kind: RuleErrorKind::UnknownFlag(other),
                });
            }
        }
    }
    if r.chars.is_empty() {
        if !r.flags.is_empty() {
            return Err(error_at(tok, RuleErrorKind::EmptyRegexWithFlags));
        }
        return Ok(Pattern {
            regex: None,
            negate: false,
        });
    }
    let bad = |message: String| {
        error_at(
            tok,
            RuleErrorKind::BadRegex {
                pattern: r.source.clone(),
                message,
            },
        )
    };
    let flavor = if extended {
        Flavor::Extended
    } else {
        Flavor::Basic
    };
    let translated = posix::translate(&r.chars, flavor).map_err(bad)?;
    let regex = RegexBuilder::new(&translated)
        .case_insensitive(icase)
        // POSIX regexec without REG_NEWLINE: `.` matches a newline too.
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| bad(regex_message(&e)))?;
    Ok(Pattern {
        regex: Some(regex),
        negate,
    })
}

/// The regex crate's error message without its multi-line caret drawing
/// (which would point into the *translated* pattern and confuse readers).
fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_string))
        .unwrap_or_else(|| text.lines().last().unwrap_or_default().trim().to_string())
}

#[cfg(test)]
mod tests;
