//! Frame header decode in both roles, the encode→decode round trip, and in-place unmasking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsd::protocol::frame::{
    decode_header, encode_header, unmask, OpCode, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    for role in [Role::Server, Role::Client] {
        decode_and_reencode(data, role);
    }
    encode_then_decode(data);
    unmask_pieces(data);
});

/// Whatever decodes re-encodes to a header that decodes to the same frame.
fn decode_and_reencode(data: &[u8], role: Role) {
    let h = match decode_header(data, role) {
        Ok(Some(h)) => h,
        Ok(None) => {
            assert!(
                data.len() < MAX_HEADER_LEN,
                "need more with a whole header here"
            );
            return;
        }
        Err(_) => return,
    };
    assert!(h.header_len <= data.len() && h.header_len <= MAX_HEADER_LEN);
    assert_eq!(h.mask.is_some(), role == Role::Server);
    assert!(h.payload_len < 1 << 63);
    if h.opcode.is_control() {
        assert!(h.fin && h.payload_len <= MAX_CONTROL_PAYLOAD as u64);
    }
    // The header alone decodes the same; one byte less is not enough.
    assert_eq!(decode_header(&data[..h.header_len], role), Ok(Some(h)));
    assert_eq!(decode_header(&data[..h.header_len - 1], role), Ok(None));
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut buf, h.fin, h.opcode, h.payload_len as usize, h.mask);
    // The encoder picks the shortest length form, so it is never longer than the input's.
    assert!(n <= h.header_len);
    let again = decode_header(&buf[..n], role).unwrap().unwrap();
    assert_eq!(
        (
            again.fin,
            again.opcode,
            again.mask,
            again.payload_len,
            again.header_len
        ),
        (h.fin, h.opcode, h.mask, h.payload_len, n)
    );
}

/// Encoding any fields and decoding them gives them back, or the error the fields deserve.
fn encode_then_decode(data: &[u8]) {
    let [flags, rest @ ..] = data else { return };
    let mut len_bytes = [0u8; 8];
    for (d, s) in len_bytes.iter_mut().zip(rest) {
        *d = *s;
    }
    // Lengths of every size class, up to the largest a header can carry.
    let len = (u64::from_be_bytes(len_bytes) >> (flags & 0x3F)) & (u64::MAX >> 1);
    let opcode = [
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ][usize::from(flags % 6)];
    let fin = flags & 0x40 != 0;
    let mask = (flags & 0x80 != 0).then_some([rest.len() as u8, 1, 2, *flags]);
    let role = if mask.is_some() {
        Role::Server
    } else {
        Role::Client
    };
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut buf, fin, opcode, len as usize, mask);
    let decoded = decode_header(&buf[..n], role);
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        // §5.5: control frames are never fragmented and carry at most 125 bytes.
        assert!(decoded.is_err());
    } else {
        let h = decoded.unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.payload_len, h.header_len),
            (fin, opcode, mask, len, n)
        );
    }
}

/// Unmasking in two pieces at any split equals unmasking bytewise; twice is the identity.
fn unmask_pieces(data: &[u8]) {
    let [a, b, c, d, split, payload @ ..] = data else {
        return;
    };
    let mask = [*a, *b, *c, *d];
    let split = usize::from(*split).min(payload.len());
    let mut pieces = payload.to_vec();
    let (first, second) = pieces.split_at_mut(split);
    unmask(first, mask, 0);
    unmask(second, mask, split);
    let bytewise: Vec<u8> = payload
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i % 4])
        .collect();
    assert_eq!(pieces, bytewise);
    unmask(&mut pieces, mask, 0);
    assert_eq!(pieces, payload);
}
