//! Replays the fuzz corpus and every saved fuzz finding on stable, through
//! the very logic the fuzz targets run (`fuzz/src/logic.rs`, included here
//! by path so there is one copy).
//!
//! The seed corpus is generated from real encoded packets by this file:
//! `MILTER_WRITE_SEEDS=1 cargo test -p milter-proto --test fuzz_corpus`
//! (re)writes `fuzz/corpus/TARGET/seed-*`; without the variable the test
//! checks that the committed seeds match what the encoders produce now.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, Header, MacroLists, Macros, OptNeg,
    OptNegReply, ProtocolFlags, Response,
};

// The fuzz crate exports these functions; here only the test uses them.
#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/logic.rs"]
mod logic;

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 4] = [
    ("frame", logic::frame),
    ("command", logic::command),
    ("response", logic::response),
    ("session", logic::session),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Input files of a directory, sorted, without the README.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

#[test]
fn replay_corpus_and_regressions() {
    let mut failures = Vec::new();
    for (name, run) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty: generate the seeds (see this file's docs)"
        );
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = fs::read(path).expect("readable corpus file");
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "fuzz inputs that fail: {failures:#?}");
}

#[test]
fn regression_directories_exist() {
    for (name, _) in TARGETS {
        let readme = fuzz_dir().join("regressions").join(name).join("README.md");
        assert!(readme.is_file(), "{} is missing", readme.display());
    }
}

// ------------------------------------------------------------------- seeds

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn no_args() -> Vec<&'static str> {
    Vec::new()
}

fn wire(cmd: &Command) -> Vec<u8> {
    let mut out = BytesMut::new();
    cmd.encode(&mut out, 1 << 20).expect("seed commands encode");
    out.to_vec()
}

fn wire_response(resp: &Response) -> Vec<u8> {
    let mut out = BytesMut::new();
    resp.encode(&mut out, 1 << 20)
        .expect("seed responses encode");
    out.to_vec()
}

/// One command of every kind and shape, as Postfix and Sendmail send them.
fn seed_commands() -> Vec<(&'static str, Command)> {
    vec![
        ("optneg-v6", Command::OptNeg(OptNeg::POSTFIX)),
        ("optneg-v2", Command::OptNeg(OptNeg::V2)),
        (
            "macro-connect",
            Command::Macro(
                Macros::new(
                    b'C',
                    [
                        ("j", "mx.example.org"),
                        ("{daemon_name}", "smtpd"),
                        ("_", "client.example.net [192.0.2.1]"),
                    ],
                )
                .unwrap(),
            ),
        ),
        (
            "macro-empty",
            Command::Macro(Macros::new::<&str, &str>(b'L', []).unwrap()),
        ),
        (
            "connect-inet4",
            Command::Connect(Connect {
                hostname: b("client.example.net"),
                address: ConnectAddress::Inet("192.0.2.1:54321".parse().unwrap()),
            }),
        ),
        (
            "connect-inet6",
            Command::Connect(Connect {
                hostname: b("[2001:db8::1]"),
                address: ConnectAddress::Inet("[2001:db8::1]:25".parse().unwrap()),
            }),
        ),
        (
            "connect-unix",
            Command::Connect(Connect {
                hostname: b("localhost"),
                address: ConnectAddress::Unix(b("/run/smtpd")),
            }),
        ),
        (
            "connect-unknown",
            Command::Connect(Connect {
                hostname: b("localhost"),
                address: ConnectAddress::Unknown,
            }),
        ),
        ("helo", Command::Helo(b("client.example.net"))),
        (
            "mail-args",
            Command::Mail(
                Envelope::new(b("<a@example.org>"), ["SIZE=1234", "BODY=8BITMIME"]).unwrap(),
            ),
        ),
        (
            "rcpt",
            Command::Rcpt(Envelope::new(b("<b@example.net>"), no_args()).unwrap()),
        ),
        ("data", Command::Data),
        (
            "header-folded",
            Command::Header(Header {
                name: b("Received"),
                value: b("from x\n\tby y; Mon, 1 Jan 2024 00:00:00 +0000"),
            }),
        ),
        (
            "header-empty-value",
            Command::Header(Header {
                name: b("X-Empty"),
                value: Bytes::new(),
            }),
        ),
        ("eoh", Command::EndOfHeaders),
        ("body", Command::Body(b("Hello,\r\n\r\nbye.\r\n"))),
        ("eom", Command::EndOfMessage(Bytes::new())),
        ("eom-data", Command::EndOfMessage(b("tail\r\n"))),
        ("abort", Command::Abort),
        ("quit", Command::Quit),
        ("quit-nc", Command::QuitNc),
        ("unknown", Command::Unknown(b("HELP"))),
    ]
}

/// Spellings the encoder never produces but MTAs send.
fn seed_raw_commands() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "connect-ipv6-prefix",
            b"\x00\x00\x00\x1aChost\x006\xd4\x31IPv6:2001:db8::1\x00".to_vec(),
        ),
        (
            "connect-ipv6-bracket",
            b"\x00\x00\x00\x17Chost\x006\xd4\x31[2001:db8::1]\x00".to_vec(),
        ),
        ("macro-odd", b"\x00\x00\x00\x04DCj\x00".to_vec()),
    ]
}

fn seed_responses() -> Vec<(&'static str, Response)> {
    vec![
        (
            "optneg",
            Response::OptNeg(OptNegReply {
                version: 6,
                actions: Actions::ADD_HEADERS | Actions::SET_SYMLIST,
                protocol: ProtocolFlags::NR_HEADER | ProtocolFlags::SKIP,
                macros: MacroLists::new([(0, "j {daemon_name}"), (5, "i")]).unwrap(),
            }),
        ),
        ("continue", Response::Continue),
        ("accept", Response::Accept),
        ("reject", Response::Reject),
        ("tempfail", Response::Tempfail),
        ("discard", Response::Discard),
        ("skip", Response::Skip),
        ("progress", Response::Progress),
        (
            "replycode",
            Response::ReplyCode(b("451-4.7.1 Greylisted\r\n451 4.7.1 retry later")),
        ),
        (
            "addheader",
            Response::AddHeader {
                name: b("X-Spam"),
                value: b("yes"),
            },
        ),
        (
            "insheader",
            Response::InsertHeader {
                index: 0,
                name: b("X-First"),
                value: b("top"),
            },
        ),
        (
            "chgheader",
            Response::ChangeHeader {
                index: 1,
                name: b("Subject"),
                value: Bytes::new(),
            },
        ),
        (
            "chgfrom",
            Response::ChangeFrom {
                address: b("<n@example.org>"),
                args: Some(b("SIZE=10")),
            },
        ),
        (
            "addrcpt",
            Response::AddRcpt {
                address: b("<c@example.com>"),
            },
        ),
        (
            "addrcpt-par",
            Response::AddRcptPar {
                address: b("<c@example.com>"),
                args: Some(b("NOTIFY=NEVER")),
            },
        ),
        (
            "delrcpt",
            Response::DeleteRcpt {
                address: b("<b@example.net>"),
            },
        ),
        ("replbody", Response::ReplaceBody(b("new\r\n"))),
        ("quarantine", Response::Quarantine { reason: b("spam") }),
        ("connfail", Response::ConnectionFail),
        ("shutdown", Response::Shutdown),
        ("setsymlist", Response::SetSymList(b("\0\0\0\0j\0"))),
    ]
}

/// Code byte + payload: the input format of the command/response targets.
fn strip_len(frame: &[u8]) -> Vec<u8> {
    frame.get(4..).unwrap_or_default().to_vec()
}

fn cmd_op(code: u8) -> u8 {
    let i = logic::SESSION_COMMANDS
        .iter()
        .position(|&c| c == code)
        .expect("a session command");
    u8::try_from(i).unwrap()
}

fn resp_op(resp: &Response) -> u8 {
    let i = logic::session_responses()
        .iter()
        .position(|r| r == resp)
        .expect("a session response");
    0x80 | u8::try_from(i + 1).unwrap()
}

fn optneg_op(version: u8, actions: u32, protocol: u32) -> Vec<u8> {
    let mut v = vec![0x80 | logic::SESSION_OPTNEG_REPLY, version];
    v.extend_from_slice(&actions.to_be_bytes());
    v.extend_from_slice(&protocol.to_be_bytes());
    v
}

/// A whole Postfix conversation as `session` ops.
fn session_postfix(protocol: u32, two_messages: bool) -> Vec<u8> {
    let c = resp_op(&Response::Continue);
    let mut ops = optneg_op(6, 0x1ff, protocol);
    let nr = ProtocolFlags::from_bits_retain(protocol);
    let step = |ops: &mut Vec<u8>, code: u8, flag: ProtocolFlags| {
        ops.push(cmd_op(b'D'));
        ops.push(cmd_op(code));
        if !nr.contains(flag) {
            ops.push(c);
        }
    };
    step(&mut ops, b'C', ProtocolFlags::NR_CONNECT);
    step(&mut ops, b'H', ProtocolFlags::NR_HELO);
    let messages = if two_messages { 2 } else { 1 };
    for _ in 0..messages {
        step(&mut ops, b'M', ProtocolFlags::NR_MAIL);
        step(&mut ops, b'R', ProtocolFlags::NR_RCPT);
        step(&mut ops, b'R', ProtocolFlags::NR_RCPT);
        step(&mut ops, b'T', ProtocolFlags::NR_DATA);
        step(&mut ops, b'L', ProtocolFlags::NR_HEADER);
        step(&mut ops, b'L', ProtocolFlags::NR_HEADER);
        step(&mut ops, b'N', ProtocolFlags::NR_EOH);
        step(&mut ops, b'B', ProtocolFlags::NR_BODY);
        ops.push(cmd_op(b'D'));
        ops.push(cmd_op(b'E'));
        ops.push(resp_op(&Response::Progress));
        ops.push(resp_op(&Response::AddHeader {
            name: b("X-A"),
            value: b("1"),
        }));
        ops.push(c);
        ops.push(cmd_op(b'A'));
    }
    ops.push(cmd_op(b'Q'));
    ops
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, cmd) in seed_commands() {
        out.push(("command", format!("seed-{name}"), strip_len(&wire(&cmd))));
    }
    for (name, raw) in seed_raw_commands() {
        out.push(("command", format!("seed-{name}"), strip_len(&raw)));
    }
    for (name, resp) in seed_responses() {
        out.push((
            "response",
            format!("seed-{name}"),
            strip_len(&wire_response(&resp)),
        ));
    }

    // frame: max byte (x4), push size, then a stream.
    let mut stream = Vec::new();
    for (_, cmd) in seed_commands() {
        stream.extend(wire(&cmd));
    }
    for (_, resp) in seed_responses() {
        stream.extend(wire_response(&resp));
    }
    let with = |max: u8, step: u8, s: &[u8]| [&[max, step][..], s].concat();
    out.push(("frame", "seed-all-packets".into(), with(255, 7, &stream)));
    out.push((
        "frame",
        "seed-all-packets-bytewise".into(),
        with(255, 1, &stream),
    ));
    out.push((
        "frame",
        "seed-too-large".into(),
        with(4, 3, b"\x00\x00\x00\x20Bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ));
    out.push((
        "frame",
        "seed-zero-length".into(),
        with(255, 2, b"\0\0\0\0c"),
    ));
    out.push((
        "frame",
        "seed-http-probe".into(),
        with(255, 16, b"GET / HTTP/1.0\r\n\r\n"),
    ));

    out.push((
        "session",
        "seed-postfix-v6".into(),
        session_postfix(0, true),
    ));
    out.push((
        "session",
        "seed-postfix-nr".into(),
        session_postfix(ProtocolFlags::ALL_NR.bits(), false),
    ));
    out.push((
        "session",
        "seed-no-connect-no-mail".into(),
        session_postfix(
            (ProtocolFlags::NO_CONNECT | ProtocolFlags::NO_MAIL).bits(),
            false,
        ),
    ));
    let mut quit_nc = optneg_op(6, 0x1ff, 0);
    quit_nc.extend([
        cmd_op(b'C'),
        resp_op(&Response::Continue),
        cmd_op(b'K'),
        cmd_op(b'C'),
        resp_op(&Response::Accept),
        cmd_op(b'U'),
        resp_op(&Response::Reject),
        cmd_op(b'Q'),
    ]);
    out.push(("session", "seed-quit-nc".into(), quit_nc));
    out
}

#[test]
fn seed_corpus_is_current() {
    let write = std::env::var_os("MILTER_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        if write {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
        } else if fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (regenerate with MILTER_WRITE_SEEDS=1): {stale:#?}"
    );
}

#[test]
fn seeds_pass_their_targets() {
    // Independent of the files on disk: the generated seeds themselves.
    for (target, name, bytes) in seeds() {
        let (_, run) = TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("a known target");
        let ok = catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_ok();
        assert!(ok, "seed {target}/{name} fails its target");
    }
}
