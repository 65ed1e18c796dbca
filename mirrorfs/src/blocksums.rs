//! Block checksums of a file as a tree: what a copy compares with the backup before it sends
//! only the blocks that differ (issue 16), and what `mirror-ctl verify` compares.
//!
//! A file is cut into fixed blocks of [`BLOCK`] bytes (the last one shorter). Each block's
//! sum ([`leaf`]) is the first 16 bytes of its BLAKE3 hash; [`FANOUT`] consecutive sums of one
//! level make one sum of the level above ([`node`]), up to a single root. Level 0 holds the
//! blocks' sums; node `i` of level `L` covers blocks `i * FANOUT^L` up to the next node's.
//! Two files compare top down: the sums of a level where there are few, then the children of
//! those that differ only, so that checksums cross the wire in proportion to the changes, not
//! to the file (with 1 % of the blocks of a large file changed at random, about 9 % of the
//! changed bytes). Both ends build the tree from the file's size the same way, so a node's
//! index means the same range on both.
//!
//! Fixed blocks and no rolling checksum: files are mirrored in place (a write changes bytes
//! where it lands), so what differs between a source file and its backup is whole blocks at
//! the same offsets; an insertion that shifts the rest is a rewrite of the rest for the
//! backup too.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes per block.
pub const BLOCK: u64 = 4096;
/// Sums of one level that make one sum of the level above.
pub const FANOUT: usize = 16;
/// A checksum: the first 16 bytes of a BLAKE3 hash.
pub type Sum = [u8; 16];
/// The most sums one answer carries (a request asks for at most this many children).
pub const MAX_SUMS: usize = 1 << 16;
/// The largest file a tree is built for: 2^20 · 16 = 16 Mi blocks (64 GiB) of sums held in
/// memory at 16 bytes each would be 256 MiB; beyond this size a file is copied whole.
pub const MAX_TREE_FILE: u64 = (1 << 24) * BLOCK;

/// The sum of one block's bytes.
pub fn leaf(data: &[u8]) -> Sum {
    first16(blake3::hash(data))
}

/// The sum of consecutive sums of one level (a node of the level above, or a run of blocks).
pub fn node(children: &[Sum]) -> Sum {
    let mut h = blake3::Hasher::new();
    h.update(b"mirror node");
    for c in children {
        h.update(c);
    }
    first16(h.finalize())
}

fn first16(h: blake3::Hash) -> Sum {
    let mut s = [0u8; 16];
    s.copy_from_slice(&h.as_bytes()[..16]);
    s
}

/// Blocks of a file of `size` bytes.
pub fn blocks(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

/// Nodes of level `level` for a file of `size` bytes (one at the top; none for an empty file).
pub fn nodes_at(size: u64, level: u32) -> u64 {
    let mut n = blocks(size);
    for _ in 0..level {
        n = n.div_ceil(FANOUT as u64);
    }
    n
}

/// The level with a single node (0 for files of one block or none).
pub fn top_level(size: u64) -> u32 {
    let mut level = 0;
    while nodes_at(size, level) > 1 {
        level += 1;
    }
    level
}

/// The highest level with at most `max` nodes: where a comparison starts.
pub fn start_level(size: u64, max: u64) -> u32 {
    let mut level = 0;
    while nodes_at(size, level) > max {
        level += 1;
    }
    level
}

/// The children (at `level - 1`) of node `index` of `level`, as a range of indices, for a
/// file of `size` bytes (empty when the node does not exist).
pub fn children(size: u64, level: u32, index: u64) -> std::ops::Range<u64> {
    if level == 0 {
        return 0..0;
    }
    let below = nodes_at(size, level - 1);
    let start = (index * FANOUT as u64).min(below);
    start..(start + FANOUT as u64).min(below)
}

/// The block checksums of a file and every level above them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// The file's size when it was read.
    pub size: u64,
    /// `levels[0]`: the blocks' sums; the last level has one sum (none for an empty file).
    levels: Vec<Vec<Sum>>,
}

impl Tree {
    /// The tree of blocks' sums `leaves` for a file of `size` bytes.
    pub fn from_leaves(size: u64, leaves: Vec<Sum>) -> Tree {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let up: Vec<Sum> = levels
                .last()
                .map(|l| l.chunks(FANOUT).map(node).collect())
                .unwrap_or_default();
            levels.push(up);
        }
        Tree { size, levels }
    }

    /// Reads `file` (of `size` bytes, as its metadata said) and sums it, `buf_len` bytes per
    /// read. A file that ends sooner is summed as far as it goes (its size is then that);
    /// holes read as zeros.
    pub fn of_file(file: &File, size: u64) -> io::Result<Tree> {
        let mut leaves = Vec::with_capacity(blocks(size) as usize);
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < size {
            let want = ((size - at) as usize).min(buf.len());
            let n = read_full(file, &mut buf[..want], at)?;
            for b in buf[..n].chunks(BLOCK as usize) {
                leaves.push(leaf(b));
            }
            at += n as u64;
            if n < want {
                break;
            }
        }
        Ok(Tree::from_leaves(at, leaves))
    }

    /// The sums of `level` (empty past the top).
    pub fn level(&self, level: u32) -> &[Sum] {
        self.levels
            .get(level as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The root's sum (`None` for an empty file).
    pub fn root(&self) -> Option<Sum> {
        self.levels.last().and_then(|l| l.first()).copied()
    }

    /// The sums of the children of `nodes` of `level` (their children in order, node after
    /// node), or `None` when one of them does not exist or they are too many.
    pub fn children_of(&self, level: u32, nodes: &[u64]) -> Option<Vec<Sum>> {
        if level == 0 || level as usize >= self.levels.len() {
            return None;
        }
        let below = self.level(level - 1);
        let mut out = Vec::new();
        for &i in nodes {
            let r = children(self.size, level, i);
            if r.is_empty() {
                return None;
            }
            out.extend_from_slice(&below[r.start as usize..r.end as usize]);
            if out.len() > MAX_SUMS {
                return None;
            }
        }
        Some(out)
    }

    /// The sum of blocks `first..first + count` as one run ([`node`] of their sums).
    pub fn run(&self, first: u64, count: u64) -> Sum {
        let l = self.level(0);
        let end = ((first + count) as usize).min(l.len());
        node(&l[(first as usize).min(end)..end])
    }
}

/// Reads up to `buf.len()` bytes at `at`, as many as the file has (short only at its end).
fn read_full(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Compares a local tree with a remote one, top down, asking `ask(level, nodes)` for the
/// remote sums of the children of `nodes` of `level` (what a [`crate::wire::Msg::Sums`]
/// request does); `start` holds the remote sums of level `start_level` (all its nodes) and
/// `remote_size` the remote file's size. Returns which blocks of the local file differ (or
/// lie beyond the remote file), as a sorted list of block indices, or `None` when an answer
/// did not fit (then everything is to be sent).
pub fn differing_blocks(
    local: &Tree,
    remote_size: u64,
    start_level: u32,
    start: &[Sum],
    mut ask: impl FnMut(u32, &[u64]) -> Option<Vec<Sum>>,
) -> Option<Vec<u64>> {
    let local_blocks = blocks(local.size);
    let remote_blocks = blocks(remote_size);
    // (level, index) of nodes that differ, with their remote sums compared already.
    let mut level = start_level;
    let mut differ: Vec<u64> = Vec::new();
    let here = local.level(level);
    for (i, s) in here.iter().enumerate() {
        if start.get(i) != Some(s) {
            differ.push(i as u64);
        }
    }
    while level > 0 {
        // Only nodes the remote tree has are asked about; the others' blocks all differ.
        let remote_nodes = nodes_at(remote_size, level);
        let asked: Vec<u64> = differ
            .iter()
            .copied()
            .filter(|&i| i < remote_nodes)
            .collect();
        let mut next: Vec<u64> = Vec::new();
        let mut answers = Vec::new();
        for chunk in asked.chunks(MAX_SUMS / FANOUT) {
            let got = ask(level, chunk)?;
            answers.push((chunk.to_vec(), got));
        }
        let below = local.level(level - 1);
        for (chunk, got) in answers {
            let mut at = 0usize;
            for i in chunk {
                let remote_kids = children(remote_size, level, i);
                let local_kids = children(local.size, level, i);
                let n = (remote_kids.end - remote_kids.start) as usize;
                let theirs = got.get(at..at + n)?;
                at += n;
                for (k, idx) in local_kids.clone().enumerate() {
                    if theirs.get(k) != below.get(idx as usize) {
                        next.push(idx);
                    }
                }
            }
        }
        // Children of nodes the remote tree lacks.
        for &i in differ.iter().filter(|&&i| i >= remote_nodes) {
            next.extend(children(local.size, level, i));
        }
        next.sort_unstable();
        next.dedup();
        differ = next;
        level -= 1;
    }
    differ.retain(|&b| b < local_blocks);
    let _ = remote_blocks;
    Some(differ)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_of(data: &[u8]) -> Tree {
        Tree::from_leaves(
            data.len() as u64,
            data.chunks(BLOCK as usize).map(leaf).collect(),
        )
    }

    fn compare(a: &[u8], b: &[u8]) -> (Vec<u64>, usize) {
        let (ta, tb) = (tree_of(a), tree_of(b));
        let start = start_level(ta.size.max(tb.size), 4);
        let mut asked = 0;
        let d = differing_blocks(&ta, tb.size, start, tb.level(start), |l, n| {
            asked += n.len();
            tb.children_of(l, n)
        })
        .unwrap();
        (d, asked)
    }

    #[test]
    fn shapes() {
        assert_eq!(blocks(0), 0);
        assert_eq!(blocks(1), 1);
        assert_eq!(blocks(4096), 1);
        assert_eq!(blocks(4097), 2);
        assert_eq!(top_level(4096 * 16), 1);
        assert_eq!(top_level(4096 * 17), 2);
        assert_eq!(nodes_at(4096 * 17, 1), 2);
        assert_eq!(children(4096 * 17, 1, 1), 16..17);
        assert_eq!(children(4096 * 17, 1, 2), 17..17);
        assert_eq!(start_level(1 << 30, 4096), 2);
    }

    #[test]
    fn only_changed_blocks_differ() {
        let a: Vec<u8> = (0..300 * 4096u32).map(|i| (i % 251) as u8).collect();
        let mut b = a.clone();
        assert_eq!(compare(&a, &b).0, Vec::<u64>::new());
        b[5 * 4096 + 7] ^= 1;
        b[290 * 4096] ^= 1;
        let (d, asked) = compare(&a, &b);
        assert_eq!(d, vec![5, 290]);
        assert!(asked < 10, "asked about {asked} nodes");
    }

    #[test]
    fn sizes_that_differ() {
        let a: Vec<u8> = (0..40 * 4096u32 + 10).map(|i| (i % 253) as u8).collect();
        // Shorter backup: the blocks past its end and its last (partial) block differ.
        let b = a[..20 * 4096 + 5].to_vec();
        let (d, _) = compare(&a, &b);
        assert_eq!(d, (20..41).collect::<Vec<u64>>());
        // Longer backup: only the local file's last block (partial here, full there).
        let (d, _) = compare(&b, &a);
        assert_eq!(d, vec![20]);
        // Nothing on the other side.
        let (d, _) = compare(&a, &[]);
        assert_eq!(d.len(), 41);
    }

    #[test]
    fn a_file_read_from_disk_sums_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 100).map(|i| (i % 7) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let t = Tree::of_file(&f, data.len() as u64).unwrap();
        assert_eq!(t, tree_of(&data));
        // A file that ended sooner than its metadata said.
        let t = Tree::of_file(&f, data.len() as u64 + 5000).unwrap();
        assert_eq!(t.size, data.len() as u64);
        assert_eq!(t.run(0, 3), node(&t.level(0)[..3]));
    }
}
