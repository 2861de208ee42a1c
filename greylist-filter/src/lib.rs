//! Greylisting library (work in progress).
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod policy;
pub mod record;
pub mod store;
pub mod tuple;
pub mod whitelist;
