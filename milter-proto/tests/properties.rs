//! Properties: `decode(encode(x)) == x` for every command and response, and
//! no input makes a decoder, parser or the state machine panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use milter_proto::frame::DEFAULT_MAX_INBOUND;
use milter_proto::{
    Actions, Command, Connect, ConnectAddress, Envelope, FrameDecoder, Header, MacroLists, Macros,
    OptNeg, OptNegReply, ProtocolFlags, Response, Session, SmtpReply, SocketSpec,
};
use proptest::prelude::*;

// -------------------------------------------------------------- strategies

/// Contents of a NUL-terminated field: any bytes but NUL, possibly empty.
fn cstr() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8..=255, 0..40).prop_map(Bytes::from)
}

/// As [`cstr`], never empty.
fn nonempty_cstr() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8..=255, 1..40).prop_map(Bytes::from)
}

/// Raw payload bytes (body chunks), NUL allowed.
fn raw() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from)
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<Ipv6Addr>().prop_map(IpAddr::V6),
        // Mapped addresses, which Sendmail sends as family '4' but may arrive as '6'.
        any::<Ipv4Addr>().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn connect_address() -> impl Strategy<Value = ConnectAddress> {
    prop_oneof![
        Just(ConnectAddress::Unknown),
        cstr().prop_map(ConnectAddress::Unix),
        socket_addr().prop_map(ConnectAddress::Inet),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (cstr(), proptest::collection::vec(cstr(), 0..5))
        .prop_map(|(address, args)| Envelope::new(address, args).unwrap())
}

fn optneg() -> impl Strategy<Value = OptNeg> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(version, a, p)| OptNeg {
        version,
        actions: Actions::from_bits_retain(a),
        protocol: ProtocolFlags::from_bits_retain(p),
    })
}

fn macros() -> impl Strategy<Value = Macros> {
    (
        any::<u8>(),
        proptest::collection::vec((cstr(), cstr()), 0..6),
    )
        .prop_map(|(stage, pairs)| Macros::new(stage, pairs).unwrap())
}

/// Every command kind with arbitrary valid contents.
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        optneg().prop_map(Command::OptNeg),
        macros().prop_map(Command::Macro),
        (cstr(), connect_address())
            .prop_map(|(hostname, address)| Command::Connect(Connect { hostname, address })),
        cstr().prop_map(Command::Helo),
        envelope().prop_map(Command::Mail),
        envelope().prop_map(Command::Rcpt),
        Just(Command::Data),
        (nonempty_cstr(), cstr()).prop_map(|(name, value)| Command::Header(Header { name, value })),
        Just(Command::EndOfHeaders),
        raw().prop_map(Command::Body),
        raw().prop_map(Command::EndOfMessage),
        Just(Command::Abort),
        Just(Command::Quit),
        Just(Command::QuitNc),
        cstr().prop_map(Command::Unknown),
    ]
}

fn optneg_reply() -> impl Strategy<Value = OptNegReply> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec((any::<u32>(), cstr()), 0..8),
    )
        .prop_map(|(version, a, p, macros)| OptNegReply {
            version,
            actions: Actions::from_bits_retain(a),
            protocol: ProtocolFlags::from_bits_retain(p),
            macros: MacroLists::new(macros).unwrap(),
        })
}

/// Every response kind with arbitrary valid contents.
fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        optneg_reply().prop_map(Response::OptNeg),
        Just(Response::Continue),
        Just(Response::Accept),
        Just(Response::Reject),
        Just(Response::Tempfail),
        Just(Response::Discard),
        Just(Response::Skip),
        Just(Response::Progress),
        nonempty_cstr().prop_map(Response::ReplyCode),
        (nonempty_cstr(), cstr()).prop_map(|(name, value)| Response::AddHeader { name, value }),
        (any::<u32>(), nonempty_cstr(), cstr())
            .prop_map(|(index, name, value)| Response::InsertHeader { index, name, value }),
        (any::<u32>(), nonempty_cstr(), cstr())
            .prop_map(|(index, name, value)| Response::ChangeHeader { index, name, value }),
        (nonempty_cstr(), proptest::option::of(cstr()))
            .prop_map(|(address, args)| Response::ChangeFrom { address, args }),
        nonempty_cstr().prop_map(|address| Response::AddRcpt { address }),
        (nonempty_cstr(), proptest::option::of(cstr()))
            .prop_map(|(address, args)| Response::AddRcptPar { address, args }),
        nonempty_cstr().prop_map(|address| Response::DeleteRcpt { address }),
        raw().prop_map(Response::ReplaceBody),
        nonempty_cstr().prop_map(|reason| Response::Quarantine { reason }),
        Just(Response::ConnectionFail),
        Just(Response::Shutdown),
        raw().prop_map(Response::SetSymList),
    ]
}

fn decode_single(wire: &BytesMut) -> milter_proto::Frame {
    let mut buf = wire.clone();
    let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "one value, one frame");
    frame
}

// -------------------------------------------------------------- round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn command_round_trip(cmd in command()) {
        let mut wire = BytesMut::new();
        cmd.encode(&mut wire, DEFAULT_MAX_INBOUND).unwrap();
        let frame = decode_single(&wire);
        prop_assert_eq!(frame.code, cmd.code());
        prop_assert_eq!(Command::decode(&frame).unwrap(), cmd.clone());
        prop_assert_eq!(Command::from_frame(frame).unwrap(), cmd);
    }

    #[test]
    fn response_round_trip(resp in response()) {
        let mut wire = BytesMut::new();
        resp.encode(&mut wire, DEFAULT_MAX_INBOUND).unwrap();
        let frame = decode_single(&wire);
        prop_assert_eq!(frame.code, resp.code());
        prop_assert_eq!(Response::decode(&frame).unwrap(), resp);
    }

    #[test]
    fn macro_lists_read_back_as_built(
        lists in proptest::collection::vec((any::<u32>(), cstr()), 0..8),
    ) {
        let built = MacroLists::new(lists.clone()).unwrap();
        prop_assert_eq!(built.len(), lists.len());
        prop_assert_eq!(built.is_empty(), lists.is_empty());
        prop_assert_eq!(built.iter().collect::<Vec<_>>(), lists);
    }

    #[test]
    fn a_stream_of_commands_round_trips(cmds in proptest::collection::vec(command(), 0..20), step in 1usize..64) {
        let mut wire = BytesMut::new();
        for c in &cmds {
            c.encode(&mut wire, DEFAULT_MAX_INBOUND).unwrap();
        }
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for push in wire.chunks(step) {
            buf.extend_from_slice(push);
            while let Some(f) = decoder.decode(&mut buf).unwrap() {
                out.push(Command::decode(&f).unwrap());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, cmds);
    }

    #[test]
    fn encode_over_the_maximum_fails_cleanly(cmd in command(), max in 0usize..64) {
        let mut wire = BytesMut::from(&b"prefix"[..]);
        match cmd.encode(&mut wire, max) {
            Ok(()) => prop_assert!(wire.len() - 6 <= max + 5),
            Err(_) => prop_assert_eq!(&wire[..], b"prefix"),
        }
    }
}

// ------------------------------------------------------------ never panics

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn frame_decoder_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        max in 0usize..300,
        step in 1usize..50,
    ) {
        let mut decoder = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        'outer: for push in data.chunks(step) {
            buf.extend_from_slice(push);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(f)) => {
                        prop_assert!(f.payload.len() <= max);
                        let _ = Command::decode(&f);
                        let _ = Response::decode(&f);
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn command_decode_never_panics(code in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let payload = Bytes::from(payload);
        let shared = Command::decode_parts(code, &payload);
        // Consuming the frame decodes to the same thing, errors included.
        let owned = Command::from_frame(milter_proto::Frame { code, payload });
        prop_assert_eq!(shared, owned);
    }

    #[test]
    fn a_consumed_connect_frame_decodes_like_a_borrowed_one(
        payload in proptest::collection::vec(prop_oneof![Just(0u8), Just(b'4'), Just(b'6'), Just(b'L'), Just(b'U'), Just(b':'), Just(b'.'), any::<u8>()], 0..60),
    ) {
        let payload = Bytes::from(payload);
        let shared = Command::decode_parts(b'C', &payload);
        let owned = Command::from_frame(milter_proto::Frame { code: b'C', payload });
        prop_assert_eq!(shared, owned);
    }

    #[test]
    fn command_decode_never_panics_on_known_codes(
        code in proptest::sample::select(b"ODCHMRTLNBEAQKU".to_vec()),
        payload in proptest::collection::vec(prop_oneof![Just(0u8), Just(b'4'), Just(b'6'), Just(b'L'), Just(b':'), any::<u8>()], 0..60),
    ) {
        if let Ok(cmd) = Command::decode_parts(code, &Bytes::from(payload)) {
            let mut wire = BytesMut::new();
            cmd.encode(&mut wire, DEFAULT_MAX_INBOUND).unwrap();
            prop_assert_eq!(Command::decode(&decode_single(&wire)).unwrap(), cmd);
        }
    }

    #[test]
    fn response_decode_never_panics(code in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Response::decode_parts(code, &Bytes::from(payload));
    }

    #[test]
    fn response_decode_never_panics_on_known_codes(
        code in proptest::sample::select(b"Ocartdyspqhime+2-bf4l".to_vec()),
        payload in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..60),
    ) {
        if let Ok(resp) = Response::decode_parts(code, &Bytes::from(payload)) {
            let mut wire = BytesMut::new();
            resp.encode(&mut wire, DEFAULT_MAX_INBOUND).unwrap();
            prop_assert_eq!(Response::decode(&decode_single(&wire)).unwrap(), resp);
        }
    }

    #[test]
    fn smtp_reply_parse_never_panics(text in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = SmtpReply::parse(&text);
    }

    #[test]
    fn socket_spec_parse_never_panics(spec in any::<String>()) {
        let _ = SocketSpec::parse(&spec);
    }

    #[test]
    fn socket_spec_parse_never_panics_on_spec_like_text(
        spec in "(unix|local|inet|inet6|INET|x)?:?[\\[\\]0-9a-z:@./]{0,30}"
    ) {
        if let Ok(parsed) = SocketSpec::parse(&spec) {
            // What Display writes parses back to the same spec.
            let again = SocketSpec::parse(&parsed.to_string());
            prop_assert_eq!(again.as_ref(), Ok(&parsed), "{} -> {}", spec, parsed);
        }
    }

    #[test]
    fn session_never_panics(ops in proptest::collection::vec((any::<bool>(), 0usize..40, any::<u32>(), any::<u32>()), 0..80)) {
        const CODES: &[u8] = b"ODCHMRTLNBEAQKUZ";
        let responses = [
            Response::Continue,
            Response::Accept,
            Response::Reject,
            Response::Tempfail,
            Response::Discard,
            Response::Skip,
            Response::Progress,
            Response::ReplyCode(Bytes::from_static(b"451 4.7.1 later")),
            Response::AddHeader { name: Bytes::from_static(b"X"), value: Bytes::new() },
            Response::ChangeHeader { index: 1, name: Bytes::from_static(b"X"), value: Bytes::new() },
            Response::ReplaceBody(Bytes::new()),
            Response::Quarantine { reason: Bytes::from_static(b"q") },
            Response::ConnectionFail,
            Response::Shutdown,
            Response::SetSymList(Bytes::new()),
        ];
        let mut s = Session::new();
        for (is_command, pick, a, p) in ops {
            if is_command {
                let code = CODES[pick % CODES.len()];
                if let Ok(e) = s.on_command_code(code) {
                    prop_assert_eq!(s.pending_reply().is_some(), e.expect != milter_proto::Expect::Nothing);
                }
            } else if pick == 0 {
                let _ = s.on_response(&Response::OptNeg(OptNegReply {
                    version: 6,
                    actions: Actions::from_bits_retain(a),
                    protocol: ProtocolFlags::from_bits_retain(p),
                    macros: MacroLists::default(),
                }));
            } else {
                let before = s.pending_reply();
                match s.on_response(&responses[pick % responses.len()]) {
                    Ok(e) if e.is_final => prop_assert_eq!(s.pending_reply(), None),
                    _ => prop_assert_eq!(s.pending_reply(), before),
                }
            }
        }
    }
}
