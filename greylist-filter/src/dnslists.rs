//! DNS facts about the client: DNS allow/block list listings and its forward-confirmed
//! reverse DNS (FCrDNS) host name.
//!
//! - A DNS list is queried the usual way: `4.3.2.1.zone` (IPv4 octets reversed, IPv6
//!   nibbles reversed) for an `A` record; any answer in `127.0.0.0/8` is a listing,
//!   except `127.255.255.x`, which lists use for errors ("query refused").
//! - FCrDNS: the `PTR` names of the address whose own `A`/`AAAA` records contain the
//!   address. Only such a name is used for host and domain whitelists.
//!
//! Every lookup is bounded by the `[dns] timeout_ms`; a timeout or a DNS error counts
//! as "not listed" / "no verified name". Answers are cached by the resolver (TTL).

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::config::DnsConfig;
use crate::identity::resolver_config;

/// The name to query for `ip` in the list `zone`.
pub fn list_query(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len());
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str(zone);
            s.push('.');
            s
        }
    }
}

/// The `in-addr.arpa`/`ip6.arpa` name of `ip`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => list_query(ip, "in-addr.arpa"),
        IpAddr::V6(_) => list_query(ip, "ip6.arpa"),
    }
}

/// Whether an `A` answer of a DNS list is a listing.
pub fn is_listing(a: std::net::Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 127 && !(o[1] == 255 && o[2] == 255)
}

/// The DNS lookups of the engine.
pub struct DnsFacts {
    resolver: TokioResolver,
    timeout: Duration,
}

impl std::fmt::Debug for DnsFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsFacts")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl DnsFacts {
    /// A resolver as configured in `[dns]`.
    pub fn new(c: &DnsConfig) -> Result<DnsFacts, String> {
        let timeout = Duration::from_millis(c.timeout_ms.max(1));
        let (config, mut opts) = resolver_config(c.server);
        opts.timeout = (timeout / 2).max(Duration::from_millis(50));
        opts.attempts = 1;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(DnsFacts { resolver, timeout })
    }

    async fn a_records(&self, name: &str) -> Vec<std::net::Ipv4Addr> {
        match tokio::time::timeout(self.timeout, self.resolver.ipv4_lookup(name)).await {
            Ok(Ok(l)) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The A records `zone` answers for `ip` (empty when not listed, or on error or
    /// timeout).
    pub async fn list_answers(&self, ip: IpAddr, zone: &str) -> Vec<std::net::Ipv4Addr> {
        self.a_records(&list_query(ip, zone)).await
    }

    /// The first of `zones` listing `ip` (each query bounded by the timeout).
    pub async fn first_listing<'z>(&self, ip: IpAddr, zones: &'z [String]) -> Option<&'z str> {
        for z in zones {
            if self
                .a_records(&list_query(ip, z))
                .await
                .into_iter()
                .any(is_listing)
            {
                return Some(z.as_str());
            }
        }
        None
    }

    /// The forward-confirmed host name of `ip` (lower case, no trailing dot), if any.
    pub async fn fcrdns(&self, ip: IpAddr) -> Option<String> {
        let ptr =
            tokio::time::timeout(self.timeout, self.resolver.reverse_lookup(reverse_name(ip)))
                .await
                .ok()?
                .ok()?;
        let names: Vec<String> = ptr
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .take(5)
            .collect();
        for name in names {
            let confirmed = match ip {
                IpAddr::V4(v4) => self.a_records(&name).await.contains(&v4),
                IpAddr::V6(v6) => {
                    match tokio::time::timeout(
                        self.timeout,
                        self.resolver.ipv6_lookup(name.as_str()),
                    )
                    .await
                    {
                        Ok(Ok(l)) => l
                            .answers()
                            .iter()
                            .any(|r| matches!(&r.data, RData::AAAA(a) if a.0 == v6)),
                        _ => false,
                    }
                }
            };
            if confirmed {
                return Some(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(list_query(v4, "bl.test"), "10.2.0.192.bl.test.");
        assert_eq!(reverse_name(v4), "10.2.0.192.in-addr.arpa.");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let q = list_query(v6, "bl.test.");
        assert!(q.starts_with("1.0.0.0.0.0.0.0."), "{q}");
        assert!(q.ends_with(".8.b.d.0.1.0.0.2.bl.test."), "{q}");
        assert!(is_listing("127.0.0.2".parse().unwrap()));
        assert!(!is_listing("127.255.255.254".parse().unwrap()));
        assert!(!is_listing("10.0.0.2".parse().unwrap()));
    }
}
