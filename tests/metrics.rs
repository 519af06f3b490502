//! The Prometheus `/metrics` endpoint, scraped during an echo run and during a drain.

mod common;

use common::{connect, http_get, raw_upgraded, read_frame, scrape, Wsd};
use std::io::Write;
use tungstenite::Message;

#[test]
fn metrics_are_off_unless_asked_for() {
    let wsd = Wsd::start(&[]);
    assert!(!wsd.logs().iter().any(|l| l.contains("metrics on")));
}

#[test]
fn counters_move_during_an_echo_run_and_a_drain() {
    let mut wsd = Wsd::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--close-timeout",
        "1500ms",
    ]);
    let at = wsd.metrics_addr();
    let m = scrape(at);
    assert_eq!(m["wsd_connections_open"], 0.0);
    assert_eq!(m["wsd_connections_accepted_total"], 0.0);
    assert_eq!(m["wsd_messages_received_total"], 0.0);
    assert_eq!(m["wsd_slow_consumer_closes_total"], 0.0);
    assert_eq!(m["wsd_draining"], 0.0);
    assert_eq!(http_get(at, "/").0, 404);

    // Echo: 3 clients × 5 messages of 100 bytes.
    let mut clients: Vec<_> = (0..3).map(|_| connect(&wsd)).collect();
    for ws in clients.iter_mut() {
        for _ in 0..5 {
            ws.send(Message::binary(vec![7u8; 100])).unwrap();
            assert_eq!(ws.read().unwrap(), Message::binary(vec![7u8; 100]));
        }
    }
    // A handshake with the wrong version gets 426.
    let mut old = std::net::TcpStream::connect(wsd.addr).unwrap();
    let request = String::from_utf8(common::upgrade_request("/")).unwrap();
    old.write_all(request.replace("Version: 13", "Version: 8").as_bytes())
        .unwrap();
    assert!(common::read_http_head(&mut old).starts_with("HTTP/1.1 426"));
    // Closed, so that the only close timeout below is the WebSocket one.
    drop(old);
    // A client that breaks the protocol is sent 1002 and never answers: a close timeout.
    let mut rude = raw_upgraded(&wsd);
    rude.write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'])
        .unwrap(); // Unmasked.
    assert_eq!(read_frame(&mut rude).unwrap().close_code(), Some(1002));
    wsd.wait_for_log("close timed out").unwrap();
    // A client that closes by itself.
    let mut leaving = connect(&wsd);
    leaving.close(None).unwrap();
    while leaving.read().is_ok() {}

    let m = scrape(at);
    assert_eq!(m["wsd_connections_open"], 3.0);
    assert_eq!(m["wsd_connections_accepted_total"], 6.0);
    assert_eq!(m["wsd_messages_received_total"], 15.0);
    assert_eq!(m["wsd_messages_sent_total"], 15.0);
    assert!(m["wsd_received_bytes_total"] > 15.0 * 100.0);
    assert!(m["wsd_sent_bytes_total"] > 15.0 * 100.0);
    assert_eq!(m["wsd_handshakes_rejected_total{status=\"426\"}"], 1.0);
    assert_eq!(m["wsd_closes_total{side=\"server\",code=\"1002\"}"], 1.0);
    assert_eq!(m["wsd_closes_total{side=\"client\",code=\"1005\"}"], 1.0);
    assert_eq!(m["wsd_close_timeouts_total"], 1.0);

    // Drain: two clients answer their Close, one stays silent until close_timeout.
    wsd.signal(libc::SIGTERM);
    for ws in clients.iter_mut().take(2) {
        assert!(matches!(ws.read(), Ok(Message::Close(_))));
        let _ = ws.flush();
    }
    wsd.wait_for_log("draining 3 connections").unwrap();
    let m = scrape(at);
    assert_eq!(m["wsd_draining"], 1.0);
    assert_eq!(m["wsd_closes_total{side=\"server\",code=\"1001\"}"], 3.0);
    assert_eq!(m["wsd_drain_pending_closes"], 0.0);
    assert!(wsd.wait_exit().success());
}
