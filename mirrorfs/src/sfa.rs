//! The Store and Forward Acknowledge log (seeds/002 Figure 8): per backup site, the journal
//! position up to which the site has acknowledged everything, plus the identity of this
//! journal's stream (so a router can tell a recreated journal from the old one).
//!
//! The file `<state>/sfa` is small text, replaced atomically:
//!
//! ```text
//! stream 1234567890123
//! backup.lan:7070 3:40960
//! ```
//!
//! Losing the newest update is harmless: the router remembers what it received and the
//! sender resumes from the later of the two.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::journal::Position;
use crate::state::write_atomic;

/// Errors of the SFA log.
#[derive(Debug, thiserror::Error)]
pub enum SfaError {
    /// Reading or writing failed.
    #[error("acknowledged-position log {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A line does not parse.
    #[error("acknowledged-position log {path}, line {line}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The acknowledged positions and the stream id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sfa {
    /// Identity of the journal stream.
    pub stream: u64,
    /// Site (`HOST:PORT`) → acknowledged position.
    pub acked: BTreeMap<String, Position>,
}

impl Sfa {
    /// Reads `path`; a missing file gives a fresh log with a new random stream id.
    pub fn load(path: &Path) -> Result<Sfa, SfaError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Sfa {
                    stream: random_u64(),
                    acked: BTreeMap::new(),
                })
            }
            Err(err) => {
                return Err(SfaError::Io {
                    path: path.to_path_buf(),
                    err,
                })
            }
        };
        Sfa::parse(&text).map_err(|(line, reason)| SfaError::Parse {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    fn parse(text: &str) -> Result<Sfa, (usize, String)> {
        let mut stream = None;
        let mut acked = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| (i + 1, format!("{line:?} is not KEY VALUE")))?;
            if key == "stream" {
                stream = Some(
                    value
                        .parse()
                        .map_err(|_| (i + 1, format!("bad stream id {value:?}")))?,
                );
            } else {
                acked.insert(key.to_string(), value.parse().map_err(|e| (i + 1, e))?);
            }
        }
        let stream = stream.ok_or((1, "no stream line".to_string()))?;
        Ok(Sfa { stream, acked })
    }

    /// Replaces `path` with this log, durably.
    pub fn store(&self, path: &Path) -> Result<(), SfaError> {
        let mut out = format!("stream {}\n", self.stream);
        for (site, pos) in &self.acked {
            out.push_str(&format!("{site} {pos}\n"));
        }
        write_atomic(path, out.as_bytes()).map_err(|err| SfaError::Io {
            path: path.to_path_buf(),
            err,
        })
    }

    /// The acknowledged position of `site` ([`Position::START`] if it never acknowledged).
    pub fn get(&self, site: &str) -> Position {
        self.acked.get(site).copied().unwrap_or(Position::START)
    }
}

/// A random number from the kernel (falls back to time and pid).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_le_bytes(b)
    } else {
        crate::now_ns() ^ (u64::from(std::process::id()) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sfa");
        let mut s = Sfa::load(&p).unwrap();
        assert!(s.acked.is_empty());
        s.acked.insert("a:1".into(), Position::new(3, 77));
        s.store(&p).unwrap();
        let back = Sfa::load(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.get("a:1"), Position::new(3, 77));
        assert_eq!(back.get("b:2"), Position::START);
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sfa");
        std::fs::write(&p, "stream 5\na:1 x:y\n").unwrap();
        let e = Sfa::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
