//! `sender-check-milter`: verifies envelope senders with an SMTP callout
//! and refuses mail from addresses that cannot receive bounces.
//!
//! ```text
//! sender-check-milter --listen unix:/run/sender-check.sock --socket-mode 666 \
//!     --helo-name mx.example.org --local-net 192.0.2.0/24
//! sender-check-milter verify alice@example.org      # what would it decide?
//! ```
//!
//! # How this file is built (copy it to write your own milter)
//!
//! The engine, [`callout`], knows nothing about milters: it takes an address
//! and returns a [`Verdict`], with caching, coalescing of concurrent checks,
//! a per-domain limit and a deadline. This file is the glue:
//!
//! 1. the command line ([`Cli`]) and its translation into a callout
//!    [`Config`];
//! 2. the [`Milter`] implementation ([`SenderCheck`]): it asks only for
//!    CONNECT and MAIL (the MTA sends nothing else but the end of message),
//!    lets local clients through at CONNECT, and at MAIL skips
//!    authenticated clients and the null sender, then verifies;
//! 3. [`answer`]: the verdict as an SMTP reply. A temporary problem is
//!    never a permanent refusal;
//! 4. `main`: build one [`Verifier`] for the process, give every connection
//!    a clone (it is an `Arc` inside, so all share one cache), serve.
//!
//! | verdict       | answer at MAIL FROM                                   |
//! |---------------|-------------------------------------------------------|
//! | valid         | continue                                              |
//! | invalid       | `550 5.1.7 Sender address rejected: <remote reply>`   |
//! | temporary     | `451 4.4.3 Sender address not verified now: <reason>` |
//! | skipped       | continue (`<>`, address without a domain)             |

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use milter_examples::{ListenArgs, init_logging, serve};
use milter_proto::{Connect, Envelope, MacroStage, OptNeg, SmtpReply};
use milter_server::{BoxError, Context, Milter, Options, Stages, Status, async_trait};
use tracing::{debug, error, info, warn};

mod callout;

use callout::{Config, DnsConfig, Verdict, Verifier};

// ---------------------------------------------------------------------------
// 1. Command line
// ---------------------------------------------------------------------------

/// Verify envelope senders by SMTP callout.
#[derive(Debug, Parser)]
#[command(
    name = "sender-check-milter",
    version,
    about = "A milter that verifies envelope senders by SMTP callout",
    // `verify` needs no --listen.
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Where to listen (required unless a subcommand is given).
    #[command(flatten)]
    listen: Option<ListenArgs>,
    /// Clients that are never checked, as CIDR (repeatable). Loopback and
    /// clients that did not connect over IP are always local.
    #[arg(long, value_name = "CIDR", value_parser = Net::parse)]
    local_net: Vec<Net>,
    #[command(flatten)]
    callout: CalloutArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify one address and print the verdict (exit 0 valid or skipped,
    /// 1 invalid, 75 temporary failure).
    Verify {
        /// The sender address, e.g. alice@example.org or '<>'.
        address: String,
        #[command(flatten)]
        callout: CalloutArgs,
    },
}

/// How callouts are made (shared by the milter and `verify`).
#[derive(Debug, Clone, Args)]
struct CalloutArgs {
    /// Send every callout to HOST:PORT instead of the domain's MX.
    #[arg(long, value_name = "HOST:PORT")]
    callout_host: Option<String>,
    /// Ask this DNS server (IP:PORT, UDP and TCP) instead of the system's.
    #[arg(long, value_name = "IP:PORT")]
    dns_server: Option<SocketAddr>,
    /// Port of the MX hosts' SMTP service.
    #[arg(long, value_name = "PORT", default_value_t = 25)]
    smtp_port: u16,
    /// Name to send with EHLO/HELO (use this host's public name).
    #[arg(long, default_value = "localhost")]
    helo_name: String,
    /// Time limit of one verification, in seconds. Keep it below the MTA's
    /// milter timeout (Postfix: milter_command_timeout, 30 s).
    #[arg(long, value_name = "SECS", default_value_t = 25)]
    timeout: u64,
    /// How long a valid verdict is cached, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 24 * 3600)]
    ttl_valid: u64,
    /// How long an invalid verdict is cached, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    ttl_invalid: u64,
    /// How long a temporary failure is cached, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    ttl_temporary: u64,
    /// Most addresses kept in the cache.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    cache_size: usize,
    /// Most callouts at once to one sender domain.
    #[arg(long, value_name = "N", default_value_t = 4)]
    per_domain_limit: usize,
}

impl CalloutArgs {
    fn config(&self) -> Config {
        Config {
            helo_name: self.helo_name.clone(),
            dns: self.dns_server.map_or(DnsConfig::System, DnsConfig::server),
            callout_host: self.callout_host.clone(),
            smtp_port: self.smtp_port,
            deadline: Duration::from_secs(self.timeout.max(1)),
            ttl_valid: Duration::from_secs(self.ttl_valid),
            ttl_invalid: Duration::from_secs(self.ttl_invalid),
            ttl_temporary: Duration::from_secs(self.ttl_temporary),
            cache_capacity: self.cache_size,
            per_domain_limit: self.per_domain_limit,
            ..Config::default()
        }
    }
}

/// An IP network, `192.0.2.0/24` or `2001:db8::/32` (a bare address is a
/// single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => max,
            p => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // Compare the first `prefix` bits of both addresses as integers.
        let masked = |a: u128, bits: u32, width: u32| {
            if bits == 0 { 0 } else { a >> (width - bits) }
        };
        let bits = u32::from(self.prefix);
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), bits, 32) == masked(u32::from(a).into(), bits, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), bits, 128) == masked(u128::from(a), bits, 128)
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// 2. The milter
// ---------------------------------------------------------------------------

/// One per MTA connection; the verifier and the local networks are shared.
struct SenderCheck {
    verifier: Verifier,
    local_nets: Arc<[Net]>,
}

impl SenderCheck {
    /// Loopback, a configured local network, or not over IP at all (local
    /// submission through a unix socket or the MTA's pickup).
    fn is_local(&self, client: &Connect) -> bool {
        match client.ip() {
            Some(ip) => {
                ip.to_canonical().is_loopback() || self.local_nets.iter().any(|n| n.contains(ip))
            }
            None => true,
        }
    }
}

#[async_trait]
impl Milter for SenderCheck {
    type Message = ();

    /// CONNECT (who is the client?) and MAIL (the sender) are all we need;
    /// `{auth_authen}` tells us at MAIL whether the client logged in.
    async fn negotiate(&mut self, _offer: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new()
            .stages(Stages::CONNECT | Stages::MAIL)
            .macros(MacroStage::Mail, "{auth_authen}"))
    }

    /// Local clients are trusted: accepting at CONNECT accepts the whole
    /// connection, and the MTA sends nothing more about it.
    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        if self.is_local(client) {
            info!(conn = ctx.connection_id(), ip = ?client.ip(), "local client, not checked");
            return Ok(Status::Accept);
        }
        Ok(Status::Continue)
    }

    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        _msg: &mut (),
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        let sender = String::from_utf8_lossy(&from.address);
        if let Some(user) = ctx.macro_str("{auth_authen}").filter(|u| !u.is_empty()) {
            info!(conn = ctx.connection_id(), %sender, %user, "authenticated client, not checked");
            return Ok(Status::Continue);
        }
        // Also covers a client the CONNECT stage did not see (e.g. an MTA
        // that sends no CONNECT): judge by the address if it is known.
        if ctx.client().is_some_and(|c| self.is_local(c)) {
            return Ok(Status::Continue);
        }
        // The null sender (bounces) is skipped by the verifier itself.
        debug!(conn = ctx.connection_id(), %sender, "verifying sender");
        let verdict = self.verifier.verify(&sender).await;
        info!(
            conn = ctx.connection_id(),
            %sender,
            %verdict,
            cached_addresses = self.verifier.cache_len(),
            "sender verified"
        );
        Ok(answer(&verdict))
    }
}

// ---------------------------------------------------------------------------
// 3. Verdict -> SMTP reply
// ---------------------------------------------------------------------------

/// Longest remote text quoted in our reply.
const MAX_QUOTED: usize = 200;

/// Remote text made safe to quote: printable ASCII only, bounded.
fn sanitise(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_QUOTED)
        .collect();
    if s.chars().count() > MAX_QUOTED {
        out.push_str("...");
    }
    out
}

/// The milter's answer to a verdict.
fn answer(verdict: &Verdict) -> Status {
    let reply = match verdict {
        Verdict::Valid | Verdict::Skipped => return Status::Continue,
        Verdict::Invalid { reply } => SmtpReply::new(
            550,
            Some("5.1.7"),
            &format!("Sender address rejected: {}", sanitise(reply)),
        ),
        Verdict::Temporary { reason } => SmtpReply::new(
            451,
            Some("4.4.3"),
            &format!("Sender address not verified now: {}", sanitise(reason)),
        ),
    };
    match reply {
        Ok(reply) => Status::Reply(reply),
        // Cannot happen with sanitised text; if it did, refuse with the
        // MTA's default reply of the same class.
        Err(e) => {
            warn!(%e, "cannot build the reply");
            match verdict {
                Verdict::Invalid { .. } => Status::Reject,
                _ => Status::Tempfail,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 4. main
// ---------------------------------------------------------------------------

/// `verify ADDRESS`: one check, printed.
async fn verify(config: Config, address: &str) -> ExitCode {
    let verifier = match Verifier::new(config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sender-check-milter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verdict = verifier.verify(address).await;
    println!("{address}: {verdict}");
    match verdict {
        Verdict::Valid | Verdict::Skipped => ExitCode::SUCCESS,
        Verdict::Invalid { .. } => ExitCode::from(1),
        // EX_TEMPFAIL, as sendmail-style tools use it.
        Verdict::Temporary { .. } => ExitCode::from(75),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Verify { address, callout }) = cli.command {
        return verify(callout.config(), &address).await;
    }
    let Some(listen) = cli.listen else {
        // Not reached: clap requires --listen without a subcommand.
        eprintln!("sender-check-milter: --listen SPEC is required");
        return ExitCode::from(2);
    };
    init_logging();

    // One verifier (and so one cache) for the whole process.
    let verifier = match Verifier::new(cli.callout.config()) {
        Ok(v) => v,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let local_nets: Arc<[Net]> = cli.local_net.into();
    let factory = move || SenderCheck {
        verifier: verifier.clone(),
        local_nets: Arc::clone(&local_nets),
    };
    match serve(&listen, factory).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
