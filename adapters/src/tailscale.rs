//! `tailscale status --json`: the local node and its peers, so the fleet can discover machines on the
//! tailnet. Pure parsing, no I/O.
//!
//! The format is Tailscale's `ipnstate.Status`. Fields are read leniently, because versions differ
//! and builds from third-party packagers report odd values (`1.76.1-ERR-BuildInfo`): `Peer: null`
//! (no peers or logged out) gives no peers, `Self: null` no self node, `Addrs: null` no endpoints, and
//! Go's zero time `0001-01-01T00:00:00Z` ("never") becomes `None`. A wrong *type* on a field hwledger
//! reads is an error, not a silent default.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::gpu::{JsonDocError, MAX_INPUT_BYTES, read_json_document};

/// One node of the tailnet (the local node or a peer).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TailscalePeer {
    /// Stable node ID (`nRJT1utJ3i11CNTRL`).
    pub id: String,
    /// The machine's host name.
    pub host_name: Option<String>,
    /// MagicDNS name, with the trailing dot (`ikuai-1.tail1fb5f0.ts.net.`).
    pub dns_name: Option<String>,
    /// Tailnet addresses (`TailscaleIPs`: one IPv4 in 100.64.0.0/10, one IPv6 in fd7a:115c:a1e0::/48).
    pub addresses: Vec<String>,
    /// Public/LAN endpoints (`Addrs`) the node was last seen at; empty when `null`.
    pub endpoints: Vec<String>,
    /// Whether the coordination server considers the node online, when reported.
    pub online: Option<bool>,
    /// Operating system (`linux`, `windows`, `macOS`, ...).
    pub os: Option<String>,
    /// When the node was last seen (RFC 3339 as reported); `None` when never or not reported.
    pub last_seen: Option<String>,
}

/// The parsed status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TailscaleStatus {
    /// tailscaled's version string.
    pub version: Option<String>,
    /// Backend state (`Running`, `NeedsLogin`, `Stopped`, ...).
    pub backend_state: Option<String>,
    /// MagicDNS suffix of the tailnet (`tail1fb5f0.ts.net`).
    pub magic_dns_suffix: Option<String>,
    /// The local node, when logged in.
    pub self_node: Option<TailscalePeer>,
    /// The peers, in the order of their node keys (the order of the JSON object).
    pub peers: Vec<TailscalePeer>,
}

/// Why a capture could not be read as `tailscale status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TailscaleParseError {
    /// Nothing was printed.
    #[error("the capture is empty: tailscale printed nothing")]
    Empty,
    /// Over the size limit.
    #[error("the capture is {len} bytes, over the {limit}-byte limit; refusing to parse it")]
    TooLarge {
        /// Size of the capture in bytes.
        len: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// Not JSON, or invalid JSON (e.g. tailscale printed an error such as "failed to connect to
    /// local tailscaled").
    #[error("invalid JSON: {msg}")]
    Json {
        /// What was wrong.
        msg: String,
    },
    /// A JSON document followed by stray text.
    #[error("text after the JSON document, at line {line}: {text:?}")]
    TrailingGarbage {
        /// 1-based line number of the stray text.
        line: usize,
        /// The stray line.
        text: String,
    },
    /// Valid JSON that is not shaped like a status.
    #[error("unexpected JSON shape: {msg}")]
    UnexpectedShape {
        /// What was expected and not found.
        msg: String,
    },
}

impl TailscaleParseError {
    /// Stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            TailscaleParseError::Empty => "empty",
            TailscaleParseError::TooLarge { .. } => "too_large",
            TailscaleParseError::Json { .. } => "json",
            TailscaleParseError::TrailingGarbage { .. } => "trailing_garbage",
            TailscaleParseError::UnexpectedShape { .. } => "unexpected_shape",
        }
    }
}

impl From<JsonDocError> for TailscaleParseError {
    fn from(e: JsonDocError) -> Self {
        match e {
            JsonDocError::Trailing { line, text } => TailscaleParseError::TrailingGarbage { line, text },
            other => TailscaleParseError::Json { msg: other.describe() },
        }
    }
}

/// Go's zero `time.Time`, which Tailscale prints for "never".
const GO_ZERO_TIME_PREFIX: &str = "0001-01-01T00:00:00";

/// Parse `tailscale status --json`.
pub fn parse_status(text: &str) -> Result<TailscaleStatus, TailscaleParseError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(TailscaleParseError::TooLarge { len: text.len(), limit: MAX_INPUT_BYTES });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(TailscaleParseError::Empty);
    }
    let document = read_json_document(text)?;
    let Value::Object(top) = document else {
        return Err(shape("the status is not a JSON object"));
    };
    let self_node = match top.get("Self") {
        None | Some(Value::Null) => None,
        Some(Value::Object(node)) => Some(parse_node(node, "Self")?),
        Some(other) => return Err(wrong_type("Self", "an object", other)),
    };
    let peers = match top.get("Peer") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(peers)) => peers
            .iter()
            .map(|(key, peer)| match peer {
                Value::Object(node) => parse_node(node, &format!("Peer[{key}]")),
                other => Err(wrong_type(&format!("Peer[{key}]"), "an object", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("Peer", "an object", other)),
    };
    if self_node.is_none() && peers.is_empty() && !top.contains_key("BackendState") {
        return Err(shape("no Self, Peer or BackendState: this is not `tailscale status --json` output"));
    }
    Ok(TailscaleStatus {
        version: string(&top, "Version", "status")?,
        backend_state: string(&top, "BackendState", "status")?,
        magic_dns_suffix: string(&top, "MagicDNSSuffix", "status")?,
        self_node,
        peers,
    })
}

/// An `UnexpectedShape` error.
fn shape(msg: &str) -> TailscaleParseError {
    TailscaleParseError::UnexpectedShape { msg: msg.to_owned() }
}

/// A field whose JSON type is not the one Tailscale uses.
fn wrong_type(field: &str, expected: &str, got: &Value) -> TailscaleParseError {
    let rendered = got.to_string();
    let rendered: String = rendered.chars().take(80).collect();
    TailscaleParseError::UnexpectedShape { msg: format!("{field} should be {expected}, found {rendered}") }
}

/// An optional string field; empty strings count as absent.
fn string(obj: &Map<String, Value>, key: &str, context: &str) -> Result<Option<String>, TailscaleParseError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(&format!("{context}.{key}"), "a string", other)),
    }
}

/// An optional array of strings; `null` is empty.
fn strings(obj: &Map<String, Value>, key: &str, context: &str) -> Result<Vec<String>, TailscaleParseError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(&format!("{context}.{key}[]"), "a string", other)),
            })
            .collect(),
        Some(other) => Err(wrong_type(&format!("{context}.{key}"), "an array", other)),
    }
}

/// One node object → one peer.
fn parse_node(node: &Map<String, Value>, context: &str) -> Result<TailscalePeer, TailscaleParseError> {
    let Some(id) = string(node, "ID", context)? else {
        return Err(shape(&format!("{context} has no ID")));
    };
    let online = match node.get("Online") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(wrong_type(&format!("{context}.Online"), "a boolean", other)),
    };
    let last_seen = string(node, "LastSeen", context)?.filter(|t| !t.starts_with(GO_ZERO_TIME_PREFIX));
    Ok(TailscalePeer {
        id,
        host_name: string(node, "HostName", context)?,
        dns_name: string(node, "DNSName", context)?,
        addresses: strings(node, "TailscaleIPs", context)?,
        endpoints: strings(node, "Addrs", context)?,
        online,
        os: string(node, "OS", context)?,
        last_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_out_status_has_no_nodes() {
        let status =
            parse_status(r#"{"Version": "1.80.0", "BackendState": "NeedsLogin", "Self": null, "Peer": null}"#).unwrap();
        assert_eq!(status.self_node, None);
        assert!(status.peers.is_empty());
        assert_eq!(status.backend_state.as_deref(), Some("NeedsLogin"));
    }

    #[test]
    fn real_last_seen_is_kept_and_zero_time_dropped() {
        let text = r#"{"BackendState": "Running", "Peer": {
            "nodekey:a": {"ID": "a", "LastSeen": "2025-01-02T03:04:05Z", "Online": false, "Addrs": null},
            "nodekey:b": {"ID": "b", "LastSeen": "0001-01-01T00:00:00Z"}}}"#;
        let status = parse_status(text).unwrap();
        assert_eq!(status.peers[0].last_seen.as_deref(), Some("2025-01-02T03:04:05Z"));
        assert_eq!(status.peers[0].online, Some(false));
        assert!(status.peers[0].endpoints.is_empty());
        assert_eq!(status.peers[1].last_seen, None);
        assert_eq!(status.peers[1].online, None);
    }

    #[test]
    fn errors_have_codes() {
        assert_eq!(parse_status("").unwrap_err().code(), "empty");
        assert_eq!(
            parse_status("failed to connect to local tailscaled; it doesn't appear to be running").unwrap_err().code(),
            "json"
        );
        assert_eq!(parse_status("[]").unwrap_err().code(), "unexpected_shape");
        assert_eq!(parse_status("{}").unwrap_err().code(), "unexpected_shape");
        assert_eq!(
            parse_status(r#"{"BackendState": "Running", "Peer": {"k": {"ID": 5}}}"#).unwrap_err().code(),
            "unexpected_shape"
        );
        assert_eq!(parse_status("{\"BackendState\": \"Running\"}\nextra").unwrap_err().code(), "trailing_garbage");
        let big = " ".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(parse_status(&big).unwrap_err().code(), "too_large");
    }
}
