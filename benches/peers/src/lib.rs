//! Shared bits of the peer echo servers: the listen address from the command line.

use std::net::SocketAddr;

/// `--listen ADDR` (default 127.0.0.1:9002), the only flag the peers take.
pub fn listen_addr() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9002".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = args.next().expect("--listen needs an address"),
            other => panic!("unknown argument {other:?}; usage: --listen ADDR"),
        }
    }
    addr.parse().expect("--listen: not an address like 127.0.0.1:9002")
}
