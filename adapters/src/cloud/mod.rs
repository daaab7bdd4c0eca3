//! Rental-cloud price and instance clients (Vast.ai, RunPod, Lambda).
//!
//! Each client reads two things from its provider: the current price offers ([`PriceOffer`], one per
//! rentable configuration) and the instances the account is running ([`RentalInstance`], to be recorded
//! as rental devices). The clients only read; they never rent or stop anything. Base URLs are
//! configurable (tests point them at a stub on 127.0.0.1), API keys come from the environment or the
//! config and never appear in logs or errors, and every failure is a typed [`CloudError`].
//! [`PriceCache`] keeps quotes for an hour so `hwledger prices` does not hammer the APIs, and
//! [`PriceCacheFile`] keeps it on disk between CLI runs.
//!
//! Shared rules of the parsers: an entry whose price is missing, null, zero or not a number, or whose
//! GPU is unknown, is skipped (logged at debug level) — never turned into a price of 0 or a made-up
//! GPU. A body that is not the documented shape as a whole is an error.

mod cache;
mod cache_file;
mod error;
mod http;
mod json;
mod lambda;
mod runpod;
mod vast;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use cache::{CachedQuotes, CheapestOffer, DEFAULT_PRICE_TTL, PriceCache, cheapest_per_gpu_type};
pub use cache_file::{PRICE_CACHE_FILE_VERSION, PriceCacheFile, PriceCacheSaveError};
pub use error::CloudError;
pub use http::{
    ApiKey, ClientOptions, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_RETRY_WAIT, DEFAULT_TIMEOUT, parse_retry_after,
};
pub use lambda::LambdaClient;
pub use runpod::RunPodClient;
pub use vast::VastClient;

/// A GPU rental provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Vast.ai marketplace.
    Vast,
    /// RunPod (secure and community cloud).
    RunPod,
    /// Lambda on-demand cloud.
    Lambda,
}

impl Provider {
    /// Every provider, in a fixed order.
    pub const ALL: [Provider; 3] = [Provider::Vast, Provider::RunPod, Provider::Lambda];

    /// The lower-case name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Vast => "vast",
            Provider::RunPod => "runpod",
            Provider::Lambda => "lambda",
        }
    }

    /// The environment variable holding this provider's API key.
    pub fn api_key_env(self) -> &'static str {
        match self {
            Provider::Vast => "VAST_API_KEY",
            Provider::RunPod => "RUNPOD_API_KEY",
            Provider::Lambda => "LAMBDA_API_KEY",
        }
    }

    /// The real API's base URL (API paths are appended to it).
    pub fn default_base_url(self) -> &'static str {
        match self {
            // The vastai CLI's default server.
            Provider::Vast => "https://console.vast.ai",
            Provider::RunPod => "https://api.runpod.io",
            Provider::Lambda => "https://cloud.lambda.ai",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider name that is not one of "vast", "runpod", "lambda".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cloud provider {name:?}; expected one of vast, runpod, lambda")]
pub struct UnknownProvider {
    /// What was given.
    pub name: String,
}

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownProvider { name: s.to_owned() })
    }
}

/// One rentable configuration at its current price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceOffer {
    /// Who offers it.
    pub provider: Provider,
    /// The provider's identifier of the offer (vast: offer id; RunPod: `<gpu type id>:<cloud>`;
    /// Lambda: `<instance type>@<region>`).
    pub offer_id: String,
    /// The GPU model as the provider names it (Lambda's memory size removed from the name).
    pub gpu_name: String,
    /// GPUs in the offer.
    pub gpu_count: u32,
    /// Memory of one GPU in MiB, when the provider states it (providers' "GB" taken as GiB).
    pub vram_mib: Option<u64>,
    /// Price of the whole offer (all its GPUs), USD per hour.
    pub price_per_hour_usd: f64,
    /// `price_per_hour_usd / gpu_count`.
    pub price_per_gpu_hour_usd: f64,
    /// Where the machine is (vast: geolocation; Lambda: region name), when known.
    pub region: Option<String>,
    /// Whether it can be rented now (vast: rentable and not rented; RunPod: offered on that cloud;
    /// Lambda: the region has capacity).
    pub available: bool,
}

/// An instance observed running (or starting, stopped…) on a provider account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RentalInstance {
    /// Where it runs.
    pub provider: Provider,
    /// The provider's instance / pod id.
    pub instance_id: String,
    /// The GPU model, if the listing states it.
    pub gpu_name: Option<String>,
    /// GPUs attached, if the listing states them.
    pub gpu_count: Option<u32>,
    /// The provider's own status word (vast `actual_status`, RunPod `desiredStatus`, Lambda
    /// `status`), verbatim, if it reports one.
    pub status: Option<String>,
    /// What it costs per hour, if reported.
    pub price_per_hour_usd: Option<f64>,
    /// Host to SSH to, if reported.
    pub ssh_host: Option<String>,
    /// Port to SSH to, if reported (Lambda does not report one; its instances use the standard port).
    pub ssh_port: Option<u16>,
}

/// Any of the three clients, for code that handles providers uniformly (the price cache, the CLI).
#[derive(Debug)]
pub enum CloudClient {
    /// A Vast.ai client.
    Vast(VastClient),
    /// A RunPod client.
    RunPod(RunPodClient),
    /// A Lambda client.
    Lambda(LambdaClient),
}

impl CloudClient {
    /// A client for `provider` with the given key and options.
    pub fn new(provider: Provider, key: ApiKey, options: ClientOptions) -> Result<Self, CloudError> {
        Ok(match provider {
            Provider::Vast => CloudClient::Vast(VastClient::new(key, options)?),
            Provider::RunPod => CloudClient::RunPod(RunPodClient::new(key, options)?),
            Provider::Lambda => CloudClient::Lambda(LambdaClient::new(key, options)?),
        })
    }

    /// A client for `provider` with its key from the environment.
    pub fn from_env(provider: Provider, options: ClientOptions) -> Result<Self, CloudError> {
        Self::new(provider, ApiKey::from_env(provider)?, options)
    }

    /// Which provider this client talks to.
    pub fn provider(&self) -> Provider {
        match self {
            CloudClient::Vast(_) => Provider::Vast,
            CloudClient::RunPod(_) => Provider::RunPod,
            CloudClient::Lambda(_) => Provider::Lambda,
        }
    }

    /// Current offers, optionally only for GPUs whose name contains `gpu_filter`.
    pub async fn offers(&self, gpu_filter: Option<&str>) -> Result<Vec<PriceOffer>, CloudError> {
        match self {
            CloudClient::Vast(c) => c.offers(gpu_filter).await,
            CloudClient::RunPod(c) => c.offers(gpu_filter).await,
            CloudClient::Lambda(c) => c.offers(gpu_filter).await,
        }
    }

    /// Instances on the account.
    pub async fn instances(&self) -> Result<Vec<RentalInstance>, CloudError> {
        match self {
            CloudClient::Vast(c) => c.instances().await,
            CloudClient::RunPod(c) => c.instances().await,
            CloudClient::Lambda(c) => c.instances().await,
        }
    }
}

/// The key under which GPU names from different providers are compared: lower case, `_` and runs of
/// whitespace as one space, vendor words ("nvidia", "geforce", "amd") dropped. "NVIDIA GeForce RTX 3090",
/// "RTX_3090" and "RTX 3090" all become "rtx 3090".
pub fn gpu_type_key(name: &str) -> String {
    name.replace('_', " ")
        .split_whitespace()
        .map(str::to_lowercase)
        .filter(|word| !matches!(word.as_str(), "nvidia" | "geforce" | "amd"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `gpu_name` passes the user's filter: the filter's [`gpu_type_key`] is contained in the
/// name's ("3090" matches "RTX 3090" and "RTX 3090 Ti"). No filter, or an empty one, passes all.
pub(crate) fn matches_filter(gpu_name: &str, filter: Option<&str>) -> bool {
    match filter.map(gpu_type_key) {
        None => true,
        Some(wanted) if wanted.is_empty() => true,
        Some(wanted) => gpu_type_key(gpu_name).contains(&wanted),
    }
}

/// The GPU side of an offer, as a parser extracted it.
#[derive(Debug, Clone)]
pub(crate) struct GpuSpec {
    pub(crate) name: String,
    pub(crate) count: u32,
    pub(crate) vram_mib: Option<u64>,
}

/// Builds an offer from a whole-offer price, or `None` if the price or count cannot make one (a
/// non-positive or non-finite price is "no price", not a free GPU).
pub(crate) fn make_offer(
    provider: Provider,
    offer_id: String,
    gpu: GpuSpec,
    price_per_hour_usd: f64,
    region: Option<String>,
    available: bool,
) -> Option<PriceOffer> {
    if gpu.count == 0 || !price_per_hour_usd.is_finite() || price_per_hour_usd <= 0.0 {
        return None;
    }
    Some(PriceOffer {
        provider,
        offer_id,
        gpu_name: gpu.name,
        gpu_count: gpu.count,
        vram_mib: gpu.vram_mib,
        price_per_hour_usd,
        price_per_gpu_hour_usd: price_per_hour_usd / f64::from(gpu.count),
        region,
        available,
    })
}
