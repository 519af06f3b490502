//! The old process's side of a live upgrade, in the loop: SIGUSR2 starts the new process; at
//! its HELLO this one presents every connection's socket and serves on; at its READY it
//! freezes and hands everything over (see [`super::upgrade`]). A failure leaves this process
//! serving as before.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::handler::Handler;

use super::upgrade::{self, State, STATE_VERSION, UPGRADE_FD_ENV, UPGRADE_TIMEOUT};
use super::{ConnId, EventLoop};

/// The handover socket's token.
pub const RELOAD: Token = Token(usize::MAX - 11);

/// A live upgrade in progress.
pub struct Reload {
    child: Child,
    sock: OwnedFd,
    started: Instant,
    /// The new process said HELLO and was presented the sockets of these connections (keys);
    /// one closed since leaves the set.
    presented: Option<HashSet<usize>>,
    /// The new process said READY (it registered them): the handover runs as soon as no
    /// answer waits, and not before this moment (a test hook holds it back).
    ready_at: Option<Instant>,
}

/// Test hook: how long the old process waits from READY to the handover, in ms (so that a
/// test can open and close connections in between).
pub const TEST_HANDOVER_DELAY_ENV: &str = "WSD_TEST_HANDOVER_DELAY_MS";

impl Reload {
    /// A presented connection is going away: its socket is shut down now, since the copy the
    /// new process holds would otherwise keep it open until the handover.
    pub(super) fn forget(&mut self, key: usize, sock: &mio::net::TcpStream) {
        if let Some(presented) = &mut self.presented {
            if presented.remove(&key) {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The binary and arguments this process was started with, for the new process (read at
/// start: once the binary is replaced on disk, /proc/self/exe names a deleted file).
pub struct Origin {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl Origin {
    pub fn of_this_process() -> Origin {
        let exe = std::env::current_exe()
            .ok()
            .map(|p| {
                // A replaced binary: its path without the " (deleted)" the kernel adds.
                let s = p.to_string_lossy();
                PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
            })
            .unwrap_or_else(|| PathBuf::from("wsd"));
        Origin {
            exe,
            args: std::env::args_os().skip(1).collect(),
        }
    }
}

impl<H: Handler> EventLoop<H> {
    /// SIGUSR2: starts the binary on disk as the new process.
    pub(super) fn start_reload(&mut self) {
        if self.drain.is_some() {
            log::warn!("reload refused: draining");
            return;
        }
        if self.reload.is_some() {
            log::warn!("reload refused: one is already in progress");
            return;
        }
        match self.spawn_new_process() {
            Ok(reload) => {
                log::info!(
                    "reload: started pid {} ({}); waiting for it to take over",
                    reload.child.id(),
                    self.origin.exe.display()
                );
                self.notify.reloading();
                self.reload = Some(reload);
            }
            Err(e) => {
                log::warn!(
                    "reload failed: cannot start {}: {e}",
                    self.origin.exe.display()
                );
            }
        }
    }

    fn spawn_new_process(&mut self) -> std::io::Result<Reload> {
        let (ours, theirs) = upgrade::socket_pair()?;
        upgrade::bound_sends(&ours, upgrade::SEND_TIMEOUT)?;
        upgrade::inheritable(&theirs)?;
        let child = Command::new(&self.origin.exe)
            .args(&self.origin.args)
            .env(UPGRADE_FD_ENV, theirs.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .spawn()?;
        drop(theirs);
        self.poll.registry().register(
            &mut SourceFd(&ours.as_raw_fd()),
            RELOAD,
            Interest::READABLE,
        )?;
        Ok(Reload {
            child,
            sock: ours,
            started: self.now,
            presented: None,
            ready_at: None,
        })
    }

    /// The new process wrote (HELLO, then READY) or went away.
    pub(super) fn serve_reload(&mut self) {
        let Some(reload) = &mut self.reload else {
            return;
        };
        if reload.ready_at.is_some() {
            return;
        }
        if reload.presented.is_some() {
            match upgrade::read_ready(&reload.sock) {
                Ok(()) => {
                    let delay = std::env::var(TEST_HANDOVER_DELAY_ENV)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .map_or(std::time::Duration::ZERO, std::time::Duration::from_millis);
                    log::info!(
                        "reload: pid {} registered {} sockets; handing over",
                        reload.child.id(),
                        reload.presented.as_ref().map_or(0, HashSet::len)
                    );
                    reload.ready_at = Some(self.now + delay);
                }
                Err(why) => self.abort_reload(&why),
            }
            return;
        }
        match upgrade::read_hello(&reload.sock) {
            Ok(version) if version == STATE_VERSION => self.present(),
            Ok(version) => {
                let why = format!(
                    "the new binary reads state version {version}, this one writes {STATE_VERSION}"
                );
                upgrade::refuse(&reload.sock, &why);
                self.abort_reload(&why);
            }
            Err(why) => self.abort_reload(&why),
        }
    }

    /// Once per turn: hands over when the new process is ready and nothing waits for an
    /// answer; gives up after [`UPGRADE_TIMEOUT`].
    pub(super) fn advance_reload(&mut self) {
        let Some(reload) = &self.reload else {
            return;
        };
        if self.now.duration_since(reload.started) > UPGRADE_TIMEOUT {
            return self.abort_reload("the new process was not ready in time");
        }
        let due = reload.ready_at.is_some_and(|at| at <= self.now);
        if due && !self.api.has_waiting_answers() {
            self.hand_over();
        }
    }

    /// HELLO: presents every connection's socket to the new process (it registers them while
    /// this process serves on) and waits for its READY.
    fn present(&mut self) {
        let (keys, fds): (Vec<u32>, Vec<RawFd>) = self
            .conns
            .iter()
            .map(|(key, c)| (key as u32, c.sock.as_raw_fd()))
            .unzip();
        let Some(reload) = &mut self.reload else {
            return;
        };
        match upgrade::present(&reload.sock, &keys, &fds) {
            Ok(()) => reload.presented = Some(keys.iter().map(|&k| k as usize).collect()),
            Err(why) => self.abort_reload(&why),
        }
    }

    /// Sends every socket and connection state to the new process and exits once it has them.
    fn hand_over(&mut self) {
        let started = Instant::now();
        // Everything queued this turn goes out first.
        self.fan_out();
        let mut fds: Vec<RawFd> = Vec::new();
        let Some(listener) = &self.listener else {
            return self.abort_reload("no listener (draining)");
        };
        fds.push(listener.as_raw_fd());
        let metrics = self.metrics.listener_fd();
        let api = self.api.listener_fd();
        let tls = self.tls_listener.as_ref().map(|l| l.as_raw_fd());
        fds.extend(metrics);
        fds.extend(api);
        fds.extend(tls);
        self.leave_tls_for_upgrade();
        let now_ms = self.now_ms();
        let mut state = State {
            has_metrics: metrics.is_some(),
            has_api: api.is_some(),
            has_tls: tls.is_some(),
            ..State::default()
        };
        let presented = self.reload.as_mut().and_then(|r| r.presented.take());
        for (key, conn) in self.conns.iter() {
            let remaining = self
                .wheel
                .deadline(key)
                .map(|at| at.saturating_duration_since(self.now));
            let channels = self
                .hub
                .channels_of(ConnId(key))
                .map(str::to_string)
                .collect();
            let mut st = conn.export(now_ms, remaining, channels);
            st.key = key as u32;
            st.presented = presented.as_ref().is_some_and(|p| p.contains(&key));
            if !st.presented {
                fds.push(conn.sock.as_raw_fd());
            }
            state.conns.push(st);
        }
        for (fd, api_conn) in self.api.export() {
            state.api_conns.push(api_conn);
            fds.push(fd);
        }
        let Some(reload) = &self.reload else {
            return;
        };
        match upgrade::send_state(&reload.sock, &state, &fds) {
            Ok(()) => {
                let pid = reload.child.id();
                self.notify.main_pid(pid);
                log::info!(
                    "reload: pid {pid} took {} connections in {} ms; exiting",
                    state.conns.len(),
                    started.elapsed().as_millis()
                );
                // No Close, no FIN: the new process holds every socket; this one just ends.
                std::process::exit(0);
            }
            Err(why) => self.abort_reload(&why),
        }
    }

    /// Gives up the upgrade: the new process is stopped, this one serves on.
    pub(super) fn abort_reload(&mut self, why: &str) {
        let Some(mut reload) = self.reload.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&reload.sock.as_raw_fd()));
        let _ = reload.child.kill();
        let status = reload.child.wait();
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        log::warn!("reload failed: {why} (new process: {status}); still serving");
        self.notify.reload_failed(self.now, self.counted, why);
    }
}
