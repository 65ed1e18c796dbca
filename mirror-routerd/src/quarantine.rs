//! Quarantine of damaged router logs: a pair whose RT1 is damaged where it holds
//! acknowledged entries (a record that fails its CRC, a damaged header or complete flag, a
//! missing RT2) is moved aside to `<router state>/quarantine/` (kept for inspection, never
//! read again by the router), and the router keeps serving every source.
//!
//! What the pair held is asked for again: each source whose pending entries are readable is
//! asked for a fresh copy of the files they name (both names of a rename or link); where the
//! damage hides entries (their site and names are unreadable too), every source with rules
//! here is asked for a copy of each of its rules' base (a full resend; nothing says whose
//! entries a damaged stretch held). The requests are kept until the copies arrive
//! ([`crate::resync`]). Entries of a damaged pair are never applied, not even the readable
//! ones: the copies bring the files to their current state.
//!
//! `quarantine/index` lists the quarantined pairs (JSON lines: pair, files, when, why, what
//! was asked of which source); `mirror-ctl router quarantine` shows it. Pair numbers are never
//! used again (the writer starts above the highest quarantined one).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use mirrorfs::blocked::{self, BlockedError};
use mirrorfs::entry::Command;
use serde::{Deserialize, Serialize};

use crate::config::RouterTable;
use crate::resync::CopyRequest;
use crate::rtlog::{self, RtRecord, Survey};

/// Errors quarantining a pair.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// Moving the files or writing the index.
    #[error("cannot quarantine router log pair {pair}: {path}: {err}")]
    Io {
        /// The pair.
        pair: u64,
        /// The file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// The index.
    #[error(transparent)]
    Index(#[from] BlockedError),
}

/// What was asked of one source for a quarantined pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    /// The source site.
    pub site: String,
    /// Files named by readable entries.
    pub files: usize,
    /// Rules copied whole (their patterns, or CRCs where unknown).
    pub whole_rules: Vec<String>,
}

/// One quarantined pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The pair number.
    pub pair: u64,
    /// Where its files are now.
    pub files: Vec<String>,
    /// When it was quarantined (seconds since the epoch).
    pub since: u64,
    /// Why.
    pub reason: String,
    /// Readable entries it held, and how many of them were not applied yet.
    pub entries: usize,
    /// Entries not applied (or whose state is unknown).
    pub pending: usize,
    /// Whether damage hid some entries.
    pub hidden: bool,
    /// The copies asked, per source.
    pub asked: Vec<Asked>,
}

/// The quarantine directory of router state `state`.
pub fn dir(state: &Path) -> PathBuf {
    state.join("quarantine")
}

/// The index of quarantined pairs.
pub fn index_path(state: &Path) -> PathBuf {
    dir(state).join("index")
}

/// The quarantined pairs, oldest first.
pub fn load(state: &Path) -> Result<Vec<Quarantined>, BlockedError> {
    blocked::load_list(&index_path(state))
}

/// The highest pair number quarantined (0 when none): new pairs start above it.
pub fn highest(state: &Path) -> Result<u64, BlockedError> {
    let listed = load(state)?.iter().map(|q| q.pair).max().unwrap_or(0);
    let on_disk = match rtlog::list_pairs(&dir(state)) {
        Ok(v) => v.last().copied().unwrap_or(0),
        Err(_) => 0,
    };
    Ok(listed.max(on_disk))
}

/// The copies to ask for pair `n`, whose `survey` is given (none when nothing of it can be
/// read), with `table`'s rules.
pub fn requests(
    n: u64,
    survey: Option<&Survey>,
    table: &RouterTable,
    reason: &str,
) -> Vec<CopyRequest> {
    let mut out = Vec::new();
    let mut named = |off: u64, r: &RtRecord, what: &str| {
        if table.get(&r.site, r.rule_crc).is_none() {
            return;
        }
        let mut names = vec![&r.name];
        if matches!(r.command, Command::Rename | Command::Link) {
            names.push(&r.aux);
        }
        for name in names {
            out.push(CopyRequest::new(
                &r.site,
                r.rule_crc,
                name,
                format!(
                    "router log pair {n} is damaged ({reason}); its entry at offset {off} ({} of {}, {what}) was not applied",
                    r.command,
                    String::from_utf8_lossy(&r.name)
                ),
            ));
        }
    };
    if let Some(sv) = survey {
        for (off, r) in sv.records.iter().filter(|(_, r)| !r.complete) {
            named(*off, r, "pending");
        }
        for (off, r) in &sv.unsure {
            named(*off, r, "its complete flag is damaged");
        }
    }
    let hidden = survey.is_none_or(|sv| !sv.holes.is_empty());
    if hidden {
        for (site, rule) in table.iter() {
            out.push(CopyRequest::whole(
                site,
                rule.crc,
                &rule.base(),
                format!(
                    "router log pair {n} is damaged ({reason}) where its entries cannot be read: everything rule {} selects is copied again",
                    rule.pattern
                ),
            ));
        }
    }
    out
}

/// Per source: how many files and which whole rules `reqs` ask for.
pub fn summary(reqs: &[CopyRequest], table: &RouterTable) -> Vec<Asked> {
    let mut by: BTreeMap<String, Asked> = BTreeMap::new();
    for r in reqs {
        let a = by.entry(r.site.clone()).or_insert_with(|| Asked {
            site: r.site.clone(),
            files: 0,
            whole_rules: Vec::new(),
        });
        if r.whole_rule {
            a.whole_rules.push(
                table
                    .get(&r.site, r.rule_crc)
                    .map(|x| x.pattern.to_string())
                    .unwrap_or_else(|| format!("{:#010x}", r.rule_crc)),
            );
        } else {
            a.files += 1;
        }
    }
    by.into_values().collect()
}

/// Moves pair `n` from `rt_dir` into the quarantine directory of `state` and records it
/// (`record.files` is filled in).
pub fn move_aside(
    state: &Path,
    rt_dir: &Path,
    n: u64,
    mut record: Quarantined,
) -> Result<Quarantined, QuarantineError> {
    let qdir = dir(state);
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |err| QuarantineError::Io { pair: n, path, err }
    };
    mirrorfs::state::private_dir(&qdir).map_err(fail(&qdir))?;
    record.files.clear();
    for from in [rtlog::rt1_path(rt_dir, n), rtlog::rt2_path(rt_dir, n)] {
        let Some(name) = from.file_name() else {
            continue;
        };
        let mut to = qdir.join(name);
        // Bounded: a name taken (files put back by hand) gets a suffix.
        for i in 1..1000 {
            if !to.exists() {
                break;
            }
            to = qdir.join(format!("{}.{i}", name.to_string_lossy()));
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => record.files.push(to.display().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(&from)(e)),
        }
    }
    mirrorfs::state::fsync_dir(&qdir).map_err(fail(&qdir))?;
    mirrorfs::state::fsync_dir(rt_dir).map_err(fail(rt_dir))?;
    let mut all = load(state)?;
    all.push(record.clone());
    blocked::store_list(&index_path(state), &all)?;
    Ok(record)
}

/// Quarantines pair `n` of `rt_dir` for `reason`: reads what it can of it, moves it aside,
/// records it. Returns the record, the copies to ask for, and the readable records (what the
/// sources sent is still counted as received).
pub fn quarantine_pair(
    state: &Path,
    rt_dir: &Path,
    n: u64,
    reason: &str,
    table: &RouterTable,
) -> Result<(Quarantined, Vec<CopyRequest>, Vec<RtRecord>), QuarantineError> {
    let sv = match rtlog::survey(rt_dir, n) {
        Ok(sv) => Some(sv),
        Err(e) => {
            log::warn!("router log pair {n}: nothing of it can be read: {e}");
            None
        }
    };
    let reqs = requests(n, sv.as_ref(), table, reason);
    let record = Quarantined {
        pair: n,
        files: Vec::new(),
        since: blocked::now_secs(),
        reason: reason.to_string(),
        entries: sv.as_ref().map_or(0, |s| s.records.len() + s.unsure.len()),
        pending: sv.as_ref().map_or(0, |s| {
            s.records.iter().filter(|(_, r)| !r.complete).count() + s.unsure.len()
        }),
        hidden: sv.as_ref().is_none_or(|s| !s.holes.is_empty()),
        asked: summary(&reqs, table),
    };
    let record = move_aside(state, rt_dir, n, record)?;
    let readable = sv
        .map(|s| s.records.into_iter().map(|(_, r)| r).collect())
        .unwrap_or_default();
    Ok((record, reqs, readable))
}

/// One line for the log and for people: what was quarantined and what was asked.
pub fn describe(q: &Quarantined) -> String {
    let asked: Vec<String> = q
        .asked
        .iter()
        .map(|a| {
            let mut parts = Vec::new();
            if a.files > 0 {
                parts.push(format!("{} files", a.files));
            }
            if !a.whole_rules.is_empty() {
                parts.push(format!("the whole of rules {}", a.whole_rules.join(", ")));
            }
            format!("{} ({})", a.site, parts.join(" and "))
        })
        .collect();
    format!(
        "router log pair {} is damaged ({}): moved to {}; its {} pending entries are not applied{}; asked for copies: {}",
        q.pair,
        q.reason,
        q.files.join(" and "),
        q.pending,
        if q.hidden {
            " (damage hides some entries)"
        } else {
            ""
        },
        if asked.is_empty() {
            "none".to_string()
        } else {
            asked.join("; ")
        }
    )
}
