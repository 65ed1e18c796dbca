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
pub fn read_full(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
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

/// A comparison of a local tree with a remote one, top down, one request at a time (the
/// remote's answers come as [`crate::wire::Msg::SumsAnswer`]s): it starts from the remote
/// sums of every node of one level, asks for the children of the nodes that differ
/// ([`Compare::ask`], at most [`MAX_SUMS`] / [`FANOUT`] nodes at a time), takes the answers
/// ([`Compare::take`]), and ends at level 0 with the blocks that differ or lie beyond the
/// remote file ([`Compare::differing`]).
#[derive(Debug, Clone)]
pub struct Compare {
    remote_size: u64,
    level: u32,
    /// Nodes of `level` that differ.
    differ: Vec<u64>,
    /// Those the remote has (asked about), and how many were answered.
    askable: Vec<u64>,
    cursor: usize,
    /// Nodes of the level below found to differ so far.
    next: Vec<u64>,
    /// The nodes of the request not answered yet.
    pending: Option<Vec<u64>>,
}

impl Compare {
    /// Starts with the remote file's size and the remote sums of every node of `level`.
    pub fn new(local: &Tree, level: u32, remote_size: u64, remote: &[Sum]) -> Compare {
        let differ = local
            .level(level)
            .iter()
            .enumerate()
            .filter(|(i, s)| remote.get(*i) != Some(*s))
            .map(|(i, _)| i as u64)
            .collect();
        let mut c = Compare {
            remote_size,
            level,
            differ,
            askable: Vec::new(),
            cursor: 0,
            next: Vec::new(),
            pending: None,
        };
        c.begin_level(local);
        c
    }

    /// Prepares the requests of the current level; goes down past levels with nothing to ask.
    fn begin_level(&mut self, local: &Tree) {
        while self.level > 0 {
            let remote_nodes = nodes_at(self.remote_size, self.level);
            self.askable = self
                .differ
                .iter()
                .copied()
                .filter(|&i| i < remote_nodes)
                .collect();
            // The children of nodes the remote lacks all differ.
            self.next = self
                .differ
                .iter()
                .filter(|&&i| i >= remote_nodes)
                .flat_map(|&i| children(local.size, self.level, i))
                .collect();
            self.cursor = 0;
            if !self.askable.is_empty() {
                return;
            }
            self.descend();
        }
    }

    fn descend(&mut self) {
        self.next.sort_unstable();
        self.next.dedup();
        self.differ = std::mem::take(&mut self.next);
        self.level -= 1;
    }

    /// Whether the comparison is complete.
    pub fn done(&self) -> bool {
        self.level == 0
    }

    /// The next request: the level and the nodes whose children's sums are needed (`None`
    /// when done).
    pub fn ask(&mut self) -> Option<(u32, Vec<u64>)> {
        if self.done() {
            return None;
        }
        let end = (self.cursor + MAX_SUMS / FANOUT).min(self.askable.len());
        let nodes = self.askable[self.cursor..end].to_vec();
        self.pending = Some(nodes.clone());
        Some((self.level, nodes))
    }

    /// Takes the answer to the last request (the remote sums of the children of its nodes,
    /// node after node); whether it fits the request.
    pub fn take(&mut self, local: &Tree, sums: &[Sum]) -> bool {
        let Some(nodes) = self.pending.take() else {
            return false;
        };
        let below = local.level(self.level - 1);
        let mut at = 0usize;
        for &i in &nodes {
            let theirs = children(self.remote_size, self.level, i);
            let n = (theirs.end - theirs.start) as usize;
            let Some(theirs) = sums.get(at..at + n) else {
                return false;
            };
            at += n;
            for (k, idx) in children(local.size, self.level, i).enumerate() {
                if theirs.get(k) != below.get(idx as usize) {
                    self.next.push(idx);
                }
            }
        }
        if at != sums.len() {
            return false;
        }
        self.cursor += nodes.len();
        if self.cursor >= self.askable.len() {
            self.descend();
            self.begin_level(local);
        }
        true
    }

    /// The blocks of the local file that differ from the remote's (or that it lacks), in
    /// order; complete once [`Compare::done`].
    pub fn differing(&self, local: &Tree) -> Vec<u64> {
        let n = blocks(local.size);
        self.differ.iter().copied().filter(|&b| b < n).collect()
    }
}

/// A whole comparison ([`Compare`]) with `ask(level, nodes)` giving the remote sums of the
/// children of `nodes` of `level`; `start` holds the remote sums of every node of level
/// `start_level`. The blocks that differ, or `None` when an answer did not fit.
pub fn differing_blocks(
    local: &Tree,
    remote_size: u64,
    start_level: u32,
    start: &[Sum],
    mut ask: impl FnMut(u32, &[u64]) -> Option<Vec<Sum>>,
) -> Option<Vec<u64>> {
    let mut c = Compare::new(local, start_level, remote_size, start);
    while let Some((level, nodes)) = c.ask() {
        let got = ask(level, &nodes)?;
        if !c.take(local, &got) {
            return None;
        }
    }
    Some(c.differing(local))
}

/// Where a reference's data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// The backup file itself, at the same offset.
    Backup,
    /// The data of a write the source sent, from byte `at` of it (a block's place in the
    /// write: the sender numbers the blocks a write carried wholly by where they start in its
    /// data). The write is the journal entry at `pos`, or with `part`, one write part of the
    /// copy at `pos`: the one of the file whose name hashes to `part.0` ([`name_hash`]) at
    /// file offset `part.1`.
    Transfer {
        /// The write's journal position (the transfer's id).
        pos: crate::journal::Position,
        /// For a part of a copy: its file's name hash and its offset in the file.
        part: Option<(u64, u64)>,
        /// Where in the write's data.
        at: u64,
    },
}

/// The tags of transfer locators in an entry's second name: a whole write, a copy's part.
const TRANSFER_TAG: u8 = b'T';
const PART_TAG: u8 = b'P';

/// The hash of a full source name that tells a copy's parts of one file from another's.
pub fn name_hash(name: &[u8]) -> u64 {
    let h = blake3::hash(name);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

impl Locator {
    /// The locator a [`crate::entry::Command::Ref`] entry's second name holds (`None`: not
    /// one).
    pub fn decode(aux: &[u8]) -> Option<Locator> {
        if aux.is_empty() {
            return Some(Locator::Backup);
        }
        let u = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&aux[i..i + 8]);
            u64::from_le_bytes(b)
        };
        match (aux[0], aux.len()) {
            (TRANSFER_TAG, 25) => Some(Locator::Transfer {
                pos: crate::journal::Position::new(u(1), u(9)),
                part: None,
                at: u(17),
            }),
            (PART_TAG, 41) => Some(Locator::Transfer {
                pos: crate::journal::Position::new(u(1), u(9)),
                part: Some((u(17), u(25))),
                at: u(33),
            }),
            _ => None,
        }
    }

    /// The bytes of a locator, for an entry's second name.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Locator::Backup => Vec::new(),
            Locator::Transfer { pos, part, at } => {
                let mut v = vec![if part.is_some() {
                    PART_TAG
                } else {
                    TRANSFER_TAG
                }];
                v.extend_from_slice(&pos.segment.to_le_bytes());
                v.extend_from_slice(&pos.offset.to_le_bytes());
                if let Some((name, offset)) = part {
                    v.extend_from_slice(&name.to_le_bytes());
                    v.extend_from_slice(&offset.to_le_bytes());
                }
                v.extend_from_slice(&at.to_le_bytes());
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Position;

    #[test]
    fn locators_round_trip() {
        let l = Locator::Transfer {
            pos: Position::new(3, 4096),
            part: None,
            at: 7 * 4096,
        };
        assert_eq!(Locator::decode(&l.encode()), Some(l));
        let p = Locator::Transfer {
            pos: Position::new(3, 4096),
            part: Some((name_hash(b"/p/f"), 1 << 20)),
            at: 4096,
        };
        assert_eq!(Locator::decode(&p.encode()), Some(p));
        assert_eq!(Locator::decode(&[]), Some(Locator::Backup));
        assert_eq!(Locator::decode(b"junk"), None);
    }

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
