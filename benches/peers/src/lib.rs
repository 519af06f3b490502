//! Shared bits of the peer echo servers: the listen address (and for the TLS peer the
//! certificate files) from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

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

/// `--listen ADDR --cert PEM --key PEM`, the TLS peer's flags.
pub fn tls_args() -> (SocketAddr, PathBuf, PathBuf) {
    let mut args = std::env::args().skip(1);
    let (mut addr, mut cert, mut key) = ("127.0.0.1:9002".to_string(), None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--listen" => addr = value(),
            "--cert" => cert = Some(PathBuf::from(value())),
            "--key" => key = Some(PathBuf::from(value())),
            other => panic!("unknown argument {other:?}; usage: --listen ADDR --cert PEM --key PEM"),
        }
    }
    (
        addr.parse().expect("--listen: not an address like 127.0.0.1:9002"),
        cert.expect("--cert PEM is required"),
        key.expect("--key PEM is required"),
    )
}
