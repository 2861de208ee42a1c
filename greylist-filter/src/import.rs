//! Migration from milter-greylist: its configuration (`import-conf`) and its text dump
//! (`import-db`).
//!
//! [`import_conf`] translates greylist.conf into our TOML, with one [`ImportWarning`]
//! (with its line number) for every line it cannot translate faithfully:
//!
//! - Timings (`greylist`, `autowhite`, `timeout`), `subnetmatch`/`subnetmatch6`,
//!   `socket` and `noauth` become `[greylist]`, `[milter]` and `[whitelist]` keys.
//! - Every `racl` (or `acl`) line becomes an `[[acl]]` table (see [`crate::acl`]), in
//!   the same order, since the first matching rule decides. The id becomes `name`; the
//!   clauses `addr`, `domain`, `helo`, `from`, `rcpt`, `auth`, `tls`, `dnsrbl "name"`
//!   (the zone of its `dnsrbl` definition), `sm_macro "name"` (the macro and value of
//!   its definition), `rcptcount`, `list "name"` (its entries, in the clause of the
//!   list's type) and `default` keep their meaning; `not` puts a clause in the rule's
//!   `not` table; the values `delay`, `autowhite`, `code`, `ecode`, `msg`, `nolog` and
//!   `flushaddr` carry over. A `tls` clause also requires `{verify}` = `OK`, as in
//!   milter-greylist, and an `auth` or `tls` clause turns off the bypass of
//!   authenticated clients, as milter-greylist does.
//! - Regular expressions are POSIX basic ones (extended after `extendedregex`); they are
//!   rewritten in our syntax. `from`/`rcpt` literals that are addresses, local parts or
//!   domains carry over (milter-greylist matches them as substrings); other ones become
//!   an escaped `/regex/` with the same substring match, and `domain` literals that do
//!   not start with a label an anchored suffix `/regex/`, each with a warning.
//! - Not translated, with a warning: a rule with a clause we do not have (`time`,
//!   `spf self`, `geoip`, `p0f`, `mx`, `ratelimit`, `urlcheck`, `ldapcheck`, `header`, `body`,
//!   `msgsize`, `dkim`, `spamd`, properties, `log`, `nsupdate`, `tarpit`), with the
//!   same clause twice (AND there, OR in one of our clauses), or with a regular
//!   expression we cannot carry over; `dacl` lines. A rule with a value we do not have
//!   (`report`, `addheader`, `addfooter`, `subjtag`, `maxpeek`) is translated without it,
//!   with a warning, as is a `msg` with format tokens (`%r`, ...), which are not
//!   expanded here.
//!
//! [`import_db`] reads the dump file (`IP <from> <rcpt> EPOCH [AUTO|TARPIT t] [# date]`);
//! [`DumpRecord::to_record`] turns an entry into our record.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::Cidr;
use crate::policy::Params;
use crate::record::{TupleRecord, TupleState};
use crate::store::{Store, StoreError};
use crate::tuple::{Key, mask, normalize_recipient, normalize_sender, parse_client_addr};

/// Something the importer could not carry over exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportWarning {
    /// 1-based line in the input.
    pub line: usize,
    /// What was not translated, and why.
    pub message: String,
}

impl std::fmt::Display for ImportWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, Clone)]
struct Token {
    text: String,
    quoted: bool,
    line: usize,
}

/// Splits greylist.conf into statements (token lists); braces and backslash-newlines
/// join lines, `#` starts a comment outside quotes.
fn statements(text: &str) -> Vec<Vec<Token>> {
    let mut out = Vec::new();
    let mut cur: Vec<Token> = Vec::new();
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut word = String::new();
    let mut word_line = 1;
    let flush_word = |word: &mut String, cur: &mut Vec<Token>, l: usize| {
        if !word.is_empty() {
            cur.push(Token {
                text: std::mem::take(word),
                quoted: false,
                line: l,
            });
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush_word(&mut word, &mut cur, word_line);
                if depth == 0 && !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                line += 1;
            }
            '\\' if chars.peek() == Some(&'\n') => {
                flush_word(&mut word, &mut cur, word_line);
                chars.next();
                line += 1;
            }
            '#' if word.is_empty() => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '"' if word.is_empty() => {
                let mut s = String::new();
                let start = line;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                s.push(n);
                            }
                        }
                        '\n' => {
                            line += 1;
                            s.push(c);
                        }
                        _ => s.push(c),
                    }
                }
                cur.push(Token {
                    text: s,
                    quoted: true,
                    line: start,
                });
            }
            '{' | '}' => {
                flush_word(&mut word, &mut cur, word_line);
                if c == '{' {
                    depth += 1;
                } else {
                    depth = depth.saturating_sub(1);
                }
                cur.push(Token {
                    text: c.to_string(),
                    quoted: false,
                    line,
                });
            }
            c if c.is_whitespace() => flush_word(&mut word, &mut cur, word_line),
            c => {
                if word.is_empty() {
                    word_line = line;
                }
                word.push(c);
            }
        }
    }
    flush_word(&mut word, &mut cur, word_line);
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses milter-greylist time values: `15m`, `1h30m`, `3d`, `1w`, `600` (seconds).
pub fn parse_mg_time(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().ok()?;
            num.clear();
            let mult = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                _ => return None,
            };
            total = total.checked_add(n.checked_mul(mult)?)?;
        }
    }
    if !num.is_empty() {
        total = total.checked_add(num.parse().ok()?)?;
    }
    (!s.is_empty()).then_some(total)
}

fn toml_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{:04X}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn toml_list(items: &[String]) -> String {
    if items.is_empty() {
        return "[]".into();
    }
    let mut o = String::from("[\n");
    for i in items {
        let _ = writeln!(o, "  {},", toml_str(i));
    }
    o.push(']');
    o
}

#[derive(Default)]
struct Out {
    delay: Option<u64>,
    autowhite: Option<u64>,
    timeout: Option<u64>,
    v4: Option<u8>,
    v6: Option<u8>,
    socket: Option<String>,
    socket_mode: Option<String>,
    /// `noauth`.
    noauth: bool,
    /// An `auth` or `tls` clause was written (milter-greylist then acts as if `noauth`).
    auth_clause: bool,
    rules: Vec<Rule>,
}

/// A milter-greylist configuration translated to our TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfImport {
    /// The TOML text.
    pub toml: String,
    /// One warning per line that was not translated exactly.
    pub warnings: Vec<ImportWarning>,
}

/// Translates a milter-greylist `greylist.conf`.
pub fn import_conf(text: &str) -> ConfImport {
    let mut out = Out::default();
    let mut warnings = Vec::new();
    let mut defs = Defs::default();
    let mut warn = |line: usize, m: String| warnings.push(ImportWarning { line, message: m });

    let sts = statements(text);
    // A global switch, read when a rule is evaluated, wherever it is written.
    defs.domainexact = sts
        .iter()
        .any(|st| st.first().and_then(keyword).as_deref() == Some("domainexact"));

    for st in &sts {
        let Some(first) = st.first() else { continue };
        let line = first.line;
        let kw = keyword(first).unwrap_or_default();
        let kw = kw.as_str();
        let arg = st.get(1).map(|t| t.text.as_str());
        match kw {
            "greylist" | "autowhite" | "timeout" => match arg.and_then(parse_mg_time) {
                Some(v) if st.len() == 2 => match kw {
                    "greylist" => out.delay = Some(v),
                    "autowhite" => out.autowhite = Some(v),
                    _ => out.timeout = Some(v),
                },
                _ => warn(line, format!("{kw}: expected one time value")),
            },
            "subnetmatch" | "subnetmatch6" => {
                let max = if kw == "subnetmatch" { 32 } else { 128 };
                match arg
                    .and_then(|a| a.strip_prefix('/'))
                    .and_then(|n| n.parse::<u8>().ok())
                    .filter(|n| *n <= max)
                {
                    Some(n) if kw == "subnetmatch" => out.v4 = Some(n),
                    Some(n) => out.v6 = Some(n),
                    None => warn(line, format!("{kw}: expected /N with N <= {max}")),
                }
            }
            "socket" => match st.get(1) {
                Some(t) => {
                    let p = &t.text;
                    out.socket = Some(if p.starts_with('/') {
                        format!("unix:{p}")
                    } else {
                        p.clone()
                    });
                    if let Some(m) = st.get(2) {
                        out.socket_mode = Some(m.text.clone());
                    }
                }
                None => warn(line, "socket: missing path".into()),
            },
            "quiet" | "nodetach" | "domainexact" => {}
            "extendedregex" => defs.extended = true,
            "noauth" => out.noauth = true,
            "list" => {
                let name = st.get(1).filter(|t| t.quoted).map(|t| t.text.clone());
                let kind = st.get(2).and_then(keyword);
                let open = st.iter().position(|t| !t.quoted && t.text == "{");
                let close = st.iter().rposition(|t| !t.quoted && t.text == "}");
                match (name, kind, open, close) {
                    (Some(n), Some(k), Some(o), Some(c)) if o < c => {
                        let items = st.get(o + 1..c).map(<[Token]>::to_vec).unwrap_or_default();
                        defs.lists.insert(
                            n,
                            ListDef {
                                kind: k,
                                items,
                                extended: defs.extended,
                            },
                        );
                    }
                    _ => warn(line, "list: expected list \"name\" type { items }".into()),
                }
            }
            "dnsrbl" => match parse_dnsrbl_def(st) {
                Some((name, def)) => {
                    defs.dnsrbl.insert(name, def);
                }
                None => warn(
                    line,
                    "dnsrbl: expected dnsrbl \"name\" zone answer[/cidr]".into(),
                ),
            },
            "sm_macro" => match parse_macro_def(st, defs.extended) {
                Some((name, def)) => {
                    defs.macros.insert(name, def);
                }
                None => warn(
                    line,
                    "sm_macro: expected sm_macro \"name\" \"{macro}\" \"value\"|/regex/|unset"
                        .into(),
                ),
            },
            "racl" | "acl" => {
                out.auth_clause |= mentions_auth(st);
                let last = st.last().map_or(line, |t| t.line);
                match parse_racl(st, &defs) {
                    Ok(mut rule) => {
                        rule.line = line;
                        rule.last_line = last;
                        out.rules.push(rule);
                    }
                    Err(why) => warn(line, format!("{kw} not translated: {why}")),
                }
            }
            "dacl" => {
                out.auth_clause |= mentions_auth(st);
                warn(
                    line,
                    "dacl: DATA-stage access lists (message size, headers, body, spamd, DKIM) are not supported, ignored".into(),
                );
            }
            "dumpfile" => warn(
                line,
                "dumpfile: not translated; set [store] path and run `import-db` on the dump".into(),
            ),
            "peer" | "syncaddr" | "syncsrcaddr" | "syncmaxqlen" => warn(
                line,
                format!("{kw}: MX peer sync is not supported; share one store instead"),
            ),
            _ => warn(
                line,
                format!("{}: directive not supported, ignored", first.text),
            ),
        }
    }

    let retry_window = match out.timeout {
        // milter-greylist's timeout counts from when the tuple became acceptable;
        // our retry window counts from the first attempt.
        Some(tmo) => out
            .delay
            .unwrap_or(Params::default().delay)
            .saturating_add(tmo),
        None => crate::config::GreylistConfig::default().retry_window.0,
    };
    let rules = finish_rules(std::mem::take(&mut out.rules), retry_window, &mut warn);

    let mut t = String::from(
        "# Translated from milter-greylist's greylist.conf by greylist-filter import-conf.\n\
         # Keys not set here take greylist-filter's defaults (see greylist.toml.example).\n\n[greylist]\n",
    );
    if let Some(d) = out.delay {
        let _ = writeln!(t, "delay = \"{d}s\"");
    }
    if out.timeout.is_some() {
        let _ = writeln!(t, "retry_window = \"{retry_window}s\"");
    }
    if let Some(a) = out.autowhite {
        let _ = writeln!(t, "auto_whitelist = \"{a}s\"");
    }
    if let Some(v) = out.v4 {
        let _ = writeln!(t, "ipv4_prefix = {v}");
    }
    if let Some(v) = out.v6 {
        let _ = writeln!(t, "ipv6_prefix = {v}");
    }
    if out.socket.is_some() || out.socket_mode.is_some() {
        t.push_str("\n[milter]\n");
        if let Some(s) = &out.socket {
            let _ = writeln!(t, "socket = {}", toml_str(s));
        }
        if let Some(m) = &out.socket_mode {
            let _ = writeln!(t, "socket_mode = {}", toml_str(m));
        }
    }
    if out.noauth || out.auth_clause {
        t.push_str("\n[whitelist]\n");
        if !out.noauth {
            t.push_str(
                "# milter-greylist stops letting authenticated clients through once a rule\n\
                 # has an auth or tls clause.\n",
            );
        }
        t.push_str("authenticated = false\n");
    }
    let lines: Vec<&str> = text.lines().collect();
    for r in &rules {
        t.push('\n');
        write_source(&mut t, &lines, r.line, r.last_line);
        t.push_str(&r.to_toml());
    }
    warnings.sort_by_key(|w| w.line);
    ConfImport { toml: t, warnings }
}

/// The keyword a token spells: lower case, without the optional trailing `:`
/// (`None` for a quoted string).
fn keyword(t: &Token) -> Option<String> {
    (!t.quoted).then(|| t.text.trim_end_matches(':').to_ascii_lowercase())
}

/// Whether an access list statement has an `auth` or `tls` clause.
fn mentions_auth(st: &[Token]) -> bool {
    st.iter()
        .filter_map(keyword)
        .any(|k| matches!(k.trim_start_matches('!'), "auth" | "tls"))
}

/// Copies the statement's source lines into the TOML as comments.
fn write_source(t: &mut String, lines: &[&str], first: usize, last: usize) {
    let clean = |l: &str| -> String {
        l.trim_end()
            .chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect()
    };
    let src: Vec<String> = (first..=last.max(first))
        .filter_map(|n| lines.get(n.wrapping_sub(1)))
        .map(|l| clean(l))
        .collect();
    match src.as_slice() {
        [one] => {
            let _ = writeln!(t, "# line {first}: {one}");
        }
        many => {
            let _ = writeln!(t, "# lines {first}-{last}:");
            for l in many {
                let _ = writeln!(t, "#   {l}");
            }
        }
    }
}

/// `list`, `dnsrbl` and `sm_macro` definitions seen so far, and the switches that
/// change how values are read.
#[derive(Default)]
struct Defs {
    lists: HashMap<String, ListDef>,
    dnsrbl: HashMap<String, DnsrblDef>,
    macros: HashMap<String, MacroDef>,
    /// `extendedregex` seen: regular expressions after it are POSIX extended ones.
    extended: bool,
    /// `domainexact`: `domain` literals match on label boundaries.
    domainexact: bool,
}

struct ListDef {
    /// The list's type keyword (`addr`, `from`, `dnsrbl`, ...).
    kind: String,
    items: Vec<Token>,
    /// Regular expressions in it are extended ones.
    extended: bool,
}

struct DnsrblDef {
    line: usize,
    zone: String,
    /// The answer that counts as a listing, as written.
    answer: String,
    /// The same, parsed (a bare address is a /32).
    net: ipnet::IpNet,
}

fn parse_dnsrbl_def(st: &[Token]) -> Option<(String, DnsrblDef)> {
    let name = st.get(1).filter(|t| t.quoted)?;
    let zone = st.get(2)?.text.trim().trim_end_matches('.').to_owned();
    let mut answer = st.get(3)?.text.trim().to_owned();
    match st.get(4) {
        None => {}
        // `127.0.0.2 /32` written apart.
        Some(m)
            if st.len() == 5 && !m.quoted && m.text.starts_with('/') && !answer.contains('/') =>
        {
            answer.push_str(&m.text);
        }
        Some(_) => return None,
    }
    let net = Cidr::parse(&answer)?.0;
    (!zone.is_empty()).then(|| {
        (
            name.text.clone(),
            DnsrblDef {
                line: name.line,
                zone,
                answer,
                net,
            },
        )
    })
}

enum MacroValue {
    /// Exact value.
    Literal(String),
    /// A regular expression, already in our syntax, and the expression as written.
    Regex(Converted, String),
    Unset,
}

struct MacroDef {
    line: usize,
    macro_name: String,
    /// The value, or why it cannot be translated.
    value: Result<MacroValue, String>,
}

fn parse_macro_def(st: &[Token], extended: bool) -> Option<(String, MacroDef)> {
    let name = st.get(1).filter(|t| t.quoted)?;
    let macro_name = st.get(2)?.text.trim().to_owned();
    let v = st.get(3)?;
    if st.len() != 4 || macro_name.is_empty() {
        return None;
    }
    let value = if v.quoted {
        Ok(MacroValue::Literal(v.text.clone()))
    } else if let Some(re) = regex_of(v) {
        convert_regex(re, extended).map(|r| MacroValue::Regex(r, re.to_owned()))
    } else if keyword(v).as_deref() == Some("unset") {
        Ok(MacroValue::Unset)
    } else {
        return None;
    };
    Some((
        name.text.clone(),
        MacroDef {
            line: name.line,
            macro_name,
            value,
        },
    ))
}

/// The expression of an unquoted `/regex/` token.
fn regex_of(t: &Token) -> Option<&str> {
    if t.quoted {
        return None;
    }
    t.text
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix('/'))
        .filter(|r| !r.is_empty())
}

/// A clause of ours that a milter-greylist clause translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addr,
    Domain,
    Helo,
    From,
    Rcpt,
    Auth,
    Tls,
    Dnsrbl,
    Spf,
    Macro,
    RcptCount,
}

impl Kind {
    fn parse(kw: &str) -> Option<Kind> {
        Some(match kw {
            "addr" => Kind::Addr,
            "domain" => Kind::Domain,
            "helo" => Kind::Helo,
            "from" => Kind::From,
            "rcpt" => Kind::Rcpt,
            "auth" => Kind::Auth,
            "tls" => Kind::Tls,
            "dnsrbl" => Kind::Dnsrbl,
            "spf" => Kind::Spf,
            "sm_macro" => Kind::Macro,
            "rcptcount" => Kind::RcptCount,
            _ => return None,
        })
    }

    /// Its keyword in greylist.conf.
    fn conf(self) -> &'static str {
        match self {
            Kind::Addr => "addr",
            Kind::Domain => "domain",
            Kind::Helo => "helo",
            Kind::From => "from",
            Kind::Rcpt => "rcpt",
            Kind::Auth => "auth",
            Kind::Tls => "tls",
            Kind::Dnsrbl => "dnsrbl",
            Kind::Spf => "spf",
            Kind::Macro => "sm_macro",
            Kind::RcptCount => "rcptcount",
        }
    }
}

/// milter-greylist clauses we do not have: a rule with one is not translated, since
/// dropping a clause would widen the rule.
const UNSUPPORTED_CLAUSES: &[&str] = &[
    "rawfrom",
    "time",
    "geoip",
    "p0f",
    "mx",
    "ratelimit",
    "urlcheck",
    "ldapcheck",
    "header",
    "body",
    "msgsize",
    "dkim",
    "spamd",
    "log",
    "nsupdate",
    "tarpit",
    "set",
    "rset",
];

/// milter-greylist per-rule values we do not have (each takes one argument): the rule
/// is translated without them.
const UNSUPPORTED_VALUES: &[&str] = &[
    "report",
    "addheader",
    "addfooter",
    "subjtag",
    "maxpeek",
    "tarpit_scope",
];

/// `{ name = "{macro}", value = "..." }` or `{ name = "...", unset = true }`.
#[derive(Debug, Clone, PartialEq)]
struct MacroOut {
    name: String,
    /// The value as written in our TOML (a literal or `/regex/`); `None`: unset.
    value: Option<String>,
}

/// The clauses of a rule, or of its `not` table, as TOML values.
#[derive(Debug, Clone, Default)]
struct Clauses {
    addr: Vec<String>,
    domain: Vec<String>,
    helo: Vec<String>,
    from: Vec<String>,
    rcpt: Vec<String>,
    auth: Vec<String>,
    tls: Vec<String>,
    dnsrbl: Vec<String>,
    spf: Vec<String>,
    macros: Vec<MacroOut>,
    rcptcount: Option<String>,
}

impl Clauses {
    fn is_empty(&self) -> bool {
        self.strings().iter().all(|(_, v)| v.is_empty())
            && self.macros.is_empty()
            && self.rcptcount.is_none()
    }

    fn strings(&self) -> [(&'static str, &Vec<String>); 9] {
        [
            ("addr", &self.addr),
            ("domain", &self.domain),
            ("helo", &self.helo),
            ("from", &self.from),
            ("rcpt", &self.rcpt),
            ("auth", &self.auth),
            ("tls", &self.tls),
            ("dnsrbl", &self.dnsrbl),
            ("spf", &self.spf),
        ]
    }

    fn list_mut(&mut self, k: Kind) -> Option<&mut Vec<String>> {
        Some(match k {
            Kind::Addr => &mut self.addr,
            Kind::Domain => &mut self.domain,
            Kind::Helo => &mut self.helo,
            Kind::From => &mut self.from,
            Kind::Rcpt => &mut self.rcpt,
            Kind::Auth => &mut self.auth,
            Kind::Tls => &mut self.tls,
            Kind::Dnsrbl => &mut self.dnsrbl,
            Kind::Spf => &mut self.spf,
            Kind::Macro | Kind::RcptCount => return None,
        })
    }

    /// Adds `o`'s entries (a clause's entries are alternatives).
    fn merge(&mut self, o: Clauses) -> Result<(), String> {
        for (k, v) in [
            (Kind::Addr, o.addr),
            (Kind::Domain, o.domain),
            (Kind::Helo, o.helo),
            (Kind::From, o.from),
            (Kind::Rcpt, o.rcpt),
            (Kind::Auth, o.auth),
            (Kind::Tls, o.tls),
            (Kind::Dnsrbl, o.dnsrbl),
            (Kind::Spf, o.spf),
        ] {
            if let Some(l) = self.list_mut(k) {
                l.extend(v);
            }
        }
        self.macros.extend(o.macros);
        if let Some(c) = o.rcptcount {
            if self.rcptcount.is_some() {
                return Err("two rcptcount clauses cannot be combined into one here".into());
            }
            self.rcptcount = Some(c);
        }
        Ok(())
    }

    /// `key = value` pairs, in the order of the reference.
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = self
            .strings()
            .into_iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(k, l)| (k, toml_array(l)))
            .collect();
        if !self.macros.is_empty() {
            let items: Vec<String> = self
                .macros
                .iter()
                .map(|m| match &m.value {
                    Some(val) => format!(
                        "{{ name = {}, value = {} }}",
                        toml_str(&m.name),
                        toml_str(val)
                    ),
                    None => format!("{{ name = {}, unset = true }}", toml_str(&m.name)),
                })
                .collect();
            v.push(("macro", format!("[{}]", items.join(", "))));
        }
        if let Some(c) = &self.rcptcount {
            v.push(("rcptcount", toml_str(c)));
        }
        v
    }
}

/// An array of strings: on one line when short, one entry per line otherwise.
fn toml_array(items: &[String]) -> String {
    if items.len() <= 4 {
        let v: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
        format!("[{}]", v.join(", "))
    } else {
        toml_list(items)
    }
}

/// One `racl` line as an `[[acl]]` table.
#[derive(Debug, Clone, Default)]
struct Rule {
    /// First and last line of the statement in greylist.conf.
    line: usize,
    last_line: usize,
    /// The racl id, if one was given.
    id: Option<String>,
    /// The name written (the id, made unique).
    name: Option<String>,
    action: &'static str,
    default: bool,
    when: Clauses,
    not: Clauses,
    delay: Option<u64>,
    autowhite: Option<u64>,
    code: Option<u16>,
    ecode: Option<String>,
    msg: Option<String>,
    nolog: bool,
    flushaddr: bool,
    /// What was translated inexactly (one warning for the line).
    notes: Vec<String>,
    /// Comments written above the table (definitions the rule uses).
    comments: Vec<String>,
}

impl Rule {
    fn to_toml(&self) -> String {
        let mut t = String::new();
        for c in &self.comments {
            let _ = writeln!(t, "# {c}");
        }
        t.push_str("[[acl]]\n");
        if let Some(n) = &self.name {
            let _ = writeln!(t, "name = {}", toml_str(n));
        }
        let _ = writeln!(t, "action = \"{}\"", self.action);
        if self.default {
            t.push_str("default = true\n");
        }
        for (k, v) in self.when.pairs() {
            let _ = writeln!(t, "{k} = {v}");
        }
        if !self.not.is_empty() {
            let pairs: Vec<String> = self
                .not
                .pairs()
                .into_iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            let _ = writeln!(t, "not = {{ {} }}", pairs.join(", "));
        }
        if let Some(d) = self.delay {
            let _ = writeln!(t, "delay = \"{d}s\"");
        }
        if let Some(a) = self.autowhite {
            let _ = writeln!(t, "autowhite = \"{a}s\"");
        }
        if let Some(c) = self.code {
            let _ = writeln!(t, "code = {c}");
        }
        if let Some(e) = &self.ecode {
            let _ = writeln!(t, "ecode = {}", toml_str(e));
        }
        if let Some(m) = &self.msg {
            let _ = writeln!(t, "msg = {}", toml_str(m));
        }
        if self.nolog {
            t.push_str("nolog = true\n");
        }
        if self.flushaddr {
            t.push_str("flushaddr = true\n");
        }
        t
    }
}

fn describe(t: Option<&Token>) -> String {
    match t {
        None => "nothing".into(),
        Some(t) if t.quoted => format!("\"{}\"", t.text),
        Some(t) => format!("`{}`", t.text),
    }
}

/// Splits `!from` into `!` and `from` (not `!=`).
fn split_negations(toks: &[Token]) -> Vec<Token> {
    let mut v = Vec::with_capacity(toks.len());
    for t in toks {
        match t.text.strip_prefix('!') {
            Some(rest) if !t.quoted && rest.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                v.push(Token {
                    text: "!".into(),
                    quoted: false,
                    line: t.line,
                });
                v.push(Token {
                    text: rest.to_owned(),
                    quoted: false,
                    line: t.line,
                });
            }
            _ => v.push(t.clone()),
        }
    }
    v
}

/// Translates `racl [id] action clause... value...` (the statement with its keyword).
fn parse_racl(st: &[Token], defs: &Defs) -> Result<Rule, String> {
    let toks = split_negations(st.get(1..).unwrap_or(&[]));
    let mut rule = Rule::default();
    let mut i = 0;
    if let Some(id) = toks.first().filter(|t| t.quoted) {
        i = 1;
        if !id.text.trim().is_empty() {
            rule.id = Some(id.text.clone());
        }
    }
    rule.action = match toks.get(i).and_then(keyword).as_deref() {
        Some("whitelist") => "whitelist",
        Some("greylist") => "greylist",
        Some("blacklist") => "blacklist",
        Some("continue") => "continue",
        _ => {
            return Err(format!(
                "expected whitelist, greylist, blacklist or continue, found {}",
                describe(toks.get(i))
            ));
        }
    };
    i += 1;
    let mut negate = false;
    let mut positive: Vec<Kind> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    while let Some(t) = toks.get(i) {
        i += 1;
        let Some(kw) = keyword(t) else {
            return Err(format!("unexpected {}", describe(Some(t))));
        };
        if matches!(kw.as_str(), "not" | "no" | "!") {
            if negate {
                return Err("`not` twice in a row".into());
            }
            negate = true;
            continue;
        }
        let clause = if kw == "list" {
            let name = toks
                .get(i)
                .filter(|t| t.quoted)
                .ok_or("list: expected a quoted list name")?;
            i += 1;
            let def = defs
                .lists
                .get(&name.text)
                .ok_or_else(|| format!("list \"{}\" is not defined before use", name.text))?;
            Some(list_clause(&name.text, def, defs, &mut rule)?)
        } else if let Some(kind) = Kind::parse(&kw) {
            let n = match kind {
                // `rcptcount >= 10` or `rcptcount >=10`.
                Kind::RcptCount
                    if toks
                        .get(i)
                        .is_some_and(|t| t.text.chars().all(|c| "<>=!".contains(c))) =>
                {
                    2
                }
                _ => 1,
            };
            let args = toks.get(i..i + n).unwrap_or(&[]);
            i += n;
            let c = clause_values(kind, args, defs.extended, defs, &mut rule)?;
            Some((kind, c))
        } else {
            None
        };
        if let Some((kind, c)) = clause {
            if negate {
                rule.not.merge(c)?;
                negate = false;
            } else {
                if positive.contains(&kind) {
                    return Err(format!(
                        "two {} clauses: milter-greylist requires both to match, one clause here matches either",
                        kind.conf()
                    ));
                }
                positive.push(kind);
                rule.when.merge(c)?;
            }
            continue;
        }
        if UNSUPPORTED_CLAUSES.contains(&kw.as_str()) {
            return Err(format!(
                "clause `{kw}` is not supported (dropping it would widen the rule)"
            ));
        }
        if kw.starts_with('$') || kw.starts_with("*$") {
            return Err(format!("properties ({}) are not supported", t.text));
        }
        if negate {
            return Err(format!("`not` must be followed by a clause, not `{kw}`"));
        }
        let once = |seen: &mut Vec<String>| {
            if seen.contains(&kw) {
                Err(format!("{kw} given twice"))
            } else {
                seen.push(kw.clone());
                Ok(())
            }
        };
        let arg = |i: &mut usize| -> Result<String, String> {
            let a = toks
                .get(*i)
                .map(|t| t.text.trim().to_owned())
                .ok_or_else(|| format!("{kw}: missing value"))?;
            *i += 1;
            Ok(a)
        };
        match kw.as_str() {
            "default" => rule.default = true,
            "delay" | "autowhite" => {
                once(&mut seen)?;
                let a = arg(&mut i)?;
                let secs = parse_mg_time(&a).ok_or_else(|| format!("{kw}: {a:?} is not a time"))?;
                if kw == "delay" {
                    rule.delay = Some(secs);
                } else {
                    rule.autowhite = Some(secs);
                }
            }
            "code" => {
                once(&mut seen)?;
                let a = arg(&mut i)?;
                rule.code = Some(
                    a.parse()
                        .map_err(|_| format!("code: {a:?} is not a number"))?,
                );
            }
            "ecode" => {
                once(&mut seen)?;
                rule.ecode = Some(arg(&mut i)?);
            }
            "msg" => {
                once(&mut seen)?;
                rule.msg = Some(
                    toks.get(i)
                        .map(|t| t.text.clone())
                        .ok_or("msg: missing value")?,
                );
                i += 1;
            }
            "nolog" => rule.nolog = true,
            "flushaddr" => rule.flushaddr = true,
            v if UNSUPPORTED_VALUES.contains(&v) => {
                arg(&mut i)?;
                // `addheader "X-Foo: bar",2`.
                if let Some(n) = toks.get(i).filter(|t| !t.quoted && t.text.starts_with(',')) {
                    i += if n.text == "," { 2 } else { 1 };
                }
                rule.notes.push(format!("`{v}` is not supported, dropped"));
            }
            _ => return Err(format!("unexpected {}", describe(Some(t)))),
        }
    }
    if negate {
        return Err("`not` at the end of the line".into());
    }
    if rule.default && !(rule.when.is_empty() && rule.not.is_empty()) {
        return Err("default cannot be combined with other clauses".into());
    }
    if !rule.default && rule.when.is_empty() && rule.not.is_empty() {
        return Err("no clause".into());
    }
    if !rule.not.tls.is_empty() {
        return Err(
            "`not tls`: milter-greylist's tls clause also requires a verified certificate, which a `not` table cannot express"
                .into(),
        );
    }
    if !rule.when.tls.is_empty() {
        if !rule.when.macros.is_empty() {
            return Err(
                "tls with sm_macro: the {verify} = OK condition of milter-greylist's tls clause cannot be added to another macro clause"
                    .into(),
            );
        }
        rule.when.macros.push(MacroOut {
            name: "{verify}".into(),
            value: Some("OK".into()),
        });
        rule.comments
            .push("tls: milter-greylist only matches verified certificates ({verify} = OK)".into());
    }
    values_for_action(&mut rule);
    Ok(rule)
}

/// Drops the values the rule's action does not use, and notes format tokens in `msg`.
fn values_for_action(rule: &mut Rule) {
    let action = rule.action;
    if action != "greylist" {
        for (k, set) in [
            ("delay", rule.delay.take().is_some()),
            ("autowhite", rule.autowhite.take().is_some()),
        ] {
            if set {
                rule.notes
                    .push(format!("{k} only applies to greylist rules, dropped"));
            }
        }
    }
    let replies = matches!(action, "greylist" | "blacklist");
    if !replies {
        for (k, set) in [
            ("code", rule.code.take().is_some()),
            ("ecode", rule.ecode.take().is_some()),
            ("msg", rule.msg.take().is_some()),
        ] {
            if set {
                rule.notes.push(format!(
                    "{k} only applies to greylist and blacklist rules, dropped"
                ));
            }
        }
    }
    let class = if action == "blacklist" { 5 } else { 4 };
    if let Some(c) = rule.code
        && c / 100 != class
    {
        rule.notes.push(format!(
            "code {c} is not a {class}xx code, which a {action} rule needs; dropped"
        ));
        rule.code = None;
    }
    if let Some(e) = &rule.ecode
        && !crate::acl::is_enhanced_code(e, class)
    {
        rule.notes.push(format!(
            "ecode {e:?} is not a {class}.x.y code, which a {action} rule needs; dropped"
        ));
        rule.ecode = None;
    }
    if let Some(m) = &rule.msg {
        if m.chars().any(char::is_control) {
            rule.notes
                .push("msg has control characters, dropped".into());
            rule.msg = None;
        } else {
            let tokens = format_tokens(m);
            if !tokens.is_empty() {
                rule.notes.push(format!(
                    "msg: format tokens ({}) are not expanded here, the text is kept as written",
                    tokens.join(", ")
                ));
            }
        }
    }
}

/// milter-greylist format tokens in a string: `%r`, `%M{...}`, ...
fn format_tokens(s: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            continue;
        }
        let Some(&n) = it.peek() else { break };
        if n.is_whitespace() {
            continue;
        }
        it.next();
        let mut tok = format!("%{n}");
        if it.peek() == Some(&'{') {
            for c in it.by_ref() {
                tok.push(c);
                if c == '}' {
                    break;
                }
            }
        }
        if !v.contains(&tok) {
            v.push(tok);
        }
    }
    v
}

/// The entries of one clause (`kind` with its arguments).
fn clause_values(
    kind: Kind,
    args: &[Token],
    extended: bool,
    defs: &Defs,
    rule: &mut Rule,
) -> Result<Clauses, String> {
    let mut c = Clauses::default();
    let t = args
        .first()
        .ok_or_else(|| format!("{}: missing value", kind.conf()))?;
    match kind {
        Kind::RcptCount => {
            let s: Vec<&str> = args.iter().map(|t| t.text.as_str()).collect();
            let s = s.join(" ");
            if s.contains('$') {
                return Err(format!("rcptcount {s}: properties are not supported"));
            }
            let cmp = crate::acl::CountCmp::parse(&s)
                .filter(|_| s.trim_start().starts_with(['<', '>', '=', '!']))
                .ok_or_else(|| format!("rcptcount: {s:?} is not an operator and a number"))?;
            c.rcptcount = Some(cmp.to_string());
        }
        Kind::Dnsrbl => {
            let def = defs
                .dnsrbl
                .get(&t.text)
                .ok_or_else(|| format!("dnsrbl \"{}\" is not defined before use", t.text))?;
            let z = &def.zone;
            if z.contains(char::is_whitespace) || z.starts_with('.') {
                return Err(format!("dnsrbl \"{}\": {z:?} is not a DNS zone", t.text));
            }
            let comment = format!(
                "dnsrbl \"{}\" (line {}): {z} {}",
                t.text, def.line, def.answer
            );
            if !rule.comments.contains(&comment) {
                rule.comments.push(comment);
            }
            // The answers that count as a listing carry over exactly; 127.0.0.0/8 is
            // the default (which also leaves out the lists' 127.255.255.x errors).
            let entry = match def.net {
                ipnet::IpNet::V4(n) if n.to_string() == "127.0.0.0/8" => z.clone(),
                ipnet::IpNet::V4(n) => format!("{z} {n}"),
                ipnet::IpNet::V6(_) => {
                    return Err(format!(
                        "dnsrbl \"{}\": the answer {} is not an IPv4 address (DNS lists answer with A records)",
                        t.text, def.answer
                    ));
                }
            };
            c.dnsrbl.push(entry);
        }
        Kind::Spf => {
            // milter-greylist's names for the two error results, and RFC 7208's.
            let v = match t.text.to_ascii_lowercase().as_str() {
                v @ ("pass" | "fail" | "softfail" | "neutral" | "none" | "temperror"
                | "permerror") => v.to_owned(),
                "error" => "temperror".to_owned(),
                "unknown" => "permerror".to_owned(),
                "self" => {
                    return Err(
                        "spf self (a record that would also authorise this host) is not supported"
                            .into(),
                    );
                }
                other => return Err(format!("spf: {other:?} is not an SPF result")),
            };
            c.spf.push(v);
        }
        Kind::Macro => {
            let def = defs
                .macros
                .get(&t.text)
                .ok_or_else(|| format!("sm_macro \"{}\" is not defined before use", t.text))?;
            let bare = def.macro_name.trim_start_matches('{').trim_end_matches('}');
            if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "sm_macro \"{}\": {:?} is not a macro name",
                    t.text, def.macro_name
                ));
            }
            let value = match &def.value {
                Ok(MacroValue::Literal(l))
                    if l.len() >= 2 && l.starts_with('/') && l.ends_with('/') =>
                {
                    // Would read as a regular expression: exact and case-sensitive.
                    Some(format!("/(?-i)^{}$/", regex::escape(l)))
                }
                Ok(MacroValue::Literal(l)) => Some(l.clone()),
                Ok(MacroValue::Regex(r, re)) => {
                    r.note("sm_macro", re, &mut rule.notes);
                    Some(format!("/{}/", r.rust))
                }
                Ok(MacroValue::Unset) => None,
                Err(e) => {
                    return Err(format!("sm_macro \"{}\" (line {}): {e}", t.text, def.line));
                }
            };
            let comment = format!(
                "sm_macro \"{}\" (line {}): {}",
                t.text, def.line, def.macro_name
            );
            if !rule.comments.contains(&comment) {
                rule.comments.push(comment);
            }
            c.macros.push(MacroOut {
                name: def.macro_name.clone(),
                value,
            });
        }
        k => {
            let v = text_value(k, t, extended, defs.domainexact, &mut rule.notes)?;
            if let Some(l) = c.list_mut(k) {
                l.push(v);
            }
        }
    }
    Ok(c)
}

/// The clause a `list "name"` stands for.
fn list_clause(
    name: &str,
    def: &ListDef,
    defs: &Defs,
    rule: &mut Rule,
) -> Result<(Kind, Clauses), String> {
    let kind = match Kind::parse(&def.kind) {
        Some(Kind::RcptCount) | None => {
            return Err(format!(
                "list \"{name}\" is a {} list, which is not supported",
                def.kind
            ));
        }
        Some(k) => k,
    };
    if def.items.is_empty() {
        return Err(format!("list \"{name}\" is empty"));
    }
    let mut c = Clauses::default();
    let mut i = 0;
    while let Some(item) = def.items.get(i) {
        i += 1;
        let mut item = item.clone();
        // `192.0.2.0 /24` written apart.
        if kind == Kind::Addr
            && let Some(m) = def
                .items
                .get(i)
                .filter(|t| !t.quoted && t.text.starts_with('/') && !item.text.contains('/'))
        {
            item.text.push_str(&m.text);
            i += 1;
        }
        let v = clause_values(kind, std::slice::from_ref(&item), def.extended, defs, rule)
            .map_err(|e| format!("list \"{name}\" (line {}): {e}", item.line))?;
        c.merge(v)?;
    }
    Ok((kind, c))
}

/// One value of an `addr`, `domain`, `helo`, `from`, `rcpt`, `auth` or `tls` clause.
fn text_value(
    kind: Kind,
    t: &Token,
    extended: bool,
    domainexact: bool,
    notes: &mut Vec<String>,
) -> Result<String, String> {
    let what = kind.conf();
    if let Some(re) = regex_of(t) {
        if kind == Kind::Addr {
            return Err(format!("addr: {:?} is not an address or network", t.text));
        }
        let r = convert_regex(re, extended).map_err(|e| format!("{what} /{re}/: {e}"))?;
        r.note(what, re, notes);
        if matches!(kind, Kind::From | Kind::Rcpt) && r.anchors {
            notes.push(format!(
                "{what} /{re}/: milter-greylist matches it against the address in angle brackets (<user@example.com>), here against the bare address; check its anchors"
            ));
        }
        return Ok(format!("/{}/", r.rust));
    }
    let raw = t.text.as_str();
    let empty = || format!("{what}: empty value");
    match kind {
        Kind::Addr => Cidr::parse(raw)
            .map(|c| c.0.to_string())
            .ok_or_else(|| format!("addr: {raw:?} is not an address or network")),
        Kind::From | Kind::Rcpt => {
            // milter-greylist strips these before its substring match.
            let s = raw
                .trim_start_matches(['<', ' ', '\t'])
                .trim_end_matches(['>', ' ', '\t']);
            if s.is_empty() {
                return Err(empty());
            }
            if is_mail_literal(s) {
                return Ok(s.to_owned());
            }
            let re = regex::escape(s);
            notes.push(format!(
                "{what} {raw:?} is neither an address nor a domain: translated to /{re}/, the substring match milter-greylist does"
            ));
            Ok(format!("/{re}/"))
        }
        Kind::Domain => {
            let s = raw.trim();
            if s.is_empty() {
                return Err(empty());
            }
            if is_domain(s, false) {
                return Ok(s.to_owned());
            }
            let re = if domainexact {
                format!("(^|\\.){}$", regex::escape(s))
            } else {
                format!("{}$", regex::escape(s))
            };
            notes.push(format!(
                "domain {raw:?} does not start with a DNS label: translated to /{re}/, the suffix match milter-greylist does"
            ));
            Ok(format!("/{re}/"))
        }
        _ => {
            let s = raw.trim();
            if s.is_empty() {
                return Err(empty());
            }
            if kind == Kind::Helo && s.contains('%') {
                return Err(format!(
                    "helo {raw:?}: milter-greylist expands format tokens in it"
                ));
            }
            if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
                // Would read as a regular expression here.
                return Ok(format!("/^{}$/", regex::escape(s)));
            }
            Ok(s.to_owned())
        }
    }
}

/// Whether a `from`/`rcpt` literal reads as `user@domain`, `user@`, `@domain` or a
/// domain with a dot.
fn is_mail_literal(s: &str) -> bool {
    let local = |l: &str| {
        !l.is_empty()
            && !l.starts_with(['.', '/'])
            && l.chars()
                .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
    };
    match s.split_once('@') {
        None => is_domain(s, true),
        Some((_, d)) if d.contains('@') => false,
        Some(("", d)) => is_domain(d, false),
        Some((l, "")) => local(l),
        Some((l, d)) => local(l) && is_domain(d, false),
    }
}

/// Whether `s` is a DNS name (labels of letters, digits, `-` and `_`), with at least one
/// dot when `dotted`.
fn is_domain(s: &str, dotted: bool) -> bool {
    (!dotted || s.contains('.'))
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// Checks the rules the daemon's way, drops the delays it would refuse, names the rules
/// and reports what was translated with changes.
fn finish_rules(
    rules: Vec<Rule>,
    retry_window: u64,
    warn: &mut impl FnMut(usize, String),
) -> Vec<Rule> {
    #[derive(serde::Deserialize)]
    struct One {
        acl: Vec<crate::acl::RuleConfig>,
    }
    let mut kept = Vec::with_capacity(rules.len());
    for mut r in rules {
        if let Some(d) = r.delay
            && d >= retry_window
        {
            r.notes.push(format!(
                "delay {d}s is not shorter than the retry window ({retry_window}s), dropped"
            ));
            r.delay = None;
        }
        let mut probe = r.clone();
        probe.name = Some(format!("line {}", r.line));
        let errors: Vec<String> = match toml::from_str::<One>(&probe.to_toml()) {
            Err(e) => vec![e.message().trim().to_owned()],
            Ok(one) => crate::acl::validate(&one.acl, retry_window)
                .into_iter()
                .map(|(_, _, m)| m)
                .collect(),
        };
        if errors.is_empty() {
            kept.push(r);
        } else {
            warn(
                r.line,
                format!("racl not translated: {}", errors.join("; ")),
            );
        }
    }
    let defaults: std::collections::HashSet<String> = kept
        .iter()
        .enumerate()
        .filter(|(_, r)| r.id.is_none())
        .map(|(i, _)| format!("acl#{}", i + 1))
        .collect();
    let mut used = std::collections::HashSet::new();
    for r in &mut kept {
        let Some(id) = r.id.clone() else { continue };
        let mut name = id.clone();
        if used.contains(&name) || defaults.contains(&name) {
            name = format!("{id} (line {})", r.line);
            while used.contains(&name) || defaults.contains(&name) {
                name.push('\'');
            }
            r.notes.push(format!(
                "id {id:?} names another rule too; this one is {name:?}"
            ));
        }
        used.insert(name.clone());
        r.name = Some(name);
    }
    for r in &kept {
        if !r.notes.is_empty() {
            warn(
                r.line,
                format!("racl translated with changes: {}", r.notes.join("; ")),
            );
        }
    }
    kept
}

/// A regular expression of greylist.conf in our syntax.
struct Converted {
    rust: String,
    /// It has `^`/`$` anchors or angle brackets.
    anchors: bool,
    /// A basic expression with `(`, `)`, `{`, `}`, `+`, `?` or `|`, which are plain
    /// characters there (operators in extended ones).
    plain_ops: bool,
}

impl Converted {
    fn note(&self, what: &str, re: &str, notes: &mut Vec<String>) {
        if self.plain_ops {
            notes.push(format!(
                "{what} /{re}/ is a POSIX basic expression (no extendedregex before it): ( ) {{ }} + ? | in it are plain characters, kept so"
            ));
        }
    }
}

/// Rewrites and checks a greylist.conf regular expression (see [`posix_regex`]).
fn convert_regex(re: &str, extended: bool) -> Result<Converted, String> {
    let c = posix_regex(re, extended)?;
    crate::config::Pattern::compile(&c.rust)?;
    Ok(c)
}

const POSIX_CLASSES: &[&str] = &[
    "alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space",
    "upper", "xdigit",
];

/// Rewrites a POSIX regular expression, basic or (`extended`) extended as milter-greylist
/// compiles it, into the `regex` crate's syntax with the same meaning. Constructs whose
/// meaning differs between POSIX implementations, and back-references, are refused.
fn posix_regex(re: &str, extended: bool) -> Result<Converted, String> {
    let c: Vec<char> = re.chars().collect();
    let mut out = String::with_capacity(re.len() + 8);
    let mut anchors = false;
    let mut plain_ops = false;
    // Basic syntax: at the start of the expression or of a group, `*` is literal.
    let mut start = true;
    let mut i = 0;
    while let Some(&ch) = c.get(i) {
        let at_start = std::mem::replace(&mut start, false);
        i += 1;
        match ch {
            '[' => {
                let (end, angle) = bracket(&c, i, &mut out)?;
                anchors |= angle;
                i = end;
            }
            '\\' => {
                let n = *c.get(i).ok_or("it ends with a backslash")?;
                i += 1;
                match n {
                    '(' if !extended => {
                        out.push('(');
                        start = true;
                    }
                    ')' if !extended => out.push(')'),
                    '{' if !extended => {
                        let mut body = String::new();
                        loop {
                            match (c.get(i), c.get(i + 1)) {
                                (Some('\\'), Some('}')) => {
                                    i += 2;
                                    break;
                                }
                                (Some(&d), _) if d.is_ascii_digit() || d == ',' => {
                                    body.push(d);
                                    i += 1;
                                }
                                _ => return Err("invalid \\{...\\} interval".into()),
                            }
                        }
                        let _ = write!(out, "{{{body}}}");
                    }
                    '}' if !extended => return Err("\\} without \\{".into()),
                    '+' | '?' | '|' if !extended => {
                        return Err(format!(
                            "\\{n} means different things in different POSIX implementations"
                        ));
                    }
                    '1'..='9' => return Err("back-references are not supported".into()),
                    'b' | 'B' | 'w' | 'W' | 's' | 'S' | '<' | '>' => {
                        out.push('\\');
                        out.push(n);
                    }
                    n if n.is_ascii_punctuation() => {
                        out.push_str(&regex::escape(n.encode_utf8(&mut [0; 4])));
                    }
                    n => return Err(format!("\\{n} is not a POSIX escape")),
                }
            }
            '^' if extended || at_start => {
                out.push('^');
                anchors = true;
                start = !extended;
            }
            '^' => out.push_str("\\^"),
            '$' if extended
                || c.get(i).is_none()
                || (c.get(i) == Some(&'\\') && c.get(i + 1) == Some(&')')) =>
            {
                out.push('$');
                anchors = true;
            }
            '$' => out.push_str("\\$"),
            '*' if !extended && at_start => out.push_str("\\*"),
            '(' | ')' | '{' | '}' | '+' | '?' | '|' if !extended => {
                plain_ops = true;
                out.push('\\');
                out.push(ch);
            }
            '<' | '>' => {
                anchors = true;
                out.push(ch);
            }
            ']' => out.push_str("\\]"),
            _ => out.push(ch),
        }
    }
    Ok(Converted {
        rust: out,
        anchors,
        plain_ops,
    })
}

/// Copies a bracket expression whose `[` is before `i`; returns the index after its `]`
/// and whether it lists an angle bracket.
fn bracket(c: &[char], mut i: usize, out: &mut String) -> Result<(usize, bool), String> {
    let mut angle = false;
    out.push('[');
    if c.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    if c.get(i) == Some(&']') {
        out.push_str("\\]");
        i += 1;
    }
    loop {
        let ch = *c.get(i).ok_or("unterminated [")?;
        i += 1;
        match ch {
            ']' => {
                out.push(']');
                return Ok((i, angle));
            }
            '[' => match c.get(i) {
                Some(':') => {
                    let rest: String = c.get(i + 1..).unwrap_or(&[]).iter().collect();
                    let end = rest.find(":]").ok_or("unterminated [:")?;
                    let name = rest.get(..end).unwrap_or("");
                    if !POSIX_CLASSES.contains(&name) {
                        return Err(format!("unknown class [:{name}:]"));
                    }
                    let _ = write!(out, "[:{name}:]");
                    i += 1 + name.chars().count() + 2;
                }
                Some('.' | '=') => {
                    return Err("collating elements ([. .], [= =]) are not supported".into());
                }
                _ => out.push_str("\\["),
            },
            '\\' => out.push_str("\\\\"),
            '&' | '~' => {
                out.push('\\');
                out.push(ch);
            }
            '-' if c.get(i) == Some(&'-') => {
                return Err("`--` in a bracket expression is not supported".into());
            }
            '<' | '>' => {
                angle = true;
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
}

/// The kind of a dump entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpKind {
    /// Greylisted; the time is when it becomes acceptable.
    Pending,
    /// Auto-whitelisted; the time is when it expires.
    AutoWhitelisted,
    /// Tarpitted (not imported).
    Tarpit,
}

/// One tuple from a milter-greylist dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpRecord {
    /// 1-based line in the dump.
    pub line: usize,
    /// Client address.
    pub ip: IpAddr,
    /// Sender as dumped (brackets removed).
    pub from: String,
    /// Recipient as dumped (brackets removed).
    pub rcpt: String,
    /// Unix time (see [`DumpKind`]).
    pub time: u64,
    /// Pending, auto-whitelisted or tarpit.
    pub kind: DumpKind,
}

/// The result of [`import_db`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbImport {
    /// Entries read.
    pub records: Vec<DumpRecord>,
    /// Lines that could not be read.
    pub warnings: Vec<ImportWarning>,
}

/// Reads milter-greylist's dump file.
pub fn import_db(text: &str) -> DbImport {
    let mut r = DbImport::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.split_once('#').map_or(raw, |(a, _)| a).trim();
        if l.is_empty() {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(ip), Some(from), Some(rcpt), Some(time)) =
            (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            r.warnings.push(ImportWarning {
                line,
                message: "expected: IP <from> <rcpt> TIME [AUTO|TARPIT t]".into(),
            });
            continue;
        };
        let Some(ip) = parse_client_addr(ip) else {
            r.warnings.push(ImportWarning {
                line,
                message: format!("{ip:?} is not an IP address"),
            });
            continue;
        };
        let Ok(time) = time.parse::<u64>() else {
            r.warnings.push(ImportWarning {
                line,
                message: format!("{time:?} is not a unix time"),
            });
            continue;
        };
        let kind = match f.get(4).copied() {
            None => DumpKind::Pending,
            Some("AUTO") => DumpKind::AutoWhitelisted,
            Some("TARPIT") => DumpKind::Tarpit,
            Some(other) => {
                r.warnings.push(ImportWarning {
                    line,
                    message: format!("unknown record type {other:?}"),
                });
                continue;
            }
        };
        let unb = |s: &str| s.trim_start_matches('<').trim_end_matches('>').to_owned();
        r.records.push(DumpRecord {
            line,
            ip,
            from: unb(from),
            rcpt: unb(rcpt),
            time,
            kind,
        });
    }
    r
}

impl DumpRecord {
    /// Our key and record for this entry under `params` and the prefix lengths, or
    /// `None` for tarpit entries. A pending entry keeps its acceptable time (first seen
    /// is set `delay` before it); an auto-whitelisted entry keeps its expiry.
    pub fn to_record(&self, params: &Params, v4: u8, v6: u8) -> Option<(Key, TupleRecord)> {
        let net = mask(self.ip, v4, v6);
        let key = Key::new(
            &net,
            &normalize_sender(&self.from),
            &normalize_recipient(&self.rcpt),
        );
        let rec = match self.kind {
            DumpKind::Tarpit => return None,
            DumpKind::Pending => {
                let first = self.time.saturating_sub(params.delay);
                TupleRecord::pending(first, first.saturating_add(params.retry_window))
            }
            DumpKind::AutoWhitelisted => {
                let seen = self.time.saturating_sub(params.auto_whitelist);
                TupleRecord {
                    state: TupleState::Passed,
                    first_seen: seen,
                    passed_at: seen,
                    last_seen: seen,
                    expires: self.time,
                    attempts: 0,
                    passes: 1,
                }
            }
        };
        Some((key, rec))
    }
}

/// Writes the dump's entries into `store` (tarpit entries skipped); returns how many
/// were written.
pub async fn import_into(
    store: &dyn Store,
    dump: &DbImport,
    params: &Params,
    v4: u8,
    v6: u8,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for r in &dump.records {
        if let Some((k, rec)) = r.to_record(params, v4, v6) {
            store.put(&k, &rec).await?;
            n += 1;
        }
    }
    store.flush().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mg_times() {
        assert_eq!(parse_mg_time("15m"), Some(900));
        assert_eq!(parse_mg_time("1h30m"), Some(5400));
        assert_eq!(parse_mg_time("3d"), Some(259_200));
        assert_eq!(parse_mg_time("1w"), Some(604_800));
        assert_eq!(parse_mg_time("600"), Some(600));
        assert_eq!(parse_mg_time("5x"), None);
        assert_eq!(parse_mg_time(""), None);
        assert_eq!(parse_mg_time("99999999999999999999d"), None);
    }

    #[test]
    fn statements_join_braces_and_continuations() {
        let st = statements("list \"a b\" addr { 1.2.3.4 \\\n 5.6.7.8\n 9.9.9.9 } # c\nquiet\n");
        assert_eq!(st.len(), 2);
        let texts: Vec<&str> = st[0].iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "list", "a b", "addr", "{", "1.2.3.4", "5.6.7.8", "9.9.9.9", "}"
            ]
        );
        assert_eq!(st[0][6].line, 3);
        assert_eq!(st[1][0].text, "quiet");
    }

    #[test]
    fn toml_escaping() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    fn basic(re: &str) -> Result<String, String> {
        posix_regex(re, false).map(|c| c.rust)
    }

    fn ere(re: &str) -> Result<String, String> {
        posix_regex(re, true).map(|c| c.rust)
    }

    #[test]
    fn basic_regexes_are_rewritten() {
        // Common expressions mean the same in both syntaxes.
        assert_eq!(
            basic(r"^news@.*\.example\.com$").unwrap(),
            r"^news@.*\.example\.com$"
        );
        assert_eq!(basic("[0-9][0-9]*").unwrap(), "[0-9][0-9]*");
        // Groups and intervals are escaped in basic syntax; ( ) { } + ? | are characters.
        assert_eq!(basic(r"\(ab\)*x\{2,3\}").unwrap(), "(ab)*x{2,3}");
        assert_eq!(basic("(a|b)+c?{1}").unwrap(), r"\(a\|b\)\+c\?\{1\}");
        // `*` first, `^` inside and `$` inside are characters.
        assert_eq!(basic("*a^b$c$").unwrap(), r"\*a\^b\$c$");
        assert_eq!(basic("^*a").unwrap(), r"^\*a");
        assert_eq!(basic(r"\(^a$\)").unwrap(), "(^a$)");
        // Backslash is a character in a bracket expression; classes are kept.
        assert_eq!(basic(r"[\.]").unwrap(), r"[\\.]");
        assert_eq!(basic("[]a-]").unwrap(), r"[\]a-]");
        assert_eq!(basic("[^[:alpha:]_]").unwrap(), "[^[:alpha:]_]");
        assert_eq!(basic("[a[b&&c~]").unwrap(), r"[a\[b\&\&c\~]");
        assert_eq!(basic(r"a\.b\/c\<d\>").unwrap(), r"a\.b/c\<d\>");
        for bad in [
            r"\(a\)\1",
            r"a\+",
            r"a\|b",
            "[[.a.]]",
            "[[:nope:]]",
            "[a--z]",
            "[ab",
            r"a\{x\}",
            r"a\}",
            "a\\",
            r"\d",
        ] {
            assert!(basic(bad).is_err(), "{bad}");
        }
        let c = posix_regex("(x)", false).unwrap();
        assert!(c.plain_ops && !c.anchors);
        let c = posix_regex("^<a@b>", false).unwrap();
        assert!(c.anchors && !c.plain_ops);
    }

    #[test]
    fn extended_regexes_are_kept() {
        for re in [
            "^(sales|info)@",
            "a+b?c{2,3}",
            r"\.example\.(com|net)$",
            "[^@]+@x",
        ] {
            assert_eq!(ere(re).unwrap(), re);
        }
        assert_eq!(ere(r"[\]").unwrap(), r"[\\]");
        assert_eq!(ere(r"a\(b\)").unwrap(), r"a\(b\)");
        assert!(ere(r"(a)\1").is_err());
        // Compiled the daemon's way: invalid in Rust, refused.
        assert!(convert_regex("a{3,2}", true).is_err());
        assert!(
            convert_regex("(?<n>a)", false).is_ok(),
            "basic: plain characters"
        );
    }

    #[test]
    fn mail_literals() {
        for ok in [
            "user@example.com",
            "first.last+tag@mail.example.co.uk",
            "user@",
            "@example.com",
            "example.com",
            "root@localhost",
            "@localhost",
        ] {
            assert!(is_mail_literal(ok), "{ok}");
        }
        for odd in [
            "postmaster",
            ".example.com",
            "example.com.",
            "john doe@example.com",
            "a@b@c",
            "-x.example.com",
            "/x/",
            "user@[192.0.2.1]",
            "",
        ] {
            assert!(!is_mail_literal(odd), "{odd}");
        }
        assert!(is_domain("mx1.example.net", false) && is_domain("localhost", false));
        assert!(!is_domain("-x.example", false) && !is_domain("a..b", false));
    }

    #[test]
    fn msg_format_tokens() {
        assert_eq!(
            format_tokens("Retry %r in %E, %M{j} %T{%H:%M} 50% off %%"),
            ["%r", "%E", "%M{j}", "%T{%H:%M}", "%%"]
        );
        assert!(format_tokens("no tokens 100 %").is_empty());
    }

    #[test]
    fn negation_tokens() {
        let st = statements("racl whitelist !from a@b.example rcptcount != 2 NOT Addr: 10.0.0.1\n");
        let t = split_negations(&st[0]);
        let kws: Vec<String> = t.iter().filter_map(keyword).collect();
        assert_eq!(
            kws,
            [
                "racl",
                "whitelist",
                "!",
                "from",
                "a@b.example",
                "rcptcount",
                "!=",
                "2",
                "not",
                "addr",
                "10.0.0.1"
            ]
        );
    }

    #[test]
    fn rule_toml() {
        let r = import_conf(
            "racl \"x\" greylist rcpt a@example.com not addr 10.0.0.0/8 delay 1h msg \"Wait \\\"here\\\"\"\n",
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(
            r.toml.ends_with(
                "# line 1: racl \"x\" greylist rcpt a@example.com not addr 10.0.0.0/8 delay 1h msg \"Wait \\\"here\\\"\"\n\
                 [[acl]]\nname = \"x\"\naction = \"greylist\"\nrcpt = [\"a@example.com\"]\n\
                 not = { addr = [\"10.0.0.0/8\"] }\ndelay = \"3600s\"\nmsg = \"Wait \\\"here\\\"\"\n"
            ),
            "{}",
            r.toml
        );
    }
}
