//! Subcommands. Each is a thin call into the libraries plus rendering (human or `--json`).

mod agent;
mod bench;
mod bench_wire;
mod config;
mod discover;
mod dispatch;
pub mod fleet;
mod ledger_tools;
mod market;
mod parse;
mod pki;
mod probe;
mod reads;
mod serve;
pub mod target;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use config::Config;

/// The ledger of a small GPU fleet.
#[derive(Debug, Parser)]
#[command(name = "hwledger", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (TOML). Default: $HWLEDGER_CONFIG, else ~/.config/hwledger/config.toml if present.
    #[arg(long, global = true, env = "HWLEDGER_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Data directory (overrides the configuration file). Default: ~/.local/share/hwledger.
    #[arg(long, global = true, env = "HWLEDGER_DATA")]
    pub data: Option<std::path::PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Debug logging (or set HWLEDGER_LOG=debug).
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent on a device: heartbeats with GPU telemetry through an on-disk outbox
    /// (`agent --server URL --bundle DIR`), or `agent status` to show the outbox.
    Agent(agent::AgentArgs),
    /// Open the store and serve until Ctrl-C.
    Serve(serve::ServeArgs),
    /// Submit commands (JSON: one submission, an array, or one per line) to the data directory or `--server`.
    Submit(ledger_tools::SubmitArgs),
    /// List events.
    Log(ledger_tools::LogArgs),
    /// Verify a data directory or an export/bundle offline (exit 0 intact, 1 broken, 2 error).
    Verify(ledger_tools::VerifyArgs),
    /// Replay the whole log through the engine state.
    Replay(ledger_tools::ReplayArgs),
    /// Write a portable export (a bundle: events, latest signed checkpoint, verifier key).
    Export(ledger_tools::ExportArgs),
    /// Import an export into an empty data directory (verifies first).
    Import(ledger_tools::ImportArgs),
    /// Print the latest signed checkpoint (or sign one now).
    Checkpoint(ledger_tools::CheckpointArgs),
    /// Inclusion and consistency proofs.
    Proof(ledger_tools::ProofArgs),
    /// The fleet CA: init, status, rotate.
    Ca(pki::CaArgs),
    /// Certificates: `enroll operator|auditor|agent NAME --out DIR`, `enroll token DEVICE`, `enroll redeem`.
    Enroll(pki::EnrollArgs),
    /// Receipts: `receipt verify` checks offline that a receipt's event is in a signed checkpoint.
    Receipt(ledger_tools::ReceiptArgs),
    /// Run the standard benchmark workloads.
    Bench(bench::BenchArgs),
    /// List devices (registry projection).
    Devices(reads::ReadArgs),
    /// One device.
    Device(reads::ReadArgs),
    /// A device's GPU telemetry (`ID [--from T] [--to T] [--gpu N]`).
    Telemetry(reads::ReadArgs),
    /// Jobs and their cost.
    Jobs(reads::ReadArgs),
    /// Cost totals (`--window 24h|7d|30d --by device|backend|day`).
    Cost(reads::ReadArgs),
    /// The operator dashboard.
    Dashboard(reads::ReadArgs),
    /// Probe agentless GPU hosts over SSH and record what they report (`probe ssh user@host[:port] --key FILE`, `probe --all`).
    Probe(probe::ProbeArgs),
    /// Run a job on an agentless host over SSH exec, recording dispatch, start and end (`-- COMMAND…`).
    Dispatch(dispatch::DispatchArgs),
    /// Where a job needing `--vram MB` could run: enrolled devices with free VRAM and rental offers, cheapest first.
    Suggest(market::SuggestArgs),
    /// The cheapest current rental offer per GPU type (`--gpu NAME`), through the one-hour price cache.
    Prices(market::PricesArgs),
    /// Rental instances on the providers' accounts: `rentals sync` records them as rental devices.
    Rentals(market::RentalsArgs),
    /// Find machines not yet in the fleet: `discover tailscale [--enroll PEER...]`.
    Discover(discover::DiscoverArgs),
    /// Parse a captured GPU tool output (`--format nvidia-smi-csv|nvidia-smi-xml|rocm-smi|amd-smi|system-profiler|tailscale FILE|-`).
    Parse(parse::ParseArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.global)?;
    match cli.command {
        Command::Agent(a) => agent::run(&cli.global, a),
        Command::Serve(a) => serve::run(&config, &cli.global, a),
        Command::Submit(a) => ledger_tools::submit(&config, &cli.global, a),
        Command::Log(a) => ledger_tools::log(&config, &cli.global, a),
        Command::Verify(a) => ledger_tools::verify(&config, &cli.global, a),
        Command::Replay(a) => ledger_tools::replay(&config, &cli.global, a),
        Command::Export(a) => ledger_tools::export(&config, &cli.global, a),
        Command::Import(a) => ledger_tools::import(&config, &cli.global, a),
        Command::Checkpoint(a) => ledger_tools::checkpoint(&config, &cli.global, a),
        Command::Proof(a) => ledger_tools::proof(&config, &cli.global, a),
        Command::Bench(a) => bench::run(&cli.global, a),
        Command::Ca(a) => pki::ca(&config, &cli.global, a),
        Command::Enroll(a) => pki::enroll(&config, &cli.global, a),
        Command::Receipt(a) => ledger_tools::receipt(&cli.global, a),
        Command::Devices(a) => reads::run(&config, &cli.global, reads::Read::Devices, a),
        Command::Device(a) => reads::run(&config, &cli.global, reads::Read::Device, a),
        Command::Telemetry(a) => reads::run(&config, &cli.global, reads::Read::Telemetry, a),
        Command::Jobs(a) => reads::run(&config, &cli.global, reads::Read::Jobs, a),
        Command::Cost(a) => reads::run(&config, &cli.global, reads::Read::Cost, a),
        Command::Dashboard(a) => reads::run(&config, &cli.global, reads::Read::Dashboard, a),
        Command::Parse(a) => parse::run(&cli.global, a),
        Command::Probe(a) => probe::run(&config, &cli.global, a),
        Command::Dispatch(a) => dispatch::run(&config, &cli.global, a),
        Command::Suggest(a) => market::suggest_cmd(&config, &cli.global, a),
        Command::Prices(a) => market::prices(&config, &cli.global, a),
        Command::Rentals(a) => market::rentals(&config, &cli.global, a),
        Command::Discover(a) => discover::run(&config, &cli.global, a),
    }
}

/// The exit code of a failed command: 1 when a check failed or a server refused the request (a
/// [`fleet::CheckFailed`], or a 4xx answer: rejected, forbidden, not pinned, conflict), 2 for everything else
/// (usage, configuration, I/O, unreachable server).
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    let refused = err.chain().any(|e| {
        e.is::<fleet::CheckFailed>()
            || e.downcast_ref::<hwledger_wire::client::ClientError>()
                .and_then(hwledger_wire::client::ClientError::status)
                .is_some_and(|s| (400..500).contains(&s))
    });
    ExitCode::from(if refused { 1 } else { 2 })
}
