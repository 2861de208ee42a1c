//! Golden byte vectors for every command and every response, written by hand
//! from the wire layouts in the protocol reference (length = command byte +
//! payload, big endian, not counting itself).
//!
//! Each vector is checked in both directions: the bytes decode to the
//! expected value, and the value encodes to exactly those bytes. Where an MTA
//! sends a spelling the encoder does not produce (Sendmail's `IPv6:` prefix,
//! brackets), the decode direction is checked and the canonical re-encoding
//! is a separate golden vector.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use milter_proto::frame::DEFAULT_MAX_INBOUND;
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, Frame, FrameDecoder, Header, MacroLists,
    Macros, OptNeg, OptNegReply, ProtocolFlags, Response,
};

/// Cuts exactly one frame out of `golden`; the whole vector must be used.
fn frame_of(golden: &[u8]) -> Frame {
    let mut buf = BytesMut::from(golden);
    let frame = FrameDecoder::default()
        .decode(&mut buf)
        .expect("frame header is valid")
        .expect("the vector holds a whole frame");
    assert!(buf.is_empty(), "bytes left after the frame: {buf:?}");
    frame
}

fn encode_command(cmd: &Command) -> Vec<u8> {
    let mut out = BytesMut::new();
    cmd.encode(&mut out, DEFAULT_MAX_INBOUND)
        .expect("golden commands encode");
    out.to_vec()
}

fn encode_response(resp: &Response) -> Vec<u8> {
    let mut out = BytesMut::new();
    resp.encode(&mut out, DEFAULT_MAX_INBOUND)
        .expect("golden responses encode");
    out.to_vec()
}

/// decode(golden) == value and encode(value) == golden.
fn command_both_ways(golden: &[u8], value: &Command) {
    let decoded = Command::decode(&frame_of(golden)).expect("golden command decodes");
    assert_eq!(&decoded, value, "decode of {golden:?}");
    assert_eq!(encode_command(value), golden, "encode of {value:?}");
}

/// decode(golden) == value only (the encoder writes a canonical spelling).
fn command_decodes_to(golden: &[u8], value: &Command) {
    let decoded = Command::decode(&frame_of(golden)).expect("golden command decodes");
    assert_eq!(&decoded, value, "decode of {golden:?}");
}

fn response_both_ways(golden: &[u8], value: &Response) {
    let decoded = Response::decode(&frame_of(golden)).expect("golden response decodes");
    assert_eq!(&decoded, value, "decode of {golden:?}");
    assert_eq!(encode_response(value), golden, "encode of {value:?}");
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

// ---------------------------------------------------------------- commands

#[test]
fn optneg_postfix_v6_offer() {
    // 'O', u32 6, u32 0x1FF, u32 0x1FFFFF: 12 payload bytes, len 13.
    let golden = b"\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff";
    command_both_ways(golden, &Command::OptNeg(OptNeg::POSTFIX));
    let value = Command::OptNeg(OptNeg {
        version: 6,
        actions: Actions::from_bits_retain(0x1ff),
        protocol: ProtocolFlags::from_bits_retain(0x1f_ffff),
    });
    command_both_ways(golden, &value);
}

#[test]
fn optneg_v2_offer() {
    let golden = b"\x00\x00\x00\x0dO\x00\x00\x00\x02\x00\x00\x01\xff\x00\x00\x00\x7f";
    command_both_ways(golden, &Command::OptNeg(OptNeg::V2));
}

#[test]
fn optneg_extra_bytes_are_ignored() {
    // libmilter ignores anything after the 12 bytes.
    let golden = b"\x00\x00\x00\x0fO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff\xab\xcd";
    command_decodes_to(golden, &Command::OptNeg(OptNeg::POSTFIX));
}

#[test]
fn macro_packet_with_pairs() {
    // 'D', stage 'C', "j\0mx\0": payload 6, len 7.
    let golden = b"\x00\x00\x00\x07DCj\x00mx\x00";
    let value = Command::Macro(Macros::new(b'C', [("j", "mx")]).unwrap());
    command_both_ways(golden, &value);
    let Command::Macro(m) = value else {
        unreachable!()
    };
    assert_eq!(m.pairs().collect::<Vec<_>>(), vec![(b("j"), b("mx"))]);
}

#[test]
fn macro_packet_two_pairs_braced_name() {
    // 'D' 'M' "i\0" "4FxyZ\0" "{mail_addr}\0" "a@example.org\0"
    // payload = 1 + 2 + 6 + 12 + 14 = 35, len 36 = 0x24.
    let golden = b"\x00\x00\x00\x24DMi\x004FxyZ\x00{mail_addr}\x00a@example.org\x00";
    let value = Command::Macro(
        Macros::new(b'M', [("i", "4FxyZ"), ("{mail_addr}", "a@example.org")]).unwrap(),
    );
    command_both_ways(golden, &value);
}

#[test]
fn macro_packet_empty() {
    // Postfix and Sendmail send these when no macro has a value.
    let golden = b"\x00\x00\x00\x02DM";
    let value = Command::Macro(Macros::new::<&str, &str>(b'M', []).unwrap());
    command_both_ways(golden, &value);
    let Command::Macro(m) = value else {
        unreachable!()
    };
    assert!(m.is_empty());
}

#[test]
fn macro_packet_odd_count_gets_empty_value() {
    let golden = b"\x00\x00\x00\x04DCj\x00";
    let Command::Macro(m) = Command::decode(&frame_of(golden)).unwrap() else {
        panic!("not a macro packet")
    };
    assert_eq!(m.stage, b'C');
    assert_eq!(m.raw(), &b("j\0"));
    assert_eq!(m.pairs().collect::<Vec<_>>(), vec![(b("j"), Bytes::new())]);
    // Kept as the wire bytes: re-encodes identically.
    assert_eq!(encode_command(&Command::Macro(m)), golden);
}

#[test]
fn connect_family_unknown() {
    // "localhost\0" 'U': payload 11, len 12.
    let golden = b"\x00\x00\x00\x0cClocalhost\x00U";
    let value = Command::Connect(Connect {
        hostname: b("localhost"),
        address: ConnectAddress::Unknown,
    });
    command_both_ways(golden, &value);
}

#[test]
fn connect_family_unix() {
    // "localhost\0" 'L' port 0 "/run/smtpd\0": 10 + 1 + 2 + 11 = 24, len 25.
    let golden = b"\x00\x00\x00\x19Clocalhost\x00L\x00\x00/run/smtpd\x00";
    let value = Command::Connect(Connect {
        hostname: b("localhost"),
        address: ConnectAddress::Unix(b("/run/smtpd")),
    });
    command_both_ways(golden, &value);
}

#[test]
fn connect_family_inet4() {
    // "mail.example.org\0" '4' port 54321 (0xd431) "192.0.2.1\0":
    // 17 + 1 + 2 + 10 = 30, len 31.
    let golden = b"\x00\x00\x00\x1fCmail.example.org\x004\xd4\x31192.0.2.1\x00";
    let value = Command::Connect(Connect {
        hostname: b("mail.example.org"),
        address: ConnectAddress::Inet(SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 54321)),
    });
    command_both_ways(golden, &value);
}

fn v6_connect(hostname: &'static str) -> Command {
    Command::Connect(Connect {
        hostname: b(hostname),
        address: ConnectAddress::Inet(SocketAddr::new(
            "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
            54321,
        )),
    })
}

#[test]
fn connect_family_inet6_postfix_spelling() {
    // Postfix: no prefix. "[2001:db8::1]\0" '6' 0xd431 "2001:db8::1\0":
    // 14 + 1 + 2 + 12 = 29, len 30.
    let golden = b"\x00\x00\x00\x1eC[2001:db8::1]\x006\xd4\x312001:db8::1\x00";
    command_both_ways(golden, &v6_connect("[2001:db8::1]"));
}

#[test]
fn connect_family_inet6_sendmail_prefix() {
    // Sendmail: "IPv6:" prefix. "host\0" '6' 0xd431 "IPv6:2001:db8::1\0":
    // 5 + 1 + 2 + 17 = 25, len 26.
    let golden = b"\x00\x00\x00\x1aChost\x006\xd4\x31IPv6:2001:db8::1\x00";
    command_decodes_to(golden, &v6_connect("host"));
    // The prefix is case-insensitive (libmilter's mi_inet_pton).
    let golden = b"\x00\x00\x00\x1aChost\x006\xd4\x31ipv6:2001:db8::1\x00";
    command_decodes_to(golden, &v6_connect("host"));
    // Canonical re-encoding: no prefix. 5 + 1 + 2 + 12 = 20, len 21.
    assert_eq!(
        encode_command(&v6_connect("host")),
        b"\x00\x00\x00\x15Chost\x006\xd4\x312001:db8::1\x00"
    );
}

#[test]
fn connect_family_inet6_sendmail_uncompressed() {
    // Sendmail without UseCompressedIPv6Addresses.
    // "IPv6:2001:db8:0:0:0:0:0:1" is 25 chars: 5 + 1 + 2 + 26 = 34, len 35.
    let golden = b"\x00\x00\x00\x23Chost\x006\xd4\x31IPv6:2001:db8:0:0:0:0:0:1\x00";
    command_decodes_to(golden, &v6_connect("host"));
}

#[test]
fn connect_family_inet6_bracketed() {
    // "[2001:db8::1]": 5 + 1 + 2 + 14 = 22, len 23.
    let golden = b"\x00\x00\x00\x17Chost\x006\xd4\x31[2001:db8::1]\x00";
    command_decodes_to(golden, &v6_connect("host"));
    // "[IPv6:2001:db8::1]": 5 + 1 + 2 + 19 = 27, len 28.
    let golden = b"\x00\x00\x00\x1cChost\x006\xd4\x31[IPv6:2001:db8::1]\x00";
    command_decodes_to(golden, &v6_connect("host"));
}

#[test]
fn helo() {
    // "mx.example.org\0": 15, len 16.
    let golden = b"\x00\x00\x00\x10Hmx.example.org\x00";
    command_both_ways(golden, &Command::Helo(b("mx.example.org")));
}

#[test]
fn mail_without_args() {
    // "<a@example.org>\0": 16, len 17.
    let golden = b"\x00\x00\x00\x11M<a@example.org>\x00";
    let value = Command::Mail(Envelope::new(b("<a@example.org>"), Vec::<&str>::new()).unwrap());
    command_both_ways(golden, &value);
}

#[test]
fn mail_null_sender() {
    let golden = b"\x00\x00\x00\x04M<>\x00";
    let value = Command::Mail(Envelope::new(b("<>"), Vec::<&str>::new()).unwrap());
    command_both_ways(golden, &value);
}

#[test]
fn mail_with_esmtp_args() {
    // "<a@example.org>\0" "SIZE=1234\0" "BODY=8BITMIME\0": 16 + 10 + 14 = 40, len 41.
    let golden = b"\x00\x00\x00\x29M<a@example.org>\x00SIZE=1234\x00BODY=8BITMIME\x00";
    let value =
        Command::Mail(Envelope::new(b("<a@example.org>"), ["SIZE=1234", "BODY=8BITMIME"]).unwrap());
    command_both_ways(golden, &value);
    let Command::Mail(env) = value else {
        unreachable!()
    };
    assert_eq!(env.address, b("<a@example.org>"));
    assert_eq!(
        env.args().collect::<Vec<_>>(),
        vec![b("SIZE=1234"), b("BODY=8BITMIME")]
    );
}

#[test]
fn mail_bytes_after_last_nul_are_dropped() {
    // libmilter's dec_argv ignores bytes after the last NUL.
    let golden = b"\x00\x00\x00\x15M<a@example.org>\x00SIZE";
    let value = Command::Mail(Envelope::new(b("<a@example.org>"), Vec::<&str>::new()).unwrap());
    command_decodes_to(golden, &value);
}

#[test]
fn rcpt_without_args() {
    let golden = b"\x00\x00\x00\x11R<b@example.net>\x00";
    let value = Command::Rcpt(Envelope::new(b("<b@example.net>"), Vec::<&str>::new()).unwrap());
    command_both_ways(golden, &value);
}

#[test]
fn rcpt_with_esmtp_args() {
    // "<b@example.net>\0" "NOTIFY=NEVER\0": 16 + 13 = 29, len 30.
    let golden = b"\x00\x00\x00\x1eR<b@example.net>\x00NOTIFY=NEVER\x00";
    let value = Command::Rcpt(Envelope::new(b("<b@example.net>"), ["NOTIFY=NEVER"]).unwrap());
    command_both_ways(golden, &value);
}

#[test]
fn data() {
    command_both_ways(b"\x00\x00\x00\x01T", &Command::Data);
}

#[test]
fn header() {
    // "Subject\0hello\0": 8 + 6 = 14, len 15.
    let golden = b"\x00\x00\x00\x0fLSubject\x00hello\x00";
    let value = Command::Header(Header {
        name: b("Subject"),
        value: b("hello"),
    });
    command_both_ways(golden, &value);
}

#[test]
fn header_empty_value() {
    // "X-Empty\0\0": 9, len 10. An empty value is a header, not an error.
    let golden = b"\x00\x00\x00\x0aLX-Empty\x00\x00";
    let value = Command::Header(Header {
        name: b("X-Empty"),
        value: Bytes::new(),
    });
    command_both_ways(golden, &value);
}

#[test]
fn header_folded_value() {
    // Folded: bare "\n" then the continuation whitespace.
    // "To\0" "a@x,\n\tb@y\0": 3 + 10 = 13, len 14.
    let golden = b"\x00\x00\x00\x0eLTo\x00a@x,\n\tb@y\x00";
    let value = Command::Header(Header {
        name: b("To"),
        value: b("a@x,\n\tb@y"),
    });
    command_both_ways(golden, &value);
}

#[test]
fn end_of_headers() {
    command_both_ways(b"\x00\x00\x00\x01N", &Command::EndOfHeaders);
}

#[test]
fn body() {
    // "Hello\r\n" 7, len 8.
    command_both_ways(
        b"\x00\x00\x00\x08BHello\r\n",
        &Command::Body(b("Hello\r\n")),
    );
}

#[test]
fn body_with_nul() {
    command_both_ways(b"\x00\x00\x00\x04Ba\x00b", &Command::Body(b("a\0b")));
}

#[test]
fn end_of_message_empty() {
    command_both_ways(b"\x00\x00\x00\x01E", &Command::EndOfMessage(Bytes::new()));
}

#[test]
fn end_of_message_with_data() {
    command_both_ways(
        b"\x00\x00\x00\x06Ebye\r\n",
        &Command::EndOfMessage(b("bye\r\n")),
    );
}

#[test]
fn abort() {
    command_both_ways(b"\x00\x00\x00\x01A", &Command::Abort);
}

#[test]
fn quit() {
    command_both_ways(b"\x00\x00\x00\x01Q", &Command::Quit);
}

#[test]
fn quit_nc() {
    command_both_ways(b"\x00\x00\x00\x01K", &Command::QuitNc);
}

#[test]
fn unknown() {
    // "HELP\0": 5, len 6.
    command_both_ways(b"\x00\x00\x00\x06UHELP\x00", &Command::Unknown(b("HELP")));
}

#[test]
fn unknown_without_nul_is_tolerated() {
    command_decodes_to(b"\x00\x00\x00\x05UHELP", &Command::Unknown(b("HELP")));
}

#[test]
fn command_codes_match_the_reference() {
    let cases: [(u8, Command); 15] = [
        (0x4f, Command::OptNeg(OptNeg::POSTFIX)),
        (
            0x44,
            Command::Macro(Macros::new::<&str, &str>(b'C', []).unwrap()),
        ),
        (
            0x43,
            Command::Connect(Connect {
                hostname: Bytes::new(),
                address: ConnectAddress::Unknown,
            }),
        ),
        (0x48, Command::Helo(Bytes::new())),
        (
            0x4d,
            Command::Mail(Envelope::new(b("<>"), Vec::<&str>::new()).unwrap()),
        ),
        (
            0x52,
            Command::Rcpt(Envelope::new(b("<>"), Vec::<&str>::new()).unwrap()),
        ),
        (0x54, Command::Data),
        (
            0x4c,
            Command::Header(Header {
                name: b("a"),
                value: Bytes::new(),
            }),
        ),
        (0x4e, Command::EndOfHeaders),
        (0x42, Command::Body(Bytes::new())),
        (0x45, Command::EndOfMessage(Bytes::new())),
        (0x41, Command::Abort),
        (0x51, Command::Quit),
        (0x4b, Command::QuitNc),
        (0x55, Command::Unknown(Bytes::new())),
    ];
    for (code, cmd) in cases {
        assert_eq!(cmd.code(), code, "{cmd:?}");
    }
}

// --------------------------------------------------------------- responses

#[test]
fn optneg_reply_without_macros() {
    // 'O', u32 6, u32 0x11, u32 0x00101000: len 13.
    let golden = b"\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x00\x11\x00\x10\x10\x00";
    let value = Response::OptNeg(OptNegReply {
        version: 6,
        actions: Actions::ADD_HEADERS | Actions::CHANGE_HEADERS,
        protocol: ProtocolFlags::HEADER_LEADING_SPACE | ProtocolFlags::NR_CONNECT,
        macros: MacroLists::default(),
    });
    response_both_ways(golden, &value);
}

#[test]
fn optneg_reply_with_macro_lists() {
    // 12 bytes, then u32 0 "j {daemon_name}\0" (4 + 16), u32 2 "{mail_addr}\0" (4 + 12):
    // 12 + 20 + 16 = 48, len 49.
    let golden = b"\x00\x00\x00\x31O\x00\x00\x00\x06\x00\x00\x01\x01\x00\x00\x00\x00\
\x00\x00\x00\x00j {daemon_name}\x00\
\x00\x00\x00\x02{mail_addr}\x00";
    let value = Response::OptNeg(OptNegReply {
        version: 6,
        actions: Actions::ADD_HEADERS | Actions::SET_SYMLIST,
        protocol: ProtocolFlags::empty(),
        macros: MacroLists::new([(0, "j {daemon_name}"), (2, "{mail_addr}")]).unwrap(),
    });
    response_both_ways(golden, &value);
    let Response::OptNeg(decoded) = Response::decode(&frame_of(golden)).unwrap() else {
        panic!("not an OPTNEG reply")
    };
    assert_eq!(decoded.macros.len(), 2);
    assert_eq!(
        decoded.macros.iter().collect::<Vec<_>>(),
        [(0, b("j {daemon_name}")), (2, b("{mail_addr}"))]
    );
    // The lists are kept in wire form: everything after the 12 option bytes.
    assert_eq!(&decoded.macros.raw()[..], &golden[17..]);
}

#[test]
fn optneg_reply_keeps_unknown_stages_and_empty_lists() {
    // u32 9 "\0" (4 + 1), u32 0xffffffff "i\0" (4 + 2): 12 + 5 + 6 = 23, len 24.
    let golden = b"\x00\x00\x00\x18O\x00\x00\x00\x06\x00\x00\x01\x00\x00\x00\x00\x00\
\x00\x00\x00\x09\x00\xff\xff\xff\xffi\x00";
    let value = Response::OptNeg(OptNegReply {
        version: 6,
        actions: Actions::SET_SYMLIST,
        protocol: ProtocolFlags::empty(),
        macros: MacroLists::new([(9, ""), (u32::MAX, "i")]).unwrap(),
    });
    response_both_ways(golden, &value);
    let Response::OptNeg(decoded) = value else {
        unreachable!()
    };
    assert_eq!(
        decoded.macros.iter().collect::<Vec<_>>(),
        [(9, Bytes::new()), (u32::MAX, b("i"))]
    );
}

#[test]
fn simple_responses() {
    let cases: [(&[u8], Response); 11] = [
        (b"\x00\x00\x00\x01c", Response::Continue),
        (b"\x00\x00\x00\x01a", Response::Accept),
        (b"\x00\x00\x00\x01r", Response::Reject),
        (b"\x00\x00\x00\x01t", Response::Tempfail),
        (b"\x00\x00\x00\x01d", Response::Discard),
        (b"\x00\x00\x00\x01s", Response::Skip),
        (b"\x00\x00\x00\x01p", Response::Progress),
        (b"\x00\x00\x00\x01f", Response::ConnectionFail),
        (b"\x00\x00\x00\x014", Response::Shutdown),
        (b"\x00\x00\x00\x01b", Response::ReplaceBody(Bytes::new())),
        (b"\x00\x00\x00\x01l", Response::SetSymList(Bytes::new())),
    ];
    for (golden, value) in cases {
        response_both_ways(golden, &value);
    }
}

#[test]
fn reply_code() {
    // "550 5.7.1 Go away\0": 18, len 19.
    let golden = b"\x00\x00\x00\x13y550 5.7.1 Go away\x00";
    response_both_ways(golden, &Response::ReplyCode(b("550 5.7.1 Go away")));
}

#[test]
fn reply_code_multiline() {
    // "451-4.7.1 a\r\n451 4.7.1 b\0": 11 + 2 + 11 + 1 = 25, len 26.
    let golden = b"\x00\x00\x00\x1ay451-4.7.1 a\r\n451 4.7.1 b\x00";
    response_both_ways(
        golden,
        &Response::ReplyCode(b("451-4.7.1 a\r\n451 4.7.1 b")),
    );
}

#[test]
fn quarantine() {
    response_both_ways(
        b"\x00\x00\x00\x06qspam\x00",
        &Response::Quarantine { reason: b("spam") },
    );
}

#[test]
fn add_header() {
    // "X-Spam\0yes\0": 7 + 4 = 11, len 12.
    response_both_ways(
        b"\x00\x00\x00\x0chX-Spam\x00yes\x00",
        &Response::AddHeader {
            name: b("X-Spam"),
            value: b("yes"),
        },
    );
}

#[test]
fn insert_header() {
    // u32 0, "X-First\0top\0": 4 + 8 + 4 = 16, len 17.
    response_both_ways(
        b"\x00\x00\x00\x11i\x00\x00\x00\x00X-First\x00top\x00",
        &Response::InsertHeader {
            index: 0,
            name: b("X-First"),
            value: b("top"),
        },
    );
}

#[test]
fn change_header() {
    // u32 2, "Subject\0new\0": 4 + 8 + 4 = 16, len 17.
    response_both_ways(
        b"\x00\x00\x00\x11m\x00\x00\x00\x02Subject\x00new\x00",
        &Response::ChangeHeader {
            index: 2,
            name: b("Subject"),
            value: b("new"),
        },
    );
}

#[test]
fn change_header_delete() {
    // u32 1, "Subject\0\0": 4 + 8 + 1 = 13, len 14.
    response_both_ways(
        b"\x00\x00\x00\x0em\x00\x00\x00\x01Subject\x00\x00",
        &Response::ChangeHeader {
            index: 1,
            name: b("Subject"),
            value: Bytes::new(),
        },
    );
}

#[test]
fn change_from_without_args() {
    // "<new@example.org>\0": 18, len 19.
    response_both_ways(
        b"\x00\x00\x00\x13e<new@example.org>\x00",
        &Response::ChangeFrom {
            address: b("<new@example.org>"),
            args: None,
        },
    );
}

#[test]
fn change_from_with_args() {
    // "<new@example.org>\0" "SIZE=10 BODY=8BITMIME\0": 18 + 22 = 40, len 41.
    response_both_ways(
        b"\x00\x00\x00\x29e<new@example.org>\x00SIZE=10 BODY=8BITMIME\x00",
        &Response::ChangeFrom {
            address: b("<new@example.org>"),
            args: Some(b("SIZE=10 BODY=8BITMIME")),
        },
    );
}

#[test]
fn add_rcpt() {
    // "<c@example.com>\0": 16, len 17.
    response_both_ways(
        b"\x00\x00\x00\x11+<c@example.com>\x00",
        &Response::AddRcpt {
            address: b("<c@example.com>"),
        },
    );
}

#[test]
fn add_rcpt_par_without_args() {
    response_both_ways(
        b"\x00\x00\x00\x112<c@example.com>\x00",
        &Response::AddRcptPar {
            address: b("<c@example.com>"),
            args: None,
        },
    );
}

#[test]
fn add_rcpt_par_with_args() {
    // "<c@example.com>\0" "NOTIFY=NEVER\0": 16 + 13 = 29, len 30.
    response_both_ways(
        b"\x00\x00\x00\x1e2<c@example.com>\x00NOTIFY=NEVER\x00",
        &Response::AddRcptPar {
            address: b("<c@example.com>"),
            args: Some(b("NOTIFY=NEVER")),
        },
    );
}

#[test]
fn delete_rcpt() {
    response_both_ways(
        b"\x00\x00\x00\x11-<b@example.net>\x00",
        &Response::DeleteRcpt {
            address: b("<b@example.net>"),
        },
    );
}

#[test]
fn replace_body() {
    // "new body\r\n": 10, len 11.
    response_both_ways(
        b"\x00\x00\x00\x0bbnew body\r\n",
        &Response::ReplaceBody(b("new body\r\n")),
    );
}

#[test]
fn set_sym_list_raw() {
    // Kept raw: u32 0, "j\0": 6, len 7.
    response_both_ways(
        b"\x00\x00\x00\x07l\x00\x00\x00\x00j\x00",
        &Response::SetSymList(b("\0\0\0\0j\0")),
    );
}

#[test]
fn continue_is_the_documented_five_bytes() {
    assert_eq!(encode_response(&Response::Continue), [0, 0, 0, 1, 0x63]);
}

#[test]
fn response_codes_match_the_reference() {
    let cases: [(u8, Response); 21] = [
        (0x4f, Response::OptNeg(OptNegReply::default())),
        (0x63, Response::Continue),
        (0x61, Response::Accept),
        (0x72, Response::Reject),
        (0x74, Response::Tempfail),
        (0x64, Response::Discard),
        (0x73, Response::Skip),
        (0x70, Response::Progress),
        (0x79, Response::ReplyCode(b("550"))),
        (
            0x68,
            Response::AddHeader {
                name: b("a"),
                value: b("b"),
            },
        ),
        (
            0x69,
            Response::InsertHeader {
                index: 0,
                name: b("a"),
                value: b("b"),
            },
        ),
        (
            0x6d,
            Response::ChangeHeader {
                index: 0,
                name: b("a"),
                value: b("b"),
            },
        ),
        (
            0x65,
            Response::ChangeFrom {
                address: b("a"),
                args: None,
            },
        ),
        (0x2b, Response::AddRcpt { address: b("a") }),
        (
            0x32,
            Response::AddRcptPar {
                address: b("a"),
                args: None,
            },
        ),
        (0x2d, Response::DeleteRcpt { address: b("a") }),
        (0x62, Response::ReplaceBody(Bytes::new())),
        (0x71, Response::Quarantine { reason: b("a") }),
        (0x66, Response::ConnectionFail),
        (0x34, Response::Shutdown),
        (0x6c, Response::SetSymList(Bytes::new())),
    ];
    for (code, resp) in cases {
        assert_eq!(resp.code(), code, "{resp:?}");
    }
}
