//! Micro benchmarks of `milter-proto`: decode (frame cut + typed decode) and
//! encode of every command and response kind, of a whole typical message,
//! and body chunk decode at growing sizes (flat: no copy).
//!
//! Run: `cargo bench -p milter-benches --bench proto -- --warm-up-time 1 --measurement-time 3`
//! Results and method: `benches/README.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use milter_proto::frame::{DEFAULT_MAX_INBOUND, MAX_DATA_SIZE_64K};
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, Frame, FrameDecoder, Header, MacroLists,
    Macros, OptNeg, OptNegReply, ProtocolFlags, Response,
};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn no_args() -> Vec<&'static str> {
    Vec::new()
}

/// One command of each kind, with typical Postfix contents.
fn commands() -> Vec<(&'static str, Command)> {
    vec![
        ("optneg", Command::OptNeg(OptNeg::POSTFIX)),
        (
            "macro",
            Command::Macro(
                Macros::new(
                    b'C',
                    [
                        ("j", "mx.example.org"),
                        ("{daemon_name}", "mx.example.org"),
                        ("v", "Postfix 3.12"),
                        ("_", "client.example.net [198.51.100.7]"),
                    ],
                )
                .unwrap(),
            ),
        ),
        (
            "connect_inet4",
            Command::Connect(Connect {
                hostname: b("client.example.net"),
                address: ConnectAddress::Inet("198.51.100.7:51234".parse().unwrap()),
            }),
        ),
        (
            "connect_inet6",
            Command::Connect(Connect {
                hostname: b("[2001:db8::7]"),
                address: ConnectAddress::Inet("[2001:db8::7]:51234".parse().unwrap()),
            }),
        ),
        (
            "connect_unix",
            Command::Connect(Connect {
                hostname: b("localhost"),
                address: ConnectAddress::Unix(b("/run/smtpd")),
            }),
        ),
        ("helo", Command::Helo(b("client.example.net"))),
        (
            "mail",
            Command::Mail(
                Envelope::new(b("<a@example.net>"), ["SIZE=14000", "BODY=8BITMIME"]).unwrap(),
            ),
        ),
        (
            "rcpt",
            Command::Rcpt(Envelope::new(b("<b@example.org>"), no_args()).unwrap()),
        ),
        ("data", Command::Data),
        (
            "header",
            Command::Header(Header {
                name: b("Subject"),
                value: b("Quarterly report, final version"),
            }),
        ),
        ("eoh", Command::EndOfHeaders),
        ("body_1k", Command::Body(Bytes::from(vec![b'x'; 1024]))),
        ("eom", Command::EndOfMessage(Bytes::new())),
        ("abort", Command::Abort),
        ("quit", Command::Quit),
        ("quit_nc", Command::QuitNc),
        ("unknown", Command::Unknown(b("XCLIENT NAME=spike"))),
    ]
}

/// One response of each kind.
fn responses() -> Vec<(&'static str, Response)> {
    vec![
        (
            "optneg",
            Response::OptNeg(OptNegReply {
                version: 6,
                actions: Actions::ADD_HEADERS | Actions::SET_SYMLIST,
                protocol: ProtocolFlags::NO_HEADERS | ProtocolFlags::NO_BODY,
                macros: MacroLists::new([(0, "j {daemon_name}"), (3, "{rcpt_addr}")]).unwrap(),
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
            Response::ReplyCode(b("451 4.7.1 Greylisted, please retry in 300 seconds")),
        ),
        (
            "addheader",
            Response::AddHeader {
                name: b("X-Greylist"),
                value: b("delayed 300 seconds"),
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
                value: b("[SPAM] hello"),
            },
        ),
        (
            "chgfrom",
            Response::ChangeFrom {
                address: b("<bounce@example.org>"),
                args: Some(b("SIZE=100")),
            },
        ),
        (
            "addrcpt",
            Response::AddRcpt {
                address: b("<archive@example.org>"),
            },
        ),
        (
            "addrcpt_par",
            Response::AddRcptPar {
                address: b("<archive@example.org>"),
                args: Some(b("NOTIFY=NEVER")),
            },
        ),
        (
            "delrcpt",
            Response::DeleteRcpt {
                address: b("<b@example.org>"),
            },
        ),
        (
            "replbody_1k",
            Response::ReplaceBody(Bytes::from(vec![b'y'; 1024])),
        ),
        ("quarantine", Response::Quarantine { reason: b("spam") }),
        ("connfail", Response::ConnectionFail),
        ("shutdown", Response::Shutdown),
        ("setsymlist", Response::SetSymList(b("\0\0\0\0j\0"))),
    ]
}

/// The ~15 frames of a typical message (Postfix, v6, one recipient).
fn typical_message() -> Vec<Command> {
    let mut c = vec![
        Command::Macro(
            Macros::new(b'C', [("j", "mx.example.org"), ("{daemon_name}", "mx")]).unwrap(),
        ),
        Command::Connect(Connect {
            hostname: b("client.example.net"),
            address: ConnectAddress::Inet("198.51.100.7:51234".parse().unwrap()),
        }),
        Command::Helo(b("client.example.net")),
        Command::Macro(Macros::new(b'M', [("{mail_addr}", "a@example.net")]).unwrap()),
        Command::Mail(Envelope::new(b("<a@example.net>"), ["SIZE=1400"]).unwrap()),
        Command::Rcpt(Envelope::new(b("<b@example.org>"), no_args()).unwrap()),
        Command::Data,
    ];
    for (name, value) in [
        ("From", "A <a@example.net>"),
        ("To", "B <b@example.org>"),
        ("Subject", "hello"),
        ("Date", "Mon, 1 Jan 2024 00:00:00 +0000"),
        ("Message-ID", "<1@example.net>"),
    ] {
        c.push(Command::Header(Header {
            name: Bytes::from_static(name.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        }));
    }
    c.push(Command::EndOfHeaders);
    c.push(Command::Body(Bytes::from(vec![b'z'; 1200])));
    c.push(Command::EndOfMessage(Bytes::new()));
    c
}

fn encoded(cmd: &Command) -> Vec<u8> {
    let mut out = BytesMut::new();
    cmd.encode(&mut out, DEFAULT_MAX_INBOUND).unwrap();
    out.to_vec()
}

/// A read buffer holding `wire`, already shared (as a read buffer is after
/// its first frame was split off), with its first bytes hot in cache.
fn read_buffer(wire: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(wire.len() + 1);
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(wire);
    drop(buf.split_to(1));
    buf
}

/// A read buffer holding one frame of `len` payload bytes (`code`), every
/// byte written as a socket read leaves it. (Fresh zeroed pages from `mmap`
/// would be cheaper to set up but make the first touch of each buffer slow,
/// which has nothing to do with decoding.) `stagger` shifts the frame by
/// whole cache lines: buffers allocated back to back at a large power-of-two
/// stride would otherwise put every frame header in the same cache set.
fn big_read_buffer(code: u8, len: usize, stagger: usize) -> BytesMut {
    let skip = 1 + 64 * (stagger % 61);
    let mut buf = BytesMut::with_capacity(skip + 5 + len);
    buf.resize(skip + 5 + len, b'x');
    drop(buf.split_to(skip));
    let frame_len = u32::try_from(len + 1).unwrap();
    buf[..4].copy_from_slice(&frame_len.to_be_bytes());
    buf[4] = code;
    buf
}

/// Times `routine` on fresh inputs from `setup` without timing the setup.
///
/// Decoding consumes its buffer, so every iteration needs a new one. Inputs
/// are prepared in batches of up to `per_batch`, then decoded back to back
/// under one timer; only those stretches are summed. All `iters` iterations
/// really run, so criterion's wall-clock planning stays right. Before the
/// timer starts, every prepared buffer has an empty frame split off and its
/// first byte read, so that its control block and frame header are as warm
/// in cache as in a read loop, whatever the size of the allocation behind
/// it (a 1 MiB setup would otherwise evict them).
fn iter_fresh<O>(
    iters: u64,
    per_batch: u64,
    mut setup: impl FnMut() -> BytesMut,
    mut routine: impl FnMut(&mut BytesMut) -> O,
) -> Duration {
    let cap = usize::try_from(per_batch).unwrap_or(usize::MAX);
    let mut inputs: Vec<BytesMut> = Vec::with_capacity(cap);
    let mut outputs: Vec<O> = Vec::with_capacity(cap);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_batch);
        inputs.extend((0..n).map(|_| setup()));
        for input in &mut inputs {
            // As after the previous frame was split off a read buffer: the
            // shared control block and the next header are in cache.
            drop(input.split_to(0));
            black_box(input.first());
        }
        let start = Instant::now();
        for input in &mut inputs {
            outputs.push(routine(input));
        }
        total += start.elapsed();
        black_box(&outputs);
        outputs.clear();
        inputs.clear();
        left -= n;
    }
    total
}

/// Times `decode` on frames cut one after another from a single read
/// buffer holding up to 256 copies of `wire` back to back, as a server's
/// reused read buffer holds them: the buffer's control block and the next
/// frame are warm, as they are in a read loop. Setup is not timed.
fn iter_stream<O>(iters: u64, wire: &[u8], mut decode: impl FnMut(&mut BytesMut) -> O) -> Duration {
    let mut outputs: Vec<O> = Vec::with_capacity(256);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(256);
        let mut buf = BytesMut::with_capacity(wire.len() * n as usize);
        for _ in 0..n {
            buf.extend_from_slice(wire);
        }
        // Shared, as a read buffer is once a frame has been split off it.
        drop(buf.split_to(0));
        let start = Instant::now();
        for _ in 0..n {
            outputs.push(decode(&mut buf));
        }
        total += start.elapsed();
        assert!(buf.is_empty());
        black_box(&outputs);
        outputs.clear();
        left -= n;
    }
    total
}

/// How each timed decode gets its frame.
#[derive(Clone, Copy)]
enum Setup {
    /// Each frame in its own read buffer (see [`iter_fresh`]).
    FreshBuffer,
    /// Frames back to back in one read buffer (see [`iter_stream`]).
    ReadBuffer,
}

/// One benchmark per frame in `frames`: cut it with a [`FrameDecoder`],
/// then `decode` it.
fn bench_decode<O>(
    c: &mut Criterion,
    group: &str,
    setup: Setup,
    frames: Vec<(&'static str, Vec<u8>)>,
    decode: impl Fn(Frame) -> O + Copy,
) {
    let mut g = c.benchmark_group(group);
    for (name, wire) in frames {
        g.bench_function(name, |bench| {
            let mut decoder = FrameDecoder::default();
            let mut cut = |buf: &mut BytesMut| decode(decoder.decode(buf).unwrap().unwrap());
            bench.iter_custom(|iters| match setup {
                Setup::FreshBuffer => iter_fresh(iters, 1024, || read_buffer(&wire), &mut cut),
                Setup::ReadBuffer => iter_stream(iters, &wire, &mut cut),
            });
        });
    }
    g.finish();
}

fn command_frames() -> Vec<(&'static str, Vec<u8>)> {
    commands()
        .into_iter()
        .map(|(name, cmd)| (name, encoded(&cmd)))
        .collect()
}

fn response_frames() -> Vec<(&'static str, Vec<u8>)> {
    responses()
        .into_iter()
        .map(|(name, resp)| {
            let mut out = BytesMut::new();
            resp.encode(&mut out, DEFAULT_MAX_INBOUND).unwrap();
            (name, out.to_vec())
        })
        .collect()
}

/// Both set-ups, one group each: `decode_command` (fresh buffer) and
/// `decode_command_stream` (one read buffer).
fn decode_commands(c: &mut Criterion) {
    let decode = |frame| Command::from_frame(frame).unwrap();
    for (group, setup) in [
        ("decode_command", Setup::FreshBuffer),
        ("decode_command_stream", Setup::ReadBuffer),
    ] {
        bench_decode(c, group, setup, command_frames(), decode);
    }
}

/// As [`decode_commands`], for responses.
fn decode_responses(c: &mut Criterion) {
    let decode = |frame: Frame| Response::decode(&frame).unwrap();
    for (group, setup) in [
        ("decode_response", Setup::FreshBuffer),
        ("decode_response_stream", Setup::ReadBuffer),
    ] {
        bench_decode(c, group, setup, response_frames(), decode);
    }
}

fn encode_commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_command");
    for (name, cmd) in commands() {
        g.bench_function(name, |bench| {
            let mut out = BytesMut::with_capacity(4096);
            bench.iter(|| {
                out.clear();
                black_box(&cmd).encode(&mut out, MAX_DATA_SIZE_64K).unwrap();
                black_box(out.len())
            });
        });
    }
    g.finish();
}

fn encode_responses(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_response");
    for (name, resp) in responses() {
        g.bench_function(name, |bench| {
            let mut out = BytesMut::with_capacity(4096);
            bench.iter(|| {
                out.clear();
                black_box(&resp)
                    .encode(&mut out, MAX_DATA_SIZE_64K)
                    .unwrap();
                black_box(out.len())
            });
        });
    }
    g.finish();
}

fn whole_message(c: &mut Criterion) {
    let message = typical_message();
    let mut stream = Vec::new();
    for cmd in &message {
        stream.extend(encoded(cmd));
    }
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(message.len() as u64));
    g.bench_function("decode", |bench| {
        let mut decoder = FrameDecoder::default();
        bench.iter_custom(|iters| {
            iter_fresh(
                iters,
                1024,
                || read_buffer(&stream),
                |buf| {
                    let mut n = 0usize;
                    while let Some(frame) = decoder.decode(buf).unwrap() {
                        black_box(Command::from_frame(frame).unwrap());
                        n += 1;
                    }
                    assert_eq!(n, message.len());
                    n
                },
            )
        });
    });
    g.bench_function("encode", |bench| {
        let mut out = BytesMut::with_capacity(stream.len());
        bench.iter(|| {
            out.clear();
            for cmd in black_box(&message) {
                cmd.encode(&mut out, MAX_DATA_SIZE_64K).unwrap();
            }
            black_box(out.len())
        });
    });
    g.finish();
}

fn body_sizes(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_body");
    for (label, size) in [
        ("1KiB", 1024),
        ("16KiB", 16 * 1024),
        ("64KiB", MAX_DATA_SIZE_64K),
        ("1MiB", DEFAULT_MAX_INBOUND),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(label), &size, |bench, &size| {
            let mut decoder = FrameDecoder::default();
            let mut stagger = 0;
            bench.iter_custom(|iters| {
                iter_fresh(
                    iters,
                    4,
                    || {
                        stagger += 1;
                        big_read_buffer(b'B', size, stagger)
                    },
                    |buf| {
                        let frame = decoder.decode(buf).unwrap().unwrap();
                        let Command::Body(chunk) = Command::from_frame(frame).unwrap() else {
                            unreachable!("a body frame")
                        };
                        assert_eq!(chunk.len(), size);
                        chunk
                    },
                )
            });
        });
    }
    g.finish();
}

/// What decoding would cost if it copied the chunk: the yardstick for
/// "flat in chunk size".
fn copy_reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference_copy");
    for (label, size) in [("64KiB", MAX_DATA_SIZE_64K), ("1MiB", DEFAULT_MAX_INBOUND)] {
        let data = vec![b'x'; size];
        g.bench_function(label, |bench| {
            bench.iter(|| Bytes::copy_from_slice(black_box(&data)));
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    decode_commands,
    encode_commands,
    decode_responses,
    encode_responses,
    whole_message,
    body_sizes,
    copy_reference
);
criterion_main!(benches);
