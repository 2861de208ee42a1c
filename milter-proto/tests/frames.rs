//! Framing: a whole Postfix-like conversation cut into frames however the
//! bytes arrive; lengths checked before memory is reserved; the limit can be
//! changed at run time; decoded fields are views into the read buffer.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use milter_proto::frame::{DEFAULT_MAX_INBOUND, MAX_DATA_SIZE_64K, MAX_DATA_SIZE_256K};
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, Frame, FrameDecoder, FrameError, Header,
    MacroLists, MacroStore, Macros, OptNeg, OptNegReply, ProtocolFlags, Response,
};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn macros(stage: u8, pairs: &[(&str, &str)]) -> Command {
    Command::Macro(Macros::new(stage, pairs.iter().copied()).unwrap())
}

/// A header value over 64 KiB, folded every 76 bytes, as Postfix sends with
/// `header_size_limit = 102400`.
fn long_header_value() -> Bytes {
    let mut v = Vec::new();
    while v.len() < 70_000 {
        v.extend_from_slice(b"\n\t");
        v.extend(std::iter::repeat_n(b'a', 74));
    }
    Bytes::from(v)
}

/// What Postfix sends for one SMTP session with one message: a macro packet
/// before every stage (some empty), ten headers (one folded, one > 64 KiB),
/// body chunks of 65535 and fewer bytes, ABORT after the message, QUIT.
fn postfix_conversation() -> Vec<Command> {
    let mut c = vec![
        Command::OptNeg(OptNeg::POSTFIX),
        macros(
            b'C',
            &[
                ("j", "mx.example.org"),
                ("{daemon_name}", "mx.example.org"),
                ("{daemon_addr}", "192.0.2.25"),
                ("v", "Postfix 3.12"),
                ("_", "client.example.net [198.51.100.7]"),
            ],
        ),
        Command::Connect(Connect {
            hostname: b("client.example.net"),
            address: ConnectAddress::Inet("198.51.100.7:51234".parse().unwrap()),
        }),
        macros(b'H', &[]),
        Command::Helo(b("client.example.net")),
        macros(
            b'M',
            &[
                ("{mail_addr}", "a@example.net"),
                ("{mail_host}", "example.net"),
                ("{mail_mailer}", "smtp"),
            ],
        ),
        Command::Mail(
            Envelope::new(b("<a@example.net>"), ["SIZE=140000", "BODY=8BITMIME"]).unwrap(),
        ),
        macros(
            b'R',
            &[
                ("i", "4FxyZ1234"),
                ("{rcpt_addr}", "b@example.org"),
                ("{rcpt_host}", "example.org"),
                ("{rcpt_mailer}", "local"),
            ],
        ),
        Command::Rcpt(Envelope::new(b("<b@example.org>"), Vec::<&str>::new()).unwrap()),
        macros(b'T', &[("i", "4FxyZ1234")]),
        Command::Data,
    ];
    let headers: [(&str, Bytes); 10] = [
        (
            "Received",
            b("from client.example.net (client.example.net [198.51.100.7])\n\tby mx.example.org"),
        ),
        ("From", b("A <a@example.net>")),
        ("To", b("B <b@example.org>")),
        ("Subject", b("hello")),
        ("Date", b("Mon, 1 Jan 2024 00:00:00 +0000")),
        ("Message-ID", b("<1@example.net>")),
        ("MIME-Version", b("1.0")),
        ("Content-Type", b("text/plain; charset=utf-8")),
        ("X-Empty", Bytes::new()),
        ("X-Long", long_header_value()),
    ];
    for (name, value) in headers {
        c.push(macros(b'L', &[]));
        c.push(Command::Header(Header {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value,
        }));
    }
    c.push(macros(b'N', &[("i", "4FxyZ1234")]));
    c.push(Command::EndOfHeaders);
    let mut chunk = Vec::with_capacity(MAX_DATA_SIZE_64K);
    while chunk.len() < MAX_DATA_SIZE_64K {
        chunk.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n",
        );
    }
    chunk.truncate(MAX_DATA_SIZE_64K);
    for data in [Bytes::from(chunk), b("tail of the body\r\n")] {
        c.push(macros(b'B', &[]));
        c.push(Command::Body(data));
    }
    c.push(macros(b'E', &[("i", "4FxyZ1234")]));
    c.push(Command::EndOfMessage(Bytes::new()));
    c.push(Command::Abort);
    c.push(Command::Quit);
    c
}

fn encode_all(commands: &[Command]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for cmd in commands {
        cmd.encode(&mut out, DEFAULT_MAX_INBOUND).unwrap();
    }
    out.to_vec()
}

fn recording() -> (Vec<Command>, Vec<u8>) {
    let commands = postfix_conversation();
    let stream = encode_all(&commands);
    (commands, stream)
}

/// Takes every whole frame off `buf`.
fn drain(decoder: &mut FrameDecoder, buf: &mut BytesMut, out: &mut Vec<Frame>) {
    while let Some(f) = decoder.decode(buf).expect("valid stream") {
        out.push(f);
    }
}

fn decode_at_once(stream: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::from(stream);
    let mut frames = Vec::new();
    drain(&mut decoder, &mut buf, &mut frames);
    assert!(buf.is_empty());
    frames
}

#[test]
fn recording_has_the_shapes_postfix_sends() {
    let (commands, stream) = recording();
    let header_packets = commands
        .iter()
        .filter(|c| matches!(c, Command::Header(_)))
        .count();
    assert_eq!(header_packets, 10);
    let big = commands.iter().any(|c| match c {
        Command::Header(h) => h.value.len() > 65_536,
        _ => false,
    });
    assert!(big, "one header packet exceeds 64 KiB");
    let full_chunk = commands.iter().any(|c| match c {
        Command::Body(d) => d.len() == MAX_DATA_SIZE_64K,
        _ => false,
    });
    assert!(full_chunk, "one body chunk of 65535 bytes");
    let empty_macros = commands
        .iter()
        .filter(|c| matches!(c, Command::Macro(m) if m.is_empty()))
        .count();
    assert!(empty_macros >= 10);
    assert!(stream.len() > 130_000);
}

#[test]
fn recording_decodes_at_once_to_the_commands() {
    let (commands, stream) = recording();
    let frames = decode_at_once(&stream);
    assert_eq!(frames.len(), commands.len());
    for (frame, cmd) in frames.iter().zip(&commands) {
        assert_eq!(&Command::decode(frame).unwrap(), cmd);
    }
}

#[test]
fn recording_fed_one_byte_at_a_time() {
    let (_, stream) = recording();
    let expected = decode_at_once(&stream);
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for &byte in &stream {
        buf.extend_from_slice(&[byte]);
        drain(&mut decoder, &mut buf, &mut frames);
    }
    assert!(buf.is_empty());
    assert_eq!(frames, expected);
}

#[test]
fn recording_split_at_every_index() {
    let (_, stream) = recording();
    let expected = decode_at_once(&stream);
    let mut decoder = FrameDecoder::default();
    let mut frames = Vec::with_capacity(expected.len());
    for split in 0..=stream.len() {
        let (first, second) = stream.split_at(split);
        let mut buf = BytesMut::with_capacity(first.len());
        frames.clear();
        buf.extend_from_slice(first);
        drain(&mut decoder, &mut buf, &mut frames);
        buf.extend_from_slice(second);
        drain(&mut decoder, &mut buf, &mut frames);
        assert!(buf.is_empty(), "split at {split}: bytes left");
        assert!(frames == expected, "split at {split}: different frames");
    }
}

#[test]
fn recording_in_odd_sized_pushes() {
    let (_, stream) = recording();
    let expected = decode_at_once(&stream);
    for size in [2, 3, 5, 7, 13, 4096, 65_535, 65_536, 65_541, 100_000] {
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for push in stream.chunks(size) {
            buf.extend_from_slice(push);
            drain(&mut decoder, &mut buf, &mut frames);
        }
        assert_eq!(frames, expected, "pushes of {size}");
    }
}

#[test]
fn partial_header_needs_more() {
    let mut decoder = FrameDecoder::default();
    for partial in [
        &b""[..],
        b"\x00",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x05",
        b"\x00\x00\x00\x05H",
    ] {
        let mut buf = BytesMut::from(partial);
        assert_eq!(decoder.decode(&mut buf), Ok(None), "{partial:?}");
        assert_eq!(&buf[..], partial, "nothing consumed");
    }
}

#[test]
fn oversize_length_is_rejected_from_the_four_length_bytes() {
    let mut decoder = FrameDecoder::new(MAX_DATA_SIZE_64K);
    // Only the length has arrived: 2 GiB announced.
    let mut buf = BytesMut::from(&b"\x7f\xff\xff\xff"[..]);
    let cap_before = buf.capacity();
    let err = decoder.decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            len: 0x7fff_fffe,
            ..
        }
    ));
    assert_eq!(buf.capacity(), cap_before, "nothing reserved");
    assert!(buf.capacity() < 64);
    // The largest possible length too.
    let mut buf = BytesMut::from(&b"\xff\xff\xff\xffB"[..]);
    assert!(decoder.decode(&mut buf).is_err());
    assert!(buf.capacity() < 64);
}

#[test]
fn announced_large_frame_reserves_little_ahead() {
    // A legal 1 MiB frame announced, nothing sent yet: at most 64 KiB is
    // reserved, not the announced size.
    let mut decoder = FrameDecoder::default();
    let len = u32::try_from(DEFAULT_MAX_INBOUND + 1).unwrap();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(b"B");
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() < 128 * 1024,
        "reserved {} bytes for a frame that has not arrived",
        buf.capacity()
    );
    // Still in progress after 100 KiB: the buffer grows with the data.
    buf.extend_from_slice(&vec![b'x'; 100 * 1024]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() < DEFAULT_MAX_INBOUND / 2,
        "{}",
        buf.capacity()
    );
    // The rest arrives: one frame of exactly the maximum.
    buf.extend_from_slice(&vec![b'x'; DEFAULT_MAX_INBOUND - 100 * 1024]);
    let frame = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.code, b'B');
    assert_eq!(frame.payload.len(), DEFAULT_MAX_INBOUND);
}

#[test]
fn maximum_is_inclusive() {
    let mut decoder = FrameDecoder::new(3);
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x04Babc"[..]);
    assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().payload, b("abc"));
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x05Babcd"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(FrameError::TooLarge {
            len: 4,
            max: 3,
            raw: [0, 0, 0, 5],
        })
    );
}

#[test]
fn default_maximum_accepts_postfix_headers_over_64k() {
    assert_eq!(FrameDecoder::default().max_payload(), 1 << 20);
    let (_, stream) = recording();
    // Stock libmilter's 64K limit would drop the session on the long header.
    let mut decoder = FrameDecoder::new(MAX_DATA_SIZE_64K);
    let mut buf = BytesMut::from(&stream[..]);
    let mut result = Ok(None);
    for _ in 0..100 {
        result = decoder.decode(&mut buf);
        if !matches!(result, Ok(Some(_))) {
            break;
        }
    }
    assert!(matches!(result, Err(FrameError::TooLarge { .. })));
}

#[test]
fn maximum_can_be_changed_at_run_time() {
    let header = Command::Header(Header {
        name: b("X-Long"),
        value: long_header_value(),
    });
    let mut wire = BytesMut::new();
    header.encode(&mut wire, DEFAULT_MAX_INBOUND).unwrap();

    let mut decoder = FrameDecoder::new(MAX_DATA_SIZE_64K);
    assert_eq!(decoder.max_payload(), MAX_DATA_SIZE_64K);
    assert!(matches!(
        decoder.decode(&mut wire.clone()),
        Err(FrameError::TooLarge { max: 65535, .. })
    ));
    // After MDS negotiation the limit is raised.
    decoder.set_max_payload(MAX_DATA_SIZE_256K);
    assert_eq!(decoder.max_payload(), MAX_DATA_SIZE_256K);
    let frame = decoder.decode(&mut wire.clone()).unwrap().unwrap();
    assert_eq!(Command::decode(&frame).unwrap(), header);
    // And lowered again.
    decoder.set_max_payload(1000);
    assert!(matches!(
        decoder.decode(&mut wire),
        Err(FrameError::TooLarge { max: 1000, .. })
    ));
}

#[test]
fn encode_raw_writes_one_frame() {
    let mut out = BytesMut::new();
    milter_proto::frame::encode_raw(&mut out, b'c', b"", 0).unwrap();
    milter_proto::frame::encode_raw(&mut out, b'B', b"xyz", 3).unwrap();
    assert_eq!(&out[..], b"\x00\x00\x00\x01c\x00\x00\x00\x04Bxyz");
}

// ------------------------------------------------------------- zero copy

fn range_of(bytes: &[u8]) -> Range<usize> {
    let start = bytes.as_ptr() as usize;
    start..start + bytes.len()
}

/// `inner` lies inside `outer` in memory (same allocation, no copy).
fn assert_within(inner: &[u8], outer: &[u8], what: &str) {
    let (i, o) = (range_of(inner), range_of(outer));
    assert!(
        o.start <= i.start && i.end <= o.end,
        "{what} at {i:?} is not inside {o:?}: it was copied"
    );
}

/// Decodes the first frame of `wire`, checking that its payload is a view
/// into the read buffer.
fn frame_in_place(wire: &[u8]) -> Frame {
    let mut buf = BytesMut::from(wire);
    let whole = range_of(&buf);
    let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    let p = range_of(&frame.payload);
    assert!(
        whole.start <= p.start && p.end <= whole.end,
        "the frame payload was copied out of the read buffer"
    );
    frame
}

#[test]
fn body_chunk_points_into_the_frame() {
    let chunk = Bytes::from(vec![b'x'; MAX_DATA_SIZE_64K]);
    let mut wire = BytesMut::new();
    Command::Body(chunk)
        .encode(&mut wire, MAX_DATA_SIZE_64K)
        .unwrap();
    let frame = frame_in_place(&wire);
    let Command::Body(data) = Command::decode(&frame).unwrap() else {
        panic!("not a body chunk")
    };
    assert_within(&data, &frame.payload, "body chunk");
    assert_eq!(data.as_ptr(), frame.payload.as_ptr());
    assert_eq!(data.len(), MAX_DATA_SIZE_64K);
}

#[test]
fn header_fields_point_into_the_frame() {
    let mut wire = BytesMut::new();
    Command::Header(Header {
        name: b("X-Long"),
        value: long_header_value(),
    })
    .encode(&mut wire, DEFAULT_MAX_INBOUND)
    .unwrap();
    let frame = frame_in_place(&wire);
    let Command::Header(h) = Command::decode(&frame).unwrap() else {
        panic!("not a header")
    };
    assert_within(&h.name, &frame.payload, "header name");
    assert_within(&h.value, &frame.payload, "header value");
    // name\0value\0: the value starts right after the name's NUL.
    assert_eq!(
        h.value.as_ptr() as usize,
        frame.payload.as_ptr() as usize + 7
    );
}

#[test]
fn other_fields_point_into_the_frame() {
    let commands = [
        Command::Helo(b("mx.example.org")),
        Command::Mail(Envelope::new(b("<a@example.net>"), ["SIZE=1"]).unwrap()),
        Command::Unknown(b("HELP")),
        Command::EndOfMessage(b("last\r\n")),
        Command::Connect(Connect {
            hostname: b("client"),
            address: ConnectAddress::Unix(b("/run/sock")),
        }),
    ];
    for cmd in commands {
        let mut wire = BytesMut::new();
        cmd.encode(&mut wire, MAX_DATA_SIZE_64K).unwrap();
        let frame = frame_in_place(&wire);
        match Command::decode(&frame).unwrap() {
            Command::Helo(v) | Command::Unknown(v) | Command::EndOfMessage(v) => {
                assert_within(&v, &frame.payload, "field");
            }
            Command::Mail(env) => {
                assert_within(&env.address, &frame.payload, "address");
                for arg in env.args() {
                    assert_within(&arg, &frame.payload, "ESMTP argument");
                }
            }
            Command::Connect(c) => {
                assert_within(&c.hostname, &frame.payload, "host name");
                let ConnectAddress::Unix(path) = c.address else {
                    panic!("family")
                };
                assert_within(&path, &frame.payload, "socket path");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn stored_macro_values_point_into_their_packet() {
    let mut wire = BytesMut::new();
    macros(b'C', &[("j", "mx.example.org"), ("{daemon_name}", "smtpd")])
        .encode(&mut wire, MAX_DATA_SIZE_64K)
        .unwrap();
    let frame = frame_in_place(&wire);
    let Command::Macro(m) = Command::decode(&frame).unwrap() else {
        panic!("not macros")
    };
    for (name, value) in m.pairs() {
        assert_within(&name, &frame.payload, "macro name");
        assert_within(&value, &frame.payload, "macro value");
    }
    let mut store = MacroStore::new();
    store.set(m);
    let v = store.get("{daemon_name}").unwrap();
    assert_eq!(v, b("smtpd"));
    assert_within(&v, &frame.payload, "stored macro value");
}

#[test]
fn optneg_reply_macro_lists_are_one_view_of_the_frame() {
    let sent = MacroLists::new([
        (0, "j {daemon_name}"),
        (2, "i {mail_addr}"),
        (3, "{rcpt_addr}"),
        (5, "{msg_id}"),
    ])
    .unwrap();
    let mut wire = BytesMut::new();
    Response::OptNeg(OptNegReply {
        version: 6,
        actions: Actions::SET_SYMLIST,
        protocol: ProtocolFlags::empty(),
        macros: sent.clone(),
    })
    .encode(&mut wire, MAX_DATA_SIZE_64K)
    .unwrap();
    let frame = frame_in_place(&wire);
    let Response::OptNeg(reply) = Response::decode(&frame).unwrap() else {
        panic!("not an OPTNEG reply")
    };
    assert_eq!(reply.macros, sent);
    // One view: everything after the 12 option bytes, in place.
    let raw = reply.macros.raw();
    assert_within(raw, &frame.payload, "macro lists");
    assert_eq!(raw.as_ptr() as usize, frame.payload.as_ptr() as usize + 12);
    assert_eq!(raw.len(), frame.payload.len() - 12);
    // Each list read from it is a view too, in order.
    let lists: Vec<(u32, Bytes)> = reply.macros.iter().collect();
    for (_, names) in &lists {
        assert_within(names, raw, "macro list");
    }
    assert_eq!(
        lists,
        [
            (0, b("j {daemon_name}")),
            (2, b("i {mail_addr}")),
            (3, b("{rcpt_addr}")),
            (5, b("{msg_id}")),
        ]
    );
    assert_eq!(reply.macros.len(), 4);
    assert!(!reply.macros.is_empty());
    assert!(MacroLists::default().is_empty());
    assert_eq!(MacroLists::default().len(), 0);
    assert_eq!(MacroLists::default().iter().count(), 0);
}
