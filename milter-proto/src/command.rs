//! MTA → filter commands (`SMFIC_*`), decoded and encoded.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};

use crate::addr;
use crate::error::{DecodeError, EncodeError};
use crate::frame::Frame;
use crate::negotiate::{Actions, OptNeg, ProtocolFlags};
use crate::wire::{Reader, Writer};

/// Command bytes (`SMFIC_*`).
pub mod code {
    /// Option negotiation.
    #[doc(alias = "SMFIC_OPTNEG")]
    pub const OPTNEG: u8 = b'O';
    /// Macro definitions.
    #[doc(alias = "SMFIC_MACRO")]
    pub const MACRO: u8 = b'D';
    /// Connection information.
    #[doc(alias = "SMFIC_CONNECT")]
    pub const CONNECT: u8 = b'C';
    /// HELO/EHLO name.
    #[doc(alias = "SMFIC_HELO")]
    pub const HELO: u8 = b'H';
    /// MAIL FROM.
    #[doc(alias = "SMFIC_MAIL")]
    pub const MAIL: u8 = b'M';
    /// RCPT TO.
    #[doc(alias = "SMFIC_RCPT")]
    pub const RCPT: u8 = b'R';
    /// DATA.
    #[doc(alias = "SMFIC_DATA")]
    pub const DATA: u8 = b'T';
    /// One header.
    #[doc(alias = "SMFIC_HEADER")]
    pub const HEADER: u8 = b'L';
    /// End of headers.
    #[doc(alias = "SMFIC_EOH")]
    pub const EOH: u8 = b'N';
    /// A body chunk.
    #[doc(alias = "SMFIC_BODY")]
    pub const BODY: u8 = b'B';
    /// End of message.
    #[doc(alias = "SMFIC_BODYEOB")]
    pub const BODYEOB: u8 = b'E';
    /// Abort the current message.
    #[doc(alias = "SMFIC_ABORT")]
    pub const ABORT: u8 = b'A';
    /// Close the connection.
    #[doc(alias = "SMFIC_QUIT")]
    pub const QUIT: u8 = b'Q';
    /// End the SMTP session but keep the milter connection for a new one.
    #[doc(alias = "SMFIC_QUIT_NC")]
    pub const QUIT_NC: u8 = b'K';
    /// An SMTP command the MTA does not know.
    #[doc(alias = "SMFIC_UNKNOWN")]
    pub const UNKNOWN: u8 = b'U';
}

/// A command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Option negotiation: the MTA's offer.
    #[doc(alias = "SMFIC_OPTNEG")]
    OptNeg(OptNeg),
    /// Macros for the next command.
    #[doc(alias = "SMFIC_MACRO")]
    Macro(Macros),
    /// The SMTP client's host name and address.
    #[doc(alias = "SMFIC_CONNECT")]
    Connect(Connect),
    /// The HELO/EHLO argument.
    #[doc(alias = "SMFIC_HELO")]
    Helo(Bytes),
    /// MAIL FROM with its ESMTP arguments.
    #[doc(alias = "SMFIC_MAIL")]
    Mail(Envelope),
    /// RCPT TO with its ESMTP arguments.
    #[doc(alias = "SMFIC_RCPT")]
    Rcpt(Envelope),
    /// DATA (protocol version 4 and later).
    #[doc(alias = "SMFIC_DATA")]
    Data,
    /// One message header.
    #[doc(alias = "SMFIC_HEADER")]
    Header(Header),
    /// End of headers.
    #[doc(alias = "SMFIC_EOH")]
    EndOfHeaders,
    /// A chunk of the body (CRLF line ends; chunks split lines anywhere).
    #[doc(alias = "SMFIC_BODY")]
    Body(Bytes),
    /// End of message, with an optional last body chunk (real MTAs send none).
    #[doc(alias = "SMFIC_BODYEOB")]
    EndOfMessage(Bytes),
    /// Abort the current message.
    #[doc(alias = "SMFIC_ABORT")]
    Abort,
    /// Close the connection.
    #[doc(alias = "SMFIC_QUIT")]
    Quit,
    /// End of the SMTP session; the connection is reused for a new CONNECT.
    #[doc(alias = "SMFIC_QUIT_NC")]
    QuitNc,
    /// A whole SMTP command line the MTA did not recognise (version 3+).
    #[doc(alias = "SMFIC_UNKNOWN")]
    Unknown(Bytes),
}

/// Macro definitions for one stage: `'D'`, the command byte they precede,
/// then NUL-terminated name/value pairs. Kept as the wire bytes; the pairs
/// are read lazily, without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macros {
    /// The command byte these macros belong to (`C H M R T N E`, or others
    /// that some MTAs send and libmilter ignores).
    pub stage: u8,
    data: Bytes,
}

impl Macros {
    /// Builds a macro packet from pairs. Names and values must not contain NUL.
    pub fn new<N: AsRef<[u8]>, V: AsRef<[u8]>>(
        stage: u8,
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, EncodeError> {
        let mut data = BytesMut::new();
        for (name, value) in pairs {
            let (name, value) = (name.as_ref(), value.as_ref());
            if name.contains(&0) {
                return Err(EncodeError::InteriorNul {
                    field: "macro name",
                });
            }
            if value.contains(&0) {
                return Err(EncodeError::InteriorNul {
                    field: "macro value",
                });
            }
            data.extend_from_slice(name);
            data.extend_from_slice(b"\0");
            data.extend_from_slice(value);
            data.extend_from_slice(b"\0");
        }
        Ok(Self {
            stage,
            data: data.freeze(),
        })
    }

    /// Copies the pairs into their own allocation, releasing the buffer
    /// they were received in.
    pub fn detach(&mut self) {
        self.data = Bytes::copy_from_slice(&self.data);
    }

    /// The raw NUL-separated pairs as received.
    pub fn raw(&self) -> &Bytes {
        &self.data
    }

    /// The raw pairs, consuming the packet.
    pub(crate) fn into_raw(self) -> Bytes {
        self.data
    }

    /// The name/value pairs. A name without a value (an odd number of
    /// strings, which Sendmail has been seen to send) gets an empty value;
    /// bytes after the last NUL are ignored, as libmilter does.
    pub fn pairs(&self) -> MacroPairs<'_> {
        MacroPairs {
            data: &self.data,
            pos: 0,
        }
    }

    /// Whether the packet defines no macro (normal: MTAs send empty packets).
    pub fn is_empty(&self) -> bool {
        self.pairs().next().is_none()
    }
}

/// Iterator over the pairs of a [`Macros`] packet.
#[derive(Debug, Clone)]
pub struct MacroPairs<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl<'a> MacroPairs<'a> {
    /// The pairs of raw NUL-separated macro data.
    pub(crate) fn of(data: &'a Bytes) -> Self {
        MacroPairs { data, pos: 0 }
    }

    fn next_str(&mut self) -> Option<Bytes> {
        let rest = self.data.get(self.pos..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        let s = self.data.slice(self.pos..self.pos + end);
        self.pos += end + 1;
        Some(s)
    }
}

impl Iterator for MacroPairs<'_> {
    type Item = (Bytes, Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        let name = self.next_str()?;
        let value = self.next_str().unwrap_or_default();
        Some((name, value))
    }
}

/// Where the SMTP client connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAddress {
    /// Family `'U'`: unknown (e.g. mail submitted locally).
    #[doc(alias = "SMFIA_UNKNOWN")]
    Unknown,
    /// Family `'L'`: a unix socket path.
    #[doc(alias = "SMFIA_UNIX")]
    Unix(Bytes),
    /// Family `'4'` or `'6'`: an IP address and port.
    #[doc(alias = "SMFIA_INET")]
    #[doc(alias = "SMFIA_INET6")]
    Inet(SocketAddr),
}

/// Connection information (`SMFIC_CONNECT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The client's host name as the MTA resolved it, or `[address]`.
    pub hostname: Bytes,
    /// The client's address.
    pub address: ConnectAddress,
}

impl Connect {
    /// Copies the host name and socket path into their own allocations,
    /// releasing the buffer they were received in.
    pub fn detach(&mut self) {
        self.hostname = Bytes::copy_from_slice(&self.hostname);
        if let ConnectAddress::Unix(path) = &mut self.address {
            *path = Bytes::copy_from_slice(path);
        }
    }

    /// The client's IP address, if it connected over IP.
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.address {
            ConnectAddress::Inet(sa) => Some(sa.ip()),
            _ => None,
        }
    }
}

/// MAIL or RCPT: the address as the client wrote it (normally with angle
/// brackets, `<>` for the null sender) and its ESMTP arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The address, e.g. `<user@example.org>`.
    pub address: Bytes,
    args: Bytes,
}

impl Envelope {
    /// Builds an envelope. Neither the address nor the arguments may contain NUL.
    pub fn new<A: AsRef<[u8]>>(
        address: impl Into<Bytes>,
        args: impl IntoIterator<Item = A>,
    ) -> Result<Self, EncodeError> {
        let address = address.into();
        if address.contains(&0) {
            return Err(EncodeError::InteriorNul { field: "address" });
        }
        let mut raw = BytesMut::new();
        for arg in args {
            let arg = arg.as_ref();
            if arg.contains(&0) {
                return Err(EncodeError::InteriorNul {
                    field: "ESMTP argument",
                });
            }
            raw.extend_from_slice(arg);
            raw.extend_from_slice(b"\0");
        }
        Ok(Self {
            address,
            args: raw.freeze(),
        })
    }

    /// The ESMTP arguments (`SIZE=1234`, `BODY=8BITMIME`), one per item.
    pub fn args(&self) -> impl Iterator<Item = Bytes> + '_ {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let rest = self.args.get(pos..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            let arg = self.args.slice(pos..pos + end);
            pos += end + 1;
            Some(arg)
        })
    }
}

/// One header (`SMFIC_HEADER`). Folded values keep their line breaks as a
/// bare `\n` followed by the continuation whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header name, never empty.
    pub name: Bytes,
    /// The value; one leading space was stripped by the MTA unless
    /// `SMFIP_HDR_LEADSPC` was negotiated. May be empty.
    pub value: Bytes,
}

impl Command {
    /// The command byte.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg(_) => code::OPTNEG,
            Command::Macro(_) => code::MACRO,
            Command::Connect(_) => code::CONNECT,
            Command::Helo(_) => code::HELO,
            Command::Mail(_) => code::MAIL,
            Command::Rcpt(_) => code::RCPT,
            Command::Data => code::DATA,
            Command::Header(_) => code::HEADER,
            Command::EndOfHeaders => code::EOH,
            Command::Body(_) => code::BODY,
            Command::EndOfMessage(_) => code::BODYEOB,
            Command::Abort => code::ABORT,
            Command::Quit => code::QUIT,
            Command::QuitNc => code::QUIT_NC,
            Command::Unknown(_) => code::UNKNOWN,
        }
    }

    /// Decodes a frame. Field views share the frame's buffer.
    ///
    /// Lenient where real MTAs are sloppy and libmilter tolerates it: bytes
    /// after the 12 OPTNEG bytes, payloads on DATA/EOH/ABORT/QUIT, macro
    /// packets with no or an odd number of strings, bytes after the last NUL
    /// of MAIL/RCPT arguments, an UNKNOWN line without NUL.
    pub fn decode(frame: &Frame) -> Result<Command, DecodeError> {
        Self::decode_parts(frame.code, &frame.payload)
    }

    /// As [`Command::decode`], consuming the frame, which lets a CONNECT's
    /// host name become the frame's own view of the buffer instead of a new
    /// one (a reference count less). The way to decode in a read loop.
    pub fn from_frame(frame: Frame) -> Result<Command, DecodeError> {
        if frame.code != code::CONNECT {
            return Self::decode_parts(frame.code, &frame.payload);
        }
        let mut payload = frame.payload;
        let mut r = Reader::new(code::CONNECT, &payload);
        let (host_len, address) = connect_fields(&mut r)?;
        r.finish()?;
        // The host name comes first: the payload cut to it is its view.
        let hostname = if host_len == 0 {
            Bytes::new()
        } else {
            payload.truncate(host_len);
            payload
        };
        Ok(Command::Connect(Connect { hostname, address }))
    }

    /// Decodes a command byte and its payload.
    pub fn decode_parts(code: u8, payload: &Bytes) -> Result<Command, DecodeError> {
        let mut r = Reader::new(code, payload);
        let cmd = match code {
            code::OPTNEG => {
                let version = r.u32("version")?;
                let actions = Actions::from_bits_retain(r.u32("actions")?);
                let protocol = ProtocolFlags::from_bits_retain(r.u32("protocol flags")?);
                return Ok(Command::OptNeg(OptNeg {
                    version,
                    actions,
                    protocol,
                }));
            }
            code::MACRO => {
                let stage = r.u8("stage")?;
                return Ok(Command::Macro(Macros {
                    stage,
                    data: r.rest(),
                }));
            }
            code::CONNECT => {
                let (host_len, address) = connect_fields(&mut r)?;
                Command::Connect(Connect {
                    hostname: payload.slice(..host_len),
                    address,
                })
            }
            code::HELO => Command::Helo(r.cstr("HELO name")?),
            code::MAIL | code::RCPT => {
                let address = r.cstr("address")?;
                let env = Envelope {
                    address,
                    args: r.rest_to_last_nul(),
                };
                return Ok(if code == code::MAIL {
                    Command::Mail(env)
                } else {
                    Command::Rcpt(env)
                });
            }
            code::HEADER => {
                let name = r.nonempty_cstr("header name")?;
                let value = r.cstr("header value")?;
                Command::Header(Header { name, value })
            }
            code::BODY => Command::Body(r.rest()),
            code::BODYEOB => Command::EndOfMessage(r.rest()),
            code::UNKNOWN => Command::Unknown(r.lenient_cstr()),
            code::DATA => Command::Data,
            code::EOH => Command::EndOfHeaders,
            code::ABORT => Command::Abort,
            code::QUIT => Command::Quit,
            code::QUIT_NC => Command::QuitNc,
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        match cmd {
            Command::Data
            | Command::EndOfHeaders
            | Command::Abort
            | Command::Quit
            | Command::QuitNc
            | Command::Unknown(_) => Ok(cmd),
            _ => r.finish().map(|()| cmd),
        }
    }

    /// Appends this command as a frame to `dst`; fails, leaving `dst` as it
    /// was, if a field cannot be encoded or the payload exceeds `max_payload`.
    pub fn encode(&self, dst: &mut BytesMut, max_payload: usize) -> Result<(), EncodeError> {
        let mut w = Writer::new(dst, self.code());
        match self {
            Command::OptNeg(o) => {
                w.u32(o.version)
                    .u32(o.actions.bits())
                    .u32(o.protocol.bits());
            }
            Command::Macro(m) => {
                w.u8(m.stage).raw(&m.data);
            }
            Command::Connect(c) => {
                w.cstr("host name", &c.hostname);
                match &c.address {
                    ConnectAddress::Unknown => {
                        w.u8(b'U');
                    }
                    ConnectAddress::Unix(path) => {
                        w.u8(b'L').u16(0).cstr("socket path", path);
                    }
                    ConnectAddress::Inet(sa) => {
                        let family = if sa.is_ipv4() { b'4' } else { b'6' };
                        w.u8(family).u16(sa.port()).ip(sa.ip());
                    }
                }
            }
            Command::Helo(name) => {
                w.cstr("HELO name", name);
            }
            Command::Mail(env) | Command::Rcpt(env) => {
                w.cstr("address", &env.address).raw(&env.args);
            }
            Command::Header(h) => {
                w.nonempty_cstr("header name", &h.name)
                    .cstr("header value", &h.value);
            }
            Command::Body(data) | Command::EndOfMessage(data) => {
                w.raw(data);
            }
            Command::Unknown(line) => {
                w.cstr("command line", line);
            }
            Command::Data
            | Command::EndOfHeaders
            | Command::Abort
            | Command::Quit
            | Command::QuitNc => {}
        }
        w.finish(max_payload)
    }
}

/// The fields of a CONNECT payload: the host name's length (it starts the
/// payload) and the address. Inlined: returned through memory, the result
/// cost a CONNECT more than parsing its host name.
#[inline(always)]
fn connect_fields(r: &mut Reader<'_>) -> Result<(usize, ConnectAddress), DecodeError> {
    let host_len = r.cstr_slice("host name")?.len();
    let family = r.u8("family")?;
    let address = match family {
        b'U' => ConnectAddress::Unknown,
        b'L' => {
            r.u16("port")?;
            ConnectAddress::Unix(r.cstr("socket path")?)
        }
        b'4' | b'6' => {
            let port = r.u16("port")?;
            let text = r.cstr_slice("address")?;
            ConnectAddress::Inet(SocketAddr::new(parse_ip(family, text)?, port))
        }
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    Ok((host_len, address))
}

/// Parses a connect address: dotted quad for `'4'`; for `'6'` an IPv6
/// address, optionally prefixed `IPv6:` (Sendmail, any case) or bracketed.
fn parse_ip(family: u8, text: &[u8]) -> Result<IpAddr, DecodeError> {
    let invalid = || DecodeError::InvalidAddress(String::from_utf8_lossy(text).into_owned());
    if family == b'4' {
        return addr::parse_ipv4(text).map(IpAddr::V4).ok_or_else(invalid);
    }
    let mut s = unbracket(text);
    if let Some((prefix, rest)) = s.split_at_checked(5)
        && prefix.eq_ignore_ascii_case(b"IPv6:")
    {
        s = unbracket(rest);
    }
    addr::parse_ipv6(s).map(IpAddr::V6).ok_or_else(invalid)
}

fn unbracket(s: &[u8]) -> &[u8] {
    s.strip_prefix(b"[")
        .and_then(|t| t.strip_suffix(b"]"))
        .unwrap_or(s)
}
