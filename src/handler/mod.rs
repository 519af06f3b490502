//! The [`Handler`] trait the event loop calls, and [`Ctx`], what a handler may do from there:
//! send to any connection, subscribe connections to channels, publish, close.
//!
//! Built-in handlers: [`Echo`] (the default mode) and [`PubSub`] (`mode = "pubsub"`).

mod echo;
mod pubsub;

use std::time::{Duration, Instant};

use crate::conn_id::ConnId;
use crate::protocol::deflate::Agreed;
use crate::protocol::frame::{write_frame, OpCode};
use crate::protocol::handshake::Reject;
use crate::protocol::{CloseCode, Message};
use crate::pubsub::{ChannelError, Hub};

pub use echo::Echo;
pub use pubsub::PubSub;

/// Application logic. The loop calls it on its one thread; it must not block.
///
/// What a handler does through its [`Ctx`] reaches each connection in the order it was done:
/// messages to the connection being served go out at once when nothing else is queued for the
/// turn, everything else at the end of the loop turn, one write per connection.
pub trait Handler {
    /// A handshake for request target `target` (path and query) is complete and valid; an
    /// `Err` answers it with that HTTP status instead of upgrading.
    fn accept(&mut self, _target: &str) -> Result<(), Reject> {
        Ok(())
    }

    /// The connection is open (the 101 is queued).
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _target: &str) {}

    /// A complete message arrived. `message` borrows the read buffer (unmasked in place).
    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, message: Message<'_>);

    /// The connection is gone (its subscriptions already ended). `code` is the peer's close
    /// code if it sent a Close.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _code: Option<CloseCode>) {}

    /// A [`crate::pubsub::Publisher::wake`] from another thread.
    fn on_wake(&mut self, _ctx: &mut Ctx<'_>) {}

    /// The timer set with [`Ctx::set_timer`] expired.
    fn on_timer(&mut self, _ctx: &mut Ctx<'_>) {}
}

/// The connection whose message (or open) is being handled: replies to it may go straight into
/// its output.
pub(crate) struct Current<'a> {
    pub id: ConnId,
    pub out: &'a mut Vec<u8>,
    /// The session may still send data frames.
    pub can_send: bool,
    /// Messages written into `out`.
    pub sent: u64,
    /// A close the loop applies as soon as the handler returns.
    pub close: Option<(CloseCode, String)>,
    /// permessage-deflate, when the connection negotiated it: replies are compressed.
    pub deflate: Option<Outgoing<'a>>,
}

/// How replies to a connection with permessage-deflate are compressed (with the hub's
/// compressor, the loop's one).
pub(crate) struct Outgoing<'a> {
    pub agreed: Agreed,
    /// This connection's window of our stream (context takeover), if it keeps one.
    pub window: Option<&'a mut Vec<u8>>,
    /// Shorter messages go out uncompressed.
    pub threshold: usize,
}

/// What a handler may do, handed to each of its calls.
pub struct Ctx<'a> {
    hub: &'a mut Hub,
    current: Option<Current<'a>>,
    timer: &'a mut Option<Instant>,
    now: Instant,
    draining: bool,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        hub: &'a mut Hub,
        current: Option<Current<'a>>,
        timer: &'a mut Option<Instant>,
        now: Instant,
        draining: bool,
    ) -> Ctx<'a> {
        Ctx {
            hub,
            current,
            timer,
            now,
            draining,
        }
    }

    /// What the call did to the connection being served.
    pub(crate) fn into_current(self) -> Option<Current<'a>> {
        self.current
    }

    /// The loop's time at the start of this turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether the server is draining (it will close every connection soon).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Queues a message for `conn`. Returns false when it is the connection being served and
    /// it is closing; a message for a connection that has gone is dropped.
    pub fn send(&mut self, conn: ConnId, message: Message<'_>) -> bool {
        if let Some(cur) = self.current.as_mut().filter(|c| c.id == conn) {
            if !cur.can_send {
                return false;
            }
            if self.hub.is_idle() {
                // Nothing of this turn is queued ahead of it: straight into the output.
                let opcode = if message.is_text() {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                match cur.deflate.as_mut() {
                    Some(d) if message.len() >= d.threshold => {
                        self.hub.deflater_mut().write_message(
                            cur.out,
                            opcode,
                            message.as_bytes(),
                            &d.agreed,
                            d.window.as_deref_mut(),
                            None,
                        );
                    }
                    _ => write_frame(cur.out, true, opcode, message.as_bytes(), None),
                }
                cur.sent += 1;
                return true;
            }
        }
        self.hub.send(conn, message);
        true
    }

    /// Starts the closing handshake with `conn` (after what is already queued for it). A code
    /// that may not be sent (RFC 6455 §7.4) is replaced by 1011.
    pub fn close(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        let code = if code.is_sendable() {
            code
        } else {
            CloseCode::INTERNAL_ERROR
        };
        let queued_ahead = self.hub.has_entries();
        if let Some(cur) = self.current.as_mut().filter(|c| c.id == conn) {
            if !cur.can_send {
                return;
            }
            cur.can_send = false;
            if !queued_ahead {
                cur.close = Some((code, reason.to_string()));
                return;
            }
        }
        self.hub.close(conn, code, reason);
    }

    /// Subscribes `conn` to `channel`; `Ok(false)` if it already was.
    pub fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<bool, ChannelError> {
        self.hub.subscribe(conn, channel)
    }

    /// Unsubscribes `conn` from `channel`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> bool {
        self.hub.unsubscribe(conn, channel)
    }

    /// Publishes `message` to every subscriber of `channel` (framed once, delivered at the end
    /// of the turn); returns the number of subscribers it is queued for.
    pub fn publish(&mut self, channel: &str, message: Message<'_>) -> usize {
        let subscribers = self.hub.subscribers(channel);
        self.hub.publish(channel, message);
        subscribers
    }

    /// Publishes `message` to the first channel `conn` subscribed to (its path's channel in
    /// the pub/sub mode); returns false when it has none.
    pub fn publish_to_first_channel(&mut self, conn: ConnId, message: Message<'_>) -> bool {
        self.hub.publish_first(conn, message).is_some()
    }

    /// Local subscribers of `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.hub.subscribers(channel)
    }

    /// The channels `conn` is subscribed to, in the order it joined them.
    pub fn channels_of(&self, conn: ConnId) -> impl Iterator<Item = &str> + '_ {
        self.hub.channels_of(conn)
    }

    /// Calls [`Handler::on_timer`] once, `after` from now (replacing an earlier setting).
    pub fn set_timer(&mut self, after: Duration) {
        *self.timer = Some(self.now + after);
    }

    pub fn cancel_timer(&mut self) {
        *self.timer = None;
    }
}
