//! `hwledger suggest --vram MB [--hours H]`, `hwledger prices [--gpu NAME]` and `hwledger rentals sync`:
//! where a job could run and what it would cost, the rental market, and the rentals on the accounts.
//!
//! Prices come from the configured providers (`[clouds.<name>]` or their key variables) through the
//! one-hour price cache kept in `<data>/cache/prices.json`, so repeated calls within the hour make no
//! request. A provider that fails is reported (stderr, and `errors` in `--json`) and the others are
//! still shown; the exit code is 2 only when providers were configured and none answered.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use clap::{Args, Subcommand};
use hwledger_adapters::cloud::{Provider, cheapest_per_gpu_type, gpu_type_key};
use hwledger_adapters::fleet::price::format_usd;
use hwledger_adapters::fleet::rentals::instance_submissions;
use hwledger_adapters::fleet::suggest::{Need, Suggestion, suggest};

use super::fleet::{
    ProviderError, ServerArgs, Submitted, Target, cloud_client, configured_providers, fetch_offers, hours_ms,
    load_price_cache, runtime, save_price_cache,
};
use super::ledger_tools::now_ms;
use super::{Config, Global};

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// VRAM the job needs on one GPU, MiB.
    #[arg(long)]
    pub vram: u64,
    /// Hours the job would run (for the cost column).
    #[arg(long, default_value_t = 1.0)]
    pub hours: f64,
    /// Only rental offers of this GPU type (e.g. "RTX 3090").
    #[arg(long)]
    pub gpu: Option<String>,
    /// Rental offers listed at most.
    #[arg(long, default_value_t = 5)]
    pub offers: usize,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct PricesArgs {
    /// Only this GPU type (e.g. "RTX 3090", "h100").
    #[arg(long)]
    pub gpu: Option<String>,
    /// Ask the providers now instead of using quotes cached in the last hour.
    #[arg(long)]
    pub refresh: bool,
}

#[derive(Debug, Args)]
pub struct RentalsArgs {
    #[command(subcommand)]
    pub action: RentalsAction,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum RentalsAction {
    /// Record the instances running on the providers' accounts as rental devices.
    Sync {
        /// Only this provider (vast, runpod, lambda).
        #[arg(long)]
        provider: Option<Provider>,
    },
}

fn report_errors(errors: &[ProviderError]) {
    for e in errors {
        eprintln!("warning: {}: {} ({})", e.provider, e.message, e.code);
    }
}

/// 2 when every configured provider failed, else 0.
fn exit_for(providers: usize, errors: &[ProviderError]) -> ExitCode {
    if providers > 0 && errors.len() == providers { ExitCode::from(2) } else { ExitCode::SUCCESS }
}

pub fn suggest_cmd(config: &Config, global: &Global, args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let duration_ms = hours_ms(args.hours)?;
    let target = Target::resolve(config, &args.server)?;
    let fleet = target.fleet()?;
    let rt = runtime()?;
    let now = Instant::now();
    let wall = now_ms();
    let mut cache = load_price_cache(config, now, wall);
    let (offers, errors) = rt.block_on(fetch_offers(config, &mut cache, args.gpu.as_deref(), now, false));
    save_price_cache(&cache, now, wall);
    report_errors(&errors);
    let need = Need { vram_mib: args.vram, duration_ms, max_offers: args.offers };
    let ranked = suggest(&fleet.devices, &fleet.loads, &offers, need);
    if global.json {
        let value = serde_json::json!({
            "vram_mib": args.vram, "hours": args.hours, "suggestions": ranked, "errors": errors,
        });
        println!("{value}");
    } else if ranked.is_empty() {
        println!("nothing has a GPU with {} MiB free", args.vram);
    } else {
        println!(
            "{:<7} {:<34} {:<24} {:>9} {:>12} {:>14}",
            "KIND",
            "WHERE",
            "GPU",
            "VRAM MiB",
            "$/h",
            format!("$ for {} h", args.hours)
        );
        for s in &ranked {
            match s {
                Suggestion::Device(d) => println!(
                    "{:<7} {:<34} {:<24} {:>9} {:>12} {:>14}",
                    "device",
                    format!("{} ({})", d.device_id, d.backend),
                    format!("{} {}", d.gpu_index, d.gpu_name),
                    format!("{} free", d.free_vram_mib),
                    d.micro_usd_per_hour.map_or("no rate".into(), format_usd),
                    d.cost_micro_usd.map_or("-".into(), format_usd),
                ),
                Suggestion::Offer(o) => println!(
                    "{:<7} {:<34} {:<24} {:>9} {:>12} {:>14}",
                    "rental",
                    format!("{} {}", o.offer.provider, o.offer.offer_id),
                    format!("{}x {}", o.offer.gpu_count, o.offer.gpu_name),
                    o.offer.vram_mib.map_or("?".into(), |v| v.to_string()),
                    format_usd(o.micro_usd_per_hour),
                    format_usd(o.cost_micro_usd),
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn prices(config: &Config, global: &Global, args: PricesArgs) -> anyhow::Result<ExitCode> {
    let providers = configured_providers(config);
    if providers.is_empty() {
        bail!(
            "no rental provider configured: add [clouds.vast|runpod|lambda] or set VAST_API_KEY, RUNPOD_API_KEY or LAMBDA_API_KEY"
        );
    }
    let rt = runtime()?;
    let now = Instant::now();
    let wall = now_ms();
    let mut cache = load_price_cache(config, now, wall);
    let filter = args.gpu.as_deref();
    let (offers, errors) = rt.block_on(fetch_offers(config, &mut cache, filter, now, args.refresh));
    save_price_cache(&cache, now, wall);
    report_errors(&errors);
    let wanted = filter.map(gpu_type_key).unwrap_or_default();
    let cheapest: Vec<_> =
        cheapest_per_gpu_type(&offers).into_iter().filter(|c| c.gpu_type.contains(wanted.as_str())).collect();
    let quoted_at =
        |p: Provider| cache.cache.age(p, filter, now).map(|a| wall - i64::try_from(a.as_millis()).unwrap_or(0));
    if global.json {
        let rows: Vec<serde_json::Value> = cheapest
            .iter()
            .map(|c| {
                serde_json::json!({
                    "gpu_type": c.gpu_type, "provider": c.offer.provider,
                    "usd_per_gpu_hour": c.offer.price_per_gpu_hour_usd, "usd_per_hour": c.offer.price_per_hour_usd,
                    "gpu_count": c.offer.gpu_count, "vram_mib": c.offer.vram_mib, "offer_id": c.offer.offer_id,
                    "region": c.offer.region, "quoted_at": quoted_at(c.offer.provider),
                })
            })
            .collect();
        println!("{}", serde_json::json!({"cheapest": rows, "errors": errors, "cache": config.price_cache_path()}));
    } else {
        println!(
            "{:<24} {:<8} {:>10} {:>10} {:>5} {:>9}  OFFER",
            "GPU", "PROVIDER", "$/GPU-h", "$/h", "GPUS", "VRAM MiB"
        );
        for c in &cheapest {
            println!(
                "{:<24} {:<8} {:>10.4} {:>10.4} {:>5} {:>9}  {}",
                c.gpu_type,
                c.offer.provider,
                c.offer.price_per_gpu_hour_usd,
                c.offer.price_per_hour_usd,
                c.offer.gpu_count,
                c.offer.vram_mib.map_or("?".into(), |v| v.to_string()),
                c.offer.offer_id
            );
        }
        for p in &providers {
            if let Some(age) = cache.cache.age(*p, filter, now) {
                eprintln!("{p}: quoted {} s ago (cache {})", age.as_secs(), config.price_cache_path().display());
            }
        }
    }
    Ok(exit_for(providers.len(), &errors))
}

pub fn rentals(config: &Config, global: &Global, args: RentalsArgs) -> anyhow::Result<ExitCode> {
    let RentalsAction::Sync { provider } = args.action;
    let providers: Vec<Provider> = match provider {
        Some(p) => vec![p],
        None => configured_providers(config),
    };
    if providers.is_empty() {
        bail!("no rental provider configured");
    }
    let target = Target::resolve(config, &args.server)?;
    let fleet = target.fleet()?;
    let rt = runtime()?;
    let mut errors = Vec::new();
    let mut instances = Vec::new();
    for p in &providers {
        let result = match cloud_client(config, *p) {
            Ok(client) => rt.block_on(client.instances()),
            Err(e) => Err(e),
        };
        match result {
            Ok(mut i) => instances.append(&mut i),
            Err(e) => errors.push(ProviderError { provider: *p, code: e.code(), message: e.to_string() }),
        }
    }
    report_errors(&errors);
    let at = now_ms();
    let mut subs = Vec::new();
    let mut spans = Vec::new();
    for instance in &instances {
        let known_id = hwledger_adapters::fleet::rentals::device_id(instance);
        let known = known_id.as_deref().and_then(|id| fleet.device(id));
        match instance_submissions(instance, known, at) {
            Some((device_id, s)) => {
                spans.push((device_id, s.len()));
                subs.extend(s);
            }
            None => eprintln!(
                "warning: {} instance {:?} makes no valid device id; skipped",
                instance.provider, instance.instance_id
            ),
        }
    }
    let mut recorded = target.submit(subs, at)?.into_iter();
    let mut rejected = false;
    for (device_id, n) in spans {
        let results: Vec<Submitted> = recorded.by_ref().take(n).collect();
        rejected |= results.iter().any(|r| !r.recorded());
        if global.json {
            println!("{}", serde_json::json!({"device_id": device_id, "recorded": results}));
        } else {
            println!(
                "{device_id}: {}",
                results.iter().map(|r| format!("{} {}", r.command, r.status)).collect::<Vec<_>>().join(", ")
            );
        }
    }
    if rejected {
        return Ok(ExitCode::from(1));
    }
    Ok(exit_for(providers.len(), &errors))
}
