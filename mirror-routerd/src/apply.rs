//! The router process (seeds/002 [0062]-[0064]): applies RT1 entries to the backup files.
//!
//! The oldest pair is read first; each pending record is applied, then marked complete in
//! place. A pair that is complete and no longer written is removed. Entries of one source are
//! applied in journal order (they are in RT1 in that order); an entry is marked complete only
//! after it was applied.
//!
//! Re-applying the last entry after a crash (applied, flag not yet written) is harmless:
//! writes, truncates, creates, attribute changes are idempotent; deletes, renames and links
//! whose source is gone are skipped. A complete flag may reach the disk before the change it
//! records does: the backup is made durable from time to time and that point recorded
//! ([`crate::durable`]), and what lies past it at start is copied again from its source.
//!
//! With a delete suffix, nothing an entry takes from the backup is lost: a deleted name, the
//! target a rename replaces, whatever lies where a new file, link or directory is made, is
//! moved aside as the next kept version of its name (`NAME SUF`, `NAME SUF.1`, …: see
//! [`keep_aside`]), never over anything. (An entry applied again after a crash may keep one
//! version twice; never one less.)
//!
//! Every backup path is reached through [`crate::beneath`]: beneath the root, through no
//! symbolic link. An entry whose name would leave the root or pass through a symlink is
//! refused (logged, marked complete, never retried); the rest keep flowing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorfs::entry::{AttrChange, Command};
use mirrorfs::journal::Position;
use mirrorfs::wire::Msg;

use crate::backup::{backup_rel, NameError, OpenFiles};
use crate::beneath::{is_confinement, Place, Root};
use crate::config::{RouterRule, RouterTable};
use crate::durable;
use crate::rtlog::{list_pairs, RtPair, RtRecord, HEADER_LEN};
use crate::staging::{self, Staging};

/// What happened to an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Done,
    /// Nothing to do (no rule any more, attributes not mirrored, source already gone).
    Skipped(String),
    /// Refused: the entry names a path outside its rule's destination or the root.
    Refused(String),
    /// The backup lacks the file the entry builds on: the source must send `name` whole.
    NeedCopy {
        /// Rule CRC.
        rule_crc: u32,
        /// Full source name to copy.
        name: Vec<u8>,
    },
    /// A reconciliation found names the backup lacks or holds differently: the source must
    /// send each of them whole.
    NeedCopies {
        /// Rule CRC.
        rule_crc: u32,
        /// Full source names to copy.
        names: Vec<Vec<u8>>,
    },
}

/// What stands for the backup files of source `site` while it has no key, so that its
/// entries are held (in order) as a blocked file's are, until a key lets them in again.
pub fn keyless(site: &str) -> String {
    format!("(no key) {site}")
}

/// An entry that could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {err}")]
pub struct ApplyError {
    /// The operation.
    pub op: &'static str,
    /// The backup path.
    pub path: PathBuf,
    /// The error.
    pub err: io::Error,
}

/// Applies entries under a root.
#[derive(Debug)]
pub struct Applier {
    root: Root,
    open: OpenFiles,
    /// Backup paths (relative to the root) changed since they were last made durable: files
    /// and directories changed, and every directory above them.
    touched: BTreeSet<PathBuf>,
    /// Copies being built aside.
    staging: Staging,
    /// References resolved (from the backup's own data or retained router logs), and their
    /// bytes.
    pub refs: (u64, u64),
    /// The sources' transfers that references may point to ([`crate::retain`]).
    pub transfers: crate::retain::Transfers,
    /// Where the router logs are (to read what a transfer reference points to).
    pub rt_dir: PathBuf,
    /// The file and copy whose reference last failed (the warning is given once per copy).
    ref_failed: Option<(PathBuf, mirrorfs::journal::Position)>,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether `e` says the disk (or the quota) is full.
fn is_no_room(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn errno_is(e: &io::Error, code: i32) -> bool {
    e.raw_os_error() == Some(code)
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Removes whatever is at `p` (a tree too); absent is fine.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Applier {
    /// An applier writing under `root`, keeping at most `max_open` backup files open.
    pub fn new(root: &Path, max_open: usize) -> io::Result<Applier> {
        let root = Root::open(root)?;
        Ok(Applier {
            staging: Staging::load(&root)?,
            refs: (0, 0),
            transfers: crate::retain::Transfers::default(),
            rt_dir: PathBuf::new(),
            ref_failed: None,
            root,
            open: OpenFiles::new(max_open),
            touched: BTreeSet::new(),
        })
    }

    /// Makes everything applied so far durable (before the router logs that hold it go):
    /// `syncfs` of the backup file system, which a real file system makes cheap for what
    /// follows, then an fsync of every file and directory touched, which is what makes it
    /// durable wherever `syncfs` does not reach (a FUSE file system is not told of it).
    pub fn make_durable(&mut self) -> io::Result<()> {
        self.open.clear();
        let set = std::mem::take(&mut self.touched);
        let res = sync_fs(self.root.path()).and_then(|()| flush_paths(&self.root, &set));
        if res.is_err() {
            // Tried again at the next checkpoint, all of it: the durable point must not
            // move past what could not be made durable.
            self.touched.extend(set);
        }
        res
    }

    /// Whether something applied is not known to be durable yet.
    pub fn has_unsynced(&self) -> bool {
        !self.touched.is_empty()
    }

    /// Notes that the entry for `rel` changed the backup: the file itself, and every
    /// directory above it up to the root, since applying it may have created the file (a
    /// copy's first write does) or any of them (missing parents are made): their names are
    /// durable only once the directory holding each is fsync'd. For a rename or link, `to`'s
    /// too.
    fn touch(&mut self, rel: &Path, to: Option<&Path>) {
        for p in std::iter::once(rel).chain(to) {
            let mut cur = Some(p);
            while let Some(c) = cur {
                // Its ancestors are in already when it is (they always go in together).
                if !self.touched.insert(c.to_path_buf()) && c != p {
                    break;
                }
                cur = c.parent();
            }
        }
    }

    /// `rel` beneath the root (its parents created when `create`); `None` when a parent
    /// directory does not exist and `create` is false.
    fn at(&self, rel: &Path, create: bool) -> io::Result<Option<Place>> {
        match self.root.place(rel, create) {
            Ok(p) => Ok(Some(p)),
            Err(e) if !create && not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The backup files `r` touches, relative to the root: its own and, for a rename or a
    /// link, the new name (none when no rule maps it).
    pub fn targets(&self, table: &RouterTable, r: &RtRecord) -> Vec<String> {
        targets(table, r)
    }

    /// Closes every open backup file (after a failure, so the next try opens it anew).
    pub fn forget_open(&mut self) {
        self.open.clear();
    }

    /// Applies `r` (with its RT2 `data`) using `table`.
    pub fn apply(
        &mut self,
        table: &RouterTable,
        r: &RtRecord,
        data: &[u8],
    ) -> Result<Outcome, ApplyError> {
        let Some(rule) = table.get(&r.site, r.rule_crc) else {
            return Ok(Outcome::Skipped(format!(
                "no rule {:#010x} from site {} (removed?)",
                r.rule_crc, r.site
            )));
        };
        let rel = match backup_rel(rule, &r.name) {
            Ok(p) => p,
            // Held until a key grants the site a namespace again: its entries were
            // acknowledged, and a key removed by mistake is added back.
            Err(e @ NameError::NoKey { .. }) => {
                return Err(ApplyError {
                    op: "place",
                    path: PathBuf::from(keyless(&r.site)),
                    err: io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()),
                })
            }
            Err(e) => return Ok(Outcome::Refused(e.to_string())),
        };
        let to = matches!(r.command, Command::Rename | Command::Link)
            .then(|| backup_rel(rule, &r.aux).ok())
            .flatten();
        self.touch(&rel, to.as_deref());
        let shown = self.root.path().join(&rel);
        let fail = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |err| ApplyError { op, path: p, err }
        };
        // Offsets and sizes beyond what a file can hold come from no real file.
        let span = match r.command {
            Command::Write => r.offset.checked_add(data.len() as u64),
            Command::Truncate => Some(r.size),
            Command::Zero => Some(r.offset),
            Command::Ref => r.offset.checked_add(r.size),
            _ => Some(0),
        };
        if span.is_none_or(|e| e > i64::MAX as u64) {
            return Ok(Outcome::Refused(format!(
                "offset {} or size {} is beyond any file",
                r.offset, r.size
            )));
        }
        if matches!(r.command, Command::Copy | Command::Mark) {
            // Expanded by the sender; one that arrives is the end of a copy the router asked
            // for (`resync`), and touches nothing here. Marks are the source journal's own.
            return Ok(Outcome::Skipped(format!(
                "{} entries are the sender's own",
                r.command
            )));
        }
        if r.command == Command::Ref && r.part == mirrorfs::wire::Part::Whole {
            // A write whose data the source sent before (the same write for another rule):
            // applied as that write, to the file and to a copy being built aside.
            if !matches!(
                crate::retain::Locator::decode(&r.aux),
                Some(crate::retain::Locator::Transfer { .. })
            ) {
                return Ok(Outcome::Refused(
                    "a reference to the backup's own data outside a copy".into(),
                ));
            }
            if !self.backup_exists(&rel).map_err(fail("open", &shown))? {
                return Ok(Outcome::NeedCopy {
                    rule_crc: rule.crc,
                    name: r.name.clone(),
                });
            }
            let mut ok = self.resolve_ref(&rel, None, r, data)?;
            if ok && self.staging.has(&rel) {
                let staged = staging::staged_rel(&rel);
                self.touch(&staged, None);
                ok = self.resolve_ref(&rel, Some(&staged), r, data)?;
            }
            if !ok {
                log::warn!(
                    "{}: the write of {} bytes at offset {} refers to data the router no longer holds; asking for the whole file",
                    shown.display(),
                    r.size,
                    r.offset
                );
                return Ok(Outcome::NeedCopy {
                    rule_crc: rule.crc,
                    name: r.name.clone(),
                });
            }
            self.refs.0 += 1;
            self.refs.1 += r.size;
            return Ok(Outcome::Done);
        }
        if matches!(
            r.command,
            Command::Write | Command::Truncate | Command::Zero | Command::Ref
        ) {
            if r.part != mirrorfs::wire::Part::Whole {
                return self.apply_copy_part(rule, r, &rel, data);
            }
            if !self.backup_exists(&rel).map_err(fail("open", &shown))? {
                // A change to a file the backup does not have (made before its rule, or
                // under a name the backup never got): applied alone it would leave zeros
                // where the older content is. The source sends the file whole instead (a
                // copy's own parts, which build the file, are applied).
                return Ok(Outcome::NeedCopy {
                    rule_crc: rule.crc,
                    name: r.name.clone(),
                });
            }
            self.data_change(&rel, r, data)?;
            if self.staging.has(&rel) {
                // A copy of the file is being built aside and will replace it: it gets
                // the change too.
                let staged = staging::staged_rel(&rel);
                self.touch(&staged, None);
                self.data_change(&staged, r, data)?;
            }
            return Ok(Outcome::Done);
        }
        if matches!(
            r.command,
            Command::Create
                | Command::Delete
                | Command::Rename
                | Command::Mkdir
                | Command::Rmdir
                | Command::Symlink
                | Command::Mknod
        ) {
            // The name is something else now: a copy of what it was, being built aside,
            // must not replace it later.
            for p in std::iter::once(rel.as_path()).chain(to.as_deref()) {
                self.staging
                    .discard(&self.root, p)
                    .map_err(fail("delete", &self.root.path().join(p)))?;
            }
        }
        self.open.clear();
        // Removals and attribute changes need no parent directories; the rest create them.
        let create = !matches!(
            r.command,
            Command::Delete
                | Command::Rmdir
                | Command::SetAttr
                | Command::SetXattr
                | Command::RemoveXattr
                | Command::Rename
                | Command::Link
                | Command::Reconcile
        );
        let Some(at) = self.at(&rel, create).map_err(fail("open", &shown))? else {
            if matches!(r.command, Command::Rename | Command::Link) {
                // The backup never got the source (nor its directory): ask for the result.
                return Ok(Outcome::NeedCopy {
                    rule_crc: rule.crc,
                    name: r.aux.clone(),
                });
            }
            if r.command == Command::Reconcile {
                // The backup never got the directory: all of it is needed.
                return Ok(Outcome::NeedCopy {
                    rule_crc: rule.crc,
                    name: r.name.clone(),
                });
            }
            return Ok(Outcome::Skipped(format!("{}: gone", shown.display())));
        };
        let path = at.path();
        let shown = at.shown().to_path_buf();
        match r.command {
            Command::Write | Command::Truncate | Command::Zero | Command::Ref => {}
            Command::Create => {
                let mode = backup_mode(rule, r.offset as u32, false);
                // The source made a new file where it had none: what the backup holds there
                // (a stale file, a kept version of another name) is kept aside first. An
                // empty file is this entry's own, applied again after a restart.
                let empty = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0);
                if rule.delete_suffix.is_some() && !empty {
                    displace(rule, &at).map_err(fail("create", &shown))?;
                }
                create_file(&path, mode).map_err(fail("create", &shown))?;
            }
            Command::Delete => match &rule.delete_suffix {
                // Kept as the next version of its name; the earlier ones stay as they are.
                Some(suf) => drop(keep_aside(&at, suf).map_err(fail("delete", &shown))?),
                None => remove_any(&path).map_err(fail("delete", &shown))?,
            },
            Command::Rename | Command::Link => {
                let to_rel = match backup_rel(rule, &r.aux) {
                    Ok(p) => p,
                    Err(e) => return Ok(Outcome::Refused(e.to_string())),
                };
                let to_shown = self.root.path().join(&to_rel);
                let to = self
                    .root
                    .place(&to_rel, true)
                    .map_err(fail(r.command.name(), &to_shown))?;
                let link = r.command == Command::Link;
                return rename_or_link(rule, r, &at, &to, link);
            }
            Command::Mkdir => {
                if let Ok(m) = fs::symlink_metadata(&path) {
                    if !m.is_dir() {
                        displace(rule, &at).map_err(fail("mkdir", &shown))?;
                    }
                }
                let mode = backup_mode(rule, r.offset as u32, true);
                match at.mkdir(mode) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(fail("mkdir", &shown)(e))
                    }
                    _ => {}
                }
                at.chmod(mode).map_err(fail("chmod", &shown))?;
            }
            Command::Rmdir => match fs::remove_dir(&path) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) if errno_is(&e, libc::ENOTEMPTY) => {
                    if rule.delete_suffix.is_some() {
                        return Ok(Outcome::Skipped(format!(
                            "{} keeps deleted files; left in place",
                            shown.display()
                        )));
                    }
                    fs::remove_dir_all(&path).map_err(fail("rmdir", &shown))?;
                }
                Err(e) => return Err(fail("rmdir", &shown)(e)),
            },
            Command::Symlink => {
                // Made as a link, never followed: every later use of the name sees ELOOP.
                let target = std::ffi::OsStr::from_bytes(&r.aux);
                if fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target) {
                    // This very entry, applied again after a restart.
                    return Ok(Outcome::Done);
                }
                displace(rule, &at).map_err(fail("symlink", &shown))?;
                std::os::unix::fs::symlink(target, &path).map_err(fail("symlink", &shown))?;
            }
            Command::Mknod => {
                let mode = r.offset as u32;
                if mode & libc::S_IFMT != libc::S_IFIFO {
                    return Ok(Outcome::Skipped(format!(
                        "{}: only fifos are mirrored",
                        shown.display()
                    )));
                }
                if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_fifo()) {
                    remove_any(&path).map_err(fail("mknod", &shown))?;
                } else {
                    displace(rule, &at).map_err(fail("mknod", &shown))?;
                }
                let c = cpath(&path).map_err(fail("mknod", &shown))?;
                let perm = backup_mode(rule, mode, false);
                // SAFETY: c is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), perm) } != 0 {
                    return Err(fail("mkfifo", &shown)(io::Error::last_os_error()));
                }
                // Exactly the source's bits, whatever the router's umask took away.
                at.chmod(perm).map_err(fail("chmod", &shown))?;
            }
            Command::SetAttr => {
                let Some(mut change) = AttrChange::decode(data) else {
                    return Ok(Outcome::Skipped("malformed attribute change".into()));
                };
                let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                change.mode = change.mode.map(|m| backup_mode(rule, m, is_dir));
                if !rule.attrs {
                    // Permission bits only: owner, times and set-id bits need --attrs.
                    change = AttrChange {
                        mode: change.mode,
                        ..AttrChange::default()
                    };
                }
                match set_attrs(&at, &change) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => return Ok(Outcome::Skipped("gone".into())),
                    Err(e) => return Err(fail("setattr", &shown)(e)),
                }
            }
            Command::SetXattr | Command::RemoveXattr => {
                if !rule.attrs {
                    return Ok(Outcome::Skipped("attributes are not mirrored".into()));
                }
                if r.aux == KEPT_XATTR.as_bytes() {
                    return Ok(Outcome::Skipped(format!(
                        "{KEPT_XATTR} is the router's own mark of kept versions"
                    )));
                }
                match xattr(
                    &path,
                    &r.aux,
                    (r.command == Command::SetXattr).then_some(data),
                ) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) || errno_is(&e, libc::ENODATA) => {}
                    Err(e) => return Err(fail("xattr", &shown)(e)),
                }
            }
            Command::Copy | Command::Mark => {}
            Command::Reconcile => return reconcile(rule, r, &rel, &at, data),
        }
        Ok(Outcome::Done)
    }

    /// Applies a write, truncate or zero range to the file at `rel` beneath the root.
    fn data_change(&mut self, rel: &Path, r: &RtRecord, data: &[u8]) -> Result<(), ApplyError> {
        let shown = self.root.path().join(rel);
        let fail = |op: &'static str| {
            let p = shown.clone();
            move |err| ApplyError { op, path: p, err }
        };
        let f = self.file(rel).map_err(fail("open"))?;
        match r.command {
            Command::Write => crate::direct::write_at(f, data, r.offset).map_err(fail("write")),
            Command::Truncate => f.set_len(r.size).map_err(fail("truncate")),
            Command::Zero => zero_range(f, r.offset, r.size).map_err(fail("zero")),
            _ => Ok(()),
        }
    }

    /// Applies a part of a copy of the file `rel` ([`crate::staging`]): its first part (at
    /// offset 0) starts a staging file, the parts go there, and its final size puts it in
    /// place of the backup file. A backup file with other hard links, or a copy resumed
    /// past its start with no staging file, is written in place.
    fn apply_copy_part(
        &mut self,
        rule: &RouterRule,
        r: &RtRecord,
        rel: &Path,
        data: &[u8],
    ) -> Result<Outcome, ApplyError> {
        let shown = self.root.path().join(rel);
        let fail = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |err| ApplyError { op, path: p, err }
        };
        let staged = staging::staged_rel(rel);
        let staged_shown = self.root.path().join(&staged);
        let own_ref = r.command == Command::Ref
            && matches!(
                crate::retain::Locator::decode(&r.aux),
                Some(crate::retain::Locator::Backup)
            );
        if own_ref && !self.backup_exists(rel).map_err(fail("open", &shown))? {
            // What it refers to is gone (deleted by hand, say): the whole file is needed.
            self.staging
                .discard(&self.root, rel)
                .map_err(fail("delete", &staged_shown))?;
            return Ok(Outcome::NeedCopy {
                rule_crc: rule.crc,
                name: r.name.clone(),
            });
        }
        if matches!(r.command, Command::Write | Command::Zero | Command::Ref) && r.offset == 0 {
            self.open.forget(&staged);
            if staging::has_other_links(&self.root, rel).map_err(fail("open", &shown))? {
                self.staging
                    .discard(&self.root, rel)
                    .map_err(fail("delete", &staged_shown))?;
            } else {
                self.staging
                    .start(&self.root, rel)
                    .map_err(fail("create", &staged_shown))?;
            }
        }
        if r.command == Command::Ref {
            let into = self.staging.has(rel).then_some(staged.as_path());
            if into.is_none() && !own_ref {
                // Data from the router logs written in place: the name must be a file.
                self.clear_for_file(rule, rel)
                    .map_err(fail("delete", &shown))?;
            }
            if self.resolve_ref(rel, into, r, data)? {
                self.refs.0 += 1;
                self.refs.1 += r.size;
                return Ok(Outcome::Done);
            }
            // Once per copy of a file: its later references fail the same way.
            let this = Some((rel.to_path_buf(), r.pos));
            if self.ref_failed != this {
                log::warn!(
                    "{}: the backup no longer holds what the source's copy refers to at offset {} ({} bytes); asking for the whole file",
                    shown.display(),
                    r.offset,
                    r.size
                );
                self.ref_failed = this;
            }
            self.staging
                .discard(&self.root, rel)
                .map_err(fail("delete", &staged_shown))?;
            return Ok(Outcome::NeedCopy {
                rule_crc: rule.crc,
                name: r.name.clone(),
            });
        }
        if !self.staging.has(rel) {
            // A copy builds a regular file: whatever else holds its name goes first (kept
            // aside under the delete suffix).
            self.clear_for_file(rule, rel)
                .map_err(fail("delete", &shown))?;
            self.data_change(rel, r, data)?;
            return Ok(Outcome::Done);
        }
        self.touch(&staged, None);
        match self.data_change(&staged, r, data) {
            Err(e) if is_no_room(&e.err) => {
                // No room for a second copy beside the backup file: the copy goes on in
                // place (the old content is overwritten as the new arrives).
                log::warn!(
                    "{}: no room on the backup disk to build its copy aside; writing it in place (a copy cut off now leaves the file part old, part new until it is sent again)",
                    shown.display()
                );
                self.copy_in_place(rule, rel)?;
                self.data_change(rel, r, data)?;
                return Ok(Outcome::Done);
            }
            res => res?,
        }
        if r.command == Command::Truncate {
            // The file's final size: its copy is whole.
            self.open.forget(&staged);
            self.open.forget(rel);
            self.clear_for_file(rule, rel)
                .map_err(fail("delete", &shown))?;
            self.staging
                .finish(&self.root, rel)
                .map_err(fail("rename", &shown))?;
        }
        Ok(Outcome::Done)
    }

    /// Resolves a reference ([`Command::Ref`]): the `r.size` bytes the source has at
    /// `r.offset` are those its locator ([`crate::retain::Locator`]) points to: the backup
    /// file `rel` at the same offset, or a write the source sent earlier, kept in the router
    /// logs; they count only if their run sum ([`mirrorfs::blocksums::Tree::run`]) is `sum`.
    /// They are written into `into` as they are checked (the staging file of a copy built
    /// aside, or the backup file itself for data from the router logs); data of the backup
    /// file itself in place is only checked. Whether they matched (a locator the router
    /// cannot follow does not).
    fn resolve_ref(
        &mut self,
        rel: &Path,
        into: Option<&Path>,
        r: &RtRecord,
        sum: &[u8],
    ) -> Result<bool, ApplyError> {
        use crate::retain::Locator;
        use mirrorfs::blocksums::{leaf, node, BLOCK};
        let shown = self.root.path().join(rel);
        let root_path = self.root.path().to_path_buf();
        let fail = |op: &'static str, p: &Path| {
            let p = root_path.join(p);
            move |err| ApplyError { op, path: p, err }
        };
        if sum.len() != 16 {
            return Ok(false);
        }
        // Where the bytes come from: a file and the offset of the first.
        let (src, from, into) = match Locator::decode(&r.aux) {
            None => return Ok(false),
            Some(Locator::Backup) => {
                if r.offset % BLOCK != 0 {
                    return Ok(false);
                }
                match crate::sums::open_backup(&self.root, rel) {
                    Ok(f) => (f, r.offset, into),
                    Err(e) if not_found(&e) => return Ok(false),
                    Err(err) => {
                        return Err(ApplyError {
                            op: "open",
                            path: shown,
                            err,
                        })
                    }
                }
            }
            Some(Locator::Transfer {
                pos,
                part,
                at: from,
            }) => {
                let Some(held) = self.transfers.locate(&r.site, pos, part) else {
                    return Ok(false);
                };
                if from.checked_add(r.size).is_none_or(|e| e > held.len) {
                    return Ok(false);
                }
                match File::open(crate::rtlog::rt2_path(&self.rt_dir, held.pair)) {
                    Ok(f) => (f, held.rt2_offset + from, Some(into.unwrap_or(rel))),
                    // Given up since (room for new entries).
                    Err(_) => return Ok(false),
                }
            }
        };
        let mut leaves = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < r.size {
            let want = ((r.size - done) as usize).min(buf.len());
            let n = mirrorfs::blocksums::read_full(&src, &mut buf[..want], from + done).map_err(
                |err| ApplyError {
                    op: "read",
                    path: shown.clone(),
                    err,
                },
            )?;
            if n < want {
                // Shorter than what the source refers to.
                return Ok(false);
            }
            leaves.extend(buf[..n].chunks(BLOCK as usize).map(leaf));
            if let Some(into) = into {
                let dst = self.file(into).map_err(fail("open", into))?;
                // Blocks of zeros (holes of the backup, most often) stay holes; the others
                // are written, a run at a time.
                let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
                let mut i = 0;
                while i < n {
                    let z = zero(&buf[i..(i + BLOCK as usize).min(n)]);
                    let mut j = i;
                    while j < n && zero(&buf[j..(j + BLOCK as usize).min(n)]) == z {
                        j = (j + BLOCK as usize).min(n);
                    }
                    let at = r.offset + done + i as u64;
                    if z {
                        zero_range(dst, at, (j - i) as u64).map_err(fail("zero", into))?;
                    } else {
                        crate::direct::write_at(dst, &buf[i..j], at)
                            .map_err(fail("write", into))?;
                    }
                    i = j;
                }
            }
            done += n as u64;
        }
        Ok(node(&leaves).as_slice() == sum)
    }

    /// Gives up building `rel`'s copy aside: what its staging file holds is written into the
    /// backup file in place (zero stretches as holes), and the staging file goes.
    fn copy_in_place(&mut self, rule: &RouterRule, rel: &Path) -> Result<(), ApplyError> {
        let staged = staging::staged_rel(rel);
        let (shown, staged_shown) = (self.root.path().join(rel), self.root.path().join(&staged));
        let fail = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |err| ApplyError { op, path: p, err }
        };
        self.open.forget(&staged);
        self.open.forget(rel);
        self.clear_for_file(rule, rel)
            .map_err(fail("delete", &shown))?;
        let src = self
            .root
            .place(&staged, false)
            .and_then(|p| File::open(p.path()))
            .map_err(fail("open", &staged_shown))?;
        let len = src.metadata().map_err(fail("open", &staged_shown))?.len();
        let dst = self.file(rel).map_err(fail("open", &shown))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < len {
            let n = src
                .read_at(&mut buf, at)
                .map_err(fail("read", &staged_shown))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().all(|&b| b == 0) {
                zero_range(dst, at, n as u64).map_err(fail("zero", &shown))?;
            } else {
                dst.write_all_at(&buf[..n], at)
                    .map_err(fail("write", &shown))?;
            }
            at += n as u64;
        }
        self.staging
            .discard(&self.root, rel)
            .map_err(fail("delete", &staged_shown))
    }

    /// Whether the backup file `rel` exists (open already, or there beneath the root).
    fn backup_exists(&mut self, rel: &Path) -> io::Result<bool> {
        if self.open.has(rel) {
            return Ok(true);
        }
        match self.root.place(rel, false) {
            Ok(p) => match fs::symlink_metadata(p.path()) {
                Ok(_) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => Err(e),
            },
            Err(e) if not_found(&e) || errno_is(&e, libc::ENOTDIR) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes what holds backup name `rel` unless it is a regular file (or none); with a
    /// delete suffix, keeps it aside instead.
    fn clear_for_file(&mut self, rule: &RouterRule, rel: &Path) -> io::Result<()> {
        if self.open.has(rel) {
            return Ok(());
        }
        let place = match self.root.place(rel, false) {
            Ok(p) => p,
            Err(e) if not_found(&e) || errno_is(&e, libc::ENOTDIR) => return Ok(()),
            Err(e) => return Err(e),
        };
        match fs::symlink_metadata(place.path()) {
            Ok(m) if !m.is_file() => displace(rule, &place),
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn file(&mut self, rel: &Path) -> io::Result<&File> {
        let root = &self.root;
        self.open
            .get(rel, || open_for_write(&root.place(rel, true)?.path()))
    }
}

/// The backup files (relative to the root) record `r` touches.
pub fn targets(table: &RouterTable, r: &RtRecord) -> Vec<String> {
    let Some(rule) = table.get(&r.site, r.rule_crc) else {
        return Vec::new();
    };
    let mut names = vec![&r.name];
    if matches!(r.command, Command::Rename | Command::Link) {
        names.push(&r.aux);
    }
    names
        .into_iter()
        .filter_map(|n| match backup_rel(rule, n) {
            Ok(p) => Some(p.to_string_lossy().into_owned()),
            Err(NameError::NoKey { .. }) => Some(keyless(&r.site)),
            Err(_) => None,
        })
        .collect()
}

/// Whether backup name `name` is a version the rule keeps of a file its source deleted or
/// replaced (`NAME SUF`, or `NAME SUF.N`): history, never removed by a reconciliation.
pub fn kept_version(rule: &RouterRule, name: &[u8]) -> bool {
    rule.delete_suffix
        .as_deref()
        .is_some_and(|suf| mirrorfs::rule::is_kept_version(name, suf))
}

/// The extended attribute the router sets on each version it keeps (a regular file or a
/// directory), so that a source file that is itself named like a kept version (`c.del`) is
/// told from one: restores give it back, reconciliations treat it as any file. No entry may
/// set it (it would hide a file from restores).
pub const KEPT_XATTR: &str = "user.mirror.kept";

/// Whether the backup entry at `path` (named `name`, with metadata `m`) is a version kept
/// under the rule's delete suffix: named like one and marked ([`KEPT_XATTR`]). Where the
/// mark cannot be (a symlink, a fifo, a file system without user attributes) the name
/// alone decides, as it did for versions kept before the mark existed.
pub fn is_kept(rule: &RouterRule, name: &[u8], path: &Path, m: &fs::Metadata) -> bool {
    if !kept_version(rule, name) {
        return false;
    }
    if !(m.is_file() || m.is_dir()) {
        return true;
    }
    match xattr_get(path, KEPT_XATTR) {
        Ok(()) => true,
        Err(e) => !errno_is(&e, libc::ENODATA),
    }
}

/// Whether attribute `name` is on `path` (not following a symlink).
fn xattr_get(path: &Path, name: &str) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both are NUL-terminated; a null buffer of size 0 asks for the size only.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks `place` as a kept version ([`KEPT_XATTR`]), where its kind and file system allow.
fn mark_kept(place: &Place) {
    let m = fs::symlink_metadata(place.path());
    if !m.is_ok_and(|m| m.is_file() || m.is_dir()) {
        return;
    }
    if let Err(e) = xattr(&place.path(), KEPT_XATTR.as_bytes(), Some(b"")) {
        log::debug!(
            "{}: cannot mark it as a kept version ({e}); its name tells it",
            place.shown().display()
        );
    }
}

/// Kept versions of one name are numbered up to 2^this at most (far more than a directory
/// holds): the search for a free number is bounded.
const MAX_KEPT_BITS: u32 = 48;

/// Whether something (of any kind) is at `place`.
fn occupied(place: &Place) -> io::Result<bool> {
    match fs::symlink_metadata(place.path()) {
        Ok(_) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The place of kept version `n` of `place`'s name ([`mirrorfs::rule::kept_name`]).
fn kept_place(place: &Place, suf: &str, n: u64) -> io::Result<Place> {
    place.sibling(&mirrorfs::rule::kept_name(place.name(), suf, n))
}

/// The number the next kept version of `place`'s name gets: one past the end of the unbroken
/// run `NAME SUF`, `NAME SUF.1`, `NAME SUF.2`, … (found by doubling, then halving: a name kept
/// a thousand times costs about twenty looks, not a thousand). A version removed by hand from
/// the middle of the run may leave a hole that a later one fills; a taken number is never
/// given (the rename refuses to replace anything).
fn next_kept(place: &Place, suf: &str) -> io::Result<u64> {
    let taken = |n: u64| occupied(&kept_place(place, suf, n)?);
    if !taken(0)? {
        return Ok(0);
    }
    let (mut lo, mut hi) = (0u64, 1u64);
    while taken(hi)? {
        lo = hi;
        hi = hi
            .checked_mul(2)
            .filter(|&h| h <= 1 << MAX_KEPT_BITS)
            .ok_or_else(|| io::Error::other("no free number for another kept version"))?;
    }
    // taken(lo) and not taken(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if taken(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

/// `from` renamed to `to` only if nothing is at `to` (`RENAME_NOREPLACE`; where the file
/// system lacks it, a look first).
fn rename_noreplace(from: &Place, to: &Place) -> io::Result<()> {
    match from.rename_to(to, libc::RENAME_NOREPLACE) {
        Err(e) if errno_is(&e, libc::EINVAL) => {
            if occupied(to)? {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            from.rename_to(to, 0)
        }
        r => r,
    }
}

/// A regular file with other hard links is kept as a copy (then its name removed), so that
/// writes through its other names do not change the kept version.
fn keep_linked_copy(from: &Place, to: &Place, m: &fs::Metadata) -> io::Result<()> {
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from.path())?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(m.permissions().mode() & 0o7777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to.path())?;
    if let Err(e) = io::copy(&mut src, &mut dst).and_then(|_| dst.sync_all()) {
        let _ = fs::remove_file(to.path());
        return Err(e);
    }
    fs::remove_file(from.path())
}

/// Moves what is at `place` aside as the next kept version of its name (`NAME SUF`, then
/// `NAME SUF.1`, …, see [`next_kept`]), never over anything: every version kept before stays
/// as it is. `None` when nothing was there.
fn keep_aside(place: &Place, suf: &str) -> io::Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    // Another process on the backup host may take a number between the look and the rename:
    // look again, a few times.
    for _ in 0..8 {
        let m = match fs::symlink_metadata(place.path()) {
            Ok(m) => m,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let to = kept_place(place, suf, next_kept(place, suf)?)?;
        let kept = if m.is_file() && m.nlink() > 1 {
            keep_linked_copy(place, &to, &m)
        } else {
            rename_noreplace(place, &to)
        };
        match kept {
            Ok(()) => {
                mark_kept(&to);
                log::debug!(
                    "kept {} as {}",
                    place.shown().display(),
                    to.shown().display()
                );
                return Ok(Some(to.shown().to_path_buf()));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "every number tried for a kept version was taken meanwhile",
    ))
}

/// Clears `place` for something new that takes its name: with a delete suffix, what is there
/// is kept aside ([`keep_aside`]; an empty directory, which holds nothing to keep, is removed),
/// else it is removed.
fn displace(rule: &RouterRule, place: &Place) -> io::Result<()> {
    let Some(suf) = rule.delete_suffix.as_deref() else {
        return remove_any(&place.path());
    };
    match fs::symlink_metadata(place.path()) {
        Ok(m) if m.is_dir() => match fs::remove_dir(place.path()) {
            Ok(()) => return Ok(()),
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) if errno_is(&e, libc::ENOTEMPTY) || errno_is(&e, libc::EEXIST) => {}
            Err(e) => return Err(e),
        },
        Ok(_) => {}
        Err(e) if not_found(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    keep_aside(place, suf).map(drop)
}

/// Whether `a` and `b` name one inode (hard links of each other).
fn same_inode(a: &Place, b: &Place) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        fs::symlink_metadata(a.path()),
        fs::symlink_metadata(b.path()),
    ) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

/// Applies one part of a reconciliation (see [`mirrorfs::entry::Listing`]): deletes the
/// backup names in the part's range that the source no longer has (as a delete would: kept
/// under the delete suffix when the rule has one), and asks for the listed names the backup
/// lacks, holds as another kind, or with another size (or, with `--attrs`, another mtime).
fn reconcile(
    rule: &RouterRule,
    r: &RtRecord,
    rel: &Path,
    at: &Place,
    data: &[u8],
) -> Result<Outcome, ApplyError> {
    use mirrorfs::entry::Listing;
    use std::os::unix::fs::MetadataExt;
    let fail = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |err| ApplyError { op, path: p, err }
    };
    let Some(listing) = Listing::decode(data) else {
        return Ok(Outcome::Refused("malformed directory listing".into()));
    };
    let child = |name: &[u8]| {
        let mut n = r.name.clone();
        n.push(b'/');
        n.extend_from_slice(name);
        n
    };
    let after = r.aux.as_slice();
    let last = r.offset & 1 != 0;
    let upto = listing.names.last().map(|l| l.name.as_slice());
    let in_range = |n: &[u8]| n > after && (last || upto.is_some_and(|u| n <= u));
    let dir = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(at.path())
    {
        Ok(d) => d,
        Err(e) if not_found(&e) || errno_is(&e, libc::ENOTDIR) || errno_is(&e, libc::ELOOP) => {
            // Not a directory on the backup (yet): the whole of it is needed.
            return Ok(if listing.names.is_empty() {
                Outcome::Skipped("nothing to reconcile".into())
            } else {
                Outcome::NeedCopy {
                    rule_crc: rule.crc,
                    name: r.name.clone(),
                }
            });
        }
        Err(e) => return Err(fail("reconcile", at.shown())(e)),
    };
    let listed = |n: &[u8]| {
        listing
            .names
            .binary_search_by(|l| l.name.as_slice().cmp(n))
            .ok()
            .map(|i| &listing.names[i])
    };
    let mut held = std::collections::BTreeMap::new();
    let entries = fs::read_dir(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))
    .map_err(fail("reconcile", at.shown()))?;
    for e in entries {
        let e = e.map_err(fail("reconcile", at.shown()))?;
        let name = e.file_name().as_bytes().to_vec();
        let m = match e.metadata() {
            Ok(m) => m,
            Err(err) if not_found(&err) => continue,
            Err(err) => return Err(fail("reconcile", at.shown())(err)),
        };
        held.insert(name, m);
    }
    // Names the source no longer has go as a delete would; so do those that are another
    // kind of thing now (a directory that became a file): the copy asked for below makes
    // them anew.
    let kind = |m: &fs::Metadata| mirrorfs::entry::Listed::kind_of(m.file_type()).unwrap_or(0);
    let mut gone = Vec::new();
    for (name, m) in &held {
        let other_kind = listed(name).is_some_and(|l| l.kind != kind(m));
        let kept = || {
            at.child(name)
                .is_ok_and(|p| is_kept(rule, name, &p.path(), m))
        };
        if (in_range(name) && listed(name).is_none() && !kept()) || other_kind {
            gone.push(name.clone());
        }
    }
    for name in gone {
        let p = rel.join(std::ffi::OsStr::from_bytes(&name));
        let shown_p = at.shown().join(std::ffi::OsStr::from_bytes(&name));
        let place = at.child(&name).map_err(fail("reconcile", &shown_p))?;
        match &rule.delete_suffix {
            Some(suf) => drop(keep_aside(&place, suf).map_err(fail("delete", &shown_p))?),
            None => remove_any(&place.path()).map_err(fail("delete", &shown_p))?,
        }
        log::debug!("reconcile: removed {} (gone at the source)", p.display());
    }
    let mut need = Vec::new();
    for l in &listing.names {
        let differs = match held.get(&l.name) {
            None => true,
            Some(m) => {
                let kind = kind(m);
                kind != l.kind
                    || (kind == b'f' && m.len() != l.size)
                    || (kind == b'f'
                        && rule.attrs
                        && (m.mtime(), m.mtime_nsec() as u32) != (l.mtime.sec, l.mtime.nsec))
            }
        };
        if differs {
            need.push(child(&l.name));
        }
    }
    Ok(if need.is_empty() {
        Outcome::Done
    } else {
        Outcome::NeedCopies {
            rule_crc: rule.crc,
            names: need,
        }
    })
}

/// Renames (or hard-links) `from` to `to`, both beneath the root; asks for a copy when the
/// backup never got the source.
fn rename_or_link(
    rule: &RouterRule,
    r: &RtRecord,
    from: &Place,
    to: &Place,
    link: bool,
) -> Result<Outcome, ApplyError> {
    let fail = |op: &'static str, p: &Place| {
        let p = p.shown().to_path_buf();
        move |err| ApplyError { op, path: p, err }
    };
    let exchange = r.offset as u32 & libc::RENAME_EXCHANGE != 0;
    if fs::symlink_metadata(from.path()).is_err() {
        // The backup never got the source: ask for the result instead. What it holds at the
        // target is replaced by that copy: kept aside first under the delete suffix.
        if !exchange && rule.delete_suffix.is_some() {
            displace(rule, to).map_err(fail(r.command.name(), to))?;
        }
        return Ok(Outcome::NeedCopy {
            rule_crc: rule.crc,
            name: r.aux.clone(),
        });
    }
    if same_inode(from, to) {
        // Two names of one file: rename(2) leaves both, and a link of it is there already.
        return Ok(Outcome::Done);
    }
    if link {
        displace(rule, to).map_err(fail("link", to))?;
        from.link_to(to).map_err(fail("link", to))?;
        return Ok(Outcome::Done);
    }
    if exchange && fs::symlink_metadata(to.path()).is_err() {
        return Ok(Outcome::NeedCopy {
            rule_crc: rule.crc,
            name: r.name.clone(),
        });
    }
    if !exchange && rule.delete_suffix.is_some() {
        // The file the rename replaces (an editor's save, `mv b c`) is kept aside.
        displace(rule, to).map_err(fail("rename", to))?;
    }
    let flags = if exchange { libc::RENAME_EXCHANGE } else { 0 };
    match from.rename_to(to, flags) {
        Ok(()) => {}
        Err(e) if errno_is(&e, libc::ENOTEMPTY) || errno_is(&e, libc::EISDIR) => {
            // A stale tree at the target (the source had none there): replace it.
            remove_any(&to.path()).map_err(fail("rename", to))?;
            from.rename_to(to, 0).map_err(fail("rename", from))?;
        }
        Err(e) => return Err(fail("rename", from)(e)),
    }
    Ok(Outcome::Done)
}

/// The mode a backup file or directory gets for source mode `mode`: its permission bits (a
/// backup is never more readable than its source), with set-id and sticky bits only when the
/// rule mirrors attributes. A router that is not root keeps its own write (and search) access,
/// which it needs to apply later entries.
fn backup_mode(rule: &RouterRule, mode: u32, is_dir: bool) -> u32 {
    let m = if rule.attrs {
        mode & 0o7777
    } else {
        mode & 0o777
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        m
    } else if is_dir {
        m | 0o700
    } else {
        m | 0o600
    }
}

/// Opens a backup file for writing, creating it private (an entry that writes a file the
/// backup never saw created gives no mode; the next copy or chmod sets it).
fn open_for_write(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn create_file(path: &Path, mode: u32) -> io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(path) {
        if !m.is_file() {
            remove_any(path)?;
        }
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// Zeroes `len` bytes at `offset`, within the file's size (a zero entry never extends a file,
/// and a length from the wire cannot make the router write more than the file holds).
fn zero_range(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let end = offset.saturating_add(len).min(f.metadata()?.len());
    if end <= offset {
        return Ok(());
    }
    let len = end - offset;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; (len as usize).min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Sets `a` on `at`: the owner first, since a change of owner clears set-id bits, then the
/// mode, then the times.
fn set_attrs(at: &Place, a: &AttrChange) -> io::Result<()> {
    if a.uid.is_some() || a.gid.is_some() {
        let uid = a.uid.unwrap_or(u32::MAX);
        let gid = a.gid.unwrap_or(u32::MAX);
        if let Err(e) = at.lchown(uid, gid) {
            if !errno_is(&e, libc::EPERM) {
                return Err(e);
            }
            log::debug!("{}: ownership not permitted", at.shown().display());
        }
    }
    if let Some(mode) = a.mode {
        at.chmod(mode & 0o7777)?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        let ts = |t: Option<mirrorfs::entry::Timestamp>| match t {
            Some(t) => libc::timespec {
                tv_sec: t.sec,
                tv_nsec: t.nsec as i64,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        };
        at.set_times(&[ts(a.atime), ts(a.mtime)])?;
    }
    Ok(())
}

fn xattr(path: &Path, name: &[u8], value: Option<&[u8]>) -> io::Result<()> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated strings; value points at value.len() bytes.
    let rc = unsafe {
        match value {
            Some(v) => libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::lremovexattr(c.as_ptr(), n.as_ptr()),
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The shared rule table the applier reads (replaced when a source sends configuration).
pub type SharedTable = Arc<std::sync::RwLock<Arc<RouterTable>>>;

/// Where the router process is in one pair of logs.
struct PairCursor {
    pair: RtPair,
    /// RT1 offset of the next record to look at.
    cursor: u64,
    /// RT1 offset of the first record held back for a blocked file.
    held_from: Option<u64>,
}

/// What the router process carries from one pass to the next.
struct State {
    applier: Applier,
    pairs: BTreeMap<u64, PairCursor>,
    ahead: crate::direct::ReadAhead,
    /// The backup's durable point as last recorded ([`crate::durable`]).
    durable_at: durable::Point,
    /// When it was last recorded.
    durable_when: Instant,
    /// Per source: the journal position of its last entry applied (or found applied), with
    /// none of its entries held before it; and what its session was last told of it, when.
    applied: HashMap<String, AppliedAt>,
    /// The router-log disk is short of room (said once).
    short_of_room: bool,
}

impl State {
    /// Where the backup's durable point is once everything applied so far is durable: the
    /// end of what was looked at. (Entries held back for a blocked file before it are not
    /// applied: the blocked-file log says which; when they are retried, the point goes back
    /// to the first of them first.)
    fn point(&self) -> Option<durable::Point> {
        self.pairs.iter().next_back().map(|(&n, pc)| (n, pc.cursor))
    }

    /// Whether the durable point has moved on since it was recorded.
    fn behind(&self) -> bool {
        self.point().is_some_and(|p| p != self.durable_at)
    }

    /// Makes what was applied durable in the backup, then records the durable point.
    fn checkpoint(&mut self, router: &crate::shared::Router) -> Result<(), String> {
        let Some(at) = self.point() else {
            return Ok(());
        };
        if self.applier.has_unsynced() {
            self.make_durable(router)?;
        }
        durable::store(&router.cfg.state, at).map_err(|e| {
            format!(
                "cannot record the backup's durable point in {}: {e}",
                durable::path(&router.cfg.state).display()
            )
        })?;
        self.durable_at = at;
        self.durable_when = Instant::now();
        Ok(())
    }

    /// Makes everything applied so far durable in the backup ([`Applier::make_durable`]).
    fn make_durable(&mut self, router: &crate::shared::Router) -> Result<(), String> {
        self.applier.make_durable().map_err(|e| {
            format!(
                "cannot make the backup files under {} durable: {e}",
                router.cfg.root.display()
            )
        })
    }
}

/// The router process: applies every pending entry of the RT logs, oldest pair first, for
/// as long as the router runs. Entries of a backup file that cannot be written are held back
/// (the file is blocked) while every other file keeps flowing; they are retried, in order,
/// on `mirror-ctl router unblock` and every `unblock_every`.
pub fn run(router: Arc<crate::shared::Router>) {
    let dir = router.rt_dir();
    let applier = loop {
        match Applier::new(&router.cfg.root, router.cfg.max_open) {
            Ok(a) => break a,
            Err(e) => {
                log::error!(
                    "cannot open the backup root {}: {e}; retrying in 5s",
                    router.cfg.root.display()
                );
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    };
    let mut applier = applier;
    applier.rt_dir = dir.clone();
    let mut st = State {
        applier,
        pairs: BTreeMap::new(),
        ahead: crate::direct::ReadAhead::default(),
        durable_at: durable::load(&router.cfg.state),
        durable_when: Instant::now(),
        applied: HashMap::new(),
        short_of_room: false,
    };
    let mut backoff = Duration::from_millis(100);
    let mut last_unblock = std::time::Instant::now();
    loop {
        if router.any_blocked() && last_unblock.elapsed() >= router.cfg.unblock_every {
            log::info!("periodic unblock (every {:?})", router.cfg.unblock_every);
            router.unblock_files(None);
        }
        // Keys added back let the entries held for want of one go on (`Router::table`).
        router.table();
        if router.take_retry() {
            last_unblock = std::time::Instant::now();
            // The held entries are applied now, behind the durable point: it goes back to
            // the first of them first (see `durable`).
            let first_held = st
                .pairs
                .iter()
                .find_map(|(&n, pc)| pc.held_from.map(|h| (n, h)));
            if let Some(h) = first_held.filter(|&h| h < st.durable_at) {
                match durable::store(&router.cfg.state, h) {
                    Ok(()) => st.durable_at = h,
                    // The entries are retried all the same: a file the user unblocked does
                    // not wait on this; only a power loss before the next checkpoint could
                    // leave them unapplied unseen, and this disk is failing already.
                    Err(e) => log::error!(
                        "cannot record the backup's durable point in {}: {e}",
                        durable::path(&router.cfg.state).display()
                    ),
                }
            }
            for pc in st.pairs.values_mut() {
                if let Some(h) = pc.held_from.take() {
                    pc.cursor = pc.cursor.min(h);
                }
            }
        }
        // Read before what is published: once the pass is done, all of it is looked at.
        let dones = router.peer_dones();
        let published = router.published();
        let result = apply_some(&router, &dir, &mut st, published).and_then(|moved| {
            // The backup's durable point follows (see `durable`): when caught up, and every
            // so often while busy, but not for every entry.
            let since = st.durable_when.elapsed();
            if st.behind() && since >= durable::MIN_GAP && (!moved || since >= durable::MAX_GAP) {
                st.checkpoint(&router)?;
            }
            Ok(moved)
        });
        if result.is_ok() {
            router.set_looked(published);
            // A source none of whose entries this run applied (the router started again, and
            // nothing came since) has everything it sent applied, but for held entries: it
            // learns so too (a verify waits for it).
            for (site, done) in dones {
                if !st.applied.contains_key(&site) && !router.source_blocked(&site) {
                    st.applied.insert(site, (done, None));
                }
            }
        }
        router.set_refs(st.applier.refs);
        tell_applied(&router, &mut st.applied, &st.applier.transfers);
        match result {
            Ok(true) => backoff = Duration::from_millis(100),
            Ok(false) => {
                let wait = if st.behind() {
                    durable::MIN_GAP.saturating_sub(st.durable_when.elapsed())
                } else {
                    Duration::from_millis(500)
                };
                router.wait_published(published, wait.max(Duration::from_millis(1)))
            }
            Err(e) => {
                log::error!("{e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Tells each connected source how far its entries are applied (`Msg::Applied`), when that
/// moved since it was last told, and again every [`APPLIED_AGAIN`] (for a session that
/// connected since).
fn tell_applied(
    router: &crate::shared::Router,
    applied: &mut HashMap<String, AppliedAt>,
    transfers: &crate::retain::Transfers,
) {
    for (site, (at, told)) in applied.iter_mut() {
        let due = told.is_none_or(|(p, when)| p != *at || when.elapsed() >= APPLIED_AGAIN);
        if due && router.tell(site, &Msg::Applied { upto: *at }) {
            *told = Some((*at, Instant::now()));
            // And what its references may still point to.
            let (refs_resolved, bytes_saved) = router.refs();
            router.tell(
                site,
                &Msg::Retained {
                    from: transfers.oldest(site),
                    retained_bytes: transfers.retained_bytes(),
                    refs_resolved,
                    bytes_saved,
                },
            );
        }
    }
}

/// A source's last applied position, and what it was last told of it, when.
type AppliedAt = (Position, Option<(Position, Instant)>);

/// How often a source is told again how far its entries are applied.
const APPLIED_AGAIN: Duration = Duration::from_secs(1);

/// One pass over every pair, oldest first; whether anything moved. A damaged pair is
/// quarantined ([`crate::quarantine`]) and the others keep flowing.
fn apply_some(
    router: &crate::shared::Router,
    dir: &Path,
    st: &mut State,
    (wpair, wend): (u64, u64),
) -> Result<bool, String> {
    let on_disk = list_pairs(dir).map_err(|e| e.to_string())?;
    st.pairs.retain(|n, _| on_disk.contains(n));
    let mut moved = false;
    for n in on_disk.into_iter().filter(|&n| n <= wpair) {
        if let std::collections::btree_map::Entry::Vacant(v) = st.pairs.entry(n) {
            match RtPair::open(dir, n) {
                Ok(pair) => {
                    v.insert(PairCursor {
                        pair,
                        cursor: HEADER_LEN,
                        held_from: None,
                    });
                }
                Err(e) if e.is_damage() => {
                    router.quarantine_pair(n, &e.to_string())?;
                    moved = true;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let Some(pc) = st.pairs.get_mut(&n) else {
            continue;
        };
        let end = if n == wpair {
            wend
        } else {
            pc.pair.rt1_len().map_err(|e| e.to_string())?
        };
        if pc.cursor < end {
            let records = match pc.pair.records(pc.cursor, end) {
                Ok(r) => r,
                Err(e) if e.is_damage() => {
                    st.pairs.remove(&n);
                    router.quarantine_pair(n, &e.to_string())?;
                    moved = true;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            // RT2 is read ahead up to the data of these records, never into what is being
            // written.
            let limit = records
                .iter()
                .map(|(_, r)| r.rt2_offset + r.data_len)
                .max()
                .unwrap_or(0);
            let table = router.table();
            for (off, r) in records {
                if r.command == Command::Write && r.part != mirrorfs::wire::Part::Extra {
                    // A data transfer that copies may refer to while this pair is kept: a
                    // write, or a write part of a copy from the journal.
                    let part = (r.part != mirrorfs::wire::Part::Whole)
                        .then(|| (mirrorfs::blocksums::name_hash(&r.name), r.offset));
                    st.applier.transfers.note(
                        &r.site,
                        r.pos,
                        part,
                        crate::retain::Held {
                            pair: n,
                            rt2_offset: r.rt2_offset,
                            len: r.data_len,
                        },
                    );
                }
                let held = !r.complete
                    && apply_one(
                        router,
                        &mut st.applier,
                        &mut st.ahead,
                        &table,
                        &pc.pair,
                        off,
                        &r,
                        limit,
                    )?;
                if held {
                    pc.held_from = Some(pc.held_from.map_or(off, |h| h.min(off)));
                } else if r.part.completes() && !router.source_blocked(&r.site) {
                    let a = st
                        .applied
                        .entry(r.site.clone())
                        .or_insert((Position::START, None));
                    a.0 = a.0.max(r.pos);
                }
                pc.cursor = off + r.len() as u64;
                moved = true;
            }
        }
        if n < wpair
            && pc.cursor >= end
            && pc.held_from.is_none()
            && !st.applier.transfers.is_retained(n)
        {
            // Finished and no longer written: make what was applied durable, keep what it
            // says about the sources, and keep it for references while `--retain` allows.
            st.make_durable(router)?;
            router.persist_sources().map_err(|e| e.to_string())?;
            let bytes = pair_bytes(dir, n);
            st.applier.transfers.retain_pair(n, bytes);
            moved = true;
        }
    }
    let mut gone: Vec<u64> = st
        .applier
        .transfers
        .retained_pairs()
        .into_iter()
        .filter(|n| !st.pairs.contains_key(n))
        .collect();
    gone.extend(st.applier.transfers.over(router.cfg.retain));
    if short_of_room(dir, router.cfg.rt_size) {
        // Room for new entries comes first.
        if !st.short_of_room {
            log::info!(
                "the router-log disk ({}) has less than {} MiB free: applied router logs are not kept for references (--retain) while it stays so",
                dir.display(),
                (SHORT_OF_ROOM_PAIRS * router.cfg.rt_size.max(64 << 20)) >> 20
            );
        }
        st.short_of_room = true;
        gone.extend(st.applier.transfers.retained_pairs());
    } else {
        st.short_of_room = false;
    }
    for n in gone {
        st.applier.transfers.forget_pair(n);
        if let Some(done) = st.pairs.remove(&n) {
            done.pair.remove(dir).map_err(|e| e.to_string())?;
        }
    }
    router.set_retained(
        st.applier.transfers.retained_pairs(),
        st.applier.transfers.retained_bytes(),
    );
    Ok(moved)
}

/// Bytes of pair `n`'s two files.
fn pair_bytes(dir: &Path, n: u64) -> u64 {
    [
        crate::rtlog::rt1_path(dir, n),
        crate::rtlog::rt2_path(dir, n),
    ]
    .iter()
    .filter_map(|p| fs::metadata(p).ok())
    .map(|m| m.len())
    .sum()
}

/// Whether the router-log disk has less room than a few pairs' worth (then retained pairs
/// go, whatever `--retain` says).
fn short_of_room(dir: &Path, rt_size: u64) -> bool {
    mirrorfs::state::space(dir)
        .is_ok_and(|(_, free)| free < SHORT_OF_ROOM_PAIRS * rt_size.max(64 << 20))
}

/// Pairs' worth of free room below which nothing applied is kept.
const SHORT_OF_ROOM_PAIRS: u64 = 4;

/// Applies record `r` at `(pair, offset)` and marks it complete, or holds it back when one of
/// its backup files is (or now becomes) blocked; whether it was held.
#[allow(clippy::too_many_arguments)]
fn apply_one(
    router: &crate::shared::Router,
    applier: &mut Applier,
    ahead: &mut crate::direct::ReadAhead,
    table: &RouterTable,
    p: &RtPair,
    off: u64,
    r: &RtRecord,
    limit: u64,
) -> Result<bool, String> {
    let pair = p.n;
    let block = |rel: &str, reason: String| {
        let b = mirrorfs::blocked::BlockedFile {
            path: rel.to_string(),
            site: r.site.clone(),
            rule_crc: r.rule_crc,
            pattern: table
                .get(&r.site, r.rule_crc)
                .map(|x| x.pattern.as_str().to_string())
                .unwrap_or_default(),
            pair,
            offset: off,
            since: mirrorfs::blocked::now_secs(),
            reason: reason.clone(),
        };
        if router.block_file(b) {
            log::error!(
                "backup file {rel} is blocked: {reason}; its entries are held back from router log pair {pair} offset {off} while other files flow (`mirror-ctl router unblock` retries)"
            );
        }
    };
    // The backup files it touches matter only while some file is blocked, or once it failed.
    if router.any_blocked() {
        let targets = applier.targets(table, r);
        if let Some(b) = targets.iter().find_map(|t| router.blocked_file(t)) {
            // Entries that involve a blocked file wait, and so do the other files they touch.
            for t in targets.iter().filter(|t| **t != b.path) {
                block(
                    t,
                    format!("an entry also involves {}, which is blocked", b.path),
                );
            }
            return Ok(true);
        }
    }
    // The data is what was stored, or it never lands.
    let data = match p.data(r, ahead, limit) {
        Ok(d) => r.check_data(d).map(|()| d),
        Err(e) => Err(format!("its data cannot be read: {e}")),
    };
    let data = match data {
        Ok(d) => d,
        Err(why) => {
            damaged_data(router, table, pair, off, r, &why);
            p.mark_complete(off).map_err(|e| e.to_string())?;
            return Ok(false);
        }
    };
    match applier.apply(table, r, data) {
        Ok(Outcome::Done) => {}
        Ok(Outcome::Skipped(why)) => log::debug!(
            "{} {}: skipped: {why}",
            r.command,
            String::from_utf8_lossy(&r.name)
        ),
        Ok(Outcome::NeedCopy { rule_crc, name }) => router.request_copy(
            &r.site,
            rule_crc,
            name,
            &format!(
                "the backup lacks the source of {} {} (pair {pair} offset {off})",
                r.command,
                String::from_utf8_lossy(&r.name)
            ),
        ),
        Ok(Outcome::NeedCopies { rule_crc, names }) => {
            let reason = format!(
                "the reconciliation of {} (pair {pair} offset {off}) found them missing or different",
                String::from_utf8_lossy(&r.name)
            );
            for name in names {
                router.request_copy(&r.site, rule_crc, name, &reason);
            }
        }
        Ok(Outcome::Refused(why)) => refused(router, r, &why),
        Err(e) if is_confinement(&e.err) => refused(
            router,
            r,
            &format!(
                "{} {}: the path passes through a symbolic link or leaves the root",
                e.op,
                e.path.display()
            ),
        ),
        Err(e) => {
            applier.forget_open();
            let reason = format!(
                "{} of {} from {}: {e}",
                r.command,
                String::from_utf8_lossy(&r.name),
                r.site
            );
            for t in &applier.targets(table, r) {
                block(t, reason.clone());
            }
            return Ok(true);
        }
    }
    p.mark_complete(off).map_err(|e| e.to_string())?;
    Ok(false)
}

/// An entry whose data is damaged (`why`) is not applied: the file is reported and its
/// source asked for a fresh copy of it.
fn damaged_data(
    router: &crate::shared::Router,
    table: &RouterTable,
    pair: u64,
    off: u64,
    r: &RtRecord,
    why: &str,
) {
    let name = String::from_utf8_lossy(&r.name);
    if table.get(&r.site, r.rule_crc).is_none() {
        log::warn!(
            "router log pair {pair} offset {off}: {} of {name} from site {}: {why}; not applied (its rule is gone)",
            r.command,
            r.site
        );
        return;
    }
    log::error!(
        "router log pair {pair} offset {off}: the data of {} of {name} from site {} is damaged: {why}; it is not applied, and {} is asked for a fresh copy of the file",
        r.command,
        r.site,
        r.site
    );
    let reason = format!(
        "the data of {} of {name} from site {} at router log pair {pair} offset {off} is damaged ({why})",
        r.command, r.site
    );
    router.request_copy(&r.site, r.rule_crc, r.name.clone(), &reason);
    if matches!(r.command, Command::Rename | Command::Link) {
        router.request_copy(&r.site, r.rule_crc, r.aux.clone(), &reason);
    }
}

/// Logs an entry the router will not apply (it is marked complete and never retried), and
/// tells its source.
fn refused(router: &crate::shared::Router, r: &RtRecord, why: &str) {
    let text = format!(
        "refused {} of {} from {}: {why}",
        r.command,
        String::from_utf8_lossy(&r.name),
        r.site
    );
    log::warn!("{text}");
    router.notify(&r.site, text);
}

/// fsyncs every backup path of `set` (relative to `root`; empty: the root itself).
fn flush_paths(root: &Root, set: &BTreeSet<PathBuf>) -> io::Result<()> {
    for rel in set {
        if rel.as_os_str().is_empty() {
            fsync_path(root.path())?;
            continue;
        }
        let place = match root.place(rel, false) {
            Ok(p) => p,
            // Gone, or reached through a symlink now (one put on the way since it was
            // applied: nothing of the backup lies beyond it, and the router never writes
            // through one).
            Err(e) if not_found(&e) || errno_is(&e, libc::ENOTDIR) || errno_is(&e, libc::ELOOP) => {
                continue
            }
            Err(e) => return Err(e),
        };
        match fsync_path(&place.path()) {
            Ok(()) => {}
            // Gone or replaced since (its parent's entries are what count then), or a
            // symlink (its own entry is in its parent).
            Err(e) if not_found(&e) || errno_is(&e, libc::ELOOP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fsync of the file or directory at `p` (not following a symlink in its last component).
fn fsync_path(p: &Path) -> io::Result<()> {
    // Non-blocking: opening a fifo for reading would wait for a writer.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    match f.sync_all() {
        // A fifo or socket has nothing to make durable but its entry, in its directory.
        Err(e) if errno_is(&e, libc::EINVAL) => Ok(()),
        r => r,
    }
}

/// Flushes the file system holding `root` (before the router logs of what was applied go).
fn sync_fs(root: &Path) -> io::Result<()> {
    let f = File::open(root)?;
    // SAFETY: syncfs on a descriptor owned by `f`.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorfs::journal::Position;
    use mirrorfs::rule::{Dest, Pattern};
    use mirrorfs::wire::Part;

    fn record(command: Command, name: &str, aux: &str) -> RtRecord {
        RtRecord {
            complete: false,
            command,
            part: Part::Whole,
            rule_crc: 5,
            pos: Position::new(1, 64),
            offset: 0,
            size: 0,
            rt2_offset: 0,
            data_len: 0,
            time_ns: 0,
            site: "s".into(),
            name: name.as_bytes().to_vec(),
            aux: aux.as_bytes().to_vec(),
            data_crc: None,
            version: crate::rtlog::FORMAT_VERSION,
        }
    }

    /// Site s's rule 5: `/p/` to `d`, in the whole root.
    fn p_to_d() -> RouterTable {
        p_to_d_with(|_| {})
    }

    /// [`p_to_d`], with the rule changed by `change`.
    fn p_to_d_with(change: impl FnOnce(&mut RouterRule)) -> RouterTable {
        let mut rule = RouterRule {
            crc: 5,
            pattern: Pattern::parse("/p/").unwrap(),
            dest: Dest::parse("d").unwrap(),
            attrs: false,
            delete_suffix: None,
            namespace: Some(PathBuf::new()),
        };
        change(&mut rule);
        RouterTable::with_rules([("s".to_string(), rule)])
    }

    /// Found by the restore tests: a directory of the backup replaced by a symlink on the
    /// backup host after the router wrote into it made every flush fail with ELOOP, the router
    /// process retried it for ever, and the durable point stopped.
    #[test]
    fn a_flush_passes_over_a_name_now_behind_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let table = p_to_d();
        let mut a = Applier::new(root.path(), 4).unwrap();
        let mut w = record(Command::Write, "/p/sub/f", "");
        w.part = Part::More;
        w.size = 2;
        a.apply(&table, &record(Command::Mkdir, "/p/sub", ""), &[])
            .unwrap();
        a.apply(&table, &w, b"hi").unwrap();
        assert!(a.has_unsynced());
        std::fs::rename(root.path().join("d/sub"), root.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", root.path().join("d/sub")).unwrap();
        a.make_durable().unwrap();
        assert!(!a.has_unsynced());
    }

    #[test]
    fn a_rename_whose_source_never_arrived_asks_for_a_copy_of_the_result() {
        let root = tempfile::tempdir().unwrap();
        let table = p_to_d();
        let mut a = Applier::new(root.path(), 4).unwrap();
        // Neither the file nor its directory is on the backup.
        for from in ["/p/gone/x", "/p/x"] {
            let out = a
                .apply(&table, &record(Command::Rename, from, "/p/y"), &[])
                .unwrap();
            assert_eq!(
                out,
                Outcome::NeedCopy {
                    rule_crc: 5,
                    name: b"/p/y".to_vec()
                },
                "{from}"
            );
            std::fs::create_dir_all(root.path().join("d")).unwrap();
        }
        // A delete of what is not there is done with nothing to do.
        let out = a
            .apply(&table, &record(Command::Delete, "/p/gone/z", ""), &[])
            .unwrap();
        assert!(matches!(out, Outcome::Skipped(_)), "{out:?}");
        // And a name that leaves the rule's destination is refused.
        let out = a
            .apply(&table, &record(Command::Write, "/p/../z", ""), &[])
            .unwrap();
        assert!(matches!(out, Outcome::Refused(_)), "{out:?}");
    }

    /// The patchwork finding (issue 13 item 1, seen under issue 12's crash tests): a journal
    /// write to a file the backup does not have asks for the file whole instead of leaving
    /// zeros where its older content is; a copy's own parts build the file.
    #[test]
    fn a_change_to_a_file_the_backup_lacks_asks_for_it_whole() {
        let root = tempfile::tempdir().unwrap();
        let table = p_to_d();
        let mut a = Applier::new(root.path(), 4).unwrap();
        for command in [Command::Write, Command::Truncate, Command::Zero] {
            let mut r = record(command, "/p/old", "");
            r.offset = 4096;
            r.size = 10;
            let out = a.apply(&table, &r, b"late").unwrap();
            assert_eq!(
                out,
                Outcome::NeedCopy {
                    rule_crc: 5,
                    name: b"/p/old".to_vec()
                },
                "{command}"
            );
            assert!(!root.path().join("d/old").exists());
        }
        // A copy's parts create it.
        for (command, size, data) in [
            (Command::Write, 5, &b"whole"[..]),
            (Command::Truncate, 5, b""),
        ] {
            let mut part = record(command, "/p/old", "");
            part.part = Part::Extra;
            part.size = size;
            assert_eq!(a.apply(&table, &part, data).unwrap(), Outcome::Done);
        }
        assert_eq!(std::fs::read(root.path().join("d/old")).unwrap(), b"whole");
        // Then later changes apply.
        let mut w = record(Command::Write, "/p/old", "");
        w.offset = 5;
        assert_eq!(a.apply(&table, &w, b"!").unwrap(), Outcome::Done);
        assert_eq!(std::fs::read(root.path().join("d/old")).unwrap(), b"whole!");
    }

    /// A copy's part of file `name` (`More`), of `command` at `offset`.
    fn part(command: Command, name: &str, offset: u64, size: u64) -> RtRecord {
        let mut r = record(command, name, "");
        r.part = Part::More;
        r.offset = offset;
        r.size = size;
        r
    }

    /// An adversarial finding of issue 13: a copy cut off midway (the sender stopped, or the
    /// rule removed during its first copy) left the backup file with the new content's first
    /// part and the old content's rest, and a restore gave that back. Now the backup file is
    /// the old version until the copy's final size arrives, then the new one whole; changes
    /// made meanwhile reach both; a copy started again begins anew; a file with other hard
    /// links is still written in place; and a restarted router goes on with the copy.
    #[test]
    fn a_copy_cut_off_midway_leaves_the_backup_file_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let table = p_to_d();
        let file = root.path().join("d/f");
        std::fs::create_dir_all(root.path().join("d")).unwrap();
        std::fs::write(&file, b"old-old-old-old!").unwrap();
        let mut a = Applier::new(root.path(), 4).unwrap();
        let apply = |a: &mut Applier, r: RtRecord, data: &[u8]| {
            assert_eq!(a.apply(&table, &r, data).unwrap(), Outcome::Done, "{r:?}");
        };
        apply(&mut a, part(Command::Write, "/p/f", 0, 8), b"NEW-NEW-");
        assert_eq!(std::fs::read(&file).unwrap(), b"old-old-old-old!");
        // A change the source made meanwhile: on the backup file now, and in the copy.
        let mut w = record(Command::Write, "/p/f", "");
        w.offset = 15;
        apply(&mut a, w, b"?");
        assert_eq!(std::fs::read(&file).unwrap(), b"old-old-old-old?");
        // The router stops here and starts again: the copy goes on.
        a.make_durable().unwrap();
        let mut a = Applier::new(root.path(), 4).unwrap();
        apply(&mut a, part(Command::Write, "/p/f", 8, 7), b"NEW-NEW");
        assert_eq!(std::fs::read(&file).unwrap(), b"old-old-old-old?");
        apply(&mut a, part(Command::Truncate, "/p/f", 0, 16), b"");
        assert_eq!(std::fs::read(&file).unwrap(), b"NEW-NEW-NEW-NEW?");
        assert_eq!(
            std::fs::read_dir(root.path().join(staging::DIR))
                .unwrap()
                .count(),
            0,
            "nothing is left aside once the copy is in place"
        );
        // A copy started again from its start begins anew.
        apply(&mut a, part(Command::Write, "/p/f", 0, 3), b"abc");
        apply(&mut a, part(Command::Zero, "/p/f", 0, 3), b"");
        apply(&mut a, part(Command::Write, "/p/f", 3, 2), b"de");
        assert_eq!(std::fs::read(&file).unwrap(), b"NEW-NEW-NEW-NEW?");
        apply(&mut a, part(Command::Truncate, "/p/f", 0, 5), b"");
        assert_eq!(std::fs::read(&file).unwrap(), b"\0\0\0de");
        // A file with another name is written in place, and both names keep sharing it.
        std::fs::hard_link(&file, root.path().join("d/g")).unwrap();
        apply(&mut a, part(Command::Write, "/p/f", 0, 2), b"xy");
        assert_eq!(std::fs::read(root.path().join("d/g")).unwrap(), b"xy\0de");
        apply(&mut a, part(Command::Truncate, "/p/f", 0, 2), b"");
        assert_eq!(std::fs::read(root.path().join("d/g")).unwrap(), b"xy");
        // A file the source deleted while its copy was on the way: the copy is dropped.
        std::fs::write(root.path().join("d/h"), b"kept").unwrap();
        apply(&mut a, part(Command::Write, "/p/h", 0, 3), b"new");
        apply(&mut a, record(Command::Delete, "/p/h", ""), b"");
        assert!(!a.staging.has(Path::new("d/h")));
        // And no source name is ever written where the copies are built.
        let table = p_to_d_with(|r| r.namespace = Some(PathBuf::from(staging::DIR)));
        let out = a
            .apply(&table, &record(Command::Create, "/p/x", ""), &[])
            .unwrap();
        assert!(matches!(out, Outcome::Refused(_)), "{out:?}");
    }

    /// References (issue 16): a copy's run of blocks the backup holds is taken from the
    /// backup file into the copy built aside; a write the router logs hold is read back from
    /// RT2; a sum that does not match, or a transfer the router no longer holds, asks for the
    /// whole file and writes nothing wrong.
    #[test]
    fn references_resolve_from_the_backup_and_the_router_logs_or_ask_for_the_file() {
        use mirrorfs::blocksums::{leaf, node, Locator, BLOCK};
        let root = tempfile::tempdir().unwrap();
        let rt = tempfile::tempdir().unwrap();
        let table = p_to_d();
        std::fs::create_dir_all(root.path().join("d")).unwrap();
        let old: Vec<u8> = (0..3 * BLOCK as u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.path().join("d/f"), &old).unwrap();
        let mut a = Applier::new(root.path(), 4).unwrap();
        a.rt_dir = rt.path().to_path_buf();
        let run = |d: &[u8]| node(&d.chunks(BLOCK as usize).map(leaf).collect::<Vec<_>>()).to_vec();
        let mut r = part(Command::Ref, "/p/f", 0, 2 * BLOCK);
        // Blocks 0-1 from the backup itself, block 2 new.
        assert_eq!(
            a.apply(&table, &r, &run(&old[..2 * BLOCK as usize]))
                .unwrap(),
            Outcome::Done
        );
        apply_ok(
            &mut a,
            &table,
            part(Command::Write, "/p/f", 2 * BLOCK, 4),
            b"NEW!",
        );
        apply_ok(
            &mut a,
            &table,
            part(Command::Truncate, "/p/f", 0, 2 * BLOCK + 4),
            b"",
        );
        let mut want = old[..2 * BLOCK as usize].to_vec();
        want.extend_from_slice(b"NEW!");
        assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), want);
        assert_eq!(a.refs, (1, 2 * BLOCK));
        // A block from a write the router logs hold, into a file the backup lacks.
        let data: Vec<u8> = (0..2 * BLOCK as u32).map(|i| (i % 7) as u8).collect();
        std::fs::write(
            crate::rtlog::rt2_path(rt.path(), 9),
            [&[0u8; 100][..], &data].concat(),
        )
        .unwrap();
        let at = Position::new(4, 128);
        a.transfers.note(
            "s",
            at,
            None,
            crate::retain::Held {
                pair: 9,
                rt2_offset: 100,
                len: 2 * BLOCK,
            },
        );
        r = part(Command::Ref, "/p/g", 0, BLOCK);
        r.aux = Locator::Transfer {
            pos: at,
            part: None,
            at: BLOCK,
        }
        .encode();
        assert_eq!(
            a.apply(&table, &r, &run(&data[BLOCK as usize..])).unwrap(),
            Outcome::Done
        );
        apply_ok(
            &mut a,
            &table,
            part(Command::Truncate, "/p/g", 0, BLOCK),
            b"",
        );
        assert_eq!(
            std::fs::read(root.path().join("d/g")).unwrap(),
            &data[BLOCK as usize..]
        );
        // A sum that does not match: the whole file is asked for, the backup keeps its own.
        r = part(Command::Ref, "/p/f", 0, BLOCK);
        let out = a.apply(&table, &r, &[0u8; 16]).unwrap();
        assert!(matches!(out, Outcome::NeedCopy { .. }), "{out:?}");
        apply_ok(&mut a, &table, part(Command::Truncate, "/p/f", 0, 1), b"");
        assert_eq!(
            std::fs::read(root.path().join("d/f")).unwrap(),
            &want[..1],
            "nothing of the failed reference went into the file"
        );
        // A transfer given up.
        a.transfers.forget_pair(9);
        r = part(Command::Ref, "/p/h", 0, BLOCK);
        r.aux = Locator::Transfer {
            pos: at,
            part: None,
            at: 0,
        }
        .encode();
        let out = a.apply(&table, &r, &run(&data[..BLOCK as usize])).unwrap();
        assert!(matches!(out, Outcome::NeedCopy { .. }), "{out:?}");
        assert!(
            !root.path().join("d/h").exists()
                || std::fs::read(root.path().join("d/h")).unwrap().is_empty()
        );
    }

    fn apply_ok(a: &mut Applier, table: &RouterTable, r: RtRecord, data: &[u8]) {
        assert_eq!(a.apply(table, &r, data).unwrap(), Outcome::Done, "{r:?}");
    }

    /// An adversarial finding of issue 13 (second pass): a copy put in place showed the
    /// staging file's mode 0600 until its attributes arrived (a restore or an rsync from
    /// the backup host at that moment got it so). It keeps the old file's mode until then.
    #[test]
    fn a_copy_put_in_place_keeps_the_old_mode_until_its_attributes_arrive() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = tempfile::tempdir().unwrap();
        let table = p_to_d();
        let file = root.path().join("d/f");
        std::fs::create_dir_all(root.path().join("d")).unwrap();
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut a = Applier::new(root.path(), 4).unwrap();
        for (r, data) in [
            (part(Command::Write, "/p/f", 0, 3), &b"new"[..]),
            (part(Command::Truncate, "/p/f", 0, 3), b""),
        ] {
            assert_eq!(a.apply(&table, &r, data).unwrap(), Outcome::Done);
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o7777, 0o755);
    }

    /// An adversarial finding of issue 13: with `--attrs`, a copy dropped set-id bits (the
    /// owner was set after the mode, and a chown clears them) and extended attributes.
    #[test]
    fn a_copy_with_attrs_keeps_set_id_bits_and_extended_attributes() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let table = p_to_d_with(|r| r.attrs = true);
        let mut a = Applier::new(root.path(), 4).unwrap();
        let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
        let change = AttrChange {
            mode: Some(0o4755),
            uid: Some(uid),
            gid: Some(gid),
            ..AttrChange::default()
        };
        let mut x = part(Command::SetXattr, "/p/f", 0, 0);
        x.aux = b"user.k".to_vec();
        let parts = [
            (part(Command::Write, "/p/f", 0, 2), b"hi".to_vec()),
            (part(Command::Truncate, "/p/f", 0, 2), Vec::new()),
            (x, b"v".to_vec()),
            (
                part(Command::SetAttr, "/p/f", 0, 0),
                change.encode().to_vec(),
            ),
        ];
        for (r, data) in &parts {
            assert_eq!(a.apply(&table, r, data).unwrap(), Outcome::Done, "{r:?}");
        }
        let f = root.path().join("d/f");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o4755);
        let c = std::ffi::CString::new(f.as_os_str().as_bytes()).unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: NUL-terminated strings and a buffer of its length.
        let n =
            unsafe { libc::lgetxattr(c.as_ptr(), c"user.k".as_ptr(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 1, "the extended attribute is on the backup file");
    }

    /// Site s's rule 5 keeping deleted and replaced files under `.del`.
    fn p_to_d_keeping() -> RouterTable {
        p_to_d_with(|r| r.delete_suffix = Some(".del".into()))
    }

    /// Issue 13 item 4: a delete suffix keeps every version a delete or a replacing rename
    /// takes from the backup, numbered in order, and never replaces one kept before.
    #[test]
    fn deleted_and_replaced_files_are_kept_in_order_and_never_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let table = p_to_d_keeping();
        let d = root.path().join("d");
        fs::create_dir_all(&d).unwrap();
        let mut a = Applier::new(root.path(), 4).unwrap();
        let read = |n: &str| fs::read_to_string(d.join(n)).unwrap();
        // Deleted twice under one name.
        fs::write(d.join("c"), "one").unwrap();
        assert_eq!(
            a.apply(&table, &record(Command::Delete, "/p/c", ""), &[])
                .unwrap(),
            Outcome::Done
        );
        fs::write(d.join("c"), "two").unwrap();
        assert_eq!(
            a.apply(&table, &record(Command::Delete, "/p/c", ""), &[])
                .unwrap(),
            Outcome::Done
        );
        // Replaced by a rename (`mv b c`, an editor's save).
        fs::write(d.join("c"), "three").unwrap();
        fs::write(d.join("b"), "four").unwrap();
        assert_eq!(
            a.apply(&table, &record(Command::Rename, "/p/b", "/p/c"), &[])
                .unwrap(),
            Outcome::Done
        );
        assert_eq!(read("c.del"), "one");
        assert_eq!(read("c.del.1"), "two");
        assert_eq!(read("c.del.2"), "three");
        assert_eq!(read("c"), "four");
        assert!(!d.join("b").exists());
        // A rename between two names of one file leaves both (as rename(2) does).
        fs::hard_link(d.join("c"), d.join("h")).unwrap();
        assert_eq!(
            a.apply(&table, &record(Command::Rename, "/p/h", "/p/c"), &[])
                .unwrap(),
            Outcome::Done
        );
        assert_eq!((read("h"), read("c")), ("four".into(), "four".into()));
        assert!(!d.join("c.del.3").exists());
        // A deleted name with another hard link is kept as a copy: writes through the other
        // name leave the kept version as it was.
        assert_eq!(
            a.apply(&table, &record(Command::Delete, "/p/h", ""), &[])
                .unwrap(),
            Outcome::Done
        );
        fs::write(d.join("c"), "five").unwrap();
        assert_eq!(read("h.del"), "four");
        // A source file named like a kept version takes its name; the version there is kept
        // aside as a version of that name, not lost.
        let mut create = record(Command::Create, "/p/c.del.1", "");
        create.offset = 0o100644;
        assert_eq!(a.apply(&table, &create, &[]).unwrap(), Outcome::Done);
        assert_eq!(read("c.del.1"), "");
        assert_eq!(read("c.del.1.del"), "two");
        // Applied again (a restart before its completion was recorded), it keeps nothing more.
        assert_eq!(a.apply(&table, &create, &[]).unwrap(), Outcome::Done);
        assert!(!d.join("c.del.1.del.1").exists());
        // A kept version's slot taken meanwhile by a live file is passed over.
        fs::write(d.join("n"), "n1").unwrap();
        fs::write(d.join("n.del"), "a live file named like a version").unwrap();
        assert_eq!(
            a.apply(&table, &record(Command::Delete, "/p/n", ""), &[])
                .unwrap(),
            Outcome::Done
        );
        assert_eq!(read("n.del"), "a live file named like a version");
        assert_eq!(read("n.del.1"), "n1");
        // A symlink or a directory made where a file was keeps the file too.
        fs::write(d.join("s"), "file").unwrap();
        let mut sym = record(Command::Symlink, "/p/s", "target");
        sym.aux = b"target".to_vec();
        assert_eq!(a.apply(&table, &sym, &[]).unwrap(), Outcome::Done);
        assert_eq!(read("s.del"), "file");
        assert_eq!(a.apply(&table, &sym, &[]).unwrap(), Outcome::Done);
        assert!(
            !d.join("s.del.1").exists(),
            "applied again, the same link stays"
        );
        // A name with no room left for the suffix is kept under a shortened name.
        let long = "l".repeat(255);
        fs::write(d.join(&long), "long").unwrap();
        let del = record(Command::Delete, &format!("/p/{long}"), "");
        assert_eq!(a.apply(&table, &del, &[]).unwrap(), Outcome::Done);
        assert_eq!(read(&format!("{}.del", "l".repeat(251))), "long");
    }

    #[test]
    fn the_next_kept_number_is_found_in_few_looks_and_never_taken() {
        let root = tempfile::tempdir().unwrap();
        let r = Root::open(root.path()).unwrap();
        fs::write(root.path().join("f"), "").unwrap();
        let place = r.place(Path::new("f"), false).unwrap();
        assert_eq!(next_kept(&place, "~").unwrap(), 0);
        fs::write(root.path().join("f~"), "").unwrap();
        assert_eq!(next_kept(&place, "~").unwrap(), 1);
        for n in 1..=1000 {
            fs::write(root.path().join(format!("f~.{n}")), "").unwrap();
        }
        assert_eq!(next_kept(&place, "~").unwrap(), 1001);
        // A hole left by hand is filled, never a taken number.
        fs::remove_file(root.path().join("f~.600")).unwrap();
        let n = next_kept(&place, "~").unwrap();
        assert!(n == 600 || n == 1001, "{n}");
        assert!(!root.path().join(format!("f~.{n}")).exists());
    }
}
