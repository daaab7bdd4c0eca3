//! Test harness: a stub of the three rental-cloud APIs on 127.0.0.1 (warp) that serves the captured
//! provider responses from `fixtures/` and a set of failure routes (401/403, 429 with `Retry-After`,
//! 5xx, malformed JSON, JSON followed by junk, slow and oversized answers). It checks the
//! `Authorization: Bearer` header against [`KEY`] and counts requests per scenario.
//!
//! The first path segment of every stub URL names a scenario (the client's base URL is
//! `http://127.0.0.1:<port>/<scenario>`); the rest is the real API path. Used by
//! `adapters/tests/cloud.rs` and, through `#[path]`, by the root `tests/fleet.rs`.

#![allow(dead_code)] // Each test target uses a different subset of the harness.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warp::Filter;
use warp::http::{Method, Response, StatusCode};

/// The key the stub accepts. Distinctive so a leak into any error text, log or event is easy to spot.
pub const KEY: &str = "hwl-test-key-7f3a9c1e5b";

/// `fixtures/` of the workspace, whether this file is compiled into the adapters' tests or the root's.
fn fixtures_dir() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    [manifest.join("fixtures"), manifest.join("../fixtures")]
        .into_iter()
        .find(|d| d.join("gpu-and-cloud").is_dir())
        .unwrap_or_else(|| panic!("no fixtures/ beside {}", manifest.display()))
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = fixtures_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()))
}

/// `prefix` + fixture + `suffix`: used to put a bare captured array into the API's envelope.
fn wrapped(prefix: &str, rel: &str, suffix: &str) -> Vec<u8> {
    let mut body = prefix.as_bytes().to_vec();
    body.extend(fixture(rel));
    body.extend_from_slice(suffix.as_bytes());
    body
}

#[derive(Default)]
struct State {
    hits: Mutex<HashMap<String, usize>>,
    queries: Mutex<HashMap<String, String>>,
}

/// A running stub; stopped when dropped.
pub struct Stub {
    addr: SocketAddr,
    state: Arc<State>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Stub {
    pub async fn start() -> Stub {
        let state = Arc::new(State::default());
        let shared = state.clone();
        let routes = warp::any()
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::query::<HashMap<String, String>>())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .and_then(move |method, path: warp::path::FullPath, query, auth, body: warp::hyper::body::Bytes| {
                let state = shared.clone();
                async move { Ok::<_, Infallible>(handle(&state, method, path.as_str(), query, auth, &body).await) }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let addr = listener.local_addr().expect("stub address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async {
                    let _ = rx.await;
                })
                .run(),
        );
        Stub { addr, state, _shutdown: tx }
    }

    /// The base URL for a scenario.
    pub fn url(&self, scenario: &str) -> String {
        format!("http://{}/{scenario}", self.addr)
    }

    /// Requests the stub received for a scenario.
    pub fn hits(&self, scenario: &str) -> usize {
        self.state.hits.lock().get(scenario).copied().unwrap_or(0)
    }

    /// The last `q` query parameter received for a scenario (vast's search).
    pub fn last_query(&self, scenario: &str) -> Option<String> {
        self.state.queries.lock().get(scenario).cloned()
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).expect("valid response")
}

async fn handle(
    state: &State,
    method: Method,
    full_path: &str,
    query: HashMap<String, String>,
    auth: Option<String>,
    body: &[u8],
) -> Response<Vec<u8>> {
    let trimmed = full_path.trim_start_matches('/');
    let (scenario, rest) = match trimmed.split_once('/') {
        Some((scenario, rest)) => (scenario.to_owned(), format!("/{rest}")),
        None => (trimmed.to_owned(), "/".to_owned()),
    };
    let hit = {
        let mut hits = state.hits.lock();
        let count = hits.entry(scenario.clone()).or_insert(0);
        *count += 1;
        *count
    };
    if let Some(q) = query.get("q") {
        state.queries.lock().insert(scenario.clone(), q.clone());
    }
    if auth.as_deref() != Some(format!("Bearer {KEY}").as_str()) {
        return reply(401, &[], fixture("cloud-stub/lambda/error-invalid-api-key.json"));
    }
    let ok = || serve_ok(&method, &rest, body);
    match scenario.as_str() {
        s if s.starts_with("ok") => ok(),
        "runpod-docs" => reply(200, &[], fixture("gpu-and-cloud/runpod/runpod-docs-graphql-gputype-lowestprice.json")),
        "lambda-old" => reply(200, &[], fixture("cloud-stub/lambda/instance-types-v1.5.3-example.json")),
        "unauthorized" => reply(401, &[], fixture("cloud-stub/lambda/error-invalid-api-key.json")),
        "forbidden" => reply(403, &[], b"{\"error\":\"forbidden\"}".to_vec()),
        "server-error" => reply(500, &[], b"internal error".to_vec()),
        "bad-gateway" => reply(502, &[], b"<html>502 Bad Gateway</html>".to_vec()),
        "not-found" => reply(404, &[], b"{\"detail\":\"Not Found\"}".to_vec()),
        "ratelimit-once" if hit == 1 => reply(429, &[("retry-after", "1")], Vec::new()),
        "ratelimit-once" => ok(),
        "ratelimit-date-once" if hit == 1 => {
            reply(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], Vec::new())
        }
        "ratelimit-date-once" => ok(),
        "ratelimit-always" => reply(429, &[("retry-after", "1")], Vec::new()),
        "ratelimit-long" => reply(429, &[("retry-after", "3600")], Vec::new()),
        "ratelimit-future-date" => reply(429, &[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")], Vec::new()),
        "ratelimit-bare" => reply(429, &[], Vec::new()),
        "ratelimit-garbled" => reply(429, &[("retry-after", "soon")], Vec::new()),
        "malformed" => reply(200, &[], b"{\"offers\": [{\"id\": 1, \"gpu_name\": \"RTX".to_vec()),
        "html" => reply(200, &[("content-type", "text/html")], b"<html><body>maintenance</body></html>".to_vec()),
        "empty" => reply(200, &[], Vec::new()),
        "wrong-shape" => reply(200, &[], b"{\"unexpected\": true}".to_vec()),
        "wrong-type" => reply(200, &[], b"{\"offers\": {\"a\": 1}, \"instances\": 7, \"data\": \"x\"}".to_vec()),
        "trailing" => {
            reply(200, &[], fixture("gpu-and-cloud/vast/vast-python-search-offers-json-then-error-line.json"))
        }
        "graphql-error" => {
            reply(200, &[], fixture("gpu-and-cloud/runpod/runpod-python-issue21-no-instances-available-error.json"))
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok()
        }
        "huge" => {
            // Valid JSON, 9 MiB: over the default 8 MiB cap.
            let mut body = b"{\"offers\": [], \"pad\": \"".to_vec();
            body.resize(body.len() + 9 * 1024 * 1024, b'x');
            body.extend_from_slice(b"\"}");
            reply(200, &[], body)
        }
        "leak-trailing" => reply(200, &[], format!("{{\"offers\": []}}\nkey {KEY} is not valid here").into_bytes()),
        "leak-graphql" => reply(200, &[], format!("{{\"errors\": [{{\"message\": \"bad key {KEY}\"}}]}}").into_bytes()),
        "leak-malformed" => reply(200, &[], format!("{{\"offers\": [\"{KEY}\" {KEY}").into_bytes()),
        "leak-vast-msg" => {
            reply(200, &[], format!("{{\"success\": false, \"msg\": \"key {KEY} unknown\"}}").into_bytes())
        }
        "leak-lambda-error" => reply(
            200,
            &[],
            format!("{{\"error\": {{\"code\": \"global/invalid-api-key\", \"message\": \"{KEY} invalid\"}}}}")
                .into_bytes(),
        ),
        _ => reply(404, &[], b"unknown scenario".to_vec()),
    }
}

/// The captured responses, by API route.
fn serve_ok(method: &Method, rest: &str, body: &[u8]) -> Response<Vec<u8>> {
    match (method.as_str(), rest) {
        ("GET", "/api/v0/bundles/") => reply(
            200,
            &[],
            wrapped("{\"offers\": ", "gpu-and-cloud/vast/vast-python-search-offers-2x-rtx3090-a.json", "}"),
        ),
        ("GET", "/api/v0/instances/") => {
            reply(200, &[], wrapped("{\"instances\": [", "gpu-and-cloud/vast/vast-python-show-instance-b.json", "]}"))
        }
        ("POST", "/graphql") => {
            let query = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("query").and_then(|q| q.as_str()).map(str::to_owned))
                .unwrap_or_default();
            if query.contains("gpuTypes") {
                reply(
                    200,
                    &[],
                    wrapped(
                        "{\"data\": {\"gpuTypes\": ",
                        "gpu-and-cloud/runpod/gpu-prices-gputypes-data-array-2025-06-21.json",
                        "}}",
                    ),
                )
            } else if query.contains("myself") {
                reply(200, &[], fixture("gpu-and-cloud/runpod/runpod-docs-graphql-myself-pods-runtime.json"))
            } else {
                reply(400, &[], b"{\"errors\":[{\"message\":\"unknown query\"}]}".to_vec())
            }
        }
        ("GET", "/api/v1/instance-types") => {
            reply(200, &[], fixture("cloud-stub/lambda/instance-types-v1.10.0-example.json"))
        }
        ("GET", "/api/v1/instances") => reply(200, &[], fixture("cloud-stub/lambda/instances-v1.10.0-example.json")),
        _ => reply(404, &[], b"no such route".to_vec()),
    }
}

/// A one-connection raw HTTP server whose answer has no Content-Length: 64 KiB chunks, 2 MiB in
/// all, so only the client's running count can stop it. Returns the base URL.
pub async fn chunked_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the request head (bounded: 64 KiB at most).
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65_536 {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..32 {
            let frame = format!("{:x}\r\n", chunk.len());
            if socket.write_all(frame.as_bytes()).await.is_err()
                || socket.write_all(&chunk).await.is_err()
                || socket.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
    });
    format!("http://{addr}")
}
