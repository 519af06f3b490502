//! Socket activation (sd_listen_fds(3)): the listening sockets systemd passes from fd 3 on.
//!
//! When `$LISTEN_PID` is our pid and `$LISTEN_FDS` ≥ 1, wsd serves the inherited sockets
//! instead of binding. With `$LISTEN_FDNAMES` (`FileDescriptorName=` in the socket unit), the
//! socket named `metrics` serves `/metrics`, the one named `api` the publish API, and the one
//! named `tls` serves wss:// clients, and the one named `wsd` or `websocket` serves
//! WebSocket clients; an unnamed socket (or one with any other name) serves WebSocket clients
//! when it is the only candidate. The three variables are removed from the environment once read.

use std::io;
use std::os::fd::{FromRawFd, RawFd};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Names of the socket that serves WebSocket clients.
pub const WEBSOCKET_NAMES: [&str; 2] = ["wsd", "websocket"];
/// Name of the socket that serves metrics.
pub const METRICS_NAME: &str = "metrics";
/// Name of the socket that serves the publish API.
pub const API_NAME: &str = "api";
/// Name of the socket that serves wss:// (as `tls_listen` does).
pub const TLS_NAME: &str = "tls";

/// The listening sockets systemd passed in, by role.
#[derive(Debug)]
pub struct Inherited<T = std::net::TcpListener> {
    pub websocket: Option<T>,
    pub metrics: Option<T>,
    pub api: Option<T>,
    pub tls: Option<T>,
}

impl<T> Default for Inherited<T> {
    fn default() -> Self {
        Inherited {
            websocket: None,
            metrics: None,
            api: None,
            tls: None,
        }
    }
}

/// Takes the sockets passed by the service manager; empty when wsd was not socket-activated.
pub fn take() -> io::Result<Inherited> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Single-threaded here (before the loop starts): nothing reads the environment at once.
        std::env::remove_var(var);
    }
    if pid.and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(Inherited::default());
    }
    let count: RawFd = match fds.as_deref().map(str::parse) {
        Some(Ok(n)) if n >= 1 => n,
        _ => return Ok(Inherited::default()),
    };
    let names: Vec<String> = match names {
        Some(list) if list.split(':').count() == count as usize => {
            list.split(':').map(str::to_string).collect()
        }
        _ => vec![String::new(); count as usize],
    };
    let mut sockets = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let fd = LISTEN_FDS_START + i as RawFd;
        check_listening_tcp(fd)
            .map_err(|e| io::Error::new(e.kind(), format!("socket activation: fd {fd}: {e}")))?;
        // SAFETY: $LISTEN_PID names this process, so systemd passed us fds 3..3+LISTEN_FDS and
        // nothing else in the process owns them; each is taken exactly once here.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        log::info!(
            "socket activation: fd {fd} ({}) is {}",
            if name.is_empty() { "unnamed" } else { &name },
            listener.local_addr()?
        );
        sockets.push((name, listener));
    }
    assign(sockets)
}

/// Picks the metrics and WebSocket sockets out of the named ones.
fn assign<T>(sockets: Vec<(String, T)>) -> io::Result<Inherited<T>> {
    let mut roles = Inherited::default();
    let mut others = Vec::new();
    for (name, sock) in sockets {
        let slot = if name == METRICS_NAME {
            &mut roles.metrics
        } else if name == API_NAME {
            &mut roles.api
        } else if name == TLS_NAME {
            &mut roles.tls
        } else if WEBSOCKET_NAMES.contains(&name.as_str()) {
            &mut roles.websocket
        } else {
            others.push(name.clone());
            if others.len() > 1 || roles.websocket.is_some() {
                return Err(too_many(&others));
            }
            &mut roles.websocket
        };
        if slot.replace(sock).is_some() {
            return Err(too_many(&[name]));
        }
    }
    Ok(roles)
}

fn too_many(names: &[String]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "socket activation passed more sockets than wsd serves (around {names:?}): wsd \
             serves one WebSocket socket (FileDescriptorName=wsd), one metrics socket \
             (FileDescriptorName=metrics), one publish API socket (FileDescriptorName=api) and one \
             wss:// socket (FileDescriptorName=tls)"
        ),
    )
}

/// Fails unless `fd` is a listening IPv4/IPv6 stream socket.
fn check_listening_tcp(fd: RawFd) -> io::Result<()> {
    let int_opt = |opt| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `value`, an int of that size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let inet = matches!(int_opt(libc::SO_DOMAIN)?, libc::AF_INET | libc::AF_INET6);
    if !inet || int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a TCP socket (use ListenStream=[ADDRESS:]PORT)",
        ));
    }
    if int_opt(libc::SO_ACCEPTCONN)? != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening socket (Accept=no is needed)",
        ));
    }
    // SAFETY: fcntl(2) F_SETFD on a descriptor we own: children must not inherit it.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> io::Result<Inherited<usize>> {
        assign(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i))
                .collect(),
        )
    }

    #[test]
    fn sockets_are_picked_by_name() {
        let r = named(&["metrics", "wsd"]).unwrap();
        assert_eq!((r.websocket, r.metrics), (Some(1), Some(0)));
        let r = named(&["websocket"]).unwrap();
        assert_eq!((r.websocket, r.metrics), (Some(0), None));
        let r = named(&[""]).unwrap();
        assert_eq!((r.websocket, r.metrics), (Some(0), None));
        let r = named(&["wsd.socket", "metrics"]).unwrap();
        assert_eq!((r.websocket, r.metrics), (Some(0), Some(1)));
        assert!(named(&["", ""]).is_err());
        assert!(named(&["wsd", "other"]).is_err());
        assert!(named(&["metrics", "metrics"]).is_err());
        let r = named(&["wsd", "tls"]).unwrap();
        assert_eq!((r.websocket, r.tls), (Some(0), Some(1)));
        assert!(named(&["tls", "tls"]).is_err());
    }
}
