//! RFC 6962 / RFC 9162 §2.1 Merkle tree maths for the ledger: leaf and node hashing, tree heads over any prefix
//! of the log, inclusion and consistency proofs (generation and verification), the incremental right-edge
//! [`Frontier`] used on append, and a small in-memory tree ([`MemoryTree`]).
//!
//! Storage model: the store persists exactly the *complete* (perfect) subtrees of the log — the node at level `L`,
//! index `K` is the root of the perfect subtree over leaves `[K << L, (K + 1) << L)`; level 0 holds the leaf
//! hashes. Every tree head and proof is assembled from such nodes through the [`NodeSource`] trait, so producing
//! a proof for a log of `n` leaves fetches `O(log n)` nodes and never re-hashes leaves. This module performs no
//! I/O of its own and never reads the clock.

mod frontier;
mod memory;
mod proof;

use sha2::{Digest, Sha256};

pub use frontier::{Frontier, FrontierError};
pub use memory::{MemoryTree, MemoryTreeError};
pub use proof::{
    ProofError, ProofGenError, consistency_proof, consistency_proof_len, inclusion_proof, inclusion_proof_len,
    verify_consistency, verify_inclusion,
};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree head.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1), so a leaf can never be confused with a node.
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// The hash of one leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The tree head of the empty log: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Where the hashes of complete subtrees come from (the store, or a [`MemoryTree`]).
///
/// Level `L`, index `K` names the perfect subtree over leaves `[K << L, (K + 1) << L)`; level 0 is the leaf hash
/// itself. The functions of this module only ask for nodes whose whole leaf range lies inside the tree they are
/// working on, so a source that stores exactly the complete subtrees of its log can always answer.
pub trait NodeSource {
    /// Why a node could not be produced (a storage failure, a missing node).
    type Error;
    /// The hash of the complete subtree at `level`, `index`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

impl<S: NodeSource + ?Sized> NodeSource for &S {
    type Error = S::Error;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        (**self).node(level, index)
    }
}

/// The largest power of two strictly smaller than `n` (the RFC 6962 split point `k`). Requires `n >= 2`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    // n >= 2, so n - 1 >= 1 and ilog2 is defined; 1 << ilog2(n - 1) is the largest power of two <= n - 1.
    1u64 << (n - 1).ilog2()
}

/// `MTH(D[begin..end])` per RFC 6962, for `begin < end` (callers handle the empty range).
///
/// Recurses exactly as the RFC definition does, but answers every aligned perfect subtree with one node fetch.
/// For ranges that are subtrees of some log (every range a proof needs: `begin` a multiple of the largest power
/// of two below `end - begin`) this is the decomposition into maximal aligned perfect subtrees folded from the
/// right, and fetches at most `2 log2(end - begin)` nodes. Other ranges are still hashed correctly but may
/// descend to the leaves.
fn subtree_hash<S: NodeSource + ?Sized>(src: &S, begin: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - begin;
    if n.is_power_of_two() && begin.is_multiple_of(n) {
        // A power of two that fits in u64 has at most 63 trailing zeros, so the level always fits in u8.
        let level = n.trailing_zeros() as u8;
        return src.node(level, begin >> level);
    }
    let k = split_point(n);
    let left = subtree_hash(src, begin, begin + k)?;
    let right = subtree_hash(src, begin + k, end)?;
    Ok(node_hash(&left, &right))
}

/// `MTH(D[begin..end])`: the RFC 6962 Merkle tree hash of the leaves `begin..end` taken as a list of their own.
///
/// For a range that is a node of some tree (in particular any prefix `0..size`, and every range an inclusion or
/// consistency proof needs) this fetches `O(log n)` complete-subtree nodes and folds them right to left, as
/// RFC 6962 does along the right edge. For an arbitrary unaligned range the result is still exactly
/// `MTH(D[begin..end])`, but building it may need nodes down to the leaves. Only nodes inside `begin..end` are
/// requested. The empty range hashes to [`empty_root`].
pub fn range_hash<S: NodeSource>(src: &S, begin: u64, end: u64) -> Result<Hash, ProofGenError<S::Error>> {
    if begin > end {
        return Err(ProofGenError::InvalidRange { begin, end });
    }
    if begin == end {
        return Ok(empty_root());
    }
    subtree_hash(src, begin, end).map_err(ProofGenError::Source)
}

/// The tree head (root hash) of the log's first `size` leaves.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_hash(src, 0, size)
}

/// The complete subtrees whose roots make up the right edge of a tree of `size` leaves ("peaks"), from the
/// largest (leftmost) to the smallest, as `(level, index)`. There is one per set bit of `size`.
pub fn peak_positions(size: u64) -> impl Iterator<Item = (u8, u64)> {
    (0u8..64).rev().filter_map(move |level| {
        let width = 1u64 << level;
        if size & width == 0 {
            return None;
        }
        // Leaves covered by the larger peaks to the left of this one: `size` with this bit and all lower bits
        // cleared. (For level 63, `width << 1` is 0 and the mask clears everything, as it should.)
        let start = size & !((width << 1).wrapping_sub(1));
        Some((level, start >> level))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(hex::encode(empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn peak_positions_follow_the_set_bits() {
        assert_eq!(peak_positions(0).count(), 0);
        assert_eq!(peak_positions(1).collect::<Vec<_>>(), vec![(0, 0)]);
        assert_eq!(peak_positions(6).collect::<Vec<_>>(), vec![(2, 0), (1, 2)]);
        assert_eq!(peak_positions(7).collect::<Vec<_>>(), vec![(2, 0), (1, 2), (0, 6)]);
        assert_eq!(peak_positions(8).collect::<Vec<_>>(), vec![(3, 0)]);
        let top = peak_positions(u64::MAX).collect::<Vec<_>>();
        assert_eq!(top.len(), 64);
        assert_eq!(top.first(), Some(&(63, 0)));
        assert_eq!(top.last(), Some(&(0, u64::MAX - 1)));
    }
}
