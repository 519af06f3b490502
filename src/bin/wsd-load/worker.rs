//! One client thread: a mio loop over its share of the connections, run phase by phase as the
//! main thread signals through [`Shared`].
//!
//! pubsub: every worker holds its share of the subscribers; worker 0 also holds all the
//! publishers (WebSocket publisher connections after its subscribers in `clients`, or the HTTP
//! API connections), so the schedule and the window of publications in flight live in one
//! place. Other workers' deliveries reach worker 0's window through [`Shared`], once per turn.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use wsd::protocol::frame::MAX_HEADER_LEN;
use wsd::protocol::Message;

use crate::api::{self, ApiConn, ApiError, ApiState};
use crate::cli::{Mode, Options, Publish};
use crate::client::{self, Check, Client, Codec, End, State, Template};
use crate::payload::{Header, Payload};
use crate::report::Stats;
use crate::stall::{self, Pacer};
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
/// Tokens of HTTP publish API connections start here (client tokens are their indices).
const API_TOKEN_BASE: usize = 1 << 30;
/// Token of the publication timer (`--pub-rate`).
const TIMER_TOKEN: usize = usize::MAX;
/// At a fixed rate, lateness up to this is the client's own timer wake-up (a VM takes a few
/// hundred µs to wake from idle), not the server's doing: such a publication's latency is
/// measured from when it was sent. Later ones, and any the window or a busy publisher held
/// back, are measured from when they were due, so a server that stalls the publisher is not
/// flattered by the stall (coordinated omission).
const TIMER_SLACK: Duration = Duration::from_millis(1);
/// pubsub: how often a publisher blocked on its window looks again when the deliveries that
/// free it arrive on other threads (its own arrive as events and wake it at once).
const WINDOW_POLL: Duration = Duration::from_millis(1);

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
    /// pubsub: publications sent, and deliveries settled (arrived, or known lost to a gap).
    pub publications: AtomicU64,
    pub settled: AtomicU64,
    /// pubsub: deliveries the publications sent so far owe (their channels' subscribers).
    pub owed: AtomicU64,
    /// pubsub: open subscribers per channel (ws publishers included), summed before `go`.
    pub channel_subs: Box<[AtomicU64]>,
    /// pubsub: publications sent per (channel, publisher slot), at `channel * slots + slot`;
    /// final once `pub_done` is set.
    pub published: Box<[AtomicU64]>,
    /// pubsub: the publishers have stopped; `published` is final.
    pub pub_done: AtomicBool,
    /// pubsub: origin of the publications' send stamps.
    pub epoch: Instant,
    /// Stall period (SIGUSR1 moves it on); each worker closes its own on seeing it change.
    pub period: AtomicUsize,
}

impl Shared {
    pub fn new(stop: Arc<AtomicBool>, opts: &Options) -> Shared {
        let (channels, slots) = match opts.mode {
            Mode::Pubsub => (opts.channels.unwrap_or(1), opts.slots()),
            _ => (0, 0),
        };
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Shared {
            publications: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            owed: AtomicU64::new(0),
            channel_subs: zeros(channels),
            published: zeros(channels * slots),
            pub_done: AtomicBool::new(false),
            epoch: Instant::now(),
            period: AtomicUsize::new(0),
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
    publications: u64,
    settled: u64,
}

/// pubsub: the publishers (all on worker 0) and the schedule they follow.
struct Publishing {
    /// ws: publisher `q` is `clients[first_ws + q]`, on channel `q % C` as slot `q / C`;
    /// `ws_seq[q]` is its next sequence number.
    first_ws: usize,
    ws_seq: Vec<u64>,
    /// api: the connections, and per (connection, channel) the next sequence number at
    /// `j * C + channel` (connection `j` is slot `j` of every channel).
    api: Vec<ApiConn>,
    api_seq: Vec<u64>,
    /// Round robin: the slot to try first per channel (ws), the connection (api).
    next_slot: Vec<usize>,
    next_api: usize,
    /// Publications sent, and deliveries they owe.
    count: u64,
    owed: u64,
    /// Publications left to send (`--messages`; unbounded with `--duration`).
    left: u64,
    /// Fixed rate: the interval and when the next publication is due.
    interval: Option<Duration>,
    due: Instant,
    /// Deliveries allowed outstanding: `--window` publications to every channel, i.e. the
    /// window times all the subscribers (channels take turns, so each has about `--window`).
    window: u64,
    /// Why the last attempt stopped before the schedule did, if it did.
    blocked: Option<Blocked>,
    /// The publication due now was held back (window or busy publisher) at least once.
    held: bool,
    /// When a publication last went out or a delivery last settled, and the settled count
    /// then: a window that stays full longer than `--timeout` means deliveries are being lost.
    progress_at: Instant,
    last_settled: u64,
}

/// What held a due publication back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocked {
    /// The window is full: deliveries must arrive first.
    Window,
    /// No publisher for the channel is ready (ws output pending, API answer outstanding).
    Busy,
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
    /// permessage-deflate (`--deflate`): one compressor and decompressor for the worker.
    codec: Codec,
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
    /// pubsub: the run's payload (stamps publications, checks deliveries).
    payload: Option<Payload>,
    /// pubsub: this worker's subscribers (its ws publishers follow them in `clients`).
    subscribers: usize,
    /// pubsub, worker 0: the publishers.
    publishing: Option<Box<Publishing>>,
    /// pubsub, worker 0 with `--pub-rate`: wakes the loop when a publication is due.
    timer: Option<sys::Timer>,
    /// The stall period this worker's connections are counting gaps in.
    period: usize,
    /// Echo with `--interval`: when each connection sends next.
    pacer: Option<Pacer>,
}

impl Worker {
    pub fn new(opts: Arc<Options>, shared: Arc<Shared>, index: usize) -> std::io::Result<Worker> {
        let step = opts.threads;
        let subscribers = (opts.connections + step - 1 - index) / step;
        let pubsub = opts.mode == Mode::Pubsub;
        let publisher = pubsub && index == 0;
        let count = subscribers + if publisher { opts.ws_publishers() } else { 0 };
        let payload = pubsub.then(|| Payload::new(opts.size, opts.binary, shared.epoch));
        let poll = Poll::new()?;
        let timer = match publisher && opts.pub_rate.is_some() {
            true => {
                let timer = sys::Timer::new()?;
                poll.registry().register(
                    &mut mio::unix::SourceFd(&timer.raw_fd()),
                    Token(TIMER_TOKEN),
                    Interest::READABLE,
                )?;
                Some(timer)
            }
            false => None,
        };
        let publishing = publisher.then(|| {
            let channels = opts.channels.unwrap_or(1);
            Box::new(Publishing {
                first_ws: subscribers,
                ws_seq: vec![0; opts.ws_publishers()],
                api: Vec::new(),
                api_seq: Vec::new(),
                next_slot: vec![0; channels],
                next_api: 0,
                count: 0,
                owed: 0,
                left: opts.messages.unwrap_or(u64::MAX),
                interval: opts.pub_rate.map(|r| Duration::from_secs_f64(1.0 / r)),
                due: Instant::now(),
                window: 0,
                blocked: None,
                held: false,
                progress_at: Instant::now(),
                last_settled: 0,
            })
        });
        let connect_interval = opts.rate.map(|r| Duration::from_secs_f64(step as f64 / r));
        let template = Template::new(opts.size, opts.binary, 0x9E37_79B9_7F4A_7C15 ^ index as u64);
        let now = Instant::now();
        Ok(Worker {
            shared,
            first: index,
            step,
            count,
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            clients: Vec::with_capacity(count),
            template,
            codec: Codec::default(),
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
            payload,
            subscribers,
            publishing,
            timer,
            period: 0,
            pacer: None,
            opts,
        })
    }

    /// Runs every phase of the mode and returns the counts.
    pub fn run(mut self) -> Stats {
        self.connect_all();
        if self.opts.mode == Mode::Pubsub {
            // Before `ready`: the publisher reads these totals once every worker is ready.
            for c in &self.clients {
                if c.state == State::Open {
                    self.shared.channel_subs[c.channel as usize].fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        self.shared.ready.fetch_add(1, Ordering::AcqRel);
        self.shared.main.unpark();
        match self.opts.mode {
            Mode::Echo => {
                self.wait_for(|s| Shared::flag(&s.go) || Shared::flag(&s.stop));
                self.echo();
                self.finish_gaps();
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
            Mode::Pubsub => {
                self.wait_for(|s| Shared::flag(&s.go) || Shared::flag(&s.stop));
                self.pubsub();
                self.finish_gaps();
                self.shared.done.fetch_add(1, Ordering::AcqRel);
                self.shared.main.unpark();
                self.wait_for(|s| Shared::flag(&s.teardown));
                self.close_all();
            }
        }
        self.publish();
        self.shared.finished.fetch_add(1, Ordering::AcqRel);
        self.shared.main.unpark();
        self.stats
    }

    /// Opens this worker's connections (paced by `--rate`) until each is open or has failed.
    fn connect_all(&mut self) {
        if self.opts.mode == Mode::Pubsub && self.opts.publish == Publish::Api {
            self.connect_api();
        }
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

    /// pubsub, worker 0 with `--publish api`: starts the API connections.
    fn connect_api(&mut self) {
        let Some(p) = self.publishing.as_deref_mut() else {
            return;
        };
        let now = Instant::now();
        let channels = self.opts.channels.unwrap_or(1);
        let request_cap = self.opts.size + self.opts.channel_prefix.len() + api::MAX_RESPONSE;
        for j in 0..self.opts.publishers {
            self.stats.attempts += 1;
            let mut conn = match sys::connect(None, self.opts.api_addr) {
                Ok(mut sock) => {
                    let token = Token(API_TOKEN_BASE + j);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    match self.poll.registry().register(&mut sock, token, interest) {
                        Ok(()) => ApiConn::new(Some(sock), now, request_cap),
                        Err(_) => ApiConn::new(None, now, 0),
                    }
                }
                Err(e) => {
                    eprintln!(
                        "wsd-load: connect to the API at {}: {e}",
                        self.opts.api_addr
                    );
                    ApiConn::new(None, now, 0)
                }
            };
            if conn.state == ApiState::Connecting {
                self.pending += 1;
            } else {
                self.stats.refused += 1;
                conn.sock = None;
            }
            p.api.push(conn);
        }
        p.api_seq = vec![0; self.opts.publishers * channels];
    }

    fn start_connect(&mut self, now: Instant) {
        let local = self.clients.len();
        // ws publishers (worker 0, after its subscribers) are numbered after every subscriber.
        let publisher = local.checked_sub(self.subscribers);
        let global = match publisher {
            Some(q) => self.opts.connections + q,
            None => self.first + local * self.step,
        };
        let channel = match publisher {
            Some(q) => (q % self.opts.channels.unwrap_or(1)) as u32,
            None => self.opts.channel_of(global),
        };
        let src = (!self.opts.src.is_empty()).then(|| self.opts.src[global % self.opts.src.len()]);
        let size = self.opts.size;
        let (input, output, pipeline) = match self.opts.mode {
            Mode::Echo => {
                let (i, o) = client::echo_buffers(size, self.opts.pipeline);
                (i, o, self.opts.pipeline)
            }
            Mode::Pubsub => {
                // A publisher's output holds its share of the window; a subscriber's only the
                // upgrade request, Pongs and the Close.
                let output = match publisher {
                    Some(_) => self.opts.window * (size + MAX_HEADER_LEN) + client::SMALL_OUTPUT,
                    None => client::SMALL_OUTPUT,
                };
                (client::subscriber_input(size), output, 1)
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
        c.channel = channel;
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
        if let Some(interval) = self.opts.interval {
            let mut pacer = Pacer::default();
            for i in 0..self.clients.len() {
                let global = self.first + i * self.step;
                let due = stall::first_due(start, interval, global, self.opts.connections);
                self.clients[i].due = Some(due);
                pacer.schedule(due, i);
            }
            self.pacer = Some(pacer);
        } else {
            for i in 0..self.clients.len() {
                self.top_up(i, start);
            }
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
            let wait = self.send_paced(now);
            self.turn(wait);
        }
        self.holding = false;
        self.sending = false;
    }

    /// Echo with `--interval`: sends for every connection whose time has come and whose last
    /// echo is back (a late one sends when its echo arrives, see [`Self::top_up`]); returns
    /// how long the next poll may wait.
    fn send_paced(&mut self, now: Instant) -> Duration {
        let Some(mut pacer) = self.pacer.take() else {
            return TICK;
        };
        while let Some((_, i)) = pacer.pop_due(now) {
            self.paced_send(&mut pacer, i, now);
        }
        let wait = pacer
            .next_due()
            .map_or(TICK, |at| at.saturating_duration_since(now).min(TICK));
        self.pacer = Some(pacer);
        wait
    }

    /// Echo with `--interval`: connection `i` sends now if it is due and its echo is back,
    /// and is scheduled for the next interval.
    fn paced_send(&mut self, pacer: &mut Pacer, i: usize, now: Instant) {
        let Some(interval) = self.opts.interval else {
            return;
        };
        let c = &mut self.clients[i];
        let Some(due) = c.due else {
            return;
        };
        if !self.sending || c.state != State::Open || c.quota == 0 {
            return;
        }
        if due > now || c.in_flight() > 0 {
            // Not yet, or its echo is late: that echo's arrival sends the next one.
            return;
        }
        c.queue_messages(&mut self.template, 1, now, &mut self.codec);
        self.in_flight += 1;
        self.quota_left = self.quota_left.saturating_sub(1);
        let next = stall::next_due(due, now, interval);
        c.due = Some(next);
        pacer.schedule(next, i);
        self.flush(i);
    }

    /// Echo: fills connection `i`'s pipeline and writes (with `--interval`: sends if its time
    /// has come).
    fn top_up(&mut self, i: usize, now: Instant) {
        if let Some(mut pacer) = self.pacer.take() {
            self.paced_send(&mut pacer, i, now);
            self.pacer = Some(pacer);
            return;
        }
        let depth = self.opts.pipeline as u64;
        let c = &mut self.clients[i];
        if !self.sending || c.state != State::Open {
            return;
        }
        let n = (depth - c.in_flight()).min(c.quota);
        if n > 0 {
            c.queue_messages(&mut self.template, n, now, &mut self.codec);
            self.in_flight += n;
            self.quota_left = self.quota_left.saturating_sub(n);
        }
        self.flush(i);
    }

    /// pubsub: the measured run, from the first publication to the last delivery (or the end
    /// of the wait for it).
    fn pubsub(&mut self) {
        self.holding = true;
        let start = Instant::now();
        let end_at = self.opts.duration.map(|d| start + d);
        if self.publishing.is_some() && !Shared::flag(&self.shared.stop) {
            self.start_publishing(start);
        } else if self.publishing.is_some() {
            self.stop_publishing();
        }
        let mut waiting_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if self.sending {
                let left = self.publishing.as_ref().map_or(0, |p| p.left);
                let gone = !self.publishers_alive();
                if gone {
                    eprintln!("wsd-load: every publisher connection is gone: publishing stops");
                }
                let stalled = self.publishing.as_ref().is_some_and(|p| {
                    p.blocked == Some(Blocked::Window)
                        && now.saturating_duration_since(p.progress_at) > self.opts.timeout
                });
                if stalled {
                    eprintln!(
                        "wsd-load: no delivery for {:.1} s with the window full: publishing stops",
                        self.opts.timeout.as_secs_f64()
                    );
                }
                if end_at.is_some_and(|e| now >= e)
                    || Shared::flag(&self.shared.stop)
                    || left == 0
                    || gone
                    || stalled
                {
                    self.stop_publishing();
                }
            }
            if !self.sending && Shared::flag(&self.shared.pub_done) {
                if self.all_settled() && self.acks_done() {
                    break;
                }
                let since = *waiting_since.get_or_insert(now);
                if now.duration_since(since) > self.opts.timeout {
                    if self.publishing.is_some() {
                        eprintln!(
                            "wsd-load: deliveries still missing {:.1} s after the last publication",
                            self.opts.timeout.as_secs_f64()
                        );
                    }
                    break;
                }
            }
            self.publish_due(now);
            let wait = self.pubsub_wait();
            self.turn(wait);
        }
        self.count_missing();
        self.holding = false;
    }

    /// pubsub, worker 0: sizes the window from the subscriber counts and starts the schedule.
    fn start_publishing(&mut self, now: Instant) {
        let subscribers: u64 = self
            .shared
            .channel_subs
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .sum();
        if let Some(p) = self.publishing.as_deref_mut() {
            p.window = (self.opts.window as u64 * subscribers).max(1);
            p.due = now;
            p.progress_at = now;
        }
        self.sending = true;
    }

    /// pubsub, worker 0: stops publishing and tells every worker how much was published.
    fn stop_publishing(&mut self) {
        self.sending = false;
        let Some(p) = self.publishing.as_deref() else {
            return;
        };
        let channels = self.opts.channels.unwrap_or(1);
        let slots = self.opts.slots();
        for (q, &seq) in p.ws_seq.iter().enumerate() {
            let (channel, slot) = (q % channels, q / channels);
            self.shared.published[channel * slots + slot].store(seq, Ordering::Relaxed);
        }
        for (k, &seq) in p.api_seq.iter().enumerate() {
            let (j, channel) = (k / channels, k % channels);
            self.shared.published[channel * slots + j].store(seq, Ordering::Relaxed);
        }
        self.shared.pub_done.store(true, Ordering::Release);
    }

    /// pubsub, worker 0: some publisher can still publish (checked only once one was busy).
    fn publishers_alive(&self) -> bool {
        let Some(p) = self.publishing.as_deref() else {
            return false;
        };
        if p.blocked != Some(Blocked::Busy) {
            return true;
        }
        let ws = self.clients[p.first_ws..]
            .iter()
            .any(|c| c.state == State::Open);
        let api = p.api.iter().any(|c| c.state != ApiState::Dead);
        ws || api
    }

    /// pubsub: deliveries settled over all workers (ours exact, the others' as of their last
    /// turn).
    fn settled_everywhere(&self) -> u64 {
        let mine = self.stats.tally.delivered + self.stats.tally.lost;
        (self.shared.settled.load(Ordering::Acquire) + mine).saturating_sub(self.published.settled)
    }

    /// pubsub: every delivery owed has arrived (or is known lost).
    fn all_settled(&self) -> bool {
        self.settled_everywhere() >= self.shared.owed.load(Ordering::Acquire)
    }

    /// pubsub: no publish request is waiting for its answer.
    fn acks_done(&self) -> bool {
        self.publishing
            .as_ref()
            .map_or(true, |p| p.api.iter().all(|c| c.state != ApiState::Waiting))
    }

    /// pubsub: how long the next poll may wait.
    fn pubsub_wait(&self) -> Duration {
        let Some(p) = self.publishing.as_deref().filter(|_| self.sending) else {
            return TICK;
        };
        match (p.blocked, p.interval) {
            (Some(Blocked::Window), _) if self.opts.threads > 1 => WINDOW_POLL,
            // What unblocks it (a delivery, an answer, a writable socket) is an event here.
            (Some(_), _) | (None, None) => TICK,
            (None, Some(_)) => {
                let until = p.due.saturating_duration_since(Instant::now());
                match &self.timer {
                    Some(t) if t.arm(until).is_ok() => TICK,
                    _ => until.min(TICK),
                }
            }
        }
    }

    /// pubsub, worker 0: sends what the schedule and the window allow.
    fn publish_due(&mut self, now: Instant) {
        if !self.sending {
            return;
        }
        let Some(mut p) = self.publishing.take() else {
            return;
        };
        let channels = self.opts.channels.unwrap_or(1) as u64;
        p.blocked = None;
        let settled = self.settled_everywhere();
        if settled > p.last_settled {
            p.last_settled = settled;
            p.progress_at = now;
        }
        while p.left > 0 && p.interval.map_or(true, |_| p.due <= now) {
            let channel = (p.count % channels) as u32;
            let subs = self.shared.channel_subs[channel as usize].load(Ordering::Acquire);
            let pending = p.owed.saturating_sub(self.settled_everywhere());
            if pending > 0 && pending + subs > p.window {
                p.blocked = Some(Blocked::Window);
                p.held = true;
                break;
            }
            // Now, not the turn's `now`: earlier sends of this call took their time.
            let sent_at = Instant::now();
            let stamp_at = match p.interval {
                Some(_) if p.held || sent_at.saturating_duration_since(p.due) > TIMER_SLACK => {
                    p.due
                }
                _ => sent_at,
            };
            let sent = match self.opts.publish {
                Publish::Ws => self.publish_ws(&mut p, channel, stamp_at),
                Publish::Api => self.publish_api(&mut p, channel, stamp_at, now),
            };
            if !sent {
                p.blocked = Some(Blocked::Busy);
                p.held = true;
                break;
            }
            p.held = false;
            p.progress_at = now;
            p.count += 1;
            p.owed += subs;
            p.left -= 1;
            if let Some(interval) = p.interval {
                p.due += interval;
            }
            self.shared.owed.fetch_add(subs, Ordering::AcqRel);
            self.stats.publications += 1;
            self.stats.first_publish.get_or_insert(now);
            self.stats.last_publish = Some(now);
        }
        self.publishing = Some(p);
    }

    /// Sends one publication to `channel` from its next ready ws publisher, if one is.
    fn publish_ws(&mut self, p: &mut Publishing, channel: u32, stamp_at: Instant) -> bool {
        let (Some(payload), channels) = (self.payload.as_mut(), self.opts.channels.unwrap_or(1))
        else {
            return false;
        };
        let slots = self.opts.slots();
        for k in 0..slots {
            let slot = (p.next_slot[channel as usize] + k) % slots;
            let q = slot * channels + channel as usize;
            let i = p.first_ws + q;
            let c = &mut self.clients[i];
            if c.state != State::Open || c.has_output() {
                continue;
            }
            let binary = payload.binary;
            let bytes = payload.stamp(&Header {
                slot: slot as u32,
                channel,
                seq: p.ws_seq[q],
                sent_ns: payload.ns_since_epoch(stamp_at),
            });
            c.queue_message(if binary {
                Message::Binary(bytes)
            } else {
                // The payload is ASCII (see `Payload::new`).
                Message::Text(std::str::from_utf8(bytes).expect("ASCII payload"))
            });
            p.ws_seq[q] += 1;
            p.next_slot[channel as usize] = (slot + 1) % slots;
            self.flush(i);
            return true;
        }
        false
    }

    /// Sends one publication to `channel` through the next idle API connection, if one is.
    fn publish_api(
        &mut self,
        p: &mut Publishing,
        channel: u32,
        stamp_at: Instant,
        now: Instant,
    ) -> bool {
        let Some(payload) = self.payload.as_mut() else {
            return false;
        };
        let channels = self.opts.channels.unwrap_or(1);
        let n = p.api.len();
        for k in 0..n {
            let j = (p.next_api + k) % n;
            if p.api[j].state != ApiState::Idle {
                continue;
            }
            let seq = &mut p.api_seq[j * channels + channel as usize];
            let binary = payload.binary;
            let bytes = payload.stamp(&Header {
                slot: j as u32,
                channel,
                seq: *seq,
                sent_ns: payload.ns_since_epoch(stamp_at),
            });
            *seq += 1;
            let o = &self.opts;
            let name = o.channel_name(channel);
            let token = o.api_token.as_deref();
            p.api[j].queue(
                |out| api::write_request(out, &o.api_host, &name, bytes, binary, token),
                channel,
                now,
            );
            p.next_api = (j + 1) % n;
            self.flush_api(p, j);
            return true;
        }
        false
    }

    /// Writes API connection `j`'s request; asks for writable events only while some stays.
    fn flush_api(&mut self, p: &mut Publishing, j: usize) {
        let conn = &mut p.api[j];
        match conn.flush() {
            Ok(pending) => {
                if pending != conn.wants_write {
                    conn.wants_write = pending;
                    let interest = if pending {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if let Some(sock) = conn.sock.as_mut() {
                        let token = Token(API_TOKEN_BASE + j);
                        let _ = self.poll.registry().reregister(sock, token, interest);
                    }
                }
            }
            Err(e) => self.api_failed(p, j, e),
        }
    }

    /// An event on API connection `j`.
    fn on_api_event(&mut self, j: usize, readable: bool, writable: bool) {
        let Some(mut p) = self.publishing.take() else {
            return;
        };
        if j < p.api.len() {
            match p.api[j].state {
                ApiState::Dead => {}
                ApiState::Connecting => match p.api[j].on_connected() {
                    Ok(true) => {
                        self.pending -= 1;
                        self.stats.api_opened += 1;
                        self.flush_api(&mut p, j);
                    }
                    Ok(false) => {}
                    Err(e) => self.api_failed(&mut p, j, e),
                },
                ApiState::Idle | ApiState::Waiting => {
                    if writable && p.api[j].has_output() {
                        self.flush_api(&mut p, j);
                    }
                    if readable && p.api[j].sock.is_some() {
                        self.api_read(&mut p, j);
                    }
                }
            }
        }
        self.publishing = Some(p);
    }

    /// Reads API connection `j`'s answer and counts it.
    fn api_read(&mut self, p: &mut Publishing, j: usize) {
        let since = p.api[j].since;
        let channel = p.api[j].channel;
        match p.api[j].read_ready() {
            Ok(None) => {}
            Ok(Some(answer)) => {
                let now = Instant::now();
                let s = &mut self.stats;
                let nanos = now.saturating_duration_since(since).as_nanos() as u64;
                let _ = s.ack_latency.record(nanos.max(1));
                if answer.status == 200 {
                    s.acks += 1;
                } else {
                    *s.api_status.entry(answer.status).or_default() += 1;
                    if s.api_status.values().sum::<u64>() == 1 {
                        eprintln!("wsd-load: the publish API answered {}", answer.status);
                    }
                }
                let subs = self.shared.channel_subs[channel as usize].load(Ordering::Acquire);
                if answer.subscribers.is_some_and(|n| n != subs) {
                    s.subscriber_mismatches += 1;
                }
                if p.api[j].state == ApiState::Dead {
                    // The server closes after this answer: no more requests here.
                    self.api_failed(p, j, ApiError::Closed);
                }
            }
            Err(e) => self.api_failed(p, j, e),
        }
    }

    /// API connection `j` is unusable: drop it and count why.
    fn api_failed(&mut self, p: &mut Publishing, j: usize, e: ApiError) {
        let conn = &mut p.api[j];
        let s = &mut self.stats;
        match conn.state {
            ApiState::Connecting => {
                self.pending -= 1;
                s.refused += 1;
            }
            ApiState::Waiting => {
                s.unacked += 1;
                s.api_failures += 1;
            }
            ApiState::Idle | ApiState::Dead => s.api_failures += 1,
        }
        if s.api_failures == 1 && e != ApiError::Connect {
            eprintln!("wsd-load: a publish API connection failed: {e:?}");
        }
        conn.state = ApiState::Dead;
        conn.sock = None;
    }

    /// pubsub: adds to `lost` the publications each subscriber here never got.
    fn count_missing(&mut self) {
        if !Shared::flag(&self.shared.pub_done) {
            return;
        }
        let slots = self.opts.slots();
        let published = &self.shared.published;
        for c in &self.clients {
            if let Some(e) = c.expect.as_deref() {
                let base = e.channel as usize * slots;
                self.stats.tally.lost +=
                    e.missing(|slot| published[base + slot].load(Ordering::Acquire));
            }
        }
    }

    /// Sends every open connection a Close and waits (bounded) for the close handshakes.
    fn close_all(&mut self) {
        let now = Instant::now();
        if let Some(p) = self.publishing.as_deref_mut() {
            for conn in &mut p.api {
                if conn.state == ApiState::Waiting {
                    self.stats.unacked += 1;
                }
                conn.sock = None;
                conn.state = ApiState::Dead;
            }
        }
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
            match ev.token().0 {
                TIMER_TOKEN => {
                    if let Some(t) = &self.timer {
                        t.clear();
                    }
                }
                t if t >= API_TOKEN_BASE => {
                    self.on_api_event(t - API_TOKEN_BASE, readable, ev.is_writable())
                }
                t => self.on_event(t, readable, ev.is_writable(), to_eof),
            }
        }
        self.events = events;
        let period = self.shared.period.load(Ordering::Acquire);
        if period != self.period {
            self.next_period(period);
        }
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
            State::Connecting => {
                let path = match self.opts.channels {
                    Some(_) => Cow::Owned(self.opts.channel_path(c.channel)),
                    None => Cow::Borrowed(self.opts.path.as_str()),
                };
                match c.on_connected(&self.opts.host, &path, self.opts.deflate) {
                    Ok(true) => self.flush(i),
                    Ok(false) => {}
                    Err(end) => self.end(i, end),
                }
            }
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
        let check = match &self.payload {
            Some(payload) => Check::Pubsub {
                payload,
                slots: self.opts.slots(),
            },
            None => Check::Echo(&self.template),
        };
        let r = c.read_ready(check, &mut self.stats.latency, to_eof, &mut self.codec);
        let (started, quota) = (c.started, c.quota);
        let now = Instant::now();
        if r.opened {
            self.pending -= 1;
            self.stats.opened += 1;
            self.quota_left = self.quota_left.saturating_add(quota);
            self.stats.last_open = Some(now);
            let since = now.duration_since(started).as_nanos() as u64;
            let _ = self.stats.connect_latency.record(since.max(1));
            if self.sending && self.opts.mode == Mode::Echo {
                self.top_up(i, now);
            }
            let first = self.opts.idle_messages;
            if self.opts.mode == Mode::Idle && first > 0 {
                // Traffic before idling (--messages-first); its echoes are verified as usual.
                let c = &mut self.clients[i];
                c.quota = first;
                c.queue_messages(&mut self.template, first, now, &mut self.codec);
                self.in_flight += first;
                self.flush(i);
            }
        }
        if r.tally != Default::default() {
            self.stats.tally.add(&r.tally);
            if r.tally.delivered > 0 {
                self.stats.bytes += r.tally.delivered * self.opts.size as u64;
                self.stats.last_echo = Some(now);
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
        self.stats
            .stalls
            .record_finish(self.period, c.gaps.finish());
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
                    s.stalls.disconnected(self.period);
                }
                if self.opts.mode == Mode::Pubsub {
                    // Later publications to its channel no longer owe it a delivery.
                    let subs = &self.shared.channel_subs[c.channel as usize];
                    let _ = subs
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
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
        let Some(mut p) = self.publishing.take() else {
            return;
        };
        for j in 0..p.api.len() {
            let conn = &p.api[j];
            let late = now.saturating_duration_since(conn.since) >= self.opts.timeout;
            match conn.state {
                ApiState::Connecting if late => {
                    self.pending -= 1;
                    self.stats.connect_timeouts += 1;
                    p.api[j].state = ApiState::Dead;
                    p.api[j].sock = None;
                }
                ApiState::Waiting if late => self.api_failed(&mut p, j, ApiError::Closed),
                _ => {}
            }
        }
        self.publishing = Some(p);
    }

    /// SIGUSR1 moved the stall period on: each connection's longest gap so far counts in the
    /// period that ends.
    fn next_period(&mut self, period: usize) {
        for c in &mut self.clients {
            let gap = c.gaps.end_period();
            self.stats.stalls.record_period(self.period, gap);
        }
        self.period = period;
    }

    /// The measured run is over: each open connection's gaps are counted.
    fn finish_gaps(&mut self) {
        for c in &mut self.clients {
            let gaps = c.gaps.finish();
            self.stats.stalls.record_finish(self.period, gaps);
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
        let messages = s.messages + s.tally.delivered;
        let settled = s.tally.delivered + s.tally.lost;
        for (counter, now, last) in [
            (&sh.opened, s.opened, &mut p.opened),
            (&sh.failed, failed, &mut p.failed),
            (&sh.messages, messages, &mut p.messages),
            (&sh.closes, closes, &mut p.closes),
            (&sh.ended, ended, &mut p.ended),
            (&sh.publications, s.publications, &mut p.publications),
            (&sh.settled, settled, &mut p.settled),
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
