//! An in-memory Merkle tree that keeps every complete-subtree node, level by level: the reference
//! [`NodeSource`] for tests and a practical one for small trees (about 64 bytes of memory per leaf).

use thiserror::Error;

use super::{Hash, NodeSource, leaf_hash, node_hash, root};

/// A node was requested that the tree does not hold (yet).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Merkle node at level {level}, index {index} does not exist in an in-memory tree of {size} leaves")]
pub struct MemoryTreeError {
    /// Level of the requested node.
    pub level: u8,
    /// Index of the requested node on its level.
    pub index: u64,
    /// Number of leaves in the tree.
    pub size: u64,
}

impl MemoryTreeError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        "node_missing"
    }
}

/// Every complete subtree of a tree, in memory. `levels[L][K]` is the node at level `L`, index `K`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree holding the given leaf inputs, in order.
    pub fn from_leaf_data<I, D>(leaves: I) -> Self
    where
        I: IntoIterator<Item = D>,
        D: AsRef<[u8]>,
    {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.push(leaf.as_ref());
        }
        tree
    }

    /// Appends a leaf given its input data (hashed with [`leaf_hash`]); returns its index.
    pub fn push(&mut self, data: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(data))
    }

    /// Appends a leaf given its leaf hash; returns its index. Every subtree the leaf completes is hashed now.
    pub fn push_leaf_hash(&mut self, hash: Hash) -> u64 {
        let index = self.size();
        let mut carry = Some(hash);
        let mut level = 0usize;
        while let Some(node) = carry.take() {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                break;
            };
            row.push(node);
            // An even count means the node just pushed is a right child whose sibling is complete.
            if row.len().is_multiple_of(2)
                && let [.., left, right] = row.as_slice()
            {
                carry = Some(node_hash(left, right));
            }
            level += 1;
        }
        index
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// The tree head of the whole tree.
    pub fn root(&self) -> Hash {
        match root(self, self.size()) {
            Ok(hash) => hash,
            // Every node below `size` exists, so this cannot happen; fall back to the slow, self-contained path.
            Err(_) => self.root_from_leaves(),
        }
    }

    /// The tree head recomputed from the leaf hashes alone by the RFC 6962 recursive definition (no stored
    /// interior nodes) — an independent reference for tests.
    pub fn root_from_leaves(&self) -> Hash {
        fn mth(leaves: &[Hash]) -> Hash {
            match leaves {
                [] => super::empty_root(),
                [one] => *one,
                _ => {
                    let k = 1usize << (leaves.len() - 1).ilog2();
                    let (left, right) = leaves.split_at(k);
                    node_hash(&mth(left), &mth(right))
                }
            }
        }
        mth(self.levels.first().map_or(&[], |l| l.as_slice()))
    }
}

impl NodeSource for MemoryTree {
    type Error = MemoryTreeError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, MemoryTreeError> {
        let missing = || MemoryTreeError { level, index, size: self.size() };
        let row = self.levels.get(usize::from(level)).ok_or_else(missing)?;
        let i = usize::try_from(index).map_err(|_| missing())?;
        row.get(i).copied().ok_or_else(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_the_complete_subtrees() {
        let tree = MemoryTree::from_leaf_data((0u8..7).map(|i| [i]));
        assert_eq!(tree.size(), 7);
        assert!(tree.node(0, 6).is_ok());
        assert!(tree.node(1, 2).is_ok());
        assert!(tree.node(2, 1).is_err());
        assert!(tree.node(3, 0).is_err());
        let err = tree.node(0, 7).unwrap_err();
        assert_eq!(err, MemoryTreeError { level: 0, index: 7, size: 7 });
        assert_eq!(err.code(), "node_missing");
        assert_eq!(tree.root(), tree.root_from_leaves());
    }
}
