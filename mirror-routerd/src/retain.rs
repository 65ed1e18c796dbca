//! Router logs kept after they were applied: the data that references point to (seeds/001
//! claims 6 and 15, issue 16).
//!
//! A pair of router logs whose every entry is applied is not removed at once: it is
//! *retained* while the retained pairs stay within `--retain` (a size: `2G`, or an age: `1h`;
//! default 1 GiB), oldest given up first. What a retained pair holds is indexed by transfer:
//! a source's data transfer is one of its write entries, known by its journal position (the
//! sender keeps, for each block a write carried wholly, that position and the block's number
//! within the write), and the index says where its data lies in RT2. A copy that finds a
//! block it must send among those refers to it ([`mirrorfs::entry::Command::Ref`] with a
//! [`Locator::Transfer`]), and the router reads it back from RT2, checks its sum and writes
//! it. A reference the router cannot resolve (its pair given up, or the sum does not match)
//! makes the router ask for the whole file: never a reason to lose data, and retained pairs
//! are never a reason to refuse new entries (they are given up first when the router-log disk
//! runs short).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mirrorfs::journal::Position;

/// How much of the applied router logs is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    /// At most this many bytes of pairs.
    Size(u64),
    /// Pairs finished at most this long ago.
    Age(Duration),
}

impl Default for Retain {
    fn default() -> Self {
        Retain::Size(1 << 30)
    }
}

/// Parses `--retain`: a size with a unit (`512M`, `2G`, `1T`; `0` keeps nothing) or a
/// duration (`30m`, `1h`, `2d`).
pub fn parse_retain(s: &str) -> Result<Retain, String> {
    let t = s.trim();
    let wrong = || {
        format!(
            "--retain {s:?}: not a size or a duration; give a whole size (512M, 2G, 0) or a duration (30m, 1h, 2d)"
        )
    };
    let unit = t.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let size_unit = matches!(
        unit.trim_end_matches(['B', 'i']),
        "" | "K" | "k" | "M" | "G" | "g" | "T" | "t"
    );
    if size_unit {
        return mirrorfs::units::parse_size(t)
            .map(Retain::Size)
            .map_err(|_| wrong());
    }
    if let Some(days) = t.strip_suffix('d') {
        if let Ok(n) = days.parse::<u64>() {
            return Ok(Retain::Age(Duration::from_secs(n.saturating_mul(86_400))));
        }
    }
    mirrorfs::units::parse_duration(t)
        .map(Retain::Age)
        .map_err(|_| wrong())
}

pub use mirrorfs::blocksums::Locator;

/// Where a write's data lies in a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The pair.
    pub pair: u64,
    /// The data's offset in RT2.
    pub rt2_offset: u64,
    /// Its length.
    pub len: u64,
}

/// A transfer: the source, the write's position and, for a copy's part, its file's name hash
/// and offset.
type TransferKey = (String, Position, Option<(u64, u64)>);

/// The transfers of the pairs being applied and retained, by source and position.
#[derive(Debug, Default)]
pub struct Transfers {
    index: HashMap<TransferKey, Held>,
    /// Retained pairs: their bytes and when they were finished.
    retained: BTreeMap<u64, (u64, SystemTime)>,
}

impl Transfers {
    /// Notes the data of `site`'s write at `pos` (with `part`: a copy's write part, its
    /// file's name hash and offset).
    pub fn note(&mut self, site: &str, pos: Position, part: Option<(u64, u64)>, held: Held) {
        self.index.insert((site.to_string(), pos, part), held);
    }

    /// Where the data of `site`'s write at `pos` (`part`) is, if a pair still holds it.
    pub fn locate(&self, site: &str, pos: Position, part: Option<(u64, u64)>) -> Option<Held> {
        self.index.get(&(site.to_string(), pos, part)).copied()
    }

    /// Pair `n` (of `bytes`) is applied whole: it is retained from now on.
    pub fn retain_pair(&mut self, n: u64, bytes: u64) {
        self.retained.insert(n, (bytes, SystemTime::now()));
    }

    /// Whether pair `n` is retained.
    pub fn is_retained(&self, n: u64) -> bool {
        self.retained.contains_key(&n)
    }

    /// Pair `n` is gone: nothing of it can be referred to.
    pub fn forget_pair(&mut self, n: u64) {
        if self.retained.remove(&n).is_some() || self.index.values().any(|h| h.pair == n) {
            self.index.retain(|_, h| h.pair != n);
        }
    }

    /// The retained pairs to give up under `policy`, oldest first.
    pub fn over(&self, policy: Retain) -> Vec<u64> {
        let mut out = Vec::new();
        match policy {
            Retain::Size(max) => {
                let mut total: u64 = self.retained.values().map(|(b, _)| b).sum();
                for (&n, &(b, _)) in &self.retained {
                    if total <= max {
                        break;
                    }
                    out.push(n);
                    total -= b;
                }
            }
            Retain::Age(max) => {
                for (&n, &(_, at)) in &self.retained {
                    if at.elapsed().unwrap_or_default() > max {
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    /// Every retained pair, oldest first.
    pub fn retained_pairs(&self) -> Vec<u64> {
        self.retained.keys().copied().collect()
    }

    /// Bytes of the retained pairs.
    pub fn retained_bytes(&self) -> u64 {
        self.retained.values().map(|(b, _)| b).sum()
    }

    /// The oldest position of `site` still referable, if any.
    pub fn oldest(&self, site: &str) -> Option<Position> {
        self.index
            .keys()
            .filter(|(s, ..)| s == site)
            .map(|(_, p, _)| *p)
            .min()
    }
}

/// Reads `len` bytes at `from` within the data `held` describes, from RT2 in `dir`.
pub fn read(dir: &Path, held: Held, from: u64, len: u64) -> io::Result<Vec<u8>> {
    if from.checked_add(len).is_none_or(|e| e > held.len) {
        return Err(io::Error::other("beyond the transfer's data"));
    }
    let path: PathBuf = crate::rtlog::rt2_path(dir, held.pair);
    let f = File::open(path)?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, held.rt2_offset + from)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_takes_sizes_and_durations() {
        assert_eq!(parse_retain("2G"), Ok(Retain::Size(2 << 30)));
        assert_eq!(parse_retain("512M"), Ok(Retain::Size(512 << 20)));
        assert_eq!(parse_retain("0"), Ok(Retain::Size(0)));
        assert_eq!(
            parse_retain("1h"),
            Ok(Retain::Age(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_retain("30m"),
            Ok(Retain::Age(Duration::from_secs(1800)))
        );
        assert_eq!(
            parse_retain("2d"),
            Ok(Retain::Age(Duration::from_secs(2 * 86_400)))
        );
        assert!(parse_retain("lots").is_err());
        assert!(parse_retain("2X").is_err());
        let e = parse_retain("1.5G").unwrap_err();
        assert!(e.contains("whole size"), "{e}");
    }

    #[test]
    fn the_oldest_pairs_go_first() {
        let mut t = Transfers::default();
        t.retain_pair(1, 100);
        t.retain_pair(2, 100);
        t.retain_pair(3, 100);
        t.note(
            "s",
            Position::new(1, 10),
            None,
            Held {
                pair: 1,
                rt2_offset: 0,
                len: 4096,
            },
        );
        assert_eq!(t.over(Retain::Size(250)), vec![1]);
        assert_eq!(t.over(Retain::Size(0)), vec![1, 2, 3]);
        assert!(t.over(Retain::Age(Duration::from_secs(60))).is_empty());
        assert_eq!(t.oldest("s"), Some(Position::new(1, 10)));
        t.forget_pair(1);
        assert_eq!(t.locate("s", Position::new(1, 10), None), None);
        assert_eq!(t.retained_bytes(), 200);
    }
}
