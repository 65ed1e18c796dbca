//! Restore sessions: the backup of a source sent back to it (`mirror-ctl restore`, protocol in
//! [`mirrorfs::wire::restore`]).
//!
//! A session of role [`Role::Restore`](mirrorfs::wire::Role::Restore) asks, one
//! [`Msg::Restore`] at a time, for what the requesting site's rules select at or beneath a
//! source path. Every request is checked: the path must be a normalised absolute path (no
//! `.`, `..` or empty components), the key the session was opened with must still be the
//! site's, and only the rules that site sent are looked at, each mapped beneath the namespace
//! its key grants ([`crate::backup::backup_rel`]), so a site never reads another site's
//! namespace. Every backup name is reached beneath the root's descriptor through no symbolic
//! link ([`crate::beneath`]); a name that would pass through one is skipped (and logged), never
//! followed. Of the backup, only what the rule selects is sent (a wildcard rule's matching
//! names; never the versions kept under its delete suffix). A file with several names (hard
//! links) is sent once; its other names follow as links to the first.
//!
//! Memory is bounded: the tree is walked depth first, one directory's names at a time, and
//! file data goes in chunks of [`RESTORE_CHUNK`] read with `SEEK_DATA`/`SEEK_HOLE`, so holes
//! stay holes. The answer is counted first (a walk of the metadata, with heartbeats while it
//! lasts) so that the client can show progress. Whatever fails (the connection, a write that
//! stalls for a minute, a client idle for a minute between requests), the session ends.

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorfs::wire::auth::{FrameMac, Key};
use mirrorfs::wire::msg::MAX_NAME_LEN;
use mirrorfs::wire::restore::{
    is_under, valid_path, RestoreAttrs, RestoreItem, RestoreKind, Xattr, MAX_XATTRS,
    MAX_XATTR_NAME, MAX_XATTR_VALUE, RESTORE_CHUNK,
};
use mirrorfs::wire::{read_sealed, Msg, WireError};

use crate::backup::backup_rel;
use crate::beneath::{is_confinement, Root};
use crate::config::RouterRule;
use crate::receive::{key_revoked, refuse, send, SessionError};
use crate::shared::{PeerOut, Router};

/// How long a restore client may stay silent between requests.
const IDLE: Duration = Duration::from_secs(60);
/// How often the count sends a heartbeat, so that the client's read does not time out.
const BEAT: Duration = Duration::from_secs(2);
/// Names (or data chunks) sent between two looks at the key file (a key removed ends the
/// session).
const KEY_CHECK_EVERY: u64 = 1000;

/// One part of an answer: a rule, the source name to start from and its backup path.
struct Part {
    rule: Arc<RouterRule>,
    start: Vec<u8>,
    rel: PathBuf,
}

/// Serves a restore session of `site` (authenticated with `key`) until the client closes it
/// or something fails.
pub fn serve(
    router: &Router,
    site: &str,
    key: &Key,
    w: &Mutex<PeerOut>,
    r: &mut BufReader<TcpStream>,
    mac: &mut FrameMac,
) -> Result<(), SessionError> {
    r.get_ref()
        .set_read_timeout(Some(IDLE))
        .map_err(WireError::Io)?;
    loop {
        let msg = match read_sealed(r, mac) {
            Err(WireError::Closed) => return Ok(()),
            m => m?,
        };
        match msg {
            Msg::Restore { path } => request(router, site, key, w, &path)?,
            Msg::Heartbeat => {}
            other => {
                return Err(refuse(
                    w,
                    format!("unexpected {} in a restore session", other.kind()),
                ))
            }
        }
    }
}

/// Answers one request for `path`.
fn request(
    router: &Router,
    site: &str,
    key: &Key,
    w: &Mutex<PeerOut>,
    path: &[u8],
) -> Result<(), SessionError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    if let Some(why) = key_revoked(router, site, key) {
        return Err(refuse(w, why));
    }
    if !valid_path(path, MAX_NAME_LEN) {
        return Err(refuse(
            w,
            format!(
                "restore of {shown:?} for site {site} refused: not a normalised absolute path (no '.', '..' or empty components)"
            ),
        ));
    }
    let parts = plan(router, site, path);
    if parts.is_empty() {
        return Err(refuse(
            w,
            format!("no rule of site {site} on this router selects anything at or under {shown}"),
        ));
    }
    let root = Root::open(&router.cfg.root).map_err(|e| {
        log::error!("backup root {}: {e}", router.cfg.root.display());
        refuse(
            w,
            format!("the router cannot open its backup root for the restore of {shown}"),
        )
    })?;
    // Counted first, so that the client can show how far it is.
    let mut count = Count {
        w,
        files: 0,
        bytes: 0,
        beat: Instant::now(),
        links: HashSet::new(),
    };
    for p in &parts {
        walk(&root, p, &mut count)?;
    }
    send(
        w,
        &Msg::RestoreTotal {
            files: count.files,
            bytes: count.bytes,
        },
    )?;
    let mut out = Stream {
        router,
        site,
        key,
        w,
        files: 0,
        bytes: 0,
        skipped: 0,
        buf: vec![0u8; RESTORE_CHUNK],
        links: HashMap::new(),
        chunks: 0,
    };
    for p in &parts {
        walk(&root, p, &mut out)?;
    }
    send(
        w,
        &Msg::RestoreDone {
            files: out.files,
            bytes: out.bytes,
            skipped: out.skipped,
        },
    )?;
    log::info!(
        "source {site} restored {shown}: {} names, {} bytes, {} skipped",
        out.files,
        out.bytes,
        out.skipped
    );
    Ok(())
}

/// The rules of `site` that select something at or beneath `path`, in pattern order: where
/// each starts (the requested path when it lies inside the rule, else the rule's base) and
/// its backup path beneath the site's namespace.
fn plan(router: &Router, site: &str, path: &[u8]) -> Vec<Part> {
    let table = router.table();
    let mut rules: Vec<Arc<RouterRule>> = table
        .iter()
        .filter(|(s, _)| *s == site)
        .map(|(_, r)| r.clone())
        .collect();
    rules.sort_by(|a, b| a.pattern.as_str().cmp(b.pattern.as_str()));
    let mut parts = Vec::new();
    for rule in rules {
        let base = rule.base();
        let (start, rel) = if is_under(path, &base) {
            match backup_rel(&rule, path) {
                Ok(rel) => (path.to_vec(), rel),
                Err(_) => continue,
            }
        } else if is_under(&base, path) {
            match rule.dest_rel() {
                Some(rel) => (base, rel),
                None => continue,
            }
        } else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        parts.push(Part { rule, start, rel });
    }
    parts
}

/// What a walk does with each name it finds.
trait Visit {
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
fn kind_of(meta: &Metadata) -> Option<RestoreKind> {
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

/// Whether `rule` selects `name` (a `kind`), `start` being where the walk began; `kept`
/// tells whether it is a version kept under the delete suffix ([`crate::apply::is_kept`]).
fn selects(
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

/// Walks the backup of `part` depth first, names in order, a directory before what it holds.
fn walk(root: &Root, part: &Part, v: &mut dyn Visit) -> Result<(), SessionError> {
    let descend = |rule: &RouterRule, name: &[u8]| {
        rule.pattern.kind().is_subtree()
            || (rule.pattern.kind() == mirrorfs::rule::PatternKind::Wildcard
                && name == rule.base().as_slice())
    };
    // Names still to look at, the next one last.
    let mut stack: Vec<(Vec<u8>, PathBuf)> = vec![(part.start.clone(), part.rel.clone())];
    while let Some((name, rel)) = stack.pop() {
        let first = name == part.start;
        let place = match root.place(&rel, false) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                v.skip(&name, unreadable(root, &rel, &e))?;
                continue;
            }
        };
        let meta = match std::fs::symlink_metadata(place.path()) {
            Ok(m) => m,
            // Gone since it was listed, or never backed up.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                v.skip(&name, unreadable(root, &rel, &e))?;
                continue;
            }
        };
        let Some(kind) = kind_of(&meta) else {
            if !first {
                v.skip(
                    &name,
                    "not a file, directory, symbolic link or fifo in the backup".into(),
                )?;
            }
            continue;
        };
        let kept = || crate::apply::is_kept(&part.rule, &name, &place.path(), &meta);
        if !selects(&part.rule, &name, kind, &part.start, kept) {
            continue;
        }
        v.item(&part.rule, &name, &place, &meta)?;
        if kind != RestoreKind::Dir || !(descend(&part.rule, &name) || first) {
            continue;
        }
        let names = match list(&place) {
            Ok(n) => n,
            Err(e) => {
                v.skip(&name, unreadable(root, &rel, &e))?;
                continue;
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
            stack.push((n, rel.join(std::ffi::OsStr::from_bytes(&child))));
        }
    }
    Ok(())
}

/// Why `rel` cannot be read, for the client (confinement refusals are logged here too).
fn unreadable(root: &Root, rel: &Path, e: &io::Error) -> String {
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
fn list(place: &mirrorfs::beneath::Place) -> io::Result<Vec<Vec<u8>>> {
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

/// The first pass: counts names and bytes.
struct Count<'a> {
    w: &'a Mutex<PeerOut>,
    files: u64,
    bytes: u64,
    beat: Instant,
    /// Files with several names counted (their data goes once).
    links: HashSet<(u64, u64)>,
}

impl Visit for Count<'_> {
    fn item(
        &mut self,
        _: &RouterRule,
        _: &[u8],
        _: &mirrorfs::beneath::Place,
        meta: &Metadata,
    ) -> Result<(), SessionError> {
        self.files += 1;
        let again = meta.nlink() > 1
            && self.links.len() < MAX_LINKS
            && !self.links.insert((meta.dev(), meta.ino()));
        if meta.is_file() && !again {
            self.bytes += meta.len().min(meta.blocks() * 512);
        }
        if self.beat.elapsed() >= BEAT {
            self.beat = Instant::now();
            send(self.w, &Msg::Heartbeat)?;
        }
        Ok(())
    }
    fn skip(&mut self, _: &[u8], _: String) -> Result<(), SessionError> {
        Ok(())
    }
}

/// The second pass: sends every name, and the data of files.
struct Stream<'a> {
    router: &'a Router,
    site: &'a str,
    key: &'a Key,
    w: &'a Mutex<PeerOut>,
    files: u64,
    bytes: u64,
    skipped: u64,
    buf: Vec<u8>,
    /// Files with several names sent so far in this answer: (device, inode) → the name sent.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Data chunks sent (the key file is looked at every [`KEY_CHECK_EVERY`]).
    chunks: u64,
}

/// The most files with several names remembered per answer (beyond, each name is sent as a
/// file of its own).
const MAX_LINKS: usize = 1 << 20;

impl Visit for Stream<'_> {
    fn item(
        &mut self,
        rule: &RouterRule,
        name: &[u8],
        place: &mirrorfs::beneath::Place,
        meta: &Metadata,
    ) -> Result<(), SessionError> {
        if self.files % KEY_CHECK_EVERY == KEY_CHECK_EVERY - 1 {
            if let Some(why) = key_revoked(self.router, self.site, self.key) {
                return Err(refuse(self.w, why));
            }
        }
        let Some(kind) = kind_of(meta) else {
            return Ok(());
        };
        if kind == RestoreKind::File {
            // A blocked backup file holds what its entries made of it before they stopped
            // (a copy cut off by a full disk, for one): given back, it would pass for the
            // source's file.
            let blocked = crate::backup::backup_rel(rule, name)
                .ok()
                .and_then(|rel| self.router.blocked_file(&rel.to_string_lossy()));
            if let Some(b) = blocked {
                return self.skip(
                    name,
                    format!(
                        "blocked on the router since {} ({}): its backup may be incomplete; not restored (`mirror-ctl router status` on the backup host)",
                        mirrorfs::logging::utc_secs(b.since),
                        b.reason
                    ),
                );
            }
        }
        if kind == RestoreKind::File && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                send(
                    self.w,
                    &Msg::RestoreItem {
                        item: RestoreItem {
                            name: name.to_vec(),
                            kind: RestoreKind::Link,
                            mode: 0,
                            size: 0,
                            target: first.clone(),
                            attrs: None,
                        },
                    },
                )?;
                self.files += 1;
                return Ok(());
            }
            if self.links.len() < MAX_LINKS {
                self.links.insert((meta.dev(), meta.ino()), name.to_vec());
            }
        }
        // A file is opened first (it may have changed since its lstat).
        let file = if kind == RestoreKind::File {
            match open_file(place, meta) {
                Ok(f) => Some(f),
                Err(e) => return self.skip(name, format!("cannot be read on the router: {e}")),
            }
        } else {
            None
        };
        let target = if kind == RestoreKind::Symlink {
            match std::fs::read_link(place.path()) {
                Ok(t) => t.into_os_string().into_vec(),
                Err(e) => return self.skip(name, format!("cannot be read on the router: {e}")),
            }
        } else {
            Vec::new()
        };
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        let attrs = rule.attrs.then(|| RestoreAttrs {
            uid: meta.uid(),
            gid: meta.gid(),
            atime: (meta.atime(), meta.atime_nsec() as u32),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            xattrs: xattrs(&place.path()),
        });
        let mode = meta.mode() & if rule.attrs { 0o7777 } else { 0o777 };
        send(
            self.w,
            &Msg::RestoreItem {
                item: RestoreItem {
                    name: name.to_vec(),
                    kind,
                    mode,
                    size,
                    target,
                    attrs,
                },
            },
        )?;
        self.files += 1;
        if let Some(f) = file {
            match self.data(&f, size) {
                Ok(()) => {}
                // The file could not be read: the client drops what it got of it.
                Err(SessionError::Protocol(why)) => return self.skip(name, why),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn skip(&mut self, name: &[u8], reason: String) -> Result<(), SessionError> {
        self.skipped += 1;
        log::warn!(
            "restore for source {}: {} skipped: {reason}",
            self.site,
            String::from_utf8_lossy(name)
        );
        send(
            self.w,
            &Msg::RestoreSkipped {
                name: name.to_vec(),
                reason,
            },
        )
    }
}

impl Stream<'_> {
    /// Sends the data of `f` up to `size`, skipping holes.
    fn data(&mut self, f: &File, size: u64) -> Result<(), SessionError> {
        let read_failed =
            |e: io::Error| SessionError::Protocol(format!("cannot be read on the router: {e}"));
        let mut pos = 0u64;
        while pos < size {
            let Some((start, end)) = next_data(f, pos, size).map_err(read_failed)? else {
                break;
            };
            let mut at = start;
            while at < end {
                let want = ((end - at) as usize).min(self.buf.len());
                let n = f.read_at(&mut self.buf[..want], at).map_err(read_failed)?;
                if n == 0 {
                    // Shorter than it was: the rest is not there any more.
                    return Ok(());
                }
                send(
                    self.w,
                    &Msg::RestoreData {
                        offset: at,
                        data: self.buf[..n].to_vec(),
                    },
                )?;
                self.chunks += 1;
                if self.chunks % KEY_CHECK_EVERY == 0 {
                    if let Some(why) = key_revoked(self.router, self.site, self.key) {
                        return Err(refuse(self.w, why));
                    }
                }
                self.bytes += n as u64;
                at += n as u64;
            }
            pos = end;
        }
        Ok(())
    }
}

/// The next range of data at or after `pos` (below `size`), holes skipped; `None` past the
/// last data. File systems without `SEEK_DATA` make the whole rest one range.
fn next_data(f: &File, pos: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on an open descriptor.
    let start = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
    if start < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((pos, size))),
            _ => Err(e),
        };
    }
    let start = start as u64;
    if start >= size {
        return Ok(None);
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start as i64, libc::SEEK_HOLE) };
    let end = if end < 0 {
        size
    } else {
        (end as u64).min(size)
    };
    Ok(Some((start, end)))
}

/// Opens the regular file at `place` for reading, never through a symlink and never
/// blocking (a fifo swapped in), and only if it is still the file `meta` described.
fn open_file(place: &mirrorfs::beneath::Place, meta: &Metadata) -> io::Result<File> {
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
fn xattrs(path: &Path) -> Vec<Xattr> {
    mirrorfs::xattr::of(path)
        .into_iter()
        .filter(|(name, value)| name.len() <= MAX_XATTR_NAME && value.len() <= MAX_XATTR_VALUE)
        .take(MAX_XATTRS)
        .map(|(name, value)| Xattr { name, value })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorfs::rule::{Dest, Pattern};

    fn rule(p: &str, suffix: Option<&str>) -> RouterRule {
        RouterRule {
            crc: 1,
            pattern: Pattern::parse(p).unwrap(),
            dest: Dest::parse("d").unwrap(),
            attrs: false,
            delete_suffix: suffix.map(String::from),
            namespace: Some(PathBuf::from("site")),
        }
    }

    /// `selects`, with every name of the kept form marked as kept.
    fn sel(rule: &RouterRule, name: &[u8], kind: RestoreKind, start: &[u8]) -> bool {
        selects(rule, name, kind, start, || {
            crate::apply::kept_version(rule, name)
        })
    }

    #[test]
    fn only_what_the_rule_selects_is_sent() {
        let w = rule("/p/a/*.doc", None);
        assert!(sel(&w, b"/p/a/x.doc", RestoreKind::File, b"/p/a"));
        assert!(!sel(&w, b"/p/a/x.txt", RestoreKind::File, b"/p/a"));
        assert!(sel(&w, b"/p/a", RestoreKind::Dir, b"/p/a"));
        assert!(!sel(&w, b"/p/a/sub", RestoreKind::Dir, b"/p/a"));
        let s = rule("/p/a/", Some(".del"));
        assert!(sel(&s, b"/p/a/x", RestoreKind::File, b"/p/a"));
        assert!(!sel(&s, b"/p/a/x.del", RestoreKind::File, b"/p/a"));
        assert!(!sel(&s, b"/p/a/x.del.2", RestoreKind::File, b"/p/a"));
        assert!(sel(&s, b"/p/a/sub", RestoreKind::Dir, b"/p/a"));
        assert!(!sel(&s, b"/p/a/sub.del", RestoreKind::Dir, b"/p/a"));
        // A source file named like a kept version (not marked as one) is restored.
        assert!(selects(
            &s,
            b"/p/a/x.del",
            RestoreKind::File,
            b"/p/a",
            || false
        ));
        let f = rule("/p/a/x.doc", None);
        assert!(sel(&f, b"/p/a/x.doc", RestoreKind::File, b"/p/a/x.doc"));
    }

    #[test]
    fn holes_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 64 << 20).unwrap();
        let f = File::open(&p).unwrap();
        let size = f.metadata().unwrap().len();
        let (s, e) = next_data(&f, 0, size).unwrap().unwrap();
        assert_eq!(s, 0);
        assert!(e < 64 << 20, "the hole is not data: {e}");
        let (s2, e2) = next_data(&f, e, size).unwrap().unwrap();
        assert!(s2 <= 64 << 20 && e2 == size, "{s2} {e2}");
        assert!(next_data(&f, size, size).unwrap().is_none());
    }
}
