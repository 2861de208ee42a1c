//! The protocol state machine, used by both ends.
//!
//! A [`Session`] is fed every command ([`Session::on_command`]) and every
//! response ([`Session::on_response`]) of one milter connection, in wire
//! order. It answers what each command means (does it expect a reply, did it
//! start or end a message, must the filter's abort callback run) and refuses
//! packets that are not allowed at that point with a [`ProtocolError`].
//!
//! The rules are libmilter's, made explicit and lenient where real MTAs
//! depend on leniency:
//!
//! * ABORT outside a message (Postfix sends one after every transaction,
//!   sometimes two) is accepted and means nothing.
//! * MAIL or HELO inside a message (Sendmail after an early reject) ends the
//!   open message as if ABORT had come first.
//! * Stages may be skipped going forward (no DATA before version 4, no
//!   headers, no body); going backwards (a header after the body) is an error.
//! * A message may start without MAIL only if MAIL was negotiated away.
//! * QUIT_NC is accepted anywhere after negotiation and waits for a new CONNECT.
//! * A reply-bearing command while a reply is still owed is an error; so is a
//!   reply nobody asked for (e.g. to ABORT, or to a no-reply stage), and a
//!   modification anywhere but at end of message or without its action flag.

use crate::command::{Command, code as cmd};
use crate::error::ProtocolError;
use crate::negotiate::{Actions, ProtocolFlags};
use crate::response::Response;

/// Where a message is, by the last command seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MessageStage {
    /// After MAIL.
    Mail,
    /// After RCPT.
    Rcpt,
    /// After DATA.
    Data,
    /// After a HEADER.
    Header,
    /// After EOH.
    EndOfHeaders,
    /// After a BODY chunk.
    Body,
}

/// What the sender of a command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No reply (MACRO, ABORT, QUIT, QUIT_NC, and no-reply stages).
    Nothing,
    /// The negotiation reply.
    OptNeg,
    /// Exactly one reply.
    Reply,
    /// Modifications and progress packets, then one final reply.
    EndOfMessage,
}

/// What a command meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandEffect {
    /// What the MTA now waits for.
    pub expect: Expect,
    /// A message was open and has ended without end of message: the
    /// filter's abort callback runs and per-message state is dropped.
    pub aborted: bool,
    /// A new message started with this command.
    pub message_started: bool,
    /// This command was end of message.
    pub end_of_message: bool,
    /// QUIT: the connection ends.
    pub quit: bool,
    /// QUIT_NC: the SMTP session ended; a new CONNECT follows on this connection.
    pub reset: bool,
}

impl CommandEffect {
    fn expect(expect: Expect) -> Self {
        Self {
            expect,
            aborted: false,
            message_started: false,
            end_of_message: false,
            quit: false,
            reset: false,
        }
    }
}

/// What a response meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseEffect {
    /// The response ended the wait for a reply.
    pub is_final: bool,
    /// The response ended the current message (accept, reject, discard, ...).
    pub message_ended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Negotiate,
    AwaitConnect,
    Connected { message: Option<MessageStage> },
    Closed,
}

/// The state of one milter connection.
#[derive(Debug, Clone)]
pub struct Session {
    phase: Phase,
    pending: Option<u8>,
    version: u32,
    actions: Actions,
    protocol: ProtocolFlags,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A new connection, waiting for option negotiation.
    pub fn new() -> Self {
        Self {
            phase: Phase::Negotiate,
            pending: None,
            version: 0,
            actions: Actions::empty(),
            protocol: ProtocolFlags::empty(),
        }
    }

    /// The negotiated version (0 before negotiation).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The negotiated actions.
    pub fn actions(&self) -> Actions {
        self.actions
    }

    /// The protocol flags in force on the wire.
    pub fn protocol(&self) -> ProtocolFlags {
        self.protocol
    }

    /// Overrides the protocol flags in force, e.g. with those the MTA side
    /// computed (`check_reply` forces `NO_DATA` for old filters).
    pub fn set_protocol(&mut self, protocol: ProtocolFlags) {
        self.protocol = protocol;
    }

    /// Whether option negotiation has completed.
    pub fn is_negotiated(&self) -> bool {
        !matches!(self.phase, Phase::Negotiate)
    }

    /// Whether a message is open (between MAIL and its end).
    pub fn in_message(&self) -> bool {
        matches!(self.phase, Phase::Connected { message: Some(_) })
    }

    /// The stage of the open message.
    pub fn message_stage(&self) -> Option<MessageStage> {
        match self.phase {
            Phase::Connected { message } => message,
            _ => None,
        }
    }

    /// Whether QUIT was seen.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The command whose reply is owed, if any.
    pub fn pending_reply(&self) -> Option<u8> {
        self.pending
    }

    /// Whether a reply-bearing command expects a reply under the negotiated
    /// no-reply bits.
    pub fn expects_reply(&self, code: u8) -> bool {
        match code {
            cmd::BODYEOB | cmd::OPTNEG => true,
            other => {
                ProtocolFlags::no_reply_bit(other).is_some_and(|nr| !self.protocol.contains(nr))
            }
        }
    }

    fn out_of_order(code: u8, state: &'static str) -> ProtocolError {
        ProtocolError::OutOfOrder {
            command: char::from(code),
            state,
        }
    }

    /// Checks that a connection is open and returns the open message's
    /// stage; with `NO_CONNECT` negotiated the MTA never sends CONNECT, so
    /// the first stage command opens it. Changes nothing: every caller sets
    /// the new phase once the command is known to be legal.
    fn require_connection(&self, code: u8) -> Result<Option<MessageStage>, ProtocolError> {
        match self.phase {
            Phase::Connected { message } => Ok(message),
            Phase::AwaitConnect if self.protocol.contains(ProtocolFlags::NO_CONNECT) => Ok(None),
            Phase::AwaitConnect => Err(Self::out_of_order(code, "before CONNECT")),
            Phase::Negotiate => Err(Self::out_of_order(code, "before option negotiation")),
            Phase::Closed => Err(ProtocolError::Closed),
        }
    }

    /// Feeds one command (MTA → filter).
    pub fn on_command(&mut self, command: &Command) -> Result<CommandEffect, ProtocolError> {
        self.on_command_code(command.code())
    }

    /// As [`Session::on_command`], by command byte.
    pub fn on_command_code(&mut self, code: u8) -> Result<CommandEffect, ProtocolError> {
        if self.phase == Phase::Closed {
            return Err(ProtocolError::Closed);
        }
        if let Some(pending) = self.pending {
            return Err(ProtocolError::ReplyPending {
                command: char::from(code),
                pending: char::from(pending),
            });
        }
        if self.phase == Phase::Negotiate && code != cmd::OPTNEG {
            return Err(Self::out_of_order(code, "before option negotiation"));
        }
        let reply = if self.expects_reply(code) {
            Expect::Reply
        } else {
            Expect::Nothing
        };
        let in_message = self.in_message();
        let mut effect = CommandEffect::expect(reply);
        match code {
            cmd::OPTNEG => {
                if self.phase != Phase::Negotiate {
                    return Err(Self::out_of_order(code, "after option negotiation"));
                }
                effect.expect = Expect::OptNeg;
            }
            cmd::MACRO => {}
            cmd::QUIT => {
                effect.aborted = in_message;
                effect.quit = true;
                self.phase = Phase::Closed;
            }
            cmd::QUIT_NC => {
                effect.aborted = in_message;
                effect.reset = true;
                self.phase = Phase::AwaitConnect;
            }
            cmd::ABORT => {
                if in_message {
                    effect.aborted = true;
                    self.phase = Phase::Connected { message: None };
                }
            }
            cmd::CONNECT => {
                if self.phase != Phase::AwaitConnect {
                    return Err(Self::out_of_order(code, "after CONNECT"));
                }
                self.phase = Phase::Connected { message: None };
            }
            cmd::UNKNOWN => {}
            cmd::HELO => {
                self.require_connection(code)?;
                effect.aborted = in_message;
                self.phase = Phase::Connected { message: None };
            }
            cmd::MAIL => {
                self.require_connection(code)?;
                effect.aborted = in_message;
                effect.message_started = true;
                self.phase = Phase::Connected {
                    message: Some(MessageStage::Mail),
                };
            }
            cmd::RCPT | cmd::DATA | cmd::HEADER | cmd::EOH | cmd::BODY | cmd::BODYEOB => {
                let current = self.require_connection(code)?;
                let current = match current {
                    Some(stage) => stage,
                    None if self.protocol.contains(ProtocolFlags::NO_MAIL) => {
                        effect.message_started = true;
                        MessageStage::Mail
                    }
                    None => return Err(Self::out_of_order(code, "outside a message")),
                };
                let (next, allowed) = match code {
                    cmd::RCPT => (Some(MessageStage::Rcpt), current <= MessageStage::Rcpt),
                    cmd::DATA => (Some(MessageStage::Data), current < MessageStage::Data),
                    cmd::HEADER => (Some(MessageStage::Header), current <= MessageStage::Header),
                    cmd::EOH => (
                        Some(MessageStage::EndOfHeaders),
                        current < MessageStage::EndOfHeaders,
                    ),
                    cmd::BODY => (Some(MessageStage::Body), true),
                    _ => (None, true),
                };
                if !allowed {
                    return Err(Self::out_of_order(
                        code,
                        "after a later stage of the message",
                    ));
                }
                if code == cmd::BODYEOB {
                    effect.end_of_message = true;
                    effect.expect = Expect::EndOfMessage;
                }
                self.phase = Phase::Connected { message: next };
            }
            _ => return Err(Self::out_of_order(code, "at any time (unknown command)")),
        }
        if effect.expect != Expect::Nothing {
            self.pending = Some(code);
        }
        Ok(effect)
    }

    /// Feeds one response (filter → MTA).
    pub fn on_response(&mut self, response: &Response) -> Result<ResponseEffect, ProtocolError> {
        if self.phase == Phase::Closed {
            return Err(ProtocolError::Closed);
        }
        let code = response.code();
        let Some(pending) = self.pending else {
            return Err(ProtocolError::UnexpectedResponse {
                response: char::from(code),
            });
        };
        let wrong_stage = || ProtocolError::WrongStage {
            response: char::from(code),
            command: char::from(pending),
        };
        let not_final = ResponseEffect {
            is_final: false,
            message_ended: false,
        };
        if pending == cmd::OPTNEG {
            let Response::OptNeg(reply) = response else {
                return Err(wrong_stage());
            };
            self.version = reply.version;
            self.actions = reply.actions;
            self.protocol = reply.protocol;
            self.phase = Phase::AwaitConnect;
            self.pending = None;
            return Ok(ResponseEffect {
                is_final: true,
                message_ended: false,
            });
        }
        match response {
            Response::OptNeg(_) | Response::ConnectionFail | Response::SetSymList(_) => {
                return Err(wrong_stage());
            }
            Response::Progress => return Ok(not_final),
            Response::Skip if pending == cmd::BODYEOB => return Err(wrong_stage()),
            _ => {}
        }
        if let Some(action) = response.required_action() {
            if pending != cmd::BODYEOB {
                return Err(wrong_stage());
            }
            if !self.actions.contains(action) {
                return Err(ProtocolError::ActionNotNegotiated {
                    response: char::from(code),
                    action: action.libmilter_name().unwrap_or("SMFIF_*"),
                });
            }
            return Ok(not_final);
        }
        // A final decision.
        self.pending = None;
        let message_command = matches!(
            pending,
            cmd::MAIL | cmd::RCPT | cmd::DATA | cmd::HEADER | cmd::EOH | cmd::BODY
        );
        let ends = match response {
            Response::Accept | Response::Discard | Response::Shutdown => message_command,
            Response::Reject | Response::Tempfail | Response::ReplyCode(_) => {
                message_command && pending != cmd::RCPT
            }
            _ => false,
        };
        if ends && self.in_message() {
            self.phase = Phase::Connected { message: None };
        }
        Ok(ResponseEffect {
            is_final: true,
            message_ended: ends || pending == cmd::BODYEOB,
        })
    }
}
