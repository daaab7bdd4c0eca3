//! Fuzz Merkle proof verification (`engine::merkle`), which `verify --proof`, `receipt verify` and
//! `verify --since` run on proofs and sizes taken from files and the network: arbitrary indices, sizes, roots
//! and proof hashes give `Ok` or a typed `ProofError`, never a panic or an overflow. Differentially, proofs
//! generated from a real tree of up to 300 leaves verify, and any one-bit change to them is refused.
//!
//! Input: `u64 LE index ‖ u64 LE size ‖ u64 LE size2 ‖ root (32) ‖ root2 (32) ‖ leaf (32) ‖ proof hashes`.
#![no_main]

use hwledger_engine::merkle::MemoryTree;
use hwledger_engine::merkle::{
    Hash, consistency_proof, inclusion_proof, inclusion_proof_len, leaf_hash, root, verify_consistency,
    verify_inclusion,
};
use libfuzzer_sys::fuzz_target;

fn take<const N: usize>(data: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = data.split_first_chunk::<N>()?;
    *data = tail;
    Some(*head)
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let (Some(a), Some(b), Some(c)) = (take::<8>(&mut rest), take::<8>(&mut rest), take::<8>(&mut rest)) else {
        return;
    };
    let (index, size, size2) = (u64::from_le_bytes(a), u64::from_le_bytes(b), u64::from_le_bytes(c));
    let (Some(root1), Some(root2), Some(leaf)) = (take::<32>(&mut rest), take::<32>(&mut rest), take::<32>(&mut rest))
    else {
        return;
    };
    let proof: Vec<Hash> = rest.chunks_exact(32).map(|c| c.try_into().expect("32-byte chunk")).collect();
    let _ = verify_inclusion(&leaf, index, size, &proof, &root1);
    let _ = verify_consistency(size, size2, &proof, &root1, &root2);
    let _ = inclusion_proof_len(index, size);

    // A real tree: sizes and index folded into small ranges, proofs generated and checked.
    let n = size2 % 300 + 1;
    let tree = MemoryTree::from_leaf_data((0..n).map(|i| i.to_le_bytes()));
    let s = size % n + 1;
    let i = index % s;
    let r = root(&tree, s).expect("root of a prefix");
    let p = inclusion_proof(&tree, i, s).expect("inclusion proof");
    let l = leaf_hash(&i.to_le_bytes());
    verify_inclusion(&l, i, s, &p, &r).expect("a generated inclusion proof verifies");
    let flip = usize::from(leaf[0]);
    if !p.is_empty() {
        let mut bad = p.clone();
        bad[flip % p.len()][flip % 32] ^= 1 << (leaf[1] % 8);
        assert!(verify_inclusion(&l, i, s, &bad, &r).is_err(), "a damaged inclusion proof is refused");
    }
    let full = root(&tree, n).expect("root");
    let cp = consistency_proof(&tree, s, n).expect("consistency proof");
    verify_consistency(s, n, &cp, &r, &full).expect("a generated consistency proof verifies");
    if !cp.is_empty() {
        let mut bad = cp.clone();
        bad[flip % cp.len()][flip % 32] ^= 1 << (leaf[1] % 8);
        assert!(verify_consistency(s, n, &bad, &r, &full).is_err(), "a damaged consistency proof is refused");
    }
});
