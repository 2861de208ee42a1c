//! Option negotiation (`SMFIC_OPTNEG`): versions, action and protocol flags,
//! MDS, macro lists, and libmilter's algorithm as a pure function.

use bitflags::bitflags;
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError, NegotiationError};
use crate::frame::{MAX_DATA_SIZE_1M, MAX_DATA_SIZE_64K, MAX_DATA_SIZE_256K};
use crate::wire::Reader;

/// The newest protocol version (`SMFI_PROT_VERSION`).
#[doc(alias = "SMFI_PROT_VERSION")]
pub const PROTOCOL_VERSION: u32 = 6;
/// The oldest version MTAs and libmilter accept (`SMFI_PROT_VERSION_MIN`).
#[doc(alias = "SMFI_PROT_VERSION_MIN")]
pub const MIN_PROTOCOL_VERSION: u32 = 2;

bitflags! {
    /// Actions a filter may take at end of message (`SMFIF_*`, second word of OPTNEG).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Actions: u32 {
        /// Add and insert headers (`'h'`, `'i'`).
        #[doc(alias = "SMFIF_ADDHDRS")]
        const ADD_HEADERS = 0x001;
        /// Replace the body (`'b'`).
        #[doc(alias = "SMFIF_CHGBODY")]
        #[doc(alias = "SMFIF_MODBODY")]
        const CHANGE_BODY = 0x002;
        /// Add recipients (`'+'`).
        #[doc(alias = "SMFIF_ADDRCPT")]
        const ADD_RCPT = 0x004;
        /// Delete recipients (`'-'`).
        #[doc(alias = "SMFIF_DELRCPT")]
        const DELETE_RCPT = 0x008;
        /// Change or delete headers (`'m'`).
        #[doc(alias = "SMFIF_CHGHDRS")]
        const CHANGE_HEADERS = 0x010;
        /// Quarantine the message (`'q'`).
        #[doc(alias = "SMFIF_QUARANTINE")]
        const QUARANTINE = 0x020;
        /// Change the envelope sender (`'e'`).
        #[doc(alias = "SMFIF_CHGFROM")]
        const CHANGE_FROM = 0x040;
        /// Add recipients with ESMTP arguments (`'2'`).
        #[doc(alias = "SMFIF_ADDRCPT_PAR")]
        const ADD_RCPT_PAR = 0x080;
        /// Send macro lists in the negotiation reply.
        #[doc(alias = "SMFIF_SETSYMLIST")]
        const SET_SYMLIST = 0x100;
    }
}

impl Actions {
    /// The libmilter name of a single action flag (`SMFIF_ADDHDRS`, ...);
    /// `None` for a combination or an unknown bit.
    pub fn libmilter_name(self) -> Option<&'static str> {
        Some(match self {
            Self::ADD_HEADERS => "SMFIF_ADDHDRS",
            Self::CHANGE_BODY => "SMFIF_CHGBODY",
            Self::ADD_RCPT => "SMFIF_ADDRCPT",
            Self::DELETE_RCPT => "SMFIF_DELRCPT",
            Self::CHANGE_HEADERS => "SMFIF_CHGHDRS",
            Self::QUARANTINE => "SMFIF_QUARANTINE",
            Self::CHANGE_FROM => "SMFIF_CHGFROM",
            Self::ADD_RCPT_PAR => "SMFIF_ADDRCPT_PAR",
            Self::SET_SYMLIST => "SMFIF_SETSYMLIST",
            _ => return None,
        })
    }

    /// Version 1 actions (`SMFI_V1_ACTS`); an MTA offering 0 means these.
    #[doc(alias = "SMFI_V1_ACTS")]
    pub const V1: Self = Self::from_bits_retain(0x0F);
    /// Version 2 actions (`SMFI_V2_ACTS`).
    #[doc(alias = "SMFI_V2_ACTS")]
    pub const V2: Self = Self::from_bits_retain(0x3F);
}

bitflags! {
    /// Protocol flags (`SMFIP_*`, third word of OPTNEG): stages not to send
    /// (`NO*`), stages without reply (`NR_*`), capabilities and MDS.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ProtocolFlags: u32 {
        /// Do not send CONNECT.
        #[doc(alias = "SMFIP_NOCONNECT")]
        const NO_CONNECT = 0x0000_0001;
        /// Do not send HELO.
        #[doc(alias = "SMFIP_NOHELO")]
        const NO_HELO = 0x0000_0002;
        /// Do not send MAIL.
        #[doc(alias = "SMFIP_NOMAIL")]
        const NO_MAIL = 0x0000_0004;
        /// Do not send RCPT.
        #[doc(alias = "SMFIP_NORCPT")]
        const NO_RCPT = 0x0000_0008;
        /// Do not send BODY chunks.
        #[doc(alias = "SMFIP_NOBODY")]
        const NO_BODY = 0x0000_0010;
        /// Do not send HEADERs.
        #[doc(alias = "SMFIP_NOHDRS")]
        const NO_HEADERS = 0x0000_0020;
        /// Do not send EOH.
        #[doc(alias = "SMFIP_NOEOH")]
        const NO_EOH = 0x0000_0040;
        /// No reply to HEADER.
        #[doc(alias = "SMFIP_NR_HDR")]
        #[doc(alias = "SMFIP_NOHREPL")]
        const NR_HEADER = 0x0000_0080;
        /// Do not send UNKNOWN.
        #[doc(alias = "SMFIP_NOUNKNOWN")]
        const NO_UNKNOWN = 0x0000_0100;
        /// Do not send DATA.
        #[doc(alias = "SMFIP_NODATA")]
        const NO_DATA = 0x0000_0200;
        /// The MTA understands SKIP.
        #[doc(alias = "SMFIP_SKIP")]
        const SKIP = 0x0000_0400;
        /// Also send recipients the MTA rejected.
        #[doc(alias = "SMFIP_RCPT_REJ")]
        const RCPT_REJ = 0x0000_0800;
        /// No reply to CONNECT.
        #[doc(alias = "SMFIP_NR_CONN")]
        const NR_CONNECT = 0x0000_1000;
        /// No reply to HELO.
        #[doc(alias = "SMFIP_NR_HELO")]
        const NR_HELO = 0x0000_2000;
        /// No reply to MAIL.
        #[doc(alias = "SMFIP_NR_MAIL")]
        const NR_MAIL = 0x0000_4000;
        /// No reply to RCPT.
        #[doc(alias = "SMFIP_NR_RCPT")]
        const NR_RCPT = 0x0000_8000;
        /// No reply to DATA.
        #[doc(alias = "SMFIP_NR_DATA")]
        const NR_DATA = 0x0001_0000;
        /// No reply to UNKNOWN.
        #[doc(alias = "SMFIP_NR_UNKN")]
        const NR_UNKNOWN = 0x0002_0000;
        /// No reply to EOH.
        #[doc(alias = "SMFIP_NR_EOH")]
        const NR_EOH = 0x0004_0000;
        /// No reply to BODY.
        #[doc(alias = "SMFIP_NR_BODY")]
        const NR_BODY = 0x0008_0000;
        /// Header values are passed verbatim, leading space included.
        #[doc(alias = "SMFIP_HDR_LEADSPC")]
        const HEADER_LEADING_SPACE = 0x0010_0000;
        /// Maximum data size 256 KiB.
        #[doc(alias = "SMFIP_MDS_256K")]
        const MDS_256K = 0x1000_0000;
        /// Maximum data size 1 MiB.
        #[doc(alias = "SMFIP_MDS_1M")]
        const MDS_1M = 0x2000_0000;
    }
}

impl ProtocolFlags {
    /// The no-reply bit of a reply-bearing command byte (`SMFIP_NR_*`);
    /// `None` for commands without one (OPTNEG, MACRO, BODYEOB, ABORT, ...).
    pub fn no_reply_bit(command: u8) -> Option<Self> {
        use crate::command::code;
        Some(match command {
            code::CONNECT => Self::NR_CONNECT,
            code::HELO => Self::NR_HELO,
            code::MAIL => Self::NR_MAIL,
            code::RCPT => Self::NR_RCPT,
            code::DATA => Self::NR_DATA,
            code::HEADER => Self::NR_HEADER,
            code::EOH => Self::NR_EOH,
            code::BODY => Self::NR_BODY,
            code::UNKNOWN => Self::NR_UNKNOWN,
            _ => return None,
        })
    }

    /// Version 1 protocol flags (`SMFI_V1_PROT`); an MTA offering 0 means these.
    #[doc(alias = "SMFI_V1_PROT")]
    pub const V1: Self = Self::from_bits_retain(0x3F);
    /// Version 2 protocol flags (`SMFI_V2_PROT`).
    #[doc(alias = "SMFI_V2_PROT")]
    pub const V2: Self = Self::from_bits_retain(0x7F);
    /// Every flag of protocol version 6 (`SMFI_CURR_PROT`), what Sendmail and Postfix offer.
    #[doc(alias = "SMFI_CURR_PROT")]
    pub const V6: Self = Self::from_bits_retain(0x001F_FFFF);
    /// Bits libmilter keeps for itself (`SMFI_INTERNAL`): MDS and a reserved bit.
    #[doc(alias = "SMFI_INTERNAL")]
    pub const INTERNAL: Self = Self::from_bits_retain(0x7000_0000);
    /// All no-reply bits.
    pub const ALL_NR: Self = Self::NR_HEADER
        .union(Self::NR_CONNECT)
        .union(Self::NR_HELO)
        .union(Self::NR_MAIL)
        .union(Self::NR_RCPT)
        .union(Self::NR_DATA)
        .union(Self::NR_UNKNOWN)
        .union(Self::NR_EOH)
        .union(Self::NR_BODY);
    /// All "do not send" bits.
    pub const ALL_NO: Self = Self::NO_CONNECT
        .union(Self::NO_HELO)
        .union(Self::NO_MAIL)
        .union(Self::NO_RCPT)
        .union(Self::NO_BODY)
        .union(Self::NO_HEADERS)
        .union(Self::NO_EOH)
        .union(Self::NO_UNKNOWN)
        .union(Self::NO_DATA);
}

/// The stages at which an MTA sends macros, with their wire numbers
/// (`SMFIM_*`). Note that end of message (5) comes before end of headers (6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MacroStage {
    /// Before CONNECT.
    #[doc(alias = "SMFIM_CONNECT")]
    Connect = 0,
    /// Before HELO.
    #[doc(alias = "SMFIM_HELO")]
    Helo = 1,
    /// Before MAIL.
    #[doc(alias = "SMFIM_ENVFROM")]
    Mail = 2,
    /// Before RCPT.
    #[doc(alias = "SMFIM_ENVRCPT")]
    Rcpt = 3,
    /// Before DATA.
    #[doc(alias = "SMFIM_DATA")]
    Data = 4,
    /// Before end of message.
    #[doc(alias = "SMFIM_EOM")]
    EndOfMessage = 5,
    /// Before end of headers.
    #[doc(alias = "SMFIM_EOH")]
    EndOfHeaders = 6,
}

impl MacroStage {
    /// Every stage, in wire order.
    pub const ALL: [MacroStage; 7] = [
        Self::Connect,
        Self::Helo,
        Self::Mail,
        Self::Rcpt,
        Self::Data,
        Self::EndOfMessage,
        Self::EndOfHeaders,
    ];

    /// The stage for a wire number, if it is one.
    pub fn from_wire(n: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// The wire number.
    pub fn to_wire(self) -> u32 {
        self as u32
    }

    /// The command byte the macros of this stage precede.
    pub fn command_code(self) -> u8 {
        match self {
            Self::Connect => b'C',
            Self::Helo => b'H',
            Self::Mail => b'M',
            Self::Rcpt => b'R',
            Self::Data => b'T',
            Self::EndOfMessage => b'E',
            Self::EndOfHeaders => b'N',
        }
    }
}

/// An option negotiation packet as the MTA sends it (`SMFIC_OPTNEG`).
#[doc(alias = "SMFIC_OPTNEG")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptNeg {
    /// Protocol version.
    pub version: u32,
    /// Actions the MTA allows.
    pub actions: Actions,
    /// Protocol flags the MTA understands.
    pub protocol: ProtocolFlags,
}

impl OptNeg {
    /// What Postfix 3.x (and Sendmail 8.14+) offer: version 6, every action, every flag.
    pub const POSTFIX: OptNeg = OptNeg {
        version: 6,
        actions: Actions::all(),
        protocol: ProtocolFlags::V6,
    };

    /// What a Postfix with `milter_protocol = 2` offers.
    pub const V2: OptNeg = OptNeg {
        version: 2,
        actions: Actions::all(),
        protocol: ProtocolFlags::V2,
    };
}

/// The filter's negotiation reply: the OPTNEG fields plus macro lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OptNegReply {
    /// Protocol version the filter speaks.
    pub version: u32,
    /// Actions the filter will use.
    pub actions: Actions,
    /// Protocol flags the filter wants.
    pub protocol: ProtocolFlags,
    /// Macro lists: wire stage number and a space separated list of names.
    /// Stage numbers outside 0..=6 are kept as received.
    pub macros: MacroLists,
}

/// The macro lists of an OPTNEG reply (`smfi_setsymlist`), kept in wire
/// form: repeated `u32` big-endian stage number and NUL-terminated, space
/// separated macro names, as one buffer. A decoded value is a view of the
/// frame; the lists are read lazily with [`iter`](Self::iter).
///
/// ```
/// use milter_proto::MacroLists;
///
/// let lists = MacroLists::new([(0, "j {daemon_name}"), (3, "{rcpt_addr}")])?;
/// assert_eq!(lists.len(), 2);
/// let (stage, names) = lists.iter().next().expect("a list");
/// assert_eq!((stage, &names[..]), (0, &b"j {daemon_name}"[..]));
/// assert_eq!(&lists.raw()[..4], b"\0\0\0\0");
/// # Ok::<(), milter_proto::EncodeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacroLists {
    raw: Bytes,
}

impl MacroLists {
    /// Builds the lists from wire stage numbers and names, in the order
    /// given. The names may not contain NUL.
    pub fn new<N: AsRef<[u8]>>(
        lists: impl IntoIterator<Item = (u32, N)>,
    ) -> Result<Self, EncodeError> {
        let mut raw = BytesMut::new();
        for (stage, names) in lists {
            let names = names.as_ref();
            if names.contains(&0) {
                return Err(EncodeError::InteriorNul {
                    field: "macro list",
                });
            }
            raw.put_u32(stage);
            raw.extend_from_slice(names);
            raw.put_u8(0);
        }
        Ok(Self { raw: raw.freeze() })
    }

    /// Reads the rest of an OPTNEG reply: checks every list without making
    /// a view of it, then keeps one view of the whole.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let raw = r.rest_walked(|r| read_list(r).map(drop))?;
        Ok(Self { raw })
    }

    /// Whether there are no lists.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The number of lists.
    pub fn len(&self) -> usize {
        self.lists().count()
    }

    /// The lists in order: wire stage number (see [`MacroStage::from_wire`])
    /// and the space separated names, a view without the NUL.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Bytes)> + '_ {
        self.lists()
            .map(|(stage, names)| (stage, self.raw.slice_ref(names)))
    }

    /// The lists in wire form, as sent after the 12 option bytes.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Each list's stage number and names, borrowed; stops at malformed
    /// data (which neither `new` nor `decode` lets in).
    fn lists(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        let mut r = Reader::new(crate::command::code::OPTNEG, &self.raw);
        std::iter::from_fn(move || {
            if r.is_empty() {
                return None;
            }
            read_list(&mut r).ok()
        })
    }
}

/// One macro list: its `u32` stage number and its NUL-terminated names.
fn read_list<'a>(r: &mut Reader<'a>) -> Result<(u32, &'a [u8]), DecodeError> {
    Ok((r.u32("macro stage")?, r.cstr_slice("macro list")?))
}

/// What a filter wants from negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterOptions {
    /// Actions the filter needs; all must be offered.
    pub actions: Actions,
    /// Protocol flags the filter wants: `NO*` for stages it does not handle,
    /// `NR_*` for stages it never answers, and capabilities (`SKIP`,
    /// `RCPT_REJ`, `HEADER_LEADING_SPACE`).
    pub protocol: ProtocolFlags,
    /// Largest payload the filter can take: 64K (default), 256K or 1M.
    pub max_data_size: usize,
    /// Macros the filter wants per stage (`smfi_setsymlist`).
    pub macros: Vec<(MacroStage, String)>,
}

impl Default for FilterOptions {
    fn default() -> Self {
        Self {
            actions: Actions::empty(),
            protocol: ProtocolFlags::empty(),
            max_data_size: MAX_DATA_SIZE_64K,
            macros: Vec::new(),
        }
    }
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The reply to send to the MTA.
    pub reply: OptNegReply,
    /// The agreed protocol version.
    pub version: u32,
    /// Actions the filter may use.
    pub actions: Actions,
    /// Protocol flags in force on the wire (what the MTA will do).
    pub protocol: ProtocolFlags,
    /// No-reply bits the filter asked for but the MTA does not know: the MTA
    /// still expects a reply there, and the filter's side must answer
    /// CONTINUE itself.
    pub fake_no_reply: ProtocolFlags,
    /// Largest payload either side may send from now on.
    pub max_data_size: usize,
    /// Whether the macro lists were sent (the MTA offered `SETSYMLIST`).
    pub macros_sent: bool,
}

/// Computes the agreed options from the MTA's offer and what the filter wants.
///
/// This follows libmilter (`st_optionneg`) with one deliberate difference:
/// where libmilter ends the session because an old MTA does not know a flag
/// the filter asked for, this only drops the flag when dropping it is
/// harmless — the filter's side then answers the stages itself:
///
/// * `NO*` bits the MTA does not know: the MTA sends those stages anyway and
///   the filter's side answers CONTINUE.
/// * `NR_*` bits the MTA does not know: kept in [`Agreed::fake_no_reply`];
///   the filter's side answers CONTINUE.
/// * `SKIP`, `RCPT_REJ`, `HEADER_LEADING_SPACE` not offered: dropped; check
///   [`Agreed::protocol`] to see what is in force.
///
/// Actions the filter needs but the MTA does not offer are an error: the
/// filter could not do its job. So is a macro list containing a NUL byte
/// ([`NegotiationError::MacroList`]): it cannot be put on the wire.
pub fn negotiate(offer: &OptNeg, wanted: &FilterOptions) -> Result<Agreed, NegotiationError> {
    if offer.version < MIN_PROTOCOL_VERSION {
        return Err(NegotiationError::UnsupportedVersion(offer.version));
    }
    let offered_actions = if offer.actions.is_empty() {
        Actions::V1
    } else {
        offer.actions
    };
    let offered_protocol = if offer.protocol.is_empty() {
        ProtocolFlags::V1
    } else {
        offer.protocol
    };
    let version = offer.version.min(PROTOCOL_VERSION);

    let mut actions = wanted.actions - Actions::SET_SYMLIST;
    let missing = actions - offered_actions;
    if !missing.is_empty() {
        return Err(NegotiationError::ActionsNotOffered {
            missing: missing.bits(),
            offered: offered_actions.bits(),
        });
    }

    let wanted_protocol = wanted.protocol - ProtocolFlags::INTERNAL;
    let protocol = wanted_protocol & offered_protocol;
    let fake_no_reply = (wanted_protocol & ProtocolFlags::ALL_NR) - offered_protocol;

    // Only the three MDS sizes can be expressed on the wire: snap down.
    let max_data_size = mds_size(offered_protocol).min(snap_mds(wanted.max_data_size));
    let mds_bit = if max_data_size >= MAX_DATA_SIZE_1M {
        ProtocolFlags::MDS_1M
    } else if max_data_size >= MAX_DATA_SIZE_256K {
        ProtocolFlags::MDS_256K
    } else {
        ProtocolFlags::empty()
    };

    let macros_sent = !wanted.macros.is_empty() && offered_actions.contains(Actions::SET_SYMLIST);
    let mut macros = MacroLists::default();
    if macros_sent {
        actions |= Actions::SET_SYMLIST;
        let mut lists: Vec<&(MacroStage, String)> = wanted.macros.iter().collect();
        lists.sort_by_key(|(stage, _)| *stage);
        macros = MacroLists::new(
            lists
                .into_iter()
                .map(|(stage, names)| (stage.to_wire(), names.as_bytes())),
        )
        .map_err(NegotiationError::MacroList)?;
    }

    let reply_protocol = protocol | mds_bit;
    Ok(Agreed {
        reply: OptNegReply {
            version,
            actions,
            protocol: reply_protocol,
            macros,
        },
        version,
        actions,
        protocol: reply_protocol,
        fake_no_reply,
        max_data_size,
        macros_sent,
    })
}

/// The MTA side: checks a filter's reply against the offer the way Sendmail
/// does (version not above the offer, actions and protocol within it) and
/// returns the options in force.
pub fn check_reply(offer: &OptNeg, reply: &OptNegReply) -> Result<Agreed, NegotiationError> {
    // An offer of 0 means the version 1 sets, as in `negotiate`.
    let offer = &OptNeg {
        version: offer.version,
        actions: if offer.actions.is_empty() {
            Actions::V1
        } else {
            offer.actions
        },
        protocol: if offer.protocol.is_empty() {
            ProtocolFlags::V1
        } else {
            offer.protocol
        },
    };
    if reply.version > offer.version {
        return Err(NegotiationError::VersionAboveOffer {
            replied: reply.version,
            offered: offer.version,
        });
    }
    if reply.version < MIN_PROTOCOL_VERSION {
        return Err(NegotiationError::UnsupportedVersion(reply.version));
    }
    let extra_actions = reply.actions - offer.actions;
    if !extra_actions.is_empty() {
        return Err(NegotiationError::ActionsNotOffered {
            missing: extra_actions.bits(),
            offered: offer.actions.bits(),
        });
    }
    let extra_protocol = (reply.protocol - ProtocolFlags::INTERNAL) - offer.protocol;
    if !extra_protocol.is_empty() {
        return Err(NegotiationError::ProtocolNotOffered {
            missing: extra_protocol.bits(),
        });
    }
    let mut protocol = reply.protocol;
    // Sendmail forces these for old filters: they cannot handle the stages.
    if reply.version <= 2 {
        protocol |= ProtocolFlags::NO_UNKNOWN;
    }
    if reply.version <= 3 {
        protocol |= ProtocolFlags::NO_DATA;
    }
    let max_data_size = mds_size(reply.protocol).min(mds_size(offer.protocol));
    Ok(Agreed {
        reply: reply.clone(),
        version: reply.version,
        actions: reply.actions,
        protocol,
        fake_no_reply: ProtocolFlags::empty(),
        max_data_size,
        macros_sent: !reply.macros.is_empty(),
    })
}

/// The largest MDS size not above `size` (64K at least).
fn snap_mds(size: usize) -> usize {
    if size >= MAX_DATA_SIZE_1M {
        MAX_DATA_SIZE_1M
    } else if size >= MAX_DATA_SIZE_256K {
        MAX_DATA_SIZE_256K
    } else {
        MAX_DATA_SIZE_64K
    }
}

/// The payload limit an MDS bit stands for (64K without one).
fn mds_size(protocol: ProtocolFlags) -> usize {
    if protocol.contains(ProtocolFlags::MDS_1M) {
        MAX_DATA_SIZE_1M
    } else if protocol.contains(ProtocolFlags::MDS_256K) {
        MAX_DATA_SIZE_256K
    } else {
        MAX_DATA_SIZE_64K
    }
}

/// As [`check_reply`], for any response: anything but an option
/// negotiation reply is [`NegotiationError::NotOptNeg`].
pub fn check_response(
    offer: &OptNeg,
    response: &crate::Response,
) -> Result<Agreed, NegotiationError> {
    match response {
        crate::Response::OptNeg(reply) => check_reply(offer, reply),
        other => Err(NegotiationError::NotOptNeg(char::from(other.code()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_lists_iter_stops_at_malformed_data() {
        // Neither `new` nor decoding lets these in; reading them must not panic.
        let cases: [(&'static [u8], usize); 5] = [
            (b"\0\0", 0),
            (b"\0\0\0\x01abc", 0),
            (b"\0\0\0\x01a\0\0\0", 1),
            (b"\0\0\0\x01a\0\0\0\0\x02b", 1),
            (b"\0\0\0\x01\0\0\0\0\x02b\0", 2),
        ];
        for (raw, n) in cases {
            let lists = MacroLists {
                raw: Bytes::from_static(raw),
            };
            assert_eq!(lists.iter().count(), n, "{raw:?}");
            assert_eq!(lists.len(), n, "{raw:?}");
        }
    }
}
