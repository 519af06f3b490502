//! permessage-deflate (RFC 7692) against the real binary: Python `websockets` with every
//! parameter combination in both modes, declined offers, raw compressed frames (split RSV1
//! messages, a decompression bomb, bad UTF-8 after inflating) and compressed fan-out to mixed
//! subscribers.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::{frame, handshake_with, read_frame, read_until_close, scrape, ServerFrame, Wsd, WAIT};
use wsd::protocol::deflate::{Deflater, Inflater};

/// What a client sends to offer the extension as browsers do.
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits";

/// The extension header line of a response head, if any.
fn extension_line(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
}

/// A masked client frame with RSV1 set (the first frame of a compressed message).
fn zframe(fin: bool, opcode: u8, compressed: &[u8]) -> Vec<u8> {
    let mut f = frame(fin, opcode, compressed);
    f[0] |= 0x40;
    f
}

fn compress(data: &[u8]) -> Vec<u8> {
    Deflater::default().compress(15, &[], data).to_vec()
}

/// A server frame's payload, inflated when RSV1 says it is compressed.
fn payload_of(raw: &[u8], f: &ServerFrame) -> Vec<u8> {
    if raw[0] & 0x40 != 0 {
        let mut inflater = Inflater::default();
        inflater
            .inflate(&[], &[&f.payload], usize::MAX)
            .expect("inflates")
            .to_vec()
    } else {
        f.payload.clone()
    }
}

/// Reads one frame and its first byte (for RSV1), which `read_frame` does not return.
fn read_frame_rsv(s: &mut TcpStream) -> (bool, ServerFrame) {
    let mut first = [0u8; 1];
    s.peek(&mut first).expect("peek");
    let f = read_frame(s).expect("a frame");
    (first[0] & 0x40 != 0, f)
}

const JSON: &str = r#"{"type":"update","user":"alice","values":[1,2,3,4,5,6,7,8,9],"ok":true,"note":"compress me"}"#;

/// Runs tests/py/deflate_echo.py with `params`; returns the negotiated header as it printed it.
fn python_echo(wsd: &Wsd, params: &[&str]) -> String {
    let python = common::test_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/deflate_echo.py");
    let out = Command::new(python)
        .arg(script)
        .arg(wsd.url())
        .args(params)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{params:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default().to_string();
    assert_eq!(lines.next(), Some("ok 8"), "{params:?}: {stdout}");
    header
}

#[test]
fn python_websockets_every_parameter_in_both_modes() {
    // (client factory parameters, header expected in shared mode, in context mode at 12 bits);
    // websockets always offers client_max_window_bits unless told a value.
    let shared = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let cases: &[(&[&str], String, &str)] = &[
        (
            &["default"],
            shared.to_string(),
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
        ),
        (
            &["client_max_window_bits=10"],
            shared.to_string(),
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10",
        ),
        (
            &["server_max_window_bits=10"],
            format!("{shared}; server_max_window_bits=10"),
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=12",
        ),
        (
            &["server_no_context_takeover"],
            shared.to_string(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
        ),
        (
            &["client_no_context_takeover", "client_max_window_bits=True"],
            shared.to_string(),
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=12",
        ),
        (
            &[
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits=9",
                "client_max_window_bits=9",
            ],
            format!("{shared}; server_max_window_bits=9"),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9",
        ),
    ];
    let shared_wsd = Wsd::start(&["--metrics-listen", "127.0.0.1:0"]);
    let context_wsd = Wsd::start(&["--compression", "context"]);
    for (params, in_shared, in_context) in cases {
        assert_eq!(&python_echo(&shared_wsd, params), in_shared, "{params:?}");
        assert_eq!(&python_echo(&context_wsd, params), in_context, "{params:?}");
    }
    // Both directions were compressed, and counted.
    let m = scrape(shared_wsd.metrics_addr());
    for direction in ["in", "out"] {
        let name = format!("wsd_deflate_messages_total{{direction=\"{direction}\"}}");
        assert!(m[&name] >= 30.0, "{name}: {}", m[&name]);
    }
    let plain = m["wsd_deflate_plain_bytes_total{direction=\"out\"}"];
    let compressed = m["wsd_deflate_compressed_bytes_total{direction=\"out\"}"];
    assert!(compressed * 4.0 < plain, "{compressed} of {plain}");
}

#[test]
fn off_and_declined_offers_get_no_extension_and_rsv1_fails() {
    let off = Wsd::start(&["--compression", "off"]);
    let (mut s, head) = handshake_with(off.addr, OFFER);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(extension_line(&head), None, "{head}");
    s.write_all(&zframe(true, 1, &compress(b"hello"))).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1002));

    let wsd = Wsd::start(&[]);
    for offer in [
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "x-webkit-deflate-frame",
    ] {
        let (_, head) = handshake_with(wsd.addr, &format!("Sec-WebSocket-Extensions: {offer}"));
        assert!(head.starts_with("HTTP/1.1 101"), "{offer}: {head}");
        assert_eq!(extension_line(&head), None, "{offer}: {head}");
    }
    // The first acceptable offer, in the client's order, across headers.
    let (_, head) = handshake_with(
        wsd.addr,
        "Sec-WebSocket-Extensions: permessage-deflate; bad\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=11",
    );
    assert_eq!(
        extension_line(&head),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11")
    );
}

#[test]
fn raw_compressed_frames_split_rsv1_bomb_and_bad_utf8() {
    let wsd = Wsd::start(&["--max-message-size", "1MiB"]);
    let (mut s, head) = handshake_with(wsd.addr, OFFER);
    assert!(extension_line(&head).is_some(), "{head}");
    // A compressed text message in three frames, RSV1 on the first only, a Ping between.
    let z = compress(JSON.as_bytes());
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut input = zframe(false, 1, a);
    input.extend(frame(true, 9, b"between"));
    input.extend(frame(false, 0, b));
    input.extend(frame(true, 0, c));
    s.write_all(&input).unwrap();
    let (rsv1, pong) = read_frame_rsv(&mut s);
    assert!(!rsv1, "control frames are never compressed");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (10, &b"between"[..])
    );
    let (rsv1, echo) = read_frame_rsv(&mut s);
    assert!(
        rsv1 && echo.payload.len() < JSON.len(),
        "the echo is compressed"
    );
    let raw = [0xC1];
    assert_eq!(payload_of(&raw, &echo), JSON.as_bytes());
    // A short message is answered uncompressed (compression_threshold).
    s.write_all(&zframe(true, 1, &compress(b"hi"))).unwrap();
    let (rsv1, echo) = read_frame_rsv(&mut s);
    assert!(!rsv1);
    assert_eq!(echo.payload, b"hi");

    // A bomb: 64 MiB of zeros in ~64 KiB; 1009 without inflating it all.
    let bomb = compress(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 100_000);
    s.write_all(&zframe(true, 2, &bomb)).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1009));

    // Text that is not UTF-8 once inflated: 1007.
    let (mut s, _) = handshake_with(wsd.addr, OFFER);
    s.write_all(&zframe(true, 1, &compress(b"valid so far \xC0\xAF")))
        .unwrap();
    assert_eq!(read_until_close(&mut s), Some(1007));
    // Bytes that are not deflate data: 1007.
    let (mut s, _) = handshake_with(wsd.addr, OFFER);
    s.write_all(&zframe(true, 2, b"\xff\xff\xff\xff")).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1007));
    // RSV1 on a continuation: 1002.
    let (mut s, _) = handshake_with(wsd.addr, OFFER);
    let mut input = zframe(false, 1, a);
    input.extend(zframe(true, 0, b));
    s.write_all(&input).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1002));
}

/// `wsd --mode pubsub` with the API and metrics; returns the API's address.
fn pubsub() -> (Wsd, SocketAddr) {
    let wsd = Wsd::start(&[
        "--mode",
        "pubsub",
        "--api-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let line = wsd.wait_for_log("publish API on http://").expect("API");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("API address");
    (wsd, addr)
}

fn publish(api: SocketAddr, channel: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "POST /publish/{channel} HTTP/1.1\r\nHost: wsd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// A raw subscriber of `/path`, with or without the extension.
fn subscriber(wsd: &Wsd, path: &str, deflate: bool) -> TcpStream {
    let mut s = TcpStream::connect(wsd.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let offer = if deflate {
        format!("{OFFER}\r\n")
    } else {
        String::new()
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .unwrap();
    let head = common::read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(extension_line(&head).is_some(), deflate, "{head}");
    s
}

#[test]
fn fan_out_compresses_once_for_mixed_subscribers() {
    let (wsd, api) = pubsub();
    let zipped: Vec<TcpStream> = (0..3).map(|_| subscriber(&wsd, "/news", true)).collect();
    let plain: Vec<TcpStream> = (0..2).map(|_| subscriber(&wsd, "/news", false)).collect();
    // One subscriber of two channels (the merged path) with the extension.
    let mut both = subscriber(&wsd, "/news?channel=sport", true);
    let body = JSON.repeat(10);
    assert!(publish(api, "news", body.as_bytes()).contains("\"subscribers\":6"));
    assert!(publish(api, "sport", b"tiny").contains("\"subscribers\":1"));
    for mut s in zipped {
        let (rsv1, f) = read_frame_rsv(&mut s);
        assert!(rsv1 && f.payload.len() < body.len() / 4);
        assert_eq!(payload_of(&[0xC1], &f), body.as_bytes());
    }
    for mut s in plain {
        let (rsv1, f) = read_frame_rsv(&mut s);
        assert!(!rsv1);
        assert_eq!(f.payload, body.as_bytes());
    }
    let (rsv1, f) = read_frame_rsv(&mut both);
    assert!(rsv1);
    assert_eq!(payload_of(&[0xC1], &f), body.as_bytes());
    let (rsv1, f) = read_frame_rsv(&mut both);
    assert!(!rsv1, "below compression_threshold");
    assert_eq!(f.payload, b"tiny");
    // Compressed once for the four subscribers that negotiated the extension.
    let m = scrape(wsd.metrics_addr());
    assert_eq!(m["wsd_deflate_messages_total{direction=\"out\"}"], 1.0);
    assert_eq!(m["wsd_deliveries_total"], 7.0);
}

/// Context takeover survives a live upgrade: the windows of both directions and a compressed
/// message cut mid-fragment move to the new process, whose next echo refers back into them.
#[test]
fn context_windows_cross_a_live_upgrade() {
    let wsd = Wsd::start(&[
        "--compression",
        "context",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let (mut s, head) = handshake_with(wsd.addr, OFFER);
    assert_eq!(
        extension_line(&head),
        Some("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
    );
    let mut client_window: Vec<u8> = Vec::new(); // What we sent: the server's dictionary.
    let mut server_window: Vec<u8> = Vec::new(); // What it sent: our dictionary.
    let mut deflater = Deflater::default();
    let mut inflater = Inflater::default();
    let mut echo = |s: &mut TcpStream, text: &[u8], cut: bool| {
        let z = deflater.compress(12, &client_window, text).to_vec();
        client_window.extend_from_slice(text);
        if cut {
            // Half the message before the upgrade, the rest after it.
            let (a, b) = z.split_at(z.len() / 2);
            s.write_all(&zframe(false, 1, a)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            let pid = common::serving_pid(wsd.metrics_addr());
            // SAFETY: kill(2) with a pid read from the server itself.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
            assert!(wsd.wait_for_log_count("live upgrade: resumed", 1));
            assert_ne!(common::serving_pid(wsd.metrics_addr()), pid);
            s.write_all(&frame(true, 0, b)).unwrap();
        } else {
            s.write_all(&zframe(true, 1, &z)).unwrap();
        }
        let (rsv1, f) = read_frame_rsv(s);
        assert!(rsv1);
        let plain = inflater
            .inflate(&server_window, &[&f.payload], usize::MAX)
            .unwrap()
            .to_vec();
        server_window.extend_from_slice(&plain);
        assert_eq!(plain, text);
        f.payload.len()
    };
    let message = JSON.repeat(3);
    let first = echo(&mut s, message.as_bytes(), false);
    // The same message again: with context it is a back-reference of a few bytes.
    let second = echo(&mut s, message.as_bytes(), false);
    assert!(second * 4 < first, "{second} vs {first}");
    let across = echo(&mut s, message.as_bytes(), true);
    assert!(
        across * 4 < first,
        "{across} vs {first}: context lost in the upgrade"
    );
}

/// `--compression context` in pub/sub with client publish: a client's compressed message is
/// inflated, published, and compressed once for the subscribers with the extension (from an
/// empty dictionary, so each client's context stays valid), twice in a row.
#[test]
fn context_mode_pubsub_with_client_publish() {
    let wsd = Wsd::start(&[
        "--mode",
        "pubsub",
        "--client-publish",
        "true",
        "--compression",
        "context",
    ]);
    let mut a = subscriber(&wsd, "/room", true);
    let mut b = subscriber(&wsd, "/room", true);
    let mut plain = subscriber(&wsd, "/room", false);
    // What each deflate subscriber has inflated so far: its side of the server's context.
    let mut windows = [Vec::new(), Vec::new()];
    let mut inflater = Inflater::default();
    for round in 0..2 {
        let text = format!("{round}: {}", JSON.repeat(4));
        a.write_all(&zframe(true, 1, &compress(text.as_bytes())))
            .unwrap();
        for (s, window) in [&mut a, &mut b].into_iter().zip(windows.iter_mut()) {
            let (rsv1, f) = read_frame_rsv(s);
            assert!(rsv1, "round {round}");
            let got = inflater
                .inflate(window, &[&f.payload], usize::MAX)
                .unwrap()
                .to_vec();
            window.extend_from_slice(&got);
            assert_eq!(got, text.as_bytes(), "round {round}");
        }
        let (rsv1, f) = read_frame_rsv(&mut plain);
        assert!(!rsv1);
        assert_eq!(f.payload, text.as_bytes());
    }
}
