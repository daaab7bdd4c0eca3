//! The right edge of a growing Merkle tree (a "compact range" from leaf 0): the roots of the perfect subtrees
//! that tile `0..size`, largest first. It is all the append path needs to keep the tree head current and to emit
//! the complete-subtree nodes each new leaf completes, in `O(log n)` time and at most 64 hashes of memory.

use thiserror::Error;

use super::{Hash, NodeSource, empty_root, node_hash, peak_positions};

/// Why a [`Frontier`] could not be built or extended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrontierError {
    /// The number of peaks does not match the tree size (there must be one per set bit of the size).
    #[error("a tree of {size} leaves has {want} perfect subtrees on its right edge, but {got} peak hashes were given")]
    PeakCountMismatch {
        /// The tree size.
        size: u64,
        /// Peak hashes supplied.
        got: usize,
        /// Peak hashes a tree of this size has.
        want: u32,
    },
    /// The tree already holds `u64::MAX` leaves; leaf indexes are `u64`, so no further leaf can be numbered.
    #[error("the tree is full: it already holds {size} leaves")]
    Full {
        /// The tree size.
        size: u64,
    },
}

impl FrontierError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            FrontierError::PeakCountMismatch { .. } => "frontier_peak_count_mismatch",
            FrontierError::Full { .. } => "frontier_full",
        }
    }
}

/// The right edge of a Merkle tree: its size and the roots of the perfect subtrees covering `0..size`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the most significant bit (the leftmost, largest subtree) down.
    peaks: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from a stored size and its peak hashes (largest subtree first, as [`Frontier::peaks`]
    /// returns them, at the positions [`super::peak_positions`] names).
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Result<Self, FrontierError> {
        let want = size.count_ones();
        if usize::try_from(want).ok() != Some(peaks.len()) {
            return Err(FrontierError::PeakCountMismatch { size, got: peaks.len(), want });
        }
        Ok(Self { size, peaks })
    }

    /// Rebuilds the frontier of the tree of `size` leaves by fetching its peaks (at most 64 nodes) from `src`.
    pub fn from_source<S: NodeSource>(src: &S, size: u64) -> Result<Self, S::Error> {
        let peaks = peak_positions(size).map(|(level, index)| src.node(level, index)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { size, peaks })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peak hashes, largest (leftmost) subtree first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// The tree head: the peaks folded from the right, as RFC 6962 hashes the right edge.
    pub fn root(&self) -> Hash {
        let mut rev = self.peaks.iter().rev();
        let Some(last) = rev.next() else {
            return empty_root();
        };
        rev.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Appends one leaf (by its [`super::leaf_hash`]) and returns every complete-subtree node that now exists
    /// and did not before, as `(level, index, hash)` from the leaf (level 0) upwards, for the store to persist.
    pub fn append(&mut self, leaf_hash: Hash) -> Result<Vec<(u8, u64, Hash)>, FrontierError> {
        let index = self.size;
        let new_size = index.checked_add(1).ok_or(FrontierError::Full { size: index })?;
        // Each trailing one bit of the old size is a peak of equal height that the new node merges with; they are
        // the last `merges` peaks. (At most 64, so the cast is lossless.)
        let merges = index.trailing_ones() as usize;
        let Some(keep) = self.peaks.len().checked_sub(merges) else {
            return Err(FrontierError::PeakCountMismatch {
                size: index,
                got: self.peaks.len(),
                want: index.count_ones(),
            });
        };
        let mut created = Vec::with_capacity(merges + 1);
        created.push((0u8, index, leaf_hash));
        let mut node = leaf_hash;
        let mut level = 0u8;
        for left in self.peaks.drain(keep..).rev() {
            node = node_hash(&left, &node);
            level += 1;
            created.push((level, index >> level, node));
        }
        self.peaks.push(node);
        self.size = new_size;
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    #[test]
    fn from_parts_checks_peak_count() {
        let err = Frontier::from_parts(3, vec![[0; 32]]).unwrap_err();
        assert_eq!(err, FrontierError::PeakCountMismatch { size: 3, got: 1, want: 2 });
        assert_eq!(err.code(), "frontier_peak_count_mismatch");
        assert!(Frontier::from_parts(3, vec![[0; 32], [1; 32]]).is_ok());
    }

    #[test]
    fn full_tree_refuses_another_leaf() {
        let peaks = vec![[7u8; 32]; 64];
        let mut f = Frontier::from_parts(u64::MAX, peaks).unwrap();
        let err = f.append(leaf_hash(b"x")).unwrap_err();
        assert_eq!(err, FrontierError::Full { size: u64::MAX });
        assert_eq!(err.code(), "frontier_full");
        assert_eq!(f.size(), u64::MAX);
    }

    #[test]
    fn append_merges_equal_peaks() {
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        let (a, b, c) = (leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c"));
        assert_eq!(f.append(a).unwrap(), vec![(0, 0, a)]);
        let ab = node_hash(&a, &b);
        assert_eq!(f.append(b).unwrap(), vec![(0, 1, b), (1, 0, ab)]);
        assert_eq!(f.append(c).unwrap(), vec![(0, 2, c)]);
        assert_eq!(f.peaks(), &[ab, c]);
        assert_eq!(f.root(), node_hash(&ab, &c));
    }
}
