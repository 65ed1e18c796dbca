//! Directory streams: opendir, readdir, readdirplus, releasedir, fsyncdir.
//!
//! A directory's entries are read in one go when the stream starts (or is rewound to offset 0)
//! and served from memory; the offset of an entry is its index plus one. The kernel keeps
//! what it read (`FOPEN_CACHE_DIR`) and lists the directory again from its cache until the
//! directory changes through the mount.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::FsResult;
use super::inodes::{lock, ROOT};
use super::sys::{self, DirEntry};
use super::{DirHandle, DirListEntry, EntryOut, MirrorFs};

/// A directory's entries from some offset, each with the offset of the next.
type Listing = Vec<(u64, DirEntry)>;

fn dt_kind(dt: u8) -> fuser::FileType {
    use fuser::FileType::*;
    match dt {
        libc::DT_DIR => Directory,
        libc::DT_LNK => Symlink,
        libc::DT_FIFO => NamedPipe,
        libc::DT_CHR => CharDevice,
        libc::DT_BLK => BlockDevice,
        libc::DT_SOCK => Socket,
        _ => RegularFile,
    }
}

/// `t` in nanoseconds since the epoch (0 before it).
fn nanos(t: crate::entry::Timestamp) -> u64 {
    u64::try_from(t.sec).map_or(0, |s| s * 1_000_000_000 + u64::from(t.nsec))
}

fn is_dot(e: &DirEntry) -> bool {
    matches!(e.name.as_bytes(), b"." | b"..")
}

impl MirrorFs {
    /// Directory `ino` underneath, opened for reading (under the namespace lock).
    fn open_dir(&self, ino: u64) -> FsResult<std::fs::File> {
        let path = self.inodes.path(ino)?;
        Ok(sys::open_at(
            self.dir(),
            &path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?)
    }

    /// Opens directory `ino`; its handle, and whether the kernel may keep the listing
    /// (names change only through this mount: [`MirrorFs::serves_alone`]).
    pub fn opendir(&self, ino: u64) -> FsResult<(u64, bool)> {
        self.check_remount();
        let _ns = self.ns_read();
        let file = self.open_dir(ino)?;
        // The kernel lists from its cache only what mirrorfs listed since the directory last
        // changed; a listing it must ask for reads the directory underneath anyway.
        let st = sys::fstat(file.as_fd())?;
        let alone = self.serves_alone();
        let cached = alone
            && self
                .inodes
                .get(ino)
                .is_ok_and(|n| n.listed.load(Ordering::Relaxed) == nanos(st.mtime));
        if cached && self.read_updates_atime(&st) {
            self.touch_dir_atime(ino, &file);
        }
        let fh = self.dirs.insert(DirHandle {
            ino,
            file,
            entries: std::sync::Mutex::new(Vec::new()),
        });
        Ok((fh, alone))
    }

    /// The entries of directory `ino` from `offset` on, through stream `fh` (re-read at
    /// offset 0), or without one (`fh` 0: the kernel opened the directory without asking,
    /// [`MirrorFs::opendir_unneeded`]).
    fn dir_entries(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Listing> {
        let list = |entries: &[DirEntry]| -> Listing {
            entries
                .iter()
                .enumerate()
                .skip(offset as usize)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()
        };
        if fh == 0 {
            return Ok(list(&self.unopened_listing(ino, offset)?));
        }
        let d = self.dirs.get(fh)?;
        let mut entries = lock(&d.entries);
        if offset == 0 {
            *entries = sys::read_dir_all(d.file.as_fd())?;
            if let (Ok(st), Ok(node)) = (sys::fstat(d.file.as_fd()), self.inodes.get(d.ino)) {
                node.listed.store(nanos(st.mtime), Ordering::Relaxed);
            }
        }
        Ok(list(&entries))
    }

    /// The listing of directory `ino` without a stream: read afresh at offset 0 (or when it
    /// is no longer kept), kept for the reads of the rest.
    fn unopened_listing(&self, ino: u64, offset: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        /// Listings kept: one per directory being read at once is enough.
        const KEPT: usize = 16;
        let mut kept = lock(&self.unopened);
        if offset > 0 {
            if let Some((_, l)) = kept.iter().find(|(i, _)| *i == ino) {
                return Ok(l.clone());
            }
        }
        drop(kept);
        let fresh = {
            let _ns = self.ns_read();
            Arc::new(sys::read_dir_all(self.open_dir(ino)?.as_fd())?)
        };
        kept = lock(&self.unopened);
        kept.retain(|(i, _)| *i != ino);
        kept.insert(0, (ino, fresh.clone()));
        kept.truncate(KEPT);
        Ok(fresh)
    }

    fn dot_ino(&self, dir: u64, e: &DirEntry) -> u64 {
        match e.name.as_bytes() {
            b"." => dir,
            _ if dir == ROOT => ROOT,
            _ => self
                .inodes
                .get(dir)
                .ok()
                .and_then(|n| n.links().first().map(|(p, _)| *p))
                .unwrap_or(ROOT),
        }
    }

    /// `readdir`: names from `offset`, for the kernel to fill its buffer with.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<DirListEntry>> {
        let entries = self.dir_entries(ino, fh, offset)?;
        Ok(entries
            .into_iter()
            .map(|(next, e)| DirListEntry {
                ino: if is_dot(&e) {
                    self.dot_ino(ino, &e)
                } else {
                    e.ino
                },
                next,
                kind: dt_kind(e.kind),
                name: e.name,
            })
            .collect())
    }

    /// `readdirplus`: names with attributes from `offset`. `fit` adds one entry to the reply
    /// and says whether it fitted; only entries that fitted count as lookups.
    pub fn readdirplus(
        &self,
        dir: u64,
        fh: u64,
        offset: u64,
        mut fit: impl FnMut(&DirListEntry, Option<&EntryOut>) -> bool,
    ) -> FsResult<()> {
        let entries = self.dir_entries(dir, fh, offset)?;
        let _ns = self.ns_read();
        let dir_path = self.inodes.path(dir)?;
        for (next, e) in entries {
            let item = DirListEntry {
                ino: e.ino,
                next,
                kind: dt_kind(e.kind),
                name: e.name.clone(),
            };
            if is_dot(&e) {
                // The kernel takes no lookup for these; it needs only the name.
                let item = DirListEntry {
                    ino: self.dot_ino(dir, &e),
                    ..item
                };
                if !fit(&item, None) {
                    break;
                }
                continue;
            }
            let mut rel = dir_path.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(e.name.as_bytes());
            let st = match sys::stat_at(self.dir(), &rel) {
                Ok(st) => st,
                // Gone since the listing was read: leave it out.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(err) => return Err(err.into()),
            };
            let out = self.entry(dir, &e.name, &st);
            let ino = out.attr.ino.0;
            if !fit(&DirListEntry { ino, ..item }, Some(&out)) {
                // Not sent: take the lookup back.
                self.inodes.forget(ino, 1);
                break;
            }
        }
        Ok(())
    }

    /// Closes directory stream `fh`.
    pub fn releasedir(&self, fh: u64) -> FsResult<()> {
        self.dirs.remove(fh).map(drop)
    }

    /// `fsync` of a directory: its entries, and the journal (namespace entries become durable).
    /// `fh` 0: the kernel opened the directory without asking.
    ///
    /// A durability point of the names it holds: it waits for the sites of the sync rules
    /// that may select names in it ([`crate::syncwait`]).
    pub fn fsyncdir(&self, ino: u64, fh: u64, datasync: bool) -> FsResult<()> {
        if let Ok(p) = self.inodes.path(ino) {
            let dir = self.rec.full_name(&p);
            let table = self.rec.table();
            let rules: Vec<_> = table
                .rules()
                .iter()
                .filter(|r| crate::syncwait::holds_names(r, &dir))
                .cloned()
                .collect();
            self.rec.durability_point(&rules);
        }
        if fh == 0 {
            let file = {
                let _ns = self.ns_read();
                self.open_dir(ino)?
            };
            sys::fsync(file.as_fd(), datasync)?;
        } else {
            sys::fsync(self.dirs.get(fh)?.file.as_fd(), datasync)?;
        }
        self.rec.sync()
    }
}
