//! # greylist-filter: greylisting for Sendmail and Postfix, as a library
//!
//! This crate is the greylisting milter daemon as a library: the [`Engine`] (policy,
//! whitelists, store), the milter glue [`Greylist`] (a `milter_server::Milter`), the
//! [`daemon`] (configuration, reload, expiry, privilege drop, shutdown), the [`admin`]
//! HTTP endpoint and the [`cli`]. `main.rs` only installs logging and signal handlers.
//! Operating it (Postfix and Sendmail set-up, systemd, metrics, migration) is described in
//! the crate's `README.md`.
//!
//! ## The algorithm
//!
//! Each recipient is decided at RCPT on a *tuple*: the client network (the address
//! masked to /24 for IPv4 and /64 for IPv6, IPv4-mapped IPv6 treated as IPv4), the
//! normalised envelope sender (lower case, BATV, SRS, `+ext` and VERP counters folded,
//! see [`tuple`](mod@tuple)) and the recipient.
//!
//! 1. Unknown tuple: remember when it was first seen and answer `451 4.7.1`.
//! 2. Retry before `delay` (5 min): `451` again; the first-seen time does not move.
//! 3. Retry after `delay` and within `retry_window` (24 h) of the first attempt: pass.
//!    The tuple is now auto-whitelisted for `auto_whitelist` (35 days), refreshed on
//!    every later pass, and the message gets an `X-Greylist` header saying how long it
//!    was delayed.
//! 4. A pending tuple not retried in its window, or an auto-whitelist entry that ran
//!    out, starts over at 1.
//!
//! A network that passed 3 distinct tuples is trusted for 35 days (all its mail
//! passes). A network may hold at most 1,000 pending tuples; past that, new tuples are
//! tempfailed without being stored, so a spam run cannot grow the database without bound.
//! Loopback, local networks, authenticated clients, `postmaster@`/`abuse@` and the
//! configured whitelists bypass greylisting ([`whitelist`]). Ordered access rules
//! ([`acl`], milter-greylist's `racl` as `[[acl]]` tables) come between the first of
//! those and the whitelist lists: they whitelist, reject, or greylist with their own
//! delay, auto-whitelist period and reply.
//!
//! The decision itself is a pure function ([`policy::decide`]) of the stored records,
//! the whitelist verdict, the parameters and `now`; the [`Engine`] reads the clock and
//! the store, calls it, and writes back what it returns. This keeps the rules testable
//! with tables and properties, and lets [`Engine::explain`] answer "why, and when will it
//! pass?" without side effects.
//!
//! ## Storage: why redb, group commit and incremental expiry
//!
//! - **redb** ([`store::RedbStore`]) is an embedded, transactional, copy-on-write
//!   B-tree store in one file: no service to run, and a `kill -9` or power loss leaves
//!   the last committed state (tested by killing a writer process). milter-greylist
//!   instead rewrote a text dump of its whole in-memory table under a global lock and
//!   lost everything since the last dump on a crash.
//! - **Group commit.** What must not be lost is a tuple *passing* (otherwise a sender
//!   that did everything right is delayed again): those writes are committed with fsync
//!   before the reply. First-seen records and counters are cheap to lose (the sender is
//!   greylisted once more), so they are buffered (visible to reads at once) and committed
//!   by a background writer every second or every 10,000 records. One fsync then covers
//!   thousands of new tuples, which is what makes tens of thousands of new tuples per
//!   second possible. Sliding expiries are only rewritten when they move by a minute or
//!   more, so auto-whitelisted lookups are reads.
//! - **Incremental expiry.** An index ordered by expiry time lets
//!   [`store::Store::expire`] delete at most N due records per call, so no step ever
//!   scans or rewrites the store (postgrey's nightly full scan stalls the MTA).
//! - **Redis** ([`store::RedisStore`], `--store redis://HOST:PORT/DB`) lets several
//!   daemons (every MX) share one store: each update is one Lua script (atomic across
//!   daemons), records carry Redis TTLs, and connect/command timeouts bound what a dead
//!   Redis costs a decision, after which the failure policy applies and the connection
//!   is re-established by itself.
//! - Every backend implements [`store::Store`] and passes the same contract suite
//!   (`store::contract`, feature `contract-tests`); [`store::MemoryStore`] serves tests.
//!
//! ## Beyond the client network
//!
//! - [`identity`]: with `[identity] spf = true`, an SPF pass for the MAIL FROM domain
//!   keys the tuple on that domain instead of the network (never a bypass).
//! - [`dnslists`]: DNS allow lists bypass, DNS block lists get a longer delay or a
//!   550, and host whitelists can require forward-confirmed reverse DNS.
//! - [`risk`]: the `strict`/`balanced`/`lenient` presets scale the delay by that
//!   evidence (a pure table-tested function).
//! - `[outbound] learn`: mail an authenticated user sends pre-approves the replies.
//!
//! ## Failure policy
//!
//! Greylisting is an optimisation: if the store fails, mail passes by default
//! (`fail_open = true`), logged and counted; `fail_open = "tempfail"` defers instead.
//! `dry_run = true` decides, records and logs, but never tempfails.
//!
//! ## Modules
//!
//! [`config`] (TOML with `file:line:col` errors), [`tuple`](mod@tuple), [`policy`], [`record`],
//! [`store`], [`whitelist`], [`acl`], [`clock`], [`metrics`], [`decision_log`], [`import`]
//! (milter-greylist configuration and dump), [`engine`], [`filter`] (the milter),
//! [`daemon`], [`admin`], [`cli`], [`identity`], [`dnslists`], [`risk`].
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decision_log;
pub mod dnslists;
pub mod engine;
pub mod filter;
pub mod identity;
pub mod import;
pub mod metrics;
pub mod policy;
pub mod record;
pub mod risk;
pub mod store;
pub mod tuple;
pub mod whitelist;

pub use engine::{Action, Engine, Explanation, RcptContext, RcptOutcome, SmtpReply};
pub use filter::Greylist;
