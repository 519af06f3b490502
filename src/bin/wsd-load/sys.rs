//! The few OS calls std and mio do not offer: bind-before-connect without a port, CPU time, and
//! a timer finer than a poll timeout.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// Starts a non-blocking TCP connect to `to`, from `from` if given.
///
/// With a source address the socket gets `IP_BIND_ADDRESS_NO_PORT` so the kernel picks the port
/// at connect time per 4-tuple: each source address then serves ~28k connections to each server
/// port instead of sharing one ephemeral range for the whole bind.
pub fn connect(from: Option<IpAddr>, to: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; OwnedFd closes it on error.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = std::net::TcpStream::from(fd);
    if let Some(from) = from {
        if from.is_ipv4() {
            set_int_opt(&stream, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        }
        let (storage, len) = sockaddr(SocketAddr::new(from, 0));
        // SAFETY: `storage` is a valid sockaddr of `len` bytes for the socket's family.
        let rc = unsafe {
            libc::bind(
                raw(&stream),
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    set_int_opt(&stream, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let (storage, len) = sockaddr(to);
    // SAFETY: as for bind above.
    let rc = unsafe {
        libc::connect(
            raw(&stream),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(mio::net::TcpStream::from_std(stream))
}

fn raw(stream: &std::net::TcpStream) -> libc::c_int {
    use std::os::fd::AsRawFd;
    stream.as_raw_fd()
}

fn set_int_opt(
    stream: &std::net::TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int that lives across the call, with its size passed.
    let rc = unsafe {
        libc::setsockopt(
            raw(stream),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// User + system CPU time this process has used so far (all threads).
pub fn own_cpu() -> Duration {
    // SAFETY: rusage is plain old data; getrusage fills it and cannot fail for RUSAGE_SELF.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU time of another process, from `/proc/PID/stat` (clock-tick resolution).
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unexpected /proc stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime); `fields[0]` is field 3 (state).
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc stat format"))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf with a constant name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(total * 1_000_000 / hz))
}

/// Raises the soft limit on open files to the hard limit (each connection is a descriptor);
/// returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: rlimit is plain old data, filled by getrlimit.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; failure leaves the old limit in place.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_max as u64;
        }
    }
    lim.rlim_cur as u64
}

/// A one-shot timer with nanosecond precision that a mio poll can wait on (a timerfd): poll
/// timeouts are rounded up to whole milliseconds, too coarse to pace publications whose
/// latency is measured from when they were due.
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Timer {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Fires once, `after` from now (at once for zero); replaces any earlier setting.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        // A zero it_value would disarm the timer: fire after a nanosecond instead.
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        use std::os::fd::AsRawFd;
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for (null).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes the expiry so the next one raises a new edge.
    pub fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut ticks = 0u64;
        // SAFETY: reads at most 8 bytes into `ticks`, which has 8; failure (nothing expired,
        // EAGAIN) needs no handling.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut ticks as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}
