//! Frame benchmarks: header decode, in-place unmask, a whole masked frame through the server's
//! Session, and frame encode, for payloads from 16 B to 1 MiB.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsd::protocol::frame::{decode_header, encode_header, unmask, write_frame, MAX_HEADER_LEN};
use wsd::protocol::session::{Input, Limits};
use wsd::protocol::{OpCode, Role, Session};

/// Payload sizes measured: every length form (7-bit, 16-bit, 64-bit) and the cache levels.
const SIZES: [usize; 7] = [16, 125, 512, 1024, 16 * 1024, 64 * 1024, 1 << 20];
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn masked_frame(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    let mut out = Vec::new();
    write_frame(&mut out, true, OpCode::Binary, &payload, Some(MASK));
    out
}

fn header_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/decode_header");
    g.throughput(Throughput::Elements(1));
    for len in [16usize, 1024, 1 << 20] {
        let frame = masked_frame(len);
        g.bench_with_input(BenchmarkId::from_parameter(len), &frame, |b, f| {
            b.iter(|| decode_header(black_box(&f[..MAX_HEADER_LEN]), Role::Server))
        });
    }
    g.finish();
}

fn unmask_in_place(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/unmask");
    for len in SIZES {
        let mut data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| unmask(black_box(&mut data), MASK, 0))
        });
    }
    g.finish();
}

/// Decode + unmask + deliver: one masked binary frame through a server Session. Unmasking is
/// its own inverse, so running it again on the same bytes costs the same and stays valid.
fn session_poll_input(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/session_decode_unmask");
    let limits = Limits {
        max_frame_size: 1 << 21,
        max_message_size: 1 << 21,
    };
    for len in SIZES {
        let mut frame = masked_frame(len);
        let mut session = Session::new(Role::Server, limits, 0);
        let mut out = Vec::with_capacity(256);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(
                || match session.poll_input(black_box(&mut frame), &mut out) {
                    Ok(Input::Consumed { consumed, .. }) => consumed,
                    other => panic!("{other:?}"),
                },
            )
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/encode_header");
    g.throughput(Throughput::Elements(1));
    for len in [16usize, 1024, 1 << 20] {
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
            let mut hdr = [0u8; MAX_HEADER_LEN];
            b.iter(|| encode_header(&mut hdr, true, OpCode::Binary, black_box(len), None))
        });
    }
    g.finish();
    for (name, mask) in [("server", None), ("client_masked", Some(MASK))] {
        let mut g = c.benchmark_group(format!("frame/write_frame_{name}"));
        for len in SIZES {
            let payload = vec![0x5Au8; len];
            let mut out = Vec::with_capacity(len + MAX_HEADER_LEN);
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function(BenchmarkId::from_parameter(len), |b| {
                b.iter(|| {
                    out.clear();
                    write_frame(&mut out, true, OpCode::Binary, black_box(&payload), mask);
                    out.len()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(
    benches,
    header_decode,
    unmask_in_place,
    session_poll_input,
    encode
);
criterion_main!(benches);
