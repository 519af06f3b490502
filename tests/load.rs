//! wsd-load against the real wsd binary: echo, idle, drain and pubsub runs, exit codes and JSON.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Wsd, WAIT};

fn load(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsd-load"));
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Runs wsd-load to completion (bounded by [`WAIT`]).
fn run(args: &[&str]) -> Output {
    let mut child = load(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsd-load");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wsd-load did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// The number after `"key":` in a flat or nested JSON text (first occurrence).
fn json_number(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat).unwrap_or_else(|| panic!("{key} in {json}")) + pat.len();
    let rest = &json[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn echo_run_verifies_every_message_and_reports_json() {
    let wsd = Wsd::start(&[]);
    let url = wsd.url();
    let pid = wsd.pid().to_string();
    for (size, extra) in [("16", &[][..]), ("70000", &["--binary", "-p", "4"][..])] {
        let mut args = vec![
            "echo",
            "--url",
            &url,
            "-c",
            "4",
            "-m",
            "2000",
            "-s",
            size,
            "--json",
            "-q",
            "--server-pid",
            &pid,
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        let json = stdout(&out);
        assert!(out.status.success(), "{json} {:?}", out);
        assert!(json.contains("\"ok\":true"), "{json}");
        assert_eq!(json_number(&json, "messages"), 2000.0);
        assert_eq!(
            json_number(&json, "bytes"),
            2000.0 * size.parse::<f64>().unwrap()
        );
        assert_eq!(json_number(&json, "mismatches"), 0.0);
        assert_eq!(json_number(&json, "missing_echoes"), 0.0);
        assert_eq!(json_number(&json, "opened"), 4.0);
        assert!(json_number(&json, "messages_per_s") > 0.0);
        assert!(json_number(&json, "p99") > 0.0);
        assert!(json_number(&json, "server_cpu_us_per_msg") >= 0.0);
        // The client closed every connection with a clean close handshake.
        assert_eq!(json_number(&json, "clean"), 4.0);
    }
}

#[test]
fn echo_table_and_source_addresses() {
    let wsd = Wsd::start(&[]);
    let out = run(&[
        "echo",
        "--url",
        &wsd.url(),
        "-c",
        "6",
        "--threads",
        "2",
        "--src",
        "127.0.0.2-127.0.0.4",
        "-d",
        "300ms",
    ]);
    let table = stdout(&out);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("messages/s"), "{table}");
    assert!(table.contains("PASS"), "{table}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("established 6"), "{err}");
}

#[test]
fn nothing_listening_is_a_failure() {
    // Bind and drop a listener to get a port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let out = run(&["echo", "--url", &url, "-m", "10", "--json", "-q"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("\"ok\":false"));
    // A bad command line is exit 2.
    assert_eq!(run(&["echo", "--bogus"]).status.code(), Some(2));
}

#[test]
fn idle_holds_connections() {
    let wsd = Wsd::start(&[]);
    let out = run(&[
        "idle",
        "--url",
        &wsd.url(),
        "-c",
        "50",
        "--rate",
        "2000",
        "--hold",
        "300ms",
        "--json",
        "-q",
    ]);
    let json = stdout(&out);
    assert!(out.status.success(), "{json}");
    assert_eq!(json_number(&json, "opened"), 50.0);
    assert_eq!(json_number(&json, "lost"), 0.0);
    assert!(json_number(&json, "held_s") >= 0.3);
}

/// Starts wsd-load and waits for its `established` line on stderr.
fn start_established(args: &[&str]) -> Child {
    let mut child = load(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsd-load");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("established") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(WAIT).expect("established line");
    assert!(line.starts_with("established"), "{line}");
    child
}

#[test]
fn drain_counts_close_codes_and_silent_clients() {
    let mut wsd = Wsd::start(&["--close-timeout", "300ms"]);
    let child = start_established(&[
        "drain",
        "--url",
        &wsd.url(),
        "-c",
        "20",
        "--no-answer-fraction",
        "0.25",
        "--timeout",
        "5s",
        "--json",
        "-q",
    ]);
    wsd.signal(libc::SIGTERM);
    assert!(wsd.wait_exit().success());
    let out = child.wait_with_output().expect("output");
    let json = stdout(&out);
    assert!(out.status.success(), "{json}");
    assert_eq!(json_number(&json, "1001"), 20.0, "{json}");
    assert_eq!(json_number(&json, "silent"), 5.0);
    assert_eq!(json_number(&json, "silent_dropped"), 5.0);
    assert_eq!(json_number(&json, "clean"), 15.0);
    assert_eq!(json_number(&json, "timed_out"), 0.0);
    assert!(
        json_number(&json, "first_close_to_last_end_ms") >= 250.0,
        "{json}"
    );
}

/// `wsd --mode pubsub --client-publish true` with the publish API on a free port.
fn pubsub_wsd(args: &[&str]) -> (Wsd, String) {
    let mut all = vec![
        "--mode",
        "pubsub",
        "--client-publish",
        "true",
        "--api-listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let wsd = Wsd::start(&all);
    let api = format!("http://{}", wsd.api_addr());
    (wsd, api)
}

#[test]
fn pubsub_runs_check_every_delivery_over_websocket_and_the_api() {
    let (wsd, api) = pubsub_wsd(&["--api-token", "t0k"]);
    let url = wsd.url();
    let pid = wsd.pid().to_string();
    // 40 subscribers over 4 channels, 2 WebSocket publishers per channel (subscribed too):
    // 100 publications per channel, each delivered to 10 + 2 connections.
    let common = [
        "--url",
        url.as_str(),
        "-c",
        "40",
        "--channels",
        "4",
        "--json",
        "-q",
    ];
    let mut args = vec![
        "pubsub",
        "--publishers",
        "2",
        "-m",
        "400",
        "--server-pid",
        &pid,
    ];
    args.extend_from_slice(&common);
    let out = run(&args);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert!(json.contains("\"ok\":true"), "{json}");
    assert_eq!(json_number(&json, "publications"), 400.0);
    assert_eq!(json_number(&json, "deliveries"), 4800.0);
    assert_eq!(json_number(&json, "lost_deliveries"), 0.0);
    assert!(json_number(&json, "server_cpu_us_per_delivery") >= 0.0);

    // Through the API, 2 keep-alive connections, binary, at a fixed rate: 50 publications
    // per channel to 10 subscribers each, every answer counting those 10.
    let mut args = vec![
        "pubsub",
        "--publish-api",
        &api,
        "--api-token",
        "t0k",
        "--publishers",
        "2",
        "-m",
        "200",
        "--pub-rate",
        "2000",
        "--binary",
    ];
    args.extend_from_slice(&common);
    let out = run(&args);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_number(&json, "deliveries"), 2000.0);
    assert_eq!(json_number(&json, "acks"), 200.0);
    assert_eq!(json_number(&json, "subscriber_mismatches"), 0.0);

    // A refused publication is a failure, and so are the deliveries it never made.
    let mut args = vec![
        "pubsub",
        "--publish-api",
        &api,
        "--api-token",
        "wrong",
        "-m",
        "4",
        "--timeout",
        "1s",
    ];
    args.extend_from_slice(&common);
    let out = run(&args);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert!(json.contains("\"api_status\":{\"401\":1}"), "{json}");
}

#[test]
fn pubsub_against_an_echo_server_reports_lost_deliveries() {
    // Plain echo: each publisher gets its own messages back, the subscribers get nothing.
    let wsd = Wsd::start(&[]);
    let url = wsd.url();
    let args = [
        "pubsub",
        "--url",
        &url,
        "-c",
        "5",
        "-m",
        "20",
        "--timeout",
        "1s",
        "--json",
        "-q",
    ];
    let mut wide = args.to_vec();
    wide.extend_from_slice(&["--window", "100"]);
    let out = run(&wide);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json_number(&json, "deliveries"), 20.0);
    assert_eq!(json_number(&json, "lost_deliveries"), 100.0);
    // With the default window the lost deliveries fill it: publishing stops after --timeout.
    let out = run(&args);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert!(json_number(&json, "publications") < 20.0, "{json}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("with the window full"), "{stderr}");
}

#[test]
fn echo_interval_paces_messages_and_reports_stalls_per_period() {
    let wsd = Wsd::start(&[]);
    let url = wsd.url();
    let pid = wsd.pid().to_string();
    let args = [
        "echo",
        "--url",
        &url,
        "-c",
        "10",
        "--interval",
        "20ms",
        "-d",
        "1500ms",
        "--json",
        "-q",
        "--server-pid",
        &pid,
    ];
    let child = start_established(&args);
    std::thread::sleep(Duration::from_millis(600));
    // A new stall period, as benches/reload.sh marks each reload.
    // SAFETY: kill(2) on a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let out = child.wait_with_output().expect("output");
    let json = stdout(&out);
    assert!(out.status.success(), "{json}");
    assert_eq!(json_number(&json, "interval_ms"), 20.0);
    // 10 connections × 1.5 s / 20 ms = 750 at most: paced, not flat out.
    let messages = json_number(&json, "messages");
    assert!((200.0..=770.0).contains(&messages), "{json}");
    let stalls = &json[json.find("\"stall_ms\"").expect("stall_ms")..];
    assert_eq!(json_number(stalls, "connections"), 10.0);
    assert!(json_number(stalls, "p50") >= 19.0, "{json}");
    let periods = &json[json.find("\"stall_periods_ms\"").expect("periods")..];
    let periods = &periods[..periods.find(']').expect("array end")];
    assert_eq!(periods.matches("\"connections\":10").count(), 2, "{json}");
    assert_eq!(json_number(&json, "disconnects"), 0.0);
}
