//! The greylisting tuple: masked client network, normalised sender, normalised recipient.
//!
//! - [`parse_client_addr`] accepts the forms MTAs hand over (`192.0.2.1`, `[192.0.2.1]`,
//!   Sendmail's `IPv6:2001:db8::1`, `[IPv6:2001:db8::1]`, IPv4-mapped IPv6).
//! - [`mask`] groups a client into its network (`/24` and `/64` by default); an
//!   IPv4-mapped IPv6 address is treated as the IPv4 address it carries, so a dual-stack
//!   MTA that reports `::ffff:192.0.2.1` shares records with `192.0.2.1`.
//! - [`normalize_sender`] folds the per-message parts of envelope senders (BATV, SRS,
//!   `+ext`, VERP numbers) so that a retry of the same message maps to the same tuple.
//! - [`Key`] is the compact store key: `network NUL sender NUL recipient`. NUL cannot
//!   appear in any part (normalisation drops control characters), so the key can be
//!   split back and a network's records are one contiguous key range (`network NUL`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The byte separating the parts of a [`Key`].
pub const KEY_SEPARATOR: char = '\0';

/// The normalised form of the null sender `<>`.
pub const NULL_SENDER: &str = "<>";

/// Parses a client address as MTAs report it: plain, bracketed, or with Sendmail's
/// `IPv6:` tag, including IPv4-mapped IPv6. Returns `None` if it is not an address
/// (for instance a local, non-IP connection).
pub fn parse_client_addr(s: &str) -> Option<IpAddr> {
    let mut s = s.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        s = inner.trim();
    }
    if s.len() >= 5 && s.is_char_boundary(5) && s[..5].eq_ignore_ascii_case("ipv6:") {
        s = &s[5..];
    }
    s.parse::<IpAddr>().ok()
}

/// Returns the IPv4 address an IPv6 address carries if it is IPv4-mapped
/// (`::ffff:a.b.c.d`), else the address unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A client network: the client address masked to the configured prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// The masked (network) address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Parses `addr/prefix` or a bare address (full-length prefix), masking the address.
    pub fn parse(s: &str) -> Option<Network> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let ip = canonical_ip(parse_client_addr(a)?);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let p = p.unwrap_or(max);
        if p > max {
            return None;
        }
        Some(mask(ip, p.min(32), p))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Masks `ip` to its network: `v4_prefix` bits for IPv4 (and IPv4-mapped IPv6),
/// `v6_prefix` bits for IPv6. Prefix lengths above the address size are clamped.
pub fn mask(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Network {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let p = v4_prefix.min(32);
            let bits = u32::from(v4);
            let m = if p == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(p))
            };
            Network {
                addr: IpAddr::V4(Ipv4Addr::from(bits & m)),
                prefix: p,
            }
        }
        IpAddr::V6(v6) => {
            let p = v6_prefix.min(128);
            let bits = u128::from(v6);
            let m = if p == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(p))
            };
            Network {
                addr: IpAddr::V6(Ipv6Addr::from(bits & m)),
                prefix: p,
            }
        }
    }
}

/// Strips surrounding whitespace and one pair of angle brackets.
fn unbracket(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .map_or(s, str::trim)
}

/// Appends `s` to `out` without its control characters.
fn push_clean(out: &mut String, s: &str) {
    if s.bytes().any(|b| b.is_ascii_control()) || !s.is_ascii() {
        out.extend(s.chars().filter(|c| !c.is_control()));
    } else {
        out.push_str(s);
    }
}

/// Appends `s` lower-cased to `out`, dropping control characters (so NUL, the key
/// separator, can never appear in a normalised part).
fn push_clean_lower(out: &mut String, s: &str) {
    // Fast path: plain ASCII without control characters (nearly every address).
    if s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        let start = out.len();
        out.push_str(s);
        if let Some(tail) = out.get_mut(start..) {
            tail.make_ascii_lowercase();
        }
        return;
    }
    for c in s.chars() {
        if !c.is_control() {
            out.extend(c.to_lowercase());
        }
    }
}

/// Normalises an envelope recipient: angle brackets and whitespace stripped, lower case.
pub fn normalize_recipient(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    push_clean_lower(&mut out, unbracket(raw));
    out
}

/// Normalises an envelope sender so per-message variations map to one value.
///
/// In order: angle brackets stripped and lower-cased; the null sender (`<>` or empty)
/// becomes [`NULL_SENDER`]; SRS0/SRS1 addresses become the original sender they wrap;
/// BATV (`prvs=`, `msprvs1=`, `btv1=`) tags are removed; a `+extension` is removed;
/// VERP-style numeric or hexadecimal parts of the local part become `#`.
pub fn normalize_sender(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    normalize_sender_into(raw, &mut out);
    out
}

/// [`normalize_sender`] writing into a caller-supplied buffer (cleared first).
pub fn normalize_sender_into(raw: &str, out: &mut String) {
    out.clear();
    let mut lower = String::with_capacity(raw.len());
    push_clean_lower(&mut lower, unbracket(raw));
    let addr = lower.trim();
    if addr.is_empty() || addr == NULL_SENDER {
        out.push_str(NULL_SENDER);
        return;
    }
    let (mut local, mut domain) = match addr.rsplit_once('@') {
        Some((l, d)) => (l, d.trim_end_matches('.')),
        None => (addr, ""),
    };
    // SRS: SRS0=hash=tt=orig-domain=orig-local@forwarder
    //      SRS1=hash=first-forwarder==hash=tt=orig-domain=orig-local@forwarder
    if let Some((l, d)) = unwrap_srs(local) {
        local = l;
        domain = d;
    }
    // BATV: prvs=tag=local (RFC draft), msprvs1=tag=local, btv1==tag==local.
    for prefix in ["prvs=", "msprvs1=", "btv1="] {
        if local.starts_with(prefix) {
            if let Some((_, l)) = local.rsplit_once('=')
                && !l.is_empty()
            {
                local = l;
            }
            break;
        }
    }
    // +extension (sub-addressing, also VERP list bounces: bounces+123-abc@list).
    if let Some((l, _)) = local.split_once('+')
        && !l.is_empty()
    {
        local = l;
    }
    fold_verp(local, out);
    if !domain.is_empty() {
        out.push('@');
        out.push_str(domain);
    }
}

/// Returns (original local part, original domain) of an SRS address, if it is one.
fn unwrap_srs(local: &str) -> Option<(&str, &str)> {
    let rest = if let Some(r) = local.strip_prefix("srs0") {
        r.strip_prefix(['=', '-', '+'])?
    } else if let Some(r) = local.strip_prefix("srs1") {
        let r = r.strip_prefix(['=', '-', '+'])?;
        // After the first forwarder comes a doubled separator and then SRS0's payload.
        let (_, inner) = r.split_once("==")?;
        inner
    } else {
        return None;
    };
    // rest = hash=tt=domain=local (the local part may itself contain '=').
    let mut parts = rest.splitn(4, '=');
    let _hash = parts.next()?;
    let _time = parts.next()?;
    let domain = parts.next()?;
    let orig_local = parts.next()?;
    if domain.is_empty() || orig_local.is_empty() {
        return None;
    }
    Some((orig_local, domain))
}

/// Copies `local` into `out`, replacing each token (split on `-._=`) that is a VERP-style
/// counter or hash with `#`: all digits, or hexadecimal with a digit and at least 4 characters.
fn fold_verp(local: &str, out: &mut String) {
    let mut start = 0;
    for (i, c) in local
        .char_indices()
        .chain(std::iter::once((local.len(), '-')))
    {
        if matches!(c, '-' | '.' | '_' | '=') {
            let tok = local.get(start..i).unwrap_or("");
            if is_verp_token(tok) {
                out.push('#');
            } else {
                out.push_str(tok);
            }
            if i < local.len() {
                out.push(c);
            }
            start = i + c.len_utf8();
        }
    }
}

fn is_verp_token(tok: &str) -> bool {
    if tok.is_empty() {
        return false;
    }
    let all_digits = tok.bytes().all(|b| b.is_ascii_digit());
    let hexy = tok.len() >= 4
        && tok.bytes().all(|b| b.is_ascii_hexdigit())
        && tok.bytes().any(|b| b.is_ascii_digit());
    all_digits || hexy
}

/// A normalised tuple, ready to be a store key.
///
/// Layout: `network NUL sender NUL recipient` in one `String`, so building a key is a
/// single allocation and a network's tuples sort together.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    buf: String,
    net_end: usize,
    sender_end: usize,
}

impl Key {
    /// Builds a key from an already masked network and normalised sender and recipient.
    /// Control characters in the parts are dropped so the separator stays unambiguous.
    pub fn new(network: &Network, sender: &str, recipient: &str) -> Key {
        use std::fmt::Write as _;
        let mut buf = String::with_capacity(48 + sender.len() + recipient.len());
        // Writing to a String cannot fail.
        let _ = write!(buf, "{network}");
        let net_end = buf.len();
        buf.push(KEY_SEPARATOR);
        push_clean(&mut buf, sender);
        let sender_end = buf.len();
        buf.push(KEY_SEPARATOR);
        push_clean(&mut buf, recipient);
        Key {
            buf,
            net_end,
            sender_end,
        }
    }

    /// Builds a key whose first part is another identity than a network, e.g.
    /// `spf:example.com` (see [`crate::identity`]).
    pub fn with_scope(scope: &str, sender: &str, recipient: &str) -> Key {
        let mut buf = String::with_capacity(scope.len() + sender.len() + recipient.len() + 2);
        push_clean(&mut buf, scope);
        let net_end = buf.len();
        buf.push(KEY_SEPARATOR);
        push_clean(&mut buf, sender);
        let sender_end = buf.len();
        buf.push(KEY_SEPARATOR);
        push_clean(&mut buf, recipient);
        Key {
            buf,
            net_end,
            sender_end,
        }
    }

    /// Builds the key for a raw tuple: masks `ip`, normalises sender and recipient.
    pub fn from_raw(ip: IpAddr, sender: &str, recipient: &str, v4: u8, v6: u8) -> Key {
        let net = mask(ip, v4, v6);
        Key::new(
            &net,
            &normalize_sender(sender),
            &normalize_recipient(recipient),
        )
    }

    /// Parses the stored byte form back into a key. `None` if it is not a valid key.
    pub fn from_bytes(b: &[u8]) -> Option<Key> {
        let s = std::str::from_utf8(b).ok()?;
        let net_end = s.find(KEY_SEPARATOR)?;
        let sender_end = net_end + 1 + s.get(net_end + 1..)?.find(KEY_SEPARATOR)?;
        Some(Key {
            buf: s.to_owned(),
            net_end,
            sender_end,
        })
    }

    /// A key with only the network part, for looking up network-level records.
    pub(crate) fn network_probe(network: &str) -> Key {
        let mut buf = String::with_capacity(network.len() + 2);
        buf.extend(network.chars().filter(|c| !c.is_control()));
        let net_end = buf.len();
        buf.push(KEY_SEPARATOR);
        buf.push(KEY_SEPARATOR);
        Key {
            buf,
            net_end,
            sender_end: net_end + 1,
        }
    }

    /// The stored byte form.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_bytes()
    }

    /// The network part, e.g. `192.0.2.0/24`.
    pub fn network(&self) -> &str {
        self.buf.get(..self.net_end).unwrap_or("")
    }

    /// The normalised sender.
    pub fn sender(&self) -> &str {
        self.buf
            .get(self.net_end + 1..self.sender_end)
            .unwrap_or("")
    }

    /// The normalised recipient.
    pub fn recipient(&self) -> &str {
        self.buf.get(self.sender_end + 1..).unwrap_or("")
    }

    /// The byte prefix shared by every key of `network` (for range scans).
    pub fn network_prefix(network: &str) -> Vec<u8> {
        let mut v = Vec::with_capacity(network.len() + 1);
        v.extend_from_slice(network.as_bytes());
        v.push(0);
        v
    }
}

impl fmt::Display for Key {
    /// `network sender recipient`, space separated, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.network(),
            self.sender(),
            self.recipient()
        )
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_mta_address_forms() {
        assert_eq!(parse_client_addr("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_client_addr("[192.0.2.1]"), Some(ip("192.0.2.1")));
        assert_eq!(
            parse_client_addr("IPv6:2001:db8::1"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            parse_client_addr("[IPv6:2001:db8::1]"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_client_addr("ipv6:::1"), Some(ip("::1")));
        assert_eq!(parse_client_addr(" 10.0.0.1 "), Some(ip("10.0.0.1")));
        assert_eq!(parse_client_addr("localhost"), None);
        assert_eq!(parse_client_addr(""), None);
        assert_eq!(parse_client_addr("[]"), None);
        assert_eq!(parse_client_addr("IPv6:"), None);
        assert_eq!(parse_client_addr("é"), None);
    }

    #[test]
    fn masks_v4_v6_and_mapped() {
        assert_eq!(mask(ip("192.0.2.77"), 24, 64).to_string(), "192.0.2.0/24");
        assert_eq!(mask(ip("192.0.2.77"), 32, 64).to_string(), "192.0.2.77/32");
        assert_eq!(mask(ip("192.0.2.77"), 0, 64).to_string(), "0.0.0.0/0");
        assert_eq!(
            mask(ip("2001:db8:1:2:3:4:5:6"), 24, 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            mask(ip("2001:db8:1:2:3:4:5:6"), 24, 48).to_string(),
            "2001:db8:1::/48"
        );
        assert_eq!(
            mask(ip("::ffff:192.0.2.77"), 24, 64).to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            mask(ip("::ffff:192.0.2.77"), 24, 64),
            mask(ip("192.0.2.1"), 24, 64)
        );
        assert_eq!(mask(ip("10.1.2.3"), 99, 200).prefix(), 32);
    }

    #[test]
    fn network_parse() {
        assert_eq!(
            Network::parse("192.0.2.9/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            Network::parse("192.0.2.9").unwrap().to_string(),
            "192.0.2.9/32"
        );
        assert_eq!(
            Network::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(Network::parse("192.0.2.0/33").is_none());
        assert!(Network::parse("nope/8").is_none());
    }

    #[test]
    fn sender_real_world_examples() {
        let cases = [
            ("prvs=1234abcd=user@example.com", "user@example.com"),
            ("<prvs=0123456789=User@Example.COM>", "user@example.com"),
            (
                "msprvs1=17302jaAAAAA=bounces@mail.example",
                "bounces@mail.example",
            ),
            (
                "SRS0=HHH=TT=domain.example=user@forwarder.example",
                "user@domain.example",
            ),
            (
                "SRS0=a1b2=XY=origin.test=alice@fwd.test",
                "alice@origin.test",
            ),
            (
                "SRS1=HHH=first.example==HHH=TT=orig.example=bob@second.example",
                "bob@orig.example",
            ),
            ("bounces+12345-abcdef@list.example", "bounces@list.example"),
            ("user+tag@Example.COM", "user@example.com"),
            ("<>", "<>"),
            ("", "<>"),
            ("< >", "<>"),
            ("  <Alice@Example.org>  ", "alice@example.org"),
            (
                "newsletter-1234567@news.example",
                "newsletter-#@news.example",
            ),
            (
                "bounce-mc.us5_9f8e7d6c5b.12345-x@mcsv.example",
                "bounce-mc.us5_#.#-x@mcsv.example",
            ),
            ("msg-dead1234beef@bounce.example", "msg-#@bounce.example"),
            ("cafe@example.com", "cafe@example.com"),
            ("john.smith@example.com.", "john.smith@example.com"),
            ("postmaster", "postmaster"),
            ("a\0b@example.com", "ab@example.com"),
            ("+only@example.com", "+only@example.com"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_sender(raw), want, "raw {raw:?}");
        }
    }

    #[test]
    fn sender_retries_of_one_message_agree() {
        // The BATV tag and SRS hash/timestamp change on every attempt.
        assert_eq!(
            normalize_sender("prvs=0111aaaa=news@example.com"),
            normalize_sender("prvs=0222bbbb=news@example.com")
        );
        assert_eq!(
            normalize_sender("SRS0=abcd=AB=example.com=u@f.example"),
            normalize_sender("SRS0=efgh=CD=example.com=u@f.example")
        );
        assert_ne!(
            normalize_sender("alice@example.com"),
            normalize_sender("bob@example.com")
        );
    }

    #[test]
    fn malformed_srs_is_left_alone() {
        assert_eq!(
            normalize_sender("srs0=broken@x.example"),
            "srs0=broken@x.example"
        );
        assert_eq!(normalize_sender("srs1=a=b@x.example"), "srs1=a=b@x.example");
    }

    #[test]
    fn recipient_normalisation() {
        assert_eq!(normalize_recipient("<Bob@Example.NET>"), "bob@example.net");
        assert_eq!(
            normalize_recipient(" bob+x@example.net "),
            "bob+x@example.net"
        );
    }

    #[test]
    fn key_round_trip() {
        let net = mask(ip("192.0.2.1"), 24, 64);
        let k = Key::new(&net, "a@b.example", "c@d.example");
        assert_eq!(k.network(), "192.0.2.0/24");
        assert_eq!(k.sender(), "a@b.example");
        assert_eq!(k.recipient(), "c@d.example");
        let back = Key::from_bytes(k.as_bytes()).unwrap();
        assert_eq!(back, k);
        assert!(
            k.as_bytes()
                .starts_with(&Key::network_prefix("192.0.2.0/24"))
        );
        assert!(Key::from_bytes(b"no separators").is_none());
        assert!(Key::from_bytes(&[0xff, 0, 0]).is_none());
        let k2 = Key::from_raw(
            ip("::ffff:192.0.2.200"),
            "<prvs=1=A@B.example>",
            "<C@D.example>",
            24,
            64,
        );
        assert_eq!(k2, k);
    }

    #[test]
    fn key_parts_cannot_smuggle_separators() {
        let net = mask(ip("192.0.2.1"), 24, 64);
        let k = Key::new(&net, "a\0x@b", "c");
        assert_eq!(k.sender(), "ax@b");
        assert_eq!(k.recipient(), "c");
    }
}
