//! The publish API's request parser: never panics, uses no more than it was given, honours the
//! head and body limits and the token, and a strict prefix of a complete request is "need more"
//! (or an error that the whole request also gets: a limit already passed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsd::pubsub::api::{parse, Request, MAX_HEAD};
use wsd::pubsub::name::is_valid;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, request)) = data.split_first() else {
        return;
    };
    // Low bits: the body limit (0 B to 16 MiB); high bit: whether a token is required.
    let max_body = [0u64, 1, 64, 1024, 65536, 16 << 20, 5, 100][usize::from(knobs & 7)];
    let token = if knobs & 0x80 != 0 { "s3cret" } else { "" };
    match parse(request, token, max_body) {
        Ok(None) => assert!(request.len() <= MAX_HEAD + max_body as usize + 1),
        Ok(Some(p)) => {
            assert!(p.used <= request.len());
            if let Request::Publish { channel, text, body } = &p.request {
                assert!(is_valid(channel), "{channel:?}");
                assert!(body.len() as u64 <= max_body);
                if *text {
                    assert!(std::str::from_utf8(body).is_ok());
                }
            }
            if !token.is_empty() {
                let head = String::from_utf8_lossy(&request[..p.used]);
                assert!(head.contains("s3cret"), "authorised without the token");
            }
            // The same request alone parses the same; any strict prefix is incomplete.
            let again = parse(&request[..p.used], token, max_body).unwrap().unwrap();
            assert_eq!(again, p);
            let cut = usize::from(knobs) % p.used;
            assert_eq!(parse(&request[..cut], token, max_body), Ok(None));
        }
        Err(e) => {
            assert!((400..500).contains(&e.status()));
            assert!(!e.detail().is_empty());
        }
    }
});
