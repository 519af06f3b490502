//! The event loop: one thread, one `mio::Poll`, the listener and the signals on reserved tokens,
//! connections in a slab, their deadlines in a timing wheel; the drain on SIGTERM/SIGINT.
//!
//! Running under systemd adds small hooks, each in its own module: `activation` (inherited
//! listeners), `notify` (sd_notify), `metrics` (counters and `/metrics`), `drain` (the paced
//! drain).

mod activation;
mod api;
mod broker;
mod conn;
mod drain;
mod metrics;
mod notify;
mod reload;
mod timers;
mod upgrade;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::Config;
use crate::handler::{Ctx, Handler};
use crate::protocol::close::CloseState;
use crate::protocol::handshake::Reject;
use crate::protocol::{CloseCode, Message};
use crate::pubsub::remote::Queue;
use crate::pubsub::{Hub, Job, Publisher};
use crate::tls::{Certified, Tls};

pub use crate::conn_id::ConnId;

use api::Api;
use broker::Broker;

pub use broker::MAX_SHARDS;
use conn::{BufPool, Conn, Context, Ending, Phase, ReadStop, Scratch, Timer};
use drain::Pacer;
use metrics::{Metrics, Side, Stats};
use notify::Notifier;
use reload::{Origin, Reload, RELOAD};
use timers::Wheel;
use upgrade::Handover;
pub use upgrade::STATE_VERSION;

/// The [`Context`] a connection is served with. A macro rather than a method because it borrows
/// fields of the loop beside `self.conns`, where the connection itself is borrowed from.
macro_rules! context {
    ($lp:ident, $id:expr) => {
        Context {
            id: $id,
            config: &$lp.config,
            draining: $lp.drain.is_some(),
            now_ms: loop_ms($lp.started, $lp.now),
            scratch: &mut $lp.scratch,
            stats: &mut $lp.stats,
            hub: &mut $lp.hub,
            handler_timer: &mut $lp.handler_timer,
            now: $lp.now,
        }
    };
}

/// The handler's [`Ctx`] outside any connection (closes, wake-ups, timers); a macro for the
/// same reason as `context!`.
macro_rules! loop_ctx {
    ($lp:ident) => {
        Ctx::new(
            &mut $lp.hub,
            None,
            &mut $lp.handler_timer,
            $lp.now,
            $lp.drain.is_some(),
        )
    };
}

/// Milliseconds of the loop's clock at `now`. Wraps after 49 days; the idle clock only ever
/// compares nearby values.
fn loop_ms(started: Instant, now: Instant) -> u32 {
    now.duration_since(started).as_millis() as u32
}

/// The listening socket's token.
const LISTENER: Token = Token(usize::MAX - 1);
/// The signal pipe's token (`usize::MAX` itself is reserved by mio).
const SIGNALS: Token = Token(usize::MAX - 2);
/// The wss:// listener's token (`tls_listen`), below every other reserved range.
const TLS_LISTENER: Token = Token(broker::BROKER_START - 1);
/// Size of the loop's one shared read buffer; every connection reads into it. Large enough that
/// a 64 KiB frame and its header land whole and are handled in place, without a copy.
const READ_BUF_SIZE: usize = 256 * 1024;
/// Reads one connection may do per loop turn (one buffer's worth, 256 KiB), so one flooding
/// client cannot starve the rest; a connection with more waiting is queued and served again
/// next turn.
const READ_BUDGET: usize = 1;
/// Readiness events taken per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
/// Payload of the keep-alive Pings wsd sends.
const PING_PAYLOAD: &[u8] = b"wsd";
/// The token of the [`Waker`] other threads' [`Publisher`]s wake the loop with.
const WAKER: Token = Token(usize::MAX - 9);
/// Jobs a [`Publisher`] may queue before its calls fail with `Full`.
pub const PUBLISH_QUEUE_CAPACITY: usize = 65_536;
/// Jobs taken from the queue per loop turn, so other threads cannot starve the sockets.
const JOBS_PER_TURN: usize = 4096;
/// Largest connection key a live upgrade's state may carry (keys are slab slots, dense from 0).
const MAX_HANDED_OVER_KEY: usize = 1 << 24;
/// Longest a turn's deliveries wait for this instance's own publications to come back from
/// the broker, so that both go out in one write per subscriber (see [`EventLoop::holds_fan_out`]).
const COALESCE_MAX: Duration = Duration::from_millis(2);

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
    poll: Poll,
    queue: Arc<Queue>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    api: Option<TcpListener>,
    /// The separate wss:// listener (`tls_listen`).
    tls_listener: Option<TcpListener>,
    /// The certificate pair, when TLS is on.
    certified: Option<Certified>,
    /// Connections handed over by the process this one replaces (a live upgrade).
    handover: Option<Handover>,
}

/// Listeners systemd (or the process this one replaces) passed in besides the WebSocket one.
#[derive(Default)]
struct Sides {
    metrics: Option<TcpListener>,
    api: Option<TcpListener>,
    tls: Option<TcpListener>,
}

impl Server {
    /// Binds `config.listen` (and `metrics_listen`, `api_listen`, `tls_listen` if set).
    pub fn bind(config: Config) -> io::Result<Server> {
        let listener = bind(config.listen, config.listen_backlog, config.reuse_port)?;
        Server::new(config, listener, Sides::default())
    }

    /// Serves an already bound listening socket (tests, embedding); binds `metrics_listen`,
    /// `api_listen` and `tls_listen`.
    pub fn from_listener(config: Config, listener: std::net::TcpListener) -> io::Result<Server> {
        Server::new(config, nonblocking(listener)?, Sides::default())
    }

    /// Serves the listening sockets systemd passed in (socket activation), binding the
    /// addresses of `config` for those it did not pass.
    ///
    /// Started by a live upgrade (`WSD_UPGRADE_FD`), it takes the listening sockets and every
    /// connection from the process it replaces instead.
    pub fn start(config: Config) -> io::Result<Server> {
        if let Some(handover) = upgrade::take_over().map_err(|e| {
            io::Error::other(format!("live upgrade: {e}; the old process keeps serving"))
        })? {
            return Server::from_handover(config, handover);
        }
        let inherited = activation::take()?;
        let sides = Sides {
            metrics: inherited.metrics.map(nonblocking).transpose()?,
            api: inherited.api.map(nonblocking).transpose()?,
            tls: inherited.tls.map(nonblocking).transpose()?,
        };
        let listener = match inherited.websocket {
            Some(l) => nonblocking(l)?,
            None => bind(config.listen, config.listen_backlog, config.reuse_port)?,
        };
        Server::new(config, listener, sides)
    }

    /// Serves what the replaced process handed over: its listeners and connections.
    fn from_handover(config: Config, mut handover: Handover) -> io::Result<Server> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let mut fds = std::mem::take(&mut handover.fds).into_iter();
        let mut next_listener = || -> io::Result<TcpListener> {
            let fd = fds
                .next()
                .ok_or_else(|| io::Error::other("missing listener"))?;
            // SAFETY: the descriptor came over SCM_RIGHTS and is owned by nothing else.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
            nonblocking(l)
        };
        let listener = next_listener()?;
        let metrics = handover
            .state
            .has_metrics
            .then(&mut next_listener)
            .transpose()?;
        let api = handover
            .state
            .has_api
            .then(&mut next_listener)
            .transpose()?;
        let tls = handover
            .state
            .has_tls
            .then(&mut next_listener)
            .transpose()?;
        handover.fds = fds.collect();
        let sides = Sides { metrics, api, tls };
        let poll = handover.poll.take().map_or_else(Poll::new, Ok)?;
        let mut server = Server::with_poll(config, listener, sides, poll)?;
        server.handover = Some(handover);
        Ok(server)
    }

    /// Binds what was not passed in, loads the certificate, and makes the poll and the
    /// publishers' queue.
    fn new(config: Config, listener: TcpListener, sides: Sides) -> io::Result<Server> {
        Server::with_poll(config, listener, sides, Poll::new()?)
    }

    /// As [`Server::new`], with a poll made before (a live upgrade's, which the presented
    /// connections are registered with already).
    fn with_poll(
        config: Config,
        listener: TcpListener,
        sides: Sides,
        poll: Poll,
    ) -> io::Result<Server> {
        let Sides { metrics, api, tls } = sides;
        let certified = config
            .load_tls()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls_listener = match (tls, config.tls_listen) {
            (Some(l), _) if certified.is_some() => Some(l),
            (Some(_), _) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "socket activation passed a socket named tls, but tls_cert is not set",
                ))
            }
            (None, Some(addr)) => Some(bind(addr, config.listen_backlog, config.reuse_port)?),
            (None, None) => None,
        };
        let metrics = match metrics {
            Some(l) => Some(l),
            None => bind_side(config.metrics_listen, false)?,
        };
        let api = match api {
            Some(l) => Some(l),
            None => bind_side(config.api_listen, config.reuse_port)?,
        };
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok(Server {
            config,
            poll,
            queue: Queue::new(PUBLISH_QUEUE_CAPACITY, Box::new(waker)),
            listener,
            metrics,
            api,
            tls_listener,
            certified,
            handover: None,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address wss:// clients connect to, when TLS is on: `tls_listen`, or `listen` itself.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        match &self.tls_listener {
            Some(l) => l.local_addr().ok(),
            None => self.certified.as_ref().and(self.listener.local_addr().ok()),
        }
    }

    /// The publish API's address, when it is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle other threads publish, send and wake through (up to
    /// [`PUBLISH_QUEUE_CAPACITY`] jobs queued).
    pub fn publisher(&self) -> Publisher {
        Publisher::new(Arc::clone(&self.queue))
    }

    /// Runs the loop until a signal's drain completes.
    pub fn run<H: Handler>(self, handler: H) -> io::Result<Exit> {
        let queue = Arc::clone(&self.queue);
        let result = EventLoop::new(self, handler).and_then(|mut l| l.run());
        queue.close();
        result
    }
}

/// Backlog of the metrics and API listeners: their clients are few.
const SIDE_BACKLOG: u32 = 64;

fn bind_side(addr: Option<SocketAddr>, reuse_port: bool) -> io::Result<Option<TcpListener>> {
    addr.map(|addr| bind(addr, SIDE_BACKLOG, reuse_port))
        .transpose()
}

/// Binds a listening socket with our own backlog: `mio`'s `bind` uses std's 128, and a burst of
/// reconnecting clients (after a restart) overflows that, each dropped SYN costing its client a
/// retransmission of a second or more.
///
/// With `reuse_port` the socket is bound with `SO_REUSEPORT`: several processes (one per core)
/// bind the same address and the kernel spreads new connections over them.
fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> io::Result<TcpListener> {
    let listen = || -> io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    listen()
        .map(TcpListener::from_std)
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
    /// Whether `listener` serves wss:// (TLS on without a separate `tls_listen`).
    listener_tls: bool,
    tls_listener: Option<TcpListener>,
    /// The certificate pair new TLS handshakes are served with (SIGHUP replaces it).
    certified: Option<Certified>,
    signals: Signals,
    conns: Slab<Conn>,
    handler: H,
    scratch: Scratch,
    wheel: Wheel,
    /// Keys of the timers due this turn, kept from turn to turn.
    due: Vec<usize>,
    /// Connections whose read budget ran out with input still waiting.
    read_queue: VecDeque<ConnId>,
    /// Connections counted against `max_connections`.
    counted: usize,
    /// Connections per address, when `max_connections_per_ip` is on.
    per_ip: HashMap<IpAddr, usize>,
    drain: Option<Drain>,
    started: Instant,
    now: Instant,
    stats: Stats,
    metrics: Metrics,
    notify: Notifier,
    pacer: Pacer,
    /// Channels, subscriptions and this turn's publications.
    hub: Hub,
    /// When the handler's timer fires ([`Ctx::set_timer`]).
    handler_timer: Option<Instant>,
    /// Jobs from other threads.
    queue: Arc<Queue>,
    jobs: Vec<Job>,
    /// Connections the fan-out left needing a look (dropped deliveries, a failed write).
    touched: Vec<ConnId>,
    api: Api,
    /// The Redis broker, when `broker` is set.
    broker: Option<Broker>,
    /// A drain waiting for the broker's barrier before its Close frames, until this deadline.
    drain_barrier: Option<Instant>,
    /// Since when the fan-out waits for publications on their way back from the broker.
    held_since: Option<Instant>,
    /// A live upgrade in progress, and what the new process is started as.
    reload: Option<Reload>,
    origin: Origin,
}

impl<H: Handler> EventLoop<H> {
    fn new(server: Server, handler: H) -> io::Result<Self> {
        let Server {
            config,
            poll,
            queue,
            mut listener,
            metrics,
            api,
            mut tls_listener,
            certified,
            handover,
        } = server;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(l) = &mut tls_listener {
            poll.registry()
                .register(l, TLS_LISTENER, Interest::READABLE)?;
        }
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR2, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let listener_tls = certified.is_some() && tls_listener.is_none();
        log::info!(
            "listening on {} ({}, max {} connections)",
            listener.local_addr()?,
            if listener_tls { "wss://" } else { "ws://" },
            config.max_connections
        );
        if let Some(l) = &tls_listener {
            log::info!("listening for wss:// on {}", l.local_addr()?);
        }
        if let Some(c) = &certified {
            log::info!(
                "TLS: serving {} (expires at {} Unix time)",
                config
                    .tls_cert
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display(),
                c.not_after
            );
        }
        let stats = Stats {
            tls_not_after: certified.as_ref().map(|c| c.not_after),
            ..Stats::default()
        };
        let metrics = Metrics::new(metrics, poll.registry())?;
        let api = Api::new(api, poll.registry())?;
        let now = Instant::now();
        let mut hub =
            Hub::with_compression(config.fanout_window_bits(), config.compression_threshold);
        let broker = (!config.broker.is_empty()).then(|| {
            hub.set_relay();
            log::info!(
                "broker: {} (channels prefixed {:?})",
                config.broker.join(", "),
                config.broker_prefix
            );
            Broker::new(
                &config.broker,
                &config.broker_prefix,
                config.broker_timeout,
                config.broker_backoff_max,
                now,
            )
        });
        Ok(EventLoop {
            // Address space for every connection up front; pages are touched only as used.
            conns: Slab::with_capacity(config.max_connections),
            config,
            poll,
            listener: Some(listener),
            listener_tls,
            tls_listener,
            certified,
            signals,
            handler,
            scratch: Scratch {
                read: vec![0; READ_BUF_SIZE],
                cork: Vec::with_capacity(READ_BUF_SIZE),
                pool: BufPool::default(),
                inflater: Default::default(),
                plain: Vec::new(),
                seal: Vec::new(),
            },
            wheel: Wheel::new(now),
            due: Vec::new(),
            read_queue: VecDeque::new(),
            counted: 0,
            per_ip: HashMap::new(),
            drain: None,
            started: now,
            now,
            stats,
            metrics,
            notify: Notifier::from_env(),
            pacer: Pacer::default(),
            hub,
            broker,
            drain_barrier: None,
            held_since: None,
            reload: None,
            origin: Origin::of_this_process(),
            handler_timer: None,
            queue,
            jobs: Vec::new(),
            touched: Vec::new(),
            api,
        })
        .map(|mut event_loop| {
            if let Some(h) = handover {
                event_loop.resume(h);
            }
            event_loop
        })
    }

    /// Installs the connections a live upgrade handed over, each where it stood.
    fn resume(&mut self, handover: Handover) {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let Handover {
            state,
            fds,
            mut presented,
            asked,
            received,
            old_gone,
            ..
        } = handover;
        let now_ms = self.now_ms();
        let mut fds = fds.into_iter();
        let (mut moved, mut lost) = (0, 0);
        // Each connection keeps its key (the token its presented socket is registered under).
        let mut slots: Vec<(usize, Conn)> = Vec::with_capacity(state.conns.len());
        let mut taken = std::collections::HashSet::with_capacity(state.conns.len());
        for st in state.conns {
            let key = st.key as usize;
            let sock = if st.presented {
                presented.remove(&st.key)
            } else {
                fds.next().and_then(|fd| {
                    // A socket presented under this key was closed since, the key reused.
                    if let Some(mut stale) = presented.remove(&st.key) {
                        let _ = self.poll.registry().deregister(&mut stale);
                    }
                    // SAFETY: the descriptor came over SCM_RIGHTS and is owned by nothing else.
                    let std_sock = unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
                    let mut sock = TcpStream::from_std(std_sock);
                    let registered = self.poll.registry().register(
                        &mut sock,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    registered.ok().map(|()| sock)
                })
            };
            let remaining = st.remaining_ms.map(Duration::from_millis);
            let channels = st.channels.clone();
            let conn = sock
                .filter(|_| key < MAX_HANDED_OVER_KEY && taken.insert(key))
                .and_then(|sock| Conn::import(sock, &self.config, st, now_ms));
            let Some(conn) = conn else {
                lost += 1;
                continue;
            };
            let id = ConnId(key);
            if conn.counted {
                self.counted += 1;
            }
            if let Some(ip) = conn.ip {
                *self.per_ip.entry(ip).or_insert(0) += 1;
            }
            let deflate = conn.session.deflate().map(|a| a.server_window);
            self.hub.set_deflate(id, deflate);
            if let Some(after) = remaining {
                self.wheel.arm(id.0, self.now + after);
            }
            for name in channels {
                let _ = self.hub.subscribe(id, &name);
            }
            slots.push((key, conn));
            moved += 1;
        }
        // Presented sockets the state left out: closed by the old process since.
        for (_, mut stale) in presented.drain() {
            let _ = self.poll.registry().deregister(&mut stale);
        }
        drop((presented, taken)); // Before the trim below: their pages go back too.
        let mut conns: Slab<Conn> = slots.into_iter().collect();
        conns.reserve(self.config.max_connections.saturating_sub(conns.len()));
        self.conns = conns;
        for st in state.api_conns {
            let Some(fd) = fds.next() else { break };
            // SAFETY: as above.
            let std_sock = unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
            let sock = TcpStream::from_std(std_sock);
            let _ = self.api.import(sock, st, self.now, self.poll.registry());
        }
        drop(fds);
        let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_millis();
        log::info!(
            "live upgrade: resumed {moved} connections ({lost} could not be restored): state \
             sent in {} ms, old process gone {} ms later, restored {} ms after that",
            ms(asked, received),
            ms(received, old_gone),
            ms(old_gone, Instant::now())
        );
        // The state's buffers are free again: give the pages back, so that a process that
        // took over holds no more memory than one that started fresh.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn run(&mut self) -> io::Result<Exit> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        self.notify.ready(Instant::now(), self.counted);
        loop {
            // Work left for the next turn (reads over budget, jobs, publications made by a
            // handler's on_close during the last fan-out) means no sleeping.
            let held = self.held_since.is_some();
            let busy = !self.read_queue.is_empty()
                || !self.jobs.is_empty()
                || (!self.hub.is_idle() && !held);
            let timeout = if !busy {
                self.timeout(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    TLS_LISTENER => self.accept(true),
                    SIGNALS => {
                        if self.on_signals() {
                            log::warn!(
                                "second signal: exiting now with {} connections open",
                                self.conns.len()
                            );
                            return Ok(Exit::Aborted);
                        }
                    }
                    WAKER => self.take_jobs(),
                    RELOAD => self.serve_reload(),
                    token if metrics::owns(token) => self.serve_metrics(token),
                    token if api::owns(token) => self.serve_api(token),
                    token if broker::owns(token) => {
                        if let Some(b) = &mut self.broker {
                            b.serve(token, &mut self.hub, self.now, self.poll.registry());
                        }
                    }
                    token => {
                        let to_eof = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || to_eof;
                        self.serve(ConnId(token.0), readable, event.is_writable(), to_eof);
                    }
                }
            }
            self.continue_reads();
            self.run_jobs();
            self.fire_handler_timer();
            self.relay();
            self.fan_out_unless_held();
            self.pass_drain_barrier();
            self.advance_reload();
            self.expire_timers();
            self.send_paced_closes();
            self.fan_out_unless_held();
            self.metrics.expire(self.now, self.poll.registry());
            self.api.expire(self.now, self.poll.registry());
            if let Some(drain) = &mut self.drain {
                if self.conns.is_empty() {
                    drain.report.duration = drain.started.elapsed();
                    log::info!("{}", drain.report);
                    return Ok(Exit::Drained(drain.report));
                }
            }
            self.notify_tick();
        }
    }

    /// How long `poll` may sleep: until the earliest connection deadline, drain slot, scrape
    /// deadline or notification due.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let hooks = [
            self.pacer.next(),
            self.metrics.next_deadline(),
            self.api.next_deadline(),
            self.notify.next_wakeup(),
            self.handler_timer,
            self.broker.as_ref().and_then(Broker::next_deadline),
            self.drain_barrier,
            self.held_since.map(|t| t + COALESCE_MAX),
            self.reload
                .as_ref()
                .map(|_| self.now + Duration::from_millis(100)),
        ];
        let hook = hooks.into_iter().flatten().min();
        let hook = hook.map(|at| at.saturating_duration_since(now));
        match (self.wheel.timeout(now), hook) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn now_ms(&self) -> u32 {
        loop_ms(self.started, self.now)
    }

    /// Accepts from the `listen` socket, or from `tls_listen` when `tls_listen` is set.
    fn accept(&mut self, from_tls_listener: bool) {
        let tls = from_tls_listener || self.listener_tls;
        loop {
            let listener = if from_tls_listener {
                &self.tls_listener
            } else {
                &self.listener
            };
            let Some(listener) = listener else {
                return;
            };
            let (sock, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the backlog waits for the next readiness edge.
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            let _ = sock.set_nodelay(true);
            let refusal = if self.counted >= self.config.max_connections {
                Some(Reject::Unavailable)
            } else if self.config.max_connections_per_ip > 0
                && self.per_ip.get(&peer.ip()).copied().unwrap_or(0)
                    >= self.config.max_connections_per_ip
            {
                Some(Reject::TooManyFromAddress)
            } else {
                None
            };
            self.admit(sock, peer, refusal, tls);
        }
    }

    /// Puts a new connection in the slab: to be served, or to be told `refusal` and closed
    /// (it stays until the client has read the answer, so the status is never lost to a reset).
    ///
    /// A wss:// connection that is refused is closed at once: its answer would need a whole TLS
    /// handshake, the very work a full server must not take on.
    fn admit(&mut self, mut sock: TcpStream, peer: SocketAddr, refusal: Option<Reject>, tls: bool) {
        let now_ms = self.now_ms();
        let tls = match (tls, &self.certified) {
            (false, _) => None,
            (true, Some(_)) if refusal.is_some() => {
                self.stats.accepted += 1;
                if let Some(reject) = refusal {
                    log::debug!("{peer}: refused (wss://, closed): {}", reject.detail());
                    self.stats.rejected(reject.status());
                }
                return;
            }
            (true, Some(c)) => match Tls::new(Arc::clone(&c.config)) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    log::warn!("{peer}: cannot start TLS: {e}");
                    return;
                }
            },
            (true, None) => return,
        };
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
            return;
        }
        let mut conn = Conn::new(sock, &self.config, now_ms);
        conn.tls = tls;
        self.stats.accepted += 1;
        if let Some(reject) = refusal {
            log::debug!("{peer}: refused: {}", reject.detail());
            conn.counted = false;
            let mut cx = context!(self, id);
            conn.reject(reject, &mut cx);
            conn.flush_cork(&mut cx);
        } else {
            self.counted += 1;
            if self.config.max_connections_per_ip > 0 {
                *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
                conn.ip = Some(peer.ip());
            }
            conn.timer = Timer::Handshake;
            self.wheel
                .arm(id.0, self.now + self.config.handshake_timeout);
            log::debug!("{id}: accepted from {peer}");
        }
        entry.insert(conn);
        self.settle(id);
    }

    /// Returns true when this is a second signal and the loop must end at once.
    fn on_signals(&mut self) -> bool {
        let mut received = 0;
        let mut reload = false;
        let pending: Vec<i32> = self.signals.pending().collect();
        let mut reload_tls = false;
        for signal in pending {
            log::info!("received signal {signal}");
            if signal == SIGHUP {
                reload_tls = true;
            } else if signal == SIGUSR2 {
                reload = true;
            } else {
                received += 1;
            }
        }
        if reload {
            self.start_reload();
        }
        if reload_tls {
            self.reload_tls();
        }
        if received == 0 {
            return false; // A spurious wakeup, or a reload.
        }
        if self.drain.is_some() || received > 1 {
            return true;
        }
        self.start_drain();
        false
    }

    /// A live upgrade is handing over: wss:// connections cannot move their TLS state, so each
    /// gets Close 1012 (Service Restart) and close_notify, and moves as a closing connection
    /// with `close_timeout` to finish.
    fn leave_tls_for_upgrade(&mut self) {
        let ids: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.tls.is_some())
            .map(|(key, _)| key)
            .collect();
        for &key in &ids {
            let id = ConnId(key);
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let mut cx = context!(self, id);
            if conn.leave_tls_for_upgrade(&mut cx) {
                cx.stats.closed(Side::Server, CloseCode::SERVICE_RESTART.0);
            }
            self.arm(id, Timer::Close, Some(self.config.close_timeout));
        }
        if !ids.is_empty() {
            log::info!(
                "live upgrade: {} wss:// connections closed with 1012 (TLS state cannot move)",
                ids.len()
            );
        }
    }

    /// SIGHUP: loads the certificate pair again for the handshakes to come; open connections
    /// keep the keys they have. A pair that does not load leaves the one in use.
    fn reload_tls(&mut self) {
        if self.certified.is_none() {
            log::info!("SIGHUP: TLS is off, nothing to reload");
            return;
        }
        match self.config.load_tls() {
            Ok(Some(c)) => {
                log::info!(
                    "TLS: reloaded the certificate (expires at {} Unix time)",
                    c.not_after
                );
                self.stats.tls_not_after = Some(c.not_after);
                self.stats.tls_reloads += 1;
                self.certified = Some(c);
            }
            Ok(None) => {}
            Err(e) => {
                log::error!("TLS: reload failed, still serving the previous certificate: {e}");
                self.stats.tls_reload_failures += 1;
            }
        }
    }

    fn start_drain(&mut self) {
        self.abort_reload("a drain began");
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        if let Some(mut listener) = self.tls_listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.api.stop_accepting(self.poll.registry());
        // What was published before the signal goes out before any Close.
        self.relay();
        self.fan_out();
        if let Some(b) = &mut self.broker {
            // Publications Redis accepted before the signal come back to this instance too:
            // the Close frames wait until they are in (bounded by broker_timeout).
            log::info!("draining: waiting for the broker's publications in flight");
            self.drain_barrier = Some(b.begin_barrier(self.now));
            self.drain = Some(Drain {
                started: self.now,
                report: DrainReport::default(),
            });
            let until = self.now + self.config.drain_bound() + self.config.broker_timeout;
            self.notify.stopping(self.now, self.conns.len(), until);
            return;
        }
        self.close_all();
    }

    /// The broker's barrier passed (or timed out): on with the drain's Close frames.
    fn pass_drain_barrier(&mut self) {
        let Some(deadline) = self.drain_barrier else {
            return;
        };
        let registry = self.poll.registry();
        let passed = self
            .broker
            .as_mut()
            .map_or(true, |b| b.barrier_passed(self.now, registry));
        if passed || self.now >= deadline {
            if !passed {
                log::warn!("draining: the broker did not answer in time; closing anyway");
            }
            self.drain_barrier = None;
            self.fan_out();
            self.close_all();
        }
    }

    /// Sends every connection its Close (or paces them over `drain_spread`).
    fn close_all(&mut self) {
        let spread = self.config.drain_spread;
        log::info!(
            "draining {} connections (close timeout {:?}, spread {:?})",
            self.conns.len(),
            self.config.close_timeout,
            spread
        );
        if self.drain.is_none() {
            self.drain = Some(Drain {
                started: self.now,
                report: DrainReport::default(),
            });
            let until = self.now + self.config.drain_bound();
            self.notify.stopping(self.now, self.conns.len(), until);
        }
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
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        let mut cx = context!(self, id);
        // Messages that already arrived are handled, and their answers queued, before the
        // Close: nothing a client sent before the drain is lost.
        conn.read_ready(&mut cx, &mut self.handler, false, usize::MAX);
        // Nor is anything published to it so far (its own publications included).
        if !self.hub.is_idle() {
            self.fan_out();
        }
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        let mut cx = context!(self, id);
        match conn.phase {
            Phase::Handshake if conn.tls.as_ref().is_some_and(|t| !t.is_established()) => {
                // No TLS yet to carry a 503 in: the handshake is cut short.
                conn.gone = true;
                if let Some(drain) = &mut self.drain {
                    drain.report.refused += 1;
                }
            }
            Phase::Handshake => {
                conn.reject(Reject::Unavailable, &mut cx);
                conn.flush_cork(&mut cx);
                if let Some(drain) = &mut self.drain {
                    drain.report.refused += 1;
                }
            }
            Phase::Open => {
                if conn.session.close_state() == CloseState::Open {
                    cx.stats.closed(Side::Server, CloseCode::GOING_AWAY.0);
                }
                let reason = cx.config.close_reason.as_str();
                conn.emit(&mut cx, |session, out| {
                    session.close(CloseCode::GOING_AWAY, reason, out);
                });
            }
            Phase::Closing { .. } => {}
        }
        self.settle(id);
    }

    /// Handles readiness on one connection.
    fn serve(&mut self, id: ConnId, readable: bool, writable: bool, to_eof: bool) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return; // Readiness for a connection already gone.
        };
        let mut cx = context!(self, id);
        let mut readable = readable;
        if writable {
            cx.stats.sent_bytes += conn.flush(&mut cx.scratch.pool) as u64;
            if conn.paused && conn.queued() <= cx.config.max_output_buffer / 2 {
                // Below the low-water mark: read again. Input that waited while paused raised
                // no new edge, so read now rather than wait for one.
                conn.paused = false;
                readable = true;
            }
        }
        conn.eof_signalled |= to_eof;
        if readable && !conn.read_queued {
            let to_eof = conn.eof_signalled;
            let stop = conn.read_ready(&mut cx, &mut self.handler, to_eof, READ_BUDGET);
            if stop == ReadStop::Budget {
                conn.read_queued = true;
                self.read_queue.push_back(id);
            }
        }
        self.settle(id);
    }

    /// Serves the connections whose read budget ran out last turn, once each.
    fn continue_reads(&mut self) {
        for _ in 0..self.read_queue.len() {
            let Some(id) = self.read_queue.pop_front() else {
                break;
            };
            if let Some(conn) = self.conns.get_mut(id.0) {
                conn.read_queued = false;
                self.serve(id, true, false, false);
            }
        }
    }

    /// Moves a connection on after IO: close TCP when its exchange is over, keep its one timer
    /// in step with its state.
    fn settle(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        self.stats.sent_bytes += conn.flush(&mut self.scratch.pool) as u64;
        if conn.failed && conn.phase == Phase::Open {
            conn.phase = Phase::Closing { shut_down: false };
        }
        let state = conn.session.close_state();
        if conn.phase == Phase::Open && state.is_finished() && conn.tls.is_some() {
            // Over TLS the close_notify follows the Close frames, then our FIN; the peer's FIN
            // (or close_timeout) ends the connection, so that it reads them all.
            conn.phase = Phase::Closing { shut_down: false };
        }
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
        self.stats.sent_bytes += conn.shut_down_when_flushed(&mut self.scratch) as u64;
        let want = match (conn.phase, state) {
            (Phase::Handshake, _) => Timer::Handshake,
            (Phase::Open, CloseState::Open) if conn.paused => Timer::SlowConsumer,
            (Phase::Open, CloseState::Open) if self.config.ping_interval.is_zero() => Timer::None,
            (Phase::Open, CloseState::Open) => match conn.timer {
                Timer::Pong => Timer::Pong,
                _ => Timer::Ping,
            },
            _ => Timer::Close,
        };
        if want != conn.timer {
            let after = match want {
                Timer::None => None,
                Timer::Handshake => Some(self.config.handshake_timeout),
                Timer::Ping => Some(self.config.ping_interval),
                Timer::Pong => Some(self.config.pong_timeout),
                Timer::SlowConsumer => Some(self.config.slow_consumer_timeout),
                Timer::Close => Some(self.config.close_timeout),
            };
            self.arm(id, want, after);
        }
    }

    fn expire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(self.now, &mut due);
        for &key in &due {
            self.on_timer(ConnId(key));
        }
        self.due = due;
    }

    /// Arms the connection's one timer as `timer`, due `after` from now.
    fn arm(&mut self, id: ConnId, timer: Timer, after: Option<Duration>) {
        let now_ms = self.now_ms();
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        conn.timer = timer;
        conn.armed_ms = now_ms;
        match after {
            Some(after) => self.wheel.arm(id.0, self.now + after),
            None => self.wheel.cancel(id.0),
        }
    }

    fn on_timer(&mut self, id: ConnId) {
        let now_ms = self.now_ms();
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        let idle = Duration::from_millis(u64::from(now_ms.wrapping_sub(conn.last_read_ms)));
        let heard = conn.read_since_armed(now_ms);
        let mut cx = context!(self, id);
        match conn.timer {
            Timer::None => {}
            Timer::Handshake => {
                log::debug!("{id}: handshake timed out");
                self.stats.handshake_timeouts += 1;
                return self.remove(id, Ending::TimedOut);
            }
            Timer::Ping | Timer::Pong if heard => {
                // Input arrived since the timer was set (for a Pong timer: since the Ping): the
                // peer is alive; the next Ping is due one interval after its last bytes.
                let rest = self.config.ping_interval.saturating_sub(idle);
                return self.arm(id, Timer::Ping, Some(rest));
            }
            Timer::Ping => {
                conn.emit(&mut cx, |session, out| {
                    session.ping(PING_PAYLOAD, out);
                });
                self.arm(id, Timer::Pong, Some(self.config.pong_timeout));
            }
            Timer::Pong => {
                log::debug!(
                    "{id}: no answer to a Ping in {:?}",
                    self.config.pong_timeout
                );
                return self.remove(id, Ending::TimedOut);
            }
            Timer::SlowConsumer => {
                log::debug!("{id}: slow consumer, {} bytes queued", conn.queued());
                cx.stats.slow_consumer_closes += 1;
                cx.stats.closed(Side::Server, CloseCode::POLICY.0);
                conn.emit(&mut cx, |session, out| {
                    session.close(CloseCode::POLICY, "slow consumer", out);
                });
                self.arm(id, Timer::None, None);
            }
            Timer::Close => {
                log::debug!("{id}: close timed out");
                if conn.session.close_state() != CloseState::Open {
                    self.stats.close_timeouts += 1; // A WebSocket close handshake, not an HTTP refusal.
                }
                let ending = if conn.failed {
                    Ending::Errored
                } else {
                    Ending::TimedOut
                };
                return self.remove(id, ending);
            }
        }
        self.settle(id);
    }

    fn remove(&mut self, id: ConnId, ending: Ending) {
        let mut conn = self.conns.remove(id.0);
        if let Some(reload) = &mut self.reload {
            reload.forget(id.0, &conn.sock);
        }
        conn.release(&mut self.scratch.pool);
        self.wheel.cancel(id.0);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        if conn.counted {
            self.counted -= 1;
        }
        if let Some(ip) = conn.ip {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        log::debug!("{id}: closed ({ending:?})");
        self.hub.remove_conn(id);
        if conn.phase != Phase::Handshake && conn.counted {
            let mut ctx = loop_ctx!(self);
            self.handler.on_close(&mut ctx, id, conn.peer_code);
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

impl<H: Handler> EventLoop<H> {
    /// Hands the turn's publications and channel changes to the broker (relay mode).
    fn relay(&mut self) {
        if let Some(b) = &mut self.broker {
            let registry = self.poll.registry();
            b.tick(self.now, registry);
            b.relay(&mut self.hub, self.now, registry);
        }
    }

    /// The waker fired: take what other threads queued (run at the end of the turn's events).
    fn take_jobs(&mut self) {
        self.queue.take(JOBS_PER_TURN, &mut self.jobs);
    }

    /// Applies the jobs taken this turn; more waiting are taken next turn (without a new wake).
    fn run_jobs(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let mut jobs = std::mem::take(&mut self.jobs);
        let mut wake = false;
        for job in jobs.drain(..) {
            match job {
                Job::Publish {
                    channel,
                    text,
                    payload,
                } => {
                    self.hub.publish(&channel, message(text, &payload));
                }
                Job::Send {
                    conn,
                    text,
                    payload,
                } => self.hub.send(conn, message(text, &payload)),
                Job::Close { conn, code, reason } => self.hub.close(conn, code, &reason),
                Job::Wake => wake = true,
            }
        }
        if wake {
            let mut ctx = loop_ctx!(self);
            self.handler.on_wake(&mut ctx);
        }
        if !self.queue.is_empty() {
            self.queue.take(JOBS_PER_TURN, &mut jobs);
        }
        self.jobs = jobs;
    }

    fn fire_handler_timer(&mut self) {
        if self.handler_timer.is_some_and(|at| at <= self.now) {
            self.handler_timer = None;
            let mut ctx = loop_ctx!(self);
            self.handler.on_timer(&mut ctx);
        }
    }

    /// The loop's fan-out, which may wait a moment (see [`EventLoop::holds_fan_out`]).
    fn fan_out_unless_held(&mut self) {
        if self.holds_fan_out() {
            self.answer_api();
        } else {
            self.fan_out();
        }
    }

    /// Whether the turn's deliveries wait for this instance's own publications, which are on
    /// their way back from the broker (sent, not answered yet), at most [`COALESCE_MAX`].
    ///
    /// With the broker every publication makes a round trip through Redis before it reaches
    /// the local subscribers, so under a steady stream the publications arriving from Redis
    /// and those just sent to it form two batches, each fanned out with its own write per
    /// subscriber. Waiting for the second lets one write carry both: the kernel's cost is
    /// mostly per write, not per byte. Never while draining or handing over, where what is
    /// queued must go out before the Close frames or the handover.
    fn holds_fan_out(&mut self) -> bool {
        let waiting = self.drain.is_none()
            && self.reload.is_none()
            && self.hub.has_entries()
            && self.broker.as_ref().is_some_and(Broker::publishing);
        if !waiting {
            self.held_since = None;
            return false;
        }
        let since = *self.held_since.get_or_insert(self.now);
        self.now < since + COALESCE_MAX
    }

    /// Delivers the turn's publications and sends (one write per connection), applies the
    /// close requests made after them, and answers the publish requests they belong to.
    fn fan_out(&mut self) {
        self.held_since = None;
        if !self.hub.is_idle() {
            let EventLoop {
                hub,
                conns,
                scratch,
                stats,
                config,
                touched,
                ..
            } = self;
            let max_out = config.max_output_buffer;
            hub.flush(|id, slices| {
                let Some(conn) = conns.get_mut(id.0) else {
                    return Default::default();
                };
                let d = conn.deliver(slices, max_out, scratch, stats, id);
                if conn.gone || d.dropped > 0 {
                    touched.push(id);
                }
                d
            });
            for (id, code, reason) in self.hub.take_closes() {
                let Some(conn) = self.conns.get_mut(id.0) else {
                    continue;
                };
                if conn.phase != Phase::Open {
                    continue;
                }
                let mut cx = context!(self, id);
                let mut started = false;
                conn.emit(&mut cx, |session, out| {
                    started = session.close(code, &reason, out);
                });
                if started {
                    cx.stats.closed(Side::Server, code.0);
                }
                self.touched.push(id);
            }
            let mut touched = std::mem::take(&mut self.touched);
            for id in touched.drain(..) {
                self.settle(id);
            }
            self.touched = touched;
        }
        self.answer_api();
    }
}

/// A message over an owned payload (checked as UTF-8 by the [`Publisher`] when text).
fn message(text: bool, payload: &[u8]) -> Message<'_> {
    match std::str::from_utf8(payload) {
        Ok(t) if text => Message::Text(t),
        _ => Message::Binary(payload),
    }
}
