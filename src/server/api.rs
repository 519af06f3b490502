//! The HTTP publish API, served from the loop: a few keep-alive connections whose requests
//! publish into the hub. The answer to a publish waits for the turn's fan-out, so a `200` means
//! the frame is queued for every local subscriber it names.
//!
//! Bounded like the rest: at most [`MAX_API_CONNECTIONS`] at once, a request head of
//! [`MAX_HEAD`] bytes and a body of `max_message_size`, [`API_IDLE_TIMEOUT`] between
//! requests. After an error status the connection is closed (after the answer is read).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::handler::Handler;
use crate::protocol::Message;
use crate::pubsub::api::{self, Request, MAX_HEAD};
use crate::pubsub::{Hub, Ticket};

use super::broker::Broker;
use super::metrics::snapshot;
use super::upgrade::ApiConnState;
use super::EventLoop;

/// The API listener's token.
const API_LISTENER: Token = Token(usize::MAX - 10);
/// API connections served at once; more are closed at accept.
pub const MAX_API_CONNECTIONS: usize = 256;
/// The API connections' tokens, `API_START..API_START + MAX_API_CONNECTIONS`.
const API_START: usize = usize::MAX - 11 - MAX_API_CONNECTIONS;
/// Time an API connection may stay without a request (or take to send one).
pub const API_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a connection closed after an error status has to read the answer and hang up.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// Whether a token belongs to the API.
pub fn owns(token: Token) -> bool {
    token == API_LISTENER || (API_START..API_START + MAX_API_CONNECTIONS).contains(&token.0)
}

/// One answer, in request order.
enum Answer {
    Ready(Vec<u8>),
    /// A publish: its subscriber count is known after the fan-out.
    Publish {
        ticket: Ticket,
        channel: String,
        keep_alive: bool,
    },
}

struct ApiConn {
    sock: TcpStream,
    input: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    answers: VecDeque<Answer>,
    /// No more requests: close once the answers are out.
    last: bool,
    /// Our side is shut down; input is discarded until the peer's FIN or the deadline.
    lingering: bool,
    deadline: Instant,
}

/// The API listener and its connections.
pub struct Api {
    listener: Option<TcpListener>,
    conns: Slab<ApiConn>,
    /// Connections with answers waiting for the fan-out.
    waiting: Vec<usize>,
    /// Requests answered, by status.
    pub requests: BTreeMap<u16, u64>,
}

impl Api {
    pub fn new(listener: Option<TcpListener>, registry: &Registry) -> io::Result<Api> {
        let mut api = Api {
            listener: None,
            conns: Slab::new(),
            waiting: Vec::new(),
            requests: BTreeMap::new(),
        };
        if let Some(mut l) = listener {
            registry.register(&mut l, API_LISTENER, Interest::READABLE)?;
            log::info!("publish API on http://{}/", l.local_addr()?);
            api.listener = Some(l);
        }
        Ok(api)
    }

    /// The listener's descriptor (for a live upgrade).
    pub fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.listener.as_ref().map(|l| l.as_raw_fd())
    }

    /// Whether answers wait for the fan-out or the broker.
    pub fn has_waiting_answers(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The connections that can move in a live upgrade (those between requests) and their
    /// descriptors; the others (closing) are left to end with this process.
    pub fn export(&self) -> Vec<(std::os::fd::RawFd, ApiConnState)> {
        use std::os::fd::AsRawFd;
        self.conns
            .iter()
            .filter(|(_, c)| c.answers.is_empty() && !c.lingering)
            .map(|(_, c)| {
                let state = ApiConnState {
                    input: c.input.clone(),
                    output: c.out[c.out_pos..].to_vec(),
                    last: c.last,
                };
                (c.sock.as_raw_fd(), state)
            })
            .collect()
    }

    /// Resumes a connection handed over by a live upgrade.
    pub fn import(
        &mut self,
        mut sock: TcpStream,
        state: ApiConnState,
        now: Instant,
        registry: &Registry,
    ) -> io::Result<()> {
        if self.conns.len() >= MAX_API_CONNECTIONS {
            return Ok(());
        }
        let entry = self.conns.vacant_entry();
        let token = Token(API_START + entry.key());
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(ApiConn {
            sock,
            input: state.input,
            out: state.output,
            out_pos: 0,
            answers: VecDeque::new(),
            last: state.last,
            lingering: false,
            deadline: now + API_IDLE_TIMEOUT,
        });
        Ok(())
    }

    /// The drain began: no new API connections (open ones get 503 for publishes).
    pub fn stop_accepting(&mut self, registry: &Registry) {
        if let Some(mut l) = self.listener.take() {
            let _ = registry.deregister(&mut l);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
    }

    /// Drops the connections past their deadline.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        if self.conns.is_empty() {
            return;
        }
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            self.drop_conn(key, registry);
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
                    log::warn!("api: accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_API_CONNECTIONS {
                log::warn!("api: {MAX_API_CONNECTIONS} connections open, closing a new one");
                continue;
            }
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let token = Token(API_START + entry.key());
            if registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            entry.insert(ApiConn {
                sock,
                input: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                answers: VecDeque::new(),
                last: false,
                lingering: false,
                deadline: now + API_IDLE_TIMEOUT,
            });
        }
    }

    fn drop_conn(&mut self, key: usize, registry: &Registry) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut c.sock);
        }
    }

    /// Writes what is ready; closes a finished connection. Returns false if it was dropped.
    fn write(&mut self, key: usize, now: Instant, registry: &Registry) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        while c.out_pos < c.out.len() {
            match c.sock.write(&c.out[c.out_pos..]) {
                Ok(0) => {
                    self.drop_conn(key, registry);
                    return false;
                }
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(key, registry);
                    return false;
                }
            }
        }
        c.out.clear();
        c.out_pos = 0;
        if c.last && c.answers.is_empty() && !c.lingering {
            // Shut down our side and wait for the peer's FIN, so that unread input does not
            // turn our close into a reset that destroys the answer.
            let _ = c.sock.shutdown(Shutdown::Write);
            c.lingering = true;
            c.deadline = now + LINGER;
        }
        true
    }
}

impl<H: Handler> EventLoop<H> {
    /// Handles readiness on the API listener or one of its connections.
    pub(super) fn serve_api(&mut self, token: Token) {
        if token == API_LISTENER {
            return self.api.accept(self.now, self.poll.registry());
        }
        let key = token.0 - API_START;
        let registry = self.poll.registry();
        let Some(c) = self.api.conns.get_mut(key) else {
            return; // Readiness for a connection already gone.
        };
        // Input that is neither a whole request nor past a limit stays below this.
        let bound = MAX_HEAD as u64 + self.config.max_message_size;
        let mut eof = false;
        loop {
            if !c.lingering && c.input.len() as u64 > bound {
                break; // The parser answers 413 or 431 from what is here.
            }
            let start = c.input.len();
            c.input.resize(start + READ_CHUNK, 0);
            let read = c.sock.read(&mut c.input[start..]);
            c.input.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) if c.lingering || c.last => c.input.clear(),
                Ok(_) => c.deadline = self.now + API_IDLE_TIMEOUT,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if c.lingering && eof {
            return self.api.drop_conn(key, registry);
        }
        let mut used = 0;
        let mut pending = false;
        while !c.last {
            let parsed = api::parse(
                &c.input[used..],
                &self.config.api_token,
                self.config.max_message_size,
            );
            let answer = match parsed {
                Ok(None) => break,
                Ok(Some(p)) => {
                    used += p.used;
                    c.last = !p.keep_alive;
                    let metrics = matches!(p.request, Request::Metrics)
                        .then(|| super::metrics::render(&snapshot!(self)));
                    let (status, answer) = respond(
                        p.request,
                        p.keep_alive,
                        &mut self.hub,
                        self.drain.is_some(),
                        metrics.unwrap_or_default(),
                    );
                    pending |= matches!(answer, Answer::Publish { .. });
                    if let Some(status) = status {
                        *self.api.requests.entry(status).or_default() += 1;
                    }
                    answer
                }
                Err(e) => {
                    c.last = true;
                    *self.api.requests.entry(e.status()).or_default() += 1;
                    log::debug!("api: {} {}", e.status(), e.detail());
                    let mut out = Vec::new();
                    let body = format!("{}\n", e.detail());
                    api::write_response(
                        &mut out,
                        e.status(),
                        "text/plain; charset=utf-8",
                        e.headers(),
                        body.as_bytes(),
                        false,
                    );
                    Answer::Ready(out)
                }
            };
            c.answers.push_back(answer);
        }
        c.input.drain(..used);
        if c.last {
            c.input = Vec::new();
        }
        if eof && !c.last {
            // The client hung up: answer what it asked, then close.
            c.last = true;
        }
        if !c.answers.is_empty() {
            if pending {
                self.api.waiting.push(key);
            } else {
                let mut resolve = |t: Ticket| resolve(t, &self.hub, self.broker.as_mut());
                if let Some(c) = self.api.conns.get_mut(key) {
                    render_answers(c, &mut resolve, &mut self.api.requests);
                }
            }
        }
        self.api.write(key, self.now, registry);
    }

    /// Answers the publishes of the turn (their fan-out is done) and whatever follows them.
    pub(super) fn answer_api(&mut self) {
        if self.api.waiting.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.api.waiting);
        waiting.retain(|&key| {
            let mut resolve = |t: Ticket| resolve(t, &self.hub, self.broker.as_mut());
            let Some(c) = self.api.conns.get_mut(key) else {
                return false;
            };
            let done = render_answers(c, &mut resolve, &mut self.api.requests);
            self.api.write(key, self.now, self.poll.registry());
            !done // Answers still waiting for the broker stay in the list.
        });
        self.api.waiting = waiting;
    }
}

/// Turns a request into its answer; publishes into the hub. Returns the status when it is
/// known now (a publish's 200 is counted when it is answered).
fn respond(
    request: Request<'_>,
    keep_alive: bool,
    hub: &mut Hub,
    draining: bool,
    metrics: String,
) -> (Option<u16>, Answer) {
    let ready = |status: u16, content_type: &str, body: &str| {
        let mut out = Vec::new();
        api::write_response(
            &mut out,
            status,
            content_type,
            "",
            body.as_bytes(),
            keep_alive,
        );
        (Some(status), Answer::Ready(out))
    };
    match request {
        Request::Publish { .. } if draining => ready(
            503,
            "text/plain; charset=utf-8",
            "draining: not taking publications\n",
        ),
        Request::Publish {
            channel,
            text,
            body,
        } => {
            let message = match std::str::from_utf8(body) {
                Ok(t) if text => Message::Text(t),
                _ => Message::Binary(body),
            };
            let ticket = hub.publish(&channel, message);
            (
                None,
                Answer::Publish {
                    ticket,
                    channel,
                    keep_alive,
                },
            )
        }
        Request::Channels => {
            let mut body = String::from("{\"channels\":{");
            for (i, (name, n)) in hub.channels().into_iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                // Channel names never need escaping (see `pubsub::name`).
                let _ = write!(body, "{sep}\"{name}\":{n}");
            }
            body.push_str("}}\n");
            ready(200, "application/json", &body)
        }
        Request::Metrics => ready(200, "text/plain; version=0.0.4; charset=utf-8", &metrics),
    }
}

/// How a publication ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Queued for this many local subscribers.
    Local(u32),
    /// Accepted by Redis, which handed it to this many wsd instances.
    Instances(u32),
    /// Not delivered: the broker is down or refused it.
    Failed,
}

/// The outcome of a publication, once known.
fn resolve(ticket: Ticket, hub: &Hub, broker: Option<&mut Broker>) -> Option<Outcome> {
    match ticket {
        Ticket::Remote(id) => match broker?.take_result(id)? {
            Some(n) => Some(Outcome::Instances(n)),
            None => Some(Outcome::Failed),
        },
        local => hub.delivered(local).map(Outcome::Local),
    }
}

/// Moves the answers that can be given now into the output, in order; returns whether all
/// were given (a publication the broker has not confirmed yet holds back the rest).
fn render_answers(
    c: &mut ApiConn,
    resolve: &mut dyn FnMut(Ticket) -> Option<Outcome>,
    requests: &mut BTreeMap<u16, u64>,
) -> bool {
    while let Some(answer) = c.answers.pop_front() {
        match answer {
            Answer::Ready(bytes) => c.out.extend_from_slice(&bytes),
            Answer::Publish {
                ticket,
                channel,
                keep_alive,
            } => {
                let Some(outcome) = resolve(ticket) else {
                    c.answers.push_front(Answer::Publish {
                        ticket,
                        channel,
                        keep_alive,
                    });
                    return false;
                };
                let (status, body) = match outcome {
                    Outcome::Local(n) => (
                        200,
                        format!("{{\"channel\":\"{channel}\",\"subscribers\":{n}}}\n"),
                    ),
                    Outcome::Instances(n) => (
                        200,
                        format!("{{\"channel\":\"{channel}\",\"instances\":{n}}}\n"),
                    ),
                    Outcome::Failed => (
                        503,
                        format!(
                            "{{\"channel\":\"{channel}\",\"error\":\"broker unavailable: not published\"}}\n"
                        ),
                    ),
                };
                api::write_response(
                    &mut c.out,
                    status,
                    "application/json",
                    "",
                    body.as_bytes(),
                    keep_alive,
                );
                *requests.entry(status).or_default() += 1;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_do_not_overlap_the_other_reserved_ones() {
        assert!(owns(API_LISTENER));
        assert!(owns(Token(API_START)));
        assert!(!owns(Token(API_START - 1)));
        assert!(!owns(Token(usize::MAX - 9)));
        assert!(!owns(super::super::metrics::METRICS));
        assert!(!owns(Token(API_START + MAX_API_CONNECTIONS)));
    }

    #[test]
    fn a_publish_to_nobody_is_answered_with_zero() {
        let mut hub = Hub::default();
        let (status, answer) = respond(
            Request::Publish {
                channel: "news".into(),
                text: true,
                body: b"hi",
            },
            true,
            &mut hub,
            false,
            String::new(),
        );
        assert_eq!(status, None);
        assert!(matches!(
            answer,
            Answer::Publish {
                ticket: Ticket::Done(0),
                ..
            }
        ));
        let (status, _) = respond(
            Request::Publish {
                channel: "news".into(),
                text: true,
                body: b"hi",
            },
            true,
            &mut hub,
            true,
            String::new(),
        );
        assert_eq!(status, Some(503));
    }
}
