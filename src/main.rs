//! `hwledger`: the one binary. Parses the command line, sets up logging, dispatches to a subcommand in
//! `cmd/`, and maps the result to a documented exit code. No logic of its own lives here.
//!
//! Exit codes: 0 success; 1 a check failed (`verify` found a break, a command was rejected); 2 usage,
//! configuration or I/O error.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("HWLEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if cli.global.verbose { "debug" } else { "info" }));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
