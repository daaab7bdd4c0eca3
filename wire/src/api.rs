//! The HTTP API's request and response bodies, shared by the server and its clients.
//!
//! These are wire types: their JSON shape is a contract with agents, operators and auditors, and is
//! described by the server's OpenAPI document (`GET /v1/openapi.json`). They are deliberately separate
//! from the engine's stored events (a storage format) and convert from them explicitly. Command bodies
//! are the engine's [`Submission`] as is (it already refuses unknown fields). Every request body refuses
//! unknown fields; every error is an [`ErrorBody`].

use serde::{Deserialize, Serialize};

use hwledger_engine::event::Actor;
use hwledger_engine::ledger::CommittedEvent;
use hwledger_engine::replay::LoggedEvent;
use hwledger_engine::{EventRecord, Receipt};

pub use hwledger_engine::Submission;

/// Most submissions accepted in one `POST /v1/commands/batch` (an agent's outbox drains in chunks).
pub const MAX_BATCH: usize = 1000;

/// Default and largest page of `GET /v1/events`.
pub const DEFAULT_EVENTS_LIMIT: u64 = 100;
/// See [`DEFAULT_EVENTS_LIMIT`]: a page is bounded so one request cannot pull the whole log into memory.
pub const MAX_EVENTS_LIMIT: u64 = 1000;

/// The body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable machine-readable code (e.g. `not_pinned`, `device_unknown`); clients branch on it.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
}

/// Whether a command was appended now or had been appended before under the same command id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Appended by this request; durable.
    Accepted,
    /// The same command id and body were seen before: the original receipt, nothing appended.
    Duplicate,
}

/// Proof that a command's events are in the log (the engine's receipt, hashes in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// The command's idempotency key.
    pub command_id: String,
    /// Seq of the first event the command appended.
    pub first_seq: u64,
    /// Seq of the last event the command appended.
    pub seq: u64,
    /// Merkle leaf index of the last event (`seq - 1`).
    pub leaf_index: u64,
    /// Chain hash after the last event, 64 lowercase hex digits.
    pub hash: String,
    /// Stream of the last event (`device/<id>`, `job/<id>`, `pki`, ...).
    pub stream: String,
    /// That stream's version after the command.
    pub stream_version: u64,
}

impl From<&Receipt> for ReceiptBody {
    fn from(r: &Receipt) -> ReceiptBody {
        ReceiptBody {
            command_id: r.command_id.clone(),
            first_seq: r.first_seq,
            seq: r.seq,
            leaf_index: r.leaf_index,
            hash: hex::encode(r.hash),
            stream: r.stream.clone(),
            stream_version: r.stream_version,
        }
    }
}

/// `200` answer to `POST /v1/commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResponse {
    /// Appended now, or a duplicate of an earlier identical submission.
    pub status: CommandStatus,
    /// The receipt (the original one for a duplicate).
    pub receipt: ReceiptBody,
}

/// The outcome of one submission of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchItemResult {
    /// Appended by this request.
    Accepted {
        /// Its receipt.
        receipt: ReceiptBody,
    },
    /// Seen before with the same body.
    Duplicate {
        /// The original receipt.
        receipt: ReceiptBody,
    },
    /// Refused by a rule, or not durable because storage failed; nothing appended.
    Rejected {
        /// Stable code, as in [`ErrorBody::code`].
        code: String,
        /// Human message.
        message: String,
    },
}

/// `200` answer to `POST /v1/commands/batch`: one result per submission, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchResponse {
    /// Results in the order of the submitted array.
    pub results: Vec<BatchItemResult>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthResponse {
    /// `ok`, or `degraded` when the ledger refuses writes.
    pub status: String,
    /// Last seq of the log.
    pub head_seq: u64,
    /// Why the ledger refuses writes, if it does.
    #[serde(default)]
    pub broken: Option<String>,
    /// Why the ledger cannot serve at all right now (its store failed and is not reopened yet), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// `GET /v1/whoami`: who the server thinks the caller is (from the certificate and its pin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoAmIResponse {
    /// `agent`, `operator` or `auditor`.
    pub role: String,
    /// The device id or person name.
    pub name: String,
    /// SHA-256 of the client certificate, hex.
    pub fingerprint: String,
    /// The peer address as the server sees it (shows whether requests share a connection).
    pub remote_addr: String,
    /// The negotiated ALPN protocol (`h2` or `http/1.1`), if any.
    #[serde(default)]
    pub alpn: Option<String>,
}

/// One event as served by `GET /v1/events` and the SSE stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// Global position in the log, gapless from 1.
    pub seq: u64,
    /// Chain hash after this event, hex.
    pub hash: String,
    /// When it was recorded (unix ms, ledger clock).
    pub recorded_at: i64,
    /// The command that produced it.
    pub command_id: String,
    /// Who asked: `agent:<device>`, `operator:<name>`, `auditor:<name>` or `system`.
    pub actor: String,
    /// The event's stream.
    pub stream: String,
    /// Version of that stream after this event.
    pub stream_version: u64,
    /// The event type (`telemetry_recorded`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's fields.
    pub data: serde_json::Value,
}

impl EventBody {
    /// Converts a stored record (with its seq and chain hash) to its wire form.
    pub fn from_record(seq: u64, hash: &[u8; 32], record: &EventRecord) -> EventBody {
        let event_type = record.event.type_name();
        // The engine's serde form is `{"<type>": {fields}}`; the wire form puts the type beside the fields.
        let data = match serde_json::to_value(&record.event) {
            Ok(serde_json::Value::Object(mut map)) if map.len() == 1 => {
                map.remove(event_type).unwrap_or(serde_json::Value::Null)
            }
            Ok(other) => other,
            Err(e) => serde_json::json!({ "unrepresentable": e.to_string() }),
        };
        EventBody {
            seq,
            hash: hex::encode(hash),
            recorded_at: record.recorded_at,
            command_id: record.command_id.clone(),
            actor: actor_string(&record.actor),
            stream: record.event.stream(),
            stream_version: record.stream_version,
            event_type: event_type.to_owned(),
            data,
        }
    }
}

impl From<&LoggedEvent> for EventBody {
    fn from(e: &LoggedEvent) -> EventBody {
        EventBody::from_record(e.seq, &e.hash, &e.record)
    }
}

impl From<&CommittedEvent> for EventBody {
    fn from(e: &CommittedEvent) -> EventBody {
        EventBody::from_record(e.seq, &e.hash, &e.record)
    }
}

/// `agent:<device>`, `operator:<name>`, `auditor:<name>` or `system`.
pub fn actor_string(actor: &Actor) -> String {
    match actor {
        Actor::Agent(d) => format!("agent:{d}"),
        Actor::Operator(n) => format!("operator:{n}"),
        Actor::Auditor(n) => format!("auditor:{n}"),
        Actor::System => "system".to_owned(),
    }
}

/// `GET /v1/events`: one page of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsPage {
    /// The events, in seq order.
    pub events: Vec<EventBody>,
    /// Last seq of the log when the page was read.
    pub head_seq: u64,
    /// Where the next page starts, when the requested range continues beyond this page.
    #[serde(default)]
    pub next_from: Option<u64>,
}

/// `GET /v1/proof/inclusion`: RFC 6962 inclusion proof, hashes base64 (standard alphabet, padded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProofResponse {
    /// The event's seq.
    pub seq: u64,
    /// Its Merkle leaf index (`seq - 1`).
    pub leaf_index: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// The root of that tree, base64.
    pub root: String,
    /// The audit path, leaf to root, base64.
    pub proof: Vec<String>,
}

/// `GET /v1/proof/consistency`: RFC 6962 consistency proof, hashes base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProofResponse {
    /// The older tree size.
    pub from: u64,
    /// The newer tree size.
    pub to: u64,
    /// Root of the older tree, base64 (absent for size 0).
    #[serde(default)]
    pub from_root: Option<String>,
    /// Root of the newer tree, base64.
    pub to_root: String,
    /// The proof, base64.
    pub proof: Vec<String>,
}

/// `GET /v1/ca-bundle`: the CA certificates trusted now (agents refresh it after a CA rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaBundleResponse {
    /// Concatenated PEM certificates.
    pub ca_pem: String,
}

/// `POST /v1/enroll` body (enrollment listener, no client certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time bootstrap token given to the device by an operator.
    pub token: String,
    /// A PEM PKCS#10 CSR made with the device's own key (the key never leaves the device).
    pub csr_pem: String,
    /// The device's hostname, recorded if the token enrolls a new device.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// `200` answer to `POST /v1/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The device the certificate speaks for (from the token, never from the request).
    pub device_id: String,
    /// The signed agent certificate, PEM.
    pub cert_pem: String,
    /// The CA bundle to trust, PEM.
    pub ca_pem: String,
    /// SHA-256 of the certificate, hex: now pinned in the ledger.
    pub fingerprint: String,
    /// Certificate expiry, unix ms.
    pub not_after: i64,
    /// The receipt of the redemption.
    pub receipt: ReceiptBody,
}

/// A device as the engine's decision state knows it (fallback until the projections serve devices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    /// Device id.
    pub device_id: String,
    /// How it is reached (`local`, `{"ssh":{..}}`, `{"rental":{..}}`).
    pub kind: serde_json::Value,
    /// `enrolled`, `active` or `decommissioned`.
    pub status: String,
    /// GPU inventory.
    pub gpus: Vec<serde_json::Value>,
    /// Version of the `device/<id>` stream.
    pub version: u64,
    /// Pinned SSH host key, if any.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Fingerprints (hex) of the device's pinned, unrevoked agent certificates.
    pub certificates: Vec<String>,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesResponse {
    /// Devices sorted by id.
    pub devices: Vec<DeviceBody>,
    /// Seq the answer reflects.
    pub as_of_seq: u64,
}
