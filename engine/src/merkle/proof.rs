//! Inclusion and consistency proofs (RFC 9162 §2.1.3 and §2.1.4): generation from complete-subtree nodes of a
//! [`NodeSource`], and verification with the iterative algorithms of §2.1.3.2 and §2.1.4.2.
//!
//! Proofs are ordered from the leaf (or the old tree's right edge) towards the root, as the RFC's `PATH` and
//! `PROOF` functions produce them. Verification checks the proof's length against the one the sizes imply before
//! hashing anything, so a truncated, padded or mis-sized proof is reported as such rather than as a bare root
//! mismatch.

use thiserror::Error;

use super::{Hash, NodeSource, node_hash, split_point, subtree_hash};

/// Why an inclusion or consistency proof was rejected. Every variant has a stable [`ProofError::code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree (`index >= size`), so no proof can exist.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index the proof claims.
        index: u64,
        /// The tree size the proof claims.
        size: u64,
    },
    /// The proof has a different number of hashes than the sizes require.
    #[error("proof has {got} hashes but the tree sizes require exactly {want}")]
    WrongProofLength {
        /// Hashes supplied.
        got: usize,
        /// Hashes a valid proof for these sizes has.
        want: usize,
    },
    /// The inclusion proof does not lead from the leaf to the expected root.
    #[error(
        "inclusion proof yields root {} but the expected root is {}",
        hex::encode(calculated),
        hex::encode(expected)
    )]
    RootMismatch {
        /// The root the caller trusts.
        expected: Hash,
        /// The root the proof leads to.
        calculated: Hash,
    },
    /// The old tree is larger than the new one; a log only grows.
    #[error("old tree size {size1} is larger than new tree size {size2}")]
    SizeOrder {
        /// The old tree size.
        size1: u64,
        /// The new tree size.
        size2: u64,
    },
    /// Consistency from the empty tree proves nothing, so it is refused (RFC 9162 requires `0 < size1`).
    #[error("a consistency proof from the empty tree is meaningless (new tree size {size2})")]
    EmptyOldTree {
        /// The new tree size.
        size2: u64,
    },
    /// The consistency proof does not reproduce the old tree's root.
    #[error(
        "consistency proof yields old root {} but the expected old root is {}",
        hex::encode(calculated),
        hex::encode(expected)
    )]
    OldRootMismatch {
        /// The old root the caller trusts.
        expected: Hash,
        /// The old root the proof leads to.
        calculated: Hash,
    },
    /// The consistency proof does not lead from the old root to the new one.
    #[error(
        "consistency proof yields new root {} but the expected new root is {}",
        hex::encode(calculated),
        hex::encode(expected)
    )]
    NewRootMismatch {
        /// The new root the caller trusts.
        expected: Hash,
        /// The new root the proof leads to.
        calculated: Hash,
    },
}

impl ProofError {
    /// A stable, machine-readable code for this error (clients and tests depend on these strings).
    pub fn code(&self) -> &'static str {
        match self {
            ProofError::IndexOutOfRange { .. } => "index_out_of_range",
            ProofError::WrongProofLength { .. } => "wrong_proof_length",
            ProofError::RootMismatch { .. } => "root_mismatch",
            ProofError::SizeOrder { .. } => "size_order",
            ProofError::EmptyOldTree { .. } => "empty_old_tree",
            ProofError::OldRootMismatch { .. } => "old_root_mismatch",
            ProofError::NewRootMismatch { .. } => "new_root_mismatch",
        }
    }
}

/// Why a proof (or a range hash) could not be generated.
#[derive(Debug, Error)]
pub enum ProofGenError<E> {
    /// The node source failed to produce a complete-subtree node.
    #[error("fetch Merkle node: {0}")]
    Source(#[source] E),
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The old tree is larger than the new one.
    #[error("old tree size {size1} is larger than new tree size {size2}")]
    SizeOrder {
        /// The old tree size.
        size1: u64,
        /// The new tree size.
        size2: u64,
    },
    /// Consistency from the empty tree is not defined (and would not be accepted by a verifier).
    #[error("a consistency proof from the empty tree is meaningless (new tree size {size2})")]
    EmptyOldTree {
        /// The new tree size.
        size2: u64,
    },
    /// A leaf range whose start lies after its end.
    #[error("leaf range {begin}..{end} starts after it ends")]
    InvalidRange {
        /// First leaf of the range.
        begin: u64,
        /// One past the last leaf of the range.
        end: u64,
    },
}

impl<E> ProofGenError<E> {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ProofGenError::Source(_) => "node_source",
            ProofGenError::IndexOutOfRange { .. } => "index_out_of_range",
            ProofGenError::SizeOrder { .. } => "size_order",
            ProofGenError::EmptyOldTree { .. } => "empty_old_tree",
            ProofGenError::InvalidRange { .. } => "invalid_range",
        }
    }
}

/// Number of bits needed to write `x` (0 for 0).
fn bit_len(x: u64) -> u32 {
    u64::BITS - x.leading_zeros()
}

/// The number of hashes in the inclusion proof of leaf `index` in a tree of `size` leaves, or `None` when
/// `index >= size`.
///
/// The path splits where the paths to `index` and to the last leaf `size - 1` diverge: below that level every
/// level contributes one sibling; above it the leaf's ancestor lies on the right edge and only levels where that
/// ancestor is a right child contribute (a left sibling).
pub fn inclusion_proof_len(index: u64, size: u64) -> Option<usize> {
    if index >= size {
        return None;
    }
    let inner = bit_len(index ^ (size - 1));
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    usize::try_from(inner + border).ok()
}

/// The number of hashes in the consistency proof from a tree of `size1` leaves to one of `size2` leaves, or
/// `None` when no such proof exists (`size1 == 0` or `size1 > size2`).
///
/// Same decomposition as for inclusion of leaf `size1 - 1`, starting at the level of the old tree's smallest
/// perfect subtree; that subtree's own hash is sent too, unless it is the whole old tree (`size1` a power of two),
/// whose root the verifier already holds.
pub fn consistency_proof_len(size1: u64, size2: u64) -> Option<usize> {
    if size1 == 0 || size1 > size2 {
        return None;
    }
    if size1 == size2 {
        return Some(0);
    }
    let fork = bit_len((size1 - 1) ^ (size2 - 1));
    let shift = size1.trailing_zeros();
    let border = (size1 - 1).checked_shr(fork).unwrap_or(0).count_ones();
    let seed = u32::from(!size1.is_power_of_two());
    // size1 < size2 puts the fork strictly above the old tree's smallest perfect subtree, so fork > shift.
    let inner = fork.checked_sub(shift)?;
    usize::try_from(seed + inner + border).ok()
}

/// The inclusion proof (RFC 9162 `PATH(m, D[n])`) of leaf `index` in the tree of the log's first `size` leaves.
///
/// Fetches at most two nodes per tree level from `src`, all of them complete subtrees inside `0..size`.
pub fn inclusion_proof<S: NodeSource>(src: &S, index: u64, size: u64) -> Result<Vec<Hash>, ProofGenError<S::Error>> {
    if index >= size {
        return Err(ProofGenError::IndexOutOfRange { index, size });
    }
    // Walk down from the root, always into the half holding `index`, collecting the other half's hash. The
    // current range [begin, end) is always a node of the tree, so each sibling is one too.
    let mut path = Vec::with_capacity(64);
    let (mut begin, mut end) = (0u64, size);
    while end - begin > 1 {
        let mid = begin + split_point(end - begin);
        if index < mid {
            path.push(subtree_hash(src, mid, end).map_err(ProofGenError::Source)?);
            end = mid;
        } else {
            path.push(subtree_hash(src, begin, mid).map_err(ProofGenError::Source)?);
            begin = mid;
        }
    }
    // Collected root-first; the proof runs leaf-first.
    path.reverse();
    Ok(path)
}

/// The consistency proof (RFC 9162 `PROOF(m, D[n])`) that the tree of the first `size2` leaves extends the tree
/// of the first `size1` leaves. Empty when the sizes are equal; refused for `size1 == 0` or `size1 > size2`.
///
/// Fetches at most two nodes per tree level from `src`, all of them complete subtrees inside `0..size2`.
pub fn consistency_proof<S: NodeSource>(src: &S, size1: u64, size2: u64) -> Result<Vec<Hash>, ProofGenError<S::Error>> {
    if size1 > size2 {
        return Err(ProofGenError::SizeOrder { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofGenError::EmptyOldTree { size2 });
    }
    if size1 == size2 {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[begin..end], whole): `whole` stays true while [begin, end) starts at leaf 0, i.e. while the
    // verifier already knows the hash of the node where the old tree ends (its own root).
    let mut siblings = Vec::with_capacity(64);
    let (mut begin, mut end) = (0u64, size2);
    let mut whole = true;
    while size1 != end {
        let mid = begin + split_point(end - begin);
        if size1 <= mid {
            siblings.push(subtree_hash(src, mid, end).map_err(ProofGenError::Source)?);
            end = mid;
        } else {
            siblings.push(subtree_hash(src, begin, mid).map_err(ProofGenError::Source)?);
            begin = mid;
            whole = false;
        }
    }
    let mut proof = Vec::with_capacity(siblings.len() + 1);
    if !whole {
        proof.push(subtree_hash(src, begin, end).map_err(ProofGenError::Source)?);
    }
    proof.extend(siblings.into_iter().rev());
    Ok(proof)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let want = inclusion_proof_len(index, size).ok_or(ProofError::IndexOutOfRange { index, size })?;
    if proof.len() != want {
        return Err(ProofError::WrongProofLength { got: proof.len(), want });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongProofLength { got: proof.len(), want });
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            // On the right edge: skip the levels where this node has no sibling.
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongProofLength { got: proof.len(), want });
    }
    if r != *root {
        return Err(ProofError::RootMismatch { expected: *root, calculated: r });
    }
    Ok(())
}

/// Verifies that the tree of `size2` leaves with root `root2` extends the tree of `size1` leaves with root
/// `root1` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and equal roots; `size1 == 0` is refused.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizeOrder { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyOldTree { size2 });
    }
    let want = consistency_proof_len(size1, size2).ok_or(ProofError::SizeOrder { size1, size2 })?;
    if proof.len() != want {
        return Err(ProofError::WrongProofLength { got: proof.len(), want });
    }
    if size1 == size2 {
        if root1 != root2 {
            return Err(ProofError::NewRootMismatch { expected: *root2, calculated: *root1 });
        }
        return Ok(());
    }
    // When the old tree is perfect its root is the first node of the path, and the proof omits it.
    let seed = size1.is_power_of_two().then_some(root1);
    let mut path = seed.into_iter().chain(proof);
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let first = path.next().ok_or(ProofError::WrongProofLength { got: proof.len(), want })?;
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if s == 0 {
            return Err(ProofError::WrongProofLength { got: proof.len(), want });
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongProofLength { got: proof.len(), want });
    }
    if fr != *root1 {
        return Err(ProofError::OldRootMismatch { expected: *root1, calculated: fr });
    }
    if sr != *root2 {
        return Err(ProofError::NewRootMismatch { expected: *root2, calculated: sr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_lengths_match_rfc_examples() {
        // RFC 9162 §2.1.5 example tree of 7 leaves.
        assert_eq!(inclusion_proof_len(0, 7), Some(3)); // a: [b, h, l]
        assert_eq!(inclusion_proof_len(3, 7), Some(3)); // d: [c, g, l]
        assert_eq!(inclusion_proof_len(4, 7), Some(3)); // e: [f, j, k]
        assert_eq!(inclusion_proof_len(6, 7), Some(2)); // g: [i, k]
        assert_eq!(inclusion_proof_len(7, 7), None);
        assert_eq!(consistency_proof_len(3, 7), Some(4)); // [c, d, g, l]
        assert_eq!(consistency_proof_len(4, 7), Some(1)); // [l]
        assert_eq!(consistency_proof_len(6, 7), Some(3)); // [i, j, k]
        assert_eq!(consistency_proof_len(7, 7), Some(0));
        assert_eq!(consistency_proof_len(0, 7), None);
        assert_eq!(consistency_proof_len(8, 7), None);
    }

    #[test]
    fn proof_lengths_at_the_top_of_the_u64_range() {
        assert_eq!(inclusion_proof_len(0, u64::MAX), Some(64));
        assert_eq!(inclusion_proof_len(u64::MAX - 1, u64::MAX), Some(63));
        assert_eq!(consistency_proof_len(1, u64::MAX), Some(64));
        assert_eq!(consistency_proof_len(1 << 63, u64::MAX), Some(1));
    }

    #[test]
    fn error_codes_are_stable() {
        let h = [0u8; 32];
        let cases = [
            (ProofError::IndexOutOfRange { index: 1, size: 1 }, "index_out_of_range"),
            (ProofError::WrongProofLength { got: 1, want: 2 }, "wrong_proof_length"),
            (ProofError::RootMismatch { expected: h, calculated: h }, "root_mismatch"),
            (ProofError::SizeOrder { size1: 2, size2: 1 }, "size_order"),
            (ProofError::EmptyOldTree { size2: 1 }, "empty_old_tree"),
            (ProofError::OldRootMismatch { expected: h, calculated: h }, "old_root_mismatch"),
            (ProofError::NewRootMismatch { expected: h, calculated: h }, "new_root_mismatch"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
        let gen_cases: [(ProofGenError<std::io::Error>, &str); 5] = [
            (ProofGenError::Source(std::io::Error::other("disk")), "node_source"),
            (ProofGenError::IndexOutOfRange { index: 1, size: 1 }, "index_out_of_range"),
            (ProofGenError::SizeOrder { size1: 2, size2: 1 }, "size_order"),
            (ProofGenError::EmptyOldTree { size2: 1 }, "empty_old_tree"),
            (ProofGenError::InvalidRange { begin: 2, end: 1 }, "invalid_range"),
        ];
        for (err, code) in gen_cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }
}
