//! Replays byte streams that real MTAs sent to a milter.
//!
//! `tests/data/<mta>-<version>-<scenario>.bin` are MTA → filter streams
//! recorded by `scripts/interop.sh` (through `scripts/interop/record.py`,
//! a proxy between Postfix or Sendmail and one of our example milters), one
//! milter connection per file. Each is cut into frames, every frame is
//! decoded into a [`Command`], re-encoded to the very same bytes, and fed to
//! a [`Session`] playing the filter's side.
//!
//! The filter's replies were not recorded, so the session gets synthetic
//! ones: the negotiation reply grants the offered version and actions, and
//! `SMFIP_NOCONNECT`/`SMFIP_NOMAIL` when the stream has no CONNECT/MAIL at
//! all (the recorded filter had negotiated them away); every other
//! reply-bearing command gets CONTINUE (at end of message: accept).
//!
//! `MILTER_CAPTURE_DIR=/dir` replays the `.bin` files there too (the
//! interop script checks fresh recordings this way).
//! `MILTER_WRITE_CAPTURE_SEEDS=1` (re)writes the fuzz seeds
//! `fuzz/corpus/{frame,session}/capture-<name>` from `tests/data`; without
//! it the test checks that they match.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use milter_proto::frame::DEFAULT_MAX_INBOUND;
use milter_proto::{
    Command, Expect, Frame, FrameDecoder, MacroLists, OptNegReply, ProtocolFlags, Response, Session,
};

// The fuzz crate exports these functions; here only the test uses them.
#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/logic.rs"]
mod logic;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// The `.bin` files of a directory, sorted.
fn captures(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    files
}

/// Cuts a whole recorded stream into frames; a partial frame at the end is
/// an error (the recording ends where the connection ended).
fn frames(stream: &[u8]) -> Result<Vec<Frame>, String> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_INBOUND);
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => break,
            Err(e) => return Err(format!("frame {}: {e}", out.len() + 1)),
        }
    }
    if !buf.is_empty() {
        return Err(format!("{} bytes of a partial frame at the end", buf.len()));
    }
    Ok(out)
}

/// What one replay saw.
#[derive(Debug, Default)]
struct Summary {
    frames: usize,
    messages: usize,
    end_of_messages: usize,
    quit: bool,
}

/// The synthetic reply to a command that expects one.
fn reply_to(command: &Command, expect: Expect, stream_codes: &[u8]) -> Option<Response> {
    match (expect, command) {
        (Expect::Nothing, _) => None,
        (Expect::OptNeg, Command::OptNeg(offer)) => {
            let mut protocol = ProtocolFlags::empty();
            if !stream_codes.contains(&b'C') {
                protocol |= ProtocolFlags::NO_CONNECT;
            }
            if !stream_codes.contains(&b'M') {
                protocol |= ProtocolFlags::NO_MAIL;
            }
            Some(Response::OptNeg(OptNegReply {
                version: offer.version,
                actions: offer.actions,
                protocol,
                macros: MacroLists::default(),
            }))
        }
        (Expect::EndOfMessage, _) => Some(Response::Accept),
        _ => Some(Response::Continue),
    }
}

/// Replays one recorded stream through the codec and a [`Session`].
fn replay(stream: &[u8]) -> Result<Summary, String> {
    let frames = frames(stream)?;
    let codes: Vec<u8> = frames.iter().map(|f| f.code).collect();
    if codes.first() != Some(&b'O') {
        return Err("the stream does not start with option negotiation".into());
    }
    let mut session = Session::new();
    let mut summary = Summary {
        frames: frames.len(),
        ..Summary::default()
    };
    for (i, frame) in frames.iter().enumerate() {
        let at = || format!("frame {} ('{}')", i + 1, char::from(frame.code));
        let command = Command::decode(frame).map_err(|e| format!("{}: {e}", at()))?;
        // The codec writes exactly what the MTA wrote.
        let mut wire = BytesMut::new();
        command
            .encode(&mut wire, usize::MAX)
            .map_err(|e| format!("{}: re-encoding: {e}", at()))?;
        let mut original = BytesMut::new();
        original.extend_from_slice(&(frame.payload.len() as u32 + 1).to_be_bytes());
        original.extend_from_slice(&[frame.code]);
        original.extend_from_slice(&frame.payload);
        if wire != original {
            return Err(format!("{}: re-encodes differently", at()));
        }
        let effect = session
            .on_command(&command)
            .map_err(|e| format!("{}: {e}", at()))?;
        summary.messages += usize::from(effect.message_started);
        summary.end_of_messages += usize::from(effect.end_of_message);
        summary.quit |= effect.quit;
        if let Some(response) = reply_to(&command, effect.expect, &codes) {
            session
                .on_response(&response)
                .map_err(|e| format!("{}: reply {response:?}: {e}", at()))?;
        }
    }
    if session.pending_reply().is_some() {
        return Err("the stream ends while a reply is owed".into());
    }
    Ok(summary)
}

#[test]
fn every_capture_replays_through_the_session() {
    let mut files = captures(&data_dir());
    assert!(
        !files.is_empty(),
        "no captures in {}: record them with INTEROP_UPDATE_CAPTURES=1 scripts/interop.sh",
        data_dir().display()
    );
    if let Some(extra) = std::env::var_os("MILTER_CAPTURE_DIR") {
        files.extend(captures(Path::new(&extra)));
    }
    let mut failures = Vec::new();
    for path in &files {
        let stream = fs::read(path).expect("readable capture");
        match replay(&stream) {
            Ok(s) => eprintln!(
                "capture {}: {} frames, {} messages, {} end of message, quit={}",
                path.display(),
                s.frames,
                s.messages,
                s.end_of_messages,
                s.quit
            ),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "captures that fail: {failures:#?}");
}

#[test]
fn captures_cover_both_mtas_and_both_versions() {
    let names: Vec<String> = captures(&data_dir())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["postfix-", "sendmail-", "-v6-", "-v2-"] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no capture matching {want:?} in {names:?}"
        );
    }
}

/// `frame` seed: byte 0 sets the decoder maximum to 255 * 4 bytes (frames
/// above it end the stream with an error, as the target expects), byte 1
/// pushes in pieces of 7, then the stream.
fn frame_seed(stream: &[u8]) -> Vec<u8> {
    let mut seed = vec![255, 7];
    seed.extend_from_slice(stream);
    seed
}

/// `session` seed: each command as its op byte, each synthetic reply of
/// [`replay`] as a response op (see `fuzz/src/logic.rs`).
fn session_seed(stream: &[u8]) -> Vec<u8> {
    let frames = frames(stream).expect("a replayable capture");
    let codes: Vec<u8> = frames.iter().map(|f| f.code).collect();
    let responses = logic::session_responses();
    let response_op = |r: &Response| {
        let index = responses
            .iter()
            .position(|x| x == r)
            .expect("a response the session target knows");
        0x80 | u8::try_from(index + 1).expect("small index")
    };
    let mut session = Session::new();
    let mut seed = Vec::new();
    for frame in &frames {
        let command = Command::decode(frame).expect("a decodable frame");
        let op = logic::SESSION_COMMANDS
            .iter()
            .position(|&c| c == frame.code)
            .expect("a command the session target knows");
        seed.push(u8::try_from(op).expect("small index"));
        let effect = session.on_command(&command).expect("a legal command");
        match reply_to(&command, effect.expect, &codes) {
            Some(Response::OptNeg(reply)) => {
                seed.push(0x80 | logic::SESSION_OPTNEG_REPLY);
                seed.push(u8::try_from(reply.version).expect("small version"));
                seed.extend_from_slice(&reply.actions.bits().to_be_bytes());
                seed.extend_from_slice(&reply.protocol.bits().to_be_bytes());
                session.on_response(&Response::OptNeg(reply)).unwrap();
            }
            Some(r) => {
                seed.push(response_op(&r));
                session.on_response(&r).unwrap();
            }
            None => {}
        }
    }
    seed
}

#[test]
fn fuzz_seeds_from_captures_are_current() {
    let write = std::env::var_os("MILTER_WRITE_CAPTURE_SEEDS").is_some();
    let mut stale = Vec::new();
    for path in captures(&data_dir()) {
        let stream = fs::read(&path).expect("readable capture");
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let seeds = [
            ("frame", frame_seed(&stream)),
            ("session", session_seed(&stream)),
        ];
        for (target, seed) in seeds {
            // The seed must run cleanly through the target's own logic.
            match target {
                "frame" => logic::frame(&seed),
                _ => logic::session(&seed),
            }
            let file = fuzz_dir().join(target).join(format!("capture-{name}"));
            if write {
                fs::write(&file, &seed).expect("write the seed");
            } else if fs::read(&file).ok().as_deref() != Some(seed.as_slice()) {
                stale.push(file.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "missing or stale seeds (MILTER_WRITE_CAPTURE_SEEDS=1 cargo test -p milter-proto --test captures): {stale:#?}"
    );
}
