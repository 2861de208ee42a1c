//! Every error variant, provoked by a named test.

use bytes::{Bytes, BytesMut};
use milter_proto::frame::{self, MAX_DATA_SIZE_64K};
use milter_proto::{
    Actions, Command, DecodeError, EncodeError, FilterOptions, FrameDecoder, FrameError,
    MacroLists, NegotiationError, OptNeg, OptNegReply, ProtocolError, ProtocolFlags, ReplyError,
    Response, Session, SmtpReply, check_reply, negotiate,
};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn decode_frame(max: usize, bytes: &[u8]) -> Result<Option<milter_proto::Frame>, FrameError> {
    FrameDecoder::new(max).decode(&mut BytesMut::from(bytes))
}

fn command(code: u8, payload: &'static [u8]) -> Result<Command, DecodeError> {
    Command::decode_parts(code, &Bytes::from_static(payload))
}

fn response(code: u8, payload: &'static [u8]) -> Result<Response, DecodeError> {
    Response::decode_parts(code, &Bytes::from_static(payload))
}

// ------------------------------------------------------------- FrameError

#[test]
fn frame_error_zero_length() {
    assert_eq!(
        decode_frame(MAX_DATA_SIZE_64K, b"\x00\x00\x00\x00c"),
        Err(FrameError::ZeroLength)
    );
}

#[test]
fn frame_error_too_large() {
    // len 65537 = payload 65536, one more than the 64K maximum.
    let err = decode_frame(MAX_DATA_SIZE_64K, b"\x00\x01\x00\x01B").unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: 65536,
            max: 65535,
            raw: [0, 1, 0, 1],
        }
    );
    // Binary length bytes: no hint about text.
    let text = err.to_string();
    assert!(text.contains("65536") && text.contains("65535"), "{text}");
    assert!(!text.contains("not speaking the milter protocol"), "{text}");
}

#[test]
fn frame_error_too_large_hints_at_http() {
    // An HTTP probe on the milter port: "GET " read as a length is 1195725856.
    let err = decode_frame(frame::DEFAULT_MAX_INBOUND, b"GET / HTTP/1.1\r\n").unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: 1_195_725_855,
            max: frame::DEFAULT_MAX_INBOUND,
            raw: *b"GET ",
        }
    );
    let text = err.to_string();
    assert!(text.contains("\"GET \""), "{text}");
    assert!(text.contains("not speaking the milter protocol"), "{text}");
}

#[test]
fn frame_error_too_large_hints_at_log_text() {
    // A filter that wrote log text to its socket: Postfix read "post".
    let err = decode_frame(frame::DEFAULT_MAX_INBOUND, b"postfix/smtpd").unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            len: 1_886_352_243,
            ..
        }
    ));
    assert!(err.to_string().contains("\"post\""));
}

// ------------------------------------------------------------ DecodeError

#[test]
fn decode_error_unknown_command() {
    assert_eq!(command(b'Z', b""), Err(DecodeError::UnknownCommand(b'Z')));
    // Response bytes are not commands.
    assert_eq!(command(b'c', b""), Err(DecodeError::UnknownCommand(b'c')));
}

#[test]
fn decode_error_unknown_response() {
    assert_eq!(response(b'Z', b""), Err(DecodeError::UnknownResponse(b'Z')));
    assert_eq!(response(b'C', b""), Err(DecodeError::UnknownResponse(b'C')));
}

#[test]
fn decode_error_truncated() {
    // OPTNEG needs 12 bytes; libmilter aborts on fewer.
    assert_eq!(
        command(b'O', b"\x00\x00\x00\x06\x00\x00\x01\xff"),
        Err(DecodeError::Truncated {
            code: 'O',
            field: "protocol flags",
        })
    );
    // A macro packet needs its stage byte.
    assert_eq!(
        command(b'D', b""),
        Err(DecodeError::Truncated {
            code: 'D',
            field: "stage",
        })
    );
    // A connect packet cut inside the port (phalaaxx/milter#3).
    assert_eq!(
        command(b'C', b"host\x004\x00"),
        Err(DecodeError::Truncated {
            code: 'C',
            field: "port",
        })
    );
    assert_eq!(
        command(b'C', b"host\x00"),
        Err(DecodeError::Truncated {
            code: 'C',
            field: "family",
        })
    );
    // An index-bearing response cut short.
    assert_eq!(
        response(b'i', b"\x00\x00"),
        Err(DecodeError::Truncated {
            code: 'i',
            field: "header index",
        })
    );
    assert_eq!(
        response(b'O', b"\x00\x00\x00\x06"),
        Err(DecodeError::Truncated {
            code: 'O',
            field: "actions",
        })
    );
    // A macro-list entry cut inside its stage number.
    assert_eq!(
        response(
            b'O',
            b"\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        ),
        Err(DecodeError::Truncated {
            code: 'O',
            field: "macro stage",
        })
    );
    // The same after a whole first list.
    assert_eq!(
        response(
            b'O',
            b"\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00j\x00\x00\x00\x00"
        ),
        Err(DecodeError::Truncated {
            code: 'O',
            field: "macro stage",
        })
    );
}

#[test]
fn decode_error_missing_nul() {
    assert_eq!(
        command(b'H', b"mx.example.org"),
        Err(DecodeError::MissingNul {
            code: 'H',
            field: "HELO name",
        })
    );
    assert_eq!(
        command(b'M', b"<a@b>"),
        Err(DecodeError::MissingNul {
            code: 'M',
            field: "address",
        })
    );
    // The header split that crashed other implementations.
    assert_eq!(
        command(b'L', b"Subject\x00hello"),
        Err(DecodeError::MissingNul {
            code: 'L',
            field: "header value",
        })
    );
    assert_eq!(
        command(b'C', b"host\x004\x00\x19192.0.2.1"),
        Err(DecodeError::MissingNul {
            code: 'C',
            field: "address",
        })
    );
    assert_eq!(
        response(b'y', b"550 no"),
        Err(DecodeError::MissingNul {
            code: 'y',
            field: "reply text",
        })
    );
    assert_eq!(
        response(b'e', b"<a@b>\x00SIZE=1"),
        Err(DecodeError::MissingNul {
            code: 'e',
            field: "ESMTP arguments",
        })
    );
    // A macro list after the 12 option bytes without its NUL.
    assert_eq!(
        response(
            b'O',
            b"\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00j {daemon_name}"
        ),
        Err(DecodeError::MissingNul {
            code: 'O',
            field: "macro list",
        })
    );
    // Or with a stage number and nothing after it.
    assert_eq!(
        response(
            b'O',
            b"\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00j\x00\x00\x00\x00\x02"
        ),
        Err(DecodeError::MissingNul {
            code: 'O',
            field: "macro list",
        })
    );
}

#[test]
fn decode_error_empty() {
    assert_eq!(
        command(b'L', b"\x00value\x00"),
        Err(DecodeError::Empty {
            code: 'L',
            field: "header name",
        })
    );
    assert_eq!(
        response(b'y', b"\x00"),
        Err(DecodeError::Empty {
            code: 'y',
            field: "reply text",
        })
    );
    assert_eq!(
        response(b'q', b"\x00"),
        Err(DecodeError::Empty {
            code: 'q',
            field: "reason",
        })
    );
    assert_eq!(
        response(b'+', b"\x00"),
        Err(DecodeError::Empty {
            code: '+',
            field: "address",
        })
    );
}

#[test]
fn decode_error_trailing_data() {
    // Postfix: "reply ... was followed by N data bytes".
    assert_eq!(
        response(b'c', b"xy"),
        Err(DecodeError::TrailingData { code: 'c', len: 2 })
    );
    assert_eq!(
        response(b'h', b"X-A\x001\x00junk"),
        Err(DecodeError::TrailingData { code: 'h', len: 4 })
    );
    assert_eq!(
        command(b'L', b"Subject\x00hi\x00x"),
        Err(DecodeError::TrailingData { code: 'L', len: 1 })
    );
    assert_eq!(
        command(b'C', b"host\x00U\x00"),
        Err(DecodeError::TrailingData { code: 'C', len: 1 })
    );
    assert_eq!(
        command(b'H', b"a\x00b\x00"),
        Err(DecodeError::TrailingData { code: 'H', len: 2 })
    );
}

#[test]
fn decode_error_unknown_family() {
    // libmilter without NETINET6 says "unknown family 54"; any other byte is unknown to all.
    assert_eq!(
        command(b'C', b"host\x00X\x00\x19a\x00"),
        Err(DecodeError::UnknownFamily(b'X'))
    );
}

#[test]
fn decode_error_invalid_address() {
    assert_eq!(
        command(b'C', b"host\x004\x00\x19999.1.1.1\x00"),
        Err(DecodeError::InvalidAddress("999.1.1.1".into()))
    );
    // A v6 address under family '4'.
    assert_eq!(
        command(b'C', b"host\x004\x00\x19::1\x00"),
        Err(DecodeError::InvalidAddress("::1".into()))
    );
    // A v4 address under family '6'.
    assert_eq!(
        command(b'C', b"host\x006\x00\x19192.0.2.1\x00"),
        Err(DecodeError::InvalidAddress("192.0.2.1".into()))
    );
    // Not UTF-8.
    assert!(matches!(
        command(b'C', b"host\x006\x00\x19\xff\x00"),
        Err(DecodeError::InvalidAddress(_))
    ));
}

// ---------------------------------------------------------- ProtocolError

/// A session negotiated with `actions` and `protocol`, connected.
fn connected(actions: Actions, protocol: ProtocolFlags) -> Session {
    let mut s = Session::new();
    s.on_command_code(b'O').unwrap();
    s.on_response(&Response::OptNeg(OptNegReply {
        version: 6,
        actions,
        protocol,
        macros: MacroLists::default(),
    }))
    .unwrap();
    s.on_command_code(b'C').unwrap();
    s.on_response(&Response::Continue).unwrap();
    s
}

/// Drives a session into end of message, waiting for the reply.
fn at_eom(actions: Actions) -> Session {
    let mut s = connected(actions, ProtocolFlags::empty());
    for code in *b"MRTLNB" {
        s.on_command_code(code).unwrap();
        s.on_response(&Response::Continue).unwrap();
    }
    s.on_command_code(b'E').unwrap();
    s
}

#[test]
fn protocol_error_out_of_order() {
    let mut s = Session::new();
    assert_eq!(
        s.on_command_code(b'H'),
        Err(ProtocolError::OutOfOrder {
            command: 'H',
            state: "before option negotiation",
        })
    );
    let mut s = connected(Actions::empty(), ProtocolFlags::empty());
    for code in *b"MRTLNB" {
        s.on_command_code(code).unwrap();
        s.on_response(&Response::Continue).unwrap();
    }
    assert_eq!(
        s.on_command_code(b'L'),
        Err(ProtocolError::OutOfOrder {
            command: 'L',
            state: "after a later stage of the message",
        })
    );
}

#[test]
fn protocol_error_reply_pending() {
    let mut s = connected(Actions::empty(), ProtocolFlags::empty());
    s.on_command_code(b'H').unwrap();
    assert_eq!(
        s.on_command_code(b'M'),
        Err(ProtocolError::ReplyPending {
            command: 'M',
            pending: 'H',
        })
    );
}

#[test]
fn protocol_error_unexpected_response() {
    let mut s = connected(Actions::empty(), ProtocolFlags::empty());
    s.on_command_code(b'A').unwrap();
    // Replying to ABORT (miltr PR #22).
    assert_eq!(
        s.on_response(&Response::Continue),
        Err(ProtocolError::UnexpectedResponse { response: 'c' })
    );
}

#[test]
fn protocol_error_wrong_stage() {
    let mut s = connected(Actions::all(), ProtocolFlags::empty());
    s.on_command_code(b'M').unwrap();
    // A modification before end of message.
    assert_eq!(
        s.on_response(&Response::AddHeader {
            name: b("X-A"),
            value: b("1"),
        }),
        Err(ProtocolError::WrongStage {
            response: 'h',
            command: 'M',
        })
    );
    // SKIP at end of message (Sendmail: error).
    let mut s = at_eom(Actions::empty());
    assert_eq!(
        s.on_response(&Response::Skip),
        Err(ProtocolError::WrongStage {
            response: 's',
            command: 'E',
        })
    );
}

#[test]
fn protocol_error_action_not_negotiated() {
    let mut s = at_eom(Actions::ADD_HEADERS);
    assert_eq!(
        s.on_response(&Response::ChangeHeader {
            index: 1,
            name: b("Subject"),
            value: Bytes::new(),
        }),
        Err(ProtocolError::ActionNotNegotiated {
            response: 'm',
            action: "SMFIF_CHGHDRS",
        })
    );
}

#[test]
fn protocol_error_closed() {
    let mut s = connected(Actions::empty(), ProtocolFlags::empty());
    s.on_command_code(b'Q').unwrap();
    assert_eq!(s.on_command_code(b'C'), Err(ProtocolError::Closed));
    assert_eq!(
        s.on_response(&Response::Continue),
        Err(ProtocolError::Closed)
    );
}

// ------------------------------------------------------- NegotiationError

#[test]
fn negotiation_error_unsupported_version() {
    let offer = OptNeg {
        version: 1,
        ..OptNeg::POSTFIX
    };
    assert_eq!(
        negotiate(&offer, &FilterOptions::default()),
        Err(NegotiationError::UnsupportedVersion(1))
    );
}

#[test]
fn negotiation_error_actions_not_offered() {
    let offer = OptNeg {
        actions: Actions::V2,
        ..OptNeg::POSTFIX
    };
    let wanted = FilterOptions {
        actions: Actions::ADD_HEADERS | Actions::CHANGE_FROM,
        ..FilterOptions::default()
    };
    assert_eq!(
        negotiate(&offer, &wanted),
        Err(NegotiationError::ActionsNotOffered {
            missing: 0x40,
            offered: 0x3f,
        })
    );
}

#[test]
fn negotiation_error_version_above_offer() {
    let reply = OptNegReply {
        version: 6,
        ..OptNegReply::default()
    };
    assert_eq!(
        check_reply(&OptNeg::V2, &reply),
        Err(NegotiationError::VersionAboveOffer {
            replied: 6,
            offered: 2,
        })
    );
}

#[test]
fn negotiation_error_protocol_not_offered() {
    let reply = OptNegReply {
        version: 2,
        protocol: ProtocolFlags::NR_CONNECT | ProtocolFlags::NO_HELO,
        ..OptNegReply::default()
    };
    assert_eq!(
        check_reply(&OptNeg::V2, &reply),
        Err(NegotiationError::ProtocolNotOffered { missing: 0x1000 })
    );
}

#[test]
fn negotiation_error_macro_list() {
    // A NUL cannot be sent inside a macro list: refused when negotiating,
    // not later when the reply is encoded.
    let wanted = FilterOptions {
        macros: vec![(milter_proto::MacroStage::Mail, "i\0{mail_addr}".to_string())],
        ..FilterOptions::default()
    };
    assert_eq!(
        negotiate(&OptNeg::POSTFIX, &wanted),
        Err(NegotiationError::MacroList(EncodeError::InteriorNul {
            field: "macro list"
        }))
    );
}

#[test]
fn negotiation_error_not_optneg() {
    assert_eq!(
        milter_proto::check_response(&OptNeg::POSTFIX, &Response::Continue),
        Err(NegotiationError::NotOptNeg('c'))
    );
}

// ------------------------------------------------------------ EncodeError

#[test]
fn encode_error_too_large() {
    let mut out = BytesMut::new();
    let body = Command::Body(Bytes::from(vec![b'x'; MAX_DATA_SIZE_64K + 1]));
    assert_eq!(
        body.encode(&mut out, MAX_DATA_SIZE_64K),
        Err(EncodeError::TooLarge {
            len: 65536,
            max: 65535,
        })
    );
    assert!(
        out.is_empty(),
        "a failed encode leaves the buffer as it was"
    );
    let resp = Response::ReplaceBody(Bytes::from(vec![b'x'; 101]));
    assert_eq!(
        resp.encode(&mut out, 100),
        Err(EncodeError::TooLarge { len: 101, max: 100 })
    );
    assert_eq!(
        frame::encode_raw(&mut out, b'B', &[0; 11], 10),
        Err(EncodeError::TooLarge { len: 11, max: 10 })
    );
    assert!(out.is_empty());
}

#[test]
fn encode_error_interior_nul() {
    let mut out = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        Command::Helo(b("a\0b")).encode(&mut out, MAX_DATA_SIZE_64K),
        Err(EncodeError::InteriorNul { field: "HELO name" })
    );
    assert_eq!(
        &out[..],
        b"keep",
        "a failed encode leaves the buffer as it was"
    );
    assert_eq!(
        Response::AddHeader {
            name: b("X-A"),
            value: b("1\x002"),
        }
        .encode(&mut out, MAX_DATA_SIZE_64K),
        Err(EncodeError::InteriorNul {
            field: "header value"
        })
    );
    assert_eq!(
        milter_proto::Macros::new(b'C', [("j\0", "v")]),
        Err(EncodeError::InteriorNul {
            field: "macro name"
        })
    );
    assert_eq!(
        milter_proto::Macros::new(b'C', [("j", "v\0")]),
        Err(EncodeError::InteriorNul {
            field: "macro value"
        })
    );
    assert_eq!(
        milter_proto::Envelope::new(b("<a\0@b>"), Vec::<&str>::new()),
        Err(EncodeError::InteriorNul { field: "address" })
    );
    assert_eq!(
        milter_proto::Envelope::new(b("<a@b>"), ["SIZE=1\0"]),
        Err(EncodeError::InteriorNul {
            field: "ESMTP argument"
        })
    );
    assert_eq!(
        MacroLists::new([(0, "j"), (2, "i\0{mail_addr}")]),
        Err(EncodeError::InteriorNul {
            field: "macro list"
        })
    );
    assert_eq!(&out[..], b"keep");
}

#[test]
fn encode_error_empty() {
    let mut out = BytesMut::new();
    assert_eq!(
        Command::Header(milter_proto::Header {
            name: Bytes::new(),
            value: b("v"),
        })
        .encode(&mut out, MAX_DATA_SIZE_64K),
        Err(EncodeError::Empty {
            field: "header name"
        })
    );
    assert_eq!(
        Response::ReplyCode(Bytes::new()).encode(&mut out, MAX_DATA_SIZE_64K),
        Err(EncodeError::Empty {
            field: "reply text"
        })
    );
    assert_eq!(
        Response::Quarantine {
            reason: Bytes::new()
        }
        .encode(&mut out, MAX_DATA_SIZE_64K),
        Err(EncodeError::Empty { field: "reason" })
    );
    assert_eq!(
        Response::DeleteRcpt {
            address: Bytes::new()
        }
        .encode(&mut out, MAX_DATA_SIZE_64K),
        Err(EncodeError::Empty { field: "address" })
    );
    assert!(out.is_empty());
}

// ------------------------------------------------------------- ReplyError

#[test]
fn reply_error_invalid_code() {
    assert_eq!(
        SmtpReply::new(250, None, "ok"),
        Err(ReplyError::InvalidCode("250".into()))
    );
    assert_eq!(
        SmtpReply::new(600, None, "x"),
        Err(ReplyError::InvalidCode("600".into()))
    );
    assert_eq!(
        SmtpReply::parse(b"250 ok"),
        Err(ReplyError::InvalidCode("250".into()))
    );
    assert_eq!(
        SmtpReply::parse(b"5x0 no"),
        Err(ReplyError::InvalidCode("5x0".into()))
    );
}

#[test]
fn reply_error_invalid_enhanced_code() {
    for bad in ["4.7", "4.7.1.1", "3.0.0", "4.1234.1", "4..1", "x.y.z", ""] {
        assert_eq!(
            SmtpReply::new(451, Some(bad), "x"),
            Err(ReplyError::InvalidEnhancedCode(bad.into())),
            "{bad:?}"
        );
    }
}

#[test]
fn reply_error_class_mismatch() {
    assert_eq!(
        SmtpReply::new(451, Some("5.7.1"), "x"),
        Err(ReplyError::ClassMismatch {
            code: "451".into(),
            enhanced: "5.7.1".into(),
        })
    );
    // Postfix: "550 4.7.1" is malformed.
    assert_eq!(
        SmtpReply::parse(b"550 4.7.1 no"),
        Err(ReplyError::ClassMismatch {
            code: "550".into(),
            enhanced: "4.7.1".into(),
        })
    );
}

#[test]
fn reply_error_forbidden_byte() {
    assert_eq!(
        SmtpReply::new(550, None, "a\r\nb"),
        Err(ReplyError::ForbiddenByte {
            line: 1,
            byte: b'\r',
        })
    );
    assert_eq!(
        SmtpReply::multiline(550, None, &["ok", "a\nb"]),
        Err(ReplyError::ForbiddenByte {
            line: 2,
            byte: b'\n',
        })
    );
    assert_eq!(
        SmtpReply::new(550, None, "a\0b"),
        Err(ReplyError::ForbiddenByte { line: 1, byte: 0 })
    );
}

#[test]
fn reply_error_line_too_long() {
    let long = "x".repeat(981);
    assert_eq!(
        SmtpReply::multiline(550, None, &["ok", long.as_str()]),
        Err(ReplyError::LineTooLong { line: 2, len: 981 })
    );
}

#[test]
fn reply_error_too_many_lines() {
    let lines = vec!["x"; 33];
    assert_eq!(
        SmtpReply::multiline(550, None, &lines),
        Err(ReplyError::TooManyLines(33))
    );
    let text = vec!["550-x"; 32].join("\r\n") + "\r\n550 x";
    assert_eq!(
        SmtpReply::parse(text.as_bytes()),
        Err(ReplyError::TooManyLines(33))
    );
}

#[test]
fn reply_error_no_lines() {
    assert_eq!(
        SmtpReply::multiline::<&str>(550, None, &[]),
        Err(ReplyError::NoLines)
    );
}

#[test]
fn reply_error_malformed() {
    for (text, why) in [
        (&b"550 a\0b"[..], "contains NUL"),
        (b"55", "line too short"),
        (b"", "line too short"),
        (b"550-a\r\n551 b", "lines carry different codes"),
        (b"550 a\r\n550 b", "bad separator after the code"),
        (b"550-a", "bad separator after the code"),
        (b"550xa", "bad separator after the code"),
        (b"550 a\nb", "bare CR or LF inside a line"),
        (b"550 a\rb", "bare CR or LF inside a line"),
    ] {
        assert_eq!(
            SmtpReply::parse(text),
            Err(ReplyError::Malformed(why)),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn every_error_displays() {
    // Display is what ends up in logs: non-empty for every variant.
    let all: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(FrameError::ZeroLength),
        Box::new(DecodeError::UnknownCommand(b'Z')),
        Box::new(DecodeError::UnknownResponse(b'Z')),
        Box::new(DecodeError::UnknownFamily(b'X')),
        Box::new(DecodeError::InvalidAddress("x".into())),
        Box::new(ProtocolError::Closed),
        Box::new(NegotiationError::NotOptNeg('c')),
        Box::new(NegotiationError::MacroList(EncodeError::InteriorNul {
            field: "macro list",
        })),
        Box::new(EncodeError::Empty { field: "f" }),
        Box::new(ReplyError::NoLines),
    ];
    for e in all {
        assert!(!e.to_string().is_empty());
    }
}
