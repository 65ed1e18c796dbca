//! A rule's first copy from `mirror-ctl`'s side ([`mirrorfs::firstcopy`]): queuing it at
//! `rule add` (through the running mount, or straight into the journal when nothing is
//! mounted), and what `status` says of it until the sites acknowledged it.

use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mirrorfs::control::{self, Request, Response};
use mirrorfs::journal::{Journal, JournalConfig, JournalError, Position};
use mirrorfs::rule::{PatternKind, Rule};
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::state::StateDir;
use serde::Serialize;

/// Who queued the first copy.
#[derive(Debug)]
pub enum Queued {
    /// The running mount, as it loaded the rule.
    ByMount,
    /// `mirror-ctl`, in the journal (nothing is mounted).
    Direct,
    /// Nobody yet: a mount holds the journal but does not answer (starting up); it queues
    /// the copy when it loads the rule.
    Later(String),
}

/// Queues the first copies still to be queued (the rule just added): the running mount
/// loads the rules and queues them at that moment, or, when nothing is mounted, they go
/// straight into the journal.
pub fn queue(state: &StateDir, db: &RulesDb) -> Result<Queued> {
    let sock = state.socket_path("mirrorfs");
    if sock.exists() {
        match control::request::<_, Response>(&sock, &Request::LoadRules) {
            Ok(Response::Queued { .. }) => return Ok(Queued::ByMount),
            Ok(Response::Error { reason }) => bail!(
                "the rule is added, but mirrorfs cannot queue its first copy: {reason} (the mount tries again; `mirror-ctl sync` copies the files too)"
            ),
            Ok(other) => bail!("mirrorfs answered {other:?} to a request to load the rules"),
            // A socket left by a mirrorfs that is gone: write the journal ourselves.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) => {}
            Err(e) => {
                return Ok(Queued::Later(format!(
                    "mirrorfs does not answer on {} ({e})",
                    sock.display()
                )))
            }
        }
    }
    let journal = match Journal::open(&state.journal_dir(), JournalConfig::default()) {
        Ok(j) => j,
        Err(JournalError::Locked(e)) => {
            return Ok(Queued::Later(format!(
                "the journal is held by a mirrorfs that does not answer yet ({e})"
            )))
        }
        Err(e) => return Err(e).context("cannot open the journal to queue the first copy"),
    };
    mirrorfs::firstcopy::queue_direct(db, &journal)?;
    Ok(Queued::Direct)
}

/// What is left of a rule's first copy for one site, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Left {
    /// The rule's id.
    pub rule_id: i64,
    /// Its pattern.
    pub pattern: String,
    /// Where its copy entry is in the journal (`None`: not queued yet).
    pub queued: Option<Position>,
    /// Files still to send (or sent and not acknowledged yet: see `sent_files`).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files mirror-sendd has sent of it (waiting for the acknowledgement).
    pub sent_files: u64,
    /// Whether the count stopped at [`MAX_LOOKED`] names (there are more).
    pub at_least: bool,
}

/// Names the count of what a rule selects looks at, at most.
pub const MAX_LOOKED: u64 = 1_000_000;

/// Files and bytes `rule` selects now, as far as [`MAX_LOOKED`] names (and whether it
/// stopped there). Memory: one directory listing per level.
pub fn selected(rule: &Rule) -> (u64, u64, bool) {
    use std::os::unix::fs::MetadataExt;
    let pattern = &rule.spec.pattern;
    if pattern.kind() == PatternKind::File {
        let p = Path::new(std::ffi::OsStr::from_bytes(pattern.prefix()));
        return match std::fs::symlink_metadata(p) {
            Ok(m) if !m.is_dir() => (1, if m.is_file() { m.size() } else { 0 }, false),
            _ => (0, 0, false),
        };
    }
    let subtree = pattern.kind().is_subtree();
    let (mut files, mut bytes, mut looked) = (0u64, 0u64, 0u64);
    let mut stack: Vec<PathBuf> = vec![pattern.source_dir().to_path_buf()];
    while let Some(dir) = stack.pop() {
        // A directory deeper than one call takes is listed through its parent's descriptor.
        let Ok(rd) = mirrorfs::beneath::Reach::new(&dir).and_then(|r| std::fs::read_dir(r.path()))
        else {
            continue;
        };
        for e in rd.flatten() {
            looked += 1;
            if looked > MAX_LOOKED {
                return (files, bytes, true);
            }
            let Ok(m) = e.metadata() else {
                continue;
            };
            let path = dir.join(e.file_name());
            if m.is_dir() {
                if subtree {
                    stack.push(path);
                }
                continue;
            }
            let name = path.into_os_string().into_vec();
            if pattern.match_file(&name).is_some() {
                files += 1;
                if m.is_file() {
                    bytes += m.size();
                }
            }
        }
    }
    (files, bytes, false)
}

/// What is left of each first copy for `site` (acknowledged up to `acked`; `sent`: what
/// mirror-sendd reports of the copy it is sending, as (journal position, files, bytes)).
pub fn left(
    db: &RulesDb,
    rules: &[Rule],
    site: &str,
    acked: Position,
    sent: Option<(Position, u64, u64)>,
    counted: &mut std::collections::BTreeMap<i64, (u64, u64, bool)>,
) -> Result<Vec<Left>> {
    let mut out = Vec::new();
    for fc in db.first_copies()? {
        let Some(rule) = rules.iter().find(|r| r.id == fc.rule_id) else {
            continue;
        };
        if !rule.spec.sites.iter().any(|s| s.to_string() == site) {
            continue;
        }
        if fc.queued.is_some_and(|p| acked > p) {
            continue;
        }
        let (files, bytes, at_least) = *counted.entry(rule.id).or_insert_with(|| selected(rule));
        let (sent_files, sent_bytes) = match (sent, fc.queued) {
            (Some((at, f, b)), Some(q)) if at == q => (f, b),
            _ => (0, 0),
        };
        out.push(Left {
            rule_id: rule.id,
            pattern: rule.spec.pattern.to_string(),
            queued: fc.queued,
            files: files.saturating_sub(sent_files),
            bytes: bytes.saturating_sub(sent_bytes),
            sent_files,
            at_least,
        });
    }
    Ok(out)
}
