//! One client thread: a mio loop over its share of the connections, run phase by phase as the
//! main thread signals through [`Shared`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::cli::{Mode, Options};
use crate::client::{self, Client, End, State, Template};
use crate::report::Stats;
use crate::sys;

/// Most connects (and handshakes) in progress per thread when no `--rate` is given, so a burst
/// does not overflow the server's listen backlog.
const MAX_PENDING: usize = 256;
/// Longest a poll waits while nothing is due: how quickly a worker sees the main thread's flags.
const TICK: Duration = Duration::from_millis(10);
/// How often deadlines are scanned.
const DEADLINE_SCAN: Duration = Duration::from_millis(50);
/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 1024;

/// What the main thread and the workers share: phase flags one way, counters the other.
pub struct Shared {
    /// Counters for the progress line (updated once per loop turn, not per message).
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    pub messages: AtomicU64,
    pub closes: AtomicU64,
    pub ended: AtomicU64,
    /// Workers whose connects have all finished.
    pub ready: AtomicUsize,
    /// Echo: workers whose measured run has finished.
    pub done: AtomicUsize,
    /// Workers that have returned their counts.
    pub finished: AtomicUsize,
    /// Echo: start sending (set once every worker is ready).
    pub go: AtomicBool,
    /// Close the connections and finish.
    pub teardown: AtomicBool,
    /// SIGINT/SIGTERM: stop sending, stop holding or waiting.
    pub stop: Arc<AtomicBool>,
    pub main: Thread,
}

impl Shared {
    pub fn new(stop: Arc<AtomicBool>) -> Shared {
        Shared {
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            closes: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            go: AtomicBool::new(false),
            teardown: AtomicBool::new(false),
            stop,
            main: std::thread::current(),
        }
    }

    fn flag(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Acquire)
    }
}

/// Counters last published to [`Shared`].
#[derive(Default)]
struct Published {
    opened: u64,
    failed: u64,
    messages: u64,
    closes: u64,
    ended: u64,
}

pub struct Worker {
    opts: Arc<Options>,
    shared: Arc<Shared>,
    /// Global indices of this worker's connections: `first`, `first + step`, …
    first: usize,
    step: usize,
    count: usize,
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    template: Template,
    pub stats: Stats,
    published: Published,
    /// Connects and handshakes in progress.
    pending: usize,
    /// Connections not yet ended.
    live: usize,
    next_connect: Instant,
    connect_interval: Option<Duration>,
    last_scan: Instant,
    /// Echo: still sending new messages.
    sending: bool,
    /// Echo: messages in flight, and messages left to send, over the open connections.
    in_flight: u64,
    quota_left: u64,
    /// Drain: when the first Close arrived here.
    first_close: Option<Instant>,
    /// Connections that should stay open (an echo run or an idle hold is under way).
    holding: bool,
}

impl Worker {
    pub fn new(opts: Arc<Options>, shared: Arc<Shared>, index: usize) -> std::io::Result<Worker> {
        let step = opts.threads;
        let count = (opts.connections + step - 1 - index) / step;
        let connect_interval = opts.rate.map(|r| Duration::from_secs_f64(step as f64 / r));
        let template = Template::new(opts.size, opts.binary, 0x9E37_79B9_7F4A_7C15 ^ index as u64);
        let now = Instant::now();
        Ok(Worker {
            shared,
            first: index,
            step,
            count,
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            clients: Vec::with_capacity(count),
            template,
            stats: Stats::default(),
            published: Published::default(),
            pending: 0,
            live: 0,
            next_connect: now,
            connect_interval,
            last_scan: now,
            sending: false,
            in_flight: 0,
            quota_left: 0,
            first_close: None,
            holding: false,
            opts,
        })
    }

    /// Runs every phase of the mode and returns the counts.
    pub fn run(mut self) -> Stats {
        self.connect_all();
        self.shared.ready.fetch_add(1, Ordering::AcqRel);
        self.shared.main.unpark();
        match self.opts.mode {
            Mode::Echo => {
                self.wait_for(|s| Shared::flag(&s.go) || Shared::flag(&s.stop));
                self.echo();
                self.shared.done.fetch_add(1, Ordering::AcqRel);
                self.shared.main.unpark();
                self.wait_for(|s| Shared::flag(&s.teardown));
                self.close_all();
            }
            Mode::Idle => {
                self.holding = true;
                self.wait_for(|s| Shared::flag(&s.teardown));
                self.holding = false;
                self.close_all();
            }
            Mode::Drain => self.drain(),
        }
        self.publish();
        self.shared.finished.fetch_add(1, Ordering::AcqRel);
        self.shared.main.unpark();
        self.stats
    }

    /// Opens this worker's connections (paced by `--rate`) until each is open or has failed.
    fn connect_all(&mut self) {
        while self.clients.len() < self.count || self.pending > 0 {
            if Shared::flag(&self.shared.stop) {
                break;
            }
            let now = Instant::now();
            while self.clients.len() < self.count
                && self.next_connect <= now
                && (self.connect_interval.is_some() || self.pending < MAX_PENDING)
            {
                self.start_connect(now);
                match self.connect_interval {
                    Some(i) => self.next_connect += i,
                    None => self.next_connect = now,
                }
            }
            let wait = if self.clients.len() < self.count && self.connect_interval.is_some() {
                self.next_connect
                    .saturating_duration_since(Instant::now())
                    .min(TICK)
            } else {
                TICK
            };
            self.turn(wait);
        }
    }

    fn start_connect(&mut self, now: Instant) {
        let local = self.clients.len();
        let global = self.first + local * self.step;
        let src = (!self.opts.src.is_empty()).then(|| self.opts.src[global % self.opts.src.len()]);
        let (input, output, pipeline) = match self.opts.mode {
            Mode::Echo => {
                let (i, o) = client::echo_buffers(self.opts.size, self.opts.pipeline);
                (i, o, self.opts.pipeline)
            }
            _ => (client::SMALL_INPUT, client::SMALL_OUTPUT, 1),
        };
        self.stats.attempts += 1;
        self.stats.first_attempt.get_or_insert(now);
        let max_message = (self.opts.size as u64).max(125);
        let seed = (global as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let sock = sys::connect(src, self.opts.addr);
        let mut sock = match sock {
            Ok(s) => s,
            Err(e) => {
                if self.stats.refused == 0 {
                    eprintln!("wsd-load: connect from {src:?}: {e}");
                }
                self.stats.refused += 1;
                // Keep the slot so indices stay aligned; it is already ended.
                self.clients.push(ended_placeholder(now));
                return;
            }
        };
        let token = Token(local);
        if self
            .poll
            .registry()
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.stats.refused += 1;
            self.clients.push(ended_placeholder(now));
            return;
        }
        let mut c = Client::new(Some(sock), now, seed, input, output, pipeline, max_message);
        if let Some((config, name)) = &self.opts.tls {
            match rustls::ClientConnection::new(std::sync::Arc::clone(config), name.clone()) {
                Ok(tls) => c.tls = Some(Box::new(tls)),
                Err(e) => {
                    eprintln!("wsd-load: TLS: {e}");
                    self.stats.refused += 1;
                    self.clients.push(ended_placeholder(now));
                    return;
                }
            }
        }
        c.deadline = Some(now + self.opts.timeout);
        c.silent = self.is_silent(global);
        if c.silent {
            self.stats.silent += 1;
        }
        c.quota = self.quota(global);
        self.clients.push(c);
        self.pending += 1;
        self.live += 1;
    }

    /// Drain: connection `global` never answers if it falls in the `--no-answer-fraction`,
    /// spread evenly over the indices.
    fn is_silent(&self, global: usize) -> bool {
        let f = self.opts.no_answer_fraction;
        self.opts.mode == Mode::Drain
            && ((global + 1) as f64 * f).floor() > (global as f64 * f).floor()
    }

    /// Echo: this connection's share of `--messages` (unbounded with `--duration`).
    fn quota(&self, global: usize) -> u64 {
        match self.opts.messages {
            Some(m) => {
                let n = self.opts.connections as u64;
                m / n + u64::from((global as u64) < m % n)
            }
            None => u64::MAX,
        }
    }

    /// Polls until `done(shared)` holds, serving events meanwhile.
    fn wait_for(&mut self, done: impl Fn(&Shared) -> bool) {
        while !done(&self.shared) {
            self.turn(TICK);
        }
    }

    /// Echo: the measured run, from the first message to the last echo.
    fn echo(&mut self) {
        if Shared::flag(&self.shared.stop) {
            return;
        }
        self.holding = true;
        self.sending = true;
        let start = Instant::now();
        let end_at = self.opts.duration.map(|d| start + d);
        self.stats.first_send = Some(start);
        for i in 0..self.clients.len() {
            self.top_up(i, start);
        }
        let mut stopped_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if self.sending && (end_at.is_some_and(|e| now >= e) || Shared::flag(&self.shared.stop))
            {
                self.sending = false;
            }
            // With --duration the quotas are unbounded: sending goes on while a connection is.
            let unbounded = self.opts.messages.is_none() && self.live > 0;
            if self.in_flight == 0 && !(self.sending && (unbounded || self.quota_left > 0)) {
                break;
            }
            if !self.sending {
                let since = *stopped_at.get_or_insert(now);
                if now.duration_since(since) > self.opts.timeout {
                    // Echoes that did not come back in time.
                    for c in &self.clients {
                        if c.state == State::Open {
                            self.stats.missing_echoes += c.in_flight();
                        }
                    }
                    break;
                }
            }
            self.turn(TICK);
        }
        self.holding = false;
        self.sending = false;
    }

    /// Echo: fills connection `i`'s pipeline and writes.
    fn top_up(&mut self, i: usize, now: Instant) {
        let depth = self.opts.pipeline as u64;
        let c = &mut self.clients[i];
        if !self.sending || c.state != State::Open {
            return;
        }
        let n = (depth - c.in_flight()).min(c.quota);
        if n > 0 {
            c.queue_messages(&mut self.template, n, now);
            self.in_flight += n;
            self.quota_left = self.quota_left.saturating_sub(n);
        }
        self.flush(i);
    }

    /// Sends every open connection a Close and waits (bounded) for the close handshakes.
    fn close_all(&mut self) {
        let now = Instant::now();
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            match c.state {
                State::Open => {
                    c.start_close();
                    c.deadline = Some(now + self.opts.timeout);
                    self.flush(i);
                }
                State::Connecting | State::Upgrading => self.end(i, End::TimedOut),
                _ => {}
            }
        }
        self.wait_until_all_ended(now + self.opts.timeout);
    }

    fn wait_until_all_ended(&mut self, limit: Instant) {
        while self.live > 0 && Instant::now() < limit + DEADLINE_SCAN {
            self.turn(TICK);
        }
        for i in 0..self.clients.len() {
            if self.clients[i].state != State::Ended {
                self.end(i, End::TimedOut);
            }
        }
    }

    /// Drain: waits for the server's Close on every connection (bounded by `--hold` for the
    /// first one, then by `--timeout`).
    fn drain(&mut self) {
        let start = Instant::now();
        while self.live > 0 && !Shared::flag(&self.shared.stop) {
            let now = Instant::now();
            match self.first_close {
                Some(first) if now >= first + self.opts.timeout => break,
                None if self.opts.hold.is_some_and(|h| now >= start + h) => break,
                _ => {}
            }
            self.turn(TICK);
        }
        for i in 0..self.clients.len() {
            if self.clients[i].state != State::Ended {
                self.end(i, End::TimedOut);
            }
        }
    }

    /// One poll and everything it brings: reads, writes, deadlines, counters.
    fn turn(&mut self, timeout: Duration) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                eprintln!("wsd-load: poll: {e}");
                std::thread::sleep(timeout);
            }
            return;
        }
        // Lend the events out so handlers can borrow the worker (no allocation: capacity 0).
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            let to_eof = ev.is_read_closed() || ev.is_error();
            let readable = ev.is_readable() || to_eof;
            self.on_event(ev.token().0, readable, ev.is_writable(), to_eof);
        }
        self.events = events;
        let now = Instant::now();
        if now.duration_since(self.last_scan) >= DEADLINE_SCAN {
            self.last_scan = now;
            self.expire(now);
        }
        self.publish();
    }

    fn on_event(&mut self, i: usize, readable: bool, writable: bool, to_eof: bool) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        match c.state {
            State::Ended => {}
            State::Connecting => match c.on_connected(&self.opts.host, &self.opts.path) {
                Ok(true) => self.flush(i),
                Ok(false) => {}
                Err(end) => self.end(i, end),
            },
            State::Upgrading | State::Open | State::Closing => {
                if writable && c.has_output() {
                    self.flush(i);
                }
                if readable {
                    self.read(i, to_eof);
                }
            }
        }
    }

    fn read(&mut self, i: usize, to_eof: bool) {
        let c = &mut self.clients[i];
        let was_open = c.state == State::Open;
        let r = c.read_ready(&self.template, &mut self.stats.latency, to_eof);
        let (started, quota) = (c.started, c.quota);
        let now = Instant::now();
        if r.opened {
            self.pending -= 1;
            self.stats.opened += 1;
            self.quota_left = self.quota_left.saturating_add(quota);
            self.stats.last_open = Some(now);
            let since = now.duration_since(started).as_nanos() as u64;
            let _ = self.stats.connect_latency.record(since.max(1));
            if self.sending {
                self.top_up(i, now);
            }
        }
        if r.echoes > 0 {
            self.in_flight -= u64::from(r.echoes);
            self.stats.messages += u64::from(r.echoes);
            self.stats.bytes += u64::from(r.echoes) * self.opts.size as u64;
            self.stats.last_echo = Some(now);
        }
        self.stats.unexpected += u64::from(r.unexpected);
        if let Some(code) = r.close {
            *self.stats.close_codes.entry(code).or_default() += 1;
            self.stats.first_close.get_or_insert(now);
            self.first_close.get_or_insert(now);
            self.stats.last_close = Some(now);
            let c = &mut self.clients[i];
            if c.deadline.is_none() {
                c.deadline = Some(now + self.opts.timeout);
            }
        }
        if let Some(end) = r.end {
            self.end(i, end);
            return;
        }
        if was_open && r.echoes > 0 {
            // Refill the pipeline and write, once for all the echoes of this read.
            self.top_up(i, now);
        } else if self.clients[i].has_output() {
            self.flush(i);
        }
    }

    /// Writes connection `i`'s pending output; asks for writable events only while some stays.
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        match c.flush() {
            Ok(pending) => {
                if pending != c.wants_write {
                    c.wants_write = pending;
                    let interest = if pending {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if let Some(sock) = c.sock.as_mut() {
                        let _ = self.poll.registry().reregister(sock, Token(i), interest);
                    }
                }
            }
            Err(end) => self.end(i, end),
        }
    }

    /// Ends connection `i`, counting how.
    fn end(&mut self, i: usize, end: End) {
        let now = Instant::now();
        let c = &mut self.clients[i];
        let state = c.state;
        if state == State::Ended {
            return;
        }
        c.sock = None;
        c.state = State::Ended;
        self.live -= 1;
        self.stats.last_end = Some(now);
        let s = &mut self.stats;
        match state {
            State::Connecting | State::Upgrading => {
                self.pending -= 1;
                s.connect_failed(end);
                return;
            }
            State::Open => {
                if self.holding && end != End::Mismatch {
                    s.lost += 1;
                }
                self.in_flight -= c.in_flight();
                self.quota_left = self.quota_left.saturating_sub(c.quota);
            }
            _ => {}
        }
        match end {
            End::Mismatch => {
                s.mismatches += 1;
                if s.mismatches == 1 {
                    eprintln!(
                        "wsd-load: echo mismatch on connection {} at message {}",
                        self.first + i * self.step,
                        c.received
                    );
                }
            }
            End::Protocol => s.protocol_errors += 1,
            End::TimedOut => s.timed_out += 1,
            End::Eof if c.close_code.is_some() && c.silent => s.silent_dropped += 1,
            End::Eof if c.close_code.is_some() => s.clean += 1,
            End::Eof => s.eof_before_close += 1,
            End::Reset | End::ConnectFailed | End::Handshake(_) => s.reset += 1,
        }
        if self.opts.mode == Mode::Echo && state == State::Open && c.in_flight() > 0 {
            s.missing_echoes += c.in_flight();
        }
    }

    fn expire(&mut self, now: Instant) {
        for i in 0..self.clients.len() {
            if self.clients[i].state != State::Ended
                && self.clients[i].deadline.is_some_and(|d| now >= d)
            {
                self.end(i, End::TimedOut);
            }
        }
    }

    /// Publishes the counters' growth since the last turn for the progress line.
    fn publish(&mut self) {
        let s = &self.stats;
        let sh = &self.shared;
        let p = &mut self.published;
        let failed = s.connect_failures();
        let closes: u64 = s.close_codes.values().sum();
        let ended = s.clean + s.reset + s.eof_before_close + s.timed_out + s.silent_dropped;
        for (counter, now, last) in [
            (&sh.opened, s.opened, &mut p.opened),
            (&sh.failed, failed, &mut p.failed),
            (&sh.messages, s.messages, &mut p.messages),
            (&sh.closes, closes, &mut p.closes),
            (&sh.ended, ended, &mut p.ended),
        ] {
            if now != *last {
                counter.fetch_add(now - *last, Ordering::Relaxed);
                *last = now;
            }
        }
    }
}

/// A slot for a connection whose socket could not even be created.
fn ended_placeholder(now: Instant) -> Client {
    let mut c = Client::new(None, now, 0, 0, 0, 1, 0);
    c.state = State::Ended;
    c
}
