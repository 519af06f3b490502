//! The sans-IO WebSocket protocol: pure functions and state machines over byte slices.
//!
//! Nothing here touches a socket or a clock; `server/` owns all IO and time. Both roles are
//! implemented, so the load generator speaks through the same code as the server.
//!
//! Every byte here may come from a hostile peer, and the server runs all connections on one
//! thread: a panic on one client's bytes takes every client down. So the module denies the
//! constructs that can panic on untrusted input: `unwrap`/`expect`, indexing and slicing that
//! can go out of bounds, and arithmetic that can overflow. Tests may use them.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod session;
pub mod utf8;

pub use close::CloseCode;
pub use frame::{OpCode, Role};
pub use message::Message;
pub use session::{Event, Session};

/// A violation of RFC 6455 by the peer; each maps to the close code wsd answers it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// An RSV bit was set without a negotiated extension (§5.2), or RSV1 where
    /// permessage-deflate does not allow it (RFC 7692 §6.1).
    ReservedBits,
    /// A reserved opcode (§5.2).
    UnknownOpCode,
    /// A client frame without a mask, or a server frame with one (§5.1).
    Masking,
    /// A 64-bit length with its most significant bit set (§5.2).
    FrameLength,
    /// A control frame with FIN clear (§5.5).
    FragmentedControl,
    /// A control frame payload over 125 bytes (§5.5).
    ControlTooLong,
    /// A continuation frame with no message to continue (§5.4).
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is still open (§5.4).
    ExpectedContinuation,
    /// A Close payload of one byte, or a status code that may not be sent (§5.5.1, §7.4).
    InvalidClosePayload,
    /// Text, or a Close reason, that is not UTF-8 (§8.1).
    InvalidUtf8,
    /// A frame longer than `max_frame_size`.
    FrameTooBig,
    /// A message longer than `max_message_size` (for a compressed one: once inflated).
    MessageTooBig,
    /// A compressed message that does not inflate (RFC 7692 §7.2.2).
    BadCompressedData,
}

impl ProtocolError {
    /// The close code sent to the peer for this error (§7.4.1).
    pub fn close_code(self) -> CloseCode {
        match self {
            // Data inconsistent with its frame: the same class as bad UTF-8 (§7.4.1).
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason sent in the Close frame, so a client developer can see what went wrong.
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::UnknownOpCode => "unknown opcode",
            ProtocolError::Masking => "client frames must be masked",
            ProtocolError::FrameLength => "invalid frame length",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame too long",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "expected a continuation frame",
            ProtocolError::InvalidClosePayload => "invalid close payload",
            ProtocolError::InvalidUtf8 => "invalid UTF-8",
            ProtocolError::FrameTooBig => "frame too big",
            ProtocolError::MessageTooBig => "message too big",
            ProtocolError::BadCompressedData => "invalid compressed data",
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ProtocolError {}
