//! Server errors.

use std::time::Duration;

use milter_proto::{
    DecodeError, EncodeError, FrameError, NegotiationError, ProtocolError, SpecError,
};

/// Setting the server up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket specification is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Binding or preparing the socket failed.
    #[error("cannot listen on {spec}: {source}")]
    Bind {
        /// The specification.
        spec: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A unix socket path exists and is not a socket; it is not removed.
    #[error("cannot listen on {0}: the path exists and is not a socket")]
    NotASocket(String),
    /// A user or group name is unknown.
    #[error("unknown {kind} {name:?}")]
    UnknownOwner {
        /// "user" or "group".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why a session ended. Logged once per session by the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The byte stream is not milter framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A packet is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A packet came at the wrong time.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The MTA's options cannot satisfy the filter.
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    /// A reply could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The negotiate callback failed; the session cannot start.
    #[error("the negotiate callback failed: {0}")]
    NegotiateCallback(String),
    /// The MTA sent nothing for too long.
    #[error("no packet from the MTA for {0:?}")]
    IdleTimeout(Duration),
    /// A reply could not be written in time.
    #[error("writing a reply took longer than {0:?}")]
    WriteTimeout(Duration),
    /// The MTA closed the connection in the middle of a frame.
    #[error("the connection closed in the middle of a packet")]
    TruncatedFrame,
    /// The MTA closed the connection without QUIT.
    #[error("the connection closed without QUIT")]
    Closed,
    /// The server's drain deadline passed.
    #[error("cut at the end of the shutdown drain period")]
    Shutdown,
}
