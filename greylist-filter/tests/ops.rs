//! Operations end to end on the real binary: `--check-config`, SIGHUP reload (good and
//! bad), whitelist file reload, the admin endpoint and its CLI, migration from
//! milter-greylist, and the connection limit.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use milter_client::Verdict;
use nix::sys::signal::Signal;

#[test]
fn check_config_reports_every_error_with_file_and_line() {
    let dir = tempdir();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[greylist]\ndelay = \"5m\"\nretry_window = \"banana\"\nbogus = 1\n\n[reply]\ncode = 550\n",
    )
    .unwrap();
    let (status, out, err) = run(dir.path(), &["--check-config", &path_str(&bad)]);
    assert!(!status.success(), "{out}{err}");
    let name = path_str(&bad);
    assert!(
        err.contains(&format!("{name}:3:")),
        "bad duration on line 3:\n{err}"
    );
    assert!(
        err.contains(&format!("{name}:4:")),
        "unknown key on line 4:\n{err}"
    );
    assert!(err.contains("bogus"), "{err}");
    // The semantic error is found even with the parse errors present.
    let (status, _, err) = run(dir.path(), &["--config", "bad.toml", "--check-config"]);
    assert!(!status.success());
    assert!(err.contains("bad.toml:3:"), "{err}");

    std::fs::write(&bad, "[reply]\ncode = 550\n").unwrap();
    let (status, _, err) = run(dir.path(), &["--check-config", "bad.toml"]);
    assert!(!status.success());
    assert!(err.contains("bad.toml:2:") && err.contains("4xx"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, include_str!("../greylist.toml.example")).unwrap();
    let (status, out, err) = run(dir.path(), &["--check-config", "good.toml"]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");

    // A flag override is checked as well.
    let (status, _, err) = run(
        dir.path(),
        &["--check-config", "good.toml", "--delay", "2d"],
    );
    assert!(!status.success());
    assert!(err.contains("--delay"), "{err}");

    // Without a file there is nothing to check.
    let (status, _, err) = run(dir.path(), &["--check-config"]);
    assert!(!status.success());
    assert!(err.contains("needs a file"), "{err}");
}

#[test]
fn refuses_to_start_on_bad_configuration_or_remote_admin() {
    let dir = tempdir();
    std::fs::write(dir.path().join("g.toml"), "[greylist]\nfoo = 1\n").unwrap();
    let (status, _, err) = run(
        dir.path(),
        &["--config", "g.toml", "--listen", "inet:0@127.0.0.1"],
    );
    assert!(!status.success());
    assert!(err.contains("g.toml:2:"), "{err}");
    let (status, _, err) = run(
        dir.path(),
        &["--listen", "inet:0@127.0.0.1", "--admin", "192.0.2.1:8025"],
    );
    assert!(!status.success());
    assert!(err.contains("loopback"), "{err}");
    assert!(
        !dir.path().join("greylist.redb").exists(),
        "nothing opened before the configuration is checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_and_refuses_a_bad_one() {
    let dir = tempdir();
    let cfg = dir.path().join("g.toml");
    std::fs::write(dir.path().join("nets.txt"), "# none yet\n").unwrap();
    std::fs::write(
        &cfg,
        "[whitelist]\nnetwork_files = [\"nets.txt\"]\nfile_check_interval = \"1s\"\n",
    )
    .unwrap();
    let d = Daemon::start(
        dir.path(),
        &["--config", "g.toml", "--listen", "inet:0@127.0.0.1"],
    );
    let from_a = message("203.0.113.5", "a@example.org", &["b@example.net"]);
    let from_b = message("198.51.100.5", "a@example.org", &["b@example.net"]);
    assert_eq!(send(&d.milter, &from_a).await.verdict, Verdict::Tempfailed);
    assert_eq!(send(&d.milter, &from_b).await.verdict, Verdict::Tempfailed);

    // A good configuration: whitelist 203.0.113.0/24 and reload.
    std::fs::write(
        &cfg,
        "[whitelist]\nnetwork_files = [\"nets.txt\"]\nfile_check_interval = \"1s\"\nnetworks = [\"203.0.113.0/24\"]\n",
    )
    .unwrap();
    let mark = d.log_mark();
    d.signal(Signal::SIGHUP);
    d.wait_log_after(mark, "configuration reloaded", DEADLINE)
        .unwrap_or_else(|| panic!("no reload:\n{}", d.log()));
    let out = send(&d.milter, &from_a).await;
    assert!(accepted(&out, "b@example.net"), "{}", out.smtp_text());

    // A bad one (unknown key on line 2): refused with file:line, the old one stays.
    std::fs::write(&cfg, "[whitelist]\nnetworkz = [\"203.0.113.0/24\"]\n").unwrap();
    let mark = d.log_mark();
    d.signal(Signal::SIGHUP);
    let refused = d
        .wait_log_after(mark, "reload refused", DEADLINE)
        .unwrap_or_else(|| panic!("no refusal:\n{}", d.log()));
    assert!(
        refused.contains("previous configuration stays"),
        "{refused}"
    );
    let located = d
        .wait_log_after(mark, "g.toml:2:", DEADLINE)
        .unwrap_or_else(|| panic!("error not located:\n{}", d.log()));
    assert!(located.contains("networkz"), "{located}");
    let out = send(&d.milter, &from_a).await;
    assert!(accepted(&out, "b@example.net"), "old config still in force");

    // Whitelist files reload on their own when they change.
    let mark = d.log_mark();
    std::fs::write(dir.path().join("nets.txt"), "198.51.100.0/24\n").unwrap();
    d.wait_log_after(mark, "whitelist files reloaded", DEADLINE)
        .unwrap_or_else(|| panic!("no file reload:\n{}", d.log()));
    let out = send(&d.milter, &from_b).await;
    assert!(accepted(&out, "b@example.net"), "{}", out.smtp_text());
    let log = d.stop();
    assert!(log.contains("reason=whitelist_network"), "{log}");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_explain_list_flush_and_metrics() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            "--listen",
            "inet:0@127.0.0.1",
            "--admin",
            "127.0.0.1:0",
            "--delay",
            "10m",
        ],
    );
    let admin = d.admin.clone().expect("admin address in the ready line");
    let m = message(
        "192.0.2.50",
        "prvs=0a0b0c0d=news@example.com",
        &["bob@example.net"],
    );
    assert_eq!(send(&d.milter, &m).await.verdict, Verdict::Tempfailed);

    // explain through the CLI, JSON answer.
    let explain = [
        "explain",
        "--admin",
        &admin,
        "--ip",
        "192.0.2.51",
        "--from",
        "news@example.com",
        "--rcpt",
        "bob@example.net",
    ];
    let (status, out, err) = run(dir.path(), &[&explain[..], &["--json"]].concat());
    assert!(status.success(), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "greylist", "{v}");
    assert_eq!(v["reason"], "too_early", "{v}");
    assert_eq!(v["key"]["network"], "192.0.2.0/24");
    assert_eq!(v["record"]["state"], "pending");
    let passes_at = v["passes_at"].as_u64().unwrap();
    assert!(passes_at > now() + 500 && passes_at <= now() + 600, "{v}");
    // explain changes nothing: the record still has one attempt.
    assert_eq!(v["record"]["attempts"], 1, "{v}");

    // Human form.
    let (status, out, _) = run(dir.path(), &explain);
    assert!(status.success());
    assert!(out.contains("a retry passes in"), "{out}");

    // list.
    let (status, out, err) = run(
        dir.path(),
        &["list", "--admin", &admin, "--ip", "192.0.2.1"],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("network 192.0.2.0/24"), "{out}");
    assert!(out.contains("news@example.com -> bob@example.net"), "{out}");
    let (status, out, _) = run(dir.path(), &["list", "--admin", &admin]);
    assert!(status.success());
    assert!(out.contains("pending 1"), "{out}");

    // metrics.
    let (code, body) = greylist_filter::admin::request(&admin, "GET", "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("greylist_decisions_total{outcome=\"greylist\",reason=\"new_tuple\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("greylist_records{kind=\"pending\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("greylist_store_latency_seconds_count"),
        "{body}"
    );

    // flush, then the tuple is new again.
    let (status, out, err) = run(
        dir.path(),
        &["flush", "--admin", &admin, "--ip", "192.0.2.200"],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("1 tuple records deleted"), "{out}");
    let (code, body) = greylist_filter::admin::request(
        &admin,
        "GET",
        "/explain?ip=192.0.2.50&from=news%40example.com&rcpt=bob%40example.net",
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"reason\":\"new_tuple\""), "{body}");

    // Bad requests are answered, not crashed on.
    let (code, _) = greylist_filter::admin::request(&admin, "GET", "/explain?ip=nope&rcpt=x")
        .await
        .unwrap();
    assert_eq!(code, 400);
    let (status, _, err) = run(
        dir.path(),
        &[
            "explain", "--admin", &admin, "--ip", "nope", "--rcpt", "x@y",
        ],
    );
    assert!(!status.success());
    assert!(err.contains("not an IP address"), "{err}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_milter_greylist_conf_and_dump() {
    let dir = tempdir();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let (status, toml, err) = run(
        dir.path(),
        &["import-conf", &format!("{data}/greylist.conf")],
    );
    assert!(status.success(), "{err}");
    assert!(
        err.contains("greylist.conf:"),
        "warnings carry the line: {err}"
    );
    let c = greylist_filter::config::Config::parse(&toml, std::path::Path::new("imported.toml"))
        .unwrap_or_else(|e| panic!("{e:?}\n{toml}"));
    assert_eq!(c.greylist.delay.0, 15 * 60);
    // The imported file passes --check-config.
    std::fs::write(dir.path().join("imported.toml"), &toml).unwrap();
    let (status, out, err) = run(dir.path(), &["--check-config", "imported.toml"]);
    assert!(status.success(), "{out}{err}");

    // A dump with live entries: one auto-whitelisted, one pending that is due, one
    // unreadable line.
    let t = now();
    let dump = format!(
        "# greylist.db\n\
         198.51.100.4\t<billing@example.org>\t<dave@example.net>\t{aw} AUTO\n\
         192.0.2.45\t<news@example.com>\t<bob@example.net>\t{due}\n\
         not-an-ip\t<x@example.com>\t<y@example.net>\t{due}\n",
        aw = t + 86_400,
        due = t.saturating_sub(10),
    );
    std::fs::write(dir.path().join("greylist.db"), dump).unwrap();
    let (status, out, err) = run(
        dir.path(),
        &["import-db", "greylist.db", "--store", "imported.redb"],
    );
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("imported 2 of 2 records"), "{out}");
    assert!(err.contains("greylist.db:4:"), "{err}");

    let d = Daemon::start(
        dir.path(),
        &["--listen", "inet:0@127.0.0.1", "--store", "imported.redb"],
    );
    let out = send(
        &d.milter,
        &message("198.51.100.4", "billing@example.org", &["dave@example.net"]),
    )
    .await;
    assert!(accepted(&out, "dave@example.net"), "{}", out.smtp_text());
    assert_eq!(x_greylist(&out), None, "auto-whitelisted, not delayed");
    let out = send(
        &d.milter,
        &message("192.0.2.45", "news@example.com", &["bob@example.net"]),
    )
    .await;
    assert!(accepted(&out, "bob@example.net"), "{}", out.smtp_text());
    assert!(
        x_greylist(&out).is_some(),
        "a pending tuple whose delay is over passes now"
    );
    d.stop();
}

#[test]
fn runs_with_no_arguments_on_the_documented_defaults() {
    // The README command without --listen: inet:7357@127.0.0.1 and ./greylist.redb.
    // Port 7357 may be taken on a shared machine; then the error must say so.
    let dir = tempdir();
    let mut child = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + DEADLINE;
    let mut ok = false;
    while std::time::Instant::now() < end {
        if std::net::TcpStream::connect("127.0.0.1:7357").is_ok()
            && dir.path().join("greylist.redb").exists()
        {
            ok = true;
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !status.success() && err.contains("7357"),
                "exited without listening: {err}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(ok, "not listening on 127.0.0.1:7357 within {DEADLINE:?}");
    assert!(status.success());
}

/// `[milter] max_connections` and `over_limit = "refuse"`: a connection
/// beyond the limit is closed at once and logged; once a session ends, the
/// next connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_the_extra_connection() {
    let dir = tempdir();
    let d = Daemon::start_with_config(
        dir.path(),
        "[milter]\nmax_connections = 1\nover_limit = \"refuse\"\n",
        &["--listen", "inet:0@127.0.0.1"],
    );
    let client = client();
    let held = client.connect(&d.milter).await.expect("first connection");

    let mark = d.log_mark();
    let refused = client.connect(&d.milter).await;
    assert!(refused.is_err(), "a second connection was served");
    d.wait_log_after(mark, "connection limit is reached", DEADLINE)
        .unwrap_or_else(|| panic!("refusal not logged:\n{}", d.log()));

    held.quit().await.expect("quit");
    // The permit comes back when the daemon has seen the QUIT.
    let started = std::time::Instant::now();
    let mut conn = loop {
        match client.connect(&d.milter).await {
            Ok(conn) => break conn,
            Err(_) if started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no connection after the first ended: {e}\n{}", d.log()),
        }
    };
    let out = conn
        .send_message(&message("203.0.113.9", "a@example.org", &["b@example.net"]))
        .await
        .expect("send_message");
    assert_eq!(out.verdict, Verdict::Tempfailed, "{}", out.smtp_text());
    let _ = conn.quit().await;
    d.stop();
}
