//! The [`Projection`] trait every read model implements, and the helpers they share: the state codec used for
//! checkpoints and the canonical BLAKE3 digest.
//!
//! A projection is a deterministic fold of the event log: `apply` reads nothing but the event (time comes only
//! from `recorded_at` and event fields, never from a clock), so a projection rebuilt by replay is identical to
//! one that followed the live tail. Its [`Projection::digest`] hashes a *canonical* encoding of the state (maps
//! sorted by key), so two equal states have equal digests whatever order their hash maps iterate in.

use std::collections::HashMap;
use std::hash::Hash;

use hwledger_engine::event::EventRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest amount of memory (bytes) decoding one persisted projection state may claim. Persisted states are
/// caches written by this crate; the bound only keeps a corrupt length prefix from asking for terabytes.
/// (The engine's `codec::decode_value` caps at 1 MiB, too small for a fleet's telemetry history.)
pub const MAX_STATE_BYTES: usize = 1 << 30;

type StateConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_STATE_BYTES }>,
>;

const STATE_CONFIG: StateConfig = bincode::config::standard().with_limit::<{ MAX_STATE_BYTES }>();

/// A BLAKE3 digest of a projection's canonical state.
pub type Digest = blake3::Hash;

/// Why a persisted projection state could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateDecodeError {
    /// The bytes are not a bincode encoding of this projection's state (truncated, corrupt, other schema).
    #[error("projection state of {len} bytes does not decode: {detail}")]
    Malformed {
        /// Length of the stored state.
        len: usize,
        /// What bincode reported.
        detail: String,
    },
    /// The state decoded but bytes were left over (a different schema, or corruption).
    #[error("projection state has {trailing} trailing bytes after a {len}-byte encoding")]
    Trailing {
        /// Bytes consumed.
        len: usize,
        /// Bytes left over.
        trailing: usize,
    },
}

/// A read model derived from the event log.
///
/// Implementations must be deterministic: the same events in the same order give the same state and the same
/// digest, whether applied live, replayed, or resumed from a persisted checkpoint.
pub trait Projection: Send + Sync {
    /// Stable name; also names the projection's checkpoint file (`projections/<name>.ckpt`).
    fn name(&self) -> &'static str;
    /// Version of the projection's code. Bump it whenever `apply` or the state layout changes: a persisted
    /// state of another version is discarded and the projection rebuilt from the log.
    fn version(&self) -> u32;
    /// Folds one event into the state. Infallible: events the projection does not care about, or that
    /// reference unknown entities, are ignored.
    fn apply(&mut self, record: &EventRecord);
    /// BLAKE3 of the canonical encoding of the state.
    fn digest(&self) -> Digest;
    /// The state as bytes, for checkpoints.
    fn encode(&self) -> Vec<u8>;
    /// Reads a state written by [`Projection::encode`] of the same version.
    fn decode(bytes: &[u8]) -> Result<Self, StateDecodeError>
    where
        Self: Sized;
}

/// Encodes a state with the checkpoint codec (bincode standard, varint integers).
pub(crate) fn encode_state<T: Serialize>(state: &T) -> Vec<u8> {
    match bincode::serde::encode_to_vec(state, STATE_CONFIG) {
        Ok(v) => v,
        Err(err) => unreachable_encode(&err),
    }
}

/// Decodes a state written by [`encode_state`]. Total: any bytes give a state or an error.
pub(crate) fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateDecodeError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, STATE_CONFIG)
        .map_err(|e| StateDecodeError::Malformed { len: bytes.len(), detail: e.to_string() })?;
    if used != bytes.len() {
        return Err(StateDecodeError::Trailing { len: used, trailing: bytes.len() - used });
    }
    Ok(value)
}

/// BLAKE3 of the checkpoint encoding of `value`, streamed into the hasher (no intermediate buffer).
pub(crate) fn digest_of<T: Serialize>(value: &T) -> Digest {
    let mut hasher = blake3::Hasher::new();
    if let Err(err) = bincode::serde::encode_into_std_write(value, &mut hasher, STATE_CONFIG) {
        unreachable_encode(&err);
    }
    hasher.finalize()
}

#[cold]
fn unreachable_encode(err: &bincode::error::EncodeError) -> ! {
    // Projection states hold only strings, integers, floats, options, vectors and maps with string or integer
    // keys: bincode cannot fail on them when writing to memory or a hasher. A unit test encodes every state.
    panic!("projection state failed to encode: {err}")
}

/// The entries of a hash map sorted by key: the canonical form used in digests.
pub(crate) fn sorted<K: Ord + Hash, V>(map: &HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut entries: Vec<(&K, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Milliseconds of a [`std::time::Duration`], saturating at `i64::MAX` (durations here are configuration,
/// seconds to days).
pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
