//! RunPod client: GraphQL `POST /graphql` with Bearer authentication. Offers come from `gpuTypes`,
//! instances from `myself { pods }`. A body with a non-empty `errors[]` is a
//! [`CloudError::ProviderError`] even when the status is 200 (RunPod's usual way to fail).
//!
//! `gpuTypes` quotes one GPU per hour on each cloud: `securePrice` (RunPod's data centres) and
//! `communityPrice` (hosts), with `secureCloud` / `communityCloud` saying whether the type is offered
//! there at all. RunPod fills unoffered clouds with 0 or a placeholder price, so a price counts only
//! if its cloud is not explicitly off and the price is positive. `lowestPrice.uninterruptablePrice`
//! is used only when neither cloud gave a price. The pseudo-type with id "unknown" is skipped.

use serde_json::{Value, json};

use super::http::HttpCore;
use super::json::{bool_of, f64_of, gb_to_mib, id_of, str_of, u32_of, u64_of};
use super::{
    ApiKey, ClientOptions, CloudError, GpuSpec, PriceOffer, Provider, RentalInstance, make_offer, matches_filter,
};

const GPU_TYPES_QUERY: &str = "query GpuTypes { gpuTypes { id displayName memoryInGb \
     secureCloud communityCloud securePrice communityPrice \
     lowestPrice(input: {gpuCount: 1}) { uninterruptablePrice } } }";

const PODS_QUERY: &str = "query Pods { myself { pods { id name desiredStatus costPerHr gpuCount \
     machine { gpuDisplayName } \
     runtime { ports { ip isIpPublic privatePort publicPort type } gpus { id } } } } }";

/// The container port RunPod maps for SSH.
const SSH_PRIVATE_PORT: u64 = 22;

/// A RunPod API client.
#[derive(Debug)]
pub struct RunPodClient {
    core: HttpCore,
}

impl RunPodClient {
    /// A client with the given key and options.
    pub fn new(key: ApiKey, options: ClientOptions) -> Result<Self, CloudError> {
        Ok(RunPodClient { core: HttpCore::new(Provider::RunPod, key, options)? })
    }

    /// A client with the key from `RUNPOD_API_KEY`.
    pub fn from_env(options: ClientOptions) -> Result<Self, CloudError> {
        Self::new(ApiKey::from_env(Provider::RunPod)?, options)
    }

    /// Per-GPU offers: one per cloud (secure, community) that prices the type.
    pub async fn offers(&self, gpu_filter: Option<&str>) -> Result<Vec<PriceOffer>, CloudError> {
        let data = self.query(GPU_TYPES_QUERY).await?;
        let Some(Value::Array(types)) = data.get("gpuTypes") else {
            return Err(self.core.malformed("`data.gpuTypes` is missing or not an array"));
        };
        let mut offers = Vec::new();
        for gpu_type in types {
            let parsed = parse_gpu_type(gpu_type);
            if parsed.is_empty() {
                tracing::debug!(
                    provider = "runpod",
                    id = ?gpu_type.get("id"),
                    "skipping GPU type without a usable name or price"
                );
            }
            offers.extend(parsed);
        }
        Ok(offers.into_iter().filter(|o| matches_filter(&o.gpu_name, gpu_filter)).collect())
    }

    /// The account's pods.
    pub async fn instances(&self) -> Result<Vec<RentalInstance>, CloudError> {
        let data = self.query(PODS_QUERY).await?;
        let Some(Value::Array(pods)) = data.get("myself").and_then(|m| m.get("pods")) else {
            return Err(self.core.malformed("`data.myself.pods` is missing or not an array"));
        };
        let mut instances = Vec::with_capacity(pods.len());
        for pod in pods {
            match parse_pod(pod) {
                Some(instance) => instances.push(instance),
                None => tracing::debug!(provider = "runpod", "skipping pod without id"),
            }
        }
        Ok(instances)
    }

    /// Runs one GraphQL query and returns its `data`, or the `errors[]` as a provider error.
    async fn query(&self, query: &str) -> Result<Value, CloudError> {
        let body = self.core.post_json("/graphql", &json!({ "query": query })).await?;
        if let Some(errors) = body.get("errors") {
            let messages: Vec<String> = match errors {
                Value::Array(list) => list
                    .iter()
                    .map(|e| str_of(e.get("message")).unwrap_or_else(|| "error without a message".to_owned()))
                    .collect(),
                Value::Null => Vec::new(),
                _ => vec!["malformed `errors` member".to_owned()],
            };
            if !messages.is_empty() {
                return Err(self.core.provider_error(&messages.join("; ")));
            }
        }
        match body.get("data") {
            Some(data @ Value::Object(_)) => Ok(data.clone()),
            _ => Err(self.core.malformed("`data` is missing or not an object")),
        }
    }
}

fn parse_gpu_type(gpu_type: &Value) -> Vec<PriceOffer> {
    let Some(id) = str_of(gpu_type.get("id")) else {
        return Vec::new();
    };
    if id.eq_ignore_ascii_case("unknown") {
        return Vec::new();
    }
    let name = str_of(gpu_type.get("displayName")).unwrap_or_else(|| id.clone());
    let gpu = GpuSpec { name, count: 1, vram_mib: u64_of(gpu_type.get("memoryInGb")).and_then(gb_to_mib) };
    let mut offers = Vec::new();
    for (cloud, flag, price) in
        [("secure", "secureCloud", "securePrice"), ("community", "communityCloud", "communityPrice")]
    {
        let offered = bool_of(gpu_type.get(flag));
        if offered == Some(false) {
            continue;
        }
        if let Some(price) = f64_of(gpu_type.get(price))
            && let Some(offer) = make_offer(Provider::RunPod, format!("{id}:{cloud}"), gpu.clone(), price, None, true)
        {
            offers.push(offer);
        }
    }
    if offers.is_empty() {
        let lowest = gpu_type.get("lowestPrice").and_then(|l| f64_of(l.get("uninterruptablePrice")));
        if let Some(price) = lowest
            && let Some(offer) = make_offer(Provider::RunPod, format!("{id}:lowest"), gpu, price, None, true)
        {
            offers.push(offer);
        }
    }
    offers
}

fn parse_pod(pod: &Value) -> Option<RentalInstance> {
    let instance_id = id_of(pod.get("id"))?;
    let runtime = pod.get("runtime").filter(|r| r.is_object());
    let runtime_gpus =
        runtime.and_then(|r| r.get("gpus")).and_then(Value::as_array).and_then(|gpus| u32::try_from(gpus.len()).ok());
    let ssh = runtime.and_then(|r| r.get("ports")).and_then(Value::as_array).and_then(|ports| {
        ports.iter().find(|p| {
            u64_of(p.get("privatePort")) == Some(SSH_PRIVATE_PORT) && bool_of(p.get("isIpPublic")) == Some(true)
        })
    });
    Some(RentalInstance {
        provider: Provider::RunPod,
        instance_id,
        gpu_name: pod.get("machine").and_then(|m| str_of(m.get("gpuDisplayName"))),
        gpu_count: u32_of(pod.get("gpuCount")).or(runtime_gpus),
        status: str_of(pod.get("desiredStatus")),
        price_per_hour_usd: f64_of(pod.get("costPerHr")).filter(|p| *p > 0.0),
        ssh_host: ssh.and_then(|p| str_of(p.get("ip"))),
        ssh_port: ssh.and_then(|p| u64_of(p.get("publicPort"))).and_then(|p| u16::try_from(p).ok()),
    })
}
