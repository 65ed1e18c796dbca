//! A rule's first copy: the copy of what a new rule selects, queued once, so that files that
//! existed before the rule reach its sites (issue 13).
//!
//! `mirror-ctl rule add` stores the rule with its first copy still to be queued
//! ([`crate::rulesdb::FirstCopy`] without a position), in the same transaction. Whoever loads
//! the rule first with the journal in hand queues it:
//!
//! * a running mirrorfs, at the moment it installs the rule table that holds the rule (the
//!   rules watcher, a request on its control socket, or the mount's start): the copy entry is
//!   appended while the namespace lock is held exclusively, so no entry of the rule can come
//!   before it ([`crate::fs::MirrorFs::install_rules`]);
//! * `mirror-ctl` itself when nothing is mounted: straight into the journal, as `sync` does.
//!
//! The copy is ONE entry, a [`Command::Copy`] of the rule's base ([`base`]: its file, or its
//! directory); mirror-sendd expands it file by file as it sends it, so adding a rule costs
//! the same whatever the number of files. Once queued, the row holds the entry's journal
//! position: the first copy is done when every site of the rule acknowledged past it.
//! Queuing twice (a crash between the append and the row's update) sends the files twice,
//! which the backup takes as it took them the first time.

use crate::entry::{Command, EntryRef};
use crate::journal::{Journal, JournalError, Position};
use crate::rule::{PatternKind, Rule};
use crate::rulesdb::{RulesDb, RulesDbError};

/// What went wrong while queuing first copies.
#[derive(Debug, thiserror::Error)]
pub enum FirstCopyError {
    /// The rules database.
    #[error(transparent)]
    Rules(#[from] RulesDbError),
    /// The journal.
    #[error("cannot queue the first copy in the journal: {0}")]
    Journal(#[from] JournalError),
}

/// The name a copy of the whole rule visits: its file (a fixed-name rule), or the directory
/// its names live in (without the trailing `/`; `/` for the root).
pub fn base(rule: &Rule) -> Vec<u8> {
    let p = rule.spec.pattern.prefix();
    if rule.spec.pattern.kind() == PatternKind::File {
        return p.to_vec();
    }
    match p.strip_suffix(b"/") {
        Some([]) | None => b"/".to_vec(),
        Some(b) => b.to_vec(),
    }
}

/// A first copy still to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Todo {
    /// The rule's id.
    pub rule_id: i64,
    /// The rule's CRC (the copy entry's).
    pub crc: u32,
    /// The name to copy ([`base`]).
    pub name: Vec<u8>,
}

/// The first copies of `rules` (the database's rules, as read with it) still to be queued.
pub fn todo(db: &RulesDb, rules: &[Rule]) -> Result<Vec<Todo>, RulesDbError> {
    Ok(db
        .first_copies()?
        .into_iter()
        .filter(|f| f.queued.is_none())
        .filter_map(|f| {
            rules.iter().find(|r| r.id == f.rule_id).map(|r| Todo {
                rule_id: r.id,
                crc: r.crc,
                name: base(r),
            })
        })
        .collect())
}

/// Appends the copy entry of each of `todo` to `journal` (not made durable: see [`record`]);
/// their positions, in order.
pub fn append(journal: &Journal, todo: &[Todo]) -> Result<Vec<Position>, JournalError> {
    todo.iter()
        .map(|t| journal.append(&EntryRef::new(Command::Copy, t.crc, &t.name)))
        .collect()
}

/// Makes the appended copies durable in `journal`, then records where they are in `db`.
pub fn record(
    db: &RulesDb,
    journal: &Journal,
    todo: &[Todo],
    at: &[Position],
) -> Result<(), FirstCopyError> {
    if todo.is_empty() {
        return Ok(());
    }
    journal.sync()?;
    for (t, pos) in todo.iter().zip(at) {
        db.first_copy_queued(t.rule_id, *pos)?;
    }
    Ok(())
}

/// What `mirror-ctl` does when no mirrorfs holds the journal: queues every first copy still
/// to be queued straight into `journal` (opened by the caller, which holds its lock); the
/// position of the last one.
pub fn queue_direct(db: &RulesDb, journal: &Journal) -> Result<Option<Position>, FirstCopyError> {
    let (_, rules) = db.snapshot()?;
    let todo = todo(db, &rules)?;
    let at = append(journal, &todo)?;
    record(db, journal, &todo, &at)?;
    Ok(at.last().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{Dest, Mode, Pattern, RuleSpec, Site};

    fn spec(pattern: &str, dest: &str) -> RuleSpec {
        RuleSpec {
            pattern: Pattern::parse(pattern).unwrap(),
            sites: vec![Site::parse("h:1").unwrap()],
            dest: Dest::parse(dest).unwrap(),
            attrs: false,
            delete_suffix: None,
            mode: Mode::Async,
            sync: Default::default(),
        }
    }

    #[test]
    fn bases_of_the_four_forms() {
        let rule = |p: &str| Rule {
            id: 1,
            crc: 0,
            spec: spec(p, "d"),
        };
        assert_eq!(base(&rule("/p/a/x.doc")), b"/p/a/x.doc");
        assert_eq!(base(&rule("/p/a/*.doc")), b"/p/a");
        assert_eq!(base(&rule("/p/a/")), b"/p/a");
        assert_eq!(base(&rule("/p/a/*.doc/")), b"/p/a");
    }

    #[test]
    fn queued_once_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RulesDb::open(&dir.path().join("rules.db")).unwrap();
        let a = db.add_with(spec("/p/a/", "a"), true).unwrap();
        let b = db.add_with(spec("/p/b/", "b"), false).unwrap();
        let journal = Journal::open(
            &dir.path().join("journal"),
            crate::journal::JournalConfig::default(),
        )
        .unwrap();
        let last = queue_direct(&db, &journal)
            .unwrap()
            .expect("one copy queued");
        let rows = db.first_copies().unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].rule_id, a.id);
        assert_eq!(rows[0].queued, Some(last));
        // Nothing is left to queue, and a rule without a first copy never had one.
        assert_eq!(queue_direct(&db, &journal).unwrap(), None);
        assert!(rows.iter().all(|r| r.rule_id != b.id));
        // The row goes with its rule.
        db.remove(a.id).unwrap();
        assert!(db.first_copies().unwrap().is_empty());
    }
}
