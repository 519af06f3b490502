//! The event loop: one thread, one `mio::Poll`, the listener and the signals on reserved tokens,
//! connections in a slab; the drain on SIGTERM/SIGINT.
//!
//! Running under systemd adds small hooks, each in its own module: `activation` (inherited
//! listeners), `notify` (sd_notify), `metrics` (counters and `/metrics`), `drain` (the paced
//! drain).

mod activation;
mod conn;
mod drain;
mod metrics;
mod notify;
mod timers;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::Config;
use crate::handler::Handler;
use crate::protocol::close::CloseState;
use crate::protocol::handshake::Reject;
use crate::protocol::CloseCode;

use conn::{Conn, Context, Ending, Phase, Scratch};
use drain::Pacer;
use metrics::{Metrics, Side, Stats};
use notify::Notifier;
use timers::Timers;

/// The listening socket's token.
const LISTENER: Token = Token(usize::MAX - 1);
/// The signal pipe's token (`usize::MAX` itself is reserved by mio).
const SIGNALS: Token = Token(usize::MAX - 2);
/// Size of the loop's one shared read buffer; every connection reads into it.
const READ_BUF_SIZE: usize = 64 * 1024;
/// Readiness events taken per `poll` call.
const EVENTS_CAPACITY: usize = 1024;

/// A connection's key in the slab; also its mio token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub usize);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// How the loop ended.
#[derive(Debug)]
pub enum Exit {
    /// A signal started the drain and every connection is gone.
    Drained(DrainReport),
    /// A second signal arrived during the drain.
    Aborted,
}

/// What the drain did, logged as one line at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections whose close handshake completed.
    pub clean: usize,
    /// Connections that did not answer our Close within `close_timeout`.
    pub timed_out: usize,
    /// Connections that were reset or failed.
    pub errored: usize,
    /// Handshakes in progress that were answered with 503.
    pub refused: usize,
    pub duration: Duration,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drain finished in {} ms: {} closed cleanly, {} timed out, {} errored, {} handshakes refused",
            self.duration.as_millis(),
            self.clean,
            self.timed_out,
            self.errored,
            self.refused
        )
    }
}

/// A bound server, ready to run.
pub struct Server {
    config: Config,
    listener: TcpListener,
    metrics: Option<TcpListener>,
}

impl Server {
    /// Binds `config.listen` (and `config.metrics_listen` if set).
    pub fn bind(config: Config) -> io::Result<Server> {
        let listener = bind(config.listen)?;
        let metrics = config.metrics_listen.map(bind).transpose()?;
        Ok(Server {
            config,
            listener,
            metrics,
        })
    }

    /// Serves an already bound listening socket (tests, embedding); binds `metrics_listen`.
    pub fn from_listener(config: Config, listener: std::net::TcpListener) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let metrics = config.metrics_listen.map(bind).transpose()?;
        Ok(Server {
            config,
            listener: TcpListener::from_std(listener),
            metrics,
        })
    }

    /// Serves the listening sockets systemd passed in (socket activation), binding the
    /// addresses of `config` for those it did not pass.
    pub fn start(config: Config) -> io::Result<Server> {
        let inherited = activation::take()?;
        let metrics = match inherited.metrics {
            Some(l) => Some(nonblocking(l)?),
            None => config.metrics_listen.map(bind).transpose()?,
        };
        let listener = match inherited.websocket {
            Some(l) => nonblocking(l)?,
            None => bind(config.listen)?,
        };
        Ok(Server {
            config,
            listener,
            metrics,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the loop until a signal's drain completes.
    pub fn run<H: Handler>(self, handler: H) -> io::Result<Exit> {
        let mut event_loop = EventLoop::new(self.config, self.listener, self.metrics, handler)?;
        event_loop.run()
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

fn nonblocking(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener))
}

struct Drain {
    started: Instant,
    report: DrainReport,
}

struct EventLoop<H> {
    config: Config,
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    handler: H,
    scratch: Scratch,
    timers: Timers,
    drain: Option<Drain>,
    now: Instant,
    stats: Stats,
    metrics: Metrics,
    notify: Notifier,
    pacer: Pacer,
}

impl<H: Handler> EventLoop<H> {
    fn new(
        config: Config,
        mut listener: TcpListener,
        metrics: Option<TcpListener>,
        handler: H,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        log::info!(
            "listening on {} (max {} connections)",
            listener.local_addr()?,
            config.max_connections
        );
        let metrics = Metrics::new(metrics, poll.registry())?;
        Ok(EventLoop {
            config,
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            handler,
            scratch: Scratch {
                read: vec![0; READ_BUF_SIZE],
                cork: Vec::with_capacity(READ_BUF_SIZE),
            },
            timers: Timers::default(),
            drain: None,
            now: Instant::now(),
            stats: Stats::default(),
            metrics,
            notify: Notifier::from_env(),
            pacer: Pacer::default(),
        })
    }

    fn run(&mut self) -> io::Result<Exit> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        self.notify.ready(Instant::now(), self.conns.len());
        loop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => {
                        if self.on_signals() {
                            log::warn!(
                                "second signal: exiting now with {} connections open",
                                self.conns.len()
                            );
                            return Ok(Exit::Aborted);
                        }
                    }
                    token if metrics::owns(token) => self.serve_metrics(token),
                    token => {
                        let to_eof = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || to_eof;
                        self.serve(ConnId(token.0), readable, event.is_writable(), to_eof);
                    }
                }
            }
            self.expire_timers();
            self.send_paced_closes();
            self.metrics.expire(self.now, self.poll.registry());
            self.notify_tick();
            if let Some(drain) = &mut self.drain {
                if self.conns.is_empty() {
                    drain.report.duration = drain.started.elapsed();
                    log::info!("{}", drain.report);
                    return Ok(Exit::Drained(drain.report));
                }
            }
        }
    }

    /// How long `poll` may sleep: until the earliest connection deadline, drain slot, scrape
    /// deadline or notification due.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let hooks = [
            self.pacer.next(),
            self.metrics.next_deadline(),
            self.notify.next_wakeup(),
        ];
        let hook = hooks.into_iter().flatten().min();
        let hook = hook.map(|at| at.saturating_duration_since(now));
        match (self.timers.timeout(now), hook) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut sock, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the backlog waits for the next readiness edge.
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.config.max_connections {
                log::debug!("{peer}: refused, {} connections open", self.conns.len());
                self.stats.rejected(Reject::Unavailable.status());
                let mut out = Vec::new();
                Reject::Unavailable.write_response(&mut out);
                let _ = io::Write::write(&mut sock, &out);
                let _ = sock.shutdown(std::net::Shutdown::Write);
                continue;
            }
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let id = ConnId(entry.key());
            // Registered once for both directions, edge-triggered: no re-registration as a
            // connection's state changes; a readiness we do not need costs one spurious wakeup.
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(id.0),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("{peer}: cannot register: {e}");
                continue;
            }
            let deadline = self.now + self.config.handshake_timeout;
            entry.insert(Conn::new(sock, self.config.limits(), deadline));
            self.timers.insert(deadline, id.0);
            self.stats.accepted += 1;
            log::debug!("{id}: accepted from {peer}");
        }
    }

    /// Returns true when this is a second signal and the loop must end at once.
    fn on_signals(&mut self) -> bool {
        let mut received = 0;
        for signal in self.signals.pending() {
            log::info!("received signal {signal}");
            received += 1;
        }
        if received == 0 {
            return false; // A spurious wakeup.
        }
        if self.drain.is_some() || received > 1 {
            return true;
        }
        self.start_drain();
        false
    }

    fn start_drain(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let spread = self.config.drain_spread;
        log::info!(
            "draining {} connections (close timeout {:?}, spread {:?})",
            self.conns.len(),
            self.config.close_timeout,
            spread
        );
        self.drain = Some(Drain {
            started: self.now,
            report: DrainReport::default(),
        });
        let until = self.now + self.config.drain_bound();
        self.notify.stopping(self.now, self.conns.len(), until);
        let ids: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        let mut paced = Vec::new();
        for key in ids {
            if !spread.is_zero() && self.conns[key].phase == Phase::Open {
                paced.push(key); // Its Close goes out at its slot: `send_paced_closes`.
                continue;
            }
            self.drain_one(ConnId(key));
        }
        self.pacer.schedule(paced, self.now, spread);
    }

    /// Handles what already arrived on a connection, then sends its Close (or 503).
    fn drain_one(&mut self, id: ConnId) {
        let reason = self.config.close_reason.clone();
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        let mut cx = context(&self.config, id, true, &mut self.scratch, &mut self.stats);
        // Messages that already arrived are handled, and their answers queued, before the
        // Close: nothing a client sent before the drain is lost.
        conn.read_ready(&mut cx, &mut self.handler, false);
        match conn.phase {
            Phase::Handshake => {
                let mut out = std::mem::take(&mut cx.scratch.cork);
                conn.reject(Reject::Unavailable, &mut out, id, cx.stats);
                cx.scratch.cork = out;
                conn.flush_cork(&mut cx);
                if let Some(drain) = &mut self.drain {
                    drain.report.refused += 1;
                }
            }
            Phase::Open => conn.start_close(CloseCode::GOING_AWAY, &reason, &mut cx),
            Phase::Closing { .. } => {}
        }
        self.settle(id);
    }

    /// Handles readiness on one connection.
    fn serve(&mut self, id: ConnId, readable: bool, writable: bool, to_eof: bool) {
        if !self.conns.contains(id.0) {
            return; // Readiness for a connection already gone.
        }
        let draining = self.drain.is_some();
        let mut cx = context(
            &self.config,
            id,
            draining,
            &mut self.scratch,
            &mut self.stats,
        );
        let conn = &mut self.conns[id.0];
        if writable {
            cx.stats.sent_bytes += conn.flush() as u64;
        }
        if readable {
            conn.read_ready(&mut cx, &mut self.handler, to_eof);
        }
        self.settle(id);
    }

    /// Moves a connection on after IO: close TCP when its exchange is over, arm its timers.
    fn settle(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        self.stats.sent_bytes += conn.flush() as u64;
        if conn.failed && conn.phase == Phase::Open {
            conn.phase = Phase::Closing { shut_down: false };
            conn.deadline = None;
        }
        let state = conn.session.close_state();
        if conn.phase == Phase::Open && state.is_finished() && !conn.has_output() {
            // §7.1.1: once both Close frames are exchanged the server closes TCP first.
            return self.remove(id, Ending::Clean);
        }
        if conn.gone {
            let ending = match (conn.phase, state) {
                (Phase::Closing { .. }, _) if !conn.failed => Ending::Clean,
                (_, CloseState::ClosedByPeer | CloseState::Acknowledged) => Ending::Clean,
                _ => Ending::Errored,
            };
            return self.remove(id, ending);
        }
        conn.shut_down_when_flushed();
        let waits_for_peer = state == CloseState::ClosedByUs || conn.phase != Phase::Open;
        let waits = waits_for_peer && conn.phase != Phase::Handshake;
        if waits && conn.deadline.is_none() {
            let at = self.now + self.config.close_timeout;
            conn.deadline = Some(at);
            self.timers.insert(at, id.0);
        }
    }

    fn expire_timers(&mut self) {
        while let Some((at, key)) = self.timers.pop_due(self.now) {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.deadline != Some(at) {
                continue; // Moved or cleared since.
            }
            let id = ConnId(key);
            match conn.phase {
                Phase::Handshake => {
                    log::debug!("{id}: handshake timed out");
                    self.stats.handshake_timeouts += 1;
                }
                _ => {
                    log::debug!("{id}: close timed out");
                    self.stats.close_timeouts += 1;
                }
            }
            let ending = if conn.failed {
                Ending::Errored
            } else {
                Ending::TimedOut
            };
            self.remove(id, ending);
        }
    }

    fn remove(&mut self, id: ConnId, ending: Ending) {
        let mut conn = self.conns.remove(id.0);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        let was_open = conn.phase != Phase::Handshake;
        log::debug!("{id}: closed ({ending:?})");
        if was_open {
            self.handler.on_close(id, conn.peer_code);
            if conn.session.close_state() == CloseState::Open {
                // No Close either way: 1006 is the code reserved for reporting exactly this.
                let side = if conn.gone {
                    Side::Client
                } else {
                    Side::Server
                };
                self.stats.closed(side, 1006);
            }
        }
        if let Some(drain) = &mut self.drain {
            match ending {
                Ending::Clean if conn.session.close_state() != CloseState::Open => {
                    drain.report.clean += 1
                }
                Ending::Clean => {}
                Ending::TimedOut => drain.report.timed_out += 1,
                Ending::Errored => drain.report.errored += 1,
            }
        }
    }
}

fn context<'a>(
    config: &Config,
    id: ConnId,
    draining: bool,
    scratch: &'a mut Scratch,
    stats: &'a mut Stats,
) -> Context<'a> {
    Context {
        id,
        max_handshake_size: config.max_handshake_size,
        draining,
        scratch,
        stats,
    }
}
