//! What a run counted, merged over the worker threads, and its two renderings: a table for a
//! person and JSON for a script.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wsd::protocol::handshake::ResponseError;

use crate::cli::{Mode, Options, Publish};
use crate::client::End;
use crate::payload::Tally;
use crate::stall::Stalls;

/// Highest latency the histograms track (longer samples are clamped to it): one minute, in ns.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Significant decimal digits of the histograms (0.1 % resolution).
const SIGNIFICANT_DIGITS: u8 = 3;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGNIFICANT_DIGITS).expect("valid bounds")
}

/// Counts of one worker, or of all of them once merged.
pub struct Stats {
    pub attempts: u64,
    pub opened: u64,
    /// Connects that failed, by kind.
    pub refused: u64,
    pub connect_timeouts: u64,
    pub http_status: BTreeMap<u16, u64>,
    pub bad_handshakes: u64,
    /// Time from connect() to the 101, in ns.
    pub connect_latency: Histogram<u64>,
    pub first_attempt: Option<Instant>,
    pub last_open: Option<Instant>,

    /// Echo: verified echoes, their payload bytes, and their latency in ns (pubsub: in-order
    /// deliveries, their bytes, and their latency from publish to delivery).
    pub messages: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
    pub first_send: Option<Instant>,
    /// The last echo (pubsub: the last delivery).
    pub last_echo: Option<Instant>,
    /// Echoes that were not what was sent.
    pub mismatches: u64,
    /// Echoes still missing when the wait for them ended.
    pub missing_echoes: u64,
    /// Connections that ended while they should have stayed open (echo run or idle hold).
    pub lost: u64,
    /// Data messages the server sent unasked.
    pub unexpected: u64,

    /// Close: server Close codes (1005 for none) and how connections ended after a Close.
    pub close_codes: BTreeMap<u16, u64>,
    pub clean: u64,
    pub reset: u64,
    pub eof_before_close: u64,
    pub timed_out: u64,
    pub protocol_errors: u64,
    /// Connections that never answered the server's Close and were then dropped by it.
    pub silent: u64,
    pub silent_dropped: u64,
    pub first_close: Option<Instant>,
    pub last_close: Option<Instant>,
    pub last_end: Option<Instant>,

    /// pubsub: publications sent, and what the subscribers made of their deliveries.
    pub publications: u64,
    pub tally: Tally,
    pub first_publish: Option<Instant>,
    pub last_publish: Option<Instant>,
    /// pubsub over the API: connections opened, `200` answers and their latency in ns, other
    /// statuses, broken connections, requests never answered, and `200`s whose subscriber
    /// count differs from the subscribers connected to the channel.
    pub api_opened: u64,
    pub acks: u64,
    pub ack_latency: Histogram<u64>,
    pub api_status: BTreeMap<u16, u64>,
    pub api_failures: u64,
    pub unacked: u64,
    pub subscriber_mismatches: u64,

    /// Echo and pubsub: each connection's longest gap between messages, per period and run.
    pub stalls: Stalls,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            attempts: 0,
            opened: 0,
            refused: 0,
            connect_timeouts: 0,
            http_status: BTreeMap::new(),
            bad_handshakes: 0,
            connect_latency: histogram(),
            first_attempt: None,
            last_open: None,
            messages: 0,
            bytes: 0,
            latency: histogram(),
            first_send: None,
            last_echo: None,
            mismatches: 0,
            missing_echoes: 0,
            lost: 0,
            unexpected: 0,
            close_codes: BTreeMap::new(),
            clean: 0,
            reset: 0,
            eof_before_close: 0,
            timed_out: 0,
            protocol_errors: 0,
            silent: 0,
            silent_dropped: 0,
            first_close: None,
            last_close: None,
            last_end: None,
            publications: 0,
            tally: Tally::default(),
            first_publish: None,
            last_publish: None,
            api_opened: 0,
            acks: 0,
            ack_latency: histogram(),
            api_status: BTreeMap::new(),
            api_failures: 0,
            unacked: 0,
            subscriber_mismatches: 0,
            stalls: Stalls::default(),
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl Stats {
    /// A connect or handshake that did not produce an open WebSocket.
    pub fn connect_failed(&mut self, end: End) {
        match end {
            End::TimedOut => self.connect_timeouts += 1,
            End::Handshake(ResponseError::Status(s)) => {
                *self.http_status.entry(s).or_default() += 1
            }
            End::Handshake(_) | End::Protocol => self.bad_handshakes += 1,
            _ => self.refused += 1,
        }
    }

    pub fn connect_failures(&self) -> u64 {
        self.refused
            + self.connect_timeouts
            + self.bad_handshakes
            + self.http_status.values().sum::<u64>()
    }

    pub fn merge(&mut self, o: &Stats) {
        self.attempts += o.attempts;
        self.opened += o.opened;
        self.refused += o.refused;
        self.connect_timeouts += o.connect_timeouts;
        for (k, v) in &o.http_status {
            *self.http_status.entry(*k).or_default() += v;
        }
        self.bad_handshakes += o.bad_handshakes;
        let _ = self.connect_latency.add(&o.connect_latency);
        self.first_attempt = earliest(self.first_attempt, o.first_attempt);
        self.last_open = latest(self.last_open, o.last_open);
        self.messages += o.messages;
        self.bytes += o.bytes;
        let _ = self.latency.add(&o.latency);
        self.first_send = earliest(self.first_send, o.first_send);
        self.last_echo = latest(self.last_echo, o.last_echo);
        self.mismatches += o.mismatches;
        self.missing_echoes += o.missing_echoes;
        self.lost += o.lost;
        self.unexpected += o.unexpected;
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(*k).or_default() += v;
        }
        self.clean += o.clean;
        self.reset += o.reset;
        self.eof_before_close += o.eof_before_close;
        self.timed_out += o.timed_out;
        self.protocol_errors += o.protocol_errors;
        self.silent += o.silent;
        self.silent_dropped += o.silent_dropped;
        self.first_close = earliest(self.first_close, o.first_close);
        self.last_close = latest(self.last_close, o.last_close);
        self.last_end = latest(self.last_end, o.last_end);
        self.publications += o.publications;
        self.tally.add(&o.tally);
        self.first_publish = earliest(self.first_publish, o.first_publish);
        self.last_publish = latest(self.last_publish, o.last_publish);
        self.api_opened += o.api_opened;
        self.acks += o.acks;
        let _ = self.ack_latency.add(&o.ack_latency);
        for (k, v) in &o.api_status {
            *self.api_status.entry(*k).or_default() += v;
        }
        self.api_failures += o.api_failures;
        self.unacked += o.unacked;
        self.subscriber_mismatches += o.subscriber_mismatches;
        self.stalls.merge(&o.stalls);
    }
}

/// CPU time over the measured window (echo: from the first message to the last echo; pubsub:
/// from the first publication to the end of the wait for the last delivery).
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    pub client: Duration,
    /// The server processes' CPU time summed (None unless every one was measured).
    pub server: Option<Duration>,
    /// Each `--server-pid`'s own (None: it could not be read at both ends of the window).
    pub per_pid: Vec<(u32, Option<Duration>)>,
}

impl Cpu {
    /// The sum over the server processes, if each was measured: a process that vanished
    /// (a reload, a crash) would make a partial sum look cheap.
    pub fn total_server(&self) -> Option<Duration> {
        if self.per_pid.is_empty() {
            return None;
        }
        self.per_pid.iter().map(|(_, d)| *d).sum()
    }
}

/// The merged result of a run, with the verdict.
pub struct Report<'a> {
    pub opts: &'a Options,
    pub stats: Stats,
    pub cpu: Cpu,
    /// How long the connections were held (idle) or waited on (drain).
    pub held: Duration,
}

fn secs(a: Option<Instant>, b: Option<Instant>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

fn per_sec(n: u64, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// Percentiles reported, as (label, quantile).
const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999)];

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Report<'_> {
    /// Every check passed: exit status 0.
    pub fn ok(&self) -> bool {
        let s = &self.stats;
        let o = self.opts;
        let connected = s.opened == (o.connections + o.ws_publishers()) as u64
            && s.api_opened == self.api_connections()
            && s.connect_failures() == 0;
        let common = connected && s.mismatches == 0 && s.protocol_errors == 0;
        match self.opts.mode {
            Mode::Echo => common && s.missing_echoes == 0 && s.lost == 0 && s.messages > 0,
            Mode::Idle => common && s.lost == 0,
            Mode::Pubsub => {
                common
                    && s.lost == 0
                    && s.tally.clean()
                    && s.tally.delivered > 0
                    && s.publications > 0
                    && s.api_status.is_empty()
                    && s.api_failures == 0
                    && s.unacked == 0
            }
            // Every connection got a Close and went away in time; answering ones cleanly.
            Mode::Drain => {
                common
                    && s.timed_out == 0
                    && s.eof_before_close == 0
                    && s.clean + s.silent_dropped == s.opened
            }
        }
    }

    fn elapsed(&self) -> f64 {
        let first = match self.opts.mode {
            Mode::Pubsub => self.stats.first_publish,
            _ => self.stats.first_send,
        };
        secs(first, self.stats.last_echo)
    }

    /// pubsub: HTTP connections to the publish API the run opens.
    fn api_connections(&self) -> u64 {
        let o = self.opts;
        if o.mode == Mode::Pubsub && o.publish == Publish::Api {
            o.publishers as u64
        } else {
            0
        }
    }

    /// pubsub: a line describing who publishes.
    fn publishers_text(&self) -> String {
        let o = self.opts;
        match o.publish {
            Publish::Ws => format!(
                "{} WebSocket per channel ({} connections, each also subscribed)",
                o.publishers,
                o.ws_publishers()
            ),
            Publish::Api => format!(
                "{} HTTP connection{} to {}",
                o.publishers,
                if o.publishers == 1 { "" } else { "s" },
                o.api_addr
            ),
        }
    }

    fn schedule_text(&self) -> String {
        match self.opts.pub_rate {
            Some(r) => format!("{r} publications/s"),
            None => format!(
                "as fast as a window of {} per channel allows",
                self.opts.window
            ),
        }
    }

    fn connect_span(&self) -> f64 {
        secs(self.stats.first_attempt, self.stats.last_open)
    }

    fn per_msg_us(&self, cpu: Duration) -> f64 {
        if self.stats.messages == 0 {
            0.0
        } else {
            cpu.as_secs_f64() * 1e6 / self.stats.messages as f64
        }
    }

    pub fn table(&self) -> String {
        let o = self.opts;
        let s = &self.stats;
        let mut t = String::new();
        let row = |t: &mut String, k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}");
        };
        let _ = writeln!(
            t,
            "wsd-load {} → {} ({} connections, {} thread{})",
            o.mode.name(),
            o.addr,
            o.connections + o.ws_publishers(),
            o.threads,
            if o.threads == 1 { "" } else { "s" }
        );
        row(
            &mut t,
            "opened",
            format!("{} of {}", s.opened, o.connections + o.ws_publishers()),
        );
        row(&mut t, "connect failures", self.failures_text());
        let cspan = self.connect_span();
        row(
            &mut t,
            "connect rate",
            format!("{:.0}/s over {:.3} s", per_sec(s.opened, cspan), cspan),
        );
        row(
            &mut t,
            "connect latency (µs)",
            percentiles_text(&s.connect_latency),
        );
        match o.mode {
            Mode::Echo => {
                let el = self.elapsed();
                let kind = if o.binary { "binary" } else { "text" };
                row(
                    &mut t,
                    "messages",
                    format!(
                        "{} × {} B {kind}, pipeline {}",
                        s.messages, o.size, o.pipeline
                    ),
                );
                row(&mut t, "elapsed", format!("{el:.3} s"));
                row(
                    &mut t,
                    "messages/s",
                    format!("{:.0}", per_sec(s.messages, el)),
                );
                row(
                    &mut t,
                    "bytes/s (payload, one way)",
                    format!(
                        "{:.0} ({:.1} MiB/s)",
                        per_sec(s.bytes, el),
                        per_sec(s.bytes, el) / 1048576.0
                    ),
                );
                row(&mut t, "latency (µs)", percentiles_text(&s.latency));
                row(
                    &mut t,
                    "verification",
                    format!(
                        "{} mismatched, {} missing, {} connections lost",
                        s.mismatches, s.missing_echoes, s.lost
                    ),
                );
                self.stall_rows(&mut t);
                row(
                    &mut t,
                    "client CPU µs/msg",
                    format!("{:.2}", self.per_msg_us(self.cpu.client)),
                );
                if let Some(server) = self.cpu.server {
                    row(
                        &mut t,
                        "server CPU µs/msg",
                        format!("{:.2}", self.per_msg_us(server)),
                    );
                }
            }
            Mode::Pubsub => self.pubsub_rows(&mut t),
            Mode::Idle => {
                row(&mut t, "held", format!("{:.1} s", self.held.as_secs_f64()));
                row(&mut t, "dropped while held", s.lost.to_string());
            }
            Mode::Drain => {}
        }
        if o.mode == Mode::Drain || !s.close_codes.is_empty() {
            row(&mut t, "close codes", codes_text(&s.close_codes));
            row(
                &mut t,
                "ended",
                format!(
                    "{} clean, {} reset, {} EOF before Close, {} timed out, {} protocol errors",
                    s.clean, s.reset, s.eof_before_close, s.timed_out, s.protocol_errors
                ),
            );
            if o.mode == Mode::Drain {
                row(
                    &mut t,
                    "never answering",
                    format!("{} ({} dropped by the server)", s.silent, s.silent_dropped),
                );
                row(
                    &mut t,
                    "first → last Close",
                    format!("{:.1} ms", secs(s.first_close, s.last_close) * 1e3),
                );
                row(
                    &mut t,
                    "first Close → last end",
                    format!("{:.1} ms", secs(s.first_close, s.last_end) * 1e3),
                );
            }
        }
        row(
            &mut t,
            "result",
            if self.ok() {
                "PASS".into()
            } else {
                "FAIL".into()
            },
        );
        t
    }

    fn pubsub_rows(&self, t: &mut String) {
        let o = self.opts;
        let s = &self.stats;
        let row = |t: &mut String, k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}");
        };
        let el = self.elapsed();
        let kind = if o.binary { "binary" } else { "text" };
        row(
            t,
            "subscribers",
            format!(
                "{} over {} channel(s)",
                o.connections,
                o.channels.unwrap_or(1)
            ),
        );
        row(t, "publishers", self.publishers_text());
        row(
            t,
            "publications",
            format!(
                "{} × {} B {kind}, {}",
                s.publications,
                o.size,
                self.schedule_text()
            ),
        );
        row(t, "deliveries", s.tally.delivered.to_string());
        row(t, "elapsed", format!("{el:.3} s"));
        row(
            t,
            "publications/s",
            format!("{:.0}", per_sec(s.publications, el)),
        );
        row(
            t,
            "deliveries/s",
            format!(
                "{:.0} ({:.1} MiB/s payload)",
                per_sec(s.tally.delivered, el),
                per_sec(s.bytes, el) / 1048576.0
            ),
        );
        row(t, "latency (µs)", percentiles_text(&s.latency));
        if o.publish == Publish::Api {
            row(t, "publish answer (µs)", percentiles_text(&s.ack_latency));
            let mut api = format!(
                "{} × 200, {} failed connections, {} unanswered",
                s.acks, s.api_failures, s.unacked
            );
            for (status, n) in &s.api_status {
                let _ = write!(api, ", {n} × HTTP {status}");
            }
            if s.subscriber_mismatches > 0 {
                let _ = write!(
                    api,
                    ", {} subscriber counts unlike ours",
                    s.subscriber_mismatches
                );
            }
            row(t, "publish answers", api);
        }
        let v = &s.tally;
        row(
            t,
            "verification",
            format!(
                "{} lost, {} duplicated, {} out of order, {} malformed, {} misrouted, {} \
                 connections lost",
                v.lost, v.duplicated, v.out_of_order, v.malformed, v.misrouted, s.lost
            ),
        );
        self.stall_rows(t);
        row(
            t,
            "client CPU µs/delivery",
            format!("{:.3}", self.per_delivery_us(self.cpu.client)),
        );
        if let Some(server) = self.cpu.server {
            row(
                t,
                "server CPU µs/delivery",
                format!("{:.3}", self.per_delivery_us(server)),
            );
        }
    }

    /// The longest gap per connection, over the run and per SIGUSR1 period.
    fn stall_rows(&self, t: &mut String) {
        let st = &self.stats.stalls;
        let _ = writeln!(
            t,
            "  {:<26} {}",
            "stall (longest gap, ms)",
            stall_text(&st.run)
        );
        if st.periods.len() > 1 {
            for (k, (h, lost)) in st.periods.iter().zip(&st.disconnects).enumerate() {
                let _ = writeln!(
                    t,
                    "  {:<26} {}, {lost} dropped",
                    format!("  period {k}"),
                    stall_text(h)
                );
            }
        }
    }

    /// `stall_ms` (over the run) and `stall_periods_ms`, and each server process's CPU.
    fn stall_json(&self, j: &mut Json) {
        let st = &self.stats.stalls;
        j.raw("stall_ms", &stall_json(&st.run, None));
        let periods: Vec<String> = st
            .periods
            .iter()
            .zip(&st.disconnects)
            .map(|(h, &lost)| stall_json(h, Some(lost)))
            .collect();
        j.raw("stall_periods_ms", &format!("[{}]", periods.join(",")));
        j.num("disconnects", self.stats.lost as f64);
        let mut pids = Json::default();
        for (pid, cpu) in &self.cpu.per_pid {
            match cpu {
                Some(c) => pids.num(&pid.to_string(), c.as_secs_f64() * 1e6),
                None => pids.raw(&pid.to_string(), "null"),
            }
        }
        j.raw("server_cpu_us_by_pid", &pids.finish());
    }

    fn per_delivery_us(&self, cpu: Duration) -> f64 {
        let n = self.stats.tally.delivered;
        if n == 0 {
            0.0
        } else {
            cpu.as_secs_f64() * 1e6 / n as f64
        }
    }

    fn pubsub_json(&self, j: &mut Json) {
        let o = self.opts;
        let s = &self.stats;
        let el = self.elapsed();
        let v = &s.tally;
        j.num("channels", o.channels.unwrap_or(1) as f64);
        j.num("subscribers", o.connections as f64);
        j.str(
            "publish",
            match o.publish {
                Publish::Ws => "ws",
                Publish::Api => "api",
            },
        );
        j.num("publishers", o.publishers as f64);
        j.num("ws_publishers", o.ws_publishers() as f64);
        match o.pub_rate {
            Some(r) => j.num("pub_rate", r),
            None => j.raw("pub_rate", "null"),
        }
        j.num("window", o.window as f64);
        j.num("size", o.size as f64);
        j.raw("binary", if o.binary { "true" } else { "false" });
        j.num("publications", s.publications as f64);
        j.num("deliveries", v.delivered as f64);
        j.num("bytes", s.bytes as f64);
        j.num("elapsed_s", el);
        j.num("publications_per_s", per_sec(s.publications, el));
        j.num("deliveries_per_s", per_sec(v.delivered, el));
        j.num("bytes_per_s", per_sec(s.bytes, el));
        j.raw("latency_us", &percentiles_json(&s.latency));
        j.num("lost_deliveries", v.lost as f64);
        j.num("duplicated", v.duplicated as f64);
        j.num("out_of_order", v.out_of_order as f64);
        j.num("malformed", v.malformed as f64);
        j.num("misrouted", v.misrouted as f64);
        j.num("lost", s.lost as f64);
        if o.publish == Publish::Api {
            j.num("api_opened", s.api_opened as f64);
            j.num("acks", s.acks as f64);
            j.raw("ack_latency_us", &percentiles_json(&s.ack_latency));
            j.raw("api_status", &counts_json(&s.api_status));
            j.num("api_failures", s.api_failures as f64);
            j.num("unacked", s.unacked as f64);
            j.num("subscriber_mismatches", s.subscriber_mismatches as f64);
        }
        j.num(
            "client_cpu_us_per_delivery",
            self.per_delivery_us(self.cpu.client),
        );
        match self.cpu.server {
            Some(c) => j.num("server_cpu_us_per_delivery", self.per_delivery_us(c)),
            None => j.raw("server_cpu_us_per_delivery", "null"),
        }
    }

    fn failures_text(&self) -> String {
        let s = &self.stats;
        let mut t = format!(
            "{} ({} refused, {} timed out, {} bad handshakes",
            s.connect_failures(),
            s.refused,
            s.connect_timeouts,
            s.bad_handshakes
        );
        for (status, n) in &s.http_status {
            let _ = write!(t, ", {n} × HTTP {status}");
        }
        t.push(')');
        t
    }

    pub fn json(&self) -> String {
        let o = self.opts;
        let s = &self.stats;
        let mut j = Json::default();
        j.str("mode", o.mode.name());
        j.str("url", &format!("ws://{}{}", o.host, o.path));
        j.num("connections", (o.connections + o.ws_publishers()) as f64);
        j.num("threads", o.threads as f64);
        j.raw("ok", if self.ok() { "true" } else { "false" });
        j.num("opened", s.opened as f64);
        j.raw("connect_failures", &{
            let mut f = Json::default();
            f.num("total", s.connect_failures() as f64);
            f.num("refused", s.refused as f64);
            f.num("timed_out", s.connect_timeouts as f64);
            f.num("bad_handshake", s.bad_handshakes as f64);
            f.raw("http_status", &counts_json(&s.http_status));
            f.finish()
        });
        j.num("connect_per_s", per_sec(s.opened, self.connect_span()));
        j.raw("connect_latency_us", &percentiles_json(&s.connect_latency));
        match o.mode {
            Mode::Echo => {
                let el = self.elapsed();
                j.num("size", o.size as f64);
                j.raw("binary", if o.binary { "true" } else { "false" });
                j.num("pipeline", o.pipeline as f64);
                j.num("messages", s.messages as f64);
                j.num("bytes", s.bytes as f64);
                j.num("elapsed_s", el);
                j.num("messages_per_s", per_sec(s.messages, el));
                j.num("bytes_per_s", per_sec(s.bytes, el));
                j.raw("latency_us", &percentiles_json(&s.latency));
                j.num("mismatches", s.mismatches as f64);
                j.num("missing_echoes", s.missing_echoes as f64);
                j.num("lost", s.lost as f64);
                j.num("client_cpu_us_per_msg", self.per_msg_us(self.cpu.client));
                match self.cpu.server {
                    Some(c) => j.num("server_cpu_us_per_msg", self.per_msg_us(c)),
                    None => j.raw("server_cpu_us_per_msg", "null"),
                }
                match o.interval {
                    Some(i) => j.num("interval_ms", i.as_secs_f64() * 1e3),
                    None => j.raw("interval_ms", "null"),
                }
                self.stall_json(&mut j);
            }
            Mode::Pubsub => {
                self.pubsub_json(&mut j);
                self.stall_json(&mut j);
            }
            Mode::Idle => {
                j.num("held_s", self.held.as_secs_f64());
                j.num("lost", s.lost as f64);
            }
            Mode::Drain => {
                j.num("silent", s.silent as f64);
                j.num("silent_dropped", s.silent_dropped as f64);
                j.num(
                    "first_to_last_close_ms",
                    secs(s.first_close, s.last_close) * 1e3,
                );
                j.num(
                    "first_close_to_last_end_ms",
                    secs(s.first_close, s.last_end) * 1e3,
                );
            }
        }
        j.raw("close_codes", &counts_json(&s.close_codes));
        j.num("clean", s.clean as f64);
        j.num("reset", s.reset as f64);
        j.num("eof_before_close", s.eof_before_close as f64);
        j.num("timed_out", s.timed_out as f64);
        j.num("protocol_errors", s.protocol_errors as f64);
        j.finish()
    }
}

fn percentiles_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let mut t = String::new();
    for (label, q) in QUANTILES {
        let _ = write!(
            t,
            "{} {:.1}  ",
            label.replace('_', "."),
            us(h.value_at_quantile(q))
        );
    }
    let _ = write!(t, "max {:.1}", us(h.max()));
    t
}

fn percentiles_json(h: &Histogram<u64>) -> String {
    let mut j = Json::default();
    let empty = h.is_empty();
    for (label, q) in QUANTILES {
        j.num(
            label,
            if empty {
                0.0
            } else {
                us(h.value_at_quantile(q))
            },
        );
    }
    j.num("max", if empty { 0.0 } else { us(h.max()) });
    j.num("mean", if empty { 0.0 } else { h.mean() / 1000.0 });
    j.finish()
}

/// Gap percentiles over connections, in ms.
fn stall_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.1}  p99 {:.1}  max {:.1}  ({} connections)",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    )
}

/// Gap percentiles over connections, in ms, and the connections that dropped (per period).
fn stall_json(h: &Histogram<u64>, disconnects: Option<u64>) -> String {
    let mut j = Json::default();
    let ms = |us: u64| us as f64 / 1000.0;
    let empty = h.is_empty();
    let at = |q: f64| {
        if empty {
            0.0
        } else {
            ms(h.value_at_quantile(q))
        }
    };
    j.num("connections", h.len() as f64);
    j.num("p50", at(0.5));
    j.num("p99", at(0.99));
    j.num("max", if empty { 0.0 } else { ms(h.max()) });
    if let Some(n) = disconnects {
        j.num("disconnects", n as f64);
    }
    j.finish()
}

fn codes_text(codes: &BTreeMap<u16, u64>) -> String {
    if codes.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = codes.iter().map(|(c, n)| format!("{c} × {n}")).collect();
    parts.join(", ")
}

fn counts_json(codes: &BTreeMap<u16, u64>) -> String {
    let mut j = Json::default();
    for (c, n) in codes {
        j.num(&c.to_string(), *n as f64);
    }
    j.finish()
}

/// A flat JSON object writer: keys are ours (no escaping needed beyond quotes and backslashes).
#[derive(Default)]
struct Json {
    body: String,
}

impl Json {
    fn key(&mut self, k: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        let _ = write!(self.body, "\"{}\":", escape(k));
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        let _ = write!(self.body, "\"{}\"", escape(v));
    }

    fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if v.is_finite() {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                let _ = write!(self.body, "{}", v as i64);
            } else {
                let _ = write!(self.body, "{v:.3}");
            }
        } else {
            self.body.push_str("null");
        }
    }

    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.body.push_str(v);
    }

    fn finish(self) -> String {
        format!("{{{}}}", self.body)
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_json_is_in_milliseconds() {
        let mut h = crate::stall::gap_histogram();
        assert_eq!(
            stall_json(&h, Some(0)),
            r#"{"connections":0,"p50":0,"p99":0,"max":0,"disconnects":0}"#
        );
        for us in [50_000, 60_000, 250_000] {
            h.record(us).unwrap();
        }
        let j = stall_json(&h, None);
        assert!(j.starts_with(r#"{"connections":3,"p50":60."#), "{j}");
        assert!(
            j.contains(r#""max":250."#) && !j.contains("disconnects"),
            "{j}"
        );
    }

    #[test]
    fn json_objects_nest_and_escape() {
        let mut j = Json::default();
        j.str("a", "x\"y");
        j.num("n", 3.0);
        j.num("f", 0.25);
        j.raw("o", &{
            let mut k = Json::default();
            k.num("1001", 2.0);
            k.finish()
        });
        assert_eq!(j.finish(), r#"{"a":"x\"y","n":3,"f":0.250,"o":{"1001":2}}"#);
    }
}
