//! The mirroring filesystem, independent of FUSE: [`MirrorFs`] performs each operation on the
//! underlying directory (through the descriptor opened before mounting) and records the
//! changes to selected files in the journal before returning. `crate::fuse` adapts it to
//! fuser's `Filesystem` trait.
//!
//! Ordering: a change to a node and its journal entries happen under the node's `op_lock`, so
//! the journal order of one file's entries is the order its changes hit the disk. Renames take
//! the namespace lock exclusively; every other operation that resolves or records names takes
//! it shared, so no entry carries a name a concurrent rename has already changed.

mod dir_ops;
pub mod error;
mod file_ops;
pub mod handles;
pub mod inodes;
mod node_ops;
pub mod reconcile;
pub mod record;
pub mod sys;
pub mod unjournaled;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::FileAttr;

use crate::entry::Timestamp;
use error::FsResult;
use handles::{Handle, HandleTable};
use inodes::{file_type, lock, InodeTable};
use record::Recorder;
use sys::Stat;

pub use error::FsError;
pub use handles::IoMode;

/// Filesystem settings.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache entries and attributes. Nothing but this mount changes the
    /// directory, so long is safe.
    pub ttl: Duration,
    /// Use kernel passthrough where nothing needs recording (if the kernel offers it).
    pub passthrough: bool,
    /// Let the kernel buffer writes (`FUSE_WRITEBACK_CACHE`, if the kernel offers it): they
    /// reach mirrorfs, to be recorded, as the kernel writes them back (at fsync, close, under
    /// memory pressure, and at least every [`crate::flusher::EVERY`]).
    pub writeback_cache: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            ttl: Duration::from_secs(3600),
            passthrough: true,
            writeback_cache: true,
        }
    }
}

/// Who is asking (from the FUSE request).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

/// A name resolved to a node (lookup, create, mkdir…).
#[derive(Debug, Clone, Copy)]
pub struct EntryOut {
    /// Attributes.
    pub attr: FileAttr,
    /// Generation.
    pub generation: u64,
}

/// A new open handle.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// Handle number.
    pub fh: u64,
    /// How the kernel should do I/O on it.
    pub mode: IoMode,
}

/// An open directory.
#[derive(Debug)]
pub struct DirHandle {
    ino: u64,
    file: File,
    entries: Mutex<Vec<sys::DirEntry>>,
}

/// The filesystem.
#[derive(Debug)]
pub struct MirrorFs {
    root: OwnedFd,
    inodes: InodeTable,
    files: HandleTable<Handle>,
    dirs: HandleTable<DirHandle>,
    /// Listings read without a directory stream (the kernel's zero-message opendir: `fh` 0),
    /// kept for the reads that follow the first: the most recent few, newest first.
    unopened: Mutex<Vec<(u64, Arc<Vec<sys::DirEntry>>)>>,
    /// OPENDIR was answered ENOSYS: the kernel opens directories without asking and keeps
    /// their listings ([`MirrorFs::opendir_unneeded`]).
    no_opendir: AtomicBool,
    rec: Recorder,
    ns: RwLock<()>,
    names_gen: AtomicU64,
    cfg: FsConfig,
    /// Kernel passthrough: [`PT_OFF`], [`PT_ON`] or [`PT_FAILED`].
    passthrough: AtomicU8,
    /// The mount's VFS flags (`MS_*`: its atime options), as last seen.
    mount_flags: Arc<AtomicU64>,
    /// Follows remounts (crate::atime).
    follower: std::sync::OnceLock<Arc<crate::atime::Follower>>,
    /// Tells the kernel that attributes changed (an access time mirrorfs caused).
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// The kernel buffers writes in its page cache (it took `FUSE_WRITEBACK_CACHE` at init).
    writeback: AtomicBool,
    /// The mount covers its source directory ([`MirrorFs::serves_alone`]).
    covers_source: AtomicBool,
    /// Open writable handles of selected files whose writes the kernel may hold back
    /// (writeback on): while there are any, [`crate::flusher`] has the kernel write back.
    buffered_writers: AtomicUsize,
}

/// Free space underneath below which new openings write through mirrorfs rather than let the
/// kernel buffer: the kernel holds at most some tens of MiB of a FUSE mount's pages dirty (a
/// strict share of its dirty limit), written back in turn.
const BUFFER_ROOM: u64 = 256 << 20;

/// Passthrough was never on: handles use the kernel page cache.
const PT_OFF: u8 = 0;
/// Passthrough is on.
const PT_ON: u8 = 1;
/// Passthrough was on and then failed: new nodes use the page cache (nodes with passthrough
/// handles still open go on sharing their backing file).
const PT_FAILED: u8 = 2;

fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

impl MirrorFs {
    /// A filesystem over the directory `root` (opened before mounting over it), recording with `rec`.
    pub fn new(root: OwnedFd, rec: Recorder, cfg: FsConfig) -> FsResult<MirrorFs> {
        let st = sys::fstat(root.as_fd())?;
        if let Err(e) = sys::ofd_lock(root.as_fd(), libc::F_OFD_SETLK, libc::F_RDLCK) {
            log::warn!("cannot mark the directory as served by this mirrorfs ({e}): another mirrorfs of it would not be noticed");
        }
        Ok(MirrorFs {
            inodes: InodeTable::new(&st),
            root,
            files: HandleTable::new(),
            dirs: HandleTable::new(),
            unopened: Mutex::new(Vec::new()),
            no_opendir: AtomicBool::new(false),
            rec,
            ns: RwLock::new(()),
            names_gen: AtomicU64::new(0),
            cfg,
            passthrough: AtomicU8::new(PT_OFF),
            mount_flags: Arc::new(AtomicU64::new(0)),
            follower: std::sync::OnceLock::new(),
            notifier: std::sync::OnceLock::new(),
            writeback: AtomicBool::new(false),
            covers_source: AtomicBool::new(false),
            buffered_writers: AtomicUsize::new(0),
        })
    }

    /// The mount covers its source directory (mounted over it): nothing but processes that
    /// were inside it before can change the directory underneath.
    pub fn set_covers_source(&self, covers: bool) {
        self.covers_source.store(covers, Ordering::Relaxed);
    }

    /// Whether names and listings change only through this mount: it covers its source, and
    /// no other mirrorfs serves the same directory (each holds a read lock on it, an
    /// open-file-description lock, `F_OFD_SETLK`, and a write lock would conflict with
    /// another's). Then mirrorfs lets the kernel cache names that do not exist and directory
    /// listings for as long as the names that do; otherwise (a mount elsewhere, with the
    /// source open to other programs, or xfstests mounting one directory twice) it answers
    /// each time, as names may come and go by the other way.
    pub fn serves_alone(&self) -> bool {
        self.covers_source.load(Ordering::Relaxed)
            && matches!(
                sys::ofd_lock(self.root.as_fd(), libc::F_OFD_GETLK, libc::F_WRLCK),
                Ok(t) if t == libc::F_UNLCK
            )
    }

    /// The session's notifier, to tell the kernel about attributes that changed by themselves.
    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// At an open for reading in the page-cache mode, when a read now changes the access time
    /// under the mount's options: reads may all be served from the kernel's page cache, which
    /// never updates a FUSE file's access time, so mirrorfs reads one byte of the file
    /// underneath itself (the file system there updates the time as its mount, the clone of
    /// crate::atime, says), and tells the kernel the attributes of `ino` changed.
    fn touch_atime(&self, ino: u64, file: &File) {
        use std::os::unix::fs::FileExt;
        let _ = file.read_at(&mut [0u8; 1], 0);
        self.attrs_changed(ino);
    }

    /// At an `opendir`, when reading the directory now changes its access time under the
    /// mount's options: the kernel may list it from its cache (`FOPEN_CACHE_DIR`) without
    /// asking, so mirrorfs reads the directory underneath itself, as [`Self::touch_atime`]
    /// reads a file.
    fn touch_dir_atime(&self, ino: u64, dir: &File) {
        let _ = sys::touch_dir(dir.as_fd());
        self.attrs_changed(ino);
    }

    /// Tells the kernel that the attributes of `ino` changed by themselves.
    pub(crate) fn attrs_changed(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            // A negative offset: the attributes only, not the cached pages.
            let _ = n.inval_inode(fuser::INodeNo(ino), -1, 0);
        }
    }

    /// Where the mount's flags are kept (for a [`crate::atime::Follower`]).
    pub fn mount_flags_cell(&self) -> Arc<AtomicU64> {
        self.mount_flags.clone()
    }

    /// Follow remounts with `f` (checked at each open and `opendir`).
    pub fn follow_remounts(&self, f: Arc<crate::atime::Follower>) {
        let _ = self.follower.set(f);
    }

    /// Sees a remount that happened since the last check.
    fn check_remount(&self) {
        if let Some(f) = self.follower.get() {
            f.check();
        }
    }

    /// The mount's flags changed (at mount, or by a remount).
    pub fn set_mount_flags(&self, flags: crate::mountopts::Flags) {
        self.mount_flags.store(flags.0 as _, Ordering::Relaxed);
    }

    /// Whether directories need no OPENDIR (and so no RELEASEDIR): asked at the first
    /// OPENDIR, and once the answer is yes the kernel never asks again (it answers ENOSYS,
    /// after which the kernel opens directories itself and keeps their listings). Yes when
    /// names change only through this mount ([`MirrorFs::serves_alone`]), listings may be
    /// cached (`--ttl` not 0) and the mount is not `strictatime` (every listing from the
    /// cache would then have to update the directory's access time, which only an OPENDIR
    /// lets mirrorfs see). A listing then comes back to mirrorfs whenever the directory or
    /// its attributes changed, which is when `relatime` updates an access time.
    pub fn opendir_unneeded(&self) -> bool {
        if self.no_opendir.load(Ordering::Relaxed) {
            return true;
        }
        let flags = crate::mountopts::Flags(self.mount_flags.load(Ordering::Relaxed) as _);
        let yes =
            !self.cfg.ttl.is_zero() && !flags.has(libc::MS_STRICTATIME) && self.serves_alone();
        if yes {
            self.no_opendir.store(true, Ordering::Relaxed);
        }
        yes
    }

    /// After a change of directory `ino`'s own attributes: with the kernel listing
    /// directories from its cache without asking ([`MirrorFs::opendir_unneeded`]), its
    /// listing is dropped, so that the next one reaches mirrorfs and the directory
    /// underneath (which updates the access time as `relatime` says once the change time
    /// moved past it).
    pub(crate) fn dir_attrs_changed(&self, ino: u64) {
        if self.no_opendir.load(Ordering::Relaxed) {
            if let Some(n) = self.notifier.get() {
                let _ = n.inval_inode(fuser::INodeNo(ino), 0, 0);
            }
        }
    }

    /// Whether a read of a file with attributes `st` changes its access time under the
    /// mount's options now (the kernel's `atime_needs_update` and `relatime_need_update`).
    pub fn read_updates_atime(&self, st: &Stat) -> bool {
        let flags = crate::mountopts::Flags(self.mount_flags.load(Ordering::Relaxed) as _);
        let dir = st.mode & libc::S_IFMT == libc::S_IFDIR;
        if flags.has(libc::MS_RDONLY)
            || flags.has(libc::MS_NOATIME)
            || (dir && flags.has(libc::MS_NODIRATIME))
        {
            return false;
        }
        if flags.has(libc::MS_STRICTATIME) {
            return true;
        }
        let (a, m, c) = (
            (st.atime.sec, st.atime.nsec),
            (st.mtime.sec, st.mtime.nsec),
            (st.ctime.sec, st.ctime.nsec),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        m >= a || c >= a || now - st.atime.sec >= 24 * 3600
    }

    /// Settings.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// The recorder (journal and matcher).
    pub fn recorder(&self) -> &Recorder {
        &self.rec
    }

    /// Turns kernel passthrough on (when the kernel agreed to it at init).
    pub fn enable_passthrough(&self) {
        if self.cfg.passthrough {
            self.passthrough.store(PT_ON, Ordering::Relaxed);
        }
    }

    /// The kernel agreed at init to buffer writes (`FUSE_WRITEBACK_CACHE`).
    pub fn enable_writeback(&self) {
        self.writeback.store(true, Ordering::Relaxed);
    }

    /// Whether the kernel buffers writes: they reach mirrorfs as it writes them back.
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    /// Whether a new opening for writing may let the kernel buffer its writes: names change
    /// only through this mount ([`MirrorFs::serves_alone`]; another way would change the file
    /// under pages the kernel holds, which its writeback would then write over), and the file
    /// system underneath has room for more than the kernel holds back (else a full disk
    /// would fail writes the writer was told of already).
    pub fn may_buffer(&self) -> bool {
        self.serves_alone()
            && sys::statvfs(self.root.as_fd())
                .map(|v| v.f_bavail.saturating_mul(v.f_frsize) >= BUFFER_ROOM)
                .unwrap_or(false)
    }

    /// How many open handles may have writes of selected files buffered in the kernel.
    pub fn buffered_writers(&self) -> usize {
        self.buffered_writers.load(Ordering::Relaxed)
    }

    /// The kernel refused a backing file: no more passthrough.
    fn passthrough_failed(&self) {
        self.passthrough.store(PT_FAILED, Ordering::Relaxed);
    }

    /// Whether passthrough is in use.
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed) == PT_ON
    }

    /// The mode to reply with for a handle opened in `mode` (a passthrough handle whose
    /// backing file the kernel refused falls back to the page cache: the node had no other
    /// passthrough handle, since the backing is made by the first).
    pub fn effective_mode(&self, mode: IoMode) -> IoMode {
        match mode {
            IoMode::Passthrough => IoMode::Cached,
            m => m,
        }
    }

    /// Number of open file handles (tests, status).
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    fn dir(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Where other processes of this user may read the directory underneath the mount
    /// without going through it ([`crate::keeper::Beneath`]).
    pub fn beneath(&self) -> Option<crate::keeper::Beneath> {
        use std::os::fd::AsRawFd;
        let st = sys::fstat(self.dir()).ok()?;
        Some(crate::keeper::Beneath {
            fd: self.root.as_raw_fd(),
            dev: st.dev,
            ino: st.ino,
        })
    }

    fn ns_read(&self) -> RwLockReadGuard<'_, ()> {
        self.ns.read().unwrap_or_else(|p| p.into_inner())
    }

    fn ns_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.ns.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A name changed somewhere: open handles re-resolve their names before recording.
    fn names_changed(&self) {
        self.names_gen.fetch_add(1, Ordering::Relaxed);
    }

    /// FUSE attributes for node `ino` with underlying status `st`.
    fn attr(&self, ino: u64, st: &Stat) -> FileAttr {
        if st.mode & libc::S_IFMT == libc::S_IFDIR && self.no_opendir.load(Ordering::Relaxed) {
            if let Ok(node) = self.inodes.get(ino) {
                *lock(&node.last_stat) = Some(*st);
            }
        }
        FileAttr {
            ino: fuser::INodeNo(ino),
            size: st.size,
            blocks: st.blocks,
            atime: system_time(st.atime),
            mtime: system_time(st.mtime),
            ctime: system_time(st.ctime),
            crtime: UNIX_EPOCH,
            kind: file_type(st.mode),
            perm: (st.mode & 0o7777) as u16,
            nlink: st.nlink,
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev as u32,
            blksize: st.blksize,
            flags: 0,
        }
    }

    /// Records that the kernel now knows `name` in `parent` as the file with status `st`.
    fn entry(&self, parent: u64, name: &std::ffi::OsStr, st: &Stat) -> EntryOut {
        let (node, generation) = self.inodes.remember(parent, name, st);
        self.drop_stale_names(&node, parent, name);
        EntryOut {
            attr: self.attr(node.ino, st),
            generation,
        }
    }

    /// Forgets the names of `node`, other than `name` in `parent` (just found to lead to it),
    /// that no longer lead to it underneath: something other than this mount (another mount
    /// of the directory, or a process using it directly) moved or removed the file. Its path
    /// is made of its first name, so a stale one would make every operation on it fail with
    /// ENOENT (xfstests generic/732). Costs nothing for a node with one name.
    fn drop_stale_names(&self, node: &inodes::Inode, parent: u64, name: &std::ffi::OsStr) {
        if node.link_count() < 2 {
            return;
        }
        for (p, n) in node.links() {
            if p == parent && n == name {
                continue;
            }
            let gone = match self.inodes.child_path(p, &n) {
                Ok(path) => match sys::stat_at(self.dir(), &path) {
                    Ok(s) => (s.dev, s.ino) != node.key,
                    Err(e) => matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)),
                },
                // Its directory has no name left, or was forgotten: no path goes through it.
                Err(_) => true,
            };
            if gone {
                log::debug!(
                    "node {}: {:?} in {p} no longer names it underneath",
                    node.ino,
                    n
                );
                self.inodes.unlink(node.ino, p, &n);
            }
        }
    }

    /// The status of node `ino`: by path when the path still leads to it, else through an
    /// open file or directory of it (it has no name left, or its name now leads elsewhere:
    /// `fstat` of a descriptor of a file that a rename replaced, xfstests generic/035).
    fn stat_node(&self, ino: u64) -> FsResult<Stat> {
        let node = self.inodes.get(ino)?;
        match self.inodes.path(ino) {
            Ok(p) => match sys::stat_at(self.dir(), &p) {
                Ok(st) if (st.dev, st.ino) == node.key => return Ok(st),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e.into()),
            },
            Err(FsError::Unlinked(_)) => {}
            Err(e) => return Err(e),
        }
        let open = self
            .files
            .all()
            .into_iter()
            .find(|h| h.inode.ino == ino)
            .map(|h| sys::fstat(h.file.as_fd()));
        let open = open.or_else(|| {
            self.dirs
                .all()
                .into_iter()
                .find(|d| d.ino == ino)
                .map(|d| sys::fstat(d.file.as_fd()))
        });
        match open {
            Some(st) => Ok(st?),
            None => match *lock(&node.last_stat) {
                // A directory removed (or renamed over) while open: as its file system shows it.
                Some(st) => Ok(Stat { nlink: 0, ..st }),
                None => Err(FsError::Unlinked(ino)),
            },
        }
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Whether full source name `name` exists in the directory beneath the mount, not
    /// following a symlink in its last component (for mirror-sendd, whose view through the
    /// mount may lag a rename by a moment: [`crate::control::Request::Exists`]).
    pub fn exists_underneath(&self, name: &[u8]) -> std::io::Result<bool> {
        let Some(rel) = self.rec.relative(name) else {
            return Ok(false);
        };
        match sys::stat_at(self.dir(), rel) {
            Ok(_) => Ok(true),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether another tool may have this mount copy `name` for rule `crc` (a copy request on
    /// the control socket): a rule of the current table, a name beneath the mount that the
    /// rule selects, reached through no symbolic link ([`crate::copycheck`]).
    pub fn check_copy(&self, crc: u32, name: &[u8]) -> Result<(), String> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        let table = self.rec.table();
        let rule = table
            .rules()
            .iter()
            .find(|r| r.crc == crc)
            .ok_or_else(|| format!("no rule {crc:#010x} (copy of {})", shown()))?;
        if self.rec.relative(name).is_none() {
            return Err(format!("{} is not beneath this mount", shown()));
        }
        crate::copycheck::may_copy_with(&rule.spec.pattern, name, |dir| {
            match self.rec.relative(dir) {
                Some([]) => Ok(false),
                Some(rel) => match sys::stat_at(self.dir(), rel) {
                    Ok(st) => Ok(st.mode & libc::S_IFMT == libc::S_IFLNK),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                },
                // Above the mount: the rule's own directories, not this mount's to judge.
                None => Ok(false),
            }
        })
        .map_err(|e| e.to_string())
    }

    /// Installs rule table `table`, first appending the first copies `todo` of the rules it
    /// adds ([`crate::firstcopy`]); their journal positions (not durable yet:
    /// [`crate::firstcopy::record`]). The namespace lock is held exclusively meanwhile, so no
    /// operation is between matching and journaling: every entry of a new rule comes after
    /// its copy, and no change made after the copy was queued goes unrecorded. The table is
    /// installed even when the journal cannot take the copies (the rule then stays with its
    /// copy still to be queued, and the error is returned).
    pub fn install_rules(
        &self,
        table: crate::matcher::RuleTable,
        todo: &[crate::firstcopy::Todo],
    ) -> Result<Vec<crate::journal::Position>, crate::journal::JournalError> {
        let _ns = self.ns_write();
        let at = crate::firstcopy::append(self.rec.journal(), todo);
        self.rec.install(table);
        at
    }

    /// Appends the copies of what the journal could not take before, as far as it takes
    /// entries now; how many wait still.
    pub fn retry_unjournaled(&self) -> usize {
        self.rec.retry_unjournaled(self.dir())
    }

    /// Makes all journal entries durable (unmount).
    pub fn sync_journal(&self) -> FsResult<()> {
        self.rec.sync()
    }
}

/// Names handed to the kernel's readdir.
#[derive(Debug, Clone)]
pub struct DirListEntry {
    /// Inode number for the entry.
    pub ino: u64,
    /// Offset of the next entry.
    pub next: u64,
    /// File type.
    pub kind: fuser::FileType,
    /// Name.
    pub name: OsString,
}

/// Attribute changes of a `setattr`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttrs {
    /// New mode bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<sys::SetTime>,
    /// New modification time.
    pub mtime: Option<sys::SetTime>,
}
