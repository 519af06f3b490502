//! Echo over real WebSocket clients: every kind of message comes back exactly.

mod common;

use common::{connect, frame, raw_upgraded, read_frame, Wsd};
use std::io::Write;
use tungstenite::Message;

#[test]
fn text_and_binary_echo_exactly() {
    let wsd = Wsd::start(&[]);
    let mut ws = connect(&wsd);
    let messages = [
        Message::text("hello"),
        Message::text("κόσμε 𝄞"),
        Message::text(""),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(vec![7u8; 70_000]),
        Message::text("x".repeat(126)),
    ];
    for m in &messages {
        ws.send(m.clone()).unwrap();
        assert_eq!(&ws.read().unwrap(), m);
    }
}

#[test]
fn sixteen_mib_messages_echo_exactly() {
    let wsd = Wsd::start(&["--max-message-size", "16MiB", "--max-frame-size", "16MiB"]);
    let mut ws = connect(&wsd);
    let binary: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(binary.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(binary));
    let text = "wsd🦀".repeat((16 << 20) / 8);
    ws.send(Message::text(text.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(text));
}

#[test]
fn fragmented_messages_are_reassembled() {
    let wsd = Wsd::start(&[]);
    let mut s = raw_upgraded(&wsd);
    // "κόσμε" split inside a character, with a Ping between the fragments.
    let text = "κόσμε".as_bytes();
    let mut bytes = frame(false, 0x1, &text[..3]);
    bytes.extend(frame(true, 0x9, b"mid"));
    bytes.extend(frame(false, 0x0, &text[3..7]));
    bytes.extend(frame(true, 0x0, &text[7..]));
    bytes.extend(frame(false, 0x2, &[1, 2]));
    bytes.extend(frame(true, 0x0, &[3]));
    s.write_all(&bytes).unwrap();
    let pong = read_frame(&mut s).unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, b"mid".as_slice())
    );
    let t = read_frame(&mut s).unwrap();
    assert_eq!((t.fin, t.opcode, t.payload.as_slice()), (true, 0x1, text));
    let b = read_frame(&mut s).unwrap();
    assert_eq!((b.opcode, b.payload), (0x2, vec![1, 2, 3]));
}

#[test]
fn many_fragments_and_bytes_dribbled_one_at_a_time() {
    let wsd = Wsd::start(&[]);
    let mut s = raw_upgraded(&wsd);
    let mut bytes = frame(false, 0x2, b"a");
    for _ in 0..1000 {
        bytes.extend(frame(false, 0x0, b"b"));
    }
    bytes.extend(frame(true, 0x0, b"c"));
    for chunk in bytes.chunks(1).take(200) {
        s.write_all(chunk).unwrap();
    }
    s.write_all(&bytes[200..]).unwrap();
    let m = read_frame(&mut s).unwrap();
    assert_eq!(m.payload.len(), 1002);
    assert_eq!(m.payload[0], b'a');
    assert_eq!(m.payload[1001], b'c');
}

#[test]
fn ping_gets_pong() {
    let wsd = Wsd::start(&[]);
    let mut ws = connect(&wsd);
    ws.send(Message::Ping(b"are you there".to_vec())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"are you there".to_vec()));
}

#[test]
fn client_close_is_answered_and_tcp_closed() {
    let wsd = Wsd::start(&[]);
    let mut s = raw_upgraded(&wsd);
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"done");
    s.write_all(&frame(true, 0x8, &payload)).unwrap();
    let close = read_frame(&mut s).unwrap();
    assert_eq!(close.close_code(), Some(4000));
    assert!(
        read_frame(&mut s).is_none(),
        "server closes TCP after the Close"
    );
}

#[test]
fn many_clients_at_once() {
    let wsd = Wsd::start(&[]);
    let mut clients: Vec<_> = (0..50).map(|_| connect(&wsd)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("client {i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap(), Message::text(format!("client {i}")));
    }
}
