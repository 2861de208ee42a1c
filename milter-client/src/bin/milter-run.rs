//! `milter-run`: runs one message through a milter without an MTA.
//!
//! ```text
//! milter-run --socket unix:/run/milter.sock --from alice@example.org \
//!     --rcpt bob@example.net --client-ip 192.0.2.1 message.eml
//! ```
//!
//! Prints each stage's reply and the modifications; exits 0 if the message
//! is accepted, 1 if it is rejected, tempfailed, discarded or shut down,
//! and 2 on any error (filter unreachable, protocol violation, bad input).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use milter_client::{
    Client, ClientConfig, MacroStage, Message, MessageOutcome, Negotiated, Stage, postfix_offer,
};

/// Runs one message through a milter the way Postfix would, without an MTA.
#[derive(Debug, Parser)]
#[command(name = "milter-run", version, about, long_about = None)]
struct Args {
    /// The milter socket: unix:/path, inet:PORT@HOST, inet:HOST:PORT, inet6:PORT@HOST.
    #[arg(long, short = 's')]
    socket: String,
    /// Envelope sender (angle brackets are added; "" is the null sender).
    #[arg(long, short = 'f', default_value = "")]
    from: String,
    /// Envelope recipient; repeat for more.
    #[arg(long, short = 'r', required = true)]
    rcpt: Vec<String>,
    /// The SMTP client's IP address.
    #[arg(long, default_value = "127.0.0.1")]
    client_ip: IpAddr,
    /// The SMTP client's port.
    #[arg(long, default_value_t = 0)]
    client_port: u16,
    /// The SMTP client's host name (Postfix sends `[IP]` when unknown).
    #[arg(long)]
    client_name: Option<String>,
    /// The HELO name (default: the client name).
    #[arg(long)]
    helo: Option<String>,
    /// An extra macro, STAGE:NAME=VALUE; STAGE is connect, helo, mail, rcpt,
    /// data, header, eoh, body, eom or unknown. Repeatable.
    #[arg(long = "macro", short = 'm', value_name = "STAGE:NAME=VALUE")]
    macros: Vec<String>,
    /// Milter protocol version to offer (2 to 6), with the flags Postfix offers for it.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..=6))]
    protocol_version: u32,
    /// Timeout in seconds for connecting and for every read and write.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Log every packet to stderr.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// The message (RFC 5322, LF or CRLF line ends), or - for standard input.
    file: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.verbose {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter("milter_client=debug")
            .init();
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("milter-run: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn build_message(args: &Args, eml: &[u8]) -> anyhow::Result<Message> {
    let client_name = args
        .client_name
        .clone()
        .unwrap_or_else(|| format!("[{}]", args.client_ip));
    let helo = args.helo.clone().unwrap_or_else(|| client_name.clone());
    let mut message = Message::new()
        .client(
            &client_name,
            SocketAddr::new(args.client_ip, args.client_port),
        )
        .helo(&helo)
        .sender(&args.from)
        .eml(eml);
    for rcpt in &args.rcpt {
        message = message.rcpt(rcpt);
    }
    for spec in &args.macros {
        let (stage, rest) = spec
            .split_once(':')
            .with_context(|| format!("--macro {spec:?}: expected STAGE:NAME=VALUE"))?;
        let Some(stage) = Stage::parse_macro_stage(stage) else {
            bail!("--macro {spec:?}: unknown stage {stage:?}");
        };
        let (name, value) = rest
            .split_once('=')
            .with_context(|| format!("--macro {spec:?}: expected NAME=VALUE after the stage"))?;
        if name.is_empty() {
            bail!("--macro {spec:?}: empty macro name");
        }
        message = message.macro_at(stage, name, value);
    }
    Ok(message)
}

fn read_input(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut eml = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut eml)
            .context("reading the message from standard input")?;
    } else {
        eml = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    }
    Ok(eml)
}

fn print_negotiated(n: &Negotiated) {
    println!(
        "negotiated: version {}, actions {:#05x}, protocol {:#010x}",
        n.version,
        n.actions.bits(),
        n.protocol.bits()
    );
    for stage in MacroStage::ALL {
        if let Some(list) = n.requested_macros(stage) {
            println!("  macros requested for {stage:?}: {}", list.join(" "));
        }
    }
}

fn print_outcome(outcome: &MessageOutcome) {
    for s in &outcome.stages {
        println!("{:<8} {:<40} {}", s.stage.name(), s.argument, s.reply);
    }
    if !outcome.modifications.is_empty() {
        println!("modifications:");
        for m in &outcome.modifications {
            println!("  {m}");
        }
    }
    if outcome.progress_count > 0 {
        println!("progress packets: {}", outcome.progress_count);
    }
    for (rcpt, reply) in &outcome.rejected_recipients {
        println!("recipient {rcpt} refused: {reply}");
    }
    println!(
        "result: {} at {}: {}",
        outcome.verdict,
        outcome.decided_at,
        outcome.smtp_text()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn run(args: &Args) -> anyhow::Result<bool> {
    let eml = read_input(&args.file)?;
    let message = build_message(args, &eml)?;
    let config = ClientConfig::default()
        .with_offer(postfix_offer(args.protocol_version))
        .with_timeouts(Duration::from_secs(args.timeout));
    let client = Client::new(config);
    let mut conn = client
        .connect(args.socket.as_str())
        .await
        .with_context(|| format!("connecting to the milter at {}", args.socket))?;
    println!("connected to {}", args.socket);
    print_negotiated(conn.agreed());
    let outcome = conn
        .send_message(&message)
        .await
        .context("talking to the milter")?;
    print_outcome(&outcome);
    conn.quit().await.context("closing the connection")?;
    Ok(outcome.is_accepted())
}
