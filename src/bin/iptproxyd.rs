use std::process::ExitCode;

use clap::Parser;
use iptproxy::cli::DaemonCli;
use iptproxy::daemon::{self, Options};

fn main() -> ExitCode {
    let cli = DaemonCli::parse();
    // A daemon's log is its only voice: info by default, -v for debug.
    iptproxy::logging::init(if cli.global.verbose == 0 { "info" } else { "debug" });
    let options =
        Options { config_dir: cli.global.config_dir, state_file: cli.global.state_file, backend: cli.global.backend };
    match daemon::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
