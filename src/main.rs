//! `hwledger`: the one binary. Parses the command line, sets up logging, dispatches to a subcommand in
//! `cmd/`, and maps the result to a documented exit code. No logic of its own lives here.
//!
//! Exit codes: 0 success; 1 a check failed (`verify` found a break, a command was rejected, a server refused
//! the request); 2 usage, configuration or I/O error.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: decoding events, the projections and the HTTP/TLS stack allocate and
/// free many small objects across threads, where glibc's arenas cost W2 and W5 a tenth of their time
/// (`hwledger bench`; see the README's benchmark table).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("HWLEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if cli.global.verbose { "debug" } else { "info" }));
    // Colour only on a terminal: under systemd or a pipe the escape codes would end up in the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
    let result = cmd::run(cli);
    if std::env::var_os("HWLEDGER_REPORT_PEAK_RSS").is_some() {
        // For `bench` W6: this process's peak resident set, from the kernel's own accounting.
        if let Some(line) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        {
            eprintln!("peak_rss_kb {}", line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim());
        }
    }
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            // A refusal (rejected command, changed host key, job not completed, a server's 4xx) is a failed
            // check: exit 1.
            cmd::exit_code(&err)
        }
    }
}
