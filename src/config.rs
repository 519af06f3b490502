//! Every setting of wsd: its default, its documentation, how it is parsed and validated.
//!
//! One table, [`SETTINGS`], drives the defaults, `--help`, the config file and the command line,
//! so they cannot disagree. Config-file keys are the setting names (`max_connections`);
//! command-line flags are the same names in kebab case (`--max-connections`) and override the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::deflate;

/// The running configuration. `Config::default()` holds the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Address and port the WebSocket listener binds.
    pub listen: SocketAddr,
    /// Most connections open at once (handshakes included); more are refused with 503.
    pub max_connections: usize,
    /// Connections the kernel completes and queues before wsd accepts them (`listen(2)`).
    pub listen_backlog: u32,
    /// Largest message accepted, in bytes, summed over fragments; larger ones close with 1009.
    pub max_message_size: u64,
    /// Largest single frame payload accepted, in bytes; larger ones close with 1009.
    pub max_frame_size: u64,
    /// permessage-deflate (RFC 7692): off, shared (no context, nothing per connection) or
    /// context (context takeover with windows of `compression_window_bits`).
    pub compression: Compression,
    /// `context` mode: LZ77 window bits (9–15) kept per connection and direction at most.
    pub compression_window_bits: u8,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub compression_threshold: usize,
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
    /// Window over which the Close frames of a drain are spread (zero: all at once).
    pub drain_spread: Duration,
    /// Address of the Prometheus `/metrics` endpoint; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// What the daemon does with messages: echo them, or publish/subscribe on channels.
    pub mode: Mode,
    /// pubsub: most channels one connection may subscribe to in its handshake.
    pub max_channels_per_connection: usize,
    /// pubsub: whether a client's message is published to its path channel (else Close 1008).
    pub client_publish: bool,
    /// Address of the HTTP publish API; `None` serves none.
    pub api_listen: Option<SocketAddr>,
    /// Bearer token every API request must carry; empty: none needed.
    pub api_token: String,
    /// Bind `listen` (and `api_listen`) with `SO_REUSEPORT`, so several wsd processes share it.
    pub reuse_port: bool,
    /// Redis URLs of the broker (channels sharded over them); empty: pub/sub stays in-process.
    pub broker: Vec<String>,
    /// Prefix of wsd's channels in Redis.
    pub broker_prefix: String,
    /// Longest wait between reconnects to a Redis that is down.
    pub broker_backoff_max: Duration,
    /// Time Redis has to answer a PING before it is treated as down.
    pub broker_timeout: Duration,
    /// PEM certificate chain (leaf first) for wss://; `None`: no TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Address of a separate wss:// listener; `None` with a certificate: `listen` is wss://.
    pub tls_listen: Option<SocketAddr>,
}

/// What the daemon does with messages (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every message goes back to its sender.
    Echo,
    /// Clients subscribe to channels by path; publications reach every subscriber.
    PubSub,
}

/// Whether and how wsd accepts permessage-deflate (`compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Off,
    /// No context takeover either way: one compressor and one decompressor per loop.
    Shared,
    /// Context takeover both ways where the client allows it (windows kept as bytes).
    Context,
}

/// One setting: its name, default, one-line doc, value kind, and how to set it from text.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    pub kind: Kind,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

/// What kind of value a setting takes; decides the TOML types its file key accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole number: a TOML integer (`max_connections = 10000`).
    Count,
    /// Bytes: a TOML integer, or a string with a unit (`"16MiB"`).
    Size,
    /// A TOML string with a unit (`"250ms"`, `"5s"`).
    Duration,
    /// A TOML string (`"127.0.0.1:9001"`, free text).
    Text,
    /// A TOML array of strings (`["https://a.example", "https://b.example"]`), or one string
    /// with the items separated by commas as on the command line.
    List,
    /// A TOML boolean (`client_publish = true`); `true`/`false` on the command line.
    Bool,
}

impl Kind {
    /// The text form of a TOML value for a setting of this kind, or what is wrong with its type.
    pub fn from_toml(self, value: &toml::Value) -> Result<String, String> {
        use toml::Value;
        match (self, value) {
            (Kind::Count | Kind::Size, Value::Integer(n)) if *n < 0 => {
                Err(format!("{n} is negative"))
            }
            (Kind::Count | Kind::Size, Value::Integer(n)) => Ok(n.to_string()),
            (Kind::Size | Kind::Duration | Kind::Text | Kind::List, Value::String(s)) => {
                Ok(s.clone())
            }
            (Kind::Bool, Value::Boolean(b)) => Ok(b.to_string()),
            (Kind::List, Value::Array(items)) => {
                let items: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                match items {
                    Some(items) if items.iter().all(|i| !i.contains(',')) => Ok(items.join(",")),
                    Some(_) => Err("an item contains a comma".to_string()),
                    None => Err("wrong type: expected an array of strings".to_string()),
                }
            }
            (_, other) => Err(format!(
                "wrong type: expected {}, found {}",
                self.expected(),
                toml_type(other)
            )),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Count => "an integer (like 10000)",
            Kind::Size => "an integer number of bytes or a string like \"16MiB\"",
            Kind::Duration => "a string like \"5s\" or \"250ms\"",
            Kind::Text => "a string",
            Kind::List => "an array of strings",
            Kind::Bool => "true or false",
        }
    }
}

fn toml_type(value: &toml::Value) -> String {
    use toml::Value;
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(n) => format!("the integer {n}"),
        Value::Float(f) => format!("the float {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the datetime {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
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
        kind: Kind::Text,
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
        kind: Kind::Count,
        apply: |c, v| {
            c.max_connections = parse_count(v)?;
            Ok(())
        },
    },
    Setting {
        name: "listen_backlog",
        default: "4096",
        doc: "connections the kernel queues before wsd accepts them (capped by net.core.somaxconn)",
        kind: Kind::Count,
        apply: |c, v| {
            c.listen_backlog =
                u32::try_from(parse_count(v)?).map_err(|_| format!("{v:?} is too large"))?;
            Ok(())
        },
    },
    Setting {
        name: "max_message_size",
        default: "16MiB",
        doc: "largest message accepted (bytes, or with KiB/MiB/GiB); larger ones close with 1009",
        kind: Kind::Size,
        apply: |c, v| {
            c.max_message_size = parse_size(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_frame_size",
        default: "16MiB",
        doc: "largest frame payload accepted; larger frames close with 1009",
        kind: Kind::Size,
        apply: |c, v| {
            c.max_frame_size = parse_size(v)?;
            Ok(())
        },
    },
    Setting {
        name: "compression",
        default: "shared",
        doc: "permessage-deflate: off; shared (no context takeover, 0 bytes per connection); context (context takeover, windows of compression_window_bits)",
        kind: Kind::Text,
        apply: |c, v| {
            c.compression = match v.trim() {
                "off" => Compression::Off,
                "shared" => Compression::Shared,
                "context" => Compression::Context,
                _ => return Err(format!("{v:?} is not off, shared or context")),
            };
            Ok(())
        },
    },
    Setting {
        name: "compression_window_bits",
        default: "12",
        doc: "context compression: LZ77 window of 2^N bytes kept per connection and direction, N from 9 to 15",
        kind: Kind::Count,
        apply: |c, v| {
            let bits = parse_count(v)?;
            let range = usize::from(deflate::MIN_WINDOW_BITS)..=usize::from(deflate::MAX_WINDOW_BITS);
            if !range.contains(&bits) {
                return Err(format!("{v:?} is not between 9 and 15"));
            }
            c.compression_window_bits = bits as u8;
            Ok(())
        },
    },
    Setting {
        name: "compression_threshold",
        default: "64",
        doc: "messages shorter than this (bytes) are sent uncompressed",
        kind: Kind::Size,
        apply: |c, v| {
            c.compression_threshold =
                usize::try_from(parse_size(v)?).map_err(|_| format!("{v:?} is too large"))?;
            Ok(())
        },
    },
    Setting {
        name: "max_handshake_size",
        default: "8KiB",
        doc: "largest HTTP request head of a handshake; larger ones get HTTP 431",
        kind: Kind::Size,
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
        kind: Kind::Duration,
        apply: |c, v| {
            c.handshake_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "close_timeout",
        default: "5s",
        doc: "time a client has to answer a Close before the connection is dropped",
        kind: Kind::Duration,
        apply: |c, v| {
            c.close_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "close_reason",
        default: "server shutting down",
        doc: "reason text of the Close 1001 sent to every client when wsd drains",
        kind: Kind::Text,
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
        kind: Kind::Duration,
        apply: |c, v| {
            c.ping_interval = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "pong_timeout",
        default: "10s",
        doc: "time a pinged connection has to send anything (a Pong) before it is dropped",
        kind: Kind::Duration,
        apply: |c, v| {
            c.pong_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_output_buffer",
        default: "1MiB",
        doc: "queued output above which wsd stops reading a connection (resumes below half)",
        kind: Kind::Size,
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
        kind: Kind::Duration,
        apply: |c, v| {
            c.slow_consumer_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "max_connections_per_ip",
        default: "0",
        doc: "most connections from one IP address, 0 for no limit; more get HTTP 429",
        kind: Kind::Count,
        apply: |c, v| {
            c.max_connections_per_ip = parse_count(v)?;
            Ok(())
        },
    },
    Setting {
        name: "allowed_origins",
        default: "",
        doc: "comma-separated Origin values allowed to connect, empty for any; others get 403",
        kind: Kind::List,
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
    Setting {
        name: "drain_spread",
        default: "0s",
        doc: "window the drain's Close frames are spread over (with jitter); 0s sends them all at once",
        kind: Kind::Duration,
        apply: |c, v| {
            c.drain_spread = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "metrics_listen",
        default: "off",
        doc: "address and port serving Prometheus metrics at GET /metrics, or off",
        kind: Kind::Text,
        apply: |c, v| {
            c.metrics_listen = match v.trim() {
                "off" => None,
                addr => Some(addr.parse().map_err(|_| {
                    format!("{v:?} is neither off nor an address like 127.0.0.1:9090")
                })?),
            };
            Ok(())
        },
    },
    Setting {
        name: "mode",
        default: "echo",
        doc: "echo: every message goes back to its sender; pubsub: clients subscribe to channels by path",
        kind: Kind::Text,
        apply: |c, v| {
            c.mode = match v.trim() {
                "echo" => Mode::Echo,
                "pubsub" => Mode::PubSub,
                _ => return Err(format!("{v:?} is neither echo nor pubsub")),
            };
            Ok(())
        },
    },
    Setting {
        name: "max_channels_per_connection",
        default: "16",
        doc: "pubsub: most channels a connection subscribes to (path + channel= parameters); more get HTTP 400",
        kind: Kind::Count,
        apply: |c, v| {
            c.max_channels_per_connection = parse_count(v)?;
            Ok(())
        },
    },
    Setting {
        name: "client_publish",
        default: "false",
        doc: "pubsub: publish a client's messages to its path channel (sender included); false closes it with 1008",
        kind: Kind::Bool,
        apply: |c, v| {
            c.client_publish = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        name: "api_listen",
        default: "off",
        doc: "address and port of the HTTP publish API (POST /publish/CHANNEL, GET /channels, GET /metrics), or off",
        kind: Kind::Text,
        apply: |c, v| {
            c.api_listen = match v.trim() {
                "off" => None,
                addr => Some(addr.parse().map_err(|_| {
                    format!("{v:?} is neither off nor an address like 127.0.0.1:9002")
                })?),
            };
            Ok(())
        },
    },
    Setting {
        name: "api_token",
        default: "",
        doc: "bearer token every API request must carry (Authorization: Bearer TOKEN); empty: none",
        kind: Kind::Text,
        apply: |c, v| {
            if v.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err("must be printable ASCII without spaces".to_string());
            }
            c.api_token = v.to_string();
            Ok(())
        },
    },
    Setting {
        name: "reuse_port",
        default: "false",
        doc: "bind listen and api_listen with SO_REUSEPORT so that several wsd processes share them",
        kind: Kind::Bool,
        apply: |c, v| {
            c.reuse_port = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        name: "broker",
        default: "",
        doc: "Redis URLs (redis://HOST:PORT) that carry publications between instances, channels sharded over them; empty: in-process",
        kind: Kind::List,
        apply: |c, v| {
            let urls: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect();
            for url in &urls {
                crate::pubsub::redis::parse_url(url)?;
            }
            c.broker = urls;
            Ok(())
        },
    },
    Setting {
        name: "broker_prefix",
        default: "wsd:",
        doc: "prefix of wsd's channel names in Redis",
        kind: Kind::Text,
        apply: |c, v| {
            c.broker_prefix = v.to_string();
            Ok(())
        },
    },
    Setting {
        name: "broker_backoff_max",
        default: "5s",
        doc: "longest wait between reconnects to a Redis that is down (jittered exponential backoff)",
        kind: Kind::Duration,
        apply: |c, v| {
            c.broker_backoff_max = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "broker_timeout",
        default: "2s",
        doc: "time Redis has to answer a PING (sent every half of it) before it counts as down",
        kind: Kind::Duration,
        apply: |c, v| {
            c.broker_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Setting {
        name: "tls_cert",
        default: "",
        doc: "PEM certificate chain (leaf first) for wss://; empty: no TLS (reloaded on SIGHUP)",
        kind: Kind::Text,
        apply: |c, v| {
            c.tls_cert = (!v.is_empty()).then(|| PathBuf::from(v));
            Ok(())
        },
    },
    Setting {
        name: "tls_key",
        default: "",
        doc: "PEM private key of tls_cert (PKCS#8, PKCS#1 or SEC1)",
        kind: Kind::Text,
        apply: |c, v| {
            c.tls_key = (!v.is_empty()).then(|| PathBuf::from(v));
            Ok(())
        },
    },
    Setting {
        name: "tls_listen",
        default: "off",
        doc: "address of a separate wss:// listener (listen stays ws://), or off: with tls_cert set, listen itself is wss://",
        kind: Kind::Text,
        apply: |c, v| {
            c.tls_listen = match v.trim() {
                "off" => None,
                addr => Some(addr.parse().map_err(|_| {
                    format!("{v:?} is neither off nor an address like 127.0.0.1:9443")
                })?),
            };
            Ok(())
        },
    },
];

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{v:?} is neither true nor false")),
    }
}

/// A setting that could not be applied; names the file (if it came from one), the setting and
/// says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file the bad value came from; `None` for the command line.
    pub file: Option<PathBuf>,
    /// The setting or flag; empty when the problem is the file as a whole.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }

    fn in_file(mut self, path: &Path) -> ConfigError {
        self.file = Some(path.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Config {
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            max_connections: 0,
            listen_backlog: 0,
            max_message_size: 0,
            max_frame_size: 0,
            compression: Compression::Shared,
            compression_window_bits: 0,
            compression_threshold: 0,
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
            drain_spread: Duration::ZERO,
            metrics_listen: None,
            mode: Mode::Echo,
            max_channels_per_connection: 0,
            client_publish: false,
            api_listen: None,
            api_token: String::new(),
            reuse_port: false,
            broker: Vec::new(),
            broker_prefix: String::new(),
            broker_backoff_max: Duration::ZERO,
            broker_timeout: Duration::ZERO,
            tls_cert: None,
            tls_key: None,
            tls_listen: None,
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
            .ok_or_else(|| ConfigError::new(name, "unknown setting"))?;
        (setting.apply)(self, value).map_err(|message| ConfigError::new(name, message))
    }

    /// Applies every key of a TOML config file, through [`Config::set`]; errors name the file.
    pub fn load_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read: {e}")).in_file(path))?;
        self.load_toml(&text).map_err(|e| e.in_file(path))
    }

    /// Applies every key of a TOML document; unknown keys and values of the wrong type are errors.
    pub fn load_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!("line {line}, column {column}: ")
                })
                .unwrap_or_default();
            ConfigError::new("", format!("{at}invalid TOML: {}", e.message().trim_end()))
        })?;
        for (key, value) in &table {
            let setting = SETTINGS
                .iter()
                .find(|s| s.name == key)
                .ok_or_else(|| ConfigError::new(key, "unknown setting"))?;
            let text = setting
                .kind
                .from_toml(value)
                .map_err(|message| ConfigError::new(key, message))?;
            self.set(key, &text)?;
        }
        Ok(())
    }

    /// Checks rules that span settings; called once every source has been applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = ConfigError::new;
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        if self.listen_backlog == 0 || self.listen_backlog > i32::MAX as u32 {
            return Err(bad("listen_backlog", "must be between 1 and 2147483647"));
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
        if self.metrics_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(bad("metrics_listen", "must differ from listen"));
        }
        if self.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(bad("max_connections", "must be at most 2147483647"));
        }
        if self.broker.len() > crate::server::MAX_SHARDS {
            return Err(bad("broker", "at most 64 Redis URLs"));
        }
        if self.broker_timeout < Duration::from_millis(10) {
            return Err(bad("broker_timeout", "must be at least 10ms"));
        }
        if self.broker_backoff_max < Duration::from_millis(100) {
            return Err(bad("broker_backoff_max", "must be at least 100ms"));
        }
        if self.max_channels_per_connection == 0 {
            return Err(bad("max_channels_per_connection", "must be at least 1"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(bad("tls_key", "must be set with tls_cert")),
            (None, Some(_)) => return Err(bad("tls_cert", "must be set with tls_key")),
            _ => {}
        }
        if let Some(tls) = self.tls_listen {
            if self.tls_cert.is_none() {
                return Err(bad("tls_listen", "needs tls_cert and tls_key"));
            }
            if tls.port() != 0 && (tls == self.listen || Some(tls) == self.metrics_listen) {
                return Err(bad(
                    "tls_listen",
                    "must differ from listen and metrics_listen",
                ));
            }
        }
        if let Some(api) = self.api_listen {
            if api.port() != 0 && (api == self.listen || Some(api) == self.metrics_listen) {
                return Err(bad(
                    "api_listen",
                    "must differ from listen and metrics_listen",
                ));
            }
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
    /// How the handshake answers a permessage-deflate offer.
    pub fn deflate_mode(&self) -> deflate::Mode {
        match self.compression {
            Compression::Off => deflate::Mode::Off,
            Compression::Shared => deflate::Mode::Shared,
            Compression::Context => deflate::Mode::Context {
                window_bits: self.compression_window_bits,
            },
        }
    }

    /// Window of the frames compressed once for every subscriber: the largest a client may
    /// be sent in this mode.
    pub fn fanout_window_bits(&self) -> u8 {
        match self.compression {
            Compression::Context => self.compression_window_bits,
            _ => deflate::MAX_WINDOW_BITS,
        }
    }

    pub fn limits(&self) -> crate::protocol::session::Limits {
        crate::protocol::session::Limits {
            max_frame_size: self.max_frame_size.min(self.max_message_size),
            max_message_size: self.max_message_size,
        }
    }

    /// Loads the certificate pair when TLS is on (`None` when it is off); errors name the file
    /// and what is wrong with it.
    pub fn load_tls(&self) -> Result<Option<crate::tls::Certified>, crate::tls::LoadError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::tls::load(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// The longest a drain can take once it starts: the last Close goes out by the end of the
    /// spread, and its answer is waited for up to `close_timeout`.
    pub fn drain_bound(&self) -> Duration {
        self.drain_spread + self.close_timeout
    }
}

/// Largest `max_connections`: connection keys are kept as 32-bit numbers by the channel
/// registry.
const MAX_CONNECTIONS_LIMIT: usize = i32::MAX as usize;

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    /// `--check-config`: the configuration is valid; print a word and exit 0.
    Check(Box<Config>),
    Help,
    Version,
}

/// Applies the config file named by `--config` (if any), then the other command-line arguments
/// (without the program name) over it, starting from the defaults.
///
/// Errors about the file carry its path in [`ConfigError::file`]; the binary exits with
/// `EX_CONFIG` for those and with the usage code for the rest.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
    let mut file: Option<PathBuf> = None;
    let mut check = false;
    let mut flags: Vec<(String, String, String)> = Vec::new(); // (flag, key, value)
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--check-config" => {
                check = true;
                continue;
            }
            _ => {}
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(ConfigError::new(arg, "unexpected argument (see --help)"));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let key = name.replace('-', "_");
        if key != "config" && !SETTINGS.iter().any(|s| s.name == key) {
            return Err(ConfigError::new(
                format!("--{name}"),
                "unknown option (see --help)",
            ));
        }
        let Some(value) = inline.or_else(|| args.next()) else {
            return Err(ConfigError::new(format!("--{name}"), "needs a value"));
        };
        if key == "config" {
            file = Some(PathBuf::from(value));
        } else {
            flags.push((format!("--{name}"), key, value));
        }
    }
    let mut config = Config::default();
    if let Some(path) = &file {
        config.load_file(path)?;
        config.validate().map_err(|e| e.in_file(path))?;
    }
    for (flag, key, value) in flags {
        config
            .set(&key, &value)
            .map_err(|e| ConfigError::new(flag, e.message))?;
    }
    config
        .validate()
        .map_err(|e| ConfigError::new(format!("--{}", e.key.replace('_', "-")), e.message))?;
    // The certificate and key are read now, so that a bad file stops the start (and
    // `--check-config`) with its name and the problem.
    config.load_tls().map_err(|e| ConfigError {
        file: Some(e.file.clone()),
        key: e.key.to_string(),
        message: e.problem,
    })?;
    Ok(if check {
        Command::Check(Box::new(config))
    } else {
        Command::Run(Box::new(config))
    })
}

/// The `--help` text, generated from [`SETTINGS`].
pub fn help() -> String {
    let mut text = String::from(
        "wsd — a WebSocket (RFC 6455) server daemon (echo, or pub/sub with an HTTP publish API) \
         with a graceful drain on SIGTERM\n\n\
         Usage: wsd [--config PATH] [--check-config] [OPTIONS]\n\nOptions:\n  \
         --config PATH\n      read settings from this TOML file (see config/wsd.toml); \
         options given here override it\n  \
         --check-config\n      validate the configuration, print it is valid, and exit\n",
    );
    for s in SETTINGS {
        let metavar = match s.kind {
            Kind::Count => "N",
            Kind::Size => "BYTES",
            Kind::Duration => "DUR",
            Kind::List => "LIST",
            Kind::Bool => "true|false",
            Kind::Text if s.name.ends_with("listen") => "ADDR:PORT",
            Kind::Text => "TEXT",
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
         Logging is set with RUST_LOG (default: info). Under systemd, wsd speaks sd_notify \
         ($NOTIFY_SOCKET),\naccepts socket activation ($LISTEN_FDS) and logs with journald \
         priorities ($JOURNAL_STREAM).\n\
         Exit codes: 0 after a drain, 1 on a failure, 2 for a bad command line, 78 for a bad \
         config file.\n",
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

    /// The shipped `config/wsd.toml`.
    const SHIPPED: &str = include_str!("../config/wsd.toml");

    #[test]
    fn shipped_file_documents_every_default() {
        let mut c = Config::default();
        c.load_toml(SHIPPED).unwrap();
        assert_eq!(c, Config::default());
        let table: toml::Table = SHIPPED.parse().unwrap();
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        assert_eq!(keys, names, "the file has exactly one key per setting");
        let lines: Vec<&str> = SHIPPED.lines().collect();
        for s in SETTINGS {
            // Each key carries its default as text, right after a comment line.
            assert_eq!(
                s.kind.from_toml(&table[s.name]).unwrap(),
                s.default,
                "{}",
                s.name
            );
            let at = lines
                .iter()
                .position(|l| l.starts_with(&format!("{} = ", s.name)))
                .unwrap();
            assert!(lines[at - 1].starts_with("# "), "{} has no comment", s.name);
        }
    }

    #[test]
    fn file_errors_name_the_key_and_what_is_wrong() {
        let load = |text: &str| Config::default().load_toml(text).unwrap_err();
        let e = load("listen = \"127.0.0.1:9001\"\nmax_connections = \n");
        assert_eq!(e.key, "");
        assert!(
            e.message.starts_with("line 2, column 19: invalid TOML"),
            "{e}"
        );
        let e = load("max_conections = 5\n");
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("max_conections", "unknown setting")
        );
        let e = load("close_timeout = 5\n");
        assert_eq!(e.key, "close_timeout");
        assert!(
            e.message.starts_with("wrong type: expected a string"),
            "{e}"
        );
        let e = load("max_connections = \"many\"\n");
        assert!(e.message.contains("found the string \"many\""), "{e}");
        let e = load("close_timeout = \"5\"\n");
        assert!(e.message.contains("needs a unit"), "{e}");
        let e = load("max_frame_size = -1\n");
        assert!(e.message.contains("negative"), "{e}");
        let e = load("[server]\nlisten = \"x\"\n");
        assert_eq!(e.key, "server");
        let mut c = Config::default();
        c.load_toml("max_frame_size = 1024\nmax_message_size = \"1KiB\"\n")
            .unwrap();
        assert_eq!((c.max_frame_size, c.max_message_size), (1024, 1024));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("wsd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wsd.toml");
        std::fs::write(&path, "close_timeout = \"1s\"\nmax_connections = 7\n").unwrap();
        let p = path.to_str().unwrap();
        let Command::Run(c) = args(&["--config", p, "--close-timeout", "2s"]).unwrap() else {
            panic!("expected a run command");
        };
        assert_eq!(
            (c.close_timeout, c.max_connections),
            (Duration::from_secs(2), 7)
        );
        assert!(matches!(
            args(&["--check-config", &format!("--config={p}")]),
            Ok(Command::Check(_))
        ));
        std::fs::write(&path, "max_connections = 0\n").unwrap();
        let e = args(&["--config", p]).unwrap_err();
        assert_eq!(e.file.as_deref(), Some(path.as_path()));
        assert_eq!(
            e.to_string(),
            format!("{p}: max_connections: must be at least 1")
        );
        let e = args(&["--config", &format!("{p}.missing")]).unwrap_err();
        assert!(
            e.file.is_some() && e.message.starts_with("cannot read"),
            "{e}"
        );
        assert_eq!(args(&["--config"]).unwrap_err().file, None);
        std::fs::remove_dir_all(&dir).unwrap();
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
