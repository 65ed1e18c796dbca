//! The copy of one file that sends only what the backup lacks (issue 16).
//!
//! Before a large file's copy sends its data, it reads the file's block checksums
//! ([`mirrorfs::blocksums`]) and asks the router for those of the backup, top down
//! ([`Msg::Sums`], in order with the stream: the link asks only with nothing
//! unacknowledged, and the router answers once it applied everything before). Then the
//! blocks that are the same go as references to the backup's own data ([`Command::Ref`],
//! one per run of them, with the run's sum, which the router checks before it uses them),
//! the others as writes of their current content, then the file's size and attributes as in
//! any copy ([`crate::copy`]). When the router has no sums to give (no backup file, blocked,
//! a timeout), the file is sent whole.
//!
//! The copy reads the file as it is when each part goes (as every copy does): what changes
//! meanwhile has its own entries after the copy in the journal, which the backup takes on top.

use std::fs::File;
use std::time::{Duration, Instant};

use mirrorfs::blocksums::{
    start_level, Compare, Locator, Sum, Tree, BLOCK, MAX_SUMS, MAX_TREE_FILE,
};
use mirrorfs::entry::Command;
use mirrorfs::journal::Position;
use mirrorfs::wire::Msg;

use mirrorfs::shipped::Known;

/// Files smaller than this are sent whole (a round trip costs more than their data).
pub const MIN_SIZE: u64 = 256 << 10;
/// The most bytes one reference covers (the router checks and copies each at once).
const MAX_REF: u64 = 64 << 20;
/// How long an answer may take before the file is sent whole.
pub const ANSWER_WAIT: Duration = Duration::from_secs(90);

/// Whether a file of `size` bytes is worth comparing first.
pub fn worth(size: u64) -> bool {
    (MIN_SIZE..=MAX_TREE_FILE).contains(&size)
}

/// What a delta copy does next.
pub enum Step {
    /// Send this part: a command (`Write`, `Zero` or `Ref`), its offset and size, its data,
    /// its second name (a reference's locator).
    Part(Command, u64, u64, Vec<u8>, Vec<u8>),
    /// Wait for the router's answer ([`Delta::request`] says what to ask).
    Wait,
    /// Send the file whole after all (why).
    Whole(String),
    /// Every block is sent or referred to, up to the tree's size.
    Done,
}

enum State {
    /// A request to send, then its answer to wait for.
    Asking {
        /// The request, until the link takes it.
        request: Option<(u32, Vec<u64>)>,
        /// When it was taken.
        sent: Option<Instant>,
        /// The comparison (none before the first answer).
        cmp: Option<Compare>,
    },
    /// Sending: runs of blocks (first, count, what they are), and where in the first.
    Sending {
        runs: Vec<(u64, u64, Kind)>,
        at: u64,
    },
    Failed(String),
}

/// What a run of blocks is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The backup holds them already, at the same place.
    Same,
    /// A write the site holds in its router logs carried them: its position (and copy part),
    /// and where the run's first block starts in its data.
    Sent(Position, Option<(u64, u64)>, u64),
    /// Their data.
    Data,
}

/// One file's copy by differences.
pub struct Delta {
    /// The request number of the current request.
    id: u64,
    tree: Tree,
    state: State,
    /// Where the site's router logs hold blocks of the file ([`crate::shipped`]).
    known: Known,
}

/// Request numbers, unique in the process.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Delta {
    /// Reads the block checksums of `file` (`size` bytes); `known` says which blocks the
    /// site's router logs hold.
    pub fn start(file: &File, size: u64, known: Known) -> std::io::Result<Delta> {
        let tree = Tree::of_file(file, size)?;
        let level = start_level(tree.size, (MAX_SUMS / 16) as u64);
        Ok(Delta {
            id: 0,
            known,
            tree,
            state: State::Asking {
                request: Some((level, Vec::new())),
                sent: None,
                cmp: None,
            },
        })
    }

    /// The size the checksums were read at.
    pub fn size(&self) -> u64 {
        self.tree.size
    }

    /// The request to send now, once (`rule_crc`, `name`: the file's rule and name).
    pub fn request(&mut self, rule_crc: u32, name: &[u8]) -> Option<Msg> {
        let State::Asking { request, sent, .. } = &mut self.state else {
            return None;
        };
        let (level, nodes) = request.take()?;
        *sent = Some(Instant::now());
        self.id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Msg::Sums {
            id: self.id,
            rule_crc,
            name: name.to_vec(),
            level,
            nodes,
        })
    }

    /// Takes the router's answer to request `id`.
    pub fn answered(&mut self, id: u64, size: Option<u64>, sums: &[Sum], why: &str) {
        if id != self.id {
            return;
        }
        let State::Asking { request, sent, cmp } = &mut self.state else {
            return;
        };
        if sent.is_none() || request.is_some() {
            return;
        }
        let Some(size) = size else {
            if self.known.is_empty() {
                self.state = State::Failed(format!("the router has no checksums: {why}"));
            } else {
                // No backup to compare with: every block is new there, and those its router
                // logs hold go as references.
                let all: Vec<u64> = (0..mirrorfs::blocksums::blocks(self.tree.size)).collect();
                self.state = State::Sending {
                    runs: plan(&self.tree, &all, &self.known),
                    at: 0,
                };
            }
            return;
        };
        let c = match cmp {
            None => {
                let level = start_level(self.tree.size, (MAX_SUMS / 16) as u64);
                cmp.insert(Compare::new(&self.tree, level, size, sums))
            }
            Some(c) => {
                if !c.take(&self.tree, sums) {
                    self.state =
                        State::Failed("the router's checksums do not fit the request".into());
                    return;
                }
                c
            }
        };
        match c.ask() {
            Some(next) => {
                *request = Some(next);
                *sent = None;
            }
            None => {
                let differ = c.differing(&self.tree);
                self.state = State::Sending {
                    runs: plan(&self.tree, &differ, &self.known),
                    at: 0,
                };
            }
        }
    }

    /// Whether the next step is to wait for the router (a request to send, or its answer not
    /// overdue).
    pub fn waits(&self) -> bool {
        matches!(&self.state, State::Asking { sent, .. } if !sent.is_some_and(|t| t.elapsed() >= ANSWER_WAIT))
    }

    /// What to do next; `file` is the source file, read for the blocks that differ.
    pub fn next(&mut self, file: &File) -> Step {
        match &mut self.state {
            State::Failed(why) => Step::Whole(why.clone()),
            State::Asking { sent, .. } => {
                if sent.is_some_and(|t| t.elapsed() >= ANSWER_WAIT) {
                    self.state = State::Failed("the router did not answer in time".into());
                    return self.next(file);
                }
                Step::Wait
            }
            State::Sending { runs, at } => {
                let size = self.tree.size;
                let Some(&(first, count, kind)) = runs.first() else {
                    return Step::Done;
                };
                let start = first * BLOCK + *at;
                let end = ((first + count) * BLOCK).min(size);
                if let Kind::Same | Kind::Sent(..) = kind {
                    // One reference per run (at most MAX_REF bytes, whole blocks).
                    let len = (end - start).min(MAX_REF);
                    let b0 = start / BLOCK;
                    let nb = len.div_ceil(BLOCK);
                    let sum = self.tree.run(b0, nb);
                    let locator = match kind {
                        Kind::Sent(pos, part, from) => Locator::Transfer {
                            pos,
                            part,
                            at: from + *at,
                        },
                        _ => Locator::Backup,
                    };
                    advance(runs, at, len, end - start);
                    return Step::Part(Command::Ref, start, len, sum.to_vec(), locator.encode());
                }
                let want = (end - start).min(crate::copy::CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                let n = match mirrorfs::blocksums::read_full(file, &mut buf, start) {
                    Ok(n) => n,
                    Err(e) => {
                        self.state = State::Failed(format!("read at offset {start}: {e}"));
                        return self.next(file);
                    }
                };
                if n == 0 {
                    // The file ended sooner: its final size says so.
                    runs.clear();
                    return Step::Done;
                }
                buf.truncate(n);
                advance(runs, at, n as u64, end - start);
                if buf.iter().all(|&b| b == 0) {
                    // Zeros (a hole, most often) go as a zero range, as in any copy.
                    return Step::Part(Command::Zero, start, n as u64, Vec::new(), Vec::new());
                }
                Step::Part(Command::Write, start, n as u64, buf, Vec::new())
            }
        }
    }
}

/// Moves `at` on by `n` bytes within the first run (`left` bytes of it remained).
fn advance(runs: &mut Vec<(u64, u64, Kind)>, at: &mut u64, n: u64, left: u64) {
    if n >= left {
        runs.remove(0);
        *at = 0;
    } else {
        *at += n;
    }
}

/// The blocks of `tree`'s file as runs `(first, count, kind)`, given the sorted blocks that
/// differ from the backup and what the site's router logs hold (a block counts as held only
/// if its current sum is the one it was sent with).
fn plan(tree: &Tree, differ: &[u64], known: &Known) -> Vec<(u64, u64, Kind)> {
    let total = mirrorfs::blocksums::blocks(tree.size);
    let leaves = tree.level(0);
    let mut out: Vec<(u64, u64, Kind)> = Vec::new();
    let mut d = differ.iter().copied().peekable();
    for b in 0..total {
        let kind = if d.peek() == Some(&b) {
            d.next();
            match known.get(&b) {
                Some(&(pos, part, at, sum)) if leaves.get(b as usize) == Some(&sum) => {
                    Kind::Sent(pos, part, at)
                }
                _ => Kind::Data,
            }
        } else {
            Kind::Same
        };
        if let Some(last) = out.last_mut() {
            let follows = match (last.2, kind) {
                (Kind::Same, Kind::Same) | (Kind::Data, Kind::Data) => true,
                (Kind::Sent(p, x, a), Kind::Sent(q, y, c)) => {
                    p == q && x == y && c == a + last.1 * BLOCK
                }
                _ => false,
            };
            if follows {
                last.1 += 1;
                continue;
            }
        }
        out.push((b, 1, kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(blocks: u64) -> Tree {
        Tree::from_leaves(blocks * BLOCK, (0..blocks).map(|b| [b as u8; 16]).collect())
    }

    #[test]
    fn plans_cover_the_file() {
        use Kind::*;
        let none = Known::new();
        assert_eq!(plan(&tree(0), &[], &none), vec![]);
        assert_eq!(plan(&tree(10), &[], &none), vec![(0, 10, Same)]);
        assert_eq!(
            plan(&tree(10), &[0, 1, 5, 9], &none),
            vec![
                (0, 2, Data),
                (2, 3, Same),
                (5, 1, Data),
                (6, 3, Same),
                (9, 1, Data)
            ]
        );
        // Blocks a write carried: consecutive within one write merge; a stale sum is data.
        let p = Position::new(1, 100);
        let q = Position::new(1, 900);
        let known: Known = [
            (0, (p, None, 0, [0u8; 16])),
            (1, (p, None, BLOCK, [1u8; 16])),
            (2, (q, None, 0, [2u8; 16])),
            (3, (q, None, BLOCK, [9u8; 16])),
        ]
        .into();
        assert_eq!(
            plan(&tree(5), &[0, 1, 2, 3, 4], &known),
            vec![
                (0, 2, Sent(p, None, 0)),
                (2, 1, Sent(q, None, 0)),
                (3, 2, Data)
            ]
        );
    }

    /// The whole exchange against a tree in memory: what is sent rebuilds the source from
    /// the backup.
    #[test]
    fn parts_rebuild_the_source_from_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src");
        let mut src: Vec<u8> = (0..(3 << 20) + 777u32).map(|i| (i % 249) as u8).collect();
        let mut backup = src.clone();
        backup.truncate(2 << 20);
        backup[12345] ^= 0xff;
        src[3 << 19] ^= 0x55;
        std::fs::write(&p, &src).unwrap();
        let f = File::open(&p).unwrap();
        let remote = Tree::from_leaves(
            backup.len() as u64,
            backup
                .chunks(BLOCK as usize)
                .map(mirrorfs::blocksums::leaf)
                .collect(),
        );
        let mut d = Delta::start(&f, src.len() as u64, Known::new()).unwrap();
        let mut out = vec![0u8; src.len()];
        let (mut written, mut referred) = (0u64, 0u64);
        for _ in 0..10_000 {
            match d.next(&f) {
                Step::Wait => {
                    let Some(Msg::Sums {
                        id, level, nodes, ..
                    }) = d.request(1, b"/f")
                    else {
                        panic!("no request while waiting");
                    };
                    let sums = if nodes.is_empty() {
                        remote.level(level).to_vec()
                    } else {
                        remote.children_of(level, &nodes).unwrap()
                    };
                    d.answered(id, Some(remote.size), &sums, "");
                }
                Step::Part(Command::Ref, off, len, sum, _) => {
                    let r = &backup[off as usize..(off + len) as usize];
                    let leaves: Vec<Sum> = r
                        .chunks(BLOCK as usize)
                        .map(mirrorfs::blocksums::leaf)
                        .collect();
                    assert_eq!(mirrorfs::blocksums::node(&leaves).to_vec(), sum);
                    out[off as usize..(off + len) as usize].copy_from_slice(r);
                    referred += len;
                }
                Step::Part(Command::Zero, off, len, ..) => {
                    out[off as usize..(off + len) as usize].fill(0);
                    written += len;
                }
                Step::Part(_, off, len, data, _) => {
                    out[off as usize..(off + len) as usize].copy_from_slice(&data);
                    written += len;
                }
                Step::Whole(why) => panic!("{why}"),
                Step::Done => break,
            }
        }
        assert_eq!(out, src);
        // The changed block, and everything past the backup's end (its last block too).
        assert_eq!(written, 2 * BLOCK + (src.len() as u64 - (2 << 20)));
        assert_eq!(referred + written, src.len() as u64);
    }
}
