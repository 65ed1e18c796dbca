//! The FUSE adapter: implements fuser's `Filesystem` by calling [`MirrorFs`] and replying.
//! It holds no filesystem logic: it converts arguments, picks the reply, and maps errors to
//! errno values (through [`FsError::errno`]) with a log level that fits the error.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::entry::Timestamp;
use crate::fs::sys::SetTime;
use crate::fs::{Caller, EntryOut, FsError, IoMode, MirrorFs, Opened, SetAttrs};
use crate::syncwait::collect;

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// fuser's view of a [`MirrorFs`].
#[derive(Debug)]
pub struct FuseFs {
    fs: Arc<MirrorFs>,
}

impl FuseFs {
    /// Adapts `fs`.
    pub fn new(fs: Arc<MirrorFs>) -> Self {
        FuseFs { fs }
    }
}

fn errno(op: &str, ino: u64, e: FsError) -> Errno {
    if e.is_routine() {
        log::debug!("{op} ino {ino}: {e}");
    } else {
        log::error!("{op} ino {ino}: {e}");
    }
    Errno::from_i32(e.errno())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timestamp { sec, nsec }
        }
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(s) => SetTime::At(timestamp(s)),
    })
}

impl FuseFs {
    fn ttl(&self) -> Duration {
        self.fs.config().ttl
    }

    fn reply_entry(&self, op: &str, ino: u64, r: Result<EntryOut, FsError>, reply: ReplyEntry) {
        match r {
            Ok(e) => reply.entry(&self.ttl(), &e.attr, Generation(e.generation)),
            Err(e) => reply.error(errno(op, ino, e)),
        }
    }

    fn reply_empty(op: &str, ino: u64, r: Result<(), FsError>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(op, ino, e)),
        }
    }

    /// Sends a reply once the durability points the request reached are met: at once when
    /// it reached none (or failed), else when the sites of its sync rules acknowledged it
    /// ([`crate::syncwait`]); no request thread waits meanwhile. Should a sync rule's
    /// policy fail the call after its change was made, `undo` gives back what the reply
    /// would have handed the kernel (a node's lookup, an open handle).
    fn settle<T: Send + 'static>(
        &self,
        op: &'static str,
        ino: u64,
        (r, needs): (Result<T, FsError>, Vec<crate::syncwait::Need>),
        undo: fn(&MirrorFs, &T),
        send: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        let v = match r {
            Err(e) => return send(Err(errno(op, ino, e))),
            Ok(v) if needs.is_empty() => return send(Ok(v)),
            Ok(v) => v,
        };
        let fs = self.fs.clone();
        let done = move |res: Result<(), i32>| match res {
            Ok(()) => send(Ok(v)),
            Err(e) => {
                log::warn!(
                    "{op} ino {ino}: failed with EIO: a site of its sync rule is out of sync (with --on-sync-loss fail; what was changed stands and is sent once the site is back)"
                );
                undo(&fs, &v);
                send(Err(Errno::from_i32(e)))
            }
        };
        self.fs.recorder().sync_wait().defer(needs, Box::new(done));
    }

    /// [`FuseFs::settle`] for an empty reply.
    fn settle_empty(
        &self,
        op: &'static str,
        ino: u64,
        r: (Result<(), FsError>, Vec<crate::syncwait::Need>),
        reply: ReplyEmpty,
    ) {
        self.settle(
            op,
            ino,
            r,
            |_, _| {},
            move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    /// [`FuseFs::settle`] for a new entry (its lookup is given back if the call fails).
    fn settle_entry(
        &self,
        op: &'static str,
        ino: u64,
        r: (Result<EntryOut, FsError>, Vec<crate::syncwait::Need>),
        reply: ReplyEntry,
    ) {
        let ttl = self.ttl();
        self.settle(
            op,
            ino,
            r,
            |fs, e| fs.forget(e.attr.ino.0, 1),
            move |r| match r {
                Ok(e) => reply.entry(&ttl, &e.attr, Generation(e.generation)),
                Err(e) => reply.error(e),
            },
        );
    }

    /// Open flags for a handle in `mode`. Every handle gets FOPEN_NOFLUSH: mirrorfs buffers
    /// nothing and file locks stay in the kernel, so `close` need not wait for a FLUSH.
    fn open_flags(mode: IoMode) -> FopenFlags {
        FopenFlags::FOPEN_NOFLUSH
            | match mode {
                IoMode::Direct => {
                    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
                }
                IoMode::Cached => FopenFlags::FOPEN_KEEP_CACHE,
                IoMode::Passthrough => FopenFlags::empty(),
            }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_CACHE_SYMLINKS
            // mirrorfs clears set-id bits itself, as the file system would for the caller
            // (`drop_setid`), and the file system below drops `security.capability` on every
            // change mirrorfs makes: the kernel then need not ask for that attribute before
            // every write (a GETXATTR round trip per write, half the speed of small writes).
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            // No file handles (`name_to_handle_at` fails with EOPNOTSUPP, as on a file system
            // without export support): the kernel's handle is a node id and a generation, and
            // once the kernel has forgotten the node mirrorfs cannot find the file from that
            // alone, so `open_by_handle_at` would fail with ESTALE (xfstests generic/426).
            | InitFlags::FUSE_NO_EXPORT_SUPPORT;
        let supported = config.capabilities() & wanted;
        if let Err(missing) = config.add_capabilities(supported) {
            log::debug!("kernel lacks FUSE capabilities {missing:?}");
        }
        // Writes land in the kernel's page cache and come to mirrorfs as it writes them back,
        // in large batches (docs/ARCHITECTURE.md, "Buffered writes"). The kernel does not
        // pass files through on a connection with the writeback cache (it refuses the backing
        // files with EPERM), so the two exclude each other: files no rule selects are then
        // buffered in the page cache as well. Only when names change through this mount
        // alone (mounted over its source, no other mirrorfs of it): another way of changing
        // a file would be overwritten by pages the kernel holds.
        if self.fs.config().writeback_cache
            && self.fs.serves_alone()
            && config
                .capabilities()
                .contains(InitFlags::FUSE_WRITEBACK_CACHE)
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok()
        {
            self.fs.enable_writeback();
        }
        let passthrough = self.fs.config().passthrough
            && !self.fs.writeback()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
        if passthrough {
            self.fs.enable_passthrough();
        }
        let on_off = |b: bool| if b { "on" } else { "off" };
        log::info!(
            "FUSE ABI {:?}; kernel passthrough {}; writeback cache {}",
            config.kernel_abi(),
            on_off(passthrough),
            on_off(self.fs.writeback())
        );
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.sync_journal() {
            log::error!("journal sync at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            // A name that is not there is cached as such (node id 0), for as long as the
            // names that are, unless another mirrorfs serves the directory too: only this
            // mount changes it (a build or `git status` asks for many names that do not
            // exist, again and again).
            Err(e) if e.errno() == libc::ENOENT && self.fs.serves_alone() => {
                reply.entry(&self.ttl(), &dot_attr(0), Generation(0))
            }
            r => self.reply_entry("lookup", parent.0, r, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.ttl(), &a),
            Err(e) => reply.error(errno("getattr", ino.0, e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ch = SetAttrs {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let r = collect(true, || {
            self.fs.setattr(caller(req), ino.0, ch, fh.map(|f| f.0))
        });
        let ttl = self.ttl();
        self.settle(
            "setattr",
            ino.0,
            r,
            |_, _| {},
            move |r| match r {
                Ok(a) => reply.attr(&ttl, &a),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", ino.0, e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = collect(true, || {
            self.fs
                .mknod(caller(req), parent.0, name, mode, rdev as u64)
        });
        self.settle_entry("mknod", parent.0, r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = collect(true, || self.fs.mkdir(caller(req), parent.0, name, mode));
        self.settle_entry("mkdir", parent.0, r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = collect(true, || self.fs.unlink(parent.0, name));
        self.settle_empty("unlink", parent.0, r, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = collect(true, || self.fs.rmdir(parent.0, name));
        self.settle_empty("rmdir", parent.0, r, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = collect(true, || {
            self.fs
                .symlink(caller(req), parent.0, link_name, target.as_os_str())
        });
        self.settle_entry("symlink", parent.0, r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = collect(true, || {
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits())
        });
        if let Some(d) = rename_reply_delay() {
            // Fault injection for the tests (see `rename_reply_delay`).
            std::thread::sleep(d);
        }
        self.settle_empty("rename", parent.0, r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = collect(true, || self.fs.link(ino.0, newparent.0, newname));
        self.settle_entry("link", ino.0, r, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(caller(req), ino.0, flags.0) {
            Ok(o) => self.reply_open(o, reply),
            Err(e) => reply.error(errno("open", ino.0, e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno("read", ino.0, e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let written_back = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        // A write through an O_SYNC/O_DSYNC handle is a durability point; others note none.
        let r = collect(false, || {
            self.fs.write(caller(req), fh.0, offset, data, written_back)
        });
        self.settle(
            "write",
            ino.0,
            r,
            |_, _| {},
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at `close`: mirrorfs buffers nothing, and file locks stay in the
        // kernel. The kernel has written the file's buffered pages back before it asks, and
        // ENOSYS tells it not to ask again (a round trip saved at every close).
        let _ = (ino, fh);
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty("release", ino.0, self.fs.release(fh.0), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = collect(false, || self.fs.fsync(fh.0, datasync));
        self.settle_empty("fsync", ino.0, r, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.fs.opendir_unneeded() {
            // The kernel then opens directories without asking (and never asks again), keeps
            // their listings, and reads with no handle (`fh` 0).
            reply.error(Errno::ENOSYS);
            return;
        }
        match self.fs.opendir(ino.0) {
            // The kernel keeps the listing it read (only this mount changes the directory,
            // and the kernel drops it when the directory changes through the mount); not
            // beside another mirrorfs of the directory.
            Ok((fh, true)) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", ino.0, e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.next, e.kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", ino.0, e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl();
        let r = self.fs.readdirplus(ino.0, fh.0, offset, |e, out| {
            let (attr, generation) = match out {
                Some(o) => (o.attr, o.generation),
                None => (dot_attr(e.ino), 0),
            };
            !reply.add(
                INodeNo(e.ino),
                e.next,
                &e.name,
                &ttl,
                &attr,
                Generation(generation),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdirplus", ino.0, e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty("releasedir", ino.0, self.fs.releasedir(fh.0), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = collect(false, || self.fs.fsyncdir(ino.0, fh.0, datasync));
        self.settle_empty("fsyncdir", ino.0, r, reply);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno("statfs", ino.0, e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = collect(true, || self.fs.setxattr(ino.0, name, value, flags));
        self.settle_empty("setxattr", ino.0, r, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name, size) {
            Ok((len, _)) if size == 0 => reply.size(len as u32),
            Ok((_, data)) => reply.data(&data),
            Err(e) => reply.error(errno("getxattr", ino.0, e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0, size) {
            Ok((len, _)) if size == 0 => reply.size(len as u32),
            Ok((_, data)) => reply.data(&data),
            Err(e) => reply.error(errno("listxattr", ino.0, e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = collect(true, || self.fs.removexattr(ino.0, name));
        self.settle_empty("removexattr", ino.0, r, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        Self::reply_empty("access", ino.0, self.fs.access(ino.0, mask.bits()), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = collect(true, || {
            self.fs.create(caller(req), parent.0, name, mode, flags)
        });
        let me = FuseFs::new(self.fs.clone());
        self.settle(
            "create",
            parent.0,
            r,
            |fs, (e, o)| {
                let _ = fs.release(o.fh);
                fs.forget(e.attr.ino.0, 1);
            },
            move |r| match r {
                Ok((entry, opened)) => me.reply_create(entry, opened, reply),
                Err(e) => reply.error(e),
            },
        );
    }

    // Locks: FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS are not requested, so the kernel keeps
    // POSIX and flock locks itself (correct for one host: every access goes through this
    // mount). These are answered only should a kernel ask anyway.
    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// No ioctls on mirrored files (e.g. isatty's TCGETS): "not a terminal".
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// Regular files are always ready; ENOSYS makes the kernel stop asking.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Only for block-device-backed FUSE file systems.
    fn bmap(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _blocksize: u32,
        _idx: u64,
        reply: fuser::ReplyBmap,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty(
            "fallocate",
            ino.0,
            self.fs.fallocate(caller(req), fh.0, offset, length, mode),
            reply,
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno("lseek", ino.0, e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self.fs.copy_file_range(
            caller(req),
            fh_in.0,
            offset_in,
            fh_out.0,
            offset_out,
            len,
            flags.bits() as u32,
        );
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("copy_file_range", ino_in.0, e)),
        }
    }
}

impl FuseFs {
    fn reply_open(&self, o: Opened, reply: ReplyOpen) {
        let fh = FileHandle(o.fh);
        let reply = if o.mode == IoMode::Passthrough {
            match self.fs.reply_passthrough(
                o.fh,
                reply,
                |r, f| r.open_backing(f),
                |r, id| r.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, id),
            ) {
                Ok(()) => return,
                Err(r) => r,
            }
        } else {
            reply
        };
        reply.opened(fh, Self::open_flags(self.fs.effective_mode(o.mode)));
    }

    fn reply_create(&self, entry: EntryOut, o: Opened, reply: ReplyCreate) {
        let (ttl, fh, generation) = (self.ttl(), FileHandle(o.fh), Generation(entry.generation));
        let reply = if o.mode == IoMode::Passthrough {
            match self.fs.reply_passthrough(
                o.fh,
                reply,
                |r, f| r.open_backing(f),
                |r, id| {
                    r.created_passthrough(
                        &ttl,
                        &entry.attr,
                        generation,
                        fh,
                        FopenFlags::FOPEN_NOFLUSH,
                        id,
                    )
                },
            ) {
                Ok(()) => return,
                Err(r) => r,
            }
        } else {
            reply
        };
        reply.created(
            &ttl,
            &entry.attr,
            generation,
            fh,
            Self::open_flags(self.fs.effective_mode(o.mode)),
        );
    }
}

/// Attributes for `.` and `..` in readdirplus (the kernel uses only the name and type).
fn dot_attr(ino: u64) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: fuser::FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Fault injection for the tests: with `MIRRORFS_TEST_RENAME_REPLY_DELAY_MS` set, every
/// rename is answered that long after it was made and journaled. The kernel updates its
/// names only once it has the answer, so this widens, to a length a test can rely on, the
/// moment when the journal already holds a rename's entries and the mount still shows the
/// file it replaced (mirror-sendd must not take that file's absence for a deletion). Read
/// once; unset (the default), nothing waits.
fn rename_reply_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("MIRRORFS_TEST_RENAME_REPLY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(std::time::Duration::from_millis)
    })
}
