//! Close codes and the rules for a Close frame's payload (RFC 6455 §5.5.1, §7.4).

use super::ProtocolError;

/// A close status code (§7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY: CloseCode = CloseCode(1008);
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// The server is restarting (IANA registry): a wss:// connection at a live upgrade.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);

    /// Whether a peer may put this code on the wire (§7.4.1, §7.4.2).
    ///
    /// 1004 is reserved, 1005 and 1006 "MUST NOT be set as a status code in a Close control
    /// frame", 1015 likewise; 1016–2999 are reserved for future revisions of the RFC; 3000–4999
    /// are for libraries, frameworks and applications.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed Close payload: no code at all, or a code with a UTF-8 reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: Option<CloseCode>,
    pub reason: &'a str,
}

/// Parses and checks a Close frame's (unmasked) payload.
pub fn parse_close_payload(payload: &[u8]) -> Result<CloseFrame<'_>, ProtocolError> {
    match payload {
        [] => Ok(CloseFrame {
            code: None,
            reason: "",
        }),
        // §5.5.1: if there is a body, "the first two bytes of the body MUST be a 2-byte
        // unsigned integer" — one byte cannot be.
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidClosePayload);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(CloseFrame {
                code: Some(code),
                reason,
            })
        }
    }
}

/// Longest reason that fits a Close frame beside its code (§5.5: 125 bytes of payload).
pub const MAX_REASON_LEN: usize = 123;

/// Cuts `reason` to at most [`MAX_REASON_LEN`] bytes on a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    // A character is at most 4 bytes, so a boundary is among the last 4 positions; 0 always is.
    let end = (0..=MAX_REASON_LEN)
        .rev()
        .find(|&end| reason.is_char_boundary(end))
        .unwrap_or(0);
    reason.get(..end).unwrap_or_default()
}

/// Where a connection stands in the closing handshake (§7); one enum, one `match` per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Data flows both ways.
    Open,
    /// We sent a Close and wait for the peer's; data frames from the peer are ignored.
    ClosedByUs,
    /// The peer sent a Close and our answer is queued: once it is written, close TCP.
    ClosedByPeer,
    /// Both Close frames have been exchanged.
    Acknowledged,
    /// We failed the connection (protocol error): our Close is queued, the rest of the input is
    /// discarded.
    Failed,
}

impl CloseState {
    /// Whether the peer may still send frames we act on.
    pub fn reads_frames(self) -> bool {
        matches!(self, CloseState::Open | CloseState::ClosedByUs)
    }

    /// Whether we may still send data frames (§5.5.1: not after sending a Close).
    pub fn can_send(self) -> bool {
        self == CloseState::Open
    }

    /// Whether the WebSocket exchange is over and TCP should close once output is flushed.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            CloseState::ClosedByPeer | CloseState::Acknowledged | CloseState::Failed
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(code: u16) -> Result<CloseFrame<'static>, ProtocolError> {
        let bytes: &'static [u8] = Box::leak(code.to_be_bytes().to_vec().into_boxed_slice());
        parse_close_payload(bytes)
    }

    #[test]
    fn every_code_rule() {
        for code in 0..=u16::MAX {
            let expected_ok = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(close(code).is_ok(), expected_ok, "code {code}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                close(bad),
                Err(ProtocolError::InvalidClosePayload),
                "code {bad}"
            );
        }
        for good in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert_eq!(close(good).unwrap().code, Some(CloseCode(good)));
        }
    }

    #[test]
    fn payload_shapes() {
        assert_eq!(
            parse_close_payload(&[]),
            Ok(CloseFrame {
                code: None,
                reason: ""
            })
        );
        assert_eq!(
            parse_close_payload(&[0x03]),
            Err(ProtocolError::InvalidClosePayload)
        );
        let mut ok = vec![0x03, 0xE8];
        ok.extend_from_slice("bye κόσμε".as_bytes());
        assert_eq!(parse_close_payload(&ok).unwrap().reason, "bye κόσμε");
        let bad_reason = [0x03, 0xE8, 0xCE, 0xBA, 0xE1, 0xBD];
        assert_eq!(
            parse_close_payload(&bad_reason),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn reason_truncation_keeps_characters_whole() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_REASON_LEN);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate_reason("short"), "short");
    }
}
