//! Option negotiation tables: what real MTAs offer, what a filter asks, what
//! is replied and what is in force afterwards.

use bytes::Bytes;
use milter_proto::frame::{MAX_DATA_SIZE_1M, MAX_DATA_SIZE_64K, MAX_DATA_SIZE_256K};
use milter_proto::negotiate::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use milter_proto::{
    Actions, FilterOptions, MacroLists, MacroStage, NegotiationError, OptNeg, OptNegReply,
    ProtocolFlags as P, check_reply, negotiate,
};

fn offer(version: u32, actions: u32, protocol: u32) -> OptNeg {
    OptNeg {
        version,
        actions: Actions::from_bits_retain(actions),
        protocol: P::from_bits_retain(protocol),
    }
}

fn wants(actions: Actions, protocol: P) -> FilterOptions {
    FilterOptions {
        actions,
        protocol,
        ..FilterOptions::default()
    }
}

/// Postfix `milter_protocol = 6/4/3/2`, as in its milter8_event_masks.
const POSTFIX_V6: (u32, u32, u32) = (6, 0x1ff, 0x1f_ffff);
const POSTFIX_V4: (u32, u32, u32) = (4, 0x1ff, 0x37f);
const POSTFIX_V3: (u32, u32, u32) = (3, 0x1ff, 0x17f);
const POSTFIX_V2: (u32, u32, u32) = (2, 0x1ff, 0x7f);

#[test]
fn named_offers_match_the_reference() {
    assert_eq!(OptNeg::POSTFIX, offer(6, 0x1ff, 0x1f_ffff));
    assert_eq!(OptNeg::V2, offer(2, 0x1ff, 0x7f));
    assert_eq!(P::V6.bits(), 0x1f_ffff);
    assert_eq!(P::V2.bits(), 0x7f);
    assert_eq!(P::V1.bits(), 0x3f);
    assert_eq!(Actions::V1.bits(), 0x0f);
    assert_eq!(Actions::V2.bits(), 0x3f);
    assert_eq!(Actions::all().bits(), 0x1ff);
    assert_eq!(P::INTERNAL.bits(), 0x7000_0000);
    assert_eq!(P::ALL_NR.bits(), 0x000f_f080);
    assert_eq!(P::ALL_NO.bits(), 0x37f);
    assert_eq!((PROTOCOL_VERSION, MIN_PROTOCOL_VERSION), (6, 2));
}

#[test]
fn reply_version_is_min_of_offer_and_6() {
    for (offered, replied) in [
        (2, 2),
        (3, 3),
        (4, 4),
        (5, 5),
        (6, 6),
        (7, 6),
        (u32::MAX, 6),
    ] {
        let a = negotiate(&offer(offered, 0x1ff, 0x1f_ffff), &FilterOptions::default()).unwrap();
        assert_eq!(a.version, replied, "offer {offered}");
        assert_eq!(a.reply.version, replied, "offer {offered}");
    }
}

#[test]
fn version_1_and_0_are_refused() {
    for v in [0, 1] {
        assert_eq!(
            negotiate(&offer(v, 0x1ff, 0x1f_ffff), &FilterOptions::default()),
            Err(NegotiationError::UnsupportedVersion(v))
        );
    }
}

/// (name, offer, filter actions, filter protocol,
///  reply actions, reply protocol, fake no-reply bits)
type Row = (&'static str, (u32, u32, u32), u32, u32, u32, u32, u32);

#[test]
fn negotiation_table() {
    let rows: [Row; 14] = [
        // Plain filter, nothing wanted.
        ("v6 nothing", POSTFIX_V6, 0, 0, 0, 0, 0),
        // A greylister: no headers/body/eoh, no reply to connect/helo.
        ("v6 greylist", POSTFIX_V6, 0, 0x0000_3070, 0, 0x0000_3070, 0),
        // Everything Postfix can do.
        ("v6 all", POSTFIX_V6, 0x1ff, 0x1f_ffff, 0x0ff, 0x1f_ffff, 0),
        // NR bits a v2 MTA does not know are faked by the filter's side.
        ("v2 nr faked", POSTFIX_V2, 0, 0x0008_f080, 0, 0, 0x0008_f080),
        // NO_DATA/NO_UNKNOWN dropped for old MTAs, other NO bits kept.
        ("v2 nodata", POSTFIX_V2, 0, 0x0000_0301, 0, 0x0000_0001, 0),
        // v3 knows NO_UNKNOWN but not NO_DATA.
        ("v3 nodata", POSTFIX_V3, 0, 0x0000_0300, 0, 0x0000_0100, 0),
        // v4 knows both.
        ("v4 nodata", POSTFIX_V4, 0, 0x0000_0300, 0, 0x0000_0300, 0),
        // v4 lacks NR_HDR (0x80) unless no_header_reply is set.
        ("v4 nr hdr", POSTFIX_V4, 0, 0x0000_0080, 0, 0, 0x0000_0080),
        (
            "v4 no_header_reply",
            (4, 0x1ff, 0x3ff),
            0,
            0x0000_0080,
            0,
            0x0000_0080,
            0,
        ),
        // SKIP, RCPT_REJ, LEADSPC not offered by v2: dropped.
        ("v2 caps", POSTFIX_V2, 0, 0x0010_0c00, 0, 0, 0),
        // Actions 0 means SMFI_V1_ACTS.
        ("actions 0", (6, 0, 0x1f_ffff), 0x0f, 0, 0x0f, 0, 0),
        // Protocol 0 means SMFI_V1_PROT (0x3F): NO_CONNECT kept, NO_EOH
        // (a v2 bit) dropped, NR faked.
        (
            "protocol 0",
            (6, 0x1ff, 0),
            0,
            0x0000_1041,
            0,
            0x0000_0001,
            0x0000_1000,
        ),
        // Internal bits the filter sets are never echoed.
        ("internal", POSTFIX_V6, 0, 0x4000_0001, 0, 0x0000_0001, 0),
        // SETSYMLIST without macro lists is not replied.
        ("symlist alone", POSTFIX_V6, 0x101, 0, 0x001, 0, 0),
    ];
    for (name, (v, a, p), fa, fp, ra, rp, fake) in rows {
        let agreed = negotiate(
            &offer(v, a, p),
            &wants(Actions::from_bits_retain(fa), P::from_bits_retain(fp)),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(agreed.reply.actions.bits(), ra, "{name}: reply actions");
        assert_eq!(agreed.reply.protocol.bits(), rp, "{name}: reply protocol");
        assert_eq!(agreed.actions.bits(), ra, "{name}: actions");
        assert_eq!(agreed.protocol.bits(), rp, "{name}: protocol in force");
        assert_eq!(agreed.fake_no_reply.bits(), fake, "{name}: faked NR");
        assert_eq!(agreed.max_data_size, MAX_DATA_SIZE_64K, "{name}: size");
        assert!(agreed.reply.macros.is_empty(), "{name}: macros");
        // Whatever the filter's side replies, the MTA side accepts it (an
        // offer of 0 is read differently by check_reply: see
        // check_reply_reads_zero_offers_like_negotiate).
        if a != 0 && p != 0 {
            check_reply(&offer(v, a, p), &agreed.reply)
                .unwrap_or_else(|e| panic!("{name}: MTA refuses the reply: {e}"));
        }
    }
}

#[test]
fn actions_0_treated_as_v1_refuses_v2_actions() {
    // libmilter: actions 0 → 0x0F, so CHGHDRS (0x10) is not available.
    assert_eq!(
        negotiate(
            &offer(6, 0, 0x1f_ffff),
            &wants(Actions::CHANGE_HEADERS, P::empty())
        ),
        Err(NegotiationError::ActionsNotOffered {
            missing: 0x10,
            offered: 0x0f,
        })
    );
}

#[test]
fn v2_offer_with_v2_actions_refuses_v6_actions() {
    for action in [Actions::CHANGE_FROM, Actions::ADD_RCPT_PAR] {
        let err = negotiate(&offer(2, 0x3f, 0x7f), &wants(action, P::empty())).unwrap_err();
        assert_eq!(
            err,
            NegotiationError::ActionsNotOffered {
                missing: action.bits(),
                offered: 0x3f,
            }
        );
    }
}

/// (offered MDS bits, wanted size, agreed size, replied bit)
#[test]
fn mds_selection() {
    let rows: [(P, usize, usize, P); 10] = [
        (P::empty(), MAX_DATA_SIZE_1M, MAX_DATA_SIZE_64K, P::empty()),
        (P::MDS_1M, MAX_DATA_SIZE_1M, MAX_DATA_SIZE_1M, P::MDS_1M),
        (
            P::MDS_1M,
            MAX_DATA_SIZE_256K,
            MAX_DATA_SIZE_256K,
            P::MDS_256K,
        ),
        (P::MDS_1M, MAX_DATA_SIZE_64K, MAX_DATA_SIZE_64K, P::empty()),
        (
            P::MDS_256K,
            MAX_DATA_SIZE_1M,
            MAX_DATA_SIZE_256K,
            P::MDS_256K,
        ),
        (
            P::MDS_256K,
            MAX_DATA_SIZE_256K,
            MAX_DATA_SIZE_256K,
            P::MDS_256K,
        ),
        (
            P::MDS_256K,
            MAX_DATA_SIZE_64K,
            MAX_DATA_SIZE_64K,
            P::empty(),
        ),
        (
            P::MDS_256K.union(P::MDS_1M),
            MAX_DATA_SIZE_1M,
            MAX_DATA_SIZE_1M,
            P::MDS_1M,
        ),
        // Below 64K is raised to 64K: the protocol cannot go lower.
        (P::MDS_1M, 1000, MAX_DATA_SIZE_64K, P::empty()),
        (P::empty(), 1000, MAX_DATA_SIZE_64K, P::empty()),
    ];
    for (bits, wanted, size, replied) in rows {
        let o = OptNeg {
            protocol: P::V6 | bits,
            ..OptNeg::POSTFIX
        };
        let w = FilterOptions {
            max_data_size: wanted,
            ..FilterOptions::default()
        };
        let agreed = negotiate(&o, &w).unwrap();
        assert_eq!(agreed.max_data_size, size, "offer {bits:?}, want {wanted}");
        assert_eq!(
            agreed.reply.protocol & P::INTERNAL,
            replied,
            "offer {bits:?}, want {wanted}"
        );
        // The MTA side agrees on the same size.
        let mta = check_reply(&o, &agreed.reply).unwrap();
        assert_eq!(
            mta.max_data_size, size,
            "MTA side: offer {bits:?}, want {wanted}"
        );
    }
}

#[test]
fn mds_non_standard_size_snaps_down() {
    // Sendmail offers 1M; the filter asks for 100000 bytes. There is no MDS
    // bit for 100000, so the reply carries none and the MTA keeps 64K; the
    // agreed size must be 64K too, not 100000.
    let o = OptNeg {
        protocol: P::V6 | P::MDS_1M,
        ..OptNeg::POSTFIX
    };
    let w = FilterOptions {
        max_data_size: 100_000,
        ..FilterOptions::default()
    };
    let agreed = negotiate(&o, &w).unwrap();
    let mta = check_reply(&o, &agreed.reply).unwrap();
    assert_eq!(agreed.reply.protocol & P::INTERNAL, P::empty());
    assert_eq!(mta.max_data_size, MAX_DATA_SIZE_64K);
    assert_eq!(agreed.max_data_size, mta.max_data_size);
}

#[test]
fn check_reply_reads_zero_offers_like_negotiate() {
    for o in [offer(6, 0, 0x1f_ffff), offer(6, 0x1ff, 0)] {
        let w = wants(Actions::ADD_HEADERS, P::NO_CONNECT);
        let agreed = negotiate(&o, &w).unwrap();
        assert_eq!(
            check_reply(&o, &agreed.reply).map(|a| a.protocol),
            Ok(agreed.protocol),
            "offer {o:?}"
        );
    }
}

fn with_macros(list: &[(MacroStage, &str)]) -> FilterOptions {
    FilterOptions {
        macros: list.iter().map(|(s, n)| (*s, (*n).to_string())).collect(),
        ..FilterOptions::default()
    }
}

#[test]
fn macro_lists_sent_in_stage_order_with_the_bit() {
    let w = with_macros(&[
        (MacroStage::EndOfHeaders, "i"),
        (MacroStage::Connect, "j {daemon_name}"),
        (MacroStage::EndOfMessage, "{msg_id}"),
        (MacroStage::Mail, "{mail_addr}"),
    ]);
    let agreed = negotiate(&OptNeg::POSTFIX, &w).unwrap();
    assert!(agreed.macros_sent);
    assert!(agreed.reply.actions.contains(Actions::SET_SYMLIST));
    assert!(agreed.actions.contains(Actions::SET_SYMLIST));
    assert_eq!(
        agreed.reply.macros.iter().collect::<Vec<_>>(),
        vec![
            (0, Bytes::from_static(b"j {daemon_name}")),
            (2, Bytes::from_static(b"{mail_addr}")),
            (5, Bytes::from_static(b"{msg_id}")),
            (6, Bytes::from_static(b"i")),
        ]
    );
    assert_eq!(
        agreed.reply.macros,
        MacroLists::new([
            (0, "j {daemon_name}"),
            (2, "{mail_addr}"),
            (5, "{msg_id}"),
            (6, "i"),
        ])
        .unwrap()
    );
    let mta = check_reply(&OptNeg::POSTFIX, &agreed.reply).unwrap();
    assert!(mta.macros_sent);
}

#[test]
fn macro_lists_not_sent_without_setsymlist_offered() {
    let w = with_macros(&[(MacroStage::Connect, "j")]);
    for o in [offer(2, 0x3f, 0x7f), offer(6, 0x0ff, 0x1f_ffff)] {
        let agreed = negotiate(&o, &w).unwrap();
        assert!(!agreed.macros_sent);
        assert!(agreed.reply.macros.is_empty());
        assert!(!agreed.reply.actions.contains(Actions::SET_SYMLIST));
        check_reply(&o, &agreed.reply).unwrap();
    }
}

#[test]
fn macro_stage_numbers() {
    let wire: Vec<(u32, u8)> = MacroStage::ALL
        .iter()
        .map(|s| (s.to_wire(), s.command_code()))
        .collect();
    assert_eq!(
        wire,
        vec![
            (0, b'C'),
            (1, b'H'),
            (2, b'M'),
            (3, b'R'),
            (4, b'T'),
            (5, b'E'),
            (6, b'N'),
        ]
    );
    for n in 0..7 {
        assert_eq!(MacroStage::from_wire(n).unwrap().to_wire(), n);
    }
    assert_eq!(MacroStage::from_wire(7), None);
    assert_eq!(MacroStage::from_wire(u32::MAX), None);
}

// ------------------------------------------------------------ check_reply

fn reply(version: u32, actions: u32, protocol: u32) -> OptNegReply {
    OptNegReply {
        version,
        actions: Actions::from_bits_retain(actions),
        protocol: P::from_bits_retain(protocol),
        macros: MacroLists::default(),
    }
}

#[test]
fn check_reply_accepts() {
    let rows: [(OptNeg, OptNegReply, u32); 5] = [
        (OptNeg::POSTFIX, reply(6, 0x1ff, 0x1f_ffff), 0x1f_ffff),
        (OptNeg::POSTFIX, reply(2, 0x01, 0x00), 0x300),
        (OptNeg::POSTFIX, reply(3, 0x01, 0x00), 0x200),
        (OptNeg::POSTFIX, reply(4, 0x01, 0x00), 0x000),
        // Internal (MDS) bits are not checked against the offer.
        (OptNeg::POSTFIX, reply(6, 0, 0x1000_0000), 0x1000_0000),
    ];
    for (o, r, in_force) in rows {
        let agreed = check_reply(&o, &r).unwrap();
        assert_eq!(agreed.version, r.version);
        assert_eq!(agreed.actions, r.actions);
        // Sendmail forces NO_UNKNOWN for v2 filters and NO_DATA for v2/v3.
        assert_eq!(agreed.protocol.bits(), in_force, "{r:?}");
        assert!(agreed.fake_no_reply.is_empty());
    }
}

#[test]
fn check_reply_refuses() {
    let rows: [(OptNeg, OptNegReply, NegotiationError); 5] = [
        (
            OptNeg::V2,
            reply(6, 0, 0),
            NegotiationError::VersionAboveOffer {
                replied: 6,
                offered: 2,
            },
        ),
        (
            OptNeg::POSTFIX,
            reply(1, 0, 0),
            NegotiationError::UnsupportedVersion(1),
        ),
        (
            offer(6, 0x3f, 0x1f_ffff),
            reply(6, 0x40, 0),
            NegotiationError::ActionsNotOffered {
                missing: 0x40,
                offered: 0x3f,
            },
        ),
        (
            OptNeg::V2,
            reply(2, 0, 0x0008_0000),
            NegotiationError::ProtocolNotOffered {
                missing: 0x0008_0000,
            },
        ),
        (
            OptNeg::POSTFIX,
            reply(6, 0, 0x8000_0000),
            NegotiationError::ProtocolNotOffered {
                missing: 0x8000_0000,
            },
        ),
    ];
    for (o, r, err) in rows {
        assert_eq!(check_reply(&o, &r), Err(err), "{r:?}");
    }
}
