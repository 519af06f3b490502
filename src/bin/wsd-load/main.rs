//! wsd-load: many WebSocket clients on a few mio loops, for benchmarks and drain tests.
//!
//! Layout: [`cli`] parses the command line; [`worker`] runs one mio loop per thread over its
//! share of the connections, each a [`client::Client`] speaking through `wsd::protocol` in the
//! client role; [`payload`] stamps and checks pubsub publications, and [`api`] speaks wsd's
//! HTTP publish API; [`stall`] measures each connection's longest gap between messages and
//! paces `--interval`; [`report`] merges the counts and prints them; [`sys`] holds the OS calls
//! std lacks. This file wires them: it starts the workers, drives the phases (all connected → go →
//! done → teardown), prints the progress line and samples CPU time around the measured window.
#![cfg_attr(test, deny(warnings))]

mod api;
mod cli;
mod client;
mod payload;
mod report;
mod stall;
mod sys;
mod tls;
mod worker;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli::{Command, Mode, Options};
use report::{Cpu, Report, Stats};
use worker::{Shared, Worker};

/// Exit status when a check failed (a wrong or missing echo or delivery, a failed connect, …).
const EXIT_FAILED: u8 = 1;
/// Exit status for an unusable command line.
const EXIT_USAGE: u8 = 2;
/// Descriptors wsd-load needs besides its connections (stdio, epoll, signal pipe, …).
const FD_RESERVE: u64 = 32;
/// Interval of the progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Longest the main thread sleeps between looks at the workers (they also wake it).
const MAIN_TICK: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let opts = match cli::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(o)) => Arc::new(*o),
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wsd-load: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let fd_limit = sys::raise_fd_limit();
    let sockets = opts.connections + opts.ws_publishers() + opts.publishers;
    if fd_limit > 0 && (sockets as u64) + FD_RESERVE > fd_limit {
        eprintln!(
            "wsd-load: warning: {sockets} connections need more than the open-file limit of {fd_limit}"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("wsd-load: cannot handle signal {sig}: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    // SIGUSR1 starts a new stall period (its default action would end the process).
    let mark = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&mark)) {
        eprintln!("wsd-load: cannot handle SIGUSR1: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    let shared = Arc::new(Shared::new(stop, &opts));
    let mut handles = Vec::with_capacity(opts.threads);
    for t in 0..opts.threads {
        let worker = match Worker::new(Arc::clone(&opts), Arc::clone(&shared), t) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("wsd-load: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        };
        let spawned = std::thread::Builder::new()
            .name(format!("wsd-load-{t}"))
            .spawn(move || worker.run());
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("wsd-load: cannot start a thread: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
    let (cpu, held, mut progress) = drive(&opts, &shared, &mark);
    let mut stats = Stats::default();
    for h in handles {
        match h.join() {
            Ok(s) => stats.merge(&s),
            Err(_) => {
                eprintln!("wsd-load: a worker thread panicked");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
    progress.line(&shared, true);
    let report = Report {
        opts: &opts,
        stats,
        cpu,
        held,
    };
    let text = if opts.json {
        report.json() + "\n"
    } else {
        report.table()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Runs the phases from the main thread; returns the CPU used in the measured window, how long
/// connections were held, and the progress line for its last word once the workers are done.
fn drive(opts: &Options, shared: &Shared, mark: &AtomicBool) -> (Cpu, Duration, Progress) {
    let threads = opts.threads;
    let mut progress = Progress::new(opts);
    let mut cpu = Cpu::default();
    let mut held = Duration::ZERO;
    // Phase 1: every worker has finished connecting.
    while shared.ready.load(Ordering::Acquire) < threads {
        progress.tick(shared);
        std::thread::park_timeout(MAIN_TICK);
    }
    let opened = shared.opened.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    progress.line(shared, true);
    // Scripts wait for this line (idle and drain keep holding after it).
    if failed == 0 {
        eprintln!("established {opened}");
    } else {
        eprintln!("established {opened} ({failed} failed)");
    }
    match opts.mode {
        Mode::Echo | Mode::Pubsub => {
            let client0 = sys::own_cpu();
            let server0 = servers_cpu(&opts.server_pids);
            // Marks sent while connecting count from here: period 0 is the first of the run.
            mark.store(false, Ordering::Relaxed);
            shared.go.store(true, Ordering::Release);
            while shared.done.load(Ordering::Acquire) < threads {
                if mark.swap(false, Ordering::Relaxed) {
                    let period = shared.period.fetch_add(1, Ordering::AcqRel) + 1;
                    if !opts.quiet {
                        eprintln!("period {period} begins");
                    }
                }
                progress.tick(shared);
                std::thread::park_timeout(MAIN_TICK);
            }
            cpu.client = sys::own_cpu().saturating_sub(client0);
            let server1 = servers_cpu(&opts.server_pids);
            cpu.per_pid = server0
                .iter()
                .zip(&server1)
                .map(|(&(pid, a), &(_, b))| (pid, a.zip(b).map(|(a, b)| b.saturating_sub(a))))
                .collect();
            cpu.server = cpu.total_server();
            shared.teardown.store(true, Ordering::Release);
        }
        Mode::Idle => {
            let start = Instant::now();
            while !shared.stop.load(Ordering::Relaxed)
                && !opts.hold.is_some_and(|h| start.elapsed() >= h)
            {
                progress.tick(shared);
                std::thread::park_timeout(MAIN_TICK);
            }
            held = start.elapsed();
            shared.teardown.store(true, Ordering::Release);
        }
        Mode::Drain => {
            let start = Instant::now();
            while shared.finished.load(Ordering::Acquire) < threads {
                progress.tick(shared);
                std::thread::park_timeout(MAIN_TICK);
            }
            held = start.elapsed();
        }
    }
    (cpu, held, progress)
}

/// Each process's CPU time so far (None: it is gone, or /proc is unreadable).
fn servers_cpu(pids: &[u32]) -> Vec<(u32, Option<Duration>)> {
    pids.iter()
        .map(|&p| (p, sys::process_cpu(p).ok()))
        .collect()
}

/// The once-a-second line on stderr (rewritten in place on a terminal).
struct Progress {
    enabled: bool,
    tty: bool,
    start: Instant,
    last: Instant,
    last_messages: u64,
    last_publications: u64,
    mode: Mode,
}

impl Progress {
    fn new(opts: &Options) -> Progress {
        let now = Instant::now();
        Progress {
            enabled: !opts.quiet,
            tty: std::io::stderr().is_terminal(),
            start: now,
            last: now,
            last_messages: 0,
            last_publications: 0,
            mode: opts.mode,
        }
    }

    fn tick(&mut self, shared: &Shared) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.line(shared, false);
        }
    }

    fn line(&mut self, shared: &Shared, last: bool) {
        let now = Instant::now();
        let messages = shared.messages.load(Ordering::Relaxed);
        let publications = shared.publications.load(Ordering::Relaxed);
        let dt = now.duration_since(self.last).as_secs_f64();
        let per_s = |n: u64, last: u64| {
            if dt > 0.0 {
                (n - last) as f64 / dt
            } else {
                0.0
            }
        };
        let rate = per_s(messages, self.last_messages);
        let pub_rate = per_s(publications, self.last_publications);
        self.last = now;
        self.last_messages = messages;
        self.last_publications = publications;
        if !self.enabled {
            return;
        }
        let mut text = format!(
            "[{:>5.1}s] open {} failed {}",
            self.start.elapsed().as_secs_f64(),
            shared.opened.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
        );
        match self.mode {
            Mode::Echo => text += &format!(" messages {messages} ({rate:.0}/s)"),
            Mode::Pubsub => {
                text += &format!(
                    " publications {publications} ({pub_rate:.0}/s) deliveries {messages} \
                     ({rate:.0}/s)"
                )
            }
            _ => {
                text += &format!(
                    " closes {} ended {}",
                    shared.closes.load(Ordering::Relaxed),
                    shared.ended.load(Ordering::Relaxed)
                )
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{text}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{text}")
        };
    }
}
