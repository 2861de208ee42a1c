//! The daemon: configuration with command-line overrides, the store, the milter
//! listener, the admin listener, privilege drop, reload, expiry and shutdown.
//!
//! [`run`] is driven by a channel of [`Control`] messages; the binary turns signals
//! into them (SIGHUP → [`Control::Reload`], SIGTERM/SIGINT → [`Control::Shutdown`]), so
//! this module installs no signal handler and no tracing subscriber.
//!
//! Start-up order: read and check the configuration, open the store, bind the milter
//! socket (mode and owner applied), bind the admin listener, write the pidfile, then drop
//! privileges (`--user`/`--group`), so the daemon can bind `/run/...` or a low port
//! and open a root-owned state directory and still run unprivileged.
//!
//! - **Reload** re-reads the configuration file and applies the command-line overrides
//!   again. A configuration with errors is refused (each error logged as
//!   `file:line:column: message`) and the running one stays in force. Timings, reply,
//!   header and whitelists apply at once; socket, store and admin settings need a
//!   restart (logged when they changed).
//! - **Whitelist files** are checked for changes every `[whitelist] file_check_interval`
//!   and rebuilt atomically when one changed.
//! - **Expiry** runs every `[store] expire_interval`: steps of `expire_batch` records
//!   until nothing due is left (bounded per run).
//! - **Shutdown**: stop accepting, let messages in flight finish, commit buffered store
//!   writes, remove the pidfile. A second shutdown request exits at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use milter_proto::SocketSpec;
use milter_server::{FailurePolicy, Listener, Server, SocketOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::DaemonArgs;
use crate::clock::SystemClock;
use crate::config::{
    Config, ConfigError, DEFAULT_STORE, FailMode, check_config as read_config, is_loopback,
    is_redis_url, resolve,
};
use crate::engine::Engine;
use crate::filter::Greylist;
use crate::store::{RedbStore, RedisOptions, RedisStore, Store};
use crate::whitelist::WhitelistSet;

/// What the binary asks the running daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the configuration and whitelists (SIGHUP).
    Reload,
    /// Drain and stop (SIGTERM, SIGINT); a second one stops at once.
    Shutdown,
}

/// The configuration in force and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration with the command-line overrides applied.
    pub config: Config,
    /// The configuration file, if one was given.
    pub file: Option<PathBuf>,
}

impl Loaded {
    /// The path relative files are resolved against (the configuration file, or a
    /// virtual file in the working directory).
    pub fn base(&self) -> &Path {
        self.file
            .as_deref()
            .unwrap_or_else(|| Path::new("./greylist.toml"))
    }
}

fn flag_error(flag: &str, message: String) -> ConfigError {
    ConfigError {
        file: PathBuf::from(flag),
        line: 0,
        column: 0,
        message,
    }
}

/// Reads the configuration (`--config`, or the defaults) and applies the command-line
/// overrides. Returns every error found.
pub fn load(args: &DaemonArgs) -> Result<Loaded, Vec<ConfigError>> {
    load_file(args, args.config.as_deref())
}

fn load_file(args: &DaemonArgs, file: Option<&Path>) -> Result<Loaded, Vec<ConfigError>> {
    let mut config = match file {
        Some(f) => read_config(f)?,
        None => Config::default(),
    };
    let mut errors = Vec::new();
    if let Some(d) = args.delay {
        config.greylist.delay = d;
        if d >= config.greylist.retry_window {
            errors.push(flag_error(
                "--delay",
                format!(
                    "delay ({}s) must be shorter than retry_window ({}s)",
                    d.0, config.greylist.retry_window.0
                ),
            ));
        }
    }
    if args.dry_run {
        config.greylist.dry_run = true;
    }
    if let Some(l) = &args.listen {
        config.milter.socket.clone_from(l);
    }
    if let Err(e) = SocketSpec::parse(&config.milter.socket) {
        errors.push(flag_error(
            if args.listen.is_some() {
                "--listen"
            } else {
                "[milter] socket"
            },
            format!("invalid socket {:?}: {e}", config.milter.socket),
        ));
    }
    if let Some(m) = args.socket_mode {
        config.milter.socket_mode = format!("{m:o}");
    }
    if let Some(o) = &args.socket_owner {
        config.milter.socket_owner = Some(o.clone());
    }
    if let Some(a) = args.admin {
        config.admin.listen = Some(a);
    }
    if args.admin_allow_remote {
        config.admin.allow_non_loopback = true;
    }
    if let Some(a) = args.admin
        && !is_loopback(a.ip())
        && !config.admin.allow_non_loopback
    {
        errors.push(flag_error(
            "--admin",
            format!(
                "admin listener {a} must be on a loopback address (or pass --admin-allow-remote)"
            ),
        ));
    }
    let loaded = Loaded {
        config,
        file: file.map(Path::to_path_buf),
    };
    // Whitelist files must be readable and their entries valid.
    if let Err(e) = WhitelistSet::build(&loaded.config, loaded.base()) {
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// `--check-config`: checks the file given to it (or `--config`), printing every error
/// to stderr as `file:line:column: message`. Returns whether the file is valid.
pub fn check_config(args: &DaemonArgs) -> bool {
    let file = match &args.check_config {
        Some(Some(f)) => Some(f.clone()),
        _ => args.config.clone(),
    };
    let Some(file) = file else {
        eprintln!(
            "greylist-filter: --check-config needs a file: --check-config FILE or --config FILE"
        );
        return false;
    };
    match load_file(args, Some(&file)) {
        Ok(_) => {
            println!("{}: configuration OK", file.display());
            true
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error{}",
                file.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            false
        }
    }
}

/// Every error on its own line, for an `anyhow` message.
fn joined(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A redb file.
    File(PathBuf),
    /// A Redis server URL.
    Redis(String),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::File(p) => write!(f, "{}", p.display()),
            StoreLocation::Redis(u) => f.write_str(u),
        }
    }
}

/// The store: `--store` (a file, or a `redis://` URL), else `[store] redis`, else
/// `[store] path` (relative to the configuration file), else `greylist.redb` in the
/// working directory.
pub fn store_location(args: &DaemonArgs, loaded: &Loaded) -> StoreLocation {
    if let Some(s) = &args.store {
        if let Some(u) = s.to_str().filter(|u| is_redis_url(u)) {
            return StoreLocation::Redis(u.to_owned());
        }
        return StoreLocation::File(s.clone());
    }
    if let Some(u) = &loaded.config.store.redis {
        return StoreLocation::Redis(u.clone());
    }
    StoreLocation::File(match &loaded.config.store.path {
        Some(p) => resolve(loaded.base(), p),
        None => PathBuf::from(DEFAULT_STORE),
    })
}

/// Opens the store at `loc` with the `[store]` settings of `config`.
pub fn open_store(loc: &StoreLocation, config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match loc {
        StoreLocation::File(path) => {
            let st = tokio::task::block_in_place(|| RedbStore::open(path))
                .with_context(|| format!("opening the store {}", path.display()))?;
            Arc::new(st)
        }
        StoreLocation::Redis(url) => {
            let opts = RedisOptions {
                prefix: config.store.redis_prefix.clone(),
                timeout: Duration::from_millis(config.store.redis_timeout_ms.max(1)),
                ..RedisOptions::default()
            };
            Arc::new(
                RedisStore::open(url, opts)
                    .with_context(|| format!("opening the Redis store {url}"))?,
            )
        }
    })
}

fn socket_options(config: &Config) -> SocketOptions {
    let mut o = SocketOptions::new().mode(config.milter.mode().unwrap_or(0o660));
    if let Some(owner) = &config.milter.socket_owner {
        match owner.split_once(':') {
            Some((u, g)) => {
                if !u.is_empty() {
                    o = o.owner(u);
                }
                if !g.is_empty() {
                    o = o.group(g);
                }
            }
            None => o = o.owner(owner.as_str()),
        }
    }
    o
}

/// Switches to `user` (and `group`, default the user's primary group). Needs root.
fn drop_privileges(user: Option<&str>, group: Option<&str>) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    let u = match user {
        None => None,
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id)),
                Err(_) => User::from_name(name),
            };
            Some(
                found
                    .with_context(|| format!("looking up user {name:?}"))?
                    .ok_or_else(|| anyhow!("unknown user {name:?}"))?,
            )
        }
    };
    let gid = match group {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(id) => Group::from_gid(Gid::from_raw(id)),
                Err(_) => Group::from_name(name),
            };
            found
                .with_context(|| format!("looking up group {name:?}"))?
                .ok_or_else(|| anyhow!("unknown group {name:?}"))?
                .gid
        }
        None => u.as_ref().map_or_else(Gid::current, |u| u.gid),
    };
    if !Uid::effective().is_root() {
        bail!("--user/--group need the daemon to start as root");
    }
    setgroups(&[gid]).context("setgroups")?;
    setgid(gid).context("setgid")?;
    if let Some(u) = &u {
        setuid(u.uid).context("setuid")?;
    }
    info!(
        user = user.unwrap_or("-"),
        gid = gid.as_raw(),
        "privileges dropped"
    );
    Ok(())
}

fn lock(m: &Mutex<Loaded>) -> std::sync::MutexGuard<'_, Loaded> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Re-reads the configuration; applies it, or refuses it and keeps the old one.
fn reload(args: &DaemonArgs, state: &Mutex<Loaded>, engine: &Engine) -> bool {
    let result = load(args).and_then(|new| {
        engine.reload(&new.config, new.base())?;
        Ok(new)
    });
    match result {
        Ok(new) => {
            let mut cur = lock(state);
            for (what, changed) in [
                ("[milter]", cur.config.milter != new.config.milter),
                (
                    "[store]",
                    cur.config.store.path != new.config.store.path
                        || cur.config.store.redis != new.config.store.redis
                        || cur.config.store.redis_prefix != new.config.store.redis_prefix
                        || cur.config.store.redis_timeout_ms != new.config.store.redis_timeout_ms,
                ),
                ("[admin]", cur.config.admin != new.config.admin),
                ("[identity]", cur.config.identity != new.config.identity),
                ("[dns]", cur.config.dns != new.config.dns),
            ] {
                if changed {
                    warn!(
                        section = what,
                        "changed in the configuration; takes effect after a restart"
                    );
                }
            }
            let file = new
                .file
                .as_deref()
                .map_or_else(|| "-".to_owned(), |f| f.display().to_string());
            *cur = new;
            drop(cur);
            engine.metrics().record_reload(true);
            info!(file = %file, "configuration reloaded");
            true
        }
        Err(errors) => {
            for e in &errors {
                error!("{e}");
            }
            engine.metrics().record_reload(false);
            error!(
                errors = errors.len(),
                "configuration reload refused; the previous configuration stays in force"
            );
            false
        }
    }
}

async fn expiry_loop(engine: Arc<Engine>, state: Arc<Mutex<Loaded>>, token: CancellationToken) {
    loop {
        let every = Duration::from_secs(lock(&state).config.store.expire_interval.0.max(1));
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let (mut tuples, mut hosts) = (0, 0);
        // A backlog is worked off in bounded steps, yielding between them.
        for _ in 0..1000 {
            match engine.expire_step().await {
                Ok(r) => {
                    tuples += r.tuples;
                    hosts += r.hosts;
                    if !r.more {
                        break;
                    }
                }
                Err(e) => {
                    engine.metrics().record_store_error();
                    warn!(error = %e, "expiry step failed");
                    break;
                }
            }
            if token.is_cancelled() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if tuples + hosts > 0 {
            info!(tuples, hosts, "expired records deleted");
        }
    }
}

async fn watch_whitelist_files(
    engine: Arc<Engine>,
    state: Arc<Mutex<Loaded>>,
    token: CancellationToken,
) {
    let mut last_error = String::new();
    loop {
        let every = Duration::from_secs(lock(&state).config.whitelist.file_check_interval.0.max(1));
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if !engine.whitelist().files_changed() {
            continue;
        }
        let cur = lock(&state).clone();
        match engine.whitelist().reload(&cur.config, cur.base()) {
            Ok(()) => {
                last_error.clear();
                engine.metrics().record_reload(true);
                info!("whitelist files reloaded");
            }
            Err(errors) => {
                // Logged once per distinct failure, not at every check.
                let now = joined(&errors);
                if now != last_error {
                    for e in &errors {
                        error!("{e}");
                    }
                    engine.metrics().record_reload(false);
                    error!("whitelist reload refused; the previous whitelists stay in force");
                    last_error = now;
                }
            }
        }
    }
}

/// Runs the daemon until a [`Control::Shutdown`] (or the channel closes).
pub async fn run(
    args: DaemonArgs,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> anyhow::Result<()> {
    let loaded = load(&args).map_err(|e| anyhow!("configuration errors:\n{}", joined(&e)))?;
    let path = store_location(&args, &loaded);
    let store = open_store(&path, &loaded.config)?;
    if let StoreLocation::Redis(url) = &path
        && let Err(e) = store.stats().await
    {
        warn!(store = %url, error = %e, "Redis is not reachable yet; failing open until it is");
    }
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    let engine = Engine::new(
        &loaded.config,
        loaded.base(),
        Arc::clone(&store),
        Arc::new(SystemClock),
        hostname,
    )
    .map_err(|e| anyhow!("configuration errors:\n{}", joined(&e)))?;
    let engine = Arc::new(engine);

    let spec = SocketSpec::parse(&loaded.config.milter.socket)
        .with_context(|| format!("socket {:?}", loaded.config.milter.socket))?;
    let listener = Listener::bind_with(&spec, &socket_options(&loaded.config))
        .await
        .with_context(|| format!("binding the milter socket {spec}"))?;
    let milter_spec = listener.local_spec();

    let admin = match loaded.config.admin.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin listener {addr}"))?,
        ),
        None => None,
    };
    let admin_addr: Option<SocketAddr> = admin.as_ref().and_then(|l| l.local_addr().ok());

    if let Some(p) = &args.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the pidfile {}", p.display()))?;
    }
    drop_privileges(args.user.as_deref(), args.group.as_deref())?;

    let server_config = milter_server::Config::new()
        .callback_timeout(Duration::from_secs(20))
        .drain_timeout(Duration::from_secs(15))
        .max_connections(loaded.config.milter.max_connections)
        .over_limit(loaded.config.milter.over_limit.into())
        .failure_policy(match loaded.config.greylist.fail_open {
            FailMode::Pass => FailurePolicy::Continue,
            FailMode::Tempfail => FailurePolicy::Tempfail,
        });
    let p = loaded.config.params();
    info!(
        milter = %milter_spec,
        admin = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        store = %path,
        config = %loaded.file.as_deref().map_or_else(|| "built-in defaults".to_owned(), |f| f.display().to_string()),
        delay = p.delay,
        retry_window = p.retry_window,
        auto_whitelist = p.auto_whitelist,
        dry_run = loaded.config.greylist.dry_run,
        "greylist-filter ready"
    );

    let state = Arc::new(Mutex::new(loaded));
    let token = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(expiry_loop(
        Arc::clone(&engine),
        Arc::clone(&state),
        token.clone(),
    ));
    tasks.spawn(watch_whitelist_files(
        Arc::clone(&engine),
        Arc::clone(&state),
        token.clone(),
    ));
    if let Some(l) = admin {
        let e = Arc::clone(&engine);
        let t = token.clone();
        tasks.spawn(async move {
            if let Err(err) = crate::admin::serve(l, e, t.cancelled_owned()).await {
                error!(error = %err, "admin listener failed");
            }
        });
    }

    let factory_engine = Arc::clone(&engine);
    let server = Server::new(move || Greylist::new(Arc::clone(&factory_engine)))
        .config(server_config)
        .serve(listener, token.clone().cancelled_owned());
    tokio::pin!(server);
    let mut draining = false;
    let mut open = true;
    let served = loop {
        tokio::select! {
            r = &mut server => break r,
            c = control.recv(), if open => match (c, draining) {
                (Some(Control::Reload), _) => {
                    reload(&args, &state, &engine);
                }
                (Some(Control::Shutdown), false) | (None, false) => {
                    info!("shutting down: draining sessions");
                    draining = true;
                    open = c.is_some();
                    token.cancel();
                }
                (Some(Control::Shutdown), true) => {
                    warn!("second shutdown request: stopping now");
                    break Ok(());
                }
                // The sender is gone; wait for the drain.
                (None, true) => open = false,
            },
        }
    };
    token.cancel();
    while tasks.join_next().await.is_some() {}
    let flushed = store.flush().await;
    if let Some(p) = &args.pidfile
        && let Err(e) = std::fs::remove_file(p)
    {
        warn!(error = %e, pidfile = %p.display(), "cannot remove the pidfile");
    }
    served.context("milter server")?;
    flushed.context("committing the store")?;
    info!("greylist-filter stopped");
    Ok(())
}
