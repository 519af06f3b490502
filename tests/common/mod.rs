//! Shared harness for the integration tests: the real `wsd` binary on 127.0.0.1 port 0, real
//! clients, real signals.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on, so a broken server fails a test instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

type Log = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A running `wsd` process.
pub struct Wsd {
    child: Child,
    pub addr: SocketAddr,
    log: Log,
}

impl Wsd {
    /// Starts `wsd --listen 127.0.0.1:0 ARGS…` and waits until it listens.
    pub fn start(args: &[&str]) -> Wsd {
        Self::start_with(args, &[])
    }

    /// Like [`Wsd::start`], with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Wsd {
        let mut cmd = wsd_command(&["--listen", "127.0.0.1:0"]);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit (bounded by [`WAIT`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wsd did not exit: {:?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle` and returns it (None after [`WAIT`]).
    pub fn wait_for_log(&self, needle: &str) -> Option<String> {
        let (lines, cv) = &*self.log;
        let deadline = Instant::now() + WAIT;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(l) = guard.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }
}

impl Drop for Wsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod redis;
pub mod tls;

pub type Client = tungstenite::WebSocket<TcpStream>;

/// A tungstenite client connected and upgraded.
pub fn connect(wsd: &Wsd) -> Client {
    let stream = TcpStream::connect(wsd.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(wsd.url(), stream).expect("handshake");
    ws
}

/// A raw TCP connection that has completed the handshake, for sending hand-made frames.
pub fn raw_upgraded(wsd: &Wsd) -> TcpStream {
    let mut s = TcpStream::connect(wsd.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&upgrade_request("/")).unwrap();
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Reads an HTTP response head byte by byte (so no frame bytes after it are consumed).
pub fn read_http_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5A, 0x13, 0xC7, 0x81];
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One unmasked server frame as read from the socket.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Reads one frame from the server; None on EOF.
pub fn read_frame(s: &mut TcpStream) -> Option<ServerFrame> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).ok()?;
    Some(ServerFrame {
        fin: h[0] & 0x80 != 0,
        opcode: h[0] & 0x0F,
        payload,
    })
}

/// Reads frames until a Close and returns its code (None if the stream ended first).
pub fn read_until_close(s: &mut TcpStream) -> Option<u16> {
    loop {
        let f = read_frame(s)?;
        if f.opcode == 8 {
            return Some(f.close_code().unwrap_or(1005));
        }
    }
}

/// Whether the server closed the TCP connection (EOF or reset) within [`WAIT`].
pub fn sees_eof(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

// ---- Running wsd as systemd does: notify socket, inherited sockets, metrics. ----

/// The `wsd` command with the harness's settings (debug logs on a piped stderr) and `args`, but
/// no `--listen`: for tests that need more control than [`Wsd::start`].
pub fn wsd_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsd"));
    cmd.args(args)
        .env("RUST_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// `wsd ARGS…` started as systemd's socket activation does: each listener is passed as fd 3,
/// 4, … with its name in `LISTEN_FDNAMES`, and `LISTEN_PID` is the pid of wsd itself (a shell
/// exports its own pid and execs wsd, keeping it; the child only dup2s between fork and exec).
pub fn activated_command(listeners: &[(&std::net::TcpListener, &str)], args: &[&str]) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let names: Vec<&str> = listeners.iter().map(|(_, n)| *n).collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_wsd"))
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env("LISTEN_FDS", listeners.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let fds: Vec<i32> = listeners.iter().map(|(l, _)| l.as_raw_fd()).collect();
    // Descriptors are first moved out of the way of 3.., so a listener already at 3 or 4 is not
    // overwritten before it is passed on.
    const PARK: i32 = 100;
    // SAFETY: only dup2(2) and close(2), which are async-signal-safe, run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, PARK + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..fds.len() as i32 {
                // dup2 clears FD_CLOEXEC on the new descriptor: it survives both execs.
                if libc::dup2(PARK + i, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(PARK + i);
            }
            Ok(())
        });
    }
    cmd
}

impl Wsd {
    /// Spawns `cmd` (see [`wsd_command`]; stderr must be piped) and waits until it listens.
    pub fn spawn(cmd: Command) -> Wsd {
        let mut wsd = Wsd::spawn_until(cmd, "listening on ");
        let line = wsd.wait_for_log("listening on ").unwrap();
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in log line");
        wsd.addr = addr.parse().expect("socket address");
        wsd
    }

    /// Spawns `cmd` and waits for a stderr line containing `needle` (its `addr` is unset).
    pub fn spawn_until(mut cmd: Command, needle: &str) -> Wsd {
        let mut child = cmd.spawn().expect("spawn wsd");
        let stderr = child.stderr.take().expect("stderr");
        let log: Log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, cv) = &*sink;
                lines.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let wsd = Wsd {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        if wsd.wait_for_log(needle).is_none() {
            panic!("no {needle:?} from {cmd:?}: {:?}", wsd.logs());
        }
        wsd
    }

    /// The address of the publish API (`--api-listen`), from the log.
    pub fn api_addr(&self) -> SocketAddr {
        let line = self
            .wait_for_log("publish API on http://")
            .unwrap_or_else(|| panic!("no publish API: {:?}", self.logs()));
        line.split("publish API on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .expect("API address in log line")
    }

    /// The address of the `/metrics` endpoint, from the log.
    pub fn metrics_addr(&self) -> SocketAddr {
        let line = self
            .wait_for_log("metrics on http://")
            .unwrap_or_else(|| panic!("no metrics endpoint: {:?}", self.logs()));
        line.split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .expect("metrics address in log line")
    }
}

/// A datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    /// The value for `$NOTIFY_SOCKET`.
    pub name: String,
    path: Option<std::path::PathBuf>,
}

impl NotifySocket {
    /// Binds an abstract socket (`@name`).
    pub fn abstract_name(tag: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wsd-test-{tag}-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind notify socket");
        NotifySocket {
            sock,
            name: format!("@{name}"),
            path: None,
        }
    }

    /// Binds a socket at a path in the temporary directory.
    pub fn path(tag: &str) -> NotifySocket {
        let path = std::env::temp_dir().join(format!("wsd-test-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket {
            sock,
            name: path.to_str().unwrap().to_string(),
            path: Some(path),
        }
    }

    /// The next datagram, or None after [`WAIT`].
    pub fn recv(&self) -> Option<String> {
        self.recv_within(WAIT)
    }

    pub fn recv_within(&self, wait: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Receives datagrams until one satisfies `done`; returns them all (panics after [`WAIT`]).
    pub fn recv_until(&self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let m = self
                .recv()
                .unwrap_or_else(|| panic!("no notification in time; got {got:?}"));
            let stop = done(&m);
            got.push(m);
            if stop {
                return got;
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `GET path` over HTTP/1.1; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: wsd\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// A Prometheus scrape as `name{labels}` → value (no HELP/TYPE lines).
pub fn scrape(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name and value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// Resident memory of a process in bytes, from /proc.
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Sends a handshake with extra header lines and returns the response head.
pub fn handshake_with(addr: SocketAddr, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let request = String::from_utf8(upgrade_request("/")).unwrap();
    let request = request.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1);
    let request = request.replace("\r\n\r\n\r\n", "\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let head = read_http_head(&mut s);
    (s, head)
}

// Helpers for the adversarial suite (tests/adversarial.rs).

/// A raw TCP connection, not upgraded, with read and write timeouts of [`WAIT`].
pub fn raw_connect(wsd: &Wsd) -> TcpStream {
    let s = TcpStream::connect(wsd.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A masked client frame header that declares `len` payload bytes (none of which follow).
pub fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&len.to_be_bytes());
        }
    }
    f.extend_from_slice(&[0x5A, 0x13, 0xC7, 0x81]);
    f
}

/// A masked Close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(true, 0x8, &payload)
}

/// Writes `bytes` one byte per write (Nagle off), pausing `gap` between bytes so that the server
/// sees them arrive in pieces.
pub fn dribble(s: &mut TcpStream, bytes: &[u8], gap: Duration) {
    s.set_nodelay(true).unwrap();
    for b in bytes {
        s.write_all(std::slice::from_ref(b)).unwrap();
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
}

/// Drops a connection with a TCP reset instead of a FIN (SO_LINGER on with a zero timeout).
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live `linger` and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
    drop(s);
}

/// Checks that a well-behaved client still gets exact echoes (text, binary, a Pong); `after`
/// names the case that just ran, for the failure message.
pub fn assert_echoes(ws: &mut Client, after: &str) {
    use tungstenite::Message;
    let text = Message::text(format!("still here after {after} κόσμε"));
    let binary = Message::binary(after.as_bytes().iter().rev().copied().collect::<Vec<u8>>());
    for m in [text, binary] {
        ws.send(m.clone())
            .unwrap_or_else(|e| panic!("witness send after {after}: {e}"));
        let got = ws
            .read()
            .unwrap_or_else(|e| panic!("witness read after {after}: {e}"));
        assert_eq!(got, m, "witness echo after {after}");
    }
}

/// Whether the peer has closed or reset `s` (EOF or an error) without blocking; false while the
/// connection is open with nothing to read.
pub fn closed_now(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match s.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

impl Wsd {
    /// Waits until at least `n` log lines contain `needle`; false after [`WAIT`].
    pub fn wait_for_log_count(&self, needle: &str, n: usize) -> bool {
        let (lines, cv) = &*self.log;
        let deadline = Instant::now() + WAIT;
        let mut guard = lines.lock().unwrap();
        loop {
            if guard.iter().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        let lines = self.log.0.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }
}

/// The Python of the tests' virtualenv (Python `websockets`), created by
/// `scripts/test-venv.sh` on first use.
pub fn test_python() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-venv.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/test-venv.sh");
    assert!(out.status.success(), "scripts/test-venv.sh failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The pid of the process serving `metrics` (from `wsd_build_info`): after a live upgrade,
/// the new process's.
pub fn serving_pid(metrics: SocketAddr) -> i32 {
    let m = scrape(metrics);
    let key = m
        .keys()
        .find(|k| k.starts_with("wsd_build_info"))
        .expect("wsd_build_info")
        .clone();
    key.split("pid=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("a pid label")
}
