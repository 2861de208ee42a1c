//! Runs an example binary as an operator does: listening on a unix socket in a
//! temporary directory of its own, with its stderr kept in a log file there.
#![allow(dead_code, unreachable_pub)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use milter_client::{Client, ClientConfig, Message, MessageOutcome};

/// Longest any wait in these tests may take.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running example binary; killed when dropped.
pub struct Milter {
    child: Child,
    name: String,
    socket: PathBuf,
    log: PathBuf,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Milter {
    /// Starts `command` with `--listen unix:<socket>` added, the socket called
    /// `socket_name` in a new temporary directory, and waits (bounded) until
    /// the socket accepts connections.
    pub fn start(command: &mut Command, socket_name: &str) -> Milter {
        Milter::spawn(command, "--listen", socket_name).listening()
    }

    /// Starts `command` with `listen unix:<socket>` added (`listen` is the
    /// option that takes the socket), the socket called `socket_name` in a new
    /// temporary directory; does not wait for it to listen.
    pub fn spawn(command: &mut Command, listen: &str, socket_name: &str) -> Milter {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(socket_name);
        let log = dir.path().join("stderr.log");
        let name = Path::new(command.get_program())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let child = command
            .arg(listen)
            .arg(format!("unix:{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Milter {
            child,
            name,
            socket,
            log,
            client: Client::new(ClientConfig::default().with_timeouts(Duration::from_secs(10))),
            _dir: dir,
        }
    }

    /// Waits (bounded) until the socket accepts connections.
    pub fn listening(mut self) -> Milter {
        let deadline = Instant::now() + PATIENCE;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}): {}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    /// [`Milter::send`] and [`Milter::client`] use `client` (by default one
    /// with 10 s timeouts).
    pub fn with_client(mut self, client: Client) -> Milter {
        self.client = client;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket as a libmilter specification.
    pub fn spec(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `message` on a new milter connection (so that it sees the
    /// configuration current at that moment).
    pub async fn send(&self, message: &Message) -> MessageOutcome {
        let mut conn = self.client.connect(self.spec()).await.unwrap();
        let out = conn.send_message(message).await.unwrap();
        conn.quit().await.unwrap();
        out
    }

    /// Sends the signal `name` (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
