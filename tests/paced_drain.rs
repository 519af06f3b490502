//! The paced drain (`drain_spread`): Close frames spread over the window, every client gets one.

mod common;

use common::{frame, raw_upgraded, read_until_close, sees_eof, Wsd};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn closes_are_spread_over_the_window_and_every_client_gets_one() {
    const CLIENTS: usize = 200;
    let spread = Duration::from_secs(2);
    let mut wsd = Wsd::start(&[
        "--drain-spread",
        "2s",
        "--close-timeout",
        "5s",
        "--max-connections",
        "300",
    ]);
    let clients: Vec<_> = (0..CLIENTS).map(|_| raw_upgraded(&wsd)).collect();
    let signalled = Instant::now();
    wsd.signal(libc::SIGTERM);
    // Each client waits for its Close, notes when it came, answers it and sees the server go.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let code = read_until_close(&mut s);
                let at = signalled.elapsed();
                s.write_all(&frame(true, 0x8, &1001u16.to_be_bytes()))
                    .unwrap();
                (code, at, sees_eof(&mut s))
            })
        })
        .collect();
    let mut arrivals: Vec<Duration> = readers
        .into_iter()
        .map(|r| {
            let (code, at, eof) = r.join().unwrap();
            assert_eq!(code, Some(1001));
            assert!(eof);
            at
        })
        .collect();
    arrivals.sort();
    let status = wsd.wait_exit();
    assert!(status.success(), "{status:?}");

    // Evenly spread: about a tenth arrive in each tenth of the window, so the first tenth holds
    // far fewer than all of them (allowing for scheduling noise), and the last Close goes out
    // near the end of the window, not after it.
    let first_tenth = arrivals.iter().filter(|&&at| at < spread / 10).count();
    assert!(
        first_tenth <= CLIENTS / 5,
        "{first_tenth} of {CLIENTS} in the first 10%"
    );
    let by_half = arrivals.iter().filter(|&&at| at < spread / 2).count();
    assert!(
        (CLIENTS * 3 / 10..=CLIENTS * 7 / 10).contains(&by_half),
        "{by_half} by half time"
    );
    let last = *arrivals.last().unwrap();
    assert!(last >= spread * 8 / 10, "last Close at {last:?}");
    assert!(
        last < spread + Duration::from_secs(1),
        "last Close at {last:?}"
    );
    assert!(wsd
        .logs()
        .iter()
        .any(|l| l.contains(&format!("{CLIENTS} closed cleanly, 0 timed out"))));
}

#[test]
fn a_paced_drain_still_answers_messages_and_refuses_new_connections() {
    let notify = common::NotifySocket::abstract_name("paced");
    let mut wsd = Wsd::start_with(
        &["--drain-spread", "3s", "--close-timeout", "5s"],
        &[("NOTIFY_SOCKET", &notify.name)],
    );
    let mut clients: Vec<_> = (0..10).map(|_| raw_upgraded(&wsd)).collect();
    wsd.signal(libc::SIGTERM);
    wsd.wait_for_log("draining 10 connections").unwrap();
    // systemd is asked to wait for the spread, close_timeout and the 5 s margin.
    let stopping = notify.recv_until(|m| m.starts_with("STOPPING=1"));
    assert_eq!(
        stopping.last().unwrap(),
        "STOPPING=1\nSTATUS=draining: 10 left\nEXTEND_TIMEOUT_USEC=13000000"
    );
    // New connections are not accepted any more, at once (not after the spread).
    if let Ok(mut late) = std::net::TcpStream::connect(wsd.addr) {
        late.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        late.write_all(&common::upgrade_request("/")).ok();
        let head = common::read_http_head(&mut late);
        assert!(!head.starts_with("HTTP/1.1 101"), "{head}");
    }
    // Until its Close, a connection is served as before. Slot i lies in [0.3 i s, 0.3 (i+1) s),
    // so only the first slot can come before the message arrives.
    for s in clients.iter_mut() {
        s.write_all(&frame(true, 0x1, b"still there?")).unwrap();
    }
    let mut echoed_first = 0;
    for s in clients.iter_mut() {
        let first = common::read_frame(s).unwrap();
        if (first.opcode, first.payload.as_slice()) == (0x1, b"still there?".as_slice()) {
            echoed_first += 1;
            assert_eq!(read_until_close(s), Some(1001));
        } else {
            assert_eq!(first.close_code(), Some(1001));
        }
        s.write_all(&frame(true, 0x8, &1001u16.to_be_bytes()))
            .unwrap();
        assert!(sees_eof(s));
    }
    assert!(
        echoed_first >= 9,
        "{echoed_first} of 10 echoed before their Close"
    );
    assert!(wsd.wait_exit().success());
}
