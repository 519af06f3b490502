//! Stalls and pacing: each connection's longest gap between consecutive messages it received
//! (echoes or deliveries), split into periods the user marks with SIGUSR1, and the schedule
//! that sends one echo message per connection every `--interval`.
//!
//! A server that pauses (a live upgrade, a GC-like hiccup, a full core) shows up as a long gap
//! on the connections it held; latency percentiles hide it, since the messages sent during the
//! pause are few. Gaps are measured where a message is received, so a gap that straddles a
//! period mark counts in the period in which it ends.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Longest gap the histograms track, in µs (longer ones are clamped to it): one hour.
const MAX_GAP_US: u64 = 3_600_000_000;
/// Significant decimal digits of the gap histograms (0.1 % resolution).
const GAP_DIGITS: u8 = 3;

/// A histogram of gaps in µs, one sample per connection.
pub fn gap_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_GAP_US, GAP_DIGITS).expect("valid bounds")
}

/// One connection's gaps: when it last received a message, and its longest gap in the
/// current period and over the whole run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gaps {
    last: Option<Instant>,
    /// Longest gap in the current period (None: no gap ended in it).
    period: Option<Duration>,
    /// Longest gap over the run.
    worst: Option<Duration>,
}

impl Gaps {
    /// A message arrived at `now`.
    pub fn on_message(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            self.period = Some(self.period.map_or(gap, |p| p.max(gap)));
            self.worst = Some(self.worst.map_or(gap, |w| w.max(gap)));
        }
        self.last = Some(now);
    }

    /// Ends the current period: its longest gap, if one ended in it. The last arrival is kept,
    /// so the next gap is measured from it.
    pub fn end_period(&mut self) -> Option<Duration> {
        self.period.take()
    }

    /// Ends the run for this connection: (longest gap of the current period, of the run).
    /// Later calls return nothing, so a connection is counted once.
    pub fn finish(&mut self) -> (Option<Duration>, Option<Duration>) {
        let out = (self.period.take(), self.worst.take());
        self.last = None;
        out
    }
}

/// Per-connection longest gaps, over the run and per period, of one worker or all of them.
pub struct Stalls {
    /// One sample per connection that saw at least one gap: its longest over the run.
    pub run: Histogram<u64>,
    /// Per period (0: before the first SIGUSR1), one sample per connection with a gap in it.
    pub periods: Vec<Histogram<u64>>,
    /// Per period, connections that dropped while they should have stayed open.
    pub disconnects: Vec<u64>,
}

impl Default for Stalls {
    fn default() -> Stalls {
        Stalls {
            run: gap_histogram(),
            periods: Vec::new(),
            disconnects: Vec::new(),
        }
    }
}

fn record(h: &mut Histogram<u64>, gap: Duration) {
    let us = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
    // `saturating_record` clamps to the histogram's top instead of failing.
    h.saturating_record(us.max(1));
}

impl Stalls {
    fn period_mut(&mut self, period: usize) -> &mut Histogram<u64> {
        while self.periods.len() <= period {
            self.periods.push(gap_histogram());
            self.disconnects.push(0);
        }
        &mut self.periods[period]
    }

    /// A connection dropped in `period`.
    pub fn disconnected(&mut self, period: usize) {
        self.period_mut(period);
        self.disconnects[period] += 1;
    }

    /// Counts a connection's longest gap of `period`.
    pub fn record_period(&mut self, period: usize, gap: Option<Duration>) {
        if let Some(g) = gap {
            record(self.period_mut(period), g);
        }
    }

    /// Counts a connection's longest gaps of `period` and of the run (see [`Gaps::finish`]).
    pub fn record_finish(&mut self, period: usize, gaps: (Option<Duration>, Option<Duration>)) {
        self.record_period(period, gaps.0);
        if let Some(w) = gaps.1 {
            record(&mut self.run, w);
        }
    }

    pub fn merge(&mut self, o: &Stalls) {
        let _ = self.run.add(&o.run);
        for (k, h) in o.periods.iter().enumerate() {
            let _ = self.period_mut(k).add(h);
            self.disconnects[k] += o.disconnects[k];
        }
    }
}

/// `--interval`: when each connection may send its next message. One entry per connection at
/// most (pushed when it sends, for the send after), earliest first.
#[derive(Default)]
pub struct Pacer {
    due: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Pacer {
    pub fn schedule(&mut self, at: Instant, conn: usize) {
        self.due.push(Reverse((at, conn)));
    }

    /// The next connection whose time has come by `now`, with the time it was due.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.due.peek() {
            Some(Reverse((at, _))) if *at <= now => self.due.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// When the earliest connection is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }
}

/// Where connection `global` of `n` starts its schedule: spread evenly over the first
/// interval, so the connections do not all send at the same instant.
pub fn first_due(start: Instant, interval: Duration, global: usize, n: usize) -> Instant {
    start + interval.mul_f64(global as f64 / n.max(1) as f64)
}

/// The send after one that was due at `due` and went out at `now`: the fixed schedule, unless
/// the connection fell more than a whole interval behind it (a stall), when it restarts from
/// `now` instead of sending a burst to catch up.
pub fn next_due(due: Instant, now: Instant, interval: Duration) -> Instant {
    let next = due + interval;
    if next < now {
        now + interval
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn gaps_are_per_period_and_per_run() {
        let t0 = Instant::now();
        let mut g = Gaps::default();
        g.on_message(t0);
        assert_eq!(g.end_period(), None, "one message makes no gap");
        g.on_message(t0 + 50 * MS);
        g.on_message(t0 + 120 * MS);
        assert_eq!(g.end_period(), Some(70 * MS));
        // The gap across the mark counts in the period it ends in.
        g.on_message(t0 + 400 * MS);
        g.on_message(t0 + 450 * MS);
        assert_eq!(g.finish(), (Some(280 * MS), Some(280 * MS)));
        assert_eq!(g.finish(), (None, None), "counted once");
    }

    #[test]
    fn stalls_merge_period_by_period() {
        let mut a = Stalls::default();
        a.record_finish(0, (Some(60 * MS), Some(60 * MS)));
        let mut b = Stalls::default();
        b.record_period(0, Some(70 * MS));
        b.record_finish(2, (Some(200 * MS), Some(200 * MS)));
        b.record_period(3, None);
        b.disconnected(2);
        a.disconnected(0);
        a.merge(&b);
        assert_eq!(a.periods.len(), 3);
        assert_eq!(a.disconnects, vec![1, 0, 1]);
        assert_eq!(a.periods[0].len(), 2);
        assert_eq!(a.periods[1].len(), 0);
        assert_eq!(a.periods[2].max(), a.periods[2].highest_equivalent(200_000));
        assert_eq!(a.run.len(), 2);
        // Hours-long gaps are clamped, not lost.
        a.record_period(1, Some(Duration::from_secs(10_000)));
        assert_eq!(a.periods[1].len(), 1);
    }

    #[test]
    fn pacer_pops_earliest_due_only() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        p.schedule(t0 + 30 * MS, 3);
        p.schedule(t0 + 10 * MS, 1);
        p.schedule(t0 + 20 * MS, 2);
        assert_eq!(p.next_due(), Some(t0 + 10 * MS));
        assert_eq!(p.pop_due(t0 + 5 * MS), None);
        assert_eq!(p.pop_due(t0 + 25 * MS), Some((t0 + 10 * MS, 1)));
        assert_eq!(p.pop_due(t0 + 25 * MS), Some((t0 + 20 * MS, 2)));
        assert_eq!(p.pop_due(t0 + 25 * MS), None);
        assert_eq!(p.next_due(), Some(t0 + 30 * MS));
    }

    #[test]
    fn schedule_spreads_and_restarts_after_a_stall() {
        let t0 = Instant::now();
        let i = 50 * MS;
        assert_eq!(first_due(t0, i, 0, 10), t0);
        assert_eq!(first_due(t0, i, 5, 10), t0 + 25 * MS);
        assert_eq!(first_due(t0, i, 0, 0), t0);
        // On time or a little late: the fixed schedule.
        assert_eq!(next_due(t0, t0 + 3 * MS, i), t0 + 50 * MS);
        // An echo that came back 200 ms late: no burst, the next one a whole interval on.
        assert_eq!(next_due(t0, t0 + 200 * MS, i), t0 + 250 * MS);
    }
}
