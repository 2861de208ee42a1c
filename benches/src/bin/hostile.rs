//! Hostile clients against a running milter server, and a small server with
//! a configurable [`Config`] and a scripted filter to run them against.
//!
//! ```text
//! cargo run --release -p milter-benches --bin hostile -- SCENARIO --socket SPEC [...]
//! ```
//!
//! | scenario | what it does | checks |
//! |---|---|---|
//! | `serve` | a server: `--listen SPEC --milter accept\|add-header\|scripted`, `--idle-timeout`, `--callback-timeout`, `--max-connections`, `--over-limit wait\|refuse`, `--policy` | — |
//! | `slowloris` | N connections send half a frame, then nothing; fresh full messages meanwhile | fresh-message latency under `--max-latency-ms`; with `--idle-timeout`, every connection closed by the server at that timeout |
//! | `flood` | N connections at once against `--limit`, each sends OPTNEG | `--limit` served, the rest refused at once, none stuck; RSS bounded; fds back to the baseline |
//! | `mutate` | random and mutated conversations from many connections, control messages in parallel | every bad session closed by the server; each malformed one logged; control errors = 0; server alive |
//! | `failures` | against `serve --milter scripted`: callbacks that panic, hang, fail at MAIL, RCPT and EOM | the failure policy's reply, logged once each; the same connection goes on; control messages unaffected |
//! | `greylist-crash` | starts greylist-filter, drives greylisting load, kill -9 mid-load, restarts on the same store, N rounds | the store opens every time; every tuple the daemon passed still passes at once |
//!
//! Every scenario is bounded in count and time (`--max-seconds`). Results
//! are printed as `RESULT scenario key=value` lines, checks as `PASS name:
//! detail` or `FAIL name: detail`; the exit status is 1 if a check failed.
//! `scripts/robustness.sh` runs them all.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use milter_client::{Client, ClientConfig, Message, Modification, Reply, Stage, Verdict};
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, FrameDecoder, Header, Macros, OptNeg,
    SocketSpec,
};
use milter_server::{
    BoxError, Config, Context, EomContext, FailurePolicy, Listener, Milter, Options, OverLimit,
    Server, Stages, Status, async_trait,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Semaphore;

// ------------------------------------------------------------ command line

#[derive(Parser)]
#[command(about = "Hostile milter clients, and a configurable server to run them against")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Checks failing because of a known, reported bug: reported as XFAIL
    /// (XPASS once fixed) and not counted.
    #[arg(long, global = true, value_delimiter = ',')]
    xfail: Vec<String>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Serve with a configurable Config (the examples have no timeout flags).
    Serve(ServeArgs),
    /// Half a frame, then silence, from many connections.
    Slowloris(SlowlorisArgs),
    /// More connections than the server's limit.
    Flood(FloodArgs),
    /// Random and mutated byte streams, with control messages in parallel.
    Mutate(MutateArgs),
    /// Callbacks that panic, hang and fail (against `serve --milter scripted`).
    Failures(FailuresArgs),
    /// kill -9 of greylist-filter under load, restart on the same store.
    GreylistCrash(GreylistArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum MilterKind {
    /// Continues everywhere, accepts at end of message.
    Accept,
    /// Adds `X-Milter: seen` at end of message.
    AddHeader,
    /// Fails on purpose when the sender says so (see `failures`).
    Scripted,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Policy {
    Tempfail,
    Reject,
    Continue,
    Accept,
}

#[derive(Clone, Copy, ValueEnum)]
enum Limit {
    Wait,
    Refuse,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Socket specification.
    #[arg(long)]
    listen: String,
    #[arg(long, value_enum, default_value = "accept")]
    milter: MilterKind,
    /// Idle timeout in seconds.
    #[arg(long, default_value_t = 7210.0)]
    idle_timeout: f64,
    /// Callback timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    callback_timeout: f64,
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    #[arg(long, value_enum, default_value = "wait")]
    over_limit: Limit,
    /// Failure policy.
    #[arg(long, value_enum, default_value = "tempfail")]
    policy: Policy,
}

#[derive(clap::Args)]
struct Common {
    /// The server's socket.
    #[arg(long)]
    socket: String,
    /// The server's process id (RSS, fds, liveness).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's stderr log (warning lines are counted).
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Control messages must carry this header (e.g. X-Milter).
    #[arg(long)]
    expect_header: Option<String>,
    /// Hard limit for the whole scenario.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

#[derive(clap::Args)]
struct SlowlorisArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Fresh full messages measured while the connections are open.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    #[arg(long, default_value_t = 1000)]
    max_latency_ms: u64,
    /// The server's idle timeout in seconds: expect every connection to be
    /// closed then (not checked without it).
    #[arg(long)]
    idle_timeout: Option<f64>,
}

#[derive(clap::Args)]
struct FloodArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The server's max_connections (OverLimit::Refuse).
    #[arg(long, default_value_t = 5000)]
    limit: usize,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Largest acceptable server RSS while they are open, MiB.
    #[arg(long, default_value_t = 512)]
    max_rss_mib: u64,
    /// Refused connections must be closed within this.
    #[arg(long, default_value_t = 1000)]
    max_refusal_ms: u64,
}

#[derive(clap::Args)]
struct MutateArgs {
    #[command(flatten)]
    common: Common,
    /// Bad sessions in total.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Bad sessions at the same time.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Control clients running real messages throughout.
    #[arg(long, default_value_t = 2)]
    control: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory of recorded MTA streams (`*.bin`) to mutate as well.
    #[arg(long)]
    captures: Option<PathBuf>,
    /// A bad session must be closed within this after its last byte.
    #[arg(long, default_value_t = 10)]
    session_timeout: u64,
    /// Keep sending batches of `--sessions` until this many seconds passed.
    #[arg(long, default_value_t = 0.0)]
    duration: f64,
}

#[derive(clap::Args)]
struct FailuresArgs {
    #[command(flatten)]
    common: Common,
    /// The server's failure policy.
    #[arg(long, value_enum)]
    policy: Policy,
    /// The server's callback timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    callback_timeout_ms: u64,
    #[arg(long, default_value_t = 2)]
    control: usize,
    #[arg(long, default_value_t = 1000)]
    max_latency_ms: u64,
}

#[derive(clap::Args)]
struct GreylistArgs {
    /// The greylist-filter binary.
    #[arg(long)]
    daemon: PathBuf,
    /// Working directory (store, socket, config, logs).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Client tasks driving the load.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Greylisting delay in seconds.
    #[arg(long, default_value_t = 1)]
    delay: u64,
    /// Kill after a random time of up to this many milliseconds of load
    /// (at least the delay, so that tuples pass).
    #[arg(long, default_value_t = 3000)]
    max_load_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

// ------------------------------------------------------------- reporting

#[derive(Default)]
struct Checks {
    failed: usize,
    passed: usize,
    /// Checks that fail because of a known, reported bug: printed as XFAIL
    /// and not counted (XPASS once fixed: remove them from `--xfail`).
    xfail: Vec<String>,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        if self.xfail.iter().any(|x| x == name) {
            let tag = if ok { "XPASS" } else { "XFAIL" };
            println!("{tag} {name}: {detail} (listed as a known bug)");
            return;
        }
        if ok {
            self.passed += 1;
            println!("PASS {name}: {detail}");
        } else {
            self.failed += 1;
            println!("FAIL {name}: {detail}");
        }
    }
}

fn result(scenario: &str, pairs: &[(&str, String)]) {
    let mut line = format!("RESULT {scenario}");
    for (k, v) in pairs {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("{line}");
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ----------------------------------------------------------------- /proc

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state says so.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Lines of the server log containing `needle`.
fn log_count(path: Option<&Path>, needle: &str) -> Option<usize> {
    let text = std::fs::read(path?).ok()?;
    Some(
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.contains(needle))
            .count(),
    )
}

// --------------------------------------------------------------- sockets

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Raw = Box<dyn Io>;

/// Connects, retrying while a unix listen queue is full (EAGAIN).
async fn connect_raw(spec: &SocketSpec) -> io::Result<Raw> {
    let mut attempt = 0;
    loop {
        let r: io::Result<Raw> = match spec {
            SocketSpec::Unix(path) => UnixStream::connect(path).await.map(|s| Box::new(s) as Raw),
            SocketSpec::Inet { host, port, .. } => {
                let host = host.as_deref().unwrap_or("127.0.0.1");
                TcpStream::connect((host, *port)).await.map(|s| {
                    let _ = s.set_nodelay(true);
                    Box::new(s) as Raw
                })
            }
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && attempt < 1000 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Reads until the peer closes; `Ok(true)` on EOF or reset, `Ok(false)` if
/// `limit` passed first.
async fn wait_closed(io: &mut Raw, limit: Duration) -> bool {
    let mut buf = vec![0u8; 4096];
    let read_all = async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

fn encode(commands: &[Command]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for c in commands {
        c.encode(&mut out, milter_proto::frame::MAX_DATA_SIZE_1M)
            .expect("fixed commands encode");
    }
    out.to_vec()
}

// --------------------------------------------------------------- control

fn client() -> Client {
    Client::new(ClientConfig::default().with_timeouts(Duration::from_secs(10)))
}

fn control_message(i: u64, first: bool) -> Message {
    let mut m = Message::new();
    if first {
        m = m
            .client(
                "client.example.net",
                "192.0.2.1:4567".parse().expect("addr"),
            )
            .helo("client.example.net");
    }
    m.sender(&format!("sender{i}@example.org"))
        .rcpt("rcpt@example.net")
        .header("Subject", format!("control {i}"))
        .body(format!("Control message {i}.\r\n"))
}

fn has_header(mods: &[Modification], name: &str) -> bool {
    mods.iter().any(|m| match m {
        Modification::AddHeader { name: n, .. } | Modification::InsertHeader { name: n, .. } => {
            n.as_ref() == name.as_bytes()
        }
        _ => false,
    })
}

/// One fresh connection with `messages` messages, each checked: accepted,
/// and carrying `header` if given. Returns the latency of the whole session.
async fn control_session(
    client: &Client,
    socket: &str,
    header: Option<&str>,
    messages: u64,
    n: u64,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut conn = client
        .connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    for i in 0..messages {
        let outcome = conn
            .send_message(&control_message(n * 10 + i, i == 0))
            .await
            .map_err(|e| format!("message {i}: {e}"))?;
        if outcome.verdict != Verdict::Accepted {
            return Err(format!("message {i}: verdict {}", outcome.verdict));
        }
        if let Some(h) = header
            && !has_header(&outcome.modifications, h)
        {
            return Err(format!(
                "message {i}: no {h} header in {:?}",
                outcome.modifications
            ));
        }
    }
    conn.quit().await.map_err(|e| format!("quit: {e}"))?;
    Ok(start.elapsed())
}

/// Control clients running until `stop`: (ok, errors, latencies).
struct ControlStats {
    ok: AtomicU64,
    errors: AtomicU64,
    max_latency_us: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

fn spawn_controls(
    count: usize,
    socket: String,
    header: Option<String>,
    stop: Arc<AtomicBool>,
) -> (Arc<ControlStats>, Vec<tokio::task::JoinHandle<()>>) {
    let stats = Arc::new(ControlStats {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        max_latency_us: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let mut handles = Vec::new();
    for t in 0..count {
        let (stats, socket, header, stop) =
            (stats.clone(), socket.clone(), header.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let client = client();
            let mut n = (t as u64) << 32;
            // Bounded: the caller stops it; the count is a backstop.
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                n += 1;
                match control_session(&client, &socket, header.as_deref(), 1 + n % 3, n).await {
                    Ok(d) => {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                        stats
                            .max_latency_us
                            .fetch_max(d.as_micros() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        stats.first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }
        }));
    }
    (stats, handles)
}

// ------------------------------------------------------------------ serve

struct Scripted;

/// What the sender asked the scripted filter to do: `<KIND.STAGE@...>`.
#[derive(Default, Clone, Copy, PartialEq)]
struct Script {
    kind: u8,  // b'p'anic, b'h'ang, b'e'rror, 0 = none
    stage: u8, // b'm'ail, b'r'cpt, b'e'om
}

impl Script {
    fn parse(sender: &[u8]) -> Script {
        let s = String::from_utf8_lossy(sender);
        let local = s.trim_start_matches('<').split('@').next().unwrap_or("");
        let (kind, stage) = local.split_once('.').unwrap_or(("", ""));
        let kind = match kind {
            "panic" => b'p',
            "hang" => b'h',
            "error" => b'e',
            _ => 0,
        };
        let stage = match stage {
            "mail" => b'm',
            "rcpt" => b'r',
            "eom" => b'e',
            _ => 0,
        };
        Script { kind, stage }
    }

    async fn act(self, stage: u8) -> Result<Status, BoxError> {
        if self.stage != stage {
            return Ok(Status::Continue);
        }
        match self.kind {
            b'p' => panic!("scripted panic"),
            b'h' => std::future::pending().await,
            b'e' => Err("scripted error".into()),
            _ => Ok(Status::Continue),
        }
    }
}

#[async_trait]
impl Milter for Scripted {
    type Message = Script;

    async fn negotiate(&mut self, _: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new()
            .actions(Actions::ADD_HEADERS)
            .stages(Stages::MAIL | Stages::RCPT))
    }

    async fn envfrom(
        &mut self,
        _: &Context<'_>,
        msg: &mut Script,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        *msg = Script::parse(&from.address);
        msg.act(b'm').await
    }

    async fn envrcpt(
        &mut self,
        _: &Context<'_>,
        msg: &mut Script,
        _: &Envelope,
    ) -> Result<Status, BoxError> {
        msg.act(b'r').await
    }

    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut Script,
    ) -> Result<Status, BoxError> {
        // Made before failing: a failed callback's modifications must not
        // reach the MTA.
        ctx.add_header("X-Scripted", "yes")?;
        msg.act(b'e').await
    }
}

struct AcceptAll;

#[async_trait]
impl Milter for AcceptAll {
    type Message = ();
}

struct AddHeader;

#[async_trait]
impl Milter for AddHeader {
    type Message = ();
    async fn negotiate(&mut self, _: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new()
            .actions(Actions::ADD_HEADERS)
            .stages(Stages::empty()))
    }
    async fn eom(&mut self, ctx: &mut EomContext<'_>, _: &mut ()) -> Result<Status, BoxError> {
        ctx.add_header("X-Milter", "seen")?;
        Ok(Status::Continue)
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let config = Config::new()
        .idle_timeout(Duration::from_secs_f64(args.idle_timeout))
        .callback_timeout(Duration::from_secs_f64(args.callback_timeout))
        .max_connections(args.max_connections)
        .over_limit(match args.over_limit {
            Limit::Wait => OverLimit::Wait,
            Limit::Refuse => OverLimit::Refuse,
        })
        .failure_policy(match args.policy {
            Policy::Tempfail => FailurePolicy::Tempfail,
            Policy::Reject => FailurePolicy::Reject,
            Policy::Continue => FailurePolicy::Continue,
            Policy::Accept => FailurePolicy::Accept,
        });
    let listener = Listener::bind(&args.listen).await?;
    match args.milter {
        MilterKind::Accept => {
            Server::new(|| AcceptAll)
                .config(config)
                .serve(listener, shutdown_signal())
                .await?
        }
        MilterKind::AddHeader => {
            Server::new(|| AddHeader)
                .config(config)
                .serve(listener, shutdown_signal())
                .await?
        }
        MilterKind::Scripted => {
            Server::new(|| Scripted)
                .config(config)
                .serve(listener, shutdown_signal())
                .await?
        }
    }
    Ok(())
}

// -------------------------------------------------------------- slowloris

async fn slowloris(args: SlowlorisArgs, checks: &mut Checks) -> anyhow::Result<()> {
    let c = &args.common;
    let spec = SocketSpec::parse(&c.socket)?;
    // A frame announcing 100 bytes, of which 3 arrive.
    let half: &[u8] = b"\x00\x00\x00\x64O\x00\x00";
    let hold = Duration::from_secs(c.max_seconds);
    let gate = Arc::new(Semaphore::new(100));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Option<Duration>, String>>();
    let (open_tx, mut open_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..args.connections {
        let (spec, gate, tx, open_tx) = (spec.clone(), gate.clone(), tx.clone(), open_tx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("open semaphore");
            let mut io = match connect_raw(&spec).await {
                Ok(io) => io,
                Err(e) => {
                    let _ = open_tx.send(false);
                    let _ = tx.send(Err(format!("connect: {e}")));
                    return;
                }
            };
            if let Err(e) = io.write_all(half).await {
                let _ = open_tx.send(false);
                let _ = tx.send(Err(format!("write: {e}")));
                return;
            }
            let _ = open_tx.send(true);
            drop(open_tx);
            drop(permit);
            let t = Instant::now();
            let closed = wait_closed(&mut io, hold).await;
            let _ = tx.send(Ok(closed.then(|| t.elapsed())));
        }));
    }
    drop(tx);
    drop(open_tx);
    let mut opened = 0usize;
    let mut open_failed = 0usize;
    // Counted, not waited for: each task keeps its sender while it holds
    // its connection.
    while opened + open_failed < args.connections {
        let Some(ok) = open_rx.recv().await else {
            break;
        };
        if ok {
            opened += 1;
        } else {
            open_failed += 1;
        }
    }
    let open_time = started.elapsed();
    let rss = c
        .server_pid
        .and_then(|p| proc_status_kib(p, "VmRSS:"))
        .unwrap_or(0);
    let fds = c.server_pid.and_then(fd_count).unwrap_or(0);

    // Fresh full messages while they are all open.
    let client = client();
    let mut lat = Vec::new();
    let mut probe_errors = Vec::new();
    for i in 0..args.probes {
        match control_session(&client, &c.socket, c.expect_header.as_deref(), 1, i as u64).await {
            Ok(d) => lat.push(d),
            Err(e) => probe_errors.push(e),
        }
    }
    lat.sort();
    let max_lat = lat.last().copied().unwrap_or_default();
    result(
        "slowloris",
        &[
            ("connections", opened.to_string()),
            ("open_failed", open_failed.to_string()),
            ("open_s", format!("{:.2}", open_time.as_secs_f64())),
            ("server_rss_kib", rss.to_string()),
            ("server_fds", fds.to_string()),
            ("probe_p50_ms", ms(percentile(&lat, 0.5))),
            ("probe_max_ms", ms(max_lat)),
            ("probe_errors", probe_errors.len().to_string()),
        ],
    );
    checks.check(
        "slowloris.all-open",
        opened == args.connections,
        format!(
            "{opened} of {} connections sent half a frame",
            args.connections
        ),
    );
    checks.check(
        "slowloris.fresh-session-latency",
        probe_errors.is_empty() && max_lat <= Duration::from_millis(args.max_latency_ms),
        format!(
            "{} fresh messages, max {} ms (limit {} ms), errors {:?}",
            lat.len(),
            ms(max_lat),
            args.max_latency_ms,
            probe_errors.first()
        ),
    );

    if let Some(idle) = args.idle_timeout {
        let idle = Duration::from_secs_f64(idle);
        let deadline = idle + Duration::from_secs(10);
        let mut closes = Vec::new();
        let mut still_open = 0usize;
        let collect = async {
            while let Some(r) = rx.recv().await {
                match r {
                    Ok(Some(d)) => closes.push(d),
                    Ok(None) => still_open += 1,
                    Err(_) => {}
                }
            }
        };
        if tokio::time::timeout(deadline, collect).await.is_err() {
            for t in &tasks {
                t.abort();
            }
        }
        closes.sort();
        let (min, max) = (
            closes.first().copied().unwrap_or_default(),
            closes.last().copied().unwrap_or_default(),
        );
        result(
            "slowloris",
            &[
                ("closed_by_server", closes.len().to_string()),
                ("close_min_s", format!("{:.2}", min.as_secs_f64())),
                ("close_max_s", format!("{:.2}", max.as_secs_f64())),
                ("idle_timeout_s", format!("{:.1}", idle.as_secs_f64())),
            ],
        );
        let early = idle.saturating_sub(Duration::from_millis(500));
        let late = idle + Duration::from_secs(3);
        checks.check(
            "slowloris.closed-at-idle-timeout",
            closes.len() == opened && min >= early && max <= late,
            format!(
                "{} of {opened} closed by the server, after {:.2}..{:.2} s (idle timeout {:.1} s)",
                closes.len(),
                min.as_secs_f64(),
                max.as_secs_f64(),
                idle.as_secs_f64()
            ),
        );
        match control_session(&client, &c.socket, c.expect_header.as_deref(), 1, 999).await {
            Ok(_) => checks.check("slowloris.served-after", true, "a message after the closes"),
            Err(e) => checks.check("slowloris.served-after", false, e),
        }
    } else {
        for t in &tasks {
            t.abort();
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ flood

enum FloodOutcome {
    Served(Raw),
    Refused(Duration),
    Stuck,
    Failed(String),
}

async fn flood(args: FloodArgs, checks: &mut Checks) -> anyhow::Result<()> {
    let c = &args.common;
    let spec = SocketSpec::parse(&c.socket)?;
    let pid = c.server_pid;
    let fds_before = pid.and_then(fd_count);
    let rss_before = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let optneg = encode(&[Command::OptNeg(OptNeg::POSTFIX)]);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (spec, gate, optneg) = (spec.clone(), gate.clone(), optneg.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("open semaphore");
            let mut io = match connect_raw(&spec).await {
                Ok(io) => io,
                Err(e) => return FloodOutcome::Failed(format!("connect: {e}")),
            };
            let t = Instant::now();
            if io.write_all(&optneg).await.is_err() {
                // Closed before we could write: refused.
                return FloodOutcome::Refused(t.elapsed());
            }
            let mut buf = [0u8; 5];
            match tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut buf)).await {
                Ok(Ok(_)) if buf[4] == b'O' => FloodOutcome::Served(io),
                Ok(Ok(_)) => FloodOutcome::Failed(format!("unexpected reply {buf:?}")),
                Ok(Err(_)) => FloodOutcome::Refused(t.elapsed()),
                Err(_) => FloodOutcome::Stuck,
            }
        }));
    }
    let mut held = Vec::new();
    let mut refused = Vec::new();
    let (mut stuck, mut failed) = (0usize, Vec::new());
    for t in tasks {
        match t.await? {
            FloodOutcome::Served(io) => held.push(io),
            FloodOutcome::Refused(d) => refused.push(d),
            FloodOutcome::Stuck => stuck += 1,
            FloodOutcome::Failed(e) => failed.push(e),
        }
    }
    let open_time = started.elapsed();
    // Let the server settle, then measure with everything open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_full = pid.and_then(fd_count);
    let rss_full = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    // A fresh message while full must be refused, not left waiting.
    let client = client();
    let while_full = control_session(&client, &c.socket, c.expect_header.as_deref(), 1, 1).await;
    refused.sort();
    let refusal_max = refused.last().copied().unwrap_or_default();
    drop(held);
    // Wait for the server to close its ends.
    let mut fds_after = pid.and_then(fd_count);
    for _ in 0..150 {
        if fds_after <= fds_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = pid.and_then(fd_count);
    }
    let rss_after = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let hwm = pid.and_then(|p| proc_status_kib(p, "VmHWM:"));
    let after = control_session(&client, &c.socket, c.expect_header.as_deref(), 1, 2).await;
    let served = args.connections - refused.len() - stuck - failed.len();
    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    let showz = |v: Option<usize>| v.map_or("?".to_string(), |v| v.to_string());
    result(
        "flood",
        &[
            ("connections", args.connections.to_string()),
            ("served", served.to_string()),
            ("refused", refused.len().to_string()),
            ("stuck", stuck.to_string()),
            ("failed", failed.len().to_string()),
            ("open_s", format!("{:.2}", open_time.as_secs_f64())),
            ("refusal_p50_ms", ms(percentile(&refused, 0.5))),
            ("refusal_p99_ms", ms(percentile(&refused, 0.99))),
            ("refusal_max_ms", ms(refusal_max)),
            ("rss_before_kib", show(rss_before)),
            ("rss_full_kib", show(rss_full)),
            ("rss_after_kib", show(rss_after)),
            ("rss_peak_kib", show(hwm)),
            ("fds_before", showz(fds_before)),
            ("fds_full", showz(fds_full)),
            ("fds_after", showz(fds_after)),
        ],
    );
    checks.check(
        "flood.limit-served",
        served == args.limit && failed.is_empty(),
        format!(
            "{served} served (limit {}), failures {:?}",
            args.limit,
            failed.first()
        ),
    );
    checks.check(
        "flood.rest-refused",
        refused.len() == args.connections - args.limit && stuck == 0,
        format!(
            "{} refused, {stuck} neither served nor closed",
            refused.len()
        ),
    );
    checks.check(
        "flood.refused-at-once",
        refusal_max <= Duration::from_millis(args.max_refusal_ms),
        format!(
            "refusal p50 {} ms, p99 {} ms, max {} ms (limit {} ms)",
            ms(percentile(&refused, 0.5)),
            ms(percentile(&refused, 0.99)),
            ms(refusal_max),
            args.max_refusal_ms
        ),
    );
    checks.check(
        "flood.refused-while-full",
        matches!(&while_full, Err(e) if e.contains("closed") || e.contains("I/O")),
        format!("a fresh session while full: {while_full:?}"),
    );
    if let Some(peak) = hwm {
        checks.check(
            "flood.rss-bounded",
            peak <= args.max_rss_mib * 1024,
            format!(
                "peak RSS {} MiB (limit {} MiB), {} MiB with {served} sessions open",
                peak / 1024,
                args.max_rss_mib,
                rss_full.unwrap_or(0) / 1024
            ),
        );
    }
    if let (Some(b), Some(a)) = (fds_before, fds_after) {
        checks.check(
            "flood.no-fd-leak",
            a <= b,
            format!("server fds {b} before, {} full, {a} after", showz(fds_full)),
        );
    }
    checks.check(
        "flood.served-after",
        after.is_ok(),
        format!("a message after the flood: {after:?}"),
    );
    Ok(())
}

// ----------------------------------------------------------------- mutate

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn macros(stage: u8, pairs: &[(&'static str, &'static str)]) -> Command {
    Command::Macro(Macros::new(stage, pairs.iter().copied()).expect("valid macros"))
}

/// Encoded Postfix-like conversations to mutate.
fn base_conversations() -> Vec<Vec<u8>> {
    let message = |body: Bytes| {
        vec![
            macros(b'M', &[("i", "4XyZ1"), ("{mail_addr}", "a@example.org")]),
            Command::Mail(Envelope::new(b("<a@example.org>"), ["SIZE=10"]).expect("envelope")),
            Command::Rcpt(Envelope::new(b("<b@example.net>"), Vec::<&str>::new()).expect("env")),
            Command::Data,
            Command::Header(Header {
                name: b("Subject"),
                value: b("hello"),
            }),
            Command::EndOfHeaders,
            Command::Body(body),
            Command::EndOfMessage(Bytes::new()),
            Command::Abort,
        ]
    };
    let start = |offer: OptNeg| {
        vec![
            Command::OptNeg(offer),
            macros(b'C', &[("j", "mx.example.org"), ("{daemon_name}", "smtpd")]),
            Command::Connect(Connect {
                hostname: b("client.example.net"),
                address: ConnectAddress::Inet("192.0.2.1:54321".parse().expect("addr")),
            }),
            Command::Helo(b("client.example.net")),
        ]
    };
    let mut out = Vec::new();
    let mut full = start(OptNeg::POSTFIX);
    full.extend(message(b("Hi.\r\n")));
    full.extend(message(Bytes::from(vec![b'x'; 3000])));
    full.push(Command::Quit);
    out.push(encode(&full));
    let mut v2 = start(OptNeg::V2);
    v2.extend(message(b("Old MTA.\r\n")));
    v2.push(Command::Quit);
    out.push(encode(&v2));
    let mut reuse = start(OptNeg::POSTFIX);
    reuse.extend(message(b("one\r\n")));
    reuse.push(Command::QuitNc);
    reuse.extend(start(OptNeg::POSTFIX).into_iter().skip(1));
    reuse.extend(message(b("two\r\n")));
    reuse.push(Command::Unknown(b("HELP")));
    reuse.push(Command::Quit);
    out.push(encode(&reuse));
    out
}

/// Offsets of whole frames in a stream.
fn frame_bounds(s: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= s.len() {
        let len = u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]) as usize;
        let end = i + 4 + len;
        if len == 0 || end > s.len() {
            break;
        }
        out.push((i, end));
        i = end;
    }
    out
}

fn mutate(rng: &mut Rng, bases: &[Vec<u8>]) -> Vec<u8> {
    let mut s = bases[rng.below(bases.len())].clone();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let frames = frame_bounds(&s);
        match rng.below(12) {
            0 => {
                let n = 1 + rng.below(512);
                s = rng.bytes(n);
            }
            1 => {
                for _ in 0..1 + rng.below(8) {
                    if !s.is_empty() {
                        let i = rng.below(s.len());
                        s[i] ^= 1 << rng.below(8);
                    }
                }
            }
            2 => {
                for _ in 0..1 + rng.below(8) {
                    if !s.is_empty() {
                        let i = rng.below(s.len());
                        s[i] = rng.next() as u8;
                    }
                }
            }
            3 => {
                let at = rng.below(s.len() + 1);
                s.truncate(at);
            }
            4 => {
                let at = rng.below(s.len() + 1);
                let n = 1 + rng.below(64);
                let junk = rng.bytes(n);
                s.splice(at..at, junk);
            }
            5 if !frames.is_empty() => {
                let (start, _) = frames[rng.below(frames.len())];
                let len: u32 = match rng.below(4) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 0x0010_0001,
                    _ => rng.next() as u32 % 70_000,
                };
                s[start..start + 4].copy_from_slice(&len.to_be_bytes());
            }
            6 if !frames.is_empty() => {
                let (a, e) = frames[rng.below(frames.len())];
                s.drain(a..e);
            }
            7 if !frames.is_empty() => {
                let (a, e) = frames[rng.below(frames.len())];
                let copy = s[a..e].to_vec();
                s.splice(e..e, copy);
            }
            8 if frames.len() >= 2 => {
                let i = rng.below(frames.len() - 1);
                let (a, m) = frames[i];
                let (_, e) = frames[i + 1];
                let mut swapped = s[m..e].to_vec();
                swapped.extend_from_slice(&s[a..m]);
                s.splice(a..e, swapped);
            }
            9 if !frames.is_empty() => {
                let (a, _) = frames[rng.below(frames.len())];
                s[a + 4] = rng.next() as u8;
            }
            10 => {
                let other = &bases[rng.below(bases.len())];
                let cut = rng.below(s.len() + 1);
                let from = rng.below(other.len() + 1);
                s.truncate(cut);
                s.extend_from_slice(&other[from..]);
            }
            _ => {
                let again = s.clone();
                s.extend_from_slice(&again);
            }
        }
    }
    s
}

/// Whether the server must log an error for this stream regardless of its
/// replies: a framing or decoding error, or a partial frame at the end,
/// before any QUIT.
fn surely_malformed(s: &[u8]) -> bool {
    let mut decoder = FrameDecoder::new(milter_proto::frame::DEFAULT_MAX_INBOUND);
    let mut buf = BytesMut::from(s);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => match Command::decode(&frame) {
                Ok(Command::Quit) => return false,
                Ok(_) => {}
                Err(_) => return true,
            },
            Ok(None) => return !buf.is_empty(),
            Err(_) => return true,
        }
    }
}

async fn mutate_scenario(args: MutateArgs, checks: &mut Checks) -> anyhow::Result<()> {
    let c = &args.common;
    let spec = SocketSpec::parse(&c.socket)?;
    let mut bases = base_conversations();
    if let Some(dir) = &args.captures {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "bin") {
                bases.push(std::fs::read(&p)?);
            }
        }
    }
    let log = c.server_log.as_deref();
    let needle = "closing milter session";
    let warnings_before = log_count(log, needle);

    let stop = Arc::new(AtomicBool::new(false));
    let (stats, controls) = spawn_controls(
        args.control,
        c.socket.clone(),
        c.expect_header.clone(),
        stop.clone(),
    );

    let mut rng = Rng::new(args.seed);
    let gate = Arc::new(Semaphore::new(args.parallel));
    let limit = Duration::from_secs(args.session_timeout);
    let started = Instant::now();
    let (mut closed, mut not_closed, mut first_err) = (0usize, 0usize, None);
    let (mut sessions, mut malformed) = (0usize, 0usize);
    // Batches of `--sessions` until `--duration` has passed (at most 1000).
    for _ in 0..1000 {
        let streams: Vec<Vec<u8>> = (0..args.sessions)
            .map(|_| mutate(&mut rng, &bases))
            .collect();
        sessions += streams.len();
        malformed += streams.iter().filter(|s| surely_malformed(s)).count();
        let mut tasks = Vec::new();
        for s in streams {
            let (spec, gate) = (spec.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("open semaphore");
                let mut io = match connect_raw(&spec).await {
                    Ok(io) => io,
                    Err(e) => return Err(format!("connect: {e}")),
                };
                // The server may close before everything is written.
                let write = async {
                    io.write_all(&s).await?;
                    io.shutdown().await
                };
                let _ = tokio::time::timeout(limit, write).await;
                if wait_closed(&mut io, limit).await {
                    Ok(())
                } else {
                    Err("not closed by the server".to_string())
                }
            }));
        }
        for t in tasks {
            match t.await? {
                Ok(()) => closed += 1,
                Err(e) => {
                    not_closed += 1;
                    first_err.get_or_insert(e);
                }
            }
        }
        if started.elapsed() >= Duration::from_secs_f64(args.duration) {
            break;
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in controls {
        h.await?;
    }
    // Log lines are written as sessions end; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let warnings = match (warnings_before, log_count(log, needle)) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let reasons = log.map(reason_histogram).unwrap_or_default();
    let ok = stats.ok.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let max_lat = Duration::from_micros(stats.max_latency_us.load(Ordering::Relaxed));
    result(
        "mutate",
        &[
            ("sessions", sessions.to_string()),
            ("closed_by_server", closed.to_string()),
            ("not_closed", not_closed.to_string()),
            ("malformed", malformed.to_string()),
            (
                "logged_closes",
                warnings.map_or("?".into(), |w| w.to_string()),
            ),
            ("seconds", format!("{:.1}", elapsed.as_secs_f64())),
            ("control_ok", ok.to_string()),
            ("control_errors", errors.to_string()),
            ("control_max_ms", ms(max_lat)),
        ],
    );
    let mut top: Vec<_> = reasons.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    for (reason, n) in top.iter().take(15) {
        println!("RESULT mutate reason={reason:?} count={n}");
    }
    if top.len() > 15 {
        println!("RESULT mutate other_reasons={}", top.len() - 15);
    }
    checks.check(
        "mutate.bad-sessions-closed",
        not_closed == 0,
        format!("{closed} of {sessions} closed by the server; first problem {first_err:?}"),
    );
    if let Some(w) = warnings {
        checks.check(
            "mutate.closes-logged",
            w >= malformed && w <= sessions,
            format!(
                "{w} 'closing milter session' warnings for {malformed} surely malformed of {sessions} sessions"
            ),
        );
    }
    checks.check(
        "mutate.control-unaffected",
        errors == 0 && ok > 0,
        format!(
            "{ok} control sessions ok, {errors} errors (first {:?}), max latency {} ms",
            stats.first_error.lock().unwrap(),
            ms(max_lat)
        ),
    );
    if let Some(pid) = c.server_pid {
        checks.check("mutate.server-alive", alive(pid), format!("pid {pid}"));
    }
    Ok(())
}

/// Counts the `error=` reasons of the close warnings, numbers removed.
fn reason_histogram(path: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read(path) else {
        return out;
    };
    for line in String::from_utf8_lossy(&text).lines() {
        if !line.contains("closing milter session") {
            continue;
        }
        let Some(i) = line.find("error=") else {
            continue;
        };
        let reason: String = line[i + 6..]
            .split(" conn=")
            .next()
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        // Numbers (lengths, bytes) vary: collapse them, and cut long texts.
        let mut reason = reason.replace("##", "#");
        while reason.contains("##") {
            reason = reason.replace("##", "#");
        }
        let reason: String = reason.trim().chars().take(70).collect();
        *out.entry(reason).or_insert(0) += 1;
    }
    out
}

// --------------------------------------------------------------- failures

async fn failures(args: FailuresArgs, checks: &mut Checks) -> anyhow::Result<()> {
    let c = &args.common;
    let log = c.server_log.as_deref();
    let needle = "answering with the failure policy";
    let before = log_count(log, needle);
    let stop = Arc::new(AtomicBool::new(false));
    let (stats, controls) = spawn_controls(
        args.control,
        c.socket.clone(),
        Some("X-Scripted".to_string()),
        stop.clone(),
    );
    let client = client();
    let timeout = Duration::from_millis(args.callback_timeout_ms);
    let (want_reply, want_verdict) = match args.policy {
        Policy::Tempfail => (Reply::Tempfail, Verdict::Tempfailed),
        Policy::Reject => (Reply::Reject, Verdict::Rejected),
        Policy::Continue => (Reply::Continue, Verdict::Accepted),
        Policy::Accept => (Reply::Accept, Verdict::Accepted),
    };
    let mut cases = 0;
    let mut leaks = Vec::new();
    for kind in ["panic", "hang", "error"] {
        for (stage_name, stage) in [
            ("mail", Stage::Mail),
            ("rcpt", Stage::Rcpt),
            ("eom", Stage::EndOfMessage),
        ] {
            cases += 1;
            let name = format!("failures.{kind}-at-{stage_name}");
            let message = Message::new()
                .client("client.example.net", "192.0.2.9:4567".parse()?)
                .helo("client.example.net")
                .sender(&format!("{kind}.{stage_name}@example.org"))
                .rcpt("rcpt@example.net")
                .header("Subject", "failing")
                .body("Body.\r\n");
            let start = Instant::now();
            let mut conn = match client.connect(c.socket.as_str()).await {
                Ok(conn) => conn,
                Err(e) => {
                    checks.check(&name, false, format!("connect: {e}"));
                    continue;
                }
            };
            let outcome = conn.send_message(&message).await;
            let took = start.elapsed();
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    checks.check(&name, false, format!("message: {e}"));
                    continue;
                }
            };
            let reply = outcome.reply_at(stage).cloned();
            // Under `continue` an EOM failure accepts: EOM's reply is CONTINUE.
            let reply_ok = reply.as_ref() == Some(&want_reply);
            // The header is added before the EOM callback fails: it must not
            // reach the MTA.
            let leaked =
                stage == Stage::EndOfMessage && has_header(&outcome.modifications, "X-Scripted");
            if leaked {
                leaks.push(format!("{kind}-at-{stage_name}"));
            }
            let time_ok = if kind == "hang" {
                took >= timeout && took < timeout + Duration::from_millis(1500)
            } else {
                took < Duration::from_millis(args.max_latency_ms)
            };
            // The same connection carries on with a normal message.
            let next = conn.send_message(&control_message(7, false)).await;
            let next_ok = matches!(&next, Ok(o) if o.verdict == Verdict::Accepted && has_header(&o.modifications, "X-Scripted"));
            let _ = conn.quit().await;
            checks.check(
                &name,
                reply_ok && outcome.verdict == want_verdict && time_ok && next_ok,
                format!(
                    "reply {reply:?} (want {want_reply:?}), verdict {} (want {want_verdict}), \
                     took {} ms, \
                     next message on the same connection: {}",
                    outcome.verdict,
                    ms(took),
                    match &next {
                        Ok(o) => format!("{}", o.verdict),
                        Err(e) => e.to_string(),
                    }
                ),
            );
        }
    }
    checks.check(
        "failures.failed-eom-modifications-dropped",
        leaks.is_empty(),
        format!("modifications made by a failed EOM callback reached the MTA in: {leaks:?}"),
    );
    stop.store(true, Ordering::Relaxed);
    for h in controls {
        h.await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = stats.ok.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let max_lat = Duration::from_micros(stats.max_latency_us.load(Ordering::Relaxed));
    result(
        "failures",
        &[
            ("cases", cases.to_string()),
            ("control_ok", ok.to_string()),
            ("control_errors", errors.to_string()),
            ("control_max_ms", ms(max_lat)),
        ],
    );
    checks.check(
        "failures.control-unaffected",
        errors == 0 && ok > 0 && max_lat < Duration::from_millis(args.max_latency_ms),
        format!(
            "{ok} control sessions ok, {errors} errors (first {:?}), max latency {} ms while callbacks hung",
            stats.first_error.lock().unwrap(),
            ms(max_lat)
        ),
    );
    if let (Some(b), Some(a)) = (before, log_count(log, needle)) {
        checks.check(
            "failures.logged-once",
            a - b == cases,
            format!(
                "{} failure-policy warnings for {cases} failing callbacks",
                a - b
            ),
        );
    }
    if let Some(pid) = c.server_pid {
        checks.check("failures.server-alive", alive(pid), format!("pid {pid}"));
    }
    Ok(())
}

// ---------------------------------------------------------- greylist crash

async fn greylist_crash(args: GreylistArgs, checks: &mut Checks) -> anyhow::Result<()> {
    greylist::run(args, checks).await
}

mod greylist {
    //! kill -9 of greylist-filter under load.
    use super::*;

    /// A tuple: client IP, sender, recipient. Each gets its own /24 so
    /// that host trust (off in the configuration anyway) cannot stand in
    /// for a lost tuple.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub(super) struct Tuple {
        pub(super) n: u64,
    }

    impl Tuple {
        fn message(&self) -> Message {
            let n = self.n;
            let ip = format!("10.{}.{}.7:25", (n >> 8) & 0xff, n & 0xff);
            Message::new()
                .client("client.example.net", ip.parse().expect("an address"))
                .helo("client.example.net")
                .sender(&format!("s{n}@sender.example"))
                .rcpt(&format!("r{n}@rcpt.example"))
                .header("Subject", format!("tuple {n}"))
                .body("Hello.\r\n")
        }
    }

    struct Daemon {
        child: std::process::Child,
    }

    impl Daemon {
        /// kill -9 and reap.
        fn kill9(&mut self) -> io::Result<std::process::ExitStatus> {
            self.child.kill()?;
            self.child.wait()
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.kill9();
        }
    }

    async fn start(args: &GreylistArgs, socket: &str, round: usize) -> anyhow::Result<Daemon> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.dir.join("daemon.log"))?;
        use std::io::Write as _;
        writeln!(&log, "=== round {round}")?;
        let child = std::process::Command::new(&args.daemon)
            .arg("--config")
            .arg(args.dir.join("greylist.toml"))
            .arg("--listen")
            .arg(socket)
            .arg("--store")
            .arg(args.dir.join("greylist.redb"))
            .arg("--delay")
            .arg(format!("{}s", args.delay))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting greylist-filter")?;
        let mut d = Daemon { child };
        // Ready when a session negotiates.
        let client = client();
        for _ in 0..200 {
            if let Some(status) = d.child.try_wait()? {
                bail!("greylist-filter exited at start: {status}");
            }
            if let Ok(conn) = client.connect(socket).await {
                let _ = conn.quit().await;
                return Ok(d);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = d.kill9();
        bail!("greylist-filter did not come up within 10 s")
    }

    /// Sends a tuple's message: `Some(true)` accepted, `Some(false)`
    /// tempfailed, `None` error (daemon gone).
    async fn attempt(client: &Client, socket: &str, t: &Tuple) -> Option<bool> {
        let mut conn = client.connect(socket).await.ok()?;
        let outcome = conn.send_message(&t.message()).await.ok()?;
        let _ = conn.quit().await;
        match outcome.verdict {
            Verdict::Accepted => Some(true),
            Verdict::Tempfailed => Some(false),
            _ => None,
        }
    }

    /// Retries every tuple (in `parallel` tasks); the ones not accepted at
    /// once.
    async fn verify(client: &Client, socket: &str, tuples: &[Tuple], parallel: usize) -> Vec<u64> {
        let chunk = tuples.len().div_ceil(parallel.max(1)).max(1);
        let mut tasks = Vec::new();
        for part in tuples.chunks(chunk) {
            let (client, socket, part) = (client.clone(), socket.to_string(), part.to_vec());
            tasks.push(tokio::spawn(async move {
                let mut lost = Vec::new();
                for t in &part {
                    if attempt(&client, &socket, t).await != Some(true) {
                        lost.push(t.n);
                    }
                }
                lost
            }));
        }
        let mut lost = Vec::new();
        for t in tasks {
            lost.extend(t.await.unwrap_or_default());
        }
        lost.sort();
        lost
    }

    pub(super) async fn run(args: GreylistArgs, checks: &mut Checks) -> anyhow::Result<()> {
        std::fs::create_dir_all(&args.dir)?;
        let _ = std::fs::remove_file(args.dir.join("greylist.redb"));
        std::fs::write(
            args.dir.join("greylist.toml"),
            "[greylist]\nretry_window = \"1h\"\n\n[host_trust]\nthreshold = 0\n",
        )?;
        let socket = format!("unix:{}", args.dir.join("greylist.sock").display());
        let client = Client::new(ClientConfig::default().with_timeouts(Duration::from_secs(5)));
        let delay = Duration::from_secs(args.delay);
        let passed: Arc<std::sync::Mutex<Vec<Tuple>>> = Arc::default();
        let next = Arc::new(AtomicU64::new(1));
        let mut rng = Rng::new(args.seed);
        let (mut starts_ok, mut lost_total, mut verified_total) = (0usize, 0usize, 0usize);
        let mut load_errors = 0u64;
        for round in 0..args.rounds {
            let mut daemon = match start(&args, &socket, round).await {
                Ok(d) => d,
                Err(e) => {
                    checks.check(&format!("greylist.round-{round}-store-opens"), false, e);
                    break;
                }
            };
            starts_ok += 1;
            // Every tuple acknowledged so far passes at once.
            let known: Vec<Tuple> = passed.lock().unwrap().clone();
            let lost = verify(&client, &socket, &known, args.parallel).await;
            verified_total += known.len();
            lost_total += lost.len();
            if !lost.is_empty() || round == 0 || round + 1 == args.rounds {
                checks.check(
                    &format!("greylist.round-{round}-nothing-lost"),
                    lost.is_empty(),
                    format!(
                        "{} acknowledged tuples retried after restart, lost {:?}",
                        known.len(),
                        lost
                    ),
                );
            }
            // Load: each task greylists new tuples, retries them after the
            // delay, records the passes, and retries passed ones.
            let load_for = delay
                + Duration::from_millis(200)
                + Duration::from_millis(rng.below(args.max_load_ms as usize) as u64);
            let mut tasks = Vec::new();
            let stop = Arc::new(AtomicBool::new(false));
            let errors = Arc::new(AtomicU64::new(0));
            for _ in 0..args.parallel {
                let (client, socket, passed, next, stop, errors) = (
                    client.clone(),
                    socket.clone(),
                    passed.clone(),
                    next.clone(),
                    stop.clone(),
                    errors.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut pending: Vec<(Tuple, Instant)> = Vec::new();
                    for _ in 0..100_000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let now = Instant::now();
                        if let Some(i) = pending.iter().position(|(_, t)| now >= *t) {
                            let (t, _) = pending.swap_remove(i);
                            match attempt(&client, &socket, &t).await {
                                Some(true) => passed.lock().unwrap().push(t),
                                Some(false) => pending.push((t, now + Duration::from_millis(200))),
                                None => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        } else if pending.len() < 20 {
                            let t = Tuple {
                                n: next.fetch_add(1, Ordering::Relaxed),
                            };
                            match attempt(&client, &socket, &t).await {
                                Some(false) => pending.push((t, Instant::now() + delay)),
                                // Accepted at the first attempt would be a bug
                                // in greylisting; not this test's business.
                                Some(true) => {}
                                None => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }));
            }
            tokio::time::sleep(load_for).await;
            // kill -9 in the middle of the load.
            let errors_before_kill = errors.load(Ordering::Relaxed);
            let status = daemon.kill9()?;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                let _ = t.await;
            }
            load_errors += errors_before_kill;
            result(
                "greylist",
                &[
                    ("round", round.to_string()),
                    ("load_ms", load_for.as_millis().to_string()),
                    ("killed", format!("{status}")),
                    (
                        "acknowledged_total",
                        passed.lock().unwrap().len().to_string(),
                    ),
                    ("verified", known.len().to_string()),
                    ("lost", lost.len().to_string()),
                    ("errors_before_kill", errors_before_kill.to_string()),
                ],
            );
        }
        // A last start: the store opens and everything is still there.
        let final_known: Vec<Tuple> = passed.lock().unwrap().clone();
        match start(&args, &socket, args.rounds).await {
            Ok(mut d) => {
                starts_ok += 1;
                let lost = verify(&client, &socket, &final_known, args.parallel).await;
                lost_total += lost.len();
                verified_total += final_known.len();
                checks.check(
                    "greylist.final-nothing-lost",
                    lost.is_empty(),
                    format!(
                        "{} acknowledged tuples after {} kills, lost {:?}",
                        final_known.len(),
                        args.rounds,
                        lost
                    ),
                );
                let _ = d.kill9();
            }
            Err(e) => checks.check("greylist.final-store-opens", false, e),
        }
        result(
            "greylist",
            &[
                ("rounds", args.rounds.to_string()),
                ("starts_ok", starts_ok.to_string()),
                ("acknowledged", final_known.len().to_string()),
                ("retries_verified", verified_total.to_string()),
                ("lost", lost_total.to_string()),
                ("errors_before_kills", load_errors.to_string()),
            ],
        );
        checks.check(
            "greylist.store-opens-every-time",
            starts_ok == args.rounds + 1,
            format!("{starts_ok} of {} starts after kill -9", args.rounds + 1),
        );
        checks.check(
            "greylist.no-errors-under-load",
            load_errors == 0,
            format!("{load_errors} failed attempts while the daemon was up"),
        );
        checks.check(
            "greylist.tuples-passed",
            !final_known.is_empty(),
            format!("{} tuples passed greylisting under load", final_known.len()),
        );
        Ok(())
    }
}

// ------------------------------------------------------------------- main

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Scenario::Serve(args) = cli.scenario {
        return runtime.block_on(serve(args));
    }
    let mut checks = Checks {
        xfail: cli.xfail.clone(),
        ..Checks::default()
    };
    let max = match &cli.scenario {
        Scenario::Slowloris(a) => a.common.max_seconds,
        Scenario::Flood(a) => a.common.max_seconds,
        Scenario::Mutate(a) => a.common.max_seconds,
        Scenario::Failures(a) => a.common.max_seconds,
        Scenario::GreylistCrash(a) => a.max_seconds,
        Scenario::Serve(_) => unreachable!("handled above"),
    };
    let run = async {
        match cli.scenario {
            Scenario::Slowloris(a) => slowloris(a, &mut checks).await,
            Scenario::Flood(a) => flood(a, &mut checks).await,
            Scenario::Mutate(a) => mutate_scenario(a, &mut checks).await,
            Scenario::Failures(a) => failures(a, &mut checks).await,
            Scenario::GreylistCrash(a) => greylist_crash(a, &mut checks).await,
            Scenario::Serve(_) => unreachable!("handled above"),
        }
    };
    let outcome =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(max), run).await });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => checks.check("scenario", false, format!("{e:#}")),
        Err(_) => checks.check("scenario", false, format!("did not finish within {max} s")),
    }
    println!("SUMMARY {} passed, {} failed", checks.passed, checks.failed);
    // Leftover tasks (held connections) are dropped with the runtime.
    drop(runtime);
    std::process::exit(i32::from(checks.failed > 0));
}
