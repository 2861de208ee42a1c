//! The MTA side of the milter protocol, on tokio.
//!
//! This crate talks to mail filters the way Postfix and Sendmail do: it
//! negotiates, sends every stage with its macros, honours the filter's
//! `NO*`/`NR_*` flags and SKIP, collects end-of-message modifications,
//! times out, and turns filter failures into an MTA failure policy. It is
//! the harness every server test in this workspace uses, the engine of the
//! load generator, and a library for Rust MTAs. The protocol itself lives in
//! the sans-IO crate [`milter_proto`]; every packet in both directions is
//! checked against its [`milter_proto::Session`].
//!
//! # Two levels
//!
//! * **Per stage**: [`Client::connect`] gives a negotiated [`Connection`];
//!   its methods (`connect`, `helo`, `mail`, `rcpt`, `data`, `header`,
//!   `end_of_headers`, `body`, `end_of_message`, `abort`, `unknown`,
//!   `quit`, `quit_nc`) each take the macros for that stage and return the
//!   filter's [`Reply`] ([`EomOutcome`] at end of message).
//! * **Whole messages**: a [`Message`] builder with Postfix-like macros and
//!   [`Connection::send_message`], which stops at the first final decision
//!   like an MTA and reports a [`MessageOutcome`]; or
//!   [`Client::check_message`], which also connects and applies the
//!   [`FailurePolicy`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), milter_client::ClientError> {
//! use milter_client::{Client, ClientConfig, Message, Verdict};
//!
//! let client = Client::new(ClientConfig::default());
//! let mut conn = client.connect("unix:/run/milter/greylist.sock").await?;
//! let message = Message::new()
//!     .client("client.example.net", "192.0.2.1:4567".parse().unwrap())
//!     .helo("client.example.net")
//!     .sender("alice@example.org")
//!     .rcpt("bob@example.net")
//!     .header("Subject", "hello")
//!     .body("Hi Bob.\r\n");
//! let outcome = conn.send_message(&message).await?;
//! if outcome.verdict == Verdict::Tempfailed {
//!     println!("greylisted: {}", outcome.smtp_text());
//! }
//! for m in &outcome.modifications {
//!     println!("{m}");
//! }
//! conn.quit().await?;
//! # Ok(()) }
//! ```
//!
//! # What it does like Postfix
//!
//! | behaviour | |
//! |---|---|
//! | offer | version 6, actions `0x1FF`, protocol `0x1FFFFF` ([`postfix_offer`] for older versions) |
//! | macros | a `D` packet before every stage, also before stages negotiated away (then only the macros go out) |
//! | `NO*` | the command is not sent: [`Reply::NotSent`] |
//! | `NR_*` | sent without waiting: [`Reply::NoReply`]; the packet goes out with the next command |
//! | SKIP | later events of the same type in this message are not sent |
//! | early decision | after accept/reject/discard/tempfail at MAIL..BODY nothing more of that message is sent |
//! | timeouts | connect 30 s, commands 30 s, content and end of message 300 s, per I/O operation |
//! | writes | coalesced: one write per turn; `TCP_NODELAY` on TCP |
//! | replies | `SMFIR_REPLYCODE` validated as Postfix does ([`milter_proto::SmtpReply::parse`]) |
//! | ABORT | after every message in [`Connection::send_message`] |
//!
//! # Testing servers
//!
//! [`Connection::send_raw`], [`Connection::send_unchecked`],
//! [`Connection::read_frame`] and [`Connection::read_response`] bypass the
//! state machine, so a test can send a zero length, an oversize length, an
//! unknown command or half a frame, and then watch the server close the
//! connection ([`ClientError::Closed`]). [`Client::handshake`] negotiates
//! over any stream, e.g. a `tokio::io::duplex` half.
#![forbid(unsafe_code)]

mod config;
mod connection;
mod error;
mod message;
mod reply;

pub use config::{ClientConfig, FailurePolicy, postfix_offer};
pub use connection::{Client, Connection, Negotiated, ToSocketSpec};
pub use error::ClientError;
pub use message::{Message, MessageOutcome, StageReply, Verdict, parse_eml};
pub use reply::{EomOutcome, Modification, Reply, Stage};

/// The protocol crate, re-exported.
pub use milter_proto;
pub use milter_proto::{
    Actions, Bytes, Command, ConnectAddress, MacroStage, OptNeg, ProtocolFlags, Response,
    SmtpReply, SocketSpec,
};
