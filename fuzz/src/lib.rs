//! Shared pieces of the fuzz targets: a client-frame builder, a driver that runs a server
//! [`Session`] the way the event loop does, and a checker for everything a server may write.

use wsd::protocol::close::CloseState;
use wsd::protocol::frame::{
    decode_header, write_frame, OpCode, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
use wsd::protocol::session::{Input, Limits};
use wsd::protocol::{Event, Message, ProtocolError, Session};

/// The largest Close frame a server writes: a 2-byte header, a 2-byte code, a 123-byte reason.
pub const MAX_CLOSE_FRAME: usize = 2 + 125;

/// Limits picked by one input byte, from "everything is too big" to the daemon's defaults.
pub fn limits_from(byte: u8) -> Limits {
    const FRAME: [u64; 6] = [1, 8, 126, 1024, 65536, 16 << 20];
    let frame = FRAME[usize::from(byte % 6)];
    let message = frame.saturating_mul(1 << ((byte >> 4) % 4));
    Limits {
        // As `Config::limits` does: a frame is never allowed to be larger than a message.
        max_frame_size: frame.min(message),
        max_message_size: message,
    }
}

/// A masked client frame with any opcode bits (reserved ones included) and the shortest length.
pub fn client_frame(out: &mut Vec<u8>, fin: bool, opcode_bits: u8, payload: &[u8], mask: [u8; 4]) {
    out.push((u8::from(fin) << 7) | (opcode_bits & 0x0F));
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// An event copied out of the session's borrow, for comparing with a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl Seen {
    fn of(event: &Event<'_>) -> Seen {
        match event {
            Event::Message(Message::Text(s)) => Seen::Text((*s).to_owned()),
            Event::Message(Message::Binary(b)) => Seen::Binary(b.to_vec()),
            Event::Ping(p) => Seen::Ping(p.to_vec()),
            Event::Pong(p) => Seen::Pong(p.to_vec()),
            Event::Close(c) => Seen::Close(c.code.map(|c| c.0), c.reason.to_owned()),
        }
    }
}

/// One frame the server wrote, as a client decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutFrame {
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

impl OutFrame {
    pub fn close_code(&self) -> Option<u16> {
        match self.payload.as_slice() {
            [hi, lo, ..] if self.opcode == OpCode::Close => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

/// Runs a server session over input that arrives in pieces, exactly as `server/conn.rs` does:
/// unconsumed bytes stay at the front and are passed again with the next piece; every message
/// is echoed while the session is open.
pub struct Driver {
    pub session: Session,
    limits: Limits,
    pending: Vec<u8>,
    pub out: Vec<u8>,
    pub events: Vec<Seen>,
    pub error: Option<ProtocolError>,
    /// Bytes fed so far.
    pub fed: usize,
    /// Output length at the moment the session first left `Open` (its Close, if any, follows).
    closed_at: Option<usize>,
}

impl Driver {
    pub fn new(limits: Limits) -> Driver {
        Driver {
            session: Session::new(Role::Server, limits, 0),
            limits,
            pending: Vec::new(),
            out: Vec::new(),
            events: Vec::new(),
            error: None,
            fed: 0,
            closed_at: None,
        }
    }

    /// Feeds one piece and runs the session until it needs more; checks the per-step contract.
    pub fn feed(&mut self, piece: &[u8]) {
        self.pending.extend_from_slice(piece);
        self.fed += piece.len();
        let mut pos = 0;
        // Every step consumes at least one byte, so this many steps always suffice.
        for _ in 0..=self.pending.len() {
            let before = self.session.close_state();
            let open = before == CloseState::Open;
            let rest = self.pending.len() - pos;
            let step = self
                .session
                .poll_input(&mut self.pending[pos..], &mut self.out);
            match step {
                Err(e) => {
                    assert!(self.error.is_none(), "a second error: {e:?}");
                    self.error = Some(e);
                    pos = self.pending.len();
                }
                Ok(Input::NeedMore { frame_len }) => {
                    if let Some(len) = frame_len {
                        assert!(len > rest as u64, "NeedMore for a frame already here");
                        // What a caller reserves for a partial frame is bounded by the limits
                        // (a control frame may carry 125 bytes whatever they are).
                        let payload = self.limits.max_frame_size.max(MAX_CONTROL_PAYLOAD as u64);
                        assert!(len <= payload + MAX_HEADER_LEN as u64, "frame_len {len}");
                    }
                    break;
                }
                Ok(Input::Consumed { consumed, event }) => {
                    assert!(
                        consumed > 0 && consumed <= rest,
                        "consumed {consumed} of {rest}"
                    );
                    pos += consumed;
                    if let Some(event) = event {
                        if let Event::Message(m) = &event {
                            assert!(open, "a message after the close handshake began");
                            // The echo handler, as `Reply::send` writes it.
                            let op = if m.is_text() {
                                OpCode::Text
                            } else {
                                OpCode::Binary
                            };
                            write_frame(&mut self.out, true, op, m.as_bytes(), None);
                        }
                        self.events.push(Seen::of(&event));
                    }
                    if pos == self.pending.len() {
                        break;
                    }
                    continue;
                }
            }
            break;
        }
        self.pending.drain(..pos);
        self.after_step();
    }

    /// Starts the closing handshake from our side, as a drain or a handler does.
    pub fn close(&mut self, code: u16, reason: &str) {
        let was_open = self.session.close_state() == CloseState::Open;
        let started = self
            .session
            .close(wsd::protocol::CloseCode(code), reason, &mut self.out);
        assert_eq!(started, was_open);
        self.after_step();
    }

    fn after_step(&mut self) {
        let state = self.session.close_state();
        match self.closed_at {
            None if state != CloseState::Open => {
                // The session just left `Open`: at most its one Close may have been written by
                // the step that did it, and it must be the last frame.
                // Leaving `Open` always writes our Close (an answer, a failure or our own).
                let frames = check_output(&self.out);
                let last = frames.last().expect("a Close when leaving Open");
                assert_eq!(last.opcode, OpCode::Close, "the last frame is our Close");
                self.closed_at = Some(self.out.len() - encoded_len(last));
            }
            Some(at) => {
                // After the session left `Open`, nothing but its one Close is ever written.
                let tail = check_output(&self.out[at..]);
                assert!(tail.len() <= 1, "frames after the close: {tail:?}");
                if let Some(f) = tail.first() {
                    assert_eq!(f.opcode, OpCode::Close);
                }
            }
            None => {}
        }
        // The bound: each echo and each Pong is no longer than the frames it answers (a client
        // frame carries a 4-byte mask the answer does not), so output never exceeds the input
        // plus one Close frame.
        assert!(
            self.out.len() <= self.fed + MAX_CLOSE_FRAME,
            "{} bytes out for {} in",
            self.out.len(),
            self.fed
        );
    }

    /// Checks the whole output and returns its frames.
    pub fn frames(&self) -> Vec<OutFrame> {
        check_output(&self.out)
    }
}

fn encoded_len(f: &OutFrame) -> usize {
    let n = f.payload.len();
    n + match n {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Decodes server output as a client would: whole, unmasked, final frames, nothing after a Close.
pub fn check_output(mut out: &[u8]) -> Vec<OutFrame> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        let h = decode_header(out, Role::Client)
            .unwrap_or_else(|e| panic!("bad server frame: {e:?}"))
            .expect("a truncated server frame header");
        assert!(h.fin, "wsd never fragments what it writes");
        assert!(h.mask.is_none());
        let end = h.header_len + usize::try_from(h.payload_len).expect("length fits");
        assert!(end <= out.len(), "a truncated server frame payload");
        if let Some(last) = frames.last() {
            let last: &OutFrame = last;
            assert_ne!(last.opcode, OpCode::Close, "a frame after our Close");
        }
        let f = OutFrame {
            opcode: h.opcode,
            payload: out[h.header_len..end].to_vec(),
        };
        if f.opcode == OpCode::Close {
            check_close_frame(&f);
        }
        frames.push(f);
        out = &out[end..];
    }
    frames
}

fn check_close_frame(f: &OutFrame) {
    let code = f
        .close_code()
        .expect("wsd's Close frames always carry a code");
    assert!(
        wsd::protocol::CloseCode(code).is_sendable(),
        "unsendable close code {code}"
    );
    std::str::from_utf8(&f.payload[2..]).expect("close reason is UTF-8");
}
