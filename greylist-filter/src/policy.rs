//! The greylisting decision as a pure function.
//!
//! [`decide`] takes the whitelist verdict, what the store holds for the tuple and its
//! network ([`Snapshot`]), the parameters and `now`, and returns the [`Decision`] and the
//! [`Updates`] to write. It does no I/O and reads no clock, so it is tested with tables
//! and properties, and `explain` can run it without touching the store.
//!
//! Timeline of one tuple (times relative to `first_seen`):
//!
//! ```text
//! 0 ........ delay ..................... retry_window
//! | tempfail | retry passes -> auto-whitelisted  | expired: starts over
//! ```
//!
//! The retry window is measured from the first attempt, so `delay < retry_window`.
//! A passed tuple stays auto-whitelisted for `auto_whitelist` after its last pass
//! (sliding). When a network has passed `host_trust_threshold` distinct tuples, all of
//! its tuples pass for `host_trust_period` (sliding as well).

use crate::record::{
    Durability, HostUpdate, Snapshot, TupleRecord, TupleState, TupleWrite, Updates,
};

/// Timing and limits the policy works with; all durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Minimum time between first attempt and an accepted retry.
    pub delay: u64,
    /// A pending tuple must be retried within this time of its first attempt.
    pub retry_window: u64,
    /// How long a passed tuple stays whitelisted after its last pass; 0 disables.
    pub auto_whitelist: u64,
    /// Distinct passed tuples that make a network trusted; 0 disables host trust.
    pub host_trust_threshold: u32,
    /// How long host trust (and the pass counter) lasts after the last pass.
    pub host_trust_period: u64,
    /// Maximum pending tuples per network; 0 = unlimited.
    pub max_pending_per_network: u32,
    /// Sliding expiries are only rewritten when they would move by at least this much,
    /// so a busy auto-whitelisted tuple costs a write per interval, not per message.
    pub refresh_granularity: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            delay: 300,
            retry_window: 24 * 3600,
            auto_whitelist: 35 * 86_400,
            host_trust_threshold: 3,
            host_trust_period: 35 * 86_400,
            max_pending_per_network: 1000,
            refresh_granularity: 60,
        }
    }
}

/// Why mail passed greylisting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassReason {
    /// A retry after the delay, inside the retry window. `delayed` is the time in seconds
    /// since the first attempt (for the `X-Greylist` header).
    DelayMet {
        /// Seconds between the first attempt and this pass.
        delayed: u64,
    },
    /// The tuple passed before and is auto-whitelisted.
    AutoWhitelisted,
    /// The client network is trusted.
    HostTrusted,
    /// The store failed and the filter is configured to fail open.
    StoreFailOpen,
    /// The risk preset gives this client no delay (trusted evidence, see
    /// [`crate::risk`]).
    LowRisk,
    /// A reply to mail an authenticated local user sent (`[outbound] learn`).
    OutboundReply,
}

/// Why a recipient was greylisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GreylistReason {
    /// The tuple was never seen.
    NewTuple,
    /// Retried before the delay ran out.
    TooEarly,
    /// The pending tuple was not retried inside the retry window; it starts over.
    WindowExpired,
    /// The auto-whitelist entry expired; the tuple starts over.
    AutoWhitelistExpired,
}

/// Why a temporary failure was returned without greylisting state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TempfailReason {
    /// The network already has the maximum number of pending tuples.
    PendingCap,
    /// The store failed and the filter is configured to fail closed.
    StoreUnavailable,
}

/// Why a recipient was not subject to greylisting at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BypassReason {
    /// The client is on a loopback address.
    Loopback,
    /// The client is in a configured local network.
    LocalNetwork,
    /// The connection is not over IP (a local socket) or the address is unknown.
    NonIpClient,
    /// The client authenticated (`{auth_authen}`).
    Authenticated,
    /// The client address is whitelisted.
    ClientNetwork,
    /// The client host name or domain is whitelisted.
    ClientHost,
    /// The sender address or domain is whitelisted.
    Sender,
    /// The recipient address or domain is whitelisted.
    Recipient,
    /// `postmaster@` and `abuse@` are never greylisted.
    SpecialRecipient,
    /// A whitelist regular expression matched.
    Regex,
    /// The recipient opted out of greylisting.
    OptOut,
    /// Opt-in mode is on and the recipient did not opt in.
    NotOptedIn,
    /// The client is on a DNS allow list (`[dns] dnswl`).
    Dnswl,
    /// An `[[acl]]` rule with `action = "whitelist"` matched.
    Acl,
}

/// Why a recipient was rejected outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The client is on a DNS block list and `[dns] dnsbl_action = "reject"`.
    Dnsbl,
    /// An `[[acl]]` rule with `action = "blacklist"` matched.
    Acl,
}

/// The outcome for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Accept the recipient.
    Pass(PassReason),
    /// Tempfail the recipient (451 4.7.1); it may pass `retry_after` seconds from now.
    Greylist {
        /// Seconds until a retry can pass.
        retry_after: u64,
        /// Why.
        reason: GreylistReason,
    },
    /// Tempfail without storing anything.
    Tempfail(TempfailReason),
    /// Greylisting does not apply.
    Bypass(BypassReason),
    /// Reject the recipient (550 5.7.1).
    Reject(RejectReason),
}

impl Decision {
    /// True if the recipient is to be accepted.
    pub fn accepts(&self) -> bool {
        matches!(self, Decision::Pass(_) | Decision::Bypass(_))
    }

    /// Short outcome label for logs and metrics: `pass`, `greylist`, `tempfail`, `bypass`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Pass(_) => "pass",
            Decision::Greylist { .. } => "greylist",
            Decision::Tempfail(_) => "tempfail",
            Decision::Bypass(_) => "bypass",
            Decision::Reject(_) => "reject",
        }
    }

    /// Short reason label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Pass(r) => match r {
                PassReason::DelayMet { .. } => "delay_met",
                PassReason::AutoWhitelisted => "auto_whitelisted",
                PassReason::HostTrusted => "host_trusted",
                PassReason::StoreFailOpen => "store_fail_open",
                PassReason::LowRisk => "low_risk",
                PassReason::OutboundReply => "outbound_reply",
            },
            Decision::Greylist { reason, .. } => match reason {
                GreylistReason::NewTuple => "new_tuple",
                GreylistReason::TooEarly => "too_early",
                GreylistReason::WindowExpired => "window_expired",
                GreylistReason::AutoWhitelistExpired => "auto_whitelist_expired",
            },
            Decision::Tempfail(r) => match r {
                TempfailReason::PendingCap => "pending_cap",
                TempfailReason::StoreUnavailable => "store_unavailable",
            },
            Decision::Bypass(r) => match r {
                BypassReason::Loopback => "loopback",
                BypassReason::LocalNetwork => "local_network",
                BypassReason::NonIpClient => "non_ip_client",
                BypassReason::Authenticated => "authenticated",
                BypassReason::ClientNetwork => "whitelist_network",
                BypassReason::ClientHost => "whitelist_host",
                BypassReason::Sender => "whitelist_sender",
                BypassReason::Recipient => "whitelist_recipient",
                BypassReason::SpecialRecipient => "special_recipient",
                BypassReason::Regex => "whitelist_regex",
                BypassReason::OptOut => "opt_out",
                BypassReason::NotOptedIn => "not_opted_in",
                BypassReason::Dnswl => "dnswl",
                BypassReason::Acl => "acl",
            },
            Decision::Reject(RejectReason::Dnsbl) => "dnsbl",
            Decision::Reject(RejectReason::Acl) => "acl",
        }
    }
}

/// Decides for one recipient. Pure: no I/O, no clock.
///
/// `whitelist` is the whitelist verdict (`Some` bypasses everything else).
pub fn decide(
    params: &Params,
    whitelist: Option<BypassReason>,
    stored: &Snapshot,
    now: u64,
) -> (Decision, Updates) {
    if let Some(reason) = whitelist {
        return (Decision::Bypass(reason), Updates::default());
    }
    let mut updates = Updates::default();

    // Host trust: every tuple of a trusted network passes.
    if let Some(host) = stored.host
        && host.trusted_until > now
    {
        let until = now.saturating_add(params.host_trust_period);
        if until
            >= host
                .trusted_until
                .saturating_add(params.refresh_granularity)
        {
            updates.host = Some(HostUpdate::Refresh { until });
        }
        return (Decision::Pass(PassReason::HostTrusted), updates);
    }

    let restart_reason = match stored.tuple {
        Some(rec) if rec.state == TupleState::Passed && rec.expires > now => {
            let expires = now.saturating_add(params.auto_whitelist);
            if expires >= rec.expires.saturating_add(params.refresh_granularity) {
                updates.tuple = Some(TupleWrite {
                    record: TupleRecord {
                        last_seen: now,
                        expires,
                        passes: rec.passes.saturating_add(1),
                        ..rec
                    },
                    durability: Durability::Lazy,
                });
            }
            return (Decision::Pass(PassReason::AutoWhitelisted), updates);
        }
        Some(rec) if rec.state == TupleState::Pending && now < rec.expires => {
            let ready_at = rec.first_seen.saturating_add(params.delay);
            if now < ready_at {
                updates.tuple = Some(TupleWrite {
                    record: TupleRecord {
                        last_seen: now,
                        attempts: rec.attempts.saturating_add(1),
                        ..rec
                    },
                    durability: Durability::Lazy,
                });
                return (
                    Decision::Greylist {
                        retry_after: ready_at - now,
                        reason: GreylistReason::TooEarly,
                    },
                    updates,
                );
            }
            updates.tuple = Some(TupleWrite {
                record: TupleRecord {
                    state: TupleState::Passed,
                    passed_at: now,
                    last_seen: now,
                    expires: now.saturating_add(params.auto_whitelist),
                    passes: rec.passes.saturating_add(1),
                    ..rec
                },
                durability: Durability::Durable,
            });
            updates.host = Some(HostUpdate::CountPass {
                now,
                threshold: params.host_trust_threshold,
                period: params.host_trust_period,
            });
            let delayed = now.saturating_sub(rec.first_seen);
            return (Decision::Pass(PassReason::DelayMet { delayed }), updates);
        }
        Some(rec) if rec.state == TupleState::Pending => GreylistReason::WindowExpired,
        Some(_) => GreylistReason::AutoWhitelistExpired,
        None => GreylistReason::NewTuple,
    };

    // A new round. An expired pending record is replaced and so adds no pending tuple.
    let adds_pending = !stored.tuple.is_some_and(|r| r.is_pending());
    if adds_pending
        && params.max_pending_per_network > 0
        && stored.pending_in_network >= params.max_pending_per_network
    {
        return (Decision::Tempfail(TempfailReason::PendingCap), updates);
    }
    let expires = now.saturating_add(params.retry_window);
    updates.tuple = Some(TupleWrite {
        record: TupleRecord::pending(now, expires),
        durability: Durability::Lazy,
    });
    (
        Decision::Greylist {
            retry_after: params.delay,
            reason: restart_reason,
        },
        updates,
    )
}

/// When a stored tuple would pass, if nothing changes: `Some(now)` if it passes now,
/// `Some(t)` for a pending tuple that passes from `t`, `None` if it has to start over.
pub fn passes_at(params: &Params, stored: &Snapshot, now: u64) -> Option<u64> {
    if stored.host.is_some_and(|h| h.trusted_until > now) {
        return Some(now);
    }
    match stored.tuple {
        Some(r) if r.state == TupleState::Passed && r.expires > now => Some(now),
        Some(r) if r.state == TupleState::Pending && r.expires > now => {
            Some(now.max(r.first_seen.saturating_add(params.delay)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::HostRecord;
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000;
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;

    /// Runs a sequence of attempts of one tuple through `decide`, applying updates to an
    /// in-memory snapshot like a store would.
    struct Sim {
        params: Params,
        snap: Snapshot,
    }

    impl Sim {
        fn new(params: Params) -> Self {
            Sim {
                params,
                snap: Snapshot::default(),
            }
        }

        fn at(&mut self, now: u64) -> Decision {
            let (d, u) = decide(&self.params, None, &self.snap, now);
            if let Some(w) = u.tuple {
                self.snap.pending_in_network = (i64::from(self.snap.pending_in_network)
                    + crate::record::pending_delta(self.snap.tuple.as_ref(), Some(&w.record)))
                    as u32;
                self.snap.tuple = Some(w.record);
            }
            if let Some(h) = u.host {
                self.snap.host = Some(HostRecord::apply(self.snap.host, h));
            }
            d
        }
    }

    fn greylist(reason: GreylistReason, retry_after: u64) -> Decision {
        Decision::Greylist {
            retry_after,
            reason,
        }
    }

    #[test]
    fn table_lifecycle() {
        use GreylistReason::*;
        let p = Params::default();
        let mut sim = Sim::new(p);
        // (time offset, expected)
        let table = [
            (0, greylist(NewTuple, 300)),
            (1, greylist(TooEarly, 299)),
            (4 * MIN, greylist(TooEarly, MIN)),
            (5 * MIN - 1, greylist(TooEarly, 1)),
            (
                5 * MIN,
                Decision::Pass(PassReason::DelayMet { delayed: 300 }),
            ),
            (5 * MIN + 1, Decision::Pass(PassReason::AutoWhitelisted)),
            (30 * DAY, Decision::Pass(PassReason::AutoWhitelisted)),
            // Sliding: 30 days after the last pass is still inside 35 days.
            (60 * DAY, Decision::Pass(PassReason::AutoWhitelisted)),
            (95 * DAY + 1, greylist(AutoWhitelistExpired, 300)),
            (95 * DAY + 2, greylist(TooEarly, 299)),
        ];
        for (i, (off, want)) in table.into_iter().enumerate() {
            assert_eq!(sim.at(T0 + off), want, "row {i} (t+{off})");
        }
        // The first-seen time is kept across early retries.
        assert_eq!(sim.snap.tuple.unwrap().first_seen, T0 + 95 * DAY + 1);
        assert_eq!(sim.snap.tuple.unwrap().attempts, 2);
    }

    #[test]
    fn early_retry_keeps_first_seen() {
        let mut sim = Sim::new(Params::default());
        sim.at(T0);
        sim.at(T0 + 10);
        sim.at(T0 + 20);
        let r = sim.snap.tuple.unwrap();
        assert_eq!((r.first_seen, r.last_seen, r.attempts), (T0, T0 + 20, 3));
    }

    #[test]
    fn window_expiry_restarts() {
        let mut sim = Sim::new(Params::default());
        sim.at(T0);
        assert_eq!(
            sim.at(T0 + DAY),
            greylist(GreylistReason::WindowExpired, 300)
        );
        assert_eq!(sim.snap.tuple.unwrap().first_seen, T0 + DAY);
        assert_eq!(
            sim.snap.pending_in_network, 1,
            "restart adds no pending tuple"
        );
        assert_eq!(
            sim.at(T0 + DAY + 300),
            Decision::Pass(PassReason::DelayMet { delayed: 300 })
        );
        assert_eq!(sim.snap.pending_in_network, 0);
    }

    #[test]
    fn pass_is_durable_and_counts_host() {
        let p = Params::default();
        let snap = Snapshot {
            tuple: Some(TupleRecord::pending(T0, T0 + DAY)),
            ..Default::default()
        };
        let (d, u) = decide(&p, None, &snap, T0 + 400);
        assert!(d.accepts());
        assert!(u.is_durable());
        let w = u.tuple.unwrap();
        assert_eq!(w.record.state, TupleState::Passed);
        assert_eq!(w.record.expires, T0 + 400 + 35 * DAY);
        assert!(matches!(u.host, Some(HostUpdate::CountPass { .. })));
        // First-seen writes are lazy.
        let (_, u) = decide(&p, None, &Snapshot::default(), T0);
        assert!(!u.is_durable());
        assert_eq!(u.tuple.unwrap().durability, Durability::Lazy);
    }

    #[test]
    fn auto_whitelist_refresh_granularity() {
        let p = Params::default();
        let mut rec = TupleRecord::pending(T0, T0 + DAY);
        rec.state = TupleState::Passed;
        rec.expires = T0 + 35 * DAY;
        let snap = Snapshot {
            tuple: Some(rec),
            ..Default::default()
        };
        // 10 s later: the expiry would move by 10 s, less than the granularity.
        let (d, u) = decide(&p, None, &snap, T0 + 10);
        assert_eq!(d, Decision::Pass(PassReason::AutoWhitelisted));
        assert!(u.is_empty());
        let (_, u) = decide(&p, None, &snap, T0 + HOUR);
        assert_eq!(u.tuple.unwrap().record.expires, T0 + HOUR + 35 * DAY);
        assert_eq!(u.tuple.unwrap().durability, Durability::Lazy);
    }

    #[test]
    fn host_trust_after_three_distinct_tuples() {
        let p = Params::default();
        let mut host = None;
        for i in 0..3u64 {
            assert!(host.is_none_or(|h: HostRecord| h.trusted_until <= T0));
            let snap = Snapshot {
                tuple: Some(TupleRecord::pending(T0 + i, T0 + DAY)),
                host,
                pending_in_network: 3,
            };
            let (d, u) = decide(&p, None, &snap, T0 + HOUR);
            assert!(matches!(d, Decision::Pass(PassReason::DelayMet { .. })));
            host = Some(HostRecord::apply(host, u.host.unwrap()));
        }
        let h = host.unwrap();
        assert_eq!(h.trusted_until, T0 + HOUR + 35 * DAY);
        // A never-seen tuple from the trusted network passes, writes no tuple.
        let snap = Snapshot {
            host,
            ..Default::default()
        };
        let (d, u) = decide(&p, None, &snap, T0 + 2 * HOUR);
        assert_eq!(d, Decision::Pass(PassReason::HostTrusted));
        assert!(u.tuple.is_none());
        // Sliding trust is refreshed (hourly granularity is well above 60 s).
        assert_eq!(
            u.host,
            Some(HostUpdate::Refresh {
                until: T0 + 2 * HOUR + 35 * DAY
            })
        );
        // Trust expires.
        let (d, _) = decide(&p, None, &snap, T0 + HOUR + 35 * DAY);
        assert_eq!(d, greylist(GreylistReason::NewTuple, 300));
        // Threshold 0 disables trust.
        let p0 = Params {
            host_trust_threshold: 0,
            ..p
        };
        let h0 = HostRecord::apply(
            None,
            HostUpdate::CountPass {
                now: T0,
                threshold: p0.host_trust_threshold,
                period: p0.host_trust_period,
            },
        );
        assert_eq!(h0.trusted_until, 0);
    }

    #[test]
    fn pending_cap() {
        let p = Params {
            max_pending_per_network: 2,
            ..Params::default()
        };
        let full = Snapshot {
            pending_in_network: 2,
            ..Default::default()
        };
        let (d, u) = decide(&p, None, &full, T0);
        assert_eq!(d, Decision::Tempfail(TempfailReason::PendingCap));
        assert!(u.is_empty(), "nothing stored past the cap");
        // A known pending tuple still progresses when the network is full.
        let known = Snapshot {
            tuple: Some(TupleRecord::pending(T0, T0 + DAY)),
            pending_in_network: 2,
            ..Default::default()
        };
        assert_eq!(
            decide(&p, None, &known, T0 + 1).0,
            greylist(GreylistReason::TooEarly, 299)
        );
        assert!(decide(&p, None, &known, T0 + 300).0.accepts());
        // Expired pending record restarts even when full (it is replaced, not added).
        assert_eq!(
            decide(&p, None, &known, T0 + DAY).0,
            greylist(GreylistReason::WindowExpired, 300)
        );
        // An expired auto-whitelist entry would add a pending tuple: capped.
        let mut aw = TupleRecord::pending(T0, T0 + 1);
        aw.state = TupleState::Passed;
        let expired_aw = Snapshot {
            tuple: Some(aw),
            pending_in_network: 2,
            ..Default::default()
        };
        assert_eq!(
            decide(&p, None, &expired_aw, T0 + 5).0,
            Decision::Tempfail(TempfailReason::PendingCap)
        );
        // 0 = unlimited.
        let unlimited = Params {
            max_pending_per_network: 0,
            ..p
        };
        let huge = Snapshot {
            pending_in_network: u32::MAX,
            ..Default::default()
        };
        assert!(matches!(
            decide(&unlimited, None, &huge, T0).0,
            Decision::Greylist { .. }
        ));
    }

    #[test]
    fn whitelist_bypasses_without_updates() {
        let (d, u) = decide(
            &Params::default(),
            Some(BypassReason::Authenticated),
            &Snapshot::default(),
            T0,
        );
        assert_eq!(d, Decision::Bypass(BypassReason::Authenticated));
        assert!(u.is_empty());
        assert_eq!(d.reason(), "authenticated");
        assert_eq!(d.label(), "bypass");
    }

    #[test]
    fn auto_whitelist_zero_means_every_message_is_greylisted_again() {
        let p = Params {
            auto_whitelist: 0,
            host_trust_threshold: 0,
            ..Params::default()
        };
        let mut sim = Sim::new(p);
        sim.at(T0);
        assert!(sim.at(T0 + 300).accepts());
        assert_eq!(
            sim.at(T0 + 301),
            greylist(GreylistReason::AutoWhitelistExpired, 300)
        );
    }

    #[test]
    fn passes_at_predicts() {
        let p = Params::default();
        let snap = Snapshot {
            tuple: Some(TupleRecord::pending(T0, T0 + DAY)),
            ..Default::default()
        };
        assert_eq!(passes_at(&p, &snap, T0 + 5), Some(T0 + 300));
        assert_eq!(passes_at(&p, &snap, T0 + 400), Some(T0 + 400));
        assert_eq!(passes_at(&p, &snap, T0 + DAY), None);
        assert_eq!(passes_at(&p, &Snapshot::default(), T0), None);
    }

    fn arb_params() -> impl Strategy<Value = Params> {
        (1u64..10_000, 1u64..100_000, 0u64..100_000, 0u32..5, 0u32..4).prop_map(
            |(delay, extra, aw, thr, cap)| Params {
                delay,
                retry_window: delay + extra,
                auto_whitelist: aw,
                host_trust_threshold: thr,
                host_trust_period: aw,
                max_pending_per_network: cap,
                refresh_granularity: 60,
            },
        )
    }

    proptest! {
        /// Without whitelist or host trust, no tuple passes before `delay` has elapsed
        /// since its first attempt, whatever the sequence of attempts.
        #[test]
        fn never_passes_before_delay(
            p in arb_params(),
            steps in proptest::collection::vec(0u64..50_000, 1..30),
        ) {
            let p = Params { host_trust_threshold: 0, max_pending_per_network: 0, ..p };
            let mut sim = Sim::new(p);
            let mut now = T0;
            for step in steps {
                now += step;
                let before = sim.snap.tuple;
                let d = sim.at(now);
                if let Decision::Pass(PassReason::DelayMet { delayed }) = d {
                    let first = before.unwrap().first_seen;
                    prop_assert!(now >= first + p.delay);
                    prop_assert_eq!(delayed, now - first);
                }
                if d.accepts() {
                    // Any pass requires a round that started at least `delay` ago.
                    let r = sim.snap.tuple.unwrap();
                    prop_assert!(r.passed_at >= r.first_seen + p.delay);
                }
            }
        }

        /// A tuple retried after the delay and inside the window always passes.
        #[test]
        fn passes_when_retried_inside_window(p in arb_params(), frac in 0.0f64..1.0) {
            let mut sim = Sim::new(p);
            prop_assert!(!sim.at(T0).accepts());
            let span = p.retry_window - p.delay - 1;
            let off = p.delay + (span as f64 * frac) as u64;
            let d = sim.at(T0 + off);
            prop_assert_eq!(d, Decision::Pass(PassReason::DelayMet { delayed: off }));
        }

        /// `decide` never panics on arbitrary stored state.
        #[test]
        fn decide_total(
            p in arb_params(),
            fs in any::<u64>(), exp in any::<u64>(), state in any::<bool>(),
            trusted in any::<u64>(), pending in any::<u32>(), now in any::<u64>(),
        ) {
            let mut rec = TupleRecord::pending(fs, exp);
            if state { rec.state = TupleState::Passed; }
            let snap = Snapshot {
                tuple: Some(rec),
                host: Some(HostRecord { passed_tuples: 1, trusted_until: trusted, expires: trusted }),
                pending_in_network: pending,
            };
            let _ = decide(&p, None, &snap, now);
            let _ = passes_at(&p, &snap, now);
        }
    }
}
