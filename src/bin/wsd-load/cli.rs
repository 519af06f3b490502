//! The command line of wsd-load: modes, options, their defaults and how they are parsed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::payload::HEADER_LEN;

/// What the run does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Send messages and verify their echoes; measure rate and latency.
    Echo,
    /// Open connections at a bounded rate and hold them.
    Idle,
    /// Open connections and wait for the server's Close frames (a drain).
    Drain,
    /// Subscribe over channels, publish, and verify every delivery.
    Pubsub,
}

/// How pubsub publications reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publish {
    /// As data messages of WebSocket clients connected to the channel's path.
    Ws,
    /// As `POST /publish/{channel}` on keep-alive HTTP connections.
    Api,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Drain => "drain",
            Mode::Pubsub => "pubsub",
        }
    }
}

/// Default time a connect, a handshake, an echo or a close may take before it counts as failed.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default length of an echo or pubsub run when neither `--duration` nor `--messages` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default payload size of an echo run.
const DEFAULT_SIZE: usize = 16;
/// Default payload size of a pubsub run (its header alone takes `HEADER_LEN` bytes).
const DEFAULT_PUBSUB_SIZE: usize = 100;
/// Default publications in flight per channel (published, not yet delivered to every
/// subscriber).
const DEFAULT_WINDOW: usize = 16;
/// Default channel name prefix: channels are `ch0`, `ch1`, …
const DEFAULT_CHANNEL_PREFIX: &str = "ch";
/// Longest channel name wsd accepts.
const MAX_CHANNEL_NAME: usize = 200;
/// Default publish API address (wsd's `api_listen`).
const DEFAULT_API: &str = "http://127.0.0.1:9002";

/// Everything a run needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Server address (resolved from `--url`).
    pub addr: SocketAddr,
    /// `Host` header value and request path, from `--url`.
    pub host: String,
    pub path: String,
    pub connections: usize,
    pub threads: usize,
    /// Local addresses to bind before connecting, used round-robin (empty: the kernel's choice).
    pub src: Vec<IpAddr>,
    /// New connections per second over all threads (None: as fast as the server accepts).
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub json: bool,
    pub quiet: bool,
    /// echo: payload bytes per message.
    pub size: usize,
    pub binary: bool,
    /// echo: messages in flight per connection.
    pub pipeline: usize,
    /// echo: stop after this long (if no message count is given).
    pub duration: Option<Duration>,
    /// echo: total messages over all connections.
    pub messages: Option<u64>,
    /// idle: how long to hold the connections (None: until SIGINT/SIGTERM).
    pub hold: Option<Duration>,
    /// drain: share of connections that never answer the server's Close.
    pub no_answer_fraction: f64,
    /// Server processes (instances, a broker) whose CPU time (from /proc), summed, is reported
    /// per message; each is also reported on its own in the JSON.
    pub server_pids: Vec<u32>,
    /// echo: each connection sends one message every interval instead of flat out.
    pub interval: Option<Duration>,
    /// Offer permessage-deflate and compress messages when the server accepts it.
    pub deflate: bool,
    /// idle: messages (of `size` bytes) each connection echoes once open, before it idles.
    pub idle_messages: u64,
    /// wss://: the TLS client configuration, and the name the certificate must carry.
    pub tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Spread the connections over this many channel paths, `<url path>/<prefix><k>` for
    /// connection `i` with `k = i % channels` (None: every connection uses the URL's path).
    pub channels: Option<usize>,
    pub channel_prefix: String,
    /// pubsub: how publications are sent.
    pub publish: Publish,
    /// pubsub: publishers — per channel with `--publish ws`, in all with `--publish api`.
    pub publishers: usize,
    /// pubsub with `--publish api`: the API's address, `Host` header and bearer token.
    pub api_addr: SocketAddr,
    pub api_host: String,
    pub api_token: Option<String>,
    /// pubsub: publications per second over all publishers (None: as fast as the window allows).
    pub pub_rate: Option<f64>,
    /// pubsub: publications in flight per channel, i.e. sent but not yet delivered to every
    /// subscriber.
    pub window: usize,
}

pub enum Command {
    Run(Box<Options>),
    Help,
}

pub const USAGE: &str = "\
wsd-load: a WebSocket load generator (echo, idle, drain and pubsub modes)

usage: wsd-load MODE --url ws[s]://HOST:PORT/PATH [OPTIONS]

modes:
  echo     N connections send messages of S bytes and verify every echo byte for byte;
           reports messages/s, bytes/s and latency percentiles
  idle     open N connections at a bounded rate and hold them; prints `established N` on
           stderr once all are open; reports connect rate and latency
  drain    open N connections and wait for the server's Close frames (send the server
           SIGTERM); reports close codes, clean closes, resets, timeouts
  pubsub   N subscribers over C channels (paths /ch0 … /ch{C-1}); publishers send stamped
           payloads through WebSocket connections or wsd's HTTP publish API; every delivery
           is checked (none lost, duplicated or out of order per channel and publisher) and
           timed from publish to delivery; reports publications/s, deliveries/s, latency

common options:
  --url URL                 server to connect to (ws:// or wss://)       [ws://127.0.0.1:9001/]
  --tls                     TLS even with a ws:// URL (as wss://)
  --ca FILE                 PEM CA certificates to trust over TLS        [/etc/ssl/certs/ca-certificates.crt]
  --insecure                accept any server certificate (a self-signed test one)
  -c, --connections N       connections                                  [1]
  --threads N               client threads, one mio loop each            [1]
  --src A[-B]               bind source addresses A..=B round-robin (IPv4), e.g.
                            127.0.0.2-127.0.0.200, so many connections do not run out of ports
  --rate R                  new connections per second                   [unbounded]
  --timeout T               limit for a connect, handshake, echo or close [10s]
  --server-pid PID[,PID…]   also report those processes' CPU time per message (from /proc,
                            summed over the list, e.g. two instances and their Redis; the
                            option may repeat)
  --deflate                 offer permessage-deflate as browsers do; when accepted, messages
                            of 64 bytes or more are sent compressed (text templates compress)
  --channels C              spread the connections over C paths <url path>/<prefix><k>,
                            connection i on k = i % C (pubsub: its channels)  [pubsub: 1]
  --channel-prefix P        channel name prefix                           [ch]
  --json                    print the summary as JSON instead of a table
  -q, --quiet               no progress line on stderr
echo:
  -s, --size S              payload bytes (16, 1KiB, 64KiB, …)           [16]
  --binary                  binary messages (default: text)
  -p, --pipeline D          messages in flight per connection            [1]
  -d, --duration T          run for T (10s, 500ms, 2m)                   [10s]
  -m, --messages M          send M messages in total instead
  --interval T              each connection sends one message every T (the first ones spread
                            over T) instead of flat out; a late echo delays the next send
                            (needs -p 1)

stalls (echo and pubsub): each connection's longest gap between two verified echoes or
in-order deliveries is reported as percentiles over the connections (with --interval 50ms,
or a pubsub --pub-rate of 20 on one channel, a server without pauses shows ~50 ms plus
queueing); SIGUSR1 starts a new period, reported on its own (period 0: before the first),
so a script can mark each server reload; connections that dropped are counted as lost.
idle:
  --hold T                  hold the connections for T                   [until SIGINT/SIGTERM]
  --messages-first K        each connection echoes K messages of -s bytes once open, then
                            idles (what a connection keeps after traffic, e.g. --deflate
                            windows)                                     [0]
drain:
  --no-answer-fraction F    share of connections that never answer the server's Close [0]
  --hold T                  longest wait for the first Close              [until SIGINT/SIGTERM]
pubsub (-c counts subscribers, spread over the threads; the publishers, whose connections
come on top, all run on the first thread):
  --publish ws|api          ws: publishers are WebSocket clients of the channel's path,
                            whose data messages the server publishes to that channel (wsd
                            --client-publish true); each is also a subscriber and receives
                            its own publications, which are checked like any other delivery.
                            api: POST /publish/{channel} on keep-alive HTTP connections, one
                            request in flight each               [api with --publish-api, else ws]
  --publishers P            ws: P publisher connections per channel; api: P HTTP connections,
                            each publishing to every channel                   [1]
  --publish-api URL         the HTTP publish API                 [http://127.0.0.1:9002]
  --api-token T             send `Authorization: Bearer T` with each publish request
  --pub-rate R              R publications/s in all, channels in turn; latency is then
                            measured from when each was due (less than 1 ms of lateness,
                            the client's own wake-up, excepted) [as fast as the window allows]
  --window W                publications in flight per channel: sent but not yet delivered
                            to every subscriber (in all, W x subscribers deliveries), so the
                            server is measured delivering, not buffering      [16]
  -s, --size S              payload bytes, at least 52 (the header: publisher, channel,
                            sequence number, send time)                       [100]
  --binary                  binary messages (default: text)
  -d, --duration T          publish for T                                     [10s]
  -m, --messages M          send M publications in total instead

exit status: 0 when every check passed, 1 when any failed (a wrong or missing echo, a lost,
duplicated or reordered delivery, a failed connect or publish, an unclean close), 2 for a bad
command line.
";

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mode = match args.next().as_deref() {
        Some("echo") => Mode::Echo,
        Some("idle") => Mode::Idle,
        Some("drain") => Mode::Drain,
        Some("pubsub") => Mode::Pubsub,
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some(other) => {
            return Err(format!(
                "unknown mode {other:?} (echo, idle, drain or pubsub)"
            ))
        }
        None => return Err("a mode is required (echo, idle, drain or pubsub)".into()),
    };
    let mut url = "ws://127.0.0.1:9001/".to_string();
    let mut api_url: Option<String> = None;
    let mut publish: Option<Publish> = None;
    let mut size: Option<usize> = None;
    let mut o = Options {
        mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
        host: String::new(),
        path: String::new(),
        connections: 1,
        threads: 1,
        src: Vec::new(),
        rate: None,
        timeout: DEFAULT_TIMEOUT,
        json: false,
        quiet: false,
        size: DEFAULT_SIZE,
        binary: false,
        deflate: false,
        idle_messages: 0,
        pipeline: 1,
        duration: None,
        messages: None,
        hold: None,
        no_answer_fraction: 0.0,
        server_pids: Vec::new(),
        interval: None,
        tls: None,
        channels: None,
        channel_prefix: DEFAULT_CHANNEL_PREFIX.into(),
        publish: Publish::Ws,
        publishers: 1,
        api_addr: SocketAddr::from(([127, 0, 0, 1], 9002)),
        api_host: String::new(),
        api_token: None,
        pub_rate: None,
        window: DEFAULT_WINDOW,
    };
    let mut tls = false;
    let mut insecure = false;
    let mut ca = std::path::PathBuf::from(crate::tls::SYSTEM_CA_BUNDLE);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = value()?,
            "--tls" => tls = true,
            "--insecure" => insecure = true,
            "--ca" => ca = value()?.into(),
            "-c" | "--connections" => o.connections = parse_count(&value()?)?,
            "--threads" => o.threads = parse_count(&value()?)?,
            "--src" => o.src = parse_src(&value()?)?,
            "--rate" => {
                let v = value()?;
                let r: f64 = v.parse().map_err(|_| format!("--rate: bad number {v:?}"))?;
                if !(r > 0.0 && r.is_finite()) {
                    return Err("--rate must be positive".into());
                }
                o.rate = Some(r);
            }
            "--timeout" => o.timeout = parse_duration(&value()?)?,
            "--server-pid" => {
                for pid in value()?.split(',') {
                    let p = pid.trim().parse();
                    o.server_pids
                        .push(p.map_err(|_| format!("--server-pid: {pid:?} is not a pid"))?);
                }
            }
            "--interval" => o.interval = Some(parse_duration(&value()?)?),
            "--json" => o.json = true,
            "--deflate" => o.deflate = true,
            "-q" | "--quiet" => o.quiet = true,
            "-s" | "--size" => size = Some(parse_size(&value()?)?),
            "--binary" => o.binary = true,
            "-p" | "--pipeline" => o.pipeline = parse_count(&value()?)?,
            "-d" | "--duration" => o.duration = Some(parse_duration(&value()?)?),
            "-m" | "--messages" => o.messages = Some(parse_count(&value()?)? as u64),
            "--hold" => o.hold = Some(parse_duration(&value()?)?),
            "--messages-first" => o.idle_messages = parse_count(&value()?)? as u64,
            "--no-answer-fraction" => {
                let v = value()?;
                let f: f64 = v
                    .parse()
                    .map_err(|_| format!("--no-answer-fraction: bad number {v:?}"))?;
                if !(0.0..=1.0).contains(&f) {
                    return Err("--no-answer-fraction must be within 0..=1".into());
                }
                o.no_answer_fraction = f;
            }
            "--channels" => o.channels = Some(parse_count(&value()?)?),
            "--channel-prefix" => o.channel_prefix = value()?,
            "--publish" => {
                publish = Some(match value()?.as_str() {
                    "ws" => Publish::Ws,
                    "api" => Publish::Api,
                    other => return Err(format!("--publish {other:?}: ws or api")),
                })
            }
            "--publishers" => o.publishers = parse_count(&value()?)?,
            "--publish-api" => api_url = Some(value()?),
            "--api-token" => o.api_token = Some(value()?),
            "--pub-rate" => {
                let v = value()?;
                let r: f64 = v
                    .parse()
                    .map_err(|_| format!("--pub-rate: bad number {v:?}"))?;
                if !(r > 0.0 && r.is_finite()) {
                    return Err("--pub-rate must be positive".into());
                }
                o.pub_rate = Some(r);
            }
            "--window" => o.window = parse_count(&value()?)?,
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    let (addr, host, path, wss) = parse_url(&url)?;
    if tls || wss {
        let config = crate::tls::client_config(&ca, insecure)?;
        o.tls = Some((config, crate::tls::server_name(&host)?));
    }
    o.addr = addr;
    o.host = host;
    o.path = path;
    if o.threads > o.connections {
        o.threads = o.connections;
    }
    if o.mode == Mode::Pubsub {
        pubsub_options(&mut o, publish, api_url, size)?;
    } else if let Some(s) = size {
        o.size = s;
    }
    if let Some(c) = o.channels {
        check_channel_name(&format!("{}{}", o.channel_prefix, c - 1))?;
    }
    if matches!(o.mode, Mode::Echo | Mode::Pubsub) && o.messages.is_none() && o.duration.is_none() {
        o.duration = Some(DEFAULT_DURATION);
    }
    if o.messages.is_some() && o.duration.is_some() {
        return Err("give --messages or --duration, not both".into());
    }
    if let Some(i) = o.interval {
        if o.mode != Mode::Echo {
            return Err("--interval goes with echo (pubsub: --pub-rate)".into());
        }
        if o.pipeline != 1 || i.is_zero() {
            return Err("--interval needs -p 1 and a positive interval".into());
        }
    }
    if o.src.iter().any(|ip| ip.is_ipv4() != addr.is_ipv4()) {
        return Err("--src and the server address must be the same IP version".into());
    }
    Ok(Command::Run(Box::new(o)))
}

/// The pubsub defaults and checks, once the flags are read.
fn pubsub_options(
    o: &mut Options,
    publish: Option<Publish>,
    api_url: Option<String>,
    size: Option<usize>,
) -> Result<(), String> {
    o.channels = Some(o.channels.unwrap_or(1));
    o.size = size.unwrap_or(DEFAULT_PUBSUB_SIZE);
    if o.size < HEADER_LEN {
        return Err(format!(
            "pubsub payloads carry a {HEADER_LEN}-byte header: -s must be at least {HEADER_LEN}"
        ));
    }
    o.publish = publish.unwrap_or(if api_url.is_some() {
        Publish::Api
    } else {
        Publish::Ws
    });
    if o.publish == Publish::Api {
        let (addr, host) = parse_http_url(api_url.as_deref().unwrap_or(DEFAULT_API))?;
        o.api_addr = addr;
        o.api_host = host;
    } else if api_url.is_some() || o.api_token.is_some() {
        return Err("--publish-api and --api-token go with --publish api".into());
    }
    if let Some(t) = &o.api_token {
        // A header value: visible ASCII only, so it cannot end the header early.
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("--api-token: printable ASCII without spaces".into());
        }
    }
    Ok(())
}

/// A channel name wsd accepts: 1 to 200 bytes of `A-Za-z0-9_-.:/`.
fn check_channel_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "channel {name:?}: names are 1 to {MAX_CHANNEL_NAME} bytes of A-Za-z0-9_-.:/"
        ))
    }
}

impl Options {
    /// The channel name of channel `k` (`ch7`).
    pub fn channel_name(&self, k: u32) -> String {
        format!("{}{k}", self.channel_prefix)
    }

    /// The request path of a connection on channel `k`: the URL's path, then the channel.
    pub fn channel_path(&self, k: u32) -> String {
        let base = self.path.strip_suffix('/').unwrap_or(&self.path);
        format!("{base}/{}", self.channel_name(k))
    }

    /// The channel of subscriber `global` (0 without `--channels`).
    pub fn channel_of(&self, global: usize) -> u32 {
        self.channels.map_or(0, |c| (global % c) as u32)
    }

    /// pubsub: WebSocket publisher connections (on top of the `--connections` subscribers).
    pub fn ws_publishers(&self) -> usize {
        if self.mode == Mode::Pubsub && self.publish == Publish::Ws {
            self.publishers * self.channels.unwrap_or(1)
        } else {
            0
        }
    }

    /// pubsub: publisher slots per channel (each subscriber expects a sequence from each).
    pub fn slots(&self) -> usize {
        self.publishers
    }
}

/// `http://host:port` → the address to connect to and the `Host` header.
fn parse_http_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--publish-api {url:?}: only http:// URLs are supported"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(format!("--publish-api {url:?}: give only http://HOST:PORT"));
    }
    let (addr, host, _, _) = parse_url(&format!("ws://{authority}/"))
        .map_err(|e| e.replace("--url", "--publish-api"))?;
    Ok((addr, host))
}

/// `ws://host:port/path` → the address to connect to, the `Host` header, the path, and whether
/// the URL is wss://.
fn parse_url(url: &str) -> Result<(SocketAddr, String, String, bool), String> {
    let (rest, wss) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => {
            return Err(format!(
                "--url {url:?}: only ws:// and wss:// URLs are supported"
            ))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if wss { 443 } else { 80 })
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--url {url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url {url:?}: no address"))?;
    Ok((addr, authority.to_string(), path.to_string(), wss))
}

/// `127.0.0.2-127.0.0.200` (inclusive) or a single address.
fn parse_src(v: &str) -> Result<Vec<IpAddr>, String> {
    let bad = || format!("--src {v:?}: expected A or A-B with IPv4 addresses");
    let (a, b) = v.split_once('-').unwrap_or((v, v));
    let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || b - a > 1 << 20 {
        return Err(bad());
    }
    Ok((a..=b).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))).collect())
}

fn parse_count(v: &str) -> Result<usize, String> {
    let n: usize = v
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{v:?} is not a count"))?;
    if n == 0 {
        return Err("counts must be at least 1".into());
    }
    Ok(n)
}

/// Bytes, with an optional KiB/MiB suffix (`k`/`m` are read the same way).
fn parse_size(v: &str) -> Result<usize, String> {
    let lower = v.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("{v:?} is not a size"))?;
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => return Err(format!("{v:?}: unknown unit (B, KiB, MiB)")),
    };
    Ok(n * mult)
}

/// `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let (num, unit) = match v.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{v:?}: unknown unit (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{v:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse_args(args.iter().map(|s| s.to_string())) {
            Ok(Command::Run(o)) => *o,
            Ok(Command::Help) => panic!("help"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn echo_defaults_and_flags() {
        let o = run(&[
            "echo",
            "--url",
            "ws://127.0.0.1:9/chat",
            "-c",
            "100",
            "-s",
            "1KiB",
        ]);
        assert_eq!(o.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!((o.host.as_str(), o.path.as_str()), ("127.0.0.1:9", "/chat"));
        assert_eq!((o.connections, o.size, o.pipeline), (100, 1024, 1));
        assert_eq!(o.duration, Some(DEFAULT_DURATION));
        let o = run(&["echo", "-m", "1000", "--binary", "-p", "8"]);
        assert_eq!(
            (o.messages, o.duration, o.binary, o.pipeline),
            (Some(1000), None, true, 8)
        );
    }

    #[test]
    fn src_ranges() {
        let o = run(&["idle", "--src", "127.0.0.2-127.0.0.4"]);
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(o.src, want);
        assert!(parse_src("127.0.0.9-127.0.0.2").is_err());
        assert_eq!(parse_src("127.0.0.7").unwrap().len(), 1);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn pubsub_defaults_and_flags() {
        let o = run(&["pubsub", "-c", "10000", "--src", "127.0.0.2-127.0.0.50"]);
        assert_eq!((o.channels, o.size, o.publish), (Some(1), 100, Publish::Ws));
        assert_eq!(
            (o.publishers, o.window, o.pub_rate),
            (1, DEFAULT_WINDOW, None)
        );
        assert_eq!(o.duration, Some(DEFAULT_DURATION));
        assert_eq!(
            (o.ws_publishers(), o.channel_path(0)),
            (1, "/ch0".to_string())
        );
        let o = run(&[
            "pubsub",
            "--url",
            "ws://127.0.0.1:9/feeds/",
            "--channels",
            "100",
            "--channel-prefix",
            "room-",
            "--publishers",
            "2",
            "-s",
            "1KiB",
            "--pub-rate",
            "20",
            "-m",
            "500",
        ]);
        assert_eq!(o.channel_path(42), "/feeds/room-42");
        assert_eq!((o.channel_of(142), o.ws_publishers()), (42, 200));
        assert_eq!(
            (o.size, o.pub_rate, o.messages),
            (1024, Some(20.0), Some(500))
        );
        let o = run(&[
            "pubsub",
            "--publish-api",
            "http://127.0.0.1:9002",
            "--publishers",
            "8",
            "--api-token",
            "t0k",
        ]);
        assert_eq!((o.publish, o.ws_publishers()), (Publish::Api, 0));
        assert_eq!(o.api_addr, "127.0.0.1:9002".parse().unwrap());
        assert_eq!(
            (o.api_host.as_str(), o.api_token.as_deref()),
            ("127.0.0.1:9002", Some("t0k"))
        );
        let o = run(&["pubsub", "--publish", "api"]);
        assert_eq!(o.api_host, "127.0.0.1:9002");
        // Other modes may spread over channel paths too (idle RSS of subscribed connections).
        let o = run(&["idle", "--channels", "3"]);
        assert_eq!((o.channel_of(5), o.size), (2, DEFAULT_SIZE));
    }

    #[test]
    fn pubsub_bad_lines_are_errors() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string())).err();
        assert!(parse(&["pubsub", "-s", "51"]).is_some());
        assert!(parse(&["pubsub", "--publish", "smoke"]).is_some());
        assert!(parse(&["pubsub", "--api-token", "x"]).is_some());
        assert!(parse(&["pubsub", "--publish", "api", "--api-token", "a b"]).is_some());
        assert!(parse(&["pubsub", "--publish-api", "https://x:1"]).is_some());
        assert!(parse(&["pubsub", "--publish-api", "http://127.0.0.1:1/publish"]).is_some());
        assert!(parse(&["pubsub", "--channel-prefix", "a b"]).is_some());
        assert!(parse(&["pubsub", "--pub-rate", "0"]).is_some());
        let long = "x".repeat(MAX_CHANNEL_NAME);
        assert!(parse(&["pubsub", "--channel-prefix", &long]).is_some());
        assert!(check_channel_name("chat/room-1:a.b_c").is_ok());
    }

    #[test]
    fn intervals_and_server_pids() {
        let o = run(&[
            "echo",
            "--interval",
            "50ms",
            "--server-pid",
            "10,11",
            "--server-pid",
            "12",
        ]);
        assert_eq!(o.interval, Some(Duration::from_millis(50)));
        assert_eq!(o.server_pids, vec![10, 11, 12]);
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string())).err();
        assert!(parse(&["echo", "--interval", "50ms", "-p", "4"]).is_some());
        assert!(parse(&["echo", "--interval", "0ms"]).is_some());
        assert!(parse(&["pubsub", "--interval", "50ms"]).is_some());
        assert!(parse(&["echo", "--server-pid", "1,x"]).is_some());
    }

    #[test]
    fn bad_lines_are_errors() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string())).err();
        assert!(parse(&["flood"]).is_some());
        assert!(parse(&["echo", "--url", "http://x"]).is_some());
        assert!(parse(&["echo", "-m", "5", "-d", "1s"]).is_some());
        assert!(parse(&["drain", "--no-answer-fraction", "2"]).is_some());
        assert!(parse(&["echo", "--bogus"]).is_some());
    }
}
