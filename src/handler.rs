//! The [`Handler`] trait the event loop calls for each connection, and the built-in echo handler.

use crate::protocol::frame::{write_frame, OpCode};
use crate::protocol::{CloseCode, Message};
use crate::server::ConnId;

/// Application logic. The loop calls it on its one thread; it must not block.
pub trait Handler {
    /// A handshake completed for `path`.
    fn on_open(&mut self, _conn: ConnId, _path: &str) {}

    /// A complete message arrived. `message` borrows the read buffer (unmasked in place); what
    /// the handler sends through `reply` is queued after any output already waiting.
    fn on_message(&mut self, conn: ConnId, message: Message<'_>, reply: &mut Reply<'_>);

    /// The connection is gone. `code` is the peer's close code if it sent a Close.
    fn on_close(&mut self, _conn: ConnId, _code: Option<CloseCode>) {}
}

/// The built-in handler: every message goes back as it came (text as text, binary as binary).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, _conn: ConnId, message: Message<'_>, reply: &mut Reply<'_>) {
        reply.send(message);
    }
}

/// What a handler may do to the connection a message came from.
pub struct Reply<'a> {
    out: &'a mut Vec<u8>,
    open: bool,
    close: Option<(CloseCode, &'static str)>,
    sent: u64,
}

impl<'a> Reply<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>, open: bool) -> Reply<'a> {
        Reply {
            out,
            open,
            close: None,
            sent: 0,
        }
    }

    /// Queues a message; returns false when the connection is closing and nothing was queued.
    pub fn send(&mut self, message: Message<'_>) -> bool {
        if !self.open {
            return false;
        }
        let opcode = if message.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        write_frame(self.out, true, opcode, message.as_bytes(), None);
        self.sent += 1;
        true
    }

    /// Starts the closing handshake with `code` after what is already queued.
    pub fn close(&mut self, code: CloseCode, reason: &'static str) {
        if self.open {
            self.open = false;
            self.close = Some((code, reason));
        }
    }

    /// Messages queued through this reply.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    pub(crate) fn close_request(&self) -> Option<(CloseCode, &'static str)> {
        self.close
    }
}
