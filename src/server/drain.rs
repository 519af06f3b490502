//! The paced drain: with `drain_spread`, the Close frames of a drain go out spread evenly over
//! that window, each with jitter, so that the clients reconnecting elsewhere do not arrive in
//! one burst. Until its slot a connection is served as before; at its slot it is read once more
//! and then sent its Close, and `close_timeout` runs from there.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::handler::Handler;

use super::{ConnId, EventLoop};

/// The connections of a paced drain still waiting for their Close, in slot order.
#[derive(Debug, Default)]
pub struct Pacer {
    slots: VecDeque<(Instant, usize)>,
}

impl Pacer {
    /// Gives each of `keys` a slot in `[start, start + spread)`: the window cut into equal parts,
    /// one per connection, and a random point inside each part.
    pub fn schedule(&mut self, keys: Vec<usize>, start: Instant, spread: Duration) {
        let n = keys.len() as f64;
        let mut rng = Jitter::new();
        self.slots = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let at = spread.mul_f64((i as f64 + rng.next_unit()) / n);
                (start + at, key)
            })
            .collect();
    }

    /// The next connection whose slot has come.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        match self.slots.front() {
            Some(&(at, key)) if at <= now => {
                self.slots.pop_front();
                Some(key)
            }
            _ => None,
        }
    }

    /// When the next slot comes.
    pub fn next(&self) -> Option<Instant> {
        self.slots.front().map(|&(at, _)| at)
    }

    /// Connections still waiting for their Close.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

/// A small xorshift generator seeded from the standard library's per-process random keys: no
/// cryptographic needs here, only that two servers do not pace in lockstep.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        Jitter(RandomState::new().hash_one(std::process::id()) | 1)
    }

    /// A number in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl<H: Handler> EventLoop<H> {
    /// Sends the Close of every paced connection whose slot has come.
    pub(super) fn send_paced_closes(&mut self) {
        while let Some(key) = self.pacer.pop_due(self.now) {
            self.drain_one(ConnId(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_window_in_order() {
        let start = Instant::now();
        let spread = Duration::from_secs(2);
        let mut p = Pacer::default();
        p.schedule((0..200).collect(), start, spread);
        assert_eq!(p.len(), 200);
        let slots: Vec<Instant> = p.slots.iter().map(|&(at, _)| at).collect();
        assert!(slots.windows(2).all(|w| w[0] <= w[1]));
        for (i, at) in slots.iter().enumerate() {
            let part = spread / 200;
            assert!(*at >= start + part * i as u32 && *at <= start + part * (i as u32 + 1));
        }
        assert_eq!(p.pop_due(start), None);
        assert_eq!(p.pop_due(start + spread), Some(0));
        let mut rest = 1;
        while p.pop_due(start + spread).is_some() {
            rest += 1;
        }
        assert_eq!((rest, p.next()), (200, None));
    }
}
