//! Configuration: TOML, validated, with every error located at `file:line:column`.
//!
//! [`check_config`] reads a file and returns the [`Config`] or *all* the errors found:
//! syntax and type errors from the TOML parser (located by its byte span), unknown keys
//! (every table denies them), and semantic checks (delay shorter than the retry window,
//! prefix lengths, regular expressions, listed files that must exist, a loopback admin
//! address) located at the offending key.
//!
//! To report more than the first error, parsing is repeated with each reported error's
//! lines blanked out (line numbers stay the same) until the rest parses.
//!
//! Durations are strings like `"300s"`, `"5m"`, `"1h 30m"`, `"35d"` (or plain integers,
//! meaning seconds). See `greylist.toml.example` for every key with its default.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

use crate::policy::Params;

/// One configuration problem, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it is in.
    pub file: PathBuf,
    /// 1-based line (0 if unknown).
    pub line: usize,
    /// 1-based column (0 if unknown).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A duration in whole seconds, written in TOML as `"5m"`, `"35d"`, `"300s"` or `300`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Seconds(pub u64);

impl Seconds {
    /// Parses `"5m"`, `"1h 30m"`, `"35d"`, `"2w"`, or a bare number of seconds.
    pub fn parse(s: &str) -> Option<Seconds> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u64>() {
            return Some(Seconds(n));
        }
        humantime::parse_duration(s)
            .ok()
            .map(|d| Seconds(d.as_secs()))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"300s\", \"5m\", \"24h\" or \"35d\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(Seconds)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                Seconds::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "invalid duration {v:?}: use a number with a unit, e.g. \"300s\", \"5m\", \"24h\", \"35d\""
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// What to do when the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Let the mail through (default): greylisting is an optimisation, not a gate.
    #[default]
    Pass,
    /// Tempfail the recipient.
    Tempfail,
}

impl<'de> Deserialize<'de> for FailMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = FailMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, \"pass\" or \"tempfail\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FailMode, E> {
                Ok(if v {
                    FailMode::Pass
                } else {
                    FailMode::Tempfail
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FailMode, E> {
                match v {
                    "pass" => Ok(FailMode::Pass),
                    "tempfail" => Ok(FailMode::Tempfail),
                    _ => Err(E::custom(format!(
                        "invalid fail_open {v:?}: expected true, false, \"pass\" or \"tempfail\""
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A network in CIDR form; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// Parses `192.0.2.0/24`, `2001:db8::/32`, `192.0.2.1`, `[IPv6:2001:db8::1]`.
    /// Host bits are cleared.
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNet>() {
            return Some(Cidr(n.trunc()));
        }
        let ip = crate::tuple::parse_client_addr(s)?;
        Some(Cidr(IpNet::from(ip)))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid network {s:?}: expected an address or CIDR such as 192.0.2.0/24"
            ))
        })
    }
}

/// A regular expression, compiled when the configuration is read.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Pattern {
    /// Compiles a case-insensitive regular expression; the error names it and says why.
    pub fn compile(s: &str) -> Result<Pattern, String> {
        regex::RegexBuilder::new(s)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map(Pattern)
            .map_err(|e| {
                // regex errors are multi-line drawings; keep the last line (the reason).
                let full = e.to_string();
                let reason = full
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_owned();
                format!("invalid regular expression {s:?}: {reason}")
            })
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::compile(&s).map_err(de::Error::custom)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Timing, grouping and limits.
    pub greylist: GreylistConfig,
    /// Promotion of whole client networks.
    pub host_trust: HostTrustConfig,
    /// The SMTP reply for greylisted recipients.
    pub reply: ReplyConfig,
    /// The `X-Greylist` header.
    pub header: HeaderConfig,
    /// Bypasses and whitelists.
    pub whitelist: WhitelistConfig,
    /// Persistence.
    pub store: StoreConfig,
    /// The milter listener.
    pub milter: MilterConfig,
    /// The admin (metrics and explain) listener.
    pub admin: AdminConfig,
    /// Identities beyond the client network (SPF).
    pub identity: IdentityConfig,
    /// The DNS resolver (SPF).
    pub dns: DnsConfig,
    /// Trust learned from outbound mail.
    pub outbound: OutboundConfig,
    /// Access list rules (`[[acl]]`), in order; see [`crate::acl`].
    pub acl: Vec<crate::acl::RuleConfig>,
}

/// `[outbound]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// When an authenticated user (`{auth_authen}`) sends to `x@d` through this
    /// daemon, replies from `x@d` to that user pass without delay for `trust`.
    /// Default `false`.
    pub learn: bool,
    /// How long a learned reply pre-approval lasts (refreshed by every outbound
    /// message). Default `"30d"`.
    pub trust: Seconds,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            learn: false,
            trust: Seconds(30 * 86_400),
        }
    }
}

/// `[identity]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Key tuples on the SPF-authorised MAIL FROM domain instead of the client network
    /// when SPF passes, so retries from another address of the same sender's pool
    /// match. Never a bypass. Default `false`. Changes need a restart.
    pub spf: bool,
}

/// `[dns]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// The DNS server to ask, `"IP:PORT"` (UDP and TCP). Default: the system's
    /// resolvers (`/etc/resolv.conf`).
    pub server: Option<std::net::SocketAddr>,
    /// Upper bound of one SPF evaluation or DNS lookup, in milliseconds; past it the
    /// answer counts as absent. Default 2000.
    pub timeout_ms: u64,
    /// DNS allow lists (e.g. `"list.dnswl.org"`): a listed client is not greylisted.
    pub dnswl: Vec<String>,
    /// DNS block lists (e.g. `"zen.spamhaus.org"`): a listed client gets
    /// `dnsbl_action`.
    pub dnsbl: Vec<String>,
    /// `"delay"` (default): greylist a listed client with `dnsbl_delay` instead of
    /// the normal delay; `"reject"`: reject it (550 5.7.1).
    pub dnsbl_action: DnsblAction,
    /// The delay for clients on a DNS block list. Default `"30m"`.
    pub dnsbl_delay: Seconds,
    /// Use only the forward-confirmed reverse DNS name of the client (PTR, then its
    /// A/AAAA must contain the address) for host and domain whitelists, instead of
    /// the name the MTA passes. Default `false`.
    pub fcrdns: bool,
}

/// What happens to a client on a DNS block list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DnsblAction {
    /// Greylist with `[dns] dnsbl_delay`.
    #[default]
    Delay,
    /// Reject with 550 5.7.1.
    Reject,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            server: None,
            timeout_ms: 2000,
            dnswl: Vec::new(),
            dnsbl: Vec::new(),
            dnsbl_action: DnsblAction::Delay,
            dnsbl_delay: Seconds(1800),
            fcrdns: false,
        }
    }
}

/// `[greylist]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistConfig {
    /// Minimum time before a retry passes. Default `"5m"`.
    pub delay: Seconds,
    /// Time from the first attempt within which the retry must come. Default `"24h"`.
    pub retry_window: Seconds,
    /// How long a passed tuple stays whitelisted after its last pass. Default `"35d"`;
    /// `"0s"` disables auto-whitelisting.
    pub auto_whitelist: Seconds,
    /// IPv4 prefix length used to group clients. Default 24.
    pub ipv4_prefix: u8,
    /// IPv6 prefix length used to group clients. Default 64.
    pub ipv6_prefix: u8,
    /// Pending tuples allowed per client network; past it, tempfail without storing.
    /// Default 1000; 0 = unlimited.
    pub max_pending_per_network: u32,
    /// On store failure: `true`/`"pass"` (default) lets mail through, `false`/`"tempfail"`
    /// tempfails.
    pub fail_open: FailMode,
    /// Decide and log, but never tempfail (learning mode). Default false.
    pub dry_run: bool,
    /// Risk-scaled delay: `"strict"`, `"balanced"` (default: the delay for everyone)
    /// or `"lenient"`; see [`crate::risk`].
    pub risk: crate::risk::Preset,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        let p = Params::default();
        GreylistConfig {
            delay: Seconds(p.delay),
            retry_window: Seconds(p.retry_window),
            auto_whitelist: Seconds(p.auto_whitelist),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            max_pending_per_network: p.max_pending_per_network,
            fail_open: FailMode::Pass,
            dry_run: false,
            risk: crate::risk::Preset::Balanced,
        }
    }
}

/// `[host_trust]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostTrustConfig {
    /// Distinct passed tuples that make a network trusted. Default 3; 0 disables.
    pub threshold: u32,
    /// How long trust lasts after the last pass. Default `"35d"`.
    pub period: Seconds,
}

impl Default for HostTrustConfig {
    fn default() -> Self {
        HostTrustConfig {
            threshold: 3,
            period: Seconds(35 * 86_400),
        }
    }
}

/// `[reply]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplyConfig {
    /// SMTP code, 4xx. Default 451.
    pub code: u16,
    /// Enhanced status code, `4.x.y`. Default `"4.7.1"`.
    pub status: String,
    /// Reply text. Default: "Greylisted, please try again later".
    pub text: String,
}

impl Default for ReplyConfig {
    fn default() -> Self {
        ReplyConfig {
            code: 451,
            status: "4.7.1".into(),
            text: "Greylisted, please try again later".into(),
        }
    }
}

/// `[header]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderConfig {
    /// Add the header to messages that were delayed. Default true.
    pub enabled: bool,
    /// Header name. Default `"X-Greylist"`.
    pub name: String,
}

impl Default for HeaderConfig {
    fn default() -> Self {
        HeaderConfig {
            enabled: true,
            name: "X-Greylist".into(),
        }
    }
}

/// `[whitelist]`. Loopback is always bypassed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhitelistConfig {
    /// Bypass clients that authenticated (`{auth_authen}` set). Default true.
    pub authenticated: bool,
    /// The site's own networks: always bypassed.
    pub local_networks: Vec<Cidr>,
    /// Client networks that are not greylisted.
    pub networks: Vec<Cidr>,
    /// Client host names or domains (a domain also matches its subdomains), as reported
    /// by the MTA (`{client_name}`), or only the forward-confirmed name with
    /// `[dns] fcrdns = true`.
    pub hosts: Vec<String>,
    /// Sender addresses (`user@example.com`), local parts in any domain (`user@`) or
    /// domains (`example.com`, `@example.com`). Senders are forgeable: prefer network or
    /// host entries.
    pub senders: Vec<String>,
    /// Recipient addresses, local parts (`user@`) or domains that are never greylisted.
    pub recipients: Vec<String>,
    /// Regular expressions (case-insensitive) on the raw sender.
    pub sender_regex: Vec<Pattern>,
    /// Regular expressions (case-insensitive) on the recipient.
    pub recipient_regex: Vec<Pattern>,
    /// Regular expressions (case-insensitive) on the client host name.
    pub host_regex: Vec<Pattern>,
    /// Recipients (addresses or domains) who opted out of greylisting.
    pub opt_out: Vec<String>,
    /// If not empty, only these recipients (addresses or domains) are greylisted.
    pub opt_in: Vec<String>,
    /// Files of networks, one per line (`#` comments).
    pub network_files: Vec<PathBuf>,
    /// Files of host names or domains.
    pub host_files: Vec<PathBuf>,
    /// Files of sender addresses or domains.
    pub sender_files: Vec<PathBuf>,
    /// Files of recipient addresses or domains.
    pub recipient_files: Vec<PathBuf>,
    /// How often the daemon checks the files above for changes (modification time).
    /// Default `"5s"`.
    pub file_check_interval: Seconds,
}

impl Default for WhitelistConfig {
    fn default() -> Self {
        WhitelistConfig {
            authenticated: true,
            local_networks: Vec::new(),
            networks: Vec::new(),
            hosts: Vec::new(),
            senders: Vec::new(),
            recipients: Vec::new(),
            sender_regex: Vec::new(),
            recipient_regex: Vec::new(),
            host_regex: Vec::new(),
            opt_out: Vec::new(),
            opt_in: Vec::new(),
            network_files: Vec::new(),
            host_files: Vec::new(),
            sender_files: Vec::new(),
            recipient_files: Vec::new(),
            file_check_interval: Seconds(5),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The redb file; a relative path is relative to the configuration file's
    /// directory. Default: `greylist.redb` in the working directory (see
    /// [`DEFAULT_STORE`]); `--store` overrides it.
    pub path: Option<PathBuf>,
    /// A Redis server to keep the records in instead of the file,
    /// `redis://HOST:PORT/DB` (several daemons may share it). `--store redis://…`
    /// overrides it. Default: none (the redb file).
    pub redis: Option<String>,
    /// Prefix of every Redis key. Default `"greylist:"`.
    pub redis_prefix: String,
    /// Upper bound, in milliseconds, of connecting to Redis and of each command; a
    /// Redis that does not answer in time counts as a store failure (see
    /// `[greylist] fail_open`). Default 500.
    pub redis_timeout_ms: u64,
    /// How often the expiry sweep runs. Default `"1m"`.
    pub expire_interval: Seconds,
    /// Records deleted per sweep step. Default 1000.
    pub expire_batch: usize,
    /// Auto-whitelisted tuples kept in memory in front of the store, so the common
    /// case (a known sender) needs no database read. Default 100000; 0 disables.
    pub cache_entries: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            redis: None,
            redis_prefix: "greylist:".to_owned(),
            redis_timeout_ms: 500,
            expire_interval: Seconds(60),
            expire_batch: 1000,
            cache_entries: 100_000,
        }
    }
}

/// Whether `s` names a Redis server rather than a store file.
pub fn is_redis_url(s: &str) -> bool {
    ["redis://", "rediss://", "redis+unix://"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// The store file used when neither `[store] path` nor `--store` is given (relative to
/// the working directory).
pub const DEFAULT_STORE: &str = "greylist.redb";

/// The milter socket used when neither `[milter] socket` nor `--listen` is given.
pub const DEFAULT_SOCKET: &str = "inet:7357@127.0.0.1";

/// `[milter]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    /// Listen socket in libmilter syntax. Default [`DEFAULT_SOCKET`],
    /// `inet:7357@127.0.0.1`; packaged installs use
    /// `unix:/run/greylist-filter/milter.sock`.
    pub socket: String,
    /// Unix socket permissions, octal string. Default `"660"`.
    pub socket_mode: String,
    /// Unix socket owner, `user` or `user:group`. Default: unchanged.
    pub socket_owner: Option<String>,
    /// Most MTA connections served at once. Default 4096.
    pub max_connections: usize,
    /// What a connection beyond `max_connections` gets. Default
    /// [`OverLimit::Wait`].
    pub over_limit: OverLimit,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            socket: DEFAULT_SOCKET.into(),
            socket_mode: "660".into(),
            socket_owner: None,
            max_connections: 4096,
            over_limit: OverLimit::Wait,
        }
    }
}

/// `[milter] over_limit`: what happens to a connection beyond
/// `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    /// `"wait"` (default): it waits in the listen backlog until a session
    /// ends; the MTA's connect timeout applies.
    #[default]
    Wait,
    /// `"refuse"`: it is accepted and closed at once (logged), so the MTA
    /// applies its default action without waiting.
    Refuse,
}

impl From<OverLimit> for milter_server::OverLimit {
    fn from(o: OverLimit) -> Self {
        match o {
            OverLimit::Wait => milter_server::OverLimit::Wait,
            OverLimit::Refuse => milter_server::OverLimit::Refuse,
        }
    }
}

impl MilterConfig {
    /// The socket mode as a number, if it is valid octal.
    pub fn mode(&self) -> Option<u32> {
        u32::from_str_radix(&self.socket_mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Loopback address and port for metrics and explain; off if unset.
    pub listen: Option<SocketAddr>,
    /// Allow `listen` on a non-loopback address. The admin interface has no
    /// authentication: only set this behind a firewall. Default false.
    pub allow_non_loopback: bool,
}

impl Config {
    /// The policy parameters.
    pub fn params(&self) -> Params {
        Params {
            delay: self.greylist.delay.0,
            retry_window: self.greylist.retry_window.0,
            auto_whitelist: self.greylist.auto_whitelist.0,
            host_trust_threshold: self.host_trust.threshold,
            host_trust_period: self.host_trust.period.0,
            max_pending_per_network: self.greylist.max_pending_per_network,
            refresh_granularity: Params::default().refresh_granularity,
        }
    }

    /// Parses and validates configuration text; `path` is used in error messages and
    /// to resolve relative file names in whitelist file lists.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut work = text.to_owned();
        let mut config = None;
        for _ in 0..200 {
            match toml::from_str::<Config>(&work) {
                Ok(c) => {
                    config = Some(c);
                    break;
                }
                Err(e) => {
                    let span = e.span();
                    let (line, column) = span.as_ref().map_or((0, 0), |s| {
                        line_col(&work, refine_offset(&work, s, e.message()))
                    });
                    errors.push(ConfigError {
                        file: path.to_owned(),
                        line,
                        column,
                        message: e.message().trim().to_owned(),
                    });
                    let Some(span) = span else { break };
                    let Some(next) = blank_lines(&work, span) else {
                        break;
                    };
                    work = next;
                }
            }
        }
        if let Some(c) = &config {
            validate(c, text, path, &mut errors);
        }
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors),
        }
    }
}

/// Reads and validates the configuration file at `path`, returning every error found.
pub fn check_config(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read configuration: {e}"),
        }]
    })?;
    Config::parse(&text, path)
}

/// 1-based line and column (in characters) of byte offset `at`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Errors inside an array are reported by the parser at the array; when the message
/// quotes the offending value, point at that value instead.
fn refine_offset(text: &str, span: &std::ops::Range<usize>, message: &str) -> usize {
    let quoted = message
        .split_once('"')
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v);
    if let (Some(v), Some(region)) = (quoted, text.get(span.clone()))
        && !v.is_empty()
        && let Some(i) = region.find(&format!("\"{v}\""))
    {
        return span.start + i;
    }
    span.start
}

/// Replaces the lines covered by `span` with empty lines. A table header takes its
/// whole table with it. `None` if that changes nothing.
fn blank_lines(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    let (first, _) = line_col(text, span.start);
    let (last, _) = line_col(text, span.end.saturating_sub(1).max(span.start));
    let mut end = last;
    if lines
        .get(first - 1)
        .is_some_and(|l| l.trim_start().starts_with('['))
    {
        end = first;
        while lines
            .get(end)
            .is_some_and(|l| !l.trim_start().starts_with('['))
        {
            end += 1;
        }
    }
    let mut changed = false;
    for l in lines.iter_mut().take(end).skip(first - 1) {
        if !l.is_empty() {
            *l = "";
            changed = true;
        }
    }
    changed.then(|| lines.join("\n"))
}

/// Line and column of `key` inside `[table]` (top-level if `table` is empty).
pub fn key_position(text: &str, table: &str, key: &str) -> Option<(usize, usize)> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(h) = t.strip_prefix('[') {
            current = h.split(']').next().unwrap_or("").trim().to_owned();
            continue;
        }
        if current != table {
            continue;
        }
        if let Some(column) = key_column(line, key) {
            return Some((i + 1, column));
        }
    }
    None
}

/// The 1-based column of `key` if `line` assigns it (`key = ...`).
fn key_column(line: &str, key: &str) -> Option<usize> {
    let t = line.trim_start();
    t.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
        .then(|| line.len() - t.len() + 1)
}

fn validate(c: &Config, text: &str, path: &Path, errors: &mut Vec<ConfigError>) {
    let mut err = |table: &str, key: &str, message: String| {
        let (line, column) = key_position(text, table, key).unwrap_or((0, 0));
        errors.push(ConfigError {
            file: path.to_owned(),
            line,
            column,
            message,
        });
    };
    let g = &c.greylist;
    if g.delay >= g.retry_window {
        err(
            "greylist",
            if key_position(text, "greylist", "retry_window").is_some() {
                "retry_window"
            } else {
                "delay"
            },
            format!(
                "delay ({}s) must be shorter than retry_window ({}s)",
                g.delay.0, g.retry_window.0
            ),
        );
    }
    if g.ipv4_prefix > 32 {
        err(
            "greylist",
            "ipv4_prefix",
            format!("ipv4_prefix {} is out of range 0..=32", g.ipv4_prefix),
        );
    }
    if g.ipv6_prefix > 128 {
        err(
            "greylist",
            "ipv6_prefix",
            format!("ipv6_prefix {} is out of range 0..=128", g.ipv6_prefix),
        );
    }
    let r = &c.reply;
    if !(400..500).contains(&r.code) {
        err(
            "reply",
            "code",
            format!("reply code {} must be a 4xx temporary failure", r.code),
        );
    }
    let status_ok = {
        let parts: Vec<&str> = r.status.split('.').collect();
        parts.len() == 3
            && parts.first() == Some(&"4")
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if !status_ok {
        err(
            "reply",
            "status",
            format!("reply status {:?} must be an enhanced code 4.x.y", r.status),
        );
    }
    if r.text.chars().any(|ch| ch.is_control()) {
        err(
            "reply",
            "text",
            "reply text must not contain control characters".into(),
        );
    }
    let h = &c.header;
    if h.name.is_empty() || !h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        err(
            "header",
            "name",
            format!("invalid header name {:?}", h.name),
        );
    }
    let w = &c.whitelist;
    for (key, files) in [
        ("network_files", &w.network_files),
        ("host_files", &w.host_files),
        ("sender_files", &w.sender_files),
        ("recipient_files", &w.recipient_files),
    ] {
        for f in files {
            let full = resolve(path, f);
            if !full.is_file() {
                err(
                    "whitelist",
                    key,
                    format!("whitelist file {} does not exist", full.display()),
                );
            }
        }
    }
    if let Some(url) = &c.store.redis
        && !is_redis_url(url)
    {
        err(
            "store",
            "redis",
            format!("{url:?} is not a redis://, rediss:// or redis+unix:// URL"),
        );
    }
    if c.dns.timeout_ms == 0 {
        err("dns", "timeout_ms", "timeout_ms must be at least 1".into());
    }
    if c.store.redis_timeout_ms == 0 {
        err(
            "store",
            "redis_timeout_ms",
            "redis_timeout_ms must be at least 1".into(),
        );
    }
    if c.store.expire_batch == 0 {
        err(
            "store",
            "expire_batch",
            "expire_batch must be at least 1".into(),
        );
    }
    if c.store.expire_interval.0 == 0 {
        err(
            "store",
            "expire_interval",
            "expire_interval must be at least 1s".into(),
        );
    }
    if c.milter.mode().is_none() {
        err(
            "milter",
            "socket_mode",
            format!(
                "socket_mode {:?} is not an octal mode such as \"660\"",
                c.milter.socket_mode
            ),
        );
    }
    if c.milter.max_connections == 0 {
        err(
            "milter",
            "max_connections",
            "max_connections must be at least 1".into(),
        );
    }
    if c.milter.socket.trim().is_empty() {
        err("milter", "socket", "socket must not be empty".into());
    }
    if let Some(a) = c.admin.listen
        && !is_loopback(a.ip())
        && !c.admin.allow_non_loopback
    {
        err(
            "admin",
            "listen",
            format!(
                "admin listener {a} must be on a loopback address (or set allow_non_loopback = true)"
            ),
        );
    }
    if c.whitelist.file_check_interval.0 == 0 {
        err(
            "whitelist",
            "file_check_interval",
            "file_check_interval must be at least 1s".into(),
        );
    }
    for (i, key, message) in crate::acl::validate(&c.acl, g.retry_window.0) {
        let (line, column) = array_table_position(text, "acl", i, key).unwrap_or((0, 0));
        errors.push(ConfigError {
            file: path.to_owned(),
            line,
            column,
            message,
        });
    }
}

/// Line and column of `key` in the `index`-th (0-based) `[[name]]` table, or of the
/// table's header when `key` is `None` or not found there.
pub fn array_table_position(
    text: &str,
    name: &str,
    index: usize,
    key: Option<&str>,
) -> Option<(usize, usize)> {
    let mut seen = 0;
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('[') {
            if header.is_some() {
                break;
            }
            let is_ours = t
                .strip_prefix("[[")
                .and_then(|r| r.split_once("]]"))
                .is_some_and(|(n, _)| n.trim() == name);
            if is_ours {
                if seen == index {
                    header = Some((i + 1, line.len() - t.len() + 1));
                }
                seen += 1;
            }
            continue;
        }
        if let (Some(_), Some(k)) = (header, key)
            && let Some(column) = key_column(line, k)
        {
            return Some((i + 1, column));
        }
    }
    header
}

/// True for loopback addresses (IPv4-mapped IPv6 included).
pub fn is_loopback(ip: IpAddr) -> bool {
    crate::tuple::canonical_ip(ip).is_loopback()
}

/// Resolves a file named in the configuration relative to the configuration's directory.
pub fn resolve(config_path: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_owned()
    } else {
        config_path
            .parent()
            .map_or_else(|| file.to_owned(), |d| d.join(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn redis_store_settings() {
        let c = parse("[store]\nredis = \"redis://127.0.0.1:6379/2\"\nredis_timeout_ms = 250\n")
            .unwrap();
        assert_eq!(c.store.redis.as_deref(), Some("redis://127.0.0.1:6379/2"));
        assert_eq!(c.store.redis_prefix, "greylist:");
        assert_eq!(c.store.redis_timeout_ms, 250);
        let e = parse("[store]\nredis = \"127.0.0.1:6379\"\n").unwrap_err();
        assert!(e[0].to_string().contains("not a redis://"), "{e:?}");
        assert!(is_redis_url("rediss://h:1/0") && !is_redis_url("/var/lib/g.redb"));
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        let p = c.params();
        assert_eq!(
            (p.delay, p.retry_window, p.auto_whitelist),
            (300, 86_400, 35 * 86_400)
        );
        assert_eq!(
            (p.host_trust_threshold, p.host_trust_period),
            (3, 35 * 86_400)
        );
        assert_eq!(p.max_pending_per_network, 1000);
        assert_eq!((c.greylist.ipv4_prefix, c.greylist.ipv6_prefix), (24, 64));
        assert_eq!(c.greylist.fail_open, FailMode::Pass);
        assert_eq!(c.reply.code, 451);
        assert_eq!(c.milter.mode(), Some(0o660));
        assert_eq!(
            (c.milter.max_connections, c.milter.over_limit),
            (4096, OverLimit::Wait)
        );
    }

    #[test]
    fn connection_limit_parses_and_zero_is_refused() {
        let c = parse("[milter]\nmax_connections = 5000\nover_limit = \"refuse\"\n").unwrap();
        assert_eq!(
            (c.milter.max_connections, c.milter.over_limit),
            (5000, OverLimit::Refuse)
        );
        let errs = parse("[milter]\nmax_connections = 0\n").unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.line == 2 && e.message.contains("at least 1")),
            "{errs:?}"
        );
        let errs = parse("[milter]\nover_limit = \"drop\"\n").unwrap_err();
        assert!(errs.iter().any(|e| e.line == 2), "{errs:?}");
    }

    #[test]
    fn durations_and_fail_modes() {
        let c = parse(
            "[greylist]\ndelay = \"300s\"\nretry_window = \"1h 30m\"\nauto_whitelist = 86400\nfail_open = \"tempfail\"\n",
        )
        .unwrap();
        assert_eq!(c.greylist.delay, Seconds(300));
        assert_eq!(c.greylist.retry_window, Seconds(5400));
        assert_eq!(c.greylist.auto_whitelist, Seconds(86_400));
        assert_eq!(c.greylist.fail_open, FailMode::Tempfail);
        let c = parse("[greylist]\nfail_open = false\n").unwrap();
        assert_eq!(c.greylist.fail_open, FailMode::Tempfail);
        assert_eq!(Seconds::parse("35d"), Some(Seconds(35 * 86_400)));
        assert_eq!(Seconds::parse("2w"), Some(Seconds(14 * 86_400)));
        assert_eq!(Seconds::parse("5 parsecs"), None);
    }

    #[test]
    fn networks_and_regexes_parse() {
        let c = parse(
            "[whitelist]\nnetworks = [\"192.0.2.7/24\", \"2001:db8::1\"]\nsender_regex = [\"^news@\"]\n",
        )
        .unwrap();
        assert_eq!(c.whitelist.networks[0].0.to_string(), "192.0.2.0/24");
        assert_eq!(c.whitelist.networks[1].0.to_string(), "2001:db8::1/128");
        assert!(c.whitelist.sender_regex[0].0.is_match("NEWS@example.com"));
    }

    #[test]
    fn reports_every_error_with_location() {
        let text = "\
[greylist]
delay = \"5 fortnights\"
retry_window = \"1h\"
bogus = 1
ipv4_prefix = 40

[whitelist]
networks = [
  \"192.0.2.0/24\",
  \"not-a-network\",
]
sender_regex = [\"(unclosed\"]

[nonsense]
a = 1
";
        let errs = parse(text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        let all = errs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(lines.contains(&2), "bad duration on line 2:\n{all}");
        assert!(lines.contains(&4), "unknown key on line 4:\n{all}");
        assert!(lines.contains(&10), "bad network on line 10:\n{all}");
        assert!(lines.contains(&12), "bad regex on line 12:\n{all}");
        assert!(lines.contains(&14), "unknown table on line 14:\n{all}");
        assert!(lines.contains(&5), "prefix out of range on line 5:\n{all}");
        assert!(all.contains("test.toml:2:"), "{all}");
        assert!(all.contains("bogus"), "{all}");
        assert!(all.contains("not-a-network"), "{all}");
        assert!(all.contains("ipv4_prefix 40"), "{all}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let text = "[greylist]\ndelay = \"2h\"\nretry_window = \"1h\"\n\n[reply]\ncode = 550\nstatus = \"5.7.1\"\n\n[admin]\nlisten = \"192.0.2.1:8080\"\n\n[whitelist]\nnetwork_files = [\"/nonexistent/file\"]\n\n[milter]\nsocket_mode = \"999\"\n";
        let errs = parse(text).unwrap_err();
        let found: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert!(
            found.iter().any(|(l, m)| *l == 3 && m.contains("shorter")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|(l, m)| *l == 6 && m.contains("4xx")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|(l, m)| *l == 7 && m.contains("4.x.y")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(l, m)| *l == 10 && m.contains("loopback")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(l, m)| *l == 13 && m.contains("does not exist")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|(l, m)| *l == 16 && m.contains("octal")),
            "{found:?}"
        );
    }

    #[test]
    fn syntax_error_is_located() {
        let errs = parse("[greylist]\ndelay = \n").unwrap_err();
        assert_eq!(errs[0].line, 2, "{errs:?}");
    }

    #[test]
    fn check_config_reads_files_and_reports_missing() {
        let errs = check_config(Path::new("/nonexistent/greylist.toml")).unwrap_err();
        assert!(errs[0].message.contains("cannot read"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nets.txt"), "192.0.2.0/24\n").unwrap();
        let cfg = dir.path().join("g.toml");
        std::fs::write(&cfg, "[whitelist]\nnetwork_files = [\"nets.txt\"]\n").unwrap();
        let c = check_config(&cfg).unwrap();
        assert_eq!(c.whitelist.network_files, vec![PathBuf::from("nets.txt")]);
    }

    #[test]
    fn example_config_is_valid_and_matches_defaults() {
        let text = include_str!("../greylist.toml.example");
        let c = parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        // The example only writes the defaults (files lists are empty).
        assert_eq!(c.params(), Config::default().params());
        assert_eq!(c.greylist, Config::default().greylist);
        assert_eq!(c.reply, Config::default().reply);
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 5), (1, 1));
    }
}
