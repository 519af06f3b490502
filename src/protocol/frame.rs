//! RFC 6455 §5.2 frame headers: decode from the bytes where they landed, encode, and unmask in place.

use super::ProtocolError;

/// Longest possible frame header: 2 bytes, an 8-byte extended length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which end of the connection this code plays; it decides who masks (§5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads masked frames, writes unmasked ones.
    Server,
    /// Reads unmasked frames, writes masked ones.
    Client,
}

/// Frame opcodes of §5.2; the reserved ones are rejected when decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames are the opcodes with the high bit set (§5.5).
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// A decoded frame header; the payload follows it at `header_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: "Per-Message Compressed" with permessage-deflate (RFC 7692 §6); the session
    /// decides whether it is allowed.
    pub rsv1: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    pub header_len: usize,
}

/// Decodes the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole header: short input is not an error.
/// Every rule that the header alone can break is checked here, so a caller never buffers the
/// payload of a frame that is already known to be invalid.
pub fn decode_header(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, ProtocolError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let (b0, b1) = (*b0, *b1);
    // §5.2: "MUST be 0 unless an extension is negotiated"; wsd negotiates only
    // permessage-deflate, which defines RSV1 alone (RFC 7692 §6).
    if b0 & 0x30 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(ProtocolError::UnknownOpCode)?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    // §5.1: a server MUST close on an unmasked client frame; a client on a masked server frame.
    if masked != (role == Role::Server) {
        return Err(ProtocolError::Masking);
    }
    // The 7-bit length, or 126/127 for a 16/64-bit length that follows (§5.2).
    let (payload_len, rest) = match b1 & 0x7F {
        126 => match rest.split_first_chunk::<2>() {
            Some((len, rest)) => (u64::from(u16::from_be_bytes(*len)), rest),
            None => return Ok(None),
        },
        127 => match rest.split_first_chunk::<8>() {
            Some((len, rest)) => (u64::from_be_bytes(*len), rest),
            None => return Ok(None),
        },
        n => (u64::from(n), rest),
    };
    // §5.2: "the most significant bit MUST be 0" for the 64-bit length.
    if payload_len >> 63 != 0 {
        return Err(ProtocolError::FrameLength);
    }
    if opcode.is_control() {
        // §5.5: "All control frames MUST have a payload length of 125 bytes or less and MUST NOT
        // be fragmented."
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if payload_len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    let (mask, rest) = if masked {
        match rest.split_first_chunk::<4>() {
            Some((key, rest)) => (Some(*key), rest),
            None => return Ok(None),
        }
    } else {
        (None, rest)
    };
    Ok(Some(FrameHeader {
        fin,
        rsv1: b0 & RSV1 != 0,
        opcode,
        mask,
        payload_len,
        // `rest` is what follows the header in `buf` (at most 14 bytes in), so this never wraps.
        header_len: buf.len().wrapping_sub(rest.len()),
    }))
}

/// Writes a frame header into `out` and returns its length.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    // The shortest length form (§5.2); `key` is where the masking key goes.
    let (len, key): (usize, &mut [u8; 4]) = match payload_len {
        0..=125 => {
            out[1] = mask_bit | payload_len as u8;
            let [_, _, key @ .., _, _, _, _, _, _, _, _] = out;
            (2, key)
        }
        126..=0xFFFF => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            let [_, _, _, _, key @ .., _, _, _, _, _, _] = out;
            (4, key)
        }
        _ => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            let [_, _, _, _, _, _, _, _, _, _, key @ ..] = out;
            (10, key)
        }
    };
    match mask {
        Some(m) => {
            *key = m;
            // At most 10 + 4: never wraps.
            len.wrapping_add(4)
        }
        None => len,
    }
}

/// Appends a whole frame (header and payload, masked with `mask` if given) to `out`.
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, opcode, payload.len(), mask);
    let header = header.get(..n).unwrap_or_default();
    out.reserve(header.len().saturating_add(payload.len()));
    out.extend_from_slice(header);
    let start = out.len();
    out.extend_from_slice(payload);
    if let (Some(m), Some(written)) = (mask, out.get_mut(start..)) {
        unmask(written, m, 0);
    }
}

/// Appends a whole frame with RSV1 set: the first frame of a compressed message (RFC 7692 §6).
pub fn write_frame_rsv1(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let start = out.len();
    write_frame(out, true, opcode, payload, mask);
    if let Some(b0) = out.get_mut(start) {
        *b0 |= RSV1;
    }
}

/// The RSV1 bit of a frame's first byte.
const RSV1: u8 = 0x40;

/// XORs `data` with the masking key in place (§5.3), eight bytes at a time.
///
/// `offset` is the position of `data[0]` within the frame payload, so that a payload can be
/// unmasked piece by piece as it arrives. Masking and unmasking are the same operation.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let key = rotate_mask(mask, offset);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// The key as seen by a byte at payload position `offset` (a whole chunk of 8 is a multiple of 4,
/// so the remainder after the wide loop starts on the same phase).
fn rotate_mask(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let mut key = mask;
    key.rotate_left(offset % 4);
    key
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    fn decode(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        decode_header(buf, Role::Server)
    }

    /// §5.7: a single-frame masked text message containing "Hello".
    #[test]
    fn rfc_masked_hello() {
        let mut frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = decode(&frame).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Text);
        assert!(h.fin);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.header_len, 6);
        let mask = h.mask.unwrap();
        unmask(&mut frame[6..], mask, 0);
        assert_eq!(&frame[6..], b"Hello");
    }

    /// §5.7: unmasked frames are what a client reads.
    #[test]
    fn rfc_unmasked_frames_for_client() {
        let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let h = decode_header(&hello, Role::Client).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.payload_len, h.header_len),
            (OpCode::Text, 5, 2)
        );
        // The same frame sent to a server is a masking error.
        assert_eq!(decode(&hello), Err(ProtocolError::Masking));
        // A fragmented unmasked text message: "Hel" then "lo".
        let first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let second = [0x80, 0x02, 0x6c, 0x6f];
        let a = decode_header(&first, Role::Client).unwrap().unwrap();
        let b = decode_header(&second, Role::Client).unwrap().unwrap();
        assert!(!a.fin && a.opcode == OpCode::Text);
        assert!(b.fin && b.opcode == OpCode::Continuation);
    }

    /// §5.7: 256 bytes and 64 KiB binary messages use the 16- and 64-bit lengths.
    #[test]
    fn rfc_extended_lengths() {
        let h = decode_header(&[0x82, 0x7E, 0x01, 0x00], Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, h.header_len), (256, 4));
        let h = decode_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0], Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, h.header_len), (65536, 10));
    }

    #[test]
    fn short_input_needs_more() {
        let frame = [0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4];
        for end in 0..frame.len() {
            assert_eq!(decode(&frame[..end]), Ok(None), "prefix of {end} bytes");
        }
        assert!(decode(&frame).unwrap().is_some());
    }

    #[test]
    fn header_rules() {
        // RSV2 and RSV3 are never negotiated; RSV1 is reported for the session to judge.
        for b0 in [0xA1, 0x91, 0xF1] {
            assert_eq!(
                decode(&[b0, 0x80, 0, 0, 0, 0]),
                Err(ProtocolError::ReservedBits)
            );
        }
        assert!(decode(&[0xC1, 0x80, 0, 0, 0, 0]).unwrap().unwrap().rsv1);
        assert_eq!(
            decode(&[0x83, 0x80, 0, 0, 0, 0]),
            Err(ProtocolError::UnknownOpCode)
        );
        assert_eq!(
            decode(&[0x8B, 0x80, 0, 0, 0, 0]),
            Err(ProtocolError::UnknownOpCode)
        );
        assert_eq!(
            decode(&[0x09, 0x80, 0, 0, 0, 0]),
            Err(ProtocolError::FragmentedControl)
        );
        assert_eq!(
            decode(&[0x89, 0xFE, 0, 126]),
            Err(ProtocolError::ControlTooLong)
        );
        assert!(decode(&[0x89, 0xFD, 0, 0, 0, 0]).unwrap().is_some());
        let huge = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode(&huge), Err(ProtocolError::FrameLength));
        let max = [
            0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0,
        ];
        assert_eq!(decode(&max).unwrap().unwrap().payload_len, (1 << 63) - 1);
    }

    #[test]
    fn encode_roundtrip_all_length_forms() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut hdr = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&mut hdr, true, OpCode::Binary, len, mask);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let h = decode_header(&hdr[..n], role).unwrap().unwrap();
                assert_eq!((h.payload_len, h.header_len, h.mask), (len as u64, n, mask));
            }
        }
    }

    #[test]
    fn unmask_in_pieces_equals_whole() {
        let mask = [0xA1, 0xB2, 0xC3, 0xD4];
        let plain: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut whole = plain.clone();
        unmask(&mut whole, mask, 0);
        let bytewise: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(whole, bytewise);
        for split in [1, 3, 5, 8, 13, 999] {
            let mut pieces = plain.clone();
            let (a, b) = pieces.split_at_mut(split);
            unmask(a, mask, 0);
            unmask(b, mask, split);
            assert_eq!(pieces, bytewise, "split at {split}");
        }
    }
}
