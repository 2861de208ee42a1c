//! The records the store keeps, the updates the policy asks for, and their byte encoding.
//!
//! Backends share [`HostRecord::apply`] and [`pending_delta`] so that read-modify-write
//! semantics are identical everywhere; a backend only has to make them atomic.

/// The life stage of a tuple record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TupleState {
    /// Seen, tempfailed, not yet retried successfully.
    Pending,
    /// Retried after the delay; auto-whitelisted until `expires`.
    Passed,
}

/// What the store knows about one tuple. Times are unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TupleRecord {
    /// Pending or passed.
    pub state: TupleState,
    /// When the tuple was first seen (start of the current greylisting round).
    pub first_seen: u64,
    /// When the tuple first passed, 0 while pending.
    pub passed_at: u64,
    /// The last time the tuple was seen.
    pub last_seen: u64,
    /// When the record stops counting: end of the retry window while pending, end of the
    /// auto-whitelist period once passed. The expiry sweep deletes it after that.
    pub expires: u64,
    /// How many times the tuple was tempfailed in this round.
    pub attempts: u32,
    /// How many messages passed on this record.
    pub passes: u32,
}

impl TupleRecord {
    /// A fresh pending record first seen at `now`, expiring at `expires`.
    pub fn pending(now: u64, expires: u64) -> Self {
        TupleRecord {
            state: TupleState::Pending,
            first_seen: now,
            passed_at: 0,
            last_seen: now,
            expires,
            attempts: 1,
            passes: 0,
        }
    }

    /// Whether the record is pending.
    pub fn is_pending(&self) -> bool {
        self.state == TupleState::Pending
    }

    /// Encoded size in bytes.
    pub const ENCODED_LEN: usize = 1 + 1 + 8 * 4 + 4 * 2;
    const VERSION: u8 = 1;

    /// Fixed-size byte encoding (version, state, then little-endian fields).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0] = Self::VERSION;
        b[1] = match self.state {
            TupleState::Pending => 0,
            TupleState::Passed => 1,
        };
        b[2..10].copy_from_slice(&self.first_seen.to_le_bytes());
        b[10..18].copy_from_slice(&self.passed_at.to_le_bytes());
        b[18..26].copy_from_slice(&self.last_seen.to_le_bytes());
        b[26..34].copy_from_slice(&self.expires.to_le_bytes());
        b[34..38].copy_from_slice(&self.attempts.to_le_bytes());
        b[38..42].copy_from_slice(&self.passes.to_le_bytes());
        b
    }

    /// Decodes [`TupleRecord::encode`]'s output; `None` if malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::ENCODED_LEN || b.first() != Some(&Self::VERSION) {
            return None;
        }
        let state = match b.get(1)? {
            0 => TupleState::Pending,
            1 => TupleState::Passed,
            _ => return None,
        };
        Some(TupleRecord {
            state,
            first_seen: u64_at(b, 2)?,
            passed_at: u64_at(b, 10)?,
            last_seen: u64_at(b, 18)?,
            expires: u64_at(b, 26)?,
            attempts: u32_at(b, 34)?,
            passes: u32_at(b, 38)?,
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What the store knows about one client network (host trust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HostRecord {
    /// Distinct tuples from this network that passed greylisting.
    pub passed_tuples: u32,
    /// The network is trusted (all its tuples pass) until this time; 0 = never trusted.
    pub trusted_until: u64,
    /// When the record may be deleted by the expiry sweep.
    pub expires: u64,
}

/// A change to a network's host record, applied atomically by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostUpdate {
    /// A distinct tuple passed at `now`: count it, and trust the network for `period`
    /// seconds once the count reaches `threshold` (0 disables trust).
    CountPass {
        /// The time of the pass.
        now: u64,
        /// Passes needed for trust; 0 = host trust disabled.
        threshold: u32,
        /// How long trust and the counter last, in seconds.
        period: u64,
    },
    /// Extend an existing trust to at least `until` (sliding trust).
    Refresh {
        /// The new end of trust.
        until: u64,
    },
}

impl HostRecord {
    /// The record after `update`, given the current record (`None` if there is none).
    pub fn apply(current: Option<HostRecord>, update: HostUpdate) -> HostRecord {
        let mut r = current.unwrap_or_default();
        match update {
            HostUpdate::CountPass {
                now,
                threshold,
                period,
            } => {
                r.passed_tuples = r.passed_tuples.saturating_add(1);
                let until = now.saturating_add(period);
                r.expires = r.expires.max(until);
                if threshold > 0 && r.passed_tuples >= threshold {
                    r.trusted_until = r.trusted_until.max(until);
                }
            }
            HostUpdate::Refresh { until } => {
                if r.trusted_until > 0 {
                    r.trusted_until = r.trusted_until.max(until);
                }
                r.expires = r.expires.max(until);
            }
        }
        r
    }

    /// Encoded size in bytes.
    pub const ENCODED_LEN: usize = 1 + 4 + 8 + 8;
    const VERSION: u8 = 1;

    /// Fixed-size byte encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0] = Self::VERSION;
        b[1..5].copy_from_slice(&self.passed_tuples.to_le_bytes());
        b[5..13].copy_from_slice(&self.trusted_until.to_le_bytes());
        b[13..21].copy_from_slice(&self.expires.to_le_bytes());
        b
    }

    /// Decodes [`HostRecord::encode`]'s output; `None` if malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::ENCODED_LEN || b.first() != Some(&Self::VERSION) {
            return None;
        }
        Some(HostRecord {
            passed_tuples: u32_at(b, 1)?,
            trusted_until: u64_at(b, 5)?,
            expires: u64_at(b, 13)?,
        })
    }
}

/// How a tuple write must be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// May be group-committed (first-seen, attempt counters, auto-whitelist refreshes):
    /// losing the last second of these on a crash only costs a repeated tempfail.
    Lazy,
    /// Must be on disk before the SMTP reply (a tuple passing greylisting).
    Durable,
}

/// A tuple record to write, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TupleWrite {
    /// The new record.
    pub record: TupleRecord,
    /// Commit requirement.
    pub durability: Durability,
}

/// The store changes one decision asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Updates {
    /// Replace the tuple record.
    pub tuple: Option<TupleWrite>,
    /// Change the network's host record.
    pub host: Option<HostUpdate>,
}

impl Updates {
    /// True when nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.tuple.is_none() && self.host.is_none()
    }

    /// True when the updates must be durable before replying.
    pub fn is_durable(&self) -> bool {
        matches!(
            self.tuple,
            Some(TupleWrite {
                durability: Durability::Durable,
                ..
            })
        ) || matches!(self.host, Some(HostUpdate::CountPass { .. }))
    }
}

/// What the store holds for one key: the inputs of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The tuple's record.
    pub tuple: Option<TupleRecord>,
    /// The network's host record.
    pub host: Option<HostRecord>,
    /// Pending tuples stored for the network.
    pub pending_in_network: u32,
}

/// Change in a network's pending count when `old` is replaced by `new`.
pub fn pending_delta(old: Option<&TupleRecord>, new: Option<&TupleRecord>) -> i64 {
    let p = |r: Option<&TupleRecord>| i64::from(r.is_some_and(TupleRecord::is_pending));
    p(new) - p(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_record_round_trip_and_rejects_garbage() {
        let r = TupleRecord {
            state: TupleState::Passed,
            first_seen: 1,
            passed_at: 2,
            last_seen: 3,
            expires: u64::MAX,
            attempts: 5,
            passes: u32::MAX,
        };
        assert_eq!(TupleRecord::decode(&r.encode()), Some(r));
        assert_eq!(TupleRecord::decode(&[]), None);
        let mut bad = r.encode();
        bad[1] = 9;
        assert_eq!(TupleRecord::decode(&bad), None);
        bad[0] = 2;
        assert_eq!(TupleRecord::decode(&bad), None);
    }

    #[test]
    fn host_record_round_trip() {
        let h = HostRecord {
            passed_tuples: 3,
            trusted_until: 99,
            expires: 100,
        };
        assert_eq!(HostRecord::decode(&h.encode()), Some(h));
        assert_eq!(HostRecord::decode(&h.encode()[1..]), None);
    }

    #[test]
    fn host_trust_after_threshold() {
        let upd = |now| HostUpdate::CountPass {
            now,
            threshold: 3,
            period: 100,
        };
        let a = HostRecord::apply(None, upd(10));
        assert_eq!((a.passed_tuples, a.trusted_until, a.expires), (1, 0, 110));
        let b = HostRecord::apply(Some(a), upd(20));
        assert_eq!(b.trusted_until, 0);
        let c = HostRecord::apply(Some(b), upd(30));
        assert_eq!((c.passed_tuples, c.trusted_until), (3, 130));
        let d = HostRecord::apply(Some(c), HostUpdate::Refresh { until: 200 });
        assert_eq!((d.trusted_until, d.expires), (200, 200));
        // Refresh never creates trust.
        let e = HostRecord::apply(Some(a), HostUpdate::Refresh { until: 500 });
        assert_eq!(e.trusted_until, 0);
        // Threshold 0 disables trust.
        let f = HostRecord::apply(
            None,
            HostUpdate::CountPass {
                now: 1,
                threshold: 0,
                period: 5,
            },
        );
        assert_eq!(f.trusted_until, 0);
    }

    #[test]
    fn pending_delta_cases() {
        let p = TupleRecord::pending(1, 2);
        let w = TupleRecord {
            state: TupleState::Passed,
            ..p
        };
        assert_eq!(pending_delta(None, Some(&p)), 1);
        assert_eq!(pending_delta(Some(&p), Some(&p)), 0);
        assert_eq!(pending_delta(Some(&p), Some(&w)), -1);
        assert_eq!(pending_delta(Some(&p), None), -1);
        assert_eq!(pending_delta(Some(&w), Some(&p)), 1);
        assert_eq!(pending_delta(None, None), 0);
    }
}
