//! permessage-deflate (RFC 7692): the negotiation of §5 and §7.1, and the codec of §7.2.
//!
//! The codec holds no per-connection stream. A loop owns one [`Deflater`] and one [`Inflater`];
//! each message is compressed or inflated in one call, starting from a reset stream. Context
//! takeover (§7.1.1) is kept as plain bytes: the last bytes of a connection's stream, which
//! the caller stores and passes back as the dictionary of its next message. A connection that
//! agreed to no context takeover (the `shared` mode) therefore costs nothing at all, and one with
//! context costs only its window bytes, never a zlib stream (~300 KiB at the zlib defaults).
//!
//! Backend: `flate2` over `zlib-rs` (pure Rust). miniz_oxide, flate2's default, can neither
//! compress with a window below 32 KiB nor set a dictionary, and both are needed here: a client's
//! `server_max_window_bits` (§7.1.2.1) binds the compressor, and context takeover needs the
//! dictionary.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{write_frame_rsv1, OpCode};
use super::ProtocolError;

/// The extension's registered name (§7).
pub const EXTENSION: &str = "permessage-deflate";
/// Smallest window wsd compresses with: zlib turns a raw 8-bit window into 9 bits, whose
/// matches a peer holding 256 bytes could not follow (an offer asking for 8 is declined).
pub const MIN_WINDOW_BITS: u8 = 9;
/// The largest LZ77 window of DEFLATE, 32 KiB (§7.1.2).
pub const MAX_WINDOW_BITS: u8 = 15;
/// §7.2.1: the empty stored block a sync flush ends with; removed after compressing, appended
/// before inflating.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// zlib level of the compressor: 6 is zlib's default balance of ratio and speed.
const LEVEL: u32 = 6;
/// First output room of an inflate; it then doubles, never past the message limit.
const INFLATE_STEP: usize = 16 * 1024;
/// Inflate output capacity kept between messages; a larger message's buffer is given back.
const INFLATE_KEEP: usize = 256 * 1024;
/// Compressor output capacity kept between messages.
const DEFLATE_KEEP: usize = 256 * 1024;
/// Most `Sec-WebSocket-Extensions` headers a request's offers are read from.
pub const MAX_EXTENSION_HEADERS: usize = 4;

/// How wsd answers an offer of the extension (`compression` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Never negotiated: frames with RSV1 fail the connection.
    Off,
    /// No context takeover either way: nothing kept per connection.
    Shared,
    /// Context takeover both ways where the client allows it, windows of at most `window_bits`.
    Context { window_bits: u8 },
}

/// What one connection agreed to (a few bytes, kept in its session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// We start every message from an empty window.
    pub server_no_context: bool,
    /// The client starts every message from an empty window.
    pub client_no_context: bool,
    /// Window we compress with.
    pub server_window: u8,
    /// Window the client compresses with: the history our dictionary must keep.
    pub client_window: u8,
    /// Which window sizes our response names ([`ANSWER_SERVER_WINDOW`],
    /// [`ANSWER_CLIENT_WINDOW`]): bits rather than two `Option`s keep a session small.
    answer: u8,
}

/// [`Agreed::answer`]: the response names `server_max_window_bits`.
const ANSWER_SERVER_WINDOW: u8 = 1;
/// [`Agreed::answer`]: the response names `client_max_window_bits`.
const ANSWER_CLIENT_WINDOW: u8 = 2;

impl Agreed {
    /// Bytes of the client's stream kept for its next message (0 without context takeover).
    pub fn inflate_keep(&self) -> usize {
        if self.client_no_context {
            0
        } else {
            1usize << self.client_window.min(MAX_WINDOW_BITS)
        }
    }

    /// Bytes of our own stream kept as the next message's dictionary (0 without context
    /// takeover). Half the window: the dictionary is ours to size (a peer's window always
    /// holds at least what we refer to), and most of the ratio on small messages comes from
    /// the most recent bytes.
    pub fn deflate_keep(&self) -> usize {
        if self.server_no_context {
            0
        } else {
            (1usize << self.server_window.min(MAX_WINDOW_BITS)) / 2
        }
    }

    /// The agreement as plain bytes (for a live upgrade's state).
    pub fn to_bytes(&self) -> [u8; 5] {
        [
            u8::from(self.server_no_context),
            u8::from(self.client_no_context),
            self.server_window,
            self.client_window,
            self.answer,
        ]
    }

    /// An agreement from [`Agreed::to_bytes`]; `None` if the bytes are not one.
    pub fn from_bytes(bytes: [u8; 5]) -> Option<Agreed> {
        let [server_no_context, client_no_context, server_window, client_window, answer] = bytes;
        let flag = |b: u8| (b <= 1).then_some(b == 1);
        let window = |w: u8| {
            (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
                .contains(&w)
                .then_some(w)
        };
        Some(Agreed {
            server_no_context: flag(server_no_context)?,
            client_no_context: flag(client_no_context)?,
            server_window: window(server_window)?,
            client_window: window(client_window)?,
            answer: (answer <= (ANSWER_SERVER_WINDOW | ANSWER_CLIENT_WINDOW)).then_some(answer)?,
        })
    }

    /// The same agreement used without our context: a message compressed from an empty
    /// dictionary, always valid (context takeover lets us refer back, never makes us).
    pub fn without_server_context(mut self) -> Agreed {
        self.server_no_context = true;
        self
    }

    /// Whether either direction keeps bytes between messages.
    pub fn keeps_context(&self) -> bool {
        !self.server_no_context || !self.client_no_context
    }

    /// Appends the response header line (§7.1) for this agreement.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate");
        if self.server_no_context {
            out.extend_from_slice(b"; server_no_context_takeover");
        }
        if self.client_no_context {
            out.extend_from_slice(b"; client_no_context_takeover");
        }
        for (name, flag, bits) in [
            (
                &b"; server_max_window_bits="[..],
                ANSWER_SERVER_WINDOW,
                self.server_window,
            ),
            (
                &b"; client_max_window_bits="[..],
                ANSWER_CLIENT_WINDOW,
                self.client_window,
            ),
        ] {
            if self.answer & flag != 0 {
                out.extend_from_slice(name);
                push_decimal(out, bits);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u8) {
    if n >= 10 {
        out.push(b'0'.wrapping_add(n / 10));
    }
    out.push(b'0'.wrapping_add(n % 10));
}

/// One `permessage-deflate` offer, as the client wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context: bool,
    client_no_context: bool,
    /// `server_max_window_bits=N`.
    server_window: Option<u8>,
    /// `client_max_window_bits` present; with its value if it had one.
    client_window: Option<Option<u8>>,
}

/// Picks the first acceptable `permessage-deflate` offer among the `Sec-WebSocket-Extensions`
/// header values, in the client's order (§5.1); `None` declines the extension (the response
/// then names none). Malformed or unsupported offers are skipped, not errors: the connection
/// goes on uncompressed (§5.1 lets a server decline any offer).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>, mode: Mode) -> Option<Agreed> {
    if mode == Mode::Off {
        return None;
    }
    for value in values {
        for element in split_outside_quotes(value, b',') {
            let mut parts = split_outside_quotes(element, b';');
            let name = parts.next().map(<[u8]>::trim_ascii).unwrap_or_default();
            if !name.eq_ignore_ascii_case(EXTENSION.as_bytes()) {
                continue;
            }
            let Some(offer) = parse_offer(parts) else {
                continue;
            };
            if let Some(agreed) = accept(offer, mode) {
                return Some(agreed);
            }
        }
    }
    None
}

/// Splits `s` at `sep` except inside a quoted-string (RFC 7230 §3.2.6).
fn split_outside_quotes(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    s.split(move |&b| {
        if escaped {
            escaped = false;
            return false;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ => {}
        }
        b == sep && !quoted
    })
}

/// The parameters of one offer (§7.1); `None` if one is unknown, repeated or has a bad value.
fn parse_offer<'a>(params: impl Iterator<Item = &'a [u8]>) -> Option<Offer> {
    let mut offer = Offer::default();
    let mut seen = [false; 4];
    for param in params {
        let param = param.trim_ascii();
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => {
                let (name, rest) = param.split_at(i);
                let value = rest.get(1..).unwrap_or_default().trim_ascii();
                (name.trim_ascii(), Some(unquote(value)?))
            }
            None => (param, None),
        };
        let slot = match name {
            b"server_no_context_takeover" => 0,
            b"client_no_context_takeover" => 1,
            b"server_max_window_bits" => 2,
            b"client_max_window_bits" => 3,
            // §7.1: "declines an offer that has an extension parameter not defined".
            _ => return None,
        };
        // §7.1: "...or has multiple extension parameters with the same name".
        let seen = seen.get_mut(slot)?;
        if std::mem::replace(seen, true) {
            return None;
        }
        match (slot, value) {
            (0, None) => offer.server_no_context = true,
            (1, None) => offer.client_no_context = true,
            (2, Some(v)) => offer.server_window = Some(window_bits(v)?),
            (3, None) => offer.client_window = Some(None),
            (3, Some(v)) => offer.client_window = Some(Some(window_bits(v)?)),
            // A value where none belongs, or none where one is required (§7.1.2.1).
            _ => return None,
        }
    }
    Some(offer)
}

/// A token or a quoted-string's content (§7.1: values may be quoted); `None` if malformed.
fn unquote(value: &[u8]) -> Option<&[u8]> {
    match value {
        [b'"', inner @ .., b'"'] => Some(inner),
        [b'"', ..] => None,
        [] => None,
        v => Some(v),
    }
}

/// §7.1.2.1: "a decimal integer value without leading zeroes between 8 and 15, inclusive".
fn window_bits(value: &[u8]) -> Option<u8> {
    let bits = match value {
        [d @ b'8'..=b'9'] => d.wrapping_sub(b'0'),
        [b'1', d @ b'0'..=b'5'] => 10u8.wrapping_add(d.wrapping_sub(b'0')),
        _ => return None,
    };
    Some(bits)
}

/// What wsd answers to a well-formed offer in `mode`; `None` to decline it.
fn accept(offer: Offer, mode: Mode) -> Option<Agreed> {
    let limit = match mode {
        Mode::Off => return None,
        Mode::Shared => MAX_WINDOW_BITS,
        Mode::Context { window_bits } => window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS),
    };
    // §7.1.2.1: a server that accepts `server_max_window_bits=N` compresses within N bits
    // and says so; one it cannot honour (8, see MIN_WINDOW_BITS) declines the offer.
    let server_window = match offer.server_window {
        Some(n) if n < MIN_WINDOW_BITS => return None,
        Some(n) => n.min(limit),
        None => limit,
    };
    let answer_server = if offer.server_window.is_some() || server_window < MAX_WINDOW_BITS {
        ANSWER_SERVER_WINDOW
    } else {
        0
    };
    match mode {
        Mode::Shared => Some(Agreed {
            // No context either way: one loop-wide stream each, reset at every message.
            server_no_context: true,
            client_no_context: true,
            server_window,
            client_window: MAX_WINDOW_BITS,
            answer: answer_server,
        }),
        _ => {
            // §7.1.2.2: the client's window can only be bounded if it offered the parameter;
            // otherwise it may use 32 KiB, which we would have to keep: ask for no context.
            let (client_no_context, client_window, answer_client) = match offer.client_window {
                _ if offer.client_no_context => (true, MAX_WINDOW_BITS, 0),
                None => (true, MAX_WINDOW_BITS, 0),
                Some(offered) => {
                    let bits = offered.unwrap_or(MAX_WINDOW_BITS).min(limit);
                    // zlib cannot inflate with an 8-bit window; 9 reads any 8-bit stream.
                    let bits = bits.max(MIN_WINDOW_BITS);
                    (false, bits, ANSWER_CLIENT_WINDOW)
                }
            };
            Some(Agreed {
                server_no_context: offer.server_no_context,
                client_no_context,
                server_window,
                client_window,
                answer: answer_server | answer_client,
            })
        }
    }
}

/// The offer a client makes as browsers do: the extension, letting the server bound our window.
pub const CLIENT_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A client's view of the server's `permessage-deflate` response (§7.1): `None` if it is not
/// one this client could have been sent (unknown or repeated parameters, bad values).
///
/// The result is seen from the client: the `server_*` fields of [`Agreed`] describe the side
/// that uses it to compress (the client), the `client_*` fields its peer (the server). The
/// client compresses every message from an empty dictionary, which is always allowed.
pub fn client_agreement(value: &[u8]) -> Option<Agreed> {
    let mut parts = split_outside_quotes(value, b';');
    let name = parts.next().map(<[u8]>::trim_ascii).unwrap_or_default();
    if !name.eq_ignore_ascii_case(EXTENSION.as_bytes()) {
        return None;
    }
    let response = parse_offer(parts)?;
    let server_window = match response.server_window {
        Some(bits) if bits < MIN_WINDOW_BITS => MIN_WINDOW_BITS,
        Some(bits) => bits,
        None => MAX_WINDOW_BITS,
    };
    // §7.1.2.2: the response's client_max_window_bits must carry a value.
    let client_window = match response.client_window {
        Some(Some(bits)) => bits.max(MIN_WINDOW_BITS),
        Some(None) => return None,
        None => MAX_WINDOW_BITS,
    };
    Some(Agreed {
        server_no_context: true,
        client_no_context: response.server_no_context,
        server_window: client_window,
        client_window: server_window,
        answer: 0,
    })
}

/// Keeps the last `keep` bytes of a stream in `window`, after `fresh` was added to it.
pub fn slide_window(window: &mut Vec<u8>, fresh: &[u8], keep: usize) {
    if keep == 0 {
        window.clear();
        return;
    }
    if fresh.len() >= keep {
        window.clear();
        window.extend_from_slice(
            fresh
                .get(fresh.len().saturating_sub(keep)..)
                .unwrap_or_default(),
        );
        return;
    }
    let total = window.len().saturating_add(fresh.len());
    if total > keep {
        window.drain(..total.saturating_sub(keep));
    }
    window.extend_from_slice(fresh);
}

/// Counts of one codec, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodecCounts {
    pub messages: u64,
    /// Bytes before compression (or after inflating).
    pub plain_bytes: u64,
    /// Compressed bytes (the payload on the wire).
    pub compressed_bytes: u64,
}

/// The loop's compressor: one raw-deflate stream per window size in use, made on first use.
#[derive(Default)]
pub struct Deflater {
    streams: [Option<Box<Compress>>; (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize],
    buf: Vec<u8>,
    counts: CodecCounts,
}

impl Deflater {
    pub fn counts(&self) -> CodecCounts {
        self.counts
    }

    /// Compresses `input` as one message (§7.2.1) with a `window_bits` window, starting from
    /// `dictionary` (empty without context takeover); returns the payload without its trailer.
    pub fn compress(&mut self, window_bits: u8, dictionary: &[u8], input: &[u8]) -> &[u8] {
        let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let slot = usize::from(bits.saturating_sub(MIN_WINDOW_BITS));
        if self.buf.capacity() > DEFLATE_KEEP {
            self.buf = Vec::new();
        }
        self.buf.clear();
        let Some(stream) = self.streams.get_mut(slot) else {
            return &[];
        };
        let stream = stream.get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::new(LEVEL),
                false,
                bits,
            ))
        });
        stream.reset();
        if !dictionary.is_empty() {
            // Cannot fail right after a reset, for a raw stream.
            let _ = stream.set_dictionary(dictionary);
        }
        let mut rest = input;
        loop {
            // Room for the whole output of incompressible input (stored blocks add 5 bytes
            // per 16 KiB) and the flush, so one call usually does it all.
            let room = (rest.len() / 2)
                .saturating_add(rest.len() / 64)
                .saturating_add(64);
            self.buf.reserve(room);
            let before = stream.total_in();
            if stream
                .compress_vec(rest, &mut self.buf, FlushCompress::Sync)
                .is_err()
            {
                // Only a misuse of the stream fails: the caller sends the message uncompressed.
                self.buf.clear();
                return &[];
            }
            let used = usize::try_from(stream.total_in().wrapping_sub(before)).unwrap_or(0);
            rest = rest.get(used..).unwrap_or_default();
            // zlib: the flush is complete once a call returns with output space left.
            if rest.is_empty() && self.buf.len() < self.buf.capacity() {
                break;
            }
        }
        if self.buf.ends_with(&TRAILER) {
            self.buf
                .truncate(self.buf.len().saturating_sub(TRAILER.len()));
        }
        self.counts.messages = self.counts.messages.wrapping_add(1);
        self.counts.plain_bytes = self.counts.plain_bytes.wrapping_add(input.len() as u64);
        self.counts.compressed_bytes = self
            .counts
            .compressed_bytes
            .wrapping_add(self.buf.len() as u64);
        &self.buf
    }

    /// Appends `payload` to `out` as one compressed frame (RSV1 set) and, with context
    /// takeover, slides `window` over it; as a plain frame when compressing does not make it
    /// shorter.
    pub fn write_message(
        &mut self,
        out: &mut Vec<u8>,
        opcode: OpCode,
        payload: &[u8],
        agreed: &Agreed,
        window: Option<&mut Vec<u8>>,
        mask: Option<[u8; 4]>,
    ) {
        let keep = agreed.deflate_keep();
        let dictionary: &[u8] = match (&window, keep) {
            (Some(w), 1..) => w,
            _ => &[],
        };
        let compressed = self.compress(agreed.server_window, dictionary, payload);
        if compressed.len() >= payload.len() {
            // Incompressible (or a failed compression): the plain frame is shorter. An
            // uncompressed message never enters the peer's window, so ours stays as it is.
            super::frame::write_frame(out, true, opcode, payload, mask);
            return;
        }
        write_frame_rsv1(out, opcode, compressed, mask);
        if let Some(w) = window {
            slide_window(w, payload, keep);
        }
    }
}

/// The loop's decompressor: one raw-inflate stream with the largest window, reset for every
/// message, and the buffer the inflated message is handed over in.
pub struct Inflater {
    stream: Decompress,
    out: Vec<u8>,
    counts: CodecCounts,
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater {
            stream: Decompress::new_with_window_bits(false, MAX_WINDOW_BITS),
            out: Vec::new(),
            counts: CodecCounts::default(),
        }
    }
}

impl Inflater {
    pub fn counts(&self) -> CodecCounts {
        self.counts
    }

    /// Inflates one message from its compressed `pieces` (the trailer of §7.2.2 is added
    /// here) after `dictionary` (the client's window with context takeover, else empty).
    ///
    /// A decompression bomb stops as soon as the output passes `limit`: the output buffer never
    /// grows past `limit + 1` bytes, whatever the input claims.
    pub fn inflate(
        &mut self,
        dictionary: &[u8],
        pieces: &[&[u8]],
        limit: usize,
    ) -> Result<&[u8], ProtocolError> {
        if self.out.capacity() > INFLATE_KEEP {
            self.out = Vec::new();
        }
        self.out.clear();
        self.stream.reset(false);
        if !dictionary.is_empty() && self.stream.set_dictionary(dictionary).is_err() {
            return Err(ProtocolError::BadCompressedData);
        }
        let compressed: usize = pieces.iter().map(|p| p.len()).sum();
        'pieces: for piece in pieces.iter().copied().chain([&TRAILER[..]]) {
            let mut rest = piece;
            loop {
                if self.out.len() == self.out.capacity() {
                    let room = limit.saturating_add(1).saturating_sub(self.out.len());
                    if room == 0 {
                        return Err(ProtocolError::MessageTooBig);
                    }
                    let grow = self.out.len().max(INFLATE_STEP).min(room);
                    self.out.reserve_exact(grow);
                }
                let (in_before, out_before) = (self.stream.total_in(), self.out.len());
                let status = self
                    .stream
                    .decompress_vec(rest, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| ProtocolError::BadCompressedData)?;
                if self.out.len() > limit {
                    return Err(ProtocolError::MessageTooBig);
                }
                let used =
                    usize::try_from(self.stream.total_in().wrapping_sub(in_before)).unwrap_or(0);
                rest = rest.get(used..).unwrap_or_default();
                match status {
                    // A final block (BFINAL, §7.2.3.4 allows it) ends the message's data; what
                    // follows (our trailer at least) is ignored.
                    Status::StreamEnd => break 'pieces,
                    _ if self.out.len() < self.out.capacity() => {
                        if rest.is_empty() {
                            break; // This piece is all in; the output had room to spare.
                        }
                        if used == 0 && self.out.len() == out_before {
                            // Input left, room left, and no progress: not a deflate stream.
                            return Err(ProtocolError::BadCompressedData);
                        }
                    }
                    _ => {} // Output full: grow it and go on.
                }
            }
        }
        self.counts.messages = self.counts.messages.wrapping_add(1);
        self.counts.compressed_bytes = self.counts.compressed_bytes.wrapping_add(compressed as u64);
        self.counts.plain_bytes = self.counts.plain_bytes.wrapping_add(self.out.len() as u64);
        Ok(&self.out)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    fn offer(header: &str, mode: Mode) -> Option<String> {
        let agreed = negotiate([header.as_bytes()], mode)?;
        let mut out = Vec::new();
        agreed.write_header(&mut out);
        let line = String::from_utf8(out).unwrap();
        Some(
            line.trim_start_matches("Sec-WebSocket-Extensions: ")
                .trim_end()
                .to_string(),
        )
    }

    const CONTEXT: Mode = Mode::Context { window_bits: 12 };

    #[test]
    fn shared_mode_asks_for_no_context_either_way() {
        let both = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        // What browsers offer.
        let chrome = "permessage-deflate; client_max_window_bits";
        assert_eq!(offer(chrome, Mode::Shared).as_deref(), Some(both));
        assert_eq!(
            offer("permessage-deflate", Mode::Shared).as_deref(),
            Some(both)
        );
        // §7.1.2.1: a server_max_window_bits in the offer is honoured and answered.
        assert_eq!(
            offer(
                "permessage-deflate; server_max_window_bits=10",
                Mode::Shared
            )
            .unwrap(),
            format!("{both}; server_max_window_bits=10")
        );
        let agreed = negotiate([b"permessage-deflate".as_slice()], Mode::Shared).unwrap();
        assert_eq!((agreed.inflate_keep(), agreed.deflate_keep()), (0, 0));
        assert!(!agreed.keeps_context());
        assert_eq!(offer(chrome, Mode::Off), None);
    }

    #[test]
    fn context_mode_bounds_both_windows() {
        let a = negotiate(
            [b"permessage-deflate; client_max_window_bits".as_slice()],
            CONTEXT,
        )
        .unwrap();
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits", CONTEXT).as_deref(),
            Some("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
        );
        assert_eq!((a.inflate_keep(), a.deflate_keep()), (4096, 2048));
        // The client's own smaller limits win; its hints are echoed.
        assert_eq!(
            offer(
                "permessage-deflate; client_max_window_bits=10; server_max_window_bits=11",
                CONTEXT
            )
            .as_deref(),
            Some("permessage-deflate; server_max_window_bits=11; client_max_window_bits=10")
        );
        // A client that cannot be bounded (no client_max_window_bits) keeps no context.
        assert_eq!(
            offer("permessage-deflate; server_no_context_takeover", CONTEXT).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"
            )
        );
    }

    #[test]
    fn malformed_or_unsupported_offers_are_declined_in_order() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offer(bad, Mode::Shared), None, "{bad}");
        }
        // The first acceptable offer wins; quoted values are allowed (§7.1).
        assert_eq!(
            offer(
                "permessage-deflate; foo, permessage-deflate; server_max_window_bits=\"9\"",
                Mode::Shared
            )
            .unwrap(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
        );
        // Offers may come in several headers.
        let two = [b"foo".as_slice(), b"permessage-deflate".as_slice()];
        assert!(negotiate(two, Mode::Shared).is_some());
    }

    /// RFC 7692 §7.2.3.1 and §7.2.3.2: "Hello", then "Hello" again with context takeover.
    #[test]
    fn rfc_examples_inflate() {
        let mut inflater = Inflater::default();
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflater.inflate(&[], &[&hello], 100).unwrap(), b"Hello");
        let again = [0xf2, 0x00, 0x11, 0x00, 0x00];
        assert_eq!(
            inflater.inflate(b"Hello", &[&again], 100).unwrap(),
            b"Hello"
        );
        // §7.2.3.3: a message may be split anywhere between frames.
        assert_eq!(
            inflater
                .inflate(&[], &[&hello[..3], &hello[3..]], 100)
                .unwrap(),
            b"Hello"
        );
        // §7.2.3.5 (two deflate blocks) and §7.2.3.6 (empty message: one 0x00).
        assert_eq!(inflater.inflate(&[], &[&[0x00]], 100).unwrap(), b"");
        assert_eq!(
            inflater
                .inflate(&[], &[b"\x01\x05\x00\xfa\xffHello"], 100)
                .unwrap(),
            b"Hello"
        );
        assert_eq!(
            inflater.inflate(&[], &[b"garbage!"], 100),
            Err(ProtocolError::BadCompressedData)
        );
    }

    #[test]
    fn compress_round_trips_with_and_without_a_dictionary() {
        let mut deflater = Deflater::default();
        let mut inflater = Inflater::default();
        let json = br#"{"type":"update","id":12345,"values":[1,2,3,4,5],"ok":true}"#.repeat(40);
        for bits in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
            let z = deflater.compress(bits, &[], &json).to_vec();
            assert!(z.len() < json.len() / 5, "{bits}: {} bytes", z.len());
            assert!(!z.ends_with(&TRAILER));
            assert_eq!(inflater.inflate(&[], &[&z], 1 << 20).unwrap(), &json[..]);
        }
        // With the previous message as dictionary the same message is a few bytes.
        let z = deflater
            .compress(12, &json[json.len() - 2048..], &json[..100])
            .to_vec();
        assert!(z.len() < 20, "{}", z.len());
        assert_eq!(
            inflater
                .inflate(&json[json.len() - 2048..], &[&z], 1 << 20)
                .unwrap(),
            &json[..100]
        );
        assert_eq!(deflater.compress(15, &[], b""), [0x00]);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut deflater = Deflater::default();
        let zeros = vec![0u8; 10 << 20];
        let z = deflater.compress(15, &[], &zeros).to_vec();
        assert!(z.len() < 20_000);
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&[], &[&z], 1 << 20),
            Err(ProtocolError::MessageTooBig)
        );
        // It never held more than the limit and a byte.
        assert!(inflater.out.capacity() <= (1 << 20) + 1);
        assert_eq!(
            inflater.inflate(&[], &[&z], 10 << 20).unwrap().len(),
            10 << 20
        );
    }

    #[test]
    fn windows_slide() {
        let mut w = Vec::new();
        slide_window(&mut w, b"abc", 4);
        slide_window(&mut w, b"de", 4);
        assert_eq!(w, b"bcde");
        slide_window(&mut w, b"123456", 4);
        assert_eq!(w, b"3456");
        slide_window(&mut w, b"x", 0);
        assert!(w.is_empty());
    }
}
