//! What each fuzz target does with one input. Kept free of libFuzzer so that
//! `milter-proto/tests/fuzz_corpus.rs` can include this file with `#[path]`
//! and replay the corpus on stable: one copy of the logic for both.
//!
//! Every function must return normally for every input; a panic (including
//! a failed `assert!`) is a finding.

use bytes::{Bytes, BytesMut};
use milter_proto::{
    Actions, Command, Frame, FrameDecoder, FrameError, MacroLists, OptNegReply, ProtocolFlags,
    Response, Session, SmtpReply,
};

/// Payload limit used when re-encoding decoded values: large enough for any
/// fuzz input (a re-encoded IPv6 address may be longer than the original
/// spelling, so the input size is not a bound).
const ENCODE_MAX: usize = 1 << 24;

/// `frame`: byte 0 sets the decoder's maximum payload (0..=1020 bytes),
/// byte 1 the size of the pushes (1..=255); the rest is the stream.
///
/// Checks: decoding the whole stream at once and decoding it pushed in
/// pieces give the same frames and the same error; no frame exceeds the
/// maximum; every frame goes through the `command` and `response` checks.
pub fn frame(data: &[u8]) {
    let (Some(&max), Some(&step)) = (data.first(), data.get(1)) else {
        return;
    };
    let stream = data.get(2..).unwrap_or_default();
    let max = usize::from(max) * 4;
    let step = usize::from(step).max(1);

    let whole = decode_stream(max, [stream]);
    let pieces = decode_stream(max, stream.chunks(step));
    assert_eq!(
        whole, pieces,
        "pushing in pieces of {step} changed the frames"
    );

    let (frames, _) = whole;
    for f in &frames {
        assert!(f.payload.len() <= max, "frame over the maximum of {max}");
        command_parts(f.code, &f.payload);
        response_parts(f.code, &f.payload);
    }
}

/// Runs a [`FrameDecoder`] over `pushes`, decoding after each one, until the
/// stream ends or the decoder fails.
fn decode_stream<'a>(
    max: usize,
    pushes: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for push in pushes {
        buf.extend_from_slice(push);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// `command`: byte 0 is the command byte, the rest the payload.
pub fn command(data: &[u8]) {
    if let Some((&code, payload)) = data.split_first() {
        command_parts(code, &Bytes::copy_from_slice(payload));
    }
}

/// Checks one command payload: consuming the frame decodes exactly like
/// borrowing it; if it decodes, the value re-encodes, the encoding decodes
/// to the same value, and encoding is stable.
fn command_parts(code: u8, payload: &Bytes) {
    let decoded = Command::decode_parts(code, payload);
    let consumed = Command::from_frame(Frame {
        code,
        payload: payload.clone(),
    });
    assert_eq!(decoded, consumed, "from_frame differs from decode");
    let Ok(cmd) = decoded else {
        return;
    };
    assert_eq!(cmd.code(), code);
    touch_command(&cmd);
    let mut wire = BytesMut::new();
    cmd.encode(&mut wire, ENCODE_MAX)
        .expect("a decoded command re-encodes");
    let again = decode_one(&wire);
    let decoded = Command::decode(&again).expect("a re-encoded command decodes");
    assert_eq!(decoded, cmd, "decode(encode(x)) != x");
    let mut wire2 = BytesMut::new();
    decoded
        .encode(&mut wire2, ENCODE_MAX)
        .expect("a decoded command re-encodes");
    assert_eq!(wire, wire2, "encoding is not stable");
}

/// Uses the lazy accessors, which parse on demand.
fn touch_command(cmd: &Command) {
    match cmd {
        Command::Macro(m) => {
            let n = m.pairs().count();
            assert_eq!(m.is_empty(), n == 0);
        }
        Command::Mail(env) | Command::Rcpt(env) => {
            for arg in env.args() {
                assert!(!arg.contains(&0));
            }
        }
        Command::Connect(c) => {
            let _ = c.ip();
        }
        _ => {}
    }
}

/// `response`: byte 0 is the response byte, the rest the payload.
pub fn response(data: &[u8]) {
    if let Some((&code, payload)) = data.split_first() {
        response_parts(code, &Bytes::copy_from_slice(payload));
    }
}

/// As [`command_parts`], for responses.
fn response_parts(code: u8, payload: &Bytes) {
    let Ok(resp) = Response::decode_parts(code, payload) else {
        return;
    };
    assert_eq!(resp.code(), code);
    if let Response::ReplyCode(text) = &resp
        && let Ok(reply) = SmtpReply::parse(text)
    {
        assert_eq!(reply.as_bytes(), text.as_ref());
    }
    let _ = (resp.is_final(), resp.required_action());
    let mut wire = BytesMut::new();
    resp.encode(&mut wire, ENCODE_MAX)
        .expect("a decoded response re-encodes");
    let again = decode_one(&wire);
    let decoded = Response::decode(&again).expect("a re-encoded response decodes");
    assert_eq!(decoded, resp, "decode(encode(x)) != x");
    let mut wire2 = BytesMut::new();
    decoded
        .encode(&mut wire2, ENCODE_MAX)
        .expect("a decoded response re-encodes");
    assert_eq!(wire, wire2, "encoding is not stable");
}

/// Decodes exactly one frame from an encoding.
fn decode_one(wire: &BytesMut) -> Frame {
    let mut buf = wire.clone();
    let frame = FrameDecoder::new(ENCODE_MAX)
        .decode(&mut buf)
        .expect("an encoded frame has a valid header")
        .expect("an encoded frame is whole");
    assert!(buf.is_empty(), "encode wrote more than one frame");
    frame
}

/// Command bytes the `session` target chooses from (op byte `0x00..=0x7f`,
/// index `op % 16`; index 15 takes the next input byte as a raw code).
pub const SESSION_COMMANDS: [u8; 15] = *b"ODCHMRTLNBEAQKU";

/// Op index (`0x80 | index`) of the option negotiation reply in the
/// `session` target; it reads 9 more bytes: version (u8), actions (u32 BE),
/// protocol flags (u32 BE), missing bytes being 0.
pub const SESSION_OPTNEG_REPLY: u8 = 0;

/// The responses the `session` target chooses from (op byte `0x80..=0xff`,
/// index `(op & 0x7f) % (len + 1)`, index 0 being the negotiation reply).
pub fn session_responses() -> Vec<Response> {
    let b = Bytes::from_static;
    vec![
        Response::Continue,
        Response::Accept,
        Response::Reject,
        Response::Tempfail,
        Response::Discard,
        Response::Skip,
        Response::Progress,
        Response::ReplyCode(b(b"550 5.7.1 no")),
        Response::AddHeader {
            name: b(b"X-A"),
            value: b(b"1"),
        },
        Response::InsertHeader {
            index: 0,
            name: b(b"X-A"),
            value: b(b"1"),
        },
        Response::ChangeHeader {
            index: 1,
            name: b(b"X-A"),
            value: Bytes::new(),
        },
        Response::ChangeFrom {
            address: b(b"<a@b>"),
            args: None,
        },
        Response::AddRcpt {
            address: b(b"<a@b>"),
        },
        Response::AddRcptPar {
            address: b(b"<a@b>"),
            args: Some(b(b"NOTIFY=NEVER")),
        },
        Response::DeleteRcpt {
            address: b(b"<a@b>"),
        },
        Response::ReplaceBody(b(b"x\r\n")),
        Response::Quarantine { reason: b(b"q") },
        Response::ConnectionFail,
        Response::Shutdown,
        Response::SetSymList(Bytes::new()),
    ]
}

/// `session`: a sequence of ops, each a command byte or a response, fed
/// to one [`Session`] in order (errors are expected and ignored).
///
/// Checks after every accepted packet: a command that expects something
/// leaves exactly that command pending and one that does not leaves nothing
/// pending; QUIT closes; end of message leaves no message open; a final
/// response clears the pending reply and a non-final one keeps it; a closed
/// session refuses everything with `Closed`.
pub fn session(data: &[u8]) {
    let responses = session_responses();
    let mut s = Session::new();
    let mut ops = data.iter().copied();
    while let Some(op) = ops.next() {
        if op & 0x80 == 0 {
            let code = match SESSION_COMMANDS.get(usize::from(op % 16)) {
                Some(&c) => c,
                None => ops.next().unwrap_or(0),
            };
            session_command(&mut s, code);
        } else {
            let index = usize::from(op & 0x7f) % (responses.len() + 1);
            let resp = match index.checked_sub(1).and_then(|i| responses.get(i)) {
                Some(r) => r.clone(),
                None => {
                    let mut word = [0u8; 9];
                    for slot in &mut word {
                        *slot = ops.next().unwrap_or(0);
                    }
                    let [v, a0, a1, a2, a3, p0, p1, p2, p3] = word;
                    Response::OptNeg(OptNegReply {
                        version: u32::from(v),
                        actions: Actions::from_bits_retain(u32::from_be_bytes([a0, a1, a2, a3])),
                        protocol: ProtocolFlags::from_bits_retain(u32::from_be_bytes([
                            p0, p1, p2, p3,
                        ])),
                        macros: MacroLists::default(),
                    })
                }
            };
            session_response(&mut s, &resp);
        }
    }
}

fn session_command(s: &mut Session, code: u8) {
    let was_closed = s.is_closed();
    let result = s.on_command_code(code);
    if was_closed {
        assert_eq!(result, Err(milter_proto::ProtocolError::Closed));
        return;
    }
    let Ok(effect) = result else {
        return;
    };
    match effect.expect {
        milter_proto::Expect::Nothing => assert_eq!(s.pending_reply(), None),
        _ => assert_eq!(s.pending_reply(), Some(code)),
    }
    if effect.quit {
        assert!(s.is_closed());
    }
    if effect.end_of_message {
        assert!(!s.in_message());
    }
    if effect.message_started && !effect.end_of_message {
        assert!(s.in_message());
    }
}

fn session_response(s: &mut Session, resp: &Response) {
    let was_closed = s.is_closed();
    let before = s.pending_reply();
    let result = s.on_response(resp);
    if was_closed {
        assert_eq!(result, Err(milter_proto::ProtocolError::Closed));
        return;
    }
    match result {
        Ok(effect) if effect.is_final => assert_eq!(s.pending_reply(), None),
        Ok(_) => assert_eq!(s.pending_reply(), before),
        Err(_) => assert_eq!(s.pending_reply(), before),
    }
}
