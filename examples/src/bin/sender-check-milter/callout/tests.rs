//! Tests of the callout engine against real sockets on loopback: a scripted
//! SMTP server written here, and an authoritative DNS server (hickory-server,
//! in-process) serving a test zone. No test sleeps to synchronise.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider as ServerRuntime;
use hickory_server::proto::rr::rdata::{A, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

use super::*;

// --- a scripted SMTP server ---------------------------------------------------------

/// How the test SMTP server behaves.
#[derive(Clone)]
struct Script {
    /// Accept connections but never send a byte.
    silent: bool,
    /// Reply to EHLO (HELO always gets 250).
    ehlo: &'static str,
    /// Reply to RCPT TO, chosen by the address.
    rcpt: fn(&str) -> String,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            silent: false,
            ehlo: "250-test.example greets you\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            rcpt: |rcpt| {
                if rcpt.contains("unknown") {
                    "550 5.1.1 <unknown@example.test>: User unknown\r\n".to_string()
                } else if rcpt.contains("greylist") {
                    "450 4.2.0 Greylisted, try again\r\n".to_string()
                } else {
                    "250 2.1.5 Ok\r\n".to_string()
                }
            },
        }
    }
}

struct TestSmtp {
    addr: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Highest number of simultaneously open connections.
    max_concurrent: Arc<AtomicUsize>,
    /// Commands received, in order (across connections).
    commands: Arc<Mutex<Vec<String>>>,
}

impl TestSmtp {
    async fn start(script: Script) -> TestSmtp {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind SMTP test server");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let (c, m, cmds) = (
            Arc::clone(&connections),
            Arc::clone(&max_concurrent),
            Arc::clone(&commands),
        );
        // The accept loop lives until the test's runtime shuts down.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let (script, active, cmds) =
                    (script.clone(), Arc::clone(&active), Arc::clone(&cmds));
                tokio::spawn(async move {
                    serve(stream, script, cmds).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TestSmtp {
            addr,
            connections,
            max_concurrent,
            commands,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(stream: TcpStream, script: Script, commands: Arc<Mutex<Vec<String>>>) {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if script.silent {
        // Say nothing; wait for the client to give up (EOF), bounded by the
        // client's deadline.
        let _ = stream.read_line(&mut line).await;
        return;
    }
    let _ = stream
        .get_mut()
        .write_all(b"220-test.example ESMTP\r\n220 no UCE\r\n")
        .await;
    for _ in 0..20 {
        line.clear();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_string();
        lock(&commands).push(command.clone());
        let upper = command.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            script.ehlo.to_string()
        } else if upper.starts_with("HELO") || upper.starts_with("MAIL FROM:") {
            "250 ok\r\n".to_string()
        } else if upper.starts_with("RCPT TO:") {
            (script.rcpt)(&command)
        } else if upper == "QUIT" {
            let _ = stream.get_mut().write_all(b"221 bye\r\n").await;
            return;
        } else {
            "500 unknown command\r\n".to_string()
        };
        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

// --- an authoritative DNS server for the zone `test.` ----------------------------------

struct TestDns {
    config: DnsConfig,
    /// Keeps the server running; dropped at the end of the test.
    _server: Server<Catalog>,
}

fn name(s: &str) -> Name {
    Name::from_str(s).expect("valid name")
}

fn rec(owner: &str, data: RData) -> Record {
    Record::from_rdata(name(owner), 60, data)
}

/// The test zone:
///
/// | name            | records                                                  |
/// |-----------------|----------------------------------------------------------|
/// | mx.test.        | MX 10 good.mx.test. (127.0.0.1), MX 5 dead.mx.test. (127.0.0.2, nothing listens) |
/// | nomx.test.      | A 127.0.0.1 only: implicit MX                            |
/// | nullmx.test.    | MX 0 . (RFC 7505)                                        |
/// | noaddr.test.    | TXT only: exists, takes no mail                          |
/// | anything else   | NXDOMAIN (inside the zone), REFUSED (outside)            |
async fn start_dns() -> TestDns {
    let origin = name("test.");
    let mut zone = InMemoryZoneHandler::<ServerRuntime>::empty(
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
    let records = [
        rec("test.", RData::SOA(soa)),
        rec("mx.test.", RData::MX(MX::new(10, name("good.mx.test.")))),
        rec("mx.test.", RData::MX(MX::new(5, name("dead.mx.test.")))),
        rec("good.mx.test.", RData::A(A(Ipv4Addr::LOCALHOST))),
        rec("dead.mx.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))),
        rec("nomx.test.", RData::A(A(Ipv4Addr::LOCALHOST))),
        rec("nullmx.test.", RData::MX(MX::new(0, Name::root()))),
        rec(
            "noaddr.test.",
            RData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
        ),
    ];
    for record in records {
        assert!(zone.upsert_mut(record, 1), "record accepted");
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(origin), vec![Arc::new(zone)]);

    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind DNS UDP");
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind DNS TCP");
    let config = DnsConfig::Server {
        udp: udp.local_addr().expect("udp addr"),
        tcp: tcp.local_addr().expect("tcp addr"),
    };
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    TestDns {
        config,
        _server: server,
    }
}

// --- helpers -----------------------------------------------------------------------------

/// A clock the test moves by hand.
#[derive(Debug)]
struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *lock(&self.offset) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *lock(&self.offset)
    }
}

/// A DNS server on the loopback discard port: keeps a test that asks no DNS
/// question off the system resolver.
fn no_dns() -> DnsConfig {
    DnsConfig::server(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)))
}

/// A configuration that sends every callout to `smtp` and never touches
/// the system resolver.
fn via_host(smtp: &TestSmtp) -> Config {
    Config {
        helo_name: "verifier.test".to_string(),
        callout_host: Some(smtp.addr.to_string()),
        dns: no_dns(),
        deadline: Duration::from_secs(10),
        ..Config::default()
    }
}

/// A configuration using the test DNS, with MX hosts reached on `smtp`'s port.
fn via_dns(dns: &TestDns, smtp: &TestSmtp) -> Config {
    Config {
        helo_name: "verifier.test".to_string(),
        dns: dns.config.clone(),
        smtp_port: smtp.addr.port(),
        deadline: Duration::from_secs(10),
        ..Config::default()
    }
}

fn verifier(config: Config) -> Verifier {
    Verifier::new(config).expect("verifier")
}

// --- SMTP dialogue -----------------------------------------------------------------------

#[tokio::test]
async fn rcpt_250_is_valid_and_dialogue_is_correct() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_host(&smtp));
    assert_eq!(v.verify("<alice@example.test>").await, Verdict::Valid);
    assert_eq!(
        *lock(&smtp.commands),
        vec![
            "EHLO verifier.test",
            "MAIL FROM:<>",
            "RCPT TO:<alice@example.test>",
            "QUIT"
        ]
    );
}

#[tokio::test]
async fn rcpt_550_is_invalid_with_the_remote_text() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_host(&smtp));
    assert_eq!(
        v.verify("unknown@example.test").await,
        Verdict::Invalid {
            reply: "550 5.1.1 <unknown@example.test>: User unknown".to_string()
        }
    );
}

#[tokio::test]
async fn rcpt_450_is_temporary() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_host(&smtp));
    assert_eq!(
        v.verify("greylist@example.test").await,
        Verdict::Temporary {
            reason: "450 4.2.0 Greylisted, try again".to_string()
        }
    );
}

#[tokio::test]
async fn ehlo_rejected_falls_back_to_helo() {
    let smtp = TestSmtp::start(Script {
        ehlo: "502 5.5.2 EHLO not supported\r\n",
        ..Script::default()
    })
    .await;
    let v = verifier(via_host(&smtp));
    assert_eq!(v.verify("alice@example.test").await, Verdict::Valid);
    let commands = lock(&smtp.commands).clone();
    assert_eq!(
        commands.get(..2),
        Some(
            &[
                "EHLO verifier.test".to_string(),
                "HELO verifier.test".to_string()
            ][..]
        )
    );
}

#[tokio::test]
async fn silent_server_gives_temporary_after_the_deadline() {
    let smtp = TestSmtp::start(Script {
        silent: true,
        ..Script::default()
    })
    .await;
    let v = verifier(Config {
        deadline: Duration::from_millis(300),
        ..via_host(&smtp)
    });
    let started = std::time::Instant::now();
    let verdict = v.verify("alice@example.test").await;
    assert!(
        matches!(&verdict, Verdict::Temporary { reason } if reason.contains("no answer within")),
        "{verdict:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(smtp.connections(), 1);
}

#[tokio::test]
async fn connection_refused_is_temporary() {
    // Take a free port and close it again: nothing listens there.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let v = verifier(Config {
        callout_host: Some(addr.to_string()),
        dns: no_dns(),
        ..Config::default()
    });
    let verdict = v.verify("alice@example.test").await;
    assert!(
        matches!(&verdict, Verdict::Temporary { reason } if reason.contains("connect")),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn null_sender_and_local_address_are_skipped_malformed_is_invalid() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_host(&smtp));
    assert_eq!(v.verify("<>").await, Verdict::Skipped);
    assert_eq!(v.verify("").await, Verdict::Skipped);
    assert_eq!(v.verify("<postmaster>").await, Verdict::Skipped);
    assert!(matches!(
        v.verify("<a@b>\r\nRSET").await,
        Verdict::Invalid { .. }
    ));
    assert_eq!(smtp.connections(), 0, "nothing was asked");
}

// --- cache, coalescing, limits ------------------------------------------------------------

#[tokio::test]
async fn second_verify_is_answered_from_the_cache() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_host(&smtp));
    assert_eq!(v.verify("alice@example.test").await, Verdict::Valid);
    assert_eq!(v.verify("<alice@EXAMPLE.test>").await, Verdict::Valid);
    assert_eq!(smtp.connections(), 1);
    assert_eq!(v.cache_len(), 1);
    // A clone shares the cache.
    assert_eq!(v.clone().verify("alice@example.test").await, Verdict::Valid);
    assert_eq!(smtp.connections(), 1);
}

#[tokio::test]
async fn concurrent_verifies_of_one_address_make_one_callout() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_host(&smtp));
    // join_all polls every future once before any I/O can finish: the first
    // starts the callout, the nine others join it (none can hit the cache).
    let verdicts = futures::future::join_all((0..10).map(|_| v.verify("alice@example.test"))).await;
    assert!(
        verdicts.iter().all(|x| *x == Verdict::Valid),
        "{verdicts:?}"
    );
    assert_eq!(smtp.connections(), 1);
    assert!(
        lock(&v.inner.inflight).is_empty(),
        "in-flight entry removed"
    );
}

#[tokio::test]
async fn per_domain_limit_serialises_callouts() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(Config {
        per_domain_limit: 1,
        ..via_host(&smtp)
    });
    let verdicts =
        futures::future::join_all(["a@one.test", "b@one.test", "c@one.test"].map(|a| v.verify(a)))
            .await;
    assert!(
        verdicts.iter().all(|x| *x == Verdict::Valid),
        "{verdicts:?}"
    );
    assert_eq!(smtp.connections(), 3);
    assert_eq!(smtp.max_concurrent.load(Ordering::SeqCst), 1);
    assert!(
        lock(&v.inner.domains).is_empty(),
        "unused semaphores removed"
    );
}

#[tokio::test]
async fn cache_ttls_follow_the_verdict() {
    let smtp = TestSmtp::start(Script::default()).await;
    let clock = ManualClock::new();
    let config = Config {
        ttl_valid: Duration::from_secs(86_400),
        ttl_invalid: Duration::from_secs(3_600),
        ttl_temporary: Duration::from_secs(300),
        ..via_host(&smtp)
    };
    let v = Verifier::with_clock(config, clock.clone()).expect("verifier");
    v.verify("alice@example.test").await;
    v.verify("unknown@example.test").await;
    v.verify("greylist@example.test").await;
    assert_eq!(smtp.connections(), 3);

    // Just before the temporary TTL: all cached.
    clock.advance(Duration::from_secs(299));
    for a in [
        "alice@example.test",
        "unknown@example.test",
        "greylist@example.test",
    ] {
        v.verify(a).await;
    }
    assert_eq!(smtp.connections(), 3);

    // After 5 minutes only the temporary verdict is asked again.
    clock.advance(Duration::from_secs(2));
    v.verify("greylist@example.test").await;
    v.verify("unknown@example.test").await;
    assert_eq!(smtp.connections(), 4);

    // After an hour the negative verdict expires, the positive one not.
    clock.advance(Duration::from_secs(3_600));
    v.verify("unknown@example.test").await;
    v.verify("alice@example.test").await;
    assert_eq!(smtp.connections(), 5);

    // After a day the positive one expires too.
    clock.advance(Duration::from_secs(86_400));
    v.verify("alice@example.test").await;
    assert_eq!(smtp.connections(), 6);
}

#[test]
fn cache_is_bounded_and_evicts_least_recently_used() {
    let now = Instant::now();
    let later = now + Duration::from_secs(60);
    let mut cache = Cache::new(2);
    cache.insert("a".into(), Verdict::Valid, later);
    cache.insert("b".into(), Verdict::Valid, later);
    assert!(cache.get("a", now).is_some()); // "a" is now the most recent
    cache.insert("c".into(), Verdict::Valid, later);
    assert_eq!(cache.len(), 2);
    assert!(cache.get("b", now).is_none(), "b was least recently used");
    assert!(cache.get("a", now).is_some());
    assert!(cache.get("c", now).is_some());
    // Expired entries are not returned and are dropped.
    assert!(cache.get("a", later).is_none());
    assert_eq!(cache.len(), 1);
    // Re-inserting a key replaces it.
    cache.insert("c".into(), Verdict::Skipped, later);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.order.len(), 1);
    // Capacity zero caches nothing.
    let mut none = Cache::new(0);
    none.insert("a".into(), Verdict::Valid, later);
    assert_eq!(none.len(), 0);
}

// --- DNS -----------------------------------------------------------------------------------

#[tokio::test]
async fn mx_hosts_are_tried_in_preference_order() {
    let dns = start_dns().await;
    let smtp = TestSmtp::start(Script::default()).await;
    // Best MX (5, dead.mx.test = 127.0.0.2) refuses; the next one answers.
    let v = verifier(via_dns(&dns, &smtp));
    assert_eq!(v.verify("alice@mx.test").await, Verdict::Valid);
    assert_eq!(smtp.connections(), 1);
    // Allowed only one target, the verifier asks the best MX only.
    let v = verifier(Config {
        max_targets: 1,
        ..via_dns(&dns, &smtp)
    });
    let verdict = v.verify("alice@mx.test").await;
    assert!(
        matches!(&verdict, Verdict::Temporary { reason } if reason.contains("dead.mx.test")),
        "{verdict:?}"
    );
    assert_eq!(smtp.connections(), 1);
}

#[tokio::test]
async fn invalid_answer_from_mx() {
    let dns = start_dns().await;
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_dns(&dns, &smtp));
    assert!(matches!(
        v.verify("unknown@mx.test").await,
        Verdict::Invalid { reply } if reply.starts_with("550 5.1.1")
    ));
}

#[tokio::test]
async fn domain_without_mx_falls_back_to_its_address() {
    let dns = start_dns().await;
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_dns(&dns, &smtp));
    assert_eq!(v.verify("alice@nomx.test").await, Verdict::Valid);
    assert_eq!(smtp.connections(), 1);
}

#[tokio::test]
async fn null_mx_nxdomain_and_no_address_are_invalid() {
    let dns = start_dns().await;
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_dns(&dns, &smtp));
    let verdict = v.verify("alice@nullmx.test").await;
    assert!(
        matches!(&verdict, Verdict::Invalid { reply } if reply.contains("null MX")),
        "{verdict:?}"
    );
    let verdict = v.verify("alice@missing.test").await;
    assert!(
        matches!(&verdict, Verdict::Invalid { reply } if reply.contains("does not exist")),
        "{verdict:?}"
    );
    let verdict = v.verify("alice@noaddr.test").await;
    assert!(
        matches!(&verdict, Verdict::Invalid { reply } if reply.contains("no MX and no address")),
        "{verdict:?}"
    );
    assert_eq!(smtp.connections(), 0);
}

#[tokio::test]
async fn dns_failure_is_temporary() {
    let dns = start_dns().await;
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(via_dns(&dns, &smtp));
    // Outside the served zone the server answers REFUSED.
    let verdict = v.verify("alice@elsewhere.example").await;
    assert!(matches!(verdict, Verdict::Temporary { .. }), "{verdict:?}");

    // A DNS server that does not answer at all.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let v = verifier(Config {
        dns: DnsConfig::server(addr),
        deadline: Duration::from_millis(800),
        ..via_dns(&dns, &smtp)
    });
    let verdict = v.verify("alice@mx.test").await;
    assert!(matches!(verdict, Verdict::Temporary { .. }), "{verdict:?}");
    assert_eq!(smtp.connections(), 0);
}

#[tokio::test]
async fn domain_literal_is_asked_directly() {
    let smtp = TestSmtp::start(Script::default()).await;
    let v = verifier(Config {
        dns: no_dns(),
        smtp_port: smtp.addr.port(),
        ..Config::default()
    });
    assert_eq!(v.verify("<alice@[127.0.0.1]>").await, Verdict::Valid);
    assert_eq!(smtp.connections(), 1);
}

// --- parsing ---------------------------------------------------------------------------

#[test]
fn address_parsing() {
    let a = |s: &str| Address::parse(s);
    assert_eq!(
        a("<Alice@Example.ORG>"),
        Ok(Some(Address {
            local: "Alice".into(),
            domain: "example.org".into()
        }))
    );
    assert_eq!(a("<>"), Ok(None));
    assert_eq!(a("  "), Ok(None));
    assert_eq!(a("user"), Ok(None));
    assert_eq!(
        a("<@relay.example:bob@example.org>").map(|x| x.map(|x| x.key())),
        Ok(Some("bob@example.org".to_string()))
    );
    assert_eq!(
        a("\"odd@local\"@example.org").map(|x| x.map(|x| x.domain)),
        Ok(Some("example.org".to_string()))
    );
    assert!(a("@example.org").is_err());
    assert!(a("bob@").is_err());
    assert!(a("bob@example.org\n").is_ok(), "trailing newline trimmed");
    assert!(a("bob\r\n@example.org").is_err());
    let lit = a("x@[IPv6:::1]")
        .ok()
        .flatten()
        .and_then(|x| x.literal_ip());
    assert_eq!(lit, Some(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)));
}

#[test]
fn reply_line_parsing() {
    assert!(matches!(parse_reply_line("250 ok"), Ok((250, true, "ok"))));
    assert!(matches!(
        parse_reply_line("250-more"),
        Ok((250, false, "more"))
    ));
    assert!(matches!(parse_reply_line("250"), Ok((250, true, ""))));
    for bad in ["", "25", "abc ok", "250x", "700 no", "099 no", "2é0 x"] {
        assert!(parse_reply_line(bad).is_err(), "{bad:?}");
    }
    let reply = SmtpReply {
        code: 550,
        lines: vec!["5.1.1 no\u{7} such".into(), " user ".into()],
    };
    assert_eq!(reply.one_line(), "550 5.1.1 no  such user");
    let long = clean_text(&"é".repeat(400));
    assert!(long.len() <= MAX_TEXT + 3 && long.ends_with("..."));
}

#[test]
fn bad_configuration_is_refused() {
    let config = Config {
        per_domain_limit: 0,
        dns: no_dns(),
        ..Config::default()
    };
    assert!(matches!(
        Verifier::new(config),
        Err(CalloutError::Config(_))
    ));
}
