//! Custom SMTP replies (`smfi_setreply`, `smfi_setmlreply`), validated so
//! that neither Sendmail nor Postfix refuses or mangles them.

use bytes::Bytes;

use crate::error::ReplyError;

/// Most lines in one reply (`MAXREPLIES`).
pub const MAX_LINES: usize = 32;
/// Longest text of one line (`MAXREPLYLEN`).
pub const MAX_LINE_LEN: usize = 980;

/// A validated SMTP reply: a 4xx or 5xx code, an optional enhanced status
/// code of the same class, and one or more lines of text. `%` in the text is
/// escaped as `%%` (Sendmail uses the text as a format string and would fall
/// back to its default reply on a lone `%`).
///
/// ```
/// use milter_proto::SmtpReply;
/// let r = SmtpReply::new(451, Some("4.7.1"), "Greylisted, please retry in 5 minutes")?;
/// assert_eq!(r.as_bytes(), b"451 4.7.1 Greylisted, please retry in 5 minutes");
/// let m = SmtpReply::multiline(550, Some("5.7.1"), &["Rejected", "100% sure"])?;
/// assert_eq!(m.as_bytes(), b"550-5.7.1 Rejected\r\n550 5.7.1 100%% sure");
/// # Ok::<(), milter_proto::ReplyError>(())
/// ```
#[doc(alias = "smfi_setreply")]
#[doc(alias = "smfi_setmlreply")]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SmtpReply {
    code: u16,
    text: Bytes,
}

impl SmtpReply {
    /// A one-line reply. Without an enhanced code the line is `code text`
    /// (`code x.0.0 text` if the text starts with a digit, which MTAs would
    /// otherwise read as an enhanced code).
    pub fn new(code: u16, enhanced: Option<&str>, text: &str) -> Result<Self, ReplyError> {
        Self::build(code, enhanced, &[text], false)
    }

    /// A multi-line reply (1 to 32 lines). Without an enhanced code,
    /// `x.0.0` of the reply's class is used on every line, as libmilter does.
    pub fn multiline<S: AsRef<str>>(
        code: u16,
        enhanced: Option<&str>,
        lines: &[S],
    ) -> Result<Self, ReplyError> {
        Self::build(code, enhanced, lines, true)
    }

    fn build<S: AsRef<str>>(
        code: u16,
        enhanced: Option<&str>,
        lines: &[S],
        multiline: bool,
    ) -> Result<Self, ReplyError> {
        if !(400..=599).contains(&code) {
            return Err(ReplyError::InvalidCode(code.to_string()));
        }
        let class = if code >= 500 { b'5' } else { b'4' };
        if let Some(x) = enhanced {
            check_enhanced(x)?;
            if x.as_bytes().first() != Some(&class) {
                return Err(ReplyError::ClassMismatch {
                    code: code.to_string(),
                    enhanced: x.to_string(),
                });
            }
        }
        if lines.is_empty() {
            return Err(ReplyError::NoLines);
        }
        if lines.len() > MAX_LINES {
            return Err(ReplyError::TooManyLines(lines.len()));
        }
        let default_enhanced = if class == b'5' { "5.0.0" } else { "4.0.0" };
        // Postfix reads a digit after the code as an enhanced status code:
        // text that starts with one gets the class default in front.
        let text_starts_with_digit = lines
            .first()
            .and_then(|l| l.as_ref().bytes().next())
            .is_some_and(|b| b.is_ascii_digit());
        let enhanced = match (enhanced, multiline || text_starts_with_digit) {
            (Some(x), _) => Some(x),
            (None, true) => Some(default_enhanced),
            (None, false) => None,
        };
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let line = line.as_ref();
            if let Some(&byte) = line
                .as_bytes()
                .iter()
                .find(|b| matches!(b, b'\r' | b'\n' | 0))
            {
                return Err(ReplyError::ForbiddenByte { line: i + 1, byte });
            }
            if line.len() > MAX_LINE_LEN {
                return Err(ReplyError::LineTooLong {
                    line: i + 1,
                    len: line.len(),
                });
            }
            if i > 0 {
                out.extend_from_slice(b"\r\n");
            }
            let last = i + 1 == lines.len();
            out.extend_from_slice(code.to_string().as_bytes());
            out.push(if last { b' ' } else { b'-' });
            if let Some(x) = enhanced {
                out.extend_from_slice(x.as_bytes());
                out.push(b' ');
            }
            for &b in line.as_bytes() {
                out.push(b);
                if b == b'%' {
                    out.push(b'%');
                }
            }
        }
        Ok(Self {
            code,
            text: Bytes::from(out),
        })
    }

    /// Validates a reply text received from a filter (`SMFIR_REPLYCODE`) the
    /// way Postfix does: every line `[45]dd`, `-` on non-final lines and a
    /// space on the last, the same code on every line, an enhanced code (if
    /// any) of the same class, CRLF between lines, no NUL.
    pub fn parse(text: &[u8]) -> Result<Self, ReplyError> {
        if text.contains(&0) {
            return Err(ReplyError::Malformed("contains NUL"));
        }
        let lines: Vec<&[u8]> = split_crlf(text);
        if lines.len() > MAX_LINES {
            return Err(ReplyError::TooManyLines(lines.len()));
        }
        let mut code: Option<&[u8]> = None;
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let this_code = line
                .get(..3)
                .ok_or(ReplyError::Malformed("line too short"))?;
            if !matches!(this_code.first(), Some(b'4' | b'5'))
                || !this_code.iter().all(u8::is_ascii_digit)
            {
                return Err(ReplyError::InvalidCode(
                    String::from_utf8_lossy(this_code).into_owned(),
                ));
            }
            match code {
                Some(c) if c != this_code => {
                    return Err(ReplyError::Malformed("lines carry different codes"));
                }
                _ => code = Some(this_code),
            }
            match (line.get(3), last) {
                (Some(b' '), true) | (Some(b'-'), false) => {}
                _ => return Err(ReplyError::Malformed("bad separator after the code")),
            }
            if let Some(d) = line.get(4)
                && d.is_ascii_digit()
                && Some(d) != this_code.first()
            {
                return Err(ReplyError::ClassMismatch {
                    code: String::from_utf8_lossy(this_code).into_owned(),
                    enhanced: String::from_utf8_lossy(line.get(4..).unwrap_or_default())
                        .split(' ')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            if line.contains(&b'\r') || line.contains(&b'\n') {
                return Err(ReplyError::Malformed("bare CR or LF inside a line"));
            }
        }
        let code = code.ok_or(ReplyError::NoLines)?;
        let code = code
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d.saturating_sub(b'0')));
        Ok(Self {
            code,
            text: Bytes::copy_from_slice(text),
        })
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// Whether the code is 4xx.
    pub fn is_temporary(&self) -> bool {
        self.code < 500
    }

    /// The wire text (lines joined by CRLF, `%` escaped).
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// The wire text as [`Bytes`] for a `SMFIR_REPLYCODE` packet.
    pub fn to_bytes(&self) -> Bytes {
        self.text.clone()
    }
}

fn split_crlf(text: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
        let (line, tail) = rest.split_at(p);
        lines.push(line);
        rest = tail.get(2..).unwrap_or_default();
    }
    lines.push(rest);
    lines
}

/// `C.S.D`: C in {2,4,5}, S and D 1–3 digits.
fn check_enhanced(x: &str) -> Result<(), ReplyError> {
    let bad = || ReplyError::InvalidEnhancedCode(x.to_string());
    let mut parts = x.split('.');
    let (Some(c), Some(s), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let digits = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    if !matches!(c, "2" | "4" | "5") || !digits(s) || !digits(d) {
        return Err(bad());
    }
    Ok(())
}
