//! wss:// against the real binary: Python `websockets` over `ssl`, `openssl s_client`, a rustls
//! client; what a server must survive (garbage, a stalled handshake); SIGHUP reloads; the drain.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::tls::{path, served, tls_args, Pki};
use common::{Wsd, WAIT};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// `wsd` serving wss:// on its `listen` address with `issued`, plus `extra` arguments.
fn start(issued: &common::tls::Issued, extra: &[&str]) -> Wsd {
    let mut args = tls_args(issued);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Wsd::start(&args)
}

fn echoes(ws: &mut common::tls::TlsClient, text: &str) {
    ws.send(Message::text(text)).unwrap();
    match ws.read().unwrap() {
        Message::Text(t) => assert_eq!(t, text),
        other => panic!("expected an echo, got {other:?}"),
    }
}

/// Reads the server's Close (`code`, `reason`), then the end of the stream, which must come
/// with close_notify: rustls reports an end without one as an error (UnexpectedEof).
fn closed_with_close_notify(ws: &mut common::tls::TlsClient, code: u16, reason: &str) {
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), code);
            assert_eq!(frame.reason, reason);
        }
        other => panic!("expected Close {code}, got {other:?}"),
    }
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("the TLS stream did not end cleanly: {e}"),
        }
    }
}

#[test]
fn python_websockets_echoes_over_tls_1_2_and_1_3() {
    let pki = Pki::new("python");
    let issued = pki.issue("server", 2040);
    let wsd = start(&issued, &[]);
    assert!(wsd
        .wait_for_log("listening on")
        .unwrap()
        .contains("(wss://"));
    let python = common::test_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/tls_echo.py");
    for version in ["1.2", "1.3"] {
        let out = Command::new(&python)
            .arg(script)
            .arg(format!("wss://localhost:{}/", wsd.addr.port()))
            .arg(pki.ca_file())
            .arg(version)
            .output()
            .expect("python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), format!("ok TLSv{version} http/1.1"));
    }
    assert!(wsd.wait_for_log_count("closed (Clean)", 2));
}

#[test]
fn openssl_s_client_negotiates_alpn_and_upgrades() {
    let pki = Pki::new("s-client");
    let issued = pki.issue("server", 2040);
    let wsd = start(&issued, &[]);
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &wsd.addr.to_string()])
        .args(["-alpn", "http/1.1", "-CAfile", &path(&pki.ca_file())])
        .args(["-verify_return_error", "-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&common::upgrade_request("/")).unwrap();
    // A masked text frame, then a Close: the echo and the Close answer end the exchange.
    stdin
        .write_all(&common::frame(true, 1, b"via s_client"))
        .unwrap();
    stdin.write_all(&common::close_frame(1000, "")).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    drop(stdin);
    let _ = child.wait();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("HTTP/1.1 101 Switching Protocols"), "{out}");
    assert!(out.contains("via s_client"), "{out}");
}

#[test]
fn garbage_instead_of_a_client_hello_is_dropped_and_counted() {
    let pki = Pki::new("garbage");
    let issued = pki.issue("server", 2040);
    let wsd = start(&issued, &["--metrics-listen", "127.0.0.1:0"]);
    // A plain ws:// upgrade request sent to the wss:// port.
    let mut s = TcpStream::connect(wsd.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&common::upgrade_request("/")).unwrap();
    assert!(common::sees_eof(&mut s), "the connection is closed");
    let metrics = common::scrape(wsd.metrics_addr());
    assert_eq!(metrics["wsd_tls_handshake_failures_total"], 1.0);
    assert_eq!(metrics["wsd_connections_open"], 0.0);
    // The server goes on serving.
    let mut ws = pki.connect_wss(wsd.addr, "/");
    echoes(&mut ws, "still here");
    let metrics = common::scrape(wsd.metrics_addr());
    assert_eq!(metrics["wsd_tls_handshakes_total"], 1.0);
}

#[test]
fn a_stalled_handshake_is_dropped_at_handshake_timeout() {
    let pki = Pki::new("stall");
    let issued = pki.issue("server", 2040);
    let wsd = start(
        &issued,
        &[
            "--handshake-timeout",
            "300ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    // One says nothing; one stops inside its ClientHello (a record header announcing 512
    // bytes); one completes TLS and never sends its upgrade request.
    let mut silent = TcpStream::connect(wsd.addr).unwrap();
    let mut partial = TcpStream::connect(wsd.addr).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let mut quiet = pki.connect_tls(wsd.addr);
    for s in [&mut silent, &mut partial] {
        s.set_read_timeout(Some(WAIT)).unwrap();
        assert!(common::sees_eof(s));
    }
    let mut buf = [0u8; 64];
    let end = quiet.read(&mut buf);
    assert!(!matches!(end, Ok(n) if n > 0), "{end:?}");
    let metrics = common::scrape(wsd.metrics_addr());
    assert_eq!(metrics["wsd_handshake_timeouts_total"], 3.0);
    assert_eq!(metrics["wsd_connections_open"], 0.0);
}

#[test]
fn sighup_reloads_the_certificate_and_a_broken_file_keeps_it() {
    let pki = Pki::new("reload");
    let first = pki.issue("first", 2040);
    let wsd = start(&first, &["--metrics-listen", "127.0.0.1:0"]);
    let mut old = pki.connect_wss(wsd.addr, "/");
    assert_eq!(served(&old), first.der);
    let expiry = |wsd: &Wsd| {
        common::scrape(wsd.metrics_addr())["wsd_tls_certificate_expiry_timestamp_seconds"]
    };
    assert_eq!(expiry(&wsd), 2_208_988_800.0); // 2040-01-01T00:00:00Z

    // A new pair in the same files.
    let second = pki.issue("second", 2041);
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    wsd.signal(libc::SIGHUP);
    assert!(wsd.wait_for_log("TLS: reloaded the certificate").is_some());
    let mut new = pki.connect_wss(wsd.addr, "/");
    assert_eq!(served(&new), second.der);
    echoes(&mut old, "old connection untouched");
    echoes(&mut new, "new connection");
    assert_eq!(expiry(&wsd), 2_240_611_200.0); // 2041-01-01

    // A broken certificate file: logged, and the second pair stays.
    std::fs::write(&first.cert, "not a certificate\n").unwrap();
    wsd.signal(libc::SIGHUP);
    let line = wsd.wait_for_log("TLS: reload failed").unwrap();
    assert!(line.contains(&path(&first.cert)), "{line}");
    let mut third = pki.connect_wss(wsd.addr, "/");
    assert_eq!(served(&third), second.der);
    echoes(&mut third, "after a failed reload");
    let metrics = common::scrape(wsd.metrics_addr());
    assert_eq!(metrics["wsd_tls_reloads_total"], 1.0);
    assert_eq!(metrics["wsd_tls_reload_failures_total"], 1.0);
    assert_eq!(expiry(&wsd), 2_240_611_200.0);
}

#[test]
fn the_drain_sends_close_1001_then_close_notify() {
    let pki = Pki::new("drain");
    let issued = pki.issue("server", 2040);
    let mut wsd = start(&issued, &["--close-reason", "bye over tls"]);
    let mut ws = pki.connect_wss(wsd.addr, "/");
    echoes(&mut ws, "before the drain");
    wsd.signal(libc::SIGTERM);
    // tungstenite answers the Close; then the stream must end with close_notify.
    closed_with_close_notify(&mut ws, u16::from(CloseCode::Away), "bye over tls");
    // Our close_notify in turn lets wsd end the connection without waiting for a FIN.
    let stream = ws.get_mut();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    assert!(wsd.wait_exit().success());
    let report = wsd.wait_for_log("drain finished").unwrap();
    assert!(report.contains("1 closed cleanly"), "{report}");
}

#[test]
fn check_config_names_the_bad_file() {
    let pki = Pki::new("check");
    let a = pki.issue("a", 2040);
    let b = pki.issue("b", 2040);
    let check = |cert: &std::path::Path, key: &std::path::Path| {
        common::wsd_command(&["--check-config"])
            .args(["--tls-cert", &path(cert), "--tls-key", &path(key)])
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let ok = check(&a.cert, &a.key);
    assert!(ok.status.success(), "{ok:?}");
    // A key that is not the certificate's.
    let out = check(&a.cert, &b.key);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path(&b.key)), "{err}");
    // Not PEM at all.
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let out = check(&junk, &a.key);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&path(&junk)) && err.contains("no CERTIFICATE"),
        "{err}"
    );
    // A missing file.
    let out = check(&pki.dir.join("missing.pem"), &a.key);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem: tls_cert: cannot read"));
}

/// `wsd --mode pubsub` with the publish API, plus `extra`; returns the API address.
fn start_pubsub(issued: &common::tls::Issued, extra: &[&str]) -> (Wsd, std::net::SocketAddr) {
    let mut args = vec!["--mode", "pubsub", "--api-listen", "127.0.0.1:0"];
    args.extend_from_slice(&["--metrics-listen", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    let wsd = start(issued, &args);
    let line = wsd.wait_for_log("publish API on http://").unwrap();
    let api = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("API address");
    (wsd, api)
}

/// POSTs `body` to channel `channel`; returns the status.
fn publish(api: std::net::SocketAddr, channel: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "POST /publish/{channel} HTTP/1.1\r\nHost: wsd\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn pubsub_reaches_ws_and_wss_subscribers_of_one_server_in_order() {
    let pki = Pki::new("pubsub");
    let issued = pki.issue("server", 2040);
    let (wsd, api) = start_pubsub(&issued, &["--tls-listen", "127.0.0.1:0"]);
    assert!(wsd.wait_for_log("(ws://").is_some(), "listen stays ws://");
    let tls_addr: std::net::SocketAddr = wsd
        .wait_for_log("listening for wss:// on ")
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut secure = pki.connect_wss(tls_addr, "/news");
    let stream = TcpStream::connect(wsd.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut plain, _) = tungstenite::client("ws://localhost/news", stream).unwrap();
    assert!(wsd.wait_for_log_count(": open /news", 2));
    // Small and large publications (a large one spans several TLS records).
    let bodies: Vec<Vec<u8>> = (0..20u8)
        .map(|i| vec![i; if i % 5 == 0 { 100_000 } else { 10 + i as usize }])
        .collect();
    for body in &bodies {
        assert_eq!(publish(api, "news", body), 200);
    }
    for body in &bodies {
        assert_eq!(secure.read().unwrap(), Message::Binary(body.clone()));
    }
    for body in &bodies {
        assert_eq!(plain.read().unwrap(), Message::Binary(body.clone()));
    }
    let metrics = common::scrape(wsd.metrics_addr());
    assert_eq!(metrics["wsd_deliveries_total"], 40.0);
}

#[test]
fn a_wss_subscriber_that_does_not_read_is_bounded_then_closed() {
    let pki = Pki::new("backpressure");
    let issued = pki.issue("server", 2040);
    let (wsd, api) = start_pubsub(
        &issued,
        &[
            "--max-output-buffer",
            "256KiB",
            "--slow-consumer-timeout",
            "300ms",
        ],
    );
    let _stalled = pki.connect_wss(wsd.addr, "/flood");
    assert!(wsd.wait_for_log(": open /flood").is_some());
    let body = vec![7u8; 64 * 1024];
    // 16 MiB: more than the socket buffers of both ends and the bound together.
    for _ in 0..256 {
        assert_eq!(publish(api, "flood", &body), 200);
    }
    assert!(wsd.wait_for_log("slow consumer").is_some());
    let metrics = common::scrape(wsd.metrics_addr());
    assert!(metrics["wsd_deliveries_dropped_total"] > 0.0, "{metrics:?}");
    assert_eq!(metrics["wsd_slow_consumer_closes_total"], 1.0);
}

#[test]
fn wsd_load_echoes_over_tls_with_a_ca_or_insecure() {
    let pki = Pki::new("load");
    let issued = pki.issue("server", 2040);
    let wsd = start(&issued, &[]);
    let url = format!("wss://127.0.0.1:{}/", wsd.addr.port());
    let ca = path(&pki.ca_file());
    for trust in [vec!["--ca", ca.as_str()], vec!["--insecure"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_wsd-load"))
            .args([
                "echo", "--url", &url, "-c", "8", "-m", "400", "-s", "20KiB", "-q",
            ])
            .args(&trust)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("8 clean"), "{stdout}");
    }
    // Trusting another CA, the handshake fails, and says why.
    let other = Pki::new("load-other");
    let out = Command::new(env!("CARGO_BIN_EXE_wsd-load"))
        .args(["echo", "--url", &url, "-c", "1", "-m", "1", "-q"])
        .args(["--ca", &path(&other.ca_file())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wsd-load: TLS:"));
}

/// Headless Chromium, trusting the test CA (by its public key: Chromium's
/// `--ignore-certificate-errors-spki-list`, no system store touched): a page echoes over wss://,
/// then sees the drain's Close 1001, its reason and `wasClean`. Skipped (with a note) when
/// `chromium` is not installed.
#[test]
fn headless_chromium_echoes_and_sees_the_drain() {
    let Ok(chromium) = which("chromium") else {
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let pki = Pki::new("chromium");
    let issued = pki.issue("server", 2040);
    let mut wsd = start(&issued, &["--close-reason", "bye, browser"]);
    // The page reports to this listener with fetch() (an opaque no-cors request is enough).
    let reports = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page = pki.dir.join("page.html");
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><script>
const report = (what) => fetch("http://127.0.0.1:{report}/" + what, {{mode: "no-cors"}});
const ws = new WebSocket("wss://localhost:{port}/");
ws.onopen = () => ws.send("from chromium");
ws.onmessage = (e) => report("echo?" + encodeURIComponent(e.data));
ws.onerror = () => report("error");
ws.onclose = (e) => report("close?code=" + e.code + "&reason=" + encodeURIComponent(e.reason)
  + "&clean=" + e.wasClean);
</script>"#,
            report = reports.local_addr().unwrap().port(),
            port = wsd.addr.port(),
        ),
    )
    .unwrap();
    let spki = spki_sha256_base64(&pki.ca_file());
    let profile = pki.dir.join("profile");
    let mut browser = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", path(&profile)))
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!("file://{}", path(&page)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Reports arrive on a thread, so that a page that never reports fails the test in WAIT.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in reports.incoming() {
            let Ok(mut s) = s else { break };
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            let line = String::from_utf8_lossy(&head).into_owned();
            let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
            if tx.send(target).is_err() {
                break;
            }
        }
    });
    let next_report = || rx.recv_timeout(WAIT).expect("a report from the page");
    let echoed = next_report();
    wsd.signal(libc::SIGTERM);
    let closed = next_report();
    let _ = browser.kill();
    let _ = browser.wait();
    assert_eq!(echoed, "/echo?from%20chromium");
    assert_eq!(
        closed,
        "/close?code=1001&reason=bye%2C%20browser&clean=true"
    );
    assert!(wsd.wait_exit().success());
}

/// `program`'s path on PATH.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate, with the openssl CLI.
fn spki_sha256_base64(cert: &std::path::Path) -> String {
    let script = format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
        path(cert)
    );
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_python_websockets_subscriber_gets_publications_over_tls() {
    let pki = Pki::new("python-pubsub");
    let issued = pki.issue("server", 2040);
    let (wsd, api) = start_pubsub(&issued, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/subscribe.py");
    // Python's default context trusts the CA named by SSL_CERT_FILE (OpenSSL's default paths).
    let mut child = Command::new(common::test_python())
        .arg(script)
        .arg(format!("wss://localhost:{}/py", wsd.addr.port()))
        .arg("2")
        .env("SSL_CERT_FILE", pki.ca_file())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "subscribed");
    assert_eq!(publish(api, "py", b"\x00over tls"), 200);
    assert_eq!(publish(api, "py", &[b'x'; 40_000]), 200);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let mut lines = rest.lines();
    assert_eq!(lines.next(), Some("binary b'\\x00over tls'"));
    assert!(lines.next().unwrap().starts_with("binary b'xxxx"));
}

#[test]
fn a_live_upgrade_closes_wss_with_1012_and_moves_both_listeners() {
    let pki = Pki::new("upgrade");
    let issued = pki.issue("server", 2040);
    let wsd = start(
        &issued,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let tls_addr: std::net::SocketAddr = wsd
        .wait_for_log("listening for wss:// on ")
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut secure = pki.connect_wss(tls_addr, "/");
    echoes(&mut secure, "before the upgrade");
    let stream = TcpStream::connect(wsd.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut plain, _) = tungstenite::client("ws://localhost/", stream).unwrap();
    let old = common::serving_pid(wsd.metrics_addr());
    // SAFETY: kill(2) with a pid read from the server itself.
    assert_eq!(unsafe { libc::kill(old, libc::SIGUSR2) }, 0);
    // The TLS state cannot move: Close 1012, then close_notify.
    closed_with_close_notify(&mut secure, 1012, "service restart");
    assert!(wsd.wait_for_log("live upgrade: resumed").is_some());
    assert_ne!(
        common::serving_pid(wsd.metrics_addr()),
        old,
        "a new process serves"
    );
    // The ws:// connection moved; both listeners moved, and wss:// serves the same certificate.
    plain.send(Message::text("after the upgrade")).unwrap();
    assert_eq!(plain.read().unwrap(), Message::text("after the upgrade"));
    let mut again = pki.connect_wss(tls_addr, "/");
    assert_eq!(served(&again), issued.der);
    echoes(&mut again, "a new wss:// connection");
    // The harness ends the process it started; the one serving now is not its child.
    let new = common::serving_pid(wsd.metrics_addr());
    // SAFETY: kill(2) with a pid read from the server itself.
    unsafe { libc::kill(new, libc::SIGKILL) };
}

#[test]
fn a_publication_larger_than_the_output_bound_reaches_an_idle_wss_subscriber() {
    let pki = Pki::new("big");
    let issued = pki.issue("server", 2040);
    let (wsd, api) = start_pubsub(&issued, &["--max-output-buffer", "64KiB"]);
    let mut ws = pki.connect_wss(wsd.addr, "/big");
    assert!(wsd.wait_for_log(": open /big").is_some());
    let body = vec![3u8; 200_000];
    assert_eq!(publish(api, "big", &body), 200);
    assert_eq!(ws.read().unwrap(), Message::Binary(body));
}

#[test]
fn a_full_server_closes_a_wss_connection_at_once_and_counts_it() {
    let pki = Pki::new("full");
    let issued = pki.issue("server", 2040);
    let wsd = start(
        &issued,
        &["--max-connections", "1", "--metrics-listen", "127.0.0.1:0"],
    );
    let mut first = pki.connect_wss(wsd.addr, "/");
    echoes(&mut first, "the one allowed");
    // No TLS handshake is spent on a connection over the limit: it is closed unanswered.
    let mut refused = TcpStream::connect(wsd.addr).unwrap();
    refused.set_read_timeout(Some(WAIT)).unwrap();
    assert!(common::sees_eof(&mut refused));
    let metrics = common::scrape(wsd.metrics_addr());
    assert_eq!(
        metrics["wsd_handshakes_rejected_total{status=\"503\"}"],
        1.0
    );
    assert_eq!(metrics["wsd_tls_handshakes_total"], 1.0);
    echoes(&mut first, "still served");
}

#[test]
fn socket_activation_passes_the_wss_listener_by_name() {
    let pki = Pki::new("activation");
    let issued = pki.issue("server", 2040);
    let ws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let wss = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (ws_addr, wss_addr) = (ws.local_addr().unwrap(), wss.local_addr().unwrap());
    let args = tls_args(&issued);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = common::activated_command(&[(&ws, "wsd"), (&wss, "tls")], &args);
    let _wsd = Wsd::spawn(cmd);
    let mut secure = pki.connect_wss(wss_addr, "/");
    echoes(&mut secure, "over the inherited wss:// socket");
    let stream = TcpStream::connect(ws_addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut plain, _) = tungstenite::client("ws://localhost/", stream).unwrap();
    plain.send(Message::text("over ws://")).unwrap();
    assert_eq!(plain.read().unwrap(), Message::text("over ws://"));
}
