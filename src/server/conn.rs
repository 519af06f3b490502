//! One connection's socket, buffers and phase, and the IO steps the loop runs on it.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use mio::net::TcpStream;

use crate::handler::{Handler, Reply};
use crate::protocol::close::CloseState;
use crate::protocol::handshake::{self, Reject};
use crate::protocol::session::{Input, Limits};
use crate::protocol::{CloseCode, Event, Role, Session};

use super::metrics::{Side, Stats};
use super::ConnId;

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

/// How a connection ended, for the logs and the drain report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The close handshake completed (or an HTTP rejection was delivered).
    Clean,
    /// The peer did not answer our Close, or finish its handshake, in time.
    TimedOut,
    /// Reset, EOF before a Close, a protocol error, or another IO error.
    Errored,
}

/// Shared per-loop buffers: reads land in `read`, output of the connection being served
/// collects in `cork` and is written with one syscall; only what the socket does not take is
/// copied to the connection's own buffer.
pub struct Scratch {
    pub read: Vec<u8>,
    pub cork: Vec<u8>,
}

/// What the loop needs to know of the server's state while serving a connection.
pub struct Context<'a> {
    pub id: ConnId,
    pub max_handshake_size: usize,
    pub draining: bool,
    pub scratch: &'a mut Scratch,
    pub stats: &'a mut Stats,
}

pub struct Conn {
    pub sock: TcpStream,
    pub phase: Phase,
    pub session: Session,
    /// Bytes read but not yet consumed (a partial handshake or frame); empty when idle.
    inbuf: Vec<u8>,
    /// Output the socket has not taken yet, from `out_pos` on; empty when idle.
    out: Vec<u8>,
    out_pos: usize,
    pub deadline: Option<Instant>,
    /// The close code the peer sent, if any.
    pub peer_code: Option<CloseCode>,
    /// The peer shut down its side (read returned 0) or the socket failed.
    pub gone: bool,
    /// A protocol error failed this connection.
    pub failed: bool,
}

impl Conn {
    pub fn new(sock: TcpStream, limits: Limits, deadline: Instant) -> Conn {
        Conn {
            sock,
            phase: Phase::Handshake,
            session: Session::new(Role::Server, limits, 0),
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            deadline: Some(deadline),
            peer_code: None,
            gone: false,
            failed: false,
        }
    }

    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Reads until the socket is drained, handling every complete handshake and frame.
    ///
    /// `to_eof` asks to keep reading past a short read (the peer's FIN is already known).
    pub fn read_ready<H: Handler>(&mut self, cx: &mut Context<'_>, handler: &mut H, to_eof: bool) {
        loop {
            let n = match self.sock.read(&mut cx.scratch.read) {
                Ok(0) => {
                    self.gone = true;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("{}: read error: {e}", cx.id);
                    self.gone = true;
                    return;
                }
            };
            cx.stats.received_bytes += n as u64;
            self.consume_read(n, cx, handler);
            self.flush_cork(cx);
            // A short read emptied the socket; a later arrival raises a new readiness edge.
            if n < cx.scratch.read.len() && !to_eof {
                return;
            }
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
                self.keep_input(&data[used..n], need);
            }
            cx.scratch.read = data;
        } else {
            self.inbuf.extend_from_slice(&cx.scratch.read[..n]);
            let mut data = std::mem::take(&mut self.inbuf);
            let (used, need) = self.process(&mut data, cx, handler);
            data.drain(..used);
            if data.is_empty() {
                data = Vec::new(); // An idle connection holds no buffer of its own.
            }
            self.inbuf = data;
            if let Some(need) = need {
                self.inbuf.reserve(need.saturating_sub(self.inbuf.len()));
            }
        }
    }

    fn keep_input(&mut self, rest: &[u8], need: Option<usize>) {
        self.inbuf.reserve(need.unwrap_or(0).max(rest.len()));
        self.inbuf.extend_from_slice(rest);
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
        let out = if self.has_output() {
            &mut self.out
        } else {
            &mut cx.scratch.cork
        };
        loop {
            let open = self.session.close_state() == CloseState::Open;
            let step = match self.session.poll_input(&mut data[pos..], out) {
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
                    let mut reply = Reply::new(out, open);
                    handler.on_message(cx.id, message, &mut reply);
                    cx.stats.messages_sent += reply.sent();
                    if let Some((code, reason)) = reply.close_request() {
                        if self.session.close(code, reason, out) {
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
        let out = &mut cx.scratch.cork;
        match handshake::parse_request(data, cx.max_handshake_size) {
            Ok(None) => None,
            Ok(Some(_)) if cx.draining => {
                self.reject(Reject::Unavailable, out, cx.id, cx.stats);
                Some(data.len())
            }
            Ok(Some(req)) => {
                handshake::write_accept(req.key, out);
                self.phase = Phase::Open;
                self.deadline = None;
                log::debug!("{}: open {}", cx.id, req.path);
                handler.on_open(cx.id, req.path);
                Some(req.head_len)
            }
            Err(reject) => {
                self.reject(reject, out, cx.id, cx.stats);
                Some(data.len())
            }
        }
    }

    /// Answers the handshake with an HTTP error and closes.
    pub fn reject(&mut self, reject: Reject, out: &mut Vec<u8>, id: ConnId, stats: &mut Stats) {
        stats.rejected(reject.status());
        log::debug!(
            "{id}: handshake rejected: {} {}",
            reject.status(),
            reject.detail()
        );
        reject.write_response(out);
        self.phase = Phase::Closing { shut_down: false };
    }

    /// Writes the corked output of this connection; whatever the socket does not take is kept.
    pub fn flush_cork(&mut self, cx: &mut Context<'_>) {
        let cork = &mut cx.scratch.cork;
        if cork.is_empty() {
            return;
        }
        if self.has_output() {
            self.out.extend_from_slice(cork);
        } else {
            let written = write_some(&mut self.sock, cork, &mut self.gone);
            cx.stats.sent_bytes += written as u64;
            if written < cork.len() {
                self.out.clear();
                self.out_pos = 0;
                self.out.extend_from_slice(&cork[written..]);
            }
        }
        cork.clear();
    }

    /// Writes pending output; frees the buffer once it is all out. Returns the bytes written.
    pub fn flush(&mut self) -> usize {
        if !self.has_output() {
            return 0;
        }
        let written = write_some(&mut self.sock, &self.out[self.out_pos..], &mut self.gone);
        self.out_pos += written;
        if self.out_pos == self.out.len() {
            self.out = Vec::new();
            self.out_pos = 0;
        }
        written
    }

    /// Shuts down our sending side once all output is out (Closing phase).
    pub fn shut_down_when_flushed(&mut self) {
        if let Phase::Closing { shut_down: false } = self.phase {
            if !self.has_output() {
                // The peer reads our last bytes, then its FIN (or our timeout) ends this.
                let _ = self.sock.shutdown(Shutdown::Write);
                self.phase = Phase::Closing { shut_down: true };
            }
        }
    }
}

/// Writes as much of `buf` as the socket takes; marks `gone` on a hard error.
fn write_some(sock: &mut TcpStream, buf: &[u8], gone: &mut bool) -> usize {
    let mut written = 0;
    while written < buf.len() {
        match sock.write(&buf[written..]) {
            Ok(0) => {
                *gone = true;
                break;
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                *gone = true;
                break;
            }
        }
    }
    written
}

impl Conn {
    /// Starts the closing handshake from our side after everything already queued.
    pub fn start_close(&mut self, code: CloseCode, reason: &str, cx: &mut Context<'_>) {
        let out = if self.has_output() {
            &mut self.out
        } else {
            &mut cx.scratch.cork
        };
        if self.session.close(code, reason, out) {
            cx.stats.closed(Side::Server, code.0);
        }
        self.flush_cork(cx);
    }
}
