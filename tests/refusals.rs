//! Issue #4's refusal matrix end to end: the real `hwledger serve` on 127.0.0.1:0, driven by real external
//! clients — curl and `openssl s_client` for the TLS and HTTP cases, a Rust HTTP/2 client (reqwest) for the
//! decommission-on-an-open-connection case — plus the positive paths (a heartbeat through curl with a bundle
//! from `hwledger enroll agent`, device listing, enrollment with a bootstrap token and an openssl-made CSR).
//!
//! One server serves every case (they are independent); the data directory is seeded offline first, since
//! the store belongs to one process at a time. Certificates with chosen validity come from the fleet CA
//! through `wire::pki` on a copy of the server's PKI directory (same CA key, a shifted clock); the foreign CA
//! is made with openssl. The observed outcome of every case is printed as a table:
//! `cargo test --test refusals -- --nocapture`.

mod support;

use std::path::Path;

use hwledger_wire::pki::{Pki, PkiOptions, Role, new_bootstrap_token, write_bundle};
use serde_json::{Value, json};
use support::{
    Bundle, CurlAnswer, Server, Table, copy_dir, curl, curl_get, curl_post_json, hw, hw_ok, now_ms, openssl,
    run_with_deadline, submit_offline, tool,
};
use time::{Duration, OffsetDateTime};

fn enroll_device(id: &str) -> Value {
    json!({"command_id": format!("enroll-{id}"), "command": {"type": "enroll_device", "device_id": id, "kind": "local"}})
}

fn heartbeat(command_id: &str, device: &str) -> Value {
    json!({"command_id": command_id, "command": {"type": "record_telemetry", "device_id": device, "sampled_at": now_ms(),
        "gpus": [{"index": 0, "vram_used_mib": 1024, "vram_total_mib": 24576, "utilization_pct": 35.0,
                  "temperature_c": 51.0, "power_w": 180.0}]}})
}

/// Issues a bundle with `hwledger --json enroll ROLE NAME --out DIR` (offline, pinned in the ledger).
fn enroll_bundle(data: &Path, role: &str, name: &str, out: &Path) -> Bundle {
    let out = out.to_str().expect("utf-8 path");
    Bundle::from_enroll_json(&hw_ok(data, &["--json", "enroll", role, name, "--out", out], b""))
}

/// A bundle of `cert` (issued by the fleet CA on a PKI copy) trusting the fleet CA bundle `ca_pem`.
fn write_issued(dir: &Path, cert: &hwledger_wire::pki::IssuedCert, ca_pem: &str) -> Bundle {
    let paths = write_bundle(dir, cert, ca_pem).expect("write bundle");
    Bundle { ca: paths.ca, cert: paths.cert, key: paths.key.expect("issued with a key") }
}

/// The ledger head as the operator sees it (`GET /health`), to show a refusal appended nothing.
fn head(server: &Server) -> u64 {
    let a = curl_get(&server.operator, &server.url("/health"));
    a.json().and_then(|j| j["head_seq"].as_u64()).unwrap_or_else(|| panic!("health: {a:?}"))
}

/// Records an HTTP case: the status and, for an error, the JSON `code` (the body must be exactly
/// `{code, message}`).
fn http_case(t: &mut Table, case: &str, a: &CurlAnswer, status: u16, code: &str) {
    let shape_ok = a.json().is_some_and(|j| {
        j["code"].is_string() && j["message"].is_string() && j.as_object().map(|o| o.len()) == Some(2)
    });
    let ok = a.exit == Some(0) && a.status == status && a.code().as_deref() == Some(code) && shape_ok;
    t.record(case, "curl", &format!("{status} {code}"), a.outcome(), ok);
}

/// Records a successful HTTP case: 200 and `holds` (what the body must show, described by `what`).
fn ok_case(t: &mut Table, case: &str, a: &CurlAnswer, what: &str, holds: bool) {
    let ok = a.exit == Some(0) && a.status == 200 && holds;
    let expected = if what.is_empty() { "200".to_owned() } else { format!("200, {what}") };
    let observed = if ok && !what.is_empty() { format!("200, {what}") } else { a.outcome() };
    t.record(case, "curl", &expected, observed, ok);
}

/// `ok_case` for a command submission: 200 with status `accepted`.
fn accepted_case(t: &mut Table, case: &str, a: &CurlAnswer) {
    let accepted = a.json().is_some_and(|j| j["status"] == "accepted" && j["receipt"]["seq"].is_u64());
    ok_case(t, case, a, "accepted", accepted);
}

/// A case whose TLS handshake must fail, tried four ways: curl with its defaults (HTTP/2 over TLS 1.3: the
/// server's alert comes after curl's side of the handshake, so only "no HTTP response" is certain), curl
/// limited to TLS 1.2 (the alert ends the handshake: curl's exit code and message are checked — for a
/// `certificate_expired` alert curl 7.88 says "SSL certificate verification failed", exit 60, as if the
/// server's certificate were at fault), `openssl s_client` over TLS 1.3 (the alert number is checked), and
/// the server's log (the exact reason).
#[derive(Debug)]
struct HandshakeCase<'a> {
    /// The row's name.
    case: &'a str,
    /// The client certificate presented, if any.
    identity: Option<&'a Bundle>,
    /// curl's exit code and message over TLS 1.2.
    curl_tls12: (i32, &'a str),
    /// The TLS alert `openssl s_client` reports over TLS 1.3.
    alert: u8,
    /// What the server logs as the reason.
    reason: &'a str,
}

/// Runs the four attempts of a [`HandshakeCase`] (trusting `ca`) and records them.
fn handshake_refused(t: &mut Table, server: &Server, ca: &Path, c: HandshakeCase<'_>) {
    let HandshakeCase { case, identity, curl_tls12, alert: alert_number, reason } = c;
    let before = server.log_count(reason);
    let mut base = match identity {
        Some(b) => b.curl_args(),
        None => vec!["--cacert".into(), ca.display().to_string()],
    };
    let mut default = base.clone();
    default.push(server.url("/health"));
    let a = curl(&default);
    t.record(case, "curl (h2, TLS 1.3)", "refused: no HTTP response", a.outcome(), a.exit != Some(0) && a.status == 0);
    base.extend(["--tls-max".into(), "1.2".into(), server.url("/health")]);
    let b = curl(&base);
    let (exit, message) = curl_tls12;
    let ok = b.exit == Some(exit) && b.status == 0 && b.stderr.contains(message);
    t.record(case, "curl (TLS 1.2)", &format!("handshake fails: exit {exit}, {message}"), b.outcome(), ok);
    s_client_refused(t, case, &s_client(server, ca, identity, "-tls1_3"), alert_number);
    let (ok, line) = server.log_contains_eventually_n(reason, before + 3);
    t.record(case, "server log", &format!("reason: {reason}"), line, ok);
}

/// `openssl s_client` sending `GET /health` over HTTP/1.1; returns everything it printed.
fn s_client(server: &Server, ca: &Path, identity: Option<&Bundle>, tls: &str) -> (Option<i32>, String) {
    let openssl = tool("openssl", "openssl");
    let connect = format!("127.0.0.1:{}", server.api.port());
    let mut args: Vec<String> = ["s_client", "-connect", &connect, "-servername", "localhost", "-verify_return_error"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(["-CAfile".into(), ca.display().to_string(), "-alpn".into(), "http/1.1".into(), "-ign_eof".into()]);
    args.push(tls.to_owned());
    if let Some(b) = identity {
        args.extend(["-cert".into(), b.cert.display().to_string(), "-key".into(), b.key.display().to_string()]);
    }
    let request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let f = run_with_deadline(&openssl, &args, request, support::DEADLINE);
    (f.code(), format!("{}{}", f.stdout, f.stderr))
}

/// Records an `openssl s_client` (TLS 1.3) case that must fail with alert `number` and never see HTTP.
fn s_client_refused(t: &mut Table, case: &str, out: &(Option<i32>, String), number: u8) {
    let (code, text) = out;
    let needle = format!("SSL alert number {number}");
    let ok = *code != Some(0) && text.contains(&needle) && !text.contains("HTTP/1.1");
    // `…:ssl3_read_bytes:tlsv13 alert certificate required:…:SSL alert number 116` → the readable parts.
    let observed = text
        .lines()
        .find(|l| l.contains("SSL alert number"))
        .map(|l| {
            let what = l.split(':').find(|p| p.contains(" alert ")).unwrap_or("alert");
            let n = l.rsplit("SSL alert number ").next().unwrap_or("?");
            format!("{what} ({n})")
        })
        .unwrap_or_else(|| "no alert printed".to_owned());
    t.record(case, "openssl s_client (TLS 1.3)", &format!("handshake fails: alert {number}"), observed, ok);
}

/// `hwledger_connections_accepted_total{listener="api"}` read through `client`.
async fn accepted_connections(client: &reqwest::Client, url: &str) -> u64 {
    let text = client.get(url).send().await.expect("GET /metrics").text().await.expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix("hwledger_connections_accepted_total{listener=\"api\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accepted-connections metric in:\n{text}"))
}

/// The decommission case with one HTTP/2 connection held open by a Rust client.
fn decommission_on_open_connection(t: &mut Table, server: &Server, agent: &Bundle) {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let ca = read(&agent.ca);
    let timeout = std::time::Duration::from_secs(15);
    let agent_client =
        hwledger_wire::client_tls::build_client(&ca, Some((&read(&agent.cert), &read(&agent.key))), timeout)
            .expect("agent client");
    let op = &server.operator;
    let operator = hwledger_wire::client_tls::build_client(&ca, Some((&read(&op.cert), &read(&op.key))), timeout)
        .expect("operator client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let whoami = |c: reqwest::Client| {
            let url = server.url("/v1/whoami");
            async move { c.get(url).send().await.expect("whoami").json::<Value>().await.expect("whoami json") }
        };
        let first = whoami(agent_client.clone()).await;
        let second = whoami(agent_client.clone()).await;
        let one_h2_connection = first["alpn"] == "h2" && first["remote_addr"] == second["remote_addr"];
        let hb = agent_client.post(server.url("/v1/commands")).json(&heartbeat("gpu-4-hb-1", "gpu-4")).send().await;
        let hb = hb.expect("first heartbeat").status().as_u16();
        let accepted_before = accepted_connections(&operator, &server.url("/metrics")).await;
        let decommission = json!({"command_id": "decommission-gpu-4",
            "command": {"type": "decommission_device", "device_id": "gpu-4", "reason": "retired"}});
        let d = operator.post(server.url("/v1/commands")).json(&decommission).send().await.expect("decommission");
        let d = d.status().as_u16();
        let refused =
            agent_client.post(server.url("/v1/commands")).json(&heartbeat("gpu-4-hb-2", "gpu-4")).send().await;
        let refused = refused.expect("heartbeat after decommission");
        let status = refused.status().as_u16();
        let body: Value = refused.json().await.unwrap_or(Value::Null);
        let accepted_after = accepted_connections(&operator, &server.url("/metrics")).await;
        let same_connection = accepted_after == accepted_before;
        let code = body["code"].as_str().unwrap_or("?");
        let observed = format!(
            "before: {hb} on {} {}; decommission {d}; next request {status} {code} on the same connection: {}",
            first["alpn"].as_str().unwrap_or("?"),
            first["remote_addr"].as_str().unwrap_or("?"),
            if same_connection { "yes (no new connection accepted)" } else { "NO" }
        );
        let ok = one_h2_connection && hb == 200 && d == 200 && status == 403 && code == "not_pinned" && same_connection;
        t.record(
            "decommissioned while its HTTP/2 connection stays open",
            "reqwest (h2)",
            "200, then 403 not_pinned on the same connection",
            observed,
            ok,
        );
    });
}

#[test]
fn refusal_matrix_end_to_end() {
    // Fail early and clearly if a client is missing.
    let _ = (tool("curl", "curl"), tool("openssl", "openssl"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = root.join("data");

    // Offline seed: devices, agent and auditor bundles pinned by `hwledger enroll`.
    submit_offline(&data, &["gpu-1", "gpu-2", "gpu-3", "gpu-4"].map(enroll_device));
    let agent1 = enroll_bundle(&data, "agent", "gpu-1", &root.join("agent-gpu-1"));
    let agent3 = enroll_bundle(&data, "agent", "gpu-3", &root.join("agent-gpu-3"));
    let agent4 = enroll_bundle(&data, "agent", "gpu-4", &root.join("agent-gpu-4"));
    let auditor = enroll_bundle(&data, "auditor", "audrey", &root.join("auditor"));

    let server = Server::start(&data, true);
    let op = server.operator.clone();
    let commands = server.url("/v1/commands");
    let mut t = Table::default();

    // A token that expires in 5 s (a margin for a loaded machine), created first so that its expiry has passed by the end.
    let (short_token, short_hash) = new_bootstrap_token().expect("token");
    let short_expiry = now_ms() + 5_000;
    let create_short = json!({"command_id": "token-short", "command": {"type": "create_bootstrap_token",
        "token_hash": short_hash.to_string(), "device_id": "gpu-6", "expires_at": short_expiry}});
    let created = curl_post_json(Some(&op), &op.ca, &commands, &create_short);
    accepted_case(&mut t, "operator creates a bootstrap token (5 s)", &created);

    // Positive paths.
    let hb = curl_post_json(Some(&agent1), &agent1.ca, &commands, &heartbeat("gpu-1-hb-1", "gpu-1"));
    let own_stream = hb.json().is_some_and(|j| j["status"] == "accepted" && j["receipt"]["stream"] == "device/gpu-1");
    ok_case(&mut t, "heartbeat with the `enroll agent` bundle", &hb, "accepted on device/gpu-1", own_stream);
    let devices = curl_get(&op, &server.url("/v1/devices"));
    let listed = devices.json().and_then(|j| j["devices"].as_array().map(|d| d.len())) == Some(4);
    ok_case(&mut t, "operator lists devices", &devices, "4 devices", listed);
    let (code, text) = s_client(&server, &agent1.ca, Some(&agent1), "-tls1_3");
    let ok = code == Some(0) && text.contains("HTTP/1.1 200");
    let observed = text.lines().find(|l| l.starts_with("HTTP/1.1")).unwrap_or("no HTTP response").to_owned();
    t.record("agent certificate, GET /health", "openssl s_client", "HTTP/1.1 200", observed, ok);

    // No client certificate.
    let ca = op.ca.clone();
    let no_cert = "no client certificate";
    let required = (98, "alert certificate required");
    let reason = "peer sent no certificates";
    handshake_refused(
        &mut t,
        &server,
        &ca,
        HandshakeCase { case: no_cert, identity: None, curl_tls12: required, alert: 116, reason },
    );

    // A certificate from another CA (made with openssl), naming a real device.
    let foreign = foreign_ca_bundle(root, &op.ca);
    let unknown_ca = (35, "alert unknown ca");
    handshake_refused(
        &mut t,
        &server,
        &ca,
        HandshakeCase {
            case: "certificate from another CA",
            identity: Some(&foreign),
            curl_tls12: unknown_ca,
            alert: 48,
            reason: "UnknownIssuer",
        },
    );

    // Fleet-CA certificates with chosen validity: from a copy of the PKI directory with a shifted clock.
    let copy = root.join("pki-copy");
    copy_dir(&data.join("pki"), &copy);
    let ca_pem = std::fs::read_to_string(&op.ca).expect("read CA bundle");
    let now = OffsetDateTime::now_utc();
    let role = Role::agent("gpu-1").expect("role");
    let issue_at = |at: OffsetDateTime, days: i64| {
        let pki = Pki::init(&copy, PkiOptions::default(), at).expect("PKI copy");
        pki.issue(&role, Duration::days(days), at).expect("issue")
    };
    let expired = write_issued(&root.join("expired"), &issue_at(now - Duration::days(30), 1), &ca_pem);
    let not_yet = write_issued(&root.join("not-yet"), &issue_at(now + Duration::days(30), 10), &ca_pem);
    let unpinned = write_issued(&root.join("unpinned"), &issue_at(now, 1), &ca_pem);
    let expired_alert = (60, "SSL certificate verification failed");
    handshake_refused(
        &mut t,
        &server,
        &ca,
        HandshakeCase {
            case: "expired fleet certificate",
            identity: Some(&expired),
            curl_tls12: expired_alert,
            alert: 45,
            reason: "certificate expired",
        },
    );
    let not_yet_case = "not-yet-valid fleet certificate";
    handshake_refused(
        &mut t,
        &server,
        &ca,
        HandshakeCase {
            case: not_yet_case,
            identity: Some(&not_yet),
            curl_tls12: expired_alert,
            alert: 45,
            reason: "certificate not valid yet",
        },
    );
    let seq = head(&server);
    let u = curl_post_json(Some(&unpinned), &unpinned.ca, &commands, &heartbeat("unpinned-1", "gpu-1"));
    http_case(&mut t, "fleet certificate never pinned", &u, 403, "not_pinned");
    ok_case(
        &mut t,
        "fleet certificate never pinned, GET /health",
        &curl_get(&unpinned, &server.url("/health")),
        "",
        true,
    );

    // Revoked: accepted, revoked by the operator, refused on the next request.
    let fp = fingerprint(&agent3);
    let before_revocation = curl_post_json(Some(&agent3), &agent3.ca, &commands, &heartbeat("gpu-3-hb-1", "gpu-3"));
    accepted_case(&mut t, "agent gpu-3 heartbeat before revocation", &before_revocation);
    let revoke = json!({"command_id": "revoke-gpu-3", "command": {"type": "revoke_certificate", "fingerprint": fp, "reason": "laptop stolen"}});
    accepted_case(
        &mut t,
        "operator revokes gpu-3's certificate",
        &curl_post_json(Some(&op), &op.ca, &commands, &revoke),
    );
    let seq_revoked = head(&server);
    let r = curl_post_json(Some(&agent3), &agent3.ca, &commands, &heartbeat("gpu-3-hb-2", "gpu-3"));
    http_case(&mut t, "revoked certificate", &r, 403, "not_pinned");

    decommission_on_open_connection(&mut t, &server, &agent4);
    let seq_decommissioned = head(&server);

    // Agents speak only for their own device, and only on agent routes.
    let other = curl_post_json(Some(&agent1), &agent1.ca, &commands, &heartbeat("gpu-1-for-gpu-2", "gpu-2"));
    http_case(&mut t, "agent gpu-1 posts telemetry for gpu-2", &other, 403, "forbidden");
    http_case(
        &mut t,
        "agent calls GET /v1/devices (operator/auditor route)",
        &curl_get(&agent1, &server.url("/v1/devices")),
        403,
        "forbidden",
    );
    http_case(
        &mut t,
        "agent calls GET /v1/events (operator/auditor route)",
        &curl_get(&agent1, &server.url("/v1/events")),
        403,
        "forbidden",
    );
    let decommission =
        json!({"command_id": "agent-decommissions", "command": {"type": "decommission_device", "device_id": "gpu-2"}});
    http_case(
        &mut t,
        "agent submits decommission_device (operator command)",
        &curl_post_json(Some(&agent1), &agent1.ca, &commands, &decommission),
        403,
        "forbidden",
    );
    let own = curl_get(&agent1, &server.url("/v1/devices/gpu-1"));
    ok_case(&mut t, "agent reads its own device", &own, "gpu-1", own.json().is_some_and(|j| j["device_id"] == "gpu-1"));
    http_case(
        &mut t,
        "agent reads another device",
        &curl_get(&agent1, &server.url("/v1/devices/gpu-2")),
        403,
        "forbidden",
    );
    let events = curl_get(&auditor, &server.url("/v1/events"));
    ok_case(&mut t, "auditor reads events", &events, "events", events.json().is_some_and(|j| j["events"].is_array()));
    http_case(
        &mut t,
        "auditor submits a command",
        &curl_post_json(Some(&auditor), &auditor.ca, &commands, &heartbeat("auditor-hb", "gpu-1")),
        403,
        "forbidden",
    );
    // Refusals decided from the headers alone, while curl's body is still on its way: every one must get
    // the JSON error, not an HTTP/2 stream reset (curl: "Stream error in the HTTP/2 framing layer").
    let early: Vec<CurlAnswer> = (0..20)
        .map(|i| {
            curl_post_json(Some(&op), &op.ca, &server.url("/v1/devices"), &heartbeat(&format!("early-{i}"), "gpu-1"))
        })
        .collect();
    let refused_cleanly =
        early.iter().filter(|a| a.status == 405 && a.code().as_deref() == Some("method_not_allowed")).count();
    let first_other = early.iter().find(|a| a.status != 405).map(CurlAnswer::outcome);
    t.record(
        "20 POSTs refused before their body is read",
        "curl (h2)",
        "405 method_not_allowed, 20 of 20",
        format!("{refused_cleanly} of 20{}", first_other.map(|o| format!("; other: {o}")).unwrap_or_default()),
        refused_cleanly == 20,
    );
    // Between the measurements only accepted commands append: one heartbeat and the revocation, then one
    // heartbeat and the decommission; every refusal in between and after appended nothing.
    let unchanged =
        seq_revoked == seq + 2 && seq_decommissioned == seq_revoked + 2 && head(&server) == seq_decommissioned;
    t.record(
        "refusals append nothing",
        "curl",
        "head unchanged by every refusal",
        format!("head {}", head(&server)),
        unchanged,
    );

    // Enrollment with a bootstrap token: openssl makes the key and CSR; the key never leaves this directory.
    let (token, hash) = new_bootstrap_token().expect("token");
    let create = json!({"command_id": "token-gpu-5", "command": {"type": "create_bootstrap_token",
        "token_hash": hash.to_string(), "device_id": "gpu-5", "expires_at": now_ms() + 3_600_000}});
    accepted_case(
        &mut t,
        "operator creates a bootstrap token (1 h)",
        &curl_post_json(Some(&op), &op.ca, &commands, &create),
    );
    let device5 = root.join("gpu-5");
    let csr = make_csr(&device5, "gpu-5");
    let enroll_url = server.enroll_url("/v1/enroll");
    let redeem = curl_post_json(
        None,
        &op.ca,
        &enroll_url,
        &json!({"token": token.as_str(), "csr_pem": csr, "hostname": "gpu-5.lan"}),
    );
    let enrolled = redeem.json().filter(|j| j["device_id"] == "gpu-5");
    ok_case(
        &mut t,
        "redeem the token with an openssl CSR (no client cert)",
        &redeem,
        "certificate for gpu-5",
        enrolled.is_some(),
    );
    if let Some(j) = enrolled {
        std::fs::write(device5.join("gpu-5.crt"), j["cert_pem"].as_str().unwrap_or_default()).expect("write cert");
        std::fs::write(device5.join("ca.crt"), j["ca_pem"].as_str().unwrap_or_default()).expect("write CA");
        let own =
            Bundle { ca: device5.join("ca.crt"), cert: device5.join("gpu-5.crt"), key: device5.join("gpu-5.key") };
        let hb = curl_post_json(Some(&own), &own.ca, &commands, &heartbeat("gpu-5-hb-1", "gpu-5"));
        accepted_case(&mut t, "heartbeat with the token-enrolled certificate", &hb);
    }
    let again = curl_post_json(
        None,
        &op.ca,
        &enroll_url,
        &json!({"token": token.as_str(), "csr_pem": make_csr(&root.join("gpu-5-again"), "gpu-5")}),
    );
    http_case(&mut t, "reused bootstrap token", &again, 409, "token_used");
    let unknown = curl_post_json(None, &op.ca, &enroll_url, &json!({"token": "not-a-token", "csr_pem": csr}));
    http_case(&mut t, "unknown bootstrap token", &unknown, 403, "token_unknown");
    // Bounded wait for the short token's expiry (at most its 5 s lifetime).
    while now_ms() <= short_expiry + 100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let late = curl_post_json(
        None,
        &op.ca,
        &enroll_url,
        &json!({"token": short_token.as_str(), "csr_pem": make_csr(&root.join("gpu-6"), "gpu-6")}),
    );
    http_case(&mut t, "expired bootstrap token", &late, 410, "token_expired");

    let log = server.stop();
    // Offline afterwards: the ledger still verifies end to end.
    let verify = hw(&data, &["verify"], b"");
    t.record(
        "ledger verifies after the matrix",
        "hwledger verify",
        "exit 0",
        verify.code().map_or("killed".to_owned(), |c| format!("exit {c}")),
        verify.code() == Some(0),
    );
    if !verify.success() {
        eprintln!("verify:\n{}{}\nserver log:\n{log}", verify.stdout, verify.stderr);
    }
    t.finish("Refusal matrix (issue #4), hwledger serve on 127.0.0.1:0");
}

/// SHA-256 of a bundle's certificate (hex), with openssl.
fn fingerprint(b: &Bundle) -> String {
    let cert = b.cert.to_str().expect("utf-8 path");
    let out = openssl(&["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"]).stdout;
    let hex = out.trim().rsplit_once('=').map(|(_, h)| h.replace(':', "").to_ascii_lowercase());
    hex.filter(|h| h.len() == 64).unwrap_or_else(|| panic!("openssl fingerprint output {out:?}"))
}

/// A P-256 key (0600, never sent) and a CSR for `name` in `dir`, with openssl; returns the CSR PEM.
fn make_csr(dir: &Path, name: &str) -> String {
    std::fs::create_dir_all(dir).expect("create dir");
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let (k, c) = (key.to_str().expect("utf-8"), csr.to_str().expect("utf-8"));
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", k]);
    openssl(&["req", "-new", "-key", k, "-subj", &format!("/CN={name}"), "-out", c]);
    std::fs::read_to_string(&csr).expect("read CSR")
}

/// Another CA and an agent certificate for gpu-1 from it, both made with openssl (the fleet CA bundle is the
/// trust file, so only the client side is foreign).
fn foreign_ca_bundle(root: &Path, fleet_ca: &Path) -> Bundle {
    let dir = root.join("foreign");
    std::fs::create_dir_all(&dir).expect("create dir");
    let p = |n: &str| dir.join(n).to_str().expect("utf-8").to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
        "-days",
        "30",
        "-subj",
        "/O=elsewhere/CN=Another CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    make_csr(&dir, "agent");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=URI:hwledger:agent:gpu-1\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\n",
    )
    .expect("write ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("agent.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-set_serial",
        "7",
        "-days",
        "7",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("agent.crt"),
    ]);
    Bundle { ca: fleet_ca.to_path_buf(), cert: dir.join("agent.crt"), key: dir.join("agent.key") }
}
