//! Counters of the loop, and the Prometheus `/metrics` endpoint served from the same loop.
//!
//! The endpoint is tiny HTTP/1.1: one GET per connection, the request head bounded by
//! [`MAX_REQUEST`], the connection closed after the response, at most [`MAX_SCRAPES`] at once,
//! each given [`SCRAPE_TIMEOUT`]. Names follow the Prometheus conventions: `wsd_` prefix,
//! `_total` counters, base units (bytes).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::handler::Handler;
use crate::protocol::deflate::CodecCounts;
use crate::pubsub::hub::Counts;

use super::EventLoop;

/// The metrics listener's token.
pub const METRICS: Token = Token(usize::MAX - 3);
/// Scrapes served at once; more are closed at accept.
pub const MAX_SCRAPES: usize = 4;
/// The scrapes' tokens, `SCRAPES_START..SCRAPES_START + MAX_SCRAPES`, below the other reserved ones.
const SCRAPES_START: usize = usize::MAX - 4 - MAX_SCRAPES;
/// Largest request head of a scrape; a larger one gets 431.
pub const MAX_REQUEST: usize = 4096;
/// Time a scrape has to send its request and read the response.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which side started a closing handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// What the loop counts; cheap enough to keep whether or not metrics are served.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    /// Handshakes answered with an HTTP error, by status (503 includes refusals when full).
    pub rejected: BTreeMap<u16, u64>,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// Closing handshakes by the side that started them and the code it sent (1005: no code;
    /// 1006: the connection ended without any Close).
    pub closes: BTreeMap<(Side, u16), u64>,
    pub close_timeouts: u64,
    pub handshake_timeouts: u64,
    /// Connections closed with 1008 because they stayed over `max_output_buffer` too long.
    pub slow_consumer_closes: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes that failed (garbage instead of a ClientHello, no common parameters).
    pub tls_handshake_failures: u64,
    /// Established TLS connections failed by a bad record.
    pub tls_errors: u64,
    /// Certificate reloads (SIGHUP) that took effect, and those that kept the old pair.
    pub tls_reloads: u64,
    pub tls_reload_failures: u64,
    /// The serving certificate's notAfter (Unix seconds), when TLS is on.
    pub tls_not_after: Option<i64>,
}

impl Stats {
    pub fn rejected(&mut self, status: u16) {
        *self.rejected.entry(status).or_default() += 1;
    }

    pub fn closed(&mut self, side: Side, code: u16) {
        *self.closes.entry((side, code)).or_default() += 1;
    }
}

/// The loop's state at the moment of a scrape.
pub struct Snapshot<'a> {
    pub stats: &'a Stats,
    pub open: usize,
    pub draining: bool,
    pub drain_pending: usize,
    pub pubsub: PubSubSnapshot<'a>,
    /// permessage-deflate: the loop's compressor and decompressor.
    pub deflate: DeflateSnapshot,
}

/// What the loop's permessage-deflate codec did.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeflateSnapshot {
    pub compressed: CodecCounts,
    pub inflated: CodecCounts,
}

/// The channels' part of a snapshot.
#[derive(Default)]
pub struct PubSubSnapshot<'a> {
    pub channels: usize,
    pub subscriptions: usize,
    pub counts: Counts,
    /// Publish API requests answered, by status.
    pub api_requests: Option<&'a BTreeMap<u16, u64>>,
    pub broker: Option<&'a super::broker::Broker>,
}

/// The [`Snapshot`] of a loop, from its fields (a macro so that it borrows only those fields).
macro_rules! snapshot {
    ($lp:ident) => {
        $crate::server::metrics::Snapshot {
            stats: &$lp.stats,
            open: $lp.counted,
            draining: $lp.drain.is_some(),
            drain_pending: $lp.pacer.len(),
            pubsub: $crate::server::metrics::PubSubSnapshot {
                channels: $lp.hub.channel_count(),
                subscriptions: $lp.hub.subscription_count(),
                counts: $lp.hub.counts(),
                api_requests: Some(&$lp.api.requests),
                broker: $lp.broker.as_ref(),
            },
            deflate: $crate::server::metrics::DeflateSnapshot {
                compressed: $lp.hub.deflater().counts(),
                inflated: $lp.scratch.inflater.counts(),
            },
        }
    };
}
pub(crate) use snapshot;

/// The Prometheus text exposition format (version 0.0.4) of a snapshot.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let st = s.stats;
    // Families with one unlabelled sample: (name, type, help, value).
    let single: [(&str, &str, &str, u64); 11] = [
        (
            "wsd_connections_open",
            "gauge",
            "Connections open, handshakes included.",
            s.open as u64,
        ),
        (
            "wsd_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            st.accepted,
        ),
        (
            "wsd_handshake_timeouts_total",
            "counter",
            "Handshakes not completed within handshake_timeout.",
            st.handshake_timeouts,
        ),
        (
            "wsd_messages_received_total",
            "counter",
            "WebSocket messages received.",
            st.messages_received,
        ),
        (
            "wsd_messages_sent_total",
            "counter",
            "WebSocket messages sent.",
            st.messages_sent,
        ),
        (
            "wsd_received_bytes_total",
            "counter",
            "Bytes read from WebSocket connections.",
            st.received_bytes,
        ),
        (
            "wsd_sent_bytes_total",
            "counter",
            "Bytes written to WebSocket connections.",
            st.sent_bytes,
        ),
        (
            "wsd_close_timeouts_total",
            "counter",
            "Connections dropped because the peer did not answer a Close within close_timeout.",
            st.close_timeouts,
        ),
        (
            "wsd_slow_consumer_closes_total",
            "counter",
            "Connections closed with 1008 because they read too slowly.",
            st.slow_consumer_closes,
        ),
        (
            "wsd_draining",
            "gauge",
            "1 while a drain is in progress.",
            u64::from(s.draining),
        ),
        (
            "wsd_drain_pending_closes",
            "gauge",
            "Connections of a paced drain still waiting for their Close.",
            s.drain_pending as u64,
        ),
    ];
    let ps = &s.pubsub;
    let pubsub: [(&str, &str, &str, u64); 5] = [
        (
            "wsd_channels",
            "gauge",
            "Channels with at least one local subscriber.",
            ps.channels as u64,
        ),
        (
            "wsd_subscriptions",
            "gauge",
            "Subscriptions of open connections to channels.",
            ps.subscriptions as u64,
        ),
        (
            "wsd_publications_total",
            "counter",
            "Publications (API, clients, handlers and other threads).",
            ps.counts.publications,
        ),
        (
            "wsd_deliveries_total",
            "counter",
            "Publications and direct sends queued for a connection.",
            ps.counts.deliveries,
        ),
        (
            "wsd_deliveries_dropped_total",
            "counter",
            "Deliveries dropped because the subscriber's output was at max_output_buffer.",
            ps.counts.dropped,
        ),
    ];
    for (name, kind, help, value) in single.into_iter().chain(pubsub) {
        metric(name, kind, help, &[(String::new(), value)]);
    }
    let (z, i) = (s.deflate.compressed, s.deflate.inflated);
    let deflate: [(&str, &str, u64, u64); 3] = [
        (
            "wsd_deflate_messages_total",
            "permessage-deflate messages compressed (out, a fan-out frame counted once) and inflated (in).",
            z.messages,
            i.messages,
        ),
        (
            "wsd_deflate_plain_bytes_total",
            "permessage-deflate payload bytes before compressing (out) and after inflating (in).",
            z.plain_bytes,
            i.plain_bytes,
        ),
        (
            "wsd_deflate_compressed_bytes_total",
            "permessage-deflate compressed payload bytes made (out) and received (in).",
            z.compressed_bytes,
            i.compressed_bytes,
        ),
    ];
    for (name, help, out, inn) in deflate {
        let samples = [
            ("{direction=\"out\"}".to_string(), out),
            ("{direction=\"in\"}".to_string(), inn),
        ];
        metric(name, "counter", help, &samples);
    }
    metric(
        "wsd_build_info",
        "gauge",
        "The running binary's version and process id (a live upgrade changes the pid).",
        &[(
            format!(
                "{{version=\"{}\",pid=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
            1,
        )],
    );
    if let Some(requests) = ps.api_requests {
        let requests: Vec<_> = requests
            .iter()
            .map(|(status, n)| (format!("{{status=\"{status}\"}}"), *n))
            .collect();
        metric(
            "wsd_api_requests_total",
            "counter",
            "Publish API requests answered, by status (503: publications refused while draining).",
            &requests,
        );
    }
    if let Some(broker) = ps.broker {
        let shards: Vec<_> = broker.shard_stats().collect();
        let per_shard =
            |value: &dyn Fn(&super::broker::ShardStats<'_>) -> u64| -> Vec<(String, u64)> {
                shards
                    .iter()
                    .map(|s| (format!("{{url=\"{}\"}}", s.url), value(s)))
                    .collect()
            };
        metric(
            "wsd_broker_up",
            "gauge",
            "1 while the Redis shard answers, 0 while it is down.",
            &per_shard(&|s| u64::from(s.up)),
        );
        metric(
            "wsd_broker_connects_total",
            "counter",
            "Times the Redis shard came up (the first connect included).",
            &per_shard(&|s| s.reconnects),
        );
        metric(
            "wsd_broker_resubscribe_milliseconds",
            "gauge",
            "Time the last (re)connect took to subscribe every channel with local subscribers again.",
            &per_shard(&|s| (s.resubscribe_seconds * 1000.0).round() as u64),
        );
        metric(
            "wsd_broker_publish_failed_total",
            "counter",
            "Publications not sent or not confirmed because the broker was down (never reported as delivered).",
            &[(String::new(), broker.failed)],
        );
    }
    if let Some(not_after) = st.tls_not_after {
        let tls: [(&str, &str, &str, u64); 5] = [
            (
                "wsd_tls_handshakes_total",
                "counter",
                "TLS handshakes completed.",
                st.tls_handshakes,
            ),
            (
                "wsd_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed (not TLS, no common parameters, a bad record).",
                st.tls_handshake_failures,
            ),
            (
                "wsd_tls_errors_total",
                "counter",
                "Established TLS connections failed by a bad record.",
                st.tls_errors,
            ),
            (
                "wsd_tls_reloads_total",
                "counter",
                "Certificate reloads (SIGHUP) that took effect.",
                st.tls_reloads,
            ),
            (
                "wsd_tls_reload_failures_total",
                "counter",
                "Certificate reloads that failed and kept the certificate in use.",
                st.tls_reload_failures,
            ),
        ];
        for (name, kind, help, value) in tls {
            metric(name, kind, help, &[(String::new(), value)]);
        }
        metric(
            "wsd_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of the certificate new handshakes are served with, in Unix seconds.",
            &[(String::new(), u64::try_from(not_after).unwrap_or(0))],
        );
    }
    let rejected: Vec<_> = st
        .rejected
        .iter()
        .map(|(status, n)| (format!("{{status=\"{status}\"}}"), *n))
        .collect();
    metric(
        "wsd_handshakes_rejected_total",
        "counter",
        "Handshakes answered with an HTTP error, by status.",
        &rejected,
    );
    let closes: Vec<_> = st
        .closes
        .iter()
        .map(|((side, code), n)| (format!("{{side=\"{}\",code=\"{code}\"}}", side.label()), *n))
        .collect();
    metric(
        "wsd_closes_total",
        "counter",
        "Closing handshakes by the side that started them and the code it sent (1005: none; 1006: no Close at all).",
        &closes,
    );
    out
}

/// One scrape connection: its request so far, then its response.
struct Scrape {
    sock: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// The `/metrics` listener and the scrapes in progress.
#[derive(Default)]
pub struct Metrics {
    listener: Option<TcpListener>,
    scrapes: [Option<Scrape>; MAX_SCRAPES],
}

/// Whether a token belongs to the metrics endpoint.
pub fn owns(token: Token) -> bool {
    token == METRICS || (SCRAPES_START..SCRAPES_START + MAX_SCRAPES).contains(&token.0)
}

impl Metrics {
    /// Registers the listener (if metrics are on).
    pub fn new(listener: Option<TcpListener>, registry: &Registry) -> io::Result<Metrics> {
        let mut metrics = Metrics::default();
        if let Some(mut l) = listener {
            registry.register(&mut l, METRICS, Interest::READABLE)?;
            log::info!("metrics on http://{}/metrics", l.local_addr()?);
            metrics.listener = Some(l);
        }
        Ok(metrics)
    }

    /// The listener's descriptor (for a live upgrade).
    pub fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.listener.as_ref().map(|l| l.as_raw_fd())
    }

    /// The earliest scrape deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.scrapes.iter().flatten().map(|s| s.deadline).min()
    }

    /// Drops the scrapes past their deadline.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        for slot in &mut self.scrapes {
            if slot.as_ref().is_some_and(|s| s.deadline <= now) {
                drop_scrape(slot, registry);
            }
        }
    }

    fn accept(&mut self, now: Instant, registry: &Registry) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let mut sock = match listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    return;
                }
            };
            let Some(i) = self.scrapes.iter().position(Option::is_none) else {
                log::debug!("metrics: {MAX_SCRAPES} scrapes in progress, closing another");
                continue;
            };
            let token = Token(SCRAPES_START + i);
            if registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.scrapes[i] = Some(Scrape {
                sock,
                request: Vec::new(),
                response: Vec::new(),
                written: 0,
                deadline: now + SCRAPE_TIMEOUT,
            });
        }
    }

    /// Reads a scrape's request, answers it once complete, writes the answer, and closes.
    fn serve(&mut self, i: usize, registry: &Registry, render: impl FnOnce() -> String) {
        let slot = &mut self.scrapes[i];
        let Some(scrape) = slot else {
            return; // Readiness for a scrape already gone.
        };
        if scrape.response.is_empty() {
            let mut buf = [0u8; 1024];
            loop {
                match scrape.sock.read(&mut buf) {
                    Ok(0) => return drop_scrape(slot, registry),
                    Ok(n) => scrape.request.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return drop_scrape(slot, registry),
                }
                if scrape.request.len() > MAX_REQUEST {
                    break;
                }
            }
            match respond(&scrape.request, render) {
                Some(response) => scrape.response = response,
                None => return, // The head is not complete yet.
            }
        }
        while scrape.written < scrape.response.len() {
            match scrape.sock.write(&scrape.response[scrape.written..]) {
                Ok(0) => return drop_scrape(slot, registry),
                Ok(n) => scrape.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return drop_scrape(slot, registry),
            }
        }
        let _ = scrape.sock.shutdown(Shutdown::Write);
        drop_scrape(slot, registry);
    }
}

fn drop_scrape(slot: &mut Option<Scrape>, registry: &Registry) {
    if let Some(mut scrape) = slot.take() {
        let _ = registry.deregister(&mut scrape.sock);
    }
}

/// The whole HTTP response to a request head, or None while the head is incomplete.
fn respond(request: &[u8], render: impl FnOnce() -> String) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (status, body) = match req.parse(request) {
        Ok(httparse::Status::Partial) if request.len() <= MAX_REQUEST => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => (
            "431 Request Header Fields Too Large",
            "request head too large\n".to_string(),
        ),
        Err(_) => ("400 Bad Request", "bad request\n".to_string()),
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some("GET"), Some("/metrics")) => ("200 OK", render()),
            (Some("GET"), _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
            _ => ("405 Method Not Allowed", "only GET\n".to_string()),
        },
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    Some(response)
}

impl<H: Handler> EventLoop<H> {
    /// Handles readiness on the metrics listener or one of its scrapes.
    pub(super) fn serve_metrics(&mut self, token: Token) {
        let registry = self.poll.registry();
        if token == METRICS {
            return self.metrics.accept(self.now, registry);
        }
        let snapshot = snapshot!(self);
        self.metrics
            .serve(token.0 - SCRAPES_START, registry, || render(&snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(request: &str) -> String {
        let r = respond(request.as_bytes(), || "wsd_x 1\n".to_string()).unwrap();
        String::from_utf8(r).unwrap()
    }

    #[test]
    fn only_get_metrics_is_served() {
        let ok = text("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("Content-Length: 8\r\nConnection: close\r\n\r\nwsd_x 1\n"));
        assert!(text("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(text("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(text("\x01\x02 nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(respond(b"GET /metrics HTTP/1.1\r\n", String::new).is_none());
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert!(text(&huge).starts_with("HTTP/1.1 431"));
    }

    #[test]
    fn render_follows_prometheus_names() {
        let mut stats = Stats {
            accepted: 3,
            ..Stats::default()
        };
        stats.rejected(503);
        stats.closed(Side::Server, 1001);
        stats.closed(Side::Server, 1001);
        let text = render(&Snapshot {
            stats: &stats,
            open: 2,
            draining: true,
            drain_pending: 1,
            pubsub: PubSubSnapshot::default(),
            deflate: DeflateSnapshot::default(),
        });
        assert!(text.contains("wsd_connections_open 2\n"), "{text}");
        assert!(text.contains("wsd_connections_accepted_total 3\n"));
        assert!(text.contains("wsd_handshakes_rejected_total{status=\"503\"} 1\n"));
        assert!(text.contains("wsd_closes_total{side=\"server\",code=\"1001\"} 2\n"));
        assert!(text.contains("# TYPE wsd_sent_bytes_total counter\n"));
        assert!(text.contains("wsd_draining 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("wsd_"), "{line}");
        }
    }
}
