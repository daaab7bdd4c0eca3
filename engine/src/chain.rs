//! The SHA-256 hash chain over stored event bodies.
//!
//! `hash(n) = SHA-256(CHAIN_TAG || hash(n-1) || body(n))`, with `hash(0)` = 32 zero bytes. The hash covers the
//! exact stored bytes, so a verifier needs no knowledge of event schemas (docs/FORMAT.md).

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Domain separation tag of the chain (distinct from the Merkle leaf 0x00 / node 0x01 prefixes).
pub const CHAIN_TAG: &[u8; 18] = b"hwledger/chain/v1\0";

/// The hash before the first event.
pub const GENESIS: Hash = [0u8; 32];

/// The chain hash of `body` following `prev`.
#[inline]
pub fn chain_hash(prev: &Hash, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(CHAIN_TAG);
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// Lowercase hex of a hash.
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// Parses 64 hex digits.
pub fn from_hex(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
