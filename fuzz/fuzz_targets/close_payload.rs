//! Close payload parsing against the rules of §5.5.1/§7.4 written out independently, reason
//! truncation, and the answer a server session gives to that Close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsd::protocol::close::{parse_close_payload, truncate_reason, MAX_REASON_LEN};
use wsd::protocol::ProtocolError;
use wsd_fuzz::{client_frame, limits_from, Driver, Seen};

fuzz_target!(|data: &[u8]| {
    let expected = model(data);
    let got = parse_close_payload(data);
    match (&got, &expected) {
        (Ok(frame), Ok(code)) => {
            assert_eq!(frame.code.map(|c| c.0), *code);
            assert_eq!(frame.reason.as_bytes(), data.get(2..).unwrap_or_default());
        }
        (Err(e), Err(want)) => assert_eq!(e, want),
        _ => panic!("parse_close_payload: {got:?}, expected {expected:?}"),
    }

    if let Ok(text) = std::str::from_utf8(data) {
        let cut = truncate_reason(text);
        assert!(cut.len() <= MAX_REASON_LEN && text.starts_with(cut));
        if cut.len() < text.len() {
            // Cut at the last character boundary that fits, not earlier.
            let next = text[cut.len()..].chars().next().unwrap();
            assert!(cut.len() + next.len_utf8() > MAX_REASON_LEN);
        }
    }

    // The same payload in a Close frame sent to a server session.
    if data.len() > 125 {
        return;
    }
    let mut frame = Vec::new();
    client_frame(&mut frame, true, 0x8, data, [0x37, 0xfa, 0x21, 0x3d]);
    let mut driver = Driver::new(limits_from(5));
    driver.feed(&frame);
    let frames = driver.frames();
    assert_eq!(frames.len(), 1);
    match expected {
        Ok(code) => {
            assert_eq!(driver.error, None);
            let reason = String::from_utf8(data.get(2..).unwrap_or_default().to_vec()).unwrap();
            assert_eq!(driver.events, [Seen::Close(code, reason)]);
            // §5.5.1: the answer echoes the code, or 1000 when there was none.
            assert_eq!(frames[0].close_code(), Some(code.unwrap_or(1000)));
        }
        Err(e) => {
            assert_eq!(driver.error, Some(e));
            assert!(driver.events.is_empty());
            assert_eq!(frames[0].close_code(), Some(e.close_code().0));
        }
    }
});

/// §5.5.1 and §7.4.1/§7.4.2, as the RFC words them.
fn model(payload: &[u8]) -> Result<Option<u16>, ProtocolError> {
    if payload.is_empty() {
        return Ok(None);
    }
    if payload.len() == 1 {
        return Err(ProtocolError::InvalidClosePayload);
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let defined = (1000..=1003).contains(&code) || (1007..=1014).contains(&code);
    let private = (3000..=4999).contains(&code);
    if !(defined || private) {
        return Err(ProtocolError::InvalidClosePayload);
    }
    std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
    Ok(Some(code))
}
