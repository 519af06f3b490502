//! The message assembler inside a server session: sequences of frames with fragmentation,
//! interleaved control frames and UTF-8 split anywhere, the bytes cut into pieces anywhere.
//! The session's verdict must equal a simple reference model that validates with
//! `std::str::from_utf8` on the whole message (and on its prefix, for failing fast).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsd::protocol::frame::OpCode;
use wsd::protocol::session::Limits;
use wsd::protocol::ProtocolError;
use wsd_fuzz::{client_frame, limits_from, Driver, OutFrame, Seen};

/// One frame as the input describes it.
struct Spec<'a> {
    fin: bool,
    opcode_bits: u8,
    payload: &'a [u8],
}

/// Opcodes the 3-bit kind field picks: every real one, and two reserved ones.
const OPCODES: [u8; 8] = [0x0, 0x1, 0x2, 0x9, 0xA, 0x8, 0x3, 0xB];

fuzz_target!(|data: &[u8]| {
    let [limits_byte, split_seed, rest @ ..] = data else {
        return;
    };
    let mut rest = rest;
    let limits = limits_from(*limits_byte);
    // Frames: a header byte (FIN, kind, mask choice), a length byte, then that many payload bytes.
    let mut specs = Vec::new();
    let mut wire = Vec::new();
    while let [head, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, after) = tail.split_at(n);
        let spec = Spec {
            fin: head & 0x80 != 0,
            opcode_bits: OPCODES[usize::from((head >> 4) & 0x7)],
            payload,
        };
        let mask = [*head, head.wrapping_mul(3), *len, 0xA5];
        client_frame(&mut wire, spec.fin, spec.opcode_bits, spec.payload, mask);
        specs.push(spec);
        rest = after;
    }

    // Feed the bytes in pieces whose sizes come from the input.
    let mut driver = Driver::new(limits);
    let mut state = u64::from(*split_seed) << 8 | 0x9E;
    let mut at = 0;
    while at < wire.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let piece = 1 + (state % u64::from(split_seed | 1)) as usize;
        let end = (at + piece).min(wire.len());
        driver.feed(&wire[at..end]);
        at = end;
    }

    let (events, frames, error) = model(&specs, limits);
    assert_eq!(driver.events, events, "events");
    assert_eq!(driver.error, error, "verdict");
    let got = driver.frames();
    assert_eq!(got.len(), frames.len(), "{got:?} vs {frames:?}");
    for (g, want) in got.iter().zip(&frames) {
        assert_eq!(g.opcode, want.opcode);
        if g.opcode == OpCode::Close {
            assert_eq!(g.close_code(), want.close_code());
        } else {
            assert_eq!(g.payload, want.payload);
        }
    }
});

/// What a server must make of these frames: the events, the frames it writes (echoes, Pongs,
/// its Close), and the error it fails with.
fn model(specs: &[Spec<'_>], limits: Limits) -> (Vec<Seen>, Vec<OutFrame>, Option<ProtocolError>) {
    let mut events = Vec::new();
    let mut out = Vec::new();
    // The open fragmented message: whether it is text, and its bytes so far.
    let mut open: Option<(bool, Vec<u8>)> = None;
    // The session fails with `e`: its Close is the last frame written.
    macro_rules! fail {
        ($e:expr) => {{
            let e: ProtocolError = $e;
            out.push(close_frame(e.close_code().0));
            return (events, out, Some(e));
        }};
    }
    for spec in specs {
        let len = spec.payload.len() as u64;
        let control = spec.opcode_bits & 0x8 != 0;
        match spec.opcode_bits {
            0x3 | 0xB => fail!(ProtocolError::UnknownOpCode),
            _ if control && !spec.fin => fail!(ProtocolError::FragmentedControl),
            _ if control && len > 125 => fail!(ProtocolError::ControlTooLong),
            _ => {}
        }
        match spec.opcode_bits {
            0x9 => {
                events.push(Seen::Ping(spec.payload.to_vec()));
                out.push(OutFrame {
                    opcode: OpCode::Pong,
                    payload: spec.payload.to_vec(),
                });
            }
            0xA => events.push(Seen::Pong(spec.payload.to_vec())),
            0x8 => {
                let p = spec.payload;
                if p.len() == 1 {
                    fail!(ProtocolError::InvalidClosePayload);
                }
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                if code.is_some_and(|c| !matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)) {
                    fail!(ProtocolError::InvalidClosePayload);
                }
                let Ok(reason) = std::str::from_utf8(p.get(2..).unwrap_or_default()) else {
                    fail!(ProtocolError::InvalidUtf8);
                };
                events.push(Seen::Close(code, reason.to_owned()));
                out.push(close_frame(code.unwrap_or(1000)));
                return (events, out, None);
            }
            bits => {
                if len > limits.max_frame_size {
                    fail!(ProtocolError::FrameTooBig);
                }
                match (bits, &open) {
                    (0x0, None) => fail!(ProtocolError::UnexpectedContinuation),
                    (0x1 | 0x2, Some(_)) => fail!(ProtocolError::ExpectedContinuation),
                    _ => {}
                }
                let (text, mut bytes) = open.take().unwrap_or((bits == 0x1, Vec::new()));
                if bytes.len() as u64 + len > limits.max_message_size {
                    fail!(ProtocolError::MessageTooBig);
                }
                bytes.extend_from_slice(spec.payload);
                if text {
                    // Fail fast: bytes that no continuation can make UTF-8 end it now.
                    if let Err(e) = std::str::from_utf8(&bytes) {
                        if e.error_len().is_some() || spec.fin {
                            fail!(ProtocolError::InvalidUtf8);
                        }
                    }
                }
                if !spec.fin {
                    open = Some((text, bytes));
                    continue;
                }
                let (event, opcode) = if text {
                    (
                        Seen::Text(String::from_utf8(bytes.clone()).unwrap()),
                        OpCode::Text,
                    )
                } else {
                    (Seen::Binary(bytes.clone()), OpCode::Binary)
                };
                events.push(event);
                out.push(OutFrame {
                    opcode,
                    payload: bytes,
                });
            }
        }
    }
    (events, out, None)
}

fn close_frame(code: u16) -> OutFrame {
    OutFrame {
        opcode: OpCode::Close,
        payload: code.to_be_bytes().to_vec(),
    }
}
