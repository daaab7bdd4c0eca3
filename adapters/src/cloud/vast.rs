//! Vast.ai client: offers from `GET /api/v0/bundles/?q=<json query>` (`{"offers": [...]}`) and the
//! account's instances from `GET /api/v0/instances/` (`{"instances": [...]}`), Bearer authentication.
//!
//! An offer is a bundle of `num_gpus` GPUs on one machine; `dph_total` is its price in USD per hour for
//! the whole bundle (GPUs plus the default disk), `gpu_ram` the memory of one GPU in MiB.

use serde_json::{Value, json};

use super::http::HttpCore;
use super::json::{bool_of, f64_of, id_of, str_of, u32_of, u64_of};
use super::{
    ApiKey, ClientOptions, CloudError, GpuSpec, PriceOffer, Provider, RentalInstance, make_offer, matches_filter,
};

/// How many offers one search asks for. Vast returns the cheapest first (we ask for that order);
/// 256 covers the useful end of the market for one GPU model without megabyte answers.
const OFFER_LIMIT: u32 = 256;

/// A Vast.ai API client.
#[derive(Debug)]
pub struct VastClient {
    core: HttpCore,
}

impl VastClient {
    /// A client with the given key and options.
    pub fn new(key: ApiKey, options: ClientOptions) -> Result<Self, CloudError> {
        Ok(VastClient { core: HttpCore::new(Provider::Vast, key, options)? })
    }

    /// A client with the key from `VAST_API_KEY`.
    pub fn from_env(options: ClientOptions) -> Result<Self, CloudError> {
        Self::new(ApiKey::from_env(Provider::Vast)?, options)
    }

    /// On-demand offers that are rentable, verified and not external, cheapest first. With a filter,
    /// vast is asked for that exact GPU name (`_` read as space, as the vastai CLI does, e.g. "RTX_3090")
    /// and the answer is filtered again locally with the usual substring rule.
    pub async fn offers(&self, gpu_filter: Option<&str>) -> Result<Vec<PriceOffer>, CloudError> {
        let mut query = json!({
            "rentable": {"eq": true},
            "verified": {"eq": true},
            "external": {"eq": false},
            "type": "on-demand",
            "order": [["dph_total", "asc"]],
            "limit": OFFER_LIMIT,
        });
        if let Some(filter) = gpu_filter.map(str::trim).filter(|f| !f.is_empty())
            && let Some(object) = query.as_object_mut()
        {
            object.insert("gpu_name".to_owned(), json!({"eq": filter.replace('_', " ")}));
        }
        let q = query.to_string();
        let body = self.core.get_json("/api/v0/bundles/", &[("q", q.as_str())]).await?;
        let offers = parse_offers(&self.core, &body)?;
        Ok(offers.into_iter().filter(|o| matches_filter(&o.gpu_name, gpu_filter)).collect())
    }

    /// The account's instances.
    pub async fn instances(&self) -> Result<Vec<RentalInstance>, CloudError> {
        let body = self.core.get_json("/api/v0/instances/", &[]).await?;
        parse_instances(&self.core, &body)
    }
}

/// The entries of `{"<member>": [...]}`, or the document itself if it is a bare array (what
/// `vastai ... --raw` prints).
fn entries<'a>(core: &HttpCore, body: &'a Value, member: &str) -> Result<&'a [Value], CloudError> {
    match body {
        Value::Array(items) => Ok(items),
        Value::Object(object) => match object.get(member) {
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(core.malformed(&format!("`{member}` is not an array"))),
            None => Err(vast_failure(core, body, member)),
        },
        _ => Err(core.malformed(&format!("expected an object with `{member}`"))),
    }
}

/// Vast reports some failures as 200 with `{"success": false, "msg": ...}`; anything else lacking the
/// expected member is a shape error.
fn vast_failure(core: &HttpCore, body: &Value, member: &str) -> CloudError {
    let message = str_of(body.get("msg")).or_else(|| str_of(body.get("error")));
    match (bool_of(body.get("success")), message) {
        (Some(false), Some(message)) => core.provider_error(&message),
        _ => core.malformed(&format!("expected an object with an array `{member}`")),
    }
}

fn parse_offers(core: &HttpCore, body: &Value) -> Result<Vec<PriceOffer>, CloudError> {
    let items = entries(core, body, "offers")?;
    let mut offers = Vec::with_capacity(items.len());
    for item in items {
        match parse_offer(item) {
            Some(offer) => offers.push(offer),
            None => tracing::debug!(
                provider = "vast",
                id = ?item.get("id"),
                "skipping offer without id, GPU name, GPU count or price"
            ),
        }
    }
    Ok(offers)
}

fn parse_offer(item: &Value) -> Option<PriceOffer> {
    let offer_id = id_of(item.get("id")).or_else(|| id_of(item.get("ask_contract_id")))?;
    let gpu = GpuSpec {
        name: str_of(item.get("gpu_name"))?,
        count: u32_of(item.get("num_gpus"))?,
        vram_mib: u64_of(item.get("gpu_ram")).filter(|&mib| mib > 0),
    };
    let price = f64_of(item.get("dph_total"))?;
    let available = bool_of(item.get("rentable")) == Some(true) && bool_of(item.get("rented")) != Some(true);
    make_offer(Provider::Vast, offer_id, gpu, price, str_of(item.get("geolocation")), available)
}

fn parse_instances(core: &HttpCore, body: &Value) -> Result<Vec<RentalInstance>, CloudError> {
    let items = entries(core, body, "instances")?;
    let mut instances = Vec::with_capacity(items.len());
    for item in items {
        let Some(instance_id) = id_of(item.get("id")) else {
            tracing::debug!(provider = "vast", "skipping instance without id");
            continue;
        };
        instances.push(RentalInstance {
            provider: Provider::Vast,
            instance_id,
            gpu_name: str_of(item.get("gpu_name")),
            gpu_count: u32_of(item.get("num_gpus")),
            status: str_of(item.get("actual_status")).or_else(|| str_of(item.get("cur_state"))),
            price_per_hour_usd: f64_of(item.get("dph_total")).filter(|p| *p > 0.0),
            ssh_host: str_of(item.get("ssh_host")),
            ssh_port: u64_of(item.get("ssh_port")).and_then(|p| u16::try_from(p).ok()),
        });
    }
    Ok(instances)
}
