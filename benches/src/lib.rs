//! Benchmarks of the milter crates: see benches/README.md.
