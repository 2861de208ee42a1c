//! `sender-check-milter` as an operator runs it: the real binary on a unix
//! socket, driven through milter-client, making its callouts to an SMTP
//! server written here and its MX lookups to an authoritative DNS server
//! (hickory-server) serving a test zone — all on loopback.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Milter, PATIENCE};
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, MX, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use milter_client::{Client, ClientConfig, MacroStage, Message, Stage, Verdict};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_sender-check-milter");

// --- the milter ----------------------------------------------------------------------

/// sender-check-milter with `args`, listening; its MTA side waits up to 15 s
/// for a reply.
fn start(args: &[String]) -> Milter {
    Milter::start(
        Command::new(BIN)
            .args(["--helo-name", "verifier.test"])
            .args(args)
            .env("RUST_LOG", "info,sender_check_milter=debug")
            .env("NO_COLOR", "1"),
        "sender.sock",
    )
    .with_client(Client::new(
        ClientConfig::default().with_timeouts(Duration::from_secs(15)),
    ))
}

/// The milter with every callout going to `smtp`.
fn via_host(smtp: &TestSmtp, extra: &[&str]) -> Milter {
    let mut args = vec!["--callout-host".to_string(), smtp.addr.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    start(&args)
}

/// A message from an outside client with sender `from`.
fn from(sender: &str) -> Message {
    Message::new()
        .client("client.example.net", "192.0.2.1:4567".parse().unwrap())
        .helo("client.example.net")
        .sender(sender)
        .rcpt("bob@example.net")
        .header("Subject", "hello")
        .body("Hi Bob.\r\n")
}

// --- a scripted SMTP server ------------------------------------------------------------

/// The RCPT reply by address: `unknown` 550, `greylist` 450, `weird` a 550
/// with escape sequences, non-ASCII and 600 characters, else 250.
fn rcpt_reply(command: &str) -> String {
    if command.contains("unknown") {
        "550 5.1.1 <unknown@example.test>: User unknown\r\n".to_string()
    } else if command.contains("weird") {
        format!("550 5.1.1 \u{1b}[31m\u{e9}vil\u{7} {}\r\n", "x".repeat(600))
    } else if command.contains("greylist") {
        "450 4.2.0 Greylisted, try again\r\n".to_string()
    } else {
        "250 2.1.5 Ok\r\n".to_string()
    }
}

struct TestSmtp {
    addr: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// RCPT replies wait until this is true.
    release: watch::Sender<bool>,
    /// RCPT commands received so far (counted before the reply is held).
    rcpts: watch::Receiver<usize>,
}

impl TestSmtp {
    /// A server that answers at once.
    async fn start() -> TestSmtp {
        Self::start_with(false, true).await
    }

    /// `silent`: accept and never say a word. `released`: answer RCPT at
    /// once (else only after [`TestSmtp::release`]).
    async fn start_with(silent: bool, released: bool) -> TestSmtp {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (release, gate) = watch::channel(released);
        let (rcpt_tx, rcpts) = watch::channel(0usize);
        let rcpt_tx = Arc::new(rcpt_tx);
        let count = Arc::clone(&connections);
        // Lives until the test's runtime shuts down.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (gate, rcpt_tx) = (gate.clone(), Arc::clone(&rcpt_tx));
                tokio::spawn(async move {
                    if silent {
                        // Say nothing until the client gives up.
                        let mut line = String::new();
                        let _ = BufReader::new(stream).read_line(&mut line).await;
                    } else {
                        serve_smtp(stream, gate, rcpt_tx).await;
                    }
                });
            }
        });
        TestSmtp {
            addr,
            connections,
            release,
            rcpts,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

async fn serve_smtp(
    stream: TcpStream,
    mut gate: watch::Receiver<bool>,
    rcpts: Arc<watch::Sender<usize>>,
) {
    let mut stream = BufReader::new(stream);
    if stream
        .get_mut()
        .write_all(b"220 test.example ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut line = String::new();
    for _ in 0..20 {
        line.clear();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            "250-test.example\r\n250 8BITMIME\r\n".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            "250 2.1.0 Ok\r\n".to_string()
        } else if upper.starts_with("RCPT TO:") {
            rcpts.send_modify(|n| *n += 1);
            if gate.wait_for(|open| *open).await.is_err() {
                return;
            }
            rcpt_reply(&line)
        } else if upper == "QUIT" {
            let _ = stream.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "502 5.5.2 Command not recognised\r\n".to_string()
        };
        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

// --- an authoritative DNS server for `test.` --------------------------------------------

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn rec(owner: &str, data: RData) -> Record {
    Record::from_rdata(name(owner), 60, data)
}

/// The zone `test.`: `mx.test` has MX 10 `good.mx.test` (127.0.0.1);
/// `nullmx.test` publishes a null MX; other names do not exist. UDP and TCP
/// listen on the same loopback port (the binary takes one `--dns-server`).
async fn start_dns() -> (SocketAddr, Server<Catalog>) {
    let origin = name("test.");
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        3600,
        600,
        86400,
        60,
    );
    for record in [
        rec("test.", RData::SOA(soa)),
        rec("mx.test.", RData::MX(MX::new(10, name("good.mx.test.")))),
        rec("good.mx.test.", RData::A(A(Ipv4Addr::LOCALHOST))),
        rec("nullmx.test.", RData::MX(MX::new(0, Name::root()))),
    ] {
        assert!(zone.upsert_mut(record, 1));
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(origin), vec![Arc::new(zone)]);

    // Find a port free for both UDP and TCP (bounded attempts).
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            let mut server = Server::new(catalog);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 16);
            return (addr, server);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

// --- callout verdicts ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_sender_passes_and_an_unknown_one_is_rejected_550_5_1_7() {
    let smtp = TestSmtp::start().await;
    let milter = via_host(&smtp, &[]);

    let out = milter.send(&from("alice@example.test")).await;
    assert_eq!(out.verdict, Verdict::Accepted, "{out:?}");

    let out = milter.send(&from("unknown@example.test")).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    assert_eq!(out.decided_at, Stage::Mail);
    assert_eq!(
        out.smtp_text(),
        "550 5.1.7 Sender address rejected: 550 5.1.1 <unknown@example.test>: User unknown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_callout_failure_tempfails_451_4_4_3() {
    let smtp = TestSmtp::start().await;
    let milter = via_host(&smtp, &[]);
    let out = milter.send(&from("greylist@example.test")).await;
    assert_eq!(out.verdict, Verdict::Tempfailed, "{out:?}");
    assert_eq!(
        out.smtp_text(),
        "451 4.4.3 Sender address not verified now: 450 4.2.0 Greylisted, try again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_tempfail_never_a_reject() {
    let smtp = TestSmtp::start_with(true, true).await;
    let milter = via_host(&smtp, &["--timeout", "1"]);
    let out = milter.send(&from("alice@example.test")).await;
    assert_eq!(out.verdict, Verdict::Tempfailed, "{out:?}");
    assert!(
        out.smtp_text().starts_with("451 4.4.3 "),
        "{}",
        out.smtp_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_text_is_sanitised_in_the_reply() {
    let smtp = TestSmtp::start().await;
    let milter = via_host(&smtp, &[]);
    let out = milter.send(&from("weird@example.test")).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    let text = out.smtp_text();
    assert!(
        text.starts_with("550 5.1.7 Sender address rejected: 550 5.1.1 "),
        "{text}"
    );
    assert!(
        text.chars().all(|c| c.is_ascii_graphic() || c == ' '),
        "{text:?}"
    );
    assert!(text.len() < 300, "bounded: {} bytes", text.len());

    // A sender with a control character is refused without a callout.
    let out = milter.send(&from("<a\u{7f}b@example.test>")).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    assert_eq!(
        out.smtp_text(),
        "550 5.1.7 Sender address rejected: malformed sender address"
    );
    assert_eq!(smtp.connections(), 1, "no callout for a malformed address");
}

// --- MX lookups ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_lookups_go_to_the_dns_server_and_the_mx_port() {
    let smtp = TestSmtp::start().await;
    let (dns, _server) = start_dns().await;
    let milter = start(&[
        "--dns-server".to_string(),
        dns.to_string(),
        "--smtp-port".to_string(),
        smtp.addr.port().to_string(),
    ]);

    let out = milter.send(&from("alice@mx.test")).await;
    assert_eq!(out.verdict, Verdict::Accepted, "{out:?} {}", milter.log());
    assert_eq!(smtp.connections(), 1, "the callout went to the MX");

    let out = milter.send(&from("unknown@mx.test")).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");

    let out = milter.send(&from("alice@nullmx.test")).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    assert_eq!(
        out.smtp_text(),
        "550 5.1.7 Sender address rejected: domain nullmx.test does not accept mail (null MX)"
    );

    let out = milter.send(&from("alice@nowhere.test")).await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    assert_eq!(
        out.smtp_text(),
        "550 5.1.7 Sender address rejected: domain nowhere.test does not exist"
    );
    assert_eq!(smtp.connections(), 2, "no callout without a mail server");
}

// --- cache and coalescing ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_verdict_makes_no_new_connection() {
    let smtp = TestSmtp::start().await;
    let milter = via_host(&smtp, &[]);
    for _ in 0..3 {
        let out = milter.send(&from("unknown@example.test")).await;
        assert_eq!(out.verdict, Verdict::Rejected);
    }
    assert_eq!(smtp.connections(), 1);
    for _ in 0..2 {
        let out = milter.send(&from("alice@example.test")).await;
        assert_eq!(out.verdict, Verdict::Accepted);
    }
    assert_eq!(smtp.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_from_one_sender_share_one_callout() {
    const N: usize = 5;
    // RCPT replies are held until every message is waiting in the milter.
    let smtp = TestSmtp::start_with(false, false).await;
    let milter = via_host(&smtp, &[]);
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (client, spec) = (milter.client().clone(), milter.spec());
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect(spec).await.unwrap();
            let out = conn
                .send_message(&from("unknown@example.test"))
                .await
                .unwrap();
            conn.quit().await.unwrap();
            out
        }));
    }
    // Every message has reached the verifier (the milter logs it just
    // before verifying), and the callout is waiting for its RCPT reply.
    let deadline = Instant::now() + PATIENCE;
    while milter.log().matches("verifying sender").count() < N {
        assert!(Instant::now() < deadline, "{}", milter.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rcpts = smtp.rcpts.clone();
    tokio::time::timeout(PATIENCE, rcpts.wait_for(|n| *n >= 1))
        .await
        .unwrap()
        .unwrap();
    smtp.release();
    for task in tasks {
        let out = task.await.unwrap();
        assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    }
    assert_eq!(smtp.connections(), 1, "one callout for {N} messages");
}

// --- who is not checked -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_sender_and_authenticated_clients_are_not_checked() {
    let smtp = TestSmtp::start().await;
    let milter = via_host(&smtp, &[]);

    let out = milter.send(&from("")).await;
    assert_eq!(out.verdict, Verdict::Accepted, "{out:?}");

    let out = milter
        .send(&from("unknown@example.test").macro_at(Stage::Mail, "{auth_authen}", "alice"))
        .await;
    assert_eq!(out.verdict, Verdict::Accepted, "{out:?}");

    // An empty {auth_authen} is no login.
    let out = milter
        .send(&from("unknown@example.test").macro_at(Stage::Mail, "{auth_authen}", ""))
        .await;
    assert_eq!(out.verdict, Verdict::Rejected, "{out:?}");
    assert_eq!(smtp.connections(), 1, "only the last message was checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_clients_are_accepted_at_connect() {
    let smtp = TestSmtp::start().await;
    let milter = via_host(&smtp, &["--local-net", "198.51.100.0/24"]);

    for client in ["127.0.0.1:1000", "[::1]:1000", "198.51.100.77:1000"] {
        let message = from("unknown@example.test").client("local", client.parse().unwrap());
        let out = milter.send(&message).await;
        assert_eq!(out.verdict, Verdict::Accepted, "{client}: {out:?}");
        assert_eq!(out.decided_at, Stage::Connect, "{client}");
    }
    let message =
        from("unknown@example.test").client("remote", "198.51.101.1:1000".parse().unwrap());
    assert_eq!(milter.send(&message).await.verdict, Verdict::Rejected);
    assert_eq!(smtp.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_connect_and_mail_are_negotiated_with_the_auth_macro() {
    let smtp = TestSmtp::start().await;
    let milter = via_host(&smtp, &[]);
    let conn = milter.client().connect(milter.spec()).await.unwrap();
    let agreed = conn.agreed();
    assert!(agreed.sends(Stage::Connect));
    assert!(agreed.sends(Stage::Mail));
    for stage in [
        Stage::Helo,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::EndOfHeaders,
        Stage::Body,
    ] {
        assert!(!agreed.sends(stage), "{stage}");
    }
    assert_eq!(
        agreed.requested_macros(MacroStage::Mail),
        Some(vec!["{auth_authen}"])
    );
}

#[test]
fn verify_subcommand_still_works() {
    let out = Command::new(BIN).args(["verify", "<>"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped"));
}
