//! One connection's socket, buffers and phase, and the IO steps the loop runs on it.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::time::Instant;

use mio::net::TcpStream;

use crate::config::Config;
use crate::handler::Outgoing;
use crate::handler::{Ctx, Current, Handler};
use crate::protocol::close::CloseState;
use crate::protocol::deflate::Inflater;
use crate::protocol::handshake::{self, Reject};
use crate::protocol::session::{Inflate, Input};
use crate::protocol::{CloseCode, Event, Role, Session};
use crate::pubsub::{Delivered, Hub};
use crate::tls::Tls;

use super::metrics::{Side, Stats};
use super::upgrade::ConnState;
use crate::conn_id::ConnId;

/// Where a connection is in its life; the WebSocket close states live in its [`Session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) the HTTP upgrade request.
    Handshake,
    /// WebSocket frames flow; see the session's close state.
    Open,
    /// Our last bytes are queued or sent; once they are out we shut down our side and wait for
    /// the peer's FIN (discarding input) so that it reads them before TCP goes away.
    Closing { shut_down: bool },
}

/// Which deadline the connection's one timer in the wheel stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    None,
    /// The handshake must complete (`handshake_timeout`).
    Handshake,
    /// A Ping is due if nothing arrives (`ping_interval`).
    Ping,
    /// A Ping was sent; something must arrive (`pong_timeout`).
    Pong,
    /// Output stays over the bound (`slow_consumer_timeout`).
    SlowConsumer,
    /// Our Close, or our last bytes, must be answered (`close_timeout`).
    Close,
}

impl Timer {
    /// The timer's number in a live upgrade's state.
    pub fn code(self) -> u8 {
        match self {
            Timer::None => 0,
            Timer::Handshake => 1,
            Timer::Ping => 2,
            Timer::Pong => 3,
            Timer::SlowConsumer => 4,
            Timer::Close => 5,
        }
    }

    pub fn of_code(code: u8) -> Option<Timer> {
        Some(match code {
            0 => Timer::None,
            1 => Timer::Handshake,
            2 => Timer::Ping,
            3 => Timer::Pong,
            4 => Timer::SlowConsumer,
            5 => Timer::Close,
            _ => return None,
        })
    }
}

/// How a connection ended, for the logs and the drain report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The close handshake completed (or an HTTP rejection was delivered).
    Clean,
    /// The peer did not answer our Close, a Ping, or finish its handshake in time.
    TimedOut,
    /// Reset, EOF before a Close, a protocol error, or another IO error.
    Errored,
}

/// Why [`Conn::read_ready`] stopped reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStop {
    /// The socket has nothing more now (or the peer is gone).
    Drained,
    /// The read budget of this turn is spent: more may be waiting.
    Budget,
    /// Queued output is over the bound: reading waits for the peer to read.
    Backpressure,
}

/// Shared per-loop buffers: reads land in `read`, output of the connection being served
/// collects in `cork` and is written with one syscall; only what the socket does not take is
/// copied to a buffer of the connection's own, taken from `pool` and given back once empty.
///
/// TLS connections read ciphertext into `read`, decrypt it into `plain` (which then takes the
/// place of `read` for the WebSocket layer), and encrypt the cork into `seal` before writing.
/// Both stay empty while no TLS connection is served.
pub struct Scratch {
    pub read: Vec<u8>,
    pub cork: Vec<u8>,
    pub pool: BufPool,
    /// The loop's one decompressor (permessage-deflate), reset at every message; the one
    /// compressor is the hub's, which compresses fan-out too.
    pub inflater: Inflater,
    pub plain: Vec<u8>,
    pub seal: Vec<u8>,
}

/// What a connection keeps between messages with permessage-deflate context takeover: the
/// tail of each stream as plain bytes (never a zlib stream). Boxed, and only made once the
/// connection has a message: an idle connection that never sent one holds nothing.
#[derive(Default)]
pub struct Windows {
    /// The client's stream: the dictionary its next compressed message is inflated with.
    pub inflate: Vec<u8>,
    /// Our stream: the dictionary our next compressed message to it is made with.
    pub deflate: Vec<u8>,
}

/// Most buffers the pool keeps.
const POOL_BUFFERS: usize = 64;
/// Largest buffer the pool keeps; bigger ones (a 16 MiB message) go back to the allocator.
const POOL_MAX_CAPACITY: usize = 256 * 1024;

/// A small pool of emptied buffers, so connections that briefly hold a partial frame or unsent
/// output do not go through the allocator each time.
#[derive(Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    /// An empty buffer, reused when one is available.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    /// Gives back a buffer (its contents are dropped).
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > POOL_MAX_CAPACITY {
            return;
        }
        if self.free.len() < POOL_BUFFERS {
            buf.clear();
            self.free.push(buf);
        }
    }
}

/// What a connection needs to know of the loop while it is served.
pub struct Context<'a> {
    pub id: ConnId,
    pub config: &'a Config,
    pub draining: bool,
    /// Milliseconds since the loop started, for the idle clock.
    pub now_ms: u32,
    pub scratch: &'a mut Scratch,
    pub stats: &'a mut Stats,
    /// Channels and the turn's publications, for the handler's [`Ctx`].
    pub hub: &'a mut Hub,
    /// The handler's timer, for [`Ctx::set_timer`].
    pub handler_timer: &'a mut Option<Instant>,
    pub now: Instant,
}

/// The handler's view of a [`Context`], with `$current` as the connection being served (a
/// macro, so that it borrows only the fields it needs beside the output being written).
macro_rules! handler_ctx {
    ($cx:ident, $current:expr) => {
        Ctx::new(
            &mut *$cx.hub,
            Some($current),
            &mut *$cx.handler_timer,
            $cx.now,
            $cx.draining,
        )
    };
}

/// Most slices one `writev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

pub struct Conn {
    pub sock: TcpStream,
    pub phase: Phase,
    pub timer: Timer,
    /// The peer shut down its side (read returned 0) or the socket failed.
    pub gone: bool,
    /// A protocol error failed this connection.
    pub failed: bool,
    /// Reading is suspended until queued output drains below the low-water mark.
    pub paused: bool,
    /// The connection is in the loop's queue of reads to continue next turn.
    pub read_queued: bool,
    /// The peer's FIN (or a socket error) was signalled: reads go on to EOF even when a read
    /// budget or backpressure splits them over several turns, as no new edge will come.
    pub eof_signalled: bool,
    /// Counted against `max_connections` (HTTP rejections of the accept path are not).
    pub counted: bool,
    /// The close code the peer sent, if any.
    pub peer_code: Option<CloseCode>,
    /// When bytes last arrived, in the loop's milliseconds (wrapping).
    pub last_read_ms: u32,
    /// When the current timer was armed (for a Ping: when it was sent), same clock.
    pub armed_ms: u32,
    /// The address counted against `max_connections_per_ip`, when that limit is on.
    pub ip: Option<IpAddr>,
    pub session: Session,
    /// The TLS layer of a wss:// connection (boxed: a plain connection pays one pointer).
    pub tls: Option<Box<Tls>>,
    /// Bytes read but not yet consumed (a partial handshake or frame); empty when idle.
    inbuf: Vec<u8>,
    /// Output the socket has not taken yet, from `out_pos` on; empty when idle.
    out: Vec<u8>,
    out_pos: usize,
    /// permessage-deflate context takeover windows (`compression = "context"` only).
    windows: Option<Box<Windows>>,
}

impl Conn {
    pub fn new(sock: TcpStream, config: &Config, now_ms: u32) -> Conn {
        Conn {
            sock,
            phase: Phase::Handshake,
            timer: Timer::None,
            gone: false,
            failed: false,
            paused: false,
            read_queued: false,
            eof_signalled: false,
            counted: true,
            peer_code: None,
            last_read_ms: now_ms,
            armed_ms: now_ms,
            ip: None,
            session: Session::new(Role::Server, config.limits(), 0),
            tls: None,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            windows: None,
        }
    }

    /// Whether bytes arrived since the current timer was armed (in the same millisecond
    /// counts: a Pong can come back that fast on loopback).
    pub fn read_since_armed(&self, now_ms: u32) -> bool {
        now_ms.wrapping_sub(self.last_read_ms) <= now_ms.wrapping_sub(self.armed_ms)
    }

    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Bytes queued for the peer that the socket has not taken.
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Reads until the socket is drained, the budget of `budget` reads is spent, or queued
    /// output goes over the bound, handling every complete handshake and frame on the way.
    ///
    /// `to_eof` asks to keep reading past a short read (the peer's FIN is already known).
    pub fn read_ready<H: Handler>(
        &mut self,
        cx: &mut Context<'_>,
        handler: &mut H,
        to_eof: bool,
        budget: usize,
    ) -> ReadStop {
        for _ in 0..budget {
            if self.paused {
                return ReadStop::Backpressure;
            }
            // A TLS record that arrived in part goes back in front of the bytes that follow it.
            let kept = match self.tls.as_mut().map(|t| t.take_pending()) {
                Some(pending) if !pending.is_empty() => {
                    cx.scratch.read[..pending.len()].copy_from_slice(&pending);
                    let kept = pending.len();
                    cx.scratch.pool.give(pending);
                    kept
                }
                _ => 0,
            };
            let read = self.sock.read(&mut cx.scratch.read[kept..]);
            if kept > 0 && !matches!(read, Ok(n) if n > 0) {
                if let Some(tls) = &mut self.tls {
                    tls.keep_pending(&cx.scratch.read[..kept], cx.scratch.pool.take());
                }
            }
            let n = match read {
                Ok(0) => {
                    self.gone = true;
                    return ReadStop::Drained;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadStop::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("{}: read error: {e}", cx.id);
                    self.gone = true;
                    return ReadStop::Drained;
                }
            };
            cx.stats.received_bytes += n as u64;
            self.last_read_ms = cx.now_ms;
            if self.tls.is_some() {
                self.consume_tls(kept + n, cx, handler);
            } else {
                self.consume_read(n, cx, handler);
            }
            self.flush_cork(cx);
            if self.queued() > cx.config.max_output_buffer && self.phase == Phase::Open {
                self.paused = true;
                return ReadStop::Backpressure;
            }
            // A short read emptied the socket; a later arrival raises a new readiness edge.
            if kept + n < cx.scratch.read.len() && !to_eof {
                return ReadStop::Drained;
            }
        }
        ReadStop::Budget
    }

    /// Decrypts `len` bytes of ciphertext from the shared read buffer into the shared plaintext
    /// buffer, sends what the TLS handshake answers, and processes the plaintext as
    /// [`Conn::consume_read`] does (with the plaintext buffer in the read buffer's place).
    fn consume_tls<H: Handler>(&mut self, len: usize, cx: &mut Context<'_>, handler: &mut H) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        let scratch = &mut *cx.scratch;
        if scratch.plain.len() < scratch.read.len() {
            scratch.plain.resize(scratch.read.len(), 0);
        }
        let was_established = tls.is_established();
        let decrypted = tls.decrypt(
            &mut scratch.read[..len],
            &mut scratch.plain,
            &mut scratch.seal,
        );
        let d = match decrypted {
            Ok(d) => d,
            Err(e) => {
                log::debug!("{}: TLS: {e}", cx.id);
                if was_established {
                    cx.stats.tls_errors += 1;
                } else {
                    cx.stats.tls_handshake_failures += 1;
                }
                scratch.seal.clear();
                self.failed = true;
                self.gone = true;
                return;
            }
        };
        if d.used < len {
            tls.keep_pending(&scratch.read[d.used..len], scratch.pool.take());
        }
        if !was_established && tls.is_established() {
            cx.stats.tls_handshakes += 1;
        }
        // The handshake's answer (or a session ticket) goes out before any plaintext answer.
        cx.stats.sent_bytes += self.send_seal(cx.scratch) as u64;
        // Once we finished, input is discarded; it is still decrypted to see the peer's
        // close_notify, which ends the connection without waiting for its FIN.
        let closing = matches!(self.phase, Phase::Closing { .. });
        if d.plain > 0 && !closing {
            std::mem::swap(&mut cx.scratch.read, &mut cx.scratch.plain);
            self.consume_read(d.plain, cx, handler);
            std::mem::swap(&mut cx.scratch.read, &mut cx.scratch.plain);
        }
        if d.peer_closed {
            // close_notify: the TLS equivalent of a FIN.
            self.gone = true;
        }
    }

    /// Processes `n` fresh bytes from the shared read buffer, in place when nothing is pending.
    fn consume_read<H: Handler>(&mut self, n: usize, cx: &mut Context<'_>, handler: &mut H) {
        if matches!(self.phase, Phase::Closing { .. }) {
            return; // Input after we finished is discarded.
        }
        if self.inbuf.is_empty() {
            let mut data = std::mem::take(&mut cx.scratch.read);
            let (used, need) = self.process(&mut data[..n], cx, handler);
            if used < n {
                let rest = &data[used..n];
                self.inbuf = cx.scratch.pool.take();
                self.inbuf
                    .reserve(reserve_hint(need, rest.len(), data.len()));
                self.inbuf.extend_from_slice(rest);
            }
            cx.scratch.read = data;
        } else {
            self.inbuf.extend_from_slice(&cx.scratch.read[..n]);
            let mut data = std::mem::take(&mut self.inbuf);
            let (used, need) = self.process(&mut data, cx, handler);
            data.drain(..used);
            if data.is_empty() {
                // An idle connection holds no buffer of its own.
                cx.scratch.pool.give(data);
            } else {
                if let Some(need) = need {
                    let len = data.len();
                    let step = cx.scratch.read.len();
                    data.reserve(reserve_hint(Some(need), len, step).saturating_sub(len));
                }
                self.inbuf = data;
            }
        }
        // Nor does it keep the buffer of a fragmented message once that message is done.
        if let Some(buf) = self.session.assembler_mut().take_buffer() {
            cx.scratch.pool.give(buf);
        }
    }

    /// Handles the handshake and frames at the front of `data`; returns the bytes used and, when
    /// a partial frame is waiting, its whole size.
    fn process<H: Handler>(
        &mut self,
        data: &mut [u8],
        cx: &mut Context<'_>,
        handler: &mut H,
    ) -> (usize, Option<usize>) {
        let mut pos = 0;
        if self.phase == Phase::Handshake {
            pos = match self.handshake(data, cx, handler) {
                Some(n) => n,
                None => return (0, None),
            };
        }
        if self.phase != Phase::Open {
            return (data.len(), None);
        }
        let agreed = self.session.deflate();
        // The windows are made with the first frame, not at the handshake: a connection that
        // never sends one costs no more than with compression off.
        if agreed.is_some_and(|a| a.keeps_context()) && self.windows.is_none() && pos < data.len() {
            self.windows = Some(Box::default());
        }
        // A TLS connection's output is ciphertext: its plaintext always goes through the cork.
        let out = if self.has_output() && self.tls.is_none() {
            &mut self.out
        } else {
            &mut cx.scratch.cork
        };
        loop {
            let open = self.session.close_state() == CloseState::Open;
            let (inflate_window, deflate_window) = match self.windows.as_deref_mut() {
                Some(w) => (Some(&mut w.inflate), Some(&mut w.deflate)),
                None => (None, None),
            };
            let inflate = agreed.map(|_| Inflate {
                inflater: &mut cx.scratch.inflater,
                window: inflate_window,
            });
            let step = match self.session.poll_input_ext(&mut data[pos..], out, inflate) {
                Ok(step) => step,
                Err(e) => {
                    log::debug!("{}: protocol error: {e}", cx.id);
                    if open {
                        cx.stats.closed(Side::Server, e.close_code().0);
                    }
                    self.failed = true;
                    return (data.len(), None);
                }
            };
            let (consumed, event) = match step {
                Input::NeedMore { frame_len } => {
                    let need = frame_len.and_then(|n| usize::try_from(n).ok());
                    return (pos, need);
                }
                Input::Consumed { consumed, event } => (consumed, event),
            };
            pos += consumed;
            match event {
                Some(Event::Message(message)) => {
                    cx.stats.messages_received += 1;
                    let id = cx.id;
                    let current = Current {
                        id,
                        out: &mut *out,
                        can_send: open,
                        sent: 0,
                        close: None,
                        deflate: agreed.map(|agreed| Outgoing {
                            agreed,
                            window: deflate_window,
                            threshold: cx.config.compression_threshold,
                        }),
                    };
                    let mut ctx = handler_ctx!(cx, current);
                    handler.on_message(&mut ctx, id, message);
                    let (sent, close) = ctx.into_current().map_or((0, None), |c| (c.sent, c.close));
                    cx.stats.messages_sent += sent;
                    if let Some((code, reason)) = close {
                        if self.session.close(code, &reason, out) {
                            cx.stats.closed(Side::Server, code.0);
                        }
                    }
                }
                Some(Event::Close(frame)) => {
                    if open {
                        cx.stats
                            .closed(Side::Client, frame.code.map_or(1005, |c| c.0));
                    }
                    self.peer_code = frame.code;
                }
                Some(Event::Ping(_) | Event::Pong(_)) | None => {}
            }
        }
    }

    /// Parses the upgrade request; returns the bytes it used once it is answered.
    fn handshake<H: Handler>(
        &mut self,
        data: &[u8],
        cx: &mut Context<'_>,
        handler: &mut H,
    ) -> Option<usize> {
        let request = match handshake::parse_request(data, cx.config.max_handshake_size) {
            Ok(None) => return None,
            Ok(Some(_)) if cx.draining => Err(Reject::Unavailable),
            Ok(Some(req)) if !cx.config.origin_allowed(req.origin) => Err(Reject::Forbidden),
            Ok(Some(req)) => handler.accept(req.path).map(|()| req),
            Err(reject) => Err(reject),
        };
        match request {
            Ok(req) => {
                let mut cork = std::mem::take(&mut cx.scratch.cork);
                let agreed = handshake::negotiate_deflate(&req, cx.config.deflate_mode());
                handshake::write_accept_with(req.key, agreed.as_ref(), &mut cork);
                self.session.set_deflate(agreed);
                cx.hub.set_deflate(cx.id, agreed.map(|a| a.server_window));
                self.phase = Phase::Open;
                log::debug!("{}: open {}", cx.id, req.path);
                let id = cx.id;
                let current = Current {
                    id,
                    out: &mut cork,
                    can_send: true,
                    sent: 0,
                    close: None,
                    // Without context takeover windows (made with the first message): a
                    // greeting is compressed from an empty dictionary, which is always valid.
                    deflate: agreed.map(|agreed| Outgoing {
                        agreed: agreed.without_server_context(),
                        window: None,
                        threshold: cx.config.compression_threshold,
                    }),
                };
                let mut ctx = handler_ctx!(cx, current);
                handler.on_open(&mut ctx, id, req.path);
                let (sent, close) = ctx.into_current().map_or((0, None), |c| (c.sent, c.close));
                cx.stats.messages_sent += sent;
                if let Some((code, reason)) = close {
                    if self.session.close(code, &reason, &mut cork) {
                        cx.stats.closed(Side::Server, code.0);
                    }
                }
                cx.scratch.cork = cork;
                Some(req.head_len)
            }
            Err(reject) => {
                self.reject(reject, cx);
                Some(data.len())
            }
        }
    }

    /// Answers the handshake with an HTTP error and closes.
    pub fn reject(&mut self, reject: Reject, cx: &mut Context<'_>) {
        cx.stats.rejected(reject.status());
        log::debug!(
            "{}: handshake rejected: {} {}",
            cx.id,
            reject.status(),
            reject.detail()
        );
        reject.write_response(&mut cx.scratch.cork);
        self.phase = Phase::Closing { shut_down: false };
    }

    /// Writes the corked output of this connection (encrypted first over TLS); whatever the
    /// socket does not take is kept.
    pub fn flush_cork(&mut self, cx: &mut Context<'_>) {
        if cx.scratch.cork.is_empty() {
            return;
        }
        if self.tls.is_some() {
            self.seal_cork(cx.scratch, cx.id);
            cx.stats.sent_bytes += self.send_seal(cx.scratch) as u64;
            return;
        }
        let cork = &mut cx.scratch.cork;
        if self.has_output() {
            self.out.extend_from_slice(cork);
        } else {
            let written = write_some(&mut self.sock, cork, &mut self.gone);
            cx.stats.sent_bytes += written as u64;
            if written < cork.len() {
                self.out = cx.scratch.pool.take();
                self.out_pos = 0;
                self.out.extend_from_slice(&cork[written..]);
            }
        }
        cork.clear();
    }

    /// Encrypts the cork into the seal buffer and empties it; a connection whose TLS cannot
    /// write any more is failed.
    fn seal_cork(&mut self, scratch: &mut Scratch, id: ConnId) {
        let Some(tls) = &mut self.tls else {
            return;
        };
        if let Err(e) = tls.encrypt(&scratch.cork, &mut scratch.seal) {
            log::debug!("{id}: TLS: {e}");
            self.failed = true;
            self.gone = true;
        }
        scratch.cork.clear();
    }

    /// Writes the seal buffer (ciphertext) after any pending output, keeps what the socket does
    /// not take, and empties it. Returns the bytes written.
    fn send_seal(&mut self, scratch: &mut Scratch) -> usize {
        let seal = &mut scratch.seal;
        if seal.is_empty() {
            return 0;
        }
        let mut written = 0;
        if self.has_output() {
            self.out.extend_from_slice(seal);
        } else {
            written = write_some(&mut self.sock, seal, &mut self.gone);
            if written < seal.len() {
                self.out = scratch.pool.take();
                self.out_pos = 0;
                self.out.extend_from_slice(&seal[written..]);
            }
        }
        seal.clear();
        written
    }

    /// Writes pending output; gives the buffer back once it is all out. Returns the bytes
    /// written.
    pub fn flush(&mut self, pool: &mut BufPool) -> usize {
        if !self.has_output() {
            return 0;
        }
        let written = write_some(&mut self.sock, &self.out[self.out_pos..], &mut self.gone);
        self.out_pos += written;
        if self.out_pos == self.out.len() {
            pool.give(std::mem::take(&mut self.out));
            self.out_pos = 0;
        }
        written
    }

    /// Gives every buffer back (the connection is going away).
    pub fn release(&mut self, pool: &mut BufPool) {
        pool.give(std::mem::take(&mut self.inbuf));
        pool.give(std::mem::take(&mut self.out));
        if let Some(buf) = self.session.assembler_mut().take_buffer() {
            pool.give(buf);
        }
        self.windows = None;
        if let Some(tls) = &mut self.tls {
            pool.give(tls.release());
        }
    }

    /// Queues `write` through the cork (or after pending output) and writes what the socket
    /// takes.
    pub fn emit(&mut self, cx: &mut Context<'_>, write: impl FnOnce(&mut Session, &mut Vec<u8>)) {
        let out = if self.has_output() && self.tls.is_none() {
            &mut self.out
        } else {
            &mut cx.scratch.cork
        };
        write(&mut self.session, out);
        self.flush_cork(cx);
    }

    /// Queues the leading `slices` (whole frames of the turn's fan-out) that fit within
    /// `max_out`: written with one `writev` when nothing else is pending, and only what the
    /// socket does not take copied to the connection's own buffer. A frame the socket took in
    /// part is always kept whole; frames past the bound are dropped (and the connection paused,
    /// which arms its slow-consumer timer).
    ///
    /// A TLS connection cannot share the plaintext: the frames that fit within `max_out` are
    /// gathered in the cork, encrypted for this connection alone (one record per 16 KiB), and
    /// written like any of its output.
    pub fn deliver(
        &mut self,
        slices: &[IoSlice<'_>],
        max_out: usize,
        scratch: &mut Scratch,
        stats: &mut Stats,
        id: ConnId,
    ) -> Delivered {
        let mut d = Delivered::default();
        if self.phase != Phase::Open || !self.session.close_state().can_send() || self.gone {
            return d;
        }
        if let Some(w) = self.windows.as_deref_mut() {
            // Fan-out frames are compressed once, from an empty dictionary; what this
            // connection's dictionary held is no longer the tail of what it was sent, so
            // the next message starts from empty too (always valid, RFC 7692 §7.2.1).
            w.deflate.clear();
        }
        if self.tls.is_some() {
            for (i, frame) in slices.iter().enumerate() {
                // As over ws://, a connection with nothing queued takes a frame of any size.
                let first = !self.has_output() && scratch.cork.is_empty();
                if !first && self.queued() + scratch.cork.len() + frame.len() > max_out {
                    d.dropped = slices.len() - i;
                    self.paused = true;
                    break;
                }
                scratch.cork.extend_from_slice(frame);
                d.queued += 1;
            }
            self.seal_cork(scratch, id);
            stats.sent_bytes += self.send_seal(scratch) as u64;
            stats.messages_sent += d.queued as u64;
            return d;
        }
        let pool = &mut scratch.pool;
        let mut rest = slices;
        if !self.has_output() {
            let written = writev_some(&mut self.sock, slices, &mut self.gone);
            stats.sent_bytes += written as u64;
            let mut left = written;
            while let Some((first, tail)) = rest.split_first() {
                if left < first.len() {
                    break;
                }
                left -= first.len();
                rest = tail;
                d.queued += 1;
            }
            if let (Some((partial, tail)), true) = (rest.split_first(), left > 0) {
                self.out = pool.take();
                self.out_pos = 0;
                self.out.extend_from_slice(&partial[left..]);
                rest = tail;
                d.queued += 1;
            }
        }
        for (i, frame) in rest.iter().enumerate() {
            if self.queued() + frame.len() > max_out {
                d.dropped = rest.len() - i;
                self.paused = true;
                break;
            }
            if !self.has_output() && self.out.capacity() == 0 {
                self.out = pool.take();
                self.out_pos = 0;
            }
            self.out.extend_from_slice(frame);
            d.queued += 1;
        }
        stats.messages_sent += d.queued as u64;
        d
    }

    /// Readies a wss:// connection for a live upgrade, which cannot carry its TLS state (rustls
    /// does not give its keys back): Close 1012 (Service Restart) and close_notify are queued
    /// as ciphertext, and the connection moves as a plain one that is closing, with those bytes
    /// as its output. Returns whether this started a closing handshake.
    pub fn leave_tls_for_upgrade(&mut self, cx: &mut Context<'_>) -> bool {
        if self.tls.is_none() {
            return false;
        }
        let mut started = false;
        if self.phase == Phase::Open && !self.gone {
            self.emit(cx, |session, out| {
                started = session.close(CloseCode::SERVICE_RESTART, "service restart", out);
            });
        }
        if let Some(tls) = &mut self.tls {
            tls.close_notify(&mut cx.scratch.seal);
        }
        cx.stats.sent_bytes += self.send_seal(cx.scratch) as u64;
        if let Some(mut tls) = self.tls.take() {
            cx.scratch.pool.give(tls.release());
        }
        self.phase = Phase::Closing { shut_down: false };
        started
    }

    /// The connection as plain data for a live upgrade. `remaining`: time left on its timer;
    /// `channels`: its subscriptions in the order it joined them.
    pub fn export(
        &self,
        now_ms: u32,
        remaining: Option<std::time::Duration>,
        channels: Vec<String>,
    ) -> ConnState {
        let flags = u8::from(self.gone)
            | u8::from(self.failed) << 1
            | u8::from(self.paused) << 2
            | u8::from(self.eof_signalled) << 3
            | u8::from(self.counted) << 4;
        ConnState {
            key: 0, // The caller's to set, with `presented`.
            presented: false,
            phase: match self.phase {
                Phase::Handshake => 0,
                Phase::Open => 1,
                Phase::Closing { shut_down: false } => 2,
                Phase::Closing { shut_down: true } => 3,
            },
            timer: self.timer.code(),
            remaining_ms: remaining.map(|d| d.as_millis() as u64),
            flags,
            peer_code: self.peer_code.map(|c| c.0),
            idle_ms: now_ms.wrapping_sub(self.last_read_ms),
            armed_ago_ms: now_ms.wrapping_sub(self.armed_ms),
            ip: self.ip,
            session: self.session.export(),
            input: self.inbuf.clone(),
            output: self.out[self.out_pos..].to_vec(),
            channels,
            inflate_window: self
                .windows
                .as_ref()
                .map_or_else(Vec::new, |w| w.inflate.clone()),
            deflate_window: self
                .windows
                .as_ref()
                .map_or_else(Vec::new, |w| w.deflate.clone()),
        }
    }

    /// A connection resuming from `state` on `sock` (`None` when the state is not one a
    /// connection can be in).
    pub fn import(sock: TcpStream, config: &Config, state: ConnState, now_ms: u32) -> Option<Conn> {
        let phase = match state.phase {
            0 => Phase::Handshake,
            1 => Phase::Open,
            2 => Phase::Closing { shut_down: false },
            3 => Phase::Closing { shut_down: true },
            _ => return None,
        };
        let flag = |bit: u8| state.flags & (1 << bit) != 0;
        let windows =
            (!state.inflate_window.is_empty() || !state.deflate_window.is_empty()).then(|| {
                Box::new(Windows {
                    inflate: state.inflate_window,
                    deflate: state.deflate_window,
                })
            });
        Some(Conn {
            sock,
            phase,
            timer: Timer::of_code(state.timer)?,
            gone: flag(0),
            failed: flag(1),
            paused: flag(2),
            read_queued: false,
            eof_signalled: flag(3),
            counted: flag(4),
            peer_code: state.peer_code.map(CloseCode),
            last_read_ms: now_ms.wrapping_sub(state.idle_ms),
            armed_ms: now_ms.wrapping_sub(state.armed_ago_ms),
            ip: state.ip,
            session: Session::import(config.limits(), state.session)?,
            tls: None,
            inbuf: state.input,
            out: state.output,
            out_pos: 0,
            windows,
        })
    }

    /// Shuts down our sending side once all output is out (Closing phase), after a TLS
    /// connection's close_notify. Returns the bytes written.
    pub fn shut_down_when_flushed(&mut self, scratch: &mut Scratch) -> usize {
        let mut written = 0;
        if let Phase::Closing { shut_down: false } = self.phase {
            let idle = !self.has_output();
            if let (Some(tls), true) = (&mut self.tls, idle) {
                tls.close_notify(&mut scratch.seal);
                written = self.send_seal(scratch);
            }
            if !self.has_output() {
                // The peer reads our last bytes, then its FIN (or our timeout) ends this.
                let _ = self.sock.shutdown(Shutdown::Write);
                self.phase = Phase::Closing { shut_down: true };
            }
        }
        written
    }
}

/// How much room to make for a partial frame of `need` bytes of which `have` arrived: the whole
/// frame, but never more than one read (`step`) ahead of what arrived, so that a header
/// alone (which may claim up to `max_frame_size`) cannot make a connection reserve memory its
/// peer never sends.
fn reserve_hint(need: Option<usize>, have: usize, step: usize) -> usize {
    need.unwrap_or(have)
        .min(have.saturating_add(step))
        .max(have)
}

/// Writes as much of `buf` as the socket takes; marks `gone` on a hard error.
fn write_some(sock: &mut TcpStream, buf: &[u8], gone: &mut bool) -> usize {
    let mut written = 0;
    while written < buf.len() {
        match taken(sock.write(&buf[written..]), gone) {
            Some(n) => written += n,
            None => break,
        }
    }
    written
}

/// What one write did: `Some(bytes)` to go on (0 after an interrupt), `None` to stop (the
/// socket is full, or it failed and `gone` is now set).
fn taken(result: io::Result<usize>, gone: &mut bool) -> Option<usize> {
    match result {
        Ok(0) => {
            *gone = true;
            None
        }
        Ok(n) => Some(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(0),
        Err(_) => {
            *gone = true;
            None
        }
    }
}

/// Writes as much of `slices` as the socket takes (one `writev` when it takes them all);
/// marks `gone` on a hard error.
fn writev_some(sock: &mut TcpStream, slices: &[IoSlice<'_>], gone: &mut bool) -> usize {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut written = 0;
    let mut iov: Vec<IoSlice<'_>> = Vec::new();
    while written < total {
        // The slices from `written` on: all of them on the first call (no copy of the list).
        let view: &[IoSlice<'_>] = if written == 0 && slices.len() <= IOV_MAX {
            slices
        } else {
            iov.clear();
            let mut skip = written;
            for s in slices {
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                iov.push(IoSlice::new(&s[skip..]));
                skip = 0;
                if iov.len() == IOV_MAX {
                    break;
                }
            }
            &iov
        };
        match taken(sock.write_vectored(view), gone) {
            Some(n) => written += n,
            None => break,
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_alone_reserves_at_most_one_read_ahead() {
        // A 16 MiB frame announced by 14 bytes: room for one more read, not 16 MiB.
        assert_eq!(reserve_hint(Some(16 << 20), 14, 1 << 18), 14 + (1 << 18));
        // A frame that fits within the next read is reserved whole.
        assert_eq!(reserve_hint(Some(1000), 100, 1 << 18), 1000);
        assert_eq!(reserve_hint(None, 100, 1 << 18), 100);
    }

    #[test]
    fn the_pool_keeps_small_buffers_only() {
        let mut pool = BufPool::default();
        pool.give(Vec::with_capacity(100));
        pool.give(Vec::with_capacity(POOL_MAX_CAPACITY + 1));
        pool.give(Vec::new());
        assert_eq!(pool.free.len(), 1);
        assert!(pool.take().capacity() >= 100);
        assert_eq!(pool.take().capacity(), 0);
        for _ in 0..POOL_BUFFERS + 10 {
            pool.give(vec![1; 10]);
        }
        assert_eq!(pool.free.len(), POOL_BUFFERS);
        assert!(pool.take().is_empty(), "given-back buffers come back empty");
    }

    /// The struct every open connection costs; kept small so that an idle connection stays
    /// well under 256 bytes of resident memory (the wheel adds 16 bytes, the slab 8).
    #[test]
    fn connection_struct_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 200, "Conn is {size} bytes");
    }
}
