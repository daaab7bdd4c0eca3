//! The OpenAPI 3 document served at `GET /v1/openapi.json`: every route of the three listeners, its
//! parameters, bodies, statuses and the `{"code","message"}` error body. Built in code so it sits next to
//! the routes it describes; a contract test checks real responses against it.

use serde_json::{Value, json};

/// `$ref` to a schema in `components/schemas`.
fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A JSON response with the schema `name`.
fn json_body(description: &str, name: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema_ref(name) } } })
}

/// An error response (`ErrorBody`) listing the codes this status carries on this route.
fn error(codes: &str) -> Value {
    json!({
        "description": format!("Error; code is one of: {codes}"),
        "content": { "application/json": { "schema": schema_ref("ErrorBody") } }
    })
}

fn text_body(description: &str, media: &str) -> Value {
    json!({ "description": description, "content": { media: { "schema": { "type": "string" } } } })
}

fn query(name: &str, description: &str, required: bool) -> Value {
    json!({ "name": name, "in": "query", "required": required, "description": description,
            "schema": { "type": "integer", "format": "int64", "minimum": 0 } })
}

fn min_seq() -> Value {
    query(
        "min_seq",
        "Wait (bounded) until the log / read models have applied this seq; 503 not_caught_up otherwise",
        false,
    )
}

/// Errors every authenticated route of the API listener can return.
fn auth_errors(mut responses: Value) -> Value {
    if let Some(map) = responses.as_object_mut() {
        map.entry("403").or_insert_with(|| error("not_pinned, forbidden"));
        map.entry("405").or_insert_with(|| error("method_not_allowed"));
    }
    responses
}

fn json_request(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema_ref(name) } } })
}

/// The document.
pub fn document() -> Value {
    let reader = "Operators and auditors.";
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "hwledger API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The ledger of a small GPU fleet. The API listener requires mutual TLS with a fleet \
                certificate whose fingerprint is pinned in the ledger (403 not_pinned otherwise); the enrollment \
                listener is server-auth TLS; the dashboard listener is plain HTTP on loopback. Every non-2xx \
                response is an ErrorBody with a stable code. Request bodies must be application/json (415), at \
                most the configured limit (413, default 64 KiB), and may not carry unknown fields (400)."
        },
        "paths": {
            "/health": { "get": {
                "summary": "Liveness and the log head (any TLS peer; API and enrollment listeners).",
                "x-listeners": ["api", "enroll"],
                "responses": { "200": json_body("Healthy or degraded", "HealthResponse"), "405": error("method_not_allowed") }
            }},
            "/metrics": { "get": {
                "summary": format!("Prometheus / OpenMetrics text. {reader}"),
                "x-listeners": ["api"],
                "responses": auth_errors(json!({ "200": { "description": "Metrics: OpenMetrics 1.0 when the Accept header asks for it, else the Prometheus 0.0.4 text format",
                    "content": { "text/plain": { "schema": { "type": "string" } },
                                 "application/openmetrics-text": { "schema": { "type": "string" } } } } }))
            }},
            "/v1/openapi.json": { "get": {
                "summary": "This document.",
                "x-listeners": ["api"],
                "responses": auth_errors(json!({ "200": { "description": "OpenAPI 3 document",
                    "content": { "application/json": { "schema": { "type": "object", "required": ["openapi", "paths"] } } } } }))
            }},
            "/v1/whoami": { "get": {
                "summary": "The caller's identity as established from its certificate and pin.",
                "x-listeners": ["api"],
                "responses": auth_errors(json!({ "200": json_body("Identity", "WhoAmIResponse") }))
            }},
            "/v1/ca-bundle": { "get": {
                "summary": "The CA certificates trusted now (fetch after a CA rotation).",
                "x-listeners": ["api"],
                "responses": auth_errors(json!({ "200": json_body("CA bundle", "CaBundleResponse") }))
            }},
            "/v1/commands": { "post": {
                "summary": "Submit one command. Agents may only speak for their own device; auditors may not submit.",
                "x-listeners": ["api"],
                "requestBody": json_request("Submission"),
                "responses": auth_errors(json!({
                    "200": json_body("Accepted now, or a duplicate of an identical earlier submission", "CommandResponse"),
                    "400": error("malformed_json, unknown_field"),
                    "403": error("not_pinned, forbidden"),
                    "404": error("device_unknown, job_unknown, certificate_unknown"),
                    "409": error("duplicate_conflict, version_conflict"),
                    "413": error("body_too_large"),
                    "415": error("unsupported_media_type"),
                    "422": error("device_decommissioned, device_exists, job_exists, job_transition, vram_exceeded, invalid_command, certificate_exists, token_*"),
                    "503": error("storage_unavailable, ledger_broken, ledger_closed")
                }))
            }},
            "/v1/commands/batch": { "post": {
                "summary": "Submit up to 1000 commands in one group commit (an agent's outbox); one result per item.",
                "x-listeners": ["api"],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "array", "maxItems": 1000, "items": schema_ref("Submission") } } } },
                "responses": auth_errors(json!({
                    "200": json_body("Per-item results in order", "BatchResponse"),
                    "400": error("malformed_json, unknown_field (message names the item)"),
                    "413": error("body_too_large, batch_too_large"),
                    "415": error("unsupported_media_type"),
                    "503": error("ledger_closed")
                }))
            }},
            "/v1/events": { "get": {
                "summary": format!("A page of the log. {reader}"),
                "x-listeners": ["api"],
                "parameters": [
                    query("from", "First seq (default 1)", false),
                    query("to", "Last seq (default: head)", false),
                    query("limit", "Page size, 1-1000 (default 100)", false),
                    min_seq()
                ],
                "responses": auth_errors(json!({
                    "200": json_body("Events", "EventsPage"),
                    "400": error("invalid_query"),
                    "503": error("storage_unavailable, not_caught_up")
                }))
            }},
            "/v1/events/stream": { "get": {
                "summary": format!("Live Server-Sent Events, `id: <seq>`, `event: <type>`, data = EventBody JSON. \
                    Resumes after the Last-Event-ID header without gaps or duplicates; else from ?from= (default: new events only). {reader}"),
                "x-listeners": ["api"],
                "parameters": [
                    query("from", "First seq to send when no Last-Event-ID is given", false),
                    { "name": "Last-Event-ID", "in": "header", "required": false, "schema": { "type": "string" },
                      "description": "Seq of the last event received" }
                ],
                "responses": auth_errors(json!({
                    "200": text_body("Event stream", "text/event-stream"),
                    "400": error("invalid_query")
                }))
            }},
            "/v1/checkpoint": { "get": {
                "summary": format!("The latest signed checkpoint (C2SP signed note). {reader}"),
                "x-listeners": ["api"],
                "parameters": [min_seq()],
                "responses": auth_errors(json!({
                    "200": text_body("Signed note", "text/plain"),
                    "400": error("invalid_query"),
                    "404": error("no_checkpoint"),
                    "503": error("not_caught_up")
                }))
            }},
            "/v1/proof/inclusion": { "get": {
                "summary": format!("RFC 6962 inclusion proof of event `seq` in the tree of `size` events. {reader}"),
                "x-listeners": ["api"],
                "parameters": [query("seq", "The event", true), query("size", "Tree size (default: head)", false), min_seq()],
                "responses": auth_errors(json!({
                    "200": json_body("Proof", "InclusionProofResponse"),
                    "400": error("invalid_query, invalid_range"),
                    "503": error("storage_unavailable, not_caught_up")
                }))
            }},
            "/v1/proof/consistency": { "get": {
                "summary": format!("RFC 6962 consistency proof between tree sizes. {reader}"),
                "x-listeners": ["api"],
                "parameters": [query("from", "Older size", true), query("to", "Newer size (default: head)", false), min_seq()],
                "responses": auth_errors(json!({
                    "200": json_body("Proof", "ConsistencyProofResponse"),
                    "400": error("invalid_query, invalid_range"),
                    "503": error("storage_unavailable, not_caught_up")
                }))
            }},
            "/v1/devices": { "get": {
                "summary": format!("Devices (from the registry projection, or the ledger state without one). {reader}"),
                "x-listeners": ["api"],
                "parameters": [min_seq()],
                "responses": auth_errors(json!({
                    "200": json_body("Devices", "DevicesResponse"),
                    "400": error("invalid_query"),
                    "503": error("not_caught_up, read_model_unavailable")
                }))
            }},
            "/v1/devices/{id}": { "get": {
                "summary": "One device. Operators, auditors, and the device's own agent.",
                "x-listeners": ["api"],
                "parameters": [
                    { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } },
                    min_seq()
                ],
                "responses": auth_errors(json!({
                    "200": json_body("The device", "DeviceBody"),
                    "400": error("invalid_query"),
                    "404": error("device_unknown"),
                    "503": error("not_caught_up, read_model_unavailable")
                }))
            }},
            "/v1/telemetry": { "get": read_model_op("GPU telemetry: latest per GPU and bounded history.") },
            "/v1/jobs": { "get": read_model_op("Jobs and their state.") },
            "/v1/cost": { "get": read_model_op("Cost per device, backend and window.") },
            "/v1/projections": { "get": read_model_op("Where each read model stands (applied and persisted seq, version) and the BLAKE3 digest of its state, to compare with `hwledger replay --until SEQ`.") },
            "/v1/dashboard": { "get": {
                "summary": format!("The dashboard data as JSON. {reader}"),
                "x-listeners": ["api"],
                "parameters": [min_seq()],
                "responses": auth_errors(json!({
                    "200": json_body("Dashboard data", "OpenObject"),
                    "400": error("invalid_query"),
                    "503": error("not_caught_up, read_model_unavailable")
                }))
            }},
            "/v1/enroll": { "post": {
                "summary": "Enrollment listener only (server-auth TLS): spend a one-time bootstrap token for a certificate over the device's CSR.",
                "x-listeners": ["enroll"],
                "requestBody": json_request("EnrollRequest"),
                "responses": {
                    "200": json_body("Enrolled; the certificate is pinned", "EnrollResponse"),
                    "400": error("malformed_json, unknown_field, invalid_csr"),
                    "403": error("token_unknown"),
                    "405": error("method_not_allowed"),
                    "409": error("token_used"),
                    "410": error("token_expired"),
                    "413": error("body_too_large"),
                    "415": error("unsupported_media_type"),
                    "422": error("invalid_command, device_decommissioned, certificate_exists"),
                    "503": error("storage_unavailable, ledger_broken, ledger_closed")
                }
            }},
            "/dashboard": { "get": {
                "summary": "Dashboard listener only (plain HTTP on loopback): HTML, no JavaScript, refreshes every 5 s.",
                "x-listeners": ["dashboard"],
                "responses": { "200": text_body("Dashboard", "text/html"), "405": error("method_not_allowed"),
                               "503": error("read_model_unavailable") }
            }},
            "/snapshot.json": { "get": {
                "summary": "Dashboard listener only: the dashboard data as JSON.",
                "x-listeners": ["dashboard"],
                "responses": { "200": json_body("Dashboard data", "OpenObject"), "405": error("method_not_allowed"),
                               "503": error("read_model_unavailable") }
            }}
        },
        "components": { "schemas": schemas() }
    })
}

fn read_model_op(summary: &str) -> Value {
    json!({
        "summary": format!("{summary} Served by the projections; 503 read_model_unavailable without them. Operators and auditors."),
        "x-listeners": ["api"],
        "parameters": [min_seq()],
        "responses": auth_errors(json!({
            "200": json_body("Read model answer", "OpenObject"),
            "400": error("invalid_query"),
            "404": error("not_found"),
            "503": error("not_caught_up, read_model_unavailable")
        }))
    })
}

fn string() -> Value {
    json!({ "type": "string" })
}
fn int() -> Value {
    json!({ "type": "integer", "format": "int64" })
}
fn nullable_string() -> Value {
    json!({ "type": "string", "nullable": true })
}

fn schemas() -> Value {
    let receipt = json!({
        "type": "object", "additionalProperties": false,
        "required": ["command_id", "first_seq", "seq", "leaf_index", "hash", "stream", "stream_version"],
        "properties": {
            "command_id": string(), "first_seq": int(), "seq": int(), "leaf_index": int(),
            "hash": { "type": "string", "description": "chain hash, 64 hex digits" },
            "stream": string(), "stream_version": int()
        }
    });
    json!({
        "ErrorBody": {
            "type": "object", "additionalProperties": false, "required": ["code", "message"],
            "properties": { "code": string(), "message": string() }
        },
        "OpenObject": { "type": "object", "additionalProperties": true },
        "Submission": {
            "type": "object", "additionalProperties": false, "required": ["command_id", "command"],
            "properties": {
                "command_id": { "type": "string", "minLength": 1, "maxLength": 128, "description": "idempotency key" },
                "expected_version": { "type": "integer", "format": "int64", "nullable": true },
                "command": { "type": "object", "required": ["type"], "description":
                    "The engine's Command, tagged by `type`: enroll_device, register_device, record_telemetry, \
                     decommission_device, dispatch_job, start_job, complete_job, fail_job, quote_rental_price, \
                     set_device_rate, issue_certificate, revoke_certificate, create_bootstrap_token, \
                     redeem_bootstrap_token, pin_host_key, record_probe, observe_rental_instance. Unknown fields are refused.",
                    "properties": { "type": string() } }
            }
        },
        "Receipt": receipt,
        "CommandResponse": {
            "type": "object", "additionalProperties": false, "required": ["status", "receipt"],
            "properties": { "status": { "type": "string", "enum": ["accepted", "duplicate"] }, "receipt": schema_ref("Receipt") }
        },
        "BatchItemResult": {
            "type": "object", "required": ["status"],
            "description": "accepted / duplicate carry `receipt`; rejected carries `code` and `message`.",
            "properties": {
                "status": { "type": "string", "enum": ["accepted", "duplicate", "rejected"] },
                "receipt": schema_ref("Receipt"), "code": string(), "message": string()
            }
        },
        "BatchResponse": {
            "type": "object", "additionalProperties": false, "required": ["results"],
            "properties": { "results": { "type": "array", "items": schema_ref("BatchItemResult") } }
        },
        "HealthResponse": {
            "type": "object", "additionalProperties": false, "required": ["status", "head_seq"],
            "properties": { "status": { "type": "string", "enum": ["ok", "degraded"] }, "head_seq": int(), "broken": nullable_string() }
        },
        "WhoAmIResponse": {
            "type": "object", "additionalProperties": false, "required": ["role", "name", "fingerprint", "remote_addr"],
            "properties": {
                "role": { "type": "string", "enum": ["agent", "operator", "auditor"] }, "name": string(),
                "fingerprint": string(), "remote_addr": string(), "alpn": nullable_string()
            }
        },
        "CaBundleResponse": {
            "type": "object", "additionalProperties": false, "required": ["ca_pem"], "properties": { "ca_pem": string() }
        },
        "EventBody": {
            "type": "object", "additionalProperties": false,
            "required": ["seq", "hash", "recorded_at", "command_id", "actor", "stream", "stream_version", "type", "data"],
            "properties": {
                "seq": int(), "hash": string(), "recorded_at": int(), "command_id": string(),
                "actor": { "type": "string", "description": "agent:<device>, operator:<name>, auditor:<name> or system" },
                "stream": string(), "stream_version": int(), "type": string(),
                "data": { "type": "object", "additionalProperties": true }
            }
        },
        "EventsPage": {
            "type": "object", "additionalProperties": false, "required": ["events", "head_seq"],
            "properties": { "events": { "type": "array", "items": schema_ref("EventBody") }, "head_seq": int(),
                            "next_from": { "type": "integer", "format": "int64", "nullable": true } }
        },
        "InclusionProofResponse": {
            "type": "object", "additionalProperties": false, "required": ["seq", "leaf_index", "tree_size", "root", "proof"],
            "properties": { "seq": int(), "leaf_index": int(), "tree_size": int(),
                            "root": { "type": "string", "format": "byte" },
                            "proof": { "type": "array", "items": { "type": "string", "format": "byte" } } }
        },
        "ConsistencyProofResponse": {
            "type": "object", "additionalProperties": false, "required": ["from", "to", "to_root", "proof"],
            "properties": { "from": int(), "to": int(),
                            "from_root": { "type": "string", "format": "byte", "nullable": true },
                            "to_root": { "type": "string", "format": "byte" },
                            "proof": { "type": "array", "items": { "type": "string", "format": "byte" } } }
        },
        "DeviceBody": {
            "type": "object", "required": ["device_id"],
            "description": "Without projections, the ledger-state form below; the registry projection may add fields.",
            "properties": {
                "device_id": string(), "kind": {}, "status": string(),
                "gpus": { "type": "array", "items": { "type": "object" } }, "version": int(),
                "host_key": nullable_string(), "certificates": { "type": "array", "items": string() }
            }
        },
        "DevicesResponse": {
            "type": "object", "required": ["devices"],
            "properties": { "devices": { "type": "array", "items": schema_ref("DeviceBody") }, "as_of_seq": int() }
        },
        "EnrollRequest": {
            "type": "object", "additionalProperties": false, "required": ["token", "csr_pem"],
            "properties": { "token": string(), "csr_pem": string(), "hostname": nullable_string() }
        },
        "EnrollResponse": {
            "type": "object", "additionalProperties": false,
            "required": ["device_id", "cert_pem", "ca_pem", "fingerprint", "not_after", "receipt"],
            "properties": { "device_id": string(), "cert_pem": string(), "ca_pem": string(), "fingerprint": string(),
                            "not_after": int(), "receipt": schema_ref("Receipt") }
        }
    })
}
