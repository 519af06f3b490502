//! Hostile clients against the real binary: each case gets its documented close code or HTTP
//! status, the server stays up, and a well-behaved client connected throughout keeps getting
//! exact echoes (checked after every case).

mod common;

use common::{
    assert_echoes, close_frame, closed_now, connect, dribble, frame, frame_header, raw_connect,
    raw_upgraded, read_frame, read_http_head, read_until_close, reset, sees_eof, upgrade_request,
    Wsd, WAIT,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sends `bytes` on a fresh upgraded connection; returns the server's close code and checks that
/// no data frame came before it and that TCP closes after it.
fn close_code_for(wsd: &Wsd, bytes: &[u8]) -> Option<u16> {
    let mut s = raw_upgraded(wsd);
    s.write_all(bytes).unwrap();
    let code = loop {
        let Some(f) = read_frame(&mut s) else {
            break None;
        };
        assert!(
            !matches!(f.opcode, 0x1 | 0x2),
            "no echo of a failed or cut-off message: {f:?}"
        );
        if f.opcode == 0x8 {
            break Some(f.close_code().unwrap_or(1005));
        }
    };
    assert!(sees_eof(&mut s), "server closes TCP after its Close");
    code
}

#[test]
fn bytes_dribbled_one_at_a_time_through_handshake_and_frames() {
    let wsd = Wsd::start(&[]);
    let mut witness = connect(&wsd);
    let gap = Duration::from_micros(300);

    let mut s = raw_connect(&wsd);
    dribble(&mut s, &upgrade_request("/dribble"), gap);
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_echoes(&mut witness, "a dribbled handshake");

    // "κόσμε" in two fragments split inside a character, a Ping, a 300-byte binary message (a
    // 16-bit length), then a Close: every byte in its own write.
    let text = "κόσμε".as_bytes();
    let binary: Vec<u8> = (0..300u16).map(|i| (i % 251) as u8).collect();
    let bytes = [
        frame(false, 0x1, &text[..4]),
        frame(true, 0x0, &text[4..]),
        frame(true, 0x9, b"dribble"),
        frame(true, 0x2, &binary),
        close_frame(1000, "done"),
    ]
    .concat();
    dribble(&mut s, &bytes, gap);
    let echo = read_frame(&mut s).unwrap();
    assert_eq!(
        (echo.fin, echo.opcode, echo.payload.as_slice()),
        (true, 0x1, text)
    );
    let pong = read_frame(&mut s).unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, b"dribble".as_slice())
    );
    let echo = read_frame(&mut s).unwrap();
    assert_eq!((echo.opcode, echo.payload), (0x2, binary));
    assert_eq!(read_until_close(&mut s), Some(1000));
    assert!(sees_eof(&mut s));
    assert_echoes(&mut witness, "dribbled frames");
}

#[test]
fn a_handshake_head_just_over_the_limit_gets_431() {
    let limit = 1024;
    let wsd = Wsd::start(&["--max-handshake-size", "1KiB"]);
    let mut witness = connect(&wsd);
    // The upgrade request padded with an X-Pad header to exactly `len` bytes of head.
    let request_of_len = |len: usize| {
        let base = upgrade_request("/");
        let without_end = &base[..base.len() - 2];
        let overhead = without_end.len() + "X-Pad: \r\n\r\n".len();
        let mut r = without_end.to_vec();
        r.extend_from_slice(format!("X-Pad: {}\r\n\r\n", "p".repeat(len - overhead)).as_bytes());
        assert_eq!(r.len(), len);
        r
    };

    let mut s = raw_connect(&wsd);
    s.write_all(&request_of_len(limit)).unwrap();
    let head = read_http_head(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "a head of exactly the limit: {head}"
    );
    drop(s);
    assert_echoes(&mut witness, "a head at the limit");

    for dribbled in [false, true] {
        let mut s = raw_connect(&wsd);
        let request = request_of_len(limit + 1);
        if dribbled {
            dribble(&mut s, &request, Duration::ZERO);
        } else {
            s.write_all(&request).unwrap();
        }
        let head = read_http_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 431 "), "one byte over: {head}");
        assert!(sees_eof(&mut s), "closed after the 431");
        assert_echoes(&mut witness, "a head one byte over the limit");
    }
}

#[test]
fn a_thousand_silent_connections_are_dropped_at_the_handshake_timeout() {
    let timeout = Duration::from_secs(3);
    let wsd = Wsd::start(&["--handshake-timeout", "3s"]);
    let mut witness = connect(&wsd);
    let opened = Instant::now();
    // In batches, each accepted before the next (its log says so): a burst past the listen
    // backlog would have the kernel drop SYNs and the client retry 1 s later, which tests the
    // kernel, not wsd.
    let mut silent: Vec<TcpStream> = Vec::with_capacity(1000);
    for batch in 1..=10 {
        silent.extend((0..100).map(|_| raw_connect(&wsd)));
        assert!(wsd.wait_for_log_count("accepted from", 1 + batch * 100));
    }

    // While they hold their sockets, the server serves everyone else: the witness and a client
    // that connects and upgrades now.
    assert_echoes(&mut witness, "1,000 silent connections");
    let mut newcomer = connect(&wsd);
    assert_echoes(&mut newcomer, "1,000 silent connections (new client)");
    assert!(
        opened.elapsed() < timeout,
        "the checks above took longer than the timeout; the test proves nothing"
    );
    assert!(
        silent.iter().all(|s| !closed_now(s)),
        "dropped before the timeout"
    );

    // Each is dropped at the handshake timeout (not before), with nothing written to it.
    for (i, mut s) in silent.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("silent connection {i} got {n} bytes"),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "silent connection {i}: {e}"
            ),
        }
        if i == 0 {
            assert!(opened.elapsed() >= timeout - Duration::from_millis(100));
        }
    }
    assert!(opened.elapsed() < timeout + WAIT);
    assert!(wsd.wait_for_log_count("handshake timed out", 1000));
    assert_echoes(&mut witness, "1,000 handshake timeouts");
    assert_echoes(&mut newcomer, "1,000 handshake timeouts (new client)");
}

#[test]
fn hostile_frames_get_their_close_codes() {
    let wsd = Wsd::start(&[]);
    let mut witness = connect(&wsd);
    let max_len = (1u64 << 63) - 1;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // The header alone is enough: none of the payload is ever sent.
        (
            "binary frame of 2^63-1 bytes",
            frame_header(true, 0x2, max_len),
            1009,
        ),
        (
            "text frame of 2^63-1 bytes",
            frame_header(false, 0x1, max_len),
            1009,
        ),
        (
            "continuation of 2^63-1 bytes",
            [frame(false, 0x2, b"a"), frame_header(true, 0x0, max_len)].concat(),
            1009,
        ),
        (
            "a 64-bit length with its top bit set",
            frame_header(true, 0x2, 1 << 63),
            1002,
        ),
        (
            "continuation with no start",
            frame(true, 0x0, b"orphan"),
            1002,
        ),
        (
            "unfinished continuation with no start",
            frame(false, 0x0, b"orphan"),
            1002,
        ),
        ("ping of 126 bytes", frame(true, 0x9, &[b'p'; 126]), 1002),
        (
            "ping header declaring 126 bytes",
            frame_header(true, 0x9, 126),
            1002,
        ),
        (
            // F0 9F is a valid start, "A" cannot continue it: only the third fragment fails.
            "invalid UTF-8 across three fragments",
            [
                frame(false, 0x1, &[0xF0]),
                frame(false, 0x0, &[0x9F]),
                frame(true, 0x0, b"A"),
            ]
            .concat(),
            1007,
        ),
        (
            // F4 90 is past U+10FFFF: fails on the second fragment, the third never comes.
            "invalid UTF-8 failing before the last fragment",
            [
                frame(false, 0x1, b"ok"),
                frame(false, 0x0, &[0xF4]),
                frame(false, 0x0, &[0x90]),
            ]
            .concat(),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        assert_eq!(close_code_for(&wsd, &bytes), Some(code), "{what}");
        assert_echoes(&mut witness, what);
    }
}

#[test]
fn a_close_inside_a_fragmented_message_is_answered() {
    let wsd = Wsd::start(&[]);
    let mut witness = connect(&wsd);
    // §5.4: control frames may be injected in the middle of a fragmented message; a Close there
    // is answered (echoing its code) and the unfinished message is dropped.
    for (code, rest) in [(1000, vec![]), (4001, frame(true, 0x0, b"tail"))] {
        let bytes = [
            frame(false, 0x1, b"frag"),
            frame(false, 0x0, b"ment"),
            close_frame(code, "bye"),
            rest,
        ]
        .concat();
        assert_eq!(close_code_for(&wsd, &bytes), Some(code));
        assert_echoes(&mut witness, "a Close inside a fragmented message");
    }
}

#[test]
fn a_client_that_sends_but_never_reads() {
    let wsd = Wsd::start(&[]);
    let mut witness = connect(&wsd);
    // Bounded by bytes and time: up to 64 MiB of 64 KiB messages whose echoes it never reads,
    // for at most 10 s. The server may read on and queue, or stop reading, or close it: it must
    // not fall over, and others must not notice.
    const TOTAL: usize = 64 << 20;
    const FOR_AT_MOST: Duration = Duration::from_secs(10);
    let message = frame(true, 0x2, &vec![0xAB; 64 << 10]);
    let mut flood = raw_upgraded(&wsd);
    flood
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (done_tx, done) = mpsc::channel();
    let flooder = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0;
        while sent < TOTAL && started.elapsed() < FOR_AT_MOST {
            if flood.write_all(&message).is_err() {
                break; // Blocked past the timeout, or closed by the server.
            }
            sent += message.len();
        }
        let _ = done_tx.send(());
        (flood, sent)
    });
    // The witness is served while the flood goes on.
    let mut rounds = 0;
    while done.try_recv().is_err() && rounds < 10_000 {
        assert_echoes(&mut witness, "echoes during a flood");
        rounds += 1;
    }
    let (flood, sent) = flooder.join().unwrap();
    assert!(sent > 0);
    drop(flood);
    assert_echoes(&mut witness, "a client that never reads");
    let mut newcomer = connect(&wsd);
    assert_echoes(&mut newcomer, "a client that never reads (new client)");
}

#[test]
fn connections_reset_mid_handshake_mid_frame_and_mid_close() {
    let wsd = Wsd::start(&[]);
    let mut witness = connect(&wsd);
    let errored = "closed (Errored)";
    let close = close_frame(1000, "bye");
    let big = frame(true, 0x2, &vec![7u8; 4 << 20]);
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        ("mid-handshake", false, upgrade_request("/")[..30].to_vec()),
        (
            "mid-header",
            true,
            frame(true, 0x2, &[1; 300])[..3].to_vec(),
        ),
        (
            "mid-frame",
            true,
            frame(true, 0x1, &[b'x'; 1000])[..500].to_vec(),
        ),
        (
            "mid-fragmented-message",
            true,
            [frame(false, 0x1, b"one"), frame(false, 0x0, b"tw")].concat(),
        ),
        ("mid-close", true, close[..4].to_vec()),
        // The server's answers (an echo of 4 MiB, or its Close) meet a reset socket.
        ("with an echo queued", true, big),
    ];
    for (what, upgraded, bytes) in cases {
        let before = wsd.log_count(errored);
        let mut s = if upgraded {
            raw_upgraded(&wsd)
        } else {
            raw_connect(&wsd)
        };
        s.write_all(&bytes).unwrap();
        reset(s);
        assert!(
            wsd.wait_for_log_count(errored, before + 1),
            "the server noticed the reset {what}"
        );
        assert_echoes(&mut witness, what);
    }
    // More than one read's worth and then a FIN (no Close frame): the FIN's edge comes while
    // the upload is still being read over several turns, and must not be forgotten.
    let before = wsd.log_count(errored);
    let mut s = raw_upgraded(&wsd);
    s.write_all(&frame(true, 0x2, &vec![3u8; 4 << 20])).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        wsd.wait_for_log_count(errored, before + 1),
        "the server noticed the FIN after a big upload"
    );
    drop(s);
    assert_echoes(&mut witness, "a FIN after a big upload");

    // A whole Close and then a reset before the answer is read: the server's Close meets a
    // reset socket. However that ends (clean or errored), the server stays up.
    let before = wsd.log_count(": closed (");
    let mut s = raw_upgraded(&wsd);
    s.write_all(&close).unwrap();
    reset(s);
    assert!(wsd.wait_for_log_count(": closed (", before + 1));
    assert_echoes(&mut witness, "a reset after a Close");
}

#[test]
fn a_drain_with_a_partial_frame_pending_completes() {
    // Regression (found by the session fuzz target): a frame half unmasked when the drain sends
    // its Close must not leave its unmask progress to the next frame (the server panicked on
    // the client's Close and exited with every connection).
    let wsd = Wsd::start(&["--close-timeout", "10s"]);
    let mut witness = connect(&wsd);
    let mut s = raw_upgraded(&wsd);
    let text = frame(true, 0x1, &[b'a'; 40]);
    s.write_all(&text[..16]).unwrap();
    // The loop handles events in order: once the witness's echo is back, the partial frame,
    // written before it, has been read and its first bytes unmasked.
    assert_echoes(&mut witness, "a partial frame");
    let mut wsd = wsd;
    wsd.signal(libc::SIGTERM);
    assert_eq!(read_until_close(&mut s), Some(1001));
    s.write_all(&[&text[16..], &close_frame(1000, "")[..]].concat())
        .unwrap();
    assert!(sees_eof(&mut s), "closed after the close handshake");
    // The witness answers its Close 1001 (tungstenite does so on read).
    match witness.read() {
        Ok(tungstenite::Message::Close(_)) => {}
        other => panic!("witness expected a Close: {other:?}"),
    }
    let _ = witness.flush();
    let status = wsd.wait_exit();
    assert!(
        status.success(),
        "wsd exited with {status:?}: {:?}",
        wsd.logs()
    );
}
