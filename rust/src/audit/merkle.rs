//! RFC 6962 / RFC 9162 Merkle tree heads and inclusion proofs over audit chain hashes.
//!
//! Leaf hash: `SHA-256(0x00 || chain_hash)`; node hash: `SHA-256(0x01 || left || right)`.
//! The tree over `n` leaves splits at the largest power of two below `n`, so its left
//! subtrees are perfect: [`Compact`] keeps just their roots and extends a head one leaf at a
//! time in O(log n), which is how checkpoints are cut while appending and verifying.

use sha2::{Digest, Sha256};

use super::chain::Hash;

pub fn leaf_hash(leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

pub fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The roots of the perfect subtrees making up a tree of `size` leaves, biggest first.
#[derive(Debug, Clone, Default)]
pub struct Compact {
    size: u64,
    /// (height, root) of each perfect subtree.
    stack: Vec<(u32, Hash)>,
}

impl Compact {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: &Hash) {
        let mut cur = (0u32, leaf_hash(leaf));
        while let Some(&(h, l)) = self.stack.last() {
            if h != cur.0 {
                break;
            }
            self.stack.pop();
            cur = (h + 1, node_hash(&l, &cur.1));
        }
        self.stack.push(cur);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, l) in it {
            r = node_hash(l, &r);
        }
        r
    }
}

/// The Merkle tree head over `leaves` (chain hashes).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut c = Compact::default();
    leaves.iter().for_each(|l| c.push(l));
    c.root()
}

fn largest_pow2_below(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree_root(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaf_hash(&leaves[0]);
    }
    let k = largest_pow2_below(leaves.len());
    node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
}

/// The audit path of leaf `index` in the tree over `leaves` (RFC 6962 `PATH(m, D[n])`),
/// from the leaf's sibling up to the root's child.
pub fn inclusion_path(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    assert!(index < leaves.len());
    let mut out = Vec::new();
    let (mut lo, mut hi, mut m) = (0usize, leaves.len(), index);
    let mut rev = Vec::new();
    while hi - lo > 1 {
        let k = largest_pow2_below(hi - lo);
        if m < k {
            rev.push(subtree_root(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            rev.push(subtree_root(&leaves[lo..lo + k]));
            lo += k;
            m -= k;
        }
    }
    out.extend(rev.into_iter().rev());
    out
}

/// RFC 9162 section 2.1.3.2: does `path` lead from `leaf` at `index` to `root` in a tree of
/// `size` leaves?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnum, mut snum) = (index, size - 1);
    let mut r = leaf_hash(leaf);
    for p in path {
        if snum == 0 {
            return false;
        }
        if fnum & 1 == 1 || fnum == snum {
            r = node_hash(p, &r);
            while fnum & 1 == 0 && fnum != 0 {
                fnum >>= 1;
                snum >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnum >>= 1;
        snum >>= 1;
    }
    snum == 0 && &r == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| Sha256::digest((i as u64).to_be_bytes()).into())
            .collect()
    }

    #[test]
    fn compact_matches_recursive_definition() {
        for n in 1..70 {
            let l = leaves(n);
            assert_eq!(root(&l), subtree_root(&l), "n={n}");
        }
        assert_eq!(root(&[]), empty_root());
    }

    #[test]
    fn rfc6962_known_answer() {
        // The empty-tree head from RFC 6962 test vectors.
        let hex: String = empty_root().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        for n in 1..40 {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = inclusion_path(i, &l);
                assert!(
                    verify_inclusion(i as u64, n as u64, &l[i], &p, &r),
                    "n={n} i={i}"
                );
                let other = Sha256::digest(b"x").into();
                assert!(!verify_inclusion(i as u64, n as u64, &other, &p, &r));
                if n > 1 {
                    assert!(
                        !verify_inclusion(((i + 1) % n) as u64, n as u64, &l[i], &p, &r)
                            || l[i] == l[(i + 1) % n]
                    );
                }
            }
        }
    }
}
