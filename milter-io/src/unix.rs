//! [`UnixConnection`], and accepting from a listener registered for read
//! readiness.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The most one read asks for.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Where reads land before they are copied to the caller's buffer.
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
fn register<T>(socket: T, interest: Interest) -> io::Result<AsyncFd<T>>
where
    T: AsRawFd + Into<OwnedFd>,
{
    AsyncFd::with_interest(socket, interest)
}

/// Makes `listener` non-blocking and registers it with the current tokio
/// runtime, for [`accept`].
///
/// # Panics
///
/// Outside a tokio runtime with I/O enabled, as tokio's own listeners.
pub fn register_listener(listener: UnixListener) -> io::Result<AsyncFd<UnixListener>> {
    listener.set_nonblocking(true)?;
    register(listener, Interest::READABLE)
}

/// Accepts one connection from a listener made by [`register_listener`].
/// The connection is non-blocking and close-on-exec from the start (one
/// `accept4` call on Linux and FreeBSD).
pub async fn accept(listener: &AsyncFd<UnixListener>) -> io::Result<UnixConnection> {
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
/// write would block (see the [crate documentation](crate)).
///
/// Reads and writes go through `AsyncRead` and `AsyncWrite`; flushing is a
/// no-op (nothing is buffered) and shutting down shuts the write half.
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

    /// Connects to the unix socket at `path`.
    ///
    /// A listener whose queue of unaccepted connections is full refuses a
    /// non-blocking connect for the moment (`EAGAIN`) where a blocking
    /// connect would wait; this waits too, retrying after 1 ms and then
    /// after intervals doubling up to 50 ms. Bound it with a timeout.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O and time enabled.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let address = socket2::SockAddr::unix(path)?;
        let mut pause = Duration::from_millis(1);
        loop {
            let socket = nonblocking_socket()?;
            match socket.connect(&address) {
                Ok(()) => return Self::registered(socket.into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the connection is readable, without reading: a caller
    /// can then hold no read buffer while the peer is silent.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_read_ready(cx).map_ok(drop)
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

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn nonblocking_socket() -> io::Result<socket2::Socket> {
    // One system call for the socket and both of its flags.
    socket2::Socket::new(
        socket2::Domain::UNIX,
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn nonblocking_socket() -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
