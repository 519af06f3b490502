//! Shared bits of the peer servers: the listen addresses (and for the TLS peer the certificate
//! files) from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

/// `--listen ADDR` (default 127.0.0.1:9002), the only flag the echo peers take.
pub fn listen_addr() -> SocketAddr {
    listen_addrs(false).0
}

/// `--listen ADDR`, and with `api` also `--api-listen ADDR` (the HTTP publish API, off unless
/// given).
pub fn listen_addrs(api: bool) -> (SocketAddr, Option<SocketAddr>) {
    let usage = if api {
        "usage: --listen ADDR [--api-listen ADDR]"
    } else {
        "usage: --listen ADDR"
    };
    let parse = |flag: &str, v: Option<String>| -> SocketAddr {
        let v = v.unwrap_or_else(|| panic!("{flag} needs an address; {usage}"));
        v.parse()
            .unwrap_or_else(|_| panic!("{flag}: {v:?} is not an address like 127.0.0.1:9002"))
    };
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = ([127, 0, 0, 1], 9002).into();
    let mut api_addr = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = parse("--listen", args.next()),
            "--api-listen" if api => api_addr = Some(parse("--api-listen", args.next())),
            other => panic!("unknown argument {other:?}; {usage}"),
        }
    }
    (addr, api_addr)
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
