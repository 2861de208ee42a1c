//! Shared helpers for the example milters.
