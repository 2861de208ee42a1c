//! Whitelists and bypasses: which recipients greylisting does not apply to.
//!
//! A [`WhitelistSet`] is built from the `[whitelist]` configuration and its files and is
//! immutable; [`Whitelist`] holds the current one and swaps in a rebuilt set atomically
//! (on SIGHUP, or when [`Whitelist::files_changed`] says a file's mtime moved).
//!
//! Order of checks (first match wins): non-IP client, loopback, local networks, SMTP
//! AUTH, `postmaster@`/`abuse@`, opt-out, opt-in, client networks, client host/domain,
//! sender, recipient, regular expressions.
//!
//! Lookups are hash-based: networks are grouped by prefix length (one masked hash lookup
//! per distinct length), domains are matched by walking label suffixes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ipnet::IpNet;
use regex::RegexSet;

use crate::config::{Cidr, Config, ConfigError, resolve};
use crate::policy::BypassReason;
use crate::tuple::canonical_ip;

/// What the whitelist sees of one recipient.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// Client address; `None` for non-IP connections.
    pub client_ip: Option<IpAddr>,
    /// Client host name from the MTA (`{client_name}`), if resolved.
    pub client_name: Option<&'a str>,
    /// `{auth_authen}`, if the client authenticated.
    pub auth_authen: Option<&'a str>,
    /// Raw envelope sender.
    pub sender: &'a str,
    /// Normalised envelope recipient (lower case, no brackets).
    pub recipient: &'a str,
}

/// A set of networks grouped by prefix length for hash lookups.
#[derive(Debug, Default, Clone)]
pub struct NetSet {
    v4: Vec<(u8, HashSet<u32>)>,
    v6: Vec<(u8, HashSet<u128>)>,
}

impl NetSet {
    /// Adds a network.
    pub fn insert(&mut self, net: IpNet) {
        match net.trunc() {
            IpNet::V4(n) => {
                let p = n.prefix_len();
                let bits = u32::from(n.network());
                match self.v4.iter_mut().find(|(l, _)| *l == p) {
                    Some((_, s)) => {
                        s.insert(bits);
                    }
                    None => self.v4.push((p, HashSet::from([bits]))),
                }
            }
            IpNet::V6(n) => {
                let p = n.prefix_len();
                let bits = u128::from(n.network());
                match self.v6.iter_mut().find(|(l, _)| *l == p) {
                    Some((_, s)) => {
                        s.insert(bits);
                    }
                    None => self.v6.push((p, HashSet::from([bits]))),
                }
            }
        }
    }

    /// True if `ip` (IPv4-mapped treated as IPv4) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                self.v4.iter().any(|(p, s)| {
                    let m = if *p == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(*p))
                    };
                    s.contains(&(bits & m))
                })
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                self.v6.iter().any(|(p, s)| {
                    let m = if *p == 0 {
                        0
                    } else {
                        u128::MAX << (128 - u32::from(*p))
                    };
                    s.contains(&(bits & m))
                })
            }
        }
    }

    /// True if there is no network.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Domain names: an entry matches itself and its subdomains (on label boundaries).
#[derive(Debug, Default, Clone)]
pub(crate) struct DomainSet(HashSet<String>);

impl DomainSet {
    pub(crate) fn insert(&mut self, d: &str) {
        let d = d.trim().trim_start_matches('.').trim_end_matches('.');
        if !d.is_empty() {
            self.0.insert(d.to_ascii_lowercase());
        }
    }

    /// `name` must already be lower case.
    pub(crate) fn matches(&self, name: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let mut s = name.trim_end_matches('.');
        loop {
            if self.0.contains(s) {
                return true;
            }
            match s.split_once('.') {
                Some((_, rest)) => s = rest,
                None => return false,
            }
        }
    }
}

/// Addresses (`user@domain`), local parts (`user@`, in any domain) and domains
/// (`domain`, `@domain`, subdomains included).
#[derive(Debug, Default, Clone)]
pub(crate) struct AddrSet {
    addresses: HashSet<String>,
    local_parts: HashSet<String>,
    domains: DomainSet,
}

impl AddrSet {
    pub(crate) fn insert(&mut self, entry: &str) {
        let e = entry.trim().trim_start_matches('<').trim_end_matches('>');
        if let Some(d) = e.strip_prefix('@') {
            self.domains.insert(d);
        } else if let Some(l) = e.strip_suffix('@') {
            self.local_parts.insert(l.to_lowercase());
        } else if e.contains('@') {
            self.addresses.insert(e.to_lowercase());
        } else {
            self.domains.insert(e);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.local_parts.is_empty() && self.domains.0.is_empty()
    }

    /// `addr` must already be lower case.
    pub(crate) fn matches(&self, addr: &str) -> bool {
        if self.addresses.contains(addr) {
            return true;
        }
        match addr.rsplit_once('@') {
            Some((l, d)) => self.local_parts.contains(l) || self.domains.matches(d),
            None => false,
        }
    }
}

/// An immutable, compiled whitelist.
#[derive(Debug, Default)]
pub struct WhitelistSet {
    authenticated: bool,
    local: NetSet,
    networks: NetSet,
    hosts: DomainSet,
    senders: AddrSet,
    recipients: AddrSet,
    opt_out: AddrSet,
    opt_in: AddrSet,
    sender_regex: Option<RegexSet>,
    recipient_regex: Option<RegexSet>,
    host_regex: Option<RegexSet>,
}

fn regex_set(patterns: &[crate::config::Pattern]) -> Result<Option<RegexSet>, regex::Error> {
    if patterns.is_empty() {
        return Ok(None);
    }
    regex::RegexSetBuilder::new(patterns.iter().map(|p| p.0.as_str()))
        .case_insensitive(true)
        .size_limit(1 << 22)
        .build()
        .map(Some)
}

/// Reads a whitelist file: one entry per line, `#` starts a comment.
/// Returns (line number, entry) pairs.
pub fn read_list_file(path: &Path) -> Result<Vec<(usize, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read whitelist file: {e}"),
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let entry = l.split('#').next().unwrap_or("").trim();
            (!entry.is_empty()).then(|| (i + 1, entry.to_owned()))
        })
        .collect())
}

impl WhitelistSet {
    /// Compiles the `[whitelist]` section and reads its files (relative to `config_path`).
    pub fn build(config: &Config, config_path: &Path) -> Result<Self, Vec<ConfigError>> {
        let w = &config.whitelist;
        let mut errors = Vec::new();
        let mut set = WhitelistSet {
            authenticated: w.authenticated,
            ..Default::default()
        };
        for n in &w.local_networks {
            set.local.insert(n.0);
        }
        for n in &w.networks {
            set.networks.insert(n.0);
        }
        for h in &w.hosts {
            set.hosts.insert(h);
        }
        for s in &w.senders {
            set.senders.insert(s);
        }
        for r in &w.recipients {
            set.recipients.insert(r);
        }
        for r in &w.opt_out {
            set.opt_out.insert(r);
        }
        for r in &w.opt_in {
            set.opt_in.insert(r);
        }
        let mut load = |files: &[PathBuf], add: &mut dyn FnMut(&str) -> bool| {
            for f in files {
                let full = resolve(config_path, f);
                match read_list_file(&full) {
                    Ok(entries) => {
                        for (line, e) in entries {
                            if !add(&e) {
                                errors.push(ConfigError {
                                    file: full.clone(),
                                    line,
                                    column: 1,
                                    message: format!("invalid entry {e:?}"),
                                });
                            }
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        };
        load(&w.network_files, &mut |e| match Cidr::parse(e) {
            Some(c) => {
                set.networks.insert(c.0);
                true
            }
            None => false,
        });
        load(&w.host_files, &mut |e| {
            set.hosts.insert(e);
            true
        });
        load(&w.sender_files, &mut |e| {
            set.senders.insert(e);
            true
        });
        load(&w.recipient_files, &mut |e| {
            set.recipients.insert(e);
            true
        });
        let mut compile = |patterns: &[crate::config::Pattern], key: &str| match regex_set(patterns)
        {
            Ok(s) => s,
            Err(e) => {
                errors.push(ConfigError {
                    file: config_path.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("whitelist.{key}: {e}"),
                });
                None
            }
        };
        set.sender_regex = compile(&w.sender_regex, "sender_regex");
        set.recipient_regex = compile(&w.recipient_regex, "recipient_regex");
        set.host_regex = compile(&w.host_regex, "host_regex");
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// The bypass reason for `s`, or `None` if the recipient is to be greylisted:
    /// [`WhitelistSet::check_builtin`], then [`WhitelistSet::check_lists`].
    pub fn check(&self, s: &Subject<'_>) -> Option<BypassReason> {
        self.check_builtin(s).or_else(|| self.check_lists(s))
    }

    /// The bypasses checked before `[[acl]]` rules: non-IP and loopback clients, local
    /// networks, authenticated clients, `postmaster@`/`abuse@`, opt-out and opt-in.
    pub fn check_builtin(&self, s: &Subject<'_>) -> Option<BypassReason> {
        let Some(ip) = s.client_ip else {
            return Some(BypassReason::NonIpClient);
        };
        let ip = canonical_ip(ip);
        if ip.is_loopback() {
            return Some(BypassReason::Loopback);
        }
        if self.local.contains(ip) {
            return Some(BypassReason::LocalNetwork);
        }
        if self.authenticated && s.auth_authen.is_some_and(|a| !a.trim().is_empty()) {
            return Some(BypassReason::Authenticated);
        }
        let rcpt = s.recipient;
        let rcpt_local = rcpt.rsplit_once('@').map_or(rcpt, |(l, _)| l);
        if rcpt_local == "postmaster" || rcpt_local == "abuse" {
            return Some(BypassReason::SpecialRecipient);
        }
        if self.opt_out.matches(rcpt) {
            return Some(BypassReason::OptOut);
        }
        if !self.opt_in.is_empty() && !self.opt_in.matches(rcpt) {
            return Some(BypassReason::NotOptedIn);
        }
        None
    }

    /// The whitelist lists, checked after `[[acl]]` rules that did not decide: client
    /// networks, host names, senders, recipients and regular expressions.
    pub fn check_lists(&self, s: &Subject<'_>) -> Option<BypassReason> {
        let ip = canonical_ip(s.client_ip?);
        let rcpt = s.recipient;
        if self.networks.contains(ip) {
            return Some(BypassReason::ClientNetwork);
        }
        // Lower-case copies are made only when a list needs them.
        let host = s
            .client_name
            .map(str::trim)
            .filter(|h| !h.is_empty() && !h.starts_with('[') && *h != "unknown");
        if let Some(h) = host
            && !self.hosts.0.is_empty()
            && self.hosts.matches(&h.to_ascii_lowercase())
        {
            return Some(BypassReason::ClientHost);
        }
        if !self.senders.is_empty() {
            let raw = s
                .sender
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>');
            let lower = raw.to_lowercase();
            if self.senders.matches(&lower)
                || self
                    .senders
                    .matches(&crate::tuple::normalize_sender(s.sender))
            {
                return Some(BypassReason::Sender);
            }
        }
        if self.recipients.matches(rcpt) {
            return Some(BypassReason::Recipient);
        }
        let raw_sender = s
            .sender
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        if self
            .sender_regex
            .as_ref()
            .is_some_and(|r| r.is_match(raw_sender))
            || self
                .recipient_regex
                .as_ref()
                .is_some_and(|r| r.is_match(rcpt))
            || host.is_some_and(|h| self.host_regex.as_ref().is_some_and(|r| r.is_match(h)))
        {
            return Some(BypassReason::Regex);
        }
        None
    }
}

/// The live whitelist: the current [`WhitelistSet`] plus what is needed to rebuild it.
#[derive(Debug)]
pub struct Whitelist {
    current: RwLock<Arc<WhitelistSet>>,
    files: RwLock<Vec<(PathBuf, Option<SystemTime>)>>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn file_list(config: &Config, config_path: &Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    let w = &config.whitelist;
    w.network_files
        .iter()
        .chain(&w.host_files)
        .chain(&w.sender_files)
        .chain(&w.recipient_files)
        .map(|f| {
            let full = resolve(config_path, f);
            let t = mtime(&full);
            (full, t)
        })
        .collect()
}

impl Whitelist {
    /// Builds the whitelist from the configuration and its files.
    pub fn new(config: &Config, config_path: &Path) -> Result<Self, Vec<ConfigError>> {
        let files = file_list(config, config_path);
        let set = WhitelistSet::build(config, config_path)?;
        Ok(Whitelist {
            current: RwLock::new(Arc::new(set)),
            files: RwLock::new(files),
        })
    }

    /// The set in force.
    pub fn current(&self) -> Arc<WhitelistSet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Rebuilds from `config` and swaps it in. On error the old set stays in force.
    pub fn reload(&self, config: &Config, config_path: &Path) -> Result<(), Vec<ConfigError>> {
        let files = file_list(config, config_path);
        let set = WhitelistSet::build(config, config_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        *self.files.write().unwrap_or_else(|e| e.into_inner()) = files;
        Ok(())
    }

    /// True if a whitelist file's modification time (or existence) changed since the
    /// last build.
    pub fn files_changed(&self) -> bool {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(p, t)| mtime(p) != *t)
    }

    /// The bypass reason for `s` under the current set.
    pub fn check(&self, s: &Subject<'_>) -> Option<BypassReason> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    fn subj<'a>(ip: &str, sender: &'a str, rcpt: &'a str) -> Subject<'a> {
        Subject {
            client_ip: Some(ip.parse().unwrap()),
            client_name: None,
            auth_authen: None,
            sender,
            recipient: rcpt,
        }
    }

    #[test]
    fn builtin_bypasses() {
        let w = WhitelistSet::build(&Config::default(), Path::new("t")).unwrap();
        let base = subj("198.51.100.7", "a@example.com", "bob@example.net");
        assert_eq!(w.check(&base), None);
        assert_eq!(
            w.check(&Subject {
                client_ip: None,
                ..base
            }),
            Some(BypassReason::NonIpClient)
        );
        for lo in ["127.0.0.1", "::1", "::ffff:127.0.0.5"] {
            assert_eq!(
                w.check(&subj(lo, "a@b", "c@d")),
                Some(BypassReason::Loopback),
                "{lo}"
            );
        }
        assert_eq!(
            w.check(&Subject {
                auth_authen: Some("alice"),
                ..base
            }),
            Some(BypassReason::Authenticated)
        );
        assert_eq!(
            w.check(&Subject {
                auth_authen: Some(""),
                ..base
            }),
            None,
            "empty {{auth_authen}} is not authenticated"
        );
        for r in ["postmaster@example.net", "abuse@example.org", "postmaster"] {
            assert_eq!(
                w.check(&subj("198.51.100.7", "a@b", r)),
                Some(BypassReason::SpecialRecipient)
            );
        }
    }

    #[test]
    fn configured_lists() {
        let c = cfg(r#"
[whitelist]
authenticated = false
local_networks = ["10.0.0.0/8"]
networks = ["192.0.2.0/24", "2001:db8::/32", "203.0.113.9"]
hosts = ["outbound.protection.outlook.com", "mx.example.org"]
senders = ["alerts@example.com", "@trusted.example", "partner.example", "mailer-daemon@"]
recipients = ["vip@example.net", "@nogrey.example"]
sender_regex = ["^bounce-.*@lists\\."]
recipient_regex = ["^sales-"]
host_regex = ["^mail\\d+\\.corp\\."]
opt_out = ["optout@example.net"]
"#);
        let w = WhitelistSet::build(&c, Path::new("t")).unwrap();
        let check = |ip: &str, name: Option<&str>, s: &str, r: &str| {
            w.check(&Subject {
                client_ip: Some(ip.parse().unwrap()),
                client_name: name,
                auth_authen: Some("someone"),
                sender: s,
                recipient: r,
            })
        };
        let x = "x@example.com";
        let r = "r@example.net";
        assert_eq!(
            check("10.9.8.7", None, x, r),
            Some(BypassReason::LocalNetwork)
        );
        assert_eq!(
            check("::ffff:10.9.8.7", None, x, r),
            Some(BypassReason::LocalNetwork)
        );
        assert_eq!(
            check("198.51.100.1", None, x, r),
            None,
            "auth bypass disabled"
        );
        assert_eq!(
            check("192.0.2.200", None, x, r),
            Some(BypassReason::ClientNetwork)
        );
        assert_eq!(
            check("2001:db8:ff::1", None, x, r),
            Some(BypassReason::ClientNetwork)
        );
        assert_eq!(
            check("203.0.113.9", None, x, r),
            Some(BypassReason::ClientNetwork)
        );
        assert_eq!(check("203.0.113.10", None, x, r), None);
        let outlook = Some("mail-db5eur01on2101.OUTBOUND.protection.outlook.com");
        assert_eq!(
            check("198.51.100.1", outlook, x, r),
            Some(BypassReason::ClientHost)
        );
        assert_eq!(
            check("198.51.100.1", Some("mx.example.org."), x, r),
            Some(BypassReason::ClientHost)
        );
        assert_eq!(
            check("198.51.100.1", Some("evilmx.example.org"), x, r),
            None,
            "label boundary"
        );
        assert_eq!(check("198.51.100.1", Some("[198.51.100.1]"), x, r), None);
        assert_eq!(
            check("198.51.100.1", None, "<Alerts@Example.com>", r),
            Some(BypassReason::Sender)
        );
        assert_eq!(
            check("198.51.100.1", None, "prvs=123abc=alerts@example.com", r),
            Some(BypassReason::Sender)
        );
        assert_eq!(
            check("198.51.100.1", None, "a@mail.trusted.example", r),
            Some(BypassReason::Sender)
        );
        // A local part in any domain, and only as the whole local part.
        assert_eq!(
            check("198.51.100.1", None, "MAILER-DAEMON@x.example", r),
            Some(BypassReason::Sender)
        );
        assert_eq!(
            check("198.51.100.1", None, "mailer-daemon2@x.example", r),
            None
        );
        assert_eq!(
            check("198.51.100.1", None, "a@partner.example", r),
            Some(BypassReason::Sender)
        );
        assert_eq!(
            check("198.51.100.1", None, x, "vip@example.net"),
            Some(BypassReason::Recipient)
        );
        assert_eq!(
            check("198.51.100.1", None, x, "a@nogrey.example"),
            Some(BypassReason::Recipient)
        );
        assert_eq!(
            check("198.51.100.1", None, "bounce-12@lists.example", r),
            Some(BypassReason::Regex)
        );
        assert_eq!(
            check("198.51.100.1", None, x, "sales-eu@example.net"),
            Some(BypassReason::Regex)
        );
        assert_eq!(
            check("198.51.100.1", Some("MAIL12.corp.example"), x, r),
            Some(BypassReason::Regex)
        );
        assert_eq!(
            check("198.51.100.1", None, x, "optout@example.net"),
            Some(BypassReason::OptOut)
        );
    }

    #[test]
    fn opt_in_mode() {
        let c = cfg("[whitelist]\nopt_in = [\"greyme@example.net\", \"@grey.example\"]\n");
        let w = WhitelistSet::build(&c, Path::new("t")).unwrap();
        assert_eq!(
            w.check(&subj("198.51.100.1", "a@b.c", "greyme@example.net")),
            None
        );
        assert_eq!(
            w.check(&subj("198.51.100.1", "a@b.c", "x@grey.example")),
            None
        );
        assert_eq!(
            w.check(&subj("198.51.100.1", "a@b.c", "other@example.net")),
            Some(BypassReason::NotOptedIn)
        );
    }

    #[test]
    fn files_load_report_errors_and_reload_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("g.toml");
        let nets = dir.path().join("nets.txt");
        std::fs::write(&nets, "# our partners\n192.0.2.0/24  # partner A\n\n").unwrap();
        std::fs::write(dir.path().join("senders.txt"), "news@example.com\n").unwrap();
        let c = Config::parse(
            "[whitelist]\nnetwork_files = [\"nets.txt\"]\nsender_files = [\"senders.txt\"]\n",
            &cfg_path,
        )
        .unwrap();
        let w = Whitelist::new(&c, &cfg_path).unwrap();
        assert_eq!(
            w.check(&subj("192.0.2.9", "a@b.c", "r@d.e")),
            Some(BypassReason::ClientNetwork)
        );
        assert_eq!(
            w.check(&subj("198.51.100.1", "news@example.com", "r@d.e")),
            Some(BypassReason::Sender)
        );
        assert_eq!(w.check(&subj("198.51.100.1", "a@b.c", "r@d.e")), None);
        assert!(!w.files_changed());

        // Change the file (set an mtime that differs for sure), then reload.
        std::fs::write(&nets, "198.51.100.0/24\n").unwrap();
        let f = std::fs::File::options().write(true).open(&nets).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        assert!(w.files_changed());
        w.reload(&c, &cfg_path).unwrap();
        assert!(!w.files_changed());
        assert_eq!(
            w.check(&subj("198.51.100.1", "a@b.c", "r@d.e")),
            Some(BypassReason::ClientNetwork)
        );
        assert_eq!(w.check(&subj("192.0.2.9", "a@b.c", "r@d.e")), None);

        // A bad entry is reported with file and line; the old set stays.
        std::fs::write(&nets, "192.0.2.0/24\nnot a network\n").unwrap();
        let errs = w.reload(&c, &cfg_path).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 2);
        assert!(errs[0].file.ends_with("nets.txt"));
        assert_eq!(
            w.check(&subj("198.51.100.1", "a@b.c", "r@d.e")),
            Some(BypassReason::ClientNetwork)
        );
    }

    #[test]
    fn netset_prefix_zero_and_v6() {
        let mut n = NetSet::default();
        assert!(n.is_empty());
        n.insert("0.0.0.0/0".parse().unwrap());
        assert!(n.contains("8.8.8.8".parse().unwrap()));
        assert!(!n.contains("2001:db8::1".parse().unwrap()));
        n.insert("2001:db8::/32".parse().unwrap());
        assert!(n.contains("2001:db8:1::1".parse().unwrap()));
    }
}
