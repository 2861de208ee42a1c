//! Risk-scaled greylisting delay: the delay follows the evidence about the client.
//!
//! Pure: [`scale`] maps a preset, the configured delay and the [`Evidence`] to the delay
//! to use and the factors that explain it (shown by `explain`).
//!
//! | evidence | `strict` | `balanced` (default) | `lenient` |
//! |---|---|---|---|
//! | trusted: DNSWL, host trust | no delay | delay | no delay |
//! | trusted: SPF pass with history (the SPF domain passed before) | delay | delay | no delay |
//! | suspicious: no or generic reverse DNS, DNSBL hit, SPF fail (each) | delay × 3, twice at most | delay | delay × 2, once |
//! | nothing known | delay | delay | delay |
//!
//! Trusted evidence wins over suspicious evidence only in `lenient`; in `strict` a
//! suspicious factor cancels the trust. `balanced` is the classic behaviour: the
//! factors are listed but the delay never changes. The result is capped at
//! `max_delay` (the retry window must leave room for a retry).

use serde::Deserialize;

/// The delay policy preset, `[greylist] risk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Longer delays for suspicious clients; only strong evidence skips the delay.
    Strict,
    /// The configured delay for everyone (classic greylisting).
    #[default]
    Balanced,
    /// No delay with any trusted evidence; moderately longer for suspicious clients.
    Lenient,
}

/// What the client's reverse DNS looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReverseDns {
    /// Not looked up.
    #[default]
    Unknown,
    /// No PTR record, or none that resolves back to the address.
    Missing,
    /// A name that looks like an access line (`dsl`, `dynamic`, the address's digits).
    Generic,
    /// A forward-confirmed, specific name.
    Named,
}

/// The SPF result for the MAIL FROM domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spf {
    /// Not evaluated, or none/neutral/softfail/errors.
    #[default]
    Other,
    /// `pass`.
    Pass,
    /// `fail`.
    Fail,
}

/// What is known about the client when the delay is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evidence {
    /// Listed on a DNS allow list.
    pub dnswl: bool,
    /// The client network is host-trusted.
    pub host_trusted: bool,
    /// SPF result.
    pub spf: Spf,
    /// SPF passed and the SPF domain has passed greylisting before.
    pub spf_history: bool,
    /// Reverse DNS.
    pub rdns: ReverseDns,
    /// Listed on a DNS block list.
    pub dnsbl: bool,
}

/// The delay to use for `evidence` under `preset`, given the configured `delay`, capped
/// at `max_delay`; and the factors, in a fixed order.
pub fn scale(preset: Preset, delay: u64, max_delay: u64, e: &Evidence) -> (u64, Vec<&'static str>) {
    let mut trusted = Vec::new();
    if e.dnswl {
        trusted.push("dnswl");
    }
    if e.host_trusted {
        trusted.push("host_trusted");
    }
    if e.spf == Spf::Pass && e.spf_history {
        trusted.push("spf_pass_with_history");
    }
    let mut suspicious = Vec::new();
    match e.rdns {
        ReverseDns::Missing => suspicious.push("no_reverse_dns"),
        ReverseDns::Generic => suspicious.push("generic_reverse_dns"),
        ReverseDns::Unknown | ReverseDns::Named => {}
    }
    if e.dnsbl {
        suspicious.push("dnsbl");
    }
    if e.spf == Spf::Fail {
        suspicious.push("spf_fail");
    }
    let strong = e.dnswl || e.host_trusted;
    let d = match preset {
        Preset::Balanced => delay,
        Preset::Lenient if !trusted.is_empty() => 0,
        Preset::Lenient if !suspicious.is_empty() => delay.saturating_mul(2),
        Preset::Lenient => delay,
        Preset::Strict if !suspicious.is_empty() => {
            let n = u32::try_from(suspicious.len().min(2)).unwrap_or(2);
            delay.saturating_mul(3u64.pow(n))
        }
        Preset::Strict if strong => 0,
        Preset::Strict => delay,
    };
    let mut factors = trusted;
    factors.extend(suspicious);
    (d.min(max_delay.max(delay)), factors)
}

/// Whether a (forward-confirmed) host name looks like an access line rather than a
/// mail server: dynamic-pool keywords, or the address's own digits in the name.
pub fn is_generic_name(name: &str, ip: std::net::IpAddr) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = n.split('.').collect();
    // The host part: everything but the last two labels (the domain).
    let host = labels.get(..labels.len().saturating_sub(2)).unwrap_or(&[]);
    const WORDS: [&str; 9] = [
        "dynamic",
        "dhcp",
        "pool",
        "dsl",
        "adsl",
        "cable",
        "ppp",
        "dialup",
        "broadband",
    ];
    let words = host
        .iter()
        .flat_map(|l| l.split(|c: char| !c.is_ascii_alphabetic()))
        .any(|w| WORDS.contains(&w));
    if words {
        return true;
    }
    if let std::net::IpAddr::V4(v4) = ip {
        let nums: Vec<String> = host
            .iter()
            .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        // Three or more of the address's octets appear as numbers in the host part.
        let hits = v4
            .octets()
            .iter()
            .filter(|o| nums.contains(&o.to_string()))
            .count();
        return hits >= 3;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: u64 = 300;
    const MAX: u64 = 4 * 3600;

    fn ev(f: impl FnOnce(&mut Evidence)) -> Evidence {
        let mut e = Evidence::default();
        f(&mut e);
        e
    }

    #[test]
    fn preset_table() {
        use Preset::*;
        let none = Evidence::default();
        let dnswl = ev(|e| e.dnswl = true);
        let trusted_host = ev(|e| e.host_trusted = true);
        let spf_hist = ev(|e| {
            e.spf = Spf::Pass;
            e.spf_history = true;
        });
        let spf_new = ev(|e| e.spf = Spf::Pass);
        let no_rdns = ev(|e| e.rdns = ReverseDns::Missing);
        let generic = ev(|e| e.rdns = ReverseDns::Generic);
        let dnsbl = ev(|e| e.dnsbl = true);
        let spf_fail = ev(|e| e.spf = Spf::Fail);
        let two_bad = ev(|e| {
            e.dnsbl = true;
            e.rdns = ReverseDns::Missing;
        });
        let three_bad = ev(|e| {
            e.dnsbl = true;
            e.rdns = ReverseDns::Generic;
            e.spf = Spf::Fail;
        });
        let mixed = ev(|e| {
            e.dnswl = true;
            e.rdns = ReverseDns::Missing;
        });
        let named = ev(|e| e.rdns = ReverseDns::Named);
        // (evidence, strict, balanced, lenient)
        let table: &[(&str, Evidence, u64, u64, u64)] = &[
            ("nothing known", none, D, D, D),
            ("named rDNS", named, D, D, D),
            ("dnswl", dnswl, 0, D, 0),
            ("host trust", trusted_host, 0, D, 0),
            ("spf pass with history", spf_hist, D, D, 0),
            ("spf pass, new domain", spf_new, D, D, D),
            ("no rDNS", no_rdns, 3 * D, D, 2 * D),
            ("generic rDNS", generic, 3 * D, D, 2 * D),
            ("dnsbl", dnsbl, 3 * D, D, 2 * D),
            ("spf fail", spf_fail, 3 * D, D, 2 * D),
            ("two suspicious", two_bad, 9 * D, D, 2 * D),
            (
                "three suspicious (capped at two)",
                three_bad,
                9 * D,
                D,
                2 * D,
            ),
            ("dnswl but no rDNS", mixed, 3 * D, D, 0),
        ];
        for (what, e, strict, balanced, lenient) in table {
            assert_eq!(scale(Strict, D, MAX, e).0, *strict, "strict: {what}");
            assert_eq!(scale(Balanced, D, MAX, e).0, *balanced, "balanced: {what}");
            assert_eq!(scale(Lenient, D, MAX, e).0, *lenient, "lenient: {what}");
        }
    }

    #[test]
    fn factors_are_listed_even_when_balanced() {
        let e = ev(|e| {
            e.dnsbl = true;
            e.spf = Spf::Pass;
            e.spf_history = true;
        });
        assert_eq!(
            scale(Preset::Balanced, D, MAX, &e),
            (D, vec!["spf_pass_with_history", "dnsbl"])
        );
    }

    #[test]
    fn capped_by_max_delay() {
        let e = ev(|e| {
            e.dnsbl = true;
            e.spf = Spf::Fail;
        });
        assert_eq!(scale(Preset::Strict, 3600, 7200, &e).0, 7200);
        // Never below the configured delay because of the cap.
        assert_eq!(scale(Preset::Strict, 3600, 60, &e).0, 3600);
    }

    #[test]
    fn generic_names() {
        let ip: std::net::IpAddr = "198.51.100.23".parse().unwrap();
        for n in [
            "dsl-198-51-100-23.example.net",
            "host23-100.pool.example.net",
            "dynamic-23.example.net",
            "c-51-100-23.cable.example.net",
            "23.100.51.198.example.net",
            "198-51-100-23.example.net",
        ] {
            assert!(is_generic_name(n, ip), "{n}");
        }
        for n in [
            "mail.example.net",
            "mx1.example.org",
            "smtp-out.example.com",
            "mail.dsl.example",
        ] {
            assert!(!is_generic_name(n, ip), "{n}");
        }
    }
}
