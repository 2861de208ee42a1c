//! Sender address verification by SMTP callout, the engine of
//! `sender-check-milter` (in the spirit of milter-sender and Postfix's
//! `reject_unverified_sender`).
//!
//! To find out whether the envelope sender `<alice@example.org>` can receive
//! mail (and therefore bounces), ask a mail server of `example.org`:
//!
//! ```text
//! MX lookup of example.org          (no MX: the domain's own A/AAAA, RFC 5321 §5.1;
//!                                    null MX "0 ." : the domain takes no mail)
//! connect to the best MX, port 25   <- 220 banner
//! EHLO verifier.example             <- 250   (5xx: retry with HELO)
//! MAIL FROM:<>                      <- 250
//! RCPT TO:<alice@example.org>       <- 250 Valid / 5xx Invalid / 4xx Temporary
//! QUIT
//! ```
//!
//! The one rule that matters most: **never give a permanent verdict for a
//! temporary problem**. Timeouts, refused connections, DNS failures and 4xx
//! replies are [`Verdict::Temporary`], which the milter turns into a tempfail
//! (`451 4.4.3`) so the sending MTA retries later; only an explicit 5xx to
//! `RCPT TO` or an authoritative DNS answer (the domain does not exist, or
//! publishes a null MX) is [`Verdict::Invalid`].
//!
//! Callouts are expensive for both sides, so the [`Verifier`]
//!
//! * caches verdicts (valid for a day, invalid for an hour, temporary for five
//!   minutes by default) in a bounded LRU cache,
//! * coalesces concurrent checks of one address into one callout (a burst of
//!   messages from one sender makes one connection, and every waiter gets its
//!   answer),
//! * limits concurrent callouts per domain (a semaphore per domain), and
//! * bounds every callout with an overall deadline, so a milter callback
//!   never waits longer than the MTA's milter timeout.
//!
//! The engine knows nothing about milters; the milter glue calls
//! [`Verifier::verify`] from its `envfrom` callback.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::timeout;

/// Longest reply line accepted from a remote server (RFC 5321 allows 512).
const MAX_REPLY_LINE: u64 = 2048;
/// Most lines accepted in one multi-line reply.
const MAX_REPLY_LINES: usize = 64;
/// Longest remote text kept in a verdict (it ends up in an SMTP reply).
const MAX_TEXT: usize = 300;

// ---------------------------------------------------------------------------
// Verdicts and configuration
// ---------------------------------------------------------------------------

/// The outcome of verifying one sender address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A mail server of the domain accepted the address (2xx to `RCPT TO`).
    Valid,
    /// The address cannot receive mail: a 5xx to `RCPT TO` (then `reply` is
    /// the remote reply, e.g. `550 5.1.1 User unknown`), or the domain does
    /// not exist or publishes a null MX (then `reply` says so). The milter
    /// rejects with `550 5.1.7`.
    Invalid {
        /// The remote reply or the local explanation, one line, printable.
        reply: String,
    },
    /// No answer either way: 4xx, timeout, connection or DNS failure. The
    /// milter tempfails with `451 4.4.3`.
    Temporary {
        /// What went wrong, for the log and the reply text.
        reason: String,
    },
    /// Nothing to verify: the null sender `<>` (bounces) or an address
    /// without a domain (local submission).
    Skipped,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => write!(f, "valid"),
            Verdict::Invalid { reply } => write!(f, "invalid: {reply}"),
            Verdict::Temporary { reason } => write!(f, "temporary failure: {reason}"),
            Verdict::Skipped => write!(f, "skipped (null sender or no domain)"),
        }
    }
}

/// Which DNS servers to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DnsConfig {
    /// The system configuration (`/etc/resolv.conf`).
    System,
    /// One server, asked over UDP (and TCP for truncated answers). Usually
    /// both use the same address; tests may give different ports.
    Server {
        /// Where to send UDP queries.
        udp: SocketAddr,
        /// Where to send TCP queries.
        tcp: SocketAddr,
    },
}

impl DnsConfig {
    /// One server at `addr` for both UDP and TCP (`--dns-server IP:PORT`).
    pub(crate) fn server(addr: SocketAddr) -> Self {
        DnsConfig::Server {
            udp: addr,
            tcp: addr,
        }
    }
}

/// Everything tunable about callouts. `Config::default()` is a sensible
/// production setting except for `helo_name`, which should be this host's
/// public name.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Name sent with EHLO/HELO.
    pub(crate) helo_name: String,
    /// DNS servers for MX and address lookups.
    pub(crate) dns: DnsConfig,
    /// Send every callout to this `host:port` instead of the domain's MX
    /// (smart-host setups and tests).
    pub(crate) callout_host: Option<String>,
    /// Port used for MX hosts (25; tests point it at a loopback server).
    pub(crate) smtp_port: u16,
    /// Time allowed for one TCP connection attempt.
    pub(crate) connect_timeout: Duration,
    /// Time allowed for each reply of the remote server.
    pub(crate) command_timeout: Duration,
    /// Time allowed for a whole verification, DNS and all hosts included.
    pub(crate) deadline: Duration,
    /// At most this many addresses are tried per verification.
    pub(crate) max_targets: usize,
    /// At most this many callouts run at once per sender domain.
    pub(crate) per_domain_limit: usize,
    /// How long a [`Verdict::Valid`] is cached.
    pub(crate) ttl_valid: Duration,
    /// How long a [`Verdict::Invalid`] is cached.
    pub(crate) ttl_invalid: Duration,
    /// How long a [`Verdict::Temporary`] is cached.
    pub(crate) ttl_temporary: Duration,
    /// Most addresses kept in the cache (least recently used ones go first).
    pub(crate) cache_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            helo_name: "localhost".to_string(),
            dns: DnsConfig::System,
            callout_host: None,
            smtp_port: 25,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(45),
            max_targets: 5,
            per_domain_limit: 4,
            ttl_valid: Duration::from_secs(24 * 3600),
            ttl_invalid: Duration::from_secs(3600),
            ttl_temporary: Duration::from_secs(300),
            cache_capacity: 10_000,
        }
    }
}

/// Errors setting up a [`Verifier`] (verification itself never fails: it
/// returns a [`Verdict`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CalloutError {
    /// The DNS resolver could not be configured (e.g. unreadable
    /// `/etc/resolv.conf`).
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(#[from] NetError),
    /// A configuration value makes no sense.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// A source of "now" for cache expiry; tests substitute a manual clock.
pub(crate) trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

// ---------------------------------------------------------------------------
// The verifier
// ---------------------------------------------------------------------------

/// Verifies sender addresses. Cheap to clone (an `Arc` inside): create one at
/// start-up and give a clone to every milter connection.
#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    resolver: TokioResolver,
    clock: Arc<dyn Clock>,
    cache: Mutex<Cache>,
    /// Callouts in progress: address -> the channel its result will be sent on.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Verdict>>>>,
    /// Per-domain concurrency limits; entries are removed when unused.
    domains: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Lock a mutex even if another thread panicked while holding it: the data
/// here (cache, maps) stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Verifier {
    /// A verifier with the real clock.
    pub(crate) fn new(config: Config) -> Result<Self, CalloutError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A verifier whose cache expiry follows `clock`.
    pub(crate) fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, CalloutError> {
        if config.per_domain_limit == 0 {
            return Err(CalloutError::Config("per_domain_limit must be at least 1"));
        }
        if config.max_targets == 0 {
            return Err(CalloutError::Config("max_targets must be at least 1"));
        }
        let resolver = build_resolver(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cache: Mutex::new(Cache::new(config.cache_capacity)),
                config,
                resolver,
                clock,
                inflight: Mutex::new(HashMap::new()),
                domains: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Verify `sender` (as given in MAIL FROM, with or without angle
    /// brackets). Answers from the cache when it can; otherwise makes (or
    /// joins) one callout. Never takes longer than `Config::deadline` plus
    /// scheduling delays, and never panics.
    pub(crate) async fn verify(&self, sender: &str) -> Verdict {
        let address = match Address::parse(sender) {
            Ok(Some(address)) => address,
            Ok(None) => return Verdict::Skipped,
            Err(reason) => return Verdict::Invalid { reply: reason },
        };
        let key = address.key();
        if let Some(verdict) = self.inner.cached(&key) {
            return verdict;
        }
        let mut result = {
            let mut inflight = lock(&self.inner.inflight);
            // The callout task fills the cache before it leaves `inflight`,
            // so look again now that we hold the lock.
            if let Some(verdict) = self.inner.cached(&key) {
                return verdict;
            }
            match inflight.get(&key) {
                // Someone is already asking: wait for their answer.
                Some(rx) => rx.clone(),
                // We are first: start the callout in its own task, so that it
                // completes (and fills the cache) even if this caller gives up.
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    let inner = Arc::clone(&self.inner);
                    tokio::spawn(async move {
                        let _guard = InflightGuard {
                            inner: Arc::clone(&inner),
                            key: key.clone(),
                        };
                        let verdict = inner.callout_with_deadline(&address).await;
                        inner.store(&key, &verdict);
                        // Waiters may all have gone away; that is fine.
                        let _ = tx.send(Some(verdict));
                    });
                    rx
                }
            }
        };
        match result.wait_for(Option::is_some).await {
            Ok(verdict) => verdict.clone().unwrap_or_else(|| Verdict::Temporary {
                reason: "callout ended without a result".to_string(),
            }),
            Err(_) => Verdict::Temporary {
                reason: "callout task failed".to_string(),
            },
        }
    }

    /// Number of addresses currently cached.
    pub(crate) fn cache_len(&self) -> usize {
        lock(&self.inner.cache).len()
    }
}

/// Removes the `inflight` entry when the callout task ends, however it ends
/// (even by panic), so that a failed callout cannot block an address forever.
struct InflightGuard {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        lock(&self.inner.inflight).remove(&self.key);
    }
}

/// A per-domain permit that removes the domain's semaphore from the map when
/// nobody uses it any more (so the map does not grow with every domain seen).
struct DomainPermit {
    inner: Arc<Inner>,
    domain: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for DomainPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut domains = lock(&self.inner.domains);
        if domains
            .get(&self.domain)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            domains.remove(&self.domain);
        }
    }
}

/// Where to connect for one attempt.
#[derive(Debug, Clone)]
struct Target {
    /// Host name for messages (the MX name, or the callout host).
    host: String,
    addr: SocketAddr,
}

/// The result of talking to one host.
enum HostOutcome {
    /// The host answered RCPT: this is the verdict.
    Answer(Verdict),
    /// The host could not be asked (unreachable, timeout, refused the
    /// session): try the next one.
    Unusable(String),
}

impl Inner {
    fn cached(&self, key: &str) -> Option<Verdict> {
        let now = self.clock.now();
        lock(&self.cache).get(key, now)
    }

    fn store(&self, key: &str, verdict: &Verdict) {
        let ttl = match verdict {
            Verdict::Valid => self.config.ttl_valid,
            Verdict::Invalid { .. } => self.config.ttl_invalid,
            Verdict::Temporary { .. } => self.config.ttl_temporary,
            Verdict::Skipped => return,
        };
        let now = self.clock.now();
        lock(&self.cache).insert(key.to_string(), verdict.clone(), now + ttl);
    }

    async fn callout_with_deadline(self: &Arc<Self>, address: &Address) -> Verdict {
        match timeout(self.config.deadline, self.callout(address)).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Temporary {
                reason: format!(
                    "no answer within {:?} for {}",
                    self.config.deadline,
                    address.key()
                ),
            },
        }
    }

    async fn domain_permit(self: &Arc<Self>, domain: &str) -> Option<DomainPermit> {
        let semaphore = {
            let mut domains = lock(&self.domains);
            Arc::clone(
                domains
                    .entry(domain.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_domain_limit))),
            )
        };
        let permit = semaphore.acquire_owned().await.ok()?;
        Some(DomainPermit {
            inner: Arc::clone(self),
            domain: domain.to_string(),
            permit: Some(permit),
        })
    }

    async fn callout(self: &Arc<Self>, address: &Address) -> Verdict {
        let _permit = self.domain_permit(&address.domain).await;
        let targets = match self.targets(address).await {
            Ok(targets) => targets,
            Err(verdict) => return verdict,
        };
        let mut problems = Vec::new();
        for target in targets.iter().take(self.config.max_targets) {
            match self.ask_host(target, address).await {
                HostOutcome::Answer(verdict) => return verdict,
                HostOutcome::Unusable(problem) => problems.push(problem),
            }
        }
        Verdict::Temporary {
            reason: if problems.is_empty() {
                format!("no mail server found for {}", address.domain)
            } else {
                clean_text(&problems.join("; "))
            },
        }
    }

    /// The addresses to try, best first, or a final verdict from DNS.
    async fn targets(&self, address: &Address) -> Result<Vec<Target>, Verdict> {
        let port = self.config.smtp_port;
        if let Some(host) = &self.config.callout_host {
            let addrs =
                tokio::net::lookup_host(host.as_str())
                    .await
                    .map_err(|e| Verdict::Temporary {
                        reason: format!("cannot resolve callout host {host}: {e}"),
                    })?;
            return Ok(addrs
                .map(|addr| Target {
                    host: host.clone(),
                    addr,
                })
                .collect());
        }
        // A domain literal, `user@[192.0.2.1]`: no DNS involved.
        if let Some(ip) = address.literal_ip() {
            return Ok(vec![Target {
                host: address.domain.clone(),
                addr: SocketAddr::new(ip, port),
            }]);
        }
        let name = fqdn(&address.domain).ok_or_else(|| Verdict::Invalid {
            reply: format!("invalid sender domain {}", clean_text(&address.domain)),
        })?;

        // MX hosts, best (lowest preference) first; ties keep DNS order.
        let hosts: Vec<Name> = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => {
                let mut mxs: Vec<(u16, Name)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                        _ => None,
                    })
                    .collect();
                // RFC 7505: a single MX "0 ." says the domain takes no mail.
                if let [(_, exchange)] = mxs.as_slice()
                    && exchange.is_root()
                {
                    return Err(Verdict::Invalid {
                        reply: format!("domain {} does not accept mail (null MX)", address.domain),
                    });
                }
                mxs.retain(|(_, exchange)| !exchange.is_root());
                mxs.sort_by_key(|(preference, _)| *preference);
                if mxs.is_empty() {
                    vec![name.clone()]
                } else {
                    mxs.into_iter().map(|(_, exchange)| exchange).collect()
                }
            }
            Err(e) => match classify(&e) {
                DnsOutcome::NoSuchDomain => {
                    return Err(Verdict::Invalid {
                        reply: format!("domain {} does not exist", address.domain),
                    });
                }
                // No MX: the domain itself is the mail host (RFC 5321 §5.1).
                DnsOutcome::NoData => vec![name.clone()],
                DnsOutcome::Failure => {
                    return Err(Verdict::Temporary {
                        reason: format!("MX lookup for {} failed: {e}", address.domain),
                    });
                }
            },
        };

        let implicit = hosts.len() == 1
            && hosts
                .first()
                .is_some_and(|h| h.to_ascii() == name.to_ascii());
        let mut targets = Vec::new();
        let mut problems = Vec::new();
        for host in hosts.iter().take(self.config.max_targets) {
            match self.resolver.lookup_ip(host.clone()).await {
                Ok(ips) => targets.extend(ips.iter().map(|ip| Target {
                    host: host.to_ascii().trim_end_matches('.').to_string(),
                    addr: SocketAddr::new(ip, port),
                })),
                Err(e) => {
                    // A domain without MX and without address: it exists
                    // (else we would have seen NXDOMAIN) but takes no mail.
                    if implicit && matches!(classify(&e), DnsOutcome::NoData) {
                        return Err(Verdict::Invalid {
                            reply: format!(
                                "domain {} has no MX and no address record",
                                address.domain
                            ),
                        });
                    }
                    problems.push(format!("address lookup for {host} failed: {e}"));
                }
            }
            if targets.len() >= self.config.max_targets {
                break;
            }
        }
        if targets.is_empty() {
            return Err(Verdict::Temporary {
                reason: clean_text(&problems.join("; ")),
            });
        }
        Ok(targets)
    }

    /// One SMTP conversation with one host.
    async fn ask_host(&self, target: &Target, address: &Address) -> HostOutcome {
        let who = format!("{} [{}]", target.host, target.addr.ip());
        let stream =
            match timeout(self.config.connect_timeout, TcpStream::connect(target.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return HostOutcome::Unusable(format!("{who}: connect: {e}")),
                Err(_) => return HostOutcome::Unusable(format!("{who}: connect timed out")),
            };
        let mut smtp = Smtp::new(stream, self.config.command_timeout);
        match self.dialog(&mut smtp, address).await {
            Ok(outcome) => {
                smtp.quit().await;
                outcome
            }
            Err(e) => HostOutcome::Unusable(format!("{who}: {e}")),
        }
    }

    async fn dialog(&self, smtp: &mut Smtp, address: &Address) -> Result<HostOutcome, SmtpError> {
        let unusable = |step: &str, reply: &SmtpReply| {
            Ok(HostOutcome::Unusable(format!(
                "{step}: {}",
                reply.one_line()
            )))
        };
        let banner = smtp.read_reply().await?;
        if banner.class() != 2 {
            return unusable("banner", &banner);
        }
        let helo = &self.config.helo_name;
        let ehlo = smtp.command(&format!("EHLO {helo}")).await?;
        if ehlo.class() == 5 {
            // An old server without ESMTP: fall back to HELO.
            let reply = smtp.command(&format!("HELO {helo}")).await?;
            if reply.class() != 2 {
                return unusable("HELO", &reply);
            }
        } else if ehlo.class() != 2 {
            return unusable("EHLO", &ehlo);
        }
        let mail = smtp.command("MAIL FROM:<>").await?;
        if mail.class() != 2 {
            return unusable("MAIL FROM:<>", &mail);
        }
        let rcpt = smtp
            .command(&format!("RCPT TO:<{}>", address.rcpt_form()))
            .await?;
        Ok(HostOutcome::Answer(match rcpt.class() {
            2 => Verdict::Valid,
            5 => Verdict::Invalid {
                reply: rcpt.one_line(),
            },
            _ => Verdict::Temporary {
                reason: rcpt.one_line(),
            },
        }))
    }
}

// ---------------------------------------------------------------------------
// DNS helpers
// ---------------------------------------------------------------------------

fn build_resolver(config: &Config) -> Result<TokioResolver, CalloutError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match &config.dns {
        DnsConfig::System => Resolver::builder(provider)?,
        DnsConfig::Server { udp, tcp } => {
            let mut udp_conn = ConnectionConfig::udp();
            udp_conn.port = udp.port();
            let mut tcp_conn = ConnectionConfig::tcp();
            tcp_conn.port = tcp.port();
            let servers = if udp.ip() == tcp.ip() {
                vec![NameServerConfig::new(
                    udp.ip(),
                    true,
                    vec![udp_conn, tcp_conn],
                )]
            } else {
                vec![
                    NameServerConfig::new(udp.ip(), true, vec![udp_conn]),
                    NameServerConfig::new(tcp.ip(), true, vec![tcp_conn]),
                ]
            };
            let mut b =
                Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider);
            // An explicit server means "ask it", not /etc/hosts.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
    };
    let options = builder.options_mut();
    // Leave time within the callout deadline for the SMTP part.
    options.timeout = (config.deadline / 4).max(Duration::from_millis(100));
    options.attempts = 2;
    Ok(builder.build()?)
}

/// A domain as an absolute DNS name (IDNs converted to punycode).
fn fqdn(domain: &str) -> Option<Name> {
    let mut name = Name::from_utf8(domain).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// What a failed lookup means for verification.
enum DnsOutcome {
    /// NXDOMAIN: authoritative "no such domain".
    NoSuchDomain,
    /// The name exists but has no record of the asked type.
    NoData,
    /// Anything else (timeout, SERVFAIL, refused): temporary.
    Failure,
}

fn classify(e: &NetError) -> DnsOutcome {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => DnsOutcome::NoSuchDomain,
            ResponseCode::NoError => DnsOutcome::NoData,
            _ => DnsOutcome::Failure,
        },
        _ => DnsOutcome::Failure,
    }
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// A sender address split for the callout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Address {
    local: String,
    domain: String,
}

impl Address {
    /// Parse a MAIL FROM argument. `Ok(None)`: nothing to verify (`<>` or no
    /// domain). `Err`: malformed beyond use (the text explains).
    fn parse(sender: &str) -> Result<Option<Address>, String> {
        let mut s = sender.trim();
        if let Some(inner) = s.strip_prefix('<').and_then(|x| x.strip_suffix('>')) {
            s = inner;
        }
        // An obsolete source route `<@relay:user@domain>`: drop the route.
        if s.starts_with('@')
            && let Some((_, rest)) = s.split_once(':')
        {
            s = rest;
        }
        if s.is_empty() {
            return Ok(None);
        }
        // Control characters would let a sender inject SMTP commands into
        // our callout; angle brackets inside make no sense either.
        if s.chars().any(|c| c.is_control() || c == '<' || c == '>') {
            return Err("malformed sender address".to_string());
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Ok(None);
        };
        if local.is_empty() || domain.is_empty() {
            return Err("malformed sender address".to_string());
        }
        Ok(Some(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        }))
    }

    /// Cache key: the local part is case-sensitive in principle, the
    /// domain is not.
    fn key(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// The address as written in `RCPT TO:<...>`.
    fn rcpt_form(&self) -> String {
        self.key()
    }

    /// The IP of a domain literal `[192.0.2.1]` / `[IPv6:2001:db8::1]`.
    fn literal_ip(&self) -> Option<IpAddr> {
        let inner = self.domain.strip_prefix('[')?.strip_suffix(']')?;
        let inner = inner.strip_prefix("ipv6:").unwrap_or(inner);
        inner.parse().ok()
    }
}

/// Make remote text safe to log and to put into our own SMTP reply:
/// printable characters only, bounded length.
fn clean_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

// ---------------------------------------------------------------------------
// A minimal SMTP client
// ---------------------------------------------------------------------------

/// Why an SMTP conversation broke off.
#[derive(Debug, thiserror::Error)]
enum SmtpError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the server")]
    Closed,
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// A complete (possibly multi-line) SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SmtpReply {
    code: u16,
    lines: Vec<String>,
}

impl SmtpReply {
    /// 2 for 2xx, 4 for 4xx, ...
    fn class(&self) -> u16 {
        self.code / 100
    }

    /// Code and text on one cleaned line: `550 5.1.1 User unknown`.
    fn one_line(&self) -> String {
        let text = self
            .lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        clean_text(format!("{} {text}", self.code).trim_end())
    }
}

/// Parse one reply line: `250-text` (more follow) or `250 text` (last).
fn parse_reply_line(line: &str) -> Result<(u16, bool, &str), SmtpError> {
    let malformed = || SmtpError::Malformed(clean_text(line));
    let code_part = line.get(..3).ok_or_else(malformed)?;
    if !code_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let code: u16 = code_part.parse().map_err(|_| malformed())?;
    if !(200..600).contains(&code) {
        return Err(malformed());
    }
    match line.get(3..4) {
        None => Ok((code, true, "")),
        Some("-") => Ok((code, false, line.get(4..).unwrap_or_default())),
        Some(" ") => Ok((code, true, line.get(4..).unwrap_or_default())),
        Some(_) => Err(malformed()),
    }
}

struct Smtp {
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

impl Smtp {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        Self {
            stream: BufReader::new(stream),
            timeout,
        }
    }

    async fn read_reply(&mut self) -> Result<SmtpReply, SmtpError> {
        let limit = self.timeout;
        timeout(limit, self.read_reply_inner())
            .await
            .map_err(|_| SmtpError::Timeout(limit))?
    }

    async fn read_reply_inner(&mut self) -> Result<SmtpReply, SmtpError> {
        let mut lines = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut buf = Vec::new();
            let n = (&mut self.stream)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut buf)
                .await?;
            if n == 0 {
                return Err(SmtpError::Closed);
            }
            if buf.last() != Some(&b'\n') {
                return Err(SmtpError::Malformed("reply line too long".to_string()));
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\r', '\n']);
            let (code, last, text) = parse_reply_line(line)?;
            lines.push(text.to_string());
            if last {
                return Ok(SmtpReply { code, lines });
            }
        }
        Err(SmtpError::Malformed("reply has too many lines".to_string()))
    }

    async fn command(&mut self, line: &str) -> Result<SmtpReply, SmtpError> {
        let limit = self.timeout;
        let write = async {
            let stream = self.stream.get_mut();
            stream.write_all(line.as_bytes()).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await
        };
        timeout(limit, write)
            .await
            .map_err(|_| SmtpError::Timeout(limit))??;
        self.read_reply().await
    }

    /// Polite goodbye; the verdict is known, so errors and slowness here are
    /// ignored (bounded by a short timeout).
    async fn quit(&mut self) {
        let _ = timeout(Duration::from_secs(2), async {
            let stream = self.stream.get_mut();
            stream.write_all(b"QUIT\r\n").await?;
            stream.flush().await?;
            self.read_reply_inner().await
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------

/// A bounded LRU map from address to verdict with per-entry expiry.
///
/// `entries` holds the data and the entry's last-use tick; `order` maps ticks
/// to keys so that the least recently used entry is `order`'s first. Both
/// operations are O(log n).
#[derive(Debug)]
struct Cache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, CacheEntry>,
    order: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct CacheEntry {
    verdict: Verdict,
    expires: Instant,
    tick: u64,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// A fresh verdict for `key`, marking it recently used; expired entries
    /// are dropped on the way.
    fn get(&mut self, key: &str, now: Instant) -> Option<Verdict> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(key)?;
        if entry.expires <= now {
            let old = entry.tick;
            self.entries.remove(key);
            self.order.remove(&old);
            return None;
        }
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, key.to_string());
        Some(entry.verdict.clone())
    }

    fn insert(&mut self, key: String, verdict: Verdict, expires: Instant) {
        if self.capacity == 0 {
            return;
        }
        let tick = self.next_tick();
        if let Some(old) = self.entries.remove(&key) {
            self.order.remove(&old.tick);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.order.insert(tick, key.clone());
        self.entries.insert(
            key,
            CacheEntry {
                verdict,
                expires,
                tick,
            },
        );
    }
}

#[cfg(test)]
mod tests;
