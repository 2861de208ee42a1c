//! The command line: the daemon's flags and the admin and migration subcommands.
//!
//! ```text
//! greylist-filter [--listen SPEC] [--config FILE] [--store PATH] [--delay DURATION]
//!                 [--dry-run] [--user USER] [--group GROUP] [--socket-mode OCTAL]
//!                 [--socket-owner USER[:GROUP]] [--pidfile FILE]
//!                 [--admin ADDR] [--admin-allow-remote]
//! greylist-filter --check-config [FILE]          (or --config FILE --check-config)
//! greylist-filter explain --admin ADDR --ip IP --from SENDER --rcpt RECIPIENT [--json]
//! greylist-filter list    --admin ADDR [--ip IP] [--limit N] [--json]
//! greylist-filter flush   --admin ADDR --ip IP
//! greylist-filter import-conf greylist.conf      (TOML on stdout, warnings on stderr)
//! greylist-filter import-db DUMP --store PATH [--config FILE]
//! ```
//!
//! Command-line flags override the configuration file; with neither, the daemon listens
//! on `inet:7357@127.0.0.1` and keeps its state in `./greylist.redb`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Seconds;

/// The default admin address of the client subcommands.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8025";

/// greylist-filter: a greylisting milter for Postfix and Sendmail on a crash-safe
/// embedded store.
#[derive(Debug, Parser)]
#[command(
    name = "greylist-filter",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Admin and migration subcommands; without one, the daemon runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The daemon's flags.
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

fn parse_duration(s: &str) -> Result<Seconds, String> {
    Seconds::parse(s).ok_or_else(|| format!("invalid duration {s:?}: use e.g. 300s, 5m, 1h"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid mode {s:?}: expected octal such as 660"))
}

/// The daemon's flags.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// Milter socket: unix:/path, local:/path, inet:PORT@HOST, inet6:PORT@HOST
    /// (default: milter.socket in the configuration, else inet:7357@127.0.0.1).
    #[arg(long, value_name = "SPEC")]
    pub listen: Option<String>,
    /// Configuration file (TOML). Without it the built-in defaults apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store: a redb file, or a Redis server as redis://HOST:PORT/DB (default:
    /// store.redis, else store.path in the configuration, else ./greylist.redb).
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Greylisting delay, overriding greylist.delay: 300s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Seconds>,
    /// Check the configuration (the given FILE or --config), print every error as
    /// file:line:column: message, and exit (non-zero if it has errors).
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<Option<PathBuf>>,
    /// Learning mode: decide, record and log, but never tempfail.
    #[arg(long)]
    pub dry_run: bool,
    /// Switch to this user after binding the socket and opening the store.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Switch to this group (default: the user's primary group).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Unix socket permissions, octal (default: milter.socket_mode, else 660).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// Unix socket owner, USER or USER:GROUP (e.g. postfix).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub socket_owner: Option<String>,
    /// Write the process id to this file (removed at exit).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Admin HTTP listener (metrics, explain, list, flush), e.g. 127.0.0.1:8025.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Allow the admin listener on a non-loopback address (it has no authentication).
    #[arg(long)]
    pub admin_allow_remote: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running daemon what would happen to a tuple, why, and when it passes.
    Explain {
        /// The daemon's admin address.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN)]
        admin: String,
        /// Client IP address.
        #[arg(long)]
        ip: String,
        /// Envelope sender (empty for the null sender).
        #[arg(long, default_value = "")]
        from: String,
        /// Envelope recipient.
        #[arg(long)]
        rcpt: String,
        /// Print the daemon's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// List a client network's records (or, without --ip, the record counts).
    List {
        /// The daemon's admin address.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN)]
        admin: String,
        /// Any address of the client network.
        #[arg(long)]
        ip: Option<String>,
        /// Most records to list.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print the daemon's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Forget everything about a client network.
    Flush {
        /// The daemon's admin address.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN)]
        admin: String,
        /// Any address of the client network.
        #[arg(long)]
        ip: String,
    },
    /// Translate a milter-greylist greylist.conf to TOML (stdout); warnings on stderr.
    ImportConf {
        /// The greylist.conf file.
        file: PathBuf,
    },
    /// Import a milter-greylist dump (greylist.db) into the store. The daemon must not
    /// be running on the same store.
    ImportDb {
        /// The dump file.
        dump: PathBuf,
        /// The store to write into (a redb file or redis://HOST:PORT/DB).
        #[arg(long, value_name = "PATH")]
        store: PathBuf,
        /// The configuration whose timings and prefixes apply (default: built-in).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemon_flags_parse() {
        let c = Cli::parse_from([
            "greylist-filter",
            "--listen",
            "inet:7357@127.0.0.1",
            "--delay",
            "2s",
            "--socket-mode",
            "666",
        ]);
        assert!(c.command.is_none());
        assert_eq!(c.daemon.delay, Some(Seconds(2)));
        assert_eq!(c.daemon.socket_mode, Some(0o666));
        let c = Cli::parse_from(["greylist-filter", "--check-config", "g.toml"]);
        assert_eq!(c.daemon.check_config, Some(Some(PathBuf::from("g.toml"))));
        let c = Cli::parse_from(["greylist-filter", "--config", "g.toml", "--check-config"]);
        assert_eq!(c.daemon.check_config, Some(None));
        assert!(Cli::try_parse_from(["greylist-filter", "--delay", "5 parsecs"]).is_err());
    }

    #[test]
    fn subcommands_parse() {
        let c = Cli::parse_from([
            "greylist-filter",
            "explain",
            "--ip",
            "192.0.2.1",
            "--from",
            "a@example.org",
            "--rcpt",
            "b@example.net",
        ]);
        match c.command {
            Some(Command::Explain { admin, ip, .. }) => {
                assert_eq!(admin, DEFAULT_ADMIN);
                assert_eq!(ip, "192.0.2.1");
            }
            other => panic!("{other:?}"),
        }
    }
}
