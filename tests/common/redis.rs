//! A real `redis-server` on a loopback port for the broker tests, and a tiny RESP client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wsd::pubsub::redis::{command, next_frame};

use super::WAIT;
use redis_protocol::resp2::types::OwnedFrame;

/// A `redis-server` process (killed on drop). `scripts/test-deps.sh` installs it.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    /// Starts one on a free port and waits until it answers.
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Redis::start_on(port)
    }

    /// Starts one on `port` (a restart after [`Redis::kill`]).
    pub fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/test-deps.sh)");
        let redis = Redis {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + WAIT;
        while redis.try_cmd(&["PING"]).is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a command; `None` when Redis does not answer.
    pub fn try_cmd(&self, args: &[&str]) -> Option<OwnedFrame> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let mut out = Vec::new();
        command(&mut out, &args);
        s.write_all(&out).ok()?;
        let mut input = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(Some((frame, _))) = next_frame(&input) {
                return Some(frame);
            }
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            input.extend_from_slice(&buf[..n]);
        }
    }

    /// `PUBSUB CHANNELS`, sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut names: Vec<String> = match self.try_cmd(&["PUBSUB", "CHANNELS"]) {
            Some(OwnedFrame::Array(items)) => items
                .into_iter()
                .filter_map(|f| match f {
                    OwnedFrame::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                })
                .collect(),
            other => panic!("PUBSUB CHANNELS: {other:?}"),
        };
        names.sort();
        names
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
