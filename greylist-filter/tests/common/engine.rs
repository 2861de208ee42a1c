//! The engine on its own, without the daemon: a manual clock and the recipient
//! context `check_rcpt` takes.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use greylist_filter::clock::ManualClock;
use greylist_filter::config::Config;
use greylist_filter::store::{MemoryStore, Store};
use greylist_filter::{Engine, RcptContext};

/// The manual clock's starting time.
pub const T0: u64 = 1_700_000_000;

/// `toml` parsed as if read from `test.toml`.
pub fn config(toml: &str) -> Config {
    Config::parse(toml, Path::new("test.toml")).unwrap()
}

/// An engine for host `mx.example.net` over `store`, with a manual clock at [`T0`].
pub fn engine_with(cfg: &Config, store: Arc<dyn Store>) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let e = Engine::new(
        cfg,
        Path::new("test.toml"),
        store,
        clock.clone(),
        "mx.example.net",
    )
    .unwrap();
    (e, clock)
}

/// [`engine_with`] the configuration `toml` over a fresh memory store.
pub fn engine(toml: &str) -> (Engine, Arc<ManualClock>) {
    engine_with(&config(toml), Arc::new(MemoryStore::new()))
}

/// A recipient `rcpt` of a message from `sender`, sent by an unauthenticated client
/// at `ip` with no name and no queue id.
pub fn ctx<'a>(ip: &str, sender: &'a str, rcpt: &'a str) -> RcptContext<'a> {
    RcptContext {
        client_addr: Some(ip.parse::<IpAddr>().unwrap()),
        client_name: None,
        auth_authen: None,
        sender,
        recipient: rcpt,
        ..RcptContext::default()
    }
}
