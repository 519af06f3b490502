//! The `wsd` binary: command line (and config file) → config → logger → open-file limit →
//! server → exit code.

use std::process::ExitCode;

use wsd::config::{self, Command, Mode};
use wsd::server::{Exit, Server};

/// Exit code when the server could not start or failed while running.
const EXIT_FAILURE: u8 = 1;
/// Exit code for a command line that cannot be used (as getopt-style tools do).
const EXIT_USAGE: u8 = 2;
/// Exit code for a configuration that cannot be used (sysexits.h `EX_CONFIG`): a bad config file,
/// or a `max_connections` the open-file limit cannot hold. `wsd.service` does not restart on it.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let config = match config::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Check(_)) => {
            println!("wsd: configuration is valid");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("wsd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) if e.file.is_some() => {
            eprintln!("wsd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("wsd: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    wsd::logging::init();

    if let Err(e) = wsd::rlimit::ensure(config.max_connections) {
        log::error!("{e}");
        return ExitCode::from(EXIT_CONFIG);
    }

    let config_mode = config.mode;
    let pubsub = wsd::PubSub::new(&config);
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let ran = match config_mode {
        Mode::Echo => server.run(wsd::Echo),
        Mode::PubSub => server.run(pubsub),
    };
    match ran {
        Ok(Exit::Drained(_)) => ExitCode::SUCCESS,
        Ok(Exit::Aborted) => ExitCode::from(EXIT_FAILURE),
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
