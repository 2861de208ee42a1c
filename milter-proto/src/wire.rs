//! Field-level parsing (nom, over whole payloads) and writing.
//!
//! [`Reader`] walks a payload and hands out fields as zero-copy [`Bytes`]
//! views; every nom failure becomes a [`DecodeError`] naming the packet and
//! field, so nom types never leak into the public API.

use std::fmt::Write as _;
use std::iter::{Copied, Enumerate};
use std::net::IpAddr;
use std::slice::Iter;

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take_until;
use nom::character::complete::char as nom_char;
use nom::number::complete::{be_u16, be_u32, u8 as nom_u8};
use nom::sequence::terminated;
use nom::{FindSubstring, IResult, Input, Needed, Parser};

use crate::error::{DecodeError, EncodeError};
use crate::frame::frame_len;

/// The input nom parses: a payload's unread bytes.
///
/// nom implements [`Input`] for `&[u8]` itself, but two of those methods
/// (`take_from`, `input_len`) are not `#[inline]`, so every field of every
/// packet paid a call into the nom crate; on a CONNECT that was a fifth of
/// the decode time. This wrapper is the same slice with every method
/// inlinable.
#[derive(Clone, Copy, Debug)]
struct Unread<'a>(&'a [u8]);

impl<'a> Input for Unread<'a> {
    type Item = u8;
    type Iter = Copied<Iter<'a, u8>>;
    type IterIndices = Enumerate<Self::Iter>;

    #[inline]
    fn input_len(&self) -> usize {
        self.0.len()
    }

    // nom passes only indices up to `input_len`; out of range gives an
    // empty slice rather than a panic.
    #[inline]
    fn take(&self, index: usize) -> Self {
        Unread(self.0.get(..index).unwrap_or_default())
    }

    #[inline]
    fn take_from(&self, index: usize) -> Self {
        Unread(self.0.get(index..).unwrap_or_default())
    }

    #[inline]
    fn take_split(&self, index: usize) -> (Self, Self) {
        let (prefix, suffix) = self.0.split_at_checked(index).unwrap_or((self.0, &[]));
        (Unread(suffix), Unread(prefix))
    }

    #[inline]
    fn position<P>(&self, predicate: P) -> Option<usize>
    where
        P: Fn(u8) -> bool,
    {
        self.0.iter().position(|&b| predicate(b))
    }

    #[inline]
    fn iter_elements(&self) -> Self::Iter {
        self.0.iter().copied()
    }

    #[inline]
    fn iter_indices(&self) -> Self::IterIndices {
        self.iter_elements().enumerate()
    }

    #[inline]
    fn slice_index(&self, count: usize) -> Result<usize, Needed> {
        if self.0.len() >= count {
            Ok(count)
        } else {
            Err(Needed::new(count - self.0.len()))
        }
    }
}

/// nom's search for a one-byte needle in a byte slice is `memchr`, which
/// finds a NUL in a header or a macro value several bytes at a time.
impl FindSubstring<&[u8]> for Unread<'_> {
    #[inline]
    fn find_substring(&self, substr: &[u8]) -> Option<usize> {
        self.0.find_substring(substr)
    }
}

/// A NUL-terminated string.
#[inline]
fn cstr(input: Unread<'_>) -> IResult<Unread<'_>, Unread<'_>> {
    terminated(take_until(&b"\0"[..]), nom_char('\0')).parse(input)
}

/// Walks one payload.
pub(crate) struct Reader<'a> {
    payload: &'a Bytes,
    rest: &'a [u8],
    code: char,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(code: u8, payload: &'a Bytes) -> Self {
        Self {
            payload,
            rest: payload.as_ref(),
            code: char::from(code),
        }
    }

    fn view(&self, part: &[u8]) -> Bytes {
        if part.is_empty() {
            Bytes::new()
        } else {
            self.payload.slice_ref(part)
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// A NUL-terminated string, without its NUL.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        self.cstr_slice(field).map(|s| self.view(s))
    }

    /// A NUL-terminated string, without its NUL, borrowed rather than
    /// shared: for fields that are parsed and not kept.
    pub(crate) fn cstr_slice(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        match cstr(Unread(self.rest)) {
            Ok((rest, s)) => {
                self.rest = rest.0;
                Ok(s.0)
            }
            Err(_) => Err(DecodeError::MissingNul {
                code: self.code,
                field,
            }),
        }
    }

    /// A NUL-terminated string that must not be empty.
    pub(crate) fn nonempty_cstr(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let s = self.cstr(field)?;
        if s.is_empty() {
            return Err(DecodeError::Empty {
                code: self.code,
                field,
            });
        }
        Ok(s)
    }

    /// A string up to its NUL, or up to the end when there is none.
    pub(crate) fn lenient_cstr(&mut self) -> Bytes {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.rest.len());
        let (s, rest) = self.rest.split_at(end);
        self.rest = rest.get(1..).unwrap_or_default();
        self.view(s)
    }

    fn number<T>(
        &mut self,
        field: &'static str,
        parser: fn(Unread<'a>) -> IResult<Unread<'a>, T>,
    ) -> Result<T, DecodeError> {
        match parser(Unread(self.rest)) {
            Ok((rest, n)) => {
                self.rest = rest.0;
                Ok(n)
            }
            Err(_) => Err(DecodeError::Truncated {
                code: self.code,
                field,
            }),
        }
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.number(field, be_u32)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.number(field, be_u16)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.number(field, nom_u8)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        let rest = self.view(self.rest);
        self.rest = &[];
        rest
    }

    /// Everything left, as one view, once `walk` (called until nothing is
    /// left) has checked it: validates repeated fields without a view each.
    pub(crate) fn rest_walked(
        &mut self,
        mut walk: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<Bytes, DecodeError> {
        let start = self.rest;
        while !self.is_empty() {
            walk(self)?;
        }
        Ok(self.view(start))
    }

    /// Everything left up to and including its last NUL; bytes after the
    /// last NUL are dropped, as libmilter does with argument vectors.
    pub(crate) fn rest_to_last_nul(&mut self) -> Bytes {
        let end = self.rest.iter().rposition(|&b| b == 0).map_or(0, |p| p + 1);
        let (s, _) = self.rest.split_at(end);
        self.rest = &[];
        self.view(s)
    }

    /// Fails if anything is left.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingData {
                code: self.code,
                len: self.rest.len(),
            })
        }
    }

    /// Fails unless the payload is empty.
    pub(crate) fn empty(code: u8, payload: &Bytes) -> Result<(), DecodeError> {
        Reader::new(code, payload).finish()
    }
}

/// Writes one frame: header first with a placeholder length, fields, then the
/// length is patched. On error `dst` is left as it was.
pub(crate) struct Writer<'a> {
    dst: &'a mut BytesMut,
    start: usize,
    error: Option<EncodeError>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(dst: &'a mut BytesMut, code: u8) -> Self {
        let start = dst.len();
        // The length (patched by `finish`) and the code, in one copy.
        dst.extend_from_slice(&[0, 0, 0, 0, code]);
        Self {
            dst,
            start,
            error: None,
        }
    }

    pub(crate) fn u32(&mut self, n: u32) -> &mut Self {
        self.dst.put_u32(n);
        self
    }

    pub(crate) fn u16(&mut self, n: u16) -> &mut Self {
        self.dst.put_u16(n);
        self
    }

    pub(crate) fn u8(&mut self, n: u8) -> &mut Self {
        self.dst.put_u8(n);
        self
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.dst.put_slice(bytes);
        self
    }

    /// A string and its NUL; the string must not contain NUL.
    pub(crate) fn cstr(&mut self, field: &'static str, s: &[u8]) -> &mut Self {
        if s.contains(&0) && self.error.is_none() {
            self.error = Some(EncodeError::InteriorNul { field });
        }
        self.dst.put_slice(s);
        self.dst.put_u8(0);
        self
    }

    /// An IP address as text, and its NUL.
    pub(crate) fn ip(&mut self, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(v4) => crate::addr::write_ipv4(self.dst, v4),
            // Straight into the buffer, no `String` on the way. Writing to
            // a `BytesMut` cannot fail.
            IpAddr::V6(v6) => {
                let _ = write!(self.dst, "{v6}");
            }
        }
        self.dst.put_u8(0);
        self
    }

    /// As [`Writer::cstr`], and the string must not be empty.
    pub(crate) fn nonempty_cstr(&mut self, field: &'static str, s: &[u8]) -> &mut Self {
        if s.is_empty() && self.error.is_none() {
            self.error = Some(EncodeError::Empty { field });
        }
        self.cstr(field, s)
    }

    /// Checks the payload size and patches the length.
    pub(crate) fn finish(self, max_payload: usize) -> Result<(), EncodeError> {
        let payload_len = self.dst.len() - self.start - 5;
        let result = match self.error {
            Some(e) => Err(e),
            None => frame_len(payload_len, max_payload),
        };
        match result {
            Ok(len) => {
                if let Some(field) = self.dst.get_mut(self.start..self.start + 4) {
                    field.copy_from_slice(&len.to_be_bytes());
                }
                Ok(())
            }
            Err(e) => {
                self.dst.truncate(self.start);
                Err(e)
            }
        }
    }
}
