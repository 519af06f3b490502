//! Running under systemd, against the real binary: sd_notify, socket activation, journald
//! logs, the open-file limit, and the config file.

mod common;

use common::{
    activated_command, connect, frame, raw_upgraded, read_until_close, sees_eof, wsd_command,
    NotifySocket, Wsd, WAIT,
};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The lines of a notification, each `KEY=value`.
fn lines(m: &str) -> Vec<&str> {
    m.lines().collect()
}

#[test]
fn notify_sequence_from_ready_to_drain() {
    let notify = NotifySocket::abstract_name("sequence");
    let mut wsd = Wsd::start_with(
        &["--close-timeout", "2500ms"],
        &[("NOTIFY_SOCKET", &notify.name)],
    );
    // READY=1 comes first, and once it is there the port accepts.
    let ready = notify.recv().expect("READY=1");
    assert_eq!(lines(&ready), ["READY=1", "STATUS=serving 0 connections"]);
    let mut answering = connect(&wsd);
    let mut silent = raw_upgraded(&wsd);
    answering.send(Message::text("up")).unwrap();
    assert_eq!(answering.read().unwrap(), Message::text("up"));
    // The status follows the count, throttled: intermediate counts may be skipped.
    let statuses = notify.recv_until(|m| m == "STATUS=serving 2 connections");
    assert!(
        statuses.iter().all(|m| m.starts_with("STATUS=serving ")),
        "{statuses:?}"
    );

    wsd.signal(libc::SIGTERM);
    let stopping = notify.recv_until(|m| m.starts_with("STOPPING=1"));
    let stopping = lines(stopping.last().unwrap());
    assert_eq!(stopping[..2], ["STOPPING=1", "STATUS=draining: 2 left"]);
    // The extension covers drain_spread (0) + close_timeout (2.5 s) + the 5 s margin.
    assert_eq!(stopping[2], "EXTEND_TIMEOUT_USEC=7500000");

    // One client answers its Close at once; the other never does, so the drain lasts the whole
    // close_timeout and reports its progress on the way.
    assert!(matches!(answering.read(), Ok(Message::Close(_))));
    let _ = answering.flush();
    assert_eq!(read_until_close(&mut silent), Some(1001));
    let progress = notify.recv().expect("draining status");
    let progress = lines(&progress);
    assert_eq!(progress[0], "STATUS=draining: 1 left");
    let extend: u64 = progress[1]
        .strip_prefix("EXTEND_TIMEOUT_USEC=")
        .and_then(|v| v.parse().ok())
        .expect("EXTEND_TIMEOUT_USEC");
    assert!(extend < 7_500_000 && extend > 5_000_000, "{extend}");
    assert!(wsd.wait_exit().success());
    assert!(sees_eof(&mut silent));
    assert_eq!(notify.recv_within(Duration::from_millis(200)), None);
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let notify = NotifySocket::path("watchdog");
    let wsd = Wsd::start_with(
        &[],
        &[("NOTIFY_SOCKET", &notify.name), ("WATCHDOG_USEC", "300000")],
    );
    assert!(notify.recv().unwrap().starts_with("READY=1"));
    let first = Instant::now();
    for _ in 0..4 {
        assert_eq!(notify.recv().as_deref(), Some("WATCHDOG=1"));
    }
    // Four pings 150 ms apart: about 600 ms, certainly not 4 × 300 ms.
    let took = first.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(1100), "{took:?}");
    drop(wsd);
}

#[test]
fn nothing_is_sent_and_nothing_fails_without_a_notify_socket() {
    let mut wsd = Wsd::start_with(&[], &[("WATCHDOG_USEC", "100000")]);
    let mut ws = connect(&wsd);
    ws.send(Message::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hi"));
    wsd.signal(libc::SIGTERM);
    assert!(matches!(ws.read(), Ok(Message::Close(_))));
    let _ = ws.flush();
    assert!(wsd.wait_exit().success());
    assert!(!wsd.logs().iter().any(|l| l.contains("sd_notify")));
}

#[test]
fn socket_activation_serves_the_inherited_listeners() {
    let ws_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    // 192.0.2.1 (TEST-NET-1) is on no interface here: wsd would fail if it tried to bind.
    let cmd = activated_command(
        &[(&metrics_listener, "metrics"), (&ws_listener, "wsd")],
        &[
            "--listen",
            "192.0.2.1:9",
            "--metrics-listen",
            "192.0.2.1:10",
        ],
    );
    let mut wsd = Wsd::spawn(cmd);
    drop((ws_listener, metrics_listener)); // Only wsd holds them now.
    assert_eq!(wsd.addr, ws_addr);
    assert_eq!(wsd.metrics_addr(), metrics_addr);
    let mut clients: Vec<_> = (0..3).map(|_| connect(&wsd)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("hello {i}")));
    }
    let m = common::scrape(metrics_addr);
    assert_eq!(m["wsd_connections_open"], 3.0);
    assert!(wsd
        .logs()
        .iter()
        .any(|l| l.contains("socket activation: fd 4 (wsd)")));
    wsd.signal(libc::SIGTERM);
    for ws in clients.iter_mut() {
        assert!(matches!(ws.read(), Ok(Message::Close(_))));
        let _ = ws.flush();
    }
    assert!(wsd.wait_exit().success());
}

#[test]
fn socket_activation_with_a_single_unnamed_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = activated_command(&[(&listener, "")], &["--listen", "192.0.2.1:9"]);
    cmd.env_remove("LISTEN_FDNAMES");
    let wsd = Wsd::spawn(cmd);
    assert_eq!(wsd.addr, addr);
    let mut ws = connect(&wsd);
    ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![1, 2, 3]));
}

#[test]
fn journald_lines_carry_priorities_and_no_timestamp() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills the two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) just created both descriptors and nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: `stat` is plain old data; fstat(2) fills it for a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fds[1], &mut st) }, 0);
    let stream = format!("{}:{}", st.st_dev, st.st_ino);
    let mut cmd = wsd_command(&["--listen", "127.0.0.1:0"]);
    cmd.env("JOURNAL_STREAM", &stream)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(write_end));
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // Closes our copy of the write end.
    let mut reader = BufReader::new(std::fs::File::from(read_end));
    let mut line = String::new();
    let deadline = Instant::now() + WAIT;
    while !line.contains("listening on") && Instant::now() < deadline {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("<6>wsd"), "{line:?}");
    }
    assert!(
        line.starts_with("<6>wsd::server: listening on 127.0.0.1:"),
        "{line:?}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = reader.lines().map_while(Result::ok).collect();
    assert!(rest.iter().all(|l| l.starts_with('<')), "{rest:?}");
}

#[test]
fn max_connections_must_fit_the_open_file_limit() {
    use std::os::unix::process::CommandExt;
    let limited = |args: &[&str]| {
        let mut cmd = wsd_command(args);
        // SAFETY: setrlimit(2) is async-signal-safe; it only lowers this child's limits.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 100,
                    rlim_max: 300,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    };
    let out = limited(&["--listen", "127.0.0.1:0", "--max-connections", "1000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("max_connections 1000 needs 1064 open files") && err.contains("limit is 300"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
    // Raised from 100 to the hard limit, 300 holds 236 connections.
    let wsd = Wsd::spawn(limited(&[
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        "236",
    ]));
    assert!(wsd
        .logs()
        .iter()
        .any(|l| l.contains("open-file limit 300 (was 100, hard limit 300)")));
}

/// Writes `text` to a fresh config file and runs `wsd --check-config --config FILE`.
fn check_config(tag: &str, text: &str) -> (Option<i32>, String, String) {
    let path = std::env::temp_dir().join(format!("wsd-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    let out = wsd_command(&["--check-config", "--config", &p])
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        p,
    )
}

#[test]
fn the_shipped_config_file_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/wsd.toml");
    let out = wsd_command(&["--check-config", "--config", file])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "wsd: configuration is valid\n"
    );
}

#[test]
fn each_kind_of_bad_config_file_exits_78_naming_file_and_key() {
    let cases = [
        ("syntax", "close_timeout = \"5s\nlisten = 1\n", "line 1, column 20: invalid TOML: invalid basic string"),
        ("unknown", "max_conections = 10\n", "max_conections: unknown setting"),
        (
            "type",
            "max_connections = \"lots\"\n",
            "max_connections: wrong type: expected an integer (like 10000), found the string \"lots\"",
        ),
        (
            "value",
            "close_timeout = \"5\"\n",
            "close_timeout: \"5\" needs a unit: ms, s, m or h (like 250ms or 5s)",
        ),
        ("rule", "max_connections = 0\n", "max_connections: must be at least 1"),
    ];
    for (tag, text, message) in cases {
        let (code, err, path) = check_config(tag, text);
        assert_eq!(code, Some(78), "{tag}: {err}");
        assert_eq!(
            err.lines().next(),
            Some(format!("wsd: {path}: {message}").as_str()),
            "{tag}"
        );
    }
    let out = wsd_command(&["--config", "/nonexistent/wsd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    // Command-line mistakes keep the usage exit code.
    let out = wsd_command(&["--close-timeout", "5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn flags_override_the_config_file_at_run_time() {
    let path = std::env::temp_dir().join(format!("wsd-override-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "listen = \"192.0.2.1:9\"\nclose_reason = \"from the file\"\n",
    )
    .unwrap();
    let mut wsd = Wsd::start(&["--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let mut s = raw_upgraded(&wsd);
    wsd.signal(libc::SIGTERM);
    let mut head = [0u8; 2];
    std::io::Read::read_exact(&mut s, &mut head).unwrap();
    let mut payload = vec![0u8; usize::from(head[1])];
    std::io::Read::read_exact(&mut s, &mut payload).unwrap();
    assert_eq!(&payload[2..], b"from the file");
    s.write_all(&frame(true, 0x8, &1001u16.to_be_bytes()))
        .unwrap();
    assert!(wsd.wait_exit().success());
}

#[test]
fn socket_activation_through_systemd_socket_activate() {
    // Debian's systemd package has the tool (scripts/check-units.sh installs it).
    let tool = "/usr/bin/systemd-socket-activate";
    if !std::path::Path::new(tool).exists() {
        eprintln!("skipped: {tool} is not installed");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(tool);
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=wsd"])
        .args(["-E", "RUST_LOG=debug"])
        .arg(env!("CARGO_BIN_EXE_wsd"))
        .args(["--listen", "192.0.2.1:9"])
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The tool listens, then execs wsd (same pid) when the first connection comes.
    let mut wsd = Wsd::spawn_until(cmd, &format!("Listening on 127.0.0.1:{port} as 3."));
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/"), stream).unwrap();
    let line = wsd.wait_for_log("listening on ").unwrap();
    assert!(
        line.contains(&format!("listening on 127.0.0.1:{port} ")),
        "{line}"
    );
    assert!(wsd
        .logs()
        .iter()
        .any(|l| l.contains("socket activation: fd 3 (wsd)")));
    ws.send(Message::text("activated")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("activated"));
    wsd.signal(libc::SIGTERM);
    assert!(matches!(ws.read(), Ok(Message::Close(_))));
    let _ = ws.flush();
    assert!(wsd.wait_exit().success());
}
