//! Pub/sub payloads: the stamp each publication carries, and each subscriber's delivery check.
//!
//! The stamp says publisher, channel, sequence number and send time; the check finds lost,
//! duplicated and reordered deliveries and gives each delivery's latency.
//!
//! A payload is an ASCII header of [`HEADER_LEN`] bytes, fixed-width lowercase hex fields so it
//! is read without searching and still legible in a packet capture, then a known filler up to
//! the payload size:
//!
//! ```text
//! p=00000001 c=00000007 s=00000000002a t=00003b9aca00 abcdefghijklmnopqrstuvwxyzabc…
//!   publisher  channel    sequence       send time (ns since the run's epoch)
//! ```
//!
//! The publisher is a slot within its channel (0..publishers), the sequence number counts that
//! publisher's publications to that channel from 0, so a subscriber expects, per publisher
//! slot, exactly 0, 1, 2, … and anything else is a lost, duplicated or reordered delivery.

use std::time::{Duration, Instant};

/// Bytes of the header: four `k=` fields of 8, 8, 12 and 12 hex digits, each followed by a space.
pub const HEADER_LEN: usize = 4 * 3 + 8 + 8 + 12 + 12;
/// Field positions: (offset of the first hex digit, digit count), in header order.
const FIELDS: [(usize, usize); 4] = [(2, 8), (13, 8), (24, 12), (39, 12)];
/// Field names, in header order.
const KEYS: [u8; 4] = [b'p', b'c', b's', b't'];
/// Largest value a 12-digit field holds (sequence numbers; send times, ~78 hours of ns).
const MAX_WIDE: u64 = (1 << 48) - 1;

/// What a payload's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The publisher's slot within the channel.
    pub slot: u32,
    /// The channel's index (`/<prefix><channel>`).
    pub channel: u32,
    /// The publisher's sequence number on this channel, from 0.
    pub seq: u64,
    /// When it was sent (or, at a fixed rate, due), in ns since [`Payload::epoch`].
    pub sent_ns: u64,
}

/// Why a delivery could not be read as one of our publications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not the payload size of the run.
    Length,
    /// A frame of the other kind (text for binary or the reverse).
    Kind,
    /// The header is not ours.
    Header,
    /// The filler after the header was changed.
    Filler,
}

/// The publications of one run: size, frame kind, filler and time origin. One per worker; it
/// stamps what publishers send and checks what subscribers receive.
pub struct Payload {
    bytes: Vec<u8>,
    pub binary: bool,
    /// Time origin of the send stamps, shared by every worker of the run.
    pub epoch: Instant,
}

impl Payload {
    /// A payload of `size` bytes (at least [`HEADER_LEN`], which the command line checks).
    pub fn new(size: usize, binary: bool, epoch: Instant) -> Payload {
        let bytes = (0..size.max(HEADER_LEN))
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let mut p = Payload {
            bytes,
            binary,
            epoch,
        };
        p.stamp(&Header {
            slot: 0,
            channel: 0,
            seq: 0,
            sent_ns: 0,
        });
        p
    }

    /// Nanoseconds from the epoch to `t` (0 before it; clamped to what the header holds).
    pub fn ns_since_epoch(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.epoch).as_nanos() as u64).min(MAX_WIDE)
    }

    /// Publish → deliver latency of a delivery read at `now`.
    pub fn latency(&self, h: &Header, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch + Duration::from_nanos(h.sent_ns))
    }

    /// Writes `h` into the payload and returns its bytes (ASCII, so valid as text).
    pub fn stamp(&mut self, h: &Header) -> &[u8] {
        let values = [
            u64::from(h.slot),
            u64::from(h.channel),
            h.seq.min(MAX_WIDE),
            h.sent_ns.min(MAX_WIDE),
        ];
        for (((off, width), key), value) in FIELDS.into_iter().zip(KEYS).zip(values) {
            self.bytes[off - 2] = key;
            self.bytes[off - 1] = b'=';
            write_hex(&mut self.bytes[off..off + width], value);
            self.bytes[off + width] = b' ';
        }
        &self.bytes
    }

    /// The header of a delivery, once its size, kind and filler are what this run sends.
    pub fn check(&self, got: &[u8], is_text: bool) -> Result<Header, Malformed> {
        if got.len() != self.bytes.len() {
            return Err(Malformed::Length);
        }
        if is_text == self.binary {
            return Err(Malformed::Kind);
        }
        let header = parse_header(got).ok_or(Malformed::Header)?;
        if got[HEADER_LEN..] != self.bytes[HEADER_LEN..] {
            return Err(Malformed::Filler);
        }
        Ok(header)
    }
}

/// Reads the header at the front of `b` (None unless it has exactly our layout).
pub fn parse_header(b: &[u8]) -> Option<Header> {
    let head = b.get(..HEADER_LEN)?;
    let mut values = [0u64; 4];
    for (((off, width), key), value) in FIELDS.into_iter().zip(KEYS).zip(&mut values) {
        if head[off - 2] != key || head[off - 1] != b'=' || head[off + width] != b' ' {
            return None;
        }
        *value = read_hex(&head[off..off + width])?;
    }
    Some(Header {
        slot: u32::try_from(values[0]).ok()?,
        channel: u32::try_from(values[1]).ok()?,
        seq: values[2],
        sent_ns: values[3],
    })
}

/// `value` as lowercase hex filling `out` (high digits dropped if it does not fit).
fn write_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(value & 15) as usize];
        value >>= 4;
    }
}

/// Fixed-width lowercase hex, nothing else.
fn read_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

/// Deliveries as a subscriber (or many, merged) counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries in order (the ones latency is measured on).
    pub delivered: u64,
    /// Publications skipped over, or never delivered by the end of the run.
    pub lost: u64,
    /// The last in-order publication again.
    pub duplicated: u64,
    /// An older publication after a newer one from the same publisher.
    pub out_of_order: u64,
    /// Not one of our payloads (see [`Malformed`]).
    pub malformed: u64,
    /// A publication for another channel, or from a publisher slot that does not exist.
    pub misrouted: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.malformed += o.malformed;
        self.misrouted += o.misrouted;
    }

    /// Every delivery was one expected, in order, and none is missing.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.malformed == 0
            && self.misrouted == 0
    }
}

/// What one subscriber expects next from each publisher of its channel.
pub struct Expect {
    pub channel: u32,
    /// Per publisher slot: the next sequence number due.
    next: Box<[u64]>,
}

/// How a delivery compares with what its subscriber expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    /// In order after skipping this many publications (lost).
    Gap(u64),
    Duplicate,
    OutOfOrder,
    Misrouted,
}

impl Expect {
    pub fn new(channel: u32, publishers: usize) -> Expect {
        Expect {
            channel,
            next: vec![0; publishers].into_boxed_slice(),
        }
    }

    /// Checks a delivery's header and moves the expectation on, counting into `tally`.
    pub fn check(&mut self, h: &Header, tally: &mut Tally) -> Verdict {
        let next = match self.next.get_mut(h.slot as usize) {
            Some(n) if h.channel == self.channel => n,
            _ => {
                tally.misrouted += 1;
                return Verdict::Misrouted;
            }
        };
        let verdict = if h.seq == *next {
            Verdict::InOrder
        } else if h.seq > *next {
            Verdict::Gap(h.seq - *next)
        } else if h.seq + 1 == *next {
            Verdict::Duplicate
        } else {
            Verdict::OutOfOrder
        };
        match verdict {
            Verdict::InOrder => tally.delivered += 1,
            Verdict::Gap(n) => {
                tally.delivered += 1;
                tally.lost += n;
            }
            Verdict::Duplicate => tally.duplicated += 1,
            Verdict::OutOfOrder => tally.out_of_order += 1,
            Verdict::Misrouted => {}
        }
        if h.seq >= *next {
            *next = h.seq + 1;
        }
        verdict
    }

    /// Publications still missing at the end, given how many each slot published here.
    pub fn missing(&self, published: impl Fn(usize) -> u64) -> u64 {
        self.next
            .iter()
            .enumerate()
            .map(|(slot, &n)| published(slot).saturating_sub(n))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(slot: u32, channel: u32, seq: u64) -> Header {
        Header {
            slot,
            channel,
            seq,
            sent_ns: 1_000_000 + seq,
        }
    }

    #[test]
    fn header_layout_is_fixed_width_ascii() {
        let mut p = Payload::new(100, false, Instant::now());
        let bytes = p.stamp(&header(1, 7, 42)).to_vec();
        assert_eq!(bytes.len(), 100);
        assert_eq!(
            &bytes[..HEADER_LEN],
            b"p=00000001 c=00000007 s=00000000002a t=0000000f426a "
        );
        assert!(bytes.is_ascii());
        assert_eq!(parse_header(&bytes), Some(header(1, 7, 42)));
    }

    #[test]
    fn stamped_payloads_check_out_and_damage_is_caught() {
        for binary in [false, true] {
            for size in [HEADER_LEN, 100, 1024] {
                let mut p = Payload::new(size, binary, Instant::now());
                let h = header(3, 9, (1 << 40) + 5);
                let sent = p.stamp(&h).to_vec();
                assert_eq!(p.check(&sent, !binary), Ok(h), "size {size}");
                assert_eq!(p.check(&sent, binary), Err(Malformed::Kind));
                assert_eq!(p.check(&sent[1..], !binary), Err(Malformed::Length));
                let mut bad = sent.clone();
                bad[FIELDS[2].0] = b'x';
                assert_eq!(p.check(&bad, !binary), Err(Malformed::Header));
                bad = sent.clone();
                bad[0] = b'q';
                assert_eq!(p.check(&bad, !binary), Err(Malformed::Header));
                if size > HEADER_LEN {
                    bad = sent.clone();
                    *bad.last_mut().unwrap() ^= 1;
                    assert_eq!(p.check(&bad, !binary), Err(Malformed::Filler));
                }
            }
        }
    }

    #[test]
    fn uppercase_or_short_headers_are_not_ours() {
        let mut p = Payload::new(64, false, Instant::now());
        let mut b = p.stamp(&header(10, 11, 12)).to_vec();
        assert!(parse_header(&b[..HEADER_LEN - 1]).is_none());
        b[FIELDS[0].0 + 7] = b'A';
        assert!(parse_header(&b).is_none());
    }

    #[test]
    fn wide_fields_clamp_instead_of_wrapping() {
        let mut p = Payload::new(HEADER_LEN, true, Instant::now());
        let h = Header {
            slot: u32::MAX,
            channel: 0,
            seq: u64::MAX,
            sent_ns: u64::MAX,
        };
        let got = parse_header(p.stamp(&h)).unwrap();
        assert_eq!(
            (got.slot, got.seq, got.sent_ns),
            (u32::MAX, MAX_WIDE, MAX_WIDE)
        );
    }

    #[test]
    fn expectations_count_lost_duplicated_and_reordered() {
        let mut e = Expect::new(2, 2);
        let mut t = Tally::default();
        assert_eq!(e.check(&header(0, 2, 0), &mut t), Verdict::InOrder);
        assert_eq!(e.check(&header(1, 2, 0), &mut t), Verdict::InOrder);
        assert_eq!(e.check(&header(0, 2, 1), &mut t), Verdict::InOrder);
        assert_eq!(e.check(&header(0, 2, 1), &mut t), Verdict::Duplicate);
        assert_eq!(e.check(&header(0, 2, 4), &mut t), Verdict::Gap(2));
        assert_eq!(e.check(&header(0, 2, 2), &mut t), Verdict::OutOfOrder);
        assert_eq!(e.check(&header(0, 3, 5), &mut t), Verdict::Misrouted);
        assert_eq!(e.check(&header(2, 2, 0), &mut t), Verdict::Misrouted);
        assert_eq!(
            t,
            Tally {
                delivered: 4,
                lost: 2,
                duplicated: 1,
                out_of_order: 1,
                malformed: 0,
                misrouted: 2,
            }
        );
        assert!(!t.clean());
        // Slot 0 published 7 (got up to 4: 5 and 6 missing), slot 1 published 1 (none missing).
        assert_eq!(e.missing(|slot| [7, 1][slot]), 2);
        assert!(Tally::default().clean());
    }

    #[test]
    fn latency_is_measured_from_the_stamp() {
        let epoch = Instant::now();
        let p = Payload::new(HEADER_LEN, false, epoch);
        let sent = epoch + Duration::from_millis(5);
        let h = Header {
            sent_ns: p.ns_since_epoch(sent),
            ..header(0, 0, 0)
        };
        assert_eq!(
            p.latency(&h, sent + Duration::from_micros(250)),
            Duration::from_micros(250)
        );
        assert_eq!(p.ns_since_epoch(epoch - Duration::from_secs(1)), 0);
    }
}
