//! Unix socket connections on tokio that wait for read readiness only:
//! the transport under `milter-server`'s unix listeners and
//! `milter-client`'s unix connections.
//!
//! A milter conversation is a string of round trips: one side writes a
//! command or a reply of a few hundred bytes, then waits to read the
//! other's answer. tokio's `UnixStream` registers every socket for read
//! *and* write readiness, and on a unix socket the kernel signals write
//! readiness each time the peer reads what was written. So every read by
//! the peer wakes the writer's runtime for nothing while it waits for the
//! answer. Under Postfix that was most of a filter's extra context switches
//! (20.5 voluntary switches per message against 12.3 for a server that
//! waits for reads only).
//!
//! [`UnixConnection`] registers for read readiness only and writes straight
//! to the socket. It asks for write readiness only when a write would block
//! (a full socket buffer: a large body or replacement), and stays
//! registered for both from then on.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use milter_io::{UnixConnection, accept, register_listener};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let listener = register_listener(std::os::unix::net::UnixListener::bind("/run/f.sock")?)?;
//! let mut mta = UnixConnection::connect("/run/f.sock").await?;
//! let mut filter = accept(&listener).await?;
//! mta.write_all(b"\0\0\0\x01Q").await?;
//! let mut quit = [0; 5];
//! filter.read_exact(&mut quit).await?;
//! # Ok(())
//! # }
//! ```
//!
//! TCP needs none of this: there the kernel signals write readiness only
//! after a write found the send buffer full, so tokio's `TcpStream` is used
//! as it is.
//!
//! This is a crate of its own because both sides use it, and the crate they
//! share, `milter-proto`, does no I/O by design.
#![forbid(unsafe_code)]

mod unix;

pub use unix::{UnixConnection, accept, register_listener};
