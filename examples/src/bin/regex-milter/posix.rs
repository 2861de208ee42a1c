//! Translation of POSIX regular expressions into the syntax of the `regex` crate.
//!
//! milter-regex compiles its patterns with `regcomp(3)`: a pattern without the
//! `e` flag is a POSIX *basic* regular expression (BRE), with `e` it is an
//! *extended* one (ERE). The `regex` crate speaks a Perl-like dialect that is
//! close to ERE, so this module rewrites a POSIX pattern into an equivalent
//! `regex` pattern, character by character:
//!
//! | POSIX                        | BRE means            | ERE means            | written for `regex` as |
//! |------------------------------|----------------------|----------------------|------------------------|
//! | `\(` `\)`                    | group                | literal parenthesis  | `(` `)` / `\(` `\)`    |
//! | `(` `)`                      | literal parenthesis  | group                | `\(` `\)` / `(` `)`    |
//! | `\{m,n\}` / `{m,n}`          | interval / literal   | literal / interval   | `{m,n}`                |
//! | `\|` `\+` `\?` (GNU)         | alternation, `+`, `?`| literal              | `\|` `+` `?`           |
//! | `*` first in the pattern     | literal star         | literal star         | `\*`                   |
//! | `^` not first, `$` not last  | literal (BRE)        | anchor               | `\^` `\$` / `^` `$`    |
//! | `[\.]`                       | backslash or dot     | backslash or dot     | `[\\.]`                |
//! | `[[:alpha:]]`                | class                | class                | `[[:alpha:]]`          |
//! | `\1` … `\9`                  | backreference        | backreference        | *not supported*        |
//!
//! The one real gap is backreferences: the `regex` crate guarantees linear
//! time matching and therefore has none. Such patterns are rejected with a
//! clear message rather than silently matching something else.

/// One character of a pattern as the rule-file lexer delivered it.
///
/// `literal` is set for a delimiter character that was escaped with a
/// backslash inside the pattern (`/a\/b/`): it always stands for itself,
/// whatever its meaning in regular expression syntax would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PatChar {
    /// The character.
    pub(crate) c: char,
    /// True when the character must be matched literally.
    pub(crate) literal: bool,
}

impl PatChar {
    /// A character with its ordinary (possibly special) meaning.
    pub(crate) fn raw(c: char) -> Self {
        Self { c, literal: false }
    }
}

/// Which POSIX dialect a pattern is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// POSIX basic regular expression (`regcomp` without `REG_EXTENDED`).
    Basic,
    /// POSIX extended regular expression (`REG_EXTENDED`, the `e` flag).
    Extended,
}

/// The POSIX character classes usable inside brackets, e.g. `[[:alpha:]]`.
/// The `regex` crate supports exactly these ASCII classes.
const CLASSES: &[&str] = &[
    "alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space",
    "upper", "xdigit",
];

/// Rewrite `pattern` (in the given POSIX `flavor`) into `regex` crate syntax.
///
/// The error string is a short human readable explanation; the caller attaches
/// the position in the rule file.
pub(crate) fn translate(pattern: &[PatChar], flavor: Flavor) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    // True where a `*` would have nothing to repeat: at the start of the
    // pattern, of a group or of an alternative. POSIX reads it literally there.
    let mut at_start = true;
    let mut i = 0;
    while let Some(&pc) = pattern.get(i) {
        i += 1;
        if pc.literal {
            push_literal(&mut out, pc.c);
            at_start = false;
            continue;
        }
        match pc.c {
            '\\' => {
                let Some(&next) = pattern.get(i) else {
                    return Err("trailing backslash".to_string());
                };
                i += 1;
                if next.literal {
                    push_literal(&mut out, next.c);
                    at_start = false;
                    continue;
                }
                at_start = false;
                match (flavor, next.c) {
                    (_, d @ '1'..='9') => {
                        return Err(format!(
                            "backreference \\{d} is not supported (the regex crate has none)"
                        ));
                    }
                    (Flavor::Basic, '(') => {
                        out.push('(');
                        at_start = true;
                    }
                    (Flavor::Basic, ')') => out.push(')'),
                    (Flavor::Basic, '|') => {
                        out.push('|');
                        at_start = true;
                    }
                    (Flavor::Basic, '+' | '?') => out.push(next.c),
                    (Flavor::Basic, '{') => {
                        i = basic_interval(pattern, i, &mut out)?;
                    }
                    // `\<`, `\>`, `\w`, `\s`, `\b`, `\n`, `\t`, ... mean the same
                    // (or nearly so) to GNU regcomp and to the regex crate.
                    (_, c) if c.is_ascii_alphanumeric() || c == '<' || c == '>' => {
                        out.push('\\');
                        out.push(c);
                    }
                    // Any other escaped character stands for itself.
                    (_, c) => push_literal(&mut out, c),
                }
            }
            '[' => {
                i = bracket(pattern, i, &mut out)?;
                at_start = false;
            }
            '*' if at_start => {
                out.push_str("\\*");
                at_start = false;
            }
            '*' | '.' => {
                out.push(pc.c);
                at_start = false;
            }
            '^' => {
                // In a BRE `^` is an anchor only at the start of the pattern
                // (or of a group/alternative); elsewhere it is an ordinary char.
                if flavor == Flavor::Extended || at_start {
                    out.push('^');
                } else {
                    out.push_str("\\^");
                    at_start = false;
                }
            }
            '$' => {
                if flavor == Flavor::Extended || basic_at_end(pattern, i) {
                    out.push('$');
                } else {
                    out.push_str("\\$");
                }
                at_start = false;
            }
            '(' | '|' if flavor == Flavor::Extended => {
                out.push(pc.c);
                at_start = true;
            }
            ')' | '+' | '?' if flavor == Flavor::Extended => {
                out.push(pc.c);
                at_start = false;
            }
            '{' if flavor == Flavor::Extended => {
                // A valid interval is copied; a `{` that does not start one is
                // a literal brace (as glibc reads it) instead of an error.
                match interval_end(pattern, i, false) {
                    Some(end) => {
                        out.push('{');
                        for p in pattern.get(i..end).unwrap_or_default() {
                            out.push(p.c);
                        }
                        out.push('}');
                        i = end + 1;
                    }
                    None => out.push_str("\\{"),
                }
                at_start = false;
            }
            c => {
                push_literal(&mut out, c);
                at_start = false;
            }
        }
    }
    Ok(out)
}

/// Append `c` so that the regex crate matches it literally.
fn push_literal(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// In a BRE, `$` is an anchor only at the end of the pattern or of a group
/// or alternative (`\)` or `\|` follows). `i` is the index after the `$`.
fn basic_at_end(pattern: &[PatChar], i: usize) -> bool {
    match (pattern.get(i), pattern.get(i + 1)) {
        (None, _) => true,
        (Some(b), Some(n)) if b.c == '\\' && !b.literal && !n.literal => n.c == ')' || n.c == '|',
        _ => false,
    }
}

/// Find the end of an interval body `m`, `m,` or `m,n` starting at `i`.
/// With `escaped` the closing brace is `\}` (BRE), else `}` (ERE).
/// Returns the index of the closing `}` (for BRE: of the `}` after the backslash
/// minus one, i.e. the backslash).
fn interval_end(pattern: &[PatChar], i: usize, escaped: bool) -> Option<usize> {
    let mut j = i;
    let mut digits = 0;
    let mut comma = false;
    while let Some(p) = pattern.get(j) {
        if p.literal {
            return None;
        }
        match p.c {
            '0'..='9' => digits += 1,
            ',' if !comma && digits > 0 => comma = true,
            '}' if !escaped && digits > 0 => return Some(j),
            '\\' if escaped && digits > 0 => {
                return match pattern.get(j + 1) {
                    Some(n) if n.c == '}' && !n.literal => Some(j),
                    _ => None,
                };
            }
            _ => return None,
        }
        j += 1;
    }
    None
}

/// Translate a BRE interval `\{m,n\}`; `i` points after `\{`.
/// Returns the index after the closing `\}`.
fn basic_interval(pattern: &[PatChar], i: usize, out: &mut String) -> Result<usize, String> {
    let end = interval_end(pattern, i, true)
        .ok_or_else(|| "invalid interval: expected \\{m\\}, \\{m,\\} or \\{m,n\\}".to_string())?;
    out.push('{');
    for p in pattern.get(i..end).unwrap_or_default() {
        out.push(p.c);
    }
    out.push('}');
    Ok(end + 2)
}

/// Translate a POSIX bracket expression; `i` points after the opening `[`.
/// Returns the index after the closing `]`.
///
/// POSIX brackets differ from `regex` classes in three ways handled here:
/// a backslash is an ordinary character, a `]` right after `[` or `[^` is a
/// literal, and `&&`, `--`, `~~` and nested `[` have no special meaning.
fn bracket(pattern: &[PatChar], mut i: usize, out: &mut String) -> Result<usize, String> {
    const UNTERMINATED: &str = "unterminated bracket expression [...]";
    out.push('[');
    if matches!(pattern.get(i), Some(p) if p.c == '^' && !p.literal) {
        out.push('^');
        i += 1;
    }
    let mut first = true;
    loop {
        let Some(&p) = pattern.get(i) else {
            return Err(UNTERMINATED.to_string());
        };
        if p.c == ']' && !p.literal && !first {
            out.push(']');
            return Ok(i + 1);
        }
        first = false;
        // `[:class:]`, `[.coll.]`, `[=equiv=]`
        if p.c == '['
            && let Some(&kind) = pattern.get(i + 1)
            && matches!(kind.c, ':' | '.' | '=')
        {
            let start = i + 2;
            let mut j = start;
            let mut name = String::new();
            loop {
                match (pattern.get(j), pattern.get(j + 1)) {
                    (Some(a), Some(b)) if a.c == kind.c && b.c == ']' => break,
                    (Some(a), _) => name.push(a.c),
                    (None, _) => return Err(UNTERMINATED.to_string()),
                }
                j += 1;
            }
            match kind.c {
                ':' if CLASSES.contains(&name.as_str()) => {
                    out.push_str("[:");
                    out.push_str(&name);
                    out.push_str(":]");
                }
                ':' => return Err(format!("unknown character class [:{name}:]")),
                '.' => return Err(format!("collating element [.{name}.] is not supported")),
                _ => return Err(format!("equivalence class [={name}=] is not supported")),
            }
            i = j + 2;
            continue;
        }
        // A single character, possibly the start of a range `a-z`.
        push_class_char(out, p.c);
        i += 1;
        if let (Some(dash), Some(end)) = (pattern.get(i), pattern.get(i + 1))
            && dash.c == '-'
            && (end.c != ']' || end.literal)
        {
            if end.c == '[' {
                return Err("range ending in a bracket class is not supported".to_string());
            }
            if end.c < p.c {
                return Err(format!(
                    "invalid range {}-{} in bracket expression",
                    p.c, end.c
                ));
            }
            out.push('-');
            push_class_char(out, end.c);
            i += 2;
        }
    }
}

/// Append a character inside a `regex` class so that it is taken literally.
fn push_class_char(out: &mut String, c: char) {
    if matches!(c, '\\' | '[' | ']' | '^' | '-' | '&' | '~') {
        out.push('\\');
    }
    out.push(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(s: &str, flavor: Flavor) -> Result<String, String> {
        let chars: Vec<PatChar> = s.chars().map(PatChar::raw).collect();
        translate(&chars, flavor)
    }

    fn bre(s: &str) -> String {
        tr(s, Flavor::Basic).expect("valid BRE")
    }

    fn ere(s: &str) -> String {
        tr(s, Flavor::Extended).expect("valid ERE")
    }

    #[test]
    fn basic_grouping_and_literals() {
        assert_eq!(bre(r"\(ab\)*c"), "(ab)*c");
        assert_eq!(bre("(ab)"), r"\(ab\)");
        assert_eq!(bre("a|b+c?"), r"a\|b\+c\?");
        assert_eq!(bre(r"a\|b"), "a|b");
        assert_eq!(bre(r"a\{2,3\}"), "a{2,3}");
        assert_eq!(bre("a{2}"), r"a\{2\}");
        assert_eq!(bre(r"a\+\?"), "a+?");
    }

    #[test]
    fn basic_anchors_and_star() {
        assert_eq!(bre("^a$"), "^a$");
        assert_eq!(bre("a^b$c"), r"a\^b\$c");
        assert_eq!(bre("*a"), r"\*a");
        assert_eq!(bre("^*a"), r"^\*a");
        assert_eq!(bre(r"\(*a\)"), r"(\*a)");
        assert_eq!(bre(r"\(a$\)"), "(a$)");
    }

    #[test]
    fn extended_is_mostly_unchanged() {
        assert_eq!(ere("^(a|b)+c?{2}$"), "^(a|b)+c?{2}$");
        assert_eq!(ere("a{x"), r"a\{x");
        assert_eq!(ere("*a"), r"\*a");
        assert_eq!(ere(r"\."), r"\.");
        assert_eq!(ere(r"\/"), "/");
    }

    #[test]
    fn brackets() {
        assert_eq!(ere(r"[\.]"), r"[\\.]");
        assert_eq!(ere("[]a]"), r"[\]a]");
        assert_eq!(ere("[^]a]"), r"[^\]a]");
        assert_eq!(ere("[[:alpha:]_-]"), r"[[:alpha:]_\-]");
        assert_eq!(ere("[a-z&&]"), r"[a-z\&\&]");
        assert_eq!(ere("[a[b]"), r"[a\[b]");
        assert!(tr("[abc", Flavor::Extended).is_err());
        assert!(tr("[[:nope:]]", Flavor::Extended).is_err());
        assert!(tr("[[.a.]]", Flavor::Extended).is_err());
        assert!(tr("[[=a=]]", Flavor::Extended).is_err());
        assert!(tr("[z-a]", Flavor::Extended).is_err());
    }

    #[test]
    fn backreferences_and_bad_escapes_are_errors() {
        let err = tr(r"\(a\)\1", Flavor::Basic).unwrap_err();
        assert!(err.contains("backreference"), "{err}");
        assert!(tr(r"(a)\1", Flavor::Extended).is_err());
        assert!(tr("a\\", Flavor::Extended).is_err());
        assert!(tr(r"a\{x\}", Flavor::Basic).is_err());
    }

    #[test]
    fn escaped_delimiter_is_literal() {
        let chars = vec![
            PatChar::raw('a'),
            PatChar {
                c: '|',
                literal: true,
            },
            PatChar::raw('b'),
        ];
        assert_eq!(translate(&chars, Flavor::Extended).unwrap(), r"a\|b");
    }

    /// Whatever the input, translation returns (never panics), and when it
    /// succeeds on short inputs the regex crate gets a string it can judge.
    #[test]
    fn never_panics_on_odd_input() {
        let alphabet = [
            '\\', '[', ']', '(', ')', '{', '}', '^', '$', '*', ':', '-', 'a', '1', ',',
        ];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for flavor in [Flavor::Basic, Flavor::Extended] {
                        let s: String = [a, b, c].iter().collect();
                        if let Ok(t) = tr(&s, flavor) {
                            let _ = regex::Regex::new(&t);
                        }
                    }
                }
            }
        }
    }
}
