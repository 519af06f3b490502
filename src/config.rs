//! Every setting of wsd: its default, its documentation, how it is parsed and validated.
//!
//! One table, [`SETTINGS`], drives the defaults, `--help` and the command line, so they cannot
//! disagree. Command-line flags are the setting names in kebab case (`--max-connections`).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The running configuration. `Config::default()` holds the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Address and port the WebSocket listener binds.
    pub listen: SocketAddr,
    /// Most connections open at once (handshakes included); more are refused with 503.
    pub max_connections: usize,
    /// Largest message accepted, in bytes, summed over fragments; larger ones close with 1009.
    pub max_message_size: u64,
    /// Largest single frame payload accepted, in bytes; larger ones close with 1009.
    pub max_frame_size: u64,
    /// Largest HTTP request head of a handshake, in bytes; larger ones get 431.
    pub max_handshake_size: usize,
    /// Time a client has to complete its handshake before it is dropped.
    pub handshake_timeout: Duration,
    /// Time a client has to answer our Close before the connection is dropped.
    pub close_timeout: Duration,
    /// Reason text of the Close 1001 sent to every client on shutdown.
    pub close_reason: String,
    /// Idle time after which wsd sends a Ping (zero: never).
    pub ping_interval: Duration,
    /// Time a pinged connection has to send anything before it is dropped.
    pub pong_timeout: Duration,
    /// Queued output above which wsd stops reading a connection; it resumes below half of it.
    pub max_output_buffer: usize,
    /// Time a connection may stay over `max_output_buffer` before it is closed with 1008.
    pub slow_consumer_timeout: Duration,
    /// Most connections from one IP address (zero: no limit); more are answered with 429.
    pub max_connections_per_ip: usize,
    /// Origins allowed to connect (empty: any); others are answered with 403.
    pub allowed_origins: Vec<String>,
}

/// One setting: its name, default, one-line doc, and how to set it from text.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

impl Setting {
    /// The command-line flag for this setting.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

/// Every setting, in the order they are documented.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "listen",
        default: "127.0.0.1:9001",
        doc: "address and port to accept WebSocket connections on",
        apply: |c, v| {
            c.listen = v
                .parse()
                .map_err(|_| format!("{v:?} is not an address like 127.0.0.1:9001"))?;
            Ok(())
        },
    },
    Setting {
        name: "max_connections",
        default: "10000",
        doc: "most connections open at once; more are answered with HTTP 503",
        apply: |c, v| {
            c.max_connections = parse_count(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_message_size",
        default: "16MiB",
        doc: "largest message accepted (bytes, or with KiB/MiB/GiB); larger ones close with 1009",
        apply: |c, v| {
            c.max_message_size = parse_size(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_frame_size",
        default: "16MiB",
        doc: "largest frame payload accepted; larger frames close with 1009",
        apply: |c, v| {
            c.max_frame_size = parse_size(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_handshake_size",
        default: "8KiB",
        doc: "largest HTTP request head of a handshake; larger ones get HTTP 431",
        apply: |c, v| {
            c.max_handshake_size =
                usize::try_from(parse_size(v)?).map_err(|_| format!("{v:?} is too large"))?;
            Ok(())
        },
    },
    Setting {
        name: "handshake_timeout",
        default: "5s",
        doc: "time a client has to complete its handshake before it is dropped",
        apply: |c, v| {
            c.handshake_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "close_timeout",
        default: "5s",
        doc: "time a client has to answer a Close before the connection is dropped",
        apply: |c, v| {
            c.close_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "close_reason",
        default: "server shutting down",
        doc: "reason text of the Close 1001 sent to every client when wsd drains",
        apply: |c, v| {
            if v.len() > crate::protocol::close::MAX_REASON_LEN {
                return Err(format!(
                    "is {} bytes; a Close reason holds at most {}",
                    v.len(),
                    crate::protocol::close::MAX_REASON_LEN
                ));
            }
            c.close_reason = v.to_string();
            Ok(())
        },
    },
    Setting {
        name: "ping_interval",
        default: "30s",
        doc: "idle time after which wsd sends a Ping; 0 disables pings",
        apply: |c, v| {
            c.ping_interval = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "pong_timeout",
        default: "10s",
        doc: "time a pinged connection has to send anything (a Pong) before it is dropped",
        apply: |c, v| {
            c.pong_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_output_buffer",
        default: "1MiB",
        doc: "queued output above which wsd stops reading a connection (resumes below half)",
        apply: |c, v| {
            c.max_output_buffer =
                usize::try_from(parse_size(v)?).map_err(|_| format!("{v:?} is too large"))?;
            Ok(())
        },
    },
    Setting {
        name: "slow_consumer_timeout",
        default: "30s",
        doc: "time a connection may stay over max_output_buffer before it is closed with 1008",
        apply: |c, v| {
            c.slow_consumer_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_connections_per_ip",
        default: "0",
        doc: "most connections from one IP address, 0 for no limit; more get HTTP 429",
        apply: |c, v| {
            c.max_connections_per_ip = parse_count(v)?;
            Ok(())
        },
    },
    Setting {
        name: "allowed_origins",
        default: "",
        doc: "comma-separated Origin values allowed to connect, empty for any; others get 403",
        apply: |c, v| {
            c.allowed_origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect();
            Ok(())
        },
    },
];

/// A setting that could not be applied; names the setting and says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Config {
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            max_connections: 0,
            max_message_size: 0,
            max_frame_size: 0,
            max_handshake_size: 0,
            handshake_timeout: Duration::ZERO,
            close_timeout: Duration::ZERO,
            close_reason: String::new(),
            ping_interval: Duration::ZERO,
            pong_timeout: Duration::ZERO,
            max_output_buffer: 0,
            slow_consumer_timeout: Duration::ZERO,
            max_connections_per_ip: 0,
            allowed_origins: Vec::new(),
        };
        for s in SETTINGS {
            // The defaults are constants of this file; `tests::defaults_parse` proves them.
            let _ = (s.apply)(&mut config, s.default);
        }
        config
    }
}

impl Config {
    /// Sets one setting by name from its text form.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let setting = SETTINGS
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ConfigError {
                key: name.to_string(),
                message: "unknown setting".to_string(),
            })?;
        (setting.apply)(self, value).map_err(|message| ConfigError {
            key: name.to_string(),
            message,
        })
    }

    /// Checks rules that span settings; called once every source has been applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError {
            key: key.to_string(),
            message: message.to_string(),
        };
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        if self.max_message_size == 0 {
            return Err(bad("max_message_size", "must be at least 1 byte"));
        }
        if self.max_frame_size == 0 {
            return Err(bad("max_frame_size", "must be at least 1 byte"));
        }
        if self.max_handshake_size < 256 {
            return Err(bad("max_handshake_size", "must be at least 256 bytes"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(bad("handshake_timeout", "must be longer than 0"));
        }
        if self.close_timeout.is_zero() {
            return Err(bad("close_timeout", "must be longer than 0"));
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err(bad(
                "pong_timeout",
                "must be longer than 0 when pings are on",
            ));
        }
        if self.max_output_buffer < 1024 {
            return Err(bad("max_output_buffer", "must be at least 1KiB"));
        }
        if self.slow_consumer_timeout.is_zero() {
            return Err(bad("slow_consumer_timeout", "must be longer than 0"));
        }
        Ok(())
    }

    /// Whether a handshake's `Origin` may connect (a request without one is not a browser's
    /// cross-site request, so it is allowed).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            Some(o) if !self.allowed_origins.is_empty() => self
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o)),
            _ => true,
        }
    }

    /// The limits the protocol layer enforces.
    pub fn limits(&self) -> crate::protocol::session::Limits {
        crate::protocol::session::Limits {
            max_frame_size: self.max_frame_size.min(self.max_message_size),
            max_message_size: self.max_message_size,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// Applies command-line arguments (without the program name) over the defaults.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
    let mut config = Config::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(ConfigError {
                key: arg,
                message: "unexpected argument (see --help)".to_string(),
            });
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let key = name.replace('-', "_");
        if !SETTINGS.iter().any(|s| s.name == key) {
            return Err(ConfigError {
                key: format!("--{name}"),
                message: "unknown option (see --help)".to_string(),
            });
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => {
                return Err(ConfigError {
                    key: format!("--{name}"),
                    message: "needs a value".to_string(),
                })
            }
        };
        config.set(&key, &value).map_err(|e| ConfigError {
            key: format!("--{name}"),
            message: e.message,
        })?;
    }
    config.validate().map_err(|e| ConfigError {
        key: format!("--{}", e.key.replace('_', "-")),
        message: e.message,
    })?;
    Ok(Command::Run(Box::new(config)))
}

/// The `--help` text, generated from [`SETTINGS`].
pub fn help() -> String {
    let mut text = String::from(
        "wsd — a WebSocket (RFC 6455) echo server daemon with a graceful drain on SIGTERM\n\n\
         Usage: wsd [OPTIONS]\n\nOptions:\n",
    );
    for s in SETTINGS {
        let metavar = match s.name.rsplit('_').next() {
            Some("origins") => "LIST".to_string(),
            Some(last) => last.to_uppercase(),
            None => "VALUE".to_string(),
        };
        text.push_str(&format!(
            "  {} {}\n      {} [default: {}]\n",
            s.flag(),
            metavar,
            s.doc,
            s.default
        ));
    }
    text.push_str(
        "  -h, --help\n      print this help\n  -V, --version\n      print the version\n\n\
         Sizes are bytes, or a number with KiB, MiB or GiB; durations are like 250ms, 5s, 2m.\n\
         Logging is set with RUST_LOG (default: info).\n",
    );
    text
}

fn parse_count(v: &str) -> Result<usize, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number"))
}

/// Parses `1048576`, `64KiB`, `16MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{v:?} is not a size like 65536 or 16MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{v:?} has an unknown unit (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{v:?} is too large"))
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare `0` is zero).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let t = v.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{v:?} is not a duration like 250ms or 5s"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "{v:?} needs a unit: ms, s, m or h (like 250ms or 5s)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{v:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, ConfigError> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_parse() {
        let mut c = Config::default();
        for s in SETTINGS {
            c.set(s.name, s.default).unwrap();
        }
        c.validate().unwrap();
        assert_eq!(c.max_message_size, 16 << 20);
        assert_eq!(c.close_timeout, Duration::from_secs(5));
        assert_eq!(c, Config::default());
    }

    #[test]
    fn flags_override_defaults() {
        let Command::Run(c) = args(&[
            "--listen",
            "127.0.0.1:0",
            "--close-timeout=250ms",
            "--max-frame-size",
            "1KiB",
        ])
        .unwrap() else {
            panic!("expected a run command");
        };
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.close_timeout, Duration::from_millis(250));
        assert_eq!(c.max_frame_size, 1024);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = args(&["--close-timeout", "5"]).unwrap_err();
        assert_eq!(err.key, "--close-timeout");
        assert!(err.message.contains("unit"), "{}", err.message);
        assert_eq!(args(&["--bogus", "1"]).unwrap_err().key, "--bogus");
        assert_eq!(args(&["--listen"]).unwrap_err().message, "needs a value");
        assert_eq!(
            args(&["--max-connections", "0"]).unwrap_err().key,
            "--max-connections"
        );
        assert!(args(&["--close-reason", &"x".repeat(124)]).is_err());
        assert!(args(&["--max-message-size", "12XB"]).is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let h = help();
        for s in SETTINGS {
            assert!(h.contains(&s.flag()), "{}", s.name);
            assert!(
                h.contains(&format!("[default: {}]", s.default)),
                "{}",
                s.name
            );
        }
    }
}
