//! A chat room embedded with wsd's [`Server`]: a user's own [`Handler`] on the push API.
//!
//! Each client names itself in the URL (`ws://127.0.0.1:9003/?name=alice`); every text message
//! goes to everyone, prefixed with the sender's name; joins and leaves are announced; and each
//! line typed on stdin is published as `[server] …` from another thread, through a
//! [`wsd::Publisher`].
//!
//! Run: `cargo run --release --example chat -- 127.0.0.1:9003`, then connect with any
//! WebSocket client. SIGTERM (Ctrl-C) drains as the daemon does.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::ExitCode;

use wsd::config::Config;
use wsd::protocol::handshake::Reject;
use wsd::protocol::{CloseCode, Message};
use wsd::server::Server;
use wsd::{ConnId, Ctx, Handler};

/// The one channel everybody is in.
const ROOM: &str = "room";

/// Who is who.
#[derive(Default)]
struct Chat {
    names: HashMap<ConnId, String>,
}

/// The `name=` of a request target, if it is a plain word.
fn name_of(target: &str) -> Option<&str> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .filter(|n| !n.is_empty() && n.len() <= 32 && n.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl Handler for Chat {
    fn accept(&mut self, target: &str) -> Result<(), Reject> {
        name_of(target).map(|_| ()).ok_or(Reject::BadRequest(
            "name yourself: /?name=alice (letters and digits)",
        ))
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, target: &str) {
        let name = name_of(target).unwrap_or("anonymous").to_string();
        let _ = ctx.subscribe(conn, ROOM);
        ctx.publish(ROOM, Message::Text(&format!("* {name} joined")));
        self.names.insert(conn, name);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, message: Message<'_>) {
        let name = self.names.get(&conn).map_or("?", String::as_str);
        match message {
            Message::Text(text) => {
                ctx.publish(ROOM, Message::Text(&format!("{name}: {text}")));
            }
            Message::Binary(_) => ctx.close(conn, CloseCode::UNSUPPORTED, "text only"),
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, _code: Option<CloseCode>) {
        if let Some(name) = self.names.remove(&conn) {
            ctx.publish(ROOM, Message::Text(&format!("* {name} left")));
        }
    }
}

fn main() -> ExitCode {
    let mut config = Config::default();
    if let Some(addr) = std::env::args().nth(1) {
        match addr.parse() {
            Ok(addr) => config.listen = addr,
            Err(_) => {
                eprintln!("chat: {addr:?} is not an address like 127.0.0.1:9003");
                return ExitCode::from(2);
            }
        }
    }
    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => println!("chat: listening on {addr}"),
        Err(e) => eprintln!("chat: {e}"),
    }
    // Another thread publishes into the loop: each line of stdin to the room.
    let publisher = server.publisher();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Err(e) = publisher.publish_text(ROOM, &format!("[server] {line}")) {
                eprintln!("chat: not published: {e}");
            }
        }
    });
    match server.run(Chat::default()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}
