//! What the filter answered: [`Reply`], [`Modification`], [`EomOutcome`],
//! and the [`Stage`] names used in errors and transcripts.

use std::fmt;

use bytes::Bytes;
use milter_proto::command::code;
use milter_proto::{Response, SmtpReply};

/// A stage of the conversation, as named in errors, logs and transcripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// Opening the socket.
    SocketConnect,
    /// Option negotiation (`SMFIC_OPTNEG`).
    Negotiate,
    /// `SMFIC_CONNECT`.
    Connect,
    /// `SMFIC_HELO`.
    Helo,
    /// `SMFIC_MAIL`.
    Mail,
    /// `SMFIC_RCPT`.
    Rcpt,
    /// `SMFIC_DATA`.
    Data,
    /// `SMFIC_HEADER`.
    Header,
    /// `SMFIC_EOH`.
    EndOfHeaders,
    /// `SMFIC_BODY`.
    Body,
    /// `SMFIC_BODYEOB`.
    EndOfMessage,
    /// `SMFIC_UNKNOWN`.
    Unknown,
    /// `SMFIC_ABORT`.
    Abort,
    /// `SMFIC_QUIT`.
    Quit,
    /// `SMFIC_QUIT_NC`.
    QuitNc,
    /// `SMFIC_MACRO`.
    Macro,
    /// Raw traffic through [`crate::Connection::send_raw`] and friends.
    Raw,
}

impl Stage {
    /// The stage of a command byte (`Raw` for bytes that are no command).
    pub fn from_code(c: u8) -> Stage {
        match c {
            code::OPTNEG => Stage::Negotiate,
            code::CONNECT => Stage::Connect,
            code::HELO => Stage::Helo,
            code::MAIL => Stage::Mail,
            code::RCPT => Stage::Rcpt,
            code::DATA => Stage::Data,
            code::HEADER => Stage::Header,
            code::EOH => Stage::EndOfHeaders,
            code::BODY => Stage::Body,
            code::BODYEOB => Stage::EndOfMessage,
            code::UNKNOWN => Stage::Unknown,
            code::ABORT => Stage::Abort,
            code::QUIT => Stage::Quit,
            code::QUIT_NC => Stage::QuitNc,
            code::MACRO => Stage::Macro,
            _ => Stage::Raw,
        }
    }

    /// The command byte of a protocol stage.
    pub fn code(self) -> Option<u8> {
        Some(match self {
            Stage::Negotiate => code::OPTNEG,
            Stage::Connect => code::CONNECT,
            Stage::Helo => code::HELO,
            Stage::Mail => code::MAIL,
            Stage::Rcpt => code::RCPT,
            Stage::Data => code::DATA,
            Stage::Header => code::HEADER,
            Stage::EndOfHeaders => code::EOH,
            Stage::Body => code::BODY,
            Stage::EndOfMessage => code::BODYEOB,
            Stage::Unknown => code::UNKNOWN,
            Stage::Abort => code::ABORT,
            Stage::Quit => code::QUIT,
            Stage::QuitNc => code::QUIT_NC,
            Stage::Macro => code::MACRO,
            Stage::SocketConnect | Stage::Raw => return None,
        })
    }

    /// A short upper-case name (`"RCPT"`, `"EOM"`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::SocketConnect => "SOCKET",
            Stage::Negotiate => "OPTNEG",
            Stage::Connect => "CONNECT",
            Stage::Helo => "HELO",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::Header => "HEADER",
            Stage::EndOfHeaders => "EOH",
            Stage::Body => "BODY",
            Stage::EndOfMessage => "EOM",
            Stage::Unknown => "UNKNOWN",
            Stage::Abort => "ABORT",
            Stage::Quit => "QUIT",
            Stage::QuitNc => "QUIT_NC",
            Stage::Macro => "MACRO",
            Stage::Raw => "RAW",
        }
    }

    /// Parses a stage name as the `milter-run --macro` option writes it
    /// (`connect`, `helo`, `mail`, `rcpt`, `data`, `header`, `eoh`, `body`,
    /// `eom`, `unknown`; case-insensitive).
    pub fn parse_macro_stage(s: &str) -> Option<Stage> {
        Some(match s.to_ascii_lowercase().as_str() {
            "connect" | "conn" | "c" => Stage::Connect,
            "helo" | "ehlo" | "h" => Stage::Helo,
            "mail" | "envfrom" | "from" | "m" => Stage::Mail,
            "rcpt" | "envrcpt" | "r" => Stage::Rcpt,
            "data" | "t" => Stage::Data,
            "header" | "l" => Stage::Header,
            "eoh" | "n" => Stage::EndOfHeaders,
            "body" | "b" => Stage::Body,
            "eom" | "eob" | "e" => Stage::EndOfMessage,
            "unknown" | "u" => Stage::Unknown,
            _ => return None,
        })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The filter's answer to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `SMFIR_CONTINUE`: go on (at end of message: accept).
    #[doc(alias = "SMFIR_CONTINUE")]
    Continue,
    /// `SMFIR_ACCEPT`: accept; no more events for this message (or, at
    /// CONNECT/HELO, for this connection).
    #[doc(alias = "SMFIR_ACCEPT")]
    Accept,
    /// `SMFIR_REJECT`: reject with the MTA's default 5xx reply.
    #[doc(alias = "SMFIR_REJECT")]
    Reject,
    /// `SMFIR_TEMPFAIL`: fail temporarily with the MTA's default 4xx reply.
    #[doc(alias = "SMFIR_TEMPFAIL")]
    Tempfail,
    /// `SMFIR_DISCARD`: accept and silently drop the message.
    #[doc(alias = "SMFIR_DISCARD")]
    Discard,
    /// `SMFIR_SKIP`: do not send more events of this type in this message.
    #[doc(alias = "SMFIR_SKIP")]
    Skip,
    /// `SMFIR_REPLYCODE`: reject or tempfail with this SMTP reply (validated
    /// like Postfix does; a malformed one is [`crate::ClientError::InvalidReply`]).
    #[doc(alias = "SMFIR_REPLYCODE")]
    Code(SmtpReply),
    /// `SMFIR_SHUTDOWN`: reply 421 and close the SMTP session.
    #[doc(alias = "SMFIR_SHUTDOWN")]
    Shutdown,
    /// The command was not sent: the stage was negotiated away (`SMFIP_NO*`;
    /// its macros were still sent, as Postfix and Sendmail do), an earlier
    /// SKIP covers it, or the message was already decided.
    NotSent,
    /// The command was sent but the stage was negotiated no-reply
    /// (`SMFIP_NR_*`): nothing to wait for. The packet is buffered and goes
    /// out with the next command that expects a reply.
    NoReply,
}

impl Reply {
    /// Maps a final response. `None` for packets that are not final decisions.
    pub(crate) fn from_response(r: &Response) -> Option<Result<Reply, milter_proto::ReplyError>> {
        Some(Ok(match r {
            Response::Continue => Reply::Continue,
            Response::Accept => Reply::Accept,
            Response::Reject => Reply::Reject,
            Response::Tempfail => Reply::Tempfail,
            Response::Discard => Reply::Discard,
            Response::Skip => Reply::Skip,
            Response::Shutdown => Reply::Shutdown,
            Response::ReplyCode(text) => return Some(SmtpReply::parse(text).map(Reply::Code)),
            _ => return None,
        }))
    }

    /// Whether the MTA goes on as before: continue, skip, or nothing to wait for.
    pub fn is_continue(&self) -> bool {
        matches!(
            self,
            Reply::Continue | Reply::Skip | Reply::NotSent | Reply::NoReply
        )
    }

    /// Whether this is a permanent rejection (`r` or a 5xx `y`).
    pub fn is_reject(&self) -> bool {
        match self {
            Reply::Reject => true,
            Reply::Code(r) => !r.is_temporary(),
            _ => false,
        }
    }

    /// Whether this is a temporary failure (`t` or a 4xx `y`).
    pub fn is_tempfail(&self) -> bool {
        match self {
            Reply::Tempfail => true,
            Reply::Code(r) => r.is_temporary(),
            _ => false,
        }
    }

    /// The custom SMTP reply, if the filter sent one.
    pub fn smtp_reply(&self) -> Option<&SmtpReply> {
        match self {
            Reply::Code(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Continue => f.write_str("continue"),
            Reply::Accept => f.write_str("accept"),
            Reply::Reject => f.write_str("reject"),
            Reply::Tempfail => f.write_str("tempfail"),
            Reply::Discard => f.write_str("discard"),
            Reply::Skip => f.write_str("skip"),
            Reply::Code(r) => write!(f, "reply {}", quoted(r.as_bytes())),
            Reply::Shutdown => f.write_str("shutdown (421)"),
            Reply::NotSent => f.write_str("not sent"),
            Reply::NoReply => f.write_str("sent, no reply expected"),
        }
    }
}

/// A change the filter asked for at end of message. Mirrors the
/// modification responses; consecutive `SMFIR_REPLBODY` chunks are
/// concatenated into one [`Modification::ReplaceBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Modification {
    /// `SMFIR_ADDHEADER`: append a header.
    #[doc(alias = "SMFIR_ADDHEADER")]
    AddHeader {
        /// Name.
        name: Bytes,
        /// Value (with `SMFIP_HDR_LEADSPC`, verbatim; else MTAs add a space).
        value: Bytes,
    },
    /// `SMFIR_INSHEADER`: insert a header at a 0-based position.
    #[doc(alias = "SMFIR_INSHEADER")]
    InsertHeader {
        /// Position (0 = top).
        index: u32,
        /// Name.
        name: Bytes,
        /// Value.
        value: Bytes,
    },
    /// `SMFIR_CHGHEADER`: change the `index`-th (1-based) header of this
    /// name; an empty value deletes it.
    #[doc(alias = "SMFIR_CHGHEADER")]
    ChangeHeader {
        /// 1-based occurrence.
        index: u32,
        /// Name.
        name: Bytes,
        /// New value; empty = delete.
        value: Bytes,
    },
    /// `SMFIR_CHGFROM`: replace the envelope sender.
    #[doc(alias = "SMFIR_CHGFROM")]
    ChangeFrom {
        /// New sender.
        address: Bytes,
        /// ESMTP arguments, space separated.
        args: Option<Bytes>,
    },
    /// `SMFIR_ADDRCPT`: add a recipient.
    #[doc(alias = "SMFIR_ADDRCPT")]
    AddRcpt {
        /// Recipient.
        address: Bytes,
    },
    /// `SMFIR_ADDRCPT_PAR`: add a recipient with ESMTP arguments.
    #[doc(alias = "SMFIR_ADDRCPT_PAR")]
    AddRcptPar {
        /// Recipient.
        address: Bytes,
        /// ESMTP arguments, space separated.
        args: Option<Bytes>,
    },
    /// `SMFIR_DELRCPT`: remove a recipient.
    #[doc(alias = "SMFIR_DELRCPT")]
    DeleteRcpt {
        /// Recipient, exactly as it was sent.
        address: Bytes,
    },
    /// `SMFIR_REPLBODY`: the new body (consecutive chunks joined).
    #[doc(alias = "SMFIR_REPLBODY")]
    ReplaceBody(Bytes),
    /// `SMFIR_QUARANTINE`: hold the message.
    #[doc(alias = "SMFIR_QUARANTINE")]
    Quarantine {
        /// Reason.
        reason: Bytes,
    },
}

impl Modification {
    /// Maps a modification response; `None` for anything else.
    /// `SMFIR_REPLBODY` is mapped chunk by chunk (the collector joins them).
    pub(crate) fn from_response(r: &Response) -> Option<Modification> {
        Some(match r.clone() {
            Response::AddHeader { name, value } => Modification::AddHeader { name, value },
            Response::InsertHeader { index, name, value } => {
                Modification::InsertHeader { index, name, value }
            }
            Response::ChangeHeader { index, name, value } => {
                Modification::ChangeHeader { index, name, value }
            }
            Response::ChangeFrom { address, args } => Modification::ChangeFrom { address, args },
            Response::AddRcpt { address } => Modification::AddRcpt { address },
            Response::AddRcptPar { address, args } => Modification::AddRcptPar { address, args },
            Response::DeleteRcpt { address } => Modification::DeleteRcpt { address },
            Response::ReplaceBody(data) => Modification::ReplaceBody(data),
            Response::Quarantine { reason } => Modification::Quarantine { reason },
            _ => return None,
        })
    }
}

/// Bytes shown as text: UTF-8 when it is, escaped otherwise; CR and LF escaped.
pub(crate) fn text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.replace('\r', "\\r").replace('\n', "\\n")
}

/// Bytes quoted like a Rust string literal (exact: leading spaces and line
/// breaks visible).
fn quoted(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

impl fmt::Display for Modification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args = |a: &Option<Bytes>| match a {
            Some(a) => format!(" args {}", quoted(a)),
            None => String::new(),
        };
        match self {
            Modification::AddHeader { name, value } => {
                write!(f, "add header {}: {}", text(name), quoted(value))
            }
            Modification::InsertHeader { index, name, value } => {
                write!(
                    f,
                    "insert header at {index} {}: {}",
                    text(name),
                    quoted(value)
                )
            }
            Modification::ChangeHeader { index, name, value } if value.is_empty() => {
                write!(f, "delete header {} #{index}", text(name))
            }
            Modification::ChangeHeader { index, name, value } => {
                write!(
                    f,
                    "change header {} #{index} to {}",
                    text(name),
                    quoted(value)
                )
            }
            Modification::ChangeFrom { address, args: a } => {
                write!(f, "change sender to {}{}", text(address), args(a))
            }
            Modification::AddRcpt { address } => write!(f, "add recipient {}", text(address)),
            Modification::AddRcptPar { address, args: a } => {
                write!(f, "add recipient {}{}", text(address), args(a))
            }
            Modification::DeleteRcpt { address } => {
                write!(f, "delete recipient {}", text(address))
            }
            Modification::ReplaceBody(body) => {
                write!(f, "replace body ({} bytes)", body.len())
            }
            Modification::Quarantine { reason } => write!(f, "quarantine {}", quoted(reason)),
        }
    }
}

/// The answer to end of message: the modifications in the order they came,
/// how many progress packets arrived, and the final decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EomOutcome {
    /// Every modification, in order (body chunks joined).
    pub modifications: Vec<Modification>,
    /// The final decision. [`Reply::Continue`] means accept;
    /// [`Reply::NotSent`] if the message was already decided.
    pub reply: Reply,
    /// Number of `SMFIR_PROGRESS` packets received.
    pub progress_count: usize,
}

impl EomOutcome {
    pub(crate) fn not_sent() -> Self {
        Self {
            modifications: Vec::new(),
            reply: Reply::NotSent,
            progress_count: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_through_their_codes() {
        for c in b"OCHMRTLNBEUAQKD" {
            let stage = Stage::from_code(*c);
            assert_eq!(stage.code(), Some(*c), "{stage}");
        }
        assert_eq!(Stage::from_code(b'X'), Stage::Raw);
        assert_eq!(Stage::parse_macro_stage("EOM"), Some(Stage::EndOfMessage));
        assert_eq!(Stage::parse_macro_stage("nowhere"), None);
    }

    #[test]
    fn replies_map_and_classify() {
        let r = Reply::from_response(&Response::ReplyCode(Bytes::from_static(b"421 4.7.0 bye")))
            .unwrap()
            .unwrap();
        assert!(r.is_tempfail() && !r.is_reject() && !r.is_continue());
        assert!(
            Reply::from_response(&Response::ReplyCode(Bytes::from_static(b"250 ok")))
                .unwrap()
                .is_err()
        );
        assert!(Reply::from_response(&Response::Progress).is_none());
        assert!(Reply::Reject.is_reject());
        assert!(Reply::NoReply.is_continue());
        assert_eq!(r.to_string(), "reply \"421 4.7.0 bye\"");
    }

    #[test]
    fn modifications_display_exactly() {
        let m = Modification::AddHeader {
            name: Bytes::from_static(b"X-A"),
            value: Bytes::from_static(b" two\n\tlines"),
        };
        assert_eq!(m.to_string(), "add header X-A: \" two\\n\\tlines\"");
        let m = Modification::ChangeFrom {
            address: Bytes::from_static(b"<a@x>"),
            args: Some(Bytes::from_static(b"RET=FULL")),
        };
        assert_eq!(m.to_string(), "change sender to <a@x> args \"RET=FULL\"");
    }
}
