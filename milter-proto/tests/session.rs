//! The session state machine, table-driven: whole conversations as scripts
//! of commands and responses with the expected effect of each step.

use bytes::Bytes;
use milter_proto::{
    Actions, Command, CommandEffect, Expect, MacroLists, MessageStage, OptNegReply, ProtocolError,
    ProtocolFlags as P, Response, ResponseEffect, Session,
};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn optneg_reply(actions: Actions, protocol: P) -> Response {
    Response::OptNeg(OptNegReply {
        version: 6,
        actions,
        protocol,
        macros: MacroLists::default(),
    })
}

/// A negotiated session, before CONNECT.
fn negotiated(actions: Actions, protocol: P) -> Session {
    let mut s = Session::new();
    assert!(!s.is_negotiated());
    let e = s.on_command_code(b'O').unwrap();
    assert_eq!(e.expect, Expect::OptNeg);
    assert_eq!(s.pending_reply(), Some(b'O'));
    let r = s.on_response(&optneg_reply(actions, protocol)).unwrap();
    assert!(r.is_final && !r.message_ended);
    assert!(s.is_negotiated());
    assert_eq!(s.version(), 6);
    assert_eq!(s.actions(), actions);
    assert_eq!(s.protocol(), protocol);
    s
}

fn connected(actions: Actions, protocol: P) -> Session {
    let mut s = negotiated(actions, protocol);
    cmd(&mut s, b'C', Expect::Reply);
    reply(&mut s, &Response::Continue);
    s
}

/// Feeds a command that must be accepted with `expect`.
fn cmd(s: &mut Session, code: u8, expect: Expect) -> CommandEffect {
    let e = s
        .on_command_code(code)
        .unwrap_or_else(|err| panic!("command {}: {err}", char::from(code)));
    assert_eq!(e.expect, expect, "command {}", char::from(code));
    e
}

/// Feeds a response that must be accepted.
fn reply(s: &mut Session, r: &Response) -> ResponseEffect {
    s.on_response(r)
        .unwrap_or_else(|err| panic!("response {r:?}: {err}"))
}

/// One message MAIL .. EOM with CONTINUE everywhere, then ABORT as Postfix does.
fn message(s: &mut Session) {
    let e = cmd(s, b'M', Expect::Reply);
    assert!(e.message_started && !e.aborted);
    reply(s, &Response::Continue);
    for code in *b"RRTLLLNBB" {
        cmd(s, code, Expect::Reply);
        reply(s, &Response::Continue);
    }
    assert_eq!(s.message_stage(), Some(MessageStage::Body));
    let e = cmd(s, b'E', Expect::EndOfMessage);
    assert!(e.end_of_message && !e.aborted);
    assert!(!s.in_message(), "the message ended with EOM");
    let r = reply(s, &Response::Continue);
    assert!(r.is_final && r.message_ended);
    let e = cmd(s, b'A', Expect::Nothing);
    assert!(!e.aborted, "ABORT after EOM aborts nothing");
}

#[test]
fn two_messages_per_connection() {
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'H', Expect::Reply);
    reply(&mut s, &Response::Continue);
    message(&mut s);
    message(&mut s);
    let e = cmd(&mut s, b'Q', Expect::Nothing);
    assert!(e.quit && !e.aborted);
    assert!(s.is_closed());
}

#[test]
fn three_messages_and_a_second_helo() {
    let mut s = connected(Actions::empty(), P::empty());
    for _ in 0..3 {
        cmd(&mut s, b'H', Expect::Reply);
        reply(&mut s, &Response::Continue);
        message(&mut s);
    }
    cmd(&mut s, b'Q', Expect::Nothing);
}

#[test]
fn abort_after_eom_and_abort_twice() {
    let mut s = connected(Actions::empty(), P::empty());
    message(&mut s);
    // Postfix sometimes sends ABORT twice.
    let e = cmd(&mut s, b'A', Expect::Nothing);
    assert!(!e.aborted);
    // Inside a message: the first ABORT aborts, the second means nothing.
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'R', Expect::Reply);
    reply(&mut s, &Response::Continue);
    let e = cmd(&mut s, b'A', Expect::Nothing);
    assert!(e.aborted);
    assert!(!s.in_message());
    let e = cmd(&mut s, b'A', Expect::Nothing);
    assert!(!e.aborted);
    // No reply to ABORT.
    assert_eq!(
        s.on_response(&Response::Continue),
        Err(ProtocolError::UnexpectedResponse { response: 'c' })
    );
}

#[test]
fn abort_before_any_message() {
    let mut s = connected(Actions::empty(), P::empty());
    let e = cmd(&mut s, b'A', Expect::Nothing);
    assert!(!e.aborted && !e.message_started);
}

#[test]
fn no_reply_stages() {
    // (NR bit, command, commands needed before it inside the message)
    let rows: [(P, u8); 9] = [
        (P::NR_CONNECT, b'C'),
        (P::NR_HELO, b'H'),
        (P::NR_MAIL, b'M'),
        (P::NR_RCPT, b'R'),
        (P::NR_DATA, b'T'),
        (P::NR_HEADER, b'L'),
        (P::NR_EOH, b'N'),
        (P::NR_BODY, b'B'),
        (P::NR_UNKNOWN, b'U'),
    ];
    for (bit, code) in rows {
        let mut s = negotiated(Actions::empty(), bit);
        // Walk up to the command, replying everywhere else.
        let path: &[u8] = match code {
            b'C' => b"C",
            b'H' => b"CH",
            b'M' => b"CM",
            b'R' => b"CMR",
            b'T' => b"CMRT",
            b'L' => b"CMRTL",
            b'N' => b"CMRTN",
            b'B' => b"CMRTNB",
            _ => b"CU",
        };
        for &c in path {
            let expect = if c == code {
                Expect::Nothing
            } else {
                Expect::Reply
            };
            assert_eq!(s.expects_reply(c), c != code);
            cmd(&mut s, c, expect);
            if c != code {
                reply(&mut s, &Response::Continue);
            }
        }
        assert_eq!(s.pending_reply(), None);
        // A reply there is not expected (purepythonmilter#14).
        assert_eq!(
            s.on_response(&Response::Reject),
            Err(ProtocolError::UnexpectedResponse { response: 'r' }),
            "NR stage {}",
            char::from(code)
        );
    }
}

#[test]
fn headers_pipelined_without_replies() {
    let mut s = connected(Actions::empty(), P::NR_HEADER);
    for code in *b"MRT" {
        cmd(&mut s, code, Expect::Reply);
        reply(&mut s, &Response::Continue);
    }
    for _ in 0..5 {
        cmd(&mut s, b'L', Expect::Nothing);
    }
    cmd(&mut s, b'N', Expect::Reply);
}

#[test]
fn eom_always_expects_a_reply() {
    let mut s = negotiated(Actions::empty(), P::ALL_NR);
    assert!(s.expects_reply(b'E'));
    for code in *b"CHMRTLNB" {
        cmd(&mut s, code, Expect::Nothing);
    }
    cmd(&mut s, b'E', Expect::EndOfMessage);
}

#[test]
fn never_replied_commands() {
    let s = connected(Actions::empty(), P::empty());
    for code in *b"DAQK" {
        assert!(!s.expects_reply(code), "{}", char::from(code));
    }
    for code in *b"OCHMRTLNBEU" {
        assert!(s.expects_reply(code), "{}", char::from(code));
    }
}

#[test]
fn macros_anywhere_after_negotiation() {
    let mut s = negotiated(Actions::empty(), P::empty());
    cmd(&mut s, b'D', Expect::Nothing);
    cmd(&mut s, b'C', Expect::Reply);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'D', Expect::Nothing);
    assert_eq!(s.message_stage(), Some(MessageStage::Mail));
}

#[test]
fn no_helo_goes_from_connect_to_mail() {
    let mut s = connected(Actions::empty(), P::NO_HELO);
    cmd(&mut s, b'M', Expect::Reply);
}

#[test]
fn no_connect_starts_at_helo() {
    let mut s = negotiated(Actions::empty(), P::NO_CONNECT);
    cmd(&mut s, b'H', Expect::Reply);
    reply(&mut s, &Response::Continue);
    message(&mut s);
}

#[test]
fn no_connect_starts_at_mail() {
    let mut s = negotiated(Actions::empty(), P::NO_CONNECT | P::NO_HELO);
    let e = cmd(&mut s, b'M', Expect::Reply);
    assert!(e.message_started);
}

#[test]
fn helo_before_connect_is_out_of_order() {
    let mut s = negotiated(Actions::empty(), P::empty());
    assert_eq!(
        s.on_command_code(b'H'),
        Err(ProtocolError::OutOfOrder {
            command: 'H',
            state: "before CONNECT",
        })
    );
}

#[test]
fn no_mail_starts_a_message_at_rcpt() {
    let mut s = connected(Actions::empty(), P::NO_MAIL);
    let e = cmd(&mut s, b'R', Expect::Reply);
    assert!(e.message_started);
    assert_eq!(s.message_stage(), Some(MessageStage::Rcpt));
    reply(&mut s, &Response::Continue);
    let e = cmd(&mut s, b'R', Expect::Reply);
    assert!(!e.message_started, "the second RCPT is in the same message");
}

#[test]
fn no_mail_no_rcpt_starts_a_message_at_data_or_eom() {
    let mut s = connected(Actions::empty(), P::NO_MAIL | P::NO_RCPT);
    let e = cmd(&mut s, b'T', Expect::Reply);
    assert!(e.message_started);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'E', Expect::EndOfMessage);
    reply(&mut s, &Response::Accept);
    // A whole message can be just EOM.
    let e = cmd(&mut s, b'E', Expect::EndOfMessage);
    assert!(e.message_started && e.end_of_message);
    assert!(!s.in_message());
}

#[test]
fn rcpt_outside_a_message_is_out_of_order() {
    let mut s = connected(Actions::empty(), P::empty());
    assert_eq!(
        s.on_command_code(b'R'),
        Err(ProtocolError::OutOfOrder {
            command: 'R',
            state: "outside a message",
        })
    );
}

#[test]
fn skipped_message_stages() {
    // Each row: a message as the MTA sends it with stages negotiated away
    // or absent (v2: no DATA; no headers; no body).
    let rows: [&[u8]; 6] = [b"MRLNBE", b"MRTNBE", b"MRTLBE", b"MRTLNE", b"MRE", b"MBE"];
    for row in rows {
        let mut s = connected(Actions::empty(), P::empty());
        for &code in row {
            let expect = if code == b'E' {
                Expect::EndOfMessage
            } else {
                Expect::Reply
            };
            cmd(&mut s, code, expect);
            reply(&mut s, &Response::Continue);
        }
        assert!(!s.in_message(), "{}", String::from_utf8_lossy(row));
    }
}

#[test]
fn going_backwards_is_out_of_order() {
    // (message so far, offending command)
    let rows: [(&[u8], u8); 7] = [
        (b"MRTLNB", b'L'),
        (b"MRTLNB", b'N'),
        (b"MRTLN", b'L'),
        (b"MRTLN", b'T'),
        (b"MRT", b'T'),
        (b"MRTL", b'R'),
        (b"MRTN", b'N'),
    ];
    for (path, bad) in rows {
        let mut s = connected(Actions::empty(), P::empty());
        for &code in path {
            cmd(&mut s, code, Expect::Reply);
            reply(&mut s, &Response::Continue);
        }
        assert!(
            matches!(
                s.on_command_code(bad),
                Err(ProtocolError::OutOfOrder { .. })
            ),
            "{} after {}",
            char::from(bad),
            String::from_utf8_lossy(path)
        );
    }
}

#[test]
fn quit_nc_then_a_new_connect() {
    let mut s = connected(Actions::empty(), P::empty());
    message(&mut s);
    let e = cmd(&mut s, b'K', Expect::Nothing);
    assert!(e.reset && !e.quit && !e.aborted);
    assert!(!s.is_closed());
    assert!(s.is_negotiated(), "negotiation survives QUIT_NC");
    // Before the new CONNECT nothing else is allowed.
    assert!(s.on_command_code(b'H').is_err());
    cmd(&mut s, b'C', Expect::Reply);
    reply(&mut s, &Response::Continue);
    message(&mut s);
}

#[test]
fn quit_nc_inside_a_message_aborts_it() {
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    let e = cmd(&mut s, b'K', Expect::Nothing);
    assert!(e.reset && e.aborted);
}

#[test]
fn second_connect_without_quit_nc_is_out_of_order() {
    let mut s = connected(Actions::empty(), P::empty());
    assert_eq!(
        s.on_command_code(b'C'),
        Err(ProtocolError::OutOfOrder {
            command: 'C',
            state: "after CONNECT",
        })
    );
}

#[test]
fn second_optneg_is_out_of_order() {
    let mut s = connected(Actions::empty(), P::empty());
    assert_eq!(
        s.on_command_code(b'O'),
        Err(ProtocolError::OutOfOrder {
            command: 'O',
            state: "after option negotiation",
        })
    );
}

#[test]
fn mail_inside_a_message_aborts_it() {
    // Sendmail after an early reject: a new MAIL without ABORT.
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'R', Expect::Reply);
    reply(&mut s, &Response::Continue);
    let e = cmd(&mut s, b'M', Expect::Reply);
    assert!(e.aborted && e.message_started);
    assert_eq!(s.message_stage(), Some(MessageStage::Mail));
}

#[test]
fn helo_inside_a_message_aborts_it() {
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    let e = cmd(&mut s, b'H', Expect::Reply);
    assert!(e.aborted && !e.message_started);
    assert!(!s.in_message());
}

#[test]
fn quit_inside_a_message_aborts_it() {
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    let e = cmd(&mut s, b'Q', Expect::Nothing);
    assert!(e.quit && e.aborted);
    assert_eq!(s.on_command_code(b'C'), Err(ProtocolError::Closed));
}

#[test]
fn unknown_is_allowed_before_connect_and_inside_a_message() {
    let mut s = negotiated(Actions::empty(), P::empty());
    cmd(&mut s, b'U', Expect::Reply);
    reply(&mut s, &Response::Reject);
    cmd(&mut s, b'C', Expect::Reply);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'U', Expect::Reply);
    let r = reply(&mut s, &Response::Reject);
    assert!(
        !r.message_ended,
        "rejecting UNKNOWN does not end the message"
    );
    assert_eq!(s.message_stage(), Some(MessageStage::Mail));
}

#[test]
fn commands_before_negotiation_are_refused() {
    for code in *b"DCHMRTLNBEAQKU" {
        let mut s = Session::new();
        assert_eq!(
            s.on_command_code(code),
            Err(ProtocolError::OutOfOrder {
                command: char::from(code),
                state: "before option negotiation",
            })
        );
    }
}

#[test]
fn unknown_command_bytes_are_refused() {
    let mut s = connected(Actions::empty(), P::empty());
    for code in [b'Z', b'c', 0, 0xff] {
        assert!(matches!(
            s.on_command_code(code),
            Err(ProtocolError::OutOfOrder { .. })
        ));
    }
}

#[test]
fn a_command_while_a_reply_is_owed() {
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'M', Expect::Reply);
    for code in *b"RDAQ" {
        assert_eq!(
            s.on_command_code(code),
            Err(ProtocolError::ReplyPending {
                command: char::from(code),
                pending: 'M',
            })
        );
    }
}

#[test]
fn on_command_matches_on_command_code() {
    let mut s = connected(Actions::empty(), P::empty());
    let e = s.on_command(&Command::Helo(b("mx"))).unwrap();
    assert_eq!(e.expect, Expect::Reply);
    assert_eq!(s.pending_reply(), Some(b'H'));
}

// --------------------------------------------------- end of message

fn at_eom(actions: Actions) -> Session {
    let mut s = connected(actions, P::empty());
    for code in *b"MRTLNB" {
        cmd(&mut s, code, Expect::Reply);
        reply(&mut s, &Response::Continue);
    }
    cmd(&mut s, b'E', Expect::EndOfMessage);
    s
}

fn modifications() -> Vec<(Response, Actions)> {
    vec![
        (
            Response::AddHeader {
                name: b("X-A"),
                value: b("1"),
            },
            Actions::ADD_HEADERS,
        ),
        (
            Response::InsertHeader {
                index: 0,
                name: b("X-A"),
                value: b("1"),
            },
            Actions::ADD_HEADERS,
        ),
        (
            Response::ChangeHeader {
                index: 1,
                name: b("X-A"),
                value: Bytes::new(),
            },
            Actions::CHANGE_HEADERS,
        ),
        (
            Response::ChangeFrom {
                address: b("<a@b>"),
                args: None,
            },
            Actions::CHANGE_FROM,
        ),
        (
            Response::AddRcpt {
                address: b("<a@b>"),
            },
            Actions::ADD_RCPT,
        ),
        (
            Response::AddRcptPar {
                address: b("<a@b>"),
                args: None,
            },
            Actions::ADD_RCPT_PAR,
        ),
        (
            Response::DeleteRcpt {
                address: b("<a@b>"),
            },
            Actions::DELETE_RCPT,
        ),
        (Response::ReplaceBody(b("x")), Actions::CHANGE_BODY),
        (Response::Quarantine { reason: b("q") }, Actions::QUARANTINE),
    ]
}

#[test]
fn modifications_at_eom_when_negotiated() {
    let mut s = at_eom(Actions::all());
    for (m, _) in modifications() {
        let r = reply(&mut s, &m);
        assert!(!r.is_final && !r.message_ended, "{m:?}");
        assert_eq!(s.pending_reply(), Some(b'E'));
    }
    let r = reply(&mut s, &Response::Accept);
    assert!(r.is_final && r.message_ended);
    assert_eq!(s.pending_reply(), None);
}

#[test]
fn modifications_need_their_action() {
    for (m, action) in modifications() {
        let mut s = at_eom(Actions::all() - action);
        assert!(
            matches!(
                s.on_response(&m),
                Err(ProtocolError::ActionNotNegotiated { .. })
            ),
            "{m:?} without {action:?}"
        );
        // The wait for the final reply goes on.
        assert_eq!(s.pending_reply(), Some(b'E'));
    }
}

#[test]
fn modifications_only_at_eom() {
    for code in *b"CHMRTLNBU" {
        for (m, _) in modifications() {
            let mut s = connected(Actions::all(), P::empty());
            let path: &[u8] = match code {
                b'C' => b"",
                b'H' | b'M' | b'U' => b"",
                b'R' => b"M",
                b'T' => b"MR",
                b'L' | b'N' => b"MRT",
                _ => b"MRTN",
            };
            if code == b'C' {
                s = negotiated(Actions::all(), P::empty());
            }
            for &c in path {
                cmd(&mut s, c, Expect::Reply);
                reply(&mut s, &Response::Continue);
            }
            cmd(&mut s, code, Expect::Reply);
            assert_eq!(
                s.on_response(&m),
                Err(ProtocolError::WrongStage {
                    response: char::from(m.code()),
                    command: char::from(code),
                }),
                "{m:?} at {}",
                char::from(code)
            );
        }
    }
}

#[test]
fn progress_at_eom_keeps_waiting() {
    let mut s = at_eom(Actions::empty());
    for _ in 0..3 {
        let r = reply(&mut s, &Response::Progress);
        assert!(!r.is_final && !r.message_ended);
        assert_eq!(s.pending_reply(), Some(b'E'));
    }
    let r = reply(&mut s, &Response::Continue);
    assert!(r.is_final && r.message_ended);
}

#[test]
fn skip_at_eom_is_wrong_stage_but_fine_at_body() {
    let mut s = at_eom(Actions::empty());
    assert_eq!(
        s.on_response(&Response::Skip),
        Err(ProtocolError::WrongStage {
            response: 's',
            command: 'E',
        })
    );
    let mut s = connected(Actions::empty(), P::SKIP);
    for code in *b"MRTLN" {
        cmd(&mut s, code, Expect::Reply);
        reply(&mut s, &Response::Continue);
    }
    cmd(&mut s, b'B', Expect::Reply);
    let r = reply(&mut s, &Response::Skip);
    assert!(r.is_final && !r.message_ended);
    assert!(s.in_message());
    cmd(&mut s, b'E', Expect::EndOfMessage);
}

#[test]
fn eom_decisions_all_end_the_message() {
    for r in [
        Response::Continue,
        Response::Accept,
        Response::Reject,
        Response::Tempfail,
        Response::Discard,
        Response::ReplyCode(b("550 5.7.1 no")),
        Response::Shutdown,
    ] {
        let mut s = at_eom(Actions::empty());
        let e = reply(&mut s, &r);
        assert!(e.is_final && e.message_ended, "{r:?}");
        assert!(!s.in_message());
    }
}

#[test]
fn responses_never_valid_after_negotiation() {
    for r in [
        Response::ConnectionFail,
        Response::SetSymList(Bytes::new()),
        optneg_reply(Actions::empty(), P::empty()),
    ] {
        let mut s = connected(Actions::empty(), P::empty());
        cmd(&mut s, b'H', Expect::Reply);
        assert!(
            matches!(s.on_response(&r), Err(ProtocolError::WrongStage { .. })),
            "{r:?}"
        );
    }
}

#[test]
fn optneg_needs_an_optneg_reply() {
    let mut s = Session::new();
    cmd(&mut s, b'O', Expect::OptNeg);
    assert_eq!(
        s.on_response(&Response::Continue),
        Err(ProtocolError::WrongStage {
            response: 'c',
            command: 'O',
        })
    );
}

// ------------------------------------------- which decisions end a message

#[test]
fn decisions_by_stage() {
    // (stage, decision, message ended)
    let reject = Response::ReplyCode(b("550 5.7.1 no"));
    let rows: Vec<(u8, Response, bool)> = vec![
        (b'M', Response::Accept, true),
        (b'M', Response::Reject, true),
        (b'M', Response::Tempfail, true),
        (b'M', Response::Discard, true),
        (b'M', reject.clone(), true),
        (b'M', Response::Continue, false),
        (b'R', Response::Reject, false),
        (b'R', Response::Tempfail, false),
        (b'R', reject.clone(), false),
        (b'R', Response::Accept, true),
        (b'R', Response::Discard, true),
        (b'R', Response::Continue, false),
        (b'R', Response::Skip, false),
        (b'T', Response::Reject, true),
        (b'L', Response::Tempfail, true),
        (b'N', Response::Discard, true),
        (b'B', Response::Accept, true),
        (b'B', reject.clone(), true),
        (b'B', Response::Shutdown, true),
        (b'M', Response::Shutdown, true),
    ];
    for (stage, decision, ended) in rows {
        let mut s = connected(Actions::empty(), P::empty());
        let path: &[u8] = match stage {
            b'M' => b"",
            b'R' => b"M",
            b'T' => b"MR",
            b'L' | b'N' => b"MRT",
            _ => b"MRTN",
        };
        for &c in path {
            cmd(&mut s, c, Expect::Reply);
            reply(&mut s, &Response::Continue);
        }
        cmd(&mut s, stage, Expect::Reply);
        let e = reply(&mut s, &decision);
        assert!(e.is_final);
        assert_eq!(
            e.message_ended,
            ended,
            "{decision:?} at {}",
            char::from(stage)
        );
        assert_eq!(
            s.in_message(),
            !ended,
            "{decision:?} at {}",
            char::from(stage)
        );
        if ended {
            // The next transaction starts cleanly, ABORT first as Postfix does.
            let e = cmd(&mut s, b'A', Expect::Nothing);
            assert!(!e.aborted);
            let e = cmd(&mut s, b'M', Expect::Reply);
            assert!(!e.aborted && e.message_started);
        }
    }
}

#[test]
fn connection_level_decisions_do_not_touch_messages() {
    for r in [
        Response::Accept,
        Response::Reject,
        Response::Tempfail,
        Response::Discard,
        Response::Shutdown,
    ] {
        let mut s = negotiated(Actions::empty(), P::empty());
        cmd(&mut s, b'C', Expect::Reply);
        let e = reply(&mut s, &r);
        assert!(e.is_final && !e.message_ended, "{r:?}");
    }
}

#[test]
fn shutdown_ends_the_message() {
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'M', Expect::Reply);
    reply(&mut s, &Response::Continue);
    cmd(&mut s, b'R', Expect::Reply);
    let e = reply(&mut s, &Response::Shutdown);
    assert!(e.message_ended);
    assert!(!s.in_message());
}

#[test]
fn progress_outside_eom_is_tolerated() {
    // Postfix accepts progress at any stage and keeps waiting.
    let mut s = connected(Actions::empty(), P::empty());
    cmd(&mut s, b'H', Expect::Reply);
    let r = reply(&mut s, &Response::Progress);
    assert!(!r.is_final);
    assert_eq!(s.pending_reply(), Some(b'H'));
    reply(&mut s, &Response::Continue);
}

#[test]
fn set_protocol_overrides_the_flags() {
    let mut s = connected(Actions::empty(), P::empty());
    s.set_protocol(P::NR_HELO);
    assert_eq!(s.protocol(), P::NR_HELO);
    cmd(&mut s, b'H', Expect::Nothing);
}

#[test]
fn refused_command_leaves_state_unchanged() {
    let mut s = negotiated(Actions::empty(), P::NO_CONNECT);
    assert!(s.on_command_code(b'R').is_err());
    // The MTA may still send CONNECT (NO_CONNECT only says it need not).
    cmd(&mut s, b'C', Expect::Reply);
}
