//! The command line of wsd-load: modes, options, their defaults and how they are parsed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// What the run does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Send messages and verify their echoes; measure rate and latency.
    Echo,
    /// Open connections at a bounded rate and hold them.
    Idle,
    /// Open connections and wait for the server's Close frames (a drain).
    Drain,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Drain => "drain",
        }
    }
}

/// Default time a connect, a handshake, an echo or a close may take before it counts as failed.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default length of an echo run when neither `--duration` nor `--messages` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

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
    /// A server process whose CPU time (from /proc) is reported per message.
    pub server_pid: Option<u32>,
    /// wss://: the TLS client configuration, and the name the certificate must carry.
    pub tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

pub enum Command {
    Run(Box<Options>),
    Help,
}

pub const USAGE: &str = "\
wsd-load: a WebSocket load generator (echo, idle and drain modes)

usage: wsd-load MODE --url ws[s]://HOST:PORT/PATH [OPTIONS]

modes:
  echo     N connections send messages of S bytes and verify every echo byte for byte;
           reports messages/s, bytes/s and latency percentiles
  idle     open N connections at a bounded rate and hold them; prints `established N` on
           stderr once all are open; reports connect rate and latency
  drain    open N connections and wait for the server's Close frames (send the server
           SIGTERM); reports close codes, clean closes, resets, timeouts

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
  --server-pid PID          also report that process's CPU time per message (from /proc)
  --json                    print the summary as JSON instead of a table
  -q, --quiet               no progress line on stderr
echo:
  -s, --size S              payload bytes (16, 1KiB, 64KiB, …)           [16]
  --binary                  binary messages (default: text)
  -p, --pipeline D          messages in flight per connection            [1]
  -d, --duration T          run for T (10s, 500ms, 2m)                   [10s]
  -m, --messages M          send M messages in total instead
idle:
  --hold T                  hold the connections for T                   [until SIGINT/SIGTERM]
drain:
  --no-answer-fraction F    share of connections that never answer the server's Close [0]
  --hold T                  longest wait for the first Close              [until SIGINT/SIGTERM]

exit status: 0 when every check passed, 1 when any failed (a wrong or missing echo, a failed
connect, an unclean close), 2 for a bad command line.
";

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mode = match args.next().as_deref() {
        Some("echo") => Mode::Echo,
        Some("idle") => Mode::Idle,
        Some("drain") => Mode::Drain,
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some(other) => return Err(format!("unknown mode {other:?} (echo, idle or drain)")),
        None => return Err("a mode is required (echo, idle or drain)".into()),
    };
    let mut url = "ws://127.0.0.1:9001/".to_string();
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
        size: 16,
        binary: false,
        pipeline: 1,
        duration: None,
        messages: None,
        hold: None,
        no_answer_fraction: 0.0,
        server_pid: None,
        tls: None,
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
                let v = value()?;
                o.server_pid = Some(v.parse().map_err(|_| format!("--server-pid: {v:?}"))?);
            }
            "--json" => o.json = true,
            "-q" | "--quiet" => o.quiet = true,
            "-s" | "--size" => o.size = parse_size(&value()?)?,
            "--binary" => o.binary = true,
            "-p" | "--pipeline" => o.pipeline = parse_count(&value()?)?,
            "-d" | "--duration" => o.duration = Some(parse_duration(&value()?)?),
            "-m" | "--messages" => o.messages = Some(parse_count(&value()?)? as u64),
            "--hold" => o.hold = Some(parse_duration(&value()?)?),
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
    if o.mode == Mode::Echo && o.messages.is_none() && o.duration.is_none() {
        o.duration = Some(DEFAULT_DURATION);
    }
    if o.messages.is_some() && o.duration.is_some() {
        return Err("give --messages or --duration, not both".into());
    }
    if o.src.iter().any(|ip| ip.is_ipv4() != addr.is_ipv4()) {
        return Err("--src and the server address must be the same IP version".into());
    }
    Ok(Command::Run(Box::new(o)))
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
    fn bad_lines_are_errors() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string())).err();
        assert!(parse(&["flood"]).is_some());
        assert!(parse(&["echo", "--url", "http://x"]).is_some());
        assert!(parse(&["echo", "-m", "5", "-d", "1s"]).is_some());
        assert!(parse(&["drain", "--no-answer-fraction", "2"]).is_some());
        assert!(parse(&["echo", "--bogus"]).is_some());
    }
}
