//! A Merkle tree over a batch of leaf hashes (RFC 6962 node prefix), with audit paths.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// An interior node: `SHA-256(0x01 || left || right)`.
pub fn node(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// A batch's tree, level by level (leaves first). Built once per batch; every leaf's
/// audit path is read from it without an allocation per leaf.
#[derive(Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Rebuild over `leaves`, reusing this tree's buffers.
    pub fn build(&mut self, leaves: &[Hash]) {
        assert!(!leaves.is_empty());
        let mut depth = 0;
        let mut width = leaves.len();
        loop {
            if self.levels.len() <= depth {
                self.levels.push(Vec::new());
            }
            let (done, rest) = self.levels.split_at_mut(depth);
            let level = &mut rest[0];
            level.clear();
            if depth == 0 {
                level.extend_from_slice(leaves);
            } else {
                let below = &done[depth - 1];
                level.extend(below.chunks(2).map(|pair| {
                    if pair.len() == 2 {
                        node(&pair[0], &pair[1])
                    } else {
                        pair[0]
                    }
                }));
            }
            if width == 1 {
                break;
            }
            width = width.div_ceil(2);
            depth += 1;
        }
        self.levels.truncate(depth + 1);
    }

    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    pub fn root(&self) -> Hash {
        self.levels.last().expect("built")[0]
    }

    /// Append leaf `index`'s audit path (bottom-up siblings) to `out`; returns its length.
    pub fn write_path(&self, mut index: usize, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        for level in &self.levels[..self.levels.len() - 1] {
            let sib = index ^ 1;
            if sib < level.len() {
                out.extend_from_slice(&level[sib]);
                n += 1;
            }
            index /= 2;
        }
        n
    }
}

/// Root of `leaves` and the audit path of every leaf (bottom-up sibling hashes).
/// An odd node at the end of a level is promoted unchanged, as in RFC 6962. The
/// straightforward reference the tests hold `Tree` to.
#[cfg(test)]
pub fn root_and_paths(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    assert!(!leaves.is_empty());
    let mut paths = vec![Vec::new(); leaves.len()];
    // position of each original leaf in the current level
    let mut pos: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            next.push(if pair.len() == 2 {
                node(&pair[0], &pair[1])
            } else {
                pair[0]
            });
        }
        for (leaf, p) in pos.iter_mut().enumerate() {
            let sib = *p ^ 1;
            if sib < level.len() {
                paths[leaf].push(level[sib]);
            }
            *p /= 2;
        }
        level = next;
    }
    (level[0], paths)
}

/// Recompute the root from a leaf, its index, the batch size and its audit path.
pub fn root_from_path(
    leaf: &Hash,
    mut index: usize,
    mut size: usize,
    path: &[Hash],
) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let mut cur = *leaf;
    let mut it = path.iter();
    while size > 1 {
        let sib = index ^ 1;
        if sib < size {
            let s = it.next()?;
            cur = if index % 2 == 0 {
                node(&cur, s)
            } else {
                node(s, &cur)
            };
        }
        index /= 2;
        size = size.div_ceil(2);
    }
    if it.next().is_some() {
        return None; // a longer path than the tree needs: not this tree
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_paths_match_root_and_paths_and_reuse_buffers() {
        let mut tree = Tree::default();
        for n in [5usize, 1, 2, 3, 16, 33, 7] {
            let leaves: Vec<Hash> = (0..n)
                .map(|i| Sha256::digest([i as u8, 9]).into())
                .collect();
            tree.build(&leaves);
            let (root, paths) = root_and_paths(&leaves);
            assert_eq!(tree.root(), root, "n={n}");
            for (i, path) in paths.iter().enumerate() {
                let mut out = Vec::new();
                assert_eq!(tree.write_path(i, &mut out), path.len());
                assert_eq!(out, path.concat(), "n={n} i={i}");
            }
        }
    }

    #[test]
    fn every_leaf_proves_the_root_for_every_size() {
        for n in 1..40usize {
            let leaves: Vec<Hash> = (0..n).map(|i| Sha256::digest([i as u8]).into()).collect();
            let (root, paths) = root_and_paths(&leaves);
            for (i, leaf) in leaves.iter().enumerate() {
                assert_eq!(
                    root_from_path(leaf, i, n, &paths[i]),
                    Some(root),
                    "n={n} i={i}"
                );
                let mut bad = *leaf;
                bad[0] ^= 1;
                assert_ne!(root_from_path(&bad, i, n, &paths[i]), Some(root));
                if n > 1 {
                    assert_ne!(root_from_path(leaf, (i + 1) % n, n, &paths[i]), Some(root));
                }
            }
        }
    }
}
