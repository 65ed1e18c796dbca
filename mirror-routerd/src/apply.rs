//! The router process (seeds/002 [0062]-[0064]): applies RT1 entries to the backup files.
//!
//! The oldest pair is read first; each pending record is applied, then marked complete in
//! place. A pair that is complete and no longer written is removed. Entries of one source are
//! applied in journal order (they are in RT1 in that order); an entry is marked complete only
//! after it was applied.
//!
//! Re-applying the last entry after a crash (applied, flag not yet written) is harmless:
//! writes, truncates, creates, attribute changes are idempotent; deletes, renames and links
//! whose source is gone are skipped.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mirrorfs::entry::{AttrChange, Command};

use crate::backup::{backup_rel, OpenFiles};
use crate::config::{RouterRule, RouterTable};
use crate::rtlog::{list_pairs, RtPair, RtRecord, HEADER_LEN};

/// What happened to an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Done,
    /// Nothing to do (no rule any more, attributes not mirrored, source already gone).
    Skipped(String),
    /// The backup lacks the file the entry builds on: the source must send `name` whole.
    NeedCopy {
        /// Rule CRC.
        rule_crc: u32,
        /// Full source name to copy.
        name: Vec<u8>,
    },
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
    root: PathBuf,
    open: OpenFiles,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
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

fn make_parent(p: &Path) -> io::Result<()> {
    match p.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fs::create_dir_all(parent),
        _ => Ok(()),
    }
}

impl Applier {
    /// An applier writing under `root`, keeping at most `max_open` backup files open.
    pub fn new(root: &Path, max_open: usize) -> Applier {
        Applier {
            root: root.to_path_buf(),
            open: OpenFiles::new(max_open),
        }
    }

    /// The backup files `r` touches, relative to the root: its own and, for a rename or a
    /// link, the new name (none when no rule maps it).
    pub fn targets(&self, table: &RouterTable, r: &RtRecord) -> Vec<String> {
        let Some(rule) = table.get(&r.site, r.rule_crc) else {
            return Vec::new();
        };
        let mut names = vec![&r.name];
        if matches!(r.command, Command::Rename | Command::Link) {
            names.push(&r.aux);
        }
        names
            .into_iter()
            .filter_map(|n| backup_rel(rule, n).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
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
            Err(e) => return Ok(Outcome::Skipped(format!("refused: {e}"))),
        };
        let path = self.root.join(rel);
        let fail = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |err| ApplyError { op, path: p, err }
        };
        match r.command {
            Command::Write => {
                let f = self.file(&path).map_err(fail("open", &path))?;
                crate::direct::write_at(f, data, r.offset).map_err(fail("write", &path))?;
            }
            Command::Truncate => {
                let f = self.file(&path).map_err(fail("open", &path))?;
                f.set_len(r.size).map_err(fail("truncate", &path))?;
            }
            Command::Zero => {
                let f = self.file(&path).map_err(fail("open", &path))?;
                zero_range(f, r.offset, r.size).map_err(fail("zero", &path))?;
            }
            Command::Create => {
                self.open.clear();
                let mode = if rule.attrs {
                    r.offset as u32 & 0o7777
                } else {
                    0o644
                };
                create_file(&path, mode).map_err(fail("create", &path))?;
            }
            Command::Delete => {
                self.open.clear();
                match &rule.delete_suffix {
                    Some(suf) => {
                        let mut to = path.clone().into_os_string();
                        to.push(suf);
                        let to = PathBuf::from(to);
                        match fs::symlink_metadata(&path) {
                            Ok(_) => {
                                remove_any(&to).map_err(fail("delete", &to))?;
                                fs::rename(&path, &to).map_err(fail("rename", &path))?;
                            }
                            Err(e) if not_found(&e) => {}
                            Err(e) => return Err(fail("delete", &path)(e)),
                        }
                    }
                    None => remove_any(&path).map_err(fail("delete", &path))?,
                }
            }
            Command::Rename | Command::Link => {
                self.open.clear();
                let to = self.root.join(match backup_rel(rule, &r.aux) {
                    Ok(p) => p,
                    Err(e) => return Ok(Outcome::Skipped(format!("refused: {e}"))),
                });
                let link = r.command == Command::Link;
                return self.rename_or_link(rule, r, &path, &to, link);
            }
            Command::Mkdir => {
                self.open.clear();
                if let Ok(m) = fs::symlink_metadata(&path) {
                    if !m.is_dir() {
                        fs::remove_file(&path).map_err(fail("mkdir", &path))?;
                    }
                }
                fs::create_dir_all(&path).map_err(fail("mkdir", &path))?;
                if rule.attrs {
                    fs::set_permissions(
                        &path,
                        fs::Permissions::from_mode(r.offset as u32 & 0o7777),
                    )
                    .map_err(fail("chmod", &path))?;
                }
            }
            Command::Rmdir => {
                self.open.clear();
                match fs::remove_dir(&path) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) if errno_is(&e, libc::ENOTEMPTY) => {
                        if rule.delete_suffix.is_some() {
                            return Ok(Outcome::Skipped(format!(
                                "{} keeps deleted files; left in place",
                                path.display()
                            )));
                        }
                        fs::remove_dir_all(&path).map_err(fail("rmdir", &path))?;
                    }
                    Err(e) => return Err(fail("rmdir", &path)(e)),
                }
            }
            Command::Symlink => {
                self.open.clear();
                remove_any(&path).map_err(fail("symlink", &path))?;
                make_parent(&path).map_err(fail("mkdir", &path))?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&r.aux), &path)
                    .map_err(fail("symlink", &path))?;
            }
            Command::Mknod => {
                self.open.clear();
                let mode = r.offset as u32;
                if mode & libc::S_IFMT != libc::S_IFIFO {
                    return Ok(Outcome::Skipped(format!(
                        "{}: only fifos are mirrored",
                        path.display()
                    )));
                }
                remove_any(&path).map_err(fail("mknod", &path))?;
                make_parent(&path).map_err(fail("mkdir", &path))?;
                let c = cpath(&path).map_err(fail("mknod", &path))?;
                let perm = if rule.attrs { mode & 0o7777 } else { 0o644 };
                // SAFETY: c is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), perm) } != 0 {
                    return Err(fail("mkfifo", &path)(io::Error::last_os_error()));
                }
            }
            Command::SetAttr => {
                if !rule.attrs {
                    return Ok(Outcome::Skipped("attributes are not mirrored".into()));
                }
                let Some(change) = AttrChange::decode(data) else {
                    return Ok(Outcome::Skipped("malformed attribute change".into()));
                };
                match set_attrs(&path, &change) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => return Ok(Outcome::Skipped("gone".into())),
                    Err(e) => return Err(fail("setattr", &path)(e)),
                }
            }
            Command::SetXattr | Command::RemoveXattr => {
                if !rule.attrs {
                    return Ok(Outcome::Skipped("attributes are not mirrored".into()));
                }
                match xattr(
                    &path,
                    &r.aux,
                    (r.command == Command::SetXattr).then_some(data),
                ) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) || errno_is(&e, libc::ENODATA) => {}
                    Err(e) => return Err(fail("xattr", &path)(e)),
                }
            }
            Command::Copy => {
                return Ok(Outcome::Skipped(
                    "copy entries are expanded by the sender".into(),
                ))
            }
        }
        Ok(Outcome::Done)
    }

    fn rename_or_link(
        &mut self,
        rule: &RouterRule,
        r: &RtRecord,
        from: &Path,
        to: &Path,
        link: bool,
    ) -> Result<Outcome, ApplyError> {
        let fail = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |err| ApplyError { op, path: p, err }
        };
        if fs::symlink_metadata(from).is_err() {
            // The backup never got the source: ask for the result instead.
            return Ok(Outcome::NeedCopy {
                rule_crc: rule.crc,
                name: r.aux.clone(),
            });
        }
        make_parent(to).map_err(fail("mkdir", to))?;
        if link {
            remove_any(to).map_err(fail("link", to))?;
            fs::hard_link(from, to).map_err(fail("link", to))?;
            return Ok(Outcome::Done);
        }
        let flags = r.offset as u32;
        let (a, b) = (
            cpath(from).map_err(fail("rename", from))?,
            cpath(to).map_err(fail("rename", to))?,
        );
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if exchange && fs::symlink_metadata(to).is_err() {
            return Ok(Outcome::NeedCopy {
                rule_crc: rule.crc,
                name: r.name.clone(),
            });
        }
        let f = if exchange { libc::RENAME_EXCHANGE } else { 0 };
        // SAFETY: both are valid NUL-terminated paths; AT_FDCWD with absolute paths.
        let rc =
            unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), f) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if errno_is(&e, libc::ENOTEMPTY) || errno_is(&e, libc::EISDIR) {
                // A stale tree at the target (the source had none there): replace it.
                remove_any(to).map_err(fail("rename", to))?;
                fs::rename(from, to).map_err(fail("rename", from))?;
            } else {
                return Err(fail("rename", from)(e));
            }
        }
        Ok(Outcome::Done)
    }

    fn file(&mut self, path: &Path) -> io::Result<&File> {
        self.open.get(path, || open_for_write(path))
    }
}

fn open_for_write(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if not_found(&e) => {
            make_parent(path)?;
            open()
        }
        r => r,
    }
}

fn create_file(path: &Path, mode: u32) -> io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(path) {
        if !m.is_file() {
            remove_any(path)?;
        }
    }
    make_parent(path)?;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
}

fn zero_range(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
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

fn set_attrs(path: &Path, a: &AttrChange) -> io::Result<()> {
    let c = cpath(path)?;
    let meta = fs::symlink_metadata(path)?;
    if let Some(mode) = a.mode {
        if !meta.file_type().is_symlink() {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
    }
    if a.uid.is_some() || a.gid.is_some() {
        let uid = a.uid.unwrap_or(u32::MAX);
        let gid = a.gid.unwrap_or(u32::MAX);
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
            let e = io::Error::last_os_error();
            if !errno_is(&e, libc::EPERM) {
                return Err(e);
            }
            log::debug!("{}: ownership not permitted", path.display());
        }
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
        let times = [ts(a.atime), ts(a.mtime)];
        // SAFETY: c is valid; times points at two timespecs.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
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
}

/// The router process: applies every pending entry of the RT logs, oldest pair first, for
/// as long as the router runs. Entries of a backup file that cannot be written are held back
/// (the file is blocked) while every other file keeps flowing; they are retried, in order,
/// on `mirror-ctl router unblock` and every `unblock_every`.
pub fn run(router: Arc<crate::shared::Router>) {
    let dir = router.rt_dir();
    let mut st = State {
        applier: Applier::new(&router.cfg.root, router.cfg.max_open),
        pairs: BTreeMap::new(),
        ahead: crate::direct::ReadAhead::default(),
    };
    let mut backoff = Duration::from_millis(100);
    let mut last_unblock = std::time::Instant::now();
    loop {
        if router.any_blocked() && last_unblock.elapsed() >= router.cfg.unblock_every {
            log::info!("periodic unblock (every {:?})", router.cfg.unblock_every);
            router.unblock_files(None);
        }
        if router.take_retry() {
            last_unblock = std::time::Instant::now();
            for pc in st.pairs.values_mut() {
                if let Some(h) = pc.held_from.take() {
                    pc.cursor = pc.cursor.min(h);
                }
            }
        }
        let published = router.published();
        match apply_some(&router, &dir, &mut st, published) {
            Ok(true) => backoff = Duration::from_millis(100),
            Ok(false) => router.wait_published(published, Duration::from_millis(500)),
            Err(e) => {
                log::error!("{e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One pass over every pair, oldest first; whether anything moved.
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
        let pc = match st.pairs.entry(n) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(PairCursor {
                pair: RtPair::open(dir, n).map_err(|e| e.to_string())?,
                cursor: HEADER_LEN,
                held_from: None,
            }),
        };
        let end = if n == wpair {
            wend
        } else {
            pc.pair.rt1_len().map_err(|e| e.to_string())?
        };
        if pc.cursor < end {
            let records = pc.pair.records(pc.cursor, end).map_err(|e| e.to_string())?;
            // RT2 is read ahead up to the data of these records, never into what is being
            // written.
            let limit = records
                .iter()
                .map(|(_, r)| r.rt2_offset + r.data_len)
                .max()
                .unwrap_or(0);
            let table = router.table();
            for (off, r) in records {
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
                }
                pc.cursor = off + r.len() as u64;
                moved = true;
            }
        }
        if n < wpair && pc.cursor >= end && pc.held_from.is_none() {
            // Finished and no longer written: make what was applied durable, keep what it
            // says about the sources, remove it.
            sync_fs(&router.cfg.root).map_err(|e| {
                format!(
                    "cannot flush the backup files under {}: {e}",
                    router.cfg.root.display()
                )
            })?;
            router.persist_sources().map_err(|e| e.to_string())?;
            if let Some(done) = st.pairs.remove(&n) {
                done.pair.remove(dir).map_err(|e| e.to_string())?;
            }
            moved = true;
        }
    }
    Ok(moved)
}

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
    let data = p.data(r, ahead, limit).map_err(|e| e.to_string())?;
    match applier.apply(table, r, data) {
        Ok(Outcome::Done) => {}
        Ok(Outcome::Skipped(why)) => log::debug!(
            "{} {}: skipped: {why}",
            r.command,
            String::from_utf8_lossy(&r.name)
        ),
        Ok(Outcome::NeedCopy { rule_crc, name }) => router.request_copy(&r.site, rule_crc, name),
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

/// Flushes the file system holding `root` (before the router logs of what was applied go).
fn sync_fs(root: &Path) -> io::Result<()> {
    let f = File::open(root)?;
    // SAFETY: syncfs on a descriptor owned by `f`.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
