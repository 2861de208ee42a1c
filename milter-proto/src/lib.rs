//! The milter protocol (versions 2 to 6) as a sans-IO codec and state machine.
//!
//! Mail servers (Sendmail, Postfix) hand each SMTP transaction to *milters*
//! over a socket. This crate is the wire format and the rules of that
//! conversation, with no sockets, no clock and no async: the server crate
//! (`milter-server`) and the MTA-side client (`milter-client`) wrap it, and
//! tests drive it directly.
//!
//! # The wire
//!
//! Every packet, in both directions, is a frame:
//!
//! ```text
//!  0               4     5                          4 + len
//!  +---------------+-----+---------------------------+
//!  | len (u32, BE) | cmd | payload (len - 1 bytes)   |
//!  +---------------+-----+---------------------------+
//!  len counts the command byte and the payload, not itself.
//!  CONTINUE is 00 00 00 01 63 ('c', empty payload).
//! ```
//!
//! A conversation as Postfix runs it (`D` packets carry macros for the next
//! command; `A` ends every transaction):
//!
//! ```text
//!  MTA                                      filter
//!  O  version 6, actions, protocol   ──▶
//!                                     ◀──   O  version, actions wanted, flags, macro lists
//!  D C {daemon_name}...  C host, 4, port, addr ──▶
//!                                     ◀──   c
//!  H  mx.example.org                 ──▶    ◀── c
//!  D M i ... M <a@example.org> SIZE=1234 ──▶ ◀── c
//!  R  <b@example.net>                ──▶    ◀── c       (or y "451 4.7.1 ...")
//!  T  L name value ... N  B chunk... ──▶    ◀── c each  (unless no-reply)
//!  E                                 ──▶    ◀── h X-Header value, ..., then a
//!  A                                 ──▶    (no reply)
//!  Q                                 ──▶    (no reply, connection closes)
//! ```
//!
//! # Layers
//!
//! | module | what |
//! |---|---|
//! | [`frame`] | [`FrameDecoder`] cuts frames from a buffer, zero-copy, length checked before buffering |
//! | [`command`] | [`Command`]: every `SMFIC_*` packet, decode and encode |
//! | [`response`] | [`Response`]: every `SMFIR_*` packet, decode and encode |
//! | [`negotiate`](mod@negotiate) | [`Actions`], [`ProtocolFlags`], [`negotiate()`] as libmilter computes it |
//! | [`macros`] | [`MacroStore`]: per-stage macros with libmilter's clearing and `{x}`/`x` aliasing |
//! | [`reply`] | [`SmtpReply`]: validated 4xx/5xx replies, multi-line, `%` escaped |
//! | [`session`] | [`Session`]: legal order, which commands expect replies, message boundaries |
//!
//! # Example: one round trip without any socket
//!
//! ```
//! use bytes::BytesMut;
//! use milter_proto::{
//!     Command, FilterOptions, FrameDecoder, OptNeg, ProtocolFlags, Response, Session,
//!     negotiate, frame::MAX_DATA_SIZE_64K,
//! };
//!
//! // The MTA's offer arrives as bytes...
//! let mut wire = BytesMut::new();
//! Command::OptNeg(OptNeg::POSTFIX).encode(&mut wire, MAX_DATA_SIZE_64K)?;
//! Command::Helo("mx.example.org".into()).encode(&mut wire, MAX_DATA_SIZE_64K)?;
//!
//! // ...the filter cuts and decodes them...
//! let mut decoder = FrameDecoder::default();
//! let mut session = Session::new();
//! let frame = decoder.decode(&mut wire)?.expect("a whole frame");
//! let Command::OptNeg(offer) = Command::decode(&frame)? else { unreachable!() };
//! session.on_command_code(frame.code)?;
//!
//! // ...and negotiates: this filter does not want CONNECT at all.
//! let wanted = FilterOptions { protocol: ProtocolFlags::NO_CONNECT, ..Default::default() };
//! let agreed = negotiate(&offer, &wanted)?;
//! let reply = Response::OptNeg(agreed.reply.clone());
//! session.on_response(&reply)?;
//! let mut out = BytesMut::new();
//! reply.encode(&mut out, agreed.max_data_size)?;
//!
//! // HELO needs a reply; the state machine says so.
//! let frame = decoder.decode(&mut wire)?.expect("a whole frame");
//! let effect = session.on_command(&Command::decode(&frame)?)?;
//! assert_eq!(effect.expect, milter_proto::Expect::Reply);
//! session.on_response(&Response::Continue)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Robustness
//!
//! No input makes this crate panic: indexing, `unwrap` and `expect` are
//! denied by lint, every decoder is fuzzed, and every malformed packet is a
//! typed error ([`DecodeError`], [`FrameError`], [`ProtocolError`]).
//! Lengths are checked before memory is reserved, so a 2 GiB length from a
//! port scanner costs nothing.
//!
//! # MTA quirks handled here
//!
//! * Postfix sends header packets over 64 KiB: the inbound limit defaults to 1 MiB.
//! * Sendmail prefixes IPv6 connect addresses with `IPv6:`; both are accepted.
//! * Empty macro packets, odd numbers of macro strings and macro packets for
//!   stages libmilter ignores are accepted.
//! * ABORT after a finished message, and twice, is accepted and means nothing.
//! * An empty header value (`"X-Foo\0\0"`) is a header, not an error.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod addr;
pub mod command;
pub mod error;
pub mod frame;
pub mod macros;
pub mod negotiate;
pub mod reply;
pub mod response;
pub mod session;
pub mod spec;
mod wire;

pub use command::{Command, Connect, ConnectAddress, Envelope, Header, MacroPairs, Macros};
pub use error::{
    DecodeError, EncodeError, FrameError, NegotiationError, ProtocolError, ReplyError,
};
pub use frame::{Frame, FrameDecoder};
pub use macros::MacroStore;
pub use negotiate::{
    Actions, Agreed, FilterOptions, MacroLists, MacroStage, OptNeg, OptNegReply, ProtocolFlags,
    check_reply, check_response, negotiate,
};
pub use reply::SmtpReply;
pub use response::Response;
pub use session::{CommandEffect, Expect, MessageStage, ResponseEffect, Session};
pub use spec::{SocketSpec, SpecError};

/// Re-exported so users need not depend on `bytes` to build packets.
pub use bytes::{Bytes, BytesMut};
