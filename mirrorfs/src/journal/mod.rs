//! The store-and-forward journal: append-only segment files in `<state>/journal/`.
//!
//! * [`format`]: the bytes on disk (segment header, records with a CRC each, the index).
//! * [`Journal`] (writer): one per state directory (a lock file enforces it). Appends reach
//!   the kernel before `append` returns, so a crash of the writing process loses nothing it
//!   acknowledged; [`Journal::sync`] makes everything appended durable, one `fdatasync` serving
//!   every caller waiting at the time (group commit). Segments rotate at a size limit.
//!   Opening recovers: a torn record at the end of the newest segment is truncated away and
//!   logged; a damaged record with valid records after it in the newest segment is kept as it
//!   is, the segment sealed around it and appends go on in the next one (readers report the
//!   damage with segment and offset, as for damage in any sealed segment).
//! * [`JournalReader`]: tails from a [`Position`], in this process or another, waking on
//!   inotify events for the directory or after a timeout.
//! * [`remove_segments_below`]: deletes segments every reader has passed.

pub mod format;
mod reader;
mod writer;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use format::FormatError;
pub use reader::{JournalReader, Skipped};
pub use writer::{Journal, JournalConfig, Watermark};

/// Where a record starts (or, for an end, where the next one would start).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    /// Segment number (from 1; 0 only in [`Position::START`]).
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

impl Position {
    /// Before everything: readers start at the oldest segment present.
    pub const START: Position = Position {
        segment: 0,
        offset: 0,
    };

    /// A position.
    pub fn new(segment: u64, offset: u64) -> Self {
        Position { segment, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("position {s:?} is not SEGMENT:OFFSET"))?;
        Ok(Position {
            segment: a.parse().map_err(|_| format!("bad segment in {s:?}"))?,
            offset: b.parse().map_err(|_| format!("bad offset in {s:?}"))?,
        })
    }
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O error on a journal file.
    #[error("journal {path}: {err}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A record, header or index is damaged.
    #[error("journal segment {path} is corrupt at offset {offset}: {reason}; records from there on cannot be read (the segment is left as it is for inspection)")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Segment number.
        segment: u64,
        /// Byte offset of the damaged structure.
        offset: u64,
        /// What is wrong.
        reason: FormatError,
    },
    /// The reader needs entries from a segment that was already removed.
    #[error("journal {dir}: position {wanted} is no longer in the journal (oldest segment is {oldest}); a full copy is needed")]
    Gap {
        /// The journal directory.
        dir: PathBuf,
        /// The position asked for.
        wanted: Position,
        /// The oldest segment present.
        oldest: u64,
    },
    /// Another process has the journal open for writing.
    #[error(transparent)]
    Locked(#[from] crate::state::StateError),
    /// The entry does not fit the format.
    #[error("entry for {name} cannot be journaled: {reason}")]
    TooLarge {
        /// The entry's name.
        name: String,
        /// Which limit.
        reason: FormatError,
    },
    /// The journal's file system has no room for more entries (beyond its reserve).
    #[error("journal {dir} is full: no room for {need} more bytes ({free} bytes free, {reserve} kept in reserve)")]
    Full {
        /// The journal directory.
        dir: PathBuf,
        /// Bytes asked for.
        need: u64,
        /// Bytes free on its file system.
        free: u64,
        /// Bytes the journal leaves free.
        reserve: u64,
    },
    /// An earlier write or fsync failed in a way that leaves the journal's state unknown.
    #[error("journal {0} refused further appends after an earlier write or fsync failure; remount to recover")]
    Poisoned(PathBuf),
}

impl JournalError {
    pub(crate) fn io(path: &Path, err: io::Error) -> Self {
        JournalError::Io {
            path: path.to_path_buf(),
            err,
        }
    }
}

/// The file of segment `n` in `dir`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.journal"))
}

/// Segment numbers present in `dir`, ascending (an absent directory has none).
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JournalError::io(dir, e)),
    };
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| JournalError::io(dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name.strip_suffix(".journal") {
            if num.len() == 16 && num.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = num.parse() {
                    v.push(n);
                }
            }
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Deletes the segments numbered below `segment`, never the newest one; returns how many.
///
/// Called by the sender once every site has acknowledged past them.
pub fn remove_segments_below(dir: &Path, segment: u64) -> Result<usize, JournalError> {
    let segs = list_segments(dir)?;
    let newest = segs.last().copied().unwrap_or(0);
    let mut n = 0;
    for s in segs.into_iter().filter(|&s| s < segment && s < newest) {
        let p = segment_path(dir, s);
        match std::fs::remove_file(&p) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(JournalError::io(&p, e)),
        }
    }
    if n > 0 {
        crate::state::fsync_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    }
    Ok(n)
}

/// Total bytes of the segments from `from` on (a rough backlog measure).
pub fn bytes_from(dir: &Path, from: Position) -> Result<u64, JournalError> {
    let mut total = 0;
    for s in list_segments(dir)? {
        if s < from.segment {
            continue;
        }
        let p = segment_path(dir, s);
        let len = match std::fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(JournalError::io(&p, e)),
        };
        total += if s == from.segment {
            len.saturating_sub(from.offset.max(format::SEGMENT_HEADER_LEN))
        } else {
            len.saturating_sub(format::SEGMENT_HEADER_LEN)
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
