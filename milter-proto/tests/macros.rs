//! The macro store: libmilter's clearing table, `{x}`/`x` aliasing, latest
//! stage first, ignored stages, empty and odd packets.

use bytes::Bytes;
use milter_proto::{Command, MacroStore, Macros};

/// The stages libmilter stores, in command-byte form.
const STORED: [u8; 7] = *b"CHMRTNE";

fn packet(stage: u8, pairs: &[(&str, &str)]) -> Macros {
    Macros::new(stage, pairs.iter().copied()).unwrap()
}

/// A store with one macro per stored stage, named `{s_X}` for stage `X`,
/// plus `i` defined at MAIL, EOH and EOM with different values.
fn full_store() -> MacroStore {
    let mut store = MacroStore::new();
    for stage in STORED {
        let name = format!("{{s_{}}}", char::from(stage));
        let value = format!("from {}", char::from(stage));
        let mut pairs = vec![(name, value)];
        if matches!(stage, b'M' | b'N' | b'E') {
            pairs.push(("i".into(), format!("i at {}", char::from(stage))));
        }
        store.set(Macros::new(stage, pairs).unwrap());
    }
    store
}

/// The stages whose marker macro is still visible.
fn visible(store: &MacroStore) -> String {
    STORED
        .iter()
        .filter(|&&s| store.get(&format!("{{s_{}}}", char::from(s))).is_some())
        .map(|&s| char::from(s))
        .collect()
}

#[test]
fn clearing_table() {
    // protocol.md §5: which slots survive the arrival of each command.
    let rows: [(u8, &str); 15] = [
        (b'O', ""),
        (b'Q', ""),
        (b'K', ""),
        (b'C', "C"),
        (b'H', "CH"),
        (b'M', "CHM"),
        (b'R', "CHMR"),
        (b'T', "CHMRTNE"),
        (b'L', "CHMRTNE"),
        (b'N', "CHMRTNE"),
        (b'B', "CHMRTNE"),
        (b'E', "CHMRTNE"),
        (b'A', "CHMRTNE"),
        (b'U', "CHMRTNE"),
        (b'D', "CHMRTNE"),
    ];
    for (command, survivors) in rows {
        let mut store = full_store();
        assert_eq!(visible(&store), "CHMRTNE");
        store.on_command(command);
        assert_eq!(
            visible(&store),
            survivors,
            "after command {}",
            char::from(command)
        );
    }
}

#[test]
fn abort_keeps_macros_across_messages() {
    let mut store = full_store();
    store.on_command(b'A');
    store.on_command(b'A');
    assert_eq!(store.get_str("{s_M}").as_deref(), Some("from M"));
    // The next message's MAIL macros replace the MAIL set, then MAIL clears RCPT+.
    store.set(packet(b'M', &[("{mail_addr}", "x@y")]));
    store.on_command(b'M');
    assert_eq!(store.get("{s_M}"), None, "the MAIL set was replaced");
    assert_eq!(store.get_str("{mail_addr}").as_deref(), Some("x@y"));
    assert_eq!(visible(&store), "CH");
}

#[test]
fn a_macro_packet_replaces_its_stage() {
    let mut store = MacroStore::new();
    store.set(packet(b'C', &[("j", "one"), ("_", "client")]));
    store.set(packet(b'C', &[("j", "two")]));
    assert_eq!(store.get_str("j").as_deref(), Some("two"));
    assert_eq!(store.get("_"), None);
}

#[test]
fn empty_packet_clears_its_stage() {
    let mut store = MacroStore::new();
    store.set(packet(b'H', &[("{tls_version}", "TLSv1.3")]));
    store.set(packet(b'H', &[]));
    assert_eq!(store.get("{tls_version}"), None);
    assert_eq!(store.iter().count(), 0);
}

#[test]
fn odd_packet_gets_an_empty_value() {
    // Sendmail has been seen to send a name without a value.
    let Command::Macro(m) =
        Command::decode_parts(b'D', &Bytes::from_static(b"Cj\0mx\0{daemon_name}\0")).unwrap()
    else {
        panic!("not macros")
    };
    let mut store = MacroStore::new();
    store.set(m);
    assert_eq!(store.get_str("j").as_deref(), Some("mx"));
    assert_eq!(store.get_str("{daemon_name}").as_deref(), Some(""));
}

#[test]
fn bytes_after_the_last_nul_are_ignored() {
    let Command::Macro(m) =
        Command::decode_parts(b'D', &Bytes::from_static(b"Cj\0mx\0junk")).unwrap()
    else {
        panic!("not macros")
    };
    assert_eq!(m.pairs().count(), 1);
    let mut store = MacroStore::new();
    store.set(m);
    assert_eq!(store.get("junk"), None);
}

#[test]
fn aliasing_single_letters_both_ways() {
    let mut store = MacroStore::new();
    store.set(packet(b'C', &[("j", "bare"), ("{v}", "braced")]));
    // "{x}" finds a stored "x"...
    assert_eq!(store.get_str("{j}").as_deref(), Some("bare"));
    assert_eq!(store.get_str("j").as_deref(), Some("bare"));
    // ...and "x" finds a stored "{x}".
    assert_eq!(store.get_str("v").as_deref(), Some("braced"));
    assert_eq!(store.get_str("{v}").as_deref(), Some("braced"));
}

#[test]
fn long_names_are_not_normalised() {
    let mut store = MacroStore::new();
    store.set(packet(
        b'C',
        &[("{daemon_name}", "braced"), ("if_name", "bare")],
    ));
    assert_eq!(store.get("daemon_name"), None);
    assert_eq!(store.get_str("{daemon_name}").as_deref(), Some("braced"));
    assert_eq!(store.get("{if_name}"), None);
    assert_eq!(store.get_str("if_name").as_deref(), Some("bare"));
    // Two letters are a long name.
    store.set(packet(b'H', &[("ab", "x")]));
    assert_eq!(store.get("{ab}"), None);
}

#[test]
fn latest_stage_wins() {
    let store = full_store();
    // i is defined at MAIL, EOH and EOM; libmilter searches EOM first, then EOH.
    assert_eq!(store.get_str("i").as_deref(), Some("i at E"));
    assert_eq!(store.get_str("{i}").as_deref(), Some("i at E"));
    let mut store = full_store();
    store.set(packet(b'E', &[]));
    assert_eq!(store.get_str("i").as_deref(), Some("i at N"));
    store.set(packet(b'N', &[]));
    assert_eq!(store.get_str("i").as_deref(), Some("i at M"));
}

#[test]
fn latest_stage_wins_across_spellings() {
    // Stored "{i}" at RCPT and "i" at DATA: the DATA one is found either way.
    let mut store = MacroStore::new();
    store.set(packet(b'R', &[("{i}", "rcpt")]));
    store.set(packet(b'T', &[("i", "data")]));
    assert_eq!(store.get_str("i").as_deref(), Some("data"));
    assert_eq!(store.get_str("{i}").as_deref(), Some("data"));
}

#[test]
fn unknown_stages_are_ignored() {
    // Postfix sends 'L', 'B', 'U' packets; libmilter drops them silently.
    let mut store = MacroStore::new();
    for stage in [b'L', b'B', b'U', b'O', b'A', b'Q', 0, 0xff] {
        store.set(packet(stage, &[("x", "1")]));
    }
    assert_eq!(store.get("x"), None);
    assert_eq!(store.iter().count(), 0);
}

#[test]
fn absent_names() {
    let store = full_store();
    assert_eq!(store.get(""), None);
    assert_eq!(store.get("{}"), None);
    assert_eq!(store.get("nope"), None);
    assert_eq!(MacroStore::new().get("i"), None);
}

#[test]
fn non_utf8_values() {
    let mut store = MacroStore::new();
    store.set(Macros::new(b'C', [(&b"j"[..], &b"\xff\xfe"[..])]).unwrap());
    assert_eq!(store.get("j").as_deref(), Some(&b"\xff\xfe"[..]));
    assert_eq!(store.get_str("j"), None, "not lossy: no UTF-8, no string");
}

#[test]
fn iter_lists_latest_stage_first_and_clear_empties() {
    let mut store = MacroStore::new();
    store.set(packet(b'C', &[("j", "c")]));
    store.set(packet(b'E', &[("j", "e")]));
    let all: Vec<(Bytes, Bytes)> = store.iter().collect();
    assert_eq!(
        all,
        vec![
            (Bytes::from_static(b"j"), Bytes::from_static(b"e")),
            (Bytes::from_static(b"j"), Bytes::from_static(b"c")),
        ]
    );
    store.clear();
    assert_eq!(store.iter().count(), 0);
}

/// `detach` copies what arrived since the last call out of the packets'
/// buffers (several stages into one allocation) and leaves the rest alone.
#[test]
fn detach_copies_fresh_packets_out_of_their_buffers() {
    let within = |v: &Bytes, buf: &Bytes| buf.as_ptr_range().contains(&v.as_ptr());
    let c = packet(b'C', &[("j", "mx.example")]);
    let c_buf = c.raw().clone();
    let mut store = MacroStore::new();
    store.set(c);
    assert!(within(&store.get("j").unwrap(), &c_buf));
    store.detach();
    let j = store.get("j").unwrap();
    assert_eq!(&j[..], b"mx.example");
    assert!(!within(&j, &c_buf));

    let m = packet(b'M', &[("i", "Q1")]);
    let r = packet(b'R', &[("{rcpt_addr}", "b@x")]);
    let (m_buf, r_buf) = (m.raw().clone(), r.raw().clone());
    store.set(m);
    store.set(r);
    store.detach();
    let (i, rcpt) = (store.get("i").unwrap(), store.get("{rcpt_addr}").unwrap());
    assert_eq!((&i[..], &rcpt[..]), (&b"Q1"[..], &b"b@x"[..]));
    assert!(!within(&i, &m_buf) && !within(&rcpt, &r_buf));
    // One allocation for both: R's pairs follow M's (`i\0Q1\0`).
    assert_eq!(
        rcpt.as_ptr(),
        i.as_ptr().wrapping_add(3 + "{rcpt_addr}\0".len())
    );
    // The packet detached before stays where it is.
    assert_eq!(store.get("j").unwrap().as_ptr(), j.as_ptr());
    // Nothing fresh: nothing moves.
    store.detach();
    assert_eq!(store.get("i").unwrap().as_ptr(), i.as_ptr());
}
