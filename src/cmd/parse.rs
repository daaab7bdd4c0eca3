//! `hwledger parse`: what a captured GPU tool output parses to, or the typed error — for operators debugging a
//! machine.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use hwledger_adapters::gpu::{GpuFormat, parse};

use super::Global;

#[derive(Debug, Args)]
pub struct ParseArgs {
    /// nvidia-smi-csv, nvidia-smi-xml, rocm-smi, amd-smi, system-profiler or tailscale.
    #[arg(long)]
    pub format: String,
    /// The captured output; `-` for standard input.
    pub file: PathBuf,
}

pub fn run(global: &Global, args: ParseArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("read standard input")?;
        s
    } else {
        let bytes = std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", args.file.display()))?
    };
    let (value, error) = if args.format == "tailscale" {
        match hwledger_adapters::tailscale::parse_status(&text) {
            Ok(status) => (Some(serde_json::to_value(status)?), None),
            Err(e) => (None, Some((e.code(), e.to_string()))),
        }
    } else {
        let format: GpuFormat = args.format.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        match parse(format, &text) {
            Ok(samples) => (Some(serde_json::to_value(samples)?), None),
            Err(e) => (None, Some((e.code(), e.to_string()))),
        }
    };
    match (value, error) {
        (Some(v), _) => {
            if global.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        (None, Some((code, message))) => {
            if global.json {
                println!("{}", serde_json::json!({"code": code, "message": message}));
            } else {
                println!("error {code}: {message}");
            }
            Ok(ExitCode::from(1))
        }
        (None, None) => Ok(ExitCode::from(2)),
    }
}
