//! The drain on SIGTERM/SIGINT, against the real binary with real signals.

mod common;

use common::{connect, frame, raw_upgraded, read_frame, sees_eof, Wsd};
use std::io::Write;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// Reads until the server's Close and returns its code and reason.
fn close_of(ws: &mut common::Client) -> (u16, String) {
    loop {
        match ws.read().expect("read before Close") {
            Message::Close(Some(frame)) => return (frame.code.into(), frame.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            _ => continue,
        }
    }
}

#[test]
fn clients_that_answer_get_1001_and_the_drain_ends_early() {
    let close_timeout = Duration::from_secs(10);
    let mut wsd = Wsd::start(&["--close-timeout", "10s", "--close-reason", "see you soon"]);
    let mut clients: Vec<_> = (0..100).map(|_| connect(&wsd)).collect();
    // Every client is open on the server side once its echo comes back.
    for ws in clients.iter_mut() {
        ws.send(Message::text("up")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("up"));
    }
    let signalled = Instant::now();
    wsd.signal(libc::SIGTERM);
    for ws in clients.iter_mut() {
        let (code, reason) = close_of(ws);
        assert_eq!((code, reason.as_str()), (1001, "see you soon"));
        expect_closed(ws);
    }
    let status = wsd.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < close_timeout / 4, "drain took {took:?}");
    let summary = wsd.wait_for_log("drain finished").unwrap();
    assert!(
        summary.contains("100 closed cleanly, 0 timed out, 0 errored"),
        "{summary}"
    );
}

#[test]
fn a_client_that_never_answers_is_cut_at_close_timeout() {
    let mut wsd = Wsd::start(&["--close-timeout", "1s"]);
    let mut silent = raw_upgraded(&wsd);
    wsd.signal(libc::SIGTERM);
    let close = read_frame(&mut silent).expect("Close frame");
    let got_close = Instant::now();
    assert_eq!(close.close_code(), Some(1001));
    assert!(sees_eof(&mut silent));
    let cut_after = got_close.elapsed();
    assert!(
        cut_after >= Duration::from_millis(900) && cut_after <= Duration::from_millis(1100),
        "cut after {cut_after:?}, expected 1s ± 10%"
    );
    assert!(wsd.wait_exit().success());
    let summary = wsd.wait_for_log("drain finished").unwrap();
    assert!(
        summary.contains("0 closed cleanly, 1 timed out"),
        "{summary}"
    );
}

/// Reads the Close, lets tungstenite answer it, and waits for the server to close TCP.
fn answer_close(ws: &mut common::Client) -> u16 {
    let (code, _) = close_of(ws);
    expect_closed(ws);
    code
}

/// tungstenite answers the Close on the next read, then sees the server close TCP.
fn expect_closed(ws: &mut common::Client) {
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        Err(e) => panic!("unclean close: {e}"),
        Ok(m) => panic!("data after Close: {m:?}"),
    }
}

#[test]
fn a_message_sent_just_before_sigterm_is_echoed_before_the_1001() {
    for round in 0..10 {
        let mut wsd = Wsd::start(&[]);
        let mut ws = connect(&wsd);
        let text = format!("last words {round}");
        ws.send(Message::text(text.clone())).unwrap();
        wsd.signal(libc::SIGTERM);
        assert_eq!(ws.read().unwrap(), Message::text(text), "round {round}");
        assert_eq!(answer_close(&mut ws), 1001);
        assert!(wsd.wait_exit().success());
    }
}

/// The server side's (send queue, receive queue) for the connection from `client_port`, read
/// from /proc/net/tcp.
fn server_queues(server_port: u16, client_port: u16) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{server_port:04X}");
    let remote = format!(":{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 4 && cols[1].ends_with(&local) && cols[2].ends_with(&remote) {
            let (tx, rx) = cols[4].split_once(':')?;
            Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        } else {
            None
        }
    })
}

#[test]
fn output_already_queued_is_sent_before_the_1001() {
    let mut wsd = Wsd::start(&[]);
    let mut s = raw_upgraded(&wsd);
    let client_port = s.local_addr().unwrap().port();
    // 40 messages of 10 KB; the client does not read, so their echoes pile up in the server.
    let mut bytes = Vec::new();
    for i in 0..40u8 {
        bytes.extend(frame(true, 0x2, &[i; 10_000]));
    }
    s.write_all(&bytes).unwrap();
    // Wait until the server has read every byte we sent (its receive queue is empty).
    let deadline = Instant::now() + common::WAIT;
    loop {
        let queues = server_queues(wsd.addr.port(), client_port);
        if matches!(queues, Some((_, 0))) {
            break;
        }
        assert!(Instant::now() < deadline, "server did not read: {queues:?}");
        std::thread::yield_now();
    }
    wsd.signal(libc::SIGTERM);
    for i in 0..40u8 {
        let f = read_frame(&mut s).expect("echo");
        assert_eq!((f.opcode, f.payload.len(), f.payload[0]), (2, 10_000, i));
    }
    let close = read_frame(&mut s).unwrap();
    assert_eq!(close.close_code(), Some(1001));
    s.write_all(&frame(true, 0x8, &1001u16.to_be_bytes()))
        .unwrap();
    assert!(sees_eof(&mut s));
    assert!(wsd.wait_exit().success());
    let summary = wsd.wait_for_log("drain finished").unwrap();
    assert!(summary.contains("1 closed cleanly"), "{summary}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut wsd = Wsd::start(&["--close-timeout", "30s"]);
    let mut silent = raw_upgraded(&wsd);
    wsd.signal(libc::SIGTERM);
    assert_eq!(read_frame(&mut silent).unwrap().close_code(), Some(1001));
    wsd.wait_for_log("draining").unwrap();
    // The drain stopped accepting: a new client is refused while the old one is still open.
    assert!(std::net::TcpStream::connect(wsd.addr).is_err());
    let second = Instant::now();
    wsd.signal(libc::SIGINT);
    let status = wsd.wait_exit();
    assert!(!status.success(), "{status:?}");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
}

#[test]
fn sigint_drains_like_sigterm_and_new_connections_are_refused() {
    let mut wsd = Wsd::start(&["--close-timeout", "5s"]);
    let mut ws = connect(&wsd);
    wsd.signal(libc::SIGINT);
    assert_eq!(answer_close(&mut ws), u16::from(CloseCode::Away));
    assert!(wsd.wait_exit().success());
}
