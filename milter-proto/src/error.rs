//! Error types, one per layer (see the crate guide).
//!
//! | error | meaning |
//! |---|---|
//! | [`FrameError`] | the byte stream cannot be cut into frames (length 0 or over the limit) |
//! | [`DecodeError`] | a frame's payload is malformed for its command or response |
//! | [`ProtocolError`] | a well-formed packet arrived at the wrong time |
//! | [`NegotiationError`] | the peer's options are incompatible with ours |
//! | [`EncodeError`] | caller input that cannot be put on the wire |
//! | [`ReplyError`] | an SMTP reply that MTAs would refuse |

/// The stream cannot be split into frames. Fatal for the connection: after
/// this the framing is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame header announced length 0 (there must be at least the command byte).
    #[error("frame length is 0")]
    ZeroLength,
    /// A frame header announced a payload larger than the configured maximum.
    /// Found before any payload byte is buffered.
    #[error("frame payload of {len} bytes exceeds the maximum of {max}{}", hint_for(*.raw))]
    TooLarge {
        /// Payload bytes announced (length field minus the command byte).
        len: usize,
        /// The configured maximum payload.
        max: usize,
        /// The raw 4 length bytes, kept to recognise non-milter traffic.
        raw: [u8; 4],
    },
}

/// Recognises text where a length was expected ("GET ", "post", ...): that is
/// a client that does not speak the milter protocol, or a filter that wrote
/// log output to its socket.
fn hint_for(raw: [u8; 4]) -> String {
    if raw.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!(
            " (the length bytes read {:?}: this peer is not speaking the milter protocol)",
            String::from_utf8_lossy(&raw)
        )
    } else {
        String::new()
    }
}

/// A frame's payload does not have the layout its command or response needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The command byte is not one of the `SMFIC_*` codes.
    #[error("unknown command byte 0x{0:02x}")]
    UnknownCommand(u8),
    /// The response byte is not one of the `SMFIR_*` codes.
    #[error("unknown response byte 0x{0:02x}")]
    UnknownResponse(u8),
    /// A field ends before its declared size.
    #[error("{code} packet: {field} is truncated")]
    Truncated {
        /// The packet's command or response byte, as a character.
        code: char,
        /// Which field was cut.
        field: &'static str,
    },
    /// A string field has no terminating NUL.
    #[error("{code} packet: {field} has no terminating NUL")]
    MissingNul {
        /// The packet's command or response byte, as a character.
        code: char,
        /// Which field lacks its NUL.
        field: &'static str,
    },
    /// A field that must not be empty is.
    #[error("{code} packet: {field} is empty")]
    Empty {
        /// The packet's command or response byte, as a character.
        code: char,
        /// Which field is empty.
        field: &'static str,
    },
    /// Bytes remain after the last field of a packet with a fixed layout.
    #[error("{code} packet: {len} unexpected bytes after the last field")]
    TrailingData {
        /// The packet's command or response byte, as a character.
        code: char,
        /// How many bytes were left over.
        len: usize,
    },
    /// The connect family byte is not `U`, `L`, `4` or `6`.
    #[error("connect packet: unknown address family byte 0x{0:02x}")]
    UnknownFamily(u8),
    /// The connect address is not a valid address of its family.
    #[error("connect packet: {0:?} is not a valid address for its family")]
    InvalidAddress(String),
}

/// A well-formed packet that is not allowed at this point of the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A command arrived in a state where it is not allowed.
    #[error("command {command} is not allowed {state}")]
    OutOfOrder {
        /// The command byte, as a character.
        command: char,
        /// A description of the state, e.g. "before option negotiation".
        state: &'static str,
    },
    /// A command was sent while the reply to an earlier one is still owed.
    #[error("command {command} sent while the reply to {pending} is still outstanding")]
    ReplyPending {
        /// The new command.
        command: char,
        /// The command whose reply is owed.
        pending: char,
    },
    /// A response arrived although no reply was expected.
    #[error("response {response} arrived but no reply was expected")]
    UnexpectedResponse {
        /// The response byte, as a character.
        response: char,
    },
    /// A response that is only legal at end of message arrived at another stage,
    /// or one that is illegal at end of message arrived there.
    #[error("response {response} is not allowed in reply to command {command}")]
    WrongStage {
        /// The response byte, as a character.
        response: char,
        /// The command being answered.
        command: char,
    },
    /// A modification needs an action flag that was not negotiated.
    #[error("response {response} needs action {action} which was not negotiated")]
    ActionNotNegotiated {
        /// The response byte, as a character.
        response: char,
        /// The `SMFIF_*` name of the missing flag.
        action: &'static str,
    },
    /// The session is closed (after QUIT).
    #[error("the session is closed")]
    Closed,
}

/// The peer's offer and the filter's requirements cannot be reconciled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// The MTA speaks a protocol version below 2.
    #[error("MTA protocol version {0} is not supported (need at least 2)")]
    UnsupportedVersion(u32),
    /// The filter needs actions the MTA does not offer.
    #[error(
        "the filter needs actions 0x{missing:x} that the MTA does not offer (offered 0x{offered:x})"
    )]
    ActionsNotOffered {
        /// Bits wanted but not offered.
        missing: u32,
        /// Bits the MTA offered.
        offered: u32,
    },
    /// The filter answered with a higher version than offered.
    #[error("the filter replied version {replied}, above the offered {offered}")]
    VersionAboveOffer {
        /// Version in the filter's reply.
        replied: u32,
        /// Version the MTA offered.
        offered: u32,
    },
    /// The filter's reply sets protocol bits that were not offered.
    #[error("the filter replied protocol bits 0x{missing:x} that were not offered")]
    ProtocolNotOffered {
        /// Bits replied but not offered.
        missing: u32,
    },
    /// The filter's reply was not an option negotiation packet.
    #[error("expected an option negotiation reply, got response {0}")]
    NotOptNeg(char),
    /// A macro list the filter wants cannot be sent (it contains a NUL byte).
    #[error("the macro lists cannot be sent: {0}")]
    MacroList(EncodeError),
}

/// Caller input that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload would exceed the agreed maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload bytes that would be written.
        len: usize,
        /// The agreed maximum.
        max: usize,
    },
    /// A NUL-terminated string field contains a NUL byte.
    #[error("{field} contains a NUL byte")]
    InteriorNul {
        /// The field.
        field: &'static str,
    },
    /// A field that must not be empty is.
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
}

/// An SMTP reply that MTAs would refuse or mangle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The code is not three digits starting with 4 or 5.
    #[error("reply code {0:?} is not 4xx or 5xx")]
    InvalidCode(String),
    /// The enhanced status code is not `C.S.D` with C in {4,5} and S, D of 1-3 digits.
    #[error("enhanced status code {0:?} is not of the form C.S.D")]
    InvalidEnhancedCode(String),
    /// The enhanced status code's class differs from the reply code's (Postfix refuses this).
    #[error("enhanced status code {enhanced} does not match the class of reply code {code}")]
    ClassMismatch {
        /// The reply code.
        code: String,
        /// The enhanced status code.
        enhanced: String,
    },
    /// A text line contains CR, LF or NUL.
    #[error(
        "line {line} of the reply text contains byte 0x{byte:02x} (CR, LF and NUL are not allowed)"
    )]
    ForbiddenByte {
        /// 1-based line number.
        line: usize,
        /// The offending byte.
        byte: u8,
    },
    /// A text line is longer than libmilter's 980-byte limit.
    #[error("line {line} of the reply text is {len} bytes long (at most 980)")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// Its length.
        len: usize,
    },
    /// More than 32 lines.
    #[error("a reply has at most 32 lines, got {0}")]
    TooManyLines(usize),
    /// No lines at all in a multi-line reply.
    #[error("a multi-line reply needs at least one line")]
    NoLines,
    /// A received reply string does not follow the SMTP reply syntax.
    #[error("malformed reply text: {0}")]
    Malformed(&'static str),
}
