use std::process::ExitCode;

use clap::Parser;
use iptproxy::cli::DaemonCli;

fn main() -> ExitCode {
    let _cli = DaemonCli::parse();
    eprintln!("iptproxyd: the daemon is not built yet; use `iptproxy apply`");
    ExitCode::from(1)
}
