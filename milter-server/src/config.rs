//! Limits, timeouts and the failure policy.

use std::time::Duration;

use milter_proto::SmtpReply;

/// What the server answers when a callback fails (returns `Err`, panics or
/// runs past [`Config::callback_timeout`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Temporary failure: the MTA retries later; no mail is lost (default).
    #[default]
    Tempfail,
    /// Permanent rejection.
    Reject,
    /// Continue as if the filter had no opinion (fail open).
    Continue,
    /// Accept the message.
    Accept,
    /// A specific reply.
    Reply(SmtpReply),
}

/// What happens to connections beyond [`Config::max_connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverLimit {
    /// Stop accepting until a session ends: new connections wait in the
    /// listen backlog (default).
    #[default]
    Wait,
    /// Accept and close at once, logging the refusal, so the MTA applies
    /// its default action immediately instead of timing out.
    Refuse,
}

/// Server limits and timeouts. Every field has a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Most sessions served at once. Default 4096.
    pub max_connections: usize,
    /// What happens beyond `max_connections`. Default [`OverLimit::Wait`].
    pub over_limit: OverLimit,
    /// How long a session may wait for the MTA's next packet. Default
    /// 7210 s, libmilter's: MTAs keep milter connections open for the whole
    /// SMTP session, which may idle between commands.
    pub idle_timeout: Duration,
    /// How long one reply may take to be written. Default 30 s.
    pub write_timeout: Duration,
    /// How long one callback may run before the failure policy answers.
    /// Default 60 s (below Postfix's 300 s content and Sendmail's 5 min
    /// end-of-message timeouts, above their 30 s/10 s command timeouts only
    /// for slow end-of-message work).
    pub callback_timeout: Duration,
    /// Largest inbound packet payload. Default 1 MiB: Postfix sends header
    /// packets over 64 KiB.
    pub max_inbound_frame: usize,
    /// After shutdown starts, how long sessions may take to finish the
    /// message in flight before they are cut. Default 30 s.
    pub drain_timeout: Duration,
    /// The answer when a callback fails. Default [`FailurePolicy::Tempfail`].
    pub failure_policy: FailurePolicy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            over_limit: OverLimit::Wait,
            idle_timeout: Duration::from_secs(7210),
            write_timeout: Duration::from_secs(30),
            callback_timeout: Duration::from_secs(60),
            max_inbound_frame: milter_proto::frame::DEFAULT_MAX_INBOUND,
            drain_timeout: Duration::from_secs(30),
            failure_policy: FailurePolicy::Tempfail,
        }
    }
}

impl Config {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`Config::max_connections`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets [`Config::over_limit`].
    pub fn over_limit(mut self, over_limit: OverLimit) -> Self {
        self.over_limit = over_limit;
        self
    }

    /// Sets [`Config::idle_timeout`].
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets [`Config::write_timeout`].
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// Sets [`Config::callback_timeout`].
    pub fn callback_timeout(mut self, d: Duration) -> Self {
        self.callback_timeout = d;
        self
    }

    /// Sets [`Config::max_inbound_frame`].
    pub fn max_inbound_frame(mut self, n: usize) -> Self {
        self.max_inbound_frame = n;
        self
    }

    /// Sets [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Sets [`Config::failure_policy`].
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }
}
