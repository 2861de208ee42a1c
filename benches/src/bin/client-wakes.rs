//! client-wakes: what the MTA side's unix transport costs per message.
//!
//! Drives a filter over a unix socket with `milter-client`, a new
//! connection per message as Postfix does, once over tokio's `UnixStream`
//! (handed to `Client::handshake`) and once over `milter-io`'s
//! `UnixConnection` (what `Client::connect` uses), alternating in one run.
//! The filter is this program in a child process: a `milter-server` filter
//! that spends `--work-us` microseconds at HELO, RCPT and end of message
//! (0: an instant filter). Prints, per run, messages per second, the
//! client's voluntary context switches and its CPU per 1,000 messages.
//!
//! ```text
//! client-wakes --messages 3000 --runs 3 --work-us 0,200
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use milter_benches::proc::{cpu_seconds, status_field};
use milter_client::{Client, Message};
use milter_proto::Envelope;
use milter_server::{BoxError, Context, EomContext, Listener, Milter, Server, Status, async_trait};

#[derive(Parser)]
#[command(about = "Client-side cost of the unix transport, tokio's against milter-io's")]
struct Args {
    /// Messages per run.
    #[arg(long, default_value_t = 3000)]
    messages: u32,
    /// Runs of each transport, alternated.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The filter's work per slow stage, in microseconds (comma-separated
    /// list: one table row set per value).
    #[arg(long, value_delimiter = ',', default_value = "0,200")]
    work_us: Vec<u64>,
    /// Internal: be the filter on this socket path.
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
}

/// Spends its time blocking, as a filter doing CPU work (a content scan)
/// would: the MTA waits the same way whatever the filter does meanwhile.
struct Slow(Duration);

impl Slow {
    fn work(&self) -> Result<Status, BoxError> {
        if !self.0.is_zero() {
            std::thread::sleep(self.0);
        }
        Ok(Status::Continue)
    }
}

#[async_trait]
impl Milter for Slow {
    type Message = ();
    async fn helo(&mut self, _: &Context<'_>, _: &Bytes) -> Result<Status, BoxError> {
        self.work()
    }
    async fn envrcpt(
        &mut self,
        _: &Context<'_>,
        _: &mut (),
        _: &Envelope,
    ) -> Result<Status, BoxError> {
        self.work()
    }
    async fn eom(&mut self, _: &mut EomContext<'_>, _: &mut ()) -> Result<Status, BoxError> {
        self.work()
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Tokio,
    MilterIo,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tokio => "tokio UnixStream",
            Transport::MilterIo => "milter-io UnixConnection",
        }
    }
}

/// This thread's voluntary context switches and CPU seconds.
fn thread_usage() -> anyhow::Result<(u64, f64)> {
    let switches = status_field("/proc/thread-self/status", "voluntary_ctxt_switches")
        .context("no voluntary_ctxt_switches in /proc/thread-self/status")?;
    let cpu = cpu_seconds("/proc/thread-self/stat").context("unreadable /proc/thread-self/stat")?;
    Ok((switches, cpu))
}

async fn run(socket: &Path, transport: Transport, messages: u32) -> anyhow::Result<String> {
    let client = Client::default();
    let spec = format!("unix:{}", socket.display());
    let message = Message::new()
        .client("client.example.net", "192.0.2.1:4567".parse()?)
        .helo("client.example.net")
        .sender("alice@example.org")
        .rcpt("bob@example.net")
        .header("Subject", "hello")
        .header("From", "alice@example.org")
        .body("Hi Bob.\r\n");
    let (switches, cpu) = thread_usage()?;
    let start = Instant::now();
    for _ in 0..messages {
        let mut conn = match transport {
            Transport::Tokio => {
                client
                    .handshake(tokio::net::UnixStream::connect(socket).await?)
                    .await?
            }
            Transport::MilterIo => client.connect(spec.as_str()).await?,
        };
        conn.send_message(&message).await?;
        conn.quit().await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (switches_after, cpu_after) = thread_usage()?;
    let n = f64::from(messages);
    Ok(format!(
        "| {} | {:.0} | {:.2} | {:.0} |",
        transport.name(),
        n / elapsed,
        (switches_after - switches) as f64 / n,
        (cpu_after - cpu) * 1000.0 / (n / 1000.0),
    ))
}

async fn serve(path: &Path, work: Duration) -> anyhow::Result<()> {
    let listener = Listener::bind(&format!("unix:{}", path.display())).await?;
    Server::new(move || Slow(work))
        .serve(listener, std::future::pending())
        .await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.serve {
        let work = Duration::from_micros(args.work_us.first().copied().unwrap_or(0));
        return serve(path, work).await;
    }
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("filter.sock");
    for &work_us in &args.work_us {
        let mut filter = std::process::Command::new(std::env::current_exe()?)
            .arg("--serve")
            .arg(&socket)
            .arg("--work-us")
            .arg(work_us.to_string())
            .env("RUST_LOG", "warn")
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                let _ = filter.kill();
                bail!("the filter did not start listening");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "\nfilter work per slow stage: {work_us} us; {} messages per run\n",
            args.messages
        );
        println!(
            "| client transport | msg/s | voluntary switches / msg | client CPU ms / 1k msgs |"
        );
        println!("|---|---:|---:|---:|");
        let mut result = Ok(());
        'runs: for _ in 0..args.runs {
            for transport in [Transport::Tokio, Transport::MilterIo] {
                match run(&socket, transport, args.messages).await {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        result = Err(e);
                        break 'runs;
                    }
                }
            }
        }
        let _ = filter.kill();
        let _ = filter.wait();
        let _ = std::fs::remove_file(&socket);
        result?;
    }
    Ok(())
}
