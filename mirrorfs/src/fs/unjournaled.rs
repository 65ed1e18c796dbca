//! Changes the journal could not take (issue 12, item 4): nothing is lost when the journal's
//! disk fills or fails.
//!
//! Before an operation on a file a rule selects, mirrorfs asks the journal for room
//! ([`crate::journal::Journal::room`]); without it the operation is refused with `ENOSPC` and
//! nothing changes. Should an append still fail after the change was made (a race for the
//! last bytes, a disk error), the names it concerns are marked here, durably
//! (`<state>/unjournaled`, lines `CRC NAME` in hex, written in the state file system's
//! reserve), and the operation succeeds: the change is in the file, and the file is sent
//! whole (a directory reconciled and sent whole) once the journal takes entries again. The
//! keeper retries every second; a mount retries at start. `mirror-ctl status` shows the
//! trouble and the marks waiting.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::blocked::DirtySet;

/// What is wrong with the journal now, for status and the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trouble {
    /// Since when (seconds since the epoch).
    pub since: u64,
    /// What the journal said.
    pub reason: String,
    /// Bytes of the change it refused (the trouble is over once that much fits again).
    pub need: u64,
}

/// The names to send whole once the journal takes entries again.
#[derive(Debug)]
pub struct Unjournaled {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    names: BTreeSet<(u32, Vec<u8>)>,
    trouble: Option<Trouble>,
    /// When the error log last heard of a trouble: a disk that fills and empties again and
    /// again is reported once a minute, not at every turn.
    reported: Option<std::time::Instant>,
    /// When a change was last refused (or marked for lack of room).
    refused: Option<std::time::Instant>,
}

/// How long a trouble is shown after the last refusal, at least: with buffered writes the
/// journal refuses large entries while small ones still fit, and a status that cleared at the
/// next small entry would never show it.
const SHOWN_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How often, at most, a new trouble is written to the error log.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Unjournaled {
    /// The marks kept in `path` (read now: marks left by an earlier mount are retried).
    pub fn open(path: PathBuf) -> Unjournaled {
        let names = match DirtySet::load(&path) {
            Ok(s) => s.map(|s| s.names).unwrap_or_default(),
            Err(e) => {
                log::error!("{e}; the files it names are reconciled by the next mount's scan");
                BTreeSet::new()
            }
        };
        if !names.is_empty() {
            log::warn!(
                "{} files changed while the journal could not take them; sending them whole",
                names.len()
            );
        }
        Unjournaled {
            path,
            state: Mutex::new(State {
                names,
                trouble: None,
                reported: None,
                refused: None,
            }),
        }
    }

    /// Notes that the journal is in trouble, refusing `need` bytes (once per episode in the
    /// error log).
    pub fn trouble(&self, reason: &str, need: u64) {
        let mut s = lock(&self.state);
        s.refused = Some(std::time::Instant::now());
        if s.trouble.is_none() {
            if s.reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                log::error!(
                    "the journal cannot take entries ({reason}): changes to files the rules select are refused with ENOSPC until it can, and what the kernel writes back of buffered writes goes to the files, which are sent whole later (sent segments are removed as sites acknowledge them)"
                );
                s.reported = Some(std::time::Instant::now());
            } else {
                log::debug!("the journal cannot take entries ({reason}) again");
            }
            s.trouble = Some(Trouble {
                since: crate::blocked::now_secs(),
                reason: reason.to_string(),
                need,
            });
        } else if let Some(t) = s.trouble.as_mut() {
            t.need = t.need.max(need);
        }
    }

    /// The trouble now, if any.
    pub fn current_trouble(&self) -> Option<Trouble> {
        lock(&self.state).trouble.clone()
    }

    /// Marks `names` (with their rules' CRCs) to be sent whole, durably; whether the marks
    /// are on disk.
    pub fn mark(&self, names: impl IntoIterator<Item = (u32, Vec<u8>)>) -> bool {
        let mut s = lock(&self.state);
        s.names.extend(names);
        let set = DirtySet {
            names: s.names.clone(),
            ..DirtySet::default()
        };
        match set.store(&self.path) {
            Ok(()) => true,
            Err(e) => {
                log::error!("cannot mark the files the journal missed: {e}");
                false
            }
        }
    }

    /// The names waiting.
    pub fn pending(&self) -> Vec<(u32, Vec<u8>)> {
        lock(&self.state).names.iter().cloned().collect()
    }

    /// Removes `done` (now in the journal); ends the trouble when nothing waits.
    pub fn done(&self, done: &[(u32, Vec<u8>)]) {
        let mut s = lock(&self.state);
        for d in done {
            s.names.remove(d);
        }
        let res = if s.names.is_empty() {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        } else {
            DirtySet {
                names: s.names.clone(),
                ..DirtySet::default()
            }
            .store(&self.path)
            .map_err(|e| e.to_string())
        };
        if let Err(e) = res {
            log::warn!("{}: {e}", self.path.display());
        }
    }

    /// The journal took entries again: the trouble is over once nothing waits.
    pub fn recovered(&self) {
        let mut s = lock(&self.state);
        let lately = s.refused.is_some_and(|t| t.elapsed() < SHOWN_AFTER);
        if s.names.is_empty() && !lately && s.trouble.take().is_some() {
            log::info!("the journal takes entries again");
        }
    }
}
