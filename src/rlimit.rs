//! The open-file limit: raised to the hard limit at start, and checked against `max_connections`
//! before anything is bound, so a server that cannot hold its connections refuses to start
//! instead of failing accepts at run time.

use std::io;

/// File descriptors kept for everything that is not a WebSocket connection: stdio, the epoll
/// instance, the signal pipe, the listeners, the metrics scrapes, the notify socket, a refused
/// connection between accept and close, and slack for the allocator and the like.
pub const RESERVED_FDS: u64 = 64;

/// The open-file limit after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit wsd started with.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    pub hard: u64,
}

/// Raises the open-file limit, logs it, and fails when `max_connections` does not fit.
pub fn ensure(max_connections: usize) -> Result<(), String> {
    let limit = match raise() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("cannot read the open-file limit: {e}");
            return Ok(());
        }
    };
    log::info!(
        "open-file limit {} (was {}, hard limit {}); max_connections {max_connections} needs {}",
        limit.soft,
        limit.before,
        limit.hard,
        needed(max_connections)
    );
    check(limit, max_connections)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped by `fs.nr_open` when the hard limit
/// is unlimited, since the kernel refuses more).
pub fn raise() -> io::Result<NoFile> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes only into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = nr_open().unwrap_or(lim.rlim_cur);
    }
    if target > lim.rlim_cur {
        let wanted = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit(2) only reads `wanted`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            lim.rlim_cur = target;
        } else {
            log::warn!(
                "cannot raise the open-file limit to {target}: {}",
                io::Error::last_os_error()
            );
        }
    }
    Ok(NoFile {
        before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Open files a server with `max_connections` needs.
pub fn needed(max_connections: usize) -> u64 {
    (max_connections as u64).saturating_add(RESERVED_FDS)
}

/// Whether `max_connections` fits in `limit`; the error says what to change.
pub fn check(limit: NoFile, max_connections: usize) -> Result<(), String> {
    let needed = needed(max_connections);
    if needed <= limit.soft {
        return Ok(());
    }
    Err(format!(
        "max_connections {max_connections} needs {needed} open files ({RESERVED_FDS} kept for \
         listeners and the like), but the open-file limit is {} (hard limit {}): raise \
         LimitNOFILE= in the unit (or `ulimit -Hn`), or lower max_connections to at most {}",
        limit.soft,
        limit.hard,
        limit.soft.saturating_sub(RESERVED_FDS)
    ))
}

fn nr_open() -> Option<libc::rlim_t> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_must_fit_with_headroom() {
        let limit = NoFile {
            before: 1024,
            soft: 1024,
            hard: 1024,
        };
        assert!(check(limit, 1024 - RESERVED_FDS as usize).is_ok());
        let err = check(limit, 1024).unwrap_err();
        assert!(err.contains("at most 960"), "{err}");
    }

    #[test]
    fn raise_reaches_the_hard_limit() {
        let l = raise().unwrap();
        assert!(l.soft >= l.before);
        assert!(l.soft <= l.hard);
    }
}
