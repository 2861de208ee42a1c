//! Who the client is, beyond its IP address: the SPF-authorised domain.
//!
//! When `[identity] spf = true` and the client is authorised by the SPF record of the
//! MAIL FROM domain (result `pass`), the tuple is keyed on
//! `(spf:DOMAIN, sender, recipient)` instead of `(network, sender, recipient)`, so a
//! retry from another address of the same provider's pool finds the first attempt.
//! SPF pass only changes the identity: the tuple is still greylisted like any other.
//! Any other SPF result (none, neutral, softfail, fail, errors, a timeout) keeps the
//! network identity.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::config::{ResolveHosts, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

use crate::risk::Spf;
use crate::tuple::Key;

/// The prefix of the scope part of SPF-identified tuple keys.
pub const SPF_SCOPE_PREFIX: &str = "spf:";

/// The identity a tuple was keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The masked client network (the classic triplet).
    Network,
    /// The MAIL FROM domain, whose SPF record authorises the client.
    Spf {
        /// The authorised domain (lower case).
        domain: String,
    },
}

impl Identity {
    /// The identity a stored key was made with.
    pub fn of_key(key: &Key) -> Identity {
        match key.network().strip_prefix(SPF_SCOPE_PREFIX) {
            Some(d) => Identity::Spf {
                domain: d.to_owned(),
            },
            None => Identity::Network,
        }
    }

    /// `network` or `spf`.
    pub fn label(&self) -> &'static str {
        match self {
            Identity::Network => "network",
            Identity::Spf { .. } => "spf",
        }
    }
}

/// The DNS resolver used for SPF (and DNS lists): `server` if given (UDP and TCP on
/// that address, no hosts file), else the system configuration.
pub fn resolver_config(server: Option<SocketAddr>) -> (ResolverConfig, ResolverOpts) {
    let mut opts = ResolverOpts::default();
    let config = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            opts.use_hosts_file = ResolveHosts::Never;
            ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                addr.ip(),
                true,
                vec![udp, tcp],
            )])
        }
        None => hickory_resolver::system_conf::read_system_conf()
            .map(|(c, o)| {
                opts = o;
                c
            })
            .unwrap_or_else(|_| ResolverConfig::udp_and_tcp(&hickory_resolver::config::GOOGLE)),
    };
    (config, opts)
}

/// SPF evaluation for tuple identities.
pub struct SpfIdentity {
    auth: MessageAuthenticator,
    timeout: Duration,
    host_domain: String,
}

impl std::fmt::Debug for SpfIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpfIdentity")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SpfIdentity {
    /// An evaluator asking `server` (or the system resolvers), giving up on one check
    /// after `timeout`. `host_domain` is this host's name (the SPF `r` macro).
    pub fn new(
        server: Option<SocketAddr>,
        timeout: Duration,
        host_domain: impl Into<String>,
    ) -> Result<SpfIdentity, String> {
        let (config, mut opts) = resolver_config(server);
        opts.timeout = (timeout / 2).max(Duration::from_millis(50));
        opts.attempts = 1;
        let auth = MessageAuthenticator::new(config, opts).map_err(|e| e.to_string())?;
        Ok(SpfIdentity {
            auth,
            timeout,
            host_domain: host_domain.into(),
        })
    }

    /// The MAIL FROM domain of `sender` if its SPF record authorises `ip` (result
    /// `pass`); `None` for any other result, a null sender or a timeout.
    pub async fn authorised_domain(&self, ip: IpAddr, helo: &str, sender: &str) -> Option<String> {
        self.evaluate(ip, helo, sender).await.1
    }

    /// The SPF verdict for the MAIL FROM domain of `sender`, and the domain when it
    /// passed.
    pub async fn evaluate(&self, ip: IpAddr, helo: &str, sender: &str) -> (Spf, Option<String>) {
        match self.check(ip, helo, sender).await {
            Some((SpfOutcome::Pass, domain)) => (Spf::Pass, Some(domain)),
            Some((SpfOutcome::Fail, _)) => (Spf::Fail, None),
            _ => (Spf::Other, None),
        }
    }

    /// The SPF result of the MAIL FROM identity, for `[[acl]]` `spf` clauses: `none`
    /// for the null sender (and senders without a domain), `temperror` on timeout.
    pub async fn outcome(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfOutcome {
        self.check(ip, helo, sender)
            .await
            .map_or(SpfOutcome::None, |(o, _)| o)
    }

    /// The result and the (lower-case) MAIL FROM domain; `None` if there is no domain.
    async fn check(&self, ip: IpAddr, helo: &str, sender: &str) -> Option<(SpfOutcome, String)> {
        let sender = crate::tuple::normalize_sender(sender);
        let (_, domain) = sender.rsplit_once('@')?;
        if domain.is_empty() {
            return None;
        }
        let domain = domain.to_ascii_lowercase();
        let params = SpfParameters::verify_mail_from(ip, helo, &self.host_domain, &sender);
        let out = tokio::time::timeout(self.timeout, self.auth.check_host(params.into())).await;
        let outcome = match out {
            Ok(o) => match o.result() {
                SpfResult::Pass => SpfOutcome::Pass,
                SpfResult::Fail => SpfOutcome::Fail,
                SpfResult::SoftFail => SpfOutcome::Softfail,
                SpfResult::Neutral => SpfOutcome::Neutral,
                SpfResult::TempError => SpfOutcome::Temperror,
                SpfResult::PermError => SpfOutcome::Permerror,
                SpfResult::None => SpfOutcome::None,
            },
            Err(_) => {
                tracing::debug!(%ip, domain = %domain, "SPF check timed out");
                SpfOutcome::Temperror
            }
        };
        if outcome != SpfOutcome::Pass {
            tracing::debug!(%ip, domain = %domain, result = ?outcome, "SPF not pass");
        }
        Some((outcome, domain))
    }
}

/// An SPF result (RFC 7208 section 2.6), as `[[acl]]` `spf` clauses name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfOutcome {
    /// The client is authorised.
    Pass,
    /// The client is not authorised.
    Fail,
    /// Probably not authorised (`~all`).
    Softfail,
    /// No statement (`?all`).
    Neutral,
    /// No SPF record (or no domain to check).
    None,
    /// A transient DNS error, or the check timed out.
    Temperror,
    /// The record could not be interpreted.
    Permerror,
}
