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
use crate::journal::{Journal, Position};
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

/// How long a change waits for journal room on a full disk before it is refused (`ENOSPC`).
pub const ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Turns operations into journal entries.
#[derive(Debug)]
pub struct Recorder {
    journal: Journal,
    matcher: Arc<Matcher>,
    prefix: Vec<u8>,
    /// Names whose changes the journal could not take, to send whole later.
    unjournaled: Option<super::unjournaled::Unjournaled>,
    /// The waits of sync rules ([`crate::syncwait`]).
    sync: Arc<crate::syncwait::SyncWait>,
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
        let sync = Arc::new(crate::syncwait::SyncWait::new(
            matcher.clone(),
            journal.dir().to_path_buf(),
        ));
        Recorder {
            journal,
            matcher,
            prefix,
            unjournaled: None,
            sync,
        }
    }

    /// The waits of the sync rules' durability points.
    pub fn sync_wait(&self) -> &Arc<crate::syncwait::SyncWait> {
        &self.sync
    }

    /// In a namespace change: refused (`EIO`) when a sync rule of `rules` with
    /// `--on-sync-loss fail` has a site out of sync ([`crate::syncwait::SyncWait::refusal`]).
    fn sync_refusal<'a>(
        &self,
        rules: impl IntoIterator<Item = &'a Arc<Rule>>,
        name: &[u8],
    ) -> FsResult<()> {
        if !crate::syncwait::in_namespace_change() {
            return Ok(());
        }
        let rules: Vec<Arc<Rule>> = rules.into_iter().cloned().collect();
        match self.sync.refusal(&rules) {
            None => Ok(()),
            Some(why) => Err(FsError::OutOfSync {
                name: String::from_utf8_lossy(name).into_owned(),
                why,
            }),
        }
    }

    /// A durability point of a name `rules` select: with sync rules among them, it waits
    /// for their sites up to the journal's end ([`crate::syncwait::note_point`]).
    pub fn durability_point(&self, rules: &[Arc<Rule>]) {
        if crate::syncwait::any_sync(rules) {
            crate::syncwait::note_point(rules, self.journal.end());
        }
    }

    /// Keeps the names of changes the journal cannot take in the file `path` (see
    /// [`super::unjournaled`]); without it such a change fails with EIO.
    pub fn with_marks(mut self, path: std::path::PathBuf) -> Recorder {
        self.unjournaled = Some(super::unjournaled::Unjournaled::open(path));
        self
    }

    /// The changes the journal could not take.
    pub fn unjournaled(&self) -> Option<&super::unjournaled::Unjournaled> {
        self.unjournaled.as_ref()
    }

    /// Asks the journal for room for the entries of a change of `name` (full name) under
    /// `rules`, with `data` bytes of data, before the change is made: `ENOSPC` without it.
    pub fn room(&self, rules: &[Arc<Rule>], name: &[u8], data: usize) -> FsResult<()> {
        if rules.is_empty() {
            return Ok(());
        }
        journalable(name)?;
        self.sync_refusal(rules, name)?;
        let one = crate::journal::format::RECORD_HEADER_LEN + 2 * name.len() + data + 256;
        let need = (one * rules.len()) as u64;
        self.wait_for_room(need)
            .map_err(|err| self.refused(name, need, err))
    }

    /// [`Recorder::room`] for a change the application was told of already (a write the
    /// kernel buffered and writes back now): it must reach the file, so without room its
    /// name is marked to be sent whole ([`super::unjournaled`]) and `false` says to journal
    /// nothing; an error only when even the mark fails.
    pub fn room_or_mark(&self, rules: &[Arc<Rule>], name: &[u8], data: usize) -> FsResult<bool> {
        let err = match self.room(rules, name, data) {
            Ok(()) => return Ok(true),
            Err(e) => e,
        };
        let names = rules.iter().map(|r| (r.crc, name.to_vec())).collect();
        self.mark_instead(names, err).map(|()| false)
    }

    /// For a change the journal could not take (`err`): `names` are marked to be sent whole
    /// ([`super::unjournaled`]) and the change stands; `err` only when even the mark fails.
    fn mark_instead(&self, names: Vec<(u32, Vec<u8>)>, err: FsError) -> FsResult<()> {
        match &self.unjournaled {
            Some(u) if u.mark(names) => {
                log::error!("{err}; the file is sent whole once the journal takes entries");
                Ok(())
            }
            _ => Err(err),
        }
    }

    /// Room for the entries of a removal of `name` (unlink, rmdir). A removal frees space,
    /// so where the journal's disk is full it goes ahead at once: its entry is appended once
    /// the removal has made room, or else the name is marked unjournaled and sent as its
    /// deletion (what [`Recorder::append`] does with any entry the journal cannot take).
    /// Otherwise a full disk shared by the tree and the state directory could not be freed
    /// through the mount at all.
    pub fn room_to_remove(&self, rules: &[Arc<Rule>], name: &[u8]) -> FsResult<()> {
        if rules.is_empty() {
            return Ok(());
        }
        journalable(name)?;
        self.sync_refusal(rules, name)?;
        let need =
            ((crate::journal::format::RECORD_HEADER_LEN + name.len() + 256) * rules.len()) as u64;
        match self.journal.room(need) {
            Err(crate::journal::JournalError::Full { .. }) => {
                log::info!(
                    "{}: removed although the journal's disk is full (a removal makes room)",
                    String::from_utf8_lossy(name)
                );
                Ok(())
            }
            r => r.map_err(|err| self.refused(name, need, err)),
        }
    }

    /// Room for `need` bytes, waiting up to [`ROOM_WAIT`] when the disk is full but the
    /// journal is not known to be in trouble yet: a sender removing acknowledged segments
    /// often makes room in that time, and a short wait is better than an error. Once the
    /// trouble is known, changes are refused at once (until room returns).
    fn wait_for_room(&self, need: u64) -> Result<(), crate::journal::JournalError> {
        let deadline = std::time::Instant::now() + ROOM_WAIT;
        loop {
            match self.journal.room(need) {
                Err(crate::journal::JournalError::Full { .. })
                    if std::time::Instant::now() < deadline
                        && self
                            .unjournaled
                            .as_ref()
                            .is_none_or(|u| u.current_trouble().is_none()) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    /// A journal error for `name` (refusing `need` bytes), noted for status and the log.
    fn refused(&self, name: &[u8], need: u64, err: crate::journal::JournalError) -> FsError {
        if let Some(u) = &self.unjournaled {
            u.trouble(&err.to_string(), need);
        }
        FsError::Journal {
            name: String::from_utf8_lossy(name).into_owned(),
            err,
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

    /// Installs a new rule table (see [`super::MirrorFs::install_rules`] for the ordering
    /// with a new rule's first copy).
    pub fn install(&self, table: RuleTable) {
        self.matcher.store(table);
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

    /// Appends `proto` once per rule in `rules`, with each rule's CRC. Called after the change
    /// was made: should the journal fail now, the names it concerns are marked to be sent
    /// whole ([`super::unjournaled`]) and the change stands; only when even that fails is the
    /// error returned.
    pub fn append(&self, rules: &[Arc<Rule>], proto: EntryRef<'_>) -> FsResult<()> {
        for (i, r) in rules.iter().enumerate() {
            let e = EntryRef {
                rule_crc: r.crc,
                ..proto
            };
            let pos = match self.journal.append(&e) {
                Ok(pos) => pos,
                Err(err) => {
                    let need = crate::journal::format::record_len(&e) as u64;
                    let err = self.refused(proto.name, need, err);
                    let mut names: Vec<(u32, Vec<u8>)> = Vec::new();
                    for r in &rules[i..] {
                        names.push((r.crc, proto.name.to_vec()));
                        if matches!(proto.command, Command::Rename | Command::Link) {
                            names.push((r.crc, proto.aux.to_vec()));
                        }
                    }
                    return self.mark_instead(names, err);
                }
            };
            let len = crate::journal::format::record_len(&e) as u64;
            crate::syncwait::note_entry(r, Position::new(pos.segment, pos.offset + len));
        }
        self.unjournaled_ok();
        Ok(())
    }

    /// An append went through: the journal's trouble (if any) ends once nothing waits.
    fn unjournaled_ok(&self) {
        if let Some(u) = &self.unjournaled {
            if u.current_trouble().is_some() {
                u.recovered();
            }
        }
    }

    /// Sends whole what the journal could not take before (a copy, and for a directory a
    /// reconciliation too), as far as it takes entries now; how many are left.
    pub fn retry_unjournaled(&self, root: std::os::fd::BorrowedFd<'_>) -> usize {
        let Some(u) = &self.unjournaled else {
            return 0;
        };
        let pending = u.pending();
        if pending.is_empty() {
            if u.current_trouble()
                .is_some_and(|t| self.journal.room(t.need).is_ok())
            {
                u.recovered();
            }
            return 0;
        }
        let table = self.table();
        let mut done = Vec::new();
        for (crc, name) in &pending {
            if journalable(name).is_err() {
                // Never journaled (refused before the change): nothing to wait for.
                log::error!(
                    "{}",
                    journalable(name)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                );
                done.push((*crc, name.clone()));
                continue;
            }
            let Some(rule) = table.rules().iter().find(|r| r.crc == *crc) else {
                done.push((*crc, name.clone()));
                continue;
            };
            let is_dir = self
                .relative(name)
                .and_then(|rel| {
                    super::sys::stat_at(root, if rel.is_empty() { b"." } else { rel }).ok()
                })
                .is_some_and(|st| st.is_dir());
            let mut entries = vec![EntryRef::new(Command::Copy, rule.crc, name)];
            if is_dir {
                entries.insert(0, EntryRef::new(Command::Reconcile, rule.crc, name));
            }
            if self.journal.room(4096 + 2 * name.len() as u64).is_err()
                || entries.iter().any(|e| self.journal.append(e).is_err())
            {
                break;
            }
            done.push((*crc, name.clone()));
        }
        u.done(&done);
        u.recovered();
        pending.len() - done.len()
    }

    /// Room in the journal for the planned entries, before their change is made.
    pub fn room_for_plan(&self, plan: &[Planned]) -> FsResult<()> {
        for p in plan {
            journalable(&p.name)?;
            journalable(&p.aux)?;
            self.sync_refusal([&p.rule], &p.name)?;
        }
        let bytes: usize = plan
            .iter()
            .map(|p| crate::journal::format::RECORD_HEADER_LEN + p.name.len() + p.aux.len() + 64)
            .sum();
        match plan.first() {
            Some(p) => self
                .wait_for_room(bytes as u64)
                .map_err(|err| self.refused(&p.name, bytes as u64, err)),
            None => Ok(()),
        }
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

    /// Whether every appended entry is durable already.
    pub fn durable(&self) -> bool {
        self.journal.is_durable()
    }

    /// Makes every appended entry durable.
    pub fn sync(&self) -> FsResult<()> {
        self.journal.sync().map_err(|err| FsError::Journal {
            name: "(fsync)".into(),
            err,
        })
    }

    /// Entries for renaming `old` to `new` (full names); `target`: what the rename replaces
    /// (or exchanges) at `new`, if another file or directory is there: whether it is a
    /// directory.
    pub fn rename_plan(
        &self,
        table: &RuleTable,
        old: &[u8],
        new: &[u8],
        is_dir: bool,
        exchange: bool,
        target: Option<bool>,
    ) -> Vec<Planned> {
        let (new_is_dir, replaces) = (target == Some(true), target.is_some());
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
                if replaces && r.spec.delete_suffix.is_some() {
                    // The copy would overwrite the backup of the file the rename replaces: a
                    // delete first keeps it under the suffix.
                    out.push(plan(r, Command::Delete, new, b"", 0));
                }
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
/// Whether a journal entry takes `name` ([`crate::entry::MAX_NAME_LEN`]): a change to a name
/// it does not take is refused before it is made, never left unrecorded.
fn journalable(name: &[u8]) -> FsResult<()> {
    if name.len() <= crate::entry::MAX_NAME_LEN {
        return Ok(());
    }
    Err(FsError::NameTooLong {
        name: String::from_utf8_lossy(&name[..200]).into_owned(),
        len: name.len(),
    })
}

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
            summary(&rec.rename_plan(&t, o.as_bytes(), n.as_bytes(), false, false, None))
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

    /// Issue 13 item 4: a file renamed into a rule over one the rule selects replaces it; with a
    /// delete suffix a delete goes before the copy, so the router keeps the replaced file.
    #[test]
    fn a_rename_into_a_rule_that_replaces_a_file_deletes_it_first_under_a_suffix() {
        let mut keeping = rule(1, "/m/*.txt");
        keeping.spec.delete_suffix = Some(".del".into());
        let (_d, rec, t) = fixture(vec![keeping, rule(2, "/m/s/")]);
        let s = |o: &str, n: &str, replaces: bool| {
            let target = replaces.then_some(false);
            summary(&rec.rename_plan(&t, o.as_bytes(), n.as_bytes(), false, false, target))
        };
        assert_eq!(
            s("/m/.c.txt.tmp", "/m/c.txt", true),
            vec![
                (1, "delete", "/m/c.txt".into(), "".into()),
                (1, "copy", "/m/c.txt".into(), "".into())
            ]
        );
        assert_eq!(
            s("/m/.c.txt.tmp", "/m/c.txt", false),
            vec![(1, "copy", "/m/c.txt".into(), "".into())]
        );
        // Without a suffix the copy alone replaces it.
        assert_eq!(
            s("/m/x", "/m/s/a", true),
            vec![(2, "copy", "/m/s/a".into(), "".into())]
        );
    }

    #[test]
    fn directory_renames_per_rule() {
        let (_d, rec, t) = fixture(vec![
            rule(1, "/m/s/"),
            rule(2, "/m/s/w/*.doc"),
            rule(3, "/m/t/*.rs/"),
        ]);
        let s = |o: &str, n: &str| {
            summary(&rec.rename_plan(&t, o.as_bytes(), n.as_bytes(), true, false, None))
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
        let p = rec.rename_plan(&t, b"/m/s/a", b"/m/s/b", false, true, Some(false));
        assert_eq!(
            summary(&p),
            vec![(1, "rename", "/m/s/a".into(), "/m/s/b".into())]
        );
        assert_eq!(p[0].offset, libc::RENAME_EXCHANGE as u64);
        let p = rec.rename_plan(&t, b"/m/s/a", b"/m/x", false, true, Some(false));
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
