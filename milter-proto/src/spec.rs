//! Socket specifications as libmilter and Postfix write them.
//!
//! | spec | meaning |
//! |---|---|
//! | `unix:/path`, `local:/path`, `/path` | unix socket |
//! | `inet:PORT@HOST`, `inet:PORT` | IPv4 (libmilter); no host = all addresses |
//! | `inet6:PORT@HOST`, `inet6:PORT` | IPv6 (libmilter) |
//! | `inet:HOST:PORT`, `inet:[V6ADDR]:PORT` | Postfix's spelling |
//!
//! The protocol word is case-insensitive, as in libmilter. Hosts may be
//! names or `[literal]` addresses; resolving them is left to the caller.

use std::fmt;
use std::path::PathBuf;

/// A parsed socket specification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocketSpec {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP socket.
    Inet {
        /// Host name or address; `None` means every address of the family.
        host: Option<String>,
        /// Port.
        port: u16,
        /// Whether the spec asked for IPv6 (`inet6:`).
        ipv6: bool,
    },
}

/// A socket specification that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket specification {spec:?}: {reason}")]
pub struct SpecError {
    /// The specification as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Longest unix socket path on Linux (`sun_path` is 108 bytes with its NUL).
const MAX_UNIX_PATH: usize = 107;

impl SocketSpec {
    /// Parses a specification.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let err = |reason| SpecError {
            spec: spec.to_string(),
            reason,
        };
        let (proto, address) = match spec.split_once(':') {
            Some((p, a)) if !p.contains('/') => (p.to_ascii_lowercase(), a),
            _ => (String::new(), spec),
        };
        match proto.as_str() {
            "" | "unix" | "local" => {
                if address.is_empty() {
                    return Err(err("the socket path is empty"));
                }
                if address.len() > MAX_UNIX_PATH {
                    return Err(err("the socket path is longer than 107 bytes"));
                }
                Ok(SocketSpec::Unix(PathBuf::from(address)))
            }
            "inet" | "inet6" => {
                let ipv6 = proto == "inet6";
                let (port, host) = if let Some((port, host)) = address.split_once('@') {
                    (port, Some(host))
                } else if let Some((host, port)) = address.rsplit_once(':') {
                    // Postfix: inet:host:port, inet:[::1]:port
                    (port, Some(host))
                } else {
                    (address, None)
                };
                let port: u16 = port
                    .parse()
                    .map_err(|_| err("the port is not a number from 0 to 65535"))?;
                let host = match host {
                    None => None,
                    Some("") => return Err(err("the host after '@' is empty")),
                    Some(h) => {
                        let h = h
                            .strip_prefix('[')
                            .and_then(|h| h.strip_suffix(']'))
                            .unwrap_or(h);
                        if h.is_empty() {
                            return Err(err("the host is empty"));
                        }
                        Some(h.to_string())
                    }
                };
                let ipv6 = ipv6 || host.as_deref().is_some_and(|h| h.contains(':'));
                Ok(SocketSpec::Inet { host, port, ipv6 })
            }
            _ => Err(err("the protocol must be unix, local, inet or inet6")),
        }
    }
}

impl std::str::FromStr for SocketSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Unix(path) => write!(f, "unix:{}", path.display()),
            SocketSpec::Inet { host, port, ipv6 } => {
                let proto = if *ipv6 { "inet6" } else { "inet" };
                match host {
                    Some(h) => write!(f, "{proto}:{port}@{h}"),
                    None => write!(f, "{proto}:{port}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(host: Option<&str>, port: u16, ipv6: bool) -> SocketSpec {
        SocketSpec::Inet {
            host: host.map(str::to_string),
            port,
            ipv6,
        }
    }

    #[test]
    fn accepts_every_spelling() {
        let cases = [
            ("unix:/run/m.sock", SocketSpec::Unix("/run/m.sock".into())),
            ("local:/run/m.sock", SocketSpec::Unix("/run/m.sock".into())),
            ("/run/m.sock", SocketSpec::Unix("/run/m.sock".into())),
            ("UNIX:/run/m.sock", SocketSpec::Unix("/run/m.sock".into())),
            ("inet:7357@127.0.0.1", inet(Some("127.0.0.1"), 7357, false)),
            ("inet:7357", inet(None, 7357, false)),
            ("inet:127.0.0.1:7357", inet(Some("127.0.0.1"), 7357, false)),
            ("inet:localhost:25", inet(Some("localhost"), 25, false)),
            ("inet:[::1]:7357", inet(Some("::1"), 7357, true)),
            ("inet6:7357@::1", inet(Some("::1"), 7357, true)),
            ("inet6:7357@[::1]", inet(Some("::1"), 7357, true)),
            ("inet6:7357", inet(None, 7357, true)),
        ];
        for (text, want) in cases {
            assert_eq!(SocketSpec::parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn refuses_bad_specs_with_a_reason() {
        for (text, reason) in [
            (
                "tcp:25@host",
                "the protocol must be unix, local, inet or inet6",
            ),
            (
                "inet:notaport@host",
                "the port is not a number from 0 to 65535",
            ),
            (
                "inet:70000@host",
                "the port is not a number from 0 to 65535",
            ),
            ("inet:25@", "the host after '@' is empty"),
            ("unix:", "the socket path is empty"),
            ("inet:[]:25", "the host is empty"),
        ] {
            let e = SocketSpec::parse(text).unwrap_err();
            assert_eq!(e.reason, reason, "{text}");
            assert!(e.to_string().contains(text));
        }
        let long = format!("unix:/{}", "x".repeat(120));
        assert!(SocketSpec::parse(&long).is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in ["unix:/a/b", "inet:25@host", "inet6:25@::1", "inet:25"] {
            let spec = SocketSpec::parse(text).unwrap();
            assert_eq!(SocketSpec::parse(&spec.to_string()).unwrap(), spec);
        }
    }
}
