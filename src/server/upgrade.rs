//! Live upgrade (SIGUSR2, `systemctl reload`): the running process starts the binary on disk,
//! hands it every listening socket and every connection with its state, and exits without a
//! byte or a FIN to any client; the new process resumes each connection where it stood.
//!
//! The handover, in the manner of tableflip (nothing moves until the new process says it is
//! ready, and a failed upgrade changes nothing):
//! 1. The old process makes a `SOCK_SEQPACKET` pair and starts `wsd` from its path on disk with
//!    its own arguments and `WSD_UPGRADE_FD` naming the child's end.
//! 2. The new process parses its config (a bad one exits 78: the old one keeps serving) and
//!    sends `HELLO` with the state version it reads.
//! 3. While it goes on serving, the old process presents every connection's socket
//!    (`PRESENT`: slab keys and descriptors in batches, then `PRESENTED`); the new process
//!    registers each with its own poll under the same key and answers `READY`. Registering
//!    10,000 sockets takes 10–20 ms, which no client waits for this way.
//! 4. The old process stops reading, delivers what is queued for the turn, and sends the state
//!    (versioned, checksummed, in chunks) and the descriptors it did not present: the
//!    listeners, connections accepted since, API connections (`SCM_RIGHTS`, in batches).
//!    A presented connection closed since is left out of the state; the new process drops
//!    its copy.
//! 5. The new process checks and decodes it all and answers `TAKEN`; the old one tells systemd
//!    the new main PID and exits 0. Any failure before `TAKEN` (exit, crash, bad config,
//!    unknown version, timeout) leaves the old process serving as before, and logs why.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::protocol::close::CloseState;
use crate::protocol::deflate::Agreed;
use crate::protocol::message::DataKind;
use crate::protocol::session::SessionState;

/// The state format this binary writes and reads. A new process that reads another refuses
/// the handover (the old one keeps serving).
pub const STATE_VERSION: u32 = 3;
/// The first bytes of the state.
const MAGIC: &[u8; 4] = b"WSDU";
/// Environment variable naming the new process's end of the handover socket.
pub const UPGRADE_FD_ENV: &str = "WSD_UPGRADE_FD";
/// Test hook: the state version a new process claims to read (to test a mismatch).
pub const TEST_VERSION_ENV: &str = "WSD_TEST_STATE_VERSION";
/// Longest one send of the old process may block on a new process that does not read.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the old process waits for the new one, from its start to `TAKEN`.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of state per message (well under the socket's buffer).
const CHUNK: usize = 48 * 1024;
/// Descriptors per message (Linux takes at most 253).
const FDS_PER_MESSAGE: usize = 200;

// Message tags.
const HELLO: u8 = b'H';
const REFUSE: u8 = b'N';
const DATA: u8 = b'D';
const FDS: u8 = b'F';
const END: u8 = b'E';
const TAKEN: u8 = b'T';
const FAILED: u8 = b'X';
const PRESENT: u8 = b'P';
const PRESENTED: u8 = b'Q';
const READY: u8 = b'R';

/// One WebSocket connection as the new process needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// Its key (and poll token) in the old process, kept in the new one.
    pub key: u32,
    /// Its socket was presented before the switch (else it travels with the state).
    pub presented: bool,
    /// 0 handshake, 1 open, 2 closing, 3 closing with our side shut down.
    pub phase: u8,
    /// The timer's kind (see `conn::Timer`) and the time left on it.
    pub timer: u8,
    pub remaining_ms: Option<u64>,
    /// gone, failed, paused, eof_signalled, counted (bits 0–4).
    pub flags: u8,
    pub peer_code: Option<u16>,
    /// Milliseconds since bytes last arrived, and since the timer was armed.
    pub idle_ms: u32,
    pub armed_ago_ms: u32,
    pub ip: Option<IpAddr>,
    pub session: SessionState,
    /// Bytes read and not consumed (a partial handshake or frame).
    pub input: Vec<u8>,
    /// Output the socket has not taken (from the first byte not written).
    pub output: Vec<u8>,
    /// Channels, in the order the connection joined them.
    pub channels: Vec<String>,
    /// permessage-deflate context takeover: the tails of the client's and of our stream.
    pub inflate_window: Vec<u8>,
    pub deflate_window: Vec<u8>,
}

/// A publish API connection between requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConnState {
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    /// No more requests: close once the output is out.
    pub last: bool,
}

/// Everything that moves, descriptors apart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct State {
    pub has_metrics: bool,
    pub has_api: bool,
    /// The separate wss:// listener (`tls_listen`) travels after the API listener. (A flag bit
    /// that version-1 states leave at zero, so they read the same.)
    pub has_tls: bool,
    pub conns: Vec<ConnState>,
    pub api_conns: Vec<ApiConnState>,
}

/// What the new process receives: the state and the descriptors, in order (the WebSocket
/// listener, the metrics, API and wss:// listeners when present, each connection, each API
/// connection).
pub struct Handover {
    pub state: State,
    pub fds: Vec<OwnedFd>,
    /// The poll the presented sockets are registered with, each under its key.
    pub poll: Option<mio::Poll>,
    /// The presented sockets, by key (those the state leaves out were closed since).
    pub presented: HashMap<u32, mio::net::TcpStream>,
    /// When the old process began sending (our HELLO answered), when the whole state was in,
    /// and when the old process was gone: the log line of the resume reports the phases.
    pub asked: Instant,
    pub received: Instant,
    pub old_gone: Instant,
}

// ---- The format: little-endian integers, length-prefixed byte strings, a trailing checksum.

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("state ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.u64()?).map_err(|_| "bad length")?;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a name is not UTF-8".into())
    }
}

/// FNV-1a, 64 bits: catches a torn or mixed-up transfer (not an adversary: the peer is us).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const NONE_U64: u64 = u64::MAX;

fn close_state_code(s: CloseState) -> u8 {
    match s {
        CloseState::Open => 0,
        CloseState::ClosedByUs => 1,
        CloseState::ClosedByPeer => 2,
        CloseState::Acknowledged => 3,
        CloseState::Failed => 4,
    }
}

fn close_state_of(code: u8) -> Result<CloseState, String> {
    Ok(match code {
        0 => CloseState::Open,
        1 => CloseState::ClosedByUs,
        2 => CloseState::ClosedByPeer,
        3 => CloseState::Acknowledged,
        4 => CloseState::Failed,
        _ => return Err(format!("unknown close state {code}")),
    })
}

/// The state as bytes: magic, version, body, checksum.
pub fn encode(state: &State) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.0.extend_from_slice(MAGIC);
    w.u32(STATE_VERSION);
    w.u8(u8::from(state.has_metrics) | u8::from(state.has_api) << 1 | u8::from(state.has_tls) << 2);
    w.u64(state.conns.len() as u64);
    for c in &state.conns {
        // Version 3: the key, and whether the socket was presented.
        w.u32(c.key);
        w.u8(u8::from(c.presented));
        w.u8(c.phase);
        w.u8(c.timer);
        w.u64(c.remaining_ms.unwrap_or(NONE_U64));
        w.u8(c.flags);
        w.u32(c.peer_code.map_or(u32::MAX, u32::from));
        w.u32(c.idle_ms);
        w.u32(c.armed_ago_ms);
        match c.ip {
            None => w.u8(0),
            Some(IpAddr::V4(a)) => {
                w.u8(4);
                w.0.extend_from_slice(&a.octets());
            }
            Some(IpAddr::V6(a)) => {
                w.u8(6);
                w.0.extend_from_slice(&a.octets());
            }
        }
        let s = &c.session;
        w.u8(close_state_code(s.close));
        w.u8(match s.open {
            None => 0,
            Some(DataKind::Text) => 1,
            Some(DataKind::Binary) => 2,
        });
        w.bytes(&s.fragments);
        w.bytes(&s.utf8_carry);
        w.u64(s.unmasked as u64);
        w.u64(s.skip);
        // Version 2: permessage-deflate (a presence byte, the agreement, the open message's
        // compression, the windows).
        match s.deflate {
            None => w.u8(0),
            Some(agreed) => {
                w.u8(1);
                w.0.extend_from_slice(&agreed.to_bytes());
            }
        }
        w.u8(u8::from(s.compressed));
        w.bytes(&c.inflate_window);
        w.bytes(&c.deflate_window);
        w.bytes(&c.input);
        w.bytes(&c.output);
        w.u64(c.channels.len() as u64);
        for ch in &c.channels {
            w.bytes(ch.as_bytes());
        }
    }
    w.u64(state.api_conns.len() as u64);
    for a in &state.api_conns {
        w.bytes(&a.input);
        w.bytes(&a.output);
        w.u8(u8::from(a.last));
    }
    let sum = checksum(&w.0);
    w.u64(sum);
    w.0
}

/// The version the bytes say they are in, if they start like a state at all.
pub fn version_of(bytes: &[u8]) -> Option<u32> {
    let rest = bytes.strip_prefix(MAGIC)?;
    Some(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?))
}

/// The state from its bytes; refuses another version, a bad checksum, or bytes that do not
/// make a state.
pub fn decode(bytes: &[u8]) -> Result<State, String> {
    let version = version_of(bytes).ok_or("not a wsd state")?;
    if version != STATE_VERSION {
        return Err(format!(
            "state version {version}, this binary reads {STATE_VERSION}"
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len().saturating_sub(8));
    if sum.len() != 8 || checksum(body) != u64::from_le_bytes(sum.try_into().unwrap_or_default()) {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader(&body[8..]);
    let flags = r.u8()?;
    let mut state = State {
        has_metrics: flags & 1 != 0,
        has_api: flags & 2 != 0,
        has_tls: flags & 4 != 0,
        ..State::default()
    };
    let n = r.u64()?;
    for _ in 0..n {
        let key = r.u32()?;
        let presented = r.u8()? != 0;
        let phase = r.u8()?;
        let timer = r.u8()?;
        let remaining_ms = Some(r.u64()?).filter(|&v| v != NONE_U64);
        let conn_flags = r.u8()?;
        let peer_code = u16::try_from(r.u32()?).ok();
        let idle_ms = r.u32()?;
        let armed_ago_ms = r.u32()?;
        let ip = match r.u8()? {
            0 => None,
            4 => {
                let o: [u8; 4] = r.take(4)?.try_into().unwrap_or_default();
                Some(IpAddr::from(o))
            }
            6 => {
                let o: [u8; 16] = r.take(16)?.try_into().unwrap_or_default();
                Some(IpAddr::from(o))
            }
            k => return Err(format!("unknown address kind {k}")),
        };
        let close = close_state_of(r.u8()?)?;
        let open = match r.u8()? {
            0 => None,
            1 => Some(DataKind::Text),
            2 => Some(DataKind::Binary),
            k => return Err(format!("unknown message kind {k}")),
        };
        let session = SessionState {
            close,
            open,
            fragments: r.bytes()?.to_vec(),
            utf8_carry: r.bytes()?.to_vec(),
            unmasked: usize::try_from(r.u64()?).map_err(|_| "bad unmask offset")?,
            skip: r.u64()?,
            deflate: match r.u8()? {
                0 => None,
                1 => {
                    let bytes: [u8; 5] = r.take(5)?.try_into().unwrap_or_default();
                    Some(Agreed::from_bytes(bytes).ok_or("bad permessage-deflate agreement")?)
                }
                k => return Err(format!("unknown deflate kind {k}")),
            },
            compressed: r.u8()? != 0,
        };
        let inflate_window = r.bytes()?.to_vec();
        let deflate_window = r.bytes()?.to_vec();
        let input = r.bytes()?.to_vec();
        let output = r.bytes()?.to_vec();
        let channels = (0..r.u64()?)
            .map(|_| r.string())
            .collect::<Result<Vec<_>, _>>()?;
        state.conns.push(ConnState {
            key,
            presented,
            phase,
            timer,
            remaining_ms,
            flags: conn_flags,
            peer_code,
            idle_ms,
            armed_ago_ms,
            ip,
            session,
            input,
            output,
            channels,
            inflate_window,
            deflate_window,
        });
    }
    let n = r.u64()?;
    for _ in 0..n {
        state.api_conns.push(ApiConnState {
            input: r.bytes()?.to_vec(),
            output: r.bytes()?.to_vec(),
            last: r.u8()? != 0,
        });
    }
    if !r.0.is_empty() {
        return Err("bytes after the state".into());
    }
    Ok(state)
}

// ---- The socket: SOCK_SEQPACKET keeps message boundaries, and descriptors ride along.

/// A connected `SOCK_SEQPACKET` pair (close-on-exec; the child's end is made inheritable).
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Bounds how long a send on `fd` may block (`SO_SNDTIMEO`): a new process that stops
/// reading fails the upgrade instead of freezing the old one.
pub fn bound_sends(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on a socket we own, with a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets `fd` survive `exec` (the child's end of the pair).
pub fn inheritable(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one message: `tag`, `data`, and `fds` as `SCM_RIGHTS`.
pub fn send(sock: &OwnedFd, tag: u8, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut payload = Vec::with_capacity(1 + data.len());
    payload.push(tag);
    payload.extend_from_slice(data);
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
    // SAFETY: a zeroed msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: the control buffer holds one header of CMSG_SPACE(fd_bytes) bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
    }
    loop {
        // SAFETY: msg points at buffers that live across the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf` (returns its length; 0 at EOF) and its descriptors.
pub fn recv(sock: &OwnedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space =
        unsafe { libc::CMSG_SPACE((FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) };
    let mut control = vec![0u8; space as usize];
    // SAFETY: a zeroed msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: msg points at buffers that live across the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors truncated"));
    }
    Ok(n)
}

/// Waits up to `timeout` for `sock` to be readable; false on timeout.
pub fn wait_readable(sock: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one pollfd, valid for the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

// ---- The old process's side of the transfer.

/// Sends the state and the descriptors (blocking: the old process serves nothing meanwhile),
/// then waits for the new process's answer. Ok(()) once it has taken everything.
pub fn send_state(sock: &OwnedFd, state: &State, fds: &[RawFd]) -> Result<(), String> {
    let bytes = encode(state);
    let io = |e: io::Error| format!("sending the state: {e}");
    for chunk in bytes.chunks(CHUNK) {
        send(sock, DATA, chunk, &[]).map_err(io)?;
    }
    for batch in fds.chunks(FDS_PER_MESSAGE) {
        send(sock, FDS, &[], batch).map_err(io)?;
    }
    send(sock, END, &(bytes.len() as u64).to_le_bytes(), &[]).map_err(io)?;
    if !wait_readable(sock, UPGRADE_TIMEOUT).map_err(io)? {
        return Err("the new process did not answer in time".into());
    }
    let mut buf = vec![0u8; 4096];
    let mut none = Vec::new();
    let n = recv(sock, &mut buf, &mut none).map_err(io)?;
    match buf.get(..n) {
        Some([TAKEN, ..]) => Ok(()),
        Some([FAILED, why @ ..]) => Err(format!(
            "the new process refused the state: {}",
            String::from_utf8_lossy(why)
        )),
        _ => Err("the new process exited during the transfer".into()),
    }
}

/// Presents the connections' sockets (keys and descriptors, in batches) to the new process,
/// which registers them while this process serves on.
pub fn present(sock: &OwnedFd, keys: &[u32], fds: &[RawFd]) -> Result<(), String> {
    let io = |e: io::Error| format!("presenting the sockets: {e}");
    for (keys, fds) in keys
        .chunks(FDS_PER_MESSAGE)
        .zip(fds.chunks(FDS_PER_MESSAGE))
    {
        let data: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        send(sock, PRESENT, &data, fds).map_err(io)?;
    }
    send(sock, PRESENTED, &[], &[]).map_err(io)
}

/// Reads the new process's READY: every presented socket is registered.
pub fn read_ready(sock: &OwnedFd) -> Result<(), String> {
    let mut buf = [0u8; 256];
    let mut none = Vec::new();
    let n = recv(sock, &mut buf, &mut none).map_err(|e| format!("{e}"))?;
    match buf.get(..n) {
        Some([READY, ..]) => Ok(()),
        Some([]) | None => Err("the new process exited before it was ready".into()),
        Some([FAILED, why @ ..]) => Err(String::from_utf8_lossy(why).into_owned()),
        _ => Err("unexpected message from the new process".into()),
    }
}

/// Reads the new process's HELLO: the state version it reads.
pub fn read_hello(sock: &OwnedFd) -> Result<u32, String> {
    let mut buf = [0u8; 256];
    let mut none = Vec::new();
    let n = recv(sock, &mut buf, &mut none).map_err(|e| format!("{e}"))?;
    match buf.get(..n) {
        Some([HELLO, v @ ..]) if v.len() >= 4 => Ok(u32::from_le_bytes([v[0], v[1], v[2], v[3]])),
        Some([]) | None => Err("the new process exited before it was ready".into()),
        Some([FAILED, why @ ..]) => Err(String::from_utf8_lossy(why).into_owned()),
        _ => Err("unexpected message from the new process".into()),
    }
}

/// Tells the new process its state version is not ours.
pub fn refuse(sock: &OwnedFd, why: &str) {
    let _ = send(sock, REFUSE, why.as_bytes(), &[]);
}

// ---- The new process's side.

/// When this process was started by a reload: says HELLO, takes the state and descriptors,
/// answers TAKEN, and waits until the old process is gone. `Ok(None)` for a normal start.
pub fn take_over() -> Result<Option<Handover>, String> {
    let Some(fd) = std::env::var(UPGRADE_FD_ENV).ok() else {
        return Ok(None);
    };
    // Single-threaded here (before the loop starts).
    std::env::remove_var(UPGRADE_FD_ENV);
    let raw: RawFd = fd
        .parse()
        .map_err(|_| format!("{UPGRADE_FD_ENV}={fd:?} is not a descriptor"))?;
    // SAFETY: the old process passed this descriptor to us and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let _ = crate::server::upgrade::set_cloexec(&sock);
    let version = std::env::var(TEST_VERSION_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STATE_VERSION);
    let io = |e: io::Error| format!("handover socket: {e}");
    send(&sock, HELLO, &version.to_le_bytes(), &[]).map_err(io)?;
    let mut buf = vec![0u8; CHUNK + 16];
    let (poll, presented) = take_presented(&sock, &mut buf)?;
    send(&sock, READY, &[], &[]).map_err(io)?;
    let mut asked = None;
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    loop {
        if !wait_readable(&sock, UPGRADE_TIMEOUT).map_err(io)? {
            return Err("the old process sent nothing in time".into());
        }
        let n = recv(&sock, &mut buf, &mut fds).map_err(io)?;
        asked.get_or_insert_with(Instant::now);
        match buf.get(..n) {
            Some([DATA, chunk @ ..]) => bytes.extend_from_slice(chunk),
            Some([FDS]) => {}
            Some([END, len @ ..]) if len.len() == 8 => {
                let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
                if len != bytes.len() as u64 {
                    let why = "state length mismatch";
                    let _ = send(&sock, FAILED, why.as_bytes(), &[]);
                    return Err(why.into());
                }
                break;
            }
            Some([REFUSE, why @ ..]) => {
                return Err(format!(
                    "the running process refused: {}",
                    String::from_utf8_lossy(why)
                ))
            }
            _ => return Err("the old process went away during the transfer".into()),
        }
    }
    let state = match decode(&bytes) {
        Ok(s) => s,
        Err(why) => {
            let _ = send(&sock, FAILED, why.as_bytes(), &[]);
            return Err(why);
        }
    };
    let expected = 1
        + usize::from(state.has_metrics)
        + usize::from(state.has_api)
        + usize::from(state.has_tls)
        + state.conns.iter().filter(|c| !c.presented).count()
        + state.api_conns.len();
    if fds.len() != expected {
        let why = format!("{} descriptors for {expected} sockets", fds.len());
        let _ = send(&sock, FAILED, why.as_bytes(), &[]);
        return Err(why);
    }
    let received = Instant::now();
    send(&sock, TAKEN, &[], &[]).map_err(io)?;
    // The old process exits now; until its end of the socket closes it may still be writing
    // its last log lines, and it must not see us touch a socket before it is gone.
    let mut none = Vec::new();
    while wait_readable(&sock, UPGRADE_TIMEOUT).unwrap_or(false) {
        match recv(&sock, &mut buf, &mut none) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(Some(Handover {
        state,
        fds,
        poll: Some(poll),
        presented,
        asked: asked.unwrap_or(received),
        received,
        old_gone: Instant::now(),
    }))
}

/// The new process's side of step 3: takes every presented socket (all of them first, so
/// that the old process, whose sends block once a few messages queue, is free again at
/// once), then registers each with a new poll under its key.
fn take_presented(
    sock: &OwnedFd,
    buf: &mut [u8],
) -> Result<(mio::Poll, HashMap<u32, mio::net::TcpStream>), String> {
    use mio::{Interest, Token};
    let io = |e: io::Error| format!("handover socket: {e}");
    let mut taken: Vec<(u32, OwnedFd)> = Vec::new();
    loop {
        if !wait_readable(sock, UPGRADE_TIMEOUT).map_err(io)? {
            return Err("the old process presented nothing in time".into());
        }
        let mut fds = Vec::new();
        let n = recv(sock, buf, &mut fds).map_err(io)?;
        match buf.get(..n) {
            Some([PRESENT, keys @ ..]) if keys.len() == 4 * fds.len() => {
                let keys = keys
                    .chunks_exact(4)
                    .map(|k| u32::from_le_bytes(k.try_into().unwrap_or_default()));
                taken.extend(keys.zip(fds));
            }
            Some([PRESENT, ..]) => return Err("presented keys and sockets do not match".into()),
            Some([PRESENTED]) => break,
            Some([REFUSE, why @ ..]) => {
                return Err(format!(
                    "the running process refused: {}",
                    String::from_utf8_lossy(why)
                ))
            }
            _ => return Err("the old process went away before the transfer".into()),
        }
    }
    let poll = mio::Poll::new().map_err(io)?;
    let mut presented = HashMap::with_capacity(taken.len());
    for (key, fd) in taken {
        let mut s = mio::net::TcpStream::from_std(std::net::TcpStream::from(fd));
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry()
            .register(&mut s, Token(key as usize), interest)
            .map_err(io)?;
        presented.insert(key, s);
    }
    Ok((poll, presented))
}

/// Makes `fd` close-on-exec again (the new process's end, once inherited).
pub fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            has_metrics: true,
            has_api: false,
            has_tls: true,
            conns: vec![ConnState {
                key: 7,
                presented: true,
                phase: 1,
                timer: 2,
                remaining_ms: Some(1234),
                flags: 0b10000,
                peer_code: Some(1000),
                idle_ms: 7,
                armed_ago_ms: 9,
                ip: Some("127.0.0.3".parse().unwrap()),
                session: SessionState {
                    close: CloseState::Open,
                    open: Some(DataKind::Text),
                    fragments: "héllo".as_bytes().to_vec(),
                    utf8_carry: vec![0xC3],
                    unmasked: 3,
                    skip: 0,
                    deflate: crate::protocol::deflate::negotiate(
                        [&b"permessage-deflate; client_max_window_bits"[..]],
                        crate::protocol::deflate::Mode::Context { window_bits: 12 },
                    ),
                    compressed: false,
                },
                input: vec![0x81, 0x85, 1, 2, 3],
                output: vec![0x81, 0x01, b'x'],
                channels: vec!["news".into(), "chat/room-1".into()],
                inflate_window: b"the client's last bytes".to_vec(),
                deflate_window: b"ours".to_vec(),
            }],
            api_conns: vec![ApiConnState {
                input: b"GET /chan".to_vec(),
                output: vec![],
                last: false,
            }],
        }
    }

    #[test]
    fn the_state_round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        assert_eq!(
            decode(&encode(&State::default())).unwrap(),
            State::default()
        );
    }

    #[test]
    fn a_damaged_or_foreign_state_is_refused() {
        let bytes = encode(&sample());
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        let mut other = bytes.clone();
        other[4] = 9;
        assert!(decode(&other).unwrap_err().contains("version"));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"nope").is_err());
        assert_eq!(version_of(&bytes), Some(STATE_VERSION));
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        let (a, b) = socket_pair().unwrap();
        let (x, _y) = socket_pair().unwrap();
        send(&a, DATA, b"hello", &[x.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let n = recv(&b, &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"Dhello");
        assert_eq!(fds.len(), 1);
        assert_ne!(
            fds[0].as_raw_fd(),
            x.as_raw_fd(),
            "a new descriptor for the same socket"
        );
        drop(a);
        assert_eq!(
            recv(&b, &mut buf, &mut fds).unwrap(),
            0,
            "EOF once the peer is gone"
        );
    }
}
