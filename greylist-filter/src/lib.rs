//! Greylisting library (work in progress).
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod decision_log;
pub mod engine;
pub mod import;
pub mod metrics;
pub mod policy;
pub mod record;
pub mod store;
pub mod tuple;
pub mod whitelist;

pub use engine::{Action, Engine, Explanation, RcptContext, RcptOutcome, SmtpReply};
