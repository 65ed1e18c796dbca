//! Recording: which rules select a name, and the journal entries an operation produces.
//!
//! Names in entries are full paths as the user sees them (the mount path followed by the path
//! below it). One entry is appended per selecting rule. Renames follow seeds/002 \[0050\]: a
//! rename whose old and new names stay inside one rule is sent as a rename; otherwise the rule
//! that loses the name gets a delete and the rule that gains it a copy. Directory renames are
//! classified per rule: inside a subtree rule on both sides (rename), leaving it (delete),
//! entering it (copy of the subtree), or moving the rule's own base directory or an ancestor
//! of it (delete, or copy, of everything the rule selects: the entry's name is then the rule's
//! base, shorter than its prefix).

use std::sync::Arc;

use crate::entry::{Command, EntryRef};
use crate::journal::Journal;
use crate::matcher::{Matcher, RuleTable};
use crate::rule::{PatternKind, Rule};

use super::error::{FsError, FsResult};

/// Rules selecting a name, as kept by an open handle.
pub type Rules = Vec<Arc<Rule>>;

/// One entry to append.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The rule it is for.
    pub rule: Arc<Rule>,
    /// Command.
    pub command: Command,
    /// Source name.
    pub name: Vec<u8>,
    /// Second name (rename, link).
    pub aux: Vec<u8>,
    /// Flags (rename: `renameat2` flags).
    pub offset: u64,
}

/// Turns operations into journal entries.
#[derive(Debug)]
pub struct Recorder {
    journal: Journal,
    matcher: Arc<Matcher>,
    prefix: Vec<u8>,
}

fn same(a: &Rule, b: &Rule) -> bool {
    a.crc == b.crc
}

impl Recorder {
    /// A recorder appending to `journal`, matching with `matcher`, for a mount whose path (as
    /// the user sees it) is `mount_path`.
    pub fn new(journal: Journal, matcher: Arc<Matcher>, mount_path: &[u8]) -> Recorder {
        let mut prefix = mount_path.to_vec();
        while prefix.len() > 1 && prefix.ends_with(b"/") {
            prefix.pop();
        }
        if prefix == b"/" {
            prefix.clear();
        }
        Recorder {
            journal,
            matcher,
            prefix,
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The current rule table.
    pub fn table(&self) -> Arc<RuleTable> {
        self.matcher.load()
    }

    /// The full user-visible name of `rel` (a path below the mount).
    pub fn full_name(&self, rel: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.prefix.len() + 1 + rel.len());
        v.extend_from_slice(&self.prefix);
        if !rel.is_empty() || v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(rel);
        v
    }

    /// The path below the mount of the full name `full`, if it is beneath the mount.
    pub fn relative<'a>(&self, full: &'a [u8]) -> Option<&'a [u8]> {
        if self.prefix.is_empty() {
            return full.strip_prefix(b"/");
        }
        match full.strip_prefix(self.prefix.as_slice())? {
            [] => Some(&[]),
            [b'/', rest @ ..] => Some(rest),
            _ => None,
        }
    }

    /// Rules selecting the file (or symlink, fifo) `full`.
    pub fn file_rules(&self, table: &RuleTable, full: &[u8]) -> Rules {
        table
            .match_file(full)
            .into_iter()
            .map(|m| table.rule(m).clone())
            .collect()
    }

    /// Rules selecting the directory `full` (subtree rules strictly above it).
    pub fn dir_rules(&self, table: &RuleTable, full: &[u8]) -> Rules {
        table
            .match_dir(full)
            .into_iter()
            .map(|m| table.rule(m).clone())
            .collect()
    }

    /// Rules selecting `full`, a directory or not.
    pub fn rules(&self, table: &RuleTable, full: &[u8], is_dir: bool) -> Rules {
        if is_dir {
            self.dir_rules(table, full)
        } else {
            self.file_rules(table, full)
        }
    }

    /// Appends `proto` once per rule in `rules`, with each rule's CRC.
    pub fn append(&self, rules: &[Arc<Rule>], proto: EntryRef<'_>) -> FsResult<()> {
        for r in rules {
            let e = EntryRef {
                rule_crc: r.crc,
                ..proto
            };
            self.journal.append(&e).map_err(|err| FsError::Journal {
                name: String::from_utf8_lossy(proto.name).into_owned(),
                err,
            })?;
        }
        Ok(())
    }

    /// Appends planned entries in order.
    pub fn append_planned(&self, plan: &[Planned]) -> FsResult<()> {
        for p in plan {
            let e = EntryRef {
                aux: &p.aux,
                offset: p.offset,
                ..EntryRef::new(p.command, p.rule.crc, &p.name)
            };
            self.append(std::slice::from_ref(&p.rule), e)?;
        }
        Ok(())
    }

    /// Makes every appended entry durable.
    pub fn sync(&self) -> FsResult<()> {
        self.journal.sync().map_err(|err| FsError::Journal {
            name: "(fsync)".into(),
            err,
        })
    }

    /// Entries for renaming `old` to `new` (full names).
    pub fn rename_plan(
        &self,
        table: &RuleTable,
        old: &[u8],
        new: &[u8],
        is_dir: bool,
        exchange: bool,
        new_is_dir: bool,
    ) -> Vec<Planned> {
        let plan = |rule: &Arc<Rule>, command, name: &[u8], aux: &[u8], offset| Planned {
            rule: rule.clone(),
            command,
            name: name.to_vec(),
            aux: aux.to_vec(),
            offset,
        };
        let mut out = Vec::new();
        if exchange {
            let a = self.rules(table, old, is_dir);
            let b = self.rules(table, new, new_is_dir);
            for r in &a {
                if b.iter().any(|x| same(x, r)) {
                    out.push(plan(
                        r,
                        Command::Rename,
                        old,
                        new,
                        libc::RENAME_EXCHANGE as u64,
                    ));
                } else {
                    out.push(plan(r, Command::Delete, old, b"", 0));
                    out.push(plan(r, Command::Copy, old, b"", 0));
                }
            }
            for r in b.iter().filter(|r| !a.iter().any(|x| same(x, r))) {
                out.push(plan(r, Command::Delete, new, b"", 0));
                out.push(plan(r, Command::Copy, new, b"", 0));
            }
            return out;
        }
        if !is_dir {
            let a = self.file_rules(table, old);
            let b = self.file_rules(table, new);
            for r in &a {
                if b.iter().any(|x| same(x, r)) {
                    out.push(plan(r, Command::Rename, old, new, 0));
                } else {
                    out.push(plan(r, Command::Delete, old, b"", 0));
                }
            }
            for r in b.iter().filter(|r| !a.iter().any(|x| same(x, r))) {
                out.push(plan(r, Command::Copy, new, b"", 0));
            }
            return out;
        }
        for r in table.rules() {
            let before = classify(r, old);
            let after = classify(r, new);
            let base = rule_base(r);
            match (before, after) {
                (Place::Inner, Place::Inner) => out.push(plan(r, Command::Rename, old, new, 0)),
                (Place::Outside, Place::Outside) => {}
                (b, a) => {
                    match b {
                        Place::Inner => out.push(plan(r, Command::Delete, old, b"", 0)),
                        Place::Base => out.push(plan(r, Command::Delete, base, b"", 0)),
                        Place::Outside => {}
                    }
                    match a {
                        Place::Inner => out.push(plan(r, Command::Copy, new, b"", 0)),
                        Place::Base => out.push(plan(r, Command::Copy, base, b"", 0)),
                        Place::Outside => {}
                    }
                }
            }
        }
        out
    }

    /// Entries for a hard link of `existing` as `new` (full names).
    pub fn link_plan(&self, table: &RuleTable, existing: &[u8], new: &[u8]) -> Vec<Planned> {
        let a = self.file_rules(table, existing);
        let mut out = Vec::new();
        for r in self.file_rules(table, new) {
            let (command, name, aux) = if a.iter().any(|x| same(x, &r)) {
                (Command::Link, existing.to_vec(), new.to_vec())
            } else {
                (Command::Copy, new.to_vec(), Vec::new())
            };
            out.push(Planned {
                rule: r,
                command,
                name,
                aux,
                offset: 0,
            });
        }
        out
    }
}

/// Where a directory path lies relative to a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Strictly inside a subtree rule's subtree.
    Inner,
    /// The rule's base directory, or an ancestor of it: everything the rule selects is below.
    Base,
    /// Unrelated.
    Outside,
}

/// The directory a rule's names live under (for a fixed file: the file itself).
fn rule_base(r: &Rule) -> &[u8] {
    let p = r.spec.pattern.prefix();
    match r.spec.pattern.kind() {
        PatternKind::File => p,
        _ if p.len() > 1 => &p[..p.len() - 1],
        _ => p,
    }
}

fn classify(r: &Rule, dir: &[u8]) -> Place {
    let prefix = r.spec.pattern.prefix();
    let kind = r.spec.pattern.kind();
    if kind.is_subtree() && dir.len() > prefix.len() && dir.starts_with(prefix) {
        return Place::Inner;
    }
    let base = rule_base(r);
    let dir_slash_is_prefix_of_base =
        base.starts_with(dir) && base.get(dir.len()).is_none_or(|&c| c == b'/');
    if dir_slash_is_prefix_of_base {
        Place::Base
    } else {
        Place::Outside
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalConfig;
    use crate::matcher::tests::rule;

    fn fixture(rules: Vec<Rule>) -> (tempfile::TempDir, Recorder, Arc<RuleTable>) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), JournalConfig::default()).unwrap();
        let m = Arc::new(Matcher::new(RuleTable::build(rules, 1)));
        let rec = Recorder::new(j, m, b"/m");
        let t = rec.table();
        (dir, rec, t)
    }

    fn summary(plan: &[Planned]) -> Vec<(i64, &'static str, String, String)> {
        plan.iter()
            .map(|p| {
                (
                    p.rule.id,
                    p.command.name(),
                    String::from_utf8_lossy(&p.name).into_owned(),
                    String::from_utf8_lossy(&p.aux).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn full_names() {
        let (_d, rec, _) = fixture(vec![]);
        assert_eq!(rec.full_name(b""), b"/m");
        assert_eq!(rec.full_name(b"a/b"), b"/m/a/b");
        let dir = tempfile::tempdir().unwrap();
        let root = Recorder::new(
            Journal::open(dir.path(), JournalConfig::default()).unwrap(),
            Arc::new(Matcher::default()),
            b"/",
        );
        assert_eq!(root.full_name(b"a"), b"/a");
        assert_eq!(root.full_name(b""), b"/");
    }

    #[test]
    fn file_renames_within_into_and_out_of_rules() {
        let (_d, rec, t) = fixture(vec![rule(1, "/m/s/"), rule(2, "/m/*.doc")]);
        let s = |o: &str, n: &str| {
            summary(&rec.rename_plan(&t, o.as_bytes(), n.as_bytes(), false, false, false))
        };
        assert_eq!(
            s("/m/s/a", "/m/s/b"),
            vec![(1, "rename", "/m/s/a".into(), "/m/s/b".into())]
        );
        assert_eq!(
            s("/m/s/a", "/m/x"),
            vec![(1, "delete", "/m/s/a".into(), "".into())]
        );
        assert_eq!(
            s("/m/x", "/m/s/a"),
            vec![(1, "copy", "/m/s/a".into(), "".into())]
        );
        assert_eq!(
            s("/m/s/a.doc", "/m/a.doc"),
            vec![
                (1, "delete", "/m/s/a.doc".into(), "".into()),
                (2, "copy", "/m/a.doc".into(), "".into())
            ]
        );
        assert_eq!(s("/m/x", "/m/y"), vec![]);
    }

    #[test]
    fn directory_renames_per_rule() {
        let (_d, rec, t) = fixture(vec![
            rule(1, "/m/s/"),
            rule(2, "/m/s/w/*.doc"),
            rule(3, "/m/t/*.rs/"),
        ]);
        let s = |o: &str, n: &str| {
            summary(&rec.rename_plan(&t, o.as_bytes(), n.as_bytes(), true, false, true))
        };
        // Inside subtree 1 on both sides; it also moves rule 2's base away.
        assert_eq!(
            s("/m/s/w", "/m/s/v"),
            vec![
                (1, "rename", "/m/s/w".into(), "/m/s/v".into()),
                (2, "delete", "/m/s/w".into(), "".into())
            ]
        );
        // Moving subtree 1's base: everything it selects is gone, and rule 2's too.
        assert_eq!(
            s("/m/s", "/m/q"),
            vec![
                (1, "delete", "/m/s".into(), "".into()),
                (2, "delete", "/m/s/w".into(), "".into())
            ]
        );
        // A directory entering a subtree-wildcard rule is copied for it.
        assert_eq!(
            s("/m/x", "/m/t/x"),
            vec![(3, "copy", "/m/t/x".into(), "".into())]
        );
        // And comes back as the base of rule 3.
        assert_eq!(
            s("/m/other", "/m/t"),
            vec![(3, "copy", "/m/t".into(), "".into())]
        );
    }

    #[test]
    fn exchange_and_links() {
        let (_d, rec, t) = fixture(vec![rule(1, "/m/s/")]);
        let p = rec.rename_plan(&t, b"/m/s/a", b"/m/s/b", false, true, false);
        assert_eq!(
            summary(&p),
            vec![(1, "rename", "/m/s/a".into(), "/m/s/b".into())]
        );
        assert_eq!(p[0].offset, libc::RENAME_EXCHANGE as u64);
        let p = rec.rename_plan(&t, b"/m/s/a", b"/m/x", false, true, false);
        assert_eq!(
            summary(&p),
            vec![
                (1, "delete", "/m/s/a".into(), "".into()),
                (1, "copy", "/m/s/a".into(), "".into())
            ]
        );
        assert_eq!(
            summary(&rec.link_plan(&t, b"/m/s/a", b"/m/s/b")),
            vec![(1, "link", "/m/s/a".into(), "/m/s/b".into())]
        );
        assert_eq!(
            summary(&rec.link_plan(&t, b"/m/x", b"/m/s/b")),
            vec![(1, "copy", "/m/s/b".into(), "".into())]
        );
    }
}
