//! Fuzz target `command`: see `src/logic.rs` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| milter_fuzz::logic::command(data));
