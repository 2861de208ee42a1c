//! The client's error type.

use std::time::Duration;

use milter_proto::{
    DecodeError, EncodeError, FrameError, NegotiationError, ProtocolError, ReplyError, SpecError,
};

use crate::reply::Stage;

/// Everything that can go wrong talking to a filter.
///
/// The variants fall in three groups:
///
/// * **the filter is down or misbehaves** — [`Io`](Self::Io),
///   [`Timeout`](Self::Timeout), [`Closed`](Self::Closed),
///   [`Frame`](Self::Frame), [`Decode`](Self::Decode),
///   [`Protocol`](Self::Protocol), [`InvalidReply`](Self::InvalidReply),
///   [`Negotiation`](Self::Negotiation). An MTA answers these with its
///   failure policy ([`crate::FailurePolicy`]); the connection is unusable
///   afterwards and every later call returns [`Broken`](Self::Broken).
/// * **the caller's mistake** — [`Usage`](Self::Usage) (a command the
///   session does not allow now), [`Encode`](Self::Encode) (a field that
///   cannot be put on the wire), [`Spec`](Self::Spec). Nothing was sent and
///   the connection stays usable.
/// * [`Broken`](Self::Broken) — an earlier error already ended the conversation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket specification cannot be parsed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Connecting, reading or writing failed.
    #[error("I/O error talking to the filter: {0}")]
    Io(#[from] std::io::Error),
    /// The filter did not answer (or the write did not complete) in time.
    #[error("the filter did not complete {stage} within {timeout:?}")]
    Timeout {
        /// The stage being waited for.
        stage: Stage,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The filter closed the connection (end of file, reset or broken pipe).
    #[error("the filter closed the connection")]
    Closed,
    /// The filter's byte stream cannot be cut into frames.
    #[error("unreadable frame from the filter: {0}")]
    Frame(#[from] FrameError),
    /// A packet from the filter is malformed.
    #[error("malformed packet from the filter: {0}")]
    Decode(#[from] DecodeError),
    /// A well-formed packet from the filter came at the wrong time: a
    /// modification outside end of message or without its action flag, a
    /// reply to a command that takes none (ABORT, a no-reply stage), SKIP at
    /// end of message, `SMFIR_CONN_FAIL` or `SMFIR_SETSYMLIST`.
    #[error("the filter broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// A `SMFIR_REPLYCODE` text that Postfix would refuse (wrong code,
    /// enhanced code of another class, bad multi-line layout).
    #[error("the filter sent an invalid SMTP reply: {0}")]
    InvalidReply(#[from] ReplyError),
    /// The filter's negotiation reply is incompatible with the offer.
    #[error("option negotiation failed: {0}")]
    Negotiation(#[from] NegotiationError),
    /// Caller input that cannot be encoded (a NUL inside a string, an empty
    /// header name, a packet over the size limit). Nothing was sent.
    #[error("cannot encode the command: {0}")]
    Encode(#[from] EncodeError),
    /// The caller asked for a command the session does not allow now (e.g.
    /// RCPT before MAIL, anything after QUIT). Nothing was sent.
    #[error("command not allowed now: {0}")]
    Usage(ProtocolError),
    /// An earlier error ended this conversation; open a new connection.
    #[error("the connection is unusable after an earlier error")]
    Broken,
}

impl ClientError {
    /// Whether the error is the filter's fault (down, slow, or broken), as
    /// opposed to the caller's. These are the errors an MTA answers with its
    /// failure policy.
    pub fn is_filter_failure(&self) -> bool {
        !matches!(
            self,
            ClientError::Usage(_) | ClientError::Encode(_) | ClientError::Spec(_)
        )
    }

    /// Maps an I/O error: a peer that went away is [`ClientError::Closed`].
    pub(crate) fn from_io(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }
}
