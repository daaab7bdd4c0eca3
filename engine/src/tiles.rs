//! Incremental RFC 6962 Merkle tree storage in tiles.
//!
//! The tree's complete-subtree hashes are grouped into tiles of height 8: the tile at tile-level `t`, index `k`
//! holds, for its 256 base nodes at tree level `8t` (indices `256k .. 256k+255`), every node of the 8 levels
//! above them inside the tile: 256 + 128 + … + 1 = 511 hashes, stored level by level. A tile is written once,
//! when it is full, and never changes; the rightmost, partial tile of each tile-level lives in memory and is
//! rebuilt on open from the last ≤ 255 leaves and the tops of full tiles. Appending a leaf is O(1) amortised
//! (at most 8 node hashes per tile level touched); any complete subtree node is one lookup.

use crate::chain::Hash;
use crate::merkle::node_hash;

/// Levels of the tree inside one tile.
pub const TILE_HEIGHT: u32 = 8;
/// Base nodes per tile.
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;
/// Hashes in a full tile (256 + 128 + … + 1).
pub const TILE_HASHES: usize = 2 * TILE_WIDTH - 1;
/// Bytes of a full tile.
pub const TILE_BYTES: usize = TILE_HASHES * 32;

/// Offset, in hashes, of sub-level `s` inside a serialized full tile.
#[inline]
pub fn level_offset(s: u32) -> usize {
    2 * TILE_WIDTH - ((2 * TILE_WIDTH) >> s)
}

/// A tile being filled.
#[derive(Debug, Clone, Default)]
pub struct PartialTile {
    /// Tile index at its tile-level.
    pub index: u64,
    /// `levels[s]` = the complete nodes of sub-level `s` so far.
    pub levels: [Vec<Hash>; 9],
}

impl PartialTile {
    fn new(index: u64) -> PartialTile {
        PartialTile { index, levels: Default::default() }
    }

    /// Adds a base node; returns the serialized tile if this filled it.
    fn push(&mut self, hash: Hash) -> Option<Vec<u8>> {
        self.levels[0].push(hash);
        let mut s = 0;
        while s < TILE_HEIGHT as usize && self.levels[s].len().is_multiple_of(2) {
            let n = self.levels[s].len();
            let h = node_hash(&self.levels[s][n - 2], &self.levels[s][n - 1]);
            self.levels[s + 1].push(h);
            s += 1;
        }
        if self.levels[0].len() == TILE_WIDTH {
            let mut out = Vec::with_capacity(TILE_BYTES);
            for level in &self.levels {
                for h in level {
                    out.extend_from_slice(h);
                }
            }
            Some(out)
        } else {
            None
        }
    }
}

/// A full tile completed by an append, to be persisted.
#[derive(Debug, Clone)]
pub struct CompletedTile {
    /// Tile-level.
    pub level: u8,
    /// Index at that tile-level.
    pub index: u64,
    /// [`TILE_BYTES`] bytes.
    pub bytes: Vec<u8>,
}

/// The in-memory right edge of the tree: one partial tile per tile-level.
#[derive(Debug, Clone, Default)]
pub struct TileBuilder {
    /// Number of leaves.
    pub size: u64,
    /// `partial[t]` is the partial tile of tile-level `t`.
    pub partial: Vec<PartialTile>,
}

impl TileBuilder {
    /// An empty tree.
    pub fn new() -> TileBuilder {
        TileBuilder::default()
    }

    /// Appends a leaf hash; completed tiles are pushed to `done`.
    pub fn push_leaf(&mut self, leaf: Hash, done: &mut Vec<CompletedTile>) {
        self.size += 1;
        let mut hash = leaf;
        let mut t = 0usize;
        loop {
            if self.partial.len() <= t {
                self.partial.push(PartialTile::new(0));
            }
            let tile = &mut self.partial[t];
            match tile.push(hash) {
                None => break,
                Some(bytes) => {
                    let top = tile.levels[TILE_HEIGHT as usize][0];
                    let index = tile.index;
                    *tile = PartialTile::new(index + 1);
                    done.push(CompletedTile { level: t as u8, index, bytes });
                    hash = top;
                    t += 1;
                }
            }
        }
    }

    /// Restores the builder for a tree of `size` leaves, given the leaf hashes after the last full level-0 tile
    /// (`tail_leaves`, in order) and a way to read the top hash of a full tile `(tile_level, index)`.
    pub fn restore<E>(
        size: u64,
        tail_leaves: &[Hash],
        mut top_of_full_tile: impl FnMut(u8, u64) -> Result<Hash, E>,
    ) -> Result<TileBuilder, E> {
        let mut b = TileBuilder { size, partial: Vec::new() };
        let mut t: u32 = 0;
        loop {
            let shift = TILE_HEIGHT * t;
            if shift >= 64 {
                break;
            }
            let base_count = size >> shift;
            if base_count == 0 {
                break;
            }
            let full = base_count >> TILE_HEIGHT;
            let partial_count = base_count & (TILE_WIDTH as u64 - 1);
            let mut tile = PartialTile::new(full);
            for j in 0..partial_count {
                let h = if t == 0 {
                    // `tail_leaves` holds exactly the leaves of the partial level-0 tile.
                    match usize::try_from(j).ok().and_then(|j| tail_leaves.get(j)) {
                        Some(h) => *h,
                        None => break,
                    }
                } else {
                    top_of_full_tile((t - 1) as u8, full * TILE_WIDTH as u64 + j)?
                };
                // Cannot fill: partial_count < 256.
                let _ = tile.push(h);
            }
            b.partial.push(tile);
            t += 1;
        }
        Ok(b)
    }

    /// Where node (`level`, `index`) lives: in memory (returned) or in full tile (`tile_level`, `tile_index`) at
    /// hash offset `offset` (the `Err`).
    pub fn locate(&self, level: u8, index: u64) -> Result<Option<Hash>, (u8, u64, usize)> {
        let t = u32::from(level) / TILE_HEIGHT;
        let s = u32::from(level) % TILE_HEIGHT;
        let per_tile = (TILE_WIDTH as u64) >> s;
        let tile_index = index / per_tile;
        let within = (index % per_tile) as usize;
        if let Some(p) = self.partial.get(t as usize) {
            if p.index == tile_index {
                return Ok(p.levels[s as usize].get(within).copied());
            }
            if tile_index > p.index {
                return Ok(None);
            }
        }
        Err((t as u8, tile_index, level_offset(s) + within))
    }
}

/// Reads hash number `offset` of a serialized full tile.
pub fn hash_in_tile(tile: &[u8], offset: usize) -> Option<Hash> {
    let start = offset.checked_mul(32)?;
    let bytes = tile.get(start..start + 32)?;
    let mut h = [0u8; 32];
    h.copy_from_slice(bytes);
    Some(h)
}
