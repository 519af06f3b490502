//! Limits and timers under load: connection caps, origins, handshake and ping timeouts,
//! backpressure. Against the real binary.

mod common;

use common::{connect, frame, handshake_with, raw_upgraded, read_frame, rss_bytes, Wsd};
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::Message;

fn echo_ok(ws: &mut common::Client, text: &str) {
    ws.send(Message::text(text)).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(text));
}

#[test]
fn above_max_connections_new_clients_get_503() {
    let wsd = Wsd::start(&["--max-connections", "5"]);
    let mut open: Vec<_> = (0..5).map(|_| connect(&wsd)).collect();
    for ws in open.iter_mut() {
        echo_ok(ws, "in");
    }
    let (mut s, head) = handshake_with(wsd.addr, "");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(common::sees_eof(&mut s));
    // A slot frees when a client leaves; a new client then gets in.
    let mut leaving = open.pop().unwrap();
    leaving.close(None).unwrap();
    while leaving.read().is_ok() {}
    let deadline = Instant::now() + common::WAIT;
    loop {
        let (_s, head) = handshake_with(wsd.addr, "");
        if head.starts_with("HTTP/1.1 101 ") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed: {head}");
    }
}

#[test]
fn per_ip_limit_counts_each_address() {
    let wsd = Wsd::start(&["--max-connections-per-ip", "2"]);
    let _a = connect(&wsd);
    let _b = connect(&wsd);
    let (_s, head) = handshake_with(wsd.addr, "");
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    // Another loopback address has its own count.
    let sock = socket2_bind("127.0.0.2");
    let stream = connect_from(sock, wsd.addr);
    let (mut ws, _) = tungstenite::client(wsd.url(), stream).expect("other address accepted");
    echo_ok(&mut ws, "from 127.0.0.2");
}

/// A TCP socket bound to `ip` (any port), for connecting from another loopback address.
fn socket2_bind(ip: &str) -> std::net::TcpListener {
    // Binding a listener reserves a port on `ip`; its address is reused for the client below.
    std::net::TcpListener::bind((ip, 0)).expect("bind source address")
}

fn connect_from(reserved: std::net::TcpListener, to: std::net::SocketAddr) -> TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let local = reserved.local_addr().unwrap();
    drop(reserved);
    // SAFETY: plain socket(2)/setsockopt(2)/bind(2)/connect(2) calls on a fresh fd we own; the
    // sockaddr is built for its declared size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let sockaddr = |addr: std::net::SocketAddr| {
            let std::net::SocketAddr::V4(v4) = addr else {
                panic!("IPv4 only")
            };
            libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let src = sockaddr(local);
        assert_eq!(
            libc::bind(fd, &src as *const _ as *const libc::sockaddr, len),
            0
        );
        let dst = sockaddr(to);
        assert_eq!(
            libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len),
            0
        );
        TcpStream::from_raw_fd(fd.into_raw_fd())
    }
}

#[test]
fn origin_check() {
    let wsd = Wsd::start(&[
        "--allowed-origins",
        "https://good.example, https://also.example",
    ]);
    let (_s, head) = handshake_with(wsd.addr, "Origin: https://good.example");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (_s, head) = handshake_with(wsd.addr, "Origin: https://evil.example");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // Non-browser clients send no Origin; the check is about cross-site browser requests.
    let (_s, head) = handshake_with(wsd.addr, "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[test]
fn a_client_that_answers_pings_stays_and_one_that_does_not_is_dropped() {
    let wsd = Wsd::start(&["--ping-interval", "300ms", "--pong-timeout", "300ms"]);
    let mut silent = raw_upgraded(&wsd);
    let opened = Instant::now();
    let ping = read_frame(&mut silent).expect("a Ping");
    assert_eq!(
        (ping.opcode, ping.payload.as_slice()),
        (0x9, b"wsd".as_slice())
    );
    let pinged = opened.elapsed();
    assert!(pinged >= Duration::from_millis(270), "{pinged:?}");
    assert!(common::sees_eof(&mut silent), "dropped after no Pong");
    let dropped = opened.elapsed();
    assert!(dropped >= Duration::from_millis(540), "{dropped:?}");
    assert!(dropped < Duration::from_millis(1500), "{dropped:?}");

    // tungstenite answers every Ping while it reads; it outlives several intervals.
    let mut ws = connect(&wsd);
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("dropped although it answered: {e}"),
        }
    }
    assert!(pings >= 3, "{pings} pings");
    ws.get_mut().set_read_timeout(Some(common::WAIT)).unwrap();
    echo_ok(&mut ws, "still here");
}

/// Opens `n` TCP connections registered with a mio poll (for timing many sockets at once).
fn many(addr: std::net::SocketAddr, n: usize, poll: &Poll) -> Vec<(MioStream, Instant)> {
    (0..n)
        .map(|i| {
            let std_stream = TcpStream::connect(addr).expect("connect");
            std_stream.set_nonblocking(true).unwrap();
            let mut s = MioStream::from_std(std_stream);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .unwrap();
            (s, Instant::now())
        })
        .collect()
}

/// Waits for every socket to reach EOF and returns, per socket, when it did.
fn eof_times(poll: &mut Poll, socks: &mut [(MioStream, Instant)]) -> Vec<Instant> {
    let mut ended: Vec<Option<Instant>> = vec![None; socks.len()];
    let mut left = socks.len();
    let mut events = Events::with_capacity(1024);
    let deadline = Instant::now() + common::WAIT;
    let mut buf = [0u8; 4096];
    while left > 0 {
        assert!(Instant::now() < deadline, "{left} sockets still open");
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        let now = Instant::now();
        for e in events.iter() {
            let i = e.token().0;
            loop {
                match socks[i].0.read(&mut buf) {
                    Ok(0) => {
                        if ended[i].is_none() {
                            ended[i] = Some(now);
                            left -= 1;
                        }
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        if ended[i].is_none() {
                            ended[i] = Some(now);
                            left -= 1;
                        }
                        break;
                    }
                }
            }
        }
    }
    ended.into_iter().map(|t| t.unwrap()).collect()
}

#[test]
fn a_thousand_slow_handshakes_time_out_while_others_are_served() {
    let timeout = Duration::from_millis(1500);
    let wsd = Wsd::start(&["--handshake-timeout", "1500ms"]);
    let mut poll = Poll::new().unwrap();
    let mut slow = many(wsd.addr, 1000, &poll);
    for (s, _) in slow.iter_mut() {
        s.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n").unwrap();
    }
    // Normal clients are served while the slow ones hang on.
    let mut ws = connect(&wsd);
    for i in 0..20 {
        echo_ok(&mut ws, &format!("served {i}"));
    }
    let ended = eof_times(&mut poll, &mut slow);
    for ((_, opened), end) in slow.iter().zip(ended) {
        let after = end - *opened;
        assert!(after >= timeout.mul_f64(0.9), "dropped early: {after:?}");
        assert!(after <= timeout.mul_f64(1.1), "dropped late: {after:?}");
    }
    echo_ok(&mut ws, "after the timeouts");
}

#[test]
fn ten_thousand_ping_timers_fire_within_ten_percent() {
    let interval = Duration::from_millis(2000);
    let wsd = Wsd::start(&[
        "--ping-interval",
        "2s",
        "--pong-timeout",
        "2s",
        "--max-connections",
        "10010",
        "--handshake-timeout",
        "60s",
    ]);
    let mut poll = Poll::new().unwrap();
    let n = 10_000;
    let mut socks = many(wsd.addr, n, &poll);
    let request = common::upgrade_request("/");
    for (s, _) in socks.iter_mut() {
        s.write_all(&request).unwrap();
    }
    // Per socket: when its 101 arrived (the server's clock starts there), when its Ping came.
    let mut opened: Vec<Option<Instant>> = vec![None; n];
    let mut pinged: Vec<Option<Instant>> = vec![None; n];
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut events = Events::with_capacity(1024);
    let deadline = Instant::now() + common::WAIT;
    let mut left = n;
    let mut buf = [0u8; 4096];
    while left > 0 {
        assert!(
            Instant::now() < deadline,
            "{left} connections without a Ping"
        );
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        let now = Instant::now();
        for e in events.iter() {
            let i = e.token().0;
            loop {
                match socks[i].0.read(&mut buf) {
                    Ok(0) => panic!("connection {i} closed early"),
                    Ok(k) => pending[i].extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("connection {i}: {e}"),
                }
            }
            let p = &mut pending[i];
            if opened[i].is_none() {
                if let Some(end) = p.windows(4).position(|w| w == b"\r\n\r\n") {
                    assert!(p.starts_with(b"HTTP/1.1 101 "));
                    opened[i] = Some(now);
                    p.drain(..end + 4);
                }
            }
            if opened[i].is_some() && pinged[i].is_none() && p.len() >= 2 {
                assert_eq!(p[0], 0x89, "a Ping");
                pinged[i] = Some(now);
                left -= 1;
            }
        }
    }
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let after = pinged[i].unwrap() - opened[i].unwrap();
        let off = after.abs_diff(interval);
        worst = worst.max(off);
    }
    assert!(
        worst <= interval.mul_f64(0.1),
        "worst ping {worst:?} off the 2s interval"
    );
    // Nobody answers: all are dropped one pong_timeout later.
    let ended = eof_times(&mut poll, &mut socks);
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let after = ended[i] - pinged[i].unwrap();
        worst = worst.max(after.abs_diff(interval));
    }
    assert!(
        worst <= interval.mul_f64(0.1),
        "worst drop {worst:?} off the 2s pong timeout"
    );
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_server() {
    let wsd = Wsd::start(&[
        "--max-output-buffer",
        "1MiB",
        "--slow-consumer-timeout",
        "2s",
        "--close-timeout",
        "20s",
    ]);
    let mut ws = connect(&wsd);
    echo_ok(&mut ws, "baseline");
    let before = rss_bytes(wsd.pid());
    let mut hog = raw_upgraded(&wsd);
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk = frame(true, 0x2, &vec![0x42; 64 * 1024]);
    let total: u64 = 1 << 30;
    let mut sent: u64 = 0;
    let mut stalled = false;
    while sent < total {
        match hog.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                stalled = true;
                break;
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    let during = rss_bytes(wsd.pid());
    assert!(stalled, "the server kept reading all {sent} bytes");
    assert!(sent < total / 8, "{sent} bytes went in");
    let growth = during.saturating_sub(before);
    assert!(growth < 16 << 20, "server grew by {growth} bytes");
    // Other clients are unaffected.
    echo_ok(&mut ws, "still served");
    // It stays over the bound: closed with 1008 behind the echoes it never read.
    wsd.wait_for_log("slow consumer")
        .expect("slow consumer closed");
    let mut code = None;
    while let Some(f) = read_frame(&mut hog) {
        if f.opcode == 8 {
            code = f.close_code();
            break;
        }
    }
    assert_eq!(code, Some(1008));
}
