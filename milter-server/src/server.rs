//! The accept loop: connection limit, one task per connection, graceful
//! shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{Config, OverLimit};
use crate::conn::{next_id, run};
use crate::error::Error;
use crate::listener::{Accepted, Listener};
use crate::milter::Milter;
use crate::shutdown::Shutdown;

/// How many connections the accept loop may take in a row without polling
/// the shutdown future.
const SHUTDOWN_CHECK_EVERY: u32 = 64;

/// A milter server: a factory that makes one filter per connection, and
/// its [`Config`] (`smfi_register` + `smfi_main`).
///
/// ```no_run
/// use milter_server::{Listener, Server, Milter, async_trait};
///
/// struct AcceptAll;
/// #[async_trait]
/// impl Milter for AcceptAll { type Message = (); }
///
/// # async fn run() -> Result<(), milter_server::Error> {
/// let listener = Listener::bind("inet:7357@127.0.0.1").await?;
/// Server::new(|| AcceptAll)
///     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
#[doc(alias = "smfi_register")]
#[doc(alias = "smfi_main")]
pub struct Server<F> {
    factory: F,
    config: Config,
}

impl<F> std::fmt::Debug for Server<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F, M> Server<F>
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter + 'static,
{
    /// A server making filters with `factory`, with the default [`Config`].
    pub fn new(factory: F) -> Self {
        Self {
            factory,
            config: Config::default(),
        }
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Serves until `shutdown` completes, then drains: stops accepting,
    /// closes idle sessions, lets sessions finish the message in flight,
    /// cuts what is left after [`Config::drain_timeout`], and removes the
    /// unix socket file.
    pub async fn serve(
        self,
        listener: Listener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let config = Arc::new(self.config);
        let factory = self.factory;
        let tracker = TaskTracker::new();
        let shutdown_sessions = Arc::new(Shutdown::new());
        let limit = Arc::new(Semaphore::new(config.max_connections));
        info!(socket = %listener.local_spec(), max_connections = config.max_connections, "milter server listening");
        tokio::pin!(shutdown);
        // The permit and the connection are polled before `shutdown`, which
        // may be costly to poll (signal streams), so `shutdown` is polled
        // when they are not ready, and every `SHUTDOWN_CHECK_EVERY`
        // connections, so that a flood of them does not hide it.
        let mut unchecked = 0u32;
        loop {
            unchecked += 1;
            if unchecked == SHUTDOWN_CHECK_EVERY {
                unchecked = 0;
                if futures::poll!(shutdown.as_mut()).is_ready() {
                    break;
                }
            }
            let waited = match config.over_limit {
                OverLimit::Wait => tokio::select! {
                    biased;
                    p = limit.clone().acquire_owned() => p.ok(),
                    () = &mut shutdown => break,
                },
                OverLimit::Refuse => None,
            };
            let accepted = tokio::select! {
                biased;
                r = listener.accept() => r,
                () = &mut shutdown => break,
            };
            let accepted = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            };
            let permit = match waited {
                Some(p) => p,
                None => match limit.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        warn!(
                            max_connections = config.max_connections,
                            "refusing a connection: the connection limit is reached"
                        );
                        drop(accepted);
                        continue;
                    }
                },
            };
            let id = next_id();
            let milter = factory();
            let config = Arc::clone(&config);
            let sessions = Arc::clone(&shutdown_sessions);
            match accepted {
                Accepted::Unix(stream) => {
                    let span = info_span!("milter", conn = id);
                    let session = run(stream, milter, config, id, sessions, permit);
                    spawn_session(&tracker, session, span);
                }
                Accepted::Tcp(stream, peer) => {
                    let _ = stream.set_nodelay(true);
                    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
                    let span = info_span!("milter", conn = id, %peer);
                    let session = run(stream, milter, config, id, sessions, permit);
                    spawn_session(&tracker, session, span);
                }
            }
            debug!(conn = id, "accepted");
        }
        info!(
            sessions = tracker.len(),
            "shutting down: no new connections, draining sessions"
        );
        listener.remove_socket_file();
        drop(listener);
        shutdown_sessions.start_draining();
        tracker.close();
        if tokio::time::timeout(config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                sessions = tracker.len(),
                "drain deadline passed; cutting the remaining sessions"
            );
            shutdown_sessions.cut_sessions();
            tracker.wait().await;
        }
        info!("milter server stopped");
        Ok(())
    }
}

/// Spawns a session's task, in its connection span unless that span is
/// disabled: a disabled span would still take room in every session's
/// task (40 bytes) for nothing.
fn spawn_session<F>(tracker: &TaskTracker, session: F, span: tracing::Span)
where
    F: Future<Output = Result<(), crate::error::SessionError>> + Send + 'static,
{
    if span.is_disabled() {
        tracker.spawn(session.map(drop));
    } else {
        tracker.spawn(session.map(drop).instrument(span));
    }
}
