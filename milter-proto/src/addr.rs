//! IP address parsing straight from the connect packet's bytes.
//!
//! Accepts exactly what `str::parse::<Ipv4Addr>` and `str::parse::<Ipv6Addr>`
//! accept (a property test compares them on arbitrary input), without the
//! UTF-8 check and at a fraction of the cost: CONNECT is decoded once per
//! SMTP connection, and with the standard parser the IPv6 address alone
//! cost more than the rest of the packet.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

/// A dotted-quad IPv4 address, nothing before or after it: four decimal
/// octets of 1 to 3 digits, no leading zero, at most 255.
pub(crate) fn parse_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut index = 0;
    let mut value: u32 = 0;
    let mut digits = 0;
    for &b in text {
        if b.is_ascii_digit() {
            // "0" alone is an octet; "01" is not.
            if digits == 3 || (digits > 0 && value == 0) {
                return None;
            }
            value = value * 10 + u32::from(b - b'0');
            digits += 1;
        } else if b == b'.' && digits > 0 {
            *octets.get_mut(index)? = u8::try_from(value).ok()?;
            index += 1;
            value = 0;
            digits = 0;
        } else {
            return None;
        }
    }
    if index != 3 || digits == 0 {
        return None;
    }
    *octets.get_mut(3)? = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Writes `addr` as a dotted quad, as `Ipv4Addr`'s `Display` does, without
/// the formatting machinery (which made it the slowest field to encode).
pub(crate) fn write_ipv4(dst: &mut BytesMut, addr: Ipv4Addr) {
    for (i, octet) in addr.octets().into_iter().enumerate() {
        if i > 0 {
            dst.put_u8(b'.');
        }
        if octet >= 100 {
            dst.put_u8(b'0' + octet / 100);
        }
        if octet >= 10 {
            dst.put_u8(b'0' + octet / 10 % 10);
        }
        dst.put_u8(b'0' + octet % 10);
    }
}

/// An IPv6 address in any RFC 4291 text form (no zone), nothing before or
/// after it: up to eight groups of 1 to 4 hex digits, at most one `::`
/// standing for at least one zero group, optionally ending in a dotted quad
/// that takes two groups. One pass over the bytes.
pub(crate) fn parse_ipv6(text: &[u8]) -> Option<Ipv6Addr> {
    let mut groups = [0u16; 8];
    let mut count = 0;
    // Where `::` stands, as a group index.
    let mut gap = None;
    let mut value: u16 = 0;
    let mut digits = 0;
    let mut group_start = 0;
    let mut after_colon = false;
    // A leading colon must be half of a leading `::`.
    if text.first() == Some(&b':') && text.get(1) != Some(&b':') {
        return None;
    }
    let mut push = |count: &mut usize, g: u16| -> Option<()> {
        *groups.get_mut(*count)? = g;
        *count += 1;
        Some(())
    };
    for (i, &b) in text.iter().enumerate() {
        let class = CLASS.get(usize::from(b)).copied().unwrap_or(OTHER);
        if class < 16 {
            if digits == 4 {
                return None;
            }
            value = (value << 4) | u16::from(class);
            digits += 1;
            after_colon = false;
        } else if class == COLON {
            if digits > 0 {
                push(&mut count, value)?;
                value = 0;
                digits = 0;
                after_colon = true;
            } else if after_colon && gap.is_none() {
                gap = Some(count);
                after_colon = false;
            } else if i == 0 {
                after_colon = true;
            } else {
                return None;
            }
            group_start = i + 1;
        } else if class == DOT {
            // An embedded IPv4 address ends the text and fills two groups.
            let [a, b, c, d] = parse_ipv4(text.get(group_start..)?)?.octets();
            push(&mut count, u16::from_be_bytes([a, b]))?;
            push(&mut count, u16::from_be_bytes([c, d]))?;
            digits = 0;
            after_colon = false;
            break;
        } else {
            return None;
        }
    }
    if digits > 0 {
        push(&mut count, value)?;
    } else if after_colon {
        // Ends in a single colon.
        return None;
    }
    match gap {
        None if count == 8 => Some(Ipv6Addr::from(groups)),
        // `::` must stand for at least one group.
        Some(at) if count < 8 => {
            // The groups after `::` go to the end, zeros in between. A
            // fixed eight steps rather than a `copy_within`: a call to
            // memmove costs more than the whole move.
            let shift = 8 - count;
            let mut out = [0u16; 8];
            for (i, slot) in out.iter_mut().enumerate() {
                if i < at {
                    *slot = groups.get(i).copied().unwrap_or_default();
                } else if i >= at + shift {
                    *slot = groups.get(i - shift).copied().unwrap_or_default();
                }
            }
            Some(Ipv6Addr::from(out))
        }
        _ => None,
    }
}

const COLON: u8 = 16;
const DOT: u8 = 17;
const OTHER: u8 = 255;

/// Each byte's class in an IPv6 address: its value if it is a hex digit,
/// [`COLON`], [`DOT`] or [`OTHER`]. One load per byte instead of a chain of
/// range checks. (Built at compile time, where an index out of range would
/// fail the build.)
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t[b':' as usize] = COLON;
    t[b'.' as usize] = DOT;
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same_as_std(s: &str) {
        assert_eq!(parse_ipv4(s.as_bytes()), s.parse().ok(), "v4 {s:?}");
        assert_eq!(parse_ipv6(s.as_bytes()), s.parse().ok(), "v6 {s:?}");
    }

    #[test]
    fn known_forms() {
        for s in [
            "0.0.0.0",
            "198.51.100.7",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.",
            "1.2.3.4.5",
            "1..2.3",
            "",
            "::",
            "::1",
            "1::",
            "2001:db8::7",
            "2001:DB8:0:0:0:0:0:7",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7::",
            "1:2:3:4:5:6:7::8",
            "::1:2:3:4:5:6:7",
            "::1:2:3:4:5:6:7:8",
            "::ffff:192.0.2.1",
            "64:ff9b::198.51.100.7",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "::1.2.3.4",
            "1.2.3.4::",
            "::01.2.3.4",
            "12345::",
            "0000:0:0:0:0:0:0:1",
            ":::",
            "1:::2",
            ":1::",
            "1::2::3",
            "fe80::1%eth0",
            "[::1]",
            "g::",
        ] {
            same_as_std(s);
        }
    }

    #[test]
    fn writes_every_octet_as_display_does() {
        // Every octet value in every position's shape (leading, inner,
        // last), so all 256 one-, two- and three-digit forms are covered.
        for n in 0..=255u8 {
            for addr in [
                Ipv4Addr::new(n, 0, 255, n),
                Ipv4Addr::new(9, n, 10, 100),
                Ipv4Addr::new(n, n, n, n),
            ] {
                let mut buf = BytesMut::new();
                write_ipv4(&mut buf, addr);
                assert_eq!(&buf[..], addr.to_string().as_bytes());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn agrees_with_std_on_arbitrary_text(s in "[0-9a-fA-F:.]{0,45}") {
            same_as_std(&s);
        }

        #[test]
        fn agrees_with_std_on_token_sequences(
            tokens in proptest::collection::vec(
                proptest::sample::select(vec![
                    "0", "1", "ab", "FFFF", "01", "12345", ":", "::", ".", "1.2.3.4", "255", "256",
                ]),
                0..12,
            ),
        ) {
            same_as_std(&tokens.concat());
        }

        #[test]
        fn agrees_with_std_on_addresses_and_their_mutations(
            v6 in any::<[u16; 8]>(),
            v4 in any::<[u8; 4]>(),
            cut in 0usize..50,
            insert in proptest::sample::select(vec!["", ":", "::", ".", "0", "00000", "f", "1.2.3.4"]),
        ) {
            let six = Ipv6Addr::from(v6).to_string();
            let four = Ipv4Addr::from(v4).to_string();
            let mapped = format!("::ffff:{four}");
            for s in [six, four, mapped] {
                same_as_std(&s);
                let at = cut.min(s.len());
                let mut m = s.clone();
                m.insert_str(at, insert);
                same_as_std(&m);
                m = s.clone();
                m.truncate(at);
                same_as_std(&m);
            }
        }
    }
}
