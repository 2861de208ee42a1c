//! A throw-away `redis-server` on a loopback port, for the Redis backend tests.
//!
//! Without the `redis-server` binary the tests print a SKIP line and pass, unless
//! `GREYLIST_REQUIRE_REDIS=1` is set (CI), in which case they fail.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `redis-server`; killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

/// The `redis-server` binary, or `None` (after printing why) if the test should be
/// skipped. Panics if it is missing and `GREYLIST_REQUIRE_REDIS=1`.
pub fn redis_binary(test: &str) -> Option<PathBuf> {
    let bin = std::env::var_os("REDIS_SERVER")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
    let found = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(bin);
    }
    if std::env::var("GREYLIST_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
        panic!("{test}: redis-server not found and GREYLIST_REQUIRE_REDIS=1");
    }
    eprintln!("SKIP {test}: redis-server not found (install it, or set REDIS_SERVER)");
    None
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts `bin` on a free loopback port with its files in `dir`, without
    /// persistence, and returns once it logs that it accepts connections.
    pub fn start(bin: &Path, dir: &Path) -> RedisServer {
        Self::start_on(bin, dir, free_port())
    }

    /// Like [`RedisServer::start`] on a given port (to restart a stopped server).
    pub fn start_on(bin: &Path, dir: &Path, port: u16) -> RedisServer {
        let mut child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let mut seen = String::new();
        let ready = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if l.contains("Ready to accept connections") {
                        break true;
                    }
                    seen.push_str(&l);
                    seen.push('\n');
                }
                _ => break false,
            }
        };
        assert!(ready, "redis-server did not start on port {port}:\n{seen}");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        RedisServer {
            child: Some(child),
            dir: dir.to_owned(),
            port,
        }
    }

    /// `redis://127.0.0.1:PORT/DB`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a hung Redis that accepts
    /// connections but never answers.
    pub fn pause(&self, paused: bool) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Some(c) = &self.child {
            let sig = if paused {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let pid = i32::try_from(c.id()).expect("pid");
            kill(Pid::from_raw(pid), sig).expect("signal redis-server");
        }
    }

    /// Starts a new server on the same port and directory.
    pub fn restart(&mut self, bin: &Path) {
        self.kill();
        let fresh = RedisServer::start_on(bin, &self.dir, self.port);
        *self = fresh;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
