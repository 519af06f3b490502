//! sd_notify(3) over `$NOTIFY_SOCKET`: readiness, a throttled status line, stopping with timeout
//! extensions during the drain, and the watchdog — all sent from the loop, never from a thread.
//!
//! Without `$NOTIFY_SOCKET` every call is a no-op. A datagram the socket does not take at once
//! is dropped (and logged at debug): the loop never blocks on the service manager.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::handler::Handler;

use super::EventLoop;

/// Status lines go out at most this often; connection events only mark the status stale.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Added to each `EXTEND_TIMEOUT_USEC`, for the exit after the last connection is gone.
pub const EXTEND_MARGIN: Duration = Duration::from_secs(5);

/// What the status line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Serving { open: usize },
    Draining { left: usize },
}

/// The service manager's end of sd_notify, and what was last told to it.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`: how often `WATCHDOG=1` goes out.
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    /// The state the last status line reported, and when the next one may go out.
    reported: Option<State>,
    next_status: Option<Instant>,
    /// The state differs from the one last reported.
    stale: bool,
    /// When a drain must be over at the latest (its `EXTEND_TIMEOUT_USEC` target).
    drain_until: Option<Instant>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_str()?.to_string();
            match connect(&path) {
                Ok(pair) => Some(pair),
                Err(e) => {
                    log::warn!("NOTIFY_SOCKET={path}: {e}; not notifying systemd");
                    None
                }
            }
        });
        let ours = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.parse() == Ok(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours && socket.is_some())
            .map(|usec| Duration::from_micros(usec) / 2);
        if let Some(every) = watchdog {
            log::info!("watchdog: pinging systemd every {every:?}");
        }
        Notifier {
            socket,
            watchdog,
            ..Notifier::disabled()
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
            next_watchdog: None,
            reported: None,
            next_status: None,
            stale: false,
            drain_until: None,
        }
    }

    /// The listener accepts: `READY=1` with the first status line.
    pub fn ready(&mut self, now: Instant, open: usize) {
        let state = State::Serving { open };
        self.send(&format!("READY=1\n{}", self.status_line(state, now)));
        self.reported(state, now);
        self.next_watchdog = self.watchdog.map(|every| now + every);
    }

    /// The drain started and must be over by `until`: `STOPPING=1`, its status, and a timeout
    /// extension so systemd does not kill a drain still within its bound.
    pub fn stopping(&mut self, now: Instant, left: usize, until: Instant) {
        self.drain_until = Some(until);
        let state = State::Draining { left };
        self.send(&format!("STOPPING=1\n{}", self.status_line(state, now)));
        self.reported(state, now);
    }

    /// A live upgrade began: `RELOADING=1` (with the monotonic time systemd asks for).
    pub fn reloading(&self) {
        // SAFETY: clock_gettime writes into the timespec.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading: starting the new process"
        ));
    }

    /// The new process took over: it is the service's main process from now on.
    pub fn main_pid(&self, pid: u32) {
        self.send(&format!("MAINPID={pid}"));
    }

    /// The upgrade failed: this process serves on, ready as before.
    pub fn reload_failed(&mut self, now: Instant, open: usize, why: &str) {
        let state = State::Serving { open };
        self.send(&format!(
            "READY=1\nSTATUS=reload failed ({why}); {}",
            self.status_line(state, now).trim_start_matches("STATUS=")
        ));
        self.reported(state, now);
    }

    /// Called once per loop turn: a status line if the state changed and the last one is old
    /// enough, and `WATCHDOG=1` when due.
    pub fn tick(&mut self, now: Instant, state: State) {
        if self.socket.is_none() {
            return;
        }
        self.stale = self.reported != Some(state);
        if self.stale && self.next_status.map_or(true, |at| at <= now) {
            self.send(&self.status_line(state, now));
            self.reported(state, now);
        }
        if let (Some(every), Some(at)) = (self.watchdog, self.next_watchdog) {
            if at <= now {
                self.send("WATCHDOG=1");
                self.next_watchdog = Some(now + every);
            }
        }
    }

    /// When the loop must wake up for this notifier (a stale status, the watchdog).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let status = self.next_status.filter(|_| self.stale);
        [status, self.next_watchdog].into_iter().flatten().min()
    }

    fn reported(&mut self, state: State, now: Instant) {
        self.reported = Some(state);
        self.stale = false;
        self.next_status = Some(now + STATUS_INTERVAL);
    }

    fn status_line(&self, state: State, now: Instant) -> String {
        match state {
            State::Serving { open: 1 } => "STATUS=serving 1 connection".to_string(),
            State::Serving { open } => format!("STATUS=serving {open} connections"),
            State::Draining { left } => {
                let until = self.drain_until.unwrap_or(now);
                let extend = until.saturating_duration_since(now) + EXTEND_MARGIN;
                format!(
                    "STATUS=draining: {left} left\nEXTEND_TIMEOUT_USEC={}",
                    extend.as_micros()
                )
            }
        }
    }

    fn send(&self, message: &str) {
        let Some((sock, addr)) = &self.socket else {
            return;
        };
        if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
            log::debug!("sd_notify {message:?} not sent: {e}");
        }
    }
}

/// An unbound, non-blocking datagram socket and the address `NOTIFY_SOCKET` names: a path, or
/// an abstract name written with a leading `@`.
fn connect(path: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or an @abstract name",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    Ok((sock, addr))
}

impl<H: Handler> EventLoop<H> {
    /// Tells systemd where the loop stands (called once per loop turn).
    pub(super) fn notify_tick(&mut self) {
        let state = match self.drain {
            Some(_) => State::Draining {
                left: self.conns.len(),
            },
            // Refused connections waiting to read their 503 are not counted as served.
            None => State::Serving { open: self.counted },
        };
        self.notify.tick(self.now, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound abstract socket standing in for systemd, and a notifier aimed at it.
    fn pair() -> (UnixDatagram, Notifier) {
        let name = format!("@wsd-notify-test-{}", std::process::id());
        let theirs =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name[1..]).unwrap()).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut n = Notifier::disabled();
        n.socket = Some(connect(&name).unwrap());
        (theirs, n)
    }

    fn recv_all(sock: &UnixDatagram) -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    }

    #[test]
    fn status_is_throttled_and_drain_extends_the_timeout() {
        let (theirs, mut n) = pair();
        let t0 = Instant::now();
        n.ready(t0, 0);
        for open in 1..100 {
            let at = t0 + Duration::from_millis(open as u64);
            n.tick(at, State::Serving { open });
        }
        assert_eq!(n.next_wakeup(), Some(t0 + STATUS_INTERVAL));
        n.tick(t0 + STATUS_INTERVAL, State::Serving { open: 99 });
        assert_eq!(n.next_wakeup(), None);
        n.stopping(t0 + STATUS_INTERVAL, 99, t0 + Duration::from_secs(11));
        assert_eq!(
            recv_all(&theirs),
            [
                "READY=1\nSTATUS=serving 0 connections",
                "STATUS=serving 99 connections",
                "STOPPING=1\nSTATUS=draining: 99 left\nEXTEND_TIMEOUT_USEC=15000000",
            ]
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(connect("notify.sock").is_err());
    }
}
