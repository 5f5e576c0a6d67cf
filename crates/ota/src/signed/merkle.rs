//! Merkle tree hashing over digest pages, as RFC 9162 §2.1 defines it (Certificate
//! Transparency v2): a leaf hash is `SHA-256(0x00 || leaf)`, an interior node
//! `SHA-256(0x01 || left || right)`, and a tree of `n` leaves splits at the largest power of
//! two below `n`. The prefixes keep a leaf from passing for an interior node.
//!
//! The leaves are **digest pages**: the SHA-256 digests of up to [`PAGE_CHUNKS`] consecutive
//! chunks, concatenated. The signed manifest carries only the root, so it stays the same
//! size whatever the image; each page travels with its inclusion proof (⌈log2 pages⌉ hashes)
//! and is checked against the root on arrival, before any chunk it covers is accepted.

use alloc::vec::Vec;
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Chunk digests per page: a page is at most 32 × 32 B = 1 KiB (1,280 characters in base85).
pub const PAGE_CHUNKS: u32 = 32;

/// RFC 9162 leaf hash of a digest page.
pub fn leaf_hash(page: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(page);
    h.finalize().into()
}

/// RFC 9162 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The Merkle tree hash of `leaves` (already leaf-hashed). An empty tree is `SHA-256("")`.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion proof of leaf `m` (RFC 9162 `PATH(m, D[n])`): sibling hashes from the leaf
/// up. `m` must be below `leaves.len()`.
pub fn proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    let mut out = Vec::new();
    path(leaves, m, &mut out);
    out
}

fn path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// The root that leaf hash `leaf` at index `m` of a tree of `n` leaves implies with `proof`,
/// or `None` when the proof has the wrong length for that position (or `m` ≥ `n`).
/// Recursion depth is the proof length, at most 64.
pub fn root_from_proof(m: usize, n: usize, leaf: Hash, proof: &[Hash]) -> Option<Hash> {
    if m >= n || proof.len() > 64 {
        return None;
    }
    if n == 1 {
        return proof.is_empty().then_some(leaf);
    }
    let (sibling, rest) = proof.split_last()?;
    let k = split(n);
    if m < k {
        let left = root_from_proof(m, k, leaf, rest)?;
        Some(node_hash(&left, sibling))
    } else {
        let right = root_from_proof(m - k, n - k, leaf, rest)?;
        Some(node_hash(sibling, &right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u32).to_le_bytes()))
            .collect()
    }

    #[test]
    fn every_proof_of_every_size_verifies_and_no_other_position_does() {
        for n in 1..=20 {
            let l = leaves(n);
            let r = root(&l);
            for m in 0..n {
                let p = proof(&l, m);
                assert_eq!(root_from_proof(m, n, l[m], &p), Some(r), "n={n} m={m}");
                for other in (0..n).filter(|&o| o != m) {
                    assert_ne!(
                        root_from_proof(other, n, l[m], &p),
                        Some(r),
                        "n={n} m={m} o={other}"
                    );
                }
                // A wrong-length proof is refused (the tree size comes from the signed manifest).
                let mut longer = p.clone();
                longer.push(r);
                assert_eq!(root_from_proof(m, n, l[m], &longer), None);
            }
        }
    }

    #[test]
    fn rfc9162_shape_of_three_leaves() {
        let l = leaves(3);
        let expected = node_hash(&node_hash(&l[0], &l[1]), &l[2]);
        assert_eq!(root(&l), expected);
        assert_eq!(proof(&l, 2), [node_hash(&l[0], &l[1])]);
    }
}
