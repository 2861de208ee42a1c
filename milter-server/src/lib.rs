//! An async milter server: the Rust counterpart of libmilter's `smfiDesc`,
//! `smfi_register` and `smfi_main`, on tokio.
//!
//! Implement [`Milter`] (one method per libmilter callback, each defaulting
//! to continue), give a factory to [`Server`], and serve a [`Listener`]:
//!
//! ```no_run
//! use milter_server::{async_trait, BoxError, EomContext, Listener, Milter, Options, Server, Stages, Status};
//! use milter_proto::Actions;
//!
//! /// Adds a header to every message.
//! struct AddHeader;
//!
//! #[async_trait]
//! impl Milter for AddHeader {
//!     type Message = ();
//!     async fn negotiate(&mut self, _: &milter_proto::OptNeg) -> Result<Options, BoxError> {
//!         // No stage callbacks: the MTA sends only end of message.
//!         Ok(Options::new().actions(Actions::ADD_HEADERS).stages(Stages::empty()))
//!     }
//!     async fn eom(&mut self, ctx: &mut EomContext<'_>, _: &mut ()) -> Result<Status, BoxError> {
//!         ctx.add_header("X-Filtered", "yes")?;
//!         Ok(Status::Continue)
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), milter_server::Error> {
//!     let listener = Listener::bind("unix:/run/addheader.sock").await?;
//!     Server::new(|| AddHeader)
//!         .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
//!         .await
//! }
//! ```
//!
//! # What the server does for you
//!
//! * **Negotiation**: stages not in [`Options::stages`] are negotiated away
//!   (`SMFIP_NO*`), [`Options::no_reply`] stages get `SMFIP_NR_*` (faked
//!   with CONTINUE for MTAs that lack them), the reply version is
//!   `min(MTA, 6)`, MDS 256K/1M is used when offered and wanted, macro lists
//!   are requested per stage. Old MTAs (protocol 2) work.
//! * **Replies**: exactly one per reply-bearing command, none for MACRO,
//!   ABORT, QUIT and no-reply stages; all packets of a turn leave in one
//!   write (no Nagle stall); `TCP_NODELAY` and re-armed `TCP_QUICKACK` on
//!   TCP (no delayed-ACK stall). Unix connections wait for read readiness
//!   only, so the MTA reading a reply does not wake the server.
//! * **Message state**: [`Milter::Message`] is created when a message starts
//!   and dropped at its end, at ABORT, QUIT_NC, or when a decision ends it.
//! * **Failures**: a callback that returns `Err`, panics, or runs past
//!   [`Config::callback_timeout`] answers with [`Config::failure_policy`]
//!   (tempfail by default), logged once. A malformed or out-of-order packet
//!   closes only its own session, with a logged reason.
//! * **Limits**: [`Config::max_connections`], idle and write timeouts, a
//!   1 MiB inbound packet limit (Postfix sends headers over 64 KiB).
//! * **Shutdown**: [`Server::serve`] stops accepting when its shutdown
//!   future completes, closes idle sessions, lets messages in flight finish,
//!   cuts the rest after [`Config::drain_timeout`], and removes the socket.
//!
//! The library never installs a tracing subscriber or a signal handler.
//!
//! # Differences from libmilter, on purpose
//!
//! * Stages are declared in [`Options::stages`] rather than detected from
//!   NULL callback pointers (Rust has no way to tell a default method from
//!   an override).
//! * Custom replies are part of the decision ([`Status::Reply`]) and cannot
//!   leak into a later decision of the connection.
//! * An end-of-message packet carrying body data gets one reply, not two.
//! * A flag an old MTA does not know is dropped (and the stage answered by
//!   the server) instead of ending the session.
#![forbid(unsafe_code)]

mod bufpool;
mod chain;
mod config;
mod conn;
mod context;
mod error;
mod listener;
mod milter;
mod server;
mod shutdown;

pub use async_trait::async_trait;
pub use chain::{Chain, ChainMessage};
pub use config::{Config, FailurePolicy, OverLimit};
pub use conn::{Plain, Transport, serve_connection};
pub use context::{ActionError, Context, EomContext};
pub use error::{Error, SessionError};
pub use listener::{Listener, SocketOptions};
pub use milter::{BoxError, CallbackFuture, Milter, Options, Stages, Status};
pub use milter_io::UnixConnection;
pub use milter_proto;

/// The workspace README's examples, compiled as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use server::Server;
