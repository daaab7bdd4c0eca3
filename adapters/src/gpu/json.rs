//! Reading one JSON document from a tool's stdout, telling apart "not JSON at all", "broken JSON" and
//! "a JSON document followed by stray text" (vast.ai's CLI prints `Machine ID … not found` after the
//! array; rocm-smi may print warnings). Shared by the JSON GPU parsers and the Tailscale parser.
//!
//! serde_json's recursion limit (128 levels) stays on, so deeply nested hostile input is an error,
//! not a stack overflow.

use serde_json::Value;

use super::error::excerpt;
use super::values::BadValue;

/// Why a text is not exactly one JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonDocError {
    /// The text does not start like JSON; `first_line` is its first non-blank line.
    NotJson { first_line: String },
    /// The text starts like JSON but is invalid (truncated, bad syntax, too deep).
    Invalid { msg: String },
    /// A complete document followed by non-whitespace text on `line` (1-based).
    Trailing { line: usize, text: String },
}

impl JsonDocError {
    /// A one-line description used inside the callers' own error types.
    pub(crate) fn describe(&self) -> String {
        match self {
            JsonDocError::NotJson { first_line } => {
                format!("the output is not JSON; its first line is {first_line:?}")
            }
            JsonDocError::Invalid { msg } => msg.clone(),
            JsonDocError::Trailing { line, text } => {
                format!("text after the JSON document at line {line}: {text:?}")
            }
        }
    }
}

impl From<JsonDocError> for super::GpuParseError {
    fn from(e: JsonDocError) -> Self {
        match e {
            JsonDocError::Trailing { line, text } => super::GpuParseError::TrailingGarbage { line, text },
            other => super::GpuParseError::Json { msg: other.describe() },
        }
    }
}

/// A JSON scalar as text: strings as they are, numbers in their JSON spelling; `None` for `null`.
/// `Err` for arrays, objects and booleans, which no reading is.
pub(crate) fn scalar_text(value: &Value) -> Result<Option<String>, BadValue> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => Err(BadValue),
    }
}

/// A short JSON rendering of `value` for error messages.
pub(crate) fn json_excerpt(value: &Value) -> String {
    excerpt(&value.to_string())
}

/// Parse `text` as exactly one JSON document (surrounding whitespace allowed).
pub(crate) fn read_json_document(text: &str) -> Result<Value, JsonDocError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with(['{', '[']) {
        let first_line = trimmed.lines().next().unwrap_or("").trim();
        return Err(JsonDocError::NotJson { first_line: excerpt(first_line) });
    }
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let value = match stream.next() {
        Some(Ok(value)) => value,
        Some(Err(e)) => return Err(JsonDocError::Invalid { msg: e.to_string() }),
        None => {
            return Err(JsonDocError::Invalid { msg: "no JSON value".to_owned() });
        }
    };
    let offset = stream.byte_offset();
    let rest = text.get(offset..).unwrap_or("");
    if let Some(stray_at) = rest.find(|c: char| !c.is_whitespace()) {
        let consumed = text.len() - rest.len() + stray_at;
        let line = text.get(..consumed).map_or(0, |before| before.matches('\n').count()) + 1;
        let stray_line = rest.get(stray_at..).and_then(|s| s.lines().next()).unwrap_or("").trim();
        return Err(JsonDocError::Trailing { line, text: excerpt(stray_line) });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document() {
        assert_eq!(read_json_document(" \n{\"a\": 1}\n\n"), Ok(serde_json::json!({"a": 1})));
    }

    #[test]
    fn trailing_line_is_named() {
        assert_eq!(
            read_json_document("[1,\n2]\nMachine ID 24126 not found or not rentable.\n"),
            Err(JsonDocError::Trailing { line: 3, text: "Machine ID 24126 not found or not rentable.".to_owned() })
        );
        assert!(matches!(read_json_document("{} {}"), Err(JsonDocError::Trailing { line: 1, .. })));
    }

    #[test]
    fn not_json_and_invalid() {
        assert!(matches!(read_json_document("WARNING: No JSON data to report"), Err(JsonDocError::NotJson { .. })));
        assert!(matches!(read_json_document("{\"a\": "), Err(JsonDocError::Invalid { .. })));
        let deep = "[".repeat(10_000);
        assert!(matches!(read_json_document(&deep), Err(JsonDocError::Invalid { .. })));
    }
}
