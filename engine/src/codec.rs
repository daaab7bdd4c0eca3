//! The one place that turns events into bytes and back.
//!
//! An event body is `0x01` (body format version) followed by the bincode 2.0.1 "standard" encoding
//! (little-endian, variable-length integers) of an [`EventRecord`]. `docs/FORMAT.md` spells the bytes out.
//! Keeping every use of bincode here means the encoding could be swapped (bincode is unmaintained upstream)
//! by adding a new body format version, without touching anything else.
//!
//! Decoding is total: any byte string yields either a record or a [`DecodeError`], never a panic, and the
//! decoder refuses to allocate more than [`MAX_BODY_LEN`] however the length prefixes inside are forged.

use crate::event::EventRecord;

/// Body format version written by this build.
pub const BODY_FORMAT_V1: u8 = 1;
/// Largest event body accepted, in bytes. Bounds memory for hostile input; real events are a few hundred.
pub const MAX_BODY_LEN: usize = 1 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_BODY_LEN }>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<{ MAX_BODY_LEN }>();

/// Why bytes could not be decoded into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is empty.
    #[error("event body is empty")]
    Empty,
    /// The body's format version byte is not one this build reads.
    #[error("unknown event body format version {0}")]
    UnknownVersion(u8),
    /// The body is longer than [`MAX_BODY_LEN`].
    #[error("event body is {0} bytes, over the {MAX_BODY_LEN}-byte limit")]
    TooLarge(usize),
    /// bincode could not decode the record (truncated, unknown event type, invalid UTF-8, ...).
    #[error("event body does not decode: {0}")]
    Malformed(String),
    /// The record decoded but bytes were left over.
    #[error("event body has {0} trailing bytes")]
    Trailing(usize),
}

/// Encodes a record into its stored body bytes.
pub fn encode_record(record: &EventRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    encode_record_into(record, &mut out);
    out
}

/// Appends a record's stored body bytes to `out`.
pub fn encode_record_into(record: &EventRecord, out: &mut Vec<u8>) {
    out.push(BODY_FORMAT_V1);
    // Encoding into a Vec cannot fail for these types: no maps with non-string keys, no unsized
    // sequences, and every string is valid UTF-8 by construction.
    if let Err(err) = bincode::serde::encode_into_std_write(record, out, CONFIG) {
        unreachable_encode(err);
    }
}

#[cold]
fn unreachable_encode(err: bincode::error::EncodeError) -> ! {
    // Only reachable if an event type gains a field bincode cannot encode; a test encodes every variant.
    panic!("event record failed to encode: {err}")
}

/// Decodes stored body bytes into a record.
pub fn decode_record(body: &[u8]) -> Result<EventRecord, DecodeError> {
    let (&version, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    if body.len() > MAX_BODY_LEN {
        return Err(DecodeError::TooLarge(body.len()));
    }
    if version != BODY_FORMAT_V1 {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (record, used) = bincode::serde::decode_from_slice::<EventRecord, _>(rest, CONFIG)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != rest.len() {
        return Err(DecodeError::Trailing(rest.len() - used));
    }
    Ok(record)
}

/// Encodes any serde value with the same deterministic configuration (used for state snapshots and
/// command digests, which are caches and keys rather than the stored truth).
pub fn encode_value<T: serde::Serialize>(value: &T) -> Vec<u8> {
    match bincode::serde::encode_to_vec(value, CONFIG) {
        Ok(v) => v,
        Err(err) => unreachable_encode(err),
    }
}

/// Decodes a value written by [`encode_value`].
/// Values (state snapshots) may be large; the limit only bounds allocation for a corrupt value.
pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    const VALUE_CONFIG: bincode::config::Configuration<
        bincode::config::LittleEndian,
        bincode::config::Varint,
        bincode::config::Limit<{ 1 << 30 }>,
    > = bincode::config::standard().with_limit::<{ 1 << 30 }>();
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, VALUE_CONFIG)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Serde adapter for 32-byte hashes: lowercase hex in human-readable formats (JSON), raw bytes in bincode.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes 32 bytes.
    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&hex::encode(bytes)) } else { serde::Serialize::serialize(bytes, s) }
    }

    /// Deserializes 32 bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&s, &mut out)
                .map_err(|e| serde::de::Error::custom(format!("expected 64 hex digits: {e}")))?;
            Ok(out)
        } else {
            <[u8; 32]>::deserialize(d)
        }
    }
}
