//! Durable records of outages (seeds/002 [0067]-[0070]):
//!
//! * the blocked-site list of a local system (`<state>/blocked`): sites mirror-sendd cannot
//!   reach, since when and why, and whether their backlog fell back to a dirty set;
//! * the dirty set of a site (`<state>/dirty/<site>`): the files changed while the site was
//!   blocked and its backlog over the queue limit, to be copied whole when it is back;
//! * the blocked-file log of a router (`<router state>/blocked`): backup files that cannot
//!   be written, with their rule and the router log position of the first held entry.
//!
//! The lists are JSON, one object per line; the dirty set is text (`upto SEG:OFF`, then one
//! `CRC NAME` line per file, both in hex). Every file is replaced atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::journal::Position;
use crate::state::write_atomic;

/// Errors reading the records.
#[derive(Debug, thiserror::Error)]
pub enum BlockedError {
    /// Reading or writing.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A line that does not parse.
    #[error("{path}, line {line}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A blocked site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedSite {
    /// `HOST:PORT`.
    pub site: String,
    /// When it was blocked (seconds since the epoch).
    pub since: u64,
    /// Why.
    pub reason: String,
    /// Whether its changes are tracked as a dirty set (the backlog exceeded the queue limit).
    pub dirty: bool,
}

/// A blocked backup file on a router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedFile {
    /// The backup path, relative to the root.
    pub path: String,
    /// The source site whose entry failed.
    pub site: String,
    /// The rule (router configuration entry) of that entry.
    pub rule_crc: u32,
    /// The rule's source pattern.
    pub pattern: String,
    /// Router log pair and RT1 offset of the first held entry.
    pub pair: u64,
    /// RT1 offset.
    pub offset: u64,
    /// When it was blocked (seconds since the epoch).
    pub since: u64,
    /// Why.
    pub reason: String,
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    crate::now_ns() / 1_000_000_000
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlockedError + '_ {
    move |err| BlockedError::Io {
        path: path.to_path_buf(),
        err,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, BlockedError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Reads a JSON-lines list (empty when the file does not exist).
pub fn load_list<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, BlockedError> {
    let Some(text) = read_optional(path)? else {
        return Ok(Vec::new());
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| BlockedError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Replaces `path` with the list, durably.
pub fn store_list<'a, T: Serialize + 'a>(
    path: &Path,
    items: impl IntoIterator<Item = &'a T>,
) -> Result<(), BlockedError> {
    let mut out = Vec::new();
    for it in items {
        serde_json::to_writer(&mut out, it).map_err(|e| io_err(path)(io::Error::other(e)))?;
        out.push(b'\n');
    }
    write_atomic(path, &out).map_err(io_err(path))
}

/// The blocked sites in `path`, by site.
pub fn load_sites(path: &Path) -> Result<BTreeMap<String, BlockedSite>, BlockedError> {
    Ok(load_list::<BlockedSite>(path)?
        .into_iter()
        .map(|b| (b.site.clone(), b))
        .collect())
}

/// The files changed while a site was blocked, and how far the journal was read for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtySet {
    /// Every journal entry before this position is in the set.
    pub upto: Position,
    /// `(rule CRC, full source name)` of each changed file or directory.
    pub names: BTreeSet<(u32, Vec<u8>)>,
}

/// The dirty set file of `site` in the state directory `state`.
pub fn dirty_path(state: &Path, site: &str) -> PathBuf {
    let safe: String = site
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state.join("dirty").join(safe)
}

/// `b` in lower-case hexadecimal (names in the line-based state files).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of hexadecimal `s` ([`hex`]), if it is that.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl DirtySet {
    /// Reads `path`; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<DirtySet>, BlockedError> {
        let Some(text) = read_optional(path)? else {
            return Ok(None);
        };
        let bad = |line: usize, reason: String| BlockedError::Parse {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut set = DirtySet::default();
        for (i, line) in text.lines().enumerate() {
            if let Some(p) = line.strip_prefix("upto ") {
                set.upto = p.parse().map_err(|e| bad(i + 1, e))?;
                continue;
            }
            let parsed = line
                .split_once(' ')
                .and_then(|(c, n)| Some((u32::from_str_radix(c, 16).ok()?, unhex(n)?)));
            match parsed {
                Some(x) => {
                    set.names.insert(x);
                }
                None => return Err(bad(i + 1, format!("{line:?} is not CRC NAME (hex)"))),
            }
        }
        Ok(Some(set))
    }

    /// Replaces `path` with this set, durably (creating the directory).
    pub fn store(&self, path: &Path) -> Result<(), BlockedError> {
        if let Some(dir) = path.parent() {
            crate::state::private_dir(dir).map_err(io_err(dir))?;
        }
        let mut out = format!("upto {}\n", self.upto);
        for (crc, name) in &self.names {
            out.push_str(&format!("{crc:08x} {}\n", hex(name)));
        }
        write_atomic(path, out.as_bytes()).map_err(io_err(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blocked");
        assert!(load_sites(&p).unwrap().is_empty());
        let b = BlockedSite {
            site: "h:1".into(),
            since: 5,
            reason: "connection refused".into(),
            dirty: false,
        };
        store_list(&p, [&b]).unwrap();
        assert_eq!(load_sites(&p).unwrap().get("h:1"), Some(&b));
        std::fs::write(&p, "{\"site\":1}\n").unwrap();
        let e = load_sites(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn dirty_set_round_trip_with_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dirty_path(dir.path(), "[::1]:70");
        assert_eq!(DirtySet::load(&p).unwrap(), None);
        let mut d = DirtySet {
            upto: Position::new(4, 96),
            ..DirtySet::default()
        };
        d.names.insert((7, b"/p/a b\n\xff".to_vec()));
        d.names.insert((9, b"/p/c".to_vec()));
        d.store(&p).unwrap();
        assert_eq!(DirtySet::load(&p).unwrap(), Some(d));
        std::fs::write(&p, "upto 1:2\nzz 00\n").unwrap();
        assert!(DirtySet::load(&p).is_err());
    }
}
