//! The permessage-deflate inflate path with the message size limit: arbitrary bytes as the
//! compressed payload of one message (cut into frames where the input says), through the
//! loop's shared `Inflater` and through a server `Session` that negotiated the extension.
//!
//! Invariants:
//! - no panic, whatever the bytes, the pieces and the dictionary;
//! - the inflated output never exceeds the limit, and the inflater's buffer never grows past
//!   `limit + 1` bytes (a decompression bomb is stopped, not inflated);
//! - inflating is independent of how the payload is cut into pieces;
//! - what `Deflater` compresses (with the same dictionary) inflates back to the same bytes;
//! - a session fails a message over the limit with 1009 and never hands the handler more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsd::protocol::deflate::{negotiate, Deflater, Inflater, Mode};
use wsd::protocol::frame::{write_frame, OpCode};
use wsd::protocol::session::{Event, Inflate, Input, Limits, Session};
use wsd::protocol::{ProtocolError, Role};

/// Limits small enough that bombs are common: 64 bytes to 64 KiB.
fn limit_from(byte: u8) -> usize {
    64usize << (byte % 11)
}

fuzz_target!(|data: &[u8]| {
    // [limit][split][dictionary length][dictionary …][payload …]
    let [limit_byte, split, dict_len, rest @ ..] = data else {
        return;
    };
    let limit = limit_from(*limit_byte);
    let (dictionary, payload) = rest.split_at(usize::from(*dict_len).min(rest.len()));
    let split = usize::from(*split).min(payload.len());
    let mut inflater = Inflater::default();

    // Whole and in two pieces: the same answer.
    let whole = inflater
        .inflate(dictionary, &[payload], limit)
        .map(<[u8]>::to_vec);
    let (a, b) = payload.split_at(split);
    let pieces = inflater.inflate(dictionary, &[a, b], limit).map(<[u8]>::to_vec);
    assert_eq!(whole, pieces);
    if let Ok(out) = &whole {
        assert!(out.len() <= limit);
    }

    // Anything compressed inflates back, from the same dictionary.
    let window = 9 + (limit_byte % 7);
    let compressed = Deflater::default()
        .compress(window, dictionary, payload)
        .to_vec();
    let back = inflater.inflate(dictionary, &[&compressed], usize::MAX);
    assert_eq!(back, Ok(payload));

    // Through a session (shared mode: no dictionary): the payload as a compressed binary
    // message in two frames.
    let whole = inflater.inflate(&[], &[payload], limit).map(<[u8]>::to_vec);
    let limits = Limits {
        max_frame_size: 1 << 20,
        max_message_size: limit as u64,
    };
    let mut session = Session::new(Role::Server, limits, 0);
    session.set_deflate(negotiate([&b"permessage-deflate"[..]], Mode::Shared));
    let mut input = Vec::new();
    write_frame(&mut input, false, OpCode::Binary, a, Some([1, 2, 3, 4]));
    input[0] |= 0x40; // RSV1: compressed.
    write_frame(&mut input, true, OpCode::Continuation, b, Some([5, 6, 7, 8]));
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let inflate = Inflate {
            inflater: &mut inflater,
            window: None,
        };
        match session.poll_input_ext(&mut input[pos..], &mut out, Some(inflate)) {
            Ok(Input::NeedMore { .. }) => break,
            Ok(Input::Consumed { consumed, event }) => {
                assert!(consumed > 0);
                pos += consumed;
                if let Some(Event::Message(m)) = event {
                    assert!(m.len() <= limit);
                    assert_eq!(Ok(m.as_bytes()), whole.as_deref());
                }
            }
            Err(e) => {
                if whole.as_ref().is_err_and(|w| *w == ProtocolError::MessageTooBig) {
                    // Over the limit: 1009 (unless its compressed size alone was over it).
                    assert_eq!(e, ProtocolError::MessageTooBig);
                }
                break;
            }
        }
    }
});
