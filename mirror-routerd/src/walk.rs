//! The backup beneath a site's rules, walked: what a restore sends back and what a verify
//! lists ([`crate::restore`], [`crate::verify`]).
//!
//! A request's source path is mapped through the requesting site's own rules ([`plan`],
//! [`part_of`]) beneath the namespace its key grants ([`crate::backup::backup_rel`]); every
//! name is reached beneath the root's descriptor through no symbolic link
//! ([`mirrorfs::beneath`]), and only what the rule selects is visited (a wildcard rule's
//! matching names; never the versions kept under its delete suffix: [`selects`]). The walk
//! goes depth first, one directory's names at a time, and can stop between two names
//! ([`Walk`]).

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirrorfs::wire::msg::MAX_NAME_LEN;
use mirrorfs::wire::restore::{
    is_under, RestoreKind, Xattr, MAX_XATTRS, MAX_XATTR_NAME, MAX_XATTR_VALUE,
};

use crate::backup::backup_rel;
use crate::beneath::{is_confinement, Root};
use crate::config::RouterRule;
use crate::receive::SessionError;
use crate::shared::Router;

/// One part of an answer: a rule, the source name to start from and its backup path.
#[derive(Clone)]
pub(crate) struct Part {
    /// The rule.
    pub rule: Arc<RouterRule>,
    /// The source name the walk starts at.
    pub start: Vec<u8>,
    /// Its backup path, relative to the root.
    pub rel: PathBuf,
}

/// The rules of `site` that select something at or beneath `path`, in pattern order: where
/// each starts (the requested path when it lies inside the rule, else the rule's base) and
/// its backup path beneath the site's namespace.
pub(crate) fn plan(router: &Router, site: &str, path: &[u8]) -> Vec<Part> {
    let table = router.table();
    let mut rules: Vec<Arc<RouterRule>> = table
        .iter()
        .filter(|(s, _)| *s == site)
        .map(|(_, r)| r.clone())
        .collect();
    rules.sort_by(|a, b| a.pattern.as_str().cmp(b.pattern.as_str()));
    rules.into_iter().filter_map(|r| part_of(r, path)).collect()
}

/// What `rule` selects at or beneath `path`: where it starts (the requested path when it
/// lies inside the rule, else the rule's base) and its backup path beneath the site's
/// namespace; `None` when the rule selects nothing there (or its site has no key).
pub(crate) fn part_of(rule: Arc<RouterRule>, path: &[u8]) -> Option<Part> {
    let base = rule.base();
    let (start, rel) = if is_under(path, &base) {
        (path.to_vec(), backup_rel(&rule, path).ok()?)
    } else if is_under(&base, path) {
        (base, rule.dest_rel()?)
    } else {
        return None;
    };
    if rel.as_os_str().is_empty() {
        return None;
    }
    Some(Part { rule, start, rel })
}

/// What a walk does with each name it finds.
pub(crate) trait Visit {
    /// A selected name, reached as `place` (`meta` is its lstat).
    fn item(
        &mut self,
        rule: &RouterRule,
        name: &[u8],
        place: &mirrorfs::beneath::Place,
        meta: &Metadata,
    ) -> Result<(), SessionError>;
    /// A name that cannot be sent, and why.
    fn skip(&mut self, name: &[u8], reason: String) -> Result<(), SessionError>;
}

/// What a name of the backup is, for a restore.
pub(crate) fn kind_of(meta: &Metadata) -> Option<RestoreKind> {
    let t = meta.file_type();
    if t.is_dir() {
        Some(RestoreKind::Dir)
    } else if t.is_file() {
        Some(RestoreKind::File)
    } else if t.is_symlink() {
        Some(RestoreKind::Symlink)
    } else if t.is_fifo() {
        Some(RestoreKind::Fifo)
    } else {
        None
    }
}

/// Whether `rule` selects file `name` (any file of the backup, kept versions too).
pub(crate) fn selects_file(rule: &RouterRule, name: &[u8]) -> bool {
    selects(rule, name, RestoreKind::File, name, || false)
}

/// Whether `rule` selects `name` (a `kind`), `start` being where the walk began; `kept`
/// tells whether it is a version kept under the delete suffix ([`crate::apply::is_kept`]).
pub(crate) fn selects(
    rule: &RouterRule,
    name: &[u8],
    kind: RestoreKind,
    start: &[u8],
    kept: impl Fn() -> bool,
) -> bool {
    let pk = rule.pattern.kind();
    if kind == RestoreKind::Dir {
        // The directory the walk starts at, and those inside a subtree (but a directory kept
        // under the delete suffix, with all it holds).
        return name == start || (pk.is_subtree() && !kept());
    }
    if pk == mirrorfs::rule::PatternKind::File {
        return name == rule.base().as_slice();
    }
    rule.pattern.match_file(name).is_some() && !kept()
}

/// A walk of the backup of a [`Part`], depth first, names in order (a directory before what
/// it holds: [`mirrorfs::wire::verify::walk_order`]), that can stop and go on: a restore runs
/// it to its end ([`walk`]), a verify a batch of names at a time ([`Walk::step`]).
pub(crate) struct Walk {
    part: Part,
    /// Names still to look at, the next one last.
    stack: Vec<(Vec<u8>, PathBuf)>,
}

impl Walk {
    /// A walk of `part` from its start.
    pub(crate) fn new(part: Part) -> Walk {
        let stack = vec![(part.start.clone(), part.rel.clone())];
        Walk { part, stack }
    }

    /// Whether every name was looked at.
    pub(crate) fn done(&self) -> bool {
        self.stack.is_empty()
    }

    /// Looks at the next name (and lists it when it is a directory to descend into); false
    /// once the walk is complete.
    pub(crate) fn step(&mut self, root: &Root, v: &mut dyn Visit) -> Result<bool, SessionError> {
        let part = &self.part;
        let descend = |rule: &RouterRule, name: &[u8]| {
            rule.pattern.kind().is_subtree()
                || (rule.pattern.kind() == mirrorfs::rule::PatternKind::Wildcard
                    && name == rule.base().as_slice())
        };
        let Some((name, rel)) = self.stack.pop() else {
            return Ok(false);
        };
        let first = name == part.start;
        let place = match root.place(&rel, false) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => {
                v.skip(&name, unreadable(root, &rel, &e))?;
                return Ok(true);
            }
        };
        let meta = match std::fs::symlink_metadata(place.path()) {
            Ok(m) => m,
            // Gone since it was listed, or never backed up.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => {
                v.skip(&name, unreadable(root, &rel, &e))?;
                return Ok(true);
            }
        };
        let Some(kind) = kind_of(&meta) else {
            if !first {
                v.skip(
                    &name,
                    "not a file, directory, symbolic link or fifo in the backup".into(),
                )?;
            }
            return Ok(true);
        };
        let kept = || crate::apply::is_kept(&part.rule, &name, &place.path(), &meta);
        if !selects(&part.rule, &name, kind, &part.start, kept) {
            return Ok(true);
        }
        v.item(&part.rule, &name, &place, &meta)?;
        if kind != RestoreKind::Dir || !(descend(&part.rule, &name) || first) {
            return Ok(true);
        }
        let names = match list(&place) {
            Ok(n) => n,
            Err(e) => {
                v.skip(&name, unreadable(root, &rel, &e))?;
                return Ok(true);
            }
        };
        for child in names.into_iter().rev() {
            let mut n = name.clone();
            n.push(b'/');
            n.extend_from_slice(&child);
            if n.len() > MAX_NAME_LEN {
                v.skip(&n[..MAX_NAME_LEN], "name too long for the protocol".into())?;
                continue;
            }
            self.stack
                .push((n, rel.join(std::ffi::OsStr::from_bytes(&child))));
        }
        Ok(true)
    }
}

/// Walks the backup of `part` to its end ([`Walk`]).
pub(crate) fn walk(root: &Root, part: &Part, v: &mut dyn Visit) -> Result<(), SessionError> {
    let mut w = Walk::new(part.clone());
    while w.step(root, v)? {}
    Ok(())
}

/// Why `rel` cannot be read, for the client (confinement refusals are logged here too).
pub(crate) fn unreadable(root: &Root, rel: &Path, e: &io::Error) -> String {
    let shown = root.path().join(rel);
    if is_confinement(e) {
        log::warn!(
            "restore: {} passes through a symbolic link; refusing to follow it",
            shown.display()
        );
        "passes through a symbolic link on the router; not followed".into()
    } else {
        format!("cannot be read on the router: {e}")
    }
}

/// The names in directory `place` (opened through no symlink), sorted.
pub(crate) fn list(place: &mirrorfs::beneath::Place) -> io::Result<Vec<Vec<u8>>> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(place.path())?;
    let mut names: Vec<Vec<u8>> = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        names.push(e?.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

/// Opens the regular file at `place` for reading, never through a symlink and never
/// blocking (a fifo swapped in), and only if it is still the file `meta` described.
pub(crate) fn open_file(place: &mirrorfs::beneath::Place, meta: &Metadata) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(place.path())?;
    let m = f.metadata()?;
    if !m.is_file() || m.ino() != meta.ino() || m.dev() != meta.dev() {
        return Err(io::Error::other("it changed while being read"));
    }
    Ok(f)
}

/// The extended attributes of `path` (not following a symlink), within the protocol's
/// limits; none where the file system has none.
pub(crate) fn xattrs(path: &Path) -> Vec<Xattr> {
    mirrorfs::xattr::of(path)
        .into_iter()
        .filter(|(name, value)| name.len() <= MAX_XATTR_NAME && value.len() <= MAX_XATTR_VALUE)
        .take(MAX_XATTRS)
        .map(|(name, value)| Xattr { name, value })
        .collect()
}
