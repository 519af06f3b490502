//! Connection deadlines: a min-heap of (deadline, connection), lazily invalidated.
//!
//! A connection keeps its one current deadline in its own struct; an entry here only fires if
//! it still matches, so moving or clearing a deadline costs nothing but a push.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    pub fn insert(&mut self, at: Instant, key: usize) {
        self.heap.push(Reverse((at, key)));
    }

    /// How long the loop may sleep before the earliest deadline.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// Removes and returns an entry that is due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}
