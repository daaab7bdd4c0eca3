//! `hwledger serve`: open the store and serve until Ctrl-C.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::Config;

#[derive(Debug, Args)]
pub struct ServeArgs {}

pub fn run(config: &Config, _args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ledger = config.open_ledger()?;
    let head = ledger.head();
    tracing::info!(data = %config.data_dir.display(), seq = head.seq, "ledger open");
    eprintln!(
        "hwledger: ledger open in {} at seq {} (head {}); Ctrl-C to stop",
        config.data_dir.display(),
        head.seq,
        hwledger_engine::chain::to_hex(&head.hash)
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start runtime")?;
    rt.block_on(async { tokio::signal::ctrl_c().await }).context("wait for Ctrl-C")?;
    ledger.close().context("close ledger")?;
    eprintln!("hwledger: stopped cleanly at seq {}", ledger.head().seq);
    Ok(ExitCode::SUCCESS)
}
