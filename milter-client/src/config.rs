//! Client configuration: the offer, timeouts, limits, failure policy.

use std::time::Duration;

use milter_proto::frame::DEFAULT_MAX_INBOUND;
use milter_proto::{Actions, OptNeg, ProtocolFlags};

use crate::reply::Reply;

/// What an MTA does when the filter is down, times out or breaks the
/// protocol — Sendmail's `F=` flags, Postfix's `milter_default_action`.
///
/// The per-stage methods of [`crate::Connection`] always return the error;
/// [`crate::Connection::send_message_or_policy`] and
/// [`crate::Client::check_message`] turn it into this outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Fail temporarily (`451 4.7.1`): Sendmail `F=T`, Postfix `tempfail`.
    #[default]
    Tempfail,
    /// Reject (`550 5.5.0`): Sendmail `F=R`, Postfix `reject`.
    Reject,
    /// Go on as if the filter were not configured: Sendmail without a flag,
    /// Postfix `accept`.
    Continue,
}

impl FailurePolicy {
    /// The reply this policy stands for.
    pub fn reply(self) -> Reply {
        match self {
            FailurePolicy::Tempfail => Reply::Tempfail,
            FailurePolicy::Reject => Reply::Reject,
            FailurePolicy::Continue => Reply::Continue,
        }
    }
}

/// The offer Postfix sends with `milter_protocol = version`: every action,
/// and the protocol flags that version knows (`milter8_event_masks`).
/// Versions above 6 are offered as 6; below 2 as 2.
///
/// | version | protocol |
/// |---|---|
/// | 2 | `0x7F` |
/// | 3 | `0x17F` |
/// | 4, 5 | `0x37F` |
/// | 6 | `0x1FFFFF` |
pub fn postfix_offer(version: u32) -> OptNeg {
    let (version, protocol) = match version {
        0..=2 => (2, 0x7F),
        3 => (3, 0x17F),
        4 | 5 => (version, 0x37F),
        _ => (6, ProtocolFlags::V6.bits()),
    };
    OptNeg {
        version,
        actions: Actions::all(),
        protocol: ProtocolFlags::from_bits_retain(protocol),
    }
}

/// How a [`crate::Client`] talks to filters. Defaults follow Postfix 3.x.
///
/// Build it from the default and adjust fields or use the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use milter_client::{ClientConfig, FailurePolicy};
/// use milter_proto::OptNeg;
///
/// let config = ClientConfig::default()
///     .with_offer(OptNeg::V2)
///     .with_command_timeout(Duration::from_secs(5))
///     .with_failure_policy(FailurePolicy::Continue);
/// assert_eq!(config.offer.version, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The option negotiation offer. Default [`OptNeg::POSTFIX`]: version 6,
    /// actions `0x1FF`, protocol `0x1FFFFF`.
    pub offer: OptNeg,
    /// Opening the socket, and then negotiation, each (Postfix
    /// `milter_connect_timeout`, 30 s).
    pub connect_timeout: Duration,
    /// Each read or write for CONNECT, HELO, MAIL, RCPT, DATA, UNKNOWN,
    /// ABORT, QUIT (Postfix `milter_command_timeout`, 30 s).
    pub command_timeout: Duration,
    /// Each read or write for HEADER, EOH, BODY and end of message; every
    /// progress packet restarts it (Postfix `milter_content_timeout`, 300 s).
    pub content_timeout: Duration,
    /// Largest payload accepted from the filter (default 1 MiB). Bigger
    /// frames are [`crate::ClientError::Frame`].
    pub max_inbound_payload: usize,
    /// Largest payload sent. `None` (default): what negotiation agreed
    /// (64 KiB unless MDS was offered and accepted). Postfix does not cap
    /// header packets; set this higher to send headers over 64 KiB like it.
    pub max_outbound_payload: Option<usize>,
    /// What [`crate::Connection::send_message_or_policy`] and
    /// [`crate::Client::check_message`] answer when the filter fails.
    pub failure_policy: FailurePolicy,
    /// Send a macro packet before every stage even when it defines nothing,
    /// as Postfix does (default `true`). With `false` empty packets are left out.
    pub send_empty_macros: bool,
    /// When the filter sent a macro list for a stage, send only the listed
    /// macros at that stage, as Postfix does. Default `false`: send what the
    /// caller gives.
    pub honour_macro_lists: bool,
    /// [`crate::Connection::send_message`] sends ABORT after each message,
    /// as Postfix does after every transaction (default `true`).
    pub abort_after_message: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            offer: OptNeg::POSTFIX,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(30),
            content_timeout: Duration::from_secs(300),
            max_inbound_payload: DEFAULT_MAX_INBOUND,
            max_outbound_payload: None,
            failure_policy: FailurePolicy::Tempfail,
            send_empty_macros: true,
            honour_macro_lists: false,
            abort_after_message: true,
        }
    }
}

impl ClientConfig {
    /// Sets the negotiation offer (e.g. [`OptNeg::V2`] or [`postfix_offer`]).
    pub fn with_offer(mut self, offer: OptNeg) -> Self {
        self.offer = offer;
        self
    }

    /// Sets the connect/negotiation timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-I/O timeout of the SMTP command stages.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the per-I/O timeout of the content stages and end of message.
    pub fn with_content_timeout(mut self, timeout: Duration) -> Self {
        self.content_timeout = timeout;
        self
    }

    /// Sets all three timeouts.
    pub fn with_timeouts(self, timeout: Duration) -> Self {
        self.with_connect_timeout(timeout)
            .with_command_timeout(timeout)
            .with_content_timeout(timeout)
    }

    /// Sets the largest payload accepted from the filter.
    pub fn with_max_inbound_payload(mut self, max: usize) -> Self {
        self.max_inbound_payload = max;
        self
    }

    /// Sets the largest payload sent (`None`: the negotiated size).
    pub fn with_max_outbound_payload(mut self, max: Option<usize>) -> Self {
        self.max_outbound_payload = max;
        self
    }

    /// Sets the failure policy.
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Sets whether empty macro packets are sent.
    pub fn with_send_empty_macros(mut self, send: bool) -> Self {
        self.send_empty_macros = send;
        self
    }

    /// Sets whether the filter's macro lists restrict what is sent.
    pub fn with_honour_macro_lists(mut self, honour: bool) -> Self {
        self.honour_macro_lists = honour;
        self
    }

    /// Sets whether `send_message` ends each message with ABORT.
    pub fn with_abort_after_message(mut self, abort: bool) -> Self {
        self.abort_after_message = abort;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_offers_match_milter8_masks() {
        assert_eq!(postfix_offer(6), OptNeg::POSTFIX);
        assert_eq!(postfix_offer(2), OptNeg::V2);
        assert_eq!(postfix_offer(3).protocol.bits(), 0x17F);
        assert_eq!(postfix_offer(4).protocol.bits(), 0x37F);
        assert_eq!(postfix_offer(9).version, 6);
        assert_eq!(postfix_offer(1).version, 2);
    }
}
