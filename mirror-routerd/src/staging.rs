//! Copies built aside, so that a backup file is never part old and part new.
//!
//! A copy of a file (a `sync`, a rule's first copy, a dirty set, a copy the router asked
//! for) arrives as many entries: writes and zero ranges from offset 0 upwards, then the
//! file's final size (then its attributes). Applied in place, a copy cut off midway (the
//! sender stopped, the rule removed, the link down for days) left the backup file with the
//! new content's first part and the old content's rest, and a restore gave that back.
//!
//! Instead, a copy's first part for a file (its part at offset 0) starts a *staging file*
//! beneath the root, `.mirror-staging/<BLAKE3 of the backup name>`; its parts go there, and
//! its final size puts the staging file in place of the backup file with one `rename`. The
//! backup file is the whole old version until then, and the whole new one after. What the
//! source changes meanwhile (an entry of the file that is no part of a copy) is applied to
//! both, since the staging file becomes the backup file. A copy resumed after a restart of
//! the router goes on in the same staging file (its name depends on the backup name only);
//! one started again from the start begins it anew.
//!
//! A backup file with other hard links (a `Link` entry made them) is still copied in place:
//! replacing it would cut it off from its other names. The name `.mirror-staging` at the top
//! of the root is reserved ([`crate::backup::backup_rel`] refuses names under it).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::beneath::Root;

/// The directory of staging files, at the top of the root.
pub const DIR: &str = ".mirror-staging";

/// The staging files present (by key), known without a look at the disk.
#[derive(Debug, Default)]
pub struct Staging {
    present: HashSet<String>,
}

/// The staging file's name for backup name `rel`.
fn key(rel: &Path) -> String {
    blake3::hash(rel.as_os_str().as_bytes())
        .to_hex()
        .to_string()
}

/// Where the staging file of backup name `rel` is, relative to the root.
pub fn staged_rel(rel: &Path) -> PathBuf {
    Path::new(DIR).join(key(rel))
}

impl Staging {
    /// The staging files beneath `root` (left by copies not finished before a stop).
    pub fn load(root: &Root) -> io::Result<Staging> {
        let dir = root.fd_path().join(DIR);
        let mut present = HashSet::new();
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {
                for e in fs::read_dir(&dir)? {
                    if let Some(name) = e?.file_name().to_str() {
                        present.insert(name.to_string());
                    }
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Staging { present })
    }

    /// Whether a copy of backup name `rel` is being built aside.
    pub fn has(&self, rel: &Path) -> bool {
        !self.present.is_empty() && self.present.contains(&key(rel))
    }

    /// Starts (or starts again) the staging file of `rel`: empty, private.
    pub fn start(&mut self, root: &Root, rel: &Path) -> io::Result<()> {
        let place = root.place(&staged_rel(rel), true)?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(place.path())?;
        self.present.insert(key(rel));
        Ok(())
    }

    /// Puts the staging file of `rel` in place of the backup file (whatever held the name
    /// was cleared by the caller). Across file systems (a mount beneath the root), its
    /// content is copied instead.
    pub fn finish(&mut self, root: &Root, rel: &Path) -> io::Result<()> {
        let from = root.place(&staged_rel(rel), false)?;
        let to = root.place(rel, true)?;
        // Until the copy's own attributes follow (just after), the file keeps the owner and
        // mode the backup file had, rather than showing the staging file's 0600.
        if let Ok(m) = fs::symlink_metadata(to.path()) {
            if m.is_file() {
                let _ = from.lchown(m.uid(), m.gid());
                let _ = from.chmod(m.mode() & 0o7777);
            }
        }
        match from.rename_to(&to, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut src = File::open(from.path())?;
                let mut dst = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(to.path())?;
                io::copy(&mut src, &mut dst)?;
                fs::remove_file(from.path())?;
            }
            r => r?,
        }
        self.present.remove(&key(rel));
        Ok(())
    }

    /// Drops the staging file of `rel` (its file was deleted or renamed at the source).
    pub fn discard(&mut self, root: &Root, rel: &Path) -> io::Result<()> {
        if !self.has(rel) {
            return Ok(());
        }
        match root.place(&staged_rel(rel), false) {
            Ok(p) => match fs::remove_file(p.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        self.present.remove(&key(rel));
        Ok(())
    }
}

/// Whether the backup file at `rel` has other names (hard links), so that a copy must write
/// into it rather than replace it.
pub fn has_other_links(root: &Root, rel: &Path) -> io::Result<bool> {
    match root.place(rel, false) {
        Ok(p) => match fs::symlink_metadata(p.path()) {
            Ok(m) => Ok(m.is_file() && m.nlink() > 1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
