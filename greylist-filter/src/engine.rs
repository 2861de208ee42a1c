//! The facade the milter glue calls: [`Engine::check_rcpt`] at RCPT,
//! [`Engine::x_greylist_header`] at end of message, [`Engine::explain`] for the admin.
//!
//! It combines the whitelist, the store, the pure policy and the clock, counts every
//! decision in [`Metrics`], applies the failure policy when the store fails, and
//! implements dry-run (decide, record and log, but always continue).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use crate::acl::{AclAction, AclSet, Facts, Lookups, Rule, rule_reply};
use crate::clock::Clock;
use crate::config::DnsblAction;
use crate::config::{Config, ConfigError, FailMode};
use crate::decision_log::{log_decision, rfc5322_date};
use crate::dnslists::DnsFacts;
use crate::identity::{Identity, SPF_SCOPE_PREFIX, SpfIdentity};
use crate::metrics::Metrics;
use crate::policy::RejectReason;
use crate::policy::{Decision, Params, PassReason, TempfailReason, decide, passes_at};
use crate::record::{HostRecord, Snapshot, TupleRecord, TupleState};
use crate::risk::{Evidence, Preset, ReverseDns, Spf, is_generic_name, scale};
use crate::store::{ExpireReport, Store, StoreError};
use crate::tuple::{Key, mask, normalize_recipient, normalize_sender};
use crate::whitelist::{Subject, Whitelist};

/// What the MTA told us about one recipient (borrowed from the milter session).
#[derive(Debug, Clone, Copy, Default)]
pub struct RcptContext<'a> {
    /// Client address; `None` for non-IP (local) connections.
    pub client_addr: Option<IpAddr>,
    /// Client host name (`{client_name}` or the connect host name), if known.
    pub client_name: Option<&'a str>,
    /// `{auth_authen}`: the SMTP AUTH user, if any.
    pub auth_authen: Option<&'a str>,
    /// Envelope sender as given at MAIL (raw, brackets allowed).
    pub sender: &'a str,
    /// Envelope recipient as given at RCPT (raw, brackets allowed).
    pub recipient: &'a str,
    /// MTA queue id (`{i}`), for logs; Postfix may not have it before DATA.
    pub queue_id: Option<&'a str>,
    /// The HELO/EHLO name, if the filter asked for it (`[[acl]]` `helo` clauses).
    pub helo: Option<&'a str>,
    /// The macros `[[acl]]` rules read (see [`Engine::acl_macro_names`]) that the MTA
    /// sent, as (name, value).
    pub macros: &'a [(String, String)],
    /// Recipients of the transaction so far, this one included (0 counts as 1).
    pub rcpt_count: u64,
}

/// An SMTP reply for a tempfailed recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    /// 4xx code.
    pub code: u16,
    /// Enhanced status code, e.g. `4.7.1`.
    pub status: String,
    /// Text.
    pub text: String,
}

/// What the milter should do with the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Accept the recipient (continue).
    Continue,
    /// Reply with this temporary failure.
    Tempfail(Arc<SmtpReply>),
    /// Reply with this permanent failure (DNS block list, `dnsbl_action = "reject"`).
    Reject(Arc<SmtpReply>),
}

/// The result of [`Engine::check_rcpt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// The decision (in dry-run mode, the decision that would have been enforced).
    pub decision: Decision,
    /// What to do now.
    pub action: Action,
    /// The tuple key, if the recipient was not bypassed.
    pub key: Option<Key>,
    /// Set when this recipient passed after being delayed: the delay in seconds. The
    /// glue adds the header ([`Engine::x_greylist_header`]) at end of message.
    pub delayed: Option<u64>,
}

/// The answer to "what would happen to this tuple, and why?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision an attempt now would get.
    pub decision: Decision,
    /// The tuple key (`None` if bypassed before a key was needed).
    pub key: Option<Key>,
    /// The stored tuple record.
    pub record: Option<TupleRecord>,
    /// The stored host record of the network.
    pub host: Option<HostRecord>,
    /// Pending tuples of the network.
    pub pending_in_network: u32,
    /// When a retry would pass (unix seconds), if nothing else changes; for a tuple that
    /// would start a new round, the time a retry would pass after that attempt.
    pub passes_at: Option<u64>,
    /// The time the explanation was computed for.
    pub now: u64,
    /// The identity the tuple is keyed on.
    pub identity: Identity,
    /// DNS facts that shaped the decision, e.g. `listed on bl.test: delay 1800 s`.
    pub factors: Vec<String>,
}

#[derive(Debug)]
struct Settings {
    params: Params,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    fail_mode: FailMode,
    dry_run: bool,
    reply: Arc<SmtpReply>,
    header: Option<String>,
    expire_batch: usize,
    risk: Preset,
    outbound_trust: Option<u64>,
    acl: AclSet,
}

impl Settings {
    fn from_config(c: &Config) -> Self {
        Settings {
            params: c.params(),
            ipv4_prefix: c.greylist.ipv4_prefix,
            ipv6_prefix: c.greylist.ipv6_prefix,
            fail_mode: c.greylist.fail_open,
            dry_run: c.greylist.dry_run,
            reply: Arc::new(SmtpReply {
                code: c.reply.code,
                status: c.reply.status.clone(),
                text: c.reply.text.clone(),
            }),
            header: c.header.enabled.then(|| c.header.name.clone()),
            expire_batch: c.store.expire_batch,
            risk: c.greylist.risk,
            outbound_trust: c.outbound.learn.then_some(c.outbound.trust.0),
            acl: AclSet::new(&c.acl),
        }
    }
}

/// The reply of a `blacklist` rule that sets none of its own.
static BLACKLIST_REPLY: std::sync::LazyLock<SmtpReply> = std::sync::LazyLock::new(|| SmtpReply {
    code: 550,
    status: "5.7.1".to_owned(),
    text: "Access denied".to_owned(),
});

/// The scope part of reply pre-approval keys (`[outbound] learn`).
pub const REPLY_SCOPE: &str = "reply:";

/// Shards of the pass cache (each behind its own mutex).
const CACHE_SHARDS: usize = 16;

/// Auto-whitelisted tuple records kept in memory in front of the store.
///
/// Coherent because every change to a passed tuple goes through the engine: a refresh
/// updates the entry, [`Engine::flush_ip`] removes the network's entries, and expiry
/// only deletes records whose `expires` is past, which a hit checks itself. A hit
/// skips the host record, so a pass that the store would report as `host_trusted`
/// may be reported as `auto_whitelisted` (same action); entries are only made from
/// decisions that were not host-trusted.
#[derive(Debug)]
struct PassCache {
    shards: Vec<Mutex<HashMap<Key, TupleRecord>>>,
    per_shard: usize,
}

impl PassCache {
    fn new(entries: usize) -> Option<Self> {
        (entries > 0).then(|| PassCache {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_shard: entries.div_ceil(CACHE_SHARDS),
        })
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, TupleRecord>> {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % CACHE_SHARDS as u64).unwrap_or(0);
        self.shards
            .get(i)
            .unwrap_or(&self.shards[0])
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &Key) -> Option<TupleRecord> {
        self.shard(key).get(key).copied()
    }

    fn put(&self, key: &Key, rec: TupleRecord) {
        let mut s = self.shard(key);
        if s.len() >= self.per_shard && !s.contains_key(key) {
            // Crude but bounded: start the shard over (misses just read the store).
            s.clear();
        }
        s.insert(key.clone(), rec);
    }

    fn remove(&self, key: &Key) {
        self.shard(key).remove(key);
    }

    fn remove_network(&self, network: &str) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|k, _| k.network() != network);
        }
    }
}

/// The greylisting engine.
#[derive(Debug)]
pub struct Engine {
    settings: RwLock<Arc<Settings>>,
    whitelist: Whitelist,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    hostname: String,
    cache: Option<PassCache>,
    /// The SPF checker, when `[identity] spf` or an `[[acl]]` `spf` clause needs one.
    spf: Option<SpfIdentity>,
    /// `[identity] spf`: key tuples on the SPF-authorised domain.
    spf_keys: bool,
    dns: Option<DnsLists>,
}

/// The `[dns]` list settings with their resolver.
#[derive(Debug)]
struct DnsLists {
    facts: DnsFacts,
    dnswl: Vec<String>,
    dnsbl: Vec<String>,
    action: DnsblAction,
    dnsbl_delay: u64,
    fcrdns: bool,
    reject: Arc<SmtpReply>,
}

/// What the DNS lists say about a client.
#[derive(Debug, Default)]
struct ListFacts {
    dnswl: Option<String>,
    dnsbl: Option<String>,
}

impl Engine {
    /// Builds an engine. `config_path` locates relative whitelist files; `hostname` goes
    /// into the `X-Greylist` header.
    pub fn new(
        config: &Config,
        config_path: &Path,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hostname: impl Into<String>,
    ) -> Result<Self, Vec<ConfigError>> {
        let hostname = hostname.into();
        let settings = Settings::from_config(config);
        let spf = if config.identity.spf || settings.acl.uses_spf() {
            match SpfIdentity::new(
                config.dns.server,
                std::time::Duration::from_millis(config.dns.timeout_ms.max(1)),
                hostname.clone(),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the DNS resolver; SPF identities off");
                    None
                }
            }
        } else {
            None
        };
        let d = &config.dns;
        let dns = if d.dnswl.is_empty()
            && d.dnsbl.is_empty()
            && !d.fcrdns
            && config.greylist.risk == Preset::Balanced
            && !settings.acl.uses_dns()
        {
            None
        } else {
            match DnsFacts::new(d) {
                Ok(facts) => Some(DnsLists {
                    facts,
                    dnswl: d.dnswl.clone(),
                    dnsbl: d.dnsbl.clone(),
                    action: d.dnsbl_action,
                    dnsbl_delay: d.dnsbl_delay.0,
                    fcrdns: d.fcrdns,
                    reject: Arc::new(SmtpReply {
                        code: 550,
                        status: "5.7.1".to_owned(),
                        text: "Client address listed on a DNS block list".to_owned(),
                    }),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the DNS resolver; DNS lists off");
                    None
                }
            }
        };
        Ok(Engine {
            spf,
            spf_keys: config.identity.spf,
            dns,
            settings: RwLock::new(Arc::new(settings)),
            whitelist: Whitelist::new(config, config_path)?,
            store,
            clock,
            metrics: Metrics::default(),
            hostname,
            cache: PassCache::new(config.store.cache_entries),
        })
    }

    fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies a new configuration (timings, reply, whitelists) atomically. The store and
    /// listener settings are not changed here. On error nothing changes.
    pub fn reload(&self, config: &Config, config_path: &Path) -> Result<(), Vec<ConfigError>> {
        self.whitelist.reload(config, config_path)?;
        let settings = Settings::from_config(config);
        if self.dns.is_none() && settings.acl.uses_dns() {
            tracing::warn!(
                "[[acl]] dnsrbl clauses were added by a reload: they match nothing until a restart sets up the DNS resolver"
            );
        }
        if self.spf.is_none() && settings.acl.uses_spf() {
            tracing::warn!(
                "[[acl]] spf clauses were added by a reload: they match nothing until a restart sets up the SPF checker"
            );
        }
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        Ok(())
    }

    /// What answers `[[acl]]` `dnsrbl` and `spf` clauses.
    fn lookups(&self) -> Lookups<'_> {
        Lookups {
            dns: self.dns.as_ref().map(|d| &d.facts),
            spf: self.spf.as_ref(),
        }
    }

    /// The MTA macros the current `[[acl]]` rules read; the filter asks for them at RCPT.
    pub fn acl_macro_names(&self) -> Vec<String> {
        self.settings().acl.macro_names()
    }

    /// (name, action, recipients matched) of each current `[[acl]]` rule, in order.
    pub fn acl_matches(&self) -> Vec<(String, &'static str, u64)> {
        self.settings()
            .acl
            .rules()
            .iter()
            .map(|r| (r.name.clone(), r.action.name(), r.matches()))
            .collect()
    }

    /// Whether the current `[[acl]]` rules read the HELO name.
    pub fn acl_uses_helo(&self) -> bool {
        self.settings().acl.uses_helo()
    }

    /// The live whitelist (for `files_changed` polling and reloads).
    pub fn whitelist(&self) -> &Whitelist {
        &self.whitelist
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Decides for one recipient, records what the policy asks for, logs and counts.
    pub async fn check_rcpt(&self, ctx: &RcptContext<'_>) -> RcptOutcome {
        let s = self.settings();
        let recipient = normalize_recipient(ctx.recipient);
        let verified = match (&self.dns, ctx.client_addr) {
            (Some(d), Some(ip)) if d.fcrdns => d.facts.fcrdns(ip).await,
            _ => None,
        };
        let client_name = match &self.dns {
            Some(d) if d.fcrdns => verified.as_deref(),
            _ => ctx.client_name,
        };
        let subject = Subject {
            client_ip: ctx.client_addr,
            client_name,
            auth_authen: ctx.auth_authen,
            sender: ctx.sender,
            recipient: &recipient,
        };
        let wl = self.whitelist.current();
        let bypass = wl.check_builtin(&subject);
        if bypass == Some(crate::policy::BypassReason::Authenticated) {
            self.learn_outbound(&s, ctx.sender, &recipient).await;
        }
        let mut rule = None;
        let (decision, key) = match (bypass, ctx.client_addr) {
            (Some(b), _) => (Decision::Bypass(b), None),
            (None, None) => (
                Decision::Bypass(crate::policy::BypassReason::NonIpClient),
                None,
            ),
            (None, Some(ip)) => {
                let facts = Facts {
                    client_ip: ip,
                    client_name,
                    helo: ctx.helo,
                    sender: ctx.sender,
                    recipient: &recipient,
                    auth: ctx.auth_authen,
                    macros: ctx.macros,
                    rcpt_count: ctx.rcpt_count.max(1),
                };
                let acl = s.acl.evaluate(&facts, self.lookups()).await;
                if acl.flush
                    && let Err(e) = self.flush_ip(ip).await
                {
                    self.metrics.record_store_error();
                    tracing::warn!(client = %ip, error = %e, "acl flushaddr failed");
                }
                rule = acl.rule;
                match rule {
                    Some(r) if r.action == AclAction::Whitelist => {
                        (Decision::Bypass(crate::policy::BypassReason::Acl), None)
                    }
                    Some(r) if r.action == AclAction::Blacklist => {
                        (Decision::Reject(RejectReason::Acl), None)
                    }
                    Some(r) => {
                        let (d, key) = self
                            .acl_greylist(
                                &s,
                                r,
                                ip,
                                client_name,
                                verified.as_deref(),
                                ctx.sender,
                                &recipient,
                            )
                            .await;
                        (d, Some(key))
                    }
                    None => match wl.check_lists(&subject) {
                        Some(b) => (Decision::Bypass(b), None),
                        None => {
                            self.unlisted(
                                &s,
                                ip,
                                client_name,
                                verified.as_deref(),
                                ctx.sender,
                                &recipient,
                            )
                            .await
                        }
                    },
                }
            }
        };
        self.metrics.record_decision(&decision);
        if !rule.is_some_and(|r| r.nolog) {
            log_decision(
                ctx.queue_id,
                ctx.client_addr,
                ctx.sender,
                ctx.recipient,
                key.as_ref(),
                &decision,
                rule.map(|r| r.name.as_str()),
                s.dry_run,
            );
        }
        let action = if decision.accepts() || s.dry_run {
            Action::Continue
        } else if let Some(r) = rule.filter(|r| r.action == AclAction::Blacklist) {
            Action::Reject(rule_reply(r, &BLACKLIST_REPLY))
        } else if let Some(r) = rule {
            Action::Tempfail(rule_reply(r, &s.reply))
        } else if let (Decision::Reject(_), Some(d)) = (decision, &self.dns) {
            Action::Reject(Arc::clone(&d.reject))
        } else {
            Action::Tempfail(Arc::clone(&s.reply))
        };
        let delayed = match decision {
            Decision::Pass(PassReason::DelayMet { delayed }) => Some(delayed),
            _ => None,
        };
        RcptOutcome {
            decision,
            action,
            key,
            delayed,
        }
    }

    /// The decision for a client no rule and no whitelist list decided for: the DNS
    /// lists, outbound replies, then greylisting with the global settings.
    async fn unlisted(
        &self,
        s: &Settings,
        ip: IpAddr,
        client_name: Option<&str>,
        verified: Option<&str>,
        sender: &str,
        recipient: &str,
    ) -> (Decision, Option<Key>) {
        let lists = self.list_facts(ip).await;
        if let Some(d) = self.list_decision(&lists) {
            return (d, None);
        }
        if self.is_reply(s, sender, recipient).await {
            return (Decision::Pass(PassReason::OutboundReply), None);
        }
        let (key, spf) = self.tuple_key(s, ip, client_name, sender, recipient).await;
        let params = self.params_for(s, &lists);
        let evidence = self.evidence(s, ip, &lists, spf, verified).await;
        let d = self.decide_stored(s, &params, Some(&evidence), &key).await;
        (d, Some(key))
    }

    /// Greylisting by an `[[acl]]` `greylist` rule: no whitelist list, DNS allow list or
    /// outbound reply lets the recipient through. A rule `delay` is used as written; without
    /// one the delay is the global one, scaled as usual (DNS block list, risk preset).
    #[allow(clippy::too_many_arguments)]
    async fn acl_greylist(
        &self,
        s: &Settings,
        rule: &Rule,
        ip: IpAddr,
        client_name: Option<&str>,
        verified: Option<&str>,
        sender: &str,
        recipient: &str,
    ) -> (Decision, Key) {
        let (key, spf) = self.tuple_key(s, ip, client_name, sender, recipient).await;
        let (mut params, evidence) = match rule.delay {
            Some(_) => (s.params, None),
            None => {
                let lists = self.list_facts(ip).await;
                let mut evidence = self.evidence(s, ip, &lists, spf, verified).await;
                evidence.dnswl = false;
                (self.params_for(s, &lists), Some(evidence))
            }
        };
        rule.apply_to(&mut params);
        let d = self
            .decide_stored(s, &params, evidence.as_ref(), &key)
            .await;
        (d, key)
    }

    /// The key of the reply pre-approval for mail from `sender` to `recipient`.
    fn reply_key(sender: &str, recipient: &str) -> Key {
        Key::with_scope(
            REPLY_SCOPE,
            &normalize_sender(sender),
            &normalize_recipient(recipient),
        )
    }

    /// Records that an authenticated user sent from `sender` to `recipient`, so that
    /// mail from `recipient` to `sender` is a reply (`[outbound] learn`). Store errors
    /// are logged and otherwise ignored.
    async fn learn_outbound(&self, s: &Settings, sender: &str, recipient: &str) {
        let Some(trust) = s.outbound_trust else {
            return;
        };
        if normalize_sender(sender) == crate::tuple::NULL_SENDER {
            return;
        }
        let now = self.clock.now();
        let key = Self::reply_key(recipient, sender);
        let record = TupleRecord {
            state: TupleState::Passed,
            first_seen: now,
            passed_at: now,
            last_seen: now,
            expires: now.saturating_add(trust),
            attempts: 0,
            passes: 0,
        };
        if let Ok(Some(old)) = self.store.get(&key).await
            && old.expires >= record.expires.saturating_sub(s.params.refresh_granularity)
        {
            return;
        }
        let updates = crate::record::Updates {
            tuple: Some(crate::record::TupleWrite {
                record,
                durability: crate::record::Durability::Lazy,
            }),
            host: None,
        };
        if let Err(e) = self.store.apply(&key, &updates).await {
            self.metrics.record_store_error();
            tracing::warn!(key = %key, error = %e, "cannot record the outbound reply trust");
        }
    }

    /// Whether mail from `sender` to `recipient` replies to outbound mail of the
    /// recipient that is still trusted.
    async fn is_reply(&self, s: &Settings, sender: &str, recipient: &str) -> bool {
        if s.outbound_trust.is_none() {
            return false;
        }
        let now = self.clock.now();
        match self.store.get(&Self::reply_key(sender, recipient)).await {
            Ok(Some(r)) => r.state == TupleState::Passed && r.expires > now,
            Ok(None) => false,
            Err(e) => {
                self.metrics.record_store_error();
                tracing::warn!(error = %e, "cannot read the outbound reply trust");
                false
            }
        }
    }

    /// DNS list lookups for `ip` (none unless configured).
    async fn list_facts(&self, ip: IpAddr) -> ListFacts {
        let Some(d) = &self.dns else {
            return ListFacts::default();
        };
        let dnswl = d.facts.first_listing(ip, &d.dnswl).await.map(str::to_owned);
        let dnsbl = if dnswl.is_none() {
            d.facts.first_listing(ip, &d.dnsbl).await.map(str::to_owned)
        } else {
            None
        };
        ListFacts { dnswl, dnsbl }
    }

    /// A decision the DNS lists make on their own: allow list → bypass, block list with
    /// `reject` → reject.
    fn list_decision(&self, f: &ListFacts) -> Option<Decision> {
        if f.dnswl.is_some() {
            return Some(Decision::Bypass(crate::policy::BypassReason::Dnswl));
        }
        match (&self.dns, &f.dnsbl) {
            (Some(d), Some(_)) if d.action == DnsblAction::Reject => {
                Some(Decision::Reject(RejectReason::Dnsbl))
            }
            _ => None,
        }
    }

    /// The policy parameters for this client: the DNS block list delay if listed.
    fn params_for(&self, s: &Settings, f: &ListFacts) -> Params {
        let mut p = s.params;
        if let (Some(d), Some(_)) = (&self.dns, &f.dnsbl) {
            p.delay = p.delay.max(d.dnsbl_delay);
        }
        p
    }

    fn factors(&self, f: &ListFacts, params: &Params) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(z) = &f.dnswl {
            v.push(format!("listed on the DNS allow list {z}: not greylisted"));
        }
        if let Some(z) = &f.dnsbl {
            v.push(match self.dns.as_ref().map(|d| d.action) {
                Some(DnsblAction::Reject) => format!("listed on the DNS block list {z}: rejected"),
                _ => format!("listed on the DNS block list {z}: delay {} s", params.delay),
            });
        }
        v
    }

    /// The tuple key: on the SPF-authorised MAIL FROM domain if `[identity] spf` is on
    /// and SPF passes, else on the masked client network; and the SPF verdict.
    async fn tuple_key(
        &self,
        s: &Settings,
        ip: IpAddr,
        helo: Option<&str>,
        sender: &str,
        recipient: &str,
    ) -> (Key, Spf) {
        let norm = normalize_sender(sender);
        let mut verdict = Spf::Other;
        if let Some(spf) = self.spf.as_ref().filter(|_| self.spf_keys) {
            let (v, domain) = spf.evaluate(ip, helo.unwrap_or(""), sender).await;
            verdict = v;
            if let Some(domain) = domain {
                let key = Key::with_scope(&format!("{SPF_SCOPE_PREFIX}{domain}"), &norm, recipient);
                return (key, verdict);
            }
        }
        let net = mask(ip, s.ipv4_prefix, s.ipv6_prefix);
        (Key::new(&net, &norm, recipient), verdict)
    }

    /// The evidence for the risk preset known before the store lookup. Reverse DNS is
    /// only looked up when the preset is not `balanced` (or reused from FCrDNS).
    async fn evidence(
        &self,
        s: &Settings,
        ip: IpAddr,
        lists: &ListFacts,
        spf: Spf,
        verified: Option<&str>,
    ) -> Evidence {
        let mut e = Evidence {
            dnswl: lists.dnswl.is_some(),
            dnsbl: lists.dnsbl.is_some(),
            spf,
            ..Evidence::default()
        };
        if let Some(d) = &self.dns
            && s.risk != Preset::Balanced
        {
            let name = match verified {
                Some(n) => Some(n.to_owned()),
                None => d.facts.fcrdns(ip).await,
            };
            e.rdns = match name {
                None => ReverseDns::Missing,
                Some(n) if is_generic_name(&n, ip) => ReverseDns::Generic,
                Some(_) => ReverseDns::Named,
            };
        }
        e
    }

    /// `params` with the delay scaled by the risk preset for `evidence` and the stored
    /// host record; the factors.
    fn scaled(
        s: &Settings,
        params: &Params,
        evidence: &Evidence,
        snap: &Snapshot,
        now: u64,
    ) -> (Params, Vec<&'static str>) {
        let mut e = *evidence;
        e.host_trusted = snap.host.is_some_and(|h| h.trusted_until > now);
        e.spf_history = e.spf == Spf::Pass && snap.host.is_some_and(|h| h.passed_tuples > 0);
        let (delay, factors) = scale(s.risk, params.delay, params.retry_window / 2, &e);
        let mut p = *params;
        p.delay = delay;
        (p, factors)
    }

    /// Looks the tuple up, decides and records. `evidence` scales the delay by the risk
    /// preset; `None` keeps `params` as they are.
    async fn decide_stored(
        &self,
        s: &Settings,
        params: &Params,
        evidence: Option<&Evidence>,
        key: &Key,
    ) -> Decision {
        let now = self.clock.now();
        if let Some(cache) = &self.cache
            && let Some(rec) = cache.get(key)
        {
            if rec.state == TupleState::Passed && rec.expires > now {
                let snap = Snapshot {
                    tuple: Some(rec),
                    host: None,
                    pending_in_network: 0,
                };
                let (decision, updates) = decide(params, None, &snap, now);
                if let Some(w) = updates.tuple {
                    let t = Instant::now();
                    let r = self.store.apply(key, &updates).await;
                    self.metrics.record_store_latency(t.elapsed());
                    match r {
                        Ok(()) => cache.put(key, w.record),
                        Err(e) => {
                            cache.remove(key);
                            return self.store_failed(s, key, &e);
                        }
                    }
                }
                return decision;
            }
            cache.remove(key);
        }
        let t = Instant::now();
        let snap = self.store.lookup(key).await;
        self.metrics.record_store_latency(t.elapsed());
        let snap = match snap {
            Ok(snap) => snap,
            Err(e) => return self.store_failed(s, key, &e),
        };
        let params = match evidence {
            Some(e) => Self::scaled(s, params, e, &snap, now).0,
            None => *params,
        };
        let (decision, updates) = decide(&params, None, &snap, now);
        if params.delay == 0 && matches!(decision, Decision::Greylist { .. }) {
            return Decision::Pass(PassReason::LowRisk);
        }
        if !updates.is_empty() {
            let t = Instant::now();
            let r = self.store.apply(key, &updates).await;
            self.metrics.record_store_latency(t.elapsed());
            if let Err(e) = r {
                return self.store_failed(s, key, &e);
            }
        }
        if let Some(cache) = &self.cache
            && matches!(
                decision,
                Decision::Pass(PassReason::AutoWhitelisted | PassReason::DelayMet { .. })
            )
            && let Some(rec) = updates.tuple.map(|w| w.record).or(snap.tuple)
            && rec.state == TupleState::Passed
        {
            cache.put(key, rec);
        }
        decision
    }

    fn store_failed(&self, s: &Settings, key: &Key, e: &StoreError) -> Decision {
        self.metrics.record_store_error();
        let d = match s.fail_mode {
            FailMode::Pass => Decision::Pass(PassReason::StoreFailOpen),
            FailMode::Tempfail => Decision::Tempfail(TempfailReason::StoreUnavailable),
        };
        tracing::warn!(key = %key, error = %e, decision = d.label(), "greylist store failed");
        d
    }

    /// The `X-Greylist` header (name, value) for a message that passed after `delayed`
    /// seconds, or `None` if the header is disabled:
    /// `delayed 312 seconds by greylist-filter at HOST; Tue, 14 Nov 2023 22:13:20 +0000`.
    pub fn x_greylist_header(&self, delayed: u64) -> Option<(String, String)> {
        let name = self.settings().header.clone()?;
        let value = format!(
            "delayed {delayed} seconds by greylist-filter at {}; {}",
            self.hostname,
            rfc5322_date(self.clock.now())
        );
        Some((name, value))
    }

    /// What would happen to (ip, sender, recipient) now, and when it would pass, without
    /// changing the store. Connection facts (AUTH, host name) are not known here.
    pub async fn explain(
        &self,
        ip: IpAddr,
        sender: &str,
        recipient: &str,
    ) -> Result<Explanation, StoreError> {
        let s = self.settings();
        let now = self.clock.now();
        let rcpt = normalize_recipient(recipient);
        let subject = Subject {
            client_ip: Some(ip),
            client_name: None,
            auth_authen: None,
            sender,
            recipient: &rcpt,
        };
        let bypassed = |decision, factors| Explanation {
            decision,
            key: None,
            record: None,
            host: None,
            pending_in_network: 0,
            passes_at: match decision {
                Decision::Reject(_) => None,
                _ => Some(now),
            },
            now,
            identity: Identity::Network,
            factors,
        };
        let wl = self.whitelist.current();
        if let Some(b) = wl.check_builtin(&subject) {
            return Ok(bypassed(Decision::Bypass(b), Vec::new()));
        }
        let facts = Facts::new(ip, sender, &rcpt);
        let acl = s.acl.evaluate(&facts, self.lookups()).await;
        let mut factors = Vec::new();
        if acl.flush {
            factors
                .push("an acl rule with flushaddr would forget the network's records".to_owned());
        }
        if let Some(r) = acl.rule {
            factors.push(format!("acl {}: {}", r.name, r.action.name()));
            match r.action {
                AclAction::Whitelist => {
                    return Ok(bypassed(
                        Decision::Bypass(crate::policy::BypassReason::Acl),
                        factors,
                    ));
                }
                AclAction::Blacklist => {
                    return Ok(bypassed(Decision::Reject(RejectReason::Acl), factors));
                }
                _ => {}
            }
        } else if let Some(b) = wl.check_lists(&subject) {
            return Ok(bypassed(Decision::Bypass(b), Vec::new()));
        }
        let lists = self.list_facts(ip).await;
        let mut params = self.params_for(&s, &lists);
        match acl.rule {
            Some(r) => r.apply_to(&mut params),
            None => {
                factors.extend(self.factors(&lists, &params));
                if let Some(d) = self.list_decision(&lists) {
                    return Ok(bypassed(d, factors));
                }
            }
        }
        let (key, spf) = self.tuple_key(&s, ip, None, sender, &rcpt).await;
        let identity = Identity::of_key(&key);
        let mut evidence = self.evidence(&s, ip, &lists, spf, None).await;
        if acl.rule.is_some() {
            evidence.dnswl = false;
        }
        let fixed = acl.rule.is_some_and(|r| r.delay.is_some());
        let snap = self.store.lookup(&key).await?;
        let (params, risk) = if fixed {
            (params, Vec::new())
        } else {
            Self::scaled(&s, &params, &evidence, &snap, now)
        };
        if !risk.is_empty() {
            factors.push(format!(
                "risk preset {:?}: {} -> delay {} s",
                s.risk,
                risk.join(", "),
                params.delay
            ));
        }
        let (mut decision, _) = decide(&params, None, &snap, now);
        if params.delay == 0 && matches!(decision, Decision::Greylist { .. }) {
            decision = Decision::Pass(PassReason::LowRisk);
        }
        let at = match decision {
            Decision::Greylist { retry_after, .. } => Some(now.saturating_add(retry_after)),
            Decision::Tempfail(_) | Decision::Reject(_) => None,
            _ => passes_at(&params, &snap, now),
        };
        Ok(Explanation {
            decision,
            key: Some(key),
            record: snap.tuple,
            host: snap.host,
            pending_in_network: snap.pending_in_network,
            passes_at: at,
            now,
            identity,
            factors,
        })
    }

    /// The client network `ip` belongs to under the current prefix lengths.
    pub fn network_of(&self, ip: IpAddr) -> crate::tuple::Network {
        let s = self.settings();
        mask(ip, s.ipv4_prefix, s.ipv6_prefix)
    }

    /// Up to `limit` tuple records of the network of `ip`.
    pub async fn list_ip(
        &self,
        ip: IpAddr,
        limit: usize,
    ) -> Result<Vec<(Key, TupleRecord)>, StoreError> {
        let net = self.network_of(ip).to_string();
        self.store.list_network(&net, limit).await
    }

    /// Forgets everything about the network of `ip` (milter-greylist's `flushaddr`, on
    /// demand); returns the network and the number of tuple records deleted.
    pub async fn flush_ip(&self, ip: IpAddr) -> Result<(String, u64), StoreError> {
        let net = self.network_of(ip).to_string();
        if let Some(c) = &self.cache {
            c.remove_network(&net);
        }
        let n = self.store.flush_network(&net).await?;
        tracing::info!(network = %net, deleted = n, "greylist records flushed");
        Ok((net, n))
    }

    /// The current policy parameters.
    pub fn params(&self) -> Params {
        self.settings().params
    }

    /// Whether dry-run (learning) mode is on.
    pub fn dry_run(&self) -> bool {
        self.settings().dry_run
    }

    /// One incremental expiry step (at most `[store] expire_batch` records).
    pub async fn expire_step(&self) -> Result<ExpireReport, StoreError> {
        let batch = self.settings().expire_batch;
        self.store.expire(self.clock.now(), batch).await
    }
}
