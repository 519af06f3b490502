//! UTF-8 validation: wsd's incremental `Utf8Validator` against `std::str::from_utf8`, on ASCII
//! and on mixed-width text, whole and in TCP-segment-sized pieces.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsd::protocol::utf8::Utf8Validator;

const SIZES: [usize; 5] = [16, 512, 16 * 1024, 64 * 1024, 1 << 20];
/// A typical TCP payload on Ethernet: the pieces a text frame arrives in.
const SEGMENT: usize = 1448;

fn text(len: usize, mixed: bool) -> Vec<u8> {
    let unit = if mixed {
        "añ€😀 wsd "
    } else {
        "hello wsd "
    };
    let mut s = String::with_capacity(len + 8);
    while s.len() < len {
        s.push_str(unit);
    }
    // Cut on a character boundary at or below `len`.
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_bytes()
}

fn validate(c: &mut Criterion) {
    for mixed in [false, true] {
        let kind = if mixed { "mixed" } else { "ascii" };
        let mut g = c.benchmark_group(format!("utf8/{kind}"));
        for len in SIZES {
            let data = text(len, mixed);
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_with_input(BenchmarkId::new("std", len), &data, |b, d| {
                b.iter(|| std::str::from_utf8(black_box(d)).is_ok())
            });
            g.bench_with_input(BenchmarkId::new("validator", len), &data, |b, d| {
                b.iter(|| Utf8Validator::default().feed(black_box(d)).is_ok())
            });
            g.bench_with_input(
                BenchmarkId::new("validator_segments", len),
                &data,
                |b, d| {
                    b.iter(|| {
                        let mut v = Utf8Validator::default();
                        d.chunks(SEGMENT)
                            .all(|piece| v.feed(black_box(piece)).is_ok())
                    })
                },
            );
        }
        g.finish();
    }
}

criterion_group!(benches, validate);
criterion_main!(benches);
