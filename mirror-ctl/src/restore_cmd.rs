//! `mirror-ctl restore [PATH…] --to DIR [--site SITE]`: fetches the backup of what the rules
//! select under PATH… back from a router, over an authenticated session of role `Restore`
//! ([`mirrorfs::wire::restore`]), into DIR.
//!
//! One PATH: DIR takes its place (`restore ~/proj --to /tmp/p` puts `~/proj/src/a.rs` in
//! `/tmp/p/src/a.rs`; a PATH that is a single file lands in DIR under its own name). No PATH
//! (everything) or several: DIR stands for `/`, every name beneath it at its full path. The
//! site is the one the local rules that select PATH name (`--site` chooses when they name
//! several, and is needed when the rules database is gone with the disk). DIR must be empty or
//! missing unless `--overwrite`.
//!
//! Nothing the router sends is trusted: every name must lie beneath the path asked for and
//! be normalised, every write goes beneath DIR's descriptor through no symbolic link (a
//! restored symlink never redirects a later name), and a file never grows past the size its
//! item gave. Directories are made private while they fill and get their mode (and owner and
//! times, with `--attrs`) once the router has moved past them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mirrorfs::beneath::{Place, Root};
use mirrorfs::rule::{PatternKind, Rule, Site};
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::state::StateDir;
use mirrorfs::wire::auth::KeyRing;
use mirrorfs::wire::msg::MAX_NAME_LEN;
use mirrorfs::wire::restore::{is_under, valid_path, RestoreAttrs, RestoreItem, RestoreKind};
use mirrorfs::wire::{Msg, Role};

use crate::cli::RestoreArgs;
use crate::dial::Session;
use crate::sync_cmd::human;

/// `restore`.
pub fn restore(state: &StateDir, keys: &KeyRing, args: RestoreArgs) -> Result<()> {
    let mut paths = Vec::new();
    for p in &args.paths {
        paths.push(normalise(p)?);
    }
    // One path: DIR is that path; none or several: DIR is `/`.
    let anchor: Vec<u8> = match paths.as_slice() {
        [one] => one.clone(),
        _ => b"/".to_vec(),
    };
    if paths.is_empty() {
        paths.push(b"/".to_vec());
    }
    let rules = local_rules(state)?;
    let mut by_site: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for p in &paths {
        let site = match &args.site {
            Some(s) => s.to_string(),
            None => site_for(&rules, p, state)?,
        };
        by_site.entry(site).or_default().push(p.clone());
    }
    let (dir, created) = prepare(&args.to, args.overwrite)?;
    if let Some(r) = rules
        .iter()
        .find(|r| is_under(dir.as_os_str().as_bytes(), base(r)))
    {
        // Allowed (putting back what was lost in place is a use), but not silent.
        eprintln!(
            "note: {} is under rule {} ({}): where that tree is mounted, what is restored there is recorded and sent to {} again",
            dir.display(),
            r.id,
            r.spec.pattern.as_str(),
            r.spec.sites.iter().map(Site::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    let res = restore_into(state, keys, &dir, &anchor, &by_site);
    if res.is_err() {
        // Made for this restore, and nothing came: not left behind (kept if it holds
        // anything, which may be of use).
        for d in &created {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    }
    res
}

/// The restore of `by_site`'s paths into `dir` (see [`restore`]).
fn restore_into(
    state: &StateDir,
    keys: &KeyRing,
    dir: &Path,
    anchor: &[u8],
    by_site: &BTreeMap<String, Vec<Vec<u8>>>,
) -> Result<()> {
    let dest = Root::open(dir).with_context(|| format!("restore into {}", dir.display()))?;
    let id = mirrorfs::state::site_id(state).context("this source's site id")?;
    let mut total = Totals::default();
    for (site, paths) in by_site {
        let mut session = Session::open(keys, &id, site, Role::Restore)?;
        for p in paths {
            let mut w = Writer {
                dest: &dest,
                dir,
                anchor,
                site,
                path: p,
                current: None,
                dirs: Vec::new(),
                progress: Progress::new(site, p),
                totals: Totals::default(),
            };
            let res = w.run(&mut session);
            w.progress.finish(res.is_ok());
            res?;
            if w.totals.names == 0 && w.totals.skipped == 0 {
                bail!(
                    "site {site} holds nothing of {} for this source ({id}): nothing was backed up there yet, or it was removed",
                    shown(p)
                );
            }
            total.add(&w.totals);
        }
    }
    // What was restored is on disk before this says so.
    if let Ok(f) = File::open(dir) {
        // SAFETY: syncfs on an open descriptor.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
    println!(
        "restored {} names ({} files, {}) into {}",
        total.names,
        total.files,
        human(total.bytes),
        dir.display()
    );
    if total.skipped > 0 {
        bail!(
            "{} name(s) could not be restored (listed above); the rest is in {}",
            total.skipped,
            dir.display()
        );
    }
    Ok(())
}

fn shown(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// `p` as an absolute, normalised source name (without `.` components or a trailing `/`);
/// `..` is refused: the disk it would be resolved on may be gone.
fn normalise(p: &Path) -> Result<Vec<u8>> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("current directory (give PATH as an absolute path)")?
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => bail!(
                "restore path {} contains '..': give it as the rules name it (absolute, without '..')",
                p.display()
            ),
            Component::Prefix(_) => bail!("restore path {} is not a Unix path", p.display()),
        }
    }
    let b = out.into_os_string().into_vec();
    if !valid_path(&b, MAX_NAME_LEN) {
        bail!("restore path {} is not a usable source path", p.display());
    }
    Ok(b)
}

/// The rules of this local system, if its rules database is there (after a disk failure it
/// may not be: then `--site` says where to restore from).
fn local_rules(state: &StateDir) -> Result<Vec<Rule>> {
    let db = state.rules_db();
    if !db.exists() {
        return Ok(Vec::new());
    }
    Ok(RulesDb::open(&db)?.list()?)
}

/// The directory a rule starts at (a fixed file: the file).
fn base(rule: &Rule) -> &[u8] {
    let p = rule.spec.pattern.prefix();
    if rule.spec.pattern.kind() == PatternKind::File {
        p
    } else {
        p.strip_suffix(b"/").unwrap_or(p)
    }
}

/// The one site the local rules that select something at or under `path` mirror to.
fn site_for(rules: &[Rule], path: &[u8], state: &StateDir) -> Result<String> {
    let sites: BTreeSet<String> = rules
        .iter()
        .filter(|r| is_under(path, base(r)) || is_under(base(r), path))
        .flat_map(|r| r.spec.sites.iter().map(Site::to_string))
        .collect();
    match sites.len() {
        0 => bail!(
            "no rule in {} selects anything at or under {}; name the backup host with --site HOST:PORT",
            state.rules_db().display(),
            shown(path)
        ),
        1 => Ok(sites.into_iter().next().expect("one site")),
        _ => bail!(
            "{} is mirrored to several sites ({}); choose one with --site",
            shown(path),
            sites.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Makes sure `to` is an empty (or, with `overwrite`, any) directory, creating it if missing;
/// its absolute path, and the directories made here (deepest first).
fn prepare(to: &Path, overwrite: bool) -> Result<(PathBuf, Vec<PathBuf>)> {
    let mut created = Vec::new();
    match std::fs::symlink_metadata(to) {
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a directory", to.display()),
        Ok(_) => {
            let mut rd = std::fs::read_dir(to).with_context(|| format!("{}", to.display()))?;
            if !overwrite && rd.next().is_some() {
                bail!(
                    "{} is not empty: restore into an empty or new directory, or add --overwrite to replace what has the same names there",
                    to.display()
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The directories made here, deepest first (removed again if the restore fails).
            created = to
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
                .map(Path::to_path_buf)
                .collect();
            std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("{}", to.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("{}", to.display())),
    }
    let dir = to
        .canonicalize()
        .with_context(|| format!("{}", to.display()))?;
    Ok((dir, created))
}

#[derive(Default)]
struct Totals {
    names: u64,
    files: u64,
    bytes: u64,
    skipped: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.names += o.names;
        self.files += o.files;
        self.bytes += o.bytes;
        self.skipped += o.skipped;
    }
}

/// Progress on stderr: a line rewritten in place on a terminal, plain lines every few seconds
/// otherwise.
struct Progress {
    tty: bool,
    what: String,
    names: (u64, u64),
    bytes: (u64, u64),
    last: Instant,
    started: Instant,
}

impl Progress {
    fn new(site: &str, path: &[u8]) -> Progress {
        Progress {
            tty: io::stderr().is_terminal(),
            what: format!("restore {} from {site}", shown(path)),
            names: (0, 0),
            bytes: (0, 0),
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    fn total(&mut self, names: u64, bytes: u64) {
        self.names.1 = names;
        self.bytes.1 = bytes;
        if !self.tty {
            eprintln!("{}: {names} names, {}", self.what, human(bytes));
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "{}: {}/{} names, {}/{} ({}/s)",
            self.what,
            self.names.0,
            self.names.1,
            human(self.bytes.0),
            human(self.bytes.1),
            human((self.bytes.0 as f64 / secs) as u64)
        )
    }

    fn tick(&mut self) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        if self.tty {
            eprint!("\r\x1b[K{}", self.line());
            let _ = io::stderr().flush();
        } else {
            eprintln!("{}", self.line());
        }
    }

    /// The last progress line: `done` only when the restore of this path `ended` well (the
    /// error follows otherwise).
    fn finish(&mut self, ended: bool) {
        let how = if ended { "done" } else { "stopped" };
        if self.tty {
            eprintln!("\r\x1b[K{}, {how}", self.line());
        } else {
            eprintln!("{}, {how}", self.line());
        }
    }
}

/// The file being written.
struct Current {
    name: Vec<u8>,
    place: Place,
    file: File,
    item: RestoreItem,
}

/// A directory restored, waiting for its attributes until the router moves past it.
struct OpenDir {
    name: Vec<u8>,
    rel: PathBuf,
    item: RestoreItem,
}

/// One request's answer written beneath DIR.
struct Writer<'a> {
    dest: &'a Root,
    dir: &'a Path,
    anchor: &'a [u8],
    site: &'a str,
    path: &'a [u8],
    current: Option<Current>,
    dirs: Vec<OpenDir>,
    progress: Progress,
    totals: Totals,
}

impl Writer<'_> {
    fn run(&mut self, s: &mut Session) -> Result<()> {
        s.send(&Msg::Restore {
            path: self.path.to_vec(),
        })?;
        let res = self.receive(s);
        // A file left half-written by a failure goes.
        if let Some(c) = self.current.take() {
            if res.is_err() {
                let _ = std::fs::remove_file(c.place.path());
            }
        }
        res
    }

    fn receive(&mut self, s: &mut Session) -> Result<()> {
        loop {
            match s.recv()? {
                Msg::Heartbeat => {}
                Msg::RestoreTotal { files, bytes } => self.progress.total(files, bytes),
                Msg::RestoreItem { item } => {
                    self.finish_file()?;
                    self.item(item)?;
                    self.progress.names.0 += 1;
                    self.progress.tick();
                }
                Msg::RestoreData { offset, data } => {
                    let Some(c) = &self.current else {
                        bail!("site {}: data without a file", self.site);
                    };
                    let end = offset.checked_add(data.len() as u64);
                    if end.is_none_or(|e| e > c.item.size) {
                        bail!(
                            "site {}: data past the end of {} ({} bytes)",
                            self.site,
                            shown(&c.name),
                            c.item.size
                        );
                    }
                    c.file
                        .write_all_at(&data, offset)
                        .with_context(|| format!("write {}", self.shown_place(&c.place)))?;
                    self.totals.bytes += data.len() as u64;
                    self.progress.bytes.0 += data.len() as u64;
                    self.progress.tick();
                }
                Msg::RestoreSkipped { name, reason } => {
                    if self.current.as_ref().is_some_and(|c| c.name == name) {
                        if let Some(c) = self.current.take() {
                            let _ = std::fs::remove_file(c.place.path());
                            self.totals.files -= 1;
                            self.totals.names -= 1;
                        }
                    }
                    eprintln!(
                        "{}restore: {} on site {}: {reason}",
                        if self.progress.tty { "\r\x1b[K" } else { "" },
                        shown(&name),
                        self.site
                    );
                    self.totals.skipped += 1;
                }
                Msg::RestoreDone { .. } => {
                    self.finish_file()?;
                    while let Some(d) = self.dirs.pop() {
                        self.finish_dir(d)?;
                    }
                    return Ok(());
                }
                Msg::Error { reason } => bail!(
                    "site {} refused the restore of {}: {reason}",
                    self.site,
                    shown(self.path)
                ),
                other => bail!(
                    "site {} sent {} during the restore of {}",
                    self.site,
                    other.kind(),
                    shown(self.path)
                ),
            }
        }
    }

    fn shown_place(&self, p: &Place) -> String {
        p.shown().display().to_string()
    }

    /// Where `item` goes beneath DIR; refuses a name outside the path asked for.
    fn rel_of(&self, item: &RestoreItem) -> Result<PathBuf> {
        let name = &item.name;
        if !valid_path(name, MAX_NAME_LEN) || !is_under(name, self.path) {
            bail!(
                "site {} sent the name {:?}, which is not beneath {}; the restore stops",
                self.site,
                shown(name),
                shown(self.path)
            );
        }
        let rest: &[u8] = if self.anchor == b"/" {
            &name[1..]
        } else if name == self.anchor {
            if item.kind == RestoreKind::Dir {
                b""
            } else {
                // A single file asked for lands in DIR under its name.
                name.rsplit(|&b| b == b'/').next().unwrap_or(name)
            }
        } else {
            &name[self.anchor.len() + 1..]
        };
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(rest)))
    }

    fn item(&mut self, item: RestoreItem) -> Result<()> {
        let rel = self.rel_of(&item)?;
        // The directories the router moved past are complete.
        while self
            .dirs
            .last()
            .is_some_and(|d| !is_under(&item.name, &d.name))
        {
            let d = self.dirs.pop().expect("a directory");
            self.finish_dir(d)?;
        }
        self.totals.names += 1;
        if rel.as_os_str().is_empty() {
            // DIR itself: it exists; its attributes come at the end.
            self.dirs.push(OpenDir {
                name: item.name.clone(),
                rel,
                item,
            });
            return Ok(());
        }
        let place = self
            .dest
            .place(&rel, true)
            .with_context(|| format!("{}", self.dir.join(&rel).display()))?;
        let at = self.shown_place(&place);
        let existing = std::fs::symlink_metadata(place.path()).ok();
        let same_kind = existing.as_ref().is_some_and(|m| match item.kind {
            RestoreKind::Dir => m.is_dir(),
            RestoreKind::File => m.is_file(),
            _ => false,
        });
        if existing.is_some() && !same_kind {
            // Something else by this name (from an earlier rule of this restore, or in a
            // DIR restored into with --overwrite) is replaced.
            let p = place.path();
            let gone = if existing.as_ref().is_some_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            gone.with_context(|| format!("replace {at}"))?;
        }
        match item.kind {
            RestoreKind::Dir => {
                if !same_kind {
                    place.mkdir(0o700).with_context(|| format!("mkdir {at}"))?;
                }
                self.dirs.push(OpenDir {
                    name: item.name.clone(),
                    rel,
                    item,
                });
            }
            RestoreKind::File => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(place.path())
                    .with_context(|| format!("create {at}"))?;
                self.totals.files += 1;
                self.current = Some(Current {
                    name: item.name.clone(),
                    place,
                    file,
                    item,
                });
            }
            RestoreKind::Symlink => {
                let target = cstring(&item.target)?;
                let link = cstring(place.path().as_os_str().as_bytes())?;
                // SAFETY: both are NUL-terminated.
                if unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } != 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("symlink {at}"));
                }
                self.attrs_at(&place, &item, &at)?;
            }
            RestoreKind::Link => {
                // Another name of a file restored earlier in this answer.
                let first = RestoreItem {
                    name: item.target.clone(),
                    kind: RestoreKind::File,
                    mode: 0,
                    size: 0,
                    target: Vec::new(),
                    attrs: None,
                };
                let from = self.rel_of(&first)?;
                let linked = self
                    .dest
                    .place(&from, false)
                    .and_then(|f| f.link_to(&place));
                if let Err(e) = linked {
                    eprintln!(
                        "restore: {} on site {}: cannot be linked to {}: {e}",
                        shown(&item.name),
                        self.site,
                        shown(&item.target)
                    );
                    self.totals.skipped += 1;
                }
            }
            RestoreKind::Fifo => {
                let p = cstring(place.path().as_os_str().as_bytes())?;
                // SAFETY: p is NUL-terminated.
                if unsafe { libc::mkfifo(p.as_ptr(), 0o600) } != 0 {
                    return Err(io::Error::last_os_error()).with_context(|| format!("mkfifo {at}"));
                }
                self.attrs_at(&place, &item, &at)?;
            }
        }
        Ok(())
    }

    /// Gives the file being written its size and attributes.
    fn finish_file(&mut self) -> Result<()> {
        let Some(c) = self.current.take() else {
            return Ok(());
        };
        let at = self.shown_place(&c.place);
        c.file
            .set_len(c.item.size)
            .with_context(|| format!("truncate {at}"))?;
        self.attrs_at(&c.place, &c.item, &at)
    }

    fn finish_dir(&mut self, d: OpenDir) -> Result<()> {
        if d.rel.as_os_str().is_empty() {
            // DIR itself, by its path (the user's own directory).
            let at = self.dir.display().to_string();
            let p = self.dir.to_path_buf();
            return set_attrs_path(&p, &d.item, &at);
        }
        let place = self
            .dest
            .place(&d.rel, false)
            .with_context(|| format!("{}", self.dir.join(&d.rel).display()))?;
        let at = self.shown_place(&place);
        self.attrs_at(&place, &d.item, &at)
    }

    /// Owner, mode, xattrs and times of what is at `place` (mode only without attributes).
    fn attrs_at(&self, place: &Place, item: &RestoreItem, at: &str) -> Result<()> {
        if let Some(a) = &item.attrs {
            if let Err(e) = place.lchown(a.uid, a.gid) {
                if e.raw_os_error() != Some(libc::EPERM) {
                    return Err(e).with_context(|| format!("chown {at}"));
                }
            }
        }
        // After the owner: chown clears set-id bits.
        place
            .chmod(mode_of(item))
            .with_context(|| format!("chmod {at}"))?;
        if let Some(a) = &item.attrs {
            set_xattrs(&place.path(), a, at);
            place
                .set_times(&times(a))
                .with_context(|| format!("set times of {at}"))?;
        }
        Ok(())
    }
}

/// The mode to give what `item` describes: set-id and sticky bits only with the attributes
/// of an `--attrs` rule (the router sends none otherwise; a router that does is not obeyed).
fn mode_of(item: &RestoreItem) -> u32 {
    item.mode & if item.attrs.is_some() { 0o7777 } else { 0o777 }
}

fn times(a: &RestoreAttrs) -> [libc::timespec; 2] {
    let ts = |(sec, nsec): (i64, u32)| libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec.min(999_999_999) as i64,
    };
    [ts(a.atime), ts(a.mtime)]
}

/// DIR's own attributes (a directory the user gave, reached by its path).
fn set_attrs_path(p: &Path, item: &RestoreItem, at: &str) -> Result<()> {
    let c = cstring(p.as_os_str().as_bytes())?;
    if let Some(a) = &item.attrs {
        // SAFETY: c is NUL-terminated.
        if unsafe { libc::lchown(c.as_ptr(), a.uid, a.gid) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(e).with_context(|| format!("chown {at}"));
            }
        }
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode_of(item)))
        .with_context(|| format!("chmod {at}"))?;
    if let Some(a) = &item.attrs {
        set_xattrs(p, a, at);
        let t = times(a);
        // SAFETY: c is NUL-terminated; t points at two timespecs.
        if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("set times of {at}"));
        }
    }
    Ok(())
}

/// Sets the xattrs of `p` (not following a symlink); one that cannot be set (a file system
/// without them, a namespace this user may not write) is reported and passed over.
fn set_xattrs(p: &Path, a: &RestoreAttrs, at: &str) {
    let Ok(c) = cstring(p.as_os_str().as_bytes()) else {
        return;
    };
    for x in &a.xattrs {
        let Ok(n) = cstring(&x.name) else {
            continue;
        };
        // SAFETY: both are NUL-terminated; value points at value.len() bytes.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                x.value.as_ptr().cast(),
                x.value.len(),
                0,
            )
        };
        if rc != 0 {
            eprintln!(
                "restore: xattr {} of {at} not set: {}",
                String::from_utf8_lossy(&x.name),
                io::Error::last_os_error()
            );
        }
    }
}

fn cstring(b: &[u8]) -> Result<std::ffi::CString> {
    std::ffi::CString::new(b).map_err(|_| anyhow!("a name with a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &[u8], kind: RestoreKind, target: &[u8]) -> RestoreItem {
        RestoreItem {
            name: name.to_vec(),
            kind,
            mode: 0o644,
            size: 0,
            target: target.to_vec(),
            attrs: None,
        }
    }

    fn writer<'a>(dest: &'a Root, dir: &'a Path) -> Writer<'a> {
        Writer {
            dest,
            dir,
            anchor: b"/p/a",
            site: "s:1",
            path: b"/p/a",
            current: None,
            dirs: Vec::new(),
            progress: Progress::new("s:1", b"/p/a"),
            totals: Totals::default(),
        }
    }

    #[test]
    fn names_outside_the_path_asked_for_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dest = Root::open(d.path()).unwrap();
        let w = writer(&dest, d.path());
        let rel = |n: &[u8], k| w.rel_of(&item(n, k, b""));
        assert_eq!(
            rel(b"/p/a/x/y", RestoreKind::File).unwrap(),
            Path::new("x/y")
        );
        assert_eq!(rel(b"/p/a", RestoreKind::Dir).unwrap(), Path::new(""));
        assert_eq!(rel(b"/p/a", RestoreKind::File).unwrap(), Path::new("a"));
        // Set-id bits only with an --attrs rule's attributes.
        let mut setuid = item(b"/p/a/x", RestoreKind::File, b"");
        setuid.mode = 0o4755;
        assert_eq!(mode_of(&setuid), 0o755);
        for bad in [
            &b"/p/b"[..],
            b"/p/a/../b",
            b"/p/ab",
            b"p/a/x",
            b"/p/a//x",
            b"/p/a/.",
        ] {
            assert!(rel(bad, RestoreKind::File).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_restored_symlink_never_redirects_a_later_name() {
        let d = tempfile::tempdir().unwrap();
        let (inside, outside) = (d.path().join("dir"), d.path().join("outside"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let dest = Root::open(&inside).unwrap();
        let mut w = writer(&dest, &inside);
        let out = outside.as_os_str().as_bytes();
        w.item(item(b"/p/a/x", RestoreKind::Symlink, out)).unwrap();
        let e = w
            .item(item(b"/p/a/x/planted", RestoreKind::File, b""))
            .unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn paths_are_normalised_and_dotdot_refused() {
        assert_eq!(normalise(Path::new("/a/./b/")).unwrap(), b"/a/b");
        assert_eq!(normalise(Path::new("/")).unwrap(), b"/");
        let e = normalise(Path::new("/a/../etc")).unwrap_err().to_string();
        assert!(e.contains("'..'"), "{e}");
    }
}
