//! Unit tests of the rule parser and evaluator.

use super::*;

const ZIP_SAMPLE: &str = r#"reject "Sorry, we do not accept ZIP archives anymore"
body /^(Content-Type: [^;]*; | )name=".*\.zip"/ie
body /^(Content-Disposition: attachment; | )filename=".*\.zip"/ie
"#;

fn parse(text: &str) -> RuleSet {
    match RuleSet::parse(text) {
        Ok(set) => set,
        Err(errors) => panic!("unexpected errors: {errors:?}"),
    }
}

fn errors(text: &str) -> Vec<RuleError> {
    match RuleSet::parse(text) {
        Ok(_) => panic!("expected errors for {text:?}"),
        Err(errors) => errors,
    }
}

/// The single error of `text`: (line, column, kind).
fn one_error(text: &str) -> (usize, usize, RuleErrorKind) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
    let e = errs.into_iter().next().expect("one error");
    (e.line, e.column, e.kind)
}

fn eval(text: &str) -> Evaluator {
    Evaluator::new(Arc::new(parse(text)))
}

/// A full clean transaction up to the start of the body.
fn envelope(ev: &mut Evaluator) {
    ev.connect("mail.example.org", "192.0.2.1");
    ev.helo("mail.example.org");
    ev.envfrom("<alice@example.org>");
    ev.envrcpt("<bob@example.net>");
    ev.header("From", "alice@example.org");
    ev.header("Subject", "hello");
    ev.eoh();
}

fn reject(text: &str) -> Action {
    Action::Reject(text.to_string())
}

// --- the sample from milter-regex --------------------------------------------

#[test]
fn zip_sample_rejects_zip_attachment() {
    let mut ev = eval(ZIP_SAMPLE);
    envelope(&mut ev);
    assert_eq!(ev.decision_at(Stage::Eoh), None);
    ev.body(b"Hello,\r\n\r\nsee attached.\r\n");
    assert_eq!(ev.decision_at(Stage::Body), None);
    ev.body(b"Content-Disposition: attachment; filename=\"report.ZIP\"\r\n");
    let expected = reject("Sorry, we do not accept ZIP archives anymore");
    // Decided as soon as the line is seen, and still at end of message.
    assert_eq!(ev.decision_at(Stage::Body), Some(&expected));
    ev.eom();
    assert_eq!(ev.decision_at(Stage::Eom), Some(&expected));
    assert_eq!(
        expected.reply().map(|r| r.to_string()).as_deref(),
        Some("554 5.7.1 Sorry, we do not accept ZIP archives anymore")
    );
}

#[test]
fn zip_sample_also_matches_the_continuation_line_form() {
    let mut ev = eval(ZIP_SAMPLE);
    envelope(&mut ev);
    ev.body(b"Content-Type: application/zip;\r\n name=\"x.zip\"\r\n");
    assert!(matches!(
        ev.decision_at(Stage::Body),
        Some(Action::Reject(_))
    ));
}

#[test]
fn zip_sample_passes_clean_mail() {
    let mut ev = eval(ZIP_SAMPLE);
    envelope(&mut ev);
    ev.body(b"Content-Disposition: attachment; filename=\"report.pdf\"\r\n");
    ev.body(b"Talking about zip files is fine.\r\n");
    ev.eom();
    assert_eq!(ev.decision_at(Stage::Eom), None);
}

#[test]
fn body_lines_split_across_chunks_and_unterminated_last_line() {
    let mut ev = eval("reject \"x\"\nbody /^needle$/\n");
    envelope(&mut ev);
    ev.body(b"hay\r\nnee");
    assert_eq!(ev.decision_at(Stage::Body), None);
    ev.body(b"dle");
    assert_eq!(ev.decision_at(Stage::Body), None);
    ev.eom();
    assert_eq!(ev.decision_at(Stage::Eom), Some(&reject("x")));
}

#[test]
fn non_utf8_body_does_not_panic() {
    let mut ev = eval("reject \"x\"\nbody /caf/\n");
    envelope(&mut ev);
    ev.body(&[0xff, 0xfe, b'c', b'a', b'f', 0xe9, b'\n']);
    assert_eq!(ev.decision_at(Stage::Body), Some(&reject("x")));
}

#[test]
fn very_long_body_line_is_split_not_buffered_forever() {
    let mut ev = eval("reject \"x\"\nbody /^b/\n");
    envelope(&mut ev);
    let mut chunk = vec![b'a'; MAX_BODY_LINE];
    chunk.extend_from_slice(b"bbb");
    ev.body(&chunk);
    assert!(ev.partial_line.len() < MAX_BODY_LINE);
    ev.eom();
    assert_eq!(ev.decision_at(Stage::Eom), Some(&reject("x")));
}

// --- each condition kind ---------------------------------------------------------

#[test]
fn connect_rule_decides_at_connect() {
    let set = parse("reject \"no\"\nconnect /dialup/ //\n");
    assert_eq!(set.decided_by(&set.rules()[0]), Stage::Connect);
    let mut ev = Evaluator::new(Arc::new(set));
    ev.connect("host.dialup.example", "192.0.2.7");
    assert_eq!(ev.decision_at(Stage::Connect), Some(&reject("no")));

    let mut ev = eval("reject \"no\"\nconnect // /^10\\./\n");
    ev.connect("[10.1.2.3]", "10.1.2.3");
    assert_eq!(ev.decision_at(Stage::Connect), Some(&reject("no")));
    ev.connect("[192.0.2.1]", "192.0.2.1");
    assert_eq!(ev.decision_at(Stage::Connect), None);
}

#[test]
fn connect_and_helo_rule_decides_at_helo() {
    let set = parse("tempfail \"later\"\nconnect /unknown/ // and helo /^[0-9.]*$/\n");
    assert_eq!(set.decided_by(&set.rules()[0]), Stage::Helo);
    let rules = Arc::new(set);

    let mut ev = Evaluator::new(Arc::clone(&rules));
    ev.connect("unknown", "192.0.2.1");
    assert_eq!(ev.decision_at(Stage::Connect), None);
    ev.helo("192.0.2.1");
    let action = ev.decision_at(Stage::Helo).cloned();
    assert_eq!(action, Some(Action::Tempfail("later".into())));
    assert_eq!(
        action.and_then(|a| a.reply()).map(|r| r.to_string()),
        Some("451 4.7.1 later".to_string())
    );

    // The connect part is false: decided (no action) already at HELO.
    let mut ev = Evaluator::new(rules);
    ev.connect("mx.example.org", "192.0.2.1");
    ev.helo("192.0.2.1");
    assert_eq!(ev.decision_at(Stage::Helo), None);
}

#[test]
fn envfrom_rule() {
    let mut ev = eval("reject \"go away\"\nenvfrom /@spam\\.example>$/i\n");
    ev.connect("h", "192.0.2.1");
    ev.helo("h");
    ev.envfrom("<x@SPAM.example>");
    assert_eq!(ev.decision_at(Stage::EnvFrom), Some(&reject("go away")));
    // A new message on the same connection starts clean.
    ev.reset_message();
    ev.envfrom("<x@ok.example>");
    assert_eq!(ev.decision_at(Stage::EnvFrom), None);
}

#[test]
fn envrcpt_rule_refuses_only_matching_recipients() {
    let mut ev = eval("reject \"no such user\"\nenvrcpt /^<old@/\n");
    ev.envfrom("<a@example.org>");
    ev.envrcpt("<old@example.org>");
    assert_eq!(
        ev.decision_at(Stage::EnvRcpt),
        Some(&reject("no such user"))
    );
    ev.envrcpt("<new@example.org>");
    assert_eq!(ev.decision_at(Stage::EnvRcpt), None);
    ev.header("Subject", "x");
    ev.eoh();
    // The refused recipient is not part of the message any more.
    assert_eq!(ev.decision_at(Stage::Eoh), None);
    ev.eom();
    assert_eq!(ev.decision_at(Stage::Eom), None);
}

#[test]
fn envrcpt_combined_with_header_sees_any_accepted_recipient() {
    let mut ev = eval("discard\nenvrcpt /trap@/ and header /^Subject$/ /win/\n");
    ev.envfrom("<a@example.org>");
    ev.envrcpt("<trap@example.org>");
    assert_eq!(ev.decision_at(Stage::EnvRcpt), None);
    ev.envrcpt("<bob@example.org>");
    assert_eq!(ev.decision_at(Stage::EnvRcpt), None);
    ev.header("Subject", "You win");
    assert_eq!(ev.decision_at(Stage::Header), Some(&Action::Discard));
}

#[test]
fn header_rule_needs_name_and_value_on_the_same_header() {
    let text = "reject \"spam\"\nheader /^Subject$/i /viagra/i\n";
    let mut ev = eval(text);
    ev.envfrom("<a@b>");
    ev.header("From", "viagra@example.org");
    ev.header("Subject", "hello");
    assert_eq!(ev.decision_at(Stage::Header), None);
    ev.eoh();
    assert_eq!(ev.decision_at(Stage::Eoh), None);

    let mut ev = eval(text);
    ev.envfrom("<a@b>");
    ev.header("SUBJECT", "Cheap VIAGRA");
    assert_eq!(ev.decision_at(Stage::Header), Some(&reject("spam")));
}

#[test]
fn folded_header_value_matches_across_the_newline() {
    let mut ev = eval("reject \"x\"\nheader /^Subject$/ /foo.*bar/\n");
    ev.envfrom("<a@b>");
    ev.header("Subject", "foo\n\tbar");
    assert_eq!(ev.decision_at(Stage::Header), Some(&reject("x")));
}

#[test]
fn negated_header_rule_is_decided_at_end_of_headers() {
    // Reject mail without a Message-ID header.
    let set = parse("reject \"no id\"\nnot header /^Message-ID$/i //\n");
    assert_eq!(set.decided_by(&set.rules()[0]), Stage::Eoh);
    let rules = Arc::new(set);

    let mut ev = Evaluator::new(Arc::clone(&rules));
    ev.envfrom("<a@b>");
    ev.header("Subject", "x");
    assert_eq!(ev.decision_at(Stage::Header), None);
    ev.eoh();
    assert_eq!(ev.decision_at(Stage::Eoh), Some(&reject("no id")));

    let mut ev = Evaluator::new(rules);
    ev.envfrom("<a@b>");
    ev.header("Message-Id", "<1@b>");
    ev.eoh();
    assert_eq!(ev.decision_at(Stage::Eoh), None);
}

#[test]
fn not_body_is_only_known_at_end_of_message() {
    let set = parse("reject \"unsigned\"\nnot body /^-----BEGIN PGP/\n");
    assert_eq!(set.decided_by(&set.rules()[0]), Stage::Eom);
    let mut ev = Evaluator::new(Arc::new(set));
    envelope(&mut ev);
    ev.body(b"plain text\r\n");
    assert_eq!(ev.decision_at(Stage::Body), None);
    ev.eom();
    assert_eq!(ev.decision_at(Stage::Eom), Some(&reject("unsigned")));
}

#[test]
fn macro_rule_with_connection_and_message_macros() {
    let text = "accept\nmacro /^{auth_authen}$/ /./\n";
    let set = parse(text);
    assert_eq!(set.decided_by(&set.rules()[0]), Stage::Header);
    let rules = Arc::new(set);

    // Authenticated: accepted at MAIL FROM already.
    let mut ev = Evaluator::new(Arc::clone(&rules));
    ev.envfrom("<a@b>");
    ev.macro_value("{auth_authen}", "alice");
    assert_eq!(ev.decision_at(Stage::EnvFrom), Some(&Action::Accept));

    // Not authenticated: the macro is empty; decided false at the first header.
    let mut ev = Evaluator::new(Arc::clone(&rules));
    ev.envfrom("<a@b>");
    ev.macro_value("{auth_authen}", "");
    assert_eq!(ev.decision_at(Stage::EnvRcpt), None);
    ev.header("Subject", "x");
    assert_eq!(ev.decision_at(Stage::Header), None);

    // Connection-level macros survive a new message; message-level ones not.
    let mut ev = eval("reject \"x\"\nmacro /^j$/ /^mx1$/\nreject \"y\"\nmacro /^i$/ /^Q1$/\n");
    ev.macro_value("j", "mx1");
    ev.envfrom("<a@b>");
    ev.macro_value("i", "Q1");
    assert_eq!(ev.decision_at(Stage::EnvFrom), Some(&reject("x")));
    ev.reset_message();
    ev.envfrom("<a@b>");
    ev.header("a", "b");
    assert_eq!(ev.decision_at(Stage::Header), Some(&reject("x")));
}

// --- expressions -----------------------------------------------------------------

#[test]
fn and_or_not_and_parentheses() {
    let text = r#"
reject "a"
helo /^a$/ and (envfrom /x/ or envfrom /y/)
reject "b"
not helo /^a$/ and not envfrom /z/
"#;
    let rules = Arc::new(parse(text));
    let run = |helo: &str, from: &str| {
        let mut ev = Evaluator::new(Arc::clone(&rules));
        ev.helo(helo);
        ev.envfrom(from);
        ev.decision_at(Stage::EnvFrom).cloned()
    };
    assert_eq!(run("a", "<x@>"), Some(reject("a")));
    assert_eq!(run("a", "<y@>"), Some(reject("a")));
    assert_eq!(run("a", "<w@>"), None);
    assert_eq!(run("b", "<w@>"), Some(reject("b")));
    assert_eq!(run("b", "<z@>"), None);
}

#[test]
fn and_or_have_equal_precedence_and_group_right_like_milter_regex() {
    // `A and B or C` is `A and (B or C)`: with A false the rule is false
    // even though C is true.
    let mut ev = eval("reject \"x\"\nhelo /^a$/ and helo /^b$/ or helo /^c$/\n");
    ev.helo("c");
    assert_eq!(ev.decision_at(Stage::Helo), None);
    // `A or B and C` is `A or (B and C)`.
    let mut ev = eval("reject \"x\"\nhelo /^c$/ or helo /^a$/ and helo /^b$/\n");
    ev.helo("c");
    assert_eq!(ev.decision_at(Stage::Helo), Some(&reject("x")));
}

#[test]
fn early_true_beats_late_undecided() {
    // `helo or body` triggers at HELO when the name matches ...
    let set = parse("reject \"x\"\nhelo /^bad$/ or body /spam/\n");
    assert_eq!(set.decided_by(&set.rules()[0]), Stage::Eom);
    let rules = Arc::new(set);
    let mut ev = Evaluator::new(Arc::clone(&rules));
    ev.helo("bad");
    assert_eq!(ev.decision_at(Stage::Helo), Some(&reject("x")));
    // ... and otherwise waits for the body.
    let mut ev = Evaluator::new(rules);
    ev.helo("good");
    assert_eq!(ev.decision_at(Stage::Helo), None);
    ev.envfrom("<a@b>");
    ev.eoh();
    ev.body(b"spam spam\r\n");
    assert_eq!(ev.decision_at(Stage::Body), Some(&reject("x")));
}

#[test]
fn several_expressions_after_an_action_are_or_ed() {
    let rules = Arc::new(parse(
        "reject \"x\"\nhelo /^a$/\nhelo /^b$/\n\nreject \"y\"\nhelo /^c$/\n",
    ));
    for (name, expected) in [
        ("a", Some("x")),
        ("b", Some("x")),
        ("c", Some("y")),
        ("d", None),
    ] {
        let mut ev = Evaluator::new(Arc::clone(&rules));
        ev.helo(name);
        assert_eq!(
            ev.decision_at(Stage::Helo).cloned(),
            expected.map(reject),
            "helo {name}"
        );
    }
}

#[test]
fn first_rule_in_file_order_wins() {
    let mut ev = eval("accept\nhelo /friend/\nreject \"x\"\nhelo /./\n");
    ev.helo("friend.example");
    assert_eq!(ev.decision_at(Stage::Helo), Some(&Action::Accept));
}

#[test]
fn quarantine_is_reported_only_at_end_of_message() {
    let mut ev = eval("quarantine \"look at this\"\nhelo /x/\nreject \"r\"\nbody /y/\n");
    ev.helo("x");
    assert_eq!(ev.decision_at(Stage::Helo), None);
    ev.envfrom("<a@b>");
    ev.eoh();
    ev.eom();
    assert_eq!(
        ev.decision_at(Stage::Eom),
        Some(&Action::Quarantine("look at this".into()))
    );
    assert_eq!(Action::Quarantine("q".into()).reply(), None);
}

#[test]
fn expression_continues_across_lines() {
    let text = "reject \"x\"\nhelo /^a$/ and\n   envfrom /b/\nreject \"y\" helo /^c$/ \\\n  and envfrom /d/\n";
    let rules = Arc::new(parse(text));
    assert_eq!(rules.rules().len(), 2);
    let mut ev = Evaluator::new(Arc::clone(&rules));
    ev.helo("a");
    ev.envfrom("<b@>");
    assert_eq!(ev.decision_at(Stage::EnvFrom), Some(&reject("x")));
    let mut ev = Evaluator::new(rules);
    ev.helo("c");
    ev.envfrom("<d@>");
    assert_eq!(ev.decision_at(Stage::EnvFrom), Some(&reject("y")));
}

#[test]
fn named_expressions() {
    let text = "local = connect // /^127\\./ or connect // /^::1$/\naccept\n$local\nreject \"x\"\nnot $local and helo /localhost/\n";
    let rules = Arc::new(parse(text));
    let mut ev = Evaluator::new(Arc::clone(&rules));
    ev.connect("localhost", "127.0.0.1");
    assert_eq!(ev.decision_at(Stage::Connect), Some(&Action::Accept));
    let mut ev = Evaluator::new(rules);
    ev.connect("evil", "192.0.2.1");
    ev.helo("localhost");
    assert_eq!(ev.decision_at(Stage::Helo), Some(&reject("x")));
}

// --- patterns: BRE vs ERE, flags, delimiters --------------------------------------

fn helo_matches(rule_pattern: &str, name: &str) -> bool {
    let mut ev = eval(&format!("reject \"x\"\nhelo {rule_pattern}\n"));
    ev.helo(name);
    ev.decision_at(Stage::Helo).is_some()
}

#[test]
fn basic_regex_without_e_flag() {
    // In a BRE, + ? | ( ) { } are literal characters ...
    assert!(helo_matches("/a+b/", "a+b"));
    assert!(!helo_matches("/a+b/", "aab"));
    assert!(helo_matches("/(x)/", "(x)"));
    assert!(helo_matches("/a|b/", "a|b"));
    assert!(!helo_matches("/^a|b$/", "a"));
    assert!(helo_matches("/x{2}/", "x{2}"));
    // ... and the escaped forms are operators.
    assert!(helo_matches(r"/^\(ab\)*$/", "ababab"));
    assert!(helo_matches(r"/^a\{2,3\}$/", "aaa"));
    assert!(!helo_matches(r"/^a\{2,3\}$/", "aaaa"));
    assert!(helo_matches(r"/^a\|b$/", "b"));
    // A leading `*` is literal.
    assert!(helo_matches("/*x/", "a*x"));
}

#[test]
fn extended_regex_with_e_flag() {
    assert!(helo_matches("/^a+b$/e", "aaab"));
    assert!(!helo_matches("/^a+b$/e", "a+b"));
    assert!(helo_matches("/^(ab)*$/e", "abab"));
    assert!(helo_matches("/^(a|b)$/e", "b"));
    assert!(helo_matches("/^x{2}$/e", "xx"));
    assert!(helo_matches(r"/^\(x\)$/e", "(x)"));
}

#[test]
fn posix_brackets_and_classes() {
    assert!(helo_matches("/^[[:alpha:]]*$/", "abcXYZ"));
    assert!(!helo_matches("/^[[:alpha:]]*$/", "abc1"));
    assert!(helo_matches(r"/^[\.]$/", "\\"));
    assert!(helo_matches("/^[]x]$/", "]"));
    assert!(helo_matches("/^[^]x]$/", "y"));
}

#[test]
fn flags_i_and_n() {
    assert!(!helo_matches("/^abc$/", "ABC"));
    assert!(helo_matches("/^abc$/i", "ABC"));
    assert!(helo_matches("/^abc$/n", "xyz"));
    assert!(!helo_matches("/^abc$/n", "abc"));
    assert!(helo_matches("/^abc$/in", "xyz"));
    assert!(!helo_matches("/^abc$/ni", "ABC"));
    assert!(helo_matches("/^A+$/ie", "aaa"));
}

#[test]
fn negated_first_pattern_of_a_two_pattern_condition() {
    // A header whose name is not Received and whose value mentions "x".
    let mut ev = eval("reject \"r\"\nheader /^Received$/n /x/\n");
    ev.envfrom("<a@b>");
    ev.header("Received", "from x");
    assert_eq!(ev.decision_at(Stage::Header), None);
    ev.header("Subject", "x");
    assert_eq!(ev.decision_at(Stage::Header), Some(&reject("r")));
}

#[test]
fn any_delimiter_and_escaped_delimiter() {
    assert!(helo_matches(",^a/b$,", "a/b"));
    assert!(helo_matches("|^a,b$|", "a,b"));
    assert!(helo_matches(r"/^a\/b$/", "a/b"));
    // An escaped delimiter is literal even when it is a regex operator.
    assert!(helo_matches(r"|^a\|b$|e", "a|b"));
    assert!(!helo_matches(r"|^a\|b$|e", "a"));
    assert!(helo_matches("!^x$!", "x"));
}

#[test]
fn empty_pattern_matches_everything() {
    assert!(helo_matches("//", "anything"));
    assert!(helo_matches("//", ""));
}

#[test]
fn comments_and_empty_lines() {
    let text = "# a comment\n\n   # indented comment\nreject \"x\" # trailing\n\nhelo /a#b/ # pattern with a hash\n";
    let mut ev = eval(text);
    ev.helo("a#b");
    assert_eq!(ev.decision_at(Stage::Helo), Some(&reject("x")));
}

#[test]
fn single_quoted_text() {
    let set = parse("reject 'It\"s spam'\nhelo /x/\n");
    assert_eq!(set.rules()[0].action(), &reject("It\"s spam"));
    assert_eq!(set.rules()[0].line(), 1);
}

#[test]
fn stage_usage_introspection() {
    let set = parse(ZIP_SAMPLE);
    assert!(set.uses(CondKind::Body));
    assert!(!set.uses(CondKind::Header));
    assert_eq!(set.decided_by_all(), Stage::Eom);
    assert_eq!(parse("").decided_by_all(), Stage::Connect);
}

// --- errors ------------------------------------------------------------------------

#[test]
fn error_unterminated_string() {
    let (line, col, kind) = one_error("\nreject \"oops\nhelo /x/\n");
    assert_eq!((line, col), (2, 8));
    assert_eq!(kind, RuleErrorKind::UnterminatedString);
}

#[test]
fn error_unterminated_regex() {
    let (line, col, kind) = one_error("reject \"x\"\nhelo /abc\n");
    assert_eq!((line, col), (2, 6));
    assert_eq!(kind, RuleErrorKind::UnterminatedRegex { delimiter: '/' });
}

#[test]
fn error_unknown_keyword() {
    let (line, col, kind) = one_error("reject \"x\"\nhelo /a/\nhedaer /a/ /b/\n");
    assert_eq!((line, col), (3, 1));
    assert_eq!(kind, RuleErrorKind::UnknownKeyword("hedaer".into()));
    let (line, _, kind) = one_error("rejct \"x\"\n");
    assert_eq!(line, 1);
    assert_eq!(kind, RuleErrorKind::UnknownKeyword("rejct".into()));
}

#[test]
fn error_bad_regex_carries_the_regex_message() {
    let (line, col, kind) = one_error("reject \"x\"\n\nbody /a(b/e\n");
    assert_eq!((line, col), (3, 6));
    match kind {
        RuleErrorKind::BadRegex { pattern, message } => {
            assert_eq!(pattern, "/a(b/e");
            assert!(message.contains("unclosed group"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn error_backreference_is_explained() {
    let (line, _, kind) = one_error("reject \"x\"\nbody /\\(a\\)\\1/\n");
    assert_eq!(line, 2);
    assert!(
        matches!(&kind, RuleErrorKind::BadRegex { message, .. } if message.contains("backreference")),
        "{kind:?}"
    );
}

#[test]
fn error_missing_condition() {
    let (line, col, kind) = one_error("reject \"x\"\n\ntempfail \"y\"\nhelo /a/\n");
    assert_eq!((line, col), (1, 1));
    assert_eq!(kind, RuleErrorKind::MissingCondition { action: "reject" });
    let (line, _, kind) = one_error("reject \"x\" helo /a/\naccept\n");
    assert_eq!(line, 2);
    assert_eq!(kind, RuleErrorKind::MissingCondition { action: "accept" });
}

#[test]
fn error_missing_action() {
    let (line, col, kind) = one_error("helo /a/\n");
    assert_eq!((line, col), (1, 1));
    assert_eq!(kind, RuleErrorKind::MissingAction);
    // Several orphan lines are one mistake: one error.
    let (line, _, kind) =
        one_error("# no action\nhelo /a/\nhelo /b/ and\n body /c/\nreject \"x\" helo /d/\n");
    assert_eq!(line, 2);
    assert_eq!(kind, RuleErrorKind::MissingAction);
}

#[test]
fn error_unbalanced_parentheses() {
    let (line, col, kind) =
        one_error("reject \"x\"\n(helo /a/ and envfrom /b/\nreject \"y\" helo /c/\n");
    assert_eq!((line, col), (2, 1));
    assert!(matches!(kind, RuleErrorKind::UnbalancedParentheses(_)));
    let (line, col, kind) = one_error("reject \"x\"\nhelo /a/)\n");
    assert_eq!((line, col), (2, 9));
    assert!(matches!(kind, RuleErrorKind::UnbalancedParentheses(_)));
}

#[test]
fn error_unknown_flag() {
    let (line, col, kind) = one_error("reject \"x\"\nhelo /a/ix\n");
    assert_eq!((line, col), (2, 10));
    assert_eq!(kind, RuleErrorKind::UnknownFlag('x'));
}

#[test]
fn error_empty_regex_with_flags() {
    let (line, _, kind) = one_error("reject \"x\"\nhelo //i\n");
    assert_eq!(line, 2);
    assert_eq!(kind, RuleErrorKind::EmptyRegexWithFlags);
}

#[test]
fn error_action_without_text_and_condition_without_pattern() {
    let (line, _, kind) = one_error("reject\nhelo /a/\n");
    assert_eq!(line, 1);
    assert_eq!(kind, RuleErrorKind::ExpectedString("reject"));
    let (line, col, kind) = one_error("reject \"x\"\nheader /a/\nreject \"y\" helo /b/\n");
    assert_eq!((line, col), (3, 1));
    assert_eq!(kind, RuleErrorKind::ExpectedRegex("header"));
}

#[test]
fn error_named_expressions() {
    let (line, _, kind) = one_error("reject \"x\"\n$nope\n");
    assert_eq!(line, 2);
    assert_eq!(kind, RuleErrorKind::UndefinedName("nope".into()));
    let (line, _, kind) = one_error("a = helo /x/\na = helo /y/\n");
    assert_eq!(line, 2);
    assert_eq!(kind, RuleErrorKind::DuplicateName("a".into()));
}

#[test]
fn error_dangling_operator() {
    let (line, _, kind) = one_error("reject \"x\"\nhelo /a/ and\n");
    assert_eq!(line, 2);
    assert!(matches!(kind, RuleErrorKind::Unexpected(_)));
}

#[test]
fn all_errors_are_reported_with_their_lines() {
    let text =
        "reject \"x\"\nhelo /a/zz\nreject \"y\"\nbody /(/e\nfoo /x/\ntempfail \"z\"\nhelo /ok/\n";
    let errs = errors(text);
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 4, 5], "{errs:?}");
    assert_eq!(
        errs[0].to_string(),
        "2:9: unknown flag `z` (expected e, i or n)"
    );
}

#[test]
fn an_error_inside_a_rule_does_not_cascade_to_its_next_lines() {
    let text = "reject \"x\"\nhelo /a/q\nbody /(/e\nbody /ok/\nrejct \"y\"\n";
    let errs = errors(text);
    let kinds: Vec<(usize, &RuleErrorKind)> = errs.iter().map(|e| (e.line, &e.kind)).collect();
    assert_eq!(kinds.len(), 3, "{errs:?}");
    assert_eq!(kinds[0], (2, &RuleErrorKind::UnknownFlag('q')));
    assert!(matches!(kinds[1], (3, RuleErrorKind::BadRegex { .. })));
    assert_eq!(
        kinds[2],
        (5, &RuleErrorKind::UnknownKeyword("rejct".into()))
    );
    // After a named expression, a bare condition lacks an action again.
    let (line, _, kind) = one_error("n = helo /a/\nhelo /b/\n");
    assert_eq!((line, kind), (2, RuleErrorKind::MissingAction));
}

#[test]
fn hostile_input_is_rejected_without_panicking() {
    // Deep nesting.
    let deep = format!(
        "reject \"x\"\n{}helo /a/{}\n",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(matches!(one_error(&deep).2, RuleErrorKind::TooComplex));
    let nots = format!("reject \"x\"\n{}helo /a/\n", "not ".repeat(5000));
    assert!(matches!(one_error(&nots).2, RuleErrorKind::TooComplex));
    // Exponential named expressions.
    let mut text = String::from("a0 = helo /x/\n");
    for i in 1..40 {
        text.push_str(&format!("a{i} = $a{} and $a{}\n", i - 1, i - 1));
    }
    text.push_str("reject \"x\" $a39\n");
    assert!(RuleSet::parse(&text).is_err());
    // A long flat chain is fine.
    let chain = vec!["helo /a/"; 2000].join(" or ");
    assert!(RuleSet::parse(&format!("reject \"x\"\n{chain}\n")).is_ok());
    // Garbage.
    for garbage in [
        "\\",
        "(",
        ")",
        "$",
        "=",
        "\"",
        "/",
        "reject \"x\" (",
        "a =",
        "\u{0}\u{1}/",
    ] {
        let _ = RuleSet::parse(garbage);
    }
}

#[test]
fn parser_never_panics_on_token_soup() {
    let pieces = [
        "reject \"x\"",
        "accept",
        "helo",
        "/a/",
        "/(/e",
        "and",
        "or",
        "not",
        "(",
        ")",
        "$n",
        "n =",
        "\n",
        "header",
        "#c\n",
        "//i",
        "\\\n",
    ];
    // Deterministic pseudo-random sequences (xorshift), bounded.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..2000 {
        let mut text = String::new();
        for _ in 0..12 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let idx = usize::try_from(state % pieces.len() as u64).unwrap_or(0);
            text.push_str(pieces[idx]);
            text.push(' ');
        }
        if let Ok(set) = RuleSet::parse(&text) {
            let mut ev = Evaluator::new(Arc::new(set));
            envelope(&mut ev);
            ev.eom();
            let _ = ev.decision_at(Stage::Eom);
        }
    }
}

// --- reload ------------------------------------------------------------------------

#[test]
fn reload_keeps_old_rules_on_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rules.conf");
    std::fs::write(&path, "reject \"one\"\nhelo /a/\n").expect("write");
    let shared = SharedRules::new(RuleSet::load(&path).expect("load"));
    let before = shared.current();
    assert_eq!(before.rules().len(), 1);

    std::fs::write(&path, "reject \"two\"\nhelo /(/e\n").expect("write");
    match shared.reload(&path) {
        Err(LoadError::Rules { errors, .. }) => assert_eq!(errors[0].line, 2),
        other => panic!("expected rule errors, got {other:?}"),
    }
    assert!(Arc::ptr_eq(&before, &shared.current()), "old rules kept");

    std::fs::write(&path, "reject \"two\"\nhelo /b/\naccept helo /c/\n").expect("write");
    assert_eq!(shared.reload(&path).expect("reload"), 2);
    assert_eq!(shared.current().rules().len(), 2);
    // A connection that started before the reload still has its rules.
    assert_eq!(before.rules()[0].action(), &reject("one"));

    assert!(matches!(
        shared.reload(&dir.path().join("missing")),
        Err(LoadError::Io { .. })
    ));
}
