//! Greylisting library (work in progress).
#![forbid(unsafe_code)]

pub mod clock;
pub mod policy;
pub mod record;
pub mod store;
pub mod tuple;
