//! Arbitrary bytes through a whole server `Session`, cut into pieces and interleaved with
//! server-side closes (a drain, a handler's close) at points the input chooses.
//!
//! Invariants (checked by `wsd_fuzz::Driver` after every step):
//! - no panic, and every step consumes at least one byte or asks for more;
//! - the output is always a sequence of whole, final, unmasked server frames that a client
//!   decodes with `decode_header(.., Role::Client)`; Close frames carry a sendable code and a
//!   UTF-8 reason;
//! - once the session leaves `Open` (failed, answered a Close, or closed by us) nothing but its
//!   one Close is ever written;
//! - output ≤ input + one Close frame (127 bytes): echoes and Pongs are never longer than the
//!   masked frames they answer;
//! - a partial frame never asks the caller to buffer more than `max_frame_size` + a header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsd_fuzz::{limits_from, Driver};

fuzz_target!(|data: &[u8]| {
    // [limits][n][bytes …][n op bytes]: each op byte feeds the next piece of the bytes
    // (1–64 bytes, ×16 with bit 7) and, with bit 6, then closes from our side.
    let [limits_byte, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*n).min(rest.len());
    let (bytes, ops) = rest.split_at(rest.len() - n);
    let mut driver = Driver::new(limits_from(*limits_byte));
    let mut at = 0;
    for &op in ops {
        let mut piece = usize::from(op & 0x3F) + 1;
        if op & 0x80 != 0 {
            piece *= 16;
        }
        let end = (at + piece).min(bytes.len());
        driver.feed(&bytes[at..end]);
        at = end;
        if op & 0x40 != 0 {
            let reason = if op & 1 == 0 {
                ""
            } else {
                "server shutting down"
            };
            driver.close(1001, reason);
        }
    }
    driver.feed(&bytes[at..]);
});
