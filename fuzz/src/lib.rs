//! Shared logic of the fuzz targets. The same file is compiled into
//! `milter-proto/tests/fuzz_corpus.rs`, which replays `corpus/` and
//! `regressions/` on stable in the normal test suite.

pub mod logic;
