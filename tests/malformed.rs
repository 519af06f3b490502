//! Each malformed input of DESIGN.md gets its close code or HTTP status, against the real binary.

mod common;

use common::{frame, raw_upgraded, read_http_head, read_until_close, sees_eof, Wsd};
use std::io::Write;
use std::net::TcpStream;

fn close_code_for(wsd: &Wsd, bytes: &[u8]) -> Option<u16> {
    let mut s = raw_upgraded(wsd);
    s.write_all(bytes).unwrap();
    let code = read_until_close(&mut s);
    assert!(sees_eof(&mut s), "server closes TCP after failing");
    code
}

#[test]
fn protocol_violations_close_with_1002() {
    let wsd = Wsd::start(&[]);
    let unmasked = [0x81, 0x02, b'h', b'i'];
    let mut rsv = frame(true, 0x1, b"hi");
    rsv[0] |= 0x40;
    let mut frag_ping = frame(true, 0x9, b"x");
    frag_ping[0] &= 0x7F;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked frame", unmasked.to_vec()),
        ("RSV1 without extension", rsv),
        ("reserved opcode 3", frame(true, 0x3, b"")),
        ("reserved control opcode 0xB", frame(true, 0xB, b"")),
        ("fragmented ping", frag_ping),
        ("ping of 126 bytes", frame(true, 0x9, &[0u8; 126])),
        ("continuation with no start", frame(true, 0x0, b"x")),
        (
            "new message inside a fragmented one",
            [frame(false, 0x1, b"a"), frame(true, 0x1, b"b")].concat(),
        ),
        ("close payload of 1 byte", frame(true, 0x8, &[0x03])),
        ("close code 1005", frame(true, 0x8, &1005u16.to_be_bytes())),
        ("close code 999", frame(true, 0x8, &999u16.to_be_bytes())),
        ("close code 2000", frame(true, 0x8, &2000u16.to_be_bytes())),
        ("close code 5000", frame(true, 0x8, &5000u16.to_be_bytes())),
    ];
    for (what, bytes) in cases {
        assert_eq!(close_code_for(&wsd, &bytes), Some(1002), "{what}");
    }
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let wsd = Wsd::start(&[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid text", frame(true, 0x1, &[0xCE, 0xBA, 0xFF])),
        (
            "invalid across three fragments",
            [
                frame(false, 0x1, &[0xF4]),
                frame(false, 0x0, &[0x90]),
                frame(true, 0x0, &[0x80, 0x80]),
            ]
            .concat(),
        ),
        (
            "truncated character at the end",
            [frame(false, 0x1, b"ok"), frame(true, 0x0, &[0xE2, 0x82])].concat(),
        ),
        (
            "invalid close reason",
            frame(true, 0x8, &[0x03, 0xE8, 0xFF]),
        ),
    ];
    for (what, bytes) in cases {
        assert_eq!(close_code_for(&wsd, &bytes), Some(1007), "{what}");
    }
}

#[test]
fn invalid_utf8_fails_before_the_frame_is_complete() {
    let wsd = Wsd::start(&[]);
    let mut s = raw_upgraded(&wsd);
    // A header for 1000 bytes of text, then only the first 10 with a bad byte among them.
    let whole = frame(true, 0x1, &[b'a'; 1000]);
    let mut partial = whole[..8 + 10].to_vec();
    partial[8 + 5] = 0xFF ^ whole[8 + 5] ^ b'a'; // unmasks to 0xFF
    s.write_all(&partial).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1007));
}

#[test]
fn oversized_frames_and_messages_close_with_1009() {
    let wsd = Wsd::start(&["--max-frame-size", "1000", "--max-message-size", "1500"]);
    // The header alone is enough: the payload is never sent.
    let big_header = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
    assert_eq!(close_code_for(&wsd, &big_header), Some(1009));
    let two = [frame(false, 0x2, &[0; 1000]), frame(true, 0x0, &[0; 1000])].concat();
    assert_eq!(close_code_for(&wsd, &two), Some(1009));
    let max_len = [
        0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
    ];
    assert_eq!(close_code_for(&wsd, &max_len), Some(1009));
}

fn status_for(wsd: &Wsd, request: &[u8]) -> String {
    let mut s = TcpStream::connect(wsd.addr).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    s.write_all(request).unwrap();
    let head = read_http_head(&mut s);
    assert!(sees_eof(&mut s), "socket closed after the rejection");
    head
}

#[test]
fn bad_handshakes_get_their_status() {
    let wsd = Wsd::start(&["--max-handshake-size", "1KiB"]);
    let good = String::from_utf8(common::upgrade_request("/")).unwrap();
    let cases = [
        (good.replace("GET", "POST"), "405"),
        (
            good.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            "426",
        ),
        (good.replace("Upgrade: websocket\r\n", ""), "400"),
        (
            good.replace(
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Key: abc",
            ),
            "400",
        ),
        (good.replace("HTTP/1.1", "HTTP/1.0"), "400"),
        (
            good.replace("Host:", &format!("X-Pad: {}\r\nHost:", "p".repeat(1100))),
            "431",
        ),
        (
            "\u{16}\u{3}\u{1}\u{2}\u{0}not http\r\n\r\n".to_string(),
            "400",
        ),
    ];
    for (request, status) in cases {
        let head = status_for(&wsd, request.as_bytes());
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {head}"
        );
        if status == "426" {
            assert!(head.contains("Sec-WebSocket-Version: 13\r\n"), "{head}");
        }
    }
}

#[test]
fn a_slow_handshake_is_dropped_at_the_timeout() {
    let wsd = Wsd::start(&["--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(wsd.addr).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    assert!(sees_eof(&mut s));
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "{waited:?}"
    );
    assert!(waited < std::time::Duration::from_secs(3), "{waited:?}");
}
