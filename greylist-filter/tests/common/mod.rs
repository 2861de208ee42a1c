//! Runs the real `greylist-filter` binary and talks to it through milter-client.
#![allow(dead_code, unreachable_pub)] // each test file uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use milter_client::{Client, ClientConfig, Message, MessageOutcome, Modification, Reply};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub mod dns;
pub mod engine;
pub mod redis_server;

pub const BIN: &str = env!("CARGO_BIN_EXE_greylist-filter");

/// How long a daemon may take to come up or to do something it was asked to.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// The milter socket it listens on, as a libmilter specification.
    pub milter: String,
    /// The admin address, if enabled.
    pub admin: Option<String>,
}

impl Daemon {
    /// Starts the binary in `dir` with `args` and waits for its "ready" line.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn greylist-filter");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let mut d = Daemon {
            child: Some(child),
            log,
            milter: String::new(),
            admin: None,
        };
        let ready = d.wait_log("greylist-filter ready", DEADLINE);
        let line = ready.unwrap_or_else(|| {
            panic!(
                "daemon did not come up within {DEADLINE:?}; status {:?}; log:\n{}",
                d.try_status(),
                d.log()
            )
        });
        d.milter = field(&line, "milter").expect("milter= in ready line");
        d.admin = field(&line, "admin").filter(|a| a != "off");
        d
    }

    /// Writes `toml` to `g.toml` in `dir` and starts the binary there with
    /// `--config g.toml` and `args`.
    pub fn start_with_config(dir: &Path, toml: &str, args: &[&str]) -> Daemon {
        std::fs::write(dir.join("g.toml"), toml).expect("write g.toml");
        let mut all = vec!["--config", "g.toml"];
        all.extend_from_slice(args);
        Daemon::start(dir, &all)
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` (searching only lines after the ones
    /// already seen when `after` is given); returns the line.
    pub fn wait_log(&self, needle: &str, deadline: Duration) -> Option<String> {
        self.wait_log_after(0, needle, deadline)
    }

    /// Length of the log so far, for [`Daemon::wait_log_after`].
    pub fn log_mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// As [`Daemon::wait_log`], among lines logged after `mark`.
    pub fn wait_log_after(&self, mark: usize, needle: &str, deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        loop {
            {
                let g = self.log.lock().unwrap();
                if let Some(rest) = g.get(mark..)
                    && let Some(l) = rest.lines().find(|l| l.contains(needle))
                {
                    return Some(l.to_owned());
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    pub fn signal(&self, s: Signal) {
        kill(self.pid(), s).expect("kill");
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(s) = self.try_status() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < end,
                "daemon did not exit within {deadline:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(Signal::SIGTERM);
        let s = self.wait_exit(DEADLINE);
        let log = self.log();
        assert!(s.success(), "exit status {s:?}; log:\n{log}");
        log
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        self.signal(Signal::SIGKILL);
        self.wait_exit(DEADLINE);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of `name=` in a log line.
fn field(line: &str, name: &str) -> Option<String> {
    let pat = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&pat))
        .map(|v| v.trim_matches('"').to_owned())
}

/// Runs the binary to completion (bounded), returning status, stdout and stderr.
pub fn run(dir: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn greylist-filter");
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(_s) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("{args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary directory with a path as `&str`.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A message from `ip` with `from` to each of `rcpts`.
pub fn message(ip: &str, from: &str, rcpts: &[&str]) -> Message {
    let addr: SocketAddr = format!("{ip}:40000")
        .parse()
        .or_else(|_| format!("[{ip}]:40000").parse())
        .expect("client address");
    let mut m = Message::new()
        .client("client.example.org", addr)
        .helo("client.example.org")
        .sender(from)
        .header("From", from)
        .header("Subject", "greylist test")
        .body("Hello.\r\n");
    for r in rcpts {
        m = m.rcpt(r);
    }
    m
}

/// The MTA side the tests talk to the daemon with.
pub fn client() -> Client {
    Client::new(ClientConfig::default().with_timeouts(Duration::from_secs(20)))
}

/// Sends one message over a fresh connection.
pub async fn send(spec: &str, m: &Message) -> MessageOutcome {
    let mut conn = client().connect(spec).await.expect("connect to the milter");
    let out = conn.send_message(m).await.expect("send_message");
    let _ = conn.quit().await;
    out
}

/// The `X-Greylist` header the filter asked to add, if any.
pub fn x_greylist(out: &MessageOutcome) -> Option<String> {
    out.modifications.iter().find_map(|m| match m {
        Modification::AddHeader { name, value } if name.as_ref() == b"X-Greylist" => {
            Some(String::from_utf8_lossy(value).into_owned())
        }
        _ => None,
    })
}

/// The SMTP reply text given to a refused recipient.
pub fn refusal(out: &MessageOutcome, rcpt: &str) -> Option<String> {
    let want = format!("<{rcpt}>");
    out.rejected_recipients
        .iter()
        .find(|(r, _)| *r == want)
        .map(|(_, reply)| match reply {
            Reply::Code(c) => String::from_utf8_lossy(c.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        })
}

pub fn accepted(out: &MessageOutcome, rcpt: &str) -> bool {
    let want = format!("<{rcpt}>");
    out.is_accepted() && out.accepted_recipients.contains(&want)
}

/// How long [`retry_until_accepted`] keeps retrying.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(20);

/// Retries `m` until it is accepted (bounded by [`RETRY_DEADLINE`]), pausing `every`
/// between attempts; returns the accepting outcome and the number of attempts.
pub async fn retry_until_accepted(
    spec: &str,
    m: &Message,
    every: Duration,
) -> (MessageOutcome, usize) {
    let end = Instant::now() + RETRY_DEADLINE;
    let mut n = 0;
    loop {
        n += 1;
        let out = send(spec, m).await;
        if out.is_accepted() {
            return (out, n);
        }
        assert!(
            Instant::now() < end,
            "not accepted within {RETRY_DEADLINE:?}: {}",
            out.smtp_text()
        );
        tokio::time::sleep(every).await;
    }
}
