//! Handshake benchmarks: request parse, accept-key computation, the whole server answer, and
//! the client's response check.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wsd::protocol::handshake::{accept_key, check_response, parse_request, write_accept};

/// A browser-like upgrade request (the RFC 6455 §1.3 key, typical extra headers).
const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nCache-Control: no-cache\r\n\
Pragma: no-cache\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(REQUEST), 8192).map(|r| r.map(|r| r.head_len)))
    });
    g.bench_function("accept_key", |b| b.iter(|| accept_key(black_box(KEY))));
    let mut out = Vec::with_capacity(256);
    g.bench_function("parse_and_answer", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(Some(req)) = parse_request(black_box(REQUEST), 8192) {
                write_accept(req.key, &mut out);
            }
            out.len()
        })
    });
    let mut response = Vec::new();
    write_accept(KEY, &mut response);
    g.bench_function("check_response", |b| {
        b.iter(|| check_response(black_box(&response), KEY))
    });
    g.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
