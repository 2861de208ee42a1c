//! Fuzz target `server_session`: the real milter server
//! (`milter_server::serve_connection`) with a scripted filter over an
//! in-memory pipe; see `src/server_session.rs` for the input format and the
//! checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Included by path (not through the crate's lib.rs) so that the replay test
// in milter-server compiles the very same file.
#[allow(dead_code)]
#[path = "../src/server_session.rs"]
mod server_session;

fuzz_target!(|data: &[u8]| server_session::server_session(data));
