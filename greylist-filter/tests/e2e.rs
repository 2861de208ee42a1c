//! End to end: the real binary, driven through milter-client over a unix socket and
//! over TCP on an ephemeral port.
//!
//! The client addresses are documentation networks (192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24) sent in the CONNECT packet, so the daemon's built-in loopback bypass
//! does not hide anything; one test checks that bypass explicitly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use milter_client::{Stage, Verdict};

const DELAY: &str = "2s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylists_then_passes_with_header_over_unix_socket() {
    let dir = tempdir();
    let sock = format!("unix:{}", path_str(&dir.path().join("milter.sock")));
    let d = Daemon::start(
        dir.path(),
        &["--listen", &sock, "--delay", DELAY, "--store", "g.redb"],
    );
    assert_eq!(d.milter, sock);

    // 1. First attempt: 451 4.7.1 at RCPT, the message goes no further.
    let m = message("192.0.2.10", "alice@example.org", &["bob@example.net"]);
    let t0 = Instant::now();
    let first = send(&d.milter, &m).await;
    assert_eq!(first.verdict, Verdict::Tempfailed, "{}", first.smtp_text());
    assert_eq!(first.decided_at, Stage::Rcpt);
    let reply = refusal(&first, "bob@example.net").expect("bob refused");
    assert!(reply.starts_with("451 4.7.1 "), "{reply}");
    assert!(
        first.reply_at(Stage::Data).is_none(),
        "no DATA after a refused only recipient"
    );

    // 2. An early retry is refused again (only meaningful while still inside the delay).
    let early = send(&d.milter, &m).await;
    if t0.elapsed() < Duration::from_secs(1) {
        assert_eq!(early.verdict, Verdict::Tempfailed, "{}", early.smtp_text());
        let reply = refusal(&early, "bob@example.net").expect("bob refused");
        assert!(reply.starts_with("451 4.7.1 "), "{reply}");
    }

    // 3. Retrying until the delay has passed: accepted, and X-Greylist says so.
    let (passed, attempts) = retry_until_accepted(&d.milter, &m, Duration::from_millis(250)).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "passed before the delay"
    );
    assert!(attempts >= 2);
    assert!(accepted(&passed, "bob@example.net"));
    let h = x_greylist(&passed).expect("X-Greylist header on the delayed message");
    assert!(
        h.starts_with("delayed ") && h.contains("by greylist-filter"),
        "{h}"
    );

    // 4. The same tuple again: auto-whitelisted, no header (it was not delayed).
    let again = send(&d.milter, &m).await;
    assert!(accepted(&again, "bob@example.net"));
    assert_eq!(x_greylist(&again), None);

    // 5. Another recipient is a new tuple: 451 for it, bob still accepted.
    let two = message(
        "192.0.2.10",
        "alice@example.org",
        &["bob@example.net", "carol@example.net"],
    );
    let out = send(&d.milter, &two).await;
    assert!(accepted(&out, "bob@example.net"), "{:?}", out.stages);
    let reply = refusal(&out, "carol@example.net").expect("carol refused");
    assert!(reply.starts_with("451 4.7.1 "), "{reply}");
    assert_eq!(x_greylist(&out), None);

    // 6. A BATV-tagged sender is the same sender: passes on the existing record.
    let batv = message(
        "192.0.2.10",
        "prvs=0123abcd=alice@example.org",
        &["bob@example.net"],
    );
    let out = send(&d.milter, &batv).await;
    assert!(accepted(&out, "bob@example.net"), "{}", out.smtp_text());
    // Another host of the same /24 shares the record too.
    let neighbour = message("192.0.2.77", "alice@example.org", &["bob@example.net"]);
    assert!(accepted(
        &send(&d.milter, &neighbour).await,
        "bob@example.net"
    ));

    let log = d.stop();
    assert!(log.contains("greylist decision"), "{log}");
    assert!(log.contains("decision=greylist"), "{log}");
    assert!(log.contains("reason=delay_met"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_defaults_loopback_and_local_networks() {
    let dir = tempdir();
    // No --store: the state goes to ./greylist.redb in the working directory.
    let d = Daemon::start_with_config(
        dir.path(),
        "[whitelist]\nlocal_networks = [\"198.51.100.0/24\"]\n",
        &["--listen", "inet:0@127.0.0.1"],
    );
    assert!(d.milter.starts_with("inet:"), "{}", d.milter);
    assert!(!d.milter.starts_with("inet:0@"), "{}", d.milter);
    assert!(dir.path().join("greylist.redb").is_file());

    // A stranger is greylisted: nothing whitelists 192.0.2.0/24 ...
    let a_to_b = |ip: &str| message(ip, "a@example.org", &["b@example.net"]);
    let out = send(&d.milter, &a_to_b("192.0.2.20")).await;
    assert_eq!(out.verdict, Verdict::Tempfailed);
    // ... loopback clients are never greylisted ...
    let out = send(&d.milter, &a_to_b("127.0.0.1")).await;
    assert!(accepted(&out, "b@example.net"), "{}", out.smtp_text());
    let out = send(&d.milter, &a_to_b("::1")).await;
    assert!(accepted(&out, "b@example.net"), "{}", out.smtp_text());
    // ... nor are the configured local networks, nor postmaster@.
    let out = send(&d.milter, &a_to_b("198.51.100.9")).await;
    assert!(accepted(&out, "b@example.net"), "{}", out.smtp_text());
    let out = send(
        &d.milter,
        &message("192.0.2.20", "a@example.org", &["postmaster@example.net"]),
    )
    .await;
    assert!(accepted(&out, "postmaster@example.net"));
    // SMTP AUTH bypasses too.
    let authenticated = a_to_b("192.0.2.21").macro_at(Stage::Mail, "{auth_authen}", "alice");
    let out = send(&d.milter, &authenticated).await;
    assert!(accepted(&out, "b@example.net"), "{}", out.smtp_text());
    // An IPv6 client is greylisted (and not confused with loopback).
    let out = send(&d.milter, &a_to_b("2001:db8::5")).await;
    assert_eq!(out.verdict, Verdict::Tempfailed);
    let log = d.stop();
    assert!(log.contains("reason=loopback"), "{log}");
    assert!(log.contains("reason=local_network"), "{log}");
    assert!(log.contains("reason=authenticated"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_tuples_survive_restart_and_kill_9() {
    let dir = tempdir();
    let sock = format!("unix:{}", path_str(&dir.path().join("m.sock")));
    let pidfile = dir.path().join("gf.pid");
    let pid_arg = path_str(&pidfile);
    let args = [
        "--listen",
        sock.as_str(),
        "--delay",
        DELAY,
        "--store",
        "state.redb",
        "--pidfile",
        pid_arg.as_str(),
    ];
    let m = message("203.0.113.5", "news@example.com", &["dave@example.net"]);

    let d = Daemon::start(dir.path(), &args);
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid.trim(), d.pid().to_string());
    assert_eq!(send(&d.milter, &m).await.verdict, Verdict::Tempfailed);
    let (passed, _) = retry_until_accepted(&d.milter, &m, Duration::from_millis(250)).await;
    assert!(x_greylist(&passed).is_some());
    let log = d.stop();
    assert!(log.contains("greylist-filter stopped"), "{log}");
    assert!(!pidfile.exists(), "pidfile removed at exit");
    assert!(
        !dir.path().join("m.sock").exists(),
        "socket removed at exit"
    );

    // Graceful restart: the passed tuple passes at once, without a new delay.
    let d = Daemon::start(dir.path(), &args);
    let out = send(&d.milter, &m).await;
    assert!(accepted(&out, "dave@example.net"), "{}", out.smtp_text());
    assert_eq!(x_greylist(&out), None);
    // A second tuple passes in this run, then the process is killed without warning.
    let m2 = message("203.0.113.5", "news@example.com", &["erin@example.net"]);
    assert_eq!(send(&d.milter, &m2).await.verdict, Verdict::Tempfailed);
    retry_until_accepted(&d.milter, &m2, Duration::from_millis(250)).await;
    d.kill9();

    // After kill -9 (stale socket and pidfile left behind) both still pass.
    let d = Daemon::start(dir.path(), &args);
    for m in [&m, &m2] {
        let out = send(&d.milter, m).await;
        assert!(out.is_accepted(), "{}", out.smtp_text());
        assert_eq!(x_greylist(&out), None);
    }
    d.stop();
}
