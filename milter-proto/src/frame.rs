//! Framing: `u32 len` (big endian, counts the command byte and the payload),
//! one command/response byte, `len - 1` payload bytes.
//!
//! [`FrameDecoder`] cuts frames out of a growing [`BytesMut`] without copying
//! the payload: each [`Frame`] holds a [`Bytes`] view into the read buffer.
//! The length is checked **before** any payload is buffered, so a hostile
//! length (`"GET "` read as a length is 1,195,725,856) costs nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{EncodeError, FrameError};

/// Bytes in the length prefix (`MILTER_LEN_BYTES`).
#[doc(alias = "MILTER_LEN_BYTES")]
pub const LEN_BYTES: usize = 4;

/// libmilter's default maximum payload, and the size of body chunks
/// (`MILTER_MAX_DATA_SIZE`, `MILTER_CHUNK_SIZE`).
#[doc(alias = "MILTER_MAX_DATA_SIZE")]
#[doc(alias = "MILTER_CHUNK_SIZE")]
pub const MAX_DATA_SIZE_64K: usize = 65535;

/// Maximum payload after `SMFIP_MDS_256K` was negotiated.
#[doc(alias = "MILTER_MDS_256K")]
pub const MAX_DATA_SIZE_256K: usize = 262_143;

/// Maximum payload after `SMFIP_MDS_1M` was negotiated.
#[doc(alias = "MILTER_MDS_1M")]
pub const MAX_DATA_SIZE_1M: usize = 1_048_575;

/// Body chunk size used by MTAs and by body replacement, whatever MDS says.
#[doc(alias = "MILTER_CHUNK_SIZE")]
pub const CHUNK_SIZE: usize = 65535;

/// Default inbound payload limit: 1 MiB. Postfix does not cap header packets
/// at 64 KiB (its `header_size_limit` is 102400), so the stock libmilter
/// limit would drop real mail.
pub const DEFAULT_MAX_INBOUND: usize = 1 << 20;

/// How far ahead [`FrameDecoder::decode`] reserves for a partial frame.
const RESERVE_AHEAD: usize = 64 * 1024;

/// One frame: a command or response byte and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command (`SMFIC_*`) or response (`SMFIR_*`) byte.
    pub code: u8,
    /// The payload, a view into the buffer it was read into.
    pub payload: Bytes,
}

/// Cuts frames out of a byte stream.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_INBOUND)
    }
}

impl FrameDecoder {
    /// A decoder accepting payloads of at most `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }

    /// The current payload limit.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Changes the payload limit, e.g. after MDS negotiation.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Takes one frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole frame yet; in that
    /// case it reserves room for the rest of the frame, at most 64 KiB ahead,
    /// so a peer that announces a large frame and then stalls pins little
    /// memory. Errors are fatal for the stream.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = buf.first_chunk::<LEN_BYTES>() else {
            return Ok(None);
        };
        let raw = *header;
        let len = u32::from_be_bytes(raw) as usize;
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        let payload_len = len - 1;
        if payload_len > self.max_payload {
            return Err(FrameError::TooLarge {
                len: payload_len,
                max: self.max_payload,
                raw,
            });
        }
        let total = LEN_BYTES + len;
        if buf.len() < total {
            buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        if len == 1 {
            // No payload (DATA, EOH, ABORT, QUIT, CONTINUE, ACCEPT, ...):
            // nothing to share, so no view of the buffer and no reference
            // count traffic.
            let code = buf.get(LEN_BYTES).copied().unwrap_or_default();
            buf.advance(total);
            return Ok(Some(Frame {
                code,
                payload: Bytes::new(),
            }));
        }
        buf.advance(LEN_BYTES);
        let mut frame = buf.split_to(len).freeze();
        let code = frame.get_u8();
        Ok(Some(Frame {
            code,
            payload: frame,
        }))
    }
}

/// The length field for a payload of `payload_len` bytes, after checking it
/// against `max_payload`.
pub(crate) fn frame_len(payload_len: usize, max_payload: usize) -> Result<u32, EncodeError> {
    let too_large = EncodeError::TooLarge {
        len: payload_len,
        max: max_payload,
    };
    if payload_len > max_payload {
        return Err(too_large);
    }
    u32::try_from(payload_len + 1).map_err(|_| too_large)
}

/// Encodes a raw frame (used for codes this crate does not model, and in tests).
pub fn encode_raw(
    dst: &mut BytesMut,
    code: u8,
    payload: &[u8],
    max_payload: usize,
) -> Result<(), EncodeError> {
    let len = frame_len(payload.len(), max_payload)?;
    dst.reserve(LEN_BYTES + 1 + payload.len());
    dst.put_u32(len);
    dst.put_u8(code);
    dst.put_slice(payload);
    Ok(())
}
