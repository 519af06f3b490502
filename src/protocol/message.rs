//! Messages (§5.6) and the assembly of fragmented ones (§5.4), with incremental UTF-8 checks.

use super::utf8::Utf8Validator;
use super::ProtocolError;

/// A complete data message, borrowed from the bytes it arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kind of data message a frame starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    Text,
    Binary,
}

/// The state of one message between its frames.
///
/// `buf` only holds bytes while a fragmented message is open; a message sent in one frame is
/// handed over from the read buffer and never copied here. UTF-8 is checked for every text
/// payload piece the moment it is unmasked, whether or not its frame is complete.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Option<DataKind>,
    buf: Vec<u8>,
    utf8: Utf8Validator,
}

impl Assembler {
    /// The kind of the fragmented message in progress, if any.
    pub fn open_kind(&self) -> Option<DataKind> {
        self.open
    }

    /// Bytes of the fragmented message so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Checks a newly unmasked piece of a text payload (fail fast, §8.1).
    pub fn check_text(&mut self, piece: &[u8]) -> Result<(), ProtocolError> {
        self.utf8
            .feed(piece)
            .map_err(|_| ProtocolError::InvalidUtf8)
    }

    /// Whether text checked so far ends on a character boundary.
    pub fn text_complete(&self) -> bool {
        self.utf8.is_complete()
    }

    /// Starts a fragmented message with its first frame's payload.
    pub fn start(&mut self, kind: DataKind, payload: &[u8]) {
        self.open = Some(kind);
        self.buf.clear();
        self.buf.extend_from_slice(payload);
    }

    /// Appends a continuation frame's payload.
    pub fn push(&mut self, payload: &[u8]) {
        self.buf.extend_from_slice(payload);
    }

    /// Ends the fragmented message and returns it; the bytes stay valid until the next `reset`.
    ///
    /// For a text message the caller has fed every piece to [`Assembler::check_text`] and seen
    /// [`Assembler::text_complete`] hold.
    pub fn finish(&mut self) -> Message<'_> {
        match self.open.take() {
            Some(DataKind::Text) => {
                debug_assert!(self.utf8.is_complete());
                debug_assert!(std::str::from_utf8(&self.buf).is_ok());
                // SAFETY: every byte of `buf` went through `check_text` in order, which accepts
                // only valid UTF-8 pieces and carries characters split between them, and the
                // caller checked that no character is left half-way (`text_complete`). Skipping
                // a second validation pass matters for messages of many megabytes.
                Message::Text(unsafe { std::str::from_utf8_unchecked(&self.buf) })
            }
            Some(DataKind::Binary) | None => Message::Binary(&self.buf),
        }
    }

    /// Clears the state for the next message (the buffer keeps its capacity).
    pub fn reset(&mut self) {
        self.open = None;
        self.buf.clear();
        self.utf8.reset();
    }

    /// Gives up the heap buffer when no message is in progress, so an idle connection owns
    /// none; returns it for reuse.
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        if self.open.is_some() || self.buf.capacity() == 0 {
            return None;
        }
        self.buf.clear();
        Some(std::mem::take(&mut self.buf))
    }

    /// Hands the assembler an empty buffer (from a pool) to use for the next fragmented message.
    pub fn give_buffer(&mut self, buf: Vec<u8>) {
        if self.buf.capacity() == 0 && self.open.is_none() {
            self.buf = buf;
            self.buf.clear();
        }
    }

    pub fn has_buffer(&self) -> bool {
        self.buf.capacity() != 0
    }

    /// The message in progress as plain data: its kind, its bytes so far, and the UTF-8 bytes
    /// carried to the next fragment.
    pub fn parts(&self) -> (Option<DataKind>, &[u8], &[u8]) {
        (self.open, &self.buf, self.utf8.carried())
    }

    /// An assembler in the state [`Assembler::parts`] described.
    pub fn from_parts(open: Option<DataKind>, buf: Vec<u8>, carried: &[u8]) -> Option<Assembler> {
        Some(Assembler {
            open,
            buf,
            utf8: Utf8Validator::resume(carried)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_is_given_up_only_between_messages() {
        let mut a = Assembler::default();
        assert_eq!(a.take_buffer(), None, "nothing to give before any message");
        a.start(DataKind::Binary, b"part one");
        assert_eq!(
            a.take_buffer(),
            None,
            "a message in progress keeps its bytes"
        );
        a.push(b", two");
        assert_eq!(a.finish(), Message::Binary(b"part one, two"));
        let buf = a.take_buffer().expect("the finished message's buffer");
        assert!(buf.is_empty() && buf.capacity() >= 13);
        assert!(!a.has_buffer(), "an idle connection holds no buffer");
    }
}
