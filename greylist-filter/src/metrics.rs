//! Counters for the admin endpoint: decisions by outcome and reason, store errors and
//! failure-policy outcomes, and a store latency histogram. All lock-free atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::policy::{
    BypassReason, Decision, GreylistReason, PassReason, RejectReason, TempfailReason,
};

/// Every (outcome, reason) label pair, in counter order.
pub const DECISION_LABELS: [(&str, &str); 28] = [
    ("pass", "delay_met"),
    ("pass", "auto_whitelisted"),
    ("pass", "host_trusted"),
    ("pass", "store_fail_open"),
    ("greylist", "new_tuple"),
    ("greylist", "too_early"),
    ("greylist", "window_expired"),
    ("greylist", "auto_whitelist_expired"),
    ("tempfail", "pending_cap"),
    ("tempfail", "store_unavailable"),
    ("bypass", "loopback"),
    ("bypass", "local_network"),
    ("bypass", "non_ip_client"),
    ("bypass", "authenticated"),
    ("bypass", "whitelist_network"),
    ("bypass", "whitelist_host"),
    ("bypass", "whitelist_sender"),
    ("bypass", "whitelist_recipient"),
    ("bypass", "special_recipient"),
    ("bypass", "whitelist_regex"),
    ("bypass", "opt_out"),
    ("bypass", "not_opted_in"),
    ("bypass", "dnswl"),
    ("reject", "dnsbl"),
    ("pass", "low_risk"),
    ("pass", "outbound_reply"),
    ("bypass", "acl"),
    ("reject", "acl"),
];

/// Upper bounds of the store latency buckets; the last bucket is everything above.
pub const LATENCY_BUCKETS: [Duration; 5] = [
    Duration::from_micros(100),
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_secs(1),
];

fn index(d: &Decision) -> usize {
    match d {
        Decision::Pass(PassReason::DelayMet { .. }) => 0,
        Decision::Pass(PassReason::AutoWhitelisted) => 1,
        Decision::Pass(PassReason::HostTrusted) => 2,
        Decision::Pass(PassReason::StoreFailOpen) => 3,
        Decision::Greylist { reason, .. } => match reason {
            GreylistReason::NewTuple => 4,
            GreylistReason::TooEarly => 5,
            GreylistReason::WindowExpired => 6,
            GreylistReason::AutoWhitelistExpired => 7,
        },
        Decision::Tempfail(TempfailReason::PendingCap) => 8,
        Decision::Tempfail(TempfailReason::StoreUnavailable) => 9,
        Decision::Bypass(b) => match b {
            BypassReason::Loopback => 10,
            BypassReason::LocalNetwork => 11,
            BypassReason::NonIpClient => 12,
            BypassReason::Authenticated => 13,
            BypassReason::ClientNetwork => 14,
            BypassReason::ClientHost => 15,
            BypassReason::Sender => 16,
            BypassReason::Recipient => 17,
            BypassReason::SpecialRecipient => 18,
            BypassReason::Regex => 19,
            BypassReason::OptOut => 20,
            BypassReason::NotOptedIn => 21,
            BypassReason::Dnswl => 22,
            BypassReason::Acl => 26,
        },
        Decision::Reject(RejectReason::Dnsbl) => 23,
        Decision::Pass(PassReason::LowRisk) => 24,
        Decision::Pass(PassReason::OutboundReply) => 25,
        Decision::Reject(RejectReason::Acl) => 27,
    }
}

/// Live counters.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: [AtomicU64; DECISION_LABELS.len()],
    store_errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_micros_total: AtomicU64,
    delay_seconds_total: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Count per entry of [`DECISION_LABELS`], same order.
    pub decisions: Vec<u64>,
    /// Store operations that failed.
    pub store_errors: u64,
    /// Store call counts per [`LATENCY_BUCKETS`] bucket, plus one for slower calls.
    pub store_latency: Vec<u64>,
    /// Sum of all store call latencies, in microseconds.
    pub store_latency_micros_total: u64,
    /// Configuration (or whitelist file) reloads applied.
    pub reloads_ok: u64,
    /// Configuration reloads refused because the new configuration was invalid.
    pub reloads_failed: u64,
    /// Sum of the delays (first attempt to pass) of tuples that passed, in seconds.
    pub delay_seconds_total: u64,
}

impl MetricsSnapshot {
    /// The count for an (outcome, reason) pair, e.g. `("greylist", "new_tuple")`.
    pub fn decision(&self, outcome: &str, reason: &str) -> u64 {
        DECISION_LABELS
            .iter()
            .position(|&(o, r)| o == outcome && r == reason)
            .and_then(|i| self.decisions.get(i).copied())
            .unwrap_or(0)
    }
}

impl Metrics {
    /// Counts one decision.
    pub fn record_decision(&self, d: &Decision) {
        if let Some(c) = self.decisions.get(index(d)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Decision::Pass(PassReason::DelayMet { delayed }) = d {
            self.delay_seconds_total
                .fetch_add(*delayed, Ordering::Relaxed);
        }
    }

    /// Counts one failed store operation.
    pub fn record_store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the latency of one store call.
    pub fn record_store_latency(&self, d: Duration) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| d <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(c) = self.latency.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_micros_total.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts one configuration reload, applied (`ok`) or refused.
    pub fn record_reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            decisions: self
                .decisions
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            store_errors: self.store_errors.load(Ordering::Relaxed),
            store_latency: self
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            store_latency_micros_total: self.latency_micros_total.load(Ordering::Relaxed),
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            delay_seconds_total: self.delay_seconds_total.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_decision_reasons() {
        // Every index's label pair must be what Decision::label/reason says.
        let samples = [
            Decision::Pass(PassReason::DelayMet { delayed: 1 }),
            Decision::Pass(PassReason::AutoWhitelisted),
            Decision::Pass(PassReason::HostTrusted),
            Decision::Pass(PassReason::StoreFailOpen),
            Decision::Greylist {
                retry_after: 1,
                reason: GreylistReason::NewTuple,
            },
            Decision::Greylist {
                retry_after: 1,
                reason: GreylistReason::TooEarly,
            },
            Decision::Greylist {
                retry_after: 1,
                reason: GreylistReason::WindowExpired,
            },
            Decision::Greylist {
                retry_after: 1,
                reason: GreylistReason::AutoWhitelistExpired,
            },
            Decision::Tempfail(TempfailReason::PendingCap),
            Decision::Tempfail(TempfailReason::StoreUnavailable),
            Decision::Bypass(BypassReason::Loopback),
            Decision::Bypass(BypassReason::LocalNetwork),
            Decision::Bypass(BypassReason::NonIpClient),
            Decision::Bypass(BypassReason::Authenticated),
            Decision::Bypass(BypassReason::ClientNetwork),
            Decision::Bypass(BypassReason::ClientHost),
            Decision::Bypass(BypassReason::Sender),
            Decision::Bypass(BypassReason::Recipient),
            Decision::Bypass(BypassReason::SpecialRecipient),
            Decision::Bypass(BypassReason::Regex),
            Decision::Bypass(BypassReason::OptOut),
            Decision::Bypass(BypassReason::NotOptedIn),
            Decision::Bypass(BypassReason::Dnswl),
            Decision::Reject(RejectReason::Dnsbl),
            Decision::Pass(PassReason::LowRisk),
            Decision::Pass(PassReason::OutboundReply),
        ];
        for (i, d) in samples.iter().enumerate() {
            assert_eq!(index(d), i);
            assert_eq!(DECISION_LABELS[i], (d.label(), d.reason()));
        }
    }

    #[test]
    fn counts_and_buckets() {
        let m = Metrics::default();
        m.record_decision(&Decision::Pass(PassReason::DelayMet { delayed: 300 }));
        m.record_decision(&Decision::Pass(PassReason::DelayMet { delayed: 200 }));
        m.record_store_latency(Duration::from_micros(50));
        m.record_store_latency(Duration::from_millis(5));
        m.record_store_latency(Duration::from_secs(5));
        m.record_store_error();
        let s = m.snapshot();
        assert_eq!(s.decision("pass", "delay_met"), 2);
        assert_eq!(s.decision("pass", "nope"), 0);
        assert_eq!(s.delay_seconds_total, 500);
        assert_eq!(s.store_latency, vec![1, 0, 1, 0, 0, 1]);
        assert_eq!(s.store_errors, 1);
    }
}
