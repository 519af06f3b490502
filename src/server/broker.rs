//! The Redis broker link, driven by the loop like any other socket: per shard (one Redis
//! server) a command connection for PUBLISH and PING and a subscribe-mode connection, both
//! non-blocking `mio` sockets. The RESP side is in [`crate::pubsub::redis`].
//!
//! - Channels are subscribed in Redis on their first local subscriber and unsubscribed after
//!   the last (batched per loop turn, pipelined); a reconnect subscribes every channel again.
//! - A publication goes to its shard's Redis and comes back to every instance (this one
//!   included) over the subscription, so every instance delivers a channel in Redis's order.
//! - Faults: a shard that is unreachable, closes, errs or does not answer a PING within
//!   `broker_timeout` is down: its in-flight publications fail (the API answers 503), new ones
//!   fail at once, clients stay connected, and it is retried with jittered exponential backoff
//!   up to `broker_backoff_max`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::protocol::Message;
use crate::pubsub::hub::Outbound;
use crate::pubsub::redis::{self, Reply, SubEvent, CHANNELS_PER_COMMAND};
use crate::pubsub::Hub;

/// Most Redis shards (`broker` URLs).
pub const MAX_SHARDS: usize = 64;
/// The first broker token; shard `i` uses `BROKER_START + 2i` (commands) and `+ 1` (subscribe).
pub const BROKER_START: usize = usize::MAX - 12 - super::api::MAX_API_CONNECTIONS - 2 * MAX_SHARDS;
/// First wait before reconnecting; doubled (with jitter) after each failure.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// Whether a token belongs to the broker.
pub fn owns(token: Token) -> bool {
    (BROKER_START..BROKER_START + 2 * MAX_SHARDS).contains(&token.0)
}

/// One TCP connection to Redis.
#[derive(Default)]
struct Link {
    sock: Option<TcpStream>,
    out: Vec<u8>,
    input: Vec<u8>,
    /// PINGs sent and not answered yet, and when the oldest was sent.
    pings: u32,
    ping_since: Option<Instant>,
    /// It answered its first PING: connected and speaking RESP.
    ready: bool,
}

impl Link {
    fn send(&mut self, args: &[&[u8]]) {
        redis::command(&mut self.out, args);
    }

    fn ping(&mut self, now: Instant) {
        self.send(&[b"PING"]);
        self.pings += 1;
        self.ping_since.get_or_insert(now);
    }

    fn pong(&mut self, now: Instant) {
        self.pings = self.pings.saturating_sub(1);
        self.ping_since = (self.pings > 0).then_some(now);
        self.ready = true;
    }

    /// Writes what is queued; an error means the link is down.
    fn write(&mut self) -> io::Result<()> {
        let Some(sock) = &mut self.sock else {
            return Ok(());
        };
        let mut written = 0;
        while written < self.out.len() {
            match sock.write(&self.out[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break, // Still connecting.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..written);
        Ok(())
    }

    /// Reads what arrived; EOF and errors mean the link is down.
    fn read(&mut self) -> io::Result<()> {
        let Some(sock) = &mut self.sock else {
            return Ok(());
        };
        loop {
            let start = self.input.len();
            self.input.resize(start + READ_CHUNK, 0);
            let read = sock.read(&mut self.input[start..]);
            self.input.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn close(&mut self, registry: &Registry) {
        if let Some(mut sock) = self.sock.take() {
            let _ = registry.deregister(&mut sock);
        }
        *self = Link::default();
    }
}

/// What a reply on the command connection answers, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Publish(u64),
    Ping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting to reconnect at `retry_at`.
    Down {
        retry_at: Instant,
    },
    /// Connected (or connecting) and waiting for both links to answer a PING.
    Connecting,
    /// Subscribing every channel again; publications wait for this to finish (else one could
    /// be accepted before this instance hears its channel again, and be lost for it).
    Subscribing,
    Up,
}

struct Shard {
    url: String,
    addr: Option<SocketAddr>,
    state: State,
    backoff: Duration,
    commands: Link,
    subs: Link,
    expect: VecDeque<Expect>,
    /// SUBSCRIBE confirmations still awaited after a (re)connect, and when it started.
    resubscribing: usize,
    resubscribe_started: Option<Instant>,
    /// The outage was logged (once per outage, and once if Redis is absent at start).
    logged_down: bool,
    /// The drain's barrier: pongs still awaited on the subscribe link (see
    /// [`Broker::begin_barrier`]).
    barrier: Option<u32>,
    /// When the next keep-alive PINGs go out.
    next_ping: Instant,
    // Metrics.
    reconnects: u64,
    resubscribe_seconds: f64,
}

/// What the metrics show of one shard.
pub struct ShardStats<'a> {
    pub url: &'a str,
    pub up: bool,
    pub reconnects: u64,
    pub resubscribe_seconds: f64,
}

/// Every Redis shard, and the answers to relayed publications.
pub struct Broker {
    shards: Vec<Shard>,
    prefix: String,
    timeout: Duration,
    backoff_max: Duration,
    /// Publication id → Redis receivers (wsd instances), or `None` when it failed.
    results: HashMap<u64, Option<u32>>,
    /// Publications that could not be sent or were not confirmed.
    pub failed: u64,
    seed: u64,
}

impl Broker {
    pub fn new(
        urls: &[String],
        prefix: &str,
        timeout: Duration,
        backoff_max: Duration,
        now: Instant,
    ) -> Broker {
        let shards = urls
            .iter()
            .take(MAX_SHARDS)
            .map(|url| Shard {
                url: url.clone(),
                addr: None,
                state: State::Down { retry_at: now },
                backoff: BACKOFF_START,
                commands: Link::default(),
                subs: Link::default(),
                expect: VecDeque::new(),
                resubscribing: 0,
                resubscribe_started: None,
                logged_down: false,
                barrier: None,
                next_ping: now,
                reconnects: 0,
                resubscribe_seconds: 0.0,
            })
            .collect();
        Broker {
            shards,
            prefix: prefix.to_string(),
            timeout,
            backoff_max,
            results: HashMap::new(),
            failed: 0,
            seed: u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub fn shard_stats(&self) -> impl Iterator<Item = ShardStats<'_>> {
        self.shards.iter().map(|s| ShardStats {
            url: &s.url,
            up: s.state == State::Up,
            reconnects: s.reconnects,
            resubscribe_seconds: s.resubscribe_seconds,
        })
    }

    /// Whether a publication sent to Redis waits for its answer (it may come back to this
    /// instance's subscribers too).
    pub fn publishing(&self) -> bool {
        self.shards
            .iter()
            .any(|s| s.expect.iter().any(|e| matches!(e, Expect::Publish(_))))
    }

    /// The answer for relayed publication `id`, once known (taken: asked once).
    pub fn take_result(&mut self, id: u64) -> Option<Option<u32>> {
        self.results.remove(&id)
    }

    /// The earliest moment the broker needs the loop: a reconnect or a PING deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.shards
            .iter()
            .flat_map(|s| {
                let retry = match s.state {
                    State::Down { retry_at } => Some(retry_at),
                    _ => None,
                };
                let live = (retry.is_none()).then_some(s.next_ping);
                let pings = [s.commands.ping_since, s.subs.ping_since]
                    .into_iter()
                    .flatten()
                    .map(|t| t + self.timeout);
                retry.into_iter().chain(live).chain(pings)
            })
            .min()
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift: enough to keep instances from retrying in step.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0; // 0.5 .. 1.0
        d.mul_f64(frac)
    }

    /// Retries shards whose time has come, sends PINGs, and takes down the ones that did not
    /// answer in time.
    pub fn tick(&mut self, now: Instant, registry: &Registry) {
        for i in 0..self.shards.len() {
            match self.shards[i].state {
                State::Down { retry_at } if retry_at <= now => self.connect(i, now, registry),
                State::Down { .. } => {}
                State::Connecting | State::Subscribing | State::Up => {
                    let timeout = self.timeout;
                    let s = &mut self.shards[i];
                    let late = [&s.commands, &s.subs]
                        .iter()
                        .any(|l| l.ping_since.is_some_and(|t| now >= t + timeout));
                    if late {
                        self.down(i, "no answer to PING", now, registry);
                        continue;
                    }
                    // Keep-alive: a PING on each link every half timeout.
                    if now >= s.next_ping {
                        s.next_ping = now + timeout / 2;
                        if s.commands.pings == 0 {
                            s.ping_commands(now);
                        }
                        if s.subs.pings == 0 {
                            s.subs.ping(now);
                        }
                        self.write(i, now, registry);
                    }
                }
            }
        }
    }

    fn connect(&mut self, i: usize, now: Instant, registry: &Registry) {
        let s = &mut self.shards[i];
        if s.addr.is_none() {
            s.addr = redis::parse_url(&s.url)
                .ok()
                .and_then(|e| (e.host.as_str(), e.port).to_socket_addrs().ok())
                .and_then(|mut a| a.next());
        }
        let Some(addr) = s.addr else {
            return self.down(i, "cannot resolve the address", now, registry);
        };
        let mut socks = Vec::with_capacity(2);
        for k in 0..2 {
            let token = Token(BROKER_START + 2 * i + k);
            let registered = TcpStream::connect(addr).and_then(|mut sock| {
                let _ = sock.set_nodelay(true);
                registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
                Ok(sock)
            });
            match registered {
                Ok(sock) => socks.push(sock),
                Err(e) => {
                    for mut sock in socks {
                        let _ = registry.deregister(&mut sock);
                    }
                    let why = format!("connect: {e}");
                    return self.down(i, &why, now, registry);
                }
            }
        }
        let s = &mut self.shards[i];
        s.subs.sock = socks.pop();
        s.commands.sock = socks.pop();
        // Each link is ready once it answers a PING (queued until the connect completes).
        s.ping_commands(now);
        s.subs.ping(now);
        s.next_ping = now + self.timeout / 2;
        s.state = State::Connecting;
    }

    /// Takes shard `i` down: fails what was in flight and schedules a reconnect.
    fn down(&mut self, i: usize, why: &str, now: Instant, registry: &Registry) {
        let backoff = self.shards[i].backoff;
        let wait = self.jitter(backoff);
        let max = self.backoff_max;
        let s = &mut self.shards[i];
        if !s.logged_down {
            log::warn!(
                "broker {}: down ({why}); retrying with backoff up to {max:?}",
                s.url
            );
            s.logged_down = true;
        } else {
            log::debug!("broker {}: still down ({why})", s.url);
        }
        s.commands.close(registry);
        s.subs.close(registry);
        for e in s.expect.drain(..) {
            if let Expect::Publish(id) = e {
                self.results.insert(id, None);
                self.failed += 1;
            }
        }
        s.state = State::Down {
            retry_at: now + wait,
        };
        s.backoff = (backoff * 2).min(max);
        s.resubscribing = 0;
        s.resubscribe_started = None;
        s.barrier = None;
    }

    /// Sends the turn's channel changes and publications.
    pub fn relay(&mut self, hub: &mut Hub, now: Instant, registry: &Registry) {
        let n = self.shards.len();
        if n == 0 {
            return;
        }
        let changes = hub.take_changes();
        let mut batch: Vec<Vec<(bool, String)>> = vec![Vec::new(); n];
        for (channel, on) in changes {
            batch[redis::shard_of(&channel, n)].push((on, format!("{}{channel}", self.prefix)));
        }
        for (i, cmds) in batch.into_iter().enumerate() {
            if !matches!(self.shards[i].state, State::Up | State::Subscribing) {
                continue; // The reconnect subscribes what is wanted then.
            }
            // Consecutive changes of the same kind go in one command.
            let mut run: Vec<&[u8]> = Vec::new();
            let mut kind = None;
            for (on, name) in &cmds {
                if kind != Some(*on) || run.len() > CHANNELS_PER_COMMAND {
                    if let Some(k) = kind {
                        send_batch(&mut self.shards[i].subs, k, &run);
                    }
                    run.clear();
                    kind = Some(*on);
                }
                run.push(name.as_bytes());
            }
            if let Some(k) = kind {
                send_batch(&mut self.shards[i].subs, k, &run);
            }
        }
        for Outbound {
            id,
            channel,
            text,
            payload,
        } in hub.take_outbox()
        {
            let i = redis::shard_of(&channel, n);
            let s = &mut self.shards[i];
            if s.state != State::Up {
                self.results.insert(id, None);
                self.failed += 1;
                continue;
            }
            let name = format!("{}{channel}", self.prefix);
            let payload = redis::encode_payload(text, &payload);
            s.commands.send(&[b"PUBLISH", name.as_bytes(), &payload]);
            s.expect.push_back(Expect::Publish(id));
        }
        for i in 0..n {
            self.write(i, now, registry);
        }
    }

    fn write(&mut self, i: usize, now: Instant, registry: &Registry) {
        let s = &mut self.shards[i];
        if let Err(e) = s.commands.write().and_then(|()| s.subs.write()) {
            self.down(i, &format!("write: {e}"), now, registry);
        }
    }

    /// Readiness on a broker socket: reads replies and publications.
    pub fn serve(&mut self, token: Token, hub: &mut Hub, now: Instant, registry: &Registry) {
        let i = (token.0 - BROKER_START) / 2;
        if i >= self.shards.len() {
            return;
        }
        let subscribe_link = (token.0 - BROKER_START) % 2 == 1;
        if matches!(self.shards[i].state, State::Down { .. }) {
            return; // Readiness for a socket already closed.
        }
        let s = &mut self.shards[i];
        let link = if subscribe_link {
            &mut s.subs
        } else {
            &mut s.commands
        };
        let io = link.write().and_then(|()| link.read());
        // What arrived before an EOF or an error is handled first: a publication Redis sent
        // just before it went away is still delivered.
        let result = if subscribe_link {
            self.read_subscriptions(i, hub, now)
        } else {
            self.read_replies(i, now)
        };
        if let Err(e) = io {
            return self.down(i, &format!("{e}"), now, registry);
        }
        if let Err(why) = result {
            return self.down(i, &why, now, registry);
        }
        let s = &mut self.shards[i];
        if s.state == State::Connecting && s.commands.ready && s.subs.ready {
            self.up(i, hub, now);
            self.write(i, now, registry);
        }
    }

    /// Both links answered: subscribe every channel with local subscribers again.
    fn up(&mut self, i: usize, hub: &Hub, now: Instant) {
        let n = self.shards.len();
        let prefix = self.prefix.clone();
        let s = &mut self.shards[i];
        let names: Vec<String> = hub
            .channel_names()
            .filter(|c| redis::shard_of(c, n) == i)
            .map(|c| format!("{prefix}{c}"))
            .collect();
        for chunk in names.chunks(CHANNELS_PER_COMMAND) {
            let run: Vec<&[u8]> = chunk.iter().map(|c| c.as_bytes()).collect();
            send_batch(&mut s.subs, true, &run);
        }
        s.resubscribing = names.len();
        s.resubscribe_started = Some(now);
        if s.logged_down || s.reconnects > 0 {
            log::info!(
                "broker {}: connected; subscribing {} channels",
                s.url,
                names.len()
            );
        }
        s.state = if names.is_empty() {
            s.resubscribe_started = None;
            State::Up
        } else {
            State::Subscribing
        };
        s.backoff = BACKOFF_START;
        s.logged_down = false;
        s.reconnects += 1;
    }

    fn read_replies(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let s = &mut self.shards[i];
        let mut used = 0;
        while let Some((frame, n)) = redis::next_frame(&s.commands.input[used..])? {
            used += n;
            let reply = redis::reply(frame);
            match (s.expect.pop_front(), reply) {
                (Some(Expect::Publish(id)), Reply::Integer(k)) => {
                    log::debug!("broker {}: publication {id} reached {k} instances", s.url);
                    self.results.insert(id, Some(u32::try_from(k).unwrap_or(0)));
                }
                (Some(Expect::Publish(id)), other) => {
                    log::warn!("broker {}: PUBLISH failed: {other:?}", s.url);
                    self.results.insert(id, None);
                    self.failed += 1;
                }
                (Some(Expect::Ping), Reply::Pong) => s.commands.pong(now),
                (_, other) => return Err(format!("unexpected reply {other:?}")),
            }
        }
        s.commands.input.drain(..used);
        Ok(())
    }

    fn read_subscriptions(&mut self, i: usize, hub: &mut Hub, now: Instant) -> Result<(), String> {
        let s = &mut self.shards[i];
        let mut used = 0;
        while let Some((frame, n)) = redis::next_frame(&s.subs.input[used..])? {
            used += n;
            match redis::sub_event(frame) {
                SubEvent::Message { channel, payload } => {
                    log::debug!(
                        "broker {}: message on {}",
                        s.url,
                        String::from_utf8_lossy(&channel)
                    );
                    let Some(name) = channel
                        .strip_prefix(self.prefix.as_bytes())
                        .and_then(|c| std::str::from_utf8(c).ok())
                    else {
                        continue;
                    };
                    let (text, bytes) = redis::decode_payload(&payload);
                    let message = match std::str::from_utf8(bytes) {
                        Ok(t) if text => Message::Text(t),
                        _ => Message::Binary(bytes),
                    };
                    hub.publish_local(name, message);
                }
                SubEvent::Confirmed => {
                    log::debug!("broker {}: subscription change confirmed", s.url);
                    if s.resubscribing > 0 {
                        s.resubscribing -= 1;
                        if s.resubscribing == 0 {
                            s.state = State::Up;
                            if let Some(t) = s.resubscribe_started.take() {
                                s.resubscribe_seconds = now.duration_since(t).as_secs_f64();
                                log::info!(
                                    "broker {}: subscriptions restored in {:.1} ms",
                                    s.url,
                                    s.resubscribe_seconds * 1000.0
                                );
                            }
                        }
                    }
                }
                SubEvent::Pong => {
                    s.subs.pong(now);
                    if let Some(left) = &mut s.barrier {
                        *left = left.saturating_sub(1);
                    }
                }
                SubEvent::Error(e) => return Err(format!("error reply: {e}")),
                SubEvent::Other => {}
            }
        }
        s.subs.input.drain(..used);
        Ok(())
    }

    /// Starts the drain's barrier: once every publication in flight is answered, a PING on
    /// each subscribe link; its answer comes after every publication Redis accepted before it,
    /// so once it is back those are all delivered here.
    pub fn begin_barrier(&mut self, now: Instant) -> Instant {
        for s in &mut self.shards {
            if s.state == State::Up {
                s.barrier = Some(u32::MAX); // Armed; the PING goes once in-flight work is answered.
            }
        }
        now + self.timeout
    }

    /// Whether every up shard passed the barrier (sending its PING when due).
    pub fn barrier_passed(&mut self, now: Instant, registry: &Registry) -> bool {
        let mut passed = true;
        for i in 0..self.shards.len() {
            let s = &mut self.shards[i];
            match s.barrier {
                Some(u32::MAX) if s.expect.iter().all(|e| *e == Expect::Ping) => {
                    s.subs.ping(now);
                    s.barrier = Some(s.subs.pings);
                    self.write(i, now, registry);
                    passed = false;
                }
                Some(0) | None => {}
                Some(_) => passed = false,
            }
        }
        passed
    }
}

impl Shard {
    /// A PING on the command link, whose reply is matched in order like the others.
    fn ping_commands(&mut self, now: Instant) {
        self.commands.ping(now);
        self.expect.push_back(Expect::Ping);
    }
}

fn send_batch(link: &mut Link, subscribe: bool, channels: &[&[u8]]) {
    if channels.is_empty() {
        return;
    }
    let verb: &[u8] = if subscribe {
        b"SUBSCRIBE"
    } else {
        b"UNSUBSCRIBE"
    };
    let mut args: Vec<&[u8]> = Vec::with_capacity(channels.len() + 1);
    args.push(verb);
    args.extend_from_slice(channels);
    link.send(&args);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_sit_below_the_api_ones() {
        assert!(owns(Token(BROKER_START)));
        assert!(owns(Token(BROKER_START + 2 * MAX_SHARDS - 1)));
        assert!(!owns(Token(BROKER_START + 2 * MAX_SHARDS)));
        assert!(!super::super::api::owns(Token(
            BROKER_START + 2 * MAX_SHARDS - 1
        )));
    }
}
