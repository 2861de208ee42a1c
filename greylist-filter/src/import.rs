//! Migration from milter-greylist: its configuration (`import-conf`) and its text dump
//! (`import-db`).
//!
//! [`import_conf`] translates the directives real configurations use (timings, subnet
//! masks, socket, `list` definitions and single-clause `racl whitelist` lines with `addr`,
//! `domain`, `from`, `rcpt` or `list`) into our TOML, with one [`ImportWarning`] (with
//! its line number) for every line it cannot translate faithfully.
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
    authenticated: Option<bool>,
    networks: Vec<String>,
    hosts: Vec<String>,
    senders: Vec<String>,
    recipients: Vec<String>,
    sender_regex: Vec<String>,
    recipient_regex: Vec<String>,
    host_regex: Vec<String>,
}

const CLAUSES: &[&str] = &[
    "addr",
    "domain",
    "from",
    "rawfrom",
    "rcpt",
    "list",
    "helo",
    "mx",
    "geoip",
    "p0f",
    "dnsrbl",
    "rcptcount",
    "auth",
    "tls",
    "spf",
    "dkim",
    "sm_macro",
    "time",
    "header",
    "body",
    "msgsize",
    "spamd",
    "urlcheck",
    "ldapcheck",
    "ratelimit",
    "not",
    "default",
];

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
    let mut lists: HashMap<String, (String, Vec<Token>)> = HashMap::new();
    let mut warn = |line: usize, m: String| warnings.push(ImportWarning { line, message: m });

    for st in statements(text) {
        let Some(first) = st.first() else { continue };
        let line = first.line;
        let kw = first.text.as_str();
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
            "quiet" | "nodetach" => {}
            "noauth" => out.authenticated = Some(false),
            "list" => {
                let name = st.get(1).filter(|t| t.quoted).map(|t| t.text.clone());
                let kind = st.get(2).map(|t| t.text.clone());
                let open = st.iter().position(|t| !t.quoted && t.text == "{");
                let close = st.iter().rposition(|t| !t.quoted && t.text == "}");
                match (name, kind, open, close) {
                    (Some(n), Some(k), Some(o), Some(c)) if o < c => {
                        let items = st.get(o + 1..c).map(<[Token]>::to_vec).unwrap_or_default();
                        lists.insert(n, (k, items));
                    }
                    _ => warn(line, "list: expected list \"name\" type { items }".into()),
                }
            }
            "racl" | "acl" => {
                let mut i = 1;
                // An optional ACL id before the action.
                if st.get(i).is_some_and(|t| {
                    !matches!(
                        t.text.as_str(),
                        "whitelist" | "greylist" | "blacklist" | "continue"
                    )
                }) {
                    i += 1;
                }
                let action = st.get(i).map(|t| t.text.as_str()).unwrap_or("");
                let rest = st.get(i + 1..).unwrap_or(&[]);
                translate_racl(line, action, rest, &lists, &mut out, &mut warn);
            }
            "dumpfile" => warn(
                line,
                "dumpfile: not translated; set [store] path and run `import-db` on the dump".into(),
            ),
            "peer" | "syncaddr" | "syncsrcaddr" | "syncmaxqlen" => warn(
                line,
                format!("{kw}: MX peer sync is not supported; share one store instead"),
            ),
            _ => warn(line, format!("{kw}: directive not supported, ignored")),
        }
    }

    let mut t = String::from(
        "# Translated from milter-greylist's greylist.conf by greylist-filter import-conf.\n\
         # Keys not set here take greylist-filter's defaults (see greylist.toml.example).\n\n[greylist]\n",
    );
    if let Some(d) = out.delay {
        let _ = writeln!(t, "delay = \"{d}s\"");
    }
    if let Some(tmo) = out.timeout {
        // milter-greylist's timeout counts from when the tuple became acceptable;
        // our retry window counts from the first attempt.
        let delay = out.delay.unwrap_or(Params::default().delay);
        let _ = writeln!(t, "retry_window = \"{}s\"", delay.saturating_add(tmo));
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
    t.push_str("\n[whitelist]\n");
    if let Some(a) = out.authenticated {
        let _ = writeln!(t, "authenticated = {a}");
    }
    for (k, v) in [
        ("networks", &out.networks),
        ("hosts", &out.hosts),
        ("senders", &out.senders),
        ("recipients", &out.recipients),
        ("sender_regex", &out.sender_regex),
        ("recipient_regex", &out.recipient_regex),
        ("host_regex", &out.host_regex),
    ] {
        if !v.is_empty() {
            let _ = writeln!(t, "{k} = {}", toml_list(v));
        }
    }
    ConfImport { toml: t, warnings }
}

fn regex_of(t: &Token) -> Option<&str> {
    if t.quoted {
        return None;
    }
    t.text
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix('/'))
        .filter(|r| !r.is_empty())
}

/// Adds one whitelist value of clause `kind` (`addr`, `domain`, `from`, `rcpt`).
fn add_value(
    line: usize,
    kind: &str,
    v: &Token,
    out: &mut Out,
    warn: &mut dyn FnMut(usize, String),
) {
    if let Some(re) = regex_of(v) {
        if let Err(e) = regex::Regex::new(re) {
            warn(
                line,
                format!("regular expression /{re}/ does not compile here: {e}"),
            );
            return;
        }
        match kind {
            "from" => out.sender_regex.push(re.to_owned()),
            "rcpt" => out.recipient_regex.push(re.to_owned()),
            "domain" => out.host_regex.push(re.to_owned()),
            _ => warn(line, format!("{kind}: regular expressions not supported")),
        }
        return;
    }
    let s = v.text.trim();
    match kind {
        "addr" => match Cidr::parse(s) {
            Some(c) => out.networks.push(c.0.to_string()),
            None => warn(line, format!("addr: {s:?} is not an address or network")),
        },
        "domain" => out.hosts.push(s.to_ascii_lowercase()),
        "from" => out.senders.push(s.to_lowercase()),
        "rcpt" => out.recipients.push(s.to_lowercase()),
        _ => warn(line, format!("list type {kind} not supported")),
    }
}

fn translate_racl(
    line: usize,
    action: &str,
    rest: &[Token],
    lists: &HashMap<String, (String, Vec<Token>)>,
    out: &mut Out,
    warn: &mut dyn FnMut(usize, String),
) {
    let clause = rest.first().map(|t| t.text.as_str()).unwrap_or("");
    let extra = rest.get(2..).unwrap_or(&[]);
    match (action, clause) {
        ("greylist", "default") if rest.len() == 1 => return,
        ("whitelist", "default") => {
            return warn(
                line,
                "racl whitelist default: greylisting everyone else is the default here; use [whitelist] opt_in to limit greylisting to some recipients".into(),
            );
        }
        ("whitelist", _) => {}
        _ => {
            return warn(
                line,
                format!(
                    "racl {action} {clause}: only whitelist ACLs (and greylist default) are translated"
                ),
            );
        }
    }
    if extra
        .iter()
        .any(|t| !t.quoted && CLAUSES.contains(&t.text.as_str()))
    {
        return warn(
            line,
            "racl with several clauses (AND) is not supported, not translated".into(),
        );
    }
    let Some(value) = rest.get(1) else {
        return warn(line, format!("racl whitelist {clause}: missing value"));
    };
    match clause {
        "addr" | "domain" | "from" | "rcpt" => add_value(line, clause, value, out, warn),
        "list" => match lists.get(&value.text) {
            Some((kind, items)) => {
                for it in items {
                    add_value(it.line, kind, it, out, warn);
                }
            }
            None => warn(
                line,
                format!("list {:?} is not defined before use", value.text),
            ),
        },
        other => {
            return warn(
                line,
                format!("racl whitelist {other}: clause not supported, not translated"),
            );
        }
    }
    if !extra.is_empty() {
        warn(
            line,
            "per-ACL values (delay, autowhite, msg, ...) are ignored".into(),
        );
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
}
