//! Crash-safe recording: the journal's watermarks, and the reconciliation at mount of what
//! may have changed without reaching the journal.
//!
//! mirrorfs changes the underlying file first and journals the change right after (so an
//! entry always describes what really happened). A kill -9 between the two, or any change
//! made in the directory while it is not mounted, leaves a change the journal lacks. Both are
//! found by time:
//!
//! * **Watermarks.** About once a second while entries are being recorded, mirrorfs appends a
//!   [`Command::Mark`] holding a time `t`, after waiting for every operation in flight (it
//!   takes the namespace lock exclusively: every recording operation holds it shared from the
//!   change to its journal entry). So every change whose ctime is before `t` has its entries
//!   before the mark. A clean unmount appends a last mark. Every journal segment starts with
//!   the newest mark, so the newest segment always holds it.
//! * **Reconciliation.** At every mount, mirrorfs walks the directory underneath (in the
//!   background: the mount serves at once) and, for what the rules select, queues a `Copy` of
//!   every file, symlink or fifo whose ctime is at or after `t - MARGIN` (ctime, because
//!   anyone can set mtime), and a `Reconcile` of every directory whose ctime is: the sender
//!   lists it and the router deletes the names the source no longer has and asks for the
//!   ones it lacks. A directory whose ctime changed but not its mtime was moved (or chmod'ed):
//!   it is copied whole as well, since the files moved with it keep their old ctimes. A rule's
//!   base directory that is gone is copied, which deletes it on the backup.
//!
//! While a scan runs, marks keep the scan's threshold as their time, so a crash during the
//! scan leads to the same scan at the next mount. What this does not see: a change whose
//! ctime is older than the mark (the clock set back), and writes through descriptors opened
//! under the mount point before mirrorfs mounted over it (mirrorfs warns about those
//! processes at mount).

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::error::{FsError, FsResult};
use super::record::Rules;
use super::sys::{self, Stat};
use super::MirrorFs;
use crate::entry::{Command, EntryRef, Timestamp, MARK_CLEAN};
use crate::matcher::RuleTable;
use crate::rule::{PatternKind, Rule};

/// How far before a mark's time changes are looked for: timestamps come from the kernel's
/// coarse clock and some file systems keep them to the second or two.
pub const MARGIN_NS: u64 = 2_000_000_000;

/// A scan's progress, for `mirror-ctl status`.
#[derive(Debug, Default)]
pub struct ScanProgress {
    /// Directories looked at.
    pub dirs: AtomicU64,
    /// Files (and other non-directories) looked at.
    pub files: AtomicU64,
    /// Entries queued (copies and reconciliations).
    pub queued: AtomicU64,
    /// The scan has finished.
    pub done: AtomicBool,
}

fn ns(t: Timestamp) -> u64 {
    if t.sec < 0 {
        0
    } else {
        (t.sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(t.nsec))
    }
}

/// The directory a rule's names live under (for a fixed file: its parent).
fn base_dir(r: &Rule) -> &[u8] {
    let p = r.spec.pattern.prefix();
    match r.spec.pattern.kind() {
        PatternKind::File => p.rsplit_once_slash(),
        _ if p.len() > 1 => &p[..p.len() - 1],
        _ => p,
    }
}

trait RsplitSlash {
    fn rsplit_once_slash(&self) -> &[u8];
}

impl RsplitSlash for [u8] {
    /// Everything before the last `/` (`/` itself for a name directly under the root).
    fn rsplit_once_slash(&self) -> &[u8] {
        match self.iter().rposition(|&b| b == b'/') {
            Some(0) => b"/",
            Some(i) => &self[..i],
            None => b"",
        }
    }
}

/// Whether `inner` is `dir` or lies beneath it.
fn at_or_under(inner: &[u8], dir: &[u8]) -> bool {
    inner == dir
        || (inner.len() > dir.len()
            && inner.starts_with(dir)
            && (dir.ends_with(b"/") || inner[dir.len()] == b'/'))
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(a.len() + 1 + b.len());
    v.extend_from_slice(a);
    if !a.is_empty() && !a.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(b);
    v
}

impl MirrorFs {
    /// Appends a watermark: waits for the operations in flight, then records that every
    /// change before `min(now, floor)` is journaled. `clean` at unmount.
    pub fn mark(&self, clean: bool, floor: u64) -> FsResult<()> {
        let t = crate::now_ns().min(floor);
        let _ns = self.ns_write();
        let e = EntryRef {
            offset: t,
            size: if clean { MARK_CLEAN } else { 0 },
            ..EntryRef::new(Command::Mark, 0, b"")
        };
        self.rec
            .journal()
            .append(&e)
            .map(drop)
            .map_err(|err| FsError::Journal {
                name: "(watermark)".into(),
                err,
            })
    }

    /// Queues what may have changed since `since_ns` without reaching the journal (see the
    /// module docs), until done or `stop` is set.
    pub fn reconcile_since(
        &self,
        since_ns: u64,
        progress: &ScanProgress,
        stop: &AtomicBool,
    ) -> FsResult<()> {
        let table = self.rec.table();
        let root = sys::fstat(self.dir())?;
        let mut stack: Vec<(Vec<u8>, Stat, bool)> = vec![(Vec::new(), root, false)];
        while let Some((rel, st, forced)) = stack.pop() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            progress.dirs.fetch_add(1, Ordering::Relaxed);
            match self.reconcile_dir(&table, since_ns, &rel, &st, forced, progress) {
                Ok(children) => stack.extend(children),
                // Gone or unreadable meanwhile: what happened to it is journaled, or the
                // parent's reconciliation finds it.
                Err(FsError::Io(e)) => log::debug!(
                    "reconcile: {}: {e}",
                    String::from_utf8_lossy(&self.rec.full_name(&rel))
                ),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues what directory `rel` (status `st`) needs; the subdirectories to look at next.
    /// `forced`: an ancestor was moved, so everything in it is treated as changed.
    fn reconcile_dir(
        &self,
        table: &Arc<RuleTable>,
        since: u64,
        rel: &[u8],
        st: &Stat,
        forced: bool,
        progress: &ScanProgress,
    ) -> FsResult<Vec<(Vec<u8>, Stat, bool)>> {
        let full = self.rec.full_name(rel);
        let queue = |rules: &[Arc<Rule>], command: Command, name: &[u8]| -> FsResult<()> {
            if rules.is_empty() {
                return Ok(());
            }
            progress
                .queued
                .fetch_add(rules.len() as u64, Ordering::Relaxed);
            self.rec.append(rules, EntryRef::new(command, 0, name))
        };
        let changed = ns(st.ctime) >= since;
        // Its ctime moved but not its mtime: renamed here (or chmod'ed): the files moved with
        // it keep their old ctimes, so everything in it counts as changed.
        let forced = forced || (changed && ns(st.mtime) < since);
        if changed || forced {
            // The rules that select names directly in this directory: subtree rules above
            // it, and wildcard or subtree rules whose base it is.
            let inner: Rules = table
                .rules()
                .iter()
                .filter(|r| {
                    r.spec.pattern.kind() != PatternKind::File
                        && (base_dir(r) == full.as_slice()
                            || (r.spec.pattern.kind().is_subtree()
                                && r.spec.pattern.match_dir(&full).is_some()))
                })
                .cloned()
                .collect();
            queue(&inner, Command::Reconcile, &full)?;
        }
        let fd = sys::open_at(
            self.dir(),
            if rel.is_empty() { b"." } else { rel },
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let entries = sys::read_dir_all(fd.as_fd())?;
        drop(fd);
        if changed || forced {
            let names: std::collections::BTreeSet<&[u8]> =
                entries.iter().map(|e| e.name.as_bytes()).collect();
            // Rule bases and fixed files below this directory whose next step is gone: their
            // backups go too (a copy of a name that is gone deletes it).
            for r in table.rules() {
                let target = match r.spec.pattern.kind() {
                    PatternKind::File => r.spec.pattern.prefix(),
                    _ => base_dir(r),
                };
                if target == full.as_slice() || !at_or_under(target, &full) {
                    continue;
                }
                let rest = target[full.len()..]
                    .strip_prefix(b"/")
                    .unwrap_or(&target[full.len()..]);
                let next = rest.split(|&b| b == b'/').next().unwrap_or_default();
                if !names.contains(next) {
                    queue(std::slice::from_ref(r), Command::Copy, target)?;
                }
            }
        }
        let mut subdirs = Vec::new();
        for e in &entries {
            let name = e.name.as_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let child_rel = join(rel, name);
            let child_full = self.rec.full_name(&child_rel);
            let Ok(cst) = sys::stat_at(self.dir(), &child_rel) else {
                continue;
            };
            if cst.is_dir() {
                // Worth a look only if a rule can select something in it.
                let wanted = table.rules().iter().any(|r| {
                    at_or_under(base_dir(r), &child_full)
                        || (r.spec.pattern.kind().is_subtree()
                            && r.spec.pattern.match_dir(&child_full).is_some())
                });
                if wanted {
                    subdirs.push((child_rel, cst, forced));
                }
                continue;
            }
            progress.files.fetch_add(1, Ordering::Relaxed);
            if forced || ns(cst.ctime) >= since {
                let rules = self.rec.file_rules(table, &child_full);
                queue(&rules, Command::Copy, &child_full)?;
            }
        }
        Ok(subdirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(at_or_under(b"/p/a/b", b"/p/a"));
        assert!(at_or_under(b"/p/a", b"/p/a"));
        assert!(!at_or_under(b"/p/ab", b"/p/a"));
        assert!(at_or_under(b"/p", b"/"));
        assert_eq!(b"/p/a/x".rsplit_once_slash(), b"/p/a");
        assert_eq!(b"/x".rsplit_once_slash(), b"/");
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
        assert_eq!(join(b"/", b"x"), b"/x");
    }
}
