//! Filter → MTA responses (`SMFIR_*`), encoded and decoded.
//!
//! Decoding is strict in the way Postfix is: packets that must be empty
//! must be empty, and packets with fields must have exactly those fields.

use bytes::{Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::frame::Frame;
use crate::negotiate::{Actions, MacroLists, OptNegReply, ProtocolFlags};
use crate::wire::{Reader, Writer};

/// Response bytes (`SMFIR_*`).
pub mod code {
    /// Continue.
    #[doc(alias = "SMFIR_CONTINUE")]
    pub const CONTINUE: u8 = b'c';
    /// Accept the message / connection.
    #[doc(alias = "SMFIR_ACCEPT")]
    pub const ACCEPT: u8 = b'a';
    /// Reject (5xx).
    #[doc(alias = "SMFIR_REJECT")]
    pub const REJECT: u8 = b'r';
    /// Temporary failure (4xx).
    #[doc(alias = "SMFIR_TEMPFAIL")]
    pub const TEMPFAIL: u8 = b't';
    /// Discard the message.
    #[doc(alias = "SMFIR_DISCARD")]
    pub const DISCARD: u8 = b'd';
    /// A full SMTP reply.
    #[doc(alias = "SMFIR_REPLYCODE")]
    pub const REPLYCODE: u8 = b'y';
    /// Skip the rest of this kind of event.
    #[doc(alias = "SMFIR_SKIP")]
    pub const SKIP: u8 = b's';
    /// Still working.
    #[doc(alias = "SMFIR_PROGRESS")]
    pub const PROGRESS: u8 = b'p';
    /// Quarantine the message.
    #[doc(alias = "SMFIR_QUARANTINE")]
    pub const QUARANTINE: u8 = b'q';
    /// Add a header.
    #[doc(alias = "SMFIR_ADDHEADER")]
    pub const ADDHEADER: u8 = b'h';
    /// Insert a header.
    #[doc(alias = "SMFIR_INSHEADER")]
    pub const INSHEADER: u8 = b'i';
    /// Change or delete a header.
    #[doc(alias = "SMFIR_CHGHEADER")]
    pub const CHGHEADER: u8 = b'm';
    /// Change the envelope sender.
    #[doc(alias = "SMFIR_CHGFROM")]
    pub const CHGFROM: u8 = b'e';
    /// Add a recipient.
    #[doc(alias = "SMFIR_ADDRCPT")]
    pub const ADDRCPT: u8 = b'+';
    /// Add a recipient with ESMTP arguments.
    #[doc(alias = "SMFIR_ADDRCPT_PAR")]
    pub const ADDRCPT_PAR: u8 = b'2';
    /// Delete a recipient.
    #[doc(alias = "SMFIR_DELRCPT")]
    pub const DELRCPT: u8 = b'-';
    /// A chunk of the replacement body.
    #[doc(alias = "SMFIR_REPLBODY")]
    pub const REPLBODY: u8 = b'b';
    /// Connection failure (defined, unused by MTAs).
    #[doc(alias = "SMFIR_CONN_FAIL")]
    pub const CONN_FAIL: u8 = b'f';
    /// Shut the SMTP session down (421).
    #[doc(alias = "SMFIR_SHUTDOWN")]
    pub const SHUTDOWN: u8 = b'4';
    /// Set a macro list (defined; lists travel in the OPTNEG reply).
    #[doc(alias = "SMFIR_SETSYMLIST")]
    pub const SETSYMLIST: u8 = b'l';
    /// Option negotiation reply.
    #[doc(alias = "SMFIC_OPTNEG")]
    pub const OPTNEG: u8 = b'O';
}

/// A response from the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// The negotiation reply.
    #[doc(alias = "SMFIC_OPTNEG")]
    OptNeg(OptNegReply),
    /// Go on.
    #[doc(alias = "SMFIR_CONTINUE")]
    Continue,
    /// Accept: no more callbacks for this message (or connection).
    #[doc(alias = "SMFIR_ACCEPT")]
    Accept,
    /// Reject with the MTA's default 5xx reply.
    #[doc(alias = "SMFIR_REJECT")]
    Reject,
    /// Temporary failure with the MTA's default 4xx reply.
    #[doc(alias = "SMFIR_TEMPFAIL")]
    Tempfail,
    /// Accept and silently drop the message.
    #[doc(alias = "SMFIR_DISCARD")]
    Discard,
    /// Skip further events of this kind (body chunks).
    #[doc(alias = "SMFIR_SKIP")]
    Skip,
    /// Still working: restarts the MTA's timeout at end of message.
    #[doc(alias = "SMFIR_PROGRESS")]
    Progress,
    /// Reject or tempfail with this SMTP reply text (see [`crate::SmtpReply`]).
    #[doc(alias = "SMFIR_REPLYCODE")]
    ReplyCode(Bytes),
    /// Append a header.
    #[doc(alias = "SMFIR_ADDHEADER")]
    AddHeader {
        /// Header name.
        name: Bytes,
        /// Header value.
        value: Bytes,
    },
    /// Insert a header at a position (0 = top).
    #[doc(alias = "SMFIR_INSHEADER")]
    InsertHeader {
        /// Position.
        index: u32,
        /// Header name.
        name: Bytes,
        /// Header value.
        value: Bytes,
    },
    /// Change the `index`-th (1-based) header of that name; an empty value deletes it.
    #[doc(alias = "SMFIR_CHGHEADER")]
    ChangeHeader {
        /// 1-based occurrence among headers of this name.
        index: u32,
        /// Header name.
        name: Bytes,
        /// New value; empty deletes.
        value: Bytes,
    },
    /// Change the envelope sender.
    #[doc(alias = "SMFIR_CHGFROM")]
    ChangeFrom {
        /// New sender address.
        address: Bytes,
        /// ESMTP arguments, space separated.
        args: Option<Bytes>,
    },
    /// Add a recipient.
    #[doc(alias = "SMFIR_ADDRCPT")]
    AddRcpt {
        /// Recipient address.
        address: Bytes,
    },
    /// Add a recipient with ESMTP arguments.
    #[doc(alias = "SMFIR_ADDRCPT_PAR")]
    AddRcptPar {
        /// Recipient address.
        address: Bytes,
        /// ESMTP arguments, space separated.
        args: Option<Bytes>,
    },
    /// Remove a recipient (the address exactly as received).
    #[doc(alias = "SMFIR_DELRCPT")]
    DeleteRcpt {
        /// Recipient address.
        address: Bytes,
    },
    /// One chunk of the new body; chunks are concatenated.
    #[doc(alias = "SMFIR_REPLBODY")]
    ReplaceBody(Bytes),
    /// Put the message in quarantine (Postfix: hold queue).
    #[doc(alias = "SMFIR_QUARANTINE")]
    Quarantine {
        /// Reason, not empty.
        reason: Bytes,
    },
    /// Connection failure (defined by libmilter; no MTA accepts it).
    #[doc(alias = "SMFIR_CONN_FAIL")]
    ConnectionFail,
    /// Reply 421 and close the SMTP session (Postfix).
    #[doc(alias = "SMFIR_SHUTDOWN")]
    Shutdown,
    /// A macro list packet (defined; no MTA accepts it). Raw payload.
    #[doc(alias = "SMFIR_SETSYMLIST")]
    SetSymList(Bytes),
}

impl Response {
    /// The response byte.
    pub fn code(&self) -> u8 {
        match self {
            Response::OptNeg(_) => code::OPTNEG,
            Response::Continue => code::CONTINUE,
            Response::Accept => code::ACCEPT,
            Response::Reject => code::REJECT,
            Response::Tempfail => code::TEMPFAIL,
            Response::Discard => code::DISCARD,
            Response::Skip => code::SKIP,
            Response::Progress => code::PROGRESS,
            Response::ReplyCode(_) => code::REPLYCODE,
            Response::AddHeader { .. } => code::ADDHEADER,
            Response::InsertHeader { .. } => code::INSHEADER,
            Response::ChangeHeader { .. } => code::CHGHEADER,
            Response::ChangeFrom { .. } => code::CHGFROM,
            Response::AddRcpt { .. } => code::ADDRCPT,
            Response::AddRcptPar { .. } => code::ADDRCPT_PAR,
            Response::DeleteRcpt { .. } => code::DELRCPT,
            Response::ReplaceBody(_) => code::REPLBODY,
            Response::Quarantine { .. } => code::QUARANTINE,
            Response::ConnectionFail => code::CONN_FAIL,
            Response::Shutdown => code::SHUTDOWN,
            Response::SetSymList(_) => code::SETSYMLIST,
        }
    }

    /// Whether this response ends the wait for a reply (a decision), as
    /// opposed to a modification or progress packet at end of message.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Response::OptNeg(_)
                | Response::Continue
                | Response::Accept
                | Response::Reject
                | Response::Tempfail
                | Response::Discard
                | Response::Skip
                | Response::ReplyCode(_)
                | Response::Shutdown
                | Response::ConnectionFail
        )
    }

    /// The action flag a modification needs, if it is one.
    pub fn required_action(&self) -> Option<Actions> {
        Some(match self {
            Response::AddHeader { .. } | Response::InsertHeader { .. } => Actions::ADD_HEADERS,
            Response::ChangeHeader { .. } => Actions::CHANGE_HEADERS,
            Response::ChangeFrom { .. } => Actions::CHANGE_FROM,
            Response::AddRcpt { .. } => Actions::ADD_RCPT,
            Response::AddRcptPar { .. } => Actions::ADD_RCPT_PAR,
            Response::DeleteRcpt { .. } => Actions::DELETE_RCPT,
            Response::ReplaceBody(_) => Actions::CHANGE_BODY,
            Response::Quarantine { .. } => Actions::QUARANTINE,
            _ => return None,
        })
    }

    /// Decodes a frame.
    pub fn decode(frame: &Frame) -> Result<Response, DecodeError> {
        Self::decode_parts(frame.code, &frame.payload)
    }

    /// Decodes a response byte and its payload.
    pub fn decode_parts(code: u8, payload: &Bytes) -> Result<Response, DecodeError> {
        let simple = |resp: Response| Reader::empty(code, payload).map(|()| resp);
        let mut r = Reader::new(code, payload);
        let resp = match code {
            code::CONTINUE => return simple(Response::Continue),
            code::ACCEPT => return simple(Response::Accept),
            code::REJECT => return simple(Response::Reject),
            code::TEMPFAIL => return simple(Response::Tempfail),
            code::DISCARD => return simple(Response::Discard),
            code::SKIP => return simple(Response::Skip),
            code::PROGRESS => return simple(Response::Progress),
            code::CONN_FAIL => return simple(Response::ConnectionFail),
            code::SHUTDOWN => return simple(Response::Shutdown),
            code::SETSYMLIST => return Ok(Response::SetSymList(r.rest())),
            code::REPLBODY => return Ok(Response::ReplaceBody(r.rest())),
            code::OPTNEG => {
                let version = r.u32("version")?;
                let actions = Actions::from_bits_retain(r.u32("actions")?);
                let protocol = ProtocolFlags::from_bits_retain(r.u32("protocol flags")?);
                let macros = MacroLists::decode(&mut r)?;
                Response::OptNeg(OptNegReply {
                    version,
                    actions,
                    protocol,
                    macros,
                })
            }
            code::REPLYCODE => Response::ReplyCode(r.nonempty_cstr("reply text")?),
            code::ADDHEADER => Response::AddHeader {
                name: r.nonempty_cstr("header name")?,
                value: r.cstr("header value")?,
            },
            code::INSHEADER | code::CHGHEADER => {
                let index = r.u32("header index")?;
                let name = r.nonempty_cstr("header name")?;
                let value = r.cstr("header value")?;
                if code == code::INSHEADER {
                    Response::InsertHeader { index, name, value }
                } else {
                    Response::ChangeHeader { index, name, value }
                }
            }
            code::CHGFROM | code::ADDRCPT_PAR => {
                let address = r.nonempty_cstr("address")?;
                let args = if r.is_empty() {
                    None
                } else {
                    Some(r.cstr("ESMTP arguments")?)
                };
                if code == code::CHGFROM {
                    Response::ChangeFrom { address, args }
                } else {
                    Response::AddRcptPar { address, args }
                }
            }
            code::ADDRCPT => Response::AddRcpt {
                address: r.nonempty_cstr("address")?,
            },
            code::DELRCPT => Response::DeleteRcpt {
                address: r.nonempty_cstr("address")?,
            },
            code::QUARANTINE => Response::Quarantine {
                reason: r.nonempty_cstr("reason")?,
            },
            other => return Err(DecodeError::UnknownResponse(other)),
        };
        r.finish().map(|()| resp)
    }

    /// Appends this response as a frame to `dst`; fails, leaving `dst` as it
    /// was, if a field cannot be encoded or the payload exceeds `max_payload`.
    pub fn encode(&self, dst: &mut BytesMut, max_payload: usize) -> Result<(), EncodeError> {
        let mut w = Writer::new(dst, self.code());
        match self {
            Response::OptNeg(o) => {
                w.u32(o.version)
                    .u32(o.actions.bits())
                    .u32(o.protocol.bits())
                    .raw(o.macros.raw());
            }
            Response::Continue
            | Response::Accept
            | Response::Reject
            | Response::Tempfail
            | Response::Discard
            | Response::Skip
            | Response::Progress
            | Response::ConnectionFail
            | Response::Shutdown => {}
            Response::ReplyCode(text) => {
                w.nonempty_cstr("reply text", text);
            }
            Response::AddHeader { name, value } => {
                w.nonempty_cstr("header name", name)
                    .cstr("header value", value);
            }
            Response::InsertHeader { index, name, value }
            | Response::ChangeHeader { index, name, value } => {
                w.u32(*index)
                    .nonempty_cstr("header name", name)
                    .cstr("header value", value);
            }
            Response::ChangeFrom { address, args } | Response::AddRcptPar { address, args } => {
                w.nonempty_cstr("address", address);
                if let Some(args) = args {
                    w.cstr("ESMTP arguments", args);
                }
            }
            Response::AddRcpt { address } | Response::DeleteRcpt { address } => {
                w.nonempty_cstr("address", address);
            }
            Response::Quarantine { reason } => {
                w.nonempty_cstr("reason", reason);
            }
            Response::ReplaceBody(data) | Response::SetSymList(data) => {
                w.raw(data);
            }
        }
        w.finish(max_payload)
    }
}
