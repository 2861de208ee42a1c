//! The filters under test: building the C ones, starting every one on its
//! own socket, reading their CPU time and RSS from `/proc`, and running the
//! C load generator `milterload.c` against them.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use milter_benches::proc::{cpu_seconds, status_field};

use crate::generator::{Spec, Target};

/// Compiles `src` with gcc into `out` unless `out` is newer.
pub(crate) fn gcc(src: &Path, out: &Path, libs: &[&str]) -> anyhow::Result<()> {
    let fresh = match (fs::metadata(src), fs::metadata(out)) {
        (Ok(s), Ok(o)) => o.modified()? >= s.modified()?,
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .args(libs)
        .status()
        .context("running gcc (apt-get install build-essential)")?;
    if !status.success() {
        bail!(
            "gcc failed for {} (for cmilter.c: apt-get install libmilter-dev)",
            src.display()
        );
    }
    Ok(())
}

/// The line of `nullmilter.c` that chooses its protocol flags.
const NULL_PROTOCOL_LINE: &str = "r[2] = htonl(0x100 | (nodata ? 0x200 : 0));";

/// Builds `null-skip`: `nullmilter.c` negotiating exactly what `add-header`
/// negotiates (every stage skipped, protocol 0x77f), so that the MTA sends it
/// only macros and end of message. It is the floor for add-header's
/// conversation; `nullmilter -m addheader` walks every stage instead. Made
/// from the harness source with that one line changed, so that it is the
/// same server otherwise.
pub(crate) fn build_null_skip(harness: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let src = harness.join("nullmilter.c");
    let text = fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    if !text.contains(NULL_PROTOCOL_LINE) {
        bail!(
            "{} no longer contains `{NULL_PROTOCOL_LINE}`: cannot derive null-skip",
            src.display()
        );
    }
    let patched = cache.join("nullmilter-skip.c");
    let new = text.replace(
        NULL_PROTOCOL_LINE,
        "r[2] = htonl(0x77f); /* null-skip: every stage skipped, as add-header */",
    );
    if fs::read_to_string(&patched).ok().as_deref() != Some(new.as_str()) {
        fs::write(&patched, new)?;
    }
    let bin = cache.join("nullmilter-skip");
    gcc(&patched, &bin, &[])?;
    Ok(bin)
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to start one filter: a label and a command line in which `{spec}`
/// stands for the socket specification (`unix:/path` or `inet:PORT@127.0.0.1`).
#[derive(Debug, Clone)]
pub(crate) struct ServerDef {
    pub(crate) label: String,
    /// `accept` or `addheader`: which baselines it is compared with.
    pub(crate) group: Group,
    pub(crate) argv: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Accept,
    AddHeader,
}

/// Process ids of the running filters, killed if the benchmark is
/// interrupted (Drop does not run on a signal).
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Kills every running filter and exits when SIGINT or SIGTERM arrives.
pub(crate) fn kill_children_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let pids = RUNNING.lock().map(|v| v.clone()).unwrap_or_default();
            for pid in pids {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            eprintln!("interrupted: filters stopped");
            std::process::exit(130);
        });
    });
}

/// A running filter.
pub(crate) struct Server {
    pub(crate) def: ServerDef,
    pub(crate) target: Target,
    /// The load generators set `TCP_NODELAY` on their TCP sockets to it
    /// (off by default, as Postfix).
    pub(crate) client_nodelay: bool,
    child: Child,
}

impl Server {
    /// Starts `def` on a unix socket in `dir` (or on a fresh loopback TCP
    /// port) and waits until it accepts connections.
    pub(crate) fn start(def: &ServerDef, dir: &Path, tcp: bool) -> anyhow::Result<Server> {
        let (target, spec) = if tcp {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            (Target::Tcp(addr), format!("inet:{port}@127.0.0.1"))
        } else {
            let path = dir.join(format!("{}.sock", def.label));
            let _ = fs::remove_file(&path);
            (
                Target::Unix(path.clone()),
                format!("unix:{}", path.display()),
            )
        };
        let argv: Vec<String> = def
            .argv
            .iter()
            .map(|a| a.replace("{spec}", &spec))
            .collect();
        let log = dir.join(format!(
            "{}{}.log",
            def.label,
            if tcp { "-tcp" } else { "" }
        ));
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::create(&log)?.try_clone()?)
            .spawn()
            .with_context(|| format!("starting {}: {}", def.label, argv.join(" ")))?;
        if let Ok(mut v) = RUNNING.lock() {
            v.push(child.id());
        }
        let mut server = Server {
            def: def.clone(),
            target,
            client_nodelay: false,
            child,
        };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let up = match &server.target {
                Target::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
                Target::Tcp(a) => std::net::TcpStream::connect(a).is_ok(),
            };
            if up {
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening; log: {}",
                    def.label,
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > until {
                bail!("{} did not listen within 10 s", def.label);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The probe connection above was closed without a word; give the
        // server a moment to forget it before anything is measured.
        std::thread::sleep(Duration::from_millis(100));
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn sample(&self) -> Sample {
        Sample::of(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(mut v) = RUNNING.lock() {
            v.retain(|&p| p != self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Target::Unix(p) = &self.target {
            let _ = fs::remove_file(p);
        }
    }
}

/// CPU seconds (user + system) and RSS of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) cpu_s: f64,
    pub(crate) rss_kb: u64,
}

impl Sample {
    pub(crate) fn of(pid: u32) -> Sample {
        Sample {
            cpu_s: cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(f64::NAN),
            rss_kb: status_field(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or(0),
        }
    }

    /// This process (the load generator).
    pub(crate) fn me() -> Sample {
        Sample {
            cpu_s: cpu_seconds("/proc/self/stat").unwrap_or(f64::NAN),
            rss_kb: 0,
        }
    }
}

/// The soft limit on open files of this process.
pub(crate) fn nofile_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// The `RESULT` line of one `milterload` run.
#[derive(Debug, Clone, Default)]
pub(crate) struct CResult {
    pub(crate) ok: u64,
    pub(crate) fail: u64,
    pub(crate) errs: u64,
    pub(crate) rate: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) srv_cpu_ms_per_k: f64,
    pub(crate) cli_cpu_ms_per_k: f64,
    pub(crate) srv_rss_kb: u64,
}

/// Runs `milterload` once and parses its `RESULT` line.
pub(crate) fn milterload(
    bin: &Path,
    spec: &Spec,
    pid: u32,
    body: usize,
    headers: usize,
) -> anyhow::Result<CResult> {
    let out = Command::new(bin)
        .arg("-s")
        .arg(spec.target.to_string())
        .args(["-c", &spec.conns.to_string()])
        .args(["-n", &spec.messages.to_string()])
        .args(["-m", &spec.per_conn.to_string()])
        .args(["-b", &body.to_string()])
        .args(["-H", &headers.to_string()])
        .args(["-p", &pid.to_string()])
        .args(["-T", "300", "-q"])
        .args(spec.nodelay.then_some("-N"))
        .output()
        .context("running milterload")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .with_context(|| {
            format!(
                "milterload printed no RESULT line: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let mut r = CResult::default();
    for kv in line.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let f = v.parse::<f64>().unwrap_or(f64::NAN);
        match k {
            "ok" => r.ok = f as u64,
            "fail" => r.fail = f as u64,
            "errs" => r.errs = f as u64,
            "rate" => r.rate = f,
            "p50_us" => r.p50_us = f,
            "p99_us" => r.p99_us = f,
            "srv_cpu_ms_per_k" => r.srv_cpu_ms_per_k = f,
            "cli_cpu_ms_per_k" => r.cli_cpu_ms_per_k = f,
            "srv_rss_kb" => r.srv_rss_kb = f as u64,
            _ => {}
        }
    }
    Ok(r)
}

/// Where the shared harness (nullmilter.c, cmilter.c, milterload.c) is.
pub(crate) fn find_harness(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let candidates = given.into_iter().chain(
        [
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/harness"),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/harness"),
            "/work/shared/harness",
        ]
        .iter()
        .map(PathBuf::from),
    );
    for c in candidates {
        if c.join("nullmilter.c").is_file() {
            return Ok(c);
        }
    }
    bail!("cannot find the harness directory with nullmilter.c: pass --harness DIR")
}
