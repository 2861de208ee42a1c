//! SMTP replies: the builder (`smfi_setreply` / `smfi_setmlreply` rules) and
//! the parser (Postfix's `milter8_valid_smtp_reply` rules).

use milter_proto::reply::{MAX_LINE_LEN, MAX_LINES};
use milter_proto::{ReplyError, SmtpReply};
use proptest::prelude::*;

#[test]
fn single_line() {
    let r = SmtpReply::new(451, Some("4.7.1"), "Greylisted").unwrap();
    assert_eq!(r.as_bytes(), b"451 4.7.1 Greylisted");
    assert_eq!(r.code(), 451);
    assert!(r.is_temporary());
    assert_eq!(&r.to_bytes()[..], r.as_bytes());

    let r = SmtpReply::new(550, None, "No such user").unwrap();
    assert_eq!(r.as_bytes(), b"550 No such user");
    assert!(!r.is_temporary());

    // libmilter: both NULL → "rcode SP".
    assert_eq!(SmtpReply::new(554, None, "").unwrap().as_bytes(), b"554 ");
}

#[test]
fn enhanced_code_forms() {
    for x in ["5.7.1", "5.1.10", "5.123.999", "5.0.0"] {
        let r = SmtpReply::new(550, Some(x), "t").unwrap();
        assert_eq!(r.as_bytes(), format!("550 {x} t").as_bytes());
    }
}

#[test]
fn multi_line() {
    let r = SmtpReply::multiline(550, Some("5.7.1"), &["first", "second", "third"]).unwrap();
    assert_eq!(
        r.as_bytes(),
        b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third"
    );
    assert_eq!(r.code(), 550);
}

#[test]
fn multi_line_defaults_to_class_zero_zero() {
    let r = SmtpReply::multiline(451, None, &["a", "b"]).unwrap();
    assert_eq!(r.as_bytes(), b"451-4.0.0 a\r\n451 4.0.0 b");
    let r = SmtpReply::multiline(550, None, &["only"]).unwrap();
    assert_eq!(r.as_bytes(), b"550 5.0.0 only");
}

#[test]
fn percent_is_escaped() {
    let r = SmtpReply::new(550, Some("5.7.1"), "100% spam, 5%s").unwrap();
    assert_eq!(r.as_bytes(), b"550 5.7.1 100%% spam, 5%%s");
    let r = SmtpReply::multiline(451, None, &["%", "%%"]).unwrap();
    assert_eq!(r.as_bytes(), b"451-4.0.0 %%\r\n451 4.0.0 %%%%");
}

#[test]
fn thirty_two_lines_is_the_limit() {
    let lines = vec!["x"; MAX_LINES];
    let r = SmtpReply::multiline(550, None, &lines).unwrap();
    assert_eq!(r.as_bytes().split(|&b| b == b'\n').count(), 32);
    assert!(SmtpReply::parse(r.as_bytes()).is_ok());
    let lines = vec!["x"; MAX_LINES + 1];
    assert_eq!(
        SmtpReply::multiline(550, None, &lines),
        Err(ReplyError::TooManyLines(33))
    );
}

#[test]
fn nine_hundred_eighty_bytes_is_the_limit() {
    let ok = "y".repeat(MAX_LINE_LEN);
    assert!(SmtpReply::new(550, None, &ok).is_ok());
    let long = "y".repeat(MAX_LINE_LEN + 1);
    assert_eq!(
        SmtpReply::new(550, None, &long),
        Err(ReplyError::LineTooLong { line: 1, len: 981 })
    );
}

#[test]
fn class_mismatch_is_refused() {
    for (code, x) in [
        (451, "5.7.1"),
        (550, "4.7.1"),
        (550, "2.0.0"),
        (421, "5.0.0"),
    ] {
        assert_eq!(
            SmtpReply::new(code, Some(x), "t"),
            Err(ReplyError::ClassMismatch {
                code: code.to_string(),
                enhanced: x.to_string(),
            }),
            "{code} {x}"
        );
        assert!(SmtpReply::multiline(code, Some(x), &["t"]).is_err());
    }
}

#[test]
fn parse_accepts_well_formed() {
    for (text, code) in [
        (&b"550 5.7.1 no"[..], 550),
        (b"451 try later", 451),
        (b"421 4.3.2 shutting down", 421),
        (b"550 ", 550),
        (b"550-5.7.1 a\r\n550-5.7.1 b\r\n550 5.7.1 c", 550),
        (b"451-first\r\n451 second", 451),
        (b"550 5.7.1 100%% sure", 550),
    ] {
        let r = SmtpReply::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(r.code(), code);
        assert_eq!(r.as_bytes(), text);
    }
}

#[test]
fn parse_refuses_postfix_malformed() {
    let cases: [(&[u8], ReplyError); 11] = [
        (b"250 ok", ReplyError::InvalidCode("250".into())),
        (b"650 x", ReplyError::InvalidCode("650".into())),
        (b"5a0 x", ReplyError::InvalidCode("5a0".into())),
        (
            b"550 4.7.1 wrong class",
            ReplyError::ClassMismatch {
                code: "550".into(),
                enhanced: "4.7.1".into(),
            },
        ),
        (
            b"451-4.7.1 a\r\n451 5.7.1 b",
            ReplyError::ClassMismatch {
                code: "451".into(),
                enhanced: "5.7.1".into(),
            },
        ),
        (b"55", ReplyError::Malformed("line too short")),
        (
            b"550 a\r\n550 b",
            ReplyError::Malformed("bad separator after the code"),
        ),
        (
            b"550-a",
            ReplyError::Malformed("bad separator after the code"),
        ),
        (
            b"550-a\r\n451 b",
            ReplyError::Malformed("lines carry different codes"),
        ),
        (
            b"550 a\nb",
            ReplyError::Malformed("bare CR or LF inside a line"),
        ),
        (b"550 a\0", ReplyError::Malformed("contains NUL")),
    ];
    for (text, err) in cases {
        assert_eq!(
            SmtpReply::parse(text),
            Err(err),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn parse_refuses_a_bare_code_line() {
    assert!(SmtpReply::parse(b"550").is_err());
    assert!(SmtpReply::parse(b"550-a\r\n550").is_err());
}

#[test]
fn parse_refuses_a_trailing_crlf() {
    // Postfix: the final line does not end in CRLF.
    assert!(SmtpReply::parse(b"550 no\r\n").is_err());
}

#[test]
fn builder_text_starting_with_a_digit() {
    let r =
        SmtpReply::new(550, None, "4 is bad").expect("the builder either refuses or escapes it");
    assert!(
        SmtpReply::parse(r.as_bytes()).is_ok(),
        "the builder made {:?}, which parse refuses",
        String::from_utf8_lossy(r.as_bytes())
    );
}

// -------------------------------------------------------------- properties

/// A line's text: printable ASCII and spaces (incl. '%'), up to 980 bytes.
fn text_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex("[ -~]{0,60}").unwrap(),
        1 => proptest::string::string_regex("[ -~]{970,980}").unwrap(),
    ]
}

fn enhanced(class: u16) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(
        (1u16..=999, 0u16..=999).prop_map(move |(s, d)| format!("{class}.{s}.{d}")),
    )
}

proptest! {
    #[test]
    fn parse_accepts_what_new_builds(
        (code, x) in (400u16..=599).prop_flat_map(|c| (Just(c), enhanced(c / 100))),
        text in text_line(),
    ) {
        let r = SmtpReply::new(code, x.as_deref(), &text).unwrap();
        let parsed = SmtpReply::parse(r.as_bytes()).unwrap();
        prop_assert_eq!(parsed.code(), code);
        prop_assert_eq!(parsed.as_bytes(), r.as_bytes());
        prop_assert_eq!(parsed, r);
    }

    #[test]
    fn parse_accepts_what_multiline_builds(
        (code, x) in (400u16..=599).prop_flat_map(|c| (Just(c), enhanced(c / 100))),
        lines in proptest::collection::vec(text_line(), 1..=32),
    ) {
        let r = SmtpReply::multiline(code, x.as_deref(), &lines).unwrap();
        let parsed = SmtpReply::parse(r.as_bytes()).unwrap();
        prop_assert_eq!(parsed.code(), code);
        prop_assert_eq!(parsed.as_bytes(), r.as_bytes());
        let n = r.as_bytes().windows(2).filter(|w| w == b"\r\n").count() + 1;
        prop_assert_eq!(n, lines.len());
    }

    #[test]
    fn escaping_doubles_every_percent(text in "[ -~]{0,200}") {
        let r = SmtpReply::new(550, Some("5.7.1"), &text).unwrap();
        let body = &r.as_bytes()[10..];
        let percents_in = text.bytes().filter(|&b| b == b'%').count();
        let percents_out = body.iter().filter(|&&b| b == b'%').count();
        prop_assert_eq!(percents_out, 2 * percents_in);
        prop_assert_eq!(body.len(), text.len() + percents_in);
    }

    #[test]
    fn parse_never_panics(text in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = SmtpReply::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_reply_like_text(text in "([45][0-9][0-9][ -]?[0-9. a-z%-]{0,12}(\r\n)?){0,5}") {
        if let Ok(r) = SmtpReply::parse(text.as_bytes()) {
            prop_assert!((400..=599).contains(&r.code()));
        }
    }
}
