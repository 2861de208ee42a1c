//! What every example milter shares: the `--listen` options, logging, and
//! running a server until SIGTERM or SIGINT.
//!
//! A milter binary of this project runs in the foreground, listens where
//! `--listen` says (a libmilter socket specification), and on SIGTERM stops
//! accepting, lets messages in flight finish, removes its unix socket and
//! exits 0. Copy [`serve`] into your own milter as it is.

use std::future::Future;

use milter_server::{Listener, Milter, Server, SocketOptions};

/// Where and how to listen: the options every example takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Socket to listen on: `unix:/path`, `inet:PORT@HOST`, `inet6:PORT@HOST`
    /// or Postfix's `inet:HOST:PORT`.
    #[arg(long, value_name = "SPEC")]
    pub listen: String,
    /// Permissions of a unix socket, in octal. Postfix connects as user
    /// `postfix`: use 0666, or 0660 with --socket-group postfix.
    #[arg(long, value_name = "MODE", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Owner of a unix socket.
    #[arg(long, value_name = "USER")]
    pub socket_owner: Option<String>,
    /// Group of a unix socket.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Most connections served at once; more wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    /// Close a connection after this many seconds without a packet
    /// (libmilter's default is 7210).
    #[arg(long, value_name = "SECONDS", default_value_t = 7210)]
    pub idle_timeout: u64,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 660"))
}

/// Logs to stderr; `RUST_LOG` selects what (default `info`): a level and
/// per-target levels, e.g. `info,milter_server=debug`.
///
/// The filter is `Targets`, not `EnvFilter`: the same level and target
/// syntax without span-field directives, and without `EnvFilter`'s
/// per-span bookkeeping, a lock taken on every span entry and exit, that
/// is on every poll of every session. At `info` that bookkeeping was a
/// tenth of accept-all's CPU (benches/load.md).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec
            .parse::<tracing_subscriber::filter::Targets>()
            .unwrap_or_else(|e| {
                eprintln!("RUST_LOG={spec:?} is not understood ({e}); logging at info");
                info_targets()
            }),
        _ => info_targets(),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

fn info_targets() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handling the only way out is being killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Binds `args.listen` and serves one `factory()` filter per connection
/// until SIGTERM or SIGINT, then drains and returns.
pub async fn serve<F, M>(args: &ListenArgs, factory: F) -> anyhow::Result<()>
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter + 'static,
{
    serve_until(args, factory, shutdown_signal()).await
}

/// As [`serve`], until `shutdown` completes.
pub async fn serve_until<F, M>(
    args: &ListenArgs,
    factory: F,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter + 'static,
{
    let spec = milter_proto::SocketSpec::parse(&args.listen)?;
    let mut options = SocketOptions::new().mode(args.socket_mode);
    options.owner = args.socket_owner.clone();
    options.group = args.socket_group.clone();
    let listener = Listener::bind_with(&spec, &options).await?;
    let config = milter_server::Config::new()
        .max_connections(args.max_connections)
        .idle_timeout(std::time::Duration::from_secs(args.idle_timeout));
    Server::new(factory)
        .config(config)
        .serve(listener, shutdown)
        .await?;
    Ok(())
}
