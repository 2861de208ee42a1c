//! `sender-check-milter`: verifies envelope senders with an SMTP callout
//! and rejects mail from addresses that cannot receive bounces.
//!
//! The engine lives in [`callout`]. For now the binary offers the `verify`
//! command, handy for operators to see what the milter would decide for an
//! address; serving (`--listen`) arrives with the milter server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

// The cache/coalescing API is used by the milter glue added with
// milter-server; until then parts are only used by the tests.
#[allow(dead_code)]
mod callout;

use callout::{Config, DnsConfig, Verdict, Verifier};

/// Verify envelope senders by SMTP callout.
#[derive(Debug, Parser)]
#[command(
    name = "sender-check-milter",
    version,
    about = "Verify envelope senders by SMTP callout",
    after_help = "Serving mail (--listen SOCKET) is added together with the milter server. \
                  For now, use `verify ADDRESS` to check an address by hand."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify one address and print the verdict (exit 0 valid or skipped,
    /// 1 invalid, 75 temporary failure).
    Verify {
        /// The sender address, e.g. alice@example.org or '<>'.
        address: String,
        /// Send the callout to HOST:PORT instead of the domain's MX.
        #[arg(long, value_name = "HOST:PORT")]
        callout_host: Option<String>,
        /// Ask this DNS server (IP:PORT, UDP and TCP) instead of the system's.
        #[arg(long, value_name = "IP:PORT")]
        dns_server: Option<SocketAddr>,
        /// Name to send with EHLO/HELO (use this host's public name).
        #[arg(long, default_value = "localhost")]
        helo_name: String,
        /// Overall time limit in seconds.
        #[arg(long, default_value_t = 45)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify {
            address,
            callout_host,
            dns_server,
            helo_name,
            timeout,
        } => {
            let config = Config {
                helo_name,
                dns: dns_server.map_or(DnsConfig::System, DnsConfig::server),
                callout_host,
                deadline: Duration::from_secs(timeout.max(1)),
                ..Config::default()
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sender-check-milter: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(verify(config, &address))
        }
    }
}

async fn verify(config: Config, address: &str) -> ExitCode {
    let verifier = match Verifier::new(config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sender-check-milter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verdict = verifier.verify(address).await;
    println!("{address}: {verdict}");
    match verdict {
        Verdict::Valid | Verdict::Skipped => ExitCode::SUCCESS,
        Verdict::Invalid { .. } => ExitCode::from(1),
        // EX_TEMPFAIL, as sendmail-style tools use it.
        Verdict::Temporary { .. } => ExitCode::from(75),
    }
}
