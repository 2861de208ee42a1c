//! The `greylist-filter` binary: a thin shell over the library's [`daemon`], [`admin`]
//! client and [`import`] functions. It installs the tracing subscriber and the signal
//! handlers; everything else is in the library.
//!
//! [`daemon`]: greylist_filter::daemon
//! [`admin`]: greylist_filter::admin
//! [`import`]: greylist_filter::import

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use greylist_filter::admin::{encode_query_value, request};
use greylist_filter::cli::{Cli, Command};
use greylist_filter::config::is_redis_url;
use greylist_filter::daemon::{self, Control, StoreLocation, open_store};
use greylist_filter::store::Store;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_none() && cli.daemon.check_config.is_some() {
        return if daemon::check_config(&cli.daemon) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("greylist-filter")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("greylist-filter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => run_daemon(cli.daemon).await,
            Some(c) => run_command(c).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("greylist-filter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` selects what (default `info`): a level and
/// per-target levels, e.g. `info,greylist::decision=warn`. `Targets` rather
/// than `EnvFilter`: the same syntax without span-field directives, and
/// without a lock on every span entry and exit (every poll of a session).
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let info = || Targets::new().with_default(tracing::Level::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!(
                "greylist-filter: RUST_LOG={spec:?} is not understood ({e}); logging at info"
            );
            info()
        }),
        _ => info(),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
}

async fn run_daemon(args: greylist_filter::cli::DaemonArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    // Handlers first: a SIGHUP arriving during start-up must not kill the process.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(c).is_err() {
                return;
            }
        }
    });
    daemon::run(args, rx).await?;
    Ok(ExitCode::SUCCESS)
}

async fn get_json(admin: &str, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = request(admin, method, path).await?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("admin endpoint {admin}: answer is not JSON: {body}"))?;
    if status != 200 {
        let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or(&body);
        bail!("admin endpoint {admin}: {status}: {msg}");
    }
    Ok(v)
}

fn s(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

async fn run_command(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Explain {
            admin,
            ip,
            from,
            rcpt,
            json,
        } => {
            let path = format!(
                "/explain?ip={}&from={}&rcpt={}",
                encode_query_value(&ip),
                encode_query_value(&from),
                encode_query_value(&rcpt)
            );
            let v = get_json(&admin, "GET", &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", s(&v, "explanation"));
                println!("decision:  {} ({})", s(&v, "decision"), s(&v, "reason"));
                if let Some(k) = v.get("key").filter(|k| !k.is_null()) {
                    println!(
                        "tuple:     {} | {} | {}",
                        s(k, "network"),
                        s(k, "sender"),
                        s(k, "recipient")
                    );
                }
                if let Some(r) = v.get("record").filter(|r| !r.is_null()) {
                    println!(
                        "record:    {}, first seen {}, attempts {}, passes {}, expires {}",
                        s(r, "state"),
                        s(r, "first_seen"),
                        s(r, "attempts"),
                        s(r, "passes"),
                        s(r, "expires")
                    );
                }
                println!("passes at: {}", s(&v, "passes_at_date"));
            }
        }
        Command::List {
            admin,
            ip,
            limit,
            json,
        } => {
            let path = match &ip {
                Some(ip) => format!("/list?ip={}&limit={limit}", encode_query_value(ip)),
                None => "/list".to_owned(),
            };
            let v = get_json(&admin, "GET", &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(r) = v.get("records") {
                println!(
                    "tuples {}  pending {}  hosts {}",
                    s(r, "tuples"),
                    s(r, "pending"),
                    s(r, "hosts")
                );
            } else {
                println!("network {}", s(&v, "network"));
                if let Some(h) = v.get("host").filter(|h| !h.is_null()) {
                    println!(
                        "host: {} passed tuples, trusted until {}",
                        s(h, "passed_tuples"),
                        s(h, "trusted_until")
                    );
                }
                for t in v
                    .get("tuples")
                    .and_then(|t| t.as_array())
                    .into_iter()
                    .flatten()
                {
                    println!(
                        "{:8} {} -> {} first_seen={} expires={} attempts={} passes={}",
                        s(t, "state"),
                        s(t, "sender"),
                        s(t, "recipient"),
                        s(t, "first_seen"),
                        s(t, "expires"),
                        s(t, "attempts"),
                        s(t, "passes")
                    );
                }
            }
        }
        Command::Flush { admin, ip } => {
            let v = get_json(
                &admin,
                "POST",
                &format!("/flush?ip={}", encode_query_value(&ip)),
            )
            .await?;
            println!(
                "flushed network {}: {} tuple records deleted",
                s(&v, "network"),
                s(&v, "deleted")
            );
        }
        Command::ImportConf { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let r = greylist_filter::import::import_conf(&text);
            for w in &r.warnings {
                eprintln!("{}:{}: {}", file.display(), w.line, w.message);
            }
            print!("{}", r.toml);
        }
        Command::ImportDb {
            dump,
            store,
            config,
        } => {
            let cfg = match &config {
                Some(f) => greylist_filter::config::check_config(f).map_err(|e| {
                    anyhow::anyhow!(
                        "configuration errors:\n{}",
                        e.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })?,
                None => greylist_filter::config::Config::default(),
            };
            let text = std::fs::read_to_string(&dump)
                .with_context(|| format!("reading {}", dump.display()))?;
            let db = greylist_filter::import::import_db(&text);
            for w in &db.warnings {
                eprintln!("{}:{}: {}", dump.display(), w.line, w.message);
            }
            let loc = match store.to_str().filter(|u| is_redis_url(u)) {
                Some(u) => StoreLocation::Redis(u.to_owned()),
                None => StoreLocation::File(store.clone()),
            };
            let st: Arc<dyn Store> = open_store(&loc, &cfg)?;
            let n = greylist_filter::import::import_into(
                st.as_ref(),
                &db,
                &cfg.params(),
                cfg.greylist.ipv4_prefix,
                cfg.greylist.ipv6_prefix,
            )
            .await
            .context("writing the store")?;
            println!(
                "imported {n} of {} records into {} ({} lines skipped)",
                db.records.len(),
                store.display(),
                db.warnings.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
