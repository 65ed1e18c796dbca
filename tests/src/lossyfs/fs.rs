//! The layer's operations on the backing directory: each FUSE request is carried out on the
//! backing directory at once (write-through), after the [`Model`] has captured what the change
//! is about to overwrite; durability points forget what they make durable. No FUSE type
//! appears here (the adapter is `super::fuse`).
//!
//! One mutex serialises every request and the control commands: simple and exact (a power
//! loss happens between two requests, never inside one), and fast enough for tests.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use super::model::{Attrs, DEnt, DataOp, FileData, Model, Pin};
use super::sys::{self, Kind, SetTime};

/// The name, in the backing root, of the directory that keeps replaced objects a power loss
/// may bring back. Hidden from the mount; it exists only while something is in it.
pub const ATTIC: &str = ".lossyfs-attic";

/// FUSE inode number of the root.
pub const ROOT: u64 = 1;

/// Most bytes of unsynced writes held in memory for tearing (beyond it, tearing keeps
/// nothing of the files whose ops could not be kept, and says so in the report).
const OP_BYTES_CAP: usize = 512 << 20;

/// Who makes a request (new objects are given to them).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Attribute changes of a `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttrs {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// A directory entry for `readdir`.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// FUSE inode number.
    pub ino: u64,
    /// Kind (from the backing directory).
    pub kind: Kind,
    /// Name.
    pub name: OsString,
}

/// An inode the kernel knows.
#[derive(Debug)]
struct Node {
    /// `O_PATH` descriptor (it also keeps the backing inode number from being reused).
    fd: OwnedFd,
    /// How many lookups the kernel has not forgotten.
    lookups: u64,
}

/// An open file.
#[derive(Debug)]
struct OpenFile {
    fd: OwnedFd,
    /// Opened with O_SYNC or O_DSYNC: every write is a durability point.
    sync: bool,
}

/// An open directory.
#[derive(Debug)]
struct OpenDir {
    fd: OwnedFd,
    entries: Option<Vec<DirEntry>>,
}

/// Everything behind the mutex.
#[derive(Debug)]
pub struct Inner {
    /// `O_PATH` descriptor of the backing root.
    pub root: OwnedFd,
    /// Its inode number.
    pub root_ino: u64,
    nodes: HashMap<u64, Node>,
    files: HashMap<u64, OpenFile>,
    dirs: HashMap<u64, OpenDir>,
    next_fh: u64,
    /// What is not durable yet.
    pub model: Model,
    /// The attic, while it exists.
    pub attic: Option<OwnedFd>,
    /// After a power loss: every request fails with EIO.
    pub dead: bool,
    euid: u32,
    egid: u32,
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The error every request gets after a power loss.
pub fn eio() -> io::Error {
    err(libc::EIO)
}

/// The layer.
#[derive(Debug)]
pub struct Layer {
    inner: Mutex<Inner>,
}

impl Layer {
    /// Serves the backing directory whose root `root` (any descriptor of it) is.
    pub fn new(root: OwnedFd) -> io::Result<Layer> {
        let st = sys::stat(root.as_fd())?;
        if Kind::of_mode(st.st_mode) != Kind::Dir {
            return Err(err(libc::ENOTDIR));
        }
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                fd: sys::dup(root.as_fd())?,
                lookups: 1,
            },
        );
        // SAFETY: geteuid/getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(Layer {
            inner: Mutex::new(Inner {
                root,
                root_ino: st.st_ino,
                nodes,
                files: HashMap::new(),
                dirs: HashMap::new(),
                next_fh: 1,
                model: Model::default(),
                attic: None,
                dead: false,
                euid,
                egid,
            }),
        })
    }

    /// The state, whatever happened to an earlier holder of the lock.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unless the power was lost.
    fn live(&self) -> io::Result<MutexGuard<'_, Inner>> {
        let g = self.lock();
        if g.dead {
            return Err(eio());
        }
        Ok(g)
    }

    /// `lookup`: the FUSE inode and attributes of `parent/name`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<(u64, libc::stat)> {
        let mut g = self.live()?;
        if g.reserved(parent, name) {
            return Err(err(libc::ENOENT));
        }
        let fd = sys::open_path(g.node_fd(parent)?, name)?;
        let st = sys::stat(fd.as_fd())?;
        Ok(g.remember(fd, st))
    }

    /// `forget`.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut g = self.lock();
        if ino == ROOT {
            return;
        }
        let gone = match g.nodes.get_mut(&ino) {
            Some(node) => {
                if node.lookups < n {
                    log::error!(
                        "forget ino {ino}: {n} lookups forgotten, {} known",
                        node.lookups
                    );
                }
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            g.nodes.remove(&ino);
        }
    }

    /// `getattr`.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> io::Result<libc::stat> {
        let g = self.live()?;
        let st = match fh.and_then(|f| g.files.get(&f)) {
            Some(f) => sys::stat(f.fd.as_fd())?,
            None => sys::stat(g.node_fd(ino)?)?,
        };
        Ok(g.shown(st))
    }

    /// `setattr`.
    pub fn setattr(&self, ino: u64, ch: SetAttrs, fh: Option<u64>) -> io::Result<libc::stat> {
        let mut g = self.live()?;
        let inner = &mut *g;
        let node_fd = sys::dup(inner.node_fd(ino)?)?;
        let fd = node_fd.as_fd();
        let st = sys::stat(fd)?;
        let kind = Kind::of_mode(st.st_mode);
        let changes = ch.mode.is_some()
            || ch.uid.is_some()
            || ch.gid.is_some()
            || ch.size.is_some()
            || ch.atime.is_some()
            || ch.mtime.is_some();
        if changes && st.st_nlink > 0 {
            inner
                .model
                .attrs
                .entry(st.st_ino)
                .or_insert_with(|| Attrs::of(&st));
        }
        if let Some(size) = ch.size {
            if kind != Kind::File {
                return Err(err(if kind == Kind::Dir {
                    libc::EISDIR
                } else {
                    libc::EINVAL
                }));
            }
            let reopened;
            let wfd = match fh.and_then(|f| inner.files.get(&f)) {
                Some(f) if writable(f.fd.as_fd()) => f.fd.as_fd(),
                _ => {
                    reopened = sys::reopen(fd, libc::O_WRONLY)?;
                    reopened.as_fd()
                }
            };
            let tracked = before_data_change(&mut inner.model, wfd, &st, size, u64::MAX)?;
            sys::ftruncate(wfd, size)?;
            if tracked {
                inner.record(st.st_ino, DataOp::SetSize(size));
            }
        }
        if let Some(mode) = ch.mode {
            if kind != Kind::Symlink {
                sys::chmod(fd, mode)?;
            }
        }
        if ch.uid.is_some() || ch.gid.is_some() {
            sys::chown(fd, ch.uid.unwrap_or(u32::MAX), ch.gid.unwrap_or(u32::MAX))?;
        }
        if ch.atime.is_some() || ch.mtime.is_some() {
            sys::set_times(
                fd,
                ch.atime.unwrap_or(SetTime::Omit),
                ch.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        let st = sys::stat(fd)?;
        Ok(inner.shown(st))
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> io::Result<Vec<u8>> {
        let g = self.live()?;
        sys::readlink(g.node_fd(ino)?)
    }

    /// `mknod` (also regular files, FIFOs and sockets).
    pub fn mknod(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> io::Result<(u64, libc::stat)> {
        let mut g = self.live()?;
        g.create_node(who, parent, name, |dir| sys::mknodat(dir, name, mode, rdev))
    }

    /// `mkdir`.
    pub fn mkdir(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<(u64, libc::stat)> {
        let mut g = self.live()?;
        g.create_node(who, parent, name, |dir| sys::mkdirat(dir, name, mode))
    }

    /// `symlink`.
    pub fn symlink(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> io::Result<(u64, libc::stat)> {
        let mut g = self.live()?;
        g.create_node(who, parent, name, |dir| sys::symlinkat(target, dir, name))
    }

    /// `link`.
    pub fn link(&self, ino: u64, parent: u64, name: &OsStr) -> io::Result<(u64, libc::stat)> {
        let mut g = self.live()?;
        if g.reserved(parent, name) {
            return Err(err(libc::EPERM));
        }
        let pfd = sys::dup(g.node_fd(parent)?)?;
        g.touch_dir(pfd.as_fd())?;
        sys::link_fd(g.node_fd(ino)?, pfd.as_fd(), name)?;
        let fd = sys::open_path(pfd.as_fd(), name)?;
        let st = sys::stat(fd.as_fd())?;
        Ok(g.remember(fd, st))
    }

    /// `unlink`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let mut g = self.live()?;
        if g.reserved(parent, name) {
            return Err(err(libc::ENOENT));
        }
        let pfd = sys::dup(g.node_fd(parent)?)?;
        let st = sys::statat(pfd.as_fd(), name)?;
        if Kind::of_mode(st.st_mode) == Kind::Dir {
            return Err(err(libc::EISDIR));
        }
        let dir_ino = g.touch_dir(pfd.as_fd())?;
        g.remove_link(pfd.as_fd(), dir_ino, name, &st)
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let mut g = self.live()?;
        if g.reserved(parent, name) {
            return Err(err(libc::ENOENT));
        }
        let pfd = sys::dup(g.node_fd(parent)?)?;
        let st = sys::statat(pfd.as_fd(), name)?;
        if Kind::of_mode(st.st_mode) != Kind::Dir {
            return Err(err(libc::ENOTDIR));
        }
        let dir_ino = g.touch_dir(pfd.as_fd())?;
        g.remove_link(pfd.as_fd(), dir_ino, name, &st)
    }

    /// `rename` (with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`; not `RENAME_WHITEOUT`).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let mut g = self.live()?;
        if g.reserved(parent, name) {
            return Err(err(libc::ENOENT));
        }
        if g.reserved(new_parent, new_name) {
            return Err(err(libc::EPERM));
        }
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(err(libc::EINVAL));
        }
        let pfd = sys::dup(g.node_fd(parent)?)?;
        let nfd = sys::dup(g.node_fd(new_parent)?)?;
        let (pfd, nfd) = (pfd.as_fd(), nfd.as_fd());
        let sx = sys::statat(pfd, name)?;
        let sy = match sys::statat(nfd, new_name) {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if let Some(sy) = &sy {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(err(libc::EEXIST));
            }
            if sy.st_ino == sx.st_ino && !exchange {
                // Two names of one file: rename does nothing.
                return Ok(());
            }
        } else if exchange {
            return Err(err(libc::ENOENT));
        }
        let p_ino = g.touch_dir(pfd)?;
        let n_ino = g.touch_dir(nfd)?;
        g.pin_if_durable(pfd, p_ino, name, &sx)?;
        let Some(sy) = sy.filter(|_| !exchange) else {
            if exchange {
                let sy = sys::statat(nfd, new_name)?;
                g.pin_if_durable(nfd, n_ino, new_name, &sy)?;
            }
            return sys::renameat2(pfd, name, nfd, new_name, flags);
        };
        // The target is replaced: like an unlink of it, then the rename.
        let (x_dir, y_dir) = (
            Kind::of_mode(sx.st_mode) == Kind::Dir,
            Kind::of_mode(sy.st_mode) == Kind::Dir,
        );
        if x_dir && !y_dir {
            return Err(err(libc::ENOTDIR));
        }
        if !x_dir && y_dir {
            return Err(err(libc::EISDIR));
        }
        g.pin_if_durable(nfd, n_ino, new_name, &sy)?;
        let last = y_dir || sy.st_nlink <= 1;
        if !(last && g.model.pins.contains_key(&sy.st_ino)) {
            sys::renameat2(pfd, name, nfd, new_name, flags)?;
            if last {
                g.model.drop_object(sy.st_ino);
            }
            return Ok(());
        }
        // The replaced object may come back at a power loss: keep it in the attic.
        let aname = g.move_to_attic(nfd, new_name, &sy)?;
        if let Err(e) = sys::renameat2(pfd, name, nfd, new_name, flags) {
            let attic = g.attic_fd()?;
            sys::renameat2(attic, &aname, nfd, new_name, libc::RENAME_NOREPLACE)?;
            if let Some(p) = g.model.pins.get_mut(&sy.st_ino) {
                p.attic = None;
            }
            return Err(e);
        }
        Ok(())
    }

    /// `open`: a handle number.
    pub fn open(&self, ino: u64, flags: i32) -> io::Result<u64> {
        let mut g = self.live()?;
        let fd = sys::reopen(g.node_fd(ino)?, backing_flags(flags))?;
        Ok(g.add_file(fd, flags))
    }

    /// `create`: the new file's inode, attributes and handle.
    pub fn create(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(u64, libc::stat, u64)> {
        let mut g = self.live()?;
        if g.reserved(parent, name) {
            return Err(err(libc::EPERM));
        }
        let pfd = sys::dup(g.node_fd(parent)?)?;
        g.touch_dir(pfd.as_fd())?;
        let bflags = backing_flags(flags) | libc::O_CREAT | (flags & libc::O_EXCL);
        let fd = sys::openat(pfd.as_fd(), name, bflags | libc::O_NOFOLLOW, mode)?;
        g.give_to(pfd.as_fd(), fd.as_fd(), who)?;
        let path = sys::open_path(pfd.as_fd(), name)?;
        let st = sys::stat(path.as_fd())?;
        let (ino, st) = g.remember(path, st);
        let fh = g.add_file(fd, flags);
        Ok((ino, st, fh))
    }

    /// `read`.
    pub fn read(&self, fh: u64, off: u64, size: u32) -> io::Result<Vec<u8>> {
        let g = self.live()?;
        let f = g.files.get(&fh).ok_or_else(|| err(libc::EBADF))?;
        sys::pread(f.fd.as_fd(), off, size as usize)
    }

    /// `write`: records what it overwrites, writes, and is a durability point for an O_SYNC or
    /// O_DSYNC write. `kill_suidgid`: the kernel asks to clear the set-id bits.
    pub fn write(
        &self,
        fh: u64,
        off: u64,
        data: &[u8],
        flags: i32,
        kill_suidgid: bool,
    ) -> io::Result<u32> {
        let mut g = self.live()?;
        let inner = &mut *g;
        let f = inner.files.get(&fh).ok_or_else(|| err(libc::EBADF))?;
        let fd = f.fd.as_fd();
        let sync = f.sync || flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let st = sys::stat(fd)?;
        let end = off + data.len() as u64;
        let tracked = before_data_change(&mut inner.model, fd, &st, off, end)?;
        sys::pwrite_all(fd, off, data)?;
        if kill_suidgid && st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            sys::chmod(fd, st.st_mode & !(libc::S_ISUID | libc::S_ISGID))?;
        }
        if tracked {
            inner.record(
                st.st_ino,
                DataOp::Write {
                    off,
                    data: data.to_vec(),
                },
            );
            if sync {
                inner.commit_file(st.st_ino);
            }
        }
        Ok(data.len() as u32)
    }

    /// `release`.
    pub fn release(&self, fh: u64) {
        self.lock().files.remove(&fh);
    }

    /// `fsync` / `fdatasync` of a file: its content, size and attributes become durable
    /// (not its name: that takes an fsync of the directory).
    pub fn fsync(&self, fh: u64) -> io::Result<()> {
        let mut g = self.live()?;
        let f = g.files.get(&fh).ok_or_else(|| err(libc::EBADF))?;
        let st = sys::stat(f.fd.as_fd())?;
        g.commit_file(st.st_ino);
        Ok(())
    }

    /// `fallocate`: modes 0, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE (and UNSHARE_RANGE); not
    /// COLLAPSE_RANGE or INSERT_RANGE (EOPNOTSUPP).
    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> io::Result<()> {
        let mut g = self.live()?;
        if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
            return Err(err(libc::EOPNOTSUPP));
        }
        let inner = &mut *g;
        let f = inner.files.get(&fh).ok_or_else(|| err(libc::EBADF))?;
        let fd = f.fd.as_fd();
        let st = sys::stat(fd)?;
        let destroys = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let (start, end) = if destroys {
            (off, off.saturating_add(len))
        } else {
            (0, 0)
        };
        let tracked = before_data_change(&mut inner.model, fd, &st, start, end)?;
        sys::fallocate(fd, mode, off, len)?;
        if tracked {
            inner.record(st.st_ino, DataOp::Fallocate { mode, off, len });
        }
        Ok(())
    }

    /// `lseek` (SEEK_DATA, SEEK_HOLE).
    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> io::Result<i64> {
        let g = self.live()?;
        let f = g.files.get(&fh).ok_or_else(|| err(libc::EBADF))?;
        sys::lseek(f.fd.as_fd(), off, whence)
    }

    /// `copy_file_range`, as reads and writes through [`Layer::write`].
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        let len = len.min(u32::MAX as u64 / 2);
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(1 << 20) as u32;
            let data = self.read(fh_in, off_in + done, chunk)?;
            if data.is_empty() {
                break;
            }
            self.write(fh_out, off_out + done, &data, 0, false)?;
            done += data.len() as u64;
        }
        Ok(done as u32)
    }

    /// `opendir`.
    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        let mut g = self.live()?;
        let fd = sys::dup(g.node_fd(ino)?)?;
        let fh = g.next_fh;
        g.next_fh += 1;
        g.dirs.insert(fh, OpenDir { fd, entries: None });
        Ok(fh)
    }

    /// `readdir`: the entries from index `offset` on (`.` and `..` first).
    pub fn readdir(&self, fh: u64, offset: u64) -> io::Result<Vec<DirEntry>> {
        let mut g = self.live()?;
        let inner = &mut *g;
        let d = inner.dirs.get_mut(&fh).ok_or_else(|| err(libc::EBADF))?;
        if offset == 0 || d.entries.is_none() {
            let fd = d.fd.as_fd();
            let st = sys::stat(fd)?;
            let is_root = st.st_ino == inner.root_ino;
            // Not looked up: `..` of a directory in the backing root leads into the mount
            // when the layer is mounted over its backing directory. The kernel does not use
            // readdir's inode numbers; the root's stands for every parent.
            let up = ROOT;
            let mut v = vec![
                DirEntry {
                    ino: fuse_ino(inner.root_ino, st.st_ino),
                    kind: Kind::Dir,
                    name: ".".into(),
                },
                DirEntry {
                    ino: up,
                    kind: Kind::Dir,
                    name: "..".into(),
                },
            ];
            for (name, ino, kind) in sys::list_dir(fd)? {
                if is_root && name == ATTIC {
                    continue;
                }
                v.push(DirEntry {
                    ino: fuse_ino(inner.root_ino, ino),
                    kind,
                    name,
                });
            }
            d.entries = Some(v);
        }
        let all = d.entries.as_deref().unwrap_or_default();
        Ok(all.iter().skip(offset as usize).cloned().collect())
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        self.lock().dirs.remove(&fh);
    }

    /// `fsyncdir`: the directory's entries and attributes become durable.
    pub fn fsyncdir(&self, fh: u64) -> io::Result<()> {
        let mut g = self.live()?;
        let d = g.dirs.get(&fh).ok_or_else(|| err(libc::EBADF))?;
        let st = sys::stat(d.fd.as_fd())?;
        g.commit_dir(st.st_ino);
        Ok(())
    }

    /// `statfs` of the backing file system.
    pub fn statfs(&self) -> io::Result<libc::statvfs> {
        let g = self.live()?;
        sys::statvfs(g.root.as_fd())
    }

    /// `getxattr` (`size` 0: only the length). Extended attributes are written through and
    /// durable at once (see the module documentation).
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> io::Result<Vec<u8>> {
        let g = self.live()?;
        let fd = g.node_fd(ino)?;
        if Kind::of_mode(sys::stat(fd)?.st_mode) == Kind::Symlink {
            return Err(err(libc::ENODATA));
        }
        let p = sys::proc_path(fd);
        let n = sys::cstr(name)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: NUL-terminated strings; the buffer has `size` bytes (none when 0).
        let r = unsafe {
            libc::getxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                size as usize,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(vec![0; r as usize]);
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    /// `listxattr` (`size` 0: only the length).
    pub fn listxattr(&self, ino: u64, size: u32) -> io::Result<Vec<u8>> {
        let g = self.live()?;
        let fd = g.node_fd(ino)?;
        if Kind::of_mode(sys::stat(fd)?.st_mode) == Kind::Symlink {
            return Ok(Vec::new());
        }
        let p = sys::proc_path(fd);
        let mut buf = vec![0u8; size as usize];
        // SAFETY: NUL-terminated path; the buffer has `size` bytes.
        let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size as usize) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(vec![0; r as usize]);
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    /// `setxattr`.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let g = self.live()?;
        let fd = g.node_fd(ino)?;
        if Kind::of_mode(sys::stat(fd)?.st_mode) == Kind::Symlink {
            return Err(err(libc::EPERM));
        }
        let p = sys::proc_path(fd);
        let n = sys::cstr(name)?;
        // SAFETY: NUL-terminated strings; the value slice is valid for its length.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `removexattr`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> io::Result<()> {
        let g = self.live()?;
        let fd = g.node_fd(ino)?;
        if Kind::of_mode(sys::stat(fd)?.st_mode) == Kind::Symlink {
            return Err(err(libc::EPERM));
        }
        let p = sys::proc_path(fd);
        let n = sys::cstr(name)?;
        // SAFETY: NUL-terminated strings.
        if unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes everything durable (the control command `sync`, and a clean unmount).
    pub fn sync_all(&self) -> io::Result<()> {
        let mut g = self.live()?;
        g.commit_all();
        Ok(())
    }

    /// Counts of what is pending, for the control command `status`.
    pub fn status(&self) -> serde_json::Value {
        let g = self.lock();
        let mut v = g.model.counts();
        v["dead"] = serde_json::Value::Bool(g.dead);
        v["nodes"] = serde_json::json!(g.nodes.len());
        v["open_files"] = serde_json::json!(g.files.len());
        v
    }

    /// Simulates a power loss: from now on every request fails with EIO, and the backing
    /// directory is turned into its durable state (tearing unsynced writes with `tear`'s
    /// seed). Returns the report (see `super::restore`).
    pub fn power_loss(&self, tear: Option<u64>) -> io::Result<serde_json::Value> {
        let mut g = self.live()?;
        g.dead = true;
        let inner = &mut *g;
        let report = super::restore::restore(
            inner.root.as_fd(),
            inner.root_ino,
            &mut inner.model,
            &mut inner.attic,
            tear,
        );
        Ok(report)
    }
}

/// Whether `fd` was opened for writing.
fn writable(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL on a valid descriptor.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE != libc::O_RDONLY
}

/// The flags to open the backing file with: the access mode only. Not O_APPEND (the kernel
/// gives every write its offset, and `pwrite` on an O_APPEND descriptor ignores it), not
/// O_TRUNC (truncation comes as a setattr, so it is recorded), not O_DIRECT (the backing file
/// system may refuse it; durability is the model's business), not O_SYNC/O_DSYNC (the handle
/// remembers them).
fn backing_flags(flags: i32) -> i32 {
    flags & libc::O_ACCMODE
}

/// The FUSE inode number of backing inode `ino` (the root is 1; a backing inode 1, if any,
/// takes the root's number).
pub fn fuse_ino(root_ino: u64, ino: u64) -> u64 {
    if ino == root_ino {
        ROOT
    } else if ino == ROOT {
        root_ino
    } else {
        ino
    }
}

/// Before `start..end` of the file `fd` (whose attributes are `st`) is overwritten, cut or
/// zeroed: remembers the file's durable size and attributes (first change since its last
/// durability point) and saves the durable bytes of the range not saved yet. Returns false,
/// and remembers nothing, for a file with no name left (it can never be durable again).
fn before_data_change(
    model: &mut Model,
    fd: BorrowedFd<'_>,
    st: &libc::stat,
    start: u64,
    end: u64,
) -> io::Result<bool> {
    if st.st_nlink == 0 {
        return Ok(false);
    }
    let ino = st.st_ino;
    model.attrs.entry(ino).or_insert_with(|| Attrs::of(st));
    let data = model
        .data
        .entry(ino)
        .or_insert_with(|| FileData::new(st.st_size as u64));
    let gaps = data.uncovered(start, end);
    if gaps.is_empty() {
        return Ok(true);
    }
    let rfd = sys::reopen(fd, libc::O_RDONLY)?;
    for (s, e) in gaps {
        let len = (e - s) as usize;
        let mut bytes = sys::pread(rfd.as_fd(), s, len)?;
        if bytes.len() < len {
            // Only if the backing file was changed behind the layer's back.
            log::warn!(
                "ino {ino}: {} durable bytes at {s} were already gone",
                len - bytes.len()
            );
            bytes.resize(len, 0);
        }
        data.save(s, bytes);
    }
    Ok(true)
}

impl Inner {
    fn reserved(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT && name == ATTIC
    }

    fn node_fd(&self, ino: u64) -> io::Result<BorrowedFd<'_>> {
        self.nodes
            .get(&ino)
            .map(|n| n.fd.as_fd())
            .ok_or_else(|| err(libc::ESTALE))
    }

    /// Attributes as the mount shows them: FUSE inode numbers, and no link count for an object
    /// kept only in the attic (it was removed).
    fn shown(&self, mut st: libc::stat) -> libc::stat {
        if self
            .model
            .pins
            .get(&st.st_ino)
            .is_some_and(|p| p.attic.is_some())
        {
            st.st_nlink = 0;
        }
        st.st_ino = fuse_ino(self.root_ino, st.st_ino);
        st
    }

    /// Counts a lookup of the object `fd` (attributes `st`); its FUSE inode and attributes.
    fn remember(&mut self, fd: OwnedFd, st: libc::stat) -> (u64, libc::stat) {
        let ino = fuse_ino(self.root_ino, st.st_ino);
        self.nodes
            .entry(ino)
            .or_insert(Node { fd, lookups: 0 })
            .lookups += 1;
        (ino, self.shown(st))
    }

    fn add_file(&mut self, fd: OwnedFd, flags: i32) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.files.insert(fh, OpenFile { fd, sync });
        fh
    }

    /// Gives a new object to the caller (the layer runs as root; the kernel checked the
    /// permissions). In a set-group-id directory the group stays the inherited one.
    fn give_to(&self, dir: BorrowedFd<'_>, fd: BorrowedFd<'_>, who: Caller) -> io::Result<()> {
        let dir_sgid = sys::stat(dir)?.st_mode & libc::S_ISGID != 0;
        let gid = if dir_sgid { u32::MAX } else { who.gid };
        if who.uid != self.euid || (gid != u32::MAX && gid != self.egid) {
            sys::chown(fd, who.uid, gid)?;
        }
        Ok(())
    }

    /// Creates `parent/name` with `make`, gives it to `who`, and counts the lookup.
    fn create_node(
        &mut self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<(u64, libc::stat)> {
        if self.reserved(parent, name) {
            return Err(err(libc::EPERM));
        }
        let pfd = sys::dup(self.node_fd(parent)?)?;
        self.touch_dir(pfd.as_fd())?;
        make(pfd.as_fd())?;
        let fd = sys::open_path(pfd.as_fd(), name)?;
        self.give_to(pfd.as_fd(), fd.as_fd(), who)?;
        let st = sys::stat(fd.as_fd())?;
        Ok(self.remember(fd, st))
    }

    /// Before the entries of directory `dir` change: remembers them and its attributes (first
    /// change since its last fsync). Returns its backing inode number.
    fn touch_dir(&mut self, dir: BorrowedFd<'_>) -> io::Result<u64> {
        let st = sys::stat(dir)?;
        let ino = st.st_ino;
        if !self.model.dirs.contains_key(&ino) {
            let mut entries = BTreeMap::new();
            for (name, e, kind) in sys::list_dir(dir)? {
                if ino == self.root_ino && name == ATTIC {
                    continue;
                }
                entries.insert(name, DEnt { ino: e, kind });
            }
            self.model.dirs.insert(ino, entries);
        }
        self.model
            .attrs
            .entry(ino)
            .or_insert_with(|| Attrs::of(&st));
        Ok(ino)
    }

    /// Before the link `dir/name` (to the object `st`) goes: if it is durable, keeps a
    /// descriptor of the object, which a power loss may need to put back.
    fn pin_if_durable(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_ino: u64,
        name: &OsStr,
        st: &libc::stat,
    ) -> io::Result<()> {
        let ino = st.st_ino;
        if self.model.pins.contains_key(&ino) || !self.model.is_durable_link(dir_ino, name, ino) {
            return Ok(());
        }
        let fd = sys::open_path(dir, name)?;
        self.model.pins.insert(
            ino,
            Pin {
                fd,
                kind: Kind::of_mode(st.st_mode),
                attic: None,
            },
        );
        Ok(())
    }

    /// The attic, made if needed (the root's durable attributes are remembered first: making
    /// and removing the attic changes them).
    fn attic_fd(&mut self) -> io::Result<BorrowedFd<'_>> {
        if self.attic.is_none() {
            let st = sys::stat(self.root.as_fd())?;
            self.model
                .attrs
                .entry(self.root_ino)
                .or_insert_with(|| Attrs::of(&st));
            match sys::mkdirat(self.root.as_fd(), OsStr::new(ATTIC), 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
            self.attic = Some(sys::openat(
                self.root.as_fd(),
                OsStr::new(ATTIC),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?);
        }
        Ok(self.attic.as_ref().map(|f| f.as_fd()).expect("just made"))
    }

    /// Moves `dir/name` (the object `st`, pinned, losing its last name) into the attic;
    /// returns its name there.
    fn move_to_attic(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &libc::stat,
    ) -> io::Result<OsString> {
        let ino = st.st_ino;
        if Kind::of_mode(st.st_mode) == Kind::Dir {
            let sub = sys::openat(
                dir,
                name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            if !sys::list_dir(sub.as_fd())?.is_empty() {
                return Err(err(libc::ENOTEMPTY));
            }
            // Its durable entries and attributes (moving it changes them).
            self.touch_dir(sub.as_fd())?;
        }
        let aname = OsString::from(format!("{ino}"));
        let attic = sys::dup(self.attic_fd()?)?;
        sys::renameat2(dir, name, attic.as_fd(), &aname, libc::RENAME_NOREPLACE)?;
        if let Some(p) = self.model.pins.get_mut(&ino) {
            p.attic = Some(aname.clone());
        }
        Ok(aname)
    }

    /// Removes the link `dir/name` (to the object `st`; `dir` already touched): a durable
    /// link pins the object, and a pinned object losing its last name goes to the attic
    /// instead of away.
    fn remove_link(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_ino: u64,
        name: &OsStr,
        st: &libc::stat,
    ) -> io::Result<()> {
        let is_dir = Kind::of_mode(st.st_mode) == Kind::Dir;
        self.pin_if_durable(dir, dir_ino, name, st)?;
        let last = is_dir || st.st_nlink <= 1;
        if last && self.model.pins.contains_key(&st.st_ino) {
            self.move_to_attic(dir, name, st)?;
            return Ok(());
        }
        sys::unlinkat(dir, name, is_dir)?;
        if last {
            self.model.drop_object(st.st_ino);
        }
        Ok(())
    }

    fn record(&mut self, ino: u64, op: DataOp) {
        let m = &mut self.model;
        let Some(data) = m.data.get_mut(&ino) else {
            return;
        };
        if !data.ops_complete {
            return;
        }
        let w = op.weight();
        if m.op_bytes + w > OP_BYTES_CAP {
            log::warn!(
                "ino {ino}: over {OP_BYTES_CAP} bytes of unsynced writes held; a torn power loss \
                 keeps none of this file's"
            );
            data.ops_complete = false;
            m.op_bytes -= data.ops.iter().map(DataOp::weight).sum::<usize>();
            data.ops.clear();
            return;
        }
        m.op_bytes += w;
        data.ops.push(op);
    }

    /// A durability point of file `ino`: its content, size and attributes.
    fn commit_file(&mut self, ino: u64) {
        self.model.take_data(ino);
        self.model.attrs.remove(&ino);
    }

    /// A durability point of directory `ino`: its entries and attributes.
    fn commit_dir(&mut self, ino: u64) {
        self.model.dirs.remove(&ino);
        self.model.attrs.remove(&ino);
        self.gc();
    }

    /// Everything durable now.
    pub fn commit_all(&mut self) {
        self.model.data.clear();
        self.model.attrs.clear();
        self.model.dirs.clear();
        self.model.op_bytes = 0;
        self.gc();
    }

    /// Lets go of the pins no durable state refers to (emptying them out of the attic), and
    /// removes the attic when nothing is left in it.
    fn gc(&mut self) {
        if self.model.pins.is_empty() && self.attic.is_none() {
            return;
        }
        let needed = self.model.needed();
        let unneeded: Vec<u64> = self
            .model
            .pins
            .keys()
            .filter(|i| !needed.contains(i))
            .copied()
            .collect();
        for ino in unneeded {
            let Some(pin) = self.model.pins.remove(&ino) else {
                continue;
            };
            if let (Some(aname), Some(attic)) = (&pin.attic, &self.attic) {
                if let Err(e) = sys::remove_tree(attic.as_fd(), aname) {
                    log::error!("removing {ATTIC}/{}: {e}", aname.to_string_lossy());
                }
                self.model.drop_object(ino);
            }
        }
        let attic_used = self.model.pins.values().any(|p| p.attic.is_some());
        if !attic_used && self.attic.take().is_some() {
            if let Err(e) = sys::remove_tree(self.root.as_fd(), OsStr::new(ATTIC)) {
                log::error!("removing {ATTIC}: {e}");
            }
        }
    }
}
