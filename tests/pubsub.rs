//! The pub/sub mode against the real binary: subscriptions by path and query, the publish API
//! (every status), client publish on and off, a slow subscriber, and the drain while publishing.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{rss_bytes, scrape, Client, Wsd, WAIT};
use tungstenite::Message;

/// Starts `wsd --mode pubsub` with the API on a free port and `args`.
fn pubsub(args: &[&str]) -> (Wsd, SocketAddr) {
    let mut all = vec![
        "--mode",
        "pubsub",
        "--api-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let wsd = Wsd::start(&all);
    let addr = wsd.api_addr();
    (wsd, addr)
}

/// A tungstenite subscriber of request target `target` (`/news?channel=x`).
fn subscribe(wsd: &Wsd, target: &str) -> Client {
    let stream = TcpStream::connect(wsd.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let url = format!("ws://{}{target}", wsd.addr);
    let (ws, _) = tungstenite::client(url, stream).expect("handshake");
    ws
}

/// One HTTP/1.1 exchange on a keep-alive connection.
struct Api {
    s: TcpStream,
}

/// A response: status, head, body.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Api {
    fn connect(addr: SocketAddr) -> Api {
        let s = TcpStream::connect(addr).expect("connect API");
        s.set_read_timeout(Some(WAIT)).unwrap();
        Api { s }
    }

    fn send(&mut self, request: &[u8]) -> Response {
        self.s.write_all(request).unwrap();
        self.read_response().expect("a response")
    }

    fn publish(&mut self, channel: &str, content_type: &str, body: &[u8]) -> Response {
        let mut req = format!(
            "POST /publish/{channel} HTTP/1.1\r\nHost: wsd\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.send(&req)
    }

    fn read_response(&mut self) -> Option<Response> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return None,
            }
        }
        let head = String::from_utf8(head).unwrap();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.s.read_exact(&mut body).ok()?;
        Some(Response {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Whether the server closed the connection (EOF within WAIT).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.s.read(&mut buf), Ok(0) | Err(_))
    }
}

fn next_data(ws: &mut Client) -> Message {
    loop {
        if let m @ (Message::Text(_) | Message::Binary(_)) = ws.read().expect("a message") {
            return m;
        }
    }
}

#[test]
fn a_publication_reaches_exactly_its_subscribers_in_order() {
    let (wsd, api) = pubsub(&[]);
    let mut news = subscribe(&wsd, "/news");
    let mut both = subscribe(&wsd, "/sport?channel=news");
    let mut room = subscribe(&wsd, "/chat/room-1");
    let mut query = subscribe(&wsd, "/?channel=chat%2Froom-1&channel=sport");
    let mut p = Api::connect(api);
    // Subscriptions are made when the handshake completes: the channel list shows them.
    let r = p.send(b"GET /channels HTTP/1.1\r\nHost: wsd\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.trim(),
        r#"{"channels":{"chat/room-1":2,"news":2,"sport":2}}"#
    );

    for i in 0..20 {
        let r = p.publish("news", "text/plain", format!("news {i}").as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body.trim(), r#"{"channel":"news","subscribers":2}"#);
        assert!(r.head.contains("Connection: keep-alive"));
    }
    let r = p.publish("chat%2Froom-1", "application/octet-stream", &[0, 1, 2, 255]);
    assert_eq!(
        r.body.trim(),
        r#"{"channel":"chat/room-1","subscribers":2}"#
    );
    let r = p.publish("sport", "application/json", br#"{"goal":1}"#);
    assert_eq!(r.body.trim(), r#"{"channel":"sport","subscribers":2}"#);
    let r = p.publish("nobody", "text/plain", b"x");
    assert_eq!(r.body.trim(), r#"{"channel":"nobody","subscribers":0}"#);

    for i in 0..20 {
        assert_eq!(next_data(&mut news), Message::text(format!("news {i}")));
        assert_eq!(next_data(&mut both), Message::text(format!("news {i}")));
    }
    assert_eq!(next_data(&mut room), Message::binary(vec![0, 1, 2, 255]));
    assert_eq!(next_data(&mut query), Message::binary(vec![0, 1, 2, 255]));
    assert_eq!(next_data(&mut both), Message::text(r#"{"goal":1}"#));
    assert_eq!(next_data(&mut query), Message::text(r#"{"goal":1}"#));
    // Nothing else arrived for anyone: a Ping round trip comes back first.
    for ws in [&mut news, &mut both, &mut room, &mut query] {
        ws.send(Message::Ping(b"end".to_vec())).unwrap();
        ws.flush().unwrap();
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"end"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let m = scrape(wsd.metrics_addr());
    assert_eq!(m["wsd_publications_total"], 23.0);
    assert_eq!(m["wsd_deliveries_total"], 44.0);
    assert_eq!(m["wsd_channels"], 3.0);
    assert_eq!(m["wsd_subscriptions"], 6.0);
    drop(news);
}

#[test]
fn bad_channel_names_get_400_before_the_upgrade() {
    let (wsd, _) = pubsub(&["--max-channels-per-connection", "2"]);
    for target in [
        "/",
        "/a%20b",
        "/news?channel=a&channel=b",
        "/bad%zz",
        &format!("/{}", "x".repeat(201)),
    ] {
        let mut s = common::raw_connect(&wsd);
        s.write_all(&common::upgrade_request(target)).unwrap();
        let head = common::read_http_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 400"), "{target}: {head}");
    }
    let _ok = subscribe(&wsd, "/news?channel=a");
}

#[test]
fn client_publish_reaches_every_subscriber_the_sender_included() {
    let (wsd, _) = pubsub(&["--client-publish", "true"]);
    let mut a = subscribe(&wsd, "/room");
    let mut b = subscribe(&wsd, "/room");
    let mut other = subscribe(&wsd, "/elsewhere?channel=room");
    for i in 0..10 {
        a.send(Message::text(format!("from a {i}"))).unwrap();
    }
    for i in 0..10 {
        for ws in [&mut a, &mut b] {
            assert_eq!(next_data(ws), Message::text(format!("from a {i}")));
        }
    }
    // Sent after a's were seen: publications of one channel have one order for everyone.
    b.send(Message::binary(vec![7u8; 300])).unwrap();
    assert_eq!(next_data(&mut a), Message::binary(vec![7u8; 300]));
    assert_eq!(next_data(&mut b), Message::binary(vec![7u8; 300]));
    // `other`'s path channel is "elsewhere"; it gets "room" through its query.
    assert_eq!(next_data(&mut other), Message::text("from a 0"));
    other.send(Message::text("to elsewhere")).unwrap();
    assert_eq!(next_data(&mut other), Message::text("from a 1"));
}

#[test]
fn without_client_publish_a_client_message_closes_it_with_1008() {
    let (wsd, _) = pubsub(&[]);
    let mut ws = subscribe(&wsd, "/news");
    ws.send(Message::text("may I?")).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert!(frame.reason.contains("may not publish"), "{}", frame.reason);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no Close: {e}"),
        }
    }
}

#[test]
fn every_api_error_status_and_the_daemon_keeps_serving() {
    let (wsd, api) = pubsub(&["--max-message-size", "1KiB", "--api-token", "s3cret"]);
    let auth = "Authorization: Bearer s3cret\r\n";
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET /channels HTTP/1.1\r\n\r\n".to_vec(), 401),
        (
            b"GET /channels HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n".to_vec(),
            401,
        ),
        (b"\x01\x02 garbage\r\n\r\n".to_vec(), 400),
        (format!("GET /nope HTTP/1.1\r\n{auth}\r\n").into_bytes(), 404),
        (format!("GET /publish/news HTTP/1.1\r\n{auth}\r\n").into_bytes(), 405),
        (format!("DELETE /channels HTTP/1.1\r\n{auth}\r\n").into_bytes(), 405),
        (format!("POST /publish/news HTTP/1.1\r\n{auth}\r\n").into_bytes(), 411),
        (
            format!("POST /publish/news HTTP/1.1\r\n{auth}Content-Length: 1025\r\n\r\n").into_bytes(),
            413,
        ),
        (
            format!("POST /publish/bad%20name HTTP/1.1\r\n{auth}Content-Length: 1\r\n\r\nx")
                .into_bytes(),
            400,
        ),
        (
            [
                format!(
                    "POST /publish/news HTTP/1.1\r\n{auth}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
                )
                .as_bytes(),
                b"\xc3\x28",
            ]
            .concat(),
            400,
        ),
    ];
    for (request, status) in cases {
        let mut c = Api::connect(api);
        let r = c.send(&request);
        assert_eq!(
            r.status,
            status,
            "{}: {r:?}",
            String::from_utf8_lossy(&request)
        );
        assert!(r.head.contains("Connection: close"), "{r:?}");
        if status == 401 {
            assert!(r.head.contains("WWW-Authenticate: Bearer"));
        }
        assert!(c.closed(), "the connection is closed after {status}");
    }
    // Still serving, on one keep-alive connection.
    let mut ws = subscribe(&wsd, "/news");
    let mut c = Api::connect(api);
    for i in 0..3 {
        let body = format!("ok {i}");
        let req = format!(
            "POST /publish/news HTTP/1.1\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = c.send(req.as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(next_data(&mut ws), Message::text(body));
    }
    let r = c.send(format!("GET /metrics HTTP/1.1\r\n{auth}\r\n").as_bytes());
    assert!(
        r.body.contains("wsd_api_requests_total{status=\"401\"} 2"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("wsd_api_requests_total{status=\"200\"} 3"),
        "{}",
        r.body
    );
}

#[test]
fn pipelined_publishes_are_answered_in_order() {
    let (wsd, api) = pubsub(&[]);
    let mut ws = subscribe(&wsd, "/p");
    let mut c = Api::connect(api);
    let mut batch = Vec::new();
    for i in 0..100 {
        let body = format!("m{i}");
        batch.extend_from_slice(
            format!(
                "POST /publish/p HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    batch.extend_from_slice(b"GET /channels HTTP/1.1\r\n\r\n");
    c.s.write_all(&batch).unwrap();
    for _ in 0..100 {
        let r = c.read_response().expect("an answer");
        assert_eq!(r.body.trim(), r#"{"channel":"p","subscribers":1}"#);
    }
    let r = c.read_response().expect("the channel list");
    assert_eq!(r.body.trim(), r#"{"channels":{"p":1}}"#);
    for i in 0..100 {
        assert_eq!(next_data(&mut ws), Message::text(format!("m{i}")));
    }
}

/// A subscriber that never reads stays bounded while 200 MB are published to its channel;
/// the other subscriber gets every message; the slow one is closed with 1008 and the drops
/// are counted.
#[test]
fn a_subscriber_that_never_reads_stays_bounded() {
    const MESSAGE: usize = 256 * 1024;
    const COUNT: usize = 800; // 200 MiB
    let (wsd, api) = pubsub(&[
        "--max-output-buffer",
        "4MiB",
        "--slow-consumer-timeout",
        "1s",
        "--close-timeout",
        "60s",
        "--ping-interval",
        "0",
    ]);
    let metrics = wsd.metrics_addr();
    let mut slow = subscribe(&wsd, "/firehose");
    slow.get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let fast = subscribe(&wsd, "/firehose");
    let rss_before = rss_bytes(wsd.pid());
    // The publisher stays at most a few messages ahead of the fast subscriber, so that only
    // the slow one ever reaches the output bound.
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = Arc::clone(&received);
    let reader = std::thread::spawn(move || {
        let mut fast = fast;
        for i in 0..COUNT {
            match next_data(&mut fast) {
                Message::Binary(b) => {
                    assert_eq!(b.len(), MESSAGE);
                    assert_eq!(&b[..8], &(i as u64).to_be_bytes(), "message {i} in order");
                }
                other => panic!("unexpected {other:?}"),
            }
            progress.store(i + 1, Ordering::SeqCst);
        }
        fast
    });
    let mut c = Api::connect(api);
    let mut body = vec![0u8; MESSAGE];
    let mut peak = rss_before;
    for i in 0..COUNT {
        while i > received.load(Ordering::SeqCst) + 4 && !reader.is_finished() {
            std::thread::yield_now();
        }
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let r = c.publish("firehose", "application/octet-stream", &body);
        assert_eq!(r.status, 200);
        if i % 50 == 0 {
            peak = peak.max(rss_bytes(wsd.pid()));
        }
    }
    let _fast = reader
        .join()
        .expect("the fast subscriber got every message in order");
    peak = peak.max(rss_bytes(wsd.pid()));
    // The slow one's queue is at most 4 MiB; the rest is the loop's buffers.
    assert!(
        peak < rss_before + 32 * 1024 * 1024,
        "RSS grew from {rss_before} to {peak}"
    );
    // The slow-consumer timer fires 1 s after the first drop.
    let deadline = Instant::now() + WAIT;
    let m = loop {
        let m = scrape(metrics);
        if m.get("wsd_slow_consumer_closes_total") == Some(&1.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "no slow-consumer close: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let dropped = m["wsd_deliveries_dropped_total"];
    assert!(dropped > 0.0, "{m:?}");
    assert_eq!(m["wsd_deliveries_total"] + dropped, 2.0 * COUNT as f64);
    // Now it reads: what was queued for it, in order, then the Close 1008.
    let mut last = None;
    loop {
        match slow.read().expect("read") {
            Message::Binary(b) => {
                let i = u64::from_be_bytes(b[..8].try_into().unwrap());
                assert!(last.map_or(true, |l| i > l), "in order");
                last = Some(i);
            }
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(last.is_some());
}

/// SIGTERM while publishing: every publication answered 200 is received by every subscriber
/// before its Close 1001, and publishes after it get 503.
#[test]
fn the_drain_delivers_every_acknowledged_publication_first() {
    let (mut wsd, api) = pubsub(&["--close-reason", "bye"]);
    let subscribers: Vec<Client> = (0..20).map(|_| subscribe(&wsd, "/live")).collect();
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let refused = Arc::new(AtomicBool::new(false));
    let publisher = {
        let acked = Arc::clone(&acked);
        let refused = Arc::clone(&refused);
        std::thread::spawn(move || {
            let mut c = Api::connect(api);
            for i in 0..u64::MAX {
                let body = i.to_string();
                let req = format!(
                    "POST /publish/live HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if c.s.write_all(req.as_bytes()).is_err() {
                    return;
                }
                match c.read_response() {
                    Some(r) if r.status == 200 => acked.lock().unwrap().push(i),
                    Some(r) if r.status == 503 => {
                        refused.store(true, Ordering::SeqCst);
                        return;
                    }
                    _ => return,
                }
            }
        })
    };
    // Let publications flow, then signal.
    let deadline = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "publishing did not start");
        std::thread::yield_now();
    }
    wsd.signal(libc::SIGTERM);
    publisher.join().unwrap();
    assert!(
        refused.load(Ordering::SeqCst),
        "a publish after SIGTERM gets 503"
    );
    let acked = acked.lock().unwrap().clone();
    for mut ws in subscribers {
        let mut next = 0u64;
        loop {
            match ws.read().expect("read") {
                Message::Text(t) => {
                    assert_eq!(t.parse::<u64>().unwrap(), next, "in order, none lost");
                    next += 1;
                }
                Message::Close(Some(frame)) => {
                    assert_eq!(u16::from(frame.code), 1001);
                    assert_eq!(frame.reason, "bye");
                    break;
                }
                _ => {}
            }
        }
        assert!(
            next as usize >= acked.len(),
            "got {next} of {} acknowledged",
            acked.len()
        );
    }
    assert!(wsd.wait_exit().success());
}

#[test]
fn a_python_websockets_subscriber_gets_publications() {
    let (wsd, api) = pubsub(&[]);
    let python = common::test_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/subscribe.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(format!("ws://{}/py?channel=extra", wsd.addr))
        .arg("3")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "subscribed");
    let mut c = Api::connect(api);
    c.publish("py", "text/plain", "héllo".as_bytes());
    c.publish("extra", "application/octet-stream", b"\x00bin");
    c.publish("py", "application/json", b"[1,2]");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest, "text 'héllo'\nbinary b'\\x00bin'\ntext '[1,2]'\n");
}
