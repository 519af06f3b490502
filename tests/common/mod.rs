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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsd"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
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
        let mut wsd = Wsd {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let line = wsd
            .wait_for_log("listening on ")
            .unwrap_or_else(|| panic!("wsd did not start: {:?}", wsd.logs()));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in log line");
        wsd.addr = addr.parse().expect("socket address");
        wsd
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
