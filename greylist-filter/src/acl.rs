//! Access lists: ordered `[[acl]]` rules, milter-greylist's `racl` in TOML.
//!
//! Each rule has an action and clauses. The first rule whose clauses all match decides
//! (`continue` rules run their side effects and evaluation goes on); when no rule
//! decides, the `[whitelist]` lists, the DNS lists and greylisting with the global
//! settings apply as if there were no rules.
//!
//! ```toml
//! [[acl]]
//! name = "partners"
//! action = "whitelist"
//! addr = ["192.0.2.0/24", "2001:db8::/32"]
//!
//! [[acl]]
//! action = "blacklist"
//! from = ["/@spam\\.example$/"]
//! code = 550
//! ecode = "5.7.1"
//! msg = "Not welcome here"
//!
//! [[acl]]
//! action = "greylist"
//! rcpt = ["sales.example.com"]
//! not = { auth = ["/./"] }
//! delay = "1h"
//! autowhite = "3d"
//! ```
//!
//! | clause | matches when | forms |
//! |---|---|---|
//! | `default = true` | always | |
//! | `addr` | the client address is in one of the networks | CIDR or address |
//! | `domain` | the client host name (the FCrDNS-verified one with `[dns] fcrdns`) | domain (and its subdomains) or `/regex/` |
//! | `helo` | the HELO/EHLO name | name (case-insensitive) or `/regex/` |
//! | `from` | the envelope sender (raw, or normalised: BATV, SRS, `+ext` removed) | `user@domain`, `user@`, `domain`/`@domain` (and subdomains), or `/regex/` on the raw address |
//! | `rcpt` | the envelope recipient | as `from` |
//! | `auth` | the SMTP AUTH user (`{auth_authen}`) | user (case-insensitive) or `/regex/` |
//! | `tls` | the client certificate subject (`{cert_subject}`) | exact subject or `/regex/` |
//! | `dnsrbl` | the client is listed in one of the DNS zones: an answer in 127.0.0.0/8 other than 127.255.255.x, or in the network given after the zone | `"zone"`, `"zone 127.0.0.10"`, `"zone 127.0.0.0/24"` |
//! | `spf` | the SPF result of the MAIL FROM identity (with the HELO name, if the rules read it) | `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`, `permerror` |
//! | `macro` | an MTA macro has a value (or is not set) | `{ name = "{daemon_name}", value = "ORIG" }`, value `/regex/`, or `{ name = "...", unset = true }` |
//! | `rcptcount` | the number of recipients of the transaction so far, this one included | `"> 10"`, ops `<`, `<=`, `>`, `>=`, `==`, `!=` |
//! | `not` | none of the clauses in it matches | a table of the clauses above |
//!
//! A clause with several entries matches if any entry does; all clauses of a rule must
//! match. A regular expression is written between slashes and is case-insensitive.
//!
//! Actions and values:
//!
//! - `whitelist`: the recipient is not greylisted.
//! - `blacklist`: the recipient is rejected with `code`/`ecode`/`msg` (default
//!   `550 5.7.1 Access denied`).
//! - `greylist`: the recipient is greylisted even if a `[whitelist]` list or a DNS allow
//!   list would let it through, with this rule's `delay` and `autowhite` (auto-whitelist
//!   period) and its `code`/`ecode`/`msg` reply, each defaulting to the global setting.
//! - `continue`: nothing is decided; `flushaddr` still runs.
//! - `nolog = true`: no decision line for recipients this rule decides.
//! - `flushaddr = true`: forget every record of the client's network when the rule matches.
//!
//! Loopback and local networks, authenticated clients (`[whitelist] authenticated`),
//! `postmaster@`/`abuse@` and the opt-in/opt-out lists are checked before the rules: no
//! rule greylists or rejects them.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, de};

use crate::config::{Cidr, Pattern, Seconds};
use crate::dnslists::DnsFacts;
use crate::identity::SpfIdentity;
pub use crate::identity::SpfOutcome;
use crate::tuple::normalize_sender;
use crate::whitelist::{AddrSet, DomainSet, NetSet};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    /// Do not greylist.
    Whitelist,
    /// Greylist, with the rule's values.
    Greylist,
    /// Reject (5xx).
    Blacklist,
    /// Run the side effects and go on with the next rule.
    Continue,
}

impl AclAction {
    /// The lower-case name used in the configuration and in logs.
    pub fn name(self) -> &'static str {
        match self {
            AclAction::Whitelist => "whitelist",
            AclAction::Greylist => "greylist",
            AclAction::Blacklist => "blacklist",
            AclAction::Continue => "continue",
        }
    }
}

/// A clause value: a literal or, written between slashes, a case-insensitive regular
/// expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// A literal; what it matches depends on the clause.
    Literal(String),
    /// `/regex/`.
    Regex(Pattern),
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s
            .strip_prefix('/')
            .and_then(|r| r.strip_suffix('/'))
            .filter(|_| s.len() >= 2)
        {
            Some("") => Err(de::Error::custom(
                "an empty regular expression matches everything; use default = true",
            )),
            Some(re) => Pattern::compile(re)
                .map(Matcher::Regex)
                .map_err(de::Error::custom),
            None if s.trim().is_empty() => Err(de::Error::custom("an empty value matches nothing")),
            None => Ok(Matcher::Literal(s)),
        }
    }
}

/// `macro = [{ name = "{daemon_name}", value = "ORIGINATING" }]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacroClause {
    /// The macro, e.g. `"{daemon_name}"` or `"j"`.
    pub name: String,
    /// The value it must have (exact) or `/regex/`.
    pub value: Option<Matcher>,
    /// `true`: matches when the MTA did not send the macro (or sent it empty).
    #[serde(default)]
    pub unset: bool,
}

/// A comparison of a count, `"> 10"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountCmp {
    op: CmpOp,
    n: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CountCmp {
    /// Parses `"> 10"`, `">=3"`, `"== 1"`, or a bare number (meaning `==`).
    pub fn parse(s: &str) -> Option<CountCmp> {
        let s = s.trim();
        let (op, rest) = [
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
            ("=", CmpOp::Eq),
        ]
        .iter()
        .find_map(|(p, op)| s.strip_prefix(p).map(|r| (*op, r)))
        .unwrap_or((CmpOp::Eq, s));
        let n = rest.trim().parse().ok()?;
        Some(CountCmp { op, n })
    }

    /// Whether `v` satisfies the comparison.
    pub fn holds(self, v: u64) -> bool {
        match self.op {
            CmpOp::Lt => v < self.n,
            CmpOp::Le => v <= self.n,
            CmpOp::Gt => v > self.n,
            CmpOp::Ge => v >= self.n,
            CmpOp::Eq => v == self.n,
            CmpOp::Ne => v != self.n,
        }
    }
}

impl fmt::Display for CountCmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        };
        write!(f, "{op} {}", self.n)
    }
}

impl<'de> Deserialize<'de> for CountCmp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = CountCmp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a comparison such as \"> 10\" or a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CountCmp, E> {
                u64::try_from(v)
                    .map(|n| CountCmp { op: CmpOp::Eq, n })
                    .map_err(|_| E::custom("a count cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<CountCmp, E> {
                Ok(CountCmp { op: CmpOp::Eq, n })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CountCmp, E> {
                CountCmp::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "invalid comparison {v:?}: expected an operator (<, <=, >, >=, ==, !=) and a number, e.g. \"> 10\""
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The clauses of a rule (also the contents of its `not` table).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Clauses {
    /// Client networks.
    pub addr: Vec<Cidr>,
    /// Client host name: domains (with subdomains) or `/regex/`.
    pub domain: Vec<Matcher>,
    /// HELO/EHLO name.
    pub helo: Vec<Matcher>,
    /// Envelope sender.
    pub from: Vec<Matcher>,
    /// Envelope recipient.
    pub rcpt: Vec<Matcher>,
    /// SMTP AUTH user.
    pub auth: Vec<Matcher>,
    /// Client certificate subject.
    pub tls: Vec<Matcher>,
    /// DNS block list zones.
    pub dnsrbl: Vec<String>,
    /// SPF results of the MAIL FROM identity.
    pub spf: Vec<SpfOutcome>,
    /// MTA macros.
    #[serde(rename = "macro")]
    pub macros: Vec<MacroClause>,
    /// Recipients in the transaction so far, this one included.
    pub rcptcount: Option<CountCmp>,
}

impl Clauses {
    /// True if no clause is given.
    pub fn is_empty(&self) -> bool {
        self.addr.is_empty()
            && self.domain.is_empty()
            && self.helo.is_empty()
            && self.from.is_empty()
            && self.rcpt.is_empty()
            && self.auth.is_empty()
            && self.tls.is_empty()
            && self.dnsrbl.is_empty()
            && self.spf.is_empty()
            && self.macros.is_empty()
            && self.rcptcount.is_none()
    }
}

/// One `[[acl]]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in logs, metrics and `explain`; default `acl#N` (N counts from 1).
    #[serde(default)]
    pub name: Option<String>,
    /// What the rule does when it matches.
    pub action: AclAction,
    /// Match everything.
    #[serde(default)]
    pub default: bool,
    /// Client networks.
    #[serde(default)]
    pub addr: Vec<Cidr>,
    /// Client host name.
    #[serde(default)]
    pub domain: Vec<Matcher>,
    /// HELO/EHLO name.
    #[serde(default)]
    pub helo: Vec<Matcher>,
    /// Envelope sender.
    #[serde(default)]
    pub from: Vec<Matcher>,
    /// Envelope recipient.
    #[serde(default)]
    pub rcpt: Vec<Matcher>,
    /// SMTP AUTH user.
    #[serde(default)]
    pub auth: Vec<Matcher>,
    /// Client certificate subject.
    #[serde(default)]
    pub tls: Vec<Matcher>,
    /// DNS block list zones.
    #[serde(default)]
    pub dnsrbl: Vec<String>,
    /// SPF results of the MAIL FROM identity.
    #[serde(default)]
    pub spf: Vec<SpfOutcome>,
    /// MTA macros.
    #[serde(default, rename = "macro")]
    pub macros: Vec<MacroClause>,
    /// Recipients in the transaction so far.
    #[serde(default)]
    pub rcptcount: Option<CountCmp>,
    /// Clauses that must not match.
    #[serde(default)]
    pub not: Option<Clauses>,
    /// `greylist`: the delay for this rule's recipients.
    #[serde(default)]
    pub delay: Option<Seconds>,
    /// `greylist`: the auto-whitelist period for this rule's recipients.
    #[serde(default)]
    pub autowhite: Option<Seconds>,
    /// `greylist` (4xx) or `blacklist` (5xx): the SMTP code.
    #[serde(default)]
    pub code: Option<u16>,
    /// The enhanced status code, e.g. `"4.7.1"`.
    #[serde(default)]
    pub ecode: Option<String>,
    /// The reply text.
    #[serde(default)]
    pub msg: Option<String>,
    /// Do not log decisions made by this rule.
    #[serde(default)]
    pub nolog: bool,
    /// Forget the client network's records when the rule matches.
    #[serde(default)]
    pub flushaddr: bool,
}

impl RuleConfig {
    /// The positive clauses of the rule.
    pub fn clauses(&self) -> Clauses {
        Clauses {
            addr: self.addr.clone(),
            domain: self.domain.clone(),
            helo: self.helo.clone(),
            from: self.from.clone(),
            rcpt: self.rcpt.clone(),
            auth: self.auth.clone(),
            tls: self.tls.clone(),
            dnsrbl: self.dnsrbl.clone(),
            spf: self.spf.clone(),
            macros: self.macros.clone(),
            rcptcount: self.rcptcount,
        }
    }
}

/// A compiled text clause: literals (by the clause's rule) and regular expressions.
#[derive(Debug, Default)]
struct Text<S> {
    literals: S,
    regex: Vec<regex::Regex>,
}

impl<S: Default> Text<S> {
    fn build(entries: &[Matcher], mut insert: impl FnMut(&mut S, &str)) -> Self {
        let mut t = Text {
            literals: S::default(),
            regex: Vec::new(),
        };
        for e in entries {
            match e {
                Matcher::Literal(l) => insert(&mut t.literals, l),
                Matcher::Regex(p) => t.regex.push(p.0.clone()),
            }
        }
        t
    }

    fn regex_match(&self, raw: &str) -> bool {
        self.regex.iter().any(|r| r.is_match(raw))
    }
}

/// Case-insensitive whole names.
type Names = Text<std::collections::HashSet<String>>;

fn names(entries: &[Matcher]) -> Names {
    Text::build(entries, |s: &mut std::collections::HashSet<String>, l| {
        s.insert(l.trim().to_lowercase());
    })
}

/// `v` must already be trimmed and lower case.
fn name_matches(t: &Names, v: Option<&str>) -> bool {
    v.is_some_and(|v| t.literals.contains(v) || t.regex_match(v))
}

/// One compiled set of clauses.
#[derive(Debug, Default)]
struct Compiled {
    addr: Option<NetSet>,
    domain: Option<Text<DomainSet>>,
    helo: Option<Names>,
    from: Option<Text<AddrSet>>,
    rcpt: Option<Text<AddrSet>>,
    auth: Option<Names>,
    tls: Option<Names>,
    dnsrbl: Vec<DnsList>,
    spf: Vec<SpfOutcome>,
    macros: Vec<MacroClause>,
    rcptcount: Option<CountCmp>,
}

/// A `dnsrbl` entry: the zone, and the answers that count as a listing (`None`: any
/// listing answer, see [`crate::dnslists::is_listing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DnsList {
    zone: String,
    answer: Option<ipnet::Ipv4Net>,
}

impl DnsList {
    /// Parses `"zone"` or `"zone ANSWER[/LEN]"`.
    fn parse(s: &str) -> Result<DnsList, String> {
        let mut words = s.split_whitespace();
        let zone = words.next().unwrap_or("").trim_end_matches('.');
        if zone.is_empty() || zone.starts_with('.') {
            return Err(format!("invalid DNS zone {s:?}"));
        }
        let answer = match words.next() {
            None => None,
            Some(a) => Some(
                a.parse::<ipnet::Ipv4Net>()
                    .or_else(|_| a.parse::<std::net::Ipv4Addr>().map(ipnet::Ipv4Net::from))
                    .map_err(|_| {
                        format!(
                            "invalid answer {a:?} after the zone in {s:?}: expected an IPv4 address or network such as 127.0.0.10 or 127.0.0.0/24"
                        )
                    })?
                    .trunc(),
            ),
        };
        if words.next().is_some() {
            return Err(format!(
                "{s:?}: expected \"zone\" or \"zone answer\", e.g. \"dnsbl.example 127.0.0.10\""
            ));
        }
        Ok(DnsList {
            zone: zone.to_ascii_lowercase(),
            answer,
        })
    }
}

fn some_if<T>(empty: bool, f: impl FnOnce() -> T) -> Option<T> {
    (!empty).then(f)
}

fn addrs(entries: &[Matcher]) -> Text<AddrSet> {
    Text::build(entries, AddrSet::insert)
}

impl Compiled {
    fn new(c: &Clauses) -> Self {
        Compiled {
            addr: some_if(c.addr.is_empty(), || {
                let mut n = NetSet::default();
                for a in &c.addr {
                    n.insert(a.0);
                }
                n
            }),
            domain: some_if(c.domain.is_empty(), || {
                Text::build(&c.domain, DomainSet::insert)
            }),
            helo: some_if(c.helo.is_empty(), || names(&c.helo)),
            from: some_if(c.from.is_empty(), || addrs(&c.from)),
            rcpt: some_if(c.rcpt.is_empty(), || addrs(&c.rcpt)),
            auth: some_if(c.auth.is_empty(), || names(&c.auth)),
            tls: some_if(c.tls.is_empty(), || names(&c.tls)),
            // Validated; an entry that does not parse matches nothing.
            dnsrbl: c
                .dnsrbl
                .iter()
                .filter_map(|z| DnsList::parse(z).ok())
                .collect(),
            spf: c.spf.clone(),
            macros: c.macros.clone(),
            rcptcount: c.rcptcount,
        }
    }

    /// Whether every clause matches (`all = true`) or whether any clause matches
    /// (`all = false`, for `not`). No clause: `all`. Stops at the first clause that
    /// settles it; SPF and DNS lists, which ask the network, come last.
    async fn eval(&self, p: &Prepared<'_>, answers: &mut Answers<'_>, all: bool) -> bool {
        let f = &p.facts;
        let settled = {
            let checks: [&dyn Fn() -> Option<bool>; 9] = [
                &|| self.addr.as_ref().map(|n| n.contains(f.client_ip)),
                &|| {
                    self.domain.as_ref().map(|d| {
                        p.host
                            .as_deref()
                            .is_some_and(|h| d.literals.matches(h) || d.regex_match(h))
                    })
                },
                &|| {
                    self.helo
                        .as_ref()
                        .map(|t| name_matches(t, p.helo.as_deref()))
                },
                &|| {
                    self.from.as_ref().map(|t| {
                        t.literals.matches(&p.sender)
                            || t.literals.matches(&p.sender_norm)
                            || t.regex_match(&p.sender)
                    })
                },
                &|| {
                    self.rcpt
                        .as_ref()
                        .map(|t| t.literals.matches(f.recipient) || t.regex_match(f.recipient))
                },
                &|| {
                    self.auth
                        .as_ref()
                        .map(|t| name_matches(t, p.auth.as_deref()))
                },
                &|| self.tls.as_ref().map(|t| name_matches(t, p.tls.as_deref())),
                &|| {
                    (!self.macros.is_empty()).then(|| {
                        self.macros.iter().any(|m| {
                            let v = f.macro_value(&m.name).filter(|v| !v.is_empty());
                            match (&m.value, v) {
                                (_, None) => m.unset,
                                (Some(Matcher::Literal(l)), Some(v)) => l == v,
                                (Some(Matcher::Regex(p)), Some(v)) => p.0.is_match(v),
                                (None, Some(_)) => false,
                            }
                        })
                    })
                },
                &|| self.rcptcount.map(|c| c.holds(f.rcpt_count)),
            ];
            checks.iter().any(|check| check().is_some_and(|c| c != all))
        };
        if settled {
            return !all;
        }
        if !self.spf.is_empty()
            && answers.spf(f).await.is_some_and(|o| self.spf.contains(&o)) != all
        {
            return !all;
        }
        if !self.dnsrbl.is_empty() && answers.listed(f.client_ip, &self.dnsrbl).await != all {
            return !all;
        }
        all
    }
}

/// The facts in the forms the clauses compare (lower case, trimmed), made once per
/// recipient and only for the clauses the rules have. Regular expressions are
/// case-insensitive, so they are matched against the lower-case forms too.
#[derive(Debug)]
struct Prepared<'a> {
    facts: Facts<'a>,
    host: Option<String>,
    helo: Option<String>,
    auth: Option<String>,
    tls: Option<String>,
    /// The sender without angle brackets.
    sender: String,
    /// The normalised sender (BATV, SRS, `+ext` removed).
    sender_norm: String,
}

/// Which facts the rules of a set compare (see [`Prepared`]).
#[derive(Debug, Default, Clone, Copy)]
struct Uses {
    host: bool,
    helo: bool,
    auth: bool,
    tls: bool,
    sender: bool,
}

impl<'a> Prepared<'a> {
    fn new(facts: Facts<'a>, uses: Uses) -> Self {
        let lower = |on: bool, v: Option<&str>| {
            v.filter(|_| on)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_lowercase)
        };
        let host = facts
            .client_name
            .map(str::trim)
            .filter(|h| !h.starts_with('[') && *h != "unknown");
        let sender = facts
            .sender
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        Prepared {
            host: lower(uses.host, host).map(|h| h.trim_end_matches('.').to_owned()),
            helo: lower(uses.helo, facts.helo),
            auth: lower(uses.auth, facts.auth),
            tls: lower(uses.tls, facts.macro_value("{cert_subject}")),
            sender: if uses.sender {
                sender.to_lowercase()
            } else {
                String::new()
            },
            sender_norm: if uses.sender {
                normalize_sender(facts.sender)
            } else {
                String::new()
            },
            facts,
        }
    }
}

/// What the rules see of one recipient.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client address.
    pub client_ip: IpAddr,
    /// The client host name.
    pub client_name: Option<&'a str>,
    /// The HELO/EHLO name.
    pub helo: Option<&'a str>,
    /// The raw envelope sender.
    pub sender: &'a str,
    /// The normalised recipient.
    pub recipient: &'a str,
    /// `{auth_authen}`.
    pub auth: Option<&'a str>,
    /// Macros the MTA sent that the rules ask for (see [`AclSet::macro_names`]).
    pub macros: &'a [(String, String)],
    /// Recipients in the transaction so far, this one included.
    pub rcpt_count: u64,
}

impl<'a> Facts<'a> {
    /// What is known of a recipient from the client address, the sender and the
    /// (normalised) recipient alone: the first recipient, no host or HELO name, no
    /// AUTH, no macros.
    pub fn new(client_ip: IpAddr, sender: &'a str, recipient: &'a str) -> Self {
        Facts {
            client_ip,
            client_name: None,
            helo: None,
            sender,
            recipient,
            auth: None,
            macros: &[],
            rcpt_count: 1,
        }
    }

    fn macro_value(&self, name: &str) -> Option<&str> {
        let bare = name.trim_start_matches('{').trim_end_matches('}');
        self.macros
            .iter()
            .find(|(n, _)| n.trim_start_matches('{').trim_end_matches('}') == bare)
            .map(|(_, v)| v.as_str())
    }
}

/// What answers the clauses that ask the network: the DNS list resolver and the SPF
/// checker. Without one, its clauses match nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookups<'a> {
    /// For `dnsrbl` clauses.
    pub dns: Option<&'a DnsFacts>,
    /// For `spf` clauses.
    pub spf: Option<&'a SpfIdentity>,
}

/// The answers of one evaluation, so that each is asked for at most once.
struct Answers<'a> {
    lookups: Lookups<'a>,
    lists: Vec<(String, Vec<std::net::Ipv4Addr>)>,
    spf: Option<Option<SpfOutcome>>,
}

impl Answers<'_> {
    /// The SPF result, or `None` without an SPF checker.
    async fn spf(&mut self, f: &Facts<'_>) -> Option<SpfOutcome> {
        if self.spf.is_none() {
            let o = match self.lookups.spf {
                Some(spf) => Some(
                    spf.outcome(f.client_ip, f.helo.unwrap_or(""), f.sender)
                        .await,
                ),
                None => None,
            };
            self.spf = Some(o);
        }
        self.spf.flatten()
    }

    async fn listed(&mut self, ip: IpAddr, lists: &[DnsList]) -> bool {
        let Some(dns) = self.lookups.dns else {
            return false;
        };
        for l in lists {
            let i = match self.lists.iter().position(|(z, _)| *z == l.zone) {
                Some(i) => i,
                None => {
                    let a = dns.list_answers(ip, &l.zone).await;
                    self.lists.push((l.zone.clone(), a));
                    self.lists.len() - 1
                }
            };
            let answers = self.lists.get(i).map_or(&[][..], |(_, a)| a.as_slice());
            let hit = match l.answer {
                Some(net) => answers.iter().any(|a| net.contains(a)),
                None => answers.iter().copied().any(crate::dnslists::is_listing),
            };
            if hit {
                return true;
            }
        }
        false
    }
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule's name (`acl#N` if none was given).
    pub name: String,
    /// Its action.
    pub action: AclAction,
    /// `greylist`: the delay, if the rule sets one.
    pub delay: Option<u64>,
    /// `greylist`: the auto-whitelist period, if the rule sets one.
    pub autowhite: Option<u64>,
    /// The reply parts the rule sets: code, enhanced code, text.
    pub code: Option<u16>,
    /// Enhanced status code.
    pub ecode: Option<String>,
    /// Reply text.
    pub msg: Option<String>,
    /// Decisions of this rule are not logged.
    pub nolog: bool,
    /// The client network's records are flushed when the rule matches.
    pub flushaddr: bool,
    /// Recipients the rule matched since it was loaded.
    matches: std::sync::atomic::AtomicU64,
    default: bool,
    when: Compiled,
    not: Option<Compiled>,
}

impl Rule {
    /// Puts the rule's `delay` and `autowhite`, where it sets them, into `params`.
    pub fn apply_to(&self, params: &mut crate::policy::Params) {
        if let Some(d) = self.delay {
            params.delay = d;
        }
        if let Some(a) = self.autowhite {
            params.auto_whitelist = a;
        }
    }

    /// Recipients the rule matched since it was loaded (a reload starts over).
    pub fn matches(&self) -> u64 {
        self.matches.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The outcome of the rules for one recipient.
#[derive(Debug, Default)]
pub struct AclOutcome<'a> {
    /// The rule that decided (not a `continue` rule), if any.
    pub rule: Option<&'a Rule>,
    /// A matching rule asked for the client network's records to be flushed.
    pub flush: bool,
}

/// The compiled `[[acl]]` rules.
#[derive(Debug, Default)]
pub struct AclSet {
    rules: Vec<Rule>,
    uses: Uses,
}

impl AclSet {
    /// Compiles validated rules (see [`validate`]); values are used as written.
    pub fn new(rules: &[RuleConfig]) -> Self {
        let mut set = AclSet {
            uses: Uses::default(),
            rules: rules
                .iter()
                .enumerate()
                .map(|(i, r)| Rule {
                    name: rule_name(r, i),
                    action: r.action,
                    delay: r.delay.map(|s| s.0),
                    autowhite: r.autowhite.map(|s| s.0),
                    code: r.code,
                    ecode: r.ecode.clone(),
                    msg: r.msg.clone(),
                    nolog: r.nolog,
                    flushaddr: r.flushaddr,
                    matches: std::sync::atomic::AtomicU64::new(0),
                    default: r.default,
                    when: Compiled::new(&r.clauses()),
                    not: r.not.as_ref().map(Compiled::new),
                })
                .collect(),
        };
        let mut uses = Uses::default();
        for c in set.compiled() {
            uses.host |= c.domain.is_some();
            uses.helo |= c.helo.is_some();
            uses.auth |= c.auth.is_some();
            uses.tls |= c.tls.is_some();
            uses.sender |= c.from.is_some();
        }
        set.uses = uses;
        set
    }

    /// True if there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether a rule has a `helo` clause (the filter then asks the MTA for HELO).
    pub fn uses_helo(&self) -> bool {
        self.compiled().any(|c| c.helo.is_some())
    }

    /// Whether a rule has an `spf` clause.
    pub fn uses_spf(&self) -> bool {
        self.compiled().any(|c| !c.spf.is_empty())
    }

    /// Whether a rule has a `dnsrbl` clause.
    pub fn uses_dns(&self) -> bool {
        self.compiled().any(|c| !c.dnsrbl.is_empty())
    }

    /// The MTA macros the rules read (`macro` and `tls` clauses), to be requested at RCPT.
    pub fn macro_names(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for c in self.compiled() {
            let tls = c.tls.is_some().then(|| "{cert_subject}".to_owned());
            for n in c.macros.iter().map(|m| m.name.clone()).chain(tls) {
                if !v.contains(&n) {
                    v.push(n);
                }
            }
        }
        v
    }

    fn compiled(&self) -> impl Iterator<Item = &Compiled> {
        self.rules
            .iter()
            .flat_map(|r| std::iter::once(&r.when).chain(r.not.as_ref()))
    }

    /// Runs the rules in order for one recipient. `lookups` answer `dnsrbl` and `spf`
    /// clauses (without them those clauses match nothing).
    pub async fn evaluate(&self, f: &Facts<'_>, lookups: Lookups<'_>) -> AclOutcome<'_> {
        let mut out = AclOutcome::default();
        if self.rules.is_empty() {
            return out;
        }
        let mut answers = Answers {
            lookups,
            lists: Vec::new(),
            spf: None,
        };
        let p = Prepared::new(*f, self.uses);
        for r in &self.rules {
            let matched = (r.default || r.when.eval(&p, &mut answers, true).await)
                && match &r.not {
                    Some(n) => !n.eval(&p, &mut answers, false).await,
                    None => true,
                };
            if !matched {
                continue;
            }
            r.matches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out.flush |= r.flushaddr;
            if r.action != AclAction::Continue {
                out.rule = Some(r);
                break;
            }
        }
        out
    }
}

fn rule_name(r: &RuleConfig, i: usize) -> String {
    r.name.clone().unwrap_or_else(|| format!("acl#{}", i + 1))
}

/// Checks what the types cannot: returns (rule index, key or `None` for the table,
/// message) for every problem. `retry_window` is the global retry window.
pub fn validate(
    rules: &[RuleConfig],
    retry_window: u64,
) -> Vec<(usize, Option<&'static str>, String)> {
    let mut errors = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let mut err = |key: Option<&'static str>, m: String| errors.push((i, key, m));
        let name = rule_name(r, i);
        if seen.contains(&name) {
            err(
                Some("name"),
                format!("acl rule name {name:?} is used twice"),
            );
        }
        seen.push(name.clone());
        let positive = !r.clauses().is_empty();
        if r.default && positive {
            err(
                Some("default"),
                format!("acl {name}: default = true matches everything; remove the other clauses"),
            );
        }
        if !r.default && !positive && r.not.is_none() {
            err(
                None,
                format!("acl {name}: no clause; give at least one clause, or default = true"),
            );
        }
        if r.not.as_ref().is_some_and(Clauses::is_empty) {
            err(Some("not"), format!("acl {name}: not = {{}} has no clause"));
        }
        for m in r
            .macros
            .iter()
            .chain(r.not.iter().flat_map(|n| n.macros.iter()))
        {
            let bare = m.name.trim_start_matches('{').trim_end_matches('}');
            if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                err(
                    Some("macro"),
                    format!("acl {name}: invalid macro name {:?}", m.name),
                );
            }
            if m.value.is_some() == m.unset {
                err(
                    Some("macro"),
                    format!(
                        "acl {name}: macro {:?} needs either value = \"...\" or unset = true",
                        m.name
                    ),
                );
            }
        }
        for z in r
            .dnsrbl
            .iter()
            .chain(r.not.iter().flat_map(|n| n.dnsrbl.iter()))
        {
            if let Err(e) = DnsList::parse(z) {
                err(Some("dnsrbl"), format!("acl {name}: dnsrbl {e}"));
            }
        }
        let replies = matches!(r.action, AclAction::Greylist | AclAction::Blacklist);
        for (key, set) in [
            ("code", r.code.is_some()),
            ("ecode", r.ecode.is_some()),
            ("msg", r.msg.is_some()),
        ] {
            if set && !replies {
                err(
                    Some(key),
                    format!("acl {name}: {key} is only for greylist and blacklist rules"),
                );
            }
        }
        for (key, set) in [
            ("delay", r.delay.is_some()),
            ("autowhite", r.autowhite.is_some()),
        ] {
            if set && r.action != AclAction::Greylist {
                err(
                    Some(key),
                    format!("acl {name}: {key} is only for greylist rules"),
                );
            }
        }
        if let Some(d) = r.delay
            && d.0 >= retry_window
        {
            err(
                Some("delay"),
                format!(
                    "acl {name}: delay ({}s) must be shorter than [greylist] retry_window ({retry_window}s)",
                    d.0
                ),
            );
        }
        let class = match r.action {
            AclAction::Blacklist => 5,
            _ => 4,
        };
        if let Some(c) = r.code
            && replies
            && c / 100 != class
        {
            err(
                Some("code"),
                format!(
                    "acl {name}: code {c} must be {class}xx for a {} rule",
                    r.action.name()
                ),
            );
        }
        if let Some(e) = &r.ecode
            && replies
            && !is_enhanced_code(e, class)
        {
            err(
                Some("ecode"),
                format!("acl {name}: ecode {e:?} must be an enhanced code {class}.x.y"),
            );
        }
        if r.msg
            .as_ref()
            .is_some_and(|m| m.chars().any(char::is_control))
        {
            err(
                Some("msg"),
                format!("acl {name}: msg must not contain control characters"),
            );
        }
    }
    errors
}

/// `4.7.1`-style: class digit, then two numbers of 1-3 digits.
pub fn is_enhanced_code(s: &str, class: u16) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.first().is_some_and(|p| *p == class.to_string())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The reply of a deciding `greylist` or `blacklist` rule: its parts over `base`.
pub fn rule_reply(rule: &Rule, base: &crate::engine::SmtpReply) -> Arc<crate::engine::SmtpReply> {
    Arc::new(crate::engine::SmtpReply {
        code: rule.code.unwrap_or(base.code),
        status: rule.ecode.clone().unwrap_or_else(|| base.status.clone()),
        text: rule.msg.clone().unwrap_or_else(|| base.text.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, Vec<crate::config::ConfigError>> {
        Config::parse(text, Path::new("acl.toml"))
    }

    fn set(text: &str) -> AclSet {
        AclSet::new(&parse(text).unwrap().acl)
    }

    fn facts<'a>(ip: &str, sender: &'a str, rcpt: &'a str) -> Facts<'a> {
        Facts::new(ip.parse().unwrap(), sender, rcpt)
    }

    /// The name and action of the deciding rule, or "-".
    fn decided(s: &AclSet, f: &Facts<'_>) -> String {
        let out = tokio_test_block_on(s.evaluate(f, Lookups::default()));
        out.rule.map_or_else(
            || "-".to_owned(),
            |r| format!("{} {}", r.name, r.action.name()),
        )
    }

    fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    const RULES: &str = r#"
[[acl]]
name = "partners"
action = "whitelist"
addr = ["192.0.2.0/24", "2001:db8::/32"]

[[acl]]
name = "spam-sender"
action = "blacklist"
from = ["/^spam@/", "bad.example"]
code = 554
msg = "Go away"

[[acl]]
name = "sales"
action = "greylist"
rcpt = ["sales@example.net", "sales@"]
not = { domain = ["trusted.example"] }
delay = "1h"
autowhite = "3d"

[[acl]]
name = "big-mailing"
action = "greylist"
rcptcount = "> 2"

[[acl]]
action = "continue"
addr = ["203.0.113.0/24"]
flushaddr = true

[[acl]]
action = "whitelist"
helo = ["/^mx[0-9]+\\.friendly\\.example$/"]
"#;

    #[test]
    fn first_match_wins_in_order() {
        let s = set(RULES);
        assert_eq!(s.rules().len(), 6);
        // Inside the partners' network even a blacklisted sender is whitelisted.
        assert_eq!(
            decided(&s, &facts("192.0.2.9", "spam@x.example", "a@example.net")),
            "partners whitelist"
        );
        assert_eq!(
            decided(&s, &facts("2001:db8::5", "a@b.example", "a@example.net")),
            "partners whitelist"
        );
        for sender in [
            "spam@x.example",
            "<SPAM@x.example>",
            "u@bad.example",
            "u@mx.bad.example",
        ] {
            assert_eq!(
                decided(&s, &facts("198.51.100.1", sender, "a@example.net")),
                "spam-sender blacklist",
                "{sender}"
            );
        }
        // A domain literal matches on label boundaries only.
        assert_eq!(
            decided(
                &s,
                &facts("198.51.100.1", "u@notbad.example", "a@example.net")
            ),
            "-"
        );
        // `sales@` is a local part in any domain.
        assert_eq!(
            decided(
                &s,
                &facts("198.51.100.1", "u@c.example", "sales@other.example")
            ),
            "sales greylist"
        );
        let r = &s.rules()[2];
        assert_eq!((r.delay, r.autowhite), (Some(3600), Some(3 * 86_400)));
        assert_eq!(s.rules()[1].code, Some(554));
        assert_eq!(s.rules()[4].name, "acl#5");
    }

    #[test]
    fn not_default_continue_counts_and_names() {
        let s = set(RULES);
        let mut f = facts("198.51.100.1", "u@c.example", "sales@example.net");
        f.client_name = Some("mail.trusted.example");
        // `not` excludes the trusted domain from the sales rule.
        assert_eq!(decided(&s, &f), "-");
        f.client_name = Some("mail.untrusted.example");
        assert_eq!(decided(&s, &f), "sales greylist");
        // The third recipient of a transaction.
        let mut f = facts("198.51.100.1", "u@c.example", "x@example.net");
        f.rcpt_count = 2;
        assert_eq!(decided(&s, &f), "-");
        f.rcpt_count = 3;
        assert_eq!(decided(&s, &f), "big-mailing greylist");
        // A continue rule flushes but does not decide; the next rule still can.
        let mut f = facts("203.0.113.7", "u@c.example", "x@example.net");
        f.helo = Some("MX12.friendly.example");
        let out = tokio_test_block_on(s.evaluate(&f, Lookups::default()));
        assert!(out.flush);
        assert_eq!(out.rule.map(|r| r.name.as_str()), Some("acl#6"));
        f.helo = Some("mx12.friendly.example.evil");
        let out = tokio_test_block_on(s.evaluate(&f, Lookups::default()));
        assert!(out.flush && out.rule.is_none());
        // Nothing matches and nothing is flushed.
        let out = tokio_test_block_on(
            s.evaluate(&facts("198.51.100.1", "a@b", "c@d"), Lookups::default()),
        );
        assert!(!out.flush && out.rule.is_none());
        assert!(s.uses_helo() && !s.uses_dns());
        assert!(s.macro_names().is_empty());
    }

    #[test]
    fn auth_tls_macros_and_normalised_senders() {
        let s = set(r#"
[[acl]]
name = "batv"
action = "whitelist"
from = ["news@lists.example"]

[[acl]]
name = "alice"
action = "whitelist"
auth = ["Alice"]

[[acl]]
name = "cert"
action = "whitelist"
tls = ["/CN=relay\\.example$/"]

[[acl]]
name = "orig"
action = "blacklist"
macro = [{ name = "{daemon_name}", value = "ORIGINATING" }]

[[acl]]
name = "no-verify"
action = "greylist"
macro = [{ name = "verify", unset = true }]
"#);
        assert_eq!(
            s.macro_names(),
            vec!["{cert_subject}", "{daemon_name}", "verify"]
        );
        // BATV and +ext are stripped for literal matches.
        for sender in ["prvs=1234abcd=news@lists.example", "news+x@lists.example"] {
            assert_eq!(
                decided(&s, &facts("198.51.100.1", sender, "a@example.net")),
                "batv whitelist"
            );
        }
        let mut f = facts("198.51.100.1", "a@b.example", "c@example.net");
        f.auth = Some("alice");
        assert_eq!(decided(&s, &f), "alice whitelist");
        let m = [(
            "{cert_subject}".to_owned(),
            "/C=FI/CN=relay.example".to_owned(),
        )];
        let mut f = facts("198.51.100.1", "a@b.example", "c@example.net");
        f.macros = &m;
        assert_eq!(decided(&s, &f), "cert whitelist");
        // `{daemon_name}` and `daemon_name` are the same macro; values are exact.
        let m = [("daemon_name".to_owned(), "ORIGINATING".to_owned())];
        f.macros = &m;
        assert_eq!(decided(&s, &f), "orig blacklist");
        let m = [
            ("daemon_name".to_owned(), "originating".to_owned()),
            ("{verify}".to_owned(), "OK".to_owned()),
        ];
        f.macros = &m;
        assert_eq!(decided(&s, &f), "-");
        f.macros = &[];
        assert_eq!(decided(&s, &f), "no-verify greylist");
    }

    /// The README's example rules parse and do what their comments say.
    #[test]
    fn readme_example() {
        let readme = include_str!("../README.md");
        let section = readme.split("## Access rules").nth(1).unwrap();
        let block = section.split("```toml\n").nth(1).unwrap();
        let block = block.split("```").next().unwrap();
        let s = set(block);
        assert_eq!(s.rules().len(), 5);
        let mut f = facts("198.51.100.1", "a@b.example", "c@example.net");
        f.helo = Some("ylmf-pc");
        assert_eq!(decided(&s, &f), "acl#2 blacklist");
        let m = [("{daemon_name}".to_owned(), "ORIGINATING".to_owned())];
        let mut f = facts("198.51.100.1", "a@b.example", "c@example.net");
        f.macros = &m;
        assert_eq!(decided(&s, &f), "acl#4 whitelist");
        f.macros = &[];
        f.rcpt_count = 21;
        assert_eq!(decided(&s, &f), "acl#5 greylist");
        assert_eq!(s.rules()[4].code, Some(450));
        assert!(s.uses_dns() && s.uses_helo());
    }

    #[test]
    fn counts() {
        let c = |s: &str| CountCmp::parse(s).unwrap();
        assert!(c("> 10").holds(11) && !c("> 10").holds(10));
        assert!(c(">=10").holds(10) && c("<= 1").holds(1) && c("<2").holds(1));
        assert!(c("== 3").holds(3) && c("3").holds(3) && c("!= 3").holds(4));
        assert!(CountCmp::parse("> x").is_none() && CountCmp::parse("~ 3").is_none());
        assert_eq!(c(">= 7").to_string(), ">= 7");
    }

    /// (line, message fragment) of every error `text` gives.
    fn errors(text: &str) -> Vec<(usize, String)> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.line, e.message))
            .collect()
    }

    #[test]
    fn bad_rules_are_located() {
        let e = errors(
            "[greylist]\ndelay = \"5m\"\n\n[[acl]]\naction = \"whitelist\"\naddr = [\"10.0.0.0/8\"]\n\n\
             [[acl]]\naction = \"greylist\"\nfrom = [\"a@b\"]\ndelay = \"2d\"\n\n\
             [[acl]]\naction = \"whitelist\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, 11);
        assert!(
            e[0].1.contains("acl#2: delay (172800s) must be shorter"),
            "{e:?}"
        );
        assert_eq!(e[1].0, 13);
        assert!(e[1].1.contains("acl#3: no clause"), "{e:?}");

        let e = errors(
            "[[acl]]\naction = \"blacklist\"\ndefault = true\ncode = 451\necode = \"4.7.1\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, 4);
        assert!(e[0].1.contains("code 451 must be 5xx"), "{e:?}");
        assert_eq!(e[1].0, 5);
        assert!(
            e[1].1
                .contains("ecode \"4.7.1\" must be an enhanced code 5.x.y"),
            "{e:?}"
        );

        let e = errors(
            "[[acl]]\nname = \"x\"\naction = \"whitelist\"\ndefault = true\nmsg = \"hi\"\n\
             [[acl]]\nname = \"x\"\naction = \"continue\"\nfrom = [\"a@b\"]\ndelay = \"1m\"\n\
             macro = [{ name = \"{a b}\", value = \"1\" }, { name = \"v\" }]\nnot = {}\n",
        );
        let lines: Vec<usize> = e.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [5, 7, 12, 11, 11, 10], "{e:?}");
        assert!(e[0].1.contains("msg is only for greylist and blacklist"));
        assert!(e[1].1.contains("name \"x\" is used twice"));
        assert!(e[2].1.contains("not = {} has no clause"));
        assert!(e[3].1.contains("invalid macro name \"{a b}\""));
        assert!(e[4].1.contains("needs either value"));
        assert!(e[5].1.contains("delay is only for greylist rules"));

        // Type errors come from the parser, located at the value.
        let e = errors("[[acl]]\naction = \"allow\"\ndefault = true\n");
        assert_eq!(e[0].0, 2);
        assert!(e[0].1.contains("unknown variant `allow`"), "{e:?}");
        let e = errors("[[acl]]\naction = \"whitelist\"\nfrom = [\"/a(/\"]\n");
        assert_eq!(e[0].0, 3);
        assert!(e[0].1.contains("invalid regular expression"), "{e:?}");
        let e = errors("[[acl]]\naction = \"whitelist\"\nrcptcount = \"about 3\"\n");
        assert!(e[0].1.contains("invalid comparison"), "{e:?}");
        let e = errors("[[acl]]\naction = \"whitelist\"\nfrom = [\"//\"]\n");
        assert!(e[0].1.contains("empty regular expression"), "{e:?}");
        let e = errors("[[acl]]\naction = \"whitelist\"\nsender = [\"a@b\"]\n");
        assert!(e[0].1.contains("unknown field `sender`"), "{e:?}");
        let e = errors("[[acl]]\naction = \"whitelist\"\nspf = [\"pass\", \"softpass\"]\n");
        assert_eq!(e[0].0, 3);
        assert!(e[0].1.contains("unknown variant `softpass`"), "{e:?}");
        let e = errors("[[acl]]\naction = \"whitelist\"\naddr = [\"10.0.0.300\"]\n");
        assert!(e[0].1.contains("invalid network"), "{e:?}");
        let e = errors(
            "[[acl]]\naction = \"whitelist\"\ndnsrbl = [\"bl.example 127.0.0.10\", \"bl.example ::1\", \"a 127.0.0.2 c\"]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].1.contains("invalid answer \"::1\""), "{e:?}");
        assert!(
            e[1].1.contains("expected \"zone\" or \"zone answer\""),
            "{e:?}"
        );
    }
}
