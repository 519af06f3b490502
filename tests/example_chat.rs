//! `examples/chat.rs`, a user's own handler embedded with `Server`, run as a real process with
//! real clients: names, fan-out with the sender's name, joins and leaves, and publications
//! from another thread (its stdin).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Client, WAIT};
use tungstenite::Message;

/// The example's binary, built by `cargo build --release --examples` (the test command does
/// that first: `cargo test` builds examples as test harnesses, which do not run `main`).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples")
        .join("chat");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release --examples` before the tests",
        bin.display()
    );
    bin
}

fn join(addr: &str, name: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) =
        tungstenite::client(format!("ws://{addr}/?name={name}"), stream).expect("handshake");
    ws
}

fn next_text(ws: &mut Client) -> String {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return t.to_string(),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}

#[test]
fn the_chat_example_serves_real_clients() {
    let mut child = Command::new(example_binary())
        .arg("127.0.0.1:0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("chat: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();

    let mut alice = join(&addr, "alice");
    assert_eq!(next_text(&mut alice), "* alice joined");
    let mut bob = join(&addr, "bob");
    assert_eq!(next_text(&mut alice), "* bob joined");
    assert_eq!(next_text(&mut bob), "* bob joined");

    alice.send(Message::text("hi bob")).unwrap();
    assert_eq!(next_text(&mut bob), "alice: hi bob");
    assert_eq!(next_text(&mut alice), "alice: hi bob");

    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "maintenance at noon").unwrap();
    stdin.flush().unwrap();
    assert_eq!(next_text(&mut alice), "[server] maintenance at noon");
    assert_eq!(next_text(&mut bob), "[server] maintenance at noon");

    bob.close(None).unwrap();
    assert_eq!(next_text(&mut alice), "* bob left");

    // No name: refused before the upgrade.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&common::upgrade_request("/")).unwrap();
    let head = common::read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    let _ = child.kill();
    let _ = child.wait();
}
