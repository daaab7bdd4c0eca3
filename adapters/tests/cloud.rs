//! Tests of the rental-cloud clients against a stub server on 127.0.0.1 (`support/cloud_stub.rs`) that
//! serves the captured provider responses from `fixtures/` and a set of failure routes (401/403, 429
//! with `Retry-After`, 5xx, malformed JSON, JSON followed by junk, slow and oversized answers). The stub
//! checks the `Authorization` header and counts requests per scenario, which is how the price-cache
//! tests see whether an HTTP request was made.

use std::time::{Duration, Instant};

use hwledger_adapters::cloud::{
    ApiKey, ClientOptions, CloudClient, CloudError, LambdaClient, PriceCache, PriceOffer, Provider, RentalInstance,
    RunPodClient, VastClient, gpu_type_key, parse_retry_after,
};

#[path = "support/cloud_stub.rs"]
mod stub;

use stub::{KEY, Stub};

fn key() -> ApiKey {
    ApiKey::new(KEY).expect("test key is valid")
}

fn options(provider: Provider, base_url: String) -> ClientOptions {
    ClientOptions::for_provider(provider)
        .with_base_url(base_url)
        .with_timeout(Duration::from_secs(5))
        .with_max_retry_wait(Duration::from_secs(2))
}

fn client(provider: Provider, base_url: String) -> CloudClient {
    CloudClient::new(provider, key(), options(provider, base_url)).expect("client")
}

fn assert_close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-9, "expected {expected}, got {actual}");
}

fn offer<'a>(offers: &'a [PriceOffer], id: &str) -> &'a PriceOffer {
    offers.iter().find(|o| o.offer_id == id).unwrap_or_else(|| panic!("no offer {id} in {offers:#?}"))
}

// ---------------------------------------------------------------- parsing the captured responses

#[tokio::test]
async fn vast_offers_come_from_the_captured_search() {
    let stub = Stub::start().await;
    let vast = VastClient::new(key(), options(Provider::Vast, stub.url("ok"))).expect("client");
    let offers = vast.offers(None).await.expect("offers");
    assert_eq!(offers.len(), 2);

    let two = offer(&offers, "13670828");
    assert_eq!(two.provider, Provider::Vast);
    assert_eq!(two.gpu_name, "RTX 3090");
    assert_eq!(two.gpu_count, 2);
    assert_eq!(two.vram_mib, Some(24576));
    assert_close(two.price_per_hour_usd, 2.6680555555555556);
    assert_close(two.price_per_gpu_hour_usd, 2.6680555555555556 / 2.0);
    assert_eq!(two.region.as_deref(), Some("South Africa, ZA"));
    assert!(two.available);

    let one = offer(&offers, "13670829");
    assert_eq!(one.gpu_count, 1);
    assert_close(one.price_per_hour_usd, 1.3347222222222221);
    assert_close(one.price_per_gpu_hour_usd, 1.3347222222222221);

    let q: serde_json::Value = serde_json::from_str(&stub.last_query("ok").expect("q sent")).expect("q is JSON");
    assert_eq!(q["rentable"]["eq"], serde_json::json!(true));
    assert!(q.get("gpu_name").is_none());
}

#[tokio::test]
async fn vast_filter_is_sent_to_the_api_and_applied_locally() {
    let stub = Stub::start().await;
    let vast = VastClient::new(key(), options(Provider::Vast, stub.url("ok"))).expect("client");
    let offers = vast.offers(Some("RTX_3090")).await.expect("offers");
    assert_eq!(offers.len(), 2);
    let q: serde_json::Value = serde_json::from_str(&stub.last_query("ok").expect("q sent")).expect("q is JSON");
    assert_eq!(q["gpu_name"]["eq"], serde_json::json!("RTX 3090"));

    // The stub ignores the filter and still answers with RTX 3090s: the client drops them.
    let offers = vast.offers(Some("A100")).await.expect("offers");
    assert!(offers.is_empty(), "{offers:#?}");
}

#[tokio::test]
async fn vast_instances_come_from_the_captured_show_instance() {
    let stub = Stub::start().await;
    let vast = VastClient::new(key(), options(Provider::Vast, stub.url("ok"))).expect("client");
    let instances = vast.instances().await.expect("instances");
    assert_eq!(
        instances,
        vec![RentalInstance {
            provider: Provider::Vast,
            instance_id: "13445220".to_owned(),
            gpu_name: Some("RTX 3090".to_owned()),
            gpu_count: Some(1),
            status: Some("running".to_owned()),
            price_per_hour_usd: Some(2.672222222222222),
            ssh_host: Some("ssh8.vast.ai".to_owned()),
            ssh_port: Some(15220),
        }]
    );
}

#[tokio::test]
async fn runpod_offers_come_from_the_real_gpu_types_capture() {
    let stub = Stub::start().await;
    let runpod = RunPodClient::new(key(), options(Provider::RunPod, stub.url("ok"))).expect("client");
    let offers = runpod.offers(None).await.expect("offers");
    // 38 real types (the 'unknown' entry is skipped) priced on 23 secure + 32 community clouds.
    assert_eq!(offers.len(), 55);
    assert_eq!(offers.iter().filter(|o| o.offer_id.ends_with(":secure")).count(), 23);
    assert!(offers.iter().all(|o| !o.offer_id.starts_with("unknown")));
    assert!(offers.iter().all(|o| o.price_per_hour_usd > 0.0 && o.gpu_count == 1));

    // MI300X: secure cloud only; the community placeholder price (communityCloud: false) is ignored.
    let mi300x: Vec<_> = offers.iter().filter(|o| o.gpu_name == "MI300X").collect();
    assert_eq!(mi300x.len(), 1);
    assert_eq!(mi300x[0].offer_id, "AMD Instinct MI300X OAM:secure");
    assert_close(mi300x[0].price_per_hour_usd, 2.49);
    assert_eq!(mi300x[0].vram_mib, Some(192 * 1024));

    // RTX 3070: securePrice 0 on a cloud that does not offer it is no offer, not a free GPU.
    let rtx3070: Vec<_> = offers.iter().filter(|o| o.gpu_name == "RTX 3070").collect();
    assert_eq!(rtx3070.len(), 1);
    assert_eq!(rtx3070[0].offer_id, "NVIDIA GeForce RTX 3070:community");
    assert_close(rtx3070[0].price_per_gpu_hour_usd, 0.13);

    let rtx3090 = offer(&offers, "NVIDIA GeForce RTX 3090:community");
    assert_close(rtx3090.price_per_hour_usd, 0.22);
    assert_eq!(rtx3090.vram_mib, Some(24 * 1024));
    assert_close(offer(&offers, "NVIDIA GeForce RTX 3090:secure").price_per_hour_usd, 0.46);

    let filtered = runpod.offers(Some("rtx 3090")).await.expect("offers");
    let names: Vec<_> = filtered.iter().map(|o| o.gpu_name.as_str()).collect();
    assert_eq!(names, ["RTX 3090", "RTX 3090", "RTX 3090 Ti"]);
}

#[tokio::test]
async fn runpod_lowest_price_is_used_when_no_cloud_price_is_given() {
    let stub = Stub::start().await;
    let runpod = RunPodClient::new(key(), options(Provider::RunPod, stub.url("runpod-docs"))).expect("client");
    let offers = runpod.offers(None).await.expect("offers");
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].offer_id, "NVIDIA GeForce RTX 3090:lowest");
    assert_eq!(offers[0].gpu_name, "RTX 3090");
    assert_eq!(offers[0].vram_mib, Some(24 * 1024));
    assert_close(offers[0].price_per_hour_usd, 0.3);
}

#[tokio::test]
async fn runpod_pods_come_from_the_docs_example() {
    let stub = Stub::start().await;
    let runpod = RunPodClient::new(key(), options(Provider::RunPod, stub.url("ok"))).expect("client");
    let instances = runpod.instances().await.expect("instances");
    assert_eq!(
        instances,
        vec![RentalInstance {
            provider: Provider::RunPod,
            instance_id: "ldl1dxirsim64n".to_owned(),
            // The example lists no GPU model, status or price: they stay unknown.
            gpu_name: None,
            gpu_count: Some(1),
            status: None,
            price_per_hour_usd: None,
            // Only port 8888 (http, private IP) is mapped: no SSH endpoint.
            ssh_host: None,
            ssh_port: None,
        }]
    );
}

#[tokio::test]
async fn lambda_offers_come_from_the_documented_instance_types() {
    let stub = Stub::start().await;
    let lambda = LambdaClient::new(key(), options(Provider::Lambda, stub.url("ok"))).expect("client");
    let offers = lambda.offers(None).await.expect("offers");
    assert_eq!(
        offers,
        vec![PriceOffer {
            provider: Provider::Lambda,
            offer_id: "gpu_8x_example@us-west-1".to_owned(),
            gpu_name: "Example GPU SXM4".to_owned(),
            gpu_count: 8,
            vram_mib: Some(40 * 1024),
            price_per_hour_usd: 15.92,
            price_per_gpu_hour_usd: 15.92 / 8.0,
            region: Some("us-west-1".to_owned()),
            available: true,
        }]
    );
}

#[tokio::test]
async fn lambda_old_docs_with_string_prices_and_no_gpu_fields_still_parse() {
    let stub = Stub::start().await;
    let lambda = LambdaClient::new(key(), options(Provider::Lambda, stub.url("lambda-old"))).expect("client");
    let offers = lambda.offers(None).await.expect("offers");
    assert_eq!(offers.len(), 2);
    let a100 = offer(&offers, "gpu_1x_a100@us-tx-1");
    assert_eq!(a100.gpu_name, "RTX A100");
    assert_eq!(a100.gpu_count, 1);
    assert_eq!(a100.vram_mib, Some(24 * 1024));
    assert_close(a100.price_per_hour_usd, 0.80);
    let a6000 = offer(&offers, "gpu_4x_a6000@us-az-1");
    assert_eq!(a6000.gpu_name, "RTX 6000");
    assert_eq!(a6000.gpu_count, 4);
    assert_close(a6000.price_per_hour_usd, 1.10);
    assert_close(a6000.price_per_gpu_hour_usd, 0.275);
    assert_eq!(a6000.region.as_deref(), Some("us-az-1"));
}

#[tokio::test]
async fn lambda_instances_come_from_the_documented_instance() {
    let stub = Stub::start().await;
    let lambda = LambdaClient::new(key(), options(Provider::Lambda, stub.url("ok"))).expect("client");
    let instances = lambda.instances().await.expect("instances");
    assert_eq!(
        instances,
        vec![RentalInstance {
            provider: Provider::Lambda,
            instance_id: "0920582c7ff041399e34823a0be62549".to_owned(),
            gpu_name: Some("Example GPU SXM4".to_owned()),
            gpu_count: Some(8),
            status: Some("active".to_owned()),
            price_per_hour_usd: Some(15.92),
            ssh_host: Some("198.51.100.2".to_owned()),
            ssh_port: None,
        }]
    );
}

// ---------------------------------------------------------------- errors

async fn offers_error(stub: &Stub, provider: Provider, scenario: &str) -> CloudError {
    client(provider, stub.url(scenario)).offers(None).await.expect_err(scenario)
}

#[tokio::test]
async fn every_failure_route_maps_to_its_typed_error_for_every_provider() {
    let stub = Stub::start().await;
    let cases: [(&str, &str); 13] = [
        ("unauthorized", "unauthorized"),
        ("forbidden", "unauthorized"),
        ("server-error", "server_error"),
        ("bad-gateway", "server_error"),
        ("not-found", "unexpected_status"),
        ("malformed", "malformed_json"),
        ("html", "malformed_json"),
        ("empty", "malformed_json"),
        ("wrong-shape", "malformed_json"),
        ("wrong-type", "malformed_json"),
        ("ratelimit-long", "rate_limited"),
        ("ratelimit-bare", "rate_limited"),
        ("ratelimit-garbled", "rate_limited"),
    ];
    for provider in Provider::ALL {
        for (scenario, code) in cases {
            let error = offers_error(&stub, provider, scenario).await;
            assert_eq!(error.code(), code, "{provider} {scenario}: {error}");
            let instances_error = client(provider, stub.url(scenario)).instances().await.expect_err(scenario);
            assert_eq!(instances_error.code(), code, "{provider} {scenario} instances");
        }
    }
    let error = offers_error(&stub, Provider::Vast, "forbidden").await;
    assert!(matches!(error, CloudError::Unauthorized { status: 403, .. }), "{error:?}");
    let error = offers_error(&stub, Provider::Vast, "bad-gateway").await;
    assert!(matches!(error, CloudError::Server { status: 502, .. }), "{error:?}");
    let error = offers_error(&stub, Provider::Lambda, "unauthorized").await;
    assert!(error.to_string().contains("LAMBDA_API_KEY"), "{error}");
}

#[tokio::test]
async fn rate_limit_without_a_usable_or_acceptable_wait_is_returned_at_once() {
    let stub = Stub::start().await;
    let error = offers_error(&stub, Provider::Vast, "ratelimit-long").await;
    assert!(
        matches!(error, CloudError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{error:?}"
    );
    assert_eq!(stub.hits("ratelimit-long"), 1, "a wait above the cap is not retried");

    let error = offers_error(&stub, Provider::Vast, "ratelimit-future-date").await;
    assert!(
        matches!(error, CloudError::RateLimited { retry_after: Some(d), .. } if d > Duration::from_secs(86_400)),
        "{error:?}"
    );
    assert_eq!(stub.hits("ratelimit-future-date"), 1);

    let error = offers_error(&stub, Provider::Vast, "ratelimit-bare").await;
    assert!(matches!(error, CloudError::RateLimited { retry_after: None, .. }), "{error:?}");
    assert_eq!(stub.hits("ratelimit-bare"), 1);
}

#[tokio::test]
async fn rate_limit_with_retry_after_seconds_is_retried_once() {
    let stub = Stub::start().await;
    let started = Instant::now();
    let offers =
        client(Provider::Vast, stub.url("ratelimit-once")).offers(None).await.expect("second attempt succeeds");
    assert_eq!(offers.len(), 2);
    assert_eq!(stub.hits("ratelimit-once"), 2);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was waited out");

    let error = offers_error(&stub, Provider::RunPod, "ratelimit-always").await;
    assert!(
        matches!(error, CloudError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(1)),
        "{error:?}"
    );
    assert_eq!(stub.hits("ratelimit-always"), 2, "exactly one retry");
}

#[tokio::test]
async fn rate_limit_with_a_past_http_date_is_retried_at_once() {
    let stub = Stub::start().await;
    let offers =
        client(Provider::Lambda, stub.url("ratelimit-date-once")).offers(None).await.expect("second attempt succeeds");
    assert_eq!(offers.len(), 1);
    assert_eq!(stub.hits("ratelimit-date-once"), 2);
}

#[tokio::test]
async fn json_followed_by_vasts_error_line_is_trailing_garbage() {
    let stub = Stub::start().await;
    let error = offers_error(&stub, Provider::Vast, "trailing").await;
    match &error {
        CloudError::TrailingGarbage { provider, line } => {
            assert_eq!(*provider, Provider::Vast);
            assert_eq!(line, "Machine ID 24126 not found or not rentable.");
        }
        other => panic!("expected TrailingGarbage, got {other:?}"),
    }
    assert_eq!(error.code(), "trailing_garbage");
}

#[tokio::test]
async fn graphql_errors_are_provider_errors() {
    let stub = Stub::start().await;
    let error = offers_error(&stub, Provider::RunPod, "graphql-error").await;
    match &error {
        CloudError::ProviderError { message, .. } => assert_eq!(
            message,
            "There are no longer any instances available with the requested specifications. \
             Please refresh and try again."
        ),
        other => panic!("expected ProviderError, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let stub = Stub::start().await;
    let options = options(Provider::Vast, stub.url("slow")).with_timeout(Duration::from_millis(300));
    let vast = VastClient::new(key(), options).expect("client");
    let started = Instant::now();
    let error = vast.offers(None).await.expect_err("times out");
    assert!(matches!(error, CloudError::Timeout { timeout, .. } if timeout == Duration::from_millis(300)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "gave up at the timeout");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let stub = Stub::start().await;
    // Declared length above the default 8 MiB cap.
    let error = offers_error(&stub, Provider::Vast, "huge").await;
    assert!(matches!(error, CloudError::TooLarge { limit_bytes, .. } if limit_bytes == 8 * 1024 * 1024), "{error:?}");
    // A configured, smaller cap applies to an ordinary answer.
    let small = options(Provider::Vast, stub.url("ok")).with_max_body_bytes(1024);
    let error = VastClient::new(key(), small).expect("client").offers(None).await.expect_err("too large");
    assert_eq!(error.code(), "too_large");
    // Chunked answer without Content-Length: stopped by the running count.
    let chunked = options(Provider::Vast, stub::chunked_server().await).with_max_body_bytes(256 * 1024);
    let error = VastClient::new(key(), chunked).expect("client").offers(None).await.expect_err("too large");
    assert!(matches!(error, CloudError::TooLarge { limit_bytes, .. } if limit_bytes == 256 * 1024), "{error:?}");
}

#[tokio::test]
async fn an_unreachable_api_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let error = client(Provider::RunPod, format!("http://{addr}")).offers(None).await.expect_err("nothing listens");
    assert_eq!(error.code(), "transport", "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_wrong_key_is_refused_by_the_stub_for_every_provider() {
    let stub = Stub::start().await;
    for provider in Provider::ALL {
        let wrong = ApiKey::new("not-the-key").expect("key");
        let client = CloudClient::new(provider, wrong, options(provider, stub.url("ok"))).expect("client");
        let error = client.offers(None).await.expect_err("wrong key");
        assert!(matches!(error, CloudError::Unauthorized { status: 401, .. }), "{provider}: {error:?}");
        // The same route with the right key succeeds (every parsing test above relies on it):
        // so the key travels as "Authorization: Bearer <key>" for all three providers.
        let right = self::client(provider, stub.url("ok"));
        assert!(!right.offers(None).await.expect("right key").is_empty());
    }
}

#[tokio::test]
async fn the_api_key_never_appears_in_errors_or_debug_output() {
    let stub = Stub::start().await;
    let mut errors = Vec::new();
    for provider in Provider::ALL {
        for scenario in [
            "leak-trailing",
            "leak-graphql",
            "leak-malformed",
            "leak-vast-msg",
            "leak-lambda-error",
            "unauthorized",
            "server-error",
            "malformed",
            "trailing",
            "ratelimit-bare",
        ] {
            let c = client(provider, stub.url(scenario));
            assert!(!format!("{c:?}").contains(KEY), "client Debug shows the key");
            errors.push(c.offers(None).await.expect_err(scenario));
            errors.push(c.instances().await.expect_err(scenario));
        }
    }
    let slow = options(Provider::Vast, stub.url("slow")).with_timeout(Duration::from_millis(200));
    errors.push(VastClient::new(key(), slow).expect("client").offers(None).await.expect_err("timeout"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    errors.push(client(Provider::Lambda, closed).offers(None).await.expect_err("transport"));

    let codes: std::collections::BTreeSet<_> = errors.iter().map(CloudError::code).collect();
    for expected in ["trailing_garbage", "provider_error", "malformed_json", "timeout", "transport"] {
        assert!(codes.contains(expected), "{expected} not exercised: {codes:?}");
    }
    for error in &errors {
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(KEY), "key leaked: {shown}");
    }
    // The echoed key was replaced, not silently dropped with the rest of the message.
    let trailing = errors
        .iter()
        .find(|e| matches!(e, CloudError::TrailingGarbage { line, .. } if line.starts_with("key ")))
        .expect("leak-trailing error");
    assert!(trailing.to_string().contains("<redacted>"), "{trailing}");
    assert_eq!(format!("{:?}", key()), "ApiKey(<redacted>)");
}

// ---------------------------------------------------------------- price cache

#[tokio::test]
async fn cached_quotes_are_reused_within_the_ttl_and_refetched_after_it() {
    let stub = Stub::start().await;
    let vast = client(Provider::Vast, stub.url("ok-cache"));
    let mut cache = PriceCache::default();
    assert_eq!(cache.ttl(), Duration::from_secs(3600));
    let t0 = Instant::now();

    let first = cache.offers(&vast, None, t0).await.expect("fetch");
    assert_eq!(stub.hits("ok-cache"), 1);
    let again = cache.offers(&vast, None, t0 + Duration::from_secs(59 * 60)).await.expect("cached");
    assert_eq!(stub.hits("ok-cache"), 1, "no HTTP request within the hour");
    assert_eq!(first, again);

    // Another filter is another entry.
    cache.offers(&vast, Some("RTX_3090"), t0).await.expect("fetch");
    assert_eq!(stub.hits("ok-cache"), 2);
    cache.offers(&vast, Some("rtx 3090"), t0).await.expect("cached");
    assert_eq!(stub.hits("ok-cache"), 2, "filters are compared by GPU type key");

    cache.offers(&vast, None, t0 + Duration::from_secs(60 * 60)).await.expect("refetch");
    assert_eq!(stub.hits("ok-cache"), 3, "expired after one hour");
}

#[tokio::test]
async fn failed_fetches_are_not_cached() {
    let stub = Stub::start().await;
    let broken = client(Provider::Vast, stub.url("server-error"));
    let mut cache = PriceCache::new(Duration::from_secs(60));
    let t0 = Instant::now();
    assert!(cache.offers(&broken, None, t0).await.is_err());
    assert!(cache.offers(&broken, None, t0).await.is_err());
    assert_eq!(stub.hits("server-error"), 2);
    assert!(cache.fresh(Provider::Vast, None, t0).is_none());
}

#[tokio::test]
async fn cheapest_offer_per_gpu_type_across_providers() {
    let stub = Stub::start().await;
    let mut cache = PriceCache::new(Duration::from_secs(600));
    let t0 = Instant::now();
    for provider in Provider::ALL {
        cache.offers(&client(provider, stub.url("ok")), None, t0).await.expect("fetch");
    }
    let cheapest = cache.cheapest_per_gpu_type(t0);
    // 38 RunPod types (vast's RTX 3090 is one of them) + Lambda's example GPU.
    assert_eq!(cheapest.len(), 39, "{cheapest:#?}");
    let prices: Vec<f64> = cheapest.iter().map(|c| c.offer.price_per_gpu_hour_usd).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "sorted by $/GPU-hour");
    assert_eq!(cheapest[0].gpu_type, "rtx a2000");
    assert_close(cheapest[0].offer.price_per_gpu_hour_usd, 0.12);

    // RTX 3090: RunPod community ($0.22) beats vast ($1.33/GPU) and RunPod secure ($0.46).
    let rtx3090 = cheapest.iter().find(|c| c.gpu_type == "rtx 3090").expect("rtx 3090");
    assert_eq!(rtx3090.offer.provider, Provider::RunPod);
    assert_eq!(rtx3090.offer.offer_id, "NVIDIA GeForce RTX 3090:community");

    let example = cheapest.iter().find(|c| c.gpu_type == "example gpu sxm4").expect("lambda type");
    assert_eq!(example.offer.provider, Provider::Lambda);
    assert_close(example.offer.price_per_gpu_hour_usd, 1.99);

    // Once the quotes expire nothing is "current" any more.
    assert!(cache.cheapest_per_gpu_type(t0 + Duration::from_secs(600)).is_empty());
    cache.evict_expired(t0 + Duration::from_secs(600));
    assert!(cache.fresh(Provider::Vast, None, t0).is_none());
}

#[test]
fn unavailable_offers_are_not_the_cheapest() {
    let mut cache = PriceCache::default();
    let now = Instant::now();
    let make = |id: &str, price: f64, available: bool| PriceOffer {
        provider: Provider::Lambda,
        offer_id: id.to_owned(),
        gpu_name: "H100 SXM5".to_owned(),
        gpu_count: 1,
        vram_mib: None,
        price_per_hour_usd: price,
        price_per_gpu_hour_usd: price,
        region: None,
        available,
    };
    cache.store(Provider::Lambda, None, vec![make("sold-out", 1.0, false), make("in-stock", 3.0, true)], now);
    let cheapest = cache.cheapest_per_gpu_type(now);
    assert_eq!(cheapest.len(), 1);
    assert_eq!(cheapest[0].offer.offer_id, "in-stock");
    assert_eq!(cheapest[0].gpu_type, "h100 sxm5");
}

// ---------------------------------------------------------------- small pure pieces

#[test]
fn error_codes_are_stable() {
    let p = Provider::Vast;
    let cases: Vec<(CloudError, &str)> = vec![
        (CloudError::MissingApiKey { provider: p, env_var: "VAST_API_KEY" }, "missing_api_key"),
        (CloudError::InvalidApiKey { reason: "x" }, "invalid_api_key"),
        (CloudError::InvalidBaseUrl { provider: p, detail: "x".into() }, "invalid_base_url"),
        (CloudError::Unauthorized { provider: p, status: 401 }, "unauthorized"),
        (CloudError::RateLimited { provider: p, retry_after: None }, "rate_limited"),
        (CloudError::Server { provider: p, status: 500 }, "server_error"),
        (CloudError::UnexpectedStatus { provider: p, status: 404 }, "unexpected_status"),
        (CloudError::MalformedJson { provider: p, detail: "x".into() }, "malformed_json"),
        (CloudError::TrailingGarbage { provider: p, line: "x".into() }, "trailing_garbage"),
        (CloudError::ProviderError { provider: p, message: "x".into() }, "provider_error"),
        (CloudError::Timeout { provider: p, timeout: Duration::from_secs(1) }, "timeout"),
        (CloudError::Transport { provider: p, detail: "x".into() }, "transport"),
        (CloudError::TooLarge { provider: p, limit_bytes: 1 }, "too_large"),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code, "{error}");
    }
}

#[test]
fn retry_after_accepts_seconds_and_http_dates() {
    let now = time::macros::datetime!(2025-06-21 12:00:00 UTC);
    assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("Sat, 21 Jun 2025 12:00:30 GMT", now), Some(Duration::from_secs(30)));
    assert_eq!(
        parse_retry_after("Sat, 21 Jun 2025 12:01:00 +0000", now),
        Some(Duration::from_secs(60)),
        "RFC 2822 form"
    );
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("1.5", now), None);
    assert_eq!(parse_retry_after("", now), None);
    assert_eq!(parse_retry_after("99999999999999999999999", now), None);
}

#[test]
fn api_keys_come_from_the_provider_variable_and_are_validated() {
    let missing = ApiKey::from_lookup(Provider::RunPod, |_| None).expect_err("missing");
    assert_eq!(missing.code(), "missing_api_key");
    assert!(missing.to_string().contains("RUNPOD_API_KEY"), "{missing}");

    let mut asked = None;
    let found = ApiKey::from_lookup(Provider::Lambda, |name| {
        asked = Some(name.to_owned());
        Some(format!("{KEY}\n"))
    })
    .expect("found");
    assert_eq!(asked.as_deref(), Some("LAMBDA_API_KEY"));
    assert!(!format!("{found:?}").contains(KEY));

    let blank = ApiKey::from_lookup(Provider::Vast, |_| Some("  ".into())).expect_err("blank");
    assert_eq!(blank.code(), "missing_api_key");
    assert_eq!(ApiKey::new("a b").expect_err("space").code(), "invalid_api_key");
    assert_eq!(ApiKey::new("ключ").expect_err("non-ascii").code(), "invalid_api_key");
    assert_eq!(ApiKey::new("").expect_err("empty").code(), "invalid_api_key");
}

#[test]
fn base_urls_must_be_plain_http_urls() {
    for bad in ["not a url", "ftp://example.com", "http://user:pw@example.com", "http://h/?x=1"] {
        let error =
            VastClient::new(key(), ClientOptions::for_provider(Provider::Vast).with_base_url(bad)).expect_err(bad);
        assert_eq!(error.code(), "invalid_base_url", "{bad}");
    }
    for provider in Provider::ALL {
        assert!(CloudClient::new(provider, key(), ClientOptions::for_provider(provider)).is_ok());
    }
    let defaults = ClientOptions::for_provider(Provider::Lambda);
    assert_eq!(defaults.base_url, "https://cloud.lambda.ai");
    assert_eq!(defaults.timeout, Duration::from_secs(10));
    assert_eq!(defaults.max_body_bytes, 8 * 1024 * 1024);
}

#[test]
fn providers_print_and_parse_by_name() {
    for provider in Provider::ALL {
        assert_eq!(provider.to_string().parse::<Provider>(), Ok(provider));
    }
    assert_eq!("RunPod".parse::<Provider>(), Ok(Provider::RunPod));
    assert_eq!(Provider::RunPod.to_string(), "runpod");
    let error = "aws".parse::<Provider>().expect_err("unknown");
    assert!(error.to_string().contains("\"aws\""));
}

#[test]
fn gpu_type_keys_ignore_vendor_words_case_and_underscores() {
    assert_eq!(gpu_type_key("NVIDIA GeForce RTX 3090"), "rtx 3090");
    assert_eq!(gpu_type_key("RTX_3090"), "rtx 3090");
    assert_eq!(gpu_type_key("  H100   SXM "), "h100 sxm");
}
