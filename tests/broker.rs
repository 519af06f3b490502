//! The Redis broker against real `redis-server`s and several real wsd instances: exact, ordered
//! delivery across instances (two of them sharing a port with `reuse_port`), sharding over two
//! Redis servers, subscriptions following local subscribers, and faults (Redis absent at start,
//! killed, restarted, paused) with every client staying connected; the drain of one instance.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{scrape, wsd_command, Client, Wsd, WAIT};
use tungstenite::Message;

/// A wsd instance in pubsub mode with the broker, its API on a free port.
struct Instance {
    wsd: Wsd,
    api: SocketAddr,
}

fn instance(listen: &str, brokers: &[String], extra: &[&str]) -> Instance {
    let broker = brokers.join(",");
    let mut cmd = wsd_command(&[
        "--listen",
        listen,
        "--mode",
        "pubsub",
        "--api-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--broker",
        &broker,
        "--broker-timeout",
        "600ms",
        "--broker-backoff-max",
        "300ms",
    ]);
    cmd.args(extra);
    let wsd = Wsd::spawn(cmd);
    let api = wsd.api_addr();
    Instance { wsd, api }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn subscribe(addr: SocketAddr, target: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}{target}"), stream).expect("handshake");
    ws
}

/// POSTs a text publication; returns the status and the body.
fn publish(api: SocketAddr, channel: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(api).expect("connect API");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "POST /publish/{channel} HTTP/1.1\r\nContent-Type: text/plain\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn next_text(ws: &mut Client) -> String {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return t.to_string(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Nothing else is queued for `ws`: a Ping comes back before any other message.
fn nothing_more(ws: &mut Client) {
    ws.send(Message::Ping(b"end".to_vec())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"end"),
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits (bounded) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn subscriptions(i: &Instance) -> f64 {
    scrape(i.wsd.metrics_addr())["wsd_subscriptions"]
}

#[test]
fn three_instances_deliver_every_publication_exactly_once_in_order() {
    let redis = Redis::start();
    let brokers = [redis.url()];
    let shared = format!("127.0.0.1:{}", free_port());
    let reuse = ["--reuse-port", "true", "--client-publish", "true"];
    let a = instance(&shared, &brokers, &reuse);
    let b = instance(&shared, &brokers, &reuse);
    let c = instance("127.0.0.1:0", &brokers, &["--client-publish", "true"]);
    let shared: SocketAddr = shared.parse().unwrap();
    let mut subs: Vec<Client> = (0..30).map(|_| subscribe(shared, "/news")).collect();
    subs.extend((0..10).map(|_| subscribe(c.wsd.addr, "/news")));
    let mut talker = subscribe(c.wsd.addr, "/news");
    // The kernel spread the shared port's clients over both instances.
    eventually("subscriptions on every instance", || {
        subscriptions(&a) + subscriptions(&b) == 30.0 && subscriptions(&c) == 11.0
    });
    assert!(subscriptions(&a) >= 1.0 && subscriptions(&b) >= 1.0);
    eventually("wsd:news subscribed in Redis", || {
        redis
            .try_cmd(&["PUBSUB", "NUMSUB", "wsd:news"])
            .is_some_and(|f| format!("{f:?}").contains("Integer(3)"))
    });

    let mut sent = Vec::new();
    for i in 0..60 {
        let text = format!("p{i}");
        match i % 4 {
            0 => assert_eq!(publish(a.api, "news", &text).0, 200),
            1 => assert_eq!(publish(b.api, "news", &text).0, 200),
            2 => assert_eq!(
                publish(c.api, "news", &text),
                (200, "{\"channel\":\"news\",\"instances\":3}\n".into())
            ),
            _ => talker.send(Message::text(text.clone())).unwrap(),
        }
        // The talker is a subscriber too: once it sees this one, the next may follow.
        assert_eq!(next_text(&mut talker), text);
        sent.push(text);
    }
    for ws in &mut subs {
        for text in &sent {
            assert_eq!(&next_text(ws), text);
        }
        nothing_more(ws);
    }

    // Redis subscriptions follow the last local subscriber.
    let solo = subscribe(c.wsd.addr, "/solo");
    eventually("wsd:solo subscribed", || {
        redis.channels().contains(&"wsd:solo".to_string())
    });
    drop(solo);
    eventually("wsd:solo unsubscribed", || {
        !redis.channels().contains(&"wsd:solo".to_string())
    });
    assert_eq!(redis.channels(), ["wsd:news"]);
}

#[test]
fn two_shards_split_channels_and_every_delivery_is_exact() {
    let (r1, r2) = (Redis::start(), Redis::start());
    let i = instance("127.0.0.1:0", &[r1.url(), r2.url()], &[]);
    let names: Vec<String> = (0..20).map(|k| format!("room-{k}")).collect();
    let mut subs: Vec<Client> = names
        .iter()
        .map(|n| subscribe(i.wsd.addr, &format!("/{n}")))
        .collect();
    eventually("all 20 channels subscribed in Redis", || {
        r1.channels().len() + r2.channels().len() == 20
    });
    let (c1, c2) = (r1.channels(), r2.channels());
    assert!(!c1.is_empty() && !c2.is_empty(), "{c1:?} {c2:?}");
    assert!(c1.iter().all(|c| !c2.contains(c)));
    for round in 0..3 {
        for n in &names {
            let (status, body) = publish(i.api, n, &format!("{n}#{round}"));
            assert_eq!(status, 200, "{body}");
        }
    }
    for (ws, n) in subs.iter_mut().zip(&names) {
        for round in 0..3 {
            assert_eq!(next_text(ws), format!("{n}#{round}"));
        }
        nothing_more(ws);
    }
}

#[test]
fn redis_faults_keep_every_client_connected() {
    // Absent at start: wsd starts, serves its clients, and fails publications loudly.
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let i = instance("127.0.0.1:0", std::slice::from_ref(&url), &[]);
    let metrics = i.wsd.metrics_addr();
    let up = || {
        scrape(metrics)
            .get(&format!("wsd_broker_up{{url=\"{url}\"}}"))
            .copied()
    };
    let failed = || scrape(metrics)["wsd_broker_publish_failed_total"];
    let mut sub = subscribe(i.wsd.addr, "/live");
    assert_eq!(publish(i.api, "live", "never").0, 503);
    assert!(failed() >= 1.0);
    assert_eq!(
        i.wsd.log_count("retrying with backoff"),
        1,
        "logged once: {:?}",
        i.wsd.logs()
    );

    let mut acked: Vec<u32> = Vec::new();
    let mut got: Vec<u32> = Vec::new();
    let mut seq = 0;
    let mut publish_until_ok = |acked: &mut Vec<u32>| {
        eventually("a publication accepted", || {
            seq += 1;
            let ok = publish(i.api, "live", &seq.to_string()).0 == 200;
            if ok {
                acked.push(seq);
            }
            ok
        });
    };
    let mut redis = Redis::start_on(port);
    publish_until_ok(&mut acked);
    // While Redis is up every accepted publication arrives. (Redis answers PUBLISH once the
    // message is queued for its subscribers, not once it is sent: one accepted the instant
    // before Redis dies may be lost with it. So each fault below waits for the last one.)
    read_until(&mut sub, &mut got, &acked);

    // Killed mid-run: 503s, counted; the client stays.
    redis.kill();
    eventually("the broker marked down", || up() == Some(0.0));
    let before = failed();
    assert_eq!(publish(i.api, "live", "lost").0, 503);
    assert!(failed() > before);
    read_until_pong(&mut sub, &mut got);

    // Restarted: resubscribed, deliveries resume without restarting wsd.
    let redis2 = Redis::start_on(port);
    for _ in 0..5 {
        publish_until_ok(&mut acked);
    }
    read_until(&mut sub, &mut got, &acked);

    // Paused: detected by PING, then recovered.
    // SAFETY: kill(2) on a child process of this test.
    assert_eq!(unsafe { libc::kill(redis2.pid(), libc::SIGSTOP) }, 0);
    eventually("a paused Redis detected", || up() == Some(0.0));
    assert_eq!(publish(i.api, "live", "while paused").0, 503);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(redis2.pid(), libc::SIGCONT) }, 0);
    publish_until_ok(&mut acked);

    // Every accepted publication arrived, in order (a 503'd one may or may not have).
    read_until(&mut sub, &mut got, &acked);
    read_until_pong(&mut sub, &mut got);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(
        acked.iter().all(|a| got.contains(a)),
        "acked {acked:?}, got {got:?}: {:?}",
        i.wsd.logs()
    );
    assert_eq!(
        scrape(metrics)["wsd_connections_open"],
        1.0,
        "the client stayed connected"
    );
    assert!(scrape(metrics)[&format!("wsd_broker_connects_total{{url=\"{url}\"}}")] >= 3.0);
}

/// Reads numbered publications until the last of `acked` has arrived.
fn read_until(ws: &mut Client, got: &mut Vec<u32>, acked: &[u32]) {
    while got.last() < acked.last() {
        got.push(next_text(ws).parse::<u32>().unwrap());
    }
}

/// Pings `ws` and reads up to the Pong, collecting the numbered publications on the way.
fn read_until_pong(ws: &mut Client, got: &mut Vec<u32>) {
    ws.send(Message::Ping(b"alive".to_vec())).unwrap();
    loop {
        match ws.read().expect("still connected") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"alive");
                return;
            }
            Message::Text(t) => got.push(t.parse().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_drain_of_one_instance_delivers_what_it_accepted_while_the_others_go_on() {
    let redis = Redis::start();
    let brokers = [redis.url()];
    let a = instance("127.0.0.1:0", &brokers, &[]);
    let mut b = instance("127.0.0.1:0", &brokers, &["--close-reason", "moving"]);
    let mut on_a: Vec<Client> = (0..5).map(|_| subscribe(a.wsd.addr, "/feed")).collect();
    let on_b: Vec<Client> = (0..5).map(|_| subscribe(b.wsd.addr, "/feed")).collect();
    eventually("both instances subscribed", || {
        redis
            .try_cmd(&["PUBSUB", "NUMSUB", "wsd:feed"])
            .is_some_and(|f| format!("{f:?}").contains("Integer(2)"))
    });
    // Accepted by B just before its SIGTERM: every subscriber everywhere gets them.
    for k in 0..50 {
        assert_eq!(publish(b.api, "feed", &format!("b{k}")).0, 200);
    }
    b.wsd.signal(libc::SIGTERM);
    for mut ws in on_b {
        for k in 0..50 {
            assert_eq!(next_text(&mut ws), format!("b{k}"));
        }
        match ws.read().expect("the Close") {
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1001);
                assert_eq!(f.reason, "moving");
            }
            other => panic!("expected the Close 1001, got {other:?}"),
        }
    }
    assert!(b.wsd.wait_exit().success());
    for k in 0..20 {
        assert_eq!(publish(a.api, "feed", &format!("a{k}")).0, 200);
    }
    for ws in &mut on_a {
        for k in 0..50 {
            assert_eq!(next_text(ws), format!("b{k}"));
        }
        for k in 0..20 {
            assert_eq!(next_text(ws), format!("a{k}"));
        }
        nothing_more(ws);
    }
}
