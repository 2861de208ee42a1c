//! Unix socket connections registered for read readiness only.
//!
//! tokio's `UnixStream` registers every socket for read *and* write
//! readiness. On a unix socket the kernel signals write readiness each time
//! the peer reads what we wrote, so every reply the MTA reads wakes the
//! server once more. Under a real MTA, which does other work between a
//! reply and its next command, that is an extra wake-up and context switch
//! per round trip (Postfix: 20.5 voluntary context switches per message
//! against 12.3 for a server that waits for reads only). A milter writes a
//! few hundred bytes per turn into a socket buffer that is all but empty,
//! so it writes first and asks for write readiness only when a write would
//! block; from then on the connection is registered for both.
//!
//! TCP needs none of this: there the kernel signals write readiness only
//! after a write found the send buffer full.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::conn::Transport;

/// The most one read asks for.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Where reads land before they are copied to the session's buffer.
    /// Safe code cannot read into the uninitialised spare room of that
    /// buffer, and zeroing it before every read would cost more than
    /// copying what arrived (a few hundred bytes per packet, typically).
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Registers a socket with the runtime for `interest`.
///
/// tokio 1.54 deprecated `AsyncFd::with_interest` for the unsafe
/// `register_with_interest` because an arbitrary `T` might close or swap
/// its descriptor while registered (tokio-rs/tokio#8587). A type that
/// converts into an `OwnedFd` owns its descriptor for its whole life, and
/// the `AsyncFd` owns it, so the condition holds without `unsafe`.
#[allow(deprecated)]
pub(crate) fn register<T>(socket: T, interest: Interest) -> io::Result<AsyncFd<T>>
where
    T: AsRawFd + Into<OwnedFd>,
{
    AsyncFd::with_interest(socket, interest)
}

/// Accepts one connection from a listener registered with the runtime.
pub(crate) async fn accept(listener: &AsyncFd<UnixListener>) -> io::Result<UnixConnection> {
    let stream = listener
        .async_io(Interest::READABLE, accept_nonblocking)
        .await?;
    UnixConnection::registered(stream)
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn accept_nonblocking(listener: &UnixListener) -> io::Result<UnixStream> {
    // One system call for the connection and both of its flags.
    let (socket, _) =
        socket2::SockRef::from(listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    Ok(socket.into())
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn accept_nonblocking(listener: &UnixListener) -> io::Result<UnixStream> {
    let (stream, _) = listener.accept()?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// A unix socket connection that waits for read readiness only, until a
/// write would block: the [`Transport`] [`crate::Server`] uses for unix
/// sockets, for people who own their accept loop.
///
/// With tokio's `UnixStream` every reply the MTA reads wakes the server
/// once more (write readiness); under Postfix that is most of a message's
/// extra wake-ups.
///
/// ```no_run
/// # use milter_server::{Config, Milter, UnixConnection, async_trait, serve_connection};
/// # struct AcceptAll;
/// # #[async_trait]
/// # impl Milter for AcceptAll { type Message = (); }
/// # async fn run(listener: std::os::unix::net::UnixListener) -> std::io::Result<()> {
/// let (stream, _) = listener.accept()?;
/// let conn = UnixConnection::new(stream)?;
/// tokio::spawn(async move { serve_connection(conn, AcceptAll, &Config::default()).await });
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct UnixConnection {
    /// `None` only if registering for write readiness failed.
    io: Option<AsyncFd<UnixStream>>,
    /// Registered for write readiness as well.
    writable: bool,
}

impl UnixConnection {
    /// Makes `stream` non-blocking and registers it with the current
    /// tokio runtime for read readiness.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled, as tokio's own streams.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Self::registered(stream)
    }

    /// Registers a stream that is already non-blocking.
    fn registered(stream: UnixStream) -> io::Result<Self> {
        Ok(Self {
            io: Some(register(stream, Interest::READABLE)?),
            writable: false,
        })
    }

    fn io(&self) -> io::Result<&AsyncFd<UnixStream>> {
        self.io.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection could not be registered for writing",
            )
        })
    }

    /// Registers for write readiness too, for the rest of the connection.
    fn register_writable(&mut self) -> io::Result<()> {
        let stream = match self.io.take() {
            Some(io) => io.into_inner(),
            None => return Err(io::ErrorKind::NotConnected.into()),
        };
        self.io = Some(register(stream, Interest::READABLE | Interest::WRITABLE)?);
        self.writable = true;
        Ok(())
    }
}

impl AsyncRead for UnixConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining().min(SCRATCH);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let io = self.get_mut().io()?;
        loop {
            let mut guard = ready!(io.poll_read_ready(cx))?;
            let read = SCRATCH_BUF.with_borrow_mut(|scratch| {
                let dst = scratch.get_mut(..want).unwrap_or_default();
                let read = guard.try_io(|fd| Read::read(&mut fd.get_ref(), dst));
                if let Ok(Ok(n)) = read {
                    buf.put_slice(dst.get(..n).unwrap_or_default());
                }
                read
            });
            match read {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        // The socket is drained: wait for its next edge
                        // instead of reading again to see EAGAIN (what
                        // tokio's own streams do).
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for UnixConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.writable {
            match Write::write(&mut this.io()?.get_ref(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.register_writable()?,
                r => return Poll::Ready(r),
            }
        }
        let io = this.io()?;
        loop {
            let mut guard = ready!(io.poll_write_ready(cx))?;
            if let Ok(r) = guard.try_io(|fd| Write::write(&mut fd.get_ref(), buf)) {
                return Poll::Ready(r);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io()?.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

impl Transport for UnixConnection {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let io = self.io()?;
        io.poll_read_ready(cx).map_ok(drop)
    }
}
