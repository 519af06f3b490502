//! permessage-deflate benchmarks: compress and inflate throughput (MB/s of plain bytes) on a
//! JSON corpus and on random bytes, with and without a context dictionary, and the fan-out of
//! one publication to 1,000 subscribers with and without compression (paid once).
//!
//! The compression ratio of each input is printed once before its group runs.

use std::io::IoSlice;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsd::protocol::deflate::{Deflater, Inflater};
use wsd::protocol::Message;
use wsd::pubsub::{Delivered, Hub};
use wsd::ConnId;

/// Message sizes measured: a chat line, a typical update, a large document.
const SIZES: [usize; 3] = [256, 4096, 64 * 1024];
/// Subscribers of the fan-out benchmark.
const SUBSCRIBERS: usize = 1000;

/// JSON updates of the kind a push server sends, concatenated up to `len` bytes.
fn json(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 200);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                r#"{{"type":"tick","symbol":"SYM{}","price":{}.{:02},"volume":{},"ts":{}}}"#,
                i % 37,
                100 + i * 7 % 900,
                i * 13 % 100,
                i * 7919 % 100_000,
                1_700_000_000_000u64 + i * 250
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Incompressible bytes (xorshift64*).
fn random(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn inputs() -> Vec<(&'static str, usize, Vec<u8>)> {
    let mut all = Vec::new();
    for len in SIZES {
        all.push(("json", len, json(len)));
        all.push(("random", len, random(len)));
    }
    all
}

fn compress(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate/compress");
    let mut deflater = Deflater::default();
    for (kind, len, data) in inputs() {
        let z = deflater.compress(15, &[], &data).len();
        eprintln!(
            "ratio {kind}/{len}: {z} of {len} bytes ({:.3})",
            z as f64 / len as f64
        );
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new(kind, len), |b| {
            b.iter(|| deflater.compress(15, &[], black_box(&data)).len())
        });
    }
    // Context takeover at 12 bits: a 256-byte update after 2 KiB of earlier ones.
    let history = json(2048 + 256);
    let (dictionary, next) = history.split_at(2048);
    let z = deflater.compress(12, dictionary, next).len();
    eprintln!("ratio json/256 with a 2 KiB dictionary: {z} of 256 bytes");
    g.throughput(Throughput::Bytes(next.len() as u64));
    g.bench_function("json_context_dictionary/256", |b| {
        b.iter(|| {
            deflater
                .compress(12, black_box(dictionary), black_box(next))
                .len()
        })
    });
    g.finish();
}

fn inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate/inflate");
    let mut deflater = Deflater::default();
    let mut inflater = Inflater::default();
    for (kind, len, data) in inputs() {
        let z = deflater.compress(15, &[], &data).to_vec();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new(kind, len), |b| {
            b.iter(|| {
                inflater
                    .inflate(&[], &[black_box(&z)], 1 << 20)
                    .map(<[u8]>::len)
            })
        });
    }
    g.finish();
}

/// One 1 KiB JSON publication to 1,000 subscribers (the deliveries only count slices): the
/// cost per delivery with every subscriber plain, and with every one compressed (once).
fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate/fanout_1000");
    let body = json(1024);
    let text = std::str::from_utf8(&body).unwrap_or_default();
    for deflate in [false, true] {
        let mut hub = Hub::with_compression(15, 64);
        for i in 0..SUBSCRIBERS {
            hub.set_deflate(ConnId(i), deflate.then_some(15));
            let _ = hub.subscribe(ConnId(i), "ticks");
        }
        g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
        let name = if deflate { "compressed" } else { "plain" };
        g.bench_function(name, |b| {
            b.iter(|| {
                hub.publish("ticks", Message::Text(black_box(text)));
                let mut bytes = 0usize;
                hub.flush(|_, slices: &[IoSlice<'_>]| {
                    bytes += slices.iter().map(|s| s.len()).sum::<usize>();
                    Delivered {
                        queued: slices.len(),
                        dropped: 0,
                    }
                });
                bytes
            })
        });
    }
    g.finish();
}

criterion_group!(benches, compress, inflate, fan_out);
criterion_main!(benches);
