//! Listening sockets from libmilter/Postfix specifications.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use milter_io::UnixConnection;
use milter_proto::SocketSpec;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::error::Error;

/// How a listening socket is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SocketOptions {
    /// Permissions of a unix socket. Default `0o660`: Postfix's smtpd and
    /// cleanup connect as user `postfix`, so make that user the owner or
    /// put it in the group.
    pub mode: u32,
    /// Owner of a unix socket (name or numeric id).
    pub owner: Option<String>,
    /// Group of a unix socket (name or numeric id).
    pub group: Option<String>,
    /// Listen backlog. Default 1024.
    pub backlog: u32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            mode: 0o660,
            owner: None,
            group: None,
            backlog: 1024,
        }
    }
}

impl SocketOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the unix socket mode.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the unix socket owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets the unix socket group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
}

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A unix socket, removed again at shutdown.
    Unix {
        /// The socket, registered with the runtime for read readiness.
        /// Connections accepted from it are registered for read readiness
        /// only until a write would block: on a unix socket, write
        /// readiness is signalled every time the MTA reads a reply.
        listener: AsyncFd<std::os::unix::net::UnixListener>,
        /// Its path.
        path: PathBuf,
        /// Device and inode, to remove only our own socket.
        id: (u64, u64),
    },
    /// A TCP socket.
    Tcp(TcpListener),
}

/// An accepted connection.
#[derive(Debug)]
pub(crate) enum Accepted {
    Unix(UnixConnection),
    Tcp(TcpStream, SocketAddr),
}

impl Listener {
    /// Binds a specification (`unix:/path`, `inet:PORT@HOST`, ...) with default options.
    pub async fn bind(spec: &str) -> Result<Self, Error> {
        Self::bind_with(&SocketSpec::parse(spec)?, &SocketOptions::default()).await
    }

    /// Binds a parsed specification.
    pub async fn bind_with(spec: &SocketSpec, options: &SocketOptions) -> Result<Self, Error> {
        let bind_err = |source| Error::Bind {
            spec: spec.to_string(),
            source,
        };
        match spec {
            SocketSpec::Unix(path) => bind_unix(path, options).map_err(|e| match e {
                BindUnix::Io(source) => bind_err(source),
                BindUnix::Other(e) => e,
            }),
            SocketSpec::Inet { host, port, ipv6 } => {
                let addrs: Vec<SocketAddr> = match host {
                    None if *ipv6 => {
                        vec![SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, *port))]
                    }
                    None => vec![SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, *port))],
                    Some(h) => tokio::net::lookup_host((h.as_str(), *port))
                        .await
                        .map_err(bind_err)?
                        .filter(|a| a.is_ipv6() == *ipv6)
                        .collect(),
                };
                let addr = addrs.first().copied().ok_or_else(|| {
                    bind_err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the host has no address of that family",
                    ))
                })?;
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(bind_err)?;
                socket.set_reuseaddr(true).map_err(bind_err)?;
                socket.bind(addr).map_err(bind_err)?;
                Ok(Listener::Tcp(
                    socket.listen(options.backlog).map_err(bind_err)?,
                ))
            }
        }
    }

    /// Where the socket listens, as a specification.
    pub fn local_spec(&self) -> String {
        match self {
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(SocketAddr::V4(a)) => format!("inet:{}@{}", a.port(), a.ip()),
                Ok(SocketAddr::V6(a)) => format!("inet6:{}@{}", a.port(), a.ip()),
                Err(_) => "inet:?".to_string(),
            },
        }
    }

    /// The TCP address, for a TCP listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    pub(crate) async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Unix { listener, .. } => {
                Ok(Accepted::Unix(milter_io::accept(listener).await?))
            }
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok(Accepted::Tcp(stream, peer))
            }
        }
    }

    /// Removes the unix socket file if it is still the one this listener
    /// created. Called by the server at shutdown.
    pub fn remove_socket_file(&self) {
        if let Listener::Unix { path, id, .. } = self
            && let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.file_type().is_socket()
            && (meta.dev(), meta.ino()) == *id
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum BindUnix {
    Io(io::Error),
    Other(Error),
}

impl From<io::Error> for BindUnix {
    fn from(e: io::Error) -> Self {
        BindUnix::Io(e)
    }
}

fn bind_unix(path: &Path, options: &SocketOptions) -> Result<Listener, BindUnix> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindUnix::Other(Error::NotASocket(
                path.display().to_string(),
            )));
        }
        Ok(_) => {
            // A socket file: stale if nobody answers on it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindUnix::Io(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                )));
            }
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    let listener = milter_io::register_listener(socket.into())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(options.mode))?;
    let uid = options
        .owner
        .as_deref()
        .map(|o| lookup_user(o).map_err(BindUnix::Other))
        .transpose()?;
    let gid = options
        .group
        .as_deref()
        .map(|g| lookup_group(g).map_err(BindUnix::Other))
        .transpose()?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)?;
    }
    let meta = std::fs::symlink_metadata(path)?;
    Ok(Listener::Unix {
        listener,
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    })
}

/// A user name or numeric id.
pub(crate) fn lookup_user(name: &str) -> Result<u32, Error> {
    if let Ok(uid) = name.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        _ => Err(Error::UnknownOwner {
            kind: "user",
            name: name.to_string(),
        }),
    }
}

/// A group name or numeric id.
pub(crate) fn lookup_group(name: &str) -> Result<u32, Error> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(Error::UnknownOwner {
            kind: "group",
            name: name.to_string(),
        }),
    }
}
