//! Shared test fixtures: a scripted milter that records its callbacks, and
//! servers on unix sockets in temp dirs and on TCP port 0.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use milter_proto::{Actions, Connect, Envelope, Header, MacroStage, OptNeg, SmtpReply};
use milter_server::{
    BoxError, Config, Context, EomContext, Listener, Milter, Options, Server, Stages, Status,
    async_trait,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the scripted milter saw, shared with the test.
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Per-message state: proves state is fresh for every message.
#[derive(Default)]
pub struct MsgState {
    pub rcpts: usize,
    pub headers: usize,
    pub body: usize,
    pub from: String,
}

/// A milter whose decisions are driven by the sender address:
/// `<reject@x>`, `<reply@x>`, `<error@x>`, `<panic@x>`, `<hang@x>` at MAIL,
/// and `<sleep@x>`, `<yield@x>`, `<woken@x>`, which wait before they
/// reject (a timer, a wake-up during the first poll, another task);
/// `wait.example` at CONNECT and `HELO wait` wait before they tempfail;
/// `<tempfail@x>` as a recipient; `<mods@x>`, `<progress@x>`,
/// `<eomreject@x>`, `<undeclared@x>`, `<bigbody@x>` (a 4 MiB
/// replacement body, [`big_body`]) at end of message.
pub struct Scripted {
    pub log: Log,
    pub options: Options,
}

impl Scripted {
    pub fn new(log: &Log) -> Self {
        Self {
            log: log.clone(),
            options: Options::new()
                .actions(Actions::all() - Actions::SET_SYMLIST)
                .macros(MacroStage::Mail, "{auth_authen} i"),
        }
    }
    pub fn with(log: &Log, options: Options) -> Self {
        Self {
            log: log.clone(),
            options,
        }
    }
}

/// `len` bytes of a pattern that a lost or repeated chunk would break.
pub fn big_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 251 % 26) as u8).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[async_trait]
impl Milter for Scripted {
    type Message = MsgState;

    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        self.log.push(format!("negotiate v{}", offer.version));
        Ok(self.options.clone())
    }

    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        self.log.push(format!(
            "connect {} {:?} j={:?}",
            text(&client.hostname),
            ctx.client_ip(),
            ctx.macro_str("j")
        ));
        if client.hostname.as_ref() == b"wait.example" {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return Ok(Status::Tempfail);
        }
        Ok(Status::Continue)
    }

    async fn helo(&mut self, _: &Context<'_>, name: &Bytes) -> Result<Status, BoxError> {
        self.log.push(format!("helo {}", text(name)));
        if name.as_ref() == b"wait" {
            tokio::task::yield_now().await;
            return Ok(Status::Tempfail);
        }
        Ok(Status::Continue)
    }

    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut MsgState,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        assert_eq!(
            msg.rcpts + msg.headers + msg.body,
            0,
            "message state leaked"
        );
        let from_text = text(&from.address);
        let args: Vec<String> = from.args().map(|a| text(&a)).collect();
        self.log.push(format!(
            "mail {from_text} {args:?} auth={:?}",
            ctx.macro_str("{auth_authen}")
        ));
        msg.from = from_text.clone();
        match from_text.as_str() {
            "<reject@x>" => Ok(Status::Reject),
            "<reply@x>" => Ok(Status::Reply(SmtpReply::multiline(
                550,
                Some("5.7.1"),
                &["first line", "100% second line"],
            )?)),
            "<error@x>" => Err("scripted failure".into()),
            "<panic@x>" => panic!("scripted panic"),
            "<hang@x>" => {
                std::future::pending::<()>().await;
                Ok(Status::Continue)
            }
            "<sleep@x>" => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(Status::Reject)
            }
            "<yield@x>" => {
                tokio::task::yield_now().await;
                Ok(Status::Reject)
            }
            "<woken@x>" => {
                let (tx, rx) = oneshot::channel();
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let _ = tx.send(Status::Reject);
                });
                Ok(rx.await?)
            }
            "<accept@x>" => Ok(Status::Accept),
            _ => Ok(Status::Continue),
        }
    }

    async fn envrcpt(
        &mut self,
        _: &Context<'_>,
        msg: &mut MsgState,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        msg.rcpts += 1;
        let r = text(&rcpt.address);
        self.log.push(format!("rcpt {r}"));
        Ok(if r == "<tempfail@x>" {
            Status::Reply(SmtpReply::new(451, Some("4.7.1"), "try later")?)
        } else {
            Status::Continue
        })
    }

    async fn data(&mut self, _: &Context<'_>, _: &mut MsgState) -> Result<Status, BoxError> {
        self.log.push("data");
        Ok(Status::Continue)
    }

    async fn header(
        &mut self,
        _: &Context<'_>,
        msg: &mut MsgState,
        h: &Header,
    ) -> Result<Status, BoxError> {
        msg.headers += 1;
        self.log
            .push(format!("header {}: {}", text(&h.name), text(&h.value)));
        Ok(Status::Continue)
    }

    async fn eoh(&mut self, _: &Context<'_>, _: &mut MsgState) -> Result<Status, BoxError> {
        self.log.push("eoh");
        Ok(Status::Continue)
    }

    async fn body(
        &mut self,
        _: &Context<'_>,
        msg: &mut MsgState,
        chunk: &Bytes,
    ) -> Result<Status, BoxError> {
        msg.body += chunk.len();
        self.log.push(format!("body {}", chunk.len()));
        Ok(if chunk.starts_with(b"SKIP") {
            Status::Skip
        } else {
            Status::Continue
        })
    }

    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut MsgState,
    ) -> Result<Status, BoxError> {
        self.log.push(format!(
            "eom rcpts={} headers={} body={} queue={:?}",
            msg.rcpts,
            msg.headers,
            msg.body,
            ctx.queue_id()
        ));
        match msg.from.as_str() {
            "<mods@x>" => {
                ctx.add_header("X-Added", "one")?;
                ctx.insert_header(0, "X-Inserted", "top")?;
                ctx.change_header("Subject", 1, "changed")?;
                ctx.delete_header("X-Remove", 1)?;
                ctx.change_from("<new@x>", Some("RET=HDRS"))?;
                ctx.add_rcpt("<added@x>")?;
                ctx.add_rcpt_with_args("<added2@x>", Some("NOTIFY=NEVER"))?;
                ctx.delete_rcpt("<gone@x>")?;
                ctx.replace_body(&vec![b'z'; 70_000])?;
                ctx.quarantine("held for review")?;
                Ok(Status::Continue)
            }
            "<bigbody@x>" => {
                ctx.replace_body(&big_body(4 << 20))?;
                Ok(Status::Continue)
            }
            "<progress@x>" => {
                ctx.progress().await?;
                ctx.progress().await?;
                ctx.add_header("X-After-Progress", "yes")?;
                Ok(Status::Continue)
            }
            "<eomreject@x>" => Ok(Status::Reply(SmtpReply::new(
                554,
                Some("5.7.1"),
                "content rejected",
            )?)),
            "<discard@x>" => Ok(Status::Discard),
            _ => Ok(Status::Continue),
        }
    }

    async fn abort(&mut self, _: &Context<'_>, msg: MsgState) -> Result<(), BoxError> {
        self.log.push(format!("abort from={}", msg.from));
        Ok(())
    }

    async fn unknown(&mut self, _: &Context<'_>, line: &Bytes) -> Result<Status, BoxError> {
        self.log.push(format!("unknown {}", text(line)));
        Ok(Status::Reject)
    }

    async fn close(&mut self, _: &Context<'_>) -> Result<(), BoxError> {
        self.log.push("close");
        Ok(())
    }
}

/// A running server and how to stop it.
pub struct Running {
    pub spec: String,
    _dir: Option<tempfile::TempDir>,
    pub stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), milter_server::Error>>,
}

impl Running {
    /// Starts shutdown and waits for the server to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.unwrap().unwrap();
    }
}

pub async fn start_unix<F, M>(factory: F, config: Config) -> Running
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("unix:{}", dir.path().join("m.sock").display());
    let listener = Listener::bind(&spec).await.unwrap();
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(Server::new(factory).config(config).serve(listener, async {
        let _ = rx.await;
    }));
    Running {
        spec,
        _dir: Some(dir),
        stop: Some(tx),
        handle,
    }
}

/// A unix-socket server whose filters are [`Scripted`] with `options`,
/// logging to `log`.
pub async fn start_scripted(log: &Log, options: Options) -> Running {
    let log = log.clone();
    start_unix(
        move || Scripted::with(&log, options.clone()),
        Config::default(),
    )
    .await
}

pub async fn start_tcp<F, M>(factory: F, config: Config) -> Running
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter + 'static,
{
    let listener = Listener::bind("inet:0@127.0.0.1").await.unwrap();
    let spec = format!("inet:{}@127.0.0.1", listener.local_addr().unwrap().port());
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(Server::new(factory).config(config).serve(listener, async {
        let _ = rx.await;
    }));
    Running {
        spec,
        _dir: None,
        stop: Some(tx),
        handle,
    }
}

/// Stages for options builders in tests.
pub fn all_stages() -> Stages {
    Stages::all()
}
