//! Incremental UTF-8 validation: text is checked as it arrives, failing on the first bad byte
//! even when the frame or message that holds it is not complete (RFC 6455 §8.1).

/// Validates a byte stream delivered in pieces of any size.
///
/// The bulk of each piece goes through `core::str::from_utf8` (fast, and it reports an
/// incomplete final character separately from an invalid one); up to three bytes of a character
/// split across pieces are carried to the next call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

/// The stream holds a byte sequence that is not, and cannot become, UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// The bytes of a character split across pieces, carried to the next piece (0–3 bytes).
    pub fn carried(&self) -> &[u8] {
        self.carry
            .get(..usize::from(self.carry_len))
            .unwrap_or_default()
    }

    /// A validator that resumes after `carried` (from [`Utf8Validator::carried`]); `None` when
    /// those bytes cannot be the start of a character.
    pub fn resume(carried: &[u8]) -> Option<Utf8Validator> {
        let mut v = Utf8Validator::default();
        if carried.len() > 3 {
            return None;
        }
        // Feeding the carried bytes again rebuilds exactly the same state.
        v.feed(carried).ok()?;
        (v.carried() == carried).then_some(v)
    }

    /// Checks the next piece of the stream.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let want = char_width(self.carry[0]);
            // Complete the carried character from the front of `input` (as far as it goes).
            let taken = self
                .carry
                .iter_mut()
                .take(want)
                .skip(have)
                .zip(input)
                .map(|(slot, byte)| *slot = *byte)
                .count();
            // At most 4: never saturates.
            let filled = have.saturating_add(taken);
            match std::str::from_utf8(self.carry.get(..filled).unwrap_or_default()) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix; `taken` used up all of the input.
                    self.carry_len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            input = input.get(taken..).unwrap_or_default();
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(InvalidUtf8),
                None => {
                    // A valid prefix of a character at the very end (1 to 3 bytes): keep it for
                    // the next piece.
                    let tail = input.get(e.valid_up_to()..).unwrap_or_default();
                    for (slot, byte) in self.carry.iter_mut().zip(tail) {
                        *slot = *byte;
                    }
                    self.carry_len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// Whether the stream may end here (no character left half-way).
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }

    /// Forgets any carried bytes, for the next message.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

/// Length of the character that `lead` starts; only called on bytes `from_utf8` accepted as a
/// lead of an incomplete character (0xC2..=0xF4).
fn char_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], splits: &[usize]) -> Result<bool, InvalidUtf8> {
        let mut v = Utf8Validator::default();
        let mut last = 0;
        for &s in splits {
            v.feed(&bytes[last..s])?;
            last = s;
        }
        v.feed(&bytes[last..])?;
        Ok(v.is_complete())
    }

    #[test]
    fn every_split_of_valid_text_is_accepted() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞 end".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(feed_split(text, &[a, b]), Ok(true), "splits {a},{b}");
            }
        }
    }

    #[test]
    fn invalid_bytes_fail_in_whichever_piece_they_arrive() {
        // κόσμε followed by a surrogate (ED A0 80) then more text: invalid at byte 12.
        let mut bad = "κόσμε".as_bytes().to_vec();
        bad.extend_from_slice(&[0xED, 0xA0, 0x80]);
        bad.extend_from_slice(b"edited");
        for a in 0..=bad.len() {
            for b in a..=bad.len() {
                assert_eq!(
                    feed_split(&bad, &[a, b]),
                    Err(InvalidUtf8),
                    "splits {a},{b}"
                );
            }
        }
    }

    #[test]
    fn fails_fast_on_a_prefix_that_cannot_complete() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[0xCE, 0xBA]), Ok(()));
        // 0xF4 0x90 is already beyond U+10FFFF: no continuation can make it valid.
        assert_eq!(v.feed(&[0xF4, 0x90]), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[0xF5]), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[0xED]), Ok(()));
        assert_eq!(v.feed(&[0xA0]), Err(InvalidUtf8));
    }

    #[test]
    fn incomplete_end_is_reported() {
        let mut v = Utf8Validator::default();
        v.feed(&[0xF0, 0x9D, 0x84]).unwrap();
        assert!(!v.is_complete());
        v.feed(&[0x9E]).unwrap();
        assert!(v.is_complete());
    }
}
