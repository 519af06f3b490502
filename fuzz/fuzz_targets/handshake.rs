//! Handshake parsing: the server's request parser never panics, honours the head limit, and a
//! strict prefix of an accepted head is only ever "need more"; the client's response check (used
//! by wsd-load) never panics and accepts what `write_accept` writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsd::protocol::handshake::{accept_key, check_response, parse_request, write_accept};

/// The §1.3 sample key: the one the seeds' 101 responses answer.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let Some((&limit, request)) = data.split_first() else {
        return;
    };
    // 256 B (the smallest the config allows) up to 8 KiB (the default) and beyond.
    let max_head = 256 + usize::from(limit) * 64;
    // The same bytes as a server's response, checked by a client.
    if let Ok(Some(n)) = check_response(request, KEY) {
        assert!(n <= request.len());
        assert_eq!(check_response(&request[..n], KEY), Ok(Some(n)));
    }
    match parse_request(request, max_head) {
        Ok(None) => assert!(request.len() < max_head, "a partial head at the limit"),
        Ok(Some(req)) => {
            assert!(req.head_len <= request.len() && req.head_len <= max_head);
            // httparse also takes bare LF line ends, as RFC 9112 §2.2 allows.
            assert!(request[..req.head_len].ends_with(b"\n"));
            let mut out = Vec::new();
            write_accept(req.key, &mut out);
            assert!(out.starts_with(b"HTTP/1.1 101 "));
            assert_eq!(check_response(&out, req.key), Ok(Some(out.len())));
            assert!(accept_key(req.key).iter().all(u8::is_ascii_graphic));
            // Parsing the head alone gives the same request: frames after it do not matter.
            let again = parse_request(&request[..req.head_len], max_head);
            assert_eq!(again, Ok(Some(req)));
            // Any strict prefix of it is incomplete, not an error.
            let cut = usize::from(limit) % req.head_len;
            assert_eq!(parse_request(&request[..cut], max_head), Ok(None));
        }
        Err(reject) => {
            let mut out = Vec::new();
            reject.write_response(&mut out);
            let status = format!("HTTP/1.1 {} ", reject.status());
            assert!(out.starts_with(status.as_bytes()));
            assert!((400..600).contains(&reject.status()));
        }
    }
});
