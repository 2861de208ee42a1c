//! The load benchmark: our milter servers against the floor (`nullmilter.c`)
//! and C libmilter (`cmilter.c`), all driven with the same Postfix-like
//! load in the same run, reported as ratios.
//!
//! ```text
//! cargo run --release -p milter-benches --bin load -- [--quick] [--messages N] [--extra LABEL=CMD]
//! ```
//!
//! Sections (all by default, `--sections` picks some):
//! - `matrix`: connections 1, 8, 64 x (new connection per message, 100 messages
//!   per connection), every server, `--runs` times, round robin so drift hits
//!   every server alike;
//! - `gen`: this generator against `milterload.c` on the null server (is the
//!   generator the bottleneck?);
//! - `cross`: a subset of the matrix with both generators back to back;
//! - `tcp`: one session over TCP against one session over a unix socket
//!   (the 40 ms Nagle / delayed-ACK stall shows as ~23 msg/s), and over TCP
//!   with `TCP_NODELAY` on the client; with `null-skip`, the floor for
//!   add-header's conversation;
//! - `idle`: RSS with 1,000 and 10,000 idle negotiated connections.

mod generator;
mod servers;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

use generator::{Packets, Report, Spec, Target};
use servers::{Group, Sample, Server, ServerDef};

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Milter load benchmark: Rust servers vs the null server and C libmilter")]
struct Args {
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Concurrent connections, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    conns: Vec<usize>,
    /// Messages per connection, comma separated (1 = a new connection per
    /// message, as Postfix does).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    per_conn: Vec<u64>,
    /// No new message is started after this many seconds in one run of the
    /// matrix (bounds the run time on a slow machine; rates and CPU per
    /// message stay comparable). 0 = no limit.
    #[arg(long, default_value_t = 5.0)]
    max_secs: f64,
    /// How many times the whole matrix is run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Headers per message.
    #[arg(long, default_value_t = 10)]
    headers: usize,
    /// Idle-connection counts for the RSS test, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<usize>,
    /// Seconds each single-session TCP/unix run lasts at most.
    #[arg(long, default_value_t = 3.0)]
    tcp_secs: f64,
    /// Sections to run: matrix, gen, cross, tcp, idle.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "matrix,gen,cross,tcp,idle"
    )]
    sections: Vec<String>,
    /// Smaller default matrix: 5,000 messages, 1,000 idle connections,
    /// 2 s TCP runs, 2 s per run.
    #[arg(long)]
    quick: bool,
    /// Run only these built-in servers (comma separated labels; the
    /// baselines of the groups left are needed for the ratios). Extras
    /// always run.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// An extra filter compared on the accept path: LABEL=COMMAND. `{spec}`
    /// in COMMAND is replaced by the socket; without it `--listen SPEC` is
    /// appended.
    #[arg(long, value_name = "LABEL=CMD")]
    extra: Vec<String>,
    /// Client worker threads: 0 = one current-thread runtime (default).
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
    /// Directory holding nullmilter.c, cmilter.c and milterload.c.
    #[arg(long)]
    harness: Option<PathBuf>,
    /// Directory of the release binaries accept-all and add-header.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run `cargo build --release` for accept-all and add-header even if
    /// they exist.
    #[arg(long)]
    build: bool,
    /// Also write every measurement as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Limit for one message (seconds).
    #[arg(long, default_value_t = 30)]
    io_timeout: u64,
}

/// One measurement.
#[derive(Debug, Clone)]
struct Row {
    section: &'static str,
    generator: &'static str,
    server: String,
    group: Group,
    transport: &'static str,
    conns: usize,
    per_conn: u64,
    run: usize,
    ok: u64,
    failed: u64,
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    srv_cpu_ms_per_k: f64,
    cli_cpu_ms_per_k: f64,
    rss_kb: u64,
    errors: String,
}

struct Bench {
    rt: tokio::runtime::Runtime,
    pk: Arc<Packets>,
    args: Args,
    rows: Vec<Row>,
    out: String,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        if args.messages == 20_000 {
            args.messages = 5_000;
        }
        if args.max_secs == 5.0 {
            args.max_secs = 2.0;
        }
        if args.idle == [1000, 10000] {
            args.idle = vec![1000];
        }
        if args.tcp_secs == 3.0 {
            args.tcp_secs = 2.0;
        }
    }
    let rt = if args.client_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()?
    };
    servers::kill_children_on_signal();
    let harness = servers::find_harness(args.harness.clone())?;
    let work = tempfile::Builder::new().prefix("milter-load-").tempdir()?;
    let cache = target_dir().join("load-bench");
    std::fs::create_dir_all(&cache)?;
    let null = cache.join("nullmilter");
    let cmilter = cache.join("cmilter");
    let milterload = cache.join("milterload");
    servers::gcc(&harness.join("nullmilter.c"), &null, &[])?;
    servers::gcc(
        &harness.join("cmilter.c"),
        &cmilter,
        &["-lmilter", "-lpthread"],
    )?;
    servers::gcc(&harness.join("milterload.c"), &milterload, &["-lpthread"])?;
    let bin_dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("release"));
    let ours = ["accept-all", "add-header", "add-header-full"];
    if args.build || ours.iter().any(|b| !bin_dir.join(b).is_file()) {
        eprintln!("building accept-all, add-header and add-header-full (release)");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "milter-examples"])
            .args(["-p", "milter-benches", "--bin", "add-header-full"])
            .args(["--bin", "accept-all", "--bin", "add-header"])
            .status()?;
        if !status.success() {
            bail!("cargo build failed");
        }
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let p = |b: &Path| b.display().to_string();
    let mut defs = vec![
        ServerDef {
            label: "null".into(),
            group: Group::Accept,
            argv: [vec![p(&null)], s(&["-p", "{spec}", "-m", "accept"])].concat(),
        },
        ServerDef {
            label: "libmilter".into(),
            group: Group::Accept,
            argv: [vec![p(&cmilter)], s(&["-p", "{spec}", "-m", "accept"])].concat(),
        },
        ServerDef {
            label: "accept-all".into(),
            group: Group::Accept,
            argv: [
                vec![p(&bin_dir.join("accept-all"))],
                s(&["--listen", "{spec}", "--socket-mode", "600"]),
                s(&["--max-connections", "20000"]),
            ]
            .concat(),
        },
        ServerDef {
            label: "null-ah".into(),
            group: Group::AddHeader,
            argv: [vec![p(&null)], s(&["-p", "{spec}", "-m", "addheader"])].concat(),
        },
        ServerDef {
            label: "libmilter-ah".into(),
            group: Group::AddHeader,
            argv: [vec![p(&cmilter)], s(&["-p", "{spec}", "-m", "addheader"])].concat(),
        },
        ServerDef {
            label: "add-header".into(),
            group: Group::AddHeader,
            argv: [
                vec![p(&bin_dir.join("add-header"))],
                s(&["--listen", "{spec}", "--socket-mode", "600"]),
                s(&["--max-connections", "20000"]),
                s(&["--name", "X-CMilter", "--value", "seen"]),
            ]
            .concat(),
        },
        ServerDef {
            label: "add-header-full".into(),
            group: Group::AddHeader,
            argv: [
                vec![p(&bin_dir.join("add-header-full"))],
                s(&["--listen", "{spec}", "--max-connections", "20000"]),
            ]
            .concat(),
        },
    ];
    if !args.only.is_empty() {
        defs.retain(|d| args.only.contains(&d.label));
    }
    for e in &args.extra {
        let (label, cmd) = e
            .split_once('=')
            .with_context(|| format!("--extra wants LABEL=CMD, got {e:?}"))?;
        let mut argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        if argv.is_empty() {
            bail!("--extra {label}: empty command");
        }
        if !argv.iter().any(|a| a.contains("{spec}")) {
            argv.extend(s(&["--listen", "{spec}"]));
        }
        defs.push(ServerDef {
            label: label.to_string(),
            group: Group::Accept,
            argv,
        });
    }
    let pk = Arc::new(Packets::new(args.body, args.headers, 1));
    let mut b = Bench {
        rt,
        pk,
        args,
        rows: Vec::new(),
        out: String::new(),
    };
    let started = Instant::now();
    b.header();
    let want = |s: &str| b.args.sections.iter().any(|x| x == s);
    let (m, g, c, t, i) = (
        want("matrix"),
        want("gen"),
        want("cross"),
        want("tcp"),
        want("idle"),
    );
    if m || g || c {
        let mut running = Vec::new();
        for d in &defs {
            running.push(Server::start(d, work.path(), false)?);
        }
        if m {
            b.matrix(&mut running)?;
        }
        if g {
            b.generator_check(&mut running, &milterload)?;
        }
        if c {
            b.cross_check(&mut running, &milterload)?;
        }
    }
    if t {
        let mut tcp_defs = defs.clone();
        if b.args.only.is_empty() || b.args.only.iter().any(|l| l == "null-skip") {
            tcp_defs.push(ServerDef {
                label: "null-skip".into(),
                group: Group::AddHeader,
                argv: [
                    vec![p(&servers::build_null_skip(&harness, &cache)?)],
                    s(&["-p", "{spec}", "-m", "addheader", "-q"]),
                ]
                .concat(),
            });
        }
        b.tcp(&tcp_defs, work.path())?;
    }
    if i {
        b.idle(&defs, work.path())?;
    }
    let _ = writeln!(
        b.out,
        "\nTotal time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    println!("{}", b.out);
    if let Some(path) = &b.args.csv {
        b.write_csv(path)?;
    }
    Ok(())
}

impl Args {
    /// The per-run cap of the matrix, generator and cross-check runs.
    fn cap(&self) -> Duration {
        if self.max_secs > 0.0 {
            Duration::from_secs_f64(self.max_secs)
        } else {
            Duration::from_secs(300)
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The middle value (the mean of the two middle ones for an even count):
/// one run disturbed by the machine does not move it.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn fmt_ratios(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn mode_name(per_conn: u64) -> String {
    if per_conn == 1 {
        "new connection per message".into()
    } else {
        format!("{per_conn} messages per connection")
    }
}

impl Bench {
    fn header(&mut self) {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let a = &self.args;
        let _ = writeln!(
            self.out,
            "# milter load benchmark\n\nMachine: {cpu}, {cores} cores. Load: {} messages per run (at most {} s per run), body {} B, {} headers, 1 recipient, Postfix-like v6 conversation (macros before every stage, ABORT after every message); unix sockets unless noted; runs: {}; client: {}.\n\nServers: `null` / `null-ah` = nullmilter.c -m accept / addheader (gcc -O2; one thread, epoll, the floor); `libmilter` / `libmilter-ah` = cmilter.c -m accept / addheader on Debian's libmilter; `accept-all`, `add-header` = examples/ (current-thread tokio); `add-header-full` = benches/src/bin/add-header-full.rs, milter-server walking every stage like the C add-header filters (`add-header` negotiates every stage away, so the MTA sends it only macros and EOM).",
            a.messages,
            a.max_secs,
            a.body,
            a.headers,
            a.runs,
            if a.client_threads == 0 {
                "one current-thread tokio runtime".to_string()
            } else {
                format!("multi-thread tokio runtime, {} workers", a.client_threads)
            }
        );
    }

    /// One run of this generator against `server`, with its CPU and RSS.
    fn measure(
        &mut self,
        server: &mut Server,
        section: &'static str,
        (conns, per_conn): (usize, u64),
        messages: u64,
        duration: Duration,
        run: usize,
    ) -> Row {
        let nodelay = server.client_nodelay;
        let spec = Spec {
            target: server.target.clone(),
            conns,
            messages,
            per_conn,
            io_timeout: Duration::from_secs(self.args.io_timeout),
            duration,
            nodelay,
        };
        let s0 = server.sample();
        let c0 = Sample::me();
        let report: Report = self.rt.block_on(generator::run(
            self.pk.clone(),
            spec,
            duration + Duration::from_secs(60),
        ));
        let s1 = server.sample();
        let c1 = Sample::me();
        let ok = report.stats.ok.max(1) as f64;
        let mut errors = report.stats.error_summary();
        if !server.alive() {
            errors = format!("SERVER DIED; {errors}");
        }
        let row = Row {
            section,
            generator: "rust",
            server: server.def.label.clone(),
            group: server.def.group,
            transport: match server.target {
                Target::Unix(_) => "unix",
                Target::Tcp(_) if nodelay => "tcp-nodelay",
                Target::Tcp(_) => "tcp",
            },
            conns,
            per_conn,
            run,
            ok: report.stats.ok,
            failed: report.stats.failed,
            rate: report.rate(),
            p50_us: report.pct_us(0.5),
            p99_us: report.pct_us(0.99),
            srv_cpu_ms_per_k: (s1.cpu_s - s0.cpu_s) * 1e6 / ok,
            cli_cpu_ms_per_k: (c1.cpu_s - c0.cpu_s) * 1e6 / ok,
            rss_kb: s1.rss_kb,
            errors,
        };
        eprintln!(
            "{section:6} rust {:13} c={conns:<3} m={per_conn:<4} run {run}: {:>8.0} msg/s p50 {:>6.0} us p99 {:>6.0} us cpu {:>6.1} ms/1k (client {:>5.1}) rss {} kB  ok {} failed {} errors {}",
            row.server,
            row.rate,
            row.p50_us,
            row.p99_us,
            row.srv_cpu_ms_per_k,
            row.cli_cpu_ms_per_k,
            row.rss_kb,
            row.ok,
            row.failed,
            row.errors
        );
        if let Some((v, a, p)) = report.stats.negotiated
            && run == 1
            && conns == 1
        {
            eprintln!("        negotiated: version {v} actions {a:#05x} protocol {p:#08x}");
        }
        self.rows.push(row.clone());
        row
    }

    fn measure_c(
        &mut self,
        bin: &Path,
        server: &mut Server,
        section: &'static str,
        (conns, per_conn): (usize, u64),
        messages: u64,
        run: usize,
    ) -> anyhow::Result<Row> {
        let spec = Spec {
            target: server.target.clone(),
            conns,
            messages,
            per_conn,
            io_timeout: Duration::from_secs(self.args.io_timeout),
            duration: Duration::from_secs(300),
            nodelay: server.client_nodelay,
        };
        let r = servers::milterload(bin, &spec, server.pid(), self.args.body, self.args.headers)?;
        let row = Row {
            section,
            generator: "c",
            server: server.def.label.clone(),
            group: server.def.group,
            transport: "unix",
            conns,
            per_conn,
            run,
            ok: r.ok,
            failed: r.fail,
            rate: r.rate,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            srv_cpu_ms_per_k: r.srv_cpu_ms_per_k,
            cli_cpu_ms_per_k: r.cli_cpu_ms_per_k,
            rss_kb: r.srv_rss_kb,
            errors: if r.errs > 0 {
                format!("errs={}", r.errs)
            } else {
                "-".into()
            },
        };
        eprintln!(
            "{section:6} C    {:13} c={conns:<3} m={per_conn:<4} run {run}: {:>8.0} msg/s p50 {:>6.0} us p99 {:>6.0} us cpu {:>6.1} ms/1k (client {:>5.1}) rss {} kB  ok {} failed {}",
            row.server,
            row.rate,
            row.p50_us,
            row.p99_us,
            row.srv_cpu_ms_per_k,
            row.cli_cpu_ms_per_k,
            row.rss_kb,
            row.ok,
            row.failed
        );
        self.rows.push(row.clone());
        Ok(row)
    }

    fn matrix(&mut self, running: &mut [Server]) -> anyhow::Result<()> {
        let (conns, modes, runs, n, cap) = (
            self.args.conns.clone(),
            self.args.per_conn.clone(),
            self.args.runs,
            self.args.messages,
            self.args.cap(),
        );
        // Warm-up: one short run per server (first-connection costs, page faults).
        for s in running.iter_mut() {
            self.measure(s, "warmup", (8, 1), n.min(2000), Duration::from_secs(30), 0);
        }
        self.rows.retain(|r| r.section != "warmup");
        for run in 1..=runs {
            for &m in &modes {
                for &c in &conns {
                    for s in running.iter_mut() {
                        self.measure(s, "matrix", (c, m), n, cap, run);
                    }
                }
            }
        }
        let _ = writeln!(
            self.out,
            "\n## Throughput, latency, CPU, RSS (this generator)\n\nEvery cell was measured side by side in the same invocation (round robin over the servers, {runs} runs). Ratios are per run (run 1 / run 2 ...), each against the baseline of its own group measured in the same round: `null` = nullmilter.c, `libmilter` = cmilter.c (accept group); `null-ah`, `libmilter-ah` (add-header group). msg/s, latency and CPU are means over the runs. CPU = server utime+stime per 1,000 messages; RSS after the run."
        );
        for &m in &modes {
            let _ = writeln!(self.out, "\n### {}\n", mode_name(m));
            let _ = writeln!(
                self.out,
                "| conns | server | msg/s | x null | x libmilter | p50 us | p99 us | CPU ms/1k | x null | x libmilter | RSS MB | x null | x libmilter | errors |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            );
            for &c in &conns {
                for s in running.iter() {
                    self.matrix_line("matrix", c, m, &s.def.label.clone(), s.def.group);
                }
            }
        }
        self.goals(&conns, &modes);
        Ok(())
    }

    fn rows_of(&self, section: &str, generator: &str, server: &str, c: usize, m: u64) -> Vec<Row> {
        let mut v: Vec<Row> = self
            .rows
            .iter()
            .filter(|r| {
                r.section == section
                    && r.generator == generator
                    && r.server == server
                    && r.conns == c
                    && r.per_conn == m
            })
            .cloned()
            .collect();
        v.sort_by_key(|r| r.run);
        v
    }

    fn baselines(group: Group) -> (&'static str, &'static str) {
        match group {
            Group::Accept => ("null", "libmilter"),
            Group::AddHeader => ("null-ah", "libmilter-ah"),
        }
    }

    /// Per-run ratios of `f` for `server` against `base`.
    fn ratios(
        &self,
        section: &str,
        generator: &str,
        (server, base): (&str, &str),
        (c, m): (usize, u64),
        f: fn(&Row) -> f64,
    ) -> Vec<f64> {
        let a = self.rows_of(section, generator, server, c, m);
        let b = self.rows_of(section, generator, base, c, m);
        a.iter()
            .filter_map(|x| {
                b.iter()
                    .find(|y| y.run == x.run)
                    .map(|y| f(x) / f(y).max(1e-9))
            })
            .collect()
    }

    fn matrix_line(&mut self, section: &str, c: usize, m: u64, server: &str, group: Group) {
        let rows = self.rows_of(section, "rust", server, c, m);
        if rows.is_empty() {
            return;
        }
        let (null, lib) = Self::baselines(group);
        let rate = |r: &Row| r.rate;
        let cpu = |r: &Row| r.srv_cpu_ms_per_k;
        let rss = |r: &Row| r.rss_kb as f64;
        let avg = |f: fn(&Row) -> f64| mean(&rows.iter().map(f).collect::<Vec<_>>());
        let errors: Vec<String> = rows
            .iter()
            .filter(|r| r.errors != "-" || r.failed > 0)
            .map(|r| format!("run {}: failed {} {}", r.run, r.failed, r.errors))
            .collect();
        let line = format!(
            "| {c} | {server} | {:.0} | {} | {} | {:.0} | {:.0} | {:.1} | {} | {} | {:.1} | {} | {} | {} |",
            avg(rate),
            fmt_ratios(&self.ratios(section, "rust", (server, null), (c, m), rate)),
            fmt_ratios(&self.ratios(section, "rust", (server, lib), (c, m), rate)),
            avg(|r| r.p50_us),
            avg(|r| r.p99_us),
            avg(cpu),
            fmt_ratios(&self.ratios(section, "rust", (server, null), (c, m), cpu)),
            fmt_ratios(&self.ratios(section, "rust", (server, lib), (c, m), cpu)),
            avg(rss) / 1024.0,
            fmt_ratios(&self.ratios(section, "rust", (server, null), (c, m), rss)),
            fmt_ratios(&self.ratios(section, "rust", (server, lib), (c, m), rss)),
            if errors.is_empty() {
                "-".to_string()
            } else {
                errors.join("; ")
            }
        );
        let _ = writeln!(self.out, "{line}");
    }

    fn goals(&mut self, conns: &[usize], modes: &[u64]) {
        let mut ours: Vec<(String, Group)> = vec![
            ("accept-all".into(), Group::Accept),
            ("add-header".into(), Group::AddHeader),
            ("add-header-full".into(), Group::AddHeader),
        ];
        for e in &self.args.extra {
            if let Some((l, _)) = e.split_once('=') {
                ours.push((l.to_string(), Group::Accept));
            }
        }
        let _ = writeln!(
            self.out,
            "\n### Goals: at 8 and 64 connections >= 0.85x the null server's msg/s and <= 1.3x its CPU per message\n\nThe verdict takes the median of the per-run ratios (in brackets), so that one run disturbed by the machine does not decide it.\n\n| server | conns | mode | msg/s x null, median (runs) | CPU x null, median (runs) | verdict |\n|---|---:|---|---:|---:|---|"
        );
        for (server, group) in ours {
            let (null, _) = Self::baselines(group);
            for &m in modes {
                for &c in conns.iter().filter(|&&c| c >= 8) {
                    let r = self.ratios("matrix", "rust", (&server, null), (c, m), |r| r.rate);
                    let p = self.ratios("matrix", "rust", (&server, null), (c, m), |r| {
                        r.srv_cpu_ms_per_k
                    });
                    if r.is_empty() {
                        continue;
                    }
                    let (rm, pm) = (median(&r), median(&p));
                    let verdict = match (rm >= 0.85, pm <= 1.3) {
                        (true, true) => "met",
                        (false, true) => "MISSED (throughput)",
                        (true, false) => "MISSED (CPU)",
                        (false, false) => "MISSED (throughput, CPU)",
                    };
                    let _ = writeln!(
                        self.out,
                        "| {server} | {c} | {} | {rm:.2} ({}) | {pm:.2} ({}) | {verdict} |",
                        mode_name(m),
                        fmt_ratios(&r),
                        fmt_ratios(&p),
                    );
                }
            }
        }
    }

    /// This generator against milterload.c on the null server.
    fn generator_check(&mut self, running: &mut [Server], milterload: &Path) -> anyhow::Result<()> {
        let n = self.args.messages;
        let configs = [(8usize, 1u64), (64, 1), (8, 100), (64, 100)];
        let Some(null) = running.iter_mut().find(|s| s.def.label == "null") else {
            return Ok(());
        };
        for run in 1..=self.args.runs {
            for &(c, m) in &configs {
                // The C generator sends as many messages as this one did.
                let r = self.measure(null, "gen", (c, m), n, self.args.cap(), run);
                self.measure_c(milterload, null, "gen", (c, m), r.ok.max(1), run)?;
            }
        }
        let _ = writeln!(
            self.out,
            "\n## Is the generator the bottleneck? This generator vs milterload.c on the null server\n\nBack to back in the same invocation, {} runs; values are per run; the C generator sends as many messages as this one completed in its run. Client CPU = the generator's own utime+stime per 1,000 messages.\n\n| conns | mode | msg/s rust | msg/s C | rust / C | client CPU ms/1k rust | client CPU ms/1k C | null server CPU ms/1k, rust gen - C gen |\n|---:|---|---:|---:|---:|---:|---:|---:|",
            self.args.runs
        );
        for &(c, m) in &configs {
            let r = self.rows_of("gen", "rust", "null", c, m);
            let k = self.rows_of("gen", "c", "null", c, m);
            let join = |v: &[Row], f: fn(&Row) -> f64, prec: usize| {
                v.iter()
                    .map(|x| format!("{:.*}", prec, f(x)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let ratio: Vec<f64> = r
                .iter()
                .zip(&k)
                .map(|(a, b)| a.rate / b.rate.max(1e-9))
                .collect();
            let _ = writeln!(
                self.out,
                "| {c} | {} | {} | {} | {} | {} | {} | {} - {} |",
                mode_name(m),
                join(&r, |x| x.rate, 0),
                join(&k, |x| x.rate, 0),
                fmt_ratios(&ratio),
                join(&r, |x| x.cli_cpu_ms_per_k, 1),
                join(&k, |x| x.cli_cpu_ms_per_k, 1),
                join(&r, |x| x.srv_cpu_ms_per_k, 1),
                join(&k, |x| x.srv_cpu_ms_per_k, 1),
            );
        }
        Ok(())
    }

    /// A subset of the matrix with both generators, back to back.
    fn cross_check(&mut self, running: &mut [Server], milterload: &Path) -> anyhow::Result<()> {
        let n = self.args.messages;
        let configs = [(8usize, 1u64), (64, 100)];
        let labels = ["null", "libmilter", "accept-all"];
        for &(c, m) in &configs {
            for s in running
                .iter_mut()
                .filter(|s| labels.contains(&s.def.label.as_str()))
            {
                let r = self.measure(s, "cross", (c, m), n, self.args.cap(), 1);
                self.measure_c(milterload, s, "cross", (c, m), r.ok.max(1), 1)?;
            }
        }
        let _ = writeln!(
            self.out,
            "\n## Cross-check with milterload.c (same servers, back to back, one run)\n\n| conns | mode | server | msg/s rust gen | x null | msg/s C gen | x null | CPU ms/1k rust gen | x null | CPU ms/1k C gen | x null |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &(c, m) in &configs {
            for l in labels {
                let r = self.rows_of("cross", "rust", l, c, m);
                let k = self.rows_of("cross", "c", l, c, m);
                let (Some(r), Some(k)) = (r.first(), k.first()) else {
                    continue;
                };
                let rr = self.ratios("cross", "rust", (l, "null"), (c, m), |x| x.rate);
                let kr = self.ratios("cross", "c", (l, "null"), (c, m), |x| x.rate);
                let rc = self.ratios("cross", "rust", (l, "null"), (c, m), |x| x.srv_cpu_ms_per_k);
                let kc = self.ratios("cross", "c", (l, "null"), (c, m), |x| x.srv_cpu_ms_per_k);
                let _ = writeln!(
                    self.out,
                    "| {c} | {} | {l} | {:.0} | {} | {:.0} | {} | {:.1} | {} | {:.1} | {} |",
                    mode_name(m),
                    r.rate,
                    fmt_ratios(&rr),
                    k.rate,
                    fmt_ratios(&kr),
                    r.srv_cpu_ms_per_k,
                    fmt_ratios(&rc),
                    k.srv_cpu_ms_per_k,
                    fmt_ratios(&kc),
                );
            }
        }
        Ok(())
    }

    /// One session over TCP vs one session over a unix socket, and over TCP
    /// again with `TCP_NODELAY` on the client.
    fn tcp(&mut self, defs: &[ServerDef], dir: &Path) -> anyhow::Result<()> {
        /// One run of one server: unix, TCP and TCP with a no-delay client.
        struct Run {
            unix: f64,
            tcp: Row,
            nodelay: f64,
        }
        let secs = Duration::from_secs_f64(self.args.tcp_secs);
        let n = self.args.messages;
        let mut results: BTreeMap<String, Vec<Run>> = BTreeMap::new();
        for run in 1..=self.args.runs {
            for d in defs {
                let mut u = Server::start(d, dir, false)?;
                let unix = self.measure(&mut u, "tcp", (1, n), n, secs, run).rate;
                drop(u);
                let mut t = Server::start(d, dir, true)?;
                let tcp = self.measure(&mut t, "tcp", (1, n), n, secs, run);
                drop(t);
                let mut t = Server::start(d, dir, true)?;
                t.client_nodelay = true;
                let nodelay = self.measure(&mut t, "tcp", (1, n), n, secs, run).rate;
                drop(t);
                results
                    .entry(d.label.clone())
                    .or_default()
                    .push(Run { unix, tcp, nodelay });
            }
        }
        let _ = writeln!(
            self.out,
            "\n## One session: TCP (127.0.0.1) vs unix socket\n\nOne connection, all messages on it, each run at most {:.0} s. \"TCP\": no TCP_NODELAY on the client, as Postfix; a 40 ms Nagle/delayed-ACK stall per message shows as ~23 msg/s. \"NODELAY\": the same over TCP with TCP_NODELAY on the client. `null-skip` is nullmilter.c negotiating what add-header negotiates (only macros and end of message reach it), with `-q` (TCP_QUICKACK re-armed after reads): the floor for add-header's conversation. Values per run.\n\n| server | unix msg/s | TCP msg/s | TCP / unix | TCP p50 us | TCP p99 us | NODELAY msg/s | NODELAY / unix |\n|---|---:|---:|---:|---:|---:|---:|---:|",
            self.args.tcp_secs
        );
        for d in defs {
            let Some(v) = results.get(&d.label) else {
                continue;
            };
            let j = |f: &dyn Fn(&Run) -> f64| {
                v.iter()
                    .map(|x| format!("{:.0}", f(x)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let ratio = |f: &dyn Fn(&Run) -> f64| {
                fmt_ratios(
                    &v.iter()
                        .map(|x| f(x) / x.unix.max(1e-9))
                        .collect::<Vec<_>>(),
                )
            };
            let _ = writeln!(
                self.out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                d.label,
                j(&|x| x.unix),
                j(&|x| x.tcp.rate),
                ratio(&|x| x.tcp.rate),
                j(&|x| x.tcp.p50_us),
                j(&|x| x.tcp.p99_us),
                j(&|x| x.nodelay),
                ratio(&|x| x.nodelay),
            );
        }
        Ok(())
    }

    /// RSS with idle negotiated connections, each server started fresh.
    fn idle(&mut self, defs: &[ServerDef], dir: &Path) -> anyhow::Result<()> {
        let limit = servers::nofile_limit();
        let _ = writeln!(
            self.out,
            "\n## RSS with idle negotiated connections\n\nEach server freshly started, warmed up with 100 messages on one connection, then N connections opened (OPTNEG + CONNECT, 64 handshakes in flight) and held idle 2 s; RSS before and while idle; then one message on every held connection. Open-files limit of the generator (inherited by the servers): {limit}.\n\n| server | N | established | RSS before MB | RSS idle MB | kB per idle conn | x null | x libmilter | messages after hold ok/failed | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        let mut per_conn: BTreeMap<(String, usize), f64> = BTreeMap::new();
        let mut lines = Vec::new();
        for &n in &self.args.idle.clone() {
            for d in defs.iter().filter(|d| {
                d.group == Group::Accept || d.label == "add-header" || d.label == "add-header-full"
            }) {
                if (n as u64) + 64 > limit {
                    lines.push((
                        d.label.clone(),
                        n,
                        format!(
                            "| {} | {n} | - | - | - | - | - | - | - | skipped: open-files limit {limit} (raise ulimit -n) |",
                            d.label
                        ),
                    ));
                    continue;
                }
                let mut srv = Server::start(d, dir, false)?;
                let warm = Spec {
                    target: srv.target.clone(),
                    conns: 1,
                    messages: 100,
                    per_conn: 100,
                    io_timeout: Duration::from_secs(10),
                    duration: Duration::from_secs(30),
                    nodelay: false,
                };
                self.rt.block_on(generator::run(
                    self.pk.clone(),
                    warm,
                    Duration::from_secs(60),
                ));
                std::thread::sleep(Duration::from_millis(200));
                let before = srv.sample();
                let pid = srv.pid();
                let mut during = Sample::default();
                let rep = self.rt.block_on(generator::hold(
                    self.pk.clone(),
                    srv.target.clone(),
                    n,
                    64,
                    Duration::from_secs(10),
                    Duration::from_secs(2),
                    |_| during = Sample::of(pid),
                ));
                let alive = srv.alive();
                drop(srv);
                let kb = if rep.established > 0 {
                    (during.rss_kb as f64 - before.rss_kb as f64) / rep.established as f64
                } else {
                    f64::NAN
                };
                per_conn.insert((d.label.clone(), n), kb);
                let mut notes: Vec<String> =
                    rep.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if !alive {
                    notes.insert(0, "SERVER DIED".into());
                }
                eprintln!(
                    "idle   {:13} n={n}: established {} in {:.1} s, rss {} -> {} kB ({kb:.2} kB/conn), after: ok {} failed {} {}",
                    d.label,
                    rep.established,
                    rep.secs_to_establish,
                    before.rss_kb,
                    during.rss_kb,
                    rep.after_ok,
                    rep.after_failed,
                    notes.join(", ")
                );
                lines.push((
                    d.label.clone(),
                    n,
                    format!(
                        "| {} | {n} | {} | {:.1} | {:.1} | {kb:.2} | RATIO_NULL | RATIO_LIB | {}/{} | {} |",
                        d.label,
                        rep.established,
                        before.rss_kb as f64 / 1024.0,
                        during.rss_kb as f64 / 1024.0,
                        rep.after_ok,
                        rep.after_failed,
                        if notes.is_empty() {
                            "-".into()
                        } else {
                            notes.join(", ")
                        }
                    ),
                ));
            }
        }
        for (label, n, line) in lines {
            let me = per_conn.get(&(label, n)).copied();
            let r = |base: &str| match (me, per_conn.get(&(base.to_string(), n))) {
                (Some(a), Some(b)) if b.is_finite() && *b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let line = line
                .replace("RATIO_NULL", &r("null"))
                .replace("RATIO_LIB", &r("libmilter"));
            let _ = writeln!(self.out, "{line}");
        }
        Ok(())
    }

    fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut s = String::from(
            "section,generator,server,group,transport,conns,per_conn,run,ok,failed,rate,p50_us,p99_us,srv_cpu_ms_per_k,cli_cpu_ms_per_k,rss_kb,errors\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{},{},{},{:?},{},{},{},{},{},{},{:.1},{:.0},{:.0},{:.2},{:.2},{},\"{}\"",
                r.section,
                r.generator,
                r.server,
                r.group,
                r.transport,
                r.conns,
                r.per_conn,
                r.run,
                r.ok,
                r.failed,
                r.rate,
                r.p50_us,
                r.p99_us,
                r.srv_cpu_ms_per_k,
                r.cli_cpu_ms_per_k,
                r.rss_kb,
                r.errors.replace('"', "'")
            );
        }
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_ignores_one_outlying_run() {
        assert_eq!(median(&[1.2, 1.9, 1.25]), 1.25);
        assert!((median(&[0.9, 1.1, 1.3, 5.0]) - 1.2).abs() < 1e-9);
        assert_eq!(median(&[0.7]), 0.7);
        assert!(median(&[]).is_nan());
    }
}
