//! Connection deadlines in a hashed timing wheel: O(1) to arm, move or cancel, no allocation
//! or syscall per timer, and the poll timeout comes from the earliest occupied slot.
//!
//! Each connection has at most one deadline at a time (handshake, ping, pong or close), so the
//! wheel keeps one node per slab key in a parallel array, linked into the list of its slot.
//! A slot covers [`TICK`]; the wheel spans [`SLOTS`] ticks, and a deadline further out waits in
//! its slot for as many turns as it needs (it is checked, not fired, when its slot comes up
//! early). Deadlines are rounded up to the next tick, so a timer never fires early and fires at
//! most one tick (plus the loop's own latency) late.

use std::time::{Duration, Instant};

/// Resolution of the wheel.
pub const TICK: Duration = Duration::from_millis(4);
/// Slots in the wheel: 16,384 × 4 ms spans 65 s, longer than any default timeout.
const SLOTS: usize = 16_384;
const WORDS: usize = SLOTS / 64;
/// "No node" in a link.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    /// Tick at which the timer fires; `u64::MAX` when unarmed.
    at: u64,
    prev: u32,
    next: u32,
}

const UNARMED: Node = Node {
    at: u64::MAX,
    prev: NIL,
    next: NIL,
};

pub struct Wheel {
    origin: Instant,
    /// Every tick before this one has been processed.
    current: u64,
    heads: Vec<u32>,
    /// One bit per slot with at least one node.
    occupied: [u64; WORDS],
    nodes: Vec<Node>,
    armed: usize,
}

impl Wheel {
    pub fn new(origin: Instant) -> Wheel {
        Wheel {
            origin,
            current: 0,
            heads: vec![NIL; SLOTS],
            occupied: [0; WORDS],
            nodes: Vec::new(),
            armed: 0,
        }
    }

    #[cfg(test)]
    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.armed
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        let ticks = since.as_nanos().div_ceil(TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX - 1)
    }

    /// The instant a tick stands for.
    fn instant_of(&self, tick: u64) -> Instant {
        let nanos = u128::from(tick) * TICK.as_nanos();
        self.origin + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The deadline armed for `key`, if any (rounded up to the wheel's tick).
    pub fn deadline(&self, key: usize) -> Option<Instant> {
        let node = self.nodes.get(key)?;
        (node.at != u64::MAX).then(|| self.instant_of(node.at))
    }

    /// Arms (or moves) the timer of `key` to fire at `at`.
    pub fn arm(&mut self, key: usize, at: Instant) {
        self.cancel(key);
        if key >= self.nodes.len() {
            self.nodes.resize(key + 1, UNARMED);
        }
        // A deadline already past fires on the next processing, not in a slot behind us.
        let tick = self.tick_of(at).max(self.current);
        let slot = (tick % SLOTS as u64) as usize;
        let head = self.heads[slot];
        self.nodes[key] = Node {
            at: tick,
            prev: NIL,
            next: head,
        };
        if head != NIL {
            self.nodes[head as usize].prev = key as u32;
        }
        self.heads[slot] = key as u32;
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.armed += 1;
    }

    /// Disarms the timer of `key`, if armed.
    pub fn cancel(&mut self, key: usize) {
        let Some(&node) = self.nodes.get(key) else {
            return;
        };
        if node.at == u64::MAX {
            return;
        }
        let slot = (node.at % SLOTS as u64) as usize;
        if node.prev == NIL {
            self.heads[slot] = node.next;
            if node.next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        } else {
            self.nodes[node.prev as usize].next = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        self.nodes[key] = UNARMED;
        self.armed -= 1;
    }

    /// How long the loop may sleep: until the start of the next occupied slot's tick.
    ///
    /// The slot may hold only deadlines of a later turn; then the loop wakes once for nothing
    /// and sleeps again, at most once per slot per turn of the wheel.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.armed == 0 {
            return None;
        }
        let start = self.current;
        let first = (start % SLOTS as u64) as usize;
        let mut word = first / 64;
        let mut bits = self.occupied[word] & (!0u64 << (first % 64));
        for _ in 0..=WORDS {
            if bits != 0 {
                let slot = word * 64 + bits.trailing_zeros() as usize;
                let ahead = (slot + SLOTS - first) % SLOTS;
                let tick = start + ahead as u64;
                return Some(self.instant_of(tick).saturating_duration_since(now));
            }
            word = (word + 1) % WORDS;
            bits = self.occupied[word];
        }
        None
    }

    /// Disarms every timer due at `now` and puts their keys in `due` (cleared first, in no
    /// particular order). The caller keeps `due` from turn to turn, so firing allocates nothing
    /// once it has grown.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<usize>) {
        due.clear();
        // A node at tick T is due once `now` has reached T's start.
        let until = self.tick_now_floor(now).saturating_add(1);
        // Past a whole turn every slot is visited once.
        let span = (until.saturating_sub(self.current)).min(SLOTS as u64);
        for step in 0..span {
            let tick = self.current + step;
            let slot = (tick % SLOTS as u64) as usize;
            let mut key = self.heads[slot];
            while key != NIL {
                let node = self.nodes[key as usize];
                if node.at < until {
                    due.push(key as usize);
                }
                key = node.next;
            }
        }
        self.current = self.current.max(until);
        for &key in due.iter() {
            self.cancel(key);
        }
    }

    /// The tick `now` falls in (rounded down): ticks up to it are due.
    fn tick_now_floor(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos() / TICK.as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fire(w: &mut Wheel, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        w.expire(now, &mut due);
        due
    }

    #[test]
    fn fires_at_the_deadline_never_early() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.arm(1, t0 + ms(100));
        w.arm(2, t0 + ms(10));
        assert!(fire(&mut w, t0 + ms(9)).is_empty());
        assert_eq!(fire(&mut w, t0 + ms(12)), &[2]);
        assert!(fire(&mut w, t0 + ms(99)).is_empty());
        assert_eq!(fire(&mut w, t0 + ms(104)), &[1]);
        assert!(w.is_empty());
    }

    #[test]
    fn timeout_points_at_the_earliest_slot() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        assert_eq!(w.timeout(t0), None);
        w.arm(5, t0 + ms(400));
        w.arm(6, t0 + ms(40));
        let t = w.timeout(t0).unwrap();
        assert!(t >= ms(40) && t < ms(40) + TICK, "{t:?}");
        w.cancel(6);
        let t = w.timeout(t0).unwrap();
        assert!(t >= ms(400) && t < ms(400) + TICK, "{t:?}");
    }

    #[test]
    fn moving_and_cancelling() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        for key in 0..100 {
            w.arm(key, t0 + ms(50));
        }
        for key in (0..100).step_by(2) {
            w.arm(key, t0 + ms(500));
        }
        w.cancel(1);
        let mut due = fire(&mut w, t0 + ms(60)).to_vec();
        due.sort_unstable();
        assert_eq!(due, (3..100).step_by(2).collect::<Vec<_>>());
        assert_eq!(w.len(), 50);
        assert_eq!(w.deadline(0).map(|d| d >= t0 + ms(500)), Some(true));
        assert_eq!(w.deadline(1), None);
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_for_their_turn() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let far = TICK * SLOTS as u32 * 2 + ms(20);
        w.arm(7, t0 + far);
        // Its slot comes up twice before it is due.
        let mut t = t0;
        while t < t0 + far - ms(10) {
            t += ms(700);
            assert!(fire(&mut w, t.min(t0 + far - ms(10))).is_empty());
        }
        assert_eq!(fire(&mut w, t0 + far + TICK), &[7]);
    }

    #[test]
    fn a_deadline_in_the_past_fires_on_the_next_expire() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        fire(&mut w, t0 + ms(1000));
        w.arm(3, t0 + ms(10));
        // It goes in the current slot: the loop sleeps at most one tick before firing it.
        assert!(w.timeout(t0 + ms(1000)).unwrap() <= TICK);
        assert_eq!(fire(&mut w, t0 + ms(1000) + TICK), &[3]);
    }

    #[test]
    fn ten_thousand_timers_fire_within_one_tick_of_their_deadline() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        for key in 0..10_000u64 {
            w.arm(
                key as usize,
                t0 + Duration::from_micros(key * 997 % 3_000_000),
            );
        }
        let mut fired = 0;
        let mut now = t0;
        while !w.is_empty() {
            let sleep = w.timeout(now).unwrap();
            now += sleep;
            for key in fire(&mut w, now) {
                let deadline = t0 + Duration::from_micros(key as u64 * 997 % 3_000_000);
                assert!(now >= deadline, "key {key} early");
                assert!(
                    now - deadline <= TICK,
                    "key {key} late by {:?}",
                    now - deadline
                );
                fired += 1;
            }
        }
        assert_eq!(fired, 10_000);
    }
}
