//! The `wsd` binary: command line → config → logger → server → exit code.

use std::process::ExitCode;

use wsd::config::{self, Command};
use wsd::server::{Exit, Server};

/// Exit code for a command line that cannot be used (as getopt-style tools do).
const EXIT_USAGE: u8 = 2;
/// Exit code when the server could not start or failed while running.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let config = match config::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("wsd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wsd: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match server.run(wsd::Echo) {
        Ok(Exit::Drained(_)) => ExitCode::SUCCESS,
        Ok(Exit::Aborted) => ExitCode::from(EXIT_FAILURE),
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
