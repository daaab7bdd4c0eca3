//! Lambda client: `GET /api/v1/instance-types` (a map from instance type name to the type and the
//! regions that have capacity) and `GET /api/v1/instances`, both wrapped in `{"data": ...}`, with
//! Bearer authentication (Lambda's recommended scheme; it also accepts Basic).
//!
//! `price_cents_per_hour` is the price of the whole instance type in US cents. Lambda's current docs
//! state the GPU in `gpu_description` ("H100 (80 GB SXM5)") and the count in `specs.gpus`; older
//! documented answers have only `description` ("4x RTX 6000 (24 GB)") and send the price as a string,
//! so both are read. An instance type becomes one offer per region with capacity, or one unavailable
//! offer without a region when no region has capacity.

use serde_json::Value;

use super::http::HttpCore;
use super::json::{f64_of, gb_to_mib, id_of, str_of, u32_of};
use super::{
    ApiKey, ClientOptions, CloudError, GpuSpec, PriceOffer, Provider, RentalInstance, make_offer, matches_filter,
};

/// A Lambda Cloud API client.
#[derive(Debug)]
pub struct LambdaClient {
    core: HttpCore,
}

impl LambdaClient {
    /// A client with the given key and options.
    pub fn new(key: ApiKey, options: ClientOptions) -> Result<Self, CloudError> {
        Ok(LambdaClient { core: HttpCore::new(Provider::Lambda, key, options)? })
    }

    /// A client with the key from `LAMBDA_API_KEY`.
    pub fn from_env(options: ClientOptions) -> Result<Self, CloudError> {
        Self::new(ApiKey::from_env(Provider::Lambda)?, options)
    }

    /// One offer per instance type and region with capacity (unavailable, region-less offer if none).
    pub async fn offers(&self, gpu_filter: Option<&str>) -> Result<Vec<PriceOffer>, CloudError> {
        let body = self.core.get_json("/api/v1/instance-types", &[]).await?;
        let types = match self.data(&body)? {
            Value::Object(types) => types,
            _ => {
                return Err(self.core.malformed("`data` is not an object of instance types"));
            }
        };
        let mut offers = Vec::new();
        for (key, entry) in types {
            let parsed = parse_instance_type(key, entry);
            if parsed.is_empty() {
                tracing::debug!(
                    provider = "lambda",
                    instance_type = %key,
                    "skipping instance type without GPU or price"
                );
            }
            offers.extend(parsed);
        }
        Ok(offers.into_iter().filter(|o| matches_filter(&o.gpu_name, gpu_filter)).collect())
    }

    /// The account's running instances.
    pub async fn instances(&self) -> Result<Vec<RentalInstance>, CloudError> {
        let body = self.core.get_json("/api/v1/instances", &[]).await?;
        let items = match self.data(&body)? {
            Value::Array(items) => items,
            _ => return Err(self.core.malformed("`data` is not an array of instances")),
        };
        let mut instances = Vec::with_capacity(items.len());
        for item in items {
            let Some(instance_id) = id_of(item.get("id")) else {
                tracing::debug!(provider = "lambda", "skipping instance without id");
                continue;
            };
            let instance_type = item.get("instance_type");
            let gpu = instance_type.and_then(gpu_of_type);
            instances.push(RentalInstance {
                provider: Provider::Lambda,
                instance_id,
                gpu_name: gpu.as_ref().map(|g| g.name.clone()),
                gpu_count: gpu.as_ref().map(|g| g.count),
                status: str_of(item.get("status")),
                price_per_hour_usd: instance_type.and_then(price_usd),
                ssh_host: str_of(item.get("ip")),
                ssh_port: None,
            });
        }
        Ok(instances)
    }

    /// The `data` member, or Lambda's `{"error": {...}}` as a provider error.
    fn data<'a>(&self, body: &'a Value) -> Result<&'a Value, CloudError> {
        if let Some(data) = body.get("data") {
            return Ok(data);
        }
        match body.get("error") {
            Some(error) => {
                let code = str_of(error.get("code")).unwrap_or_else(|| "no code".to_owned());
                let message = str_of(error.get("message")).unwrap_or_else(|| "no message".to_owned());
                Err(self.core.provider_error(&format!("{message} ({code})")))
            }
            None => Err(self.core.malformed("expected an object with `data`")),
        }
    }
}

fn parse_instance_type(key: &str, entry: &Value) -> Vec<PriceOffer> {
    let Some(instance_type) = entry.get("instance_type") else {
        return Vec::new();
    };
    let name = str_of(instance_type.get("name")).unwrap_or_else(|| key.to_owned());
    let (Some(gpu), Some(price)) = (gpu_of_type(instance_type), price_usd(instance_type)) else {
        return Vec::new();
    };
    let regions: Vec<String> = entry
        .get("regions_with_capacity_available")
        .and_then(Value::as_array)
        .map(|regions| regions.iter().filter_map(|r| str_of(r.get("name"))).collect())
        .unwrap_or_default();
    if regions.is_empty() {
        return make_offer(Provider::Lambda, name, gpu, price, None, false).into_iter().collect();
    }
    regions
        .into_iter()
        .filter_map(|region| {
            make_offer(Provider::Lambda, format!("{name}@{region}"), gpu.clone(), price, Some(region), true)
        })
        .collect()
}

/// Price of an instance type in USD per hour, from `price_cents_per_hour` (number or numeric string).
fn price_usd(instance_type: &Value) -> Option<f64> {
    let cents = f64_of(instance_type.get("price_cents_per_hour"))?;
    (cents > 0.0).then_some(cents / 100.0)
}

/// GPU model, count and memory of an instance type, from `gpu_description` + `specs.gpus`, falling
/// back to the "<N>x <GPU> (<M> GB ...)" form of `description`.
fn gpu_of_type(instance_type: &Value) -> Option<GpuSpec> {
    let description = str_of(instance_type.get("description"));
    let described = description.as_deref().and_then(split_count_prefix);
    let gpu_text =
        str_of(instance_type.get("gpu_description")).or_else(|| described.map(|(_, rest)| rest.to_owned()))?;
    let count =
        instance_type.get("specs").and_then(|s| u32_of(s.get("gpus"))).or_else(|| described.map(|(count, _)| count))?;
    let (name, vram_gb) = split_memory(&gpu_text);
    if name.is_empty() || count == 0 {
        return None;
    }
    Some(GpuSpec { name, count, vram_mib: vram_gb.and_then(gb_to_mib) })
}

/// "8x H100 (80 GB SXM5)" → (8, "H100 (80 GB SXM5)").
fn split_count_prefix(description: &str) -> Option<(u32, &str)> {
    let (count, rest) = description.trim().split_once(char::is_whitespace)?;
    let count = count.strip_suffix(['x', 'X'])?.parse().ok()?;
    Some((count, rest.trim()))
}

/// "H100 (80 GB SXM5)" → ("H100 SXM5", Some(80)); "RTX 6000 (24 GB)" → ("RTX 6000", Some(24)).
/// Text without a "(<n> GB ...)" part is returned whole, without a memory size.
fn split_memory(gpu_text: &str) -> (String, Option<u64>) {
    let text = gpu_text.trim();
    let Some((model, rest)) = text.split_once('(') else {
        return (text.to_owned(), None);
    };
    let Some((inside, after)) = rest.split_once(')') else {
        return (text.to_owned(), None);
    };
    let mut words = inside.split_whitespace();
    let size = words.next().and_then(|n| n.parse::<u64>().ok());
    let unit_is_gb = words.next().is_some_and(|u| u.eq_ignore_ascii_case("GB"));
    let (Some(size), true) = (size, unit_is_gb) else {
        return (text.to_owned(), None);
    };
    let name = model.split_whitespace().chain(words).chain(after.split_whitespace()).collect::<Vec<_>>().join(" ");
    (name, Some(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_split_from_the_gpu_description() {
        assert_eq!(split_memory("H100 (80 GB SXM5)"), ("H100 SXM5".to_owned(), Some(80)));
        assert_eq!(split_memory("RTX 6000 (24 GB)"), ("RTX 6000".to_owned(), Some(24)));
        assert_eq!(split_memory("GH200 (96 GB)"), ("GH200".to_owned(), Some(96)));
        assert_eq!(split_memory("Mystery GPU"), ("Mystery GPU".to_owned(), None));
        assert_eq!(split_memory("Odd (big)"), ("Odd (big)".to_owned(), None));
        assert_eq!(split_memory("Open (80 GB"), ("Open (80 GB".to_owned(), None));
    }

    #[test]
    fn count_prefix_needs_a_number_and_an_x() {
        assert_eq!(split_count_prefix("4x RTX 6000 (24 GB)"), Some((4, "RTX 6000 (24 GB)")));
        assert_eq!(split_count_prefix("RTX 6000"), None);
        assert_eq!(split_count_prefix("x RTX"), None);
        assert_eq!(split_count_prefix("99999999999x A"), None);
    }
}
