//! One client connection: its socket, buffers and phase, and the IO steps a worker runs on it.
//!
//! Buffers are sized once when the connection is made (the whole pipeline of echoes fits), so a
//! message costs no allocation: frames are written by the shared protocol [`Session`] into the
//! preallocated output and read in place from the preallocated input.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;
use wsd::protocol::deflate::{Deflater, Inflater, CLIENT_OFFER};
use wsd::protocol::frame::MAX_HEADER_LEN;
use wsd::protocol::handshake::{self, ResponseError};
use wsd::protocol::session::{Inflate, Input, Limits};
use wsd::protocol::{Event, Message, Role, Session};

use crate::payload::{Expect, Payload, Tally};
use crate::stall::Gaps;

/// Room for the server's handshake response in idle and drain runs (wsd's is ~130 bytes; the
/// buffer grows, up to [`MAX_RESPONSE_HEAD`], for a chattier server).
pub const SMALL_INPUT: usize = 512;
/// Largest handshake response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Room for the upgrade request (and later a Close frame) in idle and drain runs.
pub const SMALL_OUTPUT: usize = 256;
/// pubsub: deliveries a subscriber's input buffer holds, so a burst is read in few syscalls.
const SUBSCRIBER_READ_FRAMES: usize = 16;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for the 101.
    Upgrading,
    /// WebSocket open.
    Open,
    /// A Close was sent or received; waiting for the other half and the TCP end.
    Closing,
    /// Gone; its outcome is in the stats.
    Ended,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed TCP (FIN).
    Eof,
    /// Connection reset, or another socket error.
    Reset,
    /// A deadline passed (connect, handshake, echo or close).
    TimedOut,
    /// The connect itself failed (refused, unreachable, no local port).
    ConnectFailed,
    /// The handshake response was not a 101 for our key.
    Handshake(ResponseError),
    /// The server broke RFC 6455.
    Protocol,
    /// An echo was not what we sent.
    Mismatch,
}

/// What reading produced, for the worker to account.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// The handshake completed during this read.
    pub opened: bool,
    /// Echoes received and verified.
    pub echoes: u32,
    /// The connection ended (the worker records why and drops it).
    pub end: Option<End>,
    /// A Close frame from the server arrived, with its code (1005 when it carried none).
    pub close: Option<u16>,
    /// Data messages outside an echo run.
    pub unexpected: u32,
    /// pubsub: deliveries, checked against the subscriber's expectations.
    pub tally: Tally,
}

/// What a message should look like: a per-worker template whose first bytes carry a sequence
/// stamp, so echoes out of order or repeated are caught too.
pub struct Template {
    pub bytes: Vec<u8>,
    pub binary: bool,
    stamp_len: usize,
}

/// Characters of the sequence stamp (6 bits each), ASCII so that text stays UTF-8.
const STAMP_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Longest sequence stamp, in bytes (48 bits of sequence number).
const MAX_STAMP: usize = 8;

impl Template {
    pub fn new(size: usize, binary: bool, seed: u64) -> Template {
        let mut x = seed | 1;
        let bytes = (0..size)
            .map(|i| {
                if binary {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                } else {
                    b' ' + (i % 95) as u8
                }
            })
            .collect();
        Template {
            bytes,
            binary,
            stamp_len: size.min(MAX_STAMP),
        }
    }

    fn stamp_byte(seq: u64, i: usize) -> u8 {
        STAMP_ALPHABET[((seq >> (6 * i)) & 63) as usize]
    }

    /// Writes `seq` into the template and returns the message to send.
    fn stamped(&mut self, seq: u64) -> Message<'_> {
        for i in 0..self.stamp_len {
            self.bytes[i] = Self::stamp_byte(seq, i);
        }
        if self.binary {
            Message::Binary(&self.bytes)
        } else {
            // The template is ASCII (see `new`), and so is the stamp.
            Message::Text(std::str::from_utf8(&self.bytes).expect("ASCII template"))
        }
    }

    /// Whether `got` is the echo of message `seq`, byte for byte.
    fn matches(&self, seq: u64, got: &Message<'_>) -> bool {
        let bytes = got.as_bytes();
        got.is_text() != self.binary
            && bytes.len() == self.bytes.len()
            && (0..self.stamp_len).all(|i| bytes[i] == Self::stamp_byte(seq, i))
            && bytes[self.stamp_len..] == self.bytes[self.stamp_len..]
    }
}

pub struct Client {
    /// None once ended (dropping the socket closes it and leaves epoll).
    pub sock: Option<TcpStream>,
    /// The TLS layer of a wss:// connection.
    pub tls: Option<Box<rustls::ClientConnection>>,
    pub state: State,
    session: Session,
    key: [u8; 24],
    /// Bytes read and not yet consumed live in `input[..in_len]`.
    input: Vec<u8>,
    in_len: usize,
    /// Output not yet written is `out[out_sent..]`.
    out: Vec<u8>,
    out_sent: usize,
    /// Registered for writable readiness (only while output is pending, or connecting).
    pub wants_write: bool,
    /// When the connect was started.
    pub started: Instant,
    /// When the current phase (connect, handshake, close) must have ended.
    pub deadline: Option<Instant>,
    /// Never answers the server's Close (drain mode).
    pub silent: bool,
    /// The server's Close code, once one arrived.
    pub close_code: Option<u16>,
    /// We sent a Close first.
    pub closed_by_us: bool,
    /// Echo: messages sent, echoes verified, and messages left to send.
    pub sent: u64,
    pub received: u64,
    pub quota: u64,
    /// Echo: send time of each message in flight, by sequence number modulo the pipeline depth.
    send_times: Box<[Instant]>,
    /// permessage-deflate: the server's window, when it keeps context (empty otherwise).
    inflate_window: Vec<u8>,
    /// The channel index of the connection's path (0 without `--channels`).
    pub channel: u32,
    /// pubsub: what the subscriber expects next from each publisher (set once open).
    pub expect: Option<Box<Expect>>,
    /// Its longest gaps between verified echoes or in-order deliveries.
    pub gaps: Gaps,
    /// Echo with `--interval`: when its next message is due.
    pub due: Option<Instant>,
}

/// Messages shorter than this go out uncompressed (wsd's default `compression_threshold`).
const DEFLATE_THRESHOLD: usize = 64;

/// A worker's one compressor and decompressor, shared by its connections as in the server.
#[derive(Default)]
pub struct Codec {
    pub deflater: Deflater,
    pub inflater: Inflater,
}

impl Client {
    pub fn new(
        sock: Option<TcpStream>,
        now: Instant,
        key_seed: u64,
        input_cap: usize,
        output_cap: usize,
        pipeline: usize,
        max_message: u64,
    ) -> Client {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&key_seed.to_le_bytes());
        nonce[8..].copy_from_slice(&key_seed.rotate_left(29).wrapping_mul(31).to_le_bytes());
        let limits = Limits {
            max_frame_size: max_message,
            max_message_size: max_message,
        };
        Client {
            sock,
            tls: None,
            state: State::Connecting,
            session: Session::new(Role::Client, limits, key_seed),
            key: handshake::client_key(nonce),
            input: vec![0; input_cap],
            in_len: 0,
            out: Vec::with_capacity(output_cap),
            out_sent: 0,
            wants_write: true,
            started: now,
            deadline: None,
            silent: false,
            close_code: None,
            closed_by_us: false,
            sent: 0,
            received: 0,
            quota: 0,
            send_times: vec![now; pipeline].into_boxed_slice(),
            inflate_window: Vec::new(),
            channel: 0,
            expect: None,
            gaps: Gaps::default(),
            due: None,
        }
    }

    /// Messages sent whose echo has not arrived.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.received
    }

    pub fn has_output(&self) -> bool {
        self.out_sent < self.out.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// The TCP connect finished (writable): queue the upgrade request for `path`. `Ok(false)`
    /// for a spurious wake-up while still connecting.
    pub fn on_connected(&mut self, host: &str, path: &str, deflate: bool) -> Result<bool, End> {
        let Some(sock) = &self.sock else {
            return Err(End::Reset);
        };
        match sock.take_error() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return Err(End::ConnectFailed),
        }
        match sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(_) => return Err(End::ConnectFailed),
        }
        let key = std::str::from_utf8(&self.key).expect("base64 is ASCII");
        let offer = deflate.then_some(CLIENT_OFFER);
        handshake::write_request_with(host, path, key, offer, &mut self.out);
        self.state = State::Upgrading;
        Ok(true)
    }

    /// Reads what the socket has and acts on it.
    ///
    /// One `read` per call when it returns less than the room offered: the socket was then
    /// empty, and with edge-triggered epoll any later data raises a new event (nginx relies on
    /// the same), so the `WouldBlock` read that would confirm it is skipped — at pipeline 1
    /// that is one receive syscall per message. A FIN that came with the data raises no new
    /// event, so with `to_eof` (the event said the peer closed its side), and while closing,
    /// reading goes on until the end.
    pub fn read_ready(
        &mut self,
        check: Check<'_>,
        latency: &mut hdrhistogram::Histogram<u64>,
        to_eof: bool,
        codec: &mut Codec,
    ) -> ReadOutcome {
        let mut outcome = ReadOutcome::default();
        loop {
            if self.in_len == self.input.len() {
                // Only a handshake response can outgrow the buffer sized for the frames expected.
                if self.state != State::Upgrading || self.input.len() >= MAX_RESPONSE_HEAD {
                    outcome.end = Some(End::Protocol);
                    return outcome;
                }
                let len = self.input.len() * 2;
                self.input.resize(len, 0);
            }
            let Some(sock) = self.sock.as_mut() else {
                return outcome;
            };
            let room = self.input.len() - self.in_len;
            let buf = &mut self.input[self.in_len..];
            let read = match self.tls.as_mut() {
                Some(tls) => crate::tls::read(tls, sock, buf),
                None => sock.read(buf),
            };
            match read {
                Ok(0) => {
                    outcome.end = Some(End::Eof);
                    return outcome;
                }
                Ok(n) => {
                    self.in_len += n;
                    let now = Instant::now();
                    self.consume(check, latency, now, &mut outcome, codec);
                    // Over TLS a short read says nothing of the socket: read to WouldBlock.
                    let drained =
                        n < room && !to_eof && self.state != State::Closing && self.tls.is_none();
                    if outcome.end.is_some() || drained {
                        return outcome;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return outcome,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    outcome.end = Some(End::Reset);
                    return outcome;
                }
            }
        }
    }

    /// Handshake response or frames at the front of the input.
    fn consume(
        &mut self,
        check: Check<'_>,
        latency: &mut hdrhistogram::Histogram<u64>,
        now: Instant,
        outcome: &mut ReadOutcome,
        codec: &mut Codec,
    ) {
        if self.state == State::Upgrading {
            let key = std::str::from_utf8(&self.key).expect("base64 is ASCII");
            match handshake::check_response_ext(&self.input[..self.in_len], key) {
                Ok(None) => return,
                Ok(Some((head, agreed))) => {
                    self.session.set_deflate(agreed);
                    self.input.copy_within(head..self.in_len, 0);
                    self.in_len -= head;
                    self.state = State::Open;
                    self.deadline = None;
                    outcome.opened = true;
                    if let Check::Pubsub { slots, .. } = check {
                        // Before the frames that came with the 101: they may be deliveries.
                        self.expect = Some(Box::new(Expect::new(self.channel, slots)));
                    }
                }
                Err(e) => {
                    outcome.end = Some(End::Handshake(e));
                    return;
                }
            }
        }
        let mut used = 0;
        let pipeline = self.send_times.len() as u64;
        while used < self.in_len {
            let out_before = self.out.len();
            let inflate = self.session.deflate().map(|_| Inflate {
                inflater: &mut codec.inflater,
                window: Some(&mut self.inflate_window),
            });
            let step = self.session.poll_input_ext(
                &mut self.input[used..self.in_len],
                &mut self.out,
                inflate,
            );
            match step {
                Err(_) => {
                    outcome.end = Some(End::Protocol);
                    break;
                }
                Ok(Input::NeedMore { frame_len }) => {
                    let need = frame_len.unwrap_or(0) as usize;
                    if need > self.input.len() {
                        // Larger than any frame expected: the session's limits bound it.
                        self.input.resize(need, 0);
                    }
                    break;
                }
                Ok(Input::Consumed { consumed, event }) => {
                    used += consumed;
                    match event {
                        Some(Event::Message(m)) if self.expect.is_some() => {
                            if let (Check::Pubsub { payload, .. }, Some(expect)) =
                                (check, self.expect.as_deref_mut())
                            {
                                let before = outcome.tally.delivered;
                                deliver(payload, expect, &m, now, latency, &mut outcome.tally);
                                if outcome.tally.delivered > before {
                                    self.gaps.on_message(now);
                                }
                            } else {
                                outcome.unexpected += 1;
                            }
                        }
                        Some(Event::Message(m)) if self.sent > self.received => {
                            let seq = self.received;
                            let Check::Echo(template) = check else {
                                outcome.unexpected += 1;
                                continue;
                            };
                            if !template.matches(seq, &m) {
                                outcome.end = Some(End::Mismatch);
                                break;
                            }
                            let sent_at = self.send_times[(seq % pipeline) as usize];
                            let nanos = now.saturating_duration_since(sent_at).as_nanos() as u64;
                            let _ = latency.record(nanos.max(1));
                            self.received += 1;
                            outcome.echoes += 1;
                            self.gaps.on_message(now);
                        }
                        Some(Event::Message(_)) => {
                            if self.sent > 0 {
                                // More echoes than messages: not what we sent.
                                outcome.end = Some(End::Mismatch);
                                break;
                            }
                            outcome.unexpected += 1;
                        }
                        Some(Event::Close(frame)) => {
                            let code = frame.code.map_or(1005, |c| c.0);
                            self.close_code = Some(code);
                            outcome.close = Some(code);
                            if self.silent && !self.closed_by_us {
                                // Never answer: drop the Close the session queued.
                                self.out.truncate(out_before);
                            }
                            self.state = State::Closing;
                        }
                        Some(Event::Ping(_) | Event::Pong(_)) | None => {}
                    }
                }
            }
        }
        self.input.copy_within(used..self.in_len, 0);
        self.in_len -= used;
    }

    /// Queues up to `count` more messages (stamped with their sequence numbers).
    pub fn queue_messages(
        &mut self,
        template: &mut Template,
        count: u64,
        now: Instant,
        codec: &mut Codec,
    ) {
        let pipeline = self.send_times.len() as u64;
        for _ in 0..count {
            let seq = self.sent;
            self.session.send_compressed(
                template.stamped(seq),
                &mut self.out,
                &mut codec.deflater,
                None,
                DEFLATE_THRESHOLD,
            );
            self.send_times[(seq % pipeline) as usize] = now;
            self.sent += 1;
            self.quota -= 1;
        }
    }

    /// pubsub publisher: queues one data message.
    pub fn queue_message(&mut self, message: Message<'_>) {
        self.session.send(message, &mut self.out);
    }

    /// Starts the closing handshake from our side (1000, normal closure).
    pub fn start_close(&mut self) {
        if self
            .session
            .close(wsd::protocol::CloseCode::NORMAL, "", &mut self.out)
        {
            self.closed_by_us = true;
        }
        self.state = State::Closing;
    }

    /// Writes pending output; returns whether some is still pending (the socket is full).
    pub fn flush(&mut self) -> Result<bool, End> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        if let Some(tls) = self.tls.as_mut() {
            crate::tls::write_tls(tls, sock).map_err(|_| End::Reset)?;
        }
        while self.out_sent < self.out.len() {
            let rest = &self.out[self.out_sent..];
            let written = match self.tls.as_mut() {
                Some(tls) => match crate::tls::write(tls, sock, rest) {
                    // rustls holds as much as its limit allows; the rest waits for the socket.
                    Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                    other => other,
                },
                None => sock.write(rest),
            };
            match written {
                Ok(0) => return Err(End::Reset),
                Ok(n) => self.out_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Reset),
            }
        }
        self.out.clear();
        self.out_sent = 0;
        Ok(self.tls.as_ref().is_some_and(|t| t.wants_write()))
    }
}

/// What a read checks data messages against: echoes of the template, or pubsub payloads.
#[derive(Clone, Copy)]
pub enum Check<'a> {
    Echo(&'a Template),
    /// Deliveries of `payload`s from `slots` publishers per channel.
    Pubsub {
        payload: &'a Payload,
        slots: usize,
    },
}

/// Checks one pubsub delivery into `tally`, and times it when it is in order.
fn deliver(
    payload: &Payload,
    expect: &mut Expect,
    m: &Message<'_>,
    now: Instant,
    latency: &mut hdrhistogram::Histogram<u64>,
    tally: &mut Tally,
) {
    match payload.check(m.as_bytes(), m.is_text()) {
        Ok(h) => {
            let delivered = tally.delivered;
            expect.check(&h, tally);
            if tally.delivered > delivered {
                let nanos = payload.latency(&h, now).as_nanos() as u64;
                let _ = latency.record(nanos.max(1));
            }
        }
        Err(_) => tally.malformed += 1,
    }
}

/// Input buffer of a pubsub subscriber of `size`-byte payloads.
pub fn subscriber_input(size: usize) -> usize {
    (SUBSCRIBER_READ_FRAMES * (size + MAX_HEADER_LEN)).max(SMALL_INPUT)
}

/// Buffer sizes for a connection that keeps `pipeline` messages of `size` bytes in flight.
pub fn echo_buffers(size: usize, pipeline: usize) -> (usize, usize) {
    let frames = pipeline * (size + MAX_HEADER_LEN);
    (frames.max(SMALL_INPUT), frames + SMALL_OUTPUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_stamps_and_verifies() {
        for binary in [false, true] {
            for size in [0, 1, 7, 8, 16, 1024] {
                let mut t = Template::new(size, binary, 42);
                let m = t.stamped(12345);
                let copy: Vec<u8> = m.as_bytes().to_vec();
                let echo = if binary {
                    Message::Binary(&copy)
                } else {
                    Message::Text(std::str::from_utf8(&copy).unwrap())
                };
                assert!(t.matches(12345, &echo), "size {size} binary {binary}");
                if size > 0 {
                    assert!(!t.matches(12346, &echo) || size == 0);
                }
                let mut wrong = copy.clone();
                if let Some(last) = wrong.last_mut() {
                    *last ^= 1;
                    assert!(!t.matches(12345, &Message::Binary(&wrong)));
                }
            }
        }
    }
}
